//! The fleet's operations as the command line calls them: bring a fleet up or down, start,
//! resume, pause and abort a rollout. (`cairn rollout status` is [`super::status`].)

use crate::fleet::haproxy::RuntimeApi as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::control::{self, Control};
use super::dir::FleetDir;
use super::haproxy::Haproxy;
use super::lock::{Holder, Lock};
use super::manifest::{Fleet, Strategy};
use super::provider::{self, FleetRecord, NodeRecord};
use super::rollout::{self, Ctx};
use super::state::{FileStore, Health, Node, NodeStep, Phase, Role, Rollout, Store, FORMAT};
use super::trust::{self, Seen};
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
    pub fn dir(&self, f: &Fleet) -> Result<FleetDir> {
        FleetDir::new(&self.fleets, &f.name)
    }
}

/// Bring the fleet up: its nodes (booted by the qemu provider, or the existing hosts), HAProxy
/// in front of them, and every node's service healthy.
pub fn up(manifest_path: &Path, p: &Paths) -> Result<FleetRecord> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    if dir.record().exists() {
        bail!(
            "{} is up already ({}): bring it down first (cairn fleet down)",
            f.name,
            dir.root().display()
        );
    }
    let nodes = provider::build(&f, &dir, &p.images)?.up()?;
    let servers: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.service.clone()))
        .collect();
    let lb = Haproxy::start(&dir.haproxy(), &f.listen, &servers, &f.service)?;
    let deadline = Instant::now() + f.policy.node_timeout;
    for n in &nodes {
        agent::await_healthy(&n.service, &f.service, deadline)
            .with_context(|| format!("{} did not come up healthy", n.name))?;
        lb.wait_up(&n.name, Duration::from_secs(120))?;
    }
    FleetRecord::load(&dir)
}

/// The manifest of the one fleet that is up, for commands that name none.
pub fn current_manifest(p: &Paths) -> Result<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&p.fleets) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(Some(r)) = FleetRecord::find(&FleetDir::new(&p.fleets, &name)?) {
                found.push(r.manifest);
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

/// Stop the fleet's HAProxy and the nodes its provider started (existing hosts are left alone).
pub fn down(manifest_path: &Path, p: &Paths) -> Result<()> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    FleetRecord::load(&dir)?;
    Haproxy { dir: dir.haproxy() }.stop()?;
    provider::build(&f, &dir, &p.images)?.down()?;
    fs_err::remove_file(dir.record())?;
    Ok(())
}

/// Power node `name` of a fleet that is up on again, on its own disk (`cairn fleet start`),
/// and wait until it answers SSH. HAProxy lets it in again once its health check passes.
pub fn power_on(manifest_path: &Path, p: &Paths, name: &str) -> Result<NodeRecord> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    FleetRecord::load(&dir)?;
    // A rollout keeps its own copy of the record: none may run while this one changes it.
    let _lock = Lock::take(
        &dir.lock(),
        &Holder::me(&format!("cairn fleet start {name}")),
    )?;
    provider::build(&f, &dir, &p.images)?.power_on(name)
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

/// Called with each node's new step.
pub type OnStep<'a> = &'a (dyn Fn(&Rollout, &Node) + Sync);

/// Start a rollout (or resume the unfinished one to the same ref) and run it to its end.
pub fn start(manifest_path: &Path, p: &Paths, o: &StartOpts, on_step: OnStep) -> Result<Rollout> {
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
    let dir = p.dir(&f)?;
    FleetRecord::load(&dir)?;
    let _lock = Lock::take(&dir.lock(), &Holder::me(&o.command))?;
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
    control::clear(&dir.control())?;
    drive(&f, p, state, store, on_step)
}

/// Resume the unfinished (or paused, or killed) rollout.
pub fn resume(manifest_path: &Path, p: &Paths, command: &str, on_step: OnStep) -> Result<Rollout> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    let _lock = Lock::take(&dir.lock(), &Holder::me(command))?;
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
    control::clear(&dir.control())?;
    drive(&f, p, r, store, on_step)
}

/// Ask the running rollout to stop after its current batch (`pause`, `abort`); with nobody
/// running it, an abort is recorded directly.
pub fn signal(manifest_path: &Path, p: &Paths, what: Control) -> Result<()> {
    let f = manifest::load(manifest_path)?;
    let dir = p.dir(&f)?;
    FleetRecord::load(&dir)?;
    control::write(&dir.control(), what)?;
    if what == Control::Abort {
        if let Ok(_lock) = Lock::take(&dir.lock(), &Holder::me("cairn rollout abort")) {
            let store = FileStore::new(&dir);
            if let Some(mut r) = store.load()? {
                if !r.finished() {
                    r.abort();
                    store.save(&r)?;
                }
            }
        }
    }
    Ok(())
}

/// A new rollout of the fleet's nodes to `o.to_ref`'s commit.
fn new_rollout(f: &Fleet, p: &Paths, o: &StartOpts) -> Result<Rollout> {
    let r = crate::store::open(&p.repo)?;
    let to_commit = crate::store::resolve(&r, &o.to_ref)?;
    let to = crate::store::load_commit(&r, &to_commit)?;
    let provider = provider::build(f, &p.dir(f)?, &p.images)?;
    if f.policy.strategy == Strategy::Replace {
        if let Some(img) = provider.image()? {
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
    let found = provider
        .nodes()?
        .into_iter()
        .map(|n| Ok((agent::status(&n.name, &n.ssh)?, n)))
        .collect::<Result<Vec<_>>>()?;
    let seen: Vec<Seen> = found
        .iter()
        .map(|(st, n)| Seen {
            name: &n.name,
            ssh: &n.ssh,
            status: st,
        })
        .collect();
    trust::check(&r, &o.to_ref, &to_commit, &seen)?;
    let nodes = found
        .into_iter()
        .map(|(st, n)| {
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
                health: Health::Unknown,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let now = chrono::Utc::now().timestamp();
    Ok(Rollout {
        format: FORMAT,
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

/// Run `state` with the fleet's load balancer, provider and (when the manifest says so) the
/// repo served to the nodes.
fn drive(
    f: &Fleet,
    p: &Paths,
    state: Rollout,
    store: FileStore,
    on_step: OnStep,
) -> Result<Rollout> {
    let dir = p.dir(f)?;
    store.save(&state)?;
    // The nodes pull from this machine while the rollout runs.
    let _server = match &f.repo_listen {
        Some(l) => Some(RepoServer::start_on(&p.repo, l)?),
        None => None,
    };
    let ctx = Ctx {
        fleet: f,
        lb: Haproxy::attach(&dir.haproxy())?,
        provider: Mutex::new(provider::build(f, &dir, &p.images)?),
        dir,
        repo: p.repo.clone(),
        state: Mutex::new(state),
        store: Box::new(store),
        on_step,
    };
    rollout::run(&ctx)
}
