//! The partition layout of an image manifest: the `partitions` entries checked one by one, the
//! set checked against the firmware, then placed on the disk (1 MiB aligned, the partition
//! without a size taking the rest).

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use super::{parse_size, Firmware, PartKind, Partition, MIB};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPartition {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    size: Option<String>,
}

/// A partition as written: label, kind, size (`None`: the rest of the disk), and the offset of
/// its entry in the file.
type Planned = (String, PartKind, Option<u64>, usize);

/// A GPT partition name cairn writes: 1 to 36 printable ASCII characters of a plain set.
fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 36
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c))
}

/// The default layout: BIOS boot, ESP, root (with /boot on it).
fn default_partitions() -> Vec<Planned> {
    vec![
        ("BIOS-BOOT".into(), PartKind::BiosBoot, Some(MIB), 0),
        ("EFI-SYSTEM".into(), PartKind::Esp, Some(127 * MIB), 0),
        ("root".into(), PartKind::Root, None, 0),
    ]
}

/// The validated layout of a disk of `disk` bytes booted by `firmware`.
pub(super) fn layout(
    raw: Option<Vec<Spanned<RawPartition>>>,
    disk: u64,
    firmware: &[Firmware],
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Vec<Partition>> {
    let parts: Vec<Planned> = match raw {
        None => default_partitions(),
        Some(list) => list
            .into_iter()
            .map(|p| partition(p, at))
            .collect::<Result<_>>()?,
    };
    check_kinds(&parts, firmware, file)?;
    place(parts, disk, file)
}

/// One `partitions` entry: its type, its size and its label.
fn partition(p: Spanned<RawPartition>, at: &dyn Fn(usize) -> String) -> Result<Planned> {
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
}

/// At most one partition of each kind; a root, and what the firmware boots from.
fn check_kinds(parts: &[Planned], firmware: &[Firmware], file: &str) -> Result<()> {
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
    Ok(())
}

/// The partitions placed one after another from 1 MiB, checked to fit the disk.
fn place(parts: Vec<Planned>, disk: u64, file: &str) -> Result<Vec<Partition>> {
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
