//! Virtual interfaces: attributes, descriptors, posting, completions, slam connect, reset.

use crate::address::ViAddress;
use crate::cq::ViCq;
use crate::credit::{decode_mailbox, encode_mailbox, Credits};
use crate::defaults::Timeouts;
use crate::error::{Error, Result};
use crate::nic::{Nic, Ptag, Segment};
use crate::state::{ConnectAction, ErrorCause, ViState, ViStateMachine};
use ccm_verbs::{
    random_psn, AccessFlags, Completion, InitAttr, MemoryRegion, Mtu, Payload, QpCaps, QpState,
    QueuePair, RemoteAddr, RtrAttr, RtsAttr, SendOp, SendWr, Sge, SharedMemory, WcOpcode, WcStatus,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most scatter/gather segments per descriptor.
pub const MAX_SEGMENTS: usize = 4;
/// Send-queue entries reserved for credit updates (RDMA writes to the peer's mailbox).
pub const CTRL_SLOTS: u32 = 4;

static NEXT_VI: AtomicU64 = AtomicU64::new(1);

/// Bytes of a VI's credit mailbox (one 8-byte word is used).
const MAILBOX_LEN: usize = 8;

/// Reliability level (VIA 1.0 section 2.4). Verbs RC gives reliable delivery: a descriptor
/// completes once the remote NIC acknowledged the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// No guarantees (would be UD/UC): not supported.
    Unreliable,
    /// Delivered exactly once, in order, or the VI breaks (RC).
    ReliableDelivery,
    /// Delivered into the remote memory before completion: not supported by verbs RC.
    ReliableReception,
}

impl Reliability {
    pub(crate) fn code(self) -> u8 {
        match self {
            Reliability::Unreliable => 0,
            Reliability::ReliableDelivery => 1,
            Reliability::ReliableReception => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Reliability> {
        match c {
            0 => Some(Reliability::Unreliable),
            1 => Some(Reliability::ReliableDelivery),
            2 => Some(Reliability::ReliableReception),
            _ => None,
        }
    }
}

/// VI attributes (`VIP_VI_ATTRIBUTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViAttributes {
    /// Only [`Reliability::ReliableDelivery`] is supported.
    pub reliability: Reliability,
    /// Largest transfer of one descriptor, bytes.
    pub max_transfer_size: u32,
    /// Issue RDMA writes, and accept them into exposed memory.
    pub enable_rdma_write: bool,
    /// Issue RDMA reads, and serve them from exposed memory.
    pub enable_rdma_read: bool,
    /// Send descriptors outstanding at most.
    pub send_depth: u16,
    /// Receive descriptors outstanding at most.
    pub recv_depth: u16,
    /// Segments per descriptor (1..=4).
    pub max_segments: u8,
    /// Transport timers.
    pub timeouts: Timeouts,
}

impl Default for ViAttributes {
    fn default() -> Self {
        ViAttributes {
            reliability: Reliability::ReliableDelivery,
            max_transfer_size: 1 << 20,
            enable_rdma_write: false,
            enable_rdma_read: false,
            send_depth: 64,
            recv_depth: 64,
            max_segments: MAX_SEGMENTS as u8,
            timeouts: Timeouts::default(),
        }
    }
}

impl ViAttributes {
    /// Checks the values this implementation supports.
    pub fn validate(&self) -> Result<()> {
        if self.reliability != Reliability::ReliableDelivery {
            return Err(Error::Unsupported("only reliable delivery (RC)"));
        }
        if self.send_depth == 0
            || self.recv_depth == 0
            || self.send_depth > 4096
            || self.recv_depth > 4096
        {
            return Err(Error::InvalidArgument("queue depths must be 1..=4096"));
        }
        if self.max_segments == 0 || self.max_segments as usize > MAX_SEGMENTS {
            return Err(Error::InvalidArgument("max_segments must be 1..=4"));
        }
        if self.max_transfer_size == 0 {
            return Err(Error::InvalidArgument("max_transfer_size 0"));
        }
        self.timeouts.validate()
    }
}

/// A stable VI identity (the VI number, the QPN, changes when a reset recreates the QP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViId(pub u64);

/// What a send descriptor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// SEND into the peer's next receive descriptor (uses a credit).
    Send,
    /// RDMA WRITE to an exposed window of the peer; with immediate data it also consumes a
    /// peer receive descriptor (and a credit).
    RdmaWrite(RemoteAddr),
    /// RDMA READ from an exposed window of the peer into the segments.
    RdmaRead(RemoteAddr),
}

/// A send-queue descriptor: control (id, kind, immediate data) and data segments.
#[derive(Debug, Clone, Copy)]
pub struct SendDesc<'a> {
    /// Returned in the completion.
    pub id: u64,
    /// Operation.
    pub kind: SendKind,
    /// Local memory (all of the VI's tag).
    pub segments: &'a [Segment],
    /// Immediate data (24 bits), delivered with the peer's receive completion.
    pub imm: Option<u32>,
}

impl<'a> SendDesc<'a> {
    /// SEND of `segments`.
    pub fn send(id: u64, segments: &'a [Segment]) -> Self {
        SendDesc {
            id,
            kind: SendKind::Send,
            segments,
            imm: None,
        }
    }
    /// RDMA WRITE of `segments` to `remote`.
    pub fn write(id: u64, remote: RemoteAddr, segments: &'a [Segment]) -> Self {
        SendDesc {
            id,
            kind: SendKind::RdmaWrite(remote),
            segments,
            imm: None,
        }
    }
    /// RDMA READ from `remote` into `segments`.
    pub fn read(id: u64, remote: RemoteAddr, segments: &'a [Segment]) -> Self {
        SendDesc {
            id,
            kind: SendKind::RdmaRead(remote),
            segments,
            imm: None,
        }
    }
    /// With immediate data.
    pub fn with_imm(mut self, imm: u32) -> Self {
        self.imm = Some(imm);
        self
    }
}

/// A receive-queue descriptor.
#[derive(Debug, Clone, Copy)]
pub struct RecvDesc<'a> {
    /// Returned in the completion.
    pub id: u64,
    /// Where the message lands (all of the VI's tag).
    pub segments: &'a [Segment],
}

/// Which work queue a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    /// Send queue.
    Send,
    /// Receive queue.
    Recv,
}

/// What a completed descriptor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedOp {
    /// A SEND.
    Send,
    /// An RDMA WRITE.
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A receive filled by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate (data went to the exposed window).
    RecvRdmaWrite,
}

/// A completed descriptor: its VI, queue, id and completion status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViCompletion {
    /// The VI.
    pub vi: ViId,
    /// The queue.
    pub queue: WorkQueue,
    /// The descriptor's id.
    pub id: u64,
    /// Completion status; anything but success means the VI is in Error.
    pub status: WcStatus,
    /// Operation.
    pub op: CompletedOp,
    /// Bytes received (receives) or read.
    pub byte_len: u32,
    /// Immediate data of the message (receives).
    pub imm: Option<u32>,
}

impl ViCompletion {
    /// True on success.
    pub fn is_success(&self) -> bool {
        self.status == WcStatus::Success
    }
}

// wr_id layout: generation << 32 | RECV | CTRL | slot.
const WR_RECV: u64 = 1 << 31;
const WR_CTRL: u64 = 1 << 30;
const WR_SLOT: u64 = 0xffff;

#[derive(Clone, Copy)]
struct SendSlot {
    id: u64,
    op: CompletedOp,
}

#[derive(Clone, Copy)]
struct RecvSlot {
    id: u64,
    sges: [Sge; MAX_SEGMENTS],
    n: u8,
}

struct ViCore {
    qp: QueuePair,
    sm: ViStateMachine,
    gen: u32,
    psn: u32,
    send_slots: Vec<Option<SendSlot>>,
    send_free: Vec<u16>,
    user_sends: u32,
    recv_slots: Vec<Option<RecvSlot>>,
    recv_free: Vec<u16>,
    /// Receives on the QP.
    recvs_on_qp: u32,
    /// Receives posted while Idle, handed to the QP at slam connect.
    pending: Vec<u16>,
    credits: Credits,
    advertised: u16,
    path_mtu: Option<Mtu>,
    local: Option<ViAddress>,
    /// Credit updates on the send queue.
    ctrl_out: u32,
}

impl ViCore {
    fn outstanding(&self) -> u32 {
        let sends = self.send_slots.iter().filter(|s| s.is_some()).count() as u32;
        sends + self.recvs_on_qp
    }
}

pub(crate) struct ViShared {
    pub(crate) id: ViId,
    ptag: u32,
    attrs: ViAttributes,
    port: u8,
    sgid_index: u8,
    gid: ccm_verbs::Gid,
    interconnect: u8,
    max_rd_atomic: u8,
    max_dest_rd_atomic: u8,
    /// Where the peer writes credit totals (registered on the VI's tag, remote write).
    mailbox: MemoryRegion<Arc<SharedMemory>>,
    mailbox_mem: Arc<SharedMemory>,
    core: Mutex<ViCore>,
}

fn caps(a: &ViAttributes) -> QpCaps {
    QpCaps {
        max_send_wr: a.send_depth as u32 + CTRL_SLOTS,
        max_recv_wr: a.recv_depth as u32,
        max_send_sge: a.max_segments as u32,
        max_recv_sge: a.max_segments as u32,
        max_inline_data: 8,
    }
}

impl ViShared {
    fn lock(&self) -> MutexGuard<'_, ViCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mailbox word as the peer last wrote it (a copy: the device may write it any time).
    fn mailbox_word(&self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.mailbox_mem.read(0, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// True if a credit update is due but every control slot waits for its completion.
    fn update_blocked(&self) -> bool {
        let c = self.lock();
        c.sm.state() == ViState::Connected && c.credits.update_due() && c.ctrl_out >= CTRL_SLOTS
    }

    fn clear_mailbox(&self) -> Result<()> {
        Ok(self.mailbox_mem.write(0, &[0u8; 8])?)
    }

    /// Moves the VI to Error (QP to ERR so every outstanding descriptor is flushed).
    pub(crate) fn fail(&self, cause: ErrorCause) {
        let mut c = self.lock();
        Self::fail_core(&mut c, cause);
    }

    fn fail_core(c: &mut ViCore, cause: ErrorCause) {
        if c.sm.fail(cause) {
            // Best effort: an RC QP that reported an error is in ERR already.
            let _ = c.qp.to_error();
        }
    }

    /// Writes the credit total to the peer's mailbox while due (connected, a control slot
    /// free). The write consumes no receive at the peer and needs no credit.
    fn maybe_send_update(&self, c: &mut ViCore) {
        while c.sm.state() == ViState::Connected
            && c.credits.update_due()
            && c.ctrl_out < CTRL_SLOTS
        {
            let Some(mailbox) = c.sm.remote().map(|r| r.mailbox) else {
                return;
            };
            let Some(slot) = c.send_free.pop() else {
                return;
            };
            let mut next = c.credits;
            let word = encode_mailbox(next.on_update_sent()).to_le_bytes();
            let wr_id = (c.gen as u64) << 32 | WR_CTRL | slot as u64;
            let wr = SendWr::inline(wr_id, SendOp::Write(mailbox), &word);
            match c.qp.post_send_one(&wr) {
                Ok(()) => {
                    c.credits = next;
                    c.ctrl_out += 1;
                    c.send_slots[slot as usize] = Some(SendSlot {
                        id: 0,
                        op: CompletedOp::RdmaWrite,
                    });
                }
                Err(_) => {
                    c.send_free.push(slot);
                    Self::fail_core(c, ErrorCause::QpState);
                    return;
                }
            }
        }
    }

    /// Handles one device completion of this VI; returns what the owner should see.
    pub(crate) fn on_completion(&self, wc: &Completion) -> Option<ViCompletion> {
        let mut c = self.lock();
        let wr = wc.wr_id();
        if (wr >> 32) as u32 != c.gen {
            return None; // from before a reset
        }
        let slot = (wr & WR_SLOT) as usize;
        let status = wc.status();
        if wr & WR_RECV == 0 {
            let s = c.send_slots.get_mut(slot)?.take()?;
            c.send_free.push(slot as u16);
            if !status.is_success() {
                Self::fail_core(&mut c, ErrorCause::Completion(status));
            }
            if wr & WR_CTRL != 0 {
                // A credit update: a control slot came free, maybe another update is due.
                c.ctrl_out = c.ctrl_out.saturating_sub(1);
                self.maybe_send_update(&mut c);
                return None;
            }
            c.user_sends -= 1;
            return Some(ViCompletion {
                vi: self.id,
                queue: WorkQueue::Send,
                id: s.id,
                status,
                op: s.op,
                byte_len: wc.byte_len(),
                imm: None,
            });
        }
        let s = c.recv_slots.get(slot).copied().flatten()?;
        c.recvs_on_qp = c.recvs_on_qp.saturating_sub(1);
        if status.is_success() {
            c.credits.on_receive();
            c.recv_slots[slot] = None;
            c.recv_free.push(slot as u16);
            self.maybe_send_update(&mut c);
            return Some(ViCompletion {
                vi: self.id,
                queue: WorkQueue::Recv,
                id: s.id,
                status,
                op: if wc.opcode() == WcOpcode::RecvRdmaWithImm {
                    CompletedOp::RecvRdmaWrite
                } else {
                    CompletedOp::Recv
                },
                byte_len: wc.byte_len(),
                imm: wc.imm(),
            });
        }
        c.recv_slots[slot] = None;
        c.recv_free.push(slot as u16);
        Self::fail_core(&mut c, ErrorCause::Completion(status));
        Some(ViCompletion {
            vi: self.id,
            queue: WorkQueue::Recv,
            id: s.id,
            status,
            op: CompletedOp::Recv,
            byte_len: 0,
            imm: None,
        })
    }
}

/// A virtual interface (`VIP_VI_HANDLE`): a send and a receive work queue over one RC queue
/// pair, of one protection tag, slam connected to at most one remote VI.
pub struct Vi {
    shared: Arc<ViShared>,
    nic: Nic,
    pd: ccm_verbs::ProtectionDomain,
    send_cq: ViCq,
    recv_cq: ViCq,
}

impl std::fmt::Debug for Vi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Vi({:?}, {}, number {:#x}, {:?})",
            self.shared.id,
            self.nic.name(),
            self.vi_number(),
            self.state()
        )
    }
}

fn check_segments(ptag: u32, max: usize, segs: &[Segment]) -> Result<u64> {
    if segs.len() > max {
        return Err(Error::TooManySegments {
            len: segs.len(),
            max,
        });
    }
    let mut total = 0u64;
    for s in segs {
        if s.ptag != ptag {
            return Err(Error::ProtectionTag {
                vi: ptag,
                segment: s.ptag,
            });
        }
        total += s.len() as u64;
    }
    Ok(total)
}

/// Copies segments into a fixed array (no allocation); returns it and the count.
fn sge_array(segs: &[Segment]) -> Option<[Sge; MAX_SEGMENTS]> {
    let first = segs.first()?.sge;
    let mut a = [first; MAX_SEGMENTS];
    for (d, s) in a.iter_mut().zip(segs) {
        *d = s.sge;
    }
    Some(a)
}

impl Vi {
    pub(crate) fn create(
        nic: &Nic,
        ptag: &Ptag,
        attrs: &ViAttributes,
        send_cq: Option<&ViCq>,
        recv_cq: Option<&ViCq>,
    ) -> Result<Vi> {
        attrs.validate()?;
        let ctx = &nic.inner.ctx;
        if !ptag.pd.context().same(ctx) {
            return Err(Error::NicMismatch(ptag.pd.context().name().to_string()));
        }
        if attrs.max_transfer_size > nic.inner.max_msg {
            return Err(Error::InvalidArgument(
                "max_transfer_size above the port's max message size",
            ));
        }
        let caps = caps(attrs);
        let send_cq = match send_cq {
            Some(c) => c.clone(),
            None => ViCq::new(ctx, caps.max_send_wr, true)?,
        };
        let recv_cq = match recv_cq {
            Some(c) => c.clone(),
            None => ViCq::new(ctx, caps.max_recv_wr, true)?,
        };
        let qp = QueuePair::new_rc(&ptag.pd, send_cq.verbs_cq(), recv_cq.verbs_cq(), caps)?;
        let qpn = qp.qpn();
        let sd = caps.max_send_wr as usize;
        let rd = attrs.recv_depth as usize;
        let dev = &nic.inner.dev;
        let mailbox_mem = SharedMemory::anonymous(MAILBOX_LEN)?;
        let mailbox = MemoryRegion::register(
            &ptag.pd,
            mailbox_mem.clone(),
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        )?;
        let shared = Arc::new(ViShared {
            mailbox,
            mailbox_mem,
            id: ViId(NEXT_VI.fetch_add(1, Ordering::Relaxed)),
            ptag: ptag.id,
            attrs: *attrs,
            port: nic.inner.port,
            sgid_index: nic.inner.gid.index as u8,
            gid: nic.inner.gid.gid,
            interconnect: nic.inner.interconnect,
            max_rd_atomic: dev.max_qp_init_rd_atom.clamp(1, 16) as u8,
            max_dest_rd_atomic: dev.max_qp_rd_atom.clamp(1, 16) as u8,
            core: Mutex::new(ViCore {
                qp,
                sm: ViStateMachine::new(),
                gen: 1,
                psn: random_psn(),
                send_slots: vec![None; sd],
                send_free: (0..sd as u16).rev().collect(),
                user_sends: 0,
                recv_slots: vec![None; rd],
                recv_free: (0..rd as u16).rev().collect(),
                recvs_on_qp: 0,
                pending: Vec::with_capacity(rd),
                credits: Credits::new(0, 0, 0, 1),
                advertised: 0,
                path_mtu: None,
                local: None,
                ctrl_out: 0,
            }),
        });
        send_cq.attach(qpn, &shared, caps.max_send_wr)?;
        if let Err(e) = recv_cq.attach(qpn, &shared, caps.max_recv_wr) {
            send_cq.detach(qpn, caps.max_send_wr);
            return Err(e);
        }
        nic.inner
            .vis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(qpn, Arc::downgrade(&shared));
        Ok(Vi {
            shared,
            nic: nic.clone(),
            pd: ptag.pd.clone(),
            send_cq,
            recv_cq,
        })
    }

    /// Stable identity (what completions name).
    pub fn id(&self) -> ViId {
        self.shared.id
    }
    /// VI number: the current QPN.
    pub fn vi_number(&self) -> u32 {
        self.shared.lock().qp.qpn()
    }
    /// Protection tag id.
    pub fn ptag(&self) -> u32 {
        self.shared.ptag
    }
    /// The NIC.
    pub fn nic(&self) -> &Nic {
        &self.nic
    }
    /// Attributes (`VipQueryVi`).
    pub fn attributes(&self) -> ViAttributes {
        self.shared.attrs
    }
    /// Current state (as the last completion processing or event left it).
    pub fn state(&self) -> ViState {
        self.shared.lock().sm.state()
    }
    /// Why the VI is in Error.
    pub fn error_cause(&self) -> Option<ErrorCause> {
        self.shared.lock().sm.cause()
    }
    /// The remote VI it is (or was, in Error) connected to.
    pub fn remote(&self) -> Option<ViAddress> {
        self.shared.lock().sm.remote().copied()
    }
    /// Path MTU chosen at connect.
    pub fn path_mtu(&self) -> Option<Mtu> {
        self.shared.lock().path_mtu
    }
    /// Send credits available now (diagnostics).
    pub fn send_credits(&self) -> u32 {
        self.shared.lock().credits.available()
    }
    /// Descriptors on the device (sends incl. credit messages, receives on the QP).
    pub fn outstanding(&self) -> u32 {
        self.shared.lock().outstanding()
    }
    /// The send queue's CQ.
    pub fn send_cq(&self) -> &ViCq {
        &self.send_cq
    }
    /// The receive queue's CQ.
    pub fn recv_cq(&self) -> &ViCq {
        &self.recv_cq
    }

    /// Reads the QP state from the device; a QP in ERR moves a connected VI to Error.
    pub fn refresh_state(&self) -> Result<ViState> {
        let mut c = self.shared.lock();
        if c.sm.state() == ViState::Connected && c.qp.state()? == QpState::Err {
            ViShared::fail_core(&mut c, ErrorCause::QpState);
        }
        Ok(c.sm.state())
    }

    /// This VI's address for the peer. While Idle it grants, as initial credits, the
    /// receives posted so far (post receives first, then take the address); connected, it
    /// returns the address the connection was made with.
    pub fn address(&self) -> Result<ViAddress> {
        let mut c = self.shared.lock();
        if let (ViState::Connected, Some(a)) = (c.sm.state(), c.local) {
            return Ok(a);
        }
        if c.sm.state() == ViState::Error {
            return Err(Error::InError);
        }
        let mtu = self.nic.inner.ctx.active_mtu(self.shared.port)?;
        let credits = c.pending.len().min(u16::MAX as usize) as u16;
        c.advertised = credits;
        let a = ViAddress {
            interconnect: self.shared.interconnect,
            vi_number: c.qp.qpn(),
            gid: self.shared.gid,
            psn: c.psn,
            mtu,
            reliability: self.shared.attrs.reliability,
            rdma_write: self.shared.attrs.enable_rdma_write,
            rdma_read: self.shared.attrs.enable_rdma_read,
            credits,
            mailbox: RemoteAddr {
                addr: self.shared.mailbox.addr(),
                rkey: self.shared.mailbox.rkey(),
            },
        };
        c.local = Some(a);
        Ok(a)
    }

    /// Slam connect (`VipConnectRequest`/`Accept` without the handshake): RESET -> INIT,
    /// hand the receives posted while Idle to the QP, INIT -> RTR (path MTU = min of both
    /// ports), RTR -> RTS. Idempotent: the same remote again is a no-op; another remote while
    /// connected is [`Error::AlreadyConnected`]. Call [`address`](Self::address) before (the
    /// peer must have it).
    pub fn slam_connect(&self, remote: &ViAddress) -> Result<()> {
        let sh = &self.shared;
        let mut c = sh.lock();
        if c.sm.check_connect(remote)? == ConnectAction::AlreadyDone {
            return Ok(());
        }
        if remote.interconnect != sh.interconnect {
            return Err(Error::InterconnectMismatch {
                local: sh.interconnect,
                remote: remote.interconnect,
            });
        }
        if remote.reliability != sh.attrs.reliability {
            return Err(Error::AttributeMismatch("reliability level"));
        }
        let Some(local) = c.local else {
            return Err(Error::InvalidArgument(
                "take this VI's address() before connecting",
            ));
        };
        // Remote write is always on at the QP: the peer writes credit updates into the
        // mailbox. The owner's memory stays protected by its registration (remote write only
        // for memory registered with `enable_rdma_write`) and by the VI checks on posting.
        let mut access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
        if sh.attrs.enable_rdma_read {
            access = access | AccessFlags::REMOTE_READ;
        }
        if let Err(e) = c.qp.to_init(&InitAttr {
            port: sh.port,
            pkey_index: 0,
            access,
        }) {
            let _ = c.qp.reset();
            return Err(e.into());
        }
        // Receives before RTR: the peer may send the moment it reaches RTS.
        let mut i = 0;
        while i < c.pending.len() {
            let slot = c.pending[i];
            let Some(s) = c.recv_slots[slot as usize] else {
                i += 1;
                continue;
            };
            let wr_id = (c.gen as u64) << 32 | WR_RECV | slot as u64;
            if let Err(e) = c.qp.post_recv_one(wr_id, &s.sges[..s.n as usize]) {
                ViShared::fail_core(&mut c, ErrorCause::ConnectFailed);
                return Err(e.into());
            }
            c.recvs_on_qp += 1;
            i += 1;
        }
        c.pending.clear();
        let t = sh.attrs.timeouts;
        let rtr = RtrAttr {
            port: sh.port,
            sgid_index: sh.sgid_index,
            path_mtu: None,
            max_dest_rd_atomic: sh.max_dest_rd_atomic,
            min_rnr_timer: t.min_rnr_timer,
            ..RtrAttr::default()
        };
        let mtu = match c.qp.to_rtr(&remote.endpoint(), &rtr) {
            Ok(m) => m,
            Err(e) => {
                ViShared::fail_core(&mut c, ErrorCause::ConnectFailed);
                return Err(e.into());
            }
        };
        let rts = RtsAttr {
            timeout: t.ack_timeout,
            retry_cnt: t.retry_cnt,
            rnr_retry: t.rnr_retry,
            max_rd_atomic: sh.max_rd_atomic,
        };
        if let Err(e) = c.qp.to_rts(local.psn, &rts) {
            ViShared::fail_core(&mut c, ErrorCause::ConnectFailed);
            return Err(e.into());
        }
        c.path_mtu = Some(mtu);
        c.sm.connected(*remote)?;
        let advertised = c.advertised as u32;
        let threshold = (sh.attrs.recv_depth as u32 / 4).max(1);
        c.credits = Credits::new(remote.credits as u32, advertised, c.recvs_on_qp, threshold);
        sh.maybe_send_update(&mut c);
        Ok(())
    }

    /// `VipPostRecv`. Idle: kept and handed to the QP at slam connect. Connected: posted now
    /// (it becomes a credit for the peer). Error: refused.
    pub fn post_recv(&self, d: &RecvDesc<'_>) -> Result<()> {
        let sh = &self.shared;
        check_segments(sh.ptag, sh.attrs.max_segments as usize, d.segments)?;
        let sges = sge_array(d.segments);
        let mut c = sh.lock();
        let state = c.sm.state();
        if state == ViState::Error {
            return Err(Error::InError);
        }
        let Some(slot) = c.recv_free.pop() else {
            return Err(Error::QueueFull("receive"));
        };
        // A zero-segment receive takes zero-length messages; any Sge fills the unused array.
        let rec = match sges {
            Some(sges) => RecvSlot {
                id: d.id,
                sges,
                n: d.segments.len() as u8,
            },
            None => {
                let any = c.recv_slots.iter().flatten().next().map(|s| s.sges);
                match any {
                    Some(sges) => RecvSlot {
                        id: d.id,
                        sges,
                        n: 0,
                    },
                    None => {
                        c.recv_free.push(slot);
                        return Err(Error::InvalidDescriptor("receive without segments"));
                    }
                }
            }
        };
        c.recv_slots[slot as usize] = Some(rec);
        if state == ViState::Idle {
            c.pending.push(slot);
            return Ok(());
        }
        let wr_id = (c.gen as u64) << 32 | WR_RECV | slot as u64;
        if let Err(e) = c.qp.post_recv_one(wr_id, &rec.sges[..rec.n as usize]) {
            c.recv_slots[slot as usize] = None;
            c.recv_free.push(slot);
            return Err(e.into());
        }
        c.recvs_on_qp += 1;
        c.credits.on_repost();
        sh.maybe_send_update(&mut c);
        drop(c);
        self.pump()
    }

    /// If a credit update waits for a control slot, reaps the send CQ (whose credit-update
    /// completions free the slots and send the update). Called by the receive-side calls, so
    /// an owner that only receives still returns credits.
    fn pump(&self) -> Result<()> {
        if self.shared.update_blocked() {
            self.send_cq.process()?;
        }
        Ok(())
    }

    /// `VipPostSend`. Checks tag, segment count, size, RDMA enables and immediate size
    /// locally; a message that consumes a peer receive needs a credit
    /// ([`Error::NoCredits`] if none after looking for credit updates).
    pub fn post_send(&self, d: &SendDesc<'_>) -> Result<()> {
        let sh = &self.shared;
        let total = check_segments(sh.ptag, sh.attrs.max_segments as usize, d.segments)?;
        if total > sh.attrs.max_transfer_size as u64 {
            return Err(Error::TransferTooLarge {
                len: total,
                max: sh.attrs.max_transfer_size,
            });
        }
        let consumes = match d.kind {
            SendKind::Send => true,
            SendKind::RdmaWrite(_) => d.imm.is_some(),
            SendKind::RdmaRead(_) => {
                if d.imm.is_some() {
                    return Err(Error::InvalidDescriptor(
                        "RDMA read carries no immediate data",
                    ));
                }
                false
            }
        };
        let sges = sge_array(d.segments);
        let n = d.segments.len();
        let mut c = sh.lock();
        if c.sm.state() != ViState::Connected {
            return Err(if c.sm.state() == ViState::Error {
                Error::InError
            } else {
                Error::NotConnected(c.sm.state())
            });
        }
        let Some(remote) = c.sm.remote().copied() else {
            return Err(Error::NotConnected(c.sm.state()));
        };
        match d.kind {
            SendKind::RdmaWrite(_) if !(sh.attrs.enable_rdma_write && remote.rdma_write) => {
                return Err(Error::RdmaDisabled("write"));
            }
            SendKind::RdmaRead(_) if !(sh.attrs.enable_rdma_read && remote.rdma_read) => {
                return Err(Error::RdmaDisabled("read"));
            }
            _ => {}
        }
        if c.user_sends >= sh.attrs.send_depth as u32 {
            return Err(Error::QueueFull("send"));
        }
        if consumes && !c.credits.can_send() {
            // Out of credit: look at the mailbox for the peer's latest total.
            if let Some(total) = decode_mailbox(sh.mailbox_word()?) {
                c.credits.on_mailbox(total);
            }
            if !c.credits.can_send() {
                return Err(Error::NoCredits);
            }
        }
        let Some(slot) = c.send_free.pop() else {
            return Err(Error::QueueFull("send"));
        };
        let (op, done) = match (d.kind, d.imm) {
            (SendKind::Send, None) => (SendOp::Send, CompletedOp::Send),
            (SendKind::Send, Some(i)) => (SendOp::SendWithImm(i), CompletedOp::Send),
            (SendKind::RdmaWrite(r), Some(i)) => {
                (SendOp::WriteWithImm(r, i), CompletedOp::RdmaWrite)
            }
            (SendKind::RdmaWrite(r), None) => (SendOp::Write(r), CompletedOp::RdmaWrite),
            (SendKind::RdmaRead(r), _) => (SendOp::Read(r), CompletedOp::RdmaRead),
        };
        let wr_id = (c.gen as u64) << 32 | slot as u64;
        let empty: [Sge; 0] = [];
        let list: &[Sge] = match &sges {
            Some(a) => &a[..n],
            None => &empty,
        };
        let wr = SendWr {
            wr_id,
            op,
            payload: Payload::Sges(list),
            signaled: true,
            fence: false,
            solicited: false,
        };
        if let Err(e) = c.qp.post_send_one(&wr) {
            c.send_free.push(slot);
            return Err(e.into());
        }
        if consumes {
            c.credits.on_sent();
        }
        c.send_slots[slot as usize] = Some(SendSlot { id: d.id, op: done });
        c.user_sends += 1;
        Ok(())
    }

    fn private(&self, q: WorkQueue) -> Result<&ViCq> {
        match q {
            WorkQueue::Send if self.send_cq.inner.private => Ok(&self.send_cq),
            WorkQueue::Recv if self.recv_cq.inner.private => Ok(&self.recv_cq),
            WorkQueue::Send => Err(Error::QueueOnSharedCq("send")),
            WorkQueue::Recv => Err(Error::QueueOnSharedCq("receive")),
        }
    }

    /// `VipSendDone` (queue with a private CQ).
    pub fn send_done(&self) -> Result<Option<ViCompletion>> {
        self.private(WorkQueue::Send)?.done()
    }
    /// `VipSendWait`: spin-then-block, bounded.
    pub fn send_wait(&self, timeout: Duration) -> Result<Option<ViCompletion>> {
        self.private(WorkQueue::Send)?.wait(timeout)
    }
    /// `VipRecvDone` (queue with a private CQ).
    pub fn recv_done(&self) -> Result<Option<ViCompletion>> {
        let cq = self.private(WorkQueue::Recv)?;
        self.pump()?;
        cq.done()
    }
    /// `VipRecvWait`: spin-then-block, bounded.
    pub fn recv_wait(&self, timeout: Duration) -> Result<Option<ViCompletion>> {
        let cq = self.private(WorkQueue::Recv)?;
        self.pump()?;
        cq.wait(timeout)
    }

    /// `VipDisconnect`: Connected -> (descriptors flushed) -> Idle. Same as [`reset`](Self::reset).
    pub fn disconnect(&self, drain: Duration) -> Result<()> {
        self.reset(drain)
    }

    /// Returns the VI to Idle: moves the QP to ERR so every outstanding descriptor completes
    /// (flushed; collect them from the CQs), waits up to `drain` for the device to flush, then
    /// resets the QP for reuse with a fresh PSN; if the device refuses, recreates it.
    pub fn reset(&self, drain: Duration) -> Result<()> {
        self.reset_inner(drain, false)
    }

    /// Like [`reset`](Self::reset) but always recreates the QP (new VI number), so a peer
    /// holding the old address can no longer reach this VI.
    pub fn reset_recreate(&self, drain: Duration) -> Result<()> {
        self.reset_inner(drain, true)
    }

    fn reset_inner(&self, drain: Duration, recreate: bool) -> Result<()> {
        let sh = &self.shared;
        {
            let mut c = sh.lock();
            if c.sm.state() == ViState::Connected {
                ViShared::fail_core(&mut c, ErrorCause::Disconnected);
            } else if c.sm.state() == ViState::Error {
                let _ = c.qp.to_error();
            }
        }
        let deadline = Instant::now() + drain;
        loop {
            self.send_cq.process()?;
            self.recv_cq.process()?;
            if sh.lock().outstanding() == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout("flush of outstanding descriptors"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut c = sh.lock();
        let reused = !recreate && c.qp.reset().is_ok();
        if !reused {
            let caps = caps(&sh.attrs);
            let qp = QueuePair::new_rc(
                &self.pd,
                self.send_cq.verbs_cq(),
                self.recv_cq.verbs_cq(),
                caps,
            )?;
            let (old, new) = (c.qp.qpn(), qp.qpn());
            c.qp = qp;
            self.send_cq.rebind(old, new, sh);
            self.recv_cq.rebind(old, new, sh);
            let mut vis = self.nic.inner.vis.lock().unwrap_or_else(|e| e.into_inner());
            vis.remove(&old);
            vis.insert(new, Arc::downgrade(sh));
        }
        // Totals of the old connection must not count for the next one.
        sh.clear_mailbox()?;
        c.gen = c.gen.wrapping_add(1);
        c.psn = random_psn();
        c.sm.reset();
        c.credits = Credits::new(0, 0, 0, 1);
        c.advertised = 0;
        c.path_mtu = None;
        c.local = None;
        // Receives kept while Idle stay for the next connect; nothing else is outstanding.
        Ok(())
    }
}

impl Drop for Vi {
    fn drop(&mut self) {
        let qpn = self.shared.lock().qp.qpn();
        let caps = caps(&self.shared.attrs);
        self.send_cq.detach(qpn, caps.max_send_wr);
        self.recv_cq.detach(qpn, caps.max_recv_wr);
        self.nic
            .inner
            .vis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&qpn);
    }
}

/// True if both CQs are the same object.
pub fn same_cq(a: &ViCq, b: &ViCq) -> bool {
    a.same(b)
}
