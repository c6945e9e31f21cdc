//! GRUB for BIOS and UEFI: the embedded configuration, the normal-mode script in the memdisk
//! that finds /boot, counts a trial down and picks the deployment, the two GRUB images, and
//! `grub-bios-setup`'s work on a plain disk file.
//!
//! GRUB never needs a config generated on the node: the script finds the filesystem holding
//! /boot and reads `syslinux/syslinux.cfg` there, which libostree's syslinux backend rewrites on
//! every deploy, undeploy or reorder, so the bootloader follows the node's own upgrades; and it
//! counts a new deployment's trial boots down in `grub/grubenv`, booting the previous deployment
//! when they are spent (see `docs/node.md`).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::disk::{write_at, SECTOR};
use crate::base::cmd::Cmd;
use crate::image::manifest::Partition;

/// GRUB's embedded configuration. It runs in GRUB's rescue parser (plain commands only, no
/// `if`, even with `normal` built in), so it hands over to the normal-mode script in the
/// memdisk, [`normal_cfg`].
const EARLY_CFG: &str = "configfile (memdisk)/cairn.cfg\n\
echo cairn: (memdisk)/cairn.cfg booted no entry\n";

/// The most trial boots GRUB's countdown counts (the node's bound).
pub const MAX_TRIES: u32 = crate::node::state::MAX_TRIES;

/// The normal-mode script GRUB runs from its memdisk: find the filesystem holding /boot (the
/// partition labelled `boot`, or the root filesystem), count a trial down in `grub/grubenv`
/// there (GRUB's `save_env` writes in place; only `cairn_tries` is read), then load libostree's
/// `syslinux/syslinux.cfg` and boot entry 0 (the default deployment) while trial boots remain,
/// entry 1 (the previous one) once they are spent. GRUB has no arithmetic: the countdown is an
/// `if`/`elif` chain from `max` down to 1; any other value counts as spent.
pub fn normal_cfg(max: u32, separate_boot: bool) -> String {
    let mut s = String::from(include_str!("cairn-head.cfg"));
    for n in (1..=max).rev() {
        let kw = if n == max { "if" } else { "elif" };
        s.push_str(&format!(
            "  {kw} [ \"$cairn_tries\" = {n} ]; then\n    set cairn_tries={}\n",
            n - 1
        ));
    }
    s.push_str(include_str!("cairn-tail.cfg"));
    let (label, dir) = if separate_boot {
        ("boot", "")
    } else {
        ("root", "/boot")
    };
    s.replace("@LABEL@", label).replace("@BOOT@", dir)
}

/// With BIOS GRUB drives the serial port itself; under UEFI the firmware already mirrors its
/// console there (GRUB's own serial terminal would print everything twice).
const BIOS_SERIAL: &str = "serial --unit=0 --speed=115200\n\
terminal_input serial console\n\
terminal_output serial console\n";

const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "normal",
    "linux",
    "syslinuxcfg",
    "search",
    "search_label",
    "configfile",
    "echo",
    "serial",
    "terminal",
    "test",
    "boot",
    "memdisk",
    "tar",
    "loadenv",
];

/// Build GRUB's BIOS core image and UEFI executable, each with the embedded config and a
/// memdisk holding the normal-mode script for /boot on a partition of its own
/// (`separate_boot`) or on the root filesystem.
pub fn grub_images(work: &Path, separate_boot: bool) -> Result<()> {
    let cfg = work.join("early-bios.cfg");
    fs_err::write(&cfg, format!("{BIOS_SERIAL}{EARLY_CFG}"))?;
    let efi_cfg = work.join("early-efi.cfg");
    fs_err::write(&efi_cfg, EARLY_CFG)?;
    let md = work.join("memdisk");
    fs_err::create_dir_all(&md)?;
    fs_err::write(md.join("cairn.cfg"), normal_cfg(MAX_TRIES, separate_boot))?;
    let tar = work.join("memdisk.tar");
    // The same bytes every time: no owner names, no times.
    Cmd::new("tar")
        .args([
            "--format=ustar",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .args(["--mtime=@0", "-C"])
        .arg(&md)
        .arg("-cf")
        .arg(&tar)
        .arg("cairn.cfg")
        .run()
        .context("making GRUB's memdisk")?;
    let images = [
        (
            "i386-pc",
            &cfg,
            "core.img",
            ["biosdisk", "linux16"],
            "BIOS core image",
        ),
        (
            "x86_64-efi",
            &efi_cfg,
            "BOOTX64.EFI",
            ["fat", "efi_gop"],
            "UEFI image",
        ),
    ];
    for (format, config, out, extra, what) in images {
        Cmd::new("grub-mkimage")
            .args(["-O", format, "-p", "/grub", "-c"])
            .arg(config)
            .arg("-m")
            .arg(&tar)
            .arg("-o")
            .arg(work.join(out))
            .args(GRUB_MODULES)
            .args(extra)
            .run()
            .with_context(|| format!("building GRUB's {what}"))?;
    }
    Ok(())
}

/// What `grub-bios-setup` does, on a plain file: core.img into the BIOS boot partition with its
/// blocklist pointing at its own second sector, and boot.img's first 440 bytes into the MBR,
/// pointing at core.img (the protective MBR's partition table stays).
pub fn install_bios(disk: &Path, bios: &Partition, core: &Path, boot_img: &Path) -> Result<()> {
    let mut core_img = fs_err::read(core).with_context(|| format!("reading {}", core.display()))?;
    if core_img.len() as u64 > bios.size {
        bail!(
            "GRUB's core image ({} bytes) does not fit the BIOS boot partition",
            core_img.len()
        );
    }
    if core_img.len() < 512 {
        bail!("GRUB's core image is too short");
    }
    let first = bios.start / SECTOR;
    // diskboot.img's blocklist: the last 12 bytes of core.img's first sector (start u64).
    core_img[0x1f4..0x1fc].copy_from_slice(&(first + 1).to_le_bytes());
    write_at(disk, bios.start, &core_img)?;
    let mut boot =
        fs_err::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    if boot.len() < 512 {
        bail!("{} is not GRUB's boot.img", boot_img.display());
    }
    boot[0x5c..0x64].copy_from_slice(&first.to_le_bytes()); // GRUB_BOOT_MACHINE_KERNEL_SECTOR
    boot[0x66] = 0x90; // boot from a hard disk whatever the BIOS says the drive is
    boot[0x67] = 0x90;
    write_at(disk, 0, &boot[..440])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{PartKind, MIB};

    #[test]
    fn the_countdown_script_counts_down_for_each_layout() {
        let separate = normal_cfg(3, true);
        // The chain, from the bound down: each value takes one try, anything else is spent.
        assert!(separate.contains(
            "  if [ \"$cairn_tries\" = 3 ]; then\n    set cairn_tries=2\n\
             \x20 elif [ \"$cairn_tries\" = 2 ]; then\n    set cairn_tries=1\n\
             \x20 elif [ \"$cairn_tries\" = 1 ]; then\n    set cairn_tries=0\n\
             \x20 else\n    set cairn_entry=1\n"
        ));
        assert!(separate.starts_with("# cairn: boot counting"));
        assert!(separate.contains("search --no-floppy --label boot --set=root"));
        assert!(separate.contains("set cairn_env=/grub/grubenv\n"));
        assert!(separate.contains("\nsyslinux_source /syslinux/syslinux.cfg\n"));
        // Only the countdown is read from the file, and written only when a try is taken.
        assert!(separate.contains("load_env --file \"$cairn_env\" cairn_tries\n"));
        assert_eq!(separate.matches("save_env").count(), 1);
        let on_root = normal_cfg(MAX_TRIES, false);
        assert!(on_root.contains("search --no-floppy --label root --set=root"));
        assert!(on_root.contains("set cairn_env=/boot/grub/grubenv\n"));
        assert!(on_root.contains("\nsyslinux_source /boot/syslinux/syslinux.cfg\n"));
        assert!(on_root.contains("= 9 ]; then\n    set cairn_tries=8\n"));
        for cfg in [&separate, &on_root] {
            assert!(!cfg.contains('@'), "a placeholder is left: {cfg}");
            let words = |w: &str| {
                cfg.lines()
                    .filter(|l| l.split_whitespace().next() == Some(w))
                    .count()
            };
            assert_eq!(words("if"), words("fi"), "{cfg}");
        }
        // The embedded config is for the rescue parser: no conditionals, no comments.
        assert!(!EARLY_CFG.contains("if ") && !EARLY_CFG.contains('#'));
    }

    #[test]
    fn bios_install_patches_both_sectors() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 * MIB)
            .unwrap();
        let core = d.path().join("core.img");
        fs_err::write(&core, vec![0xAAu8; 2048]).unwrap();
        let boot = d.path().join("boot.img");
        fs_err::write(&boot, vec![0x11u8; 512]).unwrap();
        let bios = Partition {
            label: "BIOS".into(),
            kind: PartKind::BiosBoot,
            start: MIB,
            size: MIB,
        };
        install_bios(&disk, &bios, &core, &boot).unwrap();
        let data = fs_err::read(&disk).unwrap();
        assert_eq!(
            &data[0x5c..0x64],
            &2048u64.to_le_bytes(),
            "boot.img points at core.img"
        );
        assert_eq!(&data[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(data[440], 0, "the MBR partition table area is left alone");
        let c = MIB as usize;
        assert_eq!(
            &data[c + 0x1f4..c + 0x1fc],
            &2049u64.to_le_bytes(),
            "blocklist → core.img's 2nd sector"
        );
        assert_eq!(data[c + 0x200], 0xAA);
    }
}
