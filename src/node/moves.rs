//! The node's own moves, typed by a person or a fleet tool: `upgrade` (the followed ref's
//! newest signed commit), `rebase REF`, `rollback`, and `status`.
//!
//! An upgrade pulls the commit alone first (its metadata and signatures: the remote's
//! `gpg-verify` refuses an unsigned commit or one signed by another key before any file is
//! fetched), follows `ostree.endoflife-rebase` to the ref that replaces a retired one, refuses a
//! commit that failed its trial before (unless `--allow-retry`), pulls the rest (through a
//! static delta when the server has one), deploys it with the booted `/etc` merged in, and arms
//! it: the new deployment goes second, its marker is written, the trial recorded, GRUB's
//! countdown set, and only then does it become the default. Any failure before that last step
//! leaves the booted deployment the default and nothing armed.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;

use super::agent::ensure_classified;
use super::api::{Action, Deployment, EndOfLife, NodeState, Status};
use super::config::Config;
use super::journal::{note, Level};
use super::state::{State, Trial};
use super::view::{id, split_refspec, Ctx};
use super::{now, remove_durably, write_durably, Lock, Paths, REMOTE};
use crate::base::cmd::Cmd;
use crate::base::text::short_hash;
use crate::store::sysroot::{DeploymentInfo, Pulled};

/// How a move goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveOpts {
    /// Reboot into the new default when it is in place.
    pub reboot: bool,
    /// Deploy a commit that failed its trial before.
    pub allow_retry: bool,
}

/// What a move did.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    /// What it did.
    pub action: Action,
    /// The new default (none when nothing moved).
    pub default: Option<Deployment>,
    /// The ref it follows.
    #[serde(rename = "ref")]
    pub ref_: Option<String>,
    /// Trial boots it was given.
    pub tries: Option<u32>,
    /// Bytes pulled, and static delta parts among them.
    pub bytes: u64,
    pub delta_parts: u32,
    /// The retired ref this move left, if it followed one.
    pub endoflife: Option<EndOfLife>,
    pub message: String,
    pub reboot: bool,
}

impl Moved {
    fn none(message: String) -> Self {
        Moved {
            action: Action::None,
            default: None,
            ref_: None,
            tries: None,
            bytes: 0,
            delta_parts: 0,
            endoflife: None,
            message,
            reboot: false,
        }
    }
}

/// `cairn node upgrade`.
pub fn upgrade(p: &Paths, opts: MoveOpts) -> Result<Moved> {
    move_to(p, None, opts)
}

/// `cairn node rebase REF`.
pub fn rebase(p: &Paths, ref_: &str, opts: MoveOpts) -> Result<Moved> {
    if !crate::store::valid_ref(ref_) {
        bail!("{ref_:?} is not an OSTree ref");
    }
    move_to(p, Some(ref_), opts)
}

/// How many retired refs an upgrade follows in a row.
const MAX_EOL_HOPS: usize = 4;

/// What every move starts with: the node's lock, its view, its settings and the booted
/// deployment, once the boot is classified and the node is steady.
fn begin(p: &Paths) -> Result<(Lock, Ctx, Config, DeploymentInfo)> {
    let lock = Lock::take(p)?;
    let mut ctx = Ctx::open(p)?;
    ensure_classified(&mut ctx)?;
    let state = ctx.state()?;
    if state != State::Steady {
        return Err(state.refusal().into());
    }
    let config = Config::load(&p.config())?;
    let booted = ctx.node.booted()?;
    Ok((lock, ctx, config, booted))
}

fn move_to(p: &Paths, new_ref: Option<&str>, opts: MoveOpts) -> Result<Moved> {
    let (_lock, mut ctx, config, booted) = begin(p)?;
    let mut target = Target::of(&booted, new_ref)?;
    let found = follow_endoflife(&ctx, &mut target)?;
    if found.commit == booted.commit && Some(&target.ref_) == target.followed.as_ref() {
        return Ok(Moved::none(format!(
            "already on {}, the newest commit of {}",
            found.what, target.ref_
        )));
    }
    if let Some(f) = ctx.status.refused(&found.commit) {
        if !opts.allow_retry {
            bail!(
                "{} failed its trial on {} ({}); not deploying it again \
                 (--allow-retry to try it anyway)",
                found.what,
                f.time,
                f.reason
            );
        }
    }
    let full = ctx.node.pull(&target.remote, &target.ref_, false)?;
    if full.commit != found.commit {
        bail!(
            "{} moved to {} during the pull: try again",
            target.ref_,
            full.commit
        );
    }
    let trial = deploy_and_arm(&mut ctx, &target, &found, &booted, config.trial_boots, opts)?;
    report_armed(&ctx, target, found, &full, &trial, opts)
}

/// `cairn node deploy COMMIT`, the update agent's move: one commit of the followed ref — newer
/// or older, as the update graph says — pulled by checksum (its signature checked before any
/// file is fetched), refused when it failed its trial before, then deployed and armed like an
/// upgrade. The deployment keeps following the ref.
pub fn deploy_commit(p: &Paths, commit: &str, opts: MoveOpts) -> Result<Moved> {
    if !crate::store::sysroot::is_checksum(commit) {
        bail!("{commit:?} is not a commit checksum");
    }
    let (_lock, mut ctx, config, booted) = begin(p)?;
    let target = Target::of(&booted, None)?;
    if booted.commit == commit {
        return Ok(Moved::none(format!("already on {}", short_hash(commit))));
    }
    if let Some(f) = ctx.status.refused(commit) {
        if !opts.allow_retry {
            bail!(
                "{} failed its trial on {} ({}); not deploying it again",
                short_hash(commit),
                f.time,
                f.reason
            );
        }
    }
    let head = ctx.node.pull(&target.remote, commit, true)?;
    let version = crate::store::load_commit(&ctx.node.repo(), commit)?
        .meta
        .version;
    let found = Found {
        what: format!(
            "{} ({})",
            short_hash(commit),
            version.as_deref().unwrap_or("no version")
        ),
        commit: commit.to_string(),
        version,
        bytes: head.bytes,
        delta_parts: head.delta_parts,
        eol: None,
    };
    let full = ctx.node.pull(&target.remote, commit, false)?;
    let trial = deploy_and_arm(&mut ctx, &target, &found, &booted, config.trial_boots, opts)?;
    report_armed(&ctx, target, found, &full, &trial, opts)
}

/// Where a move goes: from the remote and ref the booted deployment follows, to a ref.
struct Target {
    action: Action,
    remote: String,
    /// The ref the booted deployment follows.
    followed: Option<String>,
    /// The ref to move to (the followed one for an upgrade, until an end of life moves it).
    ref_: String,
}

impl Target {
    fn of(booted: &DeploymentInfo, new_ref: Option<&str>) -> Result<Self> {
        let origin = booted.origin.as_deref().and_then(split_refspec);
        let followed = origin.map(|(_, f)| f.to_string());
        let ref_ = match (new_ref, &followed) {
            (Some(r), _) => r.to_string(),
            (None, Some(f)) => f.clone(),
            (None, None) => bail!(
                "the booted deployment follows no remote ref (origin {:?}): \
                 `cairn node rebase REF`",
                booted.origin
            ),
        };
        Ok(Target {
            action: if new_ref.is_some() {
                Action::Rebase
            } else {
                Action::Upgrade
            },
            remote: origin.map_or(REMOTE, |(r, _)| r).to_string(),
            followed,
            ref_,
        })
    }
}

/// The commit a move deploys, as its commit-only pulls found it.
struct Found {
    commit: String,
    version: Option<String>,
    /// The commit and its version, for messages.
    what: String,
    /// Bytes pulled so far, and static delta parts of the last pull.
    bytes: u64,
    delta_parts: u32,
    /// The retired ref left on the way, if any.
    eol: Option<EndOfLife>,
}

/// Pull the target's commit alone (its signatures are checked before any file is fetched),
/// following `ostree.endoflife-rebase` from a retired ref to the one that replaces it.
fn follow_endoflife(ctx: &Ctx, target: &mut Target) -> Result<Found> {
    let mut pulled = ctx.node.pull(&target.remote, &target.ref_, true)?;
    let mut bytes = pulled.bytes;
    let mut eol = None;
    let repo = ctx.node.repo();
    for hop in 0..=MAX_EOL_HOPS {
        let meta = crate::store::load_commit(&repo, &pulled.commit)?.meta;
        let Some(next) = meta.endoflife_rebase.filter(|n| *n != target.ref_) else {
            break;
        };
        if hop == MAX_EOL_HOPS {
            bail!(
                "{} is retired too: more than {MAX_EOL_HOPS} retired refs in a row",
                target.ref_
            );
        }
        let message = meta.endoflife.unwrap_or_default();
        note(
            Level::Notice,
            "endoflife",
            &format!(
                "{} has reached its end of life ({message}): moving to {next}",
                target.ref_
            ),
        );
        eol = Some(EndOfLife {
            ref_: std::mem::replace(&mut target.ref_, next.clone()),
            message,
            rebased_to: next,
            time: now(),
        });
        pulled = ctx.node.pull(&target.remote, &target.ref_, true)?;
        bytes += pulled.bytes;
    }
    let version = crate::store::load_commit(&repo, &pulled.commit)?
        .meta
        .version;
    Ok(Found {
        what: format!(
            "{} ({})",
            short_hash(&pulled.commit),
            version.as_deref().unwrap_or("no version")
        ),
        commit: pulled.commit,
        version,
        bytes,
        delta_parts: pulled.delta_parts,
        eol,
    })
}

/// Deploy the pulled commit and arm its trial; on a failed arm, undo it (the booted deployment
/// stays the default).
fn deploy_and_arm(
    ctx: &mut Ctx,
    target: &Target,
    found: &Found,
    booted: &DeploymentInfo,
    tries: u32,
    opts: MoveOpts,
) -> Result<Trial> {
    let refspec = format!("{}:{}", target.remote, target.ref_);
    let new = ctx.node.deploy(&found.commit, &refspec)?;
    let trial = Trial {
        deployment: id(&new),
        version: found.version.clone(),
        tries,
        armed: now(),
        from: id(booted),
        attempts: Vec::new(),
    };
    if let Err(e) = arm(ctx, &new, booted, trial.clone(), opts.allow_retry) {
        undo(ctx, booted);
        return Err(e.context(format!(
            "arming {}: nothing deployed, {} is still the default",
            found.what,
            id(booted)
        )));
    }
    if let Some(e) = &found.eol {
        ctx.status.endoflife = Some(e.clone());
        ctx.save(&State::Armed {
            trial: trial.clone(),
        })?;
    }
    Ok(trial)
}

/// Say what an armed move did, and reboot into it when asked.
fn report_armed(
    ctx: &Ctx,
    target: Target,
    found: Found,
    full: &Pulled,
    trial: &Trial,
    opts: MoveOpts,
) -> Result<Moved> {
    let message = format!(
        "{} of {} deployed as the default, {} trial boot{}; {}",
        found.what,
        target.ref_,
        trial.tries,
        if trial.tries == 1 { "" } else { "s" },
        if opts.reboot {
            "rebooting into it"
        } else {
            "reboot to try it (cairn node rollback cancels it)"
        }
    );
    note(Level::Notice, "armed", &message);
    let default = ctx.node.deployments().first().map(|d| ctx.describe(d));
    if opts.reboot {
        reboot()?;
    }
    Ok(Moved {
        action: target.action,
        default,
        ref_: Some(target.ref_),
        tries: Some(trial.tries),
        bytes: found.bytes + full.bytes,
        delta_parts: found.delta_parts + full.delta_parts,
        endoflife: found.eol,
        message,
        reboot: opts.reboot,
    })
}

/// The trial's marker, record and countdown, then the new deployment first (see the module
/// docs for the order).
fn arm(
    ctx: &mut Ctx,
    new: &DeploymentInfo,
    booted: &DeploymentInfo,
    trial: Trial,
    retry: bool,
) -> Result<()> {
    let state = State::Steady.arm(trial.clone())?;
    let marker = format!(
        "commit={}\nserial={}\ntries={}\narmed={}\n",
        trial.deployment.commit, trial.deployment.serial, trial.tries, trial.armed
    );
    write_durably(&new.dir.join(super::MARKER), marker.as_bytes())?;
    if retry {
        ctx.status.failed.remove(&trial.deployment.commit);
    }
    ctx.status.armed(trial.clone());
    ctx.save(&state)?;
    ctx.set_countdown(Some(trial.tries))?;
    ctx.node.write_order(
        &[
            (new.commit.clone(), new.serial),
            (booted.commit.clone(), booted.serial),
        ],
        true,
    )
}

/// After a failed arm: the booted deployment alone, then no countdown, no trial.
fn undo(ctx: &mut Ctx, booted: &DeploymentInfo) {
    let steps = (|| -> Result<()> {
        ctx.node
            .write_order(&[(booted.commit.clone(), booted.serial)], true)?;
        ctx.set_countdown(None)?;
        ctx.status.trial = None;
        ctx.save(&State::Steady)
    })();
    if let Err(e) = steps {
        tracing::warn!("undoing the failed arm: {e:#} (the next boot clears what is left)");
    }
}

fn reboot() -> Result<()> {
    Cmd::new("systemctl").arg("reboot").run()?;
    Ok(())
}

/// `cairn node rollback`: the other deployment becomes the default; an armed trial that has not
/// booted yet is cancelled instead.
pub fn rollback(p: &Paths, reboot_after: bool) -> Result<Moved> {
    let _lock = Lock::take(p)?;
    let mut ctx = Ctx::open(p)?;
    ensure_classified(&mut ctx)?;
    let state = ctx.state()?;
    let list = ctx.node.deployments();
    let booted = ctx.node.booted()?;
    let plan = RollbackPlan::of(&state, &list, &booted)?;
    // Reorder first, then disarm: a power loss between boots the booted deployment with a
    // countdown that belongs to no trial, which is cleared.
    ctx.node.write_order(&plan.order, false)?;
    if let Some(m) = plan.marker {
        ctx.set_countdown(None)?;
        remove_durably(&m)?;
    }
    let state = state.rollback()?;
    ctx.save(&state)?;
    report_rollback(&ctx, plan.action, reboot_after)
}

/// What a rollback does: the new order of the deployments, and the marker of a trial it
/// cancels.
struct RollbackPlan {
    action: Action,
    order: Vec<(String, i32)>,
    marker: Option<PathBuf>,
}

impl RollbackPlan {
    fn of(state: &State, list: &[DeploymentInfo], booted: &DeploymentInfo) -> Result<Self> {
        let key = |d: &DeploymentInfo| (d.commit.clone(), d.serial);
        match state {
            State::Armed { trial } => {
                // The booted one first, the cancelled trial kept second.
                let order = std::iter::once(booted)
                    .chain(list.iter().filter(|d| !d.booted))
                    .map(key)
                    .collect();
                let cancelled = list.iter().find(|d| id(d) == trial.deployment);
                Ok(RollbackPlan {
                    action: Action::Cancel,
                    order,
                    marker: cancelled.map(|d| d.dir.join(super::MARKER)),
                })
            }
            State::Steady if list.len() < 2 => bail!("no other deployment to roll back to"),
            State::Steady => {
                let first = if booted.index == 0 { &list[1] } else { booted };
                let order = std::iter::once(first)
                    .chain(list.iter().filter(|d| d.index != first.index))
                    .map(key)
                    .collect();
                Ok(RollbackPlan {
                    action: Action::Rollback,
                    order,
                    marker: None,
                })
            }
            other => Err(other.refusal().into()),
        }
    }
}

/// Say what a rollback did, and reboot when asked.
fn report_rollback(ctx: &Ctx, action: Action, reboot_after: bool) -> Result<Moved> {
    let default = ctx.node.deployments().first().map(|d| ctx.describe(d));
    let message = match &default {
        Some(d) => format!(
            "{}: {}.{} ({}) is the default{}",
            action,
            short_hash(&d.commit),
            d.serial,
            d.version.as_deref().unwrap_or("no version"),
            if reboot_after {
                "; rebooting"
            } else {
                "; reboot to boot it"
            }
        ),
        None => format!("{action}: no deployment left"),
    };
    note(Level::Notice, action.as_str(), &message);
    if reboot_after {
        reboot()?;
    }
    Ok(Moved {
        action,
        ref_: default
            .as_ref()
            .and_then(|d| d.origin.as_deref())
            .and_then(split_refspec)
            .map(|(_, r)| r.to_string()),
        default,
        tries: None,
        bytes: 0,
        delta_parts: 0,
        endoflife: None,
        message,
        reboot: reboot_after,
    })
}

/// `cairn node status`: the deployments now, and the records. A state that cannot be told (its
/// facts could not be read) is [`NodeState::Unknown`], the error on stderr.
pub fn status(p: &Paths) -> Result<Status> {
    let mut ctx = Ctx::open(p)?;
    let state = match ctx.state() {
        Ok(st) => st.wire(),
        Err(e) => {
            tracing::error!("the node's state cannot be told: {e:#}");
            NodeState::Unknown
        }
    };
    ctx.snapshot(state);
    Ok(ctx.status)
}

/// `status` for a person.
pub fn render(s: &Status) -> String {
    let mut out = format!("state: {}, verdict on this boot: {}", s.state, s.verdict);
    if let Some(b) = &s.boot {
        out.push_str(&format!(" (this boot: {b})"));
    }
    out.push('\n');
    for d in &s.deployments {
        out.push_str(&format!(
            "{} {} {}.{}  {}  {}  {}\n",
            if d.booted { "*" } else { " " },
            d.index,
            short_hash(&d.commit),
            d.serial,
            d.version.as_deref().unwrap_or("-"),
            d.origin.as_deref().unwrap_or("(no origin)"),
            match &d.signed_by {
                Some(k) => format!("signed by {k}"),
                None => "NOT signed by a trusted key".into(),
            }
        ));
        if let Some(m) = &d.endoflife {
            out.push_str(&format!("      end of life: {m}\n"));
        }
    }
    if let Some(t) = &s.trial {
        out.push_str(&format!(
            "trial: {} ({}), {} trial boots, armed {}, {} unhealthy so far\n",
            t.deployment,
            t.version.as_deref().unwrap_or("-"),
            t.tries,
            t.armed,
            t.attempts.len()
        ));
    }
    if let Some(r) = &s.last_rollback {
        out.push_str(&format!(
            "last automatic rollback: {}.{} ({}) on {}, back on {}: {}\n",
            short_hash(&r.commit),
            r.serial,
            r.version.as_deref().unwrap_or("-"),
            r.time,
            r.booted,
            r.reason
        ));
    }
    for (c, f) in &s.failed {
        out.push_str(&format!(
            "failed: {} ({}) on {}: not deployed again without --allow-retry\n",
            short_hash(c),
            f.version.as_deref().unwrap_or("-"),
            f.time
        ));
    }
    if let Some(e) = &s.endoflife {
        out.push_str(&format!(
            "end of life: {} ended on {} ({}); moved to {}\n",
            e.ref_, e.time, e.message, e.rebased_to
        ));
    }
    out
}
