//! Lockfiles: every package of a compose pinned to a version, an architecture and the SHA-256 of
//! its `.deb`, plus the timestamp the commit was made with.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::Package;

/// A lockfile as stored (TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lockfile {
    /// The commit timestamp, used when `SOURCE_DATE_EPOCH` is not set.
    pub source_date_epoch: i64,
    #[serde(rename = "package", default)]
    pub packages: Vec<Package>,
}

impl Lockfile {
    /// Read and check a lockfile.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)
            .with_context(|| format!("reading lockfile {}", path.display()))?;
        let lf: Lockfile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid lockfile: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        for p in &lf.packages {
            if p.sha256.len() != 64 || !p.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "{}: package {}: `sha256` is not a SHA-256 digest",
                    path.display(),
                    p.name
                );
            }
        }
        let mut names: Vec<&str> = lf.packages.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("{}: package {} is listed twice", path.display(), w[0]);
        }
        Ok(lf)
    }

    /// Write the lockfile atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = String::from(
            "# cairn lockfile: every package pinned by version, architecture and .deb digest.\n\
             # Written by `cairn compose --write-lockfile`; use it with `--lockfile`.\n",
        );
        text.push_str(&toml::to_string(self)?);
        crate::base::tmp::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing lockfile {}", path.display()))
    }

    /// Check that `resolved` (with digests) is exactly what this lockfile pins.
    pub fn verify(&self, resolved: &[Package], path: &Path) -> Result<()> {
        for r in resolved {
            match self.packages.iter().find(|p| p.name == r.name) {
                None => bail!(
                    "{}: package {} {} is needed but not in the lockfile (regenerate it with --write-lockfile)",
                    path.display(),
                    r.name,
                    r.version
                ),
                Some(p) if p.version != r.version || p.arch != r.arch => bail!(
                    "{}: package {} is pinned to {} ({}) but the apt sources give {} ({}); \
                     the pinned version is no longer available",
                    path.display(),
                    r.name,
                    p.version,
                    p.arch,
                    r.version,
                    r.arch
                ),
                Some(p) if !r.sha256.is_empty() && p.sha256 != r.sha256 => bail!(
                    "{}: package {} {}: the downloaded .deb has SHA-256 {} but the lockfile says {}",
                    path.display(),
                    r.name,
                    r.version,
                    r.sha256,
                    p.sha256
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(n: &str, v: &str, sha: char) -> Package {
        Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock.toml");
        let lf = Lockfile {
            source_date_epoch: 1700000000,
            packages: vec![pkg("bash", "5.2", 'a'), pkg("login", "1:4.13", 'b')],
        };
        lf.write(&p).unwrap();
        let back = Lockfile::load(&p).unwrap();
        assert_eq!(back, lf);
        back.verify(&[pkg("bash", "5.2", 'a')], &p).unwrap();
        let e = back
            .verify(&[pkg("bash", "5.2", 'c')], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHA-256") && e.contains("bash"), "{e}");
        let e = back
            .verify(&[pkg("bash", "5.3", 'a')], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pinned to 5.2"), "{e}");
        let e = back
            .verify(&[pkg("vim", "9", 'a')], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the lockfile"), "{e}");
    }

    #[test]
    fn bad_lockfiles() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock.toml");
        fs_err::write(&p, "source-date-epoch = 1\n[[package]]\nname = \"a\"\nversion = \"1\"\narch = \"amd64\"\nsha256 = \"zz\"\n").unwrap();
        assert!(Lockfile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a SHA-256"));
        fs_err::write(&p, "source-date-epoch = 1\nextra = 2\n").unwrap();
        assert!(Lockfile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }
}
