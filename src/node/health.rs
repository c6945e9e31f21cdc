//! The health verdict of a boot: every executable in `/usr/lib/cairn/health.d/` and
//! `/etc/cairn/health.d/` exits 0 within its time, no unit failed, and systemd says `running`.
//! It runs in a transaction of its own after the boot settled (`cairn-health.service`, required
//! by `boot-complete.target`), so `running` can be seen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::cmd::{Cmd, TimedOut};

/// How long one check may run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The checks in `dirs`, in name order per directory: executable regular files (a name
/// starting with `.` or ending in `~` is not a check).
pub fn checks(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = fs_err::read_dir(d) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.starts_with('.') && !n.ends_with('~')
            })
            .filter(|e| {
                e.path()
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

/// Run one check; why it failed, if it did.
pub fn run_check(check: &Path, limit: Duration) -> Option<String> {
    match Cmd::new(check).timeout(limit).run_status() {
        Ok((st, _)) if st.success() => None,
        Ok((st, out)) => {
            let said = crate::base::text::tail(&format!("{}{}", out.stdout, out.stderr), 2, " / ");
            Some(format!(
                "check {} failed ({st}){}",
                check.display(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ))
        }
        Err(e) if e.downcast_ref::<TimedOut>().is_some() => Some(format!(
            "check {} did not finish in {} s",
            check.display(),
            limit.as_secs()
        )),
        Err(e) => Some(format!("check {} could not run: {e:#}", check.display())),
    }
}

/// What systemd says: the failed units, and the system state.
pub fn systemd_reasons() -> Vec<String> {
    let mut reasons = Vec::new();
    match Cmd::new("systemctl")
        .args(["list-units", "--state=failed", "--no-legend", "--plain"])
        .run()
    {
        Ok(out) => {
            let failed: Vec<&str> = out
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if !failed.is_empty() {
                reasons.push(format!("failed units: {}", failed.join(" ")));
            }
        }
        Err(e) => reasons.push(format!("could not list the failed units: {e:#}")),
    }
    // `is-system-running` exits non-zero for every state but `running`; its output says which.
    let state = Cmd::new("systemctl")
        .arg("is-system-running")
        .run_status()
        .map(|(_, o)| o.stdout.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e:#})"));
    if state != "running" {
        reasons.push(format!("the system is {state}, not running"));
    }
    reasons
}

/// Every reason this boot is not healthy (none: healthy).
pub fn verdict(dirs: &[PathBuf]) -> Vec<String> {
    let mut reasons: Vec<String> = checks(dirs)
        .iter()
        .filter_map(|c| run_check(c, CHECK_TIMEOUT))
        .collect();
    reasons.extend(systemd_reasons());
    reasons
}

/// What systemd still has queued (the reason a trial boot missed its deadline).
pub fn queued_jobs() -> String {
    match Cmd::new("systemctl")
        .args(["list-jobs", "--no-legend", "--plain"])
        .run()
    {
        Ok(out) => {
            let jobs: Vec<String> = out
                .stdout
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    // JOB UNIT TYPE STATE
                    (f.len() >= 4).then(|| format!("{}({})", f[1], f[3]))
                })
                .take(8)
                .collect();
            if jobs.is_empty() {
                "none".into()
            } else {
                jobs.join(" ")
            }
        }
        Err(e) => format!("unknown ({e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        fs_err::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        fs_err::write(&p, body).unwrap();
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn checks_run_in_order_and_say_why_they_failed() {
        let d = tempfile::tempdir().unwrap();
        let (usr, etc) = (d.path().join("usr"), d.path().join("etc"));
        script(&usr, "20-ok", "#!/bin/sh\nexit 0\n", 0o755);
        script(
            &usr,
            "10-fails",
            "#!/bin/sh\necho 'disk is on fire'\nexit 3\n",
            0o755,
        );
        script(&usr, "30-not-executable", "#!/bin/sh\nexit 1\n", 0o644);
        script(&usr, ".hidden", "#!/bin/sh\nexit 1\n", 0o755);
        script(&etc, "50-slow", "#!/bin/sh\nsleep 5\n", 0o755);
        let found = checks(&[usr.clone(), etc.clone(), d.path().join("missing")]);
        let names: Vec<String> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-fails", "20-ok", "50-slow"]);
        let r = run_check(&found[0], CHECK_TIMEOUT).unwrap();
        assert!(
            r.contains("10-fails failed") && r.contains("disk is on fire"),
            "{r}"
        );
        assert_eq!(run_check(&found[1], CHECK_TIMEOUT), None);
        let r = run_check(&found[2], Duration::from_secs(1)).unwrap();
        assert!(r.contains("did not finish in 1 s"), "{r}");
    }
}
