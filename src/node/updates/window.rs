//! The `periodic` strategy's calendar: weekly windows (Zincati's `days`, `start-time`,
//! `length-minutes`) in an explicit time zone, and blackout dates (a change freeze: no update
//! from one day to another, both included), which win over every window. Pure: the time is an
//! argument.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc, Weekday};

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;

/// A weekly window: it opens on each of `days` at `start` (local time) for `length` minutes,
/// across midnight when it runs past it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub days: BTreeSet<u32>,
    pub start: NaiveTime,
    pub length_minutes: u32,
}

/// Days on which no update happens, from `from` to `until` (local dates, both included).
#[derive(Debug, Clone, PartialEq)]
pub struct Blackout {
    pub from: NaiveDate,
    pub until: NaiveDate,
    pub reason: Option<String>,
}

/// The whole calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Periodic {
    pub time_zone: chrono_tz::Tz,
    pub windows: Vec<Window>,
    pub blackouts: Vec<Blackout>,
}

fn weekday(s: &str) -> Option<Weekday> {
    s.parse::<Weekday>().ok()
}

impl Window {
    /// A window from its keys, or what is wrong with them.
    pub fn new(days: &[String], start: &str, length_minutes: u32) -> Result<Self, String> {
        if days.is_empty() {
            return Err("`days` is empty".into());
        }
        let mut set = BTreeSet::new();
        for d in days {
            let w = weekday(d).ok_or_else(|| {
                format!("`days`: {d:?} is not a day of the week (Mon, Tue, … or Monday, …)")
            })?;
            set.insert(w.num_days_from_monday());
        }
        let start = NaiveTime::parse_from_str(start, "%H:%M")
            .map_err(|_| format!("`start-time`: {start:?} is not a time like \"22:30\""))?;
        if length_minutes == 0 || length_minutes > WEEK {
            return Err(format!(
                "`length-minutes`: {length_minutes} is not from 1 to {WEEK}"
            ));
        }
        Ok(Window {
            days: set,
            start,
            length_minutes,
        })
    }

    /// Is the local time `minute_of_week` (Monday 00:00 is 0) inside?
    fn contains(&self, minute_of_week: u32) -> bool {
        let start = self.start.hour() * 60 + self.start.minute();
        self.days.iter().any(|d| {
            let open = d * 24 * 60 + start;
            (minute_of_week + WEEK - open) % WEEK < self.length_minutes
        })
    }
}

impl Blackout {
    /// A blackout from its keys, or what is wrong with them.
    pub fn new(from: &str, until: &str, reason: Option<String>) -> Result<Self, String> {
        let date = |key: &str, s: &str| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| format!("`{key}`: {s:?} is not a date like \"2026-12-24\""))
        };
        let (from, until) = (date("from", from)?, date("until", until)?);
        if until < from {
            return Err(format!("`until` ({until}) is before `from` ({from})"));
        }
        Ok(Blackout {
            from,
            until,
            reason,
        })
    }
}

impl Periodic {
    /// `None` when an update may start at `now`; otherwise why not.
    pub fn closed(&self, now: DateTime<Utc>) -> Option<String> {
        let local = now.with_timezone(&self.time_zone);
        let day = local.date_naive();
        if let Some(b) = self
            .blackouts
            .iter()
            .find(|b| b.from <= day && day <= b.until)
        {
            return Some(format!(
                "in the blackout from {} to {} ({}){}",
                b.from,
                b.until,
                self.time_zone,
                b.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        let mow =
            local.weekday().num_days_from_monday() * 24 * 60 + local.hour() * 60 + local.minute();
        if self.windows.iter().any(|w| w.contains(mow)) {
            return None;
        }
        Some(format!(
            "outside every update window ({} is {} in {})",
            now.format("%Y-%m-%dT%H:%MZ"),
            local.format("%a %H:%M"),
            self.time_zone
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cal(tz: &str) -> Periodic {
        Periodic {
            time_zone: tz.parse().unwrap(),
            windows: vec![Window::new(&["Sat".into()], "23:00", 120).unwrap()],
            blackouts: vec![
                Blackout::new("2026-12-20", "2027-01-04", Some("freeze".into())).unwrap(),
            ],
        }
    }

    #[test]
    fn a_window_runs_past_midnight_in_its_own_time_zone() {
        let c = cal("Europe/Berlin");
        // 2026-11-28 is a Saturday; 22:30Z is 23:30 in Berlin (CET, +1).
        assert_eq!(c.closed(at("2026-11-28T22:30:00Z")), None);
        // Sunday 00:59 Berlin is still inside; 01:00 is not.
        assert_eq!(c.closed(at("2026-11-28T23:59:00Z")), None);
        assert!(c.closed(at("2026-11-29T00:00:00Z")).is_some());
        // 22:30 in UTC is outside when the zone is UTC and the window opens at 23:00.
        assert!(cal("UTC").closed(at("2026-11-28T22:30:00Z")).is_some());
    }

    #[test]
    fn a_blackout_wins_over_a_window() {
        let c = cal("UTC");
        // 2026-12-26 is a Saturday inside the freeze.
        let why = c.closed(at("2026-12-26T23:30:00Z")).unwrap();
        assert!(why.contains("blackout") && why.contains("freeze"), "{why}");
        // The first Saturday after it is open again.
        assert_eq!(c.closed(at("2027-01-09T23:30:00Z")), None);
    }

    #[test]
    fn bad_keys_say_which() {
        assert!(Window::new(&["Funday".into()], "22:00", 60)
            .unwrap_err()
            .contains("Funday"));
        assert!(Window::new(&["Mon".into()], "25:00", 60)
            .unwrap_err()
            .contains("start-time"));
        assert!(Window::new(&["Mon".into()], "22:00", 0)
            .unwrap_err()
            .contains("length-minutes"));
        assert!(Blackout::new("2027-01-04", "2026-12-20", None)
            .unwrap_err()
            .contains("before"));
    }
}
