//! The NVRAM mirror between two ccm nodes on the lab's rxe devices (node 1 on interconnects' A sides, node 2
//! on the B sides), in one process: a writer appends at full speed while the interconnect carrying the mirror
//! is taken down (failover) and brought back (failback); afterwards every LSN must have been applied on the
//! partner exactly once, in order, with its payload, and both rings must compare equal.

mod common;
mod trace;
use common::{config, Files};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_core::clients::nvram::{self, Mirror, MirrorFault, MirrorWaitError, StepKind};
use ccm_core::manager::ClientSpec;
use ccm_core::mirror::{Formats, FormatsError, Lsn, MirrorError};
use ccm_core::node::{ClientMemory, ClientNotice, Node, NodeError};
use ccm_core::wire::{BandwidthClass, ClientId, InterconnectId};
use ccm_verbs::lab::LabTopology;
use ccm_verbs::SharedMemory;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RING: u64 = 4 << 20;

/// The payload of `lsn`: its length and bytes follow from the LSN, so the partner can check each one.
fn payload(lsn: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(lsn ^ 0x5eed);
    let mut p = vec![0u8; rng.gen_range(1..=1500)];
    rng.fill(&mut p[..]);
    p
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

/// Brings link `ic` back up when dropped while armed, whatever happened in the test.
struct LinkGuard {
    lab: LabTopology,
    down: Arc<Mutex<Option<u8>>>,
}
impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Some(ic) = self.down.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let r = self.lab.fault(&["link-up", &ic.to_string()]);
            eprintln!("guard: link-up {ic}: {r:?}");
        }
    }
}

/// Applied entries, as the partner's apply callback saw them.
#[derive(Default)]
struct Applied {
    lsns: Vec<u64>,
    bad_payloads: u64,
}

/// The NVRAM ring files of node `n` in test `tag` (per process, under /dev/shm).
fn ring_base(tag: &str, n: u64) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/ccm-lab-nvram-{tag}-{}-{n}",
        std::process::id()
    ))
}

/// Both nodes' ring files, none left from an earlier run; removed again when dropped.
fn fresh_rings(base: &dyn Fn(u64) -> PathBuf) -> Files {
    let files: Vec<PathBuf> = [1, 2]
        .iter()
        .flat_map(|&n| nvram::ring_paths(&base(n)))
        .collect();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    Files(files)
}

/// Nodes 1 and 2 on the lab's interconnects.
fn start_nodes(lab: &LabTopology, tcp_port: u16, t_nodes: Instant) -> Vec<Node> {
    [1, 2]
        .iter()
        .map(|&n| {
            trace::to_file_if_asked();
            Node::start(config(lab, n, tcp_port), t_nodes).unwrap()
        })
        .collect()
}

/// Shut both nodes down and wait for their threads.
fn stop_nodes(nodes: Vec<Node>) {
    for n in &nodes {
        n.handle().shutdown();
    }
    for n in nodes {
        n.join();
    }
}

/// Close node 1's mirror, which no other thread may hold any more.
fn close_shared(m1: Arc<Mirror>) {
    match Arc::try_unwrap(m1) {
        Ok(m1) => m1.close(),
        Err(_) => panic!("node 1's mirror still shared"),
    }
}

/// The NVRAM mirror client of these tests.
fn nvram_spec() -> ClientSpec {
    ClientSpec {
        id: ClientId(40),
        name: "nvram".into(),
        class: BandwidthClass::High,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    }
}

/// Node 1's NVRAM mirror writer and node 2's end of it (recording what it applies), over `base(n)` rings.
fn start_mirror_pair(
    nodes: &[Node],
    spec: ClientSpec,
    base: &dyn Fn(u64) -> PathBuf,
) -> (Arc<Mirror>, Mirror, Arc<Mutex<Applied>>) {
    let applied2 = Arc::new(Mutex::new(Applied::default()));
    let into = applied2.clone();
    let record: nvram::ApplyFn = Box::new(move |lsn: Lsn, p: &[u8]| {
        let mut a = into.lock().unwrap();
        a.lsns.push(lsn.0);
        if p != payload(lsn.0).as_slice() {
            a.bad_payloads += 1;
        }
    });
    let m1 = nvram::start_with(
        &nodes[0].handle(),
        spec.clone(),
        &base(1),
        RING,
        Box::new(|_, _| {}),
    )
    .unwrap();
    let m2 = nvram::start_with(&nodes[1].handle(), spec, &base(2), RING, record).unwrap();
    (Arc::new(m1), m2, applied2)
}

/// The failover monitors, one per node (each consumes the other's heartbeats).
fn start_monitors(nodes: &[Node]) -> Vec<Arc<Mutex<ccm_core::clients::monitor::MonitorView>>> {
    let monitor_spec = ClientSpec {
        id: ClientId(9),
        name: "monitor".into(),
        class: BandwidthClass::Low,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    };
    nodes
        .iter()
        .map(|n| {
            let period = Duration::from_millis(10);
            let monitor =
                ccm_core::clients::monitor::start(&n.handle(), monitor_spec.clone(), period);
            monitor.unwrap().view
        })
        .collect()
}

/// Every interconnect is up on both nodes (after a gentle pause: see [`wait_all_up`]).
fn all_up(nodes: &[Node]) -> bool {
    std::thread::sleep(Duration::from_millis(45));
    nodes.iter().all(|n| {
        n.handle()
            .status()
            .interconnects
            .iter()
            .all(|i| i.state == "Up")
    })
}

/// Waits until both mirrors are synced, both monitors say Up and every interconnect is up on both
/// nodes; returns each monitor's history length then. (The nodes' status is a snapshot cloned under
/// the driver's lock: polled gently, the guest's two CPUs already run both nodes and the mirrors.)
fn wait_all_up(
    nodes: &[Node],
    m1: &Mirror,
    m2: &Mirror,
    views: &[Arc<Mutex<ccm_core::clients::monitor::MonitorView>>],
) -> Vec<usize> {
    use ccm_core::clients::monitor::PartnerState;
    wait_until(
        Duration::from_secs(20),
        "mirrors synced, monitors Up, both interconnects up on both nodes",
        || {
            m1.is_synced()
                && m2.is_synced()
                && views
                    .iter()
                    .all(|v| matches!(v.lock().unwrap().state, PartnerState::Up { .. }))
                && all_up(nodes)
        },
    );
    views
        .iter()
        .map(|v| v.lock().unwrap().history.len())
        .collect()
}

/// The writer: full speed, each append waiting only for ring space (back-pressure), never for
/// durability; every third entry in two parts. Returns its stop flag, the last LSN it appended, and the thread.
fn spawn_full_speed_writer(
    m1: &Arc<Mirror>,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let (m1, stop2, last2) = (m1.clone(), stop.clone(), last.clone());
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            i += 1;
            let p = payload(i);
            // Every third entry is given in two parts (a record's header and data): the partner's check of
            // `payload(lsn)` sees their concatenation.
            let wait = Duration::from_secs(30);
            let lsn = if i % 3 == 0 {
                let (head, data) = p.split_at(p.len() / 3);
                m1.append_vectored_wait(&[head, data], wait)
            } else {
                m1.append_wait(&p, wait)
            }
            .unwrap_or_else(|e| panic!("append {i}: {e} (stats {:?})", m1.stats()));
            assert_eq!(lsn, Lsn(i));
            last2.store(i, Ordering::Relaxed);
        }
    });
    (stop, last, writer)
}

#[test]
fn lab_nvram_mirror_survives_link_cuts() {
    let Some(lab) = LabTopology::from_env_or_skip("lab_nvram_mirror_survives_link_cuts") else {
        return;
    };
    const N: u64 = 20_000;
    const FROM_NODE2: u64 = 500;
    let tcp_port = 19_710;
    let t0 = Instant::now();
    let base = |n: u64| PathBuf::from(format!("/dev/shm/ccm-lab-nvram-{}-{n}", std::process::id()));
    let mut files = Vec::new();
    for n in [1, 2] {
        files.extend(nvram::ring_paths(&base(n)));
    }
    let _files = Files(files.clone());
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let nodes: Vec<Node> = [1, 2]
        .iter()
        .map(|&n| {
            trace::to_file_if_asked();
            Node::start(config(&lab, n, tcp_port), Instant::now()).unwrap()
        })
        .collect();
    let spec = ClientSpec {
        id: ClientId(40),
        name: "nvram".into(),
        class: BandwidthClass::High,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    };
    // Node 2 checks every entry of node 1's log as it applies it; node 1 checks node 2's few.
    let applied2 = Arc::new(Mutex::new(Applied::default()));
    let applied1 = Arc::new(Mutex::new(Applied::default()));
    let recorder = |into: Arc<Mutex<Applied>>| -> nvram::ApplyFn {
        Box::new(move |lsn: Lsn, p: &[u8]| {
            let mut a = into.lock().unwrap();
            a.lsns.push(lsn.0);
            if p != payload(lsn.0).as_slice() {
                a.bad_payloads += 1;
            }
        })
    };
    let m1: Mirror = nvram::start_with(
        &nodes[0].handle(),
        spec.clone(),
        &base(1),
        RING,
        recorder(applied1.clone()),
    )
    .unwrap();
    let m2: Mirror = nvram::start_with(
        &nodes[1].handle(),
        spec,
        &base(2),
        RING,
        recorder(applied2.clone()),
    )
    .unwrap();
    wait_until(Duration::from_secs(20), "both mirrors synced", || {
        m1.is_synced() && m2.is_synced()
    });
    let first = m1.link().expect("connected");
    eprintln!(
        "mirrors synced on interconnect {} after {:.0} ms",
        first.0,
        t0.elapsed().as_secs_f64() * 1e3
    );

    // Node 2 writes a little too: the mirror runs both ways on the same VI.
    for i in 1..=FROM_NODE2 {
        assert_eq!(m2.append(&payload(i)).unwrap(), Lsn(i));
    }

    // What node 1 records (link failures, placements, client events), sampled for the report.
    let events = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (h, events, sampling) = (nodes[0].handle(), events.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let mut ev = events.lock().unwrap();
                for e in h.status().events {
                    let at = (e.at_ms * 1000.0) as u64;
                    if ev.last().is_none_or(|(t, _)| *t < at) {
                        ev.push((at, e.what));
                    }
                }
                drop(ev);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let down = Arc::new(Mutex::new(None));
    let _guard = LinkGuard {
        lab: lab.clone(),
        down: down.clone(),
    };
    let mut faults = Vec::new();
    let mut moved_to = None;
    let mut cut_ic = None;
    let mut cuts = 0;
    let mut longest_append = Duration::ZERO;
    let t_append = Instant::now();
    for i in 1..=N {
        let p = payload(i);
        let t = Instant::now();
        let lsn = m1
            .append_wait(&p, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("append {i}: {e} (stats {:?})", m1.stats()));
        longest_append = longest_append.max(t.elapsed());
        assert_eq!(lsn, Lsn(i));
        if i == N / 3 {
            // Cut the interconnect the mirror is on, while appending.
            let ic = m1.link().unwrap_or(first).0;
            *down.lock().unwrap() = Some(ic);
            cut_ic = Some(ic);
            cuts += 1;
            let lab = lab.clone();
            faults.push(std::thread::spawn(move || {
                lab.fault(&["link-down", &ic.to_string()]).map(|_| ())
            }));
            eprintln!(
                "link-down {ic} at lsn {i} ({:.0} ms into the appends)",
                t_append.elapsed().as_secs_f64() * 1e3
            );
        }
        if i == 2 * N / 3 {
            let cut = down.lock().unwrap().expect("a link is down");
            wait_until(
                Duration::from_secs(20),
                "the mirror moved to the other interconnect",
                || m1.link().is_some_and(|l| l.0 != cut) && m1.is_synced(),
            );
            moved_to = m1.link();
            eprintln!(
                "mirror on interconnect {:?} at lsn {i}; link-up {cut}",
                moved_to.map(|l| l.0)
            );
            let lab = lab.clone();
            let down = down.clone();
            faults.push(std::thread::spawn(move || {
                let r = lab.fault(&["link-up", &cut.to_string()]);
                if r.is_ok() {
                    *down.lock().unwrap() = None;
                }
                r
            }));
        }
    }
    let append_s = t_append.elapsed().as_secs_f64();
    for f in faults {
        f.join().unwrap().expect("lab-fault");
    }
    assert!(
        m1.wait_durable(Lsn(N), Duration::from_secs(60)),
        "lsn {N} durable in time: {:?}",
        m1.stats()
    );
    let durable_s = t_append.elapsed().as_secs_f64();
    // The mirror's own record of the failover: it left the cut link, resumed on the other one, and its
    // first completion came there.
    let steps = m1.steps();
    let cut_ic = cut_ic.expect("a link was cut");
    let left = steps
        .iter()
        .position(|s| s.ic.0 == cut_ic && matches!(s.kind, StepKind::Stop | StepKind::ViError))
        .unwrap_or_else(|| panic!("never left interconnect {cut_ic}: {steps:?}"));
    let resumed = left
        + steps[left..]
            .iter()
            .position(|s| s.kind == StepKind::Resumed)
            .unwrap_or_else(|| panic!("never resumed: {steps:?}"));
    assert_eq!(Some(steps[resumed].ic), moved_to, "{steps:?}");
    assert!(
        steps[resumed..]
            .iter()
            .any(|s| s.kind == StepKind::FirstDurable && Some(s.ic) == moved_to),
        "no completion after resuming: {steps:?}"
    );
    assert!(m2.wait_durable(Lsn(FROM_NODE2), Duration::from_secs(30)));
    wait_until(Duration::from_secs(20), "node 2 applied everything", || {
        m2.stats().partner_applied == N
    });
    wait_until(
        Duration::from_secs(20),
        "node 1 applied node 2's log",
        || m1.stats().partner_applied == FROM_NODE2,
    );
    // Let the failback (if any) settle, then check that the mirror still works on it.
    std::thread::sleep(Duration::from_millis(800));
    let tail = m1.append(&payload(N + 1)).unwrap();
    assert!(m1.wait_durable(tail, Duration::from_secs(20)));
    wait_until(Duration::from_secs(20), "the tail entry applied", || {
        m2.stats().partner_applied == N + 1
    });

    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    {
        let ev = events.lock().unwrap();
        let mut kinds = std::collections::BTreeMap::<String, u64>::new();
        for (_, what) in ev.iter() {
            let k: String = what
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take(70)
                .collect();
            *kinds.entry(k).or_default() += 1;
        }
        eprintln!("node 1 events ({} sampled), by kind:", ev.len());
        for (k, n) in &kinds {
            eprintln!("  {n:5} x {k}");
        }
        for (at, what) in ev.iter().take(40) {
            eprintln!("  {:10.1} ms {what}", *at as f64 / 1000.0);
        }
    }
    let (s1, s2) = (m1.stats(), m2.stats());
    eprintln!("node 1 stats: {s1:?}");
    eprintln!("node 2 stats: {s2:?}");
    let a2 = applied2.lock().unwrap();
    let want: Vec<u64> = (1..=N + 1).collect();
    assert_eq!(a2.lsns.len(), want.len(), "applied count");
    assert!(a2.lsns == want, "node 2 applied every LSN once, in order");
    assert_eq!(a2.bad_payloads, 0, "payloads intact");
    let a1 = applied1.lock().unwrap();
    assert_eq!(a1.lsns, (1..=FROM_NODE2).collect::<Vec<_>>());
    assert_eq!(a1.bad_payloads, 0);
    assert_eq!(
        m1.local_digest(),
        m2.mirror_digest(),
        "digests of node 1's log"
    );
    assert_eq!(
        m2.local_digest(),
        m1.mirror_digest(),
        "digests of node 2's log"
    );
    assert!(s1.stops >= 1, "the link cut stopped the mirror: {s1:?}");
    assert!(s1.readies >= 2, "and it resumed: {s1:?}");
    assert_eq!(s1.protocol_errors + s2.protocol_errors, 0);
    assert!(moved_to.is_some());

    let check = nvram::verify_rings(&m1.paths()[0], &m2.paths()[1], RING).unwrap();
    eprintln!("ring check node 1 log vs node 2 mirror: {check:?}");
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(check.lsn_range.map(|r| r.1), Some(Lsn(N + 1)));
    let check2 = nvram::verify_rings(&m2.paths()[0], &m1.paths()[1], RING).unwrap();
    assert!(check2.is_clean(), "{check2:?}");
    assert_eq!(check2.compared, FROM_NODE2);

    let bytes: u64 = (1..=N).map(|i| payload(i).len() as u64).sum();
    eprintln!(
        "RESULT: {N} entries ({:.1} MB payload) appended in {append_s:.2} s, all durable at {durable_s:.2} s \
         ({:.0} entries/s), {cuts} link cut (on {}), mirror moved to {:?}, stops {}, readies {}, \
         batches {}, resent batches {}, VI errors {}, longest append {:.0} ms; ring check: {} entries compared, \
         {} mismatches",
        bytes as f64 / 1e6,
        N as f64 / durable_s,
        first.0,
        moved_to.map(|l: InterconnectId| l.0),
        s1.stops,
        s1.readies,
        s1.batches,
        s1.resent_batches,
        s1.vi_errors,
        longest_append.as_secs_f64() * 1e3,
        check.compared,
        check.mismatches,
    );
    drop(a1);
    drop(a2);
    m1.close();
    m2.close();
    stop_nodes(nodes);
}

/// How a cut is made and undone with the lab's fault hooks (on interconnect `ic`).
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Port down: node 1's netdev administratively down (both rxe ports go DOWN).
    PortDown,
    /// Node 1's rxe device deleted, then created again.
    DeviceDeleted,
    /// 100 % netem loss both ways: no port event at all, only heartbeats and RC retries notice it.
    SilentLoss,
}

impl Cut {
    fn make(self, ic: u8) -> Vec<String> {
        let ic = ic.to_string();
        match self {
            Cut::PortDown => vec!["link-down".into(), ic],
            Cut::DeviceDeleted => vec!["dev-del".into(), ic, "A".into()],
            Cut::SilentLoss => vec!["netem".into(), ic, "loss".into(), "100".into()],
        }
    }
    fn undo(self, ic: u8) -> Vec<String> {
        let ic = ic.to_string();
        match self {
            Cut::PortDown => vec!["link-up".into(), ic],
            Cut::DeviceDeleted => vec!["dev-add".into(), ic, "A".into()],
            Cut::SilentLoss => vec!["netem".into(), ic, "clear".into()],
        }
    }
}

/// Undoes the cut in force when dropped (whatever happened in the test).
struct CutGuard {
    lab: LabTopology,
    active: Arc<Mutex<Option<(Cut, u8)>>>,
}
impl Drop for CutGuard {
    fn drop(&mut self) {
        if let Some((cut, ic)) = self.active.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let args = cut.undo(ic);
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let r = self.lab.fault(&args);
            eprintln!("guard: {args:?}: {r:?}");
        }
    }
}

/// Run a fault hook on a thread and wait for it at most `limit` (`dev-del` blocks until every user of the
/// device closed it: a node that never lets go would hang the test).
fn fault_within(lab: &LabTopology, args: Vec<String>, limit: Duration) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let lab = lab.clone();
    let what = args.join(" ");
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let _ = tx.send(lab.fault(&args).map(|_| ()));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.unwrap_or_else(|e| panic!("lab-fault {what}: {e:?}")),
        Err(_) => panic!("lab-fault {what} did not finish in {limit:?}"),
    }
}

/// A writer appending at full speed while the interconnect carrying the mirror is cut again and again, two
/// cuts of each kind (port down, device deleted, silent loss), each undone before the next; the failover
/// monitors run on both nodes. Afterwards node 2 applied every LSN once, in order, intact, the digests and
/// rings agree, and the monitor never left Up: a single link's loss is never a partner failure.
#[test]
fn lab_nvram_mirror_survives_repeated_cuts_of_every_kind() {
    let Some(lab) =
        LabTopology::from_env_or_skip("lab_nvram_mirror_survives_repeated_cuts_of_every_kind")
    else {
        return;
    };
    use ccm_core::clients::monitor::PartnerState;
    let tcp_port = 19_720;
    let t_nodes = Instant::now();
    let base = |n: u64| ring_base("cuts", n);
    let _files = fresh_rings(&base);
    let nodes = start_nodes(&lab, tcp_port, t_nodes);
    let spec = nvram_spec();
    // Both nodes' events, sampled (the node keeps only its last 256), to explain any monitor change.
    let events = Arc::new(Mutex::new(Vec::<(f64, usize, String)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let hs: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
        let (events, sampling) = (events.clone(), sampling.clone());
        std::thread::spawn(move || {
            let mut last = vec![-1.0f64; hs.len()];
            while sampling.load(Ordering::Relaxed) {
                for (k, h) in hs.iter().enumerate() {
                    for e in h.status().events {
                        if e.at_ms > last[k] {
                            last[k] = e.at_ms;
                            events.lock().unwrap().push((e.at_ms, k + 1, e.what));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (m1, m2, applied2) = start_mirror_pair(&nodes, spec, &base);
    let views = start_monitors(&nodes);
    let t_monitors = Instant::now();
    // Monitor times (since the monitors started) in node time (ms since `t_nodes`).
    let monitor_ms = |d: Duration| (d + (t_monitors - t_nodes)).as_secs_f64() * 1e3;
    let history_before = wait_all_up(&nodes, &m1, &m2, &views);

    let (stop, last, writer) = spawn_full_speed_writer(&m1);
    let active = Arc::new(Mutex::new(None));
    let _guard = CutGuard {
        lab: lab.clone(),
        active: active.clone(),
    };
    let kinds = [
        Cut::PortDown,
        Cut::DeviceDeleted,
        Cut::SilentLoss,
        Cut::PortDown,
        Cut::DeviceDeleted,
        Cut::SilentLoss,
    ];
    let mut report = Vec::new();
    for cut in kinds {
        wait_until(Duration::from_secs(30), "both interconnects up", || {
            all_up(&nodes)
        });
        wait_until(Duration::from_secs(30), "the mirror synced", || {
            m1.is_synced()
        });
        let ic = m1.link().expect("connected").0;
        let durable = m1.durable_lsn();
        let t = Instant::now();
        let cut_at = t_monitors.elapsed().as_secs_f64();
        *active.lock().unwrap() = Some((cut, ic));
        fault_within(&lab, cut.make(ic), Duration::from_secs(20));
        let made_ms = t.elapsed().as_secs_f64() * 1e3;
        wait_until(
            Duration::from_secs(30),
            "the mirror moved to the other interconnect and makes progress",
            || {
                m1.link().is_some_and(|l| l.0 != ic)
                    && m1.is_synced()
                    && m1.durable_lsn().0 > durable.0 + 50
            },
        );
        let moved_ms = t.elapsed().as_secs_f64() * 1e3;
        // Keep the link cut a little while the writer runs on the other one, then undo the cut.
        std::thread::sleep(Duration::from_millis(300));
        fault_within(&lab, cut.undo(ic), Duration::from_secs(20));
        *active.lock().unwrap() = None;
        wait_until(Duration::from_secs(30), "the cut link back up", || {
            all_up(&nodes)
        });
        let d = m1.durable_lsn();
        wait_until(
            Duration::from_secs(30),
            "the mirror progressing after the link came back",
            || m1.is_synced() && m1.durable_lsn().0 > d.0 + 50,
        );
        eprintln!(
            "{cut:?} on interconnect {ic} at {cut_at:.2} s (monitor time), undone at {:.2} s: fault hook \
             {made_ms:.0} ms, mirror progressing on the other link {moved_ms:.0} ms after the cut; now on {:?}, \
             durable {}",
            t_monitors.elapsed().as_secs_f64(),
            m1.link().map(|l| l.0),
            m1.durable_lsn().0
        );
        report.push((cut, ic, moved_ms));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = last.load(Ordering::Relaxed);
    assert!(
        m1.wait_durable(Lsn(n), Duration::from_secs(60)),
        "lsn {n} durable in time: {:?}",
        m1.stats()
    );
    wait_until(Duration::from_secs(30), "node 2 applied everything", || {
        m2.stats().partner_applied == n
    });
    let (s1, s2) = (m1.stats(), m2.stats());
    eprintln!("node 1 stats: {s1:?}");
    eprintln!("node 2 stats: {s2:?}");
    {
        let a2 = applied2.lock().unwrap();
        assert!(
            a2.lsns.iter().copied().eq(1..=n),
            "node 2 applied every LSN once, in order ({} applied, {n} appended)",
            a2.lsns.len()
        );
        assert_eq!(a2.bad_payloads, 0, "payloads intact");
    }
    assert_eq!(
        m1.local_digest(),
        m2.mirror_digest(),
        "digests of node 1's log"
    );
    assert_eq!(s1.protocol_errors + s2.protocol_errors, 0);
    assert!(
        s1.readies as usize > kinds.len(),
        "the mirror moved at every cut: {s1:?}"
    );
    let check = nvram::verify_rings(&m1.paths()[0], &m2.paths()[1], RING).unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(check.lsn_range.map(|r| r.1), Some(Lsn(n)));
    // The monitors: never Down for a single link's loss. Any change (a Suspect: both links seen down at
    // once) is printed with both nodes' events around it, and counted in the result.
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let events = events.lock().unwrap();
    let mut suspects = 0;
    let mut downs = Vec::new();
    for (k, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        let changes = &v.history[history_before[k]..];
        for (at, state, ic) in changes {
            let ms = monitor_ms(*at);
            eprintln!(
                "node {}'s monitor at {ms:.1} ms: {state:?} (link {ic:?})",
                k + 1
            );
            match state {
                PartnerState::Suspect { .. } => {
                    suspects += 1;
                    for (t, node, what) in events.iter() {
                        let interesting = [
                            "Stop",
                            "Partner",
                            "Reinit",
                            "eartbeat",
                            "turn",
                            "removed",
                            "completion",
                            "Down",
                            "Port",
                            "VI",
                            "Session",
                        ]
                        .iter()
                        .any(|w| what.contains(w));
                        if interesting && (ms - 1500.0..=ms + 300.0).contains(t) {
                            eprintln!("    node {node} {t:9.1} ms {what}");
                        }
                    }
                }
                PartnerState::Down { .. } => downs.push((k + 1, ms)),
                _ => {}
            }
        }
    }
    assert!(
        downs.is_empty(),
        "a monitor declared the partner down on a single link's loss (node, ms): {downs:?}"
    );
    for v in &views {
        assert!(matches!(v.lock().unwrap().state, PartnerState::Up { .. }));
    }
    eprintln!(
        "RESULT: {n} entries through {} cuts ({}), all applied once in order on node 2, digests and rings equal \
         ({} entries compared), never PartnerDown, PartnerSuspect {suspects} times; batches {}, resent {}, \
         readies {}, VI errors {}",
        report.len(),
        report
            .iter()
            .map(|(c, ic, ms)| format!("{c:?}@{ic} {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        check.compared,
        s1.batches,
        s1.resent_batches,
        s1.readies,
        s1.vi_errors
    );
    drop(m2);
    if let Ok(m1) = Arc::try_unwrap(m1) {
        m1.close();
    }
    stop_nodes(nodes);
}

/// Partial loss on the interconnect carrying the mirror: 30 % netem loss both ways (no port event) for
/// a few seconds while a writer appends at full speed, then cleared. The monitors run on both nodes.
/// Pinned: nothing is lost or duplicated (node 2 applies every LSN once, in order, intact; digests and
/// rings agree), the monitors never declare the partner down (the other interconnect stays healthy),
/// and the mirror keeps making progress through the loss. What the product does on the lossy link
/// (rides it out on RC retransmissions, or resets the client / fails the link over when RC retries are
/// exhausted or heartbeats go missing) is counted and printed in the RESULT line.
#[test]
fn lab_nvram_mirror_loses_nothing_under_30_percent_loss_on_its_link() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_nvram_mirror_loses_nothing_under_30_percent_loss_on_its_link",
    ) else {
        return;
    };
    use ccm_core::clients::monitor::PartnerState;
    const LOSS_PCT: &str = "30";
    const LOSS_FOR: Duration = Duration::from_secs(5);
    let tcp_port = 19_730;
    let t_nodes = Instant::now();
    let base = |n: u64| ring_base("loss", n);
    let _files = fresh_rings(&base);
    let nodes = start_nodes(&lab, tcp_port, t_nodes);
    let spec = nvram_spec();
    let (m1, m2, applied2) = start_mirror_pair(&nodes, spec, &base);
    let views = start_monitors(&nodes);
    let t_monitors = Instant::now();
    let history_before = wait_all_up(&nodes, &m1, &m2, &views);
    let (stop, last, writer) = spawn_full_speed_writer(&m1);
    std::thread::sleep(Duration::from_millis(500));
    let ic = m1.link().expect("connected").0;
    let (stats_before, durable_before) = (m1.stats(), m1.durable_lsn());
    let events_before: Vec<f64> = nodes
        .iter()
        .map(|n| n.handle().status().events.last().map_or(0.0, |e| e.at_ms))
        .collect();
    let active = Arc::new(Mutex::new(None));
    let _guard = NetemGuard {
        lab: lab.clone(),
        active: active.clone(),
    };
    *active.lock().unwrap() = Some(ic);
    fault_within(
        &lab,
        vec![
            "netem".into(),
            ic.to_string(),
            "loss".into(),
            LOSS_PCT.into(),
        ],
        Duration::from_secs(20),
    );
    // Under loss: sample where the mirror is and how far it got, every 100 ms.
    let t_loss = Instant::now();
    eprintln!(
        "{LOSS_PCT} % loss on interconnect {ic} from {:.2} s monitor time",
        (t_loss - t_monitors).as_secs_f64()
    );
    let mut on_lossy_ms = 0u64;
    let mut samples = 0u64;
    while t_loss.elapsed() < LOSS_FOR {
        std::thread::sleep(Duration::from_millis(100));
        samples += 1;
        if m1.link().is_some_and(|l| l.0 == ic) {
            on_lossy_ms += 100;
        }
    }
    let (stats_loss, durable_loss) = (m1.stats(), m1.durable_lsn());
    let events_loss: Vec<Vec<String>> = nodes
        .iter()
        .zip(&events_before)
        .map(|(n, t)| {
            n.handle()
                .status()
                .events
                .into_iter()
                .filter(|e| e.at_ms > *t)
                .map(|e| format!("{:.1} ms {}", e.at_ms, e.what))
                .collect()
        })
        .collect();
    fault_within(
        &lab,
        vec!["netem".into(), ic.to_string(), "clear".into()],
        Duration::from_secs(20),
    );
    *active.lock().unwrap() = None;
    eprintln!(
        "loss cleared at {:.2} s monitor time",
        t_monitors.elapsed().as_secs_f64()
    );
    wait_until(Duration::from_secs(30), "both interconnects up", || {
        all_up(&nodes)
    });
    let d = m1.durable_lsn();
    wait_until(
        Duration::from_secs(30),
        "the mirror progressing after the loss cleared",
        || m1.is_synced() && m1.durable_lsn().0 > d.0 + 50,
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = last.load(Ordering::Relaxed);
    assert!(
        m1.wait_durable(Lsn(n), Duration::from_secs(60)),
        "lsn {n} durable in time: {:?}",
        m1.stats()
    );
    wait_until(Duration::from_secs(30), "node 2 applied everything", || {
        m2.stats().partner_applied == n
    });
    let (s1, s2) = (m1.stats(), m2.stats());
    eprintln!("node 1 stats: {s1:?}");
    eprintln!("node 2 stats: {s2:?}");
    let count = |k: usize, what: &str| events_loss[k].iter().filter(|e| e.contains(what)).count();
    for (k, evs) in events_loss.iter().enumerate() {
        eprintln!("node {} events during the loss ({}):", k + 1, evs.len());
        for e in evs.iter().take(60) {
            eprintln!("  {e}");
        }
    }
    {
        let a2 = applied2.lock().unwrap();
        assert!(
            a2.lsns.iter().copied().eq(1..=n),
            "node 2 applied every LSN once, in order ({} applied, {n} appended)",
            a2.lsns.len()
        );
        assert_eq!(a2.bad_payloads, 0, "payloads intact");
    }
    assert_eq!(
        m1.local_digest(),
        m2.mirror_digest(),
        "digests of node 1's log"
    );
    assert_eq!(s1.protocol_errors + s2.protocol_errors, 0);
    let check = nvram::verify_rings(&m1.paths()[0], &m2.paths()[1], RING).unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(check.lsn_range.map(|r| r.1), Some(Lsn(n)));
    // The mirror made progress through the loss (on the lossy link or after moving off it).
    assert!(
        durable_loss.0 > durable_before.0 + 100,
        "durable {} before the loss, {} at its end",
        durable_before.0,
        durable_loss.0
    );
    let mut downs = Vec::new();
    let mut suspects = 0;
    for (k, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        for (at, state, link) in &v.history[history_before[k]..] {
            eprintln!(
                "node {}'s monitor at {at:?}: {state:?} (link {link:?})",
                k + 1
            );
            match state {
                PartnerState::Suspect { .. } => suspects += 1,
                PartnerState::Down { .. } => downs.push(k + 1),
                _ => {}
            }
        }
    }
    eprintln!(
        "RESULT: {LOSS_PCT} % loss on interconnect {ic} for {:.1} s under a full-speed writer: {n} entries, all \
         applied once in order, rings equal; durable {} -> {} during the loss; the mirror was on the lossy link \
         {on_lossy_ms} of {} ms sampled; during the loss: mirror VI errors {}, stops {}, readies {}, resent batches \
         {}; node 1 link failures {} (HeartbeatLoss {}, ViError {}), client resets {}, failovers {}, failbacks {}; \
         node 2 link failures {}, client resets {}; monitor Down on nodes {downs:?}, Suspect {suspects} times",
        LOSS_FOR.as_secs_f64(),
        durable_before.0,
        durable_loss.0,
        samples * 100,
        stats_loss.vi_errors - stats_before.vi_errors,
        stats_loss.stops - stats_before.stops,
        stats_loss.readies - stats_before.readies,
        stats_loss.resent_batches - stats_before.resent_batches,
        count(0, "StopClients520"),
        count(0, "HeartbeatLoss, clients"),
        count(0, "ViError, clients"),
        count(0, "ClientReset"),
        count(0, "Failover {"),
        count(0, "Failback {"),
        count(1, "StopClients520"),
        count(1, "ClientReset"),
    );
    assert!(
        downs.is_empty(),
        "a monitor declared the partner down under partial loss: {downs:?}"
    );
    for v in &views {
        assert!(matches!(v.lock().unwrap().state, PartnerState::Up { .. }));
    }
    drop(m2);
    if let Ok(m1) = Arc::try_unwrap(m1) {
        m1.close();
    }
    stop_nodes(nodes);
}

/// Clears the netem loss in force when dropped (whatever happened in the test).
struct NetemGuard {
    lab: LabTopology,
    active: Arc<Mutex<Option<u8>>>,
}
impl Drop for NetemGuard {
    fn drop(&mut self) {
        if let Some(ic) = self.active.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let r = self.lab.fault(&["netem", &ic.to_string(), "clear"]);
            eprintln!("guard: netem {ic} clear: {r:?}");
        }
    }
}

/// An older build's writer (entry format 1: magic `CCMN`, CRC-32) on the other side: its first entry, LSN 1,
/// lands at offset 0 of node 2's mirror ring, where node 2's reader expects node 1's first. Node 2's running
/// mirror refuses it with a typed fault naming the format, the LSN and the offset, applies nothing and
/// overwrites nothing, and node 1's mirror has no fault; node 2 restarted on those files refuses to start
/// with the same error.
#[test]
fn lab_an_older_builds_entry_in_the_partners_log_is_a_typed_fault() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_an_older_builds_entry_in_the_partners_log_is_a_typed_fault",
    ) else {
        return;
    };
    let base = |n: u64| ring_base("format", n);
    let _files = fresh_rings(&base);
    let nodes = start_nodes(&lab, 19_740, Instant::now());
    let (m1, m2, applied2) = start_mirror_pair(&nodes, nvram_spec(), &base);
    wait_until(Duration::from_secs(30), "both mirrors synced", || {
        m1.is_synced() && m2.is_synced()
    });
    assert_eq!(m2.fault(), None);

    // The older build's entry, as its RDMA WRITE would leave it in node 2's mirror ring (a shared mapping).
    let old = payload(1);
    let mut entry = vec![0u8; 32 + old.len()];
    entry[0..4].copy_from_slice(b"CCMN");
    entry[4..8].copy_from_slice(&(old.len() as u32).to_le_bytes());
    entry[8..16].copy_from_slice(&1u64.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&entry[0..16]);
    crc.update(&old);
    entry[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    entry[32..].copy_from_slice(&old);
    let mirror_ring = nvram::ring_paths(&base(2))[1].clone();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&mirror_ring)
            .unwrap();
        f.write_all_at(&entry, 0).unwrap();
    }
    // Node 2's mirror thread looks at its ring at least every IDLE_SLEEP.
    wait_until(
        Duration::from_secs(10),
        "node 2's mirror to report the older build's entry",
        || m2.fault().is_some(),
    );
    let refused = MirrorError::EntryFormat {
        lsn: Lsn(1),
        offset: 0,
    };
    assert_eq!(m2.fault(), Some(MirrorFault::PartnerLog(refused.clone())));
    let fault = m2.fault().unwrap().to_string();
    assert!(
        fault.contains("format 1") && fault.contains("Lsn(1)") && fault.contains("offset 0"),
        "{fault}"
    );
    assert!(m2.stats().protocol_errors >= 1);
    assert_eq!(m2.stats().partner_entries, 0);
    assert!(applied2.lock().unwrap().lsns.is_empty());
    assert_eq!(m1.fault(), None);
    assert_eq!(m1.stats().protocol_errors, 0);
    m2.close();
    let after = std::fs::read(&mirror_ring).unwrap();
    assert_eq!(
        &after[..entry.len()],
        &entry[..],
        "the older entry was overwritten"
    );

    // Node 2's mirror restarted on these files: refused at the start, with the same error.
    match nvram::start(&nodes[1].handle(), nvram_spec(), &base(2), RING) {
        Err(nvram::StartError::Mirror(e)) => assert_eq!(e, refused),
        Err(e) => panic!("node 2's mirror refused to start, but not for the older entry: {e}"),
        Ok(_) => panic!("node 2's mirror started on a ring holding an older build's entry"),
    }
    close_shared(m1);
    stop_nodes(nodes);
}

/// A later build's mirror on the other side, one that reads only a later entry format (3): node 1's mirror
/// learns it from the formats node 2's client told with its partner info and refuses the connection before
/// writing a byte, with a typed fault naming both sides' formats. Appends go on into node 1's own ring
/// (nothing acknowledged, nothing lost), and node 2's ring stays untouched.
#[test]
fn lab_a_partner_that_cannot_read_this_builds_entries_is_refused_at_connect_before_any_write() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_a_partner_that_cannot_read_this_builds_entries_is_refused_at_connect_before_any_write",
    ) else {
        return;
    };
    let base = |n: u64| ring_base("formats", n);
    let _files = fresh_rings(&base);
    let nodes = start_nodes(&lab, 19_750, Instant::now());
    // Node 2: the later build's mirror as node 2's manager sees it: the mirror's client id, a ring of the
    // same size for node 1 to write into, and its formats as private data.
    let later = Formats {
        writes: 3,
        reads: 1 << 3,
    };
    let ring2 = SharedMemory::anonymous(RING as usize).unwrap();
    // (More private data than the wire carries is refused by the node, by name.)
    let too_much = ClientSpec {
        id: ClientId(41),
        private: vec![0; ccm_core::wire::MAX_PRIVATE + 1],
        ..nvram_spec()
    };
    match nodes[1].handle().register(too_much, vec![]) {
        Err(e @ NodeError::Client(41, _)) => {
            assert!(
                e.to_string()
                    .contains("65 bytes of private data; at most 64"),
                "{e}"
            )
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("65 bytes of private data were taken"),
    }
    let h2 = nodes[1]
        .handle()
        .register(
            ClientSpec {
                private: later.encode().to_vec(),
                ..nvram_spec()
            },
            vec![ClientMemory {
                memory: ring2.clone(),
                remote_write: true,
            }],
        )
        .unwrap();
    // (A second registration of the same id, or one asking for no VI, is refused by name too.)
    for (spec, says) in [
        (nvram_spec(), "already registered"),
        (
            ClientSpec {
                id: ClientId(42),
                vi_count: 0,
                ..nvram_spec()
            },
            "0 VIs asked for",
        ),
    ] {
        match nodes[1].handle().register(spec, vec![]) {
            Err(e @ NodeError::Client(..)) => assert!(e.to_string().contains(says), "{e}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("taken, but it should be refused as {says:?}"),
        }
    }
    let m1 = nvram::start(&nodes[0].handle(), nvram_spec(), &base(1), RING).unwrap();
    // The pair's VIs come up: node 2's client is told Ready with node 1's formats.
    let t = Instant::now();
    let partner = loop {
        match h2.events.recv_timeout(Duration::from_secs(30)) {
            Ok(ClientNotice::Ready { partner, .. }) => break partner,
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(30)),
            Err(e) => panic!("node 2's client was never told Ready: {e}"),
        }
    };
    assert_eq!(
        Formats::decode(&partner.private),
        Ok(Some(Formats::THIS_BUILD))
    );
    wait_until(
        Duration::from_secs(10),
        "node 1's mirror to refuse the partner's formats",
        || m1.fault().is_some(),
    );
    let refused = FormatsError::PartnerCannotRead {
        writes: 2,
        partner_reads: vec![3],
    };
    assert_eq!(m1.fault(), Some(MirrorFault::PartnerFormats(refused)));
    for lsn in 1..=50 {
        m1.append(&payload(lsn)).unwrap();
    }
    // The engine's wait says why, typed: an LSN never appended at once, a timeout with the fault.
    let t = Instant::now();
    assert_eq!(
        m1.mirror_until(Lsn(51), Duration::from_secs(10)),
        Err(MirrorWaitError::NotAppended {
            lsn: Lsn(51),
            appended: Lsn(50)
        })
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    match m1.mirror_until(Lsn(50), Duration::from_millis(500)) {
        Err(
            e @ MirrorWaitError::Timeout {
                durable: Lsn(0),
                link: None,
                fault: Some(MirrorFault::PartnerFormats(_)),
                ..
            },
        ) => assert!(
            e.to_string()
                .contains("writing stopped: the partner reads entry formats [3]"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    let s = m1.stats();
    assert_eq!((s.appended, s.durable, s.batches), (50, 0, 0), "{s:?}");
    assert!(!m1.is_synced());
    let mut bytes = vec![0u8; RING as usize];
    ring2.read(0, &mut bytes).unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "node 1 wrote into a ring whose reader cannot read it"
    );
    m1.close();
    h2.unregister();
    stop_nodes(nodes);
}

/// Node 2's manager is older (protocol versions up to 2): no private data crosses, so neither mirror hears
/// the other's formats, and they mirror as before, each entry's format checked as it is read.
#[test]
fn lab_mirrors_whose_partner_manager_is_older_than_private_data_mirror_as_before() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_mirrors_whose_partner_manager_is_older_than_private_data_mirror_as_before",
    ) else {
        return;
    };
    let base = |n: u64| ring_base("v2", n);
    let _files = fresh_rings(&base);
    let t_nodes = Instant::now();
    trace::to_file_if_asked();
    let n1 = Node::start(config(&lab, 1, 19_760), t_nodes).unwrap();
    let mut older = config(&lab, 2, 19_760);
    older.versions = (1, 2);
    let n2 = Node::start(older, t_nodes).unwrap();
    let nodes = vec![n1, n2];
    let (m1, m2, applied2) = start_mirror_pair(&nodes, nvram_spec(), &base);
    wait_until(Duration::from_secs(30), "both mirrors synced", || {
        m1.is_synced() && m2.is_synced()
    });
    let mut last = Lsn(0);
    for lsn in 1..=200 {
        last = m1.append(&payload(lsn)).unwrap();
    }
    assert_eq!(m1.mirror_until(last, Duration::from_secs(30)), Ok(()));
    wait_until(Duration::from_secs(10), "node 2 applied all 200", || {
        applied2.lock().unwrap().lsns.len() == 200
    });
    let a = applied2.lock().unwrap();
    assert_eq!(a.lsns, (1..=200).collect::<Vec<_>>());
    assert_eq!(a.bad_payloads, 0);
    drop(a);
    assert_eq!((m1.fault(), m2.fault()), (None, None));
    assert!(
        nodes[0]
            .handle()
            .status()
            .events
            .iter()
            .any(|e| e.what.contains("PeerInfoExchanged415") && e.what.contains("version: 2")),
        "the session negotiated version 2: {:?}",
        nodes[0].handle().status().events
    );
    m2.close();
    close_shared(m1);
    stop_nodes(nodes);
}
