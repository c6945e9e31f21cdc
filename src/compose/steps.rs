//! The steps of a layer's compose, after the package set is resolved: download, install,
//! configure, initramfs, inventory, layout, commit. Each takes the values the stages and steps
//! before it made, and returns what the ones after it need; [`super::run_steps`] lists them.
//!
//! They all work in one [`Tree`]: a fresh directory for a base, the parent's checkout for a
//! layer. It is removed once the commit is written, and kept for inspection when a step fails
//! under `--keep-failed`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::apt::{AptEnv, Package};
use super::resolve::{Packages, Start};
use super::{bytecode, inventory, layout, noop, publish, rootfs, work_tree, ComposeResult, Ctx};
use crate::base::tmp::TempTree;
use crate::base::{Distro, PackageInfo};
use crate::describe::sbom;
use crate::store::{self, CommitMeta, MetaValue};
use crate::treefile::Treefile;

/// The tree a layer is built in.
pub(super) struct Tree {
    work: TempTree,
    root: PathBuf,
    /// For a layer: the parent's commit and when its checkout was complete.
    base: Option<(String, i128)>,
    /// `--keep-failed`: keep the tree if it is dropped before its commit is written.
    keep_failed: bool,
}

impl Tree {
    /// The tree for the steps: a fresh one for a base, the parent's checkout for a layer.
    pub(super) fn new(ctx: &Ctx, start: Start) -> Result<Self> {
        let (work, root, base) = match start {
            Start::Scratch => {
                let work = work_tree(ctx.opts, &ctx.tf.ref_)?;
                let root = work.path().join("root");
                (work, root, None)
            }
            Start::Parent(c) => (c.work, c.root, Some((c.commit, c.checked_out_at))),
        };
        Ok(Self {
            work,
            root,
            base,
            keep_failed: ctx.opts.keep_failed,
        })
    }

    fn open(&self) -> Result<cap_std::fs::Dir> {
        layout::open_root(&self.root)
    }

    /// The commit is written: the tree goes, whatever `--keep-failed` says.
    fn committed(mut self) {
        self.keep_failed = false;
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.keep_failed {
            self.work.keep();
        }
    }
}

/// Step: download what is not cached, and record every package's digest.
pub(super) fn download(ctx: &Ctx, apt: &AptEnv, packages: Packages) -> Result<Packages> {
    let Packages { mut all, mut new } = packages;
    let ph = ctx.progress.phase("download", "fetching packages");
    apt.download(&mut new)?;
    for n in &new {
        if let Some(p) = all.iter_mut().find(|p| p.name == n.name) {
            p.sha256 = n.sha256.clone();
        }
    }
    if let Some((path, lf)) = ctx.lockfile {
        lf.verify(&all, path)?;
    }
    ph.done(&format!("{} packages cached", new.len()));
    Ok(Packages { all, new })
}

/// Step: install the packages (from scratch, or onto the parent's checkout).
pub(super) fn install(ctx: &Ctx, apt: &AptEnv, tree: &Tree, new: &[Package]) -> Result<()> {
    let ph = ctx.progress.phase("install", "installing packages");
    let epoch = ctx.inputs.epoch;
    if tree.base.is_some() {
        rootfs::install_layer(apt, new, &tree.root, epoch)?;
    } else {
        rootfs::bootstrap(ctx.tf, apt, new, &tree.root, epoch)?;
    }
    ph.done(&format!("{} packages installed", new.len()));
    Ok(())
}

/// What configuring the tree settled.
pub(super) struct Configured {
    /// The commit's version.
    pub version: String,
    /// The kernel the tree boots.
    pub kver: String,
}

/// Step: files, accounts, units, target, os-release, postprocess scripts.
pub(super) fn configure(ctx: &Ctx, tree: &Tree) -> Result<Configured> {
    let ph = ctx.progress.phase("postprocess", "configuring the tree");
    let root = tree.open()?;
    let epoch = ctx.inputs.epoch;
    let version = next_version(ctx.tf, ctx.inputs.previous.as_ref());
    let kver = layout::kernel_version(&root)?;
    rootfs::configure(&ctx.tf.keys, &tree.root, &root, epoch)?;
    rootfs::finish(ctx.tf, &tree.root, &root, &version, epoch)?;
    rootfs::postprocess(&ctx.tf.keys, &tree.root, epoch)?;
    ph.done("done");
    Ok(Configured { version, kver })
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

/// Step: the initramfs (always from scratch; for a layer only when it changes what dracut sees).
pub(super) fn initramfs(ctx: &Ctx, tree: &Tree, kver: &str, new: &[Package]) -> Result<()> {
    let needed = tree.base.is_none()
        || !ctx.tf.keys.initramfs_args.is_empty()
        || layer_touches_initramfs(&tree.root, new);
    if !needed {
        return Ok(());
    }
    let ph = ctx
        .progress
        .phase("initramfs", "dracut with the ostree module");
    let args = ctx.tf.all_initramfs_args();
    rootfs::initramfs(&args, &tree.root, kver, ctx.inputs.epoch)?;
    ph.done(kver);
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

/// What the finished tree says of its packages and distribution (for the SBOM).
pub(super) struct Inventory {
    pub package_info: Vec<PackageInfo>,
    pub distro: Option<Distro>,
}

/// Step: each package's source and licenses, and the distribution, while the tree is still a
/// Debian root (dpkg's database in /var, copyright files in place).
pub(super) fn inventory(tree: &Tree, packages: &[Package]) -> Result<Inventory> {
    let root = tree.open()?;
    Ok(Inventory {
        package_info: inventory::package_info(&root, packages)?,
        distro: inventory::distro(&root)?,
    })
}

/// Step: the OSTree layout, and Python bytecode that is never checked against its source again.
pub(super) fn layout(tree: &Tree, kver: &str) -> Result<()> {
    let root = tree.open()?;
    layout::to_ostree(&root, kver)?;
    let b = bytecode::seal(&root)?;
    tracing::info!(
        "Python bytecode: {} files made unchecked-hash, {} already were, {} left as they are (stale)",
        b.sealed,
        b.already,
        b.stale
    );
    Ok(())
}

/// Everything the commit is made of, besides the tree.
pub(super) struct Built {
    pub packages: Vec<Package>,
    pub inputhash: String,
    pub configured: Configured,
    pub inventory: Inventory,
}

/// Step: write the commit and move the ref; the tree goes.
pub(super) fn commit(ctx: &Ctx, tree: Tree, built: Built) -> Result<ComposeResult> {
    let ph = ctx.progress.phase("commit", "writing the OSTree commit");
    let meta = commit_meta(ctx, &built)?;
    let signer = publish::signer(ctx.tf, ctx.opts.gpg_homedir.as_deref())?;
    let r = store::open_or_create(&ctx.opts.repo)?;
    let version = &built.configured.version;
    let subject = format!("{} {version}", ctx.tf.ref_);
    let previous = ctx.inputs.previous.as_ref().map(|p| p.checksum.clone());
    let checksum = store::write_commit(
        &r,
        &store::NewCommit {
            root: &tree.root,
            base: tree.base.as_ref().map(|(commit, at)| store::Base {
                commit,
                checked_out_at: *at,
            }),
            header: store::Header {
                ref_: &ctx.tf.ref_,
                parent: previous.as_deref(),
                subject: &subject,
                meta: &meta,
                timestamp: u64::try_from(ctx.inputs.epoch).unwrap_or(0),
                signer: signer.as_ref().map(|s| s as &dyn store::SignCommit),
            },
        },
    )?;
    ph.done(crate::base::text::short_hash(&checksum));
    noop::IndexNote::write(
        &ctx.opts.repo,
        &ctx.tf.ref_,
        &checksum,
        &ctx.inputs.index.digest,
    );
    tree.committed();
    Ok(ComposeResult {
        ref_: ctx.tf.ref_.clone(),
        commit: checksum,
        version: version.clone(),
        inputhash: built.inputhash,
        skipped: false,
        packages: built.packages.len(),
        layer_parent: ctx.inputs.parent.clone(),
        seconds: ctx.start.elapsed().as_secs_f64(),
        previous,
    })
}

/// The commit's metadata, with the SPDX document of its packages.
fn commit_meta(ctx: &Ctx, b: &Built) -> Result<CommitMeta> {
    let inputs = &ctx.inputs;
    let spdx = sbom::spdx(&sbom::Subject {
        ref_: &ctx.tf.ref_,
        version: &b.configured.version,
        id: &b.inputhash,
        created: inputs.epoch,
        packages: &b.packages,
        info: &b.inventory.package_info,
        distro: b.inventory.distro.as_ref(),
        commit: None,
    });
    Ok(CommitMeta {
        version: Some(b.configured.version.clone()),
        bootable: true,
        linux: Some(b.configured.kver.clone()),
        inputhash: Some(b.inputhash.clone()),
        treefile_digest: Some(inputs.treefile_digest.clone()),
        treefile: Some(inputs.treefile_json.clone()),
        packages: b.packages.clone(),
        sbom_spdx: Some(serde_json::to_string(&spdx)?),
        source_date_epoch: Some(inputs.epoch),
        layer_parent: inputs.parent.clone(),
        package_info: b.inventory.package_info.clone(),
        distro: b.inventory.distro.clone(),
        provenance: publish::provenance(&ctx.tf.path),
        extra: ctx.tf.add_commit_metadata(),
        ..Default::default()
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
