//! A fleet's directory (`build/fleets/NAME`): every file the fleet keeps, by one type, so that no
//! other module joins a file name by hand.
//!
//! | path | what | written by |
//! | --- | --- | --- |
//! | `fleet.json` | the fleet's record: its nodes, the next node number, its manifest | `fleet up`, the provider |
//! | `rollout.json` | the rollout's state, after every step | the rollout ([`super::state`]) |
//! | `rollout.lock` | one rollout at a time, naming its holder | [`super::lock`] |
//! | `rollout.control` | the operator's pause or abort | [`super::control`] |
//! | `haproxy/` | HAProxy's configuration, pid file and admin socket | [`super::haproxy`] |
//! | `nodes/NAME/` | a qemu node's overlay, seed, console log | the qemu provider |
//! | `id_ed25519`, `.pub` | the SSH key the qemu provider's nodes trust | the qemu provider |

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One fleet's directory, by absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDir {
    root: PathBuf,
}

impl FleetDir {
    /// The directory of fleet `name` under `fleets` (it need not exist yet).
    pub fn new(fleets: &Path, name: &str) -> Result<Self> {
        let root = std::path::absolute(fleets.join(name))
            .with_context(|| format!("{}: no absolute path", fleets.display()))?;
        Ok(FleetDir { root })
    }

    /// Make the directory (and its parents) if it is missing.
    pub fn create(&self) -> Result<()> {
        fs_err::create_dir_all(&self.root)?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fleet's record: present while the fleet is up.
    pub fn record(&self) -> PathBuf {
        self.root.join("fleet.json")
    }

    /// The rollout's state.
    pub fn state(&self) -> PathBuf {
        self.root.join("rollout.json")
    }

    /// The rollout lock.
    pub fn lock(&self) -> PathBuf {
        self.root.join("rollout.lock")
    }

    /// The operator's request to a running rollout.
    pub fn control(&self) -> PathBuf {
        self.root.join("rollout.control")
    }

    /// HAProxy's files.
    pub fn haproxy(&self) -> PathBuf {
        self.root.join("haproxy")
    }

    /// A qemu node's files.
    pub fn node(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }

    /// The SSH key of the qemu provider's nodes (the public key beside it, `.pub`).
    pub fn ssh_key(&self) -> PathBuf {
        self.root.join("id_ed25519")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_fleets_own_directory() {
        let d = FleetDir::new(Path::new("build/fleets"), "web").unwrap();
        assert!(d.root().is_absolute());
        assert!(d.root().ends_with("build/fleets/web"));
        for p in [
            d.record(),
            d.state(),
            d.lock(),
            d.control(),
            d.haproxy(),
            d.node("web-1"),
            d.ssh_key(),
        ] {
            assert!(p.starts_with(d.root()), "{}", p.display());
        }
        assert_eq!(d.node("web-1"), d.root().join("nodes/web-1"));
    }
}
