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
use crate::base::units::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFleet {
    name: Option<Spanned<String>>,
    provider: Option<Spanned<provider::RawProvider>>,
    service: Option<Spanned<RawService>>,
    load_balancer: Option<Spanned<RawLoadBalancer>>,
    policy: Option<Spanned<policy::RawPolicy>>,
    repo: Option<Spanned<RawRepo>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRepo {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    port: Option<u16>,
    health_path: Option<String>,
    health_interval: Option<String>,
    health_timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoadBalancer {
    #[serde(rename = "type")]
    kind: Option<String>,
    listen: Option<String>,
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
    /// Consecutive failed checks that take a serving node out of the load balancer.
    pub unhealthy_threshold: u32,
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
        node_count(&self.provider)
    }
}

/// How many nodes a provider has.
fn node_count(provider: &Provider) -> u32 {
    match provider {
        Provider::Qemu { nodes, .. } => *nodes,
        Provider::Ssh { hosts } => hosts.len() as u32,
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
    let provider = provider::provider(raw.provider, dir, &at, file)?;
    let service = service(raw.service, &at)?;
    let listen = listen(raw.load_balancer, &at)?;
    let size = node_count(&provider);
    let policy = policy::policy(raw.policy, size, &provider, &at, file)?;
    let repo_listen = repo_listen(raw.repo, &at)?;
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

/// A duration key of table `at`; `default` seconds when absent.
fn duration(v: &Option<String>, at: &str, key: &str, default: u64, like: &str) -> Result<Duration> {
    match v {
        None => Ok(Duration::from_secs(default)),
        Some(d) => parse_duration(d)
            .ok_or_else(|| anyhow!("{at}: key `{key}`: {d:?} is not a duration like \"{like}\"")),
    }
}

/// `[service]`: the port and the health check; defaults without the table.
fn service(raw: Option<Spanned<RawService>>, at: &dyn Fn(usize) -> String) -> Result<Service> {
    let Some(s) = raw else {
        return Ok(Service {
            port: 80,
            health_path: "/".into(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            healthy_threshold: 3,
            unhealthy_threshold: 2,
        });
    };
    let s_at = at(s.span().start);
    let s = s.into_inner();
    let path = s.health_path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        bail!("{s_at}: key `service.health-path`: {path:?} must start with `/`");
    }
    let threshold = s.healthy_threshold.unwrap_or(3);
    if threshold == 0 {
        bail!("{s_at}: key `service.healthy-threshold` must be at least 1");
    }
    let unhealthy = s.unhealthy_threshold.unwrap_or(2);
    if !(1..=10).contains(&unhealthy) {
        bail!("{s_at}: key `service.unhealthy-threshold`: {unhealthy} is not 1 to 10");
    }
    let port = crate::base::net::port(s.port.unwrap_or(80))
        .map_err(|e| anyhow!("{s_at}: key `service.port`: {e}"))?;
    Ok(Service {
        port,
        health_path: path,
        health_interval: duration(
            &s.health_interval,
            &s_at,
            "service.health-interval",
            1,
            "2s",
        )?,
        health_timeout: duration(&s.health_timeout, &s_at, "service.health-timeout", 2, "2s")?,
        healthy_threshold: threshold,
        unhealthy_threshold: unhealthy,
    })
}

/// `[load-balancer]`: HAProxy, and where it listens for clients.
fn listen(raw: Option<Spanned<RawLoadBalancer>>, at: &dyn Fn(usize) -> String) -> Result<String> {
    let Some(lb) = raw else {
        return Ok("127.0.0.1:8080".to_string());
    };
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
    Ok(listen)
}

/// `[repo]`: where a rollout serves the repo, if the table is there.
fn repo_listen(
    raw: Option<Spanned<RawRepo>>,
    at: &dyn Fn(usize) -> String,
) -> Result<Option<String>> {
    let Some(r) = raw else {
        return Ok(None);
    };
    let r_at = at(r.span().start);
    match r.into_inner().listen {
        Some(l) if l.parse::<std::net::SocketAddr>().is_ok() => Ok(Some(l)),
        Some(l) => bail!("{r_at}: key `repo.listen`: {l:?} is not an address:port"),
        None => bail!("{r_at}: key `repo.listen` is missing"),
    }
}

mod policy;
mod provider;

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
        // An ssh host's defaults: port 22, root, the service on port 80 of its address.
        std::fs::write(d.path().join("id"), "key").unwrap();
        let f = load(&write(
            d.path(),
            "name = \"w\"\n[provider]\ntype = \"ssh\"\n[[provider.hosts]]\nname = \"a\"\naddress = \"fd00::5\"\nidentity = \"id\"\n[[provider.hosts]]\nname = \"b\"\naddress = \"b.example.net\"\nservice-address = \"b.example.net:8080\"\n",
        ))
        .unwrap();
        let Provider::Ssh { hosts } = &f.provider else {
            panic!("{:?}", f.provider)
        };
        assert_eq!(hosts[0].service_address, "[fd00::5]:80");
        assert_eq!((hosts[0].ssh_port, hosts[0].user.as_str()), (22, "root"));
        assert_eq!(hosts[0].identity, Some(d.path().join("id")));
    }

    #[test]
    fn impossible_policies_and_bad_keys_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let ssh = "name = \"web\"\n[provider]\ntype = \"ssh\"\n[[provider.hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[provider.hosts]]\nname = \"b\"\naddress = \"10.0.0.2\"\n";
        // One ssh host with the given keys.
        let host = |keys: &str| {
            format!("name = \"web\"\n[provider]\ntype = \"ssh\"\n[[provider.hosts]]\nname = \"a\"\n{keys}\n")
        };
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
            (
                format!("{QEMU}[policy]\nmax-unavailable = 0\n"),
                "key `policy.max-unavailable`: 0 of 3 nodes is 0",
            ),
            (
                format!("{QEMU}[policy]\nmax-unavailable = \"10%\"\n"),
                "key `policy.max-unavailable`: \"10%\" of 3 nodes is 0",
            ),
            (
                format!("{QEMU}[policy]\nstrategy = \"replace\"\nmax-unavailable = 0\n"),
                "nor adds one",
            ),
            (
                format!("{QEMU}[service]\nport = 0\n"),
                "key `service.port`: 0",
            ),
            (
                host("address = \"\""),
                "key `provider.hosts.address` of host \"a\": \"\" is empty",
            ),
            (host("address = \"a b\""), "key `provider.hosts.address`"),
            (
                host("address = \"h\"\nssh-port = 0"),
                "key `provider.hosts.ssh-port`",
            ),
            (
                host("address = \"h\"\nuser = \"\""),
                "key `provider.hosts.user`",
            ),
            (
                host("address = \"h\"\nidentity = \"no-key\""),
                "key `provider.hosts.identity`",
            ),
            (
                host("address = \"h\"\nservice-address = \"h\""),
                "key `provider.hosts.service-address`",
            ),
            (
                host("address = \"h\"\nservice-address = \"h:0\""),
                "key `provider.hosts.service-address`",
            ),
            (
                host("address = \"h\"\nservice-address = \"h:web\""),
                "key `provider.hosts.service-address`",
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
