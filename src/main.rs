//! The `cairn` command line: parses, then calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use cairn::{compose, diff, image, manifest, progress::Progress, repo, sbom, treefile};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Compose, image and boot-test OSTree hosts built from Debian packages"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compose a treefile into an OSTree commit on its ref.
    Compose(ComposeArgs),
    /// Show packages added, removed and changed between two refs or commits.
    Diff(DiffArgs),
    /// Print the SBOM of a ref or commit.
    Sbom(SbomArgs),
    /// Build the disk images an image manifest describes, from a composed commit.
    Image(ImageArgs),
    /// Compose the manifest's treefile (when it changed), then build its images.
    Build(ImageArgs),
}

/// Where the repo and cache are.
#[derive(Args)]
struct Paths {
    /// The OSTree repo (archive mode; created on first compose).
    #[arg(long, default_value = "build/repo")]
    repo: PathBuf,
    /// The package cache.
    #[arg(long, default_value = "build/cache")]
    cache: PathBuf,
}

#[derive(Args)]
struct ComposeArgs {
    /// The treefile to compose.
    treefile: PathBuf,
    #[command(flatten)]
    paths: Paths,
    /// Install exactly the packages this lockfile pins.
    #[arg(long)]
    lockfile: Option<PathBuf>,
    /// Write a lockfile of the composed commit's packages here.
    #[arg(long)]
    write_lockfile: Option<PathBuf>,
    /// Compose even when the inputs did not change.
    #[arg(long)]
    force: bool,
    /// Keep the work tree of a failed compose (under the cache's tmp/).
    #[arg(long)]
    keep_failed: bool,
    /// Build on disk under the cache even when there is memory for a tmpfs.
    #[arg(long)]
    no_tmpfs: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DiffArgs {
    from: String,
    to: String,
    #[command(flatten)]
    paths: Paths,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SbomArgs {
    /// A ref or commit.
    rev: String,
    #[command(flatten)]
    paths: Paths,
    #[arg(long, value_enum, default_value = "spdx")]
    format: sbom::Format,
}

#[derive(Args)]
struct ImageArgs {
    /// The image manifest (e.g. manifests/qemu.toml).
    manifest: PathBuf,
    #[command(flatten)]
    paths: Paths,
    /// Where the images and their stream metadata go.
    #[arg(long, default_value = "build/images")]
    out: PathBuf,
    /// Use this ref or commit instead of the one the manifest names.
    #[arg(long)]
    rev: Option<String>,
    /// Print the artifacts as JSON.
    #[arg(long)]
    json: bool,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn run_compose(a: ComposeArgs) -> Result<()> {
    let tf = treefile::load(&a.treefile)?;
    let epoch = source_date_epoch()?;
    let opts = compose::ComposeOpts {
        repo: a.paths.repo,
        cache: a.paths.cache,
        lockfile: a.lockfile,
        force: a.force,
        source_date_epoch: epoch,
        keep_failed: a.keep_failed,
        tmpfs: !a.no_tmpfs,
    };
    let progress = Progress::new(a.json);
    let results = compose::compose(&tf, &opts, &progress)?;
    let last = results
        .last()
        .context("internal: compose returned nothing")?;
    if let Some(path) = &a.write_lockfile {
        compose::lockfile_for(&opts.repo, &last.commit)?.write(path)?;
        tracing::info!("wrote lockfile {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let what = if r.skipped { "unchanged" } else { "composed" };
            println!(
                "{} {} {} ({} packages) {what} in {:.1} s",
                r.ref_, r.version, r.commit, r.packages, r.seconds
            );
        }
    }
    Ok(())
}

fn run_image(a: ImageArgs, compose_first: bool) -> Result<()> {
    let m = manifest::load(&a.manifest)?;
    let progress = Progress::new(a.json);
    let rev = match (&a.rev, &m.source) {
        (Some(r), _) => r.clone(),
        (None, manifest::Source::Ref(r)) => r.clone(),
        (None, manifest::Source::Treefile(t)) => {
            let tf = treefile::load(t)?;
            if compose_first {
                let opts = compose::ComposeOpts {
                    repo: a.paths.repo.clone(),
                    cache: a.paths.cache.clone(),
                    lockfile: None,
                    force: false,
                    source_date_epoch: source_date_epoch()?,
                    keep_failed: false,
                    tmpfs: true,
                };
                compose::compose(&tf, &opts, &progress)?;
            }
            tf.ref_
        }
    };
    let opts = image::ImageOpts {
        repo: a.paths.repo,
        cache: a.paths.cache,
        out: a.out,
    };
    let r = image::build(&m, &rev, &opts, &progress)
        .with_context(|| format!("building the images of {}", a.manifest.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for art in &r.artifacts {
            println!(
                "{} {} sha256:{} ({} bytes)",
                art.platform,
                art.path.display(),
                art.sha256,
                art.size
            );
        }
        println!("stream metadata: {}", r.stream_metadata.display());
    }
    Ok(())
}

fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(
            v.trim()
                .parse::<i64>()
                .context("SOURCE_DATE_EPOCH is not a number")?,
        )),
        Err(_) => Ok(None),
    }
}

fn run_diff(a: DiffArgs) -> Result<()> {
    let r = repo::open(&a.paths.repo)?;
    let from = repo::commit_info(&r, &repo::resolve(&r, &a.from)?)?;
    let to = repo::commit_info(&r, &repo::resolve(&r, &a.to)?)?;
    let d = diff::diff(&from.packages(), &to.packages());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("{d}");
    }
    Ok(())
}

fn run_sbom(a: SbomArgs) -> Result<()> {
    let r = repo::open(&a.paths.repo)?;
    let info = repo::commit_info(&r, &repo::resolve(&r, &a.rev)?)?;
    let doc = match (a.format, info.string(repo::keys::SBOM)) {
        (sbom::Format::Spdx, Some(stored)) => serde_json::from_str(&stored).with_context(|| {
            format!("the SBOM stored with commit {} is not JSON", info.checksum)
        })?,
        (format, _) => {
            let pkgs = info.packages();
            let version = info.version().unwrap_or_default();
            let id = info
                .string(repo::keys::INPUTHASH)
                .unwrap_or_else(|| info.checksum.clone());
            sbom::render(
                format,
                &sbom::Subject {
                    ref_: &a.rev,
                    version: &version,
                    id: &id,
                    created: info.timestamp as i64,
                    packages: &pkgs,
                },
            )
        }
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let verbose = cli.verbose;
    if let Err(e) = cairn::interrupt::install() {
        eprintln!("error: cannot catch signals: {e:#}");
        return ExitCode::FAILURE;
    }
    let r = match cli.command {
        Command::Compose(a) => run_compose(a),
        Command::Diff(a) => run_diff(a),
        Command::Sbom(a) => run_sbom(a),
        Command::Image(a) => run_image(a, false),
        Command::Build(a) => run_image(a, true),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if verbose > 0 {
                // The whole chain, with a backtrace when RUST_BACKTRACE=1.
                eprintln!("{e:?}");
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
