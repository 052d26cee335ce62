//! `ccm-bench`: ccm's verbs layer measured next to perftest, in the same guest boot.
//!
//! ```text
//! ccm-bench latency   [-d DEV] [--peer-dev DEV] [--op send,write] [-s 2,4096] [-n 5000] [--json] [--hgrm DIR]
//! ccm-bench bandwidth [-d DEV] [--peer-dev DEV] [--op write] [-s 65536] [-n 2000] [--tx-depth 128]
//! ccm-bench compare latency|bandwidth [same flags] [--reps N]
//! ```
#![forbid(unsafe_code)]

use ccm_bench::perftest::{self, Placement, Tool};
use ccm_bench::report::{
    bandwidth_table, latency_table, BandwidthFigures, BandwidthRun, LatencyFigures, LatencyRun,
};
use ccm_bench::stats;
use ccm_bench::verbs_bench::{run_bandwidth, run_latency, Length, Op, Pair, QueueSpec, SideSpec};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ccm-bench",
    version,
    about = "ccm benchmarks next to perftest (run them in the rxe lab)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// RC ping-pong latency over ccm-verbs (SEND/RECV like ib_send_lat, RDMA WRITE like ib_write_lat).
    Latency(Common),
    /// RDMA WRITE (or SEND) stream with a window of outstanding work requests, like ib_write_bw.
    Bandwidth(Common),
    /// Runs ours and the matching perftest tool on the same devices, sizes and iterations.
    Compare {
        /// What to compare.
        #[arg(value_enum)]
        what: What,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// ib_send_lat / ib_write_lat.
    Latency,
    /// ib_write_bw / ib_send_bw.
    Bandwidth,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpArg {
    Send,
    Write,
}

impl From<OpArg> for Op {
    fn from(o: OpArg) -> Op {
        match o {
            OpArg::Send => Op::Send,
            OpArg::Write => Op::Write,
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// Node A (local, initiator) device [default: $CCM_IC0_A_DEV, else rxe0].
    #[arg(short = 'd', long = "ib-dev")]
    dev: Option<String>,
    /// Node B device [default: $CCM_IC0_B_DEV, else rxe1].
    #[arg(long)]
    peer_dev: Option<String>,
    /// Address whose RoCE v2 GID node A uses (selected from the GID table by address)
    /// [default: the lab address of the device, else its first IPv4 RoCE v2 GID].
    #[arg(short = 'x', long)]
    gid_ip: Option<IpAddr>,
    /// Address whose RoCE v2 GID node B uses.
    #[arg(long)]
    peer_gid_ip: Option<IpAddr>,
    /// Operations [latency default: send,write; bandwidth default: write].
    #[arg(long, value_enum, value_delimiter = ',')]
    op: Vec<OpArg>,
    /// Message sizes in bytes [latency default: 2,4096; bandwidth default: 65536].
    #[arg(short = 's', long, value_delimiter = ',')]
    size: Vec<usize>,
    /// Iterations (latency round trips / bandwidth messages) [default: 5000 latency, 2000 bandwidth].
    #[arg(short = 'n', long)]
    iters: Option<u64>,
    /// Run for this many seconds instead of a number of iterations.
    #[arg(short = 'D', long, conflicts_with = "iters")]
    duration: Option<u64>,
    /// Outstanding work requests of the bandwidth stream (perftest's tx depth).
    #[arg(short = 't', long, default_value_t = 128)]
    tx_depth: u32,
    /// Send messages of at most this many bytes inline (perftest uses 0 on rxe).
    #[arg(short = 'I', long, default_value_t = 0)]
    inline: u32,
    /// Repetitions of every run (compare: ours first in odd repetitions, perftest first in even ones).
    #[arg(long, default_value_t = 1)]
    reps: u32,
    /// TCP port of perftest's exchange (compare mode; each run uses the next one).
    #[arg(short = 'p', long, default_value_t = 18515)]
    port: u16,
    /// One JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
    /// Write HdrHistogram percentile distributions (.hgrm) of every latency run into DIR
    /// (compare mode also keeps perftest's raw output there).
    #[arg(long, value_name = "DIR")]
    hgrm: Option<PathBuf>,
}

/// Lab variables: the address of a lab device (`CCM_IC{i}_{A,B}_DEV` -> `..._IP`).
fn lab_ip_of(dev: &str) -> Option<IpAddr> {
    let count: usize = std::env::var("CCM_LAB_IC_COUNT").ok()?.parse().ok()?;
    for i in 0..count {
        for s in ["A", "B"] {
            if std::env::var(format!("CCM_IC{i}_{s}_DEV")).ok().as_deref() == Some(dev) {
                return std::env::var(format!("CCM_IC{i}_{s}_IP"))
                    .ok()?
                    .parse()
                    .ok();
            }
        }
    }
    None
}

struct Plan {
    a: SideSpec,
    b: SideSpec,
    sizes: Vec<usize>,
    ops: Vec<Op>,
    len: Length,
    iters: u64,
    c: Common,
}

fn plan(c: &Common, bandwidth: bool) -> Plan {
    let a_dev = c
        .dev
        .clone()
        .or_else(|| std::env::var("CCM_IC0_A_DEV").ok())
        .unwrap_or_else(|| "rxe0".into());
    let b_dev = c
        .peer_dev
        .clone()
        .or_else(|| std::env::var("CCM_IC0_B_DEV").ok())
        .unwrap_or_else(|| "rxe1".into());
    let a = SideSpec {
        gid_ip: c.gid_ip.or_else(|| lab_ip_of(&a_dev)),
        device: a_dev,
    };
    let b = SideSpec {
        gid_ip: c.peer_gid_ip.or_else(|| lab_ip_of(&b_dev)),
        device: b_dev,
    };
    let sizes = if !c.size.is_empty() {
        c.size.clone()
    } else if bandwidth {
        vec![65536]
    } else {
        vec![2, 4096]
    };
    let ops: Vec<Op> = if !c.op.is_empty() {
        c.op.iter().map(|&o| o.into()).collect()
    } else if bandwidth {
        vec![Op::Write]
    } else {
        vec![Op::Send, Op::Write]
    };
    let iters = c.iters.unwrap_or(if bandwidth { 2000 } else { 5000 });
    let len = match c.duration {
        Some(s) => Length::Duration(Duration::from_secs(s)),
        None => Length::Iters(iters),
    };
    Plan {
        a,
        b,
        sizes,
        ops,
        len,
        iters: if c.duration.is_some() { 0 } else { iters },
        c: c.clone(),
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn queue_spec(op: Op, size: usize, len: Length, send_depth: u32, inline: u32) -> QueueSpec {
    let rx = match (op, len) {
        (Op::Send, Length::Iters(n)) => n.clamp(1, 512) as u32,
        (Op::Send, Length::Duration(_)) => 512,
        (Op::Write, _) => 1,
    };
    QueueSpec {
        size,
        send_depth,
        recv_depth: rx.max(1),
        prepost: if op == Op::Send { rx } else { 0 },
        inline,
    }
}

fn ours_latency(p: &Plan, op: Op, size: usize, rep: u32) -> AnyResult<LatencyRun> {
    let q = queue_spec(op, size, p.len, 16, p.c.inline);
    let mut pair = Pair::connect(&p.a, &p.b, &q)?;
    let r = run_latency(&mut pair, op, p.len)?;
    let h = stats::one_way_from_post_ticks(&r.post_ticks, r.ticks_per_ns);
    if let Some(dir) = &p.c.hgrm {
        stats::write_hgrm_file(&h, dir, &format!("ours-{}-lat-{size}-rep{rep}", op.name()))?;
    }
    Ok(LatencyRun {
        bench: "latency",
        op: op.name().into(),
        size,
        iters: p.iters,
        rep,
        device: p.a.device.clone(),
        peer_device: p.b.device.clone(),
        ours: LatencyFigures::ours(&stats::summarize(&h)),
        peer: None,
        ratio_p50: None,
        ratio_p99: None,
    })
}

fn ours_bandwidth(p: &Plan, op: Op, size: usize, rep: u32) -> AnyResult<BandwidthRun> {
    let q = queue_spec(op, size, p.len, p.c.tx_depth, p.c.inline);
    let mut pair = Pair::connect(&p.a, &p.b, &q)?;
    let r = run_bandwidth(&mut pair, op, p.len, p.c.tx_depth)?;
    Ok(BandwidthRun {
        bench: "bandwidth",
        op: op.name().into(),
        size,
        iters: p.iters,
        tx_depth: p.c.tx_depth,
        rep,
        device: p.a.device.clone(),
        peer_device: p.b.device.clone(),
        ours: BandwidthFigures {
            tool: "ccm-verbs".into(),
            mb_per_s: r.mb_per_s(),
            msg_rate_mpps: r.mpps(),
            messages: r.messages,
        },
        peer: None,
        ratio_bw: None,
    })
}

/// perftest's placement: same devices, GID indices selected by address, B's address.
fn placement(p: &Plan, port: u16) -> AnyResult<Placement> {
    let ca = ccm_verbs::Context::open(&p.a.device)?;
    let cb = ccm_verbs::Context::open(&p.b.device)?;
    let ga = ccm_bench::verbs_bench::select_gid(&ca, p.a.gid_ip)?;
    let gb = ccm_bench::verbs_bench::select_gid(&cb, p.b.gid_ip)?;
    Ok(Placement {
        client_dev: p.a.device.clone(),
        client_gid_index: ga.index,
        server_dev: p.b.device.clone(),
        server_gid_index: gb.index,
        server_ip: gb.gid.to_ip(),
        port,
    })
}

fn keep_raw(p: &Plan, name: &str, out: &perftest::PeerOutput) -> std::io::Result<()> {
    if let Some(dir) = &p.c.hgrm {
        std::fs::create_dir_all(dir)?;
        let text = format!(
            "# {}\n# {}\n=== client\n{}\n=== server\n{}",
            out.commands[0], out.commands[1], out.client, out.server
        );
        std::fs::write(dir.join(format!("{name}.perftest.txt")), text)?;
    }
    Ok(())
}

fn peer_latency(
    p: &Plan,
    op: Op,
    size: usize,
    rep: u32,
    port: &mut u16,
) -> AnyResult<LatencyFigures> {
    let tool = match op {
        Op::Send => Tool::SendLat,
        Op::Write => Tool::WriteLat,
    };
    let args: Vec<String> = vec![
        "-s".into(),
        size.to_string(),
        "-n".into(),
        p.iters.to_string(),
        "-H".into(),
    ];
    // perftest's CPU-frequency sampling fails now and then under TCG (it prints `inf`): retry.
    for _attempt in 0..4 {
        let pl = placement(p, *port)?;
        *port = port.wrapping_add(1).max(1024);
        let out = perftest::run(tool, &pl, &args)?;
        let name = format!("peer-{}-lat-{size}-rep{rep}", op.name());
        keep_raw(p, &name, &out)?;
        for (source, text) in [("client", &out.client), ("server", &out.server)] {
            let Some(r) = perftest::parse_lat(text).filter(|r| r.is_valid()) else {
                continue;
            };
            let (p90, h) = if r.samples.is_empty() {
                (None, None)
            } else {
                let h = stats::from_us_samples(&r.samples);
                (Some(h.value_at_quantile(0.90) as f64 / 1000.0), Some(h))
            };
            if let (Some(dir), Some(h)) = (&p.c.hgrm, &h) {
                stats::write_hgrm_file(h, dir, &name)?;
            }
            return Ok(LatencyFigures::peer(tool.program(), &r, p90, source));
        }
        eprintln!(
            "ccm-bench: {} printed no valid figures (CPU frequency estimate failed?), retrying",
            tool.program()
        );
    }
    Err(format!("{} gave no valid figures in 4 attempts", tool.program()).into())
}

fn peer_bandwidth(
    p: &Plan,
    op: Op,
    size: usize,
    rep: u32,
    port: &mut u16,
) -> AnyResult<BandwidthFigures> {
    let tool = match op {
        Op::Send => Tool::SendBw,
        Op::Write => Tool::WriteBw,
    };
    let mut args: Vec<String> = vec![
        "-s".into(),
        size.to_string(),
        "-t".into(),
        p.c.tx_depth.to_string(),
    ];
    match p.c.duration {
        Some(d) => args.extend(["-D".into(), d.to_string()]),
        None => args.extend(["-n".into(), p.iters.to_string()]),
    }
    for _attempt in 0..4 {
        let pl = placement(p, *port)?;
        *port = port.wrapping_add(1).max(1024);
        let out = perftest::run(tool, &pl, &args)?;
        keep_raw(p, &format!("peer-{}-bw-{size}-rep{rep}", op.name()), &out)?;
        if let Some(r) = perftest::parse_bw(&out.client).filter(|r| r.is_valid()) {
            return Ok(BandwidthFigures::peer(tool.program(), &r));
        }
        eprintln!(
            "ccm-bench: {} printed no valid figures, retrying",
            tool.program()
        );
    }
    Err(format!("{} gave no valid figures in 4 attempts", tool.program()).into())
}

fn emit_latency(json: bool, r: &LatencyRun) -> AnyResult<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{}", latency_table(r));
    }
    Ok(())
}

fn emit_bandwidth(json: bool, r: &BandwidthRun) -> AnyResult<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{}", bandwidth_table(r));
    }
    Ok(())
}

fn run(cli: Cli) -> AnyResult<()> {
    match cli.cmd {
        Cmd::Latency(c) => {
            let p = plan(&c, false);
            for rep in 1..=c.reps {
                for &op in &p.ops {
                    for &size in &p.sizes {
                        emit_latency(c.json, &ours_latency(&p, op, size, rep)?)?;
                    }
                }
            }
        }
        Cmd::Bandwidth(c) => {
            let p = plan(&c, true);
            for rep in 1..=c.reps {
                for &op in &p.ops {
                    for &size in &p.sizes {
                        emit_bandwidth(c.json, &ours_bandwidth(&p, op, size, rep)?)?;
                    }
                }
            }
        }
        Cmd::Compare { what, common: c } => {
            let bw = matches!(what, What::Bandwidth);
            let p = plan(&c, bw);
            if !bw && c.duration.is_some() {
                return Err(
                    "compare latency needs -n: perftest's -D latency mode reports only an average"
                        .into(),
                );
            }
            let mut port = c.port;
            for rep in 1..=c.reps {
                for &op in &p.ops {
                    for &size in &p.sizes {
                        if bw {
                            // Alternate which side runs first, so neither always gets
                            // the quieter (or noisier) slot.
                            let (ours, peer) = if rep % 2 == 1 {
                                let o = ours_bandwidth(&p, op, size, rep)?;
                                (o, peer_bandwidth(&p, op, size, rep, &mut port)?)
                            } else {
                                let q = peer_bandwidth(&p, op, size, rep, &mut port)?;
                                (ours_bandwidth(&p, op, size, rep)?, q)
                            };
                            emit_bandwidth(c.json, &ours.with_peer(peer))?;
                        } else {
                            let (ours, peer) = if rep % 2 == 1 {
                                let o = ours_latency(&p, op, size, rep)?;
                                (o, peer_latency(&p, op, size, rep, &mut port)?)
                            } else {
                                let q = peer_latency(&p, op, size, rep, &mut port)?;
                                (ours_latency(&p, op, size, rep)?, q)
                            };
                            emit_latency(c.json, &ours.with_peer(peer))?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
