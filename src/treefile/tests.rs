use super::*;
use std::fs;

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    p
}

fn err(dir: &Path, name: &str) -> String {
    format!("{:#}", load(&dir.join(name)).unwrap_err())
}

const BASE: &str = r#"
ref = "test/${basearch}/base"
releasever = "bookworm"
packages = ["systemd", "openssh-server"]
units = ["ssh.service"]
automatic-version-prefix = "1"
"#;

#[test]
fn parses_base() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    let t = load(&d.path().join("base.toml")).unwrap();
    assert_eq!(t.ref_, format!("test/{}/base", basearch()));
    assert_eq!(t.all_packages(), vec!["openssh-server", "systemd"]);
    assert!(!t.recommends());
    assert!(t.documentation());
    assert!(t.parent.is_none());
}

#[test]
fn fragment_include_concatenates_and_overrides() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "frag.toml",
        "packages = [\"curl\"]\ndefault-target = \"graphical.target\"\n",
    );
    write(
        d.path(),
        "top.toml",
        "include = \"frag.toml\"\nref = \"a/b\"\nreleasever = \"bookworm\"\npackages = [\"vim\"]\ndefault-target = \"multi-user.target\"\n",
    );
    let t = load(&d.path().join("top.toml")).unwrap();
    assert_eq!(t.all_packages(), vec!["curl", "vim"]);
    assert_eq!(t.default_target(), Some("multi-user.target"));
    assert!(
        t.parent.is_none(),
        "a fragment without a ref is merged, not layered"
    );
}

#[test]
fn include_with_ref_is_a_parent_layer() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    write(
        d.path(),
        "child.toml",
        "include = [\"base.toml\"]\nref = \"test/child\"\npackages = [\"nginx\"]\n",
    );
    let t = load(&d.path().join("child.toml")).unwrap();
    let parent = t.parent.as_ref().expect("parent layer");
    assert_eq!(parent.ref_, format!("test/{}/base", basearch()));
    assert_eq!(t.keys.packages.len(), 1);
    assert_eq!(t.all_packages(), vec!["nginx", "openssh-server", "systemd"]);
    assert_eq!(t.releasever, "bookworm", "inherited from the parent");
    assert_eq!(t.automatic_version_prefix(), Some("1"));
}

#[test]
fn layer_cannot_change_parent_settings() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    write(
        d.path(),
        "child.toml",
        "include = [\"base.toml\"]\nref = \"test/child\"\nrecommends = true\n",
    );
    let e = err(d.path(), "child.toml");
    assert!(
        e.contains("child.toml:3") && e.contains("`recommends`"),
        "{e}"
    );
}

#[test]
fn invalid_toml_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "bad.toml", "ref = \"a\"\npackages = [\"x\"\n");
    let e = err(d.path(), "bad.toml");
    assert!(e.contains("bad.toml") && e.contains("line"), "{e}");
}

#[test]
fn unknown_key_is_an_error_with_line() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "bad.toml",
        "ref = \"a\"\nreleasever = \"bookworm\"\npackagez = [\"x\"]\n",
    );
    let e = err(d.path(), "bad.toml");
    assert!(
        e.contains("bad.toml") && e.contains("packagez") && e.contains("line 3"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "bad.toml",
        "ref = \"a\"\nreleasever = \"bookworm\"\nrecommends = \"yes\"\n",
    );
    let e = err(d.path(), "bad.toml");
    assert!(e.contains("bad.toml") && e.contains("recommends"), "{e}");
}

#[test]
fn include_cycle_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.toml",
        "include = [\"b.toml\"]\nref = \"x/a\"\nreleasever = \"bookworm\"\n",
    );
    write(d.path(), "b.toml", "include = [\"a.toml\"]\n");
    let e = err(d.path(), "a.toml");
    assert!(
        e.contains("include cycle") && e.contains("a.toml") && e.contains("b.toml"),
        "{e}"
    );
}

#[test]
fn missing_include_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.toml",
        "ref = \"x/a\"\nreleasever = \"bookworm\"\ninclude = [\"nope.toml\"]\n",
    );
    let e = err(d.path(), "a.toml");
    assert!(
        e.contains("a.toml:3") && e.contains("nope.toml") && e.contains("`include`"),
        "{e}"
    );
}

#[test]
fn missing_add_files_source_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.toml",
        "ref = \"x/a\"\nreleasever = \"bookworm\"\nadd-files = [[\"nope.conf\", \"/etc/nope.conf\"]]\n",
    );
    let e = err(d.path(), "a.toml");
    assert!(
        e.contains("a.toml:3") && e.contains("add-files") && e.contains("nope.conf"),
        "{e}"
    );
}

#[test]
fn add_files_destination_outside_usr_and_etc_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "f.conf", "x");
    for dest in ["/opt/f.conf", "/usr/../var/f", "etc/relative", "/usrx/f"] {
        write(
            d.path(),
            "a.toml",
            &format!("ref = \"x/a\"\nreleasever = \"bookworm\"\n\nadd-files = [[\"f.conf\", \"{dest}\"]]\n"),
        );
        let e = err(d.path(), "a.toml");
        assert!(
            e.contains("a.toml:4") && e.contains("/usr or /etc"),
            "{dest}: {e}"
        );
    }
    write(
        d.path(),
        "ok.toml",
        "ref = \"x/a\"\nreleasever = \"bookworm\"\nadd-files = [[\"f.conf\", \"/etc/f.conf\"]]\n",
    );
    assert!(load(&d.path().join("ok.toml")).is_ok());
}

#[test]
fn missing_postprocess_script_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.toml",
        "ref = \"x/a\"\nreleasever = \"bookworm\"\npostprocess-script = \"post.sh\"\n",
    );
    let e = err(d.path(), "a.toml");
    assert!(
        e.contains("a.toml:3") && e.contains("postprocess-script"),
        "{e}"
    );
}

#[test]
fn bad_values_are_named() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("packages = [\"Bad Name\"]", "`packages`"),
        ("units = [\"sshd\"]", "`units`"),
        ("default-target = \"multi-user\"", "`default-target`"),
        (
            "automatic-version-prefix = \"1 x\"",
            "`automatic-version-prefix`",
        ),
        ("add-commit-metadata = { a = [1] }", "add-commit-metadata.a"),
    ];
    for (line, key) in cases {
        write(
            d.path(),
            "a.toml",
            &format!("ref = \"x/a\"\nreleasever = \"bookworm\"\n{line}\n"),
        );
        let e = err(d.path(), "a.toml");
        assert!(e.contains(key) && e.contains("a.toml:3"), "{line}: {e}");
    }
}

#[test]
fn missing_ref_and_bad_ref() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "releasever = \"bookworm\"\n");
    assert!(err(d.path(), "a.toml").contains("`ref` is missing"));
    write(
        d.path(),
        "a.toml",
        "ref = \"../x\"\nreleasever = \"bookworm\"\n",
    );
    assert!(err(d.path(), "a.toml").contains("not a valid OSTree ref"));
}

#[test]
fn flattened_does_not_depend_on_location() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    for d in [d1.path(), d2.path()] {
        write(d, "f.conf", "same");
        write(
            d,
            "a.toml",
            "ref = \"x/a\"\nreleasever = \"bookworm\"\nadd-files = [[\"f.conf\", \"/etc/f.conf\"]]\n",
        );
    }
    let f1 = serde_json::to_string(
        &load(&d1.path().join("a.toml"))
            .unwrap()
            .flattened()
            .unwrap(),
    )
    .unwrap();
    let f2 = serde_json::to_string(
        &load(&d2.path().join("a.toml"))
            .unwrap()
            .flattened()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(f1, f2);
    write(d2.path(), "f.conf", "changed");
    let f3 = serde_json::to_string(
        &load(&d2.path().join("a.toml"))
            .unwrap()
            .flattened()
            .unwrap(),
    )
    .unwrap();
    assert_ne!(
        f1, f3,
        "a changed add-files source changes the flattened form"
    );
}

#[test]
fn path_normalisation() {
    assert_eq!(normalize_tree_path("/etc/./a"), Some("/etc/a".into()));
    assert_eq!(normalize_tree_path("/etc/../a"), None);
    assert_eq!(normalize_tree_path("etc/a"), None);
}

#[test]
fn bad_names_are_refused_where_they_are_written() {
    let d = tempfile::tempdir().unwrap();
    let long = "x".repeat(201);
    let cases = [
        ("ref = \"\"", "`ref`"),
        ("ref = \"a/../b\"", "`ref`"),
        ("ref = \"a/\\u0007\"", "`ref`"),
        (&*format!("ref = \"{long}\""), "`ref`"),
        ("[[users]]\nname = \"../evil\"", "`users.name`"),
        ("[[users]]\nname = \"a/b\"", "`users.name`"),
        ("[[users]]\nname = \"\"", "`users.name`"),
        (
            "[[users]]\nname = \"abcdefghijklmnopqrstuvwxyz0123456789\"",
            "`users.name`",
        ),
        (
            "[[users]]\nname = \"ok\"\ngroups = [\"wh/eel\"]",
            "`users.groups`",
        ),
        ("[[groups]]\nname = \"..\"", "`groups.name`"),
        ("units = [\"../x.service\"]", "`units`"),
        ("units = [\".service\"]", "`units`"),
        ("releasever = \"book/worm\"", "`releasever`"),
    ];
    for (line, key) in cases {
        let body = if line.starts_with("ref") {
            format!("releasever = \"bookworm\"\n{line}\n")
        } else if line.starts_with("releasever") {
            format!("ref = \"x/a\"\n{line}\n")
        } else {
            format!("ref = \"x/a\"\nreleasever = \"bookworm\"\n{line}\n")
        };
        write(d.path(), "a.toml", &body);
        let e = err(d.path(), "a.toml");
        assert!(
            e.contains(key) && (e.contains("a.toml:2") || e.contains("a.toml:3")),
            "{line}: {e}"
        );
    }
}

/// One variation of every key in the key table: two values that must flatten differently.
fn variations(d: &Path) -> Vec<(&'static str, String, String)> {
    write(d, "one.conf", "one");
    write(d, "two.conf", "two");
    write(d, "one.sh", "#!/bin/sh\necho one\n");
    write(d, "two.sh", "#!/bin/sh\necho two\n");
    let v = |k: &'static str, a: &str, b: &str| (k, a.to_string(), b.to_string());
    vec![
        v(
            "include",
            "include = \"frag-a.toml\"",
            "include = \"frag-b.toml\"",
        ),
        v("ref", "ref = \"x/a\"", "ref = \"x/b\""),
        v(
            "releasever",
            "releasever = \"bookworm\"",
            "releasever = \"trixie\"",
        ),
        v(
            "repos",
            "repos = [\"deb http://a/ bookworm main\"]",
            "repos = [\"deb http://b/ bookworm main\"]",
        ),
        v("recommends", "recommends = false", "recommends = true"),
        v("node-agent", "node-agent = false", "node-agent = true"),
        v(
            "documentation",
            "documentation = false",
            "documentation = true",
        ),
        v(
            "default-target",
            "default-target = \"multi-user.target\"",
            "default-target = \"graphical.target\"",
        ),
        v(
            "automatic-version-prefix",
            "automatic-version-prefix = \"1\"",
            "automatic-version-prefix = \"2\"",
        ),
        v(
            "mutate-os-release",
            "mutate-os-release = \"12\"",
            "mutate-os-release = \"13\"",
        ),
        v(
            "add-commit-metadata",
            "add-commit-metadata = { a = 1 }",
            "add-commit-metadata = { a = 2 }",
        ),
        v("packages", "packages = [\"vim\"]", "packages = [\"curl\"]"),
        v(
            "exclude-packages",
            "exclude-packages = [\"vim\"]",
            "exclude-packages = [\"curl\"]",
        ),
        v(
            "add-files",
            "add-files = [[\"one.conf\", \"/etc/x.conf\"]]",
            "add-files = [[\"two.conf\", \"/etc/x.conf\"]]",
        ),
        v(
            "remove-files",
            "remove-files = [\"/usr/a\"]",
            "remove-files = [\"/usr/b\"]",
        ),
        v(
            "postprocess-script",
            "postprocess-script = \"one.sh\"",
            "postprocess-script = \"two.sh\"",
        ),
        v(
            "postprocess",
            "postprocess = [\"true\"]",
            "postprocess = [\"false\"]",
        ),
        v(
            "units",
            "units = [\"a.service\"]",
            "units = [\"b.service\"]",
        ),
        v(
            "initramfs-args",
            "initramfs-args = [\"--add=a\"]",
            "initramfs-args = [\"--add=b\"]",
        ),
        v(
            "users",
            "[[users]]\nname = \"ops\"",
            "[[users]]\nname = \"dev\"",
        ),
        v(
            "groups",
            "[[groups]]\nname = \"ops\"",
            "[[groups]]\nname = \"dev\"",
        ),
        v(
            "gpg-key",
            "gpg-key = \"ABCDEF0123456789\"",
            "gpg-key = \"0123456789ABCDEF\"",
        ),
    ]
}

#[test]
fn every_key_changes_the_input_hash() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "frag-a.toml", "packages = [\"vim\"]\n");
    write(d.path(), "frag-b.toml", "packages = [\"curl\"]\n");
    let vars = variations(d.path());
    // The table of variations covers every key the parser takes, and no other.
    let mut covered: Vec<&str> = vars.iter().map(|v| v.0).collect();
    let mut all: Vec<&str> = KEYS.to_vec();
    covered.sort();
    all.sort();
    assert_eq!(covered, all, "a treefile key without a variation here");
    let flat = |line: &str, key: &str| -> String {
        // Tables ([[users]]) go last; `ref` and `releasever` only where the variation lacks them.
        let mut body = String::new();
        if key != "ref" {
            body.push_str("ref = \"x/a\"\n");
        }
        if key != "releasever" {
            body.push_str("releasever = \"bookworm\"\n");
        }
        body.push_str(line);
        body.push('\n');
        write(d.path(), "t.toml", &body);
        let t = load(&d.path().join("t.toml")).unwrap_or_else(|e| panic!("{line}: {e:#}"));
        serde_json::to_string(&t.flattened().unwrap()).unwrap()
    };
    for (key, a, b) in &vars {
        if NOT_HASHED.contains(key) {
            assert_eq!(
                flat(a, key),
                flat(b, key),
                "`{key}` is not an input of the build"
            );
        } else {
            assert_ne!(
                flat(a, key),
                flat(b, key),
                "changing `{key}` leaves the input hash as it was"
            );
        }
    }
}

#[test]
fn a_layer_inherits_settings_and_keeps_its_own_lists() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    write(
        d.path(),
        "child.toml",
        "include = [\"base.toml\"]\nref = \"test/child\"\nrecommends = false\ndocumentation = true\npackages = [\"nginx\"]\n[add-commit-metadata]\nlayer = \"child\"\n",
    );
    let t = load(&d.path().join("child.toml")).unwrap();
    // Writing out the parent's own (default) settings is no change.
    assert!(!t.recommends() && t.documentation());
    assert_eq!(
        t.keys.units.len(),
        0,
        "the parent's units are in its commit"
    );
    assert_eq!(t.add_commit_metadata().len(), 1);
}

#[test]
fn gpg_key_is_inherited_by_a_layer() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "base.toml",
        &format!("{BASE}gpg-key = \"ABCDEF0123456789\"\n"),
    );
    write(
        d.path(),
        "app.toml",
        "include = [\"base.toml\"]\nref = \"test/app\"\n",
    );
    write(
        d.path(),
        "own.toml",
        "include = [\"base.toml\"]\nref = \"test/own\"\ngpg-key = \"other\"\n",
    );
    let app = load(&d.path().join("app.toml")).unwrap();
    let key = app.gpg_key().unwrap();
    assert_eq!(key.value, "ABCDEF0123456789");
    assert!(key.origin.to_string().contains("base.toml"));
    let own = load(&d.path().join("own.toml")).unwrap();
    assert_eq!(own.gpg_key().unwrap().value, "other");
    assert_eq!(own.gpg_key().unwrap().origin.line, 3);
    write(d.path(), "empty.toml", &format!("{BASE}gpg-key = \" \"\n"));
    assert!(err(d.path(), "empty.toml").contains("key `gpg-key`"));
}
