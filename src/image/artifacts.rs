//! Image artifacts: a raw disk converted to the formats clouds take, each with its SHA-256, and
//! stream metadata in CoreOS's shape that an auto-scaling group's pipeline reads to find the
//! newest image.
//!
//! Every artifact is written under a temporary name in the output directory and renamed into
//! place when complete, so an interrupted build never leaves a partial file under a final name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::cmd::Cmd;
use crate::base::digest::sha256_sparse;
use crate::image::manifest::{Format, Qcow2Compression};

/// One finished artifact.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Artifact {
    /// The stream-metadata platform: qemu, vmware, azure, gcp, metal.
    pub platform: String,
    /// The stream-metadata format: raw, qcow2, vmdk, vhd, tar.gz.
    pub format: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Where each format goes in stream metadata, and its file suffix.
pub fn platform_of(f: Format) -> (&'static str, &'static str, &'static str) {
    match f {
        Format::Raw => ("metal", "raw", "raw"),
        Format::Qcow2 => ("qemu", "qcow2", "qcow2"),
        Format::Vmdk => ("vmware", "vmdk", "vmdk"),
        Format::Vhd => ("azure", "vhd", "vhd"),
        Format::Gce => ("gcp", "tar.gz", "gce.tar.gz"),
    }
}

/// A file being written under a temporary name; renamed to its final name by [`Pending::done`],
/// removed if dropped first.
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Pending {
    fn new(dest: &Path) -> Self {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            tmp: dest.with_file_name(format!(".{name}.partial")),
            dest: dest.to_path_buf(),
            done: false,
        }
    }

    fn done(mut self) -> Result<PathBuf> {
        fs_err::rename(&self.tmp, &self.dest)
            .with_context(|| format!("moving {} into place", self.dest.display()))?;
        self.done = true;
        Ok(self.dest.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs_err::remove_file(&self.tmp);
        }
    }
}

/// Convert `raw` into `format` at `dest` (atomically) and describe the result. The same raw disk
/// gives the same bytes: qemu-img writes its clusters in order (no `-W`).
pub fn convert(
    raw: &Path,
    format: Format,
    dest: &Path,
    qcow2: Qcow2Compression,
) -> Result<Artifact> {
    let p = Pending::new(dest);
    let qemu_img = |args: &[&str]| -> Result<()> {
        Cmd::new("qemu-img")
            .args(["convert", "-f", "raw"])
            .args(args)
            .arg(raw)
            .arg(&p.tmp)
            .run()
            .with_context(|| format!("converting {} to {}", raw.display(), dest.display()))?;
        Ok(())
    };
    match format {
        // A second link when the output is on the same filesystem: nothing to copy.
        Format::Raw => link_or_copy(raw, &p.tmp)?,
        Format::Qcow2 => match qcow2 {
            Qcow2Compression::Zstd => {
                qemu_img(&["-c", "-O", "qcow2", "-o", "compression_type=zstd"])?
            }
            Qcow2Compression::Zlib => qemu_img(&["-c", "-O", "qcow2"])?,
            Qcow2Compression::None => qemu_img(&["-O", "qcow2"])?,
        },
        Format::Vmdk => qemu_img(&["-O", "vmdk", "-o", "subformat=streamOptimized"])?,
        // Azure takes fixed VHDs whose virtual size is a whole number of MiB; force_size keeps
        // qemu-img from rounding it to CHS geometry.
        Format::Vhd => qemu_img(&["-O", "vpc", "-o", "subformat=fixed,force_size=on"])?,
        Format::Gce => {
            // GCE wants a tarball holding exactly `disk.raw`, sparse, gzip-compressed.
            let dir = tempfile::tempdir_in(dest.parent().unwrap_or(Path::new(".")))?;
            let inner = dir.path().join("disk.raw");
            link_or_copy(raw, &inner)?;
            Cmd::new("tar")
                .args([
                    "--format=oldgnu",
                    "-S",
                    "--owner=0",
                    "--group=0",
                    "--mtime=@0",
                    "-czf",
                ])
                .arg(&p.tmp)
                .arg("-C")
                .arg(dir.path())
                .arg("disk.raw")
                .run()
                .context("packing the GCE tarball")?;
        }
    }
    let sha256 = sha256_sparse(&p.tmp)?;
    let size = fs_err::metadata(&p.tmp)?.len();
    let path = p.done()?;
    let (platform, fmt, _) = platform_of(format);
    Ok(Artifact {
        platform: platform.into(),
        format: fmt.into(),
        path,
        sha256,
        size,
    })
}

/// `dest` as a hard link to `src`, or a sparse copy where a link cannot be made.
fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    if fs_err::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    Cmd::new("cp")
        .args(["--sparse=always", "--"])
        .arg(src)
        .arg(dest)
        .run()?;
    Ok(())
}

/// What a stream-metadata document says about one build.
pub struct Release<'a> {
    pub stream: &'a str,
    pub version: &'a str,
    pub commit: &'a str,
    pub ref_: &'a str,
    /// Seconds since the epoch (the commit's timestamp).
    pub timestamp: i64,
    pub artifacts: &'a [Artifact],
}

/// Stream metadata in CoreOS's shape:
/// `architectures.<arch>.artifacts.<platform>.formats.<format>.disk`.
pub fn stream_metadata(r: &Release, arch: &str) -> serde_json::Value {
    let mut platforms: BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    for a in r.artifacts {
        let location = a
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        platforms.entry(a.platform.clone()).or_default().insert(
            a.format.clone(),
            serde_json::json!({ "disk": { "location": location, "sha256": a.sha256, "size": a.size } }),
        );
    }
    let artifacts: serde_json::Map<String, serde_json::Value> = platforms
        .into_iter()
        .map(|(p, formats)| {
            (
                p,
                serde_json::json!({ "release": r.version, "formats": formats }),
            )
        })
        .collect();
    let updated = crate::base::time::rfc3339(r.timestamp);
    serde_json::json!({
        "stream": r.stream,
        "metadata": { "last-modified": updated },
        "architectures": {
            arch: {
                "artifacts": artifacts,
                "commit": r.commit,
                "ref": r.ref_,
                "version": r.version,
            }
        }
    })
}

/// One image of a stream, as its stream metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamImage {
    pub path: PathBuf,
    pub sha256: String,
    pub version: String,
    pub commit: String,
    pub ref_: String,
}

/// The newest image of stream `name` in `dir` (its `NAME.stream.json`), in `platform` and
/// `format` (`qemu`, `qcow2`), checked against the digest the metadata gives.
pub fn newest_image(dir: &Path, name: &str, platform: &str, format: &str) -> Result<StreamImage> {
    let file = dir.join(format!("{name}.stream.json"));
    let doc: serde_json::Value = serde_json::from_slice(
        &fs_err::read(&file).context("reading the stream metadata (build the image first)")?,
    )
    .with_context(|| format!("{}: not JSON", file.display()))?;
    let arch = &doc["architectures"][std::env::consts::ARCH];
    let disk = &arch["artifacts"][platform]["formats"][format]["disk"];
    let (Some(location), Some(sha256)) = (disk["location"].as_str(), disk["sha256"].as_str())
    else {
        anyhow::bail!(
            "{}: no {platform} {format} image for {}",
            file.display(),
            std::env::consts::ARCH
        );
    };
    let path = dir.join(location);
    let actual = crate::base::digest::sha256_sparse(&path)?;
    if actual != sha256 {
        anyhow::bail!(
            "{}: SHA-256 {actual}, but {} says {sha256}",
            path.display(),
            file.display()
        );
    }
    let s = |k: &str| arch[k].as_str().unwrap_or_default().to_string();
    Ok(StreamImage {
        path,
        sha256: sha256.to_string(),
        version: s("version"),
        commit: s("commit"),
        ref_: s("ref"),
    })
}

/// Write JSON atomically.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    crate::base::tmp::write_atomic(path, &serde_json::to_vec_pretty(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_raw(dir: &Path) -> PathBuf {
        let raw = dir.join("disk.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(8 << 20).unwrap();
        fs_err::write(dir.join("marker"), b"x").unwrap();
        raw
    }

    #[test]
    fn converts_to_every_format_with_digests() {
        let d = tempfile::tempdir().unwrap();
        let raw = small_raw(d.path());
        let out = d.path().join("out");
        fs_err::create_dir(&out).unwrap();
        let mut arts = Vec::new();
        for f in [
            Format::Raw,
            Format::Qcow2,
            Format::Vmdk,
            Format::Vhd,
            Format::Gce,
        ] {
            let (_, _, suffix) = platform_of(f);
            let a = convert(
                &raw,
                f,
                &out.join(format!("x.{suffix}")),
                Qcow2Compression::Zstd,
            )
            .unwrap();
            assert_eq!(a.sha256, crate::base::digest::sha256_file(&a.path).unwrap());
            assert!(a.size > 0);
            arts.push(a);
        }
        let info = Cmd::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(out.join("x.qcow2"))
            .run()
            .unwrap();
        assert!(info.stdout.contains("\"compression-type\": \"zstd\""));
        // A fixed VHD is the raw disk plus a 512-byte footer: the size stays MiB-aligned.
        let vhd = arts.iter().find(|a| a.format == "vhd").unwrap();
        assert_eq!(vhd.size, (8 << 20) + 512);
        // No partial files are left behind.
        let names: Vec<String> = fs_err::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
        let v = stream_metadata(
            &Release {
                stream: "stable",
                version: "1.0",
                commit: "abc",
                ref_: "cairn/amd64/base",
                timestamp: 0,
                artifacts: &arts,
            },
            "x86_64",
        );
        let q = &v["architectures"]["x86_64"]["artifacts"]["qemu"]["formats"]["qcow2"]["disk"];
        assert_eq!(q["location"], "x.qcow2");
        assert_eq!(q["sha256"].as_str().unwrap().len(), 64);
        assert!(
            v["architectures"]["x86_64"]["artifacts"]["gcp"]["formats"]["tar.gz"]["disk"]["size"]
                .as_u64()
                .unwrap()
                > 0
        );
    }

    #[test]
    fn sparse_digest_is_the_whole_file_digest() {
        use std::io::{Seek, SeekFrom, Write};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(9 << 20).unwrap();
        for (at, what) in [
            (0u64, &b"head"[..]),
            (3 << 20, b"middle"),
            ((9 << 20) - 1, b"t"),
        ] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(what).unwrap();
        }
        f.set_len((9 << 20) + 4097).unwrap(); // a hole at the end too
        drop(f);
        let whole = crate::base::digest::sha256_file(&p).unwrap();
        assert_eq!(sha256_sparse(&p).unwrap(), whole);
        fs_err::write(&p, b"").unwrap();
        assert_eq!(
            sha256_sparse(&p).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_failed_conversion_leaves_no_artifact() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x.qcow2");
        assert!(convert(
            &d.path().join("missing.raw"),
            Format::Qcow2,
            &dest,
            Qcow2Compression::Zlib
        )
        .is_err());
        assert!(!dest.exists());
        assert!(fs_err::read_dir(d.path()).unwrap().next().is_none());
    }
}
