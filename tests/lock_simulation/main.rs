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

#[path = "../lock_world/mod.rs"]
mod lock_world;

mod bench;
mod checker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::lock::api::{ClientParams, ErrorBody, Grant, LockRequest, Released};
use cairn::lock::auth::{Principal, Secret};
use checker::{check, pct};
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
