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
