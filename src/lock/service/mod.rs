//! `cairn lock serve`: the HTTP service over a store. It loads `lock.toml`, opens the audit log
//! and the store, writes the configured slot counts to the store, then serves FleetLock
//! ([`routes`]) until SIGTERM or SIGINT. Beside the requests run the reaper (every
//! [`LockConfig::reap_interval`], it frees the slots whose holders stopped renewing, and audits
//! each) and the reload on SIGHUP (a changed configuration applies at once, holders kept; one
//! that does not load is refused with its error and the old one stays).

mod nodes;
pub mod routes;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

use super::api::Halt;
use super::audit::{Action, Audit, AuditRecord};
use super::auth::Secret;
use super::config::{self, LockConfig, StoreConfig};
use super::metrics::Metrics;
use super::policy::GroupView;
use super::store::{embedded::Embedded, etcd::EtcdStore, now_ms, Backend};

/// A running server's shared state.
pub struct App {
    pub backend: Backend,
    config: RwLock<Arc<LockConfig>>,
    secret: RwLock<Arc<Secret>>,
    pub audit: Audit,
    pub metrics: Metrics,
}

impl App {
    pub fn config(&self) -> Arc<LockConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn secret(&self) -> Arc<Secret> {
        Arc::clone(&self.secret.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Append to the audit log; a failure is logged loudly (the change is already made).
    pub async fn audit(
        &self,
        action: Action,
        group: &str,
        id: Option<&str>,
        token: Option<u64>,
        actor: &str,
        detail: String,
    ) {
        let rec = AuditRecord {
            version: 1,
            at_ms: now_ms(),
            server: self.config().server_name.clone(),
            action,
            group: group.to_string(),
            id: id.map(str::to_string),
            fencing_token: token,
            actor: actor.to_string(),
            detail,
        };
        if let Err(e) = self.audit.write(&rec).await {
            tracing::error!(
                "{e:#}: lost record {}",
                serde_json::to_string(&rec).unwrap_or_default()
            );
        }
    }

    /// Every group the store or the configuration knows, with the slots in effect.
    pub async fn groups(&self) -> Result<BTreeMap<String, (u32, GroupView)>> {
        let cfg = self.config();
        let mut groups = self.backend.groups().await?;
        for name in cfg.groups.keys() {
            groups.entry(name.clone()).or_default();
        }
        Ok(groups
            .into_iter()
            .map(|(name, view)| {
                let slots = view.slots.unwrap_or(cfg.group(&name).slots);
                (name, (slots, view))
            })
            .collect())
    }

    /// Halt `group` for `halt`; audited. The halt it had already, if any.
    pub async fn halt(&self, group: &str, halt: Halt, actor: &str) -> Result<Option<Halt>> {
        let was = self.backend.halt(group, &halt).await?;
        if was.is_none() {
            self.audit(Action::Halt, group, None, None, actor, halt.reason.clone())
                .await;
        }
        Ok(was)
    }

    /// Write the configured slot counts to the store; audit what changed.
    async fn sync_slots(&self, cfg: &LockConfig) -> Result<()> {
        let slots = cfg
            .groups
            .iter()
            .map(|(k, g)| (k.clone(), g.slots))
            .collect();
        for (group, was, now) in self.backend.sync_slots(&slots).await? {
            let show = |s: Option<u32>| s.map_or("the default".into(), |n| n.to_string());
            let detail = format!(
                "slots {} → {} ({})",
                show(was),
                show(now),
                cfg.path.display()
            );
            tracing::info!("group {group}: {detail}");
            self.audit(Action::Slots, &group, None, None, "config", detail)
                .await;
        }
        Ok(())
    }
}

/// Run the service of the configuration at `path` until SIGTERM or SIGINT.
pub fn serve(path: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(path))
}

async fn run(path: &Path) -> Result<()> {
    // SIGHUP is caught from the start: a reload asked for while the server starts is not lost.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("catching SIGHUP")?;
    let cfg = config::load(path)?;
    let secret = match (&cfg.store, cfg.secret_file.exists()) {
        (StoreConfig::Embedded { .. }, false) => {
            let s = Secret::create(&cfg.secret_file)?;
            eprintln!(
                "cairn lock: made a new secret in {}",
                cfg.secret_file.display()
            );
            s
        }
        _ => Secret::read(&cfg.secret_file)?,
    };
    let audit = Audit::open(&cfg.audit_log)?;
    let backend = match &cfg.store {
        StoreConfig::Embedded { path } => Backend::Embedded(Embedded::open(path)?),
        StoreConfig::Etcd { endpoints, prefix } => {
            let extra = cfg.reap_interval() * 2 + std::time::Duration::from_secs(1);
            Backend::Etcd(Box::new(
                EtcdStore::connect(endpoints, prefix, extra).await?,
            ))
        }
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("{}: listening on {}", cfg.path.display(), cfg.listen))?;
    let app = Arc::new(App {
        backend,
        config: RwLock::new(Arc::new(cfg.clone())),
        secret: RwLock::new(Arc::new(secret)),
        audit,
        metrics: Metrics::new(),
    });
    app.sync_slots(&cfg)
        .await
        .context("writing the slot counts to the store")?;
    tokio::spawn(reaper(Arc::clone(&app)));
    tokio::spawn(reloader(Arc::clone(&app), hup));
    eprintln!(
        "cairn lock: serving FleetLock on http://{} ({} store, {} groups configured, lease TTL {}s)",
        cfg.listen,
        app.backend.kind(),
        cfg.groups.len(),
        cfg.lease_ttl.as_secs()
    );
    axum::serve(listener, routes::router(Arc::clone(&app)))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving")?;
    eprintln!("cairn lock: stopped");
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Free the slots of holders that stopped renewing.
async fn reaper(app: Arc<App>) {
    loop {
        tokio::time::sleep(app.config().reap_interval()).await;
        match app.backend.reap(now_ms()).await {
            Ok(freed) => {
                for (group, h) in freed {
                    let late = now_ms() - h.record.renewed_ms;
                    let detail = format!("not renewed for {late} ms (TTL {} ms)", h.record.ttl_ms);
                    tracing::info!("group {group}: {}'s slot expired: {detail}", h.record.id);
                    app.metrics
                        .expiries
                        .get_or_create(&Metrics::group(&group))
                        .inc();
                    app.audit(
                        Action::Expire,
                        &group,
                        Some(&h.record.id),
                        Some(h.token),
                        "reaper",
                        detail,
                    )
                    .await;
                    put_back(&app, &group, &h.record.id).await;
                }
            }
            Err(e) => tracing::warn!("reaper: {e:#}"),
        }
    }
}

/// A drained holder whose slot expired (a node that died holding it) goes back to READY,
/// marked down until its checks pass: HAProxy's own check then tells whether it serves, and
/// while it is down it counts as down for the next holder's health gate (a node left in MAINT
/// would not, and the next drain could take the last server out). In a halted group it stays
/// as it is, for the operator: its holder may be the node that failed its health check. A node
/// that holds a slot again (granted anew since) is left drained.
async fn put_back(app: &App, group: &str, id: &str) {
    if app.config().group(group).drain.is_none() {
        return;
    }
    let (halted, holds) = match app.backend.groups().await {
        Ok(g) => g.get(group).map_or((false, false), |v| {
            (
                v.halt.is_some(),
                v.holders.iter().any(|h| h.record.id == id),
            )
        }),
        Err(e) => {
            tracing::warn!("group {group}: not putting {id} back, its state is unknown: {e:#}");
            return;
        }
    };
    if halted || holds {
        return;
    }
    if let Err(e) = nodes::undrain_expired(app, group, id).await {
        tracing::warn!("group {group}: putting {id} back: {}", e.1);
    }
}

/// Reload the configuration on SIGHUP.
async fn reloader(app: Arc<App>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        if let Err(e) = reload(&app).await {
            eprintln!("cairn lock: the configuration was not reloaded, the old one stays: {e:#}");
        }
    }
}

async fn reload(app: &App) -> Result<()> {
    let old = app.config();
    let new = config::load(&old.path)?;
    if new.listen != old.listen || new.store != old.store {
        anyhow::bail!(
            "{}: [service] and the store take effect only at a restart",
            old.path.display()
        );
    }
    let secret = Secret::read(&new.secret_file)?;
    app.sync_slots(&new).await?;
    *app.secret.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(secret);
    *app.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    eprintln!("cairn lock: reloaded {}", old.path.display());
    Ok(())
}
