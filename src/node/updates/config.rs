//! `/etc/cairn/agent.toml`: how `cairn node agent` updates the node. `cairn image` writes it from
//! the file the image manifest's `agent` key names; the keys are Zincati's, in kebab-case.
//!
//! ```toml
//! [agent.timing]
//! steady-interval = "5m"          # how often to look for an update (±20% jitter)
//! [identity]
//! group = "app"                   # the lock group
//! # node-id = "…"                 # default: the hostname (the load balancer's name for it)
//! # rollout-wariness = 0.5        # 0.0 (first) to 1.0 (last); default: a hash of the machine id
//! [updates]
//! strategy = "fleet-lock"         # immediate | periodic | fleet-lock
//! [updates.fleet-lock]
//! base-url = "http://10.0.2.2:3333/"
//! token-file = "/etc/cairn/lock-token"   # optional: a node token (`cairn lock token node ID`)
//! [updates.periodic]
//! time-zone = "Europe/Berlin"     # explicit: an IANA name or "UTC"
//! [[updates.periodic.window]]
//! days = ["Sat", "Sun"]
//! start-time = "22:30"
//! length-minutes = 120
//! [[updates.periodic.blackout]]   # no update from `from` to `until`, both days included
//! from = "2026-12-20"
//! until = "2027-01-04"
//! reason = "year-end change freeze"
//! ```
//!
//! Parsed in stages: the raw TOML (every key optional, unknown keys refused), then the checked
//! [`AgentConfig`] whose errors name the file, the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use super::window::{Blackout, Periodic, Window};
use crate::base::span::{parse_toml, Located};
use crate::base::units::parse_duration;

/// Where the node reads it, below a root.
pub const PATH: &str = "etc/cairn/agent.toml";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    agent: Option<RawAgent>,
    identity: Option<RawIdentity>,
    updates: Option<RawUpdates>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAgent {
    timing: Option<RawTiming>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTiming {
    steady_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIdentity {
    group: Option<Spanned<String>>,
    node_id: Option<Spanned<String>>,
    rollout_wariness: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpdates {
    strategy: Option<Spanned<String>>,
    fleet_lock: Option<RawFleetLock>,
    periodic: Option<RawPeriodic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFleetLock {
    base_url: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPeriodic {
    time_zone: Option<Spanned<String>>,
    window: Option<Vec<Spanned<RawWindow>>>,
    blackout: Option<Vec<Spanned<RawBlackout>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWindow {
    days: Vec<String>,
    start_time: String,
    length_minutes: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBlackout {
    from: String,
    until: String,
    reason: Option<String>,
}

/// The lock service a `fleet-lock` node asks for its slot.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetLock {
    pub base_url: url::Url,
    pub token_file: Option<PathBuf>,
}

/// When the node may update.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// As soon as the graph opens a release to it.
    Immediate,
    /// Inside a weekly window and outside every blackout.
    Periodic(Periodic),
    /// When the lock service grants it a slot.
    FleetLock(FleetLock),
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Periodic(_) => "periodic",
            Strategy::FleetLock(_) => "fleet-lock",
        }
    }
}

/// The agent's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub steady_interval: Duration,
    pub group: String,
    /// `None`: the hostname.
    pub node_id: Option<String>,
    /// `None`: a hash of the machine id.
    pub rollout_wariness: Option<f64>,
    pub strategy: Strategy,
}

impl AgentConfig {
    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let (doc, raw): (_, Raw) = parse_toml(path, "cairn agent settings")?;
        check(&doc, raw)
    }
}

fn check(doc: &Located, raw: Raw) -> Result<AgentConfig> {
    let at = |o: usize| doc.at(o);
    let steady_interval = match raw
        .agent
        .and_then(|a| a.timing)
        .and_then(|t| t.steady_interval)
    {
        None => Duration::from_secs(300),
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if d >= Duration::from_secs(5) => d,
            _ => bail!(
                "{}: key `steady-interval`: {:?} is not a duration of at least 5 s, like \"5m\"",
                at(s.span().start),
                s.get_ref()
            ),
        },
    };
    let id = raw.identity;
    let (group, node_id, wariness) = match id {
        None => (None, None, None),
        Some(i) => (i.group, i.node_id, i.rollout_wariness),
    };
    let group = match group {
        None => "default".to_string(),
        Some(g) if crate::lock::api::valid_group(g.get_ref()) => g.into_inner(),
        Some(g) => bail!(
            "{}: key `group`: {:?} is not a lock group (letters, digits, `-`, `_`, `.`)",
            at(g.span().start),
            g.get_ref()
        ),
    };
    let node_id = match node_id {
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().len() > 253 => {
            bail!("{}: key `node-id`: empty or too long", at(n.span().start))
        }
        other => other.map(Spanned::into_inner),
    };
    let rollout_wariness = match wariness {
        Some(w) if !(0.0..=1.0).contains(w.get_ref()) => bail!(
            "{}: key `rollout-wariness`: {} is not from 0.0 to 1.0",
            at(w.span().start),
            w.get_ref()
        ),
        other => other.map(Spanned::into_inner),
    };
    let strategy = strategy(doc, raw.updates)?;
    Ok(AgentConfig {
        steady_interval,
        group,
        node_id,
        rollout_wariness,
        strategy,
    })
}

fn strategy(doc: &Located, u: Option<RawUpdates>) -> Result<Strategy> {
    let at = |o: usize| doc.at(o);
    let Some(u) = u else {
        return Ok(Strategy::Immediate);
    };
    let name = u
        .strategy
        .as_ref()
        .map_or("immediate", |s| s.get_ref().as_str());
    let off = u.strategy.as_ref().map_or(0, |s| s.span().start);
    let stray = |key: &str, present: bool| -> Result<()> {
        if present {
            bail!(
                "{}: `[updates.{key}]` is set but `strategy` is {name:?}",
                at(off)
            );
        }
        Ok(())
    };
    match name {
        "immediate" => {
            stray("fleet-lock", u.fleet_lock.is_some())?;
            stray("periodic", u.periodic.is_some())?;
            Ok(Strategy::Immediate)
        }
        "fleet-lock" => {
            stray("periodic", u.periodic.is_some())?;
            let f = u
                .fleet_lock
                .ok_or_else(|| anyhow!("{}: strategy \"fleet-lock\" needs `[updates.fleet-lock] base-url`", at(off)))?;
            let url = doc.required(&f.base_url, "base-url")?;
            let base_url = match url::Url::parse(url.get_ref()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                _ => bail!(
                    "{}: key `base-url`: {:?} is not an http(s) URL",
                    at(url.span().start),
                    url.get_ref()
                ),
            };
            let token_file = match f.token_file {
                Some(t) if !Path::new(t.get_ref()).is_absolute() => bail!(
                    "{}: key `token-file`: {:?} is not an absolute path",
                    at(t.span().start),
                    t.get_ref()
                ),
                other => other.map(|t| PathBuf::from(t.into_inner())),
            };
            Ok(Strategy::FleetLock(FleetLock {
                base_url,
                token_file,
            }))
        }
        "periodic" => {
            stray("fleet-lock", u.fleet_lock.is_some())?;
            let p = u
                .periodic
                .ok_or_else(|| anyhow!("{}: strategy \"periodic\" needs `[updates.periodic]`", at(off)))?;
            Ok(Strategy::Periodic(periodic(doc, p)?))
        }
        other => bail!(
            "{}: key `strategy`: {other:?} is not one of \"immediate\", \"periodic\", \"fleet-lock\"",
            at(off)
        ),
    }
}

fn periodic(doc: &Located, p: RawPeriodic) -> Result<Periodic> {
    let at = |o: usize| doc.at(o);
    let tz = doc.required(&p.time_zone, "time-zone")?;
    let time_zone: chrono_tz::Tz = tz.get_ref().parse().map_err(|_| {
        anyhow!(
            "{}: key `time-zone`: {:?} is not an IANA time zone (like \"Europe/Berlin\" or \"UTC\")",
            at(tz.span().start),
            tz.get_ref()
        )
    })?;
    let mut windows = Vec::new();
    for w in p.window.unwrap_or_default() {
        let r = w.get_ref();
        let win = Window::new(&r.days, &r.start_time, r.length_minutes)
            .map_err(|e| anyhow!("{}: `[[updates.periodic.window]]`: {e}", at(w.span().start)))?;
        windows.push(win);
    }
    if windows.is_empty() {
        bail!(
            "{}: strategy \"periodic\" needs at least one `[[updates.periodic.window]]`",
            doc.file
        );
    }
    let mut blackouts = Vec::new();
    for b in p.blackout.unwrap_or_default() {
        let r = b.get_ref();
        let bo = Blackout::new(&r.from, &r.until, r.reason.clone()).map_err(|e| {
            anyhow!(
                "{}: `[[updates.periodic.blackout]]`: {e}",
                at(b.span().start)
            )
        })?;
        blackouts.push(bo);
    }
    Ok(Periodic {
        time_zone,
        windows,
        blackouts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(body: &str) -> Result<AgentConfig> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        fs_err::write(&p, body).unwrap();
        AgentConfig::load(&p)
    }

    #[test]
    fn defaults_and_a_fleet_lock_node() {
        let c = load("").unwrap();
        assert_eq!(c.strategy, Strategy::Immediate);
        assert_eq!(c.steady_interval, Duration::from_secs(300));
        let c = load(
            "[agent.timing]\nsteady-interval = \"20s\"\n[identity]\ngroup = \"app\"\n\
             rollout-wariness = 0.25\n[updates]\nstrategy = \"fleet-lock\"\n\
             [updates.fleet-lock]\nbase-url = \"http://10.0.2.2:3333/\"\n",
        )
        .unwrap();
        assert_eq!(c.group, "app");
        assert_eq!(c.rollout_wariness, Some(0.25));
        assert_eq!(c.steady_interval, Duration::from_secs(20));
        assert!(
            matches!(c.strategy, Strategy::FleetLock(ref f) if f.base_url.port() == Some(3333))
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        for (body, want) in [
            ("[identity]\nrollout-wariness = 1.5\n", "agent.toml:2: key `rollout-wariness`"),
            ("[updates]\nstrategy = \"sometimes\"\n", "agent.toml:2: key `strategy`"),
            ("[updates]\nstrategy = \"fleet-lock\"\n", "needs `[updates.fleet-lock] base-url`"),
            (
                "[updates]\nstrategy = \"fleet-lock\"\n[updates.fleet-lock]\nbase-url = \"ftp://x\"\n",
                "agent.toml:4: key `base-url`",
            ),
            (
                "[updates]\nstrategy = \"periodic\"\n[updates.periodic]\ntime-zone = \"Mars/Base\"\n",
                "agent.toml:4: key `time-zone`",
            ),
            (
                "[updates]\nstrategy = \"periodic\"\n[updates.periodic]\ntime-zone = \"UTC\"\n\
                 [[updates.periodic.window]]\ndays = [\"Funday\"]\nstart-time = \"22:00\"\nlength-minutes = 60\n",
                "Funday",
            ),
            (
                "[updates]\nstrategy = \"immediate\"\n[updates.periodic]\ntime-zone = \"UTC\"\n",
                "`[updates.periodic]` is set but `strategy` is \"immediate\"",
            ),
            ("[agent.timing]\nsteady-interval = \"1s\"\n", "agent.toml:2: key `steady-interval`"),
            ("bogus = 1\n", "bogus"),
        ] {
            let e = format!("{:#}", load(body).unwrap_err());
            assert!(e.contains(want), "{body} → {e}");
        }
    }
}
