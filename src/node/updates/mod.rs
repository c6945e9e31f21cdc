//! `cairn node agent`: the node updates itself. At each tick it reads its ref's signed update
//! graph from the remote it pulls from, asks the graph where a node of its wariness goes
//! ([`crate::release::graph::Graph::next`]), asks its strategy for leave (`immediate`, a
//! `periodic` window outside every blackout, or a `fleet-lock` slot from `cairn lock`), deploys
//! the release with the node's own move ([`crate::node::moves::deploy_commit`]) and reboots into
//! its trial. After the reboot it waits for the trial's verdict: healthy, it gives the slot
//! back (and the lock service puts it back behind the load balancer); rolled back, it reports
//! the rollback first (the lock service halts the group) and never takes that release again.
//!
//! - [`config`]: `/etc/cairn/agent.toml`; [`window`]: the periodic calendar;
//! - [`machine`]: the pure state machine and the rules that read the node's status;
//! - [`actor`]: one step of I/O per state; [`AgentRecord`]: `/var/lib/cairn/agent.json`, the
//!   update held across the reboot.

pub mod actor;
pub mod config;
pub mod machine;
pub mod window;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{write_durably, Paths};
use machine::Held;

/// The record's format.
pub const FORMAT: u32 = 1;

/// What the agent keeps across reboots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentRecord {
    pub format: u32,
    /// An update in flight: armed (or being armed) and rebooted into, not yet settled.
    pub held: Option<Held>,
    /// The highest graph serial seen: an older graph is a replay and is refused.
    pub graph_serial: u64,
    /// Releases this node will not take again, by commit, and why.
    pub abandoned: BTreeMap<String, String>,
}

impl Default for AgentRecord {
    fn default() -> Self {
        AgentRecord {
            format: FORMAT,
            held: None,
            graph_serial: 0,
            abandoned: BTreeMap::new(),
        }
    }
}

impl AgentRecord {
    pub fn path(p: &Paths) -> std::path::PathBuf {
        p.root.join("var/lib/cairn/agent.json")
    }

    /// Read it; a missing one is the empty record.
    pub fn load(p: &Paths) -> Result<Self> {
        let path = Self::path(p);
        let data = match fs_err::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e.into()),
        };
        let r: AgentRecord = serde_json::from_slice(&data)
            .with_context(|| format!("{}: not the agent's record", path.display()))?;
        if r.format != FORMAT {
            anyhow::bail!(
                "{}: format {} is not {FORMAT}, the one this cairn writes",
                path.display(),
                r.format
            );
        }
        Ok(r)
    }

    /// Write it durably (temporary file, fsync, rename).
    pub fn save(&self, p: &Paths) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        write_durably(&Self::path(p), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_refuses_another_format() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths {
            root: d.path().into(),
        };
        assert_eq!(AgentRecord::load(&p).unwrap(), AgentRecord::default());
        let mut r = AgentRecord {
            graph_serial: 4,
            ..Default::default()
        };
        r.abandoned
            .insert("ab".repeat(32), "failed its trial".into());
        r.save(&p).unwrap();
        assert_eq!(AgentRecord::load(&p).unwrap(), r);
        fs_err::write(
            AgentRecord::path(&p),
            br#"{"format":2,"held":null,"graph-serial":0,"abandoned":{}}"#,
        )
        .unwrap();
        assert!(format!("{:#}", AgentRecord::load(&p).unwrap_err()).contains("format 2"));
    }
}
