//! A rollout's state, persisted after every step behind a small store interface: what it moves
//! the fleet to, where each node is, and why it stopped. The default store is a JSON file in the
//! fleet's directory, replaced atomically, so a rollout killed at any moment leaves the last
//! step it finished; a distributed store (etcd) implements the same trait. The file is a
//! versioned document (`format`), read by `cairn rollout status` in another process.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::dir::FleetDir;
use super::manifest::Strategy;

/// The format of `rollout.json` (bumped on an incompatible change).
pub const FORMAT: u32 = 1;

/// Why a rollout stopped when the operator aborted it.
pub const ABORTED: &str = "aborted by the operator";

/// Where a node is in the rollout. A node is out of service from `Draining` until `Done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum NodeStep {
    /// Not touched yet.
    Pending,
    /// Being taken out of the load balancer.
    Draining,
    /// Pulling and deploying the new commit.
    Upgrading,
    /// Rebooting into it (the boot id it had before).
    Rebooting { boot_id: String },
    /// Waiting for the node's own verdict (on a boot other than `boot_id`) and the service's
    /// health.
    Verifying { boot_id: String },
    /// Back in the load balancer, watched for the bake time.
    Baking,
    /// On the new commit and serving.
    Done,
    /// A new node (replace) being booted.
    Creating,
    /// A new node (replace), healthy on the new commit, being added to the load balancer.
    Joining,
    /// An old node (replace), drained, being taken out of the load balancer and discarded.
    Removing,
    /// An old node (replace) drained and discarded.
    Removed,
    /// It failed: the reason, whether it rolled itself back, and whether it serves again.
    Failed {
        reason: String,
        rolled_back: bool,
        in_service: bool,
    },
    /// Returned to the previous commit (`on-failure = "rollback"`).
    Reverted,
}

impl NodeStep {
    /// Is the node out of service at this step?
    pub fn out_of_service(&self) -> bool {
        matches!(
            self,
            NodeStep::Draining
                | NodeStep::Removing
                | NodeStep::Upgrading
                | NodeStep::Rebooting { .. }
                | NodeStep::Verifying { .. }
                | NodeStep::Failed {
                    in_service: false,
                    ..
                }
        )
    }

    /// Is the node in the middle of its update (a resumed rollout finishes it first)?
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            NodeStep::Draining
                | NodeStep::Upgrading
                | NodeStep::Rebooting { .. }
                | NodeStep::Verifying { .. }
                | NodeStep::Baking
                | NodeStep::Creating
                | NodeStep::Joining
                | NodeStep::Removing
        )
    }

    pub fn word(&self) -> &'static str {
        match self {
            NodeStep::Pending => "pending",
            NodeStep::Draining => "draining",
            NodeStep::Upgrading => "upgrading",
            NodeStep::Rebooting { .. } => "rebooting",
            NodeStep::Verifying { .. } => "verifying",
            NodeStep::Baking => "baking",
            NodeStep::Done => "done",
            NodeStep::Creating => "creating",
            NodeStep::Joining => "joining",
            NodeStep::Removing => "removing",
            NodeStep::Removed => "removed",
            NodeStep::Failed { .. } => "failed",
            NodeStep::Reverted => "reverted",
        }
    }
}

/// One node as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// An old node the rollout replaces, or a new one it made (replace).
    pub role: Role,
    pub step: NodeStep,
    /// The commit and version it was on when the rollout found it.
    pub from_commit: String,
    pub from_version: String,
    /// What it runs now, as last seen.
    pub commit: String,
    pub version: String,
    /// The service's health, as last seen.
    pub health: Health,
}

/// A node's service health as the rollout last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not checked by this rollout yet.
    Unknown,
    /// Passed its checks on the new commit.
    Healthy,
}

/// A node's part in a replace rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A node that was there (updated in place, or replaced).
    Existing,
    /// A node the rollout made from the newest image.
    New,
}

/// The rollout as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Running,
    /// Asked to stop after the current batch (`cairn rollout pause`).
    Paused,
    /// Stopped on a failure (the reason is in [`Rollout::reason`]).
    Halted,
    /// Stopped by `cairn rollout abort`.
    Aborted,
    /// Every node is on the new commit.
    Done,
}

/// What a rollout moves the fleet to, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub format: u32,
    pub fleet: String,
    pub strategy: Strategy,
    /// The ref nodes follow, and the commit and version it pointed at when the rollout began.
    pub to_ref: String,
    pub to_commit: String,
    pub to_version: String,
    pub phase: Phase,
    /// Why it halted.
    pub reason: Option<String>,
    /// Seconds since the epoch.
    pub started: i64,
    pub updated: i64,
    pub nodes: Vec<Node>,
}

impl Rollout {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// Nodes out of service now.
    pub fn out_of_service(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.step.out_of_service())
            .count()
    }

    /// Is the rollout over (nothing more will happen without an operator)?
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Halted | Phase::Aborted)
    }

    /// Stopped by the operator.
    pub fn abort(&mut self) {
        self.phase = Phase::Aborted;
        self.reason = Some(ABORTED.into());
    }

    /// Nodes on the new commit and serving.
    pub fn done(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.step == NodeStep::Done)
            .count()
    }
}

/// Where rollout states live.
pub trait Store {
    /// The fleet's rollout, if one was ever started.
    fn load(&self) -> Result<Option<Rollout>>;
    /// Persist the rollout (all of it, atomically).
    fn save(&self, r: &Rollout) -> Result<()>;
}

/// The default store: `rollout.json` in the fleet's directory.
pub struct FileStore {
    pub path: PathBuf,
}

impl FileStore {
    pub fn new(dir: &FleetDir) -> Self {
        FileStore { path: dir.state() }
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Option<Rollout>> {
        let t = match fs_err::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let r: Rollout = serde_json::from_str(&t)
            .with_context(|| format!("{}: not a rollout state", self.path.display()))?;
        if r.format > FORMAT {
            bail!(
                "{}: rollout format {} is newer than this cairn reads ({FORMAT})",
                self.path.display(),
                r.format
            );
        }
        Ok(Some(r))
    }

    fn save(&self, r: &Rollout) -> Result<()> {
        let mut r = r.clone();
        r.updated = chrono::Utc::now().timestamp();
        crate::base::tmp::write_atomic(&self.path, &serde_json::to_vec_pretty(&r)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, step: NodeStep) -> Node {
        Node {
            name: name.into(),
            role: Role::Existing,
            step,
            from_commit: "a".into(),
            from_version: "1.0".into(),
            commit: "a".into(),
            version: "1.0".into(),
            health: Health::Healthy,
        }
    }

    #[test]
    fn saved_and_loaded_whole() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(&FleetDir::new(d.path(), "web").unwrap());
        std::fs::create_dir_all(d.path().join("web")).unwrap();
        assert!(s.load().unwrap().is_none());
        let r = Rollout {
            format: FORMAT,
            fleet: "web".into(),
            strategy: Strategy::InPlace,
            to_ref: "cairn/amd64/app".into(),
            to_commit: "b".into(),
            to_version: "1.1".into(),
            phase: Phase::Running,
            reason: None,
            started: 1,
            updated: 1,
            nodes: vec![
                node("n1", NodeStep::Done),
                node(
                    "n2",
                    NodeStep::Rebooting {
                        boot_id: "x".into(),
                    },
                ),
                node("n3", NodeStep::Pending),
            ],
        };
        s.save(&r).unwrap();
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.nodes, r.nodes);
        assert_eq!(back.out_of_service(), 1);
        assert!(back.nodes[1].step.in_flight());
        std::fs::write(&s.path, "{").unwrap();
        assert!(s.load().unwrap_err().to_string().contains("rollout.json"));
        let newer = serde_json::to_string(&Rollout { format: 2, ..r }).unwrap();
        std::fs::write(&s.path, newer).unwrap();
        assert!(s.load().unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn new_and_removed_nodes_count_as_they_serve() {
        // A new node joining serves nobody yet and took nobody out; an old node being removed
        // is out.
        assert!(!NodeStep::Creating.out_of_service() && !NodeStep::Joining.out_of_service());
        assert!(NodeStep::Removing.out_of_service());
        for s in [NodeStep::Creating, NodeStep::Joining, NodeStep::Removing] {
            assert!(s.in_flight(), "{}", s.word());
        }
        let text = serde_json::to_string(&NodeStep::Joining).unwrap();
        assert_eq!(text, r#"{"step":"joining"}"#);
    }
}
