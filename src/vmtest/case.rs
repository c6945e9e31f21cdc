//! One test in a booted VM: copy it and the reboot helper in, run it with its environment, read
//! how it ended, follow the reboots it asks for (running it again after each), and the verdict.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::base::cmd::{Output, TimedOut};
use crate::vm::guest::Guest;

use super::reboot::{self, Next, REBOOT_HELPER};
use super::report::{Boot, Status};
use super::{boot, record_boot, Case, Ctx, Group};

/// Where tests and their helper live in the guest (on /var, so it survives reboots).
const GUEST_DIR: &str = "/var/tmp/cairn-vm-test";
/// How many reboots one test may ask for.
const MAX_REBOOTS: usize = 10;
/// The limit of the short logins around a test (copying it in, reading how it ended).
const SHORT: Duration = Duration::from_secs(60);

/// Quote for the guest's shell.
fn q(s: &str) -> String {
    crate::base::cmd::shell_quote(s)
}

/// A test being run: its guest, its deadline, where its boots go and its output so far.
struct Run<'a, 'c> {
    ctx: &'a Ctx<'c>,
    g: &'a mut Guest,
    case: &'a Case,
    deadline: Instant,
    boots: &'a mut Vec<Boot>,
    output: String,
    /// The time the runs before this one took (a parked test's), and when this one began.
    used: Duration,
    began: Instant,
}

/// A test that asked for any later boot (`$CAIRN_REBOOT --any MARK`) and waits for one while
/// the tests after it run in the same VM: where it stands, to run it again after that boot.
pub(super) struct Parked {
    env: Vec<(&'static str, String)>,
    file: String,
    mark: String,
    /// The boot it asked to leave.
    pub boot_id: String,
    /// The boots of its VM counted when it parked (see `run_group`).
    pub boots_then: usize,
    /// Its runs so far, and how long they took.
    output: String,
    pub used: Duration,
    runs: usize,
}

/// How a test's run ended: with a verdict (status, message, output), or parked.
pub(super) enum Ended {
    Done(Status, String, String),
    Parked(Parked),
}

/// Run one test, following its reboots (each noted in `boots`). With `park`, a test that asks
/// for any later boot is parked instead of rebooting its VM.
pub(super) fn run_case(
    ctx: &Ctx,
    g: &mut Guest,
    group: &Group,
    case: &Case,
    boots: &mut Vec<Boot>,
    park: bool,
) -> Result<Ended> {
    let (file, env) = {
        let (file, helper) = install(g, case)?;
        (file, environment(ctx, g, group, case, helper))
    };
    let mut run = Run::new(ctx, g, case, boots, case.def.timeout);
    run.drive(env, file, String::new(), 0, 0, park)
}

/// Run a parked test again, `boots` boots after the one it left (the harness's own reboot
/// among them when no other test made one).
pub(super) fn resume(
    ctx: &Ctx,
    g: &mut Guest,
    case: &Case,
    boots: &mut Vec<Boot>,
    p: Parked,
    followed: usize,
) -> Result<Ended> {
    let left = case.def.timeout.saturating_sub(p.used);
    let mut run = Run::new(ctx, g, case, boots, left);
    run.output = p.output;
    run.used = p.used;
    run.drive(p.env, p.file, p.mark, followed, p.runs, false)
}

/// Copy the reboot helper and the test into the guest; (the test's path, the helper's path).
fn install(g: &Guest, case: &Case) -> Result<(String, String)> {
    let body = fs_err::read(&case.def.path)
        .with_context(|| format!("reading {}", case.def.path.display()))?;
    let file = format!("{GUEST_DIR}/{}", case.def.name.replace('/', "--"));
    // One login copies the reboot helper (small enough for the command line) and the test.
    let helper = format!("{GUEST_DIR}/cairn-reboot");
    g.ssh.run_with_input(
        &format!(
            "mkdir -p {GUEST_DIR} && printf %s {} > {helper} && cat > {} && chmod 0755 {helper} {}",
            q(REBOOT_HELPER),
            q(&file),
            q(&file)
        ),
        body,
        SHORT,
    )?;
    Ok((file, helper))
}

/// The variables every run of the test sees.
fn environment(
    ctx: &Ctx,
    g: &Guest,
    group: &Group,
    case: &Case,
    helper: String,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CAIRN_TEST_NAME", case.def.name.clone()),
        ("CAIRN_REBOOT", helper),
        ("CAIRN_VM_FIRMWARE", case.firmware.as_str().to_string()),
        ("CAIRN_VM_HOSTNAME", g.name.clone()),
        ("CAIRN_VM_SSH_KEY", ctx.key.public.clone()),
        ("CAIRN_VM_DISK_SIZE", group.disk_size.to_string()),
    ];
    if let Some(url) = &ctx.repo_url {
        env.push(("CAIRN_REPO_URL", url.clone()));
    }
    env
}

/// The verdict of a test that asked for no more reboots, from its exit status.
fn verdict(code: Option<i32>, output: String) -> (Status, String, String) {
    let tail = crate::base::text::tail(&output, 1, " / ");
    match code {
        Some(0) => (Status::Pass, String::new(), output),
        Some(77) => (Status::Skip, tail, output),
        Some(c) => (Status::Fail, format!("exit status {c}: {tail}"), output),
        None => (
            Status::Fail,
            "the connection broke: the guest rebooted or crashed without a reboot mark".to_string(),
            output,
        ),
    }
}

impl<'a, 'c> Run<'a, 'c> {
    fn new(
        ctx: &'a Ctx<'c>,
        g: &'a mut Guest,
        case: &'a Case,
        boots: &'a mut Vec<Boot>,
        left: Duration,
    ) -> Self {
        Run {
            ctx,
            g,
            case,
            deadline: Instant::now() + left,
            boots,
            output: String::new(),
            used: Duration::ZERO,
            began: Instant::now(),
        }
    }

    /// Run the test (its run number `n` next, with `mark` and `followed`), following its
    /// reboots until it ends or parks.
    fn drive(
        &mut self,
        env: Vec<(&'static str, String)>,
        file: String,
        mut mark: String,
        mut followed: usize,
        first: usize,
        park: bool,
    ) -> Result<Ended> {
        for n in first..=MAX_REBOOTS {
            // For a reboot the guest makes itself, the boot it leaves.
            let before = self.g.boot_id()?;
            let Some(out) = self.once(&env, &mark, followed, &file)? else {
                let why = format!("timed out after {} s", self.case.def.timeout.as_secs());
                return Ok(Ended::Done(
                    Status::Fail,
                    why,
                    std::mem::take(&mut self.output),
                ));
            };
            if n > 0 {
                self.output
                    .push_str(&format!("--- after reboot {n} (mark {mark:?}) ---\n"));
            }
            self.output.push_str(&out.stdout);
            self.output.push_str(&out.stderr);
            let (code, next) = self.ended(&out.stdout);
            let next = match next {
                Next::Any(m) if park => {
                    return Ok(Ended::Parked(Parked {
                        env,
                        file,
                        mark: m,
                        boot_id: before,
                        boots_then: 0,
                        output: std::mem::take(&mut self.output),
                        used: self.used + self.began.elapsed(),
                        runs: n + 1,
                    }))
                }
                Next::Any(m) => Next::Reboot(m),
                other => other,
            };
            match self.reboot(next, before)? {
                Some((m, f)) => (mark, followed) = (m, f),
                None => {
                    self.g.check()?;
                    let (s, m, o) = verdict(code, std::mem::take(&mut self.output));
                    return Ok(Ended::Done(s, m, o));
                }
            }
        }
        let why = format!("more than {MAX_REBOOTS} reboots");
        Ok(Ended::Done(
            Status::Fail,
            why,
            std::mem::take(&mut self.output),
        ))
    }

    /// Run the test once (after `followed` boots, with the mark of the reboot before);
    /// `None` when it ran out of time.
    fn once(
        &mut self,
        env: &[(&str, String)],
        mark: &str,
        followed: usize,
        file: &str,
    ) -> Result<Option<Output>> {
        let vars: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", q(v)))
            .chain(std::iter::once(format!("CAIRN_REBOOT_MARK={}", q(mark))))
            .chain(std::iter::once(format!("CAIRN_REBOOT_BOOTS={followed}")))
            .collect();
        // The exit status goes to a file too: ssh's own 255 (a broken connection) and a test
        // that exits 255 then stay apart.
        let cmd = format!(
            "cd {GUEST_DIR} && rm -f reboot-mark exit-status && env {} {} 2>&1; echo $? > exit-status",
            vars.join(" "),
            q(file)
        );
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.g.ssh.status(&cmd, left) {
            Ok((_, out)) => Ok(Some(out)),
            Err(e) if e.downcast_ref::<TimedOut>().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How the run ended: its exit status (if it could be read) and what it asked for next.
    fn ended(&self, stdout: &str) -> (Option<i32>, Next) {
        // A command that reboots the guest may take it down before the files can be read.
        if let Some(m) = reboot::guest_reboot(stdout) {
            return (None, Next::Guest(m));
        }
        // Both files in one login, each on a line of its own whether or not it exists.
        let state = self
            .g
            .ssh
            .status(
                &format!(
                    "cd {GUEST_DIR} && printf 'exit=%s\\nmark=%s\\n' \"$(cat exit-status 2>/dev/null)\" \"$(cat reboot-mark 2>/dev/null)\""
                ),
                SHORT,
            )
            .map(|(_, o)| o.stdout)
            .unwrap_or_default();
        let field = |k: &str| {
            state
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        (
            field("exit=").parse::<i32>().ok(),
            Next::parse(&field("mark=")),
        )
    }

    /// Make or follow the reboot the test asked for (`before`: the boot it ran in); the mark
    /// and the boots followed for the next run, `None` when it asked for none.
    fn reboot(&mut self, next: Next, before: String) -> Result<Option<(String, usize)>> {
        let (mark, by_guest) = match next {
            Next::Done => return Ok(None),
            Next::Reboot(m) | Next::Any(m) => {
                let t = Instant::now();
                self.g.reboot(self.deadline)?;
                let id = Some(self.case.id());
                let b = boot(self.ctx, self.case.firmware, "reboot", t.elapsed(), id);
                record_boot(self.ctx, b, Some(self.boots));
                return Ok(Some((m, 1)));
            }
            Next::Follow(m) => (m, None),
            Next::Guest(m) => (m, Some(before)),
        };
        Ok(Some((mark, self.follow(by_guest)?)))
    }

    /// Follow the boots the guest makes by itself until one is good; how many there were.
    fn follow(&mut self, by_guest: Option<String>) -> Result<usize> {
        let seen = self.g.follow(self.deadline, by_guest)?;
        let followed = seen.len();
        for f in seen {
            let mut b = boot(
                self.ctx,
                self.case.firmware,
                "followed",
                Duration::from_secs_f64(f.seconds),
                Some(self.case.id()),
            );
            if !f.good {
                b.outcome = "rebooted by itself";
            }
            b.fatal = f.fatal;
            self.output.push_str(&format!("--- {} ---\n", b.line()));
            record_boot(self.ctx, b, Some(self.boots));
        }
        Ok(followed)
    }
}
