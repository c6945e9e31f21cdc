//! The OSTree layer: the archive repository cairn writes commits into (through libostree), the
//! typed metadata on each commit ([`meta`]), writing and checking out commits ([`commit`]),
//! sysroot deployments ([`sysroot`]), and serving the repository over HTTP ([`serve`]).
//!
//! Commits are written in one transaction; the ref moves only when the transaction commits, so a
//! compose killed at any moment leaves the ref where it was and a repository that passes
//! `ostree fsck`.

pub mod commit;
pub mod meta;
pub mod remote;
pub mod serve;
pub mod sysroot;

pub use commit::{checkout, recommit, write_commit, Base, Header, NewCommit, Recommit, SignCommit};
pub use meta::{keys, CommitMeta, MetaValue, Provenance};

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ostree::gio;

/// The longest ref cairn takes: it becomes one file name (under 255 bytes) in the cache.
pub const MAX_REF: usize = 200;

/// Is `r` an OSTree ref cairn can also use as a file name (with `/` replaced)?
pub fn valid_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= MAX_REF
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.contains("//")
        && r.split('/').all(|seg| seg != "." && seg != "..")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

/// Open the repository at `path`, creating it in `archive` mode when it does not exist.
pub fn open_or_create(path: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    if path.join("config").exists() {
        repo.open(gio::Cancellable::NONE)
            .with_context(|| format!("opening OSTree repo {}", path.display()))?;
    } else {
        fs_err::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
            .with_context(|| format!("creating OSTree repo {}", path.display()))?;
    }
    Ok(repo)
}

/// Open an existing repository.
pub fn open(path: &Path) -> Result<ostree::Repo> {
    if !path.join("config").exists() {
        return Err(anyhow!(
            "no OSTree repo at {} (compose something first, or pass --repo)",
            path.display()
        ));
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repo {}", path.display()))?;
    Ok(repo)
}

/// The commit a ref (or a commit checksum) names, if the ref exists.
pub fn resolve_opt(repo: &ostree::Repo, rev: &str) -> Result<Option<String>> {
    Ok(repo
        .resolve_rev(rev, true)
        .with_context(|| format!("resolving {rev}"))?
        .map(|s| s.to_string()))
}

/// The commit a ref or commit checksum names; an error naming `rev` when there is none.
pub fn resolve(repo: &ostree::Repo, rev: &str) -> Result<String> {
    resolve_opt(repo, rev)?.ok_or_else(|| anyhow!("no ref or commit {rev} in the repo"))
}

/// A commit as cairn reads it back.
#[derive(Debug, Clone)]
pub struct Commit {
    pub checksum: String,
    /// Seconds since the epoch.
    pub timestamp: u64,
    pub subject: String,
    pub meta: CommitMeta,
}

impl Commit {
    /// The version, or the start of the checksum for a commit without one.
    pub fn version_or_checksum(&self) -> String {
        self.meta
            .version
            .clone()
            .unwrap_or_else(|| crate::base::text::short_hash(&self.checksum).to_string())
    }
}

/// Load a commit and decode its metadata.
pub fn load_commit(repo: &ostree::Repo, checksum: &str) -> Result<Commit> {
    let (commit, _) = repo
        .load_commit(checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    let subject: String = commit.child_value(3).get().unwrap_or_default();
    let timestamp = u64::from_be(commit.child_value(5).get::<u64>().unwrap_or(0));
    Ok(Commit {
        checksum: checksum.to_string(),
        timestamp,
        subject,
        meta: CommitMeta::from_variant(checksum, &commit.child_value(0))?,
    })
}
