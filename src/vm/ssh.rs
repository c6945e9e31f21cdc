//! SSH into a VM: an ephemeral ed25519 key made per run, and commands run through the one
//! [`Cmd`] helper with a timeout, on the loopback port QEMU forwards to the guest's port 22.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::base::cmd::{Cmd, Output, TimedOut};

/// A key pair made for one run; it lives in the run's temporary directory.
#[derive(Debug, Clone)]
pub struct Key {
    pub private: PathBuf,
    pub public: String,
}

impl Key {
    /// Make a new key in `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let private = dir.join("id_ed25519");
        let _ = fs_err::remove_file(&private);
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-vm-test", "-f"])
            .arg(&private)
            .run()?;
        let pubfile = dir.join("id_ed25519.pub");
        let public = fs_err::read_to_string(&pubfile)
            .with_context(|| format!("reading {}", pubfile.display()))?
            .trim()
            .to_string();
        Ok(Key { private, public })
    }
}

/// How to reach one guest (or host).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ssh {
    /// The address (a VM's forwarded port is on 127.0.0.1).
    pub host: String,
    pub port: u16,
    pub key: PathBuf,
    pub user: String,
}

impl Ssh {
    fn cmd(&self, remote: &str) -> Cmd {
        Cmd::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5"])
            .args(["-o", "ServerAliveCountMax=4"])
            .arg(format!("{}@{}", self.user, self.host))
            .arg("--")
            .arg(remote)
    }

    /// Run a shell command in the guest; a non-zero exit is an error with its stderr.
    pub fn run(&self, remote: &str, limit: Duration) -> Result<Output> {
        self.cmd(remote).timeout(limit).run()
    }

    /// Run a shell command and return its exit code (None when the connection broke: 255, or a
    /// signal) with its output, for callers that branch on the code.
    pub fn status(&self, remote: &str, limit: Duration) -> Result<(Option<i32>, Output)> {
        let (st, out) = self.cmd(remote).timeout(limit).run_status()?;
        Ok((st.code().filter(|c| *c != 255), out))
    }

    /// Run a shell command with `input` as its standard input.
    pub fn run_with_input(&self, remote: &str, input: Vec<u8>, limit: Duration) -> Result<Output> {
        self.cmd(remote).stdin_bytes(input).timeout(limit).run()
    }

    /// Wait until a login works, checking `alive` (QEMU still running, console still clean)
    /// between attempts; an error when `deadline` passes.
    pub fn wait(&self, deadline: Instant, alive: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        loop {
            crate::base::interrupt::check()?;
            alive()?;
            let last = match self.status("true", Duration::from_secs(20)) {
                Ok((Some(0), _)) => return Ok(()),
                Ok((_, out)) => out.stderr.trim().to_string(),
                Err(e) if e.downcast_ref::<TimedOut>().is_some() => format!("{e:#}"),
                Err(e) => return Err(e),
            };
            if Instant::now() > deadline {
                bail!(
                    "no SSH login on {}:{} in time (last: {last})",
                    self.host,
                    self.port
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
