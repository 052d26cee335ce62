//! Running perftest (`ib_send_lat`, `ib_write_lat`, `ib_write_bw`, `ib_send_bw`) as the peer
//! tool of a comparison, and parsing what it prints.
//!
//! perftest needs a server and a client process: the server runs bound to node B's device in
//! the background, the client on node A's device connects to node B's address. Both take the
//! GID index that ccm-bench selected by address (`-x`).
//!
//! Parsing follows perftest 4.5's report formats (`RESULT_FMT_LAT`, `RESULT_FMT`): a header
//! line, then one line of figures. Under QEMU TCG perftest's CPU-frequency sampling sometimes
//! fails ("Correlation coefficient r^2 ... < 0.9") and that process then prints `inf`/`-nan`
//! for every latency: such a report is parsed but not [`valid`](LatReport::is_valid).

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A perftest latency report (one-way microseconds, as perftest prints them).
#[derive(Debug, Clone, PartialEq)]
pub struct LatReport {
    /// Message size.
    pub bytes: u64,
    /// Iterations.
    pub iters: u64,
    /// `t_min[usec]`.
    pub t_min_us: f64,
    /// `t_max[usec]` (perftest drops its 2 largest samples before reporting it).
    pub t_max_us: f64,
    /// `t_typical[usec]`: the median.
    pub t_typical_us: f64,
    /// `t_avg[usec]`.
    pub t_avg_us: f64,
    /// `t_stdev[usec]`.
    pub t_stdev_us: f64,
    /// `99% percentile[usec]`.
    pub p99_us: f64,
    /// `99.9% percentile[usec]`.
    pub p999_us: f64,
    /// The sorted samples printed with `-H` (`--report-histogram`), if any.
    pub samples: Vec<f64>,
}

impl LatReport {
    /// True if every figure is a finite, positive number (false when perftest could not
    /// determine the CPU frequency and printed `inf`).
    pub fn is_valid(&self) -> bool {
        [
            self.t_min_us,
            self.t_max_us,
            self.t_typical_us,
            self.t_avg_us,
            self.p99_us,
            self.p999_us,
        ]
        .iter()
        .all(|v| v.is_finite() && *v > 0.0)
    }
}

/// A perftest bandwidth report.
#[derive(Debug, Clone, PartialEq)]
pub struct BwReport {
    /// Message size.
    pub bytes: u64,
    /// Iterations.
    pub iters: u64,
    /// `BW peak[MB/sec]` (MB = 2^20 bytes).
    pub bw_peak_mb_s: f64,
    /// `BW average[MB/sec]` (MB = 2^20 bytes).
    pub bw_avg_mb_s: f64,
    /// `MsgRate[Mpps]`.
    pub msg_rate_mpps: f64,
}

impl BwReport {
    /// True if the average bandwidth is a finite, positive number.
    pub fn is_valid(&self) -> bool {
        self.bw_avg_mb_s.is_finite() && self.bw_avg_mb_s > 0.0
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    // perftest prints `-nan` and `inf` through printf.
    let t = s.trim();
    match t {
        "-nan" | "nan" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// The first line after the last header line `header_marker` whose first field is an integer
/// and which has at least `min_fields` whitespace-separated fields.
fn figures_after<'a>(
    text: &'a str,
    header_marker: &str,
    min_fields: usize,
) -> Option<Vec<&'a str>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| l.contains(header_marker))?;
    lines[start + 1..].iter().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= min_fields && f[0].parse::<u64>().is_ok() && !f[0].ends_with(',')).then_some(f)
    })
}

/// Parses the output of `ib_send_lat` / `ib_write_lat` (iteration mode, optionally `-H`).
pub fn parse_lat(text: &str) -> Option<LatReport> {
    let f = figures_after(text, "t_typical[usec]", 9)?;
    let mut samples = Vec::new();
    let mut in_hist = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("#, usec") {
            in_hist = true;
            continue;
        }
        if in_hist {
            match t.split_once(", ") {
                Some((i, v)) if i.parse::<u64>().is_ok() => {
                    if let Some(v) = parse_f64(v) {
                        samples.push(v);
                    }
                }
                _ => in_hist = false,
            }
        }
    }
    Some(LatReport {
        bytes: f[0].parse().ok()?,
        iters: f[1].parse().ok()?,
        t_min_us: parse_f64(f[2])?,
        t_max_us: parse_f64(f[3])?,
        t_typical_us: parse_f64(f[4])?,
        t_avg_us: parse_f64(f[5])?,
        t_stdev_us: parse_f64(f[6])?,
        p99_us: parse_f64(f[7])?,
        p999_us: parse_f64(f[8])?,
        samples,
    })
}

/// Parses the output of `ib_write_bw` / `ib_send_bw`.
pub fn parse_bw(text: &str) -> Option<BwReport> {
    let f = figures_after(text, "BW average[MB/sec]", 5)?;
    Some(BwReport {
        bytes: f[0].parse().ok()?,
        iters: f[1].parse().ok()?,
        bw_peak_mb_s: parse_f64(f[2])?,
        bw_avg_mb_s: parse_f64(f[3])?,
        msg_rate_mpps: parse_f64(f[4])?,
    })
}

/// The perftest tools ccm-bench compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `ib_send_lat`.
    SendLat,
    /// `ib_write_lat`.
    WriteLat,
    /// `ib_write_bw`.
    WriteBw,
    /// `ib_send_bw`.
    SendBw,
}

impl Tool {
    /// Program name.
    pub fn program(self) -> &'static str {
        match self {
            Tool::SendLat => "ib_send_lat",
            Tool::WriteLat => "ib_write_lat",
            Tool::WriteBw => "ib_write_bw",
            Tool::SendBw => "ib_send_bw",
        }
    }
}

/// Where perftest's server and client run.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Client (node A) device.
    pub client_dev: String,
    /// Client GID index (selected by address).
    pub client_gid_index: u32,
    /// Server (node B) device.
    pub server_dev: String,
    /// Server GID index (selected by address).
    pub server_gid_index: u32,
    /// Server address the client connects to (the address of the server's GID).
    pub server_ip: IpAddr,
    /// TCP port of perftest's out-of-band exchange.
    pub port: u16,
}

/// What one perftest run printed, both sides.
#[derive(Debug, Clone)]
pub struct PeerOutput {
    /// The command lines run (server first).
    pub commands: Vec<String>,
    /// Client stdout + stderr.
    pub client: String,
    /// Server stdout + stderr.
    pub server: String,
}

/// The argument lists (server, client) for `tool` with `args` (size, iterations, ...).
pub fn command_lines(p: &Placement, args: &[String]) -> (Vec<String>, Vec<String>) {
    let common = |dev: &str, gid: u32| -> Vec<String> {
        let mut v = vec![
            "-d".to_string(),
            dev.to_string(),
            "-x".to_string(),
            gid.to_string(),
            "-p".to_string(),
            p.port.to_string(),
        ];
        v.extend(args.iter().cloned());
        v
    };
    let server = common(&p.server_dev, p.server_gid_index);
    let mut client = common(&p.client_dev, p.client_gid_index);
    client.push(p.server_ip.to_string());
    (server, client)
}

fn shell_line(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `tool`'s server in the background and its client, retrying the client while the
/// server is not yet listening; returns both outputs.
pub fn run(tool: Tool, p: &Placement, args: &[String]) -> std::io::Result<PeerOutput> {
    let (sargs, cargs) = command_lines(p, args);
    let log: PathBuf = std::env::temp_dir().join(format!(
        "ccm-bench-{}-{}-{}.server.txt",
        tool.program(),
        std::process::id(),
        p.port
    ));
    let slog = std::fs::File::create(&log)?;
    let mut server = Command::new(tool.program())
        .args(&sargs)
        .stdin(Stdio::null())
        .stdout(slog.try_clone()?)
        .stderr(slog)
        .spawn()?;
    std::thread::sleep(Duration::from_millis(150));
    let mut client_out = String::new();
    let mut ok = false;
    for _attempt in 0..20 {
        let out = Command::new(tool.program())
            .args(&cargs)
            .stdin(Stdio::null())
            .output()?;
        client_out = String::from_utf8_lossy(&out.stdout).into_owned();
        client_out.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            ok = true;
            break;
        }
        if server.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if !ok {
        let _ = server.kill();
    }
    // The server exits on its own after a completed run; bound the wait.
    let mut waited = Duration::ZERO;
    while server.try_wait()?.is_none() {
        if waited > Duration::from_secs(30) {
            let _ = server.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
    }
    let mut server_out = String::new();
    std::fs::File::open(&log)?.read_to_string(&mut server_out)?;
    let _ = std::fs::remove_file(&log);
    let commands = vec![
        shell_line(tool.program(), &sargs) + " &",
        shell_line(tool.program(), &cargs),
    ];
    if !ok {
        return Err(std::io::Error::other(format!(
            "{} client failed:\n{client_out}\nserver:\n{server_out}",
            tool.program()
        )));
    }
    Ok(PeerOutput {
        commands,
        client: client_out,
        server: server_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_parse() {
        assert!(parse_f64("-nan").unwrap().is_nan());
        assert!(parse_f64("inf").unwrap().is_infinite());
        assert_eq!(parse_f64(" 12.5 "), Some(12.5));
    }

    #[test]
    fn command_lines_select_devices_and_gids() {
        let p = Placement {
            client_dev: "rxe0".into(),
            client_gid_index: 1,
            server_dev: "rxe1".into(),
            server_gid_index: 3,
            server_ip: "10.0.0.2".parse().unwrap(),
            port: 18515,
        };
        let (s, c) = command_lines(&p, &["-s".into(), "2".into()]);
        assert_eq!(s.join(" "), "-d rxe1 -x 3 -p 18515 -s 2");
        assert_eq!(c.join(" "), "-d rxe0 -x 1 -p 18515 -s 2 10.0.0.2");
    }
}
