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

pub mod apt;
mod bytecode;
mod inventory;
pub mod layout;
pub mod lockfile;
mod noop;
mod publish;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::base::digest::sha256_hex;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::base::progress::Progress;
use crate::base::tmp::TempTree;
use crate::describe::sbom;
use crate::store::MetaValue;
use crate::store::{self, CommitMeta};
use crate::treefile::Treefile;
use apt::{AptEnv, Package, ResolveError};
use lockfile::Lockfile;

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
    previous: Option<store::Commit>,
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
    /// What the finished tree says of its packages and distribution (for the SBOM).
    package_info: Vec<crate::base::PackageInfo>,
    distro: Option<crate::base::Distro>,
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
        package_info: Vec::new(),
        distro: None,
    };
    if let Some(done) = noop::check_indexes(&mut ctx)? {
        return Ok(done);
    }
    crate::base::interrupt::check()?;
    prepare_parent(&mut ctx)?;
    crate::base::interrupt::check()?;
    resolve(&mut ctx)?;
    if let Some(done) = noop::check_inputhash(&ctx)? {
        return Ok(done);
    }
    // The flat list of steps; each skips itself when it has nothing to do.
    let steps: [fn(&mut Ctx) -> Result<()>; 6] = [
        download,
        install,
        configure,
        initramfs,
        inventory,
        finish_layout,
    ];
    let result = (|| {
        for step in steps {
            crate::base::interrupt::check()?;
            step(&mut ctx)?;
        }
        crate::base::interrupt::check()?;
        commit(&mut ctx)
    })();
    if result.is_err() && opts.keep_failed {
        if let Some(w) = ctx.work.as_mut() {
            w.keep();
        }
    }
    result
}

/// Step: for a layer, check out the parent's commit and make it a Debian root again.
fn prepare_parent(ctx: &mut Ctx) -> Result<()> {
    let Some(parent) = &ctx.parent_commit else {
        return Ok(());
    };
    let ph = ctx.progress.phase("checkout", "parent layer");
    let r = store::open(&ctx.opts.repo)?;
    let work = work_tree(ctx.opts, &ctx.tf.ref_)?;
    let root = work.path().join("root");
    ctx.checked_out_at = store::checkout(&r, parent, &root)?;
    layout::from_ostree(&layout::open_root(&root)?)?;
    ctx.packages = store::load_commit(&r, parent)?.meta.packages;
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
fn next_version(tf: &Treefile, previous: Option<&store::Commit>) -> String {
    if let Some(MetaValue::Str(v)) = tf.keys.add_commit_metadata.get("version").map(|i| &i.value) {
        return v.clone();
    }
    let prefix = tf.automatic_version_prefix().unwrap_or("0");
    let next = previous
        .and_then(|p| p.meta.version.as_deref())
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
    rootfs::configure(&ctx.tf.keys, &root_path, &root, ctx.epoch)?;
    rootfs::finish(ctx.tf, &root_path, &root, &ctx.version, ctx.epoch)?;
    rootfs::postprocess(&ctx.tf.keys, &root_path, ctx.epoch)?;
    ph.done("done");
    Ok(())
}

/// Does any package this layer installs put files where dracut looks?
fn layer_touches_initramfs(root: &Path, pkgs: &[Package]) -> bool {
    pkgs.iter().any(|p| {
        let list = root.join(format!("var/lib/dpkg/info/{}.list", p.name));
        let list_arch = root.join(format!("var/lib/dpkg/info/{}:{}.list", p.name, p.arch));
        let text = fs_err::read_to_string(&list)
            .or_else(|_| fs_err::read_to_string(&list_arch))
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
        || !ctx.tf.keys.initramfs_args.is_empty()
        || layer_touches_initramfs(&root, &ctx.new_packages);
    if !needed {
        return Ok(());
    }
    let ph = ctx
        .progress
        .phase("initramfs", "dracut with the ostree module");
    let args = ctx.tf.all_initramfs_args();
    rootfs::initramfs(&args, &root, &ctx.kver, ctx.epoch)?;
    ph.done(&ctx.kver);
    Ok(())
}

/// Step: each package's source and licenses, and the distribution, while the tree is still a
/// Debian root (dpkg's database in /var, copyright files in place).
fn inventory(ctx: &mut Ctx) -> Result<()> {
    let root = layout::open_root(&root_path(ctx)?)?;
    ctx.package_info = inventory::package_info(&root, &ctx.packages)?;
    ctx.distro = inventory::distro(&root)?;
    Ok(())
}

/// Step: the OSTree layout, and Python bytecode that is never checked against its source again.
fn finish_layout(ctx: &mut Ctx) -> Result<()> {
    let root = layout::open_root(&root_path(ctx)?)?;
    layout::to_ostree(&root, &ctx.kver)?;
    let b = bytecode::seal(&root)?;
    tracing::info!(
        "Python bytecode: {} files made unchecked-hash, {} already were, {} left as they are (stale)",
        b.sealed,
        b.already,
        b.stale
    );
    Ok(())
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
        info: &ctx.package_info,
        distro: ctx.distro.as_ref(),
        commit: None,
    });
    let meta = CommitMeta {
        version: Some(ctx.version.clone()),
        bootable: true,
        linux: Some(ctx.kver.clone()),
        inputhash: Some(ctx.inputhash.clone()),
        treefile_digest: Some(ctx.treefile_digest.clone()),
        treefile: Some(ctx.treefile_json.clone()),
        packages: ctx.packages.clone(),
        sbom_spdx: Some(serde_json::to_string(&spdx)?),
        source_date_epoch: Some(ctx.epoch),
        layer_parent: ctx.parent_commit.clone(),
        package_info: ctx.package_info.clone(),
        distro: ctx.distro.clone(),
        provenance: publish::provenance(&ctx.tf.path),
        extra: ctx.tf.add_commit_metadata(),
        ..Default::default()
    };
    let signer = publish::signer(ctx.tf, ctx.opts.gpg_homedir.as_deref())?;
    let r = store::open_or_create(&ctx.opts.repo)?;
    let subject = format!("{} {}", ctx.tf.ref_, ctx.version);
    let checksum = store::write_commit(
        &r,
        &store::NewCommit {
            root: &root_path(ctx)?,
            base: ctx.parent_commit.as_deref().map(|commit| store::Base {
                commit,
                checked_out_at: ctx.checked_out_at,
            }),
            header: store::Header {
                ref_: &ctx.tf.ref_,
                parent: ctx.previous.as_ref().map(|p| p.checksum.as_str()),
                subject: &subject,
                meta: &meta,
                timestamp: u64::try_from(ctx.epoch).unwrap_or(0),
                signer: signer.as_ref().map(|s| s as &dyn store::SignCommit),
            },
        },
    )?;
    ph.done(&checksum[..12]);
    noop::IndexNote::write(&ctx.opts.repo, &ctx.tf.ref_, &checksum, &ctx.index_digest);
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

/// The lockfile for a finished compose: every package of the commit on `ref_`.
pub fn lockfile_for(repo_path: &Path, commit: &str) -> Result<Lockfile> {
    let r = store::open(repo_path)?;
    let c = store::load_commit(&r, commit)?;
    Ok(Lockfile {
        source_date_epoch: c.meta.source_date_epoch.unwrap_or(c.timestamp as i64),
        packages: c.meta.packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_the_prefix() {
        let d = tempfile::tempdir().unwrap();
        fs_err::write(
            d.path().join("t.toml"),
            "ref = \"a/b\"\nreleasever = \"bookworm\"\nautomatic-version-prefix = \"1\"\n",
        )
        .unwrap();
        let tf = crate::treefile::load(&d.path().join("t.toml")).unwrap();
        assert_eq!(next_version(&tf, None), "1.0");
    }
}
