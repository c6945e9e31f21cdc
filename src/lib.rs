//! cairn: compose OSTree commits for Debian-based immutable hosts from TOML treefiles.
//!
//! The data flows one way: [`treefile`] → [`compose`] (through [`apt`]) → an OSTree commit in
//! [`repo`] → later images and boot tests. [`cmd`] runs every external program; [`tmp`] holds the
//! guards that clean up temporary trees and mounts.

pub mod cmd;
pub mod tmp;
pub mod treefile;
