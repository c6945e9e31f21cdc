//! The service's Prometheus metrics (`GET /metrics`): requests by endpoint and outcome, grants,
//! releases and expiries by group, grant latency, and per group the slots, holders and halt as
//! the store shows them at the scrape.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::policy::GroupView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub grants: Family<GroupLabels, Counter>,
    pub releases: Family<GroupLabels, Counter>,
    pub expiries: Family<GroupLabels, Counter>,
    pub grant_seconds: Histogram,
    slots: Family<GroupLabels, Gauge>,
    holders: Family<GroupLabels, Gauge>,
    halted: Family<GroupLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn_lock");
        let requests = Family::<RequestLabels, Counter>::default();
        let grants = Family::<GroupLabels, Counter>::default();
        let releases = Family::<GroupLabels, Counter>::default();
        let expiries = Family::<GroupLabels, Counter>::default();
        let grant_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let slots = Family::<GroupLabels, Gauge>::default();
        let holders = Family::<GroupLabels, Gauge>::default();
        let halted = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "requests",
            "Requests by endpoint and outcome",
            requests.clone(),
        );
        registry.register("grants", "Slots granted", grants.clone());
        registry.register(
            "releases",
            "Slots released by their holder or an operator",
            releases.clone(),
        );
        registry.register(
            "expiries",
            "Slots freed because the holder stopped renewing",
            expiries.clone(),
        );
        registry.register(
            "grant_seconds",
            "Time to answer a pre-reboot that granted a slot",
            grant_seconds.clone(),
        );
        registry.register("slots", "Slots of each group", slots.clone());
        registry.register("holders", "Holders of each group", holders.clone());
        registry.register("halted", "1 while the group is halted", halted.clone());
        Metrics {
            registry,
            requests,
            grants,
            releases,
            expiries,
            grant_seconds,
            slots,
            holders,
            halted,
        }
    }

    pub fn request(&self, endpoint: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn group(group: &str) -> GroupLabels {
        GroupLabels {
            group: group.into(),
        }
    }

    /// The text exposition, with the per-group gauges set from `groups` (slots resolved).
    pub fn encode(&self, groups: &BTreeMap<String, (u32, GroupView)>) -> String {
        // Groups gone from the store (an unconfigured group's last holder left) show no more.
        self.slots.clear();
        self.holders.clear();
        self.halted.clear();
        for (name, (slots, view)) in groups {
            let l = Self::group(name);
            self.slots.get_or_create(&l).set(i64::from(*slots));
            self.holders
                .get_or_create(&l)
                .set(view.holders.len() as i64);
            self.halted
                .get_or_create(&l)
                .set(i64::from(view.halt.is_some()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
