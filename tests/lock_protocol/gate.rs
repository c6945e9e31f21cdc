//! The health gate (a bad report halts the group) and authentication.

use super::*;

/// Test 4: a bad report halts the group until an operator clears it.
pub(crate) fn a_rolled_back_node_halts_its_group_until_an_operator_clears_it(store: Store) {
    let w = World::start(store, &workers(3));
    let (a, b, c) = (
        params("workers", "a"),
        params("workers", "b"),
        params("workers", "c"),
    );
    let (ca, cb, cc) = (w.node("a"), w.node("b"), w.node("c"));
    let ga = granted(ca.pre_reboot(&a, None));
    let reason = "health check nginx.service failed on 42.20240101";
    let h = cb.report(&b, Verdict::RolledBack, reason).unwrap();
    let halt = h.halted.expect("the group is halted");
    assert!(h.was.is_none());
    assert_eq!(halt.verdict, Some(Verdict::RolledBack));
    assert_eq!(halt.by, "b");
    assert!(halt.reason.contains(reason), "{halt:?}");

    for _ in 0..3 {
        for (cl, p) in [(&cc, &c), (&cb, &b)] {
            let (status, kind, value) = refused(cl.pre_reboot(p, None));
            assert_eq!((status, kind), (409, ErrorKind::GroupHalted), "{value}");
            assert!(
                value.contains(reason),
                "the refusal names the reason: {value}"
            );
        }
    }
    // A holder from before the halt keeps (renews) its slot.
    let r = granted(ca.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert_eq!(r.holder.fencing_token, ga.holder.fencing_token);
    // A second bad report keeps the first halt.
    let h2 = cc.report(&c, Verdict::Failed, "download failed").unwrap();
    assert_eq!(h2.was.as_ref().map(|h| h.by.as_str()), Some("b"));

    let out = w.cairn(&["status", "--json"]);
    let s: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.store, w.store_kind());
    let g = s.groups.iter().find(|g| g.name == "workers").unwrap();
    let shown = g.halted.as_ref().expect("the status shows the halt");
    assert!(shown.reason.contains(reason), "{shown:?}");
    assert_eq!(shown.verdict, Some(Verdict::RolledBack));
    let raw: Value = serde_json::from_slice(&out.stdout).unwrap();
    let raw_g = raw["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "workers")
        .unwrap();
    assert_eq!(raw_g["halted"]["verdict"], "rolled-back");

    let out = w.cairn(&["clear", "workers"]);
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("cleared"), "{said}");
    assert!(w.group(&w.operator(), "workers").halted.is_none());
    let gc = granted(cc.pre_reboot(&c, None));
    assert!(gc.holder.fencing_token > ga.holder.fencing_token);

    let log = w.audit();
    let rep = records(&log, Action::Report, "workers", Some("b"));
    assert_eq!(rep.len(), 1, "{log:?}");
    assert_eq!(rep[0].actor, "node:b");
    assert!(rep[0].detail.contains(reason), "{:?}", rep[0]);
    assert_eq!(records(&log, Action::Report, "workers", Some("c")).len(), 1);
    let halts = records(&log, Action::Halt, "workers", None);
    assert_eq!(halts.len(), 1, "one halt, however many reports: {log:?}");
    assert_eq!(halts[0].actor, "node:b");
    let clears = records(&log, Action::Clear, "workers", None);
    assert_eq!(clears.len(), 1, "{log:?}");
    assert_eq!(clears[0].actor, "operator:alice");
    assert!(clears[0].detail.contains(reason), "{:?}", clears[0]);
    let order: Vec<Action> = log
        .iter()
        .filter(|r| matches!(r.action, Action::Report | Action::Halt | Action::Clear))
        .map(|r| r.action)
        .collect();
    assert_eq!(
        order,
        [Action::Report, Action::Halt, Action::Report, Action::Clear]
    );
}

/// Test 5: authentication.
pub(crate) fn nodes_and_operators_act_only_with_their_own_tokens(store: Store) {
    let w = World::start(store, &format!("{}{ZINCATI_GROUP}", workers(2)));
    let (a, b) = (params("workers", "a"), params("workers", "b"));
    let op = w.operator();

    let (status, kind, value) = refused(w.client(None).pre_reboot(&a, None));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated), "{value}");
    let (status, kind, _) = refused(w.client(None).steady_state(&a, None));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));
    let (status, kind, _) = refused(w.client(None).report(&a, Verdict::Failed, "x"));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));
    // A token of another service's secret does not verify.
    let other = Secret::create(&w.dir.path().join("other.secret")).unwrap();
    let forged = other.token(&cairn::lock::auth::Principal::Node("a".into()));
    let (status, kind, _) = refused(w.client(Some(forged)).pre_reboot(&a, None));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));
    let (status, kind, _) = refused(w.client(Some("garbage".into())).pre_reboot(&a, None));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));

    // Node a's token does not act for b, nor an operator's as a node.
    let ca = w.node("a");
    for r in [
        ca.pre_reboot(&b, None).map(|_| ()),
        ca.steady_state(&b, None).map(|_| ()),
        ca.report(&b, Verdict::RolledBack, "not mine").map(|_| ()),
        op.pre_reboot(&a, None).map(|_| ()),
    ] {
        let (status, kind, value) = refused(r);
        assert_eq!((status, kind), (403, ErrorKind::Forbidden), "{value}");
    }
    // A node is no operator.
    for r in [
        ca.status().map(|_| ()),
        ca.release("workers", "a").map(|_| ()),
        ca.clear("workers").map(|_| ()),
        ca.halt("workers", "because").map(|_| ()),
    ] {
        let (status, kind, value) = refused(r);
        assert_eq!((status, kind), (403, ErrorKind::Forbidden), "{value}");
    }
    let (status, kind, _) = refused(w.client(None).status());
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));
    let (status, kind, _) = refused(w.client(None).release("workers", "a"));
    assert_eq!((status, kind), (401, ErrorKind::Unauthenticated));
    let g = w.group(&op, "workers");
    assert!(g.holders.is_empty() && g.halted.is_none(), "{g:?}");
    // The anonymous group admits requests without a token.
    granted(w.client(None).pre_reboot(&params("default", "z"), None));

    // An operator frees a node's slot; the node learns it lost it.
    let ga = granted(ca.pre_reboot(&a, None));
    let out = w.cairn(&["release", "workers", "a"]);
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains(&format!(
            "released a in group workers (grant {})",
            ga.holder.fencing_token
        )),
        "{said}"
    );
    assert!(w.group(&op, "workers").holders.is_empty());
    let (_, kind, _) = refused(ca.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert_eq!(kind, ErrorKind::LeaseLost);
    let out = w.cairn(&["release", "workers", "a"]);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("held no slot"));

    let log = w.audit();
    let rel = records(&log, Action::OperatorRelease, "workers", Some("a"));
    assert_eq!(rel.len(), 1, "{log:?}");
    assert_eq!(rel[0].actor, "operator:alice");
    assert_eq!(rel[0].fencing_token, Some(ga.holder.fencing_token));
    assert!(
        records(&log, Action::Grant, "workers", Some("b")).is_empty(),
        "{log:?}"
    );
}
