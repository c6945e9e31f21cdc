//! The wire, pinned: every enum's words, a full document of the current format byte for byte
//! (`status-v1.json`: a change to the wire is a visible diff there), and strict reading.

use super::*;

/// A full document of format 1, every field populated.
const FIXTURE: &str = include_str!("status-v1.json");

/// An enum's every variant: its word on the wire is `as_str`, lower-case kebab, and reads back.
/// Returns the words, in order.
fn round_trips<T>(all: &[T], word: fn(T) -> &'static str) -> String
where
    T: Copy + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + std::fmt::Display,
{
    for &v in all {
        let w = word(v);
        assert!(
            !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{v:?}: {w:?} is not kebab-case"
        );
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, format!("\"{w}\""), "{v:?}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v, "{v:?}");
        assert_eq!(v.to_string(), w, "{v:?}");
    }
    all.iter().map(|&v| word(v)).collect::<Vec<_>>().join(" ")
}

#[test]
fn every_variant_of_every_enum_round_trips() {
    // The words of format 1, as the node has always written them.
    assert_eq!(
        round_trips(NodeState::ALL, NodeState::as_str),
        "steady armed on-trial passed failing fell-back stale unknown"
    );
    assert_eq!(
        round_trips(Verdict::ALL, Verdict::as_str),
        "good failed trial unknown"
    );
    assert_eq!(
        round_trips(BootClass::ALL, BootClass::as_str),
        "normal trial stale-cleared fell-back armed"
    );
    assert_eq!(
        round_trips(Action::ALL, Action::as_str),
        "upgrade rebase rollback cancel none"
    );
}

/// Every value of `v`, recursively: none may be `null` (every field populated).
fn no_nulls(v: &serde_json::Value, at: &str) {
    match v {
        serde_json::Value::Null => panic!("{at} is null: the fixture populates every field"),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| no_nulls(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| no_nulls(x, &format!("{at}.{k}"))),
        _ => {}
    }
}

#[test]
fn the_fixture_reads_and_writes_back_byte_for_byte() {
    let s = read(FIXTURE.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(write(&s).unwrap()).unwrap(), FIXTURE);
    no_nulls(&serde_json::from_str(FIXTURE).unwrap(), "status");
    assert_eq!(
        (s.format, s.state, s.verdict),
        (FORMAT, NodeState::OnTrial, Verdict::Trial)
    );
    assert_eq!(s.boot, Some(BootClass::Trial));
    assert_eq!(s.booted().map(|d| d.index), Some(0));
    assert_eq!(s.default_deployment().map(|d| d.serial), Some(0));
    assert_eq!(s.trial.as_ref().map(|t| t.attempts.len()), Some(1));
    assert_eq!(s.failed.len(), 1);
}

#[test]
fn an_empty_record_round_trips() {
    let s = Status::default();
    let text = write(&s).unwrap();
    assert_eq!(read(&text).unwrap(), s);
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(
        v["booted"],
        serde_json::Value::Null,
        "an empty field is written, as null"
    );
}

/// The fixture with `edit` applied, read.
fn read_edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    edit(&mut v);
    let e = read(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    e.to_string()
}

fn remove(v: &mut serde_json::Value, field: &str) {
    assert!(
        v.as_object_mut().unwrap().remove(field).is_some(),
        "{field}"
    );
}

#[test]
fn a_missing_field_is_an_error_naming_it() {
    // An `Option` too: serde alone would read a missing one as `None`.
    let e = read_edited(|v| remove(&mut v["deployments"][1], "signed_by"));
    assert!(
        e.contains("deployments[1]") && e.contains("missing field `signed_by`"),
        "{e}"
    );
    let e = read_edited(|v| remove(v, "verdict"));
    assert!(e.contains("missing field `verdict`"), "{e}");
    let e = read_edited(|v| remove(v, "failed"));
    assert!(e.contains("missing field `failed`"), "{e}");
    let e = read_edited(|v| remove(&mut v["trial"], "attempts"));
    assert!(
        e.contains("trial") && e.contains("missing field `attempts`"),
        "{e}"
    );
    let e = read_edited(|v| remove(&mut v["booted"], "ref"));
    assert!(
        e.contains("booted") && e.contains("missing field `ref`"),
        "{e}"
    );
    let e = read_edited(|v| remove(v, "format"));
    assert!(e.contains("missing field `format`"), "{e}");
}

#[test]
fn an_unknown_value_is_an_error_naming_its_field() {
    let e = read_edited(|v| v["state"] = "sleeping".into());
    assert!(e.starts_with("state: unknown variant `sleeping`"), "{e}");
    let e = read_edited(|v| v["boot"] = "rebooted".into());
    assert!(e.starts_with("boot: unknown variant `rebooted`"), "{e}");
    let e = read_edited(|v| v["verdict"] = "fine".into());
    assert!(e.starts_with("verdict: unknown variant `fine`"), "{e}");
    let e = read_edited(|v| v["deployments"][0]["booted"] = "yes".into());
    assert!(e.starts_with("deployments[0].booted: invalid type"), "{e}");
}

#[test]
fn a_format_this_cairn_does_not_read_is_an_error_saying_which_it_reads() {
    let e = read_edited(|v| v["format"] = 2.into());
    assert_eq!(
        e,
        "format 2 is newer than this cairn reads (format 1): upgrade cairn"
    );
    // Checked first: a newer document need not be one this cairn could otherwise read.
    let e = read(br#"{"format": 7, "state": "hibernating"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("format 7 is newer"), "{e}");
    let e = read_edited(|v| v["format"] = 0.into());
    assert_eq!(e, "format 0 is not one this cairn reads (format 1)");
    let e = read(b"{").unwrap_err().to_string();
    assert!(e.contains("EOF"), "{e}");
    let e = read(format!("{FIXTURE} {{}}").as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("trailing characters"), "{e}");
}

#[test]
fn a_deployment_id_shows_its_short_hash() {
    let d = DeploymentId {
        commit: "b".repeat(64),
        serial: 2,
    };
    assert_eq!(d.to_string(), "bbbbbbbbbbbb.2");
    let short = DeploymentId {
        commit: "c2".into(),
        serial: 0,
    };
    assert_eq!(short.to_string(), "c2.0");
}
