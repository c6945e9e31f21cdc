//! Where a fleet's nodes come from, behind one trait: `qemu` boots local VMs from the newest
//! image of a stream (detached, so that they outlive any orchestrator, as a cloud's machines
//! do), `ssh` reaches hosts that already exist. A cloud (an EC2 auto-scaling group, OpenStack)
//! is one more implementation of [`Provider`]; the rollout never sees which one it drives.
//!
//! What a provider knows of its nodes is kept in the fleet's directory (`fleet.json`), so that
//! a later process — `cairn rollout resume` after a crash — finds them again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::manifest::{Fleet, Provider as Kind};
use crate::base::Firmware;
use crate::image::artifacts::{self, StreamImage};
use crate::vm::detached::{self, Detached};
use crate::vm::seed;
use crate::vm::ssh::{Key, Ssh};
use crate::vm::{Console, Spec};

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

/// Everything the fleet's directory records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetRecord {
    pub name: String,
    pub nodes: Vec<NodeRecord>,
    /// The number the next new node gets (`NAME-N`).
    pub next: u32,
    /// The fleet manifest it was brought up from (commands that name no manifest use it).
    #[serde(default)]
    pub manifest: Option<PathBuf>,
}

impl FleetRecord {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("fleet.json")
    }

    /// The record in `dir`; an error naming it when the fleet was never brought up.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = Self::path(dir);
        let text = fs_err::read_to_string(&p).with_context(|| {
            format!(
                "no fleet in {} (cairn fleet up MANIFEST first)",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a fleet record", p.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::base::tmp::write_atomic(&Self::path(dir), &serde_json::to_vec_pretty(self)?)
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// What a rollout needs of the nodes' provider.
pub trait Provider {
    /// The fleet's nodes now.
    fn nodes(&self) -> Result<Vec<NodeRecord>>;
    /// Can it make new nodes (replace, surge)?
    fn can_create(&self) -> bool;
    /// A name for the next new node (reserved: the provider never gives it twice).
    fn new_name(&mut self) -> Result<String>;
    /// Make node `name` from the newest image and wait until it answers SSH; when it was made
    /// already (a resumed rollout) and still runs, just wait for it.
    fn create(&mut self, name: &str) -> Result<NodeRecord>;
    /// Discard a node for good.
    fn destroy(&mut self, name: &str) -> Result<()>;
    /// Does the node still exist (a VM that was killed, a host that vanished)?
    fn alive(&self, name: &str) -> bool;
}

/// Nodes from an image, as local QEMU VMs.
pub struct Qemu {
    pub dir: PathBuf,
    pub record: FleetRecord,
    /// The image manifest's stream name, and where its images are.
    pub stream: String,
    pub images: PathBuf,
    pub memory_mib: u64,
    pub service_port: u16,
    pub key: Key,
    pub boot_timeout: Duration,
}

impl Qemu {
    /// The qemu provider of `fleet`, its state in `dir` (an SSH key is made on first use).
    pub fn new(fleet: &Fleet, dir: &Path, images: &Path) -> Result<Self> {
        let Kind::Qemu {
            image, memory_mib, ..
        } = &fleet.provider
        else {
            bail!("internal: not a qemu fleet");
        };
        let m = crate::image::manifest::load(image)?;
        fs_err::create_dir_all(dir)?;
        let dir = std::path::absolute(dir).context("the fleet directory has no absolute path")?;
        let key = if dir.join("id_ed25519").is_file() {
            Key {
                private: dir.join("id_ed25519"),
                public: fs_err::read_to_string(dir.join("id_ed25519.pub"))?
                    .trim()
                    .to_string(),
            }
        } else {
            Key::generate(&dir)?
        };
        let record = FleetRecord::load(&dir).unwrap_or_else(|_| FleetRecord {
            name: fleet.name.clone(),
            ..Default::default()
        });
        Ok(Qemu {
            dir,
            record,
            stream: m.name,
            images: images.to_path_buf(),
            memory_mib: *memory_mib,
            service_port: fleet.service.port,
            key,
            boot_timeout: Duration::from_secs(900),
        })
    }

    /// The newest image of the stream.
    pub fn image(&self) -> Result<StreamImage> {
        artifacts::newest_image(&self.images, &self.stream, "qemu", "qcow2")
    }

    /// Boot a node named `name` from `img` (not waiting for it).
    fn start(&self, name: &str, img: &StreamImage) -> Result<NodeRecord> {
        let ndir = self.dir.join("nodes").join(name);
        if ndir.exists() {
            crate::base::tmp::remove_tree(&ndir)?;
        }
        fs_err::create_dir_all(&ndir)?;
        let seed_img = ndir.join("seed.img");
        seed::write(
            &seed::Provision {
                instance_id: format!("{}-{name}", self.record.name),
                hostname: name.to_string(),
                ssh_keys: vec![self.key.public.clone()],
            },
            &ndir,
            &seed_img,
        )?;
        let spec = Spec {
            info: crate::vm::image_info(&img.path)?,
            image: img.path.clone(),
            firmware: Firmware::Bios,
            memory_mib: self.memory_mib,
            cpus: 1,
            disk_size: None,
            seed: Some(seed_img),
            accel: crate::vm::accel(&ndir, &img.path),
            console: Console::Log(ndir.join("console.log")),
            write_image: false,
            forwards: vec![self.service_port],
        };
        let vm = detached::start(&spec, &ndir)?;
        let ssh = Ssh {
            host: "127.0.0.1".into(),
            port: vm.ssh_port(),
            key: self.key.private.clone(),
            user: "root".into(),
        };
        Ok(NodeRecord {
            name: name.to_string(),
            ssh,
            service: format!("127.0.0.1:{}", vm.host_port(self.service_port).unwrap_or(0)),
            vm: Some(vm),
            image_version: Some(img.version.clone()),
        })
    }

    /// Wait until a started node answers SSH (an error if its VM stops first).
    fn wait(&self, n: &NodeRecord) -> Result<()> {
        let deadline = Instant::now() + self.boot_timeout;
        let vm = n.vm.clone();
        n.ssh.wait(deadline, &mut || match &vm {
            Some(v) if !v.alive() => {
                bail!(
                    "the VM of {} stopped while booting (see {})",
                    n.name,
                    v.dir.display()
                )
            }
            _ => Ok(()),
        })
    }

    /// Boot `n` nodes from the newest image, record them, and wait until they answer SSH.
    pub fn up(&mut self, n: u32) -> Result<()> {
        let img = self.image()?;
        for _ in 0..n {
            let name = self.new_name()?;
            let rec = self.start(&name, &img)?;
            self.record.nodes.push(rec);
            self.record.save(&self.dir)?;
        }
        for rec in &self.record.nodes {
            self.wait(rec)?;
        }
        Ok(())
    }
}

impl Provider for Qemu {
    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(self.record.nodes.clone())
    }

    fn can_create(&self) -> bool {
        true
    }

    fn new_name(&mut self) -> Result<String> {
        self.record.next += 1;
        self.record.save(&self.dir)?;
        Ok(format!("{}-{}", self.record.name, self.record.next))
    }

    fn create(&mut self, name: &str) -> Result<NodeRecord> {
        if let Some(n) = self.record.node(name).cloned() {
            if self.alive(name) {
                self.wait(&n)?;
                return Ok(n);
            }
            self.record.nodes.retain(|x| x.name != name);
        }
        let img = self.image()?;
        let n = self.start(name, &img)?;
        self.record.nodes.push(n.clone());
        self.record.save(&self.dir)?;
        self.wait(&n)?;
        Ok(n)
    }

    fn destroy(&mut self, name: &str) -> Result<()> {
        if let Some(vm) = self.record.node(name).and_then(|n| n.vm.clone()) {
            vm.kill()?;
            let _ = crate::base::tmp::remove_tree(&vm.dir);
        }
        self.record.nodes.retain(|n| n.name != name);
        self.record.save(&self.dir)
    }

    fn alive(&self, name: &str) -> bool {
        self.record
            .node(name)
            .and_then(|n| n.vm.as_ref())
            .is_some_and(Detached::alive)
    }
}

/// Hosts that already exist, reached over SSH.
pub struct SshHosts {
    pub nodes: Vec<NodeRecord>,
}

impl SshHosts {
    pub fn new(fleet: &Fleet) -> Result<Self> {
        let Kind::Ssh { hosts } = &fleet.provider else {
            bail!("internal: not an ssh fleet");
        };
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        Ok(SshHosts {
            nodes: hosts
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
                .collect(),
        })
    }
}

impl Provider for SshHosts {
    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(self.nodes.clone())
    }

    fn can_create(&self) -> bool {
        false
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

    fn alive(&self, name: &str) -> bool {
        self.nodes.iter().find(|n| n.name == name).is_some_and(|n| {
            n.ssh
                .status("true", Duration::from_secs(15))
                .is_ok_and(|(c, _)| c == Some(0))
        })
    }
}
