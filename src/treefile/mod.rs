//! Treefiles: what goes into a host.
//!
//! Parsed in stages, as the house rules ask: raw TOML (unknown keys are errors) → includes
//! resolved and merged → a validated [`Treefile`] whose errors name the file, the line and the
//! key. Every key is defined once, in [`keys`]: its raw form, how it merges and how it enters the
//! input hash all come from that one line.
//!
//! An included treefile that has a `ref` of its own, included by one that also has a `ref`, is a
//! *parent layer*: it is composed to its own ref first and the child starts from its commit.
//! Includes without a `ref` are fragments merged into the file that includes them.

pub mod keys;
pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml::Spanned;

use crate::base::span::line_of;
use crate::store::MetaValue;
pub use keys::{AddFile, Keys, Script, KEYS, NOT_HASHED};
pub use raw::{RawGroup as Group, RawUser as User};

/// Where a value was written: file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<T> {
    pub value: T,
    pub origin: Origin,
}

/// A validated treefile.
#[derive(Debug, Clone)]
pub struct Treefile {
    /// The file this treefile was loaded from.
    pub path: PathBuf,
    /// The OSTree ref, `${basearch}` expanded.
    pub ref_: String,
    /// The Debian release (suite or codename) the packages come from.
    pub releasever: String,
    /// Every key: this layer's own lists, and the settings of the whole tree (inherited from
    /// the parent layer where the key is inherited).
    pub keys: Keys,
    /// The parent layer this one starts from, if any.
    pub parent: Option<Box<Treefile>>,
}

/// The Debian architecture of the build host, for `${basearch}`.
pub fn basearch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Load, merge and validate the treefile at `path`.
pub fn load(path: &Path) -> Result<Treefile> {
    let mut stack = Vec::new();
    let merged = load_merged(path, &mut stack)?;
    validate::validate(merged)
}

/// A parsed file (with its includes) before validation.
#[derive(Default)]
struct Merged {
    path: PathBuf,
    keys: Keys,
    parent: Option<Box<Treefile>>,
}

/// The file being read, for origins of its values.
pub struct FileCtx<'a> {
    path: &'a Path,
    src: &'a str,
}

impl FileCtx<'_> {
    fn origin<T>(&self, s: &Spanned<T>) -> Origin {
        Origin {
            file: self.path.to_path_buf(),
            line: line_of(self.src, s.span().start),
        }
    }

    /// The directory relative paths in the file are resolved against.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

fn load_merged(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Merged> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("treefile {} not found", path.display()))?;
    if let Some(pos) = stack.iter().position(|p| p == &canon) {
        let chain: Vec<String> = stack[pos..]
            .iter()
            .chain(std::iter::once(&canon))
            .map(|p| p.display().to_string())
            .collect();
        bail!("include cycle: {}", chain.join(" → "));
    }
    let src = fs_err::read_to_string(&canon).context("reading the treefile")?;
    let mut raw = keys::parse(path, &src)?;
    let fc = FileCtx { path, src: &src };
    stack.push(canon);
    let mut m = Merged {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let has_own_ref = raw.ref_.is_some();
    if let Some(includes) = raw.include.take() {
        let inc_origin = fc.origin(&includes);
        for inc in includes.into_inner().into_vec() {
            let inc_path = fc.dir().join(&inc);
            if !inc_path.exists() {
                bail!(
                    "{inc_origin}: key `include`: included treefile {} does not exist",
                    inc_path.display()
                );
            }
            let child = load_merged(&inc_path, stack)?;
            if has_own_ref && child.keys.ref_.is_some() {
                if let Some(p) = &m.parent {
                    bail!(
                        "{inc_origin}: key `include`: a treefile can start from one parent layer \
                         only, but both {} and {} have a `ref`",
                        p.path.display(),
                        inc_path.display()
                    );
                }
                let parent = validate::validate(child)?;
                m.keys.inherit(&parent.keys);
                m.parent = Some(Box::new(parent));
            } else {
                m.absorb(child)?;
            }
        }
    }
    let parent_keys = m.parent.as_ref().map(|p| p.keys.clone());
    m.keys.apply(raw, &fc, parent_keys.as_ref())?;
    stack.pop();
    Ok(m)
}

impl Merged {
    /// Merge an included fragment: its scalars are overridden by later files, arrays concatenate.
    fn absorb(&mut self, c: Merged) -> Result<()> {
        self.keys.absorb(c.keys);
        if let Some(p) = c.parent {
            if let Some(mine) = &self.parent {
                bail!(
                    "{}: two parent layers reach this treefile: {} and {}",
                    self.path.display(),
                    mine.path.display(),
                    p.path.display()
                );
            }
            self.parent = Some(p);
        }
        Ok(())
    }
}

/// Normalise an absolute path inside the tree; `None` if it is not absolute or climbs out.
pub fn normalize_tree_path(p: &str) -> Option<String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn values<T: Clone>(items: &[Item<T>]) -> impl Iterator<Item = T> + '_ {
    items.iter().map(|i| i.value.clone())
}

impl Treefile {
    /// apt sources in one-line format; `None` means the build host's own sources.
    pub fn repos(&self) -> Option<Vec<String>> {
        self.keys.repos.as_ref().map(|r| r.value.clone())
    }

    /// Install Recommends (default no).
    pub fn recommends(&self) -> bool {
        self.keys.recommends.as_ref().is_some_and(|r| r.value)
    }

    /// Keep documentation (default yes).
    pub fn documentation(&self) -> bool {
        self.keys.documentation.as_ref().is_none_or(|r| r.value)
    }

    pub fn default_target(&self) -> Option<&str> {
        self.keys.default_target.as_ref().map(|t| t.value.as_str())
    }

    pub fn automatic_version_prefix(&self) -> Option<&str> {
        self.keys
            .automatic_version_prefix
            .as_ref()
            .map(|t| t.value.as_str())
    }

    pub fn mutate_os_release(&self) -> Option<&str> {
        self.keys
            .mutate_os_release
            .as_ref()
            .map(|t| t.value.as_str())
    }

    /// The GPG key id that signs this layer's commits (`gpg-key`, inherited by layers).
    pub fn gpg_key(&self) -> Option<&Item<String>> {
        self.keys.gpg_key.as_ref()
    }

    /// `add-commit-metadata`, the parent layers' included.
    pub fn add_commit_metadata(&self) -> BTreeMap<String, MetaValue> {
        self.keys
            .add_commit_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    /// A list key's values in this layer and all its parents, parents first.
    fn chain(&self, key: fn(&Keys) -> &Vec<Item<String>>) -> Vec<String> {
        let mut v = self
            .parent
            .as_ref()
            .map(|p| p.chain(key))
            .unwrap_or_default();
        v.extend(values(key(&self.keys)));
        v
    }

    /// Packages of this layer and all its parents, sorted.
    pub fn all_packages(&self) -> Vec<String> {
        let mut v = self.chain(|k| &k.packages);
        v.sort();
        v.dedup();
        v
    }

    /// Excluded packages of this layer and all its parents, sorted.
    pub fn all_exclude_packages(&self) -> Vec<String> {
        let mut v = self.chain(|k| &k.exclude_packages);
        v.sort();
        v.dedup();
        v
    }

    /// dracut arguments of this layer and its parents, parents first.
    pub fn all_initramfs_args(&self) -> Vec<String> {
        self.chain(|k| &k.initramfs_args)
    }

    /// Where in the treefiles a package was asked for (for error messages).
    pub fn package_origin(&self, name: &str) -> Option<Origin> {
        self.keys
            .packages
            .iter()
            .find(|p| p.value == name)
            .map(|p| p.origin.clone())
            .or_else(|| self.parent.as_ref().and_then(|p| p.package_origin(name)))
    }

    /// This layer's flattened form, for the input hash: every key from the key table (files by
    /// content), with the ref expanded. The parent enters the hash through its commit.
    pub fn flattened(&self) -> Result<serde_json::Value> {
        let mut m = self.keys.flatten()?;
        m.insert("ref".into(), serde_json::Value::String(self.ref_.clone()));
        Ok(serde_json::Value::Object(m))
    }
}

#[cfg(test)]
mod tests;
