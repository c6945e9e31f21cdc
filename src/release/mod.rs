//! Releases: the build side of a host's middle and end of life.
//!
//! Every commit a treefile with `gpg-key` composes is GPG-signed ([`sign`], keys from [`key`]);
//! whenever a ref moves, a static delta from its previous commit is generated and the summary
//! rewritten and signed ([`publish`]); [`serve`] serves the repo over HTTP; [`promote`] moves a
//! tested build from one stream to the next and retires a stream; [`prune`] keeps the last N
//! commits of every ref; [`audit`] records every change in an append-only log that
//! [`history`] reads back (`cairn log`). [`remote`] configures the OSTree remote of an image so
//! that its node accepts only what the release key signed.

pub mod audit;
pub mod cli;
pub mod history;
pub mod key;
pub mod promote;
pub mod prune;
pub mod publish;
pub mod remote;
pub mod serve;
pub mod sign;

use std::path::Path;

use anyhow::Result;

use crate::compose::ComposeResult;
use crate::repo::{self, MetaBuilder};
use crate::treefile::Treefile;
use audit::Entry;
use sign::Signer;

/// Commit metadata naming who composed a commit, where, and from which treefile revision.
pub mod keys {
    pub const COMPOSE_USER: &str = "cairn.compose-user";
    pub const COMPOSE_HOST: &str = "cairn.compose-host";
    pub const TREEFILE_GIT_REVISION: &str = "cairn.treefile-git-revision";
}

/// Add the composing user and host, and the treefile's git revision when it has one, to a new
/// commit's metadata.
pub fn provenance(meta: &MetaBuilder, treefile: &Path) {
    let actor = audit::Actor::current();
    meta.insert(keys::COMPOSE_USER, actor.user.as_str())
        .insert(keys::COMPOSE_HOST, actor.host.as_str());
    if let Some(rev) = audit::git_revision(treefile) {
        meta.insert(keys::TREEFILE_GIT_REVISION, rev.as_str());
    }
}

/// The treefile and its parent layers, child first.
fn layers(tf: &Treefile) -> Vec<&Treefile> {
    let mut v = Vec::new();
    let mut t = Some(tf);
    while let Some(x) = t {
        v.push(x);
        t = x.parent.as_deref();
    }
    v
}

/// Before a compose writes anything: every `gpg-key` of the treefile's layers names a usable
/// secret key.
pub fn check_compose(tf: &Treefile, gpg_homedir: Option<&Path>) -> Result<()> {
    for t in layers(tf) {
        Signer::for_treefile(t, gpg_homedir)?;
    }
    Ok(())
}

/// After a compose: sign what a `gpg-key` asks for and is not signed yet (a commit composed
/// before the key was named), generate the delta into every moved ref, rewrite and sign the
/// summary, and append one audit line per moved ref.
pub fn after_compose(
    tf: &Treefile,
    repo_path: &Path,
    gpg_homedir: Option<&Path>,
    results: &[ComposeResult],
) -> Result<()> {
    let r = repo::open(repo_path)?;
    let layers = layers(tf);
    let mut entries = Vec::new();
    let mut summary_signer: Option<Signer> = None;
    for res in results {
        let signer = match layers.iter().find(|t| t.ref_ == res.ref_) {
            Some(t) => Signer::for_treefile(t, gpg_homedir)?,
            None => None,
        };
        if let Some(s) = &signer {
            sign::record_key(&r, s)?;
            summary_signer = Some(s.clone());
        }
        if res.skipped {
            if let Some(s) = signer
                .as_ref()
                .filter(|s| !s.signed(&r, &res.commit).unwrap_or(false))
            {
                s.sign_commit(&r, &res.commit)?;
                publish::refresh_deltas_to(&r, &res.commit)?;
                tracing::info!(
                    "{}: signed {} with {}",
                    res.ref_,
                    res.commit,
                    s.key.fingerprint
                );
                entries.push(sign_entry(
                    Some(&res.ref_),
                    &res.commit,
                    Some(res.version.clone()),
                    s,
                ));
            }
            continue;
        }
        publish::delta(&r, res.previous.as_deref(), &res.commit)?;
        let info = repo::commit_info(&r, &res.commit)?;
        let mut e = Entry::new("compose", Some(&res.ref_)).with("treefile", tf_path(&layers, res));
        if let Some(g) = info.string(keys::TREEFILE_GIT_REVISION) {
            e = e.with("git_revision", g);
        }
        if let Some(s) = &signer {
            e = e.with("signed_by", &s.key.fingerprint);
        }
        e.old = res.previous.clone();
        e.new = Some(res.commit.clone());
        e.version = Some(res.version.clone());
        e.inputhash = Some(res.inputhash.clone());
        entries.push(e);
    }
    if !entries.is_empty() || !repo_path.join("summary").exists() {
        let signer = match summary_signer {
            Some(s) => Some(s),
            // An unsigned layer moved in a repo that signs: sign the summary when the key is here.
            None => sign::SignOpts {
                gpg_homedir: gpg_homedir.map(Path::to_path_buf),
                key_id: None,
            }
            .signer(&r)
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}");
                None
            }),
        };
        publish::summary(&r, signer.as_ref())?;
    }
    audit::append(repo_path, &entries)
}

fn tf_path(layers: &[&Treefile], res: &ComposeResult) -> String {
    layers
        .iter()
        .find(|t| t.ref_ == res.ref_)
        .map(|t| t.path.display().to_string())
        .unwrap_or_default()
}

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
