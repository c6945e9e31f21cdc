use super::*;
use crate::node::api::{Booted, Rollback, Unhealthy};

const BOOT: &str = "b-now";

fn target(n: u8) -> Target {
    Target {
        version: format!("v{n}"),
        commit: format!("{n:02x}").repeat(32),
        why: "open".into(),
    }
}

fn held() -> Held {
    Held {
        target: target(2),
        from: target(1).commit,
        slot: Some(Slot {
            group: "app".into(),
            id: "n1".into(),
            fencing_token: 7,
        }),
        since: "2026-12-03T00:00:00Z".into(),
    }
}

fn status(on: u8, state: NodeState, verdict: Verdict) -> Status {
    Status {
        state,
        verdict,
        boot_id: Some(BOOT.into()),
        booted: Some(Booted {
            commit: target(on).commit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn the_happy_path_walks_every_state_once() {
    let s = AgentState::Start.initialized(None).unwrap();
    assert_eq!(s, AgentState::AwaitVerdict { held: None });
    let s = s.settled().unwrap().update_found(target(2)).unwrap();
    let s = s.permitted(held()).unwrap();
    assert_eq!(s.name(), "permitted");
    let s = s.staged().unwrap().rebooting().unwrap();
    assert_eq!(s, AgentState::Rebooting);
}

#[test]
fn a_transition_from_the_wrong_state_is_refused() {
    let e = AgentState::Steady.staged().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the update agent cannot stage from state steady"
    );
    assert!(AgentState::Start.settled().is_err());
    assert!(AgentState::Steady.rebooting().is_err());
    assert!(AgentState::AwaitVerdict { held: None }.rebooting().is_err());
    // Leave for another target than the one available is no leave.
    let other = AgentState::Available { target: target(3) };
    assert!(other.permitted(held()).is_err());
    let s = AgentState::Available { target: target(2) };
    assert_eq!(s.withdrawn().unwrap(), AgentState::Steady);
    let p = AgentState::Permitted { held: held() };
    assert_eq!(p.failed().unwrap(), AgentState::Steady);
    let staged = AgentState::Staged { held: held() };
    assert_eq!(staged.lost().unwrap(), AgentState::Steady);
    assert!(AgentState::Steady.lost().is_err());
}

#[test]
fn the_slot_is_given_back_only_after_a_healthy_boot_of_the_target() {
    let h = held();
    // On trial: wait. A status of another boot: wait.
    assert_eq!(
        settle(&h, &status(2, NodeState::OnTrial, Verdict::Trial), BOOT),
        Settle::Wait
    );
    let mut old = status(2, NodeState::Steady, Verdict::Good);
    old.boot_id = Some("b-before".into());
    assert_eq!(settle(&h, &old, BOOT), Settle::Wait);
    assert_eq!(
        settle(&h, &status(2, NodeState::Steady, Verdict::Good), BOOT),
        Settle::Healthy
    );
}

#[test]
fn a_fall_back_from_the_target_is_a_rollback_with_its_reason() {
    let h = held();
    let mut st = status(1, NodeState::Steady, Verdict::Good);
    st.last_rollback = Some(Rollback {
        commit: target(2).commit,
        serial: 0,
        version: Some("v2".into()),
        reason: "health.d/50-fail: exit 1".into(),
        attempts: Vec::new(),
        booted: crate::node::api::DeploymentId {
            commit: target(1).commit,
            serial: 0,
        },
        time: "t".into(),
    });
    assert_eq!(
        settle(&h, &st, BOOT),
        Settle::RolledBack {
            reason: "health.d/50-fail: exit 1".into()
        }
    );
    let mut bad = status(2, NodeState::Steady, Verdict::Failed);
    bad.last_unhealthy = Some(Unhealthy {
        boot_id: BOOT.into(),
        reason: "nginx down".into(),
        time: "t".into(),
    });
    assert_eq!(
        settle(&h, &bad, BOOT),
        Settle::Unhealthy {
            reason: "nginx down".into()
        }
    );
}

#[test]
fn an_armed_target_that_never_rebooted_reboots_and_a_moved_node_is_stale() {
    let h = held();
    assert_eq!(
        settle(&h, &status(1, NodeState::Armed, Verdict::Good), BOOT),
        Settle::NotRebooted
    );
    assert_eq!(
        settle(&h, &status(3, NodeState::Steady, Verdict::Good), BOOT),
        Settle::Stale {
            booted: target(3).commit
        }
    );
}

#[test]
fn wariness_is_stable_and_spread() {
    let a = wariness_of("0123456789abcdef0123456789abcdef");
    assert_eq!(a, wariness_of("0123456789abcdef0123456789abcdef\n"));
    assert!((0.0..1.0).contains(&a));
    let all: Vec<f64> = (0..200)
        .map(|i| wariness_of(&format!("machine-{i}")))
        .collect();
    let low = all.iter().filter(|w| **w < 0.5).count();
    assert!((70..130).contains(&low), "{low} of 200 below 0.5");
}
