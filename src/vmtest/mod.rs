//! `cairn vm-test`: boot tests under QEMU, the way kola proves Fedora CoreOS.
//!
//! Every test (an executable under `vm-tests/`, see [`header`]) runs inside a booted VM of the
//! image. Tests that share firmware, memory and disk size and are not `exclusive` share one VM
//! and run one after another in it; each VM boots from its own copy-on-write overlay, gets an
//! ephemeral SSH key through a NoCloud seed, and counts as booted only when `systemctl
//! is-system-running` settles to `running` and its console shows no fatal pattern. VMs run in
//! parallel within the machine's cores and memory. A test reboots the VM by calling
//! `$CAIRN_REBOOT <mark>` and is run again after the boot with `$CAIRN_REBOOT_MARK` set.

mod case;
pub mod header;
mod reboot;
pub mod report;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::base::Firmware;
use crate::store::serve::RepoServer;
use crate::vm::guest::Guest;
use crate::vm::ssh::Key;
use crate::vm::{self, console, seed, Accel, Console, Spec};

use case::Ended;
use header::TestDef;
use report::{Boot, CaseResult, Report, Status};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    pub tests: Vec<PathBuf>,
    /// Reports and the logs of failed tests.
    pub out: PathBuf,
    /// VMs at a time (default: as many as cores and memory allow).
    pub jobs: Option<usize>,
    /// Force an accelerator instead of probing.
    pub accel: Option<Accel>,
    /// An OSTree repository to serve to tests as `$CAIRN_REPO_URL`.
    pub repo: Option<PathBuf>,
    /// From QEMU's start (or a reboot) to a settled system.
    pub boot_timeout: Duration,
    /// Run only tests with one of these tags (all when empty).
    pub tags: Vec<String>,
}

/// One test under one firmware.
#[derive(Debug, Clone)]
struct Case {
    def: TestDef,
    firmware: Firmware,
}

impl Case {
    fn id(&self) -> String {
        format!("{}@{}", self.def.name, self.firmware.as_str())
    }

    fn result(
        &self,
        status: Status,
        took: Duration,
        message: String,
        output: String,
        artifacts: Option<PathBuf>,
    ) -> CaseResult {
        CaseResult {
            id: self.id(),
            name: self.def.name.clone(),
            firmware: self.firmware.as_str(),
            status,
            seconds: took.as_secs_f64(),
            message,
            output,
            artifacts,
            warnings: Vec::new(),
            boots: Vec::new(),
        }
    }
}

/// The tests one VM runs.
#[derive(Debug)]
struct Group {
    id: usize,
    firmware: Firmware,
    memory_mib: u64,
    disk_size: u64,
    cases: Vec<Case>,
}

/// Share VMs between tests that can share them; one VM for each exclusive test.
fn plan(tests: &[TestDef], default_disk: u64) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for def in tests {
        for &firmware in &def.firmware {
            let disk_size = def.disk_size.unwrap_or(default_disk);
            let case = Case {
                def: def.clone(),
                firmware,
            };
            let shared = groups.iter_mut().find(|g| {
                !def.exclusive
                    && g.firmware == firmware
                    && g.memory_mib == def.memory_mib
                    && g.disk_size == disk_size
                    && !g.cases.iter().any(|c| c.def.exclusive)
            });
            match shared {
                Some(g) => g.cases.push(case),
                None => groups.push(Group {
                    id: groups.len() + 1,
                    firmware,
                    memory_mib: def.memory_mib,
                    disk_size,
                    cases: vec![case],
                }),
            }
        }
    }
    groups
}

/// Everything the VM runners share.
struct Ctx<'a> {
    opts: &'a Options,
    accel: Accel,
    key: Key,
    work: &'a Path,
    cpus: u32,
    image_info: vm::ImageInfo,
    repo_url: Option<String>,
    report: Mutex<Report>,
    on_result: &'a (dyn Fn(&CaseResult) + Sync),
}

/// Run the tests; `on_result` sees each result as it comes.
pub fn run(opts: &Options, on_result: &(dyn Fn(&CaseResult) + Sync)) -> Result<Report> {
    let started = Instant::now();
    let info = vm::image_info(&opts.image)?;
    let tests = select_tests(opts)?;
    fs_err::create_dir_all(&opts.out)
        .with_context(|| format!("could not create {}", opts.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".work-")
        .tempdir_in(&opts.out)
        .with_context(|| format!("could not make a work directory in {}", opts.out.display()))?;
    let accel = match opts.accel {
        Some(a) => a,
        None => vm::accel(work.path(), &opts.image),
    };
    let server = opts.repo.as_deref().map(RepoServer::start).transpose()?;
    let key = Key::generate(work.path())?;
    // Disks are bigger than the image by default, so that growing the root is exercised.
    let default_disk = info.virtual_size + (2 << 30);
    let groups = plan(&tests, default_disk);
    let (jobs, cpus) = share_machine(opts, &groups);
    tracing::info!(
        "{} tests in {} VMs, {jobs} at a time, {cpus} CPU{} each, {}",
        tests.len(),
        groups.len(),
        if cpus == 1 { "" } else { "s" },
        accel.as_str()
    );
    let junit = opts.out.join("junit.xml");
    let ctx = Ctx {
        opts,
        accel,
        key,
        work: work.path(),
        cpus,
        image_info: info,
        repo_url: server.as_ref().map(|s| s.url(vm::GUEST_HOST_ADDR)),
        report: Mutex::new(Report::new(opts.image.clone(), accel, jobs, junit)),
        on_result,
    };
    run_groups(&ctx, groups, jobs);
    drop(server);
    let mut report = ctx
        .report
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a test runner panicked"))?;
    report.seconds = started.elapsed().as_secs_f64();
    report.write_junit()?;
    crate::base::interrupt::check()?;
    Ok(report)
}

/// The tests to run: those found, with one of the tags asked for; UEFI's firmware present if
/// one of them boots it.
fn select_tests(opts: &Options) -> Result<Vec<TestDef>> {
    let mut tests = header::discover(&opts.tests)?;
    if !opts.tags.is_empty() {
        tests.retain(|t| t.tags.iter().any(|g| opts.tags.contains(g)));
        if tests.is_empty() {
            bail!("no test has one of the tags {:?}", opts.tags);
        }
    }
    if tests.iter().any(|t| t.firmware.contains(&Firmware::Uefi))
        && !Path::new(vm::OVMF_CODE).exists()
    {
        bail!(
            "{} is missing: UEFI tests need Debian's `ovmf` package",
            vm::OVMF_CODE
        );
    }
    Ok(tests)
}

/// How many VMs run at a time (as asked, or as many as cores and memory allow) and how many
/// CPUs each gets.
fn share_machine(opts: &Options, groups: &[Group]) -> (usize, u32) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let biggest = groups.iter().map(|g| g.memory_mib).max().unwrap_or(1024);
    let by_memory = crate::base::tmp::memory_available()
        .map(|m| (m >> 20) / (biggest + 512))
        .unwrap_or(1) as usize;
    let jobs = opts
        .jobs
        .unwrap_or_else(|| cores.min(by_memory))
        .clamp(1, groups.len().max(1));
    let cpus = (cores / jobs).max(1) as u32;
    (jobs, cpus)
}

/// Run the groups, `jobs` VMs at a time, each taking the next group when it is done.
fn run_groups(ctx: &Ctx, groups: Vec<Group>, jobs: usize) {
    let queue = Mutex::new(groups.into_iter().collect::<VecDeque<_>>());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(group) = next else { break };
                run_group(ctx, group);
            });
        }
    });
}

fn record(ctx: &Ctx, c: CaseResult) {
    (ctx.on_result)(&c);
    if let Ok(mut r) = ctx.report.lock() {
        r.add(c);
    }
}

/// Note a boot in the report (and, for a test's boots, in `boots`, for its result).
fn record_boot(ctx: &Ctx, boot: Boot, boots: Option<&mut Vec<Boot>>) {
    tracing::info!("boot {}", boot.line());
    if let Some(b) = boots {
        b.push(boot.clone());
    }
    if let Ok(mut r) = ctx.report.lock() {
        r.boots.push(boot);
    }
}

fn boot(
    ctx: &Ctx,
    firmware: Firmware,
    kind: &'static str,
    took: Duration,
    test: Option<String>,
) -> Boot {
    Boot {
        firmware: firmware.as_str(),
        accel: ctx.accel,
        kind,
        seconds: took.as_secs_f64(),
        test,
        outcome: "ready",
        fatal: Vec::new(),
    }
}

fn run_group(ctx: &Ctx, group: Group) {
    let fw = group.firmware.as_str();
    let dir = ctx.work.join(format!("vm-{}-{fw}", group.id));
    let hostname = format!("cairn-test-{}-{fw}", group.id);
    let started = Instant::now();
    let guest = boot_group(ctx, &group, &dir, &hostname);
    let guest = match guest {
        Ok(g) => {
            let b = boot(ctx, group.firmware, "first", started.elapsed(), None);
            record_boot(ctx, b, None);
            g
        }
        Err(e) => {
            let msg = format!("boot failed: {e:#}");
            let warnings: Vec<String> = console::scan(&dir.join("console.log"), ctx.accel)
                .warnings
                .into_iter()
                .map(|w| w.line)
                .collect();
            for case in &group.cases {
                let artifacts = save_artifacts(ctx, &case.id(), None, &dir, "");
                let took = started.elapsed();
                let mut r = case.result(Status::Fail, took, msg.clone(), String::new(), artifacts);
                r.warnings = warnings.clone();
                record(ctx, r);
            }
            return;
        }
    };
    let mut lane = Lane {
        ctx,
        guest,
        group: &group,
        dir: &dir,
        boots: 0,
        parked: Vec::new(),
    };
    for (i, case) in group.cases.iter().enumerate() {
        // The last test has none after it to make a boot for a parked one.
        let park = i + 1 < group.cases.len();
        lane.run(case, park);
        lane.resume_parked(false);
    }
    lane.resume_parked(true);
}

/// One VM's walk through its group: its guest, the boots its tests made, and the tests that
/// wait for a later boot.
struct Lane<'a, 'c> {
    ctx: &'a Ctx<'c>,
    guest: Guest,
    group: &'a Group,
    dir: &'a Path,
    /// Every boot the tests made so far.
    boots: usize,
    parked: Vec<(&'a Case, case::Parked)>,
}

impl<'a> Lane<'a, '_> {
    /// Run `case` and record its result unless it parked.
    fn run(&mut self, case: &'a Case, park: bool) {
        self.step(case, Duration::ZERO, Vec::new(), |l, boots| {
            case::run_case(l.ctx, &mut l.guest, l.group, case, boots, park)
        });
    }

    /// Run `f` for `case` (which ran `earlier` before it parked; `boots`: those made for it
    /// already) and record the result unless it parked.
    fn step(
        &mut self,
        case: &'a Case,
        earlier: Duration,
        mut boots: Vec<Boot>,
        f: impl FnOnce(&mut Self, &mut Vec<Boot>) -> Result<Ended>,
    ) {
        let t = Instant::now();
        let made = boots.len();
        let ended = if crate::base::interrupt::requested() {
            Ok(Ended::Done(
                Status::Fail,
                "interrupted".into(),
                String::new(),
            ))
        } else {
            f(self, &mut boots)
        };
        self.boots += boots.len() - made;
        let (status, message, output) = match ended {
            Ok(Ended::Done(s, m, o)) => (s, m, o),
            Ok(Ended::Parked(mut p)) => {
                tracing::info!("{} waits for a later boot", case.id());
                p.boots_then = self.boots;
                self.parked.push((case, p));
                return;
            }
            Err(e) => (Status::Fail, format!("{e:#}"), String::new()),
        };
        let artifacts = (status == Status::Fail)
            .then(|| save_artifacts(self.ctx, &case.id(), Some(&self.guest), self.dir, &output))
            .flatten();
        // A last look at the console, so that a warning printed during the test is its own.
        let _ = self.guest.check();
        let took = earlier + t.elapsed();
        let mut r = case.result(status, took, message, output, artifacts);
        r.warnings = self.guest.new_warnings();
        r.boots = boots;
        record(self.ctx, r);
    }

    /// Run again the parked tests whose boot is over; with `all`, every one, the VM rebooted
    /// first if none of them has had its boot.
    fn resume_parked(&mut self, all: bool) {
        let now = self.guest.boot_id().unwrap_or_default();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, p)| all || p.boot_id != now);
        self.parked = wait;
        let mut rebooted = false;
        for (case, p) in due {
            let earlier = p.used;
            let mut made = Vec::new();
            if p.boot_id == now && !rebooted {
                // No test made a boot after this one parked: the harness makes it.
                let t = Instant::now();
                if let Err(e) = self.guest.reboot(Instant::now() + case.def.timeout) {
                    let msg = format!("the reboot it asked for: {e:#}");
                    let r = case.result(Status::Fail, earlier, msg, String::new(), None);
                    record(self.ctx, r);
                    continue;
                }
                let b = boot(
                    self.ctx,
                    case.firmware,
                    "reboot",
                    t.elapsed(),
                    Some(case.id()),
                );
                record_boot(self.ctx, b, Some(&mut made));
                self.boots += 1;
                rebooted = true;
            }
            let followed = self.boots - p.boots_then;
            self.step(case, earlier, made, |l, boots| {
                case::resume(l.ctx, &mut l.guest, case, boots, p, followed)
            });
        }
    }
}

fn boot_group(ctx: &Ctx, group: &Group, dir: &Path, hostname: &str) -> Result<Guest> {
    fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed_img = dir.join("seed.img");
    seed::write(
        &seed::Provision {
            instance_id: format!("cairn-vm-test-{}", group.id),
            hostname: hostname.to_string(),
            ssh_keys: vec![ctx.key.public.clone()],
        },
        dir,
        &seed_img,
    )?;
    let console = dir.join("console.log");
    let spec = Spec {
        image: ctx.opts.image.clone(),
        info: ctx.image_info.clone(),
        firmware: group.firmware,
        memory_mib: group.memory_mib,
        cpus: ctx.cpus,
        disk_size: Some(group.disk_size),
        seed: Some(seed_img),
        accel: ctx.accel,
        console: Console::File(console),
        write_image: false,
        forwards: Vec::new(),
    };
    let mut guest = Guest::start(&spec, dir, &ctx.key, hostname)?;
    guest.wait_ready(Instant::now() + ctx.opts.boot_timeout)?;
    Ok(guest)
}

/// Keep the console log, QEMU's log, the test's output and the guest's journal of a failed test.
fn save_artifacts(
    ctx: &Ctx,
    id: &str,
    guest: Option<&Guest>,
    vm_dir: &Path,
    output: &str,
) -> Option<PathBuf> {
    let dir = report::artifact_dir(&ctx.opts.out, id);
    let res = (|| -> Result<()> {
        if dir.exists() {
            fs_err::remove_dir_all(&dir)?;
        }
        fs_err::create_dir_all(&dir)?;
        for f in ["console.log", "qemu.log"] {
            let src = vm_dir.join(f);
            if src.exists() {
                fs_err::copy(&src, dir.join(f))?;
            }
        }
        fs_err::write(dir.join("output.txt"), output)?;
        if let Some(g) = guest {
            let journal = match g.ssh.run(
                "journalctl --no-pager -o short-monotonic",
                Duration::from_secs(120),
            ) {
                Ok(o) => o.stdout,
                Err(e) => format!("could not read the journal: {e:#}\n"),
            };
            fs_err::write(dir.join("journal.txt"), journal)?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(
                "could not save the logs of {id} in {}: {e:#}",
                dir.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
