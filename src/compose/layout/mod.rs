//! Turn an installed Debian root into OSTree's layout, and back.
//!
//! Every file operation goes through a [`cap_std::fs::Dir`] opened on the root, so a symlink shipped
//! in a package (say `/etc/foo -> /etc`) can never make cairn write outside the tree.
//!
//! The rules: kernel and initramfs in `/usr/lib/modules/$kver/`; `/etc` moved to `/usr/etc`; `/var`
//! emptied, with a tmpfiles.d entry for every directory and symlink packages put there; the dpkg
//! database kept at `/usr/lib/sysimage/dpkg`; `/home`, `/root`, `/opt`, `/srv`, `/mnt` as links
//! into `/var` (both in [`var`]); no device nodes, machine-id, SSH host keys, apt lists, caches or
//! logs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, Permissions, PermissionsExt};
use cap_std_ext::dirext::CapStdExtDirExt;

mod var;

/// Where the dpkg database lives in the commit.
pub const DPKG_DB: &str = "usr/lib/sysimage/dpkg";
/// The tmpfiles.d file cairn writes for `/var`.
pub const VAR_TMPFILES: &str = "usr/lib/tmpfiles.d/cairn-var.conf";
/// Unit that makes SSH host keys on first boot.
const SSH_KEYGEN_UNIT: &str = "usr/lib/systemd/system/cairn-ssh-keygen.service";

/// Open a root directory with capabilities confined to it.
pub fn open_root(path: &Path) -> Result<Dir> {
    Dir::open_ambient_dir(path, ambient_authority())
        .with_context(|| format!("opening root {}", path.display()))
}

/// The kernel version installed in the root (exactly one is supported).
pub fn kernel_version(root: &Dir) -> Result<String> {
    let mut found = Vec::new();
    if let Ok(entries) = root.read_dir("usr/lib/modules") {
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if root.exists(format!("boot/vmlinuz-{name}"))
                || root.exists(format!("usr/lib/modules/{name}/vmlinuz"))
            {
                found.push(name);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no kernel in the tree: add a kernel package (e.g. linux-image-cloud-amd64) to `packages`"),
        _ => bail!("more than one kernel in the tree ({}); keep one", found.join(", ")),
    }
}

fn remove_any(root: &Dir, path: &str) -> Result<()> {
    root.remove_all_optional(path)
        .with_context(|| format!("removing /{path}"))?;
    Ok(())
}

fn empty_dir(root: &Dir, path: &str) -> Result<()> {
    if let Ok(entries) = root.read_dir(path) {
        for e in entries {
            let e = e?;
            remove_any(root, &format!("{path}/{}", e.file_name().to_string_lossy()))?;
        }
    }
    Ok(())
}

/// Remove every file and symlink below `path`, keeping the directories.
fn remove_files_below(root: &Dir, path: &Path) -> Result<()> {
    let Ok(entries) = root.read_dir(path) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let p = path.join(e.file_name());
        if root.symlink_metadata(&p)?.is_dir() {
            remove_files_below(root, &p)?;
        } else {
            root.remove_file(&p)
                .with_context(|| format!("removing /{}", p.display()))?;
        }
    }
    Ok(())
}

/// Convert an installed root to OSTree's layout.
pub fn to_ostree(root: &Dir, kver: &str) -> Result<()> {
    kernel_into_modules(root, kver)?;
    drop_host_state(root)?;
    dpkg_into_usr(root)?;
    drop_caches_and_logs(root)?;
    var::links_into_var(root)?;
    var::as_tmpfiles(root)?;
    // /etc → /usr/etc.
    if root.exists("usr/etc") {
        bail!("the tree already has /usr/etc; cannot move /etc there");
    }
    root.rename("etc", root, "usr/etc")?;
    mount_points(root)?;
    check_no_special_files(root, Path::new("."))
}

/// The kernel and initramfs in `/usr/lib/modules/$kver/`, nothing in `/boot`.
fn kernel_into_modules(root: &Dir, kver: &str) -> Result<()> {
    let moddir = format!("usr/lib/modules/{kver}");
    let vmlinuz = format!("{moddir}/vmlinuz");
    if !root.exists(&vmlinuz) {
        root.rename(format!("boot/vmlinuz-{kver}"), root, &vmlinuz)
            .with_context(|| format!("moving the kernel to /{vmlinuz}"))?;
    }
    if !root.exists(format!("{moddir}/initramfs.img")) {
        bail!("no initramfs at /{moddir}/initramfs.img");
    }
    empty_dir(root, "boot")?;
    for l in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        remove_any(root, l)?;
    }
    Ok(())
}

/// Host-specific and non-reproducible state goes: machine-id, hostname, backups of the account
/// files, SSH host keys (made on the node's first boot instead).
fn drop_host_state(root: &Dir) -> Result<()> {
    for f in [
        "etc/machine-id",
        "var/lib/dbus/machine-id",
        "etc/hostname",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid-",
        "etc/subgid-",
        "etc/.pwd.lock",
    ] {
        remove_any(root, f)?;
    }
    // An empty machine-id: systemd writes a new one on the node's first boot, without treating
    // it as a "first boot" that would apply the distribution's presets (Debian's enable every
    // unit, so chrony-wait and the like would start on every node though no package enabled them).
    root.write("etc/machine-id", b"")?;
    root.write("etc/resolv.conf", b"")?;
    if let Ok(entries) = root.read_dir("etc/ssh") {
        for e in entries {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") {
                remove_any(root, &format!("etc/ssh/{n}"))?;
            }
        }
        if root.exists("usr/sbin/sshd") {
            install_ssh_keygen(root)?;
        }
    }
    Ok(())
}

/// The dpkg database moves under /usr, without dpkg's backup and lock files.
fn dpkg_into_usr(root: &Dir) -> Result<()> {
    if !root.exists("var/lib/dpkg") {
        return Ok(());
    }
    root.create_dir_all("usr/lib/sysimage")?;
    remove_any(root, DPKG_DB)?;
    root.rename("var/lib/dpkg", root, DPKG_DB)?;
    // They say nothing about the tree.
    for f in [
        "status-old",
        "available-old",
        "diversions-old",
        "statoverride-old",
        "lock",
        "lock-frontend",
        "triggers/Lock",
    ] {
        remove_any(root, &format!("{DPKG_DB}/{f}"))?;
    }
    Ok(())
}

/// apt's lists, /var/tmp, logs and caches go, but not the directories packages made for them
/// (nginx does not start without /var/log/nginx): they become tmpfiles.d entries like the rest
/// of /var.
fn drop_caches_and_logs(root: &Dir) -> Result<()> {
    for d in ["var/lib/apt/lists", "var/tmp"] {
        empty_dir(root, d)?;
    }
    for d in ["var/cache", "var/log"] {
        remove_files_below(root, Path::new(d))?;
    }
    Ok(())
}

/// API filesystems and mount points: empty, `/tmp` sticky, `/media` a link into `/run`,
/// `/sysroot` and the `/ostree` link into it.
fn mount_points(root: &Dir) -> Result<()> {
    remove_any(root, "media")?;
    root.symlink("run/media", "media")?;
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        empty_dir(root, d)?;
        root.create_dir_all(d)?;
    }
    root.set_permissions("tmp", Permissions::from_mode(0o1777))?;
    root.create_dir_all("sysroot")?;
    remove_any(root, "ostree")?;
    root.symlink("sysroot/ostree", "ostree")?;
    Ok(())
}

fn check_no_special_files(root: &Dir, rel: &Path) -> Result<()> {
    for e in root.read_dir(rel)? {
        let e = e?;
        let path = rel.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            check_no_special_files(root, &path)?;
        } else if !ft.is_file() && !ft.is_symlink() {
            bail!(
                "/{} is neither a file, a directory nor a symlink (OSTree cannot commit it); \
                 remove it in a postprocess script",
                path.display()
            );
        }
    }
    Ok(())
}

fn install_ssh_keygen(root: &Dir) -> Result<()> {
    let unit = "[Unit]\n\
        Description=Generate SSH host keys on first boot (cairn)\n\
        Before=ssh.service\n\
        ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n\
        [Service]\n\
        Type=oneshot\n\
        ExecStart=/usr/bin/ssh-keygen -A\n\
        RemainAfterExit=yes\n\n\
        [Install]\n\
        WantedBy=multi-user.target ssh.service\n";
    root.create_dir_all("usr/lib/systemd/system")?;
    root.write(SSH_KEYGEN_UNIT, unit)?;
    for wants in [
        "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/ssh.service.wants",
    ] {
        root.create_dir_all(wants)?;
        let link = format!("{wants}/cairn-ssh-keygen.service");
        remove_any(root, &link)?;
        root.symlink(
            "../../../../usr/lib/systemd/system/cairn-ssh-keygen.service",
            &link,
        )
        .with_context(|| format!("enabling cairn-ssh-keygen.service in /{wants}"))?;
    }
    Ok(())
}

/// Undo [`to_ostree`] on a checkout, so that dpkg and apt can work on it again (for a layer that
/// starts from its parent's commit).
pub fn from_ostree(root: &Dir) -> Result<()> {
    if root.exists("usr/etc") {
        remove_any(root, "etc")?;
        root.rename("usr/etc", root, "etc")?;
    }
    root.create_dir_all("var/lib")?;
    if root.exists(DPKG_DB) {
        root.rename(DPKG_DB, root, "var/lib/dpkg")?;
    }
    for d in [
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "var/lib/apt/lists/partial",
        "var/tmp",
    ] {
        root.create_dir_all(d)?;
    }
    root.set_permissions("var/tmp", Permissions::from_mode(0o1777))?;
    // Re-create what the tmpfiles.d entries describe, so maintainer scripts find it.
    if let Ok(conf) = root.read_to_string(VAR_TMPFILES) {
        for line in conf.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 2 && f[0] == "d" {
                let p = f[1].trim_start_matches('/');
                if !root.exists(p) {
                    root.create_dir_all(p)?;
                }
            }
        }
    }
    Ok(())
}

/// Copy a host file into the root at `dest` (absolute), creating parent directories, keeping
/// the executable bit.
pub fn copy_into(root: &Dir, src: &Path, dest: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let rel = dest.trim_start_matches('/');
    let data = fs_err::read(src).with_context(|| format!("reading {}", src.display()))?;
    let mode = fs_err::metadata(src)?.permissions().mode();
    if let Some(parent) = Path::new(rel).parent() {
        if !parent.as_os_str().is_empty() {
            root.create_dir_all(parent)?;
        }
    }
    // A directory in the way goes; a file or symlink there is replaced by the rename.
    if root.symlink_metadata(rel).is_ok_and(|m| m.is_dir()) {
        remove_any(root, rel)?;
    }
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    root.atomic_write_with_perms(rel, data, Permissions::from_mode(mode))
        .with_context(|| format!("writing {dest} in the tree"))?;
    Ok(())
}

/// Remove a path (relative or absolute) from the root; a missing path is fine.
pub fn remove_path(root: &Dir, path: &str) -> Result<()> {
    remove_any(root, path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for p in [
            "boot",
            "etc/ssh",
            "usr/lib/modules/6.1.0-test",
            "var/lib/dpkg/info",
            "var/log/apt",
            "var/log/nginx",
            "var/cache/apt",
            "var/lib/systemd",
            "var/spool/cron",
            "home",
            "root",
            "opt",
            "srv",
            "mnt",
            "media",
            "dev",
            "proc",
            "sys",
            "run/lock",
            "tmp",
        ] {
            fs::create_dir_all(r.join(p)).unwrap();
        }
        fs::write(r.join("boot/vmlinuz-6.1.0-test"), b"kernel").unwrap();
        fs::write(
            r.join("usr/lib/modules/6.1.0-test/initramfs.img"),
            b"initrd",
        )
        .unwrap();
        fs::write(r.join("etc/machine-id"), b"abc\n").unwrap();
        fs::write(r.join("etc/hostname"), b"buildhost\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), b"secret").unwrap();
        fs::write(r.join("var/lib/dpkg/status"), b"Package: x\n").unwrap();
        fs::write(r.join("var/log/apt/history.log"), b"log").unwrap();
        fs::write(r.join("root/.bashrc"), b"x").unwrap();
        fs::set_permissions(
            r.join("root"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        fs::create_dir_all(r.join("home/ops")).unwrap();
        std::os::unix::fs::symlink("../run/lock", r.join("var/lock")).unwrap();
        std::os::unix::fs::symlink("/etc/x", r.join("vmlinuz")).unwrap();
        d
    }

    #[test]
    fn converts_to_ostree_layout() {
        let d = fake_root();
        let root = open_root(d.path()).unwrap();
        assert_eq!(kernel_version(&root).unwrap(), "6.1.0-test");
        to_ostree(&root, "6.1.0-test").unwrap();
        let r = d.path();
        assert_eq!(
            fs::read(r.join("usr/lib/modules/6.1.0-test/vmlinuz")).unwrap(),
            b"kernel"
        );
        assert!(fs::read_dir(r.join("boot")).unwrap().next().is_none());
        assert!(r.join("usr/etc").is_dir() && !r.join("etc").exists());
        assert_eq!(fs::read(r.join("usr/etc/machine-id")).unwrap(), b"");
        assert!(!r.join("usr/etc/hostname").exists());
        assert!(!r.join("usr/etc/ssh/ssh_host_ed25519_key").exists());
        assert!(
            fs::read_dir(r.join("var")).unwrap().next().is_none(),
            "/var is empty"
        );
        assert!(r.join("usr/lib/sysimage/dpkg/status").is_file());
        for (l, t) in [
            ("home", "var/home"),
            ("root", "var/roothome"),
            ("opt", "var/opt"),
            ("ostree", "sysroot/ostree"),
        ] {
            assert_eq!(fs::read_link(r.join(l)).unwrap(), PathBuf::from(t), "{l}");
        }
        let tmpfiles = fs::read_to_string(r.join(VAR_TMPFILES)).unwrap();
        assert!(tmpfiles.contains("d /var/spool/cron 0755"), "{tmpfiles}");
        // Package directories for logs survive as entries; the logs themselves do not.
        assert!(tmpfiles.contains("d /var/log/nginx 0755"), "{tmpfiles}");
        assert!(tmpfiles.contains("d /var/log/apt 0755"), "{tmpfiles}");
        assert!(!tmpfiles.contains("history.log"), "{tmpfiles}");
        assert!(
            tmpfiles.contains("L /var/lock - - - - ../run/lock"),
            "{tmpfiles}"
        );
        assert!(tmpfiles.contains("d /var/roothome 0700"), "{tmpfiles}");
        assert!(
            tmpfiles.contains("d /var/home/ops 0755"),
            "homes move along: {tmpfiles}"
        );
        assert!(!tmpfiles.contains("history.log"));
        assert!(!r.join("vmlinuz").exists());
    }

    #[test]
    fn refuses_device_nodes_and_round_trips() {
        let d = fake_root();
        let root = open_root(d.path()).unwrap();
        to_ostree(&root, "6.1.0-test").unwrap();
        from_ostree(&root).unwrap();
        assert!(d.path().join("etc").is_dir());
        assert!(d.path().join("var/lib/dpkg/status").is_file());
        assert!(d.path().join("var/spool/cron").is_dir());
        // A fifo cannot be committed.
        nix::unistd::mkfifo(&d.path().join("usr/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = check_no_special_files(&root, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/usr/fifo"), "{err}");
    }

    #[test]
    fn copy_into_cannot_escape_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("usr")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc")).unwrap();
        let src = d.path().join("src.conf");
        fs::write(&src, b"x").unwrap();
        let root = open_root(d.path()).unwrap();
        assert!(copy_into(&root, &src, "/etc/evil.conf").is_err());
        assert!(!outside.path().join("evil.conf").exists());
    }
}
