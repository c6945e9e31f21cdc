//! The `qemu` provider: nodes booted as local QEMU VMs from the newest image of a stream,
//! detached (their own sessions) so that they outlive any orchestrator, as a cloud's machines
//! do; SSH and the service's port forwarded from loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{FleetRecord, NodeRecord, Provider};
use crate::base::Firmware;
use crate::fleet::dir::FleetDir;
use crate::fleet::manifest::Fleet;
use crate::image::artifacts::{self, StreamImage};
use crate::vm::detached::{self, Detached};
use crate::vm::seed;
use crate::vm::ssh::{Key, Ssh};
use crate::vm::{Console, Spec};

/// What the manifest's `[provider]` says of qemu nodes.
pub struct Settings {
    /// The image manifest (its stream metadata names the newest image).
    pub image_manifest: PathBuf,
    pub nodes: u32,
    pub memory_mib: u64,
}

/// Nodes from an image, as local QEMU VMs.
pub struct Qemu {
    dir: FleetDir,
    record: FleetRecord,
    /// The image manifest's stream name, and where its images are.
    stream: String,
    images: PathBuf,
    nodes: u32,
    memory_mib: u64,
    service_port: u16,
    boot_timeout: Duration,
}

impl Qemu {
    /// The qemu provider of `fleet`, its state in `dir` (nothing is written until a node is
    /// made).
    pub fn new(fleet: &Fleet, s: &Settings, dir: &FleetDir, images: &Path) -> Result<Self> {
        let m = crate::image::manifest::load(&s.image_manifest)?;
        let record = match FleetRecord::find(dir)? {
            Some(r) => r,
            None => FleetRecord::new(fleet)?,
        };
        Ok(Qemu {
            dir: dir.clone(),
            record,
            stream: m.name,
            images: images.to_path_buf(),
            nodes: s.nodes,
            memory_mib: s.memory_mib,
            service_port: fleet.service.port,
            boot_timeout: Duration::from_secs(900),
        })
    }

    /// The newest image of the stream.
    fn newest(&self) -> Result<StreamImage> {
        artifacts::newest_image(&self.images, &self.stream, "qemu", "qcow2")
    }

    /// The nodes' SSH key, made on first use.
    fn key(&self) -> Result<Key> {
        let private = self.dir.ssh_key();
        if !private.is_file() {
            self.dir.create()?;
            return Key::generate(self.dir.root());
        }
        let public = fs_err::read_to_string(private.with_extension("pub"))?;
        Ok(Key {
            private,
            public: public.trim().to_string(),
        })
    }

    /// Boot a node named `name` from `img` (not waiting for it).
    fn start(&self, name: &str, img: &StreamImage, key: &Key) -> Result<NodeRecord> {
        let ndir = self.dir.node(name);
        if ndir.exists() {
            crate::base::tmp::remove_tree(&ndir)?;
        }
        fs_err::create_dir_all(&ndir)?;
        let seed_img = ndir.join("seed.img");
        seed::write(
            &seed::Provision {
                instance_id: format!("{}-{name}", self.record.name),
                hostname: name.to_string(),
                ssh_keys: vec![key.public.clone()],
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
            key: key.private.clone(),
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
}

impl Provider for Qemu {
    /// Boot the manifest's nodes from the newest image, write the fleet's record once they are
    /// all started, then wait until they answer SSH.
    fn up(&mut self) -> Result<Vec<NodeRecord>> {
        let img = self.newest()?;
        let key = self.key()?;
        for _ in 0..self.nodes {
            self.record.next += 1;
            let name = format!("{}-{}", self.record.name, self.record.next);
            let rec = match self.start(&name, &img, &key) {
                Ok(rec) => rec,
                Err(e) => {
                    // The record names what runs already, for `cairn fleet down`.
                    self.record.save(&self.dir)?;
                    return Err(e);
                }
            };
            self.record.nodes.push(rec);
        }
        self.record.save(&self.dir)?;
        for rec in &self.record.nodes {
            self.wait(rec)?;
        }
        Ok(self.record.nodes.clone())
    }

    fn down(&mut self) -> Result<()> {
        for n in &self.record.nodes {
            if let Some(vm) = &n.vm {
                vm.kill()?;
            }
        }
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(self.record.nodes.clone())
    }

    fn image(&self) -> Result<Option<StreamImage>> {
        self.newest().map(Some)
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
        let img = self.newest()?;
        let n = self.start(name, &img, &self.key()?)?;
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

    fn power_on(&mut self, name: &str) -> Result<NodeRecord> {
        let Some(vm) = self.record.node(name).and_then(|n| n.vm.clone()) else {
            bail!("{}: no node {name} in the fleet", self.record.name);
        };
        let vm = vm
            .power_on()
            .with_context(|| format!("powering on {name}"))?;
        let rec = self
            .record
            .nodes
            .iter_mut()
            .find(|r| r.name == name)
            .context("internal: the node left the record")?;
        rec.vm = Some(vm);
        let n = rec.clone();
        self.record.save(&self.dir)?;
        self.wait(&n)?;
        Ok(n)
    }

    fn alive(&self, name: &str) -> bool {
        self.record
            .node(name)
            .and_then(|n| n.vm.as_ref())
            .is_some_and(Detached::alive)
    }
}
