//! A booted VM reached over SSH: the handle boot tests and fleet rollouts drive. It is ready
//! when SSH answers and `systemctl is-system-running --wait` settles to `running` with a clean
//! console; a reboot is a power cycle (QEMU runs with `-no-reboot` and is started again on the
//! same disk), as a cloud's reboot API does it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::ssh::{Key, Ssh};
use super::{console, Accel, Console, Spec, Vm};
use crate::base::cmd::TimedOut;

/// A running VM and how to reach it.
pub struct Guest {
    pub vm: Vm,
    pub ssh: Ssh,
    console: PathBuf,
    accel: Accel,
    /// The name it is logged under (its hostname).
    pub name: String,
    /// Console warnings seen so far (host starvation under TCG), and how many were handed out.
    warnings: Vec<String>,
    reported: usize,
}

impl Guest {
    /// Start QEMU for `spec` (whose console must go to a file) in `dir`, to be reached as root
    /// with `key`. It is not ready yet: see [`Guest::wait_ready`].
    pub fn start(spec: &Spec, dir: &Path, key: &Key, name: &str) -> Result<Self> {
        let Console::File(console) = &spec.console else {
            bail!("internal: a guest's console must go to a file");
        };
        let console = console.clone();
        let vm = Vm::start(spec, dir)?;
        Ok(Guest {
            ssh: Ssh {
                port: vm.ssh_port,
                key: key.private.clone(),
                user: "root".into(),
            },
            vm,
            console,
            accel: spec.accel,
            name: name.to_string(),
            warnings: Vec::new(),
            reported: 0,
        })
    }

    /// The console log.
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// Fail on a dead QEMU or a fatal console line; note the console's warnings.
    pub fn check(&mut self) -> Result<()> {
        self.vm.check_running()?;
        let v = console::scan(&self.console, self.accel);
        for w in v.warnings {
            if !self.warnings.contains(&w.line) {
                tracing::warn!("{}: console warning: {}", self.name, w.line);
                self.warnings.push(w.line);
            }
        }
        if let Some(f) = v.fatal {
            bail!("the console shows {:?}: {}", f.pattern, f.line);
        }
        Ok(())
    }

    /// The console warnings not yet given to a result.
    pub fn new_warnings(&mut self) -> Vec<String> {
        let new = self.warnings[self.reported..].to_vec();
        self.reported = self.warnings.len();
        new
    }

    /// Wait for SSH, then for systemd to settle; `running` is good, anything else is an error
    /// naming the failed units.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let ssh = self.ssh.clone();
        ssh.wait(deadline, &mut || self.check())?;
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        let state = match ssh.status("systemctl is-system-running --wait", left) {
            Ok((_, out)) => out.stdout.trim().to_string(),
            Err(e) if e.downcast_ref::<TimedOut>().is_some() => {
                let jobs = ssh
                    .run("systemctl list-jobs --no-legend", Duration::from_secs(30))
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                bail!("systemd did not settle in time; jobs still queued:\n{jobs}");
            }
            Err(e) => return Err(e),
        };
        self.check()?;
        match state.as_str() {
            "running" => Ok(()),
            "degraded" => {
                let failed = ssh
                    .run(
                        "systemctl --failed --no-legend --plain | cut -d' ' -f1",
                        Duration::from_secs(30),
                    )
                    .map(|o| o.stdout.split_whitespace().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                bail!("the system is degraded; failed units: {failed}")
            }
            other => bail!("the system is {other:?}, not running"),
        }
    }

    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .ssh
            .run(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(30),
            )?
            .stdout
            .trim()
            .to_string())
    }

    /// Reboot and wait until the new boot is ready. The guest's reboot ends QEMU (`-no-reboot`)
    /// and QEMU starts again on the same disk: a power cycle, as a cloud's reboot API does.
    pub fn reboot(&mut self, deadline: Instant) -> Result<()> {
        let before = self.boot_id()?;
        // The connection may drop before systemctl answers.
        let _ = self.ssh.status("systemctl reboot", Duration::from_secs(30));
        self.vm.wait_powered_off(deadline)?;
        self.vm.power_on()?;
        loop {
            crate::base::interrupt::check()?;
            self.check()?;
            if Instant::now() > deadline {
                bail!("the VM did not come back from its reboot in time");
            }
            std::thread::sleep(Duration::from_secs(3));
            match self.boot_id() {
                Ok(id) if id != before && !id.is_empty() => break,
                _ => continue,
            }
        }
        self.wait_ready(deadline)
    }
}
