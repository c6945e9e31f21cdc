//! Layers on the first compose's base: an unknown package and a failing postprocess script
//! refused with errors that name them, and the shipped app-example layer (on blessed, on base)
//! with its diff, its SBOMs (what scanners match on, checked by the formats' validators) and the
//! files it carries.

use std::process::Command as StdCommand;

use serde_json::Value;

use super::env::Env;
use super::layout::check_layout;
use super::{World, BASE_REF};

const APP_REF: &str = "cairn/amd64/app-example";

/// Unknown package: one error naming file, line, key and package; no repo change.
pub fn an_unknown_package_is_named_by_file_line_and_key(w: &mut World) {
    let tf = w.treefiles().join("unknown.toml");
    std::fs::write(
        &tf,
        "ref = \"test/unknown\"\nreleasever = \"bookworm\"\npackages = [\n  \"systemd\",\n  \"no-such-package-cairn\",\n]\n",
    )
    .unwrap();
    let err = w.a.compose_fails(&[tf.to_str().unwrap()]);
    assert!(
        err.contains("unknown.toml:5")
            && err.contains("`packages`")
            && err.contains("no-such-package-cairn"),
        "{err}"
    );
    assert!(w.a.ostree(&["refs"]).lines().all(|l| l != "test/unknown"));
}

/// Layers: app-example composes blessed then itself, each from its parent's commit, and adds
/// its packages to base's.
pub fn a_layer_composes_on_its_parents_commit(w: &mut World) {
    let a = &w.a;
    let r = a.compose(&["treefiles/app-example.toml"]);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["skipped"], true, "base did not change");
    assert_eq!(r[1]["layer_parent"], w.c1.as_str());
    let app = r[2]["commit"].as_str().unwrap().to_string();
    check_layout(a, &app);
    let diff = a.cmd(&["diff", BASE_REF, APP_REF]).output().unwrap();
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.contains("+ nginx-light") && diff.contains("+ chrony"),
        "{diff}"
    );
    w.app = app;
}

/// The app layer's CycloneDX document.
fn cyclonedx(a: &Env) -> Value {
    let sbom = a
        .cmd(&["sbom", APP_REF, "--format", "cyclonedx"])
        .output()
        .unwrap();
    serde_json::from_slice(&sbom.stdout).unwrap()
}

/// What scanners match on: the release on every package, the source package where it differs,
/// the operating system named, licenses from the packages' copyright files.
pub fn the_sbom_names_release_source_os_and_licenses(w: &mut World) {
    let sbom = cyclonedx(&w.a);
    let components = sbom["components"].as_array().unwrap();
    assert!(components.iter().any(|c| c["name"] == "nginx-light"));
    for c in components.iter().filter(|c| c["type"] == "library") {
        let purl = c["purl"].as_str().unwrap();
        assert!(purl.ends_with("&distro=debian-12"), "{purl}");
    }
    let purl_of = |n: &str| {
        components
            .iter()
            .find(|c| c["name"] == n)
            .map(|c| c["purl"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        purl_of("libc6").contains("&upstream=glibc"),
        "{}",
        purl_of("libc6")
    );
    assert!(
        !purl_of("bash").contains("upstream="),
        "{}",
        purl_of("bash")
    );
    assert_eq!(sbom["metadata"]["component"]["type"], "operating-system");
    assert!(sbom["metadata"]["component"]["properties"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "cairn:commit" && p["value"] == w.app.as_str()));
    let licensed = components
        .iter()
        .filter(|c| c.get("licenses").is_some())
        .count();
    assert!(
        licensed * 2 > components.len(),
        "most Debian packages have machine-readable copyright files: {licensed} of {}",
        components.len()
    );
    let bash = components.iter().find(|c| c["name"] == "bash").unwrap();
    let bash_license = bash["licenses"][0]["expression"].as_str().unwrap();
    assert!(bash_license.contains("GPL-3.0-or-later"), "{bash_license}");
}

/// Both documents of a real commit (SPDX and CycloneDX) pass their formats' validators.
pub fn both_sboms_of_a_real_commit_pass_their_validators(w: &mut World) {
    let spdx_file = w.path().join("app.spdx.json");
    let cdx_file = w.path().join("app.cdx.json");
    std::fs::write(&cdx_file, cyclonedx(&w.a).to_string()).unwrap();
    let spdx = w.a.cmd(&["sbom", APP_REF]).output().unwrap();
    assert!(spdx.status.success());
    std::fs::write(&spdx_file, &spdx.stdout).unwrap();
    let v = StdCommand::new("python3")
        .arg("tests/validate_sboms.py")
        .arg(&spdx_file)
        .arg(&cdx_file)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The app layer carries its own files and blessed's, and Python's bytecode is unchecked-hash
/// (PEP 552 flags 0b01), never checked against its source again on the immutable /usr (cairn's
/// compose, src/compose/bytecode.rs).
pub fn the_app_layer_has_its_files_and_unchecked_hash_bytecode(w: &mut World) {
    let (a, app) = (&w.a, w.app.as_str());
    let page = a.ostree(&["cat", app, "/usr/libexec/cairn/version-page"]);
    assert!(page.contains("OSTREE_VERSION"));
    let sshd = a.ostree(&[
        "cat",
        app,
        "/usr/etc/ssh/sshd_config.d/10-cairn-hardening.conf",
    ]);
    assert!(sshd.contains("PasswordAuthentication no"));
    let pyc = a.ostree_bytes(&[
        "cat",
        app,
        "/usr/lib/python3/dist-packages/cloudinit/__pycache__/util.cpython-311.pyc",
    ]);
    assert_eq!(pyc[4..8], [1, 0, 0, 0], "the .pyc header flags");
}

/// A failing postprocess script: a clear error, the ref not created.
pub fn a_failing_postprocess_script_is_named_and_creates_no_ref(w: &mut World) {
    let tf = w.layer_on_base("failing", "test/failing", "echo about to fail >&2; exit 7");
    let err = w.a.compose_fails(&[tf.to_str().unwrap()]);
    assert!(
        err.contains("postprocess")
            && err.contains("exit status 7")
            && err.contains("about to fail"),
        "{err}"
    );
    assert!(w.a.ostree(&["refs"]).lines().all(|l| l != "test/failing"));
}
