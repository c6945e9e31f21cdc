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
    partitions: Option<Vec<Spanned<RawPartition>>>,
    remote_url: Option<Spanned<String>>,
    remote_gpg_key_file: Option<Spanned<String>>,
    trial_boots: Option<Spanned<i64>>,
    health_deadline: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartition {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    size: Option<String>,
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
    /// The public key the node's remote trusts (`gpg-verify=true`); `None`: no verification.
    pub remote_gpg_key_file: Option<PathBuf>,
    /// The node's settings: trial boots of a new deployment, and the deadline of each
    /// (`/etc/cairn/node.toml` and the deadline timer's drop-in in the deployment).
    pub node: crate::node::config::Config,
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
    let source = match (&raw.treefile, &raw.ref_) {
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
    };
    let osname = match &raw.osname {
        Some(o) => {
            check_name(o, "osname", 64, &at)?;
            o.get_ref().clone()
        }
        None => "cairn".into(),
    };
    let size = match &raw.size {
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
    let firmware = match &raw.firmware {
        None => vec![Firmware::Bios, Firmware::Uefi],
        Some(f) => Firmware::parse_list(f.get_ref(), &at(f.span().start))?,
    };
    let formats = match &raw.formats {
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
    };
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
    let partitions = layout(raw.partitions, size, &firmware, &at, file)?;
    if let Some(u) = &raw.remote_url {
        let ok = ["http://", "https://", "file:///"]
            .iter()
            .any(|s| u.get_ref().starts_with(s) && u.get_ref().len() > s.len());
        if !ok || u.get_ref().contains(char::is_whitespace) {
            bail!(
                "{}: key `remote-url`: {:?} is not an http://, https:// or file:/// URL",
                at(u.span().start),
                u.get_ref()
            );
        }
    }
    let remote_gpg_key_file = match &raw.remote_gpg_key_file {
        Some(k) => {
            let p = dir.join(k.get_ref());
            if !p.is_file() {
                bail!(
                    "{}: key `remote-gpg-key-file`: {} does not exist (`cairn key new` writes \
                     the public key as <KEYID>.asc in the key's directory)",
                    at(k.span().start),
                    p.display()
                );
            }
            Some(p)
        }
        None => None,
    };
    let mut node = crate::node::config::Config::default();
    if let Some(t) = &raw.trial_boots {
        node.trial_boots = crate::node::config::check_tries(*t.get_ref())
            .map_err(|e| anyhow!("{}: key `trial-boots`: {e}", at(t.span().start)))?;
    }
    if let Some(d) = &raw.health_deadline {
        node.health_deadline = crate::node::config::check_deadline(d.get_ref())
            .map_err(|e| anyhow!("{}: key `health-deadline`: {e}", at(d.span().start)))?;
    }
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
        remote_gpg_key_file,
        node,
    })
}

/// A GPT partition name cairn writes: 1 to 36 printable ASCII characters of a plain set.
fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 36
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c))
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

/// The default layout: BIOS boot, ESP, root (with /boot on it).
fn default_partitions() -> Vec<(String, PartKind, Option<u64>, usize)> {
    vec![
        ("BIOS-BOOT".into(), PartKind::BiosBoot, Some(MIB), 0),
        ("EFI-SYSTEM".into(), PartKind::Esp, Some(127 * MIB), 0),
        ("root".into(), PartKind::Root, None, 0),
    ]
}

fn layout(
    raw: Option<Vec<Spanned<RawPartition>>>,
    disk: u64,
    firmware: &[Firmware],
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Vec<Partition>> {
    let parts: Vec<(String, PartKind, Option<u64>, usize)> = match raw {
        None => default_partitions(),
        Some(list) => list
            .into_iter()
            .map(|p| {
                let off = p.span().start;
                let p = p.into_inner();
                let kind = match p.kind.as_str() {
                    "bios-boot" => PartKind::BiosBoot,
                    "esp" => PartKind::Esp,
                    "boot" => PartKind::Boot,
                    "root" => PartKind::Root,
                    other => bail!(
                        "{}: key `partitions.type`: {other:?} is not bios-boot, esp, boot or root",
                        at(off)
                    ),
                };
                let size = match &p.size {
                    None => None,
                    Some(s) => Some(
                        parse_size(s)
                            .filter(|b| *b > 0 && b % MIB == 0)
                            .ok_or_else(|| {
                                anyhow!(
                                    "{}: key `partitions.size`: {s:?} is not a whole number of MiB",
                                    at(off)
                                )
                            })?,
                    ),
                };
                if !valid_label(&p.label) {
                    bail!(
                        "{}: key `partitions.label`: {:?} must be 1 to 36 letters, digits, \
                         spaces, `-`, `_` and `.` (a GPT partition name)",
                        at(off),
                        p.label
                    );
                }
                Ok((p.label, kind, size, off))
            })
            .collect::<Result<_>>()?,
    };
    for kind in [
        PartKind::BiosBoot,
        PartKind::Esp,
        PartKind::Boot,
        PartKind::Root,
    ] {
        if parts.iter().filter(|p| p.1 == kind).count() > 1 {
            bail!("{file}: key `partitions`: more than one {kind:?} partition");
        }
    }
    let need = |k: PartKind, why: &str| -> Result<()> {
        if parts.iter().any(|p| p.1 == k) {
            Ok(())
        } else {
            bail!("{file}: key `partitions`: {why}")
        }
    };
    need(PartKind::Root, "a `root` partition is required")?;
    if firmware.contains(&Firmware::Bios) {
        need(
            PartKind::BiosBoot,
            "firmware `bios` on GPT needs a `bios-boot` partition",
        )?;
    }
    if firmware.contains(&Firmware::Uefi) {
        need(PartKind::Esp, "firmware `uefi` needs an `esp` partition")?;
    }
    // GPT: 1 MiB before the first partition, 1 MiB at the end for the backup table.
    let fixed: u64 = parts.iter().filter_map(|p| p.2).sum();
    let growing = parts.iter().filter(|p| p.2.is_none()).count();
    if growing > 1 {
        bail!(
            "{file}: key `partitions`: only one partition may leave out `size` (it takes the rest)"
        );
    }
    let available = disk.saturating_sub(2 * MIB);
    if fixed > available || (growing == 1 && fixed + 64 * MIB > available) {
        bail!(
            "{file}: key `partitions`: the partitions need {} MiB{} but the disk (`size`) has {} MiB",
            fixed / MIB,
            if growing == 1 { " plus 64 MiB for the growing one" } else { "" },
            available / MIB
        );
    }
    let mut start = MIB;
    let mut out = Vec::new();
    for (label, kind, size, _) in parts {
        let size = size.unwrap_or(available - fixed);
        out.push(Partition {
            label,
            kind,
            start,
            size,
        });
        start += size;
    }
    Ok(out)
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

#[cfg(test)]
mod tests;
