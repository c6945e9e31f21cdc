//! Fleet manifests: the nodes (and who provides them), the load balancer in front of them, the
//! service's health check, and the rollout policy.
//!
//! Parsed like the other manifests: raw TOML (unknown keys are errors, every key optional) → a
//! validated [`Fleet`] whose errors name the file, the line and the key. An impossible policy
//! (no node left serving, fewer than the minimum healthy, a surge on a provider that cannot make
//! nodes) is an error here, before anything runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::base::span::{check_name, parse_toml};
use crate::base::units::{parse_duration, parse_size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFleet {
    name: Option<Spanned<String>>,
    provider: Option<Spanned<RawProvider>>,
    service: Option<Spanned<RawService>>,
    load_balancer: Option<Spanned<RawLoadBalancer>>,
    policy: Option<Spanned<RawPolicy>>,
    repo: Option<Spanned<RawRepo>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRepo {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProvider {
    #[serde(rename = "type")]
    kind: Option<String>,
    image: Option<String>,
    nodes: Option<u32>,
    memory: Option<String>,
    hosts: Option<Vec<Spanned<RawHost>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    name: String,
    address: String,
    ssh_port: Option<u16>,
    user: Option<String>,
    identity: Option<String>,
    service_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    port: Option<u16>,
    health_path: Option<String>,
    health_interval: Option<String>,
    health_timeout: Option<String>,
    healthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoadBalancer {
    #[serde(rename = "type")]
    kind: Option<String>,
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPolicy {
    strategy: Option<String>,
    max_unavailable: Option<toml::Value>,
    max_surge: Option<toml::Value>,
    min_healthy: Option<toml::Value>,
    bake_time: Option<String>,
    drain_timeout: Option<String>,
    node_timeout: Option<String>,
    on_failure: Option<String>,
}

/// Who provides the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Local QEMU VMs booted from the newest image an image manifest built.
    Qemu {
        /// The image manifest (its stream metadata names the newest image).
        image: PathBuf,
        nodes: u32,
        memory_mib: u64,
    },
    /// Existing hosts reached over SSH; cannot make or remove nodes.
    Ssh { hosts: Vec<Host> },
}

impl Provider {
    /// Can this provider make new nodes (the `replace` strategy, a surge)?
    pub fn can_create(&self) -> bool {
        matches!(self, Provider::Qemu { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Qemu { .. } => "qemu",
            Provider::Ssh { .. } => "ssh",
        }
    }
}

/// An existing host of the `ssh` provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub ssh_port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    /// Where the load balancer reaches the service (`address:port`).
    pub service_address: String,
}

/// The service the nodes carry, and how to tell it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub port: u16,
    pub health_path: String,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// Consecutive successes that make a node healthy.
    pub healthy_threshold: u32,
}

/// How a rollout moves nodes to the new commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Upgrade and reboot each node where it is.
    InPlace,
    /// Boot new nodes from the newest image and discard the old ones.
    Replace,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in-place" => Some(Strategy::InPlace),
            "replace" => Some(Strategy::Replace),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::InPlace => "in-place",
            Strategy::Replace => "replace",
        }
    }
}

/// What a failure does to the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop; nothing else is touched.
    Halt,
    /// Stop, and return the nodes already updated to their previous commit.
    Rollback,
}

/// The rollout policy, with counts resolved against the fleet's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub strategy: Strategy,
    /// Nodes out of service at a time.
    pub max_unavailable: u32,
    /// Extra nodes at a time (replace).
    pub max_surge: u32,
    /// Nodes that must keep serving.
    pub min_healthy: u32,
    pub bake_time: Duration,
    pub drain_timeout: Duration,
    pub node_timeout: Duration,
    pub on_failure: OnFailure,
}

/// A validated fleet manifest.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub path: PathBuf,
    pub name: String,
    pub provider: Provider,
    pub service: Service,
    /// Where HAProxy listens for clients.
    pub listen: String,
    pub policy: Policy,
    /// Where a rollout serves the repo while it runs, for nodes whose remote points at this
    /// machine (`None`: the nodes' remote is served elsewhere).
    pub repo_listen: Option<String>,
}

impl Fleet {
    /// How many nodes the fleet has.
    pub fn size(&self) -> u32 {
        match &self.provider {
            Provider::Qemu { nodes, .. } => *nodes,
            Provider::Ssh { hosts } => hosts.len() as u32,
        }
    }
}

/// A count of nodes, or a percentage of the fleet.
fn count(v: &toml::Value, n: u32, round_up: bool) -> Option<u32> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => u32::try_from(*i).ok(),
        toml::Value::String(s) => {
            let p: u64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
            if p > 100 {
                return None;
            }
            let num = u64::from(n) * p;
            let c = if round_up {
                num.div_ceil(100)
            } else {
                num / 100
            };
            u32::try_from(c).ok()
        }
        _ => None,
    }
}

/// Load and validate the fleet manifest at `path`.
pub fn load(path: &Path) -> Result<Fleet> {
    let (doc, raw): (_, RawFleet) = parse_toml(path, "fleet manifest")?;
    let file = &doc.file;
    let at = |offset: usize| doc.at(offset);
    let dir = path.parent().unwrap_or(Path::new("."));

    let name = doc.required(&raw.name, "name")?;
    check_name(name, "name", 64, &at)?;
    let n = name.get_ref();

    let provider = raw
        .provider
        .ok_or_else(|| anyhow!("{file}: table `[provider]` is missing"))?;
    let p_at = at(provider.span().start);
    let p = provider.into_inner();
    let provider = match p.kind.as_deref() {
        Some("qemu") => {
            let image = p.image.ok_or_else(|| {
                anyhow!("{p_at}: key `provider.image`: the qemu provider needs an image manifest")
            })?;
            let image = dir.join(image);
            if !image.is_file() {
                bail!(
                    "{p_at}: key `provider.image`: {} does not exist",
                    image.display()
                );
            }
            let nodes = p.nodes.unwrap_or(3);
            if nodes == 0 || nodes > 32 {
                bail!("{p_at}: key `provider.nodes`: {nodes} is not 1 to 32");
            }
            let memory = p.memory.as_deref().unwrap_or("1024M");
            let memory_mib = parse_size(memory)
                .map(|b| b >> 20)
                .filter(|m| *m >= 256)
                .ok_or_else(|| {
                    anyhow!(
                        "{p_at}: key `provider.memory`: {memory:?} is not a size of 256M or more"
                    )
                })?;
            if p.hosts.is_some() {
                bail!("{p_at}: key `provider.hosts`: only the ssh provider lists hosts");
            }
            Provider::Qemu {
                image,
                nodes,
                memory_mib,
            }
        }
        Some("ssh") => {
            let hosts = p.hosts.unwrap_or_default();
            if hosts.is_empty() {
                bail!("{p_at}: key `provider.hosts`: the ssh provider needs at least one host");
            }
            let mut out: Vec<Host> = Vec::new();
            for h in hosts {
                let h_at = at(h.span().start);
                let h = h.into_inner();
                if out.iter().any(|o| o.name == h.name) || h.name.is_empty() {
                    bail!(
                        "{h_at}: key `provider.hosts.name`: {:?} is empty or not unique",
                        h.name
                    );
                }
                out.push(Host {
                    service_address: h
                        .service_address
                        .unwrap_or_else(|| format!("{}:80", h.address)),
                    ssh_port: h.ssh_port.unwrap_or(22),
                    user: h.user.unwrap_or_else(|| "root".into()),
                    identity: h.identity.map(|i| dir.join(i)),
                    address: h.address,
                    name: h.name,
                });
            }
            Provider::Ssh { hosts: out }
        }
        Some(other) => bail!("{p_at}: key `provider.type`: {other:?} is not `qemu` or `ssh`"),
        None => bail!("{p_at}: key `provider.type` is missing (`qemu` or `ssh`)"),
    };

    let service = match raw.service {
        None => Service {
            port: 80,
            health_path: "/".into(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            healthy_threshold: 3,
        },
        Some(s) => {
            let s_at = at(s.span().start);
            let s = s.into_inner();
            let dur = |v: &Option<String>, key: &str, default: u64| -> Result<Duration> {
                match v {
                    None => Ok(Duration::from_secs(default)),
                    Some(d) => parse_duration(d).ok_or_else(|| {
                        anyhow!("{s_at}: key `service.{key}`: {d:?} is not a duration like \"2s\"")
                    }),
                }
            };
            let path = s.health_path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(char::is_control) {
                bail!("{s_at}: key `service.health-path`: {path:?} must start with `/`");
            }
            let threshold = s.healthy_threshold.unwrap_or(3);
            if threshold == 0 {
                bail!("{s_at}: key `service.healthy-threshold` must be at least 1");
            }
            Service {
                port: s.port.unwrap_or(80),
                health_path: path,
                health_interval: dur(&s.health_interval, "health-interval", 1)?,
                health_timeout: dur(&s.health_timeout, "health-timeout", 2)?,
                healthy_threshold: threshold,
            }
        }
    };

    let listen = match raw.load_balancer {
        None => "127.0.0.1:8080".to_string(),
        Some(lb) => {
            let l_at = at(lb.span().start);
            let lb = lb.into_inner();
            match lb.kind.as_deref() {
                None | Some("haproxy") => {}
                Some(other) => {
                    bail!("{l_at}: key `load-balancer.type`: {other:?} is not `haproxy`")
                }
            }
            let listen = lb.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
            if listen.parse::<std::net::SocketAddr>().is_err() {
                bail!("{l_at}: key `load-balancer.listen`: {listen:?} is not an address:port");
            }
            listen
        }
    };

    let size = match &provider {
        Provider::Qemu { nodes, .. } => *nodes,
        Provider::Ssh { hosts } => hosts.len() as u32,
    };
    let policy = policy(raw.policy, size, &provider, &at, file)?;
    let repo_listen = match raw.repo {
        None => None,
        Some(r) => {
            let r_at = at(r.span().start);
            match r.into_inner().listen {
                Some(l) if l.parse::<std::net::SocketAddr>().is_ok() => Some(l),
                Some(l) => bail!("{r_at}: key `repo.listen`: {l:?} is not an address:port"),
                None => bail!("{r_at}: key `repo.listen` is missing"),
            }
        }
    };
    Ok(Fleet {
        path: path.to_path_buf(),
        name: n.clone(),
        provider,
        service,
        listen,
        policy,
        repo_listen,
    })
}

fn policy(
    raw: Option<Spanned<RawPolicy>>,
    size: u32,
    provider: &Provider,
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Policy> {
    let (p_at, p) = match raw {
        Some(p) => (at(p.span().start), p.into_inner()),
        None => (
            file.to_string(),
            RawPolicy {
                strategy: None,
                max_unavailable: None,
                max_surge: None,
                min_healthy: None,
                bake_time: None,
                drain_timeout: None,
                node_timeout: None,
                on_failure: None,
            },
        ),
    };
    let strategy = match p.strategy.as_deref() {
        None => Strategy::InPlace,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            anyhow!("{p_at}: key `policy.strategy`: {s:?} is not `in-place` or `replace`")
        })?,
    };
    let resolve = |v: &Option<toml::Value>, key: &str, default: u32, up: bool| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(v) => count(v, size, up).ok_or_else(|| {
                anyhow!(
                    "{p_at}: key `policy.{key}`: {v} is not a count or a percentage like \"25%\""
                )
            }),
        }
    };
    let max_unavailable = resolve(&p.max_unavailable, "max-unavailable", 1, false)?.max(
        // A percentage that rounds to zero still lets one node go at a time.
        u32::from(p.max_unavailable.is_some()),
    );
    let max_surge = resolve(&p.max_surge, "max-surge", 0, true)?;
    let min_healthy = resolve(&p.min_healthy, "min-healthy", 0, true)?;
    if max_unavailable >= size {
        bail!(
            "{p_at}: key `policy.max-unavailable`: {max_unavailable} would take all {size} nodes \
             out of service at once"
        );
    }
    if p.min_healthy.is_some() && size - max_unavailable < min_healthy {
        bail!(
            "{p_at}: key `policy.max-unavailable`: {max_unavailable} of {size} nodes out leaves \
             fewer than `min-healthy` ({min_healthy}) serving"
        );
    }
    if max_surge > 0 && !provider.can_create() {
        bail!(
            "{p_at}: key `policy.max-surge`: the {} provider cannot create nodes",
            provider.kind()
        );
    }
    if strategy == Strategy::Replace && !provider.can_create() {
        bail!(
            "{p_at}: key `policy.strategy`: `replace` needs a provider that creates nodes, not {}",
            provider.kind()
        );
    }
    let dur = |v: &Option<String>, key: &str, default: u64| -> Result<Duration> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(d) => parse_duration(d).ok_or_else(|| {
                anyhow!("{p_at}: key `policy.{key}`: {d:?} is not a duration like \"30s\"")
            }),
        }
    };
    let on_failure = match p.on_failure.as_deref() {
        None | Some("halt") => OnFailure::Halt,
        Some("rollback") => OnFailure::Rollback,
        Some(other) => {
            bail!("{p_at}: key `policy.on-failure`: {other:?} is not `halt` or `rollback`")
        }
    };
    Ok(Policy {
        strategy,
        max_unavailable,
        max_surge,
        min_healthy,
        bake_time: dur(&p.bake_time, "bake-time", 10)?,
        drain_timeout: dur(&p.drain_timeout, "drain-timeout", 60)?,
        node_timeout: dur(&p.node_timeout, "node-timeout", 1200)?,
        on_failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        std::fs::write(dir.join("img.toml"), "").unwrap();
        let p = dir.join("fleet.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const QEMU: &str =
        "name = \"web\"\n[provider]\ntype = \"qemu\"\nimage = \"img.toml\"\nnodes = 3\n";

    #[test]
    fn defaults_and_percentages() {
        let d = tempfile::tempdir().unwrap();
        let f = load(&write(d.path(), QEMU)).unwrap();
        assert_eq!(f.size(), 3);
        assert_eq!(f.policy.max_unavailable, 1);
        assert_eq!(f.policy.strategy, Strategy::InPlace);
        assert_eq!(f.listen, "127.0.0.1:8080");
        let f = load(&write(
            d.path(),
            &format!("{QEMU}[policy]\nmax-unavailable = \"34%\"\nmax-surge = \"34%\"\nmin-healthy = \"66%\"\non-failure = \"rollback\"\n"),
        ))
        .unwrap();
        assert_eq!(f.policy.max_unavailable, 1);
        assert_eq!(f.policy.max_surge, 2, "a surge rounds up");
        assert_eq!(f.policy.min_healthy, 2);
        assert_eq!(f.policy.on_failure, OnFailure::Rollback);
    }

    #[test]
    fn impossible_policies_and_bad_keys_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let ssh = "name = \"web\"\n[provider]\ntype = \"ssh\"\n[[provider.hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[provider.hosts]]\nname = \"b\"\naddress = \"10.0.0.2\"\n";
        let cases: Vec<(String, &str)> = vec![
            (format!("{QEMU}bogus = 1\n"), "bogus"),
            (
                format!("{QEMU}[policy]\nmax-unavailable = 3\n"),
                "key `policy.max-unavailable`",
            ),
            (
                format!("{QEMU}[policy]\nmax-unavailable = 2\nmin-healthy = 2\n"),
                "fewer than `min-healthy`",
            ),
            (
                format!("{ssh}[policy]\nmax-surge = 1\n"),
                "cannot create nodes",
            ),
            (
                format!("{ssh}[policy]\nstrategy = \"replace\"\n"),
                "key `policy.strategy`",
            ),
            (
                format!("{QEMU}[policy]\nmax-unavailable = \"lots\"\n"),
                "key `policy.max-unavailable`",
            ),
            (
                format!("{QEMU}[policy]\nbake-time = \"soon\"\n"),
                "key `policy.bake-time`",
            ),
            (
                format!("{QEMU}[service]\nhealth-path = \"x\"\n"),
                "key `service.health-path`",
            ),
            (
                "name = \"web\"\n[provider]\ntype = \"ec2\"\n".into(),
                "key `provider.type`",
            ),
            (
                "name = \"../x\"\n[provider]\ntype = \"qemu\"\n".into(),
                "key `name`",
            ),
            (
                "name = \"w\"\n[provider]\ntype = \"qemu\"\nimage = \"none.toml\"\n".into(),
                "key `provider.image`",
            ),
        ];
        for (body, want) in cases {
            let e = format!("{:#}", load(&write(d.path(), &body)).unwrap_err());
            assert!(
                e.contains(want) && e.contains("fleet.toml"),
                "{body}\n→ {e}"
            );
        }
    }
}
