//! Licenses from Debian's machine-readable `debian/copyright` files (DEP-5), as SPDX license
//! expressions that SBOM validators and scanners accept.
//!
//! Debian's short names mostly are SPDX identifiers or close to them (`GPL-2+` is
//! `GPL-2.0-or-later`, `Expat` is `MIT`); a name with no SPDX identifier becomes a
//! `LicenseRef-…` of its own, which the SPDX document then declares. A file that is not
//! machine-readable gives no expression (the SBOM says `NOASSERTION`).

/// The SPDX expression for a DEP-5 copyright file's text, or `None` when it is not
/// machine-readable or names no license.
pub fn from_copyright(text: &str) -> Option<String> {
    let mut paras = paragraphs(text);
    let header = paras.next()?;
    let format = field(&header, "format")?;
    if !format.contains("copyright-format") && !format.contains("dep5") {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for p in paras {
        if field(&p, "files").is_none() {
            continue;
        }
        if let Some(l) = field(&p, "license") {
            let expr = expression(&l);
            if !expr.is_empty() && !parts.contains(&expr) {
                parts.push(expr);
            }
        }
    }
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => {
            parts.sort();
            let wrapped: Vec<String> = parts
                .into_iter()
                .map(|p| if p.contains(' ') { format!("({p})") } else { p })
                .collect();
            Some(wrapped.join(" AND "))
        }
    }
}

/// The paragraphs of a control-style file: lines of `Field: value` with continuation lines.
fn paragraphs(text: &str) -> impl Iterator<Item = Vec<(String, String)>> + '_ {
    text.split("\n\n").filter_map(|para| {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                continue; // continuation: license texts and file lists are not needed
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        (!fields.is_empty()).then_some(fields)
    })
}

fn field(p: &[(String, String)], name: &str) -> Option<String> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// One `License:` line (its first line: the short names) as an SPDX expression.
pub fn expression(line: &str) -> String {
    let line = line.trim();
    if line.is_empty() {
        return String::new();
    }
    // "GPL-2+ with OpenSSL exception": no SPDX exception to name exactly; the clause is one
    // reference of its own.
    let lower = line.to_ascii_lowercase();
    if lower.split_whitespace().any(|w| w == "with") {
        return license_ref(line);
    }
    let mut out: Vec<String> = Vec::new();
    for tok in line.split(|c: char| c.is_whitespace() || c == ',') {
        match tok.to_ascii_lowercase().as_str() {
            "" => {}
            "or" | "|" => out.push("OR".into()),
            "and" | "&" => out.push("AND".into()),
            _ => out.push(spdx_id(tok).unwrap_or_else(|| license_ref(tok))),
        }
    }
    let expr = out.join(" ");
    match spdx::Expression::parse(&expr) {
        Ok(_) => expr,
        Err(_) => license_ref(line),
    }
}

/// `LicenseRef-` and the name made an SPDX id string.
pub fn license_ref(name: &str) -> String {
    format!("LicenseRef-{}", idstring(name.trim()))
}

/// `s` with every character SPDX does not allow in an id (letters, digits, `.`, `-`) as `-`.
pub fn idstring(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Debian names that are not SPDX identifiers as written.
const RENAMES: &[(&str, &str)] = &[
    ("expat", "MIT"),
    ("artistic", "Artistic-1.0"),
    ("artistic-1", "Artistic-1.0"),
    ("artistic-2", "Artistic-2.0"),
    ("apache-2", "Apache-2.0"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2", "MPL-2.0"),
    ("cc0", "CC0-1.0"),
    ("psf-2", "PSF-2.0"),
    ("python", "Python-2.0"),
    ("zlib", "Zlib"),
    ("libpng", "Libpng"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("isc", "ISC"),
    ("curl", "curl"),
    ("openssl", "OpenSSL"),
    ("x11", "X11"),
];

/// The SPDX identifier for a Debian short license name, if there is one.
pub fn spdx_id(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if let Some((_, id)) = RENAMES.iter().find(|(d, _)| *d == lower) {
        return Some((*id).to_string());
    }
    if let Some(id) = gnu_id(name) {
        return Some(id);
    }
    if let Some(id) = spdx::license_id(name) {
        return Some(id.name.to_string());
    }
    // The same identifier in other letter case ("Bsd-3-Clause").
    spdx::identifiers::LICENSES
        .iter()
        .find(|l| l.0.eq_ignore_ascii_case(name))
        .map(|l| l.0.to_string())
}

/// GNU licenses: `GPL-2` is `GPL-2.0-only`, `LGPL-2.1+` is `LGPL-2.1-or-later`, and so on.
fn gnu_id(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let family = ["AGPL", "LGPL", "GPL", "GFDL"]
        .into_iter()
        .find(|f| upper.starts_with(&format!("{f}-")))?;
    let rest = &upper[family.len() + 1..];
    let (version, later) = match rest.strip_suffix('+') {
        Some(v) => (v, true),
        None => (rest, false),
    };
    let version = if version.contains('.') {
        version.to_string()
    } else {
        format!("{version}.0")
    };
    let id = format!(
        "{family}-{version}-{}",
        if later { "or-later" } else { "only" }
    );
    spdx::license_id(&id).map(|l| l.name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_names_become_spdx_ids() {
        for (debian, spdx) in [
            ("GPL-2+", "GPL-2.0-or-later"),
            ("GPL-2", "GPL-2.0-only"),
            ("LGPL-2.1+", "LGPL-2.1-or-later"),
            ("GPL-3", "GPL-3.0-only"),
            ("Expat", "MIT"),
            ("BSD-3-clause", "BSD-3-Clause"),
            ("Apache-2.0", "Apache-2.0"),
            ("Zlib", "Zlib"),
            ("ISC", "ISC"),
        ] {
            assert_eq!(spdx_id(debian).as_deref(), Some(spdx), "{debian}");
        }
        assert_eq!(spdx_id("public-domain"), None);
        assert_eq!(spdx_id("GPL-9+"), None);
    }

    #[test]
    fn license_lines_become_expressions() {
        assert_eq!(
            expression("GPL-1+ or Artistic"),
            "GPL-1.0-or-later OR Artistic-1.0"
        );
        assert_eq!(expression("public-domain"), "LicenseRef-public-domain");
        assert_eq!(
            expression("GPL-2+ with OpenSSL exception"),
            "LicenseRef-GPL-2--with-OpenSSL-exception"
        );
        for e in [
            expression("GPL-2+ and BSD-3-clause"),
            expression("Expat"),
            expression("weird (name)"),
        ] {
            assert!(spdx::Expression::parse(&e).is_ok(), "{e}");
        }
    }

    /// The shape of Debian 12's /usr/share/doc/bash/copyright, shortened.
    const BASH: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: bash\n\
Source: https://ftp.gnu.org/gnu/bash/\n\
\n\
Files: *\n\
Copyright: 1987-2022 Free Software Foundation, Inc.\n\
License: GPL-3+\n\
\n\
Files: lib/readline/*\n\
Copyright: 1987-2022 Free Software Foundation, Inc.\n\
License: GPL-3+\n\
\n\
Files: examples/loadables/*\n\
Copyright: 2002 someone\n\
License: GPL-2+ or BSD-3-clause\n\
\n\
License: GPL-3+\n\
 This program is free software; you can redistribute it and/or modify\n\
 it under the terms of the GNU General Public License as published by\n";

    #[test]
    fn machine_readable_files_give_one_expression() {
        assert_eq!(
            from_copyright(BASH).as_deref(),
            Some("(GPL-2.0-or-later OR BSD-3-Clause) AND GPL-3.0-or-later")
        );
        assert!(spdx::Expression::parse(&from_copyright(BASH).unwrap()).is_ok());
        // A free-form file says nothing a machine can read.
        let free = "This is Debian's prepackaged version of foo.\n\nCopyright: 1999 Someone\nLicense: GPL\n";
        assert_eq!(from_copyright(free), None);
    }
}
