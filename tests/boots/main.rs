//! The boot tests, in one test binary so that libtest runs them side by side: each spends most
//! of its time waiting on its own VMs (TCG boots, reboots, health checks, bake times), and
//! together they take little more than the longer one alone, which keeps `.ci/run` inside its
//! budget on a 2-core machine.
//!
//! - [`vmtest`]: the spine and the node's life through `cairn vm-test` (the base and node suites);
//! - [`fleet`]: rollouts across three nodes behind HAProxy under a load that counts every
//!   failed request.
//!
//! Both need root, the build host's apt sources, QEMU, OVMF, HAProxy and gpg (`.ci/deps`).

// Shared with tests/release.rs, which uses parts the boot tests do not.
#[allow(dead_code)]
#[path = "../release_world/mod.rs"]
mod release_world;

mod fleet;
mod fleet_world;
mod vmtest;
