//! The world `fleet.rs` runs in: the shared release key and blessed commits, versions of the
//! app-example layer composed to its ref, the image and fleet manifests pointing at them, the
//! `cairn` commands the operator would type, a load through HAProxy and a watch on how many
//! nodes serve. The fleet's VMs and HAProxy are brought down on drop, also when a step fails.

use cairn::fleet::haproxy::RuntimeApi as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn::fleet::haproxy::Haproxy;
use cairn::fleet::load::{Load, LoadOpts, LoadReport};
use cairn::fleet::provider::FleetRecord;
use serde_json::Value;

pub use super::release_world::{bin, ok, text};

/// A free loopback port.
pub fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The two fleets of the same VMs that the steps drive, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    Qemu,
    Ssh,
}

impl Driven {
    /// The fleet's name, its directory under `--fleets`.
    pub fn name(self) -> &'static str {
        match self {
            Driven::Qemu => "it",
            Driven::Ssh => "it-ssh",
        }
    }
}

pub struct World {
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub images: PathBuf,
    pub fleets: PathBuf,
    pub gnupg: PathBuf,
    pub fingerprint: String,
    /// The fleet the steps drive now: the qemu fleet, or the ssh fleet of the same VMs.
    pub driven: Driven,
    /// The qemu fleet's manifest, and the ssh fleet's (written once the VMs run).
    pub qemu_fleet: PathBuf,
    pub ssh_fleet: PathBuf,
    pub image_manifest: PathBuf,
    pub lb_port: u16,
    pub ssh_lb_port: u16,
    pub repo_port: u16,
    pub up: bool,
    pub ssh_up: bool,
    /// The load through the driven fleet's HAProxy, from the fleet's coming up to the last
    /// scenario.
    pub load: Option<Load>,
    /// The fewest nodes the driven fleet's HAProxy saw serving.
    pub serving: Option<Serving>,
    /// What the loads and watches of the fleets driven before the current one saw: the fleet,
    /// the load's report, the fewest serving and when.
    pub seen: Vec<(String, LoadReport, usize, Vec<String>)>,
    /// A rollout running in the background between two steps, and the commits composed.
    pub running: Option<Child>,
    pub versions: Vec<Value>,
    /// Pull mode (`pull.rs`): the port the nodes' agents reach the lock service on (their
    /// agent.toml, in every image), the service and the repo server while they run.
    pub lock_port: u16,
    pub lock: Option<Child>,
    pub repo_server: Option<Child>,
    /// The pull steps' releases: the one the nodes were on, and the wave's.
    pub pull: Vec<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        for mut c in [
            self.running.take(),
            self.lock.take(),
            self.repo_server.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.ssh_up {
            let _ = self.cairn(&["fleet", "down", self.ssh_fleet.to_str().unwrap()]);
        }
        if self.up {
            let _ = self.cairn(&["fleet", "down", self.qemu_fleet.to_str().unwrap()]);
        }
    }
}

/// The app-example layer's files, by absolute path (variants of it live in the test's directory).
fn shipped(p: &str) -> String {
    super::shared::shipped(p).display().to_string()
}

impl World {
    /// The fleet's world in the shared one: its repo starts with the shared blessed commits.
    pub fn new() -> World {
        let sh = super::shared::get();
        let blessed = sh.blessed();
        let dir = sh.dir.join("fleet");
        let repo_port = port();
        let lb_port = port();
        let lock_port = port();
        std::fs::create_dir_all(&dir).unwrap();
        // Every image runs the update agent; it moves only once a graph is published and the
        // lock service answers (the pull-mode steps), never during the push rollouts.
        std::fs::write(
            dir.join("agent.toml"),
            format!(
                "[agent.timing]\nsteady-interval = \"10s\"\n[identity]\ngroup = \"app\"\n\
                 [updates]\nstrategy = \"fleet-lock\"\n\
                 [updates.fleet-lock]\nbase-url = \"http://10.0.2.2:{lock_port}/\"\n"
            ),
        )
        .unwrap();
        let image_manifest = dir.join("app.toml");
        std::fs::write(
            &image_manifest,
            format!(
                "name = \"fleet-app\"\nref = \"cairn/amd64/app-example\"\nosname = \"cairn\"\n\
                 kernel-arguments = [\"console=ttyS0,115200n8\", \"panic=10\", \"rd.shell=0\", \"rd.emergency=reboot\", \
                 \"rd.modules-load=virtio_pci,virtio_blk,virtio_scsi\"]\n\
                 trial-boots = 1\nhealth-deadline = \"10m\"\nsize = \"4G\"\n\
                 firmware = [\"bios\"]\nformats = [\"qcow2\"]\nprovisioning = \"nocloud\"\n\
                 remote-url = \"http://10.0.2.2:{repo_port}/\"\n\
                 remote-gpg-key-file = \"{}\"\nagent = \"agent.toml\"\n",
                sh.public.display()
            ),
        )
        .unwrap();
        let fleet = dir.join("fleet.toml");
        // A node starved of CPU by the VMs beside it (TCG, two cores, up to five VMs) can miss
        // a check or two while it serves: five failures in a row take it out, not two.
        std::fs::write(
            &fleet,
            format!(
                "name = \"{name}\"\n\
                 [provider]\ntype = \"qemu\"\nimage = \"app.toml\"\nnodes = 2\nmemory = \"1024M\"\n\
                 [service]\nport = 80\nhealthy-threshold = 2\nunhealthy-threshold = 5\nhealth-timeout = \"5s\"\n\
                 [load-balancer]\nlisten = \"127.0.0.1:{lb_port}\"\n\
                 [repo]\nlisten = \"127.0.0.1:{repo_port}\"\n\
                 [policy]\nmax-unavailable = 1\nmax-surge = 1\nbake-time = \"5s\"\n\
                 drain-timeout = \"20s\"\nnode-timeout = \"25m\"\n",
                name = Driven::Qemu.name()
            ),
        )
        .unwrap();
        World {
            ssh_fleet: dir.join("fleet-ssh.toml"),
            repo: blessed.fleet_repo.clone(),
            cache: dir.join("cache"),
            images: dir.join("images"),
            fleets: dir.join("fleets"),
            dir,
            gnupg: sh.key.clone(),
            fingerprint: sh.fpr.clone(),
            qemu_fleet: fleet,
            driven: Driven::Qemu,
            image_manifest,
            lb_port,
            ssh_lb_port: port(),
            repo_port,
            up: false,
            ssh_up: false,
            load: None,
            serving: None,
            seen: Vec::new(),
            running: None,
            versions: Vec::new(),
            lock_port,
            lock: None,
            repo_server: None,
            pull: Vec::new(),
        }
    }

    /// `cairn ARGS` with this world's repo, images, fleets and key.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).env("GNUPGHOME", &self.gnupg);
        if args
            .first()
            .is_some_and(|a| ["fleet", "rollout"].contains(a))
        {
            c.arg("--repo")
                .arg(&self.repo)
                .arg("--images")
                .arg(&self.images)
                .arg("--fleets")
                .arg(&self.fleets);
        }
        c
    }

    /// SIGKILL the qemu fleet's node `name` (the plug pulled).
    pub fn kill_vm(&self, name: &str) {
        let pid = self
            .record(Driven::Qemu)
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .and_then(|n| n.vm)
            .expect("the node's VM in the qemu fleet's record")
            .pid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    /// `cairn rollout start` of this fleet to the app-example ref, with `extra` flags.
    pub fn start(&self, extra: &[&str]) -> Command {
        let fleet = self.fleet().to_str().unwrap();
        let mut args = vec!["rollout", "start", fleet, "--to", "cairn/amd64/app-example"];
        args.extend_from_slice(extra);
        self.command(&args)
    }

    pub fn cairn(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Compose version `v` of the app-example layer to its ref, signed: the shipped layer plus
    /// `extra` treefile lines.
    pub fn compose(&self, v: &str, extra: &str) -> Value {
        let tf = self.dir.join(format!("app-{v}.toml"));
        std::fs::write(
            &tf,
            format!(
                "include = [\"{}\"]\nref = \"cairn/${{basearch}}/app-example\"\n\
                 gpg-key = \"{}\"\n\
                 units = [\"nginx.service\", \"cairn-version-page.service\"]\n\
                 {extra}\n\
                 [add-commit-metadata]\n\"cairn.layer\" = \"app-example\"\n\"cairn.test-version\" = \"{v}\"\n",
                shipped("treefiles/blessed.toml"),
                self.fingerprint,
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["compose", "--json"])
            .arg(&tf)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--cache")
            .arg(&self.cache)
            .env("GNUPGHOME", &self.gnupg)
            .output()
            .unwrap();
        let r: Value = serde_json::from_str(&ok(&format!("compose {v}"), out)).unwrap();
        r.as_array().unwrap().last().unwrap().clone()
    }

    /// The app layer's own packages and files, with `more` packages and `files` (source, dest).
    pub fn app_lines(more: &[&str], files: &[(&Path, &str)]) -> String {
        let mut pk = vec!["\"nginx-light\"".to_string()];
        pk.extend(more.iter().map(|p| format!("\"{p}\"")));
        let mut af = vec![
            (
                shipped("treefiles/files/cairn-version-page.service"),
                "/usr/lib/systemd/system/cairn-version-page.service".to_string(),
            ),
            (
                shipped("treefiles/files/cairn-version-page.sh"),
                "/usr/libexec/cairn/version-page".to_string(),
            ),
        ];
        af.extend(
            files
                .iter()
                .map(|(s, d)| (s.display().to_string(), d.to_string())),
        );
        let af: Vec<String> = af
            .iter()
            .map(|(s, d)| format!("  [\"{s}\", \"{d}\"],"))
            .collect();
        format!(
            "packages = [{}]\nadd-files = [\n{}\n]\n",
            pk.join(", "),
            af.join("\n")
        )
    }

    /// Build the image of the ref's current commit (what the qemu provider boots next).
    pub fn image(&self) {
        let out = Command::new(bin())
            .arg("image")
            .arg(&self.image_manifest)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--cache")
            .arg(&self.cache)
            .arg("--out")
            .arg(&self.images)
            .output()
            .unwrap();
        ok("image", out);
    }

    /// The driven fleet's manifest.
    pub fn fleet(&self) -> &Path {
        match self.driven {
            Driven::Qemu => &self.qemu_fleet,
            Driven::Ssh => &self.ssh_fleet,
        }
    }

    /// The driven fleet's rollout state file.
    pub fn rollout(&self) -> Value {
        let p = self.fleets.join(self.driven.name()).join("rollout.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|_| "null".into())).unwrap()
    }

    /// The driven fleet's service, through its HAProxy.
    pub fn url(&self) -> String {
        let port = match self.driven {
            Driven::Qemu => self.lb_port,
            Driven::Ssh => self.ssh_lb_port,
        };
        format!("http://127.0.0.1:{port}/")
    }

    /// Fleet `d`'s record while it is up (the qemu fleet's: its VMs, their SSH and service
    /// ports).
    pub fn record(&self, d: Driven) -> FleetRecord {
        let p = self.fleets.join(d.name()).join("fleet.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    /// An `ssh`-provider manifest of the qemu fleet's running VMs, handed over as existing
    /// hosts: their forwarded SSH and service ports, the fleet's SSH key, its own HAProxy, the
    /// same repo address (the one the images' remotes name) and policy.
    pub fn write_ssh_fleet(&self) {
        let mut hosts = String::new();
        for n in self.record(Driven::Qemu).nodes {
            hosts.push_str(&format!(
                "[[provider.hosts]]\nname = \"{}\"\naddress = \"{}\"\nssh-port = {}\n\
                 user = \"{}\"\nidentity = \"{}\"\nservice-address = \"{}\"\n",
                n.name,
                n.ssh.host,
                n.ssh.port,
                n.ssh.user,
                n.ssh.key.display(),
                n.service
            ));
        }
        std::fs::write(
            &self.ssh_fleet,
            format!(
                "name = \"{}\"\n[provider]\ntype = \"ssh\"\n{hosts}\
                 [service]\nport = 80\nhealthy-threshold = 2\nunhealthy-threshold = 5\nhealth-timeout = \"5s\"\n\
                 [load-balancer]\nlisten = \"127.0.0.1:{}\"\n\
                 [repo]\nlisten = \"127.0.0.1:{}\"\n\
                 [policy]\nmax-unavailable = 1\nbake-time = \"5s\"\n\
                 drain-timeout = \"20s\"\nnode-timeout = \"25m\"\n",
                Driven::Ssh.name(),
                self.ssh_lb_port,
                self.repo_port
            ),
        )
        .unwrap();
    }

    /// Drive fleet `d` from now on: the load and the watch of the one before stop (what they
    /// saw is kept), and new ones start on this fleet's HAProxy.
    pub fn drive(&mut self, d: Driven) {
        if let (Some(load), Some(watch)) = (self.load.take(), self.serving.take()) {
            let (fewest, lows) = watch.stop();
            self.seen
                .push((self.driven.name().to_string(), load.stop(), fewest, lows));
        }
        self.driven = d;
        self.load = Some(Load::start(&LoadOpts {
            url: self.url(),
            workers: 2,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
        }));
        self.serving = Some(Serving::watch(self.fleets.join(d.name()).join("haproxy")));
    }
}

/// How many of the fleet's nodes HAProxy sees serving (`UP`), sampled twice a second: the
/// fewest seen, and when.
pub struct Serving {
    stop: Arc<AtomicBool>,
    fewest: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Serving {
    pub fn watch(haproxy_dir: PathBuf) -> Serving {
        let stop = Arc::new(AtomicBool::new(false));
        let fewest = Arc::new(AtomicUsize::new(usize::MAX));
        let (s, f) = (Arc::clone(&stop), Arc::clone(&fewest));
        let thread = std::thread::spawn(move || {
            let lb = Haproxy { dir: haproxy_dir };
            let mut lows = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(servers) = lb.servers() {
                    let up = servers
                        .iter()
                        .filter(|x| x.status.starts_with("UP"))
                        .count();
                    if up < f.load(Ordering::Relaxed) {
                        f.store(up, Ordering::Relaxed);
                        let states: Vec<String> = servers
                            .iter()
                            .map(|x| format!("{} {}", x.name, x.status))
                            .collect();
                        lows.push(format!("{up} serving: {}", states.join(", ")));
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            lows
        });
        Serving {
            stop,
            fewest,
            thread: Some(thread),
        }
    }

    /// The fewest seen so far.
    pub fn fewest(&self) -> usize {
        self.fewest.load(Ordering::Relaxed)
    }

    /// Stop watching; the fewest, and what HAProxy showed each time a new low was seen.
    pub fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let lows = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (self.fewest(), lows)
    }
}
