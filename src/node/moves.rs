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

use anyhow::{bail, Result};
use serde::Serialize;

use super::agent::ensure_classified;
use super::config::Config;
use super::journal::{note, Level};
use super::record::{Deployment, EndOfLife, Status};
use super::state::{State, Trial};
use super::view::{id, split_refspec, Ctx};
use super::{now, remove_durably, write_durably, Lock, Paths, REMOTE};
use crate::base::cmd::Cmd;
use crate::store::sysroot::DeploymentInfo;

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
    /// `upgrade`, `rebase`, `rollback`, `cancel` or `none`.
    pub action: &'static str,
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
            action: "none",
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

fn move_to(p: &Paths, new_ref: Option<&str>, opts: MoveOpts) -> Result<Moved> {
    let _lock = Lock::take(p)?;
    let mut ctx = Ctx::open(p)?;
    ensure_classified(&mut ctx)?;
    let state = ctx.state()?;
    if state != State::Steady {
        return Err(state.refusal().into());
    }
    let config = Config::load(&p.config())?;
    let booted = ctx.node.booted()?;
    let origin = booted.origin.as_deref().and_then(split_refspec);
    let remote = origin.map_or(REMOTE, |(r, _)| r).to_string();
    let followed = origin.map(|(_, f)| f.to_string());
    let mut target = match (new_ref, &followed) {
        (Some(r), _) => r.to_string(),
        (None, Some(f)) => f.clone(),
        (None, None) => bail!(
            "the booted deployment follows no remote ref (origin {:?}): `cairn node rebase REF`",
            booted.origin
        ),
    };
    let action = if new_ref.is_some() {
        "rebase"
    } else {
        "upgrade"
    };
    // The commit alone: its signatures are checked before any file is fetched.
    let mut pulled = ctx.node.pull(&remote, &target, true)?;
    let mut bytes = pulled.bytes;
    let mut eol = None;
    let repo = ctx.node.repo();
    for hop in 0..=MAX_EOL_HOPS {
        let meta = crate::store::load_commit(&repo, &pulled.commit)?.meta;
        let Some(next) = meta.endoflife_rebase.filter(|n| *n != target) else {
            break;
        };
        if hop == MAX_EOL_HOPS {
            bail!("{target} is retired too: more than {MAX_EOL_HOPS} retired refs in a row");
        }
        let message = meta.endoflife.unwrap_or_default();
        note(
            Level::Notice,
            "endoflife",
            &format!("{target} has reached its end of life ({message}): moving to {next}"),
        );
        eol = Some(EndOfLife {
            ref_: target.clone(),
            message,
            rebased_to: next.clone(),
            time: now(),
        });
        target = next;
        pulled = ctx.node.pull(&remote, &target, true)?;
        bytes += pulled.bytes;
    }
    let commit = pulled.commit.clone();
    let version = crate::store::load_commit(&repo, &commit)?.meta.version;
    let what = format!(
        "{} ({})",
        &commit[..12],
        version.as_deref().unwrap_or("no version")
    );
    if commit == booted.commit && Some(&target) == followed.as_ref() {
        return Ok(Moved::none(format!(
            "already on {what}, the newest commit of {target}"
        )));
    }
    if let Some(f) = ctx.status.refused(&commit) {
        if !opts.allow_retry {
            bail!(
                "{what} failed its trial on {} ({}); not deploying it again \
                 (--allow-retry to try it anyway)",
                f.time,
                f.reason
            );
        }
    }
    let full = ctx.node.pull(&remote, &target, false)?;
    bytes += full.bytes;
    if full.commit != commit {
        bail!(
            "{target} moved to {} during the pull: try again",
            full.commit
        );
    }
    let new = ctx.node.deploy(&commit, &format!("{remote}:{target}"))?;
    let trial = Trial {
        deployment: id(&new),
        version: version.clone(),
        tries: config.trial_boots,
        armed: now(),
        from: id(&booted),
        attempts: Vec::new(),
    };
    if let Err(e) = arm(&mut ctx, &new, &booted, trial.clone(), opts.allow_retry) {
        undo(&mut ctx, &booted);
        return Err(e.context(format!(
            "arming {what}: nothing deployed, {} is still the default",
            id(&booted)
        )));
    }
    if let Some(e) = &eol {
        ctx.status.endoflife = Some(e.clone());
        ctx.save(&State::Armed {
            trial: trial.clone(),
        })?;
    }
    let message = format!(
        "{what} of {target} deployed as the default, {} trial boot{}; {}",
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
        action,
        default,
        ref_: Some(target),
        tries: Some(trial.tries),
        bytes,
        delta_parts: pulled.delta_parts + full.delta_parts,
        endoflife: eol,
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
    let key = |d: &DeploymentInfo| (d.commit.clone(), d.serial);
    let (action, order) = match &state {
        State::Armed { trial } => {
            // The booted one first, the cancelled trial kept second.
            let order: Vec<_> = std::iter::once(&booted)
                .chain(list.iter().filter(|d| !d.booted))
                .map(key)
                .collect();
            let cancelled = list.iter().find(|d| id(d) == trial.deployment);
            (
                "cancel",
                (order, cancelled.map(|d| d.dir.join(super::MARKER))),
            )
        }
        State::Steady if list.len() < 2 => bail!("no other deployment to roll back to"),
        State::Steady => {
            let first = if booted.index == 0 { &list[1] } else { &booted };
            let order = std::iter::once(first)
                .chain(list.iter().filter(|d| d.index != first.index))
                .map(key)
                .collect();
            ("rollback", (order, None))
        }
        other => return Err(other.refusal().into()),
    };
    let (order, marker) = order;
    // Reorder first, then disarm: a power loss between boots the booted deployment with a
    // countdown that belongs to no trial, which is cleared.
    ctx.node.write_order(&order, false)?;
    if let Some(m) = marker {
        ctx.set_countdown(None)?;
        remove_durably(&m)?;
    }
    let state = state.rollback()?;
    ctx.save(&state)?;
    let default = ctx.node.deployments().first().map(|d| ctx.describe(d));
    let message = match &default {
        Some(d) => format!(
            "{}: {}.{} ({}) is the default{}",
            action,
            &d.commit[..12],
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
    note(Level::Notice, action, &message);
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

/// `cairn node status`: the deployments now, and the records.
pub fn status(p: &Paths) -> Result<Status> {
    let mut ctx = Ctx::open(p)?;
    let state = match ctx.state() {
        Ok(st) => st.name().to_string(),
        Err(e) => format!("unknown ({e:#})"),
    };
    ctx.snapshot(&state);
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
            &d.commit[..12.min(d.commit.len())],
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
            &r.commit[..12.min(r.commit.len())],
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
            &c[..12.min(c.len())],
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
