//! The release's two signed composes (v1, then v2 with one small package more), served by
//! `cairn repo serve` to a client that trusts the release key only and to a node deployed from
//! v1 that trusts the manifest's key only: what is signed by that key pulls (v2 through its
//! static delta), what is unsigned or signed by another key is refused.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::release_world::{bin, fails, ok, write_treefile};
use super::Rel;

/// v1's treefile names a key that does not exist: a clear error naming the treefile, before
/// anything is written.
pub fn a_missing_signing_key_is_refused_before_anything_is_written(r: &mut Rel) {
    let w = &r.w;
    let tfdir = r.tfdir();
    std::fs::create_dir_all(&tfdir).unwrap();
    let tf = write_treefile(&tfdir, &r.fpr, "");
    let bad_tf = tfdir.join("bad.toml");
    std::fs::write(
        &bad_tf,
        std::fs::read_to_string(&tf)
            .unwrap()
            .replace(&r.fpr, "0123456789ABCDEF"),
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
}

/// v1: base (unsigned: its treefile names no key) and the signed layer, whose commit says where
/// it came from (the treefile's git revision, who composed it, where), in a repo that signs its
/// summary with the key.
pub fn v1_is_composed_with_where_it_came_from(r: &mut Rel) {
    let w = &r.w;
    let tfdir = r.tfdir();
    let c = w.compose(&tfdir.join("rel.toml"));
    assert_eq!(c.len(), 2);
    let v1 = c[1]["commit"].as_str().unwrap().to_string();
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
    assert!(cfg.contains(&format!("gpg-key={}", r.fpr)), "{cfg}");
    assert!(w.repo.join("summary.sig").is_file());
    r.base = c[0]["commit"].as_str().unwrap().to_string();
    r.v1 = v1;
}

/// `cairn repo serve` of a directory that holds no repo: a clear error.
pub fn serve_refuses_a_directory_that_is_not_a_repo(r: &mut Rel) {
    let out = Command::new(bin())
        .args(["repo", "serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(r.tfdir())
        .output()
        .unwrap();
    assert!(fails("serve a non-repo", out).contains("no OSTree repo at"));
}

/// Serve the repo: a client that trusts the release key only pulls v1.
pub fn a_client_trusting_the_release_key_pulls_v1(r: &mut Rel) {
    let mut server = Command::new(bin())
        .args(["-v", "repo", "serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&r.w.repo)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(r.w.work.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    r.w.server = Some(server);
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let w = &r.w;
    let client = w.client("client", "bare-user", &url, &r.public);
    ok("pull v1", w.pull(&client, "test/amd64/rel"));
    assert_eq!(
        ok(
            "rev-parse",
            w.ostree(&client, &["rev-parse", "s:test/amd64/rel"])
        )
        .trim(),
        r.v1
    );
    r.url = url;
    r.client = client;
}

/// v2 adds one small package: signed, and the client gets it through the static delta.
pub fn v2_is_signed_and_reaches_the_client_through_a_static_delta(r: &mut Rel) {
    let w = &r.w;
    let tf = write_treefile(&r.tfdir(), &r.fpr, "\"hello\"");
    let c = w.compose(&tf);
    assert_eq!(c[0]["skipped"], true, "base did not change");
    let v2 = c[1]["commit"].as_str().unwrap().to_string();
    assert_eq!(c[1]["previous"], r.v1.as_str());
    let deltas = ok("deltas", w.ostree(&w.repo, &["static-delta", "list"]));
    assert!(deltas.contains(&format!("{}-{v2}", r.v1)), "{deltas}");
    let pulled = ok("pull v2", w.pull(&r.client, "test/amd64/rel"));
    assert!(pulled.contains("delta parts"), "no delta used: {pulled}");
    assert!(std::fs::read_to_string(w.work.join("serve.log"))
        .unwrap()
        .contains("GET /deltas/"));
    let verified = ok(
        "verify",
        w.ostree(
            &r.client,
            &["show", "--gpg-homedir", w.homes[0].to_str().unwrap(), &v2],
        ),
    );
    assert!(verified.contains("Good signature"), "{verified}");
    r.v2 = v2;
}

/// Refused: an unsigned commit (base), and one signed by another key.
pub fn unsigned_and_other_keys_commits_are_refused(r: &mut Rel) {
    let w = &r.w;
    let err = fails("pull unsigned", w.pull(&r.client, "cairn/amd64/base"));
    assert!(err.contains("signature"), "{err}");
    ok(
        "gpg-sign",
        w.ostree(
            &w.repo,
            &[
                "gpg-sign",
                &format!("--gpg-homedir={}", w.homes[1].display()),
                &r.base,
                &r.other,
            ],
        ),
    );
    let err = fails("pull other key", w.pull(&r.client, "cairn/amd64/base"));
    assert!(err.contains("signature") || err.contains("key"), "{err}");
}

/// An image's node trusts the manifest's key only: deployed from v1, its remote takes v2 and
/// refuses the base commit, which only another key signed.
pub fn a_deployed_node_trusts_the_manifests_key_only(r: &mut Rel) {
    let w = &r.w;
    let sysroot = w.work.join("sysroot");
    std::fs::create_dir_all(&sysroot).unwrap();
    let kargs: Vec<String> = Vec::new();
    cairn::store::sysroot::deploy(
        &sysroot,
        &cairn::store::sysroot::DeployOpts {
            repo: &w.repo,
            commit: &r.v1,
            ref_: "test/amd64/rel",
            osname: "cairn",
            remote: "cairn",
            remote_url: Some(&r.url),
            trust: Some(cairn::store::remote::Trust {
                key_file: &r.public,
                fingerprints: cairn::release::key::fingerprints_in(&r.public).unwrap(),
            }),
            kargs: &kargs,
        },
    )
    .unwrap();
    let node = sysroot.join("ostree/repo");
    let cfg = std::fs::read_to_string(node.join("config")).unwrap();
    assert!(
        cfg.contains("gpg-verify=true") && cfg.contains(&r.url),
        "{cfg}"
    );
    let pull = |what: &str| w.ostree(&node, &["pull", "cairn", what]);
    ok("node pulls v2", pull("test/amd64/rel"));
    assert_eq!(
        ok(
            "node rev",
            w.ostree(&node, &["rev-parse", "cairn:test/amd64/rel"])
        )
        .trim(),
        r.v2
    );
    let err = fails("node pulls another key's commit", pull("cairn/amd64/base"));
    assert!(err.contains("signature") || err.contains("key"), "{err}");
    // ostree marks deployment roots immutable: let the temporary directory go.
    let _ = Command::new("chattr")
        .args(["-R", "-f", "-i"])
        .arg(&sysroot)
        .status();
}
