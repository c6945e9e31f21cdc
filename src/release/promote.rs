//! `cairn promote FROM TO` and `cairn retire REF`: new commits of an existing tree.
//!
//! A promotion writes a new commit on TO with exactly the tree of FROM's commit (so no object is
//! written and none is pulled twice), FROM's metadata (version, packages, SBOM, input hash, who
//! composed it) plus where it came from (`cairn.promoted-from`, `cairn.promoted-from-ref`),
//! FROM's commit's timestamp, TO's previous commit as parent, signed. TO then has a history of
//! its own (`ostree log TO` lists TO's releases), a delta from its own previous commit, and a
//! signature made at promotion time.
//!
//! TO must be an ancestor-compatible stream of FROM: a new ref, or one whose commit was promoted
//! from FROM, from a commit that FROM's commit descends from (FROM's history holds it; when that
//! history was pruned before reaching it, FROM's commit must be no older). A stream that only
//! moves forward along FROM's history is what nodes following TO can take as an upgrade.
//!
//! Retiring writes a final commit on REF with REF's tree and metadata plus `ostree.endoflife`
//! (the message) and `ostree.endoflife-rebase` (the ref nodes move to).

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use serde::Serialize;

use super::audit::Entry;
use super::publish;
use super::sign::{SignOpts, Signer};
use crate::base::text::short_hash;
use crate::store::{self, Commit, CommitMeta};

/// What a promotion or a retirement did.
#[derive(Debug, Serialize)]
pub struct Moved {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub old: Option<String>,
    pub new: String,
    pub version: Option<String>,
    pub signed_by: Option<String>,
    /// Nothing was written: the ref already had this content.
    pub unchanged: bool,
}

/// Every ref of the repo and its commit.
pub(super) fn refs(r: &ostree::Repo) -> Result<std::collections::HashMap<String, String>> {
    r.list_refs(None, gio::Cancellable::NONE)
        .context("listing the repo's refs")
}

/// The commit a ref points at; an error naming the ref and the repo when it does not exist.
pub(super) fn ref_commit(
    r: &ostree::Repo,
    repo_path: &std::path::Path,
    ref_: &str,
) -> Result<String> {
    refs(r)?
        .remove(ref_)
        .ok_or_else(|| anyhow!("no ref {ref_} in the repo {}", repo_path.display()))
}

fn parent(r: &ostree::Repo, commit: &str) -> Result<Option<String>> {
    let (v, _) = r
        .load_commit(commit)
        .with_context(|| format!("loading commit {commit}"))?;
    Ok(ostree::commit_get_parent(&v).map(|p| p.to_string()))
}

/// Is `ancestor` in the history of `commit` (itself included)? `None` when the history is cut
/// (pruned) before an answer.
fn descends(r: &ostree::Repo, commit: &str, ancestor: &str) -> Result<Option<bool>> {
    let mut c = commit.to_string();
    loop {
        if c == ancestor {
            return Ok(Some(true));
        }
        match parent(r, &c)? {
            None => return Ok(Some(false)),
            Some(p) if !publish::has_commit(r, &p)? => return Ok(None),
            Some(p) => c = p,
        }
    }
}

fn endoflife(info: &Commit) -> Option<String> {
    info.meta.endoflife.clone()
}

/// Refuse a TO that is not an ancestor-compatible stream of FROM (see the module docs).
fn check_compatible(
    r: &ostree::Repo,
    from: &str,
    source: &Commit,
    to: &str,
    target: &Commit,
) -> Result<()> {
    if let Some(m) = endoflife(target) {
        bail!("{to} is retired (end of life: {m:?}): promote to a live stream");
    }
    let (Some(pref), Some(pfrom)) = (
        target.meta.promoted_from_ref.clone(),
        target.meta.promoted_from.clone(),
    ) else {
        bail!(
            "{to} ({}) was not made by promotion from {from}: not an ancestor-compatible stream \
             (--force promotes anyway)",
            short_hash(&target.checksum)
        );
    };
    if pref != from {
        bail!(
            "{to} follows {pref}, not {from}: not an ancestor-compatible stream (--force \
             promotes anyway)"
        );
    }
    match descends(r, &source.checksum, &pfrom)? {
        Some(true) => Ok(()),
        Some(false) => bail!(
            "{from}'s commit {} does not descend from {} (what {to} was last promoted from): \
             {to} would move sideways or back (--force promotes anyway)",
            short_hash(&source.checksum),
            short_hash(&pfrom)
        ),
        // FROM's history was pruned before reaching it: FROM's commit must be no older.
        None if source.timestamp >= target.timestamp => Ok(()),
        None => bail!(
            "{from}'s commit {} is older than {to}'s: {to} would move back (--force promotes \
             anyway)",
            short_hash(&source.checksum)
        ),
    }
}

/// Put FROM's commit's tree on TO (see the module docs).
pub fn promote(
    repo_path: &std::path::Path,
    from: &str,
    to: &str,
    force: bool,
    sign: &SignOpts,
) -> Result<Moved> {
    if from == to {
        bail!("promoting {from} onto itself");
    }
    let r = store::open(repo_path)?;
    let src_commit = ref_commit(&r, repo_path, from)?;
    ostree::validate_rev(to).map_err(|e| anyhow!("{to:?} is not a valid ref name: {e}"))?;
    let signer = sign.signer(&r)?;
    let source = store::load_commit(&r, &src_commit)?;
    check_source(&r, from, &source, signer.as_ref())?;
    let old = refs(&r)?.remove(to);
    let target = old
        .as_deref()
        .map(|c| store::load_commit(&r, c))
        .transpose()?;
    if let Some(t) = &target {
        if t.meta.promoted_from.as_deref() == Some(src_commit.as_str()) {
            return Ok(Moved {
                ref_: to.to_string(),
                old: old.clone(),
                new: t.checksum.clone(),
                version: t.meta.version.clone(),
                signed_by: None,
                unchanged: true,
            });
        }
        if !force {
            check_compatible(&r, from, &source, to, t)?;
        }
    }
    let p = Promotion {
        from,
        to,
        source: &source,
        old: old.as_deref(),
        signer: signer.as_ref(),
    };
    let new = p.write(&r)?;
    p.audit(repo_path, &new)?;
    Ok(Moved {
        ref_: to.to_string(),
        old,
        new,
        version: source.meta.version.clone(),
        signed_by: signer.map(|s| s.key.fingerprint),
        unchanged: false,
    })
}

/// Refuse a FROM whose commit the release key has not signed, or that is retired.
fn check_source(
    r: &ostree::Repo,
    from: &str,
    source: &Commit,
    signer: Option<&Signer>,
) -> Result<()> {
    if let Some(s) = signer {
        if !s.signed(r, &source.checksum)? {
            bail!(
                "{from}'s commit {} is not signed by the release key {}: sign it first (cairn sign \
                 {from})",
                short_hash(&source.checksum),
                s.key.fingerprint
            );
        }
    }
    if let Some(m) = endoflife(source) {
        bail!("{from} is retired (end of life: {m:?}): nothing to promote");
    }
    Ok(())
}

/// A promotion that writes: FROM's commit (`source`) onto TO, whose commit was `old`.
struct Promotion<'a> {
    from: &'a str,
    to: &'a str,
    source: &'a Commit,
    old: Option<&'a str>,
    signer: Option<&'a Signer>,
}

impl Promotion<'_> {
    /// Write TO's new commit (FROM's tree and metadata, where it came from), its delta from
    /// TO's previous commit and the summary; the new commit.
    fn write(&self, r: &ostree::Repo) -> Result<String> {
        let (from, to, source) = (self.from, self.to, self.source);
        let meta = CommitMeta {
            promoted_from: Some(source.checksum.clone()),
            promoted_from_ref: Some(from.to_string()),
            ..source.meta.clone()
        };
        let subject = format!(
            "{to} {} (promoted from {from})",
            source.meta.version.as_deref().unwrap_or("")
        );
        let new = store::recommit(
            r,
            &store::Recommit {
                tree_of: &source.checksum,
                header: store::Header {
                    ref_: to,
                    parent: self.old,
                    subject: &subject,
                    meta: &meta,
                    timestamp: source.timestamp,
                    signer: self.signer.map(|s| s as &dyn store::SignCommit),
                },
            },
        )
        .with_context(|| format!("promoting {from} to {to}"))?;
        publish::delta(r, self.old, &new)?;
        publish::summary(r, self.signer)?;
        Ok(new)
    }

    /// Note the promotion to `new` in the audit log.
    fn audit(&self, repo_path: &std::path::Path, new: &str) -> Result<()> {
        let mut e = Entry::new("promote", Some(self.to))
            .with("from", self.from)
            .with("source_commit", &self.source.checksum);
        if let Some(s) = self.signer {
            e = e.with("signed_by", &s.key.fingerprint);
        }
        e.old = self.old.map(str::to_string);
        e.new = Some(new.to_string());
        e.version = self.source.meta.version.clone();
        e.inputhash = self.source.meta.inputhash.clone();
        super::audit::append(repo_path, &[e])
    }
}

/// Write REF's final commit, pointing its nodes at `rebase_to` (see the module docs).
pub fn retire(
    repo_path: &std::path::Path,
    ref_: &str,
    rebase_to: &str,
    message: &str,
    sign: &SignOpts,
) -> Result<Moved> {
    if message.trim().is_empty() {
        bail!("--message is empty: say why {ref_} ends and what its nodes get");
    }
    if ref_ == rebase_to {
        bail!("retiring {ref_} in favour of itself");
    }
    let r = store::open(repo_path)?;
    let old = ref_commit(&r, repo_path, ref_)?;
    let next = ref_commit(&r, repo_path, rebase_to)
        .with_context(|| format!("--rebase-to {rebase_to}: nodes would have nowhere to go"))?;
    let info = store::load_commit(&r, &old)?;
    if let Some(m) = endoflife(&info) {
        bail!("{ref_} is already retired ({m:?})");
    }
    if let Some(m) = endoflife(&store::load_commit(&r, &next)?) {
        bail!("--rebase-to {rebase_to} is itself retired ({m:?})");
    }
    let signer = sign.signer(&r)?;
    let meta = CommitMeta {
        endoflife: Some(message.to_string()),
        endoflife_rebase: Some(rebase_to.to_string()),
        ..info.meta.clone()
    };
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let subject = format!("{ref_}: end of life, move to {rebase_to}");
    let new = store::recommit(
        &r,
        &store::Recommit {
            tree_of: &old,
            header: store::Header {
                ref_,
                parent: Some(&old),
                subject: &subject,
                meta: &meta,
                timestamp: now.max(info.timestamp),
                signer: signer.as_ref().map(|s| s as &dyn store::SignCommit),
            },
        },
    )
    .with_context(|| format!("retiring {ref_}"))?;
    publish::delta(&r, Some(&old), &new)?;
    publish::summary(&r, signer.as_ref())?;
    let mut e = Entry::new("retire", Some(ref_))
        .with("rebase_to", rebase_to)
        .with("message", message);
    if let Some(s) = &signer {
        e = e.with("signed_by", &s.key.fingerprint);
    }
    e.old = Some(old.clone());
    e.new = Some(new.clone());
    e.version = info.meta.version.clone();
    super::audit::append(repo_path, &[e])?;
    Ok(Moved {
        ref_: ref_.to_string(),
        old: Some(old),
        new,
        version: info.meta.version.clone(),
        signed_by: signer.map(|s| s.key.fingerprint),
        unchanged: false,
    })
}
