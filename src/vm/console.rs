//! Reading a guest's serial console log: the fatal patterns that fail a boot however healthy
//! systemd says it is (kernel panic, oops, emergency shell, segfault, out of memory, …).

use std::path::Path;

/// Console text that marks a boot as bad, as kola and openQA look for it.
pub const FATAL_PATTERNS: &[&str] = &[
    "Kernel panic",
    "Oops: ",
    "BUG: ",
    "general protection fault",
    "watchdog: BUG: soft lockup",
    "blocked for more than",
    "You are in emergency mode",
    "Entering emergency mode",
    "emergency shell",
    "dracut Warning: Could not boot",
    "Failed to mount /sysroot",
    "segfault at ",
    "Out of memory: Killed process",
    "invoked oom-killer",
    "Unable to mount root fs",
];

/// The first console line holding a fatal pattern, if any.
pub fn first_fatal(text: &str) -> Option<(&'static str, String)> {
    text.lines().find_map(|line| {
        FATAL_PATTERNS
            .iter()
            .find(|p| line.contains(*p))
            .map(|p| (*p, line.trim().to_string()))
    })
}

/// The first fatal line of a console log file (an unreadable or absent log has none yet).
pub fn scan(log: &Path) -> Option<(&'static str, String)> {
    let bytes = std::fs::read(log).ok()?;
    first_fatal(&String::from_utf8_lossy(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fatal_lines_and_ignores_a_good_boot() {
        let good = "[    1.0] Run /init as init process\n\
                    [  OK  ] Reached target multi-user.target - Multi-User System.\n\
                    Debian GNU/Linux 12 probe-1 ttyS0\n";
        assert_eq!(first_fatal(good), None);
        let bad =
            format!("{good}[   30.1] Kernel panic - not syncing: Attempted to kill init!\nmore\n");
        let (pat, line) = first_fatal(&bad).unwrap();
        assert_eq!(pat, "Kernel panic");
        assert!(line.contains("Attempted to kill init"));
        let em = "You are in emergency mode. After logging in, type \"journalctl -xb\"";
        assert_eq!(first_fatal(em).unwrap().0, "You are in emergency mode");
        let seg = "[  12.0] sshd[400]: segfault at 0 ip 000055 sp 00007ff error 4";
        assert_eq!(first_fatal(seg).unwrap().0, "segfault at ");
    }
}
