//! Two `ccm node` processes on the lab's rxe devices; one of them is killed with SIGKILL in the middle of
//! mirrored traffic (node A writes its log, node B holds A's mirror) and started again.
//!
//! * B killed: A's failover monitor must declare the partner down for the kill (and only for it), A's NVRAM
//!   mirror must resume into B's surviving mirror ring.
//! * A (the writer) killed: the restarted A continues its log from the surviving ring and its writer
//!   checkpoint (no LSN reused), resends what B lacks, and B's monitor declares A down once.
//!
//! Either way, in the end every entry A acknowledged is on B, in order, exactly once, with equal checksums
//! (the digest covers the whole log, both of A's processes).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ccm_core::node::status;
use ccm_verbs::lab::LabTopology;
use serde_json::Value;

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Node A's writer appends 1000 entries a second for `load_seconds` once its mirror is first ready
/// (it waits for each entry to be durable, so it stalls while B is away and the clock runs on).
fn write_config(dir: &Path, side: &str, load_seconds: u32) {
    let (id, me, peer) = if side == "a" { (1, 1, 2) } else { (2, 2, 1) };
    let load = if side == "a" {
        format!("mirror_load_per_sec = 1000\nmirror_load_seconds = {load_seconds}")
    } else {
        String::new()
    };
    let text = format!(
        r#"node = {id}
partner = {partner}
cluster = 9
secret_file = "{dir}/secret"
status_socket = "{dir}/{side}.sock"
[timing]
heartbeat_ms = 30
heartbeat_misses = 10
connect_ms = 200
handshake_ms = 1000
[[interconnect]]
local_ip = "10.0.0.{me}"
partner_ip = "10.0.0.{peer}"
[[interconnect]]
local_ip = "10.0.1.{me}"
partner_ip = "10.0.1.{peer}"
[[client]]
name = "failover-monitor"
id = 1
kind = "monitor"
[[client]]
name = "nvram-mirror"
id = 2
kind = "mirror"
mirror_path = "/dev/shm/ccm-kill-nvram-{side}"
mirror_bytes = 1048576
{load}
"#,
        partner = 3 - id,
        dir = dir.display(),
    );
    std::fs::write(dir.join(format!("node-{side}.toml")), text).unwrap();
}

fn start(dir: &Path, side: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{side}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ccm"))
        .args(["node", "--config"])
        .arg(dir.join(format!("node-{side}.toml")))
        .env("RUST_LOG", "ccm=info")
        .stderr(log)
        .spawn()
        .unwrap()
}

fn detail(dir: &Path, side: &str, kind: &str) -> Option<Value> {
    let v = status::fetch(&dir.join(format!("{side}.sock"))).ok()?;
    v["clients_detail"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == kind)
        .cloned()
}

/// A client's line in a node's `ccm status --json` snapshot, and the node's uptime then (ms).
fn client_line(dir: &Path, side: &str, name: &str) -> Option<(status::ClientStatusLine, f64)> {
    let v = status::fetch(&dir.join(format!("{side}.sock"))).ok()?;
    let s: status::NodeStatus = serde_json::from_value(v).ok()?;
    let c = s.clients.into_iter().find(|c| c.name == name)?;
    Some((c, s.uptime_ms))
}

/// Whether a client's last event, as `ccm status` shows it, is a Ready after `after_ms` of node uptime.
fn last_event_ready_after(c: &status::ClientStatusLine, after_ms: f64) -> bool {
    c.last_event
        .as_ref()
        .is_some_and(|e| e.what.starts_with("Ready on ic") && e.at_ms > after_ms)
}

fn num(v: &Option<Value>, field: &str) -> u64 {
    v.as_ref().and_then(|v| v[field].as_u64()).unwrap_or(0)
}

/// On a failing test, the tail of both nodes' logs (they are in a directory that dies with the guest).
struct DumpLogs(std::path::PathBuf);
impl Drop for DumpLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for side in ["a", "b"] {
            let log =
                std::fs::read_to_string(self.0.join(format!("{side}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- last lines of node {side}'s log");
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh test directory with both nodes' configurations, and no mirror files left from an earlier test.
fn setup(test: &str, load_seconds: u32) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ccm-kill-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "kill test secret 0123456789\n").unwrap();
    for side in ["a", "b"] {
        for suffix in ["", ".mirror", ".mirror.state", ".state"] {
            let _ = std::fs::remove_file(format!("/dev/shm/ccm-kill-nvram-{side}{suffix}"));
        }
        write_config(&dir, side, load_seconds);
    }
    dir
}

/// Wait until node A's writer is done (its load runs 8 or 20 s) and B applied everything; then A's log and B's
/// mirror of it must have the same checksum. Returns A's and B's mirror details.
fn wait_caught_up(dir: &Path) -> (Value, Value) {
    wait_until(
        Duration::from_secs(30),
        "the writer done and B caught up",
        || {
            let (a, b) = (detail(dir, "a", "mirror"), detail(dir, "b", "mirror"));
            let appended = num(&a, "appended");
            appended > 0
                && appended == num(&a, "durable")
                && num(&b, "partner_applied") == appended
                && {
                    std::thread::sleep(Duration::from_millis(300));
                    num(&detail(dir, "a", "mirror"), "appended") == appended
                }
        },
    );
    let (a, b) = (
        detail(dir, "a", "mirror").unwrap(),
        detail(dir, "b", "mirror").unwrap(),
    );
    assert_eq!(
        a["local_digest"], b["mirror_digest"],
        "B's mirror holds exactly A's log: {a} / {b}"
    );
    (a, b)
}

#[test]
fn a_killed_partner_is_declared_down_and_the_mirror_loses_nothing() {
    let Some(_lab) = LabTopology::from_env_or_skip(
        "a_killed_partner_is_declared_down_and_the_mirror_loses_nothing",
    ) else {
        return;
    };
    // The writer must still be running when B is back: a kill, the partner-down decision and B's
    // restart take several seconds in a loaded guest, and the writer's clock runs while it waits.
    let dir = setup("partner", 20);
    let _logs = DumpLogs(dir.clone());
    let mut procs = Kill(vec![start(&dir, "a"), start(&dir, "b")]);
    wait_until(
        Duration::from_secs(20),
        "node A's mirror appending and durable",
        || num(&detail(&dir, "a", "mirror"), "durable") > 500,
    );
    // `ccm status` shows the running mirror client Ready, and its last event says so.
    let (mirror, _) = client_line(&dir, "a", "nvram-mirror").expect("A's mirror in ccm status");
    assert!(mirror.state.starts_with("Ready"), "{mirror:?}");
    assert!(last_event_ready_after(&mirror, 0.0), "{mirror:?}");
    // One link lost: no takeover.
    let monitor = || detail(&dir, "a", "monitor");
    assert_eq!(num(&monitor(), "partner_down_decisions"), 0);
    // SIGKILL node B.
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "node A's monitor declares the partner down",
        || num(&monitor(), "partner_down_decisions") == 1,
    );
    eprintln!(
        "partner declared down {:.0} ms after SIGKILL",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let durable_at_kill = num(&detail(&dir, "a", "mirror"), "durable");
    let (_, down_ms) = client_line(&dir, "a", "nvram-mirror").expect("A's status");
    // B comes back on the same mirror ring (it survived in /dev/shm) and the mirror resumes.
    procs.0[1] = start(&dir, "b");
    wait_until(
        Duration::from_secs(20),
        "the mirror durable again after B's restart",
        || num(&detail(&dir, "a", "mirror"), "durable") > durable_at_kill + 200,
    );
    // Its last event is the new Ready (the status snapshot is republished every 50 ms).
    wait_until(
        Duration::from_secs(2),
        "A's status showing the mirror's Ready after B's restart",
        || {
            client_line(&dir, "a", "nvram-mirror")
                .is_some_and(|(c, _)| last_event_ready_after(&c, down_ms))
        },
    );
    // The writer stops after its 8 s; then everything must be on B.
    let (a, b) = wait_caught_up(&dir);
    assert_eq!(
        num(&monitor(), "partner_down_decisions"),
        1,
        "PartnerDown only for the kill"
    );
    eprintln!(
        "mirror: {} entries appended and durable, {} applied on B (after its restart), checksums equal",
        a["appended"], b["partner_applied"]
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_writer_continues_its_log_and_loses_nothing() {
    let Some(_lab) =
        LabTopology::from_env_or_skip("a_killed_writer_continues_its_log_and_loses_nothing")
    else {
        return;
    };
    let dir = setup("writer", 8);
    let _logs = DumpLogs(dir.clone());
    let mut procs = Kill(vec![start(&dir, "a"), start(&dir, "b")]);
    wait_until(
        Duration::from_secs(20),
        "node A's mirror appending and durable",
        || num(&detail(&dir, "a", "mirror"), "durable") > 500,
    );
    // SIGKILL the writer mid-traffic. What it had reported (a lower bound: the status lags a little).
    let before = detail(&dir, "a", "mirror");
    let (appended_before, durable_before) = (num(&before, "appended"), num(&before, "durable"));
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let b_monitor = || detail(&dir, "b", "monitor");
    wait_until(
        Duration::from_secs(10),
        "node B's monitor declares node A down",
        || num(&b_monitor(), "partner_down_decisions") == 1,
    );
    // A restarts on its surviving log: its next LSN follows every LSN the dead process handed out.
    procs.0[0] = start(&dir, "a");
    let mut resumed_at = 0;
    wait_until(Duration::from_secs(20), "node A's mirror back", || {
        let a = detail(&dir, "a", "mirror");
        resumed_at = num(&a, "appended");
        a.is_some()
    });
    assert!(
        resumed_at >= appended_before,
        "the restarted writer continues at LSN {resumed_at}, the old one had appended {appended_before}"
    );
    wait_until(
        Duration::from_secs(20),
        "new entries durable after A's restart",
        || num(&detail(&dir, "a", "mirror"), "durable") > resumed_at + 200,
    );
    let (a, b) = wait_caught_up(&dir);
    assert!(num(&Some(b.clone()), "partner_applied") >= durable_before);
    assert_eq!(
        num(&b_monitor(), "partner_down_decisions"),
        1,
        "PartnerDown only for the kill"
    );
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log.contains("mirror log recovered"),
        "the restarted writer recovered its log"
    );
    eprintln!(
        "writer killed at >= {appended_before} appended / {durable_before} durable; restarted at LSN {resumed_at}; \
         {} entries in all, applied once on B, checksums equal",
        a["appended"]
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
