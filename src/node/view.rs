//! What the node reads before each step — the facts the state machine classifies — and what it
//! writes after each: the status file's snapshot of the deployments, and the login message.

use anyhow::{Context, Result};

use super::api::{Deployment, NodeState, Status};
use super::record;
pub use super::record::split_refspec;
use super::state::{Countdown, DeploymentId, Facts, State};
use super::{grubenv, Paths};
use crate::base::text::short_hash;
use crate::store::sysroot::{DeploymentInfo, Node};

/// One step's view of the node: its paths, its sysroot, its records.
pub struct Ctx {
    pub p: Paths,
    pub node: Node,
    pub status: Status,
}

/// A deployment's identity.
pub fn id(d: &DeploymentInfo) -> DeploymentId {
    DeploymentId {
        commit: d.commit.clone(),
        serial: d.serial,
    }
}

impl Ctx {
    pub fn open(p: &Paths) -> Result<Self> {
        Ok(Ctx {
            p: p.clone(),
            node: Node::open(&p.root)?,
            status: record::load(&p.status())?,
        })
    }

    /// GRUB's countdown, as the environment block on /boot holds it.
    pub fn countdown(&self) -> Result<Countdown> {
        let env = grubenv::read(&self.p.grubenv()).with_context(|| {
            "reading GRUB's countdown (an image built by cairn has this file on /boot)"
        })?;
        Ok(Countdown::parse(env.get(grubenv::TRIES)))
    }

    /// What the state machine reads.
    pub fn facts(&self) -> Result<Facts> {
        Ok(Facts {
            countdown: self.countdown()?,
            booted: id(&self.node.booted()?),
            deployments: self.node.deployments().iter().map(id).collect(),
            trial: self.status.trial.clone(),
            marker: self.p.marker().exists(),
        })
    }

    pub fn state(&self) -> Result<State> {
        Ok(State::from_facts(&self.facts()?))
    }

    /// Set (`Some(n)`) or clear GRUB's countdown, in place.
    pub fn set_countdown(&self, tries: Option<u32>) -> Result<()> {
        let v = tries.map(|n| n.to_string());
        grubenv::update(&self.p.grubenv(), grubenv::TRIES, v.as_deref())
    }

    /// A deployment as `status` shows it: with its commit's version, end of life and signature.
    pub fn describe(&self, d: &DeploymentInfo) -> Deployment {
        let repo = self.node.repo();
        let meta = crate::store::load_commit(&repo, &d.commit)
            .ok()
            .map(|c| c.meta);
        let remote = d
            .origin
            .as_deref()
            .and_then(split_refspec)
            .map_or(super::REMOTE, |(r, _)| r);
        Deployment {
            index: d.index,
            commit: d.commit.clone(),
            serial: d.serial,
            version: meta.as_ref().and_then(|m| m.version.clone()),
            origin: d.origin.clone(),
            booted: d.booted,
            signed_by: self.node.signed_by(&d.commit, remote),
            endoflife: meta.and_then(|m| m.endoflife),
        }
    }

    /// Write the status file (with a fresh snapshot of the deployments and `state`) and the
    /// login message.
    pub fn save(&mut self, state: &State) -> Result<()> {
        self.snapshot(state.wire());
        // The steps keep the trial record (with its attempts); a steady node has none.
        if matches!(state, State::Steady) {
            self.status.trial = None;
        }
        record::save(&self.p.status(), &self.status)?;
        self.write_motd()
    }

    /// A fresh view of the deployments, the state and this boot's verdict, in the records.
    pub fn snapshot(&mut self, state: NodeState) {
        let deployments = self
            .node
            .deployments()
            .iter()
            .map(|d| self.describe(d))
            .collect();
        let boot = super::boot_id(&self.p);
        self.status
            .snapshot(deployments, state, &boot, &super::now());
    }

    fn write_motd(&self) -> Result<()> {
        let path = self.p.motd();
        match motd(&self.status) {
            Some(text) => {
                fs_err::create_dir_all(path.parent().unwrap_or(&self.p.root))?;
                fs_err::write(&path, text)?;
            }
            None => {
                super::remove_durably(&path)?;
            }
        }
        Ok(())
    }
}

/// What a login shows: the booted ref's end of life, a move because a ref ended, an automatic
/// rollback the node is still on.
pub fn motd(s: &Status) -> Option<String> {
    let booted = s.booted()?;
    let mut lines = Vec::new();
    let followed = booted
        .origin
        .as_deref()
        .and_then(split_refspec)
        .map(|(_, r)| r);
    if let Some(m) = &booted.endoflife {
        lines.push(format!(
            "cairn: {} has reached its end of life: {m}",
            followed.unwrap_or("this host's ref")
        ));
    }
    if let Some(e) = &s.endoflife {
        if followed == Some(e.rebased_to.as_str()) {
            lines.push(format!(
                "cairn: {} reached its end of life ({}); this host moved to {} on {}",
                e.ref_, e.message, e.rebased_to, e.time
            ));
        }
    }
    if let Some(r) = &s.last_rollback {
        if r.booted.commit == booted.commit && r.booted.serial == booted.serial {
            lines.push(format!(
                "cairn: the update to {} ({}) was rolled back automatically on {}: {}",
                short_hash(&r.commit),
                r.version.as_deref().unwrap_or("no version"),
                r.time,
                r.reason
            ));
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::api::{EndOfLife, Rollback};

    #[test]
    fn refspecs() {
        assert_eq!(split_refspec("cairn:a/b"), Some(("cairn", "a/b")));
        assert_eq!(split_refspec("a/b"), None);
        assert_eq!(split_refspec(":a"), None);
    }

    #[test]
    fn the_login_message_says_what_matters() {
        let mut s = Status::default();
        assert_eq!(motd(&s), None);
        s.deployments.push(Deployment {
            commit: "c".repeat(64),
            origin: Some("cairn:new/ref".into()),
            booted: true,
            ..Default::default()
        });
        assert_eq!(motd(&s), None);
        s.endoflife = Some(EndOfLife {
            ref_: "old/ref".into(),
            message: "use new/ref".into(),
            rebased_to: "new/ref".into(),
            time: "t".into(),
        });
        let m = motd(&s).unwrap();
        assert!(
            m.contains("old/ref reached its end of life (use new/ref); this host moved to new/ref"),
            "{m}"
        );
        s.deployments[0].endoflife = Some("gone".into());
        s.last_rollback = Some(Rollback {
            commit: "b".repeat(64),
            serial: 0,
            version: Some("1.2".into()),
            reason: "1 trial boot spent".into(),
            attempts: vec![],
            booted: DeploymentId {
                commit: "c".repeat(64),
                serial: 0,
            },
            time: "t2".into(),
        });
        let m = motd(&s).unwrap();
        assert_eq!(m.lines().count(), 3, "{m}");
        assert!(
            m.contains("new/ref has reached its end of life: gone"),
            "{m}"
        );
        assert!(
            m.contains("bbbbbbbbbbbb (1.2) was rolled back automatically on t2"),
            "{m}"
        );
    }
}
