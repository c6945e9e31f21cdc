//! Named tests over one shared world: a chain is a list of steps, each one behaviour with its
//! own test name, run in order on one world (a fleet, a VM, a repo and its composes) that the
//! earlier steps built. Every step is a trial of its own; a trial runs the steps before it that
//! have not run yet (so `cargo test --test scenarios compose::NAME` works alone), and a step
//! after a failed one fails naming the step that failed first (a check, which only reads what
//! the steps before it left, fails alone). Each progress line carries the seconds since the
//! binary started. Chains run side by side: each mostly waits on its own VMs or composes. Used
//! by the test binary `scenarios` (`harness = false`, libtest-mimic), which includes it with
//! `#[path]`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Run the trials of a binary's chains with the command line's arguments: every trial at once
/// unless `--test-threads` says otherwise (a trial waits for the steps before it on its chain's
/// lock, and the chains run side by side). The worlds are gone when this returns.
pub fn run(trials: Vec<libtest_mimic::Trial>) -> ExitCode {
    since_start();
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(trials.len().max(1));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Steps named after the functions that run them: `steps![module::a_behaviour, ...]` is the
/// step `a_behaviour` running `module::a_behaviour`, and so on.
#[allow(unused_macros)]
macro_rules! steps {
    ($($m:ident :: $f:ident),* $(,)?) => {
        vec![$($crate::chain::Step::new(stringify!($f), $m::$f)),*]
    };
}

/// What a step does to the world; a panic fails it.
pub type Run<W> = Box<dyn Fn(&mut W) + Send + Sync>;

/// A step: its name (the test's) and what it does.
pub struct Step<W> {
    pub name: String,
    pub run: Run<W>,
    /// A check only reads the world: its failure fails it alone, not the steps after it.
    pub check: bool,
}

impl<W> Step<W> {
    pub fn new(name: impl Into<String>, run: impl Fn(&mut W) + Send + Sync + 'static) -> Self {
        Step {
            name: name.into(),
            run: Box::new(run),
            check: false,
        }
    }

    /// A step that only reads what the steps before it left (a report, a result).
    #[allow(dead_code)]
    pub fn check(name: impl Into<String>, run: impl Fn(&mut W) + Send + Sync + 'static) -> Self {
        Step {
            check: true,
            ..Step::new(name, run)
        }
    }
}

/// Seconds since the test binary started, for the progress lines.
fn since_start() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

struct State<W> {
    world: Option<W>,
    /// Each step's result once it ran: `Err` holds the failure.
    done: Vec<Option<Result<(), String>>>,
}

/// A chain of steps over one world `W`, built by `make` when its first step runs.
pub struct Chain<W> {
    pub name: &'static str,
    make: fn() -> W,
    steps: Vec<Step<W>>,
    state: Mutex<State<W>>,
    /// The niceness its steps (and the processes they start) run at.
    nice: i32,
}

/// Run the calling thread, and the processes it starts from now on, at niceness `n` (Linux keeps
/// a niceness per thread, and a child inherits its parent thread's).
fn set_nice(n: i32) {
    let tid = nix::unistd::gettid().to_string();
    let out = std::process::Command::new("renice")
        .args(["-n", &n.to_string(), "-p", &tid])
        .output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("renice -n {n} -p {tid}: {out:?}");
    }
}

impl<W: Send + 'static> Chain<W> {
    pub fn new(name: &'static str, make: fn() -> W, steps: Vec<Step<W>>) -> Arc<Self> {
        Self::niced(name, make, steps, 0)
    }

    /// A chain whose steps run at niceness `n`: a chain that only composes and serves
    /// leaves the CPU to the chains whose VMs must boot in time.
    pub fn niced(name: &'static str, make: fn() -> W, steps: Vec<Step<W>>, n: i32) -> Arc<Self> {
        let n_steps = steps.len();
        Arc::new(Chain {
            name,
            make,
            steps,
            state: Mutex::new(State {
                world: None,
                done: vec![None; n_steps],
            }),
            nice: n,
        })
    }

    /// One trial per step, named `CHAIN::STEP`.
    pub fn trials(self: &Arc<Self>) -> Vec<libtest_mimic::Trial> {
        (0..self.steps.len())
            .map(|i| {
                let c = Arc::clone(self);
                let name = format!("{}::{}", self.name, self.steps[i].name);
                libtest_mimic::Trial::test(name, move || c.through(i).map_err(Into::into))
            })
            .collect()
    }

    /// Run the steps up to `i` that have not run yet, in order; step `i`'s result.
    fn through(&self, i: usize) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for j in 0..=i {
            if st.done[j].is_some() {
                continue;
            }
            let blocks = |k: &usize| !self.steps[*k].check && matches!(st.done[*k], Some(Err(_)));
            if let Some(first) = (0..j).find(blocks) {
                let why = format!("not run: {}::{} failed", self.name, self.steps[first].name);
                st.done[j] = Some(Err(why));
                continue;
            }
            let started = Instant::now();
            eprintln!(
                "[{} +{:.0}s] {} ...",
                self.name,
                since_start(),
                self.steps[j].name
            );
            let make = self.make;
            let run = &self.steps[j].run;
            let world = &mut st.world;
            if self.nice != 0 {
                set_nice(self.nice);
            }
            let r = catch_unwind(AssertUnwindSafe(|| run(world.get_or_insert_with(make))));
            if self.nice != 0 {
                set_nice(0);
            }
            let r = r.map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                format!("{}::{}: {msg}", self.name, self.steps[j].name)
            });
            eprintln!(
                "[{} +{:.0}s] {}: {} in {:.0} s",
                self.name,
                since_start(),
                self.steps[j].name,
                if r.is_ok() { "ok" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            st.done[j] = Some(r);
        }
        // The last trial of a chain to finish takes its world down (VMs, HAProxy, servers).
        if st.done.iter().all(Option::is_some) {
            st.world = None;
        }
        st.done[i]
            .clone()
            .unwrap_or_else(|| Err("internal: not run".into()))
    }
}
