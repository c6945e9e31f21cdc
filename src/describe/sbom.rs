//! Software bills of materials for a commit: SPDX 2.3 JSON (stored with every commit) and
//! CycloneDX 1.5 JSON, both made from the package list in the commit's metadata.

use serde_json::{json, Value};

use crate::base::time::rfc3339;
use crate::base::Package;

/// What an SBOM describes.
pub struct Subject<'a> {
    pub ref_: &'a str,
    pub version: &'a str,
    /// A digest that identifies the inputs (the compose's input hash).
    pub id: &'a str,
    /// Seconds since the epoch (the commit's timestamp, never the clock).
    pub created: i64,
    pub packages: &'a [Package],
}

/// SBOM formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Spdx,
    Cyclonedx,
}

fn purl(p: &Package) -> String {
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace(':', "%3A")
            .replace('+', "%2B")
    };
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        enc(&p.name),
        enc(&p.version),
        p.arch
    )
}

fn spdx_id(i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{i}-{clean}")
}

fn uuid_for(id: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes())
}

/// SPDX 2.3 JSON.
pub fn spdx(s: &Subject) -> Value {
    let mut packages = vec![json!({
        "name": s.ref_,
        "SPDXID": "SPDXRef-OS",
        "versionInfo": s.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-OS",
    })];
    for (i, p) in s.packages.iter().enumerate() {
        let id = spdx_id(i, &p.name);
        let mut pkg = json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p),
            }],
        });
        if !p.sha256.is_empty() {
            pkg["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": p.sha256 }]);
        }
        packages.push(pkg);
        rels.push(json!({
            "spdxElementId": "SPDXRef-OS",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", s.ref_, s.version),
        "documentNamespace": format!("urn:uuid:{}", uuid_for(s.id)),
        "creationInfo": {
            "created": rfc3339(s.created),
            "creators": [format!("Tool: cairn-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": rels,
    })
}

/// CycloneDX 1.5 JSON.
pub fn cyclonedx(s: &Subject) -> Value {
    let components: Vec<Value> = s
        .packages
        .iter()
        .map(|p| {
            let mut c = json!({
                "type": "library",
                "bom-ref": purl(p),
                "name": p.name,
                "version": p.version,
                "purl": purl(p),
                "supplier": { "name": "Debian" },
            });
            if !p.sha256.is_empty() {
                c["hashes"] = json!([{ "alg": "SHA-256", "content": p.sha256 }]);
            }
            c
        })
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_for(s.id)),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(s.created),
            "tools": { "components": [{ "type": "application", "name": "cairn", "version": env!("CARGO_PKG_VERSION") }] },
            "component": { "type": "operating-system", "bom-ref": "os", "name": s.ref_, "version": s.version },
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

    fn subject(pkgs: &[Package]) -> Subject<'_> {
        Subject {
            ref_: "cairn/amd64/base",
            version: "1.0",
            id: "abc",
            created: 1700000000,
            packages: pkgs,
        }
    }

    #[test]
    fn spdx_lists_every_package_with_purl_and_digest() {
        let pkgs = vec![Package {
            name: "libstdc++6".into(),
            version: "1:12.2-14".into(),
            arch: "amd64".into(),
            sha256: "ab".repeat(32),
        }];
        let v = spdx(&subject(&pkgs));
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let p = &v["packages"][1];
        assert_eq!(p["name"], "libstdc++6");
        assert_eq!(
            p["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2-14?arch=amd64"
        );
        assert_eq!(p["checksums"][0]["checksumValue"], "ab".repeat(32));
        let id = p["SPDXID"].as_str().unwrap();
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
            "{id}"
        );
        assert_eq!(v["relationships"].as_array().unwrap().len(), 2);
        // Same inputs, same document.
        assert_eq!(v, spdx(&subject(&pkgs)));
    }

    #[test]
    fn cyclonedx_shape() {
        let pkgs = vec![Package {
            name: "bash".into(),
            version: "5.2".into(),
            arch: "amd64".into(),
            sha256: String::new(),
        }];
        let v = cyclonedx(&subject(&pkgs));
        assert_eq!(v["specVersion"], "1.5");
        assert_eq!(
            v["components"][0]["purl"],
            "pkg:deb/debian/bash@5.2?arch=amd64"
        );
        assert!(v["components"][0].get("hashes").is_none());
    }
}
