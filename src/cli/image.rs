//! `cairn image` and `cairn build`: a commit (composed first, for `build`) → disk images.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{print_json, say, Paths};
use crate::base::progress::Progress;
use crate::pipeline::{self, BuildOpts};

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image manifest (e.g. manifests/qemu.toml).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub paths: Paths,
    /// Where the images and their stream metadata go.
    #[arg(long, default_value = "build/images")]
    pub out: PathBuf,
    /// Use this ref or commit instead of the one the manifest names.
    #[arg(long)]
    pub rev: Option<String>,
    /// Print the artifacts as JSON.
    #[arg(long)]
    pub json: bool,
    /// The GPG home for the treefile's `gpg-key` when `build` composes (default: $GNUPGHOME,
    /// else ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    pub gpg_homedir: Option<PathBuf>,
}

pub fn image(a: ImageArgs, compose: bool) -> Result<()> {
    let opts = BuildOpts {
        repo: a.paths.repo,
        cache: a.paths.cache,
        out: a.out,
        rev: a.rev,
        compose,
        source_date_epoch: crate::base::time::source_date_epoch()?,
        gpg_homedir: a.gpg_homedir,
    };
    let r = pipeline::build_images(&a.manifest, &opts, &Progress::new(a.json))?;
    if a.json {
        return print_json(&r);
    }
    for art in &r.artifacts {
        say(format_args!(
            "{} {} sha256:{} ({} bytes)",
            art.platform,
            art.path.display(),
            art.sha256,
            art.size
        ))?;
    }
    say(format_args!(
        "stream metadata: {}",
        r.stream_metadata.display()
    ))?;
    Ok(())
}
