//! The rollout: a new commit driven across the fleet a batch at a time, so that the service
//! behind the load balancer never fails a request.
//!
//! One driver for every strategy: the context ([`Ctx`]), the batch loop, the operator's control
//! (read between batches, in one place), halting, and each step's I/O ([`steps`]). A strategy
//! ([`in_place`], [`replace`]) only says what to do next — which nodes to start on, how many to
//! make, and what each node's step leads to — as pure functions of the persisted state, so
//! that a rollout killed at any moment resumes where it stopped, by its own strategy.
//!
//! A node is counted out of service from the moment it is marked `draining` (before HAProxy is
//! told) until it is back in the load balancer, so that a resumed rollout first finishes the
//! nodes in flight and never has more than `max-unavailable` out. A node that rolled itself
//! back, a health check that never passes, a node that vanished: each halts the rollout (and,
//! with `on-failure = "rollback"`, returns the updated nodes to their previous commit); none is
//! ever counted as done.

pub mod in_place;
pub mod replace;
mod steps;

use crate::fleet::haproxy::RuntimeApi as _;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::agent::{self, NodeFailure};
use super::control::{self, Control};
use super::dir::FleetDir;
use super::haproxy::{Haproxy, State as LbState};
use super::manifest::{self, Fleet, OnFailure, Policy};
use super::provider::{NodeRecord, Provider};
use super::state::{Health, Node, NodeStep, Phase, Role, Rollout, Store};
use crate::release::audit::{self, Entry};

/// What a strategy does next with the fleet (nodes in flight are finished first, by the driver).
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Take these existing nodes out of service: they start at `draining`.
    Begin(Vec<String>),
    /// Make this many new nodes.
    Create(u32),
    /// Nothing is left to start.
    Done,
}

/// What a node's step leads to under a strategy; the driver does the I/O ([`steps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Drain it from the load balancer, then go on at `then`.
    Drain { then: NodeStep },
    /// Deploy the new commit on it (`cairn node upgrade`/`rebase`).
    Deploy,
    /// Reboot it into the new commit, if it has not rebooted since `boot_id`.
    Reboot { boot_id: String },
    /// Wait for its own verdict on a boot other than `boot_id` and for its service's health,
    /// then go on at `then`.
    Verify { boot_id: String, then: NodeStep },
    /// Add a new node to the load balancer.
    Join,
    /// Back in the load balancer, watched for the bake time.
    Bake,
    /// Boot a new node from the newest image.
    Create,
    /// Take an old node out of the load balancer and discard it.
    Remove,
    /// Nothing more to do.
    Stop,
    /// It failed before (a resumed rollout): the reason.
    Failed(String),
    /// A step this strategy never gives its nodes.
    Unexpected,
}

/// A rollout strategy: pure functions of the persisted state.
pub trait Strategy: Sync {
    /// What to start next (no node is in flight).
    fn next(&self, r: &Rollout, policy: &Policy, size: u32) -> Next;
    /// What node `n`'s step leads to.
    fn act(&self, n: &Node) -> Act;
}

/// The strategy a rollout runs by (the one it was started with, also when resumed).
pub fn strategy(s: manifest::Strategy) -> &'static dyn Strategy {
    match s {
        manifest::Strategy::InPlace => &in_place::InPlace,
        manifest::Strategy::Replace => &replace::Replace,
    }
}

/// Where a rollout runs.
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    pub dir: FleetDir,
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

impl Ctx<'_> {
    /// The provider, locked.
    fn provider(&self) -> Result<MutexGuard<'_, Box<dyn Provider + Send>>> {
        self.provider
            .lock()
            .map_err(|_| anyhow!("internal: provider lock poisoned"))
    }

    fn node_record(&self, name: &str) -> Result<NodeRecord> {
        self.provider()?
            .nodes()?
            .into_iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the provider has no node {name}"))
    }

    fn alive(&self, name: &str) -> bool {
        self.provider.lock().is_ok_and(|p| p.alive(name))
    }

    /// The rollout state, locked.
    fn locked(&self) -> Result<MutexGuard<'_, Rollout>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("internal: state lock poisoned"))
    }

    fn snapshot(&self) -> Result<Rollout> {
        Ok(self.locked()?.clone())
    }

    /// The rollout now, and node `name` in it.
    fn node_now(&self, name: &str) -> Result<(Rollout, Node)> {
        let r = self.snapshot()?;
        let node = r
            .node(name)
            .with_context(|| format!("internal: no node {name}"))?
            .clone();
        Ok((r, node))
    }

    /// Change one node and persist the whole state (and an audit line).
    fn set(&self, name: &str, f: impl FnOnce(&mut Node)) -> Result<()> {
        let (r, node) = {
            let mut s = self.locked()?;
            let n = s
                .node_mut(name)
                .with_context(|| format!("internal: no node {name} in the rollout"))?;
            f(n);
            let node = n.clone();
            (s.clone(), node)
        };
        self.persist(&r, &node)
    }

    /// Save the state after `node` changed: the store, the progress line, the audit log.
    fn persist(&self, r: &Rollout, node: &Node) -> Result<()> {
        self.store.save(r)?;
        (self.on_step)(r, node);
        let mut e = Entry::new("rollout", Some(&r.to_ref))
            .with("fleet", &r.fleet)
            .with("node", &node.name)
            .with("step", node.step.word());
        if let NodeStep::Failed { reason, .. } = &node.step {
            e = e.with("reason", reason);
        }
        e.new = Some(r.to_commit.clone());
        e.version = Some(r.to_version.clone());
        audit::append(&self.repo, &[e])
    }

    fn step(&self, name: &str, step: NodeStep) -> Result<()> {
        self.set(name, |n| n.step = step)
    }

    /// Record a new node about to be made (before it is, so that a resumed rollout knows of it).
    fn add_new(&self, name: &str) -> Result<()> {
        let (r, node) = {
            let mut s = self.locked()?;
            let node = Node {
                name: name.to_string(),
                role: Role::New,
                step: NodeStep::Creating,
                from_commit: String::new(),
                from_version: String::new(),
                commit: s.to_commit.clone(),
                version: s.to_version.clone(),
                health: Health::Unknown,
            };
            s.nodes.push(node.clone());
            (s.clone(), node)
        };
        self.persist(&r, &node)
    }

    fn set_phase(&self, f: impl FnOnce(&mut Rollout)) -> Result<Rollout> {
        let r = {
            let mut s = self.locked()?;
            f(&mut s);
            s.clone()
        };
        self.store.save(&r)?;
        Ok(r)
    }
}

/// Run (or resume) the rollout in `ctx`, by the strategy it was started with, until it is
/// done, halted, paused or aborted.
pub fn run(ctx: &Ctx) -> Result<Rollout> {
    let s = strategy(ctx.snapshot()?.strategy);
    loop {
        crate::base::interrupt::check()?;
        let r = ctx.snapshot()?;
        let in_flight: Vec<String> = r
            .nodes
            .iter()
            .filter(|n| n.step.in_flight())
            .map(|n| n.name.clone())
            .collect();
        let batch = if in_flight.is_empty() {
            if let Some(req) = control::read(&ctx.dir.control())? {
                tracing::info!("{} asked by {}", req.control.as_str(), req.by);
                return ctx.set_phase(|r| match req.control {
                    Control::Pause => r.phase = Phase::Paused,
                    Control::Abort => r.abort(),
                });
            }
            if r.phase != Phase::Running {
                ctx.set_phase(|r| r.phase = Phase::Running)?;
            }
            match s.next(&r, &ctx.fleet.policy, ctx.fleet.size()) {
                Next::Done => return finish(ctx),
                Next::Begin(names) => {
                    for n in &names {
                        ctx.step(n, NodeStep::Draining)?;
                    }
                    names
                }
                Next::Create(k) => create(ctx, k)?,
            }
        } else {
            in_flight
        };
        if let Some((name, e)) = run_batch(ctx, s, &batch) {
            return halt(ctx, &name, e);
        }
    }
}

/// Reserve and record `k` new nodes.
fn create(ctx: &Ctx, k: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for _ in 0..k {
        let name = ctx.provider()?.new_name()?;
        ctx.add_new(&name)?;
        names.push(name);
    }
    Ok(names)
}

/// Nothing left to start: done, or halted by a node that failed.
fn finish(ctx: &Ctx) -> Result<Rollout> {
    let r = ctx.snapshot()?;
    let failed = r.nodes.iter().find_map(|n| match &n.step {
        NodeStep::Failed { reason, .. } => Some(format!("{}: {reason}", n.name)),
        _ => None,
    });
    ctx.set_phase(|r| match failed {
        Some(f) => {
            r.phase = Phase::Halted;
            r.reason = Some(f);
        }
        None => r.phase = Phase::Done,
    })
}

/// Drive every node of `batch` at once, each to the end of its steps; the first failure.
fn run_batch(ctx: &Ctx, s: &dyn Strategy, batch: &[String]) -> Option<(String, anyhow::Error)> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = batch
            .iter()
            .map(|name| (name.clone(), sc.spawn(move || drive(ctx, s, name))))
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("the thread of {n} panicked")));
                (n, r)
            })
            .collect::<Vec<_>>()
    })
    .into_iter()
    .find_map(|(n, r)| r.err().map(|e| (n, e)))
}

/// One node, from wherever it is to the end of its steps under strategy `s`.
fn drive(ctx: &Ctx, s: &dyn Strategy, name: &str) -> Result<()> {
    let deadline = Instant::now() + ctx.fleet.policy.node_timeout;
    loop {
        crate::base::interrupt::check()?;
        let (r, node) = ctx.node_now(name)?;
        match s.act(&node) {
            Act::Stop => return Ok(()),
            Act::Failed(reason) => bail!("{reason}"),
            Act::Unexpected => bail!(
                "internal: {name} is {} in a {} rollout",
                node.step.word(),
                r.strategy.as_str()
            ),
            act => {
                // A step that failed on a machine that is gone failed because it is gone.
                let gone_counts = !matches!(act, Act::Create | Act::Remove);
                if let Err(e) = steps::run(ctx, &r, name, act, deadline) {
                    if gone_counts && !ctx.alive(name) {
                        tracing::warn!("{name}: {e:#}");
                        return Err(NodeFailure::Vanished { node: name.into() }.into());
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// A node failed: record it, stop, and with `on-failure = "rollback"` return the nodes already
/// updated to their previous commit.
fn halt(ctx: &Ctx, name: &str, e: anyhow::Error) -> Result<Rollout> {
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
    ctx.set_phase(|r| {
        r.phase = Phase::Halted;
        r.reason = Some(format!("{name}: {reason}"));
    })?;
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

/// `on-failure = "rollback"`: every node updated in place goes back to its previous commit, a
/// node at a time (drain, `cairn node rollback`, reboot, verdict, health, ready).
fn revert_updated(ctx: &Ctx) -> Result<()> {
    let r = ctx.snapshot()?;
    let updated = r
        .nodes
        .iter()
        .filter(|n| n.step == NodeStep::Done && n.role == Role::Existing);
    for n in updated {
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
pub(super) mod tests {
    use super::*;

    /// A rollout of `nodes` (name, role, step), for the strategies' tests.
    pub fn rollout(strategy: manifest::Strategy, nodes: &[(&str, Role, NodeStep)]) -> Rollout {
        Rollout {
            format: crate::fleet::state::FORMAT,
            fleet: "web".into(),
            strategy,
            to_ref: "r".into(),
            to_commit: "c2".into(),
            to_version: "1.1".into(),
            phase: Phase::Running,
            reason: None,
            started: 0,
            updated: 0,
            nodes: nodes
                .iter()
                .map(|(name, role, step)| Node {
                    name: name.to_string(),
                    role: *role,
                    step: step.clone(),
                    from_commit: "c1".into(),
                    from_version: "1.0".into(),
                    commit: "c1".into(),
                    version: "1.0".into(),
                    health: Health::Healthy,
                })
                .collect(),
        }
    }

    pub fn policy(max_unavailable: u32, max_surge: u32) -> Policy {
        Policy {
            strategy: manifest::Strategy::InPlace,
            max_unavailable,
            max_surge,
            min_healthy: 0,
            bake_time: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            node_timeout: Duration::from_secs(1),
            on_failure: OnFailure::Halt,
        }
    }

    #[test]
    fn every_in_flight_step_has_an_act_in_its_strategy() {
        use NodeStep::*;
        let b = || "b".to_string();
        for (s, role, steps) in [
            (
                manifest::Strategy::InPlace,
                Role::Existing,
                vec![
                    Draining,
                    Upgrading,
                    Rebooting { boot_id: b() },
                    Verifying { boot_id: b() },
                    Baking,
                ],
            ),
            (
                manifest::Strategy::Replace,
                Role::New,
                vec![Creating, Verifying { boot_id: b() }, Joining, Baking],
            ),
            (
                manifest::Strategy::Replace,
                Role::Existing,
                vec![Draining, Removing],
            ),
        ] {
            for step in steps {
                let r = rollout(s, &[("n", role, step.clone())]);
                let act = strategy(s).act(&r.nodes[0]);
                assert!(
                    !matches!(act, Act::Stop | Act::Unexpected | Act::Failed(_)),
                    "{} in {}: {act:?}",
                    step.word(),
                    s.as_str()
                );
            }
        }
    }
}
