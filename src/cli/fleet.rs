//! `cairn fleet up|down` and `cairn rollout start|status|pause|resume|abort`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{print_json, say};
use crate::base::text::short_hash;
use crate::fleet::control::Control;
use crate::fleet::manifest::Strategy;
use crate::fleet::ops::{self, Paths, StartOpts};
use crate::fleet::state::{Node, Phase, Rollout};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Boot the fleet's nodes (qemu provider) and start HAProxy in front of them.
    Up(FleetArgs),
    /// Stop the fleet's HAProxy and its VMs.
    Down(FleetArgs),
    /// Power a stopped node of a qemu fleet on again, on its own disk (as a cloud starts a
    /// stopped machine); waits until it answers SSH.
    Start(StartNodeArgs),
    /// Send requests through the fleet's load balancer until interrupted (or `--for` passes)
    /// and count every failure: a smoke load to watch a rollout by.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
pub struct StartNodeArgs {
    /// The fleet manifest.
    pub manifest: PathBuf,
    /// The node, by the name `cairn fleet up` printed.
    pub node: String,
    #[command(flatten)]
    pub paths: FleetPaths,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The fleet manifest (its `load-balancer.listen` and `service.health-path`).
    pub manifest: PathBuf,
    /// Stop after this long (e.g. "90s", "10m"); default: until SIGINT or SIGTERM.
    #[arg(long = "for", value_parser = duration)]
    pub duration: Option<Duration>,
    /// Concurrent workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Pause between one worker's requests, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// A request slower than this fails as a timeout.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Move the fleet to a ref's commit, a batch at a time (resumes an unfinished rollout to
    /// the same ref).
    Start(StartArgs),
    /// The rollout's state: per node its step, version and load-balancer state; the policy.
    Status(StatusArgs),
    /// Stop after the current batch; with `--ref`, freeze a pull-mode wave where it is.
    Pause(WaveControlArgs),
    /// Continue a paused or interrupted rollout; with `--ref`, let a frozen wave move on.
    Resume(WaveControlArgs),
    /// Stop between two steps; nothing more is touched.
    Abort(OptFleetArgs),
    /// Pull mode: release a commit of REF to its nodes, on a wave from --start over --duration
    /// (the ref's signed update graph, served beside the repo).
    Plan(super::wave::PlanArgs),
    /// Pull mode: nodes below this release go to it before any newer one.
    Barrier(super::wave::MarkArgs),
    /// Pull mode: nodes on this release stay (told why at login); it is no target.
    Deadend(super::wave::MarkArgs),
    /// Pull mode: nodes on this release go back to the good one named by --to, through the lock.
    Recall(super::wave::RecallArgs),
}

#[derive(Debug, Args)]
pub struct WaveControlArgs {
    #[command(flatten)]
    pub fleet: OptFleetArgs,
    #[command(flatten)]
    pub wave: super::wave::WaveArgs,
}

/// Where fleets, the repo and images are.
#[derive(Debug, Args, Clone)]
pub struct FleetPaths {
    /// Where fleets keep their state (one directory each).
    #[arg(long, default_value = "build/fleets")]
    pub fleets: PathBuf,
    /// The repo the nodes pull from (served while a rollout runs when the manifest says so).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// Where images and stream metadata are (the qemu provider boots the newest).
    #[arg(long, default_value = "build/images")]
    pub images: PathBuf,
}

impl FleetPaths {
    fn paths(&self) -> Paths {
        Paths {
            fleets: self.fleets.clone(),
            repo: self.repo.clone(),
            images: self.images.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The fleet manifest (e.g. manifests/fleet-example.toml).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub paths: FleetPaths,
}

#[derive(Debug, Args)]
pub struct OptFleetArgs {
    /// The fleet manifest (default: the one fleet that is up).
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub paths: FleetPaths,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The fleet manifest.
    pub manifest: PathBuf,
    /// The ref whose commit the nodes move to.
    #[arg(long)]
    pub to: String,
    /// Overrides the manifest's `policy.strategy`.
    #[arg(long, value_parser = ["in-place", "replace"])]
    pub strategy: Option<String>,
    #[command(flatten)]
    pub paths: FleetPaths,
    /// Print the final state as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The fleet manifest (default: the one fleet that is up).
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub paths: FleetPaths,
    #[arg(long)]
    pub json: bool,
    /// Print it again every 2 seconds until the rollout ends.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub pull: super::wave::PullStatusArgs,
}

pub fn fleet(c: FleetCommand) -> Result<()> {
    match c {
        FleetCommand::Up(a) => {
            let rec = ops::up(&a.manifest, &a.paths.paths())?;
            for n in &rec.nodes {
                say(format_args!(
                    "{} ssh -p {} root@{} service {}",
                    n.name, n.ssh.port, n.ssh.host, n.service
                ))?;
            }
            Ok(())
        }
        FleetCommand::Down(a) => ops::down(&a.manifest, &a.paths.paths()),
        FleetCommand::Start(a) => {
            let n = ops::power_on(&a.manifest, &a.paths.paths(), &a.node)?;
            say(format_args!(
                "{} ssh -p {} root@{} service {}",
                n.name, n.ssh.port, n.ssh.host, n.service
            ))
        }
        FleetCommand::Load(a) => load(a),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::base::units::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like \"90s\", \"10m\" or \"1h\""))
}

fn load(a: LoadArgs) -> Result<()> {
    let f = crate::fleet::manifest::load(&a.manifest)?;
    let url = format!("http://{}{}", f.listen, f.service.health_path);
    let load = crate::fleet::load::Load::start(&crate::fleet::load::LoadOpts {
        url: url.clone(),
        workers: a.workers.max(1),
        interval: Duration::from_millis(a.interval_ms),
        timeout: a.timeout,
    });
    let end = a.duration.map(|d| std::time::Instant::now() + d);
    tracing::info!("loading {url} ({} workers)", a.workers.max(1));
    while !crate::base::interrupt::requested() && end.is_none_or(|e| std::time::Instant::now() < e)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = load.stop();
    if a.json {
        print_json(&r)?;
    } else {
        say(format_args!(
            "{} requests, {} failed {:?} in {:.0} s; by page: {:?}",
            r.requests, r.failed, r.failures, r.seconds, r.bodies
        ))?;
        for e in &r.examples {
            say(format_args!("  {e}"))?;
        }
    }
    if r.failed > 0 {
        anyhow::bail!(
            "{} of {} requests through {url} failed",
            r.failed,
            r.requests
        );
    }
    Ok(())
}

fn manifest(m: Option<PathBuf>, p: &Paths) -> Result<PathBuf> {
    match m {
        Some(m) => Ok(m),
        None => ops::current_manifest(p),
    }
}

/// One line per node step; a bar of the nodes done on a terminal.
fn progress(quiet: bool) -> impl Fn(&Rollout, &Node) + Sync {
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} nodes done {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    move |r: &Rollout, n: &Node| {
        let line = format!(
            "{}: {} ({} {})",
            n.name,
            n.step.word(),
            n.version,
            short_hash(&n.commit)
        );
        match &bar {
            Some(b) => {
                b.set_length(r.nodes.len() as u64);
                b.set_position(r.done() as u64);
                b.println(line);
            }
            None => tracing::info!("{line}"),
        }
    }
}

pub fn rollout(c: RolloutCommand) -> Result<()> {
    match c {
        RolloutCommand::Start(a) => {
            let strategy = a.strategy.as_deref().and_then(Strategy::parse);
            let o = StartOpts {
                to_ref: a.to.clone(),
                strategy,
                command: format!("cairn rollout start {} --to {}", a.manifest.display(), a.to),
            };
            let r = ops::start(&a.manifest, &a.paths.paths(), &o, &progress(a.json))?;
            report(&r, a.json)
        }
        RolloutCommand::Resume(WaveControlArgs { wave, fleet }) if wave.ref_.is_some() => {
            super::wave::wave(&fleet.paths.repo, wave, false)
        }
        RolloutCommand::Pause(WaveControlArgs { wave, fleet }) if wave.ref_.is_some() => {
            super::wave::wave(&fleet.paths.repo, wave, true)
        }
        RolloutCommand::Plan(a) => super::wave::plan(a),
        RolloutCommand::Barrier(a) => super::wave::barrier(a),
        RolloutCommand::Deadend(a) => super::wave::deadend(a),
        RolloutCommand::Recall(a) => super::wave::recall(a),
        RolloutCommand::Status(a) if a.pull.ref_.is_some() => {
            super::wave::status(&a.paths.repo, &a.pull, a.json)
        }
        RolloutCommand::Resume(WaveControlArgs { fleet: a, .. }) => {
            let p = a.paths.paths();
            let m = manifest(a.manifest, &p)?;
            let r = ops::resume(
                &m,
                &p,
                &format!("cairn rollout resume {}", m.display()),
                &progress(false),
            )?;
            report(&r, false)
        }
        RolloutCommand::Pause(WaveControlArgs { fleet: a, .. }) => {
            let p = a.paths.paths();
            ops::signal(&manifest(a.manifest, &p)?, &p, Control::Pause)
        }
        RolloutCommand::Abort(a) => {
            let p = a.paths.paths();
            ops::signal(&manifest(a.manifest, &p)?, &p, Control::Abort)
        }
        RolloutCommand::Status(a) => {
            let p = a.paths.paths();
            let m = manifest(a.manifest, &p)?;
            loop {
                let s = crate::fleet::status::status(&m, &p)?;
                if a.json {
                    print_json(&s)?;
                } else {
                    say(format_args!("{s}"))?;
                }
                let over = s.rollout.as_ref().is_none_or(|r| r.finished());
                if !a.watch || over {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(2));
                crate::base::interrupt::check()?;
            }
        }
    }
}

/// The end of a rollout: the state, and an error when it did not finish.
fn report(r: &Rollout, json: bool) -> Result<()> {
    if json {
        print_json(r)?;
    } else {
        for n in &r.nodes {
            say(format_args!("{} {} {}", n.name, n.step.word(), n.version))?;
        }
        say(format_args!(
            "{:?}{}",
            r.phase,
            r.reason
                .as_ref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ))?;
    }
    match r.phase {
        Phase::Done | Phase::Paused => Ok(()),
        _ => anyhow::bail!(
            "the rollout of {} to {} {:?}: {}",
            r.fleet,
            r.to_ref,
            r.phase,
            r.reason.as_deref().unwrap_or("")
        ),
    }
}
