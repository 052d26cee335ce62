//! Reliable-connected queue pairs: explicit state transitions, query, and allocation-free posting.

use crate::cq::CompletionQueue;
use crate::device::ProtectionDomain;
use crate::error::{verb_errno, verb_rc, Error, Result};
use crate::mr::Sge;
use crate::types::{AccessFlags, Endpoint, Gid, Mtu, QpState, RemoteAddr, MAX_24BIT};
use ibverbs_sys as sys;
use std::mem::MaybeUninit;

/// Requested queue sizes. The device may round them up; [`QueuePair::caps`] has the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Scatter/gather entries per send request.
    pub max_send_sge: u32,
    /// Scatter/gather entries per receive request.
    pub max_recv_sge: u32,
    /// Largest inline payload.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

/// Attributes of RESET -> INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitAttr {
    /// Port number (1-based).
    pub port: u8,
    /// P_Key index.
    pub pkey_index: u16,
    /// What the peer may do to this QP's memory (remote write/read). Default: nothing remote.
    pub access: AccessFlags,
}

impl Default for InitAttr {
    fn default() -> Self {
        InitAttr {
            port: 1,
            pkey_index: 0,
            access: AccessFlags::LOCAL_WRITE,
        }
    }
}

/// Attributes of INIT -> RTR (besides the remote endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtrAttr {
    /// Local port (1-based).
    pub port: u8,
    /// Index of the local (source) GID: select it with [`crate::Context::gid_by_ip`].
    pub sgid_index: u8,
    /// Path MTU; `None` = min(local active MTU, remote MTU). An explicit value above either is
    /// refused with [`Error::MtuMismatch`].
    pub path_mtu: Option<Mtu>,
    /// Outstanding RDMA READs this QP accepts as responder.
    pub max_dest_rd_atomic: u8,
    /// RNR NAK timer code sent to a peer that finds no receive posted (0..31, 12 = 0.64 ms).
    pub min_rnr_timer: u8,
    /// Service level.
    pub sl: u8,
    /// Traffic class (DSCP/ECN byte).
    pub traffic_class: u8,
    /// Hop limit (TTL).
    pub hop_limit: u8,
    /// Flow label.
    pub flow_label: u32,
}

impl Default for RtrAttr {
    fn default() -> Self {
        RtrAttr {
            port: 1,
            sgid_index: 0,
            path_mtu: None,
            max_dest_rd_atomic: 16,
            min_rnr_timer: 12,
            sl: 0,
            traffic_class: 0,
            hop_limit: 64,
            flow_label: 0,
        }
    }
}

/// Attributes of RTR -> RTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtsAttr {
    /// Local timeout code: 4.096 us * 2^timeout per try (14 = 67 ms). 0 = infinite: avoid.
    pub timeout: u8,
    /// Transport retries (0..7; on rxe 7 means forever).
    pub retry_cnt: u8,
    /// RNR retries (0..7; 7 means forever).
    pub rnr_retry: u8,
    /// Outstanding RDMA READs this QP initiates.
    pub max_rd_atomic: u8,
}

impl Default for RtsAttr {
    fn default() -> Self {
        RtsAttr {
            timeout: 14,
            retry_cnt: 6,
            rnr_retry: 6,
            max_rd_atomic: 16,
        }
    }
}

/// What [`QueuePair::query`] reports, read from the device (not cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpAttr {
    /// Current state.
    pub state: QpState,
    /// Path MTU (`None` if unset or unknown).
    pub path_mtu: Option<Mtu>,
    /// Next receive PSN.
    pub rq_psn: u32,
    /// Next send PSN.
    pub sq_psn: u32,
    /// Remote QPN.
    pub dest_qp_num: u32,
    /// Access flags.
    pub access: u32,
    /// Timeout code.
    pub timeout: u8,
    /// Retry count.
    pub retry_cnt: u8,
    /// RNR retry count.
    pub rnr_retry: u8,
    /// Min RNR timer code.
    pub min_rnr_timer: u8,
    /// Outstanding READs initiated.
    pub max_rd_atomic: u8,
    /// Outstanding READs accepted.
    pub max_dest_rd_atomic: u8,
    /// Port.
    pub port: u8,
    /// Actual queue sizes.
    pub caps: QpCaps,
}

/// The operation of a send work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data (host order; sent big-endian).
    SendWithImm(u32),
    /// RDMA WRITE to the remote address.
    Write(RemoteAddr),
    /// RDMA WRITE with immediate (host order): consumes a receive at the peer.
    WriteWithImm(RemoteAddr, u32),
    /// RDMA READ from the remote address into the local entries.
    Read(RemoteAddr),
}

/// Where a send's local data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Registered memory, as a scatter/gather list.
    Sges(&'a [Sge]),
    /// Bytes copied into the work request at post time (inline; no registration needed;
    /// at most the QP's `max_inline_data`). Not valid for READ.
    Inline(&'a [u8]),
}

/// One send work request. Built on the caller's stack; posting copies it into a stack
/// `ibv_send_wr` array, never the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Local data.
    pub payload: Payload<'a>,
    /// Generate a completion (unsignalled requests complete silently; signal at least one in
    /// every send-queue-depth requests).
    pub signaled: bool,
    /// Wait for earlier READs before this one.
    pub fence: bool,
    /// Ask for a solicited event at the peer.
    pub solicited: bool,
}

impl<'a> SendWr<'a> {
    /// A signalled request with `op` over `sges`.
    pub fn new(wr_id: u64, op: SendOp, sges: &'a [Sge]) -> Self {
        SendWr {
            wr_id,
            op,
            payload: Payload::Sges(sges),
            signaled: true,
            fence: false,
            solicited: false,
        }
    }
    /// A signalled request with `op` over inline bytes.
    pub fn inline(wr_id: u64, op: SendOp, data: &'a [u8]) -> Self {
        SendWr {
            wr_id,
            op,
            payload: Payload::Inline(data),
            signaled: true,
            fence: false,
            solicited: false,
        }
    }
    /// Same request, unsignalled.
    pub fn unsignaled(mut self) -> Self {
        self.signaled = false;
        self
    }
    /// Same request, asking for a solicited event at the peer if `yes` (a SEND or WRITE_WITH_IMM: the
    /// peer's receive completion then wakes a thread waiting on a CQ armed for solicited events only).
    pub fn solicit(mut self, yes: bool) -> Self {
        self.solicited = yes;
        self
    }
}

/// One receive work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where the incoming message lands.
    pub sges: &'a [Sge],
}

/// Work requests linked per post call (longer lists are posted in chunks of this many).
pub const POST_CHUNK: usize = 16;

type PostSendFn = unsafe extern "C" fn(
    *mut sys::ibv_qp,
    *mut sys::ibv_send_wr,
    *mut *mut sys::ibv_send_wr,
) -> i32;
type PostRecvFn = unsafe extern "C" fn(
    *mut sys::ibv_qp,
    *mut sys::ibv_recv_wr,
    *mut *mut sys::ibv_recv_wr,
) -> i32;

/// An RC queue pair. Keeps its PD and CQs (and so its device context) alive.
///
/// All methods take `&self`: posting from several threads is safe (providers lock the queues),
/// but ordering between threads is the caller's business.
pub struct QueuePair {
    qp: *mut sys::ibv_qp,
    post_send_fn: PostSendFn,
    post_recv_fn: PostRecvFn,
    caps: QpCaps,
    pd: ProtectionDomain,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
}

// SAFETY: the QP pointer is owned; libibverbs QPs may be used from any thread.
unsafe impl Send for QueuePair {}
// SAFETY: posting/modifying are thread safe in the providers; no Rust-side mutable state.
unsafe impl Sync for QueuePair {}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: live QP destroyed once; PD and CQs (fields) outlive this call.
        unsafe {
            sys::ibv_destroy_qp(self.qp);
        }
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QueuePair({}, qpn {})",
            self.pd.context().name(),
            self.qpn()
        )
    }
}

fn zeroed_attr() -> sys::ibv_qp_attr {
    // SAFETY: ibv_qp_attr is plain integers, integer-typed enums and a GID union: all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl QueuePair {
    /// Creates an RC QP (in RESET) on `pd` with the given CQs and sizes.
    pub fn new_rc(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
    ) -> Result<QueuePair> {
        if !pd.context().same(send_cq.context()) || !pd.context().same(recv_cq.context()) {
            return Err(Error::ContextMismatch);
        }
        let mut init = sys::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: send_cq.inner.cq,
            recv_cq: recv_cq.inner.cq,
            srq: std::ptr::null_mut(),
            cap: sys::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
            },
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: valid PD and CQs of the same context; `init` is fully initialised.
        let qp = unsafe { sys::ibv_create_qp(pd.raw(), &mut init) };
        if qp.is_null() {
            return Err(verb_errno("ibv_create_qp"));
        }
        // SAFETY: the provider filled the context ops at open time.
        let ops = unsafe { &(*(*qp).context).ops };
        let (Some(ps), Some(pr)) = (ops.post_send, ops.post_recv) else {
            // SAFETY: destroy the QP we just created.
            unsafe { sys::ibv_destroy_qp(qp) };
            return Err(Error::Verb {
                verb: "ibv_post_send",
                errno: libc::ENOSYS,
            });
        };
        let c = init.cap;
        Ok(QueuePair {
            qp,
            post_send_fn: ps,
            post_recv_fn: pr,
            caps: QpCaps {
                max_send_wr: c.max_send_wr,
                max_recv_wr: c.max_recv_wr,
                max_send_sge: c.max_send_sge,
                max_recv_sge: c.max_recv_sge,
                max_inline_data: c.max_inline_data,
            },
            pd: pd.clone(),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
        })
    }

    /// QP number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: live QP.
        unsafe { (*self.qp).qp_num }
    }
    /// Actual queue sizes (as granted at creation).
    pub fn caps(&self) -> QpCaps {
        self.caps
    }
    /// Protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }
    /// Send CQ.
    pub fn send_cq(&self) -> &CompletionQueue {
        &self.send_cq
    }
    /// Receive CQ.
    pub fn recv_cq(&self) -> &CompletionQueue {
        &self.recv_cq
    }

    /// This QP's endpoint for the peer: `gid` (select it by address), a fresh `psn` (see
    /// [`crate::random_psn`]) and the active MTU of `port` (queried now; port must be active).
    pub fn endpoint(&self, port: u8, gid: Gid, psn: u32) -> Result<Endpoint> {
        if psn > MAX_24BIT {
            return Err(Error::InvalidArgument("PSN above 24 bits"));
        }
        let mtu = self.pd.context().active_mtu(port)?;
        Ok(Endpoint {
            gid,
            qpn: self.qpn(),
            psn,
            mtu,
        })
    }

    fn modify(&self, attr: &mut sys::ibv_qp_attr, mask: sys::ibv_qp_attr_mask) -> Result<()> {
        // SAFETY: live QP, initialised attr; the mask names only fields we set.
        let rc = unsafe { sys::ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        verb_rc("ibv_modify_qp", rc)
    }

    /// RESET -> INIT.
    pub fn to_init(&self, a: &InitAttr) -> Result<()> {
        use sys::ibv_qp_attr_mask as m;
        let mut attr = zeroed_attr();
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = a.pkey_index;
        attr.port_num = a.port;
        attr.qp_access_flags = a.access.bits();
        self.modify(
            &mut attr,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
        )
    }

    /// The path MTU INIT -> RTR would use with `remote`: min(local active, remote), or the
    /// explicit `requested` value if both sides can take it; otherwise [`Error::MtuMismatch`].
    pub fn path_mtu(local: Mtu, remote: Mtu, requested: Option<Mtu>) -> Result<Mtu> {
        let fit = local.min(remote);
        match requested {
            None => Ok(fit),
            Some(r) if r <= fit => Ok(r),
            Some(r) => Err(Error::MtuMismatch {
                local,
                remote,
                requested: r,
            }),
        }
    }

    /// INIT -> RTR toward `remote` (QPN, PSN, GID, MTU). The path MTU is checked against the
    /// local port's active MTU before the device is touched. Returns the path MTU used.
    pub fn to_rtr(&self, remote: &Endpoint, a: &RtrAttr) -> Result<Mtu> {
        use sys::ibv_qp_attr_mask as m;
        remote.validate()?;
        let local = self.pd.context().active_mtu(a.port)?;
        let mtu = Self::path_mtu(local, remote.mtu, a.path_mtu)?;
        let mut attr = zeroed_attr();
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = mtu.raw();
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = a.max_dest_rd_atomic;
        attr.min_rnr_timer = a.min_rnr_timer;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid.raw = remote.gid.0;
        attr.ah_attr.grh.sgid_index = a.sgid_index;
        attr.ah_attr.grh.hop_limit = a.hop_limit;
        attr.ah_attr.grh.traffic_class = a.traffic_class;
        attr.ah_attr.grh.flow_label = a.flow_label;
        attr.ah_attr.sl = a.sl;
        attr.ah_attr.port_num = a.port;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
        )?;
        Ok(mtu)
    }

    /// RTR -> RTS, sending from `sq_psn` (the PSN of this side's [`Endpoint`]).
    pub fn to_rts(&self, sq_psn: u32, a: &RtsAttr) -> Result<()> {
        use sys::ibv_qp_attr_mask as m;
        if sq_psn > MAX_24BIT {
            return Err(Error::InvalidArgument("PSN above 24 bits"));
        }
        let mut attr = zeroed_attr();
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = sq_psn;
        attr.timeout = a.timeout;
        attr.retry_cnt = a.retry_cnt;
        attr.rnr_retry = a.rnr_retry;
        attr.max_rd_atomic = a.max_rd_atomic;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
        )
    }

    /// RESET -> INIT -> RTR -> RTS in one call ("slam connect"): `local` is this QP's
    /// endpoint (its PSN is the send PSN), `remote` the peer's. Post receives between
    /// [`to_init`](Self::to_init) and RTR if the peer may send at once; this helper cannot.
    pub fn connect(
        &self,
        local: &Endpoint,
        remote: &Endpoint,
        init: &InitAttr,
        rtr: &RtrAttr,
        rts: &RtsAttr,
    ) -> Result<Mtu> {
        self.to_init(init)?;
        let mtu = self.to_rtr(remote, rtr)?;
        self.to_rts(local.psn, rts)?;
        Ok(mtu)
    }

    /// Any state -> ERR: outstanding requests complete with [`crate::WcStatus::Flushed`].
    pub fn to_error(&self) -> Result<()> {
        let mut attr = zeroed_attr();
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut attr, sys::ibv_qp_attr_mask::IBV_QP_STATE)
    }

    /// Any state -> RESET (queues emptied; reconnect from INIT with fresh PSNs).
    pub fn reset(&self) -> Result<()> {
        let mut attr = zeroed_attr();
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut attr, sys::ibv_qp_attr_mask::IBV_QP_STATE)
    }

    /// Reads the QP's attributes from the device.
    pub fn query(&self) -> Result<QpAttr> {
        use sys::ibv_qp_attr_mask as m;
        let mut attr = zeroed_attr();
        // SAFETY: ibv_qp_init_attr is plain data; all-zero is valid.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = m::IBV_QP_STATE
            | m::IBV_QP_CUR_STATE
            | m::IBV_QP_PATH_MTU
            | m::IBV_QP_RQ_PSN
            | m::IBV_QP_SQ_PSN
            | m::IBV_QP_DEST_QPN
            | m::IBV_QP_ACCESS_FLAGS
            | m::IBV_QP_TIMEOUT
            | m::IBV_QP_RETRY_CNT
            | m::IBV_QP_RNR_RETRY
            | m::IBV_QP_MIN_RNR_TIMER
            | m::IBV_QP_MAX_QP_RD_ATOMIC
            | m::IBV_QP_MAX_DEST_RD_ATOMIC
            | m::IBV_QP_PORT
            | m::IBV_QP_CAP;
        // SAFETY: live QP and valid out structs; every field written is a plain integer type.
        let rc = unsafe { sys::ibv_query_qp(self.qp, &mut attr, mask.0 as i32, &mut init) };
        verb_rc("ibv_query_qp", rc)?;
        Ok(QpAttr {
            state: QpState::from_raw(attr.qp_state),
            path_mtu: Mtu::from_raw(attr.path_mtu),
            rq_psn: attr.rq_psn,
            sq_psn: attr.sq_psn,
            dest_qp_num: attr.dest_qp_num,
            access: attr.qp_access_flags,
            timeout: attr.timeout,
            retry_cnt: attr.retry_cnt,
            rnr_retry: attr.rnr_retry,
            min_rnr_timer: attr.min_rnr_timer,
            max_rd_atomic: attr.max_rd_atomic,
            max_dest_rd_atomic: attr.max_dest_rd_atomic,
            port: attr.port_num,
            caps: QpCaps {
                max_send_wr: attr.cap.max_send_wr,
                max_recv_wr: attr.cap.max_recv_wr,
                max_send_sge: attr.cap.max_send_sge,
                max_recv_sge: attr.cap.max_recv_sge,
                max_inline_data: attr.cap.max_inline_data,
            },
        })
    }

    /// Current state, read from the device.
    pub fn state(&self) -> Result<QpState> {
        Ok(self.query()?.state)
    }

    /// Posts send work requests, linked into chains of up to [`POST_CHUNK`] built on the
    /// stack (no allocation). On a rejected request returns [`Error::Post`] with its index;
    /// the requests before it were posted.
    pub fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<()> {
        let mut base = 0;
        for chunk in wrs.chunks(POST_CHUNK) {
            self.post_send_chunk(chunk, base)?;
            base += chunk.len();
        }
        Ok(())
    }

    /// Posts one send work request (no allocation).
    #[inline]
    pub fn post_send_one(&self, wr: &SendWr<'_>) -> Result<()> {
        self.post_send_chunk(std::slice::from_ref(wr), 0)
    }

    fn post_send_chunk(&self, chunk: &[SendWr<'_>], base: usize) -> Result<()> {
        debug_assert!(chunk.len() <= POST_CHUNK);
        let mut raw: [MaybeUninit<sys::ibv_send_wr>; POST_CHUNK] =
            [const { MaybeUninit::uninit() }; POST_CHUNK];
        let mut inline_sge: [MaybeUninit<sys::ibv_sge>; POST_CHUNK] =
            [const { MaybeUninit::uninit() }; POST_CHUNK];
        let n = chunk.len();
        if n == 0 {
            return Ok(());
        }
        let raw_ptr = raw.as_mut_ptr() as *mut sys::ibv_send_wr;
        for (i, wr) in chunk.iter().enumerate() {
            let mut flags = 0u32;
            if wr.signaled {
                flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if wr.fence {
                flags |= sys::ibv_send_flags::IBV_SEND_FENCE.0;
            }
            if wr.solicited {
                flags |= sys::ibv_send_flags::IBV_SEND_SOLICITED.0;
            }
            let (sg_list, num_sge) = match wr.payload {
                Payload::Sges(s) => {
                    if s.len() > self.caps.max_send_sge as usize {
                        return Err(Error::TooManySges {
                            len: s.len(),
                            max: self.caps.max_send_sge,
                        });
                    }
                    (s.as_ptr() as *mut sys::ibv_sge, s.len() as i32)
                }
                Payload::Inline(d) => {
                    if matches!(wr.op, SendOp::Read(_)) {
                        return Err(Error::InvalidArgument("inline payload on an RDMA READ"));
                    }
                    if d.len() > self.caps.max_inline_data as usize {
                        return Err(Error::InlineTooLong {
                            len: d.len(),
                            max: self.caps.max_inline_data,
                        });
                    }
                    flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
                    inline_sge[i].write(sys::ibv_sge {
                        addr: d.as_ptr() as u64,
                        length: d.len() as u32,
                        lkey: 0,
                    });
                    (inline_sge[i].as_mut_ptr(), 1)
                }
            };
            let (opcode, imm, remote) = match wr.op {
                SendOp::Send => (sys::ibv_wr_opcode::IBV_WR_SEND, 0, None),
                SendOp::SendWithImm(v) => {
                    (sys::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, v.to_be(), None)
                }
                SendOp::Write(r) => (sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE, 0, Some(r)),
                SendOp::WriteWithImm(r, v) => (
                    sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
                    v.to_be(),
                    Some(r),
                ),
                SendOp::Read(r) => (sys::ibv_wr_opcode::IBV_WR_RDMA_READ, 0, Some(r)),
            };
            // SAFETY: ibv_send_wr is plain data (pointers, integers, unions of those): all-zero
            // is a valid value.
            let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
            w.wr_id = wr.wr_id;
            w.next = if i + 1 < n {
                // SAFETY: index i+1 < POST_CHUNK, inside `raw`.
                unsafe { raw_ptr.add(i + 1) }
            } else {
                std::ptr::null_mut()
            };
            w.sg_list = sg_list;
            w.num_sge = num_sge;
            w.opcode = opcode;
            w.send_flags = flags;
            w.__bindgen_anon_1.imm_data = imm;
            if let Some(r) = remote {
                w.wr.rdma.remote_addr = r.addr;
                w.wr.rdma.rkey = r.rkey;
            }
            raw[i].write(w);
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: `raw[..n]` are initialised and linked; their sg_lists point to caller Sges
        // (live for this call, registered memory checked by the device by lkey) or to inline
        // bytes borrowed for this call, which the provider copies before returning.
        let rc = unsafe { (self.post_send_fn)(self.qp, raw_ptr, &mut bad) };
        if rc != 0 {
            let index = if bad.is_null() {
                0
            } else {
                // SAFETY: `bad` points into `raw` on failure.
                (unsafe { bad.offset_from(raw_ptr) }).clamp(0, n as isize) as usize
            };
            return Err(Error::Post {
                verb: "ibv_post_send",
                errno: if rc < 0 { -rc } else { rc },
                index: base + index,
            });
        }
        Ok(())
    }

    /// Posts receive work requests (chains of up to [`POST_CHUNK`] on the stack).
    pub fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<()> {
        let mut base = 0;
        for chunk in wrs.chunks(POST_CHUNK) {
            self.post_recv_chunk(chunk, base)?;
            base += chunk.len();
        }
        Ok(())
    }

    /// Posts one receive of `sges` (no allocation).
    #[inline]
    pub fn post_recv_one(&self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        self.post_recv_chunk(&[RecvWr { wr_id, sges }], 0)
    }

    fn post_recv_chunk(&self, chunk: &[RecvWr<'_>], base: usize) -> Result<()> {
        let mut raw: [MaybeUninit<sys::ibv_recv_wr>; POST_CHUNK] =
            [const { MaybeUninit::uninit() }; POST_CHUNK];
        let n = chunk.len();
        if n == 0 {
            return Ok(());
        }
        let raw_ptr = raw.as_mut_ptr() as *mut sys::ibv_recv_wr;
        for (i, wr) in chunk.iter().enumerate() {
            if wr.sges.len() > self.caps.max_recv_sge as usize {
                return Err(Error::TooManySges {
                    len: wr.sges.len(),
                    max: self.caps.max_recv_sge,
                });
            }
            raw[i].write(sys::ibv_recv_wr {
                wr_id: wr.wr_id,
                next: if i + 1 < n {
                    // SAFETY: index i+1 < POST_CHUNK, inside `raw`.
                    unsafe { raw_ptr.add(i + 1) }
                } else {
                    std::ptr::null_mut()
                },
                sg_list: wr.sges.as_ptr() as *mut sys::ibv_sge,
                num_sge: wr.sges.len() as i32,
            });
        }
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: `raw[..n]` initialised and linked; Sge is layout-identical to ibv_sge and
        // names registered memory (device-checked by lkey).
        let rc = unsafe { (self.post_recv_fn)(self.qp, raw_ptr, &mut bad) };
        if rc != 0 {
            let index = if bad.is_null() {
                0
            } else {
                // SAFETY: `bad` points into `raw` on failure.
                (unsafe { bad.offset_from(raw_ptr) }).clamp(0, n as isize) as usize
            };
            return Err(Error::Post {
                verb: "ibv_post_recv",
                errno: if rc < 0 { -rc } else { rc },
                index: base + index,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_mtu_rules() {
        use Mtu::*;
        assert_eq!(QueuePair::path_mtu(Mtu1024, Mtu4096, None), Ok(Mtu1024));
        assert_eq!(QueuePair::path_mtu(Mtu4096, Mtu2048, None), Ok(Mtu2048));
        assert_eq!(
            QueuePair::path_mtu(Mtu4096, Mtu4096, Some(Mtu1024)),
            Ok(Mtu1024)
        );
        assert_eq!(
            QueuePair::path_mtu(Mtu1024, Mtu4096, Some(Mtu4096)),
            Err(Error::MtuMismatch {
                local: Mtu1024,
                remote: Mtu4096,
                requested: Mtu4096
            })
        );
        assert!(QueuePair::path_mtu(Mtu4096, Mtu1024, Some(Mtu2048)).is_err());
    }
}
