//! The state machine, exhaustively: every combination of what a boot can find, and every
//! transition from every state.

use super::*;
use NodeState as N;

fn dep(c: char, serial: i32) -> DeploymentId {
    DeploymentId {
        commit: c.to_string().repeat(64),
        serial,
    }
}

fn trial(d: DeploymentId) -> Trial {
    Trial {
        deployment: d,
        version: Some("1.1".into()),
        tries: 3,
        armed: "2026-11-28T21:00:00Z".into(),
        from: dep('a', 0),
        attempts: Vec::new(),
    }
}

/// The booted deployment `a.0`, the new one `b.0`.
fn facts(countdown: Countdown, list: &[DeploymentId], booted: DeploymentId, marker: bool) -> Facts {
    Facts {
        countdown,
        booted,
        deployments: list.to_vec(),
        trial: Some(trial(dep('b', 0))),
        marker,
    }
}

#[test]
fn countdown_reads_as_grubs_chain_does() {
    assert_eq!(Countdown::parse(None), Countdown::Clear);
    assert_eq!(Countdown::parse(Some("")), Countdown::Clear);
    for n in 0..=MAX_TRIES {
        assert_eq!(Countdown::parse(Some(&n.to_string())), Countdown::Left(n));
    }
    for bad in ["10", "03", "-1", "x7", " 1", "1 "] {
        assert_eq!(
            Countdown::parse(Some(bad)),
            Countdown::Unreadable(bad.into()),
            "{bad:?}"
        );
    }
}

/// The cases node-design.md §2.4 walks through, each by name.
#[test]
fn the_designs_cases() {
    let (a, b, c) = (dep('a', 0), dep('b', 0), dep('c', 0));
    // Upgrade ran, not rebooted yet: armed, [b, a], a booted.
    let s = State::from_facts(&facts(
        Countdown::Left(3),
        &[b.clone(), a.clone()],
        a.clone(),
        false,
    ));
    assert!(matches!(s, State::Armed { .. }), "{s:?}");
    // The first trial boot: GRUB took a try, b booted with its marker.
    let s = State::from_facts(&facts(
        Countdown::Left(2),
        &[b.clone(), a.clone()],
        b.clone(),
        true,
    ));
    assert!(matches!(s, State::OnTrial { left: 2, .. }), "{s:?}");
    // The last trial boot: cairn_tries is 0, but b is booted: still a trial.
    let s = State::from_facts(&facts(
        Countdown::Left(0),
        &[b.clone(), a.clone()],
        b.clone(),
        true,
    ));
    assert!(matches!(s, State::OnTrial { left: 0, .. }), "{s:?}");
    // Spent: GRUB booted entry 1 (a).
    let s = State::from_facts(&facts(
        Countdown::Left(0),
        &[b.clone(), a.clone()],
        a.clone(),
        false,
    ));
    assert!(matches!(s, State::FellBack { .. }), "{s:?}");
    // Power loss after the drop, before the clear: b is gone.
    let s = State::from_facts(&facts(
        Countdown::Left(0),
        std::slice::from_ref(&a),
        a.clone(),
        false,
    ));
    assert!(
        matches!(
            s,
            State::Stale {
                why: StaleWhy::TrialGone,
                ..
            }
        ),
        "{s:?}"
    );
    // Power loss between arming and the reorder: [a, b], GRUB took a try from a.
    let s = State::from_facts(&facts(
        Countdown::Left(1),
        &[a.clone(), b.clone()],
        a.clone(),
        false,
    ));
    assert!(
        matches!(
            s,
            State::Stale {
                why: StaleWhy::NotDefault,
                ..
            }
        ),
        "{s:?}"
    );
    // Power loss between removing the marker of a good trial and clearing the countdown.
    let s = State::from_facts(&facts(
        Countdown::Left(2),
        &[b.clone(), a.clone()],
        b.clone(),
        false,
    ));
    assert!(
        matches!(
            s,
            State::Stale {
                why: StaleWhy::NoMarker,
                ..
            }
        ),
        "{s:?}"
    );
    // Armed with no trial recorded.
    let mut f = facts(
        Countdown::Left(1),
        &[b.clone(), a.clone()],
        a.clone(),
        false,
    );
    f.trial = None;
    assert!(matches!(
        State::from_facts(&f),
        State::Stale {
            why: StaleWhy::NoTrial,
            trial: None,
            ..
        }
    ));
    // Not armed: steady, whatever record or marker is left over.
    for booted in [&a, &b, &c] {
        let s = State::from_facts(&facts(
            Countdown::Clear,
            &[b.clone(), a.clone()],
            booted.clone(),
            true,
        ));
        assert_eq!(s, State::Steady);
    }
    // A garbage countdown: GRUB boots entry 1 and writes nothing; the node takes it as spent.
    let s = State::from_facts(&facts(
        Countdown::Unreadable("x7".into()),
        &[b.clone(), a.clone()],
        a.clone(),
        false,
    ));
    assert!(matches!(s, State::FellBack { .. }), "{s:?}");
    let s = State::from_facts(&facts(
        Countdown::Unreadable("x7".into()),
        &[a.clone(), b.clone()],
        b.clone(),
        true,
    ));
    assert!(
        matches!(
            s,
            State::Stale {
                why: StaleWhy::Unreadable,
                ..
            }
        ),
        "{s:?}"
    );
    // The same commit deployed twice: the serial tells them apart.
    let b1 = dep('b', 1);
    let s = State::from_facts(&facts(
        Countdown::Left(0),
        &[b.clone(), b1.clone()],
        b1,
        false,
    ));
    assert!(matches!(s, State::FellBack { .. }), "{s:?}");
}

/// Every combination: countdown, trial recorded or not, where the trial is in the list, which
/// deployment is booted, marker. The properties the agent relies on hold in each.
#[test]
fn every_combination_keeps_the_invariants() {
    let (a, b, c) = (dep('a', 0), dep('b', 0), dep('c', 0));
    let countdowns = [
        Countdown::Clear,
        Countdown::Left(0),
        Countdown::Left(1),
        Countdown::Left(MAX_TRIES),
        Countdown::Unreadable("x".into()),
    ];
    let lists: Vec<Vec<DeploymentId>> = vec![
        vec![b.clone(), a.clone()],
        vec![a.clone(), b.clone()],
        vec![a.clone()],
        vec![c.clone(), a.clone(), b.clone()],
        vec![b.clone(), c.clone(), a.clone()],
    ];
    let mut seen = std::collections::BTreeSet::new();
    for countdown in &countdowns {
        for list in &lists {
            for booted in list {
                for marker in [false, true] {
                    for recorded in [false, true] {
                        let mut f = facts(countdown.clone(), list, booted.clone(), marker);
                        if !recorded {
                            f.trial = None;
                        }
                        let s = State::from_facts(&f);
                        seen.insert(s.wire());
                        let at = list.iter().position(|d| *d == b);
                        let why = format!("{f:?} → {s:?}");
                        // Clear ⇔ steady.
                        assert_eq!(*countdown == Countdown::Clear, s == State::Steady, "{why}");
                        match &s {
                            State::OnTrial { left, .. } => {
                                assert!(recorded && marker && *booted == b, "{why}");
                                assert_eq!(*countdown, Countdown::Left(*left), "{why}");
                            }
                            // Never drop the booted deployment; fall back only from entry 0.
                            State::FellBack { trial } => {
                                assert!(*booted != trial.deployment && at == Some(0), "{why}");
                                assert!(countdown.spent(), "{why}");
                            }
                            State::Armed { .. } => {
                                assert!(*booted != b && at == Some(0), "{why}");
                                assert!(matches!(countdown, Countdown::Left(n) if *n > 0), "{why}");
                            }
                            State::Stale { .. } => assert!(countdown.armed(), "{why}"),
                            State::Steady => {}
                            State::Passed { .. } | State::Failing { .. } => {
                                panic!("a boot never starts in {}: {why}", s.wire())
                            }
                        }
                    }
                }
            }
        }
    }
    for name in [N::Steady, N::Armed, N::OnTrial, N::FellBack, N::Stale] {
        assert!(seen.contains(&name), "{name} never reached");
    }
}

/// One state of each kind.
fn states() -> Vec<State> {
    let t = trial(dep('b', 0));
    vec![
        State::Steady,
        State::Armed { trial: t.clone() },
        State::OnTrial {
            trial: t.clone(),
            left: 1,
        },
        State::Passed { trial: t.clone() },
        State::Failing {
            trial: t.clone(),
            left: 0,
            reason: "r".into(),
        },
        State::FellBack { trial: t.clone() },
        State::Stale {
            countdown: Countdown::Left(1),
            why: StaleWhy::NotDefault,
            trial: Some(t),
        },
    ]
}

#[test]
fn every_transition_from_every_state() {
    let t = trial(dep('c', 0));
    for s in states() {
        let name = s.wire();
        // arm: only from steady.
        let armed = s.clone().arm(t.clone());
        match name {
            N::Steady => assert_eq!(armed, Ok(State::Armed { trial: t.clone() })),
            N::Armed => assert!(matches!(armed, Err(Refusal::Armed(_))), "{name}"),
            N::OnTrial | N::Passed | N::Failing => {
                assert!(matches!(armed, Err(Refusal::OnTrial(_))), "{name}")
            }
            _ => assert_eq!(armed, Err(Refusal::Unsettled), "{name}"),
        }
        // good: a trial passes; nothing else changes.
        let good = s.clone().good();
        match &s {
            State::OnTrial { trial, .. } => assert_eq!(
                good,
                State::Passed {
                    trial: trial.clone()
                }
            ),
            other => assert_eq!(&good, other),
        }
        // unhealthy and deadline: a trial fails (keeping its tries left); nothing else changes.
        for (after, want) in [
            (
                s.clone().unhealthy("check x failed".into()),
                "check x failed".to_string(),
            ),
            (
                s.clone().deadline("x.service(running)"),
                "deadline passed; jobs still queued: x.service(running)".into(),
            ),
        ] {
            match &s {
                State::OnTrial { trial, left } => assert_eq!(
                    after,
                    State::Failing {
                        trial: trial.clone(),
                        left: *left,
                        reason: want
                    }
                ),
                other => assert_eq!(&after, other),
            }
        }
        // Each step's end: only from its own state.
        for (after, from) in [
            (s.clone().settled(), N::Passed),
            (s.clone().fell_back(), N::FellBack),
            (s.clone().cleared(), N::Stale),
        ] {
            if name == from {
                assert_eq!(after, State::Steady, "{name}");
            } else {
                assert_eq!(after, s, "{name}");
            }
        }
        // rollback: from steady, or cancelling an armed trial.
        let r = s.clone().rollback();
        match name {
            N::Steady | N::Armed => assert_eq!(r, Ok(State::Steady)),
            _ => assert!(r.is_err(), "{name}"),
        }
        assert_eq!(s.trial().is_some(), name != N::Steady);
    }
}

#[test]
fn arming_checks_the_trial() {
    let mut t = trial(dep('b', 0));
    t.tries = 0;
    assert_eq!(State::Steady.arm(t.clone()), Err(Refusal::Tries(0)));
    t.tries = MAX_TRIES + 1;
    assert!(State::Steady.arm(t.clone()).is_err());
    t.tries = MAX_TRIES;
    t.deployment = t.from.clone();
    assert_eq!(State::Steady.arm(t), Err(Refusal::ArmBooted));
}

#[test]
fn every_state_has_its_own_word_on_the_wire() {
    let words: std::collections::BTreeSet<NodeState> = states().iter().map(State::wire).collect();
    let all: std::collections::BTreeSet<NodeState> = NodeState::ALL
        .iter()
        .copied()
        .filter(|w| *w != N::Unknown)
        .collect();
    assert_eq!(words, all, "unknown is for a state that cannot be told");
}
