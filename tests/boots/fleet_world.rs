//! The world `fleet.rs` runs in: a signing key, versions of the app-example layer composed
//! to its ref, the image and fleet manifests pointing at them, and the `cairn` commands the
//! operator would type. Everything lives in one temporary directory; the fleet's VMs and
//! HAProxy are brought down on drop, also when a step panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

pub struct World {
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub images: PathBuf,
    pub fleets: PathBuf,
    pub gnupg: PathBuf,
    pub fingerprint: String,
    pub fleet: PathBuf,
    pub image_manifest: PathBuf,
    pub lb_port: u16,
    pub up: bool,
}

impl Drop for World {
    fn drop(&mut self) {
        if self.up {
            let _ = self.cairn(&["fleet", "down", self.fleet.to_str().unwrap()]);
        }
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.gnupg)
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// The app-example layer's files, by absolute path (variants of it live in the test's directory).
fn shipped(p: &str) -> String {
    std::path::absolute(p).unwrap().display().to_string()
}

impl World {
    pub fn new(dir: &Path) -> World {
        // A short GPG home: gpg-agent's socket path must stay short.
        let keys = PathBuf::from(format!("/tmp/cairn-fleet-gpg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&keys);
        let out = Command::new(bin())
            .args(["key", "new", "--json", "--name", "cairn fleet test"])
            .arg(&keys)
            .output()
            .unwrap();
        let k: Value = serde_json::from_str(&ok("key new", out)).unwrap();
        let fingerprint = k["fingerprint"].as_str().unwrap().to_string();
        let public_key = PathBuf::from(k["public_key"].as_str().unwrap());
        let homedir = PathBuf::from(k["homedir"].as_str().unwrap());
        let repo_port = port();
        let lb_port = port();
        let image_manifest = dir.join("app.toml");
        std::fs::write(
            &image_manifest,
            format!(
                "name = \"fleet-app\"\nref = \"cairn/amd64/app-example\"\nosname = \"cairn\"\n\
                 kernel-arguments = [\"console=ttyS0,115200n8\", \"panic=10\", \"rd.shell=0\", \"rd.emergency=reboot\", \
                 \"rd.modules-load=virtio_pci,virtio_blk,virtio_scsi\"]\n\
                 trial-boots = 1\nhealth-deadline = \"5m\"\nsize = \"4G\"\n\
                 firmware = [\"bios\"]\nformats = [\"qcow2\"]\nprovisioning = \"nocloud\"\n\
                 remote-url = \"http://10.0.2.2:{repo_port}/\"\n\
                 remote-gpg-key-file = \"{}\"\n",
                public_key.display()
            ),
        )
        .unwrap();
        let fleet = dir.join("fleet.toml");
        std::fs::write(
            &fleet,
            format!(
                "name = \"it\"\n\
                 [provider]\ntype = \"qemu\"\nimage = \"app.toml\"\nnodes = 3\nmemory = \"1024M\"\n\
                 [service]\nport = 80\nhealthy-threshold = 2\n\
                 [load-balancer]\nlisten = \"127.0.0.1:{lb_port}\"\n\
                 [repo]\nlisten = \"127.0.0.1:{repo_port}\"\n\
                 [policy]\nmax-unavailable = 1\nmax-surge = 1\nbake-time = \"5s\"\n\
                 drain-timeout = \"20s\"\nnode-timeout = \"25m\"\n"
            ),
        )
        .unwrap();
        World {
            repo: dir.join("repo"),
            cache: dir.join("cache"),
            images: dir.join("images"),
            fleets: dir.join("fleets"),
            dir: dir.to_path_buf(),
            gnupg: homedir,
            fingerprint,
            fleet,
            image_manifest,
            lb_port,
            up: false,
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

    /// `cairn rollout start` of this fleet to the app-example ref, with `extra` flags.
    pub fn start(&self, extra: &[&str]) -> Command {
        let fleet = self.fleet.to_str().unwrap();
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

    /// The rollout's state file.
    pub fn rollout(&self) -> Value {
        let p = self.fleets.join("it/rollout.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|_| "null".into())).unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.lb_port)
    }
}
