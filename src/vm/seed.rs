//! A cloud-init NoCloud seed: a small FAT image labelled `CIDATA` holding `meta-data` and
//! `user-data`, made with mkfs.vfat and mtools (no mount). cloud-init finds it by its label.

use std::path::Path;

use anyhow::{Context, Result};

use crate::base::cmd::Cmd;

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
    fs_err::write(&ud, user_data(p)).with_context(|| format!("writing {}", ud.display()))?;
    fs_err::write(&md, meta_data(p)).with_context(|| format!("writing {}", md.display()))?;
    let _ = fs_err::remove_file(out);
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

/// The public keys to provision: the file given, else `~/.ssh/id_ed25519.pub` or
/// `~/.ssh/id_rsa.pub` when present; none (with a warning) otherwise.
pub fn public_keys(path: Option<&Path>) -> Result<Vec<String>> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("HOME").and_then(|h| {
            ["id_ed25519.pub", "id_rsa.pub"]
                .iter()
                .map(|f| Path::new(&h).join(".ssh").join(f))
                .find(|p| p.is_file())
        }),
    };
    let Some(p) = path else {
        tracing::warn!("no SSH public key (--ssh-key): nobody can log in over SSH");
        return Ok(Vec::new());
    };
    let k = fs_err::read_to_string(&p).context("reading the SSH key")?;
    if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") {
        anyhow::bail!("{}: not an SSH public key", p.display());
    }
    Ok(vec![k.trim().to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k.pub");
        std::fs::write(&k, "ssh-ed25519 AAAA test\n").unwrap();
        assert_eq!(
            public_keys(Some(&k)).unwrap(),
            vec!["ssh-ed25519 AAAA test"]
        );
        std::fs::write(&k, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let e = public_keys(Some(&k)).unwrap_err().to_string();
        assert!(e.contains("not an SSH public key"), "{e}");
        assert!(public_keys(Some(&d.path().join("none.pub"))).is_err());
    }

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
