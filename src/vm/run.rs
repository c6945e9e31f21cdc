//! `cairn vm run`: one image booted with its console on this terminal, provisioned with the
//! caller's SSH key through a NoCloud seed, from a throwaway overlay unless asked to write.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::{seed, Accel, Console, Spec};
use crate::base::Firmware;

/// What to boot, and how.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub image: PathBuf,
    pub firmware: Firmware,
    pub memory_mib: u64,
    pub cpus: u32,
    pub disk_size: Option<u64>,
    /// The public key file to provision (default: the caller's own, when there is one).
    pub ssh_key: Option<PathBuf>,
    pub hostname: String,
    /// Force an accelerator instead of probing.
    pub accel: Option<Accel>,
    /// Boot the image itself, keeping the changes.
    pub write_image: bool,
}

/// Boot until the guest powers off or QEMU is quit; an error if QEMU fails.
pub fn run_interactive(o: &RunOpts) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-vm-")
        .tempdir()
        .context("could not make a temporary directory")?;
    let info = super::image_info(&o.image)?;
    let seed_img = dir.path().join("seed.img");
    seed::write(
        &seed::Provision {
            instance_id: format!("cairn-vm-{}", std::process::id()),
            hostname: o.hostname.clone(),
            ssh_keys: seed::public_keys(o.ssh_key.as_deref())?,
        },
        dir.path(),
        &seed_img,
    )?;
    let spec = Spec {
        image: o.image.clone(),
        info,
        firmware: o.firmware,
        memory_mib: o.memory_mib,
        cpus: o.cpus,
        disk_size: o.disk_size,
        seed: Some(seed_img),
        accel: o
            .accel
            .unwrap_or_else(|| super::accel(dir.path(), &o.image)),
        console: Console::Terminal,
        write_image: o.write_image,
        forwards: Vec::new(),
    };
    let status = super::run_foreground(&spec, dir.path())?;
    if !status.success() {
        bail!("QEMU ended with {status}");
    }
    Ok(())
}
