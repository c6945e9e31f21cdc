use super::*;

fn c(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn rel(v: &str, n: u8, start: Option<i64>, minutes: u64) -> Release {
    Release {
        version: v.into(),
        commit: c(n),
        metadata: ReleaseMeta {
            rollout: start.map(|s| Rollout {
                start_epoch: s,
                start_percentage: 0.0,
                duration_minutes: minutes,
                paused_epoch: None,
            }),
            ..Default::default()
        },
    }
}

fn graph(releases: Vec<Release>) -> Graph {
    let mut g = Graph::new("cairn/amd64/app");
    g.releases = releases;
    g.check().unwrap();
    g
}

fn to(n: Next<'_>) -> Option<String> {
    match n {
        Next::Update { to, .. } => Some(to.version.clone()),
        _ => None,
    }
}

#[test]
fn the_wavefront_opens_to_the_least_wary_first() {
    let g = graph(vec![rel("1", 1, Some(0), 0), rel("2", 2, Some(1000), 10)]);
    // Before the start nobody; halfway (300 s of 600) wariness up to 0.5; at the end everyone.
    assert_eq!(to(g.next(&c(1), 0.0, 999)), None);
    assert_eq!(to(g.next(&c(1), 0.0, 1000)), Some("2".into()));
    assert_eq!(to(g.next(&c(1), 0.49, 1300)), Some("2".into()));
    assert_eq!(to(g.next(&c(1), 0.51, 1300)), None);
    assert_eq!(to(g.next(&c(1), 1.0, 1600)), Some("2".into()));
    assert_eq!(to(g.next(&c(2), 0.0, 1600)), None, "on the newest");
    let ro = g.releases[1].metadata.rollout.as_ref().unwrap();
    assert_eq!(ro.throttle(1300), Some(0.5));
    assert_eq!(ro.throttle(99_999), Some(1.0));
}

#[test]
fn a_paused_wavefront_stays_where_it_was() {
    let mut r = rel("2", 2, Some(0), 10);
    r.metadata.rollout.as_mut().unwrap().paused_epoch = Some(60);
    let g = graph(vec![rel("1", 1, Some(0), 0), r]);
    assert_eq!(to(g.next(&c(1), 0.05, 10_000)), Some("2".into()));
    assert_eq!(to(g.next(&c(1), 0.2, 10_000)), None);
}

#[test]
fn a_node_below_a_barrier_goes_to_it_first() {
    let mut b = rel("2", 2, Some(0), 0);
    b.metadata.barrier = Some(Reason {
        reason: "new disk layout".into(),
    });
    let g = graph(vec![rel("1", 1, Some(0), 0), b, rel("3", 3, Some(0), 0)]);
    assert_eq!(to(g.next(&c(1), 0.5, 10)), Some("2".into()));
    assert_eq!(to(g.next(&c(2), 0.5, 10)), Some("3".into()));
    // A node on a commit the graph does not list moves nowhere (no downgrade nobody planned).
    assert!(matches!(g.next(&c(9), 0.0, 10), Next::Stay { .. }));
}

#[test]
fn the_newest_open_release_wins_and_unplanned_ones_are_no_target() {
    let g = graph(vec![
        rel("1", 1, Some(0), 0),
        rel("2", 2, Some(0), 0),
        rel("3", 3, None, 0),
    ]);
    assert_eq!(to(g.next(&c(1), 0.9, 10)), Some("2".into()));
    assert!(matches!(g.next(&c(2), 0.9, 10), Next::Stay { .. }));
}

#[test]
fn a_dead_end_is_no_target_and_its_nodes_are_told_why() {
    let mut d = rel("2", 2, Some(0), 0);
    d.metadata.deadend = Some(Reason {
        reason: "breaks NFS".into(),
    });
    let g = graph(vec![rel("1", 1, Some(0), 0), d, rel("3", 3, Some(0), 0)]);
    assert_eq!(
        g.next(&c(2), 0.1, 10),
        Next::DeadEnd {
            reason: "breaks NFS".into()
        }
    );
    assert_eq!(to(g.next(&c(1), 0.1, 10)), Some("3".into()));
}

#[test]
fn a_recall_sends_its_nodes_back_whatever_their_wariness() {
    let mut r = rel("2", 2, Some(0), 0);
    r.metadata.recall = Some(Recall {
        reason: "leaks memory".into(),
        to: "1".into(),
    });
    let g = graph(vec![rel("1", 1, Some(0), 0), r]);
    assert_eq!(to(g.next(&c(2), 1.0, 10)), Some("1".into()));
    // Nodes on 1 do not move to the recalled release.
    assert!(matches!(g.next(&c(1), 0.0, 10), Next::Stay { .. }));
}

#[test]
fn recalls_chain_to_the_first_release_not_recalled_and_never_loop() {
    let recall = |r: &mut Release, to: &str| {
        r.metadata.recall = Some(Recall {
            reason: "bad".into(),
            to: to.into(),
        })
    };
    let (mut r2, mut r3) = (rel("2", 2, Some(0), 0), rel("3", 3, Some(0), 0));
    recall(&mut r3, "2");
    recall(&mut r2, "1");
    let mut g = graph(vec![rel("1", 1, Some(0), 0), r2, r3]);
    assert_eq!(to(g.next(&c(3), 0.5, 10)), Some("1".into()));
    assert_eq!(to(g.next(&c(2), 0.5, 10)), Some("1".into()));
    // 1 recalled to 3 closes the loop: refused.
    recall(&mut g.releases[0], "3");
    assert!(format!("{:#}", g.check().unwrap_err()).contains("come back to it"));
}

#[test]
fn check_refuses_what_a_reader_cannot_follow() {
    let mut g = graph(vec![rel("1", 1, Some(0), 0)]);
    g.releases.push(rel("1", 2, None, 0));
    assert!(format!("{:#}", g.check().unwrap_err()).contains("unique"));
    g.releases[1] = rel("2", 2, None, 0);
    g.releases[1].metadata.recall = Some(Recall {
        reason: "x".into(),
        to: "7".into(),
    });
    assert!(format!("{:#}", g.check().unwrap_err()).contains("not listed"));
    g.releases[1].metadata.recall = None;
    g.releases[1].commit = "zz".into();
    assert!(format!("{:#}", g.check().unwrap_err()).contains("not a checksum"));
    g.releases[1].commit = c(2);
    g.schema = 2;
    assert!(format!("{:#}", g.check().unwrap_err()).contains("schema 2"));
}

#[test]
fn the_json_has_fedora_coreos_keys() {
    let g = graph(vec![rel("1", 1, Some(5), 3)]);
    let v = serde_json::to_value(&g).unwrap();
    let ro = &v["releases"][0]["metadata"]["rollout"];
    assert_eq!(ro["start_epoch"], 5);
    assert_eq!(ro["duration_minutes"], 3);
    assert_eq!(v["metadata"]["last-modified"], "1970-01-01T00:00:00Z");
    let back = parse(&serde_json::to_vec(&g).unwrap(), "test").unwrap();
    assert_eq!(back, g);
    let e = parse(br#"{"schema":1}"#, "updates/x.json").unwrap_err();
    assert!(format!("{e:#}").contains("updates/x.json"));
}
