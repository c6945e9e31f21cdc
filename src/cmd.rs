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
        // The child dies with cairn, so a killed compose leaves no mmdebstrap or dracut running
        // on into the next one's work tree.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            self.inner.pre_exec(|| {
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
        // Read stderr on a thread so that neither pipe can fill up and block the child.
        let mut stderr_pipe = child.stderr.take();
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = stderr_pipe.as_mut() {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut p) = child.stdout.take() {
            p.read_to_end(&mut stdout)
                .with_context(|| format!("reading the output of `{}`", self.display))?;
        }
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.display))?;
        let stderr = err_thread.join().unwrap_or_default();
        Ok((
            status,
            Output {
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            },
            self.display,
        ))
    }
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
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
