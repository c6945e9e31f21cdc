//! The boot tests, in one test binary whose chains run side by side: each chain is one shared,
//! booted world (a fleet, two vm-test VMs) and a list of named steps on it (`../chain`), and
//! each spends most of its time waiting on its own VMs (TCG boots, reboots, health checks, bake
//! times), so together they take little more than the longer one alone, which keeps `.ci/run`
//! inside its budget on a 2-core machine. The blessed host is composed once for both
//! (`shared.rs`).
//!
//! - [`vmtest`]: the spine and the node's life through `cairn vm-test` (the base and node
//!   suites), one named test per case;
//! - [`fleet`]: rollouts across three nodes behind HAProxy under a load that counts every
//!   failed request.
//!
//! Both need root, the build host's apt sources, QEMU, OVMF, HAProxy and gpg (`.ci/deps`).

// Shared with tests/release, which uses parts the boot tests do not.
#[allow(dead_code)]
#[path = "../release_world/mod.rs"]
mod release_world;

#[path = "../chain/mod.rs"]
mod chain;
mod fleet;
mod fleet_world;
mod shared;
mod vmtest;

fn main() -> std::process::ExitCode {
    let mut trials = chain::Chain::new("vmtest", vmtest::VmWorld::new, vmtest::steps()).trials();
    trials.extend(chain::Chain::new("fleet", fleet_world::World::new, fleet::steps()).trials());
    let code = chain::run(trials);
    shared::Shared::cleanup();
    code
}
