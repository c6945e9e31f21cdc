//! Releases: the build side of a host's middle and end of life. It works on the repo
//! ([`crate::store`]); compose calls it for the commits it makes (`compose::publish`), and the
//! command line's `key`, `sign`, `repo serve`, `promote`, `prune`, `retire` and `log` call it.
//!
//! Every commit a treefile with `gpg-key` composes is GPG-signed ([`sign`], keys from [`key`]);
//! whenever a ref moves, a static delta from its previous commit is generated and the summary
//! rewritten and signed ([`publish`]); [`serve`] serves the repo over HTTP; [`promote`] moves a
//! tested build from one stream to the next and retires a stream; [`prune`] keeps the last N
//! commits of every ref; [`audit`] records every change in an append-only log that
//! [`history`] reads back (`cairn log`). `store::remote` configures the OSTree remote of an image so
//! that its node accepts only what the release key signed.

pub mod audit;
pub mod graph;
pub mod history;
pub mod key;
pub mod promote;
pub mod prune;
pub mod publish;
pub mod serve;
pub mod sign;

use audit::Entry;
use sign::Signer;

/// The audit line of a signature added to `commit` on `ref_`.
pub(crate) fn sign_entry(
    ref_: Option<&str>,
    commit: &str,
    version: Option<String>,
    s: &Signer,
) -> Entry {
    let mut e = Entry::new("sign", ref_).with("signed_by", &s.key.fingerprint);
    e.old = Some(commit.to_string());
    e.new = Some(commit.to_string());
    e.version = version;
    e
}

/// What `cairn sign` did.
#[derive(Debug, serde::Serialize)]
pub struct Signed {
    pub commit: String,
    pub key: String,
    /// It carried the key's signature already; nothing was written.
    pub already: bool,
}

/// Sign `rev`'s commit with the release key (`opts`), then refresh the deltas into it, sign the
/// summary and record it in the audit log.
pub fn sign_rev(
    repo_path: &std::path::Path,
    rev: &str,
    opts: &sign::SignOpts,
) -> anyhow::Result<Signed> {
    let r = crate::store::open(repo_path)?;
    let commit = crate::store::resolve(&r, rev)?;
    let s = opts.required(&r)?;
    let already = s.signed(&r, &commit)?;
    if !already {
        s.sign_commit(&r, &commit)?;
        publish::refresh_deltas_to(&r, &commit)?;
        sign::record_key(&r, &s)?;
        publish::summary(&r, Some(&s))?;
        let version = crate::store::load_commit(&r, &commit)?.meta.version;
        let ref_ = (rev != commit).then_some(rev);
        let e = sign_entry(ref_, &commit, version, &s);
        audit::append(repo_path, &[e])?;
    }
    Ok(Signed {
        commit,
        key: s.key.fingerprint,
        already,
    })
}
