//! `cairn image`: a commit → bootable disk images, as a flat list of steps over one context:
//! deploy through libostree into a fresh sysroot (with GRUB's environment block and the node's
//! trial settings), make the filesystems from directories, write the partition table and GRUB
//! into a plain file, convert to the manifest's formats, write stream metadata.

pub mod artifacts;
pub mod disk;
pub mod grub;
pub mod manifest;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::base::progress::Progress;
use crate::base::tmp::TempTree;
use crate::store::{self, sysroot};
use artifacts::Artifact;
use manifest::{Firmware, Manifest, PartKind, Partition};

/// Where images go and what they are made from.
pub struct ImageOpts {
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub out: PathBuf,
}

/// What `cairn image` made.
#[derive(Debug, Serialize)]
pub struct ImageResult {
    pub name: String,
    #[serde(rename = "ref")]
    pub ref_: String,
    pub commit: String,
    pub version: String,
    pub artifacts: Vec<Artifact>,
    pub stream_metadata: PathBuf,
}

/// The remote a node upgrades from (its URL is the deployment's business).
const REMOTE: &str = "cairn";

struct Ctx<'a> {
    m: &'a Manifest,
    /// The deployment's directory, relative to the sysroot.
    deployment: String,
    opts: &'a ImageOpts,
    progress: &'a Progress,
    ref_: String,
    commit: String,
    version: String,
    epoch: i64,
    /// The key the node's remote trusts (`None`: `remote-gpg-verify = false`).
    trust: Option<manifest::RemoteKey>,
    work: TempTree,
}

impl Ctx<'_> {
    fn w(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A GUID derived from the inputs, so that the same commit and manifest give the same disk.
    fn guid(&self, what: &str) -> String {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("cairn-image/{}/{}/{what}", self.m.name, self.commit).as_bytes(),
        )
        .to_string()
    }

    fn part(&self, kind: PartKind) -> Result<&Partition> {
        self.m
            .partition(kind)
            .ok_or_else(|| anyhow!("internal: validated manifest lacks a {kind:?} partition"))
    }
}

/// Build the manifest's images from `rev` (a ref or commit in the repo).
pub fn build(
    m: &Manifest,
    rev: &str,
    opts: &ImageOpts,
    progress: &Progress,
) -> Result<ImageResult> {
    let r = store::open(&opts.repo)?;
    let commit = store::resolve(&r, rev)?;
    let info = store::load_commit(&r, &commit)?;
    check_provisioning(m, rev, &info.meta.packages)?;
    let trust = trust(m, &opts.repo, rev)?;
    let version = info.version_or_checksum();
    let work = TempTree::new_in(&opts.cache.join("tmp"), &format!("image-{}", m.name))?;
    let mut ctx = Ctx {
        m,
        deployment: String::new(),
        opts,
        progress,
        ref_: if rev == commit {
            format!("{}/{}", m.osname, m.name)
        } else {
            rev.to_string()
        },
        commit,
        version,
        epoch: info.timestamp as i64,
        trust,
        work,
    };
    let steps: [fn(&mut Ctx) -> Result<()>; 2] = [deploy_step, filesystems];
    for step in steps {
        crate::base::interrupt::check()?;
        step(&mut ctx)?;
    }
    crate::base::interrupt::check()?;
    // The trees mkfs read are not needed for the formats: removed meanwhile (whatever is left
    // goes with the work tree).
    let trees = [ctx.w("sysroot"), ctx.w("bootfs")];
    std::thread::scope(|s| {
        let rm = s.spawn(|| {
            trees
                .iter()
                .try_for_each(|t| crate::base::tmp::remove_tree(t))
        });
        let result = convert(&ctx);
        let _ = rm.join();
        result
    })
}

/// The key the node trusts: the manifest's public key; or its `release-key`, made on first use,
/// which signs the commit now (and becomes the repo's release key when it has none); or none,
/// with a warning at every build.
pub fn trust(m: &Manifest, repo: &Path, rev: &str) -> Result<Option<manifest::RemoteKey>> {
    match &m.trust {
        manifest::Trust::Key(k) => Ok(Some(k.clone())),
        manifest::Trust::Unverified => {
            tracing::warn!(
                "{}: remote-gpg-verify = false: the image's node accepts any commit from anyone \
                 who can answer on its remote's address",
                m.path.display()
            );
            Ok(None)
        }
        manifest::Trust::ReleaseKey(dir) => {
            let at = || format!("{}: key `release-key`", m.path.display());
            let (abs_dir, abs_repo) = (std::path::absolute(dir)?, std::path::absolute(repo)?);
            if abs_dir.starts_with(&abs_repo) {
                bail!(
                    "{}: {} is inside the repo {}, which is served: keep the secret key out of it",
                    at(),
                    dir.display(),
                    repo.display()
                );
            }
            let k = crate::release::key::release_key(dir).with_context(at)?;
            let opts = crate::release::sign::SignOpts {
                gpg_homedir: Some(k.homedir.clone()),
                key_id: Some(k.key.fingerprint.clone()),
            };
            crate::release::sign_rev(repo, rev, &opts).with_context(at)?;
            Ok(Some(manifest::RemoteKey {
                fingerprints: crate::release::key::fingerprints_in(&k.public_key)?,
                file: k.public_key,
            }))
        }
    }
}

/// A NoCloud image needs cloud-init in its commit, or nobody could ever log in to it.
fn check_provisioning(m: &Manifest, rev: &str, packages: &[crate::base::Package]) -> Result<()> {
    if m.provisioning == manifest::Provisioning::NoCloud
        && !packages.iter().any(|p| p.name == "cloud-init")
    {
        bail!(
            "{}: key `provisioning`: \"nocloud\" needs cloud-init, and {rev} has none \
             (add it to the treefile's packages, as treefiles/blessed.toml does, or set \
             provisioning = \"none\")",
            m.path.display()
        );
    }
    Ok(())
}

/// The deployment, and meanwhile what needs nothing from it: the partition table, GRUB and
/// the ESP (sgdisk alone sleeps a second for a kernel that never rereads a file's table).
fn deploy_step(ctx: &mut Ctx) -> Result<()> {
    let ph = ctx.progress.phase(
        "deploy",
        "deploying the commit into a fresh sysroot; partition table, GRUB, ESP",
    );
    let c: &Ctx = ctx;
    let (dep, disk) = std::thread::scope(|s| {
        let disk = s.spawn(|| bootloader(c));
        (deploy_tree(c), disk.join())
    });
    let dep = dep?;
    disk.map_err(|_| anyhow!("internal: the partition table thread panicked"))??;
    ph.done(&dep);
    ctx.deployment = dep;
    Ok(())
}

fn deploy_tree(ctx: &Ctx) -> Result<String> {
    let sysroot = ctx.w("sysroot");
    fs_err::create_dir_all(&sysroot)?;
    let mut kargs = vec!["root=LABEL=root".to_string(), "rw".to_string()];
    kargs.extend(ctx.m.kernel_arguments.iter().cloned());
    let trust = ctx.trust.as_ref().map(|k| crate::store::remote::Trust {
        key_file: &k.file,
        fingerprints: k.fingerprints.clone(),
    });
    let dep = sysroot::deploy(
        &sysroot,
        &sysroot::DeployOpts {
            repo: &ctx.opts.repo,
            commit: &ctx.commit,
            ref_: &ctx.ref_,
            osname: &ctx.m.osname,
            remote: REMOTE,
            remote_url: ctx.m.remote_url.as_deref(),
            trust,
            kargs: &kargs,
        },
    )?;
    // The initramfs mounts the root (root= karg). The node writes new boot entries into /boot on
    // upgrades: a separate boot partition is mounted there; without one, ostree-prepare-root
    // bind-mounts the root filesystem's /boot.
    let separate_boot = ctx.m.partition(PartKind::Boot).is_some();
    let fstab = sysroot.join(&dep).join("etc/fstab");
    let mut table = String::from("# Written by cairn image\n");
    if separate_boot {
        table.push_str("LABEL=boot /boot ext4 defaults 0 2\n");
    }
    fs_err::write(&fstab, table).with_context(|| format!("writing {}", fstab.display()))?;
    node_files(ctx.m, &sysroot.join(&dep), &sysroot.join("boot"))?;
    if separate_boot {
        // /boot becomes its own filesystem.
        fs_err::rename(sysroot.join("boot"), ctx.w("bootfs"))?;
        fs_err::create_dir(sysroot.join("boot"))?;
        let kernels = dir_size(&ctx.w("bootfs/ostree"))?;
        manifest::check_boot_size(ctx.m, kernels)?;
    }
    manifest::check_root_size(ctx.m, tree_usage(&sysroot)?)?;
    Ok(dep)
}

/// The bytes a tree takes in 4 KiB blocks: each file once however many hardlinks it has (the
/// repo's objects and the deployment share them), a block per directory and per long symlink.
fn tree_usage(root: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    const BLOCK: u64 = 4096;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        total += BLOCK;
        for e in fs_err::read_dir(&dir)? {
            let e = e?;
            let m = fs_err::symlink_metadata(e.path())?;
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() && (m.nlink() == 1 || seen.insert(m.ino())) {
                total += m.len().div_ceil(BLOCK) * BLOCK;
            } else if m.file_type().is_symlink() && m.len() >= 60 {
                total += BLOCK;
            }
        }
    }
    Ok(total)
}

/// What the node's trial machinery needs from the image: GRUB's environment block in the
/// directory that becomes /boot (1024 bytes, made here once: GRUB and the node only ever
/// rewrite it in place), and the manifest's trial settings in the deployment's `/etc`
/// (`cairn/node.toml`, and the deadline timer's drop-in), which every later deployment inherits
/// through OSTree's `/etc` merge.
fn node_files(m: &Manifest, deployment: &Path, boot: &Path) -> Result<()> {
    let grub = boot.join("grub");
    fs_err::create_dir_all(&grub)?;
    fs_err::write(grub.join("grubenv"), crate::node::grubenv::empty_block())?;
    let write = |rel: &str, text: String| -> Result<()> {
        let p = deployment.join(rel);
        fs_err::create_dir_all(p.parent().unwrap_or(deployment))?;
        fs_err::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write(crate::node::CONFIG, m.node.to_toml())?;
    if let Some(a) = &m.agent {
        write(crate::node::updates::config::PATH, a.text.clone())?;
    }
    write(
        crate::node::units::DEADLINE_DROPIN,
        crate::node::units::deadline_dropin(m.node.health_deadline.as_secs()),
    )
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs_err::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

fn filesystems(ctx: &mut Ctx) -> Result<()> {
    let ph = ctx
        .progress
        .phase("filesystems", "filesystems from directories, in place");
    let raw = ctx.w("disk.raw");
    if let Some(boot) = ctx.m.partition(PartKind::Boot) {
        disk::mkfs_ext4(
            &ctx.w("bootfs"),
            "boot",
            &ctx.guid("fs-boot"),
            &raw,
            boot,
            ctx.epoch,
            &[],
        )?;
    }
    disk::mkfs_ext4(
        &ctx.w("sysroot"),
        "root",
        &ctx.guid("fs-root"),
        &raw,
        ctx.part(PartKind::Root)?,
        ctx.epoch,
        &[format!("/{}", ctx.deployment)],
    )?;
    // The image has the deployment root's immutable flag; the work tree needs it no more, and
    // without it the tree is removed in one pass, not a failed one and a `chattr -R` walk.
    crate::base::cmd::Cmd::new("chattr")
        .arg("-i")
        .arg(ctx.w("sysroot").join(&ctx.deployment))
        .run()?;
    ph.done(if ctx.m.partition(PartKind::Boot).is_some() {
        "boot, root"
    } else {
        "root with /boot"
    });
    Ok(())
}

/// The GPT on a sparse file of the disk's size, GRUB for BIOS (MBR and BIOS boot partition) and
/// for UEFI (on the ESP, made in place).
fn bootloader(ctx: &Ctx) -> Result<()> {
    let raw = ctx.w("disk.raw");
    disk::partition(ctx.m, &raw, &|what| ctx.guid(what))?;
    grub::grub_images(ctx.work.path(), ctx.m.partition(PartKind::Boot).is_some())?;
    if ctx.m.firmware.contains(&Firmware::Uefi) {
        let serial = &ctx.guid("fs-esp").replace('-', "")[..8];
        disk::mkfs_esp(
            ctx.work.path(),
            &raw,
            ctx.part(PartKind::Esp)?,
            serial,
            ctx.epoch,
        )?;
    }
    if ctx.m.firmware.contains(&Firmware::Bios) {
        let boot_img = Path::new("/usr/lib/grub/i386-pc/boot.img");
        if !boot_img.exists() {
            bail!("{} is missing: install grub-pc-bin", boot_img.display());
        }
        grub::install_bios(
            &raw,
            ctx.part(PartKind::BiosBoot)?,
            &ctx.w("core.img"),
            boot_img,
        )?;
    }
    Ok(())
}

fn convert(ctx: &Ctx) -> Result<ImageResult> {
    let ph = ctx.progress.phase("convert", "writing the image formats");
    fs_err::create_dir_all(&ctx.opts.out)
        .with_context(|| format!("creating {}", ctx.opts.out.display()))?;
    let base = format!("{}-{}", ctx.m.name, ctx.version);
    let mut arts = Vec::new();
    for f in &ctx.m.formats {
        let (_, _, suffix) = artifacts::platform_of(*f);
        arts.push(artifacts::convert(
            &ctx.w("disk.raw"),
            *f,
            &ctx.opts.out.join(format!("{base}.{suffix}")),
            ctx.m.qcow2_compression,
        )?);
    }
    let stream = ctx.opts.out.join(format!("{base}.stream.json"));
    let doc = artifacts::stream_metadata(
        &artifacts::Release {
            stream: &ctx.m.name,
            version: &ctx.version,
            commit: &ctx.commit,
            ref_: &ctx.ref_,
            timestamp: ctx.epoch,
            artifacts: &arts,
        },
        std::env::consts::ARCH,
    );
    artifacts::write_json(&stream, &doc)?;
    // The stream's current document, as CoreOS publishes `stable.json`: what an auto-scaling
    // group (or `cairn fleet`) reads to find the newest image of the stream.
    artifacts::write_json(
        &ctx.opts.out.join(format!("{}.stream.json", ctx.m.name)),
        &doc,
    )?;
    ph.done(&format!("{} artifacts", arts.len()));
    Ok(ImageResult {
        name: ctx.m.name.clone(),
        ref_: ctx.ref_.clone(),
        commit: ctx.commit.clone(),
        version: ctx.version.clone(),
        artifacts: arts,
        stream_metadata: stream,
    })
}
