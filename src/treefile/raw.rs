//! The raw treefile as written: every key optional, unknown keys rejected, spans kept so that
//! later validation can name the line at fault.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One string or a list of them (rpm-ostree accepts both for `include`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A user to create in the tree.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUser {
    pub name: String,
    pub uid: Option<u32>,
    pub group: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    #[serde(default)]
    pub system: bool,
}

/// A group to create in the tree.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGroup {
    pub name: String,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}

/// A treefile exactly as parsed from TOML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTreefile {
    #[serde(rename = "ref")]
    pub ref_: Option<Spanned<String>>,
    pub include: Option<Spanned<OneOrMany>>,
    pub releasever: Option<Spanned<String>>,
    pub packages: Option<Vec<Spanned<String>>>,
    pub exclude_packages: Option<Vec<Spanned<String>>>,
    pub repos: Option<Vec<Spanned<String>>>,
    pub recommends: Option<bool>,
    pub documentation: Option<bool>,
    pub add_files: Option<Vec<Spanned<(String, String)>>>,
    pub remove_files: Option<Vec<Spanned<String>>>,
    pub postprocess_script: Option<Spanned<String>>,
    pub postprocess: Option<Vec<String>>,
    pub units: Option<Vec<Spanned<String>>>,
    pub default_target: Option<Spanned<String>>,
    pub add_commit_metadata: Option<BTreeMap<String, Spanned<toml::Value>>>,
    pub automatic_version_prefix: Option<Spanned<String>>,
    pub mutate_os_release: Option<Spanned<String>>,
    pub initramfs_args: Option<Vec<String>>,
    pub users: Option<Vec<RawUser>>,
    pub groups: Option<Vec<RawGroup>>,
    /// The GPG key id that signs the commits (rpm-ostree's `gpg-key`).
    pub gpg_key: Option<Spanned<String>>,
}
