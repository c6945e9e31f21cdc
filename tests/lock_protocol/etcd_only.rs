//! On etcd only: two servers sharing one cluster, and an outage of etcd.

use super::*;

/// Two servers on one etcd cluster act as one service: the slots are shared, either server
/// renews a grant the other made, and exactly one of them audits an expiry.
#[test]
pub(crate) fn two_servers_on_one_etcd_cluster_share_the_slots() {
    let w = World::start(Store::Etcd, &workers(1));
    let port = free_port();
    let text = std::fs::read_to_string(&w.server.config)
        .unwrap()
        .replace(
            &format!("port = {}", w.server.port),
            &format!("port = {port}"),
        )
        .replace("lock-audit.jsonl", "lock-audit-2.jsonl");
    let second = LockServer::start(w.dir.path(), "lock2", port, &text);
    let token = |id: &str| Some(w.token("node", id));
    let (a, b) = (params("workers", "a"), params("workers", "b"));
    let (a1, a2) = (
        Client::new(&w.url(), token("a")),
        Client::new(&second.url(), token("a")),
    );
    let b2 = Client::new(&second.url(), token("b"));
    let ga = granted(a1.pre_reboot(&a, None));
    assert_eq!(
        refused(b2.pre_reboot(&b, None)).1,
        ErrorKind::FailedLockSemaphoreFull
    );
    let r = granted(a2.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert_eq!(r.holder.fencing_token, ga.holder.fencing_token);
    // a stops renewing: one of the two reapers frees its slot, and b gets it.
    let gb = wait_for(
        "b gets a's expired slot",
        TTL + RENEW + Duration::from_secs(3),
        || match b2.pre_reboot(&b, None) {
            Ok(g) => Some(g),
            Err(e) if e.kind() == Some(ErrorKind::FailedLockSemaphoreFull) => None,
            Err(e) => panic!("{e}"),
        },
    );
    assert!(gb.holder.fencing_token > ga.holder.fencing_token);
    let mut log = w.audit();
    log.extend(audit::read(&w.dir.path().join("audit/lock-audit-2.jsonl")).unwrap());
    let expiries = records(&log, Action::Expire, "workers", Some("a"));
    assert_eq!(expiries.len(), 1, "exactly one server audits it: {log:?}");
    assert_eq!(expiries[0].fencing_token, Some(ga.holder.fencing_token));
}

/// etcd goes away: requests are answered `store_unavailable` (not hung, not granted), and the
/// grants are there again when it is back.
#[test]
pub(crate) fn an_etcd_outage_answers_store_unavailable_and_keeps_the_grants() {
    let mut w = World::start(Store::Etcd, &workers(1));
    let a = params("workers", "a");
    let ca = w.node("a");
    let ga = granted(ca.pre_reboot(&a, None));
    w.etcd.as_mut().unwrap().kill(0);
    let started = Instant::now();
    let (status, kind, value) = refused(ca.pre_reboot(&a, Some(ga.holder.fencing_token)));
    assert_eq!(
        (status, kind),
        (503, ErrorKind::StoreUnavailable),
        "{value}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        refused(w.operator().status()).1,
        ErrorKind::StoreUnavailable
    );
    w.etcd.as_mut().unwrap().restart(0);
    let r = wait_for("etcd answers again", Duration::from_secs(10), || {
        match ca.pre_reboot(&a, Some(ga.holder.fencing_token)) {
            Err(e) if e.kind() == Some(ErrorKind::StoreUnavailable) => None,
            r => Some(granted(r)),
        }
    });
    assert_eq!(r.holder.fencing_token, ga.holder.fencing_token);
}
