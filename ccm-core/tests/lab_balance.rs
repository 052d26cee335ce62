//! Adaptive balancing and per-client isolation between two ccm nodes on the lab's rxe devices (node 1
//! on the A sides, node 2 on the B sides), in one process.
//!
//! * A heavy NVRAM mirror overloads the small configured capacity of the interconnect it shares with
//!   a light counter: the mirror alone migrates to the other interconnect, once, nothing of its log is
//!   lost or applied twice, and the counters are never stopped.
//! * A peer client that never reposts its receives (RNR retry exceeded on the sender): only that
//!   client is reset, again and again with a growing back-off; the other clients on the same
//!   interconnect are never stopped and the interconnect never fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_core::clients::counter::{self, CounterStats};
use ccm_core::clients::nvram::{self, Mirror};
use ccm_core::manager::ClientSpec;
use ccm_core::mirror::Lsn;
use ccm_core::node::config::NodeConfig;
use ccm_core::node::{ClientNotice, Node, NodeHandle};
use ccm_core::wire::{BandwidthClass, ClientId, InterconnectId};
use ccm_verbs::lab::{LabTopology, Side};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RING: u64 = 4 << 20;

/// A node's configuration, with the interconnects' capacities in MB/s and the failback hold-down.
/// Heartbeats 50 ms x 20: these tests are about balancing and isolation, not failure detection, and
/// the emulated guest stalls threads for hundreds of milliseconds when other guests share the host.
fn config(
    lab: &LabTopology,
    node: u64,
    tcp_port: u16,
    capacity_mb_s: [f64; 2],
    hold_down_ms: u64,
) -> NodeConfig {
    let side = if node == 1 { Side::A } else { Side::B };
    let other = if node == 1 { Side::B } else { Side::A };
    let secret = format!("/tmp/ccm-lab-balance-secret-{tcp_port}-{node}");
    std::fs::write(&secret, "lab secret 0123456789abcdef balance").unwrap();
    let mut text = format!(
        r#"
        node = {node}
        partner = {partner}
        cluster = 7
        secret_file = "{secret}"
        [timing]
        heartbeat_ms = 50
        heartbeat_misses = 20
        partner_down_ms = 3000
        connect_ms = 200
        handshake_ms = 1000
        failback_hold_down_ms = {hold_down_ms}
        [balance]
        period_ms = 100
        window_ms = 1000
        high_pct = 80
        low_pct = 60
        dwell_ms = 1000
        "#,
        partner = 3 - node,
    );
    for (i, ic) in lab.interconnects.iter().enumerate() {
        text.push_str(&format!(
            r#"
            [[interconnect]]
            device = "{}"
            local_ip = "{}"
            partner_ip = "{}"
            tcp_port = {tcp_port}
            capacity_mb_s = {}
            "#,
            ic.side(side).device,
            ic.side(side).ip,
            ic.side(other).ip,
            capacity_mb_s[i.min(1)],
        ));
    }
    NodeConfig::parse(&text).unwrap()
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn low(id: u32, name: &str) -> ClientSpec {
    ClientSpec {
        id: ClientId(id),
        name: name.into(),
        class: BandwidthClass::Low,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    }
}

/// The interconnect a client is Ready on, as a node's status says.
fn link_of(h: &NodeHandle, client: u32) -> Option<u8> {
    let s = h.status();
    let c = s.clients.iter().find(|c| c.id == client)?;
    if !c.state.starts_with("Ready") {
        return None;
    }
    let at = c.state.find("InterconnectId(")? + "InterconnectId(".len();
    c.state[at..].split(')').next()?.parse().ok()
}

/// Everything node 1 records, gathered every 20 ms (the status keeps only the recent events).
struct Recorder {
    events: Arc<Mutex<Vec<(u64, String)>>>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(h: NodeHandle) -> Recorder {
        let events = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (events, running) = (events.clone(), running.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let mut ev = events.lock().unwrap();
                    for e in h.status().events {
                        let at = (e.at_ms * 1000.0) as u64;
                        if ev.last().is_none_or(|(t, _)| *t < at) {
                            ev.push((at, e.what));
                        }
                    }
                    drop(ev);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Recorder {
            events,
            running,
            thread: Some(thread),
        }
    }

    fn matching(&self, what: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.contains(what))
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn stop(mut self) -> Vec<(u64, String)> {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

/// The payload of `lsn`: its length and bytes follow from the LSN, so the partner can check each one.
fn payload(lsn: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(lsn ^ 0xba1a);
    let mut p = vec![0u8; rng.gen_range(500..=1500)];
    rng.fill(&mut p[..]);
    p
}

struct Files(Vec<PathBuf>);
impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn lab_a_heavy_mirror_migrates_off_its_overloaded_link_once_and_the_counter_stays() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_a_heavy_mirror_migrates_off_its_overloaded_link_once_and_the_counter_stays",
    ) else {
        return;
    };
    let tcp_port = 19_810;
    // Interconnect 0 is configured at 50 kB/s: counter 3 uses about 6 % of it (8 bytes every 5 ms in
    // each direction), the mirror's writes overload it. Interconnect 1 at 40 MB/s.
    let nodes: Vec<Node> = [1, 2]
        .iter()
        .map(|&n| {
            Node::start(config(&lab, n, tcp_port, [0.05, 40.0], 300), Instant::now()).unwrap()
        })
        .collect();
    let base = |n: u64| {
        PathBuf::from(format!(
            "/dev/shm/ccm-lab-balance-{}-{n}",
            std::process::id()
        ))
    };
    let mut files = Vec::new();
    for n in [1, 2] {
        files.extend(nvram::ring_paths(&base(n)));
    }
    let _files = Files(files.clone());
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    // Static placement of three low-bandwidth clients over two links: 1 and 3 on link 0, 2 on link 1.
    let applied = Arc::new(Mutex::new((Vec::<u64>::new(), 0u64)));
    let mut mirrors: Vec<Mirror> = Vec::new();
    let mut counters: Vec<(u32, Arc<CounterStats>)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let apply: nvram::ApplyFn = if i == 1 {
            let into = applied.clone();
            Box::new(move |lsn: Lsn, p: &[u8]| {
                let mut a = into.lock().unwrap();
                a.0.push(lsn.0);
                if p != payload(lsn.0).as_slice() {
                    a.1 += 1;
                }
            })
        } else {
            Box::new(|_, _| {})
        };
        mirrors.push(
            nvram::start_with(
                &node.handle(),
                low(1, "nvram"),
                &base(i as u64 + 1),
                RING,
                apply,
            )
            .unwrap(),
        );
        for id in [2, 3] {
            let h = node
                .handle()
                .register(low(id, &format!("counter-{id}")), Vec::new())
                .unwrap();
            let stats = Arc::new(CounterStats::default());
            counters.push((id, stats.clone()));
            std::thread::spawn(move || counter::run(h, Duration::from_millis(5), stats));
        }
    }
    let h1 = nodes[0].handle();
    wait_until(
        Duration::from_secs(30),
        "the mirror and counter 3 on interconnect 0, counter 2 on interconnect 1, on both nodes",
        || {
            (0..2).all(|n| {
                let h = nodes[n].handle();
                link_of(&h, 1) == Some(0) && link_of(&h, 3) == Some(0) && link_of(&h, 2) == Some(1)
            }) && mirrors.iter().all(|m| m.is_synced())
        },
    );
    let rec = Recorder::start(h1.clone());
    // Let every client dwell, quietly: nothing may move without load.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rec.matching("Migrate {"), Vec::<String>::new());
    let stops_before: Vec<u64> = counters
        .iter()
        .map(|(_, s)| s.stops.load(Ordering::Relaxed))
        .collect();

    // The mirror pushes about 200 kB/s for 8 s (an entry of 500..1500 bytes every 5 ms): four times
    // what interconnect 0 is configured to carry, half a percent of interconnect 1.
    let writing = Instant::now();
    let mut next = 0u64;
    let mut migrated_at = None;
    let mut max_util_0 = 0.0f64; // as sampled from the status every 50 ms
    let mut max_mirror_mb_s = 0.0f64;
    let mut last_check = Instant::now();
    while writing.elapsed() < Duration::from_secs(8) {
        next += 1;
        let lsn = mirrors[0]
            .append_wait(&payload(next), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("append {next}: {e} ({:?})", mirrors[0].stats()));
        assert_eq!(lsn, Lsn(next));
        let due = writing + Duration::from_millis(5 * next);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if last_check.elapsed() >= Duration::from_millis(50) {
            last_check = Instant::now();
            let s = h1.status();
            if let Some(l) = s.interconnects[0].load.as_ref() {
                max_util_0 = max_util_0.max(l.utilisation_pct);
            }
            if let Some(c) = s.clients.iter().find(|c| c.id == 1) {
                max_mirror_mb_s = max_mirror_mb_s.max(c.mb_s);
            }
            if migrated_at.is_none() && mirrors[0].link() == Some(InterconnectId(1)) {
                migrated_at = Some(writing.elapsed());
            }
        }
    }
    let n = next;
    assert!(
        mirrors[0].wait_durable(Lsn(n), Duration::from_secs(60)),
        "{:?}",
        mirrors[0].stats()
    );
    wait_until(Duration::from_secs(30), "node 2 applied everything", || {
        mirrors[1].stats().partner_applied == n
    });
    // Stay a while longer under light load: the mirror must not come back.
    std::thread::sleep(Duration::from_millis(1500));
    let events = rec.stop();
    let migrations: Vec<&String> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.contains("Migrate {"))
        .collect();
    let link_failures = events
        .iter()
        .filter(|(_, e)| e.contains("StopClients520"))
        .count();
    eprintln!(
        "RESULT: {n} entries in 8 s; interconnect 0 peaked at {max_util_0:.0} % of 50 kB/s, the mirror at \
         {max_mirror_mb_s:.3} MB/s; migrated after {migrated_at:?}; migrations: {migrations:?}; \
         interconnect failures (lab stalls) {link_failures}"
    );
    for (at, e) in events.iter().filter(|(_, e)| {
        e.contains("Migrate")
            || e.contains("Stop")
            || e.contains("Fail")
            || e.contains("driver turn")
    }) {
        eprintln!("  {:10.1} ms {e}", *at as f64 / 1000.0);
    }
    assert_eq!(migrations.len(), 1, "exactly one migration: {migrations:?}");
    // The manager saw interconnect 0 above the high watermark when it moved the mirror. (The status
    // is sampled every 50 ms and a starved guest posts in bursts, so its peak may fall between two
    // samples: the decision's own figure is the evidence.)
    let from_permille: u64 = migrations[0]
        .split("from_permille: ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.trim().parse().ok())
        .expect("from_permille in the Migrate step");
    assert!(from_permille > 800, "{migrations:?}");
    assert!(
        max_mirror_mb_s > 0.0,
        "ccm status shows the mirror's measured bandwidth"
    );
    let s = h1.status();
    let l1 = s.interconnects[1]
        .load
        .as_ref()
        .expect("interconnect 1 load");
    assert_eq!(l1.capacity_mb_s, 40.0);
    eprintln!(
        "status after the run: {:?}",
        s.interconnects.iter().map(|i| &i.load).collect::<Vec<_>>()
    );
    assert!(
        migrations[0].contains("client: ClientId(1)")
            && migrations[0].contains("from: InterconnectId(0)")
            && migrations[0].contains("to: InterconnectId(1)"),
        "{migrations:?}"
    );
    assert!(migrated_at.is_some(), "the mirror moved to interconnect 1");
    for (n, node) in nodes.iter().enumerate() {
        let h = node.handle();
        assert_eq!(link_of(&h, 1), Some(1), "node {}: the mirror stays", n + 1);
        assert_eq!(link_of(&h, 3), Some(0), "node {}: counter 3 stays", n + 1);
        assert_eq!(link_of(&h, 2), Some(1), "node {}: counter 2 stays", n + 1);
    }
    for ((id, s), before) in counters.iter().zip(&stops_before) {
        assert_eq!(
            s.stops.load(Ordering::Relaxed),
            *before,
            "counter {id} was never stopped"
        );
    }
    // Nothing lost, nothing applied twice.
    let a = applied.lock().unwrap();
    assert!(
        a.0 == (1..=n).collect::<Vec<_>>(),
        "node 2 applied every LSN once, in order"
    );
    assert_eq!(a.1, 0, "payloads intact");
    assert_eq!(mirrors[0].local_digest(), mirrors[1].mirror_digest());
    let check = nvram::verify_rings(&mirrors[0].paths()[0], &mirrors[1].paths()[1], RING).unwrap();
    assert!(check.is_clean(), "{check:?}");
    let s1 = mirrors[0].stats();
    eprintln!("mirror node 1: {s1:?}");
    assert!(s1.stops >= 1 && s1.readies >= 2, "{s1:?}");
    drop(a);
    for m in mirrors {
        m.close();
    }
    for n in &nodes {
        n.handle().shutdown();
    }
    for n in nodes {
        n.join();
    }
}

#[test]
fn lab_a_peer_that_stops_reposting_receives_resets_only_its_client() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_a_peer_that_stops_reposting_receives_resets_only_its_client",
    ) else {
        return;
    };
    let tcp_port = 19_811;
    let nodes: Vec<Node> = [1, 2]
        .iter()
        .map(|&n| {
            Node::start(
                config(&lab, n, tcp_port, [1250.0, 1250.0], 2000),
                Instant::now(),
            )
            .unwrap()
        })
        .collect();
    // Counters 1 and 2 on both nodes; client 5 shares interconnect 0 with counter 1. On node 1 it is
    // a counter; on node 2 it never polls its VI, so its receives are never reposted.
    let mut counters: Vec<(u32, Arc<CounterStats>)> = Vec::new();
    for node in &nodes {
        for id in [1, 2] {
            let h = node
                .handle()
                .register(low(id, &format!("counter-{id}")), Vec::new())
                .unwrap();
            let stats = Arc::new(CounterStats::default());
            counters.push((id, stats.clone()));
            std::thread::spawn(move || counter::run(h, Duration::from_millis(2), stats));
        }
    }
    let sender = Arc::new(CounterStats::default());
    {
        let h = nodes[0]
            .handle()
            .register(low(5, "eager"), Vec::new())
            .unwrap();
        let stats = sender.clone();
        std::thread::spawn(move || counter::run(h, Duration::from_millis(1), stats));
    }
    let deaf = nodes[1]
        .handle()
        .register(low(5, "deaf"), Vec::new())
        .unwrap();
    let deaf_notices = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let notices = deaf_notices.clone();
        std::thread::spawn(move || {
            while let Ok(n) = deaf.events.recv() {
                let what = match n {
                    ClientNotice::Ready { resumed, .. } => format!("ready resumed={resumed}"),
                    ClientNotice::Stop { .. } => "stop".into(),
                    other => format!("{other:?}"),
                };
                notices.lock().unwrap().push(what);
                // The VIs (in a Ready) are dropped at once: nothing is ever polled or reposted.
            }
        });
    }
    let h1 = nodes[0].handle();
    let rec = Recorder::start(h1.clone());
    // Their homes (Fig. 8): counter 1 and client 5 on interconnect 0, counter 2 on 1; wait until they
    // are there (a client placed while one link was still coming up fails back after the hold-down).
    wait_until(
        Duration::from_secs(30),
        "counter 1 on interconnect 0 and counter 2 on 1, on both nodes",
        || {
            nodes
                .iter()
                .all(|n| link_of(&n.handle(), 1) == Some(0) && link_of(&n.handle(), 2) == Some(1))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let stops_before: Vec<u64> = counters
        .iter()
        .map(|(_, s)| s.stops.load(Ordering::Relaxed))
        .collect();
    let received_before: Vec<u64> = counters
        .iter()
        .map(|(_, s)| s.received.load(Ordering::Relaxed))
        .collect();
    let link_failures_before = rec.matching("StopClients520").len();
    // Each binding of client 5 fails within the hold-down (2 s), so the resets count up.
    let looping = Instant::now();
    while !rec
        .matching("ClientReset { client: ClientId(5)")
        .iter()
        .any(|e| e.contains("resets: 3"))
    {
        if looping.elapsed() > Duration::from_secs(30) {
            for (at, e) in rec.stop() {
                eprintln!("  {:10.1} ms {e}", at as f64 / 1000.0);
            }
            panic!("client 5 was not reset three times in a row within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Watch the other clients for at least 3 s in all, however fast the resets came.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(looping.elapsed()));
    std::thread::sleep(Duration::from_millis(300));
    let events = rec.stop();
    let resets: Vec<&String> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.contains("ClientReset {"))
        .collect();
    let window = looping.elapsed() + Duration::from_millis(300);
    eprintln!(
        "RESULT: {} client resets on node 1 (sender stops {}) in {window:?}; the deaf client was told {:?}; \
         counters (id, received in the window, stops): {:?}",
        resets.len(),
        sender.stops.load(Ordering::Relaxed),
        deaf_notices.lock().unwrap(),
        counters
            .iter()
            .zip(&received_before)
            .map(|((id, s), rx)| (
                *id,
                s.received.load(Ordering::Relaxed) - rx,
                s.stops.load(Ordering::Relaxed)
            ))
            .collect::<Vec<_>>()
    );
    for (at, e) in events.iter().filter(|(_, e)| {
        e.contains("ClientReset")
            || e.contains("StopClients520")
            || e.contains("Reinitialize")
            || e.contains("driver turn")
            || e.contains("Fail")
    }) {
        eprintln!("  {:10.1} ms {e}", *at as f64 / 1000.0);
    }
    assert!(
        resets.iter().all(|e| e.contains("client: ClientId(5)")),
        "only client 5 is reset: {resets:?}"
    );
    // The back-off grows: 10, 20, 40 ms on the placer.
    for (k, ms) in [(1, 10), (2, 20), (3, 40)] {
        assert!(
            resets
                .iter()
                .any(|e| e.contains(&format!("resets: {k}, after: Some({ms}ms)"))),
            "reset {k} after {ms} ms: {resets:?}"
        );
    }
    let link_failures: Vec<&String> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.contains("StopClients520"))
        .collect();
    assert_eq!(
        link_failures.len(),
        link_failures_before,
        "no interconnect failed: {link_failures:?}"
    );
    for (((id, s), before), rx) in counters.iter().zip(&stops_before).zip(&received_before) {
        assert_eq!(
            s.stops.load(Ordering::Relaxed),
            *before,
            "counter {id} never stopped"
        );
        assert!(
            s.received.load(Ordering::Relaxed) > rx + 100,
            "counter {id} kept receiving"
        );
    }
    let told = deaf_notices.lock().unwrap().clone();
    assert!(
        told.iter().filter(|t| *t == "stop").count() >= 2,
        "the deaf side's client is stopped and resumed: {told:?}"
    );
    for n in &nodes {
        n.handle().shutdown();
    }
    for n in nodes {
        n.join();
    }
}
