//! Defects found in review, each pinned by a test that failed before its fix.

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
