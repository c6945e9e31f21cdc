//! An OSTree repository served read-only over HTTP on the loopback interface, so that a guest
//! pulls from it the way a node pulls from its update server. Only files inside the repository
//! are served; a path or symlink that leads out of it is not found.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

/// A running server; dropping it stops it.
pub struct RepoServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub port: u16,
}

impl RepoServer {
    /// Serve the files of `root` (an OSTree archive repository) on a free loopback port.
    pub fn start(root: &Path) -> Result<Self> {
        Self::start_on(root, "127.0.0.1:0")
    }

    /// Serve the files of `root` on `listen` (`ADDRESS:PORT`; port 0 picks a free one).
    pub fn start_on(root: &Path, listen: &str) -> Result<Self> {
        if !root.join("config").is_file() {
            anyhow::bail!("{}: not an OSTree repository (no config)", root.display());
        }
        let root = root
            .canonicalize()
            .with_context(|| format!("{}: no such directory", root.display()))?;
        let server = tiny_http::Server::http(listen)
            .map_err(|e| anyhow!("could not listen on {listen}: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .context("the repository server has no TCP address")?;
        let server = Arc::new(server);
        let s = Arc::clone(&server);
        let served = root.clone();
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let resp = respond(&served, req.url());
                tracing::debug!(
                    "{} {} {} {}",
                    req.method(),
                    req.url(),
                    resp.status_code().0,
                    resp.data_length().unwrap_or(0)
                );
                let _ = req.respond(resp);
            }
        });
        tracing::info!("serving {} on {listen} (port {port})", root.display());
        Ok(RepoServer {
            server,
            thread: Some(thread),
            port,
        })
    }

    /// The repository's URL as seen from `host` (the address that reaches this machine's
    /// loopback: 127.0.0.1 here, QEMU's gateway in a guest).
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }
}

/// The file under `root` a URL path names, refusing anything that leaves it.
fn resolve(root: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    // A symlink in the repository must not lead out of it either.
    let real = full.canonicalize().ok()?;
    (real.starts_with(root) && real.is_file()).then_some(real)
}

fn respond(root: &Path, url: &str) -> tiny_http::ResponseBox {
    match resolve(root, url).and_then(|p| std::fs::File::open(p).ok()) {
        Some(f) => tiny_http::Response::from_file(f).boxed(),
        None => tiny_http::Response::from_string("not found")
            .with_status_code(404)
            .boxed(),
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn serves_files_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        fs_err::create_dir_all(repo.join("refs/heads")).unwrap();
        fs_err::write(repo.join("config"), "[core]\nmode=archive-z2\n").unwrap();
        fs_err::write(repo.join("refs/heads/main"), "abc\n").unwrap();
        fs_err::write(d.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink("../secret", repo.join("link")).unwrap();
        let s = RepoServer::start(&repo).unwrap();
        let get = |p: &str| -> (u16, String) {
            match ureq::get(&format!("http://127.0.0.1:{}{p}", s.port)).call() {
                Ok(r) => {
                    let mut b = String::new();
                    r.into_reader().read_to_string(&mut b).unwrap();
                    (200, b)
                }
                Err(ureq::Error::Status(c, _)) => (c, String::new()),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(get("/refs/heads/main"), (200, "abc\n".into()));
        assert_eq!(get("/../secret").0, 404);
        assert_eq!(get("/link").0, 404);
        assert_eq!(get("/refs").0, 404);
        assert!(RepoServer::start(d.path()).is_err());
    }
}
