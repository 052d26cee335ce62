//! Two ccm nodes in one process on the lab's rxe devices (node 1 on every interconnect's A side, node 2 on
//! the B sides), each with an NVRAM mirror client: what `failover` and `compare mirror` measure.
//!
//! Both nodes take the same start instant, so the times of their recorded events
//! (`NodeStatus::events`, milliseconds since start) and the bench's own clock share one origin.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ccm_core::clients::nvram::{self, ApplyFn, Mirror};
use ccm_core::manager::ClientSpec;
use ccm_core::node::config::NodeConfig;
use ccm_core::node::Node;
use ccm_core::wire::{BandwidthClass, ClientId};
use ccm_verbs::lab::{LabTopology, Side};

/// Timings and sizes of a node pair.
#[derive(Clone, Debug)]
pub struct PairSpec {
    /// Heartbeat period.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before a link is failed.
    pub heartbeat_misses: u32,
    /// Health a failed link needs before clients fail back.
    pub hold_down_ms: u64,
    /// TCP port of the initial sessions.
    pub tcp_port: u16,
    /// Size of each mirror ring.
    pub ring_bytes: u64,
    /// The nodes' driver threads ask for SCHED_FIFO (the nodes' default).
    pub realtime: bool,
}

/// The mirror client both nodes register (High bandwidth class: a link of its own).
pub fn mirror_spec() -> ClientSpec {
    ClientSpec {
        id: ClientId(2),
        name: "nvram-mirror".into(),
        class: BandwidthClass::High,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    }
}

/// The cluster secret file of this process's pair.
fn secret_path() -> PathBuf {
    std::env::temp_dir().join(format!("ccm-bench-secret-{}", std::process::id()))
}

fn config(lab: &LabTopology, node: u64, s: &PairSpec) -> Result<NodeConfig, String> {
    let (me, other) = if node == 1 {
        (Side::A, Side::B)
    } else {
        (Side::B, Side::A)
    };
    let secret = secret_path();
    std::fs::write(&secret, "ccm-bench lab secret 0123456789abcdef").map_err(|e| e.to_string())?;
    let mut text = format!(
        "node = {node}\npartner = {partner}\ncluster = 9\nsecret_file = \"{secret}\"\n\
         status_socket = \"/tmp/ccm-bench-{pid}-{node}.sock\"\nrealtime = {rt}\n\
         [timing]\nheartbeat_ms = {hb}\nheartbeat_misses = {miss}\nconnect_ms = 200\nhandshake_ms = 1000\n\
         failback_hold_down_ms = {hold}\npartner_down_ms = {down}\n",
        partner = 3 - node,
        secret = secret.display(),
        pid = std::process::id(),
        rt = s.realtime,
        hb = s.heartbeat_ms,
        miss = s.heartbeat_misses,
        hold = s.hold_down_ms,
        // Longer than a link's detection, as the configuration requires.
        down = (s.heartbeat_ms * s.heartbeat_misses as u64 * 2).max(500),
    );
    for ic in &lab.interconnects {
        text += &format!(
            "[[interconnect]]\ndevice = \"{}\"\nlocal_ip = \"{}\"\npartner_ip = \"{}\"\ntcp_port = {}\n",
            ic.side(me).device,
            ic.side(me).ip,
            ic.side(other).ip,
            s.tcp_port
        );
    }
    NodeConfig::parse(&text).map_err(|e| format!("node {node} configuration: {e}"))
}

/// Two running nodes with a mirror each; node 1 (`a`) is the writer, node 2 (`b`) holds its mirror.
pub struct MirrorPair {
    /// The origin of both nodes' event times.
    pub started: Instant,
    /// Node 1's mirror (the writer's).
    pub a: Mirror,
    /// Node 2's mirror (applies node 1's log).
    pub b: Mirror,
    nodes: Vec<Node>,
    base: [PathBuf; 2],
}

impl MirrorPair {
    /// Starts both nodes and their mirrors (`apply_b` sees every entry of node 1's log applied on node 2)
    /// and waits up to `timeout` until both mirrors are synced.
    pub fn start(
        lab: &LabTopology,
        spec: &PairSpec,
        apply_b: ApplyFn,
        timeout: Duration,
    ) -> Result<MirrorPair, String> {
        let base = [1, 2].map(|n| {
            PathBuf::from(format!(
                "/dev/shm/ccm-bench-nvram-{}-{n}",
                std::process::id()
            ))
        });
        for b in &base {
            for f in nvram::ring_paths(b) {
                let _ = std::fs::remove_file(f);
            }
        }
        let started = Instant::now();
        let mut nodes = Vec::new();
        for n in [1, 2] {
            nodes.push(
                Node::start(config(lab, n, spec)?, started)
                    .map_err(|e| format!("node {n}: {e}"))?,
            );
        }
        let a = nvram::start(&nodes[0].handle(), mirror_spec(), &base[0], spec.ring_bytes)
            .map_err(|e| format!("mirror on node 1: {e}"))?;
        let b = nvram::start_with(
            &nodes[1].handle(),
            mirror_spec(),
            &base[1],
            spec.ring_bytes,
            apply_b,
        )
        .map_err(|e| format!("mirror on node 2: {e}"))?;
        let pair = MirrorPair {
            started,
            a,
            b,
            nodes,
            base,
        };
        let t = Instant::now();
        while !(pair.a.is_synced() && pair.b.is_synced()) {
            if t.elapsed() > timeout {
                return Err(format!("mirrors not synced within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(pair)
    }

    /// Waits (up to `timeout`) until every interconnect is Up on both nodes, then until the mirror stayed
    /// synced on one link for `stable` (the placement settled: a High client moves to a link of its own once
    /// one is up, after the failback hold-down). Returns that link.
    pub fn settle(&self, stable: Duration, timeout: Duration) -> Result<u8, String> {
        let t = Instant::now();
        let all_up = |i: usize| {
            let s = self.node(i).status();
            !s.interconnects.is_empty() && s.interconnects.iter().all(|l| l.state == "Up")
        };
        while !(all_up(0) && all_up(1)) {
            if t.elapsed() > timeout {
                return Err(format!(
                    "interconnects not all Up within {timeout:?}: {:?}",
                    self.node(0).status().interconnects
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut since = Instant::now();
        let mut link = self.a.link();
        loop {
            let now = self.a.link();
            if now != link || !self.a.is_synced() {
                link = now;
                since = Instant::now();
            } else if since.elapsed() >= stable {
                if let Some(l) = link {
                    return Ok(l.0);
                }
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "the mirror did not settle on a link within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Node 1's (`0`) or node 2's (`1`) handle.
    pub fn node(&self, i: usize) -> ccm_core::node::NodeHandle {
        self.nodes[i].handle()
    }

    /// Microseconds since the pair's origin.
    pub fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64() * 1e6
    }

    /// Node 1's log ring and node 2's mirror of it (for [`nvram::verify_rings`]).
    pub fn ring_files(&self) -> (PathBuf, PathBuf) {
        (self.a.paths()[0].clone(), self.b.paths()[1].clone())
    }

    /// Closes the mirrors, stops both nodes and removes the ring files.
    pub fn stop(self) {
        let MirrorPair {
            a, b, nodes, base, ..
        } = self;
        a.close();
        b.close();
        for n in &nodes {
            n.handle().shutdown();
        }
        for n in nodes {
            n.join();
        }
        for b in &base {
            for f in nvram::ring_paths(b) {
                let _ = std::fs::remove_file(f);
            }
        }
        let _ = std::fs::remove_file(secret_path());
    }
}
