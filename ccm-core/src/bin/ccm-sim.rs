//! Runs the deterministic simulation over many seeds.
//!
//! ```text
//! ccm-sim --seeds 10000            # seeds 0..10000, on all cores, exit 1 on the first failure
//! ccm-sim --seeds 500 --start 7000 # seeds 7000..7500
//! ccm-sim --seed 1234 --trace      # replay one seed, printing every input, action and step
//! ```

use std::process::ExitCode;

use ccm_core::seeds::run_seeds;
use ccm_core::sim::{run_seed, trace_seed, Failure, Report};

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
    let r = run_seeds(
        args.start,
        args.seeds,
        args.threads,
        run_seed,
        Report::add,
        |f: &Failure| f.seed,
    );
    let t = &r.total;
    println!(
        "{} seeds ok ({}..{}), {} events, {:.1} s on {} threads",
        r.passed,
        args.start,
        args.start + args.seeds,
        t.events,
        r.elapsed.as_secs_f64(),
        args.threads
    );
    println!(
        "clients told ready/resumed {}, stop {}, partner-down {}; client resets {}, migrations {}, standby promotions {}; messages lost to broken sessions {}",
        t.readies, t.stops, t.partner_downs, t.client_resets, t.migrations, t.promotions, t.lost
    );
    if let Some(f) = &r.failure {
        eprintln!("FAILED {f}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
