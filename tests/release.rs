//! Releases end to end, without a VM (needs root, the build host's apt sources, gpg and the
//! `ostree` CLI): two signed composes of a small layer on the shipped base, served over HTTP by
//! `cairn repo serve` to client repos made with the `ostree` CLI that verify signatures; a
//! promotion, a prune, a retirement, the audit log, and bad input that changes nothing.

mod release_world;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use release_world::{bin, fails, new_key, ok, text, write_treefile, World};
use serde_json::Value;

#[test]
fn signed_releases_served_promoted_pruned_retired() {
    assert!(nix::unistd::geteuid().is_root(), "composing needs root");
    let t0 = std::time::Instant::now();
    // Each step's start, for `--nocapture` (where the wall time goes).
    let step = |s: &str| eprintln!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());
    let work = tempfile::Builder::new()
        .prefix("cairn-rel-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let homes = tempfile::Builder::new()
        .prefix("crk")
        .tempdir_in("/tmp")
        .unwrap();
    let mut w = World {
        work: work.path().to_path_buf(),
        repo: work.path().join("repo"),
        cache: work.path().join("cache"),
        homes: vec![homes.path().join("k"), homes.path().join("o")],
        server: None,
    };

    // Keys: the release key, and another one nodes do not trust.
    let (fpr, public) = new_key(&w.homes[0], "cairn release test");
    let (other, _) = new_key(&w.homes[1], "someone else");
    assert!(public.is_file());

    step("1");
    // 1. v1: base (unsigned: its treefile names no key) and the signed layer.
    let tfdir = w.work.join("tf");
    std::fs::create_dir_all(&tfdir).unwrap();
    let tf = write_treefile(&tfdir, &fpr, "");
    // A key that does not exist: a clear error naming the treefile, before anything is written.
    let bad_tf = tfdir.join("bad.toml");
    std::fs::write(
        &bad_tf,
        std::fs::read_to_string(&tf)
            .unwrap()
            .replace(&fpr, "0123456789ABCDEF"),
    )
    .unwrap();
    let out = w.cairn(&[
        "compose",
        bad_tf.to_str().unwrap(),
        "--cache",
        "/nonexistent",
    ]);
    let err = fails("compose with a missing key", out);
    assert!(
        err.contains("bad.toml:3: key `gpg-key`") && err.contains("no secret GPG key"),
        "{err}"
    );
    assert!(!w.repo.exists() && !w.log_path().exists());

    let r = w.compose(&tf);
    assert_eq!(r.len(), 2);
    let v1 = r[1]["commit"].as_str().unwrap().to_string();
    let base = r[0]["commit"].as_str().unwrap().to_string();
    let head = ok(
        "git",
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&tfdir)
            .output()
            .unwrap(),
    );
    assert_eq!(
        w.meta(&w.repo, &v1, "cairn.treefile-git-revision"),
        head.trim()
    );
    assert_eq!(w.meta(&w.repo, &v1, "cairn.compose-user"), "root");
    assert!(!w.meta(&w.repo, &v1, "cairn.compose-host").is_empty());
    let cfg = std::fs::read_to_string(w.repo.join("config")).unwrap();
    assert!(cfg.contains(&format!("gpg-key={fpr}")), "{cfg}");
    assert!(w.repo.join("summary.sig").is_file());

    step("2");
    // 2. Serve it: a client that trusts the release key only pulls v1.
    let notrepo = w.work.join("tf");
    let out = Command::new(bin())
        .args(["repo", "serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&notrepo)
        .output()
        .unwrap();
    assert!(fails("serve a non-repo", out).contains("no OSTree repo at"));
    let server_log = w.work.join("serve.log");
    let mut server = Command::new(bin())
        .args(["-v", "repo", "serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&w.repo)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&server_log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    w.server = Some(server);
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let client = w.client("client", "bare-user", &url, &public);
    ok("pull v1", w.pull(&client, "test/amd64/rel"));
    assert_eq!(
        ok(
            "rev-parse",
            w.ostree(&client, &["rev-parse", "s:test/amd64/rel"])
        )
        .trim(),
        v1
    );

    step("3");
    // 3. v2 adds one small package: signed, and the client gets it through the static delta.
    let tf = write_treefile(&tfdir, &fpr, "\"hello\"");
    let r = w.compose(&tf);
    assert_eq!(r[0]["skipped"], true, "base did not change");
    let v2 = r[1]["commit"].as_str().unwrap().to_string();
    assert_eq!(r[1]["previous"], v1.as_str());
    let deltas = ok("deltas", w.ostree(&w.repo, &["static-delta", "list"]));
    assert!(deltas.contains(&format!("{v1}-{v2}")), "{deltas}");
    let pulled = ok("pull v2", w.pull(&client, "test/amd64/rel"));
    assert!(pulled.contains("delta parts"), "no delta used: {pulled}");
    assert!(std::fs::read_to_string(&server_log)
        .unwrap()
        .contains("GET /deltas/"));
    let verified = ok(
        "verify",
        w.ostree(
            &client,
            &["show", "--gpg-homedir", w.homes[0].to_str().unwrap(), &v2],
        ),
    );
    assert!(verified.contains("Good signature"), "{verified}");

    step("4");
    // 4. Refused: an unsigned commit (base), and one signed by another key.
    let err = fails("pull unsigned", w.pull(&client, "cairn/amd64/base"));
    assert!(err.contains("signature"), "{err}");
    ok(
        "gpg-sign",
        w.ostree(
            &w.repo,
            &[
                "gpg-sign",
                &format!("--gpg-homedir={}", w.homes[1].display()),
                &base,
                &other,
            ],
        ),
    );
    let err = fails("pull other key", w.pull(&client, "cairn/amd64/base"));
    assert!(err.contains("signature") || err.contains("key"), "{err}");

    step("5");
    // 5. An image's node trusts the manifest's key only: deployed from v1, its remote takes v2
    // and refuses the base commit, which only another key signed.
    let sysroot = w.work.join("sysroot");
    std::fs::create_dir_all(&sysroot).unwrap();
    let kargs: Vec<String> = Vec::new();
    cairn::store::sysroot::deploy(
        &sysroot,
        &cairn::store::sysroot::DeployOpts {
            repo: &w.repo,
            commit: &v1,
            ref_: "test/amd64/rel",
            osname: "cairn",
            remote: "cairn",
            remote_url: Some(&url),
            trust: Some(cairn::store::remote::Trust {
                key_file: &public,
                fingerprints: cairn::release::key::fingerprints_in(&public).unwrap(),
            }),
            kargs: &kargs,
        },
    )
    .unwrap();
    let node = sysroot.join("ostree/repo");
    let cfg = std::fs::read_to_string(node.join("config")).unwrap();
    assert!(
        cfg.contains("gpg-verify=true") && cfg.contains(&url),
        "{cfg}"
    );
    let pull = |r: &str| w.ostree(&node, &["pull", "cairn", r]);
    ok("node pulls v2", pull("test/amd64/rel"));
    assert_eq!(
        ok(
            "node rev",
            w.ostree(&node, &["rev-parse", "cairn:test/amd64/rel"])
        )
        .trim(),
        v2
    );
    let err = fails("node pulls another key's commit", pull("cairn/amd64/base"));
    assert!(err.contains("signature") || err.contains("key"), "{err}");
    // ostree marks deployment roots immutable: let the temporary directory go.
    let _ = Command::new("chattr")
        .args(["-R", "-f", "-i"])
        .arg(&sysroot)
        .status();

    step("6");
    // 6. Promote (the key from GNUPGHOME and the repo's config): a new signed commit of the same
    // tree on the stable ref, which the client pulls.
    let stable = "test/amd64/rel-stable";
    let out = ok(
        "promote",
        w.cairn(&["promote", "test/amd64/rel", stable, "--json"]),
    );
    let p: Value = serde_json::from_str(&out).unwrap();
    let s1 = p["new"].as_str().unwrap().to_string();
    assert_ne!(s1, v2);
    let content = |c: &str| {
        let s = ok("show", w.ostree(&w.repo, &["show", c]));
        s.lines()
            .find(|l| l.starts_with("ContentChecksum:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(content(&s1), content(&v2), "the same tree");
    assert_eq!(w.meta(&w.repo, &s1, "cairn.promoted-from"), v2);
    assert_eq!(w.meta(&w.repo, &s1, "version"), "1.1");
    ok("pull stable", w.pull(&client, stable));
    let again = ok(
        "promote again",
        w.cairn(&["promote", "test/amd64/rel", stable]),
    );
    assert!(again.contains("already"), "{again}");
    w.refused(
        &["promote", "cairn/amd64/base", "x/y"],
        "is not signed by the release key",
    );
    w.refused(
        &["promote", "test/amd64/nope", stable],
        "no ref test/amd64/nope",
    );
    ok(
        "sign base",
        w.cairn(&[
            "sign",
            "cairn/amd64/base",
            "--gpg-homedir",
            w.homes[0].to_str().unwrap(),
        ]),
    );
    w.refused(
        &["promote", "cairn/amd64/base", stable],
        "follows test/amd64/rel, not cairn/amd64/base",
    );

    step("7");
    // 7. Bad input changes nothing.
    w.refused(&["prune", "--keep-last", "0"], "--keep-last 0");
    w.refused(
        &["sign", "test/amd64/rel", "--key-id", "0123456789ABCDEF"],
        "no secret GPG key",
    );
    w.refused(
        &[
            "retire",
            "test/amd64/nope",
            "--rebase-to",
            stable,
            "--message",
            "m",
        ],
        "no ref test/amd64/nope",
    );
    w.refused(
        &[
            "retire",
            stable,
            "--rebase-to",
            "test/amd64/nope",
            "--message",
            "m",
        ],
        "no ref test/amd64/nope",
    );
    let expired = homes.path().join("e");
    w.homes.push(expired.clone());
    std::fs::create_dir_all(&expired).unwrap();
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(&expired)
        .args([
            "--batch",
            "--faked-system-time",
            "20200101T000000",
            "--pinentry-mode",
        ])
        .args([
            "loopback",
            "--passphrase",
            "",
            "--quick-generate-key",
            "old key",
            "ed25519",
        ])
        .args(["sign", "1d"])
        .output()
        .unwrap();
    ok("expired key", out);
    w.refused(
        &[
            "sign",
            "test/amd64/rel",
            "--gpg-homedir",
            expired.to_str().unwrap(),
            "--key-id",
            "old key",
        ],
        "expired",
    );

    step("8");
    // 8. Prune: v1 goes with the delta from it; fsck is clean; what is kept still pulls.
    let before = w.snapshot();
    let dry = ok(
        "dry run",
        w.cairn(&["prune", "--keep-last", "1", "--dry-run", "--json"]),
    );
    assert_eq!(w.snapshot(), before, "--dry-run changed something");
    let dry: Value = serde_json::from_str(&dry).unwrap();
    let gone: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["commit"].as_str().unwrap())
        .collect();
    assert_eq!(gone, vec![v1.as_str()], "{dry}");
    let pruned: Value = serde_json::from_str(&ok(
        "prune",
        w.cairn(&["prune", "--keep-last", "1", "--json"]),
    ))
    .unwrap();
    assert_eq!(pruned["removed"], dry["removed"]);
    assert!(pruned["objects"].as_u64().unwrap() > 0);
    let fsck = ok("fsck", w.ostree(&w.repo, &["fsck"]));
    assert!(fsck.contains("no errors"), "{fsck}");
    assert!(!ok("has v1", w.ostree(&w.repo, &["static-delta", "list"])).contains(&v1));
    let fresh = w.client("fresh", "archive", &url, &public);
    ok("pull kept v2", w.pull(&fresh, "test/amd64/rel"));
    ok("pull kept stable", w.pull(&fresh, stable));
    assert!(!w.pull(&fresh, &v1).status.success(), "v1 is gone");

    step("9");
    // 9. A line cut short by a crash, then a retirement: the reader skips the cut line.
    let lines_before = w.log_lines().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(w.log_path())
        .unwrap()
        .write_all(b"{\"time\":\"2026-11-")
        .unwrap();
    let out = w.cairn(&["log", "--json"]);
    assert!(
        text(&out.stderr).contains("cut short"),
        "{}",
        text(&out.stderr)
    );
    let h: Value = serde_json::from_str(&ok("log", out)).unwrap();
    assert_eq!(h["entries"].as_array().unwrap().len(), lines_before);
    let msg = "rel-stable ends: move to test/amd64/rel";
    ok(
        "retire",
        w.cairn(&[
            "retire",
            stable,
            "--rebase-to",
            "test/amd64/rel",
            "--message",
            msg,
        ]),
    );
    ok("pull retired", w.pull(&client, stable));
    assert_eq!(
        w.meta(&client, "s:test/amd64/rel-stable", "ostree.endoflife"),
        msg
    );
    assert_eq!(
        w.meta(
            &client,
            "s:test/amd64/rel-stable",
            "ostree.endoflife-rebase"
        ),
        "test/amd64/rel"
    );
    w.refused(
        &[
            "retire",
            stable,
            "--rebase-to",
            "test/amd64/rel",
            "--message",
            "m",
        ],
        "already retired",
    );

    step("10");
    // 10. The audit log: one line per step, in order, the cut one skipped.
    let out = w.cairn(&["log", "--json"]);
    let h: Value = serde_json::from_str(&ok("log", out)).unwrap();
    let steps: Vec<(String, String)> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["command"].as_str().unwrap().to_string(),
                e["ref"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("compose", "cairn/amd64/base"),
        ("compose", "test/amd64/rel"),
        ("compose", "test/amd64/rel"),
        ("promote", stable),
        ("sign", "cairn/amd64/base"),
        ("prune", "-"),
        ("retire", stable),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(steps, want);
    let e = &h["entries"][2];
    assert_eq!(e["old"], v1.as_str());
    assert_eq!(e["new"], v2.as_str());
    assert_eq!(e["version"], "1.1");
    assert_eq!(e["actor"]["user"], "root");
    assert_eq!(e["detail"]["signed_by"], fpr.as_str());
    assert!(e["inputhash"].as_str().is_some_and(|s| s.len() == 64));
    // What is on the stable ref, who built it, from what, when it was promoted.
    let out = ok("log ref", w.cairn(&["log", stable, "--json"]));
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["state"]["promoted_from"], "test/amd64/rel");
    assert_eq!(h["state"]["endoflife"], msg);
    assert!(h["state"]["treefile_git_revision"].as_str().is_some());
    assert!(h["state"]["composed_by"]
        .as_str()
        .unwrap()
        .starts_with("root@"));
    assert_eq!(h["state"]["signatures"][0]["fingerprint"], fpr.as_str());
    assert_eq!(h["state"]["signatures"][0]["valid"], true);
    let cmds: Vec<&str> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert_eq!(cmds, ["promote", "retire"]);
    step("done");
}
