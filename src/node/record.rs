//! What the node records in `/var/lib/cairn/status.json` (on `/var`, shared by every
//! deployment, so that it survives a move between them): the trial under way, the last
//! automatic rollback and why, every commit that failed its trial, the last good boot, an end of
//! life met on the way, and a snapshot of the deployments. The document's types are the status
//! contract, [`super::api`]; `cairn node status --json` prints the same document; a fleet tool
//! reads it over SSH. It is written atomically (a temporary file, fsync, rename, fsync of the
//! directory).
//!
//! The changes to the records are pure functions of this module, unit-tested here; the agent
//! only reads, calls them and writes.

use std::path::Path;

use anyhow::{Context, Result};

use super::api::{
    self, Attempt, Booted, Deployment, DeploymentId, Failure, Good, NodeState, Rollback, Status,
    Trial, Unhealthy, Verdict,
};

/// What the attempts say when no trial boot reported (it panicked, hung before `/var` was
/// writable, or lost power).
pub const NONE_REPORTED: &str = "none reported (hang before userspace, panic, or power loss)";

/// A refspec's remote and ref (`remote:ref`; a refspec without a remote has none to pull from).
pub fn split_refspec(refspec: &str) -> Option<(&str, &str)> {
    refspec
        .split_once(':')
        .filter(|(r, f)| !r.is_empty() && !f.is_empty())
}

impl Status {
    /// Take a fresh view of the deployments, the state and this boot's verdict.
    pub fn snapshot(
        &mut self,
        deployments: Vec<Deployment>,
        state: NodeState,
        boot_id: &str,
        time: &str,
    ) {
        self.deployments = deployments;
        self.booted = self.booted().map(|d| Booted {
            commit: d.commit.clone(),
            serial: d.serial,
            version: d.version.clone(),
            ref_: d
                .origin
                .as_deref()
                .and_then(split_refspec)
                .map(|(_, r)| r.to_string()),
            origin: d.origin.clone(),
        });
        self.state = state;
        let this_boot = |id: Option<&str>| !boot_id.is_empty() && id == Some(boot_id);
        self.verdict = if this_boot(self.last_good.as_ref().map(|g| g.boot_id.as_str())) {
            Verdict::Good
        } else if this_boot(self.last_unhealthy.as_ref().map(|u| u.boot_id.as_str())) {
            Verdict::Failed
        } else if state == NodeState::OnTrial {
            Verdict::Trial
        } else {
            Verdict::Unknown
        };
        self.updated = time.to_string();
    }

    /// An unhealthy verdict on boot `boot_id`.
    pub fn unhealthy(&mut self, boot_id: &str, reason: &str, time: &str) {
        self.last_unhealthy = Some(Unhealthy {
            boot_id: boot_id.to_string(),
            reason: reason.to_string(),
            time: time.to_string(),
        });
    }

    /// A new trial is armed (its attempts start empty).
    pub fn armed(&mut self, trial: Trial) {
        self.trial = Some(Trial {
            attempts: Vec::new(),
            ..trial
        });
    }

    /// An unhealthy trial boot, noted against the trial under way.
    pub fn attempt(&mut self, boot_id: &str, reason: &str, time: &str) {
        if let Some(t) = &mut self.trial {
            t.attempts.retain(|a| a.boot_id != boot_id);
            t.attempts.push(Attempt {
                boot_id: boot_id.to_string(),
                reason: reason.to_string(),
                time: time.to_string(),
            });
        }
    }

    /// The trial's tries are spent and `booted` is running: the commit failed. Returns the
    /// reason recorded. The trial record stays until the countdown is cleared.
    pub fn fell_back(&mut self, trial: &Trial, booted: &DeploymentId, time: &str) -> String {
        let attempts = if trial.attempts.is_empty() {
            NONE_REPORTED.to_string()
        } else {
            trial
                .attempts
                .iter()
                .map(|a| format!("boot {}: {}", a.boot_id, a.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let reason = format!(
            "{} trial boot{} spent; attempts: {attempts}",
            trial.tries,
            if trial.tries == 1 { "" } else { "s" }
        );
        self.failed.insert(
            trial.deployment.commit.clone(),
            Failure {
                version: trial.version.clone(),
                reason: reason.clone(),
                time: time.to_string(),
            },
        );
        self.last_rollback = Some(Rollback {
            commit: trial.deployment.commit.clone(),
            serial: trial.deployment.serial,
            version: trial.version.clone(),
            reason: reason.clone(),
            attempts: trial.attempts.clone(),
            booted: booted.clone(),
            time: time.to_string(),
        });
        reason
    }

    /// A boot passed its health check (`trial`: it ended a trial, whose record goes).
    pub fn good(&mut self, deployment: &DeploymentId, boot_id: &str, trial: bool, time: &str) {
        if trial {
            self.trial = None;
        }
        self.last_good = Some(Good {
            deployment: deployment.clone(),
            boot_id: boot_id.to_string(),
            trial,
            time: time.to_string(),
        });
    }

    /// Why `commit` may not be deployed (it failed its trial), if it may not.
    pub fn refused(&self, commit: &str) -> Option<&Failure> {
        self.failed.get(commit)
    }
}

/// Read the status file (strictly, [`api::read`]); a missing file is an empty record (a first
/// boot), a broken one an error naming it and the field.
pub fn load(path: &Path) -> Result<Status> {
    match fs_err::read(path) {
        Ok(b) => api::read(&b)
            .with_context(|| format!("{}: not a cairn node status file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Status::default()),
        Err(e) => Err(e.into()),
    }
}

/// Write the status file atomically and durably.
pub fn save(path: &Path, s: &Status) -> Result<()> {
    let text = api::write(s).with_context(|| format!("writing {}", path.display()))?;
    super::write_durably(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(c: char) -> DeploymentId {
        DeploymentId {
            commit: c.to_string().repeat(64),
            serial: 0,
        }
    }

    fn trial(tries: u32) -> Trial {
        Trial {
            deployment: dep('b'),
            version: Some("1.2".into()),
            tries,
            armed: "t0".into(),
            from: dep('a'),
            attempts: vec![Attempt {
                boot_id: "old".into(),
                reason: "left over".into(),
                time: "t".into(),
            }],
        }
    }

    #[test]
    fn a_trial_from_arming_to_a_fall_back() {
        let mut s = Status::default();
        s.armed(trial(2));
        assert!(
            s.trial.as_ref().unwrap().attempts.is_empty(),
            "attempts start empty"
        );
        s.attempt("boot-1", "check /etc/cairn/health.d/x failed", "t1");
        s.attempt("boot-1", "failed units: x.service", "t1");
        s.attempt("boot-2", "deadline passed", "t2");
        let t = s.trial.clone().unwrap();
        assert_eq!(
            t.attempts.len(),
            2,
            "one attempt per boot, the last word kept"
        );
        let reason = s.fell_back(&t, &dep('a'), "t3");
        assert_eq!(
            reason,
            "2 trial boots spent; attempts: boot boot-1: failed units: x.service; \
             boot boot-2: deadline passed"
        );
        let f = s.refused(&dep('b').commit).unwrap();
        assert_eq!(f.reason, reason);
        assert_eq!(f.version.as_deref(), Some("1.2"));
        let r = s.last_rollback.clone().unwrap();
        assert_eq!(
            (r.commit.as_str(), &r.booted),
            (dep('b').commit.as_str(), &dep('a'))
        );
        assert_eq!(r.attempts.len(), 2);
        assert!(s.refused(&dep('a').commit).is_none());
    }

    #[test]
    fn a_trial_that_never_reported() {
        let mut s = Status::default();
        s.armed(trial(1));
        let t = s.trial.clone().unwrap();
        let reason = s.fell_back(&t, &dep('a'), "t");
        assert_eq!(
            reason,
            format!("1 trial boot spent; attempts: {NONE_REPORTED}")
        );
    }

    #[test]
    fn a_good_trial_ends_it() {
        let mut s = Status::default();
        s.armed(trial(3));
        s.good(&dep('b'), "boot-9", true, "t");
        assert!(s.trial.is_none());
        assert_eq!(s.last_good.as_ref().map(|g| g.trial), Some(true));
        // A good boot that is no trial leaves a trial record alone.
        s.armed(trial(3));
        s.good(&dep('a'), "boot-10", false, "t");
        assert!(s.trial.is_some());
        s.attempt("x", "y", "t");
        s.trial = None;
        s.attempt("x", "y", "t");
        assert!(s.trial.is_none(), "no trial, nothing to note");
    }

    #[test]
    fn the_snapshot_names_the_booted_deployment_and_this_boots_verdict() {
        let mut s = Status::default();
        let deps = vec![
            Deployment {
                commit: "n".repeat(64),
                origin: Some("cairn:cairn/amd64/app".into()),
                ..Default::default()
            },
            Deployment {
                index: 1,
                commit: "o".repeat(64),
                version: Some("1.2".into()),
                origin: Some("cairn:cairn/amd64/app".into()),
                booted: true,
                ..Default::default()
            },
        ];
        s.snapshot(deps.clone(), NodeState::OnTrial, "boot-1", "t");
        let b = s.booted.clone().unwrap();
        assert_eq!(
            (b.commit, b.ref_.as_deref()),
            ("o".repeat(64), Some("cairn/amd64/app"))
        );
        assert_eq!(s.verdict, Verdict::Trial);
        s.unhealthy("boot-1", "failed units: x", "t");
        s.snapshot(deps.clone(), NodeState::Failing, "boot-1", "t");
        assert_eq!(s.verdict, Verdict::Failed);
        s.good(&dep('o'), "boot-2", false, "t");
        s.snapshot(deps.clone(), NodeState::Steady, "boot-2", "t");
        assert_eq!(s.verdict, Verdict::Good);
        s.snapshot(deps, NodeState::Steady, "boot-3", "t");
        assert_eq!(
            s.verdict,
            Verdict::Unknown,
            "a verdict of another boot is not this one's"
        );
        // What the fleet's agent reads (src/fleet/agent.rs): booted.{commit,version,ref},
        // verdict, last_rollback.{commit,reason}.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["booted"]["ref"], "cairn/amd64/app");
        assert_eq!(v["booted"]["version"], "1.2");
        assert_eq!(v["verdict"], "unknown");
    }

    #[test]
    fn the_file_round_trips_and_a_broken_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("status.json");
        assert_eq!(load(&p).unwrap(), Status::default());
        let mut s = Status::default();
        s.armed(trial(1));
        let t = s.trial.clone().unwrap();
        s.fell_back(&t, &dep('a'), "t");
        s.deployments.push(Deployment {
            commit: dep('a').commit,
            booted: true,
            ..Default::default()
        });
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), s);
        assert!(load(&p).unwrap().booted().is_some());
        let text = fs_err::read_to_string(&p).unwrap();
        assert!(text.contains("\"last_rollback\"") && text.contains("\"failed\""));
        fs_err::write(&p, "{").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("status.json") && e.contains("not a cairn node status"),
            "{e}"
        );
    }
}
