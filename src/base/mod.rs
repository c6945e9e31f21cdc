//! The shared basics at the bottom of cairn: nothing here knows about treefiles, commits, images
//! or VMs, and every other module may use them.
//!
//! - [`cmd`]: the one way an external program runs (logged, timed out, its stderr in the error);
//! - [`interrupt`]: Ctrl-C and SIGTERM noted, so that guards can unwind;
//! - [`tmp`]: temporary trees, chroot mounts and atomic writes that clean up after themselves;
//! - [`progress`]: a spinner per phase on a terminal, plain log lines otherwise;
//! - [`logging`]: the log subscriber (colour only on a terminal);
//! - [`net`]: hosts and `host:port` addresses as manifests give them;
//! - [`digest`], [`units`], [`text`], [`time`], [`span`]: digests, sizes and durations, log tails
//!   and short hashes, timestamps, and the line of a TOML value for errors;
//! - [`package`] and [`firmware`]: the vocabulary shared by compose, image, VMs and the node.

pub mod cmd;
pub mod digest;
pub mod firmware;
pub mod haproxy;
pub mod interrupt;
pub mod logging;
pub mod net;
pub mod package;
pub mod progress;
pub mod span;
pub mod text;
pub mod time;
pub mod tmp;
pub mod units;

pub use firmware::Firmware;
pub use package::{Distro, Package, PackageInfo};
