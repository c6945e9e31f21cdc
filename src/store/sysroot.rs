//! Sysroot deployments through libostree: deploy a commit into a fresh sysroot directory (an
//! image's root filesystem), as `ostree admin init-fs`, `os-init`, `pull-local` and `deploy`
//! would, without mounting anything ([`deploy`]); and on a booted node ([`Node`]), pull a ref
//! from its remote (the remote's `gpg-verify` checks every commit's signature), deploy it with
//! the booted deployment's `/etc` merged in, and write the list of deployments in a chosen order
//! (the first is the default; libostree rewrites the bootloader's entries atomically).

use std::path::{Path, PathBuf};

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

/// A deployment of a booted node's sysroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentInfo {
    /// Its place in the list (0: the default).
    pub index: usize,
    pub commit: String,
    pub serial: i32,
    /// The refspec it follows (`remote:ref`).
    pub origin: Option<String>,
    pub booted: bool,
    /// Its root directory.
    pub dir: PathBuf,
}

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The commit the ref names now.
    pub commit: String,
    pub bytes: u64,
    /// Static delta parts fetched (0: objects one by one).
    pub delta_parts: u32,
}

/// The sysroot of a booted node, loaded.
pub struct Node {
    sysroot: ostree::Sysroot,
    root: PathBuf,
    osname: String,
}

/// The sysroot lock, released on drop.
struct Locked<'a>(&'a ostree::Sysroot);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// A reference to the same deployment object. libostree finds the booted deployment in a new
/// list by pointer, so a list must hold these: the crate's inherent `Deployment::clone()` is
/// `ostree_deployment_clone`, a copy, and a list of copies fails with "Attempting to remove
/// booted deployment".
fn same(d: &ostree::Deployment) -> ostree::Deployment {
    <ostree::Deployment as Clone>::clone(d)
}

impl Node {
    /// Load the sysroot at `root` (`/` on the node), which must be booted in a deployment.
    pub fn open(root: &Path) -> Result<Self> {
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(root)));
        sysroot
            .load(gio::Cancellable::NONE)
            .with_context(|| format!("loading the OSTree sysroot at {}", root.display()))?;
        let booted = sysroot.booted_deployment().with_context(|| {
            format!(
                "{} is not booted in an OSTree deployment (no /run/ostree-booted)",
                root.display()
            )
        })?;
        Ok(Node {
            osname: booted.osname().to_string(),
            sysroot,
            root: root.to_path_buf(),
        })
    }

    /// Load the sysroot again (after its deployments changed).
    pub fn reload(&mut self) -> Result<()> {
        *self = Node::open(&self.root)?;
        Ok(())
    }

    pub fn osname(&self) -> &str {
        &self.osname
    }

    pub fn repo(&self) -> ostree::Repo {
        self.sysroot.repo()
    }

    fn info(
        &self,
        index: usize,
        d: &ostree::Deployment,
        booted: Option<&ostree::Deployment>,
    ) -> DeploymentInfo {
        DeploymentInfo {
            index,
            commit: d.csum().to_string(),
            serial: d.deployserial(),
            origin: d
                .origin()
                .and_then(|o| o.string("origin", "refspec").ok())
                .map(|s| s.to_string()),
            booted: booted.is_some_and(|b| b.equal(d)),
            dir: self.root.join(self.sysroot.deployment_dirpath(d).as_str()),
        }
    }

    /// Every deployment, the default first.
    pub fn deployments(&self) -> Vec<DeploymentInfo> {
        let booted = self.sysroot.booted_deployment();
        self.sysroot
            .deployments()
            .iter()
            .enumerate()
            .map(|(i, d)| self.info(i, d, booted.as_ref()))
            .collect()
    }

    /// The booted deployment.
    pub fn booted(&self) -> Result<DeploymentInfo> {
        self.deployments()
            .into_iter()
            .find(|d| d.booted)
            .context("the booted deployment is not in the sysroot's list")
    }

    /// Pull `ref_` from `remote` into the sysroot's repo: with `commit_only`, the commit object
    /// and its signatures alone. The remote's `gpg-verify` refuses a commit its key did not
    /// sign; objects are checked against their checksums. Nothing is deployed.
    pub fn pull(&self, remote: &str, ref_: &str, commit_only: bool) -> Result<Pulled> {
        let repo = self.repo();
        let progress = ostree::AsyncProgress::new();
        let opts = glib::VariantDict::new(None);
        opts.insert_value("refs", &vec![ref_.to_string()].to_variant());
        let flags = if commit_only {
            ostree::RepoPullFlags::COMMIT_ONLY
        } else {
            ostree::RepoPullFlags::NONE
        };
        opts.insert_value("flags", &(flags.bits() as i32).to_variant());
        let url = repo
            .remote_get_url(remote)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| "?".into());
        let pulled =
            repo.pull_with_options(remote, &opts.end(), Some(&progress), gio::Cancellable::NONE);
        progress.finish();
        if let Err(e) = pulled {
            let what = format!("pulling {ref_} from remote {remote} ({url})");
            // libostree's words for a commit the remote's keyring does not vouch for.
            let m = e.message().to_string();
            if m.contains("GPG") || m.contains("signature") {
                return Err(anyhow::anyhow!("{m}")).context(format!(
                    "{what}: refused: the commit is not signed by a key this node trusts \
                     (remote {remote}'s keyring)"
                ));
            }
            return Err(e).context(what);
        }
        if is_checksum(ref_) {
            // Pulled by checksum (the update agent's move to one release): no ref moved.
            return Ok(Pulled {
                commit: ref_.to_string(),
                bytes: progress.uint64("bytes-transferred"),
                delta_parts: progress.uint("fetched-delta-parts"),
            });
        }
        let refspec = format!("{remote}:{ref_}");
        let commit = repo
            .resolve_rev(&refspec, false)
            .with_context(|| format!("resolving {refspec}"))?
            .with_context(|| format!("{refspec} is not in the repo after the pull"))?
            .to_string();
        Ok(Pulled {
            commit,
            bytes: progress.uint64("bytes-transferred"),
            delta_parts: progress.uint("fetched-delta-parts"),
        })
    }

    /// The fingerprint of the first valid signature on `commit` by a key `remote` trusts.
    pub fn signed_by(&self, commit: &str, remote: &str) -> Option<String> {
        let r = self
            .repo()
            .verify_commit_for_remote(commit, remote, gio::Cancellable::NONE)
            .ok()?;
        (0..r.count_all())
            .map(|i| super::remote::signature(&r, i))
            .find(|s| s.valid)
            .map(|s| s.fingerprint)
    }

    fn lock(&self) -> Result<Locked<'_>> {
        self.sysroot.lock().context("locking the sysroot")?;
        Ok(Locked(&self.sysroot))
    }

    /// Deploy `commit` following `refspec`, with the booted deployment's `/etc` merged in and its
    /// kernel arguments, as the *second* deployment: the booted one stays the default, every
    /// other deployment goes. Returns the new deployment.
    pub fn deploy(&mut self, commit: &str, refspec: &str) -> Result<DeploymentInfo> {
        let (new, serial) = {
            let _lock = self.lock()?;
            let booted = self
                .sysroot
                .booted_deployment()
                .context("no booted deployment")?;
            let origin = self.sysroot.origin_new_from_refspec(refspec);
            // No kernel arguments given: libostree takes the merge deployment's.
            let opts = ostree::SysrootDeployTreeOpts::default();
            let new = self
                .sysroot
                .deploy_tree_with_options(
                    Some(&self.osname),
                    commit,
                    Some(&origin),
                    Some(&booted),
                    Some(&opts),
                    gio::Cancellable::NONE,
                )
                .with_context(|| format!("deploying {commit}"))?;
            self.write(&[same(&booted), same(&new)], true)?;
            (new.csum().to_string(), new.deployserial())
        };
        self.reload()?;
        self.deployments()
            .into_iter()
            .find(|d| d.commit == new && d.serial == serial)
            .with_context(|| format!("the new deployment of {commit} is not in the list"))
    }

    /// Write the deployments `order` (by commit and serial; the first becomes the default),
    /// dropping every one not named. libostree rewrites the bootloader's entries and swaps them
    /// in atomically.
    pub fn write_order(&mut self, order: &[(String, i32)], postclean: bool) -> Result<()> {
        {
            let _lock = self.lock()?;
            let all = self.sysroot.deployments();
            let list = order
                .iter()
                .map(|(c, s)| {
                    all.iter()
                        .find(|d| d.csum() == c.as_str() && d.deployserial() == *s)
                        .map(same)
                        .with_context(|| format!("no deployment {c}.{s}"))
                })
                .collect::<Result<Vec<_>>>()?;
            self.write(&list, postclean)?;
        }
        self.reload()
    }

    fn write(&self, list: &[ostree::Deployment], postclean: bool) -> Result<()> {
        self.sysroot
            .write_deployments_with_options(
                list,
                &ostree::SysrootWriteDeploymentsOpts {
                    do_postclean: postclean,
                },
                gio::Cancellable::NONE,
            )
            .context("writing the deployments (and the bootloader's entries)")
    }
}

/// A commit checksum (64 hex digits), which a pull takes in place of a ref.
pub fn is_checksum(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
