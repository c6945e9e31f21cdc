//! GPG release keys: `cairn key new`, and finding a usable secret key before anything is signed.
//!
//! Debian 12's libostree is built without libsodium, so its ed25519 `ostree sign` does not work;
//! GPG signatures made with an EdDSA (ed25519) OpenPGP key do, on the build host and on nodes. The
//! `gpg` program makes keys and answers questions about them; libostree signs and verifies
//! through GPGME with the same GPG home directory.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::base::cmd::Cmd;

/// Where GPG keeps the keys: `--gpg-homedir`, else `$GNUPGHOME`, else gpg's own default
/// (`~/.gnupg`).
#[derive(Debug, Clone)]
pub struct GpgHome(Option<PathBuf>);

impl GpgHome {
    /// The home a command uses, from its `--gpg-homedir` flag or the environment.
    pub fn resolve(flag: Option<&Path>) -> Result<Self> {
        let dir = flag.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("GNUPGHOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match dir {
            Some(d) => {
                let abs = std::path::absolute(&d)
                    .with_context(|| format!("GPG home {}: no absolute path", d.display()))?;
                Ok(Self(Some(abs)))
            }
            None => Ok(Self(None)),
        }
    }

    /// The directory, when one was named (`None`: gpg's default).
    pub fn dir(&self) -> Option<&Path> {
        self.0.as_deref()
    }

    /// For libostree's `homedir` arguments.
    pub fn dir_str(&self) -> Option<&str> {
        self.0.as_deref().and_then(Path::to_str)
    }

    /// The home as messages name it.
    pub fn describe(&self) -> String {
        match &self.0 {
            Some(p) => p.display().to_string(),
            None => "~/.gnupg (gpg's default; set --gpg-homedir or GNUPGHOME)".into(),
        }
    }

    /// `gpg` in batch mode on this home.
    pub(crate) fn gpg(&self) -> Cmd {
        let c = Cmd::new("gpg").args(["--batch", "--no-tty"]);
        match &self.0 {
            Some(p) => c.arg("--homedir").arg(p),
            None => c,
        }
    }

    fn check_exists(&self) -> Result<()> {
        match &self.0 {
            Some(p) if !p.is_dir() => bail!(
                "GPG home {} does not exist (make a key with `cairn key new {}`)",
                p.display(),
                p.display()
            ),
            _ => Ok(()),
        }
    }
}

/// A secret key that can sign now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// The primary key's fingerprint (40 hex digits): what cairn signs with and records.
    pub fingerprint: String,
    /// The long key id (the fingerprint's last 16 digits).
    pub key_id: String,
    pub user_id: String,
    /// Expiry, seconds since the epoch; `None`: never.
    pub expires: Option<i64>,
}

/// One `sec` record of `gpg --with-colons` and the lines that follow it.
#[derive(Debug, Default)]
struct ColonKey {
    /// A `sec` record (a secret key), not a `pub` one.
    secret: bool,
    validity: String,
    expires: Option<i64>,
    caps: String,
    fingerprint: String,
    user_id: String,
}

fn parse_colons(out: &str) -> Vec<ColonKey> {
    let mut keys: Vec<ColonKey> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        match field(0) {
            "sec" | "pub" => keys.push(ColonKey {
                secret: field(0) == "sec",
                validity: field(1).to_string(),
                expires: field(6).parse().ok().filter(|e| *e > 0),
                caps: field(11).to_string(),
                ..Default::default()
            }),
            "fpr" => {
                if let Some(k) = keys.last_mut().filter(|k| k.fingerprint.is_empty()) {
                    k.fingerprint = field(9).to_string();
                }
            }
            "uid" => {
                if let Some(k) = keys.last_mut().filter(|k| k.user_id.is_empty()) {
                    k.user_id = field(9).to_string();
                }
            }
            _ => {}
        }
    }
    keys
}

/// The one secret key `id` (a fingerprint, key id or user id) names in `home`, checked to be
/// present, unexpired, unrevoked and able to sign. Every error names the key and the home.
pub fn secret_key(home: &GpgHome, id: &str) -> Result<KeyInfo> {
    if id.trim().is_empty() {
        bail!("the GPG key id is empty");
    }
    home.check_exists()?;
    let (status, out) = home
        .gpg()
        .args([
            "--with-colons",
            "--fixed-list-mode",
            "--list-secret-keys",
            "--",
        ])
        .arg(id)
        .run_status()?;
    let keys = parse_colons(&out.stdout);
    if !status.success() || keys.is_empty() {
        bail!("no secret GPG key {id:?} in {}", home.describe());
    }
    if keys.len() > 1 {
        let fprs: Vec<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
        bail!(
            "GPG key id {id:?} matches {} secret keys in {} ({}): give a fingerprint",
            keys.len(),
            home.describe(),
            fprs.join(", ")
        );
    }
    let k = &keys[0];
    let now = chrono::Utc::now().timestamp();
    if k.validity == "e" || k.expires.is_some_and(|e| e <= now) {
        bail!(
            "GPG key {} ({}) in {} expired on {}",
            k.fingerprint,
            k.user_id,
            home.describe(),
            k.expires
                .map(crate::base::time::rfc3339)
                .unwrap_or_else(|| "an unknown date".into())
        );
    }
    if k.validity == "r" {
        bail!(
            "GPG key {} ({}) in {} is revoked",
            k.fingerprint,
            k.user_id,
            home.describe()
        );
    }
    if !k.caps.contains('S') {
        bail!(
            "GPG key {} ({}) in {} has no usable signing key",
            k.fingerprint,
            k.user_id,
            home.describe()
        );
    }
    if k.fingerprint.len() < 16 {
        bail!("gpg printed no fingerprint for key {id:?}");
    }
    if let Some(e) = k.expires.filter(|e| *e - now < 30 * 86400) {
        tracing::warn!(
            "GPG key {} expires on {}: make its successor now",
            k.fingerprint,
            crate::base::time::rfc3339(e)
        );
    }
    Ok(KeyInfo {
        key_id: k.fingerprint[k.fingerprint.len() - 16..].to_string(),
        fingerprint: k.fingerprint.clone(),
        user_id: k.user_id.clone(),
        expires: k.expires,
    })
}

/// The public key `fingerprint` from `home`, in a file: ASCII-armored (for people and image
/// manifests), or binary (libostree reads a keyring *file* only in the binary form).
pub fn export_public(home: &GpgHome, fingerprint: &str, armor: bool, dest: &Path) -> Result<()> {
    let cmd = if armor {
        home.gpg().arg("--armor")
    } else {
        home.gpg()
    };
    cmd.arg("--output")
        .arg(dest)
        .args(["--yes", "--export", "--"])
        .arg(fingerprint)
        .run()
        .with_context(|| format!("exporting public key {fingerprint}"))?;
    if std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!(
            "gpg exported nothing for key {fingerprint} from {}",
            home.describe()
        );
    }
    Ok(())
}

/// The fingerprints of the primary keys in a public key file: an error naming the file when it
/// holds no OpenPGP public key (gpg's own words follow) or holds a secret key.
pub fn fingerprints_in(file: &Path) -> Result<Vec<String>> {
    let data = fs_err::read(file)?;
    // A throwaway home: showing a file's keys must not create or touch anyone's ~/.gnupg.
    let tmp = tempfile::Builder::new()
        .prefix("cairn-gpg-")
        .tempdir()
        .context("making a temporary GPG home")?;
    let (status, out) = GpgHome(Some(tmp.path().to_path_buf()))
        .gpg()
        .args(["--with-colons", "--show-keys"])
        .stdin_bytes(data)
        .run_status()
        .with_context(|| format!("reading the public key {}", file.display()))?;
    let keys = parse_colons(&out.stdout);
    if keys.iter().any(|k| k.secret) {
        bail!(
            "{} holds a secret key: name its public key (`cairn key new` writes it as \
             <KEYID>.asc beside the key), and keep the secret one out of image inputs",
            file.display()
        );
    }
    let fprs: Vec<String> = keys
        .into_iter()
        .map(|k| k.fingerprint)
        .filter(|f| !f.is_empty())
        .collect();
    if !status.success() || fprs.is_empty() {
        let why = out
            .stderr
            .lines()
            .map(|l| l.trim_start_matches("gpg: ").trim())
            .find(|l| !l.is_empty() && !l.contains("keybox") && !l.contains("trustdb"))
            .unwrap_or("no key found");
        bail!("{}: no OpenPGP public key in it ({why})", file.display());
    }
    Ok(fprs)
}

/// A key made by [`new_key`].
#[derive(Debug, Serialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: KeyInfo,
    /// The GPG home holding the secret key.
    pub homedir: PathBuf,
    /// The ASCII-armored public key: what image manifests name (`remote-gpg-key-file`).
    pub public_key: PathBuf,
}

/// Make an ed25519 (EdDSA) signing key without a passphrase in the GPG home `dir` (created when
/// missing), and write its public key beside it as `<KEYID>.asc`.
pub fn new_key(dir: &Path, user_id: &str, expire: &str) -> Result<NewKey> {
    use std::os::unix::fs::PermissionsExt;
    if user_id.trim().is_empty() || user_id.contains(':') {
        bail!("key name {user_id:?}: give a non-empty name without `:`");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // gpg refuses to trust a home others can read.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let home = GpgHome::resolve(Some(dir))?;
    let out = home
        .gpg()
        .args(["--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--status-fd", "1", "--quick-generate-key", "--"])
        .arg(user_id)
        .args(["ed25519", "sign", expire])
        .run()
        .with_context(|| format!("making a GPG key in {}", dir.display()))?;
    let fpr = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("[GNUPG:] KEY_CREATED P "))
        .map(|f| f.trim().to_string())
        .ok_or_else(|| anyhow!("gpg made no key (no KEY_CREATED status)"))?;
    let key = secret_key(&home, &fpr)?;
    let public_key = home
        .dir()
        .unwrap_or(dir)
        .join(format!("{}.asc", key.key_id));
    export_public(&home, &fpr, true, &public_key)?;
    Ok(NewKey {
        key,
        homedir: home.dir().unwrap_or(dir).to_path_buf(),
        public_key,
    })
}

/// The release key in the GPG home `dir`, made there on first use (an image manifest's
/// `release-key`): the one secret key the home holds, and its public key `<KEYID>.asc` beside
/// it (written when missing). A home with more than one secret key is an error naming them.
pub fn release_key(dir: &Path) -> Result<NewKey> {
    let home = GpgHome::resolve(Some(dir))?;
    let listed = if dir.is_dir() {
        let out = home
            .gpg()
            .args(["--with-colons", "--fixed-list-mode", "--list-secret-keys"])
            .run_status()
            .with_context(|| format!("listing the secret keys in {}", dir.display()))?
            .1;
        parse_colons(&out.stdout)
    } else {
        Vec::new()
    };
    let fpr = match listed.as_slice() {
        [] => {
            let k = new_key(dir, "cairn release key (made on first use)", "2y")?;
            tracing::info!(
                "made the release key {} in {} (its public key: {})",
                k.key.fingerprint,
                k.homedir.display(),
                k.public_key.display()
            );
            return Ok(k);
        }
        [one] => one.fingerprint.clone(),
        many => bail!(
            "the release key's GPG home {} holds {} secret keys ({}): keep one there",
            dir.display(),
            many.len(),
            many.iter()
                .map(|k| k.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let key = secret_key(&home, &fpr)?;
    let public_key = home
        .dir()
        .unwrap_or(dir)
        .join(format!("{}.asc", key.key_id));
    if !public_key.is_file() {
        export_public(&home, &fpr, true, &public_key)?;
    }
    Ok(NewKey {
        key,
        homedir: home.dir().unwrap_or(dir).to_path_buf(),
        public_key,
    })
}

/// What `cairn key new` prints after the key: where it is, how to use it, how to keep a real one.
pub fn advice(k: &NewKey) -> String {
    let home = k.homedir.display();
    let fpr = &k.key.fingerprint;
    format!(
        "made GPG key {fpr} ({}), ed25519, no passphrase{}
public key: {}
secret key: in the GPG home {home}

Use it:
  treefile:        gpg-key = \"{fpr}\"
  image manifest:  remote-gpg-key-file = \"{}\"
  commands:        GNUPGHOME={home} cairn compose …   (or --gpg-homedir {home})

This key has no passphrase: right for CI and tests, not for real releases. Keep a real one
offline: make it on a machine that never joins a network, give it a passphrase
(gpg --homedir {home} --passwd {fpr}), add a signing subkey for the build host
(gpg --homedir {home} --quick-add-key {fpr} ed25519 sign 1y), copy only that subkey across
(gpg --homedir {home} --armor --export-secret-subkeys {fpr}), keep the primary key and its
revocation certificate ({home}/openpgp-revocs.d/) on offline media, and export the public key
again after adding the subkey (gpg --homedir {home} --armor --export {fpr}) for image manifests.",
        k.key.user_id,
        k.key
            .expires
            .map(|e| format!(", expires {}", crate::base::time::rfc3339(e)))
            .unwrap_or_default(),
        k.public_key.display(),
        k.public_key.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_listing_is_parsed() {
        let out = "sec:u:255:22:8369EF1CEFE20324:1795899729:1858971729::u:::scSC:::+::ed25519:::0:
fpr:::::::::079AC32839969EB66E473F188369EF1CEFE20324:
grp:::::::::77F64DDE594A24A13253F27B6E7D295D137AA9A3:
uid:u::::1795899729::FBB8D952885E2E3A55C0012FAA3202BB00F8E49C::cairn test <t@x>::::::::::0:
sec:e:255:22:EF2E1CB96EEFA524:1577836800:1577923200::u:::sc:::+::ed25519:::0:
fpr:::::::::D8E6ED97EA348F5D914DB50FEF2E1CB96EEFA524:
uid:e::::1577836800::9A78AF1526D252225FC337DCE779716E21D6CE9A::old key::::::::::0:
";
        let k = parse_colons(out);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].fingerprint, "079AC32839969EB66E473F188369EF1CEFE20324");
        assert_eq!(k[0].user_id, "cairn test <t@x>");
        assert_eq!(k[0].expires, Some(1858971729));
        assert!(k[0].caps.contains('S'));
        assert_eq!(k[1].validity, "e");
        assert!(!k[1].caps.contains('S'));
    }

    #[test]
    fn a_missing_home_is_an_error_and_is_not_created() {
        let d = tempfile::tempdir().unwrap();
        let home = GpgHome::resolve(Some(&d.path().join("none"))).unwrap();
        let e = secret_key(&home, "ABCD").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!d.path().join("none").exists());
    }
}
