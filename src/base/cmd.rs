//! The one way cairn runs an external program.
//!
//! Every command is logged before it starts; a failure's error names the program, its exit status
//! and the tail of its standard error, so that a failed `mmdebstrap` or `dracut` explains itself.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How many lines of a failed command's stderr go into the error.
const STDERR_TAIL_LINES: usize = 25;

/// A command to run, built like [`std::process::Command`].
pub struct Cmd {
    inner: Command,
    display: String,
    timeout: Option<Duration>,
    stdin: Option<Vec<u8>>,
}

/// The error of a command that ran past its [`Cmd::timeout`]; callers branch on it (an SSH probe
/// that times out is retried, a test that times out fails).
#[derive(Debug, thiserror::Error)]
#[error("`{0}` timed out after {1} s")]
pub struct TimedOut(pub String, pub u64);

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    /// A command for `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let display = program.as_ref().to_string_lossy().into_owned();
        Self {
            inner: Command::new(program),
            display,
            timeout: None,
            stdin: None,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.display.push(' ');
        self.display
            .push_str(&shell_quote(&arg.as_ref().to_string_lossy()));
        self.inner.arg(arg);
        self
    }

    /// Add several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// The program and its arguments, as given (to run the same command again later).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.inner.get_program())
            .chain(self.inner.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Set an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, val);
        self
    }

    /// Remove an environment variable for the command.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.inner.env_remove(key);
        self
    }

    /// Run the command in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Stop the command (its whole process group) once it has run this long.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Feed these bytes to the command's standard input (otherwise it reads /dev/null).
    pub fn stdin_bytes(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self
    }

    /// Start the command in the background with stdout and stderr going to `log`; the returned
    /// guard stops its process group when dropped, so a VM never outlives its owner.
    pub fn spawn_logged(mut self, log: &Path) -> Result<Spawned> {
        tracing::debug!(cmd = %self.display, "starting");
        let file = std::fs::File::create(log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("could not open {} twice", log.display()))?;
        own_process_group(&mut self.inner);
        let child = self
            .inner
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("could not start `{}`", self.display))?;
        Ok(Spawned {
            child,
            display: self.short_display(),
        })
    }

    /// Run with this terminal as the command's standard input and output (QEMU's console for
    /// `cairn vm run`). It stays in cairn's process group, so the terminal's keys reach it, and it
    /// still dies with cairn.
    pub fn run_foreground(mut self) -> Result<std::process::ExitStatus> {
        tracing::debug!(cmd = %self.display, "running in the foreground");
        die_with_cairn(&mut self.inner);
        self.inner
            .status()
            .with_context(|| format!("could not run `{}`", self.short_display()))
    }

    /// The command line as logged.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The command line for an error message: long ones (mmdebstrap with 200 packages) are cut.
    fn short_display(&self) -> String {
        const MAX: usize = 300;
        if self.display.len() <= MAX {
            return self.display.clone();
        }
        let mut end = MAX;
        while !self.display.is_char_boundary(end) {
            end -= 1;
        }
        format!(
            "{} … ({} characters)",
            &self.display[..end],
            self.display.len()
        )
    }

    /// Run to completion, capturing stdout and stderr; a non-zero exit is an error carrying the
    /// tail of stderr.
    pub fn run(self) -> Result<Output> {
        let (status, out, display) = self.run_unchecked()?;
        if !status.success() {
            bail!("{}", failure_message(&display, status, &out.stderr));
        }
        Ok(out)
    }

    /// Run to completion with stdout and stderr captured, returning the exit status too, so that a
    /// caller can branch on a failure (e.g. apt's "Unable to locate package").
    pub fn run_status(self) -> Result<(std::process::ExitStatus, Output)> {
        let (status, out, _) = self.run_unchecked()?;
        Ok((status, out))
    }

    fn run_unchecked(mut self) -> Result<(std::process::ExitStatus, Output, String)> {
        tracing::debug!(cmd = %self.display, "running");
        let mut child = self.spawn_piped()?;
        let pipes = Pipes::start(&mut child, self.stdin.take());
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.display))?
            {
                break st;
            }
            if let Some(e) = self.why_stop(started) {
                stop(&mut child);
                pipes.abandon();
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok((status, pipes.finish(), self.short_display()))
    }

    /// Start the command in a process group of its own, its stdout and stderr piped (and its
    /// stdin, when it has bytes to read).
    fn spawn_piped(&mut self) -> Result<Child> {
        own_process_group(&mut self.inner);
        let stdin = if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        self.inner
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{}`", self.display))
    }

    /// Why a running command must stop now, if it must: an interrupt, or its timeout.
    fn why_stop(&self, started: Instant) -> Option<anyhow::Error> {
        if crate::base::interrupt::requested() {
            Some(
                anyhow::Error::new(crate::base::interrupt::Interrupted)
                    .context(format!("stopped `{}`", self.short_display())),
            )
        } else {
            self.timeout
                .filter(|limit| started.elapsed() > *limit)
                .map(|limit| TimedOut(self.short_display(), limit.as_secs()).into())
        }
    }
}

/// The threads of a running child's pipes: they read stdout and stderr so that neither can
/// fill up and block the child, and write its input, while the caller watches for its end or
/// an interrupt.
struct Pipes {
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    stdin: Option<JoinHandle<()>>,
}

impl Pipes {
    fn start(child: &mut Child, input: Option<Vec<u8>>) -> Self {
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stdin = match (input, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || {
                use std::io::Write;
                // A child that exits without reading all of it is not our error to report.
                let _ = pipe.write_all(&data);
            })),
            _ => None,
        };
        Self {
            stdout,
            stderr,
            stdin,
        }
    }

    /// After the child was stopped: let the readers see the pipes close.
    fn abandon(self) {
        let _ = self.stdout.join();
        let _ = self.stderr.join();
    }

    /// After the child ended: what it printed.
    fn finish(self) -> Output {
        if let Some(t) = self.stdin {
            let _ = t.join();
        }
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        Output {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// The child leads a process group of its own, so that an interrupt can stop it with all its
/// descendants, and it dies with cairn, so a killed compose leaves no mmdebstrap or dracut running
/// on into the next one's work tree, and a killed test run leaves no VM behind.
fn own_process_group(cmd: &mut Command) {
    // SAFETY: setpgid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .map_err(std::io::Error::from)
        });
    }
    die_with_cairn(cmd);
}

/// The child is killed when cairn dies (strictly: when the thread that started it ends).
fn die_with_cairn(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// A background command started by [`Cmd::spawn_logged`]; dropping it stops the command.
pub struct Spawned {
    child: std::process::Child,
    display: String,
}

impl Spawned {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// If the command has ended, how: an error naming the command and its exit status.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => bail!("`{}` ended ({st})", self.display),
            Err(e) => Err(e).with_context(|| format!("waiting for `{}`", self.display)),
        }
    }

    /// Wait for the command to end by itself.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        self.child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.display))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            stop(&mut self.child);
        }
    }
}

/// Ask a child's process group to stop (SIGTERM, so mmdebstrap can unmount), then kill the
/// group after a grace period, so that no descendant keeps running or holds the output pipes.
fn stop(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

/// The error text for a failed command: what ran, how it ended, and the tail of its stderr.
pub fn failure_message(display: &str, status: std::process::ExitStatus, stderr: &str) -> String {
    let tail = crate::base::text::tail(stderr, STDERR_TAIL_LINES, "\n");
    let how = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    if tail.trim().is_empty() {
        format!("`{display}` failed ({how})")
    } else {
        format!("`{display}` failed ({how}); the end of its stderr:\n{tail}")
    }
}

/// Quote a word for display the way a shell would need it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout() {
        let out = Cmd::new("sh").args(["-c", "echo hello"]).run().unwrap();
        assert_eq!(out.stdout.trim(), "hello");
    }

    #[test]
    fn failure_carries_stderr_tail_and_status() {
        let err = Cmd::new("sh")
            .args([
                "-c",
                "for i in $(seq 1 40); do echo line$i >&2; done; exit 3",
            ])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.contains("line40"), "{err}");
        assert!(!err.contains("line10\n"), "only the tail is kept: {err}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("/nonexistent/prog").run().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/prog"), "{err}");
    }

    #[test]
    fn long_commands_are_cut_in_errors() {
        let long = "x".repeat(1000);
        let err = Cmd::new("sh")
            .args(["-c", "exit 1", &long])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("characters)") && err.len() < 500, "{err}");
    }

    #[test]
    fn timeout_stops_the_command() {
        let t = Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(err.downcast_ref::<TimedOut>().is_some(), "{err:#}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = Cmd::new("wc")
            .arg("-c")
            .stdin_bytes(vec![b'x'; 100_000])
            .run()
            .unwrap();
        assert_eq!(out.stdout.trim(), "100000");
    }

    #[test]
    fn spawned_command_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut s = Cmd::new("sh")
            .args(["-c", "echo started; exec sleep 60"])
            .spawn_logged(&log)
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(s.id() as i32);
        s.check_running().unwrap();
        drop(s);
        // The process is gone (reaped): signalling it fails.
        assert!(nix::sys::signal::kill(pid, None).is_err());
        let mut done = Cmd::new("true").spawn_logged(&log).unwrap();
        assert!(done.wait().unwrap().success());
        assert!(done.check_running().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
