//! `cairn node`: the commands of a host booted from a cairn image (the work is in
//! [`crate::node`]), and the hidden verbs its systemd units run.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{print_json, say};
use crate::node::{self, moves, Paths};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The deployments (booted, default, rollback: commit, version, ref, signature), the trial
    /// under way, the last automatic rollback and why, commits that failed their trial.
    Status(JsonArg),
    /// Pull the followed ref's newest signed commit (a static delta when there is one) and
    /// deploy it as the default, on trial.
    Upgrade(UpgradeArgs),
    /// Follow another ref: pull its newest signed commit and deploy it, on trial.
    Rebase(RebaseArgs),
    /// Make the other deployment the default (or cancel a trial that has not booted yet).
    Rollback(RollbackArgs),
    /// Update this node by itself: follow the ref's signed update graph, take leave from the
    /// strategy of /etc/cairn/agent.toml (a window, a lock slot), deploy, reboot, and give the
    /// slot back only after a healthy boot (cairn-agent.service).
    Agent(AgentArgs),
    /// Classify this boot (cairn-trial.service).
    #[command(hide = true)]
    BootClassify,
    /// The health verdict (cairn-health.service).
    #[command(hide = true)]
    HealthCheck,
    /// A healthy boot (cairn-boot-good.service).
    #[command(hide = true)]
    BootGood,
    /// An unhealthy boot (cairn-health-failed.service).
    #[command(hide = true)]
    HealthFailed,
    /// A trial boot past its deadline (cairn-trial-deadline.service).
    #[command(hide = true)]
    Deadline,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// One pass: stop at the first wait instead of sleeping.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON (the same document as /var/lib/cairn/status.json).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Reboot into the new deployment once it is the default.
    #[arg(long)]
    pub reboot: bool,
    /// Deploy a commit even though it failed its trial on this node before.
    #[arg(long)]
    pub allow_retry: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// The ref to follow (on the same remote), e.g. cairn/amd64/app-stable.
    #[arg(value_name = "REF")]
    pub ref_: String,
    #[command(flatten)]
    pub upgrade: UpgradeArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Reboot into the other deployment.
    #[arg(long)]
    pub reboot: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

fn opts(a: &UpgradeArgs) -> moves::MoveOpts {
    moves::MoveOpts {
        reboot: a.reboot,
        allow_retry: a.allow_retry,
    }
}

fn report(m: &moves::Moved, json: bool) -> Result<()> {
    if json {
        return print_json(m);
    }
    say(format_args!("{}", m.message))?;
    if m.bytes > 0 {
        say(format_args!(
            "pulled {} bytes{}",
            m.bytes,
            if m.delta_parts > 0 {
                format!(" ({} static delta parts)", m.delta_parts)
            } else {
                String::new()
            }
        ))?;
    }
    Ok(())
}

/// Run a `cairn node` command.
pub fn run(c: NodeCommand) -> Result<()> {
    let p = Paths::node();
    match c {
        NodeCommand::Status(a) => {
            let s = moves::status(&p)?;
            if a.json {
                print_json(&s)
            } else {
                say(format_args!("{}", moves::render(&s).trim_end()))
            }
        }
        NodeCommand::Upgrade(a) => report(&moves::upgrade(&p, opts(&a))?, a.json.json),
        NodeCommand::Rebase(a) => report(
            &moves::rebase(&p, &a.ref_, opts(&a.upgrade))?,
            a.upgrade.json.json,
        ),
        NodeCommand::Rollback(a) => report(&moves::rollback(&p, a.reboot)?, a.json.json),
        NodeCommand::Agent(a) => {
            node::updates::actor::run(&p, node::updates::actor::AgentOpts { once: a.once })
        }
        NodeCommand::BootClassify => node::agent::classify(&p),
        NodeCommand::HealthCheck => node::agent::health_check(&p),
        NodeCommand::BootGood => node::agent::boot_good(&p),
        NodeCommand::HealthFailed => node::agent::health_failed(&p),
        NodeCommand::Deadline => node::agent::deadline(&p),
    }
}
