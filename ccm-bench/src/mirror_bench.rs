//! `ccm-bench mirror` and our side of `ccm-bench compare mirror`: the NVRAM mirror client of two real ccm
//! nodes (in one process, on the lab's rxe devices, see [`crate::pair`]).
//!
//! * **Latency**: one entry at a time, `append` -> `wait_durable` (the entry's RDMA WRITE completed on
//!   the RC connection: it is in node 2's memory), per size; HdrHistogram of the waits.
//! * **Throughput**: `iters` entries appended as fast as possible with at most `window` of them not yet
//!   durable (perftest's tx depth, 128 by default: without a bound the whole 16 MiB ring is in flight and the
//!   heartbeats on the same link wait behind it for so long that the link is judged dead), the mirror thread
//!   batching whatever has accumulated into one chain of WRITEs; bytes of payload / (first append to the
//!   last entry durable), MB = 2^20 bytes like perftest.
//!
//! `ccm-bench mirror` prints these figures alone ([`record`], [`table`]); `compare mirror` adds the peer side
//! (`ib_write_lat`, `ib_write_bw`), run on the devices of the link the mirror used after the nodes have
//! stopped, in the same guest boot, raw-verbs floors and the ratios to the same record.

use std::time::{Duration, Instant};

use ccm_core::mirror::{Lsn, ENTRY_ALIGN, ENTRY_HEADER};
use ccm_verbs::clock::{cycles, Calibration};
use ccm_verbs::lab::LabTopology;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cpu::{self, CpuUse, ThreadTimes};
use crate::pair::{MirrorPair, PairSpec};
use crate::stats;
use crate::verbs_bench::{stamp_payload, think_for};

/// The spin of the second latency pass (`Mirror::set_spin`).
pub const SPIN: Duration = Duration::from_micros(200);

/// Our figures at one size.
pub struct MirrorSize {
    /// Payload bytes per entry.
    pub size: usize,
    /// Append-to-durable waits, nanoseconds (the mirror's defaults: no spinning).
    pub latency: Histogram<u64>,
    /// The same with [`SPIN`] set on the writer's mirror (`Mirror::set_spin`).
    pub latency_spin: Histogram<u64>,
    /// Throughput, MB/s (2^20 bytes).
    pub mb_per_s: f64,
    /// Entries of the throughput run.
    pub entries: u64,
    /// Average entries per posted batch in the throughput run.
    pub entries_per_batch: f64,
    /// The machine's CPU use during the throughput run.
    pub cpu: Option<CpuUse>,
    /// This process's threads during the throughput run, by name: (name, user, system) in CPUs.
    pub threads: Vec<(String, f64, f64)>,
    /// The RDMA devices' counters that moved during the throughput run ([`cpu::counters_json`]).
    pub counters: Value,
    /// The mirror moved to another link during these runs (a failover is inside the figures).
    pub moved: bool,
    /// Where the time of one entry goes (see [`Stages`]).
    pub stages: Stages,
    /// What the caller's `beside` hook of [`run_ours`] measured at this size, on the link the mirror was
    /// on, while both nodes and their mirror clients were still up (idle): nanoseconds.
    pub beside: Option<Histogram<u64>>,
}

/// The stages of one append -> durable, seen from the bench (nothing in the data path is instrumented): a
/// second latency pass whose waiter, instead of `wait_durable`, spins (yielding) on the mirror's public
/// counters. Microsecond medians over that pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stages {
    /// `append` in the writer's thread (lock, copy into the ring; onto an idle link also the post, since
    /// the appending thread posts itself).
    pub append_us: f64,
    /// From `append` returning until the batch counter moves (zero-ish when `append` posted itself; with
    /// batches in flight: until a thread reaping a completion posts the entry).
    pub handoff_post_us: f64,
    /// From then until `durable_lsn` covers the entry: RC completion polled and bookkept (in this pass by
    /// the mirror thread: the bench's waiter only watches the counters).
    pub completion_us: f64,
    /// The whole entry in this spinning pass (append -> durable seen).
    pub total_us: f64,
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

/// How each size is measured.
#[derive(Clone, Copy, Debug)]
pub struct Passes {
    /// Entries per latency pass.
    pub iters: u64,
    /// Entries in the throughput run at least; more at small sizes ([`throughput_entries`]).
    pub bw_iters: u64,
    /// Entries not yet durable at most in the throughput run (perftest's tx depth).
    pub window: u64,
    /// The writer's own work between one entry's durability and the next append in the latency passes
    /// ([`think_for`]).
    pub think: Duration,
}

/// Payload bytes a throughput run moves at least (unless [`THROUGHPUT_MAX_ENTRIES`] cap it): about a second
/// in the lab. A run of 1000 entries of 4 KiB lasts about 0.1 s there, where one scheduler hiccup of the
/// emulated guest moves the figure by 20 %, for ours and for `ib_write_bw` alike.
pub const THROUGHPUT_BYTES: u64 = 32 << 20;
/// The most entries a throughput run takes for [`THROUGHPUT_BYTES`] (tiny entries move few bytes a second).
pub const THROUGHPUT_MAX_ENTRIES: u64 = 100_000;

/// Entries (messages) of the throughput runs at `size` bytes: enough for [`THROUGHPUT_BYTES`], at most
/// [`THROUGHPUT_MAX_ENTRIES`], never fewer than `iters`. `compare mirror` gives `ib_write_bw` and the raw
/// stream the same count.
pub fn throughput_entries(size: usize, iters: u64) -> u64 {
    (THROUGHPUT_BYTES / size.max(1) as u64)
        .min(THROUGHPUT_MAX_ENTRIES)
        .max(iters)
}

/// A payload's bytes, made once per size.
fn fill(p: &mut [u8]) {
    for (i, b) in p.iter_mut().enumerate() {
        *b = i.wrapping_mul(131) as u8;
    }
}

/// Runs our side for every size (see the module doc). After each size, with both nodes still up and
/// their mirrors idle, `beside(size, interconnect)` may measure something next to them (the bench's raw
/// floor: what the nodes' own threads cost a WRITE that is not theirs).
pub fn run_ours(
    lab: &LabTopology,
    pair_spec: &PairSpec,
    sizes: &[usize],
    passes: Passes,
    beside: &mut dyn FnMut(usize, u8) -> Result<Option<Histogram<u64>>, String>,
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
                let m = measure(&pair, size, passes)?;
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
            size_figures.beside = beside(size, on)?;
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

fn measure(pair: &MirrorPair, size: usize, passes: Passes) -> Result<Measured, String> {
    let Passes {
        iters,
        bw_iters,
        window,
        think,
    } = passes;
    let bw_iters = throughput_entries(size, bw_iters);
    let stops_before = pair.a.stats().stops;
    // The payload is made once; each entry differs in its first bytes ([`stamp_payload`]).
    let mut p = vec![0u8; size];
    fill(&mut p);
    let wait = Duration::from_secs(30);
    let h = latency_pass(pair, &mut p, iters, wait, think)?;
    pair.a.set_spin(SPIN);
    let h_spin = latency_pass(pair, &mut p, iters, wait, think);
    pair.a.set_spin(Duration::ZERO);
    let h_spin = h_spin?;
    let stages = stages(pair, &mut p, iters, wait, think)?;
    let latency_done_ms = pair.us(Instant::now()) / 1000.0;
    let batches0 = pair.a.stats().batches;
    let threads0 = ThreadTimes::read_all();
    let counters0 = cpu::device_counters();
    let t = Instant::now();
    let (run, cpu) = CpuUse::during(|| -> Result<(), String> {
        let mut last = None;
        for i in 0..bw_iters {
            stamp_payload(i, &mut p);
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
        Ok(())
    });
    run?;
    let secs = t.elapsed().as_secs_f64();
    let threads = cpu::threads_since(&threads0, &ThreadTimes::read_all(), secs, cpu::USER_HZ);
    let counters = cpu::counters_json(&counters0, &cpu::device_counters());
    let batches = (pair.a.stats().batches - batches0).max(1);
    Ok(Measured {
        size: MirrorSize {
            size,
            latency: h,
            latency_spin: h_spin,
            mb_per_s: (bw_iters as f64 * size as f64) / (1u64 << 20) as f64 / secs,
            entries: bw_iters,
            entries_per_batch: bw_iters as f64 / batches as f64,
            cpu,
            threads,
            counters,
            moved: false,
            stages,
            beside: None,
        },
        stops_before,
        latency_done_ms,
    })
}

/// The spinning pass of [`Stages`]: `iters` entries one at a time.
fn stages(
    pair: &MirrorPair,
    p: &mut [u8],
    iters: u64,
    wait: Duration,
    think: Duration,
) -> Result<Stages, String> {
    let mut h = [(); 4].map(|_| stats::new_histogram());
    for i in 0..iters {
        stamp_payload(i, p);
        think_for(think);
        let batches = pair.a.stats().batches;
        let t0 = Instant::now();
        let lsn = pair.a.append_wait(p, wait).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let mut t2 = None;
        let mut polls = 0u32;
        loop {
            if t2.is_none() && pair.a.stats().batches != batches {
                t2 = Some(Instant::now());
            }
            if pair.a.durable_lsn() >= lsn {
                break;
            }
            // The clock now and then only: a read can cost tens of microseconds in the lab guest.
            polls += 1;
            if polls % 64 == 0 && t1.elapsed() > wait {
                return Err(format!("entry {} not durable in {wait:?}", lsn.0));
            }
            std::thread::yield_now();
        }
        let t3 = Instant::now();
        // The post and the completion may both fall between two looks: the post then counts as seen at the
        // end.
        let t2 = t2.unwrap_or(t3);
        let ns = |d: Duration| (d.as_nanos() as u64).clamp(1, 60_000_000_000);
        for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t3 - t0].into_iter().enumerate() {
            h[k].record(ns(d)).map_err(|e| e.to_string())?;
        }
    }
    let p50 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1000.0;
    Ok(Stages {
        append_us: p50(&h[0]),
        handoff_post_us: p50(&h[1]),
        completion_us: p50(&h[2]),
        total_us: p50(&h[3]),
    })
}

/// Thread hand-off costs in this machine, the same kind as the mirror's two: `unpark` of a parked thread
/// until it runs, and `Condvar::notify_all` until the waiter returns from `wait`. Medians in microseconds
/// over `iters` ping-pongs each.
pub fn handoff_probe(iters: u64) -> (f64, f64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    let origin = Instant::now();
    let now_ns = move || origin.elapsed().as_nanos() as u64;
    // unpark -> running.
    let sent = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (s2, d2, n2) = (sent.clone(), done.clone(), seen.clone());
    let worker = std::thread::spawn(move || {
        let mut h = stats::new_histogram();
        let mut last = 0;
        while !d2.load(Ordering::Acquire) {
            std::thread::park();
            let s = s2.load(Ordering::Acquire);
            if s != last && s != 0 {
                let _ = h.record(now_ns().saturating_sub(s).max(1));
                last = s;
                n2.store(s, Ordering::Release);
            }
        }
        h
    });
    for _ in 0..iters {
        // Let the worker park first.
        std::thread::sleep(Duration::from_micros(200));
        let s = now_ns().max(1);
        sent.store(s, Ordering::Release);
        worker.thread().unpark();
        while seen.load(Ordering::Acquire) != s {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    worker.thread().unpark();
    let park = worker.join().map(|h| h.value_at_quantile(0.5)).unwrap_or(0);
    // notify_all -> wait returns.
    let state = Arc::new((Mutex::new((0u64, false)), Condvar::new()));
    let st2 = state.clone();
    let waiter = std::thread::spawn(move || {
        let mut h = stats::new_histogram();
        let (m, cv) = &*st2;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = 0;
        loop {
            if g.1 {
                break;
            }
            if g.0 != last {
                let _ = h.record(now_ns().saturating_sub(g.0).max(1));
                last = g.0;
            }
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        h
    });
    for _ in 0..iters {
        std::thread::sleep(Duration::from_micros(200));
        let (m, cv) = &*state;
        m.lock().unwrap_or_else(|e| e.into_inner()).0 = now_ns().max(1);
        cv.notify_all();
    }
    {
        let (m, cv) = &*state;
        m.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        cv.notify_all();
    }
    let cond = waiter.join().map(|h| h.value_at_quantile(0.5)).unwrap_or(0);
    (park as f64 / 1000.0, cond as f64 / 1000.0)
}

/// What one `Instant::now()` costs in this machine, nanoseconds: the median over `reps` runs of 100 reads
/// each. In the lab guest it is a few hundred nanoseconds with the TSC, tens of microseconds once the
/// kernel judged the emulated TSC unstable and reads the emulated HPET through a system call.
pub fn clock_probe(reps: u64) -> f64 {
    let mut h = stats::new_histogram();
    for _ in 0..reps {
        let t = Instant::now();
        let mut last = t;
        for _ in 0..100 {
            last = std::hint::black_box(Instant::now());
        }
        let ns = (last - t).as_nanos() as u64 / 100;
        let _ = h.record(ns.max(1));
    }
    h.value_at_quantile(0.5) as f64
}

/// `iters` entries one at a time, `append` -> `wait_durable`, after 20 untimed ones.
fn latency_pass(
    pair: &MirrorPair,
    p: &mut [u8],
    iters: u64,
    wait: Duration,
    think: Duration,
) -> Result<Histogram<u64>, String> {
    for _ in 0..20 {
        let lsn = pair.a.append_wait(p, wait).map_err(|e| e.to_string())?;
        pair.a.wait_durable(lsn, wait);
    }
    // Timed with the cycle counter, as the raw floors are: a clock read costs about 1 us in the lab guest
    // once its kernel moved to the HPET, and two of them per entry would sit between one entry's durability
    // and the next append, where the writer's own pause decides how fast rxe answers the next WRITE
    // (docs/performance.md, the pacing cliff).
    let calib = Calibration::start();
    let mut ticks = Vec::with_capacity(iters as usize);
    for i in 0..iters {
        stamp_payload(i, p);
        think_for(think);
        let t0 = cycles();
        let lsn = pair.a.append_wait(p, wait).map_err(|e| e.to_string())?;
        if !pair.a.wait_durable(lsn, wait) {
            return Err(format!(
                "entry {} of {} B not durable in {wait:?}",
                lsn.0,
                p.len()
            ));
        }
        ticks.push(cycles().wrapping_sub(t0));
    }
    let per_ns = calib.ticks_per_ns();
    let mut h = stats::new_histogram();
    for t in ticks {
        let ns = (t as f64 / per_ns) as u64;
        h.record(ns.clamp(1, 60_000_000_000))
            .map_err(|e| e.to_string())?;
    }
    Ok(h)
}

/// Bytes one entry of `size` payload bytes takes in the mirror's ring (header, alignment).
pub fn entry_bytes(size: usize) -> usize {
    size.saturating_add(ENTRY_HEADER).div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
}

/// The `ours` object of one size: append -> durable percentiles (us), throughput (MB/s) and how it was
/// batched under a window of `window` entries in flight.
pub fn ours_json(o: &MirrorSize, window: u64) -> Value {
    let s = stats::summarize(&o.latency);
    json!({
        "tool": "ccm nvram mirror (append -> durable)",
        "p50_us": s.p50_us, "p90_us": s.p90_us, "p99_us": s.p99_us, "p999_us": s.p999_us,
        "max_us": s.max_us, "samples": s.samples,
        "mb_per_s": o.mb_per_s, "entries": o.entries, "entries_per_batch": o.entries_per_batch,
        "window": window, "moved_during_run": o.moved,
        "cpu_during_throughput": o.cpu.map(|u| u.json()),
        "threads_during_throughput": cpu::threads_json(&o.threads),
        "device_counters_during_throughput": o.counters,
    })
}

/// Where one size ran: the interconnect and its devices (node 1's, node 2's).
#[derive(Clone, Debug)]
pub struct Placement<'a> {
    /// The interconnect the mirror used.
    pub interconnect: u8,
    /// Node 1's device on it.
    pub device: &'a str,
    /// Node 2's device on it.
    pub peer_device: &'a str,
}

/// One size as one JSON object, our figures only (`ccm-bench mirror --json`): `ours`, `ours_spin` and the
/// stages. `compare mirror` adds `peer`, the floors and the ratios to it.
pub fn record(o: &MirrorSize, at: &Placement, iters: u64, remeasured: u32, window: u64) -> Value {
    let sp = stats::summarize(&o.latency_spin);
    json!({
        "bench": "mirror",
        "size": o.size,
        "entry_bytes": entry_bytes(o.size),
        "iters": iters,
        "interconnect": at.interconnect,
        "remeasured_sizes": remeasured,
        "device": at.device,
        "peer_device": at.peer_device,
        "ours": ours_json(o, window),
        "ours_spin": {
            "tool": "ccm nvram mirror (append -> durable), Mirror::set_spin",
            "spin_us": SPIN.as_secs_f64() * 1e6,
            "p50_us": sp.p50_us, "p90_us": sp.p90_us, "p99_us": sp.p99_us, "p999_us": sp.p999_us,
            "max_us": sp.max_us, "samples": sp.samples,
        },
        "stages_p50_us": {
            "append": o.stages.append_us, "handoff_post": o.stages.handoff_post_us,
            "completion": o.stages.completion_us, "total_spinning_waiter": o.stages.total_us,
        },
    })
}

/// One size as the human table of `ccm-bench mirror`.
pub fn table(o: &MirrorSize, at: &Placement, iters: u64, window: u64) -> String {
    let row = |name: &str, h: &Histogram<u64>| {
        let s = stats::summarize(h);
        format!(
            "  {name:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
        )
    };
    let mut t = format!(
        "mirror size={} ({} B in the ring) iters={iters} on interconnect {} {}<->{}{}\n  \
         {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        o.size,
        entry_bytes(o.size),
        at.interconnect,
        at.device,
        at.peer_device,
        if o.moved {
            " (the mirror moved during the run)"
        } else {
            ""
        },
        "append -> durable",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us"
    );
    t += &row("ccm nvram mirror", &o.latency);
    t += &row("with set_spin", &o.latency_spin);
    t += &format!(
        "  throughput: {:.2} MB/s ({} entries, window {window}, {:.1} entries per batch)\n  \
         stages p50 us (spinning waiter): append {:.1}, hand-off+post {:.1}, completion {:.1}, total {:.1}\n",
        o.mb_per_s,
        o.entries,
        o.entries_per_batch,
        o.stages.append_us,
        o.stages.handoff_post_us,
        o.stages.completion_us,
        o.stages.total_us
    );
    if let Some(u) = o.cpu {
        let threads: Vec<String> = o
            .threads
            .iter()
            .take(4)
            .map(|(n, us, sy)| format!("{n} {:.2}", us + sy))
            .collect();
        t += &format!(
            "  CPU during the throughput run: user {:.2}, system {:.2}, irq {:.2}, idle {:.2} of {} CPUs; \
             busiest threads: {}\n",
            u.user,
            u.system,
            u.irq,
            u.idle,
            u.cpus,
            threads.join(", ")
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A size's figures from synthetic histograms: waits of 10..=1000 us, spinning ones of 5..=500 us.
    fn synthetic() -> MirrorSize {
        let (mut h, mut hs) = (stats::new_histogram(), stats::new_histogram());
        for us in 1..=100u64 {
            h.record(us * 10_000).unwrap();
            hs.record(us * 5_000).unwrap();
        }
        MirrorSize {
            size: 64,
            latency: h,
            latency_spin: hs,
            mb_per_s: 12.5,
            entries: 1000,
            entries_per_batch: 3.5,
            cpu: None,
            threads: Vec::new(),
            counters: Value::Null,
            moved: false,
            stages: Stages {
                append_us: 1.0,
                handoff_post_us: 2.0,
                completion_us: 30.0,
                total_us: 33.0,
            },
            beside: None,
        }
    }

    const AT: Placement = Placement {
        interconnect: 1,
        device: "rxe2",
        peer_device: "rxe3",
    };

    #[test]
    fn throughput_runs_move_32_mib_within_their_entry_bounds() {
        assert_eq!(throughput_entries(4096, 1000), 8192);
        assert_eq!(throughput_entries(65536, 1000), 1000);
        assert_eq!(throughput_entries(65536, 5000), 5000);
        assert_eq!(throughput_entries(64, 1000), 100_000);
        assert_eq!(throughput_entries(64, 200_000), 200_000);
    }

    #[test]
    fn an_ours_only_record_has_our_percentiles_and_throughput_and_nothing_of_a_peer() {
        let v = record(&synthetic(), &AT, 100, 0, 128);
        assert_eq!(v["bench"], "mirror");
        assert_eq!(v["size"], 64);
        assert_eq!(v["entry_bytes"], entry_bytes(64));
        assert_eq!(v["interconnect"], 1);
        assert_eq!(v["device"], "rxe2");
        let ours = &v["ours"];
        let us = |k: &str| ours[k].as_f64().unwrap();
        // HdrHistogram's 3 significant digits: the 50th of 10, 20, ..., 1000 us is 500 us.
        assert!((us("p50_us") - 500.0).abs() < 1.0, "{ours}");
        assert!((us("p90_us") - 900.0).abs() < 1.0, "{ours}");
        assert!((us("p99_us") - 990.0).abs() < 1.0, "{ours}");
        assert!((us("p999_us") - 1000.0).abs() < 1.0, "{ours}");
        assert!((us("max_us") - 1000.0).abs() < 1.0, "{ours}");
        assert_eq!(ours["samples"], 100);
        assert_eq!(ours["mb_per_s"], 12.5);
        assert_eq!(ours["window"], 128);
        assert!((v["ours_spin"]["p50_us"].as_f64().unwrap() - 250.0).abs() < 1.0);
        assert_eq!(v["stages_p50_us"]["completion"], 30.0);
        // The same `ours` object as compare mirror's, and none of its other half.
        assert_eq!(ours, &ours_json(&synthetic(), 128));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        for k in &keys {
            assert!(
                *k != "peer" && !k.starts_with("ratio") && !k.starts_with("floor"),
                "{k} in an ours-only record: {keys:?}"
            );
        }
    }

    #[test]
    fn the_table_shows_every_percentile_and_the_throughput() {
        let mut o = synthetic();
        o.moved = true;
        o.cpu = Some(CpuUse {
            user: 0.5,
            system: 1.0,
            irq: 0.25,
            idle: 0.25,
            cpus: 2,
        });
        o.threads = vec![("ccm-nvram#1".into(), 0.25, 0.5)];
        let t = table(&o, &AT, 100, 128);
        assert!(t.contains("interconnect 1 rxe2<->rxe3"), "{t}");
        assert!(t.contains("the mirror moved"), "{t}");
        for col in ["p50 us", "p90 us", "p99 us", "p99.9 us", "max us"] {
            assert!(t.contains(col), "{t}");
        }
        let p999 = stats::summarize(&o.latency).p999_us;
        assert!(t.contains(&format!(" {p999:.2} ")), "{t}");
        assert!(t.contains("12.50 MB/s"), "{t}");
        assert!(
            t.contains("system 1.00, irq 0.25, idle 0.25 of 2 CPUs"),
            "{t}"
        );
        assert!(t.contains("busiest threads: ccm-nvram#1 0.75"), "{t}");
    }
}
