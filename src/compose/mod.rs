//! `cairn compose`: a treefile → an OSTree commit on its ref.
//!
//! One [`Ctx`] flows through a flat list of steps (mkosi's shape): check for a no-op, resolve,
//! download, install, configure and postprocess, initramfs, OSTree layout, commit. A parent layer
//! is composed first (when its inputs changed) and the child starts from its commit.
//!
//! The input hash covers this layer's flattened treefile (with the content of every file it
//! reads), the parent layer's commit and the resolved package versions. When it equals the one on
//! the ref's commit nothing is written. A cheaper check runs before resolving: when the treefile
//! digest and the package indexes' `InRelease` digests both match the ref's commit, compose
//! returns without running apt at all.

pub mod layout;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::apt::{self, AptEnv, Package, ResolveError};
use crate::lockfile::Lockfile;
use crate::progress::Progress;
use crate::repo::{self, keys, MetaBuilder};
use crate::sbom;
use crate::tmp::TempTree;
use crate::treefile::Treefile;

/// Bump when a change to cairn changes what the same inputs compose to.
const COMPOSE_FORMAT: u32 = 4;

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
    let fits = crate::tmp::memory_available().is_some_and(|m| m >= 2 * TMPFS_SIZE);
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
    crate::release::check_compose(tf, opts.gpg_homedir.as_deref())?;
    let mut results = Vec::new();
    compose_chain(tf, opts, lockfile.as_ref(), progress, &mut results)?;
    // Deltas for the refs that moved, the summary (only when one moved: a no-op writes nothing),
    // signatures, the audit log.
    crate::release::after_compose(tf, &opts.repo, opts.gpg_homedir.as_deref(), &results)?;
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

/// Everything one layer's compose knows, filled in step by step.
struct Ctx<'a> {
    tf: &'a Treefile,
    opts: &'a ComposeOpts,
    lockfile: Option<&'a (PathBuf, Lockfile)>,
    progress: &'a Progress,
    start: Instant,
    parent_commit: Option<String>,
    treefile_json: String,
    treefile_digest: String,
    index_digest: String,
    epoch: i64,
    previous: Option<repo::CommitInfo>,
    apt: Option<AptEnv>,
    work: Option<TempTree>,
    /// The packages of the finished tree, and the ones this layer installs.
    packages: Vec<Package>,
    new_packages: Vec<Package>,
    inputhash: String,
    version: String,
    kver: String,
    /// For a layer: when the parent's checkout was complete.
    checked_out_at: i128,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn compose_one(
    tf: &Treefile,
    opts: &ComposeOpts,
    lockfile: Option<&(PathBuf, Lockfile)>,
    parent_commit: Option<String>,
    progress: &Progress,
) -> Result<ComposeResult> {
    let flat = tf.flattened()?;
    let treefile_json = serde_json::to_string(&serde_json::json!({
        "format": COMPOSE_FORMAT,
        "treefile": flat,
        "layer-parent": parent_commit,
        "source-date-epoch": opts.source_date_epoch,
    }))?;
    let mut ctx = Ctx {
        tf,
        opts,
        lockfile,
        progress,
        start: Instant::now(),
        parent_commit,
        treefile_digest: sha256_hex(treefile_json.as_bytes()),
        treefile_json,
        index_digest: String::new(),
        epoch: 0,
        previous: None,
        apt: None,
        work: None,
        packages: Vec::new(),
        new_packages: Vec::new(),
        inputhash: String::new(),
        version: String::new(),
        kver: String::new(),
        checked_out_at: 0,
    };
    if let Some(done) = check_indexes(&mut ctx)? {
        return Ok(done);
    }
    crate::interrupt::check()?;
    prepare_parent(&mut ctx)?;
    crate::interrupt::check()?;
    resolve(&mut ctx)?;
    if let Some(done) = check_inputhash(&ctx)? {
        return Ok(done);
    }
    // The flat list of steps; each skips itself when it has nothing to do.
    let steps: [fn(&mut Ctx) -> Result<()>; 5] =
        [download, install, configure, initramfs, finish_layout];
    let result = (|| {
        for step in steps {
            crate::interrupt::check()?;
            step(&mut ctx)?;
        }
        crate::interrupt::check()?;
        commit(&mut ctx)
    })();
    if result.is_err() && opts.keep_failed {
        if let Some(w) = ctx.work.as_mut() {
            w.keep();
        }
    }
    result
}

fn skipped(ctx: &Ctx, prev: &repo::CommitInfo) -> ComposeResult {
    ComposeResult {
        ref_: ctx.tf.ref_.clone(),
        commit: prev.checksum.clone(),
        version: prev.version().unwrap_or_default(),
        inputhash: prev.string(keys::INPUTHASH).unwrap_or_default(),
        skipped: true,
        packages: prev.packages().len(),
        layer_parent: ctx.parent_commit.clone(),
        seconds: ctx.start.elapsed().as_secs_f64(),
        previous: Some(prev.checksum.clone()),
    }
}

/// Step: the cheap no-op check (treefile digest and package index digests).
fn check_indexes(ctx: &mut Ctx) -> Result<Option<ComposeResult>> {
    let sources = match &ctx.tf.repos {
        Some(r) => vec![apt::treefile_sources(r)],
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
        let r = repo::open(&ctx.opts.repo)?;
        if let Some(c) = repo::resolve_opt(&r, &ctx.tf.ref_)? {
            ctx.previous = Some(repo::commit_info(&r, &c)?);
        }
    }
    if !ctx.opts.force {
        if let Some(prev) = &ctx.previous {
            let state = IndexNote::read(&ctx.opts.repo, &ctx.tf.ref_);
            if prev.string(keys::TREEFILE_DIGEST).as_deref() == Some(ctx.treefile_digest.as_str())
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
        ctx.tf.recommends,
    )?);
    if let Some(apt) = &ctx.apt {
        let ph = ctx.progress.phase("resolve", "updating package indexes");
        apt.update(&index)?;
        apt.set_pins(ctx.lockfile.map(|(_, lf)| lf.packages.as_slice()))?;
        ph.done("indexes current");
    }
    Ok(None)
}

/// Step: for a layer, check out the parent's commit and make it a Debian root again.
fn prepare_parent(ctx: &mut Ctx) -> Result<()> {
    let Some(parent) = &ctx.parent_commit else {
        return Ok(());
    };
    let ph = ctx.progress.phase("checkout", "parent layer");
    let r = repo::open(&ctx.opts.repo)?;
    let work = work_tree(ctx.opts, &ctx.tf.ref_)?;
    let root = work.path().join("root");
    ctx.checked_out_at = repo::checkout(&r, parent, &root)?;
    layout::from_ostree(&layout::open_root(&root)?)?;
    let info = repo::commit_info(&r, parent)?;
    ctx.packages = info.packages();
    ctx.work = Some(work);
    ph.done(&format!("from {}", &parent[..12.min(parent.len())]));
    Ok(())
}

fn work_name(r: &str) -> String {
    r.replace('/', "_")
}

/// The apt environment (set up by the first step); takes the field so borrows stay disjoint.
fn apt_env(apt: &Option<AptEnv>) -> Result<&AptEnv> {
    apt.as_ref()
        .ok_or_else(|| anyhow!("internal: apt is not set up"))
}

fn root_path(ctx: &Ctx) -> Result<PathBuf> {
    ctx.work
        .as_ref()
        .map(|w| w.path().join("root"))
        .ok_or_else(|| anyhow!("internal: no work tree"))
}

/// Step: resolve the package set with apt.
fn resolve(ctx: &mut Ctx) -> Result<()> {
    let apt = apt_env(&ctx.apt)?;
    let ph = ctx.progress.phase("resolve", "resolving packages");
    let mut request: Vec<String> = Vec::new();
    let status = if ctx.parent_commit.is_some() {
        Some(root_path(ctx)?.join("var/lib/dpkg/status"))
    } else {
        request.extend(["?essential", "?priority(required)", "apt"].map(String::from));
        None
    };
    request.extend(ctx.tf.all_packages());
    request.extend(
        ctx.tf
            .all_exclude_packages()
            .iter()
            .map(|p| format!("{p}-")),
    );
    let resolved = apt
        .resolve(&request, status.as_deref())
        .map_err(|e| match e {
            ResolveError::UnknownPackage(name) => match ctx.tf.package_origin(&name) {
                Some(o) => anyhow!(
                    "{o}: key `packages`: package {name} is not in the configured apt sources"
                ),
                None => {
                    anyhow!("package {name} (a dependency) is not in the configured apt sources")
                }
            },
            ResolveError::Other(m) => anyhow!("{m}"),
        })?;
    for ex in ctx.tf.all_exclude_packages() {
        if resolved.iter().any(|p| p.name == ex) {
            bail!("package {ex} is in `exclude-packages` but would be installed");
        }
    }
    // The finished tree: the parent's packages with this layer's added or replaced, and those
    // that conflict with them removed.
    if let Some(st) = &status {
        for gone in apt.removals(&request, st)? {
            tracing::info!("{gone} is removed (a new package conflicts with it)");
            ctx.packages.retain(|p| p.name != gone);
        }
    }
    for n in &resolved {
        ctx.packages.retain(|p| p.name != n.name);
    }
    ctx.packages.extend(resolved.iter().cloned());
    ctx.packages.sort();
    ctx.new_packages = resolved;
    if let Some((path, lf)) = ctx.lockfile {
        lf.verify(&ctx.packages, path)?;
    }
    let pkg_lines: Vec<String> = ctx
        .packages
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.version, p.arch))
        .collect();
    ctx.inputhash =
        sha256_hex(format!("{}\n{}", ctx.treefile_json, pkg_lines.join("\n")).as_bytes());
    ph.done(&format!(
        "{} packages, {} to install",
        ctx.packages.len(),
        ctx.new_packages.len()
    ));
    Ok(())
}

/// Step: the input-hash no-op check.
fn check_inputhash(ctx: &Ctx) -> Result<Option<ComposeResult>> {
    if ctx.opts.force {
        return Ok(None);
    }
    if let Some(prev) = &ctx.previous {
        if prev.string(keys::INPUTHASH).as_deref() == Some(ctx.inputhash.as_str()) {
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

/// Step: download what is not cached, and record every package's digest.
fn download(ctx: &mut Ctx) -> Result<()> {
    let apt = apt_env(&ctx.apt)?;
    let ph = ctx.progress.phase("download", "fetching packages");
    apt.download(&mut ctx.new_packages)?;
    for n in &ctx.new_packages {
        if let Some(p) = ctx.packages.iter_mut().find(|p| p.name == n.name) {
            p.sha256 = n.sha256.clone();
        }
    }
    if let Some((path, lf)) = ctx.lockfile {
        lf.verify(&ctx.packages, path)?;
    }
    ph.done(&format!("{} packages cached", ctx.new_packages.len()));
    Ok(())
}

/// Step: install the packages (from scratch, or onto the parent's checkout).
fn install(ctx: &mut Ctx) -> Result<()> {
    let apt = apt_env(&ctx.apt)?;
    let ph = ctx.progress.phase("install", "installing packages");
    if ctx.parent_commit.is_some() {
        rootfs::install_layer(apt, &ctx.new_packages, &root_path(ctx)?, ctx.epoch)?;
    } else {
        let work = work_tree(ctx.opts, &ctx.tf.ref_)?;
        let root = work.path().join("root");
        ctx.work = Some(work);
        rootfs::bootstrap(ctx.tf, apt, &ctx.new_packages, &root, ctx.epoch)?;
    }
    ph.done(&format!("{} packages installed", ctx.new_packages.len()));
    Ok(())
}

/// The next version on the ref: `<prefix>.<n>`.
fn next_version(tf: &Treefile, previous: Option<&repo::CommitInfo>) -> String {
    if let Some(crate::treefile::MetaValue::Str(v)) = tf.add_commit_metadata.get("version") {
        return v.clone();
    }
    let prefix = tf.automatic_version_prefix.as_deref().unwrap_or("0");
    let next = previous
        .and_then(|p| p.version())
        .and_then(|v| {
            v.strip_prefix(&format!("{prefix}."))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map(|n| n + 1)
        .unwrap_or(0);
    format!("{prefix}.{next}")
}

/// Step: files, accounts, units, target, os-release, postprocess scripts.
fn configure(ctx: &mut Ctx) -> Result<()> {
    let ph = ctx.progress.phase("postprocess", "configuring the tree");
    let root_path = root_path(ctx)?;
    let root = layout::open_root(&root_path)?;
    ctx.version = next_version(ctx.tf, ctx.previous.as_ref());
    ctx.kver = layout::kernel_version(&root)?;
    rootfs::configure(&ctx.tf.layer, ctx.tf, &root_path, &root, ctx.epoch)?;
    rootfs::finish(ctx.tf, &root_path, &root, &ctx.version, ctx.epoch)?;
    rootfs::postprocess(&ctx.tf.layer, &root_path, ctx.epoch)?;
    ph.done("done");
    Ok(())
}

/// Does any package this layer installs put files where dracut looks?
fn layer_touches_initramfs(root: &Path, pkgs: &[Package]) -> bool {
    pkgs.iter().any(|p| {
        let list = root.join(format!("var/lib/dpkg/info/{}.list", p.name));
        let list_arch = root.join(format!("var/lib/dpkg/info/{}:{}.list", p.name, p.arch));
        let text = std::fs::read_to_string(&list)
            .or_else(|_| std::fs::read_to_string(&list_arch))
            .unwrap_or_default();
        text.lines().any(|l| {
            l.starts_with("/usr/lib/dracut/")
                || l.starts_with("/etc/dracut.conf.d/")
                || l.starts_with("/usr/lib/modules/")
                || l.starts_with("/lib/modules/")
        })
    })
}

/// Step: the initramfs (always from scratch; for a layer only when it changes what dracut sees).
fn initramfs(ctx: &mut Ctx) -> Result<()> {
    let root = root_path(ctx)?;
    let needed = ctx.parent_commit.is_none()
        || !ctx.tf.layer.initramfs_args.is_empty()
        || layer_touches_initramfs(&root, &ctx.new_packages);
    if !needed {
        return Ok(());
    }
    let ph = ctx
        .progress
        .phase("initramfs", "dracut with the ostree module");
    let mut args = Vec::new();
    let mut t = Some(ctx.tf);
    while let Some(tf) = t {
        args.splice(0..0, tf.layer.initramfs_args.iter().cloned());
        t = tf.parent.as_deref();
    }
    rootfs::initramfs(&args, &root, &ctx.kver, ctx.epoch)?;
    ph.done(&ctx.kver);
    Ok(())
}

/// Step: the OSTree layout.
fn finish_layout(ctx: &mut Ctx) -> Result<()> {
    let root = layout::open_root(&root_path(ctx)?)?;
    layout::to_ostree(&root, &ctx.kver)
}

/// Step: write the commit and move the ref.
fn commit(ctx: &mut Ctx) -> Result<ComposeResult> {
    let ph = ctx.progress.phase("commit", "writing the OSTree commit");
    let spdx = sbom::spdx(&sbom::Subject {
        ref_: &ctx.tf.ref_,
        version: &ctx.version,
        id: &ctx.inputhash,
        created: ctx.epoch,
        packages: &ctx.packages,
    });
    let meta = MetaBuilder::new();
    meta.insert(keys::VERSION, ctx.version.as_str())
        .insert(keys::BOOTABLE, true)
        .insert(keys::LINUX, ctx.kver.as_str())
        .insert(keys::INPUTHASH, ctx.inputhash.as_str())
        .insert(keys::TREEFILE_DIGEST, ctx.treefile_digest.as_str())
        .insert(keys::TREEFILE, ctx.treefile_json.as_str())
        .insert(keys::SOURCE_DATE_EPOCH, ctx.epoch)
        .insert(keys::SBOM, serde_json::to_string(&spdx)?.as_str())
        .packages(&ctx.packages);
    if let Some(p) = &ctx.parent_commit {
        meta.insert(keys::LAYER_PARENT, p.as_str());
    }
    crate::release::provenance(&meta, &ctx.tf.path);
    for (k, v) in &ctx.tf.add_commit_metadata {
        match v {
            crate::treefile::MetaValue::Str(s) => meta.insert(k, s.as_str()),
            crate::treefile::MetaValue::Int(i) => meta.insert(k, *i),
            crate::treefile::MetaValue::Bool(b) => meta.insert(k, *b),
        };
    }
    let signer =
        crate::release::sign::Signer::for_treefile(ctx.tf, ctx.opts.gpg_homedir.as_deref())?;
    let r = repo::open_or_create(&ctx.opts.repo)?;
    let subject = format!("{} {}", ctx.tf.ref_, ctx.version);
    let checksum = repo::write_commit(
        &r,
        &repo::NewCommit {
            root: &root_path(ctx)?,
            base: ctx.parent_commit.as_deref().map(|commit| repo::Base {
                commit,
                checked_out_at: ctx.checked_out_at,
            }),
            ref_: &ctx.tf.ref_,
            parent: ctx.previous.as_ref().map(|p| p.checksum.as_str()),
            subject: &subject,
            metadata: meta.end(),
            timestamp: u64::try_from(ctx.epoch).unwrap_or(0),
            signer: signer.as_ref().map(|s| s as &dyn repo::SignCommit),
        },
    )?;
    ph.done(&checksum[..12]);
    IndexNote::write(&ctx.opts.repo, &ctx.tf.ref_, &checksum, &ctx.index_digest);
    ctx.work = None;
    Ok(ComposeResult {
        ref_: ctx.tf.ref_.clone(),
        commit: checksum,
        version: ctx.version.clone(),
        inputhash: ctx.inputhash.clone(),
        skipped: false,
        packages: ctx.packages.len(),
        layer_parent: ctx.parent_commit.clone(),
        seconds: ctx.start.elapsed().as_secs_f64(),
        previous: ctx.previous.as_ref().map(|p| p.checksum.clone()),
    })
}

/// What the package indexes were when a ref's commit was last found current: the cheap no-op
/// check's memory. It lives beside the repo, not in the commit, so that the commit holds only
/// what determines its content (a compose from a lockfile then gives the same checksum).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct IndexNote {
    commit: String,
    index_digest: String,
}

impl IndexNote {
    fn path(repo: &Path, ref_: &str) -> PathBuf {
        repo.join("cairn-index-state")
            .join(format!("{}.json", work_name(ref_)))
    }

    fn read(repo: &Path, ref_: &str) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(repo, ref_)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Best effort: losing it only costs the next no-op an apt resolution.
    fn write(repo: &Path, ref_: &str, commit: &str, index_digest: &str) {
        let path = Self::path(repo, ref_);
        let note = Self {
            commit: commit.to_string(),
            index_digest: index_digest.to_string(),
        };
        let r = (|| -> Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::tmp::write_atomic(&path, &serde_json::to_vec(&note)?)
        })();
        if let Err(e) = r {
            tracing::warn!(
                "could not record the index state in {}: {e:#}",
                path.display()
            );
        }
    }
}

/// The lockfile for a finished compose: every package of the commit on `ref_`.
pub fn lockfile_for(repo_path: &Path, commit: &str) -> Result<Lockfile> {
    let r = repo::open(repo_path)?;
    let info = repo::commit_info(&r, commit)?;
    let epoch = info
        .metadata
        .lookup::<i64>(keys::SOURCE_DATE_EPOCH)
        .ok()
        .flatten()
        .unwrap_or(info.timestamp as i64);
    Ok(Lockfile {
        source_date_epoch: epoch,
        packages: info.packages(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_the_prefix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("t.toml"),
            "ref = \"a/b\"\nreleasever = \"bookworm\"\nautomatic-version-prefix = \"1\"\n",
        )
        .unwrap();
        let tf = crate::treefile::load(&d.path().join("t.toml")).unwrap();
        assert_eq!(next_version(&tf, None), "1.0");
    }
}
