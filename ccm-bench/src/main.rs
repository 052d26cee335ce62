//! `ccm-bench`: ccm's verbs layer measured next to perftest, in the same guest boot.
//!
//! ```text
//! ccm-bench latency   [-d DEV] [--peer-dev DEV] [--op send,write] [-s 2,4096] [-n 5000] [--json] [--hgrm DIR]
//! ccm-bench bandwidth [-d DEV] [--peer-dev DEV] [--op write] [-s 65536] [-n 2000] [--tx-depth 128]
//! ccm-bench mirror    [-s 64,...,65536] [-n 1000] [--json] [--hgrm DIR] [--plot FILE.svg]
//! ccm-bench bringup   [--vis 1,16,64] [--reps N] [--json]
//! ccm-bench compare latency|bandwidth [same flags] [--reps N] [--plot FILE.svg]
//! ccm-bench compare mirror  [-s 64,...,65536] [-n 1000] [--json] [--plot FILE.svg]
//! ccm-bench compare bringup [--vis 1,16,64] [--reps N] [--json]
//! ccm-bench failover [--cuts 6] [--kinds down,delete,silent] [--quiet 5] [--json] [--plot FILE.svg]
//! ```
#![forbid(unsafe_code)]

use ccm_bench::cpu::CpuUse;
use ccm_bench::failover::{self, CutKind, FailoverOpts};
use ccm_bench::mirror_bench::{entry_bytes, MirrorOurs};
use ccm_bench::pair::PairSpec;
use ccm_bench::perftest::{self, Placement, Tool};
use ccm_bench::report::{
    bandwidth_table, latency_table, BandwidthFigures, BandwidthRun, LatencyFigures, LatencyRun,
};
use ccm_bench::verbs_bench::{
    run_bandwidth, run_imm_completion, run_latency, run_log_writes, run_write_completion,
    run_write_completion_prepared, ImmPeer, Length, Op, Pair, QueueSpec, SideSpec,
};
use ccm_bench::{bringup, mirror_bench, plot, report, stats};
use ccm_verbs::lab::LabTopology;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
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
    /// The NVRAM mirror of two ccm nodes: append -> durable latency per size, batched throughput (ours
    /// only; `compare mirror` adds ib_write_lat/ib_write_bw).
    Mirror(Common),
    /// Slam connect of N VIs (ccm-vi): create, exchange addresses, connect both sides (ours only;
    /// `compare bringup` adds rdma_cm).
    #[command(visible_alias = "bring-up")]
    Bringup(Common),
    /// Mirrored traffic between two nodes while the link in use is cut N times: gaps, detection, loss.
    Failover(FailoverArgs),
    /// Runs ours and the matching peer tool (perftest, cmtime) on the same devices, sizes and iterations.
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
    /// The NVRAM mirror of two ccm nodes (append -> durable, throughput) / ib_write_lat + ib_write_bw.
    Mirror,
    /// Slam connect of N VIs (ccm-vi) / rdma_cm (cmtime).
    Bringup,
}

#[derive(Args, Clone)]
struct FailoverArgs {
    /// Cuts of the interconnect the mirror uses.
    #[arg(long, default_value_t = 6)]
    cuts: u32,
    /// How links are cut, in turn: down (port down), delete (rxe device deleted), silent (100 % netem loss).
    #[arg(long, value_delimiter = ',', default_value = "down,delete,silent")]
    kinds: Vec<String>,
    /// Seconds of traffic without any fault before the first cut (any failover then is needless).
    #[arg(long, default_value_t = 5.0)]
    quiet: f64,
    /// Milliseconds a link stays cut.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    /// Milliseconds after a restore before the next cut (the clients fail back meanwhile).
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
    /// Entries appended per second at most (each waited for until durable on the partner).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 256)]
    entry_bytes: usize,
    /// Heartbeat period of both nodes (the lab guest is emulated: the demo's 20 ms x 5).
    #[arg(long, default_value_t = 20)]
    heartbeat_ms: u64,
    /// Missed heartbeats before a link fails.
    #[arg(long, default_value_t = 5)]
    heartbeat_misses: u32,
    /// Health a link needs before clients fail back to it.
    #[arg(long, default_value_t = 500)]
    hold_down_ms: u64,
    /// TCP port of the nodes' initial sessions.
    #[arg(long, default_value_t = 19_800)]
    tcp_port: u16,
    /// Run the nodes' driver threads at normal priority (`realtime = false`) instead of SCHED_FIFO.
    #[arg(long)]
    no_realtime: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the failover timeline (entries durable per ms around each cut) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
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
    /// Message sizes in bytes [latency default: 2,4096; bandwidth default: 65536; mirror: entry payloads,
    /// default 64,256,1024,4096,16384,65536].
    #[arg(short = 's', long, value_delimiter = ',')]
    size: Vec<usize>,
    /// Iterations (latency round trips / bandwidth messages / mirror entries per pass) [default: 5000
    /// latency, 2000 bandwidth, 1000 mirror].
    #[arg(short = 'n', long)]
    iters: Option<u64>,
    /// Run for this many seconds instead of a number of iterations.
    #[arg(short = 'D', long, conflicts_with = "iters")]
    duration: Option<u64>,
    /// Outstanding work requests of the bandwidth stream (perftest's tx depth); mirror: entries in flight.
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
    /// Compare latency|mirror, mirror: write the latency percentile curves (ours, and the peer's in
    /// compare mode) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Mirror, compare mirror: microseconds the writer stays busy between one entry's durability and the
    /// next append, in ours and in every raw floor alike (a storage engine's own work between two log
    /// writes); 0 = back to back, as `ib_write_lat` (which cannot pause) runs.
    #[arg(long, default_value_t = 0)]
    think_us: u64,
    /// Mirror, compare mirror: each node's log ring in MiB (the partner's mirror ring is as large). A
    /// writer asks the partner for ring space back once half of it awaits an ack, so the ring size sets how
    /// often a stream wakes the partner.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    ring_mib: u64,
    /// Bringup, compare bringup: numbers of connections to set up.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    vis: Vec<usize>,
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

fn ours_latency(
    p: &Plan,
    op: Op,
    size: usize,
    rep: u32,
) -> AnyResult<(LatencyRun, Histogram<u64>)> {
    let q = queue_spec(op, size, p.len, 16, p.c.inline);
    let mut pair = Pair::connect(&p.a, &p.b, &q)?;
    let r = run_latency(&mut pair, op, p.len)?;
    let h = stats::one_way_from_post_ticks(&r.post_ticks, r.ticks_per_ns);
    if let Some(dir) = &p.c.hgrm {
        stats::write_hgrm_file(&h, dir, &format!("ours-{}-lat-{size}-rep{rep}", op.name()))?;
    }
    let run = LatencyRun {
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
    };
    Ok((run, h))
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
) -> AnyResult<(LatencyFigures, Option<Histogram<u64>>)> {
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
        // Under load the client and server now and then miss each other: run both again.
        let out = match perftest::run(tool, &pl, &args) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("ccm-bench: {e}\nccm-bench: retrying");
                continue;
            }
        };
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
            return Ok((LatencyFigures::peer(tool.program(), &r, p90, source), h));
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
        // Under load the client and server now and then miss each other: run both again.
        let out = match perftest::run(tool, &pl, &args) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("ccm-bench: {e}\nccm-bench: retrying");
                continue;
            }
        };
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
                        emit_latency(c.json, &ours_latency(&p, op, size, rep)?.0)?;
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
        Cmd::Failover(_) => unreachable!("handled in main"),
        Cmd::Mirror(c) => mirror(&counted(c, "mirror")?)?,
        Cmd::Bringup(c) => bringup(&counted(c, "bringup")?)?,
        Cmd::Compare {
            what: What::Mirror,
            common: c,
        } => compare_mirror(&counted(c, "compare mirror")?)?,
        Cmd::Compare {
            what: What::Bringup,
            common: c,
        } => compare_bringup(&counted(c, "compare bringup")?)?,
        Cmd::Compare { what, common: c } => {
            let bw = matches!(what, What::Bandwidth);
            let mut curves = Vec::new();
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
                            let ((ours, oh), (peer, ph)) = if rep % 2 == 1 {
                                let o = ours_latency(&p, op, size, rep)?;
                                (o, peer_latency(&p, op, size, rep, &mut port)?)
                            } else {
                                let q = peer_latency(&p, op, size, rep, &mut port)?;
                                (ours_latency(&p, op, size, rep)?, q)
                            };
                            let color = plot::PALETTE[curves.len() / 2 % plot::PALETTE.len()];
                            let label = format!("{} {size} B rep {rep}", op.name());
                            curves.push(plot::Series {
                                label: format!("ccm-verbs {label}"),
                                color: color.into(),
                                dashed: false,
                                points: plot::percentile_points(&oh),
                            });
                            if let Some(ph) = &ph {
                                curves.push(plot::Series {
                                    label: format!("perftest {label}"),
                                    color: color.into(),
                                    dashed: true,
                                    points: plot::percentile_points(ph),
                                });
                            }
                            emit_latency(c.json, &ours.with_peer(peer))?;
                        }
                    }
                }
            }
            if let (Some(path), false) = (&c.plot, bw) {
                write_plot(
                    path,
                    &plot::percentile_chart(
                        "one-way latency: ccm-verbs (solid) vs perftest (dashed)",
                        &curves,
                    ),
                )?;
            }
        }
    }
    Ok(())
}

fn lab(what: &str) -> AnyResult<LabTopology> {
    LabTopology::from_env_or_skip(what).ok_or_else(|| {
        format!("{what} runs inside the rxe lab: scripts/rxe-lab run -- ccm-bench ...").into()
    })
}

fn write_plot(path: &PathBuf, svg: &str) -> AnyResult<()> {
    std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("ccm-bench: wrote {}", path.display());
    Ok(())
}

fn failover(a: FailoverArgs) -> AnyResult<ExitCode> {
    let lab = lab("ccm-bench failover")?;
    let kinds = a
        .kinds
        .iter()
        .map(|k| {
            CutKind::parse(k)
                .ok_or_else(|| format!("unknown cut kind {k:?} (down, delete, silent)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let o = FailoverOpts {
        cuts: a.cuts,
        kinds,
        quiet: Duration::from_secs_f64(a.quiet),
        hold: Duration::from_millis(a.hold_ms),
        settle: Duration::from_millis(a.settle_ms),
        rate: a.rate,
        entry_bytes: a.entry_bytes,
        pair: PairSpec {
            heartbeat_ms: a.heartbeat_ms,
            heartbeat_misses: a.heartbeat_misses,
            hold_down_ms: a.hold_down_ms,
            tcp_port: a.tcp_port,
            ring_bytes: 16 << 20,
            realtime: !a.no_realtime,
        },
    };
    let run = failover::run(&lab, &o)?;
    if a.json {
        println!("{}", serde_json::to_string(&run.report)?);
    } else {
        print!("{}", failover::table(&run.report));
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "ccm failover: entries durable per ms around each cut ({} entries/s, {} ms bins)",
            a.rate,
            failover::TIMELINE_BIN_MS
        );
        write_plot(path, &plot::timeline_chart(&title, &run.timelines))?;
    }
    let r = &run.report;
    Ok(
        if r.lost == 0
            && r.duplicated == 0
            && r.out_of_order == 0
            && r.checksums_equal
            && r.ring_check_clean
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The arguments of a benchmark that counts (entries, connections) and has no timed mode: `-D` is
/// refused with a clear error rather than ignored.
fn counted(c: Common, what: &str) -> AnyResult<Common> {
    match c.duration {
        Some(_) => Err(format!(
            "ccm-bench {what}: -D/--duration is not supported here (it counts entries with -n, or \
             connections with --vis)"
        )
        .into()),
        None => Ok(c),
    }
}

const MIRROR_SIZES: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];

/// Our half of the mirror benchmark (`ccm-bench mirror`, `compare mirror`): two nodes with the NVRAM mirror
/// in this process, every size measured ([`mirror_bench::run_ours`]; `beside` measures next to the idle
/// nodes after each size), the waits' `.hgrm` files written.
fn mirror_ours(
    c: &Common,
    lab: &LabTopology,
    beside: &mut dyn FnMut(usize, u8) -> Result<Option<Histogram<u64>>, String>,
) -> AnyResult<MirrorOurs> {
    let sizes = if c.size.is_empty() {
        MIRROR_SIZES.to_vec()
    } else {
        c.size.clone()
    };
    let iters = mirror_iters(c);
    // Slow heartbeats (50 ms x 10): a stall of the emulated guest (seen up to ~1 s on a loaded host) should
    // not move the mirror in the middle of a measurement; detection is the failover bench's business.
    let pair = PairSpec {
        heartbeat_ms: 50,
        heartbeat_misses: 10,
        hold_down_ms: 500,
        tcp_port: 19_820,
        ring_bytes: c.ring_mib << 20,
        realtime: true,
    };
    let passes = mirror_bench::Passes {
        iters,
        bw_iters: iters,
        window: c.tx_depth as u64,
        think: think(c),
    };
    let ours = mirror_bench::run_ours(lab, &pair, &sizes, passes, beside)?;
    if let Some(dir) = &c.hgrm {
        for (o, _) in &ours.sizes {
            stats::write_hgrm_file(&o.latency, dir, &format!("ours-mirror-{}", o.size))?;
            stats::write_hgrm_file(
                &o.latency_spin,
                dir,
                &format!("ours-mirror-spin-{}", o.size),
            )?;
        }
    }
    Ok(ours)
}

/// `--think-us`.
fn think(c: &Common) -> Duration {
    Duration::from_micros(c.think_us)
}

/// Entries per latency pass and in the throughput run of the mirror benchmarks.
fn mirror_iters(c: &Common) -> u64 {
    c.iters.unwrap_or(1000)
}

/// `ccm-bench mirror`: our side alone, one record (table or JSON object) per size.
fn mirror(c: &Common) -> AnyResult<()> {
    let lab = lab("ccm-bench mirror")?;
    let ours = mirror_ours(c, &lab, &mut |_, _| Ok(None))?;
    let iters = mirror_iters(c);
    let mut curves = Vec::new();
    for (i, (o, link)) in ours.sizes.iter().enumerate() {
        let ic = lab.ic(*link as usize);
        let at = mirror_bench::Placement {
            interconnect: *link,
            device: &ic.a.device,
            peer_device: &ic.b.device,
        };
        if c.json {
            let mut v = mirror_bench::record(o, &at, iters, ours.moves, c.tx_depth as u64);
            v["think_us"] = c.think_us.into();
            v["ring_bytes"] = (c.ring_mib << 20).into();
            println!("{v}");
        } else {
            println!("{}", mirror_bench::table(o, &at, iters, c.tx_depth as u64));
        }
        curves.push(plot::Series {
            label: format!("mirror {} B", o.size),
            color: plot::PALETTE[i % plot::PALETTE.len()].to_string(),
            dashed: false,
            points: plot::percentile_points(&o.latency),
        });
    }
    if let Some(path) = &c.plot {
        write_plot(
            path,
            &plot::percentile_chart("NVRAM mirror append -> durable", &curves),
        )?;
    }
    Ok(())
}

fn compare_mirror(c: &Common) -> AnyResult<()> {
    let lab = lab("ccm-bench compare mirror")?;
    let iters = mirror_iters(c);
    // The floor at the entry's ring bytes measured while both nodes and their idle mirrors are up: what
    // the nodes' own threads (drivers, mirror threads' periodic wake-ups) cost a WRITE that is not theirs.
    let mut beside = |size: usize, link: u8| -> Result<Option<Histogram<u64>>, String> {
        let ic = lab.ic(link as usize);
        let mut pc = c.clone();
        pc.dev = Some(ic.a.device.clone());
        pc.peer_dev = Some(ic.b.device.clone());
        pc.gid_ip = Some(ic.a.ip);
        pc.peer_gid_ip = Some(ic.b.ip);
        let p = plan(&pc, false);
        let entry = entry_bytes(size);
        let q = queue_spec(Op::Write, entry, Length::Iters(iters), 16, 0);
        let mut fp = Pair::connect(&p.a, &p.b, &q).map_err(|e| e.to_string())?;
        let mut h = stats::new_histogram();
        for ns in run_write_completion(&mut fp, 20, iters, think(c)).map_err(|e| e.to_string())? {
            h.record(ns.min(60_000_000_000))
                .map_err(|e| e.to_string())?;
        }
        Ok(Some(h))
    };
    let ours = mirror_ours(c, &lab, &mut beside)?;
    // The two thread hand-offs inside "durable", measured alone in this boot.
    let (unpark_us, notify_us) = mirror_bench::handoff_probe(200);
    let clock_us = mirror_bench::clock_probe(200) / 1000.0;
    eprintln!(
        "ccm-bench: hand-off medians: unpark -> running {unpark_us:.1} us, notify_all -> wait returns {notify_us:.1} us; \
         one clock read {clock_us:.2} us"
    );
    let mut port = c.port;
    let mut curves = Vec::new();
    for (i, (o, link)) in ours.sizes.iter().enumerate() {
        // The peer tools on the devices of the link the mirror used, with the nodes stopped.
        let ic = lab.ic(*link as usize);
        let mut pc = c.clone();
        pc.dev = Some(ic.a.device.clone());
        pc.peer_dev = Some(ic.b.device.clone());
        pc.gid_ip = Some(ic.a.ip);
        pc.peer_gid_ip = Some(ic.b.ip);
        pc.iters = Some(iters);
        pc.duration = None;
        let p = plan(&pc, false);
        // The raw-verbs floor of "durable": a signalled WRITE posted and its completion polled.
        let floor = {
            let q = queue_spec(Op::Write, o.size, Length::Iters(iters), 16, 0);
            let mut fp = Pair::connect(&p.a, &p.b, &q)?;
            let mut h = stats::new_histogram();
            for ns in run_write_completion(&mut fp, 20, iters, think(c))? {
                h.record(ns.min(60_000_000_000))?;
            }
            h
        };
        let f = stats::summarize(&floor);
        // The same at the bytes the mirror writes for one entry (header and alignment: 64 B -> 128, 1 KiB
        // -> 1088, two packets at the lab's MTU of 1024), then as the protocol sends them: WRITE_WITH_IMM
        // into posted receives, and with the partner answering each one with an ack-sized SEND.
        let entry = entry_bytes(o.size);
        let mut floors = Vec::new();
        for (name, imm, inline) in [
            ("floor_entry", None, 0),
            ("floor_entry_inline", None, 256),
            ("floor_imm", Some(ImmPeer::Repost), 0),
            ("floor_imm_parked", Some(ImmPeer::Parked), 0),
            ("floor_imm_sleeper", Some(ImmPeer::Sleeper), 0),
            ("floor_imm_ack", Some(ImmPeer::Ack), 0),
        ] {
            // Inline data (copied into the work request by the provider) only where the entry fits.
            if inline > 0 && entry > inline {
                continue;
            }
            let mut q = queue_spec(Op::Write, entry, Length::Iters(iters), 16, inline as u32);
            if imm.is_some() {
                q.recv_depth = 64;
                q.prepost = 64;
                q.inline = 64;
            }
            let mut fp = Pair::connect(&p.a, &p.b, &q)?;
            let ns = match imm {
                None => run_write_completion(&mut fp, 20, iters, think(c))?,
                Some(peer) => run_imm_completion(&fp, 20, iters, peer, think(c))?,
            };
            let mut h = stats::new_histogram();
            for ns in ns {
                h.record(ns.min(60_000_000_000))?;
            }
            floors.push((name, stats::summarize(&h)));
        }
        // A raw-verbs writer doing the mirror's per-entry work (copy, header, XXH3-64 checksum) before its WRITE.
        {
            let q = queue_spec(Op::Write, entry, Length::Iters(iters), 16, 0);
            let mut fp = Pair::connect(&p.a, &p.b, &q)?;
            let mut h = stats::new_histogram();
            for ns in run_write_completion_prepared(&mut fp, 20, iters, think(c), o.size)? {
                h.record(ns.min(60_000_000_000))?;
            }
            floors.push(("floor_prepared", stats::summarize(&h)));
        }
        // The same, written as a log: each entry at the next offset of a ring as large as the mirror's, into
        // the same offset at B (fresh memory for every entry, as the mirror's; the floors above reuse one
        // buffer, as `ib_write_lat` does).
        {
            let ring = (c.ring_mib << 20) as usize;
            let q = queue_spec(Op::Write, ring, Length::Iters(iters), 16, 0);
            let mut fp = Pair::connect(&p.a, &p.b, &q)?;
            let mut h = stats::new_histogram();
            for ns in run_log_writes(&mut fp, 20, iters, think(c), o.size, entry)? {
                h.record(ns.min(60_000_000_000))?;
            }
            floors.push(("floor_log", stats::summarize(&h)));
        }
        // The raw-verbs floor of the throughput run: a WRITE stream of the entry's ring bytes with the same
        // window and as many messages as our run had entries, and the machine's CPU use during it (rxe
        // works on the same vCPUs). ib_write_bw gets the same count.
        let bw_entries = o.entries;
        let floor_bw_payload = |r: &ccm_bench::verbs_bench::BandwidthResult| {
            r.mb_per_s() * o.size as f64 / entry as f64
        };
        let (floor_bw, floor_bw_cpu, floor_bw_counters) = {
            let q = queue_spec(Op::Write, entry, Length::Iters(bw_entries), c.tx_depth, 0);
            let mut fp = Pair::connect(&p.a, &p.b, &q)?;
            let counters0 = ccm_bench::cpu::device_counters();
            let (r, cpu) = CpuUse::during(|| {
                run_bandwidth(&mut fp, Op::Write, Length::Iters(bw_entries), c.tx_depth)
            });
            let counters =
                ccm_bench::cpu::counters_json(&counters0, &ccm_bench::cpu::device_counters());
            (r?, cpu, counters)
        };
        let (lat, peer_h) = peer_latency(&p, Op::Write, o.size, 1, &mut port)?;
        // ib_write_bw's CPU use includes both processes' start and connection set-up.
        let mut pc_bw = pc.clone();
        pc_bw.iters = Some(bw_entries);
        let (bw, bw_cpu) =
            CpuUse::during(|| peer_bandwidth(&plan(&pc_bw, true), Op::Write, o.size, 1, &mut port));
        let bw = bw?;
        let s = stats::summarize(&o.latency);
        let sp = stats::summarize(&o.latency_spin);
        let color = plot::PALETTE[i % plot::PALETTE.len()].to_string();
        curves.push(plot::Series {
            label: format!("mirror {} B", o.size),
            color: color.clone(),
            dashed: false,
            points: plot::percentile_points(&o.latency),
        });
        if let Some(h) = &peer_h {
            curves.push(plot::Series {
                label: format!("ib_write_lat {} B", o.size),
                color,
                dashed: true,
                points: plot::percentile_points(h),
            });
        }
        // Our record (the same as `ccm-bench mirror --json`), then the peer, the floors and the ratios.
        let at = mirror_bench::Placement {
            interconnect: *link,
            device: &p.a.device,
            peer_device: &p.b.device,
        };
        let mut v = mirror_bench::record(o, &at, iters, ours.moves, c.tx_depth as u64);
        v["think_us"] = c.think_us.into();
        v["ring_bytes"] = (c.ring_mib << 20).into();
        v["peer"] = serde_json::json!({
            "tool": "ib_write_lat (one-way = RTT/2) + ib_write_bw",
            "p50_us": lat.p50_us, "p90_us": lat.p90_us, "p99_us": lat.p99_us, "p999_us": lat.p999_us,
            "max_us": lat.max_us, "samples": lat.samples,
            "mb_per_s": bw.mb_per_s, "messages": bw.messages,
            "cpu_during_bw_with_setup": bw_cpu.map(|u| u.json()),
        });
        v["floor_bw"] = serde_json::json!({
            "tool": "ccm-bench raw verbs: RDMA WRITE stream of the entry's ring bytes, same window",
            "bytes": entry, "mb_per_s": floor_bw.mb_per_s(),
            "payload_mb_per_s": floor_bw_payload(&floor_bw),
            "cpu": floor_bw_cpu.map(|u| u.json()),
            "device_counters": floor_bw_counters,
        });
        v["floor"] = serde_json::json!({
            "tool": "ccm-bench raw verbs: signalled RDMA WRITE posted -> completion polled",
            "p50_us": f.p50_us, "p90_us": f.p90_us, "p99_us": f.p99_us, "p999_us": f.p999_us,
            "max_us": f.max_us, "samples": f.samples,
        });
        v["stages_p50_us"]["unpark_probe"] = unpark_us.into();
        v["stages_p50_us"]["notify_probe"] = notify_us.into();
        v["stages_p50_us"]["clock_read_probe"] = clock_us.into();
        for (key, ratio) in [
            ("ratio_p50", report::ratio(s.p50_us, lat.p50_us)),
            ("ratio_p99", report::ratio(s.p99_us, lat.p99_us)),
            ("ratio_floor_p50", report::ratio(s.p50_us, f.p50_us)),
            ("ratio_floor_p99", report::ratio(s.p99_us, f.p99_us)),
            ("ratio_spin_floor_p50", report::ratio(sp.p50_us, f.p50_us)),
            ("ratio_spin_floor_p99", report::ratio(sp.p99_us, f.p99_us)),
            ("ratio_bw", report::ratio(o.mb_per_s, bw.mb_per_s)),
            (
                "ratio_floor_bw",
                report::ratio(o.mb_per_s, floor_bw_payload(&floor_bw)),
            ),
        ] {
            v[key] = ratio.into();
        }
        if let Some(h) = &o.beside {
            floors.push(("floor_entry_nodes_up", stats::summarize(h)));
        }
        for (name, fl) in &floors {
            v[*name] = serde_json::json!({
                "p50_us": fl.p50_us, "p90_us": fl.p90_us, "p99_us": fl.p99_us, "p999_us": fl.p999_us,
                "max_us": fl.max_us, "samples": fl.samples,
            });
            v[format!("ratio_{name}_p50")] = report::ratio(s.p50_us, fl.p50_us).into();
        }
        if c.json {
            println!("{v}");
        } else {
            println!(
                "mirror size={} iters={} think={} us on {}<->{} (ours: append -> durable; peer: ib_write_lat one-way, ib_write_bw)\n  \
                 {:<26} {:>9} {:>9} {:>9} {:>9} {:>10}\n  \
                 {:<26} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2}\n  \
                 {:<26} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2}\n  \
                 {:<26} {:>9.3} {:>9} {:>9.3} {:>9} {:>10.3}\n  \
                 {:<26} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n  \
                 {:<26} {:>9.3} {:>9} {:>9.3}\n  \
                 {:<26} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n  \
                 stages p50 us (spinning waiter): append {:.1}, hand-off+post {:.1}, completion {:.1}, total {:.1}\n",
                o.size, iters, c.think_us, p.a.device, p.b.device,
                "", "p50 us", "p90 us", "p99 us", "p99.9 us", "MB/s",
                "ccm nvram mirror", s.p50_us, s.p90_us, s.p99_us, s.p999_us, o.mb_per_s,
                "ib_write_lat/ib_write_bw", lat.p50_us, lat.p90_us.unwrap_or(f64::NAN), lat.p99_us, lat.p999_us, bw.mb_per_s,
                "ratio (ours/peer)", report::ratio(s.p50_us, lat.p50_us), "", report::ratio(s.p99_us, lat.p99_us), "",
                report::ratio(o.mb_per_s, bw.mb_per_s),
                "floor: WRITE -> completion", f.p50_us, f.p90_us, f.p99_us, f.p999_us,
                "ratio (ours/floor)", report::ratio(s.p50_us, f.p50_us), "", report::ratio(s.p99_us, f.p99_us),
                "ccm mirror, set_spin", sp.p50_us, sp.p90_us, sp.p99_us, sp.p999_us,
                o.stages.append_us, o.stages.handoff_post_us, o.stages.completion_us, o.stages.total_us,
            );
            for (name, fl) in &floors {
                println!(
                    "  {name} ({entry} B): p50 {:.2} us, p99 {:.2} us",
                    fl.p50_us, fl.p99_us
                );
            }
            let cpu = |u: Option<ccm_bench::cpu::CpuUse>| {
                u.map_or("?".to_string(), |u| {
                    format!(
                        "user {:.2}, system {:.2}, irq {:.2}, idle {:.2} of {} CPUs",
                        u.user, u.system, u.irq, u.idle, u.cpus
                    )
                })
            };
            println!(
                "  throughput, {bw_entries} entries: ours {:.2} MB/s, raw WRITE stream of {entry} B {:.2} MB/s of \
                 payload (ratio {:.3})\n  CPU during ours: {}\n  CPU during the raw stream: {}",
                o.mb_per_s,
                floor_bw_payload(&floor_bw),
                report::ratio(o.mb_per_s, floor_bw_payload(&floor_bw)),
                cpu(o.cpu),
                cpu(floor_bw_cpu)
            );
        }
    }
    if let Some(path) = &c.plot {
        write_plot(
            path,
            &plot::percentile_chart(
                "NVRAM mirror append -> durable (solid) vs ib_write_lat one-way (dashed)",
                &curves,
            ),
        )?;
    }
    Ok(())
}

/// The two sides of the bring-up benchmarks (`-d`, `--peer-dev` and their addresses).
struct BringupSides {
    p: Plan,
    a_ip: IpAddr,
    b_ip: IpAddr,
    na: ccm_vi::Nic,
    nb: ccm_vi::Nic,
}

fn bringup_sides(c: &Common) -> AnyResult<BringupSides> {
    let p = plan(c, false);
    let (a_ip, b_ip) = match (p.a.gid_ip, p.b.gid_ip) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("bringup needs the devices' addresses (-x, --peer-gid-ip)".into()),
    };
    let na = ccm_vi::Nic::open(&p.a.device, 1, a_ip, 0)?;
    let nb = ccm_vi::Nic::open(&p.b.device, 1, b_ip, 0)?;
    Ok(BringupSides {
        p,
        a_ip,
        b_ip,
        na,
        nb,
    })
}

/// `ccm-bench bringup`: our slam connect alone, per number of connections and repetition (and the
/// medians when repeated).
fn bringup(c: &Common) -> AnyResult<()> {
    let BringupSides { p, na, nb, .. } = bringup_sides(c)?;
    // Per number of connections: (ms, connect ms) of every repetition.
    let mut all: Vec<Vec<(f64, f64)>> = vec![Vec::new(); c.vis.len()];
    for rep in 1..=c.reps {
        for (k, &n) in c.vis.iter().enumerate() {
            let ours = bringup::run_slam(&na, &nb, n)?;
            all[k].push((ours.total_ms(), ours.connect_ms));
            if c.json {
                println!(
                    "{}",
                    bringup::record(n, rep, &p.a.device, &p.b.device, &ours)
                );
            } else {
                println!(
                    "bringup vis={n} rep={rep} {}<->{}\n  ours (slam):    {}\n",
                    p.a.device,
                    p.b.device,
                    ours.line()
                );
            }
        }
    }
    if c.reps > 1 {
        for (k, &n) in c.vis.iter().enumerate() {
            let med = |f: fn(&(f64, f64)) -> f64| {
                let v: Vec<f64> = all[k].iter().map(f).collect();
                failover::quantile(&v, 0.5).unwrap_or(f64::NAN)
            };
            let (o, oc) = (med(|r| r.0), med(|r| r.1));
            if c.json {
                let v = bringup::median_record(n, c.reps, &p.a.device, &p.b.device, o, oc);
                println!("{v}");
            } else {
                println!(
                    "bringup vis={n} median of {} reps: ours {o:.2} ms (connect {oc:.2})",
                    c.reps
                );
            }
        }
    }
    Ok(())
}

fn compare_bringup(c: &Common) -> AnyResult<()> {
    lab("ccm-bench compare bringup")?; // cmtime and the devices are in the lab guest only
    let BringupSides {
        p,
        a_ip,
        b_ip,
        na,
        nb,
    } = bringup_sides(c)?;
    let mut port = c.port;
    // Per number of connections: (ours ms, ours connect ms, peer ms, peer connect ms) of every repetition.
    let mut all: Vec<Vec<[f64; 4]>> = vec![Vec::new(); c.vis.len()];
    for rep in 1..=c.reps {
        for (k, &n) in c.vis.iter().enumerate() {
            let run_peer = |port: &mut u16| {
                let r = bringup::run_cmtime(b_ip, a_ip, n, *port);
                *port = port.wrapping_add(1).max(1024);
                r
            };
            let (ours, (peer, raw)) = if rep % 2 == 1 {
                let o = bringup::run_slam(&na, &nb, n)?;
                (o, run_peer(&mut port)?)
            } else {
                let q = run_peer(&mut port)?;
                (bringup::run_slam(&na, &nb, n)?, q)
            };
            if let Some(dir) = &c.hgrm {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("peer-cmtime-{n}-rep{rep}.txt")), &raw)?;
            }
            let peer_ms = peer.setup_ms().ok_or("cmtime printed no setup steps")?;
            let peer_connect = peer
                .total_ms("connect")
                .ok_or("cmtime printed no connect step")?;
            all[k].push([ours.total_ms(), ours.connect_ms, peer_ms, peer_connect]);
            let mut v = bringup::record(n, rep, &p.a.device, &p.b.device, &ours);
            v["peer"] = serde_json::json!({
                "tool": "cmtime (rdma_cm)",
                "ms": peer_ms,
                "connect_ms": peer_connect,
                "steps": peer.steps,
            });
            v["ratio"] = report::ratio(ours.total_ms(), peer_ms).into();
            v["ratio_connect"] = report::ratio(ours.connect_ms, peer_connect).into();
            if c.json {
                println!("{v}");
            } else {
                println!(
                    "bringup vis={n} rep={rep} {}<->{}\n  ours (slam):    {}\n  \
                     peer (cmtime):  {:>9.2} ms  (connect {:.2})\n  ratio:          {:>9.3}    (connect {:.3})\n",
                    p.a.device, p.b.device, ours.line(),
                    peer_ms, peer_connect, report::ratio(ours.total_ms(), peer_ms), report::ratio(ours.connect_ms, peer_connect)
                );
            }
        }
    }
    if c.reps > 1 {
        for (k, &n) in c.vis.iter().enumerate() {
            let med = |i: usize| {
                let v: Vec<f64> = all[k].iter().map(|r| r[i]).collect();
                failover::quantile(&v, 0.5).unwrap_or(f64::NAN)
            };
            let (o, oc, q, qc) = (med(0), med(1), med(2), med(3));
            let mut v = bringup::median_record(n, c.reps, &p.a.device, &p.b.device, o, oc);
            v["peer"] =
                serde_json::json!({ "tool": "cmtime (rdma_cm)", "ms": q, "connect_ms": qc });
            v["ratio"] = report::ratio(o, q).into();
            v["ratio_connect"] = report::ratio(oc, qc).into();
            if c.json {
                println!("{v}");
            } else {
                println!(
                    "bringup vis={n} median of {} reps: ours {o:.2} ms (connect {oc:.2}), cmtime {q:.2} ms (connect {qc:.2}), \
                     ratio {:.3} (connect {:.3})",
                    c.reps,
                    report::ratio(o, q),
                    report::ratio(oc, qc)
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Failover(a) = cli.cmd {
        return failover(a).unwrap_or_else(|e| {
            eprintln!("ccm-bench: {e}");
            ExitCode::FAILURE
        });
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(args).map(|c| c.cmd).unwrap()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mirror_is_a_subcommand_of_its_own_with_the_perftest_style_flags() {
        let Cmd::Mirror(c) = parse(&[
            "ccm-bench",
            "mirror",
            "-s",
            "64,4096",
            "-n",
            "500",
            "--json",
            "--hgrm",
            "out",
        ]) else {
            panic!("not mirror");
        };
        assert_eq!(c.size, [64, 4096]);
        assert_eq!(mirror_iters(&c), 500);
        assert!(c.json);
        assert_eq!(c.hgrm.as_deref(), Some(std::path::Path::new("out")));
        let Cmd::Mirror(c) = parse(&["ccm-bench", "mirror"]) else {
            panic!("not mirror");
        };
        assert!(
            c.size.is_empty() && !c.json,
            "sizes default to MIRROR_SIZES"
        );
        assert_eq!(mirror_iters(&c), 1000);
        assert_eq!(think(&c), Duration::ZERO, "back to back unless asked");
        let Cmd::Compare { common: c, .. } =
            parse(&["ccm-bench", "compare", "mirror", "--think-us", "30"])
        else {
            panic!("not compare");
        };
        assert_eq!(think(&c), Duration::from_micros(30));
    }

    #[test]
    fn the_mirror_ring_is_16_mib_unless_asked_and_out_of_range_sizes_are_refused() {
        let Cmd::Mirror(c) = parse(&["ccm-bench", "mirror"]) else {
            panic!("not mirror");
        };
        assert_eq!(c.ring_mib, 16);
        let Cmd::Compare { common: c, .. } =
            parse(&["ccm-bench", "compare", "mirror", "--ring-mib", "64"])
        else {
            panic!("not compare");
        };
        assert_eq!(c.ring_mib, 64);
        for bad in ["0", "257", "-1", "x"] {
            let arg = format!("--ring-mib={bad}");
            let Err(e) = Cli::try_parse_from(["ccm-bench", "mirror", arg.as_str()]) else {
                panic!("--ring-mib {bad} accepted");
            };
            assert!(e.to_string().contains("--ring-mib"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_duration_is_refused_where_only_counts_make_sense() {
        let Cmd::Mirror(c) = parse(&["ccm-bench", "mirror", "-D", "5"]) else {
            panic!("not mirror");
        };
        let Err(e) = counted(c, "mirror") else {
            panic!("-D accepted by mirror");
        };
        assert!(e.to_string().contains("-D/--duration"), "{e}");
        let Cmd::Bringup(c) = parse(&["ccm-bench", "bringup"]) else {
            panic!("not bringup");
        };
        assert!(counted(c, "bringup").is_ok());
    }

    #[test]
    fn bringup_is_a_subcommand_of_its_own_also_spelled_bring_up() {
        for name in ["bringup", "bring-up"] {
            let Cmd::Bringup(c) = parse(&["ccm-bench", name, "--vis", "1,16", "--reps", "3"])
            else {
                panic!("{name} is not bringup");
            };
            assert_eq!(c.vis, [1, 16]);
            assert_eq!(c.reps, 3);
        }
        let Cmd::Bringup(c) = parse(&["ccm-bench", "bringup"]) else {
            panic!("not bringup");
        };
        assert_eq!(c.vis, [1, 16, 64]);
    }

    #[test]
    fn the_stable_compare_and_failover_names_still_parse() {
        for (what, want) in [
            ("latency", "latency"),
            ("bandwidth", "bandwidth"),
            ("bringup", "bringup"),
            ("mirror", "mirror"),
        ] {
            let Cmd::Compare { what: w, .. } = parse(&["ccm-bench", "compare", what]) else {
                panic!("compare {what}");
            };
            let got = match w {
                What::Latency => "latency",
                What::Bandwidth => "bandwidth",
                What::Bringup => "bringup",
                What::Mirror => "mirror",
            };
            assert_eq!(got, want);
        }
        assert!(matches!(
            parse(&["ccm-bench", "failover", "--json"]),
            Cmd::Failover(FailoverArgs { json: true, .. })
        ));
    }
}
