//! Named tests over one shared, booted world: a chain is a list of steps, each one behaviour
//! with its own test name, run in order on one world (a fleet, a VM) that the earlier steps
//! built. Every step is a trial of its own; a trial runs the steps before it that have not run
//! yet (so `cargo test --test boots NAME` works alone), and a step after a failed one fails
//! naming the step that failed first. Chains run side by side: each mostly waits on its own VMs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a step does to the world; a panic fails it.
pub type Run<W> = Box<dyn Fn(&mut W) + Send + Sync>;

/// A step: its name (the test's) and what it does.
pub struct Step<W> {
    pub name: String,
    pub run: Run<W>,
}

impl<W> Step<W> {
    pub fn new(name: impl Into<String>, run: impl Fn(&mut W) + Send + Sync + 'static) -> Self {
        Step {
            name: name.into(),
            run: Box::new(run),
        }
    }
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
}

impl<W: Send + 'static> Chain<W> {
    pub fn new(name: &'static str, make: fn() -> W, steps: Vec<Step<W>>) -> Arc<Self> {
        let n = steps.len();
        Arc::new(Chain {
            name,
            make,
            steps,
            state: Mutex::new(State {
                world: None,
                done: vec![None; n],
            }),
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
            if let Some(first) = (0..j).find(|k| matches!(st.done[*k], Some(Err(_)))) {
                let why = format!("not run: {}::{} failed", self.name, self.steps[first].name);
                st.done[j] = Some(Err(why));
                continue;
            }
            let started = Instant::now();
            eprintln!("[{}] {} ...", self.name, self.steps[j].name);
            let make = self.make;
            let run = &self.steps[j].run;
            let world = &mut st.world;
            let r = catch_unwind(AssertUnwindSafe(|| run(world.get_or_insert_with(make))));
            let r = r.map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                format!("{}::{}: {msg}", self.name, self.steps[j].name)
            });
            eprintln!(
                "[{}] {}: {} in {:.0} s",
                self.name,
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
