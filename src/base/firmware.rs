//! The firmware an image boots with: SeaBIOS-style BIOS or UEFI.

use anyhow::{bail, Result};

/// Firmware an image boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// A `firmware` list (manifests, test headers), without repeats; `at` is `file:line`.
    pub fn parse_list(list: &[String], at: &str) -> Result<Vec<Firmware>> {
        let mut v = Vec::new();
        for x in list {
            let fw = match x.as_str() {
                "bios" => Firmware::Bios,
                "uefi" => Firmware::Uefi,
                other => bail!("{at}: key `firmware`: {other:?} is not `bios` or `uefi`"),
            };
            if !v.contains(&fw) {
                v.push(fw);
            }
        }
        if v.is_empty() {
            bail!("{at}: key `firmware` needs `bios`, `uefi` or both");
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let l = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        assert_eq!(
            Firmware::parse_list(&l(&["uefi", "bios", "uefi"]), "m.toml:3").unwrap(),
            vec![Firmware::Uefi, Firmware::Bios]
        );
        let e = Firmware::parse_list(&l(&["coreboot"]), "m.toml:3").unwrap_err();
        assert!(e.to_string().starts_with("m.toml:3: key `firmware`"), "{e}");
        assert!(Firmware::parse_list(&[], "m.toml:3").is_err());
    }
}
