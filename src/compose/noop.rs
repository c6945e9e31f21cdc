//! The no-op decisions: a compose whose inputs did not change writes nothing and returns the
//! ref's commit.
//!
//! Both are pure functions of values the stages before them made, so they are tested without a
//! repo or apt. [`decide`] runs on the gathered [`Inputs`], before apt: the treefile digest and
//! the apt sources' `InRelease` digests (as noted beside the repo, see [`IndexNote`]) against the
//! ref's commit. [`decide_resolved`] runs after resolving: the input hash against the commit's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::gather::Inputs;
use super::{work_name, ComposeResult};
use crate::store;

/// What a no-op check found.
#[derive(Debug, Clone, Copy)]
pub(super) enum Decision<'a> {
    /// The ref's commit holds exactly these inputs: nothing is written, it is the result.
    Unchanged(&'a store::Commit),
    /// Go on composing.
    Compose,
}

/// The cheap check, before apt runs: the treefile digest is the one on the ref's commit, and
/// the package indexes are as they were when that commit was last found current.
pub(super) fn decide(inputs: &Inputs, force: bool) -> Decision<'_> {
    let Some(prev) = inputs.previous.as_ref().filter(|_| !force) else {
        return Decision::Compose;
    };
    let same_treefile = prev.meta.treefile_digest.as_deref() == Some(&inputs.treefile_digest);
    let same_indexes = inputs
        .note
        .as_ref()
        .is_some_and(|n| n.commit == prev.checksum && n.index_digest == inputs.index.digest);
    if same_treefile && same_indexes {
        Decision::Unchanged(prev)
    } else {
        Decision::Compose
    }
}

/// The exact check, after resolving: the input hash is the one on the ref's commit.
pub(super) fn decide_resolved<'a>(
    inputs: &'a Inputs,
    inputhash: &str,
    force: bool,
) -> Decision<'a> {
    match inputs.previous.as_ref().filter(|_| !force) {
        Some(prev) if prev.meta.inputhash.as_deref() == Some(inputhash) => {
            Decision::Unchanged(prev)
        }
        _ => Decision::Compose,
    }
}

/// The result of a compose that found `prev` current.
pub(super) fn skipped(
    ref_: &str,
    inputs: &Inputs,
    prev: &store::Commit,
    start: Instant,
) -> ComposeResult {
    ComposeResult {
        ref_: ref_.to_string(),
        commit: prev.checksum.clone(),
        version: prev.meta.version.clone().unwrap_or_default(),
        inputhash: prev.meta.inputhash.clone().unwrap_or_default(),
        skipped: true,
        packages: prev.meta.packages.len(),
        layer_parent: inputs.parent.clone(),
        seconds: start.elapsed().as_secs_f64(),
        previous: Some(prev.checksum.clone()),
    }
}

/// What the package indexes were when a ref's commit was last found current: the cheap no-op
/// check's memory. It lives beside the repo, not in the commit, so that the commit holds only
/// what determines its content (a compose from a lockfile then gives the same checksum).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct IndexNote {
    commit: String,
    index_digest: String,
}

impl IndexNote {
    fn path(repo: &Path, ref_: &str) -> PathBuf {
        repo.join("cairn-index-state")
            .join(format!("{}.json", work_name(ref_)))
    }

    /// The note for `ref_`, if there is a readable one.
    pub(super) fn read(repo: &Path, ref_: &str) -> Option<Self> {
        let text = fs_err::read_to_string(Self::path(repo, ref_)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Best effort: losing it only costs the next no-op an apt resolution.
    pub(super) fn write(repo: &Path, ref_: &str, commit: &str, index_digest: &str) {
        let path = Self::path(repo, ref_);
        let note = Self {
            commit: commit.to_string(),
            index_digest: index_digest.to_string(),
        };
        let r = (|| -> Result<()> {
            if let Some(dir) = path.parent() {
                fs_err::create_dir_all(dir)?;
            }
            crate::base::tmp::write_atomic(&path, &serde_json::to_vec(&note)?)
        })();
        if let Err(e) = r {
            tracing::warn!(
                "could not record the index state in {}: {e:#}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::apt::IndexState;

    fn commit(treefile_digest: &str, inputhash: &str) -> store::Commit {
        store::Commit {
            checksum: "c1".into(),
            timestamp: 0,
            subject: String::new(),
            meta: store::CommitMeta {
                treefile_digest: Some(treefile_digest.into()),
                inputhash: Some(inputhash.into()),
                ..Default::default()
            },
        }
    }

    fn note(commit: &str, index_digest: &str) -> IndexNote {
        IndexNote {
            commit: commit.into(),
            index_digest: index_digest.into(),
        }
    }

    /// Inputs with treefile digest `t` and index digest `i`, on a ref at `previous`.
    fn inputs(previous: Option<store::Commit>, note: Option<IndexNote>) -> Inputs {
        Inputs {
            treefile_json: "{}".into(),
            treefile_digest: "t".into(),
            parent: None,
            sources: Vec::new(),
            index: IndexState {
                digest: "i".into(),
                newest_date: None,
            },
            epoch: 0,
            previous,
            note,
        }
    }

    fn unchanged(d: Decision) -> bool {
        matches!(d, Decision::Unchanged(c) if c.checksum == "c1")
    }

    #[test]
    fn same_treefile_and_indexes_as_the_ref_is_a_no_op() {
        let i = inputs(Some(commit("t", "h")), Some(note("c1", "i")));
        assert!(unchanged(decide(&i, false)));
        assert!(!unchanged(decide(&i, true)), "--force composes");
    }

    #[test]
    fn any_change_before_apt_composes() {
        let cases = [
            ("no commit on the ref", inputs(None, Some(note("c1", "i")))),
            (
                "another treefile",
                inputs(Some(commit("t2", "h")), Some(note("c1", "i"))),
            ),
            ("no note", inputs(Some(commit("t", "h")), None)),
            (
                "a note of another commit",
                inputs(Some(commit("t", "h")), Some(note("c0", "i"))),
            ),
            (
                "new indexes",
                inputs(Some(commit("t", "h")), Some(note("c1", "i2"))),
            ),
        ];
        for (what, i) in cases {
            assert!(matches!(decide(&i, false), Decision::Compose), "{what}");
        }
    }

    #[test]
    fn the_same_input_hash_is_a_no_op() {
        let i = inputs(Some(commit("t2", "h")), None);
        assert!(unchanged(decide_resolved(&i, "h", false)));
        assert!(matches!(
            decide_resolved(&i, "h2", false),
            Decision::Compose
        ));
        assert!(matches!(decide_resolved(&i, "h", true), Decision::Compose));
        let fresh = inputs(None, None);
        assert!(matches!(
            decide_resolved(&fresh, "h", false),
            Decision::Compose
        ));
    }
}
