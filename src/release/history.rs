//! `cairn log [REF]`: what is on a ref (its commit, who composed it, from what, its signatures,
//! where it was promoted from, its end of life) and every change the audit log records.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::audit::{self, Entry};
use super::promote::ref_commit;
use super::sign::{self, Signature};
use crate::base::text::short_hash;
use crate::store;

/// The commit a ref points at, as the log shows it.
#[derive(Debug, Serialize)]
pub struct RefState {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub commit: String,
    pub version: Option<String>,
    /// RFC 3339.
    pub timestamp: String,
    pub composed_by: Option<String>,
    pub treefile_git_revision: Option<String>,
    pub inputhash: Option<String>,
    pub promoted_from: Option<String>,
    pub promoted_from_commit: Option<String>,
    pub endoflife: Option<String>,
    pub endoflife_rebase: Option<String>,
    pub signatures: Vec<Signature>,
}

/// What `cairn log` prints.
#[derive(Debug, Serialize)]
pub struct History {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<RefState>,
    pub entries: Vec<Entry>,
}

/// The history of `ref_` (or of the whole repo). Unreadable log lines are skipped with a warning.
pub fn history(
    repo_path: &Path,
    ref_: Option<&str>,
    gpg_homedir: Option<&Path>,
) -> Result<History> {
    let (mut entries, warnings) = audit::read(repo_path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let state = match ref_ {
        None => None,
        Some(name) => {
            entries.retain(|e| e.concerns(name));
            let r = store::open(repo_path)?;
            match ref_commit(&r, repo_path, name) {
                Ok(c) => Some(ref_state(&r, name, &c, gpg_homedir)?),
                // A ref that is gone (or never was) still has a history to show.
                Err(e) if !entries.is_empty() => {
                    tracing::warn!("{e:#}");
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(History { state, entries })
}

fn ref_state(
    r: &ostree::Repo,
    name: &str,
    commit: &str,
    gpg_homedir: Option<&Path>,
) -> Result<RefState> {
    let info = store::load_commit(r, commit)?;
    // Checked against the release key when it is at hand; otherwise the signers are only named.
    let signer = sign::SignOpts {
        gpg_homedir: gpg_homedir.map(Path::to_path_buf),
        key_id: None,
    }
    .signer(r)
    .ok()
    .flatten();
    let m = info.meta;
    let composed_by = m
        .provenance
        .user
        .as_ref()
        .map(|u| format!("{u}@{}", m.provenance.host.as_deref().unwrap_or_default()));
    Ok(RefState {
        ref_: name.to_string(),
        commit: commit.to_string(),
        version: m.version,
        timestamp: crate::base::time::rfc3339(info.timestamp as i64),
        composed_by,
        treefile_git_revision: m.provenance.git_revision,
        inputhash: m.inputhash,
        promoted_from: m.promoted_from_ref,
        promoted_from_commit: m.promoted_from,
        endoflife: m.endoflife,
        endoflife_rebase: m.endoflife_rebase,
        signatures: sign::signatures(r, commit, signer.as_ref())?,
    })
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.state {
            writeln!(
                f,
                "{} → {} (version {}, {})",
                s.ref_,
                s.commit,
                s.version.as_deref().unwrap_or("-"),
                s.timestamp
            )?;
            if let Some(c) = &s.composed_by {
                let mut line = format!("  composed by {c}");
                if let Some(g) = &s.treefile_git_revision {
                    let _ = write!(line, " from treefile revision {g}");
                }
                writeln!(f, "{line}")?;
            }
            if let (Some(r), Some(c)) = (&s.promoted_from, &s.promoted_from_commit) {
                writeln!(f, "  promoted from {r} ({})", short_hash(c))?;
            }
            if let Some(m) = &s.endoflife {
                let to = s.endoflife_rebase.as_deref().unwrap_or("-");
                writeln!(f, "  END OF LIFE: {m} (nodes move to {to})")?;
            }
            if s.signatures.is_empty() {
                writeln!(f, "  not signed")?;
            }
            for g in &s.signatures {
                let v = if g.valid { "good" } else { "not checked" };
                writeln!(f, "  signed by {} ({v})", g.fingerprint)?;
            }
            if !self.entries.is_empty() {
                writeln!(f)?;
            }
        }
        for e in &self.entries {
            let commits = match (&e.old, &e.new) {
                (Some(o), Some(n)) if o != n => format!("{} → {}", short_hash(o), short_hash(n)),
                (None, Some(n)) => format!("new → {}", short_hash(n)),
                (_, Some(n)) => short_hash(n).to_string(),
                _ => String::new(),
            };
            let mut extra = String::new();
            for (k, v) in &e.detail {
                let v = match v {
                    // Checksums and fingerprints: the short form, as elsewhere in the line.
                    serde_json::Value::String(s)
                        if s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit()) =>
                    {
                        short_hash(s).to_string()
                    }
                    serde_json::Value::String(s) if s.contains(char::is_whitespace) => {
                        format!("{s:?}")
                    }
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) => format!("{} items", a.len()),
                    other => other.to_string(),
                };
                let _ = write!(extra, " {k}={v}");
            }
            writeln!(
                f,
                "{} {:<8} {:<30} {:<29} {:<8} {}@{}{}",
                e.time,
                e.command,
                e.ref_.as_deref().unwrap_or("-"),
                commits,
                e.version.as_deref().unwrap_or("-"),
                e.actor.user,
                e.actor.host,
                extra
            )?;
        }
        Ok(())
    }
}
