//! The benchmark: grants per second through the service beside airlock's algorithm as raw etcd
//! transactions on the same cluster, grant latency, and the time to free a dead slot.

use super::*;

/// Grants per second through the three servers, `workers` at a time, each in its own group
/// (grant, then release); the latencies of the grants.
pub(crate) async fn service_rate(
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
pub(crate) async fn floor_rate(
    endpoints: &[String],
    workers: usize,
    run: Duration,
) -> (usize, Duration) {
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
pub(crate) async fn dead_slot_times(
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
pub(crate) fn bench_grants_per_second() {
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
