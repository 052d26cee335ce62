//! Runs the deterministic simulation over many seeds.
//!
//! ```text
//! ccm-sim --seeds 10000            # seeds 0..10000, on all cores, exit 1 on the first failure
//! ccm-sim --seeds 500 --start 7000 # seeds 7000..7500
//! ccm-sim --seed 1234 --trace      # replay one seed, printing every input, action and step
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ccm_core::sim::{run_seed, trace_seed, Failure};

struct Args {
    seeds: u64,
    start: u64,
    seed: Option<u64>,
    trace: bool,
    threads: usize,
}

fn usage() -> ExitCode {
    eprintln!("usage: ccm-sim [--seeds N] [--start S] [--seed S [--trace]] [--threads T]");
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 1000,
        start: 0,
        seed: None,
        trace: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match k.as_str() {
            "--seeds" => a.seeds = num("--seeds")?,
            "--start" => a.start = num("--start")?,
            "--seed" => a.seed = Some(num("--seed")?),
            "--threads" => a.threads = num("--threads")?.max(1) as usize,
            "--trace" => a.trace = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return usage();
        }
    };
    if let Some(seed) = args.seed {
        let r = if args.trace {
            trace_seed(seed)
        } else {
            run_seed(seed)
        };
        return match r {
            Ok(rep) => {
                println!("seed {seed}: ok {rep:?}");
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("FAILED {f}");
                ExitCode::FAILURE
            }
        };
    }
    let t0 = Instant::now();
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let events = AtomicU64::new(0);
    let stops = AtomicU64::new(0);
    let downs = AtomicU64::new(0);
    let readies = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let resets = AtomicU64::new(0);
    let migrations = AtomicU64::new(0);
    let promotions = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                match run_seed(seed) {
                    Ok(r) => {
                        events.fetch_add(r.events, Ordering::Relaxed);
                        stops.fetch_add(r.stops, Ordering::Relaxed);
                        downs.fetch_add(r.partner_downs, Ordering::Relaxed);
                        readies.fetch_add(r.readies, Ordering::Relaxed);
                        lost.fetch_add(r.lost, Ordering::Relaxed);
                        resets.fetch_add(r.client_resets, Ordering::Relaxed);
                        migrations.fetch_add(r.migrations, Ordering::Relaxed);
                        promotions.fetch_add(r.promotions, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => {
                        stop.store(true, Ordering::Relaxed);
                        failures.lock().expect("poisoned").push(f);
                    }
                }
            });
        }
    });
    let el = t0.elapsed();
    let mut failures = failures.into_inner().expect("poisoned");
    failures.sort_by_key(|f| f.seed);
    println!(
        "{} seeds ok ({}..{}), {} events, {:.1} s on {} threads",
        done.load(Ordering::Relaxed),
        args.start,
        end,
        events.load(Ordering::Relaxed),
        el.as_secs_f64(),
        args.threads
    );
    println!(
        "clients told ready/resumed {}, stop {}, partner-down {}; client resets {}, migrations {}, standby promotions {}; messages lost to broken sessions {}",
        readies.load(Ordering::Relaxed),
        stops.load(Ordering::Relaxed),
        downs.load(Ordering::Relaxed),
        resets.load(Ordering::Relaxed),
        migrations.load(Ordering::Relaxed),
        promotions.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed)
    );
    if let Some(f) = failures.first() {
        eprintln!("FAILED {f}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
