//! Reboots inside a test: the helper a test calls as `$CAIRN_REBOOT`, and what the harness reads
//! from it when the test ends (a plain reboot, a reboot to follow, or one the guest makes itself).

/// The reboot helper a test calls as `$CAIRN_REBOOT [--follow|--any] <mark> [-- COMMAND…]`: it
/// leaves the mark for the harness and ends the test, like autopkgtest-reboot. `--follow`: the
/// harness follows the boots the guest then makes by itself until one is good. `--any`: any
/// later boot of the VM will do, so the harness may run the next tests first and run this one
/// again after the first boot one of them makes (or reboots for it when none does). With a COMMAND (which
/// reboots the guest, e.g. `cairn node upgrade --reboot`), the guest's own reboot is followed;
/// the line it prints first tells the harness, which may not reach the guest again before it
/// goes down.
pub const REBOOT_HELPER: &str = "#!/bin/sh\n\
# cairn-reboot [--follow|--any] MARK [-- COMMAND...]: see docs/vm-test.md.\n\
usage() { echo 'usage: cairn-reboot [--follow|--any] MARK [-- COMMAND...]' >&2; exit 2; }\n\
mode=reboot\n\
case \"$1\" in --follow) mode=follow; shift ;; --any) mode=any; shift ;; esac\n\
[ -n \"$1\" ] && [ \"$1\" != -- ] || usage\n\
mark=$1; shift\n\
state=/var/tmp/cairn-vm-test/reboot-mark\n\
if [ $# -gt 0 ]; then\n\
  [ \"$1\" = -- ] && [ $# -gt 1 ] && [ $mode = follow ] || usage\n\
  shift\n\
  printf 'guest %s\\n' \"$mark\" > $state; sync\n\
  echo \"cairn-reboot: the guest reboots itself: $mark\"\n\
  \"$@\" || { s=$?; rm -f $state; echo \"cairn-reboot: $1 failed ($s): no reboot\"; exit $s; }\n\
  sleep 900; echo 'cairn-reboot: the guest did not reboot'; exit 1\n\
fi\n\
printf '%s %s\\n' $mode \"$mark\" > $state\n\
kill -TERM \"$PPID\"\n";

/// The line the helper prints before a command that reboots the guest.
const GUEST_REBOOT_LINE: &str = "cairn-reboot: the guest reboots itself: ";

/// What a test asked for when it ended: a reboot (and whether to follow), or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done,
    Reboot(String),
    Follow(String),
    /// Any later boot will do.
    Any(String),
    /// The guest reboots itself (the helper ran its command).
    Guest(String),
}

impl Next {
    /// From the helper's mark file (`MODE MARK`; an old-style file holds the mark alone).
    pub fn parse(mark_file: &str) -> Next {
        let m = mark_file.trim();
        match m.split_once(' ') {
            _ if m.is_empty() => Next::Done,
            Some(("follow", mark)) => Next::Follow(mark.to_string()),
            Some(("any", mark)) => Next::Any(mark.to_string()),
            Some(("guest", mark)) => Next::Guest(mark.to_string()),
            Some(("reboot", mark)) => Next::Reboot(mark.to_string()),
            _ => Next::Reboot(m.to_string()),
        }
    }
}

/// The mark of a reboot the guest makes itself, when the test's output says the helper ran a
/// command for it (its last helper line is the announcement, not the command's failure).
pub fn guest_reboot(output: &str) -> Option<String> {
    let last = output
        .lines()
        .rev()
        .find(|l| l.starts_with("cairn-reboot: "))?;
    last.strip_prefix(GUEST_REBOOT_LINE)
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_valid_shell_and_leaves_its_mark() {
        use crate::base::cmd::Cmd;
        assert!(Cmd::new("sh")
            .args(["-n", "-c", REBOOT_HELPER])
            .run()
            .is_ok());
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("helper");
        // The helper's paths, pointed at a temporary directory.
        fs_err::write(
            &h,
            REBOOT_HELPER.replace("/var/tmp/cairn-vm-test", &d.path().display().to_string()),
        )
        .unwrap();
        let run = |args: &str| {
            Cmd::new("sh")
                .arg("-c")
                .arg(format!("sh {} {args}; echo \"status=$?\"", h.display()))
                .run_status()
                .unwrap()
                .1
                .stdout
        };
        let mark = || fs_err::read_to_string(d.path().join("reboot-mark")).unwrap_or_default();
        // The parent shell gets the TERM (as the test does); the mark is there.
        run("--follow upgraded");
        assert_eq!(Next::parse(&mark()), Next::Follow("upgraded".into()));
        run("plain");
        assert_eq!(Next::parse(&mark()), Next::Reboot("plain".into()));
        run("--any later");
        assert_eq!(Next::parse(&mark()), Next::Any("later".into()));
        // A command that fails: no mark, its status.
        let out = run("--follow m -- false");
        assert!(
            out.contains("status=1") && out.contains("cairn-reboot: false failed"),
            "{out}"
        );
        assert_eq!(guest_reboot(&out), None);
        assert_eq!(mark(), "");
        assert!(run("-- x").contains("status=2"), "a mark is needed");
        assert!(
            run("m -- true").contains("status=2"),
            "a command needs --follow"
        );
    }

    #[test]
    fn marks() {
        assert_eq!(Next::parse(""), Next::Done);
        assert_eq!(Next::parse("old-style\n"), Next::Reboot("old-style".into()));
        assert_eq!(Next::parse("guest m\n"), Next::Guest("m".into()));
        let out = "x\ncairn-reboot: the guest reboots itself: upgraded\nDeploying\n";
        assert_eq!(guest_reboot(out), Some("upgraded".into()));
        assert_eq!(guest_reboot("x\n"), None);
    }
}
