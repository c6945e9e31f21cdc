//! Talking to one node: its own agent (`cairn node …` over SSH) for its state and its moves,
//! and its service's health check over HTTP. The node's verdict after a reboot — healthy on the
//! new commit, or rolled back by itself and why — comes from the node, never from a guess.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::manifest::Service;
use crate::node::api::{self, Verdict};
use crate::node::view::split_refspec;
use crate::vm::ssh::Ssh;

/// What the node says of itself: the parts of its status document ([`api::Status`]) a rollout
/// follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub boot_id: String,
    pub commit: String,
    /// The booted commit's version (empty for a commit without one).
    pub version: String,
    /// The ref its deployment follows (empty when it follows none).
    pub ref_: String,
    /// The commit the next boot starts (the default deployment): the new one once deployed.
    pub default_commit: String,
    /// The node's verdict on this boot.
    pub verdict: Verdict,
    /// Its last automatic rollback: the commit that failed, and why.
    pub last_rollback: Option<(String, String)>,
    /// The key that signed the booted commit as the node's remote verifies it (`None`: the node
    /// verifies nothing, or its commit is unsigned).
    pub signed_by: Option<String>,
    /// The remote its deployment follows (the part of its origin before `:`; empty for none).
    pub remote: String,
}

/// Why a node did not reach the new commit.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error("{node} rolled itself back from {commit}: {reason}")]
    RolledBack {
        node: String,
        commit: String,
        reason: String,
    },
    #[error("{node} vanished (its machine is gone)")]
    Vanished { node: String },
}

/// Decode node `node`'s `cairn node status --json` (and the boot id printed before it), strictly:
/// a missing field, an unknown value or a newer format is an error naming the node and the field.
pub fn parse_status(node: &str, boot_id: &str, json: &str) -> Result<NodeStatus> {
    let s = api::read(json.as_bytes())
        .with_context(|| format!("{node}: reading `cairn node status --json`"))?;
    let booted = s.booted.as_ref().with_context(|| {
        format!("{node}: `cairn node status --json` names no booted deployment")
    })?;
    Ok(NodeStatus {
        boot_id: boot_id.to_string(),
        commit: booted.commit.clone(),
        version: booted.version.clone().unwrap_or_default(),
        ref_: booted.ref_.clone().unwrap_or_default(),
        default_commit: s
            .default_deployment()
            .map_or_else(|| booted.commit.clone(), |d| d.commit.clone()),
        verdict: s.verdict,
        signed_by: s.booted().and_then(|d| d.signed_by.clone()),
        last_rollback: s.last_rollback.map(|r| (r.commit, r.reason)),
        remote: booted
            .origin
            .as_deref()
            .and_then(split_refspec)
            .map(|(r, _)| r.to_string())
            .unwrap_or_default(),
    })
}

/// The keyring the node's remote `remote` trusts (libostree's `<remote>.trustedkeys.gpg` in the
/// node's repo), to check a commit against exactly the keys the node will.
pub fn trusted_keyring(node: &str, ssh: &Ssh, remote: &str) -> Result<Vec<u8>> {
    let q = crate::base::cmd::shell_quote;
    let file = format!("/ostree/repo/{remote}.trustedkeys.gpg");
    let out = ssh
        .run(
            &format!("od -An -v -tx1 {} | tr -d ' \\n'", q(&file)),
            Duration::from_secs(60),
        )
        .with_context(|| format!("{node}: reading {file}"))?;
    hex::decode(out.stdout.trim()).with_context(|| format!("{node}: {file} read as hex"))
}

/// Node `node`'s state now (an error when SSH does not answer).
pub fn status(node: &str, ssh: &Ssh) -> Result<NodeStatus> {
    let out = ssh.run(
        "cat /proc/sys/kernel/random/boot_id && cairn node status --json",
        Duration::from_secs(60),
    )?;
    let (id, json) = out.stdout.split_once('\n').unwrap_or(("", ""));
    parse_status(node, id.trim(), json)
}

/// Deploy `to_ref`'s newest commit as the next boot's (rebasing when the node follows another
/// ref), without rebooting.
pub fn deploy(ssh: &Ssh, current_ref: &str, to_ref: &str, limit: Duration) -> Result<()> {
    let q = crate::base::cmd::shell_quote;
    let cmd = if current_ref == to_ref {
        "cairn node upgrade".to_string()
    } else {
        format!("cairn node rebase {}", q(to_ref))
    };
    ssh.run(&cmd, limit)
        .with_context(|| format!("`{cmd}` on the node"))?;
    Ok(())
}

/// Make the previous deployment the default again (`on-failure = "rollback"`).
pub fn rollback(ssh: &Ssh, limit: Duration) -> Result<()> {
    ssh.run("cairn node rollback", limit)
        .context("`cairn node rollback` on the node")?;
    Ok(())
}

/// Reboot the node (the connection drops; that is expected).
pub fn reboot(ssh: &Ssh) {
    let _ = ssh.status("systemctl reboot", Duration::from_secs(30));
}

/// Wait until the node, booted again (a boot id other than `before`), gives its verdict on
/// `target`: Ok when it runs it and calls the boot good; [`NodeFailure::RolledBack`] when it
/// fell back and says why; an error naming the last state seen when `deadline` passes or
/// `alive` says the machine is gone.
pub fn await_verdict(
    name: &str,
    ssh: &Ssh,
    before: &str,
    target: &str,
    deadline: Instant,
    alive: &dyn Fn() -> bool,
) -> Result<NodeStatus> {
    let mut last;
    loop {
        crate::base::interrupt::check()?;
        if !alive() {
            return Err(NodeFailure::Vanished {
                node: name.to_string(),
            }
            .into());
        }
        match status(name, ssh) {
            Ok(st) if st.boot_id != before && !st.boot_id.is_empty() => {
                if let Some((c, reason)) = &st.last_rollback {
                    if c == target && st.commit != target {
                        return Err(NodeFailure::RolledBack {
                            node: name.to_string(),
                            commit: c.clone(),
                            reason: reason.clone(),
                        }
                        .into());
                    }
                }
                if st.commit == target && st.verdict == Verdict::Good {
                    return Ok(st);
                }
                last = format!(
                    "booted {} ({}), verdict {}",
                    st.version, st.commit, st.verdict
                );
            }
            Ok(_) => last = "not rebooted yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{name} gave no verdict in time (last: {last})");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// One health check of the service at `addr` (`host:port`): a 2xx or 3xx answer.
pub fn check(addr: &str, s: &Service) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(s.health_timeout).build();
    let url = format!("http://{addr}{}", s.health_path);
    match agent.get(&url).call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, _)) => bail!("{url} answered {code}"),
        Err(e) => bail!("{url}: {e}"),
    }
}

/// Wait for `healthy_threshold` consecutive successful checks, `health_interval` apart.
pub fn await_healthy(addr: &str, s: &Service, deadline: Instant) -> Result<()> {
    let mut streak = 0;
    let mut last = String::new();
    loop {
        crate::base::interrupt::check()?;
        match check(addr, s) {
            Ok(()) => streak += 1,
            Err(e) => {
                streak = 0;
                last = format!("{e:#}");
            }
        }
        if streak >= s.healthy_threshold {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the service at {addr} did not pass {} checks in a row (last: {last})",
                s.healthy_threshold
            );
        }
        std::thread::sleep(s.health_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full status document of the current format (the node's fixture).
    const FIXTURE: &str = include_str!("../node/api/status-v1.json");

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn status_json_is_read() {
        let st = parse_status("app-1", "b1", FIXTURE).unwrap();
        assert_eq!(st.boot_id, "b1");
        assert_eq!(st.commit, "b".repeat(64));
        assert_eq!(
            (st.version.as_str(), st.ref_.as_str()),
            ("1.3", "cairn/amd64/app")
        );
        assert_eq!(st.verdict, Verdict::Trial);
        let (c, reason) = st.last_rollback.unwrap();
        assert_eq!(c, "c".repeat(64));
        assert!(reason.starts_with("1 trial boot spent"), "{reason}");
        assert_eq!(st.default_commit, "b".repeat(64));
        assert_eq!(st.remote, "cairn");
        assert!(
            st.signed_by
                .as_deref()
                .is_some_and(|k| k.contains("8A3F1C2B4D5E6F70")),
            "the booted deployment's signer: {:?}",
            st.signed_by
        );
        let json = edited(|v| {
            v["verdict"] = "good".into();
            v["deployments"][0]["index"] = 1.into();
            v["deployments"][1]["index"] = 0.into();
            v["last_rollback"] = serde_json::Value::Null;
        });
        let st = parse_status("app-1", "b1", &json).unwrap();
        assert_eq!(st.verdict, Verdict::Good);
        assert_eq!(st.default_commit, "a".repeat(64), "the default is index 0");
        assert!(st.last_rollback.is_none());
        let json = edited(|v| v["deployments"] = serde_json::json!([]));
        let st = parse_status("app-1", "b1", &json).unwrap();
        assert_eq!(
            st.default_commit,
            "b".repeat(64),
            "no deployments listed: the booted one"
        );
        let json = edited(|v| {
            v["booted"]["version"] = serde_json::Value::Null;
            v["booted"]["ref"] = serde_json::Value::Null;
        });
        let st = parse_status("app-1", "b1", &json).unwrap();
        assert_eq!((st.version.as_str(), st.ref_.as_str()), ("", ""));
        let json = edited(|v| {
            v["booted"]["origin"] = serde_json::Value::Null;
            v["deployments"][0]["signed_by"] = serde_json::Value::Null;
        });
        let st = parse_status("app-1", "b1", &json).unwrap();
        assert_eq!((st.remote.as_str(), st.signed_by), ("", None));
    }

    #[test]
    fn a_broken_status_is_an_error_naming_the_node_and_the_field() {
        let e = |json: &str| format!("{:#}", parse_status("app-3", "b1", json).unwrap_err());
        let missing = edited(|v| {
            v.as_object_mut().unwrap().remove("verdict");
        });
        let m = e(&missing);
        assert!(
            m.starts_with("app-3: ") && m.contains("missing field `verdict`"),
            "{m}"
        );
        let m = e(&edited(|v| v["state"] = "sleeping".into()));
        assert!(
            m.starts_with("app-3: ") && m.contains("state: unknown variant `sleeping`"),
            "{m}"
        );
        let m = e(&edited(|v| v["format"] = 2.into()));
        assert!(
            m.starts_with("app-3: ") && m.contains("format 2 is newer"),
            "{m}"
        );
        let m = e(&edited(|v| v["booted"] = serde_json::Value::Null));
        assert!(
            m.starts_with("app-3: ") && m.contains("no booted deployment"),
            "{m}"
        );
        let m = e("not json");
        assert!(m.starts_with("app-3: "), "{m}");
    }
}
