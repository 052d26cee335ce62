//! `ccm-bench bringup`: connection setup of N RC connections by ccm's slam connect (ccm-vi: VI addresses
//! exchanged beforehand, then RESET -> INIT -> RTR -> RTS on each side, no request/response).
//! `ccm-bench compare bringup` runs it next to rdma_cm (`cmtime` of rdmacm-utils: create id, bind, resolve
//! address and route, create QP, connect), on the same devices in the same guest boot.
//!
//! `cmtime` needs a server process; it never exits by itself, so the bench kills it once the client is done.
//! What `cmtime` prints (rdma-core 44), one line per step after a header:
//!
//! ```text
//! step              total ms     max ms     min us  us / conn
//! create id    :        0.56       0.13       7.00      35.06
//! ...
//! connect      :      103.83      94.69   59483.00    6489.38
//! ```

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ccm_vi::{decode_batch, encode_batch, Nic, Vi, ViAttributes};
use serde_json::{json, Value};

/// The `tool` of our side in the JSON records.
pub const SLAM_TOOL: &str = "ccm-vi slam connect";

/// One step of a `cmtime` report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CmtimeStep {
    /// The step's name (`create id`, `connect`, ...).
    pub name: String,
    /// Wall time of the step for all connections, ms.
    pub total_ms: f64,
    /// The slowest single connection's time in the step, ms.
    pub max_ms: f64,
    /// The fastest single connection's time in the step, us.
    pub min_us: f64,
    /// `total / connections`, us.
    pub us_per_conn: f64,
}

/// A parsed `cmtime` client report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CmtimeReport {
    /// Its steps, in print order.
    pub steps: Vec<CmtimeStep>,
}

/// The steps that set a connection up (everything before `disconnect`).
pub const SETUP_STEPS: [&str; 6] = [
    "create id",
    "bind addr",
    "resolve addr",
    "resolve route",
    "create qp",
    "connect",
];

impl CmtimeReport {
    /// A step's total, ms.
    pub fn total_ms(&self, step: &str) -> Option<f64> {
        self.steps
            .iter()
            .find(|s| s.name == step)
            .map(|s| s.total_ms)
    }

    /// Sum of the setup steps' totals, ms (`None` unless all of them were printed).
    pub fn setup_ms(&self) -> Option<f64> {
        SETUP_STEPS.iter().map(|s| self.total_ms(s)).sum()
    }
}

/// Parses `cmtime`'s client output; `None` if it has no step table.
pub fn parse_cmtime(text: &str) -> Option<CmtimeReport> {
    let mut r = CmtimeReport::default();
    let mut in_table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("step") && line.contains("total ms") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 4 {
            continue;
        }
        r.steps.push(CmtimeStep {
            name: name.trim().to_string(),
            total_ms: v[0],
            max_ms: v[1],
            min_us: v[2],
            us_per_conn: v[3],
        });
    }
    (!r.steps.is_empty()).then_some(r)
}

/// Runs `cmtime` with `n` connections: the server bound to `server_ip` (stopped by us), the client from
/// `client_ip`. Returns the client's parsed report and its raw output.
pub fn run_cmtime(
    server_ip: IpAddr,
    client_ip: IpAddr,
    n: usize,
    port: u16,
) -> Result<(CmtimeReport, String), String> {
    let mut server = Command::new("cmtime")
        .args(["-b", &server_ip.to_string(), "-c", &n.to_string()])
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cmtime server: {e}"))?;
    // Starting a verbs process in the guest takes ~70 ms: give the server time to listen.
    std::thread::sleep(Duration::from_millis(500));
    let client = Command::new("cmtime")
        .args(["-s", &server_ip.to_string(), "-b", &client_ip.to_string()])
        .args(["-c", &n.to_string(), "-p", &port.to_string()])
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = client.map_err(|e| format!("cmtime client: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("cmtime client failed ({}): {text}", out.status));
    }
    let r =
        parse_cmtime(&text).ok_or_else(|| format!("no step table in cmtime's output: {text}"))?;
    Ok((r, text))
}

/// Our side for `n` connections.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlamTimes {
    /// Creating the VIs of both sides (QPs; protection tags and CQs made before, untimed), ms.
    pub create_ms: f64,
    /// Encoding and decoding both address batches, ms.
    pub exchange_ms: f64,
    /// Slam connecting every VI of both sides, ms.
    pub connect_ms: f64,
}

impl SlamTimes {
    /// Everything: create + exchange + connect, ms.
    pub fn total_ms(&self) -> f64 {
        self.create_ms + self.exchange_ms + self.connect_ms
    }

    /// The `ours` object of a bring-up record.
    pub fn ours_json(&self) -> Value {
        json!({
            "tool": SLAM_TOOL,
            "ms": self.total_ms(),
            "create_ms": self.create_ms, "exchange_ms": self.exchange_ms, "connect_ms": self.connect_ms,
        })
    }

    /// `    3.21 ms  (create 1.00, exchange 0.01, connect 2.20)`.
    pub fn line(&self) -> String {
        format!(
            "{:>9.2} ms  (create {:.2}, exchange {:.2}, connect {:.2})",
            self.total_ms(),
            self.create_ms,
            self.exchange_ms,
            self.connect_ms
        )
    }
}

/// One run of `n` connections as one JSON object, our side only (`ccm-bench bringup --json`);
/// `compare bringup` adds `peer` and the ratios.
pub fn record(n: usize, rep: u32, device: &str, peer_device: &str, ours: &SlamTimes) -> Value {
    json!({
        "bench": "bringup",
        "vis": n,
        "rep": rep,
        "device": device,
        "peer_device": peer_device,
        "ours": ours.ours_json(),
    })
}

/// The medians over `reps` repetitions of `n` connections, our side only: total and connect step, ms.
pub fn median_record(
    n: usize,
    reps: u32,
    device: &str,
    peer_device: &str,
    ms: f64,
    connect_ms: f64,
) -> Value {
    json!({
        "bench": "bringup", "vis": n, "stat": "median", "reps": reps,
        "device": device, "peer_device": peer_device,
        "ours": { "tool": SLAM_TOOL, "ms": ms, "connect_ms": connect_ms },
    })
}

/// Creates `n` VI pairs between `a` and `b` and slam connects them (both sides, one process).
pub fn run_slam(a: &Nic, b: &Nic, n: usize) -> Result<SlamTimes, String> {
    let e = |e: ccm_vi::Error| e.to_string();
    let (ta, tb) = (a.create_ptag().map_err(e)?, b.create_ptag().map_err(e)?);
    let cq = n as u32 * 4 + 16;
    let (sa, ra) = (a.create_cq(cq).map_err(e)?, a.create_cq(cq).map_err(e)?);
    let (sb, rb) = (b.create_cq(cq).map_err(e)?, b.create_cq(cq).map_err(e)?);
    let attrs = ViAttributes {
        send_depth: 2,
        recv_depth: 2,
        max_segments: 1,
        ..ViAttributes::default()
    };
    let t0 = Instant::now();
    let mut vis_a: Vec<Vi> = Vec::with_capacity(n);
    let mut vis_b: Vec<Vi> = Vec::with_capacity(n);
    for _ in 0..n {
        vis_a.push(a.create_vi(&ta, &attrs, Some(&sa), Some(&ra)).map_err(e)?);
        vis_b.push(b.create_vi(&tb, &attrs, Some(&sb), Some(&rb)).map_err(e)?);
    }
    let t1 = Instant::now();
    let batch = |vis: &[Vi]| -> Result<Vec<ccm_vi::ViAddress>, String> {
        let addrs = vis
            .iter()
            .map(|v| v.address())
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut wire = Vec::new();
        encode_batch(&addrs, &mut wire).map_err(e)?;
        decode_batch(&wire).map_err(e)
    };
    let (from_a, from_b) = (batch(&vis_a)?, batch(&vis_b)?);
    let t2 = Instant::now();
    for (vi, r) in vis_a.iter().zip(&from_b) {
        vi.slam_connect(r).map_err(e)?;
    }
    for (vi, r) in vis_b.iter().zip(&from_a) {
        vi.slam_connect(r).map_err(e)?;
    }
    let t3 = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(SlamTimes {
        create_ms: ms(t1 - t0),
        exchange_ms: ms(t2 - t1),
        connect_ms: ms(t3 - t2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ours_only_bringup_record_has_the_total_and_its_steps_and_no_peer() {
        let t = SlamTimes {
            create_ms: 1.5,
            exchange_ms: 0.25,
            connect_ms: 2.0,
        };
        let v = record(16, 2, "rxe0", "rxe1", &t);
        assert_eq!(v["bench"], "bringup");
        assert_eq!(v["vis"], 16);
        assert_eq!(v["rep"], 2);
        assert_eq!(v["ours"]["tool"], SLAM_TOOL);
        assert_eq!(v["ours"]["ms"], 3.75);
        assert_eq!(v["ours"]["connect_ms"], 2.0);
        assert!(v.get("peer").is_none() && v.get("ratio").is_none(), "{v}");
        assert_eq!(
            t.line(),
            "     3.75 ms  (create 1.50, exchange 0.25, connect 2.00)"
        );
        let m = median_record(16, 5, "rxe0", "rxe1", 3.5, 1.75);
        assert_eq!(m["stat"], "median");
        assert_eq!(m["ours"]["ms"], 3.5);
        assert_eq!(m["ours"]["connect_ms"], 1.75);
        assert!(m.get("peer").is_none(), "{m}");
    }
}
