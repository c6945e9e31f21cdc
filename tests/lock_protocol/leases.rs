//! Slots as leases: expiry of a holder that stops renewing, restarts, concurrent requests,
//! a reloaded TTL.

use super::*;

/// Test 3: expiry.
pub(crate) fn a_holder_that_stops_renewing_loses_its_slot_after_the_ttl(store: Store) {
    let w = World::start(store, &workers(2));
    let op = w.operator();
    let (a, c) = (params("workers", "a"), params("workers", "c"));
    let (ca, cc) = (w.node("a"), w.node("c"));
    let ga = granted(ca.pre_reboot(&a, None));
    let gc = granted(cc.pre_reboot(&c, None));
    let t_a = ga.holder.fencing_token;

    // a stops renewing; c renews every renewal interval, and keeps its slot past the TTL.
    let mut last_renewal = Instant::now();
    let freed_at = wait_for(
        "the reaper frees a's slot",
        TTL + RENEW + Duration::from_secs(3),
        || {
            if last_renewal.elapsed() >= RENEW {
                let r = granted(cc.pre_reboot(&c, Some(gc.holder.fencing_token)));
                assert_eq!(r.holder.fencing_token, gc.holder.fencing_token);
                last_renewal = Instant::now();
            }
            let g = w.group(&op, "workers");
            (!g.holders.iter().any(|h| h.id == "a")).then(now_ms)
        },
    );
    let late = freed_at - ga.holder.renewed_ms;
    assert!(
        late >= TTL.as_millis() as i64,
        "freed before its TTL ran out: after {late} ms"
    );
    assert!(
        late <= (TTL + RENEW).as_millis() as i64 + 500,
        "freed {late} ms after its last renewal: later than TTL + renewal interval"
    );
    let g = w.group(&op, "workers");
    assert_eq!(g.holders.len(), 1, "{g:?}");
    assert_eq!(g.holders[0].id, "c");
    assert_eq!(g.holders[0].fencing_token, gc.holder.fencing_token);
    assert!(
        g.holders[0].renewed_ms - gc.holder.since_ms >= TTL.as_millis() as i64 - 1000,
        "c was renewed all along: {g:?}"
    );

    let log = w.audit();
    let grant = records(&log, Action::Grant, "workers", Some("a"));
    assert_eq!(grant.len(), 1, "{log:?}");
    assert_eq!(grant[0].fencing_token, Some(t_a));
    let expire = records(&log, Action::Expire, "workers", Some("a"));
    assert_eq!(expire.len(), 1, "{log:?}");
    assert_eq!(expire[0].fencing_token, Some(t_a));
    assert_eq!(expire[0].actor, "reaper");
    assert!(records(&log, Action::Expire, "workers", Some("c")).is_empty());

    // a comes back believing it holds its grant: it is told it lost it, and gets no slot.
    let (status, kind, value) = refused(ca.pre_reboot(&a, Some(t_a)));
    assert_eq!((status, kind), (409, ErrorKind::LeaseLost), "{value}");
    assert!(value.contains(&t_a.to_string()), "{value}");
    assert!(!w.group(&op, "workers").holders.iter().any(|h| h.id == "a"));
    // Asking afresh, it gets a new grant with a larger token.
    let again = granted(ca.pre_reboot(&a, None));
    assert!(!again.renewed);
    assert!(
        again.holder.fencing_token > t_a && again.holder.fencing_token > gc.holder.fencing_token,
        "{again:?}"
    );
}

/// A server that restarts keeps the grants: the store, not the process, holds them.
pub(crate) fn a_grant_survives_a_restart_of_the_server(store: Store) {
    let mut w = World::start(store, &workers(1));
    let (a, b) = (params("workers", "a"), params("workers", "b"));
    let (ca, cb) = (w.node("a"), w.node("b"));
    let ga = granted(ca.pre_reboot(&a, None));
    w.server.kill();
    w.server.restart();
    let r = granted(ca.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert!(r.renewed);
    assert_eq!(r.holder.fencing_token, ga.holder.fencing_token);
    assert_eq!(r.holder.since_ms, ga.holder.since_ms);
    assert_eq!(
        refused(cb.pre_reboot(&b, None)).1,
        ErrorKind::FailedLockSemaphoreFull
    );
    ca.steady_state(&a, None).unwrap();
    let gb = granted(cb.pre_reboot(&b, None));
    assert!(
        gb.holder.fencing_token > ga.holder.fencing_token,
        "tokens keep growing across a restart: {gb:?}"
    );
}

/// Many nodes at once never hold more slots than the group has.
pub(crate) fn concurrent_requests_never_grant_more_than_the_slots(store: Store) {
    const SLOTS: usize = 3;
    let w = World::start(
        store,
        &format!("[[lock.groups]]\nname = \"workers\"\nslots = {SLOTS}\nallow-anonymous = true\n"),
    );
    let url = w.url();
    let results: Vec<Result<Grant, ClientError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    Client::new(&url, None).pre_reboot(&params("workers", &format!("n{i}")), None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut tokens: Vec<u64> = Vec::new();
    for r in results {
        match r {
            Ok(g) => tokens.push(g.holder.fencing_token),
            Err(e) => assert_eq!(e.kind(), Some(ErrorKind::FailedLockSemaphoreFull), "{e}"),
        }
    }
    assert_eq!(tokens.len(), SLOTS, "exactly the free slots are granted");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), SLOTS, "every grant has its own token");
    assert_eq!(w.group(&w.operator(), "workers").holders.len(), SLOTS);
    assert_eq!(
        records(&w.audit(), Action::Grant, "workers", None).len(),
        SLOTS
    );
}

/// A reload that changes `lease-ttl` applies to the holders' next renewal.
pub(crate) fn a_renewal_after_a_reload_takes_the_new_lease_ttl(store: Store) {
    let w = World::start(store, &workers(1));
    let a = params("workers", "a");
    let ca = w.node("a");
    let op = w.operator();
    let ga = granted(ca.pre_reboot(&a, None));
    w.rewrite_lock(&format!(
        "[lock]\nlease-ttl = \"8s\"\nrenew-interval = \"1s\"\n{}",
        workers(1)
    ));
    w.server.signal(Signal::SIGHUP);
    wait_for("the new TTL", Duration::from_secs(5), || {
        (op.status().unwrap().lease_ttl_ms == 8000).then_some(())
    });
    let r = granted(ca.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert_eq!(
        r.holder.expires_ms - r.holder.renewed_ms,
        8000,
        "the renewal answers the new TTL: {r:?}"
    );
    // Past the old TTL (and a reap), the holder keeps its slot.
    std::thread::sleep(TTL + Duration::from_millis(1000));
    let g = w.group(&op, "workers");
    assert_eq!(g.holders.len(), 1, "a lost its slot on the old TTL: {g:?}");
}

#[test]
pub(crate) fn embedded_a_renewal_after_a_reload_takes_the_new_lease_ttl() {
    a_renewal_after_a_reload_takes_the_new_lease_ttl(Store::Embedded)
}
