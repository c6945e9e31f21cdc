//! The `ssh` provider: hosts that already exist, reached over SSH. It cannot make or discard
//! nodes (the manifest refuses `replace` and a surge for it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{FleetRecord, NodeRecord, Provider};
use crate::fleet::dir::FleetDir;
use crate::fleet::manifest::{Fleet, Host};
use crate::image::artifacts::StreamImage;
use crate::vm::ssh::Ssh;

/// Hosts that already exist, reached over SSH.
pub struct SshHosts {
    dir: FleetDir,
    record: FleetRecord,
}

impl SshHosts {
    pub fn new(fleet: &Fleet, hosts: &[Host], dir: &FleetDir) -> Result<Self> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut record = FleetRecord::new(fleet)?;
        record.nodes = hosts
            .iter()
            .map(|h| NodeRecord {
                name: h.name.clone(),
                ssh: Ssh {
                    host: h.address.clone(),
                    port: h.ssh_port,
                    key: h
                        .identity
                        .clone()
                        .unwrap_or_else(|| home.join(".ssh/id_ed25519")),
                    user: h.user.clone(),
                },
                service: h.service_address.clone(),
                vm: None,
                image_version: None,
            })
            .collect();
        Ok(SshHosts {
            dir: dir.clone(),
            record,
        })
    }
}

impl Provider for SshHosts {
    /// The hosts are up already: check that each answers SSH, then record them.
    fn up(&mut self) -> Result<Vec<NodeRecord>> {
        for n in &self.record.nodes {
            let answers = n
                .ssh
                .status("true", Duration::from_secs(15))
                .is_ok_and(|(c, _)| c == Some(0));
            if !answers {
                bail!(
                    "{}: no SSH answer from {}@{}:{}",
                    n.name,
                    n.ssh.user,
                    n.ssh.host,
                    n.ssh.port
                );
            }
        }
        self.dir.create()?;
        self.record.save(&self.dir)?;
        Ok(self.record.nodes.clone())
    }

    fn down(&mut self) -> Result<()> {
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(self.record.nodes.clone())
    }

    fn image(&self) -> Result<Option<StreamImage>> {
        Ok(None)
    }

    fn new_name(&mut self) -> Result<String> {
        bail!("the ssh provider cannot create nodes")
    }

    fn create(&mut self, _: &str) -> Result<NodeRecord> {
        bail!("the ssh provider cannot create nodes")
    }

    fn destroy(&mut self, name: &str) -> Result<()> {
        bail!("the ssh provider cannot discard {name}")
    }

    /// An existing host is never known to be gone: one that does not answer SSH may be
    /// rebooting into its new commit. A host that never comes back fails its step by
    /// `node-timeout`, naming the last thing seen.
    fn alive(&self, name: &str) -> bool {
        self.record.node(name).is_some()
    }

    fn power_on(&mut self, name: &str) -> Result<NodeRecord> {
        bail!("the ssh provider cannot power on {name}: its hosts are not cairn's machines")
    }
}
