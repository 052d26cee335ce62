//! The NVRAM mirroring client: a storage engine's log, copied into the partner's memory before a write is
//! acknowledged, over whichever interconnect the manager gives it (failover and failback included).
//!
//! Each node holds four files (a path on `/dev/shm`, a DAX/pmem mount or any file system with shared
//! mappings):
//!
//! | file | what | registered |
//! | --- | --- | --- |
//! | `PATH` | this node's log ring, written by [`Mirror::append`] | local only: source of RDMA WRITEs |
//! | `PATH.mirror` | the partner's log, written by the partner's RDMA WRITEs | remote write: the client's window |
//! | `PATH.mirror.state` | the reader's [`Checkpoint`] (two alternating slots) | not registered |
//! | `PATH.state` | the writer's [`WriterCheckpoint`] (two alternating slots) | not registered |
//!
//! The protocol is the one of [`crate::mirror`]: the writer posts RDMA WRITEs of a batch's segments from its
//! log ring to the same offsets of the partner's mirror ring, the last one signalled with `wr_id = BATCH_TAG |
//! batch id`; its RC completion makes the batch durable. A batch that notifies (half the ring awaits the
//! partner's ack, [`Batch::notify`](crate::mirror::Batch::notify)) ends with a solicited WRITE_WITH_IMM
//! (immediate: the low 32 bits of the batch's last LSN): on that receive completion the partner scans its
//! mirror ring (in order, once), persists its checkpoint and answers with a small inline SEND, the [`Ack`]
//! `{applied_pos, applied_lsn, credits_total}`. Other batches are plain WRITEs, which the partner applies and
//! acks when it next looks: after each of its idle sleeps ([`IDLE_SLEEP`]) and every [`QUIET_SCAN_TURNS`]
//! turns of a busy mirror thread (a *quiet scan*: it acks once it applied an eighth of the ring since its
//! last ack, or anything since an ack `IDLE_SLEEP` old).
//!
//! **Threads.** The client VI has a send CQ and a receive CQ. The mirror thread owns the receive side (the
//! partner's acks and notifications, the reader). The send side (posting batches, reaping their
//! completions) is a lock that any thread takes when it is free, so the latency path wakes no thread: an
//! [`Mirror::append`] onto an idle link (nothing in flight) posts its entry itself; a thread in
//! [`Mirror::wait_durable`] reaps its own entry's completion (as `ib_write_lat` polls its own CQ), for up
//! to [`DRIVE`] or the spin of [`Mirror::set_spin`]. Any thread holding the send side posts what is
//! appended, at once while fewer than [`EAGER_BATCHES`] batches are in flight; beyond that entries gather
//! into one larger batch until a completion is reaped or [`COALESCE_BYTES`] wait. The mirror thread spins
//! (yielding) while batches are in flight, except while the only one is being reaped by a thread in
//! `wait_durable`: then it sleeps, so it does not take the CPU from that waiter and from rxe's own work
//! (on the lab's 2 vCPUs). An idle mirror thread sleeps in `poll(2)` on its VI's completion channel, armed
//! for *solicited* receives only, and on a doorbell that appends and the node's notices ring, for at most
//! [`IDLE_SLEEP`]. Notifications and acks are solicited, and a writer notifies only once half its ring
//! waits for an ack: an entry's path wakes no thread on the partner and puts no receive completion on
//! it, and an idle pair's mirror threads sleep. A batch of one segment of at most [`MAX_INLINE`] bytes (an
//! entry of up to 224 payload bytes) is posted inline, the cheaper post on rxe. Batches stay in order
//! because only the holder of the send side takes a batch from the writer and posts it; the mirror thread
//! installs the send side only after the writer was reset to the connection (on `Ready`) and removes it,
//! under that lock, before it leaves the connection.
//! A fault met by another thread on the send side is handed to the mirror thread, which reports it.
//!
//! **Receive credits.** Each client VI has 128 receive slots shared by two kinds of message: notifications
//! (the partner writer's WRITE_WITH_IMM) and acks (the partner reader's SENDs). A reader grants
//! [`NOTIFY_WINDOW`] notifications per connection plus one for every notification slot it has reposted
//! (`credits_total`), so at most `NOTIFY_WINDOW` notifications are outstanding. Acks answer our
//! notifications (as many), the `Ready` (one), or a quiet scan that applied an eighth of the ring since the
//! last ack (at most 8 before our writer, which cannot run a ring ahead of the acks it handled, handles
//! them) or anything since an ack [`IDLE_SLEEP`] old (one per `IDLE_SLEEP`). A mirror VI has 128 receive
//! slots: a mirror thread would have to leave its receives alone for over 3 s before the partner's acks
//! met a receiver-not-ready, longer than the node's own heartbeats tolerate.
//!
//! **New connection** (every `Ready`, the first and every resumed one after a failover or failback): both sides
//! scan their mirror ring and immediately send their current ack, and each writer resumes at once
//! ([`MirrorWriter::link_up`]): everything after its durable position is sent again, at the same offsets,
//! with the same bytes, within the [`NOTIFY_WINDOW`] every reader grants a new connection, and duplicates
//! fall to the partner's LSN check. It does not wait for the partner's first ack, so the partner's own
//! resume (its node's decision, its mirror thread) is not on the writer's path: the RC completion alone
//! makes the resent entries durable. That is safe because ring space is overwritten only when no WRITE
//! that may still land covers it (see [`MirrorWriter::free`]): not while a batch covering it is in flight
//! on this connection, nor, after a move, while one was in flight on an earlier connection that the
//! partner may not have left yet. The partner's first ack on a new connection says it left them: it puts
//! its old VI in the error state before it acks on a new one.
//!
//! **Formats** (every `Ready`): the mirror registers with its entry [`Formats`] as the client's private data,
//! and checks the partner's before it uses the connection: if either cannot read what the other writes, or
//! the partner's client is no mirror, the connection is not used ([`MirrorFault::PartnerFormats`]) and not a
//! byte is written into the partner's ring. A partner whose manager is older than protocol version 3 tells
//! nothing; then the reader's check of every entry's format is what finds a mismatch.
//!
//! **Failure**: on `Stop`, `PartnerDown` or any error completion the client stops posting at once (an error
//! completion is reported with [`ClientHandle::report_vi_error`] so the manager re-places the binding) and
//! waits for the next `Ready`. Appends continue meanwhile, into the local ring, until it is full:
//! [`MirrorError::RingFull`] is returned to the caller (back-pressure), never an overwrite. A partner that breaks
//! the protocol (an older build's entry where the next one is due, an ack for bytes never sent, a ring of
//! another size) stops the writing on that connection too: the fault is counted, logged and kept, typed, for
//! the embedding code ([`Mirror::fault`], [`MirrorFault`]).
//!
//! **Partner restart**: the mirror ring and its checkpoint survive the partner's process (SIGKILL included);
//! a restarting node resumes its reader with [`MirrorReader::recover`], so it reports at least what it
//! reported before and the writer resends only what is missing.
//!
//! **Writer restart**: the log ring and the writer's checkpoint survive the writer's process too. After
//! every ack of the partner (the only event that frees ring space) the writer persists its
//! [`WriterCheckpoint`] before any append may reuse the space; a restarting node continues its log with
//! [`MirrorWriter::recover`]: the next LSN follows the last one the old process appended (none reused, none
//! skipped), and on the first `Ready` the partner's ack tells it what to send again. Everything the old
//! process reported durable is in the partner's surviving ring, so the partner's scan reports it applied.
//!
//! Each checkpoint file has two slots; a process writes first into the slot not holding the newest
//! checkpoint, then alternates, so a write torn by a kill always leaves the newest whole one.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccm_verbs::{Completion, RemoteAddr, SendOp, SendWr, SharedMemory};
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use thiserror::Error;

use crate::manager::ClientSpec;
pub use crate::mirror::RingCheck;
use crate::mirror::{
    compare_rings, Batch, Checkpoint, Digest, Formats, FormatsError, Lsn, MirrorError,
    MirrorReader, MirrorWriter, WriterCheckpoint,
};
use crate::node::channel::{RcChannel, MAX_INLINE};
use crate::node::doorbell::Doorbell;
use crate::node::meter::ByteMeter;
use crate::node::{ClientHandle, ClientMemory, ClientNotice, ClientRegion, NodeError, NodeHandle};
use crate::wire::{Generation, InterconnectId, MemoryWindow};

/// Notification receives a reader grants on a new connection before any repost (see the module doc).
pub const NOTIFY_WINDOW: u64 = 24;
/// Tag bit of a batch's work requests (`wr_id = BATCH_TAG | batch id`), above the channel's send ids.
pub const BATCH_TAG: u64 = 1 << 62;
/// Batches in flight beyond which appended entries wait for a completion (and so grow into one larger
/// batch: fewer WRITEs, notifications and partner scans) unless [`COALESCE_BYTES`] are waiting.
pub const EAGER_BATCHES: usize = 2;
/// Unsent bytes that are posted at once, however many batches are in flight.
pub const COALESCE_BYTES: u64 = 256 << 10;
/// How long [`Mirror::wait_durable`] reaps its entry's completion itself before it sleeps, when
/// [`Mirror::set_spin`] is off: about the round trip of a 64 KiB WRITE in the lab guest, so a waiter
/// sleeps (and needs a wake-up) only when the link is slow or failing.
pub const DRIVE: Duration = Duration::from_millis(5);

/// The longest an idle mirror thread sleeps: it is woken sooner by an append, a notice from the node, or
/// a solicited receive (the partner's ack, or its notification once half its ring awaits our ack; see
/// [`Batch::notify`](crate::mirror::Batch::notify)). After every sleep it scans its mirror ring (a quiet
/// scan), so an idle partner applies and acks the entries of plain batches within this time: they are
/// durable already (their RC completion), and nothing waits for it unless the writer runs short of ring
/// space, which it notifies.
pub const IDLE_SLEEP: Duration = Duration::from_millis(50);

/// A mirror thread that never sleeps (its own writer keeps it busy) scans its mirror ring every this many
/// turns even without a notification (a quiet scan: one header read when nothing arrived).
pub const QUIET_SCAN_TURNS: u32 = 64;

/// Steps [`Mirror::steps`] keeps (the oldest are dropped).
pub const STEPS_KEPT: usize = 256;

/// What happened to the mirror's connection (for diagnostics: [`Mirror::steps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// `Stop` on this interconnect: the mirror left it.
    Stop,
    /// An error completion or a failed post: the mirror left the connection and told the node.
    ViError,
    /// `Ready`: the writer resumed here, sending again everything after LSN `lsn`.
    Resumed,
    /// The partner's first ack on this connection (it applied up to `lsn`).
    FirstAck,
    /// The first batch completed on this connection: durable up to `lsn`.
    FirstDurable,
}

/// One step of the mirror's connection life, at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: StepKind,
    /// On which interconnect.
    pub ic: InterconnectId,
    /// The LSN it concerns (see [`StepKind`]).
    pub lsn: Lsn,
}

const ACK_MAGIC: u32 = u32::from_le_bytes(*b"CCMA");

/// What a reader tells the writer: everything up to `applied_pos` (last entry `applied_lsn`) is applied, and
/// `credits_total` notification receives were granted on this connection so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Ring position after the last applied entry.
    pub applied_pos: u64,
    /// Last LSN applied.
    pub applied_lsn: Lsn,
    /// Notification receives granted on this connection, in total.
    pub credits_total: u64,
}

impl Ack {
    /// Encoded size (sent inline).
    pub const LEN: usize = 28;

    /// `{magic u32, applied_pos u64, applied_lsn u64, credits_total u64}`, little-endian.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&ACK_MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.applied_pos.to_le_bytes());
        b[12..20].copy_from_slice(&self.applied_lsn.0.to_le_bytes());
        b[20..28].copy_from_slice(&self.credits_total.to_le_bytes());
        b
    }

    /// The ack in `b`, if it is one.
    pub fn decode(b: &[u8]) -> Option<Ack> {
        if b.len() != Self::LEN || b[0..4] != ACK_MAGIC.to_le_bytes() {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Some(Ack {
            applied_pos: u(4..12),
            applied_lsn: Lsn(u(12..20)),
            credits_total: u(20..28),
        })
    }
}

/// Why a running mirror stopped writing on its connection ([`Mirror::fault`]): the partner or this node broke
/// the protocol. Nothing is lost: appends go on into the local ring (until it is full), and the next
/// connection (`Ready`) starts over; a fault that persists (an older build on the other side) is met again.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MirrorFault {
    /// The partner's log, as this node's reader found it in its mirror ring: an entry of another format where
    /// the next one is due ([`MirrorError::EntryFormat`], an older build writing), or a ring that contradicts
    /// the reader's checkpoint.
    #[error("the partner's log: {0}")]
    PartnerLog(MirrorError),
    /// The partner's ack reports a position this writer never sent, or less than before
    /// ([`MirrorError::BadApplied`]).
    #[error("the partner's ack: {0}")]
    PartnerAck(MirrorError),
    /// A message on the mirror's VI that is no ack (`bytes` long).
    #[error("a message of {bytes} bytes from the partner that is no ack")]
    NotAnAck {
        /// Its length.
        bytes: u32,
    },
    /// The partner's mirror ring differs in size from ours: the nodes' configurations disagree.
    #[error("the partner's mirror ring has {partner} bytes, ours {ours}")]
    RingSize {
        /// The partner's window length.
        partner: u64,
        /// Our ring's capacity.
        ours: u64,
    },
    /// The partner's mirror cannot read this one's entries, or writes entries this one cannot read, or is
    /// no mirror: found at connect time from the formats it told ([`Formats`]), before either side wrote.
    #[error("{0}")]
    PartnerFormats(FormatsError),
    /// The node's `Ready` came without a VI, a registered region or the partner's window.
    #[error("Ready without a VI, a region or the partner's window")]
    IncompleteReady,
    /// A completion that is not the oldest batch in flight ([`MirrorError::OutOfOrderCompletion`]).
    #[error("{0}")]
    Completion(MirrorError),
    /// A checkpoint file could not be written (`what`: the reader's or the writer's).
    #[error("writing the {what} checkpoint: {error}")]
    Checkpoint {
        /// Which checkpoint.
        what: &'static str,
        /// The error.
        error: String,
    },
}

/// Why [`Mirror::mirror_until`] returned before its entries were in the partner's memory.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MirrorWaitError {
    /// The LSN was never appended to this log.
    #[error("{lsn:?} was never appended (the last is {appended:?})")]
    NotAppended {
        /// The LSN asked for.
        lsn: Lsn,
        /// The last LSN appended.
        appended: Lsn,
    },
    /// Not durable within the timeout.
    #[error(
        "{lsn:?} not in the partner's memory in time: durable up to {durable:?}, interconnect {}{}",
        link.map_or("none (partner unreachable or a failover under way)".to_string(), |l| l.0.to_string()),
        fault.as_ref().map_or(String::new(), |f| format!(", writing stopped: {f}"))
    )]
    Timeout {
        /// The LSN asked for.
        lsn: Lsn,
        /// Every entry up to this one is durable.
        durable: Lsn,
        /// The interconnect the mirror is on, if any.
        link: Option<InterconnectId>,
        /// Why the mirror stopped writing on its connection, if it did.
        fault: Option<MirrorFault>,
    },
}

/// Why a mirror could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A ring file could not be mapped.
    #[error("mapping {path}: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ccm_verbs::Error,
    },
    /// The ring size is unusable.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    /// The node refused the registration.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The client thread could not be spawned.
    #[error("spawning the mirror thread: {0}")]
    Spawn(std::io::Error),
}

/// A snapshot of a mirror's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// LSN of the last entry appended locally.
    pub appended: u64,
    /// Every entry up to this LSN is in the partner's memory.
    pub durable: u64,
    /// Last LSN of the partner's log applied here.
    pub partner_applied: u64,
    /// Entries of the partner's log applied here (by this process).
    pub partner_entries: u64,
    /// Batches posted.
    pub batches: u64,
    /// Batches that re-sent entries already sent on an earlier connection.
    pub resent_batches: u64,
    /// `Stop` notices (failover, failback, re-initialization).
    pub stops: u64,
    /// `Ready` notices.
    pub readies: u64,
    /// Error completions or failed posts (each reported to the node).
    pub vi_errors: u64,
    /// Messages or reports that break the protocol (the connection is not used for writing afterwards).
    pub protocol_errors: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    durable: AtomicU64,
    partner_applied: AtomicU64,
    partner_entries: AtomicU64,
    batches: AtomicU64,
    resent_batches: AtomicU64,
    stops: AtomicU64,
    readies: AtomicU64,
    vi_errors: AtomicU64,
    protocol_errors: AtomicU64,
}

struct WriterSide {
    writer: MirrorWriter,
    ring: Arc<SharedMemory>,
    /// The writer's checkpoint file (`PATH.state`) and the slot to write next.
    state: Arc<SharedMemory>,
    slot: usize,
}

impl WriterSide {
    /// Persist the writer's checkpoint, then let it reuse the ring space the checkpoint covers.
    fn persist(&mut self) -> Result<(), ccm_verbs::Error> {
        let c = self.writer.checkpoint();
        self.state
            .write(self.slot * WriterCheckpoint::ENCODED_LEN, &c.encode())?;
        self.slot ^= 1;
        self.writer.checkpoint_persisted(&c);
        Ok(())
    }
}

const NO_LINK: u32 = u32::MAX;

/// The sending half of a synced connection. Whoever holds [`Shared::send`] posts batches and reaps their
/// completions: the appending thread (an append onto an idle link posts itself), a thread in
/// [`Mirror::wait_durable`] (it reaps its own entry's completion), or the mirror thread. Only the mirror
/// thread installs and removes it, so it never exists while the writer is reset to a new link.
struct SendConn {
    vi: Arc<RcChannel>,
    local: ClientRegion,
    remote: MemoryWindow,
    /// Why posting stopped; the mirror thread reports it and leaves the connection.
    fault: Option<Fault>,
}

struct SendSide {
    conn: Option<SendConn>,
    /// The local log ring (read for inline batches; the bytes of a batch do not change until the partner
    /// applied them).
    ring: Arc<SharedMemory>,
    /// Highest LSN ever handed out in a batch (to count re-sends).
    max_sent: Lsn,
    wc: [Completion; 16],
}

impl SendSide {
    /// Reap completed batches, then post every batch the writer has. True if anything happened.
    fn pump(&mut self, shared: &Shared) -> bool {
        let SendSide {
            conn,
            ring,
            max_sent,
            wc,
        } = self;
        let Some(c) = conn else { return false };
        if c.fault.is_some() {
            return false;
        }
        match reap(c, wc, shared).and_then(|r| Ok(r | post(c, ring, max_sent, shared)?)) {
            Ok(progress) => progress,
            Err(f) => {
                c.fault = Some(f);
                shared.send_fault.store(true, Ordering::SeqCst);
                shared.wake();
                true
            }
        }
    }
}

/// The completions of the connection's send queue: batches (durable now) and the reader's acks.
fn reap(c: &SendConn, wc: &mut [Completion], shared: &Shared) -> Result<bool, Fault> {
    let n =
        c.vi.poll_send(wc)
            .map_err(|e| Fault::Vi(format!("poll: {e}")))?;
    let mut wake = false;
    {
        let mut g = None;
        let mut durable = None;
        for wc in &wc[..n] {
            if !wc.is_success() {
                return Err(Fault::Vi(format!(
                    "completion {:?} (wr_id {:#x})",
                    wc.status(),
                    wc.wr_id()
                )));
            }
            if wc.wr_id() & BATCH_TAG != 0 {
                let g = g.get_or_insert_with(|| shared.lock());
                durable = Some(
                    g.writer
                        .batch_completed(wc.wr_id() & !BATCH_TAG)
                        .map_err(|e| Fault::Protocol(MirrorFault::Completion(e)))?,
                );
            }
            // Otherwise one of the reader's acks went out.
        }
        if let (Some(g), Some(_)) = (g.as_mut(), durable) {
            // A completed resend may free ring space the last checkpoint still holds.
            if g.writer.checkpoint_due() {
                g.persist().map_err(|e| writer_checkpoint_fault(&e))?;
            }
        }
        if let Some(d) = durable {
            shared.counters.durable.fetch_max(d.0, Ordering::SeqCst);
            if shared.first_durable_due.swap(false, Ordering::Relaxed) {
                let ic = InterconnectId(shared.link.load(Ordering::Relaxed) as u8);
                shared.step(StepKind::FirstDurable, ic, d);
            }
            // Read under the writer lock, where a waiter counts itself before it sleeps: it either saw
            // the new durable LSN or is counted here.
            wake = shared.sleepers.load(Ordering::SeqCst) > 0;
        }
    }
    if wake {
        shared.changed.notify_all();
    }
    Ok(n > 0)
}

/// Post every batch the writer has (credits and in-flight window permitting; beyond [`EAGER_BATCHES`] in
/// flight only once [`COALESCE_BYTES`] wait).
fn post(
    c: &SendConn,
    ring: &SharedMemory,
    max_sent: &mut Lsn,
    shared: &Shared,
) -> Result<bool, Fault> {
    let mut posted = false;
    while shared.unposted() {
        let (b, first) = {
            let mut g = shared.lock();
            let first = Lsn(g.writer.sent_lsn().0 + 1);
            if g.writer.in_flight() >= EAGER_BATCHES && g.writer.unsent_bytes() < COALESCE_BYTES {
                break;
            }
            match g.writer.next_batch() {
                Some(b) => (b, first),
                None => break,
            }
        };
        shared.posted.store(b.last_lsn.0, Ordering::SeqCst);
        post_batch(c, ring, &b).map_err(|e| Fault::Vi(format!("post: {e}")))?;
        shared.meter.add(b.segments().iter().map(|s| s.len).sum());
        posted = true;
        let counters = &shared.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        if first <= *max_sent {
            counters.resent_batches.fetch_add(1, Ordering::Relaxed);
        }
        *max_sent = (*max_sent).max(b.last_lsn);
    }
    Ok(posted)
}

struct Shared {
    writer: Mutex<WriterSide>,
    /// Notified when `durable` moves or ring space is released, if anyone sleeps (`sleepers`).
    changed: Condvar,
    /// Threads asleep on `changed` (counted under the writer lock).
    sleepers: AtomicU32,
    /// The send side (see [`SendConn`]).
    send: Mutex<SendSide>,
    /// A [`SendConn::fault`] is waiting for the mirror thread.
    send_fault: AtomicBool,
    /// Last LSN handed out in a batch: an append beyond it is waiting to be posted.
    posted: AtomicU64,
    /// The mirror thread is parked (or about to): an append it must post wakes it.
    parked: AtomicBool,
    /// Threads reaping their own entry's completion in [`Mirror::wait_durable`]: while there is one and
    /// one batch is in flight, the mirror thread parks instead of spinning next to the waiter.
    drivers: AtomicU32,
    meter: ByteMeter,
    counters: Counters,
    mirror_digest: AtomicU32,
    link: AtomicU32,
    synced: AtomicBool,
    stop: AtomicBool,
    /// Wakes the mirror thread from its sleep (appends, notices, stop).
    doorbell: Arc<Doorbell>,
    /// [`Mirror::set_spin`], nanoseconds.
    spin_ns: AtomicU64,
    /// The connection's steps ([`Mirror::steps`]); room for [`STEPS_KEPT`] made at the start.
    steps: Mutex<std::collections::VecDeque<Step>>,
    /// The first batch completion on the current connection is still to be recorded.
    first_durable_due: AtomicBool,
    /// The latest protocol fault ([`Mirror::fault`]).
    fault: Mutex<Option<MirrorFault>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriterSide> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wake(&self) {
        self.doorbell.ring();
    }

    /// Post what was appended and reap what completed, unless another thread holds the send side (it
    /// looks again after releasing it). True if anything happened.
    fn pump(&self) -> bool {
        let mut progress = false;
        loop {
            let mut s = match self.send.try_lock() {
                Ok(s) => s,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return progress,
            };
            let p = s.pump(self);
            progress |= p;
            drop(s);
            // An append that found the send side taken relies on its holder to look again.
            fence(Ordering::SeqCst);
            // (Nothing happened: no connection, no credit or a full window; the mirror thread retries.)
            if !p || !self.unposted() {
                return progress;
            }
        }
    }

    /// Appended entries not yet handed out in a batch.
    fn unposted(&self) -> bool {
        self.counters.appended.load(Ordering::SeqCst) > self.posted.load(Ordering::SeqCst)
    }

    /// Records a step (not on the data path: a connection changes, or its first completion).
    fn step(&self, kind: StepKind, ic: InterconnectId, lsn: Lsn) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if steps.len() == STEPS_KEPT {
            steps.pop_front();
        }
        steps.push_back(Step {
            at: Instant::now(),
            kind,
            ic,
            lsn,
        });
    }

    fn lock_send(&self) -> MutexGuard<'_, SendSide> {
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running NVRAM mirror: the storage engine's handle. Cheap to share by reference across threads.
pub struct Mirror {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    capacity: u64,
    max_entry: usize,
    paths: [PathBuf; 4],
}

/// What is applied from the partner's log: called on the mirror thread for each entry, in LSN order, once.
pub type ApplyFn = Box<dyn FnMut(Lsn, &[u8]) + Send>;

/// The four files of a mirror at `path`: the local log, the partner's mirror ring, the reader's checkpoint
/// and the writer's checkpoint.
pub fn ring_paths(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [
        path.to_owned(),
        with(".mirror"),
        with(".mirror.state"),
        with(".state"),
    ]
}

fn map(path: &Path, bytes: usize) -> Result<Arc<SharedMemory>, StartError> {
    SharedMemory::map_file(path, bytes).map_err(|source| StartError::Map {
        path: path.to_owned(),
        source,
    })
}

/// Start a mirror client on `node` with a log ring of `bytes` at `path` (see the module doc for the files).
/// The mirror registers `spec` with its own private data (the entry [`Formats`] it speaks), replacing any
/// the caller set.
pub fn start(
    node: &NodeHandle,
    spec: ClientSpec,
    path: &Path,
    bytes: u64,
) -> Result<Mirror, StartError> {
    start_with(node, spec, path, bytes, Box::new(|_, _| {}))
}

/// [`start`], with `apply` called for every entry of the partner's log as it is applied here.
pub fn start_with(
    node: &NodeHandle,
    spec: ClientSpec,
    path: &Path,
    bytes: u64,
    mut apply: ApplyFn,
) -> Result<Mirror, StartError> {
    let paths = ring_paths(path);
    let local = map(&paths[0], bytes as usize)?;
    let mirror = map(&paths[1], bytes as usize)?;
    let state = map(&paths[2], 2 * Checkpoint::ENCODED_LEN)?;
    let wstate = map(&paths[3], 2 * WriterCheckpoint::ENCODED_LEN)?;
    // The log continues where the last process left it (a fresh, zeroed log starts at LSN 1).
    let (wcheckpoint, wslot) = load_writer_checkpoint(&wstate);
    let (writer, found) = MirrorWriter::recover(&*local, wcheckpoint, 0)?;
    if writer.last_lsn() > Lsn(0) {
        tracing::info!(
            target: "ccm::nvram",
            last_lsn = writer.last_lsn().0,
            after_checkpoint = found,
            partner_applied = writer.durable_lsn().0,
            "mirror log recovered"
        );
    }
    let (checkpoint, slot) = load_checkpoint(&state);
    // What arrived after the checkpoint (while this process was down) is applied now, through `apply`:
    // this is `MirrorReader::recover` with the engine's callback.
    let mut reader = MirrorReader::resume(bytes, checkpoint.unwrap_or_default())?;
    let recovered = reader.scan(&*mirror, |lsn, payload| apply(lsn, payload))?;
    if checkpoint.is_some() || recovered.entries > 0 {
        tracing::info!(
            target: "ccm::nvram",
            applied_lsn = recovered.applied_lsn.0,
            recovered_entries = recovered.entries,
            "mirror ring recovered"
        );
    }
    let max_entry = writer.max_entry();
    let (appended, durable) = (writer.last_lsn(), writer.durable_lsn());
    let partner_entries = recovered.entries;
    let memory = vec![
        ClientMemory {
            memory: local.clone(),
            remote_write: false,
        },
        ClientMemory {
            memory: mirror.clone(),
            remote_write: true,
        },
    ];
    let doorbell = Arc::new(Doorbell::new().map_err(|e| {
        StartError::Node(NodeError::Io {
            what: "mirror doorbell".into(),
            source: e,
        })
    })?);
    let bell = doorbell.clone();
    // The client's private data is the mirror's own: the formats it speaks, for the partner's check.
    let spec = ClientSpec {
        private: Formats::THIS_BUILD.encode().to_vec(),
        ..spec
    };
    let handle = node.register_woken(spec, memory, Arc::new(move || bell.ring()))?;
    let shared = Arc::new(Shared {
        writer: Mutex::new(WriterSide {
            writer,
            ring: local.clone(),
            state: wstate,
            slot: wslot,
        }),
        changed: Condvar::new(),
        sleepers: AtomicU32::new(0),
        send: Mutex::new(SendSide {
            conn: None,
            ring: local.clone(),
            // What the old process may have sent: a resend of it counts as one.
            max_sent: appended,
            wc: [Completion::default(); 16],
        }),
        send_fault: AtomicBool::new(false),
        posted: AtomicU64::new(durable.0),
        parked: AtomicBool::new(false),
        drivers: AtomicU32::new(0),
        meter: handle.meter(),
        counters: Counters::default(),
        mirror_digest: AtomicU32::new(reader.digest().0),
        link: AtomicU32::new(NO_LINK),
        synced: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        doorbell,
        spin_ns: AtomicU64::new(0),
        steps: Mutex::new(std::collections::VecDeque::with_capacity(STEPS_KEPT)),
        first_durable_due: AtomicBool::new(false),
        fault: Mutex::new(None),
    });
    shared
        .counters
        .partner_applied
        .store(reader.applied_lsn().0, Ordering::Relaxed);
    shared
        .counters
        .partner_entries
        .store(partner_entries, Ordering::Relaxed);
    shared
        .counters
        .appended
        .store(appended.0, Ordering::Relaxed);
    shared.counters.durable.store(durable.0, Ordering::Relaxed);
    let client = Client {
        handle,
        shared: shared.clone(),
        mirror,
        state,
        checkpoint_slot: slot,
        checkpointed: false,
        reader,
        apply,
        conn: None,
        wc: [Completion::default(); 32],
        turns_unscanned: 0,
    };
    let thread = std::thread::Builder::new()
        .name("ccm-nvram".into())
        .spawn(move || client.run())
        .map_err(StartError::Spawn)?;
    Ok(Mirror {
        shared,
        thread: Some(thread),
        capacity: bytes,
        max_entry,
        paths,
    })
}

impl Mirror {
    /// Append `payload` to the log: the only copy is into the NVRAM ring. Returns its LSN; it is mirrored in
    /// the background ([`wait_durable`](Self::wait_durable) waits for it). [`MirrorError::RingFull`] is
    /// back-pressure: retry once the partner applied more ([`append_wait`](Self::append_wait) does).
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, MirrorError> {
        self.append_vectored(&[payload])
    }

    /// [`append`](Self::append) of one entry whose payload is `parts` in order (a log record's header and
    /// its data, say), without building it first: each part is copied once, straight into the log.
    pub fn append_vectored(&self, parts: &[&[u8]]) -> Result<Lsn, MirrorError> {
        let (lsn, idle) = {
            let mut g = self.shared.lock();
            let WriterSide { writer, ring, .. } = &mut *g;
            let lsn = writer.append_vectored(ring, parts)?;
            (lsn, writer.in_flight() == 0)
        };
        self.shared.counters.appended.store(lsn.0, Ordering::SeqCst);
        // Onto an idle link the entry is posted right here, and its completion is reaped by whoever looks
        // first: `wait_durable` or `durable_lsn` in the engine's thread, or the mirror thread (polling while
        // batches are in flight, or once something wakes it): waking it here would put a
        // second busy thread next to the waiter on the latency path. While batches are in flight the entry
        // joins the next batch, posted by whichever thread reaps a completion; a parked mirror thread is
        // woken for it.
        let shared = &*self.shared;
        if !(idle && shared.pump()) && shared.parked.load(Ordering::SeqCst) {
            shared.wake();
        }
        Ok(lsn)
    }

    /// [`append`](Self::append), waiting up to `timeout` while the ring is full. The clock is read only
    /// once the ring is found full (about 1 us a read in the lab guest once its kernel judged the TSC
    /// unstable and reads the emulated HPET).
    pub fn append_wait(&self, payload: &[u8], timeout: Duration) -> Result<Lsn, MirrorError> {
        self.append_vectored_wait(&[payload], timeout)
    }

    /// [`append_vectored`](Self::append_vectored), waiting up to `timeout` while the ring is full.
    pub fn append_vectored_wait(
        &self,
        parts: &[&[u8]],
        timeout: Duration,
    ) -> Result<Lsn, MirrorError> {
        let first = self.append_vectored(parts);
        if !matches!(first, Err(MirrorError::RingFull { .. })) {
            return first;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.append_vectored(parts) {
                Err(MirrorError::RingFull { needed, .. }) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.append_vectored(parts);
                    }
                    let g = self.shared.lock();
                    if g.writer.free() < needed {
                        // Counted under the writer lock, so the ack that frees space notifies us.
                        self.shared.sleepers.fetch_add(1, Ordering::SeqCst);
                        let _ = self
                            .shared
                            .changed
                            .wait_timeout(g, (deadline - now).min(Duration::from_millis(10)));
                        self.shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                other => return other,
            }
        }
    }

    /// Every entry up to this LSN is in the partner's memory. Reaps completed batches first, if no other
    /// thread is at it (no wait, no allocation).
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.pump();
        self.counted_durable()
    }

    fn counted_durable(&self) -> Lsn {
        Lsn(self.shared.counters.durable.load(Ordering::SeqCst))
    }

    /// Wait until `lsn` is durable (in the partner's memory), at most `timeout`. True if it is.
    ///
    /// The waiting thread reaps the completions itself (and posts what is appended) for up to
    /// [`DRIVE`], or the spin of [`set_spin`](Self::set_spin) if longer, as `ib_write_lat` does: no other
    /// thread has to be woken for it. After that, or while another thread holds the send side, it sleeps
    /// until the mirror thread reports the entry durable.
    pub fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> bool {
        let shared = &*self.shared;
        // The counter only grows, and only after the writer's own durable LSN did.
        if self.counted_durable() >= lsn {
            return true;
        }
        let drive = self.spin().max(DRIVE).min(timeout);
        let mut polls = 0u32;
        // The clock is read only every 64 polls, the first time after them: an entry that is durable
        // within those never reads it (about 1 us a read in the lab guest on the emulated HPET). So
        // `timeout` counts from the 64th poll.
        let mut start = None;
        shared.drivers.fetch_add(1, Ordering::SeqCst);
        let driven = loop {
            shared.pump();
            if self.counted_durable() >= lsn {
                break true;
            }
            polls += 1;
            // No connection to reap from (a failover is under way): leave the CPU to it and sleep.
            if !shared.synced.load(Ordering::Relaxed) {
                break false;
            }
            if polls % 64 == 0 && start.get_or_insert_with(Instant::now).elapsed() >= drive {
                break false;
            }
            if polls % 8 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        shared.drivers.fetch_sub(1, Ordering::SeqCst);
        if driven {
            return true;
        }
        // (Unset if the drive ended before the clock was read: no connection.)
        let deadline = start.unwrap_or_else(Instant::now) + timeout;
        if shared.parked.load(Ordering::SeqCst) {
            shared.wake();
        }
        let mut g = shared.lock();
        loop {
            if g.writer.durable_lsn() >= lsn {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            g = shared
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The issue's `mirror_until(lsn)`: wait until every entry up to `lsn` is in the partner's memory, at
    /// most `timeout`, and say why not, typed: an LSN this log never appended is refused at once
    /// ([`MirrorWaitError::NotAppended`]); a timeout says how far the partner got, the interconnect in use
    /// (none while the partner is unreachable or a failover is under way) and the mirror's fault, if one
    /// stopped its writing (a partner that cannot read this log, say). The wait itself is
    /// [`wait_durable`](Self::wait_durable)'s.
    pub fn mirror_until(&self, lsn: Lsn, timeout: Duration) -> Result<(), MirrorWaitError> {
        let appended = Lsn(self.shared.counters.appended.load(Ordering::SeqCst));
        if lsn > appended {
            return Err(MirrorWaitError::NotAppended { lsn, appended });
        }
        if self.wait_durable(lsn, timeout) {
            return Ok(());
        }
        Err(MirrorWaitError::Timeout {
            lsn,
            durable: self.durable_lsn(),
            link: self.link(),
            fault: self.fault(),
        })
    }

    /// Trade CPU for latency (off, zero, by default): [`wait_durable`](Self::wait_durable) reaps
    /// completions itself up to `d` (at least [`DRIVE`]) before it sleeps on a condition variable, and the
    /// mirror thread, once idle, keeps polling for `d` before it parks, so the partner's acks and
    /// notifications are picked up without an unpark. Each wake-up of a sleeping thread avoided is tens of microseconds in the emulated
    /// lab guest, as much as the RDMA round trip itself (docs/performance.md, "NVRAM mirror vs raw RDMA
    /// WRITE"). Only for a writer with spare cores: on the lab's 2 vCPUs, spinning waiters and mirror threads
    /// of two busy nodes starve the nodes' driver threads (turns of 20-200 ms), enough to slow a reconnect
    /// past the kill test's limits.
    pub fn set_spin(&self, d: Duration) {
        self.shared
            .spin_ns
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The spin set with [`set_spin`](Self::set_spin).
    pub fn spin(&self) -> Duration {
        Duration::from_nanos(self.shared.spin_ns.load(Ordering::Relaxed))
    }

    /// The latest protocol fault since the start, if any (each also counts in
    /// [`MirrorStats::protocol_errors`] and is logged): why the mirror stopped writing on a connection, typed
    /// ([`MirrorFault`]). An older build's entry in the partner's log, for instance, is
    /// `PartnerLog(EntryFormat { lsn, offset })`.
    pub fn fault(&self) -> Option<MirrorFault> {
        self.shared
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters.
    pub fn stats(&self) -> MirrorStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MirrorStats {
            appended: l(&c.appended),
            durable: l(&c.durable),
            partner_applied: l(&c.partner_applied),
            partner_entries: l(&c.partner_entries),
            batches: l(&c.batches),
            resent_batches: l(&c.resent_batches),
            stops: l(&c.stops),
            readies: l(&c.readies),
            vi_errors: l(&c.vi_errors),
            protocol_errors: l(&c.protocol_errors),
        }
    }

    /// Digest of every entry appended here, in order.
    pub fn local_digest(&self) -> Digest {
        self.shared.lock().writer.digest()
    }

    /// Digest of every entry of the partner's log applied here, in order (equals the partner's
    /// [`local_digest`](Self::local_digest) once in sync).
    pub fn mirror_digest(&self) -> Digest {
        Digest(self.shared.mirror_digest.load(Ordering::Relaxed))
    }

    /// The interconnect the mirror is connected on, if any.
    pub fn link(&self) -> Option<InterconnectId> {
        match self.shared.link.load(Ordering::Relaxed) {
            NO_LINK => None,
            i => Some(InterconnectId(i as u8)),
        }
    }

    /// The latest steps of the mirror's connections (at most [`STEPS_KEPT`], oldest first): when it left
    /// a link, resumed on another, heard the partner's first ack and saw its first completion there.
    pub fn steps(&self) -> Vec<Step> {
        let steps = self.shared.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.iter().copied().collect()
    }

    /// Connected: the writer is sending on this connection.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Relaxed)
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Largest payload one entry takes.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    /// The local log, the partner's mirror ring, the reader's and the writer's checkpoint files.
    pub fn paths(&self) -> &[PathBuf; 4] {
        &self.paths
    }

    /// Stop the client thread and unregister (the partner sees `PartnerClosed`).
    pub fn close(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The newest whole reader checkpoint, and the slot to write next (the other one).
fn load_checkpoint(state: &SharedMemory) -> (Option<Checkpoint>, usize) {
    let mut best: Option<(Checkpoint, usize)> = None;
    for slot in 0..2 {
        let mut b = [0u8; Checkpoint::ENCODED_LEN];
        if state.read(slot * Checkpoint::ENCODED_LEN, &mut b).is_err() {
            continue;
        }
        if let Some(c) = Checkpoint::decode(&b) {
            if best.is_none_or(|(b, _)| c.pos > b.pos) {
                best = Some((c, slot));
            }
        }
    }
    (best.map(|(c, _)| c), best.map_or(0, |(_, slot)| slot ^ 1))
}

/// The newest whole writer checkpoint, and the slot to write next (the other one).
fn load_writer_checkpoint(state: &SharedMemory) -> (Option<WriterCheckpoint>, usize) {
    let mut slots = [[0u8; WriterCheckpoint::ENCODED_LEN]; 2];
    for (k, b) in slots.iter_mut().enumerate() {
        if state.read(k * WriterCheckpoint::ENCODED_LEN, b).is_err() {
            *b = [0; WriterCheckpoint::ENCODED_LEN];
        }
    }
    let newest = WriterCheckpoint::newest([&slots[0], &slots[1]]);
    let next = match newest {
        Some(c) if WriterCheckpoint::decode(&slots[0]) == Some(c) => 1,
        _ => 0,
    };
    (newest, next)
}

struct Conn {
    ic: InterconnectId,
    generation: Generation,
    vi: Arc<RcChannel>,
    local: ClientRegion,
    remote: MemoryWindow,
    /// The partner's first ack on this connection arrived.
    first_ack: bool,
    /// The partner refused our state: write nothing more on this connection.
    wedged: bool,
    /// Notification slots reposted on this connection.
    notify_reposted: u64,
    /// The applied position our last ack on this connection reported, and when it went.
    acked_pos: u64,
    acked_at: Option<Instant>,
}

struct Client {
    handle: ClientHandle,
    shared: Arc<Shared>,
    mirror: Arc<SharedMemory>,
    state: Arc<SharedMemory>,
    /// The reader checkpoint slot to write next, and whether this process wrote one yet.
    checkpoint_slot: usize,
    checkpointed: bool,
    reader: MirrorReader,
    apply: ApplyFn,
    conn: Option<Conn>,
    wc: [Completion; 32],
    /// Turns since the last scan of the mirror ring (see [`QUIET_SCAN_TURNS`]).
    turns_unscanned: u32,
}

enum Fault {
    Vi(String),
    Protocol(MirrorFault),
}

fn writer_checkpoint_fault(e: &ccm_verbs::Error) -> Fault {
    Fault::Protocol(MirrorFault::Checkpoint {
        what: "writer's",
        error: e.to_string(),
    })
}

impl Client {
    fn run(mut self) {
        // When the connection last had nothing to do (None while busy).
        let mut idle_since: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if !self.drain_notices() {
                break;
            }
            if self.conn.is_none() {
                match self.handle.events.recv_timeout(Duration::from_millis(20)) {
                    Ok(n) => self.notice(n),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            let busy = match self.turn() {
                Ok(busy) => busy,
                Err(f) => {
                    self.fail(f);
                    continue;
                }
            };
            if busy {
                idle_since = None;
            } else {
                // Otherwise sleep ([`Client::sleep`]): an append, a notice or a solicited receive wakes us.
                // While batches are in flight, and for the spin of `Mirror::set_spin` after the last activity,
                // spin (yielding): a timed sleep costs a timer tick and an unpark a wake-up, each a multiple of
                // the RDMA WRITE's own latency, and the storage engine waits on exactly this.
                // (The clock is read only when spinning is on: in the lab guest it is an emulated HPET.)
                let spin = Duration::from_nanos(self.shared.spin_ns.load(Ordering::Relaxed));
                let spinning = !spin.is_zero() && {
                    let now = Instant::now();
                    now.duration_since(*idle_since.get_or_insert(now)) < spin
                };
                // A thread in `wait_durable` reaps its batch's completion itself: with only that batch
                // in flight, spinning next to it would only take CPU from it (and from rxe's own work)
                // on a small machine. With more in flight (a stream of appends) this thread keeps
                // reaping and posting, so appends and posts overlap.
                let in_flight = self.shared.lock().writer.in_flight();
                let reaping = in_flight > 1
                    || (in_flight == 1 && self.shared.drivers.load(Ordering::SeqCst) == 0);
                if spinning || reaping {
                    std::thread::yield_now();
                } else {
                    // Also with entries unposted: this turn's pump could not post them (no connection
                    // synced, no credit) or another thread holds the send side and looks again after it.
                    // Spinning here instead starved the nodes' driver threads in the lab.
                    self.shared.parked.store(true, Ordering::SeqCst);
                    self.sleep();
                    self.shared.parked.store(false, Ordering::SeqCst);
                }
            }
        }
        self.set_conn(None);
        self.handle.unregister();
    }

    /// Sleep (with `parked` set) until the doorbell rings (an append, a notice, stop), the partner
    /// solicits (its ack, or a notification once half its ring awaits our ack), or [`IDLE_SLEEP`]
    /// passes; then scan quietly for the partner's plain batches. Those raise no event on purpose: the
    /// partner's entry is durable at its RC completion, and a wake-up here would sit on its path (rxe
    /// raises the event before it sends the ACK that completes the partner's WRITE). Without a
    /// completion channel: 1 ms.
    fn sleep(&mut self) {
        let channel = self
            .conn
            .as_ref()
            .and_then(|c| Some((c.vi.clone(), c.vi.completion_channel()?.clone())));
        let armed = match &channel {
            Some((vi, _)) => vi.arm_solicited_receives().is_ok(),
            None => false,
        };
        // One more look with `parked` set: a receive that came before the arming raises no event, and an
        // append that saw `parked` unset rang no doorbell; any later append or notice rings it. Entries
        // still unposted after this (no credit left) wait for the partner's ack, which is solicited.
        match self.turn() {
            Ok(false) => {}
            Ok(true) => return,
            Err(f) => return self.fail(f),
        }
        if !self.handle.events.is_empty() || self.shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let timeout = if armed {
            IDLE_SLEEP
        } else {
            Duration::from_millis(1)
        };
        let bell = self.shared.doorbell.clone();
        match channel.as_ref().filter(|_| armed) {
            Some((_, ch)) => {
                bell.wait(Some(ch.as_fd()), timeout);
                // Take the channel's events (each acknowledged), so its fd is quiet until the next one.
                while let Ok(Some(_)) = ch.try_get_event() {}
            }
            None => bell.wait(None, timeout),
        }
        bell.drain();
        // Whatever woke us, look for plain batches of the partner (they raise no event).
        if self.conn.is_some() {
            if let Err(f) = self.scan_and_ack(true) {
                self.fail(f);
            }
        }
    }

    /// Returns false when the node is gone.
    fn drain_notices(&mut self) -> bool {
        loop {
            match self.handle.events.try_recv() {
                Ok(n) => self.notice(n),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn set_conn(&mut self, conn: Option<Conn>) {
        // The VIs of a binding we leave are being released: put ours in the error state now, so nothing
        // still queued on it can land in the partner's ring after we resume on another connection.
        self.shared.lock_send().conn = None;
        if let Some(old) = self.conn.take() {
            old.vi.fail();
        }
        self.shared.link.store(
            conn.as_ref().map_or(NO_LINK, |c| c.ic.0 as u32),
            Ordering::Relaxed,
        );
        self.shared.synced.store(false, Ordering::Relaxed);
        self.conn = conn;
    }

    fn notice(&mut self, n: ClientNotice) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        match n {
            ClientNotice::Ready {
                ic,
                generation,
                vis,
                regions,
                partner,
                ..
            } => {
                c.readies.fetch_add(1, Ordering::Relaxed);
                let capacity = self.reader_capacity();
                let (Some(vi), Some(local), Some(remote)) = (
                    vis.into_iter().next(),
                    regions.first().cloned(),
                    partner.windows.first().copied(),
                ) else {
                    self.protocol_error(MirrorFault::IncompleteReady);
                    return;
                };
                if remote.len != capacity {
                    self.protocol_error(MirrorFault::RingSize {
                        partner: remote.len,
                        ours: capacity,
                    });
                    return;
                }
                match Formats::decode(&partner.private).and_then(|p| {
                    p.map(|p| Formats::THIS_BUILD.check(&p).map(|()| p))
                        .transpose()
                }) {
                    Err(e) => {
                        self.protocol_error(MirrorFault::PartnerFormats(e));
                        return;
                    }
                    Ok(None) => tracing::info!(
                        target: "ccm::nvram",
                        ic = ic.0,
                        "the partner did not tell its entry formats (a manager older than protocol \
                         version 3): each entry's format is checked as it is read"
                    ),
                    Ok(Some(_)) => {}
                }
                tracing::info!(target: "ccm::nvram", ic = ic.0, generation = generation.0, "mirror ready");
                self.set_conn(Some(Conn {
                    ic,
                    generation,
                    vi,
                    local,
                    remote,
                    first_ack: false,
                    wedged: false,
                    notify_reposted: 0,
                    acked_pos: 0,
                    acked_at: None,
                }));
                // Our writer resumes at once; and we tell the partner's writer where we stand.
                self.resume_writer();
                if let Err(f) = self.scan_and_ack(false) {
                    self.fail(f);
                }
            }
            ClientNotice::Stop { ic } => {
                c.stops.fetch_add(1, Ordering::Relaxed);
                if self.conn.as_ref().is_some_and(|k| k.ic == ic) {
                    shared.step(StepKind::Stop, ic, self.shared.lock().writer.durable_lsn());
                    self.set_conn(None);
                }
            }
            ClientNotice::PartnerDown | ClientNotice::PartnerClosed => self.set_conn(None),
            ClientNotice::PartnerSuspect => {}
        }
    }

    fn reader_capacity(&self) -> u64 {
        self.mirror.len() as u64
    }

    fn protocol_error(&mut self, fault: MirrorFault) {
        self.shared
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(target: "ccm::nvram", "mirror protocol error: {fault}");
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    fn fail(&mut self, f: Fault) {
        match f {
            Fault::Vi(what) => {
                self.shared
                    .counters
                    .vi_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ccm::nvram", "mirror VI failed: {what}");
                if let Some(c) = &self.conn {
                    let durable = self.shared.lock().writer.durable_lsn();
                    self.shared.step(StepKind::ViError, c.ic, durable);
                    self.handle.report_vi_error(c.ic, c.generation);
                }
                self.set_conn(None);
            }
            Fault::Protocol(fault) => {
                self.protocol_error(fault);
                if let Some(c) = &mut self.conn {
                    c.wedged = true;
                }
                self.shared.lock_send().conn = None;
                self.shared.synced.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Apply what the partner wrote, persist the checkpoint, send our ack. A `quiet` scan (not asked for by
    /// a notification) acks only once it applied at least an eighth of the ring since our last ack, or
    /// anything at all since an ack at least [`IDLE_SLEEP`] old: ring space the partner's writer waits for
    /// is asked for with a notification, so this only gives a writer that went quiet its space back, with
    /// at most 8 acks per ring's worth of entries and one per `IDLE_SLEEP` (see "Receive credits").
    fn scan_and_ack(&mut self, quiet: bool) -> Result<(), Fault> {
        self.turns_unscanned = 0;
        let counters = &self.shared.counters;
        let apply = &mut self.apply;
        let scan = self
            .reader
            .scan(&*self.mirror, |lsn, payload| apply(lsn, payload))
            .map_err(|e| Fault::Protocol(MirrorFault::PartnerLog(e)))?;
        counters
            .partner_entries
            .fetch_add(scan.entries, Ordering::Relaxed);
        counters
            .partner_applied
            .store(scan.applied_lsn.0, Ordering::Relaxed);
        self.shared
            .mirror_digest
            .store(self.reader.digest().0, Ordering::Relaxed);
        if scan.entries > 0 || !self.checkpointed {
            // Persisted before it is reported: a restart never reports less than before.
            let slot = self.checkpoint_slot * Checkpoint::ENCODED_LEN;
            self.checkpoint_slot ^= 1;
            self.checkpointed = true;
            self.state
                .write(slot, &self.reader.checkpoint().encode())
                .map_err(|e| {
                    Fault::Protocol(MirrorFault::Checkpoint {
                        what: "reader's",
                        error: e.to_string(),
                    })
                })?;
        }
        let Some(c) = &mut self.conn else {
            return Ok(());
        };
        let unacked = scan.applied_pos.saturating_sub(c.acked_pos);
        if quiet
            && unacked < self.mirror.len() as u64 / 8
            && (unacked == 0 || c.acked_at.is_some_and(|t| t.elapsed() < IDLE_SLEEP))
        {
            return Ok(());
        }
        c.acked_pos = scan.applied_pos;
        c.acked_at = Some(Instant::now());
        let ack = Ack {
            applied_pos: scan.applied_pos,
            applied_lsn: scan.applied_lsn,
            credits_total: NOTIFY_WINDOW + c.notify_reposted,
        };
        let ack = ack.encode();
        // Solicited: the partner's mirror thread may sleep until an ack frees its credits or ring space.
        c.vi.send_inline_soliciting(&ack, true)
            .map_err(|e| Fault::Vi(format!("ack send: {e}")))?;
        self.handle.add_bytes(ack.len() as u64);
        Ok(())
    }

    /// One round on the connection: what arrived (the partner's acks, its notifications), then the send
    /// side if no other thread holds it. True if anything happened.
    fn turn(&mut self) -> Result<bool, Fault> {
        let Some(c) = &self.conn else {
            return Ok(false);
        };
        if self.shared.send_fault.swap(false, Ordering::SeqCst) {
            let fault = self
                .shared
                .lock_send()
                .conn
                .as_mut()
                .and_then(|s| s.fault.take());
            if let Some(f) = fault {
                return Err(f);
            }
        }
        let vi = c.vi.clone();
        let n = vi
            .poll_recv(&mut self.wc)
            .map_err(|e| Fault::Vi(format!("poll: {e}")))?;
        let mut notified = false;
        let mut acks: [Option<Ack>; 1] = [None];
        for k in 0..n {
            let wc = self.wc[k];
            if !wc.is_success() {
                return Err(Fault::Vi(format!(
                    "completion {:?} (wr_id {:#x})",
                    wc.status(),
                    wc.wr_id()
                )));
            }
            if wc.imm().is_some() {
                vi.repost(&wc)
                    .map_err(|e| Fault::Vi(format!("repost: {e}")))?;
                if let Some(c) = &mut self.conn {
                    c.notify_reposted += 1;
                }
                notified = true;
            } else {
                let ack = Ack::decode(vi.received(&wc));
                vi.repost(&wc)
                    .map_err(|e| Fault::Vi(format!("repost: {e}")))?;
                match ack {
                    Some(a) => {
                        // Acks only grow: the latest one of this poll says everything.
                        if let Some(prev) = acks[0] {
                            self.partner_ack(prev)?;
                        }
                        acks[0] = Some(a);
                    }
                    None => {
                        return Err(Fault::Protocol(MirrorFault::NotAnAck {
                            bytes: wc.byte_len(),
                        }))
                    }
                }
            }
        }
        if let Some(a) = acks[0] {
            self.partner_ack(a)?;
        }
        self.turns_unscanned += 1;
        if notified {
            self.scan_and_ack(false)?;
        } else if self.turns_unscanned >= QUIET_SCAN_TURNS {
            self.scan_and_ack(true)?;
        }
        let pumped = self.shared.pump();
        Ok(n > 0 || pumped)
    }

    /// On `Ready`: the writer resumes on the new connection from what it knows is in the partner's memory
    /// ([`MirrorWriter::link_up`]), without waiting for the partner's first ack (that would put the
    /// partner's own resume on our critical path), and from now on any thread may post on it.
    fn resume_writer(&mut self) {
        let Some(c) = &self.conn else { return };
        let sent = {
            let mut g = self.shared.lock();
            g.writer.link_up(NOTIFY_WINDOW);
            g.writer.sent_lsn()
        };
        self.shared.posted.store(sent.0, Ordering::SeqCst);
        self.shared.lock_send().conn = Some(SendConn {
            vi: c.vi.clone(),
            local: c.local.clone(),
            remote: c.remote,
            fault: None,
        });
        self.shared.synced.store(true, Ordering::Relaxed);
        self.shared.first_durable_due.store(true, Ordering::Relaxed);
        self.shared.step(StepKind::Resumed, c.ic, sent);
        tracing::info!(target: "ccm::nvram", ic = c.ic.0, resend_from = sent.0, "mirror writer resumed");
        self.shared.pump();
    }

    fn partner_ack(&mut self, a: Ack) -> Result<(), Fault> {
        let Some(c) = &mut self.conn else {
            return Ok(());
        };
        if c.wedged {
            return Ok(());
        }
        let durable = {
            let mut g = self.shared.lock();
            g.writer
                .applied(a.applied_pos, a.applied_lsn, a.credits_total)
                .map_err(|e| Fault::Protocol(MirrorFault::PartnerAck(e)))?;
            if !c.first_ack {
                // The partner reports on this connection only after it put its old VI in the error
                // state: no WRITE of an earlier connection can land any more.
                g.writer.old_links_closed();
            }
            // Before any append may reuse the space this ack freed.
            g.persist().map_err(|e| writer_checkpoint_fault(&e))?;
            g.writer.durable_lsn()
        };
        if !c.first_ack {
            c.first_ack = true;
            self.shared.step(StepKind::FirstAck, c.ic, a.applied_lsn);
            tracing::info!(
                target: "ccm::nvram",
                ic = c.ic.0,
                partner_lsn = a.applied_lsn.0,
                "the partner's first ack on this connection"
            );
        }
        self.shared
            .counters
            .durable
            .fetch_max(durable.0, Ordering::SeqCst);
        // Ring space was released (and `durable` may have moved): wake whoever sleeps on it. Counted
        // under the writer lock, as in `reap`; a notify without sleepers would still be a system call.
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            self.shared.changed.notify_all();
        }
        Ok(())
    }
}

/// RDMA WRITE the batch's segments from the local ring to the same offsets of the partner's mirror ring; only
/// the last one is signalled, and if the batch notifies ([`Batch::notify`](crate::mirror::Batch::notify)) it
/// carries the immediate and is solicited. One post call (one doorbell) for the whole batch. A batch of one
/// segment of at most [`MAX_INLINE`] bytes goes inline.
fn post_batch(c: &SendConn, ring: &SharedMemory, b: &Batch) -> Result<(), ccm_verbs::Error> {
    let segs = b.segments();
    let imm = b.last_lsn.0 as u32;
    let last_op = |to: RemoteAddr| match b.notify {
        true => SendOp::WriteWithImm(to, imm),
        false => SendOp::Write(to),
    };
    let wr_id = BATCH_TAG | b.id;
    if segs.len() == 1 && segs[0].len as usize <= MAX_INLINE.min(c.vi.max_inline()) {
        // Inline: the provider copies the bytes into the work request (rxe then skips the memory region
        // lookup, the cheaper post for small entries); read from the ring onto the stack first, since no
        // reference into the mapping may be lent out.
        let mut buf = [0u8; MAX_INLINE];
        let bytes = &mut buf[..segs[0].len as usize];
        ring.read(segs[0].offset as usize, bytes)?;
        let to = RemoteAddr {
            addr: c.remote.addr + segs[0].offset,
            rkey: c.remote.rkey,
        };
        c.vi.check_port()?;
        return c
            .vi
            .qp()
            .post_send_one(&SendWr::inline(wr_id, last_op(to), bytes).solicit(b.notify));
    }
    let mut sges = [c
        .local
        .slice(segs[0].offset as usize, segs[0].len as usize)?; 2];
    for (k, seg) in segs.iter().enumerate().skip(1) {
        sges[k] = c.local.slice(seg.offset as usize, seg.len as usize)?;
    }
    let wr = |k: usize| {
        let to = RemoteAddr {
            addr: c.remote.addr + segs[k].offset,
            rkey: c.remote.rkey,
        };
        if k + 1 == segs.len() {
            SendWr::new(wr_id, last_op(to), std::slice::from_ref(&sges[k])).solicit(b.notify)
        } else {
            SendWr::new(wr_id, SendOp::Write(to), std::slice::from_ref(&sges[k])).unsignaled()
        }
    };
    c.vi.check_port()?;
    if segs.len() == 1 {
        c.vi.qp().post_send_one(&wr(0))
    } else {
        c.vi.qp().post_send(&[wr(0), wr(1)])
    }
}

/// After a run: walk this node's log ring (`local_log`) and the partner's mirror of it (`partner_mirror`, the
/// partner's `PATH.mirror`), both of `bytes`, and compare them entry by entry at the same offsets. Call it
/// once the writer is quiescent and everything is durable; while appends continue, the newest entries may
/// legitimately be missing from the mirror.
pub fn verify_rings(
    local_log: &Path,
    partner_mirror: &Path,
    bytes: u64,
) -> std::io::Result<RingCheck> {
    let read = |p: &Path| -> std::io::Result<Vec<u8>> {
        let mut v = std::fs::read(p)?;
        if (v.len() as u64) < bytes {
            return Err(std::io::Error::other(format!(
                "{} has {} bytes, expected {bytes}",
                p.display(),
                v.len()
            )));
        }
        v.truncate(bytes as usize);
        Ok(v)
    };
    let local = read(local_log)?;
    let mirror = read(partner_mirror)?;
    compare_rings(local.as_slice(), mirror.as_slice()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::{read_entry, RingEntry, ENTRY_HEADER};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ccm-nvram-{tag}-{}", std::process::id()))
    }

    #[test]
    fn acks_round_trip_and_anything_else_is_refused() {
        let a = Ack {
            applied_pos: 1 << 40,
            applied_lsn: Lsn(12_345),
            credits_total: NOTIFY_WINDOW + 7,
        };
        let b = a.encode();
        assert!(b.len() <= 64, "fits inline");
        assert_eq!(Ack::decode(&b), Some(a));
        assert_eq!(Ack::decode(&b[..27]), None);
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Ack::decode(&bad), None);
        assert_eq!(Ack::decode(&[0u8; 8]), None);
    }

    #[test]
    fn ring_paths_add_suffixes() {
        let p = ring_paths(Path::new("/dev/shm/nvram.log"));
        assert_eq!(p[0], PathBuf::from("/dev/shm/nvram.log"));
        assert_eq!(p[1], PathBuf::from("/dev/shm/nvram.log.mirror"));
        assert_eq!(p[2], PathBuf::from("/dev/shm/nvram.log.mirror.state"));
        assert_eq!(p[3], PathBuf::from("/dev/shm/nvram.log.state"));
    }

    #[test]
    fn the_newest_whole_checkpoint_is_loaded() {
        let state = SharedMemory::anonymous(2 * Checkpoint::ENCODED_LEN).unwrap();
        assert_eq!(load_checkpoint(&state), (None, 0));
        let old = Checkpoint {
            pos: 100,
            lsn: Lsn(3),
            digest: Digest(1),
        };
        let new = Checkpoint {
            pos: 200,
            lsn: Lsn(5),
            digest: Digest(2),
        };
        state.write(0, &old.encode()).unwrap();
        state.write(32, &new.encode()).unwrap();
        assert_eq!(
            load_checkpoint(&state),
            (Some(new), 0),
            "slot 1 is newest: write 0"
        );
        // The newer slot torn by a kill mid-write: the older one is used.
        state.write(40, &[0xff; 4]).unwrap();
        assert_eq!(load_checkpoint(&state), (Some(old), 1));
    }

    /// The client's writer side over real file mappings: after every partner report it persists its
    /// checkpoint (alternating slots); a new process maps the same files and continues the log exactly.
    #[test]
    fn a_writer_restarted_on_its_files_continues_the_log() {
        let bytes = 8192u64;
        let (lp, sp) = (tmp("wlog"), tmp("wstate"));
        let _ = (std::fs::remove_file(&lp), std::fs::remove_file(&sp));
        let open = || {
            let ring = SharedMemory::map_file(&lp, bytes as usize).unwrap();
            let state = SharedMemory::map_file(&sp, 2 * WriterCheckpoint::ENCODED_LEN).unwrap();
            let (c, slot) = load_writer_checkpoint(&state);
            let (writer, _) = MirrorWriter::recover(&*ring, c, 0).unwrap();
            WriterSide {
                writer,
                ring,
                state,
                slot,
            }
        };
        let mut side = open();
        assert_eq!(side.writer.last_lsn(), Lsn(0));
        let mut r = MirrorReader::new(bytes).unwrap();
        let mut mirror = vec![0u8; bytes as usize];
        let mut buf = vec![0u8; bytes as usize];
        side.writer.link_reset(0, Lsn(0), 1_000).unwrap();
        for i in 0..300u32 {
            let WriterSide { writer, ring, .. } = &mut side;
            writer.append(ring, &i.to_le_bytes().repeat(9)).unwrap();
            if let Some(b) = writer.next_batch() {
                for seg in b.segments() {
                    let (o, l) = (seg.offset as usize, seg.len as usize);
                    ring.read(o, &mut buf[..l]).unwrap();
                    mirror[o..o + l].copy_from_slice(&buf[..l]);
                }
                writer.batch_completed(b.id).unwrap();
                let s = r.scan(&mirror, |_, _| {}).unwrap();
                writer.applied(s.applied_pos, s.applied_lsn, 1_000).unwrap();
                side.persist().unwrap();
            }
        }
        side.writer.append(&mut side.ring, b"unsent").unwrap();
        let (last, digest, slot) = (side.writer.last_lsn(), side.writer.digest(), side.slot);
        drop(side);
        let side = open();
        assert_eq!(side.writer.last_lsn(), last);
        assert_eq!(side.writer.digest(), digest);
        assert_eq!(side.slot, slot, "the next write goes to the older slot");
        let _ = (std::fs::remove_file(&lp), std::fs::remove_file(&sp));
    }

    /// Rings written through the sans-IO writer into file mappings (the "RDMA" a copy of each batch's
    /// segments): the checker finds them equal across laps, and finds a damaged or missing entry.
    #[test]
    fn verify_rings_compares_both_files_and_finds_damage() {
        let bytes = 16_384u64;
        let (lp, mp) = (tmp("local"), tmp("mirror"));
        let _ = (std::fs::remove_file(&lp), std::fs::remove_file(&mp));
        let mut local = SharedMemory::map_file(&lp, bytes as usize).unwrap();
        let mirror = SharedMemory::map_file(&mp, bytes as usize).unwrap();
        let mut w = MirrorWriter::new(bytes, 1_000).unwrap();
        let mut r = MirrorReader::new(bytes).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut buf = vec![0u8; bytes as usize];
        let mut batches = Vec::new();
        for i in 0..2_000u32 {
            let p: Vec<u8> = (0..rng.gen_range(0..700)).map(|_| rng.gen()).collect();
            if w.append(&mut local, &p).is_err() {
                continue;
            }
            if i % 3 == 0 {
                if let Some(b) = w.next_batch() {
                    batches.push(b);
                }
            }
            if batches.len() > 2 {
                let b: Batch = batches.remove(0);
                for seg in b.segments() {
                    let chunk = &mut buf[..seg.len as usize];
                    local.read(seg.offset as usize, chunk).unwrap();
                    mirror.write(seg.offset as usize, chunk).unwrap();
                }
                w.batch_completed(b.id).unwrap();
                let s = r.scan(&*mirror, |_, _| {}).unwrap();
                w.applied(s.applied_pos, s.applied_lsn, 1_000).unwrap();
            }
        }
        // Quiesce.
        batches.extend(w.next_batch());
        for b in batches.drain(..) {
            for seg in b.segments() {
                let chunk = &mut buf[..seg.len as usize];
                local.read(seg.offset as usize, chunk).unwrap();
                mirror.write(seg.offset as usize, chunk).unwrap();
            }
            w.batch_completed(b.id).unwrap();
        }
        r.scan(&*mirror, |_, _| {}).unwrap();
        assert_eq!(r.applied_lsn(), w.last_lsn());
        assert!(w.last_lsn().0 > 200, "wrapped many times");
        local.flush().unwrap();
        mirror.flush().unwrap();
        let c = verify_rings(&lp, &mp, bytes).unwrap();
        assert!(c.is_clean(), "{c:?}");
        assert!(c.local_entries > 20);
        assert_eq!(c.mirror_entries, c.local_entries + c.stale_entries);
        assert_eq!(c.stale_entries, 0, "{c:?}");
        assert_eq!(c.lsn_range.unwrap().1, w.last_lsn());
        // One byte of one mirrored payload flipped: exactly that entry mismatches.
        let mut probe = vec![0u8; w.max_entry()];
        let (off, lsn) = (0..bytes / 64)
            .map(|i| i * 64)
            .find_map(|o| match read_entry(&*mirror, o, &mut probe) {
                Some(RingEntry::Entry { lsn, len }) if len > 0 => Some((o, lsn)),
                _ => None,
            })
            .unwrap();
        let mut byte = [0u8; 1];
        mirror.read(off as usize + ENTRY_HEADER, &mut byte).unwrap();
        mirror
            .write(off as usize + ENTRY_HEADER, &[byte[0] ^ 0x80])
            .unwrap();
        mirror.flush().unwrap();
        let c = verify_rings(&lp, &mp, bytes).unwrap();
        assert_eq!(c.mismatches, 1, "{c:?}");
        assert_eq!(c.first_mismatch, Some(lsn));
        assert!(!c.is_clean());
        // A file of the wrong size is an error, not a verdict.
        assert!(verify_rings(&lp, &mp, 2 * bytes).is_err());
        let _ = (std::fs::remove_file(&lp), std::fs::remove_file(&mp));
    }
}
