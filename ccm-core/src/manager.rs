//! The manager state machine: one per node, owning every connection between its clients and the
//! partner's, over all interconnects. Sans-IO: [`Manager::handle`] takes the current [`Time`] and one
//! [`Input`]; the manager queues [`Action`]s that the driver takes with [`Manager::poll_action`].
//!
//! # Roles
//! The node with the lower [`NodeId`] is the *placer*: it connects the initial sessions (the other
//! node listens) and decides which interconnect and which [`Generation`] each client pair uses. The
//! other node follows. This removes every tie-break from the protocol: two managers can never bind the
//! same client differently, even when they start at the same instant.
//!
//! # Bring-up, per interconnect (Fig. 4)
//! * **410** initial session: the placer emits [`Action::Connect`] (the other emitted [`Action::Listen`]
//!   once at start); the driver answers [`Input::SessionEstablished`] with the manager's control VI.
//!   The transport is the driver's choice (the intended one is TCP on the interconnect's IP address);
//!   the manager only needs an ordered, reliable message stream, which TCP and RC both are.
//!   A placer whose connect failed (the follower not running yet, or restarting) retries after an
//!   exponential back-off (`backoff_min..backoff_max`); the follower's [`wire::Knock`], sent when
//!   its listener is bound, ends that wait ([`Input::PartnerListening`]), so a restarted follower
//!   is connected to at once rather than up to `backoff_max` later. Knocks are not authenticated
//!   and only bring the next connect forward, never closer than `backoff_min` to the last.
//! * **415** peer info, in two one-way trips: each side sends its [`Hello`] and its [`AuthChallenge`]
//!   together (the challenge is random and needs nothing from the partner). On the partner's Hello
//!   each checks the cluster id, the partner's node id and the overlap of version ranges (highest
//!   common version wins); on the partner's challenge (which follows its Hello) each answers with an
//!   [`AuthResponse`] (see [`crate::auth`]) followed at once by its [`PeerInfo`] (control VI,
//!   windows). The partner's PeerInfo arrives after the partner's response on the ordered session and
//!   is taken only once that response is verified, so nothing is acted on from an unauthenticated
//!   partner; what an unauthenticated connector can learn is our control VI's address (QPN, PSN, GID:
//!   in the header of every packet on the fabric anyway; the manager's window list is empty). The
//!   messages and their order on each stream are those of the four-trip exchange of the first
//!   version, so no protocol version was bumped for it (see [`wire`]). A refusal is a typed [`wire::Error`] sent to the
//!   partner and an [`Action::LinkRefused`] locally, on both sides, then the session closes and the
//!   interconnect retries after its back-off. Other interconnects are unaffected.
//!   On the partner's [`PeerInfo`] the control VI is slam connected and the interconnect is *up*.
//!   A session that reaches the follower while the interconnect has one (the partner reconnecting
//!   because it judged the old one dead, or anyone else who reached the port) is a *challenger*: its
//!   handshake runs beside the live session, and it takes that session's place (a failure of the old
//!   one, `Replaced`) only once it proved the cluster secret. A refusal, a close or the handshake
//!   timeout ends only the challenger. If the live session fails first, the challenger simply becomes
//!   the interconnect's handshake.
//! * **420** for each client pair to place on it, the placer asks its client to create VIs and register
//!   memory ([`Action::CreateClientVis`]).
//! * **425** the VI addresses of every client created by then go to the partner in one [`ClientInfo`]
//!   batch (the batch waits for outstanding creations at most `batch_window`).
//! * **430** the receiver hands the partner's addresses to its client ([`ClientEvent::PartnerInfo`]),
//!   creates its own VIs (follower), and answers with its own batch.
//! * **435** each side slam connects a client's VIs ([`Action::SlamConnect`]) as soon as it has both
//!   its own and the partner's addresses; the driver answers [`Input::ClientVisConnected`] once the
//!   queue pairs are connected (a real driver does this off its event loop: it costs milliseconds per
//!   VI on rxe, and a batch of 64 done in one go would hold back every link's heartbeats),
//! * **440** and only then sends [`Ready`] for it.
//! * **445** on the partner's [`Ready`] the client is told [`ClientEvent::Ready`] (or
//!   [`ClientEvent::Resumed`] after a stop). A client is therefore never told Ready before the
//!   partner's client has slam connected the other end.
//!
//! # Operation (Fig. 5)
//! * **507** every [`Input`] is an event; **510/515** client requests (register, open VI, grow buffer,
//!   free VI, unregister) are carried out and mirrored to the partner ([`ClientOpen`], [`ClientClose`],
//!   or an updated [`ClientInfo`] entry for grown windows).
//! * **520** on an interconnect error (port down, async event, VI error, missed heartbeats, session
//!   closed) clients bound to it are told [`ClientEvent::Stop`], and the partner is told [`Stop`] over
//!   the surviving interconnects so it fails the same session without waiting for heartbeats;
//! * **525** their VIs are released ([`Action::ReleaseClientVis`]);
//! * **530** the interconnect re-initializes with the same bring-up after a back-off, while the placer
//!   moves its clients to the least utilised healthy interconnect (failover, Fig. 9) and back home once
//!   the home has been healthy for the hold-down (failback).
//!
//! # Standby bindings (protocol version 2, [`wire::STANDBY_VERSION`])
//! A failover, failback or migration would otherwise run 420-445 on its critical path: VIs made,
//! a ClientInfo round trip, both ends slam connected, Ready both ways. Instead, once a client's
//! binding is live, the placer makes a *standby* binding of the pair on every other up interconnect
//! whose session negotiated version 2 or later ([`Step::Standby`]): a generation of its own (from the
//! same counter as bindings), VIs made ([`Action::CreateClientVis`]), their addresses sent in a
//! `Standby` message on that interconnect. The follower makes its end of it, slam connects and
//! answers with its own `Standby` entry; the placer slam connects. Clients hear nothing of standbys.
//! * **Promotion.** When the placer binds a client on an interconnect where it holds a *ripe*
//!   standby (the partner's addresses known, its own end slam connected, as many VIs as wanted), the
//!   standby becomes the binding ([`Step::Promote`]): its Ready (440) goes at once. The follower, on a
//!   Ready for a generation it holds as a standby on that interconnect, stops its old binding,
//!   promotes the standby and answers Ready once its own end is connected. Each side tells its client
//!   Resumed (445) on the partner's Ready, as for any binding: never before the partner's end is
//!   connected. A failover thus costs one Ready round trip after the decision. (Letting the placer's
//!   client go at the promotion on an earlier "the follower's end is connected" was tried and
//!   refused by the simulator: the follower may have restarted in between, and its new incarnation
//!   holds no such end. The follower's Ready after the promotion proves its current process does.)
//! * **Agreement.** Every standby's generation is above the binding's. Whenever a generation becomes
//!   a client's binding (a new bind, the follower adopting a ClientInfo, a promotion), both sides drop
//!   the standbys older than it, so they agree on the standbys left without a message; a failed
//!   interconnect's standbys go on both sides with it; an unregistered client's with the pair.
//! * **Staleness.** The follower ignores a standby entry not above its binding's (or last adopted)
//!   generation, or older than the standby it holds on that interconnect. A standby whose VIs fail on
//!   either side is dropped on both (a [`ClientReset`] of its generation) and the placer makes none
//!   for that client for `client_backoff_max`. A Ready for a newer generation the follower does not
//!   hold (it lost the standby as the placer promoted it) is answered with [`ClientReset`], so the
//!   placer binds the pair again instead of waiting. Grown windows are re-sent for standbys too.
//!   A client whose binding went live within `failback_hold_down` of a reset (per-client isolation)
//!   gets standbys only once that binding has run for the hold-down: a client erroring in a loop
//!   costs no standby churn.
//!
//! # Per-client isolation
//! A VI error of one client ([`ViRef::Client`]) on an interconnect that is up (its control VI and
//! heartbeats are fine) is that client's problem, e.g. a peer client that stopped reposting
//! receives (RNR retry exceeded): only that client's binding is reset. Its client is told
//! [`ClientEvent::Stop`], its VIs are released, and the partner is told [`ClientReset`] for the
//! generation so its end does the same; the other clients on the link never notice. The placer binds
//! the pair again (new generation, same bring-up 420-445, [`ClientEvent::Resumed`]) on the same
//! interconnect while it is healthy, after a per-client back-off: `client_backoff_min` doubling with
//! each reset in a row up to `client_backoff_max`, forgiven once a binding has run for
//! `failback_hold_down`. A client that errors in a loop is thus rebound at most once per
//! `client_backoff_max`, shown as [`ClientStatus::ResetBackoff`] and logged as [`Step::ClientReset`].
//! A dead link is still caught by its heartbeats (or a control VI error) and fails every client on it;
//! a client reset on it and still in its back-off then had seen the link's failure first (its VI erred
//! a moment before the port event), so its back-off is forgiven and it moves with the others at once.
//!
//! # Adaptive balancing by measured bandwidth (Figs. 8 and 9)
//! The driver samples every client's posted bytes each `balance_period` and feeds them as
//! [`Input::Measured`]; the follower forwards its samples to the placer in a [`wire::LoadReport`], so
//! the placer's window holds both directions of every client pair. A client's rate is the bytes in
//! the last `balance_window` over that window; a link's utilisation is the sum of its clients' rates
//! over its configured capacity ([`Config::capacity`], per mille). Only the placer decides, with
//! [`placement::plan_migration`]: a client moves when its link is above `balance_high_permille` and
//! another link stays below `balance_low_permille` after the move. Hysteresis: at most one migration
//! per `balance_period`; a client moves only after `balance_dwell` on its binding (after any move,
//! failover or reset), so a failover is never undone early; a target must have been healthy for
//! `failback_hold_down`; a pinned client never moves. A migration is a planned move through the
//! failover path ([`Step::Migrate`]: Stop, release, a new generation on the target, Resumed), so a
//! client that resends after a reset (the NVRAM mirror) loses and duplicates nothing. The target
//! becomes the client's placement: failback returns it there, not to its static home. Once
//! measurements exist, the failover target (Fig. 9) is the least utilised healthy link by measured
//! load; before, by the class weights.
//!
//! The balancer decides when a period's measurements arrive ([`Input::Measured`]), not on timers.
//!
//! # Cost per event
//! Placement runs after an event only when the event can change it: a sign of life on an up link
//! (a heartbeat, an acknowledged control-VI send, a pause) only moves that link's silence deadline,
//! and a timer that only sent heartbeats skips placement unless a link or the partner changed state
//! or a placement deadline (hold-down end, home grace end, client back-off) passed. Static homes are
//! recomputed only when clients come or go. With 64 clients per node this keeps heartbeat handling
//! from growing with the number of clients (in the lab's emulated guest a placement pass over 64
//! clients cost milliseconds, and hundreds of them a second starved the driver thread).
//!
//! # Link monitor and partner state
//! Every up interconnect carries a [`Heartbeat`] each `heartbeat_period`; any message counts as a sign
//! of life, and `heartbeat_misses` periods of silence fail the interconnect. When one interconnect
//! fails and another is up, only that link failed. When the last one fails the partner becomes
//! *suspect* ([`ClientEvent::PartnerSuspect`]) and, unless an interconnect comes back within
//! `partner_down_after`, *down* ([`ClientEvent::PartnerDown`]). A [`Hello`] with a new incarnation
//! means the partner restarted: its clients are gone, so ours are told PartnerDown at once.
//!
//! # Bounded waits
//! Connect (`connect_timeout`), the whole handshake (`handshake_timeout`), silence on an up link
//! (`heartbeat_period * heartbeat_misses`), batching (`batch_window`), partner suspicion
//! (`partner_down_after`) and re-initialization (`backoff_min..backoff_max`, exponential with jitter,
//! reset only after a link stayed up for the hold-down, so a flapping link cannot cause a reconnect
//! storm) are all timers. The only unbounded waits are on local clients creating their VIs, which
//! never block the other clients: a slow client simply joins a later batch.
//!
//! # Default timings and their derivation
//! * `heartbeat_period` 10 ms, `heartbeat_misses` 3: issue 6 asks for silent-loss detection within
//!   three heartbeat periods and failover in milliseconds; three misses ride out the few-millisecond
//!   scheduling jitter of the lab's rxe under QEMU, and 100 small messages per second per link cost
//!   nothing. Silent-loss detection is therefore 30 ms (Linux bonding: 100 ms, corosync: 1.5 s).
//!   Port-down is event driven and does not wait for heartbeats.
//! * `partner_down_after` 500 ms: more than `backoff_max + connect_timeout + handshake_timeout`
//!   (100 + 50 + 100 ms), so a partner reachable on any healthy interconnect always comes back
//!   before it is declared down; short against takeover timeouts (NetApp: 15 s).
//! * `failback_hold_down` 500 ms: fifty heartbeat periods of uninterrupted health before clients
//!   move back (corosync waits for two pongs; we prefer fewer needless moves).
//! * `home_grace` 150 ms: the interconnects of a pair come up one after the other (43 ms apart in a
//!   loaded lab guest); without it a client whose home is the later one is started on the other link
//!   and moved home after the hold-down, a Stop and a Resumed for nothing. Fifteen heartbeat periods
//!   bound what a client waits when its home really is broken (and a downed port is not waited for);
//!   four graces when the home is known to be coming: its device not open yet, or the partner
//!   answered on it and its end is not up yet (see `home_grace_end`).
//! * `balance_period` 100 ms, `balance_window` 1 s, watermarks 80 % / 60 %, `balance_dwell` 2 s:
//!   ten samples smooth bursts; the 20-point gap between the watermarks means a move never makes
//!   its target a candidate to move back; the dwell (four hold-downs) bounds each client to one
//!   move per 2 s and the period bounds the node to ten per second. Capacity defaults to
//!   [`DEFAULT_CAPACITY`] per interconnect; configure the real link rate.
//! * `client_backoff_min` 10 ms, `client_backoff_max` 1 s: a one-off client error costs that client
//!   about one heartbeat timeout of traffic; a client that errors in a loop costs the node one
//!   rebinding (a few QPs) per second at most.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::auth;
use crate::placement::{self, ClientNeeds, LinkLoad, LinkView, LoadedClient, Watermarks};
use crate::wire::{
    self, AuthChallenge, AuthResponse, BandwidthClass, ClientClose, ClientEntry, ClientId,
    ClientInfo, ClientLoad, ClientOpen, ClientRef, ClientReset, ClusterId, DecodeError, ErrorCode,
    Generation, Heartbeat, Hello, InterconnectId, MemoryWindow, Message, NodeId, PeerInfo,
    ProtocolVersion, Ready, Resume, Stop, ViAddress, MAX_VIS,
};
use crate::Time;

/// Identity of one session (one initial-session connection of one interconnect), named by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Configuration of a manager. [`Config::new`] fills the documented defaults.
#[derive(Clone)]
pub struct Config {
    /// This node.
    pub node: NodeId,
    /// The partner node (the only node accepted in a [`Hello`]).
    pub partner: NodeId,
    /// The cluster.
    pub cluster: ClusterId,
    /// The shared cluster secret (never sent, never printed).
    pub secret: Vec<u8>,
    /// Number of interconnects (the same indices on both nodes).
    pub interconnects: u8,
    /// Lowest protocol version spoken.
    pub min_version: ProtocolVersion,
    /// Highest protocol version spoken.
    pub max_version: ProtocolVersion,
    /// Feature bits offered.
    pub features: u64,
    /// Heartbeat period on each up interconnect.
    pub heartbeat_period: Duration,
    /// Periods of silence after which an interconnect is failed.
    pub heartbeat_misses: u32,
    /// Bound on one connect attempt of the initial session (410).
    pub connect_timeout: Duration,
    /// Bound on the whole peer-info exchange and authentication (415).
    pub handshake_timeout: Duration,
    /// First re-initialization back-off (530).
    pub backoff_min: Duration,
    /// Largest re-initialization back-off.
    pub backoff_max: Duration,
    /// How long the partner stays suspect before it is declared down.
    pub partner_down_after: Duration,
    /// How long a home interconnect must be healthy before clients fail back to it.
    pub failback_hold_down: Duration,
    /// After the partner becomes reachable, how long an unplaced client waits for its home
    /// interconnect (port up, still coming up) before it is placed on another one.
    pub home_grace: Duration,
    /// Longest wait for outstanding VI creations before a batch (425) is sent anyway.
    pub batch_window: Duration,
    /// First back-off before a client pair whose VI failed on a healthy link is bound again.
    pub client_backoff_min: Duration,
    /// Largest such back-off (it doubles with each reset that follows less than
    /// `failback_hold_down` of running).
    pub client_backoff_max: Duration,
    /// Capacity of each interconnect in bytes/s, for measured utilisation (missing entries:
    /// [`DEFAULT_CAPACITY`]).
    pub capacity: Vec<u64>,
    /// The sampling period of client measurements ([`Input::Measured`]); also the shortest time
    /// between two migrations.
    pub balance_period: Duration,
    /// The sliding window over which a client's rate is averaged.
    pub balance_window: Duration,
    /// A link above this utilisation (per mille of capacity) is overloaded.
    pub balance_high_permille: u64,
    /// A migration must leave its target below this utilisation (per mille).
    pub balance_low_permille: u64,
    /// A client is not migrated until it has stayed this long on its binding (after any move,
    /// failover or reset).
    pub balance_dwell: Duration,
}

/// The capacity assumed for an interconnect without a configured one: 1250 MB/s (10 Gb/s), a
/// conservative figure for a storage interconnect. Configure the real rate.
pub const DEFAULT_CAPACITY: u64 = 1_250_000_000;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node", &self.node)
            .field("partner", &self.partner)
            .field("cluster", &self.cluster)
            .field("secret", &"<redacted>")
            .field("interconnects", &self.interconnects)
            .field("versions", &(self.min_version..=self.max_version))
            .field("heartbeat_period", &self.heartbeat_period)
            .field("heartbeat_misses", &self.heartbeat_misses)
            .finish_non_exhaustive()
    }
}

/// Heartbeat timeouts a link stays up while the partner's host acknowledges but its manager is silent
/// ([`Input::PathAlive`]).
pub const STALLED_PARTNER_TIMEOUTS: u32 = 4;

/// How a manager declares its partner down: an interconnect fails after `heartbeat_misses` silent
/// `heartbeat_period`s, and with none left the partner is suspect, then down after `partner_down_after`.
/// The failover monitor tells its peer (`clients::monitor`), so two nodes that would declare each other down
/// after different silences are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Heartbeat period on each up interconnect.
    pub heartbeat_period: Duration,
    /// Periods of silence after which an interconnect is failed.
    pub heartbeat_misses: u32,
    /// How long the partner stays suspect before it is declared down.
    pub partner_down_after: Duration,
}

/// The highest protocol version this build speaks (2: standby bindings, [`wire::STANDBY_VERSION`]; 3: the
/// clients' private data, [`wire::CLIENT_PRIVATE_VERSION`]).
pub const PROTOCOL_VERSION: ProtocolVersion = 3;
/// The lowest protocol version this build speaks by default (1: no standby bindings; a link that
/// negotiated it fails over with the full 420-445 bring-up).
pub const MIN_PROTOCOL_VERSION: ProtocolVersion = 1;

impl Config {
    /// A configuration with the documented default timings.
    pub fn new(
        node: NodeId,
        partner: NodeId,
        cluster: ClusterId,
        secret: impl Into<Vec<u8>>,
        interconnects: u8,
    ) -> Config {
        Config {
            node,
            partner,
            cluster,
            secret: secret.into(),
            interconnects,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            features: 0,
            heartbeat_period: Duration::from_millis(10),
            heartbeat_misses: 3,
            connect_timeout: Duration::from_millis(50),
            handshake_timeout: Duration::from_millis(100),
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(100),
            partner_down_after: Duration::from_millis(500),
            failback_hold_down: Duration::from_millis(500),
            home_grace: Duration::from_millis(150),
            batch_window: Duration::from_millis(2),
            client_backoff_min: Duration::from_millis(10),
            client_backoff_max: Duration::from_secs(1),
            capacity: vec![DEFAULT_CAPACITY; usize::from(interconnects)],
            balance_period: Duration::from_millis(100),
            balance_window: Duration::from_secs(1),
            balance_high_permille: 800,
            balance_low_permille: 600,
            balance_dwell: Duration::from_secs(2),
        }
    }

    /// Silence after which an up interconnect is failed.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_period * self.heartbeat_misses
    }

    /// How this manager declares its partner down.
    pub fn detection(&self) -> Detection {
        Detection {
            heartbeat_period: self.heartbeat_period,
            heartbeat_misses: self.heartbeat_misses,
            partner_down_after: self.partner_down_after,
        }
    }

    /// The capacity of interconnect `i` in bytes/s.
    pub fn capacity_of(&self, i: usize) -> u64 {
        self.capacity.get(i).copied().unwrap_or(DEFAULT_CAPACITY)
    }

    /// Whether this node places clients and connects the initial sessions.
    pub fn is_placer(&self) -> bool {
        self.node < self.partner
    }
}

/// What a client registers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    /// Its id (the same on both nodes for the two peer clients).
    pub id: ClientId,
    /// Its name.
    pub name: String,
    /// Its bandwidth class.
    pub class: BandwidthClass,
    /// How many VIs it needs (1..=[`MAX_VIS`]); the pair uses the larger of the two sides' counts.
    pub vi_count: u8,
    /// A pinned interconnect, if configured.
    pub pinned: Option<InterconnectId>,
    /// Opaque bytes for the partner's peer client (at most [`wire::MAX_PRIVATE`]), delivered with its
    /// `Ready` in [`ClientEntry::private`]: what the client speaks, so that two peer clients of different
    /// builds can check each other before either writes. Carried on sessions of protocol version
    /// [`wire::CLIENT_PRIVATE_VERSION`] and later; an older partner's entries come without it.
    pub private: Vec<u8>,
}

/// Client requests (Fig. 5, 510/515).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Register a client; it waits until the partner's client registers too.
    Register(ClientSpec),
    /// Open one more VI.
    OpenVi(ClientId),
    /// The client re-registered larger buffers: these are its windows now.
    GrowBuffer(ClientId, Vec<MemoryWindow>),
    /// Free one VI.
    FreeVi(ClientId),
    /// Unregister: its VIs and memory are released on both nodes.
    Unregister(ClientId),
}

/// Asynchronous device events the driver forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEvent {
    /// The port became active.
    PortActive,
    /// The port went down.
    PortError,
    /// The device failed; it is unusable until a later `PortActive`.
    DeviceFatal,
}

/// Which VI an error or completion status refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViRef {
    /// The manager's control VI of the interconnect.
    Control,
    /// A client's VI of a binding generation.
    Client(ClientId, Generation),
}

/// Events into the manager (step 507).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// 410: a session is up (the connect of the placer, or accepted by the listener). The driver has
    /// created this session's control VI; its address and the manager's windows go into [`PeerInfo`].
    SessionEstablished {
        /// The interconnect.
        ic: InterconnectId,
        /// The driver's name for the session.
        session: SessionId,
        /// The manager's control VI for this session.
        control_vi: ViAddress,
        /// The manager's memory windows.
        windows: Vec<MemoryWindow>,
    },
    /// 410: the partner says its listener on `ic` is bound (the driver received its
    /// [`wire::Knock`]). Unauthenticated, so it can only bring a connect forward: a placer waiting
    /// out a back-off on `ic` connects now, or as soon as `backoff_min` has passed since its last
    /// attempt (so knocks never make it connect more often than that). Ignored in any other phase
    /// and by the follower.
    PartnerListening {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 410: the connect attempt failed (refused, unreachable).
    ConnectFailed {
        /// The interconnect.
        ic: InterconnectId,
        /// The attempt, as given in [`Action::Connect`].
        attempt: u64,
    },
    /// The partner closed the session, or the transport broke it.
    SessionClosed {
        /// The interconnect.
        ic: InterconnectId,
        /// The session.
        session: SessionId,
    },
    /// A control message from the partner.
    Message {
        /// The interconnect.
        ic: InterconnectId,
        /// The session it arrived on.
        session: SessionId,
        /// The message.
        msg: Message,
    },
    /// Bytes on the session that do not decode: the session is refused.
    Malformed {
        /// The interconnect.
        ic: InterconnectId,
        /// The session.
        session: SessionId,
        /// Why.
        error: DecodeError,
    },
    /// The port state of an interconnect (polled).
    PortState {
        /// The interconnect.
        ic: InterconnectId,
        /// Whether the port is active.
        up: bool,
    },
    /// An asynchronous device event.
    AsyncEvent {
        /// The interconnect.
        ic: InterconnectId,
        /// The event.
        event: AsyncEvent,
    },
    /// A VI reported an error completion or went to the error state.
    ViError {
        /// The interconnect.
        ic: InterconnectId,
        /// Which VI.
        vi: ViRef,
    },
    /// 420: a client created the VIs asked for and registered its memory.
    ClientVisCreated {
        /// The client.
        client: ClientId,
        /// The generation of the request.
        generation: Generation,
        /// Its VIs, as many as asked.
        vis: Vec<ViAddress>,
        /// Its memory windows.
        windows: Vec<MemoryWindow>,
    },
    /// The partner's transport acknowledged a message sent on the link's control VI (a send completed):
    /// the path and the partner's host are alive, even if its manager is slow to speak (a starved
    /// process). This extends the link's silence deadline, but never beyond four heartbeat timeouts
    /// after the partner's last message: a partner whose host acknowledges while its manager says
    /// nothing fails the link then (or sooner: its receive ring fills and RC reports an error).
    PathAlive {
        /// The interconnect.
        ic: InterconnectId,
        /// The session whose control VI the send went on.
        session: SessionId,
    },
    /// The driver did not run for `duration` (it woke that late: its process or machine was not
    /// scheduled). Nothing could be observed meanwhile, so the silence deadlines of up links move by as
    /// much: a stalled node does not fail its links for silence it could not have heard.
    Paused {
        /// How long.
        duration: Duration,
    },
    /// 435: the VIs of [`Action::SlamConnect`] are connected (a failure is an [`Input::ViError`]).
    ClientVisConnected {
        /// The client.
        client: ClientId,
        /// The generation of the request.
        generation: Generation,
    },
    /// 510: a client request.
    Client(ClientRequest),
    /// Adaptive balancing: bytes each local client posted in the sampling period ending now (the
    /// driver samples every `balance_period`). The follower forwards them to the placer.
    Measured {
        /// One entry per client.
        samples: Vec<ClientLoad>,
    },
    /// The timer armed with [`Action::ArmTimer`] expired (spurious expiries are harmless).
    Timer,
}

/// What a client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// 430: the partner client's VI addresses and windows (again when its windows grow).
    PartnerInfo(ClientEntry),
    /// 445: both ends are slam connected on `ic`; start posting.
    Ready {
        /// The interconnect.
        ic: InterconnectId,
        /// The binding generation.
        generation: Generation,
    },
    /// 520: stop posting on `ic`; the VIs are being released.
    Stop {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// After a stop: connected again (perhaps on another interconnect).
    Resumed {
        /// The interconnect.
        ic: InterconnectId,
        /// The binding generation.
        generation: Generation,
    },
    /// Every interconnect is silent; the partner may be down.
    PartnerSuspect,
    /// The partner is down (or restarted): its clients are gone.
    PartnerDown,
    /// The partner's peer client unregistered.
    PartnerClosed,
}

/// Why an interconnect was failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFailure {
    /// The connect attempt failed.
    ConnectFailed,
    /// The connect attempt took longer than `connect_timeout`.
    ConnectTimeout,
    /// The handshake took longer than `handshake_timeout`.
    HandshakeTimeout,
    /// The handshake was refused (by us or the partner).
    Refused,
    /// The session closed.
    SessionClosed,
    /// No message for `heartbeat_misses` periods.
    HeartbeatLoss,
    /// The port went down.
    PortDown,
    /// A VI error on the interconnect.
    ViError,
    /// The partner told us (over another interconnect) that it failed.
    PartnerReported,
    /// The partner restarted; its old sessions are dead.
    PartnerRestarted,
    /// The listener accepted a new session that replaces this one.
    Replaced,
}

impl LinkFailure {
    /// Whether this side detected the failure locally, so the partner should hear about it.
    fn tell_partner(self) -> bool {
        matches!(
            self,
            LinkFailure::HeartbeatLoss | LinkFailure::PortDown | LinkFailure::ViError
        )
    }
}

/// A refused handshake (415), reported on both sides.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No common protocol version.
    #[error("incompatible version: partner speaks {partner_min}..={partner_max}, we speak {ours_min}..={ours_max}")]
    IncompatibleVersion {
        /// The partner's lowest.
        partner_min: ProtocolVersion,
        /// The partner's highest.
        partner_max: ProtocolVersion,
        /// Our lowest.
        ours_min: ProtocolVersion,
        /// Our highest.
        ours_max: ProtocolVersion,
    },
    /// The partner belongs to another cluster.
    #[error("foreign cluster {0:?}")]
    ForeignCluster(ClusterId),
    /// The partner is not the configured partner node.
    #[error("unexpected node {0:?}")]
    UnexpectedNode(NodeId),
    /// The partner failed authentication (wrong cluster secret).
    #[error("authentication failed: wrong cluster secret")]
    AuthenticationFailed,
    /// A message out of order.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Bytes that do not decode.
    #[error("malformed frame: {0}")]
    Malformed(DecodeError),
    /// The partner refused us.
    #[error("refused by partner: {code:?}: {text}")]
    RefusedByPartner {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        text: String,
    },
}

/// Steps of the bring-up and operation, logged with their time ([`Action::Step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// 410: connecting (placer) or listening (follower) on an interconnect.
    InitialSession410 {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 410: the session is up; the handshake starts.
    SessionEstablished410 {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 415: peer info exchanged and authenticated; control VI slam connected; the link is up.
    PeerInfoExchanged415 {
        /// The interconnect.
        ic: InterconnectId,
        /// The negotiated version.
        version: ProtocolVersion,
    },
    /// 415: refused.
    Refused415 {
        /// The interconnect.
        ic: InterconnectId,
        /// Why.
        error: HandshakeError,
    },
    /// 420: a client asked to create VIs.
    CreateVis420 {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The generation.
        generation: Generation,
    },
    /// 425: a batch of client VI addresses sent.
    SendBatch425 {
        /// The interconnect.
        ic: InterconnectId,
        /// How many clients.
        clients: usize,
    },
    /// 430: partner info handed to a client.
    PartnerInfo430 {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 435: a client's VIs slam connected (reported by the driver).
    SlamConnect435 {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 440: ready sent for a batch of clients.
    SendReady440 {
        /// The interconnect.
        ic: InterconnectId,
        /// How many clients.
        clients: usize,
    },
    /// 445: a client told to go.
    ClientsGo445 {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 515: a client request carried out.
    ClientRequest515 {
        /// The client.
        client: ClientId,
        /// What.
        request: &'static str,
    },
    /// 520: an interconnect failed; its clients told to stop.
    StopClients520 {
        /// The interconnect.
        ic: InterconnectId,
        /// Why.
        reason: LinkFailure,
        /// How many clients were bound to it.
        clients: usize,
    },
    /// 525: a client's VIs released.
    Release525 {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 530: the interconnect will re-initialize.
    Reinitialize530 {
        /// The interconnect.
        ic: InterconnectId,
        /// Why it failed.
        reason: LinkFailure,
        /// After this back-off (zero for a listener).
        after: Duration,
    },
    /// A client placed on another interconnect than its home (failover).
    Failover {
        /// The client.
        client: ClientId,
        /// Its home.
        home: InterconnectId,
        /// Where it goes.
        to: InterconnectId,
    },
    /// One client pair's binding failed on a healthy interconnect (a client VI error): only that
    /// client is stopped and rebound, on the same interconnect when it is still up.
    ClientReset {
        /// The client.
        client: ClientId,
        /// The interconnect it was bound on.
        ic: InterconnectId,
        /// Resets in a row (each after less than `failback_hold_down` of running).
        resets: u32,
        /// The back-off before it is bound again (the placer's; `None` on the follower, which waits
        /// for the placer).
        after: Option<Duration>,
    },
    /// Adaptive balancing: a client moved off an overloaded interconnect.
    Migrate {
        /// The client.
        client: ClientId,
        /// From.
        from: InterconnectId,
        /// To.
        to: InterconnectId,
        /// The source's utilisation before, per mille of its capacity.
        from_permille: u64,
        /// The target's utilisation after, per mille.
        to_permille: u64,
    },
    /// A standby binding asked for: the client's VIs made ahead of time on `ic` (420-435 off the
    /// failover path; see "Standby bindings" in the module docs).
    Standby {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The standby's generation.
        generation: Generation,
    },
    /// A standby binding became the client's binding (a failover, failback or migration without
    /// a ClientInfo round trip or a slam connect on its path).
    Promote {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The generation now live (once both sides sent Ready).
        generation: Generation,
    },
    /// A client moved back home.
    Failback {
        /// The client.
        client: ClientId,
        /// From.
        from: InterconnectId,
        /// Home.
        home: InterconnectId,
    },
    /// Every interconnect is down: the partner is suspect.
    PartnerSuspect,
    /// An interconnect came back before the partner was declared down.
    PartnerBack,
    /// The partner is declared down.
    PartnerDown,
    /// The partner restarted (new incarnation).
    PartnerRestarted,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// 410: start listening for the partner's sessions on `ic`, for the whole life of the manager.
    Listen {
        /// The interconnect.
        ic: InterconnectId,
    },
    /// 410: connect the initial session on `ic`; answer [`Input::SessionEstablished`] or
    /// [`Input::ConnectFailed`] with this `attempt`.
    Connect {
        /// The interconnect.
        ic: InterconnectId,
        /// Attempt number.
        attempt: u64,
    },
    /// Close a session (after sending what was queued on it) and destroy its control VI.
    CloseSession {
        /// The interconnect.
        ic: InterconnectId,
        /// The session.
        session: SessionId,
    },
    /// Send a control message on a session.
    Send {
        /// The interconnect.
        ic: InterconnectId,
        /// The session.
        session: SessionId,
        /// The message.
        msg: Message,
    },
    /// 415: slam connect the manager's control VI to the partner's.
    SlamConnectControl {
        /// The interconnect.
        ic: InterconnectId,
        /// The session.
        session: SessionId,
        /// Our control VI.
        local: ViAddress,
        /// The partner's.
        remote: ViAddress,
    },
    /// 420: ask a client to create `count` VIs on `ic` and register its memory; it answers with
    /// [`Input::ClientVisCreated`].
    CreateClientVis {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The generation to quote back.
        generation: Generation,
        /// How many VIs.
        count: u8,
    },
    /// 435: slam connect a client's VIs, the i-th local to the i-th remote; answered with
    /// [`Input::ClientVisConnected`] (or [`Input::ViError`]).
    SlamConnect {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The generation.
        generation: Generation,
        /// Local VIs.
        local: Vec<ViAddress>,
        /// The partner's VIs.
        remote: Vec<ViAddress>,
    },
    /// 525: destroy a client's VIs of a generation and free their memory.
    ReleaseClientVis {
        /// The client.
        client: ClientId,
        /// The interconnect.
        ic: InterconnectId,
        /// The generation.
        generation: Generation,
    },
    /// Tell a client something.
    Tell {
        /// The client.
        client: ClientId,
        /// What.
        event: ClientEvent,
    },
    /// A handshake on `ic` was refused (by us or by the partner).
    LinkRefused {
        /// The interconnect.
        ic: InterconnectId,
        /// Why.
        error: HandshakeError,
    },
    /// Call [`Manager::handle`] with [`Input::Timer`] at `deadline` (replaces any earlier arming).
    ArmTimer {
        /// When.
        deadline: Time,
    },
    /// A step for the log, with its time.
    Step {
        /// When.
        at: Time,
        /// What.
        step: Step,
    },
}

/// The state of an interconnect as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// The port is down.
    PortDown,
    /// Waiting out a back-off before reconnecting.
    Backoff,
    /// Connecting (placer).
    Connecting,
    /// Listening (follower).
    Listening,
    /// Handshake in progress.
    Handshake,
    /// Up: authenticated, heartbeats flowing.
    Up,
}

/// The partner as seen from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerStatus {
    /// Never seen.
    Unknown,
    /// Reachable on at least one interconnect.
    Up,
    /// No interconnect up; not yet declared down.
    Suspect,
    /// Declared down.
    Down,
}

/// A client's state as seen from here (what `ccm status` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStatus {
    /// The partner is not reachable.
    WaitingForPartner,
    /// The partner is up but its peer client has not registered.
    WaitingForPartnerClient,
    /// Both clients exist; waiting for the placer to place the pair.
    WaitingForPlacement,
    /// The pair's VIs failed on a healthy link `resets` times in a row; it is bound again at `until`.
    ResetBackoff {
        /// When it is bound again.
        until: Time,
        /// Resets in a row.
        resets: u32,
    },
    /// Bring-up of a binding in progress.
    Connecting {
        /// The interconnect.
        ic: InterconnectId,
        /// The generation.
        generation: Generation,
    },
    /// Connected and told Ready/Resumed.
    Ready {
        /// The interconnect.
        ic: InterconnectId,
        /// The generation.
        generation: Generation,
    },
}

#[derive(Debug)]
struct Handshake {
    session: SessionId,
    deadline: Time,
    control_vi: ViAddress,
    windows: Vec<MemoryWindow>,
    nonce: [u8; 32],
    peer_hello: Option<Hello>,
    version: ProtocolVersion,
    /// Our challenge, sent with our Hello.
    challenge: [u8; 32],
    responded: bool,
    peer_verified: bool,
}

/// What one message of the partner's does to a handshake ([`handshake_step`]).
enum HandshakeStep {
    /// Taken; nothing to send.
    Continue,
    /// Our proof and our PeerInfo, to send.
    Send([Message; 2]),
    /// The partner proved the cluster secret.
    Verified,
    /// The partner's PeerInfo, after its proof: the link is up.
    PeerInfo(PeerInfo),
    /// The handshake is refused.
    Refuse(HandshakeError),
}

/// The code a refusal tells the partner (none for the partner's own refusal).
fn error_code(error: &HandshakeError) -> Option<ErrorCode> {
    match error {
        HandshakeError::IncompatibleVersion { .. } => Some(ErrorCode::IncompatibleVersion),
        HandshakeError::ForeignCluster(_) => Some(ErrorCode::ForeignCluster),
        HandshakeError::UnexpectedNode(_) => Some(ErrorCode::UnexpectedNode),
        HandshakeError::AuthenticationFailed => Some(ErrorCode::AuthenticationFailed),
        HandshakeError::Protocol(_) => Some(ErrorCode::Protocol),
        HandshakeError::Malformed(_) => Some(ErrorCode::Malformed),
        HandshakeError::RefusedByPartner { .. } => None,
    }
}

/// The partner's Hello judged against our configuration: the version both speak, or why not.
fn vet_hello(cfg: &Config, hello: &Hello) -> Result<ProtocolVersion, HandshakeError> {
    if hello.cluster != cfg.cluster {
        return Err(HandshakeError::ForeignCluster(hello.cluster));
    }
    if hello.node != cfg.partner {
        return Err(HandshakeError::UnexpectedNode(hello.node));
    }
    let lo = hello.min_version.max(cfg.min_version);
    let hi = hello.max_version.min(cfg.max_version);
    if lo > hi {
        return Err(HandshakeError::IncompatibleVersion {
            partner_min: hello.min_version,
            partner_max: hello.max_version,
            ours_min: cfg.min_version,
            ours_max: cfg.max_version,
        });
    }
    Ok(hi)
}

/// 415 on one session, pure: the partner's `msg` applied to handshake `h` (Hello, then its challenge
/// answered with our proof and PeerInfo, its proof of our challenge verified, then its PeerInfo).
fn handshake_step(cfg: &Config, h: &mut Handshake, msg: Message) -> HandshakeStep {
    let (has_hello, responded, verified) = (h.peer_hello.is_some(), h.responded, h.peer_verified);
    match msg {
        Message::Hello(hello) if !has_hello => match vet_hello(cfg, &hello) {
            Ok(version) => {
                h.version = version;
                h.peer_hello = Some(hello);
                HandshakeStep::Continue
            }
            Err(e) => HandshakeStep::Refuse(e),
        },
        Message::AuthChallenge(c) if has_hello && !responded => {
            let peer = h.peer_hello.as_ref().expect("checked");
            let mac = auth::respond(
                &cfg.secret,
                &auth::Transcript {
                    responder: cfg.node,
                    challenger: peer.node,
                    cluster: cfg.cluster,
                    version: h.version,
                    challenge: &c.challenge,
                    responder_nonce: &h.nonce,
                    challenger_nonce: &peer.nonce,
                },
            );
            h.responded = true;
            // PeerInfo follows our proof at once instead of waiting for the partner's: it is acted on
            // only by a partner that verified this proof (it arrives after it on the ordered session),
            // and ours is acted on only once we verified theirs (below).
            let info = PeerInfo {
                control_vi: h.control_vi,
                windows: h.windows.clone(),
            };
            HandshakeStep::Send([
                Message::AuthResponse(AuthResponse { mac }),
                Message::PeerInfo(info),
            ])
        }
        Message::AuthResponse(r) if has_hello && !verified => {
            let peer = h
                .peer_hello
                .as_ref()
                .expect("guarded: a response is taken only after the hello");
            let ok = auth::verify(
                &cfg.secret,
                &auth::Transcript {
                    responder: peer.node,
                    challenger: cfg.node,
                    cluster: cfg.cluster,
                    version: h.version,
                    challenge: &h.challenge,
                    responder_nonce: &peer.nonce,
                    challenger_nonce: &h.nonce,
                },
                &r.mac,
            );
            if !ok {
                return HandshakeStep::Refuse(HandshakeError::AuthenticationFailed);
            }
            h.peer_verified = true;
            HandshakeStep::Verified
        }
        Message::PeerInfo(p) if verified => HandshakeStep::PeerInfo(p),
        _ => HandshakeStep::Refuse(HandshakeError::Protocol(
            "unexpected message during the handshake",
        )),
    }
}

#[derive(Debug)]
struct UpLink {
    session: SessionId,
    /// The negotiated protocol version (standby bindings from [`wire::STANDBY_VERSION`]).
    version: ProtocolVersion,
    tag: u64,
    incarnation: u64,
    next_heartbeat: Time,
    rx_deadline: Time,
    /// When the partner last said something on this link.
    last_rx: Time,
    heartbeat_seq: u64,
    out_info: Vec<ClientEntry>,
    out_ready: Vec<ClientRef>,
    batch_deadline: Option<Time>,
}

#[derive(Debug)]
enum Phase {
    PortDown,
    Backoff { until: Time },
    Connecting { attempt: u64, deadline: Time },
    Listening,
    Handshake(Box<Handshake>),
    Up(Box<UpLink>),
}

#[derive(Debug)]
struct Link {
    id: InterconnectId,
    port_up: bool,
    phase: Phase,
    failures: u32,
    healthy_since: Time,
    attempt: u64,
    /// When the placer last connected (a [`Input::PartnerListening`] brings no connect closer to it
    /// than `backoff_min`).
    attempted_at: Time,
    /// When the node first reported this interconnect's port ([`Input::PortState`]: its device is
    /// open); `None` before (the node opens the devices after the first one later).
    port_known_at: Option<Time>,
    /// When a session was first established on this interconnect: the partner's process answered over
    /// its addresses (its end may still be coming up).
    first_session_at: Option<Time>,
    /// (Follower) A second session that arrived while this link had one: its handshake runs beside the
    /// live session, which it replaces only once it proved the cluster secret ([`Manager::on_challenger`]).
    challenger: Option<Box<Handshake>>,
}

impl Link {
    fn session(&self) -> Option<SessionId> {
        match &self.phase {
            Phase::Handshake(h) => Some(h.session),
            Phase::Up(u) => Some(u.session),
            _ => None,
        }
    }
    fn up(&self) -> Option<&UpLink> {
        match &self.phase {
            Phase::Up(u) => Some(u),
            _ => None,
        }
    }
    fn up_mut(&mut self) -> Option<&mut UpLink> {
        match &mut self.phase {
            Phase::Up(u) => Some(u),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Binding {
    generation: Generation,
    ic: InterconnectId,
    vi_count: u8,
    local: Option<Vec<ViAddress>>,
    remote: Option<ClientEntry>,
    /// Slam connect asked for.
    connected: bool,
    /// Slam connect done (the driver said so).
    slammed: bool,
    partner_ready: bool,
    live: bool,
    /// This side's windows for these VIs (a standby's are told to the partner with its VIs).
    windows: Vec<MemoryWindow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    Idle,
    Ready,
    Stopped,
}

#[derive(Debug)]
struct Client {
    spec: ClientSpec,
    windows: Vec<MemoryWindow>,
    binding: Option<Binding>,
    told: Told,
    /// Since when the current binding has been live (told Ready/Resumed).
    live_since: Option<Time>,
    /// Client resets in a row (see [`Step::ClientReset`]).
    resets: u32,
    /// Placer: not bound again before this (client back-off after a reset).
    retry_at: Option<Time>,
    /// Placer: the interconnect to rebind on after a reset, if it is still healthy.
    prefer: Option<InterconnectId>,
    /// Placer: where the balancer moved it (replaces the static home for failback).
    placed: Option<InterconnectId>,
    /// Placer: when its current binding was made (for the balancer's dwell time).
    bound_at: Option<Time>,
    /// Measured bytes per sampling period within the balance window, oldest first.
    samples: VecDeque<(Time, u64)>,
    /// Standby bindings: at most one per interconnect other than the binding's, each of a
    /// generation above the binding's (see "Standby bindings" in the module docs).
    standbys: Vec<Binding>,
    /// Placer: no standby is made for this client before this (after a standby failed).
    standby_retry_at: Option<Time>,
    /// When it was last reset (per-client isolation).
    reset_at: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partner {
    Unknown,
    Up { incarnation: u64 },
    Suspect { incarnation: u64, down_at: Time },
    Down { incarnation: u64 },
}

/// Why a binding is dropped; decides what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drop {
    /// Its interconnect failed or the placer moves it: Stop if it was running.
    Stop,
    /// The partner's client unregistered.
    PartnerClosed,
    /// The partner is gone; PartnerDown is told separately.
    PartnerGone,
    /// The local client unregistered; it is told nothing.
    Unregistered,
}

/// The cluster connection manager of one node.
pub struct Manager {
    cfg: Config,
    incarnation: u64,
    rng: ChaCha20Rng,
    links: Vec<Link>,
    clients: BTreeMap<ClientId, Client>,
    partner: Partner,
    partner_clients: BTreeMap<ClientId, (u64, Option<ClientOpen>)>,
    last_generation: BTreeMap<ClientId, Generation>,
    next_generation: u64,
    registration_seq: u64,
    actions: VecDeque<Action>,
    armed: Option<Time>,
    now: Time,
    last_migration: Option<Time>,
    /// When the partner last became reachable (the start of the home grace).
    partner_up_at: Option<Time>,
    /// Every client's static home (Fig. 8) and the `registration_seq` it was computed for: it only
    /// changes when clients come or go, and placement runs after every event.
    homes: (u64, BTreeMap<ClientId, InterconnectId>),
    /// When placement last ran (see `timer_needs_placement`).
    placed_at: Time,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node", &self.cfg.node)
            .field("partner", &self.partner)
            .field("links", &self.links)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager starting at `now`. `seed` feeds the CSPRNG for nonces, challenges and back-off
    /// jitter: the real driver passes 32 bytes from the OS, the simulator a seeded value.
    /// The first actions (listen or connect on every interconnect) are queued already.
    pub fn new(cfg: Config, now: Time, seed: [u8; 32]) -> Manager {
        assert!(
            cfg.min_version <= cfg.max_version,
            "empty protocol version range"
        );
        assert_ne!(cfg.node, cfg.partner, "a node cannot be its own partner");
        let mut rng = ChaCha20Rng::from_seed(seed);
        let incarnation = rng.next_u64();
        let links = (0..cfg.interconnects)
            .map(|i| Link {
                id: InterconnectId(i),
                port_up: true,
                phase: Phase::Listening,
                failures: 0,
                healthy_since: now,
                attempt: 0,
                attempted_at: now,
                port_known_at: None,
                first_session_at: None,
                challenger: None,
            })
            .collect();
        let mut m = Manager {
            cfg,
            incarnation,
            rng,
            links,
            clients: BTreeMap::new(),
            partner: Partner::Unknown,
            partner_clients: BTreeMap::new(),
            last_generation: BTreeMap::new(),
            next_generation: 1,
            registration_seq: 0,
            actions: VecDeque::new(),
            armed: None,
            now,
            last_migration: None,
            partner_up_at: None,
            homes: (u64::MAX, BTreeMap::new()),
            placed_at: now,
        };
        for i in 0..m.links.len() {
            if m.cfg.is_placer() {
                m.connect(now, i);
            } else {
                let ic = m.links[i].id;
                m.push(Action::Listen { ic });
                m.step(now, Step::InitialSession410 { ic });
            }
        }
        m.finish(now);
        m
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This manager's incarnation (random per start), as sent in [`Hello`].
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The next queued action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest time the manager wants [`Input::Timer`].
    pub fn next_deadline(&self) -> Option<Time> {
        let mut d: Option<Time> = None;
        let mut at = |t: Time| d = Some(d.map_or(t, |x| x.min(t)));
        for l in &self.links {
            if let Some(h) = &l.challenger {
                at(h.deadline);
            }
            match &l.phase {
                Phase::Backoff { until } => at(*until),
                Phase::Connecting { deadline, .. } => at(*deadline),
                Phase::Handshake(h) => at(h.deadline),
                Phase::Up(u) => {
                    at(u.next_heartbeat);
                    at(u.rx_deadline);
                    if let Some(b) = u.batch_deadline {
                        at(b);
                    }
                    // Wake up when a link's hold-down ends, to consider failback.
                    let hold_end = l.healthy_since + self.cfg.failback_hold_down;
                    if self.cfg.is_placer() && hold_end > self.now {
                        at(hold_end);
                    }
                }
                Phase::PortDown | Phase::Listening => {}
            }
        }
        if let Partner::Suspect { down_at, .. } = self.partner {
            at(down_at);
        }
        // Wake up when a home grace ends, to place clients that waited for their home.
        if self.cfg.is_placer() {
            for l in &self.links {
                if let Some(t) = self.home_grace_end(l).filter(|t| *t > self.now) {
                    at(t);
                }
            }
        }
        if self.cfg.is_placer() {
            for c in self.clients.values() {
                if let Some(t) = c.retry_at.filter(|t| *t > self.now) {
                    at(t);
                }
                if let Some(t) = c.standby_retry_at.filter(|t| *t > self.now) {
                    at(t);
                }
                if c.binding.as_ref().is_some_and(|b| b.live) && c.standbys.is_empty() {
                    if let Some(t) = self.standby_wait(c).filter(|t| *t > self.now) {
                        at(t);
                    }
                }
            }
        }
        d
    }

    /// The state of every interconnect.
    pub fn link_status(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|l| match l.phase {
                Phase::PortDown => LinkStatus::PortDown,
                Phase::Backoff { .. } => LinkStatus::Backoff,
                Phase::Connecting { .. } => LinkStatus::Connecting,
                Phase::Listening => LinkStatus::Listening,
                Phase::Handshake(_) => LinkStatus::Handshake,
                Phase::Up(_) => LinkStatus::Up,
            })
            .collect()
    }

    /// The partner's state.
    pub fn partner_status(&self) -> PartnerStatus {
        match self.partner {
            Partner::Unknown => PartnerStatus::Unknown,
            Partner::Up { .. } => PartnerStatus::Up,
            Partner::Suspect { .. } => PartnerStatus::Suspect,
            Partner::Down { .. } => PartnerStatus::Down,
        }
    }

    /// Registered clients.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.keys().copied()
    }

    /// A client's state, `None` if not registered.
    pub fn client_status(&self, id: ClientId) -> Option<ClientStatus> {
        let c = self.clients.get(&id)?;
        Some(match &c.binding {
            Some(b) if b.live => ClientStatus::Ready {
                ic: b.ic,
                generation: b.generation,
            },
            Some(b) => ClientStatus::Connecting {
                ic: b.ic,
                generation: b.generation,
            },
            None if !matches!(self.partner, Partner::Up { .. }) => ClientStatus::WaitingForPartner,
            None if c.retry_at.is_some_and(|t| t > self.now) => ClientStatus::ResetBackoff {
                until: c.retry_at.unwrap_or(self.now),
                resets: c.resets,
            },
            None => match self.partner_clients.get(&id) {
                Some((_, Some(_))) => ClientStatus::WaitingForPlacement,
                _ => ClientStatus::WaitingForPartnerClient,
            },
        })
    }

    /// Handles one event at `now` (step 507) and queues the resulting actions.
    pub fn handle(&mut self, now: Time, input: Input) {
        debug_assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
        // Signs of life on an up link (the bulk of all inputs) only move its silence deadline: they
        // cannot change placement or batches, so they skip that pass, whose cost grows with the
        // number of clients.
        let sign_of_life = match &input {
            Input::PathAlive { .. } | Input::Paused { .. } => true,
            Input::Message {
                ic,
                session,
                msg: Message::Heartbeat(_),
            } => self
                .session_link(*ic, *session)
                .is_some_and(|i| self.links[i].up().is_some()),
            _ => false,
        };
        match input {
            Input::SessionEstablished {
                ic,
                session,
                control_vi,
                windows,
            } => self.on_session_established(now, ic, session, control_vi, windows),
            Input::PartnerListening { ic } => self.on_partner_listening(now, ic),
            Input::ConnectFailed { ic, attempt } => {
                if let Some(i) = self.index(ic) {
                    if matches!(self.links[i].phase, Phase::Connecting { attempt: a, .. } if a == attempt)
                    {
                        self.fail_link(now, i, LinkFailure::ConnectFailed);
                    }
                }
            }
            Input::SessionClosed { ic, session } => {
                if let Some(i) = self.session_link(ic, session) {
                    self.fail_link(now, i, LinkFailure::SessionClosed);
                } else if let Some(i) = self.challenger_link(ic, session) {
                    self.links[i].challenger = None;
                    self.push(Action::CloseSession { ic, session });
                }
            }
            Input::Message { ic, session, msg } => {
                if let Some(i) = self.session_link(ic, session) {
                    self.on_message(now, i, msg);
                } else if let Some(i) = self.challenger_link(ic, session) {
                    self.on_challenger(now, i, msg);
                }
            }
            Input::Malformed { ic, session, error } => {
                if let Some(i) = self.challenger_link(ic, session) {
                    self.refuse_challenger(now, i, HandshakeError::Malformed(error));
                } else if let Some(i) = self.session_link(ic, session) {
                    self.refuse(now, i, HandshakeError::Malformed(error));
                }
            }
            Input::PortState { ic, up } => self.on_port(now, ic, up),
            Input::AsyncEvent { ic, event } => match event {
                AsyncEvent::PortActive => self.on_port(now, ic, true),
                AsyncEvent::PortError | AsyncEvent::DeviceFatal => self.on_port(now, ic, false),
            },
            Input::ViError { ic, vi } => {
                if let Some(i) = self.index(ic) {
                    let relevant = match vi {
                        ViRef::Control => self.links[i].session().is_some(),
                        ViRef::Client(c, g) => self.clients.get(&c).is_some_and(|c| {
                            c.binding
                                .as_ref()
                                .is_some_and(|b| b.generation == g && b.ic == ic)
                        }),
                    };
                    match vi {
                        // Per-client isolation: a client VI error on a link whose control VI and
                        // heartbeats are fine is that client's problem (a peer that stopped
                        // reposting receives, a bad work request): only its binding is reset. A dead
                        // link is still caught by its heartbeats and fails every client on it.
                        ViRef::Client(c, g) if relevant && self.links[i].up().is_some() => {
                            self.reset_client(now, c, g, true);
                        }
                        // A standby's VIs failed (made or connected ahead of time): only the
                        // standby goes, on both sides; the client never noticed it.
                        ViRef::Client(c, g) if self.has_standby(c, g, ic) => {
                            self.standby_failed(now, c, g, true);
                        }
                        _ if relevant => self.fail_link(now, i, LinkFailure::ViError),
                        _ => {}
                    }
                }
            }
            Input::ClientVisCreated {
                client,
                generation,
                vis,
                windows,
            } => self.on_vis_created(now, client, generation, vis, windows),
            Input::PathAlive { ic, session } => {
                let t = self.cfg.heartbeat_timeout();
                if let Some(i) = self.session_link(ic, session) {
                    if let Some(u) = self.links[i].up_mut() {
                        let acked = (now + t).min(u.last_rx + t * STALLED_PARTNER_TIMEOUTS);
                        u.rx_deadline = u.rx_deadline.max(acked);
                    }
                }
            }
            Input::Paused { duration } => {
                for l in &mut self.links {
                    if let Some(u) = l.up_mut() {
                        u.rx_deadline = u.rx_deadline.max(now) + duration;
                    }
                }
            }
            Input::ClientVisConnected { client, generation } => {
                self.on_vis_connected(now, client, generation)
            }
            Input::Client(req) => self.on_client_request(now, req),
            Input::Measured { samples } => {
                self.add_samples(now, &samples);
                if !self.cfg.is_placer() {
                    let clients: Vec<ClientLoad> = samples
                        .into_iter()
                        .filter(|s| self.clients.contains_key(&s.client))
                        .collect();
                    if let Some(i) = self.links.iter().position(|l| l.up().is_some()) {
                        self.send(i, Message::LoadReport(wire::LoadReport { clients }));
                    }
                }
            }
            Input::Timer => {
                // Always re-arm after an expiry, even for an unchanged deadline.
                self.armed = None;
                let (links, partner) = (self.link_signature(), self.partner_status());
                self.on_timer(now);
                if !self.timer_needs_placement(&links, partner) {
                    self.flush_batches(now);
                    self.arm();
                    return;
                }
            }
        }
        if sign_of_life {
            self.arm();
        } else {
            self.finish(now);
        }
    }

    /// Whether placement has anything to look at after a timer: a link or the partner changed state,
    /// or a placement deadline (a hold-down's end, the home grace's end, a client's back-off, a
    /// standby's back-off or wait) passed since placement last ran. A timer that only sent heartbeats needs no placement pass.
    fn timer_needs_placement(&self, before: &[(u8, bool)], partner_before: PartnerStatus) -> bool {
        let (from, to) = (self.placed_at, self.now);
        let passed = |t: Time| from < t && t <= to;
        self.link_signature() != before
            || self.partner_status() != partner_before
            || self
                .links
                .iter()
                .any(|l| l.up().is_some() && passed(l.healthy_since + self.cfg.failback_hold_down))
            || self
                .links
                .iter()
                .any(|l| self.home_grace_end(l).is_some_and(passed))
            || self.clients.values().any(|c| {
                c.retry_at.is_some_and(passed)
                    || c.standby_retry_at.is_some_and(passed)
                    || self.standby_wait(c).is_some_and(passed)
            })
    }

    /// Each link's phase and port state, to tell whether an event changed any.
    fn link_signature(&self) -> Vec<(u8, bool)> {
        self.links
            .iter()
            .map(|l| {
                let phase = match l.phase {
                    Phase::PortDown => 0,
                    Phase::Backoff { .. } => 1,
                    Phase::Connecting { .. } => 2,
                    Phase::Listening => 3,
                    Phase::Handshake(_) => 4,
                    Phase::Up(_) => 5,
                };
                (phase, l.port_up)
            })
            .collect()
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn step(&mut self, at: Time, step: Step) {
        self.actions.push_back(Action::Step { at, step });
    }

    fn tell(&mut self, client: ClientId, event: ClientEvent) {
        self.actions.push_back(Action::Tell { client, event });
    }

    fn index(&self, ic: InterconnectId) -> Option<usize> {
        let i = ic.0 as usize;
        (i < self.links.len()).then_some(i)
    }

    fn session_link(&self, ic: InterconnectId, session: SessionId) -> Option<usize> {
        let i = self.index(ic)?;
        (self.links[i].session() == Some(session)).then_some(i)
    }

    fn send(&mut self, i: usize, mut msg: Message) {
        if let Some(session) = self.links[i].session() {
            // A partner of an older protocol version gets no private data: its decoder would refuse it.
            if let Message::ClientInfo(ci) | Message::Standby(ci) = &mut msg {
                let version = self.links[i].up().map_or(0, |u| u.version);
                if version < wire::CLIENT_PRIVATE_VERSION {
                    ci.entries.iter_mut().for_each(|e| e.private.clear());
                }
            }
            let ic = self.links[i].id;
            self.push(Action::Send { ic, session, msg });
        }
    }

    fn broadcast(&mut self, msg: &Message) {
        for i in 0..self.links.len() {
            if self.links[i].up().is_some() {
                self.send(i, msg.clone());
            }
        }
    }

    fn random32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        b
    }

    /// Runs after every event: placement, batch flushing and timer arming.
    fn finish(&mut self, now: Time) {
        self.place(now);
        self.placed_at = now;
        self.ensure_standbys(now);
        self.flush_batches(now);
        self.arm();
    }

    /// Asks for [`Input::Timer`] at the next deadline, if it changed.
    fn arm(&mut self) {
        if let Some(d) = self.next_deadline() {
            if self.armed != Some(d) {
                self.armed = Some(d);
                self.push(Action::ArmTimer { deadline: d });
            }
        }
    }

    // ----- 410: initial session -----------------------------------------------------------------

    fn connect(&mut self, now: Time, i: usize) {
        let l = &mut self.links[i];
        l.attempt += 1;
        l.attempted_at = now;
        let attempt = l.attempt;
        l.phase = Phase::Connecting {
            attempt,
            deadline: now + self.cfg.connect_timeout,
        };
        let ic = l.id;
        self.push(Action::Connect { ic, attempt });
        self.step(now, Step::InitialSession410 { ic });
    }

    /// The follower's knock (see [`Input::PartnerListening`]): end the back-off early.
    fn on_partner_listening(&mut self, now: Time, ic: InterconnectId) {
        let Some(i) = self.index(ic) else { return };
        if !self.cfg.is_placer() {
            return;
        }
        let earliest = self.links[i].attempted_at + self.cfg.backoff_min;
        if let Phase::Backoff { until } = &mut self.links[i].phase {
            if earliest <= now {
                self.connect(now, i);
            } else {
                *until = (*until).min(earliest);
            }
        }
    }

    fn on_session_established(
        &mut self,
        now: Time,
        ic: InterconnectId,
        session: SessionId,
        control_vi: ViAddress,
        windows: Vec<MemoryWindow>,
    ) {
        let Some(i) = self.index(ic) else {
            self.push(Action::CloseSession { ic, session });
            return;
        };
        let acceptable = if self.cfg.is_placer() {
            matches!(self.links[i].phase, Phase::Connecting { .. })
        } else {
            self.links[i].port_up
        };
        if !acceptable {
            // A connect that completed after we gave up on it, or a session on a port we know is down.
            self.push(Action::CloseSession { ic, session });
            return;
        }
        self.links[i].first_session_at.get_or_insert(now);
        let nonce = self.random32();
        // The challenge does not depend on the partner's Hello: it goes out with ours, so the
        // handshake takes two one-way trips instead of four (see "415" in the module docs).
        let challenge = self.random32();
        let h = Box::new(Handshake {
            session,
            deadline: now + self.cfg.handshake_timeout,
            control_vi,
            windows,
            nonce,
            peer_hello: None,
            version: 0,
            challenge,
            responded: false,
            peer_verified: false,
        });
        let hello = Message::Hello(Hello {
            min_version: self.cfg.min_version,
            max_version: self.cfg.max_version,
            features: self.cfg.features,
            node: self.cfg.node,
            cluster: self.cfg.cluster,
            incarnation: self.incarnation,
            nonce,
        });
        let challenge = Message::AuthChallenge(AuthChallenge { challenge });
        if self.links[i].session().is_some() {
            // The partner reconnected (it judged the old session dead), or someone else reached our
            // port: the live session stays until this one proves the cluster secret.
            if let Some(old) = self.links[i].challenger.replace(h) {
                self.push(Action::CloseSession {
                    ic,
                    session: old.session,
                });
            }
            for msg in [hello, challenge] {
                self.push(Action::Send { ic, session, msg });
            }
            return;
        }
        self.links[i].phase = Phase::Handshake(h);
        self.step(now, Step::SessionEstablished410 { ic });
        self.send(i, hello);
        self.send(i, challenge);
    }

    fn challenger_link(&self, ic: InterconnectId, session: SessionId) -> Option<usize> {
        let i = self.index(ic)?;
        (self.links[i].challenger.as_ref().map(|h| h.session) == Some(session)).then_some(i)
    }

    /// A message on link `i`'s challenger session (see [`Link::challenger`]): the handshake runs on it as
    /// on any new session; once the sender proved the cluster secret it is the partner, which judged the
    /// live session dead, and the challenger takes its place ([`fail_link`](Self::fail_link) installs
    /// it). Until then nothing it says touches the live session, and a refusal closes only it.
    fn on_challenger(&mut self, now: Time, i: usize, msg: Message) {
        if let Message::Error(e) = msg {
            let e = HandshakeError::RefusedByPartner {
                code: e.code,
                text: e.text,
            };
            return self.refuse_challenger(now, i, e);
        }
        let h = self.links[i].challenger.as_mut().expect("routed to it");
        let session = h.session;
        match handshake_step(&self.cfg, h, msg) {
            HandshakeStep::Continue => {}
            HandshakeStep::Send(msgs) => {
                let ic = self.links[i].id;
                for msg in msgs {
                    self.push(Action::Send { ic, session, msg });
                }
            }
            HandshakeStep::Verified => {
                let ic = self.links[i].id;
                self.step(now, Step::SessionEstablished410 { ic });
                self.fail_link(now, i, LinkFailure::Replaced);
            }
            // The partner's PeerInfo comes only after its proof, when this is the link's session.
            HandshakeStep::PeerInfo(_) => self.refuse_challenger(
                now,
                i,
                HandshakeError::Protocol("PeerInfo before the proof"),
            ),
            HandshakeStep::Refuse(e) => self.refuse_challenger(now, i, e),
        }
    }

    /// Link `i`'s challenger is refused: told why, closed; the live session is not touched.
    fn refuse_challenger(&mut self, now: Time, i: usize, error: HandshakeError) {
        let Some(h) = self.links[i].challenger.take() else {
            return;
        };
        let ic = self.links[i].id;
        if let Some(code) = error_code(&error) {
            let mut text = error.to_string();
            text.truncate(wire::MAX_TEXT_LEN);
            let msg = Message::Error(wire::Error { code, text });
            self.push(Action::Send {
                ic,
                session: h.session,
                msg,
            });
        }
        self.push(Action::LinkRefused {
            ic,
            error: error.clone(),
        });
        self.step(now, Step::Refused415 { ic, error });
        self.push(Action::CloseSession {
            ic,
            session: h.session,
        });
    }

    // ----- 415: peer info, version, cluster, authentication ------------------------------------

    fn refuse(&mut self, now: Time, i: usize, error: HandshakeError) {
        let ic = self.links[i].id;
        if let Some(code) = error_code(&error) {
            let mut text = error.to_string();
            text.truncate(wire::MAX_TEXT_LEN);
            self.send(i, Message::Error(wire::Error { code, text }));
        }
        self.push(Action::LinkRefused {
            ic,
            error: error.clone(),
        });
        self.step(now, Step::Refused415 { ic, error });
        self.fail_link(now, i, LinkFailure::Refused);
    }

    fn on_message(&mut self, now: Time, i: usize, msg: Message) {
        if let Message::Error(e) = msg {
            self.refuse(
                now,
                i,
                HandshakeError::RefusedByPartner {
                    code: e.code,
                    text: e.text,
                },
            );
            return;
        }
        let heartbeat_timeout = self.cfg.heartbeat_timeout();
        if let Some(u) = self.links[i].up_mut() {
            u.rx_deadline = now + heartbeat_timeout;
            u.last_rx = now;
            self.on_up_message(now, i, msg);
        } else {
            self.on_handshake_message(now, i, msg);
        }
    }

    fn on_handshake_message(&mut self, now: Time, i: usize, msg: Message) {
        let Phase::Handshake(h) = &mut self.links[i].phase else {
            unreachable!("called during the handshake")
        };
        match handshake_step(&self.cfg, h, msg) {
            HandshakeStep::Continue | HandshakeStep::Verified => {}
            HandshakeStep::Send(msgs) => {
                for m in msgs {
                    self.send(i, m);
                }
            }
            HandshakeStep::PeerInfo(p) => self.link_up(now, i, p),
            HandshakeStep::Refuse(e) => self.refuse(now, i, e),
        }
    }

    fn link_up(&mut self, now: Time, i: usize, peer: PeerInfo) {
        let Phase::Handshake(h) = std::mem::replace(&mut self.links[i].phase, Phase::Listening)
        else {
            unreachable!("link_up is called from the handshake");
        };
        let hello = h.peer_hello.expect("verified implies hello");
        let ic = self.links[i].id;
        self.links[i].phase = Phase::Up(Box::new(UpLink {
            session: h.session,
            version: h.version,
            tag: auth::session_tag(&h.nonce, &hello.nonce),
            incarnation: hello.incarnation,
            next_heartbeat: now,
            rx_deadline: now + self.cfg.heartbeat_timeout(),
            last_rx: now,
            heartbeat_seq: 0,
            out_info: Vec::new(),
            out_ready: Vec::new(),
            batch_deadline: None,
        }));
        self.links[i].healthy_since = now;
        self.push(Action::SlamConnectControl {
            ic,
            session: h.session,
            local: h.control_vi,
            remote: peer.control_vi,
        });
        self.step(
            now,
            Step::PeerInfoExchanged415 {
                ic,
                version: h.version,
            },
        );
        self.send_heartbeat(now, i);
        self.partner_reached(now, i, hello.incarnation);
        // Tell the partner which clients exist here (510/515 mirror, full state on every new link).
        let opens: Vec<Message> = self
            .clients
            .values()
            .map(|c| Message::ClientOpen(self.open_message(c)))
            .collect();
        for m in opens {
            self.send(i, m);
        }
    }

    fn open_message(&self, c: &Client) -> ClientOpen {
        ClientOpen {
            client: c.spec.id,
            name: c.spec.name.clone(),
            class: c.spec.class,
            vi_count: c.spec.vi_count,
            seq: self.registration_seq,
        }
    }

    fn partner_reached(&mut self, now: Time, i: usize, incarnation: u64) {
        if !matches!(self.partner, Partner::Up { incarnation: x } if x == incarnation) {
            self.partner_up_at = Some(now);
        }
        match self.partner {
            Partner::Up { incarnation: x } if x == incarnation => {}
            Partner::Suspect { incarnation: x, .. } if x == incarnation => {
                self.partner = Partner::Up { incarnation };
                self.partner_clients.clear();
                self.step(now, Step::PartnerBack);
            }
            Partner::Up { .. } | Partner::Suspect { .. } => {
                // A new incarnation: the partner restarted and its clients are gone.
                self.step(now, Step::PartnerRestarted);
                self.partner_gone(now);
                self.partner = Partner::Up { incarnation };
                for j in 0..self.links.len() {
                    let old = match &self.links[j].phase {
                        Phase::Up(u) => u.incarnation != incarnation,
                        Phase::Handshake(h) => h
                            .peer_hello
                            .as_ref()
                            .is_some_and(|p| p.incarnation != incarnation),
                        _ => false,
                    };
                    if j != i && old {
                        self.fail_link(now, j, LinkFailure::PartnerRestarted);
                    }
                }
            }
            Partner::Unknown | Partner::Down { .. } => {
                if let Partner::Down { incarnation: x } = self.partner {
                    if x != incarnation {
                        self.last_generation.clear();
                    }
                }
                self.partner = Partner::Up { incarnation };
                self.partner_clients.clear();
            }
        }
    }

    /// The partner is down or restarted: every binding goes, every client is told PartnerDown.
    fn partner_gone(&mut self, now: Time) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in &ids {
            self.drop_binding(now, *id, Drop::PartnerGone);
        }
        for id in ids {
            if let Some(c) = self.clients.get_mut(&id) {
                c.told = Told::Idle;
            }
            self.tell(id, ClientEvent::PartnerDown);
        }
        self.partner_clients.clear();
        self.last_generation.clear();
        self.step(now, Step::PartnerDown);
    }

    // ----- operation on an up link -------------------------------------------------------------

    fn on_up_message(&mut self, now: Time, i: usize, msg: Message) {
        let ic = self.links[i].id;
        match msg {
            Message::Heartbeat(_) => {}
            Message::ClientOpen(o) => {
                let id = o.client;
                let newer = self
                    .partner_clients
                    .get(&id)
                    .is_none_or(|(s, _)| o.seq > *s);
                if newer {
                    self.partner_clients.insert(id, (o.seq, Some(o)));
                }
            }
            Message::ClientClose(c) => {
                let newer = self
                    .partner_clients
                    .get(&c.client)
                    .is_none_or(|(s, _)| c.seq > *s);
                if newer {
                    self.partner_clients.insert(c.client, (c.seq, None));
                    self.drop_binding(now, c.client, Drop::PartnerClosed);
                }
            }
            Message::ClientInfo(ci) => {
                for e in ci.entries {
                    self.on_client_entry(now, i, e, false);
                }
            }
            Message::Standby(ci) => {
                if self.links[i]
                    .up()
                    .is_some_and(|u| u.version < wire::STANDBY_VERSION)
                {
                    return self.refuse(
                        now,
                        i,
                        HandshakeError::Protocol("standby on a link without standby bindings"),
                    );
                }
                for e in ci.entries {
                    self.on_client_entry(now, i, e, true);
                }
            }
            Message::Ready(r) => {
                for c in r.clients {
                    self.on_partner_ready(now, ic, c);
                }
            }
            Message::Stop(s) => {
                if let Some(j) = self.index(s.interconnect) {
                    if self.links[j].up().is_some_and(|u| u.tag == s.session_tag) {
                        self.fail_link(now, j, LinkFailure::PartnerReported);
                    }
                }
            }
            Message::ClientReset(r) => self.reset_client(now, r.client, r.generation, false),
            Message::LoadReport(r) => {
                if self.cfg.is_placer() {
                    self.add_samples(now, &r.clients);
                }
            }
            Message::Resume(r) => {
                if let Some(j) = self.index(r.interconnect) {
                    if let Phase::Backoff { until } = &mut self.links[j].phase {
                        *until = now;
                    }
                }
            }
            Message::Hello(_)
            | Message::AuthChallenge(_)
            | Message::AuthResponse(_)
            | Message::PeerInfo(_) => self.refuse(
                now,
                i,
                HandshakeError::Protocol("handshake message on an up link"),
            ),
            Message::Error(_) => unreachable!("handled in on_message"),
        }
    }

    /// 425/430: a partner client's VI addresses for a generation (`standby`: of a standby binding).
    fn on_client_entry(&mut self, now: Time, i: usize, e: ClientEntry, standby: bool) {
        let ic = self.links[i].id;
        let placer = self.cfg.is_placer();
        let Some(c) = self.clients.get_mut(&e.client) else {
            // Not registered here (any more): say so, as the ClientClose the partner may have lost with a
            // broken session would have, or its binding would wait for our entry forever. (A later
            // registration here carries a higher sequence number and is taken as new.)
            let seq = self.registration_seq;
            self.send(
                i,
                Message::ClientClose(ClientClose {
                    client: e.client,
                    seq,
                }),
            );
            return;
        };
        if e.vis.is_empty() || e.vis.iter().any(|v| v.interconnect != ic) {
            return self.refuse(
                now,
                i,
                HandshakeError::Protocol("client entry with bad VIs"),
            );
        }
        let id = e.client;
        let generation = e.generation;
        if let Some(b) = c.binding.as_mut().filter(|b| b.generation == e.generation) {
            if b.ic != ic || e.vis.len() != b.vi_count as usize {
                return self.refuse(now, i, HandshakeError::Protocol("client entry mismatch"));
            }
            let first = b.remote.is_none();
            b.remote = Some(e.clone());
            self.tell(id, ClientEvent::PartnerInfo(e));
            self.step(now, Step::PartnerInfo430 { client: id, ic });
            if first {
                self.try_connect(id, generation);
            }
            return;
        }
        if let Some(s) = c.standbys.iter_mut().find(|s| s.generation == e.generation) {
            if s.ic != ic || e.vis.len() != s.vi_count as usize {
                return self.refuse(now, i, HandshakeError::Protocol("standby entry mismatch"));
            }
            let first = s.remote.is_none();
            s.remote = Some(e.clone());
            if first {
                self.try_connect(id, e.generation);
            }
            return;
        }
        if placer {
            // Not the generation we placed: stale.
            return;
        }
        if standby {
            return self.accept_standby(now, i, e);
        }
        let last = self.last_generation.get(&id).copied();
        if last.is_some_and(|g| e.generation <= g) {
            return;
        }
        // The placer placed (or moved) this client pair: follow.
        self.last_generation.insert(id, e.generation);
        self.drop_binding(now, id, Drop::Stop);
        self.retire_standbys(now, id, e.generation);
        let generation = e.generation;
        let count = e.vis.len() as u8;
        let c = self.clients.get_mut(&id).expect("checked above");
        c.binding = Some(Binding {
            generation,
            ic,
            vi_count: count,
            local: None,
            remote: Some(e.clone()),
            connected: false,
            slammed: false,
            partner_ready: false,
            live: false,
            windows: Vec::new(),
        });
        self.tell(id, ClientEvent::PartnerInfo(e));
        self.step(now, Step::PartnerInfo430 { client: id, ic });
        self.create_vis(now, i, id, generation, count);
    }

    fn create_vis(
        &mut self,
        now: Time,
        i: usize,
        client: ClientId,
        generation: Generation,
        count: u8,
    ) {
        let ic = self.links[i].id;
        self.push(Action::CreateClientVis {
            client,
            ic,
            generation,
            count,
        });
        self.step(
            now,
            Step::CreateVis420 {
                client,
                ic,
                generation,
            },
        );
        let window = self.cfg.batch_window;
        if let Some(u) = self.links[i].up_mut() {
            u.batch_deadline.get_or_insert(now + window);
        }
    }

    fn on_vis_created(
        &mut self,
        now: Time,
        id: ClientId,
        generation: Generation,
        vis: Vec<ViAddress>,
        windows: Vec<MemoryWindow>,
    ) {
        let current = self.clients.get(&id).and_then(|c| {
            c.binding
                .as_ref()
                .filter(|b| b.generation == generation && b.local.is_none())
                .map(|b| (b.ic, b.vi_count))
        });
        let standby = self.clients.get(&id).and_then(|c| {
            c.standbys
                .iter()
                .find(|s| s.generation == generation && s.local.is_none())
                .map(|s| (s.ic, s.vi_count))
        });
        if let (None, Some((ic, count))) = (current, standby) {
            return self.standby_created(now, id, generation, ic, count, vis, windows);
        }
        let Some((ic, count)) = current else {
            // Created for a generation that is gone: release at once so nothing leaks.
            if let Some(v) = vis.first() {
                self.push(Action::ReleaseClientVis {
                    client: id,
                    ic: v.interconnect,
                    generation,
                });
                self.step(
                    now,
                    Step::Release525 {
                        client: id,
                        ic: v.interconnect,
                    },
                );
            }
            return;
        };
        if vis.len() != count as usize || vis.iter().any(|v| v.interconnect != ic) {
            // The client answered something else than asked: release it and place again.
            self.push(Action::ReleaseClientVis {
                client: id,
                ic,
                generation,
            });
            if let Some(c) = self.clients.get_mut(&id) {
                c.binding = None;
            }
            return;
        }
        let c = self.clients.get_mut(&id).expect("checked");
        c.windows = windows;
        let b = c.binding.as_mut().expect("checked");
        b.local = Some(vis.clone());
        let entry = ClientEntry {
            client: id,
            name: c.spec.name.clone(),
            generation,
            vis,
            windows: c.windows.clone(),
            private: c.spec.private.clone(),
        };
        self.queue_entry(now, ic, entry);
        self.try_connect(id, generation);
    }

    fn queue_entry(&mut self, now: Time, ic: InterconnectId, entry: ClientEntry) {
        let window = self.cfg.batch_window;
        if let Some(u) = self.links[ic.0 as usize].up_mut() {
            u.out_info.retain(|e| e.client != entry.client);
            u.out_info.push(entry);
            u.batch_deadline.get_or_insert(now + window);
        }
    }

    /// 435: slam connect once both ends' addresses are known ([`Self::on_vis_connected`] follows),
    /// for the binding or a standby of `generation`.
    fn try_connect(&mut self, id: ClientId, generation: Generation) {
        let Some(b) = self.pair_mut(id, generation) else {
            return;
        };
        if b.connected {
            return;
        }
        let (Some(local), Some(remote)) = (&b.local, &b.remote) else {
            return;
        };
        b.connected = true;
        let a = Action::SlamConnect {
            client: id,
            ic: b.ic,
            generation: b.generation,
            local: local.clone(),
            remote: remote.vis.clone(),
        };
        self.push(a);
    }

    /// 435 done, 440: queue Ready for the partner; 445 if the partner's Ready is already here.
    fn on_vis_connected(&mut self, now: Time, id: ClientId, generation: Generation) {
        let Some(b) = self
            .clients
            .get_mut(&id)
            .and_then(|c| c.binding.as_mut())
            .filter(|b| b.generation == generation && b.connected && !b.slammed)
        else {
            // A standby's end is connected: it waits there for a promotion. Otherwise a generation
            // released meanwhile: its VIs are released too.
            if let Some(s) = self.clients.get_mut(&id).and_then(|c| {
                c.standbys
                    .iter_mut()
                    .find(|s| s.generation == generation && s.connected)
            }) {
                s.slammed = true;
            }
            return;
        };
        b.slammed = true;
        let (ic, partner_ready) = (b.ic, b.partner_ready);
        self.step(now, Step::SlamConnect435 { client: id, ic });
        let window = self.cfg.batch_window;
        let i = ic.0 as usize;
        if let Some(u) = self.links[i].up_mut() {
            u.out_ready.push(ClientRef {
                client: id,
                generation,
            });
            u.batch_deadline.get_or_insert(now + window);
        }
        if partner_ready {
            // The partner's client waits for this end only: no reason to batch.
            let ready = self.links[i]
                .up_mut()
                .map(|u| std::mem::take(&mut u.out_ready))
                .unwrap_or_default();
            self.send_ready(now, i, ready);
            self.go(now, id);
        }
    }

    fn on_partner_ready(&mut self, now: Time, ic: InterconnectId, r: ClientRef) {
        let Some(b) = self
            .clients
            .get_mut(&r.client)
            .and_then(|c| c.binding.as_mut())
            .filter(|b| b.generation == r.generation && b.ic == ic)
        else {
            if !self.cfg.is_placer() {
                self.follow_promotion(now, ic, r);
            }
            return;
        };
        b.partner_ready = true;
        if b.slammed {
            self.go(now, r.client);
        }
    }

    /// 445: tell the client to go.
    fn go(&mut self, now: Time, id: ClientId) {
        let c = self
            .clients
            .get_mut(&id)
            .expect("go on a registered client");
        let b = c.binding.as_mut().expect("go on a binding");
        if b.live {
            return;
        }
        b.live = true;
        let (ic, generation) = (b.ic, b.generation);
        let event = match c.told {
            Told::Stopped => ClientEvent::Resumed { ic, generation },
            Told::Idle => ClientEvent::Ready { ic, generation },
            Told::Ready => unreachable!("a running client is stopped before it is rebound"),
        };
        c.told = Told::Ready;
        c.live_since = Some(now);
        self.tell(id, event);
        self.step(now, Step::ClientsGo445 { client: id, ic });
    }

    fn drop_binding(&mut self, now: Time, id: ClientId, why: Drop) {
        if why != Drop::Stop {
            // The pair is gone on one side: so are its standbys (the partner drops its own).
            self.retire_standbys(now, id, Generation(u64::MAX));
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        c.live_since = None;
        let Some(b) = c.binding.take() else {
            if why == Drop::PartnerClosed && c.told == Told::Stopped {
                c.told = Told::Idle;
                self.tell(id, ClientEvent::PartnerClosed);
            }
            return;
        };
        let told = c.told;
        match (why, told) {
            (Drop::Stop, Told::Ready) => {
                c.told = Told::Stopped;
                self.tell(id, ClientEvent::Stop { ic: b.ic });
            }
            (Drop::PartnerClosed, Told::Ready | Told::Stopped) => {
                c.told = Told::Idle;
                self.tell(id, ClientEvent::PartnerClosed);
            }
            _ => {}
        }
        if b.local.is_some() {
            self.push(Action::ReleaseClientVis {
                client: id,
                ic: b.ic,
                generation: b.generation,
            });
            self.step(
                now,
                Step::Release525 {
                    client: id,
                    ic: b.ic,
                },
            );
        }
        if let Some(u) = self.links[b.ic.0 as usize].up_mut() {
            u.out_info.retain(|e| e.client != id);
            u.out_ready.retain(|r| r.client != id);
        }
    }

    /// Per-client isolation: the binding `generation` of `id` failed while its interconnect stays
    /// up (a VI error of that client here, `local`, or the partner's [`ClientReset`]). Only this
    /// client is stopped and its VIs released; the placer binds the pair again after a back-off that
    /// doubles with each reset in a row (a client that errors in a loop is retried at most every
    /// `client_backoff_max`), on the same interconnect while it is healthy.
    fn reset_client(&mut self, now: Time, id: ClientId, generation: Generation, local: bool) {
        if self
            .clients
            .get(&id)
            .is_some_and(|c| c.standbys.iter().any(|s| s.generation == generation))
        {
            return self.standby_failed(now, id, generation, local);
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let Some(ic) = c
            .binding
            .as_ref()
            .filter(|b| b.generation == generation)
            .map(|b| b.ic)
        else {
            return;
        };
        c.reset_at = Some(now);
        let stable = c
            .live_since
            .is_some_and(|t| now.saturating_since(t) >= self.cfg.failback_hold_down);
        c.resets = if stable {
            1
        } else {
            c.resets.saturating_add(1)
        };
        let resets = c.resets;
        let after = self.cfg.is_placer().then(|| {
            self.cfg
                .client_backoff_min
                .saturating_mul(1u32 << (resets - 1).min(16))
                .min(self.cfg.client_backoff_max)
        });
        if let (Some(after), Some(c)) = (after, self.clients.get_mut(&id)) {
            c.retry_at = Some(now + after);
            c.prefer = Some(ic);
        }
        self.step(
            now,
            Step::ClientReset {
                client: id,
                ic,
                resets,
                after,
            },
        );
        self.drop_binding(now, id, Drop::Stop);
        if local {
            // The partner's end of this generation is useless now: it drops it too.
            if let Some(i) = self.index(ic).filter(|i| self.links[*i].up().is_some()) {
                self.send(
                    i,
                    Message::ClientReset(ClientReset {
                        client: id,
                        generation,
                    }),
                );
            }
        }
    }

    fn send_heartbeat(&mut self, now: Time, i: usize) {
        let period = self.cfg.heartbeat_period;
        let Some(u) = self.links[i].up_mut() else {
            return;
        };
        u.heartbeat_seq += 1;
        let seq = u.heartbeat_seq;
        u.next_heartbeat = now + period;
        self.send(
            i,
            Message::Heartbeat(Heartbeat {
                seq,
                time_ns: now.as_nanos(),
            }),
        );
    }

    // ----- 520/525/530: failure and re-initialization ------------------------------------------

    fn fail_link(&mut self, now: Time, i: usize, reason: LinkFailure) {
        let ic = self.links[i].id;
        if let Some(session) = self.links[i].session() {
            self.push(Action::CloseSession { ic, session });
        }
        let was_up = std::mem::replace(&mut self.links[i].phase, Phase::Listening);
        // Standbys on a failed link go on both sides (the partner fails it too: it detects it, is
        // told Stop, or its session is closed).
        let doomed: Vec<(ClientId, Generation)> = self
            .clients
            .iter()
            .flat_map(|(id, c)| {
                c.standbys
                    .iter()
                    .filter(|s| s.ic == ic)
                    .map(|s| (*id, s.generation))
            })
            .collect();
        for (id, g) in doomed {
            self.drop_standby(now, id, g, false);
        }
        if let Phase::Up(u) = &was_up {
            // 520: stop the clients on it; 525: release their VIs.
            let bound: Vec<ClientId> = self
                .clients
                .iter()
                .filter(|(_, c)| c.binding.as_ref().is_some_and(|b| b.ic == ic))
                .map(|(id, _)| *id)
                .collect();
            self.step(
                now,
                Step::StopClients520 {
                    ic,
                    reason,
                    clients: bound.len(),
                },
            );
            for id in bound {
                self.drop_binding(now, id, Drop::Stop);
            }
            self.forgive_resets_on(now, ic);
            if reason.tell_partner() {
                self.broadcast(&Message::Stop(Stop {
                    interconnect: ic,
                    session_tag: u.tag,
                }));
            }
            let stable =
                now.saturating_since(self.links[i].healthy_since) >= self.cfg.failback_hold_down;
            self.links[i].failures = if stable {
                0
            } else {
                self.links[i].failures + 1
            };
        } else {
            self.links[i].failures = self.links[i].failures.saturating_add(1);
        }
        // 530: re-initialize with the same bring-up.
        let after = if !self.links[i].port_up {
            self.links[i].phase = Phase::PortDown;
            Duration::ZERO
        } else if self.cfg.is_placer() {
            let d = self.backoff(self.links[i].failures);
            self.links[i].phase = Phase::Backoff { until: now + d };
            d
        } else {
            self.links[i].phase = Phase::Listening;
            Duration::ZERO
        };
        self.step(now, Step::Reinitialize530 { ic, reason, after });
        // A challenger (follower) becomes the link's session now that the live one is gone, unless the
        // port went down.
        if let Some(h) = self.links[i].challenger.take() {
            if matches!(self.links[i].phase, Phase::Listening) {
                self.links[i].phase = Phase::Handshake(h);
            } else {
                self.push(Action::CloseSession {
                    ic,
                    session: h.session,
                });
            }
        }
        if matches!(was_up, Phase::Up(_)) && !self.links.iter().any(|l| l.up().is_some()) {
            if let Partner::Up { incarnation } = self.partner {
                self.partner = Partner::Suspect {
                    incarnation,
                    down_at: now + self.cfg.partner_down_after,
                };
                self.step(now, Step::PartnerSuspect);
                let ids: Vec<ClientId> = self.clients.keys().copied().collect();
                for id in ids {
                    self.tell(id, ClientEvent::PartnerSuspect);
                }
            }
        }
    }

    /// Interconnect `ic` failed: a client reset on it and still in its back-off saw the link's failure
    /// first (its VI erred a moment before the port, heartbeats or control VI told), not an error of
    /// its own. Its back-off and the reset are forgiven, so the placer moves it at once like the
    /// clients that were still bound there (a standby's promotion, not a wait of `client_backoff_min`).
    fn forgive_resets_on(&mut self, now: Time, ic: InterconnectId) {
        for c in self.clients.values_mut() {
            if c.prefer == Some(ic) && c.retry_at.is_some_and(|t| t > now) {
                c.retry_at = None;
                c.prefer = None;
                c.resets = c.resets.saturating_sub(1);
                c.reset_at = None;
            }
        }
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let base = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.cfg.backoff_max);
        // Jitter in [base/2, base] so the two sides of several links do not retry in lockstep.
        let nanos = base.as_nanos() as u64;
        Duration::from_nanos(nanos / 2 + self.rng.gen_range(0..=nanos / 2))
    }

    fn on_port(&mut self, now: Time, ic: InterconnectId, up: bool) {
        let Some(i) = self.index(ic) else { return };
        let was = self.links[i].port_up;
        self.links[i].port_up = up;
        self.links[i].port_known_at.get_or_insert(now);
        if !up {
            if !matches!(self.links[i].phase, Phase::PortDown) {
                self.fail_link(now, i, LinkFailure::PortDown);
            }
        } else if !was || matches!(self.links[i].phase, Phase::PortDown) {
            if self.cfg.is_placer() {
                self.connect(now, i);
            } else {
                self.links[i].phase = Phase::Listening;
            }
            self.broadcast(&Message::Resume(Resume { interconnect: ic }));
        }
    }

    fn on_timer(&mut self, now: Time) {
        for i in 0..self.links.len() {
            if self.links[i]
                .challenger
                .as_ref()
                .is_some_and(|h| h.deadline <= now)
            {
                let e = HandshakeError::Protocol("no handshake within the handshake timeout");
                self.refuse_challenger(now, i, e);
            }
            let due = match &self.links[i].phase {
                Phase::Backoff { until } if *until <= now => Some(None),
                Phase::Connecting { deadline, .. } if *deadline <= now => {
                    Some(Some(LinkFailure::ConnectTimeout))
                }
                Phase::Handshake(h) if h.deadline <= now => {
                    Some(Some(LinkFailure::HandshakeTimeout))
                }
                Phase::Up(u) if u.rx_deadline <= now => Some(Some(LinkFailure::HeartbeatLoss)),
                _ => None,
            };
            match due {
                Some(None) => self.connect(now, i),
                Some(Some(f)) => self.fail_link(now, i, f),
                None => {}
            }
            if self.links[i].up().is_some_and(|u| u.next_heartbeat <= now) {
                self.send_heartbeat(now, i);
            }
        }
        if let Partner::Suspect {
            incarnation,
            down_at,
        } = self.partner
        {
            if down_at <= now {
                self.partner_gone(now);
                self.partner = Partner::Down { incarnation };
            }
        }
    }

    // ----- 510/515: client requests ------------------------------------------------------------

    fn on_client_request(&mut self, now: Time, req: ClientRequest) {
        match req {
            ClientRequest::Register(spec) => {
                if self.clients.contains_key(&spec.id)
                    || spec.name.len() > wire::MAX_NAME_LEN
                    || spec.private.len() > wire::MAX_PRIVATE
                {
                    return;
                }
                let mut spec = spec;
                spec.vi_count = spec.vi_count.clamp(1, MAX_VIS as u8);
                let id = spec.id;
                self.registration_seq += 1;
                self.clients.insert(
                    id,
                    Client {
                        spec,
                        windows: Vec::new(),
                        binding: None,
                        told: Told::Idle,
                        live_since: None,
                        resets: 0,
                        retry_at: None,
                        prefer: None,
                        placed: None,
                        bound_at: None,
                        samples: VecDeque::new(),
                        standbys: Vec::new(),
                        standby_retry_at: None,
                        reset_at: None,
                    },
                );
                let open = self.open_message(&self.clients[&id]);
                self.broadcast(&Message::ClientOpen(open));
                self.step(
                    now,
                    Step::ClientRequest515 {
                        client: id,
                        request: "register",
                    },
                );
            }
            ClientRequest::OpenVi(id) | ClientRequest::FreeVi(id) => {
                let open = matches!(req, ClientRequest::OpenVi(_));
                let Some(c) = self.clients.get_mut(&id) else {
                    return;
                };
                let n = if open {
                    c.spec.vi_count.saturating_add(1).min(MAX_VIS as u8)
                } else {
                    c.spec.vi_count.saturating_sub(1).max(1)
                };
                if n == c.spec.vi_count {
                    return;
                }
                c.spec.vi_count = n;
                self.registration_seq += 1;
                let open_msg = self.open_message(&self.clients[&id]);
                self.broadcast(&Message::ClientOpen(open_msg));
                let request = if open { "open vi" } else { "free vi" };
                self.step(
                    now,
                    Step::ClientRequest515 {
                        client: id,
                        request,
                    },
                );
            }
            ClientRequest::GrowBuffer(id, windows) => {
                let Some(c) = self.clients.get_mut(&id) else {
                    return;
                };
                if windows.len() > wire::MAX_WINDOWS {
                    return;
                }
                c.windows = windows;
                if let Some(b) = c.binding.as_ref().filter(|b| b.local.is_some()) {
                    let entry = ClientEntry {
                        client: id,
                        name: c.spec.name.clone(),
                        generation: b.generation,
                        vis: b.local.clone().expect("filtered"),
                        windows: c.windows.clone(),
                        private: c.spec.private.clone(),
                    };
                    let ic = b.ic;
                    self.queue_entry(now, ic, entry);
                }
                // Standbys carry the windows too: the partner's copy is updated like a binding's.
                let c = self.clients.get_mut(&id).expect("checked");
                let mut updates = Vec::new();
                for sb in c.standbys.iter_mut().filter(|sb| sb.local.is_some()) {
                    sb.windows = c.windows.clone();
                    updates.push((
                        sb.ic,
                        ClientEntry {
                            client: id,
                            name: c.spec.name.clone(),
                            generation: sb.generation,
                            vis: sb.local.clone().expect("filtered"),
                            windows: c.windows.clone(),
                            private: c.spec.private.clone(),
                        },
                    ));
                }
                for (ic, e) in updates {
                    self.send(
                        ic.0 as usize,
                        Message::Standby(ClientInfo { entries: vec![e] }),
                    );
                }
                self.step(
                    now,
                    Step::ClientRequest515 {
                        client: id,
                        request: "grow buffer",
                    },
                );
            }
            ClientRequest::Unregister(id) => {
                if !self.clients.contains_key(&id) {
                    return;
                }
                self.drop_binding(now, id, Drop::Unregistered);
                self.clients.remove(&id);
                self.registration_seq += 1;
                let seq = self.registration_seq;
                self.broadcast(&Message::ClientClose(ClientClose { client: id, seq }));
                self.step(
                    now,
                    Step::ClientRequest515 {
                        client: id,
                        request: "unregister",
                    },
                );
            }
        }
    }

    // ----- standby bindings ----------------------------------------------------------------------

    /// The binding or the standby of `id` with `generation`.
    fn pair_mut(&mut self, id: ClientId, generation: Generation) -> Option<&mut Binding> {
        let c = self.clients.get_mut(&id)?;
        if c.binding
            .as_ref()
            .is_some_and(|b| b.generation == generation)
        {
            return c.binding.as_mut();
        }
        c.standbys.iter_mut().find(|s| s.generation == generation)
    }

    fn has_standby(&self, id: ClientId, generation: Generation, ic: InterconnectId) -> bool {
        self.clients.get(&id).is_some_and(|c| {
            c.standbys
                .iter()
                .any(|s| s.generation == generation && s.ic == ic)
        })
    }

    /// Placer: when a client whose binding went live less than `failback_hold_down` after a reset
    /// (per-client isolation: it may be erroring in a loop) may have standbys again: once that
    /// binding has run for the hold-down, so a looping client does not make and tear down standby VIs
    /// on the other links at every rebind. `None`: no wait.
    fn standby_wait(&self, c: &Client) -> Option<Time> {
        let hold = self.cfg.failback_hold_down;
        let live = c.live_since?;
        let reset = c.reset_at?;
        (live >= reset && live.saturating_since(reset) < hold).then(|| live + hold)
    }

    /// Whether link `i` is up with a protocol version that carries standbys.
    fn standby_link(&self, i: usize) -> bool {
        self.links[i]
            .up()
            .is_some_and(|u| u.version >= wire::STANDBY_VERSION)
    }

    /// A client's standby bindings: interconnect, generation, and whether it is ripe here (both
    /// ends' addresses known and this end slam connected: a promotion needs only Ready), by interconnect.
    pub fn standbys(&self, id: ClientId) -> Vec<(InterconnectId, Generation, bool)> {
        self.clients.get(&id).map_or_else(Vec::new, |c| {
            c.standbys
                .iter()
                .map(|s| (s.ic, s.generation, s.slammed && s.remote.is_some()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
    }

    /// Placer: a standby binding for every client whose binding is live, on every other up
    /// interconnect that speaks standbys and has none for it yet (never during a bring-up: only
    /// once the binding went live).
    fn ensure_standbys(&mut self, now: Time) {
        if !self.cfg.is_placer() || !matches!(self.partner, Partner::Up { .. }) {
            return;
        }
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            for i in 0..self.links.len() {
                let ic = self.links[i].id;
                let c = &self.clients[&id];
                let Some(b) = c.binding.as_ref().filter(|b| b.live) else {
                    break;
                };
                if b.ic == ic
                    || !self.standby_link(i)
                    || c.standby_retry_at.is_some_and(|t| t > now)
                    || self.standby_wait(c).is_some_and(|t| t > now)
                    || c.standbys.iter().any(|s| s.ic == ic)
                {
                    continue;
                }
                let count = b.vi_count;
                let generation = Generation(self.next_generation);
                self.next_generation += 1;
                self.add_standby(now, id, ic, generation, count, None);
            }
        }
    }

    /// A standby binding of `id` on `ic` (the partner's end `remote` if known): its VIs are made (420).
    fn add_standby(
        &mut self,
        now: Time,
        id: ClientId,
        ic: InterconnectId,
        generation: Generation,
        count: u8,
        remote: Option<ClientEntry>,
    ) {
        let c = self.clients.get_mut(&id).expect("registered");
        c.standbys.push(Binding {
            generation,
            ic,
            vi_count: count,
            local: None,
            remote,
            connected: false,
            slammed: false,
            partner_ready: false,
            live: false,
            windows: Vec::new(),
        });
        self.push(Action::CreateClientVis {
            client: id,
            ic,
            generation,
            count,
        });
        self.step(
            now,
            Step::Standby {
                client: id,
                ic,
                generation,
            },
        );
    }

    /// Follower: the placer made a standby of `e.generation` on link `i`: make this end (it is
    /// slam connected once created, and its addresses go back in a `Standby` message). Stale
    /// entries (not above the binding's generation, or older than the standby already held on that
    /// link) are ignored: the placer never promotes a standby it has not heard back about.
    fn accept_standby(&mut self, now: Time, i: usize, e: ClientEntry) {
        let ic = self.links[i].id;
        let id = e.client;
        let generation = e.generation;
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        let stale = self
            .last_generation
            .get(&id)
            .is_some_and(|g| generation <= *g)
            || c.binding
                .as_ref()
                .is_some_and(|b| generation <= b.generation)
            || c.standbys
                .iter()
                .any(|s| s.ic == ic && s.generation >= generation);
        if stale || !self.standby_link(i) {
            return;
        }
        let older: Vec<Generation> = c
            .standbys
            .iter()
            .filter(|s| s.ic == ic)
            .map(|s| s.generation)
            .collect();
        for g in older {
            self.drop_standby(now, id, g, false);
        }
        let count = e.vis.len() as u8;
        self.add_standby(now, id, ic, generation, count, Some(e));
    }

    /// A standby's VIs are made: its addresses go to the partner on its link, then slam connect.
    #[allow(clippy::too_many_arguments)]
    fn standby_created(
        &mut self,
        now: Time,
        id: ClientId,
        generation: Generation,
        ic: InterconnectId,
        count: u8,
        vis: Vec<ViAddress>,
        windows: Vec<MemoryWindow>,
    ) {
        if vis.len() != count as usize || vis.iter().any(|v| v.interconnect != ic) {
            // Not what was asked: the VIs are released with the standby.
            if let Some(s) = self.pair_mut(id, generation) {
                s.local = Some(vis);
            }
            return self.standby_failed(now, id, generation, true);
        }
        let c = self.clients.get_mut(&id).expect("checked by the caller");
        let name = c.spec.name.clone();
        let private = c.spec.private.clone();
        let s = c
            .standbys
            .iter_mut()
            .find(|s| s.generation == generation)
            .expect("checked by the caller");
        s.local = Some(vis.clone());
        s.windows = windows.clone();
        let entry = ClientEntry {
            client: id,
            name,
            generation,
            vis,
            windows,
            private,
        };
        self.send(
            ic.0 as usize,
            Message::Standby(ClientInfo {
                entries: vec![entry],
            }),
        );
        self.try_connect(id, generation);
    }

    /// A standby failed (a VI error here, `local`, or the partner's [`ClientReset`] for it): it goes
    /// on both sides, and the placer makes none for this client for `client_backoff_max`, so a sick
    /// device cannot cause a creation storm. The client's binding is untouched.
    fn standby_failed(&mut self, now: Time, id: ClientId, generation: Generation, local: bool) {
        self.drop_standby(now, id, generation, local);
        let after = self.cfg.client_backoff_max;
        if self.cfg.is_placer() {
            if let Some(c) = self.clients.get_mut(&id) {
                c.standby_retry_at = Some(now + after);
            }
        }
    }

    /// Drops one standby, releasing its VIs; `tell` the partner (a [`ClientReset`] of its
    /// generation) when only this side knows it failed.
    fn drop_standby(&mut self, now: Time, id: ClientId, generation: Generation, tell: bool) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let Some(k) = c.standbys.iter().position(|s| s.generation == generation) else {
            return;
        };
        let s = c.standbys.remove(k);
        if s.local.is_some() {
            self.push(Action::ReleaseClientVis {
                client: id,
                ic: s.ic,
                generation,
            });
            self.step(
                now,
                Step::Release525 {
                    client: id,
                    ic: s.ic,
                },
            );
        }
        let i = s.ic.0 as usize;
        if tell && self.links[i].up().is_some() {
            self.send(
                i,
                Message::ClientReset(ClientReset {
                    client: id,
                    generation,
                }),
            );
        }
    }

    /// Drops every standby of `id` older than `below`. Both sides apply it when a binding
    /// generation becomes the client's (a new bind, a promotion), so they agree on the standbys left
    /// without a message: every standby is newer than the binding.
    fn retire_standbys(&mut self, now: Time, id: ClientId, below: Generation) {
        let old: Vec<Generation> = self.clients.get(&id).map_or_else(Vec::new, |c| {
            c.standbys
                .iter()
                .filter(|s| s.generation < below)
                .map(|s| s.generation)
                .collect()
        });
        for g in old {
            self.drop_standby(now, id, g, false);
        }
    }

    /// Placer: the ripe standby `k` becomes the binding (the caller dropped the old one). Its end is
    /// connected, so Ready (440) goes at once; the client goes on the partner's Ready, which the
    /// follower sends once its end is connected too. A partner that lost the standby meanwhile
    /// answers [`ClientReset`] (or its link fails), and the client is bound again.
    fn promote(&mut self, now: Time, id: ClientId, k: usize) {
        let (ic, generation, _) = self.adopt_standby(now, id, k, false);
        self.send_ready(
            now,
            ic.0 as usize,
            vec![ClientRef {
                client: id,
                generation,
            }],
        );
    }

    /// Standby `k` of `id` becomes its binding (both sides of a promotion): the older standbys go, the
    /// client gets the partner's entry, and the step is logged. `partner_ready`: the partner's Ready is
    /// already in (the follower promotes on it). Returns its interconnect, generation and whether this
    /// end is slam connected.
    fn adopt_standby(
        &mut self,
        now: Time,
        id: ClientId,
        k: usize,
        partner_ready: bool,
    ) -> (InterconnectId, Generation, bool) {
        let c = self.clients.get_mut(&id).expect("registered");
        let mut s = c.standbys.remove(k);
        s.partner_ready |= partner_ready;
        let (ic, generation, slammed) = (s.ic, s.generation, s.slammed);
        let remote = s
            .remote
            .clone()
            .expect("a promoted standby knows the partner's VIs");
        c.windows = s.windows.clone();
        c.bound_at = Some(now);
        c.binding = Some(s);
        self.retire_standbys(now, id, generation);
        self.tell(id, ClientEvent::PartnerInfo(remote));
        self.step(
            now,
            Step::Promote {
                client: id,
                ic,
                generation,
            },
        );
        (ic, generation, slammed)
    }

    /// Follower: the placer's Ready for a generation that is not our binding. A standby of it on
    /// that link becomes the binding (the old one stops), and our Ready answers once our end is
    /// connected. A newer generation we do not hold is answered with [`ClientReset`], so the
    /// placer binds the pair again instead of waiting; an older one is stale.
    fn follow_promotion(&mut self, now: Time, ic: InterconnectId, r: ClientRef) {
        let (id, generation) = (r.client, r.generation);
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        let i = ic.0 as usize;
        let Some(k) = c
            .standbys
            .iter()
            .position(|s| s.generation == generation && s.ic == ic)
        else {
            let newer = self
                .last_generation
                .get(&id)
                .is_none_or(|g| generation > *g)
                && c.binding.as_ref().is_none_or(|b| generation > b.generation);
            if newer {
                self.send(
                    i,
                    Message::ClientReset(ClientReset {
                        client: id,
                        generation,
                    }),
                );
            }
            return;
        };
        self.last_generation.insert(id, generation);
        self.drop_binding(now, id, Drop::Stop);
        let (_, _, slammed) = self.adopt_standby(now, id, k, true);
        if slammed {
            self.send_ready(
                now,
                i,
                vec![ClientRef {
                    client: id,
                    generation,
                }],
            );
            self.go(now, id);
        }
        // Else `on_vis_connected` sends Ready and goes (the placer's Ready is in).
    }

    // ----- placement (placer only) -------------------------------------------------------------

    fn place(&mut self, now: Time) {
        if !self.cfg.is_placer() || !matches!(self.partner, Partner::Up { .. }) {
            return;
        }
        if self.homes.0 != self.registration_seq {
            let needs: Vec<ClientNeeds> = self
                .clients
                .values()
                .map(|c| ClientNeeds {
                    client: c.spec.id,
                    class: c.spec.class,
                    pinned: c.spec.pinned,
                })
                .collect();
            self.homes = (
                self.registration_seq,
                placement::home_links(&needs, self.links.len()),
            );
        }
        let mut views: Vec<LinkView> = self
            .links
            .iter()
            .map(|l| LinkView {
                id: l.id,
                healthy: l.up().is_some(),
                healthy_since: l.healthy_since,
                load: 0,
            })
            .collect();
        let measuring = self.measuring();
        for c in self.clients.values() {
            if let Some(b) = &c.binding {
                let i = b.ic.0 as usize;
                views[i].load = views[i].load.saturating_add(self.load_of(c, i, measuring));
            }
        }
        // Only clients that may need a move are looked at below: unbound ones, ones away from their
        // placement or with another VI count, and ones leaving a reset. (Most of the time: none.)
        let ids: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(id, c)| {
                let Some((_, Some(open))) = self.partner_clients.get(id) else {
                    return false;
                };
                c.retry_at.is_some()
                    || c.prefer.is_some()
                    || c.binding.as_ref().is_none_or(|b| {
                        let home = c
                            .placed
                            .filter(|p| {
                                c.spec.pinned.is_none() && (p.0 as usize) < self.links.len()
                            })
                            .unwrap_or(self.homes.1[id]);
                        b.vi_count != c.spec.vi_count.max(open.vi_count) || b.ic != home
                    })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some((_, Some(open))) = self.partner_clients.get(&id) else {
                continue;
            };
            let c = self.clients.get_mut(&id).expect("registered");
            if c.retry_at.is_some_and(|t| t > now) {
                continue; // client back-off after a reset
            }
            c.retry_at = None;
            let prefer = c.prefer.take();
            let c = &self.clients[&id];
            let want = c.spec.vi_count.max(open.vi_count);
            // Where the client belongs: its static home (Fig. 8), or where the balancer moved it.
            let home = c
                .placed
                .filter(|p| c.spec.pinned.is_none() && (p.0 as usize) < self.links.len())
                .unwrap_or(self.homes.1[&id]);
            let hold_down = self.cfg.failback_hold_down;
            // Decide first, act after: (target, current interconnect if moving).
            let (to, from) = match &c.binding {
                // After a client reset: the same interconnect while it is healthy.
                None if prefer.is_some_and(|p| views[p.0 as usize].healthy) => {
                    (prefer.expect("checked"), None)
                }
                // Bring-up: the home is still coming up, so the client waits for it a little.
                None if !views[home.0 as usize].healthy && self.home_coming_up(home, now) => {
                    continue
                }
                None => match placement::choose_link(home, &views) {
                    Some(to) => (to, None),
                    None => continue,
                },
                Some(b) if b.vi_count != want => (b.ic, Some(b.ic)),
                Some(b)
                    if b.live
                        && placement::should_fail_back(b.ic, home, &views, now, hold_down) =>
                {
                    (home, Some(b.ic))
                }
                Some(_) => continue,
            };
            match from {
                Some(from) => {
                    if from != to {
                        self.step(
                            now,
                            Step::Failback {
                                client: id,
                                from,
                                home,
                            },
                        );
                    }
                    let f = from.0 as usize;
                    let l = self.load_of(&self.clients[&id], f, measuring);
                    views[f].load = views[f].load.saturating_sub(l);
                    self.drop_binding(now, id, Drop::Stop);
                }
                None if to != home && prefer != Some(to) => self.step(
                    now,
                    Step::Failover {
                        client: id,
                        home,
                        to,
                    },
                ),
                None => {}
            }
            let t = to.0 as usize;
            let l = self.load_of(&self.clients[&id], t, measuring);
            views[t].load = views[t].load.saturating_add(l);
            self.bind(now, id, to, want);
        }
        if measuring {
            self.balance(now);
        }
    }

    /// Whether an unplaced client should wait for its home `ic`: its port is up (it is still
    /// connecting or handshaking, or its device is not open yet) and its grace has not ended
    /// ([`home_grace_end`](Self::home_grace_end)).
    fn home_coming_up(&self, ic: InterconnectId, now: Time) -> bool {
        let l = &self.links[ic.0 as usize];
        l.port_up
            && !matches!(l.phase, Phase::PortDown)
            && self.home_grace_end(l).is_some_and(|t| now < t)
    }

    /// When clients stop waiting for home `l` at bring-up: `home_grace` after the partner became
    /// reachable or after `l`'s device was opened (its port reported), whichever is later. Up to four
    /// graces after the partner became reachable while `l` is known to be on its way: our device is
    /// not open yet, or a session was established on `l` (the partner's process answered there) and
    /// its end is still coming up: handshakes time out and start again until it is. (Each node opens
    /// the devices after the first one once the first heartbeat arrived; with 64 clients registering,
    /// the partner's second device took 110-150 ms to open in the lab guest, and a single grace ran out
    /// on a link that came up 20-40 ms later.)
    fn home_grace_end(&self, l: &Link) -> Option<Time> {
        let partner = self.partner_up_at?;
        let longest = partner + self.cfg.home_grace * 4;
        Some(match l.port_known_at {
            None => longest,
            Some(known) if l.first_session_at.is_some() => {
                longest.max(partner.max(known) + self.cfg.home_grace)
            }
            Some(known) => partner.max(known) + self.cfg.home_grace,
        })
    }

    /// A new binding (generation) of `id` on `to` with `vi_count` VIs: 420 starts.
    /// A ripe standby on `to` (both ends made, this end slam connected, the partner's addresses
    /// known) is promoted instead: no 420-435 on the path.
    fn bind(&mut self, now: Time, id: ClientId, to: InterconnectId, vi_count: u8) {
        let ripe = self.clients[&id]
            .standbys
            .iter()
            .position(|s| s.ic == to && s.vi_count == vi_count && s.slammed && s.remote.is_some());
        if let Some(k) = ripe {
            return self.promote(now, id, k);
        }
        let generation = Generation(self.next_generation);
        self.next_generation += 1;
        // Every standby is older than the new binding: gone (the partner retires them when the
        // new generation's ClientInfo arrives).
        self.retire_standbys(now, id, generation);
        let c = self.clients.get_mut(&id).expect("registered");
        c.bound_at = Some(now);
        c.binding = Some(Binding {
            generation,
            ic: to,
            vi_count,
            local: None,
            remote: None,
            connected: false,
            slammed: false,
            partner_ready: false,
            live: false,
            windows: Vec::new(),
        });
        self.create_vis(now, to.0 as usize, id, generation, vi_count);
    }

    /// Whether any client has measurements in its window (else placement uses class weights).
    fn measuring(&self) -> bool {
        let window = self.cfg.balance_window;
        self.clients.values().any(|c| {
            c.samples
                .back()
                .is_some_and(|(t, _)| self.now.saturating_since(*t) < window)
        })
    }

    /// What client `c` adds to the load of link `i` as [`LinkView::load`] counts it.
    fn load_of(&self, c: &Client, i: usize, measuring: bool) -> u64 {
        if measuring {
            placement::utilisation_permille(self.rate(c), self.cfg.capacity_of(i))
        } else {
            placement::weight(c.spec.class)
        }
    }

    /// A client's measured rate in bytes/s over the window (samples from both nodes on the placer).
    fn rate(&self, c: &Client) -> u64 {
        let window = self.cfg.balance_window;
        let bytes: u128 = c
            .samples
            .iter()
            .filter(|(t, _)| self.now.saturating_since(*t) < window)
            .map(|(_, b)| u128::from(*b))
            .sum();
        (bytes * 1_000_000_000 / window.as_nanos().max(1)).min(u128::from(u64::MAX)) as u64
    }

    /// Adds measured bytes of the sampling period ending `now` to the clients' windows.
    fn add_samples(&mut self, now: Time, samples: &[ClientLoad]) {
        let window = self.cfg.balance_window;
        for s in samples {
            if let Some(c) = self.clients.get_mut(&s.client) {
                c.samples.push_back((now, s.bytes));
            }
        }
        for c in self.clients.values_mut() {
            while c
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_since(*t) >= window)
            {
                c.samples.pop_front();
            }
        }
    }

    /// Adaptive balancing (placer): at most one migration per `balance_period`, planned by
    /// [`placement::plan_migration`] over the measured rates, carried out like a failback: Stop,
    /// release, a new generation on the target, Resumed.
    fn balance(&mut self, now: Time) {
        if self
            .last_migration
            .is_some_and(|t| now.saturating_since(t) < self.cfg.balance_period)
        {
            return;
        }
        let hold_down = self.cfg.failback_hold_down;
        let links: Vec<LinkLoad> = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkLoad {
                id: l.id,
                target: l.up().is_some() && now.saturating_since(l.healthy_since) >= hold_down,
                capacity: self.cfg.capacity_of(i),
            })
            .collect();
        let dwell = self.cfg.balance_dwell;
        // A client in its reset back-off still counts on the link it returns to.
        let clients: Vec<LoadedClient> = self
            .clients
            .values()
            .filter_map(|c| {
                let (link, live) = match (&c.binding, c.prefer) {
                    (Some(b), _) => (b.ic, b.live),
                    (None, Some(p)) => (p, false),
                    (None, None) => return None,
                };
                Some(LoadedClient {
                    client: c.spec.id,
                    link,
                    rate: self.rate(c),
                    movable: c.spec.pinned.is_none()
                        && live
                        && c.bound_at.is_some_and(|t| now.saturating_since(t) >= dwell),
                })
            })
            .collect();
        let w = Watermarks {
            high: self.cfg.balance_high_permille,
            low: self.cfg.balance_low_permille,
        };
        let Some(m) = placement::plan_migration(&clients, &links, w) else {
            return;
        };
        self.last_migration = Some(now);
        self.step(
            now,
            Step::Migrate {
                client: m.client,
                from: m.from,
                to: m.to,
                from_permille: m.from_permille,
                to_permille: m.to_permille,
            },
        );
        let c = self
            .clients
            .get_mut(&m.client)
            .expect("planned from clients");
        c.placed = Some(m.to);
        let want = c.binding.as_ref().map_or(c.spec.vi_count, |b| b.vi_count);
        self.drop_binding(now, m.client, Drop::Stop);
        self.bind(now, m.client, m.to, want);
    }

    /// Measured utilisation of every interconnect: (bytes/s of the clients bound on it, capacity).
    pub fn link_load(&self) -> Vec<(u64, u64)> {
        (0..self.links.len())
            .map(|i| {
                let ic = self.links[i].id;
                let rate = self
                    .clients
                    .values()
                    .filter(|c| c.binding.as_ref().is_some_and(|b| b.ic == ic))
                    .map(|c| self.rate(c))
                    .fold(0u64, u64::saturating_add);
                (rate, self.cfg.capacity_of(i))
            })
            .collect()
    }

    /// A client's measured rate in bytes/s over the balance window (on the placer both nodes'
    /// samples, on the follower its own); `None` if not registered.
    pub fn client_rate(&self, id: ClientId) -> Option<u64> {
        self.clients.get(&id).map(|c| self.rate(c))
    }

    /// 425/440: send each link's pending batch once no creation is outstanding on it, or when the
    /// batch window ends.
    fn flush_batches(&mut self, now: Time) {
        for i in 0..self.links.len() {
            let ic = self.links[i].id;
            let Some(u) = self.links[i].up() else {
                continue;
            };
            let Some(deadline) = u.batch_deadline else {
                continue;
            };
            // A creation still outstanding on this link holds the ClientInfo batch back, and a creation or
            // slam connect the Ready batch (until the window ends), so a bring-up sends one ClientInfo and
            // one Ready, not one per client. A slam connect never holds back ClientInfo: the partner
            // waits for those addresses to slam connect its own end, and both ends then connect at once
            // (on a failover the answering node's ClientInfo would otherwise wait for its own slam connect).
            let (creating, slamming) =
                self.clients
                    .values()
                    .fold((false, false), |(creating, slamming), c| {
                        let b = c.binding.as_ref().filter(|b| b.ic == ic);
                        (
                            creating || b.is_some_and(|b| b.local.is_none()),
                            slamming || b.is_some_and(|b| b.connected && !b.slammed),
                        )
                    });
            let late = now >= deadline;
            let send_info = !creating || late;
            let send_ready = !(creating || slamming) || late;
            if !send_info && !send_ready {
                continue;
            }
            let u = self.links[i].up_mut().expect("checked");
            let info = if send_info {
                std::mem::take(&mut u.out_info)
            } else {
                Vec::new()
            };
            let ready = if send_ready {
                std::mem::take(&mut u.out_ready)
            } else {
                Vec::new()
            };
            if send_ready {
                u.batch_deadline = None;
            }
            if !info.is_empty() {
                self.step(
                    now,
                    Step::SendBatch425 {
                        ic,
                        clients: info.len(),
                    },
                );
                self.send(i, Message::ClientInfo(ClientInfo { entries: info }));
            }
            self.send_ready(now, i, ready);
        }
    }

    fn send_ready(&mut self, now: Time, i: usize, ready: Vec<ClientRef>) {
        if ready.is_empty() {
            return;
        }
        let ic = self.links[i].id;
        self.step(
            now,
            Step::SendReady440 {
                ic,
                clients: ready.len(),
            },
        );
        self.send(i, Message::Ready(Ready { clients: ready }));
    }
}
