//! Booting a disk image under QEMU: the accelerator probe (KVM when it really runs guests, TCG
//! otherwise), firmware (SeaBIOS or OVMF), a copy-on-write overlay so the image is never changed,
//! a NoCloud seed for provisioning, SSH on a forwarded loopback port, and the console in a log.
//!
//! A [`Vm`] is a guard: dropping it kills QEMU, also when a test fails or Ctrl-C arrives. A
//! [`guest::Guest`] is a booted VM reached over SSH: ready when systemd settles, rebooted as a
//! power cycle, read for its boot id; the test harness and fleet rollouts drive VMs through it.

pub mod console;
pub mod detached;
pub mod guest;
pub mod run;
pub mod seed;
pub mod ssh;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::base::cmd::{Cmd, Spawned};
use crate::base::Firmware;

/// The address of the host's loopback as QEMU's user network shows it to a guest.
pub const GUEST_HOST_ADDR: &str = "10.0.2.2";

/// The OVMF build with Secure Boot off, as Debian 12's `ovmf` ships it.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template; each VM writes a copy of its own.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How QEMU runs the guest's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator to use for `image`: KVM only if a guest really runs under it. On some
/// machines /dev/kvm exists but fails or hangs guests: QEMU's own probe guest (one sector that
/// exits through the isa-debug-exit port) catches some of them; on others it runs and the real
/// kernel then dies with "KVM internal error … emulation failure". So the image itself is booted
/// too, from a throwaway snapshot with the VMs' own machine and CPU, and KVM is chosen only when
/// its kernel reaches the initramfs (`Run /init`) in time. Probed once per boot of the machine
/// (the answer is kept in the temporary directory, named by the boot id).
pub fn accel(work: &Path, image: &Path) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        if !Path::new("/dev/kvm").exists() {
            tracing::info!("no /dev/kvm: QEMU runs guests with TCG");
            return Accel::Tcg;
        }
        // What an earlier process found since this machine booted (a probe costs up to a
        // minute when KVM fails).
        let note = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| std::env::temp_dir().join(format!("cairn-accel-{}", b.trim())))
            .ok();
        match note
            .as_ref()
            .and_then(|n| std::fs::read_to_string(n).ok())
            .as_deref()
        {
            Some("kvm") => return Accel::Kvm,
            Some("tcg") => {
                tracing::info!("KVM did not run guests on this boot of the machine; using TCG");
                return Accel::Tcg;
            }
            _ => {}
        }
        let r = probe(work, Accel::Kvm, Duration::from_secs(10))
            .and_then(|()| probe_image(work, image, Duration::from_secs(60)));
        let a = match r {
            Ok(()) => {
                tracing::info!("KVM runs this image's kernel: using KVM");
                Accel::Kvm
            }
            Err(e) => {
                tracing::info!("KVM does not run guests here ({e:#}); using TCG");
                Accel::Tcg
            }
        };
        if let Some(n) = note {
            let _ = std::fs::write(n, a.as_str());
        }
        a
    })
}

/// Boot `image` under KVM from a snapshot (nothing is written to it) until its kernel runs the
/// initramfs; an error naming what went wrong otherwise.
pub fn probe_image(work: &Path, image: &Path, limit: Duration) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kvm-image-probe")
        .tempdir_in(work)
        .with_context(|| format!("could not make a directory in {}", work.display()))?;
    let console = dir.path().join("console.log");
    let log = dir.path().join("qemu.log");
    let mut qemu = Cmd::new("qemu-system-x86_64")
        .args(machine_args(Accel::Kvm, "q35"))
        .args(["-m", "512", "-display", "none", "-snapshot", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=virtio,file={}", opt_path(image)))
        .arg("-chardev")
        .arg(format!("file,id=console0,path={}", opt_path(&console)))
        .args(["-serial", "chardev:console0"])
        .spawn_logged(&log)?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Run /init as init process") {
            return Ok(());
        }
        let qlog = std::fs::read_to_string(&log).unwrap_or_default();
        if qlog.contains("KVM internal error") || qemu.check_running().is_err() {
            bail!(
                "the image's guest failed under KVM: {}",
                crate::base::text::tail(&qlog, 3, " / ")
            );
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the image's kernel did not reach its initramfs under KVM in {} s",
                limit.as_secs()
            );
        }
        crate::base::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The exit status QEMU gives when the probe guest writes 1 to the isa-debug-exit port.
const PROBE_EXIT: i32 = (1 << 1) | 1;

/// Boot the probe guest under `accel`; Ok when it ran its code and QEMU exited in time.
pub fn probe(work: &Path, accel: Accel, limit: Duration) -> Result<()> {
    // mov al, 1; out 0xf4, al; hlt; jmp $-1 — then the boot signature.
    let mut sector = vec![0u8; 512];
    sector[..7].copy_from_slice(&[0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let dir = tempfile::Builder::new()
        .prefix("kvm-probe")
        .tempdir_in(work)
        .with_context(|| format!("could not make a directory in {}", work.display()))?;
    let img = dir.path().join("probe.img");
    fs_err::write(&img, &sector).with_context(|| format!("could not write {}", img.display()))?;
    // The same CPU model as the real VMs: on some hosts KVM runs a guest with QEMU's default
    // CPU but aborts with the host's. The machine is `pc`: SeaBIOS boots this one-sector disk
    // from its IDE controller at once, while on q35 it never reaches it.
    let res = Cmd::new("qemu-system-x86_64")
        .args(machine_args(accel, "pc"))
        .args(["-nodefaults", "-display", "none"])
        .args([
            "-m",
            "16",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", opt_path(&img)))
        .timeout(limit)
        .run_status()?;
    match res.0.code() {
        Some(PROBE_EXIT) => Ok(()),
        _ => bail!(
            "the probe guest did not exit as expected ({}): {}",
            res.0,
            res.1.stderr.trim()
        ),
    }
}

/// The accelerator, machine and CPU model (the probe's `pc`, every VM's `q35`).
fn machine_args(accel: Accel, machine: &'static str) -> [&'static str; 6] {
    [
        "-accel",
        accel.as_str(),
        "-machine",
        machine,
        "-cpu",
        cpu_model(accel),
    ]
}

/// A path as the value of a QEMU option (`file=...`), where a comma must be doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Under KVM the host's own CPU. Under TCG the plain x86-64 model: with `max`, the guest's
/// libraries take their AVX2 paths, which TCG emulates with helpers; a first boot of the shipped
/// image took 17% less CPU time on `qemu64` (267 s against 322 s for two boots, one machine).
fn cpu_model(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "qemu64",
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// Into a log file (tests).
    File(PathBuf),
    /// On this terminal, with QEMU's monitor on Ctrl-A c (`cairn vm run`).
    Terminal,
    /// Into a log file, for a VM that reboots by itself as a machine does (a fleet node under
    /// SeaBIOS): no power cycle, nobody to power it on again.
    Log(PathBuf),
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: PathBuf,
    /// What [`image_info`] said of `image` (callers read it once, to check the image early).
    pub info: ImageInfo,
    pub firmware: Firmware,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Grow the overlay to this many bytes (the image's own size when None).
    pub disk_size: Option<u64>,
    /// A NoCloud seed image to attach.
    pub seed: Option<PathBuf>,
    pub accel: Accel,
    pub console: Console,
    /// Boot the image itself instead of an overlay (its changes persist).
    pub write_image: bool,
    /// Guest TCP ports forwarded from free loopback ports, besides SSH's 22.
    pub forwards: Vec<u16>,
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// Read an image's format and size; a missing or unreadable image is an error naming it.
pub fn image_info(image: &Path) -> Result<ImageInfo> {
    if !image.is_file() {
        bail!("{}: no such image file", image.display());
    }
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .run()
        .with_context(|| format!("{}: not a disk image QEMU can read", image.display()))?;
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("{}: unexpected `qemu-img info` output", image.display()))
}

/// A free TCP port on the loopback interface for the guest's SSH.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("could not find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    qemu: Spawned,
    pub ssh_port: u16,
    /// (guest port, loopback port) for each of the spec's forwards.
    ports: Vec<(u16, u16)>,
    qemu_log: PathBuf,
    /// What [`Vm::power_on`] starts QEMU again with.
    spec: Spec,
    disks: Disks,
}

/// The overlay (or the image itself) and the UEFI variable store a VM boots with.
pub(crate) struct Disks {
    disk: PathBuf,
    format: String,
    vars: Option<PathBuf>,
}

/// Make the VM's overlay and variable store in `dir`.
pub(crate) fn prepare(spec: &Spec, dir: &Path) -> Result<Disks> {
    let info = &spec.info;
    let disk = if spec.write_image {
        spec.image.clone()
    } else {
        let overlay = dir.join("overlay.qcow2");
        let image = std::path::absolute(&spec.image)
            .with_context(|| format!("{}: no absolute path", spec.image.display()))?;
        let mut c = Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", &info.format, "-b"])
            .arg(&image)
            .arg(&overlay);
        if let Some(size) = spec.disk_size {
            if size < info.virtual_size {
                bail!(
                    "{}: the disk size {size} is smaller than the image ({} bytes)",
                    spec.image.display(),
                    info.virtual_size
                );
            }
            c = c.arg(size.to_string());
        }
        c.run()?;
        overlay
    };
    let format = if spec.write_image {
        info.format.clone()
    } else {
        "qcow2".to_string()
    };
    let vars = if spec.firmware == Firmware::Uefi {
        let vars = dir.join("OVMF_VARS.fd");
        fs_err::copy(OVMF_VARS, &vars).with_context(|| {
            format!("could not copy {OVMF_VARS} (is Debian's `ovmf` package installed?)")
        })?;
        Some(vars)
    } else {
        None
    };
    Ok(Disks { disk, format, vars })
}

/// The QEMU command line for `spec` on `d`, forwarding loopback ports to guest ports.
pub(crate) fn qemu_cmd(spec: &Spec, d: &Disks, ports: &[(u16, u16)]) -> Cmd {
    let (disk, format) = (&d.disk, &d.format);
    let hostfwd: String = ports
        .iter()
        .map(|(guest, host)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
        .collect();
    let mut c = Cmd::new("qemu-system-x86_64")
        .args(machine_args(spec.accel, "q35"))
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.cpus.to_string(), "-display", "none"])
        .arg("-drive")
        .arg(format!(
            "if=virtio,file={},format={format},discard=unmap",
            opt_path(disk)
        ))
        .args(["-netdev"])
        .arg(format!("user,id=net0{hostfwd}"))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(["-device", "virtio-rng-pci"]);
    if let Some(seed) = &spec.seed {
        c = c.arg("-drive").arg(format!(
            "if=virtio,file={},format=raw,readonly=on",
            opt_path(seed)
        ));
    }
    if let Some(vars) = &d.vars {
        c = c
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                opt_path(vars)
            ));
    }
    match &spec.console {
        // Appended to, across power cycles. A guest's reboot ends QEMU, and the owner powers it
        // on again: TCG guests under OVMF have been seen to hang in GRUB after a warm reset.
        Console::File(path) => c
            .arg("-chardev")
            .arg(format!(
                "file,id=console0,path={},append=on",
                opt_path(path)
            ))
            .args(["-serial", "chardev:console0", "-no-reboot"]),
        Console::Log(path) => c
            .arg("-chardev")
            .arg(format!(
                "file,id=console0,path={},append=on",
                opt_path(path)
            ))
            .args(["-serial", "chardev:console0"]),
        Console::Terminal => c.args(["-serial", "mon:stdio"]),
    }
}

/// SSH's forward first, then the spec's, each from a free loopback port.
pub(crate) fn forwards(spec: &Spec) -> Result<Vec<(u16, u16)>> {
    std::iter::once(22)
        .chain(spec.forwards.iter().copied().filter(|p| *p != 22))
        .map(|g| Ok((g, free_port()?)))
        .collect()
}

/// What is booted, for the line announcing it.
fn booting(spec: &Spec) -> String {
    format!(
        "booting {} ({}, {})",
        spec.image.display(),
        spec.firmware.as_str(),
        spec.accel.as_str()
    )
}

impl Vm {
    /// Boot `spec` in the background with its files (overlay, vars, logs) in `dir`.
    pub fn start(spec: &Spec, dir: &Path) -> Result<Self> {
        let ports = forwards(spec)?;
        let port = ports[0].1;
        let qemu_log = dir.join("qemu.log");
        let disks = prepare(spec, dir)?;
        tracing::info!("{} with SSH on 127.0.0.1:{port}", booting(spec));
        let qemu = qemu_cmd(spec, &disks, &ports).spawn_logged(&qemu_log)?;
        Ok(Vm {
            qemu,
            ssh_port: port,
            ports,
            qemu_log,
            spec: spec.clone(),
            disks,
        })
    }

    /// Wait until QEMU has ended (after the guest's reboot with `-no-reboot`).
    pub fn wait_powered_off(&mut self, deadline: std::time::Instant) -> Result<()> {
        while self.qemu.check_running().is_ok() {
            crate::base::interrupt::check()?;
            if std::time::Instant::now() > deadline {
                bail!("the VM did not go down for its reboot in time");
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Ok(())
    }

    /// Start QEMU again on the same disk, variables and port: the second half of a reboot.
    pub fn power_on(&mut self) -> Result<()> {
        self.qemu = qemu_cmd(&self.spec, &self.disks, &self.ports).spawn_logged(&self.qemu_log)?;
        Ok(())
    }

    /// The loopback port that reaches `guest_port` (SSH's 22, or one of the spec's forwards).
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    /// The QEMU process id (a fleet test kills it to lose a node).
    pub fn pid(&self) -> u32 {
        self.qemu.id()
    }

    /// An error if QEMU has ended, with the tail of its own log.
    pub fn check_running(&mut self) -> Result<()> {
        self.qemu.check_running().map_err(|e| {
            let log = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
            let tail = crate::base::text::tail(&log, 10, "\n");
            e.context(format!("QEMU stopped: {tail}"))
        })
    }
}

/// Run `spec` with the console on this terminal until the guest powers off or QEMU is quit.
pub fn run_foreground(spec: &Spec, dir: &Path) -> Result<std::process::ExitStatus> {
    let ports = forwards(spec)?;
    let port = ports[0].1;
    let cmd = qemu_cmd(spec, &prepare(spec, dir)?, &ports);
    eprintln!(
        "cairn: {}; SSH: ssh -p {port} ops@127.0.0.1; quit: Ctrl-A x",
        booting(spec)
    );
    cmd.run_foreground()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_qemu() -> bool {
        Path::new("/usr/bin/qemu-system-x86_64").exists()
    }

    #[test]
    fn tcg_probe_runs_the_guest_and_a_broken_probe_fails() {
        if !have_qemu() {
            eprintln!("qemu-system-x86_64 is not installed; .ci/deps installs it");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path(), Accel::Tcg, Duration::from_secs(60)).unwrap();
        // The same guest with no time to run is reported, not taken for working.
        let err = probe(dir.path(), Accel::Tcg, Duration::from_millis(1)).unwrap_err();
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    }

    #[test]
    fn missing_image_is_named() {
        let err = image_info(Path::new("/nonexistent/x.qcow2")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/x.qcow2"));
    }

    #[test]
    fn overlay_smaller_than_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.raw");
        fs_err::write(&img, vec![0u8; 2 << 20]).unwrap();
        let spec = Spec {
            info: image_info(&img).unwrap(),
            image: img,
            firmware: Firmware::Bios,
            memory_mib: 256,
            cpus: 1,
            disk_size: Some(1 << 20),
            seed: None,
            accel: Accel::Tcg,
            console: Console::Terminal,
            write_image: false,
            forwards: vec![],
        };
        let err = prepare(&spec, dir.path()).err().unwrap();
        assert!(
            format!("{err:#}").contains("smaller than the image"),
            "{err:#}"
        );
    }
}
