//! The I/O of each [`Act`], once for every strategy: drain, deploy, reboot, verify, join, bake,
//! create, remove. Each does its work and persists the node's next step; each is safe to run
//! again from its start when a killed rollout resumes (it checks what is done already).

use crate::fleet::haproxy::RuntimeApi as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Act, Ctx};
use crate::fleet::agent::{self, NodeFailure};
use crate::fleet::haproxy::State as LbState;
use crate::fleet::state::{Health, NodeStep, Rollout};

/// How long HAProxy's own check may take to see a node up.
const UP_LIMIT: Duration = Duration::from_secs(60);

/// Do `act` for node `name` of rollout `r`, and persist the step it leads to.
pub(super) fn run(ctx: &Ctx, r: &Rollout, name: &str, act: Act, deadline: Instant) -> Result<()> {
    match act {
        Act::Drain { then } => {
            // Never fewer than (nodes − max-unavailable) serving, as HAProxy sees them.
            let p = &ctx.fleet.policy;
            let want = ctx.fleet.size().saturating_sub(p.max_unavailable) as usize;
            ctx.lb.wait_others_up(name, want, UP_LIMIT)?;
            if let Err(e) = ctx.lb.drain(name, ctx.fleet.policy.drain_timeout) {
                tracing::warn!("{name}: {e:#}");
            }
            ctx.step(name, then)
        }
        Act::Deploy => deploy(ctx, r, name),
        Act::Reboot { boot_id } => {
            let rec = ctx.node_record(name)?;
            // Not rebooted yet (or not known): reboot now.
            if agent::status(name, &rec.ssh).is_ok_and(|st| st.boot_id == boot_id) {
                agent::reboot(&rec.ssh);
            }
            ctx.step(name, NodeStep::Verifying { boot_id })
        }
        Act::Verify { boot_id, then } => verify(ctx, r, name, &boot_id, then, deadline),
        Act::Join => {
            if ctx.lb.server(name).is_err() {
                let rec = ctx.node_record(name)?;
                ctx.lb.add_server(name, &rec.service)?;
            }
            ctx.step(name, NodeStep::Baking)
        }
        Act::Bake => {
            ctx.lb.set_state(name, LbState::Ready)?;
            ctx.lb.wait_up(name, UP_LIMIT)?;
            bake(ctx, name)?;
            ctx.step(name, NodeStep::Done)
        }
        Act::Create => {
            ctx.provider()?.create(name)?;
            ctx.step(
                name,
                NodeStep::Verifying {
                    boot_id: String::new(),
                },
            )
        }
        Act::Remove => {
            if ctx.lb.server(name).is_ok() {
                ctx.lb.del_server(name)?;
            }
            ctx.provider()?.destroy(name)?;
            ctx.step(name, NodeStep::Removed)
        }
        Act::Stop | Act::Failed(_) | Act::Unexpected => {
            anyhow::bail!("internal: {act:?} has no I/O")
        }
    }
}

/// Deploy the rollout's commit (unless a killed rollout got that far), then reboot into it.
fn deploy(ctx: &Ctx, r: &Rollout, name: &str) -> Result<()> {
    if !ctx.alive(name) {
        return Err(NodeFailure::Vanished { node: name.into() }.into());
    }
    let rec = ctx.node_record(name)?;
    let st = agent::status(name, &rec.ssh)?;
    if st.commit == r.to_commit {
        // Already there (a resumed rollout whose node rebooted before the crash).
        return ctx.step(
            name,
            NodeStep::Verifying {
                boot_id: String::new(),
            },
        );
    }
    if st.default_commit != r.to_commit {
        agent::deploy(&rec.ssh, &st.ref_, &r.to_ref, ctx.fleet.policy.node_timeout)?;
    }
    ctx.step(
        name,
        NodeStep::Rebooting {
            boot_id: st.boot_id,
        },
    )
}

/// Wait for node `name`, booted again (a boot id other than `boot_id`), to call itself healthy
/// on the rollout's commit and for its service to pass its checks; then go on at `then`.
fn verify(
    ctx: &Ctx,
    r: &Rollout,
    name: &str,
    boot_id: &str,
    then: NodeStep,
    deadline: Instant,
) -> Result<()> {
    let rec = ctx.node_record(name)?;
    let st = agent::await_verdict(name, &rec.ssh, boot_id, &r.to_commit, deadline, &|| {
        ctx.alive(name)
    })?;
    agent::await_healthy(&rec.service, &ctx.fleet.service, deadline)?;
    ctx.set(name, |n| {
        n.commit = st.commit.clone();
        n.version = st.version.clone();
        n.health = Health::Healthy;
        n.step = then;
    })
}

/// Watch a node serving for the bake time: as many failed checks in a row as take a node out
/// of the load balancer (`unhealthy-threshold`) fail it.
fn bake(ctx: &Ctx, name: &str) -> Result<()> {
    let rec = ctx.node_record(name)?;
    let s = &ctx.fleet.service;
    let end = Instant::now() + ctx.fleet.policy.bake_time;
    let mut failed = 0;
    while Instant::now() < end {
        crate::base::interrupt::check()?;
        if !ctx.alive(name) {
            return Err(NodeFailure::Vanished { node: name.into() }.into());
        }
        match agent::check(&rec.service, s) {
            Ok(()) => failed = 0,
            Err(e) => {
                failed += 1;
                if failed >= s.unhealthy_threshold {
                    return Err(e).with_context(|| {
                        format!("{name} failed {failed} checks in a row while baking")
                    });
                }
            }
        }
        std::thread::sleep(s.health_interval);
    }
    Ok(())
}
