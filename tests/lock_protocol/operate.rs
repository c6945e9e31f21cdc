//! What an operator sees and changes: live slot counts on SIGHUP, `cairn lock status`, metrics.

use super::*;

/// Test 6: live reconfiguration on SIGHUP.
pub(crate) fn sighup_applies_a_changed_slot_count_and_keeps_the_holders(store: Store) {
    let group = |slots: u32| {
        format!("[[lock.groups]]\nname = \"workers\"\nslots = {slots}\nallow-anonymous = true\n")
    };
    let w = World::start(store, &group(1));
    let op = w.operator();
    let cl = w.client(None);
    let (a, b, c) = (
        params("workers", "a"),
        params("workers", "b"),
        params("workers", "c"),
    );
    let ga = granted(cl.pre_reboot(&a, None));
    let t_a = ga.holder.fencing_token;
    assert_eq!(
        refused(cl.pre_reboot(&b, None)).1,
        ErrorKind::FailedLockSemaphoreFull
    );

    // Grow to 2 slots.
    w.rewrite_lock(&format!("{LOCK}{}", group(2)));
    w.server.signal(Signal::SIGHUP);
    let gb = wait_for("b gets the new slot", Duration::from_secs(5), || {
        match cl.pre_reboot(&b, None) {
            Ok(g) => Some(g),
            Err(e) if e.kind() == Some(ErrorKind::FailedLockSemaphoreFull) => None,
            Err(e) => panic!("{e}"),
        }
    });
    let t_b = gb.holder.fencing_token;
    let r = granted(cl.pre_reboot(&a, Some(t_a)));
    assert!(r.renewed);
    assert_eq!(
        r.holder.fencing_token, t_a,
        "a keeps its slot through the reload"
    );
    assert_eq!(w.group(&op, "workers").slots, 2);
    assert!(w.server.log_text().contains("reloaded"));

    // Shrink to 1 slot with 2 holders: both keep theirs, nobody else gets one.
    w.rewrite_lock(&format!("{LOCK}{}", group(1)));
    w.server.signal(Signal::SIGHUP);
    wait_for("the status shows 1 slot", Duration::from_secs(5), || {
        (w.group(&op, "workers").slots == 1).then_some(())
    });
    assert_eq!(
        refused(cl.pre_reboot(&c, None)).1,
        ErrorKind::FailedLockSemaphoreFull
    );
    for (p, t) in [(&a, t_a), (&b, t_b)] {
        assert_eq!(granted(cl.pre_reboot(p, Some(t))).holder.fencing_token, t);
    }
    assert_eq!(
        cl.steady_state(&a, Some(t_a)).unwrap().fencing_token,
        Some(t_a)
    );
    let (_, kind, value) = refused(cl.pre_reboot(&c, None));
    assert_eq!(
        kind,
        ErrorKind::FailedLockSemaphoreFull,
        "1 holder fills 1 slot: {value}"
    );
    assert_eq!(
        cl.steady_state(&b, Some(t_b)).unwrap().fencing_token,
        Some(t_b)
    );
    let gc = granted(cl.pre_reboot(&c, None));
    assert!(gc.holder.fencing_token > t_b);

    // A configuration with an error is refused; the old one stays.
    w.rewrite_lock(&format!("{LOCK}{}", group(5)).replace("\"3s\"", "\"soon\""));
    w.server.signal(Signal::SIGHUP);
    let log = wait_for(
        "the server refuses the configuration",
        Duration::from_secs(5),
        || {
            let log = w.server.log_text();
            log.contains("not reloaded").then_some(log)
        },
    );
    assert!(log.contains("key `lock.lease-ttl`"), "{log}");
    let r = granted(cl.pre_reboot(&c, Some(gc.holder.fencing_token)));
    assert_eq!(r.holder.fencing_token, gc.holder.fencing_token);
    let s = op.status().unwrap();
    assert_eq!(s.lease_ttl_ms, TTL.as_millis() as u64);
    let g = s.groups.iter().find(|g| g.name == "workers").unwrap();
    assert_eq!(g.slots, 1, "{g:?}");
    assert_eq!(
        refused(cl.pre_reboot(&a, None)).1,
        ErrorKind::FailedLockSemaphoreFull
    );

    let slots: Vec<String> = records(&w.audit(), Action::Slots, "workers", None)
        .iter()
        .map(|r| {
            assert_eq!(r.actor, "config");
            r.detail.clone()
        })
        .collect();
    assert_eq!(slots.len(), 3, "start, grow, shrink: {slots:?}");
    assert!(slots[1].starts_with("slots 1 → 2"), "{slots:?}");
    assert!(slots[2].starts_with("slots 2 → 1"), "{slots:?}");
}

/// Test 7: the operator's status, as people read it.
pub(crate) fn cairn_lock_status_lists_the_holders_with_since_renewed_and_expires(store: Store) {
    let w = World::start(store, &workers(2));
    let ga = granted(w.node("a").pre_reboot(&params("workers", "a"), None));
    let gb = granted(w.node("b").pre_reboot(&params("workers", "b"), None));
    let out = w.cairn(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("({} store, lease TTL 3 s)", w.store_kind())),
        "{text}"
    );
    assert!(
        text.contains("group workers: 2 of 2 slots held, open"),
        "{text}"
    );
    let status = w.operator().status().unwrap();
    let shown = &status
        .groups
        .iter()
        .find(|g| g.name == "workers")
        .unwrap()
        .holders;
    for g in [&ga, &gb] {
        let h = shown.iter().find(|h| h.id == g.holder.id).unwrap();
        let when = |ms: i64| cairn::base::time::rfc3339(ms.div_euclid(1000));
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", h.id)))
            .unwrap_or_else(|| panic!("no line for {}: {text}", h.id));
        for want in [
            format!("grant {}", g.holder.fencing_token),
            format!("since {}", when(h.since_ms)),
            format!("renewed {}", when(h.renewed_ms)),
            format!("expires {}", when(h.expires_ms)),
        ] {
            assert!(line.contains(&want), "{line:?} lacks {want:?}");
        }
        assert_eq!(h.expires_ms - h.renewed_ms, TTL.as_millis() as i64);
    }

    w.operator()
        .halt("workers", "frozen for the audit")
        .unwrap();
    let text = String::from_utf8(w.cairn(&["status"]).stdout).unwrap();
    assert!(text.contains("HALTED since"), "{text}");
    assert!(
        text.contains("by operator:alice: frozen for the audit"),
        "{text}"
    );
}

/// Test 8: Prometheus metrics.
pub(crate) fn metrics_are_prometheus_text_with_grants_and_holders(store: Store) {
    let w = World::start(store, &format!("{}{ZINCATI_GROUP}", workers(2)));
    granted(w.node("a").pre_reboot(&params("workers", "a"), None));
    granted(w.node("b").pre_reboot(&params("workers", "b"), None));
    w.node("b")
        .steady_state(&params("workers", "b"), None)
        .unwrap();
    let _ = w.client(None).pre_reboot(&params("workers", "c"), None);
    let r = ureq::get(&format!("{}/metrics", w.url()))
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(
        ct.starts_with("application/openmetrics-text") || ct.starts_with("text/plain"),
        "{ct}"
    );
    let text = r.into_string().unwrap();
    for want in [
        "# TYPE cairn_lock_grants counter",
        "cairn_lock_grants_total{group=\"workers\"} 2",
        "# TYPE cairn_lock_holders gauge",
        "cairn_lock_holders{group=\"workers\"} 1",
        "cairn_lock_holders{group=\"default\"} 0",
        "cairn_lock_slots{group=\"workers\"} 2",
        "cairn_lock_releases_total{group=\"workers\"} 1",
        "cairn_lock_requests_total{endpoint=\"pre-reboot\",outcome=\"unauthenticated\"} 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "/metrics lacks the line {want:?}:\n{text}"
        );
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
        assert!(name.starts_with("cairn_lock_"), "{l:?}");
        assert!(value.parse::<f64>().is_ok(), "{l:?}");
    }
}
