//! The base host composed from scratch, and what the same inputs give again: nothing in the
//! same repo, the same commit in a clean repo and cache (the boot tests' shared one), and the
//! same commit from the lockfile written from it; a lockfile that does not match is refused.

use super::env::Env;
use super::layout::check_layout;
use super::{World, BASE, BASE_REF};

/// Compose base from an empty repo and cache: one layer, written, on its ref, version 1.0, and
/// the repo checks clean.
pub fn an_empty_repo_and_cache_compose_the_base(w: &mut World) {
    let r = w.a.compose(&[BASE]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["skipped"], false);
    let c1 = r[0]["commit"].as_str().unwrap().to_string();
    assert_eq!(w.a.rev(BASE_REF), c1);
    assert_eq!(r[0]["version"], "1.0");
    w.a.assert_fsck_clean();
    w.c1 = c1;
}

/// The first compose's commit follows the layout rules (`layout.rs`).
pub fn the_base_commit_follows_the_ostree_layout(w: &mut World) {
    check_layout(&w.a, &w.c1);
}

/// No-op: the same inputs, nothing written.
pub fn the_same_inputs_compose_nothing(w: &mut World) {
    let r = w.a.compose(&[BASE]);
    assert_eq!(r[0]["skipped"], true);
    assert_eq!(r[0]["commit"], w.c1.as_str());
    assert_eq!(w.a.rev(BASE_REF), w.c1);
}

/// A lockfile from the commit: every package with its digest.
pub fn a_lockfile_is_written_from_the_commit(w: &mut World) {
    let lock = w.lockfile();
    w.a.compose(&["--write-lockfile", lock.to_str().unwrap(), BASE]);
    let lock_text = std::fs::read_to_string(&lock).unwrap();
    assert!(lock_text.contains("[[package]]") && lock_text.contains("sha256 = "));
}

/// Reproducible: a clean repo and cache give the same commit checksum. The boot tests' shared
/// world composes the same base from its own clean repo and cache (its blessed host's first
/// layer), so that compose is the second one, not a third.
pub fn a_clean_repo_and_cache_give_the_same_commit(w: &mut World) {
    let shared = crate::boots::shared::get().blessed();
    let c2 = Env {
        repo: shared.repo.clone(),
        cache: shared.cache.clone(),
    }
    .rev(BASE_REF);
    if c2 != w.c1 {
        // What differs, file by file, before the world (and both repos) go.
        w.a.ostree(&["pull-local", shared.repo.to_str().unwrap(), &c2]);
        let diff = w.a.ostree(&["diff", &w.c1, &c2]);
        panic!(
            "same inputs, another commit: {} here, {c2} in {}; what differs:\n{diff}",
            w.c1,
            shared.repo.display()
        );
    }
}

/// From the lockfile, into a new repo (with the first compose's cache): exactly those
/// packages, the same commit.
pub fn a_lockfile_compose_into_a_new_repo_gives_the_same_commit(w: &mut World) {
    let lock = w.lockfile();
    let r = w.c().compose(&["--lockfile", lock.to_str().unwrap(), BASE]);
    assert_eq!(
        r[0]["commit"],
        w.c1.as_str(),
        "a lockfile compose reproduces the commit"
    );
}

/// A lockfile whose digest does not match fails clearly and leaves the ref alone.
pub fn a_lockfile_with_a_wrong_digest_is_refused_and_the_ref_stays(w: &mut World) {
    let lock_text = std::fs::read_to_string(w.lockfile()).unwrap();
    let bad = w.path().join("bad.lock.toml");
    let mut tampered = lock_text;
    let pos = tampered.find("sha256 = \"").unwrap() + "sha256 = \"".len();
    tampered.replace_range(pos..pos + 4, "0000");
    std::fs::write(&bad, tampered).unwrap();
    let c = w.c();
    let err = c.compose_fails(&["--force", "--lockfile", bad.to_str().unwrap(), BASE]);
    assert!(
        err.contains("SHA-256") && err.contains("bad.lock.toml"),
        "{err}"
    );
    assert_eq!(c.rev(BASE_REF), w.c1);
}

/// ...and so does one that misses a package.
pub fn a_lockfile_missing_a_package_is_refused(w: &mut World) {
    let lock_text = std::fs::read_to_string(w.lockfile()).unwrap();
    let missing = w.path().join("missing.lock.toml");
    let cut = lock_text.find("[[package]]").unwrap();
    let next = lock_text[cut + 5..].find("[[package]]").unwrap() + cut + 5;
    std::fs::write(
        &missing,
        format!("{}{}", &lock_text[..cut], &lock_text[next..]),
    )
    .unwrap();
    let err = w
        .c()
        .compose_fails(&["--force", "--lockfile", missing.to_str().unwrap(), BASE]);
    assert!(err.contains("not in the lockfile"), "{err}");
}
