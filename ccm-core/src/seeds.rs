//! Runs a seeded simulation over a range of seeds on several threads (the `ccm-sim` and
//! `ccm-sim-mirror` binaries): each thread takes the next seed, the totals of the passing runs are
//! summed, and the first failure stops every thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a run over many seeds found.
#[derive(Debug)]
pub struct SeedRun<R, F> {
    /// Seeds that passed.
    pub passed: u64,
    /// The passing runs' reports, summed.
    pub total: R,
    /// The failure with the lowest seed, if any seed failed (later seeds may not have run).
    pub failure: Option<F>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// Runs `run` for seeds `start..start + count` on `threads` threads, adding each passing report
/// into the total with `add`; `seed_of` names a failure's seed.
pub fn run_seeds<R, F>(
    start: u64,
    count: u64,
    threads: usize,
    run: impl Fn(u64) -> Result<R, F> + Sync,
    add: impl Fn(&mut R, &R) + Sync,
    seed_of: impl Fn(&F) -> u64,
) -> SeedRun<R, F>
where
    R: Default + Send,
    F: Send,
{
    let t0 = Instant::now();
    let next = AtomicU64::new(start);
    let end = start.saturating_add(count);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<F>> = Mutex::new(Vec::new());
    let total: Mutex<(u64, R)> = Mutex::new((0, R::default()));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    match run(seed) {
                        Ok(r) => {
                            let mut t = total.lock().expect("poisoned");
                            t.0 += 1;
                            add(&mut t.1, &r);
                        }
                        Err(f) => {
                            stop.store(true, Ordering::Relaxed);
                            failures.lock().expect("poisoned").push(f);
                        }
                    }
                }
            });
        }
    });
    let (passed, total) = total.into_inner().expect("poisoned");
    let failure = failures
        .into_inner()
        .expect("poisoned")
        .into_iter()
        .min_by_key(|f| seed_of(f));
    SeedRun {
        passed,
        total,
        failure,
        elapsed: t0.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_once_and_the_totals_add_up() {
        let r = run_seeds(10, 100, 3, Ok::<u64, u64>, |t, r| *t += r, |f| *f);
        assert_eq!(r.passed, 100);
        assert_eq!(r.total, (10..110).sum::<u64>());
        assert!(r.failure.is_none());
    }

    #[test]
    fn a_failing_seed_is_reported_and_stops_the_run() {
        let r = run_seeds(
            0,
            10_000,
            2,
            |s| if s % 1000 == 37 { Err(s) } else { Ok(1u64) },
            |t, r| *t += r,
            |f| *f,
        );
        assert_eq!(r.failure, Some(37), "the lowest failing seed");
        assert!(r.passed < 10_000 - 1, "the run stopped early");
    }
}
