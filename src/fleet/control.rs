//! The operator's control of a running rollout: `cairn rollout pause` and `abort` write a typed
//! request into the fleet's directory, and the rollout reads it between batches, in one place
//! ([`read`]). The request is a versioned document, never a word compared as a string.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The format of `rollout.control` (bumped on an incompatible change).
pub const FORMAT: u32 = 1;

/// What the operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// Stop after the current batch; `cairn rollout resume` continues.
    Pause,
    /// Stop after the current batch for good.
    Abort,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Abort => "abort",
        }
    }
}

/// The request as written: what, by whom, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub format: u32,
    pub control: Control,
    /// `user@host` of the operator.
    pub by: String,
    /// Seconds since the epoch.
    pub time: i64,
}

/// Ask the rollout in the fleet directory's `path` to pause or abort.
pub fn write(path: &Path, control: Control) -> Result<()> {
    let r = Request {
        format: FORMAT,
        control,
        by: super::lock::actor(),
        time: chrono::Utc::now().timestamp(),
    };
    crate::base::tmp::write_atomic(path, &serde_json::to_vec_pretty(&r)?)
}

/// The operator's request, if there is one; a file that is not one is an error naming it.
pub fn read(path: &Path) -> Result<Option<Request>> {
    let text = match fs_err::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let r: Request = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a rollout control request", path.display()))?;
    if r.format > FORMAT {
        bail!(
            "{}: control format {} is newer than this cairn reads ({FORMAT})",
            path.display(),
            r.format
        );
    }
    Ok(Some(r))
}

/// Forget the request (a new or resumed rollout starts without one).
pub fn clear(path: &Path) -> Result<()> {
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_written_read_and_cleared() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rollout.control");
        assert_eq!(read(&p).unwrap(), None);
        for c in [Control::Pause, Control::Abort] {
            write(&p, c).unwrap();
            let r = read(&p).unwrap().unwrap();
            assert_eq!((r.control, r.format), (c, FORMAT));
            let v: serde_json::Value = serde_json::from_slice(&fs_err::read(&p).unwrap()).unwrap();
            assert_eq!(v["control"], c.as_str());
        }
        clear(&p).unwrap();
        clear(&p).unwrap();
        assert_eq!(read(&p).unwrap(), None);
    }

    #[test]
    fn a_word_or_a_newer_format_is_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rollout.control");
        fs_err::write(&p, "abort").unwrap();
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("rollout.control") && e.contains("not a rollout control"),
            "{e}"
        );
        fs_err::write(&p, r#"{"format":1,"control":"stop","by":"a@b","time":0}"#).unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("unknown variant"));
        fs_err::write(&p, r#"{"format":2,"control":"pause","by":"a@b","time":0}"#).unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("newer"));
    }
}
