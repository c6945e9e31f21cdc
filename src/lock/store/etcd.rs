//! The etcd store: a group is a handful of keys under `PREFIX/groups/GROUP/`, each change one
//! transaction, so any number of servers on one cluster act as one service.
//!
//! - `holders/ID`: a [`HolderRecord`], held under an etcd lease of its own. The key's create
//!   revision is the grant's fencing token (etcd's revision only grows). A grant compares that
//!   no holder key was created since its read (`create_revision` of the whole `holders/` range),
//!   and that neither `slots` nor `halt` changed; a renewal rewrites only its own key (and
//!   keeps its lease alive), so renewals never make grants retry. A released or expired holder's
//!   key is deleted, which only frees a slot and so cannot make a grant wrong.
//! - `slots`: the group's slot count, written from the servers' configuration.
//! - `halt`: a [`Halt`], present while the group is halted.
//!
//! Expiry does not wait for etcd: each server's reaper deletes a holder whose `renewed-ms` is
//! older than its TTL (a compare on the key's mod revision, so a renewal racing it wins, and
//! exactly one server deletes and audits it). The lease, a little longer than the TTL, frees
//! the slot even when no server runs, and etcd re-arms leases on a leader change, which the
//! reaper does not depend on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use super::{now_ms, AcquireArgs, Acquired};
use crate::lock::api::{Halt, NodeReport};
use crate::lock::policy::{self, Decision, GroupView, Holder, HolderRecord};

/// Transactions one request may retry when others change its group under it.
const ATTEMPTS: usize = 64;

/// The `slots` key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotsRecord {
    version: u32,
    slots: u32,
}

/// A connection to the cluster.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// How much longer a lease lives than the TTL it backs.
    lease_extra: Duration,
}

impl EtcdStore {
    /// Connect to `endpoints` (any member will do; requests go to those that answer).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        lease_extra: Duration,
    ) -> Result<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1));
        let eps: Vec<&str> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        let client = Client::connect(&eps, Some(opts))
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(", ")))?;
        Ok(EtcdStore {
            client,
            prefix: prefix.to_string(),
            lease_extra,
        })
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}/groups/{group}/", self.prefix)
    }

    fn c(&self) -> Client {
        self.client.clone()
    }

    /// One group's view and the revision it was read at.
    async fn read_group(&self, group: &str, serializable: bool) -> Result<(GroupView, i64)> {
        let mut opts = GetOptions::new().with_prefix();
        if serializable {
            opts = opts.with_serializable();
        }
        let key = self.group_key(group);
        let r = self
            .c()
            .get(key.as_str(), Some(opts))
            .await
            .context("etcd: reading a group")?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let mut view = GroupView::default();
        for kv in r.kvs() {
            let k = kv.key_str()?;
            add_to_view(&mut view, &k[key.len()..], kv)?;
        }
        Ok((view, rev))
    }

    pub async fn acquire(&self, a: &AcquireArgs<'_>) -> Result<Acquired> {
        let mut lease: Option<i64> = None;
        let outcome = self.acquire_with(a, &mut lease).await;
        // A lease made for a grant that did not happen is not left to run out.
        if let Some(l) = lease.filter(|_| !matches!(outcome, Ok(Acquired::Granted(_)))) {
            self.revoke_later(l);
        }
        outcome
    }

    async fn acquire_with(&self, a: &AcquireArgs<'_>, lease: &mut Option<i64>) -> Result<Acquired> {
        let gk = self.group_key(a.group);
        let holders = format!("{gk}holders/");
        let key = format!("{holders}{}", a.id);
        for attempt in 0..ATTEMPTS {
            // The first read may come from any member: a stale view can only fail the
            // transaction's compare (then the next read is linearizable) or answer "full".
            let (view, rev) = self.read_group(a.group, attempt == 0).await?;
            let slots = view.slots.unwrap_or(a.default_slots);
            match policy::acquire(&view, a.id, a.presented, slots, now_ms()) {
                Decision::Renew => {
                    let h = view
                        .holder(a.id)
                        .cloned()
                        .ok_or_else(|| anyhow!("no holder"))?;
                    match self.renew(&key, h, a.ttl).await {
                        // A stale read may show a holder that was released or reaped since:
                        // read again, linearizably, before answering.
                        Ok(Acquired::Lost) | Err(_) if attempt == 0 => continue,
                        r => return r,
                    }
                }
                Decision::Lost if attempt == 0 => continue,
                // Grant goes on below; every other decision is the answer.
                d => {
                    if let Some(r) = super::refusal(d, &view, slots) {
                        return Ok(r);
                    }
                }
            }
            let lease_id = match *lease {
                Some(l) => l,
                None => {
                    let l = self.lease(a.ttl).await?;
                    *lease = Some(l);
                    l
                }
            };
            let now = now_ms();
            let record = HolderRecord::new(a.id, now, a.ttl, lease_id, None);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(holders.as_str(), CompareOp::Less, rev + 1)
                        .with_prefix(),
                    Compare::mod_revision(format!("{gk}slots"), CompareOp::Less, rev + 1),
                    Compare::mod_revision(format!("{gk}halt"), CompareOp::Less, rev + 1),
                ])
                .and_then([TxnOp::put(
                    key.as_str(),
                    serde_json::to_vec(&record)?,
                    Some(PutOptions::new().with_lease(lease_id)),
                )]);
            let r = self.c().txn(txn).await.context("etcd: grant transaction")?;
            if r.succeeded() {
                let token = r.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Acquired::Granted(Holder {
                    record,
                    token: token as u64,
                    store_rev: token,
                }));
            }
        }
        bail!(
            "group {}: {ATTEMPTS} grant transactions in a row conflicted",
            a.group
        )
    }

    /// A new lease that backs a grant of `ttl`.
    async fn lease(&self, ttl: Duration) -> Result<i64> {
        let secs = (ttl + self.lease_extra).as_secs_f64().ceil() as i64;
        let l = self
            .c()
            .lease_grant(secs, None)
            .await
            .context("etcd: lease grant")?;
        Ok(l.id())
    }

    /// Renew `h` (its key is `key`) for `ttl`: keep its lease alive and record the renewal. A
    /// TTL changed by a reload moves the key to a new lease of the new length (the create
    /// revision, its fencing token, stays).
    async fn renew(&self, key: &str, h: Holder, ttl: Duration) -> Result<Acquired> {
        let (mut keeper, mut stream) = self
            .c()
            .lease_keep_alive(h.record.lease)
            .await
            .context("etcd: lease keep-alive")?;
        keeper
            .keep_alive()
            .await
            .context("etcd: lease keep-alive")?;
        let alive = match stream.message().await {
            Ok(m) => m.is_some_and(|m| m.ttl() > 0),
            // The lease was revoked (its holder released) or ran out.
            Err(e) if e.to_string().contains("lease not found") => false,
            Err(e) => return Err(e).context("etcd: lease keep-alive"),
        };
        if !alive {
            return Ok(Acquired::Lost);
        }
        let mut record = h.record.clone();
        record.renewed_ms = now_ms();
        let old_lease = record.lease;
        if record.ttl_ms != ttl.as_millis() as u64 {
            record.ttl_ms = ttl.as_millis() as u64;
            record.lease = self.lease(ttl).await?;
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                key,
                CompareOp::Equal,
                h.token as i64,
            )])
            .and_then([TxnOp::put(
                key,
                serde_json::to_vec(&record)?,
                Some(PutOptions::new().with_lease(record.lease)),
            )]);
        let r = self
            .c()
            .txn(txn)
            .await
            .context("etcd: renewal transaction")?;
        if record.lease != old_lease {
            self.revoke_later(if r.succeeded() {
                old_lease
            } else {
                record.lease
            });
        }
        if !r.succeeded() {
            return Ok(Acquired::Lost);
        }
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Acquired::Renewed(Holder {
            record,
            token: h.token,
            store_rev: rev,
        }))
    }

    pub async fn release(
        &self,
        group: &str,
        id: &str,
        presented: Option<u64>,
    ) -> Result<Option<Holder>> {
        // One transaction, no read: the key exists (and is the grant named, if one is).
        let key = format!("{}holders/{id}", self.group_key(group));
        let cmp = match presented {
            Some(t) => Compare::create_revision(key.as_str(), CompareOp::Equal, t as i64),
            None => Compare::create_revision(key.as_str(), CompareOp::Greater, 0),
        };
        self.delete_if(&key, cmp).await
    }

    /// Delete the holder key `key` if `cmp` holds, and revoke its lease; the holder it was.
    async fn delete_if(&self, key: &str, cmp: Compare) -> Result<Option<Holder>> {
        let del = etcd_client::DeleteOptions::new().with_prev_key();
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::delete(key, Some(del))]);
        let r = self
            .c()
            .txn(txn)
            .await
            .context("etcd: delete transaction")?;
        if !r.succeeded() {
            return Ok(None);
        }
        let prev = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
            _ => None,
        });
        let Some(kv) = prev else { return Ok(None) };
        let mut view = GroupView::default();
        add_to_view(&mut view, "holders/", &kv)?;
        let h = view
            .holders
            .pop()
            .ok_or_else(|| anyhow!("etcd: the deleted key {key}"))?;
        self.revoke_later(h.record.lease);
        Ok(Some(h))
    }

    /// Revoke a lease in the background (its keys are gone or were never written).
    fn revoke_later(&self, lease: i64) {
        let mut c = self.c();
        tokio::spawn(async move {
            if let Err(e) = c.lease_revoke(lease).await {
                tracing::debug!("etcd: revoking lease {lease:x}: {e}");
            }
        });
    }

    pub async fn halt(&self, group: &str, halt: &Halt) -> Result<Option<Halt>> {
        let key = format!("{}halt", self.group_key(group));
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(halt)?, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let r = self.c().txn(txn).await.context("etcd: halt transaction")?;
        if r.succeeded() {
            return Ok(None);
        }
        let was = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match was {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).context("etcd: the halt key")?,
            )),
            None => Ok(None),
        }
    }

    pub async fn clear(&self, group: &str) -> Result<Option<Halt>> {
        let key = format!("{}halt", self.group_key(group));
        let r = self
            .c()
            .delete(
                key.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )
            .await
            .context("etcd: clearing a halt")?;
        match r.prev_kvs().first() {
            Some(kv) => Ok(Some(
                serde_json::from_slice(kv.value()).context("etcd: the halt key")?,
            )),
            None => Ok(None),
        }
    }

    pub async fn sync_slots(
        &self,
        slots: &BTreeMap<String, u32>,
    ) -> Result<Vec<(String, Option<u32>, Option<u32>)>> {
        let groups = self.groups().await?;
        let mut changed = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            groups.keys().chain(slots.keys()).collect();
        for g in names {
            let was = groups.get(g).and_then(|v| v.slots);
            let want = slots.get(g).copied();
            if was == want {
                continue;
            }
            let key = format!("{}slots", self.group_key(g));
            let mut c = self.c();
            match want {
                Some(n) => {
                    let v = serde_json::to_vec(&SlotsRecord {
                        version: 1,
                        slots: n,
                    })?;
                    c.put(key, v, None)
                        .await
                        .context("etcd: writing a slot count")?;
                }
                None => {
                    c.delete(key, None)
                        .await
                        .context("etcd: deleting a slot count")?;
                }
            }
            changed.push((g.clone(), was, want));
        }
        Ok(changed)
    }

    pub async fn groups(&self) -> Result<BTreeMap<String, GroupView>> {
        let base = format!("{}/groups/", self.prefix);
        let r = self
            .c()
            .get(base.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .context("etcd: reading the groups")?;
        let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
        for kv in r.kvs() {
            let k = kv.key_str()?;
            let Some((group, rest)) = k[base.len()..].split_once('/') else {
                continue;
            };
            add_to_view(groups.entry(group.to_string()).or_default(), rest, kv)?;
        }
        Ok(groups)
    }

    /// A node's report, at `PREFIX/nodes/GROUP/ID` (no lease: the last one stays).
    pub async fn put_node(&self, r: &NodeReport) -> Result<()> {
        let p = &r.client_params;
        let key = format!("{}/nodes/{}/{}", self.prefix, p.group, p.id);
        self.c()
            .put(key, serde_json::to_vec(r)?, None)
            .await
            .context("etcd: writing a node's report")?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<BTreeMap<String, Vec<NodeReport>>> {
        let base = format!("{}/nodes/", self.prefix);
        let r = self
            .c()
            .get(base.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .context("etcd: reading the nodes' reports")?;
        let mut out: BTreeMap<String, Vec<NodeReport>> = BTreeMap::new();
        for kv in r.kvs() {
            let at = || format!("etcd key {:?}", kv.key_str().unwrap_or("?"));
            let n: NodeReport = serde_json::from_slice(kv.value()).with_context(at)?;
            out.entry(n.client_params.group.clone())
                .or_default()
                .push(n);
        }
        Ok(out)
    }

    pub async fn reap(&self, now_ms: i64) -> Result<Vec<(String, Holder)>> {
        let mut freed = Vec::new();
        for (group, view) in self.groups().await? {
            for h in policy::expired(&view, now_ms) {
                let key = format!("{}holders/{}", self.group_key(&group), h.record.id);
                let cmp = Compare::mod_revision(key.as_str(), CompareOp::Equal, h.store_rev);
                if let Some(h) = self.delete_if(&key, cmp).await? {
                    freed.push((group.clone(), h));
                }
            }
        }
        Ok(freed)
    }
}

/// Add the key `rest` (below the group's prefix) of `kv` to `view`.
fn add_to_view(view: &mut GroupView, rest: &str, kv: &KeyValue) -> Result<()> {
    let at = || format!("etcd key {:?}", kv.key_str().unwrap_or("?"));
    if rest == "slots" {
        let s: SlotsRecord = serde_json::from_slice(kv.value()).with_context(at)?;
        view.slots = Some(s.slots);
    } else if rest == "halt" {
        view.halt = Some(serde_json::from_slice(kv.value()).with_context(at)?);
    } else if let Some(_id) = rest.strip_prefix("holders/") {
        let record: HolderRecord = serde_json::from_slice(kv.value()).with_context(at)?;
        view.holders.push(Holder {
            record,
            token: kv.create_revision() as u64,
            store_rev: kv.mod_revision(),
        });
    }
    Ok(())
}
