//! What a compose does around the commit it writes, for the release side: check every layer's
//! `gpg-key` before anything is written, sign inside the commit's transaction, record who
//! composed it from which treefile revision, and after the compose generate the static delta of
//! every ref that moved, rewrite and sign the summary, and append to the audit log.

use std::path::Path;

use anyhow::{Context, Result};

use super::ComposeResult;
use crate::release::audit::{self, Entry};
use crate::release::key::GpgHome;
use crate::release::sign::{self, Signer};
use crate::release::{publish, sign_entry};
use crate::store::{self, Provenance};
use crate::treefile::Treefile;

/// The signer for a treefile's `gpg-key`, if it names one; the error names the treefile line.
pub fn signer(tf: &Treefile, homedir: Option<&Path>) -> Result<Option<Signer>> {
    let Some(id) = tf.gpg_key() else {
        return Ok(None);
    };
    let s = GpgHome::resolve(homedir)
        .and_then(|home| Signer::new(home, &id.value))
        .with_context(|| format!("{}: key `gpg-key`", id.origin))?;
    Ok(Some(s))
}

/// Who composes, where, and the treefile's git revision when it has one.
pub fn provenance(treefile: &Path) -> Provenance {
    let actor = audit::Actor::current();
    Provenance {
        user: Some(actor.user),
        host: Some(actor.host),
        git_revision: audit::git_revision(treefile),
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
pub fn check_keys(tf: &Treefile, gpg_homedir: Option<&Path>) -> Result<()> {
    for t in layers(tf) {
        signer(t, gpg_homedir)?;
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
    let r = store::open(repo_path)?;
    let layers = layers(tf);
    let mut entries = Vec::new();
    let mut summary_signer: Option<Signer> = None;
    for res in results {
        let layer = layers.iter().find(|t| t.ref_ == res.ref_).copied();
        let signer = match layer {
            Some(t) => signer(t, gpg_homedir)?,
            None => None,
        };
        if let Some(s) = &signer {
            sign::record_key(&r, s)?;
            summary_signer = Some(s.clone());
        }
        let entry = if res.skipped {
            sign_unchanged(&r, res, signer.as_ref())?
        } else {
            Some(moved(&r, res, layer, signer.as_ref())?)
        };
        entries.extend(entry);
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

/// A layer found unchanged: sign its commit when `signer` has not yet (refreshing the deltas
/// into it), and say so in the audit log.
fn sign_unchanged(
    r: &ostree::Repo,
    res: &ComposeResult,
    signer: Option<&Signer>,
) -> Result<Option<Entry>> {
    let Some(s) = signer.filter(|s| !s.signed(r, &res.commit).unwrap_or(false)) else {
        return Ok(None);
    };
    s.sign_commit(r, &res.commit)?;
    publish::refresh_deltas_to(r, &res.commit)?;
    tracing::info!(
        "{}: signed {} with {}",
        res.ref_,
        res.commit,
        s.key.fingerprint
    );
    Ok(Some(sign_entry(
        Some(&res.ref_),
        &res.commit,
        Some(res.version.clone()),
        s,
    )))
}

/// A ref that moved: the delta from its previous commit, and its audit line.
fn moved(
    r: &ostree::Repo,
    res: &ComposeResult,
    layer: Option<&Treefile>,
    signer: Option<&Signer>,
) -> Result<Entry> {
    publish::delta(r, res.previous.as_deref(), &res.commit)?;
    let c = store::load_commit(r, &res.commit)?;
    let path = layer
        .map(|t| t.path.display().to_string())
        .unwrap_or_default();
    let mut e = Entry::new("compose", Some(&res.ref_)).with("treefile", path);
    if let Some(g) = &c.meta.provenance.git_revision {
        e = e.with("git_revision", g);
    }
    if let Some(s) = signer {
        e = e.with("signed_by", &s.key.fingerprint);
    }
    e.old = res.previous.clone();
    e.new = Some(res.commit.clone());
    e.version = Some(res.version.clone());
    e.inputhash = Some(res.inputhash.clone());
    Ok(e)
}
