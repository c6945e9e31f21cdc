//! The embedded store: one machine, no etcd. The state is one JSON file (`state.json` in the
//! store's directory), rewritten through a temporary file and a rename after every change and
//! before the answer goes out; the directory is locked (`flock`) for the server's lifetime, so
//! a second server on the same directory is refused at start. The rules are those of
//! [`super::super::policy`], as in etcd; fencing tokens come from a counter in the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{now_ms, AcquireArgs, Acquired};
use crate::lock::api::{Halt, NodeReport};
use crate::lock::policy::{self, Decision, GroupView, Holder, HolderRecord};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct State {
    version: u32,
    /// The last fencing token given.
    last_token: u64,
    groups: BTreeMap<String, GroupState>,
    /// Each node's last report, by group and id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<String, BTreeMap<String, NodeReport>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GroupState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slots: Option<u32>,
    #[serde(default)]
    holders: Vec<HolderRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    halt: Option<Halt>,
}

impl GroupState {
    fn view(&self) -> GroupView {
        GroupView {
            slots: self.slots,
            holders: self
                .holders
                .iter()
                .map(|r| {
                    let token = r.token.unwrap_or(0);
                    Holder {
                        record: r.clone(),
                        token,
                        store_rev: token as i64,
                    }
                })
                .collect(),
            halt: self.halt.clone(),
        }
    }
}

/// The open store.
pub struct Embedded {
    file: PathBuf,
    state: Mutex<State>,
    _lock: Flock<std::fs::File>,
}

impl Embedded {
    /// Open (or create) the store in `dir`, locking it.
    pub fn open(dir: &Path) -> Result<Embedded> {
        fs_err::create_dir_all(dir)?;
        let lock_path = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| {
            anyhow!(
                "{}: another `cairn lock serve` uses this embedded store (one server per \
                 directory; several servers need [etcd3])",
                dir.display()
            )
        })?;
        let file = dir.join("state.json");
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a lock state file", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: 1,
                ..State::default()
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Embedded {
            file,
            state: Mutex::new(state),
            _lock: lock,
        })
    }

    /// Write `next` to the disk, then make it the state.
    fn commit(&self, state: &mut State, next: State) -> Result<()> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(&next)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.file)
            .with_context(|| format!("writing {}", self.file.display()))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        *state = next;
        Ok(())
    }

    pub async fn acquire(&self, a: &AcquireArgs<'_>) -> Result<Acquired> {
        let mut state = self.state.lock().await;
        let g = state.groups.get(a.group).cloned().unwrap_or_default();
        let view = g.view();
        let slots = view.slots.unwrap_or(a.default_slots);
        let now = now_ms();
        let mut next = state.clone();
        let group = next.groups.entry(a.group.to_string()).or_default();
        let out = match policy::acquire(&view, a.id, a.presented, slots, now) {
            Decision::Renew => {
                let r = group
                    .holders
                    .iter_mut()
                    .find(|r| r.id == a.id)
                    .ok_or_else(|| anyhow!("no holder"))?;
                r.renewed_ms = now;
                r.ttl_ms = a.ttl.as_millis() as u64;
                let token = r.token.unwrap_or(0);
                Acquired::Renewed(holder(r.clone(), token))
            }
            Decision::Grant => {
                next.last_token += 1;
                let token = next.last_token;
                let record = HolderRecord::new(a.id, now, a.ttl, 0, Some(token));
                let group = next.groups.entry(a.group.to_string()).or_default();
                group.holders.push(record.clone());
                Acquired::Granted(holder(record, token))
            }
            refused => {
                // Renew and Grant are matched above: this is a refusal.
                let r = super::refusal(refused, &view, slots);
                return r.ok_or_else(|| anyhow!("a decision with no answer"));
            }
        };
        self.commit(&mut state, next)?;
        Ok(out)
    }

    pub async fn release(
        &self,
        group: &str,
        id: &str,
        presented: Option<u64>,
    ) -> Result<Option<Holder>> {
        let mut state = self.state.lock().await;
        let Some(view) = state.groups.get(group).map(GroupState::view) else {
            return Ok(None);
        };
        let Some(h) = policy::release(&view, id, presented).cloned() else {
            return Ok(None);
        };
        let mut next = state.clone();
        if let Some(g) = next.groups.get_mut(group) {
            g.holders.retain(|r| r.id != id);
        }
        self.commit(&mut state, next)?;
        Ok(Some(h))
    }

    pub async fn halt(&self, group: &str, halt: &Halt) -> Result<Option<Halt>> {
        let mut state = self.state.lock().await;
        if let Some(h) = state.groups.get(group).and_then(|g| g.halt.clone()) {
            return Ok(Some(h));
        }
        let mut next = state.clone();
        next.groups.entry(group.to_string()).or_default().halt = Some(halt.clone());
        self.commit(&mut state, next)?;
        Ok(None)
    }

    pub async fn clear(&self, group: &str) -> Result<Option<Halt>> {
        let mut state = self.state.lock().await;
        let Some(was) = state.groups.get(group).and_then(|g| g.halt.clone()) else {
            return Ok(None);
        };
        let mut next = state.clone();
        if let Some(g) = next.groups.get_mut(group) {
            g.halt = None;
        }
        self.commit(&mut state, next)?;
        Ok(Some(was))
    }

    pub async fn sync_slots(
        &self,
        slots: &BTreeMap<String, u32>,
    ) -> Result<Vec<(String, Option<u32>, Option<u32>)>> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let mut changed = Vec::new();
        let names: Vec<String> = next.groups.keys().chain(slots.keys()).cloned().collect();
        for name in names {
            let g = next.groups.entry(name.clone()).or_default();
            let want = slots.get(&name).copied();
            if g.slots != want {
                changed.push((name, g.slots, want));
                g.slots = want;
            }
        }
        if !changed.is_empty() {
            self.commit(&mut state, next)?;
        }
        Ok(changed)
    }

    pub async fn groups(&self) -> Result<BTreeMap<String, GroupView>> {
        let state = self.state.lock().await;
        Ok(state
            .groups
            .iter()
            .map(|(k, g)| (k.clone(), g.view()))
            .collect())
    }

    pub async fn put_node(&self, r: &NodeReport) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let p = &r.client_params;
        next.nodes
            .entry(p.group.clone())
            .or_default()
            .insert(p.id.clone(), r.clone());
        self.commit(&mut state, next)
    }

    pub async fn nodes(&self) -> Result<BTreeMap<String, Vec<NodeReport>>> {
        let state = self.state.lock().await;
        Ok(state
            .nodes
            .iter()
            .map(|(g, n)| (g.clone(), n.values().cloned().collect()))
            .collect())
    }

    pub async fn reap(&self, now_ms: i64) -> Result<Vec<(String, Holder)>> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let mut freed = Vec::new();
        for (name, g) in next.groups.iter_mut() {
            let view = g.view();
            let gone: Vec<Holder> = policy::expired(&view, now_ms)
                .into_iter()
                .cloned()
                .collect();
            g.holders
                .retain(|r| !gone.iter().any(|h| h.record.id == r.id));
            freed.extend(gone.into_iter().map(|h| (name.clone(), h)));
        }
        if !freed.is_empty() {
            self.commit(&mut state, next)?;
        }
        Ok(freed)
    }
}

fn holder(record: HolderRecord, token: u64) -> Holder {
    Holder {
        record,
        token,
        store_rev: token as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args<'a>(id: &'a str, presented: Option<u64>, ttl_ms: u64) -> AcquireArgs<'a> {
        AcquireArgs {
            group: "g",
            id,
            presented,
            default_slots: 1,
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[tokio::test]
    async fn grants_survive_a_restart_and_tokens_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        assert!(
            Embedded::open(dir.path()).is_err(),
            "a second server is refused"
        );
        let Acquired::Granted(a) = s.acquire(&args("a", None, 60_000)).await.unwrap() else {
            panic!()
        };
        assert!(matches!(
            s.acquire(&args("b", None, 60_000)).await.unwrap(),
            Acquired::Full { .. }
        ));
        drop(s);
        let s = Embedded::open(dir.path()).unwrap();
        let Acquired::Renewed(r) = s.acquire(&args("a", Some(a.token), 60_000)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(r.token, a.token);
        assert_eq!(
            s.release("g", "a", None).await.unwrap().map(|h| h.token),
            Some(a.token)
        );
        let Acquired::Granted(b) = s.acquire(&args("b", None, 1)).await.unwrap() else {
            panic!()
        };
        assert!(b.token > a.token);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let freed = s.reap(now_ms()).await.unwrap();
        assert_eq!(freed.len(), 1);
        assert_eq!(
            s.acquire(&args("b", Some(b.token), 1)).await.unwrap(),
            Acquired::Lost
        );
    }
}
