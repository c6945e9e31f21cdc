//! `cairn compose`: a treefile → an OSTree commit on its ref.
//!
//! A parent layer is composed first (when its inputs changed) and the child starts from its
//! commit. Each layer goes through typed stages, each a value that is complete when it is made
//! (mkosi's shape: one context, a flat list of steps; [`compose_one`] lists the stages,
//! [`run_steps`] the steps):
//!
//! 1. **Gathered inputs** ([`gather::Inputs`], the heart of the layer's [`Ctx`]): the flattened
//!    treefile, the parent layer's commit, the apt sources and their index state, the
//!    `SOURCE_DATE_EPOCH`, the ref's commit and what the repo noted of its indexes.
//! 2. **The no-op decision** ([`noop::decide`], pure): when the treefile digest and the package
//!    indexes' `InRelease` digests both match the ref's commit, nothing is written and apt never
//!    runs.
//! 3. **Resolved packages** ([`resolve::Resolved`]): apt set up, the parent's commit checked out
//!    for a layer ([`resolve::Start`]), the package set resolved, and the input hash over this
//!    layer's flattened treefile (with the content of every file it reads), the parent layer's
//!    commit and the resolved package versions. When it equals the one on the ref's commit
//!    ([`noop::decide_resolved`], pure) nothing is written.
//! 4. **The steps** ([`steps`]), in one work tree ([`steps::Tree`]): download, install,
//!    configure (files, accounts, units, postprocess), initramfs, inventory (sources, licenses),
//!    OSTree layout, commit; each takes what the ones before it made.

pub mod apt;
mod bytecode;
mod gather;
mod inventory;
pub mod layout;
pub mod lockfile;
mod noop;
mod publish;
mod resolve;
pub mod rootfs;
mod steps;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::interrupt;
use crate::base::progress::Progress;
use crate::base::tmp::TempTree;
use crate::store;
use crate::treefile::Treefile;
use apt::AptEnv;
use gather::Inputs;
use lockfile::Lockfile;
use noop::Decision;
use resolve::{Resolved, Start};

/// Bump when a change to cairn changes what the same inputs compose to.
const COMPOSE_FORMAT: u32 = 6;

/// Options common to a compose run.
#[derive(Debug, Clone)]
pub struct ComposeOpts {
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub lockfile: Option<PathBuf>,
    pub force: bool,
    /// `SOURCE_DATE_EPOCH` from the environment, if set.
    pub source_date_epoch: Option<i64>,
    /// Keep the work tree of a failed compose for inspection.
    pub keep_failed: bool,
    /// Build in a private tmpfs when there is memory for it (the default), else on disk.
    pub tmpfs: bool,
    /// The GPG home for treefiles that name `gpg-key` (`None`: `$GNUPGHOME` or gpg's default).
    pub gpg_homedir: Option<PathBuf>,
}

/// What a work tree may take in memory: a base host is about 0.5 GB; layers add little.
const TMPFS_SIZE: u64 = 6 << 30;

/// A fresh work tree for `ref_`: on a tmpfs when allowed and at least twice its size is free.
fn work_tree(opts: &ComposeOpts, ref_: &str) -> Result<TempTree> {
    let parent = opts.cache.join("tmp");
    let name = work_name(ref_);
    let fits = crate::base::tmp::memory_available().is_some_and(|m| m >= 2 * TMPFS_SIZE);
    if opts.tmpfs && fits {
        TempTree::new_tmpfs_in(&parent, &name, TMPFS_SIZE)
    } else {
        TempTree::new_in(&parent, &name)
    }
}

/// What a compose did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ComposeResult {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub commit: String,
    pub version: String,
    pub inputhash: String,
    pub skipped: bool,
    pub packages: usize,
    pub layer_parent: Option<String>,
    pub seconds: f64,
    /// The commit the ref pointed at before.
    pub previous: Option<String>,
}

/// Compose `tf` (its parent layers first) and return one result per layer, parents first.
pub fn compose(
    tf: &Treefile,
    opts: &ComposeOpts,
    progress: &Progress,
) -> Result<Vec<ComposeResult>> {
    let lockfile = match &opts.lockfile {
        Some(p) => Some((p.clone(), Lockfile::load(p)?)),
        None => None,
    };
    publish::check_keys(tf, opts.gpg_homedir.as_deref())?;
    let mut results = Vec::new();
    compose_chain(tf, opts, lockfile.as_ref(), progress, &mut results)?;
    // Signatures, deltas for the refs that moved, the summary (only when one moved: a no-op
    // writes nothing), the audit log.
    publish::after_compose(tf, &opts.repo, opts.gpg_homedir.as_deref(), &results)?;
    Ok(results)
}

fn compose_chain(
    tf: &Treefile,
    opts: &ComposeOpts,
    lockfile: Option<&(PathBuf, Lockfile)>,
    progress: &Progress,
    results: &mut Vec<ComposeResult>,
) -> Result<()> {
    let parent = match &tf.parent {
        Some(p) => {
            compose_chain(p, opts, lockfile, progress, results)?;
            results.last().map(|r| r.commit.clone())
        }
        None => None,
    };
    let r = compose_one(tf, opts, lockfile, parent, progress)
        .with_context(|| format!("composing {} ({})", tf.ref_, tf.path.display()))?;
    results.push(r);
    Ok(())
}

/// One layer's context: what it is given and what it gathered, complete when built. The stages
/// and steps after it take it by reference, with the values the ones before them made.
struct Ctx<'a> {
    tf: &'a Treefile,
    opts: &'a ComposeOpts,
    lockfile: Option<&'a (PathBuf, Lockfile)>,
    progress: &'a Progress,
    start: Instant,
    inputs: Inputs,
}

/// Compose one layer (its parent's commit, if any, is `parent`): the stages, then the steps.
fn compose_one(
    tf: &Treefile,
    opts: &ComposeOpts,
    lockfile: Option<&(PathBuf, Lockfile)>,
    parent: Option<String>,
    progress: &Progress,
) -> Result<ComposeResult> {
    let start = Instant::now();
    let ctx = Ctx {
        tf,
        opts,
        lockfile,
        progress,
        start,
        inputs: gather::gather(tf, opts, lockfile, parent)?,
    };
    if let Decision::Unchanged(prev) = noop::decide(&ctx.inputs, opts.force) {
        tracing::info!("{}: inputs unchanged, nothing to do", tf.ref_);
        return Ok(noop::skipped(&tf.ref_, &ctx.inputs, prev, start));
    }
    let apt = resolve::apt_env(&ctx)?;
    interrupt::check()?;
    let onto = resolve::checkout_parent(&ctx)?;
    interrupt::check()?;
    let resolved = resolve::resolve(&ctx, &apt, &onto)?;
    let decision = noop::decide_resolved(&ctx.inputs, &resolved.inputhash, opts.force);
    if let Decision::Unchanged(prev) = decision {
        tracing::info!("{}: input hash unchanged, nothing to do", tf.ref_);
        let index = &ctx.inputs.index.digest;
        noop::IndexNote::write(&opts.repo, &tf.ref_, &prev.checksum, index);
        return Ok(noop::skipped(&tf.ref_, &ctx.inputs, prev, start));
    }
    run_steps(&ctx, &apt, onto, resolved)
}

/// The steps, in order, each given what the stages and steps before it made.
fn run_steps(ctx: &Ctx, apt: &AptEnv, onto: Start, resolved: Resolved) -> Result<ComposeResult> {
    let tree = steps::Tree::new(ctx, onto)?;
    let Resolved {
        packages,
        inputhash,
    } = resolved;
    interrupt::check()?;
    let packages = steps::download(ctx, apt, packages)?;
    interrupt::check()?;
    steps::install(ctx, apt, &tree, &packages.new)?;
    interrupt::check()?;
    let configured = steps::configure(ctx, &tree)?;
    interrupt::check()?;
    steps::initramfs(ctx, &tree, &configured.kver, &packages.new)?;
    interrupt::check()?;
    let inventory = steps::inventory(&tree, &packages.all)?;
    interrupt::check()?;
    steps::layout(&tree, &configured.kver)?;
    interrupt::check()?;
    let built = steps::Built {
        packages: packages.all,
        inputhash,
        configured,
        inventory,
    };
    steps::commit(ctx, tree, built)
}

fn work_name(r: &str) -> String {
    r.replace('/', "_")
}

/// The lockfile for a finished compose: every package of the commit on `ref_`.
pub fn lockfile_for(repo_path: &Path, commit: &str) -> Result<Lockfile> {
    let r = store::open(repo_path)?;
    let c = store::load_commit(&r, commit)?;
    Ok(Lockfile {
        source_date_epoch: c.meta.source_date_epoch.unwrap_or(c.timestamp as i64),
        packages: c.meta.packages,
    })
}
