//! What a client pulls besides objects: a static delta from a ref's previous commit to its new
//! one, and the summary (refs, deltas), signed.
//!
//! A client uses a delta from the commit its own ref points at, and only into a bare repo (a
//! node's); libostree lists deltas in the summary, so the summary is rewritten after each one.
//! A delta carries its target's detached metadata (the signatures), so signing a commit again
//! means generating the deltas into it again.

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;

use super::sign::Signer;
use crate::base::text::short_hash;

/// Generate the static delta `from` → `to`; nothing when there is no `from` or it is gone
/// (pruned), or it is `to`. Returns whether a delta was written.
pub fn delta(repo: &ostree::Repo, from: Option<&str>, to: &str) -> Result<bool> {
    let Some(from) = from.filter(|f| *f != to) else {
        return Ok(false);
    };
    if !has_commit(repo, from)? {
        tracing::info!("no delta into {to}: its previous commit {from} is no longer in the repo");
        return Ok(false);
    }
    let params = glib::VariantDict::new(None);
    params.insert_value("verbose", &false.to_variant());
    let started = std::time::Instant::now();
    repo.static_delta_generate(
        ostree::StaticDeltaGenerateOpt::Major,
        Some(from),
        to,
        None,
        Some(&params.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("generating the static delta {from} → {to}"))?;
    tracing::info!(
        "static delta {} → {} in {:.1} s",
        short_hash(from),
        short_hash(to),
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// Generate again every delta into `commit` (after its signatures changed).
pub fn refresh_deltas_to(repo: &ostree::Repo, commit: &str) -> Result<()> {
    for (from, to) in deltas(repo)? {
        if to == commit {
            delta(repo, from.as_deref(), &to)?;
        }
    }
    Ok(())
}

/// Every static delta as (from, to); `from` is `None` for a delta from nothing.
pub fn deltas(repo: &ostree::Repo) -> Result<Vec<(Option<String>, String)>> {
    let names = repo
        .list_static_delta_names(gio::Cancellable::NONE)
        .context("listing the static deltas")?;
    Ok(names
        .iter()
        .map(|n| match n.split_once('-') {
            Some((f, t)) => (Some(f.to_string()), t.to_string()),
            None => (None, n.to_string()),
        })
        .collect())
}

/// Rewrite the summary and sign it with `signer` (the old signature no longer matches).
pub fn summary(repo: &ostree::Repo, signer: Option<&Signer>) -> Result<()> {
    repo.regenerate_summary(None, gio::Cancellable::NONE)
        .context("updating the summary")?;
    match signer {
        Some(s) => s.sign_summary(repo),
        None => {
            if super::sign::repo_key(repo).is_some() {
                tracing::warn!(
                    "the summary is not signed (the repo's release key was not available)"
                );
            }
            Ok(())
        }
    }
}

/// Is `commit` in the repo?
pub fn has_commit(repo: &ostree::Repo, commit: &str) -> Result<bool> {
    repo.has_object(ostree::ObjectType::Commit, commit, gio::Cancellable::NONE)
        .with_context(|| format!("looking for commit {commit}"))
}
