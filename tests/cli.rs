//! Fast command-line tests: bad treefiles fail with one clear error and touch no repo.

use std::path::Path;

use assert_cmd::Command;

fn cairn() -> Command {
    Command::cargo_bin("cairn").unwrap()
}

fn compose_err(dir: &Path, treefile: &str) -> String {
    let out = cairn()
        .arg("compose")
        .arg(dir.join(treefile))
        .arg("--repo")
        .arg(dir.join("repo"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "compose of {treefile} should fail");
    assert!(
        !dir.join("repo").exists(),
        "a failed compose must not create the repo"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_treefiles_name_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown-key.toml", "ref = \"a/b\"\nreleasever = \"bookworm\"\nbogus = 1\n", "bogus"),
        ("bad-toml.toml", "ref = \"a/b\"\npackages = [\n", "line"),
        ("bad-dest.toml", "ref = \"a/b\"\nreleasever = \"bookworm\"\nadd-files = [[\"unknown-key.toml\", \"/opt/x\"]]\n", "bad-dest.toml:3"),
        ("missing-src.toml", "ref = \"a/b\"\nreleasever = \"bookworm\"\nadd-files = [[\"nope\", \"/etc/x\"]]\n", "missing-src.toml:3"),
        ("cycle-a.toml", "include = [\"cycle-b.toml\"]\nref = \"a/b\"\nreleasever = \"bookworm\"\n", "include cycle"),
        ("cycle-b.toml", "include = [\"cycle-a.toml\"]\n", "include cycle"),
        ("missing-include.toml", "include = [\"nope.toml\"]\nref = \"a/b\"\nreleasever = \"bookworm\"\n", "nope.toml"),
    ];
    for (name, body, _) in &cases {
        std::fs::write(d.path().join(name), body).unwrap();
    }
    for (name, _, want) in &cases {
        let err = compose_err(d.path(), name);
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(name) || err.contains("cycle"),
            "{name}: error names the file: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{name}: one error: {err}"
        );
    }
}

#[test]
fn shipped_treefiles_parse() {
    // Parsing needs no root and no network; a broken shipped treefile fails here first.
    for t in ["base", "blessed", "app-example"] {
        let tf = cairn::treefile::load(Path::new(&format!("treefiles/{t}.toml"))).unwrap();
        assert!(tf.ref_.starts_with("cairn/"), "{t}");
    }
    let app = cairn::treefile::load(Path::new("treefiles/app-example.toml")).unwrap();
    let blessed = app.parent.as_ref().unwrap();
    assert!(blessed.parent.is_some(), "app-example → blessed → base");
}

#[test]
fn shipped_manifests_parse() {
    for m in ["qemu", "app-example"] {
        let m = cairn::image::manifest::load(Path::new(&format!("manifests/{m}.toml"))).unwrap();
        assert!(m.name.starts_with("cairn-"));
    }
    let f = cairn::fleet::manifest::load(Path::new("manifests/fleet-example.toml")).unwrap();
    assert_eq!(f.size(), 3);
    assert_eq!(f.policy.max_unavailable, 1);
    assert!(f.repo_listen.is_some());
    let a = cairn::node::updates::config::AgentConfig::load(Path::new("manifests/agent-app.toml"))
        .unwrap();
    assert_eq!(a.strategy.name(), "fleet-lock");
    assert_eq!(a.group, "app");
}

#[test]
fn diff_and_sbom_need_a_repo() {
    let d = tempfile::tempdir().unwrap();
    let out = cairn()
        .args(["sbom", "cairn/amd64/base", "--repo"])
        .arg(d.path().join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no OSTree repo"));
}

#[test]
fn shipped_manifest_parses() {
    let m = cairn::image::manifest::load(Path::new("manifests/qemu.toml")).unwrap();
    // BIOS boot, ESP and root: /boot lives on the root filesystem.
    assert_eq!(m.partitions.len(), 3);
    assert!(m
        .partition(cairn::image::manifest::PartKind::Boot)
        .is_none());
    assert_eq!(m.firmware.len(), 2, "bios and uefi in one image");
    assert_eq!(m.node.trial_boots, 3);
}

fn vm_test_err(dir: &Path, args: &[&str]) -> String {
    let out = cairn()
        .arg("vm-test")
        .args(args)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--repo")
        .arg(dir.join("no-repo"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "vm-test {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn vm_test_bad_input_is_named_before_any_vm_starts() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let image = dir.join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let tests = dir.join("tests");
    std::fs::create_dir(&tests).unwrap();
    let t = tests.join("t");
    std::fs::write(&t, "#!/bin/sh\ntrue\n").unwrap();

    let e = vm_test_err(
        dir,
        &["--image", "/nonexistent/disk.qcow2", t.to_str().unwrap()],
    );
    assert!(
        e.contains("/nonexistent/disk.qcow2: no such image file"),
        "{e}"
    );

    let e = vm_test_err(
        dir,
        &["--image", image.to_str().unwrap(), t.to_str().unwrap()],
    );
    assert!(e.contains("not executable"), "{e}");

    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&t, "#!/bin/sh\n## timeout = \"forever\"\ntrue\n").unwrap();
    let e = vm_test_err(
        dir,
        &["--image", image.to_str().unwrap(), t.to_str().unwrap()],
    );
    assert!(
        e.contains(&format!("{}:2: key `timeout`", t.display())),
        "{e}"
    );

    let e = vm_test_err(
        dir,
        &[
            "--image",
            image.to_str().unwrap(),
            dir.join("none").to_str().unwrap(),
        ],
    );
    assert!(e.contains("no such test"), "{e}");
    // Nothing was booted.
    assert!(!dir.join("out").join("junit.xml").exists());
}

/// A disk with nothing to boot: QEMU runs (SeaBIOS finds no boot disk), SSH never answers.
fn unbootable(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let image = dir.join("empty.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let t = dir.join("t");
    std::fs::write(&t, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    (image, t)
}

fn qemu_running_under(dir: &Path) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-system-x86_64.*{}", dir.display())])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

#[test]
fn vm_test_boot_timeout_fails_keeps_logs_and_leaves_no_vm() {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        eprintln!("qemu-system-x86_64 is not installed; .ci/deps installs it");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (image, t) = unbootable(d.path());
    let out_dir = d.path().join("out");
    let out = cairn()
        .args([
            "vm-test",
            "--accel",
            "tcg",
            "--boot-timeout",
            "15s",
            "--no-serve-repo",
        ])
        .arg("--image")
        .arg(&image)
        .arg("--out")
        .arg(&out_dir)
        .arg(&t)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL t@bios") && stdout.contains("no SSH login"),
        "{stdout}"
    );
    assert!(out_dir.join("t@bios/console.log").exists());
    assert!(std::fs::read_to_string(out_dir.join("junit.xml"))
        .unwrap()
        .contains("failures=\"1\""));
    assert!(!qemu_running_under(d.path()), "a VM outlived the harness");
}

#[test]
fn vm_test_ctrl_c_stops_every_vm() {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        eprintln!("qemu-system-x86_64 is not installed; .ci/deps installs it");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (image, t) = unbootable(d.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["vm-test", "--accel", "tcg", "--no-serve-repo"])
        .arg("--image")
        .arg(&image)
        .arg("--out")
        .arg(d.path().join("out"))
        .arg(&t)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !qemu_running_under(d.path()) {
        assert!(start.elapsed().as_secs() < 60, "QEMU never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run must not pass");
    assert!(!qemu_running_under(d.path()), "a VM outlived the harness");
}

/// Both SBOM formats, with everything a real compose gives them (source packages, licenses with
/// a LicenseRef, the distribution, the commit), pass their formats' own validators.
#[test]
fn sboms_pass_their_formats_validators() {
    use cairn::base::{Distro, Package, PackageInfo};
    use cairn::describe::sbom;
    let d = tempfile::tempdir().unwrap();
    let distro = Distro {
        id: "debian".into(),
        version_id: "12".into(),
    };
    let pkg = |n: &str, v: &str| Package {
        name: n.into(),
        version: v.into(),
        arch: "amd64".into(),
        sha256: "ab".repeat(32),
    };
    let packages = [
        pkg("libc6", "2.36-9+deb12u4"),
        pkg("libstdc++6", "1:12.2.0-14"),
        pkg("tzdata", "2024a-0+deb12u1"),
    ];
    let info = |n: &str, s: &str, sv: &str, l: &str| PackageInfo {
        name: n.into(),
        source: s.into(),
        source_version: sv.into(),
        license: l.into(),
    };
    let infos = [
        info(
            "libc6",
            "glibc",
            "",
            "(GPL-2.0-or-later OR BSD-3-Clause) AND LGPL-2.1-or-later",
        ),
        info("libstdc++6", "gcc-12", "12.2.0-14", ""),
        info("tzdata", "", "", "LicenseRef-public-domain"),
    ];
    let subject = sbom::Subject {
        ref_: "cairn/amd64/base",
        version: "1.0",
        id: "abc",
        created: 1_700_000_000,
        packages: &packages,
        info: &infos,
        distro: Some(&distro),
        commit: Some(&"cd".repeat(32)),
    };
    let spdx = d.path().join("spdx.json");
    let cdx = d.path().join("cdx.json");
    std::fs::write(&spdx, sbom::spdx(&subject).to_string()).unwrap();
    std::fs::write(&cdx, sbom::cyclonedx(&subject).to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .arg("tests/validate_sboms.py")
        .arg(&spdx)
        .arg(&cdx)
        .output()
        .expect("python3 (.ci/deps installs spdx-tools and cyclonedx-python-lib)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And a broken document is caught: the validators are really looking.
    let mut bad = sbom::spdx(&subject);
    bad["packages"][1]["licenseDeclared"] = "LicenseRef-undeclared".into();
    std::fs::write(&spdx, bad.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .arg("tests/validate_sboms.py")
        .arg(&spdx)
        .arg(&cdx)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("LicenseRef-undeclared"),
        "an undeclared LicenseRef must fail: {said}"
    );
}
