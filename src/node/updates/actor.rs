//! The update agent's I/O: one step per state of [`AgentState`], each reading what it needs
//! (the node's status, the signed graph, the lock service), asking the pure machine for the
//! next state, and saying how long to wait before the next step. What must survive a reboot
//! (the update held, the graph serial, releases abandoned) is written to `agent.json` before
//! the step that depends on it.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::config::{AgentConfig, Strategy};
use super::machine::{self, AgentState, Held, Settle, Slot, Target};
use super::AgentRecord;
use crate::base::cmd::Cmd;
use crate::lock::api::{AgentPhase, ClientParams, NodeReport, Verdict as LockVerdict};
use crate::lock::client::{Client, ClientError};
use crate::node::api::Status;
use crate::node::journal::{note, Level};
use crate::node::moves::{self, MoveOpts};
use crate::node::record::split_refspec;
use crate::node::Paths;
use crate::release::graph::{self, Graph, Next};

/// How `cairn node agent` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentOpts {
    /// Stop at the first wait instead of sleeping (one pass, for a person or a test).
    pub once: bool,
}

/// How long a step waits while a verdict is pending.
const VERDICT_POLL: Duration = Duration::from_secs(5);

/// Run the agent until it reboots the node (or a signal stops it).
pub fn run(p: &Paths, opts: AgentOpts) -> Result<()> {
    let cfg_path = p.root.join(super::config::PATH);
    let cfg = AgentConfig::load(&cfg_path)?;
    let mut a = Actor::new(p, cfg)?;
    note(
        Level::Info,
        "agent-start",
        &format!(
            "update agent for {}: strategy {}, group {}, wariness {:.3}",
            a.id,
            a.cfg.strategy.name(),
            a.cfg.group,
            a.wariness
        ),
    );
    let mut st = AgentState::Start;
    loop {
        crate::base::interrupt::check()?;
        let (next, wait) = a.step(st)?;
        tracing::debug!("agent: now {}", next.name());
        st = next;
        if st == AgentState::Rebooting {
            return Ok(());
        }
        if let Some(d) = wait {
            if opts.once {
                return Ok(());
            }
            sleep(d)?;
        }
    }
}

fn sleep(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        crate::base::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(500).min(d));
    }
    Ok(())
}

/// The interval ± 20%, so that a fleet's nodes do not all ask at once.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let f = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
    d.mul_f64(f)
}

struct Actor {
    p: Paths,
    cfg: AgentConfig,
    id: String,
    wariness: f64,
    lock: Option<Client>,
    boot_id: String,
    record: AgentRecord,
}

type Step = Result<(AgentState, Option<Duration>)>;

impl Actor {
    fn new(p: &Paths, cfg: AgentConfig) -> Result<Self> {
        let read =
            |rel: &str| fs_err::read_to_string(p.root.join(rel)).map(|s| s.trim().to_string());
        let id = match &cfg.node_id {
            Some(id) => id.clone(),
            None => nix::unistd::gethostname()
                .context("the hostname (the node's id)")?
                .to_string_lossy()
                .into_owned(),
        };
        let wariness = match cfg.rollout_wariness {
            Some(w) => w,
            None => machine::wariness_of(&read("etc/machine-id")?),
        };
        let lock = match &cfg.strategy {
            Strategy::FleetLock(f) => {
                let token = match &f.token_file {
                    Some(t) => Some(read(t.to_string_lossy().trim_start_matches('/'))?),
                    None => None,
                };
                Some(Client::new(f.base_url.as_str(), token))
            }
            _ => None,
        };
        let boot_id = read("proc/sys/kernel/random/boot_id").unwrap_or_default();
        Ok(Actor {
            p: p.clone(),
            cfg,
            id,
            wariness,
            lock,
            boot_id,
            record: AgentRecord::default(),
        })
    }

    /// The node's status as its boot steps and moves last wrote it (`status.json`, the typed
    /// contract): cheap to read at every tick, where `cairn node status` would open the sysroot
    /// and check every deployment's signatures. What this boot has not written yet carries
    /// another boot id, so the rules read it as no verdict yet.
    fn status(&self) -> Result<Status> {
        crate::node::record::load(&self.p.status())
    }

    fn params(&self) -> ClientParams {
        ClientParams {
            id: self.id.clone(),
            group: self.cfg.group.clone(),
        }
    }

    fn step(&mut self, st: AgentState) -> Step {
        match st {
            AgentState::Start => {
                self.record = AgentRecord::load(&self.p)?;
                let held = self.record.held.clone();
                Ok((st.initialized(held)?, None))
            }
            AgentState::AwaitVerdict { ref held } => match held.clone() {
                None => self.await_boot(st),
                Some(h) => self.settle(st, h),
            },
            AgentState::Steady => self.look(st),
            AgentState::Available { ref target } => {
                let t = target.clone();
                self.ask_leave(st, t)
            }
            AgentState::Permitted { ref held } => {
                let h = held.clone();
                self.deploy(st, h)
            }
            AgentState::Staged { ref held } => {
                let h = held.clone();
                self.reboot_on(st, h)
            }
            AgentState::Rebooting => Ok((st, None)),
        }
    }

    /// No update in flight: once this boot is healthy, say so to the lock service (a node
    /// back from elsewhere goes back behind the load balancer), then look for updates.
    fn await_boot(&mut self, st: AgentState) -> Step {
        let status = self.status()?;
        match machine::verdict_in(&status, &self.boot_id) {
            None => Ok((st, Some(VERDICT_POLL))),
            Some(false) => {
                self.tell(
                    &status,
                    AgentPhase::Failed,
                    None,
                    "unhealthy: not updating".into(),
                );
                Ok((st, Some(jitter(self.cfg.steady_interval))))
            }
            Some(true) => {
                if let Some(c) = &self.lock {
                    if let Err(e) = c.steady_state(&self.params(), None) {
                        tracing::warn!("telling the lock service this node is steady: {e}");
                        return Ok((st, Some(jitter(self.cfg.steady_interval))));
                    }
                }
                Ok((st.settled()?, None))
            }
        }
    }

    /// An update held across the reboot: give the slot back after a healthy boot of the
    /// target, report a rollback first.
    fn settle(&mut self, st: AgentState, h: Held) -> Step {
        let status = self.status()?;
        let token = h.slot.as_ref().map(|s| s.fencing_token);
        let what = format!("{} ({})", h.target.version, short(&h.target.commit));
        match machine::settle(&h, &status, &self.boot_id) {
            Settle::Wait => {
                if let (Some(c), Some(t)) = (&self.lock, token) {
                    if let Err(e) = c.pre_reboot(&self.params(), Some(t)) {
                        tracing::warn!("renewing the slot while {what} boots: {e}");
                    }
                }
                let msg = format!("booted, waiting for the verdict on {what}");
                self.tell(&status, AgentPhase::Verifying, Some(&h.target), msg);
                return Ok((st, Some(VERDICT_POLL)));
            }
            Settle::NotRebooted => {
                note(
                    Level::Notice,
                    "agent-reboot",
                    &format!("{what} is armed but was never booted: rebooting"),
                );
                // Through the same last renewal as a fresh reboot: never on a lost grant.
                return self.reboot_on(st, h);
            }
            Settle::Healthy => {
                note(
                    Level::Notice,
                    "agent-healthy",
                    &format!("healthy on {what}: giving the slot back"),
                );
            }
            Settle::RolledBack { reason } => {
                let r = format!("{what} rolled back: {reason}");
                if let Err(e) = self.bad(&h, LockVerdict::RolledBack, &r) {
                    tracing::warn!("{e:#}");
                    return Ok((st, Some(VERDICT_POLL * 2)));
                }
            }
            Settle::Unhealthy { reason } => {
                let r = format!("{what} is unhealthy: {reason}");
                if let Err(e) = self.bad(&h, LockVerdict::Failed, &r) {
                    tracing::warn!("{e:#}");
                    return Ok((st, Some(VERDICT_POLL * 2)));
                }
                // Unhealthy: the slot is not given back and the node stays drained; the
                // group is halted, and the slot's TTL (or an operator) frees it.
                self.record.held = None;
                self.record.save(&self.p)?;
                return Ok((st.settled()?, None));
            }
            Settle::Stale { booted } => {
                note(
                    Level::Warning,
                    "agent-stale",
                    &format!(
                        "{what} was held but {} booted: giving the slot back",
                        short(&booted)
                    ),
                );
            }
        }
        if let Some(c) = &self.lock {
            if let Err(e) = c.steady_state(&self.params(), token) {
                tracing::warn!("giving the slot back: {e}");
                if !matches!(&e, ClientError::Refused { .. }) {
                    return Ok((st, Some(VERDICT_POLL * 2)));
                }
            }
        }
        self.record.held = None;
        self.record.save(&self.p)?;
        Ok((st.settled()?, None))
    }

    /// A bad verdict on `h`: reported to the lock service (which halts the group), and the
    /// release abandoned on this node.
    fn bad(&mut self, h: &Held, verdict: LockVerdict, reason: &str) -> Result<()> {
        note(Level::Warning, "agent-bad", reason);
        if let Some(c) = &self.lock {
            if let Err(e) = c.report(&self.params(), verdict, reason) {
                bail!(
                    "reporting {} to the lock service: {e} (trying again)",
                    verdict.as_str()
                );
            }
        }
        self.record
            .abandoned
            .insert(h.target.commit.clone(), reason.to_string());
        self.record.save(&self.p)
    }

    /// Steady: read the graph and ask it where to go.
    fn look(&mut self, st: AgentState) -> Step {
        let wait = Some(jitter(self.cfg.steady_interval));
        let status = self.status()?;
        let g = match self.fetch_graph(&status) {
            Ok(Some(g)) => g,
            Ok(None) => {
                self.tell(
                    &status,
                    AgentPhase::Steady,
                    None,
                    "no update graph is published".into(),
                );
                return Ok((st, wait));
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                self.tell(&status, AgentPhase::Steady, None, format!("{e:#}"));
                return Ok((st, wait));
            }
        };
        let booted = status
            .booted
            .as_ref()
            .map(|b| b.commit.clone())
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        match g.next(&booted, self.wariness, now) {
            Next::Update { to, why } => {
                let why = why.clone();
                if let Some(r) = self
                    .record
                    .abandoned
                    .get(&to.commit)
                    .or(status.failed.get(&to.commit).map(|f| &f.reason))
                {
                    let msg = format!("{} is not taken again: {r}", to.version);
                    self.tell(&status, AgentPhase::Steady, None, msg);
                    return Ok((st, wait));
                }
                let target = Target {
                    version: to.version.clone(),
                    commit: to.commit.clone(),
                    why,
                };
                note(
                    Level::Info,
                    "agent-update",
                    &format!("{} is the next release: {}", target.version, target.why),
                );
                self.motd(None);
                Ok((st.update_found(target)?, None))
            }
            Next::DeadEnd { reason } => {
                self.motd(Some(&reason));
                self.tell(&status, AgentPhase::DeadEnd, None, reason);
                Ok((st, wait))
            }
            Next::Stay { why } => {
                self.motd(None);
                self.tell(&status, AgentPhase::Steady, None, why);
                Ok((st, wait))
            }
        }
    }

    /// The signed graph of the booted ref, from the remote it pulls from; `None` when none is
    /// published.
    fn fetch_graph(&mut self, status: &Status) -> Result<Option<Graph>> {
        let origin = status
            .booted
            .as_ref()
            .and_then(|b| b.origin.clone())
            .context("the booted deployment has no origin")?;
        let (remote, ref_) = split_refspec(&origin)
            .with_context(|| format!("the booted origin {origin:?} names no remote ref"))?;
        let node = crate::store::sysroot::Node::open(&self.p.root)?;
        let repo = node.repo();
        let base = repo
            .remote_get_url(remote)
            .with_context(|| format!("remote {remote}'s URL"))?
            .to_string();
        let url = format!("{}/updates/{ref_}.json", base.trim_end_matches('/'));
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build();
        let get = |u: &str| -> Result<Option<Vec<u8>>> {
            match agent.get(u).call() {
                Ok(r) => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut r.into_reader(), &mut b)?;
                    Ok(Some(b))
                }
                Err(ureq::Error::Status(404, _)) => Ok(None),
                Err(e) => Err(anyhow::anyhow!("fetching {u}: {e}")),
            }
        };
        let Some(data) = get(&url)? else {
            return Ok(None);
        };
        let sig = get(&format!("{url}.sig"))?
            .with_context(|| format!("{url} has no signature ({url}.sig): ignoring it"))?;
        let g = graph::verify(&repo, remote, &data, &sig, &url)?;
        if g.stream != ref_ {
            bail!("{url} is the graph of {:?}, not of {ref_}", g.stream);
        }
        if g.metadata.serial < self.record.graph_serial {
            bail!(
                "{url} has serial {}, older than the {} seen before: a replayed graph, ignored",
                g.metadata.serial,
                self.record.graph_serial
            );
        }
        if g.metadata.serial > self.record.graph_serial {
            self.record.graph_serial = g.metadata.serial;
            self.record.save(&self.p)?;
        }
        Ok(Some(g))
    }

    /// Ask the strategy for leave to move to `target`.
    fn ask_leave(&mut self, st: AgentState, target: Target) -> Step {
        let wait = Some(jitter(self.cfg.steady_interval));
        let status = self.status()?;
        let from = status
            .booted
            .as_ref()
            .map(|b| b.commit.clone())
            .unwrap_or_default();
        let held = |slot| Held {
            target: target.clone(),
            from: from.clone(),
            slot,
            since: crate::base::time::rfc3339(chrono::Utc::now().timestamp()),
        };
        let slot = match &self.cfg.strategy {
            Strategy::Immediate => None,
            Strategy::Periodic(cal) => {
                if let Some(why) = cal.closed(chrono::Utc::now()) {
                    self.tell(&status, AgentPhase::Waiting, Some(&target), why);
                    return Ok((st.withdrawn()?, wait));
                }
                None
            }
            Strategy::FleetLock(_) => {
                let c = self
                    .lock
                    .as_ref()
                    .context("a fleet-lock agent without its client")?;
                match c.pre_reboot(&self.params(), None) {
                    Ok(g) => Some(Slot {
                        group: g.group,
                        id: self.id.clone(),
                        fencing_token: g.holder.fencing_token,
                    }),
                    Err(e) => {
                        self.tell(&status, AgentPhase::Waiting, Some(&target), e.to_string());
                        return Ok((st.withdrawn()?, wait));
                    }
                }
            }
        };
        let h = held(slot);
        // Kept before anything is deployed: a crash from here on finds it at start.
        self.record.held = Some(h.clone());
        self.record.save(&self.p)?;
        let msg = format!("updating to {}: {}", target.version, target.why);
        self.tell(&status, AgentPhase::Updating, Some(&target), msg);
        Ok((st.permitted(h)?, None))
    }

    /// Deploy and arm the target.
    fn deploy(&mut self, st: AgentState, h: Held) -> Step {
        match moves::deploy_commit(&self.p, &h.target.commit, MoveOpts::default()) {
            Ok(m) => {
                note(Level::Notice, "agent-staged", &m.message);
                Ok((st.staged()?, None))
            }
            Err(e) => {
                let reason = format!("deploying {} failed: {e:#}", h.target.version);
                if let Err(e) = self.bad(&h, LockVerdict::Failed, &reason) {
                    tracing::warn!("{e:#}");
                }
                if let Some(c) = &self.lock {
                    let _ =
                        c.steady_state(&self.params(), h.slot.as_ref().map(|s| s.fencing_token));
                }
                self.record.held = None;
                self.record.save(&self.p)?;
                Ok((st.failed()?, Some(jitter(self.cfg.steady_interval))))
            }
        }
    }

    /// Reboot into the staged target, once the slot is known to be still ours: a grant lost
    /// meanwhile (its TTL ran out, an operator released it) cancels the armed deployment.
    fn reboot_on(&mut self, st: AgentState, h: Held) -> Step {
        if let (Some(c), Some(s)) = (&self.lock, &h.slot) {
            if let Err(e) = c.pre_reboot(&self.params(), Some(s.fencing_token)) {
                if e.kind() == Some(crate::lock::api::ErrorKind::LeaseLost) {
                    note(
                        Level::Warning,
                        "agent-lost",
                        &format!(
                            "{e}: not rebooting; cancelling the armed {}",
                            h.target.version
                        ),
                    );
                    moves::rollback(&self.p, false)?;
                    self.record.held = None;
                    self.record.save(&self.p)?;
                    // Back behind the load balancer: the drain belonged to the lost grant.
                    if let Err(e) = c.steady_state(&self.params(), None) {
                        tracing::warn!("telling the lock service this node is steady: {e}");
                    }
                    return Ok((st.lost()?, Some(jitter(self.cfg.steady_interval))));
                }
                tracing::warn!("renewing the slot before the reboot: {e} (rebooting on the grant)");
            }
        }
        reboot()?;
        Ok((st.rebooting()?, None))
    }

    /// Tell the lock service where this node is (fleet-lock only; a failure is logged).
    fn tell(&self, status: &Status, phase: AgentPhase, target: Option<&Target>, message: String) {
        let Some(c) = &self.lock else {
            return;
        };
        let b = status.booted.as_ref();
        let r = NodeReport {
            client_params: self.params(),
            commit: b.map(|b| b.commit.clone()).unwrap_or_default(),
            release: b.and_then(|b| b.version.clone()),
            phase,
            wariness: self.wariness,
            strategy: self.cfg.strategy.name().into(),
            target: target.map(|t| t.version.clone()),
            message,
            at_ms: 0,
        };
        if let Err(e) = c.node_report(&r) {
            tracing::warn!("reporting to the lock service: {e}");
        }
    }

    /// What a login shows about updates: a dead end's reason, or nothing.
    fn motd(&self, deadend: Option<&str>) {
        let path = self.p.root.join("run/motd.d/cairn-updates.motd");
        let r = match deadend {
            Some(reason) => crate::node::write_durably(
                &path,
                format!("cairn: this release is a dead end and gets no updates: {reason}\n")
                    .as_bytes(),
            ),
            None => crate::node::remove_durably(&path).map(|_| ()),
        };
        if let Err(e) = r {
            tracing::warn!("writing {}: {e:#}", path.display());
        }
    }
}

fn short(c: &str) -> &str {
    crate::base::text::short_hash(c)
}

fn reboot() -> Result<()> {
    Cmd::new("systemctl").arg("reboot").run()?;
    Ok(())
}
