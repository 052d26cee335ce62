//! `ccm`: run a node of the cluster connection manager, or look at running nodes.
//!
//! ```text
//! ccm node --config node-a.toml                  # manager + configured clients; logs with RUST_LOG=ccm=info
//! ccm status --socket /run/ccm-a.sock [--json] [--clients]
//! ccm wait-ready --socket S --timeout-ms 5000    # exit 0 once every client of the node is Ready
//! ccm where --socket S --client nvram-mirror     # the interconnect a client is connected on
//! ccm summary --a SOCK_A --b SOCK_B              # the demo's closing table; exit 1 if anything was lost
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_core::clients::counter::{self, CounterStats};
use ccm_core::clients::monitor;
use ccm_core::clients::nvram;
use ccm_core::manager::ClientSpec;
use ccm_core::node::config::{ClientKind, ConfigError, NodeConfig};
use ccm_core::node::{status, EarlyDevices, Node};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "ccm", about = "Cluster connection manager over RDMA")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: the manager and the clients of the configuration file.
    Node {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        run_for: Option<f64>,
    },
    /// Show a running node's interconnects, clients, partner and recent events.
    Status {
        /// The node's status socket (`status_socket` in its configuration).
        #[arg(long)]
        socket: PathBuf,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also show each client's own counters.
        #[arg(long)]
        clients: bool,
    },
    /// Wait until every client of a node is Ready (exit 1 on timeout).
    WaitReady {
        /// The node's status socket.
        #[arg(long)]
        socket: PathBuf,
        /// How long to wait.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Print the interconnect a client is connected on.
    Where {
        /// The node's status socket.
        #[arg(long)]
        socket: PathBuf,
        /// The client's name.
        #[arg(long)]
        client: String,
    },
    /// Compare the two nodes after a run: entries mirrored, lost, duplicated, failover gaps, latency.
    Summary {
        /// Node A's status socket (the writer).
        #[arg(long)]
        a: PathBuf,
        /// Node B's status socket (holds A's mirror).
        #[arg(long)]
        b: PathBuf,
    },
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// How long before `main()` the process started (exec, dynamic linking, Rust's runtime set-up), from
/// the kernel's start time of the process: `/proc/self/stat` counts in clock ticks (10 ms), so
/// this is good to a tick. `None` where it cannot be read.
fn before_main(boot_at_main: Duration) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 (starttime); the fields after the command name, which ends with the last ')', start at 3.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()?;
    // USER_HZ, the unit of /proc's clock ticks: 100 on every Linux architecture ccm runs on.
    let start = Duration::from_millis(ticks * 10);
    Some(boot_at_main.checked_sub(start)?.as_secs_f64() * 1e3)
}

fn main() -> ExitCode {
    let started = Instant::now();
    let boot_at_main = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default();
    // Wall clock at `main()`, logged so that a launcher that noted the time before its exec can tell
    // how long the process took to reach `main()` (scripts/lab/bringup-bench does).
    let unix_at_main = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // `ccm node`: the first device list loads the verbs provider (tens of ms in the emulated lab). It
    // needs nothing from the configuration, so it is made now, on a thread of its own, while arguments,
    // logging and the configuration are set up; the node opens its devices from it.
    let early = std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "node")
        .then(|| EarlyDevices::list(started));
    // Its configuration likewise: read and parsed on a thread of its own while logging is set up (the
    // TOML parser's first run is 20-50 ms of code translation in the lab's emulated guest).
    let node_cmd = node_args(std::env::args_os());
    let early_config = match &node_cmd {
        Some(Cmd::Node { config, .. }) => Some(EarlyConfig::read(config.clone(), started)),
        _ => None,
    };
    // `Targets` rather than `EnvFilter`: same RUST_LOG syntax for what ccm needs ("ccm=info"), without
    // compiling regexes at start-up (about 100 ms in the software-emulated lab guest).
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN)
        });
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .with(filter)
            .init();
    }
    let logging = ms_since(started);
    let cmd = match node_cmd {
        Some(node) => node,
        None => Cli::parse().cmd,
    };
    let parsed = ms_since(started);
    let result = match cmd {
        Cmd::Node { config, run_for } => run_node(
            &config,
            run_for,
            started,
            [logging, parsed],
            (boot_at_main, unix_at_main),
            early,
            early_config,
        ),
        Cmd::Status {
            socket,
            json,
            clients,
        } => show_status(&socket, json, clients),
        Cmd::WaitReady { socket, timeout_ms } => {
            wait_ready(&socket, Duration::from_millis(timeout_ms))
        }
        Cmd::Where { socket, client } => where_is(&socket, &client),
        Cmd::Summary { a, b } => summary(&a, &b),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ccm: {e}");
            ExitCode::from(2)
        }
    }
}

/// `ccm node --config PATH [--run-for SECS]`, read without clap; anything else (other spellings,
/// `--help`, errors) returns `None` and goes to clap. Building clap's command tree is the largest piece
/// of code a node ran before its first heartbeat: in the emulated lab, where a new process's code is
/// translated on first use, about 100 ms of the start-up.
fn node_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<Cmd> {
    let mut args = args.into_iter().skip(1);
    if args.next()? != "node" {
        return None;
    }
    let (mut config, mut run_for) = (None, None);
    while let Some(a) = args.next() {
        if a == "--config" && config.is_none() {
            config = Some(PathBuf::from(args.next()?));
        } else if a == "--run-for" && run_for.is_none() {
            run_for = Some(args.next()?.to_str()?.parse::<f64>().ok()?);
        } else {
            return None;
        }
    }
    Some(Cmd::Node {
        config: config?,
        run_for,
    })
}

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// A node's configuration being read on a thread of its own from the start of `main()`: the result,
/// and from when to when it was read (ms since `main()`).
struct EarlyConfig(std::thread::JoinHandle<(Result<NodeConfig, ConfigError>, f64, f64)>);

impl EarlyConfig {
    fn read(path: PathBuf, started: Instant) -> EarlyConfig {
        EarlyConfig(std::thread::spawn(move || {
            let from = ms_since(started);
            (NodeConfig::load(&path), from, ms_since(started))
        }))
    }
}
type Detail = Box<dyn Fn() -> Value + Send + Sync>;

/// `marks`: when logging was set up and the arguments parsed, in ms since `main()`.
/// `at_main`: CLOCK_BOOTTIME (for [`before_main`]) and the wall clock when `main()` began.
fn run_node(
    path: &Path,
    run_for: Option<f64>,
    started: Instant,
    marks: [f64; 2],
    (boot_at_main, unix_at_main): (Duration, Duration),
    early: Option<EarlyDevices>,
    early_config: Option<EarlyConfig>,
) -> Res {
    tracing::info!(target: "ccm::node", at_ms = ms_since(started), main_unix_ns = unix_at_main.as_nanos() as u64, "process started (logging set up at {:.2} ms, arguments parsed at {:.2} ms), reading {}", marks[0], marks[1], path.display());
    let (cfg, from, to) = match early_config.map(|e| e.0.join()) {
        Some(Ok(read)) => read,
        _ => {
            let from = ms_since(started);
            (NodeConfig::load(path), from, ms_since(started))
        }
    };
    let cfg = cfg?;
    tracing::info!(target: "ccm::node", at_ms = ms_since(started), "configuration read in {:.2} ms (from {from:.2} ms)", to - from);
    let socket = cfg.status_socket.clone();
    let clients = cfg.clients.clone();
    let node = Node::start_listed(cfg, started, early)?;
    if let Some(before) = before_main(boot_at_main) {
        tracing::info!(target: "ccm::node", at_ms = ms_since(started), "the process started {before:.0} ms before main() (to a clock tick; at_ms counts from main())");
    }
    let handle = node.handle();
    // The manager's bring-up goes first: the configured clients register once the first heartbeat was
    // exchanged, or after `CLIENTS_AFTER` at the latest (partner or not). None of them can be Ready
    // before an interconnect is up anyway, and on the lab's two vCPUs their registration and threads
    // competed with the handshake for the CPU.
    handle.wait_first_heartbeat(CLIENTS_AFTER);
    tracing::info!(target: "ccm::node", at_ms = ms_since(started), "registering {} clients", clients.len());
    let mut details: Vec<Detail> = Vec::new();
    let mut mirrors = Vec::new();
    for c in clients {
        let spec = ClientSpec {
            id: c.id,
            name: c.name.clone(),
            class: c.class,
            vi_count: 1,
            pinned: c.pin,
            private: Vec::new(),
        };
        let name = c.name.clone();
        match c.kind {
            ClientKind::Counter { period } => {
                let client = handle.register(spec, Vec::new())?;
                let stats = Arc::new(CounterStats::default());
                let s = stats.clone();
                std::thread::Builder::new()
                    .name(format!("client-{name}"))
                    .spawn(move || counter::run(client, period, s))?;
                details.push(Box::new(move || {
                    json!({
                        "name": name, "kind": "counter",
                        "sent": stats.sent.load(Ordering::Relaxed),
                        "received": stats.received.load(Ordering::Relaxed),
                        "max_gap_us": stats.max_gap_us.load(Ordering::Relaxed),
                        "stops": stats.stops.load(Ordering::Relaxed),
                    })
                }));
            }
            ClientKind::Monitor => {
                let monitor::Monitor { view, decisions } =
                    monitor::start(&handle, spec, Duration::from_millis(10))?;
                std::thread::spawn(move || {
                    for d in decisions {
                        tracing::warn!(target: "ccm::monitor", "failover monitor: {d:?}");
                    }
                });
                details.push(Box::new(move || {
                    let v = view.lock().expect("monitor view");
                    json!({
                        "name": name, "kind": "monitor",
                        "partner": format!("{:?}", v.state),
                        "heartbeats_received": v.heartbeats_received,
                        "partner_down_decisions": v.history.iter().filter(|(_, s, _)| matches!(s, monitor::PartnerState::Down { .. })).count(),
                        "detection": v.detection.map(|d| format!("{d:?}")),
                        "history": v.history.iter().map(|(t, s, ic)| format!("{:.1} ms {:?} on {:?}", t.as_secs_f64() * 1e3, s, ic)).collect::<Vec<_>>(),
                    })
                }));
            }
            ClientKind::Mirror {
                path,
                bytes,
                load_per_sec,
                load_ms,
                entry_bytes,
            } => {
                let mirror = Arc::new(nvram::start(&handle, spec, &path, bytes)?);
                let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
                    1, 60_000_000, 3,
                )?));
                let rejected = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let stalls: Arc<Mutex<Vec<f64>>> = Arc::default();
                if load_per_sec > 0 {
                    let (m, lat, rej) = (mirror.clone(), latency.clone(), rejected.clone());
                    let st = stalls.clone();
                    std::thread::Builder::new()
                        .name(format!("writer-{name}"))
                        .spawn(move || {
                            write_load(
                                &m,
                                load_per_sec,
                                Duration::from_millis(load_ms),
                                entry_bytes,
                                &lat,
                                &rej,
                                &st,
                            )
                        })?;
                }
                let m = mirror.clone();
                mirrors.push(mirror);
                details.push(Box::new(move || {
                    let s = m.stats();
                    let h = latency.lock().expect("histogram");
                    json!({
                        "name": name, "kind": "mirror",
                        "link": m.link().map(|l| l.0),
                        "appended": s.appended, "durable": s.durable,
                        "partner_applied": s.partner_applied, "partner_entries": s.partner_entries,
                        "batches": s.batches, "resent_batches": s.resent_batches,
                        "stops": s.stops, "vi_errors": s.vi_errors, "protocol_errors": s.protocol_errors,
                        "fault": m.fault().map(|f| f.to_string()),
                        "ring_full_rejections": rejected.load(Ordering::Relaxed),
                        "local_digest": m.local_digest().0, "mirror_digest": m.mirror_digest().0,
                        "latency_us": { "samples": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                            "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max() },
                        "stalls_ms": stalls.lock().expect("stalls").clone(),
                    })
                }));
            }
        }
    }
    status::serve(&socket, handle.clone(), move || {
        Value::Array(details.iter().map(|d| d()).collect())
    })?;
    match run_for {
        Some(secs) => std::thread::sleep(Duration::from_secs_f64(secs)),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600))
        },
    }
    handle.shutdown();
    node.join();
    let _ = std::fs::remove_file(&socket);
    Ok(ExitCode::SUCCESS)
}

/// How long `ccm node` holds its clients back for the first heartbeat at most (see `run_node`).
const CLIENTS_AFTER: Duration = Duration::from_secs(1);

/// Append-to-durable waits at least this long are listed as stalls (the gaps failovers leave).
const STALL_US: u64 = 20_000;

/// The built-in writer: appends `per_sec` entries a second for `seconds` once the mirror is ready, each
/// waited for until durable (a storage engine acknowledging a write only once it is mirrored), and
/// records append-to-durable latency.
fn write_load(
    m: &nvram::Mirror,
    per_sec: u32,
    run: Duration,
    entry_bytes: usize,
    latency: &Mutex<Histogram<u64>>,
    rejected: &std::sync::atomic::AtomicU64,
    stalls: &Mutex<Vec<f64>>,
) {
    while m.link().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let period = Duration::from_secs_f64(1.0 / per_sec as f64);
    let end = Instant::now() + run;
    let mut payload = vec![0u8; entry_bytes];
    let mut next = Instant::now();
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (n as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        let t = Instant::now();
        match m.append(&payload) {
            Ok(lsn) => {
                if m.wait_durable(lsn, Duration::from_secs(30)) {
                    let us = t.elapsed().as_micros().max(1) as u64;
                    let _ = latency.lock().expect("histogram").record(us);
                    // An entry that waited this long sat out a failover or failback: its wait is the gap.
                    if us >= STALL_US {
                        stalls.lock().expect("stalls").push(us as f64 / 1000.0);
                    }
                }
            }
            Err(_) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn fetch(socket: &Path) -> Result<Value, Box<dyn std::error::Error>> {
    status::fetch(socket)
        .map_err(|e| format!("cannot reach the node at {}: {e}", socket.display()).into())
}

fn show_status(socket: &Path, json: bool, clients: bool) -> Res {
    let v = fetch(socket)?;
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let s: status::NodeStatus = serde_json::from_value(v.clone())?;
    print!("{}", s.table());
    if clients {
        println!("\nCLIENT DETAIL");
        for d in v["clients_detail"].as_array().into_iter().flatten() {
            println!("  {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn wait_ready(socket: &Path, timeout: Duration) -> Res {
    let t = Instant::now();
    loop {
        if let Ok(v) = status::fetch(socket) {
            if let Ok(s) = serde_json::from_value::<status::NodeStatus>(v) {
                if !s.clients.is_empty() && s.clients.iter().all(|c| c.state.starts_with("Ready")) {
                    println!("ready after {:.1} ms of node uptime", s.uptime_ms);
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if t.elapsed() >= timeout {
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn where_is(socket: &Path, client: &str) -> Res {
    let s: status::NodeStatus = serde_json::from_value(fetch(socket)?)?;
    for i in &s.interconnects {
        if i.clients.iter().any(|c| c == client) {
            println!("{}", i.id);
            return Ok(ExitCode::SUCCESS);
        }
    }
    Err(format!("client {client:?} is not connected on any interconnect").into())
}

fn detail<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["clients_detail"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == kind)
}

/// Both nodes' status once the writer has finished and the partner applied everything (bounded wait).
fn settled(a: &Path, b: &Path) -> Result<(Value, Value), Box<dyn std::error::Error>> {
    let t = Instant::now();
    Ok(loop {
        let (va, vb) = (fetch(a)?, fetch(b)?);
        let (ma, mb) = (detail(&va, "mirror"), detail(&vb, "mirror"));
        let done = match (ma, mb) {
            (Some(ma), Some(mb)) => {
                ma["appended"] == ma["durable"] && mb["partner_applied"] == ma["appended"]
            }
            _ => true,
        };
        if done || t.elapsed() > Duration::from_secs(30) {
            break (va, vb);
        }
        std::thread::sleep(Duration::from_millis(100));
    })
}

fn summary(a: &Path, b: &Path) -> Res {
    let (va, vb) = settled(a, b)?;
    let mut ok = true;
    println!("SUMMARY (node A = writer, node B = holds A's mirror)");
    if let (Some(ma), Some(mb)) = (detail(&va, "mirror"), detail(&vb, "mirror")) {
        let appended = ma["appended"].as_u64().unwrap_or(0);
        let durable = ma["durable"].as_u64().unwrap_or(0);
        let applied = mb["partner_applied"].as_u64().unwrap_or(0);
        let entries = mb["partner_entries"].as_u64().unwrap_or(0);
        let lost = durable.saturating_sub(applied);
        let duplicated = entries.saturating_sub(applied);
        let same = ma["local_digest"] == mb["mirror_digest"];
        ok &= lost == 0 && duplicated == 0 && same && durable == appended;
        let l = &ma["latency_us"];
        println!("  NVRAM entries appended on A      {appended}");
        println!("  acknowledged (durable on B)      {durable}");
        println!("  applied by B, in order, once     {applied} (entries applied: {entries})");
        println!("  lost                             {lost}");
        println!("  duplicated                       {duplicated}");
        println!(
            "  log checksum A / mirror on B     {:08x} / {:08x} {}",
            ma["local_digest"].as_u64().unwrap_or(0),
            mb["mirror_digest"].as_u64().unwrap_or(0),
            if same { "(equal)" } else { "(DIFFERENT)" }
        );
        println!(
            "  re-sent batches after failover   {}",
            ma["resent_batches"]
        );
        println!(
            "  append->durable latency (us)     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["samples"]
        );
    }
    if let Some(cb) = detail(&vb, "counter") {
        println!(
            "  counter stream A->B: received {}, stops {}, longest gap between two messages {:.1} ms",
            cb["received"],
            cb["stops"],
            cb["max_gap_us"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    for (side, v) in [("A", &va), ("B", &vb)] {
        if let Some(m) = detail(v, "monitor") {
            let downs = m["partner_down_decisions"].as_u64().unwrap_or(0);
            ok &= downs == 0;
            println!(
                "  failover monitor on {side}: partner {} , PartnerDown decisions {downs}, detection against the partner's {}",
                m["partner"], m["detection"]
            );
        }
    }
    println!(
        "  result: {}",
        if ok {
            "OK: nothing lost, nothing duplicated, no needless takeover"
        } else {
            "FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clap_node(argv: &[&str]) -> Option<(PathBuf, Option<f64>)> {
        match Cli::try_parse_from(argv).ok()?.cmd {
            Cmd::Node { config, run_for } => Some((config, run_for)),
            _ => None,
        }
    }

    fn fast_node(argv: &[&str]) -> Option<(PathBuf, Option<f64>)> {
        match node_args(argv.iter().map(std::ffi::OsString::from))? {
            Cmd::Node { config, run_for } => Some((config, run_for)),
            _ => None,
        }
    }

    #[test]
    fn the_node_fast_path_reads_what_clap_reads_and_leaves_everything_else_to_clap() {
        for argv in [
            &["ccm", "node", "--config", "a.toml"][..],
            &["ccm", "node", "--config", "a.toml", "--run-for", "2.5"],
            &["ccm", "node", "--run-for", "0", "--config", "/x/b.toml"],
        ] {
            assert_eq!(fast_node(argv), clap_node(argv), "{argv:?}");
            assert!(fast_node(argv).is_some(), "{argv:?}");
        }
        // Other spellings, help, mistakes and other commands are clap's.
        for argv in [
            &["ccm", "node", "--config=a.toml"][..],
            &["ccm", "node", "--help"],
            &["ccm", "node"],
            &["ccm", "node", "--config"],
            &["ccm", "node", "--config", "a", "--config", "b"],
            &["ccm", "node", "--config", "a", "--run-for", "soon"],
            &["ccm", "node", "--config", "a", "extra"],
            &["ccm", "status", "--socket", "s"],
            &["ccm"],
        ] {
            assert_eq!(fast_node(argv), None, "{argv:?}");
        }
    }
}
