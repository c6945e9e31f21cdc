//! The disk: filesystems made from directories and a GPT written on a plain file (GRUB's images
//! and its BIOS install are in [`super::grub`]). No mount, no loop device, no helper VM.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::base::cmd::Cmd;
use crate::image::manifest::{Manifest, PartKind, Partition};

pub(super) const SECTOR: u64 = 512;

/// An ext4 filesystem labelled `label`, holding `dir`, made in place in partition `p` of `disk`
/// (no separate image to copy). The same tree gives the same bytes: every time in it is `epoch`
/// (the commit's), mtimes later than it are clamped to it, and the directories in `immutable`
/// (the deployment roots) get libostree's immutable flag back.
pub fn mkfs_ext4(
    dir: &Path,
    label: &str,
    uuid: &str,
    disk: &Path,
    p: &Partition,
    epoch: i64,
    immutable: &[String],
) -> Result<()> {
    let refused = clamp_mtimes(dir, epoch)?;
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-U", uuid])
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={uuid},root_owner=0:0",
            p.start
        ))
        .arg("-d")
        .arg(dir)
        .arg(disk)
        .arg(format!("{}k", p.size / 1024))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()
        .with_context(|| format!("making the {label} filesystem"))?;
    fix_ext4(disk, p.start, epoch, immutable, &refused)
        .with_context(|| format!("finishing the {label} filesystem"))
}

/// Clamp every mtime under `dir` to `epoch`, as `SOURCE_DATE_EPOCH` asks of build outputs
/// (`mkfs.ext4 -d` copies mtimes; ostree's objects keep their 0). Returns the paths (from `dir`,
/// with a leading `/`) that refused the change: immutable deployment roots, fixed in the image.
pub fn clamp_mtimes(dir: &Path, epoch: i64) -> Result<Vec<String>> {
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .with_context(|| format!("opening {}", dir.display()))?;
    let mut refused = Vec::new();
    clamp_in(&root, "", epoch, &mut refused)
        .with_context(|| format!("setting the times under {}", dir.display()))?;
    Ok(refused)
}

fn clamp_in(dir: &cap_std::fs::Dir, at: &str, epoch: i64, refused: &mut Vec<String>) -> Result<()> {
    use cap_std::fs::MetadataExt;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::fd::AsRawFd;

    for e in dir.entries()? {
        let e = e?;
        let name = e.file_name();
        let path = format!("{at}/{}", name.to_string_lossy());
        let m = e.metadata().with_context(|| format!("reading {path}"))?;
        if m.is_dir() {
            let sub = e.open_dir().with_context(|| format!("opening {path}"))?;
            clamp_in(&sub, &path, epoch, refused)?;
        }
        if (m.mtime(), m.mtime_nsec()) <= (epoch, 0) {
            continue;
        }
        match utimensat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(epoch, 0),
            UtimensatFlags::NoFollowSymlink,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) => refused.push(path),
            Err(err) => return Err(err).with_context(|| format!("setting the mtime of {path}")),
        }
    }
    Ok(())
}

/// The inodes in use in an ext4 image, from `dumpe2fs`'s free-inode ranges of each group.
fn used_inodes(dumpe2fs: &str) -> Result<Vec<u64>> {
    let per_group: u64 = dumpe2fs
        .lines()
        .find_map(|l| l.strip_prefix("Inodes per group:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no inodes per group in dumpe2fs's output")?;
    let mut used = Vec::new();
    let groups = dumpe2fs
        .lines()
        .filter_map(|l| l.strip_prefix("  Free inodes:"));
    for (g, free) in groups.enumerate() {
        let mut next = g as u64 * per_group + 1;
        let end = next + per_group;
        for range in free.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (a, b): (u64, u64) = match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) if a >= next && b >= a && b < end => (a, b),
                _ => bail!("unexpected free inode range {range:?} in dumpe2fs's output"),
            };
            used.extend(next..a);
            next = b + 1;
        }
        used.extend(next..end);
    }
    if used.is_empty() {
        bail!("no inode groups in dumpe2fs's output");
    }
    Ok(used)
}

/// A path as a debugfs argument.
fn debugfs_quote(p: &str) -> Result<String> {
    if p.contains(['"', '\n']) {
        bail!("{p:?}: debugfs cannot name this path");
    }
    Ok(format!("\"{p}\""))
}

/// The debugfs commands that give every inode in use (`used`, but for the reserved ones mkfs
/// made at `epoch`) `epoch` as atime and ctime, and the paths in `mtime` `epoch` as mtime.
/// A time is `@SECONDS`: debugfs reads a bare number as a date (YYYYMMDD…) when it can.
fn times_script(used: &[u64], epoch: i64, mtime: &[String]) -> Result<String> {
    let mut script = String::new();
    for ino in used.iter().filter(|i| **i == 2 || **i >= 11) {
        script.push_str(&format!(
            "sif <{ino}> atime @{epoch}\nsif <{ino}> ctime @{epoch}\n"
        ));
    }
    for p in mtime {
        script.push_str(&format!("sif {} mtime @{epoch}\n", debugfs_quote(p)?));
    }
    Ok(script)
}

/// A file's directory and name, for tools that take options after a `marker` in a file name: run
/// in the directory, no marker in a directory above can be taken for one.
fn dir_and_name(file: &Path, marker: char) -> Result<(&Path, String)> {
    match (file.parent(), file.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) if !n.contains(marker) => Ok((d, n.to_string())),
        _ => bail!("{}: cannot be named to e2fsprogs or mtools", file.display()),
    }
}

/// One debugfs run over the filesystem `mkfs.ext4 -d` made at `offset` in `disk`: atime and
/// ctime (which mkfs copies from the source tree, where no call can set them) become `epoch` on
/// every inode in use; the paths in `mtime` get `epoch` as mtime; `immutable` directories get
/// EXT4_IMMUTABLE_FL, which mkfs does not copy. The superblock's write time is `epoch` too.
fn fix_ext4(
    disk: &Path,
    offset: u64,
    epoch: i64,
    immutable: &[String],
    mtime: &[String],
) -> Result<()> {
    const IMMUTABLE: u64 = 0x10;
    // e2fsprogs takes I/O options after a `?` in the device name.
    let (dir, name) = dir_and_name(disk, '?')?;
    let fs = format!("{name}?offset={offset}");
    let dump = Cmd::new("dumpe2fs").arg(&fs).current_dir(dir).run()?;
    let mut script = times_script(&used_inodes(&dump.stdout)?, epoch, mtime)?;
    for p in immutable {
        let stat = Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("stat {}", debugfs_quote(p)?))
            .arg(&fs)
            .current_dir(dir)
            .run()
            .with_context(|| format!("reading the flags of {p}"))?;
        let flags = stat
            .stdout
            .split_whitespace()
            .skip_while(|w| *w != "Flags:")
            .nth(1)
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .with_context(|| format!("no flags for {p} in debugfs's output"))?;
        script.push_str(&format!(
            "sif {} flags 0x{:x}\n",
            debugfs_quote(p)?,
            flags | IMMUTABLE
        ));
    }
    let file = dir.join(format!("{name}.{offset}.debugfs"));
    fs_err::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let out = Cmd::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&file)
        .arg(&fs)
        .current_dir(dir)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()
        .context("setting times and flags with debugfs")?;
    // debugfs exits 0 whatever its commands did; they report on stderr, after its banner.
    if let Some(err) = out.stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        bail!("debugfs: {err}");
    }
    Ok(())
}

/// 1980-01-01: FAT cannot record an earlier time.
const FAT_EPOCH: i64 = 315_532_800;

/// A FAT ESP made in place in partition `p` of `disk`, with GRUB as the removable-media loader.
/// Its label entry and directory entries carry `epoch` (mtools reads `SOURCE_DATE_EPOCH`;
/// mkfs.fat would stamp its label with the clock, hence `mlabel`), in UTC.
pub fn mkfs_esp(work: &Path, disk: &Path, p: &Partition, serial: &str, epoch: i64) -> Result<()> {
    // The geometry mkfs.fat picks for a file of its own (-C), so that the filesystem is the
    // same as one made apart and copied in.
    Cmd::new("mkfs.vfat")
        .args([
            "-F", "32", "-S", "512", "-s", "1", "-g", "8/32", "-i", serial,
        ])
        .arg(format!("--offset={}", p.start / SECTOR))
        .arg(disk)
        .arg((p.size / 1024).to_string())
        .run()
        .context("making the EFI system partition")?;
    // mtools takes the offset after `@@`.
    let (dir, name) = dir_and_name(disk, '@')?;
    let img = format!("{name}@@{}", p.start);
    let mtools = |cmd: &str| {
        Cmd::new(cmd)
            .current_dir(dir)
            .env("SOURCE_DATE_EPOCH", epoch.max(FAT_EPOCH).to_string())
            .env("TZ", "UTC")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &img])
    };
    mtools("mlabel")
        .arg("::EFI-SYSTEM")
        .run()
        .context("labelling the EFI system partition")?;
    mtools("mmd").args(["::/EFI", "::/EFI/BOOT"]).run()?;
    mtools("mcopy")
        .arg(work.join("BOOTX64.EFI"))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
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

pub(super) fn write_at(disk: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::MIB;

    #[test]
    fn used_inodes_are_the_complement_of_the_free_ranges() {
        let dump = "Inode count:              24\n\
Free inodes:              14\n\
Inodes per group:         8\n\
Group 0: (Blocks 0-7)\n  Free inodes: 6, 8\n\
Group 1: (Blocks 8-15)\n  Free inodes: \n\
Group 2: (Blocks 16-23)\n  Free inodes: 17-24\n";
        assert_eq!(
            used_inodes(dump).unwrap(),
            [1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        let bad = "Inodes per group: 8\nGroup 0:\n  Free inodes: 3-20\n";
        assert!(used_inodes(bad).is_err());
        assert!(used_inodes("Inodes per group: 8\n").is_err());
    }

    #[test]
    fn times_are_seconds_not_dates_and_reserved_inodes_are_left() {
        let s = times_script(&[1, 2, 7, 11, 12], 1_795_313_345, &["/a b".into()]).unwrap();
        assert_eq!(
            s,
            "sif <2> atime @1795313345\nsif <2> ctime @1795313345\n\
sif <11> atime @1795313345\nsif <11> ctime @1795313345\n\
sif <12> atime @1795313345\nsif <12> ctime @1795313345\n\
sif \"/a b\" mtime @1795313345\n"
        );
        assert!(times_script(&[], 0, &["/a\"b".into()]).is_err());
    }

    #[test]
    fn mtimes_are_clamped_to_the_epoch_not_raised() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("old");
        fs_err::write(&old, b"x").unwrap();
        nix::sys::stat::utimensat(
            None,
            &old,
            &nix::sys::time::TimeSpec::new(5, 0),
            &nix::sys::time::TimeSpec::new(5, 0),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        fs_err::create_dir(d.path().join("dir")).unwrap();
        fs_err::write(d.path().join("dir/new"), b"y").unwrap();
        std::os::unix::fs::symlink("missing", d.path().join("dir/link")).unwrap();
        assert!(clamp_mtimes(d.path(), 1000).unwrap().is_empty());
        let mtime = |p: &str| fs_err::symlink_metadata(d.path().join(p)).unwrap().mtime();
        assert_eq!(mtime("old"), 5);
        assert_eq!(mtime("dir"), 1000);
        assert_eq!(mtime("dir/new"), 1000);
        assert_eq!(mtime("dir/link"), 1000);
    }

    #[test]
    fn ext4_in_place_carries_the_epoch_and_the_immutable_flag() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs_err::create_dir_all(src.join("deploy")).unwrap();
        fs_err::write(src.join("deploy/file"), b"x").unwrap();
        let disk = d.path().join("disk.raw");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(64 * MIB).unwrap();
        drop(f);
        write_at(&disk, 0, b"GPT").unwrap();
        let p = Partition {
            label: "root".into(),
            kind: PartKind::Root,
            start: 8 * MIB,
            size: 32 * MIB,
        };
        let uuid = "6f1fd5ac-6a4c-4d35-9a3c-8c9e2fbc1f7e";
        // Immutable like a deployment root, where the filesystem allows it: its mtime is then
        // set in the image.
        let chattr = |flag: &str| Cmd::new("chattr").arg(flag).arg(src.join("deploy")).run();
        let immutable = chattr("+i").is_ok();
        let made = mkfs_ext4(
            &src,
            "root",
            uuid,
            &disk,
            &p,
            1_700_000_000,
            &["/deploy".into()],
        );
        if immutable {
            chattr("-i").unwrap();
        }
        made.unwrap();
        let data = fs_err::read(&disk).unwrap();
        assert_eq!(&data[..3], b"GPT");
        assert!(data[3..8 * MIB as usize].iter().all(|b| *b == 0));
        assert!(data[40 * MIB as usize..].iter().all(|b| *b == 0));
        let stat = |path: &str| {
            Cmd::new("debugfs")
                .arg("-R")
                .arg(format!("stat {path}"))
                .arg(format!("disk.raw?offset={}", 8 * MIB))
                .current_dir(d.path())
                .run()
                .unwrap()
                .stdout
        };
        // 1_700_000_000 = 0x6553f100.
        for path in ["/", "/deploy", "/deploy/file"] {
            let s = stat(path);
            for t in ["ctime", "atime", "mtime", "crtime"] {
                assert!(
                    s.contains(&format!("{t}: 0x6553f100:00000000")),
                    "{path} {t}: {s}"
                );
            }
        }
        let flags = stat("/deploy");
        let flags = flags
            .split_whitespace()
            .skip_while(|w| *w != "Flags:")
            .nth(1)
            .unwrap();
        assert_eq!(u64::from_str_radix(&flags[2..], 16).unwrap() & 0x10, 0x10);
        Cmd::new("e2fsck")
            .args(["-fn"])
            .arg(format!("disk.raw?offset={}", 8 * MIB))
            .current_dir(d.path())
            .run()
            .unwrap();
    }
}
