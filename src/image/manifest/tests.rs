//! Image manifests: what parses, what is refused and how the error reads.

use super::*;

fn write(dir: &Path, body: &str) -> PathBuf {
    fs_err::write(dir.join("t.toml"), "").unwrap();
    let p = dir.join("m.toml");
    fs_err::write(&p, body).unwrap();
    p
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
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("k.asc"), "key").unwrap();
    let m = load(&write(
        d.path(),
        "name = \"x\"\ntreefile = \"t.toml\"\nremote-url = \"https://u.example/repo\"\nremote-gpg-key-file = \"k.asc\"\n",
    ))
    .unwrap();
    assert_eq!(m.remote_url.as_deref(), Some("https://u.example/repo"));
    assert_eq!(m.remote_gpg_key_file, Some(d.path().join("k.asc")));
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
        ("name = \"x\"\ntreefile = \"t.toml\"\n[[partitions]]\nlabel = \"bad\\nlabel\"\ntype = \"root\"\n", "m.toml:3: key `partitions.label`"),
        ("name = \"x\"\ntreefile = \"t.toml\"\n[[partitions]]\nlabel = \"a-partition-name-longer-than-36-chars\"\ntype = \"root\"\n", "m.toml:3: key `partitions.label`"),
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
