//! The world `tests/release` runs in (the boot tests build on it too): the repo, its keys, the
//! server it starts, client repos made with the `ostree` CLI, and what a refused command must
//! leave alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A program's output, which must be a success.
pub fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A program's stderr, which must be a failure.
pub fn fails(what: &str, out: Output) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// The test's repo, its keys and the processes it started (stopped on drop, also on panic).
pub struct World {
    pub work: PathBuf,
    pub repo: PathBuf,
    pub cache: PathBuf,
    /// GPG homes under /tmp: gpg-agent's socket path must stay short.
    pub homes: Vec<PathBuf>,
    pub server: Option<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for h in &self.homes {
            let _ = Command::new("gpgconf")
                .arg("--homedir")
                .arg(h)
                .args(["--kill", "gpg-agent"])
                .status();
        }
    }
}

impl World {
    /// `cairn ARGS --repo REPO` with the release key's home in the environment.
    pub fn cairn(&self, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("--repo")
            .arg(&self.repo)
            .env("GNUPGHOME", &self.homes[0])
            .env_remove("SOURCE_DATE_EPOCH");
        c.output().unwrap()
    }

    pub fn compose(&self, treefile: &Path) -> Vec<Value> {
        let out = self.cairn(&[
            "compose",
            "--json",
            treefile.to_str().unwrap(),
            "--cache",
            self.cache.to_str().unwrap(),
        ]);
        serde_json::from_str(&ok("compose", out)).unwrap()
    }

    pub fn ostree(&self, repo: &Path, args: &[&str]) -> Output {
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn rev(&self, r: &str) -> String {
        ok("rev-parse", self.ostree(&self.repo, &["rev-parse", r]))
            .trim()
            .to_string()
    }

    pub fn meta(&self, repo: &Path, r: &str, key: &str) -> String {
        let out = self.ostree(repo, &["show", r, &format!("--print-metadata-key={key}")]);
        ok("show", out).trim().trim_matches('\'').to_string()
    }

    /// Everything a failed command must leave alone: refs, commits, summary, deltas, the log.
    pub fn snapshot(&self) -> String {
        let refs = ok("refs", self.ostree(&self.repo, &["refs"]));
        let mut s = String::new();
        for r in refs.lines() {
            s += &format!("{r} {}\n", self.rev(r));
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg("find objects deltas -type f | sort; sha256sum config summary summary.sig")
            .current_dir(&self.repo)
            .output()
            .unwrap();
        s += &text(&out.stdout);
        s += &std::fs::read_to_string(self.log_path()).unwrap_or_default();
        s
    }

    pub fn log_path(&self) -> PathBuf {
        self.work.join("repo.audit.jsonl")
    }

    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Bad input: an error naming `want`, and nothing changed.
    pub fn refused(&self, args: &[&str], want: &str) {
        let before = self.snapshot();
        let err = fails(&format!("cairn {args:?}"), self.cairn(args));
        assert!(err.contains(want), "cairn {args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
        assert_eq!(self.snapshot(), before, "cairn {args:?} changed something");
    }

    /// A client repo in `mode` (a node's is bare: only those use deltas) that trusts `key` only,
    /// for the served repo's URL; its remote is `s`.
    pub fn client(&self, name: &str, mode: &str, url: &str, key: &Path) -> PathBuf {
        let c = self.work.join(name);
        ok(
            "init",
            self.ostree(&c, &["init", &format!("--mode={mode}")]),
        );
        ok(
            "remote add",
            self.ostree(
                &c,
                &[
                    "remote",
                    "add",
                    "--set=gpg-verify=true",
                    "--set=gpg-verify-summary=true",
                    &format!("--gpg-import={}", key.display()),
                    "s",
                    url,
                ],
            ),
        );
        c
    }

    pub fn pull(&self, client: &Path, what: &str) -> Output {
        self.ostree(client, &["pull", "s", what])
    }
}

/// `cairn key new` into `home`; returns (fingerprint, public key file).
pub fn new_key(home: &Path, name: &str) -> (String, PathBuf) {
    let out = Command::new(bin())
        .args(["key", "new", "--json", "--name", name])
        .arg(home)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok("key new", out)).unwrap();
    (
        v["fingerprint"].as_str().unwrap().to_string(),
        PathBuf::from(v["public_key"].as_str().unwrap()),
    )
}

/// The tiny treefile layered on the shipped base, in a git checkout of its own.
pub fn write_treefile(dir: &Path, fpr: &str, packages: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/base.toml");
    let tf = dir.join("rel.toml");
    std::fs::write(
        &tf,
        format!(
            "include = [\"{}\"]\nref = \"test/amd64/rel\"\ngpg-key = \"{fpr}\"\npackages = [{packages}]\n",
            base.display()
        ),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        ok(&format!("git {args:?}"), out)
    };
    if !dir.join(".git").exists() {
        git(&["init", "-q"]);
    }
    git(&["add", "rel.toml"]);
    git(&["commit", "-q", "-m", &format!("packages: [{packages}]")]);
    tf
}
