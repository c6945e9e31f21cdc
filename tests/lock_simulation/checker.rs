//! The checks over a run's history: etcd's own record of the holder keys and the nodes' records.

use super::*;

/// What the servers' audit logs hold, by fencing token: the grants, and how often each expiry
/// was written.
#[derive(Default)]
pub(crate) struct Audited {
    pub granted: BTreeSet<u64>,
    pub expired: BTreeMap<u64, usize>,
}

impl Audited {
    pub(crate) fn read(paths: &[std::path::PathBuf]) -> Audited {
        use cairn::lock::audit::Action;
        let mut a = Audited::default();
        for p in paths {
            for r in cairn::lock::audit::read(p).unwrap() {
                match (r.action, r.fencing_token) {
                    (Action::Grant, Some(t)) => {
                        a.granted.insert(t);
                    }
                    (Action::Expire, Some(t)) => *a.expired.entry(t).or_default() += 1,
                    _ => {}
                }
            }
        }
        a
    }
}

/// What the checks found: the failures (each with the history that shows it), what the SIGKILL of
/// a server explains (a server killed between a store commit and its audit line), and how long
/// each dead holder's slot took to come free.
pub(crate) struct Findings {
    pub failures: Vec<String>,
    pub excused: Vec<String>,
    pub dead_times: Vec<Duration>,
}

/// A run's history, and the instant a lock server was SIGKILLed.
pub(crate) struct History<'a> {
    pub groups: &'a [(String, u32)],
    pub changes: &'a [Change],
    pub slot_puts: &'a [(i64, String, u32)],
    pub records: &'a [Record],
    pub dying: &'a BTreeSet<usize>,
    pub nodes: usize,
    pub audited: &'a Audited,
    pub killed: Option<Instant>,
}

impl History<'_> {
    /// Did the watch see a change at `at` close enough to the SIGKILL of a server for the kill
    /// to explain it (committed before the kill, seen a little after)?
    fn near_kill(&self, at: Instant) -> bool {
        self.killed
            .is_some_and(|k| at + Duration::from_secs(2) >= k && at <= k + Duration::from_secs(5))
    }
}

/// The checks over the history.
pub(crate) fn check(h: &History) -> Findings {
    let mut f = Findings {
        failures: Vec::new(),
        excused: Vec::new(),
        dead_times: Vec::new(),
    };
    let (grants, freed) = replay(h.groups, h.changes, h.slot_puts, &mut f.failures);
    check_grants(&grants, &freed, h, &mut f);
    check_updates(h.records, h.dying, h.nodes, &mut f.failures);
    f.dead_times = check_dead(&freed, h.records, &mut f.failures);
    check_audited_expiries(&freed, h, &mut f);
    f
}

type Grants<'a> = BTreeMap<i64, (&'a str, Instant)>;

/// Check 1: never more holders than slots, at any revision. The grants etcd recorded, and when each
/// grant's key was deleted.
fn replay<'a>(
    groups: &[(String, u32)],
    changes: &'a [Change],
    slot_puts: &[(i64, String, u32)],
    failures: &mut Vec<String>,
) -> (Grants<'a>, BTreeMap<i64, Instant>) {
    let configured: BTreeMap<&str, u32> = groups.iter().map(|(g, s)| (g.as_str(), *s)).collect();
    let mut slots: BTreeMap<String, u32> = BTreeMap::new();
    for (_, g, s) in slot_puts {
        slots.insert(g.clone(), *s);
    }
    let mut held: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut grants: BTreeMap<i64, (&str, Instant)> = BTreeMap::new();
    let mut freed: BTreeMap<i64, Instant> = BTreeMap::new();
    for (n, c) in changes.iter().enumerate() {
        let g = held.entry(c.group.as_str()).or_default();
        if c.put && c.create_revision == c.revision {
            g.insert(&c.key, c.revision);
            grants.insert(c.revision, (&c.key, c.at));
            let limit = slots
                .get(&c.group)
                .copied()
                .unwrap_or(configured[c.group.as_str()]);
            if g.len() as u32 > limit {
                let around: Vec<String> = changes[n.saturating_sub(12)..=n]
                    .iter()
                    .filter(|x| x.group == c.group)
                    .map(|x| {
                        format!(
                            "  rev {} {} {} (grant {})",
                            x.revision,
                            if x.put { "put" } else { "delete" },
                            x.key,
                            x.create_revision
                        )
                    })
                    .collect();
                failures.push(format!(
                    "group {}: {} holders of {limit} slots at revision {}:\n{}",
                    c.group,
                    g.len(),
                    c.revision,
                    around.join("\n")
                ));
            }
        } else if !c.put {
            if let Some(tok) = g.remove(c.key.as_str()) {
                freed.insert(tok, c.at);
            }
        }
    }
    (grants, freed)
}

/// Check 2: no grant lost or given twice: the tokens the nodes were given are exactly etcd's
/// grants. A grant no node received is excused only when no server audited it (its server was
/// killed between the commit and the reply), etcd recorded it at the kill, and its slot came
/// free again.
fn check_grants(grants: &Grants, freed: &BTreeMap<i64, Instant>, h: &History, f: &mut Findings) {
    let mut given: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for r in h.records {
        if let Seen::Granted { token } = r.seen {
            given.entry(token).or_default().insert(r.node);
        }
    }
    for (tok, (id, at)) in grants {
        match given.get(&(*tok as u64)) {
            None if !h.audited.granted.contains(&(*tok as u64))
                && freed.contains_key(tok)
                && h.near_kill(*at) =>
            {
                f.excused.push(format!(
                    "grant {tok} to {id}: committed, never audited nor answered, freed"
                ))
            }
            None => f
                .failures
                .push(format!("grant {tok} to {id} in etcd reached no node")),
            Some(ns) if ns.len() > 1 || ns.iter().any(|n| format!("node-{n:04}") != *id) => f
                .failures
                .push(format!("grant {tok} of {id} was given to nodes {ns:?}")),
            _ => {}
        }
    }
    for (tok, ns) in &given {
        if !grants.contains_key(&(*tok as i64)) {
            f.failures.push(format!(
                "nodes {ns:?} were given grant {tok}, which etcd never recorded"
            ));
        }
    }
}

/// Check 3: every surviving node updated exactly once, and every dead one never.
fn check_updates(
    records: &[Record],
    dying: &BTreeSet<usize>,
    nodes: usize,
    failures: &mut Vec<String>,
) {
    let mut updates: BTreeMap<usize, usize> = BTreeMap::new();
    for r in records {
        if let Seen::Updated { .. } = r.seen {
            *updates.entry(r.node).or_default() += 1;
        }
    }
    for n in 0..nodes {
        let u = updates.get(&n).copied().unwrap_or(0);
        let want = usize::from(!dying.contains(&n));
        if u != want {
            let hist: Vec<String> = records
                .iter()
                .filter(|r| r.node == n)
                .map(|r| format!("  {:?}", r.seen))
                .collect();
            failures.push(format!(
                "node-{n:04} updated {u} times (want {want}):\n{}",
                hist.join("\n")
            ));
        }
    }
}

/// Check 4: a dead holder's slot is free within TTL + one renewal interval of its last renewal; how
/// long each took.
fn check_dead(
    freed: &BTreeMap<i64, Instant>,
    records: &[Record],
    failures: &mut Vec<String>,
) -> Vec<Duration> {
    let mut dead_times = Vec::new();
    for r in records {
        if let Seen::Died { token } = r.seen {
            match freed.get(&(token as i64)) {
                None => failures.push(format!(
                    "node-{:04} died holding grant {token}, which was never freed",
                    r.node
                )),
                Some(at) => {
                    let took = at.saturating_duration_since(r.at);
                    dead_times.push(took);
                    if took > TTL + RENEW {
                        failures.push(format!("node-{:04}'s dead grant {token} was freed after {took:?}, more than TTL + renewal ({:?})", r.node, TTL + RENEW));
                    }
                }
            }
        }
    }
    dead_times
}

/// Check 5: each expiry is audited by at most one server, and every dead holder's by one. A
/// dead holder's expiry may lack its line only when etcd recorded the delete at a server's
/// SIGKILL (2 s before to 5 s after: the server died between the commit and the append).
fn check_audited_expiries(freed: &BTreeMap<i64, Instant>, h: &History, f: &mut Findings) {
    for (tok, n) in &h.audited.expired {
        if *n != 1 {
            f.failures
                .push(format!("the expiry of grant {tok} was audited {n} times"));
        }
    }
    for r in h.records {
        if let Seen::Died { token } = r.seen {
            if h.audited.expired.contains_key(&token) {
                continue;
            }
            let what = format!("node-{:04}'s dead grant {token}", r.node);
            match freed.get(&(token as i64)) {
                Some(at) if h.near_kill(*at) => f.excused.push(format!(
                    "{what}: freed at the kill, its expiry never audited"
                )),
                _ => f
                    .failures
                    .push(format!("{what} has no expiry in the audit logs")),
            }
        }
    }
}

pub(crate) fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
pub(crate) fn the_checker_catches_an_over_granted_group_a_lost_grant_and_a_double_update() {
    let groups = vec![("g".to_string(), 1)];
    let t0 = Instant::now();
    let change = |revision: i64, key: &str, put: bool, create_revision: i64| Change {
        at: t0,
        revision,
        group: "g".into(),
        key: key.into(),
        put,
        create_revision,
    };
    let record = |node: usize, seen: Seen| Record { at: t0, node, seen };
    // Two holders in a group of one slot; node 1 updates twice; grant 3 reaches nobody.
    let changes = vec![
        change(2, "node-0000", true, 2),
        change(3, "node-0001", true, 3),
    ];
    let records = vec![
        record(0, Seen::Granted { token: 2 }),
        record(0, Seen::Updated { token: 2 }),
        record(1, Seen::Updated { token: 3 }),
        record(1, Seen::Updated { token: 3 }),
    ];
    let audited = Audited::default();
    let f = check(&History {
        groups: &groups,
        changes: &changes,
        slot_puts: &[(1, "g".into(), 1)],
        records: &records,
        dying: &BTreeSet::new(),
        nodes: 2,
        audited: &audited,
        killed: None,
    });
    let failures = f.failures;
    let all = failures.join("\n");
    assert!(
        all.contains("group g: 2 holders of 1 slots at revision 3"),
        "{all}"
    );
    assert!(
        all.contains("rev 2 put node-0000"),
        "the offending history is shown: {all}"
    );
    assert!(
        all.contains("grant 3 to node-0001 in etcd reached no node"),
        "{all}"
    );
    assert!(all.contains("node-0001 updated 2 times"), "{all}");
    assert_eq!(failures.len(), 3, "{all}");
}

#[test]
pub(crate) fn the_checker_excuses_only_what_a_killed_server_explains() {
    let groups = vec![("g".to_string(), 5)];
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let change = |at: Instant, revision: i64, key: &str, put: bool, create_revision: i64| Change {
        at,
        revision,
        group: "g".into(),
        key: key.into(),
        put,
        create_revision,
    };
    // Grant 12: unaudited, at the kill, freed (excused). Grant 6: audited (fails). Grant 9:
    // unaudited but long before the kill (fails). Grants 7 and 8: dead holders, freed at the
    // kill (excused) and long after it (fails), neither expiry audited.
    let changes = vec![
        change(t0, 6, "node-0001", true, 6),
        change(t0, 7, "node-0002", true, 7),
        change(t0, 8, "node-0003", true, 8),
        change(t0, 9, "node-0004", true, 9),
        change(t0 + s(1), 10, "node-0001", false, 0),
        change(t0 + s(1), 11, "node-0004", false, 0),
        change(t0 + s(10), 12, "node-0000", true, 12),
        change(t0 + s(10) + s(1) / 2, 13, "node-0002", false, 0),
        change(t0 + s(14), 14, "node-0000", false, 0),
        change(t0 + s(20), 15, "node-0003", false, 0),
    ];
    let record = |at: Instant, node: usize, seen: Seen| Record { at, node, seen };
    let records = vec![
        record(t0 + s(8), 2, Seen::Granted { token: 7 }),
        record(t0 + s(8), 2, Seen::Died { token: 7 }),
        record(t0 + s(18), 3, Seen::Granted { token: 8 }),
        record(t0 + s(18), 3, Seen::Died { token: 8 }),
    ];
    let audited = Audited {
        granted: [6, 7, 8].into(),
        expired: BTreeMap::new(),
    };
    let f = check(&History {
        groups: &groups,
        changes: &changes,
        slot_puts: &[(1, "g".into(), 5)],
        records: &records,
        dying: &(0..5).collect(),
        nodes: 5,
        audited: &audited,
        killed: Some(t0 + s(10)),
    });
    let all = f.failures.join("\n");
    assert!(
        all.contains("grant 6 to node-0001 in etcd reached no node"),
        "{all}"
    );
    assert!(
        all.contains("node-0003's dead grant 8 has no expiry"),
        "{all}"
    );
    assert!(
        all.contains("grant 9 to node-0004 in etcd reached no node"),
        "{all}"
    );
    assert_eq!(f.failures.len(), 3, "{all}");
    let excused = f.excused.join("\n");
    assert!(excused.contains("grant 12 to node-0000"), "{excused}");
    assert!(excused.contains("node-0002's dead grant 7"), "{excused}");
    assert_eq!(f.excused.len(), 2, "{excused}");
}
