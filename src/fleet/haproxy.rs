//! HAProxy in front of the fleet: its configuration, the daemon (started detached, so that it
//! keeps serving when an orchestrator dies, as a cloud's load balancer does), and its runtime
//! API on a Unix socket: `show stat`, `set server … state ready|drain|maint`, `add server`,
//! `del server`.
//!
//! Requests that fail to connect are retried on another server (`retries` with
//! `option redispatch`), and HAProxy's own health checks take a dead server out within seconds;
//! the rollout itself drains a node (no new sessions, the open ones finish) before it touches it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::manifest::Service;
use crate::base::cmd::Cmd;

/// The one backend, whose servers are the fleet's nodes.
pub const BACKEND: &str = "nodes";

/// A server's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes new sessions.
    Ready,
    /// Takes no new sessions; open ones finish.
    Drain,
    /// Takes nothing: out of the load balancer.
    Maint,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Drain => "drain",
            State::Maint => "maint",
        }
    }
}

/// One server line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub name: String,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, …
    pub status: String,
    /// Sessions open now.
    pub sessions: u64,
    /// Sessions since start.
    pub total: u64,
}

impl ServerStat {
    /// HAProxy's checks pass and it takes sessions (not `UP 1/2`, going down after a failed check).
    pub fn is_up(&self) -> bool {
        self.status.starts_with("UP")
            && !self.status.contains("going down")
            && !self.status.contains('/')
    }
}

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

    /// Send one runtime-API command and return the answer.
    pub fn command(&self, cmd: &str) -> Result<String> {
        let sock = self.dir.join("admin.sock");
        let mut s = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to HAProxy's socket {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .with_context(|| format!("reading HAProxy's answer to `{cmd}`"))?;
        Ok(out)
    }

    /// A command whose answer must be empty or one of `ok` (HAProxy answers errors in words).
    fn expect(&self, cmd: &str, ok: &[&str]) -> Result<()> {
        let out = self.command(cmd)?;
        let t = out.trim();
        if t.is_empty() || ok.iter().any(|o| t.contains(o)) {
            Ok(())
        } else {
            bail!("HAProxy refused `{cmd}`: {t}")
        }
    }

    /// The backend's servers as `show stat` reports them.
    pub fn servers(&self) -> Result<Vec<ServerStat>> {
        Ok(parse_stat(&self.command("show stat")?))
    }

    /// One server's line.
    pub fn server(&self, name: &str) -> Result<ServerStat> {
        self.servers()?
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("HAProxy has no server {BACKEND}/{name}"))
    }

    pub fn set_state(&self, server: &str, state: State) -> Result<()> {
        self.expect(
            &format!("set server {BACKEND}/{server} state {}", state.as_str()),
            &[],
        )
    }

    /// Add a server (in maintenance, as HAProxy adds them) with health checks on.
    pub fn add_server(&self, name: &str, addr: &str) -> Result<()> {
        self.expect(
            &format!("add server {BACKEND}/{name} {addr} check"),
            &["New server registered"],
        )?;
        self.expect(&format!("enable health {BACKEND}/{name}"), &[])
    }

    /// Remove a server (it must be in maintenance with no session open).
    pub fn del_server(&self, name: &str) -> Result<()> {
        self.set_state(name, State::Maint)?;
        self.expect(&format!("del server {BACKEND}/{name}"), &["Server deleted"])
    }

    /// Drain `server` and wait until its sessions have ended (or `limit` passes: then it is put
    /// in maintenance anyway, and the error says how many sessions were cut).
    pub fn drain(&self, server: &str, limit: Duration) -> Result<()> {
        self.set_state(server, State::Drain)?;
        let deadline = Instant::now() + limit;
        loop {
            let s = self.server(server)?;
            if s.sessions == 0 {
                return self.set_state(server, State::Maint);
            }
            if Instant::now() > deadline {
                self.set_state(server, State::Maint)?;
                bail!(
                    "{server} still had {} sessions open after {} s of draining",
                    s.sessions,
                    limit.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until HAProxy's checks see at least `want` servers other than `server` up, so that
    /// taking `server` out leaves them serving (a node that just came back can fail a check or
    /// two while it settles); the error names those that are not up.
    pub fn wait_others_up(&self, server: &str, want: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let others: Vec<ServerStat> = self
                .servers()?
                .into_iter()
                .filter(|s| s.name != server)
                .collect();
            if others.iter().filter(|s| s.is_up()).count() >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                let down: Vec<String> = others
                    .iter()
                    .filter(|s| !s.is_up())
                    .map(|s| format!("{} ({})", s.name, s.status))
                    .collect();
                bail!(
                    "taking {server} out would leave fewer than {want} nodes serving: not up after {} s: {}",
                    limit.as_secs(),
                    down.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until HAProxy's own check sees `server` up (after [`State::Ready`]).
    pub fn wait_up(&self, server: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.server(server)?;
            if s.is_up() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "HAProxy's check does not see {server} up (status {})",
                    s.status
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The backend's server lines of `show stat` (CSV; the header names the columns).
pub fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |n: &str| cols.iter().position(|c| *c == n);
    let (Some(px), Some(sv), Some(st), Some(cur), Some(tot)) = (
        col("pxname"),
        col("svname"),
        col("status"),
        col("scur"),
        col("stot"),
    ) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = *f.get(sv)?;
            (f.get(px) == Some(&BACKEND) && name != "BACKEND").then(|| ServerStat {
                name: name.to_string(),
                status: f.get(st).unwrap_or(&"").to_string(),
                sessions: f.get(cur).and_then(|v| v.parse().ok()).unwrap_or(0),
                total: f.get(tot).and_then(|v| v.parse().ok()).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_of_the_backend() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n\
                   fleet,FRONTEND,,,0,1,262000,5,0,0,0,0,0,,,,,OPEN\n\
                   nodes,node-1,0,0,2,3,,40,0,0,,0,,0,0,0,0,UP\n\
                   nodes,node-2,0,0,0,1,,38,0,0,,0,,0,0,0,0,DRAIN\n\
                   nodes,BACKEND,0,0,2,3,26200,78,0,0,0,0,,0,0,0,0,UP\n";
        let s = parse_stat(csv);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "node-1");
        assert_eq!(s[0].sessions, 2);
        assert_eq!(s[0].total, 40);
        assert_eq!(s[1].status, "DRAIN");
    }

    #[test]
    fn up_is_up_and_not_going_down() {
        let st = |status: &str| ServerStat {
            name: "n".into(),
            status: status.into(),
            sessions: 0,
            total: 0,
        };
        assert!(st("UP").is_up());
        for s in ["UP 1/2", "DOWN", "DOWN 1/2", "MAINT", "DRAIN", "no check"] {
            assert!(!st(s).is_up(), "{s}");
        }
    }

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
