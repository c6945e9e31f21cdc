//! The one way cairn runs an external program.
//!
//! Every command is logged before it starts; a failure's error names the program, its exit status
//! and the tail of its standard error, so that a failed `mmdebstrap` or `dracut` explains itself.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// How many lines of a failed command's stderr go into the error.
const STDERR_TAIL_LINES: usize = 25;

/// A command to run, built like [`std::process::Command`].
pub struct Cmd {
    inner: Command,
    display: String,
}

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
        // The child leads a process group of its own, so that an interrupt can stop it with all
        // its descendants, and it dies with cairn, so a killed compose leaves no mmdebstrap or
        // dracut running on into the next one's work tree.
        // SAFETY: setpgid and prctl are async-signal-safe and touch no memory of the parent.
        unsafe {
            self.inner.pre_exec(|| {
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = self
            .inner
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{}`", self.display))?;
        // Read both pipes on threads so that neither can fill up and block the child, while this
        // thread watches for the child's end or an interrupt.
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out_thread = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err_thread = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let status = loop {
            if let Some(st) = child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.display))?
            {
                break st;
            }
            if crate::interrupt::requested() {
                stop(&mut child);
                let _ = out_thread.join();
                let _ = err_thread.join();
                return Err(crate::interrupt::Interrupted)
                    .with_context(|| format!("stopped `{}`", self.short_display()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let stdout = out_thread.join().unwrap_or_default();
        let stderr = err_thread.join().unwrap_or_default();
        Ok((
            status,
            Output {
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            },
            self.short_display(),
        ))
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
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let tail = lines[start..].join("\n");
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
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
