//! `cairn prune --keep-last N`: keep the last N commits of every ref (the one it points at and
//! N-1 parents), remove every other commit with the objects only they reach and the static
//! deltas from or to them, then rewrite the summary.
//!
//! The deletion is libostree's (`Repo::prune` over refs only, to depth N-1; it also drops the
//! deltas into removed commits); cairn plans it first, to list what goes (`--dry-run` stops
//! there, changing nothing), and removes the deltas *from* removed commits, which no client can
//! start from any more.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context, Result};
use ostree::gio;
use serde::Serialize;

use super::audit::Entry;
use super::promote::refs;
use super::publish;
use super::sign::SignOpts;
use crate::store;

/// A commit that goes.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// The ref whose history held it (`None`: no ref reached it).
    #[serde(rename = "ref")]
    pub ref_: Option<String>,
    pub commit: String,
    pub version: Option<String>,
}

/// What a prune removed (or, with `--dry-run`, would remove).
#[derive(Debug, Serialize)]
pub struct Report {
    pub keep_last: u32,
    pub dry_run: bool,
    pub removed: Vec<Removed>,
    /// Static deltas, as `FROM-TO` (or `TO` from nothing).
    pub deltas: Vec<String>,
    pub objects: u64,
    pub bytes: u64,
}

/// Commits to keep (every ref's last `keep_last`), and the older ones each ref's history holds.
fn plan(r: &ostree::Repo, keep_last: u32) -> Result<(HashSet<String>, BTreeMap<String, String>)> {
    let mut kept = HashSet::new();
    let mut older: BTreeMap<String, String> = BTreeMap::new();
    let mut all_refs: Vec<(String, String)> = refs(r)?.into_iter().collect();
    all_refs.sort();
    for (ref_, head) in all_refs {
        let mut c = Some(head);
        let mut depth = 0u32;
        while let Some(commit) = c {
            if !publish::has_commit(r, &commit)? {
                break;
            }
            if depth < keep_last {
                kept.insert(commit.clone());
            } else {
                older.entry(commit.clone()).or_insert_with(|| ref_.clone());
            }
            let (v, _) = r
                .load_commit(&commit)
                .with_context(|| format!("loading commit {commit}"))?;
            c = ostree::commit_get_parent(&v).map(|p| p.to_string());
            depth += 1;
        }
    }
    Ok((kept, older))
}

fn delta_name(from: &Option<String>, to: &str) -> String {
    match from {
        Some(f) => format!("{f}-{to}"),
        None => to.to_string(),
    }
}

/// OSTree's modified base64 of a checksum (`/` → `_`, no padding): how delta paths name commits.
fn mbase64(checksum: &str) -> Result<String> {
    let bytes = hex::decode(checksum).with_context(|| format!("{checksum}: not a checksum"))?;
    Ok(ostree::glib::base64_encode(&bytes)
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string())
}

/// The directory of the delta `from` → `to` in the repo.
fn delta_dir(repo_path: &std::path::Path, from: &str, to: &str) -> Result<std::path::PathBuf> {
    let f = mbase64(from)?;
    Ok(repo_path
        .join("deltas")
        .join(&f[..2])
        .join(format!("{}-{}", &f[2..], mbase64(to)?)))
}

/// Objects only the removed commits reach, and their bytes on disk.
fn unreachable(r: &ostree::Repo, kept: &HashSet<String>) -> Result<(u64, u64)> {
    let mut reachable = HashSet::new();
    for c in kept {
        reachable.extend(
            r.traverse_commit(c, 0, gio::Cancellable::NONE)
                .with_context(|| format!("walking commit {c}"))?,
        );
    }
    let all = r
        .list_objects(
            ostree::ffi::OSTREE_REPO_LIST_OBJECTS_ALL
                | ostree::ffi::OSTREE_REPO_LIST_OBJECTS_NO_PARENTS,
            gio::Cancellable::NONE,
        )
        .context("listing the repo's objects")?;
    let (mut n, mut bytes) = (0, 0);
    for name in all.keys().filter(|o| !reachable.contains(*o)) {
        n += 1;
        bytes += r
            .query_object_storage_size(name.object_type(), name.checksum(), gio::Cancellable::NONE)
            .unwrap_or(0);
    }
    Ok((n, bytes))
}

/// A static delta, from a commit (`None`: from nothing) to a commit.
type Delta = (Option<String>, String);

/// Prune the repo at `repo_path` (see the module docs).
pub fn prune(
    repo_path: &std::path::Path,
    keep_last: u32,
    dry_run: bool,
    sign: &SignOpts,
) -> Result<Report> {
    if keep_last == 0 {
        bail!(
            "--keep-last 0 would remove the commit every ref points at: keep at least 1 (the \
             commit a ref points at is always kept)"
        );
    }
    let r = store::open(repo_path)?;
    // The summary is signed again afterwards: the key must be usable before anything goes.
    let signer = if dry_run { None } else { sign.signer(&r)? };
    let (kept, older) = plan(&r, keep_last)?;
    let removed = removed_commits(&r, &kept, &older)?;
    let gone: HashSet<&str> = removed.iter().map(|x| x.commit.as_str()).collect();
    let deltas: Vec<Delta> = publish::deltas(&r)?
        .into_iter()
        .filter(|(f, t)| {
            gone.contains(t.as_str()) || f.as_deref().is_some_and(|f| gone.contains(f))
        })
        .collect();
    let mut report = Report {
        keep_last,
        dry_run,
        removed: removed.clone(),
        deltas: deltas.iter().map(|(f, t)| delta_name(f, t)).collect(),
        objects: 0,
        bytes: 0,
    };
    if dry_run {
        (report.objects, report.bytes) = unreachable(&r, &kept)?;
        return Ok(report);
    }
    if removed.is_empty() && deltas.is_empty() {
        return Ok(report);
    }
    (report.objects, report.bytes) = remove(&r, keep_last)?;
    remove_deltas_from_gone(&r, repo_path, &deltas, &gone)?;
    for x in &removed {
        if publish::has_commit(&r, &x.commit)? {
            bail!("prune left commit {} in the repo", x.commit);
        }
    }
    publish::summary(&r, signer.as_ref())?;
    let mut e = Entry::new("prune", None)
        .with("keep_last", keep_last)
        .with("removed", &removed)
        .with("deltas", &report.deltas)
        .with("objects", report.objects)
        .with("bytes", report.bytes);
    if let Some(s) = &signer {
        e = e.with("signed_by", &s.key.fingerprint);
    }
    super::audit::append(repo_path, &[e])?;
    Ok(report)
}

/// Every commit of the repo that is not kept, with the ref whose history held it, in order of
/// ref and commit.
fn removed_commits(
    r: &ostree::Repo,
    kept: &HashSet<String>,
    older: &BTreeMap<String, String>,
) -> Result<Vec<Removed>> {
    let all = r
        .list_commit_objects_starting_with(None, gio::Cancellable::NONE)
        .context("listing the repo's commits")?;
    let mut removed: Vec<Removed> = Vec::new();
    for c in all.iter().map(|c| c.to_string()) {
        if kept.contains(&c) {
            continue;
        }
        let version = store::load_commit(r, &c).ok().and_then(|i| i.meta.version);
        removed.push(Removed {
            ref_: older.get(&c).cloned(),
            commit: c,
            version,
        });
    }
    removed.sort_by(|a, b| (&a.ref_, &a.commit).cmp(&(&b.ref_, &b.commit)));
    Ok(removed)
}

/// libostree's prune over the refs, to depth `keep_last - 1`; the objects and bytes it freed.
fn remove(r: &ostree::Repo, keep_last: u32) -> Result<(u64, u64)> {
    let depth = i32::try_from(keep_last - 1).unwrap_or(i32::MAX);
    let (_, pruned, bytes) = r
        .prune(
            ostree::RepoPruneFlags::REFS_ONLY,
            depth,
            gio::Cancellable::NONE,
        )
        .context("pruning the repo")?;
    Ok((u64::try_from(pruned).unwrap_or(0), bytes))
}

/// Remove the deltas out of removed commits into kept ones.
fn remove_deltas_from_gone(
    r: &ostree::Repo,
    repo_path: &std::path::Path,
    deltas: &[Delta],
    gone: &HashSet<&str>,
) -> Result<()> {
    // libostree dropped the deltas into removed commits; those out of them are cairn's to drop.
    for (from, to) in deltas {
        if let Some(f) = from.as_deref().filter(|f| gone.contains(f)) {
            if publish::has_commit(r, to)? {
                let dir = delta_dir(repo_path, f, to)?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing the static delta {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_paths_use_modified_base64() {
        // From `ostree static-delta generate` on this machine.
        let from = "0436abd2bd4241ea6c1b9f094f55a242a7f5ff14300cd8fe0467902e89efa249";
        let to = "fbb426d6559cb5f4c729019c8572fef1db9ef3c7c4a227afa3bb33dc757f41b4";
        let d = delta_dir(std::path::Path::new("r"), from, to).unwrap();
        assert_eq!(
            d,
            std::path::Path::new(
                "r/deltas/BD/ar0r1CQepsG58JT1WiQqf1_xQwDNj+BGeQLonvokk-+7Qm1lWctfTHKQGchXL+8due88fEoievo7sz3HV_QbQ"
            )
        );
    }
}
