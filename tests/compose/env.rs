//! A repo and its cache, and the commands the compose steps run on them (`cairn` with
//! `--repo`/`--cache`, the `ostree` CLI).

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// A repo and the cache its composes use.
pub struct Env {
    pub repo: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            repo: root.join(name).join("repo"),
            cache: root.join(name).join("cache"),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> StdCommand {
        let mut c = StdCommand::new(bin());
        c.args(args)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--cache")
            .arg(&self.cache)
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Compose and return the JSON results; panics with stderr on failure.
    pub fn compose(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["compose", "--json"];
        a.extend_from_slice(args);
        let out = self.cmd(&a).output().unwrap();
        assert!(
            out.status.success(),
            "cairn {a:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    /// Compose expecting failure; returns stderr.
    pub fn compose_fails(&self, args: &[&str]) -> String {
        let mut a = vec!["compose"];
        a.extend_from_slice(args);
        let out = self.cmd(&a).output().unwrap();
        assert!(!out.status.success(), "cairn {a:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn ostree(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ostree_bytes(args)).into_owned()
    }

    pub fn ostree_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = StdCommand::new("ostree")
            .arg(format!("--repo={}", self.repo.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn rev(&self, r: &str) -> String {
        self.ostree(&["rev-parse", r]).trim().to_string()
    }

    pub fn meta(&self, r: &str, key: &str) -> String {
        self.ostree(&["show", r, &format!("--print-metadata-key={key}")])
            .trim()
            .to_string()
    }

    /// `ostree fsck` finds no errors.
    pub fn assert_fsck_clean(&self) {
        let fsck = self.ostree(&["fsck"]);
        assert!(fsck.contains("no errors"), "{fsck}");
    }
}
