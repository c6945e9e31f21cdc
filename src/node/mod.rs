//! `cairn node`: the node half of a host's life. On a host booted from a cairn image, the
//! `cairn` binary (installed by compose when a treefile says `node-agent = true`) upgrades,
//! rebases and rolls back the host from its signed remote, and rolls it back by itself when a
//! new deployment does not prove healthy within its trial boots. See `docs/node.md`.
//!
//! - [`api`]: the status contract, the typed, versioned document that the status file,
//!   `cairn node status --json` and every reader (the fleet's agent) share;
//! - [`state`]: the pure trial state machine (Zincati's style), tested exhaustively;
//! - [`agent`]: the I/O of each state at boot (classify, health verdict, deadline);
//! - [`moves`]: `upgrade`, `rebase`, `rollback` and `status`;
//! - [`grubenv`]: GRUB's environment block, written in place; [`record`]: the status file;
//! - [`health`]: the checks; [`units`]: the systemd units; [`config`]: `/etc/cairn/node.toml`;
//!   [`journal`]: one journal line per transition; [`view`]: what each step reads and writes.
//!
//! State lives in three places, each with one job: the countdown in GRUB's environment block on
//! `/boot` (GRUB can read nothing else), the trial marker in the new deployment's own `/etc`
//! (the previous deployment never sees it; the deadline timer reads it before `/var` is
//! mounted), and the records in `/var/lib/cairn/status.json` (shared by every deployment).

pub mod agent;
pub mod api;
pub mod config;
pub mod grubenv;
pub mod health;
pub mod journal;
pub mod moves;
pub mod record;
pub mod state;
pub mod units;
pub mod updates;
pub mod view;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the node's files are, below a root (`/` on a node).
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

/// The trial marker, relative to a deployment's root.
pub const MARKER: &str = "etc/cairn/trial";
/// The node's settings, relative to a deployment's root (written by `cairn image`).
pub const CONFIG: &str = "etc/cairn/node.toml";
/// GRUB's environment block, relative to the root: `/boot` is the boot partition or the root
/// filesystem's `/boot`, both mounted there.
pub const GRUBENV: &str = "boot/grub/grubenv";
/// The remote a node's deployments follow unless their origin names another.
pub const REMOTE: &str = "cairn";

impl Paths {
    /// The paths of the running node.
    pub fn node() -> Self {
        Paths { root: "/".into() }
    }

    pub fn grubenv(&self) -> PathBuf {
        self.root.join(GRUBENV)
    }
    pub fn status(&self) -> PathBuf {
        self.root.join("var/lib/cairn/status.json")
    }
    /// The booted deployment's trial marker.
    pub fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }
    /// Per-boot state: the lock, this boot's classification, the last health verdict.
    pub fn run(&self) -> PathBuf {
        self.root.join("run/cairn")
    }
    pub fn classified(&self) -> PathBuf {
        self.run().join("boot")
    }
    pub fn health_reasons(&self) -> PathBuf {
        self.run().join("health-reasons")
    }
    /// What a login shows (pam_motd reads `/run/motd.d`).
    pub fn motd(&self) -> PathBuf {
        self.root.join("run/motd.d/cairn-node.motd")
    }
    pub fn health_dirs(&self) -> [PathBuf; 2] {
        [
            self.root.join("usr/lib/cairn/health.d"),
            self.root.join("etc/cairn/health.d"),
        ]
    }
}

/// Write `data` to `path` so that a power loss leaves the old file or the new one: a temporary
/// file in the same directory, fsync, rename, fsync of the directory. The file is readable by
/// all (a fleet tool may log in as another user than root).
pub fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .with_context(|| format!("{}: no directory", path.display()))?;
    fs_err::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    sync_dir(dir)
}

/// Remove `path` if it exists, durably (the directory is synced).
pub fn remove_durably(path: &Path) -> Result<bool> {
    match fs_err::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs_err::File::open(dir)?
        .sync_all()
        .with_context(|| format!("syncing {}", dir.display()))
}

/// The node's lock: one verb at a time (a boot unit and a command typed by hand included).
pub struct Lock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl Lock {
    fn file(p: &Paths) -> Result<std::fs::File> {
        let run = p.run();
        fs_err::create_dir_all(&run)?;
        let path = run.join("lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Wait for the lock.
    pub fn take(p: &Paths) -> Result<Self> {
        let file = nix::fcntl::Flock::lock(Self::file(p)?, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("locking /run/cairn/lock")?;
        Ok(Lock { _file: file })
    }

    /// Try for the lock for up to `limit`; `None` when another step still holds it (the
    /// deadline records what it can without it rather than wait on a step that hangs).
    pub fn take_within(p: &Paths, limit: std::time::Duration) -> Result<Option<Self>> {
        let until = std::time::Instant::now() + limit;
        loop {
            let file = Self::file(p)?;
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(f) => return Ok(Some(Lock { _file: f })),
                Err(_) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(500))
                }
                Err(_) => return Ok(None),
            }
        }
    }
}

/// Now, as RFC 3339.
pub fn now() -> String {
    crate::base::time::rfc3339(chrono::Utc::now().timestamp())
}

/// This boot's id.
pub fn boot_id(p: &Paths) -> String {
    fs_err::read_to_string(p.root.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_writes_replace_and_removes_are_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.json");
        write_durably(&p, b"1").unwrap();
        write_durably(&p, b"2").unwrap();
        assert_eq!(fs_err::read(&p).unwrap(), b"2");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644 & !crate::base::tmp::umask());
        assert!(remove_durably(&p).unwrap());
        assert!(!remove_durably(&p).unwrap());
        let leftovers = fs_err::read_dir(d.path().join("a")).unwrap().count();
        assert_eq!(leftovers, 0, "no temporary file left behind");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths {
            root: d.path().to_path_buf(),
        };
        let held = Lock::take(&p).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.run().join("lock"))
            .unwrap();
        assert!(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err());
        assert!(Lock::take_within(&p, std::time::Duration::from_millis(600))
            .unwrap()
            .is_none());
        drop(held);
        assert!(Lock::take(&p).is_ok());
    }
}
