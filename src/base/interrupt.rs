//! Ctrl-C and termination: instead of dying on the spot (which would leave mounts and work trees
//! behind), cairn notes the signal, stops the running command, and unwinds through its guards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Result;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The error a step returns once a signal arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Catch SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() -> Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

/// Has a signal arrived?
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// An error if a signal arrived.
pub fn check() -> Result<()> {
    if requested() {
        return Err(Interrupted.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_sets_the_flag() {
        install().unwrap();
        assert!(check().is_ok());
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert!(requested());
        assert!(check().unwrap_err().downcast_ref::<Interrupted>().is_some());
        FLAG.get().unwrap().store(false, Ordering::SeqCst);
    }
}
