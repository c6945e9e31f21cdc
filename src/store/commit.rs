//! Writing a commit from a directory (a whole tree, or a layer on its parent's tree) and
//! checking one out.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib::prelude::*;

use super::CommitMeta;

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
    pub header: Header<'a>,
}

/// Commit the directory `c.root` and move `c.ref_` to it, in one transaction.
pub fn write_commit(repo: &ostree::Repo, c: &NewCommit) -> Result<String> {
    in_transaction(repo, || {
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
        finish(repo, &root, &c.header)
    })
}

/// Run `f` in an OSTree transaction, aborted when it fails (`f` commits it: [`finish`]).
fn in_transaction(repo: &ostree::Repo, f: impl FnOnce() -> Result<String>) -> Result<String> {
    repo.prepare_transaction(gio::Cancellable::NONE)
        .context("starting an OSTree transaction")?;
    let result = f();
    if result.is_err() {
        let _ = repo.abort_transaction(gio::Cancellable::NONE);
    }
    result
}

/// What every commit object carries besides its tree.
pub struct Header<'a> {
    pub ref_: &'a str,
    pub parent: Option<&'a str>,
    pub subject: &'a str,
    pub meta: &'a CommitMeta,
    pub timestamp: u64,
    pub signer: Option<&'a dyn SignCommit>,
}

/// The end of every commit's transaction: write the commit object for `root`, sign it, move
/// the ref, commit the transaction.
fn finish(repo: &ostree::Repo, root: &ostree::RepoFile, h: &Header) -> Result<String> {
    let &Header {
        ref_,
        parent,
        subject,
        meta,
        timestamp,
        signer,
    } = h;
    let checksum = repo
        .write_commit_with_time(
            parent,
            Some(subject),
            None,
            Some(&meta.to_variant()),
            root,
            timestamp,
            gio::Cancellable::NONE,
        )
        .context("writing the commit")?;
    if let Some(s) = signer {
        s.sign_commit(repo, &checksum)?;
    }
    repo.transaction_set_ref(None, ref_, Some(checksum.as_str()));
    repo.commit_transaction(gio::Cancellable::NONE)
        .context("committing the OSTree transaction")?;
    Ok(checksum.to_string())
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
        match fs_err::symlink_metadata(root.join(path.trim_start_matches('/'))) {
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
        let gone = fs_err::symlink_metadata(&p)
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
        let is_dir = fs_err::symlink_metadata(&p)
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
    fs_err::write(&marker, b"")?;
    let t = ctime_ns(&fs_err::metadata(&marker)?);
    fs_err::remove_file(&marker)?;
    Ok(t)
}

fn libc_at_fdcwd() -> i32 {
    nix::libc::AT_FDCWD
}

/// A new commit of an existing commit's tree (promotion, retirement): no object is written.
pub struct Recommit<'a> {
    /// The commit whose tree the new one has.
    pub tree_of: &'a str,
    pub header: Header<'a>,
}

/// Write `c` and move its ref, signed, in one transaction.
pub fn recommit(repo: &ostree::Repo, c: &Recommit) -> Result<String> {
    in_transaction(repo, || {
        let (root, _) = repo
            .read_commit(c.tree_of, gio::Cancellable::NONE)
            .with_context(|| format!("reading the tree of {}", c.tree_of))?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("libostree returned a tree that is not a RepoFile"))?;
        finish(repo, &root, &c.header)
    })
}
