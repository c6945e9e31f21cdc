//! One rollout per fleet at a time: a lock file in the fleet's directory, held with `flock` for
//! the holder's lifetime and naming the holder (user@host, pid, start time). A second rollout is
//! refused with the holder's name; a lock whose holder died is free again at once (the kernel
//! drops a dead process's `flock`), and the next holder says whom it took over from. Who holds a
//! lock now ([`holder`]) is answered here too, for `cairn rollout status`.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `user@host`.
    pub name: String,
    pub pid: u32,
    /// Seconds since the epoch.
    pub started: i64,
    /// What it runs (`cairn rollout start …`).
    pub command: String,
    /// The process's start time (clock ticks after boot, `/proc/PID/stat`), so that another
    /// process given the same pid later is not taken for the holder.
    pub pid_start: Option<u64>,
}

impl Holder {
    /// This process.
    pub fn me(command: &str) -> Self {
        Holder {
            name: actor(),
            pid: std::process::id(),
            started: chrono::Utc::now().timestamp(),
            command: command.to_string(),
            pid_start: pid_start(std::process::id()),
        }
    }

    /// Does the holder's process still run?
    pub fn alive(&self) -> bool {
        self.pid != 0 && pid_start(self.pid).is_some_and(|t| self.pid_start.is_none_or(|s| s == t))
    }
}

/// A process's start time, in clock ticks after boot (field 22 of `/proc/PID/stat`).
fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Who holds the lock at `path` now: the holder it names, if that process still runs.
pub fn holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Holder>(&text)
        .ok()
        .filter(Holder::alive)
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}, since {}, running `{}`)",
            self.name,
            self.pid,
            crate::base::time::rfc3339(self.started),
            self.command
        )
    }
}

/// `user@host` of this process.
pub fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map_or_else(|| "unknown".into(), |u| u.name)
        });
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// Why a lock could not be taken, where the caller wants to say who holds it.
#[derive(Debug, thiserror::Error)]
#[error("another rollout holds {path}: {holder}")]
pub struct Held {
    pub path: PathBuf,
    pub holder: Holder,
}

/// A held lock; dropping it releases it.
pub struct Lock {
    _file: Flock<std::fs::File>,
    pub path: PathBuf,
    /// The holder whose dead lock this one took over, if any.
    pub took_over: Option<Holder>,
}

impl Lock {
    /// Take the lock at `path` for `me`.
    pub fn take(path: &Path, me: &Holder) -> Result<Lock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = f.read_to_string(&mut text);
                let holder = serde_json::from_str(&text).unwrap_or(Holder {
                    name: "unknown".into(),
                    pid: 0,
                    started: 0,
                    command: String::new(),
                    pid_start: None,
                });
                return Err(Held {
                    path: path.to_path_buf(),
                    holder,
                }
                .into());
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        };
        let mut before = String::new();
        file.read_to_string(&mut before)
            .with_context(|| format!("reading {}", path.display()))?;
        let took_over: Option<Holder> = serde_json::from_str(&before).ok();
        if let Some(h) = &took_over {
            tracing::warn!("taking over the lock of {h}, which is no longer running");
        }
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(serde_json::to_string(me)?.as_bytes())?;
        file.sync_all()?;
        Ok(Lock {
            _file: file,
            path: path.to_path_buf(),
            took_over,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // An empty lock file means nobody holds it (the flock goes with the file).
        let _ = self._file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_dead_one_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rollout.lock");
        let me = Holder::me("cairn rollout start test");
        let first = Lock::take(&path, &me).unwrap();
        assert!(first.took_over.is_none());
        // A second taker (another open file description, as another process has) is refused,
        // and told who holds it.
        let err = Lock::take(&path, &Holder::me("second")).err().unwrap();
        let held = err.downcast_ref::<Held>().expect("a Held error");
        assert_eq!(held.holder.pid, std::process::id());
        assert!(
            err.to_string().contains("cairn rollout start test"),
            "{err}"
        );
        drop(first);
        // Released: the next one takes it with nothing to take over.
        let again = Lock::take(&path, &me).unwrap();
        assert!(again.took_over.is_none());
        std::mem::forget(again); // as a killed holder: its info stays in the file
                                 // A holder that died: the kernel dropped its flock (here: a forgotten one is still
                                 // held by this process, so simulate the death by a child that locks and is killed).
        let path2 = d.path().join("dead.lock");
        // flock(1) and the command it runs both hold the lock: a group of their own, killed
        // together.
        let child = std::os::unix::process::CommandExt::process_group(
            std::process::Command::new("flock")
                .arg(&path2)
                .args(["sleep", "60"]),
            0,
        )
        .spawn();
        if let Ok(mut child) = child {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::fs::write(
                &path2,
                serde_json::to_string(&Holder {
                    name: "ops@old".into(),
                    pid: child.id(),
                    started: 1,
                    command: "cairn rollout start".into(),
                    pid_start: None,
                })
                .unwrap(),
            )
            .unwrap();
            assert!(Lock::take(&path2, &me).is_err(), "held by the live child");
            assert_eq!(holder(&path2).map(|h| h.pid), Some(child.id()));
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
            child.wait().unwrap();
            // The group's last member may take a moment to finish dying.
            let mut l = Lock::take(&path2, &me);
            for _ in 0..50 {
                if l.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                l = Lock::take(&path2, &me);
            }
            let l = l.unwrap();
            assert_eq!(l.took_over.as_ref().unwrap().name, "ops@old");
            assert_eq!(holder(&path2).map(|h| h.pid), Some(std::process::id()));
            drop(l);
            assert_eq!(holder(&path2), None, "a released lock has no holder");
        }
    }
}
