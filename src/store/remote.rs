//! The OSTree remote an image's node upgrades from: its URL, and the release key it trusts.
//!
//! With a key, the remote has `gpg-verify=true` and the key imported into the sysroot repo's own
//! keyring for that remote (`/ostree/repo/<remote>.trustedkeys.gpg`, libostree's
//! `remote_gpg_import`), so the node refuses any commit the key did not sign.
//! (The fingerprints come from the caller: reading a key file is GPG's business,
//! `release::key`.) Without one it is
//! `gpg-verify=false`, as before releases were signed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::gio::prelude::*;
use ostree::glib;

/// Where nodes pull from when the manifest names no URL (set later by hand or provisioning).
pub const NO_URL: &str = "file:///dev/null";

/// The release key a remote trusts: the public key file, and the fingerprints in it.
#[derive(Debug, Clone)]
pub struct Trust<'a> {
    pub key_file: &'a Path,
    pub fingerprints: Vec<String>,
}

/// Who signed a commit, as libostree reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signature {
    /// The primary key's fingerprint (the signing subkey's when libostree names no primary).
    pub fingerprint: String,
    /// Valid against the keys the check had (false when the key was not among them).
    pub valid: bool,
    pub timestamp: i64,
}

/// Signature `i` of a verification result.
pub fn signature(result: &ostree::GpgVerifyResult, i: u32) -> Signature {
    // libostree's attributes: 0 valid, 1 signature expired, 3 key revoked, 5 fingerprint,
    // 6 timestamp, 12 the primary key's fingerprint.
    let all = result.all(i);
    let b = |n: usize| all.child_value(n).get::<bool>().unwrap_or(false);
    let primary: String = all.child_value(12).get().unwrap_or_default();
    let fpr: String = all.child_value(5).get().unwrap_or_default();
    Signature {
        fingerprint: if primary.is_empty() { fpr } else { primary },
        valid: b(0) && !b(1) && !b(3),
        timestamp: all.child_value(6).get::<i64>().unwrap_or(0),
    }
}

/// Add `name` to the sysroot's repo `repo`; with `trust`, trust only that key and check that
/// `commit` (already in `repo`) carries its signature.
pub fn add(
    repo: &ostree::Repo,
    name: &str,
    url: Option<&str>,
    trust: Option<&Trust>,
    commit: &str,
) -> Result<()> {
    let gpg_key = trust.map(|t| t.key_file);
    let opts = glib::VariantDict::new(None);
    opts.insert_value("gpg-verify", &gpg_key.is_some().to_variant());
    repo.remote_add(
        name,
        Some(url.unwrap_or(NO_URL)),
        Some(&opts.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("adding remote {name}"))?;
    let Some(key) = gpg_key else {
        return Ok(());
    };
    let stream = gio::File::for_path(key)
        .read(gio::Cancellable::NONE)
        .with_context(|| format!("reading the public key {}", key.display()))?;
    let ids: Vec<&str> = trust
        .map(|t| t.fingerprints.iter().map(String::as_str).collect())
        .unwrap_or_default();
    repo.remote_gpg_import(name, Some(&stream), &ids, gio::Cancellable::NONE)
        .with_context(|| format!("importing the public key {}", key.display()))?;
    let result = repo.verify_commit_for_remote(commit, name, gio::Cancellable::NONE);
    if !result.is_ok_and(|r| r.count_valid() > 0) {
        bail!(
            "commit {commit} is not signed by the key in {} (its node would trust that key \
             only): sign it (cairn sign) or name the key that signed it",
            key.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::key::{new_key, GpgHome};
    use crate::release::sign::Signer;

    /// A commit of a one-file tree in a new archive repo.
    fn commit(dir: &Path) -> (ostree::Repo, String) {
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("f"), "x").unwrap();
        let repo = crate::store::open_or_create(&dir.join("repo")).unwrap();
        let c = crate::store::write_commit(
            &repo,
            &crate::store::NewCommit {
                root: &tree,
                base: None,
                header: crate::store::Header {
                    ref_: "t/x",
                    parent: None,
                    subject: "t",
                    meta: &crate::store::CommitMeta::default(),
                    timestamp: 1,
                    signer: None,
                },
            },
        )
        .unwrap();
        (repo, c)
    }

    #[test]
    fn a_remote_trusts_only_its_key() {
        let d = tempfile::Builder::new()
            .prefix("cairn-rm")
            .tempdir_in("/tmp")
            .unwrap();
        let k = new_key(&d.path().join("k"), "remote test", "1d").unwrap();
        let other = new_key(&d.path().join("o"), "other", "1d").unwrap();
        let (src, c) = commit(d.path());
        let s = Signer::new(
            GpgHome::resolve(Some(&k.homedir)).unwrap(),
            &k.key.fingerprint,
        )
        .unwrap();
        assert!(!s.signed(&src, &c).unwrap());
        s.sign_commit(&src, &c).unwrap();
        assert!(s.signed(&src, &c).unwrap());
        s.sign_commit(&src, &c).unwrap(); // a second time: no second signature
        assert_eq!(
            crate::release::sign::signatures(&src, &c, Some(&s))
                .unwrap()
                .len(),
            1
        );
        let node = ostree::Repo::new_for_path(d.path().join("node"));
        std::fs::create_dir_all(d.path().join("node")).unwrap();
        node.create(ostree::RepoMode::BareUser, gio::Cancellable::NONE)
            .unwrap();
        let opts = glib::VariantDict::new(None);
        opts.insert_value("refs", &vec![c.clone()].to_variant());
        node.pull_with_options(
            &format!("file://{}", d.path().join("repo").display()),
            &opts.end(),
            None,
            gio::Cancellable::NONE,
        )
        .unwrap();
        fn trust(key: &std::path::Path) -> Trust<'_> {
            Trust {
                key_file: key,
                fingerprints: crate::release::key::fingerprints_in(key).unwrap(),
            }
        }
        add(
            &node,
            "ok",
            Some("http://127.0.0.1:1/"),
            Some(&trust(&k.public_key)),
            &c,
        )
        .unwrap();
        assert_eq!(
            node.remote_get_url("ok").unwrap().as_str(),
            "http://127.0.0.1:1/"
        );
        assert!(node.remote_get_gpg_verify("ok").unwrap());
        let e = add(&node, "bad", None, Some(&trust(&other.public_key)), &c).unwrap_err();
        assert!(
            format!("{e:#}").contains("is not signed by the key"),
            "{e:#}"
        );
        add(&node, "plain", None, None, &c).unwrap();
        assert!(!node.remote_get_gpg_verify("plain").unwrap());
        for h in [&k.homedir, &other.homedir] {
            let _ = crate::base::cmd::Cmd::new("gpgconf")
                .arg("--homedir")
                .arg(h)
                .args(["--kill", "gpg-agent"])
                .run();
        }
    }
}
