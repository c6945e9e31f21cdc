//! The `cairn` command line: parses, then calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use cairn::{compose, diff, progress::Progress, repo, sbom, treefile};

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
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.trim()
                .parse::<i64>()
                .context("SOURCE_DATE_EPOCH is not a number")?,
        ),
        Err(_) => None,
    };
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
