//! SHA-256 digests, as lowercase hex: of bytes, of a file, and of a sparse file without reading
//! its holes.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The SHA-256 of a file's content, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The SHA-256 of a file, reading only its data: holes are hashed as the zeros they are without
/// being read (reading the holes of a 4 GiB raw disk costs seconds of zeroed page cache).
pub fn sha256_sparse(path: &Path) -> Result<String> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;

    const CHUNK: usize = 1 << 20;
    let mut f = fs_err::File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let data = match lseek(f.file().as_raw_fd(), pos as i64, Whence::SeekData) {
            Ok(d) => (d as u64).min(len),
            Err(nix::errno::Errno::ENXIO) => len, // only a hole is left
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut hole = data - pos;
        while hole > 0 {
            let n = (hole as usize).min(CHUNK);
            h.update(&zeros[..n]);
            hole -= n as u64;
        }
        if data == len {
            break;
        }
        let end = lseek(f.file().as_raw_fd(), data as i64, Whence::SeekHole)
            .with_context(|| format!("reading {}", path.display()))? as u64;
        f.seek(SeekFrom::Start(data))?;
        let mut left = end.min(len) - data;
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            f.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        pos = end.min(len);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_agree() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs_err::write(&p, b"").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), empty);
        assert_eq!(sha256_sparse(&p).unwrap(), empty);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs_err::write(&p, &data).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(&data));
        assert_eq!(sha256_sparse(&p).unwrap(), sha256_hex(&data));
        let err = sha256_file(&d.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }
}
