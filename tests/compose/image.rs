//! `cairn image` of the first compose's base commit: the shipped manifest refuses a host without
//! cloud-init; the shipped layout without provisioning gives a GPT disk whose GRUB reads the
//! syslinux configuration libostree keeps in /boot; and the same commit and the same manifest
//! give a bit-identical raw disk (a layout with a /boot partition of its own, raw and qcow2).
//! These steps build on the base that `main.rs`'s first step composed, so no compose of their
//! own is needed.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};

use serde_json::Value;

use super::env::{bin, Env};
use super::{World, BASE_REF};

/// `cairn image MANIFEST --json --rev BASE_REF --out OUT` on the first compose's repo and cache.
fn image(a: &Env, manifest: &Path, out: &Path) -> Output {
    StdCommand::new(bin())
        .arg("image")
        .arg(manifest)
        .args(["--json", "--rev", BASE_REF])
        .arg("--repo")
        .arg(&a.repo)
        .arg("--cache")
        .arg(&a.cache)
        .arg("--out")
        .arg(out)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// An image that must be made: its JSON result.
fn image_json(a: &Env, manifest: &Path, out: &Path) -> Value {
    let o = image(a, manifest, out);
    assert!(
        o.status.success(),
        "cairn image: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The shipped manifest provisions with cloud-init, which base lacks: a clear error.
pub fn the_shipped_manifest_refuses_a_host_without_cloud_init(w: &mut World) {
    let images = w.path().join("images");
    let out = image(&w.a, Path::new("manifests/qemu.toml"), &images);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("manifests/qemu.toml: key `provisioning`") && err.contains("cloud-init"),
        "{err}"
    );
    assert!(!images.join("cairn-qemu-1.0.qcow2").exists());
}

/// A disk image from the base commit in the shipped layout without provisioning: GPT with the
/// three partitions, GRUB on the ESP, and the syslinux configuration libostree maintains in
/// /boot on the root filesystem (what GRUB reads), whose kernel is the deployment's own,
/// hardlinked.
pub fn the_base_disk_image_has_gpt_grub_and_a_hardlinked_kernel(w: &mut World) {
    let images = w.path().join("images");
    let manifest = w.path().join("base-qemu.toml");
    let shipped = std::fs::read_to_string("manifests/qemu.toml").unwrap();
    std::fs::write(
        &manifest,
        shipped
            .replace("provisioning = \"nocloud\"", "provisioning = \"none\"")
            // The release key made on first use, in the test's directory.
            .replace("\"../build/release-key\"", "\"release-key\"")
            .replace(
                "treefile = \"../treefiles/blessed.toml\"",
                &format!("ref = \"{BASE_REF}\""),
            ),
    )
    .unwrap();
    let res = image_json(&w.a, &manifest, &images);
    let qcow2 = PathBuf::from(res["artifacts"][0]["path"].as_str().unwrap());
    assert!(qcow2.ends_with("cairn-qemu-1.0.qcow2"), "{qcow2:?}");
    let stream: Value =
        serde_json::from_slice(&std::fs::read(res["stream_metadata"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        stream["architectures"]["x86_64"]["artifacts"]["qemu"]["formats"]["qcow2"]["disk"]
            ["sha256"],
        res["artifacts"][0]["sha256"]
    );
    let raw = w.path().join("check.raw");
    let conv = StdCommand::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow2)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(conv.success());
    check_partitions(&raw);
    check_boot(&raw);
    std::fs::remove_file(&raw).unwrap();
}

/// GPT with BIOS boot, the ESP (GRUB's UEFI image on it) and root, and no boot partition.
fn check_partitions(raw: &Path) {
    let gpt = StdCommand::new("sgdisk")
        .arg("-p")
        .arg(raw)
        .output()
        .unwrap();
    let gpt = String::from_utf8_lossy(&gpt.stdout);
    for (code, name) in [
        ("EF02", "BIOS-BOOT"),
        ("EF00", "EFI-SYSTEM"),
        ("8304", "root"),
    ] {
        assert!(
            gpt.lines().any(|l| l.contains(code) && l.contains(name)),
            "{name}: {gpt}"
        );
    }
    assert!(!gpt.contains("8300"), "no boot partition: {gpt}");
    // The ESP starts at 2 MiB in the shipped layout.
    let esp = StdCommand::new("mdir")
        .args(["-i", &format!("{}@@2M", raw.display()), "::/EFI/BOOT"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&esp.stdout).contains("BOOTX64"),
        "{}",
        String::from_utf8_lossy(&esp.stderr)
    );
}

/// /boot/loader/syslinux.cfg on the root filesystem names the deployment's kernel, which is a
/// hardlink of the deployment's own.
fn check_boot(raw: &Path) {
    // The root filesystem starts at 129 MiB: debugfs reads it without mounting.
    let debugfs = |request: &str| {
        let out = StdCommand::new("debugfs")
            .args(["-R", request])
            .arg(format!("{}?offset={}", raw.display(), 129 << 20))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let syslinux = debugfs("cat /boot/loader/syslinux.cfg");
    assert!(
        syslinux.contains("KERNEL /boot/ostree/cairn-")
            && syslinux.contains("ostree=/ostree/boot."),
        "{syslinux}"
    );
    let kernel = syslinux
        .lines()
        .find_map(|l| l.trim().strip_prefix("KERNEL "))
        .unwrap();
    // The kernel in /boot, the deployment's and the sysroot repo's object are one inode.
    let stat = debugfs(&format!("stat {kernel}"));
    let links: u32 = stat
        .split_whitespace()
        .skip_while(|w| *w != "Links:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        links >= 2,
        "{kernel} is not a hardlink of the deployment's kernel:\n{stat}"
    );
}

/// The shipped QEMU layout (manifests/qemu.toml), from the base treefile, with a /boot
/// partition of its own and without provisioning, as raw and qcow2.
fn identical_manifest(dir: &Path) -> PathBuf {
    let treefile = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/base.toml");
    let text = format!(
        r#"name = "cairn-base-test"
treefile = "{}"
osname = "cairn"
kernel-arguments = ["console=tty0", "console=ttyS0,115200n8"]
size = "4G"
firmware = ["bios", "uefi"]
formats = ["raw", "qcow2"]
provisioning = "none"
# No remote to trust: the explicit opt-out of signed updates.
remote-gpg-verify = false

[[partitions]]
label = "BIOS-BOOT"
type = "bios-boot"
size = "1M"

[[partitions]]
label = "EFI-SYSTEM"
type = "esp"
size = "127M"

[[partitions]]
label = "boot"
type = "boot"
size = "384M"

[[partitions]]
label = "root"
type = "root"
"#,
        treefile.display()
    );
    let path = dir.join("base-test.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The artifact of `format` in an image result, checked against the file it names.
fn artifact(result: &Value, format: &str, out: &Path) -> (PathBuf, String) {
    let a = result["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == format)
        .unwrap_or_else(|| panic!("no {format} artifact in {result}"));
    let path = PathBuf::from(a["path"].as_str().unwrap());
    assert!(
        path.starts_with(out),
        "{} is not under {}",
        path.display(),
        out.display()
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.is_file() && meta.len() == a["size"].as_u64().unwrap());
    let sha = cairn::base::digest::sha256_file(&path).unwrap();
    assert_eq!(a["sha256"].as_str().unwrap(), sha, "{}", path.display());
    (path, sha)
}

/// Two builds of the same commit with the same manifest: the same raw disk, bit for bit, and so
/// the same qcow2 and stream metadata.
pub fn the_same_commit_and_manifest_give_a_bit_identical_raw_image(w: &mut World) {
    let m = identical_manifest(w.path());
    let (a, b) = (w.path().join("A"), w.path().join("B"));
    let ra = image_json(&w.a, &m, &a);
    let rb = image_json(&w.a, &m, &b);
    assert_eq!(ra["commit"], rb["commit"]);

    let (raw_a, sha_a) = artifact(&ra, "raw", &a);
    let (raw_b, sha_b) = artifact(&rb, "raw", &b);
    assert_ne!(raw_a, raw_b);
    assert_eq!(
        std::fs::metadata(&raw_a).unwrap().len(),
        4 << 30,
        "the raw disk has the manifest's size"
    );
    if sha_a != sha_b {
        // Out of the test's directory, which goes when the chain ends.
        let kept = tempfile::Builder::new()
            .prefix("cairn-image-differ-")
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        for d in [&a, &b] {
            std::fs::rename(d, kept.join(d.file_name().unwrap())).unwrap();
        }
        panic!(
            "two builds of the same commit differ: compare {0}/A/{1} and {0}/B/{1} with cmp -l",
            kept.display(),
            raw_a.strip_prefix(&a).unwrap().display(),
        );
    }
    // What is made from the raw disk follows it.
    assert_eq!(artifact(&ra, "qcow2", &a).1, artifact(&rb, "qcow2", &b).1);
    let stream = |r: &Value| std::fs::read(r["stream_metadata"].as_str().unwrap()).unwrap();
    assert_eq!(stream(&ra), stream(&rb), "stream metadata");
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
