//! SIGKILL in the middle of a commit: the repo stays consistent, the ref unchanged, and the
//! next compose succeeds. The killed compose is a small layer on the first compose's base (a
//! checkout and a commit, not a base from packages): its second version adds tens of thousands
//! of small files, so that its commit writes objects for seconds, and the kill comes once the
//! transaction has staged some of them — in the middle of the commit, not before or after it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::World;

const KILLED_REF: &str = "test/killed";

/// The files the layer's second version adds, one object each.
const FILES: usize = 10_000;

/// Objects the killed commit stages before the kill: a tenth of them.
const STAGED: usize = FILES / 10;

/// The layer's treefile (`tf/killed.toml`): base and one postprocess script.
fn layer(w: &World, script: &str) -> PathBuf {
    w.layer_on_base("killed", KILLED_REF, script)
}

/// Files in the repo's transaction staging directories (`tmp/staging-*`), where a commit's
/// objects wait until the transaction is committed.
fn staged(repo: &Path) -> usize {
    fn files(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => files(&e.path()),
                        _ => 1,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    std::fs::read_dir(repo.join("tmp"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("staging-"))
                .map(|e| files(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// SIGKILL the compose `child` once it reached its commit and staged `STAGED` objects.
fn kill_in_commit(mut child: Child, repo: &Path) {
    // Kept open until the kill: the compose never writes to a closed pipe.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = Instant::now();
    loop {
        let line = lines.next().map(|l| l.unwrap_or_default());
        let line = line.unwrap_or_else(|| panic!("compose ended: {:?}", child.wait()));
        if line.contains("commit:") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "compose never reached commit"
        );
    }
    let before = staged(repo);
    loop {
        let n = staged(repo);
        if n >= before + STAGED {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the commit ended ({status}) with {n} objects staged, before it could be killed"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "the commit staged only {n} objects"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed, not finished: {status}");
    drop(lines);
}

/// The layer at a first version (a ref to keep), then a second one killed in its commit: fsck
/// is clean and the ref still names the first version.
pub fn a_compose_killed_in_its_commit_leaves_the_repo_consistent_and_the_ref_unchanged(
    w: &mut World,
) {
    let tf = layer(w, "echo 1 > /usr/share/cairn-killed");
    let r = w.a.compose(&[tf.to_str().unwrap()]);
    let first = r[1]["commit"].as_str().unwrap().to_string();
    assert_eq!(w.a.rev(KILLED_REF), first);
    let tf = layer(
        w,
        &format!(
            "mkdir /usr/share/cairn-killed && seq 1 {} | split -a 4 -l 100 - /usr/share/cairn-killed/part-",
            FILES * 100
        ),
    );
    let child =
        w.a.cmd(&["compose", tf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    kill_in_commit(child, &w.a.repo);
    w.a.assert_fsck_clean();
    assert_eq!(
        w.a.rev(KILLED_REF),
        first,
        "the killed compose did not move the ref"
    );
}

/// The same compose again succeeds: the next version on the ref, with every file, and fsck
/// clean.
pub fn the_compose_after_a_killed_one_succeeds_with_the_next_version(w: &mut World) {
    let tf = w.treefiles().join("killed.toml");
    let r = w.a.compose(&[tf.to_str().unwrap()]);
    assert_eq!(r[0]["skipped"], true, "base did not change");
    assert_eq!(r[1]["skipped"], false);
    assert_eq!(r[1]["version"], "1.1", "the next version on the ref");
    let commit = r[1]["commit"].as_str().unwrap();
    assert_eq!(w.a.rev(KILLED_REF), commit);
    let ls = w.a.ostree(&["ls", commit, "/usr/share/cairn-killed"]);
    assert_eq!(ls.lines().count(), FILES + 1, "the directory and its files");
    w.a.assert_fsck_clean();
}
