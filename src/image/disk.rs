//! The disk: filesystems made from directories, a GPT written on a plain file, GRUB written into
//! it for BIOS and UEFI. No mount, no loop device, no helper VM.
//!
//! GRUB never needs a config generated on the node: its embedded config finds the partition
//! labelled `boot` and reads `/syslinux/syslinux.cfg`, which libostree's syslinux backend
//! rewrites on every `ostree admin deploy`, undeploy or rollback, so the bootloader follows the
//! node's own upgrades.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;
use crate::manifest::{Manifest, PartKind, Partition};

const SECTOR: u64 = 512;

/// GRUB's embedded configuration (run by its rescue parser: plain commands only, no `if`, no
/// comments): the boot partition by label, then the syslinux configuration libostree maintains
/// there. `syslinux_configfile` shows the menu; without a menu it only loads the default entry,
/// hence the `boot` after it.
const EARLY_CFG: &str = "search --no-floppy --label boot --set=root\n\
set prefix=($root)/grub\n\
syslinux_configfile /syslinux/syslinux.cfg\n\
boot\n\
echo cairn: no bootable entry in /syslinux/syslinux.cfg on the boot partition\n";

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
];

/// Build GRUB's BIOS core image and UEFI executable with the embedded config.
pub fn grub_images(work: &Path) -> Result<()> {
    let cfg = work.join("early-bios.cfg");
    std::fs::write(&cfg, format!("{BIOS_SERIAL}{EARLY_CFG}"))?;
    let efi_cfg = work.join("early-efi.cfg");
    std::fs::write(&efi_cfg, EARLY_CFG)?;
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "/grub", "-c"])
        .arg(&cfg)
        .arg("-o")
        .arg(work.join("core.img"))
        .args(GRUB_MODULES)
        .args(["biosdisk", "linux16"])
        .run()
        .context("building GRUB's BIOS core image")?;
    Cmd::new("grub-mkimage")
        .args(["-O", "x86_64-efi", "-p", "/grub", "-c"])
        .arg(&efi_cfg)
        .arg("-o")
        .arg(work.join("BOOTX64.EFI"))
        .args(GRUB_MODULES)
        .args(["fat", "efi_gop"])
        .run()
        .context("building GRUB's UEFI image")?;
    Ok(())
}

/// An ext4 filesystem of `size` bytes, labelled, holding `dir`.
pub fn mkfs_ext4(
    dir: &Path,
    label: &str,
    uuid: &str,
    size: u64,
    out: &Path,
    epoch: i64,
) -> Result<()> {
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-U", uuid])
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0"))
        .arg("-d")
        .arg(dir)
        .arg(out)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()
        .with_context(|| format!("making the {label} filesystem"))?;
    Ok(())
}

/// `mkfs.ext4 -d` does not copy inode flags: give each deployment root in the root filesystem
/// image back the immutable flag libostree sets on it (EXT4_IMMUTABLE_FL), with debugfs.
pub fn set_immutable(fs_image: &Path, paths: &[String]) -> Result<()> {
    const IMMUTABLE: u64 = 0x10;
    for p in paths {
        let stat = Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("stat {p}"))
            .arg(fs_image)
            .run()
            .with_context(|| format!("reading the flags of {p}"))?;
        let flags = stat
            .stdout
            .split_whitespace()
            .skip_while(|w| *w != "Flags:")
            .nth(1)
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .with_context(|| format!("no flags for {p} in debugfs's output"))?;
        Cmd::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!(
                "set_inode_field {p} flags 0x{:x}",
                flags | IMMUTABLE
            ))
            .arg(fs_image)
            .run()
            .with_context(|| format!("making {p} immutable"))?;
    }
    Ok(())
}

/// A FAT ESP of `size` bytes with GRUB as the removable-media loader.
pub fn mkfs_esp(work: &Path, size: u64, out: &Path, serial: &str) -> Result<()> {
    Cmd::new("mkfs.vfat")
        .args([
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-n",
            "EFI-SYSTEM",
            "-i",
            serial,
            "-C",
        ])
        .arg(out)
        .arg((size / 1024).to_string())
        .run()
        .context("making the EFI system partition")?;
    let img = format!("{}", out.display());
    Cmd::new("mmd")
        .args(["-i", &img, "::/EFI", "::/EFI/BOOT"])
        .run()?;
    Cmd::new("mcopy")
        .args(["-i", &img])
        .arg(work.join("BOOTX64.EFI"))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .env("SOURCE_DATE_EPOCH", "0")
        .run()
        .context("copying GRUB onto the ESP")?;
    Ok(())
}

fn type_code(k: PartKind) -> &'static str {
    match k {
        PartKind::BiosBoot => "EF02",
        PartKind::Esp => "EF00",
        PartKind::Boot => "8300",
        PartKind::Root => "8304",
    }
}

/// Write the GPT (with GUIDs derived from the inputs) on a sparse file of the manifest's size.
pub fn partition(m: &Manifest, disk: &Path, guid: &dyn Fn(&str) -> String) -> Result<()> {
    let f = std::fs::File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(m.size)?;
    drop(f);
    let mut cmd = Cmd::new("sgdisk").arg("-U").arg(guid("disk"));
    for (i, p) in m.partitions.iter().enumerate() {
        let n = i + 1;
        let first = p.start / SECTOR;
        let last = (p.start + p.size) / SECTOR - 1;
        cmd = cmd
            .arg(format!("--new={n}:{first}:{last}"))
            .arg(format!("--typecode={n}:{}", type_code(p.kind)))
            .arg(format!("--change-name={n}:{}", p.label))
            .arg(format!("--partition-guid={n}:{}", guid(&p.label)));
    }
    // sgdisk -q writes nothing on some versions: keep it verbose and discard the output.
    cmd.arg(disk).run().context("writing the partition table")?;
    Ok(())
}

/// Copy a filesystem image into its partition, data regions only: the holes of a sparse image
/// stay holes in the disk, and gigabytes of zeros are never read.
pub fn write_partition(disk: &Path, p: &Partition, image: &Path) -> Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let mut src =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    if len > p.size {
        bail!(
            "the {} filesystem ({len} bytes) is larger than its partition",
            p.label
        );
    }
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let fd = src.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 4 << 20];
    while (pos as u64) < len {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e).context("finding data in the filesystem image"),
        };
        let hole =
            lseek(fd, data, Whence::SeekHole).context("finding a hole in the filesystem image")?;
        src.seek(SeekFrom::Start(data as u64))?;
        dst.seek(SeekFrom::Start(p.start + data as u64))?;
        let mut left = (hole - data) as u64;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            src.read_exact(&mut buf[..n])?;
            dst.write_all(&buf[..n])?;
            left -= n as u64;
        }
        pos = hole;
    }
    dst.sync_data()
        .with_context(|| format!("writing the {} partition", p.label))?;
    Ok(())
}

fn write_at(disk: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    Ok(())
}

/// What `grub-bios-setup` does, on a plain file: core.img into the BIOS boot partition with its
/// blocklist pointing at its own second sector, and boot.img's first 440 bytes into the MBR,
/// pointing at core.img (the protective MBR's partition table stays).
pub fn install_bios(disk: &Path, bios: &Partition, core: &Path, boot_img: &Path) -> Result<()> {
    let mut core_img =
        std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
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
        std::fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
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
    use crate::manifest::MIB;

    #[test]
    fn sparse_copy_puts_data_at_the_partition_offset() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 * MIB).unwrap();
        drop(f);
        write_at(&img, 0, b"head").unwrap();
        write_at(&img, 5 * MIB + 7, b"middle").unwrap();
        let disk = d.path().join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 * MIB)
            .unwrap();
        let p = Partition {
            label: "root".into(),
            kind: PartKind::Root,
            start: 2 * MIB,
            size: 10 * MIB,
        };
        write_partition(&disk, &p, &img).unwrap();
        let data = std::fs::read(&disk).unwrap();
        assert_eq!(&data[2 * MIB as usize..2 * MIB as usize + 4], b"head");
        let m = (2 * MIB + 5 * MIB + 7) as usize;
        assert_eq!(&data[m..m + 6], b"middle");
        assert!(data[..2 * MIB as usize].iter().all(|b| *b == 0));
        let small = Partition { size: MIB, ..p };
        assert!(write_partition(&disk, &small, &img)
            .unwrap_err()
            .to_string()
            .contains("larger"));
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
        std::fs::write(&core, vec![0xAAu8; 2048]).unwrap();
        let boot = d.path().join("boot.img");
        std::fs::write(&boot, vec![0x11u8; 512]).unwrap();
        let bios = Partition {
            label: "BIOS".into(),
            kind: PartKind::BiosBoot,
            start: MIB,
            size: MIB,
        };
        install_bios(&disk, &bios, &core, &boot).unwrap();
        let data = std::fs::read(&disk).unwrap();
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
