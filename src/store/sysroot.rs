//! Sysroot deployments through libostree. Today: deploy a commit into a fresh sysroot directory
//! (an image's root filesystem), as `ostree admin init-fs`, `os-init`, `pull-local` and `deploy`
//! would, without mounting anything. The node's own upgrades and rollbacks belong here too.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;

/// What the deploy needs.
pub struct DeployOpts<'a> {
    /// The archive repo holding the commit.
    pub repo: &'a Path,
    pub commit: &'a str,
    /// The ref the node follows for upgrades (recorded in the deployment's origin).
    pub ref_: &'a str,
    pub osname: &'a str,
    /// The remote the node upgrades from.
    pub remote: &'a str,
    /// Its URL (`None`: set later by provisioning or by hand).
    pub remote_url: Option<&'a str>,
    /// The release key it trusts (`gpg-verify=true`); `None`: no verification.
    pub trust: Option<super::remote::Trust<'a>>,
    pub kargs: &'a [String],
}

/// Lay out the syslinux configuration as libostree's syslinux backend expects it, so that it
/// rewrites `/boot/loader/syslinux.cfg` on this and every later deploy (GRUB reads that file).
/// Lines other than entries (the 1 s menu timeout) are kept across deploys.
fn syslinux_stub(sysroot: &Path) -> Result<()> {
    let boot = sysroot.join("boot");
    fs_err::create_dir_all(boot.join("loader.0"))?;
    fs_err::create_dir_all(boot.join("syslinux"))?;
    fs_err::write(boot.join("loader.0/syslinux.cfg"), "TIMEOUT 10\n")?;
    std::os::unix::fs::symlink("loader.0", boot.join("loader"))?;
    std::os::unix::fs::symlink("../loader/syslinux.cfg", boot.join("syslinux/syslinux.cfg"))?;
    Ok(())
}

/// Deploy into the empty directory `sysroot`; returns the deployment's directory, relative to
/// the sysroot.
pub fn deploy(sysroot_dir: &Path, o: &DeployOpts) -> Result<String> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(sysroot_dir)));
    sysroot
        .ensure_initialized(gio::Cancellable::NONE)
        .context("initializing the sysroot")?;
    sysroot
        .load(gio::Cancellable::NONE)
        .context("loading the sysroot")?;
    sysroot
        .init_osname(o.osname, gio::Cancellable::NONE)
        .with_context(|| format!("initializing os {}", o.osname))?;
    let repo = sysroot.repo();
    // The sysroot is a work tree read by mkfs, not a disk that must survive a crash: no fsync
    // (an in-memory switch; the repo's config on the image keeps fsync on).
    repo.set_disable_fsync(true);
    let config = repo.copy_config();
    config.set_string("sysroot", "bootloader", "syslinux");
    repo.write_config(&config)
        .context("configuring the sysroot's repo")?;
    repo.reload_config(gio::Cancellable::NONE)
        .context("reloading the sysroot's repo config")?;

    // The commit, under the ref the node will follow.
    let src = o
        .repo
        .canonicalize()
        .with_context(|| format!("resolving {}", o.repo.display()))?;
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &vec![o.commit.to_string()].to_variant());
    repo.pull_with_options(
        &format!("file://{}", src.display()),
        &opts.end(),
        None,
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("pulling {} from {}", o.commit, src.display()))?;
    repo.set_ref_immediate(
        Some(o.remote),
        o.ref_,
        Some(o.commit),
        gio::Cancellable::NONE,
    )
    .context("recording the ref")?;
    super::remote::add(&repo, o.remote, o.remote_url, o.trust.as_ref(), o.commit)?;

    syslinux_stub(sysroot_dir).context("preparing the bootloader configuration")?;
    let origin = sysroot.origin_new_from_refspec(&format!("{}:{}", o.remote, o.ref_));
    let kargs: Vec<&str> = o.kargs.iter().map(String::as_str).collect();
    let deployment = sysroot
        .deploy_tree(
            Some(o.osname),
            o.commit,
            Some(&origin),
            None,
            &kargs,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("deploying {}", o.commit))?;
    sysroot
        .simple_write_deployment(
            Some(o.osname),
            &deployment,
            None,
            ostree::SysrootSimpleWriteDeploymentFlags::NONE,
            gio::Cancellable::NONE,
        )
        .context("writing the deployment")?;
    Ok(sysroot.deployment_dirpath(&deployment).to_string())
}
