//! `cairn lock` end to end, against real processes: a `cairn lock serve` on the embedded store
//! and one on a single-member etcd cluster (Debian's `etcd`), each behaviour run against both
//! (`embedded::…`, `etcd::…`). The FleetLock wire protocol as Zincati sends it (the protocol
//! document's requests, by `curl`), cairn's own client and its fencing tokens, expiry of a
//! holder that stops renewing, the health gate (a bad report halts the group until an operator
//! clears it), authentication, live reconfiguration on SIGHUP, the operator's `cairn lock
//! status`, `/metrics`, restarts and concurrent requests; on etcd alone, two servers sharing one
//! cluster and an outage of etcd. The TTLs are short (3 s, renewal 1 s), and every wait is
//! bounded. `fixed_defects` pins the defects found in review.

mod lock_world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cairn::lock::api::{ClientParams, ErrorKind, Grant, GroupStatus, Status, Verdict};
use cairn::lock::audit::{self, Action, AuditRecord};
use cairn::lock::auth::Secret;
use cairn::lock::client::{Client, ClientError};
use lock_world::{free_port, Etcd, LockServer};
use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

/// The id in the FleetLock protocol document's example.
const ZINCATI_ID: &str = "c988d2509fdf5cdcbed39037c56406fb";
/// The configured TTL and renewal interval (the `[lock]` of every test's configuration).
const TTL: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);
const LOCK: &str = "[lock]\nlease-ttl = \"3s\"\nrenew-interval = \"1s\"\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Embedded,
    Etcd,
}

/// One `cairn lock serve` on its store, in a temporary directory. The server is declared
/// first, so it is killed before etcd and before the directory goes.
struct World {
    server: LockServer,
    etcd: Option<Etcd>,
    store: Store,
    /// The configuration without its `[lock]` (store, service, auth, audit).
    head: String,
    audit_log: PathBuf,
    dir: TempDir,
}

impl World {
    /// Start a server on `store` whose `[lock]` is [`LOCK`] followed by `groups`.
    fn start(store: Store, groups: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        let service = format!("[service]\naddress = \"127.0.0.1\"\nport = {port}\n");
        let (etcd, head, audit_log) = match store {
            Store::Embedded => {
                // The secret and the audit log take their defaults, in the store's directory.
                let state = d.join("state");
                let head = format!("{service}[store]\npath = {:?}\n", state.to_str().unwrap());
                (None, head, state.join("audit.jsonl"))
            }
            Store::Etcd => {
                let etcd_dir = d.join("etcd");
                std::fs::create_dir(&etcd_dir).unwrap();
                let etcd = Etcd::start(&etcd_dir, 1);
                let secret = d.join("lock.secret");
                let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
                    .args(["lock", "secret"])
                    .arg(&secret)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "cairn lock secret: {out:?}");
                let audit_log = d.join("audit/lock-audit.jsonl");
                let endpoints = etcd
                    .endpoints()
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let head = format!(
                    "{service}[etcd3]\nendpoints = [{endpoints}]\n[auth]\nsecret-file = {:?}\n\
                     [audit]\nlog = {:?}\n",
                    secret.to_str().unwrap(),
                    audit_log.to_str().unwrap()
                );
                (Some(etcd), head, audit_log)
            }
        };
        let server = LockServer::start(d, "lock", port, &format!("{head}{LOCK}{groups}"));
        World {
            server,
            etcd,
            store,
            head,
            audit_log,
            dir,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Write a new configuration: the same store and service, this `[lock]` section.
    fn rewrite_lock(&self, lock: &str) {
        std::fs::write(&self.server.config, format!("{}{lock}", self.head)).unwrap();
    }

    /// `cairn lock token --config CFG KIND NAME`.
    fn token(&self, kind: &str, name: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["lock", "token", "--config"])
            .arg(&self.server.config)
            .args([kind, name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn lock token {kind} {name}: {out:?}"
        );
        let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(t.starts_with(&format!("v1.{kind}.{name}.")), "{t}");
        t
    }

    fn client(&self, token: Option<String>) -> Client {
        Client::new(&self.url(), token)
    }

    /// A client with node `id`'s own token.
    fn node(&self, id: &str) -> Client {
        self.client(Some(self.token("node", id)))
    }

    /// A client with operator alice's token.
    fn operator(&self) -> Client {
        self.client(Some(self.token("operator", "alice")))
    }

    /// Run `cairn lock ARGS` against the server as operator alice.
    fn cairn(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("lock")
            .args(args)
            .env("CAIRN_LOCK_URL", self.url())
            .env("CAIRN_LOCK_TOKEN", self.token("operator", "alice"))
            .env_remove("CAIRN_LOCK_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn lock {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.log_text()
        );
        out
    }

    fn audit(&self) -> Vec<AuditRecord> {
        audit::read(&self.audit_log).unwrap()
    }

    /// `group` in the service's status.
    fn group(&self, op: &Client, group: &str) -> GroupStatus {
        let s = op.status().unwrap();
        assert_eq!(s.store, self.store_kind());
        s.groups
            .into_iter()
            .find(|g| g.name == group)
            .unwrap_or_else(|| panic!("no group {group} in the status"))
    }

    fn store_kind(&self) -> &'static str {
        match self.store {
            Store::Embedded => "embedded",
            Store::Etcd => "etcd",
        }
    }
}

fn params(group: &str, id: &str) -> ClientParams {
    ClientParams {
        id: id.into(),
        group: group.into(),
    }
}

/// Poll `f` every 50 ms until it gives a value; fail after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A refusal's status and kind (panics on a success or a transport error).
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, ErrorKind, String) {
    match r {
        Err(ClientError::Refused {
            status,
            kind,
            value,
            ..
        }) => (status, kind, value),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn granted(r: Result<Grant, ClientError>) -> Grant {
    r.unwrap_or_else(|e| panic!("expected a grant: {e}"))
}

/// The records of `action` for `id` (any id when `None`) in `group`.
fn records<'a>(
    log: &'a [AuditRecord],
    action: Action,
    group: &str,
    id: Option<&str>,
) -> Vec<&'a AuditRecord> {
    log.iter()
        .filter(|r| {
            r.action == action && r.group == group && id.is_none_or(|i| r.id.as_deref() == Some(i))
        })
        .collect()
}

/// POST `body` to `url` as the protocol document does (`curl -s -H "fleet-lock-protocol: true"
/// -d @body.json URL`), the header left out when `header` is false: the HTTP status and the
/// answer as JSON.
fn curl(dir: &Path, url: &str, body: &str, header: bool) -> (u16, Value) {
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

fn zincati_body(id: &str) -> String {
    format!(r#"{{"client_params":{{"group":"default","id":"{id}"}}}}"#)
}

/// Zincati's group: one slot, no credentials.
const ZINCATI_GROUP: &str =
    "[[lock.groups]]\nname = \"default\"\nslots = 1\nallow-anonymous = true\n";

/// Test 1: the protocol document's requests, sent by `curl`.
fn zincati_requests_by_curl_take_renew_and_release_a_slot(store: Store) {
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
fn workers(slots: u32) -> String {
    format!("[[lock.groups]]\nname = \"workers\"\nslots = {slots}\n")
}

/// Test 2: cairn's own client, and fencing tokens.
fn cairns_client_takes_renews_and_releases_with_growing_fencing_tokens(store: Store) {
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

/// Test 3: expiry.
fn a_holder_that_stops_renewing_loses_its_slot_after_the_ttl(store: Store) {
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

/// Test 4: a bad report halts the group until an operator clears it.
fn a_rolled_back_node_halts_its_group_until_an_operator_clears_it(store: Store) {
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
fn nodes_and_operators_act_only_with_their_own_tokens(store: Store) {
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

/// Test 6: live reconfiguration on SIGHUP.
fn sighup_applies_a_changed_slot_count_and_keeps_the_holders(store: Store) {
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
fn cairn_lock_status_lists_the_holders_with_since_renewed_and_expires(store: Store) {
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
fn metrics_are_prometheus_text_with_grants_and_holders(store: Store) {
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

/// A server that restarts keeps the grants: the store, not the process, holds them.
fn a_grant_survives_a_restart_of_the_server(store: Store) {
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
fn concurrent_requests_never_grant_more_than_the_slots(store: Store) {
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

/// Two servers on one etcd cluster act as one service: the slots are shared, either server
/// renews a grant the other made, and exactly one of them audits an expiry.
#[test]
fn two_servers_on_one_etcd_cluster_share_the_slots() {
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
fn an_etcd_outage_answers_store_unavailable_and_keeps_the_grants() {
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

/// A reload that changes `lease-ttl` applies to the holders' next renewal.
fn a_renewal_after_a_reload_takes_the_new_lease_ttl(store: Store) {
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

/// Defects found in review, each pinned by a test that failed before its fix.
mod fixed_defects {
    use super::*;

    #[test]
    fn a_healthy_report_in_a_halted_group_answers_the_halt() {
        let w = World::start(Store::Embedded, &workers(2));
        w.node("b")
            .report(&params("workers", "b"), Verdict::RolledBack, "broken")
            .unwrap();
        let h = w
            .node("c")
            .report(&params("workers", "c"), Verdict::Healthy, "fine")
            .unwrap();
        assert!(w.group(&w.operator(), "workers").halted.is_some());
        assert!(
            h.halted.is_some(),
            "the group is still halted, the answer says otherwise: {h:?}"
        );
    }

    #[test]
    fn a_sighup_while_the_server_starts_is_caught_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("lock.toml");
        std::fs::write(
            &cfg,
            format!(
                "[service]\naddress = \"127.0.0.1\"\nport = {port}\n[store]\npath = {:?}\n{LOCK}",
                dir.path().join("state").to_str().unwrap()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["lock", "serve", "--config"])
            .arg(&cfg)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // No process can catch a signal before its first instructions run: send it as soon as
        // the process says it catches SIGHUP (SigCgt in /proc), while it is still starting.
        let status = format!("/proc/{}/status", child.id());
        wait_for(
            "the process catches SIGHUP",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&status).ok()?;
                let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
                (mask & 1 == 1).then_some(())
            },
        );
        nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let outcome = wait_for(
            "the server answers or exits",
            Duration::from_secs(10),
            || {
                if let Some(st) = child.try_wait().unwrap() {
                    return Some(Err(st));
                }
                ureq::get(&url)
                    .timeout(Duration::from_secs(1))
                    .call()
                    .ok()
                    .map(|_| Ok(()))
            },
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            outcome.is_ok(),
            "the server died of the SIGHUP: {outcome:?}"
        );
    }

    #[test]
    fn etcd_holders_gauge_drops_to_zero_when_the_last_holder_of_a_group_leaves() {
        let w = World::start(Store::Etcd, &workers(1));
        let p = params("other", "a");
        let ca = w.node("a");
        let scrape = || {
            ureq::get(&format!("{}/metrics", w.url()))
                .call()
                .unwrap()
                .into_string()
                .unwrap()
        };
        granted(ca.pre_reboot(&p, None));
        assert!(scrape().contains("cairn_lock_holders{group=\"other\"} 1\n"));
        ca.steady_state(&p, None).unwrap();
        let text = scrape();
        assert!(
            !text.contains("cairn_lock_holders{group=\"other\"} 1\n"),
            "the gauge still counts the holder that left:\n{text}"
        );
    }

    #[test]
    fn etcd_a_renewal_after_a_reload_takes_the_new_lease_ttl() {
        super::a_renewal_after_a_reload_takes_the_new_lease_ttl(Store::Etcd)
    }
}

#[test]
fn embedded_a_renewal_after_a_reload_takes_the_new_lease_ttl() {
    a_renewal_after_a_reload_takes_the_new_lease_ttl(Store::Embedded)
}

/// Each behaviour against each store, as its own test (`embedded::…`, `etcd::…`).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $name() {
                super::$name(super::Store::Embedded)
            })*
        }
        mod etcd {
            $(#[test]
            fn $name() {
                super::$name(super::Store::Etcd)
            })*
        }
    };
}

both_stores!(
    zincati_requests_by_curl_take_renew_and_release_a_slot,
    cairns_client_takes_renews_and_releases_with_growing_fencing_tokens,
    a_holder_that_stops_renewing_loses_its_slot_after_the_ttl,
    a_rolled_back_node_halts_its_group_until_an_operator_clears_it,
    nodes_and_operators_act_only_with_their_own_tokens,
    sighup_applies_a_changed_slot_count_and_keeps_the_holders,
    cairn_lock_status_lists_the_holders_with_since_renewed_and_expires,
    metrics_are_prometheus_text_with_grants_and_holders,
    a_grant_survives_a_restart_of_the_server,
    concurrent_requests_never_grant_more_than_the_slots,
);
