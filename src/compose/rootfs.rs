//! Build the root filesystem: install the resolved packages, configure, postprocess, initramfs.
//!
//! Installation is `mmdebstrap --variant=custom` over exactly the resolved `.deb` files from the
//! cache, so nothing is resolved or downloaded a second time and the package set is exact.
//! Commands that run inside the tree go through `chroot` with `/proc`, `/sys` and `/dev` mounted
//! by a guard; postprocess scripts run in a network namespace of their own, without network.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cap_std::fs::Dir;
use cap_std_ext::dirext::CapStdExtDirExt;

use crate::base::cmd::Cmd;
use crate::base::tmp::ChrootMounts;
use crate::compose::apt::{AptEnv, Package};
use crate::compose::layout;
use crate::treefile::{Keys, Treefile};

/// Environment every command in the tree gets.
fn in_tree(cmd: Cmd, epoch: i64) -> Cmd {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("INITRD", "No")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env_remove("APT_CONFIG")
}

fn chroot(root: &Path) -> Cmd {
    Cmd::new("chroot").arg(root)
}

/// Install `pkgs` into the empty directory `root` with mmdebstrap.
pub fn bootstrap(
    tf: &Treefile,
    apt: &AptEnv,
    pkgs: &[Package],
    root: &Path,
    epoch: i64,
) -> Result<()> {
    let (setup, cleanup) = deb_hooks(apt, pkgs, root)?;
    let mut cmd = Cmd::new("mmdebstrap")
        .args([
            "--mode=root",
            "--variant=custom",
            "--format=directory",
            "--skip=update",
        ])
        .arg("--dpkgopt=force-unsafe-io")
        .arg(format!("--setup-hook={setup}"))
        .arg(format!("--customize-hook={cleanup}"))
        .arg(format!(
            "--aptopt=APT::Install-Recommends \"{}\"",
            tf.recommends()
        ));
    if !tf.documentation() {
        for o in [
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/info/*",
        ] {
            cmd = cmd.arg(format!("--dpkgopt={o}"));
        }
    }
    for p in pkgs {
        cmd = cmd.arg(format!("--include={}", apt.deb_path(p).display()));
    }
    cmd = cmd.arg(&tf.releasever).arg(root);
    for s in apt.source_paths() {
        cmd = cmd.arg(s);
    }
    in_tree(cmd, epoch)
        .run()
        .context("installing packages with mmdebstrap")?;
    Ok(())
}

/// mmdebstrap's setup and customize hooks that make the `.deb` files visible inside the chroot
/// at their host path, then take them away again.
fn deb_hooks(apt: &AptEnv, pkgs: &[Package], root: &Path) -> Result<(String, String)> {
    // Absolute already: AptEnv resolves the cache path.
    let debs = apt.debs_dir().to_path_buf();
    let q = |p: &Path| crate::base::cmd::shell_quote(&p.display().to_string());
    // mmdebstrap wants the .debs visible inside the chroot at their host path. The setup hook
    // notes every directory it has to create for them (deepest first), then hardlinks (or, across
    // filesystems, copies) them there; the customize hook removes exactly those files, and each
    // noted directory that is empty and that no package owns.
    let note = root
        .parent()
        .ok_or_else(|| anyhow::anyhow!("internal: root has no parent"))?
        .join("debs-dirs");
    let files: Vec<String> = pkgs.iter().map(|p| q(&apt.deb_path(p))).collect();
    let setup = format!(
        "set -e; d={d}; : > {note}; x=$d; \
         while [ ! -e \"$1$x\" ]; do printf '%s\\n' \"$x\" >> {note}; x=$(dirname \"$x\"); done; \
         mkdir -p \"$1$d\"; cp -al {f} \"$1$d/\" 2>/dev/null || cp -a {f} \"$1$d/\"",
        d = q(&debs),
        note = q(&note),
        f = files.join(" ")
    );
    let inside: Vec<String> = pkgs
        .iter()
        .map(|p| format!("\"$1\"{}", q(&debs.join(p.deb_file_name()))))
        .collect();
    let cleanup = format!(
        "rm -f {inside}; while read -r x; do \
         grep -qxF \"$x\" \"$1\"/var/lib/dpkg/info/*.list 2>/dev/null || rmdir \"$1$x\" 2>/dev/null || true; \
         done < {note}",
        inside = inside.join(" "),
        note = q(&note)
    );
    Ok((setup, cleanup))
}

/// Install `new` packages into an existing tree (a layer on its parent's checkout) with apt
/// inside the tree, from the cached `.deb` files.
pub fn install_layer(apt: &AptEnv, new: &[Package], root: &Path, epoch: i64) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let archives = root.join("var/cache/apt/archives");
    fs_err::create_dir_all(&archives)?;
    let mut inside = Vec::new();
    for p in new {
        let src = apt.deb_path(p);
        let dst = archives.join(p.deb_file_name());
        if fs_err::hard_link(&src, &dst).is_err() {
            fs_err::copy(&src, &dst)
                .with_context(|| format!("copying {} into the tree", src.display()))?;
        }
        inside.push(format!("/var/cache/apt/archives/{}", p.deb_file_name()));
    }
    let policy = root.join("usr/sbin/policy-rc.d");
    fs_err::write(&policy, "#!/bin/sh\nexit 101\n")?;
    fs_err::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = {
        let _mounts = ChrootMounts::new(root)?;
        in_tree(chroot(root), epoch)
            .args([
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "--no-download",
            ])
            .args(["-o", "Dpkg::Options::=--force-unsafe-io"])
            .args(&inside)
            .run()
            .context("installing the layer's packages with apt in the tree")
    };
    fs_err::remove_file(&policy)?;
    for i in &inside {
        let _ = fs_err::remove_file(root.join(i.trim_start_matches('/')));
    }
    result.map(|_| ())
}

/// Apply a layer's files, accounts, units and target (before postprocess scripts).
pub fn configure(layer: &Keys, root_path: &Path, root: &Dir, epoch: i64) -> Result<()> {
    accounts(layer, root_path, epoch)?;
    for af in &layer.add_files {
        layout::copy_into(root, &af.value.src, &af.value.dest)
            .with_context(|| format!("{}: key `add-files`", af.origin))?;
    }
    for r in &layer.remove_files {
        layout::remove_path(root, &r.value)
            .with_context(|| format!("{}: key `remove-files`", r.origin))?;
    }
    for u in &layer.units {
        in_tree(chroot(root_path), epoch)
            .args(["systemctl", "enable", &u.value])
            .run()
            .with_context(|| format!("{}: key `units`: enabling {}", u.origin, u.value))?;
    }
    if let Some(n) = layer.node_agent.as_ref().filter(|n| n.value.0) {
        install_node_agent(root_path, root, epoch)
            .with_context(|| format!("{}: key `node-agent`", n.origin))?;
    }
    Ok(())
}

/// A layer's `groups`, then its `users` (locked: no password until provisioning gives a key).
fn accounts(layer: &Keys, root_path: &Path, epoch: i64) -> Result<()> {
    for g in &layer.groups {
        let (g, at) = (&g.value, &g.origin);
        let mut c = chroot(root_path).arg("groupadd");
        if let Some(gid) = g.gid {
            c = c.arg("--gid").arg(gid.to_string());
        }
        if g.system {
            c = c.arg("--system");
        }
        in_tree(c.arg(&g.name), epoch)
            .run()
            .with_context(|| format!("{at}: key `groups`: creating group {}", g.name))?;
    }
    for u in &layer.users {
        let (u, at) = (&u.value, &u.origin);
        let mut c = chroot(root_path).arg("useradd");
        if let Some(uid) = u.uid {
            c = c.arg("--uid").arg(uid.to_string());
        }
        if let Some(g) = &u.group {
            c = c.arg("--gid").arg(g);
        } else {
            c = c.arg("--user-group");
        }
        if !u.groups.is_empty() {
            c = c.arg("--groups").arg(u.groups.join(","));
        }
        if let Some(h) = &u.home {
            c = c.arg("--home-dir").arg(h);
        }
        c = c
            .arg("--shell")
            .arg(u.shell.as_deref().unwrap_or("/bin/bash"));
        if let Some(cm) = &u.comment {
            c = c.arg("--comment").arg(cm);
        }
        if u.system {
            c = c.arg("--system");
        } else {
            // Under /home, which becomes /var/home: recreated at boot from tmpfiles.d.
            c = c.arg("--create-home");
        }
        // No password: the account is locked until provisioning gives it a key.
        in_tree(c.arg(&u.name), epoch)
            .run()
            .with_context(|| format!("{at}: key `users`: creating user {}", u.name))?;
    }
    Ok(())
}

/// `node-agent`: this cairn as `/usr/bin/cairn`, the node's units in `/usr/lib/systemd/system`,
/// enabled; then `cairn --version` run in the tree, so that a binary the tree cannot run (a
/// library missing) fails the compose, not the node.
fn install_node_agent(root_path: &Path, root: &Dir, epoch: i64) -> Result<()> {
    use cap_std::fs::{Permissions, PermissionsExt};
    let exe = crate::treefile::keys::node_binary()?;
    layout::copy_into(root, &exe, "/usr/bin/cairn")?;
    root.create_dir_all("usr/lib/systemd/system")?;
    for u in crate::node::units::UNITS {
        root.atomic_write_with_perms(
            format!("usr/lib/systemd/system/{}", u.name),
            u.text,
            Permissions::from_mode(0o644),
        )
        .with_context(|| format!("writing {}", u.name))?;
    }
    for name in crate::node::units::enabled() {
        in_tree(chroot(root_path), epoch)
            .args(["systemctl", "enable", name])
            .run()
            .with_context(|| format!("enabling {name}"))?;
    }
    in_tree(chroot(root_path), epoch)
        .args(["/usr/bin/cairn", "--version"])
        .run()
        .context("running /usr/bin/cairn in the tree")?;
    Ok(())
}

/// Settings that apply to the whole tree once, after all layers: default target, os-release.
pub fn finish(
    tf: &Treefile,
    root_path: &Path,
    root: &Dir,
    version: &str,
    epoch: i64,
) -> Result<()> {
    if let Some(t) = tf.default_target() {
        in_tree(chroot(root_path), epoch)
            .args(["systemctl", "set-default", t])
            .run()
            .with_context(|| format!("{}: key `default-target`: {t}", tf.path.display()))?;
    }
    if let Some(from) = tf.mutate_os_release() {
        mutate_os_release(root, from, version)
            .with_context(|| format!("{}: key `mutate-os-release`", tf.path.display()))?;
    }
    Ok(())
}

/// Put the compose version into os-release, as rpm-ostree's `mutate-os-release` does.
fn mutate_os_release(root: &Dir, from: &str, version: &str) -> Result<()> {
    // /etc/os-release is a link to /usr/lib/os-release on Debian.
    let path = "usr/lib/os-release";
    let text = root
        .read_to_string(path)
        .context("reading /usr/lib/os-release")?;
    let mut out = String::new();
    let mut found = false;
    for line in text.lines() {
        if line.starts_with("VERSION=") && line.contains(from) {
            found = true;
            out.push_str(&line.replacen(from, &format!("{from} ({version})"), 1));
        } else if line.starts_with("OSTREE_VERSION=") {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        bail!("VERSION in /usr/lib/os-release does not contain {from:?}");
    }
    out.push_str(&format!("OSTREE_VERSION='{version}'\n"));
    root.atomic_write(path, out)
        .context("writing /usr/lib/os-release")?;
    Ok(())
}

/// Run postprocess scripts (files, then inline) inside the tree, without network. A failing
/// script is named by its own path (or its place in the treefile), not by the copy that ran.
pub fn postprocess(layer: &Keys, root_path: &Path, epoch: i64) -> Result<()> {
    let scripts: Vec<(String, Vec<u8>)> = layer
        .postprocess_script
        .iter()
        .map(|s| {
            Ok((
                format!(
                    "postprocess script {} ({}: key `postprocess-script`)",
                    s.value.0.display(),
                    s.origin
                ),
                fs_err::read(&s.value.0)?,
            ))
        })
        .chain(layer.postprocess.iter().enumerate().map(|(i, s)| {
            Ok((
                format!(
                    "postprocess script {} ({}: key `postprocess`)",
                    i + 1,
                    s.origin
                ),
                format!("#!/bin/sh\nset -eu\n{}\n", s.value).into_bytes(),
            ))
        }))
        .collect::<Result<_>>()?;
    if scripts.is_empty() {
        return Ok(());
    }
    let _mounts = ChrootMounts::new(root_path)?;
    for (what, body) in scripts {
        let rel = "tmp/cairn-postprocess";
        let host_path = root_path.join(rel);
        fs_err::write(&host_path, &body)?;
        fs_err::set_permissions(
            &host_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let r = in_tree(Cmd::new("unshare"), epoch)
            .args(["--net", "--"])
            .arg("chroot")
            .arg(root_path)
            .arg(format!("/{rel}"))
            .run_status();
        let _ = fs_err::remove_file(&host_path);
        let (status, out) = r.with_context(|| format!("could not run {what}"))?;
        if !status.success() {
            bail!(
                "{what} failed: {}",
                crate::base::cmd::failure_message("the script", status, &out.stderr)
            );
        }
    }
    Ok(())
}

/// Build the initramfs with dracut's OSTree module into `/usr/lib/modules/$kver/initramfs.img`.
pub fn initramfs(tf_args: &[String], root_path: &Path, kver: &str, epoch: i64) -> Result<()> {
    let _mounts = ChrootMounts::new(root_path)?;
    in_tree(chroot(root_path), epoch)
        .args([
            "dracut",
            "--force",
            "--no-hostonly",
            "--reproducible",
            "--add",
            "ostree",
        ])
        // dracut's default gzip -9 takes about seven times as long as -6 for a file 1 % smaller.
        .args(["--compress", "gzip -n -6"])
        .args(tf_args)
        .arg(format!("/usr/lib/modules/{kver}/initramfs.img"))
        .arg(kver)
        .run()
        .context("building the initramfs with dracut")?;
    Ok(())
}
