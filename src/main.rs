//! The `cairn` command line: parses, then calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use cairn::manifest::Firmware;
use cairn::vm::{self, Accel};
use cairn::{compose, diff, image, manifest, progress::Progress, repo, sbom, treefile, vmtest};

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
    /// Boot images under QEMU.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Boot-test an image: run the tests under vm-tests/ inside VMs of it.
    VmTest(VmTestArgs),
    #[command(flatten)]
    Release(cairn::release::cli::Command),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot an image with its console on this terminal (quit with Ctrl-A x).
    Run(VmRunArgs),
}

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    /// KVM when a probe guest runs under it, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl AccelArg {
    fn choice(self) -> Option<Accel> {
        match self {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FirmwareArg {
    Bios,
    Uefi,
}

#[derive(Args)]
struct VmRunArgs {
    /// The disk image (qcow2 or raw).
    image: PathBuf,
    #[arg(long, value_enum, default_value = "bios")]
    firmware: FirmwareArg,
    /// Guest memory.
    #[arg(long, default_value = "2G")]
    memory: String,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Grow the VM's disk to this size (the image's own size by default).
    #[arg(long)]
    disk_size: Option<String>,
    /// SSH public key to provision for `ops` and root (default: ~/.ssh/id_ed25519.pub or
    /// ~/.ssh/id_rsa.pub when present).
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// The hostname to provision.
    #[arg(long, default_value = "cairn-vm")]
    hostname: String,
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Boot the image itself, keeping the changes, instead of a throwaway overlay.
    #[arg(long)]
    write: bool,
}

#[derive(Args)]
struct VmTestArgs {
    /// Test files or directories of tests (e.g. vm-tests/).
    #[arg(required = true)]
    tests: Vec<PathBuf>,
    /// The image to test.
    #[arg(long, required_unless_present = "build", conflicts_with = "build")]
    image: Option<PathBuf>,
    /// Build this image manifest first (compose included) and test its qcow2 or raw image.
    #[arg(long, value_name = "MANIFEST")]
    build: Option<PathBuf>,
    #[command(flatten)]
    paths: Paths,
    /// Where --build writes images.
    #[arg(long, default_value = "build/images")]
    images: PathBuf,
    /// Reports, and the console log, journal and output of every failed test.
    #[arg(long, default_value = "build/vm-tests")]
    out: PathBuf,
    /// VMs at a time (default: as many as cores and memory allow).
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Run only tests with this tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Time from QEMU's start or a reboot to a settled system.
    #[arg(long, default_value = "10m")]
    boot_timeout: String,
    /// Do not serve the repo (--repo) to the tests as $CAIRN_REPO_URL.
    #[arg(long)]
    no_serve_repo: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the repo and cache are.
#[derive(Args, Clone)]
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
    /// The GPG home for a treefile's `gpg-key` (default: $GNUPGHOME, else ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    gpg_homedir: Option<PathBuf>,
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
        gpg_homedir: a.gpg_homedir,
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
    let progress = Progress::new(a.json);
    let r = build_images(&a, compose_first, &progress)?;
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

fn build_images(
    a: &ImageArgs,
    compose_first: bool,
    progress: &Progress,
) -> Result<image::ImageResult> {
    let m = manifest::load(&a.manifest)?;
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
                    gpg_homedir: None,
                };
                compose::compose(&tf, &opts, progress)?;
            }
            tf.ref_
        }
    };
    let opts = image::ImageOpts {
        repo: a.paths.repo.clone(),
        cache: a.paths.cache.clone(),
        out: a.out.clone(),
    };
    image::build(&m, &rev, &opts, progress)
        .with_context(|| format!("building the images of {}", a.manifest.display()))
}

fn public_key(path: Option<PathBuf>) -> Result<Vec<String>> {
    let path = match path {
        Some(p) => Some(p),
        None => std::env::var_os("HOME").and_then(|h| {
            ["id_ed25519.pub", "id_rsa.pub"]
                .iter()
                .map(|f| PathBuf::from(&h).join(".ssh").join(f))
                .find(|p| p.is_file())
        }),
    };
    match path {
        Some(p) => {
            let k = std::fs::read_to_string(&p)
                .with_context(|| format!("could not read the SSH key {}", p.display()))?;
            if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") {
                anyhow::bail!("{}: not an SSH public key", p.display());
            }
            Ok(vec![k.trim().to_string()])
        }
        None => {
            tracing::warn!("no SSH public key (--ssh-key): nobody can log in over SSH");
            Ok(Vec::new())
        }
    }
}

fn run_vm(a: VmRunArgs) -> Result<()> {
    let memory = manifest::parse_size(&a.memory)
        .with_context(|| format!("--memory {:?}: not a size like 2G", a.memory))?;
    let disk_size = a
        .disk_size
        .as_deref()
        .map(|s| manifest::parse_size(s).with_context(|| format!("--disk-size {s:?}: not a size")))
        .transpose()?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-vm-")
        .tempdir()
        .context("could not make a temporary directory")?;
    let info = vm::image_info(&a.image)?;
    let seed = dir.path().join("seed.img");
    vm::seed::write(
        &vm::seed::Provision {
            instance_id: format!("cairn-vm-{}", std::process::id()),
            hostname: a.hostname.clone(),
            ssh_keys: public_key(a.ssh_key)?,
        },
        dir.path(),
        &seed,
    )?;
    let spec = vm::Spec {
        image: a.image,
        info,
        firmware: match a.firmware {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        },
        memory_mib: memory >> 20,
        cpus: a.cpus,
        disk_size,
        seed: Some(seed),
        accel: a.accel.choice().unwrap_or_else(|| vm::accel(dir.path())),
        console: vm::Console::Terminal,
        write_image: a.write,
    };
    let status = vm::run_foreground(&spec, dir.path())?;
    if !status.success() {
        anyhow::bail!("QEMU ended with {status}");
    }
    Ok(())
}

fn run_vm_test(a: VmTestArgs) -> Result<()> {
    let boot_timeout = vmtest::header::parse_duration(&a.boot_timeout).with_context(|| {
        format!(
            "--boot-timeout {:?}: not a duration like 10m",
            a.boot_timeout
        )
    })?;
    let image = match (&a.image, &a.build) {
        (Some(i), _) => i.clone(),
        (None, Some(m)) => {
            let ia = ImageArgs {
                manifest: m.clone(),
                paths: a.paths.clone(),
                out: a.images.clone(),
                rev: None,
                json: a.json,
            };
            let r = build_images(&ia, true, &Progress::new(a.json))?;
            r.artifacts
                .iter()
                .find(|x| x.format == "qcow2" || x.format == "raw")
                .map(|x| x.path.clone())
                .with_context(|| format!("{}: builds no qcow2 or raw image to boot", m.display()))?
        }
        (None, None) => anyhow::bail!("give --image or --build"),
    };
    let serve = !a.no_serve_repo && a.paths.repo.join("config").is_file();
    let opts = vmtest::Options {
        image,
        tests: a.tests,
        out: a.out,
        jobs: a.jobs,
        accel: a.accel.choice(),
        repo: serve.then_some(a.paths.repo),
        boot_timeout,
        tags: a.tags,
    };
    let json = a.json;
    let report = vmtest::run(&opts, &|c| {
        if !json {
            println!("{}", c.line());
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &report.boots {
            println!(
                "boot {} ({}, {}): ready in {:.1} s",
                b.kind,
                b.firmware,
                b.accel.as_str(),
                b.seconds
            );
        }
        println!("{}", report.summary());
        println!("JUnit report: {}", report.junit.display());
    }
    if report.failed > 0 {
        anyhow::bail!("{} of {} tests failed", report.failed, report.cases.len());
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
        Command::Vm {
            command: VmCommand::Run(a),
        } => run_vm(a),
        Command::VmTest(a) => run_vm_test(a),
        Command::Release(c) => cairn::release::cli::run(c),
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
