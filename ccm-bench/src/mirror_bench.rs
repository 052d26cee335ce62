//! `ccm-bench compare mirror`, our side: the NVRAM mirror client of two real ccm nodes (in one process, on
//! the lab's rxe devices, see [`crate::pair`]).
//!
//! * **Latency**: one entry at a time, `append` -> `wait_durable` (the entry's RDMA WRITE completed on
//!   the RC connection: it is in node 2's memory), per size; HdrHistogram of the waits.
//! * **Throughput**: `iters` entries appended as fast as the ring allows (back-pressure waits), the mirror
//!   thread batching whatever has accumulated into one chain of WRITEs; bytes of payload / (first append to
//!   the last entry durable), MB = 2^20 bytes like perftest.
//!
//! The peer side (`ib_write_lat`, `ib_write_bw`) runs on the devices of the link the mirror used, after the
//! nodes have stopped, in the same guest boot.

use std::time::{Duration, Instant};

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
}

/// What our side measured.
pub struct MirrorOurs {
    /// Per size.
    pub sizes: Vec<MirrorSize>,
    /// The interconnect the mirror used (every size): the peer tools run on its devices.
    pub link: u8,
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
    let result = (|| {
        for &size in sizes {
            if size > max || size == 0 {
                return Err(format!(
                    "entry size {size} outside 1..={max} (ring of {} bytes)",
                    pair_spec.ring_bytes
                ));
            }
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
            let batches0 = pair.a.stats().batches;
            let t = Instant::now();
            let mut last = None;
            for i in 0..bw_iters {
                fill(i, &mut p);
                last = Some(pair.a.append_wait(&p, wait).map_err(|e| e.to_string())?);
            }
            if let Some(l) = last {
                if !pair.a.wait_durable(l, Duration::from_secs(120)) {
                    return Err(format!("throughput run of {size} B not durable in 120 s"));
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let batches = (pair.a.stats().batches - batches0).max(1);
            if pair.a.link() != Some(ccm_core::wire::InterconnectId(link)) {
                return Err(format!(
                    "the mirror moved from interconnect {link} to {:?} during the {size} B runs",
                    pair.a.link()
                ));
            }
            out.push(MirrorSize {
                size,
                latency: h,
                mb_per_s: (bw_iters as f64 * size as f64) / (1u64 << 20) as f64 / secs,
                entries: bw_iters,
                entries_per_batch: bw_iters as f64 / batches as f64,
            });
            eprintln!(
                "ccm-bench: mirror {size} B: p50 {:.1} us, {:.2} MB/s",
                stats::summarize(&out.last().expect("pushed").latency).p50_us,
                out.last().expect("pushed").mb_per_s
            );
        }
        Ok(())
    })();
    pair.stop();
    result?;
    Ok(MirrorOurs { sizes: out, link })
}
