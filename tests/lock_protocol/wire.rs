//! FleetLock on the wire: the protocol document's exact requests by curl, and cairn's client.

use super::*;

/// POST `body` to `url` as the protocol document does (`curl -s -H "fleet-lock-protocol: true"
/// -d @body.json URL`), the header left out when `header` is false: the HTTP status and the
/// answer as JSON.
pub(crate) fn curl(dir: &Path, url: &str, body: &str, header: bool) -> (u16, Value) {
    let file = dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.current_dir(dir).args(["-s", "--max-time", "10"]);
    if header {
        cmd.args(["-H", "fleet-lock-protocol: true"]);
    }
    let out = cmd
        .args(["-d", "@body.json", url, "-w", "\n%{http_code}"])
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let code: u16 = code.parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{url}: {body:?}: {e}"));
    (code, json)
}

pub(crate) fn zincati_body(id: &str) -> String {
    format!(r#"{{"client_params":{{"group":"default","id":"{id}"}}}}"#)
}

/// Zincati's group: one slot, no credentials.
pub(crate) const ZINCATI_GROUP: &str =
    "[[lock.groups]]\nname = \"default\"\nslots = 1\nallow-anonymous = true\n";

/// Test 1: the protocol document's requests, sent by `curl`.
pub(crate) fn zincati_requests_by_curl_take_renew_and_release_a_slot(store: Store) {
    let w = World::start(store, ZINCATI_GROUP);
    let dir = w.dir.path();
    let pre = format!("{}/v1/pre-reboot", w.url());
    let steady = format!("{}/v1/steady-state", w.url());
    let body = r#"{"client_params":{"group":"default","id":"c988d2509fdf5cdcbed39037c56406fb"}}"#;
    assert_eq!(body, zincati_body(ZINCATI_ID));

    let (code, first) = curl(dir, &pre, body, true);
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["group"], "default");
    assert_eq!(first["id"], ZINCATI_ID);
    assert_eq!(first["renewed"], false);
    assert_eq!(first["version"], 1);
    assert_eq!(first["renew_interval_ms"], RENEW.as_millis() as u64);
    let token = first["fencing_token"].as_u64().expect("a fencing token");

    // Zincati asks again while it holds the slot: the same grant, renewed.
    let (code, again) = curl(dir, &pre, body, true);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["fencing_token"].as_u64(), Some(token));
    assert_eq!(again["renewed"], true);

    // Another node, while the group's one slot is held.
    let other = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let (code, full) = curl(dir, &pre, &zincati_body(other), true);
    assert!(!(200..300).contains(&code), "{code} {full}");
    assert_eq!(code, 409);
    assert_eq!(full["kind"], "failed_lock_semaphore_full", "{full}");
    let value = full["value"].as_str().expect("value is a string");
    assert!(value.contains(ZINCATI_ID), "the holder is named: {value}");
    assert_eq!(
        full.as_object().unwrap().len(),
        2,
        "only kind and value: {full}"
    );

    // Without the protocol's header.
    for url in [&pre, &steady] {
        let (code, e) = curl(dir, url, &zincati_body(other), false);
        assert_eq!(code, 400, "{url}: {e}");
        assert_eq!(e["kind"], "missing_protocol_header", "{url}: {e}");
        assert!(e["value"].is_string());
    }

    // The holder reaches steady state: the slot is freed, and another node gets it.
    let (code, released) = curl(dir, &steady, body, true);
    assert_eq!(code, 200, "{released}");
    assert_eq!(released["fencing_token"].as_u64(), Some(token));
    let (code, again) = curl(dir, &steady, body, true);
    assert_eq!(code, 200, "steady-state is idempotent: {again}");
    assert!(again["fencing_token"].is_null(), "{again}");

    let (code, next) = curl(dir, &pre, &zincati_body(other), true);
    assert_eq!(code, 200, "{next}");
    assert_eq!(next["id"], other);
    assert!(next["fencing_token"].as_u64().unwrap() > token, "{next}");
    let (code, _) = curl(dir, &steady, &zincati_body(other), true);
    assert_eq!(code, 200);

    let log = w.audit();
    let grants = records(&log, Action::Grant, "default", Some(ZINCATI_ID));
    assert_eq!(grants.len(), 1, "a renewal is not a grant: {log:?}");
    assert_eq!(grants[0].fencing_token, Some(token));
    assert_eq!(grants[0].actor, "anonymous");
    assert_eq!(
        records(&log, Action::Release, "default", Some(ZINCATI_ID)).len(),
        1,
        "{log:?}"
    );
    assert_eq!(
        records(&log, Action::Grant, "default", Some(other)).len(),
        1
    );
}

/// A group of `slots` slots for nodes with their own tokens.
pub(crate) fn workers(slots: u32) -> String {
    format!("[[lock.groups]]\nname = \"workers\"\nslots = {slots}\n")
}

/// Test 2: cairn's own client, and fencing tokens.
pub(crate) fn cairns_client_takes_renews_and_releases_with_growing_fencing_tokens(store: Store) {
    let w = World::start(store, &workers(1));
    let (a, b) = (params("workers", "a"), params("workers", "b"));
    let (ca, cb) = (w.node("a"), w.node("b"));
    let mut tokens = Vec::new();

    let g = granted(ca.pre_reboot(&a, None));
    assert!(!g.renewed);
    assert_eq!((g.group.as_str(), g.holder.id.as_str()), ("workers", "a"));
    assert_eq!(g.renew_interval_ms, RENEW.as_millis() as u64);
    assert!(g.holder.expires_ms >= g.holder.renewed_ms + TTL.as_millis() as i64);
    tokens.push(g.holder.fencing_token);
    let r = granted(ca.pre_reboot(&a, Some(g.holder.fencing_token)));
    assert!(r.renewed);
    assert_eq!(r.holder.fencing_token, g.holder.fencing_token);
    assert_eq!(r.holder.since_ms, g.holder.since_ms);
    assert!(r.holder.renewed_ms >= g.holder.renewed_ms);
    let r = granted(ca.pre_reboot(&a, None));
    assert!(r.renewed, "re-entrant without the token too");
    assert_eq!(r.holder.fencing_token, g.holder.fencing_token);

    let (status, kind, value) = refused(cb.pre_reboot(&b, None));
    assert_eq!((status, kind), (409, ErrorKind::FailedLockSemaphoreFull));
    assert!(value.contains("a"), "{value}");

    // A release that names another grant frees nothing.
    let wrong = ca
        .steady_state(&a, Some(g.holder.fencing_token + 1000))
        .unwrap();
    assert_eq!(wrong.fencing_token, None);
    assert_eq!(
        granted(ca.pre_reboot(&a, Some(g.holder.fencing_token)))
            .holder
            .fencing_token,
        g.holder.fencing_token
    );
    let rel = ca.steady_state(&a, Some(g.holder.fencing_token)).unwrap();
    assert_eq!(rel.fencing_token, Some(g.holder.fencing_token));
    assert_eq!((rel.group.as_str(), rel.id.as_str()), ("workers", "a"));

    // The slot passes back and forth; each grant's token is larger than every earlier one.
    for (c, p) in [(&cb, &b), (&ca, &a), (&cb, &b)] {
        let g = granted(c.pre_reboot(p, None));
        assert!(!g.renewed);
        tokens.push(g.holder.fencing_token);
        let (_, kind, _) = refused(if p.id == "a" {
            cb.pre_reboot(&b, None)
        } else {
            ca.pre_reboot(&a, None)
        });
        assert_eq!(kind, ErrorKind::FailedLockSemaphoreFull);
        assert_eq!(
            c.steady_state(p, None).unwrap().fencing_token,
            Some(g.holder.fencing_token)
        );
    }
    assert!(
        tokens.windows(2).all(|t| t[0] < t[1]),
        "tokens only grow: {tokens:?}"
    );
    let log = w.audit();
    let audited: Vec<u64> = records(&log, Action::Grant, "workers", None)
        .iter()
        .map(|r| r.fencing_token.unwrap())
        .collect();
    assert_eq!(audited, tokens, "{log:?}");
    assert!(records(&log, Action::Grant, "workers", Some("a"))
        .iter()
        .all(|r| r.actor == "node:a"));
}
