//! `/etc/cairn/node.toml`: the node's settings, written into the deployment's `/etc` by
//! `cairn image` from the image manifest (`trial-boots`, `health-deadline`), carried to every
//! later deployment by OSTree's `/etc` merge, and editable on the node.
//!
//! ```toml
//! trial-boots = 3            # boots a new deployment gets to prove healthy (1 to 9)
//! health-deadline = "10m"    # from power-on to the health verdict of a trial boot
//! ```
//!
//! The deadline itself is enforced by `cairn-trial-deadline.timer`, whose drop-in the image
//! writes beside this file; the value here is what `cairn node status` reports.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;
use toml::Spanned;

use super::state::MAX_TRIES;
use crate::base::span::parse_toml;
use crate::base::units::parse_duration;

/// The settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub trial_boots: u32,
    pub health_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trial_boots: 3,
            health_deadline: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    trial_boots: Option<Spanned<i64>>,
    health_deadline: Option<Spanned<String>>,
}

/// A trial count the countdown handles, or why not.
pub fn check_tries(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_TRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "{n} is not a number of trial boots from 1 to {MAX_TRIES}"
        )),
    }
}

/// A deadline: a duration of at least a minute (a boot takes longer than that).
pub fn check_deadline(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Some(d) if d >= Duration::from_secs(60) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a duration of at least a minute, like \"10m\" or \"300s\""
        )),
    }
}

impl Config {
    /// Read the file; a missing one gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Config::default());
        }
        let (doc, raw): (_, Raw) = parse_toml(path, "cairn node settings")?;
        let at = |off: usize| doc.at(off);
        let mut c = Config::default();
        if let Some(t) = &raw.trial_boots {
            c.trial_boots = match check_tries(*t.get_ref()) {
                Ok(n) => n,
                Err(e) => bail!("{}: key `trial-boots`: {e}", at(t.span().start)),
            };
        }
        if let Some(d) = &raw.health_deadline {
            c.health_deadline = match check_deadline(d.get_ref()) {
                Ok(d) => d,
                Err(e) => bail!("{}: key `health-deadline`: {e}", at(d.span().start)),
            };
        }
        Ok(c)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        format!(
            "# cairn node settings (written by cairn image; see docs/node.md).\n\
             # Boots a new deployment gets to prove healthy before the previous one boots again.\n\
             trial-boots = {}\n\
             # From power-on to the health verdict of a trial boot (the deadline timer's drop-in\n\
             # in /etc/systemd/system/cairn-trial-deadline.timer.d/ enforces it).\n\
             health-deadline = \"{}s\"\n",
            self.trial_boots,
            self.health_deadline.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_defaults_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("node.toml");
        assert_eq!(Config::load(&p).unwrap(), Config::default());
        let c = Config {
            trial_boots: 1,
            health_deadline: Duration::from_secs(480),
        };
        fs_err::write(&p, c.to_toml()).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        for (body, want) in [
            ("trial-boots = 0\n", "node.toml:1: key `trial-boots`"),
            ("trial-boots = 10\n", "node.toml:1: key `trial-boots`"),
            (
                "\nhealth-deadline = \"5s\"\n",
                "node.toml:2: key `health-deadline`",
            ),
            ("bogus = 1\n", "bogus"),
        ] {
            fs_err::write(&p, body).unwrap();
            let e = format!("{:#}", Config::load(&p).unwrap_err());
            assert!(e.contains(want), "{body} → {e}");
        }
    }
}
