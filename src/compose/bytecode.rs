//! Python bytecode that an immutable `/usr` never makes Python check again.
//!
//! Debian compiles every package's modules when it installs them. Under `SOURCE_DATE_EPOCH` (as
//! cairn installs) the `.pyc` files are *checked-hash* ones: each import reads the source and
//! hashes it again. Timestamp ones would be worse here: a deployment's files all have mtime 0,
//! so Python would find every one stale and compile the source in memory at each start.
//!
//! In a commit neither can change without the other: a new source comes with a new deployment
//! and its own bytecode. So the compose checks each `.pyc` against the source beside it (its
//! hash, or its mtime and size) and marks those that match *unchecked-hash*, as
//! `python3 -m compileall --invalidation-mode unchecked-hash` would write them. Under emulation
//! that took about 0.4 s off each start of cloud-init. A `.pyc` that does not match its source
//! is left as it is (Python goes on ignoring it).

use std::hash::Hasher;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cap_std::fs::Dir;
use cap_std_ext::dirext::{CapStdExtDirExt, WalkConfiguration};
use siphasher::sip::SipHasher13;

/// PEP 552: bit 0 of the flags word says the header carries a source hash, bit 1 that Python
/// must check it against the source.
const HASH_BASED: u32 = 0b01;
const CHECK_SOURCE: u32 = 0b10;

/// What [`seal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// `.pyc` files now unchecked-hash.
    pub sealed: usize,
    /// Already unchecked-hash.
    pub already: usize,
    /// Left alone: their source is missing or differs.
    pub stale: usize,
}

/// The hash Python keeps of a source (`importlib.util.source_hash`): SipHash-1-3 keyed by the
/// magic number, little-endian.
fn source_hash(magic: [u8; 4], source: &[u8]) -> [u8; 8] {
    let key = u64::from(u32::from_le_bytes(magic));
    let mut h = SipHasher13::new_with_keys(key, 0);
    h.write(source);
    h.finish().to_le_bytes()
}

/// The header of an unchecked-hash `.pyc` for `source`, if `header` (the first 16 bytes of a
/// `.pyc`) was made from it: `None` when it is stale or already unchecked.
fn sealed_header(header: &[u8; 16], source: &[u8], source_mtime: i64) -> Option<[u8; 16]> {
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let magic = [header[0], header[1], header[2], header[3]];
    let flags = word(4);
    let hash = source_hash(magic, source);
    let matches = if flags == HASH_BASED | CHECK_SOURCE {
        header[8..16] == hash
    } else if flags == 0 {
        // Python compares the low 32 bits of the mtime and of the size.
        i64::from(word(8)) == source_mtime & 0xffff_ffff
            && u64::from(word(12)) == source.len() as u64 & 0xffff_ffff
    } else {
        false
    };
    if !matches {
        return None;
    }
    let mut out = *header;
    out[4..8].copy_from_slice(&HASH_BASED.to_le_bytes());
    out[8..16].copy_from_slice(&hash);
    Some(out)
}

/// The source of `dir/__pycache__/name.TAG[.opt-N].pyc`: `dir/name.py`.
fn source_of(pyc: &Path) -> Option<PathBuf> {
    let cache = pyc.parent()?;
    if cache.file_name()? != "__pycache__" {
        return None;
    }
    let name = pyc.file_name()?.to_str()?;
    let module = name.split('.').next()?;
    Some(cache.parent()?.join(format!("{module}.py")))
}

/// Mark every `.pyc` under `usr/` that matches its source unchecked-hash. A file is replaced
/// (written beside it, then renamed over it), never changed in place: a layer's tree may share
/// its files with the repo's objects.
pub fn seal(root: &Dir) -> Result<Sealed> {
    let mut out = Sealed::default();
    let Some(usr) = root.open_dir_optional("usr")? else {
        return Ok(out);
    };
    let config = WalkConfiguration::default().path_base(Path::new("usr"));
    usr.walk(&config, |c| -> Result<ControlFlow<()>> {
        if c.file_type.is_file() && c.path.extension().is_some_and(|x| x == "pyc") {
            seal_one(root, c.path, &mut out)
                .with_context(|| format!("sealing the bytecode /{}", c.path.display()))?;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

fn seal_one(root: &Dir, pyc: &Path, out: &mut Sealed) -> Result<()> {
    let mut body = root.read(pyc)?;
    let Some(header) = body.first_chunk::<16>() else {
        out.stale += 1;
        return Ok(());
    };
    if u32::from_le_bytes([header[4], header[5], header[6], header[7]]) == HASH_BASED {
        out.already += 1;
        return Ok(());
    }
    let source = source_of(pyc).and_then(|src| {
        let meta = root.symlink_metadata(&src).ok().filter(|m| m.is_file())?;
        Some((src, meta))
    });
    let Some((src, meta)) = source else {
        out.stale += 1;
        return Ok(());
    };
    let mtime = cap_std::fs::MetadataExt::mtime(&meta);
    let Some(sealed) = sealed_header(header, &root.read(&src)?, mtime) else {
        out.stale += 1;
        return Ok(());
    };
    body[..16].copy_from_slice(&sealed);
    let perms = root.symlink_metadata(pyc)?.permissions();
    root.atomic_write_with_perms(pyc, &body, perms)?;
    out.sealed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    /// `print("cairn")\n` and the first 16 bytes of the checked-hash `.pyc` CPython 3.11 makes
    /// of it (`py_compile.compile(…, invalidation_mode=CHECKED_HASH)`).
    const SOURCE: &[u8] = b"print(\"cairn\")\n";
    const CHECKED: [u8; 16] = [
        0xa7, 0x0d, 0x0d, 0x0a, 0x03, 0, 0, 0, 0xf7, 0xfe, 0x1a, 0x7f, 0xec, 0x6c, 0x77, 0xd1,
    ];

    #[test]
    fn hashes_a_source_as_python_does() {
        let magic = [CHECKED[0], CHECKED[1], CHECKED[2], CHECKED[3]];
        assert_eq!(source_hash(magic, SOURCE)[..], CHECKED[8..16]);
    }

    #[test]
    fn seals_what_matches_and_leaves_the_rest() {
        let sealed = sealed_header(&CHECKED, SOURCE, 0).unwrap();
        assert_eq!(sealed[4..8], [1, 0, 0, 0]);
        assert_eq!(sealed[8..16], CHECKED[8..16]);
        assert_eq!(sealed_header(&CHECKED, b"print(\"other\")\n", 0), None);
        // A timestamp .pyc: mtime 1000, size 15.
        let mut ts = CHECKED;
        ts[4..8].copy_from_slice(&0u32.to_le_bytes());
        ts[8..12].copy_from_slice(&1000u32.to_le_bytes());
        ts[12..16].copy_from_slice(&(SOURCE.len() as u32).to_le_bytes());
        assert_eq!(sealed_header(&ts, SOURCE, 1000), Some(sealed));
        assert_eq!(sealed_header(&ts, SOURCE, 0), None);
        assert_eq!(sealed_header(&sealed, SOURCE, 0), None);
    }

    #[test]
    fn seals_a_tree_without_touching_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("usr/lib/python3/dist-packages/__pycache__");
        fs_err::create_dir_all(&cache).unwrap();
        fs_err::write(cache.parent().unwrap().join("m.py"), SOURCE).unwrap();
        let mut pyc = CHECKED.to_vec();
        pyc.extend_from_slice(b"code");
        fs_err::write(cache.join("m.cpython-311.pyc"), &pyc).unwrap();
        // A hardlink stands for the repo object a layer's checkout shares the file with.
        fs_err::hard_link(cache.join("m.cpython-311.pyc"), d.path().join("object")).unwrap();
        fs_err::write(cache.join("gone.cpython-311.pyc"), &pyc).unwrap();
        let root = Dir::open_ambient_dir(d.path(), ambient_authority()).unwrap();
        let done = seal(&root).unwrap();
        assert_eq!(
            done,
            Sealed {
                sealed: 1,
                already: 0,
                stale: 1
            }
        );
        let now = fs_err::read(cache.join("m.cpython-311.pyc")).unwrap();
        assert_eq!(now[4..8], [1, 0, 0, 0]);
        assert_eq!(&now[16..], b"code");
        assert_eq!(fs_err::read(d.path().join("object")).unwrap(), pyc);
        assert_eq!(seal(&root).unwrap().already, 1);
    }
}
