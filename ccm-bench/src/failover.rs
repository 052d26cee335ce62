//! `ccm-bench failover`: steady mirrored traffic from node 1 to node 2 while the interconnect the mirror
//! uses is cut, again and again (port down, rxe device deleted, 100 % netem loss), through the lab's
//! fault hooks (`scripts/lab-fault`).
//!
//! The writer on node 1 appends up to `rate` entries a second, each waited for until durable on node 2 (a
//! storage engine acknowledging a write only once it is mirrored); both nodes run in this process.
//!
//! What one cut yields (all times on the bench's clock, which is also the nodes' event clock):
//!
//! * **cut instant**: the last mirror completion on the cut link before the fault hook returned. The hook is
//!   a shell script (about 100 ms in the emulated guest) and the cut happens somewhere inside it; traffic
//!   flows until the real cut, so its last completion is the best estimate, and never later than the real
//!   cut: the gap and detection below are upper bounds.
//! * **gap**: cut instant to the first completion (an entry durable on node 2) with the mirror on another link.
//! * **detection**: cut instant to the first link-failure decision for that link by either node (the
//!   manager's `StopClients520` or `Reinitialize530` step in `NodeStatus::events`, whichever comes first; a
//!   node that learns it from its partner records `PartnerReported`, so the first decision is the detection).
//! * **failback gap**: after the link is restored, the longest wait between two completions until the next
//!   cut (the clients return home after the hold-down).
//!
//! And for the run: entries lost (acknowledged as durable, never applied on node 2) and duplicated (applied
//! twice), from node 2's apply callback and the ring checker ([`nvram::verify_rings`]); needless failovers:
//! link-failure decisions of either node during a quiet period before the first cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_core::clients::nvram;
use ccm_core::mirror::Lsn;
use ccm_verbs::lab::LabTopology;
use serde::Serialize;

use crate::pair::{MirrorPair, PairSpec};
use crate::stats;

/// How a link is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutKind {
    /// Admin down of node 1's netdev (`lab-fault link-down I`; carrier loss takes node 2's port down too).
    Down,
    /// Node 1's rxe device deleted (`lab-fault dev-del I A`).
    Delete,
    /// 100 % netem loss on both netdevs: no port event, only heartbeats notice.
    Silent,
}

impl CutKind {
    /// Parses `down`, `delete` or `silent`.
    pub fn parse(s: &str) -> Option<CutKind> {
        match s {
            "down" => Some(CutKind::Down),
            "delete" | "del" => Some(CutKind::Delete),
            "silent" => Some(CutKind::Silent),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            CutKind::Down => "down",
            CutKind::Delete => "delete",
            CutKind::Silent => "silent",
        }
    }

    /// `lab-fault` arguments that cut interconnect `ic`.
    pub fn cut_args(self, ic: u8) -> Vec<String> {
        let i = ic.to_string();
        match self {
            CutKind::Down => vec!["link-down".into(), i],
            CutKind::Delete => vec!["dev-del".into(), i, "A".into()],
            CutKind::Silent => vec!["netem".into(), i, "loss".into(), "100".into()],
        }
    }

    /// `lab-fault` arguments that restore it.
    pub fn restore_args(self, ic: u8) -> Vec<String> {
        let i = ic.to_string();
        match self {
            CutKind::Down => vec!["link-up".into(), i],
            CutKind::Delete => vec!["dev-add".into(), i, "A".into()],
            CutKind::Silent => vec!["netem".into(), i, "clear".into()],
        }
    }
}

/// One observation of the writer's durable LSN moving.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Completion {
    /// When, microseconds since the origin.
    pub t_us: f64,
    /// Every entry up to this LSN is durable on the partner.
    pub durable: u64,
    /// The link the mirror was on when it was seen.
    pub link: Option<u8>,
}

/// A step of a node's manager, as recorded in its events (the `Debug` text of `manager::Step`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStep {
    /// 520: an interconnect failed; its clients were told to stop.
    StopClients {
        /// The interconnect.
        ic: u8,
        /// Why (`PortDown`, `HeartbeatLoss`, ...).
        reason: String,
    },
    /// 530: the interconnect will re-initialize.
    Reinitialize {
        /// The interconnect.
        ic: u8,
        /// Why.
        reason: String,
    },
    /// A client placed away from its home.
    Failover {
        /// Where it went.
        to: u8,
    },
    /// A client moved back home.
    Failback {
        /// Its home.
        home: u8,
    },
    /// Anything else.
    Other,
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(name)? + name.len();
    let rest = &text[start..];
    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn ic_field(text: &str, name: &str) -> Option<u8> {
    let v = field(text, name)?; // "InterconnectId(0)"
    v.strip_prefix("InterconnectId(")?
        .trim_end_matches(')')
        .parse()
        .ok()
}

/// Parses one event text of `NodeStatus::events`; events that are not manager steps are [`NodeStep::Other`].
pub fn parse_step(what: &str) -> NodeStep {
    let name = what.split([' ', '{']).next().unwrap_or("");
    let reason = || field(what, "reason: ").unwrap_or("").to_string();
    let parsed = match name {
        "StopClients520" => ic_field(what, "ic: ").map(|ic| NodeStep::StopClients {
            ic,
            reason: reason(),
        }),
        "Reinitialize530" => ic_field(what, "ic: ").map(|ic| NodeStep::Reinitialize {
            ic,
            reason: reason(),
        }),
        "Failover" => ic_field(what, "to: ").map(|to| NodeStep::Failover { to }),
        "Failback" => ic_field(what, "home: ").map(|home| NodeStep::Failback { home }),
        _ => None,
    };
    parsed.unwrap_or(NodeStep::Other)
}

/// A node event on the bench's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedStep {
    /// Microseconds since the origin.
    pub t_us: f64,
    /// Which node recorded it (1: the writer, 2: its partner).
    pub node: u8,
    /// What.
    pub step: NodeStep,
}

/// When a cut's fault hooks ran, microseconds since the origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CutTimes {
    /// The kind.
    pub kind: CutKind,
    /// The interconnect cut.
    pub ic: u8,
    /// The cut hook started.
    pub hook_start_us: f64,
    /// The cut hook returned.
    pub hook_end_us: f64,
    /// The restore hook returned.
    pub restored_us: f64,
    /// End of this cut's observation (the next cut's start, or the end of the run).
    pub until_us: f64,
}

/// What one cut cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CutResult {
    /// `down`, `delete` or `silent`.
    pub kind: CutKind,
    /// The interconnect cut.
    pub ic: u8,
    /// The interconnect the mirror went to (`null`: it never completed an entry elsewhere).
    pub to: Option<u8>,
    /// The estimated cut instant, ms since the origin.
    pub cut_at_ms: f64,
    /// How long the cut hook ran (the cut took effect inside it).
    pub hook_ms: f64,
    /// Cut to the first entry durable on another link (`null`: none before the next cut).
    pub gap_ms: Option<f64>,
    /// Cut to the first link-failure decision for the cut link by either node (`null`: none recorded).
    pub detect_ms: Option<f64>,
    /// The node that decided first (1: the writer, 2: its partner).
    pub detected_by: Option<u8>,
    /// The reason it gave.
    pub reason: Option<String>,
    /// Longest wait between two completions from the restore to the next cut (the failback's gap).
    pub failback_gap_ms: Option<f64>,
    /// Both nodes' recorded events from the cut instant to the end of the gap, each as
    /// `+MS node N: what` (ms after the cut instant): the critical path of the failover, step by step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

/// The figures of one cut (see the module doc for the definitions); `steps` are both nodes' steps in time
/// order.
pub fn analyze_cut(completions: &[Completion], steps: &[TimedStep], cut: &CutTimes) -> CutResult {
    let last_before = completions
        .iter()
        .rev()
        .find(|c| c.t_us <= cut.hook_end_us && c.link == Some(cut.ic))
        .map(|c| c.t_us);
    let cut_at = last_before
        .unwrap_or(cut.hook_start_us)
        .clamp(cut.hook_start_us, cut.hook_end_us);
    let first_elsewhere = completions
        .iter()
        .find(|c| c.t_us > cut_at && c.t_us <= cut.until_us && c.link.is_some_and(|l| l != cut.ic));
    // Only decisions after the cut instant: one inside the hook but before the link's last completion was a
    // false alarm (a stall of the emulated guest) that the link recovered from before the cut.
    let decision = steps.iter().find(|s| {
        s.t_us >= cut_at
            && s.t_us <= cut.until_us
            && matches!(&s.step, NodeStep::StopClients { ic, .. } | NodeStep::Reinitialize { ic, .. } if *ic == cut.ic)
    });
    let after_restore: Vec<f64> = completions
        .iter()
        .filter(|c| c.t_us >= cut.restored_us && c.t_us <= cut.until_us)
        .map(|c| c.t_us)
        .collect();
    let failback_gap = after_restore
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1000.0)
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    CutResult {
        kind: cut.kind,
        ic: cut.ic,
        to: first_elsewhere.and_then(|c| c.link),
        cut_at_ms: cut_at / 1000.0,
        hook_ms: (cut.hook_end_us - cut.hook_start_us) / 1000.0,
        gap_ms: first_elsewhere.map(|c| (c.t_us - cut_at) / 1000.0),
        detect_ms: decision.map(|s| (s.t_us - cut_at) / 1000.0),
        detected_by: decision.map(|s| s.node),
        reason: decision.and_then(|s| match &s.step {
            NodeStep::StopClients { reason, .. } | NodeStep::Reinitialize { reason, .. } => {
                Some(reason.clone())
            }
            _ => None,
        }),
        failback_gap_ms: failback_gap,
        trace: Vec::new(),
    }
}

/// The events of `events` (microseconds, node, text; in time order) from the cut instant of `r` to the end of
/// its gap plus 1 ms, as [`CutResult::trace`] lines.
pub fn trace_of(r: &CutResult, events: &[(f64, u8, String)]) -> Vec<String> {
    let from = r.cut_at_ms * 1000.0;
    let to = from + r.gap_ms.or(r.detect_ms).unwrap_or(0.0) * 1000.0 + 1000.0;
    events
        .iter()
        .filter(|(t, _, _)| *t >= from && *t <= to)
        .map(|(t, n, what)| format!("+{:.1} node {n}: {what}", (t - from) / 1000.0))
        .collect()
}

/// Link-failure decisions (520) in `[from_us, to_us]`: with no fault injected, each is a needless failover.
pub fn decisions_between(steps: &[TimedStep], from_us: f64, to_us: f64) -> u64 {
    steps
        .iter()
        .filter(|s| {
            s.t_us >= from_us && s.t_us <= to_us && matches!(s.step, NodeStep::StopClients { .. })
        })
        .count() as u64
}

/// Entries lost and duplicated, from what node 2 applied (in order of application) and node 1's durable LSN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Durable LSNs never applied on the partner.
    pub lost: u64,
    /// Applications beyond the first of an LSN.
    pub duplicated: u64,
    /// Applications of an LSN lower than the one before.
    pub out_of_order: u64,
}

/// Counts lost, duplicated and out-of-order entries (every LSN in `1..=durable` must be applied once).
pub fn delivery(applied: &[u64], durable: u64) -> Delivery {
    let mut seen = vec![false; durable as usize + 1];
    let mut d = Delivery::default();
    let mut prev = 0;
    for &l in applied {
        if l < prev {
            d.out_of_order += 1;
        }
        prev = l;
        if let Some(s) = seen.get_mut(l as usize) {
            if *s {
                d.duplicated += 1;
            }
            *s = true;
        }
    }
    d.lost = seen[1..].iter().filter(|s| !**s).count() as u64;
    d
}

/// Entries completed per millisecond from `from_us` for `ms` milliseconds (the failover timeline).
pub fn entries_per_ms(completions: &[Completion], from_us: f64, ms: usize) -> Vec<u64> {
    let mut bins = vec![0u64; ms];
    let mut prev = completions
        .iter()
        .rev()
        .find(|c| c.t_us < from_us)
        .map_or(0, |c| c.durable);
    for c in completions.iter().filter(|c| c.t_us >= from_us) {
        let i = ((c.t_us - from_us) / 1000.0) as usize;
        if i >= ms {
            break;
        }
        bins[i] += c.durable.saturating_sub(prev);
        prev = c.durable;
    }
    bins
}

/// The timeline around a cut at `cut_us`: `(ms from the cut, entries durable per ms)`, averaged over bins
/// of `bin_ms`, from `before_ms` before the cut to `after_ms` after it.
pub fn timeline(
    completions: &[Completion],
    cut_us: f64,
    before_ms: usize,
    after_ms: usize,
    bin_ms: usize,
) -> Vec<(f64, f64)> {
    let bin_ms = bin_ms.max(1);
    let per_ms = entries_per_ms(
        completions,
        cut_us - before_ms as f64 * 1000.0,
        before_ms + after_ms,
    );
    per_ms
        .chunks(bin_ms)
        .enumerate()
        .map(|(i, c)| {
            let start = (i * bin_ms) as f64 - before_ms as f64;
            (start, c.iter().sum::<u64>() as f64 / c.len() as f64)
        })
        .collect()
}

/// The nearest-rank quantile of `v` (sorted or not); `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// The run's options.
#[derive(Clone, Debug)]
pub struct FailoverOpts {
    /// Cuts to make.
    pub cuts: u32,
    /// Kinds, used in turn.
    pub kinds: Vec<CutKind>,
    /// Quiet period before the first cut.
    pub quiet: Duration,
    /// How long a link stays cut.
    pub hold: Duration,
    /// Time after the restore before the next cut (failback).
    pub settle: Duration,
    /// Entries appended per second at most (each is waited for until durable).
    pub rate: u32,
    /// Payload bytes per entry.
    pub entry_bytes: usize,
    /// The node pair.
    pub pair: PairSpec,
}

/// The run's JSON (stable names: `cuts`, `gap_ms_p50`, `gap_ms_max`, `detect_ms_p50`, `lost`,
/// `duplicated`, `needless_failovers`).
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    /// Always `failover`.
    pub bench: &'static str,
    /// Cuts made.
    pub cuts: u32,
    /// Median gap over the cuts with a gap.
    pub gap_ms_p50: Option<f64>,
    /// Largest gap.
    pub gap_ms_max: Option<f64>,
    /// Median detection time.
    pub detect_ms_p50: Option<f64>,
    /// Largest detection time.
    pub detect_ms_max: Option<f64>,
    /// Durable entries never applied on the partner.
    pub lost: u64,
    /// Entries applied twice.
    pub duplicated: u64,
    /// Entries applied out of order.
    pub out_of_order: u64,
    /// Link-failure decisions during the quiet period (both nodes).
    pub needless_failovers: u64,
    /// The needless decisions: node, time (ms since the origin), link and reason.
    pub needless_detail: Vec<String>,
    /// Mirror stops during the quiet period.
    pub quiet_mirror_stops: u64,
    /// Length of the quiet period.
    pub quiet_seconds: f64,
    /// Cuts whose mirror never completed an entry on another link before the next cut.
    pub cuts_without_failover: u64,
    /// Entries appended on node 1.
    pub appended: u64,
    /// Entries durable on node 2 (acknowledged).
    pub durable: u64,
    /// Entries node 2 applied (distinct).
    pub applied_on_partner: u64,
    /// Node 1's log digest equals node 2's digest of the mirror.
    pub checksums_equal: bool,
    /// The ring checker's verdict (node 1's log ring vs node 2's mirror ring, entry by entry).
    pub ring_check_clean: bool,
    /// Entries the ring checker compared.
    pub ring_check_compared: u64,
    /// Append-to-durable latency over the run, microseconds.
    pub latency_us: stats::SummaryJson,
    /// Heartbeat period and misses of both nodes.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before a link fails.
    pub heartbeat_misses: u32,
    /// Entries per second.
    pub rate_per_s: u32,
    /// Payload bytes per entry.
    pub entry_bytes: usize,
    /// Every cut.
    pub per_cut: Vec<CutResult>,
}

/// What [`run`] hands back: the report and the raw series for a plot.
pub struct FailoverRun {
    /// The report.
    pub report: FailoverReport,
    /// Entries durable per ms around each cut ([`timeline`]), with the detection and resumption marked.
    pub timelines: Vec<crate::plot::TimelinePanel>,
}

/// Milliseconds of timeline before each cut.
pub const TIMELINE_BEFORE_MS: usize = 50;
/// Width of a timeline bin, ms.
pub const TIMELINE_BIN_MS: usize = 5;

fn payload(lsn: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (lsn as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

fn fault(lab: &LabTopology, args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.fault(&a).map_err(|e| e.to_string())
}

/// What the writer hands back: `(lsn, append time in us)` of every entry, and every completion it saw.
type Written = (Vec<(u64, f64)>, Vec<Completion>);

/// Restores a cut link if the run stops early.
struct Restore<'a> {
    lab: &'a LabTopology,
    pending: Option<Vec<String>>,
}
impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some(args) = self.pending.take() {
            let _ = fault(self.lab, &args);
        }
    }
}

/// Runs the bench in the lab (see the module doc).
pub fn run(lab: &LabTopology, o: &FailoverOpts) -> Result<FailoverRun, String> {
    if o.kinds.is_empty() {
        return Err("no cut kinds".into());
    }
    let applied = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 20)));
    let bad_payloads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let apply: nvram::ApplyFn = {
        let (applied, bad) = (applied.clone(), bad_payloads.clone());
        let mut want = vec![0u8; o.entry_bytes];
        Box::new(move |lsn: Lsn, p: &[u8]| {
            payload(lsn.0, &mut want);
            if p != want.as_slice() {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lsn.0);
        })
    };
    let pair = Arc::new(MirrorPair::start(
        lab,
        &o.pair,
        apply,
        Duration::from_secs(30),
    )?);
    // Let the placement settle (both links up, then a failback hold-down) before the quiet period.
    pair.settle(
        Duration::from_millis(o.pair.hold_down_ms * 2 + 500),
        Duration::from_secs(60),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    // The writer: up to `rate` entries a second, each waited for until durable (a storage engine that
    // acknowledges a write once it is mirrored, as the demo's writer does). Every completion is recorded with
    // the link the mirror is on; an entry caught by a cut completes on the new link, which ends the gap.
    let writer = {
        let (pair, stop) = (pair.clone(), stop.clone());
        let (rate, bytes) = (o.rate, o.entry_bytes);
        std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || -> Result<Written, String> {
                let mut appends = Vec::with_capacity(1 << 20);
                let mut seen = Vec::with_capacity(1 << 20);
                let mut p = vec![0u8; bytes];
                let period = Duration::from_secs_f64(1.0 / rate as f64);
                let mut next = Instant::now();
                let mut lsn = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    payload(lsn + 1, &mut p);
                    let t = Instant::now();
                    let got = pair
                        .a
                        .append_wait(&p, Duration::from_secs(30))
                        .map_err(|e| format!("append {}: {e}", lsn + 1))?;
                    lsn = got.0;
                    appends.push((lsn, pair.us(t)));
                    if !pair.a.wait_durable(got, Duration::from_secs(60)) {
                        return Err(format!(
                            "entry {lsn} not durable within 60 s: {:?}",
                            pair.a.stats()
                        ));
                    }
                    seen.push(Completion {
                        t_us: pair.us(Instant::now()),
                        durable: pair.a.durable_lsn().0,
                        link: pair.a.link().map(|l| l.0),
                    });
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now; // behind (a gap): carry on at the rate, no burst
                    }
                }
                Ok((appends, seen))
            })
            .map_err(|e| e.to_string())?
    };
    // The sampler: both nodes' recorded events (they keep only the latest 256).
    let sampler = {
        let (pair, stop) = (pair.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-events".into())
            .spawn(move || {
                let mut steps: [Vec<TimedStep>; 2] = [Vec::new(), Vec::new()];
                let mut raw: Vec<(f64, u8, String)> = Vec::new();
                let mut last = [f64::MIN; 2];
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    for n in 0..2 {
                        for e in pair.node(n).status().events {
                            let t_us = e.at_ms * 1000.0;
                            if t_us > last[n] {
                                last[n] = t_us;
                                raw.push((t_us, n as u8 + 1, e.what.clone()));
                                steps[n].push(TimedStep {
                                    t_us,
                                    node: n as u8 + 1,
                                    step: parse_step(&e.what),
                                });
                            }
                        }
                    }
                    if done {
                        return (steps, raw);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .map_err(|e| e.to_string())?
    };

    let quiet_from = pair.us(Instant::now());
    let stops_before = pair.a.stats().stops;
    std::thread::sleep(o.quiet);
    let quiet_to = pair.us(Instant::now());
    let quiet_mirror_stops = pair.a.stats().stops - stops_before;

    let mut cuts = Vec::new();
    let mut restore = Restore { lab, pending: None };
    for k in 0..o.cuts {
        let kind = o.kinds[k as usize % o.kinds.len()];
        // The mirror is back on a link after the last cut (a silent-loss failback can take a while).
        let t = Instant::now();
        while !pair.a.is_synced() || pair.a.link().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("cut {}: the mirror is on no link for 20 s", k + 1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(ic) = pair.a.link().map(|l| l.0) else {
            return Err(format!("cut {}: the mirror is on no link", k + 1));
        };
        eprintln!(
            "ccm-bench: cut {}/{}: interconnect {ic} ({})",
            k + 1,
            o.cuts,
            kind.name()
        );
        let hook_start_us = pair.us(Instant::now());
        restore.pending = Some(kind.restore_args(ic));
        fault(lab, &kind.cut_args(ic))?;
        let hook_end_us = pair.us(Instant::now());
        std::thread::sleep(o.hold);
        fault(lab, &kind.restore_args(ic))?;
        restore.pending = None;
        let restored_us = pair.us(Instant::now());
        std::thread::sleep(o.settle);
        cuts.push(CutTimes {
            kind,
            ic,
            hook_start_us,
            hook_end_us,
            restored_us,
            until_us: pair.us(Instant::now()),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let (appends, completions) = writer
        .join()
        .map_err(|_| "the writer panicked".to_string())??;
    let last = appends.last().map_or(0, |a| a.0);
    let t = Instant::now();
    while pair.b.stats().partner_applied < last && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (steps, mut raw) = sampler
        .join()
        .map_err(|_| "the event sampler panicked".to_string())?;
    // The mirrors' own steps (left a link, resumed, the partner's first ack, the first completion).
    for (n, m) in [(1u8, &pair.a), (2, &pair.b)] {
        for s in m.steps() {
            raw.push((
                pair.us(s.at),
                n,
                format!(
                    "mirror {:?} on interconnect {} (LSN {})",
                    s.kind, s.ic.0, s.lsn.0
                ),
            ));
        }
    }
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));

    let [s1, s2] = steps;
    let mut steps: Vec<TimedStep> = s1.into_iter().chain(s2).collect();
    steps.sort_by(|a, b| a.t_us.total_cmp(&b.t_us));
    let per_cut: Vec<CutResult> = cuts
        .iter()
        .map(|c| {
            let mut r = analyze_cut(&completions, &steps, c);
            r.trace = trace_of(&r, &raw);
            r
        })
        .collect();
    // Every cut's timeline runs until 150 ms after the slowest resumption.
    let after = per_cut
        .iter()
        .filter_map(|c| c.gap_ms)
        .fold(200.0f64, f64::max) as usize
        + 150;
    let timelines = per_cut
        .iter()
        .enumerate()
        .map(|(i, r)| crate::plot::TimelinePanel {
            label: format!("{} {} ic{}", i + 1, r.kind.name(), r.ic),
            points: timeline(
                &completions,
                r.cut_at_ms * 1000.0,
                TIMELINE_BEFORE_MS,
                after,
                TIMELINE_BIN_MS,
            ),
            marks: [(r.detect_ms, "d"), (r.gap_ms, "r")]
                .iter()
                .filter_map(|(v, t)| v.map(|v| (v, t.to_string())))
                .collect(),
        })
        .collect();
    let durable = pair.a.durable_lsn().0;
    let applied = applied.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let d = delivery(&applied, durable);
    let (log, mirror) = pair.ring_files();
    let check = nvram::verify_rings(&log, &mirror, o.pair.ring_bytes).map_err(|e| e.to_string())?;
    let mut h = stats::new_histogram();
    {
        let mut ci = 0;
        for &(lsn, t_us) in &appends {
            while ci < completions.len() && completions[ci].durable < lsn {
                ci += 1;
            }
            if let Some(c) = completions.get(ci) {
                let ns = ((c.t_us - t_us) * 1000.0).max(1.0) as u64;
                let _ = h.record(ns);
            }
        }
    }
    let gaps: Vec<f64> = per_cut.iter().filter_map(|c| c.gap_ms).collect();
    let detects: Vec<f64> = per_cut.iter().filter_map(|c| c.detect_ms).collect();
    let mut distinct = applied.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let report = FailoverReport {
        bench: "failover",
        cuts: o.cuts,
        gap_ms_p50: quantile(&gaps, 0.5),
        gap_ms_max: quantile(&gaps, 1.0),
        detect_ms_p50: quantile(&detects, 0.5),
        detect_ms_max: quantile(&detects, 1.0),
        lost: d.lost,
        duplicated: d.duplicated,
        out_of_order: d.out_of_order + bad_payloads.load(Ordering::Relaxed),
        needless_failovers: decisions_between(&steps, quiet_from, quiet_to),
        needless_detail: steps
            .iter()
            .filter(|s| s.t_us >= quiet_from && s.t_us <= quiet_to)
            .filter_map(|s| match &s.step {
                NodeStep::StopClients { ic, reason } => Some(format!(
                    "node {} at {:.1} ms: interconnect {ic} {reason}",
                    s.node,
                    s.t_us / 1000.0
                )),
                _ => None,
            })
            .collect(),
        quiet_mirror_stops,
        quiet_seconds: o.quiet.as_secs_f64(),
        cuts_without_failover: per_cut.iter().filter(|c| c.gap_ms.is_none()).count() as u64,
        appended: pair.a.stats().appended,
        durable,
        applied_on_partner: distinct.len() as u64,
        checksums_equal: pair.a.local_digest() == pair.b.mirror_digest(),
        ring_check_clean: check.is_clean(),
        ring_check_compared: check.compared,
        latency_us: stats::SummaryJson::from(&stats::summarize(&h)),
        heartbeat_ms: o.pair.heartbeat_ms,
        heartbeat_misses: o.pair.heartbeat_misses,
        rate_per_s: o.rate,
        entry_bytes: o.entry_bytes,
        per_cut,
    };
    match Arc::try_unwrap(pair) {
        Ok(p) => p.stop(),
        Err(_) => return Err("the node pair is still shared".into()),
    }
    Ok(FailoverRun { report, timelines })
}

/// The human table.
pub fn table(r: &FailoverReport) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut s = format!(
        "failover: {} cuts, {} entries/s of {} B, heartbeats {} ms x {}\n",
        r.cuts, r.rate_per_s, r.entry_bytes, r.heartbeat_ms, r.heartbeat_misses
    );
    s += "  cut  kind    ic -> to   hook ms   detect ms   gap ms   failback gap ms  decided by\n";
    for (i, c) in r.per_cut.iter().enumerate() {
        s += &format!(
            "  {:<4} {:<7} {:>2} -> {:<3} {:>8.1} {:>11} {:>8} {:>17}  {}\n",
            i + 1,
            c.kind.name(),
            c.ic,
            c.to.map_or("-".into(), |t| t.to_string()),
            c.hook_ms,
            f(c.detect_ms),
            f(c.gap_ms),
            f(c.failback_gap_ms),
            match (c.detected_by, &c.reason) {
                (Some(n), Some(r)) => format!("node {n}: {r}"),
                _ => "-".into(),
            }
        );
    }
    for (i, c) in r.per_cut.iter().enumerate() {
        if !c.trace.is_empty() {
            s += &format!("  cut {} step by step (ms after the cut instant):\n", i + 1);
            for line in &c.trace {
                s += &format!("    {line}\n");
            }
        }
    }
    s += &format!(
        "  gap p50 {} ms, max {} ms; detection p50 {} ms, max {} ms\n",
        f(r.gap_ms_p50),
        f(r.gap_ms_max),
        f(r.detect_ms_p50),
        f(r.detect_ms_max)
    );
    s += &format!(
        "  entries appended {} / durable {} / applied on the partner {}: lost {}, duplicated {}, out of order {}\n",
        r.appended, r.durable, r.applied_on_partner, r.lost, r.duplicated, r.out_of_order
    );
    s += &format!(
        "  checksums equal {}, ring check clean {} ({} entries compared)\n",
        r.checksums_equal, r.ring_check_clean, r.ring_check_compared
    );
    s += &format!(
        "  needless failovers in {:.0} s quiet: {} (mirror stops {})\n",
        r.quiet_seconds, r.needless_failovers, r.quiet_mirror_stops
    );
    for d in &r.needless_detail {
        s += &format!("    {d}\n");
    }
    let l = &r.latency_us;
    s += &format!(
        "  append->durable us: p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)\n",
        l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
    );
    s
}
