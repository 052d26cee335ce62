//! The control protocol between the two cluster connection managers of an HA pair.
//!
//! Every message travels as one *frame*: a fixed 12-byte header followed by a payload.
//! All integers are little-endian.
//!
//! ```text
//!  0      4        5      6        8              12
//!  +------+--------+------+--------+--------------+--------------------+
//!  | CCMP | wirever| type | flags  | payload len  | payload (len bytes) |
//!  +------+--------+------+--------+--------------+--------------------+
//!   magic    u8      u8     u16 = 0      u32
//! ```
//!
//! * `magic` is the four bytes `b"CCMP"`; anything else is refused before the rest is looked at.
//! * `wirever` is the version of the *framing and encoding* ([`WIRE_VERSION`]). It is frozen for the
//!   life of the protocol; the *protocol* version is negotiated in [`Hello`] (a range on each side,
//!   the highest common value wins), so a newer manager can still refuse an older one with a typed
//!   [`ErrorCode::IncompatibleVersion`] instead of a decode failure.
//! * `flags` is reserved and must be zero.
//! * `payload len` is at most [`MAX_PAYLOAD`]; the payload must be consumed exactly (no trailing bytes).
//!
//! Variable-length parts are a count followed by the items. Every count is checked against both a
//! per-field limit and the bytes actually remaining *before* anything is allocated, so hostile input
//! can neither panic the decoder nor make it allocate more than the frame it was given.
//!
//! The message set follows the patent's Figs. 4 and 5:
//!
//! | message | step | meaning |
//! | --- | --- | --- |
//! | [`Hello`] | 415 | version range, features, node / cluster identity, incarnation, session nonce |
//! | [`AuthChallenge`] | 415 | a fresh random challenge for the partner to prove the cluster secret |
//! | [`AuthResponse`] | 415 | HMAC-SHA256 over the challenge and both hello nonces (see [`crate::auth`]) |
//! | [`PeerInfo`] | 415 | the manager's own control VI address and memory windows |
//! | [`ClientOpen`] / [`ClientClose`] | 510/515 | a client registered / unregistered on the sender |
//! | [`ClientInfo`] | 425 | one batch of client VI addresses and memory windows; from protocol version [`CLIENT_PRIVATE_VERSION`] also each client's private data, after all entries, when any client has some |
//! | `Standby` (a [`ClientInfo`] payload) | 420-435 ahead of time | VI addresses of *standby* bindings: a client pair's VIs made and slam connected on another interconnect while it runs, so a failover there needs only a [`Ready`] exchange (protocol version [`STANDBY_VERSION`]) |
//! | [`Ready`] | 440 | the sender has slam connected the listed client VIs |
//! | [`Heartbeat`] | link monitor | liveness of the interconnect's control channel |
//! | [`Stop`] / [`Resume`] | 520/530 | an interconnect failed / came back, told over another interconnect |
//! | [`ClientReset`] | 520/525 for one client | one client pair's binding failed (a VI error on a healthy link): drop that generation |
//! | [`LoadReport`] | adaptive balancing | bytes each of the sender's clients posted in the last sampling period, for the placer |
//! | [`Error`](struct@Error) | 415 | a typed refusal (version, cluster, authentication, protocol) before closing |
//!
//! Outside the framed stream, one datagram: the follower's [`Knock`] (its listener is bound; see there).
//!
//! Order of step 415 on each side's stream, the same since protocol version 1: `Hello`,
//! `AuthChallenge`, `AuthResponse`, `PeerInfo`. A receiver takes a challenge or a response only after
//! the Hello, and a PeerInfo only after it verified the response. Since 2026-11-30 a manager sends its
//! challenge together with its Hello and its PeerInfo right after its response (two one-way trips
//! instead of four, see [`crate::manager`]); a version-1 manager that waits for the partner's Hello
//! and verification before sending them accepts this order unchanged, and the encoding did not change,
//! so the protocol version stays 1.

use thiserror::Error;

/// The four magic bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"CCMP";
/// Version of the framing and encoding (not the negotiated protocol version).
pub const WIRE_VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// Largest accepted payload. A [`ClientInfo`] batch for 64 clients with 4 VIs and 4 windows each is
/// about 13 KiB, so this leaves a wide margin while bounding what a hostile peer can make us buffer.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Longest client name in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest error text in bytes.
pub const MAX_TEXT_LEN: usize = 512;
/// Most entries in one [`ClientInfo`] or [`Ready`] batch.
pub const MAX_CLIENTS: usize = 1024;
/// Most VIs of one client, or memory windows of one client / manager.
pub const MAX_VIS: usize = 64;
/// Most memory windows in one list.
pub const MAX_WINDOWS: usize = 64;
/// Most bytes of a client's private data ([`ClientEntry::private`]).
pub const MAX_PRIVATE: usize = 64;
/// The first protocol version whose [`ClientInfo`] and `Standby` messages may carry the clients' private
/// data ([`ClientEntry::private`]). A manager sends private data only on a session whose negotiated
/// version is at least this, so an older partner, whose decoder refuses the extra bytes, never sees it.
pub const CLIENT_PRIVATE_VERSION: ProtocolVersion = 3;
/// The first protocol version with the `Standby` message (type 15). A manager sends it only on a
/// session whose negotiated version is at least this, so an older partner never sees it.
pub const STANDBY_VERSION: ProtocolVersion = 2;
/// Largest queue pair number / packet sequence number (24 bits in InfiniBand and RoCE).
pub const MAX_QPN: u32 = 0x00FF_FFFF;

/// A protocol version as negotiated in [`Hello`].
pub type ProtocolVersion = u16;

/// Identity of a node (a controller) of the HA pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// Identity of the cluster (the HA pair); a partner with another cluster id is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClusterId(pub u64);

/// Identity of a client; the same id names the peer clients on the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClientId(pub u32);

/// Index of an interconnect (a device + port pair, the same index on both nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct InterconnectId(pub u8);

/// A binding generation, chosen by the placing manager; monotonic per client within one incarnation
/// of the placing manager. Messages about an older generation are stale and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation(pub u64);

/// Path MTU of a VI, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mtu {
    /// 256 bytes.
    M256,
    /// 512 bytes.
    M512,
    /// 1024 bytes (the lab's active MTU on 1500-byte veths).
    M1024,
    /// 2048 bytes.
    M2048,
    /// 4096 bytes.
    M4096,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> u16 {
        match self {
            Mtu::M256 => 256,
            Mtu::M512 => 512,
            Mtu::M1024 => 1024,
            Mtu::M2048 => 2048,
            Mtu::M4096 => 4096,
        }
    }

    /// The MTU for a byte count, if it is one of the five InfiniBand MTUs.
    pub fn from_bytes(b: u16) -> Option<Mtu> {
        Some(match b {
            256 => Mtu::M256,
            512 => Mtu::M512,
            1024 => Mtu::M1024,
            2048 => Mtu::M2048,
            4096 => Mtu::M4096,
            _ => return None,
        })
    }
}

/// Everything the partner needs to slam connect to one VI (an RC queue pair): no connect
/// request/response is exchanged, the partner moves its own VI straight to RTR/RTS with these values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViAddress {
    /// The interconnect the VI lives on.
    pub interconnect: InterconnectId,
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// Port GID (RoCE v2: the IPv4-mapped GID of the interconnect's address).
    pub gid: [u8; 16],
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// Path MTU.
    pub mtu: Mtu,
}

/// A registered memory region the partner may access with RDMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryWindow {
    /// Remote virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

/// Bandwidth class of a client, used for placement (Fig. 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BandwidthClass {
    /// Shares an interconnect with other low-bandwidth clients (heartbeat, configuration, ...).
    Low,
    /// Gets an interconnect of its own when there is one (the NVRAM mirror).
    High,
}

/// Step 415, first flight: who I am and what I speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: ProtocolVersion,
    /// Highest protocol version the sender speaks.
    pub max_version: ProtocolVersion,
    /// Feature bits the sender supports.
    pub features: u64,
    /// The sender's node id.
    pub node: NodeId,
    /// The cluster the sender belongs to.
    pub cluster: ClusterId,
    /// Random per manager start: a changed incarnation means the partner restarted.
    pub incarnation: u64,
    /// Random per session; binds the authentication to this session.
    pub nonce: [u8; 32],
}

/// Step 415: a fresh challenge the receiver must answer with an [`AuthResponse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthChallenge {
    /// 32 random bytes.
    pub challenge: [u8; 32],
}

/// Step 415: proof of the cluster secret, `HMAC-SHA256(secret, transcript)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResponse {
    /// The MAC.
    pub mac: [u8; 32],
}

/// Step 415: the manager's own control VI and memory windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The manager's control VI on this interconnect.
    pub control_vi: ViAddress,
    /// Memory windows of the manager itself.
    pub windows: Vec<MemoryWindow>,
}

/// One client's VIs and memory windows for one binding generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// The client.
    pub client: ClientId,
    /// Its name (diagnostics; the id is authoritative).
    pub name: String,
    /// The binding generation these VIs belong to.
    pub generation: Generation,
    /// The client's VIs, in pairing order: the i-th VI of one side connects to the i-th of the other.
    pub vis: Vec<ViAddress>,
    /// The client's memory windows.
    pub windows: Vec<MemoryWindow>,
    /// The client's *private data* (at most [`MAX_PRIVATE`] bytes; protocol version
    /// [`CLIENT_PRIVATE_VERSION`]): opaque to the managers, as rdma_cm's private data is, and handed to the
    /// partner's peer client with its `Ready`, so that two peer clients can check what they speak (the
    /// NVRAM mirror: its entry formats) before either writes a byte. Empty from a partner of an older
    /// protocol version.
    pub private: Vec<u8>,
}

/// Step 425: a batch of client VI addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The entries.
    pub entries: Vec<ClientEntry>,
}

/// A (client, generation) pair named in a [`Ready`] batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientRef {
    /// The client.
    pub client: ClientId,
    /// The generation whose VIs the sender slam connected.
    pub generation: Generation,
}

/// Step 440: the sender has slam connected these clients' VIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The clients.
    pub clients: Vec<ClientRef>,
}

/// Step 510/515: a client registered (or changed its needs) on the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOpen {
    /// The client.
    pub client: ClientId,
    /// Its name.
    pub name: String,
    /// Its bandwidth class.
    pub class: BandwidthClass,
    /// How many VIs it wants.
    pub vi_count: u8,
    /// Registration sequence number of the sender; a higher one supersedes.
    pub seq: u64,
}

/// Step 510/515: a client unregistered on the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClose {
    /// The client.
    pub client: ClientId,
    /// Registration sequence number of the sender; a higher one supersedes.
    pub seq: u64,
}

/// Link monitor: sent every heartbeat period on each interconnect's control channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sequence number, per session.
    pub seq: u64,
    /// Sender's clock in nanoseconds (for diagnostics; clocks are not compared).
    pub time_ns: u64,
}

/// The follower's *knock*: one UDP datagram to the placer's interconnect address and TCP port, sent
/// as soon as the follower's listener there is bound, so that a placer waiting out its reconnect
/// back-off (the follower was down or restarting) connects at once instead of up to `backoff_max`
/// later. Outside the framed protocol and unauthenticated: it carries no more than who is knocking,
/// and all it can do is bring the placer's next connect forward ([`crate::manager::Input::PartnerListening`]).
/// A placer that does not know it ignores it (nothing listens there), a follower that does not send
/// it leaves the placer to its back-off: no protocol version depends on it.
///
/// ```text
///  0      4            12           20
///  | CCMK | cluster u64 | node u64  |
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knock {
    /// The knocker's cluster.
    pub cluster: ClusterId,
    /// The knocker (the follower).
    pub node: NodeId,
}

impl Knock {
    /// The four bytes that start a knock.
    pub const MAGIC: [u8; 4] = *b"CCMK";
    /// A knock's size in bytes.
    pub const LEN: usize = 20;

    /// The datagram.
    pub fn to_bytes(&self) -> [u8; Knock::LEN] {
        let mut b = [0u8; Knock::LEN];
        b[..4].copy_from_slice(&Knock::MAGIC);
        b[4..12].copy_from_slice(&self.cluster.0.to_le_bytes());
        b[12..].copy_from_slice(&self.node.0.to_le_bytes());
        b
    }

    /// A received datagram: exactly [`Knock::LEN`] bytes starting with [`Knock::MAGIC`].
    pub fn decode(b: &[u8]) -> Result<Knock, DecodeError> {
        if b.len() < Knock::LEN {
            return Err(DecodeError::Truncated { field: "knock" });
        }
        if b.len() > Knock::LEN {
            return Err(DecodeError::TrailingBytes(b.len() - Knock::LEN));
        }
        let magic: [u8; 4] = b[..4].try_into().expect("length checked");
        if magic != Knock::MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let word =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Ok(Knock {
            cluster: ClusterId(word(4..12)),
            node: NodeId(word(12..20)),
        })
    }
}

/// Step 520, told over a surviving interconnect: the sender saw `interconnect` fail (port down, async
/// event, VI error); the receiver fails it too without waiting for missed heartbeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// The failed interconnect.
    pub interconnect: InterconnectId,
    /// Tag of the failed session (see [`crate::auth::session_tag`]); a Stop for an older session is ignored.
    pub session_tag: u64,
}

/// Per-client isolation: the sender dropped this client's binding of `generation` after a VI error
/// on an otherwise healthy interconnect. The receiver drops the same generation (its client is told
/// Stop); the placer then rebinds the pair after the client's back-off. Ignored for any other
/// generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientReset {
    /// The client pair.
    pub client: ClientId,
    /// The generation that failed.
    pub generation: Generation,
}

/// One client's measured rate in a [`LoadReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLoad {
    /// The client.
    pub client: ClientId,
    /// Bytes the sender's side of the client posted since its previous report (one sampling period).
    pub bytes: u64,
}

/// Adaptive balancing: the follower's measurements, sent each sampling period to the placer, which
/// adds them to its own samples of the same clients (a client pair's load is what both sides post).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// One entry per client with a measurement.
    pub clients: Vec<ClientLoad>,
}

/// Step 530, told over a surviving interconnect: `interconnect` is usable again on the sender's side,
/// so the receiver may retry its initial session now instead of waiting out its back-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The interconnect.
    pub interconnect: InterconnectId,
}

/// Typed error codes carried by [`Error`](struct@Error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No common protocol version.
    IncompatibleVersion,
    /// The partner belongs to another cluster.
    ForeignCluster,
    /// The partner failed the challenge-response (wrong cluster secret).
    AuthenticationFailed,
    /// The partner is not the configured partner node (or has our own node id).
    UnexpectedNode,
    /// A message arrived that is not allowed in the current state.
    Protocol,
    /// Bytes that do not decode.
    Malformed,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::ForeignCluster => 2,
            ErrorCode::AuthenticationFailed => 3,
            ErrorCode::UnexpectedNode => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::Malformed => 6,
            ErrorCode::Unknown(c) => c,
        }
    }
    fn from_u16(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::ForeignCluster,
            3 => ErrorCode::AuthenticationFailed,
            4 => ErrorCode::UnexpectedNode,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::Malformed,
            c => ErrorCode::Unknown(c),
        }
    }
}

/// A typed refusal, sent before the sender closes the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub text: String,
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`AuthChallenge`].
    AuthChallenge(AuthChallenge),
    /// See [`AuthResponse`].
    AuthResponse(AuthResponse),
    /// See [`PeerInfo`].
    PeerInfo(PeerInfo),
    /// See [`ClientInfo`].
    ClientInfo(ClientInfo),
    /// See [`Ready`].
    Ready(Ready),
    /// See [`ClientOpen`].
    ClientOpen(ClientOpen),
    /// See [`ClientClose`].
    ClientClose(ClientClose),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Stop`].
    Stop(Stop),
    /// See [`Resume`].
    Resume(Resume),
    /// See [`ClientReset`].
    ClientReset(ClientReset),
    /// See [`LoadReport`].
    LoadReport(LoadReport),
    /// Standby bindings (protocol version [`STANDBY_VERSION`]): per client, the VI addresses and
    /// windows of a binding generation made ahead of time on the interconnect the message travels on.
    /// Same layout and limits as [`ClientInfo`]; see the manager's module docs for the protocol.
    Standby(ClientInfo),
    /// See [`Error`](struct@Error).
    Error(Error),
}

/// Why bytes did not decode. Decoding never panics; every malformed input maps to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the announced payload; `needed` more are required.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes the frame needs.
        needed: usize,
    },
    /// The frame does not start with `CCMP`.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The framing version is not ours.
    #[error("unsupported wire version {0}")]
    UnsupportedWireVersion(u8),
    /// The reserved flags are not zero.
    #[error("reserved flags set: {0:#06x}")]
    ReservedFlags(u16),
    /// The message type is unknown.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The announced payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(u32),
    /// The payload ended inside a field.
    #[error("payload truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The payload has bytes after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A count is larger than its limit.
    #[error("{field}: count {count} exceeds limit {limit}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// The count read.
        count: usize,
        /// Its limit.
        limit: usize,
    },
    /// A string is not UTF-8.
    #[error("{field} is not UTF-8")]
    BadUtf8 {
        /// The field.
        field: &'static str,
    },
    /// Private data follows a batch's entries but every entry's is empty. A sender writes it only when some
    /// client has some, so that every message has one encoding.
    #[error("client private data for {0} entries, every one empty")]
    EmptyPrivateData(usize),
    /// A field holds a value outside its domain.
    #[error("{field} has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
}

const T_HELLO: u8 = 1;
const T_AUTH_CHALLENGE: u8 = 2;
const T_AUTH_RESPONSE: u8 = 3;
const T_PEER_INFO: u8 = 4;
const T_CLIENT_INFO: u8 = 5;
const T_READY: u8 = 6;
const T_CLIENT_OPEN: u8 = 7;
const T_CLIENT_CLOSE: u8 = 8;
const T_HEARTBEAT: u8 = 9;
const T_STOP: u8 = 10;
const T_RESUME: u8 = 11;
const T_ERROR: u8 = 12;
const T_CLIENT_RESET: u8 = 13;
const T_LOAD_REPORT: u8 = 14;
const T_STANDBY: u8 = 15;

impl Message {
    /// The on-wire type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Hello(_) => T_HELLO,
            Message::AuthChallenge(_) => T_AUTH_CHALLENGE,
            Message::AuthResponse(_) => T_AUTH_RESPONSE,
            Message::PeerInfo(_) => T_PEER_INFO,
            Message::ClientInfo(_) => T_CLIENT_INFO,
            Message::Ready(_) => T_READY,
            Message::ClientOpen(_) => T_CLIENT_OPEN,
            Message::ClientClose(_) => T_CLIENT_CLOSE,
            Message::Heartbeat(_) => T_HEARTBEAT,
            Message::Stop(_) => T_STOP,
            Message::Resume(_) => T_RESUME,
            Message::Error(_) => T_ERROR,
            Message::ClientReset(_) => T_CLIENT_RESET,
            Message::LoadReport(_) => T_LOAD_REPORT,
            Message::Standby(_) => T_STANDBY,
        }
    }

    /// Appends the framed message to `out`.
    ///
    /// # Panics
    /// If the message breaks a limit that the decoder would refuse (a name longer than
    /// [`MAX_NAME_LEN`], more than [`MAX_VIS`] VIs, ...). Such a message is a bug of the sender, never
    /// input from the network. Use [`Message::check_limits`] to test first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Err(e) = self.check_limits() {
            panic!("encoding a message that breaks a wire limit: {e}");
        }
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.type_byte());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let body = out.len();
        self.encode_payload(out);
        let len = out.len() - body;
        assert!(
            len <= MAX_PAYLOAD,
            "payload of {len} bytes exceeds MAX_PAYLOAD"
        );
        out[start + 8..start + 12].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// The framed message as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Checks every limit the decoder enforces, so that `decode(encode(m)) == m` for any `m` that passes.
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        fn name(s: &str, field: &'static str, limit: usize) -> Result<(), DecodeError> {
            count(s.len(), field, limit)
        }
        fn count(n: usize, field: &'static str, limit: usize) -> Result<(), DecodeError> {
            within(n, field, limit).map(drop)
        }
        fn vi(v: &ViAddress) -> Result<(), DecodeError> {
            if v.qpn > MAX_QPN {
                return Err(DecodeError::InvalidValue {
                    field: "qpn",
                    value: v.qpn.into(),
                });
            }
            if v.psn > MAX_QPN {
                return Err(DecodeError::InvalidValue {
                    field: "psn",
                    value: v.psn.into(),
                });
            }
            Ok(())
        }
        match self {
            Message::PeerInfo(p) => {
                vi(&p.control_vi)?;
                count(p.windows.len(), "peer windows", MAX_WINDOWS)
            }
            Message::ClientInfo(ci) | Message::Standby(ci) => {
                count(ci.entries.len(), "client entries", MAX_CLIENTS)?;
                for e in &ci.entries {
                    name(&e.name, "client name", MAX_NAME_LEN)?;
                    count(e.vis.len(), "client vis", MAX_VIS)?;
                    count(e.windows.len(), "client windows", MAX_WINDOWS)?;
                    for v in &e.vis {
                        vi(v)?;
                    }
                    count(e.private.len(), "client private data", MAX_PRIVATE)?;
                }
                Ok(())
            }
            Message::Ready(r) => count(r.clients.len(), "ready clients", MAX_CLIENTS),
            Message::LoadReport(l) => count(l.clients.len(), "load clients", MAX_CLIENTS),
            Message::ClientOpen(o) => {
                name(&o.name, "client name", MAX_NAME_LEN)?;
                count(o.vi_count.into(), "vi count", MAX_VIS)
            }
            Message::Error(e) => name(&e.text, "error text", MAX_TEXT_LEN),
            _ => Ok(()),
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Message::Hello(h) => {
                w.u16(h.min_version);
                w.u16(h.max_version);
                w.u64(h.features);
                w.u64(h.node.0);
                w.u64(h.cluster.0);
                w.u64(h.incarnation);
                w.bytes(&h.nonce);
            }
            Message::AuthChallenge(c) => w.bytes(&c.challenge),
            Message::AuthResponse(r) => w.bytes(&r.mac),
            Message::PeerInfo(p) => {
                w.vi(&p.control_vi);
                w.windows(&p.windows);
            }
            Message::ClientInfo(ci) | Message::Standby(ci) => {
                w.u16(ci.entries.len() as u16);
                for e in &ci.entries {
                    w.u32(e.client.0);
                    w.str8(&e.name);
                    w.u64(e.generation.0);
                    w.u8(e.vis.len() as u8);
                    for v in &e.vis {
                        w.vi(v);
                    }
                    w.windows(&e.windows);
                }
                // The private data follows all entries, only if there is any: a message without it is
                // byte for byte the one of protocol versions 1 and 2.
                if ci.entries.iter().any(|e| !e.private.is_empty()) {
                    for e in &ci.entries {
                        w.u8(e.private.len() as u8);
                        w.bytes(&e.private);
                    }
                }
            }
            Message::Ready(r) => {
                w.u16(r.clients.len() as u16);
                for c in &r.clients {
                    w.u32(c.client.0);
                    w.u64(c.generation.0);
                }
            }
            Message::ClientOpen(o) => {
                w.u32(o.client.0);
                w.str8(&o.name);
                w.u8(match o.class {
                    BandwidthClass::Low => 0,
                    BandwidthClass::High => 1,
                });
                w.u8(o.vi_count);
                w.u64(o.seq);
            }
            Message::ClientClose(c) => {
                w.u32(c.client.0);
                w.u64(c.seq);
            }
            Message::Heartbeat(h) => {
                w.u64(h.seq);
                w.u64(h.time_ns);
            }
            Message::Stop(s) => {
                w.u8(s.interconnect.0);
                w.u64(s.session_tag);
            }
            Message::Resume(r) => w.u8(r.interconnect.0),
            Message::ClientReset(c) => {
                w.u32(c.client.0);
                w.u64(c.generation.0);
            }
            Message::LoadReport(l) => {
                w.u16(l.clients.len() as u16);
                for c in &l.clients {
                    w.u32(c.client.0);
                    w.u64(c.bytes);
                }
            }
            Message::Error(e) => {
                w.u16(e.code.to_u16());
                let t = e.text.as_bytes();
                w.u16(t.len() as u16);
                w.bytes(t);
            }
        }
    }

    /// Decodes one frame from the start of `buf`, returning the message and the bytes consumed.
    ///
    /// With a stream transport, call it on the receive buffer: [`DecodeError::Incomplete`] means
    /// "read more"; any other error means the peer is broken or hostile and the session must close.
    pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
        if buf.len() < HEADER_LEN {
            // Refuse a wrong magic as early as possible, even from a short read.
            let n = buf.len().min(4);
            if buf[..n] != MAGIC[..n] {
                let mut m = [0u8; 4];
                m[..n].copy_from_slice(&buf[..n]);
                return Err(DecodeError::BadMagic(m));
            }
            return Err(DecodeError::Incomplete {
                needed: HEADER_LEN - buf.len(),
            });
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if buf[4] != WIRE_VERSION {
            return Err(DecodeError::UnsupportedWireVersion(buf[4]));
        }
        let ty = buf[5];
        let flags = u16::from_le_bytes([buf[6], buf[7]]);
        if flags != 0 {
            return Err(DecodeError::ReservedFlags(flags));
        }
        let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len as usize > MAX_PAYLOAD {
            return Err(DecodeError::PayloadTooLarge(len));
        }
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            return Err(DecodeError::Incomplete {
                needed: total - buf.len(),
            });
        }
        let mut r = Reader {
            buf: &buf[HEADER_LEN..total],
        };
        let msg = Self::decode_payload(ty, &mut r)?;
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok((msg, total))
    }

    /// Decodes a buffer that must hold exactly one frame.
    pub fn decode_exact(buf: &[u8]) -> Result<Message, DecodeError> {
        let (m, used) = Self::decode(buf)?;
        if used != buf.len() {
            return Err(DecodeError::TrailingBytes(buf.len() - used));
        }
        Ok(m)
    }

    fn decode_payload(ty: u8, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        Ok(match ty {
            T_HELLO => Message::Hello(Hello {
                min_version: r.u16("hello min_version")?,
                max_version: r.u16("hello max_version")?,
                features: r.u64("hello features")?,
                node: NodeId(r.u64("hello node")?),
                cluster: ClusterId(r.u64("hello cluster")?),
                incarnation: r.u64("hello incarnation")?,
                nonce: r.array32("hello nonce")?,
            }),
            T_AUTH_CHALLENGE => Message::AuthChallenge(AuthChallenge {
                challenge: r.array32("challenge")?,
            }),
            T_AUTH_RESPONSE => Message::AuthResponse(AuthResponse {
                mac: r.array32("mac")?,
            }),
            T_PEER_INFO => Message::PeerInfo(PeerInfo {
                control_vi: r.vi()?,
                windows: r.windows("peer windows")?,
            }),
            T_CLIENT_INFO | T_STANDBY => {
                // Smallest entry: id 4 + name len 1 + generation 8 + vi count 1 + window count 1.
                let n = r.count16("client entries", MAX_CLIENTS, 15)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let client = ClientId(r.u32("client id")?);
                    let name = r.str8("client name")?;
                    let generation = Generation(r.u64("client generation")?);
                    let nv = r.count8("client vis", MAX_VIS, VI_LEN)?;
                    let mut vis = Vec::with_capacity(nv);
                    for _ in 0..nv {
                        vis.push(r.vi()?);
                    }
                    let windows = r.windows("client windows")?;
                    entries.push(ClientEntry {
                        client,
                        name,
                        generation,
                        vis,
                        windows,
                        private: Vec::new(),
                    });
                }
                if !r.buf.is_empty() {
                    for e in &mut entries {
                        let n = r.u8("client private data length")? as usize;
                        let n = within(n, "client private data", MAX_PRIVATE)?;
                        e.private = r.take(n, "client private data")?.to_vec();
                    }
                    if entries.iter().all(|e| e.private.is_empty()) {
                        return Err(DecodeError::EmptyPrivateData(entries.len()));
                    }
                }
                if ty == T_STANDBY {
                    Message::Standby(ClientInfo { entries })
                } else {
                    Message::ClientInfo(ClientInfo { entries })
                }
            }
            T_READY => {
                let n = r.count16("ready clients", MAX_CLIENTS, 12)?;
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    clients.push(ClientRef {
                        client: ClientId(r.u32("ready client")?),
                        generation: Generation(r.u64("ready generation")?),
                    });
                }
                Message::Ready(Ready { clients })
            }
            T_CLIENT_OPEN => {
                let client = ClientId(r.u32("client id")?);
                let name = r.str8("client name")?;
                let class = match r.u8("bandwidth class")? {
                    0 => BandwidthClass::Low,
                    1 => BandwidthClass::High,
                    v => {
                        return Err(DecodeError::InvalidValue {
                            field: "bandwidth class",
                            value: v.into(),
                        })
                    }
                };
                let vi_count = r.u8("vi count")?;
                within(vi_count.into(), "vi count", MAX_VIS)?;
                Message::ClientOpen(ClientOpen {
                    client,
                    name,
                    class,
                    vi_count,
                    seq: r.u64("client seq")?,
                })
            }
            T_CLIENT_CLOSE => Message::ClientClose(ClientClose {
                client: ClientId(r.u32("client id")?),
                seq: r.u64("client seq")?,
            }),
            T_HEARTBEAT => Message::Heartbeat(Heartbeat {
                seq: r.u64("heartbeat seq")?,
                time_ns: r.u64("heartbeat time")?,
            }),
            T_STOP => Message::Stop(Stop {
                interconnect: InterconnectId(r.u8("stop interconnect")?),
                session_tag: r.u64("stop session tag")?,
            }),
            T_RESUME => Message::Resume(Resume {
                interconnect: InterconnectId(r.u8("resume interconnect")?),
            }),
            T_CLIENT_RESET => Message::ClientReset(ClientReset {
                client: ClientId(r.u32("reset client")?),
                generation: Generation(r.u64("reset generation")?),
            }),
            T_LOAD_REPORT => {
                let n = r.count16("load clients", MAX_CLIENTS, 12)?;
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    clients.push(ClientLoad {
                        client: ClientId(r.u32("load client")?),
                        bytes: r.u64("load bytes")?,
                    });
                }
                Message::LoadReport(LoadReport { clients })
            }
            T_ERROR => {
                let code = ErrorCode::from_u16(r.u16("error code")?);
                let n = r.u16("error text length")? as usize;
                let n = within(n, "error text", MAX_TEXT_LEN)?;
                let bytes = r.take(n, "error text")?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::BadUtf8 {
                        field: "error text",
                    })?
                    .to_owned();
                Message::Error(Error { code, text })
            }
            other => return Err(DecodeError::UnknownType(other)),
        })
    }
}

/// `count` if it is at most `limit`, else the error naming `field`.
fn within(count: usize, field: &'static str, limit: usize) -> Result<usize, DecodeError> {
    match count <= limit {
        true => Ok(count),
        false => Err(DecodeError::TooMany {
            field,
            count,
            limit,
        }),
    }
}

/// Encoded size of a [`ViAddress`]: interconnect 1 + qpn 4 + gid 16 + psn 4 + mtu 2.
const VI_LEN: usize = 27;
/// Encoded size of a [`MemoryWindow`].
const WINDOW_LEN: usize = 20;

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str8(&mut self, s: &str) {
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }
    fn vi(&mut self, v: &ViAddress) {
        self.u8(v.interconnect.0);
        self.u32(v.qpn);
        self.bytes(&v.gid);
        self.u32(v.psn);
        self.u16(v.mtu.bytes());
    }
    fn windows(&mut self, ws: &[MemoryWindow]) {
        self.u8(ws.len() as u8);
        for w in ws {
            self.u64(w.addr);
            self.u64(w.len);
            self.u32(w.rkey);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn array32(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        let b = self.take(32, field)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        Ok(a)
    }
    /// Reads a count and checks it against its limit and against the bytes left, assuming each item
    /// takes at least `min_item` bytes, so no allocation can exceed the frame.
    fn check_count(
        &self,
        n: usize,
        field: &'static str,
        limit: usize,
        min_item: usize,
    ) -> Result<usize, DecodeError> {
        if n > limit {
            return Err(DecodeError::TooMany {
                field,
                count: n,
                limit,
            });
        }
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n)
    }
    fn count8(
        &mut self,
        field: &'static str,
        limit: usize,
        min_item: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u8(field)? as usize;
        self.check_count(n, field, limit, min_item)
    }
    fn count16(
        &mut self,
        field: &'static str,
        limit: usize,
        min_item: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u16(field)? as usize;
        self.check_count(n, field, limit, min_item)
    }
    fn str8(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let n = self.count8(field, MAX_NAME_LEN, 1)?;
        let b = self.take(n, field)?;
        Ok(std::str::from_utf8(b)
            .map_err(|_| DecodeError::BadUtf8 { field })?
            .to_owned())
    }
    fn vi(&mut self) -> Result<ViAddress, DecodeError> {
        let interconnect = InterconnectId(self.u8("vi interconnect")?);
        let qpn = self.u32("vi qpn")?;
        if qpn > MAX_QPN {
            return Err(DecodeError::InvalidValue {
                field: "qpn",
                value: qpn.into(),
            });
        }
        let gid = {
            let b = self.take(16, "vi gid")?;
            let mut g = [0u8; 16];
            g.copy_from_slice(b);
            g
        };
        let psn = self.u32("vi psn")?;
        if psn > MAX_QPN {
            return Err(DecodeError::InvalidValue {
                field: "psn",
                value: psn.into(),
            });
        }
        let m = self.u16("vi mtu")?;
        let mtu = Mtu::from_bytes(m).ok_or(DecodeError::InvalidValue {
            field: "mtu",
            value: m.into(),
        })?;
        Ok(ViAddress {
            interconnect,
            qpn,
            gid,
            psn,
            mtu,
        })
    }
    fn windows(&mut self, field: &'static str) -> Result<Vec<MemoryWindow>, DecodeError> {
        let n = self.count8(field, MAX_WINDOWS, WINDOW_LEN)?;
        let mut ws = Vec::with_capacity(n);
        for _ in 0..n {
            ws.push(MemoryWindow {
                addr: self.u64("window addr")?,
                len: self.u64("window len")?,
                rkey: self.u32("window rkey")?,
            });
        }
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vi(qpn: u32) -> ViAddress {
        ViAddress {
            interconnect: InterconnectId(1),
            qpn,
            gid: [7; 16],
            psn: 0x123456,
            mtu: Mtu::M1024,
        }
    }

    #[test]
    fn header_is_magic_version_type_flags_length_little_endian() {
        let m = Message::Heartbeat(Heartbeat { seq: 1, time_ns: 2 });
        let b = m.to_bytes();
        assert_eq!(&b[0..4], b"CCMP");
        assert_eq!(b[4], WIRE_VERSION);
        assert_eq!(b[5], T_HEARTBEAT);
        assert_eq!(&b[6..8], &[0, 0]);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 16);
        assert_eq!(&b[12..20], &1u64.to_le_bytes());
        assert_eq!(b.len(), HEADER_LEN + 16);
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_never_a_panic_or_a_message() {
        let m = Message::ClientInfo(ClientInfo {
            entries: vec![ClientEntry {
                client: ClientId(3),
                name: "nvram".into(),
                generation: Generation(9),
                vis: vec![vi(1), vi(2)],
                windows: vec![MemoryWindow {
                    addr: 0x1000,
                    len: 4096,
                    rkey: 5,
                }],
                private: b"formats 2".to_vec(),
            }],
        });
        let b = m.to_bytes();
        for i in 0..b.len() {
            match Message::decode(&b[..i]) {
                Err(DecodeError::Incomplete { needed }) => assert!(needed > 0),
                other => panic!("prefix {i} decoded to {other:?}"),
            }
        }
        assert_eq!(Message::decode(&b).unwrap(), (m, b.len()));
    }

    fn entry(client: u32, private: &[u8]) -> ClientEntry {
        ClientEntry {
            client: ClientId(client),
            name: format!("client {client}"),
            generation: Generation(1),
            vis: vec![vi(client)],
            windows: vec![],
            private: private.to_vec(),
        }
    }

    #[test]
    fn client_info_without_private_data_is_the_version_2_encoding() {
        // Two entries, no private data: the payload ends with the last entry's windows, as an older
        // manager's decoder (which refuses trailing bytes) expects.
        let m = Message::ClientInfo(ClientInfo {
            entries: vec![entry(1, b""), entry(2, b"")],
        });
        let b = m.to_bytes();
        let entry_len = 4 + 1 + "client 1".len() + 8 + 1 + VI_LEN + 1;
        assert_eq!(b.len(), HEADER_LEN + 2 + 2 * entry_len);
        assert_eq!(Message::decode_exact(&b), Ok(m));
    }

    #[test]
    fn client_private_data_follows_the_entries_and_round_trips() {
        let m = Message::Standby(ClientInfo {
            entries: vec![
                entry(1, b""),
                entry(2, &[0xAB; MAX_PRIVATE]),
                entry(3, b"x"),
            ],
        });
        let b = m.to_bytes();
        // After the entries: one length byte and the bytes per entry, in entry order.
        let tail = [
            &[0u8][..],
            &[MAX_PRIVATE as u8],
            &[0xAB; MAX_PRIVATE],
            &[1, b'x'],
        ]
        .concat();
        assert!(b.ends_with(&tail));
        assert_eq!(Message::decode_exact(&b), Ok(m));
    }

    #[test]
    fn client_private_data_that_is_all_empty_is_refused_so_each_message_has_one_encoding() {
        // Found by the decode fuzz target: two entries followed by two zero lengths decoded to the message
        // without private data, which encodes without those bytes.
        let mut b = Message::ClientInfo(ClientInfo {
            entries: vec![entry(1, b""), entry(2, b"")],
        })
        .to_bytes();
        b.extend_from_slice(&[0, 0]);
        let len = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            Message::decode_exact(&b),
            Err(DecodeError::EmptyPrivateData(2))
        );
    }

    #[test]
    fn client_private_data_over_the_limit_is_refused_by_name() {
        let m = Message::ClientInfo(ClientInfo {
            entries: vec![entry(1, &[1; MAX_PRIVATE + 1])],
        });
        assert_eq!(
            m.check_limits(),
            Err(DecodeError::TooMany {
                field: "client private data",
                count: MAX_PRIVATE + 1,
                limit: MAX_PRIVATE
            })
        );
        // The same on the wire: a hand-made frame claiming 65 bytes.
        let mut b = Message::ClientInfo(ClientInfo {
            entries: vec![entry(1, &[1; MAX_PRIVATE])],
        })
        .to_bytes();
        let at = b.len() - MAX_PRIVATE - 1;
        b[at] = MAX_PRIVATE as u8 + 1;
        b.push(1);
        let len = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            Message::decode_exact(&b),
            Err(DecodeError::TooMany {
                field: "client private data",
                count: MAX_PRIVATE + 1,
                limit: MAX_PRIVATE
            })
        );
        // And private data cut short is truncated, not read past the frame.
        let mut short = Message::ClientInfo(ClientInfo {
            entries: vec![entry(1, b"abc"), entry(2, b"")],
        })
        .to_bytes();
        short.truncate(short.len() - 1); // entry 2's length byte
        let len = (short.len() - HEADER_LEN) as u32;
        short[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            Message::decode_exact(&short),
            Err(DecodeError::Truncated {
                field: "client private data length"
            })
        );
    }

    #[test]
    fn two_frames_back_to_back_decode_one_at_a_time() {
        let a = Message::Resume(Resume {
            interconnect: InterconnectId(1),
        });
        let b = Message::Ready(Ready {
            clients: vec![ClientRef {
                client: ClientId(1),
                generation: Generation(2),
            }],
        });
        let mut buf = a.to_bytes();
        b.encode(&mut buf);
        let (m1, n1) = Message::decode(&buf).unwrap();
        let (m2, n2) = Message::decode(&buf[n1..]).unwrap();
        assert_eq!((m1, m2), (a, b));
        assert_eq!(n1 + n2, buf.len());
    }

    #[test]
    fn hostile_headers_are_refused_with_typed_errors() {
        let mut b = Message::Resume(Resume {
            interconnect: InterconnectId(0),
        })
        .to_bytes();
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(Message::decode(&bad), Err(DecodeError::BadMagic(*b"XCMP")));
        let mut bad = b.clone();
        bad[4] = 2;
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::UnsupportedWireVersion(2))
        );
        let mut bad = b.clone();
        bad[5] = 200;
        assert_eq!(Message::decode(&bad), Err(DecodeError::UnknownType(200)));
        let mut bad = b.clone();
        bad[6] = 1;
        assert_eq!(Message::decode(&bad), Err(DecodeError::ReservedFlags(1)));
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::PayloadTooLarge(u32::MAX))
        );
        // A payload longer than the message is refused, not silently ignored.
        b[8] += 1;
        b.push(0);
        assert_eq!(Message::decode(&b), Err(DecodeError::TrailingBytes(1)));
        // Garbage such as an HTTP request is refused at the first byte.
        assert!(matches!(
            Message::decode(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::BadMagic(_))
        ));
        assert!(matches!(
            Message::decode(b"G"),
            Err(DecodeError::BadMagic(_))
        ));
    }

    #[test]
    fn a_huge_count_in_a_small_frame_is_refused_before_allocating() {
        // ClientInfo claiming 1000 entries in a 2-byte payload.
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.push(WIRE_VERSION);
        b.push(T_CLIENT_INFO);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&1000u16.to_le_bytes());
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::Truncated {
                field: "client entries"
            })
        );
    }

    #[test]
    fn out_of_domain_fields_are_refused() {
        let mut m = PeerInfo {
            control_vi: vi(5),
            windows: vec![],
        };
        let mut b = Message::PeerInfo(m.clone()).to_bytes();
        // MTU 1000 is not an InfiniBand MTU.
        let mtu_at = HEADER_LEN + 1 + 4 + 16 + 4;
        b[mtu_at..mtu_at + 2].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::InvalidValue {
                field: "mtu",
                value: 1000
            })
        );
        m.control_vi.qpn = MAX_QPN + 1;
        assert!(Message::PeerInfo(m).check_limits().is_err());
    }

    #[test]
    fn unknown_error_codes_survive_a_round_trip() {
        let m = Message::Error(Error {
            code: ErrorCode::Unknown(999),
            text: "from the future".into(),
        });
        assert_eq!(Message::decode_exact(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn a_knock_is_twenty_bytes_magic_cluster_node_and_anything_else_is_a_typed_error() {
        let k = Knock {
            cluster: ClusterId(5),
            node: NodeId(2),
        };
        let b = k.to_bytes();
        assert_eq!(&b[..4], b"CCMK");
        assert_eq!(&b[4..12], &5u64.to_le_bytes());
        assert_eq!(&b[12..], &2u64.to_le_bytes());
        assert_eq!(Knock::decode(&b), Ok(k));
        for i in 0..b.len() {
            assert_eq!(
                Knock::decode(&b[..i]),
                Err(DecodeError::Truncated { field: "knock" })
            );
        }
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Knock::decode(&long), Err(DecodeError::TrailingBytes(1)));
        let mut frame = b;
        frame[..4].copy_from_slice(b"CCMP");
        assert_eq!(Knock::decode(&frame), Err(DecodeError::BadMagic(*b"CCMP")));
    }
}
