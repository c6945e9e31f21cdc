//! Where a fleet's nodes come from, behind one trait: `qemu` boots local VMs from the newest
//! image of a stream (detached, so that they outlive any orchestrator, as a cloud's machines
//! do), `ssh` reaches hosts that already exist. A cloud (an EC2 auto-scaling group, OpenStack)
//! is one more implementation of [`Provider`]; the rollout never sees which one it drives, and
//! the manifest's provider kind is matched once, in [`build`].
//!
//! What a provider knows of its nodes is kept in the fleet's record (`fleet.json`, see
//! [`FleetDir`]), so that a later process — `cairn rollout resume` after a crash — finds them
//! again.

mod qemu;
mod ssh;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::dir::FleetDir;
use super::manifest::{Fleet, Provider as Kind};
use crate::image::artifacts::StreamImage;
use crate::vm::detached::Detached;
use crate::vm::ssh::Ssh;

pub use qemu::Qemu;
pub use ssh::SshHosts;

/// One node as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub ssh: Ssh,
    /// Where the load balancer and health checks reach the service (`host:port`).
    pub service: String,
    /// The VM behind it (qemu provider).
    pub vm: Option<Detached>,
    /// The image version it was booted from (qemu provider).
    pub image_version: Option<String>,
}

/// Everything the fleet's record holds: present while the fleet is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub name: String,
    pub nodes: Vec<NodeRecord>,
    /// The number the next new node gets (`NAME-N`).
    pub next: u32,
    /// The fleet manifest it was brought up from (commands that name no manifest use it).
    pub manifest: PathBuf,
}

impl FleetRecord {
    /// A record for the fleet of `manifest`, with no node yet.
    pub fn new(f: &Fleet) -> Result<Self> {
        Ok(FleetRecord {
            name: f.name.clone(),
            nodes: Vec::new(),
            next: 0,
            manifest: std::path::absolute(&f.path)
                .with_context(|| format!("{}: no absolute path", f.path.display()))?,
        })
    }

    /// The record in `dir`; an error naming it when the fleet was never brought up.
    pub fn load(dir: &FleetDir) -> Result<Self> {
        let p = dir.record();
        let text = fs_err::read_to_string(&p).with_context(|| {
            format!(
                "no fleet in {} (cairn fleet up MANIFEST first)",
                dir.root().display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a fleet record", p.display()))
    }

    /// The record, if the fleet is up (an error only for a record that is broken).
    pub fn find(dir: &FleetDir) -> Result<Option<Self>> {
        if dir.record().exists() {
            Self::load(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn save(&self, dir: &FleetDir) -> Result<()> {
        crate::base::tmp::write_atomic(&dir.record(), &serde_json::to_vec_pretty(self)?)
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// What fleet commands and rollouts need of the nodes' provider.
pub trait Provider {
    /// Bring up the nodes the manifest asks for, record them, and wait until they answer SSH.
    fn up(&mut self) -> Result<Vec<NodeRecord>>;
    /// Stop the nodes it brought up (existing hosts are left alone).
    fn down(&mut self) -> Result<()>;
    /// The fleet's nodes now.
    fn nodes(&self) -> Result<Vec<NodeRecord>>;
    /// The image a new node boots, for a provider that can make nodes (replace, surge).
    fn image(&self) -> Result<Option<StreamImage>>;
    /// A name for the next new node (reserved: the provider never gives it twice).
    fn new_name(&mut self) -> Result<String>;
    /// Make node `name` from the newest image and wait until it answers SSH; when it was made
    /// already (a resumed rollout) and still runs, just wait for it.
    fn create(&mut self, name: &str) -> Result<NodeRecord>;
    /// Discard a node for good (a node already gone is no error: a resumed removal).
    fn destroy(&mut self, name: &str) -> Result<()>;
    /// Does the node still exist (a VM that was killed, a host that vanished)?
    fn alive(&self, name: &str) -> bool;
    /// Power a stopped node on again on its own disk, as a cloud starts a stopped machine, and
    /// wait until it answers SSH.
    fn power_on(&mut self, name: &str) -> Result<NodeRecord>;
}

/// The provider the fleet manifest names, its state in `dir`, its images (qemu) in `images`.
/// The only place that matches on the kind of provider.
pub fn build(f: &Fleet, dir: &FleetDir, images: &Path) -> Result<Box<dyn Provider + Send>> {
    Ok(match &f.provider {
        Kind::Qemu {
            image,
            nodes,
            memory_mib,
        } => Box::new(Qemu::new(
            f,
            &qemu::Settings {
                image_manifest: image.clone(),
                nodes: *nodes,
                memory_mib: *memory_mib,
            },
            dir,
            images,
        )?),
        Kind::Ssh { hosts } => Box::new(SshHosts::new(f, hosts, dir)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_missing_one_says_fleet_up() {
        let d = tempfile::tempdir().unwrap();
        let dir = FleetDir::new(d.path(), "web").unwrap();
        let e = format!("{:#}", FleetRecord::load(&dir).unwrap_err());
        assert!(e.contains("cairn fleet up"), "{e}");
        assert_eq!(FleetRecord::find(&dir).unwrap(), None);
        dir.create().unwrap();
        let r = FleetRecord {
            name: "web".into(),
            nodes: vec![],
            next: 3,
            manifest: "/m/fleet.toml".into(),
        };
        r.save(&dir).unwrap();
        assert_eq!(FleetRecord::find(&dir).unwrap(), Some(r));
    }
}
