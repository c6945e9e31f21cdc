//! Who may do what. Each node has its own token, derived from the service's secret and the
//! node's id (`v1.node.<id>.<HMAC-SHA256>`), so the servers keep no list of tokens and a token
//! opens only its own node's slot; an operator's token (`v1.operator.<name>.<MAC>`) opens the
//! status and the operator's actions, and its name goes to the audit log. `cairn lock token`
//! makes both from the secret file.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The service's secret: the key every token is derived from.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Who a token says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Node(String),
    Operator(String),
}

impl Principal {
    fn kind(&self) -> &'static str {
        match self {
            Principal::Node(_) => "node",
            Principal::Operator(_) => "operator",
        }
    }

    fn name(&self) -> &str {
        match self {
            Principal::Node(n) | Principal::Operator(n) => n,
        }
    }

    /// How the audit log names it.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind(), self.name())
    }
}

impl Secret {
    /// Read the secret file (hex, one line).
    pub fn read(path: &Path) -> Result<Secret> {
        let text = fs_err::read_to_string(path).with_context(|| {
            format!(
                "the lock service's secret (make one with `cairn lock secret {}`)",
                path.display()
            )
        })?;
        let bytes = hex::decode(text.trim())
            .with_context(|| format!("{}: the secret is not one line of hex", path.display()))?;
        if bytes.len() < 16 {
            bail!(
                "{}: the secret has {} bytes, fewer than 16",
                path.display(),
                bytes.len()
            );
        }
        Ok(Secret(bytes))
    }

    /// Make a new random secret at `path` (mode 0600); an existing file is never replaced.
    pub fn create(path: &Path) -> Result<Secret> {
        let mut bytes = vec![0u8; 32];
        let mut rnd = fs_err::File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut rnd, &mut bytes).context("reading /dev/urandom")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs_err::create_dir_all(dir)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {} (it is never overwritten)", path.display()))?;
        writeln!(f, "{}", hex::encode(&bytes))?;
        f.sync_all()?;
        Ok(Secret(bytes))
    }

    fn mac(&self, who: &Principal) -> HmacSha256 {
        // Any key length is valid for HMAC: this cannot fail.
        let mut m = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(b"cairn-lock-v1\0");
        m.update(who.kind().as_bytes());
        m.update(b"\0");
        m.update(who.name().as_bytes());
        m
    }

    /// The token of `who`.
    pub fn token(&self, who: &Principal) -> String {
        let tag = hex::encode(self.mac(who).finalize().into_bytes());
        format!("v1.{}.{}.{tag}", who.kind(), who.name())
    }

    /// Who `token` is, if its MAC verifies (compared in constant time).
    pub fn verify(&self, token: &str) -> Option<Principal> {
        let rest = token.trim().strip_prefix("v1.")?;
        let (kind, rest) = rest.split_once('.')?;
        let (name, tag) = rest.rsplit_once('.')?;
        if name.is_empty() {
            return None;
        }
        let who = match kind {
            "node" => Principal::Node(name.to_string()),
            "operator" => Principal::Operator(name.to_string()),
            _ => return None,
        };
        let tag = hex::decode(tag).ok()?;
        self.mac(&who).verify_slice(&tag).ok()?;
        Some(who)
    }
}

/// The bearer token of an `Authorization` header's value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_as_itself_and_only_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let s = Secret::create(&p).unwrap();
        assert!(
            Secret::create(&p).is_err(),
            "an existing secret is never replaced"
        );
        assert_eq!(Secret::read(&p).unwrap().0, s.0);
        let node = Principal::Node("web.1".into());
        let t = s.token(&node);
        assert_eq!(s.verify(&t), Some(node));
        assert_eq!(s.verify(&t.replace("web.1", "web.2")), None);
        let op = s.token(&Principal::Operator("alice".into()));
        assert_eq!(s.verify(&op.replace("operator", "node")), None);
        let other = Secret(vec![7; 32]);
        assert_eq!(other.verify(&t), None);
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
