//! Image manifests: what parses, what is refused and how the error reads.

use super::*;

/// The manifest `body` as m.toml beside an empty t.toml; without a key to trust, with
/// `remote-gpg-verify = false` after its top-level keys (the lines before stay where they are).
fn write(dir: &Path, body: &str) -> PathBuf {
    let body = if ["remote-gpg-key-file", "release-key", "remote-gpg-verify"]
        .iter()
        .any(|k| body.contains(k))
    {
        body.to_string()
    } else {
        let (top, tables) = body.split_at(body.find("[[").unwrap_or(body.len()));
        format!("{top}remote-gpg-verify = false\n{tables}")
    };
    write_as_is(dir, &body)
}

fn write_as_is(dir: &Path, body: &str) -> PathBuf {
    fs_err::write(dir.join("t.toml"), "").unwrap();
    let p = dir.join("m.toml");
    fs_err::write(&p, body).unwrap();
    p
}

/// A public key file made by gpg, and a secret one, in `dir`.
fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    let k = crate::release::key::new_key(&dir.join("home"), "manifest test", "1d").unwrap();
    let secret = dir.join("secret.asc");
    let out = std::process::Command::new("gpg")
        .args(["--batch", "--homedir"])
        .arg(&k.homedir)
        .args(["--armor", "--export-secret-keys", &k.key.fingerprint])
        .output()
        .unwrap();
    fs_err::write(&secret, out.stdout).unwrap();
    (k.public_key, secret)
}

#[test]
fn signed_by_default() {
    let d = tempfile::Builder::new()
        .prefix("cairn-mt")
        .tempdir_in("/tmp")
        .unwrap();
    let (public, secret) = keys(d.path());
    let top = "name = \"x\"\ntreefile = \"t.toml\"\n";
    let e = format!("{:#}", load(&write_as_is(d.path(), top)).unwrap_err());
    assert!(
        e.contains("m.toml: key `remote-gpg-key-file` is missing")
            && e.contains("remote-gpg-verify = false"),
        "{e}"
    );
    let m = load(&write_as_is(
        d.path(),
        &format!(
            "{top}remote-gpg-key-file = {:?}\n",
            public.display().to_string()
        ),
    ))
    .unwrap();
    let Trust::Key(k) = &m.trust else {
        panic!("{:?}", m.trust)
    };
    assert_eq!(
        (k.file.as_path(), k.fingerprints.len()),
        (public.as_path(), 1)
    );
    let m = load(&write_as_is(
        d.path(),
        &format!("{top}release-key = \"rk\"\n"),
    ))
    .unwrap();
    assert_eq!(m.trust, Trust::ReleaseKey(d.path().join("rk")));
    assert!(
        !d.path().join("rk").exists(),
        "loading wrote the release key"
    );
    let m = load(&write_as_is(
        d.path(),
        &format!("{top}remote-gpg-verify = false\n"),
    ))
    .unwrap();
    assert_eq!(m.trust, Trust::Unverified);
    fs_err::write(d.path().join("junk.asc"), "not a key\n").unwrap();
    let secret = secret.display().to_string();
    for (line, want) in [
        (
            "remote-gpg-key-file = \"junk.asc\"".to_string(),
            "m.toml:3: key `remote-gpg-key-file`: ",
        ),
        (
            format!("remote-gpg-key-file = {secret:?}"),
            "holds a secret key",
        ),
        (
            "remote-gpg-key-file = \"t.toml\"".to_string(),
            "no OpenPGP public key",
        ),
        (
            "release-key = \"t.toml\"".to_string(),
            "m.toml:3: key `release-key`",
        ),
        (
            "release-key = \"\"".to_string(),
            "m.toml:3: key `release-key`",
        ),
        (
            "remote-gpg-key-file = \"junk.asc\"\nrelease-key = \"rk\"".to_string(),
            "give one, not both",
        ),
        (
            "release-key = \"rk\"\nremote-gpg-verify = false".to_string(),
            "m.toml:4: key `remote-gpg-verify` is false",
        ),
        (
            "remote-gpg-verify = true".to_string(),
            "key `remote-gpg-key-file` is missing",
        ),
        (
            "remote-gpg-verify = \"no\"".to_string(),
            "remote-gpg-verify",
        ),
    ] {
        let e = format!(
            "{:#}",
            load(&write_as_is(d.path(), &format!("{top}{line}\n"))).unwrap_err()
        );
        assert!(e.contains(want), "{line} → {e}");
    }
}

#[test]
fn trial_settings() {
    let d = tempfile::tempdir().unwrap();
    let m = load(&write(d.path(), "name = \"x\"\ntreefile = \"t.toml\"\n")).unwrap();
    assert_eq!(m.node, crate::node::config::Config::default());
    assert_eq!(
        (m.node.trial_boots, m.node.health_deadline.as_secs()),
        (3, 600)
    );
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\ntrial-boots = 1\nhealth-deadline = \"8m\"\n",
    ))
    .unwrap();
    assert_eq!(
        (m.node.trial_boots, m.node.health_deadline.as_secs()),
        (1, 480)
    );
    for (line, key) in [
        ("trial-boots = 0", "m.toml:3: key `trial-boots`"),
        ("trial-boots = 10", "m.toml:3: key `trial-boots`"),
        (
            "health-deadline = \"30s\"",
            "m.toml:3: key `health-deadline`",
        ),
        (
            "health-deadline = \"soon\"",
            "m.toml:3: key `health-deadline`",
        ),
    ] {
        let body = format!("name = \"x\"\ntreefile = \"t.toml\"\n{line}\n");
        let e = format!("{:#}", load(&write(d.path(), &body)).unwrap_err());
        assert!(e.contains(key), "{line} → {e}");
    }
}

#[test]
fn remote_url_and_key_file() {
    let d = tempfile::Builder::new()
        .prefix("cairn-mt")
        .tempdir_in("/tmp")
        .unwrap();
    let (public, _) = keys(d.path());
    std::fs::copy(&public, d.path().join("k.asc")).unwrap();
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nremote-url = \"https://u.example/repo\"\nremote-gpg-key-file = \"k.asc\"\n",
    ))
    .unwrap();
    assert_eq!(m.remote_url.as_deref(), Some("https://u.example/repo"));
    assert!(matches!(&m.trust, Trust::Key(k) if k.file == d.path().join("k.asc")));
    let e = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nremote-gpg-key-file = \"none.asc\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("m.toml:3: key `remote-gpg-key-file`"), "{e}");
    for bad in [
        "ftp://x",
        "http://repo.example:http/",
        "http://repo.example:99999/",
        "https://",
        "file://host/repo",
        "file:///",
        "http://repo example/",
        "repo.example/repo",
    ] {
        let e = load(&write(
            d.path(),
            &format!("name = \"x\"\ntreefile = \"t.toml\"\nremote-url = \"{bad}\"\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("m.toml:3: key `remote-url`"), "{bad}: {e}");
    }
    for good in [
        "http://10.0.2.2:8080/",
        "https://repo.example/cairn",
        "file:///srv/repo",
    ] {
        let m = load(&write(
            d.path(),
            &format!("name = \"x\"\ntreefile = \"t.toml\"\nremote-url = \"{good}\"\n"),
        ));
        assert!(m.is_ok(), "{good}: {:?}", m.err());
    }
    let e = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nformats = []\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("m.toml:3: key `formats` is empty"), "{e}");
}

#[test]
fn default_layout_fills_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nsize = \"2G\"\n",
    ))
    .unwrap();
    assert_eq!(m.partitions.len(), 3);
    assert_eq!(
        m.partition(PartKind::Boot),
        None,
        "/boot is on the root filesystem"
    );
    assert_eq!(m.partitions[0].start, MIB);
    let last = m.partitions.last().unwrap();
    assert_eq!(last.kind, PartKind::Root);
    assert_eq!(last.start + last.size, (2 << 30) - MIB);
    assert_eq!(m.firmware, vec![Firmware::Bios, Firmware::Uefi]);
    assert_eq!(m.qcow2_compression, Qcow2Compression::Zstd);
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nqcow2-compression = \"zlib\"\n",
    ))
    .unwrap();
    assert_eq!(m.qcow2_compression, Qcow2Compression::Zlib);
}

#[test]
fn bad_manifests_name_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("name = \"x\"\ntreefile = \"t.toml\"\nbogus = 1\n", "bogus"),
        ("name = \"x\"\ntreefile = \"missing.toml\"\n", "m.toml:2: key `treefile`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nsize = \"1G\"\nfirmware = [\"uefi\"]\n[[partitions]]\nlabel = \"ESP\"\ntype = \"esp\"\nsize = \"64M\"\n[[partitions]]\nlabel = \"root\"\ntype = \"root\"\n[[partitions]]\nlabel = \"boot\"\ntype = \"boot\"\nsize = \"2G\"\n", "the disk"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nfirmware = [\"uefi\"]\n[[partitions]]\nlabel = \"root\"\ntype = \"root\"\n[[partitions]]\nlabel = \"boot\"\ntype = \"boot\"\nsize = \"300M\"\n", "needs an `esp`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nformats = [\"iso\"]\n", "m.toml:3: key `formats`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nfirmware = [\"coreboot\"]\n", "m.toml:3: key `firmware`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nsize = \"tiny\"\n", "m.toml:3: key `size`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nqcow2-compression = \"xz\"\n", "m.toml:3: key `qcow2-compression`: \"xz\" is not `zstd`, `zlib` or `none`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nprovisioning = \"ignition\"\n", "m.toml:3: key `provisioning`: \"ignition\" is not `nocloud` or `none`"),
        ("name = \"x\"\nref = \"a/../b\"\n", "m.toml:2: key `ref`"),
        ("name = \"../x\"\ntreefile = \"t.toml\"\n", "m.toml:1: key `name`"),
        ("name = \"\"\ntreefile = \"t.toml\"\n", "m.toml:1: key `name`"),
        ("name = \"a/b\"\ntreefile = \"t.toml\"\n", "m.toml:1: key `name`"),
        ("name = \".hidden\"\ntreefile = \"t.toml\"\n", "m.toml:1: key `name`"),
        (&*format!("name = \"{}\"\ntreefile = \"t.toml\"\n", "n".repeat(65)), "m.toml:1: key `name`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nosname = \"..\"\n", "m.toml:3: key `osname`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nosname = \"a/b\"\n", "m.toml:3: key `osname`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\nosname = \"tab\\there\"\n", "m.toml:3: key `osname`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\n[[partitions]]\nlabel = \"bad\\nlabel\"\ntype = \"root\"\n", "m.toml:4: key `partitions.label`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\n[[partitions]]\nlabel = \"a-partition-name-longer-than-36-chars\"\ntype = \"root\"\n", "m.toml:4: key `partitions.label`"),
    ];
    for (body, want) in cases {
        let e = format!("{:#}", load(&write(d.path(), body)).unwrap_err());
        assert!(e.contains(want) && e.contains("m.toml"), "{body}\n→ {e}");
    }
}

#[test]
fn boot_must_hold_two_deployments() {
    let d = tempfile::tempdir().unwrap();
    let body = "name = \"x\"\ntreefile = \"t.toml\"\n[[partitions]]\nlabel = \"BIOS\"\ntype = \"bios-boot\"\nsize = \"1M\"\n[[partitions]]\nlabel = \"ESP\"\ntype = \"esp\"\nsize = \"64M\"\n[[partitions]]\nlabel = \"boot\"\ntype = \"boot\"\nsize = \"64M\"\n[[partitions]]\nlabel = \"root\"\ntype = \"root\"\n";
    let m = load(&write(d.path(), body)).unwrap();
    let e = check_boot_size(&m, 37 * MIB).unwrap_err().to_string();
    assert!(e.contains("two deployments") && e.contains("64 MiB"), "{e}");
    assert!(check_boot_size(&m, 10 * MIB).is_ok());
}

#[test]
fn a_commit_larger_than_the_root_partition_names_size() {
    let d = tempfile::tempdir().unwrap();
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nsize = \"1G\"\n",
    ))
    .unwrap();
    check_root_size(&m, 600 * MIB).unwrap();
    let e = check_root_size(&m, 1000 * MIB).unwrap_err().to_string();
    assert!(
        e.contains("m.toml: key `size`") && e.contains("1000 MiB of files"),
        "{e}"
    );
    // The size it asks for is enough.
    let want = e
        .rsplit("at least \"")
        .next()
        .unwrap()
        .trim_end_matches("M\"");
    let body = format!("name = \"x\"\ntreefile = \"t.toml\"\nsize = \"{want}M\"\n");
    check_root_size(&load(&write(d.path(), &body)).unwrap(), 1000 * MIB).unwrap();
}
