//! What a commit holds, for people and scanners: SBOMs ([`sbom`]) and package diffs ([`diff`]),
//! read from the commit's typed metadata.

pub mod diff;
pub mod license;
pub mod sbom;

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::store;

/// The SBOM of `rev` in `format`, rendered from the commit's metadata and naming the commit.
/// (The SPDX document stored in the commit at compose time cannot name its own commit; it is
/// otherwise the same.)
pub fn sbom_of(repo: &Path, rev: &str, format: sbom::Format) -> Result<Value> {
    let r = store::open(repo)?;
    let c = store::load_commit(&r, &store::resolve(&r, rev)?)?;
    let version = c.meta.version.clone().unwrap_or_default();
    let id = c
        .meta
        .inputhash
        .clone()
        .unwrap_or_else(|| c.checksum.clone());
    Ok(sbom::render(
        format,
        &sbom::Subject {
            ref_: rev,
            version: &version,
            id: &id,
            created: c.timestamp as i64,
            packages: &c.meta.packages,
            info: &c.meta.package_info,
            distro: c.meta.distro.as_ref(),
            commit: Some(&c.checksum),
        },
    ))
}

/// The packages added, removed and changed from `from` to `to` (refs or commits).
pub fn diff_of(repo: &Path, from: &str, to: &str) -> Result<diff::PackageDiff> {
    let r = store::open(repo)?;
    let a = store::load_commit(&r, &store::resolve(&r, from)?)?;
    let b = store::load_commit(&r, &store::resolve(&r, to)?)?;
    Ok(diff::diff(&a.meta.packages, &b.meta.packages))
}
