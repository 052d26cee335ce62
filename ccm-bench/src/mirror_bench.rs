//! `ccm-bench compare mirror`, our side: the NVRAM mirror client of two real ccm nodes (in one process, on
//! the lab's rxe devices, see [`crate::pair`]).
//!
//! * **Latency**: one entry at a time, `append` -> `wait_durable` (the entry's RDMA WRITE completed on
//!   the RC connection: it is in node 2's memory), per size; HdrHistogram of the waits.
//! * **Throughput**: `iters` entries appended as fast as possible with at most `window` of them not yet
//!   durable (perftest's tx depth, 128 by default: without a bound the whole 16 MiB ring is in flight and the
//!   heartbeats on the same link wait behind it for so long that the link is judged dead), the mirror thread
//!   batching whatever has accumulated into one chain of WRITEs; bytes of payload / (first append to the
//!   last entry durable), MB = 2^20 bytes like perftest.
//!
//! The peer side (`ib_write_lat`, `ib_write_bw`) runs on the devices of the link the mirror used, after the
//! nodes have stopped, in the same guest boot.

use std::time::{Duration, Instant};

use ccm_core::mirror::Lsn;
use ccm_verbs::lab::LabTopology;
use hdrhistogram::Histogram;

use crate::pair::{MirrorPair, PairSpec};
use crate::stats;

/// Our figures at one size.
pub struct MirrorSize {
    /// Payload bytes per entry.
    pub size: usize,
    /// Append-to-durable waits, nanoseconds.
    pub latency: Histogram<u64>,
    /// Throughput, MB/s (2^20 bytes).
    pub mb_per_s: f64,
    /// Entries of the throughput run.
    pub entries: u64,
    /// Average entries per posted batch in the throughput run.
    pub entries_per_batch: f64,
    /// The mirror moved to another link during these runs (a failover is inside the figures).
    pub moved: bool,
}

/// What our side measured.
pub struct MirrorOurs {
    /// Per size, with the interconnect the mirror used for it (the peer tools run on its devices).
    pub sizes: Vec<(MirrorSize, u8)>,
    /// The interconnect the mirror settled on first.
    pub first_link: u8,
    /// Sizes measured again because the mirror moved during their runs.
    pub moves: u32,
}

fn fill(lsn: u64, p: &mut [u8]) {
    for (i, b) in p.iter_mut().enumerate() {
        *b = (lsn as usize).wrapping_mul(131).wrapping_add(i) as u8;
    }
}

/// Runs our side for every size (see the module doc).
pub fn run_ours(
    lab: &LabTopology,
    pair_spec: &PairSpec,
    sizes: &[usize],
    iters: u64,
    bw_iters: u64,
    window: u64,
) -> Result<MirrorOurs, String> {
    let pair = MirrorPair::start(lab, pair_spec, Box::new(|_, _| {}), Duration::from_secs(30))?;
    // Let the placement settle (both links up, then a failback hold-down) so no move happens during the runs.
    let stable = Duration::from_millis(pair_spec.hold_down_ms * 2 + 500);
    let link = match pair.settle(stable, Duration::from_secs(60)) {
        Ok(l) => l,
        Err(e) => {
            pair.stop();
            return Err(e);
        }
    };
    let max = pair.a.max_entry();
    let mut out = Vec::new();
    let mut moves = 0;
    let result = (|| {
        for &size in sizes {
            if size > max || size == 0 {
                return Err(format!(
                    "entry size {size} outside 1..={max} (ring of {} bytes)",
                    pair_spec.ring_bytes
                ));
            }
            // A link failure in the middle (the emulated guest stalls now and then) moves the mirror: that
            // size runs again, on the link the mirror is on then, at most 3 times; the third is reported
            // whatever happened, marked `moved`.
            let mut attempt = 0;
            let m = loop {
                attempt += 1;
                let on = match pair.settle(Duration::from_millis(500), Duration::from_secs(60)) {
                    Ok(l) => l,
                    Err(e) => return Err(e),
                };
                let m = measure(&pair, size, iters, bw_iters, window)?;
                let moved = pair.a.link() != Some(ccm_core::wire::InterconnectId(on))
                    || pair.a.stats().stops != m.stops_before;
                if !moved || attempt == 3 {
                    break (m, on, moved);
                }
                moves += 1;
                let why: Vec<String> = pair
                    .node(0)
                    .status()
                    .events
                    .into_iter()
                    .filter(|e| e.what.starts_with("StopClients520"))
                    .map(|e| format!("{:.1} ms {}", e.at_ms, e.what))
                    .collect();
                eprintln!(
                    "ccm-bench: the mirror moved during the {size} B runs (attempt {attempt}; latency phase \
                     ended at {:.1} ms, now {:.1} ms; node 1: {:?}): again",
                    m.latency_done_ms,
                    pair.us(Instant::now()) / 1000.0,
                    why.iter().rev().take(3).collect::<Vec<_>>()
                );
            };
            let (m, on, moved) = m;
            if moved {
                eprintln!("ccm-bench: the mirror moved in all 3 attempts at {size} B: the last one is reported, marked");
            }
            eprintln!(
                "ccm-bench: mirror {size} B on interconnect {on}: p50 {:.1} us, {:.2} MB/s",
                stats::summarize(&m.size.latency).p50_us,
                m.size.mb_per_s
            );
            let mut size_figures = m.size;
            size_figures.moved = moved;
            out.push((size_figures, on));
        }
        Ok(())
    })();
    pair.stop();
    result?;
    Ok(MirrorOurs {
        sizes: out,
        first_link: link,
        moves,
    })
}

struct Measured {
    size: MirrorSize,
    stops_before: u64,
    latency_done_ms: f64,
}

fn measure(
    pair: &MirrorPair,
    size: usize,
    iters: u64,
    bw_iters: u64,
    window: u64,
) -> Result<Measured, String> {
    let stops_before = pair.a.stats().stops;
    let mut p = vec![0u8; size];
    let wait = Duration::from_secs(30);
    // Warm-up.
    for _ in 0..20 {
        let lsn = pair.a.append_wait(&p, wait).map_err(|e| e.to_string())?;
        pair.a.wait_durable(lsn, wait);
    }
    let mut h = stats::new_histogram();
    for i in 0..iters {
        fill(i, &mut p);
        let t = Instant::now();
        let lsn = pair.a.append_wait(&p, wait).map_err(|e| e.to_string())?;
        if !pair.a.wait_durable(lsn, wait) {
            return Err(format!(
                "entry {} of {size} B not durable in {wait:?}",
                lsn.0
            ));
        }
        let ns = t.elapsed().as_nanos().max(1) as u64;
        h.record(ns.min(60_000_000_000))
            .map_err(|e| e.to_string())?;
    }
    let latency_done_ms = pair.us(Instant::now()) / 1000.0;
    let batches0 = pair.a.stats().batches;
    let t = Instant::now();
    let mut last = None;
    for i in 0..bw_iters {
        fill(i, &mut p);
        // At most `window` entries in flight, as ib_write_bw keeps at most its tx depth of WRITEs.
        if let Some(l) = last {
            let l: Lsn = l;
            if l.0 >= window {
                pair.a.wait_durable(Lsn(l.0 + 1 - window), wait);
            }
        }
        last = Some(pair.a.append_wait(&p, wait).map_err(|e| e.to_string())?);
    }
    if let Some(l) = last {
        if !pair.a.wait_durable(l, Duration::from_secs(120)) {
            return Err(format!("throughput run of {size} B not durable in 120 s"));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let batches = (pair.a.stats().batches - batches0).max(1);
    Ok(Measured {
        size: MirrorSize {
            size,
            latency: h,
            mb_per_s: (bw_iters as f64 * size as f64) / (1u64 << 20) as f64 / secs,
            entries: bw_iters,
            entries_per_batch: bw_iters as f64 / batches as f64,
            moved: false,
        },
        stops_before,
        latency_done_ms,
    })
}
