//! `cairn vm run` and `cairn vm-test`: booting images, and boot tests.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::{print_json, say, Paths};
use crate::base::progress::Progress;
use crate::base::units::{parse_duration, parse_size};
use crate::base::Firmware;
use crate::pipeline::{self, BuildOpts};
use crate::vm::{run::RunOpts, Accel};
use crate::vmtest;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot an image with its console on this terminal (quit with Ctrl-A x).
    Run(VmRunArgs),
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AccelArg {
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

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Uefi,
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// The disk image (qcow2 or raw).
    pub image: PathBuf,
    #[arg(long, value_enum, default_value = "bios")]
    pub firmware: FirmwareArg,
    /// Guest memory.
    #[arg(long, default_value = "2G")]
    pub memory: String,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Grow the VM's disk to this size (the image's own size by default).
    #[arg(long)]
    pub disk_size: Option<String>,
    /// SSH public key to provision for `ops` and root (default: ~/.ssh/id_ed25519.pub or
    /// ~/.ssh/id_rsa.pub when present).
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
    /// The hostname to provision.
    #[arg(long, default_value = "cairn-vm")]
    pub hostname: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Boot the image itself, keeping the changes, instead of a throwaway overlay.
    #[arg(long)]
    pub write: bool,
}

#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Test files or directories of tests (e.g. vm-tests/).
    #[arg(required = true)]
    pub tests: Vec<PathBuf>,
    /// The image to test.
    #[arg(long, required_unless_present = "build", conflicts_with = "build")]
    pub image: Option<PathBuf>,
    /// Build this image manifest first (compose included) and test its qcow2 or raw image.
    #[arg(long, value_name = "MANIFEST")]
    pub build: Option<PathBuf>,
    #[command(flatten)]
    pub paths: Paths,
    /// Where --build writes images.
    #[arg(long, default_value = "build/images")]
    pub images: PathBuf,
    /// Reports, and the console log, journal and output of every failed test.
    #[arg(long, default_value = "build/vm-tests")]
    pub out: PathBuf,
    /// VMs at a time (default: as many as cores and memory allow).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Run only tests with this tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Time from QEMU's start or a reboot to a settled system.
    #[arg(long, default_value = "10m")]
    pub boot_timeout: String,
    /// Do not serve the repo (--repo) to the tests as $CAIRN_REPO_URL.
    #[arg(long)]
    pub no_serve_repo: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn vm(c: VmCommand) -> Result<()> {
    match c {
        VmCommand::Run(a) => vm_run(a),
    }
}

fn size(flag: &str, s: &str) -> Result<u64> {
    parse_size(s).with_context(|| format!("{flag} {s:?}: not a size like 2G"))
}

fn vm_run(a: VmRunArgs) -> Result<()> {
    crate::vm::run::run_interactive(&RunOpts {
        image: a.image,
        firmware: match a.firmware {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        },
        memory_mib: size("--memory", &a.memory)? >> 20,
        cpus: a.cpus,
        disk_size: a
            .disk_size
            .as_deref()
            .map(|s| size("--disk-size", s))
            .transpose()?,
        ssh_key: a.ssh_key,
        hostname: a.hostname,
        accel: a.accel.choice(),
        write_image: a.write,
    })
}

pub fn vm_test(a: VmTestArgs) -> Result<()> {
    let boot_timeout = parse_duration(&a.boot_timeout).with_context(|| {
        format!(
            "--boot-timeout {:?}: not a duration like 10m",
            a.boot_timeout
        )
    })?;
    let image = match (&a.image, &a.build) {
        (Some(i), _) => i.clone(),
        (None, Some(m)) => {
            let opts = BuildOpts {
                repo: a.paths.repo.clone(),
                cache: a.paths.cache.clone(),
                out: a.images.clone(),
                rev: None,
                compose: true,
                source_date_epoch: crate::base::time::source_date_epoch()?,
                gpg_homedir: None,
            };
            let r = pipeline::build_images(m, &opts, &Progress::new(a.json))?;
            pipeline::bootable_artifact(&r, m)?
        }
        (None, None) => bail!("give --image or --build"),
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
            let _ = say(format_args!("{}", c.line()));
        }
    })?;
    if json {
        print_json(&report)?;
    } else {
        for b in &report.boots {
            say(format_args!("boot {}", b.line()))?;
        }
        say(format_args!("{}", report.summary()))?;
        say(format_args!("JUnit report: {}", report.junit.display()))?;
    }
    if report.failed > 0 {
        bail!("{} of {} tests failed", report.failed, report.cases.len());
    }
    Ok(())
}
