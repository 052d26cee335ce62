//! `ccm`: run a node of the cluster connection manager, or show a running node's status.
//!
//! ```text
//! ccm node --config node-a.toml      # manager + configured clients; logs with RUST_LOG=ccm=info
//! ccm status --socket /run/ccm-a.sock [--json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_core::clients::counter::{self, CounterStats};
use ccm_core::manager::ClientSpec;
use ccm_core::node::config::{ClientKind, NodeConfig};
use ccm_core::node::{status, Node};
use clap::{Parser, Subcommand};

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
    },
}

fn main() -> ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Node { config, run_for } => match run_node(&config, run_for, started) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ccm node: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Status { socket, json } => match status::fetch(&socket) {
            Ok(v) if json => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Ok(v) => match serde_json::from_value::<status::NodeStatus>(v.clone()) {
                Ok(s) => {
                    print!("{}", s.table());
                    if let Some(d) = v.get("clients_detail").filter(|d| !d.is_null()) {
                        println!("\nCLIENT COUNTERS\n{d}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "ccm status: unreadable status from {}: {e}",
                        socket.display()
                    );
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprintln!(
                    "ccm status: cannot reach the node at {}: {e}",
                    socket.display()
                );
                ExitCode::from(2)
            }
        },
    }
}

fn run_node(
    path: &std::path::Path,
    run_for: Option<f64>,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = NodeConfig::load(path)?;
    let socket = cfg.status_socket.clone();
    let clients = cfg.clients.clone();
    let node = Node::start(cfg, started)?;
    let handle = node.handle();
    let details: Arc<Mutex<Vec<(String, Arc<CounterStats>)>>> = Arc::default();
    for c in clients {
        let spec = ClientSpec {
            id: c.id,
            name: c.name.clone(),
            class: c.class,
            vi_count: 1,
            pinned: c.pin,
        };
        match c.kind {
            ClientKind::Counter | ClientKind::Monitor | ClientKind::Mirror { .. } => {
                let client = handle.register(spec, Vec::new())?;
                let stats = Arc::new(CounterStats::default());
                details
                    .lock()
                    .expect("lock")
                    .push((c.name.clone(), stats.clone()));
                std::thread::Builder::new()
                    .name(format!("client-{}", c.name))
                    .spawn(move || counter::run(client, Duration::from_millis(1), stats))?;
            }
        }
    }
    let d = details.clone();
    status::serve(&socket, handle.clone(), move || {
        let d = d.lock().expect("lock");
        serde_json::Value::Array(
            d.iter()
                .map(|(name, s)| {
                    serde_json::json!({
                        "name": name,
                        "sent": s.sent.load(Ordering::Relaxed),
                        "received": s.received.load(Ordering::Relaxed),
                        "max_gap_us": s.max_gap_us.load(Ordering::Relaxed),
                        "stops": s.stops.load(Ordering::Relaxed),
                    })
                })
                .collect(),
        )
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
    Ok(())
}
