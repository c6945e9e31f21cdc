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
    /// Where the boot being judged starts in the console log (after [`Guest::follow`], earlier
    /// boots' lines are not this boot's).
    console_offset: u64,
}

/// One boot [`Guest::follow`] saw: how long from power-on, and how it ended.
#[derive(Debug, Clone)]
pub struct FollowedBoot {
    pub seconds: f64,
    /// Ready and good (`boot-complete.target` reached); otherwise the guest rebooted itself.
    pub good: bool,
    /// Fatal console lines of a boot that rebooted itself (expected of a failing trial boot).
    pub fatal: Vec<String>,
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
                host: "127.0.0.1".into(),
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
            console_offset: 0,
        })
    }

    /// The console log.
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// Fail on a dead QEMU or a fatal console line; note the console's warnings.
    pub fn check(&mut self) -> Result<()> {
        self.vm.check_running()?;
        let v = console::scan_from(&self.console, self.console_offset, self.accel);
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
            "running" => self.wait_no_jobs(deadline),
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

    /// Wait until systemd has no job queued: units the boot started once it settled (a health
    /// verdict) have finished.
    fn wait_no_jobs(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let jobs = self
                .ssh
                .run("systemctl list-jobs --no-legend", Duration::from_secs(30))?
                .stdout;
            if jobs.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("systemd still has jobs queued:\n{jobs}");
            }
            crate::base::interrupt::check()?;
            self.check()?;
            std::thread::sleep(Duration::from_secs(2));
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

    /// Reboot (or, with `by_guest`, the boot id before a reboot the guest asked for itself), then
    /// follow the guest through the boots it makes by itself (a trial boot that fails its health
    /// check, hangs or panics reboots; the bootloader falls back) until one is ready and good: a
    /// new boot id, SSH, `boot-complete.target` active (the node's own verdict that the boot is
    /// healthy) and no job queued. Each time QEMU ends (the guest rebooted, under `-no-reboot`)
    /// it is powered on again. Fatal console lines of the boots that rebooted are theirs, not
    /// the good boot's. Returns every boot, the good one last.
    pub fn follow(
        &mut self,
        deadline: Instant,
        by_guest: Option<String>,
    ) -> Result<Vec<FollowedBoot>> {
        let mut seen = match by_guest {
            Some(id) => vec![id],
            None => {
                let id = self.boot_id()?;
                // The connection may drop before systemctl answers.
                let _ = self.ssh.status("systemctl reboot", Duration::from_secs(30));
                vec![id]
            }
        };
        self.vm.wait_powered_off(deadline)?;
        let mut boots = Vec::new();
        loop {
            let start_offset = std::fs::metadata(&self.console).map_or(0, |m| m.len());
            self.vm.power_on()?;
            let t = Instant::now();
            let good = self.until_good_or_off(&mut seen, deadline)?;
            let fatal: Vec<String> = console::scan_from(&self.console, start_offset, self.accel)
                .fatal
                .into_iter()
                .map(|f| f.line)
                .collect();
            let b = FollowedBoot {
                seconds: t.elapsed().as_secs_f64(),
                good,
                fatal,
            };
            tracing::info!(
                "{}: boot {} {} after {:.1} s",
                self.name,
                boots.len() + 1,
                if good { "good" } else { "rebooted by itself" },
                b.seconds
            );
            boots.push(b);
            if good {
                self.console_offset = start_offset;
                return Ok(boots);
            }
            if boots.len() >= 12 {
                bail!(
                    "the guest rebooted itself {} times without a good boot",
                    boots.len()
                );
            }
        }
    }

    /// Wait until this boot is good (true) or QEMU has ended (false: the guest rebooted).
    fn until_good_or_off(&mut self, seen: &mut Vec<String>, deadline: Instant) -> Result<bool> {
        let known: String = seen.iter().map(|b| format!(" -e {b}")).collect();
        let probe = format!(
            "b=$(cat /proc/sys/kernel/random/boot_id); echo \"$b\"; \
             if echo \"$b\" | grep -qx{known}; then echo old; \
             elif systemctl is-active --quiet boot-complete.target && \
               [ -z \"$(systemctl list-jobs --no-legend)\" ]; then echo good; \
             else echo waiting; fi"
        );
        loop {
            crate::base::interrupt::check()?;
            if self.vm.check_running().is_err() {
                return Ok(false);
            }
            if Instant::now() > deadline {
                bail!("no good boot by the deadline ({} boots seen)", seen.len());
            }
            if let Ok((Some(0), out)) = self.ssh.status(&probe, Duration::from_secs(20)) {
                let mut lines = out.stdout.lines();
                let id = lines.next().unwrap_or("").trim().to_string();
                if !id.is_empty() && !seen.contains(&id) {
                    seen.push(id);
                }
                if lines.next() == Some("good") {
                    return Ok(true);
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
