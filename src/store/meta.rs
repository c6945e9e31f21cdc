//! Typed commit metadata: one struct that compose writes and image, describe and the node read.
//!
//! On disk it is OSTree's `a{sv}` dictionary. A key that is present with another type than the
//! one cairn writes is an error naming the commit and the key, never a silent default.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use ostree::glib;
use ostree::glib::prelude::*;
use serde::Serialize;

use crate::base::{Distro, Package, PackageInfo};

/// The metadata keys cairn writes.
pub mod keys {
    pub const VERSION: &str = "version";
    pub const BOOTABLE: &str = "ostree.bootable";
    pub const LINUX: &str = "ostree.linux";
    pub const INPUTHASH: &str = "cairn.inputhash";
    pub const TREEFILE_DIGEST: &str = "cairn.treefile-digest";
    pub const TREEFILE: &str = "cairn.treefile";
    pub const PACKAGES: &str = "cairn.packages";
    pub const SBOM: &str = "cairn.sbom.spdx";
    pub const SOURCE_DATE_EPOCH: &str = "cairn.source-date-epoch";
    pub const LAYER_PARENT: &str = "cairn.layer-parent";
    pub const PACKAGE_INFO: &str = "cairn.package-info";
    pub const DISTRO: &str = "cairn.distro";
    pub const COMPOSE_USER: &str = "cairn.compose-user";
    pub const COMPOSE_HOST: &str = "cairn.compose-host";
    pub const TREEFILE_GIT_REVISION: &str = "cairn.treefile-git-revision";
    pub const PROMOTED_FROM: &str = "cairn.promoted-from";
    pub const PROMOTED_FROM_REF: &str = "cairn.promoted-from-ref";
    /// libostree's: the ref ends, with this message.
    pub const ENDOFLIFE: &str = "ostree.endoflife";
    /// libostree's: nodes following the ref move to this one.
    pub const ENDOFLIFE_REBASE: &str = "ostree.endoflife-rebase";
}

/// Who composed a commit, where, and from which revision of the treefile's git checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub user: Option<String>,
    pub host: Option<String>,
    /// The commit of the treefile's git checkout (`-dirty` when tracked files changed).
    pub git_revision: Option<String>,
}

/// A free-form metadata value (a treefile's `add-commit-metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl MetaValue {
    fn to_variant(&self) -> glib::Variant {
        match self {
            MetaValue::Str(s) => s.to_variant(),
            MetaValue::Int(i) => i.to_variant(),
            MetaValue::Bool(b) => b.to_variant(),
        }
    }

    fn from_variant(v: &glib::Variant) -> Option<Self> {
        v.get::<String>()
            .map(MetaValue::Str)
            .or_else(|| v.get::<i64>().map(MetaValue::Int))
            .or_else(|| v.get::<bool>().map(MetaValue::Bool))
    }
}

/// What cairn records on a commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitMeta {
    /// The version (`<prefix>.<n>`, or the treefile's own).
    pub version: Option<String>,
    /// `ostree.bootable`: the tree has a kernel and an initramfs.
    pub bootable: bool,
    /// `ostree.linux`: the kernel version.
    pub linux: Option<String>,
    /// What the compose's inputs hash to; an unchanged hash means nothing to compose.
    pub inputhash: Option<String>,
    /// The digest of the flattened treefile (the cheap no-op check).
    pub treefile_digest: Option<String>,
    /// The flattened treefile, as JSON.
    pub treefile: Option<String>,
    /// Every package of the tree.
    pub packages: Vec<Package>,
    /// The SPDX SBOM, as JSON.
    pub sbom_spdx: Option<String>,
    pub source_date_epoch: Option<i64>,
    /// For a layer: the parent layer's commit it starts from.
    pub layer_parent: Option<String>,
    /// Each package's source package and licenses (for SBOMs).
    pub package_info: Vec<PackageInfo>,
    /// The distribution the tree is built from.
    pub distro: Option<Distro>,
    pub provenance: Provenance,
    /// For a promoted commit: the commit and ref it was promoted from.
    pub promoted_from: Option<String>,
    pub promoted_from_ref: Option<String>,
    /// For a retired ref's last commit: why it ends, and the ref its nodes move to.
    pub endoflife: Option<String>,
    pub endoflife_rebase: Option<String>,
    /// Other keys (a treefile's `add-commit-metadata`); written after the ones above, so they
    /// may override them, as in rpm-ostree.
    pub extra: BTreeMap<String, MetaValue>,
}

type PackageTuple = (String, String, String, String);

/// The value of `key`, if present; an error naming the commit and key if it has another type.
fn get<T: FromVariant + StaticVariantType>(
    dict: &glib::VariantDict,
    commit: &str,
    key: &str,
) -> Result<Option<T>> {
    let Some(v) = dict.lookup_value(key, None) else {
        return Ok(None);
    };
    match v.get::<T>() {
        Some(t) => Ok(Some(t)),
        None => bail!(
            "commit {commit}: metadata key `{key}` has type {}, not {}",
            v.type_(),
            T::static_variant_type()
        ),
    }
}

const KNOWN: &[&str] = &[
    keys::VERSION,
    keys::BOOTABLE,
    keys::LINUX,
    keys::INPUTHASH,
    keys::TREEFILE_DIGEST,
    keys::TREEFILE,
    keys::PACKAGES,
    keys::SBOM,
    keys::SOURCE_DATE_EPOCH,
    keys::LAYER_PARENT,
    keys::PACKAGE_INFO,
    keys::DISTRO,
    keys::COMPOSE_USER,
    keys::COMPOSE_HOST,
    keys::TREEFILE_GIT_REVISION,
    keys::PROMOTED_FROM,
    keys::PROMOTED_FROM_REF,
    keys::ENDOFLIFE,
    keys::ENDOFLIFE_REBASE,
];

impl CommitMeta {
    /// Decode the metadata dictionary of `commit`.
    pub fn from_variant(commit: &str, meta: &glib::Variant) -> Result<Self> {
        let dict = glib::VariantDict::new(Some(meta));
        let packages: Vec<PackageTuple> = get(&dict, commit, keys::PACKAGES)?.unwrap_or_default();
        let info: Vec<PackageTuple> = get(&dict, commit, keys::PACKAGE_INFO)?.unwrap_or_default();
        let distro: Option<(String, String)> = get(&dict, commit, keys::DISTRO)?;
        let mut extra = BTreeMap::new();
        for entry in meta.iter() {
            let (Some(k), Some(v)) = (
                entry.try_child_value(0).and_then(|k| k.get::<String>()),
                entry.try_child_value(1).and_then(|v| v.as_variant()),
            ) else {
                continue;
            };
            if KNOWN.contains(&k.as_str()) {
                continue;
            }
            // Keys of other types (libostree's own) are not cairn's to decode.
            if let Some(value) = MetaValue::from_variant(&v) {
                extra.insert(k, value);
            }
        }
        Ok(CommitMeta {
            version: get(&dict, commit, keys::VERSION)?,
            bootable: get(&dict, commit, keys::BOOTABLE)?.unwrap_or(false),
            linux: get(&dict, commit, keys::LINUX)?,
            inputhash: get(&dict, commit, keys::INPUTHASH)?,
            treefile_digest: get(&dict, commit, keys::TREEFILE_DIGEST)?,
            treefile: get(&dict, commit, keys::TREEFILE)?,
            packages: packages
                .into_iter()
                .map(|(name, version, arch, sha256)| Package {
                    name,
                    version,
                    arch,
                    sha256,
                })
                .collect(),
            sbom_spdx: get(&dict, commit, keys::SBOM)?,
            source_date_epoch: get(&dict, commit, keys::SOURCE_DATE_EPOCH)?,
            layer_parent: get(&dict, commit, keys::LAYER_PARENT)?,
            package_info: info
                .into_iter()
                .map(|(name, source, source_version, license)| PackageInfo {
                    name,
                    source,
                    source_version,
                    license,
                })
                .collect(),
            distro: distro.map(|(id, version_id)| Distro { id, version_id }),
            provenance: Provenance {
                user: get(&dict, commit, keys::COMPOSE_USER)?,
                host: get(&dict, commit, keys::COMPOSE_HOST)?,
                git_revision: get(&dict, commit, keys::TREEFILE_GIT_REVISION)?,
            },
            promoted_from: get(&dict, commit, keys::PROMOTED_FROM)?,
            promoted_from_ref: get(&dict, commit, keys::PROMOTED_FROM_REF)?,
            endoflife: get(&dict, commit, keys::ENDOFLIFE)?,
            endoflife_rebase: get(&dict, commit, keys::ENDOFLIFE_REBASE)?,
            extra,
        })
    }

    /// The `a{sv}` dictionary to write.
    pub fn to_variant(&self) -> glib::Variant {
        let d = glib::VariantDict::new(None);
        let put = |k: &str, v: glib::Variant| d.insert_value(k, &v);
        if let Some(v) = &self.version {
            put(keys::VERSION, v.to_variant());
        }
        if self.bootable {
            put(keys::BOOTABLE, true.to_variant());
        }
        let strings = [
            (keys::LINUX, &self.linux),
            (keys::INPUTHASH, &self.inputhash),
            (keys::TREEFILE_DIGEST, &self.treefile_digest),
            (keys::TREEFILE, &self.treefile),
            (keys::SBOM, &self.sbom_spdx),
            (keys::LAYER_PARENT, &self.layer_parent),
            (keys::COMPOSE_USER, &self.provenance.user),
            (keys::COMPOSE_HOST, &self.provenance.host),
            (keys::TREEFILE_GIT_REVISION, &self.provenance.git_revision),
            (keys::PROMOTED_FROM, &self.promoted_from),
            (keys::PROMOTED_FROM_REF, &self.promoted_from_ref),
            (keys::ENDOFLIFE, &self.endoflife),
            (keys::ENDOFLIFE_REBASE, &self.endoflife_rebase),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                put(k, v.to_variant());
            }
        }
        if let Some(e) = self.source_date_epoch {
            put(keys::SOURCE_DATE_EPOCH, e.to_variant());
        }
        if !self.packages.is_empty() {
            let v: Vec<PackageTuple> = self
                .packages
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.version.clone(),
                        p.arch.clone(),
                        p.sha256.clone(),
                    )
                })
                .collect();
            put(keys::PACKAGES, v.to_variant());
        }
        if !self.package_info.is_empty() {
            let v: Vec<PackageTuple> = self
                .package_info
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.source.clone(),
                        p.source_version.clone(),
                        p.license.clone(),
                    )
                })
                .collect();
            put(keys::PACKAGE_INFO, v.to_variant());
        }
        if let Some(d) = &self.distro {
            put(
                keys::DISTRO,
                (d.id.clone(), d.version_id.clone()).to_variant(),
            );
        }
        for (k, v) in &self.extra {
            put(k, v.to_variant());
        }
        d.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CommitMeta {
        CommitMeta {
            version: Some("1.2".into()),
            bootable: true,
            linux: Some("6.1.0-28-cloud-amd64".into()),
            inputhash: Some("ab".repeat(32)),
            treefile_digest: Some("cd".repeat(32)),
            treefile: Some("{}".into()),
            packages: vec![Package {
                name: "bash".into(),
                version: "5.2.15-2+b7".into(),
                arch: "amd64".into(),
                sha256: "ef".repeat(32),
            }],
            sbom_spdx: Some("{\"spdxVersion\":\"SPDX-2.3\"}".into()),
            source_date_epoch: Some(1_700_000_000),
            layer_parent: Some("01".repeat(32)),
            package_info: vec![PackageInfo {
                name: "libc6".into(),
                source: "glibc".into(),
                source_version: String::new(),
                license: "LGPL-2.1-or-later".into(),
            }],
            distro: Some(Distro {
                id: "debian".into(),
                version_id: "12".into(),
            }),
            provenance: Provenance {
                user: Some("ops".into()),
                host: Some("build-1".into()),
                git_revision: Some("0123abc-dirty".into()),
            },
            promoted_from: Some("ab".repeat(32)),
            promoted_from_ref: Some("cairn/amd64/app".into()),
            endoflife: Some("moved".into()),
            endoflife_rebase: Some("cairn/amd64/app2".into()),
            extra: [
                ("owner".to_string(), MetaValue::Str("ops".into())),
                ("build".to_string(), MetaValue::Int(7)),
                ("lts".to_string(), MetaValue::Bool(true)),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(CommitMeta::from_variant("c", &m.to_variant()).unwrap(), m);
        let empty = CommitMeta::default();
        assert_eq!(
            CommitMeta::from_variant("c", &empty.to_variant()).unwrap(),
            empty
        );
    }

    #[test]
    fn a_value_of_another_type_names_commit_and_key() {
        let d = glib::VariantDict::new(Some(&sample().to_variant()));
        d.insert_value(keys::VERSION, &42i64.to_variant());
        let err = CommitMeta::from_variant("abc123", &d.end()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("commit abc123") && msg.contains("`version`"),
            "{msg}"
        );
        let d = glib::VariantDict::new(Some(&sample().to_variant()));
        d.insert_value(keys::PACKAGES, &"bash".to_variant());
        let msg = CommitMeta::from_variant("abc123", &d.end())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`cairn.packages`") && msg.contains("a(ssss)"),
            "{msg}"
        );
    }

    #[test]
    fn extra_keys_override_and_unknown_types_are_left_alone() {
        let mut m = sample();
        m.extra
            .insert("version".into(), MetaValue::Str("custom-1".into()));
        let d = glib::VariantDict::new(Some(&m.to_variant()));
        d.insert_value("ostree.ref-binding", &vec!["a/b".to_string()].to_variant());
        let back = CommitMeta::from_variant("c", &d.end()).unwrap();
        assert_eq!(back.version.as_deref(), Some("custom-1"));
        assert!(!back.extra.contains_key("ostree.ref-binding"));
    }
}
