//! HAProxy's runtime API on its admin socket, for whoever drives a load balancer: the fleet's
//! rollouts (`fleet::haproxy`, which also writes and starts HAProxy) and the lock service,
//! which drains a node when it grants it a slot. `show stat`, `set server … state
//! ready|drain|maint`, `add server`, `del server`, and the waits built on them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
    pub fn as_str(self) -> &'static str {
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

/// The runtime API of one HAProxy backend: where its socket is and the backend's name; every
/// command is a provided method.
pub trait RuntimeApi {
    /// The admin socket.
    fn socket(&self) -> PathBuf;
    /// The backend whose servers the commands name.
    fn backend(&self) -> &str;

    /// Send one runtime-API command and return the answer.
    fn command(&self, cmd: &str) -> Result<String> {
        let sock = self.socket();
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
    fn servers(&self) -> Result<Vec<ServerStat>> {
        Ok(parse_stat(&self.command("show stat")?, self.backend()))
    }

    /// One server's line.
    fn server(&self, name: &str) -> Result<ServerStat> {
        let b = self.backend();
        self.servers()?
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("HAProxy has no server {b}/{name}"))
    }

    /// Force `server`'s health down: it takes traffic again only once its checks pass (a server
    /// leaving maintenance otherwise counts as up at once).
    fn mark_down(&self, server: &str) -> Result<()> {
        let b = self.backend();
        self.expect(&format!("set server {b}/{server} health down"), &[])
    }

    fn set_state(&self, server: &str, state: State) -> Result<()> {
        let b = self.backend();
        self.expect(
            &format!("set server {b}/{server} state {}", state.as_str()),
            &[],
        )
    }

    /// Add a server (in maintenance, as HAProxy adds them) with health checks on.
    fn add_server(&self, name: &str, addr: &str) -> Result<()> {
        let b = self.backend();
        self.expect(
            &format!("add server {b}/{name} {addr} check"),
            &["New server registered"],
        )?;
        self.expect(&format!("enable health {b}/{name}"), &[])
    }

    /// Remove a server (it must be in maintenance with no session open).
    fn del_server(&self, name: &str) -> Result<()> {
        let b = self.backend();
        self.set_state(name, State::Maint)?;
        self.expect(&format!("del server {b}/{name}"), &["Server deleted"])
    }

    /// Drain `server` and wait until its sessions have ended (or `limit` passes: then it is put
    /// in maintenance anyway, and the error says how many sessions were cut).
    fn drain(&self, server: &str, limit: Duration) -> Result<()> {
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
    fn wait_others_up(&self, server: &str, want: usize, limit: Duration) -> Result<()> {
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
    fn wait_up(&self, server: &str, limit: Duration) -> Result<()> {
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

/// An HAProxy known only by its socket and backend (the lock service's view of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub socket: PathBuf,
    pub backend: String,
}

impl RuntimeApi for Runtime {
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn backend(&self) -> &str {
        &self.backend
    }
}

/// The backend's server lines of `show stat` (CSV; the header names the columns).
pub fn parse_stat(csv: &str, backend: &str) -> Vec<ServerStat> {
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
            (f.get(px) == Some(&backend) && name != "BACKEND").then(|| ServerStat {
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
        let s = parse_stat(csv, "nodes");
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
}
