//! Reading a guest's serial console log: the fatal patterns that fail a boot however healthy
//! systemd says it is (kernel panic, oops, emergency shell, segfault, out of memory, …), told
//! apart from the warnings a starved emulated CPU gives.
//!
//! Under TCG on a busy host, a vCPU can go unscheduled for 20 s and more: the kernel's
//! soft-lockup detector and RCU's stall detector then fire, though the guest did nothing wrong.
//! Under TCG those two are [`Severity::Warning`]s, kept in the report with their console line;
//! under KVM, where the guest runs on a real CPU, they stay fatal. Everything else that is fatal
//! is fatal everywhere.

use std::path::Path;

use crate::vm::Accel;

/// How a console line counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The boot is bad.
    Fatal,
    /// Reported, but the boot is not failed for it.
    Warning,
}

/// One console line that matched a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The pattern that matched.
    pub pattern: &'static str,
    /// The console line, trimmed.
    pub line: String,
}

/// Lines a starved vCPU produces: the soft-lockup watchdog and RCU's stall detector. They are
/// checked before [`FATAL_PATTERNS`], which would take the soft lockup for a generic `BUG: `.
pub const STARVATION_PATTERNS: &[&str] = &[
    "watchdog: BUG: soft lockup",
    "self-detected stall on CPU",
    "detected stalls on CPUs/tasks",
    "detected expedited stalls on CPUs/tasks",
];

/// Console text that marks a boot as bad, as kola and openQA look for it.
pub const FATAL_PATTERNS: &[&str] = &[
    "Kernel panic",
    "Oops: ",
    "BUG: unable to handle",
    "BUG: kernel NULL pointer",
    "BUG: ",
    "general protection fault",
    "blocked for more than",
    "You are in emergency mode",
    "Entering emergency mode",
    "emergency shell",
    "Emergency Shell",
    "dracut Warning: Could not boot",
    "Failed to mount /sysroot",
    "segfault at ",
    "Out of memory: Killed process",
    "invoked oom-killer",
    "Unable to mount root fs",
];

/// How one console line counts under `accel`, if it matches a pattern at all.
pub fn classify(line: &str, accel: Accel) -> Option<Finding> {
    let found = |severity, pattern| Finding {
        severity,
        pattern,
        line: line.trim().to_string(),
    };
    if let Some(p) = STARVATION_PATTERNS.iter().find(|p| line.contains(*p)) {
        let severity = match accel {
            Accel::Tcg => Severity::Warning,
            Accel::Kvm => Severity::Fatal,
        };
        return Some(found(severity, p));
    }
    FATAL_PATTERNS
        .iter()
        .find(|p| line.contains(*p))
        .map(|p| found(Severity::Fatal, p))
}

/// What a console log shows: its first fatal line, and every warning line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub fatal: Option<Finding>,
    pub warnings: Vec<Finding>,
}

/// Read console text under `accel`.
pub fn verdict(text: &str, accel: Accel) -> Verdict {
    let mut v = Verdict::default();
    for f in text.lines().filter_map(|l| classify(l, accel)) {
        match f.severity {
            Severity::Fatal if v.fatal.is_none() => v.fatal = Some(f),
            Severity::Fatal => {}
            Severity::Warning => v.warnings.push(f),
        }
    }
    v
}

/// Read a console log file (an unreadable or absent log shows nothing yet).
pub fn scan(log: &Path, accel: Accel) -> Verdict {
    scan_from(log, 0, accel)
}

/// Read a console log file from byte `offset` on (what earlier boots printed is left out).
pub fn scan_from(log: &Path, offset: u64, accel: Accel) -> Verdict {
    match std::fs::read(log) {
        Ok(bytes) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            verdict(&String::from_utf8_lossy(&bytes[start..]), accel)
        }
        Err(_) => Verdict::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[    1.0] Run /init as init process\n\
                        [  OK  ] Reached target multi-user.target - Multi-User System.\n\
                        Debian GNU/Linux 12 probe-1 ttyS0\n";

    /// Real console lines, each with the pattern it must match.
    const FATAL_LINES: &[(&str, &str)] = &[
        (
            "[   30.123456] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009",
            "Kernel panic",
        ),
        (
            "[    5.234567] Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "Oops: ",
        ),
        (
            "[    5.111111] BUG: unable to handle page fault for address: ffffffffc0a01000",
            "BUG: unable to handle",
        ),
        (
            "[    4.999999] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "BUG: kernel NULL pointer",
        ),
        (
            "[   61.000000] BUG: scheduling while atomic: kworker/0:1/45/0x00000002",
            "BUG: ",
        ),
        (
            "[   12.345678] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP NOPTI",
            "general protection fault",
        ),
        (
            "[  242.000001] INFO: task systemd-journal:301 blocked for more than 120 seconds.",
            "blocked for more than",
        ),
        (
            "You are in emergency mode. After logging in, type \"journalctl -xb\" to view",
            "You are in emergency mode",
        ),
        (
            "[   20.000000] systemd[1]: Starting emergency.service - Emergency Shell...",
            "Emergency Shell",
        ),
        (
            "[   15.0] dracut Warning: Could not boot.",
            "dracut Warning: Could not boot",
        ),
        (
            "[  12.000000] sshd[400]: segfault at 0 ip 000055d4c2a1b2c3 sp 00007ffd5e0a1b20 error 4 in sshd[55d4c2a00000+9b000]",
            "segfault at ",
        ),
        (
            "[   50.200000] Out of memory: Killed process 1234 (stress) total-vm:2097152kB, anon-rss:1048576kB",
            "Out of memory: Killed process",
        ),
        (
            "[   50.100000] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0",
            "invoked oom-killer",
        ),
        (
            "[    3.0] VFS: Unable to mount root fs on unknown-block(0,0)",
            "Unable to mount root fs",
        ),
    ];

    /// Real starvation lines (the first is the one that failed CI on a slow machine).
    const STARVATION_LINES: &[&str] = &[
        "cairn-test-4-uefi login: [  200.786221] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [cat:531]",
        "[  301.442871] rcu: INFO: rcu_sched self-detected stall on CPU",
        "[  301.442870] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
        "[  120.000000] rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 0-... } 21003 jiffies s: 689 root: 0x1/.",
    ];

    #[test]
    fn a_good_boot_shows_nothing() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            assert_eq!(verdict(GOOD, accel), Verdict::default());
        }
    }

    #[test]
    fn guest_failures_are_fatal_under_every_accelerator() {
        for (line, pattern) in FATAL_LINES {
            for accel in [Accel::Tcg, Accel::Kvm] {
                let f = classify(line, accel).unwrap_or_else(|| panic!("no match: {line}"));
                assert_eq!(f.severity, Severity::Fatal, "{line}");
                assert_eq!(f.pattern, *pattern, "{line}");
                assert_eq!(f.line, line.trim());
            }
        }
    }

    #[test]
    fn starvation_warns_under_tcg_and_fails_under_kvm() {
        for line in STARVATION_LINES {
            let tcg = classify(line, Accel::Tcg).unwrap();
            assert_eq!(tcg.severity, Severity::Warning, "{line}");
            let kvm = classify(line, Accel::Kvm).unwrap();
            assert_eq!(kvm.severity, Severity::Fatal, "{line}");
        }
    }

    #[test]
    fn a_warning_does_not_hide_a_later_fatal_line() {
        let log = format!(
            "{GOOD}{}\n[  300.0] Kernel panic - not syncing: Fatal exception\n{}\n",
            STARVATION_LINES[0], STARVATION_LINES[1]
        );
        let v = verdict(&log, Accel::Tcg);
        assert_eq!(v.fatal.unwrap().pattern, "Kernel panic");
        assert_eq!(v.warnings.len(), 2);
        assert!(v.warnings[0]
            .line
            .contains("soft lockup - CPU#0 stuck for 22s"));
        // Under KVM the soft lockup itself is the first fatal line.
        let v = verdict(&log, Accel::Kvm);
        assert_eq!(v.fatal.unwrap().pattern, "watchdog: BUG: soft lockup");
        assert!(v.warnings.is_empty());
    }

    #[test]
    fn scan_reads_a_file_and_tolerates_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        assert_eq!(scan(&log, Accel::Tcg), Verdict::default());
        fs_err::write(&log, format!("{GOOD}{}\n", STARVATION_LINES[0])).unwrap();
        let v = scan(&log, Accel::Tcg);
        assert!(v.fatal.is_none());
        assert_eq!(v.warnings.len(), 1);
        // What an earlier boot printed can be left behind.
        let before = std::fs::metadata(&log).unwrap().len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"[ 1.0] Kernel panic - not syncing: x\n").unwrap();
        assert!(scan(&log, Accel::Tcg).fatal.is_some());
        assert!(scan_from(&log, before + 1000, Accel::Tcg).fatal.is_none());
        assert_eq!(
            scan_from(&log, before, Accel::Tcg).fatal.unwrap().pattern,
            "Kernel panic"
        );
    }
}
