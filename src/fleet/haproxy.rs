//! HAProxy in front of the fleet: its configuration, the daemon (started detached, so that it
//! keeps serving when an orchestrator dies, as a cloud's load balancer does), and its runtime
//! API on a Unix socket: `show stat`, `set server … state ready|drain|maint`, `add server`,
//! `del server`.
//!
//! Requests that fail to connect are retried on another server (`retries` with
//! `option redispatch`), and HAProxy's own health checks take a dead server out within seconds;
//! the rollout itself drains a node (no new sessions, the open ones finish) before it touches it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use crate::base::haproxy::{RuntimeApi, ServerStat, State};

use super::manifest::Service;
use crate::base::cmd::Cmd;

/// The one backend, whose servers are the fleet's nodes.
pub const BACKEND: &str = "nodes";

/// A running HAProxy of one fleet, reached through its files in `dir`.
#[derive(Debug, Clone)]
pub struct Haproxy {
    pub dir: PathBuf,
}

/// The configuration: one frontend on `listen`, the nodes as servers of [`BACKEND`].
pub fn config(dir: &Path, listen: &str, servers: &[(String, String)], s: &Service) -> String {
    let mut c = format!(
        "# Written by cairn: the fleet's load balancer.\n\
         global\n\
         \x20   stats socket {sock} mode 600 level admin\n\
         \x20   pidfile {pid}\n\
         \x20   log stderr format short local0 notice\n\
         defaults\n\
         \x20   mode http\n\
         \x20   log global\n\
         \x20   option httplog\n\
         \x20   option redispatch\n\
         \x20   retries 3\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         frontend fleet\n\
         \x20   bind {listen}\n\
         \x20   default_backend {BACKEND}\n\
         backend {BACKEND}\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET {path}\n\
         \x20   http-check expect status 200-399\n\
         \x20   timeout check {check}ms\n\
         \x20   default-server inter {inter}ms fall {fall} rise {rise}\n",
        sock = dir.join("admin.sock").display(),
        pid = dir.join("haproxy.pid").display(),
        path = s.health_path,
        inter = s.health_interval.as_millis().max(100),
        check = s.health_timeout.as_millis().max(100),
        rise = s.healthy_threshold.max(1),
        fall = s.unhealthy_threshold.max(1),
    );
    for (name, addr) in servers {
        c.push_str(&format!("    server {name} {addr} check\n"));
    }
    c
}

impl Haproxy {
    /// Write the configuration into `dir` and start HAProxy as a daemon; an error if the
    /// configuration does not check or the admin socket does not answer.
    pub fn start(
        dir: &Path,
        listen: &str,
        servers: &[(String, String)],
        s: &Service,
    ) -> Result<Self> {
        fs_err::create_dir_all(dir)?;
        let dir = std::path::absolute(dir).context("the fleet directory has no absolute path")?;
        let cfg = dir.join("haproxy.cfg");
        crate::base::tmp::write_atomic(&cfg, config(&dir, listen, servers, s).as_bytes())?;
        Cmd::new("haproxy")
            .args(["-c", "-f"])
            .arg(&cfg)
            .run()
            .context("checking the HAProxy configuration")?;
        let _ = fs_err::remove_file(dir.join("admin.sock"));
        Cmd::new("haproxy")
            .args(["-D", "-f"])
            .arg(&cfg)
            .run()
            .context("starting HAProxy")?;
        let h = Haproxy { dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match h.command("show info") {
                Ok(_) => return Ok(h),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("HAProxy's admin socket did not answer"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The HAProxy started earlier in `dir`, if it still runs.
    pub fn attach(dir: &Path) -> Result<Self> {
        let h = Haproxy {
            dir: dir.to_path_buf(),
        };
        h.command("show info")
            .with_context(|| format!("no HAProxy answers in {}", dir.display()))?;
        Ok(h)
    }

    /// Stop the daemon (a missing one is fine).
    pub fn stop(&self) -> Result<()> {
        let pidfile = self.dir.join("haproxy.pid");
        let Ok(text) = fs_err::read_to_string(&pidfile) else {
            return Ok(());
        };
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = fs_err::remove_file(pidfile);
        Ok(())
    }
}

impl RuntimeApi for Haproxy {
    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    fn backend(&self) -> &str {
        BACKEND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        if !Path::new("/usr/sbin/haproxy").exists() {
            eprintln!("haproxy is not installed; .ci/deps installs it");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let s = Service {
            port: 80,
            health_path: "/".into(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        };
        let cfg = d.path().join("h.cfg");
        std::fs::write(
            &cfg,
            config(
                d.path(),
                "127.0.0.1:18999",
                &[("node-1".into(), "127.0.0.1:1".into())],
                &s,
            ),
        )
        .unwrap();
        Cmd::new("haproxy")
            .args(["-c", "-f"])
            .arg(&cfg)
            .run()
            .unwrap();
    }
}
