//! The lock service's audit log: one JSON line per grant, release, expiry, halt, clear, report
//! and slot change, on the disk (`fdatasync`) before the answer goes out. One writer thread
//! commits in groups: the records that arrive while it syncs are written and synced together,
//! so concurrent requests share a sync instead of queueing for one each. Each server writes
//! its own file; an expiry is written by the one server whose reaper deleted the holder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Grant,
    /// `steady-state`: the holder freed its slot.
    Release,
    /// The holder did not renew within its TTL; the reaper freed the slot.
    Expire,
    /// An operator freed a node's slot.
    OperatorRelease,
    Halt,
    Clear,
    /// A node's verdict on its boot.
    Report,
    /// A group's slot count changed (start or reload).
    Slots,
    /// A granted node was drained from the load balancer.
    Drain,
    /// A steady node was put back behind the load balancer.
    Undrain,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub version: u32,
    pub at_ms: i64,
    /// The server that did it.
    pub server: String,
    pub action: Action,
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    /// Who asked: `node:ID`, `operator:NAME`, `anonymous`, or `reaper`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

type Pending = (Vec<u8>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The open log.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    tx: Mutex<std::sync::mpsc::Sender<Pending>>,
}

impl Audit {
    /// Open (or create) the log at `path` for appending, and start its writer.
    pub fn open(path: &Path) -> Result<Audit> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs_err::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer(file, rx, &shown))
            .context("starting the audit log's writer")?;
        Ok(Audit {
            path: path.to_path_buf(),
            tx: Mutex::new(tx),
        })
    }

    /// Append one record; returns once it is on the disk.
    pub async fn write(&self, rec: &AuditRecord) -> Result<()> {
        let mut line = serde_json::to_vec(rec)?;
        line.push(b'\n');
        let (done, wait) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((line, done));
        let ack = match sent {
            Ok(()) => wait.await.map_err(|_| "the writer stopped".to_string()),
            Err(_) => Err("the writer stopped".to_string()),
        };
        ack.and_then(|r| r)
            .map_err(|e| anyhow::anyhow!("writing the audit log {}: {e}", self.path.display()))
    }
}

/// The writer thread: take what is pending, write it, sync once, answer each.
fn writer(mut file: std::fs::File, rx: std::sync::mpsc::Receiver<Pending>, path: &str) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let bytes: Vec<u8> = batch.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        let r = file
            .write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{path}: {e}"));
        for (_, done) in batch {
            let _ = done.send(r.clone());
        }
    }
}

/// Read every record of the log at `path`; a line that does not parse is an error naming it.
pub fn read(path: &Path) -> Result<Vec<AuditRecord>> {
    let text = fs_err::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not an audit record", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_appended_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/audit.jsonl");
        let a = Audit::open(&p).unwrap();
        let rec = AuditRecord {
            version: 1,
            at_ms: 5,
            server: "s".into(),
            action: Action::Expire,
            group: "g".into(),
            id: Some("n".into()),
            fencing_token: Some(9),
            actor: "reaper".into(),
            detail: String::new(),
        };
        a.write(&rec).await.unwrap();
        a.write(&rec).await.unwrap();
        assert_eq!(read(&p).unwrap(), vec![rec.clone(), rec]);
        std::fs::write(&p, "{}\n").unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("audit.jsonl:1"));
    }
}
