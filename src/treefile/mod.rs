//! Treefiles: what goes into a host.
//!
//! Parsed in stages, as the house rules ask: [`raw`] structs exactly as written (unknown keys are
//! errors) → includes resolved and merged (arrays concatenate, scalars override, maps merge) → a
//! validated [`Treefile`] whose errors name the file, the line and the key.
//!
//! An included treefile that has a `ref` of its own, included by one that also has a `ref`, is a
//! *parent layer*: it is composed to its own ref first and the child starts from its commit.
//! Includes without a `ref` are fragments merged into the file that includes them.

pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use raw::RawTreefile;
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
#[derive(Debug, Clone)]
pub struct Item<T> {
    pub value: T,
    pub origin: Origin,
}

/// One `add-files` entry: a file next to the treefile copied to `dest` in the tree.
#[derive(Debug, Clone)]
pub struct AddFile {
    pub src: PathBuf,
    pub dest: String,
    pub origin: Origin,
}

/// A commit metadata value from `add-commit-metadata`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// What one treefile contributes on top of its parent layer (its own keys plus its fragments).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub packages: Vec<Item<String>>,
    pub exclude_packages: Vec<Item<String>>,
    pub add_files: Vec<AddFile>,
    pub remove_files: Vec<Item<String>>,
    pub postprocess_scripts: Vec<Item<PathBuf>>,
    pub postprocess: Vec<String>,
    pub units: Vec<Item<String>>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub initramfs_args: Vec<String>,
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
    /// apt sources in one-line format; `None` means the build host's own sources.
    pub repos: Option<Vec<String>>,
    pub recommends: bool,
    pub documentation: bool,
    pub default_target: Option<String>,
    pub add_commit_metadata: BTreeMap<String, MetaValue>,
    pub automatic_version_prefix: Option<String>,
    pub mutate_os_release: Option<String>,
    /// The GPG key (id or fingerprint) its commits are signed with, and where it was named.
    /// Not part of the flattened treefile: signing does not change what a compose makes.
    pub gpg_key: Option<Item<String>>,
    /// This treefile's own contribution.
    pub layer: Layer,
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
    validate(merged)
}

/// A parsed file before validation.
#[derive(Default)]
struct Merged {
    path: PathBuf,
    ref_: Option<Item<String>>,
    releasever: Option<Item<String>>,
    repos: Option<Item<Vec<String>>>,
    recommends: Option<Item<bool>>,
    documentation: Option<Item<bool>>,
    default_target: Option<Item<String>>,
    add_commit_metadata: BTreeMap<String, Item<MetaValue>>,
    automatic_version_prefix: Option<Item<String>>,
    mutate_os_release: Option<Item<String>>,
    gpg_key: Option<Item<String>>,
    layer: Layer,
    parent: Option<Box<Treefile>>,
}

/// The 1-based line of a byte offset in `src` (for errors from spans).
pub(crate) fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

struct FileCtx<'a> {
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
    fn item<T: Clone>(&self, s: &Spanned<T>) -> Item<T> {
        Item {
            value: s.get_ref().clone(),
            origin: self.origin(s),
        }
    }
    fn key_origin(&self, key: &str) -> Origin {
        // Best effort for values that carry no span (booleans): the line that starts with the key.
        let line = self
            .src
            .lines()
            .position(|l| l.trim_start().starts_with(key))
            .map(|i| i + 1)
            .unwrap_or(1);
        Origin {
            file: self.path.to_path_buf(),
            line,
        }
    }
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
    let src = std::fs::read_to_string(&canon)
        .with_context(|| format!("reading treefile {}", path.display()))?;
    let raw: RawTreefile = toml::from_str(&src).map_err(|e| {
        anyhow!(
            "{}: invalid treefile: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })?;
    let fc = FileCtx { path, src: &src };
    stack.push(canon);
    let mut m = Merged {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let has_own_ref = raw.ref_.is_some();
    if let Some(includes) = raw.include.clone() {
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
            if has_own_ref && child.ref_.is_some() {
                if let Some(p) = &m.parent {
                    bail!(
                        "{inc_origin}: key `include`: a treefile can start from one parent layer \
                         only, but both {} and {} have a `ref`",
                        p.path.display(),
                        inc_path.display()
                    );
                }
                let parent = validate(child)?;
                m.inherit(&parent);
                m.parent = Some(Box::new(parent));
            } else {
                m.absorb(child)?;
            }
        }
    }
    apply_own(&mut m, raw, &fc)?;
    stack.pop();
    Ok(m)
}

impl Merged {
    /// Take the scalars a child layer inherits from its parent (the child may not change them).
    fn inherit(&mut self, p: &Treefile) {
        let o = Origin {
            file: p.path.clone(),
            line: 1,
        };
        let it = |v| Item {
            value: v,
            origin: o.clone(),
        };
        self.releasever = Some(it(p.releasever.clone()));
        self.repos = p.repos.clone().map(|r| Item {
            value: r,
            origin: o.clone(),
        });
        self.recommends = Some(Item {
            value: p.recommends,
            origin: o.clone(),
        });
        self.documentation = Some(Item {
            value: p.documentation,
            origin: o.clone(),
        });
        self.default_target = p.default_target.clone().map(it);
        self.automatic_version_prefix = p.automatic_version_prefix.clone().map(it);
        self.mutate_os_release = p.mutate_os_release.clone().map(it);
        // A layer of a signed stream is signed with the same key unless it names another.
        self.gpg_key = p.gpg_key.clone();
        for (k, v) in &p.add_commit_metadata {
            self.add_commit_metadata.insert(
                k.clone(),
                Item {
                    value: v.clone(),
                    origin: o.clone(),
                },
            );
        }
    }

    /// Merge an included fragment: its scalars are overridden by later files, arrays concatenate.
    fn absorb(&mut self, c: Merged) -> Result<()> {
        macro_rules! over {
            ($f:ident) => {
                if c.$f.is_some() {
                    self.$f = c.$f;
                }
            };
        }
        over!(ref_);
        over!(releasever);
        over!(repos);
        over!(recommends);
        over!(documentation);
        over!(default_target);
        over!(automatic_version_prefix);
        over!(mutate_os_release);
        over!(gpg_key);
        self.add_commit_metadata.extend(c.add_commit_metadata);
        let l = c.layer;
        self.layer.packages.extend(l.packages);
        self.layer.exclude_packages.extend(l.exclude_packages);
        self.layer.add_files.extend(l.add_files);
        self.layer.remove_files.extend(l.remove_files);
        self.layer.postprocess_scripts.extend(l.postprocess_scripts);
        self.layer.postprocess.extend(l.postprocess);
        self.layer.units.extend(l.units);
        self.layer.users.extend(l.users);
        self.layer.groups.extend(l.groups);
        self.layer.initramfs_args.extend(l.initramfs_args);
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

/// Apply a file's own keys over what its includes gave.
fn apply_own(m: &mut Merged, raw: RawTreefile, fc: &FileCtx) -> Result<()> {
    let parent = m.parent.as_deref().map(|p| (p.path.clone(), p));
    // A layer cannot change how its parent was composed.
    if let Some((ppath, p)) = &parent {
        let clash = |key: &str, mine: String, theirs: String| -> Result<()> {
            if mine != theirs {
                bail!(
                    "{}: key `{key}`: a layer cannot change what its parent layer {} was composed \
                     with (parent: {theirs}, here: {mine})",
                    fc.key_origin(key),
                    ppath.display()
                );
            }
            Ok(())
        };
        if let Some(r) = &raw.releasever {
            clash("releasever", r.get_ref().clone(), p.releasever.clone())?;
        }
        if let Some(v) = raw.recommends {
            clash("recommends", v.to_string(), p.recommends.to_string())?;
        }
        if let Some(v) = raw.documentation {
            clash("documentation", v.to_string(), p.documentation.to_string())?;
        }
        if let Some(r) = &raw.repos {
            let mine: Vec<String> = r.iter().map(|s| s.get_ref().clone()).collect();
            clash(
                "repos",
                format!("{mine:?}"),
                format!("{:?}", p.repos.clone().unwrap_or_default()),
            )?;
        }
    }
    if let Some(v) = &raw.ref_ {
        m.ref_ = Some(fc.item(v));
    }
    if let Some(v) = &raw.releasever {
        m.releasever = Some(fc.item(v));
    }
    if let Some(v) = &raw.repos {
        m.repos = Some(Item {
            value: v.iter().map(|s| s.get_ref().clone()).collect(),
            origin: v
                .first()
                .map(|s| fc.origin(s))
                .unwrap_or(fc.key_origin("repos")),
        });
    }
    if let Some(v) = raw.recommends {
        m.recommends = Some(Item {
            value: v,
            origin: fc.key_origin("recommends"),
        });
    }
    if let Some(v) = raw.documentation {
        m.documentation = Some(Item {
            value: v,
            origin: fc.key_origin("documentation"),
        });
    }
    if let Some(v) = &raw.default_target {
        m.default_target = Some(fc.item(v));
    }
    if let Some(v) = &raw.automatic_version_prefix {
        m.automatic_version_prefix = Some(fc.item(v));
    }
    if let Some(v) = &raw.mutate_os_release {
        m.mutate_os_release = Some(fc.item(v));
    }
    if let Some(v) = &raw.gpg_key {
        m.gpg_key = Some(fc.item(v));
    }
    for (k, v) in raw.add_commit_metadata.unwrap_or_default() {
        let value = match v.get_ref() {
            toml::Value::String(s) => MetaValue::Str(s.clone()),
            toml::Value::Integer(i) => MetaValue::Int(*i),
            toml::Value::Boolean(b) => MetaValue::Bool(*b),
            other => bail!(
                "{}: key `add-commit-metadata.{k}`: only strings, integers and booleans are \
                 supported, not {}",
                fc.origin(&v),
                other.type_str()
            ),
        };
        m.add_commit_metadata.insert(
            k,
            Item {
                value,
                origin: fc.origin(&v),
            },
        );
    }
    let l = &mut m.layer;
    for p in raw.packages.iter().flatten() {
        l.packages.push(fc.item(p));
    }
    for p in raw.exclude_packages.iter().flatten() {
        l.exclude_packages.push(fc.item(p));
    }
    for af in raw.add_files.iter().flatten() {
        let (src, dest) = af.get_ref();
        let origin = fc.origin(af);
        let src_path = fc.dir().join(src);
        if !src_path.is_file() {
            bail!(
                "{origin}: key `add-files`: source {} does not exist (or is not a file)",
                src_path.display()
            );
        }
        l.add_files.push(AddFile {
            src: src_path,
            dest: dest.clone(),
            origin,
        });
    }
    for r in raw.remove_files.iter().flatten() {
        l.remove_files.push(fc.item(r));
    }
    if let Some(s) = &raw.postprocess_script {
        let p = fc.dir().join(s.get_ref());
        if !p.is_file() {
            bail!(
                "{}: key `postprocess-script`: script {} does not exist",
                fc.origin(s),
                p.display()
            );
        }
        l.postprocess_scripts.push(Item {
            value: p,
            origin: fc.origin(s),
        });
    }
    l.postprocess.extend(raw.postprocess.unwrap_or_default());
    for u in raw.units.iter().flatten() {
        l.units.push(fc.item(u));
    }
    l.users.extend(raw.users.unwrap_or_default());
    l.groups.extend(raw.groups.unwrap_or_default());
    l.initramfs_args
        .extend(raw.initramfs_args.unwrap_or_default());
    Ok(())
}

/// Is `name` a valid Debian package name?
pub fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
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

fn valid_ref(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.contains("//")
        && r.split('/').all(|seg| seg != "." && seg != "..")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

fn validate(m: Merged) -> Result<Treefile> {
    let file = m.path.display().to_string();
    let ref_item = m.ref_.ok_or_else(|| {
        anyhow!("{file}: key `ref` is missing (e.g. ref = \"cairn/${{basearch}}/base\")")
    })?;
    let ref_ = ref_item.value.replace("${basearch}", basearch());
    if !valid_ref(&ref_) {
        bail!(
            "{}: key `ref`: {:?} is not a valid OSTree ref (letters, digits, `._-` and `/` between \
             non-empty parts)",
            ref_item.origin,
            ref_
        );
    }
    if ref_.contains("${") {
        bail!(
            "{}: key `ref`: unknown variable in {:?} (only ${{basearch}} is known)",
            ref_item.origin,
            ref_
        );
    }
    let releasever = m.releasever.ok_or_else(|| {
        anyhow!("{file}: key `releasever` is missing (e.g. releasever = \"bookworm\")")
    })?;
    if releasever.value.is_empty() || releasever.value.contains(char::is_whitespace) {
        bail!(
            "{}: key `releasever`: {:?} is not a suite name",
            releasever.origin,
            releasever.value
        );
    }
    if let Some(parent) = &m.parent {
        if parent.ref_ == ref_ {
            bail!(
                "{}: key `ref`: {ref_} is also the ref of parent layer {}",
                ref_item.origin,
                parent.path.display()
            );
        }
    }
    let l = &m.layer;
    for p in l.packages.iter().chain(&l.exclude_packages) {
        if !valid_package_name(&p.value) {
            bail!(
                "{}: key `packages`: {:?} is not a Debian package name",
                p.origin,
                p.value
            );
        }
    }
    for af in &l.add_files {
        match normalize_tree_path(&af.dest) {
            Some(d) if d.starts_with("/usr/") || d.starts_with("/etc/") => {}
            _ => bail!(
                "{}: key `add-files`: destination {:?} must be an absolute path under /usr or /etc",
                af.origin,
                af.dest
            ),
        }
    }
    for r in &l.remove_files {
        let abs = if r.value.starts_with('/') {
            r.value.clone()
        } else {
            format!("/{}", r.value)
        };
        match normalize_tree_path(&abs) {
            Some(d) if d != "/" => {}
            _ => bail!(
                "{}: key `remove-files`: {:?} is not a path inside the tree",
                r.origin,
                r.value
            ),
        }
    }
    const UNIT_SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".path", ".target", ".mount",
    ];
    for u in &l.units {
        if !UNIT_SUFFIXES.iter().any(|s| u.value.ends_with(s)) || u.value.contains('/') {
            bail!(
                "{}: key `units`: {:?} is not a systemd unit name",
                u.origin,
                u.value
            );
        }
    }
    if let Some(t) = &m.default_target {
        if !t.value.ends_with(".target") {
            bail!(
                "{}: key `default-target`: {:?} is not a .target unit",
                t.origin,
                t.value
            );
        }
    }
    if let Some(p) = &m.automatic_version_prefix {
        if p.value.is_empty()
            || !p
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            bail!(
                "{}: key `automatic-version-prefix`: {:?} must be letters, digits and dots",
                p.origin,
                p.value
            );
        }
    }
    if let Some(k) = &m.gpg_key {
        if k.value.trim().is_empty() {
            bail!(
                "{}: key `gpg-key`: give a GPG key id or fingerprint",
                k.origin
            );
        }
    }
    let mut seen_users = BTreeSet::new();
    for u in &l.users {
        if !valid_account_name(&u.name) || !seen_users.insert(u.name.clone()) {
            bail!(
                "{file}: key `users`: {:?} is not a valid, unique user name",
                u.name
            );
        }
    }
    for g in &l.groups {
        if !valid_account_name(&g.name) {
            bail!(
                "{file}: key `groups`: {:?} is not a valid group name",
                g.name
            );
        }
    }
    Ok(Treefile {
        path: m.path,
        ref_,
        releasever: releasever.value,
        repos: m.repos.map(|r| r.value),
        recommends: m.recommends.map(|r| r.value).unwrap_or(false),
        documentation: m.documentation.map(|r| r.value).unwrap_or(true),
        default_target: m.default_target.map(|t| t.value),
        add_commit_metadata: m
            .add_commit_metadata
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect(),
        automatic_version_prefix: m.automatic_version_prefix.map(|p| p.value),
        mutate_os_release: m.mutate_os_release.map(|p| p.value),
        gpg_key: m.gpg_key,
        layer: m.layer,
        parent: m.parent,
    })
}

fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

/// The treefile reduced to what determines the compose's output, with files replaced by digests
/// of their content and mode (so that the checkout's location does not matter).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Flattened {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub releasever: String,
    pub repos: Option<Vec<String>>,
    pub recommends: bool,
    pub documentation: bool,
    pub packages: Vec<String>,
    pub exclude_packages: Vec<String>,
    pub add_files: Vec<(String, String)>,
    pub remove_files: Vec<String>,
    pub postprocess_scripts: Vec<String>,
    pub postprocess: Vec<String>,
    pub units: Vec<String>,
    pub default_target: Option<String>,
    pub add_commit_metadata: BTreeMap<String, MetaValue>,
    pub automatic_version_prefix: Option<String>,
    pub mutate_os_release: Option<String>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub initramfs_args: Vec<String>,
}

/// SHA-256 of a file's content and its executable bit.
fn file_digest(p: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    let mode = std::fs::metadata(p)?.permissions().mode();
    let mut h = Sha256::new();
    h.update(&data);
    h.update(if mode & 0o111 != 0 { b"x" } else { b"-" });
    Ok(hex::encode(h.finalize()))
}

impl Treefile {
    /// Packages of this layer and all its parents.
    pub fn all_packages(&self) -> Vec<String> {
        let mut v = self
            .parent
            .as_ref()
            .map(|p| p.all_packages())
            .unwrap_or_default();
        v.extend(self.layer.packages.iter().map(|p| p.value.clone()));
        v.sort();
        v.dedup();
        v
    }

    /// Excluded packages of this layer and all its parents.
    pub fn all_exclude_packages(&self) -> Vec<String> {
        let mut v = self
            .parent
            .as_ref()
            .map(|p| p.all_exclude_packages())
            .unwrap_or_default();
        v.extend(self.layer.exclude_packages.iter().map(|p| p.value.clone()));
        v.sort();
        v.dedup();
        v
    }

    /// Where in the treefiles a package was asked for (for error messages).
    pub fn package_origin(&self, name: &str) -> Option<Origin> {
        self.layer
            .packages
            .iter()
            .find(|p| p.value == name)
            .map(|p| p.origin.clone())
            .or_else(|| self.parent.as_ref().and_then(|p| p.package_origin(name)))
    }

    /// This layer's flattened form (the parent enters the input hash through its commit).
    pub fn flattened(&self) -> Result<Flattened> {
        let l = &self.layer;
        Ok(Flattened {
            ref_: self.ref_.clone(),
            releasever: self.releasever.clone(),
            repos: self.repos.clone(),
            recommends: self.recommends,
            documentation: self.documentation,
            packages: self.all_packages(),
            exclude_packages: self.all_exclude_packages(),
            add_files: l
                .add_files
                .iter()
                .map(|a| Ok((a.dest.clone(), file_digest(&a.src)?)))
                .collect::<Result<_>>()?,
            remove_files: l.remove_files.iter().map(|r| r.value.clone()).collect(),
            postprocess_scripts: l
                .postprocess_scripts
                .iter()
                .map(|s| file_digest(&s.value))
                .collect::<Result<_>>()?,
            postprocess: l.postprocess.clone(),
            units: l.units.iter().map(|u| u.value.clone()).collect(),
            default_target: self.default_target.clone(),
            add_commit_metadata: self.add_commit_metadata.clone(),
            automatic_version_prefix: self.automatic_version_prefix.clone(),
            mutate_os_release: self.mutate_os_release.clone(),
            users: l.users.clone(),
            groups: l.groups.clone(),
            initramfs_args: l.initramfs_args.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
