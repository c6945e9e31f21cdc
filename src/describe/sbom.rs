//! Software bills of materials for a commit: SPDX 2.3 JSON (stored with every commit) and
//! CycloneDX 1.5 JSON, both made from the package list in the commit's metadata, in the shape
//! vulnerability scanners match (Syft's for Debian): every package's purl names its
//! distribution release and, where it differs, its source package
//! (`pkg:deb/debian/libc6@2.36-9?arch=amd64&upstream=glibc&distro=debian-12`), the document
//! names the operating system it describes, and licenses come from the packages' own
//! machine-readable copyright files.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::base::time::rfc3339;
use crate::base::{Distro, Package, PackageInfo};

/// What an SBOM describes.
pub struct Subject<'a> {
    pub ref_: &'a str,
    pub version: &'a str,
    /// A digest that identifies the inputs (the compose's input hash).
    pub id: &'a str,
    /// Seconds since the epoch (the commit's timestamp, never the clock).
    pub created: i64,
    pub packages: &'a [Package],
    /// Source packages and licenses, by package name (may be empty).
    pub info: &'a [PackageInfo],
    /// The distribution the tree is built from, when known.
    pub distro: Option<&'a Distro>,
    /// The commit, once there is one (a document stored inside the commit cannot name it).
    pub commit: Option<&'a str>,
}

impl Subject<'_> {
    fn info(&self, name: &str) -> Option<&PackageInfo> {
        self.info.iter().find(|i| i.name == name)
    }

    fn license(&self, name: &str) -> Option<&str> {
        self.info(name)
            .map(|i| i.license.as_str())
            .filter(|l| !l.is_empty())
    }

    /// `pkg:deb/debian/NAME@VERSION?arch=ARCH[&upstream=SOURCE[@VERSION]][&distro=debian-12]`.
    fn purl(&self, p: &Package) -> String {
        let ns = self.distro.map_or("debian", |d| d.id.as_str());
        let mut s = format!(
            "pkg:deb/{}/{}@{}?arch={}",
            enc(ns),
            enc(&p.name),
            enc(&p.version),
            enc(&p.arch)
        );
        if let Some(i) = self.info(&p.name).filter(|i| !i.source.is_empty()) {
            s.push_str("&upstream=");
            s.push_str(&enc(&i.source));
            if !i.source_version.is_empty() {
                s.push_str(&enc(&format!("@{}", i.source_version)));
            }
        }
        if let Some(d) = self.distro {
            s.push_str("&distro=");
            s.push_str(&enc(&d.qualifier()));
        }
        s
    }

    /// Every `LicenseRef-…` the packages' expressions use, for SPDX to declare.
    fn license_refs(&self) -> BTreeSet<String> {
        self.info
            .iter()
            .flat_map(|i| {
                i.license
                    .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                    .filter(|t| t.starts_with("LicenseRef-"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// SBOM formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Spdx,
    Cyclonedx,
}

/// Percent-encode a purl component (RFC 3986 unreserved characters stay).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn spdx_id(i: usize, name: &str) -> String {
    format!("SPDXRef-Package-{i}-{}", super::license::idstring(name))
}

fn uuid_for(id: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes())
}

/// SPDX 2.3 JSON: the operating system, the distribution it descends from, and every package
/// it contains.
pub fn spdx(s: &Subject) -> Value {
    let mut packages = vec![spdx_os(s)];
    let mut rels = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-OS")];
    if let Some(d) = s.distro {
        packages.push(spdx_distro(d));
        rels.push(relationship(
            "SPDXRef-OS",
            "DESCENDANT_OF",
            "SPDXRef-Distro",
        ));
    }
    for (i, p) in s.packages.iter().enumerate() {
        let id = spdx_id(i, &p.name);
        packages.push(spdx_package(s, &id, p));
        rels.push(relationship("SPDXRef-OS", "CONTAINS", &id));
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", s.ref_, s.version),
        "documentNamespace": format!("urn:uuid:{}", uuid_for(s.commit.unwrap_or(s.id))),
        "creationInfo": {
            "created": rfc3339(s.created),
            "creators": [format!("Tool: cairn-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": rels,
    });
    let refs = s.license_refs();
    if !refs.is_empty() {
        doc["hasExtractedLicensingInfos"] = refs.iter().map(|r| extracted_license(r)).collect();
    }
    doc
}

/// An SPDX relationship: `from` `kind` `to`.
fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({
        "spdxElementId": from,
        "relationshipType": kind,
        "relatedSpdxElement": to,
    })
}

/// The operating system the document describes (naming its commit when there is one).
fn spdx_os(s: &Subject) -> Value {
    let mut os = json!({
        "name": s.ref_,
        "SPDXID": "SPDXRef-OS",
        "versionInfo": s.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    });
    if let Some(c) = s.commit {
        os["externalRefs"] = json!([{
            "referenceCategory": "OTHER",
            "referenceType": "ostree-commit",
            "referenceLocator": c,
        }]);
    }
    os
}

/// The distribution the operating system descends from.
fn spdx_distro(d: &Distro) -> Value {
    json!({
        "name": d.id,
        "SPDXID": "SPDXRef-Distro",
        "versionInfo": d.version_id,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })
}

/// One package, as `id`: its license, purl, source package and digest as far as they are known.
fn spdx_package(s: &Subject, id: &str, p: &Package) -> Value {
    let mut pkg = json!({
        "name": p.name,
        "SPDXID": id,
        "versionInfo": p.version,
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": s.license(&p.name).unwrap_or("NOASSERTION"),
        "copyrightText": "NOASSERTION",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": s.purl(p),
        }],
    });
    if let Some(src) = s.info(&p.name).filter(|i| !i.source.is_empty()) {
        pkg["sourceInfo"] = json!(format!(
            "built from the Debian source package {}",
            src.source
        ));
    }
    if !p.sha256.is_empty() {
        pkg["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": p.sha256 }]);
    }
    pkg
}

/// The declaration of a `LicenseRef-…` the packages use.
fn extracted_license(r: &str) -> Value {
    let name = r.trim_start_matches("LicenseRef-");
    json!({
        "licenseId": r,
        "name": name,
        "extractedText": format!(
            "The license Debian names \"{name}\" in the machine-readable \
             /usr/share/doc/PACKAGE/copyright of the packages that use it."
        ),
    })
}

/// CycloneDX 1.5 JSON.
pub fn cyclonedx(s: &Subject) -> Value {
    let mut components: Vec<Value> = Vec::new();
    if let Some(d) = s.distro {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": "distro",
            "name": d.id,
            "version": d.version_id,
            "supplier": { "name": "Debian" },
        }));
    }
    for p in s.packages {
        let purl = s.purl(p);
        let mut c = json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "supplier": { "name": "Debian" },
        });
        if !p.sha256.is_empty() {
            c["hashes"] = json!([{ "alg": "SHA-256", "content": p.sha256 }]);
        }
        if let Some(l) = s.license(&p.name) {
            c["licenses"] = json!([{ "expression": l }]);
        }
        components.push(c);
    }
    let mut os = json!({
        "type": "operating-system",
        "bom-ref": "os",
        "name": s.ref_,
        "version": s.version,
    });
    let mut props = Vec::new();
    if let Some(c) = s.commit {
        props.push(json!({ "name": "cairn:commit", "value": c }));
    }
    if let Some(d) = s.distro {
        props.push(json!({ "name": "cairn:distro", "value": d.qualifier() }));
    }
    props.push(json!({ "name": "cairn:inputhash", "value": s.id }));
    os["properties"] = Value::Array(props);
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_for(s.commit.unwrap_or(s.id))),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(s.created),
            "tools": { "components": [{ "type": "application", "name": "cairn", "version": env!("CARGO_PKG_VERSION") }] },
            "component": os,
        },
        "components": components,
    })
}

/// Render in `format`.
pub fn render(format: Format, s: &Subject) -> Value {
    match format {
        Format::Spdx => spdx(s),
        Format::Cyclonedx => cyclonedx(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian12() -> Distro {
        Distro {
            id: "debian".into(),
            version_id: "12".into(),
        }
    }

    fn pkg(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: "ab".repeat(32),
        }
    }

    fn info(name: &str, source: &str, sv: &str, license: &str) -> PackageInfo {
        PackageInfo {
            name: name.into(),
            source: source.into(),
            source_version: sv.into(),
            license: license.into(),
        }
    }

    fn subject<'a>(p: &'a [Package], i: &'a [PackageInfo], d: &'a Distro) -> Subject<'a> {
        Subject {
            ref_: "cairn/amd64/base",
            version: "1.0",
            id: "abc",
            created: 1700000000,
            packages: p,
            info: i,
            distro: Some(d),
            commit: Some("c0ffee"),
        }
    }

    #[test]
    fn purls_name_the_release_and_the_source() {
        let d = debian12();
        let pkgs = [
            pkg("bash", "5.2.15-2+b7"),
            pkg("libc6", "2.36-9+deb12u4"),
            pkg("libssl3", "3.0.15-1~deb12u1+b1"),
            pkg("libstdc++6", "12.2.0-14"),
        ];
        let infos = [
            info("bash", "", "", "GPL-3.0-or-later"),
            info("libc6", "glibc", "", ""),
            info("libssl3", "openssl", "3.0.15-1~deb12u1", "Apache-2.0"),
            info("libstdc++6", "gcc-12", "", ""),
        ];
        let s = subject(&pkgs, &infos, &d);
        assert_eq!(
            s.purl(&pkgs[0]),
            "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            s.purl(&pkgs[1]),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&upstream=glibc&distro=debian-12"
        );
        assert_eq!(
            s.purl(&pkgs[2]),
            "pkg:deb/debian/libssl3@3.0.15-1~deb12u1%2Bb1?arch=amd64&upstream=openssl%403.0.15-1~deb12u1&distro=debian-12"
        );
        assert_eq!(
            s.purl(&pkgs[3]),
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&upstream=gcc-12&distro=debian-12"
        );
        // Without knowing the distribution, no qualifier is made up.
        let bare = Subject {
            distro: None,
            ..subject(&pkgs, &infos, &d)
        };
        assert!(!bare.purl(&pkgs[0]).contains("distro="));
    }

    #[test]
    fn spdx_names_the_os_licenses_and_refs() {
        let d = debian12();
        let pkgs = [pkg("bash", "5.2"), pkg("tzdata", "2024a-0+deb12u1")];
        let infos = [
            info("bash", "", "", "GPL-3.0-or-later"),
            info("tzdata", "", "", "LicenseRef-public-domain"),
        ];
        let v = spdx(&subject(&pkgs, &infos, &d));
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(
            v["packages"][0]["primaryPackagePurpose"],
            "OPERATING-SYSTEM"
        );
        assert_eq!(
            v["packages"][0]["externalRefs"][0]["referenceLocator"],
            "c0ffee"
        );
        assert_eq!(v["packages"][1]["name"], "debian");
        assert_eq!(v["packages"][2]["licenseDeclared"], "GPL-3.0-or-later");
        assert_eq!(
            v["hasExtractedLicensingInfos"][0]["licenseId"],
            "LicenseRef-public-domain"
        );
        let id = v["packages"][2]["SPDXID"].as_str().unwrap();
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        // Same inputs, same document.
        assert_eq!(v, spdx(&subject(&pkgs, &infos, &d)));
    }

    #[test]
    fn cyclonedx_shape() {
        let d = debian12();
        let pkgs = [pkg("bash", "5.2")];
        let infos = [info("bash", "", "", "GPL-3.0-or-later")];
        let v = cyclonedx(&subject(&pkgs, &infos, &d));
        assert_eq!(v["specVersion"], "1.5");
        assert_eq!(v["metadata"]["component"]["type"], "operating-system");
        assert_eq!(
            v["metadata"]["component"]["properties"][0]["value"],
            "c0ffee"
        );
        assert_eq!(v["components"][0]["type"], "operating-system");
        assert_eq!(
            v["components"][1]["purl"],
            "pkg:deb/debian/bash@5.2?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            v["components"][1]["licenses"][0]["expression"],
            "GPL-3.0-or-later"
        );
    }
}
