//! Real composes of the shipped treefiles from Debian packages (needs root and the build host's
//! apt sources). One test runs the steps in order so that they share composes; each step says
//! what it checks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

struct Env {
    repo: PathBuf,
    cache: PathBuf,
}

impl Env {
    fn new(root: &Path, name: &str) -> Self {
        Self {
            repo: root.join(name).join("repo"),
            cache: root.join(name).join("cache"),
        }
    }

    fn cmd(&self, args: &[&str]) -> StdCommand {
        let mut c = StdCommand::new(bin());
        c.args(args)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--cache")
            .arg(&self.cache)
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Compose and return the JSON results; panics with stderr on failure.
    fn compose(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["compose", "--json"];
        a.extend_from_slice(args);
        let out = self.cmd(&a).output().unwrap();
        assert!(
            out.status.success(),
            "cairn {a:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    /// Compose expecting failure; returns stderr.
    fn compose_fails(&self, args: &[&str]) -> String {
        let mut a = vec!["compose"];
        a.extend_from_slice(args);
        let out = self.cmd(&a).output().unwrap();
        assert!(!out.status.success(), "cairn {a:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ostree(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ostree_bytes(args)).into_owned()
    }

    fn ostree_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = StdCommand::new("ostree")
            .arg(format!("--repo={}", self.repo.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn rev(&self, r: &str) -> String {
        self.ostree(&["rev-parse", r]).trim().to_string()
    }

    fn meta(&self, r: &str, key: &str) -> String {
        self.ostree(&["show", r, &format!("--print-metadata-key={key}")])
            .trim()
            .to_string()
    }
}

const BASE: &str = "treefiles/base.toml";
const BASE_REF: &str = "cairn/amd64/base";

/// The layout rules of the commit, read back through `ostree ls`.
fn check_layout(e: &Env, commit: &str) {
    let top = e.ostree(&["ls", commit, "/"]);
    for (link, target) in [
        ("/home", "var/home"),
        ("/root", "var/roothome"),
        ("/opt", "var/opt"),
        ("/srv", "var/srv"),
        ("/mnt", "var/mnt"),
        ("/ostree", "sysroot/ostree"),
    ] {
        assert!(
            top.contains(&format!("{link} -> {target}")),
            "{link}: {top}"
        );
    }
    assert!(!top.contains(" /etc\n"), "/etc is moved to /usr/etc: {top}");
    // An empty machine-id: made on the node's first boot, with no first-boot presets.
    assert_eq!(e.ostree(&["cat", commit, "/usr/etc/machine-id"]), "");
    let var = e.ostree(&["ls", "-R", commit, "/var"]);
    assert_eq!(var.lines().count(), 1, "/var is empty: {var}");
    let all = e.ostree(&["ls", "-R", commit, "/"]);
    for line in all.lines() {
        let kind = line.chars().next().unwrap_or(' ');
        assert!("-dl".contains(kind), "only files, dirs and links: {line}");
    }
    for forbidden in [
        "/usr/etc/ssh/ssh_host_",
        "/var/lib/apt/lists/",
        "/var/log/",
        "/var/cache/apt/archives/",
    ] {
        assert!(
            !all.contains(forbidden),
            "{forbidden} must not be in the commit"
        );
    }
    let kver = e
        .meta(commit, "ostree.linux")
        .trim_matches('\'')
        .to_string();
    let moddir = e.ostree(&["ls", commit, &format!("/usr/lib/modules/{kver}")]);
    assert!(
        moddir.contains("/vmlinuz") && moddir.contains("/initramfs.img"),
        "{moddir}"
    );
    assert_eq!(
        e.ostree(&["ls", "-R", commit, "/boot"]).lines().count(),
        1,
        "/boot is empty"
    );
    assert!(all.contains("/usr/lib/sysimage/dpkg/status"));
    assert!(all.contains("/usr/lib/tmpfiles.d/cairn-var.conf"));
    // The initramfs carries OSTree's prepare-root (dracut's ostree module).
    let out = StdCommand::new("sh")
        .arg("-c")
        .arg(format!(
            "ostree --repo={} cat {commit} /usr/lib/modules/{kver}/initramfs.img | zcat",
            e.repo.display()
        ))
        .output()
        .unwrap();
    let names = cpio_names(&out.stdout);
    assert!(names.len() > 100, "initramfs lists {} files", names.len());
    assert!(
        names
            .iter()
            .any(|n| n == "usr/lib/ostree/ostree-prepare-root"),
        "no ostree-prepare-root in the initramfs"
    );
    for key in [
        "version",
        "ostree.bootable",
        "ostree.linux",
        "cairn.inputhash",
        "cairn.packages",
        "cairn.sbom.spdx",
    ] {
        assert!(!e.meta(commit, key).is_empty(), "metadata {key}");
    }
}

/// File names in a newc cpio archive.
fn cpio_names(data: &[u8]) -> Vec<String> {
    let hex =
        |b: &[u8]| usize::from_str_radix(std::str::from_utf8(b).unwrap_or("0"), 16).unwrap_or(0);
    let mut names = Vec::new();
    let mut i = 0;
    while i + 110 <= data.len() && (&data[i..i + 6] == b"070701" || &data[i..i + 6] == b"070702") {
        let filesize = hex(&data[i + 54..i + 62]);
        let namesize = hex(&data[i + 94..i + 102]);
        let name = String::from_utf8_lossy(&data[i + 110..i + 110 + namesize.saturating_sub(1)])
            .into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
        let j = (i + 110 + namesize + 3) & !3;
        i = (j + filesize + 3) & !3;
    }
    names
}

fn wait_for_phase_then_kill(mut child: std::process::Child, phase: &str, delay: Duration) {
    let stderr = child.stderr.take().unwrap();
    let start = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        if line.contains(&format!("{phase}:")) {
            std::thread::sleep(delay);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "compose never reached {phase}"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn compose_end_to_end() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "composing needs root (chroot, mounts)"
    );
    let work = tempfile::Builder::new()
        .prefix("cairn-it-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let a = Env::new(work.path(), "a");

    // 1. Compose base from an empty repo and cache.
    let r = a.compose(&[BASE]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["skipped"], false);
    let c1 = r[0]["commit"].as_str().unwrap().to_string();
    assert_eq!(a.rev(BASE_REF), c1);
    assert_eq!(r[0]["version"], "1.0");
    check_layout(&a, &c1);
    assert!(a.ostree(&["fsck"]).contains("no errors"));

    // 1b. A disk image from that commit: GPT with the three partitions, GRUB on the ESP, and the
    // syslinux configuration libostree maintains in /boot on the root filesystem (what GRUB
    // reads), whose kernel is the deployment's own, hardlinked.
    // The shipped manifest provisions with cloud-init, which base lacks: a clear error.
    let images = work.path().join("images");
    let image_cmd = |manifest: &Path| {
        StdCommand::new(bin())
            .arg("image")
            .arg(manifest)
            .args(["--json", "--rev", BASE_REF])
            .arg("--repo")
            .arg(&a.repo)
            .arg("--cache")
            .arg(&a.cache)
            .arg("--out")
            .arg(&images)
            .output()
            .unwrap()
    };
    let out = image_cmd(Path::new("manifests/qemu.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("manifests/qemu.toml: key `provisioning`") && err.contains("cloud-init"),
        "{err}"
    );
    assert!(!images.join("cairn-qemu-1.0.qcow2").exists());
    // The same layout without provisioning.
    let manifest = work.path().join("base-qemu.toml");
    let shipped = std::fs::read_to_string("manifests/qemu.toml").unwrap();
    std::fs::write(
        &manifest,
        shipped
            .replace("provisioning = \"nocloud\"", "provisioning = \"none\"")
            .replace(
                "treefile = \"../treefiles/blessed.toml\"",
                &format!("ref = \"{BASE_REF}\""),
            ),
    )
    .unwrap();
    let out = image_cmd(&manifest);
    assert!(
        out.status.success(),
        "cairn image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let raw = work.path().join("check.raw");
    let conv = StdCommand::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow2)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(conv.success());
    let gpt = StdCommand::new("sgdisk")
        .arg("-p")
        .arg(&raw)
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
    std::fs::remove_file(&raw).unwrap();

    // 2. No-op: same inputs, nothing written.
    let r = a.compose(&[BASE]);
    assert_eq!(r[0]["skipped"], true);
    assert_eq!(r[0]["commit"], c1.as_str());
    assert_eq!(a.rev(BASE_REF), c1);

    // 3. Lockfile from the commit.
    let lock = work.path().join("base.lock.toml");
    a.compose(&["--write-lockfile", lock.to_str().unwrap(), BASE]);
    let lock_text = std::fs::read_to_string(&lock).unwrap();
    assert!(lock_text.contains("[[package]]") && lock_text.contains("sha256 = "));

    // 4. Reproducible: a clean repo and cache give the same commit checksum.
    let b = Env::new(work.path(), "b");
    let r = b.compose(&[BASE]);
    assert_eq!(r[0]["commit"], c1.as_str(), "same inputs, same commit");

    // 5. From the lockfile, into a third repo: exactly those packages, the same commit.
    let c = Env::new(work.path(), "c");
    let c_env = Env {
        repo: c.repo.clone(),
        cache: b.cache.clone(),
    };
    let r = c_env.compose(&["--lockfile", lock.to_str().unwrap(), BASE]);
    assert_eq!(
        r[0]["commit"],
        c1.as_str(),
        "a lockfile compose reproduces the commit"
    );

    // 6. A lockfile whose digest does not match fails clearly and leaves the ref alone.
    let bad = work.path().join("bad.lock.toml");
    let mut tampered = lock_text.clone();
    let pos = tampered.find("sha256 = \"").unwrap() + "sha256 = \"".len();
    tampered.replace_range(pos..pos + 4, "0000");
    std::fs::write(&bad, tampered).unwrap();
    let err = c_env.compose_fails(&["--force", "--lockfile", bad.to_str().unwrap(), BASE]);
    assert!(
        err.contains("SHA-256") && err.contains("bad.lock.toml"),
        "{err}"
    );
    assert_eq!(c_env.rev(BASE_REF), c1);
    // ...and so does one that misses a package.
    let missing = work.path().join("missing.lock.toml");
    let cut = lock_text.find("[[package]]").unwrap();
    let next = lock_text[cut + 5..].find("[[package]]").unwrap() + cut + 5;
    std::fs::write(
        &missing,
        format!("{}{}", &lock_text[..cut], &lock_text[next..]),
    )
    .unwrap();
    let err = c_env.compose_fails(&["--force", "--lockfile", missing.to_str().unwrap(), BASE]);
    assert!(err.contains("not in the lockfile"), "{err}");

    // 7. Unknown package: one error naming file, line, key and package; no repo change.
    let tdir = work.path().join("tf");
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(
        tdir.join("unknown.toml"),
        "ref = \"test/unknown\"\nreleasever = \"bookworm\"\npackages = [\n  \"systemd\",\n  \"no-such-package-cairn\",\n]\n",
    )
    .unwrap();
    let err = a.compose_fails(&[tdir.join("unknown.toml").to_str().unwrap()]);
    assert!(
        err.contains("unknown.toml:5")
            && err.contains("`packages`")
            && err.contains("no-such-package-cairn"),
        "{err}"
    );
    assert!(a.ostree(&["refs"]).lines().all(|l| l != "test/unknown"));

    // 8. Layers: app-example composes blessed then itself, each from its parent's commit.
    let r = a.compose(&["treefiles/app-example.toml"]);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["skipped"], true, "base did not change");
    assert_eq!(r[1]["layer_parent"], c1.as_str());
    let app = r[2]["commit"].as_str().unwrap().to_string();
    check_layout(&a, &app);
    let diff = a
        .cmd(&["diff", BASE_REF, "cairn/amd64/app-example"])
        .output()
        .unwrap();
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.contains("+ nginx-light") && diff.contains("+ chrony"),
        "{diff}"
    );
    let sbom = a
        .cmd(&["sbom", "cairn/amd64/app-example", "--format", "cyclonedx"])
        .output()
        .unwrap();
    let sbom: Value = serde_json::from_slice(&sbom.stdout).unwrap();
    let components = sbom["components"].as_array().unwrap();
    assert!(components.iter().any(|c| c["name"] == "nginx-light"));
    // What scanners match on: the release on every package, the source package where it
    // differs, the operating system named, licenses from the packages' copyright files.
    for c in components.iter().filter(|c| c["type"] == "library") {
        let purl = c["purl"].as_str().unwrap();
        assert!(purl.ends_with("&distro=debian-12"), "{purl}");
    }
    let purl_of = |n: &str| {
        components
            .iter()
            .find(|c| c["name"] == n)
            .map(|c| c["purl"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        purl_of("libc6").contains("&upstream=glibc"),
        "{}",
        purl_of("libc6")
    );
    assert!(
        !purl_of("bash").contains("upstream="),
        "{}",
        purl_of("bash")
    );
    assert_eq!(sbom["metadata"]["component"]["type"], "operating-system");
    assert!(sbom["metadata"]["component"]["properties"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "cairn:commit" && p["value"] == app.as_str()));
    let licensed = components
        .iter()
        .filter(|c| c.get("licenses").is_some())
        .count();
    assert!(
        licensed * 2 > components.len(),
        "most Debian packages have machine-readable copyright files: {licensed} of {}",
        components.len()
    );
    let bash = components.iter().find(|c| c["name"] == "bash").unwrap();
    let bash_license = bash["licenses"][0]["expression"].as_str().unwrap();
    assert!(bash_license.contains("GPL-3.0-or-later"), "{bash_license}");
    // Both documents of a real commit pass their formats' validators.
    let spdx_file = work.path().join("app.spdx.json");
    let cdx_file = work.path().join("app.cdx.json");
    std::fs::write(&cdx_file, sbom.to_string()).unwrap();
    let spdx = a
        .cmd(&["sbom", "cairn/amd64/app-example"])
        .output()
        .unwrap();
    assert!(spdx.status.success());
    std::fs::write(&spdx_file, &spdx.stdout).unwrap();
    let v = StdCommand::new("python3")
        .arg("tests/validate_sboms.py")
        .arg(&spdx_file)
        .arg(&cdx_file)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let page = a.ostree(&["cat", &app, "/usr/libexec/cairn/version-page"]);
    assert!(page.contains("OSTREE_VERSION"));
    let sshd = a.ostree(&[
        "cat",
        &app,
        "/usr/etc/ssh/sshd_config.d/10-cairn-hardening.conf",
    ]);
    assert!(sshd.contains("PasswordAuthentication no"));
    // Python's bytecode is unchecked-hash (PEP 552 flags 0b01), never checked against its
    // source again on the immutable /usr (cairn's compose, src/compose/bytecode.rs).
    let pyc = a.ostree_bytes(&[
        "cat",
        &app,
        "/usr/lib/python3/dist-packages/cloudinit/__pycache__/util.cpython-311.pyc",
    ]);
    assert_eq!(pyc[4..8], [1, 0, 0, 0], "the .pyc header flags");

    // 9. A failing postprocess script: a clear error, the ref not created.
    std::fs::write(
        tdir.join("failing.toml"),
        format!(
            "include = [\"{}\"]\nref = \"test/failing\"\npostprocess = [\"echo about to fail >&2; exit 7\"]\n",
            std::fs::canonicalize(BASE).unwrap().display()
        ),
    )
    .unwrap();
    let err = a.compose_fails(&[tdir.join("failing.toml").to_str().unwrap()]);
    assert!(
        err.contains("postprocess")
            && err.contains("exit status 7")
            && err.contains("about to fail"),
        "{err}"
    );
    assert!(a.ostree(&["refs"]).lines().all(|l| l != "test/failing"));

    // 10. SIGKILL during the commit: the repo stays consistent, the ref unchanged, and the next
    // compose succeeds.
    let child = a
        .cmd(&["compose", "--force", BASE])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_phase_then_kill(child, "commit", Duration::from_millis(1500));
    assert!(a.ostree(&["fsck"]).contains("no errors"));
    assert_eq!(
        a.rev(BASE_REF),
        c1,
        "the killed compose did not move the ref"
    );
    let r = a.compose(&["--force", BASE]);
    assert_eq!(r[0]["skipped"], false);
    assert_eq!(r[0]["version"], "1.1", "the next version on the ref");
    assert!(a.ostree(&["fsck"]).contains("no errors"));
}
