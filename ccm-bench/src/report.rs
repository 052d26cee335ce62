//! Per-run records: a human table by default, one JSON object per run with `--json`.
//!
//! JSON names are stable (scripts and dashboards read them): `ours` and `peer` objects with
//! `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us` (latency) or `mb_per_s` (bandwidth), and
//! `ratio_p50`, `ratio_p99`, `ratio_bw` = ours / peer.

use crate::perftest::{BwReport, LatReport};
use crate::stats::Summary;
use serde::Serialize;

/// Latency figures of one side of a comparison (one-way = RTT/2, microseconds).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyFigures {
    /// Who measured: `ccm-verbs` or the perftest program.
    pub tool: String,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile (`null` for perftest when it printed no samples).
    pub p90_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample (perftest: its `t_max`, after dropping its 2 largest samples).
    pub max_us: f64,
    /// Smallest sample.
    pub min_us: f64,
    /// Mean.
    pub avg_us: f64,
    /// Samples behind the figures.
    pub samples: u64,
    /// For perftest: which process's report was used (`client`, or `server` when the
    /// client's CPU-frequency estimate failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl LatencyFigures {
    /// Ours, from an HdrHistogram summary.
    pub fn ours(s: &Summary) -> Self {
        LatencyFigures {
            tool: "ccm-verbs".into(),
            p50_us: s.p50_us,
            p90_us: Some(s.p90_us),
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            min_us: s.min_us,
            avg_us: s.avg_us,
            samples: s.samples,
            source: None,
        }
    }

    /// perftest's, from its report (p90 from its `-H` samples when present).
    pub fn peer(program: &str, r: &LatReport, p90_us: Option<f64>, source: &str) -> Self {
        LatencyFigures {
            tool: program.into(),
            p50_us: r.t_typical_us,
            p90_us,
            p99_us: r.p99_us,
            p999_us: r.p999_us,
            max_us: r.t_max_us,
            min_us: r.t_min_us,
            avg_us: r.t_avg_us,
            samples: if r.samples.is_empty() {
                r.iters.saturating_sub(3)
            } else {
                r.samples.len() as u64
            },
            source: Some(source.into()),
        }
    }
}

/// Bandwidth figures of one side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BandwidthFigures {
    /// Who measured.
    pub tool: String,
    /// Average bandwidth, MB/s with MB = 2^20 bytes (perftest's unit).
    pub mb_per_s: f64,
    /// Messages per second, millions.
    pub msg_rate_mpps: f64,
    /// Messages completed.
    pub messages: u64,
}

impl BandwidthFigures {
    /// perftest's, from its report.
    pub fn peer(program: &str, r: &BwReport) -> Self {
        BandwidthFigures {
            tool: program.into(),
            mb_per_s: r.bw_avg_mb_s,
            msg_rate_mpps: r.msg_rate_mpps,
            messages: r.iters,
        }
    }
}

/// One latency run (ours, and perftest's when comparing).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyRun {
    /// Always `latency`.
    pub bench: &'static str,
    /// `send` or `write`.
    pub op: String,
    /// Message size in bytes.
    pub size: usize,
    /// Iterations asked for (0 in duration mode).
    pub iters: u64,
    /// Repetition number (1-based).
    pub rep: u32,
    /// Node A device.
    pub device: String,
    /// Node B device.
    pub peer_device: String,
    /// Our figures.
    pub ours: LatencyFigures,
    /// perftest's figures (compare mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<LatencyFigures>,
    /// ours.p50_us / peer.p50_us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p50: Option<f64>,
    /// ours.p99_us / peer.p99_us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p99: Option<f64>,
}

impl LatencyRun {
    /// Sets `peer` and the ratios.
    pub fn with_peer(mut self, peer: LatencyFigures) -> Self {
        self.ratio_p50 = Some(ratio(self.ours.p50_us, peer.p50_us));
        self.ratio_p99 = Some(ratio(self.ours.p99_us, peer.p99_us));
        self.peer = Some(peer);
        self
    }
}

/// One bandwidth run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BandwidthRun {
    /// Always `bandwidth`.
    pub bench: &'static str,
    /// `write` or `send`.
    pub op: String,
    /// Message size in bytes.
    pub size: usize,
    /// Messages asked for (0 in duration mode).
    pub iters: u64,
    /// Outstanding work requests.
    pub tx_depth: u32,
    /// Repetition number (1-based).
    pub rep: u32,
    /// Node A device.
    pub device: String,
    /// Node B device.
    pub peer_device: String,
    /// Our figures.
    pub ours: BandwidthFigures,
    /// perftest's figures (compare mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<BandwidthFigures>,
    /// ours.mb_per_s / peer.mb_per_s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_bw: Option<f64>,
}

impl BandwidthRun {
    /// Sets `peer` and the ratio.
    pub fn with_peer(mut self, peer: BandwidthFigures) -> Self {
        self.ratio_bw = Some(ratio(self.ours.mb_per_s, peer.mb_per_s));
        self.peer = Some(peer);
        self
    }
}

/// ours / peer (NaN when the peer figure is not positive).
pub fn ratio(ours: f64, peer: f64) -> f64 {
    if peer > 0.0 && peer.is_finite() {
        ours / peer
    } else {
        f64::NAN
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

/// Human table of a latency run.
pub fn latency_table(r: &LatencyRun) -> String {
    let mut s = format!(
        "latency op={} size={} iters={} rep={} {}<->{} (one-way = RTT/2, usec)\n",
        r.op, r.size, r.iters, r.rep, r.device, r.peer_device
    );
    s += &format!(
        "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "", "p50", "p90", "p99", "p99.9", "max", "samples"
    );
    let row = |f: &LatencyFigures| {
        format!(
            "  {:<14} {:>9.2} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9}\n",
            f.tool,
            f.p50_us,
            opt(f.p90_us, 2),
            f.p99_us,
            f.p999_us,
            f.max_us,
            f.samples
        )
    };
    s += &row(&r.ours);
    if let Some(p) = &r.peer {
        s += &row(p);
        s += &format!(
            "  {:<14} {:>9} {:>9} {:>9}   (ours/peer; goal <= 1.05)\n",
            "ratio",
            opt(r.ratio_p50, 3),
            "",
            opt(r.ratio_p99, 3)
        );
    }
    s
}

/// Human table of a bandwidth run.
pub fn bandwidth_table(r: &BandwidthRun) -> String {
    let mut s = format!(
        "bandwidth op={} size={} iters={} tx_depth={} rep={} {}->{} (MB = 2^20 bytes)\n",
        r.op, r.size, r.iters, r.tx_depth, r.rep, r.device, r.peer_device
    );
    s += &format!("  {:<14} {:>10} {:>10} {:>9}\n", "", "MB/s", "Mpps", "msgs");
    let row = |f: &BandwidthFigures| {
        format!(
            "  {:<14} {:>10.2} {:>10.6} {:>9}\n",
            f.tool, f.mb_per_s, f.msg_rate_mpps, f.messages
        )
    };
    s += &row(&r.ours);
    if let Some(p) = &r.peer {
        s += &row(p);
        s += &format!(
            "  {:<14} {:>10}   (ours/peer; goal >= 0.95)\n",
            "ratio",
            opt(r.ratio_bw, 3)
        );
    }
    s
}
