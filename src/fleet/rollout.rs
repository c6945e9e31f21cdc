//! The rollout: a new commit driven across the fleet a batch at a time, so that the service
//! behind the load balancer never fails a request.
//!
//! Every node moves through [`NodeStep`]s, and the whole state is persisted after every step,
//! so a rollout killed at any moment resumes where it stopped. A node is counted out of service
//! from the moment it is marked `draining` (before HAProxy is told) until it is back in the load
//! balancer, so that a resumed rollout first finishes the nodes in flight and never has more
//! than `max-unavailable` out. A node that rolled itself back, a health check that never
//! passes, a node that vanished: each halts the rollout (and, with `on-failure = "rollback"`,
//! returns the updated nodes to their previous commit); none is ever counted as done.
//!
//! In place, per node: drain → deploy the new commit (`cairn node upgrade`/`rebase`) → reboot
//! → the node's own verdict → the service's health (N checks in a row) → back in the load
//! balancer → bake. Replace: boot a new node from the newest image → its verdict and health →
//! into the load balancer → bake; then drain and discard an old one. `max-surge` bounds the
//! new nodes made ahead of removals.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::agent::{self, NodeFailure};
use super::haproxy::{Haproxy, State as LbState};
use super::manifest::{Fleet, OnFailure, Strategy};
use super::provider::{NodeRecord, Provider};
use super::state::{Node, NodeStep, Phase, Role, Rollout, Store};
use crate::release::audit::{self, Entry};

/// Where a rollout runs.
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    /// The fleet's directory (state, lock, control file).
    pub dir: PathBuf,
    /// The repo the nodes pull from (the audit log is beside it).
    pub repo: PathBuf,
    pub lb: Haproxy,
    pub provider: Mutex<Box<dyn Provider + Send>>,
    pub state: Mutex<Rollout>,
    /// Where the state is persisted after every step (a file by default).
    pub store: Box<dyn Store + Send + Sync>,
    /// Called with each node's new step (progress lines).
    pub on_step: &'a (dyn Fn(&Rollout, &Node) + Sync),
}

/// What `cairn rollout pause`/`abort` ask of a running rollout.
pub fn control_path(dir: &Path) -> PathBuf {
    dir.join("rollout.control")
}

fn control(dir: &Path) -> Option<String> {
    std::fs::read_to_string(control_path(dir))
        .ok()
        .map(|s| s.trim().to_string())
}

impl Ctx<'_> {
    /// The provider, locked.
    pub(super) fn provider(&self) -> Result<std::sync::MutexGuard<'_, Box<dyn Provider + Send>>> {
        self.provider
            .lock()
            .map_err(|_| anyhow::anyhow!("internal: provider lock poisoned"))
    }

    pub(super) fn node_record(&self, name: &str) -> Result<NodeRecord> {
        self.provider()?
            .nodes()?
            .into_iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the provider has no node {name}"))
    }

    pub(super) fn alive(&self, name: &str) -> bool {
        self.provider.lock().is_ok_and(|p| p.alive(name))
    }

    /// The rollout state, locked.
    pub(super) fn locked(&self) -> Result<std::sync::MutexGuard<'_, Rollout>> {
        self.state
            .lock()
            .map_err(|_| anyhow::anyhow!("internal: state lock poisoned"))
    }

    pub(super) fn snapshot(&self) -> Result<Rollout> {
        Ok(self.locked()?.clone())
    }

    /// The rollout now, and node `name` in it.
    pub(super) fn node_now(&self, name: &str) -> Result<(Rollout, Node)> {
        let r = self.snapshot()?;
        let node = r
            .node(name)
            .with_context(|| format!("internal: no node {name}"))?
            .clone();
        Ok((r, node))
    }

    /// Change one node and persist the whole state (and an audit line).
    pub(super) fn set(&self, name: &str, f: impl FnOnce(&mut Node)) -> Result<()> {
        let (r, node) = {
            let mut s = self.locked()?;
            let n = s
                .node_mut(name)
                .with_context(|| format!("internal: no node {name} in the rollout"))?;
            f(n);
            let node = n.clone();
            (s.clone(), node)
        };
        self.store.save(&r)?;
        (self.on_step)(&r, &node);
        let mut e = Entry::new("rollout", Some(&r.to_ref))
            .with("fleet", &r.fleet)
            .with("node", name)
            .with("step", node.step.word());
        if let NodeStep::Failed { reason, .. } = &node.step {
            e = e.with("reason", reason);
        }
        e.new = Some(r.to_commit.clone());
        e.version = Some(r.to_version.clone());
        audit::append(&self.repo, &[e])
    }

    pub(super) fn step(&self, name: &str, step: NodeStep) -> Result<()> {
        self.set(name, |n| n.step = step)
    }

    /// Wait for node `name`, booted again (a boot id other than `boot_id`), to call itself
    /// healthy on the rollout's commit and for its service to pass its checks; `admit` runs
    /// between that and the move to `Baking` (replace adds a new node to HAProxy there).
    pub(super) fn verify(
        &self,
        name: &str,
        rec: &NodeRecord,
        boot_id: &str,
        to_commit: &str,
        deadline: Instant,
        admit: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let st = agent::await_verdict(name, &rec.ssh, boot_id, to_commit, deadline, &|| {
            self.alive(name)
        })?;
        agent::await_healthy(&rec.service, &self.fleet.service, deadline)?;
        admit()?;
        self.set(name, |n| {
            n.commit = st.commit.clone();
            n.version = st.version.clone();
            n.health = "healthy".into();
            n.step = NodeStep::Baking;
        })
    }

    pub(super) fn set_phase(&self, phase: Phase, reason: Option<String>) -> Result<Rollout> {
        let r = {
            let mut s = self.locked()?;
            s.phase = phase;
            if reason.is_some() {
                s.reason = reason;
            }
            s.clone()
        };
        self.store.save(&r)?;
        Ok(r)
    }
}

/// Pick the next batch: pending nodes (existing ones, in order), as many as the policy lets go
/// out of service now. Pure, for the tests.
pub fn next_batch(r: &Rollout, max_unavailable: u32) -> Vec<String> {
    let out = r.out_of_service();
    let room = (max_unavailable as usize).saturating_sub(out);
    r.nodes
        .iter()
        .filter(|n| n.step == NodeStep::Pending && n.role == Role::Existing)
        .take(room)
        .map(|n| n.name.clone())
        .collect()
}

/// Run (or resume) the rollout in `ctx` until it is done, halted, paused or aborted.
pub fn run(ctx: &Ctx) -> Result<Rollout> {
    loop {
        crate::base::interrupt::check()?;
        // Nodes in flight (a resumed rollout) are finished first.
        let r = ctx.snapshot()?;
        let in_flight: Vec<String> = r
            .nodes
            .iter()
            .filter(|n| n.step.in_flight())
            .map(|n| n.name.clone())
            .collect();
        let batch = if in_flight.is_empty() {
            match control(&ctx.dir).as_deref() {
                Some("pause") => return ctx.set_phase(Phase::Paused, None),
                Some("abort") => {
                    return ctx.set_phase(Phase::Aborted, Some("aborted by the operator".into()))
                }
                _ => {}
            }
            if r.phase != Phase::Running {
                ctx.set_phase(Phase::Running, None)?;
            }
            match ctx.fleet.policy.strategy {
                Strategy::InPlace => next_batch(&r, ctx.fleet.policy.max_unavailable),
                Strategy::Replace => return super::replace::run(ctx),
            }
        } else {
            in_flight
        };
        if batch.is_empty() {
            let r = ctx.snapshot()?;
            if let Some(f) = r
                .nodes
                .iter()
                .find(|n| matches!(n.step, NodeStep::Failed { .. }))
            {
                return ctx.set_phase(Phase::Halted, Some(failure_of(f)));
            }
            return ctx.set_phase(Phase::Done, None);
        }
        let results = run_batch(ctx, &batch, in_place);
        if let Some((name, e)) = results
            .into_iter()
            .find_map(|(n, r)| r.err().map(|e| (n, e)))
        {
            return halt(ctx, &name, e);
        }
    }
}

/// Drive every node of `batch` through `drive`, at once; each node's result.
pub(super) fn run_batch(
    ctx: &Ctx,
    batch: &[String],
    drive: fn(&Ctx, &str) -> Result<()>,
) -> Vec<(String, Result<()>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .iter()
            .map(|name| (name.clone(), s.spawn(move || drive(ctx, name))))
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread of {n} panicked")));
                (n, r)
            })
            .collect()
    })
}

fn failure_of(n: &Node) -> String {
    match &n.step {
        NodeStep::Failed { reason, .. } => format!("{}: {reason}", n.name),
        _ => String::new(),
    }
}

/// A node failed: record it, stop, and with `on-failure = "rollback"` return the nodes already
/// updated to their previous commit.
pub(super) fn halt(ctx: &Ctx, name: &str, e: anyhow::Error) -> Result<Rollout> {
    let rolled_back = matches!(
        e.downcast_ref::<NodeFailure>(),
        Some(NodeFailure::RolledBack { .. })
    );
    let reason = format!("{e:#}");
    tracing::error!("{name}: {reason}");
    // A node that fell back serves its previous commit: it goes back into the load balancer
    // when its service is healthy, so the fleet keeps its capacity.
    let in_service = rolled_back && restore(ctx, name).is_ok();
    ctx.step(
        name,
        NodeStep::Failed {
            reason: reason.clone(),
            rolled_back,
            in_service,
        },
    )?;
    ctx.set_phase(Phase::Halted, Some(format!("{name}: {reason}")))?;
    if ctx.fleet.policy.on_failure == OnFailure::Rollback {
        revert_updated(ctx)?;
    }
    ctx.snapshot()
}

/// Put a node that serves again back into the load balancer.
fn restore(ctx: &Ctx, name: &str) -> Result<()> {
    let rec = ctx.node_record(name)?;
    let deadline = Instant::now() + ctx.fleet.policy.node_timeout;
    agent::await_healthy(&rec.service, &ctx.fleet.service, deadline)?;
    ctx.lb.set_state(name, LbState::Ready)?;
    ctx.lb.wait_up(name, Duration::from_secs(60))
}

/// One node, in place, from wherever it is to `Done`.
fn in_place(ctx: &Ctx, name: &str) -> Result<()> {
    let policy = &ctx.fleet.policy;
    let deadline = Instant::now() + policy.node_timeout;
    loop {
        crate::base::interrupt::check()?;
        let (r, node) = ctx.node_now(name)?;
        let rec = ctx.node_record(name)?;
        match node.step {
            NodeStep::Pending => ctx.step(name, NodeStep::Draining)?,
            NodeStep::Draining => {
                if let Err(e) = ctx.lb.drain(name, policy.drain_timeout) {
                    tracing::warn!("{name}: {e:#}");
                }
                ctx.step(name, NodeStep::Upgrading)?;
            }
            NodeStep::Upgrading => {
                if !ctx.alive(name) {
                    return Err(NodeFailure::Vanished { node: name.into() }.into());
                }
                let st = agent::status(name, &rec.ssh)?;
                if st.commit == r.to_commit {
                    // Already there (a resumed rollout whose node rebooted before the crash).
                    ctx.step(
                        name,
                        NodeStep::Verifying {
                            boot_id: String::new(),
                        },
                    )?;
                    continue;
                }
                // Deployed already when a killed rollout got that far; otherwise deploy now.
                if st.default_commit != r.to_commit {
                    agent::deploy(&rec.ssh, &st.ref_, &r.to_ref, policy.node_timeout)?;
                }
                ctx.step(
                    name,
                    NodeStep::Rebooting {
                        boot_id: st.boot_id,
                    },
                )?;
            }
            NodeStep::Rebooting { boot_id } => {
                // Not rebooted yet (or not known): reboot now.
                if agent::status(name, &rec.ssh).is_ok_and(|st| st.boot_id == boot_id) {
                    agent::reboot(&rec.ssh);
                }
                ctx.step(name, NodeStep::Verifying { boot_id })?;
            }
            NodeStep::Verifying { boot_id } => {
                ctx.verify(name, &rec, &boot_id, &r.to_commit, deadline, || Ok(()))?;
            }
            NodeStep::Baking => {
                ctx.lb.set_state(name, LbState::Ready)?;
                ctx.lb.wait_up(name, Duration::from_secs(60))?;
                bake(ctx, name, &rec)?;
                ctx.step(name, NodeStep::Done)?;
            }
            NodeStep::Done | NodeStep::Reverted | NodeStep::Removed => return Ok(()),
            NodeStep::Failed { reason, .. } => bail!("{reason}"),
            NodeStep::Creating => bail!("internal: {name} is a new node in an in-place rollout"),
        }
    }
}

/// Watch a node serving for the bake time: any failed check fails it.
pub(super) fn bake(ctx: &Ctx, name: &str, rec: &NodeRecord) -> Result<()> {
    let s = &ctx.fleet.service;
    let end = Instant::now() + ctx.fleet.policy.bake_time;
    while Instant::now() < end {
        crate::base::interrupt::check()?;
        if !ctx.alive(name) {
            return Err(NodeFailure::Vanished { node: name.into() }.into());
        }
        agent::check(&rec.service, s).with_context(|| format!("{name} failed while baking"))?;
        std::thread::sleep(s.health_interval);
    }
    Ok(())
}

/// `on-failure = "rollback"`: every node already on the new commit goes back to its previous
/// one, a node at a time (drain, `cairn node rollback`, reboot, verdict, health, ready).
fn revert_updated(ctx: &Ctx) -> Result<()> {
    let r = ctx.snapshot()?;
    for n in r.nodes.iter().filter(|n| n.step == NodeStep::Done) {
        let rec = ctx.node_record(&n.name)?;
        let deadline = Instant::now() + ctx.fleet.policy.node_timeout;
        ctx.lb.drain(&n.name, ctx.fleet.policy.drain_timeout).ok();
        let before = agent::status(&n.name, &rec.ssh)?.boot_id;
        agent::rollback(&rec.ssh, ctx.fleet.policy.node_timeout)?;
        agent::reboot(&rec.ssh);
        agent::await_verdict(
            &n.name,
            &rec.ssh,
            &before,
            &n.from_commit,
            deadline,
            &|| ctx.alive(&n.name),
        )?;
        restore(ctx, &n.name)?;
        ctx.set(&n.name, |x| {
            x.commit = n.from_commit.clone();
            x.version = n.from_version.clone();
            x.step = NodeStep::Reverted;
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(steps: &[NodeStep]) -> Rollout {
        Rollout {
            fleet: "web".into(),
            strategy: Strategy::InPlace,
            to_ref: "r".into(),
            to_commit: "c2".into(),
            to_version: "1.1".into(),
            phase: Phase::Running,
            reason: None,
            started: 0,
            updated: 0,
            nodes: steps
                .iter()
                .enumerate()
                .map(|(i, s)| Node {
                    name: format!("n{i}"),
                    role: Role::Existing,
                    step: s.clone(),
                    from_commit: "c1".into(),
                    from_version: "1.0".into(),
                    commit: "c1".into(),
                    version: "1.0".into(),
                    health: "healthy".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn batches_never_exceed_max_unavailable() {
        use NodeStep::*;
        let r = rollout(&[Pending, Pending, Pending]);
        assert_eq!(next_batch(&r, 1), vec!["n0"]);
        assert_eq!(next_batch(&r, 2), vec!["n0", "n1"]);
        // One node out (a resumed rollout, or a failed node out of service): room for none.
        let r = rollout(&[Draining, Pending, Pending]);
        assert!(next_batch(&r, 1).is_empty());
        let failed = Failed {
            reason: "x".into(),
            rolled_back: false,
            in_service: false,
        };
        let r = rollout(&[failed, Pending, Pending]);
        assert!(
            next_batch(&r, 1).is_empty(),
            "a dead node still counts as out"
        );
        let back = Failed {
            reason: "x".into(),
            rolled_back: true,
            in_service: true,
        };
        let r = rollout(&[back, Done, Pending]);
        assert_eq!(next_batch(&r, 1), vec!["n2"]);
        let r = rollout(&[Done, Done, Baking]);
        assert!(next_batch(&r, 1).is_empty());
    }
}
