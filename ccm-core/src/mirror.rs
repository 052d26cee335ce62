//! NVRAM mirroring, sans-IO: the log format, the writer's and the partner's bookkeeping.
//!
//! The local NVRAM log is a ring of bytes (in the real client a `memmap2` mapping registered once). The partner
//! holds a mirror ring of the same capacity, exposed for RDMA WRITE. Every entry is written at the **same offset**
//! in both rings, so mirroring a batch is a plain copy of a byte range, straight from the local log into the
//! partner's memory (no bounce buffer, no copy on the data path):
//!
//! ```text
//!  writer (node A)                                        partner (node B)
//!  append(bytes) -> Lsn          (entry encoded in the local ring)
//!  next_batch()  -> Batch        RDMA WRITE  seg0  ─────▶  mirror ring
//!                                RDMA WRITE  seg1  ─────▶  (wrap; the last one signalled)
//!  batch_completed(id)  ◀─── RC ack: everything of the batch is in the partner's memory: `durable_lsn` moves
//!                                                          scan() applies entries in order: when it looks
//!                                                          (idle wake-ups), or at once for a batch that
//!                                WRITE_WITH_IMM  ───────▶  notifies (half the ring awaits an ack)
//!  applied(lsn, pos, credits) ◀── SEND (small ack)  ◀────  partner reports what it applied: ring space is freed
//! ```
//!
//! **Notifications.** A batch's last WRITE carries an immediate (a receive completion on the partner, solicited:
//! it wakes the partner's thread) only when the writer needs ring space back: half of the ring awaits the
//! partner's ack ([`Batch::notify`]). Every other batch is plain WRITEs: durability is the RC completion and
//! needs nothing from the partner, which applies what arrived whenever it looks (it does on its idle
//! wake-ups). In the lab an immediate that the partner's rxe must complete into a receive, and the partner's
//! scan and ack for each batch, doubled a 64-byte entry's latency (docs/performance.md). Notifications use
//! receive credits; plain batches need none.
//!
//! **Entry** (aligned to [`ENTRY_ALIGN`] bytes): a 32-byte header `{magic u32, len u32, lsn u64, checksum u64,
//! reserved 8 B}` then the payload. `checksum` is XXH3-64 over the payload, seeded with the XXH3-64 of the
//! first 16 header bytes. 64 bits, because a reader can look at an entry while its WRITE is still landing
//! (a new header over an old lap's payload): a 32-bit checksum passes such a torn entry with probability
//! 2^-32 per look, which a busy pair's scans could reach within months; 64 bits make it 2^-64. XXH3 costs about
//! 2 us per 64 KiB on the lab's host CPU (CRC-32 with PCLMULQDQ: 1.1 us; XXH64: 4.5 us) and 99 us in its
//! emulated guest (CRC-32: 196 us, XXH64: 21 us); docs/performance.md. Entries of the first format
//! (CRC-32, magic `CCMN`) are recognised and refused with [`MirrorError::EntryFormat`]. An entry
//! that would cross the end of the ring is preceded by a *pad* entry that fills the tail (its `lsn` is the LSN of
//! the entry after it), so an entry is always contiguous.
//!
//! **Exactly once, in order.** The partner applies only the entry at its applied position whose LSN is
//! `applied_lsn + 1` and whose checksum matches; anything else (an older lap, a torn or in-flight write) stops the
//! scan until the next notification. Re-sent bytes land at the same offsets with the same content, so a resend
//! after a failover is idempotent and duplicates are dropped by the LSN check.
//!
//! **Nothing acknowledged is lost.** `durable_lsn` only moves on the RC completion of a batch's last work request
//! (RC completes in order: every earlier WRITE of the batch is placed). On a link loss, batches in flight are
//! forgotten and everything after `durable` is sent again on the new link (`link_up` as soon as it is up, or
//! `link_reset` with the partner's report). Ring space is reused only
//! once the partner reported it applied ([`MirrorWriter::applied`]): a full ring is back-pressure
//! ([`MirrorError::RingFull`]), never an overwrite.
//!
//! **Ring memory.** Both sides reach their ring through [`RingBytes`]: positioned copies in and out, never a
//! slice view. It is implemented for `[u8]`/`Vec<u8>` (tests, simulations) and for
//! [`ccm_verbs::SharedMemory`], the mapping a device writes into while the process reads it, where no Rust
//! reference to the bytes may exist. [`MirrorWriter::append`] copies the header and payload into the ring
//! ([`MirrorWriter::append_vectored`]: a payload in parts, the same entry as their concatenation);
//! [`MirrorReader::scan`] copies each header and payload out into a scratch buffer the reader owns (sized
//! to the largest entry at creation), so a scan allocates nothing and validates exactly the bytes it hands to
//! `apply`, whatever a device writes meanwhile.
//!
//! **Restart of the partner.** A mirror ring in a file (or `/dev/shm`) survives the partner's process. The
//! reader's position cannot be rediscovered from the ring alone once it has wrapped (older laps and torn
//! in-flight writes look alike), so the reader persists a small [`Checkpoint`] (applied position, LSN and
//! digest) before it reports progress; [`MirrorReader::recover`] resumes from it and applies what arrived
//! after it. The position it reports is then never behind what it reported before the restart.
//!
//! **Restart of the writer.** The log ring survives the writer's process too, but its position, next LSN and
//! what the partner holds do not. The writer persists a small [`WriterCheckpoint`] (head, last LSN, digest,
//! and the position/LSN the partner reported applied) after each report of the partner, and reuses ring space
//! only behind the `released` position of a checkpoint it was told is persisted
//! ([`MirrorWriter::checkpoint_persisted`]): so everything from that position on is intact in the ring after a
//! crash. [`MirrorWriter::recover`] walks the ring from the checkpoint's head exactly as a reader would (next
//! LSN, valid checksum) to find the entries appended after it (an append torn by the crash fails its checksum
//! and was never returned to the caller), and continues with the next LSN: none reused, none skipped, the
//! digest unbroken. It knows the partner holds everything up to the checkpoint's `released`; the partner's
//! first report on the new connection ([`MirrorWriter::link_reset`]) says how much more, and the rest is sent
//! again. Whatever the old process reported durable was in the partner's memory, which survives, so the
//! partner's scan reports it applied and nothing durable is lost.
//!
//! **Checking.** [`compare_rings`] compares a writer's log with the partner's mirror after a run;
//! [`crate::sim_mirror`] drives this module through seeded faults and process crashes.

use std::sync::Arc;

use ccm_verbs::SharedMemory;
use thiserror::Error;

/// Size of an entry header.
pub const ENTRY_HEADER: usize = 32;
/// Alignment of every entry in the ring.
pub const ENTRY_ALIGN: usize = 64;
/// Most batches a writer keeps in flight (bounded by the partner's receive credits too).
pub const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// The entry format this build writes (2: XXH3-64 checksums; format 1, CRC-32, was the first).
pub const ENTRY_FORMAT: u8 = 2;

/// What a mirror speaks: the entry format its writer writes and the formats its reader reads. The mirror
/// client tells its partner at every connection, as the client's private data
/// ([`ClientSpec::private`](crate::manager::ClientSpec::private), carried from protocol version 3), so a pair
/// of builds that cannot read each other's log finds out before either writes a byte into the other's ring,
/// instead of at the first entry. Encoded in 10 bytes, little-endian:
///
/// ```text
///  0      4        5        6            10
///  | CCMF | layout | writes | reads (u32) |   (a later layout may append fields: they are ignored)
/// ```
///
/// `reads` has bit `k` set for each format `k` the reader reads. A partner whose manager is older than
/// protocol version 3 says nothing ([`Formats::decode`] of empty bytes is `None`); the reader's check of
/// every entry's format stays the safety net then ([`MirrorError::EntryFormat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Formats {
    /// The entry format the writer writes.
    pub writes: u8,
    /// Bit `k`: the reader reads format `k`.
    pub reads: u32,
}

/// Why two mirrors cannot mirror to each other ([`Formats::check`]), found at connect time.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FormatsError {
    /// The partner's peer client sent private data that is no mirror's [`Formats`]: another kind of client
    /// registered under the mirror's client id on the partner (the nodes' configurations disagree).
    #[error("the partner's client is no NVRAM mirror: its private data ({len} bytes) is no mirror's formats")]
    NotAMirror {
        /// Its length.
        len: usize,
    },
    /// The partner's reader cannot read the format this writer writes.
    #[error("the partner reads entry formats {partner_reads:?}, not format {writes} that this build writes")]
    PartnerCannotRead {
        /// The format this writer writes.
        writes: u8,
        /// The formats the partner reads.
        partner_reads: Vec<u8>,
    },
    /// This reader cannot read the format the partner writes.
    #[error(
        "the partner writes entry format {partner_writes}; this build reads formats {reads:?}"
    )]
    CannotReadPartner {
        /// The format the partner writes.
        partner_writes: u8,
        /// The formats this reader reads.
        reads: Vec<u8>,
    },
}

impl Formats {
    /// This build: writes [`ENTRY_FORMAT`], reads it only.
    pub const THIS_BUILD: Formats = Formats {
        writes: ENTRY_FORMAT,
        reads: 1 << ENTRY_FORMAT,
    };
    /// Encoded length (layout 1).
    pub const ENCODED_LEN: usize = 10;
    const MAGIC: [u8; 4] = *b"CCMF";
    const LAYOUT: u8 = 1;

    /// The private data that says it.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..4].copy_from_slice(&Self::MAGIC);
        b[4] = Self::LAYOUT;
        b[5] = self.writes;
        b[6..10].copy_from_slice(&self.reads.to_le_bytes());
        b
    }

    /// The partner's formats from its private data: `None` if it sent none (a manager older than protocol
    /// version 3), an error if it is not a mirror's.
    pub fn decode(private: &[u8]) -> Result<Option<Formats>, FormatsError> {
        if private.is_empty() {
            return Ok(None);
        }
        if private.len() < Self::ENCODED_LEN || private[0..4] != Self::MAGIC || private[4] == 0 {
            return Err(FormatsError::NotAMirror { len: private.len() });
        }
        Ok(Some(Formats {
            writes: private[5],
            reads: u32::from_le_bytes(private[6..10].try_into().expect("4 bytes")),
        }))
    }

    /// Whether this mirror and the `partner` can mirror to each other: each reads what the other writes.
    pub fn check(&self, partner: &Formats) -> Result<(), FormatsError> {
        let listed = |mask: u32| {
            (0..32u8)
                .filter(|k| mask & (1 << k) != 0)
                .collect::<Vec<u8>>()
        };
        let reads = |mask: u32, format: u8| format < 32 && mask & (1 << format) != 0;
        if !reads(partner.reads, self.writes) {
            return Err(FormatsError::PartnerCannotRead {
                writes: self.writes,
                partner_reads: listed(partner.reads),
            });
        }
        if !reads(self.reads, partner.writes) {
            return Err(FormatsError::CannotReadPartner {
                partner_writes: partner.writes,
                reads: listed(self.reads),
            });
        }
        Ok(())
    }
}

/// Magic of an entry (format 2: XXH3-64 checksum).
const MAGIC_ENTRY: u32 = u32::from_le_bytes(*b"CCE2");
/// Magic of a pad (format 2).
const MAGIC_PAD: u32 = u32::from_le_bytes(*b"CCP2");
/// Magics of format 1 (CRC-32 checksum), written by older builds.
const FORMAT1_MAGICS: [u32; 2] = [u32::from_le_bytes(*b"CCMN"), u32::from_le_bytes(*b"CCMP")];

/// A log sequence number: the first entry is 1, and they are dense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// What went wrong with a mirror operation. Nothing is lost on any of these.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MirrorError {
    /// The entry can never fit: payload larger than a quarter of the ring.
    #[error("entry of {len} bytes is larger than the largest entry this ring takes ({max} bytes)")]
    EntryTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Largest payload accepted.
        max: usize,
    },
    /// Back-pressure: the partner has not yet applied enough of the ring; retry after [`MirrorWriter::applied`].
    #[error("mirror ring full: {needed} bytes needed, {free} free until the partner applies more")]
    RingFull {
        /// Bytes the entry (and its pad) needs.
        needed: u64,
        /// Bytes free now.
        free: u64,
    },
    /// The ring buffer given does not have the capacity the mirror was created with.
    #[error("ring buffer of {got} bytes, expected {expected}")]
    RingSize {
        /// Capacity of the mirror.
        expected: u64,
        /// Length of the buffer given.
        got: usize,
    },
    /// Capacity not a positive multiple of [`ENTRY_ALIGN`] (at least 4 entries' worth).
    #[error("ring capacity {0} must be a multiple of {ENTRY_ALIGN} and at least {min}", min = 4 * ENTRY_ALIGN)]
    BadCapacity(u64),
    /// A completion for a batch that is not the oldest in flight: the driver broke RC ordering.
    #[error("completion for batch {got}, but the oldest batch in flight is {expected:?}")]
    OutOfOrderCompletion {
        /// The batch the driver reported.
        got: u64,
        /// The oldest batch in flight, if any.
        expected: Option<u64>,
    },
    /// A log ring that holds entries of a later lap, and no writer checkpoint to say where it stands: the
    /// position and next LSN cannot be recovered (starting over would reuse LSNs).
    #[error("log ring holds entry {lsn:?} at offset 0 but there is no writer checkpoint")]
    LogWithoutCheckpoint {
        /// The LSN found at offset 0.
        lsn: Lsn,
    },
    /// A writer checkpoint whose fields contradict each other (or the ring's capacity).
    #[error("writer checkpoint {0:?} is inconsistent")]
    BadCheckpoint(WriterCheckpoint),
    /// The partner reports applying bytes that were never sent, or fewer than it reported before.
    #[error("partner reported applied position {reported}, outside [{released}, {sent}]")]
    BadApplied {
        /// What the partner reported.
        reported: u64,
        /// Position already released.
        released: u64,
        /// Highest position ever sent.
        sent: u64,
    },
    /// The partner writes entries of another format: at the reader's next position, with the next LSN, an
    /// entry of format 1 (CRC-32, an older build). Nothing is applied from it: a pair moves to this build
    /// with its logs drained (everything applied on both sides), both nodes at once. (Builds that tell their
    /// [`Formats`] find such a mismatch at connect time, before any entry is written.)
    #[error("entry {lsn:?} at offset {offset} is of format 1 (CRC-32, an older build); this build reads format 2 (XXH3-64)")]
    EntryFormat {
        /// Its LSN.
        lsn: Lsn,
        /// Its offset in the ring.
        offset: u64,
    },
}

/// One contiguous byte range of the ring: `len` bytes at `offset`, the same in the local and the mirror ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// Offset in both rings.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A batch to mirror: one or two segments (two when it wraps), then a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Identifies the batch in [`MirrorWriter::batch_completed`] (use it as the last work request's `wr_id`).
    pub id: u64,
    /// The byte ranges to RDMA WRITE, in order.
    pub segments: [Segment; 2],
    /// How many of `segments` are used (1 or 2).
    pub segment_count: usize,
    /// LSN of the last entry in the batch (the low 32 bits make a good immediate).
    pub last_lsn: Lsn,
    /// Ring position just after the batch.
    pub end_pos: u64,
    /// Notify the partner: the last WRITE carries the immediate (it takes one of the partner's receive
    /// credits) and is solicited, so the partner wakes, applies and acks now. Set once half of the ring
    /// awaits the partner's ack. Otherwise the batch is plain WRITEs and a partner that sleeps applies and
    /// acks it at its next look, off the writer's path; durability never waits for the ack.
    pub notify: bool,
}

impl Batch {
    /// The segments to write, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.segment_count]
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ENTRY_ALIGN as u64) * ENTRY_ALIGN as u64
}

fn check_capacity(capacity: u64) -> Result<(), MirrorError> {
    if capacity < 4 * ENTRY_ALIGN as u64 || capacity % ENTRY_ALIGN as u64 != 0 {
        return Err(MirrorError::BadCapacity(capacity));
    }
    Ok(())
}

/// XXH3-64 of the payload, seeded with the XXH3-64 of the first 16 header bytes (two one-shot calls: the
/// streaming form costs more for small entries).
fn entry_checksum(header16: &[u8], payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(payload, xxhash_rust::xxh3::xxh3_64(header16))
}

/// [`entry_checksum`] of a payload given in parts: the same value as over their concatenation (XXH3's
/// streaming state lives on the stack; nothing is allocated).
fn entry_checksum_parts(header16: &[u8], parts: &[&[u8]]) -> u64 {
    match parts {
        [one] => entry_checksum(header16, one),
        _ => {
            let mut h = xxhash_rust::xxh3::Xxh3::with_seed(xxhash_rust::xxh3::xxh3_64(header16));
            for p in parts {
                h.update(p);
            }
            h.digest()
        }
    }
}

/// The bytes of a ring, reached only through positioned copies (no slice of the ring is ever lent out, so a
/// device may write shared memory while it is read). Offsets and lengths are within
/// [`capacity`](Self::capacity); the mirror code checks them, and an implementation may panic otherwise,
/// as slice indexing does.
pub trait RingBytes {
    /// Size of the ring in bytes.
    fn capacity(&self) -> u64;
    /// Copy `data` into the ring at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]);
    /// Copy `buf.len()` bytes of the ring at `offset` into `buf`.
    fn read_at(&self, offset: u64, buf: &mut [u8]);
}

impl RingBytes for [u8] {
    fn capacity(&self) -> u64 {
        self.len() as u64
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self[o..o + data.len()].copy_from_slice(data);
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self[o..o + buf.len()]);
    }
}

impl RingBytes for Vec<u8> {
    fn capacity(&self) -> u64 {
        self.len() as u64
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        self.as_mut_slice().write_at(offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        self.as_slice().read_at(offset, buf)
    }
}

/// Shared memory (a file mapping registered with devices): copies through [`SharedMemory::read`] /
/// [`SharedMemory::write`], which only fail out of bounds.
impl RingBytes for SharedMemory {
    fn capacity(&self) -> u64 {
        self.len() as u64
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        self.write(offset as usize, data)
            .expect("ring write within the mapping (checked by the mirror)");
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        self.read(offset as usize, buf)
            .expect("ring read within the mapping (checked by the mirror)");
    }
}

/// The usual handle on shared memory (the same `Arc` is registered with the devices); writes go through
/// `&self` copies, so sharing the `Arc` is fine.
impl RingBytes for Arc<SharedMemory> {
    fn capacity(&self) -> u64 {
        self.len() as u64
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        self.write(offset as usize, data)
            .expect("ring write within the mapping (checked by the mirror)");
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        self.read(offset as usize, buf)
            .expect("ring read within the mapping (checked by the mirror)");
    }
}

/// The header of an entry (or pad) and its checksum.
fn encode_header(magic: u32, len: u32, lsn: u64, payload: &[u8]) -> ([u8; ENTRY_HEADER], u64) {
    encode_header_parts(magic, len, lsn, &[payload])
}

fn encode_header_parts(
    magic: u32,
    len: u32,
    lsn: u64,
    parts: &[&[u8]],
) -> ([u8; ENTRY_HEADER], u64) {
    let mut hdr = [0u8; ENTRY_HEADER];
    hdr[0..4].copy_from_slice(&magic.to_le_bytes());
    hdr[4..8].copy_from_slice(&len.to_le_bytes());
    hdr[8..16].copy_from_slice(&lsn.to_le_bytes());
    let sum = entry_checksum_parts(&hdr[0..16], parts);
    hdr[16..24].copy_from_slice(&sum.to_le_bytes());
    (hdr, sum)
}

/// What [`read_entry`] found at an offset of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingEntry {
    /// A whole entry whose checksum matches: its payload is the first `len` bytes of the buffer given.
    Entry {
        /// Its LSN.
        lsn: Lsn,
        /// Payload length.
        len: usize,
    },
    /// A pad filling the ring's tail, before the entry `lsn`.
    Pad {
        /// LSN of the entry after the pad.
        lsn: Lsn,
    },
}

impl RingEntry {
    /// The LSN the slot carries.
    pub fn lsn(&self) -> Lsn {
        match self {
            RingEntry::Entry { lsn, .. } | RingEntry::Pad { lsn } => *lsn,
        }
    }
}

/// Read and validate the entry at `offset` of `ring` (an [`ENTRY_ALIGN`]-aligned offset), copying its payload
/// into `payload` (which must hold the largest entry expected). `None` if the slot holds no whole, valid entry
/// (never written, torn, or its payload would not fit `payload` or the ring). Used by the reader and by
/// checkers that walk a ring after a run.
pub fn read_entry<R: RingBytes + ?Sized>(
    ring: &R,
    offset: u64,
    payload: &mut [u8],
) -> Option<RingEntry> {
    read_entry_sum(ring, offset, payload, None).map(|(e, _)| e)
}

/// [`read_entry`], with the checksum the entry carries (and matches). With `expect`, a slot whose header
/// carries another LSN is `None` before its payload is read and checked (a reader waiting at the end of
/// its log finds an older lap's entry there on every look).
fn read_entry_sum<R: RingBytes + ?Sized>(
    ring: &R,
    offset: u64,
    payload: &mut [u8],
    expect: Option<Lsn>,
) -> Option<(RingEntry, u64)> {
    let capacity = ring.capacity();
    if offset % ENTRY_ALIGN as u64 != 0 || offset + ENTRY_HEADER as u64 > capacity {
        return None;
    }
    let mut hdr = [0u8; ENTRY_HEADER];
    ring.read_at(offset, &mut hdr);
    let magic = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes")) as usize;
    let lsn = Lsn(u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes")));
    let sum = u64::from_le_bytes(hdr[16..24].try_into().expect("8 bytes"));
    if expect.is_some_and(|e| e != lsn) {
        return None;
    }
    match magic {
        MAGIC_PAD => (len as u64 == capacity - offset && entry_checksum(&hdr[0..16], &[]) == sum)
            .then_some((RingEntry::Pad { lsn }, sum)),
        MAGIC_ENTRY => {
            if len > payload.len() || offset + (ENTRY_HEADER + len) as u64 > capacity {
                return None;
            }
            let body = &mut payload[..len];
            ring.read_at(offset + ENTRY_HEADER as u64, body);
            (entry_checksum(&hdr[0..16], body) == sum)
                .then_some((RingEntry::Entry { lsn, len }, sum))
        }
        _ => None,
    }
}

/// The LSN of the format-1 (CRC-32) entry or pad header at `offset`, if one is there (its checksum is not
/// checked: it is only read to refuse it).
fn format1_lsn<R: RingBytes + ?Sized>(ring: &R, offset: u64) -> Option<Lsn> {
    if offset + ENTRY_HEADER as u64 > ring.capacity() {
        return None;
    }
    let mut hdr = [0u8; 16];
    ring.read_at(offset, &mut hdr);
    let magic = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    FORMAT1_MAGICS
        .contains(&magic)
        .then(|| Lsn(u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"))))
}

/// Running checksum of a sequence of entries: equal on both sides when they hold the same entries in order.
/// It chains the entries' own checksums (each over the entry's LSN, length and payload), so the writer and
/// the reader, which compute those anyway, pass over each payload once, not twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digest(pub u32);

impl Digest {
    /// The digest after one more entry.
    pub fn add(self, lsn: Lsn, payload: &[u8]) -> Digest {
        let (_, sum) = encode_header(MAGIC_ENTRY, payload.len() as u32, lsn.0, payload);
        self.chain(sum)
    }

    /// The digest after one more entry whose checksum (the header's) is `sum`.
    fn chain(self, sum: u64) -> Digest {
        let mut h = crc32fast::Hasher::new_with_initial(self.0);
        h.update(&sum.to_le_bytes());
        Digest(h.finalize())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    id: u64,
    start_pos: u64,
    /// LSN of the entry before `start_pos`.
    start_lsn: Lsn,
    end_pos: u64,
    last_lsn: Lsn,
}

/// The writer's side of a mirror: the local log and what the partner has.
///
/// Positions are byte counts since the log began (`offset = pos % capacity`), so they never wrap.
/// Invariant: `released <= durable <= sent <= head` and `head - released <= capacity`.
///
/// A writer made with [`new`](Self::new) is volatile: its state dies with the process. One made with
/// [`recover`](Self::recover) continues a log that outlived its process (see [`WriterCheckpoint`]).
#[derive(Debug)]
pub struct MirrorWriter {
    capacity: u64,
    next_lsn: u64,
    head: u64,
    sent: u64,
    sent_lsn: Lsn,
    durable: u64,
    durable_lsn: Lsn,
    released: u64,
    released_lsn: Lsn,
    /// `None` for a volatile log; otherwise ring space is reused only up to the `released` of the last
    /// [`WriterCheckpoint`] the caller persisted (see [`MirrorWriter::checkpoint_persisted`]).
    persisted_released: Option<u64>,
    /// Start (position, LSN before it) of the oldest WRITE of an earlier connection that may still land: batches
    /// in flight when the writer moved to a new connection, until the partner's first report there says it
    /// left the old ones ([`old_links_closed`](Self::old_links_closed)).
    fence: Option<(u64, Lsn)>,
    next_batch_id: u64,
    in_flight: [InFlight; MAX_BATCHES_IN_FLIGHT],
    in_flight_first: usize,
    in_flight_len: usize,
    /// Notifications the partner has receives posted for, in total (from its acks).
    credits_granted: u64,
    notifications_sent: u64,
    digest: Digest,
}

impl MirrorWriter {
    /// A writer for a ring of `capacity` bytes whose partner starts with `initial_credits` receives posted.
    pub fn new(capacity: u64, initial_credits: u64) -> Result<MirrorWriter, MirrorError> {
        check_capacity(capacity)?;
        Ok(MirrorWriter {
            capacity,
            next_lsn: 1,
            head: 0,
            sent: 0,
            sent_lsn: Lsn(0),
            durable: 0,
            durable_lsn: Lsn(0),
            released: 0,
            released_lsn: Lsn(0),
            persisted_released: None,
            fence: None,
            next_batch_id: 0,
            in_flight: [InFlight::default(); MAX_BATCHES_IN_FLIGHT],
            in_flight_first: 0,
            in_flight_len: 0,
            credits_granted: initial_credits,
            notifications_sent: 0,
            digest: Digest::default(),
        })
    }

    /// A writer continuing the log in `ring`, which survived the writer's process, from the last
    /// [`WriterCheckpoint`] the old process persisted (`None` for a log that never had one: a fresh, zeroed
    /// ring, or one that never wrapped). The entries appended after the checkpoint are found by walking the
    /// ring from the checkpoint's head while each slot holds the next LSN with a valid checksum, exactly as
    /// a reader applies them; a torn append (killed mid-copy) fails its checksum and ends the walk, and its
    /// LSN was never returned. The position, next LSN and digest continue from there: no LSN is reused or
    /// skipped. Nothing is known to be in the partner beyond the checkpoint's `released`, so everything after
    /// it is sent again once the partner's first report arrives ([`link_reset`](Self::link_reset)).
    /// Returns the writer and how many entries the walk found after the checkpoint.
    pub fn recover<R: RingBytes + ?Sized>(
        ring: &R,
        from: Option<WriterCheckpoint>,
        initial_credits: u64,
    ) -> Result<(MirrorWriter, u64), MirrorError> {
        let capacity = ring.capacity();
        check_capacity(capacity)?;
        let c = match from {
            Some(c) => c,
            None => {
                // A ring that wrapped holds a later lap's entry at offset 0 (a lap always restarts there). Only
                // a whole entry counts: a first append torn by a crash is no entry.
                let mut scratch = vec![0u8; (capacity / 4) as usize - ENTRY_HEADER];
                if let Some(RingEntry::Entry { lsn, .. }) = read_entry(ring, 0, &mut scratch) {
                    if lsn != Lsn(1) {
                        return Err(MirrorError::LogWithoutCheckpoint { lsn });
                    }
                }
                // An older build's log: never overwrite it as if it were empty.
                if let Some(lsn) = format1_lsn(ring, 0) {
                    return Err(MirrorError::EntryFormat { lsn, offset: 0 });
                }
                WriterCheckpoint::default()
            }
        };
        let align = ENTRY_ALIGN as u64;
        if c.released > c.head
            || c.head - c.released > capacity
            || c.released_lsn > c.lsn
            || c.head % align != 0
            || c.released % align != 0
        {
            return Err(MirrorError::BadCheckpoint(c));
        }
        let mut walker = MirrorReader::resume(
            capacity,
            Checkpoint {
                pos: c.head,
                lsn: c.lsn,
                digest: c.digest,
            },
        )?;
        let found = walker.scan(ring, |_, _| {})?;
        let w = MirrorWriter {
            capacity,
            next_lsn: found.applied_lsn.0 + 1,
            head: found.applied_pos,
            sent: c.released,
            sent_lsn: c.released_lsn,
            durable: c.released,
            durable_lsn: c.released_lsn,
            released: c.released,
            released_lsn: c.released_lsn,
            persisted_released: Some(c.released),
            fence: None,
            next_batch_id: 0,
            in_flight: [InFlight::default(); MAX_BATCHES_IN_FLIGHT],
            in_flight_first: 0,
            in_flight_len: 0,
            credits_granted: initial_credits,
            notifications_sent: 0,
            digest: walker.digest(),
        };
        Ok((w, found.entries))
    }

    /// What to persist so that [`recover`](Self::recover) continues this log after a restart. A writer made
    /// by `recover` reuses ring space only up to the `released` of a checkpoint reported persisted with
    /// [`checkpoint_persisted`](Self::checkpoint_persisted): take and persist one after
    /// [`applied`](Self::applied) / [`link_reset`](Self::link_reset) (the only calls that free space), or
    /// the ring fills (back-pressure, never an overwrite).
    pub fn checkpoint(&self) -> WriterCheckpoint {
        // Not `released` itself: a WRITE of this process that may still land after a crash covers nothing
        // before the safe point, so a restarted writer that reuses space only behind it is safe from it.
        let (released, released_lsn) = self.safe_point();
        WriterCheckpoint {
            head: self.head,
            lsn: self.last_lsn(),
            digest: self.digest,
            released,
            released_lsn,
        }
    }

    /// A checkpoint would let more ring space be reused than the last one persisted: take and persist one
    /// (besides after every report of the partner, when a batch completion or the partner's first report on
    /// a connection moved the safe point). Always false for a volatile writer.
    pub fn checkpoint_due(&self) -> bool {
        self.persisted_released
            .is_some_and(|p| p < self.safe_point().0)
    }

    /// `c` (taken from this writer) is persisted: ring space up to its `released` may be reused. A volatile
    /// writer ignores this.
    pub fn checkpoint_persisted(&mut self, c: &WriterCheckpoint) {
        if let Some(p) = &mut self.persisted_released {
            *p = (*p).max(c.released.min(self.released));
        }
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Ring position just after the last appended entry (positions count bytes since the log began).
    pub fn head_pos(&self) -> u64 {
        self.head
    }

    /// Bytes appended and not yet handed out in a batch.
    pub fn unsent_bytes(&self) -> u64 {
        self.head - self.sent
    }

    /// Largest payload one entry can carry.
    pub fn max_entry(&self) -> usize {
        (self.capacity / 4) as usize - ENTRY_HEADER
    }

    /// LSN of the last appended entry (0 before the first).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn - 1)
    }

    /// Every entry up to this LSN is in the partner's memory (acknowledged by RC).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Checksum of every appended entry, in order.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Bytes the ring can still take before back-pressure.
    pub fn free(&self) -> u64 {
        let safe = self.safe_point().0;
        let reusable = self.persisted_released.map_or(safe, |p| p.min(safe));
        self.capacity - (self.head - reusable)
    }

    /// Ring space before this position (and LSN) may be overwritten: the partner applied it (`released`),
    /// and no WRITE that may still land covers it: none in flight on this connection, none of an earlier
    /// one the partner may not have left. (A WRITE re-sending what the partner already holds can be in
    /// flight after the partner reported it applied.) It never moves back.
    fn safe_point(&self) -> (u64, Lsn) {
        let mut p = (self.released, self.released_lsn);
        if let Some(f) = self.fence {
            if f.0 < p.0 {
                p = f;
            }
        }
        if self.in_flight_len > 0 {
            let b = &self.in_flight[self.in_flight_first];
            if b.start_pos < p.0 {
                p = (b.start_pos, b.start_lsn);
            }
        }
        p
    }

    /// Batches posted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight_len
    }

    /// LSN of the last entry handed out in a batch (after a [`link_reset`](Self::link_reset), the durable LSN:
    /// the next batch starts with the entry after it).
    pub fn sent_lsn(&self) -> Lsn {
        self.sent_lsn
    }

    /// Encode `payload` as the next entry of the local ring. No allocation; the bytes are copied once, into
    /// the log itself (that copy is the write to NVRAM).
    pub fn append<R: RingBytes + ?Sized>(
        &mut self,
        ring: &mut R,
        payload: &[u8],
    ) -> Result<Lsn, MirrorError> {
        self.append_vectored(ring, &[payload])
    }

    /// [`append`](Self::append) of one entry whose payload is `parts` in order (a log record's header and
    /// its data, say): the entry is the same as for their concatenation, which the caller never has to
    /// build. Each part is copied once, into the log.
    pub fn append_vectored<R: RingBytes + ?Sized>(
        &mut self,
        ring: &mut R,
        parts: &[&[u8]],
    ) -> Result<Lsn, MirrorError> {
        if ring.capacity() != self.capacity {
            return Err(MirrorError::RingSize {
                expected: self.capacity,
                got: ring.capacity() as usize,
            });
        }
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        if len > self.max_entry() {
            return Err(MirrorError::EntryTooLarge {
                len,
                max: self.max_entry(),
            });
        }
        let slot = align_up((ENTRY_HEADER + len) as u64);
        let offset = self.head % self.capacity;
        let pad = if offset + slot > self.capacity {
            self.capacity - offset
        } else {
            0
        };
        let needed = pad + slot;
        if needed > self.free() {
            return Err(MirrorError::RingFull {
                needed,
                free: self.free(),
            });
        }
        let lsn = self.next_lsn;
        if pad > 0 {
            ring.write_at(offset, &encode_header(MAGIC_PAD, pad as u32, lsn, &[]).0);
        }
        let at = (self.head + pad) % self.capacity;
        let mut to = at + ENTRY_HEADER as u64;
        for p in parts.iter().filter(|p| !p.is_empty()) {
            ring.write_at(to, p);
            to += p.len() as u64;
        }
        let (hdr, sum) = encode_header_parts(MAGIC_ENTRY, len as u32, lsn, parts);
        ring.write_at(at, &hdr);
        self.head += needed;
        self.next_lsn += 1;
        self.digest = self.digest.chain(sum);
        Ok(Lsn(lsn))
    }

    /// The next batch to mirror: every appended byte not yet sent, if the in-flight window has room and, for
    /// a batch that notifies ([`Batch::notify`]), the partner has a receive credit. The caller posts its
    /// segments as RDMA WRITEs (same offsets in the partner's ring), the last one signalled and, if the
    /// batch notifies, carrying the immediate; then it reports [`batch_completed`](Self::batch_completed).
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.sent == self.head || self.in_flight_len == MAX_BATCHES_IN_FLIGHT {
            return None;
        }
        // Ring space comes back only with the partner's acks: ask for one once half the ring awaits it.
        let notify = self.free() < self.capacity / 2;
        if notify && self.notifications_sent >= self.credits_granted {
            return None;
        }
        let (start_pos, start_lsn) = (self.sent, self.sent_lsn);
        let start = self.sent % self.capacity;
        let len = self.head - self.sent;
        let mut segments = [Segment::default(); 2];
        let segment_count = if start + len > self.capacity {
            segments[0] = Segment {
                offset: start,
                len: self.capacity - start,
            };
            segments[1] = Segment {
                offset: 0,
                len: len - (self.capacity - start),
            };
            2
        } else {
            segments[0] = Segment { offset: start, len };
            1
        };
        let batch = Batch {
            id: self.next_batch_id,
            segments,
            segment_count,
            last_lsn: self.last_lsn(),
            end_pos: self.head,
            notify,
        };
        self.next_batch_id += 1;
        self.sent = self.head;
        self.sent_lsn = batch.last_lsn;
        self.notifications_sent += u64::from(notify);
        let slot = (self.in_flight_first + self.in_flight_len) % MAX_BATCHES_IN_FLIGHT;
        self.in_flight[slot] = InFlight {
            id: batch.id,
            start_pos,
            start_lsn,
            end_pos: batch.end_pos,
            last_lsn: batch.last_lsn,
        };
        self.in_flight_len += 1;
        Some(batch)
    }

    /// The RC completion of a batch's last work request: everything in it is in the partner's memory.
    /// Returns the new durable LSN.
    pub fn batch_completed(&mut self, id: u64) -> Result<Lsn, MirrorError> {
        let oldest = (self.in_flight_len > 0).then(|| self.in_flight[self.in_flight_first]);
        match oldest {
            Some(b) if b.id == id => {
                self.in_flight_first = (self.in_flight_first + 1) % MAX_BATCHES_IN_FLIGHT;
                self.in_flight_len -= 1;
                // The partner's report of what it applied may have come first (its SEND can be polled
                // before our WRITE's completion): durable never moves back.
                self.durable = self.durable.max(b.end_pos);
                self.durable_lsn = self.durable_lsn.max(b.last_lsn);
                Ok(self.durable_lsn)
            }
            _ => Err(MirrorError::OutOfOrderCompletion {
                got: id,
                expected: oldest.map(|b| b.id),
            }),
        }
    }

    /// The partner applied everything up to ring position `pos` (its last entry being `lsn`) and has posted
    /// `credits_total` notification receives on this connection: ring space up to `pos` can be reused, and what
    /// the partner applied is acknowledged even if a batch completion was lost with a link.
    pub fn applied(&mut self, pos: u64, lsn: Lsn, credits_total: u64) -> Result<(), MirrorError> {
        self.check_applied(pos, lsn)?;
        self.released = pos;
        self.released_lsn = lsn;
        self.acknowledge(pos, lsn);
        // After a `link_up` the partner may report entries that reached it on the old link (their
        // completions lost) beyond what is sent on this one: never send from behind `durable`, whose ring
        // space may be reused from now on.
        if self.sent < self.durable {
            self.sent = self.durable;
            self.sent_lsn = self.durable_lsn;
        }
        self.credits_granted = self.credits_granted.max(credits_total);
        Ok(())
    }

    /// A new connection is up and the writer resumes on what it knows, without waiting for the partner's
    /// report: batches in flight on the old connection are forgotten and everything after `durable` is sent
    /// again, at the same offsets, with the same bytes (what the partner already holds falls to its LSN
    /// check). `credits` is the notification window every reader grants on a new connection before its
    /// first report. The space of the batches that were in flight is not reused until the partner's first
    /// report on a new connection ([`old_links_closed`](Self::old_links_closed)): one of them may still land
    /// until the partner leaves the old connection.
    pub fn link_up(&mut self, credits: u64) {
        if self.in_flight_len > 0 {
            // Those WRITEs may still land, until the partner leaves the old connection.
            let b = &self.in_flight[self.in_flight_first];
            if self.fence.is_none_or(|f| b.start_pos < f.0) {
                self.fence = Some((b.start_pos, b.start_lsn));
            }
        }
        self.in_flight_len = 0;
        self.sent = self.durable;
        self.sent_lsn = self.durable_lsn;
        self.notifications_sent = 0;
        self.credits_granted = credits;
    }

    /// The link carrying the mirror failed, or the mirror moves to another link: batches in flight are
    /// forgotten, and everything the partner does not hold will be sent again by [`next_batch`](Self::next_batch).
    /// `partner_pos`/`partner_lsn` is what the partner applied (it tells it when the new connection comes up);
    /// `credits` the notification receives it posted on the new connection. The same as
    /// [`link_up`](Self::link_up) then, with the partner's first report, [`applied`](Self::applied) and
    /// [`old_links_closed`](Self::old_links_closed).
    pub fn link_reset(
        &mut self,
        partner_pos: u64,
        partner_lsn: Lsn,
        credits: u64,
    ) -> Result<(), MirrorError> {
        self.check_applied(partner_pos, partner_lsn)?;
        self.released = partner_pos;
        self.released_lsn = partner_lsn;
        self.acknowledge(partner_pos, partner_lsn);
        // Bytes up to `durable` are in the partner's memory (an RC completion or its own report says so);
        // everything after is written again, at the same offsets, with the same bytes.
        self.link_up(credits);
        self.old_links_closed();
        Ok(())
    }

    /// The partner's first report on the current connection arrived: it left every earlier connection
    /// (the client puts its old VI in the error state before it reports on a new one), so no WRITE of one
    /// can land any more and their space may be reused once applied.
    pub fn old_links_closed(&mut self) {
        self.fence = None;
    }

    fn check_applied(&self, pos: u64, lsn: Lsn) -> Result<(), MirrorError> {
        if pos < self.released || pos > self.head || lsn > self.last_lsn() {
            return Err(MirrorError::BadApplied {
                reported: pos,
                released: self.released,
                sent: self.head,
            });
        }
        Ok(())
    }

    fn acknowledge(&mut self, pos: u64, lsn: Lsn) {
        if pos > self.durable {
            self.durable = pos;
        }
        self.durable_lsn = self.durable_lsn.max(lsn);
    }
}

/// Where a reader stands: persisted by the partner before it reports progress, so a restart resumes there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Ring position after the last applied entry.
    pub pos: u64,
    /// Last LSN applied.
    pub lsn: Lsn,
    /// Digest of every entry applied.
    pub digest: Digest,
}

const MAGIC_CHECKPOINT: u32 = u32::from_le_bytes(*b"CCMC");

impl Checkpoint {
    /// Encoded size.
    pub const ENCODED_LEN: usize = 32;

    /// `{magic u32, digest u32, pos u64, lsn u64, crc u32 (of the first 24 bytes), reserved u32}`.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..4].copy_from_slice(&MAGIC_CHECKPOINT.to_le_bytes());
        b[4..8].copy_from_slice(&self.digest.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.pos.to_le_bytes());
        b[16..24].copy_from_slice(&self.lsn.0.to_le_bytes());
        let crc = crc32fast::hash(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The checkpoint in `b`, if it is whole (magic and checksum match).
    pub fn decode(b: &[u8; Self::ENCODED_LEN]) -> Option<Checkpoint> {
        let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
        if magic != MAGIC_CHECKPOINT || crc32fast::hash(&b[0..24]) != crc {
            return None;
        }
        Some(Checkpoint {
            digest: Digest(u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"))),
            pos: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            lsn: Lsn(u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"))),
        })
    }
}

/// Where a writer's log stands: persisted by the writer (two alternating slots, so a torn write leaves the
/// previous one) whenever the partner's reports free ring space, so that [`MirrorWriter::recover`] continues
/// the log after the writer's process died. Everything from `released` to the end of the log is intact in
/// the ring (space is reused only up to the `released` of a persisted checkpoint), and `head` is an entry
/// boundary from which the entries appended later are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WriterCheckpoint {
    /// Ring position after the last entry appended when it was taken.
    pub head: u64,
    /// That entry's LSN.
    pub lsn: Lsn,
    /// Digest of every entry up to `lsn`.
    pub digest: Digest,
    /// Ring position up to which the partner had applied and the ring may be reused (no WRITE that may
    /// still land covers anything before it).
    pub released: u64,
    /// The LSN of the entry before `released`.
    pub released_lsn: Lsn,
}

const MAGIC_WRITER_CHECKPOINT: u32 = u32::from_le_bytes(*b"CCMW");

impl WriterCheckpoint {
    /// Encoded size.
    pub const ENCODED_LEN: usize = 48;

    /// `{magic u32, digest u32, head u64, lsn u64, released u64, released_lsn u64, crc u32 (of the first 40
    /// bytes), reserved u32}`, little-endian.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..4].copy_from_slice(&MAGIC_WRITER_CHECKPOINT.to_le_bytes());
        b[4..8].copy_from_slice(&self.digest.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.head.to_le_bytes());
        b[16..24].copy_from_slice(&self.lsn.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.released.to_le_bytes());
        b[32..40].copy_from_slice(&self.released_lsn.0.to_le_bytes());
        let crc = crc32fast::hash(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The checkpoint in `b`, if it is whole (magic and checksum match).
    pub fn decode(b: &[u8; Self::ENCODED_LEN]) -> Option<WriterCheckpoint> {
        let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(b[40..44].try_into().expect("4 bytes"));
        if magic != MAGIC_WRITER_CHECKPOINT || crc32fast::hash(&b[0..40]) != crc {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Some(WriterCheckpoint {
            digest: Digest(u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"))),
            head: u(8..16),
            lsn: Lsn(u(16..24)),
            released: u(24..32),
            released_lsn: Lsn(u(32..40)),
        })
    }

    /// The newer of two persisted slots (either may be torn or empty).
    pub fn newest(slots: [&[u8; Self::ENCODED_LEN]; 2]) -> Option<WriterCheckpoint> {
        slots
            .into_iter()
            .filter_map(WriterCheckpoint::decode)
            .max_by_key(|c| (c.head, c.released))
    }
}

/// The partner's side of a mirror: applies entries from the mirror ring, in order, exactly once.
pub struct MirrorReader {
    capacity: u64,
    applied_lsn: Lsn,
    applied_pos: u64,
    digest: Digest,
    /// Each payload is copied here before it is validated and applied (sized to the largest entry).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for MirrorReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorReader")
            .field("capacity", &self.capacity)
            .field("applied_lsn", &self.applied_lsn)
            .field("applied_pos", &self.applied_pos)
            .field("digest", &self.digest)
            .finish()
    }
}

/// What one [`MirrorReader::scan`] applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Entries applied by this scan.
    pub entries: u64,
    /// Last LSN applied so far.
    pub applied_lsn: Lsn,
    /// Ring position just after it (report it to the writer).
    pub applied_pos: u64,
}

impl MirrorReader {
    /// A reader of a mirror ring of `capacity` bytes, starting empty. Allocates its scratch buffer (a quarter
    /// of the ring: the largest entry) once, here.
    pub fn new(capacity: u64) -> Result<MirrorReader, MirrorError> {
        MirrorReader::resume(capacity, Checkpoint::default())
    }

    /// A reader continuing from `from` (nothing read from the ring yet).
    pub fn resume(capacity: u64, from: Checkpoint) -> Result<MirrorReader, MirrorError> {
        check_capacity(capacity)?;
        Ok(MirrorReader {
            capacity,
            applied_lsn: from.lsn,
            applied_pos: from.pos,
            digest: from.digest,
            scratch: vec![0u8; (capacity / 4) as usize - ENTRY_HEADER],
        })
    }

    /// A reader resuming a ring that survived a restart of its process: it continues from the last
    /// [`Checkpoint`] it persisted ([`Checkpoint::default`] if it never persisted one, which is only right
    /// for a ring that never wrapped), re-validates and applies the entries that arrived after it.
    pub fn recover<R: RingBytes + ?Sized>(
        capacity: u64,
        ring: &R,
        from: Checkpoint,
    ) -> Result<(MirrorReader, Scan), MirrorError> {
        let mut r = MirrorReader::resume(capacity, from)?;
        let scan = r.scan(ring, |_, _| {})?;
        Ok((r, scan))
    }

    /// Last LSN applied.
    pub fn applied_lsn(&self) -> Lsn {
        self.applied_lsn
    }

    /// Ring position after the last applied entry.
    pub fn applied_pos(&self) -> u64 {
        self.applied_pos
    }

    /// Checksum of every applied entry, in order (equals the writer's [`MirrorWriter::digest`] once in sync).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// What to persist so that [`recover`](Self::recover) resumes here.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            pos: self.applied_pos,
            lsn: self.applied_lsn,
            digest: self.digest,
        }
    }

    /// Apply every complete entry that follows the last applied one, calling `apply(lsn, payload)` for each,
    /// in LSN order, each exactly once. Stops at the first slot that does not hold the next LSN with a valid
    /// checksum (not yet written, an older lap, or a write still in flight). Allocates nothing: each payload
    /// is copied into the reader's scratch buffer, validated there, and `apply` sees that copy.
    pub fn scan<R: RingBytes + ?Sized>(
        &mut self,
        ring: &R,
        mut apply: impl FnMut(Lsn, &[u8]),
    ) -> Result<Scan, MirrorError> {
        if ring.capacity() != self.capacity {
            return Err(MirrorError::RingSize {
                expected: self.capacity,
                got: ring.capacity() as usize,
            });
        }
        let mut entries = 0;
        loop {
            let offset = self.applied_pos % self.capacity;
            let next = Lsn(self.applied_lsn.0 + 1);
            let found = read_entry_sum(ring, offset, &mut self.scratch, Some(next));
            match found {
                Some((e, _)) if e.lsn().0 != self.applied_lsn.0 + 1 => break,
                Some((RingEntry::Pad { .. }, _)) => self.applied_pos += self.capacity - offset,
                Some((RingEntry::Entry { lsn, len }, sum)) => {
                    let payload = &self.scratch[..len];
                    apply(lsn, payload);
                    self.applied_lsn = lsn;
                    self.applied_pos += align_up((ENTRY_HEADER + len) as u64);
                    self.digest = self.digest.chain(sum);
                    entries += 1;
                }
                None => {
                    // An older build's entry where ours is due: refuse it rather than wait forever.
                    if format1_lsn(ring, offset) == Some(next) {
                        return Err(MirrorError::EntryFormat { lsn: next, offset });
                    }
                    break;
                }
            }
        }
        Ok(Scan {
            entries,
            applied_lsn: self.applied_lsn,
            applied_pos: self.applied_pos,
        })
    }
}

/// What [`compare_rings`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingCheck {
    /// Entries of the local log's live run: the chain of entries, each at the offset where the one before
    /// it ended, with consecutive LSNs, that ends with the newest entry.
    pub local_entries: u64,
    /// Other valid entries in the local ring: leftovers of older laps (past a pad's header, or behind the
    /// head), not part of the log any more.
    pub stale_entries: u64,
    /// Valid entries anywhere in the partner's mirror ring.
    pub mirror_entries: u64,
    /// Live entries found identical (same LSN, same payload) at the same offset of the mirror.
    pub compared: u64,
    /// Live entries missing or different in the mirror.
    pub mismatches: u64,
    /// The first mismatching LSN.
    pub first_mismatch: Option<Lsn>,
    /// Lowest and highest LSN of the live run.
    pub lsn_range: Option<(Lsn, Lsn)>,
}

impl RingCheck {
    /// The mirror holds every live entry of the local log, the same.
    pub fn is_clean(&self) -> bool {
        self.mismatches == 0 && self.compared == self.local_entries
    }
}

fn walk<R: RingBytes + ?Sized>(ring: &R, mut f: impl FnMut(u64, RingEntry, &[u8])) {
    let cap = ring.capacity();
    let mut payload = vec![0u8; (cap / 4) as usize - ENTRY_HEADER];
    let mut off = 0;
    while off + (ENTRY_HEADER as u64) <= cap {
        match read_entry(ring, off, &mut payload) {
            Some(e @ RingEntry::Entry { len, .. }) => {
                f(off, e, &payload[..len]);
                off += align_up((ENTRY_HEADER + len) as u64);
            }
            _ => off += ENTRY_ALIGN as u64,
        }
    }
}

/// After a run: find the live run of a writer's log ring (`local`) and compare it with the partner's
/// mirror of it, entry by entry at the same offsets. Use it once the writer is quiescent and everything is
/// durable; while appends continue, the newest entries may legitimately be missing from the mirror. The
/// rings must have the same, valid capacity.
pub fn compare_rings<L: RingBytes + ?Sized, M: RingBytes + ?Sized>(
    local: &L,
    mirror: &M,
) -> Result<RingCheck, MirrorError> {
    let bytes = local.capacity();
    check_capacity(bytes)?;
    if mirror.capacity() != bytes {
        return Err(MirrorError::RingSize {
            expected: bytes,
            got: mirror.capacity() as usize,
        });
    }
    struct Found {
        off: u64,
        end: u64,
        lsn: Lsn,
        same: bool,
    }
    let mut other = vec![0u8; (bytes / 4) as usize - ENTRY_HEADER];
    let mut found = Vec::new();
    walk(local, |off, e, payload| {
        let same = match read_entry(mirror, off, &mut other) {
            Some(RingEntry::Entry { lsn, len }) => lsn == e.lsn() && other[..len] == *payload,
            _ => false,
        };
        found.push(Found {
            off,
            end: off + align_up((ENTRY_HEADER + payload.len()) as u64),
            lsn: e.lsn(),
            same,
        });
    });
    let mut check = RingCheck::default();
    walk(mirror, |_, _, _| check.mirror_entries += 1);
    found.sort_unstable_by_key(|f| f.lsn);
    // The live run, from the newest entry back: the entry before `e` has the LSN before it and ends where
    // `e` starts (or where a pad for `e` starts, `e` then being at offset 0).
    let mut probe = [0u8; 0];
    let mut first = found.len().saturating_sub(1);
    while first > 0 {
        let (p, e) = (&found[first - 1], &found[first]);
        let pad_first = matches!(read_entry(local, p.end, &mut probe),
            Some(RingEntry::Pad { lsn }) if lsn == e.lsn);
        let next = if p.end == bytes || pad_first {
            0
        } else {
            p.end
        };
        if p.lsn.0 + 1 != e.lsn.0 || next != e.off {
            break;
        }
        first -= 1;
    }
    let run = &found[first..];
    check.stale_entries = (found.len() - run.len()) as u64;
    check.local_entries = run.len() as u64;
    for f in run {
        if f.same {
            check.compared += 1;
        } else {
            check.mismatches += 1;
            check.first_mismatch.get_or_insert(f.lsn);
        }
    }
    check.lsn_range = run
        .first()
        .map(|f| (f.lsn, run.last().expect("non-empty").lsn));
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const CAP: u64 = 4096;

    #[test]
    fn formats_round_trip_and_this_build_reads_what_it_writes() {
        let b = Formats::THIS_BUILD.encode();
        assert_eq!(&b[0..6], b"CCMF\x01\x02");
        assert_eq!(Formats::decode(&b), Ok(Some(Formats::THIS_BUILD)));
        assert_eq!(Formats::THIS_BUILD.check(&Formats::THIS_BUILD), Ok(()));
        // A later layout's longer descriptor is read by its first fields.
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[9; 6]);
        longer[4] = 2;
        assert_eq!(Formats::decode(&longer), Ok(Some(Formats::THIS_BUILD)));
        // Nothing said: a manager older than protocol version 3.
        assert_eq!(Formats::decode(&[]), Ok(None));
    }

    #[test]
    fn formats_that_are_no_mirrors_are_refused_by_length() {
        for bad in [
            &b"counter"[..],
            &b"CCMF\x01\x02\x04\x00\x00"[..],
            &b"XXXX\x01\x02\x04\x00\x00\x00"[..],
        ] {
            assert_eq!(
                Formats::decode(bad),
                Err(FormatsError::NotAMirror { len: bad.len() }),
                "{bad:?}"
            );
        }
        let mut layout0 = Formats::THIS_BUILD.encode();
        layout0[4] = 0;
        assert_eq!(
            Formats::decode(&layout0),
            Err(FormatsError::NotAMirror { len: 10 })
        );
    }

    #[test]
    fn a_pair_mirrors_only_if_each_reads_what_the_other_writes() {
        let this = Formats::THIS_BUILD;
        // A later build that writes format 3 and still reads 2: it cannot be read here.
        let newer = Formats {
            writes: 3,
            reads: (1 << 2) | (1 << 3),
        };
        assert_eq!(
            this.check(&newer),
            Err(FormatsError::CannotReadPartner {
                partner_writes: 3,
                reads: vec![2]
            })
        );
        // The same build, writing format 2 for this partner (a rolling upgrade): both ways work.
        assert_eq!(this.check(&Formats { writes: 2, ..newer }), Ok(()));
        assert_eq!(Formats { writes: 2, ..newer }.check(&this), Ok(()));
        // A build that reads format 3 only cannot read this one.
        let only3 = Formats {
            writes: 3,
            reads: 1 << 3,
        };
        let e = this.check(&only3).unwrap_err();
        assert_eq!(
            e,
            FormatsError::PartnerCannotRead {
                writes: 2,
                partner_reads: vec![3]
            }
        );
        assert_eq!(
            e.to_string(),
            "the partner reads entry formats [3], not format 2 that this build writes"
        );
        // A format beyond the mask is read by nobody, never a shift overflow.
        let odd = Formats {
            writes: 200,
            reads: u32::MAX,
        };
        assert!(this.check(&odd).is_err());
        assert!(odd.check(&this).is_err());
    }

    fn copy(batch: &Batch, from: &[u8], to: &mut [u8]) {
        for s in batch.segments() {
            let (o, l) = (s.offset as usize, s.len as usize);
            to[o..o + l].copy_from_slice(&from[o..o + l]);
        }
    }

    #[test]
    fn an_entry_travels_to_the_partner_and_is_applied_once() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        let lsn = w.append(&mut local, b"hello").unwrap();
        assert_eq!(lsn, Lsn(1));
        let b = w.next_batch().unwrap();
        copy(&b, &local, &mut mirror);
        assert_eq!(w.batch_completed(b.id).unwrap(), Lsn(1));
        let mut seen = vec![];
        let s = r.scan(&mirror, |l, p| seen.push((l, p.to_vec()))).unwrap();
        assert_eq!(seen, vec![(Lsn(1), b"hello".to_vec())]);
        assert_eq!(s.entries, 1);
        // A second scan of the same bytes applies nothing.
        assert_eq!(
            r.scan(&mirror, |_, _| panic!("applied twice"))
                .unwrap()
                .entries,
            0
        );
        assert_eq!(r.digest(), w.digest());
    }

    /// On a new connection the writer resends at once from what it knows (`link_up`), before the
    /// partner's first report; space that a WRITE still in flight covers (this connection's, or one
    /// forgotten with the old connection until the partner's first report says it left it) is not reused,
    /// even once the partner reported it applied; nor is it behind the checkpoint a restart would use.
    #[test]
    fn a_writer_resumes_on_a_new_link_at_once_and_reuses_no_space_a_late_write_covers() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        let entry = [7u8; 960]; // 992 bytes with its header: four fill most of the ring
        for _ in 0..4 {
            w.append(&mut local, &entry).unwrap();
        }
        // The batch lands but its completion is lost with the link; the partner applied it.
        let old = w.next_batch().unwrap();
        copy(&old, &local, &mut mirror);
        let s = r.scan(&mirror, |_, _| {}).unwrap();
        assert_eq!(s.applied_lsn, Lsn(4));
        // New connection: the writer sends again at once, everything after its durable position.
        w.link_up(4);
        let resend = w.next_batch().expect("resent before any report");
        assert_eq!(resend.last_lsn, Lsn(4));
        assert_eq!(w.checkpoint().released, 0);
        // The partner reports it applied: durable, but nothing is reused while the resend is in flight.
        w.applied(s.applied_pos, s.applied_lsn, 4).unwrap();
        assert_eq!(
            w.durable_lsn(),
            Lsn(4),
            "the partner's report makes it durable"
        );
        assert!(matches!(
            w.append(&mut local, &entry),
            Err(MirrorError::RingFull { .. })
        ));
        // The resend completes; the old batch may still land until the partner says it left the old link.
        w.batch_completed(resend.id).unwrap();
        assert!(w.append(&mut local, &entry).is_err());
        assert_eq!(
            w.checkpoint().released,
            0,
            "a restart reuses nothing either"
        );
        w.old_links_closed();
        assert_eq!(w.checkpoint().released, s.applied_pos);
        assert_eq!(w.append(&mut local, &entry).unwrap(), Lsn(5));
    }

    /// The digest chains the entries' own checksums: both sides and `Digest::add` agree, and it changes
    /// with any payload byte, LSN or order.
    #[test]
    fn the_digest_follows_content_lsn_and_order() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        for p in [&b"one"[..], b"two", b""] {
            w.append(&mut local, p).unwrap();
        }
        copy(&w.next_batch().unwrap(), &local, &mut mirror);
        r.scan(&mirror, |_, _| {}).unwrap();
        let model = Digest::default()
            .add(Lsn(1), b"one")
            .add(Lsn(2), b"two")
            .add(Lsn(3), b"");
        assert_eq!((w.digest(), r.digest()), (model, model));
        let d = Digest::default().add(Lsn(1), b"one");
        assert_ne!(d, Digest::default().add(Lsn(1), b"onf"));
        assert_ne!(d, Digest::default().add(Lsn(2), b"one"));
        assert_ne!(
            model,
            Digest::default()
                .add(Lsn(1), b"two")
                .add(Lsn(2), b"one")
                .add(Lsn(3), b"")
        );
    }

    #[test]
    fn a_full_ring_pushes_back_instead_of_overwriting() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 64).unwrap();
        let payload = [7u8; 200];
        let mut n = 0;
        let err = loop {
            match w.append(&mut local, &payload) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, MirrorError::RingFull { .. }), "{err}");
        assert_eq!(n, CAP / 256);
        // Once the partner applied the first entry, one more fits.
        let b = w.next_batch().unwrap();
        w.batch_completed(b.id).unwrap();
        w.applied(256, Lsn(1), 64).unwrap();
        assert!(w.append(&mut local, &payload).is_ok());
    }

    /// An entry given in parts is byte for byte the entry of their concatenation: same ring bytes (pads
    /// included, across a wrap), same checksums and digest, and the reader applies the whole payload.
    #[test]
    fn an_entry_given_in_parts_is_the_entry_of_their_concatenation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut whole, mut parted) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut mirror = vec![0u8; CAP as usize];
        let (mut a, mut b) = (
            MirrorWriter::new(CAP, 64).unwrap(),
            MirrorWriter::new(CAP, 64).unwrap(),
        );
        let mut r = MirrorReader::new(CAP).unwrap();
        let mut sent = vec![];
        for i in 0..200u64 {
            let len = rng.gen_range(0..=a.max_entry().min(700));
            let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            // Up to four cuts, empty parts included.
            let mut cuts: Vec<usize> = (0..rng.gen_range(0..4))
                .map(|_| rng.gen_range(0..=len))
                .collect();
            cuts.sort_unstable();
            let mut parts: Vec<&[u8]> = vec![];
            let mut from = 0;
            for c in cuts.into_iter().chain([len]) {
                parts.push(&payload[from..c]);
                from = c;
            }
            let la = a.append(&mut whole, &payload).unwrap();
            let lb = b.append_vectored(&mut parted, &parts).unwrap();
            assert_eq!((la, lb), (Lsn(i + 1), Lsn(i + 1)));
            assert_eq!(whole, parted, "entry {i} in {} parts", parts.len());
            assert_eq!(a.digest(), b.digest());
            // Mirror the parted writer's entry and let the partner apply it, to free space.
            let batch = b.next_batch().unwrap();
            copy(&batch, &parted, &mut mirror);
            b.batch_completed(batch.id).unwrap();
            let mut seen = vec![];
            r.scan(&mirror, |l, p| seen.push((l, p.to_vec()))).unwrap();
            assert_eq!(seen, vec![(lb, payload.clone())]);
            b.applied(r.applied_pos(), r.applied_lsn(), 64).unwrap();
            b.checkpoint_persisted(&b.checkpoint());
            let batch = a.next_batch().unwrap();
            a.batch_completed(batch.id).unwrap();
            a.applied(r.applied_pos(), r.applied_lsn(), 64).unwrap();
            a.checkpoint_persisted(&a.checkpoint());
            sent.push(len);
        }
        assert!(
            sent.iter()
                .map(|&l| align_up((ENTRY_HEADER + l) as u64))
                .sum::<u64>()
                > 2 * CAP,
            "the run wrapped the ring"
        );
        assert_eq!(r.digest(), b.digest());
        // The limit is on the whole payload.
        let big = vec![0u8; b.max_entry()];
        assert_eq!(
            b.append_vectored(&mut parted, &[&big, b"x"]),
            Err(MirrorError::EntryTooLarge {
                len: b.max_entry() + 1,
                max: b.max_entry()
            })
        );
    }

    #[test]
    fn oversized_entries_are_refused_with_the_limit() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 1).unwrap();
        let err = w.append(&mut local, &vec![0u8; CAP as usize]).unwrap_err();
        assert_eq!(
            err,
            MirrorError::EntryTooLarge {
                len: CAP as usize,
                max: CAP as usize / 4 - ENTRY_HEADER
            }
        );
    }

    #[test]
    fn only_a_notifying_batch_needs_a_partner_receive_credit() {
        let mut local = vec![0u8; CAP as usize];
        // No receive credit at all: plain batches still go, any number of them.
        let mut w = MirrorWriter::new(CAP, 0).unwrap();
        for _ in 0..4 {
            w.append(&mut local, &[1u8; 448]).unwrap(); // 512-byte slots
            let b = w.next_batch().expect("a plain batch needs no credit");
            assert!(!b.notify);
            w.batch_completed(b.id).unwrap();
        }
        // The fifth leaves more than half the ring awaiting an ack: it must notify, and waits for a credit.
        w.append(&mut local, &[1u8; 448]).unwrap();
        assert_eq!(w.next_batch(), None, "no credit for the notification");
        // The partner's report grants one (and applied nothing yet).
        w.applied(0, Lsn(0), 1).unwrap();
        let b = w.next_batch().expect("one credit, one notification");
        assert!(b.notify);
        w.batch_completed(b.id).unwrap();
        w.append(&mut local, &[1u8; 448]).unwrap();
        assert_eq!(w.next_batch(), None, "the credit is spent");
    }

    #[test]
    fn the_partner_is_notified_once_half_the_ring_awaits_its_ack() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 64).unwrap();
        let mut notified = vec![];
        for _ in 0..3 {
            w.append(&mut local, &[7u8; 960]).unwrap(); // 1 KiB slots in a 4 KiB ring
            let b = w.next_batch().unwrap();
            w.batch_completed(b.id).unwrap();
            notified.push(b.notify);
        }
        assert_eq!(
            notified,
            [false, false, true],
            "free 3 KiB, 2 KiB, then 1 KiB of 4"
        );
        // The partner's ack gives the ring back: the next batch is plain again.
        w.applied(3 * 1024, Lsn(3), 65).unwrap();
        w.append(&mut local, &[7u8; 960]).unwrap();
        assert!(!w.next_batch().unwrap().notify);
    }

    #[test]
    fn completions_out_of_order_are_refused() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        w.append(&mut local, b"a").unwrap();
        let b0 = w.next_batch().unwrap();
        w.append(&mut local, b"b").unwrap();
        let b1 = w.next_batch().unwrap();
        assert!(matches!(
            w.batch_completed(b1.id),
            Err(MirrorError::OutOfOrderCompletion { .. })
        ));
        w.batch_completed(b0.id).unwrap();
        w.batch_completed(b1.id).unwrap();
    }

    #[test]
    fn a_torn_entry_is_not_applied_until_it_is_whole() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        w.append(&mut local, &[9u8; 100]).unwrap();
        let b = w.next_batch().unwrap();
        // Only the header and half the payload arrived.
        mirror[..ENTRY_HEADER + 50].copy_from_slice(&local[..ENTRY_HEADER + 50]);
        assert_eq!(r.scan(&mirror, |_, _| {}).unwrap().entries, 0);
        copy(&b, &local, &mut mirror);
        assert_eq!(r.scan(&mirror, |_, _| {}).unwrap().entries, 1);
    }

    /// Random appends, batches lost or placed partially, link resets, acks: every durable entry ends up applied
    /// on the partner exactly once, in order, with matching checksums.
    #[test]
    fn random_faults_lose_and_duplicate_nothing() {
        for seed in 0..300u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cap = 64 * rng.gen_range(8..64u64);
            let (mut local, mut mirror) = (vec![0u8; cap as usize], vec![0u8; cap as usize]);
            let credits = rng.gen_range(1..8u64);
            let mut w = MirrorWriter::new(cap, credits).unwrap();
            let mut r = MirrorReader::new(cap).unwrap();
            let mut reposted = credits;
            let mut posted: Vec<Batch> = vec![];
            let mut appended: Vec<Vec<u8>> = vec![];
            let mut applied: Vec<(Lsn, Vec<u8>)> = vec![];
            for _ in 0..400 {
                match rng.gen_range(0..10) {
                    0..=3 => {
                        let len = rng.gen_range(0..(cap as usize / 4 - ENTRY_HEADER));
                        let p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                        if w.append(&mut local, &p).is_ok() {
                            appended.push(p);
                        }
                    }
                    4 | 5 => {
                        if let Some(b) = w.next_batch() {
                            posted.push(b);
                        }
                    }
                    6 | 7 => {
                        // The oldest batch is placed and acknowledged; the partner is notified.
                        if !posted.is_empty() {
                            let b = posted.remove(0);
                            copy(&b, &local, &mut mirror);
                            w.batch_completed(b.id).unwrap();
                            let s = r
                                .scan(&mirror, |l, p| applied.push((l, p.to_vec())))
                                .unwrap();
                            reposted += 1;
                            if rng.gen_bool(0.7) {
                                w.applied(s.applied_pos, s.applied_lsn, reposted).unwrap();
                            }
                        }
                    }
                    8 => {
                        // Link loss: in-flight batches vanish, some partly placed (maybe torn), none acknowledged.
                        for b in posted.drain(..) {
                            if rng.gen_bool(0.5) {
                                let s = b.segments[0];
                                let cut = rng.gen_range(0..=s.len) as usize;
                                let o = s.offset as usize;
                                mirror[o..o + cut].copy_from_slice(&local[o..o + cut]);
                            }
                        }
                        // The partner may also have applied what it holds before the new link is up.
                        if rng.gen_bool(0.5) {
                            r.scan(&mirror, |l, p| applied.push((l, p.to_vec())))
                                .unwrap();
                        }
                        let durable_before = w.durable_lsn();
                        // On the new connection the partner posts a fresh set of notification receives.
                        reposted = rng.gen_range(1..8);
                        w.link_reset(r.applied_pos(), r.applied_lsn(), reposted)
                            .unwrap();
                        assert!(
                            w.durable_lsn() >= durable_before,
                            "a reset never un-acknowledges"
                        );
                    }
                    _ => {
                        // A spurious scan (e.g. a notification of an older batch) applies only complete entries.
                        r.scan(&mirror, |l, p| applied.push((l, p.to_vec())))
                            .unwrap();
                    }
                }
                assert!(w.durable_lsn().0 <= appended.len() as u64);
                assert!(r.applied_lsn().0 <= appended.len() as u64);
            }
            // Quiesce: the partner's latest ack (some were delayed above) arrives, then everything is sent and
            // completed, the partner acknowledging each notification.
            w.applied(r.applied_pos(), r.applied_lsn(), reposted)
                .unwrap();
            for _ in 0..10_000 {
                if let Some(b) = posted.first().copied() {
                    posted.remove(0);
                    copy(&b, &local, &mut mirror);
                    w.batch_completed(b.id).unwrap();
                    let s = r
                        .scan(&mirror, |l, p| applied.push((l, p.to_vec())))
                        .unwrap();
                    reposted += 1;
                    w.applied(s.applied_pos, s.applied_lsn, reposted).unwrap();
                } else if let Some(b) = w.next_batch() {
                    posted.push(b);
                } else {
                    break;
                }
            }
            assert_eq!(
                w.durable_lsn(),
                w.last_lsn(),
                "seed {seed}: everything acknowledged at quiesce"
            );
            let lsns: Vec<u64> = applied.iter().map(|(l, _)| l.0).collect();
            let want: Vec<u64> = (1..=appended.len() as u64).collect();
            assert_eq!(lsns, want, "seed {seed}: applied in order, exactly once");
            for ((_, got), want) in applied.iter().zip(&appended) {
                assert_eq!(got, want, "seed {seed}: payload intact");
            }
            assert_eq!(r.digest(), w.digest(), "seed {seed}: checksums agree");
        }
    }

    /// The same protocol over shared memory (what the client maps and registers): the writer encodes into one
    /// mapping, "RDMA" copies byte ranges to another, the reader scans it through copies.
    #[test]
    fn shared_memory_rings_carry_entries_across_laps() {
        let cap = 8192u64;
        let mut local = SharedMemory::anonymous(cap as usize).unwrap();
        let mirror = SharedMemory::anonymous(cap as usize).unwrap();
        let mut w = MirrorWriter::new(cap, 1_000).unwrap();
        let mut r = MirrorReader::new(cap).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen: Vec<(Lsn, Vec<u8>)> = vec![];
        let mut want: Vec<Vec<u8>> = vec![];
        let mut buf = vec![0u8; cap as usize];
        for _ in 0..500 {
            let p: Vec<u8> = (0..rng.gen_range(0..900)).map(|_| rng.gen()).collect();
            match w.append(&mut local, &p) {
                Ok(_) => want.push(p),
                Err(MirrorError::RingFull { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            if let Some(b) = w.next_batch() {
                for seg in b.segments() {
                    let chunk = &mut buf[..seg.len as usize];
                    local.read(seg.offset as usize, chunk).unwrap();
                    mirror.write(seg.offset as usize, chunk).unwrap();
                }
                w.batch_completed(b.id).unwrap();
                let s = r.scan(&*mirror, |l, p| seen.push((l, p.to_vec()))).unwrap();
                w.applied(s.applied_pos, s.applied_lsn, 1_000).unwrap();
            }
        }
        assert!(w.last_lsn().0 > 100, "several laps of an 8 KiB ring");
        assert_eq!(seen.len(), want.len());
        for (i, ((l, got), want)) in seen.iter().zip(&want).enumerate() {
            assert_eq!(l.0, i as u64 + 1);
            assert_eq!(got, want);
        }
        assert_eq!(r.digest(), w.digest());
        // A ring of the wrong size is refused on both sides.
        let small = SharedMemory::anonymous(4096).unwrap();
        assert_eq!(
            r.scan(&*small, |_, _| {}).unwrap_err(),
            MirrorError::RingSize {
                expected: cap,
                got: 4096
            }
        );
        assert!(w.append(&mut small.clone(), b"x").is_err());
    }

    /// The partner's ack can be polled before the RC completion of the batch it acknowledges: `durable` must
    /// not move back, or a later reset would resend more than a ring's worth from a reused offset.
    #[test]
    fn an_ack_before_the_completion_never_moves_durable_back() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 8).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        w.append(&mut local, &[1u8; 200]).unwrap();
        let b0 = w.next_batch().unwrap();
        w.append(&mut local, &[2u8; 200]).unwrap();
        let b1 = w.next_batch().unwrap();
        copy(&b0, &local, &mut mirror);
        copy(&b1, &local, &mut mirror);
        let s = r.scan(&mirror, |_, _| {}).unwrap();
        assert_eq!(s.applied_lsn, Lsn(2));
        // The ack (both entries) arrives first, then the completions.
        w.applied(s.applied_pos, s.applied_lsn, 10).unwrap();
        w.batch_completed(b0.id).unwrap();
        w.batch_completed(b1.id).unwrap();
        // Fill the ring again: the space the partner released is reused.
        let mut n = 0;
        while w.append(&mut local, &[3u8; 200]).is_ok() {
            n += 1;
        }
        assert!(n >= (CAP / 256) - 1);
        w.link_reset(s.applied_pos, s.applied_lsn, 4).unwrap();
        assert_eq!(w.sent_lsn(), Lsn(2));
        let b = w.next_batch().unwrap();
        let total: u64 = b.segments().iter().map(|s| s.len).sum();
        assert!(total <= CAP, "a batch never spans more than the ring");
        assert_eq!(b.segments()[0].offset, s.applied_pos % CAP);
    }

    #[test]
    fn checkpoints_round_trip_and_torn_ones_are_refused() {
        let c = Checkpoint {
            pos: 123_456,
            lsn: Lsn(789),
            digest: Digest(0xdead_beef),
        };
        let b = c.encode();
        assert_eq!(Checkpoint::decode(&b), Some(c));
        for i in 0..28 {
            let mut t = b;
            t[i] ^= 0x40;
            assert_eq!(Checkpoint::decode(&t), None, "byte {i} flipped");
        }
        assert_eq!(Checkpoint::decode(&[0u8; 32]), None);
    }

    /// A restarted partner resumes from its checkpoint even after the ring wrapped (where a scan from the
    /// beginning finds nothing), applying only what arrived after the checkpoint, once.
    #[test]
    fn a_restarted_reader_resumes_from_its_checkpoint_after_wraps() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 1_000).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        let mut saved = Checkpoint::default();
        for i in 0..100u32 {
            w.append(&mut local, &i.to_le_bytes().repeat(30)).unwrap();
            let b = w.next_batch().unwrap();
            copy(&b, &local, &mut mirror);
            w.batch_completed(b.id).unwrap();
            let s = r.scan(&mirror, |_, _| {}).unwrap();
            w.applied(s.applied_pos, s.applied_lsn, 1_000).unwrap();
            saved = r.checkpoint();
        }
        assert!(saved.pos > 2 * CAP, "wrapped");
        // Two more entries reach the mirror while the partner is down.
        for i in 100..102u32 {
            w.append(&mut local, &i.to_le_bytes().repeat(30)).unwrap();
        }
        let b = w.next_batch().unwrap();
        copy(&b, &local, &mut mirror);
        let (fresh, s) = MirrorReader::recover(CAP, &mirror, Checkpoint::default()).unwrap();
        assert_eq!(
            s.entries, 0,
            "without a checkpoint a wrapped ring cannot be resumed"
        );
        assert_eq!(fresh.applied_lsn(), Lsn(0));
        let restored = Checkpoint::decode(&saved.encode()).unwrap();
        let (r2, s) = MirrorReader::recover(CAP, &mirror, restored).unwrap();
        assert_eq!(s.entries, 2);
        assert_eq!(r2.applied_lsn(), Lsn(102));
        assert_eq!(r2.digest(), w.digest());
        w.link_reset(r2.applied_pos(), r2.applied_lsn(), 4).unwrap();
        assert_eq!(w.durable_lsn(), Lsn(102));
    }

    #[test]
    fn read_entry_finds_entries_and_pads_and_rejects_damage() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut buf = vec![0u8; w.max_entry()];
        w.append(&mut local, &[5u8; 900]).unwrap(); // 0..960
        w.append(&mut local, &[6u8; 900]).unwrap(); // 960..1920
        w.append(&mut local, &[7u8; 900]).unwrap(); // 1920..2880
        w.append(&mut local, &[8u8; 900]).unwrap(); // 2880..3840
        let b = w.next_batch().unwrap();
        w.batch_completed(b.id).unwrap();
        w.applied(1920, Lsn(2), 4).unwrap();
        w.append(&mut local, &[9u8; 900]).unwrap(); // pad 3840..4096, then 0..960
        assert_eq!(
            read_entry(&local, 3840, &mut buf),
            Some(RingEntry::Pad { lsn: Lsn(5) })
        );
        assert_eq!(
            read_entry(&local, 0, &mut buf),
            Some(RingEntry::Entry {
                lsn: Lsn(5),
                len: 900
            })
        );
        assert!(buf[..900].iter().all(|&x| x == 9));
        assert_eq!(read_entry(&local, 64, &mut buf), None, "inside a payload");
        assert_eq!(read_entry(&local, 1, &mut buf), None, "unaligned");
        assert_eq!(read_entry(&local, 2880, &mut buf[..100]), None, "too small");
        local[2880 + ENTRY_HEADER + 5] ^= 1;
        assert_eq!(read_entry(&local, 2880, &mut buf), None, "damaged payload");
        // All 64 bits of the checksum count, the high half included.
        local[1920 + 23] ^= 0x80;
        assert_eq!(read_entry(&local, 1920, &mut buf), None, "damaged checksum");
    }

    /// An entry as the first format wrote it: magic `CCMN`, CRC-32 of the first 16 header bytes and the
    /// payload at bytes 16..20.
    fn format1_entry(ring: &mut [u8], offset: usize, lsn: u64, payload: &[u8]) {
        let mut hdr = [0u8; ENTRY_HEADER];
        hdr[0..4].copy_from_slice(b"CCMN");
        hdr[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        hdr[8..16].copy_from_slice(&lsn.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&hdr[0..16]);
        h.update(payload);
        hdr[16..20].copy_from_slice(&h.finalize().to_le_bytes());
        ring[offset..offset + ENTRY_HEADER].copy_from_slice(&hdr);
        ring[offset + ENTRY_HEADER..offset + ENTRY_HEADER + payload.len()].copy_from_slice(payload);
    }

    #[test]
    fn a_reader_refuses_an_older_builds_entry_where_its_next_one_is_due() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 4).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        w.append(&mut local, b"one").unwrap(); // 0..64
        let b = w.next_batch().unwrap();
        copy(&b, &local, &mut mirror);
        assert_eq!(r.scan(&mirror, |_, _| {}).unwrap().entries, 1);
        // An older lap's format-1 entry (an earlier LSN) is just not the next entry.
        format1_entry(&mut mirror, 64, 1, b"old lap");
        assert_eq!(r.scan(&mirror, |_, _| {}).unwrap().entries, 0);
        // The next LSN written by an older build: refused, nothing applied.
        format1_entry(&mut mirror, 64, 2, b"two");
        let mut applied = 0;
        assert_eq!(
            r.scan(&mirror, |_, _| applied += 1),
            Err(MirrorError::EntryFormat {
                lsn: Lsn(2),
                offset: 64
            })
        );
        assert_eq!((applied, r.applied_lsn()), (0, Lsn(1)));
    }

    #[test]
    fn a_writer_does_not_continue_an_older_builds_log() {
        // Its first lap, and a later lap without a checkpoint (not taken for an empty ring either).
        for lsn in [1, 77] {
            let mut ring = vec![0u8; CAP as usize];
            format1_entry(&mut ring, 0, lsn, b"older build");
            assert_eq!(
                MirrorWriter::recover(&ring, None, 4).map(|_| ()),
                Err(MirrorError::EntryFormat {
                    lsn: Lsn(lsn),
                    offset: 0
                })
            );
        }
    }

    /// Drive `w` until everything is durable and applied by `r`, persisting the writer's checkpoint after
    /// each report of the partner (as the client does).
    fn quiesce(
        w: &mut MirrorWriter,
        r: &mut MirrorReader,
        local: &[u8],
        mirror: &mut [u8],
        seen: &mut Vec<(Lsn, Vec<u8>)>,
    ) {
        while let Some(b) = w.next_batch() {
            copy(&b, local, mirror);
            w.batch_completed(b.id).unwrap();
            let s = r.scan(&*mirror, |l, p| seen.push((l, p.to_vec()))).unwrap();
            w.applied(s.applied_pos, s.applied_lsn, 1_000).unwrap();
            let c = w.checkpoint();
            w.checkpoint_persisted(&c);
        }
    }

    /// The live run is the whole log when the ring never wrapped; after wraps, an older lap's entries left
    /// past a later pad's header are not part of it.
    #[test]
    fn compare_rings_finds_the_live_run() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 1_000).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        let mut seen = vec![];
        for i in 0..10u8 {
            w.append(&mut local, &[i; 100]).unwrap();
        }
        quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
        let c = compare_rings(&local, &mirror).unwrap();
        assert_eq!(
            (
                c.local_entries,
                c.stale_entries,
                c.compared,
                c.mirror_entries
            ),
            (10, 0, 10, 10)
        );
        assert_eq!(c.lsn_range, Some((Lsn(1), Lsn(10))));
        assert!(c.is_clean());
        // A lap of small entries, then large ones that pad early: the small ones past the pad's header are
        // leftovers, the large ones and the one after the pad are the live run.
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let mut w = MirrorWriter::new(CAP, 1_000).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        for _ in 0..CAP / 64 {
            w.append(&mut local, &[]).unwrap();
            quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
        }
        for _ in 0..5 {
            w.append(&mut local, &[7u8; 900]).unwrap(); // 960-byte slots: the fifth pads at 3840
            quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
        }
        let c = compare_rings(&local, &mirror).unwrap();
        assert!(c.is_clean(), "{c:?}");
        assert_eq!(c.lsn_range, Some((Lsn(66), Lsn(69))), "{c:?}");
        assert_eq!((c.local_entries, c.stale_entries), (4, 3), "{c:?}");
        assert_eq!(c.mirror_entries, 7);
        // A live entry damaged in the mirror is a mismatch.
        let at = read_entry(&mirror, 0, &mut vec![0u8; w.max_entry()]).unwrap();
        assert!(matches!(at, RingEntry::Entry { .. }));
        mirror[ENTRY_HEADER + 3] ^= 1;
        let c = compare_rings(&local, &mirror).unwrap();
        assert_eq!(c.mismatches, 1);
        assert!(!c.is_clean());
    }

    #[test]
    fn writer_checkpoints_round_trip_and_the_newest_whole_slot_wins() {
        let old = WriterCheckpoint {
            head: 4096,
            lsn: Lsn(40),
            digest: Digest(7),
            released: 1024,
            released_lsn: Lsn(10),
        };
        let new = WriterCheckpoint {
            released: 2048,
            released_lsn: Lsn(20),
            ..old
        };
        let (a, b) = (old.encode(), new.encode());
        assert_eq!(WriterCheckpoint::decode(&a), Some(old));
        for i in 0..44 {
            let mut t = a;
            t[i] ^= 0x10;
            assert_eq!(WriterCheckpoint::decode(&t), None, "byte {i} flipped");
        }
        assert_eq!(WriterCheckpoint::newest([&a, &b]), Some(new));
        assert_eq!(WriterCheckpoint::newest([&b, &a]), Some(new));
        let mut torn = b;
        torn[30] ^= 1;
        assert_eq!(WriterCheckpoint::newest([&a, &torn]), Some(old));
        assert_eq!(WriterCheckpoint::newest([&[0u8; 48], &[0u8; 48]]), None);
    }

    /// The writer process dies with entries appended, some sent but not completed, some never sent; a new
    /// process continues the log from the ring and its checkpoint: same LSNs, same digest, and once the
    /// partner reports where it stands everything after that is sent again and applied once.
    #[test]
    fn a_restarted_writer_continues_its_log_and_resends_what_the_partner_lacks() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let (mut w, _) = MirrorWriter::recover(&local, None, 1_000).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        let mut seen = vec![];
        let mut want: Vec<Vec<u8>> = vec![];
        let mut persisted = WriterCheckpoint::default();
        // Several laps, acknowledged and checkpointed as they go.
        for i in 0..60u32 {
            let p = i.to_le_bytes().repeat(1 + (i as usize * 7) % 60);
            w.append(&mut local, &p).unwrap();
            want.push(p);
            quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
            persisted = w.checkpoint();
        }
        assert!(w.head_pos() > 2 * CAP, "wrapped");
        // Then: one batch placed but its completion lost, one posted and lost, one entry never sent.
        for i in 60..63u32 {
            let p = i.to_le_bytes().repeat(20);
            w.append(&mut local, &p).unwrap();
            want.push(p);
            let b = w.next_batch().unwrap();
            if i == 60 {
                copy(&b, &local, &mut mirror);
            }
        }
        w.append(&mut local, b"never sent").unwrap();
        want.push(b"never sent".to_vec());
        let (last, digest, head) = (w.last_lsn(), w.digest(), w.head_pos());
        // SIGKILL: the writer is gone; only the ring and the persisted checkpoint remain.
        // No receive credits until the partner's first report on the new connection.
        let (mut w, found) = MirrorWriter::recover(&local, Some(persisted), 0).unwrap();
        assert_eq!(found, 4, "the entries appended after the checkpoint");
        assert_eq!(
            (w.last_lsn(), w.digest(), w.head_pos()),
            (last, digest, head)
        );
        assert_eq!(w.durable_lsn(), persisted.released_lsn);
        // Plain batches need no receive credit: before the partner's report it may already send again
        // from its checkpoint (the same bytes at the same offsets: the partner drops what it holds).
        // This one is lost with the connection it went out on.
        let b = w.next_batch().expect("a plain batch");
        assert!(!b.notify);
        assert_eq!(b.segments()[0].offset, persisted.released % CAP);
        // The partner applies what reached it and reports on the new connection.
        let s = r.scan(&mirror, |l, p| seen.push((l, p.to_vec()))).unwrap();
        assert_eq!(s.applied_lsn, Lsn(61));
        w.link_reset(s.applied_pos, s.applied_lsn, 8).unwrap();
        assert_eq!(w.durable_lsn(), Lsn(61));
        quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
        // New appends continue the LSNs.
        assert_eq!(w.append(&mut local, b"after").unwrap(), Lsn(65));
        want.push(b"after".to_vec());
        quiesce(&mut w, &mut r, &local, &mut mirror, &mut seen);
        let lsns: Vec<u64> = seen.iter().map(|(l, _)| l.0).collect();
        assert_eq!(lsns, (1..=65).collect::<Vec<u64>>(), "once, in order");
        for ((_, got), want) in seen.iter().zip(&want) {
            assert_eq!(got, want);
        }
        assert_eq!(r.digest(), w.digest());
        assert!(compare_rings(&local, &mirror).unwrap().is_clean());
    }

    /// Killed in the middle of an append: the torn entry fails its checksum, ends the walk, and its LSN
    /// (never returned) is given to the next append.
    #[test]
    fn a_torn_append_is_not_recovered() {
        let mut local = vec![0u8; CAP as usize];
        let (mut w, _) = MirrorWriter::recover(&local, None, 4).unwrap();
        w.append(&mut local, b"one").unwrap();
        let c = w.checkpoint();
        w.append(&mut local, &[2u8; 300]).unwrap();
        // The third append's payload was copied, its header only half.
        let mut copy_of = local.clone();
        let mut w3 = MirrorWriter::recover(&copy_of, Some(c), 4).unwrap().0;
        w3.append(&mut copy_of, &[3u8; 100]).unwrap();
        let at = 64 + 384;
        local[at..at + 16].copy_from_slice(&copy_of[at..at + 16]);
        local[at + ENTRY_HEADER..at + ENTRY_HEADER + 100].fill(3);
        let (mut w2, found) = MirrorWriter::recover(&local, Some(c), 4).unwrap();
        assert_eq!(found, 1);
        assert_eq!(w2.last_lsn(), Lsn(2));
        assert_eq!(w2.append(&mut local, b"three").unwrap(), Lsn(3));
    }

    /// A recovering writer reuses ring space only once a checkpoint saying so is persisted: otherwise a
    /// second crash would walk from a head whose entries were overwritten.
    #[test]
    fn space_is_reused_only_after_a_persisted_checkpoint() {
        let (mut local, mut mirror) = (vec![0u8; CAP as usize], vec![0u8; CAP as usize]);
        let (mut w, _) = MirrorWriter::recover(&local, None, 64).unwrap();
        let mut r = MirrorReader::new(CAP).unwrap();
        while w.append(&mut local, &[1u8; 200]).is_ok() {}
        let b = w.next_batch().unwrap();
        copy(&b, &local, &mut mirror);
        w.batch_completed(b.id).unwrap();
        let s = r.scan(&mirror, |_, _| {}).unwrap();
        w.applied(s.applied_pos, s.applied_lsn, 64).unwrap();
        assert!(matches!(
            w.append(&mut local, &[2u8; 200]),
            Err(MirrorError::RingFull { .. })
        ));
        let c = w.checkpoint();
        w.checkpoint_persisted(&c);
        assert!(w.append(&mut local, &[2u8; 200]).is_ok());
        // A volatile writer never waits for checkpoints.
        let mut v = MirrorWriter::new(CAP, 64).unwrap();
        let mut l2 = vec![0u8; CAP as usize];
        while v.append(&mut l2, &[1u8; 200]).is_ok() {}
        let b = v.next_batch().unwrap();
        v.batch_completed(b.id).unwrap();
        v.applied(256, Lsn(1), 64).unwrap();
        assert!(v.append(&mut l2, &[2u8; 200]).is_ok());
    }

    #[test]
    fn a_wrapped_log_without_a_checkpoint_or_a_bad_checkpoint_is_refused() {
        let mut local = vec![0u8; CAP as usize];
        let mut w = MirrorWriter::new(CAP, 1_000).unwrap();
        for _ in 0..3 {
            w.append(&mut local, &[1u8; 900]).unwrap();
        }
        // The very first append torn mid-header (magic written, LSN not yet): no entry, LSN 1 is next.
        let mut torn = vec![0u8; CAP as usize];
        torn[..4].copy_from_slice(&local[..4]);
        let (t, found) = MirrorWriter::recover(&torn, None, 4).unwrap();
        assert_eq!((found, t.last_lsn()), (0, Lsn(0)));
        // Never wrapped: the log is found from its start.
        let (w2, found) = MirrorWriter::recover(&local, None, 4).unwrap();
        assert_eq!((found, w2.last_lsn(), w2.digest()), (3, Lsn(3), w.digest()));
        let b = w.next_batch().unwrap();
        w.batch_completed(b.id).unwrap();
        w.applied(w.head_pos(), Lsn(3), 1_000).unwrap();
        w.append(&mut local, &[1u8; 900]).unwrap(); // 2880..3840
        w.append(&mut local, &[1u8; 900]).unwrap(); // wraps: LSN 5 at offset 0
        assert_eq!(
            MirrorWriter::recover(&local, None, 4).unwrap_err(),
            MirrorError::LogWithoutCheckpoint { lsn: Lsn(5) }
        );
        let bad = WriterCheckpoint {
            head: 64,
            released: 128,
            ..WriterCheckpoint::default()
        };
        assert_eq!(
            MirrorWriter::recover(&local, Some(bad), 4).unwrap_err(),
            MirrorError::BadCheckpoint(bad)
        );
        let (w3, found) = MirrorWriter::recover(&local, Some(w.checkpoint()), 4).unwrap();
        assert_eq!((found, w3.last_lsn()), (0, Lsn(5)));
    }
}
