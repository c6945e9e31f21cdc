//! Image manifests: what to build and ship from a commit (disk size, partitions, firmware,
//! formats, kernel arguments, provisioning, the node's remote and its trial settings).
//!
//! Parsed like treefiles: a raw TOML struct with every key optional and unknown keys rejected,
//! then a validated [`Manifest`] whose errors name the file, the line and the key.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::base::span::{check_name, parse_toml};
pub use crate::base::units::parse_size;
pub use crate::base::Firmware;

/// 1 MiB: partitions start and end on MiB boundaries.
pub const MIB: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    name: Option<Spanned<String>>,
    treefile: Option<Spanned<String>>,
    #[serde(rename = "ref")]
    ref_: Option<Spanned<String>>,
    osname: Option<Spanned<String>>,
    kernel_arguments: Option<Vec<String>>,
    size: Option<Spanned<String>>,
    firmware: Option<Spanned<Vec<String>>>,
    formats: Option<Spanned<Vec<String>>>,
    provisioning: Option<Spanned<String>>,
    qcow2_compression: Option<Spanned<String>>,
    partitions: Option<Vec<Spanned<layout::RawPartition>>>,
    remote_url: Option<Spanned<String>>,
    remote_gpg_key_file: Option<Spanned<String>>,
    remote_gpg_verify: Option<Spanned<bool>>,
    release_key: Option<Spanned<String>>,
    trial_boots: Option<Spanned<i64>>,
    health_deadline: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Gce,
}

impl Format {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "raw" => Self::Raw,
            "qcow2" => Self::Qcow2,
            "vmdk" => Self::Vmdk,
            "vhd" => Self::Vhd,
            "gce" => Self::Gce,
            _ => return None,
        })
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// GRUB's core image for BIOS boot (no filesystem).
    BiosBoot,
    /// The EFI system partition (FAT).
    Esp,
    /// A separate `/boot` (ext4): kernels, initramfs and bootloader entries of every deployment.
    /// Optional: without one, `/boot` is a directory of the root filesystem, where libostree
    /// hardlinks each deployment's kernel and initramfs instead of copying them.
    Boot,
    /// The root filesystem (ext4) with `/ostree`; it grows to the disk on first boot.
    Root,
}

/// A partition of the validated layout, with its place on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub label: String,
    pub kind: PartKind,
    pub start: u64,
    pub size: u64,
}

/// How the first boot gets its SSH keys and hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// cloud-init's NoCloud data source (seed ISO or SMBIOS serial).
    NoCloud,
    /// None: the image trusts nobody until something else adds a key.
    None,
}

/// How the qcow2 artifact's clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Compression {
    /// zstd (the default): about 6× faster to write than zlib and a little smaller; read by
    /// QEMU 5.1 (2020) and later, hence by every supported distribution's qemu-img and libvirt.
    Zstd,
    /// zlib: read by every qcow2 reader, QEMU before 5.1 included.
    Zlib,
    /// Uncompressed clusters (the empty ones are still left out).
    None,
}

/// The key a node's remote trusts (`gpg-verify=true`): its file and the fingerprints in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    pub file: PathBuf,
    pub fingerprints: Vec<String>,
}

/// What the node's remote trusts: signed by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `remote-gpg-key-file`: the public key of a release key kept elsewhere.
    Key(RemoteKey),
    /// `release-key`: the GPG home of a release key that signs the image's commit, made there
    /// on first use (`cairn key new`); the node trusts its public key.
    ReleaseKey(PathBuf),
    /// `remote-gpg-verify = false`: the node accepts any commit (a warning at every build).
    Unverified,
}

/// Where the commit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Compose this treefile (path resolved against the manifest's directory), then use its ref.
    Treefile(PathBuf),
    /// Use this ref or commit from the repo.
    Ref(String),
}

/// A validated image manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub source: Source,
    pub osname: String,
    pub kernel_arguments: Vec<String>,
    pub size: u64,
    pub firmware: Vec<Firmware>,
    pub formats: Vec<Format>,
    pub provisioning: Provisioning,
    pub qcow2_compression: Qcow2Compression,
    pub partitions: Vec<Partition>,
    /// The URL the node's OSTree remote pulls from (`None`: set later).
    pub remote_url: Option<String>,
    /// What the node's remote trusts.
    pub trust: Trust,
    /// The node's settings: trial boots of a new deployment, and the deadline of each
    /// (`/etc/cairn/node.toml` and the deadline timer's drop-in in the deployment).
    pub node: crate::node::config::Config,
    /// The update agent's settings (`agent`: a file checked as `/etc/cairn/agent.toml` is,
    /// written there); `None`: the node runs no update agent.
    pub agent: Option<AgentFile>,
}

/// The update agent's settings file an image ships.
#[derive(Debug, Clone)]
pub struct AgentFile {
    pub path: PathBuf,
    pub text: String,
    pub config: crate::node::updates::config::AgentConfig,
}

impl Manifest {
    /// The partition of a kind, if the layout has one.
    pub fn partition(&self, kind: PartKind) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.kind == kind)
    }
}

/// Load and validate the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest> {
    let (doc, raw): (_, RawManifest) = parse_toml(path, "image manifest")?;
    let file = &doc.file;
    let at = |offset: usize| doc.at(offset);
    let dir = path.parent().unwrap_or(Path::new("."));

    let name = doc.required(&raw.name, "name")?;
    check_name(name, "name", 64, &at)?;
    let name = name.get_ref().clone();
    let source = source(&raw, dir, &at, file)?;
    let osname = match &raw.osname {
        Some(o) => {
            check_name(o, "osname", 64, &at)?;
            o.get_ref().clone()
        }
        None => "cairn".into(),
    };
    let size = disk_size(&raw.size, &at, file)?;
    let firmware = match &raw.firmware {
        None => vec![Firmware::Bios, Firmware::Uefi],
        Some(f) => Firmware::parse_list(f.get_ref(), &at(f.span().start))?,
    };
    let formats = formats(&raw.formats, &at)?;
    let provisioning = one_of(
        &raw.provisioning,
        "provisioning",
        &[
            ("nocloud", Provisioning::NoCloud),
            ("none", Provisioning::None),
        ],
        &at,
    )?;
    let qcow2_compression = one_of(
        &raw.qcow2_compression,
        "qcow2-compression",
        &[
            ("zstd", Qcow2Compression::Zstd),
            ("zlib", Qcow2Compression::Zlib),
            ("none", Qcow2Compression::None),
        ],
        &at,
    )?;
    check_remote_url(&raw.remote_url, &at)?;
    let trust = trust(&raw, dir, &at, file)?;
    let partitions = layout::layout(raw.partitions, size, &firmware, &at, file)?;
    let node = node_config(&raw.trial_boots, &raw.health_deadline, &at)?;
    let agent = match &raw.agent {
        None => None,
        Some(a) => {
            let p = dir.join(a.get_ref());
            let config = crate::node::updates::config::AgentConfig::load(&p)
                .map_err(|e| anyhow!("{}: key `agent`: {e:#}", at(a.span().start)))?;
            let text = fs_err::read_to_string(&p)?;
            Some(AgentFile {
                path: p,
                text,
                config,
            })
        }
    };
    Ok(Manifest {
        path: path.to_path_buf(),
        name,
        source,
        osname,
        kernel_arguments: raw.kernel_arguments.unwrap_or_default(),
        size,
        firmware,
        formats,
        provisioning,
        qcow2_compression,
        partitions,
        remote_url: raw.remote_url.map(|u| u.into_inner()),
        trust,
        node,
        agent,
    })
}

/// `treefile` or `ref`: exactly one, the treefile existing, the ref valid.
fn source(
    raw: &RawManifest,
    dir: &Path,
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Source> {
    Ok(match (&raw.treefile, &raw.ref_) {
        (Some(t), None) => {
            let p = dir.join(t.get_ref());
            if !p.is_file() {
                bail!(
                    "{}: key `treefile`: {} does not exist",
                    at(t.span().start),
                    p.display()
                );
            }
            Source::Treefile(p)
        }
        (None, Some(r)) => {
            if !crate::store::valid_ref(r.get_ref()) {
                bail!(
                    "{}: key `ref`: {:?} is not an OSTree ref or commit",
                    at(r.span().start),
                    r.get_ref()
                );
            }
            Source::Ref(r.get_ref().clone())
        }
        (Some(t), Some(_)) => bail!(
            "{}: keys `treefile` and `ref`: give one, not both",
            at(t.span().start)
        ),
        (None, None) => bail!("{file}: key `treefile` (or `ref`) is missing"),
    })
}

/// `size`: at least 64 MiB, a whole number of MiB; 4 GiB when absent.
fn disk_size(
    value: &Option<Spanned<String>>,
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<u64> {
    let size = match value {
        Some(s) => parse_size(s.get_ref())
            .filter(|b| *b >= 64 * MIB)
            .ok_or_else(|| {
                anyhow!(
                    "{}: key `size`: {:?} is not a size of at least 64M (e.g. \"4G\")",
                    at(s.span().start),
                    s.get_ref()
                )
            })?,
        None => 4 << 30,
    };
    if size % MIB != 0 {
        bail!("{file}: key `size` must be a whole number of MiB (Azure's VHD needs it)");
    }
    Ok(size)
}

/// `formats`: known output formats; qcow2 when absent.
fn formats(
    value: &Option<Spanned<Vec<String>>>,
    at: &dyn Fn(usize) -> String,
) -> Result<Vec<Format>> {
    if let Some(f) = value.as_ref().filter(|f| f.get_ref().is_empty()) {
        bail!(
            "{}: key `formats` is empty: name one or more of raw, qcow2, vmdk, vhd, gce",
            at(f.span().start)
        );
    }
    Ok(match value {
        None => vec![Format::Qcow2],
        Some(f) => f
            .get_ref()
            .iter()
            .map(|x| {
                Format::parse(x).ok_or_else(|| {
                    anyhow!(
                        "{}: key `formats`: {x:?} is not one of raw, qcow2, vmdk, vhd, gce",
                        at(f.span().start)
                    )
                })
            })
            .collect::<Result<_>>()?,
    })
}

/// `remote-url`: an http://, https:// (with a host) or file:/// URL, as the `url` crate parses
/// it (a port that is not a number, a missing host or a stray space are errors here, not in a
/// node that can never upgrade).
fn check_remote_url(value: &Option<Spanned<String>>, at: &dyn Fn(usize) -> String) -> Result<()> {
    let Some(u) = value else {
        return Ok(());
    };
    let text = u.get_ref();
    let why = match url::Url::parse(text) {
        Err(e) => Some(e.to_string()),
        Ok(_) if text.contains(char::is_whitespace) => Some("it holds a space".into()),
        Ok(p) => match p.scheme() {
            "http" | "https" if p.host_str().is_none_or(str::is_empty) => Some("no host".into()),
            "http" | "https" => None,
            "file" if p.host_str().is_some_and(|h| !h.is_empty()) || p.path() == "/" => {
                Some("a file URL is file:///PATH".into())
            }
            "file" => None,
            other => Some(format!("the scheme {other:?} is not http, https or file")),
        },
    };
    match why {
        None => Ok(()),
        Some(why) => bail!(
            "{}: key `remote-url`: {text:?} is not an http://, https:// or file:/// URL ({why})",
            at(u.span().start)
        ),
    }
}

/// `remote-gpg-key-file` (a public key, read and checked), `release-key` (a GPG home, made on
/// first use) or `remote-gpg-verify = false`: exactly one.
fn trust(raw: &RawManifest, dir: &Path, at: &dyn Fn(usize) -> String, file: &str) -> Result<Trust> {
    let verify = raw
        .remote_gpg_verify
        .as_ref()
        .map(|v| (*v.get_ref(), v.span().start));
    match (&raw.remote_gpg_key_file, &raw.release_key, verify) {
        (Some(k), Some(_), _) => bail!(
            "{}: keys `remote-gpg-key-file` and `release-key`: give one, not both",
            at(k.span().start)
        ),
        (Some(k), None, None | Some((true, _))) => Ok(Trust::Key(remote_key(k, dir, at)?)),
        (None, Some(r), None | Some((true, _))) => Ok(Trust::ReleaseKey(release_key(r, dir, at)?)),
        (None, None, Some((false, _))) => Ok(Trust::Unverified),
        (_, _, Some((false, pos))) => bail!(
            "{}: key `remote-gpg-verify` is false, but the manifest names a key to trust: \
             drop one of them",
            at(pos)
        ),
        (None, None, _) => bail!(
            "{file}: key `remote-gpg-key-file` is missing: a node's remote trusts only commits \
             signed by a release key. Name its public key (`cairn key new DIR` makes a key and \
             writes DIR/<KEYID>.asc), or `release-key = \"DIR\"` (a key made there on first use \
             that signs the image's commit), or set `remote-gpg-verify = false` for nodes that \
             accept any commit"
        ),
    }
}

/// `remote-gpg-key-file`: a file, resolved against the manifest's directory, holding an OpenPGP
/// public key (read by gpg now, not found bad during a node's deploy).
fn remote_key(k: &Spanned<String>, dir: &Path, at: &dyn Fn(usize) -> String) -> Result<RemoteKey> {
    let p = dir.join(k.get_ref());
    let here = at(k.span().start);
    if !p.is_file() {
        bail!(
            "{here}: key `remote-gpg-key-file`: {} does not exist (`cairn key new` writes \
             the public key as <KEYID>.asc in the key's directory)",
            p.display()
        );
    }
    let fingerprints = crate::release::key::fingerprints_in(&p)
        .map_err(|e| anyhow!("{here}: key `remote-gpg-key-file`: {e:#}"))?;
    Ok(RemoteKey {
        file: p,
        fingerprints,
    })
}

/// `release-key`: a directory path (absent until its first use, or a directory), resolved
/// against the manifest's directory.
fn release_key(r: &Spanned<String>, dir: &Path, at: &dyn Fn(usize) -> String) -> Result<PathBuf> {
    let p = dir.join(r.get_ref());
    if r.get_ref().trim().is_empty() || (p.exists() && !p.is_dir()) {
        bail!(
            "{}: key `release-key`: {:?} is not a directory for a GPG home",
            at(r.span().start),
            r.get_ref()
        );
    }
    Ok(p)
}

/// The node's settings: `trial-boots` and `health-deadline` over the defaults.
fn node_config(
    trial_boots: &Option<Spanned<i64>>,
    health_deadline: &Option<Spanned<String>>,
    at: &dyn Fn(usize) -> String,
) -> Result<crate::node::config::Config> {
    let mut node = crate::node::config::Config::default();
    if let Some(t) = trial_boots {
        node.trial_boots = crate::node::config::check_tries(*t.get_ref())
            .map_err(|e| anyhow!("{}: key `trial-boots`: {e}", at(t.span().start)))?;
    }
    if let Some(d) = health_deadline {
        node.health_deadline = crate::node::config::check_deadline(d.get_ref())
            .map_err(|e| anyhow!("{}: key `health-deadline`: {e}", at(d.span().start)))?;
    }
    Ok(node)
}

/// The value of a key that takes one of `choices`; the first when the key is absent.
fn one_of<T: Copy>(
    value: &Option<Spanned<String>>,
    key: &str,
    choices: &[(&str, T)],
    at: &dyn Fn(usize) -> String,
) -> Result<T> {
    let default = choices
        .first()
        .ok_or_else(|| anyhow!("internal: key `{key}` has no choices"))?;
    let Some(v) = value else {
        return Ok(default.1);
    };
    if let Some((_, t)) = choices.iter().find(|(name, _)| name == v.get_ref()) {
        return Ok(*t);
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    bail!(
        "{}: key `{key}`: {:?} is not {list}",
        at(v.span().start),
        v.get_ref()
    )
}

/// Check that the root filesystem can hold the tree deployed for it (`used` bytes in 4 KiB
/// blocks), with ext4's own metadata (inode tables, journal, extent blocks), before any
/// filesystem is made: an error naming `size` and the size needed, not mkfs's "Could not
/// allocate block".
pub fn check_root_size(m: &Manifest, used: u64) -> Result<()> {
    let root = m
        .partition(PartKind::Root)
        .ok_or_else(|| anyhow!("internal: a validated layout without a root partition"))?;
    // mke2fs's defaults: a 256-byte inode per 16 KiB (1/64 of the filesystem), a journal of
    // 16 to 64 MiB at these sizes, ~1/32 of the data for extent and directory blocks.
    let need = |size: u64| {
        let journal = match size {
            s if s < 128 * MIB => 4 * MIB,
            s if s < (1 << 30) => 16 * MIB,
            s if s < (2 << 30) => 32 * MIB,
            _ => 64 * MIB,
        };
        used + used / 32 + size / 64 + journal + 8 * MIB
    };
    if root.size >= need(root.size) {
        return Ok(());
    }
    // The disk size to ask for: the other partitions stay, the root one takes the rest (its
    // metadata grows with it), in steps of 64 MiB.
    let others = m.size - root.size;
    let mut disk = (m.size / (64 * MIB) + 1) * 64 * MIB;
    while disk - others < need(disk - others) {
        disk += 64 * MIB;
    }
    bail!(
        "{}: key `size`: the root partition ({}) would have {} MiB, but the commit needs \
         about {} MiB ({} MiB of files, and ext4's metadata): make `size` at least \"{}M\"",
        m.path.display(),
        root.label,
        root.size / MIB,
        need(root.size).div_ceil(MIB),
        used.div_ceil(MIB),
        disk / MIB
    )
}

/// Check that /boot holds two deployments' kernel and initramfs (an upgrade writes the new one
/// before the old one goes), with room for the bootloader.
pub fn check_boot_size(m: &Manifest, kernel_and_initramfs: u64) -> Result<()> {
    let Some(boot) = m.partition(PartKind::Boot) else {
        return Ok(());
    };
    // ext4 metadata and the bootloader take some room; keep a quarter spare.
    let need = 2 * kernel_and_initramfs + kernel_and_initramfs / 2 + 16 * MIB;
    if boot.size < need {
        bail!(
            "{}: key `partitions`: /boot ({}) has {} MiB, but two deployments need {} MiB \
             (kernel and initramfs are {} MiB each)",
            m.path.display(),
            boot.label,
            boot.size / MIB,
            need.div_ceil(MIB),
            kernel_and_initramfs.div_ceil(MIB)
        );
    }
    Ok(())
}

mod layout;
#[cfg(test)]
mod tests;
