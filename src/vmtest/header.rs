//! Finding the tests under `vm-tests/` and reading their headers.
//!
//! A test is an executable file. Right after its `#!` line, a block of lines starting with `##`
//! is TOML that sets how it runs:
//!
//! ```text
//! #!/bin/bash
//! ## timeout = "10m"            # the whole test, all its boots included
//! ## memory = "1536M"
//! ## firmware = ["bios", "uefi"] # runs once per firmware
//! ## tags = ["basic"]
//! ## exclusive = true           # a VM of its own (it changes the host)
//! ## disk-size = "8G"           # the VM's disk (default: the image plus 2 GiB)
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::base::span::line_of;
use crate::base::units::{parse_duration, parse_size};
use crate::base::Firmware;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHeader {
    timeout: Option<toml::Spanned<toml::Value>>,
    memory: Option<toml::Spanned<String>>,
    firmware: Option<toml::Spanned<Vec<String>>>,
    tags: Option<Vec<String>>,
    exclusive: Option<bool>,
    disk_size: Option<toml::Spanned<String>>,
}

/// One test, read and checked.
#[derive(Debug, Clone)]
pub struct TestDef {
    /// The path below the suite's directory, e.g. `basic/no-failed-units`.
    pub name: String,
    pub path: PathBuf,
    pub timeout: Duration,
    pub memory_mib: u64,
    pub firmware: Vec<Firmware>,
    pub tags: Vec<String>,
    pub exclusive: bool,
    pub disk_size: Option<u64>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MEMORY_MIB: u64 = 1536;

/// Read the header of the test at `path`, named `name`.
pub fn read(path: &Path, name: &str) -> Result<TestDef> {
    check_executable(path)?;
    let bytes = fs_err::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let (src, first_line) = header_block(&text);
    let at = |offset: usize| {
        format!(
            "{}:{}",
            path.display(),
            first_line - 1 + line_of(&src, offset)
        )
    };
    let raw: RawHeader = toml::from_str(&src).map_err(|e| {
        let line = e
            .span()
            .map(|s| at(s.start))
            .unwrap_or_else(|| path.display().to_string());
        anyhow::anyhow!("{line}: bad test header: {}", e.message())
    })?;
    let timeout = timeout(&raw.timeout, &at)?;
    let memory_mib = memory_mib(&raw.memory, &at)?;
    let disk_size = disk_size(&raw.disk_size, &at)?;
    let firmware = match &raw.firmware {
        None => vec![Firmware::Bios],
        Some(f) => Firmware::parse_list(f.get_ref(), &at(f.span().start))?,
    };
    Ok(TestDef {
        name: name.to_string(),
        path: path.to_path_buf(),
        timeout,
        memory_mib,
        firmware,
        tags: raw.tags.unwrap_or_default(),
        exclusive: raw.exclusive.unwrap_or(false),
        disk_size,
    })
}

/// A test is an executable file.
fn check_executable(path: &Path) -> Result<()> {
    let meta =
        fs_err::metadata(path).with_context(|| format!("{}: no such test", path.display()))?;
    if !meta.is_file() {
        bail!("{}: a test must be a file", path.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{}: not executable (a test is an executable file; chmod +x it)",
            path.display()
        );
    }
    Ok(())
}

/// The TOML of the `##` lines right after the `#!` line, and the file's line it starts at.
fn header_block(text: &str) -> (String, usize) {
    let mut lines = text.lines();
    let mut first_line = 1;
    if text.starts_with("#!") {
        lines.next();
        first_line = 2;
    }
    let header: Vec<&str> = lines
        .take_while(|l| l.starts_with("##"))
        .map(|l| {
            let l = l.trim_start_matches("##");
            l.strip_prefix(' ').unwrap_or(l)
        })
        .collect();
    (header.join("\n"), first_line)
}

/// `timeout`: a duration, or a number of seconds.
fn timeout(
    v: &Option<toml::Spanned<toml::Value>>,
    at: &dyn Fn(usize) -> String,
) -> Result<Duration> {
    let Some(v) = v else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let d = match v.get_ref() {
        toml::Value::String(s) => parse_duration(s),
        toml::Value::Integer(n) if *n > 0 => Some(Duration::from_secs(*n as u64)),
        _ => None,
    };
    d.with_context(|| {
        format!(
            "{}: key `timeout`: not a duration like \"90s\" or \"10m\"",
            at(v.span().start)
        )
    })
}

/// `memory`: at least 256 MiB, in MiB.
fn memory_mib(m: &Option<toml::Spanned<String>>, at: &dyn Fn(usize) -> String) -> Result<u64> {
    let Some(m) = m else {
        return Ok(DEFAULT_MEMORY_MIB);
    };
    parse_size(m.get_ref())
        .filter(|b| *b >= 256 << 20)
        .map(|b| b >> 20)
        .with_context(|| {
            format!(
                "{}: key `memory`: {:?} is not a size of at least 256M",
                at(m.span().start),
                m.get_ref()
            )
        })
}

/// `disk-size`: a size, if given.
fn disk_size(
    d: &Option<toml::Spanned<String>>,
    at: &dyn Fn(usize) -> String,
) -> Result<Option<u64>> {
    let Some(d) = d else {
        return Ok(None);
    };
    let size = parse_size(d.get_ref()).with_context(|| {
        format!(
            "{}: key `disk-size`: {:?} is not a size like \"8G\"",
            at(d.span().start),
            d.get_ref()
        )
    })?;
    Ok(Some(size))
}

/// The name of a test given as a file: its path below the last `vm-tests` directory, or its
/// file name.
fn name_of_file(path: &Path) -> String {
    let comps: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match comps.iter().rposition(|c| c == "vm-tests") {
        Some(i) if i + 1 < comps.len() => comps[i + 1..].join("/"),
        _ => comps.last().cloned().unwrap_or_default(),
    }
}

/// Files in a suite directory that are not tests.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".md") || name.ends_with('~')
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<TestDef>) -> Result<()> {
    let mut entries: Vec<_> = fs_err::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let fname = e.file_name().to_string_lossy().into_owned();
        if ignored(&fname) {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(read(&path, &rel.to_string_lossy())?);
        }
    }
    Ok(())
}

/// Every test named by `paths` (files or directories, walked in name order).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<TestDef>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, p, &mut out)?;
        } else {
            out.push(read(p, &name_of_file(p))?);
        }
    }
    if out.is_empty() {
        bail!("no tests found in {paths:?}");
    }
    let mut names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("test {} is named twice", w[0]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(&p, body).unwrap();
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn header_sets_the_run() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "vm-tests/basic/t",
            "#!/bin/sh\n## timeout = \"5m\"\n## memory = \"2G\"\n## firmware = [\"bios\", \"uefi\"]\n## tags = [\"basic\"]\n## exclusive = true\n## disk-size = \"8G\"\necho hi\n## not header\n",
            0o755,
        );
        let t = read(&p, "basic/t").unwrap();
        assert_eq!(t.timeout, Duration::from_secs(300));
        assert_eq!(t.memory_mib, 2048);
        assert_eq!(t.firmware, vec![Firmware::Bios, Firmware::Uefi]);
        assert_eq!(t.tags, vec!["basic"]);
        assert!(t.exclusive);
        assert_eq!(t.disk_size, Some(8 << 30));
        let t = discover(&[p]).unwrap();
        assert_eq!(t[0].name, "basic/t");
    }

    #[test]
    fn defaults_without_a_header() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "t", "#!/bin/sh\ntrue\n", 0o755);
        let t = read(&p, "t").unwrap();
        assert_eq!(t.timeout, DEFAULT_TIMEOUT);
        assert_eq!(t.firmware, vec![Firmware::Bios]);
        assert!(!t.exclusive);
    }

    #[test]
    fn bad_headers_name_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        for (body, want) in [
            (
                "#!/bin/sh\n## tags = []\n## timeout = \"soon\"\n",
                ":3: key `timeout`",
            ),
            (
                "#!/bin/sh\n## firmware = [\"coreboot\"]\n",
                ":2: key `firmware`",
            ),
            ("#!/bin/sh\n## memory = \"12\"\n", ":2: key `memory`"),
            (
                "#!/bin/sh\n## colour = 1\n",
                ":2: bad test header: unknown field `colour`",
            ),
            ("#!/bin/sh\n## timeout = \n", ":2: bad test header"),
        ] {
            let p = write(d.path(), "t", body, 0o755);
            let e = format!("{:#}", read(&p, "t").unwrap_err());
            assert!(
                e.contains(&format!("{}{want}", p.display())),
                "{body:?}: {e}"
            );
        }
    }

    #[test]
    fn non_executable_and_missing_tests_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "suite/t", "#!/bin/sh\n", 0o644);
        let e = format!("{:#}", discover(&[d.path().join("suite")]).unwrap_err());
        assert!(e.contains("not executable"), "{e}");
        let e = format!("{:#}", discover(&[d.path().join("nope")]).unwrap_err());
        assert!(e.contains("no such test"), "{e}");
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(d.path(), "suite/README.md", "docs", 0o644);
        let t = discover(&[d.path().join("suite")]).unwrap();
        assert_eq!(t.len(), 1);
    }
}
