//! The stages between the no-op decision and the steps: set up apt, check out the parent layer
//! (a layer resolves against its parent's dpkg database), and resolve the package set.
//!
//! [`resolve`] makes [`Resolved`]: the packages of the finished tree, the ones this layer
//! installs, and the input hash over the treefile and those packages.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::apt::{AptEnv, Package, ResolveError};
use super::{layout, work_tree, Ctx};
use crate::base::digest::sha256_hex;
use crate::base::tmp::TempTree;
use crate::store;
use crate::treefile::Treefile;

/// Set up apt's private state for the gathered sources, and bring its lists to the gathered
/// index state (pinned to the lockfile's versions when there is one).
pub(super) fn apt_env(ctx: &Ctx) -> Result<AptEnv> {
    let apt = AptEnv::new(
        &ctx.opts.cache,
        ctx.inputs.sources.clone(),
        crate::treefile::basearch(),
        ctx.tf.recommends(),
    )?;
    let ph = ctx.progress.phase("resolve", "updating package indexes");
    apt.update(&ctx.inputs.index)?;
    apt.set_pins(ctx.lockfile.map(|(_, lf)| lf.packages.as_slice()))?;
    ph.done("indexes current");
    Ok(apt)
}

/// What a layer's packages are resolved against and installed onto.
pub(super) enum Start {
    /// A base: an empty system (its tree is made when the steps start).
    Scratch,
    /// A layer: its parent's commit, checked out.
    Parent(Checkout),
}

/// A parent layer's commit, checked out and made a Debian root again.
pub(super) struct Checkout {
    pub work: TempTree,
    pub root: PathBuf,
    pub commit: String,
    /// When the checkout was complete (nanoseconds since the epoch): files not changed since are
    /// the parent's.
    pub checked_out_at: i128,
    /// The parent's packages.
    pub packages: Vec<Package>,
}

/// For a layer, check out the parent's commit and make it a Debian root again.
pub(super) fn checkout_parent(ctx: &Ctx) -> Result<Start> {
    let Some(parent) = &ctx.inputs.parent else {
        return Ok(Start::Scratch);
    };
    let ph = ctx.progress.phase("checkout", "parent layer");
    let r = store::open(&ctx.opts.repo)?;
    let work = work_tree(ctx.opts, &ctx.tf.ref_)?;
    let root = work.path().join("root");
    let checked_out_at = store::checkout(&r, parent, &root)?;
    layout::from_ostree(&layout::open_root(&root)?)?;
    let packages = store::load_commit(&r, parent)?.meta.packages;
    ph.done(&format!("from {}", crate::base::text::short_hash(parent)));
    Ok(Start::Parent(Checkout {
        work,
        root,
        commit: parent.clone(),
        checked_out_at,
        packages,
    }))
}

/// The packages of a layer.
#[derive(Debug)]
pub(super) struct Packages {
    /// Every package of the finished tree, sorted.
    pub all: Vec<Package>,
    /// The ones this layer installs (for a base, all of them).
    pub new: Vec<Package>,
}

/// What resolving made.
#[derive(Debug)]
pub(super) struct Resolved {
    pub packages: Packages,
    /// Over the treefile JSON and every package of the finished tree.
    pub inputhash: String,
}

/// Resolve the package set with apt, onto the parent's packages for a layer.
pub(super) fn resolve(ctx: &Ctx, apt: &AptEnv, start: &Start) -> Result<Resolved> {
    let ph = ctx.progress.phase("resolve", "resolving packages");
    let (status, parent) = match start {
        Start::Scratch => (None, &[][..]),
        Start::Parent(c) => (
            Some(c.root.join("var/lib/dpkg/status")),
            c.packages.as_slice(),
        ),
    };
    let request = request(ctx.tf, status.is_none());
    let new = apt
        .resolve(&request, status.as_deref())
        .map_err(|e| resolve_error(ctx.tf, e))?;
    for ex in ctx.tf.all_exclude_packages() {
        if new.iter().any(|p| p.name == ex) {
            bail!("package {ex} is in `exclude-packages` but would be installed");
        }
    }
    let removed = match &status {
        Some(st) => removals(apt, &request, st)?,
        None => Vec::new(),
    };
    let all = finished_tree(parent, &removed, &new);
    if let Some((path, lf)) = ctx.lockfile {
        lf.verify(&all, path)?;
    }
    let inputhash = inputhash(&ctx.inputs.treefile_json, &all);
    ph.done(&format!("{} packages, {} to install", all.len(), new.len()));
    Ok(Resolved {
        packages: Packages { all, new },
        inputhash,
    })
}

/// apt-get install's arguments: the treefile's packages, its exclusions (`name-`), and for a
/// base the essential and required ones and apt.
fn request(tf: &Treefile, base: bool) -> Vec<String> {
    let mut request: Vec<String> = Vec::new();
    if base {
        request.extend(["?essential", "?priority(required)", "apt"].map(String::from));
    }
    request.extend(tf.all_packages());
    request.extend(tf.all_exclude_packages().iter().map(|p| format!("{p}-")));
    request
}

/// A resolve error that names the treefile line asking for a package apt does not know.
fn resolve_error(tf: &Treefile, e: ResolveError) -> anyhow::Error {
    match e {
        ResolveError::UnknownPackage(name) => match tf.package_origin(&name) {
            Some(o) => {
                anyhow!("{o}: key `packages`: package {name} is not in the configured apt sources")
            }
            None => anyhow!("package {name} (a dependency) is not in the configured apt sources"),
        },
        ResolveError::Other(m) => anyhow!("{m}"),
    }
}

/// The parent's packages that installing `request` onto `status` removes (a new package
/// conflicts with them).
fn removals(apt: &AptEnv, request: &[String], status: &Path) -> Result<Vec<String>> {
    let gone = apt.removals(request, status)?;
    for g in &gone {
        tracing::info!("{g} is removed (a new package conflicts with it)");
    }
    Ok(gone)
}

/// The finished tree: the parent's packages without the `removed` ones, with `new` added or
/// replacing those of the same name; sorted.
fn finished_tree(parent: &[Package], removed: &[String], new: &[Package]) -> Vec<Package> {
    let mut all: Vec<Package> = parent
        .iter()
        .filter(|p| !removed.contains(&p.name) && !new.iter().any(|n| n.name == p.name))
        .cloned()
        .collect();
    all.extend(new.iter().cloned());
    all.sort();
    all
}

/// The input hash: the treefile JSON, then one `name version arch` line per package.
fn inputhash(treefile_json: &str, packages: &[Package]) -> String {
    let lines: Vec<String> = packages
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.version, p.arch))
        .collect();
    sha256_hex(format!("{treefile_json}\n{}", lines.join("\n")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: String::new(),
        }
    }

    #[test]
    fn a_layer_replaces_and_removes_its_parents_packages() {
        let parent = [pkg("a", "1"), pkg("b", "1"), pkg("c", "1")];
        let new = [pkg("b", "2"), pkg("d", "1")];
        let all = finished_tree(&parent, &["c".to_string()], &new);
        assert_eq!(all, [pkg("a", "1"), pkg("b", "2"), pkg("d", "1")]);
    }

    #[test]
    fn the_input_hash_covers_the_treefile_and_each_package() {
        // sha256 of "{}\na 1 amd64\nb 2 amd64": the formula is part of COMPOSE_FORMAT.
        assert_eq!(
            inputhash("{}", &[pkg("a", "1"), pkg("b", "2")]),
            "56239ba0fb0ab1ee1f2e6bce88e95c753f51b5d28c58c271d765cca9b1dfb9f4"
        );
    }
}
