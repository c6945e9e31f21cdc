//! A cloud-init NoCloud seed: a small FAT image labelled `CIDATA` holding `meta-data` and
//! `user-data`, made with mkfs.vfat and mtools (no mount). cloud-init finds it by its label.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::Cmd;

/// What provisioning gives the VM.
#[derive(Debug, Clone)]
pub struct Provision {
    pub instance_id: String,
    pub hostname: String,
    /// Public keys for the default login (`ops` on cairn's blessed hosts) and root.
    pub ssh_keys: Vec<String>,
}

/// The cloud-config: keys for the default user, and for root too (the test harness logs in as
/// root). No password anywhere.
pub fn user_data(p: &Provision) -> String {
    let mut s = String::from("#cloud-config\ndisable_root: false\nssh_pwauth: false\n");
    s.push_str("ssh_authorized_keys:\n");
    for k in &p.ssh_keys {
        s.push_str(&format!("  - {}\n", yaml_quote(k.trim())));
    }
    s
}

pub fn meta_data(p: &Provision) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_quote(&p.instance_id),
        yaml_quote(&p.hostname)
    )
}

/// A YAML double-quoted scalar.
fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Write the seed image `out` for `p`, using `dir` for the two files.
pub fn write(p: &Provision, dir: &Path, out: &Path) -> Result<()> {
    let ud = dir.join("user-data");
    let md = dir.join("meta-data");
    std::fs::write(&ud, user_data(p)).with_context(|| format!("writing {}", ud.display()))?;
    std::fs::write(&md, meta_data(p)).with_context(|| format!("writing {}", md.display()))?;
    let _ = std::fs::remove_file(out);
    Cmd::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(out)
        .arg("1024")
        .run()?;
    Cmd::new("mcopy")
        .arg("-i")
        .arg(out)
        .arg(&ud)
        .arg(&md)
        .arg("::")
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_holds_both_files_under_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let p = Provision {
            instance_id: "i-1".into(),
            hostname: "node-a".into(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nza test@x".into()],
        };
        let out = dir.path().join("seed.img");
        write(&p, dir.path(), &out).unwrap();
        let label = Cmd::new("fatlabel").arg(&out).run().unwrap();
        assert_eq!(label.stdout.trim(), "CIDATA");
        let ud = Cmd::new("mtype")
            .arg("-i")
            .arg(&out)
            .arg("::user-data")
            .run()
            .unwrap();
        assert!(ud.stdout.starts_with("#cloud-config\n"));
        assert!(ud.stdout.contains("\"ssh-ed25519 AAAAC3Nza test@x\""));
        let md = Cmd::new("mtype")
            .arg("-i")
            .arg(&out)
            .arg("::meta-data")
            .run()
            .unwrap();
        assert!(md.stdout.contains("local-hostname: \"node-a\""));
    }
}
