//! `lock.toml`, the lock service's configuration, parsed like the manifests: raw TOML (unknown
//! keys are errors, kebab-case) → a validated [`LockConfig`] whose errors name the file, the line
//! and the key. Its keys follow airlock's (`[service] address, port`, `[etcd3] endpoints`,
//! `[lock] default-slots`, `[[lock.groups]] name, slots`), so an airlock operator reads it at once.
//!
//! ```toml
//! [service]
//! address = "127.0.0.1"
//! port = 3333
//! [etcd3]                       # absent: the embedded store under [store] path
//! endpoints = ["http://127.0.0.1:2379"]
//! [lock]
//! default-slots = 1
//! lease-ttl = "15m"             # a holder that does not renew within it loses its slot
//! renew-interval = "1m"         # what clients are told; the reaper runs at a quarter of it
//! [[lock.groups]]
//! name = "workers"
//! slots = 2
//! allow-anonymous = true        # Zincati sends no credential
//! [auth]
//! secret-file = "/etc/cairn/lock.secret"
//! [audit]
//! log = "/var/log/cairn/lock-audit.jsonl"
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use super::api::valid_group;
use crate::base::span::parse_toml;
use crate::base::units::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    service: Option<RawService>,
    store: Option<Spanned<RawStore>>,
    etcd3: Option<Spanned<RawEtcd>>,
    lock: Option<RawLock>,
    auth: Option<Spanned<RawAuth>>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    address: Option<Spanned<String>>,
    port: Option<u16>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStore {
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEtcd {
    endpoints: Vec<Spanned<String>>,
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLock {
    default_slots: Option<u32>,
    allow_anonymous: Option<bool>,
    lease_ttl: Option<Spanned<String>>,
    renew_interval: Option<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<RawGroup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGroup {
    name: Spanned<String>,
    slots: Option<Spanned<u32>>,
    allow_anonymous: Option<bool>,
    load_balancer: Option<RawLoadBalancer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoadBalancer {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    socket: PathBuf,
    backend: Option<String>,
    drain_timeout: Option<Spanned<String>>,
    min_serving: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAuth {
    secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAudit {
    log: Option<PathBuf>,
}

/// Where the slots are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// One machine: a state file in this directory, one server at a time.
    Embedded { path: PathBuf },
    /// etcd v3: any number of servers on one cluster act as one service.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl StoreConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Embedded { .. } => "embedded",
            StoreConfig::Etcd { .. } => "etcd",
        }
    }
}

/// A group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub slots: u32,
    /// Clients without a credential may take and release slots (they can name any id).
    pub allow_anonymous: bool,
    /// The load balancer a granted node is drained from (its server is named by the node's id).
    pub drain: Option<Drain>,
}

/// `[lock.groups.load-balancer]`: drain a node in HAProxy before its grant is answered, and put
/// it back when it says it is steady.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub haproxy: crate::base::haproxy::Runtime,
    /// How long open sessions may take to finish before the node is cut off anyway.
    pub timeout: Duration,
    /// How many other servers must be up before one is drained; `None`: every other server in
    /// service (not in maintenance), so a dead node holds the group until it is back.
    pub min_serving: Option<usize>,
}

impl Drain {
    /// How many other servers must be up before one is drained, when `in_service` others are
    /// not in maintenance.
    pub fn gate(&self, in_service: usize) -> usize {
        self.min_serving.unwrap_or(in_service)
    }
}

/// A validated `lock.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfig {
    pub path: PathBuf,
    pub listen: SocketAddr,
    /// This server's name in the audit log and the status.
    pub server_name: String,
    pub store: StoreConfig,
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
    /// Groups that are not listed.
    pub default: GroupConfig,
    pub groups: BTreeMap<String, GroupConfig>,
    pub secret_file: PathBuf,
    pub audit_log: PathBuf,
}

impl LockConfig {
    /// The settings of `group`.
    pub fn group(&self, group: &str) -> GroupConfig {
        self.groups
            .get(group)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// How often each server looks for holders whose TTL ran out: a quarter of the renewal
    /// interval, so a dead holder's slot is free within TTL + a quarter of that interval.
    pub fn reap_interval(&self) -> Duration {
        (self.renew_interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
    }
}

/// The default embedded store's directory.
pub const DEFAULT_STATE: &str = "/var/lib/cairn/lock";

/// Load and validate the configuration at `path`.
pub fn load(path: &Path) -> Result<LockConfig> {
    let (doc, raw): (_, RawConfig) = parse_toml(path, "lock configuration")?;
    let file = &doc.file;
    let at = |offset: usize| doc.at(offset);
    let dir = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &Path| dir.join(p);

    let (address, port, name) = match raw.service {
        None => ("127.0.0.1".to_string(), 3333, None),
        Some(s) => {
            let a = match s.address {
                None => "127.0.0.1".to_string(),
                Some(a) => {
                    a.get_ref().parse::<IpAddr>().map_err(|_| {
                        anyhow!(
                            "{}: key `service.address`: {:?} is not an IP address",
                            at(a.span().start),
                            a.get_ref()
                        )
                    })?;
                    a.into_inner()
                }
            };
            (a, s.port.unwrap_or(3333), s.name)
        }
    };
    let listen: SocketAddr = format!("{address}:{port}")
        .parse()
        .or_else(|_| format!("[{address}]:{port}").parse())
        .map_err(|_| anyhow!("{file}: [service]: cannot listen on {address} port {port}"))?;
    let server_name = name.unwrap_or_else(|| format!("{}:{port}", host_name()));

    let store = store(raw.store, raw.etcd3, &at, &rel)?;
    let (lease_ttl, renew_interval, default, groups) = lock(raw.lock, &at)?;
    let embedded_dir = match &store {
        StoreConfig::Embedded { path } => Some(path.clone()),
        StoreConfig::Etcd { .. } => None,
    };
    let secret_file = match raw
        .auth
        .as_ref()
        .and_then(|a| a.get_ref().secret_file.clone())
    {
        Some(p) => rel(&p),
        None => match &embedded_dir {
            Some(d) => d.join("secret"),
            None => bail!(
                "{file}: key `auth.secret-file` is missing: with [etcd3], every server needs the \
                 same secret (make one with `cairn lock secret FILE`)"
            ),
        },
    };
    let audit_log = match raw.audit.and_then(|a| a.log) {
        Some(p) => rel(&p),
        None => match &embedded_dir {
            Some(d) => d.join("audit.jsonl"),
            None => PathBuf::from("/var/log/cairn/lock-audit.jsonl"),
        },
    };
    Ok(LockConfig {
        path: path.to_path_buf(),
        listen,
        server_name,
        store,
        lease_ttl,
        renew_interval,
        default,
        groups,
        secret_file,
        audit_log,
    })
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `[store]` or `[etcd3]`, not both.
fn store(
    embedded: Option<Spanned<RawStore>>,
    etcd: Option<Spanned<RawEtcd>>,
    at: &dyn Fn(usize) -> String,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<StoreConfig> {
    match (embedded, etcd) {
        (Some(s), Some(_)) => bail!(
            "{}: [store] and [etcd3] are both given: the slots live in one of them",
            at(s.span().start)
        ),
        (None, Some(e)) => {
            let e_at = at(e.span().start);
            let e = e.into_inner();
            if e.endpoints.is_empty() {
                bail!("{e_at}: key `etcd3.endpoints` is empty");
            }
            let mut endpoints = Vec::new();
            for ep in e.endpoints {
                let u = url::Url::parse(ep.get_ref()).map_err(|err| {
                    anyhow!(
                        "{}: key `etcd3.endpoints`: {:?} is not a URL ({err})",
                        at(ep.span().start),
                        ep.get_ref()
                    )
                })?;
                if u.scheme() != "http" || u.host_str().is_none() || u.port().is_none() {
                    bail!(
                        "{}: key `etcd3.endpoints`: {:?} must be http://HOST:PORT (TLS to etcd is \
                         not supported yet)",
                        at(ep.span().start),
                        ep.get_ref()
                    );
                }
                endpoints.push(ep.into_inner());
            }
            let prefix = e.prefix.unwrap_or_else(|| "cairn/lock/v1".into());
            if prefix.is_empty() || prefix.ends_with('/') {
                bail!(
                    "{e_at}: key `etcd3.prefix` {prefix:?} must be non-empty, without a trailing /"
                );
            }
            Ok(StoreConfig::Etcd { endpoints, prefix })
        }
        (s, None) => {
            let path = s
                .and_then(|s| s.into_inner().path)
                .map(|p| rel(&p))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
            Ok(StoreConfig::Embedded { path })
        }
    }
}

type LockSettings = (
    Duration,
    Duration,
    GroupConfig,
    BTreeMap<String, GroupConfig>,
);

/// `[lock]`: the TTL, the renewal interval and the groups.
fn lock(raw: Option<RawLock>, at: &dyn Fn(usize) -> String) -> Result<LockSettings> {
    let Some(raw) = raw else {
        let d = GroupConfig {
            slots: 1,
            allow_anonymous: false,
            drain: None,
        };
        return Ok((
            Duration::from_secs(900),
            Duration::from_secs(60),
            d,
            BTreeMap::new(),
        ));
    };
    let dur = |v: &Option<Spanned<String>>, key: &str, default: u64| -> Result<Duration> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) => parse_duration(s.get_ref())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: key `lock.{key}`: {:?} is not a duration like \"90s\" or \"15m\"",
                        at(s.span().start),
                        s.get_ref()
                    )
                }),
        }
    };
    let ttl = dur(&raw.lease_ttl, "lease-ttl", 900)?;
    let renew = dur(
        &raw.renew_interval,
        "renew-interval",
        60.min(ttl.as_secs() / 3).max(1),
    )?;
    if renew >= ttl {
        let l_at = match (&raw.renew_interval, &raw.lease_ttl) {
            (Some(s), _) | (None, Some(s)) => at(s.span().start),
            (None, None) => unreachable!("the defaults differ"),
        };
        bail!(
            "{l_at}: key `lock.renew-interval` ({}s) must be shorter than `lock.lease-ttl` ({}s)",
            renew.as_secs(),
            ttl.as_secs()
        );
    }
    let default = GroupConfig {
        slots: raw.default_slots.unwrap_or(1),
        allow_anonymous: raw.allow_anonymous.unwrap_or(false),
        drain: None,
    };
    let mut groups = BTreeMap::new();
    for g in raw.groups {
        let g_at = at(g.span().start);
        let g = g.into_inner();
        let name = g.name.get_ref();
        if !valid_group(name) {
            bail!(
                "{}: key `lock.groups.name`: {name:?} must match ^[a-zA-Z0-9.-]+$ (at most 63 \
                 characters), as FleetLock's groups do",
                at(g.name.span().start)
            );
        }
        let slots = g.slots.map(|s| *s.get_ref()).unwrap_or(default.slots);
        let cfg = GroupConfig {
            slots,
            allow_anonymous: g.allow_anonymous.unwrap_or(default.allow_anonymous),
            drain: g.load_balancer.map(|lb| drain(lb, at)).transpose()?,
        };
        if groups.insert(name.clone(), cfg).is_some() {
            bail!("{g_at}: group {name:?} is listed twice in [[lock.groups]]");
        }
    }
    Ok((ttl, renew, default, groups))
}

/// `[lock.groups.load-balancer]`, checked.
fn drain(lb: RawLoadBalancer, at: &dyn Fn(usize) -> String) -> Result<Drain> {
    if lb.kind.get_ref() != "haproxy" {
        bail!(
            "{}: key `type`: {:?} is not a load balancer cairn drives (\"haproxy\")",
            at(lb.kind.span().start),
            lb.kind.get_ref()
        );
    }
    let timeout = match &lb.drain_timeout {
        None => Duration::from_secs(30),
        Some(s) => parse_duration(s.get_ref()).ok_or_else(|| {
            anyhow!(
                "{}: key `drain-timeout`: {:?} is not a duration like \"30s\"",
                at(s.span().start),
                s.get_ref()
            )
        })?,
    };
    Ok(Drain {
        haproxy: crate::base::haproxy::Runtime {
            socket: lb.socket,
            backend: lb.backend.unwrap_or_else(|| "nodes".into()),
        },
        timeout,
        min_serving: match lb.min_serving {
            Some(n) if *n.get_ref() == 0 => bail!(
                "{}: key `min-serving`: 0 would let a drain take the last server out (at least 1, \
                 or leave it out: every other server in service)",
                at(n.span().start)
            ),
            n => n.map(|n| *n.get_ref() as usize),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<LockConfig> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock.toml");
        std::fs::write(&p, text).unwrap();
        load(&p)
    }

    #[test]
    fn an_airlock_shaped_config_loads_with_its_defaults() {
        let c = load_text(
            "[service]\nport = 4000\n[etcd3]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
             [lock]\ndefault-slots = 2\nlease-ttl = \"30s\"\n[[lock.groups]]\nname = \"workers\"\n\
             slots = 5\nallow-anonymous = true\n[auth]\nsecret-file = \"s\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.group("workers").slots, 5);
        assert!(c.group("workers").allow_anonymous);
        assert_eq!(c.group("other").slots, 2);
        assert!(!c.group("other").allow_anonymous);
        assert_eq!(c.renew_interval, Duration::from_secs(10));
        assert!(c.secret_file.ends_with("s"));
        let e = load_text("").unwrap();
        assert_eq!(e.store.kind(), "embedded");
        assert!(e.secret_file.starts_with(DEFAULT_STATE));
    }

    #[test]
    fn a_group_names_the_load_balancer_that_drains_its_nodes() {
        let c = load_text(
            "[[lock.groups]]\nname = \"app\"\n[lock.groups.load-balancer]\ntype = \"haproxy\"\n\
             socket = \"/run/lb.sock\"\ndrain-timeout = \"5s\"\n",
        )
        .unwrap();
        let d = c.group("app").drain.unwrap();
        assert_eq!(d.haproxy.backend, "nodes");
        assert_eq!(d.timeout, Duration::from_secs(5));
        assert_eq!(
            (d.min_serving, d.gate(2)),
            (None, 2),
            "every other in service"
        );
        assert!(c.group("other").drain.is_none());
        let c = load_text(
            "[[lock.groups]]\nname = \"app\"\n[lock.groups.load-balancer]\ntype = \"haproxy\"\n\
             socket = \"/run/lb.sock\"\nmin-serving = 1\n",
        )
        .unwrap();
        let d = c.group("app").drain.unwrap();
        assert_eq!(
            (d.gate(2), d.gate(0)),
            (1, 1),
            "one other up, whatever is dead"
        );
        let e = load_text(
            "[[lock.groups]]\nname = \"app\"\n[lock.groups.load-balancer]\ntype = \"haproxy\"\n\
             socket = \"/run/lb.sock\"\nmin-serving = 0\n",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("lock.toml:6: key `min-serving`"),
            "{e:#}"
        );
        let e = load_text(
            "[[lock.groups]]\nname = \"app\"\n[lock.groups.load-balancer]\ntype = \"f5\"\nsocket = \"/x\"\n",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("lock.toml:4: key `type`"),
            "{e:#}"
        );
    }

    #[test]
    fn bad_values_name_the_file_line_and_key() {
        for (text, want) in [
            (
                "[lock]\nlease-ttl = \"soon\"\n",
                "lock.toml:2: key `lock.lease-ttl`",
            ),
            ("[lock]\nslots = 1\n", "unknown field `slots`"),
            (
                "[service]\naddress = \"nowhere\"\n",
                "key `service.address`",
            ),
            (
                "[etcd3]\nendpoints = [\"127.0.0.1:2379\"]\n",
                "key `etcd3.endpoints`",
            ),
            (
                "[etcd3]\nendpoints = [\"http://a:1\"]\n",
                "key `auth.secret-file` is missing",
            ),
            (
                "[[lock.groups]]\nname = \"a b\"\n",
                "lock.toml:2: key `lock.groups.name`",
            ),
            (
                "[[lock.groups]]\nname = \"a\"\n[[lock.groups]]\nname = \"a\"\n",
                "listed twice",
            ),
            (
                "[lock]\nlease-ttl = \"10s\"\nrenew-interval = \"10s\"\n",
                "must be shorter",
            ),
            ("[store]\n[etcd3]\nendpoints = []\n", "both given"),
        ] {
            let e = format!("{:#}", load_text(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
