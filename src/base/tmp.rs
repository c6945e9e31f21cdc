//! Temporary trees and chroot mounts that clean up after themselves.
//!
//! A [`TempTree`] is removed when dropped, also when a step fails; before removing it unmounts
//! anything still mounted below it, so that a failed chroot step can never make the removal
//! reach into a bind-mounted host directory. A [`ChrootMounts`] guard mounts `/proc`, `/sys` and
//! `/dev` into a root for commands run inside it and unmounts them on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempTree {
    path: PathBuf,
    keep: bool,
}

impl TempTree {
    /// Create a fresh directory `name` below `parent` (any leftover from an earlier, killed run
    /// is removed first).
    pub fn new_in(parent: &Path, name: &str) -> Result<Self> {
        fs_err::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        // Absolute, so that a command run with another working directory (mtools, debugfs in
        // the image steps) finds the tree's files under a relative --cache as well.
        let path = std::path::absolute(parent.join(name))
            .with_context(|| format!("{}: no absolute path", parent.display()))?;
        if path.exists() {
            remove_tree(&path)?;
        }
        fs_err::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    /// Like [`TempTree::new_in`], with a private tmpfs of `size` bytes mounted on the directory:
    /// dpkg, dracut and the commit then work in memory. Unmounted and removed on drop.
    pub fn new_tmpfs_in(parent: &Path, name: &str, size: u64) -> Result<Self> {
        let t = Self::new_in(parent, name)?;
        mount(
            Some("tmpfs"),
            &t.path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs on {}", t.path.display()))?;
        Ok(t)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the tree on drop (for debugging a failed build).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.keep {
            tracing::info!("keeping {}", self.path.display());
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!("could not remove {}: {e:#}", self.path.display());
        }
    }
}

/// Mount points at or below `root`, deepest first.
pub fn mounts_below(root: &Path) -> Result<Vec<PathBuf>> {
    let info = fs_err::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as octal.
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmount everything below `path`, then remove it.
pub fn remove_tree(path: &Path) -> Result<()> {
    for m in mounts_below(path)? {
        umount2(&m, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {} before removal", m.display()))?;
    }
    match fs_err::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // ostree marks deployment roots immutable: clear the flag, then remove.
            crate::base::cmd::Cmd::new("chattr")
                .args(["-R", "-f", "-i"])
                .arg(path)
                .run_status()?;
            fs_err::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// `/proc`, `/sys` and `/dev` mounted into a root while commands run inside it.
pub struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    /// Mount the API filesystems into `root`.
    pub fn new(root: &Path) -> Result<Self> {
        let mut guard = Self {
            mounted: Vec::new(),
        };
        let proc_ = root.join("proc");
        fs_err::create_dir_all(&proc_)?;
        mount(
            Some("proc"),
            &proc_,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| format!("mounting proc on {}", proc_.display()))?;
        guard.mounted.push(proc_);
        for d in ["sys", "dev"] {
            let target = root.join(d);
            fs_err::create_dir_all(&target)?;
            mount(
                Some(Path::new("/").join(d).as_path()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting /{d} on {}", target.display()))?;
            guard.mounted.push(target);
        }
        Ok(guard)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
                tracing::warn!("could not unmount {}: {e}", m.display());
            }
        }
    }
}

/// Write `data` to `path` through a temporary file in the same directory, renamed into place:
/// readers see the old file or the new one, never a partial one. The file is published: mode
/// 0666 less the umask (0644 as a rule), like any file a tool writes for others to read.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o666 & !umask())
}

/// [`write_atomic`] for a secret: mode 0600 whatever the umask.
pub fn write_atomic_private(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o600)
}

fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, data)
        .with_context(|| format!("writing {}", path.display()))?;
    // The umask applied at creation; the mode asked for is exact.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// This process's umask, read without changing it (`Umask:` in /proc/self/status); 022 if
/// unknown.
pub fn umask() -> u32 {
    fs_err::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Bytes of memory available now (`MemAvailable`), if known.
pub fn memory_available() -> Option<u64> {
    let info = fs_err::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_tree_is_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let p = {
            let t = TempTree::new_in(parent.path(), "work").unwrap();
            fs_err::write(t.path().join("f"), b"x").unwrap();
            t.path().to_path_buf()
        };
        assert!(!p.exists());
    }

    #[test]
    fn temp_tree_path_is_absolute_under_a_relative_parent() {
        let parent = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        // The same directory, named relative to the working directory.
        let up = "../".repeat(cwd.components().count() - 1);
        let rel = Path::new(&up).join(parent.path().strip_prefix("/").unwrap());
        assert!(rel.is_relative());
        let t = TempTree::new_in(&rel, "work").unwrap();
        assert!(t.path().is_absolute(), "{}", t.path().display());
        assert!(t.path().is_dir());
    }

    #[test]
    fn leftover_is_replaced() {
        let parent = tempfile::tempdir().unwrap();
        fs_err::create_dir(parent.path().join("work")).unwrap();
        fs_err::write(parent.path().join("work/old"), b"x").unwrap();
        let t = TempTree::new_in(parent.path(), "work").unwrap();
        assert!(!t.path().join("old").exists());
    }

    #[test]
    fn tmpfs_tree_is_unmounted_and_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = {
            let t = TempTree::new_tmpfs_in(parent.path(), "work", 16 << 20).unwrap();
            assert_eq!(mounts_below(t.path()).unwrap().len(), 1);
            fs_err::write(t.path().join("f"), b"x").unwrap();
            t.path().to_path_buf()
        };
        assert!(!p.exists());
        assert!(mounts_below(parent.path()).unwrap().is_empty());
    }

    #[test]
    fn published_files_are_readable_and_secrets_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let public = d.path().join("stream.json");
        write_atomic(&public, b"{}").unwrap();
        assert_eq!(mode(&public), 0o666 & !umask());
        assert_eq!(std::fs::read(&public).unwrap(), b"{}");
        // Under the usual umask, that is what others can read.
        if umask() == 0o022 {
            assert_eq!(mode(&public), 0o644);
        }
        let secret = d.path().join("key");
        write_atomic_private(&secret, b"s").unwrap();
        assert_eq!(mode(&secret), 0o600);
        // Replacing keeps the new mode, and leaves no temporary file behind.
        write_atomic(&public, b"[]").unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
