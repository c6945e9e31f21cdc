//! GPG signatures on commits and on the summary, through libostree, and the repo's release key.
//!
//! A repo records the key its releases are signed with in its own config (`[cairn] gpg-key`, set
//! by the first signed compose or `cairn sign`). Commands that sign without naming a key use it,
//! and `cairn promote` refuses an unsigned source once it is set.

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;

use super::key::{self, GpgHome, KeyInfo};

const CONFIG_GROUP: &str = "cairn";
const CONFIG_KEY: &str = "gpg-key";

/// A secret key checked usable, and the GPG home it lives in.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: KeyInfo,
    pub home: GpgHome,
}

pub use crate::store::remote::Signature;

impl Signer {
    /// Check the key `key_id` in `home` (see [`key::secret_key`]).
    pub fn new(home: GpgHome, key_id: &str) -> Result<Self> {
        let key = key::secret_key(&home, key_id)?;
        Ok(Self { key, home })
    }

    /// Add this key's signature to `commit` (a no-op when it has one already).
    pub fn sign_commit(&self, repo: &ostree::Repo, commit: &str) -> Result<()> {
        if signatures(repo, commit, Some(self))?
            .iter()
            .any(|s| s.valid && s.fingerprint == self.key.fingerprint)
        {
            return Ok(());
        }
        repo.sign_commit(
            commit,
            &self.key.fingerprint,
            self.home.dir_str(),
            gio::Cancellable::NONE,
        )
        .with_context(|| {
            format!(
                "signing commit {commit} with GPG key {} from {}",
                self.key.fingerprint,
                self.home.describe()
            )
        })
    }

    /// Sign the repo's (freshly regenerated) summary.
    pub fn sign_summary(&self, repo: &ostree::Repo) -> Result<()> {
        repo.add_gpg_signature_summary(
            &[self.key.fingerprint.as_str()],
            self.home.dir_str(),
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("signing the summary with {}", self.key.fingerprint))
    }

    /// A detached binary signature of the file `data` by this key, written to `sig`.
    pub fn sign_detached(&self, data: &std::path::Path, sig: &std::path::Path) -> Result<()> {
        self.home
            .gpg()
            .args(["--yes", "--local-user", &self.key.fingerprint, "--output"])
            .arg(sig)
            .args(["--detach-sign", "--"])
            .arg(data)
            .run()
            .with_context(|| format!("signing {} with {}", data.display(), self.key.fingerprint))?;
        Ok(())
    }

    /// Does `commit` carry a valid signature by this key?
    pub fn signed(&self, repo: &ostree::Repo, commit: &str) -> Result<bool> {
        Ok(signatures(repo, commit, Some(self))?
            .iter()
            .any(|s| s.valid && s.fingerprint == self.key.fingerprint))
    }
}

impl crate::store::SignCommit for Signer {
    fn sign_commit(&self, repo: &ostree::Repo, commit: &str) -> Result<()> {
        Signer::sign_commit(self, repo, commit)
    }
}

/// The GPG signatures on `commit`, checked against `with`'s public key when given (otherwise
/// against libostree's default keyrings, which usually makes them not valid but still names the
/// keys).
pub fn signatures(
    repo: &ostree::Repo,
    commit: &str,
    with: Option<&Signer>,
) -> Result<Vec<Signature>> {
    if !has_signatures(repo, commit)? {
        return Ok(Vec::new());
    }
    let Some(s) = with else {
        return verify(repo, commit, None);
    };
    let f = tempfile::Builder::new()
        .prefix("cairn-key-")
        .suffix(".gpg")
        .tempfile()
        .context("making a temporary keyring")?;
    key::export_public(&s.home, &s.key.fingerprint, false, f.path())?;
    verify(repo, commit, Some(f.path()))
}

/// The GPG signatures on `commit`, checked against the public keys in the keyring file `keyring`
/// (a node's `<remote>.trustedkeys.gpg`, say).
pub fn signatures_in(
    repo: &ostree::Repo,
    commit: &str,
    keyring: &std::path::Path,
) -> Result<Vec<Signature>> {
    if !has_signatures(repo, commit)? {
        return Ok(Vec::new());
    }
    verify(repo, commit, Some(keyring))
}

/// Does `commit` carry GPG signatures at all (libostree's `ostree.gpgsigs`)?
fn has_signatures(repo: &ostree::Repo, commit: &str) -> Result<bool> {
    let detached = repo
        .read_commit_detached_metadata(commit, gio::Cancellable::NONE)
        .with_context(|| format!("reading the signatures of {commit}"))?;
    Ok(detached.is_some_and(|d| {
        glib::VariantDict::new(Some(&d))
            .lookup_value("ostree.gpgsigs", None)
            .is_some()
    }))
}

/// Each signature on a signed `commit`, checked against `keyring` when given.
fn verify(
    repo: &ostree::Repo,
    commit: &str,
    keyring: Option<&std::path::Path>,
) -> Result<Vec<Signature>> {
    let result = repo
        .verify_commit_ext(
            commit,
            gio::File::NONE,
            keyring.map(gio::File::for_path).as_ref(),
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("checking the signatures of {commit}"))?;
    Ok((0..result.count_all())
        .map(|i| crate::store::remote::signature(&result, i))
        .collect())
}

/// The repo's release key, when one is recorded.
pub fn repo_key(repo: &ostree::Repo) -> Option<String> {
    repo.copy_config()
        .string(CONFIG_GROUP, CONFIG_KEY)
        .ok()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
}

/// Record `s` as the repo's release key when none is; warn when another one is.
pub fn record_key(repo: &ostree::Repo, s: &Signer) -> Result<()> {
    match repo_key(repo) {
        Some(k) if k == s.key.fingerprint => Ok(()),
        Some(k) => {
            tracing::warn!(
                "signed with {}, but this repo's release key is {k}: nodes that trust only {k} \
                 refuse it (change the release key with `ostree config --repo=… set cairn.gpg-key \
                 FINGERPRINT`)",
                s.key.fingerprint
            );
            Ok(())
        }
        None => {
            let config = repo.copy_config();
            config.set_string(CONFIG_GROUP, CONFIG_KEY, &s.key.fingerprint);
            repo.write_config(&config)
                .context("recording the release key in the repo's config")?;
            repo.reload_config(gio::Cancellable::NONE)
                .context("reloading the repo's config")?;
            tracing::info!("release key of this repo: {}", s.key.fingerprint);
            Ok(())
        }
    }
}

/// How a release command chooses its key.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SignOpts {
    /// The GPG home holding the secret key (default: $GNUPGHOME, else ~/.gnupg).
    #[arg(long, value_name = "DIR")]
    pub gpg_homedir: Option<std::path::PathBuf>,
    /// The key to sign with (default: the repo's release key, recorded by the first signed
    /// compose or `cairn sign`).
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
}

impl SignOpts {
    /// The key a release command signs with: `--key-id`, else the repo's release key; `None`
    /// when the repo has none and no key was named. Checked before anything is written.
    pub fn signer(&self, repo: &ostree::Repo) -> Result<Option<Signer>> {
        let id = match (&self.key_id, repo_key(repo)) {
            (Some(id), _) => id.clone(),
            (None, Some(k)) => k,
            (None, None) => return Ok(None),
        };
        let home = GpgHome::resolve(self.gpg_homedir.as_deref())?;
        let s = Signer::new(home, &id).with_context(|| match &self.key_id {
            Some(_) => "--key-id".to_string(),
            None => format!("the repo's release key {id} (its config's cairn.gpg-key)"),
        })?;
        Ok(Some(s))
    }

    /// Like [`SignOpts::signer`], but an error when there is no key at all.
    pub fn required(&self, repo: &ostree::Repo) -> Result<Signer> {
        match self.signer(repo)? {
            Some(s) => Ok(s),
            None => bail!(
                "no key to sign with: pass --key-id, or compose a treefile that names `gpg-key`"
            ),
        }
    }
}
