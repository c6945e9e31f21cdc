//! `cairn compose`, `cairn diff`, `cairn sbom`: making commits and describing them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{print_json, say, Paths};
use crate::base::progress::Progress;
use crate::{compose as comp, describe, treefile};

#[derive(Debug, Args)]
pub struct ComposeArgs {
    /// The treefile to compose.
    pub treefile: PathBuf,
    #[command(flatten)]
    pub paths: Paths,
    /// Install exactly the packages this lockfile pins.
    #[arg(long)]
    pub lockfile: Option<PathBuf>,
    /// Write a lockfile of the composed commit's packages here.
    #[arg(long)]
    pub write_lockfile: Option<PathBuf>,
    /// Compose even when the inputs did not change.
    #[arg(long)]
    pub force: bool,
    /// Keep the work tree of a failed compose (under the cache's tmp/).
    #[arg(long)]
    pub keep_failed: bool,
    /// Build on disk under the cache even when there is memory for a tmpfs.
    #[arg(long)]
    pub no_tmpfs: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The GPG home for a treefile's `gpg-key` (default: $GNUPGHOME, else ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    pub gpg_homedir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A ref or commit.
    pub from: String,
    /// A ref or commit.
    pub to: String,
    #[command(flatten)]
    pub paths: Paths,
    /// Print the difference as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SbomArgs {
    /// A ref or commit.
    pub rev: String,
    #[command(flatten)]
    pub paths: Paths,
    #[arg(long, value_enum, default_value = "spdx")]
    pub format: describe::sbom::Format,
}

pub fn compose(a: ComposeArgs) -> Result<()> {
    let tf = treefile::load(&a.treefile)?;
    let opts = comp::ComposeOpts {
        repo: a.paths.repo,
        cache: a.paths.cache,
        lockfile: a.lockfile,
        force: a.force,
        source_date_epoch: crate::base::time::source_date_epoch()?,
        keep_failed: a.keep_failed,
        tmpfs: !a.no_tmpfs,
        gpg_homedir: a.gpg_homedir,
    };
    let results = comp::compose(&tf, &opts, &Progress::new(a.json))?;
    let last = results
        .last()
        .context("internal: compose returned nothing")?;
    if let Some(path) = &a.write_lockfile {
        comp::lockfile_for(&opts.repo, &last.commit)?.write(path)?;
        tracing::info!("wrote lockfile {}", path.display());
    }
    if a.json {
        return print_json(&results);
    }
    for r in &results {
        let what = if r.skipped { "unchanged" } else { "composed" };
        say(format_args!(
            "{} {} {} ({} packages) {what} in {:.1} s",
            r.ref_, r.version, r.commit, r.packages, r.seconds
        ))?;
    }
    Ok(())
}

pub fn diff(a: DiffArgs) -> Result<()> {
    let d = describe::diff_of(&a.paths.repo, &a.from, &a.to)?;
    if a.json {
        return print_json(&d);
    }
    say(format_args!("{d}"))?;
    Ok(())
}

pub fn sbom(a: SbomArgs) -> Result<()> {
    print_json(&describe::sbom_of(&a.paths.repo, &a.rev, a.format)?)
}
