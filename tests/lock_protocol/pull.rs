//! What the service does for pull-mode fleets: it keeps each node's last report and shows it in
//! the status, and it drives a group's load balancer — a real HAProxy in front of two tiny HTTP
//! servers on loopback — draining a node before its grant is answered and putting it back when
//! it is steady; a drain that fails answers `load_balancer_unavailable` and keeps no slot; a
//! holder whose slot expires is put back, and gates the next one while it is down.

use std::io::{Read, Write};
use std::net::TcpListener;

use cairn::fleet::haproxy::Haproxy;
use cairn::fleet::haproxy::RuntimeApi as _;
use cairn::fleet::manifest::Service;
use cairn::lock::api::{AgentPhase, NodeReport};

use super::*;

/// A group of one slot whose nodes need no token.
const APP: &str = "[[lock.groups]]\nname = \"app\"\nslots = 1\nallow-anonymous = true\n";

/// [`APP`], drained from the HAProxy whose admin socket is `socket`.
fn app_behind(socket: &Path) -> String {
    format!(
        "{APP}[lock.groups.load-balancer]\ntype = \"haproxy\"\nsocket = {:?}\nbackend = \"nodes\"\n\
         drain-timeout = \"5s\"\n",
        socket.to_str().unwrap()
    )
}

fn report(id: &str, wariness: f64, phase: AgentPhase, message: &str) -> NodeReport {
    NodeReport {
        client_params: params("app", id),
        commit: "ab".repeat(32),
        release: Some("1.0".into()),
        phase,
        wariness,
        strategy: "fleet-lock".into(),
        target: None,
        message: message.into(),
        // The service sets it; whatever the node sends is overwritten.
        at_ms: 42,
    }
}

#[test]
fn node_reports_are_kept_and_shown_in_the_status() {
    let w = World::start(Store::Embedded, APP);
    let op = w.operator();
    assert!(w.group(&op, "app").nodes.is_empty());

    let before = now_ms();
    let first = report("n1", 0.25, AgentPhase::Steady, "on 1.0");
    let kept = w.node("n1").node_report(&first).unwrap();
    let n2 = report("n2", 0.75, AgentPhase::Waiting, "2.0 is not open yet");
    w.node("n2").node_report(&n2).unwrap();
    let after = now_ms();
    assert!(
        kept.at_ms >= before && kept.at_ms <= after,
        "{} not in {before}..{after}",
        kept.at_ms
    );
    assert_eq!(
        NodeReport {
            at_ms: first.at_ms,
            ..kept.clone()
        },
        first,
        "the answer is the report as kept"
    );

    let nodes = w.group(&op, "app").nodes;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let by = |nodes: &[NodeReport], id: &str| {
        nodes
            .iter()
            .find(|n| n.client_params.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no report of {id} in {nodes:?}"))
    };
    let (s1, s2) = (by(&nodes, "n1"), by(&nodes, "n2"));
    assert_eq!(s1.wariness, 0.25);
    assert_eq!(s2.wariness, 0.75);
    assert_eq!(
        (s1.phase, s2.phase),
        (AgentPhase::Steady, AgentPhase::Waiting)
    );
    assert_eq!(s2.message, "2.0 is not open yet");
    for s in [&s1, &s2] {
        assert!(
            s.at_ms >= before && s.at_ms <= after,
            "{s:?}: at_ms not set by the server"
        );
    }
    assert_eq!(s1, kept);
    // Other groups hold no reports.
    let st = op.status().unwrap();
    assert!(st
        .groups
        .iter()
        .filter(|g| g.name != "app")
        .all(|g| g.nodes.is_empty()));

    // The last report wins: n1's second replaces its first.
    std::thread::sleep(Duration::from_millis(5));
    let mut second = report("n1", 0.5, AgentPhase::Updating, "deploying 2.0");
    second.target = Some("2.0".into());
    w.node("n1").node_report(&second).unwrap();
    let nodes = w.group(&op, "app").nodes;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let s1 = by(&nodes, "n1");
    assert_eq!(
        (s1.wariness, s1.phase, s1.target.as_deref()),
        (0.5, AgentPhase::Updating, Some("2.0"))
    );
    assert_eq!(s1.message, "deploying 2.0");
    assert!(s1.at_ms >= kept.at_ms, "{s1:?} after {kept:?}");
    assert_eq!(by(&nodes, "n2"), s2, "n2's report is untouched");

    // Bad reports are refused and keep nothing.
    let (status, kind, value) =
        refused(
            w.node("n1")
                .node_report(&report("n1", 1.5, AgentPhase::Steady, "too wary")),
        );
    assert_eq!((status, kind), (400, ErrorKind::BadRequest), "{value}");
    assert!(value.contains("1.5"), "{value}");
    let (status, kind, _) =
        refused(
            w.node("n1")
                .node_report(&report("n2", 0.1, AgentPhase::Failed, "not mine")),
        );
    assert_eq!((status, kind), (403, ErrorKind::Forbidden));
    let nodes = w.group(&op, "app").nodes;
    assert_eq!(by(&nodes, "n1"), s1);
    assert_eq!(by(&nodes, "n2"), s2);
}

/// A tiny HTTP server on loopback answering 200 with its name to every request (HAProxy's
/// checks and the traffic through it); the thread lives as long as the test binary.
fn http_server(name: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

/// A real HAProxy with servers n1 and n2 in backend `nodes`, stopped on drop (also on panic).
struct Lb {
    h: Haproxy,
    listen: String,
    /// Each server's address (its tiny HTTP server).
    addrs: Vec<(String, String)>,
}

impl Lb {
    fn start(dir: &Path) -> Lb {
        let servers = [
            ("n1".to_string(), http_server("n1")),
            ("n2".to_string(), http_server("n2")),
        ];
        let service = Service {
            port: 80,
            health_path: "/".into(),
            health_interval: Duration::from_millis(200),
            health_timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let h = Haproxy::start(dir, &listen, &servers, &service).expect("HAProxy starts");
        let lb = Lb {
            h,
            listen,
            addrs: servers.to_vec(),
        };
        for n in ["n1", "n2"] {
            wait_for(
                &format!("HAProxy sees {n} up"),
                Duration::from_secs(15),
                || lb.h.server(n).ok().filter(|s| s.is_up()),
            );
        }
        lb
    }

    fn status(&self, n: &str) -> String {
        self.h.server(n).unwrap().status
    }

    /// One request through the frontend: the name of the server that answered.
    fn get(&self) -> String {
        ureq::get(&format!("http://{}/", self.listen))
            .timeout(Duration::from_secs(3))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.h.stop();
    }
}

/// A real HAProxy (its files in the temporary directory returned) and a service whose group
/// `app` drains from it.
fn behind_haproxy() -> (tempfile::TempDir, Lb, World) {
    let hdir = tempfile::tempdir().unwrap();
    let lb = Lb::start(hdir.path());
    let w = World::start(
        Store::Embedded,
        &app_behind(&hdir.path().join("admin.sock")),
    );
    (hdir, lb, w)
}

#[test]
fn a_granted_node_is_drained_and_put_back_when_steady() {
    let (_hdir, lb, w) = behind_haproxy();
    // Both serve before anything is drained.
    let mut seen: Vec<String> = (0..4).map(|_| lb.get()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["n1", "n2"]);

    let p = params("app", "n1");
    let g = granted(w.node("n1").pre_reboot(&p, None));
    assert!(!g.renewed);
    // Drained before the grant was answered.
    assert_eq!(lb.status("n1"), "MAINT");
    assert_ne!(lb.status("n2"), "MAINT");
    assert!(lb.h.server("n2").unwrap().is_up());
    for _ in 0..6 {
        assert_eq!(lb.get(), "n2", "a request went to the drained n1");
    }
    // A renewal drains nothing more and keeps n1 out.
    let again = granted(w.node("n1").pre_reboot(&p, Some(g.holder.fencing_token)));
    assert!(again.renewed);
    assert_eq!(lb.status("n1"), "MAINT");

    let released = w.node("n1").steady_state(&p, None).unwrap();
    assert_eq!(released.fencing_token, Some(g.holder.fencing_token));
    assert_ne!(lb.status("n1"), "MAINT");
    wait_for("n1 up again", Duration::from_secs(15), || {
        lb.h.server("n1").ok().filter(|s| s.is_up())
    });
    wait_for("a request answered by n1", Duration::from_secs(15), || {
        (lb.get() == "n1").then_some(())
    });
    assert!(w.group(&w.operator(), "app").holders.is_empty());

    let log = w.audit();
    let drains = records(&log, Action::Drain, "app", Some("n1"));
    let undrains = records(&log, Action::Undrain, "app", Some("n1"));
    assert_eq!(drains.len(), 1, "{log:#?}");
    assert_eq!(undrains.len(), 1, "{log:#?}");
    assert_eq!(drains[0].fencing_token, Some(g.holder.fencing_token));
    assert!(records(&log, Action::Drain, "app", Some("n2")).is_empty());
    // In order: drained, granted, put back, released.
    let at = |a: Action| {
        log.iter()
            .position(|r| r.action == a && r.id.as_deref() == Some("n1"))
            .unwrap_or_else(|| panic!("no {a:?} of n1 in {log:#?}"))
    };
    assert!(at(Action::Drain) < at(Action::Grant), "{log:#?}");
    assert!(at(Action::Grant) < at(Action::Undrain), "{log:#?}");
    assert!(at(Action::Undrain) < at(Action::Release), "{log:#?}");
}

#[test]
fn a_drain_that_fails_gives_no_slot() {
    // The socket of an HAProxy that is not running yet.
    let hdir = tempfile::tempdir().unwrap();
    let socket = hdir.path().join("admin.sock");
    let w = World::start(Store::Embedded, &app_behind(&socket));
    let op = w.operator();

    let (status, kind, value) = refused(w.node("n1").pre_reboot(&params("app", "n1"), None));
    assert_eq!(
        (status, kind),
        (503, ErrorKind::LoadBalancerUnavailable),
        "{value}"
    );
    assert!(value.contains("n1"), "{value}");
    assert!(w.group(&op, "app").holders.is_empty(), "a slot was kept");
    // The one slot is free: n2 is refused for the load balancer again, not for a full group.
    let (status, kind, value) = refused(w.node("n2").pre_reboot(&params("app", "n2"), None));
    assert_eq!(
        (status, kind),
        (503, ErrorKind::LoadBalancerUnavailable),
        "{value}"
    );

    // Once the load balancer answers, n2 takes the slot n1 did not keep.
    let lb = Lb::start(hdir.path());
    let g = granted(w.node("n2").pre_reboot(&params("app", "n2"), None));
    assert!(!g.renewed);
    assert_eq!(lb.status("n2"), "MAINT");
    assert_ne!(lb.status("n1"), "MAINT");
    let holders = w.group(&op, "app").holders;
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "n2");
    let (status, kind, _) = refused(w.node("n1").pre_reboot(&params("app", "n1"), None));
    assert_eq!((status, kind), (409, ErrorKind::FailedLockSemaphoreFull));

    let log = w.audit();
    assert!(
        records(&log, Action::Grant, "app", Some("n1")).is_empty(),
        "{log:#?}"
    );
    assert!(
        records(&log, Action::Drain, "app", Some("n1")).is_empty(),
        "{log:#?}"
    );
    assert_eq!(records(&log, Action::Grant, "app", Some("n2")).len(), 1);
    assert_eq!(records(&log, Action::Drain, "app", Some("n2")).len(), 1);
}

/// A drained holder that never calls again (a node killed while it holds its slot): its slot
/// expires and it is put back to READY (audited), so HAProxy's own check tells whether it
/// serves. While the check sees it down, the next node's grant is refused by the health gate
/// (it would take the last server out) and keeps no slot; once it is up again, the next node is
/// drained and granted.
#[test]
fn an_expired_holder_is_put_back_and_gates_the_next_while_it_is_down() {
    let (_hdir, lb, w) = behind_haproxy();
    let op = w.operator();
    let g = granted(w.node("n1").pre_reboot(&params("app", "n1"), None));
    assert_eq!(lb.status("n1"), "MAINT");
    // n1 "dies": it calls no more, and nothing answers at its address.
    lb.h.command(&format!(
        "set server nodes/n1 addr 127.0.0.1 port {}",
        free_port()
    ))
    .unwrap();
    wait_for("n1's slot to expire", Duration::from_secs(15), || {
        w.group(&op, "app").holders.is_empty().then_some(())
    });
    wait_for("n1 out of MAINT", Duration::from_secs(5), || {
        (lb.status("n1") != "MAINT").then_some(())
    });
    wait_for("HAProxy sees n1 down", Duration::from_secs(10), || {
        (!lb.h.server("n1").unwrap().is_up()).then_some(())
    });
    let log = w.audit();
    let expired = records(&log, Action::Expire, "app", Some("n1"));
    assert_eq!(expired.len(), 1, "{log:#?}");
    assert_eq!(expired[0].fencing_token, Some(g.holder.fencing_token));
    assert_eq!(records(&log, Action::Undrain, "app", Some("n1")).len(), 1);

    // n2 would be the last server: refused, no slot kept, n2 still serving.
    let (status, kind, value) = refused(w.node("n2").pre_reboot(&params("app", "n2"), None));
    assert_eq!(
        (status, kind),
        (503, ErrorKind::LoadBalancerUnavailable),
        "{value}"
    );
    assert!(
        value.contains("n1"),
        "the error names the node down: {value}"
    );
    assert!(w.group(&op, "app").holders.is_empty(), "a slot was kept");
    assert!(lb.h.server("n2").unwrap().is_up());
    assert_eq!(lb.get(), "n2");

    // n1 comes back: n2 is drained and granted.
    let (host, port) = lb.addrs[0].1.rsplit_once(':').unwrap();
    lb.h.command(&format!("set server nodes/n1 addr {host} port {port}"))
        .unwrap();
    wait_for("n1 up again", Duration::from_secs(15), || {
        lb.h.server("n1").ok().filter(|s| s.is_up())
    });
    let g2 = granted(w.node("n2").pre_reboot(&params("app", "n2"), None));
    assert!(!g2.renewed);
    assert_eq!(lb.status("n2"), "MAINT");
    assert_eq!(lb.get(), "n1");
}
