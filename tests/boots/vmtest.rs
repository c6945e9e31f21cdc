//! The spine end to end, and the node's life: compose the shipped treefiles, sign the commit
//! with a key made for the test, build the shipped manifest's image trusting that key (one trial
//! boot, a generous deadline), compose the node tests' commits from small treefiles that include
//! the shipped ones, publish them as the repo "stages" the node tests walk through, and boot-test
//! everything: the base suite, the node scenarios (`vm-tests/node/`) and two self-tests that
//! prove the harness reports what it sees. Two VMs (SeaBIOS and OVMF) walk through the suites
//! one test after another. Needs root, the build host's apt sources, QEMU and OVMF.
//!
//! A stage is the repo as it stood at one moment: `<repo>/stages/<name>/` holds that moment's
//! refs and summary and shares the repo's objects and deltas through symlinks, so that a node
//! test moves the served repo forward by pointing its remote at the next stage
//! (`ostree config set 'remote "cairn".url' $CAIRN_REPO_URL/stages/<name>`). Its trusted key
//! stays: every commit is still verified.
//!
//! | stage | refs a test uses |
//! | --- | --- |
//! | s2 | `cairn/amd64/blessed` → v2 (v1 plus `hello`, version 2.0), with a static delta from v1 |
//! | s3 | `cairn/amd64/blessed` → v3 whose health check fails |
//! | s4 | `cairn/amd64/blessed` → v3 with a unit that hangs the boot |
//! | s5 | `test/old`, `test/new` (v2's tree) |
//! | s6 | `test/old` retired in favour of `test/new`; `test/unsigned`, `test/otherkey`, `test/tampered` (an object replaced), `test/v3-fail` |

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::release_world::{new_key, ok, World};
use serde_json::Value;

/// From power-on to the health verdict of a trial boot. Trial boots reach a healthy verdict in
/// 55–135 s under TCG on a loaded 2-core machine (the fleet test's VMs beside these): five
/// minutes never cuts a healthy trial short, and bounds the hung-boot test.
const DEADLINE: &str = "5m";

fn shipped(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn write(p: &Path, body: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `cairn ARGS --repo --cache` (compose, image, vm-test), as JSON.
fn cairn_json(w: &World, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--cache", w.cache.to_str().unwrap()]);
    let out = w.cairn(&all);
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_str(&ok(&format!("cairn {args:?}"), out)).unwrap()
}

/// A temporary copy of the shipped manifest: its treefile by absolute path, the test key
/// trusted, one trial boot.
fn manifest(dir: &Path, key: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shipped("manifests/qemu.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        match line.split(" = ").next() {
            Some("treefile") => out.push_str(&format!(
                "treefile = \"{}\"",
                shipped("treefiles/blessed.toml").display()
            )),
            Some("trial-boots") => out.push_str("trial-boots = 1"),
            Some("health-deadline") => out.push_str(&format!("health-deadline = \"{DEADLINE}\"")),
            Some("provisioning") => out.push_str(&format!(
                "{line}\nremote-gpg-key-file = \"{}\"",
                key.display()
            )),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(out.contains("trial-boots = 1") && out.contains("remote-gpg-key-file"));
    let p = dir.join("qemu-test.toml");
    write(&p, &out, 0o644);
    p
}

/// A layer on the shipped blessed treefile: its own ref, signed, a version of its own, and
/// `extra` lines.
fn layer(dir: &Path, name: &str, fpr: &str, version: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let body = format!(
        "include = [\"{}\"]\nref = \"test/{name}\"\ngpg-key = \"{fpr}\"\n{extra}\n\
         [add-commit-metadata]\nversion = \"{version}\"\n",
        shipped("treefiles/blessed.toml").display()
    );
    write(&p, &body, 0o644);
    p
}

/// The repo's refs as they are now, as a repo of their own at `<repo>/stages/<name>` that
/// shares the objects and deltas.
fn stage(w: &World, name: &str) {
    let s = w.repo.join("stages").join(name);
    std::fs::create_dir_all(s.join("refs/remotes")).unwrap();
    std::fs::copy(w.repo.join("config"), s.join("config")).unwrap();
    for d in ["objects", "deltas"] {
        std::os::unix::fs::symlink(format!("../../{d}"), s.join(d)).unwrap();
    }
    let out = Command::new("cp")
        .arg("-r")
        .arg(w.repo.join("refs/heads"))
        .arg(s.join("refs/heads"))
        .output()
        .unwrap();
    ok("cp refs", out);
    ok("summary", w.ostree(&s, &["summary", "-u"]));
}

/// A commit of `from`'s tree (and `overlay`'s files) on `ref_`, unsigned.
fn recommit(w: &World, ref_: &str, from: &str, overlay: Option<&Path>) {
    let mut args = vec![
        "commit".to_string(),
        format!("--branch={ref_}"),
        format!("--tree=ref={from}"),
        format!("--subject={ref_}"),
        format!(
            "--add-metadata-string=version={}",
            ref_.trim_start_matches("test/")
        ),
        "--owner-uid=0".into(),
        "--owner-gid=0".into(),
    ];
    if let Some(o) = overlay {
        args.push(format!("--tree=dir={}", o.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok("ostree commit", w.ostree(&w.repo, &args));
}

/// The object file of `path` in `ref_`'s tree.
fn object_of(w: &World, ref_: &str, path: &str) -> PathBuf {
    let line = ok("ls", w.ostree(&w.repo, &["ls", "-C", ref_, path]));
    let sum = line.split_whitespace().nth(4).unwrap().to_string();
    w.repo
        .join(format!("objects/{}/{}.filez", &sum[..2], &sum[2..]))
}

/// What a client pulls for `commit` without a delta: every object it reaches, as stored.
fn commit_bytes(repo: &Path, commit: &str) -> u64 {
    use ostree::gio;
    let r = ostree::Repo::new_for_path(repo);
    r.open(gio::Cancellable::NONE).unwrap();
    let objects = r
        .traverse_commit(commit, 0, gio::Cancellable::NONE)
        .unwrap();
    objects
        .iter()
        .map(|o| {
            let (sum, kind) = (o.checksum(), o.object_type());
            let ext = match kind {
                ostree::ObjectType::File => "filez",
                ostree::ObjectType::DirTree => "dirtree",
                ostree::ObjectType::DirMeta => "dirmeta",
                ostree::ObjectType::Commit => "commit",
                _ => return 0,
            };
            std::fs::metadata(repo.join(format!("objects/{}/{}.{ext}", &sum[..2], &sum[2..])))
                .map_or(0, |m| m.len())
        })
        .sum()
}

fn say_time(what: &str, since: Instant) {
    eprintln!("vmtest: {what}: {:.0} s", since.elapsed().as_secs_f64());
}

#[test]
fn shipped_image_passes_the_base_and_node_suites() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut w = World {
        work: dir.to_path_buf(),
        repo: dir.join("repo"),
        cache: dir.join("cache"),
        homes: vec![dir.join("key"), dir.join("other")],
        server: None,
    };
    let (fpr, public) = new_key(&w.homes[0], "cairn vm-test release key");
    let (other_fpr, _) = new_key(&w.homes[1], "another key");
    let key_args = |home: &Path, id: &str| {
        vec![
            "--gpg-homedir".to_string(),
            home.display().to_string(),
            "--key-id".into(),
            id.into(),
        ]
    };
    let release = |w: &World, args: &[&str], key: &[String]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(key.iter().map(String::as_str));
        ok(&format!("cairn {args:?}"), w.cairn(&all))
    };
    let k = key_args(&w.homes[0], &fpr);

    // v1: the shipped blessed host, signed; its image trusts the key.
    let t = Instant::now();
    cairn_json(
        &w,
        &[
            "compose",
            shipped("treefiles/blessed.toml").to_str().unwrap(),
        ],
    );
    release(&w, &["sign", "cairn/amd64/blessed"], &k);
    let images = dir.join("images");
    let built = cairn_json(
        &w,
        &[
            "image",
            manifest(dir, &public).to_str().unwrap(),
            "--out",
            images.to_str().unwrap(),
        ],
    );
    let image = built["artifacts"][0]["path"].as_str().unwrap().to_string();
    say_time("compose, sign and image v1", t);

    // The node tests' commits: layers on blessed, each a small treefile.
    let t = Instant::now();
    let tf = dir.join("treefiles");
    write(
        &tf.join("fail.sh"),
        "#!/bin/sh\necho 'this commit is unhealthy on purpose (cairn vm-test)'\nexit 1\n",
        0o755,
    );
    write(
        &tf.join("cairn-test-hang.service"),
        "[Unit]\nDescription=cairn vm-test: a unit that never lets the boot finish\n\
         Before=multi-user.target\n\n[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    let layers = [
        layer(&tf, "v2", &fpr, "2.0", "packages = [\"hello\"]"),
        layer(
            &tf,
            "v3-fail",
            &fpr,
            "3.0-unhealthy",
            "add-files = [[\"fail.sh\", \"/usr/lib/cairn/health.d/50-test-fail\"]]",
        ),
        layer(
            &tf,
            "v3-hang",
            &fpr,
            "3.0-hang",
            "add-files = [[\"cairn-test-hang.service\", \"/usr/lib/systemd/system/cairn-test-hang.service\"]]\n\
             units = [\"cairn-test-hang.service\"]",
        ),
    ];
    for l in &layers {
        let out = cairn_json(
            &w,
            &[
                "compose",
                l.to_str().unwrap(),
                "--gpg-homedir",
                w.homes[0].to_str().unwrap(),
            ],
        );
        let last = &out.as_array().unwrap().last().unwrap()["ref"];
        assert!(last.as_str().unwrap().starts_with("test/"), "{out}");
    }
    say_time("compose the node tests' three layers", t);

    // The stages: the blessed ref moves v1 → v2 → v3 (unhealthy) → v3 (hangs); then a stream
    // that ends, and the bad refs.
    let t = Instant::now();
    let force: Vec<String> = std::iter::once("--force".to_string())
        .chain(k.clone())
        .collect();
    for (from, name) in [
        ("test/v2", "s2"),
        ("test/v3-fail", "s3"),
        ("test/v3-hang", "s4"),
    ] {
        release(&w, &["promote", from, "cairn/amd64/blessed"], &force);
        stage(&w, name);
    }
    release(&w, &["promote", "test/v2", "test/old"], &k);
    release(&w, &["promote", "test/v2", "test/new"], &k);
    stage(&w, "s5");
    release(
        &w,
        &[
            "retire",
            "test/old",
            "--rebase-to",
            "test/new",
            "--message",
            "test/old ends: follow test/new",
        ],
        &k,
    );
    recommit(&w, "test/unsigned", "test/v2", None);
    recommit(&w, "test/otherkey", "test/v2", None);
    release(
        &w,
        &["sign", "test/otherkey"],
        &key_args(&w.homes[1], &other_fpr),
    );
    let overlay = dir.join("overlay");
    write(
        &overlay.join("usr/share/cairn-test/tampered"),
        &format!("a file only test/tampered has: {fpr}\n"),
        0o644,
    );
    recommit(&w, "test/tampered", "test/v2", Some(&overlay));
    release(&w, &["sign", "test/tampered"], &k);
    // The object replaced by another one, as a compromised mirror would serve it.
    let victim = object_of(&w, "test/tampered", "/usr/share/cairn-test/tampered");
    std::fs::copy(object_of(&w, "test/v2", "/usr/bin/hello"), &victim).unwrap();
    stage(&w, "s6");
    say_time("promote, retire, bad refs and stages", t);

    // Tests that must fail and skip: the harness has to see both.
    let selftest = dir.join("selftest");
    write(
        &selftest.join("fails"),
        "#!/bin/sh\n## tags = [\"selftest\"]\necho 'this test fails on purpose' >&2\nexit 3\n",
        0o755,
    );
    write(
        &selftest.join("skips"),
        "#!/bin/sh\necho 'not for this host'\nexit 77\n",
        0o755,
    );

    let t = Instant::now();
    let out_dir = dir.join("vm-tests-out");
    let out = w.cairn(&[
        "vm-test",
        "--image",
        &image,
        "--json",
        "--cache",
        w.cache.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        shipped("vm-tests").to_str().unwrap(),
        selftest.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    say_time("vm-test", t);
    assert!(
        !out.status.success(),
        "the failing self-test must fail the run"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!(
        "vm-test: {} s, {} VMs at a time, accel {}",
        report["seconds"], report["jobs"], report["accel"]
    );
    for b in report["boots"].as_array().unwrap() {
        eprintln!(
            "vm-test boot: {} {} {} {:.1} s {}",
            b["kind"],
            b["firmware"],
            b["outcome"],
            b["seconds"].as_f64().unwrap_or(0.0),
            b["test"]
        );
    }
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap();
    for l in junit.lines().filter(|l| l.contains("FIGURE ")) {
        eprintln!("vm-test figure: {}", l.split("FIGURE ").nth(1).unwrap_or(l));
    }
    let v2_commit = w.rev("test/v2");
    eprintln!(
        "vm-test figure: v2-commit-bytes={} (every object of {} as a pull without a delta fetches it)",
        commit_bytes(&w.repo, &v2_commit),
        &v2_commit[..12]
    );
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for c in report["cases"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let status = c["status"].as_str().unwrap();
        seen.push(id.to_string());
        let want = match id {
            "fails@bios" => "fail",
            "skips@bios" => "skip",
            _ => "pass",
        };
        if status != want {
            failed.push(format!("{id}: {status}, not {want}: {}", c["message"]));
            // What the test printed, for the CI log (the output directory goes with the test).
            let text = std::fs::read_to_string(out_dir.join(id).join("output.txt"))
                .unwrap_or_else(|e| format!("(no output.txt: {e})"));
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {id}: the last lines of its output ---");
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
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
        "basic/provisioned-once@bios",
        "node/a1-upgrade@bios",
        "node/a1-upgrade@uefi",
        "node/a2-rollback@bios",
        "node/a3-refuse@bios",
        "node/a4-rebase-eol@bios",
        "node/b1-unhealthy@uefi",
        "node/b2-hang@uefi",
    ] {
        assert!(seen.iter().any(|s| s == id), "{id} did not run: {seen:?}");
    }
    // Every boot is in JUnit, with its time; the followed ones among them.
    assert!(junit.contains("--- boots during the test ---"), "{junit}");
    assert!(junit.contains("followed (uefi, "), "{junit}");
    assert!(junit.contains("rebooted by itself in"), "{junit}");
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
    assert!(junit.contains("failures=\"1\""), "{junit}");
    assert!(junit.contains("<skipped"), "{junit}");
    // Every VM is gone.
    let ps = Command::new("pgrep")
        .args(["-f", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "a VM is still running");
    w.homes.retain(|h| h.exists());
    say_time("the whole test", started);
}
