//! The jobs that span stages: compose a manifest's treefile when its inputs changed, then build
//! the manifest's images from the commit. `cairn build`, `cairn vm-test --build` and later
//! rollouts call this; the command line only fills in [`BuildOpts`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::progress::Progress;
use crate::compose::{self, ComposeOpts};
use crate::image::{self, manifest, ImageOpts, ImageResult};
use crate::treefile;

/// Where things are, and what to build from.
#[derive(Debug, Clone)]
pub struct BuildOpts {
    pub repo: PathBuf,
    pub cache: PathBuf,
    /// Where images and their stream metadata go.
    pub out: PathBuf,
    /// A ref or commit to image instead of the one the manifest names.
    pub rev: Option<String>,
    /// Compose the manifest's treefile first (a no-op when its inputs did not change).
    pub compose: bool,
    /// The commit timestamp for a compose (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// The GPG home for a treefile's `gpg-key` (`None`: `$GNUPGHOME` or gpg's default).
    pub gpg_homedir: Option<PathBuf>,
}

/// Build the images the manifest at `manifest` describes.
pub fn build_images(manifest: &Path, o: &BuildOpts, progress: &Progress) -> Result<ImageResult> {
    let m = manifest::load(manifest)?;
    let rev = match (&o.rev, &m.source) {
        (Some(r), _) => r.clone(),
        (None, manifest::Source::Ref(r)) => r.clone(),
        (None, manifest::Source::Treefile(t)) => {
            let tf = treefile::load(t)?;
            if o.compose {
                let opts = ComposeOpts {
                    repo: o.repo.clone(),
                    cache: o.cache.clone(),
                    lockfile: None,
                    force: false,
                    source_date_epoch: o.source_date_epoch,
                    keep_failed: false,
                    tmpfs: true,
                    gpg_homedir: o.gpg_homedir.clone(),
                };
                compose::compose(&tf, &opts, progress)?;
            }
            tf.ref_
        }
    };
    let opts = ImageOpts {
        repo: o.repo.clone(),
        cache: o.cache.clone(),
        out: o.out.clone(),
    };
    image::build(&m, &rev, &opts, progress)
        .with_context(|| format!("building the images of {}", manifest.display()))
}

/// The artifact a VM boots: the qcow2, else the raw disk.
pub fn bootable_artifact(r: &ImageResult, manifest: &Path) -> Result<PathBuf> {
    ["qcow2", "raw"]
        .iter()
        .find_map(|f| r.artifacts.iter().find(|a| a.format == *f))
        .map(|a| a.path.clone())
        .with_context(|| {
            format!(
                "{}: builds no qcow2 or raw image to boot",
                manifest.display()
            )
        })
}
