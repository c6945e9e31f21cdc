//! `cairn image` of a real compose (needs root, the build host's apt sources and the tools
//! `.ci/deps` installs): the same commit and the same manifest give a bit-identical raw disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// Run cairn with the test's repo and cache; panics with stderr on failure, returns its JSON.
fn cairn(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(bin())
        .args(args)
        .arg("--json")
        .arg("--repo")
        .arg(dir.join("repo"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The shipped QEMU layout (manifests/qemu.toml), from the base treefile, without provisioning,
/// as raw and qcow2.
fn manifest(dir: &Path) -> PathBuf {
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

#[test]
fn the_same_commit_and_manifest_give_a_bit_identical_raw_image() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let treefile = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/base.toml");
    let composed = cairn(dir, &["compose", treefile.to_str().unwrap()]);
    let rev = composed[0]["ref"].as_str().unwrap().to_string();
    let m = manifest(dir);
    let m = m.to_str().unwrap();

    let (a, b) = (dir.join("A"), dir.join("B"));
    let ra = cairn(
        dir,
        &["image", m, "--rev", &rev, "--out", a.to_str().unwrap()],
    );
    let rb = cairn(
        dir,
        &["image", m, "--rev", &rev, "--out", b.to_str().unwrap()],
    );
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
        let kept = d.keep();
        panic!(
            "two builds of the same commit differ: compare {} and {} with cmp -l (kept {})",
            raw_a.display(),
            raw_b.display(),
            kept.display()
        );
    }
    // What is made from the raw disk follows it.
    assert_eq!(artifact(&ra, "qcow2", &a).1, artifact(&rb, "qcow2", &b).1);
    let stream = |r: &Value| std::fs::read(r["stream_metadata"].as_str().unwrap()).unwrap();
    assert_eq!(stream(&ra), stream(&rb), "stream metadata");
}
