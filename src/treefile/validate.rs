//! The last parsing stage: a merged treefile checked into a [`Treefile`]. Every error names the
//! file, the line and the key. Names that end up as paths or identifiers (the ref, accounts,
//! units) are checked here, before anything is written.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::store::{valid_ref, MAX_REF};

use super::{basearch, normalize_tree_path, Item, Keys, Merged, Origin, Treefile};

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

/// A user or group name as `useradd` takes it (at most 32 characters, no slash, no dot-dot).
pub fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".socket", ".timer", ".path", ".target", ".mount",
];

/// A systemd unit name: a known suffix, no path, no control characters, at most 255 bytes.
fn valid_unit(u: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|s| u.ends_with(s) && u.len() > s.len())
        && u.len() <= 255
        && !u.contains('/')
        && !u.chars().any(char::is_control)
}

fn required<T>(v: Option<Item<T>>, file: &str, key: &str, example: &str) -> Result<Item<T>> {
    v.ok_or_else(|| anyhow!("{file}: key `{key}` is missing (e.g. {example})"))
}

pub(super) fn validate(m: Merged) -> Result<Treefile> {
    let file = m.path.display().to_string();
    let mut keys = m.keys;
    let (ref_, ref_origin) = check_ref(&keys, &file)?;
    let releasever = check_releasever(&keys, &file)?;
    if let Some(parent) = &m.parent {
        if parent.ref_ == ref_ {
            bail!(
                "{ref_origin}: key `ref`: {ref_} is also the ref of parent layer {}",
                parent.path.display()
            );
        }
    }
    check_packages(&keys)?;
    check_paths(&keys)?;
    check_units(&keys)?;
    check_settings(&keys)?;
    check_users(&keys)?;
    check_groups(&keys)?;
    write_inherited_defaults(&mut keys, &m.path);
    Ok(Treefile {
        path: m.path,
        ref_,
        releasever,
        keys,
        parent: m.parent,
    })
}

/// `ref`: present, `${basearch}` expanded, a valid OSTree ref. Returns it with its origin.
fn check_ref(keys: &Keys, file: &str) -> Result<(String, Origin)> {
    let ref_item = required(
        keys.ref_.clone(),
        file,
        "ref",
        "ref = \"cairn/${basearch}/base\"",
    )?;
    let ref_ = ref_item.value.replace("${basearch}", basearch());
    if ref_.contains("${") {
        bail!(
            "{}: key `ref`: unknown variable in {:?} (only ${{basearch}} is known)",
            ref_item.origin,
            ref_
        );
    }
    if !valid_ref(&ref_) {
        bail!(
            "{}: key `ref`: {:?} is not a valid OSTree ref (at most {MAX_REF} letters, digits, \
             `._-` and `/` between non-empty parts, no `..`)",
            ref_item.origin,
            ref_
        );
    }
    Ok((ref_, ref_item.origin))
}

/// `releasever`: present and a suite name.
fn check_releasever(keys: &Keys, file: &str) -> Result<String> {
    let releasever = required(
        keys.releasever.clone(),
        file,
        "releasever",
        "releasever = \"bookworm\"",
    )?;
    if releasever.value.is_empty()
        || releasever.value.contains(char::is_whitespace)
        || releasever.value.contains('/')
    {
        bail!(
            "{}: key `releasever`: {:?} is not a suite name",
            releasever.origin,
            releasever.value
        );
    }
    Ok(releasever.value)
}

/// `packages` and `exclude-packages`: Debian package names.
fn check_packages(keys: &Keys) -> Result<()> {
    for (key, list) in [
        ("packages", &keys.packages),
        ("exclude-packages", &keys.exclude_packages),
    ] {
        for p in list {
            if !valid_package_name(&p.value) {
                bail!(
                    "{}: key `{key}`: {:?} is not a Debian package name",
                    p.origin,
                    p.value
                );
            }
        }
    }
    Ok(())
}

/// `add-files` land under /usr or /etc; `remove-files` stay inside the tree.
fn check_paths(keys: &Keys) -> Result<()> {
    for af in &keys.add_files {
        match normalize_tree_path(&af.value.dest) {
            Some(d) if d.starts_with("/usr/") || d.starts_with("/etc/") => {}
            _ => bail!(
                "{}: key `add-files`: destination {:?} must be an absolute path under /usr or /etc",
                af.origin,
                af.value.dest
            ),
        }
    }
    for r in &keys.remove_files {
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
    Ok(())
}

/// `units` are systemd unit names; `default-target` is a `.target` unit.
fn check_units(keys: &Keys) -> Result<()> {
    for u in &keys.units {
        if !valid_unit(&u.value) {
            bail!(
                "{}: key `units`: {:?} is not a systemd unit name",
                u.origin,
                u.value
            );
        }
    }
    if let Some(t) = &keys.default_target {
        if !t.value.ends_with(".target") || !valid_unit(&t.value) {
            bail!(
                "{}: key `default-target`: {:?} is not a .target unit",
                t.origin,
                t.value
            );
        }
    }
    Ok(())
}

/// The single-word settings: `automatic-version-prefix` and `gpg-key`.
fn check_settings(keys: &Keys) -> Result<()> {
    if let Some(p) = &keys.automatic_version_prefix {
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
    if let Some(k) = &keys.gpg_key {
        let v = k.value.trim();
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "{}: key `gpg-key`: {:?} is not a GPG key id or fingerprint",
                k.origin,
                k.value
            );
        }
    }
    Ok(())
}

/// `users`: valid names, each defined once, valid group names.
fn check_users(keys: &Keys) -> Result<()> {
    let mut seen_users = BTreeSet::new();
    for u in &keys.users {
        if !valid_account_name(&u.value.name) {
            bail!(
                "{}: key `users.name`: {:?} is not a valid user name (lowercase letters, digits, \
                 `_` and `-`, at most 32)",
                u.origin,
                u.value.name
            );
        }
        if !seen_users.insert(u.value.name.clone()) {
            bail!(
                "{}: key `users.name`: user {:?} is defined twice",
                u.origin,
                u.value.name
            );
        }
        for g in u.value.group.iter().chain(&u.value.groups) {
            if !valid_account_name(g) {
                bail!(
                    "{}: key `users.groups`: {g:?} is not a valid group name",
                    u.origin
                );
            }
        }
    }
    Ok(())
}

/// `groups`: valid names.
fn check_groups(keys: &Keys) -> Result<()> {
    for g in &keys.groups {
        if !valid_account_name(&g.value.name) {
            bail!(
                "{}: key `groups.name`: {:?} is not a valid group name (lowercase letters, \
                 digits, `_` and `-`, at most 32)",
                g.origin,
                g.value.name
            );
        }
    }
    Ok(())
}

/// The defaults a child layer inherits and may not change, written out.
fn write_inherited_defaults(keys: &mut Keys, path: &Path) {
    let here = Origin {
        file: path.to_path_buf(),
        line: 0,
    };
    keys.recommends.get_or_insert(Item {
        value: false,
        origin: here.clone(),
    });
    keys.documentation.get_or_insert(Item {
        value: true,
        origin: here,
    });
}
