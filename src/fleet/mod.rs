//! Fleet rollouts: a new commit driven across a group of nodes a few at a time behind a real
//! load balancer, so that the service never fails a request.
//!
//! - [`manifest`]: the fleet manifest (provider, load balancer, health check, policy);
//! - [`dir`]: the fleet's directory, every file in it;
//! - [`haproxy`]: the load balancer and its runtime API;
//! - [`lock`]: one rollout per fleet, naming its holder; [`control`]: the operator's pause and
//!   abort;
//! - [`state`]: the rollout's state, persisted after every step behind a store trait;
//! - [`load`]: a bounded load generator that counts every failed request;
//! - [`provider`]: where nodes come from (local QEMU VMs, existing SSH hosts);
//! - [`agent`]: a node's own agent over SSH, and its service's health;
//! - [`trust`]: the target commit checked against the keys the nodes trust, before a rollout;
//! - [`rollout`]: the driver, and one file per strategy (`in_place`, `replace`);
//! - [`ops`] and [`status`]: what the command line calls (fleet up/down, rollout
//!   start/resume/pause/abort/status).

pub mod agent;
pub mod control;
pub mod dir;
pub mod haproxy;
pub mod load;
pub mod lock;
pub mod manifest;
pub mod ops;
pub mod provider;
pub mod pull;
pub mod rollout;
pub mod state;
pub mod status;
pub mod trust;

/// The fleet's HAProxy configuration's backend name (for scripts and tests).
pub const BACKEND: &str = haproxy::BACKEND;
