//! The real driver: runs the sans-IO [`Manager`] on RDMA devices, TCP initial sessions and a clock.
//!
//! One thread (`ccm-node`) owns the manager, every device object and every session. It sleeps in
//! `poll(2)` on the sessions' sockets, the devices' async-event fds, each device's completion channel
//! (the control VIs' receives are armed on it) and a wake-up pipe that client threads write to, until
//! the manager's next deadline or `PORT_POLL` at most. So an idle node wakes for its heartbeats,
//! its partner's and the port look, not every millisecond (measured in the lab guest: the driver
//! thread of an idle node took 35-40 % of a vCPU with a 1 ms poll, 9-10 % now).
//!
//! | manager action | what the driver does |
//! | --- | --- |
//! | `Listen` / `Connect` (410) | TCP listener on the interconnect's IP / a bounded connect to the partner's |
//! | `Send` | heartbeats over the control VI once it is confirmed, everything else over the TCP session |
//! | `SlamConnectControl` (415) | control VI RESET -> INIT -> RTR -> RTS, then a probe; unconfirmed after the heartbeat timeout = VI error |
//! | `CreateClientVis` (420) | a protection domain per client and device, its memory registered, its VIs created |
//! | `SlamConnect` (435) | the client's VIs slam connected on the VI factory thread, then `ClientVisConnected` |
//! | `Tell` (445, 520, ...) | a [`ClientNotice`] on the client's channel; `Ready` carries the connected VIs |
//! | `ReleaseClientVis` (525) | the VIs go to the error state (outstanding work flushes) and are dropped |
//!
//! Interconnect events fed back: async events (PORT_ERR, PORT_ACTIVE, DEVICE_FATAL; any of them makes
//! the driver look at the ports at once), port state (looked at every `PORT_POLL` as well), a device
//! that disappeared (rxe never raises DEVICE_FATAL: the kernel's uevent of its removal makes the driver
//! look at once, and its sysfs entry says which), control VI completion errors, and client-reported VI
//! errors (which also make it look at the ports).

pub mod channel;
pub mod config;
pub mod doorbell;
pub mod meter;
pub mod session;
pub mod status;
pub mod uevents;

use crate::node::doorbell::Doorbell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccm_verbs::{
    AccessFlags, AsyncEvents, Completion, CompletionChannel, DeviceList, MemoryRegion, PortState,
    ProtectionDomain, SharedMemory,
};
use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use thiserror::Error;

use crate::manager::{
    Action, AsyncEvent, ClientEvent, ClientRequest, ClientSpec, Detection, Input, Manager,
    SessionId, ViRef,
};
use crate::wire::{
    ClientEntry, ClientId, ClientLoad, Generation, Heartbeat, InterconnectId, Knock, MemoryWindow,
    Message,
};
use crate::Time;
use channel::{IcDevice, RcChannel, RcTiming, SEND_WR_BASE};
use config::{InterconnectConfig, NodeConfig};
use meter::ByteMeter;
use session::{ReadOutcome, TcpSession};
use status::{EventRecord, NodeStatus};

/// Why the node could not start or stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration or secret is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The node thread is gone.
    #[error("the node has stopped")]
    Stopped,
    /// A client registration that cannot be carried out.
    #[error("client {0}: {1}")]
    Client(u32, String),
}

/// How often the driver looks at its ports when no event woke it: the safety net. It sleeps on the
/// events that make it look at once: a port that goes down raises IBV_EVENT_PORT_ERR (2-17 ms after
/// the port reads DOWN in the lab; a client's VI error on the link in use makes the driver look before
/// that), and a deleted device (rxe raises no DEVICE_FATAL) is announced by the kernel's uevent of its
/// uverbs device ([`uevents`]). Each look is one `ibv_query_port` system call per
/// interconnect, and each wake-up of an idle node costs CPU (about half a millisecond in the lab guest).
const PORT_POLL: Duration = Duration::from_millis(50);

/// The heartbeat sequence number of the driver's own control VI probe (never given to the manager).
const PROBE_SEQ: u64 = u64::MAX;

/// Memory a client registers: the driver registers it on every device the client's VIs use.
#[derive(Clone, Debug)]
pub struct ClientMemory {
    /// The memory (shared with the client, which reads and writes it).
    pub memory: Arc<SharedMemory>,
    /// Whether the partner may RDMA WRITE into it (it is then advertised as a window).
    pub remote_write: bool,
}

/// A client's region as registered on one device.
pub type ClientRegion = Arc<MemoryRegion<Arc<SharedMemory>>>;

/// What the node tells a client (the manager's [`ClientEvent`]s, with the objects the client needs).
#[derive(Debug)]
pub enum ClientNotice {
    /// 445: both ends are slam connected on `ic`: start posting (`resumed` after a stop).
    Ready {
        /// The interconnect.
        ic: InterconnectId,
        /// The binding generation.
        generation: Generation,
        /// Whether this follows a stop (failover, failback, re-initialization).
        resumed: bool,
        /// The connected VIs, in pairing order.
        vis: Vec<Arc<RcChannel>>,
        /// The client's memory as registered on this interconnect's device (same order as registered).
        regions: Vec<ClientRegion>,
        /// The partner client's VIs and windows.
        partner: ClientEntry,
    },
    /// 520: stop posting on `ic`; the VIs are being released.
    Stop {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// Every interconnect is silent; the partner may be down.
    PartnerSuspect,
    /// The partner is down or restarted: its clients are gone.
    PartnerDown,
    /// The partner's peer client unregistered.
    PartnerClosed,
}

/// Called by the node's driver after each notice it queues for a client (see
/// [`NodeHandle::register_woken`]): wakes the client's thread wherever it sleeps.
pub type ClientWaker = Arc<dyn Fn() + Send + Sync>;

enum Request {
    Register {
        spec: ClientSpec,
        memory: Vec<ClientMemory>,
        tx: Sender<ClientNotice>,
        waker: Option<ClientWaker>,
        meter: ByteMeter,
    },
    Unregister(ClientId),
    ViError {
        client: ClientId,
        ic: InterconnectId,
        generation: Generation,
    },
    Shutdown,
    VisCreated(Box<VisDone>),
    VisConnected(Box<ConnectDone>),
    /// A session's control VI, slam connected off the driver thread ([`Factory::connect_control`]).
    ControlConnected(Box<ControlDone>),
    SpareControlVi {
        ic: usize,
        epoch: u64,
        result: Result<Box<RcChannel>, ccm_verbs::Error>,
    },
    SpareClientVis(Box<SpareDone>),
    /// An interconnect's device, opened at start off the driver thread (see [`open_devices`]).
    DeviceOpened {
        ic: usize,
        result: Result<Box<OpenedDevice>, ccm_verbs::Error>,
    },
}

/// A handle on a running node, cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Request>,
    wake: Arc<Doorbell>,
    status: Arc<Mutex<NodeStatus>>,
    first_heartbeat: Arc<FirstHeartbeat>,
    /// The ids of the clients registered through any handle of this node and not unregistered since.
    registered: Arc<Mutex<BTreeSet<ClientId>>>,
    /// How this node's manager declares the partner down.
    detection: Detection,
}

/// Set once the first heartbeat arrived from the partner over a control VI.
#[derive(Default)]
struct FirstHeartbeat {
    seen: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl FirstHeartbeat {
    fn wait(&self, timeout: Duration) -> bool {
        let seen = self.seen.lock().expect("first heartbeat");
        let (seen, _) = self
            .cv
            .wait_timeout_while(seen, timeout, |seen| !*seen)
            .expect("first heartbeat");
        *seen
    }
}

impl NodeHandle {
    /// Wait until the first heartbeat from the partner arrived over a control VI, at most `timeout`;
    /// whether it did.
    pub fn wait_first_heartbeat(&self, timeout: Duration) -> bool {
        self.first_heartbeat.wait(timeout)
    }

    fn request(&self, r: Request) -> Result<(), NodeError> {
        self.tx.send(r).map_err(|_| NodeError::Stopped)?;
        self.wake.ring();
        Ok(())
    }

    /// Register a client (510): its VIs are created, exchanged and slam connected through the same path
    /// as at bring-up, while the other clients keep running. Events arrive on the returned handle.
    ///
    /// Refused with [`NodeError::Client`], naming what is wrong, for a name over [`MAX_NAME_LEN`] bytes,
    /// private data over [`MAX_PRIVATE`] bytes, a VI count outside 1..=[`MAX_VIS`], or an id already
    /// registered on this node.
    ///
    /// [`MAX_NAME_LEN`]: crate::wire::MAX_NAME_LEN
    /// [`MAX_PRIVATE`]: crate::wire::MAX_PRIVATE
    /// [`MAX_VIS`]: crate::wire::MAX_VIS
    pub fn register(
        &self,
        spec: ClientSpec,
        memory: Vec<ClientMemory>,
    ) -> Result<ClientHandle, NodeError> {
        self.register_inner(spec, memory, None)
    }

    /// [`register`](Self::register) for a client thread that sleeps somewhere other than on its
    /// [`ClientHandle::events`] (a `poll(2)` on its VI's completion channel): `waker` is called after each
    /// notice is queued, so a Stop or Ready reaches the thread at once.
    pub fn register_woken(
        &self,
        spec: ClientSpec,
        memory: Vec<ClientMemory>,
        waker: ClientWaker,
    ) -> Result<ClientHandle, NodeError> {
        self.register_inner(spec, memory, Some(waker))
    }

    fn register_inner(
        &self,
        spec: ClientSpec,
        memory: Vec<ClientMemory>,
        waker: Option<ClientWaker>,
    ) -> Result<ClientHandle, NodeError> {
        let id = spec.id;
        use crate::wire::{MAX_NAME_LEN, MAX_PRIVATE, MAX_VIS};
        let refused = [
            (spec.name.len() > MAX_NAME_LEN).then(|| {
                format!(
                    "a name of {} bytes; at most {MAX_NAME_LEN}",
                    spec.name.len()
                )
            }),
            (spec.private.len() > MAX_PRIVATE).then(|| {
                format!(
                    "{} bytes of private data; at most {MAX_PRIVATE}",
                    spec.private.len()
                )
            }),
            (!(1..=MAX_VIS).contains(&(spec.vi_count as usize)))
                .then(|| format!("{} VIs asked for; 1 to {MAX_VIS}", spec.vi_count)),
        ];
        if let Some(what) = refused.into_iter().flatten().next() {
            return Err(NodeError::Client(id.0, what));
        }
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if !registered.insert(id) {
            return Err(NodeError::Client(
                id.0,
                "already registered on this node (unregister it first)".into(),
            ));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let meter = ByteMeter::default();
        let sent = self.request(Request::Register {
            spec,
            memory,
            tx,
            waker,
            meter: meter.clone(),
        });
        if let Err(e) = sent {
            registered.remove(&id);
            return Err(e);
        }
        drop(registered);
        Ok(ClientHandle {
            id,
            events: rx,
            node: self.clone(),
            meter,
        })
    }

    /// Unregister client `id` (as [`ClientHandle::unregister`], for code that handed the handle to a thread).
    pub fn unregister(&self, id: ClientId) {
        // Under the lock, so a registration of the same id that follows is queued after this.
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        registered.remove(&id);
        let _ = self.request(Request::Unregister(id));
    }

    /// How this node's manager declares its partner down (its configured timing).
    pub fn detection(&self) -> Detection {
        self.detection
    }

    /// A snapshot of the node's state (what `ccm status` shows).
    pub fn status(&self) -> NodeStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stop the node (its sessions close; the partner sees the links go).
    pub fn shutdown(&self) {
        let _ = self.request(Request::Shutdown);
    }
}

/// A registered client: its events, and what it may tell the node.
pub struct ClientHandle {
    id: ClientId,
    /// Notices from the node, in order.
    pub events: Receiver<ClientNotice>,
    node: NodeHandle,
    meter: ByteMeter,
}

impl ClientHandle {
    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// A VI of this client failed (an error completion): the node fails the binding and re-places it.
    pub fn report_vi_error(&self, ic: InterconnectId, generation: Generation) {
        let _ = self.node.request(Request::ViError {
            client: self.id,
            ic,
            generation,
        });
    }

    /// Count `bytes` this client posted (adaptive balancing; see [`meter`]). Cheap: one atomic add.
    #[inline]
    pub fn add_bytes(&self, bytes: u64) {
        self.meter.add(bytes);
    }

    /// The client's byte meter, for a thread that posts without holding the handle.
    pub fn meter(&self) -> ByteMeter {
        self.meter.clone()
    }

    /// The node the client is registered with.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Unregister: VIs and memory are released on both nodes.
    pub fn unregister(self) {
        self.node.unregister(self.id);
    }
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Open the interconnects and start the manager. Returns as soon as the event loop runs: the
    /// initial sessions come up in the background (the first heartbeat is logged with its time).
    pub fn start(cfg: NodeConfig, started: Instant) -> Result<Node, NodeError> {
        Node::start_listed(cfg, started, None)
    }

    /// [`Node::start`] with the device list made early (see [`EarlyDevices`]).
    pub fn start_listed(
        cfg: NodeConfig,
        started: Instant,
        early: Option<EarlyDevices>,
    ) -> Result<Node, NodeError> {
        tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()), "starting the node");
        let wake = Arc::new(Doorbell::new().map_err(|e| NodeError::Io {
            what: "doorbell".into(),
            source: e,
        })?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let status = Arc::new(Mutex::new(NodeStatus::default()));
        let handle = NodeHandle {
            tx,
            wake: wake.clone(),
            status: status.clone(),
            first_heartbeat: Arc::default(),
            registered: Arc::default(),
            // The same values the manager gets below.
            detection: cfg.manager_config(Vec::new()).detection(),
        };
        // The devices open first, on a thread of their own, while the manager and the threads are set
        // up: an interconnect's session starts as soon as its own device is open.
        open_devices(&cfg, &handle, started, early)?;
        let secret = cfg.read_secret()?;
        tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()), "secret read");
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(
            &(started.elapsed().as_nanos() as u64 ^ std::process::id() as u64).to_le_bytes(),
        );
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = f.read_exact(&mut seed);
        }
        let manager = Manager::new(
            cfg.manager_config(secret),
            Time(started.elapsed().as_nanos() as u64),
            seed,
        );
        tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()), "manager created");
        let factory = spawn_vi_factory(
            handle.tx.clone(),
            handle.wake.clone(),
            cfg.interconnects.len(),
            cfg.realtime,
        );
        let realtime = cfg.realtime;
        let mut driver = Driver::new(cfg, manager, started, rx, wake, status, factory);
        driver.first_heartbeat_signal = handle.first_heartbeat.clone();
        let thread = std::thread::Builder::new()
            .name("ccm-node".into())
            .spawn(move || {
                if realtime {
                    driver.run_realtime();
                }
                driver.run()
            })
            .map_err(|e| NodeError::Io {
                what: "spawn".into(),
                source: e,
            })?;
        tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()), "threads started");
        Ok(Node {
            handle,
            thread: Some(thread),
        })
    }

    /// The node's handle.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Wait for the node thread to end (after [`NodeHandle::shutdown`]).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ic {
    cfg: InterconnectConfig,
    dev: Option<IcDevice>,
    pd: Option<ProtectionDomain>,
    events: Option<AsyncEvents>,
    /// The completion channel of the interconnect's control VIs: the driver sleeps in `poll(2)` on its
    /// fd (and the async events' fd) instead of waking every millisecond to look at their queues.
    completions: Option<CompletionChannel>,
    port_up: bool,
    listen: bool,
    listener: Option<TcpListener>,
    /// The placer's UDP socket on the interconnect's address and TCP port, for the follower's
    /// [`Knock`].
    knocks: Option<UdpSocket>,
    last_probe: Instant,
    /// A control VI made ahead of time, so a new session never creates one on the driver thread.
    spare: Option<RcChannel>,
    /// Whether the factory is making the next spare.
    spare_asked: bool,
    /// Bumped each time the device is (re)opened: a spare made on an older one is dropped.
    epoch: u64,
    /// The device is being opened at start, off this thread ([`Request::DeviceOpened`] follows).
    opening: bool,
}

struct Sess {
    ic: InterconnectId,
    tcp: TcpSession,
    /// The session's control VI; `None` while it is slam connected off the driver thread.
    control: Option<RcChannel>,
    connected: bool,
    confirmed: bool,
    /// Whether the control VI's receive queue is armed (its next completion wakes the driver). Cleared
    /// by an event of the interconnect's completion channel, set again at the next poll.
    armed: bool,
    confirm_deadline: Option<Time>,
    /// The partner's PeerInfo and what followed it on TCP, held until the control VI is confirmed.
    held: Vec<Message>,
}

/// Verbs objects on their way out. They are torn down on a thread of their own: moving a queue pair to
/// the error state and destroying it on a dead rxe link can take tens of milliseconds, and the driver
/// thread must never miss a heartbeat on the healthy links for that.
enum Doomed {
    Session(Box<Sess>),
    Binding(Binding),
    Channels(Vec<RcChannel>),
}

fn spawn_reaper() -> Sender<Doomed> {
    let (tx, rx) = crossbeam_channel::unbounded::<Doomed>();
    let _ = std::thread::Builder::new()
        .name("ccm-reaper".into())
        .spawn(move || {
            for doomed in rx {
                match doomed {
                    Doomed::Session(s) => s.control.iter().for_each(RcChannel::fail),
                    // Released VIs go to the error state at once, so their peers' posts fail fast
                    // and the manager re-places them (the client also gets its Stop).
                    Doomed::Binding(b) => b.vis.iter().for_each(|vi| vi.fail()),
                    Doomed::Channels(c) => drop(c),
                }
            }
        });
    tx
}

/// A client's protection tag on one device, its memory registered there, and the windows it exposes.
type ClientTag = (ProtectionDomain, Vec<ClientRegion>, Vec<MemoryWindow>);

/// A VI creation for the factory thread.
struct VisJob {
    client: ClientId,
    ic: InterconnectId,
    generation: Generation,
    count: u8,
    dev: IcDevice,
    memory: Vec<ClientMemory>,
    tag: Option<ClientTag>,
    /// Give each VI a completion channel (a client that sleeps on its VI: registered with a waker).
    notified: bool,
}

/// A slam connect (435) for the factory thread: `vis[i]` to `remote[i]`.
struct ConnectJob {
    client: ClientId,
    ic: InterconnectId,
    generation: Generation,
    vis: Vec<RcChannel>,
    remote: Vec<crate::wire::ViAddress>,
}

/// What the factory connected: the VIs come back either way (on an error, to be torn down).
struct ConnectDone {
    client: ClientId,
    ic: InterconnectId,
    generation: Generation,
    vis: Vec<RcChannel>,
    result: Result<(), ccm_verbs::Error>,
}

/// A session's control VI back from its slam connect, and how long the connect took.
struct ControlDone {
    session: SessionId,
    ic: InterconnectId,
    control: RcChannel,
    took: Duration,
    result: Result<(), ccm_verbs::Error>,
}

/// A client's spare VIs made on the factory thread (see [`ClientSlot::spares`]).
struct SpareDone {
    client: ClientId,
    ic: InterconnectId,
    epoch: u64,
    result: Result<(Vec<RcChannel>, ClientTag), ccm_verbs::Error>,
}

/// Work for the VI factory thread.
enum FactoryJob {
    Create(VisJob),
    /// Spare VIs for a client on an interconnect (its device at `epoch`), made when nothing else waits.
    Spare(VisJob, u64),
    Connect(ConnectJob),
    /// The next spare control VI of interconnect `ic`.
    Control {
        ic: usize,
        epoch: u64,
        dev: IcDevice,
        pd: ProtectionDomain,
        completions: Option<CompletionChannel>,
    },
}

/// An interconnect's device with what the manager needs on it, and how long each step took.
struct OpenedDevice {
    dev: IcDevice,
    pd: Option<ProtectionDomain>,
    events: Option<AsyncEvents>,
    completions: Option<CompletionChannel>,
    up: bool,
    /// The first control VI, made here so that a session never creates one on the driver thread.
    spare: Option<RcChannel>,
    /// "device 12.1 ms, protection domain 0.3 ms, ..." (the step times, for the log).
    steps: String,
}

/// Open interconnect `cfg`'s device from `list`, its protection domain, async events and first
/// control VI.
fn open_ic(list: &DeviceList, cfg: &InterconnectConfig) -> Result<OpenedDevice, ccm_verbs::Error> {
    let mut steps = String::new();
    let mut lap = Instant::now();
    let mut step = |what: &str| {
        let now = Instant::now();
        if !steps.is_empty() {
            steps.push_str(", ");
        }
        steps.push_str(&format!("{what} {:.2} ms", ms(now - lap)));
        lap = now;
    };
    let dev = IcDevice::open_listed(list, cfg.id, cfg.device.as_deref(), cfg.port, cfg.local_ip)?;
    step("device and GID");
    let pd = ProtectionDomain::new(&dev.ctx).ok();
    step("protection domain");
    let events = AsyncEvents::new(&dev.ctx).ok();
    step("async events");
    let completions = CompletionChannel::new(&dev.ctx).ok();
    step("completion channel");
    let up = dev
        .ctx
        .query_port(dev.port)
        .map(|p| p.state == PortState::Active)
        .unwrap_or(false);
    step("port");
    let spare = pd
        .as_ref()
        .and_then(|pd| make_control_vi(&dev, pd, completions.as_ref()).ok());
    step("control VI");
    Ok(OpenedDevice {
        dev,
        pd,
        events,
        completions,
        up,
        spare,
        steps,
    })
}

/// The device list, being made on a thread of its own from the very start of the process (the first
/// listing loads the verbs provider: tens of ms in the emulated lab), for [`Node::start_listed`]. The
/// same thread then opens the interconnects' devices as soon as the node hands it their
/// configuration: no second thread is started for that on the way to the first heartbeat.
pub struct EarlyDevices(Sender<OpenJob>);

/// A device list and when it was made (from, to: since process start).
type Listed = (Result<DeviceList, ccm_verbs::Error>, Duration, Duration);

/// What the opener needs from the node: the interconnects to open, and where to report each.
struct OpenJob {
    ics: Vec<InterconnectConfig>,
    tx: Sender<Request>,
    wake: Arc<Doorbell>,
    first_heartbeat: Arc<FirstHeartbeat>,
}

/// At start, the devices after the first open once the first heartbeat arrived, or after this at the
/// latest: on the lab's two vCPUs, opening the second device (about 10 ms of CPU) while the first
/// interconnect's handshake ran slowed that handshake, which is the way to the first heartbeat. The
/// second interconnect comes up tens of milliseconds later; a first interconnect that cannot come up
/// (its device unusable, its port down) does not hold the others back at all.
const OTHER_DEVICES_AFTER: Duration = Duration::from_millis(100);

fn list_devices(started: Instant) -> Listed {
    let from = started.elapsed();
    let list = DeviceList::get();
    (list, from, started.elapsed())
}

impl EarlyDevices {
    /// Start listing the devices now. `started` is the process start.
    pub fn list(started: Instant) -> EarlyDevices {
        let (tx, rx) = crossbeam_channel::bounded::<OpenJob>(1);
        let _ = std::thread::Builder::new()
            .name("ccm-open".into())
            .spawn(move || {
                let listed = list_devices(started);
                if let Ok(job) = rx.recv() {
                    open_listed(listed, job, started);
                }
            });
        EarlyDevices(tx)
    }
}

/// Open every interconnect's device at start, off the driver thread and in configuration order, from
/// one device list (`early`'s if given): neither the manager's set-up nor the first interconnect
/// waits for the other devices, and on rxe opening one costs tens of milliseconds. Each device comes
/// back as a [`Request::DeviceOpened`] as soon as it is open, whereupon the driver tells the manager
/// its port state and that interconnect's bring-up starts. One thread, not one per device: in the
/// lab's two-vCPU guest on a busy host, threads opening in parallel only competed with each other
/// and with the first interconnect's handshake (measured: each open then took about as long as both
/// in a row had taken on one thread).
fn open_devices(
    cfg: &NodeConfig,
    handle: &NodeHandle,
    started: Instant,
    early: Option<EarlyDevices>,
) -> Result<(), NodeError> {
    let job = OpenJob {
        ics: cfg.interconnects.clone(),
        tx: handle.tx.clone(),
        wake: handle.wake.clone(),
        first_heartbeat: handle.first_heartbeat.clone(),
    };
    // The early thread, if it is still there (it always is, unless it panicked), opens them.
    let job = match early {
        Some(e) => match e.0.send(job) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::SendError(job)) => job,
        },
        None => job,
    };
    std::thread::Builder::new()
        .name("ccm-open".into())
        .spawn(move || open_listed(list_devices(started), job, started))
        .map(drop)
        .map_err(|e| NodeError::Io {
            what: "spawn".into(),
            source: e,
        })
}

fn open_listed((list, from, to): Listed, job: OpenJob, started: Instant) {
    tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()),
        "devices listed in {:.2} ms (from {:.2} ms)", ms(to - from), ms(from));
    // Whether the first interconnect may bring the first heartbeat (its device open, its port up).
    let mut first_usable = false;
    for (i, c) in job.ics.iter().enumerate() {
        if i == 1 && first_usable {
            job.first_heartbeat.wait(OTHER_DEVICES_AFTER);
        }
        let t = started.elapsed();
        let result = match &list {
            Ok(list) => open_ic(list, c).map(Box::new),
            Err(e) => Err(e.clone()),
        };
        if i == 0 {
            first_usable = result.as_ref().is_ok_and(|d| d.up);
        }
        tracing::info!(target: "ccm::node", at_ms = ms(started.elapsed()),
            "interconnect {i}: device opened in {:.2} ms (from {:.2} ms): {}",
            ms(started.elapsed() - t), ms(t),
            result.as_ref().map_or_else(|e| e.to_string(), |d| d.steps.clone()));
        if job
            .tx
            .send(Request::DeviceOpened { ic: i, result })
            .is_err()
        {
            return;
        }
        job.wake.ring();
    }
}

/// A control VI: 32 receive slots of 256 bytes, 128 sends in flight; its completions raise events on
/// `completions` once armed.
fn make_control_vi(
    dev: &IcDevice,
    pd: &ProtectionDomain,
    completions: Option<&CompletionChannel>,
) -> Result<RcChannel, ccm_verbs::Error> {
    RcChannel::create_notified(dev, pd, 32, 256, 128, completions)
}

/// What the factory made.
struct VisDone {
    client: ClientId,
    ic: InterconnectId,
    generation: Generation,
    result: Result<(Vec<RcChannel>, ClientTag), ccm_verbs::Error>,
}

fn make_vis(job: &VisJob) -> Result<(Vec<RcChannel>, ClientTag), ccm_verbs::Error> {
    let tag = match &job.tag {
        Some(t) => t.clone(),
        None => {
            let pd = ProtectionDomain::new(&job.dev.ctx)?;
            let mut regions = Vec::new();
            let mut windows = Vec::new();
            for m in &job.memory {
                let access = if m.remote_write {
                    AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE
                } else {
                    AccessFlags::LOCAL_WRITE
                };
                let mr = Arc::new(MemoryRegion::register(&pd, m.memory.clone(), access)?);
                if m.remote_write {
                    windows.push(MemoryWindow {
                        addr: mr.addr(),
                        len: mr.len() as u64,
                        rkey: mr.rkey(),
                    });
                }
                regions.push(mr);
            }
            (pd, regions, windows)
        }
    };
    let mut vis = Vec::with_capacity(job.count as usize);
    for _ in 0..job.count {
        // A client that sleeps on its VI (registered with a waker: the NVRAM mirror sleeps until its
        // partner solicits) gets a completion channel of its own for each VI.
        let events = match job.notified {
            true => Some(CompletionChannel::new(&job.dev.ctx)?),
            false => None,
        };
        // 128 receive slots of 64 bytes: the NVRAM mirror's bound on notifications and acks
        // outstanding is in `clients::nvram` ("Receive credits").
        vis.push(RcChannel::create_notified(
            &job.dev,
            &tag.0,
            128,
            64,
            256,
            events.as_ref(),
        )?);
    }
    Ok((vis, tag))
}

fn connect_vis(job: &mut ConnectJob) -> Result<(), ccm_verbs::Error> {
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    for (vi, r) in job.vis.iter_mut().zip(&job.remote) {
        vi.slam_connect(r, RcTiming::CLIENT, access)?;
    }
    Ok(())
}

/// The VI factory thread: creates client VIs (420) and slam connects them (435), in request order.
/// Both cost milliseconds per VI on rxe (RTR alone ~0.1 ms, far more in the emulated lab); done on the
/// driver thread for a batch of 64 clients they held back every link's heartbeats for hundreds of ms.
/// The factory's three queues: spare control VIs go ahead of client work (a link coming back must not
/// wait for 64 client VIs to be made), and spare client VIs come last (a refill never delays a binding).
struct Factory {
    jobs: Sender<FactoryJob>,
    urgent: Sender<FactoryJob>,
    idle: Sender<FactoryJob>,
    /// Each interconnect's connector thread, once started ([`Factory::connect_control`]).
    connectors: Vec<Option<Sender<ControlJob>>>,
    requests: Sender<Request>,
    wake: Arc<Doorbell>,
    realtime: bool,
}

impl Factory {
    /// Queue `job`; it comes back if the factory is gone.
    fn send(&self, job: FactoryJob) -> Result<(), Box<FactoryJob>> {
        let queue = match job {
            FactoryJob::Control { .. } => &self.urgent,
            FactoryJob::Spare(..) => &self.idle,
            _ => &self.jobs,
        };
        queue.send(job).map_err(|e| Box::new(e.into_inner()))
    }

    /// Slam connect a session's control VI on its interconnect's own connector thread. On RoCE the move
    /// to RTR resolves the partner's MAC in the kernel (`ib_resolve_eth_dmac`), which waits for ARP: in
    /// the lab it has taken 470 ms right after a link came back, and a second when nobody answers. On the
    /// driver thread that held back every other interconnect's heartbeats until the partner failed the
    /// healthy link too; on the factory thread it would hold back other interconnects' client VIs. One
    /// thread per interconnect: a connect waits only behind its own link's. The VI comes back either way
    /// ([`Request::ControlConnected`]); if the thread is gone (the node is stopping) it comes back here.
    /// The thread starts with the interconnect's first such connect (a node whose partner's MAC is known
    /// connects on the driver thread and never starts one).
    fn connect_control(&mut self, job: ControlJob) -> Result<(), Box<ControlJob>> {
        let Some(slot) = self.connectors.get_mut(job.ic.0 as usize) else {
            return Err(Box::new(job));
        };
        let tx = slot.get_or_insert_with(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<ControlJob>();
            let (requests, wake) = (self.requests.clone(), self.wake.clone());
            spawn_connector(job.ic.0 as usize, rx, requests, wake, self.realtime);
            tx
        });
        tx.send(job).map_err(|e| Box::new(e.into_inner()))
    }
}

/// A control VI to slam connect, for its interconnect's connector thread ([`Factory::connect_control`]).
struct ControlJob {
    session: SessionId,
    ic: InterconnectId,
    control: RcChannel,
    remote: crate::wire::ViAddress,
    timing: RcTiming,
}

/// Whether the kernel holds a resolved neighbour (ARP) entry for `ip` (complete, or stale but usable), so
/// that moving a VI to RTR towards it resolves the MAC without waiting. IPv6 partners: never known here.
fn neighbour_resolved(ip: std::net::IpAddr) -> bool {
    let std::net::IpAddr::V4(ip) = ip else {
        return false;
    };
    std::fs::read_to_string("/proc/net/arp").is_ok_and(|table| arp_table_resolves(&table, ip))
}

/// Whether `table` (the text of `/proc/net/arp`) has a complete entry for `ip`.
fn arp_table_resolves(table: &str, ip: std::net::Ipv4Addr) -> bool {
    const ATF_COM: u32 = 0x02;
    // "IP address  HW type  Flags  HW address  Mask  Device", one line per entry after the header.
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(_), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
        addr.parse() == Ok(ip) && flags & ATF_COM != 0
    })
}

/// Put the calling thread on SCHED_FIFO at the lowest real-time priority.
fn set_realtime() -> Result<(), thread_priority::Error> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let policy = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, policy)
}

/// Interconnect `ic`'s connector thread: slam connects the control VIs of `rx`, in order, and hands them
/// back. With `realtime` it runs on SCHED_FIFO like the driver thread, whose bring-up waits on it; it
/// sleeps while the kernel waits for ARP.
fn spawn_connector(
    ic: usize,
    rx: Receiver<ControlJob>,
    requests: Sender<Request>,
    wake: Arc<Doorbell>,
    realtime: bool,
) {
    let _ = std::thread::Builder::new()
        .name(format!("ccm-connect-ic{ic}"))
        .spawn(move || {
            if realtime {
                // Refused only where the driver's own request is refused too, and logged there.
                let _ = set_realtime();
            }
            for job in rx {
                let ControlJob {
                    session,
                    ic,
                    mut control,
                    remote,
                    timing,
                } = job;
                let t = Instant::now();
                let result = control
                    .slam_connect(&remote, timing, AccessFlags::LOCAL_WRITE)
                    .map(|_| ());
                let done = ControlDone {
                    session,
                    ic,
                    control,
                    took: t.elapsed(),
                    result,
                };
                if requests
                    .send(Request::ControlConnected(Box::new(done)))
                    .is_err()
                {
                    return;
                }
                wake.ring();
            }
        });
}

fn spawn_vi_factory(
    requests: Sender<Request>,
    wake: Arc<Doorbell>,
    interconnects: usize,
    realtime: bool,
) -> Factory {
    let connectors = (0..interconnects).map(|_| None).collect();
    let (factory_requests, factory_wake) = (requests.clone(), wake.clone());
    let (tx, rx) = crossbeam_channel::unbounded::<FactoryJob>();
    let (urgent_tx, urgent) = crossbeam_channel::unbounded::<FactoryJob>();
    let (idle_tx, idle) = crossbeam_channel::unbounded::<FactoryJob>();
    let _ = std::thread::Builder::new()
        .name("ccm-vi-factory".into())
        .spawn(move || {
            loop {
                let next = match urgent.try_recv().or_else(|_| rx.try_recv()) {
                    Ok(job) => Ok(job),
                    Err(_) => crossbeam_channel::select! {
                        recv(urgent) -> job => job,
                        recv(rx) -> job => job,
                        recv(idle) -> job => job,
                    },
                };
                // Both senders belong to the driver: one gone means the node stopped.
                let Ok(job) = next else { return };
                let request = match job {
                    FactoryJob::Create(job) => {
                        let result = make_vis(&job);
                        Request::VisCreated(Box::new(VisDone {
                            client: job.client,
                            ic: job.ic,
                            generation: job.generation,
                            result,
                        }))
                    }
                    FactoryJob::Spare(job, epoch) => Request::SpareClientVis(Box::new(SpareDone {
                        client: job.client,
                        ic: job.ic,
                        epoch,
                        result: make_vis(&job),
                    })),
                    FactoryJob::Control {
                        ic,
                        epoch,
                        dev,
                        pd,
                        completions,
                    } => Request::SpareControlVi {
                        ic,
                        epoch,
                        result: make_control_vi(&dev, &pd, completions.as_ref()).map(Box::new),
                    },
                    FactoryJob::Connect(mut job) => {
                        let result = connect_vis(&mut job);
                        Request::VisConnected(Box::new(ConnectDone {
                            client: job.client,
                            ic: job.ic,
                            generation: job.generation,
                            vis: job.vis,
                            result,
                        }))
                    }
                };
                if factory_requests.send(request).is_err() {
                    return;
                }
                factory_wake.ring();
            }
        });
    Factory {
        jobs: tx,
        urgent: urgent_tx,
        idle: idle_tx,
        connectors,
        requests,
        wake,
        realtime,
    }
}

struct Binding {
    ic: InterconnectId,
    pending: Vec<RcChannel>,
    vis: Vec<Arc<RcChannel>>,
    regions: Vec<ClientRegion>,
}

struct ClientSlot {
    spec: ClientSpec,
    memory: Vec<ClientMemory>,
    tx: Sender<ClientNotice>,
    /// Wakes the client's thread after a notice (see [`NodeHandle::register_woken`]).
    waker: Option<ClientWaker>,
    partner: Option<ClientEntry>,
    /// Per interconnect: the client's protection tag there, its memory registered in it once (a
    /// failover or failback reuses them: registering a multi-MiB ring is not free), and the windows.
    pds: BTreeMap<InterconnectId, ClientTag>,
    bindings: BTreeMap<Generation, Binding>,
    resumed: bool,
    /// Per interconnect: VIs made ahead of time (with the device epoch they were made at), so a failover
    /// (or failback, or reset) there hands them out instead of creating VIs on its critical path. Refilled
    /// on the factory's idle queue while the client runs.
    spares: BTreeMap<InterconnectId, (u64, Vec<RcChannel>, ClientTag)>,
    /// Spares asked of the factory: interconnect and device epoch.
    spares_asked: BTreeMap<InterconnectId, u64>,
    /// How many VIs the client's latest binding asked for (the size of its spares).
    vi_count: u8,
    /// Whether the client runs (told Ready, not stopped since): spares are refilled only then.
    running: bool,
    meter: ByteMeter,
    /// What the node told it last (or its registration), for `ccm status`.
    last_event: Option<EventRecord>,
}

struct Driver {
    cfg: NodeConfig,
    manager: Manager,
    started: Instant,
    requests: Receiver<Request>,
    wake: Arc<Doorbell>,
    status: Arc<Mutex<NodeStatus>>,
    ics: Vec<Ic>,
    sessions: BTreeMap<SessionId, Sess>,
    next_session: u64,
    clients: BTreeMap<ClientId, ClientSlot>,
    timer: Option<Time>,
    wc: Vec<Completion>,
    inbox: Vec<Message>,
    events: Vec<EventRecord>,
    last_port_poll: Instant,
    /// The kernel's announcements of removed RDMA devices (rxe raises no DEVICE_FATAL), if the socket
    /// could be opened; otherwise a deleted device shows at the next look at the ports.
    removals: Option<uevents::DeviceRemovals>,
    /// A removal was announced: look at the ports this turn.
    removal_seen: bool,
    last_status: Instant,
    first_heartbeat_logged: bool,
    first_heartbeat_received: bool,
    first_heartbeat_ms: Option<f64>,
    realtime: bool,
    /// Whether `refill_spares` has anything to look at.
    spares_check: bool,
    /// Told when the first heartbeat arrives ([`NodeHandle::wait_first_heartbeat`]).
    first_heartbeat_signal: Arc<FirstHeartbeat>,
    link_failures: u64,
    factory: Factory,
    stop: bool,
    reaper: Sender<Doomed>,
    last_sample: Instant,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Driver {
    fn new(
        cfg: NodeConfig,
        manager: Manager,
        started: Instant,
        requests: Receiver<Request>,
        wake: Arc<Doorbell>,
        status: Arc<Mutex<NodeStatus>>,
        factory: Factory,
    ) -> Driver {
        let ics = cfg
            .interconnects
            .iter()
            .map(|c| Ic {
                cfg: c.clone(),
                dev: None,
                pd: None,
                events: None,
                completions: None,
                port_up: false,
                listen: false,
                listener: None,
                knocks: None,
                last_probe: started,
                spare: None,
                spare_asked: false,
                epoch: 0,
                opening: true,
            })
            .collect();
        Driver {
            cfg,
            manager,
            started,
            requests,
            wake,
            status,
            ics,
            sessions: BTreeMap::new(),
            next_session: 1,
            clients: BTreeMap::new(),
            timer: None,
            wc: vec![Completion::default(); 32],
            inbox: Vec::with_capacity(16),
            events: Vec::new(),
            last_port_poll: started,
            removals: None,
            removal_seen: false,
            last_status: started,
            first_heartbeat_logged: false,
            first_heartbeat_received: false,
            first_heartbeat_ms: None,
            realtime: false,
            spares_check: true,
            first_heartbeat_signal: Arc::default(),
            link_failures: 0,
            factory,
            stop: false,
            reaper: spawn_reaper(),
            last_sample: started,
        }
    }

    /// Let the channels of interconnect `i` see its port state (they refuse to post while it is down).
    fn publish_port(&self, i: usize) {
        if let Some(d) = &self.ics[i].dev {
            d.port_up
                .store(self.ics[i].port_up, std::sync::atomic::Ordering::Release);
        }
    }

    fn reap(&self, doomed: Doomed) {
        if let Err(e) = self.reaper.send(doomed) {
            drop(e.into_inner()); // the reaper is gone only at exit: tear down here
        }
    }

    fn now(&self) -> Time {
        Time(self.started.elapsed().as_nanos() as u64)
    }

    fn record(&mut self, what: String) {
        tracing::info!(target: "ccm::node", at_ms = ms(self.started.elapsed()), "{what}");
        self.events.push(EventRecord {
            at_ms: ms(self.started.elapsed()),
            what,
        });
        if self.events.len() > 256 {
            self.events.remove(0);
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        self.manager.handle(now, input);
        self.run_actions();
    }

    fn run(&mut self) {
        match uevents::DeviceRemovals::open() {
            Ok(r) => self.removals = Some(r),
            Err(e) => self.record(format!(
                "no kernel uevents ({e}): a deleted device shows at the next look at the ports"
            )),
        }
        let t0 = self.started.elapsed();
        self.record(format!(
            "driver running {:.2} ms after process start",
            ms(t0)
        ));
        // The follower's listeners come first: binding needs only the address, and the kernel completes
        // the placer's TCP connect from the backlog while the devices open, so the placer's first
        // connect succeeds instead of being refused and waiting out a back-off.
        // Connections wait in the backlog until the interconnect's device is open (`poll_sessions`).
        // The placer listens for the follower's knock instead: a follower that (re)starts while the
        // placer waits out a reconnect back-off says when its listener is bound, and the placer
        // connects at once.
        for i in 0..self.ics.len() {
            if self.manager.config().is_placer() {
                self.bind_knocks(i);
            } else {
                self.bind_listener(i);
            }
        }
        // The devices are opening on threads of their own (`open_devices`): each interconnect's
        // bring-up starts when its own device is open (`device_opened`).
        while !self.stop {
            self.turn();
        }
        self.sessions.clear();
        self.clients.clear();
        self.publish_status();
    }

    /// Puts this (the driver) thread on SCHED_FIFO at the lowest real-time priority, as cluster
    /// heartbeat daemons do (corosync runs SCHED_RR): any runnable client thread of the node would
    /// otherwise delay heartbeats and control-VI polling by whole scheduler time slices, and the
    /// partner would fail a healthy link. The thread blocks in `poll(2)` whenever it is idle, so it
    /// takes the CPU only for its short turns. Without the privilege (CAP_SYS_NICE) it says so and
    /// stays at normal priority.
    fn run_realtime(&mut self) {
        match set_realtime() {
            Ok(()) => {
                self.realtime = true;
                self.record("driver thread on SCHED_FIFO (real-time, lowest priority)".into());
            }
            Err(e) => self.record(format!(
                "driver thread stays at normal priority: real-time scheduling refused ({e:?}); \
                 heartbeats may be delayed by busy client threads"
            )),
        }
    }

    /// Reopen interconnect `i`'s device on this thread (after it was removed).
    fn open_device(&mut self, i: usize) {
        let result = DeviceList::get().and_then(|list| open_ic(&list, &self.ics[i].cfg));
        self.install_device(i, result);
    }

    fn install_device(&mut self, i: usize, result: Result<OpenedDevice, ccm_verbs::Error>) {
        match result {
            Ok(d) => {
                let ic = &mut self.ics[i];
                ic.dev = Some(d.dev);
                ic.pd = d.pd;
                ic.events = d.events;
                ic.completions = d.completions;
                ic.port_up = d.up;
                ic.epoch += 1;
                // The first control VI was made with the device, before any session: a session then
                // takes it without creating verbs objects on this thread (see `open_session`).
                ic.spare = d.spare;
                ic.spare_asked = false;
                self.spares_check = true;
            }
            Err(e) => {
                let c = &self.ics[i].cfg;
                let what = format!(
                    "interconnect {i}: device {:?} / {} unusable: {e}",
                    c.device, c.local_ip
                );
                self.ics[i].port_up = false;
                self.record(what);
            }
        }
    }

    /// Interconnect `i`'s device, opened at start off this thread: the manager learns its port state
    /// and starts that interconnect's bring-up, whatever the other devices are doing.
    fn device_opened(&mut self, i: usize, result: Result<OpenedDevice, ccm_verbs::Error>) {
        self.ics[i].opening = false;
        self.ics[i].last_probe = Instant::now();
        self.install_device(i, result);
        self.publish_port(i);
        if self.ics.iter().all(|ic| !ic.opening) {
            self.record(format!(
                "devices opened {:.2} ms after process start",
                ms(self.started.elapsed())
            ));
        }
        let up = self.ics[i].port_up;
        self.input(Input::PortState {
            ic: InterconnectId(i as u8),
            up,
        });
    }

    fn turn(&mut self) {
        // Wait for sockets, async events, client requests, or the next deadline.
        let now = self.now();
        let mut timeout = Duration::from_millis(50);
        if let Some(t) = self.timer {
            timeout = timeout.min(t.saturating_since(now));
        }
        if !self.sessions.is_empty() {
            // Control-VI receives and async events wake the driver through their fds; the ports are
            // also looked at every `PORT_POLL` (a missed event). A control VI that cannot wake it (no
            // completion channel on its device, or its arming failed) is polled every millisecond, as
            // before: its heartbeats must not wait for the next look.
            let unnotified = self
                .sessions
                .values()
                .any(|s| !s.armed || self.ics[s.ic.0 as usize].completions.is_none());
            timeout = timeout.min(if unnotified {
                Duration::from_millis(1)
            } else {
                PORT_POLL
            });
        }

        let waited = Instant::now();
        self.wait(timeout);
        let overslept = waited.elapsed().saturating_sub(timeout);
        // Woken much later than asked: this thread (or the whole machine) was not running, and could
        // not have heard anything meanwhile. Tell the manager before it judges any silence.
        if overslept > self.manager.config().heartbeat_period / 2 {
            self.input(Input::Paused {
                duration: overslept,
            });
        }
        let t = Instant::now();
        let mut slowest = (Duration::ZERO, "");
        let mut lap = |what: &'static str, since: &mut Instant| {
            let d = since.elapsed();
            if d > slowest.0 {
                slowest = (d, what);
            }
            *since = Instant::now();
        };
        let mut since = Instant::now();
        self.drain_requests();
        lap("client requests", &mut since);
        self.poll_sessions();
        lap("sessions", &mut since);
        self.poll_control_vis();
        lap("control VIs", &mut since);
        let events = self.poll_async_events();
        lap("async events", &mut since);
        if events || self.removal_seen || self.last_port_poll.elapsed() >= PORT_POLL {
            self.removal_seen = false;
            self.last_port_poll = Instant::now();
            self.poll_ports();
        }
        lap("ports", &mut since);
        let now = self.now();
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            self.input(Input::Timer);
        }
        lap("timers", &mut since);
        self.refill_spares();
        if self.last_sample.elapsed() >= self.manager.config().balance_period {
            self.last_sample = Instant::now();
            self.sample_load();
        }
        self.check_confirmations();
        // A turn that takes longer than a heartbeat period delays every link's heartbeats: say so.
        let busy = t.elapsed();
        if busy + overslept > self.manager.config().heartbeat_period {
            self.record(format!(
                "driver turn took {:.1} ms (slowest: {} {:.1} ms), woke {:.1} ms late",
                ms(busy),
                slowest.1,
                ms(slowest.0),
                ms(overslept)
            ));
        }
        if self.last_status.elapsed() >= Duration::from_millis(50) {
            self.last_status = Instant::now();
            self.publish_status();
        }
    }

    fn wait(&mut self, timeout: Duration) {
        let mut fds: Vec<PollFd> = Vec::with_capacity(8);
        // SAFETY-free: the borrowed fds live as long as `self`, which outlives `fds` in this scope.
        let wake: BorrowedFd<'_> = self.wake.as_fd();
        fds.push(PollFd::new(wake, PollFlags::POLLIN));
        for ic in self.ics.iter().filter(|ic| !ic.opening) {
            if let Some(l) = &ic.listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
        }
        for u in self.ics.iter().filter_map(|ic| ic.knocks.as_ref()) {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
        }
        for s in self.sessions.values() {
            let mut f = PollFlags::POLLIN;
            if s.tcp.wants_write() {
                f |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(s.tcp.fd(), f));
        }
        let first_device_fd = fds.len();
        for ic in &self.ics {
            if let Some(e) = &ic.events {
                fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
            }
            if let Some(c) = &ic.completions {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
        }
        if let Some(r) = &self.removals {
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        let ms = timeout.as_millis().min(1000) as u16;
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        let readable = fds[first_device_fd..]
            .iter()
            .any(|f| f.revents().is_some_and(|r| !r.is_empty()));
        drop(fds);
        if readable {
            self.take_completion_events();
            if let Some(r) = &self.removals {
                let mut buf = [0u8; 4096];
                if r.take(&mut buf) {
                    self.removal_seen = true;
                }
            }
        }
        self.wake.drain();
    }

    fn drain_requests(&mut self) {
        while let Ok(r) = self.requests.try_recv() {
            match r {
                Request::Register {
                    spec,
                    memory,
                    tx,
                    waker,
                    meter,
                } => {
                    let id = spec.id;
                    self.clients.insert(
                        id,
                        ClientSlot {
                            spec: spec.clone(),
                            memory,
                            tx,
                            waker,
                            partner: None,
                            pds: BTreeMap::new(),
                            bindings: BTreeMap::new(),
                            resumed: false,
                            spares: BTreeMap::new(),
                            spares_asked: BTreeMap::new(),
                            vi_count: spec.vi_count,
                            running: false,
                            meter,
                            last_event: Some(EventRecord {
                                at_ms: ms(self.started.elapsed()),
                                what: "registered".into(),
                            }),
                        },
                    );
                    self.record(format!("client {} ({}) registered", id.0, spec.name));
                    self.input(Input::Client(ClientRequest::Register(spec)));
                }
                Request::Unregister(id) => {
                    self.input(Input::Client(ClientRequest::Unregister(id)));
                    if let Some(c) = self.clients.remove(&id) {
                        for (_, b) in c.bindings {
                            self.reap(Doomed::Binding(b));
                        }
                    }
                }
                Request::ViError {
                    client,
                    ic,
                    generation,
                } => {
                    // A cut link often shows first as an error completion on a busy client VI: look at
                    // the ports now rather than at the next poll, so a dead port fails the whole link
                    // (and moves its clients) before this error is taken for the client's own.
                    self.poll_ports();
                    self.input(Input::ViError {
                        ic,
                        vi: ViRef::Client(client, generation),
                    });
                }
                Request::Shutdown => self.stop = true,
                Request::VisCreated(done) => self.vis_created(*done),
                Request::SpareClientVis(done) => self.spare_made(*done),
                Request::VisConnected(done) => self.vis_connected(*done),
                Request::ControlConnected(done) => self.control_connected(*done),
                Request::DeviceOpened { ic, result } => self.device_opened(ic, result.map(|d| *d)),
                Request::SpareControlVi { ic, epoch, result } => {
                    let slot = &mut self.ics[ic];
                    match result {
                        Ok(vi) if slot.epoch == epoch && slot.dev.is_some() => {
                            slot.spare_asked = false;
                            slot.spare = Some(*vi);
                        }
                        Ok(vi) => self.reap(Doomed::Channels(vec![*vi])),
                        Err(e) => {
                            if slot.epoch == epoch {
                                slot.spare_asked = false;
                            }
                            self.record(format!("interconnect {ic}: spare control VI: {e}"));
                        }
                    }
                }
            }
        }
    }

    fn run_actions(&mut self) {
        while let Some(a) = self.manager.poll_action() {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Listen { ic } => {
                self.ics[ic.0 as usize].listen = true;
                self.bind_listener(ic.0 as usize);
            }
            Action::Connect { ic, attempt } => self.connect(ic, attempt),
            Action::CloseSession { session, .. } => {
                if let Some(mut s) = self.sessions.remove(&session) {
                    let _ = s.tcp.flush();
                    self.reap(Doomed::Session(Box::new(s)));
                }
            }
            Action::Send { session, msg, .. } => self.send(session, msg),
            Action::SlamConnectControl {
                ic,
                session,
                remote,
                ..
            } => {
                // Normally done already when the partner's PeerInfo arrived (`session_message`): then
                // this is the same remote again, a no-op.
                let timing = RcTiming::control_for(self.manager.config().heartbeat_timeout());
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                // `None`: the connect is under way off this thread.
                let Some(control) = s.control.as_mut() else {
                    return;
                };
                let access = AccessFlags::LOCAL_WRITE;
                if let Err(e) = control.slam_connect(&remote, timing, access) {
                    self.record(format!(
                        "interconnect {}: control VI slam connect failed: {e}",
                        ic.0
                    ));
                    self.input(Input::ViError {
                        ic,
                        vi: ViRef::Control,
                    });
                }
            }
            Action::CreateClientVis {
                client,
                ic,
                generation,
                count,
            } => self.create_client_vis(client, ic, generation, count),
            Action::SlamConnect {
                client,
                ic,
                generation,
                remote,
                ..
            } => self.slam_client(client, ic, generation, remote),
            Action::ReleaseClientVis {
                client, generation, ..
            } => {
                if let Some(b) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|c| c.bindings.remove(&generation))
                {
                    self.reap(Doomed::Binding(b));
                }
            }
            Action::Tell { client, event } => self.tell(client, event),
            Action::LinkRefused { ic, error } => {
                self.record(format!("interconnect {}: refused: {error}", ic.0))
            }
            Action::ArmTimer { deadline } => self.timer = Some(deadline),
            Action::Step { step, .. } => {
                if matches!(step, crate::manager::Step::StopClients520 { .. }) {
                    self.link_failures += 1;
                }
                let text = format!("{step:?}");
                self.record(text);
            }
        }
    }

    fn bind_listener(&mut self, i: usize) {
        let ic = &mut self.ics[i];
        if ic.listener.is_some() {
            return;
        }
        match TcpListener::bind(SocketAddr::new(ic.cfg.local_ip, ic.cfg.tcp_port)) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                ic.listener = Some(l);
                self.knock(i);
            }
            Err(e) => {
                let what = format!(
                    "interconnect {i}: cannot listen on {}:{}: {e}",
                    ic.cfg.local_ip, ic.cfg.tcp_port
                );
                self.record(what);
            }
        }
    }

    /// The follower, its listener on interconnect `i` just bound: one [`Knock`] to the placer's address
    /// and port there (lost or unheard, the placer's back-off still brings its connect).
    fn knock(&mut self, i: usize) {
        let c = &self.ics[i].cfg;
        let (from, to) = (
            SocketAddr::new(c.local_ip, 0),
            SocketAddr::new(c.partner_ip, c.tcp_port),
        );
        let m = self.manager.config();
        let knock = Knock {
            cluster: m.cluster,
            node: m.node,
        };
        let sent = UdpSocket::bind(from).and_then(|u| u.send_to(&knock.to_bytes(), to));
        if let Err(e) = sent {
            self.record(format!("interconnect {i}: knock to {to}: {e}"));
        }
    }

    /// The placer's knock socket of interconnect `i` (see [`Knock`]).
    fn bind_knocks(&mut self, i: usize) {
        let c = &self.ics[i].cfg;
        let at = SocketAddr::new(c.local_ip, c.tcp_port);
        match UdpSocket::bind(at) {
            Ok(u) => {
                let _ = u.set_nonblocking(true);
                self.ics[i].knocks = Some(u);
            }
            Err(e) => self.record(format!("interconnect {i}: no knocks on {at}: {e}")),
        }
    }

    /// Knocks received on interconnect `i`: the partner's (right cluster and node) bring the placer's
    /// connect forward; anything else is dropped.
    fn poll_knocks(&mut self, i: usize) {
        let mut buf = [0u8; 64];
        let mut heard = false;
        while let Some(Ok(n)) = self.ics[i].knocks.as_ref().map(|u| u.recv(&mut buf)) {
            let m = self.manager.config();
            heard |= Knock::decode(&buf[..n])
                .is_ok_and(|k| k.cluster == m.cluster && k.node == m.partner);
        }
        if heard {
            self.record(format!("interconnect {i}: the partner knocked"));
            self.input(Input::PartnerListening {
                ic: InterconnectId(i as u8),
            });
        }
    }

    /// A new session on `ic` with its control VI (410): the spare made ahead of time, and the factory
    /// thread makes the next one. Creating verbs objects here would stall every link's heartbeats for as
    /// long as the factory holds the device (hundreds of ms in the lab while 64 client VIs are made).
    fn open_session(&mut self, ic: InterconnectId, tcp: TcpSession) -> Option<SessionId> {
        let i = ic.0 as usize;
        let (Some(dev), Some(pd)) = (self.ics[i].dev.clone(), self.ics[i].pd.clone()) else {
            return None;
        };
        let spare = self.ics[i].spare.take();
        if !self.ics[i].spare_asked {
            self.ics[i].spare_asked = true;
            let job = FactoryJob::Control {
                ic: i,
                epoch: self.ics[i].epoch,
                dev: dev.clone(),
                pd: pd.clone(),
                completions: self.ics[i].completions.clone(),
            };
            let _ = self.factory.send(job);
        }
        let completions = self.ics[i].completions.clone();
        let control =
            match spare.map_or_else(|| make_control_vi(&dev, &pd, completions.as_ref()), Ok) {
                Ok(c) => c,
                Err(e) => {
                    let what = format!("interconnect {i}: control VI: {e}");
                    self.record(what);
                    return None;
                }
            };
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let address = control.address();
        self.sessions.insert(
            id,
            Sess {
                ic,
                tcp,
                control: Some(control),
                connected: false,
                confirmed: false,
                armed: false,
                confirm_deadline: None,
                held: Vec::new(),
            },
        );
        self.input(Input::SessionEstablished {
            ic,
            session: id,
            control_vi: address,
            windows: Vec::new(),
        });
        Some(id)
    }

    fn connect(&mut self, ic: InterconnectId, attempt: u64) {
        let c = &self.ics[ic.0 as usize].cfg;
        let addr = SocketAddr::new(c.partner_ip, c.tcp_port);
        let timeout = self.manager.config().connect_timeout;
        let opened = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => TcpSession::new(stream)
                .ok()
                .and_then(|tcp| self.open_session(ic, tcp))
                .is_some(),
            Err(_) => false,
        };
        if !opened {
            self.input(Input::ConnectFailed { ic, attempt });
        }
    }

    fn send(&mut self, session: SessionId, msg: Message) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let ic = s.ic;
        let heartbeat = matches!(msg, Message::Heartbeat(_));
        let result = if let Some(control) = s.control.as_ref().filter(|_| heartbeat && s.confirmed)
        {
            let bytes = msg.to_bytes();
            control.send_inline(&bytes).map_err(|e| e.to_string())
        } else {
            s.tcp.send(&msg).map_err(|e| e.to_string())
        };
        let confirmed = s.confirmed;
        if heartbeat && !self.first_heartbeat_logged && confirmed {
            self.first_heartbeat_logged = true;
            self.record(format!(
                "first heartbeat sent over the control VI of interconnect {}",
                ic.0
            ));
        }
        if let Err(e) = result {
            self.record(format!("interconnect {}: send failed: {e}", ic.0));
            if heartbeat && confirmed {
                self.input(Input::ViError {
                    ic,
                    vi: ViRef::Control,
                });
            } else {
                self.input(Input::SessionClosed { ic, session });
            }
        }
    }

    fn poll_sessions(&mut self) {
        for i in 0..self.ics.len() {
            self.poll_knocks(i);
        }
        // Accept the partner's sessions.
        for i in 0..self.ics.len() {
            if self.ics[i].opening {
                continue; // a connection waits in the backlog until the device is open
            }
            let accepted = match &self.ics[i].listener {
                Some(l) => match l.accept() {
                    Ok((s, _)) => Some(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                    Err(_) => None,
                },
                None => {
                    if self.ics[i].listen {
                        self.bind_listener(i);
                    }
                    None
                }
            };
            if let Some(stream) = accepted {
                let ic = InterconnectId(i as u8);
                let Ok(tcp) = TcpSession::new(stream) else {
                    continue;
                };
                // A second session on an up interconnect is the manager's challenger: it replaces the
                // live one only once it proved the cluster secret (see the manager's 415).
                if self.open_session(ic, tcp).is_none() {
                    let what = format!("interconnect {i}: session refused: device not usable");
                    self.record(what);
                }
            }
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let ic = s.ic;
            let _ = s.tcp.flush();
            let mut inbox = std::mem::take(&mut self.inbox);
            let outcome = s.tcp.read(&mut inbox);
            for msg in inbox.drain(..) {
                self.session_message(id, msg);
            }
            self.inbox = inbox;
            match outcome {
                ReadOutcome::Open => {}
                ReadOutcome::Closed => self.input(Input::SessionClosed { ic, session: id }),
                ReadOutcome::Malformed(error) => {
                    self.record(format!(
                        "interconnect {}: malformed bytes on the initial session: {error}",
                        ic.0
                    ));
                    self.input(Input::Malformed {
                        ic,
                        session: id,
                        error,
                    });
                }
            }
        }
    }

    /// A message from the initial session. The partner's PeerInfo (415) names its control VI: slam
    /// connect ours to it, probe it, and hold the PeerInfo (and whatever follows it) back from the
    /// manager until something arrives over the control VI. So an interconnect is only ever *up* for
    /// the manager when its RDMA path carries traffic both ways, and heartbeats always travel on that
    /// path (in the lab the TCP session runs over loopback and would hide a dead link).
    fn session_message(&mut self, id: SessionId, msg: Message) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let ic = s.ic;
        if !s.held.is_empty() {
            s.held.push(msg);
            return;
        }
        let remote = match &msg {
            Message::PeerInfo(info) if !s.confirmed => info.control_vi,
            _ => {
                self.input(Input::Message {
                    ic,
                    session: id,
                    msg,
                });
                return;
            }
        };
        // The connect runs off this thread (see `Factory::connect_control`); the PeerInfo and whatever
        // follows it wait in `held` until it is back (`control_connected`) and confirmed.
        let timing = RcTiming::control_for(self.manager.config().heartbeat_timeout());
        let partner_ip = self.ics[ic.0 as usize].cfg.partner_ip;
        let s = self.sessions.get_mut(&id).expect("session");
        let mut control = s
            .control
            .take()
            .expect("an unconnected session holds its control VI");
        s.held.push(msg);
        if neighbour_resolved(partner_ip) {
            // The kernel knows the partner's MAC: the move to RTR cannot wait for ARP, so connect here
            // and spare the bring-up two thread hand-offs (they delayed the first heartbeat by up to
            // 21 ms in the lab).
            let t = Instant::now();
            let result = control
                .slam_connect(&remote, timing, AccessFlags::LOCAL_WRITE)
                .map(|_| ());
            let took = t.elapsed();
            self.control_connected(ControlDone {
                session: id,
                ic,
                control,
                took,
                result,
            });
            return;
        }
        let job = ControlJob {
            session: id,
            ic,
            control,
            remote,
            timing,
        };
        if let Err(job) = self.factory.connect_control(job) {
            self.record(format!(
                "interconnect {}: control VI slam connect: no connector thread",
                ic.0
            ));
            self.reap(Doomed::Channels(vec![job.control]));
            self.control_failed(id, ic);
        }
    }

    /// Session `id`'s control VI could not be connected: the manager gets the PeerInfo (and what
    /// followed it) as it would have without the VI, then the error.
    fn control_failed(&mut self, id: SessionId, ic: InterconnectId) {
        let held = std::mem::take(&mut self.sessions.get_mut(&id).expect("session").held);
        for msg in held {
            self.input(Input::Message {
                ic,
                session: id,
                msg,
            });
        }
        self.input(Input::ViError {
            ic,
            vi: ViRef::Control,
        });
    }

    /// A control VI back from its slam connect: probe the partner over it and give it until the
    /// confirmation deadline (counted from now) to carry something back.
    fn control_connected(&mut self, done: ControlDone) {
        let ControlDone {
            session: id,
            ic,
            control,
            took,
            result,
        } = done;
        let Some(s) = self.sessions.get_mut(&id) else {
            // The session ended while its VI was being connected.
            let outcome = result.map_or_else(|e| format!("failed: {e}"), |()| "done".into());
            self.record(format!(
                "interconnect {}: control VI slam connect of a closed session came back after {:.2} ms: {outcome}",
                ic.0,
                ms(took)
            ));
            self.reap(Doomed::Channels(vec![control]));
            return;
        };
        s.control = Some(control);
        match result {
            Ok(()) => {
                let timeout =
                    (self.manager.config().heartbeat_timeout() * 3).max(Duration::from_millis(100));
                let deadline = self.now() + timeout;
                let s = self.sessions.get_mut(&id).expect("session");
                s.connected = true;
                s.confirm_deadline = Some(deadline);
                let probe = Message::Heartbeat(Heartbeat {
                    seq: PROBE_SEQ,
                    time_ns: 0,
                })
                .to_bytes();
                let sent = s
                    .control
                    .as_ref()
                    .expect("just put back")
                    .send_inline(&probe);
                self.record(format!(
                    "interconnect {}: control VI slam connected in {:.2} ms, probe sent",
                    ic.0,
                    ms(took)
                ));
                if let Err(e) = sent {
                    self.record(format!("interconnect {}: control VI probe: {e}", ic.0));
                    self.input(Input::ViError {
                        ic,
                        vi: ViRef::Control,
                    });
                }
            }
            Err(e) => {
                self.record(format!(
                    "interconnect {}: control VI slam connect failed: {e}",
                    ic.0
                ));
                self.control_failed(id, ic);
            }
        }
    }

    /// Every control VI: its receives armed first (if an event used the arming up), then polled until
    /// empty, so a receive is either found here or raises the next event. Send completions (the
    /// partner's RC acknowledgements of heartbeats) wake nobody: they are taken at the next turn, at
    /// the latest the next heartbeat's.
    fn poll_control_vis(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                if let Some(control) = s.control.as_ref().filter(|_| !s.armed) {
                    if self.ics[s.ic.0 as usize].completions.is_some() {
                        s.armed = control.arm_receives().is_ok();
                    }
                }
            }
            while self.poll_control_vi(id) == self.wc.len() {}
        }
    }

    /// Take the completion events of the control VIs' channels (each acknowledged as it is taken) and
    /// disarm the control VIs of the interconnects that had one.
    fn take_completion_events(&mut self) {
        for i in 0..self.ics.len() {
            let Some(c) = &self.ics[i].completions else {
                continue;
            };
            let mut any = false;
            while let Ok(Some(_)) = c.try_get_event() {
                any = true;
            }
            if any {
                let ic = InterconnectId(i as u8);
                for s in self.sessions.values_mut().filter(|s| s.ic == ic) {
                    s.armed = false;
                }
            }
        }
    }

    /// One poll of session `id`'s control VI, its completions handled; how many there were.
    fn poll_control_vi(&mut self, id: SessionId) -> usize {
        {
            let Some(s) = self.sessions.get_mut(&id) else {
                return 0;
            };
            let ic = s.ic;
            let Some(control) = s.control.as_mut() else {
                return 0;
            };
            let n = match control.poll(&mut self.wc) {
                Ok(n) => n,
                Err(_) => {
                    self.input(Input::ViError {
                        ic,
                        vi: ViRef::Control,
                    });
                    return 0;
                }
            };
            for k in 0..n {
                let c = self.wc[k];
                let Some(s) = self.sessions.get_mut(&id) else {
                    break;
                };
                if !c.is_success() {
                    if s.connected {
                        let what = format!(
                            "interconnect {}: control VI completion {:?}",
                            ic.0,
                            c.status()
                        );
                        s.connected = false;
                        self.record(what);
                        self.input(Input::ViError {
                            ic,
                            vi: ViRef::Control,
                        });
                    }
                    continue;
                }
                if c.wr_id() >= SEND_WR_BASE {
                    // The partner's RC transport acknowledged a heartbeat: its host and the path are alive.
                    if s.confirmed {
                        self.input(Input::PathAlive { ic, session: id });
                    }
                    continue;
                }
                let Some(control) = s.control.as_mut() else {
                    break;
                };
                let decoded = Message::decode_exact(control.received(&c));
                let _ = control.repost(&c);
                if !s.confirmed {
                    s.confirmed = true;
                    s.confirm_deadline = None;
                    let held = std::mem::take(&mut s.held);
                    let at = ms(self.started.elapsed());
                    self.record(format!(
                        "interconnect {}: control VI confirmed (RDMA path up) at {at:.2} ms",
                        ic.0
                    ));
                    for msg in held {
                        self.input(Input::Message {
                            ic,
                            session: id,
                            msg,
                        });
                    }
                }
                match decoded {
                    Ok(Message::Heartbeat(h)) if h.seq == PROBE_SEQ => {}
                    Ok(msg @ Message::Heartbeat(_)) if !self.first_heartbeat_received => {
                        self.first_heartbeat_received = true;
                        self.first_heartbeat_ms = Some(ms(self.started.elapsed()));
                        *self
                            .first_heartbeat_signal
                            .seen
                            .lock()
                            .expect("first heartbeat") = true;
                        self.first_heartbeat_signal.cv.notify_all();
                        self.record(format!(
                            "first heartbeat received over the control VI of interconnect {}",
                            ic.0
                        ));
                        self.input(Input::Message {
                            ic,
                            session: id,
                            msg,
                        });
                    }
                    Ok(msg) => self.input(Input::Message {
                        ic,
                        session: id,
                        msg,
                    }),
                    Err(error) => self.input(Input::Malformed {
                        ic,
                        session: id,
                        error,
                    }),
                }
            }
            n
        }
    }

    fn check_confirmations(&mut self) {
        let now = self.now();
        let late: Vec<(SessionId, InterconnectId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.confirm_deadline.is_some_and(|d| d <= now))
            .map(|(id, s)| (*id, s.ic))
            .collect();
        for (id, ic) in late {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.confirm_deadline = None;
            }
            self.record(format!(
                "interconnect {}: nothing arrived on the control VI: RDMA path dead",
                ic.0
            ));
            if let Some(s) = self.sessions.remove(&id) {
                self.reap(Doomed::Session(Box::new(s)));
            }
            self.input(Input::SessionClosed { ic, session: id });
        }
    }

    /// Whether any arrived.
    fn poll_async_events(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.ics.len() {
            let mut got = Vec::new();
            if let Some(ev) = &self.ics[i].events {
                while let Ok(Some(e)) = ev.try_next() {
                    got.push(e);
                }
            }
            any |= !got.is_empty();
            for e in got {
                let ic = InterconnectId(i as u8);
                let mapped = match e {
                    ccm_verbs::AsyncEvent::PortActive { .. } => Some(AsyncEvent::PortActive),
                    ccm_verbs::AsyncEvent::PortErr { .. } => Some(AsyncEvent::PortError),
                    ccm_verbs::AsyncEvent::DeviceFatal => Some(AsyncEvent::DeviceFatal),
                    _ => None,
                };
                self.record(format!("interconnect {i}: async event {e:?}"));
                if let Some(event) = mapped {
                    self.ics[i].port_up = event == AsyncEvent::PortActive;
                    self.publish_port(i);
                    self.input(Input::AsyncEvent { ic, event });
                }
            }
        }
        any
    }

    fn poll_ports(&mut self) {
        for i in 0..self.ics.len() {
            let ic = InterconnectId(i as u8);
            let removed = self.ics[i].dev.as_ref().map(|d| d.ctx.is_removed());
            match removed {
                Some(true) => {
                    // The device went away (rxe: deleted). Drop every object on it so the deletion can
                    // finish, and reopen it when it is back.
                    self.record(format!("interconnect {i}: device removed"));
                    self.input(Input::AsyncEvent {
                        ic,
                        event: AsyncEvent::DeviceFatal,
                    });
                    let doomed: Vec<SessionId> = self
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.ic == ic)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in doomed {
                        self.input(Input::SessionClosed { ic, session: id });
                        self.sessions.remove(&id);
                    }
                    for c in self.clients.values_mut() {
                        c.spares.remove(&ic);
                        c.spares_asked.remove(&ic);
                        c.pds.remove(&ic);
                        c.bindings.retain(|_, b| b.ic != ic);
                    }
                    let dev = &mut self.ics[i];
                    dev.listener = None;
                    dev.events = None;
                    dev.completions = None;
                    if let Some(vi) = dev.spare.take() {
                        drop(vi); // before the device: the deletion waits for every object on it
                    }
                    dev.pd = None;
                    dev.dev = None;
                    dev.port_up = false;
                    dev.last_probe = Instant::now();
                }
                Some(false) => {
                    let dev = self.ics[i].dev.as_ref().expect("device present");
                    let up = dev
                        .ctx
                        .query_port(dev.port)
                        .map(|p| p.state == PortState::Active)
                        .unwrap_or(false);
                    if up != self.ics[i].port_up {
                        self.ics[i].port_up = up;
                        self.publish_port(i);
                        self.record(format!(
                            "interconnect {i}: port {}",
                            if up { "ACTIVE" } else { "DOWN" }
                        ));
                        self.input(Input::PortState { ic, up });
                    }
                }
                None if self.ics[i].opening => {}
                None => {
                    if self.ics[i].last_probe.elapsed() >= Duration::from_millis(100) {
                        self.ics[i].last_probe = Instant::now();
                        self.open_device(i);
                        if self.ics[i].dev.is_some() {
                            let up = self.ics[i].port_up;
                            self.record(format!("interconnect {i}: device back"));
                            if self.ics[i].listen {
                                self.bind_listener(i);
                            }
                            self.input(Input::PortState { ic, up });
                        }
                    }
                }
            }
        }
    }

    /// 420: the work (protection domain, memory registration, QPs) is done on the VI factory thread:
    /// it costs milliseconds per VI on rxe, and 64 clients created in one go on this thread would starve
    /// every link's heartbeats. The result comes back as a [`Request::VisCreated`].
    fn create_client_vis(
        &mut self,
        client: ClientId,
        ic: InterconnectId,
        generation: Generation,
        count: u8,
    ) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.vi_count = count;
        }
        if let Some((vis, tag)) = self.take_spare(client, ic, count) {
            self.record(format!(
                "client {}: spare VIs handed out on interconnect {}",
                client.0, ic.0
            ));
            self.vis_created(VisDone {
                client,
                ic,
                generation,
                result: Ok((vis, tag)),
            });
            return;
        }
        let (Some(dev), Some(c)) = (
            self.ics[ic.0 as usize].dev.clone(),
            self.clients.get(&client),
        ) else {
            self.input(Input::ViError {
                ic,
                vi: ViRef::Client(client, generation),
            });
            return;
        };
        let job = VisJob {
            client,
            ic,
            generation,
            count,
            dev,
            memory: c.memory.clone(),
            tag: c.pds.get(&ic).cloned(),
            notified: c.waker.is_some(),
        };
        if self.factory.send(FactoryJob::Create(job)).is_err() {
            self.input(Input::ViError {
                ic,
                vi: ViRef::Client(client, generation),
            });
        }
    }

    /// The client's spare VIs on `ic`, if they were made on the device as it is now and are as many as
    /// asked (others are torn down).
    fn take_spare(
        &mut self,
        client: ClientId,
        ic: InterconnectId,
        count: u8,
    ) -> Option<(Vec<RcChannel>, ClientTag)> {
        let epoch = self.ics[ic.0 as usize].epoch;
        let present = self.ics[ic.0 as usize].dev.is_some();
        let (e, vis, tag) = self.clients.get_mut(&client)?.spares.remove(&ic)?;
        self.spares_check = true;
        if present && e == epoch && vis.len() == count as usize {
            return Some((vis, tag));
        }
        self.reap(Doomed::Channels(vis));
        None
    }

    /// Ask the factory's idle queue for the spare VIs a running client lacks, on every interconnect
    /// whose device is open (cheap when nothing is missing: a look at each client).
    /// Asks the factory for the spare VIs that are missing. Only after something changed what is
    /// wanted or had (`spares_check`): a pass looks at every client on every interconnect, and turns
    /// come a thousand times a second.
    fn refill_spares(&mut self) {
        if !std::mem::take(&mut self.spares_check) {
            return;
        }
        for (&id, c) in self.clients.iter_mut() {
            if !c.running {
                continue;
            }
            for (i, d) in self.ics.iter().enumerate() {
                let ic = InterconnectId(i as u8);
                let Some(dev) = &d.dev else { continue };
                let have = c.spares.get(&ic).is_some_and(|s| s.0 == d.epoch)
                    || c.spares_asked.get(&ic) == Some(&d.epoch);
                if have {
                    continue;
                }
                let job = VisJob {
                    client: id,
                    ic,
                    generation: Generation(0),
                    count: c.vi_count,
                    dev: dev.clone(),
                    memory: c.memory.clone(),
                    tag: c.pds.get(&ic).cloned(),
                    notified: c.waker.is_some(),
                };
                if self.factory.send(FactoryJob::Spare(job, d.epoch)).is_ok() {
                    c.spares_asked.insert(ic, d.epoch);
                } else {
                    self.spares_check = true; // try again next turn
                }
            }
        }
    }

    /// Spare VIs back from the factory: kept if the device is still the one they were made on.
    fn spare_made(&mut self, done: SpareDone) {
        let SpareDone {
            client,
            ic,
            epoch,
            result,
        } = done;
        let current = self.ics[ic.0 as usize].epoch;
        let present = self.ics[ic.0 as usize].dev.is_some();
        let Some(c) = self.clients.get_mut(&client) else {
            if let Ok((vis, _)) = result {
                self.reap(Doomed::Channels(vis));
            }
            return;
        };
        if c.spares_asked.get(&ic) == Some(&epoch) {
            c.spares_asked.remove(&ic);
            self.spares_check = true;
        }
        match result {
            Ok((vis, tag)) if present && epoch == current => {
                c.pds.entry(ic).or_insert_with(|| tag.clone());
                if let Some((_, old, _)) = c.spares.insert(ic, (epoch, vis, tag)) {
                    self.reap(Doomed::Channels(old));
                }
            }
            Ok((vis, _)) => self.reap(Doomed::Channels(vis)),
            Err(e) => {
                // Not asked again until the client is told Ready again: no retry storm on a sick device.
                c.running = false;
                self.record(format!(
                    "client {}: spare VIs on interconnect {}: {e}",
                    client.0, ic.0
                ));
            }
        }
    }

    fn vis_created(&mut self, done: VisDone) {
        let VisDone {
            client,
            ic,
            generation,
            result,
        } = done;
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        match result {
            Ok((vis, tag)) => {
                let addrs = vis.iter().map(|v| v.address()).collect();
                let (_, regions, windows) = tag.clone();
                c.pds.insert(ic, tag);
                c.bindings.insert(
                    generation,
                    Binding {
                        ic,
                        pending: vis,
                        vis: Vec::new(),
                        regions,
                    },
                );
                self.input(Input::ClientVisCreated {
                    client,
                    generation,
                    vis: addrs,
                    windows,
                });
            }
            Err(e) => {
                self.record(format!(
                    "client {}: creating VIs on interconnect {}: {e}",
                    client.0, ic.0
                ));
                self.input(Input::ViError {
                    ic,
                    vi: ViRef::Client(client, generation),
                });
            }
        }
    }

    fn slam_client(
        &mut self,
        client: ClientId,
        ic: InterconnectId,
        generation: Generation,
        remote: Vec<crate::wire::ViAddress>,
    ) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let Some(b) = c.bindings.get_mut(&generation) else {
            return;
        };
        let job = ConnectJob {
            client,
            ic,
            generation,
            vis: std::mem::take(&mut b.pending),
            remote,
        };
        if let Err(e) = self.factory.send(FactoryJob::Connect(job)) {
            if let FactoryJob::Connect(job) = *e {
                self.reap(Doomed::Channels(job.vis));
            }
            self.input(Input::ViError {
                ic,
                vi: ViRef::Client(client, generation),
            });
        }
    }

    /// 435 done on the factory thread: the VIs join their binding and the manager is told (440 follows).
    fn vis_connected(&mut self, done: ConnectDone) {
        let ConnectDone {
            client,
            ic,
            generation,
            vis,
            result,
        } = done;
        let binding = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.bindings.get_mut(&generation))
            .filter(|b| b.pending.is_empty() && b.vis.is_empty());
        match (binding, result) {
            (Some(b), Ok(())) => {
                b.vis = vis.into_iter().map(Arc::new).collect();
                self.input(Input::ClientVisConnected { client, generation });
            }
            (Some(_), Err(e)) => {
                self.reap(Doomed::Channels(vis));
                self.record(format!(
                    "client {}: slam connect on interconnect {}: {e}",
                    client.0, ic.0
                ));
                self.input(Input::ViError {
                    ic,
                    vi: ViRef::Client(client, generation),
                });
            }
            // Released (or the client left) while they were being connected.
            (None, _) => self.reap(Doomed::Channels(vis)),
        }
    }

    fn tell(&mut self, client: ClientId, event: ClientEvent) {
        let at_ms = ms(self.started.elapsed());
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let notice = match event {
            ClientEvent::PartnerInfo(entry) => {
                c.partner = Some(entry);
                return;
            }
            ClientEvent::Ready { ic, generation } | ClientEvent::Resumed { ic, generation } => {
                let Some(b) = c.bindings.get(&generation) else {
                    return;
                };
                let Some(partner) = c.partner.clone().filter(|p| p.generation == generation) else {
                    return;
                };
                let resumed = c.resumed;
                c.resumed = true;
                c.running = true;
                ClientNotice::Ready {
                    ic,
                    generation,
                    resumed,
                    vis: b.vis.clone(),
                    regions: b.regions.clone(),
                    partner,
                }
            }
            ClientEvent::Stop { ic } => {
                c.running = false;
                ClientNotice::Stop { ic }
            }
            ClientEvent::PartnerSuspect => ClientNotice::PartnerSuspect,
            ClientEvent::PartnerDown => {
                c.resumed = false;
                c.running = false;
                ClientNotice::PartnerDown
            }
            ClientEvent::PartnerClosed => ClientNotice::PartnerClosed,
        };
        // What `ccm status` shows as the client's last event (control path: the text may allocate).
        let what = match &notice {
            ClientNotice::Ready {
                ic,
                generation,
                resumed,
                ..
            } => format!(
                "Ready on ic{} (gen {}{})",
                ic.0,
                generation.0,
                if *resumed { ", resumed" } else { "" }
            ),
            ClientNotice::Stop { ic } => format!("Stop on ic{}", ic.0),
            ClientNotice::PartnerSuspect => "PartnerSuspect".into(),
            ClientNotice::PartnerDown => "PartnerDown".into(),
            ClientNotice::PartnerClosed => "PartnerClosed".into(),
        };
        c.last_event = Some(EventRecord { at_ms, what });
        let _ = c.tx.send(notice);
        if let Some(wake) = &c.waker {
            wake();
        }
        // A client that runs now may want spare VIs.
        self.spares_check = true;
    }

    /// Adaptive balancing: every client's posted bytes of the period go to the manager.
    fn sample_load(&mut self) {
        let samples: Vec<ClientLoad> = self
            .clients
            .iter()
            .map(|(id, c)| ClientLoad {
                client: *id,
                bytes: c.meter.take(),
            })
            .collect();
        if !samples.is_empty() {
            self.input(Input::Measured { samples });
        }
    }

    fn publish_status(&mut self) {
        let links = self.manager.link_status();
        let now_ms = ms(self.started.elapsed());
        let mut st = NodeStatus {
            node: self.cfg.node.0,
            partner: self.cfg.partner.0,
            uptime_ms: now_ms,
            partner_state: format!("{:?}", self.manager.partner_status()),
            interconnects: Vec::new(),
            clients: Vec::new(),
            events: self.events.clone(),
            link_failures: self.link_failures,
            first_heartbeat_ms: self.first_heartbeat_ms,
            driver_realtime: self.realtime,
        };
        let load = self.manager.link_load();
        // Standby VIs (made ahead on the other links for a fast failover) are not where a client is.
        let standby: BTreeMap<ClientId, Vec<Generation>> = self
            .clients
            .keys()
            .map(|id| {
                let gens = self.manager.standbys(*id).iter().map(|s| s.1).collect();
                (*id, gens)
            })
            .collect();
        let placed_on = |id: &ClientId, c: &ClientSlot| {
            c.bindings
                .iter()
                .filter(|(g, b)| !b.vis.is_empty() && !standby[id].contains(g))
                .map(|(_, b)| b.ic)
                .collect::<Vec<_>>()
        };
        for (i, ic) in self.ics.iter().enumerate() {
            let placed: Vec<String> = self
                .clients
                .iter()
                .filter(|(id, c)| placed_on(id, c).contains(&InterconnectId(i as u8)))
                .map(|(_, c)| c.spec.name.clone())
                .collect();
            st.interconnects.push(status::InterconnectStatus {
                id: i as u8,
                device: ic
                    .dev
                    .as_ref()
                    .map(|d| d.ctx.name().to_string())
                    .unwrap_or_else(|| "-".into()),
                local_ip: ic.cfg.local_ip.to_string(),
                port_up: ic.port_up,
                state: links.get(i).map(|l| format!("{l:?}")).unwrap_or_default(),
                clients: placed,
                load: load.get(i).map(|&(r, c)| status::LinkLoad::new(r, c)),
            });
        }
        for (id, c) in &self.clients {
            st.clients.push(status::ClientStatusLine {
                id: id.0,
                name: c.spec.name.clone(),
                class: format!("{:?}", c.spec.class),
                state: self
                    .manager
                    .client_status(*id)
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "-".into()),
                vis: c
                    .bindings
                    .iter()
                    .filter(|(g, _)| !standby[id].contains(g))
                    .map(|(_, b)| b.vis.len())
                    .sum(),
                standby_vis: c
                    .bindings
                    .iter()
                    .filter(|(g, _)| standby[id].contains(g))
                    .map(|(_, b)| b.vis.len())
                    .sum(),
                mb_s: self.manager.client_rate(*id).map_or(0.0, status::mb_s),
                last_event: c.last_event.clone(),
            });
        }
        if let Ok(mut s) = self.status.lock() {
            *s = st;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::arp_table_resolves;

    const TABLE: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.0.0.2         0x1         0x6         f6:1e:55:0a:9c:01     *        vethA0
10.0.1.2         0x1         0x0         00:00:00:00:00:00     *        vethA1
10.0.2.2         0x1         0x2         f6:1e:55:0a:9c:03     *        vethA2
";

    #[test]
    fn only_a_complete_arp_entry_lets_a_vi_be_connected_on_the_driver_thread() {
        // Permanent (0x6) and learned (0x2) entries are complete; an incomplete one (0x0) would make the
        // move to RTR wait for ARP; an address with no entry too.
        assert!(arp_table_resolves(TABLE, "10.0.0.2".parse().unwrap()));
        assert!(arp_table_resolves(TABLE, "10.0.2.2".parse().unwrap()));
        assert!(!arp_table_resolves(TABLE, "10.0.1.2".parse().unwrap()));
        assert!(!arp_table_resolves(TABLE, "10.0.3.2".parse().unwrap()));
        assert!(!arp_table_resolves("", "10.0.0.2".parse().unwrap()));
    }
}
