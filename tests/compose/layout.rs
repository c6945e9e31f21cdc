//! The layout rules every composed commit follows, read back through `ostree ls` and `cat`
//! (symlinks into /var, /etc moved to /usr/etc, an empty /var and /boot, the kernel and an
//! initramfs with prepare-root in the modules directory, the metadata cairn writes).

use std::process::Command as StdCommand;

use super::env::Env;

/// The layout rules of the commit, read back through `ostree ls`.
pub fn check_layout(e: &Env, commit: &str) {
    let top = e.ostree(&["ls", commit, "/"]);
    for (link, target) in [
        ("/home", "var/home"),
        ("/root", "var/roothome"),
        ("/opt", "var/opt"),
        ("/srv", "var/srv"),
        ("/mnt", "var/mnt"),
        ("/ostree", "sysroot/ostree"),
    ] {
        assert!(
            top.contains(&format!("{link} -> {target}")),
            "{link}: {top}"
        );
    }
    assert!(!top.contains(" /etc\n"), "/etc is moved to /usr/etc: {top}");
    // An empty machine-id: made on the node's first boot, with no first-boot presets.
    assert_eq!(e.ostree(&["cat", commit, "/usr/etc/machine-id"]), "");
    let var = e.ostree(&["ls", "-R", commit, "/var"]);
    assert_eq!(var.lines().count(), 1, "/var is empty: {var}");
    let all = e.ostree(&["ls", "-R", commit, "/"]);
    for line in all.lines() {
        let kind = line.chars().next().unwrap_or(' ');
        assert!("-dl".contains(kind), "only files, dirs and links: {line}");
    }
    for forbidden in [
        "/usr/etc/ssh/ssh_host_",
        "/var/lib/apt/lists/",
        "/var/log/",
        "/var/cache/apt/archives/",
    ] {
        assert!(
            !all.contains(forbidden),
            "{forbidden} must not be in the commit"
        );
    }
    let kver = e
        .meta(commit, "ostree.linux")
        .trim_matches('\'')
        .to_string();
    let moddir = e.ostree(&["ls", commit, &format!("/usr/lib/modules/{kver}")]);
    assert!(
        moddir.contains("/vmlinuz") && moddir.contains("/initramfs.img"),
        "{moddir}"
    );
    assert_eq!(
        e.ostree(&["ls", "-R", commit, "/boot"]).lines().count(),
        1,
        "/boot is empty"
    );
    assert!(all.contains("/usr/lib/sysimage/dpkg/status"));
    assert!(all.contains("/usr/lib/tmpfiles.d/cairn-var.conf"));
    // The initramfs carries OSTree's prepare-root (dracut's ostree module).
    let out = StdCommand::new("sh")
        .arg("-c")
        .arg(format!(
            "ostree --repo={} cat {commit} /usr/lib/modules/{kver}/initramfs.img | zcat",
            e.repo.display()
        ))
        .output()
        .unwrap();
    let names = cpio_names(&out.stdout);
    assert!(names.len() > 100, "initramfs lists {} files", names.len());
    assert!(
        names
            .iter()
            .any(|n| n == "usr/lib/ostree/ostree-prepare-root"),
        "no ostree-prepare-root in the initramfs"
    );
    for key in [
        "version",
        "ostree.bootable",
        "ostree.linux",
        "cairn.inputhash",
        "cairn.packages",
        "cairn.sbom.spdx",
    ] {
        assert!(!e.meta(commit, key).is_empty(), "metadata {key}");
    }
}

/// File names in a newc cpio archive.
fn cpio_names(data: &[u8]) -> Vec<String> {
    let hex =
        |b: &[u8]| usize::from_str_radix(std::str::from_utf8(b).unwrap_or("0"), 16).unwrap_or(0);
    let mut names = Vec::new();
    let mut i = 0;
    while i + 110 <= data.len() && (&data[i..i + 6] == b"070701" || &data[i..i + 6] == b"070702") {
        let filesize = hex(&data[i + 54..i + 62]);
        let namesize = hex(&data[i + 94..i + 102]);
        let name = String::from_utf8_lossy(&data[i + 110..i + 110 + namesize.saturating_sub(1)])
            .into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
        let j = (i + 110 + namesize + 3) & !3;
        i = (j + filesize + 3) & !3;
    }
    names
}
