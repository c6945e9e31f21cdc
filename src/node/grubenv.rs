//! GRUB's environment block, where GRUB counts a trial down (`cairn_tries`), rewritten in place.
//!
//! GRUB reads the file through its inode and does not replay the ext4 journal, and its own
//! `save_env` writes the block where it is. So the node writes the same way: `open(O_RDWR)` on
//! the file made at image build time (never created, truncated, renamed or recreated here),
//! one `pwrite` of the whole 1024-byte block at offset 0, then `fsync`. `grub-editenv` instead
//! truncates and rewrites the file, which moves its data block on every call.
//!
//! The variables sit in the first 512-byte sector; the second is `#` padding that never
//! changes, so a torn write cannot mix two states.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The first line of every block.
const HEADER: &str = "# GRUB Environment Block\n";
/// The size of the block, GRUB's and `grub-editenv`'s.
pub const SIZE: usize = 1024;
/// The variable GRUB's trial countdown reads and writes.
pub const TRIES: &str = "cairn_tries";

/// The variables of a block, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(pub Vec<(String, String)>);

/// A variable name or value GRUB's `load_env` and the countdown handle: no newline, no `=`,
/// nothing a shell or GRUB would read twice.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

impl Env {
    /// Read a block: 1024 bytes, GRUB's header, `name=value` lines, `#` padding.
    pub fn parse(block: &[u8]) -> Result<Self> {
        if block.len() != SIZE {
            bail!("{} bytes, not {SIZE}", block.len());
        }
        let text = std::str::from_utf8(block).context("not UTF-8")?;
        let body = text
            .strip_prefix(HEADER)
            .context("no GRUB environment block header")?;
        let mut vars = Vec::new();
        for line in body.split('\n') {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("not a variable: {line:?}"))?;
            vars.push((k.to_string(), v.to_string()));
        }
        Ok(Env(vars))
    }

    /// The block for these variables, padded with `#` to 1024 bytes.
    pub fn to_block(&self) -> Result<Vec<u8>> {
        let mut s = String::from(HEADER);
        for (k, v) in &self.0 {
            if k.is_empty() || !plain(k) || !plain(v) {
                bail!("{k}={v}: GRUB's environment takes only [A-Za-z0-9_.:-] here");
            }
            s.push_str(&format!("{k}={v}\n"));
        }
        // Within the first sector: the second one is padding that a torn write leaves alone.
        if s.len() > SIZE / 2 {
            bail!("the variables do not fit in the first 512 bytes of the block");
        }
        let mut b = s.into_bytes();
        b.resize(SIZE, b'#');
        Ok(b)
    }

    /// A variable's value, if set (an empty value counts as unset, as in GRUB's `[ -n ]`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Set (`Some`) or remove (`None`) a variable.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        self.0.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.0.push((name.to_string(), v.to_string()));
        }
    }
}

/// An empty block, as `cairn image` writes it at build time.
pub fn empty_block() -> Vec<u8> {
    let mut b = HEADER.as_bytes().to_vec();
    b.resize(SIZE, b'#');
    b
}

/// Read the block at `path`.
pub fn read(path: &Path) -> Result<Env> {
    let b = fs_err::read(path)?;
    Env::parse(&b).with_context(|| format!("{}: not a GRUB environment block", path.display()))
}

/// Set or remove one variable in the block at `path`, in place: the file must exist (it is made
/// at image build time) and keeps its inode and data block.
pub fn update(path: &Path, name: &str, value: Option<&str>) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} (GRUB's environment block, made when the image was built; it is \
                 never created on the node)",
                path.display()
            )
        })?;
    // One byte more than a block: a longer file is not GRUB's block.
    let mut block = vec![0u8; SIZE + 1];
    let mut n = 0;
    while n < block.len() {
        let got = f
            .read_at(&mut block[n..], n as u64)
            .with_context(|| format!("reading {}", path.display()))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    block.truncate(n);
    let mut env = Env::parse(&block)
        .with_context(|| format!("{}: not a GRUB environment block", path.display()))?;
    env.set(name, value);
    f.write_all_at(&env.to_block()?, 0)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn block_file(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("grubenv");
        fs_err::write(&p, empty_block()).unwrap();
        p
    }

    #[test]
    fn the_layout_is_grub_editenvs() {
        let mut e = Env::default();
        e.set(TRIES, Some("3"));
        let b = e.to_block().unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(b"# GRUB Environment Block\ncairn_tries=3\n#"));
        assert!(b[SIZE / 2..].iter().all(|c| *c == b'#'));
        assert_eq!(Env::parse(&b).unwrap(), e);
        // GRUB's own tool reads it (where GRUB's tools are installed).
        let d = tempfile::tempdir().unwrap();
        fs_err::write(d.path().join("env"), &b).unwrap();
        if let Ok(out) = crate::base::cmd::Cmd::new("grub-editenv")
            .arg(d.path().join("env"))
            .arg("list")
            .run()
        {
            assert_eq!(out.stdout, "cairn_tries=3\n");
        }
    }

    #[test]
    fn bad_blocks_and_values_are_refused() {
        assert!(Env::parse(b"short").is_err());
        let mut b = empty_block();
        b[0] = b'X';
        assert!(Env::parse(&b).is_err());
        let mut b = empty_block();
        b[HEADER.len()..HEADER.len() + 6].copy_from_slice(b"novar\n");
        assert!(Env::parse(&b).is_err());
        for (k, v) in [("a", "x\ny"), ("a=b", "1"), ("", "1"), ("a", "$(x)")] {
            assert!(
                Env(vec![(k.into(), v.into())]).to_block().is_err(),
                "{k}={v}"
            );
        }
        let long: Vec<(String, String)> =
            (0..40).map(|i| (format!("v{i}"), "x".repeat(9))).collect();
        assert!(Env(long).to_block().is_err(), "past the first sector");
    }

    #[test]
    fn get_treats_empty_as_unset() {
        let mut e = Env::default();
        assert_eq!(e.get(TRIES), None);
        e.set(TRIES, Some(""));
        assert_eq!(e.get(TRIES), None);
        e.set(TRIES, Some("0"));
        assert_eq!(e.get(TRIES), Some("0"));
        e.set(TRIES, None);
        assert!(e.0.is_empty());
    }

    #[test]
    fn update_writes_in_place_and_keeps_other_variables() {
        let d = tempfile::tempdir().unwrap();
        let p = block_file(d.path());
        let ino = fs_err::metadata(&p).unwrap().ino();
        update(&p, "other", Some("x")).unwrap();
        update(&p, TRIES, Some("2")).unwrap();
        assert_eq!(read(&p).unwrap().get(TRIES), Some("2"));
        update(&p, TRIES, Some("1")).unwrap();
        update(&p, TRIES, None).unwrap();
        let env = read(&p).unwrap();
        assert_eq!(env.get(TRIES), None);
        assert_eq!(env.get("other"), Some("x"));
        let m = fs_err::metadata(&p).unwrap();
        assert_eq!(m.ino(), ino, "the same file, never replaced");
        assert_eq!(m.len(), SIZE as u64);
    }

    #[test]
    fn update_never_creates_or_repairs_the_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("grubenv");
        let e = update(&missing, TRIES, Some("1")).unwrap_err();
        assert!(format!("{e:#}").contains("never created"), "{e:#}");
        assert!(!missing.exists());
        // Too long, or not a block: left exactly as it was.
        let p = d.path().join("long");
        let mut b = empty_block();
        b.push(b'#');
        fs_err::write(&p, &b).unwrap();
        assert!(update(&p, TRIES, Some("1")).is_err());
        assert_eq!(fs_err::read(&p).unwrap(), b);
        fs_err::write(&p, b"garbage").unwrap();
        assert!(update(&p, TRIES, Some("1")).is_err());
        assert_eq!(fs_err::read(&p).unwrap(), b"garbage");
    }
}
