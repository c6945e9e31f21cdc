//! The blessed layer's `cloud-init-once` script (treefiles/files/cloud-init-once.sh): cloud-init
//! skips the boots after an instance's first one, unless provisioning asked for something at
//! every boot. Run against a fake root (`CLOUD_INIT_ONCE_ROOT`).

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/treefiles/files/cloud-init-once.sh"
);
const FLAG: &str = "etc/cloud/cloud-init.disabled";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(p, text).unwrap();
}

/// A root whose instance `i-1` finished its first boot from NoCloud without errors.
fn provisioned() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "var/lib/cloud/instance/boot-finished", "1.0 - done\n");
    write(
        r,
        "var/lib/cloud/instance/datasource",
        "DataSourceNoCloudNet: DataSourceNoCloudNet [seed=/dev/vdb][dsmode=net]\n",
    );
    write(
        r,
        "var/lib/cloud/instance/cloud-config.txt",
        "#cloud-config\nssh_authorized_keys:\n- ssh-ed25519 AAAA\n",
    );
    write(r, "var/lib/cloud/data/instance-id", "i-1\n");
    write(
        r,
        "run/cloud-init/result.json",
        r#"{"v1": {"datasource": "DataSourceNoCloudNet", "errors": []}}"#,
    );
    fs_err::create_dir_all(r.join("etc/cloud")).unwrap();
    d
}

/// Run the script (`--write` as the boot ends); its output.
fn run(root: &Path, write: bool) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg(SCRIPT).env("CLOUD_INIT_ONCE_ROOT", root);
    if write {
        cmd.arg("--write");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_provisioned_instance_skips_cloud_init_from_its_next_boot() {
    let d = provisioned();
    let said = run(d.path(), false);
    assert!(said.contains("will skip"), "{said}");
    assert!(
        !d.path().join(FLAG).exists(),
        "written before the boot ended"
    );
    let said = run(d.path(), true);
    assert!(said.contains("instance i-1 provisioned"), "{said}");
    let flag = fs_err::read_to_string(d.path().join(FLAG)).unwrap();
    assert!(flag.contains("instance i-1"), "{flag}");
}

#[test]
fn a_deployment_made_during_the_first_boot_skips_cloud_init_too() {
    // `cairn node upgrade` in the first boot (a fleet rollout) deploys with this boot's /etc,
    // before the flag exists; the booted deployment's /etc is the root's own.
    let d = provisioned();
    let r = d.path();
    let deploy = "ostree/deploy/cairn/deploy";
    fs_err::create_dir_all(r.join(format!("{deploy}/new.0/etc/cloud"))).unwrap();
    fs_err::create_dir_all(r.join(format!("{deploy}/old.0/etc"))).unwrap();
    let said = run(r, true);
    assert!(said.contains("cairn/deploy/new.0/etc"), "{said}");
    let flag = fs_err::read_to_string(r.join(format!("{deploy}/new.0/{FLAG}"))).unwrap();
    assert!(flag.contains("instance i-1"), "{flag}");
    assert!(
        !r.join(format!("{deploy}/old.0/etc/cloud")).exists(),
        "a deployment without cloud-init is left alone"
    );
}

#[test]
fn cloud_init_stays_on_when_a_boot_needs_it() {
    type Change = fn(&Path);
    let cases: [(&str, Change); 6] = [
        ("did not finish", |r| {
            fs_err::remove_file(r.join("var/lib/cloud/instance/boot-finished")).unwrap()
        }),
        ("no datasource", |r| {
            write(
                r,
                "var/lib/cloud/instance/datasource",
                "DataSourceNone: DataSourceNone\n",
            )
        }),
        ("errors", |r| {
            write(
                r,
                "run/cloud-init/result.json",
                r#"{"v1": {"datasource": null, "errors": ["boom"]}}"#,
            )
        }),
        ("has bootcmd", |r| {
            write(
                r,
                "var/lib/cloud/instance/vendor-cloud-config.txt",
                "#cloud-config\nbootcmd:\n- echo hi\n",
            )
        }),
        ("boothooks is not empty", |r| {
            write(
                r,
                "var/lib/cloud/instance/boothooks/part-001",
                "#!/bin/sh\n",
            )
        }),
        ("per-boot is not empty", |r| {
            write(r, "var/lib/cloud/scripts/per-boot/tune.sh", "#!/bin/sh\n")
        }),
    ];
    for (why, change) in cases {
        let d = provisioned();
        change(d.path());
        let said = run(d.path(), true);
        assert!(
            said.contains("stays on") && said.contains(why),
            "{why}: {said}"
        );
        assert!(!d.path().join(FLAG).exists(), "{why}: the flag was written");
    }
}
