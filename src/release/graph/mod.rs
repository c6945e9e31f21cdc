//! The update graph of a ref: which of its releases a node may move to, and when. It has the
//! shape of Fedora CoreOS's `updates/<stream>.json`: the releases in order, oldest first, each
//! with its version, its commit and its metadata, which says
//!
//! - `rollout` (`start_epoch`, `start_percentage`, `duration_minutes`): the release opens to a
//!   node once the wavefront passes the node's wariness (Cincinnati's rule); `paused_epoch`
//!   freezes the wavefront where it was (cairn's);
//! - `barrier`: a node below it goes to it first, and only then further;
//! - `deadend`: a node on it is told why (at login) and moves no further; it is not a target;
//! - `recall` (cairn's): a node on it moves back to the named good release, through the same
//!   lock, whatever its wariness.
//!
//! A release without `rollout` is listed but not planned: no node moves to it. A node on a commit
//! the graph does not list moves nowhere (list the release it runs first). The graph is
//! served beside the repo as `updates/<ref>.json` with a detached GPG signature by the release
//! key (`.json.sig`, [`edit`] writes both), and a node reads it only when the key its remote
//! trusts signed it ([`verify`]); its `serial` only grows, so a node refuses an older one.
//! [`Graph::next`] is the pure rule a node's agent follows.

pub mod edit;

use anyhow::{bail, Context, Result};
use ostree::{gio, glib};
use serde::{Deserialize, Serialize};

/// The version of the graph's schema.
pub const SCHEMA: u32 = 1;

/// A ref's update graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub schema: u32,
    /// The ref (FCOS calls it the stream).
    pub stream: String,
    pub metadata: GraphMeta,
    /// Oldest first.
    pub releases: Vec<Release>,
}

/// When the graph last changed, and its serial (one more at every change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphMeta {
    #[serde(rename = "last-modified")]
    pub last_modified: String,
    pub serial: u64,
}

/// One release: a commit of the ref.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: String,
    pub commit: String,
    #[serde(default)]
    pub metadata: ReleaseMeta,
}

/// What the graph says of a release (the keys of FCOS's, and `recall`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadend: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<Recall>,
}

/// A release's wavefront.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub start_epoch: i64,
    /// The share of nodes it opens to at `start_epoch` (0.0 to 1.0).
    pub start_percentage: f64,
    /// From `start_percentage` to every node.
    pub duration_minutes: u64,
    /// Set while the rollout is paused: the wavefront stays where it was then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_epoch: Option<i64>,
}

/// Why a release is a barrier or a dead end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: String,
}

/// A recalled release: its nodes go back to `to` (a listed version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recall {
    pub reason: String,
    pub to: String,
}

impl Rollout {
    /// The wavefront at `now`: the wariness up to which nodes may take the release (`None`
    /// before it starts). Cincinnati's: start + (1 − start) × elapsed / duration, at most 1.
    pub fn throttle(&self, now: i64) -> Option<f64> {
        let t = self.paused_epoch.map_or(now, |p| p.min(now));
        if t < self.start_epoch {
            return None;
        }
        let total = self.duration_minutes as f64 * 60.0;
        if total <= 0.0 {
            return Some(1.0);
        }
        let share = (t - self.start_epoch) as f64 / total;
        Some((self.start_percentage + (1.0 - self.start_percentage) * share).min(1.0))
    }

    /// Is the release open to a node of this wariness at `now`?
    pub fn open_to(&self, wariness: f64, now: i64) -> bool {
        self.throttle(now).is_some_and(|t| wariness <= t)
    }
}

/// What a node should do, by the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<'a> {
    /// Nothing to move to now.
    Stay { why: String },
    /// Move to this release.
    Update { to: &'a Release, why: String },
    /// The booted release is a dead end: stay, and say why.
    DeadEnd { reason: String },
}

impl Graph {
    /// An empty graph of `stream`.
    pub fn new(stream: &str) -> Self {
        Graph {
            schema: SCHEMA,
            stream: stream.to_string(),
            metadata: GraphMeta {
                last_modified: crate::base::time::rfc3339(0),
                serial: 0,
            },
            releases: Vec::new(),
        }
    }

    /// The release of `version`.
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// Where a node booted into `booted` (a commit), of `wariness`, goes at `now`.
    pub fn next(&self, booted: &str, wariness: f64, now: i64) -> Next<'_> {
        let Some(i) = self.releases.iter().position(|r| r.commit == booted) else {
            // As Cincinnati: a node on a release the graph does not list has no edges (it could
            // be newer than all of them: moving it would be a downgrade nobody planned).
            return Next::Stay {
                why: "the booted commit is not a release of the graph".into(),
            };
        };
        let here = &self.releases[i];
        if let Some(r) = &here.metadata.recall {
            return match self.recalled_to(here) {
                Some(to) if to.commit != booted => Next::Update {
                    to,
                    why: format!(
                        "{} is recalled ({}): back to {}",
                        here.version, r.reason, to.version
                    ),
                },
                _ => Next::Stay {
                    why: format!(
                        "{} is recalled, but to no release it can go to",
                        here.version
                    ),
                },
            };
        }
        if let Some(d) = &here.metadata.deadend {
            return Next::DeadEnd {
                reason: d.reason.clone(),
            };
        }
        let from = i + 1;
        let mut best = None;
        let mut waiting = None;
        for r in &self.releases[from.min(self.releases.len())..] {
            let m = &r.metadata;
            let target = m.recall.is_none() && m.deadend.is_none();
            match &m.rollout {
                Some(ro) if target && ro.open_to(wariness, now) => best = Some(r),
                Some(_) if target && waiting.is_none() => waiting = Some(r),
                _ => {}
            }
            if m.barrier.is_some() {
                break;
            }
        }
        match best {
            Some(to) => Next::Update {
                to,
                why: match &to.metadata.barrier {
                    Some(b) => format!(
                        "{} is a barrier ({}): every node goes to it first",
                        to.version, b.reason
                    ),
                    None => format!("{} is open to wariness {wariness:.3}", to.version),
                },
            },
            None => {
                Next::Stay {
                    why: match waiting {
                        Some(r) => format!(
                        "{} is not open to wariness {wariness:.3} yet (the wavefront is at {:.3})",
                        r.version,
                        r.metadata.rollout.as_ref().and_then(|ro| ro.throttle(now)).unwrap_or(0.0)
                    ),
                        None => "no newer release is planned".into(),
                    },
                }
            }
        }
    }

    /// Where the nodes of a recalled release go: along its recalls (a release recalled to one
    /// that was recalled later goes on to that one's target) to the first release not recalled;
    /// `None` for a release not recalled, or a chain that does not end.
    pub fn recalled_to<'a>(&'a self, r: &'a Release) -> Option<&'a Release> {
        let mut at = r;
        for _ in 0..=self.releases.len() {
            match &at.metadata.recall {
                None => return (at.version != r.version).then_some(at),
                Some(rc) => at = self.release(&rc.to)?,
            }
        }
        None
    }

    /// Check what a reader relies on: the schema, the stream, versions and commits unique,
    /// percentages in range, each recall's chain ending on a listed release that is not recalled.
    pub fn check(&self) -> Result<()> {
        if self.schema != SCHEMA {
            bail!(
                "schema {} is not {SCHEMA}, the one this cairn reads",
                self.schema
            );
        }
        if !crate::store::valid_ref(&self.stream) {
            bail!("stream {:?} is not an OSTree ref", self.stream);
        }
        let (mut versions, mut commits) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for r in &self.releases {
            let what = format!("release {:?}", r.version);
            if r.version.is_empty() || !versions.insert(&r.version) || !commits.insert(&r.commit) {
                bail!("{what}: versions and commits must be unique and not empty");
            }
            if !crate::store::sysroot::is_checksum(&r.commit) {
                bail!("{what}: commit {:?} is not a checksum", r.commit);
            }
            if let Some(ro) = &r.metadata.rollout {
                if !(0.0..=1.0).contains(&ro.start_percentage) {
                    bail!(
                        "{what}: start_percentage {} is not from 0.0 to 1.0",
                        ro.start_percentage
                    );
                }
            }
            if let Some(rc) = &r.metadata.recall {
                if self.release(&rc.to).is_none() {
                    bail!("{what}: recalled to {:?}, which is not listed", rc.to);
                }
                if self.recalled_to(r).is_none() {
                    bail!(
                        "{what}: recalled to {:?}, whose recalls come back to it: they must end on a release that is not recalled",
                        rc.to
                    );
                }
            }
        }
        Ok(())
    }
}

/// The graph's path in a repo directory, and its signature's: `updates/<ref>.json(.sig)`.
pub fn paths(repo: &std::path::Path, stream: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let json = repo.join("updates").join(format!("{stream}.json"));
    let sig = json.with_extension("json.sig");
    (json, sig)
}

/// Parse a graph's text and check it (`what` names where it came from).
pub fn parse(data: &[u8], what: &str) -> Result<Graph> {
    let g: Graph =
        serde_json::from_slice(data).with_context(|| format!("{what}: not an update graph"))?;
    g.check().with_context(|| what.to_string())?;
    Ok(g)
}

/// Parse `data` only when `sig` holds a valid signature on it by a key `remote` of `repo`
/// trusts (the same keyring that vouches for the remote's commits).
pub fn verify(
    repo: &ostree::Repo,
    remote: &str,
    data: &[u8],
    sig: &[u8],
    what: &str,
) -> Result<Graph> {
    let r = repo
        .gpg_verify_data(
            Some(remote),
            &glib::Bytes::from(data),
            &glib::Bytes::from(sig),
            None::<&gio::File>,
            None::<&gio::File>,
            gio::Cancellable::NONE,
        )
        .with_context(|| {
            format!("{what}: checking its signature against remote {remote}'s keyring")
        })?;
    let valid = (0..r.count_all())
        .map(|i| crate::store::remote::signature(&r, i))
        .find(|s| s.valid);
    let Some(s) = valid else {
        bail!("{what}: not signed by a key remote {remote} trusts; ignoring it");
    };
    tracing::debug!("{what}: signed by {}", s.fingerprint);
    parse(data, what)
}

#[cfg(test)]
mod tests;
