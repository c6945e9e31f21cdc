//! Talking to one node: its own agent (`cairn node …` over SSH) for its state and its moves,
//! and its service's health check over HTTP. The node's verdict after a reboot — healthy on the
//! new commit, or rolled back by itself and why — comes from the node, never from a guess.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::manifest::Service;
use crate::vm::ssh::Ssh;

/// What the node says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub boot_id: String,
    pub commit: String,
    pub version: String,
    /// The ref its deployment follows.
    pub ref_: String,
    /// The commit the next boot starts (the default deployment): the new one once deployed.
    pub default_commit: String,
    /// The node's verdict on this boot: `good`, `trial`, `failed`, or `unknown`.
    pub verdict: String,
    /// Its last automatic rollback: the commit that failed, and why.
    pub last_rollback: Option<(String, String)>,
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

/// Decode `cairn node status --json` (and the boot id printed before it).
pub fn parse_status(boot_id: &str, json: &str) -> Result<NodeStatus> {
    let v: Value = serde_json::from_str(json).context("`cairn node status --json` is not JSON")?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let booted = &v["booted"];
    let last = &v["last_rollback"];
    Ok(NodeStatus {
        boot_id: boot_id.to_string(),
        commit: s(&booted["commit"]),
        version: s(&booted["version"]),
        ref_: s(&booted["ref"]),
        default_commit: v["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["index"] == 0))
            .map_or_else(|| s(&booted["commit"]), |d| s(&d["commit"])),
        verdict: match v["verdict"].as_str() {
            Some(x) => x.to_string(),
            None => "unknown".into(),
        },
        last_rollback: last["commit"]
            .as_str()
            .map(|c| (c.to_string(), s(&last["reason"]))),
    })
}

/// The node's state now (an error when SSH does not answer).
pub fn status(ssh: &Ssh) -> Result<NodeStatus> {
    let out = ssh.run(
        "cat /proc/sys/kernel/random/boot_id && cairn node status --json",
        Duration::from_secs(60),
    )?;
    let (id, json) = out.stdout.split_once('\n').unwrap_or(("", ""));
    parse_status(id.trim(), json)
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
        match status(ssh) {
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
                if st.commit == target && st.verdict == "good" {
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

    #[test]
    fn status_json_is_read() {
        let st = parse_status(
            "b1",
            r#"{"booted":{"commit":"c2","version":"1.2","ref":"cairn/amd64/app"},"verdict":"good","last_rollback":{"commit":"c3","reason":"health check 50-fail failed"}}"#,
        )
        .unwrap();
        assert_eq!(st.commit, "c2");
        assert_eq!(st.verdict, "good");
        assert_eq!(st.last_rollback.unwrap().0, "c3");
        assert_eq!(
            st.default_commit, "c2",
            "no deployments listed: the booted one"
        );
        let st = parse_status(
            "b1",
            r#"{"booted":{"commit":"c1"},"deployments":[{"index":0,"commit":"c2"},{"index":1,"commit":"c1"}]}"#,
        )
        .unwrap();
        assert_eq!(st.default_commit, "c2");
        let st = parse_status("b1", r#"{"booted":{"commit":"c1"}}"#).unwrap();
        assert_eq!(st.verdict, "unknown");
        assert!(st.last_rollback.is_none());
        assert!(parse_status("b", "not json").is_err());
    }
}
