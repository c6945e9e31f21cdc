//! The node's trial state machine, in Zincati's style: a pure type, one method per transition,
//! no I/O. [`State::from_facts`] reads what a boot (or a command) finds — GRUB's countdown, the
//! booted and listed deployments, the trial record, the trial marker — and the agent
//! (`super::agent`) does the I/O of each state, then takes the transition that follows it.
//!
//! ```text
//!            arm                  reboot (GRUB takes a try)
//!   Steady ───────▶ Armed ────────────────────────────────▶ OnTrial ──good──▶ Passed ──settled──▶ Steady
//!     ▲  ▲            │ cancel (rollback)                      │
//!     │  └────────────┘                              unhealthy │ deadline
//!     │                                                        ▼
//!     │        fell_back                                    Failing ──reboot──▶ OnTrial (a try left)
//!     ├──────────────────── FellBack ◀── tries spent, GRUB booted the previous deployment
//!     │        cleared
//!     └──────────────────── Stale    ◀── a countdown that belongs to no trial in this boot
//! ```
//!
//! The trial is known by identity (commit and deploy serial), never by its place in the list.

use serde::Serialize;

use super::api::NodeState;
pub use super::api::{Attempt, DeploymentId, Trial};

/// The most trial boots GRUB's countdown counts (its `if`/`elif` chain is generated to here).
pub const MAX_TRIES: u32 = 9;

/// GRUB's countdown, `cairn_tries` in its environment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Countdown {
    /// Unset or empty: no trial armed.
    Clear,
    /// Trial boots left (0: spent; on the last trial boot it is 0 too).
    Left(u32),
    /// A value GRUB's chain does not know: GRUB boots the previous deployment, as if spent.
    Unreadable(String),
}

impl Countdown {
    /// Read `cairn_tries` as GRUB's script does.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            None | Some("") => Countdown::Clear,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n <= MAX_TRIES && s == n.to_string() => Countdown::Left(n),
                _ => Countdown::Unreadable(s.to_string()),
            },
        }
    }

    fn armed(&self) -> bool {
        !matches!(self, Countdown::Clear)
    }

    fn spent(&self) -> bool {
        matches!(self, Countdown::Left(0) | Countdown::Unreadable(_))
    }
}

impl std::fmt::Display for Countdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Countdown::Clear => write!(f, "clear"),
            Countdown::Left(n) => write!(f, "cairn_tries={n}"),
            Countdown::Unreadable(s) => write!(f, "cairn_tries={s:?} (unreadable)"),
        }
    }
}

/// What the node reads to know where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub countdown: Countdown,
    pub booted: DeploymentId,
    /// Every deployment, the default first.
    pub deployments: Vec<DeploymentId>,
    /// The trial record, if any.
    pub trial: Option<Trial>,
    /// The booted deployment's own `/etc` holds the trial marker.
    pub marker: bool,
}

/// Why a countdown belongs to no trial in this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaleWhy {
    /// Armed, but no trial is recorded.
    NoTrial,
    /// The deployment on trial is no longer deployed.
    TrialGone,
    /// Armed before the new deployment became the default (a power loss between the two).
    NotDefault,
    /// The booted deployment is the one on trial but its marker is gone (a power loss while a
    /// good trial was being cleared).
    NoMarker,
    /// GRUB's variable holds something its chain does not count.
    Unreadable,
}

/// Where the node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nothing on trial; the countdown is clear.
    Steady,
    /// A new deployment is the default and armed; it has not booted yet.
    Armed { trial: Trial },
    /// This boot is a trial of the deployment; `left` more trial boots after this one.
    OnTrial { trial: Trial, left: u32 },
    /// This trial boot is healthy: to clear the marker and the countdown.
    Passed { trial: Trial },
    /// This trial boot is unhealthy: to record and reboot (GRUB takes the next try, or boots the
    /// previous deployment when none is left).
    Failing {
        trial: Trial,
        left: u32,
        reason: String,
    },
    /// The tries are spent and GRUB booted the previous deployment: to record, drop the failed
    /// deployment, then clear the countdown (in this order: see `super::agent`). A power loss
    /// after the drop leaves a countdown whose trial is gone: [`StaleWhy::TrialGone`].
    FellBack { trial: Trial },
    /// A countdown that belongs to no trial in this boot: to clear.
    Stale {
        countdown: Countdown,
        why: StaleWhy,
        trial: Option<Trial>,
    },
}

/// Why a command is refused in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a trial of {0} is under way (its verdict is not in yet): wait for it")]
    OnTrial(DeploymentId),
    #[error(
        "{0} is deployed and armed for a trial boot: reboot into it, or cancel it with \
         `cairn node rollback`"
    )]
    Armed(DeploymentId),
    #[error("this boot is not classified yet (cairn-trial.service): try again in a moment")]
    Unsettled,
    #[error("the deployment to arm is the booted one")]
    ArmBooted,
    #[error("{0} trial boots: the countdown counts 1 to {MAX_TRIES}")]
    Tries(u32),
}

impl State {
    /// Where the node stands, from what it reads (at boot, or before a command).
    pub fn from_facts(f: &Facts) -> State {
        let Some(trial) = f.trial.clone() else {
            return if f.countdown.armed() {
                State::Stale {
                    countdown: f.countdown.clone(),
                    why: StaleWhy::NoTrial,
                    trial: None,
                }
            } else {
                State::Steady
            };
        };
        let stale = |why| State::Stale {
            countdown: f.countdown.clone(),
            why,
            trial: Some(trial.clone()),
        };
        let position = f.deployments.iter().position(|d| *d == trial.deployment);
        let booted = f.booted == trial.deployment;
        match (&f.countdown, position, booted) {
            // Not armed: a trial record left over (the last step of clearing was lost).
            (Countdown::Clear, _, _) => State::Steady,
            (_, None, _) => stale(StaleWhy::TrialGone),
            (Countdown::Left(n), _, true) if f.marker => State::OnTrial { trial, left: *n },
            (Countdown::Left(_), _, true) => stale(StaleWhy::NoMarker),
            (Countdown::Unreadable(_), _, true) => stale(StaleWhy::Unreadable),
            (c, Some(0), false) if c.spent() => State::FellBack { trial },
            (Countdown::Left(_), Some(0), false) => State::Armed { trial },
            (_, Some(_), false) => stale(StaleWhy::NotDefault),
        }
    }

    /// The trial this state is about, if any.
    pub fn trial(&self) -> Option<&Trial> {
        match self {
            State::Steady => None,
            State::Armed { trial }
            | State::OnTrial { trial, .. }
            | State::Passed { trial }
            | State::Failing { trial, .. }
            | State::FellBack { trial } => Some(trial),
            State::Stale { trial, .. } => trial.as_ref(),
        }
    }

    /// The state as the status document names it ([`NodeState`]).
    pub fn wire(&self) -> NodeState {
        match self {
            State::Steady => NodeState::Steady,
            State::Armed { .. } => NodeState::Armed,
            State::OnTrial { .. } => NodeState::OnTrial,
            State::Passed { .. } => NodeState::Passed,
            State::Failing { .. } => NodeState::Failing,
            State::FellBack { .. } => NodeState::FellBack,
            State::Stale { .. } => NodeState::Stale,
        }
    }

    /// A new deployment was deployed: it goes on trial. Only from `Steady`.
    pub fn arm(self, trial: Trial) -> Result<State, Refusal> {
        if !(1..=MAX_TRIES).contains(&trial.tries) {
            return Err(Refusal::Tries(trial.tries));
        }
        if trial.deployment == trial.from {
            return Err(Refusal::ArmBooted);
        }
        match self {
            State::Steady => Ok(State::Armed { trial }),
            other => Err(other.refusal()),
        }
    }

    /// Why a command that moves the node is refused here (`Steady` refuses nothing).
    pub fn refusal(&self) -> Refusal {
        match self {
            State::Armed { trial } => Refusal::Armed(trial.deployment.clone()),
            State::OnTrial { trial, .. }
            | State::Passed { trial }
            | State::Failing { trial, .. } => Refusal::OnTrial(trial.deployment.clone()),
            State::Steady | State::FellBack { .. } | State::Stale { .. } => Refusal::Unsettled,
        }
    }

    /// The boot's health check passed. A trial boot passes; any other boot stays as it is.
    pub fn good(self) -> State {
        match self {
            State::OnTrial { trial, .. } => State::Passed { trial },
            other => other,
        }
    }

    /// The boot's health check failed. A trial boot is failing (the node reboots it); any other
    /// boot is recorded and stays up, as it is.
    pub fn unhealthy(self, reason: String) -> State {
        match self {
            State::OnTrial { trial, left } => State::Failing {
                trial,
                left,
                reason,
            },
            other => other,
        }
    }

    /// A trial boot missed its deadline (`jobs`: what was still queued).
    pub fn deadline(self, jobs: &str) -> State {
        self.unhealthy(format!("deadline passed; jobs still queued: {jobs}"))
    }

    /// A passed trial's marker and countdown are cleared.
    pub fn settled(self) -> State {
        match self {
            State::Passed { .. } => State::Steady,
            other => other,
        }
    }

    /// A fall-back is recorded, the failed deployment dropped and the countdown cleared.
    pub fn fell_back(self) -> State {
        match self {
            State::FellBack { .. } => State::Steady,
            other => other,
        }
    }

    /// A stale countdown is cleared.
    pub fn cleared(self) -> State {
        match self {
            State::Stale { .. } => State::Steady,
            other => other,
        }
    }

    /// A rollback by hand: from `Steady` (the other deployment becomes the default) or `Armed`
    /// (the trial is cancelled before it booted).
    pub fn rollback(self) -> Result<State, Refusal> {
        match self {
            State::Steady | State::Armed { .. } => Ok(State::Steady),
            other => Err(other.refusal()),
        }
    }
}

#[cfg(test)]
mod tests;
