//! Package differences between two commits.

use serde::Serialize;

use crate::base::Package;

/// A package that changed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// What changed from one package list to another.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PackageDiff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Changed>,
}

/// Compare two package lists by name.
pub fn diff(from: &[Package], to: &[Package]) -> PackageDiff {
    let mut d = PackageDiff::default();
    for t in to {
        match from.iter().find(|f| f.name == t.name) {
            None => d.added.push(t.clone()),
            Some(f) if f.version != t.version => d.changed.push(Changed {
                name: t.name.clone(),
                from: f.version.clone(),
                to: t.version.clone(),
            }),
            Some(_) => {}
        }
    }
    for f in from {
        if !to.iter().any(|t| t.name == f.name) {
            d.removed.push(f.clone());
        }
    }
    d
}

impl std::fmt::Display for PackageDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.added {
            writeln!(f, "+ {} {}", p.name, p.version)?;
        }
        for p in &self.removed {
            writeln!(f, "- {} {}", p.name, p.version)?;
        }
        for c in &self.changed {
            writeln!(f, "~ {} {} → {}", c.name, c.from, c.to)?;
        }
        write!(
            f,
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: &str, v: &str) -> Package {
        Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
            sha256: String::new(),
        }
    }

    #[test]
    fn added_removed_changed() {
        let d = diff(
            &[p("a", "1"), p("b", "1"), p("c", "1")],
            &[p("a", "1"), p("b", "2"), p("d", "1")],
        );
        assert_eq!(d.added, vec![p("d", "1")]);
        assert_eq!(d.removed, vec![p("c", "1")]);
        assert_eq!(
            d.changed,
            vec![Changed {
                name: "b".into(),
                from: "1".into(),
                to: "2".into()
            }]
        );
        assert!(d.to_string().ends_with("1 added, 1 removed, 1 changed"));
    }
}
