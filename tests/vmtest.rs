//! The spine end to end: compose the shipped treefiles, build the shipped manifest's image, and
//! boot-test it with the base suite in vm-tests/ (SeaBIOS and OVMF, SSH by the provisioned key,
//! a reboot, and an upgrade to a second commit and back through the node's own ostree tools).
//! Two extra tests, one failing and one skipping, prove the harness reports what it sees.
//! Needs root, the build host's apt sources, QEMU and OVMF (.ci/deps installs them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--repo")
        .arg(dir.join("repo"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_test(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn shipped_image_passes_the_base_suite() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // The image of the shipped manifest, and a second layer for the upgrade test to move to.
    let images = dir.join("images");
    let (ok, out, err) = run(
        &[
            "build",
            "manifests/qemu.toml",
            "--json",
            "--out",
            images.to_str().unwrap(),
        ],
        dir,
    );
    assert!(ok, "cairn build: {err}");
    let built: Value = serde_json::from_str(&out).unwrap();
    let image = built["artifacts"][0]["path"].as_str().unwrap().to_string();
    let (ok, _, err) = run(&["compose", "treefiles/app-example.toml"], dir);
    assert!(ok, "cairn compose app-example: {err}");

    // Tests that must fail and skip: the harness has to see both.
    let selftest = dir.join("selftest");
    std::fs::create_dir(&selftest).unwrap();
    write_test(
        &selftest,
        "fails",
        "#!/bin/sh\n## tags = [\"selftest\"]\necho 'this test fails on purpose' >&2\nexit 3\n",
    );
    write_test(
        &selftest,
        "skips",
        "#!/bin/sh\necho 'not for this host'\nexit 77\n",
    );

    let out_dir = dir.join("vm-tests-out");
    let (ok, out, err) = run(
        &[
            "vm-test",
            "--image",
            &image,
            "--json",
            "--out",
            out_dir.to_str().unwrap(),
            "vm-tests/",
            selftest.to_str().unwrap(),
        ],
        dir,
    );
    eprintln!("{err}");
    assert!(!ok, "the failing self-test must fail the run");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    eprintln!(
        "vm-test: {} s, {} VMs at a time, accel {}; boots: {}",
        report["seconds"], report["jobs"], report["accel"], report["boots"]
    );
    let mut seen = Vec::new();
    for c in report["cases"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let status = c["status"].as_str().unwrap();
        seen.push(id.to_string());
        let want = match id {
            "fails@bios" => "fail",
            "skips@bios" => "skip",
            _ => "pass",
        };
        assert_eq!(status, want, "{id}: {}", c["message"]);
    }
    seen.sort();
    for id in [
        "basic/boot@bios",
        "basic/boot@uefi",
        "basic/no-failed-units@bios",
        "basic/filesystems@bios",
        "basic/var-persists@bios",
        "basic/ostree-status@bios",
        "basic/provisioning@bios",
        "basic/no-passwords@bios",
        "basic/root-fills-disk@bios",
        "basic/journal-persistent@bios",
        "upgrade/deploy-and-rollback@bios",
        "upgrade/deploy-and-rollback@uefi",
    ] {
        assert!(seen.iter().any(|s| s == id), "{id} did not run: {seen:?}");
    }
    // The failed test's logs are kept; JUnit lists every case.
    let logs = out_dir.join("fails@bios");
    let output = std::fs::read_to_string(logs.join("output.txt")).unwrap();
    assert!(output.contains("this test fails on purpose"), "{output}");
    let console = std::fs::read_to_string(logs.join("console.log")).unwrap();
    assert!(
        console.contains("Linux version"),
        "the console log holds the boot"
    );
    let journal = std::fs::read_to_string(logs.join("journal.txt")).unwrap();
    assert!(journal.contains("systemd"), "the journal was saved");
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");
    assert!(junit.contains("<skipped"), "{junit}");
    // Every VM is gone.
    let ps = Command::new("pgrep")
        .args(["-f", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "a VM is still running");
}
