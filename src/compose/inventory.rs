//! What the finished tree says about its packages, for the SBOM: each package's source package
//! (from dpkg's status database) and licenses (from its machine-readable `debian/copyright`,
//! read while the tree still has it), and the distribution (from os-release).

use anyhow::{Context, Result};
use cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::base::{Distro, Package, PackageInfo};
use crate::describe::license;

/// The source and licenses of each of `packages`, read from the Debian root `root`.
pub fn package_info(root: &Dir, packages: &[Package]) -> Result<Vec<PackageInfo>> {
    let status = root
        .read_to_string("var/lib/dpkg/status")
        .context("reading /var/lib/dpkg/status in the tree")?;
    let sources = parse_status(&status);
    let mut out = Vec::with_capacity(packages.len());
    for p in packages {
        let (source, source_version) = sources
            .iter()
            .find(|s| s.0 == p.name)
            .map(|s| (s.1.clone(), s.2.clone()))
            .unwrap_or_default();
        let copyright = format!("usr/share/doc/{}/copyright", p.name);
        let license = root
            .read_to_string_optional(&copyright)
            .with_context(|| format!("reading /{copyright} in the tree"))?
            .and_then(|t| license::from_copyright(&t))
            .unwrap_or_default();
        out.push(PackageInfo {
            name: p.name.clone(),
            source: if source == p.name {
                String::new()
            } else {
                source
            },
            source_version: if source_version == p.version {
                String::new()
            } else {
                source_version
            },
            license,
        });
    }
    Ok(out)
}

/// (package, source, source version) for every installed package in a dpkg status file; the
/// source is the package itself when the `Source:` field is absent, and its version the
/// package's unless the field gives one in parentheses.
fn parse_status(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let (Some(name), Some(version)) = (field("Package:"), field("Version:")) else {
            continue;
        };
        if !field("Status:").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        let (source, source_version) = match field("Source:") {
            None => (name.clone(), version.clone()),
            Some(s) => match s.split_once(' ') {
                Some((src, v)) => (
                    src.to_string(),
                    v.trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_string(),
                ),
                None => (s, version.clone()),
            },
        };
        out.push((name, source, source_version));
    }
    out
}

/// The distribution the tree is built from (`ID` and `VERSION_ID` of `/usr/lib/os-release`).
pub fn distro(root: &Dir) -> Result<Option<Distro>> {
    let Some(text) = root
        .read_to_string_optional("usr/lib/os-release")
        .context("reading /usr/lib/os-release in the tree")?
    else {
        return Ok(None);
    };
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
    };
    Ok(match (get("ID="), get("VERSION_ID=")) {
        (Some(id), Some(version_id)) => Some(Distro { id, version_id }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_licenses_from_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        std::fs::write(
            r.join("var/lib/dpkg/status"),
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u4\n\n\
             Package: libssl3\nStatus: install ok installed\nSource: openssl (3.0.15-1~deb12u1)\nVersion: 3.0.15-1~deb12u1+b1\n\n\
             Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b7\n\n\
             Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("usr/share/doc/bash")).unwrap();
        std::fs::write(
            r.join("usr/share/doc/bash/copyright"),
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: FSF\nLicense: GPL-3+\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(
            r.join("usr/lib/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .unwrap();
        let root = Dir::open_ambient_dir(r, cap_std::ambient_authority()).unwrap();
        let pkg = |n: &str, v: &str| Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
            sha256: String::new(),
        };
        let info = package_info(
            &root,
            &[
                pkg("libc6", "2.36-9+deb12u4"),
                pkg("libssl3", "3.0.15-1~deb12u1+b1"),
                pkg("bash", "5.2.15-2+b7"),
            ],
        )
        .unwrap();
        assert_eq!(info[0].source, "glibc");
        assert_eq!(info[0].source_version, "", "same version as the binary");
        assert_eq!(info[1].source, "openssl");
        assert_eq!(info[1].source_version, "3.0.15-1~deb12u1");
        assert_eq!(info[2].source, "", "bash is its own source");
        assert_eq!(info[2].license, "GPL-3.0-or-later");
        assert_eq!(info[0].license, "", "no copyright file: unknown");
        let d = distro(&root).unwrap().unwrap();
        assert_eq!(d.qualifier(), "debian-12");
    }
}
