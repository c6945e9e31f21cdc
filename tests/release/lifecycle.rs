//! What happens to a release after it is served: promoted to a stable ref, pruned, retired,
//! and recorded in the audit log; bad input to each command is refused and changes nothing.

use std::io::Write;
use std::process::Command;

use serde_json::Value;

use super::release_world::{ok, text};
use super::{Rel, STABLE};

/// What the retirement tells the stable ref's clients.
const END_OF_LIFE: &str = "rel-stable ends: move to test/amd64/rel";

/// Promote (the key from GNUPGHOME and the repo's config): a new signed commit of the same tree
/// on the stable ref, which the client pulls; promoting it again says it already is.
pub fn promote_writes_a_signed_commit_of_the_same_tree(r: &mut Rel) {
    let w = &r.w;
    let out = ok(
        "promote",
        w.cairn(&["promote", "test/amd64/rel", STABLE, "--json"]),
    );
    let p: Value = serde_json::from_str(&out).unwrap();
    let s1 = p["new"].as_str().unwrap().to_string();
    assert_ne!(s1, r.v2);
    let content = |c: &str| {
        let s = ok("show", w.ostree(&w.repo, &["show", c]));
        s.lines()
            .find(|l| l.starts_with("ContentChecksum:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(content(&s1), content(&r.v2), "the same tree");
    assert_eq!(w.meta(&w.repo, &s1, "cairn.promoted-from"), r.v2);
    assert_eq!(w.meta(&w.repo, &s1, "version"), "1.1");
    ok("pull stable", w.pull(&r.client, STABLE));
    let again = ok(
        "promote again",
        w.cairn(&["promote", "test/amd64/rel", STABLE]),
    );
    assert!(again.contains("already"), "{again}");
}

/// Promote refuses a commit the release key did not sign, a ref that does not exist, and a
/// source the target ref does not follow (even once signed).
pub fn promote_refuses_unsigned_missing_and_unrelated_refs(r: &mut Rel) {
    let w = &r.w;
    w.refused(
        &["promote", "cairn/amd64/base", "x/y"],
        "is not signed by the release key",
    );
    w.refused(
        &["promote", "test/amd64/nope", STABLE],
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
        &["promote", "cairn/amd64/base", STABLE],
        "follows test/amd64/rel, not cairn/amd64/base",
    );
}

/// Bad input changes nothing: a prune that would keep nothing, a key that does not exist, a
/// retirement of or to a ref that does not exist.
pub fn prune_sign_and_retire_refuse_bad_input_changing_nothing(r: &mut Rel) {
    let w = &r.w;
    w.refused(&["prune", "--keep-last", "0"], "--keep-last 0");
    w.refused(
        &["sign", "test/amd64/rel", "--key-id", "0123456789ABCDEF"],
        "no secret GPG key",
    );
    let retire = |from: &'static str, to: &'static str| {
        ["retire", from, "--rebase-to", to, "--message", "m"]
    };
    w.refused(&retire("test/amd64/nope", STABLE), "no ref test/amd64/nope");
    w.refused(&retire(STABLE, "test/amd64/nope"), "no ref test/amd64/nope");
}

/// A key that expired cannot sign: refused, nothing changed.
pub fn an_expired_key_cannot_sign(r: &mut Rel) {
    let expired = r.homes.path().join("e");
    r.w.homes.push(expired.clone());
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
    r.w.refused(
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
}

/// `prune --keep-last 1 --dry-run` lists v1 alone and changes nothing.
pub fn a_prune_dry_run_lists_v1_and_changes_nothing(r: &mut Rel) {
    let w = &r.w;
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
    assert_eq!(gone, vec![r.v1.as_str()], "{dry}");
    r.dry = dry;
}

/// Prune: what the dry run listed goes (v1, with the delta from it); fsck is clean; what is
/// kept still pulls into a fresh client, v1 does not.
pub fn prune_removes_v1_and_its_delta_and_what_is_kept_still_pulls(r: &mut Rel) {
    let w = &r.w;
    let pruned: Value = serde_json::from_str(&ok(
        "prune",
        w.cairn(&["prune", "--keep-last", "1", "--json"]),
    ))
    .unwrap();
    assert_eq!(pruned["removed"], r.dry["removed"]);
    assert!(pruned["objects"].as_u64().unwrap() > 0);
    let fsck = ok("fsck", w.ostree(&w.repo, &["fsck"]));
    assert!(fsck.contains("no errors"), "{fsck}");
    assert!(!ok("has v1", w.ostree(&w.repo, &["static-delta", "list"])).contains(&r.v1));
    let fresh = w.client("fresh", "archive", &r.url, &r.public);
    ok("pull kept v2", w.pull(&fresh, "test/amd64/rel"));
    ok("pull kept stable", w.pull(&fresh, STABLE));
    assert!(!w.pull(&fresh, &r.v1).status.success(), "v1 is gone");
}

/// A line cut short by a crash: the log reader warns and skips it.
pub fn the_log_reader_skips_a_line_cut_short(r: &mut Rel) {
    let w = &r.w;
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
}

/// A retirement: the stable ref's clients pull its end of life and the ref to rebase to; a
/// second one is refused.
pub fn retire_marks_the_end_of_life_that_clients_pull(r: &mut Rel) {
    let w = &r.w;
    let retire = |msg| {
        [
            "retire",
            STABLE,
            "--rebase-to",
            "test/amd64/rel",
            "--message",
            msg,
        ]
    };
    ok("retire", w.cairn(&retire(END_OF_LIFE)));
    ok("pull retired", w.pull(&r.client, STABLE));
    assert_eq!(
        w.meta(&r.client, "s:test/amd64/rel-stable", "ostree.endoflife"),
        END_OF_LIFE
    );
    assert_eq!(
        w.meta(
            &r.client,
            "s:test/amd64/rel-stable",
            "ostree.endoflife-rebase"
        ),
        "test/amd64/rel"
    );
    w.refused(&retire("m"), "already retired");
}

/// The audit log: one line per step that changed the repo, in order, the cut one skipped; v2's
/// compose with its old and new commit, version, actor, signer and input hash.
pub fn the_audit_log_has_one_line_per_step_in_order(r: &mut Rel) {
    let w = &r.w;
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
        ("promote", STABLE),
        ("sign", "cairn/amd64/base"),
        ("prune", "-"),
        ("retire", STABLE),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(steps, want);
    let e = &h["entries"][2];
    assert_eq!(e["old"], r.v1.as_str());
    assert_eq!(e["new"], r.v2.as_str());
    assert_eq!(e["version"], "1.1");
    assert_eq!(e["actor"]["user"], "root");
    assert_eq!(e["detail"]["signed_by"], r.fpr.as_str());
    assert!(e["inputhash"].as_str().is_some_and(|s| s.len() == 64));
}

/// What is on the stable ref, who built it, from what, when it was promoted and retired.
pub fn the_log_of_a_ref_tells_who_built_it_and_its_promotion(r: &mut Rel) {
    let w = &r.w;
    let out = ok("log ref", w.cairn(&["log", STABLE, "--json"]));
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["state"]["promoted_from"], "test/amd64/rel");
    assert_eq!(h["state"]["endoflife"], END_OF_LIFE);
    assert!(h["state"]["treefile_git_revision"].as_str().is_some());
    assert!(h["state"]["composed_by"]
        .as_str()
        .unwrap()
        .starts_with("root@"));
    assert_eq!(h["state"]["signatures"][0]["fingerprint"], r.fpr.as_str());
    assert_eq!(h["state"]["signatures"][0]["valid"], true);
    let cmds: Vec<&str> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert_eq!(cmds, ["promote", "retire"]);
}
