//! The signature check before a rollout touches a node: a node whose booted commit is signed by
//! the key its remote trusts verifies every commit it pulls, and would refuse an unsigned target
//! (or one signed by another key) in the middle of the rollout. So `rollout start` checks the
//! target commit in the build repo against that node's own keyring (read from the node) first,
//! and refuses naming the node, its key and how to sign.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};

use super::agent::{self, NodeStatus};
use crate::base::text::short_hash;
use crate::vm::ssh::Ssh;

/// A node as the check sees it: its name, how to reach it, what it says of itself.
pub struct Seen<'a> {
    pub name: &'a str,
    pub ssh: &'a Ssh,
    pub status: &'a NodeStatus,
}

/// Refuse `commit` (`to_ref`'s, in `repo`) unless every node that verifies its commits can
/// verify it with a key of its own keyring: one keyring read per distinct key and remote, from
/// the first node whose booted commit that key signed.
pub fn check(repo: &ostree::Repo, to_ref: &str, commit: &str, nodes: &[Seen]) -> Result<()> {
    let mut keys: BTreeMap<(&str, &str), &Seen> = BTreeMap::new();
    for n in nodes {
        if let Some(fpr) = &n.status.signed_by {
            keys.entry((fpr.as_str(), n.status.remote.as_str()))
                .or_insert(n);
        }
    }
    for ((fpr, remote), n) in keys {
        let mut file = tempfile::Builder::new()
            .prefix("cairn-node-keys-")
            .suffix(".gpg")
            .tempfile()
            .context("making a temporary keyring")?;
        file.write_all(&agent::trusted_keyring(n.name, n.ssh, remote)?)
            .with_context(|| format!("writing {}", file.path().display()))?;
        let sigs = crate::release::sign::signatures_in(repo, commit, file.path())?;
        // Any key in the node's keyring will do (a key rotation trusts two), as for the node.
        if !sigs.iter().any(|s| s.valid) {
            bail!(
                "{to_ref}'s commit {} is not signed by a key {} trusts ({fpr} signed its \
                 booted commit; it verifies every commit it pulls, and would refuse this one): \
                 sign it first, with \
                 `cairn sign {to_ref} --key-id {fpr} --gpg-homedir DIR` where DIR holds that key \
                 (build/release-key for the shipped manifests' release-key)",
                short_hash(commit),
                n.name
            );
        }
    }
    Ok(())
}
