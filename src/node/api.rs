//! The node's status contract, in the style of bootc's `spec.rs`: the one document that
//! `/var/lib/cairn/status.json`, `cairn node status --json` and every reader (the fleet's agent
//! over SSH, a test, a person with `jq`) share. The node writes it from these types and every
//! reader deserializes the same types; nothing compares its words as strings.
//!
//! The document carries its [`FORMAT`]; an incompatible change bumps it. Reading is strict
//! ([`read`]): a missing field (an `Option` too: it must be present, `null` when empty), an unknown
//! enum value, or a format this cairn does not know is an error naming the field's path or the
//! format, never a default. Fields a newer writer adds within the same format are ignored.
//!
//! The pure changes to the records are in [`super::record`]; the fixture `api/status-v1.json`
//! holds a document of the current format, read and written back byte for byte by the tests.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::base::text::short_hash;

/// The format of the document (bumped on an incompatible change).
pub const FORMAT: u32 = 1;

/// An enum on the wire: each variant's word is written once, here, and serde, [`Self::as_str`]
/// and `Display` all use it. `ALL` lists the variants (for the round-trip tests).
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $w:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $w)] $v,)*
        }

        impl $name {
            /// Every variant.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $w,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Where the node stands: the state machine's state ([`super::state::State::wire`]).
    pub enum NodeState {
        /// Nothing on trial.
        Steady = "steady",
        /// A new deployment is the default and armed; it has not booted yet.
        Armed = "armed",
        /// This boot is a trial.
        OnTrial = "on-trial",
        /// This trial boot is healthy (its marker and countdown being cleared).
        Passed = "passed",
        /// This trial boot is unhealthy (being rebooted).
        Failing = "failing",
        /// The tries are spent and the previous deployment booted.
        FellBack = "fell-back",
        /// A countdown that belongs to no trial in this boot.
        Stale = "stale",
        /// The node could not tell (its facts could not be read: the error is on stderr).
        Unknown = "unknown",
    }
}

wire_enum! {
    /// The health verdict on this boot.
    pub enum Verdict {
        /// It passed its health check.
        Good = "good",
        /// It failed its health check.
        Failed = "failed",
        /// A trial boot waiting for its verdict.
        Trial = "trial",
        /// Not given yet.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// What classifying this boot found (`cairn-trial.service`).
    pub enum BootClass {
        /// Nothing on trial.
        Normal = "normal",
        /// A trial boot.
        Trial = "trial",
        /// A stale countdown was cleared.
        StaleCleared = "stale-cleared",
        /// The tries were spent: the fall-back was recorded and the failed deployment dropped.
        FellBack = "fell-back",
        /// The previous deployment booted while the new one is armed (its countdown stays).
        Armed = "armed",
    }
}

wire_enum! {
    /// What a move did (`cairn node upgrade|rebase|rollback --json`).
    pub enum Action {
        Upgrade = "upgrade",
        Rebase = "rebase",
        Rollback = "rollback",
        /// An armed trial cancelled before it booted.
        Cancel = "cancel",
        /// Nothing moved.
        None = "none",
    }
}

/// An `Option` field that must be present (`null` when empty): serde would read a missing one
/// as `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::deserialize(d)
}

/// A deployment by identity: its commit and libostree's serial (the same commit can be
/// deployed twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentId {
    pub commit: String,
    pub serial: i32,
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", short_hash(&self.commit), self.serial)
    }
}

/// An unhealthy trial boot, as the node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub boot_id: String,
    pub reason: String,
    pub time: String,
}

/// A deployment on trial, as the node armed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub deployment: DeploymentId,
    #[serde(deserialize_with = "present")]
    pub version: Option<String>,
    /// Trial boots it was given.
    pub tries: u32,
    /// When it was armed (RFC 3339).
    pub armed: String,
    /// The deployment that was booted when it was armed (the one GRUB falls back to).
    pub from: DeploymentId,
    /// Its unhealthy boots so far.
    pub attempts: Vec<Attempt>,
}

/// A deployment as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub index: usize,
    pub commit: String,
    pub serial: i32,
    #[serde(deserialize_with = "present")]
    pub version: Option<String>,
    /// The refspec it follows (`remote:ref`).
    #[serde(deserialize_with = "present")]
    pub origin: Option<String>,
    pub booted: bool,
    /// The key that signed the commit, as the remote's keyring verifies it (`None`: unsigned or
    /// not verifiable).
    #[serde(deserialize_with = "present")]
    pub signed_by: Option<String>,
    /// The commit's `ostree.endoflife`, if its ref has ended.
    #[serde(deserialize_with = "present")]
    pub endoflife: Option<String>,
}

/// A commit that failed its trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(deserialize_with = "present")]
    pub version: Option<String>,
    pub reason: String,
    pub time: String,
}

/// The last automatic rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The commit that failed, and its deploy serial.
    pub commit: String,
    pub serial: i32,
    #[serde(deserialize_with = "present")]
    pub version: Option<String>,
    pub reason: String,
    pub attempts: Vec<Attempt>,
    /// The deployment the node is back on.
    pub booted: DeploymentId,
    pub time: String,
}

/// The last boot that passed its health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Good {
    pub deployment: DeploymentId,
    pub boot_id: String,
    /// It ended a trial.
    pub trial: bool,
    pub time: String,
}

/// A move because the followed ref ended (`ostree.endoflife-rebase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndOfLife {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub message: String,
    pub rebased_to: String,
    pub time: String,
}

/// The booted deployment, for a reader that wants only that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booted {
    pub commit: String,
    pub serial: i32,
    #[serde(deserialize_with = "present")]
    pub version: Option<String>,
    /// The ref it follows (without the remote).
    #[serde(rename = "ref", deserialize_with = "present")]
    pub ref_: Option<String>,
    #[serde(deserialize_with = "present")]
    pub origin: Option<String>,
}

/// The last unhealthy verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unhealthy {
    pub boot_id: String,
    pub reason: String,
    pub time: String,
}

/// The document: `/var/lib/cairn/status.json`, `cairn node status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// [`FORMAT`] when written by this cairn.
    pub format: u32,
    pub updated: String,
    /// The state machine's state.
    pub state: NodeState,
    /// The health verdict on this boot.
    pub verdict: Verdict,
    /// This boot's id and what classifying it found.
    #[serde(deserialize_with = "present")]
    pub boot_id: Option<String>,
    #[serde(deserialize_with = "present")]
    pub boot: Option<BootClass>,
    #[serde(deserialize_with = "present")]
    pub booted: Option<Booted>,
    pub deployments: Vec<Deployment>,
    #[serde(deserialize_with = "present")]
    pub trial: Option<Trial>,
    #[serde(deserialize_with = "present")]
    pub last_rollback: Option<Rollback>,
    /// Commits that failed their trial: never deployed again without `--allow-retry`.
    pub failed: BTreeMap<String, Failure>,
    #[serde(deserialize_with = "present")]
    pub last_good: Option<Good>,
    #[serde(deserialize_with = "present")]
    pub last_unhealthy: Option<Unhealthy>,
    #[serde(deserialize_with = "present")]
    pub endoflife: Option<EndOfLife>,
}

/// The empty record of a node that has written none yet (its first boot).
impl Default for Status {
    fn default() -> Self {
        Status {
            format: FORMAT,
            updated: String::new(),
            state: NodeState::Steady,
            verdict: Verdict::Unknown,
            boot_id: None,
            boot: None,
            booted: None,
            deployments: Vec::new(),
            trial: None,
            last_rollback: None,
            failed: BTreeMap::new(),
            last_good: None,
            last_unhealthy: None,
            endoflife: None,
        }
    }
}

impl Status {
    /// The booted deployment, as last recorded.
    pub fn booted(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.booted)
    }

    /// The default deployment (the next boot's), as last recorded.
    pub fn default_deployment(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.index == 0)
    }
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON, or a field missing, of the wrong type, or with an unknown value.
    #[error("{}", at(.path.as_deref(), .error))]
    Invalid {
        /// Where in the document (`deployments[0].booted`); `None` at its top.
        path: Option<String>,
        error: serde_json::Error,
    },
    #[error("format {found} is newer than this cairn reads (format {FORMAT}): upgrade cairn")]
    Newer { found: u32 },
    #[error("format {found} is not one this cairn reads (format {FORMAT})")]
    Unknown { found: u32 },
}

fn at(path: Option<&str>, error: &serde_json::Error) -> String {
    match path {
        Some(p) => format!("{p}: {error}"),
        None => error.to_string(),
    }
}

/// Read a document strictly: its `format` first, then every field.
pub fn read(text: &[u8]) -> Result<Status, ReadError> {
    #[derive(Deserialize)]
    struct Probe {
        format: u32,
    }
    match parse::<Probe>(text)?.format {
        FORMAT => parse(text),
        found if found > FORMAT => Err(ReadError::Newer { found }),
        found => Err(ReadError::Unknown { found }),
    }
}

fn parse<T: DeserializeOwned>(text: &[u8]) -> Result<T, ReadError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ReadError::Invalid {
            path: (path != ".").then_some(path),
            error: e.into_inner(),
        }
    })?;
    de.end()
        .map_err(|error| ReadError::Invalid { path: None, error })?;
    Ok(v)
}

/// The document as the node writes it: pretty JSON and a final newline.
pub fn write(s: &Status) -> serde_json::Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(s)?;
    text.push(b'\n');
    Ok(text)
}

#[cfg(test)]
mod tests;
