//! Bad input at the three boundaries a user writes (treefiles, image manifests, fleet
//! manifests), through the `cairn` binary: each case exits non-zero, names the key at fault,
//! does not panic, and writes nothing (the directory it runs in is the same file for file
//! afterwards, no repo, cache, image, key or fleet state made). No root, no network.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// A good treefile, image manifest and fleet manifest, each case changes one line of one.
const TREEFILE: &str = "ref = \"t/x\"\nreleasever = \"bookworm\"\npackages = [\"systemd\"]\n";
const IMAGE: &str =
    "name = \"app\"\ntreefile = \"t.toml\"\nsize = \"4G\"\nremote-gpg-verify = false\n";
const FLEET: &str = "name = \"web\"\n\n[provider]\ntype = \"qemu\"\nimage = \"app.toml\"\nnodes = 2\nmemory = \"1024M\"\n\n[service]\nport = 80\nhealth-path = \"/\"\nhealth-interval = \"1s\"\nhealth-timeout = \"2s\"\nhealthy-threshold = 3\n\n[load-balancer]\ntype = \"haproxy\"\nlisten = \"127.0.0.1:18080\"\n\n[policy]\nstrategy = \"in-place\"\nmax-unavailable = 1\nbake-time = \"10s\"\n";
const SSH_FLEET: &str = "name = \"web\"\n\n[provider]\ntype = \"ssh\"\n\n[[provider.hosts]]\nname = \"a\"\naddress = \"127.0.0.1\"\nidentity = \"id\"\nservice-address = \"127.0.0.1:18081\"\n\n[[provider.hosts]]\nname = \"b\"\naddress = \"127.0.0.3\"\nidentity = \"id\"\nservice-address = \"127.0.0.3:18081\"\n\n[service]\nport = 80\n\n[load-balancer]\ntype = \"haproxy\"\nlisten = \"127.0.0.1:18080\"\n";

#[derive(Clone, Copy)]
enum Input {
    Treefile,
    Image,
    Fleet,
    SshFleet,
}

/// `from` replaced by `to` in the good input (`from` empty: `to` appended).
struct Case(Input, &'static str, &'static str, &'static str);

fn cases() -> Vec<Case> {
    use Input::*;
    vec![
        // Treefiles.
        Case(Treefile, "", "bogus = 1\n", "bogus"),
        Case(Treefile, "ref = \"t/x\"\n", "", "ref"),
        Case(Treefile, "ref = \"t/x\"", "ref = \"a/../b\"", "ref"),
        Case(Treefile, "ref = \"t/x\"", "ref = \"\"", "ref"),
        Case(Treefile, "ref = \"t/x\"", "ref = 5", "ref"),
        Case(Treefile, "releasever = \"bookworm\"", "releasever = \"\"", "releasever"),
        Case(Treefile, "packages = [\"systemd\"]", "packages = \"systemd\"", "packages"),
        Case(Treefile, "packages = [\"systemd\"]", "packages = [\"Bad Name\"]", "packages"),
        Case(Treefile, "", "include = [\"missing.toml\"]\n", "include"),
        Case(Treefile, "", "add-files = [[\"missing\", \"/etc/x\"]]\n", "add-files"),
        Case(Treefile, "", "add-files = [[\"t.toml\", \"etc/relative\"]]\n", "add-files"),
        Case(Treefile, "", "add-files = [[\"t.toml\"]]\n", "add-files"),
        Case(Treefile, "", "postprocess-script = \"missing.sh\"\n", "postprocess-script"),
        Case(Treefile, "", "units = [\"no suffix\"]\n", "units"),
        Case(Treefile, "", "default-target = \"nothing\"\n", "default-target"),
        Case(Treefile, "", "recommends = \"yes\"\n", "recommends"),
        Case(Treefile, "", "automatic-version-prefix = \"x y\"\n", "automatic-version-prefix"),
        Case(Treefile, "", "remove-files = [\"/etc/../x\"]\n", "remove-files"),
        Case(Treefile, "", "gpg-key = \"\"\n", "gpg-key"),
        Case(Treefile, "", "[[users]]\nname = \"\"\n", "users"),
        Case(Treefile, "", "[[users]]\nname = \"ops\"\nuid = -1\n", "uid"),
        Case(Treefile, "", "[[groups]]\nname = \"a:b\"\n", "groups"),
        // Image manifests.
        Case(Image, "", "bogus = 1\n", "bogus"),
        Case(Image, "name = \"app\"\n", "", "name"),
        Case(Image, "name = \"app\"", "name = \"../x\"", "name"),
        Case(Image, "treefile = \"t.toml\"", "treefile = \"missing.toml\"", "treefile"),
        Case(Image, "treefile = \"t.toml\"\n", "", "treefile"),
        Case(Image, "", "ref = \"t/x\"\n", "ref"),
        Case(Image, "size = \"4G\"", "size = \"tiny\"", "size"),
        Case(Image, "size = \"4G\"", "size = \"1M\"", "size"),
        Case(Image, "size = \"4G\"", "size = \"1000000001\"", "size"),
        Case(Image, "", "firmware = [\"coreboot\"]\n", "firmware"),
        Case(Image, "", "firmware = []\n", "firmware"),
        Case(Image, "", "formats = []\n", "formats"),
        Case(Image, "", "formats = [\"iso\"]\n", "formats"),
        Case(Image, "", "provisioning = \"ignition\"\n", "provisioning"),
        Case(Image, "", "qcow2-compression = \"xz\"\n", "qcow2-compression"),
        Case(Image, "", "osname = \"a/b\"\n", "osname"),
        Case(Image, "", "remote-url = \"ftp://x/\"\n", "remote-url"),
        Case(Image, "", "remote-url = \"http://repo.example:http/\"\n", "remote-url"),
        Case(Image, "", "remote-url = \"http://repo.example:99999/\"\n", "remote-url"),
        Case(Image, "", "remote-url = \"https://\"\n", "remote-url"),
        Case(Image, "remote-gpg-verify = false\n", "", "remote-gpg-key-file"),
        Case(Image, "remote-gpg-verify = false", "remote-gpg-key-file = \"t.toml\"", "remote-gpg-key-file"),
        Case(Image, "remote-gpg-verify = false", "remote-gpg-key-file = \"none.asc\"", "remote-gpg-key-file"),
        Case(Image, "remote-gpg-verify = false", "release-key = \"t.toml\"", "release-key"),
        Case(Image, "", "release-key = \"keys\"\n", "remote-gpg-verify"),
        Case(Image, "", "trial-boots = 0\n", "trial-boots"),
        Case(Image, "", "health-deadline = \"soon\"\n", "health-deadline"),
        Case(Image, "", "[[partitions]]\nlabel = \"root\"\ntype = \"swap\"\n", "partitions"),
        Case(Image, "", "[[partitions]]\nlabel = \"bad label\"\ntype = \"root\"\n", "partitions"),
        // Fleet manifests.
        Case(Fleet, "", "bogus = 1\n", "bogus"),
        Case(Fleet, "name = \"web\"\n", "", "name"),
        Case(Fleet, "type = \"qemu\"", "type = \"cloud\"", "type"),
        Case(Fleet, "image = \"app.toml\"", "image = \"missing.toml\"", "image"),
        Case(Fleet, "nodes = 2", "nodes = 0", "nodes"),
        Case(Fleet, "memory = \"1024M\"", "memory = \"lots\"", "memory"),
        Case(Fleet, "port = 80", "port = 0", "port"),
        Case(Fleet, "port = 80", "port = 70000", "port"),
        Case(Fleet, "health-path = \"/\"", "health-path = \"no-slash\"", "health-path"),
        Case(Fleet, "health-interval = \"1s\"", "health-interval = \"often\"", "health-interval"),
        Case(Fleet, "healthy-threshold = 3", "healthy-threshold = 0", "healthy-threshold"),
        Case(Fleet, "healthy-threshold = 3", "healthy-threshold = 3\nunhealthy-threshold = 0", "unhealthy-threshold"),
        Case(Fleet, "healthy-threshold = 3", "healthy-threshold = 3\nunhealthy-threshold = 11", "unhealthy-threshold"),
        Case(Fleet, "listen = \"127.0.0.1:18080\"", "listen = \"127.0.0.1\"", "listen"),
        Case(Fleet, "listen = \"127.0.0.1:18080\"", "listen = \"127.0.0.1:port\"", "listen"),
        Case(Fleet, "strategy = \"in-place\"", "strategy = \"yolo\"", "strategy"),
        Case(Fleet, "max-unavailable = 1", "max-unavailable = 0", "max-unavailable"),
        Case(Fleet, "max-unavailable = 1", "max-unavailable = \"150%\"", "max-unavailable"),
        Case(Fleet, "bake-time = \"10s\"", "bake-time = \"-1s\"", "bake-time"),
        Case(Fleet, "", "on-failure = \"retry\"\n", "on-failure"),
        Case(SshFleet, "address = \"127.0.0.1\"", "address = \"\"", "address"),
        Case(SshFleet, "identity = \"id\"", "identity = \"missing\"", "identity"),
        Case(SshFleet, "service-address = \"127.0.0.1:18081\"", "service-address = \"127.0.0.1\"", "service-address"),
        Case(SshFleet, "service-address = \"127.0.0.1:18081\"", "service-address = \"127.0.0.1:0\"", "service-address"),
        Case(SshFleet, "name = \"b\"", "name = \"b c\"", "provider.hosts.name"),
        Case(SshFleet, "name = \"b\"", "name = \"../b\"", "provider.hosts.name"),
        Case(SshFleet, "", "[[provider.hosts]]\nname = \"a\"\naddress = \"127.0.0.2\"\nidentity = \"id\"\nservice-address = \"127.0.0.2:18081\"\n", "name"),
    ]
}

/// Every path under `dir`, with its size, for "nothing written".
fn listing(dir: &Path) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.insert((rel, if m.is_dir() { 0 } else { m.len() }));
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

fn run(case: &Case) -> Result<(), String> {
    let Case(input, from, to, key) = case;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let good = match input {
        Input::Treefile => TREEFILE,
        Input::Image => IMAGE,
        Input::Fleet => FLEET,
        Input::SshFleet => SSH_FLEET,
    };
    assert!(good.contains(from), "case {from:?}: not in the good input");
    let bad = if from.is_empty() {
        format!("{good}{to}")
    } else {
        good.replacen(from, to, 1)
    };
    std::fs::write(dir.join("t.toml"), TREEFILE).unwrap();
    std::fs::write(dir.join("app.toml"), IMAGE).unwrap();
    std::fs::write(dir.join("id"), "not read").unwrap();
    let (file, args): (&str, Vec<String>) = match input {
        Input::Treefile => ("bad.toml", vec!["compose".into()]),
        Input::Image => ("bad.toml", vec!["image".into()]),
        Input::Fleet | Input::SshFleet => ("bad.toml", vec!["fleet".into(), "up".into()]),
    };
    std::fs::write(dir.join(file), &bad).unwrap();
    let before = listing(dir);
    let p = |s: &str| dir.join(s).display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(&args).arg(p(file));
    match input {
        Input::Treefile => cmd.args(["--repo", &p("repo"), "--cache", &p("cache")]),
        Input::Image => cmd.args([
            "--repo",
            &p("repo"),
            "--cache",
            &p("cache"),
            "--out",
            &p("out"),
        ]),
        _ => cmd.args([
            "--fleets",
            &p("fleets"),
            "--repo",
            &p("repo"),
            "--images",
            &p("images"),
        ]),
    };
    let out = cmd.env("GNUPGHOME", p("gnupg")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let what = format!("{to:?} for {from:?}");
    if out.status.success() {
        return Err(format!("{what}: exit 0"));
    }
    if err.contains("panicked") || out.status.code() == Some(101) {
        return Err(format!("{what}: a panic: {err}"));
    }
    if !err.contains(&format!("`{key}"))
        && !err.contains(&format!("{key}`"))
        && !err.contains(&format!("`{key}`"))
    {
        return Err(format!("{what}: the message does not name `{key}`: {err}"));
    }
    if !err.contains("bad.toml") && !err.contains(&*dir.display().to_string()) {
        return Err(format!("{what}: the message names no file: {err}"));
    }
    let after = listing(dir);
    if after != before {
        let new: Vec<_> = after.difference(&before).collect();
        return Err(format!("{what}: wrote {new:?}"));
    }
    Ok(())
}

#[test]
fn every_bad_input_is_refused_naming_its_key_and_writes_nothing() {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
