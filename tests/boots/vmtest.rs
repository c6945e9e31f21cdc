//! The spine end to end, and the node's life: the shipped blessed host (composed and signed
//! once, `shared.rs`), the shipped manifest's image trusting the release key (one trial boot, a
//! generous deadline), the node tests' commits composed from small treefiles that include the
//! shipped ones and published as the repo "stages" the node tests walk through, and one
//! `cairn vm-test` run of everything: the base suite, the node scenarios (`vm-tests/node/`) and
//! two self-tests that prove the harness reports what it sees. Two VMs (SeaBIOS and OVMF) walk
//! through the suites one test after another; each case is a named test of this chain. Needs
//! root, the build host's apt sources, QEMU and OVMF.
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

use super::chain::Step;
use super::release_world::{ok, World};
use super::shared::shipped;
use serde_json::Value;

/// From power-on to the health verdict of a trial boot. Trial boots reach a healthy verdict in
/// 55–135 s under TCG on a loaded 2-core machine (the fleet's VMs beside these), and took over
/// five minutes on an overloaded one: ten never cuts a healthy trial short. The hung-boot test
/// (`node/b2-hang`) sets a short deadline of its own.
const DEADLINE: &str = "10m";

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
            // The test key instead of the shipped release key made on first use.
            Some("release-key") => continue,
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

/// A commit of `from`'s tree (and `overlay`'s files, made by root) on `ref_`, unsigned. No
/// ownership override: with one, `ostree commit` reads and compresses every file of the tree
/// again (minutes for a whole host), without it the tree's objects are reused as they are.
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

/// The vm-test chain's world: the shared repo, the image, and the run's report once it ran.
pub struct VmWorld {
    w: World,
    image: String,
    out_dir: PathBuf,
    /// The JSON report and JUnit of the run.
    report: Value,
    junit: String,
}

impl VmWorld {
    pub fn new() -> VmWorld {
        let w = super::shared::get().world();
        let out_dir = w.work.join("vm-tests-out");
        VmWorld {
            w,
            image: String::new(),
            out_dir,
            report: Value::Null,
            junit: String::new(),
        }
    }
}

/// Every case the run must have, and the status it must end with.
const CASES: &[(&str, &str)] = &[
    ("basic/boot@bios", "pass"),
    ("basic/boot@uefi", "pass"),
    ("basic/no-failed-units@bios", "pass"),
    ("basic/filesystems@bios", "pass"),
    ("basic/var-persists@bios", "pass"),
    ("basic/ostree-status@bios", "pass"),
    ("basic/provisioning@bios", "pass"),
    ("basic/no-passwords@bios", "pass"),
    ("basic/root-fills-disk@bios", "pass"),
    ("basic/journal-persistent@bios", "pass"),
    ("basic/provisioned-once@bios", "pass"),
    ("node/a1-upgrade@bios", "pass"),
    ("node/a1-upgrade@uefi", "pass"),
    ("node/a2-rollback@bios", "pass"),
    ("node/a3-refuse@bios", "pass"),
    ("node/a4-rebase-eol@bios", "pass"),
    ("node/b1-unhealthy@uefi", "pass"),
    ("node/b2-hang@uefi", "pass"),
    ("node/b3-power-loss@bios", "pass"),
    ("fails@bios", "fail"),
    ("skips@bios", "skip"),
];

pub fn steps() -> Vec<Step<VmWorld>> {
    let mut steps = vec![
        Step::new("the_shipped_image_builds_trusting_the_release_key", image),
        Step::new("the_node_tests_stages_are_published", stages),
        Step::new("one_run_boots_every_suite_and_leaves_no_vm", run),
        Step::check(
            "the_report_keeps_every_boot_and_a_failed_tests_logs",
            report,
        ),
    ];
    for (id, want) in CASES {
        let name = match *want {
            "pass" => format!("case::{}", id.replace(['/', '-', '@'], "_")),
            _ => format!(
                "case::a_selftest_that_{}s_is_reported_{want}ed",
                id.split('@').next().unwrap_or(id).trim_end_matches('s')
            ),
        };
        steps.push(Step::check(name, move |v: &mut VmWorld| case(v, id, want)));
    }
    steps
}

/// The shipped manifest's image of the shared blessed commit, trusting the release key.
fn image(v: &mut VmWorld) {
    let dir = v.w.work.clone();
    let public = super::shared::get().public.clone();
    let images = dir.join("images");
    let built = cairn_json(
        &v.w,
        &[
            "image",
            manifest(&dir, &public).to_str().unwrap(),
            "--out",
            images.to_str().unwrap(),
        ],
    );
    v.image = built["artifacts"][0]["path"].as_str().unwrap().to_string();
}

/// The node tests' commits, layers on blessed, and the stages the repo goes through.
fn stages(v: &mut VmWorld) {
    let w = &v.w;
    let sh = super::shared::get();
    let dir = w.work.clone();
    let key_args = |home: &Path, id: &str| {
        vec![
            "--gpg-homedir".to_string(),
            home.display().to_string(),
            "--key-id".into(),
            id.into(),
        ]
    };
    let release = |args: &[&str], key: &[String]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(key.iter().map(String::as_str));
        ok(&format!("cairn {args:?}"), w.cairn(&all))
    };
    let k = key_args(&sh.key, &sh.fpr);
    compose_layers(w, &dir.join("treefiles"), &sh.fpr, &sh.key);
    // The blessed ref moves v1 → v2 → v3 (unhealthy) → v3 (hangs); then a stream that ends,
    // and the bad refs.
    let force: Vec<String> = std::iter::once("--force".to_string())
        .chain(k.clone())
        .collect();
    for (from, name) in [
        ("test/v2", "s2"),
        ("test/v3-fail", "s3"),
        ("test/v3-hang", "s4"),
    ] {
        release(&["promote", from, "cairn/amd64/blessed"], &force);
        stage(w, name);
    }
    release(&["promote", "test/v2", "test/old"], &k);
    release(&["promote", "test/v2", "test/new"], &k);
    stage(w, "s5");
    release(
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
    recommit(w, "test/unsigned", "test/v2", None);
    recommit(w, "test/otherkey", "test/v2", None);
    release(
        &["sign", "test/otherkey"],
        &key_args(&sh.other, &sh.other_fpr),
    );
    let overlay = dir.join("overlay");
    write(
        &overlay.join("usr/share/cairn-test/tampered"),
        &format!("a file only test/tampered has: {}\n", sh.fpr),
        0o644,
    );
    recommit(w, "test/tampered", "test/v2", Some(&overlay));
    release(&["sign", "test/tampered"], &k);
    // The object replaced by another one, as a compromised mirror would serve it.
    let victim = object_of(w, "test/tampered", "/usr/share/cairn-test/tampered");
    std::fs::copy(object_of(w, "test/v2", "/usr/bin/hello"), &victim).unwrap();
    stage(w, "s6");
}

/// The node tests' three layers on blessed, each a small treefile, signed.
fn compose_layers(w: &World, tf: &Path, fpr: &str, home: &Path) {
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
        layer(tf, "v2", fpr, "2.0", "packages = [\"hello\"]"),
        layer(
            tf,
            "v3-fail",
            fpr,
            "3.0-unhealthy",
            "add-files = [[\"fail.sh\", \"/usr/lib/cairn/health.d/50-test-fail\"]]",
        ),
        layer(
            tf,
            "v3-hang",
            fpr,
            "3.0-hang",
            "add-files = [[\"cairn-test-hang.service\", \"/usr/lib/systemd/system/cairn-test-hang.service\"]]\n\
             units = [\"cairn-test-hang.service\"]",
        ),
    ];
    for l in &layers {
        let out = cairn_json(
            w,
            &[
                "compose",
                l.to_str().unwrap(),
                "--gpg-homedir",
                home.to_str().unwrap(),
            ],
        );
        let last = &out.as_array().unwrap().last().unwrap()["ref"];
        assert!(last.as_str().unwrap().starts_with("test/"), "{out}");
    }
}

/// Tests that must fail and skip: the harness has to see both.
fn selftests(dir: &Path) -> PathBuf {
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
    selftest
}

/// One `cairn vm-test` of the shipped suites and the self-tests; no VM is left.
fn run(v: &mut VmWorld) {
    let selftest = selftests(&v.w.work);
    let out = v.w.cairn(&[
        "vm-test",
        "--image",
        &v.image,
        "--json",
        "--cache",
        v.w.cache.to_str().unwrap(),
        "--out",
        v.out_dir.to_str().unwrap(),
        shipped("vm-tests").to_str().unwrap(),
        selftest.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success(),
        "the failing self-test must fail the run"
    );
    v.report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v.junit = std::fs::read_to_string(v.out_dir.join("junit.xml")).unwrap();
    print_figures(v);
    let seen: Vec<&str> = v.report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for (id, _) in CASES {
        assert!(seen.contains(id), "{id} did not run: {seen:?}");
    }
    let ps = Command::new("pgrep")
        .args(["-f", v.out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "a VM is still running");
}

/// The run's figures and boots, for the CI log.
fn print_figures(v: &VmWorld) {
    let r = &v.report;
    eprintln!(
        "vm-test: {} s, {} VMs at a time, accel {}",
        r["seconds"], r["jobs"], r["accel"]
    );
    for b in r["boots"].as_array().unwrap() {
        eprintln!(
            "vm-test boot: {} {} {} {:.1} s {}",
            b["kind"],
            b["firmware"],
            b["outcome"],
            b["seconds"].as_f64().unwrap_or(0.0),
            b["test"]
        );
    }
    for c in r["cases"].as_array().unwrap() {
        eprintln!(
            "vm-test case: {} {} {:.1} s",
            c["id"].as_str().unwrap_or("?"),
            c["status"],
            c["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    for l in v.junit.lines().filter(|l| l.contains("FIGURE ")) {
        eprintln!("vm-test figure: {}", l.split("FIGURE ").nth(1).unwrap_or(l));
    }
    let v2_commit = v.w.rev("test/v2");
    eprintln!(
        "vm-test figure: v2-commit-bytes={} (every object of {} as a pull without a delta fetches it)",
        commit_bytes(&v.w.repo, &v2_commit),
        cairn::base::text::short_hash(&v2_commit)
    );
}

/// Every boot is in JUnit with its time, the followed ones among them; the failed test's logs
/// are kept; JUnit lists every case.
fn report(v: &mut VmWorld) {
    let junit = &v.junit;
    assert!(junit.contains("--- boots during the test ---"), "{junit}");
    assert!(junit.contains("followed (uefi, "), "{junit}");
    assert!(junit.contains("rebooted by itself in"), "{junit}");
    let logs = v.out_dir.join("fails@bios");
    let output = std::fs::read_to_string(logs.join("output.txt")).unwrap();
    assert!(output.contains("this test fails on purpose"), "{output}");
    let console = std::fs::read_to_string(logs.join("console.log")).unwrap();
    assert!(
        console.contains("Linux version"),
        "the console log holds the boot"
    );
    let journal = std::fs::read_to_string(logs.join("journal.txt")).unwrap();
    assert!(journal.contains("systemd"), "the journal was saved");
    // The self-test that fails is a failure in JUnit, with its message (the other cases are
    // their own tests).
    assert!(
        junit.contains("<failure message=\"exit status 3: this test fails on purpose\""),
        "{junit}"
    );
    assert!(junit.contains("<skipped"), "{junit}");
}

/// Case `id` ended as `want`; if not, the last lines of its output say why.
fn case(v: &mut VmWorld, id: &str, want: &str) {
    let c = v.report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} did not run"));
    let status = c["status"].as_str().unwrap();
    if status != want {
        let text = std::fs::read_to_string(v.out_dir.join(id).join("output.txt"))
            .unwrap_or_else(|e| format!("(no output.txt: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("{id}: {status}, not {want}: {}\n{tail}", c["message"]);
    }
}
