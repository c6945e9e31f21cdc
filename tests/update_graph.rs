//! A ref's signed update graph, end to end: `cairn rollout plan|pause|resume|barrier|recall`
//! write `updates/REF.json` and its detached signature beside an archive repo and audit each
//! change; a node's repo, whose remote trusts the release key, reads the graph only when that
//! key signed exactly those bytes (`cairn::release::graph::verify`); and a change that cannot
//! apply names what is wrong and leaves the graph, its signature and the audit log alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn::release::graph::{self, Graph};
use serde_json::Value;

const REF: &str = "test/x86_64/app";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A program's stdout, which must be a success.
fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A program's stderr, which must be a failure.
fn fails(what: &str, out: Output) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// `cairn key new --json` into `home`: the fingerprint.
fn new_key(home: &Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["key", "new", "--json", "--name", name])
        .arg(home)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok("cairn key new", out)).unwrap();
    let fpr = v["fingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_string();
    assert!(
        fpr.len() >= 40 && fpr.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fpr:?}"
    );
    fpr
}

fn ostree(repo: &Path, args: &[&str]) -> Output {
    Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args)
        .output()
        .unwrap()
}

/// A temporary directory with the release key (and a second, untrusted one), an archive repo
/// with two commits of [`REF`] (versions 1.0 and 2.0), and the GPG agents stopped on drop.
struct World {
    dir: tempfile::TempDir,
    repo: PathBuf,
    home: PathBuf,
    fpr: String,
    other_home: PathBuf,
    other_fpr: String,
    commits: [String; 2],
}

impl Drop for World {
    fn drop(&mut self) {
        for h in [&self.home, &self.other_home] {
            let _ = Command::new("gpgconf")
                .arg("--homedir")
                .arg(h)
                .args(["--kill", "gpg-agent"])
                .status();
        }
    }
}

impl World {
    fn new() -> World {
        // Under /tmp: gpg-agent's socket path must stay short.
        let dir = tempfile::Builder::new()
            .prefix("cairn-graph-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let (home, other_home) = (d.join("gpg"), d.join("gpg2"));
        let fpr = new_key(&home, "cairn test release key");
        let other_fpr = new_key(&other_home, "someone else");
        assert_ne!(fpr, other_fpr);
        let repo = d.join("repo");
        ok("ostree init", ostree(&repo, &["init", "--mode=archive"]));
        let mut commits = Vec::new();
        for (i, version) in ["1.0", "2.0"].iter().enumerate() {
            let tree = d.join(format!("tree{i}"));
            std::fs::create_dir_all(tree.join("usr/share/app")).unwrap();
            std::fs::write(tree.join("usr/share/app/release"), format!("{version}\n")).unwrap();
            let out = ostree(
                &repo,
                &[
                    "commit",
                    &format!("--branch={REF}"),
                    &format!("--tree=dir={}", tree.display()),
                    &format!("--add-metadata-string=version={version}"),
                    &format!("--subject=app {version}"),
                ],
            );
            let c = ok("ostree commit", out).trim().to_string();
            assert_eq!(c.len(), 64, "{c:?}");
            commits.push(c);
        }
        assert_ne!(commits[0], commits[1]);
        World {
            repo,
            home,
            fpr,
            other_home,
            other_fpr,
            commits: [commits[0].clone(), commits[1].clone()],
            dir,
        }
    }

    /// `cairn rollout ARGS --repo REPO --gpg-homedir HOME --key-id FPR`.
    fn rollout(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("rollout")
            .args(args)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--gpg-homedir")
            .arg(&self.home)
            .args(["--key-id", &self.fpr])
            .env_remove("GNUPGHOME")
            .output()
            .unwrap()
    }

    /// A world with 1.0 planned to every node at once and 2.0 over two hours from now.
    fn planned() -> World {
        let w = World::new();
        ok(
            "rollout plan 1.0",
            w.rollout(&["plan", REF, "--duration", "0s", "--commit", &w.commits[0]]),
        );
        ok(
            "rollout plan 2.0",
            w.rollout(&["plan", REF, "--duration", "2h"]),
        );
        w
    }

    fn paths(&self) -> (PathBuf, PathBuf) {
        graph::paths(&self.repo, REF)
    }

    fn json(&self) -> Vec<u8> {
        std::fs::read(self.paths().0).unwrap()
    }

    fn sig(&self) -> Vec<u8> {
        std::fs::read(self.paths().1).unwrap()
    }

    fn graph(&self) -> Graph {
        graph::parse(&self.json(), "the graph").unwrap()
    }

    /// The audit log beside the repo (`repo.audit.jsonl`), line by line.
    fn audit_lines(&self) -> Vec<Value> {
        let log = self.dir.path().join("repo.audit.jsonl");
        std::fs::read_to_string(&log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The graph, its signature and the audit log, to compare before and after a refusal.
    fn snapshot(&self) -> (Vec<u8>, Vec<u8>, String) {
        let log = std::fs::read_to_string(self.dir.path().join("repo.audit.jsonl")).unwrap();
        (self.json(), self.sig(), log)
    }

    /// A bare-user repo like a node's whose remote `cairn` trusts the release key only.
    fn node_repo(&self) -> ostree::Repo {
        let d = self.dir.path();
        let node = d.join("node");
        ok("init node", ostree(&node, &["init", "--mode=bare-user"]));
        ok(
            "remote add",
            ostree(
                &node,
                &[
                    "remote",
                    "add",
                    "--set=gpg-verify=true",
                    "cairn",
                    "file:///nonexistent",
                ],
            ),
        );
        let pubkey = d.join("pub.gpg");
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--output"])
            .arg(&pubkey)
            .args(["--export", &self.fpr])
            .output()
            .unwrap();
        ok("gpg --export", out);
        assert!(std::fs::metadata(&pubkey).unwrap().len() > 0);
        ok(
            "remote gpg-import",
            ostree(
                &node,
                &[
                    "remote",
                    "gpg-import",
                    "cairn",
                    &format!("--keyring={}", pubkey.display()),
                ],
            ),
        );
        cairn::store::open(&node).unwrap()
    }
}

#[test]
fn planning_two_releases_writes_a_signed_graph_and_audits_each_change() {
    let w = World::planned();
    let (json, sig) = w.paths();
    assert_eq!(json, w.repo.join("updates/test/x86_64/app.json"));
    assert_eq!(sig, w.repo.join("updates/test/x86_64/app.json.sig"));
    assert!(json.is_file(), "{}", json.display());
    assert!(sig.is_file(), "{}", sig.display());
    assert!(std::fs::metadata(&sig).unwrap().len() > 0);

    let g = w.graph();
    assert_eq!(g.stream, REF);
    assert_eq!(g.metadata.serial, 2, "{g:?}");
    let versions: Vec<&str> = g.releases.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["1.0", "2.0"]);
    let (one, two) = (&g.releases[0], &g.releases[1]);
    assert_eq!(one.commit, w.commits[0]);
    assert_eq!(two.commit, w.commits[1]);
    let r1 = one.metadata.rollout.as_ref().expect("1.0 is planned");
    let r2 = two.metadata.rollout.as_ref().expect("2.0 is planned");
    assert_eq!(r1.duration_minutes, 0);
    assert_eq!(r2.duration_minutes, 120);
    assert_eq!((r1.paused_epoch, r2.paused_epoch), (None, None));
    let now = chrono::Utc::now().timestamp();
    // 1.0 is open to every node at once; 2.0 has barely started its two hours.
    assert_eq!(r1.throttle(now), Some(1.0));
    assert!(r1.open_to(1.0, now));
    assert!(r2.open_to(0.0, now));
    assert!(!r2.open_to(0.5, now), "{r2:?}");
    assert!((now - r2.start_epoch).abs() < 120, "{r2:?} at {now}");
    for r in [one, two] {
        let m = &r.metadata;
        assert!(m.barrier.is_none() && m.deadend.is_none() && m.recall.is_none());
    }

    let lines = w.audit_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (l, version) in lines.iter().zip(["1.0", "2.0"]) {
        assert_eq!(l["command"], "rollout-plan", "{l}");
        assert_eq!(l["ref"], REF, "{l}");
        assert_eq!(l["version"], version, "{l}");
        assert_eq!(l["detail"]["signed_by"], w.fpr.as_str(), "{l}");
    }
    assert_eq!(lines[0]["detail"]["serial"], 1, "{}", lines[0]);
    assert_eq!(lines[1]["detail"]["serial"], 2, "{}", lines[1]);
    // The library's reader sees the same two entries.
    let (entries, warnings) = cairn::release::audit::read(&w.repo).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.command == "rollout-plan"));
}

#[test]
fn a_node_reads_the_graph_only_when_its_remote_trusts_the_key_that_signed_those_bytes() {
    let w = World::planned();
    let node = w.node_repo();
    let (json, sig) = (w.json(), w.sig());

    let g = graph::verify(&node, "cairn", &json, &sig, "the served graph")
        .unwrap_or_else(|e| panic!("a graph signed by the trusted key: {e:#}"));
    assert_eq!(g, w.graph());
    assert_eq!(g.metadata.serial, 2);

    // One byte changed (a digit of the serial): the signature no longer covers it.
    let mut changed = json.clone();
    let at = changed
        .windows(b"\"serial\": 2".len())
        .position(|s| s == b"\"serial\": 2")
        .map(|i| i + b"\"serial\": ".len())
        .expect("the pretty-printed serial");
    changed[at] = b'9';
    assert!(
        graph::parse(&changed, "x").is_ok(),
        "the changed graph is still a graph"
    );
    let e = graph::verify(&node, "cairn", &changed, &sig, "the changed graph")
        .expect_err("a changed graph must not verify");
    let msg = format!("{e:#}");
    assert!(msg.contains("the changed graph"), "{msg}");

    // The same bytes signed by a key the remote does not trust.
    let data = w.dir.path().join("graph.json");
    let other_sig = w.dir.path().join("graph.json.sig");
    std::fs::write(&data, &json).unwrap();
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(&w.other_home)
        .args(["--batch", "--yes", "--local-user", &w.other_fpr, "--output"])
        .arg(&other_sig)
        .arg("--detach-sign")
        .arg(&data)
        .output()
        .unwrap();
    ok("gpg --detach-sign", out);
    let other = std::fs::read(&other_sig).unwrap();
    assert_ne!(other, sig);
    let e = graph::verify(&node, "cairn", &json, &other, "the other key's graph")
        .expect_err("a graph signed by an untrusted key must not verify");
    let msg = format!("{e:#}");
    assert!(msg.contains("not signed by a key"), "{msg}");

    // And the trusted signature still verifies: nothing above was cached or remembered.
    graph::verify(&node, "cairn", &json, &sig, "the served graph again").unwrap();
}

#[test]
fn pausing_freezes_the_rolling_wave_and_resuming_lets_it_move_on() {
    let w = World::planned();
    let before = w.graph();
    let start = before.releases[1]
        .metadata
        .rollout
        .as_ref()
        .unwrap()
        .start_epoch;

    let out = w.rollout(&["pause", "--ref", REF]);
    let said = ok("rollout pause --ref", out);
    assert!(said.contains("2.0 paused"), "{said}");
    let g = w.graph();
    assert_eq!(g.metadata.serial, 3);
    let paused = g.releases[1].metadata.rollout.as_ref().unwrap();
    let at = paused.paused_epoch.expect("2.0's wave is paused");
    let now = chrono::Utc::now().timestamp();
    assert!(
        at >= start && at <= now,
        "paused at {at}, started {start}, now {now}"
    );
    // Frozen: an hour later the wavefront is where it was when paused.
    assert_eq!(paused.throttle(now + 3600), paused.throttle(at));
    assert!(!paused.open_to(0.5, now + 3600));
    // The finished 1.0 is not touched.
    assert_eq!(g.releases[0], before.releases[0]);

    // Nothing rolls out any more: a second pause has nothing to freeze.
    let snap = w.snapshot();
    let err = fails("a second pause", w.rollout(&["pause", "--ref", REF]));
    assert!(err.contains("rolling out"), "{err}");
    assert_eq!(w.snapshot(), snap, "a refused pause changed something");

    ok("rollout resume --ref", w.rollout(&["resume", "--ref", REF]));
    let g = w.graph();
    assert_eq!(g.metadata.serial, 4);
    let resumed = g.releases[1].metadata.rollout.as_ref().unwrap();
    assert_eq!(resumed.paused_epoch, None, "{resumed:?}");
    // It moves on from where it stopped: the start moved by as long as it was paused.
    let now = chrono::Utc::now().timestamp();
    assert!(resumed.start_epoch >= start, "{resumed:?}");
    assert!(resumed.start_epoch <= start + (now - at), "{resumed:?}");
    assert!(resumed.open_to(1.0, now + 2 * 3600 + 60));

    let commands: Vec<String> = w
        .audit_lines()
        .iter()
        .map(|l| l["command"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        commands,
        [
            "rollout-plan",
            "rollout-plan",
            "rollout-pause",
            "rollout-resume"
        ]
    );

    // And a node still trusts every rewritten graph.
    let node = w.node_repo();
    let v = graph::verify(&node, "cairn", &w.json(), &w.sig(), "after resume").unwrap();
    assert_eq!(v.metadata.serial, 4);
}

#[test]
fn a_change_that_cannot_apply_names_what_is_wrong_and_changes_nothing() {
    let w = World::planned();
    let refused = |args: &[&str], want: &str| {
        let before = w.snapshot();
        let err = fails(&format!("cairn rollout {args:?}"), w.rollout(args));
        assert!(err.contains(want), "cairn rollout {args:?}: {err}");
        let after = w.snapshot();
        assert!(
            after.0 == before.0,
            "cairn rollout {args:?} changed the graph"
        );
        assert!(
            after.1 == before.1,
            "cairn rollout {args:?} changed the signature"
        );
        assert_eq!(
            after.2, before.2,
            "cairn rollout {args:?} wrote to the audit log"
        );
    };
    refused(
        &["recall", REF, "2.0", "--to", "9.9", "--reason", "x"],
        "9.9",
    );
    refused(&["barrier", REF, "7.7", "--reason", "x"], "7.7");
    refused(&["deadend", REF, "7.7", "--reason", "x"], "7.7");
    refused(
        &["recall", REF, "2.0", "--to", "2.0", "--reason", "x"],
        "come back to it",
    );
    assert_eq!(w.graph().metadata.serial, 2);
    assert_eq!(w.audit_lines().len(), 2);

    // The same changes with listed versions apply.
    ok(
        "barrier 1.0",
        w.rollout(&["barrier", REF, "1.0", "--reason", "migrates the data"]),
    );
    ok(
        "recall 2.0",
        w.rollout(&["recall", REF, "2.0", "--to", "1.0", "--reason", "it breaks"]),
    );
    let g = w.graph();
    assert_eq!(g.metadata.serial, 4);
    assert_eq!(
        g.releases[0]
            .metadata
            .barrier
            .as_ref()
            .map(|b| b.reason.as_str()),
        Some("migrates the data")
    );
    let rc = g.releases[1]
        .metadata
        .recall
        .as_ref()
        .expect("2.0 recalled");
    assert_eq!((rc.to.as_str(), rc.reason.as_str()), ("1.0", "it breaks"));
    // A node on 2.0 goes back to 1.0, whatever its wariness.
    match g.next(&w.commits[1], 1.0, chrono::Utc::now().timestamp()) {
        graph::Next::Update { to, .. } => assert_eq!(to.version, "1.0"),
        other => panic!("a node on the recalled 2.0: {other:?}"),
    }
}
