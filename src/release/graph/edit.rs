//! Changing a ref's update graph: `cairn rollout plan|pause|resume|barrier|deadend|recall`.
//!
//! Each change loads the graph (or starts an empty one), applies itself to a copy, and checks the
//! result; only then are the JSON and its detached signature by the release key written (each
//! through a temporary file in the same directory and a rename) and one line appended to the
//! repo's audit log. A change that cannot apply writes nothing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::{paths, Graph, Reason, Recall, Release, Rollout};
use crate::release::audit::{self, Entry};
use crate::release::sign::SignOpts;

/// One change to a graph.
#[derive(Debug, Clone)]
pub enum Change {
    /// List a commit (default: the ref's) as a release, with a rollout from `start`.
    Plan {
        rev: Option<String>,
        start: i64,
        start_percentage: f64,
        duration_minutes: u64,
    },
    /// Freeze the wavefront of a release (default: the newest one still rolling out).
    Pause {
        version: Option<String>,
    },
    /// Let a paused wavefront move on from where it stopped.
    Resume {
        version: Option<String>,
    },
    Barrier {
        version: String,
        reason: String,
    },
    Deadend {
        version: String,
        reason: String,
    },
    /// Nodes on `version` go back to `to`.
    Recall {
        version: String,
        to: String,
        reason: String,
    },
}

impl Change {
    /// The audit log's command name.
    fn command(&self) -> &'static str {
        match self {
            Change::Plan { .. } => "rollout-plan",
            Change::Pause { .. } => "rollout-pause",
            Change::Resume { .. } => "rollout-resume",
            Change::Barrier { .. } => "rollout-barrier",
            Change::Deadend { .. } => "rollout-deadend",
            Change::Recall { .. } => "rollout-recall",
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Edited {
    pub graph: Graph,
    pub path: PathBuf,
    pub version: String,
    pub summary: String,
    pub signed_by: String,
}

/// The graph of `stream` in the repo directory, or an empty one when it has none yet.
pub fn load(repo: &Path, stream: &str) -> Result<Graph> {
    let (json, _) = paths(repo, stream);
    match fs_err::read(&json) {
        Ok(data) => super::parse(&data, &json.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Graph::new(stream)),
        Err(e) => Err(e.into()),
    }
}

/// Apply `change` to `stream`'s graph in the repo at `repo_path`, sign it and audit it.
pub fn apply(
    repo_path: &Path,
    stream: &str,
    change: &Change,
    sign: &SignOpts,
    now: i64,
) -> Result<Edited> {
    if !crate::store::valid_ref(stream) {
        bail!("{stream:?} is not an OSTree ref");
    }
    let repo = crate::store::open(repo_path)?;
    let signer = sign.required(&repo)?;
    let mut g = load(repo_path, stream)?;
    let (version, summary) = change_graph(&mut g, &repo, stream, change, now)?;
    g.metadata.serial += 1;
    g.metadata.last_modified = crate::base::time::rfc3339(now);
    g.check()
        .with_context(|| format!("the graph of {stream} after the change"))?;
    let (json, sig) = paths(repo_path, stream);
    write_signed(&g, &json, &sig, &signer)?;
    let mut e = Entry::new(change.command(), Some(stream))
        .with("change", &summary)
        .with("serial", g.metadata.serial)
        .with("signed_by", &signer.key.fingerprint);
    e.version = Some(version.clone());
    audit::append(repo_path, &[e])?;
    Ok(Edited {
        graph: g,
        path: json,
        version,
        summary,
        signed_by: signer.key.fingerprint,
    })
}

/// Apply the change to `g`: the version it concerns and what it did, in words.
fn change_graph(
    g: &mut Graph,
    repo: &ostree::Repo,
    stream: &str,
    change: &Change,
    now: i64,
) -> Result<(String, String)> {
    let when = crate::base::time::rfc3339;
    Ok(match change {
        Change::Plan {
            rev,
            start,
            start_percentage,
            duration_minutes,
        } => {
            let commit = crate::store::resolve(repo, rev.as_deref().unwrap_or(stream))?;
            let version = crate::store::load_commit(repo, &commit)?
                .meta
                .version
                .ok_or_else(|| anyhow!("commit {commit} has no version to list it by"))?;
            let rollout = Rollout {
                start_epoch: *start,
                start_percentage: *start_percentage,
                duration_minutes: *duration_minutes,
                paused_epoch: None,
            };
            match g.releases.iter_mut().find(|r| r.commit == commit) {
                Some(r) => r.metadata.rollout = Some(rollout),
                None => {
                    if g.release(&version).is_some() {
                        bail!("version {version} is listed with another commit than {commit}");
                    }
                    let mut r = Release {
                        version: version.clone(),
                        commit,
                        metadata: Default::default(),
                    };
                    r.metadata.rollout = Some(rollout);
                    g.releases.push(r);
                }
            }
            let s = format!(
                "{version} rolls out from {} at {:.0}% to every node over {duration_minutes} min",
                when(*start),
                start_percentage * 100.0
            );
            (version, s)
        }
        Change::Pause { version } => {
            let r = rolling(g, version.as_deref(), now, false)?;
            let ro = r
                .metadata
                .rollout
                .as_mut()
                .expect("rolling() returns a rollout");
            ro.paused_epoch = Some(now);
            let at = ro.throttle(now).unwrap_or(0.0);
            (
                r.version.clone(),
                format!("{} paused at {:.1}%", r.version, at * 100.0),
            )
        }
        Change::Resume { version } => {
            let r = rolling(g, version.as_deref(), now, true)?;
            let ro = r
                .metadata
                .rollout
                .as_mut()
                .expect("rolling() returns a rollout");
            if let Some(p) = ro.paused_epoch.take() {
                ro.start_epoch += (now - p.max(ro.start_epoch)).max(0);
            }
            (r.version.clone(), format!("{} resumed", r.version))
        }
        Change::Barrier { version, reason } => {
            let r = listed(g, version)?;
            r.metadata.barrier = Some(Reason {
                reason: reason.clone(),
            });
            (version.clone(), format!("{version} is a barrier: {reason}"))
        }
        Change::Deadend { version, reason } => {
            let r = listed(g, version)?;
            r.metadata.deadend = Some(Reason {
                reason: reason.clone(),
            });
            (
                version.clone(),
                format!("{version} is a dead end: {reason}"),
            )
        }
        Change::Recall {
            version,
            to,
            reason,
        } => {
            if g.release(to).is_none() {
                bail!("cannot recall to {to}: it is not a release of {stream}");
            }
            let r = listed(g, version)?;
            r.metadata.recall = Some(Recall {
                reason: reason.clone(),
                to: to.clone(),
            });
            (
                version.clone(),
                format!("{version} is recalled to {to}: {reason}"),
            )
        }
    })
}

fn listed<'a>(g: &'a mut Graph, version: &str) -> Result<&'a mut Release> {
    let stream = g.stream.clone();
    let known: Vec<String> = g.releases.iter().map(|r| r.version.clone()).collect();
    g.releases
        .iter_mut()
        .find(|r| r.version == version)
        .ok_or_else(|| anyhow!("{version} is not a release of {stream} (listed: {known:?})"))
}

/// The release a pause or resume concerns: the named one, else the newest whose rollout is
/// unfinished (for a pause) or paused (for a resume).
fn rolling<'a>(
    g: &'a mut Graph,
    version: Option<&str>,
    now: i64,
    paused: bool,
) -> Result<&'a mut Release> {
    let stream = g.stream.clone();
    let fits = |r: &Release| match &r.metadata.rollout {
        Some(ro) if paused => ro.paused_epoch.is_some(),
        Some(ro) => ro.paused_epoch.is_none() && ro.throttle(now).is_none_or(|t| t < 1.0),
        None => false,
    };
    let what = if paused { "paused" } else { "rolling out" };
    match version {
        Some(v) => {
            let r = listed(g, v)?;
            if !fits(r) {
                bail!("{v} of {stream} is not {what}");
            }
            Ok(r)
        }
        None => g
            .releases
            .iter_mut()
            .rev()
            .find(|r| fits(r))
            .ok_or_else(|| anyhow!("no release of {stream} is {what}")),
    }
}

/// Write the graph and its signature, each through a temporary file and a rename.
fn write_signed(
    g: &Graph,
    json: &Path,
    sig: &Path,
    signer: &crate::release::sign::Signer,
) -> Result<()> {
    let dir = json.parent().context("the graph's directory")?;
    fs_err::create_dir_all(dir)?;
    let mut text = serde_json::to_vec_pretty(g)?;
    text.push(b'\n');
    let tmp_json = tempfile::Builder::new()
        .prefix(".graph-")
        .tempfile_in(dir)?;
    fs_err::write(tmp_json.path(), &text)?;
    let tmp_sig = tempfile::Builder::new().prefix(".sig-").tempfile_in(dir)?;
    signer.sign_detached(tmp_json.path(), tmp_sig.path())?;
    use std::os::unix::fs::PermissionsExt;
    for t in [&tmp_json, &tmp_sig] {
        fs_err::set_permissions(t.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    tmp_json
        .persist(json)
        .with_context(|| format!("writing {}", json.display()))?;
    tmp_sig
        .persist(sig)
        .with_context(|| format!("writing {}", sig.display()))?;
    Ok(())
}
