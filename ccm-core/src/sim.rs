//! A deterministic simulator of the HA pair: two nodes running [`Manager`], N interconnects, a
//! network with seeded faults and scripted clients. No threads, no clocks: one seeded
//! [`ChaCha8Rng`] and a time-ordered event queue, so a seed replays exactly.
//!
//! # The model
//! * **Sessions** behave like TCP or RC: reliable and in order while the interconnect passes traffic.
//!   Partial loss shows up as retransmission delay (head-of-line blocking in the session's FIFO).
//!   Messages on different sessions or interconnects reorder freely. When an interconnect stops
//!   passing traffic (port down, silent death, dead device) every session on it *breaks* in both
//!   directions: the message in flight and everything after it is lost, with no notice (the
//!   managers must notice by port events, VI errors or missed heartbeats). A closed session
//!   delivers what was sent before the close, then a close notice, as TCP's FIN does.
//! * **Faults** (seeded per scenario): message delay jitter and spikes, retransmission delay from
//!   loss, admin link down/up (port events on both nodes), silent link death (no event; VI errors
//!   may follow after an RC timeout), a dead device on one node (async event there only), a crash of
//!   a node (silent) and its restart with a new incarnation, late starts, slow clients, clients
//!   registered late, on one side only, unregistering and coming back, growing buffers and
//!   opening/freeing VIs, and a client VI error on a healthy link (once or in a loop: a peer client
//!   that never reposts receives).
//! * **Load** (adaptive balancing): each interconnect has a seeded capacity and each client a seeded
//!   load pattern (idle, constant, alternating between two rates, or a burst that starts later);
//!   while a client is Ready each node feeds its manager the bytes its side posted every
//!   `balance_period` ([`Input::Measured`]), until half a second after the last fault.
//! * **Clients** create VIs when asked, after a seeded delay; the simulator keeps the "fabric": which
//!   VI exists on which node and to which remote VI it was slam connected.
//!
//! # Invariants (checked after every event, and at the end)
//! 1. A client's events follow its state machine: Ready only from idle, Stop only from ready,
//!    Resumed only after Stop; PartnerDown / PartnerClosed return it to idle.
//! 2. No client is told Ready/Resumed for a generation unless the partner's peer client (in its
//!    current life) slam connected that generation.
//! 3. Slam connect only uses live local VIs; releases only release live VIs.
//! 4. A client the simulator last told Ready is Ready in its manager's status.
//! 5. No PartnerDown while the partner has been alive and some interconnect healthy for the whole
//!    `partner_down_after` before it.
//! 6. No handshake is refused (both nodes share cluster, secret and versions).
//! 7. At the end, `settle` after the last fault healed: every interconnect up on both nodes; every
//!    client registered on both nodes Ready on both with the same interconnect and generation, its
//!    VIs pairwise slam connected to each other's, windows mirrored; every client registered on one
//!    side only waiting and idle; no VI leaked; so every Stop was followed by Resumed or PartnerDown.
//! 8. Per-client isolation: a client VI error on a healthy link (or the partner's `ClientReset` for
//!    it) stops no other client and changes no interconnect's state; the placer never binds a reset
//!    client again before its back-off has passed.
//! 9. Balancing without storms: no pinned client is ever migrated; two migrations are at least
//!    `balance_period` apart, so at most `balance_window / balance_period` happen in any window; a
//!    client is migrated again only after `balance_dwell`.
//! 10. Standby bindings: at the end both nodes hold the same standbys for every Ready client, each
//!     on another interconnect than its binding, ripe on both, its VIs pairwise slam connected; a
//!     standby's VIs are no leak. (Invariant 2 covers a promoted standby: its client goes only
//!     once the partner's end is connected.)
//! 11. Private data: a client's partner info carries the partner's peer client's private data exactly,
//!     when both managers speak protocol version 3 (seven seeds in eight), and none when node 2 is an
//!     older build (up to version 2); every message survives the wire's encoding.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::manager::{
    Action, AsyncEvent, ClientEvent, ClientRequest, ClientSpec, ClientStatus, Config, Input,
    LinkStatus, Manager, PartnerStatus, SessionId, Step, ViRef,
};
use crate::wire::{
    BandwidthClass, ClientId, ClientLoad, ClusterId, Generation, InterconnectId, MemoryWindow,
    Message, Mtu, NodeId, ViAddress, CLIENT_PRIVATE_VERSION,
};
use crate::Time;

/// Node index in the simulation: 0 is node A (the placer), 1 is node B.
pub type NodeIx = usize;

/// A broken invariant, with everything needed to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Simulated time of the violation.
    pub at: Time,
    /// What broke.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {}: {} (replay: ccm-sim --seed {} --trace)",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events processed.
    pub events: u64,
    /// Interconnects.
    pub interconnects: u8,
    /// Clients in the scenario.
    pub clients: usize,
    /// Faults injected.
    pub faults: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to broken sessions.
    pub lost: u64,
    /// Clients told Ready or Resumed.
    pub readies: u64,
    /// Clients told Stop.
    pub stops: u64,
    /// PartnerDown events told.
    pub partner_downs: u64,
    /// Client resets (per-client isolation) on either node.
    pub client_resets: u64,
    /// Migrations by the adaptive balancer.
    pub migrations: u64,
    /// Standby bindings promoted (on either node).
    pub promotions: u64,
    /// Simulated time when the run ended.
    pub end: Time,
}

impl Report {
    /// Adds another run's counts to these totals (`end` becomes the later of the two).
    pub fn add(&mut self, r: &Report) {
        self.events += r.events;
        self.faults += r.faults;
        self.delivered += r.delivered;
        self.lost += r.lost;
        self.readies += r.readies;
        self.stops += r.stops;
        self.partner_downs += r.partner_downs;
        self.client_resets += r.client_resets;
        self.migrations += r.migrations;
        self.promotions += r.promotions;
        self.end = self.end.max(r.end);
    }
}

#[derive(Clone, Debug)]
enum Fault {
    LinkDown {
        ic: u8,
        dur: Duration,
    },
    Silent {
        ic: u8,
        dur: Duration,
    },
    DeviceDead {
        ic: u8,
        node: NodeIx,
        dur: Duration,
    },
    Crash {
        node: NodeIx,
        down: Duration,
    },
    Churn {
        node: NodeIx,
        client: ClientId,
        away: Duration,
    },
    OpenVi {
        node: NodeIx,
        client: ClientId,
    },
    FreeVi {
        node: NodeIx,
        client: ClientId,
    },
    Grow {
        node: NodeIx,
        client: ClientId,
    },
    /// A VI error of one client on its (healthy) link, `repeat` more times after each rebinding.
    ClientViError {
        node: NodeIx,
        client: ClientId,
        repeat: u8,
    },
}

/// A client's offered load, bytes/s of the pair (each node posts half).
#[derive(Clone, Copy, Debug)]
enum Load {
    Idle,
    Constant(u64),
    /// `a` and `b` in turns of `every`.
    Alternating {
        a: u64,
        b: u64,
        every: Duration,
    },
    /// Idle until `from`, then `rate`.
    Burst {
        from: Time,
        rate: u64,
    },
}

impl Load {
    fn rate(self, now: Time) -> u64 {
        match self {
            Load::Idle => 0,
            Load::Constant(r) => r,
            Load::Alternating { a, b, every } => {
                if (now.as_nanos() / every.as_nanos().max(1) as u64) % 2 == 0 {
                    a
                } else {
                    b
                }
            }
            Load::Burst { from, rate } => {
                if now >= from {
                    rate
                } else {
                    0
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct ScenarioClient {
    spec: ClientSpec,
    load: Load,
    on: [bool; 2],
    register_at: [Time; 2],
    create_delay: (u64, u64),
}

#[derive(Clone, Debug)]
struct Scenario {
    interconnects: u8,
    start: [Time; 2],
    clients: Vec<ScenarioClient>,
    faults: Vec<(Time, Fault)>,
    base_delay_ns: (u64, u64),
    loss: f64,
    rto_ns: (u64, u64),
    spike: f64,
    heal: Time,
    capacity: Vec<u64>,
}

fn scenario(rng: &mut ChaCha8Rng) -> Scenario {
    let interconnects = rng.gen_range(1..=3u8);
    let start_b = if rng.gen_bool(0.4) {
        Time::ZERO
    } else {
        Time(rng.gen_range(0..1_000_000_000))
    };
    let start = [Time::ZERO, start_b];
    let n = rng.gen_range(1..=5u32);
    let clients = (1..=n)
        .map(|id| {
            let r: f64 = rng.gen();
            let on = if r < 0.85 {
                [true, true]
            } else if r < 0.925 {
                [true, false]
            } else {
                [false, true]
            };
            let mut register_at = [Time::ZERO; 2];
            for s in 0..2 {
                register_at[s] = if rng.gen_bool(0.7) {
                    start[s]
                } else {
                    start[s] + Duration::from_nanos(rng.gen_range(0..1_500_000_000))
                };
            }
            const MB: u64 = 1_000_000;
            let load = match rng.gen_range(0..6) {
                0 | 1 => Load::Idle,
                2 => Load::Constant(rng.gen_range(0..20 * MB)),
                3 => Load::Constant(rng.gen_range(20 * MB..200 * MB)),
                4 => Load::Alternating {
                    a: rng.gen_range(0..200 * MB),
                    b: rng.gen_range(0..200 * MB),
                    every: Duration::from_millis(rng.gen_range(50..3000)),
                },
                _ => Load::Burst {
                    from: Time(rng.gen_range(0..2_000_000_000)),
                    rate: rng.gen_range(50 * MB..200 * MB),
                },
            };
            let create_delay = if rng.gen_bool(0.2) {
                (5_000_000, 60_000_000)
            } else {
                (20_000, 300_000)
            };
            ScenarioClient {
                spec: ClientSpec {
                    id: ClientId(id),
                    name: format!("client-{id}"),
                    class: if rng.gen_bool(0.3) {
                        BandwidthClass::High
                    } else {
                        BandwidthClass::Low
                    },
                    vi_count: rng.gen_range(1..=3),
                    private: Vec::new(), // set per node when it registers
                    pinned: if rng.gen_bool(0.1) {
                        Some(InterconnectId(rng.gen_range(0..interconnects)))
                    } else {
                        None
                    },
                },
                load,
                on,
                register_at,
                create_delay,
            }
        })
        .collect::<Vec<_>>();
    let nfaults = rng.gen_range(0..=5);
    let mut faults = Vec::new();
    for _ in 0..nfaults {
        let at = Time(rng.gen_range(0..2_000_000_000));
        let dur = Duration::from_nanos(rng.gen_range(1_000_000..600_000_000));
        let ic = rng.gen_range(0..interconnects);
        let node = rng.gen_range(0..2);
        let client = ClientId(rng.gen_range(1..=n));
        let f = match rng.gen_range(0..9) {
            0 | 1 => Fault::LinkDown { ic, dur },
            2 | 3 => Fault::Silent { ic, dur },
            4 => Fault::DeviceDead { ic, node, dur },
            5 => Fault::Crash {
                node,
                down: Duration::from_nanos(rng.gen_range(0..900_000_000)),
            },
            6 => Fault::Churn {
                node,
                client,
                away: dur,
            },
            7 => Fault::ClientViError {
                node,
                client,
                repeat: rng.gen_range(0..=5),
            },
            _ => match rng.gen_range(0..3) {
                0 => Fault::OpenVi { node, client },
                1 => Fault::FreeVi { node, client },
                _ => Fault::Grow { node, client },
            },
        };
        faults.push((at, f));
    }
    let heal = faults
        .iter()
        .map(|(at, f)| match f {
            Fault::LinkDown { dur, .. }
            | Fault::Silent { dur, .. }
            | Fault::DeviceDead { dur, .. }
            | Fault::Churn { away: dur, .. } => *at + *dur,
            Fault::Crash { down, .. } => *at + *down + Duration::from_millis(200),
            Fault::ClientViError { repeat, .. } => {
                *at + Duration::from_millis(40) * u32::from(*repeat)
            }
            _ => *at,
        })
        .chain(clients.iter().flat_map(|c| c.register_at))
        .chain(start)
        .max()
        .unwrap_or(Time::ZERO);
    let capacity = (0..interconnects)
        .map(|_| rng.gen_range(50_000_000..300_000_000u64))
        .collect();
    let loss = [0.0, 0.001, 0.01, 0.05][rng.gen_range(0..4)];
    let lo = rng.gen_range(5_000..50_000);
    Scenario {
        interconnects,
        start,
        clients,
        faults,
        base_delay_ns: (lo, lo * 4),
        loss,
        rto_ns: (2_000_000, 10_000_000),
        spike: 0.01,
        heal,
        capacity,
    }
}

#[derive(Debug)]
enum Ev {
    Start(NodeIx),
    Deliver {
        to: NodeIx,
        s: usize,
        msg: Message,
    },
    CloseNotice {
        to: NodeIx,
        s: usize,
    },
    Established {
        to: NodeIx,
        s: usize,
        life: u32,
    },
    ConnectFailed {
        to: NodeIx,
        ic: u8,
        attempt: u64,
        life: u32,
    },
    Input {
        to: NodeIx,
        life: u32,
        input: Input,
    },
    Timer {
        to: NodeIx,
        life: u32,
        deadline: Time,
    },
    VisCreated {
        to: NodeIx,
        life: u32,
        client: ClientId,
        gen: Generation,
        ic: u8,
        count: u8,
    },
    VisConnected {
        to: NodeIx,
        life: u32,
        client: ClientId,
        gen: Generation,
    },
    Register {
        to: NodeIx,
        client: usize,
    },
    Fault(Fault),
    HealLink {
        ic: u8,
        kind: u8,
        node: NodeIx,
    },
    Restart(NodeIx),
    RcTimeout {
        ic: u8,
    },
    Sample {
        to: NodeIx,
        life: u32,
    },
}

struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    Idle,
    Ready(InterconnectId, Generation),
    Stopped,
}

#[derive(Debug)]
struct SimClient {
    registered: bool,
    intended: bool,
    told: Told,
    windows: Vec<MemoryWindow>,
    partner_windows: Option<Vec<MemoryWindow>>,
    buffer: u64,
}

#[derive(Debug, Clone, Copy)]
struct LiveVi {
    client: ClientId,
    gen: Generation,
    ic: u8,
    remote: Option<u32>,
}

struct Node {
    alive: bool,
    started: bool,
    life: u32,
    alive_since: Time,
    mgr: Option<Manager>,
    listening: Vec<bool>,
    vis: BTreeMap<u32, LiveVi>,
    next_qpn: u32,
    slammed: BTreeSet<(ClientId, Generation)>,
    clients: BTreeMap<ClientId, SimClient>,
    sessions: HashMap<u64, usize>,
}

struct Session {
    ic: u8,
    sid: [u64; 2],
    open: [bool; 2],
    broken: bool,
    fifo: [Time; 2],
    life: [u32; 2],
}

struct Ic {
    down: bool,
    silent: bool,
    dead: [bool; 2],
    healthy_since: Option<Time>,
}

impl Ic {
    fn passes(&self) -> bool {
        !self.down && !self.silent && !self.dead[0] && !self.dead[1]
    }
}

/// One simulation run.
pub struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    sc: Scenario,
    now: Time,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    nodes: [Node; 2],
    ics: Vec<Ic>,
    sessions: Vec<Session>,
    next_sid: u64,
    cfg: [Config; 2],
    trace: bool,
    report: Report,
    settle: Duration,
    /// While a client reset is handled: the only client that may be told Stop (besides one the
    /// balancer migrates in the same turn, for its own reasons).
    isolating: Option<ClientId>,
    migrating: Option<ClientId>,
    /// Placer: when each reset client may be bound again, and the interconnect it was reset on (a
    /// failure of that interconnect forgives the back-off).
    retry_at: BTreeMap<ClientId, (Time, InterconnectId)>,
    /// Placer: recent migrations (time, client), for invariant 9.
    migrations: Vec<(Time, ClientId)>,
}

/// Simulated time after the last fault heals by which everything must be Ready again.
pub const SETTLE: Duration = Duration::from_millis(2000);

fn gid(node: NodeIx, ic: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[10] = 0xff;
    g[11] = 0xff;
    g[12] = 10;
    g[14] = ic;
    g[15] = node as u8 + 1;
    g
}

impl Sim {
    /// A simulation of the scenario drawn from `seed`.
    pub fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sc = scenario(&mut rng);
        let mut cfg = [
            Config::new(
                NodeId(1),
                NodeId(2),
                ClusterId(7),
                b"s3cret".to_vec(),
                sc.interconnects,
            ),
            Config::new(
                NodeId(2),
                NodeId(1),
                ClusterId(7),
                b"s3cret".to_vec(),
                sc.interconnects,
            ),
        ];
        // One seed in eight: node 2 is an older build, speaking protocol versions up to 2 (no private
        // data). Chosen from the seed, not drawn, so every seed's random stream is what it was.
        if older_partner(seed) {
            cfg[1].max_version = 2;
        }
        let dwell = Duration::from_millis([100, 500, 2000][rng.gen_range(0..3)]);
        for c in &mut cfg {
            c.capacity = sc.capacity.clone();
            c.balance_dwell = dwell;
        }
        let mk = |side: usize| Node {
            alive: false,
            started: false,
            life: 0,
            alive_since: Time::ZERO,
            mgr: None,
            listening: vec![false; sc.interconnects as usize],
            vis: BTreeMap::new(),
            next_qpn: 100,
            slammed: BTreeSet::new(),
            clients: sc
                .clients
                .iter()
                .filter(|c| c.on[side])
                .map(|c| {
                    (
                        c.spec.id,
                        SimClient {
                            registered: false,
                            intended: false,
                            told: Told::Idle,
                            windows: Vec::new(),
                            partner_windows: None,
                            buffer: 4096,
                        },
                    )
                })
                .collect(),
            sessions: HashMap::new(),
        };
        let ics = (0..sc.interconnects)
            .map(|_| Ic {
                down: false,
                silent: false,
                dead: [false; 2],
                healthy_since: Some(Time::ZERO),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: [mk(0), mk(1)],
            ics,
            sessions: Vec::new(),
            next_sid: 1,
            cfg,
            trace,
            report: Report {
                interconnects: sc.interconnects,
                clients: sc.clients.len(),
                faults: sc.faults.len(),
                ..Report::default()
            },
            settle: SETTLE,
            isolating: None,
            migrating: None,
            retry_at: BTreeMap::new(),
            migrations: Vec::new(),
            sc,
        };
        for n in 0..2 {
            let at = sim.sc.start[n];
            sim.at(at, Ev::Start(n));
        }
        for (ix, c) in sim.sc.clients.clone().iter().enumerate() {
            for n in 0..2 {
                if c.on[n] {
                    sim.at(c.register_at[n], Ev::Register { to: n, client: ix });
                }
            }
        }
        for (at, f) in sim.sc.faults.clone() {
            sim.at(at, Ev::Fault(f));
        }
        sim
    }

    fn at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            seed: self.seed,
            at: self.now,
            what,
        }
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = self.sc.base_delay_ns;
        let mut d = self.rng.gen_range(lo..=hi);
        if self.rng.gen_bool(self.sc.loss) {
            d += self.rng.gen_range(self.sc.rto_ns.0..=self.sc.rto_ns.1);
        }
        if self.rng.gen_bool(self.sc.spike) {
            d += self.rng.gen_range(0..5_000_000);
        }
        Duration::from_nanos(d)
    }

    /// Runs to the end; `Err` on the first broken invariant.
    pub fn run(mut self) -> Result<Report, Failure> {
        let end = self.sc.heal + self.settle;
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.report.events += 1;
            self.event(q.ev)?;
        }
        self.now = end;
        self.report.end = end;
        self.check_end()?;
        Ok(self.report)
    }

    fn input(&mut self, n: NodeIx, input: Input) -> Result<(), Failure> {
        if !self.nodes[n].alive {
            return Ok(());
        }
        if self.trace {
            println!("{} node{} <- {:?}", self.now, n, input);
        }
        let now = self.now;
        let mgr = self.nodes[n]
            .mgr
            .as_mut()
            .expect("alive node has a manager");
        mgr.handle(now, input);
        self.drain(n)?;
        self.check_consistency(n)
    }

    fn drain(&mut self, n: NodeIx) -> Result<(), Failure> {
        loop {
            let Some(a) = self.nodes[n].mgr.as_mut().and_then(|m| m.poll_action()) else {
                return Ok(());
            };
            if self.trace {
                match &a {
                    Action::Step { at, step } => println!("{at} node{n} step {step:?}"),
                    Action::Send {
                        msg: Message::Heartbeat(_),
                        ..
                    } => {}
                    other => println!("{} node{} -> {:?}", self.now, n, other),
                }
            }
            self.action(n, a)?;
        }
    }

    fn action(&mut self, n: NodeIx, a: Action) -> Result<(), Failure> {
        let life = self.nodes[n].life;
        match a {
            Action::Listen { ic } => self.nodes[n].listening[ic.0 as usize] = true,
            Action::Connect { ic, attempt } => self.connect(n, ic.0, attempt),
            Action::CloseSession { session, .. } => {
                if let Some(s) = self.nodes[n].sessions.remove(&session.0) {
                    self.sessions[s].open[n] = false;
                    let other = 1 - n;
                    if !self.sessions[s].broken && self.sessions[s].open[other] {
                        let at = self.fifo_time(s, n);
                        self.at(at, Ev::CloseNotice { to: other, s });
                    }
                }
            }
            Action::Send { session, msg, .. } => {
                if let Some(&s) = self.nodes[n].sessions.get(&session.0) {
                    let other = 1 - n;
                    if !self.sessions[s].broken {
                        let at = self.fifo_time(s, n);
                        self.at(at, Ev::Deliver { to: other, s, msg });
                    }
                }
            }
            Action::SlamConnectControl { .. } => {}
            Action::CreateClientVis {
                client,
                ic,
                generation,
                count,
            } => {
                let (lo, hi) = self
                    .sc
                    .clients
                    .iter()
                    .find(|c| c.spec.id == client)
                    .map(|c| c.create_delay)
                    .unwrap_or((20_000, 300_000));
                let d = Duration::from_nanos(self.rng.gen_range(lo..=hi));
                let at = self.now + d;
                self.at(
                    at,
                    Ev::VisCreated {
                        to: n,
                        life,
                        client,
                        gen: generation,
                        ic: ic.0,
                        count,
                    },
                );
            }
            Action::SlamConnect {
                client,
                ic,
                generation,
                local,
                remote,
            } => {
                if local.len() != remote.len() {
                    return Err(self.fail(format!(
                        "node{n} slam connects {client:?} with {} local and {} remote VIs",
                        local.len(),
                        remote.len()
                    )));
                }
                for (l, r) in local.iter().zip(&remote) {
                    let ok = self.nodes[n]
                        .vis
                        .get(&l.qpn)
                        .is_some_and(|v| v.client == client && v.gen == generation && v.ic == ic.0);
                    if !ok || r.interconnect != ic || l.interconnect != ic {
                        return Err(self.fail(format!(
                            "node{n} slam connects a VI that is not {client:?}/{generation:?}'s on {ic:?}"
                        )));
                    }
                    self.nodes[n].vis.get_mut(&l.qpn).expect("checked").remote = Some(r.qpn);
                }
                // Connecting queue pairs takes a while (the driver does it off its event loop).
                let d = Duration::from_nanos(self.rng.gen_range(10_000..=200_000));
                let at = self.now + d;
                self.at(
                    at,
                    Ev::VisConnected {
                        to: n,
                        life,
                        client,
                        gen: generation,
                    },
                );
            }
            Action::ReleaseClientVis {
                client, generation, ..
            } => {
                let before = self.nodes[n].vis.len();
                self.nodes[n]
                    .vis
                    .retain(|_, v| !(v.client == client && v.gen == generation));
                if self.nodes[n].vis.len() == before {
                    return Err(self.fail(format!(
                        "node{n} releases {client:?}/{generation:?} which has no live VI"
                    )));
                }
            }
            Action::Tell { client, event } => self.tell(n, client, event)?,
            Action::LinkRefused { ic, error } => {
                return Err(self.fail(format!("node{n} refused a handshake on {ic:?}: {error}")))
            }
            Action::ArmTimer { deadline } => {
                self.at(
                    deadline.max(self.now),
                    Ev::Timer {
                        to: n,
                        life,
                        deadline,
                    },
                );
            }
            Action::Step { at, step } => self.check_step(n, at, step)?,
        }
        Ok(())
    }

    /// Invariant 8, the back-off half.
    fn check_step(&mut self, n: NodeIx, at: Time, step: Step) -> Result<(), Failure> {
        if matches!(step, Step::ClientReset { .. }) {
            self.report.client_resets += 1;
        }
        if matches!(step, Step::Promote { .. }) {
            self.report.promotions += 1;
        }
        if n != 0 {
            return Ok(());
        }
        match step {
            Step::Migrate { client, .. } => {
                self.report.migrations += 1;
                self.migrating = Some(client);
                let cfg = &self.cfg[0];
                let pinned = self
                    .sc
                    .clients
                    .iter()
                    .any(|c| c.spec.id == client && c.spec.pinned.is_some());
                if pinned {
                    return Err(self.fail(format!("node0 migrates pinned {client:?}")));
                }
                if let Some((t, _)) = self.migrations.last() {
                    if at.saturating_since(*t) < cfg.balance_period {
                        return Err(self.fail(format!(
                            "two migrations within a balance period ({t} and {at})"
                        )));
                    }
                }
                if let Some((t, _)) = self.migrations.iter().rev().find(|(_, c)| *c == client) {
                    if at.saturating_since(*t) < cfg.balance_dwell {
                        return Err(self.fail(format!(
                            "{client:?} migrated at {t} and again at {at}, within the dwell time"
                        )));
                    }
                }
                let window = cfg.balance_window;
                let bound = (window.as_nanos() / cfg.balance_period.as_nanos()) as usize + 1;
                self.migrations.push((at, client));
                let recent = self
                    .migrations
                    .iter()
                    .filter(|(t, _)| at.saturating_since(*t) < window)
                    .count();
                if recent > bound {
                    return Err(self.fail(format!(
                        "migration storm: {recent} migrations within {window:?}"
                    )));
                }
            }
            Step::ClientReset {
                client,
                ic,
                after: Some(after),
                ..
            } => {
                self.retry_at.insert(client, (at + after, ic));
            }
            // The link failed: a reset on it was its failure showing first (the manager forgives it).
            Step::StopClients520 { ic, .. } => self.retry_at.retain(|_, (_, on)| *on != ic),
            Step::ClientReset { after: None, .. } => {
                return Err(self.fail("the placer reset a client without a back-off".into()))
            }
            Step::CreateVis420 { client, .. } | Step::Promote { client, .. } => {
                if let Some((t, _)) = self.retry_at.get(&client).filter(|(t, _)| at < *t) {
                    return Err(self.fail(format!(
                        "node0 binds {client:?} again at {at}, before its reset back-off ends at {t}"
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs one input that must only reset `client` (invariant 8).
    fn input_isolated(&mut self, n: NodeIx, client: ClientId, input: Input) -> Result<(), Failure> {
        let before: Vec<Vec<LinkStatus>> = self
            .nodes
            .iter()
            .map(|nd| nd.mgr.as_ref().map(|m| m.link_status()).unwrap_or_default())
            .collect();
        self.isolating = Some(client);
        self.migrating = None;
        let r = self.input(n, input);
        self.isolating = None;
        self.migrating = None;
        r?;
        let after = self.nodes[n]
            .mgr
            .as_ref()
            .map(|m| m.link_status())
            .unwrap_or_default();
        if after != before[n] {
            return Err(self.fail(format!(
                "node{n}: resetting {client:?} changed the interconnects from {:?} to {after:?}",
                before[n]
            )));
        }
        Ok(())
    }

    fn fifo_time(&mut self, s: usize, from: NodeIx) -> Time {
        let d = self.delay();
        let t = (self.now + d).max(self.sessions[s].fifo[from] + Duration::from_nanos(1));
        self.sessions[s].fifo[from] = t;
        t
    }

    fn connect(&mut self, n: NodeIx, ic: u8, attempt: u64) {
        let other = 1 - n;
        let life = self.nodes[n].life;
        let i = &self.ics[ic as usize];
        if i.down {
            let at = self.now + Duration::from_micros(50);
            self.at(
                at,
                Ev::ConnectFailed {
                    to: n,
                    ic,
                    attempt,
                    life,
                },
            );
            return;
        }
        if !i.passes() {
            return; // SYNs vanish; the connect times out.
        }
        let d = self.delay() + self.delay();
        if !(self.nodes[other].alive && self.nodes[other].listening[ic as usize]) {
            let at = self.now + d;
            self.at(
                at,
                Ev::ConnectFailed {
                    to: n,
                    ic,
                    attempt,
                    life,
                },
            );
            return;
        }
        let s = self.sessions.len();
        let sid = [self.next_sid, self.next_sid + 1];
        self.next_sid += 2;
        let at = self.now + d;
        self.sessions.push(Session {
            ic,
            sid,
            open: [false; 2],
            broken: false,
            fifo: [at; 2],
            life: [self.nodes[0].life, self.nodes[1].life],
        });
        // The connector learns first; both at the same instant, before any message can arrive.
        self.at(at, Ev::Established { to: n, s, life });
        let other_life = self.nodes[other].life;
        self.at(
            at,
            Ev::Established {
                to: other,
                s,
                life: other_life,
            },
        );
    }

    fn tell(&mut self, n: NodeIx, client: ClientId, event: ClientEvent) -> Result<(), Failure> {
        let other = 1 - n;
        let now = self.now;
        let partner_alive_since = self.nodes[other]
            .alive
            .then_some(self.nodes[other].alive_since);
        let healthy_long = {
            let w = self.cfg[n].partner_down_after;
            self.ics.iter().any(|i| {
                i.healthy_since
                    .is_some_and(|h| now.saturating_since(h) >= w)
            }) && partner_alive_since.is_some_and(|a| now.saturating_since(a) >= w)
        };
        let partner_slammed =
            |g: Generation, s: &Sim| s.nodes[other].slammed.contains(&(client, g));
        let Some(c) = self.nodes[n].clients.get(&client) else {
            return Err(self.fail(format!("node{n} tells unknown {client:?} {event:?}")));
        };
        let told = c.told;
        let next = match (&event, told) {
            (ClientEvent::Ready { ic, generation }, Told::Idle)
            | (ClientEvent::Resumed { ic, generation }, Told::Stopped) => {
                if !partner_slammed(*generation, self) {
                    return Err(self.fail(format!(
                        "node{n} tells {client:?} {event:?} but the partner's client has not slam connected it"
                    )));
                }
                self.report.readies += 1;
                Told::Ready(*ic, *generation)
            }
            (ClientEvent::Stop { .. }, _)
                if self.isolating.is_some_and(|c| c != client)
                    && self.migrating != Some(client) =>
            {
                return Err(self.fail(format!(
                    "node{n} stops {client:?} while resetting only {:?}",
                    self.isolating
                )));
            }
            (ClientEvent::Stop { ic }, Told::Ready(on, _)) if *ic == on => {
                self.report.stops += 1;
                Told::Stopped
            }
            (ClientEvent::PartnerDown, _) => {
                if healthy_long {
                    return Err(self.fail(format!(
                        "node{n} declares the partner down although it is alive and an interconnect has been healthy for partner_down_after"
                    )));
                }
                self.report.partner_downs += 1;
                Told::Idle
            }
            (ClientEvent::PartnerClosed, Told::Ready(..) | Told::Stopped) => Told::Idle,
            (ClientEvent::PartnerSuspect, t) => t,
            (ClientEvent::PartnerInfo(e), t) => {
                let both_new = self
                    .cfg
                    .iter()
                    .all(|c| c.max_version >= CLIENT_PRIVATE_VERSION);
                let expected = match both_new {
                    true => private_of(1 - n, client),
                    false => Vec::new(),
                };
                if e.private != expected {
                    return Err(self.fail(format!(
                        "node{n} hands {client:?} the partner's private data {:?}, expected {expected:?}",
                        e.private
                    )));
                }
                let w = e.windows.clone();
                self.nodes[n]
                    .clients
                    .get_mut(&client)
                    .expect("checked")
                    .partner_windows = Some(w);
                t
            }
            (e, t) => {
                return Err(self.fail(format!(
                    "node{n} tells {client:?} {e:?} while the client is {t:?}"
                )))
            }
        };
        self.nodes[n]
            .clients
            .get_mut(&client)
            .expect("checked")
            .told = next;
        Ok(())
    }

    fn check_consistency(&self, n: NodeIx) -> Result<(), Failure> {
        let Some(m) = &self.nodes[n].mgr else {
            return Ok(());
        };
        for (id, c) in &self.nodes[n].clients {
            if let Told::Ready(ic, generation) = c.told {
                let st = m.client_status(*id);
                if st != Some(ClientStatus::Ready { ic, generation }) {
                    return Err(self.fail(format!(
                        "node{n}: {id:?} was told Ready on {ic:?}/{generation:?} but its manager says {st:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn break_sessions(&mut self, ic: u8) {
        for s in &mut self.sessions {
            if s.ic == ic && (s.open[0] || s.open[1]) {
                s.broken = true;
            }
        }
    }

    fn set_health(&mut self, ic: u8) {
        let i = &mut self.ics[ic as usize];
        if i.passes() {
            if i.healthy_since.is_none() {
                i.healthy_since = Some(self.now);
            }
        } else {
            i.healthy_since = None;
        }
    }

    fn register(&mut self, n: NodeIx, ix: usize) -> Result<(), Failure> {
        let spec = self.sc.clients[ix].spec.clone();
        let c = self.nodes[n]
            .clients
            .get_mut(&spec.id)
            .expect("scenario client");
        c.intended = true;
        if !self.nodes[n].alive || c.registered {
            return Ok(());
        }
        c.registered = true;
        c.told = Told::Idle;
        c.partner_windows = None;
        let spec = ClientSpec {
            private: private_of(n, spec.id),
            ..spec
        };
        self.input(n, Input::Client(ClientRequest::Register(spec)))
    }

    fn event(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Start(n) | Ev::Restart(n) => {
                if n == 0 {
                    self.retry_at.clear();
                    self.migrations.clear();
                }
                let at = self.now + self.cfg[n].balance_period;
                let life = self.nodes[n].life + 1;
                self.at(at, Ev::Sample { to: n, life });
                let node = &mut self.nodes[n];
                node.alive = true;
                node.started = true;
                node.life += 1;
                node.alive_since = self.now;
                node.vis.clear();
                node.slammed.clear();
                node.sessions.clear();
                node.listening.iter_mut().for_each(|l| *l = false);
                for c in node.clients.values_mut() {
                    c.registered = false;
                    c.told = Told::Idle;
                    c.partner_windows = None;
                }
                let mut seed = [0u8; 32];
                self.rng.fill(&mut seed);
                node.mgr = Some(Manager::new(self.cfg[n].clone(), self.now, seed));
                self.drain(n)?;
                // Ports that are down now are reported at start, as a driver polls them.
                for ic in 0..self.sc.interconnects {
                    let i = &self.ics[ic as usize];
                    if i.down || i.dead[n] {
                        self.input(
                            n,
                            Input::PortState {
                                ic: InterconnectId(ic),
                                up: false,
                            },
                        )?;
                    }
                }
                // After a restart the clients that had registered come back one by one.
                let back: Vec<usize> = self
                    .sc
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| {
                        c.on[n]
                            && c.register_at[n] <= self.now
                            && self.nodes[n].clients[&c.spec.id].intended
                    })
                    .map(|(i, _)| i)
                    .collect();
                for ix in back {
                    let at = self.now + Duration::from_nanos(self.rng.gen_range(0..50_000_000));
                    self.at(at, Ev::Register { to: n, client: ix });
                }
            }
            Ev::Register { to, client } => self.register(to, client)?,
            Ev::Deliver { to, s, msg } => {
                let ses = &self.sessions[s];
                if ses.broken || !self.ics[ses.ic as usize].passes() {
                    self.sessions[s].broken = true;
                    self.report.lost += 1;
                    return Ok(());
                }
                if !ses.open[to] || ses.life[to] != self.nodes[to].life {
                    return Ok(());
                }
                self.report.delivered += 1;
                // Every message crosses the wire's encoding, as between real managers.
                let bytes = msg.to_bytes();
                if Message::decode_exact(&bytes).as_ref() != Ok(&msg) {
                    return Err(self.fail(format!("{msg:?} does not survive its encoding")));
                }
                let reset = match &msg {
                    Message::ClientReset(r) => Some(r.client),
                    _ => None,
                };
                let input = Input::Message {
                    ic: InterconnectId(ses.ic),
                    session: SessionId(ses.sid[to]),
                    msg,
                };
                match reset {
                    Some(c) => self.input_isolated(to, c, input)?,
                    None => self.input(to, input)?,
                }
            }
            Ev::CloseNotice { to, s } => {
                let ses = &self.sessions[s];
                if ses.broken || !ses.open[to] || ses.life[to] != self.nodes[to].life {
                    return Ok(());
                }
                let input = Input::SessionClosed {
                    ic: InterconnectId(ses.ic),
                    session: SessionId(ses.sid[to]),
                };
                let sid = ses.sid[to];
                self.sessions[s].open[to] = false;
                self.nodes[to].sessions.remove(&sid);
                self.input(to, input)?;
            }
            Ev::Established { to, s, life } => {
                if life != self.nodes[to].life || !self.nodes[to].alive {
                    return Ok(());
                }
                let ses = &mut self.sessions[s];
                ses.open[to] = true;
                let (ic, sid) = (ses.ic, ses.sid[to]);
                self.nodes[to].sessions.insert(sid, s);
                let qpn = self.nodes[to].next_qpn;
                self.nodes[to].next_qpn += 1;
                let control_vi = ViAddress {
                    interconnect: InterconnectId(ic),
                    qpn,
                    gid: gid(to, ic),
                    psn: qpn & 0xffff,
                    mtu: Mtu::M1024,
                };
                self.input(
                    to,
                    Input::SessionEstablished {
                        ic: InterconnectId(ic),
                        session: SessionId(sid),
                        control_vi,
                        windows: vec![MemoryWindow {
                            addr: 0x10_0000,
                            len: 1 << 20,
                            rkey: 0x42,
                        }],
                    },
                )?;
            }
            Ev::ConnectFailed {
                to,
                ic,
                attempt,
                life,
            } => {
                if life == self.nodes[to].life {
                    self.input(
                        to,
                        Input::ConnectFailed {
                            ic: InterconnectId(ic),
                            attempt,
                        },
                    )?;
                }
            }
            Ev::Input { to, life, input } => {
                if life == self.nodes[to].life {
                    self.input(to, input)?;
                }
            }
            Ev::Timer { to, life, deadline } => {
                if life == self.nodes[to].life {
                    let armed = self.nodes[to].mgr.as_ref().and_then(|m| m.next_deadline());
                    if armed.is_some_and(|d| d <= self.now) || armed == Some(deadline) {
                        self.input(to, Input::Timer)?;
                    }
                }
            }
            Ev::VisCreated {
                to,
                life,
                client,
                gen,
                ic,
                count,
            } => {
                if life != self.nodes[to].life || !self.nodes[to].alive {
                    return Ok(());
                }
                let mut vis = Vec::new();
                for _ in 0..count {
                    let qpn = self.nodes[to].next_qpn;
                    self.nodes[to].next_qpn += 1;
                    self.nodes[to].vis.insert(
                        qpn,
                        LiveVi {
                            client,
                            gen,
                            ic,
                            remote: None,
                        },
                    );
                    vis.push(ViAddress {
                        interconnect: InterconnectId(ic),
                        qpn,
                        gid: gid(to, ic),
                        psn: qpn & 0xffff,
                        mtu: Mtu::M1024,
                    });
                }
                let windows = match self.nodes[to].clients.get_mut(&client) {
                    Some(c) => {
                        c.windows = vec![MemoryWindow {
                            addr: 0x1000 * u64::from(client.0),
                            len: c.buffer,
                            rkey: client.0,
                        }];
                        c.windows.clone()
                    }
                    None => Vec::new(),
                };
                self.input(
                    to,
                    Input::ClientVisCreated {
                        client,
                        generation: gen,
                        vis,
                        windows,
                    },
                )?;
            }
            Ev::VisConnected {
                to,
                life,
                client,
                gen,
            } => {
                if life != self.nodes[to].life || !self.nodes[to].alive {
                    return Ok(());
                }
                let live = self.nodes[to]
                    .vis
                    .values()
                    .any(|v| v.client == client && v.gen == gen);
                if live {
                    self.nodes[to].slammed.insert((client, gen));
                    self.input(
                        to,
                        Input::ClientVisConnected {
                            client,
                            generation: gen,
                        },
                    )?;
                }
            }
            Ev::Fault(f) => self.fault(f)?,
            Ev::HealLink { ic, kind, node } => {
                let i = &mut self.ics[ic as usize];
                match kind {
                    0 => i.down = false,
                    1 => i.silent = false,
                    _ => i.dead[node] = false,
                }
                self.set_health(ic);
                match kind {
                    0 => {
                        // A dead device's port stays down until the device comes back.
                        for n in 0..2 {
                            if !self.ics[ic as usize].dead[n] {
                                self.port_event(n, ic, true);
                            }
                        }
                    }
                    2 if !self.ics[ic as usize].down => {
                        let at = self.now + Duration::from_micros(100);
                        let life = self.nodes[node].life;
                        self.at(
                            at,
                            Ev::Input {
                                to: node,
                                life,
                                input: Input::AsyncEvent {
                                    ic: InterconnectId(ic),
                                    event: AsyncEvent::PortActive,
                                },
                            },
                        );
                    }
                    _ => {}
                }
            }
            Ev::Sample { to, life } => {
                if life != self.nodes[to].life || !self.nodes[to].alive {
                    return Ok(());
                }
                let period = self.cfg[to].balance_period;
                if self.now > self.sc.heal + Duration::from_millis(500) {
                    return Ok(());
                }
                let now = self.now;
                let samples: Vec<ClientLoad> = self
                    .sc
                    .clients
                    .iter()
                    .filter(|c| {
                        self.nodes[to]
                            .clients
                            .get(&c.spec.id)
                            .is_some_and(|sc| matches!(sc.told, Told::Ready(..)))
                    })
                    .map(|c| ClientLoad {
                        client: c.spec.id,
                        bytes: (u128::from(c.load.rate(now)) * period.as_nanos() / 2_000_000_000)
                            as u64,
                    })
                    .collect();
                self.at(now + period, Ev::Sample { to, life });
                if !samples.is_empty() {
                    self.input(to, Input::Measured { samples })?;
                }
            }
            Ev::RcTimeout { ic } => {
                // An RC QP on a link that stopped passing traffic errors out after its retries.
                if !self.ics[ic as usize].passes() {
                    for n in 0..2 {
                        self.input(
                            n,
                            Input::ViError {
                                ic: InterconnectId(ic),
                                vi: ViRef::Control,
                            },
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn port_event(&mut self, n: NodeIx, ic: u8, up: bool) {
        let at = self.now + Duration::from_nanos(self.rng.gen_range(50_000..1_000_000));
        let life = self.nodes[n].life;
        self.at(
            at,
            Ev::Input {
                to: n,
                life,
                input: Input::PortState {
                    ic: InterconnectId(ic),
                    up,
                },
            },
        );
    }

    fn fault(&mut self, f: Fault) -> Result<(), Failure> {
        if self.trace {
            println!("{} FAULT {:?}", self.now, f);
        }
        match f {
            Fault::LinkDown { ic, dur } => {
                self.ics[ic as usize].down = true;
                self.set_health(ic);
                self.break_sessions(ic);
                for n in 0..2 {
                    self.port_event(n, ic, false);
                }
                let at = self.now + dur;
                self.at(
                    at,
                    Ev::HealLink {
                        ic,
                        kind: 0,
                        node: 0,
                    },
                );
            }
            Fault::Silent { ic, dur } => {
                self.ics[ic as usize].silent = true;
                self.set_health(ic);
                self.break_sessions(ic);
                let rc =
                    self.now + Duration::from_nanos(self.rng.gen_range(20_000_000..80_000_000));
                self.at(rc, Ev::RcTimeout { ic });
                let at = self.now + dur;
                self.at(
                    at,
                    Ev::HealLink {
                        ic,
                        kind: 1,
                        node: 0,
                    },
                );
            }
            Fault::DeviceDead { ic, node, dur } => {
                self.ics[ic as usize].dead[node] = true;
                self.set_health(ic);
                self.break_sessions(ic);
                self.input(
                    node,
                    Input::AsyncEvent {
                        ic: InterconnectId(ic),
                        event: AsyncEvent::DeviceFatal,
                    },
                )?;
                let at = self.now + dur;
                self.at(at, Ev::HealLink { ic, kind: 2, node });
            }
            Fault::Crash { node, down } => {
                if !self.nodes[node].alive {
                    return Ok(());
                }
                let nd = &mut self.nodes[node];
                nd.alive = false;
                nd.mgr = None;
                nd.vis.clear();
                nd.sessions.clear();
                for s in &mut self.sessions {
                    s.open[node] = false;
                }
                let at = self.now + down;
                self.at(at, Ev::Restart(node));
            }
            Fault::Churn { node, client, away } => {
                let Some(c) = self.nodes[node].clients.get_mut(&client) else {
                    return Ok(());
                };
                if !c.intended {
                    return Ok(());
                }
                c.intended = false;
                let ix = self
                    .sc
                    .clients
                    .iter()
                    .position(|c| c.spec.id == client)
                    .expect("scenario client");
                let unregister = c.registered && self.nodes[node].alive;
                if unregister {
                    c.registered = false;
                    c.told = Told::Idle;
                    c.partner_windows = None;
                }
                let at = self.now + away;
                self.at(
                    at,
                    Ev::Register {
                        to: node,
                        client: ix,
                    },
                );
                if unregister {
                    if node == 0 {
                        self.retry_at.remove(&client);
                    }
                    self.input(node, Input::Client(ClientRequest::Unregister(client)))?;
                }
            }
            Fault::OpenVi { node, client } | Fault::FreeVi { node, client } => {
                let open = matches!(f, Fault::OpenVi { .. });
                if self.nodes[node]
                    .clients
                    .get(&client)
                    .is_some_and(|c| c.registered)
                {
                    let req = if open {
                        ClientRequest::OpenVi(client)
                    } else {
                        ClientRequest::FreeVi(client)
                    };
                    self.input(node, Input::Client(req))?;
                }
            }
            Fault::ClientViError {
                node,
                client,
                repeat,
            } => {
                let Some(m) = self.nodes[node].mgr.as_ref() else {
                    return Ok(());
                };
                let bound = match m.client_status(client) {
                    Some(ClientStatus::Ready { ic, generation })
                    | Some(ClientStatus::Connecting { ic, generation }) => Some((ic, generation)),
                    _ => None,
                };
                if let Some((ic, generation)) = bound {
                    if m.link_status()[ic.0 as usize] == LinkStatus::Up {
                        self.input_isolated(
                            node,
                            client,
                            Input::ViError {
                                ic,
                                vi: ViRef::Client(client, generation),
                            },
                        )?;
                    }
                }
                if repeat > 0 {
                    // The peer still never reposts: the next binding fails again soon after it runs.
                    let at =
                        self.now + Duration::from_nanos(self.rng.gen_range(1_000_000..40_000_000));
                    self.at(
                        at,
                        Ev::Fault(Fault::ClientViError {
                            node,
                            client,
                            repeat: repeat - 1,
                        }),
                    );
                }
            }
            Fault::Grow { node, client } => {
                let Some(c) = self.nodes[node].clients.get_mut(&client) else {
                    return Ok(());
                };
                if !c.registered {
                    return Ok(());
                }
                c.buffer *= 2;
                let w = vec![MemoryWindow {
                    addr: 0x1000 * u64::from(client.0),
                    len: c.buffer,
                    rkey: client.0,
                }];
                c.windows = w.clone();
                self.input(node, Input::Client(ClientRequest::GrowBuffer(client, w)))?;
            }
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), Failure> {
        for n in 0..2 {
            if !self.nodes[n].alive {
                return Err(self.fail(format!("node{n} is not alive at the end")));
            }
            let m = self.nodes[n].mgr.as_ref().expect("alive");
            let links = m.link_status();
            if links.iter().any(|l| *l != LinkStatus::Up) {
                return Err(self.fail(format!(
                    "node{n}: interconnects not all up {} after healing: {links:?}",
                    humantime(self.settle)
                )));
            }
            if m.partner_status() != PartnerStatus::Up {
                return Err(self.fail(format!(
                    "node{n}: partner {:?} at the end",
                    m.partner_status()
                )));
            }
        }
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        let (ma, mb) = (
            a.mgr.as_ref().expect("alive"),
            b.mgr.as_ref().expect("alive"),
        );
        let ids: BTreeSet<ClientId> = a.clients.keys().chain(b.clients.keys()).copied().collect();
        for id in ids {
            let ra = a.clients.get(&id).is_some_and(|c| c.registered);
            let rb = b.clients.get(&id).is_some_and(|c| c.registered);
            if ra && rb {
                let (sa, sb) = (ma.client_status(id), mb.client_status(id));
                let Some(ClientStatus::Ready { ic, generation }) = sa else {
                    return Err(
                        self.fail(format!("{id:?} not Ready at the end: A {sa:?}, B {sb:?}"))
                    );
                };
                if sb != sa {
                    return Err(
                        self.fail(format!("{id:?} disagrees at the end: A {sa:?}, B {sb:?}"))
                    );
                }
                for (n, me, other) in [(0, a, b), (1, b, a)] {
                    let c = &me.clients[&id];
                    if c.told != Told::Ready(ic, generation) {
                        return Err(self.fail(format!(
                            "node{n}: {id:?} was last told {:?}, manager says Ready on {ic:?}/{generation:?}",
                            c.told
                        )));
                    }
                    let mine: Vec<(&u32, &LiveVi)> = me
                        .vis
                        .iter()
                        .filter(|(_, v)| v.client == id && v.gen == generation)
                        .collect();
                    if mine.is_empty() {
                        return Err(self.fail(format!("node{n}: {id:?} Ready without VIs")));
                    }
                    for (q, v) in mine {
                        let paired = v.remote.and_then(|r| other.vis.get(&r)).is_some_and(|rv| {
                            rv.remote == Some(*q)
                                && rv.client == id
                                && rv.gen == generation
                                && rv.ic == ic.0
                        });
                        if !paired || v.ic != ic.0 {
                            return Err(self.fail(format!(
                                "node{n}: {id:?} VI {q} is not slam connected to its partner VI ({v:?})"
                            )));
                        }
                    }
                    // Invariant 10: standbys agree on both nodes, are ripe, on other interconnects
                    // than the binding, and their VIs are pairwise slam connected.
                    let (sa, sb) = (ma.standbys(id), mb.standbys(id));
                    if sa != sb || sa.iter().any(|(i, _, ripe)| !ripe || *i == ic) {
                        return Err(self.fail(format!(
                            "{id:?} standbys disagree at the end: A {sa:?}, B {sb:?} (bound on {ic:?})"
                        )));
                    }
                    for (_, g, _) in &sa {
                        for (q, v) in me.vis.iter().filter(|(_, v)| v.client == id && v.gen == *g) {
                            let paired =
                                v.remote.and_then(|r| other.vis.get(&r)).is_some_and(|rv| {
                                    rv.remote == Some(*q)
                                        && rv.client == id
                                        && rv.gen == *g
                                        && rv.ic == v.ic
                                });
                            if !paired {
                                return Err(self.fail(format!(
                                    "node{n}: {id:?} standby VI {q} is not slam connected to its partner VI ({v:?})"
                                )));
                            }
                        }
                    }
                    if c.partner_windows.as_ref() != Some(&other.clients[&id].windows) {
                        return Err(self.fail(format!(
                            "node{n}: {id:?} holds partner windows {:?}, partner has {:?}",
                            c.partner_windows, other.clients[&id].windows
                        )));
                    }
                }
            } else {
                for (n, me, reg, m) in [(0, a, ra, ma), (1, b, rb, mb)] {
                    if !reg {
                        continue;
                    }
                    let st = m.client_status(id);
                    if st != Some(ClientStatus::WaitingForPartnerClient)
                        || me.clients[&id].told != Told::Idle
                    {
                        return Err(self.fail(format!(
                            "node{n}: {id:?} registered on one side only is {st:?}, told {:?}",
                            me.clients[&id].told
                        )));
                    }
                }
            }
        }
        for (n, me, m) in [(0, a, ma), (1, b, mb)] {
            for (q, v) in &me.vis {
                let live = m.client_status(v.client).is_some_and(
                    |s| matches!(s, ClientStatus::Ready { generation, .. } if generation == v.gen),
                ) || m.standbys(v.client).iter().any(|(_, g, _)| *g == v.gen);
                if !live {
                    return Err(self.fail(format!("node{n}: VI {q} of {v:?} leaked")));
                }
            }
        }
        Ok(())
    }
}

fn humantime(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Whether node 2 of `seed`'s scenario is an older build (protocol versions up to 2).
fn older_partner(seed: u64) -> bool {
    seed % 8 == 5
}

/// The private data node `n` registers client `id` with: a few bytes naming both, none for every
/// fourth client (so some batches carry no private data at all).
fn private_of(n: NodeIx, id: ClientId) -> Vec<u8> {
    match id.0 % 4 {
        0 => Vec::new(),
        _ => format!("node{n} client{}", id.0).into_bytes(),
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    Sim::new(seed, false).run()
}

/// Runs one seed printing every input, action and step.
pub fn trace_seed(seed: u64) -> Result<Report, Failure> {
    Sim::new(seed, true).run()
}
