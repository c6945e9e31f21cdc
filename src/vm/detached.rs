//! VMs that outlive the process that started them, as a cloud's machines outlive the
//! orchestrator that asked for them: QEMU daemonizes itself (its own session, no parent-death
//! signal), writes a pid file, reboots by itself like a machine (no power cycle), and is found
//! again later by its record (pid, ports, files), which the caller keeps. A VM that was killed
//! (the plug pulled) can be powered on again on its own disk, as a cloud's stopped machine is
//! started again: its QEMU command line is kept beside its overlay for that.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{forwards, prepare, qemu_cmd, Console, Spec};
use crate::base::cmd::Cmd;

/// The file beside the overlay that keeps the VM's QEMU command line.
const POWER_ON: &str = "qemu.argv.json";

/// How to power the VM on again: its QEMU command line, as first run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerOn {
    version: u32,
    argv: Vec<String>,
}

fn read_pid(pidfile: &Path) -> Result<u32> {
    fs_err::read_to_string(pidfile)?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid", pidfile.display()))
}

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

    /// Power a stopped VM on again on its own disk (its overlay, variables and ports), as
    /// after a power loss; the new record (another pid).
    pub fn power_on(&self) -> Result<Detached> {
        if self.alive() {
            bail!("the VM in {} is running already", self.dir.display());
        }
        let path = self.dir.join(POWER_ON);
        let text = fs_err::read_to_string(&path)?;
        let rec: PowerOn = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a QEMU command record", path.display()))?;
        if rec.version != 1 {
            bail!("{}: version {} is not 1", path.display(), rec.version);
        }
        let Some((program, args)) = rec.argv.split_first() else {
            bail!("{}: an empty command line", path.display());
        };
        let pidfile = self.dir.join("qemu.pid");
        let _ = fs_err::remove_file(&pidfile);
        Cmd::new(program)
            .args(args)
            .run()
            .with_context(|| format!("powering on the VM in {}", self.dir.display()))?;
        Ok(Detached {
            pid: read_pid(&pidfile)?,
            ..self.clone()
        })
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
    let cmd = qemu_cmd(&spec, &disks, &ports)
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(&pidfile)
        .arg("-D")
        .arg(dir.join("qemu.log"));
    let rec = PowerOn {
        version: 1,
        argv: cmd.argv(),
    };
    fs_err::write(dir.join(POWER_ON), serde_json::to_vec_pretty(&rec)?)?;
    cmd.run().context("starting a detached QEMU")?;
    let pid = read_pid(&pidfile)?;
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
