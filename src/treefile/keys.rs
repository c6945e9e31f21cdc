//! The treefile's keys, each defined once, in [`treefile_keys!`]'s table. From that one line per
//! key come: the raw TOML struct (what may be written), how values merge across includes and
//! layers, and the flattened form that enters the input hash. A key cannot be parsed but
//! forgotten in the hash: the flattened form is made from the same table.
//!
//! What a kind of key does:
//!
//! | kind | includes (fragments) | a child layer | in the hash |
//! | --- | --- | --- | --- |
//! | `own` | the later file wins | its own value | yes |
//! | `locked` | the later file wins | inherits, may not change it | yes |
//! | `inherited` | the later file wins | inherits, may override | yes |
//! | `map` | tables merge | inherits, may add or override entries | yes |
//! | `list` | arrays concatenate | its own list (the parent's is in its commit) | yes |
//! | `each` | one value per file, collected into a list | like `list` | yes |
//! | `signing` | the later file wins | inherits, may override | no: who signs is not what is built |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use toml::Spanned;

use super::raw::{OneOrMany, RawGroup, RawUser};
use super::{FileCtx, Item, Origin};
use crate::store::MetaValue;

/// A file copied into the tree (`add-files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFile {
    /// The source, resolved against the treefile's directory.
    pub src: PathBuf,
    /// Where it goes in the tree.
    pub dest: String,
}

/// A script run in the tree (`postprocess-script`), resolved against the treefile's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script(pub PathBuf);

/// How a key's value is read from TOML and what it contributes to the flattened form.
pub trait KeyValue: Sized + Clone + PartialEq {
    /// The value as TOML gives it.
    type Raw: DeserializeOwned;
    /// Check and convert a raw value written at `origin` in the file `fc`.
    fn from_raw(raw: Self::Raw, fc: &FileCtx, key: &str, origin: &Origin) -> Result<Self>;
    /// The value as it enters the input hash: content, not location.
    fn flat(&self) -> Result<Value>;
}

macro_rules! plain_value {
    ($($t:ty),*) => {$(
        impl KeyValue for $t {
            type Raw = $t;
            fn from_raw(raw: $t, _: &FileCtx, _: &str, _: &Origin) -> Result<Self> {
                Ok(raw)
            }
            fn flat(&self) -> Result<Value> {
                Ok(serde_json::to_value(self)?)
            }
        }
    )*};
}
plain_value!(String, bool, Vec<String>, RawUser, RawGroup);

impl KeyValue for MetaValue {
    type Raw = toml::Value;
    fn from_raw(raw: toml::Value, _: &FileCtx, key: &str, origin: &Origin) -> Result<Self> {
        Ok(match raw {
            toml::Value::String(s) => MetaValue::Str(s),
            toml::Value::Integer(i) => MetaValue::Int(i),
            toml::Value::Boolean(b) => MetaValue::Bool(b),
            other => bail!(
                "{origin}: key `{key}`: only strings, integers and booleans are supported, not {}",
                other.type_str()
            ),
        })
    }
    fn flat(&self) -> Result<Value> {
        Ok(serde_json::to_value(self)?)
    }
}

impl KeyValue for AddFile {
    type Raw = (String, String);
    fn from_raw(raw: (String, String), fc: &FileCtx, key: &str, origin: &Origin) -> Result<Self> {
        let (src, dest) = raw;
        let src = fc.dir().join(src);
        if !src.is_file() {
            bail!(
                "{origin}: key `{key}`: source {} does not exist (or is not a file)",
                src.display()
            );
        }
        Ok(AddFile { src, dest })
    }
    fn flat(&self) -> Result<Value> {
        Ok(json!([self.dest, file_digest(&self.src)?]))
    }
}

impl KeyValue for Script {
    type Raw = String;
    fn from_raw(raw: String, fc: &FileCtx, key: &str, origin: &Origin) -> Result<Self> {
        let p = fc.dir().join(raw);
        if !p.is_file() {
            bail!(
                "{origin}: key `{key}`: script {} does not exist",
                p.display()
            );
        }
        Ok(Script(p))
    }
    fn flat(&self) -> Result<Value> {
        Ok(json!(file_digest(&self.0)?))
    }
}

/// `node-agent`: install the running cairn as `/usr/bin/cairn` with the node's systemd units
/// (`cairn node`, automatic rollback). Its flattened value carries the digests of that binary
/// and of the units, so a new cairn composes again; the same binary composes the same tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAgent(pub bool);

impl KeyValue for NodeAgent {
    type Raw = bool;
    fn from_raw(raw: bool, _: &FileCtx, _: &str, _: &Origin) -> Result<Self> {
        Ok(NodeAgent(raw))
    }
    fn flat(&self) -> Result<Value> {
        if !self.0 {
            return Ok(json!(false));
        }
        Ok(json!({
            "binary": node_binary_digest()?,
            "units": crate::node::units::digest(),
        }))
    }
}

/// The running cairn executable, which `node-agent` installs.
pub fn node_binary() -> Result<PathBuf> {
    std::env::current_exe().context("finding the running cairn executable (for `node-agent`)")
}

fn node_binary_digest() -> Result<String> {
    let exe = node_binary()?;
    crate::base::digest::sha256_file(&exe).with_context(|| format!("reading {}", exe.display()))
}

/// SHA-256 of a file's content and its executable bit.
fn file_digest(p: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut data = fs_err::read(p)?;
    let mode = fs_err::metadata(p)?.permissions().mode();
    data.push(if mode & 0o111 != 0 { b'x' } else { b'-' });
    Ok(crate::base::digest::sha256_hex(&data))
}

/// Convert one spanned raw value.
fn convert<V: KeyValue>(raw: Spanned<V::Raw>, fc: &FileCtx, key: &str) -> Result<Item<V>> {
    let origin = fc.origin(&raw);
    let value = V::from_raw(raw.into_inner(), fc, key, &origin)?;
    Ok(Item { value, origin })
}

macro_rules! raw_type {
    (map, $v:ty) => { Option<BTreeMap<String, Spanned<<$v as KeyValue>::Raw>>> };
    (list, $v:ty) => { Option<Vec<Spanned<<$v as KeyValue>::Raw>>> };
    ($kind:ident, $v:ty) => { Option<Spanned<<$v as KeyValue>::Raw>> };
}

macro_rules! merged_type {
    (map, $v:ty) => { BTreeMap<String, Item<$v>> };
    (list, $v:ty) => { Vec<Item<$v>> };
    (each, $v:ty) => { Vec<Item<$v>> };
    ($kind:ident, $v:ty) => { Option<Item<$v>> };
}

/// Merge an included fragment's value over what came before it.
macro_rules! absorb_key {
    (map, $mine:expr, $theirs:expr) => {
        $mine.extend($theirs)
    };
    (list, $mine:expr, $theirs:expr) => {
        $mine.extend($theirs)
    };
    (each, $mine:expr, $theirs:expr) => {
        $mine.extend($theirs)
    };
    ($kind:ident, $mine:expr, $theirs:expr) => {
        if $theirs.is_some() {
            $mine = $theirs;
        }
    };
}

/// What a child layer takes from its parent layer.
macro_rules! inherit_key {
    (own, $mine:expr, $parent:expr) => {};
    (list, $mine:expr, $parent:expr) => {};
    (each, $mine:expr, $parent:expr) => {};
    ($kind:ident, $mine:expr, $parent:expr) => {
        $mine = $parent.clone()
    };
}

/// Read a file's own value of a key.
macro_rules! apply_key {
    (map, $v:ty, $mine:expr, $raw:expr, $fc:expr, $name:expr) => {
        for (k, v) in $raw.into_iter().flatten() {
            let item = convert::<$v>(v, $fc, &format!("{}.{k}", $name))?;
            $mine.insert(k, item);
        }
    };
    (list, $v:ty, $mine:expr, $raw:expr, $fc:expr, $name:expr) => {
        for v in $raw.into_iter().flatten() {
            $mine.push(convert::<$v>(v, $fc, $name)?);
        }
    };
    (each, $v:ty, $mine:expr, $raw:expr, $fc:expr, $name:expr) => {
        if let Some(v) = $raw {
            $mine.push(convert::<$v>(v, $fc, $name)?);
        }
    };
    ($kind:ident, $v:ty, $mine:expr, $raw:expr, $fc:expr, $name:expr) => {
        if let Some(v) = $raw {
            $mine = Some(convert::<$v>(v, $fc, $name)?);
        }
    };
}

/// A layer may not change a `locked` key its parent was composed with.
macro_rules! check_locked {
    (locked, $v:ty, $raw:expr, $parent:expr, $fc:expr, $name:expr) => {
        if let Some(v) = &$raw {
            let mine = convert::<$v>(v.clone(), $fc, $name)?;
            let theirs = $parent.as_ref().map(|p: &Item<$v>| &p.value);
            if theirs != Some(&mine.value) {
                bail!(
                    "{}: key `{}`: a layer cannot change what its parent layer was composed with \
                     (parent: {}, here: {})",
                    mine.origin,
                    $name,
                    theirs.map_or("unset".to_string(), |t| format!("{t:?}")),
                    format!("{:?}", mine.value)
                );
            }
        }
    };
    ($kind:ident, $v:ty, $raw:expr, $parent:expr, $fc:expr, $name:expr) => {};
}

/// Flatten one key's value (`None`: the key is not an input of the build).
macro_rules! flat_key {
    (signing, $mine:expr) => {
        None
    };
    (map, $mine:expr) => {{
        let mut m = serde_json::Map::new();
        for (k, v) in &$mine {
            m.insert(k.clone(), v.value.flat()?);
        }
        Some(Value::Object(m))
    }};
    (list, $mine:expr) => {
        Some(Value::Array(
            $mine
                .iter()
                .map(|i| i.value.flat())
                .collect::<Result<_>>()?,
        ))
    };
    (each, $mine:expr) => {
        Some(Value::Array(
            $mine
                .iter()
                .map(|i| i.value.flat())
                .collect::<Result<_>>()?,
        ))
    };
    ($kind:ident, $mine:expr) => {
        Some(match &$mine {
            Some(i) => i.value.flat()?,
            None => Value::Null,
        })
    };
}

macro_rules! treefile_keys {
    ($( $kind:ident $field:ident $name:literal : $v:ty ; )*) => {
        /// A treefile exactly as parsed from TOML: every key optional, unknown keys rejected,
        /// spans kept so that validation can name the line at fault.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawTreefile {
            /// Treefiles merged in (fragments) or started from (a parent layer).
            pub include: Option<Spanned<OneOrMany>>,
            $( #[serde(rename = $name)] pub $field: raw_type!($kind, $v), )*
        }

        /// Every key's merged value, with where it was written.
        #[derive(Debug, Clone, Default)]
        pub struct Keys {
            $( pub $field: merged_type!($kind, $v), )*
        }

        /// Every key a treefile may have, as written (`include` included).
        pub const KEYS: &[&str] = &["include", $( $name ),*];

        impl Keys {
            /// Merge an included fragment (it came before this file's own keys).
            pub fn absorb(&mut self, other: Keys) {
                $( absorb_key!($kind, self.$field, other.$field); )*
            }

            /// Take what a child layer inherits from its parent layer.
            pub fn inherit(&mut self, parent: &Keys) {
                $( inherit_key!($kind, self.$field, parent.$field); )*
            }

            /// Apply a file's own keys over what its includes gave; `parent` is the parent
            /// layer's keys, whose `locked` keys this file may not change.
            pub fn apply(
                &mut self,
                raw: RawTreefile,
                fc: &FileCtx,
                parent: Option<&Keys>,
            ) -> Result<()> {
                if let Some(p) = parent {
                    $( check_locked!($kind, $v, raw.$field, p.$field, fc, $name); )*
                }
                $( apply_key!($kind, $v, self.$field, raw.$field, fc, $name); )*
                Ok(())
            }

            /// The keys as they enter the input hash: values and file contents, no locations.
            pub fn flatten(&self) -> Result<serde_json::Map<String, Value>> {
                let mut m = serde_json::Map::new();
                $(
                    if let Some(v) = flat_key!($kind, self.$field) {
                        m.insert($name.to_string(), v);
                    }
                )*
                Ok(m)
            }
        }
    };
}

treefile_keys! {
    own       ref_                      "ref":                      String;
    locked    releasever                "releasever":               String;
    locked    repos                     "repos":                    Vec<String>;
    locked    recommends                "recommends":               bool;
    locked    documentation             "documentation":            bool;
    own       node_agent                "node-agent":               NodeAgent;
    inherited default_target            "default-target":           String;
    inherited automatic_version_prefix  "automatic-version-prefix": String;
    inherited mutate_os_release         "mutate-os-release":        String;
    map       add_commit_metadata       "add-commit-metadata":      MetaValue;
    list      packages                  "packages":                 String;
    list      exclude_packages          "exclude-packages":         String;
    list      add_files                 "add-files":                AddFile;
    list      remove_files              "remove-files":             String;
    each      postprocess_script        "postprocess-script":       Script;
    list      postprocess               "postprocess":              String;
    list      units                     "units":                    String;
    list      initramfs_args            "initramfs-args":           String;
    list      users                     "users":                    RawUser;
    list      groups                    "groups":                   RawGroup;
    signing   gpg_key                   "gpg-key":                  String;
}

/// The keys that do not enter the input hash, and why: changing them changes no byte of the
/// tree (a new signing key signs the same commit; it is not a new build).
pub const NOT_HASHED: &[&str] = &["gpg-key"];

/// Read `src` (the file at `path`) into raw keys.
pub fn parse(path: &Path, src: &str) -> Result<RawTreefile> {
    toml::from_str(src).map_err(|e| crate::base::span::toml_error(path, "treefile", src, &e))
}
