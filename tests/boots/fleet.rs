//! Fleet rollouts end to end through the qemu provider: three nodes of the app-example image
//! behind HAProxy on loopback, a bounded load through HAProxy for the whole test that counts
//! every failed request, and the operator's commands:
//!
//! 1. in place, v1 → v2 with `max-unavailable = 1`; a second `rollout start` while it runs is
//!    refused naming the holder; the orchestrator is killed with SIGKILL mid-rollout and resumed;
//! 2. replace, v2 → v3 with `max-surge = 1`: every node new, on v3, the old ones gone;
//! 3. a v4 whose health check fails: the first node rolls itself back, the rollout halts, no
//!    other node is touched, `status` names the node and the reason;
//! 4. a node whose VM is killed during its batch: the rollout halts and names it, the others
//!    keep serving.
//!
//! Zero failed requests throughout. Needs root, the build host's apt sources, QEMU, HAProxy and
//! gpg (.ci/deps installs them).

use std::time::{Duration, Instant};

use super::fleet_world::{ok, text, World};
use cairn::fleet::load::{Load, LoadOpts};
use serde_json::Value;

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn steps(r: &Value) -> Vec<(String, String, String)> {
    r["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or("").to_string(),
                        n["step"]["step"].as_str().unwrap_or("").to_string(),
                        n["version"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rollouts_keep_every_request() {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("cairn-fleet-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut w = World::new(work.path());
    let t = |what: &str| eprintln!("[{:7.1} s] {what}", started.elapsed().as_secs_f64());

    // v1 and its image; the fleet comes up from it.
    let v1 = w.compose("v1", &World::app_lines(&[], &[]));
    w.image();
    t("v1 composed and imaged");
    ok(
        "fleet up",
        w.cairn(&["fleet", "up", w.fleet.to_str().unwrap()]),
    );
    w.up = true;
    t("fleet up");
    let load = Load::start(&LoadOpts {
        url: w.url(),
        workers: 2,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    });

    // 1. In place to v2, killed mid-way and resumed; a second start is refused meanwhile.
    let v2 = w.compose("v2", &World::app_lines(&["hello"], &[]));
    let fleet = w.fleet.to_str().unwrap().to_string();
    let mut first = w
        .start(&[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first node done", Duration::from_secs(1800), || {
        steps(&w.rollout()).iter().any(|s| s.1 == "done")
    });
    let second = w.start(&[]).output().unwrap();
    assert!(!second.status.success());
    let err = text(&second.stderr);
    assert!(
        err.contains("another rollout holds") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // Kill it while the second node is out of service.
    wait_for(
        "the second node in flight",
        Duration::from_secs(900),
        || {
            steps(&w.rollout())
                .iter()
                .filter(|s| !["pending", "done"].contains(&s.1.as_str()))
                .count()
                == 1
        },
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let r = w.rollout();
    let out: usize = steps(&r)
        .iter()
        .filter(|s| ["draining", "upgrading", "rebooting", "verifying"].contains(&s.1.as_str()))
        .count();
    assert!(
        out <= 1,
        "more than max-unavailable out after the kill: {r}"
    );
    t("orchestrator killed");
    ok("rollout resume", w.cairn(&["rollout", "resume", &fleet]));
    let r = w.rollout();
    assert_eq!(r["phase"], "done", "{r}");
    for (name, step, version) in steps(&r) {
        assert_eq!(step, "done", "{name}");
        assert_eq!(version, v2["version"].as_str().unwrap(), "{name}");
    }
    t("in place to v2");

    // 2. Replace to v3 from its image.
    let v3 = w.compose("v3", &World::app_lines(&["hello", "tree"], &[]));
    w.image();
    let old: Vec<String> = steps(&w.rollout()).into_iter().map(|s| s.0).collect();
    ok(
        "rollout replace",
        w.start(&["--strategy", "replace"]).output().unwrap(),
    );
    let r = w.rollout();
    let serving: Vec<(String, String, String)> =
        steps(&r).into_iter().filter(|s| s.1 == "done").collect();
    assert_eq!(serving.len(), 3, "{r}");
    for (name, _, version) in &serving {
        assert!(!old.contains(name), "{name} is an old node");
        assert_eq!(version, v3["version"].as_str().unwrap());
    }
    assert!(steps(&r)
        .iter()
        .filter(|s| old.contains(&s.0))
        .all(|s| s.1 == "removed"));
    t("replace to v3");

    // 3. A v4 whose health check fails: the first node rolls itself back; the rollout halts.
    let fail = work.path().join("50-fail");
    std::fs::write(
        &fail,
        "#!/bin/sh\necho 'the v4 check fails on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let v4 = w.compose(
        "v4",
        &World::app_lines(
            &["hello", "tree"],
            &[(fail.as_path(), "/usr/lib/cairn/health.d/50-fail")],
        ),
    );
    let out = w.start(&[]).output().unwrap();
    assert!(
        !out.status.success(),
        "a rollout to a failing commit must not succeed"
    );
    let r = w.rollout();
    assert_eq!(r["phase"], "halted", "{r}");
    let s = steps(&r);
    let failed: Vec<&(String, String, String)> = s.iter().filter(|x| x.1 == "failed").collect();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(
        s.iter().filter(|x| x.1 == "pending").count(),
        2,
        "no other node touched: {r}"
    );
    let status = ok("rollout status", w.cairn(&["rollout", "status", &fleet]));
    assert!(
        status.contains(&failed[0].0)
            && status.contains("rolled itself back")
            && status.contains("50-fail"),
        "{status}"
    );
    let _ = v4;
    t("v4 halted");

    // 4. A node lost during its batch: the rollout halts and names it.
    let v5 = w.compose("v5", &World::app_lines(&["hello", "tree", "sl"], &[]));
    let mut run = w
        .start(&[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut victim = String::new();
    wait_for("a node rebooting", Duration::from_secs(900), || {
        if let Some(s) = steps(&w.rollout())
            .into_iter()
            .find(|s| s.1 == "rebooting" || s.1 == "verifying")
        {
            victim = s.0;
            true
        } else {
            false
        }
    });
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(w.fleets.join("it/fleet.json")).unwrap())
            .unwrap();
    let pid = rec["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == victim.as_str())
        .unwrap()["vm"]["pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = run.wait().unwrap();
    assert!(!st.success());
    let r = w.rollout();
    assert_eq!(r["phase"], "halted", "{r}");
    assert!(r["reason"].as_str().unwrap().contains(&victim), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("vanished"), "{r}");
    let _ = v5;
    t("lost node halted the rollout");

    let report = load.stop();
    eprintln!(
        "load: {} requests, {} failed {:?}, by page: {:?}, in {:.0} s",
        report.requests, report.failed, report.failures, report.bodies, report.seconds
    );
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.examples);
    let _ = v1;
    t("done");
}
