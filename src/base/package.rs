//! A Debian binary package as cairn records it: in a commit's metadata, a lockfile, an SBOM, a
//! diff, and on the node.

use serde::{Deserialize, Serialize};

/// A resolved binary package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SHA-256 of the `.deb`, once downloaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

impl Package {
    /// `name=version`, as apt takes it.
    pub fn pin(&self) -> String {
        format!("{}={}", self.name, self.version)
    }

    /// The file name apt gives the package in its archive cache.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// What a package's own files say about it, for SBOMs: its source package and its licenses.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageInfo {
    pub name: String,
    /// The source package, when its name differs from the binary's (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The source package's version, when it differs from the binary's (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_version: String,
    /// An SPDX license expression from the machine-readable `debian/copyright` (empty when the
    /// package has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
}

/// The operating system a tree is built from, as os-release names it (`debian`, `12`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    pub id: String,
    pub version_id: String,
}

impl Distro {
    /// `debian-12`, as a purl's `distro` qualifier takes it.
    pub fn qualifier(&self) -> String {
        format!("{}-{}", self.id, self.version_id)
    }
}
