//! The no-op checks: a compose whose inputs did not change writes nothing and returns the ref's
//! commit. The cheap check runs before apt (the treefile digest and the apt sources' `InRelease`
//! digests, as recorded beside the repo); the exact one after resolving (the input hash).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::apt::{self, AptEnv};
use super::{work_name, ComposeResult, Ctx};
use crate::base::digest::sha256_hex;
use crate::store;

pub(super) fn skipped(ctx: &Ctx, prev: &store::Commit) -> ComposeResult {
    ComposeResult {
        ref_: ctx.tf.ref_.clone(),
        commit: prev.checksum.clone(),
        version: prev.meta.version.clone().unwrap_or_default(),
        inputhash: prev.meta.inputhash.clone().unwrap_or_default(),
        skipped: true,
        packages: prev.meta.packages.len(),
        layer_parent: ctx.parent_commit.clone(),
        seconds: ctx.start.elapsed().as_secs_f64(),
        previous: Some(prev.checksum.clone()),
    }
}

/// Step: the cheap no-op check (treefile digest and package index digests).
pub(super) fn check_indexes(ctx: &mut Ctx) -> Result<Option<ComposeResult>> {
    let sources = match ctx.tf.repos() {
        Some(r) => vec![apt::treefile_sources(&r)],
        None => apt::host_sources()?,
    };
    let index = match ctx.lockfile {
        Some((_, lf)) => {
            ctx.epoch = lf.source_date_epoch;
            apt::IndexState {
                digest: sha256_hex(toml::to_string(lf)?.as_bytes()),
                newest_date: None,
            }
        }
        None => {
            let st = apt::index_state(&apt::parse_sources(&sources))
                .context("checking the package indexes")?;
            ctx.epoch = st.newest_date.unwrap_or(0);
            st
        }
    };
    if let Some(e) = ctx.opts.source_date_epoch {
        ctx.epoch = e;
    }
    ctx.index_digest = index.digest.clone();
    if ctx.opts.repo.join("config").exists() {
        let r = store::open(&ctx.opts.repo)?;
        if let Some(c) = store::resolve_opt(&r, &ctx.tf.ref_)? {
            ctx.previous = Some(store::load_commit(&r, &c)?);
        }
    }
    if !ctx.opts.force {
        if let Some(prev) = &ctx.previous {
            let state = IndexNote::read(&ctx.opts.repo, &ctx.tf.ref_);
            if prev.meta.treefile_digest.as_deref() == Some(ctx.treefile_digest.as_str())
                && state.as_ref().is_some_and(|s| {
                    s.commit == prev.checksum && s.index_digest == ctx.index_digest
                })
            {
                tracing::info!("{}: inputs unchanged, nothing to do", ctx.tf.ref_);
                return Ok(Some(skipped(ctx, prev)));
            }
        }
    }
    ctx.apt = Some(AptEnv::new(
        &ctx.opts.cache,
        sources,
        crate::treefile::basearch(),
        ctx.tf.recommends(),
    )?);
    if let Some(apt) = &ctx.apt {
        let ph = ctx.progress.phase("resolve", "updating package indexes");
        apt.update(&index)?;
        apt.set_pins(ctx.lockfile.map(|(_, lf)| lf.packages.as_slice()))?;
        ph.done("indexes current");
    }
    Ok(None)
}

/// Step: the input-hash no-op check.
pub(super) fn check_inputhash(ctx: &Ctx) -> Result<Option<ComposeResult>> {
    if ctx.opts.force {
        return Ok(None);
    }
    if let Some(prev) = &ctx.previous {
        if prev.meta.inputhash.as_deref() == Some(ctx.inputhash.as_str()) {
            tracing::info!("{}: input hash unchanged, nothing to do", ctx.tf.ref_);
            IndexNote::write(
                &ctx.opts.repo,
                &ctx.tf.ref_,
                &prev.checksum,
                &ctx.index_digest,
            );
            return Ok(Some(skipped(ctx, prev)));
        }
    }
    Ok(None)
}

/// What the package indexes were when a ref's commit was last found current: the cheap no-op
/// check's memory. It lives beside the repo, not in the commit, so that the commit holds only
/// what determines its content (a compose from a lockfile then gives the same checksum).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct IndexNote {
    commit: String,
    index_digest: String,
}

impl IndexNote {
    fn path(repo: &Path, ref_: &str) -> PathBuf {
        repo.join("cairn-index-state")
            .join(format!("{}.json", work_name(ref_)))
    }

    fn read(repo: &Path, ref_: &str) -> Option<Self> {
        let text = fs_err::read_to_string(Self::path(repo, ref_)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Best effort: losing it only costs the next no-op an apt resolution.
    pub(super) fn write(repo: &Path, ref_: &str, commit: &str, index_digest: &str) {
        let path = Self::path(repo, ref_);
        let note = Self {
            commit: commit.to_string(),
            index_digest: index_digest.to_string(),
        };
        let r = (|| -> Result<()> {
            if let Some(dir) = path.parent() {
                fs_err::create_dir_all(dir)?;
            }
            crate::base::tmp::write_atomic(&path, &serde_json::to_vec(&note)?)
        })();
        if let Err(e) = r {
            tracing::warn!(
                "could not record the index state in {}: {e:#}",
                path.display()
            );
        }
    }
}
