//! `cairn repo serve`: the archive repo over HTTP, read-only, until interrupted.
//!
//! Nothing here is special to cairn: the repo is a directory of static files (objects, deltas,
//! refs, the summary and its signature), and any static web server can serve it the same way.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::store;
use crate::store::serve::RepoServer;

/// Check that `repo_path` is an archive repo with a summary, then serve it on `listen` until
/// Ctrl-C or SIGTERM. `on_ready` gets the URL once clients can connect.
pub fn serve(repo_path: &Path, listen: &str, on_ready: &dyn Fn(&str)) -> Result<()> {
    let r = store::open(repo_path)?;
    if r.mode() != ostree::RepoMode::Archive {
        bail!(
            "{}: an OSTree repo in {:?} mode; clients pull over HTTP only from an archive repo",
            repo_path.display(),
            r.mode()
        );
    }
    if !repo_path.join("summary").is_file() {
        bail!(
            "{}: no summary (clients list refs and deltas through it): compose, promote or sign \
             something first",
            repo_path.display()
        );
    }
    if super::sign::repo_key(&r).is_some() && !repo_path.join("summary.sig").is_file() {
        tracing::warn!(
            "{}: the summary is not signed (sign it with `cairn sign REF`)",
            repo_path.display()
        );
    }
    let server = RepoServer::start_on(repo_path, listen)?;
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(listen);
    let url = format!("http://{host}:{}/", server.port);
    on_ready(&url);
    let _ = std::io::stdout().flush();
    while !crate::base::interrupt::requested() {
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("stopped serving {}", repo_path.display());
    Ok(())
}
