//! The lock service at fleet scale, on loopback: 1,000 simulated nodes in 12 groups (1 to 5
//! slots) against three `cairn lock serve` processes on a three-member etcd cluster. During the
//! run one etcd member and one lock server are SIGKILLed and restarted, and 5 % of the nodes die
//! while they hold a slot. A checker over the history that etcd itself recorded (a watch of the
//! service's keys from revision 1) and the nodes' own records proves: never more holders in a
//! group than its slots, every surviving node updated exactly once, every dead holder's slot
//! free within TTL + one renewal interval, no grant lost or given twice. A failed check prints
//! the offending history. Only what the SIGKILL of a server explains is excused, and printed: a
//! grant committed but neither audited nor answered (then freed), and a dead holder's expiry
//! committed at the kill but never audited.
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

/// One simulated node and its way to the servers (round robin, moving on after a failure).
struct SimNode {
    i: usize,
    p: ClientParams,
    token: String,
    urls: Arc<Vec<String>>,
    http: reqwest::Client,
    shared: Arc<Shared>,
    calls: usize,
}

impl SimNode {
    async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        fencing_token: Option<u64>,
    ) -> Result<T, Option<ErrorBody>> {
        self.calls += 1;
        let url = format!(
            "{}{path}",
            self.urls[(self.i + self.calls) % self.urls.len()]
        );
        let req = LockRequest {
            client_params: self.p.clone(),
            fencing_token,
        };
        call(&self.http, &url, &self.token, &req).await
    }

    /// Ask until a slot is granted; its fencing token.
    async fn take(&mut self) -> u64 {
        loop {
            match self.call::<Grant>("/v1/pre-reboot", None).await {
                Ok(g) => return g.holder.fencing_token,
                Err(_) => {
                    let pause = 150 + (self.i as u64 % 7) * 20;
                    tokio::time::sleep(Duration::from_millis(pause)).await
                }
            }
        }
    }

    /// "Download and stage" for a while, renewing on time; the last renewal is the fencing
    /// check right before the reboot. Does the node still hold grant `t`?
    async fn hold(&mut self, t: u64) -> bool {
        let held = Instant::now();
        for wait in [RENEW, Duration::from_millis(200)] {
            tokio::time::sleep(wait).await;
            loop {
                match self.call::<Grant>("/v1/pre-reboot", Some(t)).await {
                    Ok(g) if g.holder.fencing_token == t => break,
                    Err(Some(e)) if e.kind == cairn::lock::api::ErrorKind::LeaseLost => {
                        return false
                    }
                    _ if held.elapsed() < TTL => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => return false,
                }
            }
            self.shared.note(self.i, Seen::Renewed { token: t });
        }
        true
    }

    /// `steady-state` until a server answers.
    async fn release(&mut self, t: u64) {
        loop {
            match self.call::<Released>("/v1/steady-state", Some(t)).await {
                Ok(r) => {
                    let token = r.fencing_token;
                    return self.shared.note(self.i, Seen::Released { token });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// One simulated node: take a slot, renew it while it "updates", check its fencing token,
/// "reboot", release. A dying node stops for good once it holds its slot.
async fn node(mut n: SimNode, dies: bool) {
    tokio::time::sleep(Duration::from_millis((n.i as u64 * 7919) % 2000)).await;
    loop {
        let t = n.take().await;
        n.shared.note(n.i, Seen::Granted { token: t });
        if dies {
            return n.shared.note(n.i, Seen::Died { token: t });
        }
        if !n.hold(t).await {
            n.shared.note(n.i, Seen::Lost { token: t });
            continue;
        }
        n.shared.note(n.i, Seen::Updated { token: t });
        tokio::time::sleep(Duration::from_millis(200)).await;
        return n.release(t).await;
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

/// The faults, 10 s into the run: an etcd member and a lock server die together (SIGKILL),
/// and come back 5 s later on their data.
fn faults(w: &mut World, started: Instant) -> Instant {
    std::thread::sleep(Duration::from_secs(10));
    let killed = Instant::now();
    eprintln!(
        "SIGKILL etcd member 1 and lock server 1 at +{:?}",
        started.elapsed()
    );
    w.etcd.kill(1);
    w.servers[1].kill();
    std::thread::sleep(Duration::from_secs(5));
    w.etcd.restart(1);
    w.servers[1].restart();
    eprintln!("restarted them at +{:?}", started.elapsed());
    killed
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
        let id = format!("node-{i:04}");
        let n = SimNode {
            i,
            token: w.secret.token(&Principal::Node(id.clone())),
            p: ClientParams {
                id,
                group: group_of(i, &groups).to_string(),
            },
            urls: Arc::clone(&urls),
            http: http.clone(),
            shared: Arc::clone(&shared),
            calls: 0,
        };
        handles.push(rt.spawn(node(n, dying.contains(&i))));
    }
    let killed = faults(&mut w, shared.started);
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
    let audited = checker::Audited::read(&w.audits);
    let found = check(&checker::History {
        groups: &groups,
        changes: &changes,
        slot_puts: &slot_puts,
        records: &records,
        dying: &dying,
        nodes,
        audited: &audited,
        killed: Some(killed),
    });
    let grants = records
        .iter()
        .filter(|r| matches!(r.seen, Seen::Granted { .. }))
        .count();
    let (failures, mut dead) = (found.failures, found.dead_times);
    let expiries = audited.expired.len();
    let lost = records
        .iter()
        .filter(|r| matches!(r.seen, Seen::Lost { .. }))
        .count();
    eprintln!(
        "{nodes} nodes in {} groups, {} died holding a slot: {grants} grants ({lost} lost by live nodes that could not renew in time), {} holder changes in etcd, {expiries} expiries audited, in {ran:.1?}; dead slots freed after p50 {:?}, max {:?} (bound {:?})",
        groups.len(),
        dying.len(),
        changes.len(),
        pct(&mut dead, 0.5),
        pct(&mut dead, 1.0),
        TTL + RENEW
    );
    for e in &found.excused {
        eprintln!("explained by the SIGKILL: {e}");
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(rt);
}
