//! The long scenarios, in one test binary whose chains run side by side: each chain is a list of
//! named steps over one shared world (`chain/`), and each spends most of its time waiting on its
//! own VMs or composes (TCG boots, reboots, health checks, bake times, package installs), so
//! together they take little more than the longest one alone, which keeps `.ci/run` inside its
//! budget on a 2-core machine.
//!
//! - [`compose`]: real composes of the shipped treefiles, their images, lockfiles and layers;
//! - [`release`]: signed releases served, promoted, pruned and retired;
//! - [`boots`]: the vm-test suites on the shipped image, and fleet rollouts under load.
//!
//! `cargo test --release --test scenarios CHAIN::` runs one chain (`compose::`, `release::`,
//! `vmtest::`, `fleet::`); a step name runs the steps before it first. They need root, the build
//! host's apt sources, QEMU, OVMF, HAProxy and gpg (`.ci/deps` installs them).

#[macro_use]
#[path = "chain/mod.rs"]
mod chain;
#[path = "release_world/mod.rs"]
mod release_world;

#[path = "boots/mod.rs"]
mod boots;
#[path = "compose/mod.rs"]
mod compose;
#[path = "release/mod.rs"]
mod release;

fn main() -> std::process::ExitCode {
    let mut trials = boots::trials();
    trials.extend(compose::trials());
    trials.extend(release::trials());
    let code = chain::run(trials);
    boots::shared::Shared::cleanup();
    code
}
