//! Fleet rollouts end to end: two nodes of the app-example image behind HAProxy on loopback,
//! brought up by the qemu provider and handed, for one rollout, to a fleet of the `ssh`
//! provider as existing hosts (their own HAProxy); a bounded load through the driven fleet's
//! HAProxy for the whole chain that counts every failed request, a watch on how many nodes
//! serve, and the operator's commands. Each step is a named test on the one world (see
//! `../chain`); together they prove zero failed requests and never fewer than `nodes −
//! max-unavailable` serving. Needs root, the build host's apt sources, QEMU, HAProxy and gpg
//! (.ci/deps installs them).

use cairn::fleet::haproxy::RuntimeApi as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::chain::Step;
use super::fleet_world::{ok, text, Driven, World};
use cairn::fleet::haproxy::Haproxy;
use cairn::fleet::provider::FleetRecord;
use serde_json::Value;

/// The fleet's size and its policy's `max-unavailable` (fleet_world.rs writes them): two nodes
/// prove every behaviour a larger fleet would (one node out at a time, the other serving every
/// request), with the fewest VMs beside the vm-test chain's on a 2-core machine.
const NODES: usize = 2;
const MAX_UNAVAILABLE: usize = 1;

pub fn steps() -> Vec<Step<World>> {
    vec![
        Step::new("comes_up_behind_haproxy_and_serves", comes_up),
        Step::new(
            "an_unsigned_commit_is_refused_before_any_node_is_touched",
            unsigned_refused,
        ),
        Step::new(
            "an_ssh_fleet_of_the_same_vms_comes_up_behind_its_own_haproxy",
            ssh_fleet_comes_up,
        ),
        Step::new(
            "a_second_rollout_is_refused_naming_the_holder",
            second_start_refused,
        ),
        Step::new(
            "an_in_place_rollout_killed_mid_batch_resumes_to_done",
            in_place_resumes,
        ),
        Step::new(
            "the_ssh_fleet_goes_down_and_its_hosts_serve_on",
            ssh_fleet_goes_down,
        ),
        Step::new(
            "a_replace_rollout_killed_at_each_step_resumes_to_done",
            replace_resumes,
        ),
        Step::new(
            "an_unhealthy_commit_halts_the_rollout_at_its_first_node",
            unhealthy_halts,
        ),
        Step::new(
            "pull_a_wave_moves_every_node_when_it_reaches_it_one_slot_at_a_time",
            super::pull::wave,
        ),
        Step::new(
            "pull_a_bad_release_rolls_its_first_node_back_and_halts_the_group",
            super::pull::bad_release_halts,
        ),
        Step::new(
            "pull_a_recall_after_the_wave_brings_every_node_back",
            super::pull::recall_brings_every_node_back,
        ),
        Step::new(
            "a_node_lost_mid_batch_halts_the_rollout_naming_it",
            lost_node_halts,
        ),
        Step::new(
            "no_request_failed_and_enough_nodes_served_throughout",
            no_request_failed,
        ),
    ]
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Each node's (name, step, version) in the rollout's state.
fn steps_of(r: &Value) -> Vec<(String, String, String)> {
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

fn version(v: &Value) -> String {
    v["version"].as_str().unwrap().to_string()
}

/// v1 composed and imaged; the fleet comes up from it; the load and the watch start.
fn comes_up(w: &mut World) {
    let v1 = w.compose("v1", &World::app_lines(&[], &[]));
    w.versions.push(v1);
    w.image();
    ok(
        "fleet up",
        w.cairn(&["fleet", "up", w.fleet().to_str().unwrap()]),
    );
    w.up = true;
    w.drive(Driven::Qemu);
    let out = ureq::get(&w.url()).call().expect("the service answers");
    assert_eq!(out.status(), 200);
}

/// A commit of v1's tree that nobody signed: `rollout start` refuses it naming the key the nodes
/// trust (read from a node's own keyring), and no rollout is recorded.
fn unsigned_refused(w: &mut World) {
    let out = std::process::Command::new("ostree")
        .arg(format!("--repo={}", w.repo.display()))
        .args([
            "commit",
            "--branch=test/unsigned",
            "--tree=ref=cairn/amd64/app-example",
            "--subject=unsigned",
        ])
        .output()
        .unwrap();
    ok("ostree commit", out);
    let fleet = w.fleet().to_str().unwrap().to_string();
    let out = w.cairn(&["rollout", "start", &fleet, "--to", "test/unsigned"]);
    assert!(!out.status.success(), "an unsigned commit was rolled out");
    let err = text(&out.stderr);
    assert!(
        err.contains("test/unsigned's commit")
            && err.contains("is not signed by a key it-")
            && err.contains(&format!("({} signed its booted commit", w.fingerprint))
            && err.contains("cairn sign test/unsigned"),
        "{err}"
    );
    assert!(
        w.rollout().is_null(),
        "a rollout was recorded: {}",
        w.rollout()
    );
}

/// The qemu fleet's VMs handed to a fleet of the `ssh` provider as existing hosts (their
/// forwarded SSH ports, the fleet's key): it comes up behind an HAProxy of its own, and the load
/// and the watch move to it for its rollout (the next two steps).
fn ssh_fleet_comes_up(w: &mut World) {
    w.write_ssh_fleet();
    let ssh = w.ssh_fleet.to_str().unwrap().to_string();
    ok("fleet up (ssh)", w.cairn(&["fleet", "up", &ssh]));
    w.ssh_up = true;
    let rec = w.record(Driven::Ssh);
    let names = |r: &FleetRecord| r.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&rec), names(&w.record(Driven::Qemu)));
    assert!(rec.nodes.iter().all(|n| n.vm.is_none()), "{rec:?}");
    w.drive(Driven::Ssh);
    let out = ureq::get(&w.url())
        .call()
        .expect("the ssh fleet's service answers");
    assert_eq!(out.status(), 200);
}

/// In place to v2 on the ssh fleet: while the first rollout runs, a second `start` is refused naming it.
fn second_start_refused(w: &mut World) {
    let v2 = w.compose("v2", &World::app_lines(&["hello"], &[]));
    w.versions.push(v2);
    let first = w.start(&[]).stderr(Stdio::null()).spawn().unwrap();
    let pid = first.id();
    w.running = Some(first);
    wait_for("the first node done", Duration::from_secs(1800), || {
        steps_of(&w.rollout()).iter().any(|s| s.1 == "done")
    });
    let second = w.start(&[]).output().unwrap();
    assert!(!second.status.success());
    let err = text(&second.stderr);
    assert!(
        err.contains("another rollout holds") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
}

/// The first rollout, SIGKILLed while its second node is out of service, resumes to done.
fn in_place_resumes(w: &mut World) {
    let mut first = w.running.take().expect("the rollout of the step before");
    wait_for(
        "the second node in flight",
        Duration::from_secs(900),
        || {
            steps_of(&w.rollout())
                .iter()
                .filter(|s| !["pending", "done"].contains(&s.1.as_str()))
                .count()
                == 1
        },
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let r = w.rollout();
    let out = steps_of(&r)
        .iter()
        .filter(|s| ["draining", "upgrading", "rebooting", "verifying"].contains(&s.1.as_str()))
        .count();
    assert!(out <= MAX_UNAVAILABLE, "more than max-unavailable out: {r}");
    let fleet = w.fleet().to_str().unwrap().to_string();
    ok("rollout resume", w.cairn(&["rollout", "resume", &fleet]));
    let r = w.rollout();
    assert_eq!(r["phase"], "done", "{r}");
    let v2 = version(&w.versions[1]);
    for (name, step, v) in steps_of(&r) {
        assert_eq!((step.as_str(), v.as_str()), ("done", v2.as_str()), "{name}");
    }
}

/// The ssh fleet, its rollout done, goes down (its HAProxy; never its hosts): once the qemu
/// fleet's HAProxy sees both nodes up again, the load and the watch move back to it, and the
/// hosts serve v2 through it.
fn ssh_fleet_goes_down(w: &mut World) {
    let lb = Haproxy {
        dir: w.fleets.join("it/haproxy"),
    };
    for n in w.record(Driven::Qemu).nodes {
        lb.wait_up(&n.name, Duration::from_secs(300)).unwrap();
    }
    w.drive(Driven::Qemu);
    let ssh = w.ssh_fleet.to_str().unwrap().to_string();
    ok("fleet down (ssh)", w.cairn(&["fleet", "down", &ssh]));
    w.ssh_up = false;
    assert!(!w.fleets.join("it-ssh/fleet.json").exists());
    let body = ureq::get(&w.url())
        .call()
        .expect("the qemu fleet's service answers")
        .into_string()
        .unwrap();
    let v2 = version(&w.versions[1]);
    assert!(
        body.contains(&v2),
        "not v2 ({v2}) after the ssh fleet's rollout: {body}"
    );
}

/// Start `cairn rollout start … --strategy replace`, its progress lines readable.
fn spawn_replace(w: &World) -> (Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    let mut c = w
        .start(&["--strategy", "replace"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(c.stderr.take().unwrap()).lines();
    (c, lines)
}

/// Replace to v3 from its image, the orchestrator SIGKILLed once at each step of the strategy
/// (a new node creating — while its VM boots —, joining, baking; an old node draining,
/// removing) and started again with the same arguments each time.
fn replace_resumes(w: &mut World) {
    let v3 = w.compose("v3", &World::app_lines(&["hello", "tree"], &[]));
    w.image();
    let old: Vec<String> = w
        .record(Driven::Qemu)
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(old.len(), NODES);
    let mut kills = vec!["creating", "joining", "baking", "draining", "removing"];
    while !kills.is_empty() {
        let (mut child, lines) = spawn_replace(w);
        let mut hit = None;
        for line in lines.map_while(Result::ok) {
            eprintln!("replace: {line}");
            let Some(k) = kills
                .iter()
                .position(|k| line.contains(&format!(": {k} (")))
            else {
                continue;
            };
            if kills[k] == "creating" {
                // While the new node's VM boots, not before it starts.
                std::thread::sleep(Duration::from_secs(20));
            }
            hit = Some(kills.remove(k));
            break;
        }
        let Some(step) = hit else {
            let st = child.wait().unwrap();
            panic!(
                "the rollout ended ({st}) before it reached {kills:?}: {}",
                w.rollout()
            );
        };
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("replace: killed at {step}; starting it again");
        let r = w.rollout();
        assert_eq!(r["phase"], "running", "killed at {step}: {r}");
    }
    ok(
        "the last start of the replace rollout",
        w.start(&["--strategy", "replace"]).output().unwrap(),
    );
    let r = w.rollout();
    assert_eq!(r["phase"], "done", "{r}");
    let serving: Vec<_> = steps_of(&r).into_iter().filter(|s| s.1 == "done").collect();
    assert_eq!(serving.len(), NODES, "{r}");
    for (name, _, v) in &serving {
        assert!(!old.contains(name), "{name} is an old node");
        assert_eq!(v, &version(&v3));
    }
    assert!(steps_of(&r)
        .iter()
        .filter(|s| old.contains(&s.0))
        .all(|s| s.1 == "removed"));
    w.versions.push(v3);
}

/// A v4 whose health check fails: the first node rolls itself back; the rollout halts and no
/// other node is touched; `status` names the node and the reason.
fn unhealthy_halts(w: &mut World) {
    let fail = w.dir.join("50-fail");
    std::fs::write(
        &fail,
        "#!/bin/sh\necho 'the v4 check fails on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lines = World::app_lines(
        &["hello", "tree"],
        &[(fail.as_path(), "/usr/lib/cairn/health.d/50-fail")],
    );
    w.versions.push(w.compose("v4", &lines));
    let out = w.start(&[]).output().unwrap();
    assert!(
        !out.status.success(),
        "a rollout to a failing commit must not succeed"
    );
    let r = w.rollout();
    assert_eq!(r["phase"], "halted", "{r}");
    let s = steps_of(&r);
    let failed: Vec<_> = s.iter().filter(|x| x.1 == "failed").collect();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(
        s.iter().filter(|x| x.1 == "pending").count(),
        NODES - 1,
        "no other node touched: {r}"
    );
    let fleet = w.fleet().to_str().unwrap().to_string();
    let status = ok("rollout status", w.cairn(&["rollout", "status", &fleet]));
    assert!(
        status.contains(&failed[0].0)
            && status.contains("rolled itself back")
            && status.contains("50-fail"),
        "{status}"
    );
}

/// A node whose VM is killed in the middle of its move to v5 (its deploy, reboot or verdict):
/// the rollout halts and names it as vanished.
fn lost_node_halts(w: &mut World) {
    w.versions
        .push(w.compose("v5", &World::app_lines(&["hello", "tree", "sl"], &[])));
    let mut run = w.start(&[]).stderr(Stdio::null()).spawn().unwrap();
    let mut victim = String::new();
    wait_for(
        "a node rebooting",
        Duration::from_secs(900),
        || match steps_of(&w.rollout())
            .into_iter()
            .find(|s| s.1 == "rebooting" || s.1 == "verifying")
        {
            Some(s) => {
                victim = s.0;
                true
            }
            None => false,
        },
    );
    w.kill_vm(&victim);
    assert!(!run.wait().unwrap().success());
    let r = w.rollout();
    assert_eq!(r["phase"], "halted", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&victim) && reason.contains("vanished"),
        "{r}"
    );
}

/// The load saw no failed request, and HAProxy never had fewer than `nodes − max-unavailable`
/// nodes serving (the lost node of the step before was out of service when it died).
fn no_request_failed(w: &mut World) {
    let (Some(load), Some(watch)) = (w.load.take(), w.serving.take()) else {
        panic!("no load: the first step did not start it");
    };
    let (fewest, lows) = watch.stop();
    let mut seen = std::mem::take(&mut w.seen);
    seen.push((w.driven.name().to_string(), load.stop(), fewest, lows));
    for (fleet, report, fewest, lows) in &seen {
        eprintln!(
            "load through {fleet}: {} requests, {} failed {:?}, by page: {:?}, in {:.0} s; \
             serving: at fewest {fewest}: {lows:?}",
            report.requests, report.failed, report.failures, report.bodies, report.seconds
        );
    }
    assert_eq!(
        seen.len(),
        3,
        "the qemu fleet, the ssh fleet, the qemu fleet again"
    );
    for (fleet, report, fewest, lows) in &seen {
        assert!(report.requests > 100, "{fleet}: {report:?}");
        assert_eq!(
            report.failed, 0,
            "{fleet}: failed requests: {:?}",
            report.examples
        );
        assert!(
            *fewest >= NODES - MAX_UNAVAILABLE,
            "{fleet}: only {fewest} nodes served at one point: {lows:?}"
        );
    }
}
