//! The benches over ccm-verbs. Both ends of the RC connection live in this process: node A's
//! device and node B's device, one thread per side, each with its own context, PD, CQs, QP and
//! buffer; the endpoints ({GID, QPN, PSN, MTU}) are exchanged in memory (slam connect), so no
//! TCP is involved.
//!
//! The measured loops mirror perftest 4.5 (`run_iter_lat_send`, `run_iter_lat_write`,
//! `run_iter_bw`): every latency send is signalled and its completion polled before the next
//! iteration (perftest's `cq_mod` becomes 1 with its latency `tx_depth` of 1), RDMA WRITE
//! ping-pong detects arrival by polling the last byte of the buffer, the bandwidth stream keeps
//! `tx_depth` work requests outstanding and signals every `cq_mod`-th (1 above 8 KiB, like
//! perftest). Completion queues are busy-polled into a reused stack buffer; nothing on the
//! measured path allocates.

use ccm_verbs::clock::{cycles, Calibration};
use ccm_verbs::{
    random_psn, AccessFlags, Completion, CompletionChannel, CompletionQueue, Context,
    Error as VerbsError, GidEntry, GidType, InitAttr, MemoryRegion, ProtectionDomain, QpCaps,
    QueuePair, RemoteAddr, RtrAttr, RtsAttr, SendOp, SendWr, Sge,
};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Errors of a bench run.
#[derive(Debug)]
pub enum BenchError {
    /// A verb failed.
    Verbs(VerbsError),
    /// A completion with an error status, or a bench-level problem.
    Run(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Verbs(e) => write!(f, "{e}"),
            BenchError::Run(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<VerbsError> for BenchError {
    fn from(e: VerbsError) -> Self {
        BenchError::Verbs(e)
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// The operation measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// SEND/RECV.
    Send,
    /// RDMA WRITE.
    Write,
}

impl Op {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::Write => "write",
        }
    }
}

/// A device and the address whose RoCE v2 GID to use.
#[derive(Debug, Clone)]
pub struct SideSpec {
    /// Device name.
    pub device: String,
    /// Address of the GID; `None` = the first IPv4-mapped RoCE v2 GID of port 1.
    pub gid_ip: Option<IpAddr>,
}

/// Selects the RoCE v2 GID of `ip` from the GID table (never a fixed index).
pub fn select_gid(ctx: &Context, ip: Option<IpAddr>) -> Result<GidEntry> {
    match ip {
        Some(ip) => Ok(ctx.gid_by_ip(1, ip)?),
        None => ctx
            .gid_table(1)?
            .into_iter()
            .find(|e| e.gid_type == GidType::RoceV2 && matches!(e.gid.to_ip(), IpAddr::V4(_)))
            .ok_or_else(|| {
                BenchError::Run(format!(
                    "{}: no IPv4 RoCE v2 GID on port 1 (give one with -x ADDR)",
                    ctx.name()
                ))
            }),
    }
}

/// Sizes of the queues and buffers of a connection.
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// Message size.
    pub size: usize,
    /// Send queue depth.
    pub send_depth: u32,
    /// Receive queue depth (receives pre-posted for SEND).
    pub recv_depth: u32,
    /// Receives to post before the connection is up (0 for RDMA WRITE).
    pub prepost: u32,
    /// Inline threshold: messages of at most this many bytes are sent inline (0 = never, as
    /// perftest does on rxe, which it does not recognise as an inline-capable device).
    pub inline: u32,
}

/// One end of the connection.
pub struct Side {
    /// Device context.
    pub ctx: Context,
    /// PD.
    pub pd: ProtectionDomain,
    /// Send CQ.
    pub send_cq: CompletionQueue,
    /// Receive CQ.
    pub recv_cq: CompletionQueue,
    /// The receive CQ's completion channel (events only once armed: unused by the busy-polling benches).
    pub recv_events: CompletionChannel,
    /// The RC QP.
    pub qp: QueuePair,
    /// The GID used.
    pub gid: GidEntry,
    /// Buffer: bytes `tx_off..tx_off+size` are sent from, bytes `rx_off..rx_off+size` are
    /// received into; both start on a page boundary, as perftest's buffers do.
    pub mr: MemoryRegion<Vec<u8>>,
    /// Offset of the send half of `mr`.
    pub tx_off: usize,
    /// Offset of the receive half of `mr`.
    pub rx_off: usize,
    /// Where this side's RDMA WRITEs land at the peer.
    pub peer_rx: RemoteAddr,
    /// Message size.
    pub size: usize,
    /// Inline threshold.
    pub inline: u32,
    /// Receives posted so far.
    pub posted_recvs: u64,
}

impl Side {
    fn open(spec: &SideSpec, q: &QueueSpec) -> Result<Side> {
        let ctx = Context::open(&spec.device)?;
        let gid = select_gid(&ctx, spec.gid_ip)?;
        let pd = ProtectionDomain::new(&ctx)?;
        let send_cq = CompletionQueue::new(&ctx, q.send_depth.max(16), None)?;
        let recv_events = CompletionChannel::new(&ctx)?;
        let recv_cq = CompletionQueue::new(&ctx, q.recv_depth.max(16), Some(&recv_events))?;
        let qp = QueuePair::new_rc(
            &pd,
            &send_cq,
            &recv_cq,
            QpCaps {
                max_send_wr: q.send_depth,
                max_recv_wr: q.recv_depth,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: q.inline,
            },
        )?;
        // Send and receive halves, each starting on a page boundary.
        let half = q.size.max(1).div_ceil(PAGE) * PAGE;
        let mr = MemoryRegion::register(
            &pd,
            vec![0u8; 2 * half + PAGE],
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        )?;
        let tx_off = (PAGE - (mr.addr() as usize % PAGE)) % PAGE;
        let rx_off = tx_off + half;
        Ok(Side {
            ctx,
            pd,
            send_cq,
            recv_cq,
            recv_events,
            qp,
            gid,
            mr,
            tx_off,
            rx_off,
            peer_rx: RemoteAddr { addr: 0, rkey: 0 },
            size: q.size,
            inline: q.inline,
            posted_recvs: 0,
        })
    }

    fn post_recv(&mut self, wr_id: u64) -> Result<()> {
        let sge = [self.mr.slice(self.rx_off, self.size.max(1))?];
        self.qp.post_recv_one(wr_id, &sge)?;
        self.posted_recvs += 1;
        Ok(())
    }
}

/// Node A and node B, connected.
pub struct Pair {
    /// Node A: the initiator, whose timestamps are the measurement.
    pub a: Side,
    /// Node B: the responder.
    pub b: Side,
}

impl Pair {
    /// Opens both devices, creates the QPs and buffers, pre-posts receives and connects
    /// RESET -> INIT -> RTR -> RTS with fresh PSNs (retry forever, as perftest does on rxe).
    pub fn connect(a: &SideSpec, b: &SideSpec, q: &QueueSpec) -> Result<Pair> {
        let mut sa = Side::open(a, q)?;
        let mut sb = Side::open(b, q)?;
        sa.peer_rx = sb
            .mr
            .remote_window(sb.rx_off, q.size.max(1))?
            .slice(0, q.size.max(1) as u64)?;
        sb.peer_rx = sa
            .mr
            .remote_window(sa.rx_off, q.size.max(1))?
            .slice(0, q.size.max(1) as u64)?;
        let ea = sa.qp.endpoint(1, sa.gid.gid, random_psn())?;
        let eb = sb.qp.endpoint(1, sb.gid.gid, random_psn())?;
        let init = InitAttr {
            access: AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            ..InitAttr::default()
        };
        sa.qp.to_init(&init)?;
        sb.qp.to_init(&init)?;
        for i in 0..q.prepost {
            sa.post_recv(i as u64)?;
            sb.post_recv(i as u64)?;
        }
        let rtr = |s: &Side| RtrAttr {
            sgid_index: s.gid.index as u8,
            ..RtrAttr::default()
        };
        sa.qp.to_rtr(&eb, &rtr(&sa))?;
        sb.qp.to_rtr(&ea, &rtr(&sb))?;
        let rts = RtsAttr {
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 1,
        };
        sa.qp.to_rts(ea.psn, &rts)?;
        sb.qp.to_rts(eb.psn, &rts)?;
        Ok(Pair { a: sa, b: sb })
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// This many iterations (messages).
    Iters(u64),
    /// This long (at most [`MAX_DURATION_SAMPLES`] latency samples are kept).
    Duration(Duration),
}

/// Cap of latency samples kept in duration mode (preallocated before the run).
pub const MAX_DURATION_SAMPLES: usize = 2_000_000;

/// Page size the buffers are aligned to.
const PAGE: usize = 4096;

/// Spins between checks of the abort flag.
const ABORT_CHECK_SPINS: u32 = 1 << 12;

/// Shared stop/abort state of the two threads.
struct Control {
    /// Set by A when it is done (duration mode: B stops waiting) or on error (both stop).
    stop: AtomicBool,
    /// Set on an error on either side.
    abort: AtomicBool,
    /// Messages A sent in total (known when `stop` is set).
    total: AtomicU64,
}

impl Control {
    fn new() -> Self {
        Control {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            total: AtomicU64::new(u64::MAX),
        }
    }
}

fn check(wc: &Completion, what: &str) -> Result<()> {
    if wc.is_success() {
        Ok(())
    } else {
        Err(BenchError::Run(format!(
            "{what} completion failed: {:?} (wr_id {}, vendor_err {})",
            wc.status(),
            wc.wr_id(),
            wc.vendor_err()
        )))
    }
}

/// Busy-polls `cq` for one completion. Returns `Ok(None)` if `give_up()` turned true first.
#[inline]
fn poll_one(
    cq: &CompletionQueue,
    wc: &mut [Completion; 1],
    ctl: &Control,
    give_up: impl Fn(&Control) -> bool,
) -> Result<Option<Completion>> {
    let mut spins = 0u32;
    loop {
        if cq.poll(wc)? == 1 {
            return Ok(Some(wc[0]));
        }
        spins += 1;
        if spins == ABORT_CHECK_SPINS {
            spins = 0;
            if ctl.abort.load(Ordering::Relaxed) || give_up(ctl) {
                return Ok(None);
            }
        }
    }
}

fn aborted(ctl: &Control) -> bool {
    ctl.abort.load(Ordering::Relaxed)
}

/// Busy-waits until the last received byte equals `want`. `Ok(false)` if given up.
#[inline]
fn wait_byte(
    mr: &MemoryRegion<Vec<u8>>,
    idx: usize,
    want: u8,
    ctl: &Control,
    give_up: impl Fn(&Control) -> bool,
) -> Result<bool> {
    let mut spins = 0u32;
    loop {
        // The peer's RDMA WRITE changes this byte while we poll: read_volatile_u8 loads it
        // afresh on every call, without a `&[u8]` over memory the device is writing.
        if mr.read_volatile_u8(idx)? == want {
            return Ok(true);
        }
        spins += 1;
        if spins == ABORT_CHECK_SPINS {
            spins = 0;
            if ctl.abort.load(Ordering::Relaxed) || give_up(ctl) {
                return Ok(false);
            }
        }
    }
}

/// Posts this side's message (SEND or RDMA WRITE of `size` bytes), signalled or not.
#[inline]
fn post(side: &Side, op: Op, wr_id: u64, signaled: bool, sge: &[Sge; 1]) -> Result<()> {
    let sop = match op {
        Op::Send => SendOp::Send,
        Op::Write => SendOp::Write(side.peer_rx),
    };
    let mut wr = if side.size as u32 <= side.inline && side.size > 0 {
        SendWr::inline(
            wr_id,
            sop,
            side.mr
                .as_slice()
                .get(side.tx_off..side.tx_off + side.size)
                .unwrap_or(&[]),
        )
    } else {
        SendWr::new(wr_id, sop, sge)
    };
    wr.signaled = signaled;
    side.qp.post_send_one(&wr)?;
    Ok(())
}

/// The writer's own work between one message's completion and the next post (`think`): the thread stays
/// busy, as a storage engine between two log writes. Zero: back to back, as `ib_write_lat`'s ping-pong.
/// In the emulated lab this matters: with 10 us or more between them, a WRITE's completion takes 2-3x
/// longer than back to back (rxe's worker and its vCPU have gone idle; docs/performance.md).
pub fn think_for(think: Duration) {
    if think.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < think {
        std::hint::spin_loop();
    }
}

/// The floor of the NVRAM mirror's "durable": one signalled RDMA WRITE of `size` bytes from A's send
/// buffer into B's receive buffer, posted and its completion busy-polled on A's send CQ (the completion
/// comes with the responder's RC ACK: the WRITE is placed in B's memory), one at a time, `iters` times,
/// after `warmup` untimed ones. B's side only has to exist: nothing runs on it. Returns nanoseconds from
/// just before each post to its completion polled (preallocated: nothing allocates in the loop).
pub fn run_write_completion(
    pair: &mut Pair,
    warmup: u64,
    iters: u64,
    think: Duration,
) -> Result<Vec<u64>> {
    timed_writes(&mut pair.a, warmup, iters, think, |_, _, _| At::Buffer)
}

/// Where [`timed_writes`] calls its writer: before the pause, untimed; or timed, just before the post.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Untimed,
    Timed,
}

/// What the timed WRITE sends, as the writer says (its answer to the untimed call is ignored).
#[derive(Clone, Copy)]
enum At {
    /// The side's message: its whole buffer, into the peer's.
    Buffer,
    /// `len` bytes at offset `off` of the side's buffer, into the same offset of the peer's (a ring).
    Ring { off: usize, len: usize },
}

/// The loop of the WRITE floors: per message `writer(side, i, Untimed)`, the writer's `think`, then timed:
/// `writer(side, i, Timed)`, one signalled WRITE of what it returned ([`At`]) and its completion
/// busy-polled.
fn timed_writes(
    side: &mut Side,
    warmup: u64,
    iters: u64,
    think: Duration,
    mut writer: impl FnMut(&mut Side, u64, Stage) -> At,
) -> Result<Vec<u64>> {
    let sge = [side.mr.slice(side.tx_off, side.size.max(1))?];
    let mut wc = [Completion::default(); 1];
    let mut out = Vec::with_capacity(iters as usize);
    for i in 0..warmup + iters {
        writer(side, i, Stage::Untimed);
        think_for(think);
        let t = Instant::now();
        match writer(side, i, Stage::Timed) {
            At::Buffer => post(side, Op::Write, i, true, &sge)?,
            At::Ring { off, len } => {
                let sge = [side.mr.slice(side.tx_off + off, len)?];
                let to = RemoteAddr {
                    addr: side.peer_rx.addr + off as u64,
                    rkey: side.peer_rx.rkey,
                };
                let mut wr = SendWr::new(i, SendOp::Write(to), &sge);
                wr.signaled = true;
                side.qp.post_send_one(&wr)?;
            }
        }
        loop {
            if side.send_cq.poll(&mut wc)? == 1 {
                check(&wc[0], "write")?;
                break;
            }
        }
        if i >= warmup {
            out.push(t.elapsed().as_nanos().max(1) as u64);
        }
    }
    Ok(out)
}

/// Header bytes [`run_write_completion_prepared`] puts before the payload (the mirror's entry header).
pub const PREPARED_HEADER: usize = 32;

/// [`run_write_completion`] with the work a raw-verbs writer of a log does for each entry, timed with it,
/// as the mirror's `append` does it: copy `payload` bytes into the registered buffer after a
/// [`PREPARED_HEADER`]-byte header (in 4 KiB pieces, as `ccm_verbs::SharedMemory` copies: the lab's
/// emulated CPU moves one large `memcpy` a byte at a time), the XXH3-64 (the mirror's entry checksum) of
/// the header's first 16 bytes and the payload into it, then one signalled WRITE of header and payload
/// (the pair's message size, at least `PREPARED_HEADER + payload`) and its completion polled. No ccm
/// code: the floor of "the same job on raw verbs".
pub fn run_write_completion_prepared(
    pair: &mut Pair,
    warmup: u64,
    iters: u64,
    think: Duration,
    payload: usize,
) -> Result<Vec<u64>> {
    let side = &mut pair.a;
    if PREPARED_HEADER + payload > side.size {
        return Err(BenchError::Run(format!(
            "prepared entry of {} bytes in messages of {}",
            PREPARED_HEADER + payload,
            side.size
        )));
    }
    let mut src: Vec<u8> = (0..payload).map(|k| k as u8).collect();
    let entry = |side: &mut Side, i: u64, stage: Stage| {
        if stage == Stage::Untimed {
            // Each entry differs in its first bytes, outside the timing, as the mirror bench's do.
            stamp_payload(i, &mut src);
            return At::Buffer;
        }
        let tx = side.tx_off;
        prepare_entry(&mut side.mr.as_mut_slice()[tx..], &src, i);
        At::Buffer
    };
    timed_writes(side, warmup, iters, think, entry)
}

/// Writes a log entry at the start of `buf` as [`run_write_completion_prepared`] describes: `src` after a
/// [`PREPARED_HEADER`]-byte header (magic, length, `lsn`), copied in 4 KiB pieces, and the XXH3-64 of the
/// header's first 16 bytes and the payload into the header.
fn prepare_entry(buf: &mut [u8], src: &[u8], lsn: u64) {
    let payload = src.len();
    let body = &mut buf[PREPARED_HEADER..PREPARED_HEADER + payload];
    for (d, s) in body.chunks_mut(4096).zip(src.chunks(4096)) {
        d.copy_from_slice(s);
    }
    let hdr = &mut buf[..PREPARED_HEADER];
    hdr[0..4].copy_from_slice(&0x4e56_524du32.to_le_bytes());
    hdr[4..8].copy_from_slice(&(payload as u32).to_le_bytes());
    hdr[8..16].copy_from_slice(&lsn.to_le_bytes());
    let seed = xxhash_rust::xxh3::xxh3_64(&buf[..16]);
    let sum = xxhash_rust::xxh3::xxh3_64_with_seed(
        &buf[PREPARED_HEADER..PREPARED_HEADER + payload],
        seed,
    );
    buf[16..24].copy_from_slice(&sum.to_le_bytes());
}

/// Where the `i`-th entry of `slot` bytes starts in a log ring of `ring` bytes written from 0 on: entries
/// follow each other, and one that would cross the end starts again at 0 (the mirror pads there).
pub fn ring_offset(i: u64, slot: usize, ring: usize) -> usize {
    let per_lap = (ring / slot.max(1)).max(1) as u64;
    (i % per_lap) as usize * slot
}

/// [`run_write_completion_prepared`] the way a log is written: entry `i` of `slot` bytes (header, payload,
/// alignment) at [`ring_offset`] of the pair's buffers, which are the log ring (the pair's message size is
/// the ring's size), and WRITTEN to the same offset of B's ring. So each entry is prepared in, sent from and
/// placed into memory the previous ones did not touch, as the mirror's are (a floor at one fixed buffer,
/// like `ib_write_lat`'s, reuses the same pages). No ccm code: the floor of "the mirror's job on raw verbs".
pub fn run_log_writes(
    pair: &mut Pair,
    warmup: u64,
    iters: u64,
    think: Duration,
    payload: usize,
    slot: usize,
) -> Result<Vec<u64>> {
    let side = &mut pair.a;
    let ring = side.size;
    if PREPARED_HEADER + payload > slot || slot > ring {
        return Err(BenchError::Run(format!(
            "log entry of {} bytes in slots of {slot} in a ring of {ring}",
            PREPARED_HEADER + payload
        )));
    }
    let mut src: Vec<u8> = (0..payload).map(|k| k as u8).collect();
    let entry = |side: &mut Side, i: u64, stage: Stage| {
        if stage == Stage::Untimed {
            stamp_payload(i, &mut src);
            return At::Buffer;
        }
        let off = ring_offset(i, slot, ring);
        let tx = side.tx_off + off;
        prepare_entry(&mut side.mr.as_mut_slice()[tx..tx + slot], &src, i);
        At::Ring { off, len: slot }
    };
    timed_writes(side, warmup, iters, think, entry)
}

/// Make an entry's payload differ from the last one's: its number in the first (up to 8) bytes. The rest
/// of the payload is made once: filling all of it for every entry cost tens of microseconds an entry in
/// the lab guest, work `ib_write_lat` and `ib_write_bw` (which never touch their buffers) do not do, and
/// no part of what is measured; in a latency pass it also sat in the pause before the next post (see
/// [`think_for`]).
pub fn stamp_payload(i: u64, p: &mut [u8]) {
    let n = p.len().min(8);
    p[..n].copy_from_slice(&i.to_le_bytes()[..n]);
}

/// Bytes of the mirror's ack, which [`run_imm_completion`]'s peer answers with (`nvram::Ack::LEN`).
pub const ACK_BYTES: usize = 28;

/// What B does in [`run_imm_completion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImmPeer {
    /// B's thread reposts each consumed receive, nothing else.
    Repost,
    /// As `Repost`, but B's thread parks 1 ms whenever its queue is empty (the mirror thread's
    /// idle wait).
    Parked,
    /// As `Repost`, but B's thread sleeps on the receive queue's completion channel (armed) whenever
    /// the queue is empty: rxe then wakes it from the receive's completion, before it sends the ACK.
    Sleeper,
    /// B's thread reposts and answers every notification with an [`ACK_BYTES`] inline SEND (signalled,
    /// its completion polled), and a thread on A reposts the receives those answers consume: the
    /// mirror's protocol without its code.
    Ack,
}

/// The floor of the mirror's protocol: [`run_write_completion`], but each message an RDMA
/// WRITE_WITH_IMM that consumes a receive B has posted (the pair needs receives preposted on both
/// sides, `size` at least [`ACK_BYTES`], and A's `max_inline_data` at least [`ACK_BYTES`] for
/// [`ImmPeer::Ack`]). B's and A's helper threads poll their queues busily, yielding when idle, so the
/// figure includes whatever CPU they take from the writer on the guest's 2 vCPUs.
pub fn run_imm_completion(
    pair: &Pair,
    warmup: u64,
    iters: u64,
    peer: ImmPeer,
    think: Duration,
) -> Result<Vec<u64>> {
    let (a, b) = (&pair.a, &pair.b);
    let sge = [a.mr.slice(a.tx_off, a.size.max(1))?];
    let done = AtomicBool::new(false);
    let mut out = Vec::with_capacity(iters as usize);
    // Receives of one side: reposted as they complete; with `answer`, each one is answered.
    let serve = |s: &Side, answer: bool, idle: ImmPeer| -> Result<u64> {
        let rsge = [s.mr.slice(s.rx_off, s.size.max(1))?];
        let ack = [0x5au8; ACK_BYTES];
        let mut wc = [Completion::default(); 16];
        let mut swc = [Completion::default(); 16];
        let mut sent = 0u64;
        let mut pending = 0u64;
        // (`ImmPeer::Sleeper`) The receive queue is armed and was polled empty since.
        let mut armed = false;
        while !done.load(Ordering::Relaxed) {
            let n = s.recv_cq.poll(&mut wc)?;
            // A receive since the arming used it up (its event is pending): arm again before a sleep.
            armed &= n == 0;
            for c in &wc[..n] {
                check(c, "receive")?;
                s.qp.post_recv_one(c.wr_id(), &rsge)?;
                if answer {
                    // Room in the send queue (16 deep in the bench's pairs).
                    while pending >= 8 {
                        let m = s.send_cq.poll(&mut swc)?;
                        for c in &swc[..m] {
                            check(c, "answer")?;
                        }
                        pending -= m as u64;
                    }
                    s.qp.post_send_one(&SendWr::inline(sent, SendOp::Send, &ack))?;
                    sent += 1;
                    pending += 1;
                }
            }
            let m = if pending > 0 {
                s.send_cq.poll(&mut swc)?
            } else {
                0
            };
            for c in &swc[..m] {
                check(c, "answer")?;
            }
            pending -= m as u64;
            if n == 0 && m == 0 {
                match idle {
                    ImmPeer::Parked => std::thread::park_timeout(Duration::from_millis(1)),
                    // Arm and look once more (a receive before the arming raises no event); sleep only
                    // when that look, armed, found nothing either.
                    ImmPeer::Sleeper if armed => {
                        let _ = s.recv_events.get_event(Duration::from_millis(20))?;
                        armed = false;
                    }
                    ImmPeer::Sleeper => {
                        s.recv_cq.req_notify(false)?;
                        armed = true;
                    }
                    _ => std::thread::yield_now(),
                }
            }
        }
        Ok(sent)
    };
    let mut run = || -> Result<()> {
        let mut wc = [Completion::default(); 1];
        for i in 0..warmup + iters {
            think_for(think);
            let t = Instant::now();
            let to = SendOp::WriteWithImm(a.peer_rx, i as u32);
            a.qp.post_send_one(&SendWr::new(i, to, &sge))?;
            loop {
                if a.send_cq.poll(&mut wc)? == 1 {
                    check(&wc[0], "write with immediate")?;
                    break;
                }
            }
            if i >= warmup {
                out.push(t.elapsed().as_nanos().max(1) as u64);
            }
        }
        Ok(())
    };
    let answer = peer == ImmPeer::Ack;
    let (r, rb, ra) = std::thread::scope(|sc| {
        let hb = sc.spawn(|| serve(b, answer, peer));
        let ha = answer.then(|| sc.spawn(|| serve(a, false, ImmPeer::Repost)));
        let r = run();
        done.store(true, Ordering::Relaxed);
        (r, hb.join(), ha.map(|h| h.join()))
    });
    r?;
    rb.map_err(|_| BenchError::Run("node B thread panicked".into()))??;
    if let Some(ra) = ra {
        ra.map_err(|_| BenchError::Run("node A thread panicked".into()))??;
    }
    Ok(out)
}

/// Result of a latency run: the initiator's post timestamps and the tick rate.
pub struct LatencyResult {
    /// Cycle counter at every post of node A.
    pub post_ticks: Vec<u64>,
    /// Ticks per nanosecond over the run.
    pub ticks_per_ns: f64,
}

/// Ping-pong latency. Node A initiates; every iteration is one round trip.
pub fn run_latency(pair: &mut Pair, op: Op, len: Length) -> Result<LatencyResult> {
    let cap = match len {
        Length::Iters(n) => n as usize,
        Length::Duration(_) => MAX_DURATION_SAMPLES,
    };
    let mut ts: Vec<u64> = Vec::with_capacity(cap);
    let ctl = Control::new();
    let barrier = Barrier::new(2);
    let calib = std::cell::Cell::new(None);
    let (ra, rb) = std::thread::scope(|s| {
        let hb = s.spawn(|| {
            barrier.wait();
            let r = pingpong(&mut pair.b, op, false, len, None, &ctl);
            if r.is_err() {
                ctl.abort.store(true, Ordering::Relaxed);
            }
            r
        });
        barrier.wait();
        let c = Calibration::start();
        let r = pingpong(&mut pair.a, op, true, len, Some(&mut ts), &ctl);
        calib.set(Some(c.ticks_per_ns()));
        if r.is_err() {
            ctl.abort.store(true, Ordering::Relaxed);
        }
        ctl.stop.store(true, Ordering::Relaxed);
        (r, hb.join())
    });
    ra?;
    rb.map_err(|_| BenchError::Run("node B thread panicked".into()))??;
    Ok(LatencyResult {
        post_ticks: ts,
        ticks_per_ns: calib.get().unwrap_or(1.0),
    })
}

/// One side of the ping-pong. The initiator (A) records a timestamp before each post; the
/// responder (B) answers each message. In duration mode A decides the count; B stops when A
/// sets `stop` after its last reply arrived.
fn pingpong(
    side: &mut Side,
    op: Op,
    initiator: bool,
    len: Length,
    mut ts: Option<&mut Vec<u64>>,
    ctl: &Control,
) -> Result<()> {
    let (iters, deadline) = match len {
        Length::Iters(n) => (n, None),
        Length::Duration(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    let responder_gives_up = |c: &Control| !initiator && c.stop.load(Ordering::Relaxed);
    let sge = [side.mr.slice(side.tx_off, side.size.max(1))?];
    let last = side.rx_off + side.size.max(1) - 1;
    let tx_last = side.tx_off + side.size.max(1) - 1;
    let mut wc = [Completion::default(); 1];
    let mut scnt: u64 = 0;
    let mut rcnt: u64 = 0;
    while scnt < iters {
        // Wait for the peer's message, except before A's first post.
        let first = initiator && scnt == 0;
        if !first
            && !receive(
                side,
                op,
                &mut rcnt,
                iters,
                &mut wc,
                ctl,
                last,
                &responder_gives_up,
            )?
        {
            return stop_or_abort(ctl, initiator);
        }
        if let Some(ts) = ts.as_deref_mut() {
            if ts.len() == ts.capacity() {
                break;
            }
            ts.push(cycles());
        }
        scnt += 1;
        if op == Op::Write {
            side.mr.as_mut_slice()[tx_last] = scnt as u8;
        }
        post(side, op, scnt, true, &sge)?;
        match poll_one(&side.send_cq, &mut wc, ctl, aborted)? {
            Some(c) => check(&c, "send")?,
            None => return stop_or_abort(ctl, initiator),
        }
        if let Some(d) = deadline {
            // Checked every 256 iterations: reading the clock costs ~1 us in the TCG guest.
            if initiator && scnt % 256 == 0 && Instant::now() >= d {
                break;
            }
        }
    }
    if initiator {
        // The reply to the last message.
        if !receive(side, op, &mut rcnt, iters, &mut wc, ctl, last, &|_| false)? {
            return stop_or_abort(ctl, initiator);
        }
        ctl.total.store(scnt, Ordering::Relaxed);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn receive(
    side: &mut Side,
    op: Op,
    rcnt: &mut u64,
    iters: u64,
    wc: &mut [Completion; 1],
    ctl: &Control,
    last: usize,
    give_up: &dyn Fn(&Control) -> bool,
) -> Result<bool> {
    match op {
        Op::Send => match poll_one(&side.recv_cq, wc, ctl, give_up)? {
            Some(c) => {
                check(&c, "receive")?;
                *rcnt += 1;
                if side.posted_recvs < iters {
                    side.post_recv(side.posted_recvs)?;
                }
            }
            None => return Ok(false),
        },
        Op::Write => {
            if !wait_byte(&side.mr, last, (*rcnt + 1) as u8, ctl, give_up)? {
                return Ok(false);
            }
            *rcnt += 1;
        }
    }
    Ok(true)
}

fn stop_or_abort(ctl: &Control, initiator: bool) -> Result<()> {
    if ctl.abort.load(Ordering::Relaxed) {
        Err(BenchError::Run(format!(
            "node {} stopped: the other side failed",
            if initiator { "A" } else { "B" }
        )))
    } else {
        Ok(())
    }
}

/// Result of a bandwidth run.
#[derive(Debug, Clone, Copy)]
pub struct BandwidthResult {
    /// Messages completed.
    pub messages: u64,
    /// Bytes per message.
    pub size: usize,
    /// From the first post to the last completion, seconds.
    pub seconds: f64,
}

impl BandwidthResult {
    /// MB/s with MB = 2^20 bytes, like perftest.
    pub fn mb_per_s(&self) -> f64 {
        self.messages as f64 * self.size as f64 / self.seconds / 1_048_576.0
    }
    /// Millions of messages per second.
    pub fn mpps(&self) -> f64 {
        self.messages as f64 / self.seconds / 1e6
    }
}

/// perftest's CQ moderation for a bandwidth run of `size`-byte messages.
pub fn bw_cq_mod(size: usize, tx_depth: u32) -> u32 {
    if size > 8192 {
        1
    } else {
        100.min(tx_depth).max(1)
    }
}

/// Streams `len` messages from A to B with up to `tx_depth` outstanding work requests.
pub fn run_bandwidth(
    pair: &mut Pair,
    op: Op,
    len: Length,
    tx_depth: u32,
) -> Result<BandwidthResult> {
    let ctl = Control::new();
    let barrier = Barrier::new(2);
    let (ra, rb) = std::thread::scope(|s| {
        let hb = s.spawn(|| {
            barrier.wait();
            let r = if op == Op::Send {
                sink(&mut pair.b, len, &ctl)
            } else {
                Ok(())
            };
            if r.is_err() {
                ctl.abort.store(true, Ordering::Relaxed);
            }
            r
        });
        barrier.wait();
        let r = stream(&pair.a, op, len, tx_depth, &ctl);
        if r.is_err() {
            ctl.abort.store(true, Ordering::Relaxed);
        }
        ctl.stop.store(true, Ordering::Relaxed);
        (r, hb.join())
    });
    let res = ra?;
    rb.map_err(|_| BenchError::Run("node B thread panicked".into()))??;
    Ok(res)
}

fn stream(
    side: &Side,
    op: Op,
    len: Length,
    tx_depth: u32,
    ctl: &Control,
) -> Result<BandwidthResult> {
    let (iters, deadline) = match len {
        Length::Iters(n) => (n, None),
        Length::Duration(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    let cq_mod = bw_cq_mod(side.size, tx_depth) as u64;
    let depth = tx_depth as u64;
    let sge = [side.mr.slice(side.tx_off, side.size.max(1))?];
    let mut wc = [Completion::default(); 16];
    let mut end = iters;
    let mut scnt: u64 = 0;
    let mut ccnt: u64 = 0;
    let calib = Calibration::start();
    let t0 = cycles();
    let mut t1 = t0;
    while ccnt < end {
        while scnt < end && scnt - ccnt < depth {
            let signaled = scnt % cq_mod == cq_mod - 1 || scnt + 1 == end;
            post(side, op, scnt, signaled, &sge)?;
            scnt += 1;
            if let Some(d) = deadline {
                if scnt % cq_mod == 0 && scnt % 64 == 0 && Instant::now() >= d {
                    // Stop at a signalled boundary: everything posted completes.
                    end = scnt;
                }
            }
        }
        let n = side.send_cq.poll(&mut wc)?;
        for c in &wc[..n] {
            check(c, "send")?;
            // Each completion stands for the cq_mod requests before it (fewer in the last).
            ccnt = (ccnt + cq_mod).min(scnt);
            t1 = cycles();
        }
        if n == 0 && ctl.abort.load(Ordering::Relaxed) {
            return Err(BenchError::Run("node A stopped: node B failed".into()));
        }
    }
    let ticks_per_ns = calib.ticks_per_ns();
    ctl.total.store(scnt, Ordering::Relaxed);
    Ok(BandwidthResult {
        messages: scnt,
        size: side.size,
        seconds: (t1.wrapping_sub(t0) as f64 / ticks_per_ns) / 1e9,
    })
}

/// Node B of a SEND stream: consumes receives and re-posts them until A's total arrived.
fn sink(side: &mut Side, len: Length, ctl: &Control) -> Result<()> {
    let iters = match len {
        Length::Iters(n) => n,
        Length::Duration(_) => u64::MAX,
    };
    let mut wc = [Completion::default(); 16];
    let mut rcnt: u64 = 0;
    let mut spins = 0u32;
    loop {
        let total = ctl.total.load(Ordering::Relaxed);
        if rcnt >= iters.min(total) {
            return Ok(());
        }
        let n = side.recv_cq.poll(&mut wc)?;
        for c in &wc[..n] {
            check(c, "receive")?;
            rcnt += 1;
            if side.posted_recvs < iters {
                side.post_recv(side.posted_recvs)?;
            }
        }
        if n == 0 {
            spins += 1;
            if spins == ABORT_CHECK_SPINS {
                spins = 0;
                if ctl.abort.load(Ordering::Relaxed) {
                    return Err(BenchError::Run("node B stopped: node A failed".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_floor_writes_each_entry_after_the_last_and_wraps_before_the_end() {
        // 4 KiB payloads take 4160-byte slots: 4032 of them fit a 16 MiB ring (4033 would need 64 bytes more).
        let (slot, ring) = (4160, 16 << 20);
        assert_eq!(ring_offset(0, slot, ring), 0);
        assert_eq!(ring_offset(1, slot, ring), 4160);
        assert_eq!(ring_offset(4031, slot, ring), 4031 * 4160);
        assert_eq!(ring_offset(4032, slot, ring), 0, "the next lap starts at 0");
        for i in 0..20_000 {
            assert!(
                ring_offset(i, slot, ring) + slot <= ring,
                "entry {i} crosses the end"
            );
        }
        // A slot as large as the ring: every entry at 0.
        assert_eq!(ring_offset(7, ring, ring), 0);
    }

    #[test]
    fn cq_moderation_like_perftest() {
        assert_eq!(bw_cq_mod(65536, 128), 1);
        assert_eq!(bw_cq_mod(8192, 128), 100);
        assert_eq!(bw_cq_mod(2, 64), 64);
    }

    #[test]
    fn bandwidth_units_are_mebibytes() {
        let r = BandwidthResult {
            messages: 16,
            size: 65536,
            seconds: 1.0,
        };
        assert_eq!(r.mb_per_s(), 1.0);
    }
}
