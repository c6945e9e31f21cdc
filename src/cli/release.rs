//! `cairn key`, `sign`, `repo serve`, `promote`, `prune`, `retire`, `log`: the release commands,
//! flattened into the top-level command list.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{print_json, say};
use crate::release::sign::SignOpts;
use crate::release::{history, key, promote, prune, serve};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Release signing keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Sign a commit (a ref's, or one named by checksum) with the release key.
    Sign(SignArgs),
    /// Serve the repo.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Put a ref's commit on another ref (a new signed commit of the same tree).
    Promote(PromoteArgs),
    /// Keep the last N commits of every ref; remove the rest, their objects and deltas.
    Prune(PruneArgs),
    /// End a stream: a final commit telling its nodes which ref to move to.
    Retire(RetireArgs),
    /// What is on a ref and what happened to it: the audit log.
    Log(LogArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make an ed25519 (EdDSA) GPG signing key without a passphrase (for CI), in a GPG home.
    New(KeyNewArgs),
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Serve the archive repo over HTTP (read-only) until Ctrl-C.
    Serve(ServeArgs),
}

/// The repo a release command works on.
#[derive(Debug, Args)]
pub struct RepoPath {
    /// The OSTree repo (archive mode).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
}

/// What every command that signs takes: the repo, the key, `--json`.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    pub repo: RepoPath,
    #[command(flatten)]
    pub sign: SignOpts,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeyNewArgs {
    /// The GPG home to make the key in (created when missing), e.g. keys/.
    pub dir: PathBuf,
    /// The key's user id.
    #[arg(long, default_value = "cairn release key")]
    pub name: String,
    /// When the key expires (gpg's syntax: 2y, 18m, 2030-01-01, never).
    #[arg(long, default_value = "2y")]
    pub expire: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// A ref or commit checksum.
    pub rev: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub repo: RepoPath,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The ref whose commit is promoted (e.g. cairn/amd64/app-example).
    pub from: String,
    /// The ref it goes to (e.g. cairn/amd64/app-stable).
    pub to: String,
    /// Promote even when TO is not an ancestor-compatible stream of FROM.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Commits to keep on every ref, the one it points at included.
    #[arg(long, value_name = "N")]
    pub keep_last: u32,
    /// List what would be removed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The ref that ends.
    #[arg(value_name = "REF")]
    pub ref_: String,
    /// The ref its nodes move to on their next upgrade.
    #[arg(long, value_name = "NEW")]
    pub rebase_to: String,
    /// Why, for the nodes' operators.
    #[arg(long)]
    pub message: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Show this ref's commit and history (default: the whole log).
    #[arg(value_name = "REF")]
    pub ref_: Option<String>,
    #[command(flatten)]
    pub repo: RepoPath,
    /// The GPG home to check signatures with the release key (default: $GNUPGHOME, ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    pub gpg_homedir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Run a release command.
pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Key {
            command: KeyCommand::New(a),
        } => key_new(a),
        Command::Sign(a) => sign(a),
        Command::Repo {
            command: RepoCommand::Serve(a),
        } => serve::serve(&a.repo.repo, &a.listen, &|url| {
            let _ = say(format_args!("serving {} at {url}", a.repo.repo.display()));
        }),
        Command::Promote(a) => promote(a),
        Command::Prune(a) => prune(a),
        Command::Retire(a) => retire(a),
        Command::Log(a) => log(a),
    }
}

fn key_new(a: KeyNewArgs) -> Result<()> {
    let k = key::new_key(&a.dir, &a.name, &a.expire)?;
    if a.json {
        return print_json(&k);
    }
    say(format_args!("{}", key::advice(&k)))
}

fn promote(a: PromoteArgs) -> Result<()> {
    let m = promote::promote(&a.common.repo.repo, &a.from, &a.to, a.force, &a.common.sign)?;
    if a.common.json {
        return print_json(&m);
    }
    if m.unchanged {
        say(format_args!(
            "{} already has {}'s commit ({})",
            a.to, a.from, m.new
        ))
    } else {
        say(format_args!(
            "promoted {} to {}: {} (version {})",
            a.from,
            a.to,
            m.new,
            m.version.as_deref().unwrap_or("-")
        ))
    }
}

fn prune(a: PruneArgs) -> Result<()> {
    let r = prune::prune(&a.common.repo.repo, a.keep_last, a.dry_run, &a.common.sign)?;
    if a.common.json {
        return print_json(&r);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for x in &r.removed {
        say(format_args!(
            "{verb} {} {} ({})",
            x.ref_.as_deref().unwrap_or("(no ref)"),
            x.commit,
            x.version.as_deref().unwrap_or("-")
        ))?;
    }
    for d in &r.deltas {
        say(format_args!("{verb} static delta {d}"))?;
    }
    say(format_args!(
        "{verb} {} commits, {} deltas, {} objects ({} bytes)",
        r.removed.len(),
        r.deltas.len(),
        r.objects,
        r.bytes
    ))
}

fn retire(a: RetireArgs) -> Result<()> {
    let m = promote::retire(
        &a.common.repo.repo,
        &a.ref_,
        &a.rebase_to,
        &a.message,
        &a.common.sign,
    )?;
    if a.common.json {
        return print_json(&m);
    }
    say(format_args!(
        "retired {}: {} carries the end of life, nodes move to {}",
        a.ref_, m.new, a.rebase_to
    ))
}

fn log(a: LogArgs) -> Result<()> {
    let h = history::history(&a.repo.repo, a.ref_.as_deref(), a.gpg_homedir.as_deref())?;
    if a.json {
        return print_json(&h);
    }
    say(format_args!("{}", h.to_string().trim_end()))
}

fn sign(a: SignArgs) -> Result<()> {
    let out = crate::release::sign_rev(&a.common.repo.repo, &a.rev, &a.common.sign)?;
    if a.common.json {
        return print_json(&out);
    }
    let what = if out.already {
        "already signed by"
    } else {
        "signed with"
    };
    say(format_args!("{} {what} {}", out.commit, out.key))
}
