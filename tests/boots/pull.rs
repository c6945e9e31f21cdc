//! Pull mode on the fleet chain's booted qemu fleet (shared with the push rollouts before and
//! after): no orchestrator touches the nodes. `cairn lock serve` runs on the host's loopback
//! (the nodes reach it as 10.0.2.2, as their repo) with one slot for group `app` and the
//! fleet's HAProxy as the group's load balancer; the repo is served with the ref's signed
//! update graph beside it; each node's `cairn-agent.service` (every image has it, idle until
//! now) follows the graph through the lock. The load through HAProxy that the fleet chain runs
//! the whole time counts every failed request (`fleet::no_request_failed`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::fleet_world::{bin, ok, text, Driven, World};
use cairn::lock::api::{AgentPhase, Halt, NodeReport};
use cairn::lock::audit::{Action, AuditRecord};
use cairn::lock::client::Client;

const REF: &str = "cairn/amd64/app-example";
const GROUP: &str = "app";

fn lock_dir(w: &World) -> PathBuf {
    w.dir.join("lock")
}

fn token(w: &World) -> String {
    std::fs::read_to_string(lock_dir(w).join("operator.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn client(w: &World) -> Client {
    Client::new(&format!("http://127.0.0.1:{}", w.lock_port), Some(token(w)))
}

/// The group's last reports, by node, and its halt.
fn group(w: &World) -> (Vec<NodeReport>, Option<Halt>) {
    match client(w).status() {
        Ok(s) => s
            .groups
            .into_iter()
            .find(|g| g.name == GROUP)
            .map(|g| (g.nodes, g.halted))
            .unwrap_or_default(),
        Err(e) => {
            eprintln!("pull: lock status: {e}");
            Default::default()
        }
    }
}

fn audit(w: &World) -> Vec<AuditRecord> {
    cairn::lock::audit::read(&lock_dir(w).join("audit.jsonl")).unwrap_or_default()
}

/// The names of the qemu fleet's nodes (the lock's ids: their hostnames).
fn names(w: &World) -> Vec<String> {
    w.record(Driven::Qemu)
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// `cairn rollout ARGS` on the graph (the world's repo and key).
fn rollout(w: &World, args: &[&str]) -> String {
    let mut c = Command::new(bin());
    c.arg("rollout")
        .args(args)
        .arg("--repo")
        .arg(&w.repo)
        .env("GNUPGHOME", &w.gnupg);
    if let Ok(t) = std::fs::read_to_string(lock_dir(w).join("operator.token")) {
        c.env("CAIRN_LOCK_TOKEN", t.trim());
    }
    ok(&format!("rollout {}", args.join(" ")), c.output().unwrap())
}

/// Start the lock service and the repo server, once.
fn services(w: &mut World) {
    if w.lock.is_some() {
        return;
    }
    let d = lock_dir(w);
    std::fs::create_dir_all(&d).unwrap();
    let sock = w.fleets.join("it/haproxy/admin.sock");
    let cfg = d.join("lock.toml");
    std::fs::write(
        &cfg,
        format!(
            "[service]\naddress = \"127.0.0.1\"\nport = {port}\nname = \"ci\"\n\
             [store]\npath = \"{store}\"\n\
             [lock]\nlease-ttl = \"10m\"\nrenew-interval = \"30s\"\n\
             [[lock.groups]]\nname = \"{GROUP}\"\nslots = 1\nallow-anonymous = true\n\
             [lock.groups.load-balancer]\ntype = \"haproxy\"\nsocket = \"{sock}\"\n\
             backend = \"nodes\"\ndrain-timeout = \"20s\"\n\
             [audit]\nlog = \"{audit}\"\n",
            port = w.lock_port,
            store = d.join("store").display(),
            sock = sock.display(),
            audit = d.join("audit.jsonl").display(),
        ),
    )
    .unwrap();
    let log = |n: &str| std::fs::File::create(d.join(n)).unwrap();
    w.lock = Some(
        Command::new(bin())
            .args(["lock", "serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log("serve.log"))
            .spawn()
            .unwrap(),
    );
    w.repo_server = Some(
        Command::new(bin())
            .args(["repo", "serve", "--listen"])
            .arg(format!("127.0.0.1:{}", w.repo_port))
            .arg("--repo")
            .arg(&w.repo)
            .stdout(Stdio::null())
            .stderr(log("repo.log"))
            .spawn()
            .unwrap(),
    );
    wait("the lock service", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", w.lock_port)).is_ok()
    });
    let t = ok(
        "lock token",
        Command::new(bin())
            .args(["lock", "token", "operator", "ci", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    std::fs::write(d.join("operator.token"), t.trim()).unwrap();
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Wait until every node reports itself steady on `version`; the reports then.
fn all_on(w: &World, version: &str, limit: Duration) -> Vec<NodeReport> {
    let want = names(w);
    let mut last = String::new();
    let mut reports = Vec::new();
    wait(&format!("every node steady on {version}"), limit, || {
        reports = group(w).0;
        let line: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.client_params.id,
                    r.release.as_deref().unwrap_or("-"),
                    r.phase.as_str()
                )
            })
            .collect();
        if line.join(", ") != last {
            last = line.join(", ");
            eprintln!("pull: {last}");
        }
        want.iter().all(|n| {
            reports.iter().any(|r| {
                &r.client_params.id == n
                    && r.release.as_deref() == Some(version)
                    && r.phase == AgentPhase::Steady
            })
        })
    });
    reports
}

/// Grants and frees of the slot from the audit log since `from` (ms), checked never to overlap:
/// each node's (grant, free) times, in order.
fn turns(w: &World, from: i64) -> Vec<(String, i64, i64)> {
    let mut out: Vec<(String, i64, i64)> = Vec::new();
    let mut open: Option<(String, i64)> = None;
    for r in audit(w)
        .into_iter()
        .filter(|r| r.at_ms >= from && r.group == GROUP)
    {
        let id = r.id.clone().unwrap_or_default();
        match r.action {
            Action::Grant => {
                assert!(
                    open.is_none(),
                    "{id} was granted while {open:?} held the one slot"
                );
                open = Some((id, r.at_ms));
            }
            Action::Release | Action::Expire | Action::OperatorRelease => {
                if let Some((holder, t)) = open.take() {
                    assert_eq!(holder, id, "{id} freed {holder}'s slot");
                    out.push((holder, t, r.at_ms));
                }
            }
            _ => {}
        }
    }
    out
}

/// Wait for the recall's first holder and kill it; check that its slot frees after the TTL,
/// that the other node is refused while it is down, then power it on again. The victim.
fn killed_holder(w: &World, from: i64) -> String {
    let mut victim = String::new();
    let end = Instant::now() + Duration::from_secs(900);
    while victim.is_empty() {
        assert!(Instant::now() < end, "no node took the slot for the recall");
        if let Ok(s) = client(w).status() {
            if let Some(h) = s
                .groups
                .iter()
                .find(|g| g.name == GROUP)
                .and_then(|g| g.holders.first())
            {
                victim = h.id.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    w.kill_vm(&victim);
    let killed = cairn::lock::store::now_ms();
    eprintln!("pull: killed {victim} while it held the slot");
    let mut expired = None;
    wait("the killed node's slot to expire", SHORT_TTL * 3, || {
        expired = audit(w)
            .into_iter()
            .find(|r| r.at_ms >= from && r.action == Action::Expire);
        expired.is_some()
    });
    let expired = expired.unwrap();
    assert_eq!(expired.id.as_deref(), Some(victim.as_str()), "{expired:?}");
    let after = expired.at_ms - killed;
    eprintln!("pull: {victim}'s slot expired {after} ms after the kill (TTL {SHORT_TTL:?})");
    assert!(
        after <= (SHORT_TTL + Duration::from_secs(15)).as_millis() as i64,
        "{after} ms"
    );
    wait(
        "the expired holder put back to READY",
        Duration::from_secs(30),
        || {
            audit(w).into_iter().any(|r| {
                r.at_ms >= expired.at_ms
                    && r.action == Action::Undrain
                    && r.id.as_deref() == Some(victim.as_str())
            })
        },
    );
    // The other node, given time to ask, is refused: it would be the last one serving.
    let other = names(w).into_iter().find(|n| *n != victim).unwrap();
    let mut refused = String::new();
    wait(
        "the other node refused by the health gate",
        Duration::from_secs(300),
        || {
            refused = group(w)
                .0
                .into_iter()
                .find(|r| r.client_params.id == other)
                .map(|r| r.message)
                .unwrap_or_default();
            refused.contains("load_balancer_unavailable") && refused.contains(&victim)
        },
    );
    eprintln!("pull: {other} while {victim} is down: {refused}");
    let grants = audit(w)
        .into_iter()
        .filter(|r| r.at_ms >= from && r.action == Action::Grant)
        .count();
    assert_eq!(grants, 1, "a node was granted while the victim was down");
    ok(
        "fleet start",
        w.cairn(&["fleet", "start", w.fleet().to_str().unwrap(), &victim]),
    );
    eprintln!("pull: {victim} powered on again");
    victim
}

fn version(v: &serde_json::Value) -> String {
    v["version"].as_str().unwrap().to_string()
}

/// The nodes are on v3 (the push rollouts' last good release). The graph lists v3, then v6 on a
/// two-minute wave: each node moves when the wave reaches its wariness and it gets the slot,
/// one at a time, drained first, put back after its healthy trial boot.
pub fn wave(w: &mut World) {
    services(w);
    // Where the nodes are now (the push steps' last good release), as they report it.
    let mut base = None;
    wait(
        "every node's first report",
        Duration::from_secs(600),
        || {
            let r = group(w).0;
            base = r
                .first()
                .map(|r| (r.release.clone().unwrap_or_default(), r.commit.clone()));
            r.len() == names(w).len()
                && r.iter()
                    .all(|x| Some(&x.commit) == base.as_ref().map(|b| &b.1))
        },
    );
    let (v3, c3) = base.unwrap();
    eprintln!("pull: every node is on {v3} ({c3})");
    rollout(w, &["plan", REF, "--commit", &c3, "--duration", "0s"]);
    let v6 = w.compose("v6", &World::app_lines(&["hello", "tree"], &[]));
    let from = cairn::lock::store::now_ms();
    rollout(w, &["plan", REF, "--duration", "3m"]);
    let started = Instant::now();
    let reports = all_on(w, &version(&v6), Duration::from_secs(2400));
    let t = turns(w, from);
    eprintln!(
        "pull wave to {}: {} s for {} nodes; turns (node, held ms): {:?}",
        version(&v6),
        started.elapsed().as_secs(),
        t.len(),
        t.iter()
            .map(|(n, a, b)| (n.clone(), b - a))
            .collect::<Vec<_>>()
    );
    assert_eq!(t.len(), names(w).len(), "one turn per node: {t:?}");
    // The wave: no node took its turn before the wavefront reached its wariness (3 min from
    // 0 to 1), and where the wave reached them more than a poll apart, the least wary went first.
    let wariness = |id: &str| {
        reports
            .iter()
            .find(|r| r.client_params.id == id)
            .map(|r| r.wariness)
            .unwrap()
    };
    for (id, granted, _) in &t {
        let opens = from + (wariness(id) * 180_000.0) as i64;
        assert!(
            *granted + 2_000 >= opens,
            "{id} (wariness {:.3}) was granted {} ms before the wave reached it",
            wariness(id),
            opens - granted
        );
    }
    let gap_ms = (wariness(&t[1].0) - wariness(&t[0].0)) * 180_000.0;
    assert!(
        gap_ms > -15_000.0,
        "turns not in wariness order: {t:?}, {reports:?}"
    );
    let drains = audit(w)
        .into_iter()
        .filter(|r| r.at_ms >= from && r.action == Action::Drain)
        .count();
    assert_eq!(drains, t.len(), "every turn began with a drain");
    w.pull = vec![v3, version(&v6)];
}

/// v7's health check fails: the first node to take it rolls itself back and reports; the group
/// halts and the other node never takes it; the status names the node and the reason.
pub fn bad_release_halts(w: &mut World) {
    let fail = w.dir.join("50-fail");
    std::fs::write(
        &fail,
        "#!/bin/sh\necho 'the v7 check fails on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lines = World::app_lines(
        &["hello", "tree"],
        &[(fail.as_path(), "/usr/lib/cairn/health.d/50-fail")],
    );
    let v7 = w.compose("v7", &lines);
    let from = cairn::lock::store::now_ms();
    rollout(w, &["plan", REF, "--duration", "0s"]);
    let mut halt = None;
    wait("the group halted", Duration::from_secs(2400), || {
        halt = group(w).1;
        halt.is_some()
    });
    let halt = halt.unwrap();
    eprintln!("pull: halted: {} (by {})", halt.reason, halt.by);
    assert!(halt.reason.contains("rolled back"), "{halt:?}");
    let t = turns(w, from);
    assert_eq!(t.len(), 1, "only the first node took v7: {t:?}");
    assert_eq!(t[0].0, halt.by);
    let v6 = w.pull[1].clone();
    let bad = halt.by.clone();
    // Given time to try, the other node does not take v7: it is told the group is halted.
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(turns(w, from).len(), 1, "{:?}", turns(w, from));
    let reports = group(w).0;
    for r in &reports {
        eprintln!(
            "pull: {} on {:?}, {}: {}",
            r.client_params.id,
            r.release,
            r.phase.as_str(),
            r.message
        );
        assert_eq!(r.release.as_deref(), Some(v6.as_str()), "{r:?}");
    }
    let other = reports.iter().find(|r| r.client_params.id != bad).unwrap();
    assert!(other.message.contains("halted"), "{other:?}");
    let status = rollout(
        w,
        &[
            "status",
            "--ref",
            REF,
            "--group",
            GROUP,
            "--url",
            &format!("http://127.0.0.1:{}", w.lock_port),
        ],
    );
    assert!(
        status.contains("HALTED") && status.contains(&bad) && status.contains("50-fail"),
        "{status}"
    );
    // v7 is recalled (no node may take it) and the group cleared for the next step.
    let v7v = version(&v7);
    rollout(
        w,
        &[
            "recall",
            REF,
            &v7v,
            "--to",
            &v6,
            "--reason",
            "its health check fails",
        ],
    );
    let out = Command::new(bin())
        .args([
            "lock",
            "clear",
            GROUP,
            "--url",
            &format!("http://127.0.0.1:{}", w.lock_port),
        ])
        .env("CAIRN_LOCK_TOKEN", token(w))
        .output()
        .unwrap();
    ok("lock clear", out);
}

/// The slot's TTL for the recall (set by a reload): what a node killed while it holds the slot
/// keeps the slot for.
const SHORT_TTL: Duration = Duration::from_secs(120);

/// Shorten the lease TTL by a live reload (SIGHUP): grants and renewals from now on get it.
fn shorten_ttl(w: &World) {
    let cfg = lock_dir(w).join("lock.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let short = text
        .replace(
            "lease-ttl = \"10m\"",
            &format!("lease-ttl = \"{}s\"", SHORT_TTL.as_secs()),
        )
        .replace("renew-interval = \"30s\"", "renew-interval = \"20s\"");
    assert_ne!(short, text);
    std::fs::write(&cfg, short).unwrap();
    let pid = w.lock.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait("the reload", Duration::from_secs(30), || {
        std::fs::read_to_string(lock_dir(w).join("serve.log"))
            .unwrap_or_default()
            .contains("cairn lock: reloaded")
    });
}

/// After the finished wave to v6, v6 is recalled to v3, through the same lock. The first node to
/// take the slot is killed while it holds it: the slot frees after its TTL and the node is put
/// back to READY, so HAProxy's check keeps it out; the other node is refused while it would be
/// the last one serving. Powered on again on its own disk, the killed node comes back and every
/// node goes back to v3. Then the services stop (the push steps after this serve the repo
/// themselves, and with no lock service the agents stay put).
pub fn recall_brings_every_node_back(w: &mut World) {
    let (v3, v6) = (w.pull[0].clone(), w.pull[1].clone());
    shorten_ttl(w);
    let from = cairn::lock::store::now_ms();
    let started = Instant::now();
    rollout(
        w,
        &[
            "recall",
            REF,
            &v6,
            "--to",
            &v3,
            "--reason",
            "recalled by the test",
        ],
    );
    let victim = killed_holder(w, from);
    all_on(w, &v3, Duration::from_secs(2400));
    let t = turns(w, from);
    eprintln!(
        "pull recall to {v3}: {} s for {} nodes (one killed and powered on again); turns (node, held ms): {:?}",
        started.elapsed().as_secs(),
        names(w).len(),
        t.iter()
            .map(|(n, a, b)| (n.clone(), b - a))
            .collect::<Vec<_>>()
    );
    assert_eq!(t.len(), names(w).len() + 1, "{t:?}");
    assert_eq!(t[0].0, victim, "{t:?}");
    for n in names(w) {
        assert!(t[1..].iter().any(|x| x.0 == n), "{n} took no turn: {t:?}");
    }
    let body = ureq::get(&w.url()).call().unwrap().into_string().unwrap();
    assert!(body.contains(&v3), "not v3 ({v3}) after the recall: {body}");
    for mut c in [w.lock.take(), w.repo_server.take()].into_iter().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let log = std::fs::read_to_string(lock_dir(w).join("serve.log")).unwrap_or_default();
    eprintln!(
        "pull: the lock service's log ends: {}",
        text(log.as_bytes())
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    );
}
