//! Host tests: how `ccm-bench failover` reads the nodes' recorded steps and turns a run's completions into
//! per-cut gaps, detection times, timelines, and lost / duplicated counts.

use std::time::Duration;

use ccm_bench::failover::{
    analyze_cut, decisions_between, delivery, entries_per_ms, parse_step, quantile, timeline,
    Completion, CutKind, CutTimes, NodeStep, TimedStep,
};
use ccm_core::manager::{LinkFailure, Step};
use ccm_core::wire::{ClientId, InterconnectId};

#[test]
fn the_managers_own_step_texts_parse() {
    let stop = format!(
        "{:?}",
        Step::StopClients520 {
            ic: InterconnectId(1),
            reason: LinkFailure::HeartbeatLoss,
            clients: 2
        }
    );
    assert_eq!(
        parse_step(&stop),
        NodeStep::StopClients {
            ic: 1,
            reason: "HeartbeatLoss".into()
        }
    );
    let reinit = format!(
        "{:?}",
        Step::Reinitialize530 {
            ic: InterconnectId(0),
            reason: LinkFailure::PortDown,
            after: Duration::from_millis(50)
        }
    );
    assert_eq!(
        parse_step(&reinit),
        NodeStep::Reinitialize {
            ic: 0,
            reason: "PortDown".into()
        }
    );
    let failover = format!(
        "{:?}",
        Step::Failover {
            client: ClientId(2),
            home: InterconnectId(1),
            to: InterconnectId(0)
        }
    );
    assert_eq!(parse_step(&failover), NodeStep::Failover { to: 0 });
    let failback = format!(
        "{:?}",
        Step::Failback {
            client: ClientId(2),
            from: InterconnectId(0),
            home: InterconnectId(1)
        }
    );
    assert_eq!(parse_step(&failback), NodeStep::Failback { home: 1 });
}

#[test]
fn other_events_are_other() {
    for text in [
        "interconnect 0: port DOWN",
        "devices opened in 3.20 ms",
        "PartnerSuspect",
        "StopClients520 { garbled",
        "",
    ] {
        assert_eq!(parse_step(text), NodeStep::Other, "{text:?}");
    }
}

fn c(t_ms: f64, durable: u64, link: u8) -> Completion {
    Completion {
        t_us: t_ms * 1000.0,
        durable,
        link: Some(link),
    }
}

fn step(t_ms: f64, node: u8, step: NodeStep) -> TimedStep {
    TimedStep {
        t_us: t_ms * 1000.0,
        node,
        step,
    }
}

/// Traffic on link 1 every ms until 1000.2 ms, the cut hook from 950 to 1010 ms, the decision at 1003 ms,
/// traffic on link 0 from 1030 ms; restored at 2100 ms, then a 40 ms failback pause. Node 2 decides first
/// (at 1003.5 ms), node 1 learns it from node 2 (1006 ms).
fn one_cut() -> (Vec<Completion>, Vec<TimedStep>, CutTimes) {
    let mut v = Vec::new();
    let mut lsn = 0;
    let mut t = 900.2;
    while t <= 1000.3 {
        lsn += 2;
        v.push(c(t, lsn, 1));
        t += 1.0;
    }
    let mut t = 1030.0;
    while t < 2200.0 {
        lsn += 2;
        v.push(c(t, lsn, 0));
        t += 1.0;
    }
    let mut t = 2240.0;
    while t < 2500.0 {
        lsn += 2;
        v.push(c(t, lsn, 1));
        t += 1.0;
    }
    let steps = vec![
        step(
            500.0,
            1,
            NodeStep::StopClients {
                ic: 1,
                reason: "Old".into(),
            },
        ),
        step(
            1003.0,
            1,
            NodeStep::StopClients {
                ic: 0,
                reason: "Wrong link".into(),
            },
        ),
        step(
            1003.5,
            2,
            NodeStep::StopClients {
                ic: 1,
                reason: "PortDown".into(),
            },
        ),
        step(1004.0, 1, NodeStep::Failover { to: 0 }),
        step(
            1006.0,
            1,
            NodeStep::StopClients {
                ic: 1,
                reason: "PartnerReported".into(),
            },
        ),
    ];
    let cut = CutTimes {
        kind: CutKind::Down,
        ic: 1,
        hook_start_us: 950_000.0,
        hook_end_us: 1_010_000.0,
        restored_us: 2_100_000.0,
        until_us: 2_500_000.0,
    };
    (v, steps, cut)
}

#[test]
fn a_cut_is_timed_from_the_last_completion_on_the_cut_link() {
    let (v, steps, cut) = one_cut();
    let r = analyze_cut(&v, &steps, &cut);
    assert_eq!(r.ic, 1);
    assert_eq!(r.to, Some(0));
    assert!((r.cut_at_ms - 1000.2).abs() < 1e-6, "{}", r.cut_at_ms);
    assert!((r.hook_ms - 60.0).abs() < 1e-6);
    assert!((r.gap_ms.unwrap() - 29.8).abs() < 1e-6, "{:?}", r.gap_ms);
    // The decision for the cut link, not the earlier one, nor the one for another link.
    assert!(
        (r.detect_ms.unwrap() - 3.3).abs() < 1e-6,
        "{:?}",
        r.detect_ms
    );
    assert_eq!(r.reason.as_deref(), Some("PortDown"));
    assert_eq!(r.detected_by, Some(2), "the first node to decide");
    assert!((r.failback_gap_ms.unwrap() - 41.0).abs() < 1e-6);
}

#[test]
fn a_decision_before_the_last_completion_is_not_the_cuts_detection() {
    let (v, mut steps, cut) = one_cut();
    // A false alarm on link 1 inside the hook, 20 ms before its last completion.
    steps.insert(
        1,
        step(
            980.0,
            1,
            NodeStep::StopClients {
                ic: 1,
                reason: "HeartbeatLoss".into(),
            },
        ),
    );
    let r = analyze_cut(&v, &steps, &cut);
    assert!(
        (r.detect_ms.unwrap() - 3.3).abs() < 1e-6,
        "{:?}",
        r.detect_ms
    );
    assert_eq!(r.reason.as_deref(), Some("PortDown"));
}

#[test]
fn without_traffic_inside_the_hook_the_cut_is_the_hook_start() {
    let (mut v, steps, cut) = one_cut();
    v.retain(|c| c.t_us < 900_000.0 || c.t_us > 1_010_000.0);
    let r = analyze_cut(&v, &steps, &cut);
    assert!((r.cut_at_ms - 950.0).abs() < 1e-6, "{}", r.cut_at_ms);
    assert!((r.gap_ms.unwrap() - 80.0).abs() < 1e-6);
}

#[test]
fn a_cut_that_never_moves_the_mirror_has_no_gap() {
    let (v, steps, cut) = one_cut();
    let stuck: Vec<Completion> = v.into_iter().filter(|c| c.link == Some(1)).collect();
    let r = analyze_cut(&stuck, &steps[..1], &cut);
    assert_eq!(r.to, None);
    assert_eq!(r.gap_ms, None);
    assert_eq!(r.detect_ms, None);
}

#[test]
fn decisions_in_the_quiet_period_count_as_needless() {
    let (_, steps, _) = one_cut();
    assert_eq!(decisions_between(&steps, 0.0, 400_000.0), 0);
    assert_eq!(decisions_between(&steps, 0.0, 600_000.0), 1);
    assert_eq!(
        decisions_between(&steps, 0.0, 2_000_000.0),
        4,
        "failovers are not decisions"
    );
}

#[test]
fn delivery_counts_lost_duplicated_and_reordered_entries() {
    assert_eq!(delivery(&[1, 2, 3, 4], 4).lost, 0);
    let d = delivery(&[1, 2, 2, 4, 3, 5], 6);
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (1, 1, 1));
    // Applied beyond what is durable is not an error (the ack may trail the apply).
    let d = delivery(&[1, 2, 3], 2);
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0));
    assert_eq!(delivery(&[], 3).lost, 3);
}

#[test]
fn the_timeline_counts_entries_per_millisecond() {
    let v = vec![
        c(0.5, 2, 0),
        c(1.2, 3, 0),
        c(1.9, 7, 0),
        c(4.0, 8, 0),
        c(9.0, 9, 0),
    ];
    assert_eq!(entries_per_ms(&v, 1000.0, 5), vec![5, 0, 0, 1, 0]);
    assert_eq!(entries_per_ms(&v, 0.0, 2), vec![2, 5]);
}

#[test]
fn the_timeline_averages_bins_around_the_cut() {
    let v = vec![
        c(0.5, 2, 0),
        c(1.2, 3, 0),
        c(1.9, 7, 0),
        c(4.0, 8, 0),
        c(9.0, 9, 0),
    ];
    // Cut at 2 ms: bins [-2, 0) and [0, 2), [2, 4) ms.
    let t = timeline(&v, 2000.0, 2, 4, 2);
    assert_eq!(t, vec![(-2.0, 3.5), (0.0, 0.0), (2.0, 0.5)]);
}

#[test]
fn quantiles_are_nearest_rank() {
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), Some(2.0));
    assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 1.0), Some(4.0));
}

#[test]
fn cut_kinds_drive_the_lab_fault_hooks() {
    assert_eq!(CutKind::Down.cut_args(1), ["link-down", "1"]);
    assert_eq!(CutKind::Down.restore_args(1), ["link-up", "1"]);
    assert_eq!(CutKind::Delete.cut_args(0), ["dev-del", "0", "A"]);
    assert_eq!(CutKind::Delete.restore_args(0), ["dev-add", "0", "A"]);
    assert_eq!(CutKind::Silent.cut_args(0), ["netem", "0", "loss", "100"]);
    assert_eq!(CutKind::Silent.restore_args(0), ["netem", "0", "clear"]);
    assert_eq!(CutKind::parse("silent"), Some(CutKind::Silent));
    assert_eq!(CutKind::parse("cable"), None);
}
