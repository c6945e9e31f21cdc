//! The checks over a run's history: etcd's own record of the holder keys and the nodes' records.

use super::*;

/// The checks over the history; every failure, with the history that shows it.
pub(crate) fn check(
    groups: &[(String, u32)],
    changes: &[Change],
    slot_puts: &[(i64, String, u32)],
    records: &[Record],
    dying: &BTreeSet<usize>,
    nodes: usize,
) -> (Vec<String>, Vec<Duration>) {
    let mut failures = Vec::new();
    let (grants, freed) = replay(groups, changes, slot_puts, &mut failures);
    check_grants(&grants, records, &mut failures);
    check_updates(records, dying, nodes, &mut failures);
    let dead_times = check_dead(&freed, records, &mut failures);
    (failures, dead_times)
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

/// Check 2: no grant lost or given twice: the tokens the nodes were given are exactly etcd's grants.
fn check_grants(grants: &Grants, records: &[Record], failures: &mut Vec<String>) {
    let mut given: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for r in records {
        if let Seen::Granted { token } = r.seen {
            given.entry(token).or_default().insert(r.node);
        }
    }
    for (tok, (id, _)) in grants {
        match given.get(&(*tok as u64)) {
            None => failures.push(format!("grant {tok} to {id} in etcd reached no node")),
            Some(ns) if ns.len() > 1 || ns.iter().any(|n| format!("node-{n:04}") != *id) => {
                failures.push(format!("grant {tok} of {id} was given to nodes {ns:?}"))
            }
            _ => {}
        }
    }
    for (tok, ns) in &given {
        if !grants.contains_key(&(*tok as i64)) {
            failures.push(format!(
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

/// Check 5: each expiry is audited by exactly one server, and every dead holder's is among
/// them. How many expiries the logs hold.
pub(crate) fn check_audited_expiries(
    audits: &[std::path::PathBuf],
    records: &[Record],
    failures: &mut Vec<String>,
) -> usize {
    let mut expired: BTreeMap<u64, usize> = BTreeMap::new();
    for a in audits {
        for r in cairn::lock::audit::read(a).unwrap() {
            if r.action == cairn::lock::audit::Action::Expire {
                *expired.entry(r.fencing_token.unwrap()).or_default() += 1;
            }
        }
    }
    for (tok, n) in &expired {
        if *n != 1 {
            failures.push(format!("the expiry of grant {tok} was audited {n} times"));
        }
    }
    for r in records {
        if let Seen::Died { token } = r.seen {
            if !expired.contains_key(&token) {
                failures.push(format!(
                    "node-{:04}'s dead grant {token} has no expiry in the audit logs",
                    r.node
                ));
            }
        }
    }
    expired.len()
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
    let (failures, _) = check(
        &groups,
        &changes,
        &[(1, "g".into(), 1)],
        &records,
        &BTreeSet::new(),
        2,
    );
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
