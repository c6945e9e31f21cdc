//! The node's systemd units, as compose installs them into `/usr/lib/systemd/system` of a
//! commit whose treefile says `node-agent = true` (their text is in `src/node/units/`).
//!
//! - `cairn-trial.service` classifies each boot early (normal, trial, fell back) and finishes a
//!   fall-back; `cairn-boot-settled.service` waits for the boot to settle, then starts
//!   `cairn-boot-good.service`, which requires `boot-complete.target`, which requires
//!   `cairn-health.service` (the checks); a failed check starts `cairn-health-failed.service`.
//! - `cairn-trial-deadline.timer` (only in a deployment on trial) reboots a trial boot that
//!   never reaches a verdict.
//! - `cairn-agent.service` (only where the image wrote `/etc/cairn/agent.toml`) runs the update
//!   agent, `cairn node agent`.

use crate::base::digest::sha256_hex;

/// A unit file.
pub struct Unit {
    pub name: &'static str,
    pub text: &'static str,
}

/// A unit whose text is the file of that name in `src/node/units/`.
macro_rules! unit {
    ($name:literal) => {
        Unit {
            name: $name,
            text: include_str!(concat!("units/", $name)),
        }
    };
}

/// Every unit, in the order they are installed.
pub const UNITS: &[Unit] = &[
    unit!("cairn-trial.service"),
    unit!("cairn-boot-settled.service"),
    unit!("cairn-health.service"),
    unit!("cairn-boot-good.service"),
    unit!("cairn-health-failed.service"),
    unit!("cairn-trial-deadline.timer"),
    unit!("cairn-trial-deadline.service"),
    unit!("cairn-agent.service"),
];

/// The units that `systemctl enable` takes (those with an `[Install]` section).
pub fn enabled() -> impl Iterator<Item = &'static str> {
    UNITS
        .iter()
        .filter(|u| u.text.contains("\n[Install]\n"))
        .map(|u| u.name)
}

/// One digest over every unit's name and text (for the input hash of a compose).
pub fn digest() -> String {
    let mut all = String::new();
    for u in UNITS {
        all.push_str(u.name);
        all.push('\0');
        all.push_str(u.text);
        all.push('\0');
    }
    sha256_hex(all.as_bytes())
}

/// Where the deadline's drop-in goes in a deployment's `/etc`, and its text for `seconds`.
pub const DEADLINE_DROPIN: &str =
    "etc/systemd/system/cairn-trial-deadline.timer.d/50-health-deadline.conf";

/// The drop-in that sets the trial deadline (from the image manifest's `health-deadline`).
pub fn deadline_dropin(seconds: u64) -> String {
    format!(
        "# Written by cairn image from the manifest's `health-deadline`.\n\
         [Timer]\nOnBootSec={seconds}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::cmd::Cmd;

    #[test]
    fn the_units_are_what_the_design_needs() {
        let names: Vec<&str> = enabled().collect();
        assert_eq!(
            names,
            [
                "cairn-trial.service",
                "cairn-boot-settled.service",
                "cairn-health.service",
                "cairn-trial-deadline.timer",
                "cairn-agent.service"
            ]
        );
        for u in UNITS {
            // Actions belong in [Unit]: systemd ignores them in [Service].
            let service = u.text.split("[Service]").nth(1).unwrap_or("");
            assert!(!service.contains("Action="), "{}", u.name);
            assert!(u.text.starts_with("[Unit]\n"), "{}", u.name);
        }
        let deadline = UNITS
            .iter()
            .find(|u| u.name == "cairn-trial-deadline.timer");
        let text = deadline.map(|u| u.text).unwrap_or("");
        assert!(text.contains("ConditionPathExists=/etc/cairn/trial"));
        assert!(text.contains("DefaultDependencies=no"));
        assert_eq!(digest().len(), 64);
    }

    /// `systemd-analyze verify` reads them as systemd will (where systemd is installed).
    #[test]
    fn systemd_accepts_them() {
        if Cmd::new("systemd-analyze").arg("--version").run().is_err() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for u in UNITS {
            let p = d.path().join(u.name);
            // The binary is the node's; here any program stands in for it.
            fs_err::write(&p, u.text.replace("/usr/bin/cairn node", "/bin/true")).unwrap();
            paths.push(p);
        }
        let dropin = d.path().join("cairn-trial-deadline.timer.d");
        fs_err::create_dir(&dropin).unwrap();
        fs_err::write(dropin.join("x.conf"), deadline_dropin(480)).unwrap();
        let out = Cmd::new("systemd-analyze")
            .arg("verify")
            .args(&paths)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", d.path().display()))
            .run_status()
            .unwrap();
        let own: Vec<&str> = out
            .1
            .stderr
            .lines()
            .filter(|l| l.contains("cairn-"))
            .collect();
        assert!(own.is_empty(), "{}", out.1.stderr);
    }
}
