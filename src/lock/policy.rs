//! The lock's rules as pure functions of a group's state, shared by both stores: who may take a
//! slot, who renews, who is told that the slot was lost, which holders expired. A store reads
//! a [`GroupView`], asks [`acquire`], and applies the answer in one transaction that fails if
//! the view changed under it.

use serde::{Deserialize, Serialize};

use super::api::{Halt, HolderStatus};

/// A holder as the store keeps it (one etcd key under the holder's lease, or one entry of the
/// embedded store's file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HolderRecord {
    pub version: u32,
    pub id: String,
    pub since_ms: i64,
    pub renewed_ms: i64,
    pub ttl_ms: u64,
    /// The etcd lease the key is held under (0 in the embedded store).
    #[serde(default)]
    pub lease: i64,
    /// The embedded store's fencing token (etcd's is the key's create revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

/// A holder with its fencing token, and the store's revision of its record (what a reaper's
/// transaction compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub record: HolderRecord,
    pub token: u64,
    pub store_rev: i64,
}

impl HolderRecord {
    /// A new grant to `id` at `now_ms`, lasting `ttl` unrenewed.
    pub fn new(
        id: &str,
        now_ms: i64,
        ttl: std::time::Duration,
        lease: i64,
        token: Option<u64>,
    ) -> Self {
        HolderRecord {
            version: 1,
            id: id.to_string(),
            since_ms: now_ms,
            renewed_ms: now_ms,
            ttl_ms: ttl.as_millis() as u64,
            lease,
            token,
        }
    }
}

impl Holder {
    pub fn expires_ms(&self) -> i64 {
        self.record.renewed_ms + self.record.ttl_ms as i64
    }

    /// Has it gone unrenewed for its whole TTL at `now_ms`?
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms() <= now_ms
    }

    pub fn status(&self) -> HolderStatus {
        HolderStatus {
            id: self.record.id.clone(),
            fencing_token: self.token,
            since_ms: self.record.since_ms,
            renewed_ms: self.record.renewed_ms,
            expires_ms: self.expires_ms(),
        }
    }
}

/// One group's state, as one read of the store saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupView {
    /// The slot count in the store (`None`: never set, the configuration's default applies).
    pub slots: Option<u32>,
    pub holders: Vec<Holder>,
    pub halt: Option<Halt>,
}

impl GroupView {
    pub fn holder(&self, id: &str) -> Option<&Holder> {
        self.holders.iter().find(|h| h.record.id == id)
    }

    pub fn holder_ids(&self) -> Vec<&str> {
        self.holders.iter().map(|h| h.record.id.as_str()).collect()
    }
}

/// What a `pre-reboot` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The node holds a slot already: renew it.
    Renew,
    /// Take a free slot.
    Grant,
    /// Every slot is held (or the group shrank below its holders).
    Full,
    /// The group is halted, for this reason.
    Halted(Halt),
    /// The node names a grant it no longer holds (expired, released by an operator), or its
    /// own grant has run out: it must not reboot on it.
    Lost,
}

/// The rule for `pre-reboot` by `id`, naming the grant `presented` (cairn's client) or none
/// (Zincati), against `view`, with `slots` in effect, at `now_ms`.
pub fn acquire(
    view: &GroupView,
    id: &str,
    presented: Option<u64>,
    slots: u32,
    now_ms: i64,
) -> Decision {
    if let Some(h) = view.holder(id) {
        if h.expired(now_ms) || presented.is_some_and(|t| t != h.token) {
            return Decision::Lost;
        }
        // A holder keeps its slot through a halt or a shrink; it only renews.
        return Decision::Renew;
    }
    if presented.is_some() {
        return Decision::Lost;
    }
    if let Some(h) = &view.halt {
        return Decision::Halted(h.clone());
    }
    // Holders that expired but are not reaped yet still count: the slot frees when the reaper
    // deletes them, never by a guess here.
    if view.holders.len() as u64 >= u64::from(slots) {
        return Decision::Full;
    }
    Decision::Grant
}

/// Which holder a release by `id` (naming `presented`, if any) frees: `None` when it holds
/// nothing, or holds a grant other than the one it names.
pub fn release<'a>(view: &'a GroupView, id: &str, presented: Option<u64>) -> Option<&'a Holder> {
    view.holder(id)
        .filter(|h| presented.is_none_or(|t| t == h.token))
}

/// The holders of `view` that expired at `now_ms`.
pub fn expired(view: &GroupView, now_ms: i64) -> Vec<&Holder> {
    view.holders.iter().filter(|h| h.expired(now_ms)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str, token: u64, renewed_ms: i64) -> Holder {
        Holder {
            record: HolderRecord {
                version: 1,
                id: id.into(),
                since_ms: renewed_ms,
                renewed_ms,
                ttl_ms: 1000,
                lease: 0,
                token: None,
            },
            token,
            store_rev: token as i64,
        }
    }

    fn view(holders: Vec<Holder>) -> GroupView {
        GroupView {
            slots: Some(2),
            holders,
            halt: None,
        }
    }

    #[test]
    fn a_group_grants_up_to_its_slots_and_is_reentrant_per_id() {
        let v = view(vec![holder("a", 5, 0)]);
        assert_eq!(acquire(&v, "b", None, 2, 10), Decision::Grant);
        assert_eq!(acquire(&v, "a", None, 2, 10), Decision::Renew);
        assert_eq!(acquire(&v, "a", Some(5), 2, 10), Decision::Renew);
        let v = view(vec![holder("a", 5, 0), holder("b", 6, 0)]);
        assert_eq!(acquire(&v, "c", None, 2, 10), Decision::Full);
        // Shrunk below its holders: nothing is granted, holders renew.
        assert_eq!(acquire(&v, "c", None, 1, 10), Decision::Full);
        assert_eq!(acquire(&v, "b", None, 1, 10), Decision::Renew);
    }

    #[test]
    fn a_late_or_stale_holder_is_told_it_lost_the_slot() {
        let v = view(vec![holder("a", 5, 0)]);
        assert_eq!(acquire(&v, "a", Some(4), 2, 10), Decision::Lost);
        assert_eq!(acquire(&v, "b", Some(3), 2, 10), Decision::Lost);
        // Its TTL ran out before the reaper deleted it: lost, and the slot still counts.
        assert_eq!(acquire(&v, "a", None, 2, 1000), Decision::Lost);
        assert_eq!(acquire(&v, "b", None, 1, 1000), Decision::Full);
        assert_eq!(expired(&v, 1000).len(), 1);
        assert!(expired(&v, 999).is_empty());
    }

    #[test]
    fn a_halted_group_grants_nothing_but_holders_renew_and_release() {
        let mut v = view(vec![holder("a", 5, 0)]);
        v.halt = Some(Halt {
            reason: "b rolled back".into(),
            by: "b".into(),
            at_ms: 1,
            verdict: None,
        });
        assert!(matches!(acquire(&v, "c", None, 2, 10), Decision::Halted(h) if h.by == "b"));
        assert_eq!(acquire(&v, "a", None, 2, 10), Decision::Renew);
        assert_eq!(release(&v, "a", None).map(|h| h.token), Some(5));
        assert_eq!(release(&v, "a", Some(4)), None);
        assert_eq!(release(&v, "c", None), None);
    }
}
