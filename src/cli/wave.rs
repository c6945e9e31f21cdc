//! The pull-mode half of `cairn rollout`: `plan`, `barrier`, `deadend`, `recall`, and `pause`,
//! `resume`, `status` with `--ref` — they write a ref's signed update graph in the repo
//! (`release::graph::edit`) or read it beside what the lock service heard from the nodes
//! (`fleet::pull`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::lock::Conn;
use super::{print_json, say};
use crate::release::graph::edit::{self, Change};
use crate::release::sign::SignOpts;

/// Where the graph is written, with which key.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The OSTree repo the graph is served beside (`updates/REF.json`).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub sign: SignOpts,
    /// Print the graph as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The ref whose graph it is (its nodes follow it), e.g. cairn/amd64/app-example.
    #[arg(value_name = "REF")]
    pub ref_: String,
    /// The commit to release (default: the ref's).
    #[arg(long, value_name = "REV")]
    pub commit: Option<String>,
    /// When the wave starts: `now`, an RFC 3339 time, or seconds since the epoch.
    #[arg(long, default_value = "now")]
    pub start: String,
    /// From the first node to every node (e.g. "2h", "30m"); 0s opens it to all at once.
    #[arg(long, value_parser = duration_or_zero)]
    pub duration: Duration,
    /// The share of nodes it opens to at the start (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub start_percentage: f64,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Debug, Args)]
pub struct MarkArgs {
    #[arg(value_name = "REF")]
    pub ref_: String,
    /// The release (its version).
    pub version: String,
    /// Why (shown to the nodes' operators; a dead end's at login).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Debug, Args)]
pub struct RecallArgs {
    #[arg(value_name = "REF")]
    pub ref_: String,
    /// The recalled release.
    pub version: String,
    /// The good release its nodes go back to.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub graph: GraphArgs,
}

/// `pause`/`resume --ref REF`: the graph's wave, not a push rollout.
#[derive(Debug, Args)]
pub struct WaveArgs {
    /// The ref whose wave it is.
    #[arg(long = "ref", value_name = "REF")]
    pub ref_: Option<String>,
    /// The release (default: the newest one rolling out, or paused).
    #[arg(long, requires = "ref_")]
    pub version: Option<String>,
    #[command(flatten)]
    pub sign: SignOpts,
}

/// `status --ref REF`: the pull-mode fleet's view.
#[derive(Debug, Args)]
pub struct PullStatusArgs {
    /// Show the pull-mode fleet following this ref (the lock service's reports and the graph).
    #[arg(long = "ref", value_name = "REF")]
    pub ref_: Option<String>,
    /// The lock group of its nodes.
    #[arg(long, default_value = "default", requires = "ref_")]
    pub group: String,
    #[command(flatten)]
    pub conn: Conn,
}

fn duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" || s.trim() == "0s" {
        return Ok(Duration::ZERO);
    }
    crate::base::units::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like \"90s\", \"10m\" or \"2h\""))
}

/// `now`, an RFC 3339 time, or seconds since the epoch.
fn start_time(s: &str, now: i64) -> Result<i64> {
    if s == "now" {
        return Ok(now);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp())
        .with_context(|| format!("--start {s:?} is not `now`, an RFC 3339 time or an epoch"))
}

fn apply(repo: &std::path::Path, ref_: &str, c: Change, sign: &SignOpts, json: bool) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    let e = edit::apply(repo, ref_, &c, sign, now)?;
    if json {
        return print_json(&e.graph);
    }
    say(format_args!(
        "{}: {} (serial {}, signed by {}, {})",
        ref_,
        e.summary,
        e.graph.metadata.serial,
        e.signed_by,
        e.path.display()
    ))
}

pub fn plan(a: PlanArgs) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    if !(0.0..=1.0).contains(&a.start_percentage) {
        bail!(
            "--start-percentage {} is not from 0.0 to 1.0",
            a.start_percentage
        );
    }
    let c = Change::Plan {
        rev: a.commit,
        start: start_time(&a.start, now)?,
        start_percentage: a.start_percentage,
        duration_minutes: a.duration.as_secs().div_ceil(60),
    };
    apply(&a.graph.repo, &a.ref_, c, &a.graph.sign, a.graph.json)
}

pub fn barrier(a: MarkArgs) -> Result<()> {
    let c = Change::Barrier {
        version: a.version,
        reason: a.reason,
    };
    apply(&a.graph.repo, &a.ref_, c, &a.graph.sign, a.graph.json)
}

pub fn deadend(a: MarkArgs) -> Result<()> {
    let c = Change::Deadend {
        version: a.version,
        reason: a.reason,
    };
    apply(&a.graph.repo, &a.ref_, c, &a.graph.sign, a.graph.json)
}

pub fn recall(a: RecallArgs) -> Result<()> {
    let c = Change::Recall {
        version: a.version,
        to: a.to,
        reason: a.reason,
    };
    apply(&a.graph.repo, &a.ref_, c, &a.graph.sign, a.graph.json)
}

/// `pause --ref` / `resume --ref`.
pub fn wave(repo: &std::path::Path, a: WaveArgs, pause: bool) -> Result<()> {
    let ref_ = a.ref_.context("--ref is required here")?;
    let c = if pause {
        Change::Pause { version: a.version }
    } else {
        Change::Resume { version: a.version }
    };
    apply(repo, &ref_, c, &a.sign, false)
}

/// `status --ref`.
pub fn status(repo: &std::path::Path, a: &PullStatusArgs, json: bool) -> Result<()> {
    let ref_ = a.ref_.as_deref().context("--ref is required here")?;
    let graph = edit::load(repo, ref_)?;
    let st = a
        .conn
        .client()?
        .status()
        .with_context(|| format!("asking the lock service at {}", a.conn.url))?;
    let group = st.groups.iter().find(|g| g.name == a.group);
    let now = chrono::Utc::now().timestamp();
    let view = crate::fleet::pull::PullStatus::new(&graph, group, &a.group, now);
    if json {
        print_json(&view)
    } else {
        say(format_args!("{}", view.to_string().trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times() {
        assert_eq!(start_time("now", 5).unwrap(), 5);
        assert_eq!(start_time("1700000000", 5).unwrap(), 1_700_000_000);
        assert_eq!(
            start_time("2023-11-14T22:13:20Z", 5).unwrap(),
            1_700_000_000
        );
        assert!(start_time("soon", 5).is_err());
        assert_eq!(duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(duration_or_zero("2h").unwrap(), Duration::from_secs(7200));
    }
}
