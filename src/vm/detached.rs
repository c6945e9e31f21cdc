//! VMs that outlive the process that started them, as a cloud's machines outlive the
//! orchestrator that asked for them: QEMU daemonizes itself (its own session, no parent-death
//! signal), writes a pid file, reboots by itself like a machine (no power cycle), and is found
//! again later by its record (pid, ports, files), which the caller keeps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{forwards, prepare, qemu_cmd, Console, Spec};

/// A VM started by [`start`]: enough to find, reach and stop it from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    pub pid: u32,
    /// (guest port, loopback port): SSH's 22 first.
    pub ports: Vec<(u16, u16)>,
    /// Its directory (overlay, console log, pid file).
    pub dir: PathBuf,
}

impl Detached {
    /// The loopback port that reaches `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    pub fn ssh_port(&self) -> u16 {
        self.host_port(22).unwrap_or(0)
    }

    /// Is its QEMU still running (the pid is alive and still a QEMU of this directory)?
    pub fn alive(&self) -> bool {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("qemu-system") && cmdline.contains(&*self.dir.to_string_lossy())
    }

    /// Stop it at once (a VM lost, or discarded): SIGKILL, as pulling the plug.
    pub fn kill(&self) -> Result<()> {
        if self.alive() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .with_context(|| format!("killing QEMU {}", self.pid))?;
        }
        Ok(())
    }

    /// The console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// Boot `spec` detached, with its files in `dir` (which must be absolute: QEMU changes to `/`).
/// The console goes to `dir/console.log` whatever the spec says.
pub fn start(spec: &Spec, dir: &Path) -> Result<Detached> {
    if !dir.is_absolute() {
        bail!("internal: {} is not an absolute path", dir.display());
    }
    fs_err::create_dir_all(dir)?;
    let spec = Spec {
        console: Console::Log(dir.join("console.log")),
        image: std::path::absolute(&spec.image).context("the image has no absolute path")?,
        ..spec.clone()
    };
    let ports = forwards(&spec)?;
    let disks = prepare(&spec, dir)?;
    let pidfile = dir.join("qemu.pid");
    let _ = fs_err::remove_file(&pidfile);
    qemu_cmd(&spec, &disks, &ports)
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(&pidfile)
        .arg("-D")
        .arg(dir.join("qemu.log"))
        .run()
        .context("starting a detached QEMU")?;
    let pid: u32 = fs_err::read_to_string(&pidfile)?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid", pidfile.display()))?;
    tracing::info!(
        "{}: QEMU {pid}, SSH on 127.0.0.1:{}",
        dir.display(),
        ports[0].1
    );
    Ok(Detached {
        pid,
        ports,
        dir: dir.to_path_buf(),
    })
}
