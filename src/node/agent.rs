//! The boot side of the node: what each systemd unit runs, one I/O step per state the boot is
//! found in (see [`super::state`]).
//!
//! - `boot-classify` (`cairn-trial.service`, early in every boot): a stale countdown is cleared;
//!   a fall-back is recorded, the failed deployment dropped, then the countdown cleared (in this
//!   order: a plain swap, or clearing first, leaves a moment where GRUB would boot the failed
//!   deployment after a power loss); a trial boot is noted.
//! - `health-check` (`cairn-health.service`): the verdict ([`super::health`]).
//! - `boot-good` (after `boot-complete.target`): a trial boot passed: its marker goes, then the
//!   countdown, then the deadline timer stops.
//! - `health-failed` (the health check's `OnFailure=`) and `deadline` (the trial deadline
//!   timer): an unhealthy trial boot is recorded and rebooted (GRUB takes the next try, or boots
//!   the previous deployment); any other boot is recorded and stays up.

use std::time::Duration;

use anyhow::{bail, Result};

use super::api::BootClass;
use super::journal::{note, Level};
use super::state::{Countdown, DeploymentId, StaleWhy, State, Trial};
use super::view::{id, Ctx};
use super::{health, now, remove_durably, Lock, Paths};
use crate::base::cmd::Cmd;

/// `cairn node boot-classify`.
pub fn classify(p: &Paths) -> Result<()> {
    let _lock = Lock::take(p)?;
    let mut ctx = Ctx::open(p)?;
    classify_in(&mut ctx).map(|_| ())
}

/// Classify this boot unless a step did already (a command run before `cairn-trial.service`).
pub fn ensure_classified(ctx: &mut Ctx) -> Result<()> {
    if !ctx.p.classified().exists() {
        classify_in(ctx)?;
    }
    Ok(())
}

fn classify_in(ctx: &mut Ctx) -> Result<State> {
    let state = ctx.state()?;
    let booted = id(&ctx.node.booted()?);
    let (class, state) = match state {
        State::Stale {
            ref countdown,
            ref why,
            ref trial,
        } => {
            clear_stale(ctx, &booted, countdown, why, trial.as_ref())?;
            (BootClass::StaleCleared, state.cleared())
        }
        State::FellBack { ref trial } => {
            record_fall_back(ctx, &state, trial, &booted)?;
            (BootClass::FellBack, state.fell_back())
        }
        State::Steady => {
            remove_stale_marker(ctx, &booted)?;
            (BootClass::Normal, state)
        }
        State::OnTrial { ref trial, left } => {
            note_trial_boot(trial, left);
            (BootClass::Trial, state)
        }
        State::Armed { ref trial } => {
            note(
                Level::Warning,
                "armed-not-booted",
                &format!(
                    "boot: {booted} booted while {} is the default and armed: its countdown stays",
                    trial.deployment
                ),
            );
            (BootClass::Armed, state)
        }
        // A boot never starts in these (see State::from_facts).
        State::Passed { .. } | State::Failing { .. } => (BootClass::Normal, state),
    };
    fs_err::create_dir_all(ctx.p.run())?;
    fs_err::write(ctx.p.classified(), format!("{class}\n"))?;
    ctx.status.boot_id = Some(super::boot_id(&ctx.p));
    ctx.status.boot = Some(class);
    ctx.save(&state)?;
    Ok(state)
}

/// A stale countdown: cleared, with a marker it left in a deployment that is not booted.
fn clear_stale(
    ctx: &mut Ctx,
    booted: &DeploymentId,
    countdown: &Countdown,
    why: &StaleWhy,
    trial: Option<&Trial>,
) -> Result<()> {
    ctx.set_countdown(None)?;
    // A marker left in a deployment that is not booted would make its first boot a trial
    // without a countdown.
    if let Some(t) = trial.filter(|t| t.deployment != *booted) {
        let dir = ctx
            .node
            .deployments()
            .into_iter()
            .find(|d| id(d) == t.deployment);
        if let Some(d) = dir {
            remove_durably(&d.dir.join(super::MARKER))?;
        }
    }
    note(
        Level::Warning,
        "stale-countdown",
        &format!("boot: stale countdown ({countdown}, {why:?}): cleared; {booted} is not on trial"),
    );
    Ok(())
}

/// A fall-back: recorded, the failed deployment dropped, then the countdown cleared (in this
/// order: see the module docs).
fn record_fall_back(
    ctx: &mut Ctx,
    state: &State,
    trial: &Trial,
    booted: &DeploymentId,
) -> Result<()> {
    // 1. Record: the failure, the reason, the attempts.
    let reason = ctx.status.fell_back(trial, booted, &now());
    ctx.save(state)?;
    note(
        Level::Warning,
        "fell-back",
        &format!(
            "boot: FELL BACK to {booted}; {} ({}) failed: {reason}",
            trial.deployment,
            trial.version.as_deref().unwrap_or("no version")
        ),
    );
    // 2. Drop the failed deployment: GRUB's entry 1 is then an older one, or none.
    let order: Vec<(String, i32)> = ctx
        .node
        .deployments()
        .iter()
        .filter(|d| id(d) != trial.deployment)
        .map(|d| (d.commit.clone(), d.serial))
        .collect();
    ctx.node.write_order(&order, true)?;
    // 3. Disarm.
    ctx.set_countdown(None)?;
    note(
        Level::Notice,
        "dropped",
        &format!("boot: {} dropped, countdown cleared", trial.deployment),
    );
    Ok(())
}

/// A steady boot: a trial marker left in it goes.
fn remove_stale_marker(ctx: &Ctx, booted: &DeploymentId) -> Result<()> {
    if remove_durably(&ctx.p.marker())? {
        note(
            Level::Warning,
            "stale-marker",
            &format!("boot: no trial armed; the trial marker left in {booted} removed"),
        );
    }
    Ok(())
}

fn note_trial_boot(trial: &Trial, left: u32) {
    note(
        Level::Notice,
        "trial-boot",
        &format!(
            "boot: trial of {} ({}), {left} trial boot{} left after this one",
            trial.deployment,
            trial.version.as_deref().unwrap_or("no version"),
            if left == 1 { "" } else { "s" }
        ),
    );
}

/// `cairn node health-check`: an error (a failed unit, hence `OnFailure=`) when unhealthy.
pub fn health_check(p: &Paths) -> Result<()> {
    let reasons = health::verdict(&p.health_dirs());
    fs_err::create_dir_all(p.run())?;
    if reasons.is_empty() {
        remove_durably(&p.health_reasons())?;
        note(Level::Info, "healthy", "health: healthy");
        return Ok(());
    }
    let all = reasons.join("; ");
    fs_err::write(p.health_reasons(), &all)?;
    note(Level::Warning, "unhealthy", &format!("health: {all}"));
    bail!("unhealthy: {all}")
}

/// `cairn node boot-good`: the boot passed its health check.
pub fn boot_good(p: &Paths) -> Result<()> {
    let _lock = Lock::take(p)?;
    let mut ctx = Ctx::open(p)?;
    ensure_classified(&mut ctx)?;
    let booted = id(&ctx.node.booted()?);
    let boot = super::boot_id(p);
    let state = ctx.state()?.good();
    if let State::Passed { ref trial } = state {
        // Marker first, then the countdown: a power loss between leaves an armed countdown on
        // a deployment that is not on trial, which the next boot clears as stale.
        remove_durably(&ctx.p.marker())?;
        ctx.set_countdown(None)?;
        if let Err(e) = Cmd::new("systemctl")
            .args(["stop", "cairn-trial-deadline.timer"])
            .run()
        {
            // Its condition (the marker) is gone: should it fire, it does nothing.
            tracing::warn!("could not stop the trial deadline: {e:#}");
        }
        ctx.status.good(&booted, &boot, true, &now());
        note(
            Level::Notice,
            "trial-passed",
            &format!(
                "trial passed: {booted} ({}) is good; countdown cleared",
                trial.version.as_deref().unwrap_or("no version")
            ),
        );
        return ctx.save(&state.settled());
    }
    ctx.status.good(&booted, &boot, false, &now());
    ctx.save(&state)
}

/// `cairn node health-failed`: record; reboot a trial boot.
pub fn health_failed(p: &Paths) -> Result<()> {
    let reason = fs_err::read_to_string(p.health_reasons())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "the health check failed (no reason recorded)".into());
    unhealthy(p, reason, false)
}

/// `cairn node deadline`: a trial boot missed its deadline (its unit reboots, whatever this does).
pub fn deadline(p: &Paths) -> Result<()> {
    let jobs = health::queued_jobs();
    unhealthy(p, jobs, true)
}

fn unhealthy(p: &Paths, why: String, deadline: bool) -> Result<()> {
    // The deadline does not wait long for a step that may be what hangs.
    let _lock = if deadline {
        Lock::take_within(p, Duration::from_secs(20))?
    } else {
        Some(Lock::take(p)?)
    };
    let mut ctx = Ctx::open(p)?;
    ensure_classified(&mut ctx)?;
    let state = ctx.state()?;
    let state = if deadline {
        state.deadline(&why)
    } else {
        state.unhealthy(why.clone())
    };
    let booted = id(&ctx.node.booted()?);
    let boot = super::boot_id(p);
    let why = if deadline {
        format!("deadline passed; jobs still queued: {why}")
    } else {
        why
    };
    ctx.status.unhealthy(&boot, &why, &now());
    let State::Failing {
        ref trial,
        left,
        ref reason,
    } = state
    else {
        note(
            Level::Warning,
            "unhealthy-not-trial",
            &format!("boot of {booted} unhealthy ({why}); not a trial boot: staying up"),
        );
        return ctx.save(&state);
    };
    ctx.status.attempt(&boot, reason, &now());
    ctx.save(&state)?;
    let next = if left > 0 {
        format!("{left} trial boot{} left", if left == 1 { "" } else { "s" })
    } else {
        format!("no trial boot left: {} boots next", trial.from)
    };
    note(
        Level::Warning,
        "trial-unhealthy",
        &format!(
            "trial boot of {} unhealthy ({reason}): rebooting; {next}",
            trial.deployment
        ),
    );
    if !deadline {
        Cmd::new("systemctl").arg("reboot").run()?;
    }
    Ok(())
}
