//! Runs the NVRAM mirror simulation ([`ccm_core::sim_mirror`]) over many seeds.
//!
//! ```text
//! ccm-sim-mirror --seeds 10000             # seeds 0..10000, on all cores; exit 1 and print the failing seed
//! ccm-sim-mirror --seeds 500 --start 7000  # seeds 7000..7500
//! ccm-sim-mirror --seed 1234 --trace       # replay one seed, printing every step
//! ccm-sim-mirror --seeds 200 --bug lost-write  # a deliberately broken variant: must fail
//! ```

use std::process::ExitCode;

use ccm_core::seeds::run_seeds;
use ccm_core::sim_mirror::{run, Bug, Config, Failure, Report};

struct Args {
    seeds: u64,
    start: u64,
    seed: Option<u64>,
    steps: usize,
    trace: bool,
    bug: Option<Bug>,
    threads: usize,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: ccm-sim-mirror [--seeds N] [--start S] [--seed S [--trace]] [--steps K] [--threads T] \
         [--bug corrupt|lost-write|ack-before-checkpoint]"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 1000,
        start: 0,
        seed: None,
        steps: Config::seed(0).steps,
        trace: false,
        bug: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse().map_err(|e| format!("{name}: {e}"))
        };
        match k.as_str() {
            "--seeds" => a.seeds = num("--seeds", val("--seeds")?)?,
            "--start" => a.start = num("--start", val("--start")?)?,
            "--seed" => a.seed = Some(num("--seed", val("--seed")?)?),
            "--steps" => a.steps = num("--steps", val("--steps")?)? as usize,
            "--threads" => a.threads = num("--threads", val("--threads")?)?.max(1) as usize,
            "--trace" => a.trace = true,
            "--bug" => {
                let v = val("--bug")?;
                a.bug = Some(
                    [
                        Bug::CorruptPlacement,
                        Bug::LostWrite,
                        Bug::AckBeforeCheckpoint,
                        Bug::OldLinkStaysOpen,
                    ]
                    .into_iter()
                    .find(|b| b.flag() == v)
                    .ok_or(format!("unknown bug {v}"))?,
                )
            }
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
    let config = |seed| Config {
        seed,
        steps: args.steps,
        bug: args.bug,
        trace: args.trace,
    };
    if let Some(seed) = args.seed {
        return match run(config(seed)) {
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
        |seed| run(config(seed)),
        Report::add,
        |f: &Failure| f.seed,
    );
    let t = &r.total;
    println!(
        "{} seeds ok ({}..{}), {:.1} s on {} threads",
        r.passed,
        args.start,
        args.start + args.seeds,
        r.elapsed.as_secs_f64(),
        args.threads
    );
    println!(
        "appended {}, back-pressure {}, batches {}, WRITEs placed {} (twice {}, late {}), links {}, cuts port-down {} \
         silent {} failback {}, partner crashes {} (entries re-applied {}), writer crashes {} (torn appends {})",
        t.appended,
        t.ring_full,
        t.batches,
        t.placed,
        t.duplicates,
        t.late_writes,
        t.links,
        t.cuts[0],
        t.cuts[1],
        t.cuts[2],
        t.partner_crashes,
        t.reapplied,
        t.writer_crashes,
        t.torn_appends
    );
    if let Some(f) = &r.failure {
        eprintln!("FAILED {f}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
