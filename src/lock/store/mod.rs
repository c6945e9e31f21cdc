//! Where the slots live: etcd for real fleets ([`etcd`], any number of servers on one cluster,
//! every change one transaction), or the embedded store on local disk ([`embedded`], one
//! server, no etcd to run). Both apply the same rules ([`super::policy`]) and answer the same
//! typed results, so the service does not know which one it talks to.

pub mod embedded;
pub mod etcd;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::api::{Halt, NodeReport};
use super::policy::{Decision, GroupView, Holder};

/// What `pre-reboot` got from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Granted(Holder),
    Renewed(Holder),
    Full { slots: u32, holders: Vec<String> },
    Halted(Halt),
    Lost,
}

/// A `pre-reboot` for the store.
#[derive(Debug, Clone)]
pub struct AcquireArgs<'a> {
    pub group: &'a str,
    pub id: &'a str,
    /// The fencing token the client names (cairn's client), if any.
    pub presented: Option<u64>,
    /// The slots of a group whose count the store does not hold.
    pub default_slots: u32,
    /// How long a grant lasts unrenewed.
    pub ttl: Duration,
}

/// The store a server talks to.
pub enum Backend {
    Etcd(Box<etcd::EtcdStore>),
    Embedded(embedded::Embedded),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Etcd(_) => "etcd",
            Backend::Embedded(_) => "embedded",
        }
    }

    /// Take or renew a slot.
    pub async fn acquire(&self, a: &AcquireArgs<'_>) -> Result<Acquired> {
        match self {
            Backend::Etcd(s) => s.acquire(a).await,
            Backend::Embedded(s) => s.acquire(a).await,
        }
    }

    /// Free `id`'s slot in `group` (only the grant `presented`, if named); the freed holder.
    pub async fn release(
        &self,
        group: &str,
        id: &str,
        presented: Option<u64>,
    ) -> Result<Option<Holder>> {
        match self {
            Backend::Etcd(s) => s.release(group, id, presented).await,
            Backend::Embedded(s) => s.release(group, id, presented).await,
        }
    }

    /// Halt `group`; the halt it had before, if any (an existing halt is kept).
    pub async fn halt(&self, group: &str, halt: &Halt) -> Result<Option<Halt>> {
        match self {
            Backend::Etcd(s) => s.halt(group, halt).await,
            Backend::Embedded(s) => s.halt(group, halt).await,
        }
    }

    /// Lift `group`'s halt; the halt it had.
    pub async fn clear(&self, group: &str) -> Result<Option<Halt>> {
        match self {
            Backend::Etcd(s) => s.clear(group).await,
            Backend::Embedded(s) => s.clear(group).await,
        }
    }

    /// Make the stored slot counts those of `slots` (groups not in it fall back to the
    /// default); the groups whose count changed, with the count before.
    pub async fn sync_slots(
        &self,
        slots: &BTreeMap<String, u32>,
    ) -> Result<Vec<(String, Option<u32>, Option<u32>)>> {
        match self {
            Backend::Etcd(s) => s.sync_slots(slots).await,
            Backend::Embedded(s) => s.sync_slots(slots).await,
        }
    }

    /// Every group the store knows (one consistent read).
    pub async fn groups(&self) -> Result<BTreeMap<String, GroupView>> {
        match self {
            Backend::Etcd(s) => s.groups().await,
            Backend::Embedded(s) => s.groups().await,
        }
    }

    /// Keep a node's last report.
    pub async fn put_node(&self, r: &NodeReport) -> Result<()> {
        match self {
            Backend::Etcd(s) => s.put_node(r).await,
            Backend::Embedded(s) => s.put_node(r).await,
        }
    }

    /// Every node's last report, by group.
    pub async fn nodes(&self) -> Result<BTreeMap<String, Vec<NodeReport>>> {
        match self {
            Backend::Etcd(s) => s.nodes().await,
            Backend::Embedded(s) => s.nodes().await,
        }
    }

    /// Delete the holders whose TTL ran out at `now_ms`; those this server deleted.
    pub async fn reap(&self, now_ms: i64) -> Result<Vec<(String, Holder)>> {
        match self {
            Backend::Etcd(s) => s.reap(now_ms).await,
            Backend::Embedded(s) => s.reap(now_ms).await,
        }
    }
}

/// The answer of a decision that grants nothing (full, halted, lost); `None` for the others.
fn refusal(d: Decision, view: &GroupView, slots: u32) -> Option<Acquired> {
    match d {
        Decision::Full => Some(Acquired::Full {
            slots,
            holders: view.holder_ids().iter().map(|s| s.to_string()).collect(),
        }),
        Decision::Halted(h) => Some(Acquired::Halted(h)),
        Decision::Lost => Some(Acquired::Lost),
        Decision::Renew | Decision::Grant => None,
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
