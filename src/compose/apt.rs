//! apt, run on the build host against a private state directory in the package cache.
//!
//! cairn never touches the host's own apt state: each set of sources gets its own directory under
//! `<cache>/apt/<digest>/` (config, lists, an empty dpkg status), and all of them share one `.deb`
//! cache, `<cache>/debs/`. By default the sources are the build host's own, read at run time from
//! `/etc/apt/sources.list` and `/etc/apt/sources.list.d/`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::base::cmd::Cmd;
use crate::base::digest::sha256_file;
pub use crate::base::Package;

/// Why resolving failed, where the caller can point at the treefile.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("package {0} is not in the configured apt sources")]
    UnknownPackage(String),
    #[error("{0}")]
    Other(String),
}

/// One apt source file, named as it will be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

/// The build host's apt sources, read now.
pub fn host_sources() -> Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if main.is_file() {
        out.push(SourceFile {
            name: "host.list".into(),
            content: fs_err::read_to_string(main).context("reading /etc/apt/sources.list")?,
        });
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if dir.is_dir() {
        let mut names: Vec<PathBuf> = fs_err::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        names.sort();
        for p in names {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(SourceFile {
                content: fs_err::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                name,
            });
        }
    }
    if parse_sources(&out).is_empty() {
        bail!("the build host has no enabled apt sources in /etc/apt/sources.list(.d); set `repos` in the treefile");
    }
    Ok(out)
}

/// Sources given in a treefile's `repos` (one-line format).
pub fn treefile_sources(repos: &[String]) -> SourceFile {
    SourceFile {
        name: "treefile.list".into(),
        content: repos.iter().map(|r| format!("{r}\n")).collect(),
    }
}

/// A repository and suite, as apt fetches its `InRelease` from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Suite {
    pub uri: String,
    pub suite: String,
}

impl Suite {
    /// The URL of the suite's `InRelease` file.
    pub fn inrelease_url(&self) -> String {
        let base = self.uri.trim_end_matches('/');
        if self.suite.ends_with('/') {
            format!("{base}/{}InRelease", self.suite)
        } else {
            format!("{base}/dists/{}/InRelease", self.suite)
        }
    }
}

/// The binary (`deb`) suites named by source files in either format.
pub fn parse_sources(files: &[SourceFile]) -> Vec<Suite> {
    let mut out = Vec::new();
    for f in files {
        if f.name.ends_with(".sources") {
            for para in f.content.split("\n\n") {
                out.extend(deb822_suites(para));
            }
        } else {
            out.extend(f.content.lines().filter_map(one_line_suite));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The suites of one deb822 paragraph (`.sources`): every URI with every suite, when it is
/// enabled and of type `deb`.
fn deb822_suites(para: &str) -> Vec<Suite> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last = String::new();
    for line in para.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(v) = fields.get_mut(&last) {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            last = k.trim().to_ascii_lowercase();
            fields.insert(last.clone(), v.trim().to_string());
        }
    }
    let enabled = fields.get("enabled").is_none_or(|v| v != "no");
    let is_deb = fields
        .get("types")
        .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
    if !enabled || !is_deb {
        return Vec::new();
    }
    let words = |k: &str| fields.get(k).map(|s| s.as_str()).unwrap_or("");
    let mut out = Vec::new();
    for uri in words("uris").split_whitespace() {
        for suite in words("suites").split_whitespace() {
            out.push(Suite {
                uri: uri.to_string(),
                suite: suite.to_string(),
            });
        }
    }
    out
}

/// The suite of a one-line `deb [options] URI SUITE …` source (`.list`), if it is one.
fn one_line_suite(line: &str) -> Option<Suite> {
    let line = line.split('#').next().unwrap_or("").trim();
    let mut words = line.split_whitespace().peekable();
    if words.next() != Some("deb") {
        return None;
    }
    if words.peek().is_some_and(|w| w.starts_with('[')) {
        // Skip the options block, which may contain spaces.
        for w in words.by_ref() {
            if w.ends_with(']') {
                break;
            }
        }
    }
    let (uri, suite) = (words.next()?, words.next()?);
    Some(Suite {
        uri: uri.to_string(),
        suite: suite.to_string(),
    })
}

/// What the package indexes say right now: a digest over every suite's `InRelease` (which itself
/// carries the digests of all index files) and the newest of their `Date:` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexState {
    pub digest: String,
    pub newest_date: Option<i64>,
}

/// Fetch every suite's `InRelease` (small files) and digest them: the cheap check that the
/// package indexes did not change.
pub fn index_state(suites: &[Suite]) -> Result<IndexState> {
    let mut h = Sha256::new();
    let mut newest: Option<i64> = None;
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(30))
        .build();
    for s in suites {
        let url = s.inrelease_url();
        let body = fetch(&agent, &url).with_context(|| format!("fetching {url}"))?;
        h.update(url.as_bytes());
        h.update(b" ");
        h.update(Sha256::digest(&body));
        h.update(b"\n");
        if let Some(d) = release_date(&String::from_utf8_lossy(&body)) {
            newest = Some(newest.map_or(d, |n| n.max(d)));
        }
    }
    Ok(IndexState {
        digest: hex::encode(h.finalize()),
        newest_date: newest,
    })
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>> {
    if let Some(path) = url.strip_prefix("file:") {
        let path = path.trim_start_matches("//");
        return fs_err::read(path).with_context(|| format!("reading {path}"));
    }
    let resp = agent.get(url).call().map_err(|e| anyhow!("{e}"))?;
    let mut body = Vec::new();
    resp.into_reader().take(64 << 20).read_to_end(&mut body)?;
    Ok(body)
}

/// The `Date:` of a Release file, as seconds since the epoch.
pub fn release_date(release: &str) -> Option<i64> {
    let line = release.lines().find(|l| l.starts_with("Date:"))?;
    let v = line["Date:".len()..].trim().replace(" UTC", " +0000");
    chrono::DateTime::parse_from_rfc2822(&v)
        .ok()
        .map(|d| d.timestamp())
}

/// A private apt state directory for one set of sources.
pub struct AptEnv {
    dir: PathBuf,
    debs: PathBuf,
    pub sources: Vec<SourceFile>,
    pub arch: String,
}

impl AptEnv {
    /// Set up (or reuse) the state directory for `sources` under `cache`.
    pub fn new(
        cache: &Path,
        sources: Vec<SourceFile>,
        arch: &str,
        recommends: bool,
    ) -> Result<Self> {
        let mut h = Sha256::new();
        for s in &sources {
            h.update(s.name.as_bytes());
            h.update(b"\0");
            h.update(s.content.as_bytes());
            h.update(b"\0");
        }
        h.update(arch.as_bytes());
        let key = &hex::encode(h.finalize())[..16];
        fs_err::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        // Absolute paths: apt's config and mmdebstrap's hooks run from other directories.
        let cache = cache
            .canonicalize()
            .with_context(|| format!("resolving {}", cache.display()))?;
        let dir = cache.join("apt").join(key);
        let debs = cache.join("debs");
        for d in [
            dir.join("etc/apt/sources.list.d"),
            dir.join("etc/apt/apt.conf.d"),
            dir.join("etc/apt/preferences.d"),
            dir.join("lists/partial"),
            dir.join("log"),
            debs.join("partial"),
        ] {
            fs_err::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let sl = dir.join("etc/apt/sources.list.d");
        for s in &sources {
            fs_err::write(sl.join(&s.name), &s.content)?;
        }
        fs_err::write(dir.join("status"), b"")?;
        let env = Self {
            dir,
            debs,
            sources,
            arch: arch.to_string(),
        };
        env.write_config(recommends)?;
        Ok(env)
    }

    fn write_config(&self, recommends: bool) -> Result<()> {
        let d = self.dir.display();
        let conf = format!(
            "Dir \"{d}/\";\n\
             Dir::Etc \"{d}/etc/apt/\";\n\
             Dir::Etc::Trusted \"/etc/apt/trusted.gpg\";\n\
             Dir::Etc::TrustedParts \"/etc/apt/trusted.gpg.d/\";\n\
             Dir::State \"{d}/\";\n\
             Dir::State::Lists \"{d}/lists/\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/\";\n\
             Dir::Cache::archives \"{debs}/\";\n\
             Dir::Cache::pkgcache \"\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             Dir::Log \"{d}/log/\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures \"{arch}\";\n\
             APT::Install-Recommends \"{rec}\";\n\
             APT::Get::Assume-Yes \"true\";\n\
             Debug::NoLocking \"true\";\n",
            debs = self.debs.display(),
            arch = self.arch,
            rec = recommends,
        );
        fs_err::write(self.config_path(), conf)?;
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("apt.conf")
    }

    /// The source files as written into the state directory (what mmdebstrap is given).
    pub fn source_paths(&self) -> Vec<PathBuf> {
        self.sources
            .iter()
            .map(|s| self.dir.join("etc/apt/sources.list.d").join(&s.name))
            .collect()
    }

    /// Pin every package in `pins` to its version (for a compose from a lockfile), or remove
    /// the pins.
    pub fn set_pins(&self, pins: Option<&[Package]>) -> Result<()> {
        let path = self.dir.join("etc/apt/preferences.d/cairn-lockfile.pref");
        match pins {
            None => {
                let _ = fs_err::remove_file(&path);
            }
            Some(pkgs) => {
                let body: String = pkgs
                    .iter()
                    .map(|p| {
                        format!(
                            "Package: {}\nPin: version {}\nPin-Priority: 1001\n\n",
                            p.name, p.version
                        )
                    })
                    .collect();
                fs_err::write(&path, body)?;
            }
        }
        Ok(())
    }

    /// The shared `.deb` cache.
    pub fn debs_dir(&self) -> &Path {
        &self.debs
    }

    fn apt_get(&self) -> Cmd {
        Cmd::new("apt-get")
            .env("APT_CONFIG", self.config_path())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8")
    }

    /// `apt-get update`, unless the lists were last updated for exactly `index`.
    pub fn update(&self, index: &IndexState) -> Result<()> {
        let stamp = self.dir.join("index-digest");
        if fs_err::read_to_string(&stamp).ok().as_deref() == Some(index.digest.as_str()) {
            tracing::debug!("apt lists are current");
            return Ok(());
        }
        self.apt_get()
            .args(["update", "-q"])
            .run()
            .context("apt-get update (package indexes)")?;
        fs_err::write(&stamp, &index.digest)?;
        Ok(())
    }

    /// Resolve `request` (apt-get install arguments) against `status` (an empty system when
    /// `None`): the packages apt would install, with versions.
    pub fn resolve(
        &self,
        request: &[String],
        status: Option<&Path>,
    ) -> Result<Vec<Package>, ResolveError> {
        let mut cmd = self.apt_get().args(["install", "-s", "-q"]);
        if let Some(s) = status {
            cmd = cmd
                .arg("-o")
                .arg(format!("Dir::State::status={}", s.display()));
        }
        let (status, out) = cmd
            .args(request)
            .run_status()
            .map_err(|e| ResolveError::Other(format!("{e:#}")))?;
        if !status.success() {
            for l in out.stderr.lines().chain(out.stdout.lines()) {
                for marker in ["Unable to locate package ", "Package '"] {
                    if let Some(rest) = l.split(marker).nth(1) {
                        let name: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '\'')
                            .collect();
                        if !name.is_empty()
                            && (marker.starts_with("Unable")
                                || l.contains("has no installation candidate"))
                        {
                            return Err(ResolveError::UnknownPackage(name));
                        }
                    }
                }
            }
            let tail: Vec<&str> = out.stdout.lines().chain(out.stderr.lines()).collect();
            let start = tail.len().saturating_sub(30);
            return Err(ResolveError::Other(format!(
                "apt could not resolve the package set:\n{}",
                tail[start..].join("\n")
            )));
        }
        Ok(parse_simulation(&out.stdout))
    }

    /// Packages a simulation of `request` on `status` would remove (conflicts).
    pub fn removals(&self, request: &[String], status: &Path) -> Result<Vec<String>> {
        let out = self
            .apt_get()
            .args(["install", "-s", "-q"])
            .arg("-o")
            .arg(format!("Dir::State::status={}", status.display()))
            .args(request)
            .run()?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("Remv "))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect())
    }

    /// Download exactly `pkgs` into the `.deb` cache (apt checks each against the signed
    /// indexes) and fill in their SHA-256.
    pub fn download(&self, pkgs: &mut [Package]) -> Result<()> {
        let missing: Vec<String> = pkgs
            .iter()
            .filter(|p| !self.debs.join(p.deb_file_name()).is_file())
            .map(|p| p.pin())
            .collect();
        if !missing.is_empty() {
            tracing::info!("downloading {} packages", missing.len());
            self.apt_get()
                .args(["install", "-d", "-q", "--no-install-recommends"])
                .args(&missing)
                .run()
                .context("downloading packages")?;
        }
        for p in pkgs.iter_mut() {
            let path = self.debs.join(p.deb_file_name());
            p.sha256 = sha256_file(&path)
                .with_context(|| format!("package {} was not downloaded", p.pin()))?;
        }
        Ok(())
    }

    /// Path of a downloaded package.
    pub fn deb_path(&self, p: &Package) -> PathBuf {
        self.debs.join(p.deb_file_name())
    }
}

/// Parse `apt-get -s install` output: `Inst name (version release [arch])`.
pub fn parse_simulation(out: &str) -> Vec<Package> {
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let rest = rest.strip_prefix('[').map_or(rest, |r| {
                // "Inst foo [old] (new ...)" on an upgrade
                r.split_once("] ").map(|x| x.1).unwrap_or(r)
            });
            let inner = rest.strip_prefix('(')?;
            let version = inner.split_whitespace().next()?.to_string();
            let arch = inner.split('[').nth(1)?.split(']').next()?.to_string();
            Some(Package {
                name: name.to_string(),
                version,
                arch,
                sha256: String::new(),
            })
        })
        .collect();
    pkgs.sort();
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simulation() {
        let out = "NOTE: This is only a simulation!\n\
            Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])\n\
            Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\n\
            Inst login (1:4.13+dfsg1-1+deb12u2 Debian:12.15/oldstable [amd64])\n\
            Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])\n";
        let p = parse_simulation(out);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].name, "login");
        assert_eq!(p[2].version, "1:4.13+dfsg1-1+deb12u2");
        assert_eq!(p[2].arch, "amd64");
        assert_eq!(
            p[2].deb_file_name(),
            "login_1%3a4.13+dfsg1-1+deb12u2_amd64.deb"
        );
    }

    #[test]
    fn parses_both_source_formats() {
        let files = vec![
            SourceFile {
                name: "a.sources".into(),
                content: "Types: deb deb-src\nURIs: http://example.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                          Types: deb\nURIs: http://example.invalid/off\nSuites: x\nEnabled: no\n"
                    .into(),
            },
            SourceFile {
                name: "b.list".into(),
                content: "# comment\ndeb [signed-by=/k.gpg arch=amd64] http://example.invalid/sec bookworm-security main\ndeb-src http://x y z\n".into(),
            },
        ];
        let s = parse_sources(&files);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s
            .iter()
            .any(|s| s.suite == "bookworm-security" && s.uri == "http://example.invalid/sec"));
        assert_eq!(
            s[0].inrelease_url(),
            "http://example.invalid/debian/dists/bookworm/InRelease"
        );
    }

    #[test]
    fn release_date_parses() {
        let r = "Origin: Debian\nDate: Sat, 08 Nov 2025 09:30:12 UTC\nValid-Until: x\n";
        assert_eq!(release_date(r), Some(1762594212));
    }
}
