//! Fleet rollouts: a new commit driven across a group of nodes a few at a time behind a real
//! load balancer, so that the service never fails a request (issue 13, under construction).
//!
//! - [`manifest`]: the fleet manifest (provider, load balancer, health check, policy);
//! - [`haproxy`]: the load balancer and its runtime API;
//! - [`lock`]: one rollout per fleet, naming its holder;
//! - [`state`]: the rollout's state, persisted after every step behind a store trait;
//! - [`load`]: a bounded load generator that counts every failed request;
//! - [`provider`]: where nodes come from (local QEMU VMs, existing SSH hosts);
//! - [`agent`]: a node's own agent over SSH, and its service's health;
//! - [`rollout`] and [`replace`]: the two strategies, resumable at every step;
//! - [`ops`]: what the command line calls (fleet up/down, rollout start/resume/pause/abort/status).

pub mod agent;
pub mod haproxy;
pub mod load;
pub mod lock;
pub mod manifest;
pub mod ops;
pub mod provider;
pub mod replace;
pub mod rollout;
pub mod state;
