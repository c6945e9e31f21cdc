//! `[provider]` of a fleet manifest: the qemu provider (an image manifest, a node count, the
//! memory of each) or the ssh provider (a list of existing hosts).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::base::net;
use crate::base::span::check_name;
use crate::base::units::parse_size;

use super::{Host, Provider};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawProvider {
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
    name: Spanned<String>,
    address: String,
    ssh_port: Option<u16>,
    user: Option<String>,
    identity: Option<String>,
    service_address: Option<String>,
}

/// The required `[provider]` table, by its `type`.
pub(super) fn provider(
    raw: Option<Spanned<RawProvider>>,
    dir: &Path,
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Provider> {
    let provider = raw.ok_or_else(|| anyhow!("{file}: table `[provider]` is missing"))?;
    let p_at = at(provider.span().start);
    let p = provider.into_inner();
    match p.kind.as_deref() {
        Some("qemu") => qemu(p, dir, &p_at),
        Some("ssh") => ssh(p, dir, at, &p_at),
        Some(other) => bail!("{p_at}: key `provider.type`: {other:?} is not `qemu` or `ssh`"),
        None => bail!("{p_at}: key `provider.type` is missing (`qemu` or `ssh`)"),
    }
}

/// The qemu provider: an existing image manifest, 1 to 32 nodes of 256 MiB or more.
fn qemu(p: RawProvider, dir: &Path, p_at: &str) -> Result<Provider> {
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
            anyhow!("{p_at}: key `provider.memory`: {memory:?} is not a size of 256M or more")
        })?;
    if p.hosts.is_some() {
        bail!("{p_at}: key `provider.hosts`: only the ssh provider lists hosts");
    }
    Ok(Provider::Qemu {
        image,
        nodes,
        memory_mib,
    })
}

/// The ssh provider: one host or more, each with a unique, non-empty name.
fn ssh(p: RawProvider, dir: &Path, at: &dyn Fn(usize) -> String, p_at: &str) -> Result<Provider> {
    let hosts = p.hosts.unwrap_or_default();
    if hosts.is_empty() {
        bail!("{p_at}: key `provider.hosts`: the ssh provider needs at least one host");
    }
    let mut out: Vec<Host> = Vec::new();
    for h in hosts {
        let h_at = at(h.span().start);
        let h = h.into_inner();
        // A node's name: a file name under the fleet's directory and a server in HAProxy's.
        check_name(&h.name, "provider.hosts.name", 64, at)?;
        if out.iter().any(|o| &o.name == h.name.get_ref()) {
            bail!(
                "{}: key `provider.hosts.name`: {:?} is not unique",
                at(h.name.span().start),
                h.name.get_ref()
            );
        }
        out.push(host(h, dir, &h_at)?);
    }
    Ok(Provider::Ssh { hosts: out })
}

/// One host of the ssh provider, every value checked: an address, a port, a user, an identity
/// file that can be read, the service's `host:port` (default: the address, port 80).
fn host(h: RawHost, dir: &Path, h_at: &str) -> Result<Host> {
    let key = |k: &str| {
        format!(
            "{h_at}: key `provider.hosts.{k}` of host {:?}",
            h.name.get_ref()
        )
    };
    net::host(&h.address).map_err(|e| anyhow!("{}: {:?} {e}", key("address"), h.address))?;
    let ssh_port =
        net::port(h.ssh_port.unwrap_or(22)).map_err(|e| anyhow!("{}: {e}", key("ssh-port")))?;
    let user = h.user.unwrap_or_else(|| "root".into());
    if user.is_empty()
        || user
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c.is_control())
    {
        bail!("{}: {user:?} is not a user name", key("user"));
    }
    let identity = match h.identity {
        None => None,
        Some(i) => {
            let p = dir.join(&i);
            if let Err(e) = std::fs::File::open(&p) {
                bail!("{}: {} cannot be read: {e}", key("identity"), p.display());
            }
            if !p.is_file() {
                bail!("{}: {} is not a file", key("identity"), p.display());
            }
            Some(p)
        }
    };
    let service_address = h.service_address.unwrap_or_else(|| {
        if h.address.contains(':') {
            format!("[{}]:80", h.address)
        } else {
            format!("{}:80", h.address)
        }
    });
    net::host_port(&service_address)
        .map_err(|e| anyhow!("{}: {service_address:?} {e}", key("service-address")))?;
    Ok(Host {
        service_address,
        ssh_port,
        user,
        identity,
        address: h.address,
        name: h.name.into_inner(),
    })
}
