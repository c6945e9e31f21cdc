//! The fleet-wide view of a pull-mode fleet (`cairn rollout status --ref REF`): no orchestrator
//! reaches the nodes, so the view is what the lock service heard from them (each node's last
//! report, the holders, a halt) beside the ref's update graph (each release's wavefront). One
//! typed document for `--json`, and its text for a person.

use std::fmt;

use serde::Serialize;

use crate::base::text::short_hash;
use crate::lock::api::{GroupStatus, Halt, HolderStatus, NodeReport};
use crate::release::graph::Graph;

/// One release of the graph and the wave's progress on it.
#[derive(Debug, Clone, Serialize)]
pub struct WaveRelease {
    pub version: String,
    pub commit: String,
    /// The wavefront now (0.0 to 1.0; `None`: not started, or not planned).
    pub throttle: Option<f64>,
    pub planned: bool,
    pub paused: bool,
    pub barrier: Option<String>,
    pub deadend: Option<String>,
    /// Recalled to this version.
    pub recalled_to: Option<String>,
    /// Nodes booted on it, of those that reported.
    pub nodes_on: usize,
}

/// The whole view.
#[derive(Debug, Clone, Serialize)]
pub struct PullStatus {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub group: String,
    pub graph_serial: u64,
    pub releases: Vec<WaveRelease>,
    pub halted: Option<Halt>,
    pub holders: Vec<HolderStatus>,
    /// Least wary first.
    pub nodes: Vec<NodeReport>,
    /// When this view was taken (ms since the epoch).
    pub at_ms: i64,
}

impl PullStatus {
    /// The view of `group` (as the lock service reported it) against `graph` at `now` (s).
    pub fn new(graph: &Graph, group: Option<&GroupStatus>, name: &str, now: i64) -> Self {
        let mut nodes = group.map(|g| g.nodes.clone()).unwrap_or_default();
        nodes.sort_by(|a, b| a.wariness.total_cmp(&b.wariness));
        let releases = graph
            .releases
            .iter()
            .map(|r| {
                let m = &r.metadata;
                WaveRelease {
                    version: r.version.clone(),
                    commit: r.commit.clone(),
                    throttle: m.rollout.as_ref().and_then(|ro| ro.throttle(now)),
                    planned: m.rollout.is_some(),
                    paused: m
                        .rollout
                        .as_ref()
                        .is_some_and(|ro| ro.paused_epoch.is_some()),
                    barrier: m.barrier.as_ref().map(|b| b.reason.clone()),
                    deadend: m.deadend.as_ref().map(|d| d.reason.clone()),
                    recalled_to: m.recall.as_ref().map(|c| c.to.clone()),
                    nodes_on: nodes.iter().filter(|n| n.commit == r.commit).count(),
                }
            })
            .collect();
        PullStatus {
            ref_: graph.stream.clone(),
            group: name.to_string(),
            graph_serial: graph.metadata.serial,
            releases,
            halted: group.and_then(|g| g.halted.clone()),
            holders: group.map(|g| g.holders.clone()).unwrap_or_default(),
            nodes,
            at_ms: now * 1000,
        }
    }
}

impl fmt::Display for PullStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (graph serial {}), group {}",
            self.ref_, self.graph_serial, self.group
        )?;
        if let Some(h) = &self.halted {
            writeln!(f, "HALTED: {} (by {})", h.reason, h.by)?;
        }
        for r in &self.releases {
            let mut notes = Vec::new();
            match (r.planned, r.throttle) {
                (false, _) => notes.push("not planned".to_string()),
                (true, None) => notes.push("not started".to_string()),
                (true, Some(t)) => notes.push(format!("wave at {:.0}%", t * 100.0)),
            }
            if r.paused {
                notes.push("paused".into());
            }
            if let Some(b) = &r.barrier {
                notes.push(format!("barrier: {b}"));
            }
            if let Some(d) = &r.deadend {
                notes.push(format!("dead end: {d}"));
            }
            if let Some(t) = &r.recalled_to {
                notes.push(format!("recalled to {t}"));
            }
            writeln!(
                f,
                "  release {} {}  {} node(s) on it; {}",
                r.version,
                short_hash(&r.commit),
                r.nodes_on,
                notes.join(", ")
            )?;
        }
        for h in &self.holders {
            writeln!(
                f,
                "  slot held by {} (fencing token {})",
                h.id, h.fencing_token
            )?;
        }
        writeln!(
            f,
            "  {:<20} {:<12} {:<10} {:>8}  {:>9}  message",
            "node", "release", "state", "wariness", "reported"
        )?;
        for n in &self.nodes {
            let age = (self.at_ms - n.at_ms).max(0) / 1000;
            writeln!(
                f,
                "  {:<20} {:<12} {:<10} {:>8.3}  {:>7} s  {}{}",
                n.client_params.id,
                n.release.as_deref().unwrap_or("-"),
                n.phase.as_str(),
                n.wariness,
                age,
                n.target
                    .as_ref()
                    .map(|t| format!("→ {t}: "))
                    .unwrap_or_default(),
                n.message
            )?;
        }
        Ok(())
    }
}
