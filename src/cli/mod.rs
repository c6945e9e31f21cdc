//! The command line: clap types (one enum per command level, one options struct per verb) and
//! the dispatch into the library. Each command group has its file: [`compose`] (compose, diff,
//! sbom), [`image`] (image, build), [`vm`] (vm run, vm-test), [`node`] (the node's own commands),
//! [`release`] (key, sign, repo serve, promote, prune, retire, log).

pub mod compose;
pub mod docs;
pub mod fleet;
pub mod image;
pub mod lock;
pub mod node;
pub mod release;
pub mod vm;
pub mod wave;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// cairn: compose, image and boot-test OSTree hosts built from Debian packages.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Compose, image and boot-test OSTree hosts built from Debian packages"
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compose a treefile into an OSTree commit on its ref.
    Compose(compose::ComposeArgs),
    /// Show packages added, removed and changed between two refs or commits.
    Diff(compose::DiffArgs),
    /// Print the SBOM of a ref or commit.
    Sbom(compose::SbomArgs),
    /// Build the disk images an image manifest describes, from a composed commit.
    Image(image::ImageArgs),
    /// Compose the manifest's treefile (when it changed), then build its images.
    Build(image::ImageArgs),
    /// Boot images under QEMU.
    Vm {
        #[command(subcommand)]
        command: vm::VmCommand,
    },
    /// Boot-test an image: run the tests under vm-tests/ inside VMs of it.
    VmTest(vm::VmTestArgs),
    /// On a host booted from a cairn image: status, upgrade, rebase, rollback.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// Bring a fleet of nodes up or down (the qemu provider's VMs, and HAProxy).
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Roll a commit across a fleet, a batch at a time, behind its load balancer.
    Rollout {
        #[command(subcommand)]
        command: fleet::RolloutCommand,
    },
    /// A FleetLock reboot-slot service for pull-mode fleets, and its operator's commands.
    Lock {
        #[command(subcommand)]
        command: lock::LockCommand,
    },
    /// Print a shell completion script (bash, zsh, fish).
    Completions(docs::CompletionsArgs),
    /// Write man pages for cairn and every command.
    Man(docs::ManArgs),
    #[command(flatten)]
    Release(release::Command),
}

/// Where the repo and cache are.
#[derive(Debug, Args, Clone)]
pub struct Paths {
    /// The OSTree repo (archive mode; created on first compose).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// The package cache.
    #[arg(long, default_value = "build/cache")]
    pub cache: PathBuf,
}

/// Run a parsed command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Compose(a) => compose::compose(a),
        Command::Diff(a) => compose::diff(a),
        Command::Sbom(a) => compose::sbom(a),
        Command::Image(a) => image::image(a, false),
        Command::Build(a) => image::image(a, true),
        Command::Vm { command } => vm::vm(command),
        Command::VmTest(a) => vm::vm_test(a),
        Command::Node { command } => node::run(command),
        Command::Fleet { command } => fleet::fleet(command),
        Command::Rollout { command } => fleet::rollout(command),
        Command::Lock { command } => lock::run(command),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::Release(c) => release::run(c),
    }
}

/// Print `v` as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    say(format_args!("{}", serde_json::to_string_pretty(v)?))
}

/// Print a line on stdout. A reader that went away (`cairn … | head`) gives an error the binary
/// ends quietly on ([`is_closed_stdout`]), not a panic.
pub(crate) fn say(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{args}").context("writing to stdout")
}

/// Is this error a closed stdout (a reader such as `head` that stopped reading)?
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
    }

    #[test]
    fn the_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn compose_takes_the_defaults_and_flags() {
        let c = parse(&["compose", "treefiles/base.toml"]).unwrap();
        let Command::Compose(a) = c.command else {
            panic!("not compose")
        };
        assert_eq!(a.treefile, PathBuf::from("treefiles/base.toml"));
        assert_eq!(a.paths.repo, PathBuf::from("build/repo"));
        assert_eq!(a.paths.cache, PathBuf::from("build/cache"));
        assert!(!a.force && !a.json);
        let c = parse(&[
            "-vv",
            "compose",
            "t.toml",
            "--repo",
            "/r",
            "--force",
            "--json",
            "--lockfile",
            "l.toml",
        ])
        .unwrap();
        assert_eq!(c.verbose, 2);
        let Command::Compose(a) = c.command else {
            panic!("not compose")
        };
        assert_eq!(a.paths.repo, PathBuf::from("/r"));
        assert!(a.force && a.json);
        assert_eq!(a.lockfile, Some(PathBuf::from("l.toml")));
    }

    #[test]
    fn image_and_build_share_their_options() {
        for verb in ["image", "build"] {
            let c = parse(&[verb, "manifests/qemu.toml", "--out", "o", "--rev", "x"]).unwrap();
            let (Command::Image(a) | Command::Build(a)) = c.command else {
                panic!("{verb}")
            };
            assert_eq!(a.out, PathBuf::from("o"));
            assert_eq!(a.rev.as_deref(), Some("x"));
        }
        assert!(parse(&["build"]).is_err(), "a manifest is required");
    }

    #[test]
    fn vm_commands() {
        let c = parse(&[
            "vm",
            "run",
            "a.qcow2",
            "--firmware",
            "uefi",
            "--accel",
            "tcg",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Vm {
                command: vm::VmCommand::Run(_)
            }
        ));
        assert!(parse(&["vm", "run", "a.qcow2", "--firmware", "coreboot"]).is_err());
        let c = parse(&[
            "vm-test",
            "--image",
            "a.qcow2",
            "vm-tests/",
            "--tag",
            "basic",
        ])
        .unwrap();
        let Command::VmTest(a) = c.command else {
            panic!("not vm-test")
        };
        assert_eq!(a.tags, vec!["basic".to_string()]);
        // One of --image and --build, not both, and at least one test path.
        assert!(parse(&["vm-test", "vm-tests/"]).is_err());
        assert!(parse(&["vm-test", "--image", "a", "--build", "m.toml", "t"]).is_err());
        assert!(parse(&["vm-test", "--image", "a"]).is_err());
    }

    #[test]
    fn completions_for_each_shell() {
        for shell in ["bash", "zsh", "fish"] {
            assert!(parse(&["completions", shell]).is_ok(), "{shell}");
        }
        assert!(parse(&["completions", "tcsh"]).is_err());
    }

    #[test]
    fn describe_commands() {
        assert!(parse(&["diff", "a", "b", "--json"]).is_ok());
        assert!(parse(&["sbom", "a", "--format", "cyclonedx"]).is_ok());
        assert!(parse(&["sbom", "a", "--format", "xml"]).is_err());
    }

    #[test]
    fn fleet_commands() {
        let c = parse(&["fleet", "load", "f.toml", "--for", "90s", "--json"]).unwrap();
        let Command::Fleet {
            command: fleet::FleetCommand::Load(a),
        } = c.command
        else {
            panic!("not fleet load")
        };
        assert_eq!(a.duration, Some(std::time::Duration::from_secs(90)));
        assert_eq!((a.workers, a.interval_ms, a.json), (2, 100, true));
        assert!(parse(&["fleet", "load", "f.toml", "--for", "soon"]).is_err());
        for (strategy, valid) in [("in-place", true), ("replace", true), ("blue", false)] {
            let args = [
                "rollout",
                "start",
                "f.toml",
                "--to",
                "r",
                "--strategy",
                strategy,
            ];
            assert_eq!(parse(&args).is_ok(), valid, "{strategy}");
        }
        assert!(
            parse(&["rollout", "start", "f.toml"]).is_err(),
            "--to is required"
        );
        assert!(parse(&["rollout", "status", "--json", "--watch"]).is_ok());
    }
}
