//! `cairn lock`: serve FleetLock (`serve`), and the operator's commands against a running
//! service (`status`, `release`, `halt`, `clear`), plus the credentials (`secret`, `token`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::{print_json, say};
use crate::base::time::rfc3339;
use crate::lock::api::Status;
use crate::lock::auth::{Principal, Secret};
use crate::lock::client::Client;
use crate::lock::{config, service};

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Serve FleetLock v1 (Zincati's `fleet_lock` strategy) on HTTP, on etcd or the embedded store.
    Serve(ServeArgs),
    /// Every group's slots, holders (since, last renewal, expiry) and halt.
    Status(StatusArgs),
    /// Free a node's slot (audited).
    Release(ReleaseArgs),
    /// Halt a group: it grants nothing until it is cleared (audited).
    Halt(HaltArgs),
    /// Lift a group's halt (audited).
    Clear(ClearArgs),
    /// Make a new secret file for the service (never overwrites one).
    Secret(SecretArgs),
    /// Print the token of a node or an operator, derived from the service's secret.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service's configuration.
    #[arg(long, default_value = "/etc/cairn/lock.toml")]
    pub config: PathBuf,
}

/// How the operator's commands reach the service.
#[derive(Debug, Args)]
pub struct Conn {
    /// The service's base URL.
    #[arg(long, env = "CAIRN_LOCK_URL", default_value = "http://127.0.0.1:3333")]
    pub url: String,
    /// A file holding the operator's token (`cairn lock token operator NAME`); or set
    /// CAIRN_LOCK_TOKEN.
    #[arg(long, env = "CAIRN_LOCK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl Conn {
    pub(super) fn client(&self) -> Result<Client> {
        let token = match &self.token_file {
            Some(p) => Some(
                fs_err::read_to_string(p)
                    .context("reading the operator's token")?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("CAIRN_LOCK_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        Ok(Client::new(&self.url, token))
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    pub group: String,
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct HaltArgs {
    pub group: String,
    /// Why (shown to every node the group refuses).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    pub group: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Where to write it (mode 0600).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenKind {
    Node,
    Operator,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Whose token.
    pub kind: TokenKind,
    /// The node's FleetLock id, or the operator's name.
    pub name: String,
    /// The service's configuration (its `auth.secret-file`).
    #[arg(long, default_value = "/etc/cairn/lock.toml")]
    pub config: PathBuf,
}

pub fn run(command: LockCommand) -> Result<()> {
    match command {
        LockCommand::Serve(a) => service::serve(&a.config),
        LockCommand::Status(a) => {
            let s = a.conn.client()?.status()?;
            if a.json {
                print_json(&s)
            } else {
                print_status(&s)
            }
        }
        LockCommand::Release(a) => {
            let r = a.conn.client()?.release(&a.group, &a.id)?;
            match r.fencing_token {
                Some(t) => say(format_args!(
                    "released {} in group {} (grant {t})",
                    r.id, r.group
                )),
                None => say(format_args!("{} held no slot in group {}", r.id, r.group)),
            }
        }
        LockCommand::Halt(a) => {
            let r = a.conn.client()?.halt(&a.group, &a.reason)?;
            match r.was {
                Some(h) => say(format_args!(
                    "group {} was halted already: {}",
                    r.group, h.reason
                )),
                None => say(format_args!("group {} halted", r.group)),
            }
        }
        LockCommand::Clear(a) => {
            let r = a.conn.client()?.clear(&a.group)?;
            match r.was {
                Some(h) => say(format_args!(
                    "group {} cleared (it was halted: {})",
                    r.group, h.reason
                )),
                None => say(format_args!("group {} was not halted", r.group)),
            }
        }
        LockCommand::Secret(a) => {
            Secret::create(&a.path)?;
            say(format_args!("wrote a new secret to {}", a.path.display()))
        }
        LockCommand::Token(a) => {
            let cfg = config::load(&a.config)?;
            let secret = Secret::read(&cfg.secret_file)?;
            let who = match a.kind {
                TokenKind::Node => Principal::Node(a.name),
                TokenKind::Operator => Principal::Operator(a.name),
            };
            say(format_args!("{}", secret.token(&who)))
        }
    }
}

fn when(ms: i64) -> String {
    rfc3339(ms.div_euclid(1000))
}

fn print_status(s: &Status) -> Result<()> {
    say(format_args!(
        "server {} ({} store, lease TTL {} s)",
        s.server,
        s.store,
        s.lease_ttl_ms / 1000
    ))?;
    for g in &s.groups {
        let halted = match &g.halted {
            Some(h) => format!("HALTED since {} by {}: {}", when(h.at_ms), h.by, h.reason),
            None => "open".into(),
        };
        say(format_args!(
            "group {}: {} of {} slots held, {halted}",
            g.name,
            g.holders.len(),
            g.slots
        ))?;
        for h in &g.holders {
            say(format_args!(
                "  {}  grant {}  since {}  renewed {}  expires {}",
                h.id,
                h.fencing_token,
                when(h.since_ms),
                when(h.renewed_ms),
                when(h.expires_ms)
            ))?;
        }
    }
    Ok(())
}
