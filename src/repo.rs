//! The OSTree repository cairn writes commits into, through libostree.
//!
//! Commits are written in one transaction; the ref moves only when the transaction commits, so a
//! compose killed at any moment leaves the ref where it was and a repository that passes
//! `ostree fsck`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;

use crate::apt::Package;

/// Metadata keys cairn writes on every commit.
pub mod keys {
    pub const VERSION: &str = "version";
    pub const BOOTABLE: &str = "ostree.bootable";
    pub const LINUX: &str = "ostree.linux";
    pub const INPUTHASH: &str = "cairn.inputhash";
    pub const TREEFILE_DIGEST: &str = "cairn.treefile-digest";
    pub const TREEFILE: &str = "cairn.treefile";
    pub const PACKAGES: &str = "cairn.packages";
    pub const SBOM: &str = "cairn.sbom.spdx";
    pub const SOURCE_DATE_EPOCH: &str = "cairn.source-date-epoch";
    pub const LAYER_PARENT: &str = "cairn.layer-parent";
}

/// Open the repository at `path`, creating it in `archive` mode when it does not exist.
pub fn open_or_create(path: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    if path.join("config").exists() {
        repo.open(gio::Cancellable::NONE)
            .with_context(|| format!("opening OSTree repo {}", path.display()))?;
    } else {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
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

/// What cairn reads back from a commit.
#[derive(Clone)]
pub struct CommitInfo {
    pub checksum: String,
    pub timestamp: u64,
    pub subject: String,
    pub metadata: glib::VariantDict,
}

impl CommitInfo {
    pub fn string(&self, key: &str) -> Option<String> {
        self.metadata.lookup::<String>(key).ok().flatten()
    }

    pub fn version(&self) -> Option<String> {
        self.string(keys::VERSION)
    }

    /// The package list stored with the commit.
    pub fn packages(&self) -> Vec<Package> {
        let v: Option<Vec<(String, String, String, String)>> =
            self.metadata.lookup(keys::PACKAGES).ok().flatten();
        v.unwrap_or_default()
            .into_iter()
            .map(|(name, version, arch, sha256)| Package {
                name,
                version,
                arch,
                sha256,
            })
            .collect()
    }
}

/// Load a commit's metadata.
pub fn commit_info(repo: &ostree::Repo, checksum: &str) -> Result<CommitInfo> {
    let (commit, _) = repo
        .load_commit(checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    let meta = commit.child_value(0);
    let subject: String = commit.child_value(3).get().unwrap_or_default();
    let timestamp = u64::from_be(commit.child_value(5).get::<u64>().unwrap_or(0));
    Ok(CommitInfo {
        checksum: checksum.to_string(),
        timestamp,
        subject,
        metadata: glib::VariantDict::new(Some(&meta)),
    })
}

/// A layer's starting point: its parent's commit, and the moment the checkout of it was done.
/// Files whose status changed before then are the parent's, unchanged.
pub struct Base<'a> {
    pub commit: &'a str,
    /// Nanoseconds since the epoch.
    pub checked_out_at: i128,
}

/// Signs a commit inside the transaction that writes it, so that its ref never points at it
/// unsigned (`crate::release::sign::Signer`).
pub trait SignCommit {
    fn sign_commit(&self, repo: &ostree::Repo, commit: &str) -> Result<()>;
}

/// Everything a commit is written with.
pub struct NewCommit<'a> {
    pub root: &'a Path,
    /// For a layer: start from the parent's tree and write only what changed.
    pub base: Option<Base<'a>>,
    pub ref_: &'a str,
    pub parent: Option<&'a str>,
    pub subject: &'a str,
    pub metadata: glib::Variant,
    pub timestamp: u64,
    pub signer: Option<&'a dyn SignCommit>,
}

/// Commit the directory `c.root` and move `c.ref_` to it, in one transaction.
pub fn write_commit(repo: &ostree::Repo, c: &NewCommit) -> Result<String> {
    repo.prepare_transaction(gio::Cancellable::NONE)
        .context("starting an OSTree transaction")?;
    let result = (|| -> Result<String> {
        let (mtree, filter) = match &c.base {
            None => (ostree::MutableTree::new(), None),
            Some(b) => {
                let mtree = ostree::MutableTree::from_commit(repo, b.commit)
                    .with_context(|| format!("loading the tree of {}", b.commit))?;
                prune_removed(&mtree, c.root)?;
                (mtree, Some(unchanged_filter(c.root, b.checked_out_at)))
            }
        };
        let modifier =
            ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::NONE, filter);
        repo.write_directory_to_mtree(
            &gio::File::for_path(c.root),
            &mtree,
            Some(&modifier),
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("writing {} into the repo", c.root.display()))?;
        let root = repo
            .write_mtree(&mtree, gio::Cancellable::NONE)
            .context("writing the tree")?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("libostree returned a tree that is not a RepoFile"))?;
        let checksum = repo
            .write_commit_with_time(
                c.parent,
                Some(c.subject),
                None,
                Some(&c.metadata),
                &root,
                c.timestamp,
                gio::Cancellable::NONE,
            )
            .context("writing the commit")?;
        if let Some(s) = c.signer {
            s.sign_commit(repo, &checksum)?;
        }
        repo.transaction_set_ref(None, c.ref_, Some(checksum.as_str()));
        repo.commit_transaction(gio::Cancellable::NONE)
            .context("committing the OSTree transaction")?;
        Ok(checksum.to_string())
    })();
    if result.is_err() {
        let _ = repo.abort_transaction(gio::Cancellable::NONE);
    }
    result
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// A commit filter that skips files and symlinks whose status has not changed since the parent
/// was checked out: the parent's tree, which the new one starts from, already has them. Every
/// write, rename into place, chmod, chown or xattr change moves a file's ctime forward, and
/// nothing but the clock can move it back.
type CommitFilter =
    Box<dyn Fn(&ostree::Repo, &str, &gio::FileInfo) -> ostree::RepoCommitFilterResult>;

fn unchanged_filter(root: &Path, checked_out_at: i128) -> CommitFilter {
    let root = root.to_path_buf();
    Box::new(move |_repo, path, info| {
        if info.file_type() == gio::FileType::Directory {
            return ostree::RepoCommitFilterResult::Allow;
        }
        match std::fs::symlink_metadata(root.join(path.trim_start_matches('/'))) {
            Ok(m) if ctime_ns(&m) < checked_out_at => ostree::RepoCommitFilterResult::Skip,
            _ => ostree::RepoCommitFilterResult::Allow,
        }
    })
}

/// Remove from `mtree` (the parent's tree) whatever no longer exists in `root`, or changed
/// between file and directory.
fn prune_removed(mtree: &ostree::MutableTree, root: &Path) -> Result<()> {
    for name in mtree.copy_files().keys() {
        let p = root.join(name);
        let gone = std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(true);
        if gone {
            mtree
                .remove(name, true)
                .with_context(|| format!("dropping {} from the tree", p.display()))?;
        }
    }
    for (name, sub) in mtree.copy_subdirs() {
        let p = root.join(&name);
        let is_dir = std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            prune_removed(&sub, &p)?;
        } else {
            mtree
                .remove(&name, true)
                .with_context(|| format!("dropping {} from the tree", p.display()))?;
        }
    }
    Ok(())
}

/// Check out `commit` into `dest` (which must not exist), as files owned as in the commit.
/// Returns the moment the checkout was complete (for [`Base::checked_out_at`]).
pub fn checkout(repo: &ostree::Repo, commit: &str, dest: &Path) -> Result<i128> {
    let opts = ostree::RepoCheckoutAtOptions {
        mode: ostree::RepoCheckoutMode::None,
        ..Default::default()
    };
    repo.checkout_at(
        Some(&opts),
        libc_at_fdcwd(),
        dest,
        commit,
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("checking out {commit} into {}", dest.display()))?;
    // File times are coarse (a few ms): wait a tick, then take the time from a fresh file on the
    // same filesystem, so every checked-out file is strictly older and every later change newer.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let marker = dest.with_extension("checked-out");
    std::fs::write(&marker, b"")?;
    let t = ctime_ns(&std::fs::metadata(&marker)?);
    std::fs::remove_file(&marker)?;
    Ok(t)
}

fn libc_at_fdcwd() -> i32 {
    nix::libc::AT_FDCWD
}

/// Build the `a{sv}` metadata dictionary.
pub struct MetaBuilder {
    dict: glib::VariantDict,
}

impl Default for MetaBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MetaBuilder {
    pub fn new() -> Self {
        Self {
            dict: glib::VariantDict::new(None),
        }
    }
    pub fn insert<T: ToVariant>(&self, key: &str, v: T) -> &Self {
        self.dict.insert_value(key, &v.to_variant());
        self
    }
    pub fn packages(&self, pkgs: &[Package]) -> &Self {
        let v: Vec<(String, String, String, String)> = pkgs
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.version.clone(),
                    p.arch.clone(),
                    p.sha256.clone(),
                )
            })
            .collect();
        self.insert(keys::PACKAGES, v)
    }
    pub fn end(&self) -> glib::Variant {
        self.dict.end()
    }
}
