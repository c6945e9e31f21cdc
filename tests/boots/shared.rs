//! What the boot tests' worlds share, made once: a directory under `/var/tmp`, the release key
//! (and another key nodes do not trust), and the shipped blessed host composed and signed. The
//! vm-test world builds on its repo; the fleet world starts from a copy of its refs, taken
//! before the vm-test world moves them (its node stages promote over `cairn/amd64/blessed`), so
//! that its app layer's parents are the same commits and are not composed twice.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::release_world::{new_key, ok, World};

pub struct Shared {
    pub dir: PathBuf,
    /// The release key's GPG home, fingerprint and public key file.
    pub key: PathBuf,
    pub fpr: String,
    pub public: PathBuf,
    /// A key no node trusts.
    pub other: PathBuf,
    pub other_fpr: String,
    blessed: OnceLock<Blessed>,
}

/// The blessed host, composed and signed: its repo and cache, and the copy for the fleet.
pub struct Blessed {
    pub repo: PathBuf,
    pub cache: PathBuf,
    /// An archive repo with `cairn/amd64/base` and `cairn/amd64/blessed` as composed.
    pub fleet_repo: PathBuf,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

pub fn shipped(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shared world, made on first use.
pub fn get() -> &'static Shared {
    SHARED.get_or_init(|| {
        let dir = PathBuf::from(format!("/var/tmp/cairn-boots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // GPG homes under /tmp: gpg-agent's socket path must stay short.
        let keys = PathBuf::from(format!("/tmp/cairn-boots-gpg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&keys);
        let (key, other) = (keys.join("k"), keys.join("o"));
        let (fpr, public) = new_key(&key, "cairn boot tests release key");
        let (other_fpr, _) = new_key(&other, "another key");
        Shared {
            dir,
            key,
            fpr,
            public,
            other,
            other_fpr,
            blessed: OnceLock::new(),
        }
    })
}

impl Shared {
    /// A release world on the shared repo (no server of its own).
    pub fn world(&self) -> World {
        let b = self.blessed();
        World {
            work: self.dir.clone(),
            repo: b.repo.clone(),
            cache: b.cache.clone(),
            homes: vec![self.key.clone(), self.other.clone()],
            server: None,
        }
    }

    /// The shipped blessed host, composed and signed once (the first caller waits for it).
    pub fn blessed(&self) -> &Blessed {
        self.blessed.get_or_init(|| {
            let b = Blessed {
                repo: self.dir.join("repo"),
                cache: self.dir.join("cache"),
                fleet_repo: self.dir.join("fleet/repo"),
            };
            let cairn = |args: &[&str]| {
                let out = Command::new(super::release_world::bin())
                    .args(args)
                    .arg("--repo")
                    .arg(&b.repo)
                    .env("GNUPGHOME", &self.key)
                    .output()
                    .unwrap();
                ok(&format!("cairn {args:?}"), out)
            };
            let tf = shipped("treefiles/blessed.toml");
            cairn(&[
                "compose",
                tf.to_str().unwrap(),
                "--cache",
                b.cache.to_str().unwrap(),
            ]);
            cairn(&["sign", "cairn/amd64/blessed", "--key-id", &self.fpr]);
            let ostree = |repo: &Path, args: &[&str]| {
                let out = Command::new("ostree")
                    .arg(format!("--repo={}", repo.display()))
                    .args(args)
                    .output()
                    .unwrap();
                ok(&format!("ostree {args:?}"), out)
            };
            std::fs::create_dir_all(&b.fleet_repo).unwrap();
            ostree(&b.fleet_repo, &["init", "--mode=archive"]);
            let from = b.repo.to_str().unwrap();
            ostree(
                &b.fleet_repo,
                &[
                    "pull-local",
                    from,
                    "cairn/amd64/base",
                    "cairn/amd64/blessed",
                ],
            );
            b
        })
    }

    /// Remove what the worlds left: the directory and the keys' agents.
    pub fn cleanup() {
        if let Some(s) = SHARED.get() {
            for h in [&s.key, &s.other] {
                let _ = Command::new("gpgconf")
                    .arg("--homedir")
                    .arg(h)
                    .args(["--kill", "gpg-agent"])
                    .status();
            }
            let _ = std::fs::remove_dir_all(&s.dir);
            if let Some(k) = s.key.parent() {
                let _ = std::fs::remove_dir_all(k);
            }
        }
    }
}
