//! cairn: compose OSTree commits for Debian-based immutable hosts from TOML treefiles.
//!
//! The data flows one way: [`treefile`] → [`compose`] (through [`apt`]) → an OSTree commit in
//! [`repo`], described by [`sbom`] and compared by [`diff`]. [`cmd`] runs every external program;
//! [`tmp`] holds the guards that clean up temporary trees and mounts; [`progress`] shows it.
//! [`image`] turns a commit into disk images from a [`manifest`]; [`vm`] boots them under QEMU
//! and [`vmtest`] proves them with boot tests. [`release`] signs commits, serves the repo with
//! static deltas, promotes, prunes and retires streams, and keeps the audit log.

pub mod apt;
pub mod artifacts;
pub mod cmd;
pub mod compose;
pub mod diff;
pub mod image;
pub mod interrupt;
pub mod lockfile;
pub mod manifest;
pub mod progress;
pub mod release;
pub mod repo;
pub mod sbom;
pub mod tmp;
pub mod treefile;
pub mod vm;
pub mod vmtest;
