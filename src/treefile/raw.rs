//! Raw values of the treefile keys that are more than a string: `include` and the account
//! tables. The raw treefile itself is generated from the key table in [`super::keys`].

use serde::Deserialize;

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
