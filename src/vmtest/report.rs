//! Test results: one line per test for people, JSON for machines, JUnit XML for CI, and the
//! console log, journal and output of every failed test kept on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use crate::vm::Accel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// The result of one test under one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// `name@firmware`.
    pub id: String,
    pub name: String,
    pub firmware: &'static str,
    pub status: Status,
    pub seconds: f64,
    /// Why it failed or was skipped.
    pub message: String,
    #[serde(skip)]
    pub output: String,
    /// Where the console log, journal and output of a failed test are.
    pub artifacts: Option<PathBuf>,
    /// Console lines that did not fail the test but are worth a look (a soft lockup or an RCU
    /// stall under TCG: the host starved the guest's CPU).
    pub warnings: Vec<String>,
    /// Every boot during the test (its reboots, and the boots a followed reboot went through).
    pub boots: Vec<Boot>,
}

impl CaseResult {
    /// The line printed for it.
    pub fn line(&self) -> String {
        let mut l = format!("{} {} ({:.1} s)", self.status.word(), self.id, self.seconds);
        if !self.message.is_empty() {
            l.push_str(": ");
            l.push_str(self.message.lines().next().unwrap_or(""));
        }
        if let Some(a) = &self.artifacts {
            l.push_str(&format!(" [logs: {}]", a.display()));
        }
        for w in &self.warnings {
            l.push_str(&format!("\n  warning (console): {w}"));
        }
        l
    }

    /// What JUnit's system-out holds: the test's output, its boots, then the console warnings.
    fn system_out(&self) -> String {
        let mut s = self.output.clone();
        if !self.boots.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str("--- boots during the test ---\n");
            for (i, b) in self.boots.iter().enumerate() {
                s.push_str(&format!("boot {}: {}\n", i + 1, b.line()));
            }
        }
        if !self.warnings.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(
                "--- console warnings (not fatal under TCG: the host starved the vCPU) ---\n",
            );
            for w in &self.warnings {
                s.push_str(w);
                s.push('\n');
            }
        }
        s
    }
}

/// How long a boot took from QEMU's start (or the reboot) to a settled `running` system, or to
/// the guest's own reboot.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub firmware: &'static str,
    pub accel: Accel,
    /// `first`, `reboot`, or `followed` (a boot after a reboot the harness follows).
    pub kind: &'static str,
    pub seconds: f64,
    /// The test it belongs to (none for a VM's first boot).
    pub test: Option<String>,
    /// `ready`, or `rebooted by itself` (a followed boot that did not become good).
    pub outcome: &'static str,
    /// Fatal console lines of a boot that rebooted by itself (its own, not the test's).
    pub fatal: Vec<String>,
}

impl Boot {
    /// The line printed for it.
    pub fn line(&self) -> String {
        let mut l = format!(
            "{} ({}, {}): {} in {:.1} s",
            self.kind,
            self.firmware,
            self.accel.as_str(),
            self.outcome,
            self.seconds
        );
        if let Some(t) = &self.test {
            l.push_str(&format!(" [{t}]"));
        }
        for f in &self.fatal {
            l.push_str(&format!("; console: {f}"));
        }
        l
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: PathBuf,
    pub accel: Accel,
    pub jobs: usize,
    pub seconds: f64,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub junit: PathBuf,
    pub cases: Vec<CaseResult>,
    pub boots: Vec<Boot>,
}

impl Report {
    pub fn new(image: PathBuf, accel: Accel, jobs: usize, junit: PathBuf) -> Self {
        Report {
            image,
            accel,
            jobs,
            seconds: 0.0,
            passed: 0,
            failed: 0,
            skipped: 0,
            junit,
            cases: Vec::new(),
            boots: Vec::new(),
        }
    }

    pub fn add(&mut self, c: CaseResult) {
        match c.status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Skip => self.skipped += 1,
        }
        self.cases.push(c);
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let warnings: usize = self.cases.iter().map(|c| c.warnings.len()).sum();
        format!(
            "{} passed, {} failed, {} skipped in {:.1} s ({}, {} VM{} at a time){}",
            self.passed,
            self.failed,
            self.skipped,
            self.seconds,
            self.accel.as_str(),
            self.jobs,
            if self.jobs == 1 { "" } else { "s" },
            match warnings {
                0 => String::new(),
                n => format!(", {n} console warning{}", if n == 1 { "" } else { "s" }),
            }
        )
    }

    /// Write the JUnit XML report.
    pub fn write_junit(&self) -> Result<()> {
        let mut suite = TestSuite::new("cairn-vm-test");
        let mut cases = self.cases.clone();
        cases.sort_by(|a, b| a.id.cmp(&b.id));
        for c in &cases {
            let mut status = match c.status {
                Status::Pass => TestCaseStatus::success(),
                Status::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
                Status::Skip => TestCaseStatus::skipped(),
            };
            if !c.message.is_empty() {
                status.set_message(c.message.clone());
            }
            let mut tc = TestCase::new(c.id.clone(), status);
            tc.set_classname(c.name.clone());
            tc.set_time(Duration::from_secs_f64(c.seconds));
            let out = c.system_out();
            if !out.is_empty() {
                tc.set_system_out(out);
            }
            suite.add_test_case(tc);
        }
        let mut report = quick_junit::Report::new("cairn");
        report.add_test_suite(suite);
        let xml = report
            .to_string()
            .context("could not render the JUnit report")?;
        crate::base::tmp::write_atomic(&self.junit, xml.as_bytes())
    }
}

/// Where a failed test's logs go: `<out>/<name>@<firmware>/`.
pub fn artifact_dir(out: &Path, id: &str) -> PathBuf {
    out.join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_and_summary() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Report::new("x.qcow2".into(), Accel::Tcg, 2, d.path().join("junit.xml"));
        for (n, s) in [
            ("a", Status::Pass),
            ("b", Status::Fail),
            ("c", Status::Skip),
        ] {
            r.add(CaseResult {
                id: format!("{n}@bios"),
                name: n.into(),
                firmware: "bios",
                status: s,
                seconds: 1.5,
                message: if s == Status::Fail {
                    "exit status 3".into()
                } else {
                    String::new()
                },
                output: "out".into(),
                artifacts: None,
                warnings: if n == "a" {
                    vec![
                        "[  200.7] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [cat:531]"
                            .into(),
                    ]
                } else {
                    Vec::new()
                },
                boots: if n == "a" {
                    vec![Boot {
                        firmware: "bios",
                        accel: Accel::Tcg,
                        kind: "followed",
                        seconds: 151.25,
                        test: Some("a@bios".into()),
                        outcome: "rebooted by itself",
                        fatal: vec!["Kernel panic - not syncing".into()],
                    }]
                } else {
                    Vec::new()
                },
            });
        }
        r.write_junit().unwrap();
        let xml = fs_err::read_to_string(d.path().join("junit.xml")).unwrap();
        assert!(xml.contains("tests=\"3\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(
            xml.contains("disabled=\"1\"") && xml.contains("<skipped"),
            "{xml}"
        );
        assert!(xml.contains("exit status 3"), "{xml}");
        assert!(xml.contains("soft lockup - CPU#0 stuck for 22s"), "{xml}");
        assert!(
            xml.contains("boot 1: followed (bios, tcg): rebooted by itself in 151.2 s [a@bios]; console: Kernel panic"),
            "{xml}"
        );
        assert!(r.summary().starts_with("1 passed, 1 failed, 1 skipped"));
        assert!(
            r.summary().ends_with(", 1 console warning"),
            "{}",
            r.summary()
        );
        assert!(r.cases[0]
            .line()
            .contains("warning (console): [  200.7] watchdog"));
        assert!(r.cases[1]
            .line()
            .starts_with("FAIL b@bios (1.5 s): exit status 3"));
    }
}
