//! cairn carries an immutable Debian host through its life: it composes OSTree commits from TOML
//! treefiles, turns a commit into bootable disk images, and proves each image by booting it.
//!
//! The modules are stages, and the data flows down the list without reaching back (see
//! `docs/architecture.md`):
//!
//! - [`base`]: shared basics (command runner, interrupts, temporary trees, progress, digests,
//!   sizes, `Package`, `Firmware`);
//! - [`lock`]: the FleetLock reboot-slot service (`cairn lock`) and its client, on etcd or an
//!   embedded store;
//! - [`store`]: the OSTree layer (the repo, typed commit metadata, sysroot deployments, serving
//!   the repo over HTTP);
//! - [`describe`]: what a commit holds (SBOMs, package diffs);
//! - [`release`]: signing, serving with static deltas, promotion, pruning, end of life and the
//!   audit log, for the commits compose makes;
//! - [`node`]: on a host booted from a cairn image, upgrades, rebases and rollbacks from its
//!   signed remote, the automatic rollback of a deployment that is not healthy, and the typed
//!   status a fleet reads ([`node::api`]);
//! - [`treefile`] → [`compose`]: what goes into a host, and the commit made of it;
//! - [`image`]: a commit → disk images, from an image manifest;
//! - [`vm`] → [`vmtest`]: booting images under QEMU, and boot tests;
//! - [`fleet`]: rollouts of a commit across a fleet behind a load balancer;
//! - [`pipeline`]: the compose-then-image job that `build` and `vm-test --build` call;
//! - [`cli`]: the command line (the binary only parses and dispatches).

// One stage per group, in the order of docs/architecture.md (a module uses only those above it).
pub mod base;

pub mod lock;

pub mod store;

pub mod describe;

pub mod release;

pub mod node;

pub mod treefile;

pub mod compose;

pub mod image;

pub mod vm;

pub mod vmtest;

pub mod fleet;

pub mod pipeline;

pub mod cli;
