//! The update agent's state machine, in Zincati's style: a pure state type with one method per
//! transition, and the pure rules that read the node's status. The actor (`actor.rs`) does each
//! state's I/O and asks these methods for the next state; a transition called in the wrong
//! state is an error, never a silent move.
//!
//! ```text
//! Start ─initialized→ AwaitVerdict ─settled→ Steady ─update_found→ Available ─permitted→ Permitted
//!                          ▲                   ▲  ◀──withdrawn──────┘                      │ staged / failed
//!                          │                   └───────────────────────────────────────────┤
//!                       (reboot) ◀── Rebooting ◀──rebooting── Staged ◀──────────────────────┘
//! ```

use serde::{Deserialize, Serialize};

use crate::node::api::{NodeState, Status, Verdict};

/// A release the graph sends the node to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub version: String,
    pub commit: String,
    /// Why the graph names it (the wavefront, a barrier, a recall).
    pub why: String,
}

/// The slot a fleet-lock node holds for an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Slot {
    pub group: String,
    pub id: String,
    pub fencing_token: u64,
}

/// An update in flight, kept across the reboot (`agent.json`): where the node goes, from where,
/// and the slot it holds (none for `immediate` and `periodic`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Held {
    pub target: Target,
    /// The commit booted when the update began.
    pub from: String,
    pub slot: Option<Slot>,
    /// RFC 3339.
    pub since: String,
}

/// The agent's state.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentState {
    /// Just started.
    Start,
    /// Waiting for this boot's health verdict; an update held across the reboot is settled by
    /// it (its slot given back only after a healthy boot).
    AwaitVerdict { held: Option<Held> },
    /// Steady: looks at the graph at each tick.
    Steady,
    /// The graph names a target: ask the strategy for leave.
    Available { target: Target },
    /// Leave given (and a slot held): deploy.
    Permitted { held: Held },
    /// Deployed and armed: reboot.
    Staged { held: Held },
    /// Rebooting; the process ends.
    Rebooting,
}

/// A transition asked of a state that has none such.
#[derive(Debug, thiserror::Error)]
#[error("the update agent cannot {0} from state {1}")]
pub struct Invalid(&'static str, String);

type Next = Result<AgentState, Invalid>;

impl AgentState {
    pub fn name(&self) -> &'static str {
        match self {
            AgentState::Start => "start",
            AgentState::AwaitVerdict { .. } => "await-verdict",
            AgentState::Steady => "steady",
            AgentState::Available { .. } => "available",
            AgentState::Permitted { .. } => "permitted",
            AgentState::Staged { .. } => "staged",
            AgentState::Rebooting => "rebooting",
        }
    }

    fn invalid(&self, what: &'static str) -> Invalid {
        Invalid(what, self.name().to_string())
    }

    /// The record is read: wait for the verdict of this boot.
    pub fn initialized(self, held: Option<Held>) -> Next {
        match self {
            AgentState::Start => Ok(AgentState::AwaitVerdict { held }),
            s => Err(s.invalid("initialize")),
        }
    }

    /// The boot's verdict is in and what was held is settled.
    pub fn settled(self) -> Next {
        match self {
            AgentState::AwaitVerdict { .. } => Ok(AgentState::Steady),
            s => Err(s.invalid("settle")),
        }
    }

    /// The graph names a target.
    pub fn update_found(self, target: Target) -> Next {
        match self {
            AgentState::Steady => Ok(AgentState::Available { target }),
            s => Err(s.invalid("take an update")),
        }
    }

    /// No leave now (outside the window, no slot, the group halted): steady until the next tick.
    pub fn withdrawn(self) -> Next {
        match self {
            AgentState::Available { .. } => Ok(AgentState::Steady),
            s => Err(s.invalid("withdraw an update")),
        }
    }

    /// Leave given for the target.
    pub fn permitted(self, held: Held) -> Next {
        match self {
            AgentState::Available { target } if target == held.target => {
                Ok(AgentState::Permitted { held })
            }
            s => Err(s.invalid("be permitted")),
        }
    }

    /// The target is deployed and armed.
    pub fn staged(self) -> Next {
        match self {
            AgentState::Permitted { held } => Ok(AgentState::Staged { held }),
            s => Err(s.invalid("stage")),
        }
    }

    /// The deploy failed; what was held is given back.
    pub fn failed(self) -> Next {
        match self {
            AgentState::Permitted { .. } => Ok(AgentState::Steady),
            s => Err(s.invalid("fail a deploy")),
        }
    }

    /// The slot was lost before the reboot: the armed target is cancelled.
    pub fn lost(self) -> Next {
        match self {
            AgentState::Staged { .. } | AgentState::AwaitVerdict { held: Some(_) } => {
                Ok(AgentState::Steady)
            }
            s => Err(s.invalid("lose the slot")),
        }
    }

    /// Rebooting into the target (or into a staged target found at start).
    pub fn rebooting(self) -> Next {
        match self {
            AgentState::Staged { .. } | AgentState::AwaitVerdict { held: Some(_) } => {
                Ok(AgentState::Rebooting)
            }
            s => Err(s.invalid("reboot")),
        }
    }
}

/// How an update held across a reboot ended, read from the node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The boot has no verdict yet.
    Wait,
    /// Booted the target and healthy: give the slot back.
    Healthy,
    /// The target failed its trial and the node fell back: report it, then give the slot back.
    RolledBack { reason: String },
    /// The target booted but is unhealthy outside a trial: report it, keep the slot (a person
    /// looks; the slot's TTL frees it).
    Unhealthy { reason: String },
    /// Still on the commit it left, the target armed: the reboot never happened; reboot now.
    NotRebooted,
    /// Neither: the held update is stale (a person moved the node); give the slot back.
    Stale { booted: String },
}

/// Is the verdict of the boot `boot_id` in? Good: ready; failed: the node is unhealthy on what it
/// booted. A status written in another boot has no verdict on this one.
pub fn verdict_in(st: &Status, boot_id: &str) -> Option<bool> {
    if st.boot_id.as_deref() != Some(boot_id) {
        return None;
    }
    match (st.state, st.verdict) {
        (NodeState::OnTrial | NodeState::Passed | NodeState::Failing, _) => None,
        (_, Verdict::Good) => Some(true),
        (_, Verdict::Failed) => Some(false),
        _ => None,
    }
}

/// What became of `held`, by the node's status in the boot `boot_id`.
pub fn settle(held: &Held, st: &Status, boot_id: &str) -> Settle {
    let booted = st
        .booted
        .as_ref()
        .map(|b| b.commit.clone())
        .unwrap_or_default();
    let target = &held.target.commit;
    if st.state == NodeState::Armed && booted == held.from {
        return Settle::NotRebooted;
    }
    let Some(good) = verdict_in(st, boot_id) else {
        return Settle::Wait;
    };
    if let Some(r) = st.last_rollback.as_ref().filter(|r| &r.commit == target) {
        if &booted != target {
            return Settle::RolledBack {
                reason: r.reason.clone(),
            };
        }
    }
    if &booted == target {
        if good {
            return Settle::Healthy;
        }
        return Settle::Unhealthy {
            reason: st
                .last_unhealthy
                .as_ref()
                .map_or("unhealthy".into(), |u| u.reason.clone()),
        };
    }
    Settle::Stale { booted }
}

/// The default wariness: a stable hash of the machine id, from 0.0 to 1.0.
pub fn wariness_of(machine_id: &str) -> f64 {
    let d = crate::base::digest::sha256_hex(
        format!("cairn-rollout-wariness\0{}", machine_id.trim()).as_bytes(),
    );
    let n = u64::from_str_radix(&d[..13], 16).unwrap_or(0);
    n as f64 / (1u64 << 52) as f64
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
