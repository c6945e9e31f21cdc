//! The fleet's operations as the command line calls them: bring a fleet up or down (qemu
//! provider: nodes and their HAProxy), start, resume, pause and abort a rollout, and report it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::haproxy::{self, Haproxy, ServerStat};
use super::lock::{Holder, Lock};
use super::manifest::{Fleet, Provider as Kind, Strategy};
use super::provider::{FleetRecord, Provider, Qemu, SshHosts};
use super::rollout::{self, control_path, Ctx};
use super::state::{FileStore, Node, NodeStep, Phase, Role, Rollout, Store};
use super::{agent, manifest};
use crate::store::serve::RepoServer;

/// Where fleets live, and what they are built and updated from.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `build/fleets`: each fleet's directory is `<fleets>/<name>`.
    pub fleets: PathBuf,
    /// The repo the nodes pull from.
    pub repo: PathBuf,
    /// Where images and their stream metadata are (`build/images`).
    pub images: PathBuf,
}

impl Paths {
    pub fn dir(&self, f: &Fleet) -> PathBuf {
        self.fleets.join(&f.name)
    }
}

fn provider(f: &Fleet, p: &Paths) -> Result<Box<dyn Provider + Send>> {
    Ok(match f.provider {
        Kind::Qemu { .. } => Box::new(Qemu::new(f, &p.dir(f), &p.images)?),
        Kind::Ssh { .. } => Box::new(SshHosts::new(f)?),
    })
}

/// Bring the fleet up: boot its nodes (qemu provider), start HAProxy in front of them, and wait
/// until every node's service is healthy.
pub fn up(manifest_path: &Path, p: &Paths) -> Result<FleetRecord> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f);
    if FleetRecord::path(&dir).exists() {
        bail!(
            "{} is up already ({}): bring it down first (cairn fleet down)",
            f.name,
            dir.display()
        );
    }
    let nodes = match &f.provider {
        Kind::Qemu { nodes, .. } => {
            let mut q = Qemu::new(&f, &dir, &p.images)?;
            q.up(*nodes)?;
            q.record.nodes.clone()
        }
        Kind::Ssh { .. } => {
            let nodes = SshHosts::new(&f)?.nodes;
            FleetRecord {
                name: f.name.clone(),
                nodes: nodes.clone(),
                next: 0,
                manifest: None,
            }
            .save(&dir)?;
            nodes
        }
    };
    let servers: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.service.clone()))
        .collect();
    let lb = Haproxy::start(&dir.join("haproxy"), &f.listen, &servers, &f.service)?;
    let deadline = Instant::now() + f.policy.node_timeout;
    for n in &nodes {
        agent::await_healthy(&n.service, &f.service, deadline)
            .with_context(|| format!("{} did not come up healthy", n.name))?;
        lb.wait_up(&n.name, Duration::from_secs(120))?;
    }
    let mut rec = FleetRecord::load(&dir)?;
    rec.manifest = Some(std::path::absolute(manifest_path)?);
    rec.save(&dir)?;
    Ok(rec)
}

/// The manifest of the one fleet that is up, for commands that name none.
pub fn current_manifest(p: &Paths) -> Result<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&p.fleets) {
        for e in entries.flatten() {
            if let Ok(r) = FleetRecord::load(&e.path()) {
                if let Some(m) = r.manifest {
                    found.push(m);
                }
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no fleet is up under {} (cairn fleet up MANIFEST), or name its manifest",
            p.fleets.display()
        ),
        _ => bail!(
            "several fleets are up under {}: name the manifest ({})",
            p.fleets.display(),
            found
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Stop the fleet's HAProxy and VMs (the qemu provider's; existing hosts are left alone).
pub fn down(manifest_path: &Path, p: &Paths) -> Result<()> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f);
    let rec = FleetRecord::load(&dir)?;
    Haproxy {
        dir: dir.join("haproxy"),
    }
    .stop()?;
    for n in &rec.nodes {
        if let Some(vm) = &n.vm {
            vm.kill()?;
        }
    }
    fs_err::remove_file(FleetRecord::path(&dir))?;
    Ok(())
}

/// What `cairn rollout start` asks for.
#[derive(Debug, Clone)]
pub struct StartOpts {
    pub to_ref: String,
    /// Overrides the manifest's strategy.
    pub strategy: Option<Strategy>,
    /// What the holder is doing, for a refused second rollout.
    pub command: String,
}

/// Start a rollout (or resume the unfinished one to the same ref) and run it to its end.
pub fn start(
    manifest_path: &Path,
    p: &Paths,
    o: &StartOpts,
    on_step: &(dyn Fn(&Rollout, &Node) + Sync),
) -> Result<Rollout> {
    let mut f = manifest::load(manifest_path)?;
    if let Some(s) = o.strategy {
        if s == Strategy::Replace && !f.provider.can_create() {
            bail!(
                "--strategy replace: the {} provider of {} cannot create nodes",
                f.provider.kind(),
                manifest_path.display()
            );
        }
        f.policy.strategy = s;
    }
    let dir = p.dir(&f);
    FleetRecord::load(&dir)?;
    let _lock = Lock::take(&dir.join("rollout.lock"), &Holder::me(&o.command))?;
    let store = FileStore::new(&dir);
    let state = match store.load()? {
        Some(r) if !r.finished() && r.to_ref != o.to_ref => bail!(
            "a rollout of {} to {} is unfinished ({:?}): resume or abort it first",
            r.fleet,
            r.to_ref,
            r.phase
        ),
        Some(r) if !r.finished() => r,
        _ => new_rollout(&f, p, o)?,
    };
    let _ = fs_err::remove_file(control_path(&dir));
    drive(f, p, state, store, on_step)
}

/// Resume the unfinished (or paused, or killed) rollout.
pub fn resume(
    manifest_path: &Path,
    p: &Paths,
    command: &str,
    on_step: &(dyn Fn(&Rollout, &Node) + Sync),
) -> Result<Rollout> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f);
    let _lock = Lock::take(&dir.join("rollout.lock"), &Holder::me(command))?;
    let store = FileStore::new(&dir);
    let Some(r) = store.load()? else {
        bail!("{} has no rollout to resume", f.name);
    };
    match r.phase {
        Phase::Done => bail!("the rollout of {} to {} is done", f.name, r.to_ref),
        Phase::Halted => bail!(
            "the rollout of {} to {} halted ({}): start a rollout to another commit",
            f.name,
            r.to_ref,
            r.reason.as_deref().unwrap_or("no reason recorded")
        ),
        Phase::Aborted => bail!("the rollout of {} was aborted", f.name),
        Phase::Running | Phase::Paused => {}
    }
    let _ = fs_err::remove_file(control_path(&dir));
    let mut f = f;
    f.policy.strategy = r.strategy;
    drive(f, p, r, store, on_step)
}

/// Ask the running rollout to stop after its current batch (`pause`) or at once between steps
/// (`abort`); with nobody running it, an abort is recorded directly.
pub fn signal(manifest_path: &Path, p: &Paths, what: &str) -> Result<()> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f);
    crate::base::tmp::write_atomic(&control_path(&dir), what.as_bytes())?;
    if what == "abort" {
        if let Ok(_lock) = Lock::take(
            &dir.join("rollout.lock"),
            &Holder::me("cairn rollout abort"),
        ) {
            let store = FileStore::new(&dir);
            if let Some(mut r) = store.load()? {
                if !r.finished() {
                    r.phase = Phase::Aborted;
                    r.reason = Some("aborted by the operator".into());
                    store.save(&r)?;
                }
            }
        }
    }
    Ok(())
}

fn new_rollout(f: &Fleet, p: &Paths, o: &StartOpts) -> Result<Rollout> {
    let r = crate::store::open(&p.repo)?;
    let to_commit = crate::store::resolve(&r, &o.to_ref)?;
    let to = crate::store::load_commit(&r, &to_commit)?;
    if f.policy.strategy == Strategy::Replace {
        if let Kind::Qemu { .. } = f.provider {
            let img = Qemu::new(f, &p.dir(f), &p.images)?.image()?;
            if img.commit != to_commit {
                bail!(
                    "the newest image of {} is commit {} ({}), not {} ({}): build the image of \
                     {} first",
                    f.name,
                    img.commit,
                    img.version,
                    to_commit,
                    o.to_ref,
                    o.to_ref
                );
            }
        }
    }
    let nodes = provider(f, p)?
        .nodes()?
        .into_iter()
        .map(|n| {
            let st = agent::status(&n.name, &n.ssh)
                .with_context(|| format!("{}: reading its state over SSH", n.name))?;
            let done = f.policy.strategy == Strategy::InPlace && st.commit == to_commit;
            Ok(Node {
                name: n.name,
                role: Role::Existing,
                step: if done {
                    NodeStep::Done
                } else {
                    NodeStep::Pending
                },
                from_commit: st.commit.clone(),
                from_version: st.version.clone(),
                commit: st.commit,
                version: st.version,
                health: "unknown".into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let now = chrono::Utc::now().timestamp();
    Ok(Rollout {
        fleet: f.name.clone(),
        strategy: f.policy.strategy,
        to_ref: o.to_ref.clone(),
        to_commit,
        to_version: to.meta.version.unwrap_or_default(),
        phase: Phase::Running,
        reason: None,
        started: now,
        updated: now,
        nodes,
    })
}

fn drive(
    f: Fleet,
    p: &Paths,
    state: Rollout,
    store: FileStore,
    on_step: &(dyn Fn(&Rollout, &Node) + Sync),
) -> Result<Rollout> {
    let dir = p.dir(&f);
    store.save(&state)?;
    // The nodes pull from this machine while the rollout runs.
    let _server = match &f.repo_listen {
        Some(l) => Some(RepoServer::start_on(&p.repo, l)?),
        None => None,
    };
    let ctx = Ctx {
        fleet: &f,
        dir: dir.clone(),
        repo: p.repo.clone(),
        lb: Haproxy::attach(&dir.join("haproxy"))?,
        provider: Mutex::new(provider(&f, p)?),
        state: Mutex::new(state),
        store: Box::new(store),
        on_step,
    };
    rollout::run(&ctx)
}

/// A rollout's state with what HAProxy says of each node now, for `cairn rollout status`.
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
    let dir = p.dir(&f);
    let holder = std::fs::read_to_string(dir.join("rollout.lock"))
        .ok()
        .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
        .filter(|h| {
            // Held only while its process lives.
            std::path::Path::new(&format!("/proc/{}", h.pid)).exists()
        });
    let servers: Vec<ServerStat> = Haproxy::attach(&dir.join("haproxy"))
        .and_then(|h| h.servers())
        .unwrap_or_default();
    Ok(Status {
        rollout: FileStore::new(&dir).load()?,
        holder,
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
            &r.to_commit[..12.min(r.to_commit.len())],
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

/// The fleet's HAProxy configuration's backend name (for scripts and tests).
pub const BACKEND: &str = haproxy::BACKEND;
