//! The boot tests: two chains, each one shared, booted world (two vm-test VMs; a fleet) and a
//! list of named steps on it (`../chain`). The blessed host is composed once for both
//! (`shared.rs`).
//!
//! - [`vmtest`]: the spine and the node's life through `cairn vm-test` (the base and node
//!   suites), one named test per case;
//! - [`fleet`]: rollouts across two nodes behind HAProxy (qemu, then the same VMs as an `ssh`
//!   fleet) under a load that counts every failed request.
//!
//! Both need root, the build host's apt sources, QEMU, OVMF, HAProxy and gpg (`.ci/deps`).

use crate::{chain, release_world};

mod fleet;
mod fleet_world;
mod pull;
pub mod shared;
mod vmtest;

/// The vm-test chain and the fleet chain.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    let mut trials = chain::Chain::new("vmtest", vmtest::VmWorld::new, vmtest::steps()).trials();
    trials.extend(chain::Chain::new("fleet", fleet_world::World::new, fleet::steps()).trials());
    trials
}
