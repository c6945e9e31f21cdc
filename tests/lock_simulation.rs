//! The lock service at fleet scale, on loopback: 1,000 simulated nodes in 12 groups (1 to 5
//! slots) against three `cairn lock serve` processes on a three-member etcd cluster. During the
//! run one etcd member and one lock server are SIGKILLed and restarted, and 5 % of the nodes die
//! while they hold a slot. A checker over the history that etcd itself recorded (a watch of the
//! service's keys from revision 1) and the nodes' own records proves: never more holders in a
//! group than its slots, every surviving node updated exactly once, every dead holder's slot
//! free within TTL + one renewal interval, no grant lost or given twice. A failed check prints
//! the offending history.
//!
//! `bench_grants_per_second` (ignored; `bench/lock.sh` runs it) prints the service's grants per
//! second and grant latency beside the floor measured on the same cluster in the same run.

mod lock_world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::lock::api::{ClientParams, ErrorBody, Grant, LockRequest, Released};
use cairn::lock::auth::{Principal, Secret};
use etcd_client::{Client, EventType, WatchOptions};
use lock_world::{free_port, Etcd, LockServer};

const PREFIX: &str = "cairn/lock/v1";
const TTL: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);

/// What a simulated node saw, at the test's own clock (its fields are printed in a failed
/// check's history).
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Seen {
    Granted { token: u64 },
    Renewed { token: u64 },
    Lost { token: u64 },
    Updated { token: u64 },
    Released { token: Option<u64> },
    Died { token: u64 },
}

#[derive(Debug, Clone)]
struct Record {
    at: Instant,
    node: usize,
    seen: Seen,
}

/// One change of a holder key, as the watch delivered it.
#[derive(Debug, Clone)]
struct Change {
    at: Instant,
    revision: i64,
    group: String,
    key: String,
    put: bool,
    create_revision: i64,
}

struct Shared {
    records: Mutex<Vec<Record>>,
    started: Instant,
}

impl Shared {
    fn note(&self, node: usize, seen: Seen) {
        self.records.lock().unwrap().push(Record {
            at: Instant::now(),
            node,
            seen,
        });
    }
}

fn group_of(i: usize, groups: &[(String, u32)]) -> &str {
    // Nodes spread by slot count, so every group takes about as long.
    let total: u32 = groups.iter().map(|g| g.1).sum();
    let mut k = (i as u32) % total;
    for (name, slots) in groups {
        if k < *slots {
            return name;
        }
        k -= slots;
    }
    unreachable!()
}

fn config(
    port: u16,
    name: &str,
    endpoints: &[String],
    secret: &str,
    audit: &str,
    groups: &[(String, u32)],
) -> String {
    let eps = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut c = format!(
        "[service]\naddress = \"127.0.0.1\"\nport = {port}\nname = \"{name}\"\n\
         [etcd3]\nendpoints = [{eps}]\nprefix = \"{PREFIX}\"\n\
         [lock]\nlease-ttl = \"{}s\"\nrenew-interval = \"{}s\"\n\
         [auth]\nsecret-file = \"{secret}\"\n[audit]\nlog = \"{audit}\"\n",
        TTL.as_secs(),
        RENEW.as_secs()
    );
    for (g, s) in groups {
        c.push_str(&format!("[[lock.groups]]\nname = \"{g}\"\nslots = {s}\n"));
    }
    c
}

/// The world: etcd, three servers, the secret.
struct World {
    _dir: tempfile::TempDir,
    etcd: Etcd,
    servers: Vec<LockServer>,
    secret: Secret,
    audits: Vec<std::path::PathBuf>,
}

fn world(groups: Vec<(String, u32)>) -> World {
    let dir = tempfile::Builder::new()
        .prefix("cairn-lock-sim-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let etcd = Etcd::start(dir.path(), 3);
    let secret_path = dir.path().join("secret");
    let secret = Secret::create(&secret_path).unwrap();
    let mut servers = Vec::new();
    let mut audits = Vec::new();
    for i in 0..3 {
        let audit = dir.path().join(format!("audit-{i}.jsonl"));
        let port = free_port();
        let name = format!("lock-{i}");
        let text = config(
            port,
            &name,
            &etcd.endpoints(),
            &secret_path.display().to_string(),
            &audit.display().to_string(),
            &groups,
        );
        servers.push(LockServer::start(dir.path(), &name, port, &text));
        audits.push(audit);
    }
    World {
        _dir: dir,
        etcd,
        servers,
        secret,
        audits,
    }
}

/// A FleetLock call; `Ok` on 2xx, else the error body (or a transport error as kind `None`).
async fn call<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &LockRequest,
) -> Result<T, Option<ErrorBody>> {
    let r = http
        .post(url)
        .header("fleet-lock-protocol", "true")
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|_| None)?;
    if r.status().is_success() {
        r.json::<T>().await.map_err(|_| None)
    } else {
        Err(r.json::<ErrorBody>().await.ok())
    }
}

/// One simulated node: take a slot, renew it while it "updates", check its fencing token, "reboot",
/// release. A dying node stops for good once it holds its slot.
async fn node(
    i: usize,
    group: String,
    dies: bool,
    token: String,
    urls: Arc<Vec<String>>,
    http: reqwest::Client,
    shared: Arc<Shared>,
) {
    let p = ClientParams {
        id: format!("node-{i:04}"),
        group,
    };
    let mut attempt = i;
    let mut next_url = |path: &str| {
        attempt += 1;
        format!("{}{path}", urls[attempt % urls.len()])
    };
    tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % 2000)).await;
    loop {
        // Take a slot.
        let req = LockRequest {
            client_params: p.clone(),
            fencing_token: None,
        };
        let grant: Grant = match call(&http, &next_url("/v1/pre-reboot"), &token, &req).await {
            Ok(g) => g,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(150 + (i as u64 % 7) * 20)).await;
                continue;
            }
        };
        let t = grant.holder.fencing_token;
        shared.note(i, Seen::Granted { token: t });
        if dies {
            shared.note(i, Seen::Died { token: t });
            return;
        }
        // "Download and stage" for a while, renewing on time, then check the token and reboot.
        let held = Instant::now();
        let mut lost = false;
        let renew = LockRequest {
            client_params: p.clone(),
            fencing_token: Some(t),
        };
        for wait in [RENEW, Duration::from_millis(200)] {
            tokio::time::sleep(wait).await;
            loop {
                match call::<Grant>(&http, &next_url("/v1/pre-reboot"), &token, &renew).await {
                    Ok(g) if g.holder.fencing_token == t => {
                        shared.note(i, Seen::Renewed { token: t });
                        break;
                    }
                    Err(Some(e)) if e.kind == cairn::lock::api::ErrorKind::LeaseLost => {
                        shared.note(i, Seen::Lost { token: t });
                        lost = true;
                        break;
                    }
                    _ if held.elapsed() < TTL => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => {
                        shared.note(i, Seen::Lost { token: t });
                        lost = true;
                        break;
                    }
                }
            }
            if lost {
                break;
            }
        }
        if lost {
            continue;
        }
        // The last renewal was the fencing check: reboot now.
        shared.note(i, Seen::Updated { token: t });
        tokio::time::sleep(Duration::from_millis(200)).await;
        loop {
            match call::<Released>(&http, &next_url("/v1/steady-state"), &token, &renew).await {
                Ok(r) => {
                    shared.note(
                        i,
                        Seen::Released {
                            token: r.fencing_token,
                        },
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Record every change of the holder keys from revision 1, resuming after a broken stream.
async fn watch(
    endpoint: String,
    log: Arc<Mutex<Vec<Change>>>,
    slots: Arc<Mutex<Vec<(i64, String, u32)>>>,
) {
    let base = format!("{PREFIX}/groups/");
    let mut next = 1;
    loop {
        let Ok(mut c) = Client::connect([endpoint.trim_start_matches("http://")], None).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let opts = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(mut stream) = c.watch(base.as_str(), Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = kv.key_str().unwrap_or_default().to_string();
                let rest = &key[base.len()..];
                let Some((group, tail)) = rest.split_once('/') else {
                    continue;
                };
                next = next.max(kv.mod_revision() + 1);
                if tail == "slots" && ev.event_type() == EventType::Put {
                    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                    slots.lock().unwrap().push((
                        kv.mod_revision(),
                        group.into(),
                        v["slots"].as_u64().unwrap() as u32,
                    ));
                } else if let Some(id) = tail.strip_prefix("holders/") {
                    log.lock().unwrap().push(Change {
                        at,
                        revision: kv.mod_revision(),
                        group: group.into(),
                        key: id.into(),
                        put: ev.event_type() == EventType::Put,
                        create_revision: kv.create_revision(),
                    });
                }
            }
        }
    }
}

/// The checks over the history; every failure, with the history that shows it.
fn check(
    groups: &[(String, u32)],
    changes: &[Change],
    slot_puts: &[(i64, String, u32)],
    records: &[Record],
    dying: &BTreeSet<usize>,
    nodes: usize,
) -> (Vec<String>, Vec<Duration>) {
    let mut failures = Vec::new();
    let configured: BTreeMap<&str, u32> = groups.iter().map(|(g, s)| (g.as_str(), *s)).collect();
    let mut slots: BTreeMap<String, u32> = BTreeMap::new();
    for (_, g, s) in slot_puts {
        slots.insert(g.clone(), *s);
    }
    // 1. Never more holders than slots, at any revision; grants as etcd recorded them.
    let mut held: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut grants: BTreeMap<i64, (&str, Instant)> = BTreeMap::new();
    let mut freed: BTreeMap<i64, Instant> = BTreeMap::new();
    for (n, c) in changes.iter().enumerate() {
        let g = held.entry(c.group.as_str()).or_default();
        if c.put && c.create_revision == c.revision {
            g.insert(&c.key, c.revision);
            grants.insert(c.revision, (&c.key, c.at));
            let limit = slots
                .get(&c.group)
                .copied()
                .unwrap_or(configured[c.group.as_str()]);
            if g.len() as u32 > limit {
                let around: Vec<String> = changes[n.saturating_sub(12)..=n]
                    .iter()
                    .filter(|x| x.group == c.group)
                    .map(|x| {
                        format!(
                            "  rev {} {} {} (grant {})",
                            x.revision,
                            if x.put { "put" } else { "delete" },
                            x.key,
                            x.create_revision
                        )
                    })
                    .collect();
                failures.push(format!(
                    "group {}: {} holders of {limit} slots at revision {}:\n{}",
                    c.group,
                    g.len(),
                    c.revision,
                    around.join("\n")
                ));
            }
        } else if !c.put {
            if let Some(tok) = g.remove(c.key.as_str()) {
                freed.insert(tok, c.at);
            }
        }
    }
    // 2. No grant lost or given twice: the tokens the nodes were given are exactly etcd's grants.
    let mut given: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for r in records {
        if let Seen::Granted { token } = r.seen {
            given.entry(token).or_default().insert(r.node);
        }
    }
    for (tok, (id, _)) in &grants {
        match given.get(&(*tok as u64)) {
            None => failures.push(format!("grant {tok} to {id} in etcd reached no node")),
            Some(ns) if ns.len() > 1 || ns.iter().any(|n| format!("node-{n:04}") != *id) => {
                failures.push(format!("grant {tok} of {id} was given to nodes {ns:?}"))
            }
            _ => {}
        }
    }
    for (tok, ns) in &given {
        if !grants.contains_key(&(*tok as i64)) {
            failures.push(format!(
                "nodes {ns:?} were given grant {tok}, which etcd never recorded"
            ));
        }
    }
    // 3. Every surviving node updated exactly once, and every dead one never.
    let mut updates: BTreeMap<usize, usize> = BTreeMap::new();
    for r in records {
        if let Seen::Updated { .. } = r.seen {
            *updates.entry(r.node).or_default() += 1;
        }
    }
    for n in 0..nodes {
        let u = updates.get(&n).copied().unwrap_or(0);
        let want = usize::from(!dying.contains(&n));
        if u != want {
            let hist: Vec<String> = records
                .iter()
                .filter(|r| r.node == n)
                .map(|r| format!("  {:?}", r.seen))
                .collect();
            failures.push(format!(
                "node-{n:04} updated {u} times (want {want}):\n{}",
                hist.join("\n")
            ));
        }
    }
    // 4. A dead holder's slot is free within TTL + one renewal interval of its last renewal.
    let mut dead_times = Vec::new();
    for r in records {
        if let Seen::Died { token } = r.seen {
            match freed.get(&(token as i64)) {
                None => failures.push(format!(
                    "node-{:04} died holding grant {token}, which was never freed",
                    r.node
                )),
                Some(at) => {
                    let took = at.saturating_duration_since(r.at);
                    dead_times.push(took);
                    if took > TTL + RENEW {
                        failures.push(format!("node-{:04}'s dead grant {token} was freed after {took:?}, more than TTL + renewal ({:?})", r.node, TTL + RENEW));
                    }
                }
            }
        }
    }
    (failures, dead_times)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_thousand_nodes_update_once_through_three_servers_on_etcd_despite_kills() {
    let groups: Vec<(String, u32)> = (0..12).map(|g| (format!("g{g:02}"), 1 + g % 5)).collect();
    let nodes = 1000;
    let mut w = world(groups.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        records: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let changes = Arc::new(Mutex::new(Vec::new()));
    let slot_puts = Arc::new(Mutex::new(Vec::new()));
    rt.spawn(watch(
        w.etcd.endpoints()[0].clone(),
        Arc::clone(&changes),
        Arc::clone(&slot_puts),
    ));
    let urls = Arc::new(w.servers.iter().map(|s| s.url()).collect::<Vec<_>>());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // 5 % die holding a slot.
    let dying: BTreeSet<usize> = (0..nodes).filter(|i| i % 20 == 7).collect();
    let mut handles = Vec::new();
    for i in 0..nodes {
        let g = group_of(i, &groups).to_string();
        let token = w.secret.token(&Principal::Node(format!("node-{i:04}")));
        handles.push(rt.spawn(node(
            i,
            g,
            dying.contains(&i),
            token,
            Arc::clone(&urls),
            http.clone(),
            Arc::clone(&shared),
        )));
    }
    // The faults: an etcd member and a lock server die together, and come back.
    std::thread::sleep(Duration::from_secs(10));
    eprintln!(
        "SIGKILL etcd member 1 and lock server 1 at +{:?}",
        shared.started.elapsed()
    );
    w.etcd.kill(1);
    w.servers[1].kill();
    std::thread::sleep(Duration::from_secs(5));
    w.etcd.restart(1);
    w.servers[1].restart();
    eprintln!("restarted them at +{:?}", shared.started.elapsed());
    let limit = Duration::from_secs(600);
    rt.block_on(async {
        for h in handles {
            let left = limit.saturating_sub(shared.started.elapsed());
            tokio::time::timeout(left, h)
                .await
                .expect("the simulation did not end within 10 minutes")
                .unwrap();
        }
    });
    let ran = shared.started.elapsed();
    // Let the last dead slots expire and the watch catch up.
    std::thread::sleep(TTL + RENEW + Duration::from_secs(1));
    let records = shared.records.lock().unwrap().clone();
    let changes = changes.lock().unwrap().clone();
    let slot_puts = slot_puts.lock().unwrap().clone();
    let (failures, mut dead) = check(&groups, &changes, &slot_puts, &records, &dying, nodes);
    let grants = records
        .iter()
        .filter(|r| matches!(r.seen, Seen::Granted { .. }))
        .count();
    // Each expiry is audited by exactly one server, and every dead holder's is among them.
    let mut expired: BTreeMap<u64, usize> = BTreeMap::new();
    for a in &w.audits {
        for r in cairn::lock::audit::read(a).unwrap() {
            if r.action == cairn::lock::audit::Action::Expire {
                *expired.entry(r.fencing_token.unwrap()).or_default() += 1;
            }
        }
    }
    let expiries = expired.len();
    let lost = records
        .iter()
        .filter(|r| matches!(r.seen, Seen::Lost { .. }))
        .count();
    let mut failures = failures;
    for (tok, n) in &expired {
        if *n != 1 {
            failures.push(format!("the expiry of grant {tok} was audited {n} times"));
        }
    }
    for r in &records {
        if let Seen::Died { token } = r.seen {
            if !expired.contains_key(&token) {
                failures.push(format!(
                    "node-{:04}'s dead grant {token} has no expiry in the audit logs",
                    r.node
                ));
            }
        }
    }
    eprintln!(
        "{nodes} nodes in {} groups, {} died holding a slot: {grants} grants ({lost} lost by live nodes that could not renew in time), {} holder changes in etcd, {expiries} expiries audited, in {ran:.1?}; dead slots freed after p50 {:?}, max {:?} (bound {:?})",
        groups.len(),
        dying.len(),
        changes.len(),
        pct(&mut dead, 0.5),
        pct(&mut dead, 1.0),
        TTL + RENEW
    );
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(rt);
}

/// Grants per second through the three servers, `workers` at a time, each in its own group
/// (grant, then release); the latencies of the grants.
async fn service_rate(
    urls: &[String],
    secret: &Secret,
    workers: usize,
    run: Duration,
) -> (usize, Duration, Vec<Duration>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, url) = (http.clone(), urls[w % urls.len()].clone());
        let id = format!("bench-{w}");
        let token = secret.token(&Principal::Node(id.clone()));
        tasks.push(tokio::spawn(async move {
            let req = LockRequest {
                client_params: ClientParams {
                    id,
                    group: format!("b{w:02}"),
                },
                fencing_token: None,
            };
            let mut lat = Vec::new();
            while start.elapsed() < run {
                let t = Instant::now();
                let g: Grant = call(&http, &format!("{url}/v1/pre-reboot"), &token, &req)
                    .await
                    .expect("a grant");
                assert!(!g.renewed);
                lat.push(t.elapsed());
                let _: Released = call(&http, &format!("{url}/v1/steady-state"), &token, &req)
                    .await
                    .expect("a release");
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len(), start.elapsed(), all)
}

/// The floor: airlock's semaphore on the same cluster, as raw etcd transactions: a lock is one
/// read and one compare-and-swap of the group's key (and an unlock the same), `workers` at a
/// time, each on its own key.
async fn floor_rate(endpoints: &[String], workers: usize, run: Duration) -> (usize, Duration) {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    let client = Client::connect(&eps, None).await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("bench/floor/{w}/v1/semaphore");
            let mut locks = 0;
            let cas = |holders: &'static str| {
                let key = key.clone();
                let mut c = c.clone();
                async move {
                    loop {
                        let r = c.get(key.as_str(), None).await.unwrap();
                        let version = r.kvs().first().map_or(0, |kv| kv.version());
                        let txn = etcd_client::Txn::new()
                            .when([etcd_client::Compare::version(
                                key.as_str(),
                                etcd_client::CompareOp::Equal,
                                version,
                            )])
                            .and_then([etcd_client::TxnOp::put(
                                key.as_str(),
                                format!("{{\"total_slots\":1,\"holders\":[{holders}]}}"),
                                None,
                            )]);
                        if c.txn(txn).await.unwrap().succeeded() {
                            return;
                        }
                    }
                }
            };
            while start.elapsed() < run {
                cas("\"bench\"").await;
                locks += 1;
                cas("").await;
            }
            let _ = c.delete(key.as_str(), None).await;
            locks
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    (n, start.elapsed())
}

/// How long a dead holder's slot takes to free: `n` holders take a slot and never renew.
async fn dead_slot_times(
    urls: &[String],
    secret: &Secret,
    endpoint: &str,
    n: usize,
) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut c = Client::connect([endpoint.trim_start_matches("http://")], None)
        .await
        .unwrap();
    let mut granted = Vec::new();
    for i in 0..n {
        let id = format!("dead-{i}");
        let token = secret.token(&Principal::Node(id.clone()));
        let req = LockRequest {
            client_params: ClientParams {
                id: id.clone(),
                group: "dead".into(),
            },
            fencing_token: None,
        };
        let _: Grant = call(
            &http,
            &format!("{}/v1/pre-reboot", urls[i % urls.len()]),
            &token,
            &req,
        )
        .await
        .expect("a grant");
        granted.push((id, Instant::now()));
    }
    let mut times = Vec::new();
    let limit = Instant::now() + TTL * 3;
    while !granted.is_empty() && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = c
            .get(
                format!("{PREFIX}/groups/dead/holders/"),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        let left: BTreeSet<String> = r
            .kvs()
            .iter()
            .map(|kv| {
                kv.key_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        granted.retain(|(id, at)| {
            if left.contains(id) {
                return true;
            }
            times.push(at.elapsed());
            false
        });
    }
    assert!(
        granted.is_empty(),
        "dead slots still held after {:?}: {granted:?}",
        TTL * 3
    );
    times
}

#[test]
#[ignore = "a benchmark: bench/lock.sh runs it"]
fn bench_grants_per_second() {
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let run = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let mut groups: Vec<(String, u32)> = (0..workers).map(|w| (format!("b{w:02}"), 1)).collect();
    groups.push(("dead".into(), 20));
    let w = world(groups);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let urls: Vec<String> = w.servers.iter().map(|s| s.url()).collect();
    let eps = w.etcd.endpoints();
    let (floor, floor_time) = rt.block_on(floor_rate(&eps, workers, run));
    let (grants, time, mut lat) = rt.block_on(service_rate(&urls, &w.secret, workers, run));
    let mut dead = rt.block_on(dead_slot_times(&urls, &w.secret, &eps[0], 20));
    let floor_rate = floor as f64 / floor_time.as_secs_f64();
    let rate = grants as f64 / time.as_secs_f64();
    println!("lock benchmark: 3 etcd members, 3 lock servers, {workers} clients at a time, {run:?} each, this machine ({} cores)", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("floor (airlock's read + compare-and-swap per lock, raw etcd): {floor} locks, {floor_rate:.1} locks/s");
    println!(
        "cairn lock (HTTP, auth, audit, lease, fencing token): {grants} grants, {rate:.1} grants/s"
    );
    println!(
        "grant latency: p50 {:?}, p99 {:?}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    println!("ratio: {:.2} (target ≥ 0.5)", rate / floor_rate);
    println!(
        "dead slot freed after: p50 {:?}, max {:?} (TTL {TTL:?}, renewal interval {RENEW:?})",
        pct(&mut dead, 0.5),
        pct(&mut dead, 1.0)
    );
}

#[test]
fn the_checker_catches_an_over_granted_group_a_lost_grant_and_a_double_update() {
    let groups = vec![("g".to_string(), 1)];
    let t0 = Instant::now();
    let change = |revision: i64, key: &str, put: bool, create_revision: i64| Change {
        at: t0,
        revision,
        group: "g".into(),
        key: key.into(),
        put,
        create_revision,
    };
    let record = |node: usize, seen: Seen| Record { at: t0, node, seen };
    // Two holders in a group of one slot; node 1 updates twice; grant 3 reaches nobody.
    let changes = vec![
        change(2, "node-0000", true, 2),
        change(3, "node-0001", true, 3),
    ];
    let records = vec![
        record(0, Seen::Granted { token: 2 }),
        record(0, Seen::Updated { token: 2 }),
        record(1, Seen::Updated { token: 3 }),
        record(1, Seen::Updated { token: 3 }),
    ];
    let (failures, _) = check(
        &groups,
        &changes,
        &[(1, "g".into(), 1)],
        &records,
        &BTreeSet::new(),
        2,
    );
    let all = failures.join("\n");
    assert!(
        all.contains("group g: 2 holders of 1 slots at revision 3"),
        "{all}"
    );
    assert!(
        all.contains("rev 2 put node-0000"),
        "the offending history is shown: {all}"
    );
    assert!(
        all.contains("grant 3 to node-0001 in etcd reached no node"),
        "{all}"
    );
    assert!(all.contains("node-0001 updated 2 times"), "{all}");
    assert_eq!(failures.len(), 3, "{all}");
}
