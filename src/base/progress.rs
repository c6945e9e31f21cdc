//! Progress: a spinner per phase on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy)]
pub struct Progress {
    tty: bool,
}

impl Progress {
    /// Bars when stderr is a terminal and `quiet` is off; log lines otherwise.
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// Start a phase; it reports its time when dropped or [`Phase::done`].
    pub fn phase(&self, name: &str, what: &str) -> Phase {
        let bar = if self.tty {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix:<11} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(name.to_string());
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            Some(b)
        } else {
            tracing::info!("{name}: {what}");
            None
        };
        Phase {
            name: name.to_string(),
            start: Instant::now(),
            bar,
            finished: false,
        }
    }
}

/// One running phase.
pub struct Phase {
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
    finished: bool,
}

impl Phase {
    /// Finish with a short note; returns the phase's seconds.
    pub fn done(mut self, note: &str) -> f64 {
        self.finish(note)
    }

    fn finish(&mut self, note: &str) -> f64 {
        self.finished = true;
        let secs = self.start.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => b.finish_with_message(format!("{note} ({secs:.1} s)")),
            None => tracing::info!("{}: {note} ({secs:.1} s)", self.name),
        }
        secs
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(b) = &self.bar {
                b.abandon_with_message("failed");
            } else {
                tracing::info!(
                    "{}: stopped after {:.1} s",
                    self.name,
                    self.start.elapsed().as_secs_f64()
                );
            }
        }
    }
}
