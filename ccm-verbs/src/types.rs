//! Plain value types: MTUs, GIDs, port and QP states, completion status, access flags, and the
//! out-of-band descriptors ([`Endpoint`], [`RemoteWindow`]). None of them needs a device.

use crate::error::{Error, Result};
use ibverbs_sys as sys;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// An InfiniBand / RoCE MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256 = 1,
    /// 512 bytes.
    Mtu512 = 2,
    /// 1024 bytes.
    Mtu1024 = 3,
    /// 2048 bytes.
    Mtu2048 = 4,
    /// 4096 bytes.
    Mtu4096 = 5,
}

impl Mtu {
    /// From the verbs enum value (`IBV_MTU_*`, 1..=5); `None` for anything else.
    pub fn from_raw(v: u32) -> Option<Mtu> {
        Some(match v {
            1 => Mtu::Mtu256,
            2 => Mtu::Mtu512,
            3 => Mtu::Mtu1024,
            4 => Mtu::Mtu2048,
            5 => Mtu::Mtu4096,
            _ => return None,
        })
    }
    /// The verbs enum value.
    pub fn raw(self) -> u32 {
        self as u32
    }
    /// Size in bytes.
    pub fn bytes(self) -> u32 {
        128 << (self as u32)
    }
}

/// A 128-bit GID, in wire (network) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The GID of an IP address as RoCE v2 uses it (IPv4 becomes `::ffff:a.b.c.d`).
    pub fn from_ip(ip: IpAddr) -> Gid {
        match ip {
            IpAddr::V4(v4) => Gid(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Gid(v6.octets()),
        }
    }
    /// The IP address this GID encodes (IPv4-mapped GIDs give IPv4).
    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
    /// True for the all-zero (unused) GID.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Ipv6Addr::from(self.0))
    }
}
impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// Type of a GID table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GidType {
    /// InfiniBand.
    Ib,
    /// RoCE v1 (Ethernet link layer, no IP/UDP).
    RoceV1,
    /// RoCE v2 (UDP/IP): the one ccm uses.
    RoceV2,
    /// A type this crate does not know.
    Other(u32),
}

impl GidType {
    /// From `IBV_GID_TYPE_*`.
    pub fn from_raw(v: u32) -> GidType {
        match v {
            sys::IBV_GID_TYPE_IB => GidType::Ib,
            sys::IBV_GID_TYPE_ROCE_V1 => GidType::RoceV1,
            sys::IBV_GID_TYPE_ROCE_V2 => GidType::RoceV2,
            v => GidType::Other(v),
        }
    }
    /// From the sysfs `gid_attrs/types/N` text (`IB/RoCE v1`, `RoCE v2`).
    pub fn from_sysfs(s: &str) -> GidType {
        match s.trim() {
            "RoCE v2" => GidType::RoceV2,
            "IB/RoCE v1" | "RoCE v1" => GidType::RoceV1,
            "IB" => GidType::Ib,
            _ => GidType::Other(u32::MAX),
        }
    }
}

/// One entry of a port's GID table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GidEntry {
    /// Index in the table (what `sgid_index` takes).
    pub index: u32,
    /// The GID.
    pub gid: Gid,
    /// Its type.
    pub gid_type: GidType,
    /// Interface index of its netdev (0 if none).
    pub ndev_ifindex: u32,
    /// Name of its netdev, if it has one.
    pub netdev: Option<String>,
}

/// Selects the RoCE v2 GID whose address is `ip` (IPv4 matches its `::ffff:` mapped form).
pub fn select_roce_v2_by_ip(table: &[GidEntry], ip: IpAddr) -> Result<&GidEntry> {
    let want = Gid::from_ip(ip);
    table
        .iter()
        .find(|e| e.gid_type == GidType::RoceV2 && e.gid == want)
        .ok_or_else(|| Error::GidNotFound(format!("RoCE v2 {ip}")))
}

/// Selects a RoCE v2 GID on netdev `netdev`, preferring an IPv4-mapped one over link-local IPv6.
pub fn select_roce_v2_by_netdev<'a>(table: &'a [GidEntry], netdev: &str) -> Result<&'a GidEntry> {
    let mut candidates = table
        .iter()
        .filter(|e| e.gid_type == GidType::RoceV2 && e.netdev.as_deref() == Some(netdev));
    let first = candidates.clone().next();
    candidates
        .find(|e| matches!(e.gid.to_ip(), IpAddr::V4(_)))
        .or(first)
        .ok_or_else(|| Error::GidNotFound(format!("RoCE v2 on {netdev}")))
}

/// State of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// No state change.
    Nop,
    /// Down.
    Down,
    /// Initializing.
    Init,
    /// Armed.
    Armed,
    /// Active: traffic can flow.
    Active,
    /// Active, deferred.
    ActiveDefer,
    /// A value this crate does not know.
    Unknown(u32),
}

impl PortState {
    /// From `IBV_PORT_*`.
    pub fn from_raw(v: u32) -> PortState {
        use sys::ibv_port_state as s;
        match v {
            s::IBV_PORT_NOP => PortState::Nop,
            s::IBV_PORT_DOWN => PortState::Down,
            s::IBV_PORT_INIT => PortState::Init,
            s::IBV_PORT_ARMED => PortState::Armed,
            s::IBV_PORT_ACTIVE => PortState::Active,
            s::IBV_PORT_ACTIVE_DEFER => PortState::ActiveDefer,
            v => PortState::Unknown(v),
        }
    }
}

/// Link layer of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// Unspecified (old providers: InfiniBand).
    Unspecified,
    /// InfiniBand.
    InfiniBand,
    /// Ethernet (RoCE).
    Ethernet,
    /// A value this crate does not know.
    Other(u8),
}

impl LinkLayer {
    /// From `IBV_LINK_LAYER_*`.
    pub fn from_raw(v: u8) -> LinkLayer {
        match v as u32 {
            sys::IBV_LINK_LAYER_UNSPECIFIED => LinkLayer::Unspecified,
            sys::IBV_LINK_LAYER_INFINIBAND => LinkLayer::InfiniBand,
            sys::IBV_LINK_LAYER_ETHERNET => LinkLayer::Ethernet,
            _ => LinkLayer::Other(v),
        }
    }
}

/// Port attributes, as `ibv_query_port` reports them right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical state.
    pub state: PortState,
    /// Largest MTU the port supports (`None` if the device reported an unknown value).
    pub max_mtu: Option<Mtu>,
    /// MTU in use (`None` if the device reported an unknown value).
    pub active_mtu: Option<Mtu>,
    /// Link layer.
    pub link_layer: LinkLayer,
    /// Raw active speed (`IBV_SPEED_*` style encoding).
    pub active_speed: u8,
    /// Raw active width (1 = 1x, 2 = 4x, 4 = 8x, 8 = 12x, 16 = 2x).
    pub active_width: u8,
    /// Physical port state (5 = LinkUp, 3 = Disabled).
    pub phys_state: u8,
    /// GID table length.
    pub gid_tbl_len: u32,
    /// Largest message size.
    pub max_msg_sz: u32,
    /// LID (InfiniBand only).
    pub lid: u16,
}

/// State of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// RESET.
    Reset,
    /// INIT.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error.
    Err,
    /// Unknown (as reported by the device).
    Unknown,
    /// A value this crate does not know.
    Other(u32),
}

impl QpState {
    /// From `IBV_QPS_*`.
    pub fn from_raw(v: u32) -> QpState {
        use sys::ibv_qp_state as s;
        match v {
            s::IBV_QPS_RESET => QpState::Reset,
            s::IBV_QPS_INIT => QpState::Init,
            s::IBV_QPS_RTR => QpState::Rtr,
            s::IBV_QPS_RTS => QpState::Rts,
            s::IBV_QPS_SQD => QpState::Sqd,
            s::IBV_QPS_SQE => QpState::Sqe,
            s::IBV_QPS_ERR => QpState::Err,
            s::IBV_QPS_UNKNOWN => QpState::Unknown,
            v => QpState::Other(v),
        }
    }
}

/// Status of a work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// Completed.
    Success,
    /// Local length error (receive buffer too small, message too large).
    LocalLength,
    /// Local QP operation error (e.g. own port down).
    LocalQpOperation,
    /// Local EE context error.
    LocalEecOperation,
    /// Local protection error (bad lkey / range).
    LocalProtection,
    /// Flushed: the QP went to ERR with this request outstanding.
    Flushed,
    /// Memory window bind error.
    MwBind,
    /// Bad response from the responder.
    BadResponse,
    /// Local access error.
    LocalAccess,
    /// Remote invalid request (e.g. operation not enabled, too long).
    RemoteInvalidRequest,
    /// Remote access error (bad rkey, out of bounds, access not granted).
    RemoteAccess,
    /// Remote operation error.
    RemoteOperation,
    /// Transport retry counter exceeded: the peer did not answer.
    RetryExceeded,
    /// RNR retry counter exceeded: the peer had no receive posted.
    RnrRetryExceeded,
    /// Local RDD violation.
    LocalRddViolation,
    /// Remote invalid RD request.
    RemoteInvalidRdRequest,
    /// Remote aborted.
    RemoteAborted,
    /// Invalid EE context number.
    InvalidEecn,
    /// Invalid EE context state.
    InvalidEecState,
    /// Fatal error.
    Fatal,
    /// Response timeout.
    ResponseTimeout,
    /// General error.
    General,
    /// A status this crate does not know.
    Other(u32),
}

impl WcStatus {
    /// From `IBV_WC_*` status values; never panics.
    pub fn from_raw(v: u32) -> WcStatus {
        use sys::ibv_wc_status as s;
        match v {
            s::IBV_WC_SUCCESS => WcStatus::Success,
            s::IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
            s::IBV_WC_LOC_QP_OP_ERR => WcStatus::LocalQpOperation,
            s::IBV_WC_LOC_EEC_OP_ERR => WcStatus::LocalEecOperation,
            s::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
            s::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
            s::IBV_WC_MW_BIND_ERR => WcStatus::MwBind,
            s::IBV_WC_BAD_RESP_ERR => WcStatus::BadResponse,
            s::IBV_WC_LOC_ACCESS_ERR => WcStatus::LocalAccess,
            s::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemoteInvalidRequest,
            s::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
            s::IBV_WC_REM_OP_ERR => WcStatus::RemoteOperation,
            s::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
            s::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
            s::IBV_WC_LOC_RDD_VIOL_ERR => WcStatus::LocalRddViolation,
            s::IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemoteInvalidRdRequest,
            s::IBV_WC_REM_ABORT_ERR => WcStatus::RemoteAborted,
            s::IBV_WC_INV_EECN_ERR => WcStatus::InvalidEecn,
            s::IBV_WC_INV_EEC_STATE_ERR => WcStatus::InvalidEecState,
            s::IBV_WC_FATAL_ERR => WcStatus::Fatal,
            s::IBV_WC_RESP_TIMEOUT_ERR => WcStatus::ResponseTimeout,
            s::IBV_WC_GENERAL_ERR => WcStatus::General,
            v => WcStatus::Other(v),
        }
    }
    /// True for [`WcStatus::Success`].
    pub fn is_success(self) -> bool {
        self == WcStatus::Success
    }
}

/// What a completed work request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// SEND (with or without immediate) on the send queue.
    Send,
    /// RDMA WRITE (with or without immediate) on the send queue.
    RdmaWrite,
    /// RDMA READ on the send queue.
    RdmaRead,
    /// Atomic compare and swap.
    CompSwap,
    /// Atomic fetch and add.
    FetchAdd,
    /// Memory window bind.
    BindMw,
    /// Local invalidate.
    LocalInv,
    /// TSO.
    Tso,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
    /// A value this crate does not know (also what flushed completions may carry).
    Other(u32),
}

impl WcOpcode {
    /// From `IBV_WC_*` opcode values; never panics.
    pub fn from_raw(v: u32) -> WcOpcode {
        use sys::ibv_wc_opcode as o;
        match v {
            o::IBV_WC_SEND => WcOpcode::Send,
            o::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            o::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            o::IBV_WC_COMP_SWAP => WcOpcode::CompSwap,
            o::IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
            o::IBV_WC_BIND_MW => WcOpcode::BindMw,
            o::IBV_WC_LOCAL_INV => WcOpcode::LocalInv,
            o::IBV_WC_TSO => WcOpcode::Tso,
            o::IBV_WC_RECV => WcOpcode::Recv,
            o::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            v => WcOpcode::Other(v),
        }
    }
}

/// Memory region / QP access rights. Default: local write only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessFlags(u32);

impl AccessFlags {
    /// No access beyond local read.
    pub const NONE: AccessFlags = AccessFlags(0);
    /// The device may write the memory locally (RECV, READ responses land here).
    pub const LOCAL_WRITE: AccessFlags =
        AccessFlags(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// A peer may RDMA WRITE into it.
    pub const REMOTE_WRITE: AccessFlags =
        AccessFlags(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// A peer may RDMA READ from it.
    pub const REMOTE_READ: AccessFlags =
        AccessFlags(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// A peer may run atomics on it.
    pub const REMOTE_ATOMIC: AccessFlags =
        AccessFlags(sys::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0);

    /// Raw `IBV_ACCESS_*` bits.
    pub fn bits(self) -> u32 {
        self.0
    }
    /// True if every bit of `other` is set.
    pub fn contains(self, other: AccessFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl Default for AccessFlags {
    fn default() -> Self {
        AccessFlags::LOCAL_WRITE
    }
}

impl std::ops::BitOr for AccessFlags {
    type Output = AccessFlags;
    fn bitor(self, rhs: AccessFlags) -> AccessFlags {
        AccessFlags(self.0 | rhs.0)
    }
}

/// Largest value of a 24-bit PSN or QPN.
pub const MAX_24BIT: u32 = 0x00ff_ffff;

/// What a peer needs to connect an RC QP to this one, exchanged out of band ("slam connect").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The RoCE v2 GID of the local port.
    pub gid: Gid,
    /// QP number (24 bits).
    pub qpn: u32,
    /// First packet sequence number this side will send (24 bits).
    pub psn: u32,
    /// Active MTU of the local port.
    pub mtu: Mtu,
}

impl Endpoint {
    /// Version byte of the compact encoding.
    pub const VERSION: u8 = 1;
    /// Length of the compact encoding.
    pub const ENCODED_LEN: usize = 26;

    /// Compact encoding: version, GID (16 bytes, wire order), QPN u32 LE, PSN u32 LE, MTU u8.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0] = Self::VERSION;
        b[1..17].copy_from_slice(&self.gid.0);
        b[17..21].copy_from_slice(&self.qpn.to_le_bytes());
        b[21..25].copy_from_slice(&self.psn.to_le_bytes());
        b[25] = self.mtu as u8;
        b
    }

    /// Checked decoding of [`encode`](Self::encode)'s output; any other bytes give
    /// [`Error::Decode`], never a panic.
    pub fn decode(b: &[u8]) -> Result<Endpoint> {
        if b.len() != Self::ENCODED_LEN {
            return Err(Error::Decode("endpoint: wrong length"));
        }
        if b[0] != Self::VERSION {
            return Err(Error::Decode("endpoint: unknown version"));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[1..17]);
        let qpn = u32::from_le_bytes([b[17], b[18], b[19], b[20]]);
        let psn = u32::from_le_bytes([b[21], b[22], b[23], b[24]]);
        let mtu = Mtu::from_raw(b[25] as u32).ok_or(Error::Decode("endpoint: bad MTU"))?;
        let ep = Endpoint {
            gid: Gid(gid),
            qpn,
            psn,
            mtu,
        };
        ep.validate()?;
        Ok(ep)
    }

    /// Checks the 24-bit ranges of QPN and PSN (serde-decoded endpoints should be validated too).
    pub fn validate(&self) -> Result<()> {
        if self.qpn > MAX_24BIT || self.qpn == 0 {
            return Err(Error::Decode("endpoint: QPN out of range"));
        }
        if self.psn > MAX_24BIT {
            return Err(Error::Decode("endpoint: PSN out of range"));
        }
        Ok(())
    }
}

/// A remote memory window a peer granted: `{addr, len, rkey}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemoteWindow {
    /// Start address in the peer's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

/// A remote address and key, the target of one RDMA WRITE or READ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteAddr {
    /// Address in the peer's address space.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
}

impl RemoteWindow {
    /// Version byte of the compact encoding.
    pub const VERSION: u8 = 1;
    /// Length of the compact encoding.
    pub const ENCODED_LEN: usize = 21;

    /// Bounds-checked sub-range `offset..offset+len` of the window.
    pub fn slice(&self, offset: u64, len: u64) -> Result<RemoteAddr> {
        check_range(offset, len, self.len)?;
        Ok(RemoteAddr {
            addr: self.addr + offset,
            rkey: self.rkey,
        })
    }

    /// Compact encoding: version, addr u64 LE, len u64 LE, rkey u32 LE.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0] = Self::VERSION;
        b[1..9].copy_from_slice(&self.addr.to_le_bytes());
        b[9..17].copy_from_slice(&self.len.to_le_bytes());
        b[17..21].copy_from_slice(&self.rkey.to_le_bytes());
        b
    }

    /// Checked decoding; never panics.
    pub fn decode(b: &[u8]) -> Result<RemoteWindow> {
        if b.len() != Self::ENCODED_LEN {
            return Err(Error::Decode("remote window: wrong length"));
        }
        if b[0] != Self::VERSION {
            return Err(Error::Decode("remote window: unknown version"));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[1..9]);
        let addr = u64::from_le_bytes(a);
        a.copy_from_slice(&b[9..17]);
        let len = u64::from_le_bytes(a);
        let rkey = u32::from_le_bytes([b[17], b[18], b[19], b[20]]);
        if addr.checked_add(len).is_none() {
            return Err(Error::Decode("remote window: addr + len overflows"));
        }
        Ok(RemoteWindow { addr, len, rkey })
    }
}

/// Checks `offset + len <= size` without overflow.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep() -> Endpoint {
        Endpoint {
            gid: Gid::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            qpn: 0x11,
            psn: 0xabcdef,
            mtu: Mtu::Mtu1024,
        }
    }

    #[test]
    fn mtu_values() {
        assert_eq!(Mtu::Mtu256.bytes(), 256);
        assert_eq!(Mtu::Mtu4096.bytes(), 4096);
        for v in 1..=5 {
            assert_eq!(Mtu::from_raw(v).unwrap().raw(), v);
        }
        assert_eq!(Mtu::from_raw(0), None);
        assert_eq!(Mtu::from_raw(6), None);
        assert!(Mtu::Mtu1024 < Mtu::Mtu4096);
    }

    #[test]
    fn endpoint_round_trip() {
        let e = ep();
        let b = e.encode();
        assert_eq!(b.len(), Endpoint::ENCODED_LEN);
        assert_eq!(b[0], 1);
        assert_eq!(&b[17..21], &[0x11, 0, 0, 0]);
        assert_eq!(Endpoint::decode(&b), Ok(e));
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
    }

    #[test]
    fn endpoint_rejects_bad_bytes() {
        let good = ep().encode();
        assert!(Endpoint::decode(&good[..25]).is_err());
        assert!(Endpoint::decode(&[]).is_err());
        let mut b = good;
        b[0] = 2;
        assert_eq!(
            Endpoint::decode(&b),
            Err(Error::Decode("endpoint: unknown version"))
        );
        let mut b = good;
        b[25] = 9;
        assert_eq!(
            Endpoint::decode(&b),
            Err(Error::Decode("endpoint: bad MTU"))
        );
        let mut b = good;
        b[20] = 1; // QPN >= 2^24
        assert!(Endpoint::decode(&b).is_err());
        let mut b = good;
        b[24] = 1; // PSN >= 2^24
        assert!(Endpoint::decode(&b).is_err());
        let mut b = good;
        b[17..21].copy_from_slice(&[0, 0, 0, 0]); // QPN 0
        assert!(Endpoint::decode(&b).is_err());
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Deterministic pseudo-random bytes of every length around the encoded one.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000u32 {
            let len = (round % 30) as usize;
            let mut buf = [0u8; 30];
            for byte in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            if len == Endpoint::ENCODED_LEN {
                buf[0] = 1;
            }
            if let Ok(e) = Endpoint::decode(&buf[..len]) {
                assert_eq!(e.encode()[..], buf[..len]);
            }
            let _ = RemoteWindow::decode(&buf[..len]);
        }
        // A valid encoding with random bytes elsewhere must still round trip.
        let mut b = ep().encode();
        b[1..17].copy_from_slice(&[0xa5; 16]);
        assert!(Endpoint::decode(&b).is_ok());
    }

    #[test]
    fn remote_window_round_trip_and_bounds() {
        let w = RemoteWindow {
            addr: 0x7f00_0000_1000,
            len: 4096,
            rkey: 0x1234,
        };
        assert_eq!(RemoteWindow::decode(&w.encode()), Ok(w));
        assert_eq!(
            w.slice(4000, 96),
            Ok(RemoteAddr {
                addr: 0x7f00_0000_1000 + 4000,
                rkey: 0x1234
            })
        );
        assert!(w.slice(4000, 97).is_err());
        assert!(w.slice(u64::MAX, 2).is_err());
        assert_eq!(w.slice(4096, 0).unwrap().addr, w.addr + 4096);
        let mut b = w.encode();
        b[0] = 0;
        assert!(RemoteWindow::decode(&b).is_err());
        let bad = RemoteWindow {
            addr: u64::MAX,
            len: 2,
            rkey: 1,
        };
        assert!(RemoteWindow::decode(&bad.encode()).is_err());
    }

    #[test]
    fn status_and_opcode_decoding_never_panics() {
        assert_eq!(WcStatus::from_raw(0), WcStatus::Success);
        assert_eq!(WcStatus::from_raw(5), WcStatus::Flushed);
        assert_eq!(WcStatus::from_raw(10), WcStatus::RemoteAccess);
        assert_eq!(WcStatus::from_raw(12), WcStatus::RetryExceeded);
        assert_eq!(WcStatus::from_raw(13), WcStatus::RnrRetryExceeded);
        assert_eq!(WcStatus::from_raw(1), WcStatus::LocalLength);
        assert_eq!(WcStatus::from_raw(4), WcStatus::LocalProtection);
        assert_eq!(WcStatus::from_raw(9), WcStatus::RemoteInvalidRequest);
        assert_eq!(WcStatus::from_raw(21), WcStatus::General);
        assert_eq!(WcStatus::from_raw(22), WcStatus::Other(22));
        assert_eq!(WcStatus::from_raw(u32::MAX), WcStatus::Other(u32::MAX));
        assert_eq!(WcOpcode::from_raw(0), WcOpcode::Send);
        assert_eq!(WcOpcode::from_raw(1), WcOpcode::RdmaWrite);
        assert_eq!(WcOpcode::from_raw(2), WcOpcode::RdmaRead);
        assert_eq!(WcOpcode::from_raw(128), WcOpcode::Recv);
        assert_eq!(WcOpcode::from_raw(129), WcOpcode::RecvRdmaWithImm);
        assert_eq!(WcOpcode::from_raw(77), WcOpcode::Other(77));
        assert_eq!(QpState::from_raw(6), QpState::Err);
        assert_eq!(QpState::from_raw(0), QpState::Reset);
        assert_eq!(QpState::from_raw(99), QpState::Other(99));
        assert_eq!(PortState::from_raw(4), PortState::Active);
        assert_eq!(PortState::from_raw(1), PortState::Down);
        assert_eq!(PortState::from_raw(42), PortState::Unknown(42));
        assert_eq!(LinkLayer::from_raw(2), LinkLayer::Ethernet);
        assert_eq!(LinkLayer::from_raw(200), LinkLayer::Other(200));
        for v in 0..300 {
            let _ = (
                WcStatus::from_raw(v),
                WcOpcode::from_raw(v),
                QpState::from_raw(v),
            );
        }
    }

    #[test]
    fn access_flags() {
        assert_eq!(AccessFlags::default(), AccessFlags::LOCAL_WRITE);
        let a = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
        assert!(a.contains(AccessFlags::REMOTE_WRITE));
        assert!(!a.contains(AccessFlags::REMOTE_READ));
        assert_eq!(a.bits(), 3);
        assert_eq!(AccessFlags::REMOTE_READ.bits(), 4);
    }

    fn table() -> Vec<GidEntry> {
        let e = |index, gid: Gid, t, nd: &str| GidEntry {
            index,
            gid,
            gid_type: t,
            ndev_ifindex: 3,
            netdev: Some(nd.to_string()),
        };
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        vec![
            e(0, Gid(ll.octets()), GidType::RoceV1, "eth0"),
            e(1, Gid(ll.octets()), GidType::RoceV2, "eth0"),
            e(
                2,
                Gid::from_ip("10.0.0.1".parse().unwrap()),
                GidType::RoceV1,
                "eth0",
            ),
            e(
                3,
                Gid::from_ip("10.0.0.1".parse().unwrap()),
                GidType::RoceV2,
                "eth0",
            ),
            e(
                4,
                Gid::from_ip("fd00::5".parse().unwrap()),
                GidType::RoceV2,
                "eth1",
            ),
        ]
    }

    #[test]
    fn gid_selection_by_ip_and_netdev() {
        let t = table();
        assert_eq!(
            select_roce_v2_by_ip(&t, "10.0.0.1".parse().unwrap())
                .unwrap()
                .index,
            3
        );
        assert_eq!(
            select_roce_v2_by_ip(&t, "fd00::5".parse().unwrap())
                .unwrap()
                .index,
            4
        );
        assert!(matches!(
            select_roce_v2_by_ip(&t, "10.0.0.2".parse().unwrap()),
            Err(Error::GidNotFound(_))
        ));
        assert_eq!(select_roce_v2_by_netdev(&t, "eth0").unwrap().index, 3);
        assert_eq!(select_roce_v2_by_netdev(&t, "eth1").unwrap().index, 4);
        assert!(select_roce_v2_by_netdev(&t, "eth2").is_err());
        // Only a link-local RoCE v2 GID: it is chosen.
        let only_ll = vec![t[1].clone()];
        assert_eq!(select_roce_v2_by_netdev(&only_ll, "eth0").unwrap().index, 1);
    }

    #[test]
    fn gid_text_and_ip() {
        let g = Gid::from_ip("10.0.1.2".parse().unwrap());
        assert_eq!(g.to_string(), "::ffff:10.0.1.2");
        assert_eq!(g.to_ip(), "10.0.1.2".parse::<IpAddr>().unwrap());
        assert!(Gid::default().is_zero());
        assert_eq!(GidType::from_sysfs("RoCE v2\n"), GidType::RoceV2);
        assert_eq!(GidType::from_sysfs("IB/RoCE v1"), GidType::RoceV1);
        assert_eq!(GidType::from_raw(2), GidType::RoceV2);
        assert_eq!(GidType::from_raw(7), GidType::Other(7));
    }
}
