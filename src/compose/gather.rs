//! Stage one of a layer's compose: gather its inputs, before apt runs.
//!
//! [`Inputs`] is complete when [`gather`] returns it: the flattened treefile (as the JSON the
//! commit stores and the input hash starts from), the parent layer's commit, the apt sources,
//! the state of their package indexes, the `SOURCE_DATE_EPOCH` the tree is built with, the
//! commit the ref points at now and what the repo noted of the indexes when that commit was last
//! found current. The no-op decision ([`super::noop::decide`]) reads nothing else.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::apt::{self, IndexState, SourceFile};
use super::lockfile::Lockfile;
use super::noop::IndexNote;
use super::{ComposeOpts, COMPOSE_FORMAT};
use crate::base::digest::sha256_hex;
use crate::store;
use crate::treefile::Treefile;

/// What one layer's compose starts from.
#[derive(Debug)]
pub(super) struct Inputs {
    /// The flattened treefile with the compose format, the parent layer's commit and
    /// `SOURCE_DATE_EPOCH`, as JSON: the commit's `treefile` metadata.
    pub treefile_json: String,
    /// The SHA-256 of [`Self::treefile_json`].
    pub treefile_digest: String,
    /// For a layer: its parent layer's commit.
    pub parent: Option<String>,
    /// The apt sources: the treefile's `repos`, else the build host's.
    pub sources: Vec<SourceFile>,
    /// The package indexes now (from a lockfile: the lockfile's digest).
    pub index: IndexState,
    /// The timestamp of every file and of the commit.
    pub epoch: i64,
    /// The commit the ref points at now.
    pub previous: Option<store::Commit>,
    /// The index state the repo recorded beside the ref (see [`IndexNote`]).
    pub note: Option<IndexNote>,
}

/// Gather the inputs of `tf`, a layer on `parent` when it has one.
pub(super) fn gather(
    tf: &Treefile,
    opts: &ComposeOpts,
    lockfile: Option<&(PathBuf, Lockfile)>,
    parent: Option<String>,
) -> Result<Inputs> {
    let treefile_json = serde_json::to_string(&serde_json::json!({
        "format": COMPOSE_FORMAT,
        "treefile": tf.flattened()?,
        "layer-parent": parent,
        "source-date-epoch": opts.source_date_epoch,
    }))?;
    let sources = match tf.repos() {
        Some(r) => vec![apt::treefile_sources(&r)],
        None => apt::host_sources()?,
    };
    let index = match lockfile {
        Some((_, lf)) => IndexState {
            digest: sha256_hex(toml::to_string(lf)?.as_bytes()),
            newest_date: None,
        },
        None => apt::index_state(&apt::parse_sources(&sources))
            .context("checking the package indexes")?,
    };
    let previous = previous_commit(opts, &tf.ref_)?;
    let note = previous
        .as_ref()
        .and_then(|_| IndexNote::read(&opts.repo, &tf.ref_));
    Ok(Inputs {
        treefile_digest: sha256_hex(treefile_json.as_bytes()),
        treefile_json,
        parent,
        sources,
        epoch: epoch(lockfile.map(|(_, lf)| lf), &index, opts.source_date_epoch),
        index,
        previous,
        note,
    })
}

/// The commit `ref_` points at in the repo, if the repo and the ref exist.
fn previous_commit(opts: &ComposeOpts, ref_: &str) -> Result<Option<store::Commit>> {
    if !opts.repo.join("config").exists() {
        return Ok(None);
    }
    let r = store::open(&opts.repo)?;
    match store::resolve_opt(&r, ref_)? {
        Some(c) => Ok(Some(store::load_commit(&r, &c)?)),
        None => Ok(None),
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, else the lockfile's, else the newest `Date:` of the
/// package indexes (0 when none says).
fn epoch(lockfile: Option<&Lockfile>, index: &IndexState, from_env: Option<i64>) -> i64 {
    from_env.unwrap_or_else(|| match lockfile {
        Some(lf) => lf.source_date_epoch,
        None => index.newest_date.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_comes_from_the_environment_then_the_lockfile_then_the_indexes() {
        let index = IndexState {
            digest: "d".into(),
            newest_date: Some(300),
        };
        let lf = Lockfile {
            source_date_epoch: 200,
            packages: Vec::new(),
        };
        assert_eq!(epoch(Some(&lf), &index, Some(100)), 100);
        assert_eq!(epoch(Some(&lf), &index, None), 200);
        assert_eq!(epoch(None, &index, None), 300);
        let undated = IndexState {
            newest_date: None,
            ..index
        };
        assert_eq!(epoch(None, &undated, None), 0);
    }
}
