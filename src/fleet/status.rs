//! `cairn rollout status`: the rollout's state, who runs it, and what HAProxy says of each
//! node now.

use crate::fleet::haproxy::RuntimeApi as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::haproxy::{Haproxy, ServerStat};
use super::lock::{self, Holder};
use super::manifest;
use super::ops::Paths;
use super::state::{FileStore, NodeStep, Role, Rollout, Store};
use crate::base::text::short_hash;

/// A rollout's state with what HAProxy says of each node now.
#[derive(Debug, Serialize)]
pub struct Status {
    pub rollout: Option<Rollout>,
    pub holder: Option<Holder>,
    pub servers: Vec<ServerLine>,
    pub max_unavailable: u32,
    pub max_surge: u32,
}

#[derive(Debug, Serialize)]
pub struct ServerLine {
    pub name: String,
    pub status: String,
    pub sessions: u64,
}

pub fn status(manifest_path: &Path, p: &Paths) -> Result<Status> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    let servers: Vec<ServerStat> = Haproxy::attach(&dir.haproxy())
        .and_then(|h| h.servers())
        .unwrap_or_default();
    Ok(Status {
        rollout: FileStore::new(&dir).load()?,
        holder: lock::holder(&dir.lock()),
        servers: servers
            .into_iter()
            .map(|s| ServerLine {
                name: s.name,
                status: s.status,
                sessions: s.sessions,
            })
            .collect(),
        max_unavailable: f.policy.max_unavailable,
        max_surge: f.policy.max_surge,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(r) = &self.rollout else {
            return write!(out, "no rollout yet");
        };
        writeln!(
            out,
            "rollout of {} to {} {} ({}), {}: {:?}{}",
            r.fleet,
            r.to_ref,
            r.to_version,
            short_hash(&r.to_commit),
            r.strategy.as_str(),
            r.phase,
            r.reason
                .as_ref()
                .map(|x| format!(" — {x}"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "policy: max-unavailable {}, max-surge {}; out of service now: {}",
            self.max_unavailable,
            self.max_surge,
            r.out_of_service()
        )?;
        if let Some(h) = &self.holder {
            writeln!(out, "running: {h}")?;
        }
        for n in &r.nodes {
            let lb = self
                .servers
                .iter()
                .find(|s| s.name == n.name)
                .map(|s| format!("{} ({} sessions)", s.status, s.sessions))
                .unwrap_or_else(|| "not in the load balancer".into());
            let why = match &n.step {
                NodeStep::Failed { reason, .. } => format!(" — {reason}"),
                _ => String::new(),
            };
            writeln!(
                out,
                "  {:<16} {:<10} {:<10} {:<8} {lb}{why}",
                n.name,
                n.step.word(),
                n.version,
                match n.role {
                    Role::Existing => "",
                    Role::New => "new",
                }
            )?;
        }
        Ok(())
    }
}
