//! The audit trail: one JSON line per change a release command made, appended to a log beside the
//! repo (`<repo>.audit.jsonl`: outside the served directory, since it names people and hosts).
//!
//! Each line is written with one `write` on a descriptor opened with `O_APPEND`, then `fsync`ed,
//! so lines from concurrent commands never interleave and a finished command's lines survive a
//! crash. A crash can still cut the last line short: the reader skips it with a warning, and the
//! next writer starts on a fresh line.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::cmd::Cmd;

/// Who ran a command, and where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub user: String,
    pub host: String,
}

impl Actor {
    /// This process's user (the one `sudo` ran it for, when it did) and host.
    pub fn current() -> Self {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let user = match std::env::var("SUDO_USER") {
            Ok(s) if uid.is_root() && !s.is_empty() && s != name => format!("{s} (sudo)"),
            _ => name,
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Self { user, host }
    }
}

/// The git revision of the checkout holding `path`, `-dirty` when tracked files changed; `None`
/// outside git (or without git).
pub fn git_revision(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let git = |args: &[&str]| {
        Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .run_status()
            .ok()
            .filter(|(st, _)| st.success())
            .map(|(_, out)| out.stdout.trim().to_string())
    };
    let rev = git(&["rev-parse", "--verify", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: Actor,
    /// compose, sign, promote, prune, retire.
    pub command: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// The commit the ref pointed at before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// The commit it points at now (the signed commit, for `sign`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputhash: Option<String>,
    /// What else the command says (the source of a promotion, a retirement's message, what a
    /// prune removed, the signing key…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    /// A line for `command` on `ref_`, now, by this process's actor.
    pub fn new(command: &str, ref_: Option<&str>) -> Self {
        Self {
            time: crate::base::time::rfc3339(chrono::Utc::now().timestamp()),
            actor: Actor::current(),
            command: command.to_string(),
            ref_: ref_.map(str::to_string),
            old: None,
            new: None,
            version: None,
            inputhash: None,
            detail: serde_json::Map::new(),
        }
    }

    /// Add a detail.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.detail.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    /// Does this line concern `ref_` (as its ref, a promotion's source, or a pruned history)?
    pub fn concerns(&self, ref_: &str) -> bool {
        self.ref_.as_deref() == Some(ref_)
            || self.detail.get("from").and_then(|v| v.as_str()) == Some(ref_)
            || self
                .detail
                .get("removed")
                .and_then(|v| v.as_array())
                .is_some_and(|a| a.iter().any(|r| r["ref"].as_str() == Some(ref_)))
    }
}

/// The log of the repo at `repo`: `<repo>.audit.jsonl` in the repo's parent directory.
pub fn path(repo: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(repo)
        .with_context(|| format!("{}: no absolute path", repo.display()))?;
    let abs = match abs.file_name() {
        Some(_) => abs,
        None => abs
            .canonicalize()
            .with_context(|| format!("resolving {}", repo.display()))?,
    };
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    Ok(abs.with_file_name(format!("{name}.audit.jsonl")))
}

/// Append `entries` to the log of `repo`, one write and one fsync per line.
pub fn append(repo: &Path, entries: &[Entry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let p = path(repo)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&p)
        .with_context(|| format!("opening the audit log {}", p.display()))?;
    // A line cut short by a crash: start on a fresh line, so this one stays whole.
    let len = f.metadata()?.len();
    let mut broken = false;
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        broken = last[0] != b'\n';
    }
    for (i, e) in entries.iter().enumerate() {
        let mut line = if broken && i == 0 {
            b"\n".to_vec()
        } else {
            Vec::new()
        };
        line.extend(serde_json::to_vec(e)?);
        line.push(b'\n');
        // O_APPEND: the kernel puts each write at the end, whole.
        let n = f
            .write(&line)
            .with_context(|| format!("appending to the audit log {}", p.display()))?;
        if n != line.len() {
            anyhow::bail!(
                "audit log {}: short write ({n} of {} bytes)",
                p.display(),
                line.len()
            );
        }
        f.sync_data()
            .with_context(|| format!("syncing the audit log {}", p.display()))?;
    }
    Ok(())
}

/// Every readable line of the log of `repo` (none when there is no log), and a warning for each
/// line that is not (a last line cut short by a crash, or damage).
pub fn read(repo: &Path) -> Result<(Vec<Entry>, Vec<String>)> {
    let p = path(repo)?;
    let text = match std::fs::read(&p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(l) {
            Ok(e) => entries.push(e),
            Err(_) if i + 1 == lines.len() && !complete => warnings.push(format!(
                "{}:{}: skipping a last line cut short (a command was interrupted while writing it)",
                p.display(),
                i + 1
            )),
            Err(e) => warnings.push(format!(
                "{}:{}: skipping an unreadable line ({e})",
                p.display(),
                i + 1
            )),
        }
    }
    Ok((entries, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_append_and_a_cut_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        assert_eq!(path(&repo).unwrap(), d.path().join("repo.audit.jsonl"));
        assert_eq!(
            path(&d.path().join("repo/")).unwrap(),
            d.path().join("repo.audit.jsonl")
        );
        let e1 = Entry::new("compose", Some("a/b")).with("treefile", "t.toml");
        append(&repo, std::slice::from_ref(&e1)).unwrap();
        append(&repo, &[Entry::new("sign", Some("a/b"))]).unwrap();
        let (v, w) = read(&repo).unwrap();
        assert_eq!(v.len(), 2);
        assert!(w.is_empty());
        assert_eq!(v[0], e1);
        // A crash in the middle of a line.
        let log = path(&repo).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"time\":\"2026-").unwrap();
        let (v, w) = read(&repo).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("cut short"), "{w:?}");
        // The next line starts fresh; the cut one is now damage in the middle, still skipped.
        append(&repo, &[Entry::new("prune", None)]).unwrap();
        let (v, w) = read(&repo).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].command, "prune");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn concerns_a_promotion_source_and_a_pruned_history() {
        let e = Entry::new("promote", Some("s/stable")).with("from", "s/testing");
        assert!(e.concerns("s/stable") && e.concerns("s/testing") && !e.concerns("x"));
        let p = Entry::new("prune", None).with(
            "removed",
            serde_json::json!([{"ref": "s/testing", "commit": "abc"}]),
        );
        assert!(p.concerns("s/testing") && !p.concerns("s/stable"));
    }
}
