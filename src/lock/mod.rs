//! `cairn lock`: a FleetLock reboot-slot service for pull-mode fleets (Zincati's `fleet_lock`
//! strategy, cairn's own node agent), on etcd for real fleets or an embedded store for one
//! machine. Slots are leases with fencing tokens, so a dead holder's slot frees by itself; the
//! holders are visible; a changed slot count applies on reload; a node's bad verdict halts its
//! group; nodes and operators authenticate; every change goes to the audit log.
//!
//! - [`api`]: the wire contract (FleetLock v1 and cairn's extensions), shared by server and
//!   client;
//! - [`config`]: the service's configuration, `lock.toml`;
//! - [`policy`]: the rules, as pure functions of a group's state;
//! - [`store`]: etcd or the embedded store;
//! - [`auth`], [`audit`]: tokens, and the audit log;
//! - [`service`]: the HTTP service (`cairn lock serve`), with its reaper and metrics;
//! - [`client`]: cairn's client (the node agent's and the operator's).

pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod service;
pub mod store;
