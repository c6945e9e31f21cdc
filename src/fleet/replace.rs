//! The `replace` strategy: new nodes from the newest image take the old nodes' places.
//!
//! What to do next is derived from the persisted state alone, so that a resumed rollout takes
//! up where it stopped: nodes in flight are finished first; then, while more nodes serve than
//! the fleet's size (new ones made ahead), old ones are drained and discarded; otherwise up to
//! `max-surge` new ones are made (or, without a surge, up to `max-unavailable` old ones are
//! removed first and then replaced).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::haproxy::State as LbState;
use super::rollout::{bake, halt, run_batch, Ctx};
use super::state::{Node, NodeStep, Phase, Role, Rollout};

/// What the replace loop does next. Pure, for the tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Finish these nodes (new ones being made, old ones being removed).
    Finish(Vec<String>),
    /// Drain and discard these old nodes.
    Remove(Vec<String>),
    /// Make this many new nodes.
    Create(u32),
    Done,
}

pub fn next(r: &Rollout, size: u32, max_surge: u32, max_unavailable: u32) -> Next {
    let in_flight: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| n.step.in_flight())
        .map(|n| n.name.clone())
        .collect();
    if !in_flight.is_empty() {
        return Next::Finish(in_flight);
    }
    let old: Vec<&Node> = r
        .nodes
        .iter()
        .filter(|n| n.role == Role::Existing && n.step == NodeStep::Pending)
        .collect();
    let new_serving = r
        .nodes
        .iter()
        .filter(|n| n.role == Role::New && n.step == NodeStep::Done)
        .count() as u32;
    let serving = old.len() as u32 + new_serving;
    if old.is_empty() {
        return Next::Done;
    }
    if serving > size {
        let k = (serving - size).min(old.len() as u32) as usize;
        return Next::Remove(old.iter().take(k).map(|n| n.name.clone()).collect());
    }
    if max_surge > 0 {
        return Next::Create(max_surge.min(old.len() as u32));
    }
    if serving == size {
        let k = max_unavailable.min(old.len() as u32) as usize;
        return Next::Remove(old.iter().take(k).map(|n| n.name.clone()).collect());
    }
    Next::Create(size - serving)
}

/// Run the replace strategy until done, halted, paused or aborted.
pub fn run(ctx: &Ctx) -> Result<Rollout> {
    let policy = &ctx.fleet.policy;
    loop {
        crate::base::interrupt::check()?;
        let r = ctx.snapshot()?;
        let step = next(
            &r,
            ctx.fleet.size(),
            policy.max_surge,
            policy.max_unavailable,
        );
        let batch = match step {
            Next::Done => {
                return ctx.set_phase(Phase::Done, None);
            }
            Next::Finish(names) => names,
            Next::Remove(names) => {
                for n in &names {
                    ctx.step(n, NodeStep::Draining)?;
                }
                names
            }
            Next::Create(k) => {
                match super::rollout::control_path(&ctx.dir)
                    .exists()
                    .then(|| std::fs::read_to_string(super::rollout::control_path(&ctx.dir)))
                {
                    Some(Ok(c)) if c.trim() == "pause" => {
                        return ctx.set_phase(Phase::Paused, None)
                    }
                    Some(Ok(c)) if c.trim() == "abort" => {
                        return ctx
                            .set_phase(Phase::Aborted, Some("aborted by the operator".into()))
                    }
                    _ => {}
                }
                let mut names = Vec::new();
                for _ in 0..k {
                    let name = ctx.provider()?.new_name()?;
                    add_new(ctx, &name)?;
                    names.push(name);
                }
                names
            }
        };
        let results = run_batch(ctx, &batch, drive);
        if let Some((name, e)) = results
            .into_iter()
            .find_map(|(n, r)| r.err().map(|e| (n, e)))
        {
            return halt(ctx, &name, e);
        }
    }
}

/// Record a new node about to be made (before it is, so that a resumed rollout knows of it).
fn add_new(ctx: &Ctx, name: &str) -> Result<()> {
    let r = {
        let mut s = ctx.locked()?;
        let (commit, version) = (s.to_commit.clone(), s.to_version.clone());
        s.nodes.push(Node {
            name: name.to_string(),
            role: Role::New,
            step: NodeStep::Creating,
            from_commit: String::new(),
            from_version: String::new(),
            commit,
            version,
            health: "unknown".into(),
        });
        s.clone()
    };
    ctx.store.save(&r)
}

/// One node of a replace rollout, from wherever it is to `Done` (new) or `Removed` (old).
fn drive(ctx: &Ctx, name: &str) -> Result<()> {
    let policy = &ctx.fleet.policy;
    let deadline = Instant::now() + policy.node_timeout;
    loop {
        crate::base::interrupt::check()?;
        let (r, node) = ctx.node_now(name)?;
        match node.step {
            NodeStep::Creating => {
                ctx.provider()?.create(name)?;
                ctx.step(
                    name,
                    NodeStep::Verifying {
                        boot_id: String::new(),
                    },
                )?;
            }
            NodeStep::Verifying { boot_id } => {
                let rec = ctx.node_record(name)?;
                ctx.verify(name, &rec, &boot_id, &r.to_commit, deadline, || {
                    if ctx.lb.server(name).is_err() {
                        ctx.lb.add_server(name, &rec.service)?;
                    }
                    Ok(())
                })?;
            }
            NodeStep::Baking => {
                let rec = ctx.node_record(name)?;
                ctx.lb.set_state(name, LbState::Ready)?;
                ctx.lb.wait_up(name, Duration::from_secs(60))?;
                bake(ctx, name, &rec)?;
                ctx.step(name, NodeStep::Done)?;
            }
            NodeStep::Draining => {
                if let Err(e) = ctx.lb.drain(name, policy.drain_timeout) {
                    tracing::warn!("{name}: {e:#}");
                }
                if ctx.lb.server(name).is_ok() {
                    ctx.lb.del_server(name)?;
                }
                ctx.provider()?.destroy(name)?;
                ctx.step(name, NodeStep::Removed)?;
            }
            NodeStep::Done | NodeStep::Removed | NodeStep::Reverted => return Ok(()),
            NodeStep::Failed { reason, .. } => anyhow::bail!("{reason}"),
            other => anyhow::bail!("internal: {name} is {} in a replace rollout", other.word()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::manifest::Strategy;

    fn node(name: &str, role: Role, step: NodeStep) -> Node {
        Node {
            name: name.into(),
            role,
            step,
            from_commit: String::new(),
            from_version: String::new(),
            commit: String::new(),
            version: String::new(),
            health: String::new(),
        }
    }

    fn r(nodes: Vec<Node>) -> Rollout {
        Rollout {
            fleet: "w".into(),
            strategy: Strategy::Replace,
            to_ref: "r".into(),
            to_commit: "c".into(),
            to_version: "v".into(),
            phase: Phase::Running,
            reason: None,
            started: 0,
            updated: 0,
            nodes,
        }
    }

    #[test]
    fn surge_makes_new_nodes_before_removing_old_ones() {
        use NodeStep::*;
        use Role::*;
        let old = |n: &str| node(n, Existing, Pending);
        let start = r(vec![old("a"), old("b"), old("c")]);
        assert_eq!(next(&start, 3, 1, 1), Next::Create(1));
        let one_new = r(vec![old("a"), old("b"), old("c"), node("d", New, Done)]);
        assert_eq!(next(&one_new, 3, 1, 1), Next::Remove(vec!["a".into()]));
        let creating = r(vec![old("a"), old("b"), old("c"), node("d", New, Creating)]);
        assert_eq!(next(&creating, 3, 1, 1), Next::Finish(vec!["d".into()]));
        let done = r(vec![
            node("a", Existing, Removed),
            node("b", Existing, Removed),
            node("c", Existing, Removed),
            node("d", New, Done),
            node("e", New, Done),
            node("f", New, Done),
        ]);
        assert_eq!(next(&done, 3, 1, 1), Next::Done);
        // Without a surge: remove first (within max-unavailable), then replace.
        assert_eq!(next(&start, 3, 0, 1), Next::Remove(vec!["a".into()]));
        let gap = r(vec![node("a", Existing, Removed), old("b"), old("c")]);
        assert_eq!(next(&gap, 3, 0, 1), Next::Create(1));
    }
}
