//! A deterministic simulation of NVRAM mirroring: the real [`MirrorWriter`] and [`MirrorReader`] over a
//! simulated RC link with seeded faults, checking the mirror's promises after every step.
//!
//! **What is simulated.** Two processes and one RC connection at a time:
//!
//! * the *writer process*: a [`MirrorWriter`] made with [`MirrorWriter::recover`], its log ring (a byte
//!   vector standing for the file mapping, which survives the process) and its [`WriterCheckpoint`] file of
//!   two slots, rewritten (the older slot) after every report of the partner, as the client does;
//! * the *partner process*: a [`MirrorReader`], its mirror ring and its [`Checkpoint`] file (both survive);
//!   on every notification it scans, persists its checkpoint, then sends its ack; it also looks without one
//!   (the client's quiet scan after a sleep), acking only once an eighth of the ring was applied since its
//!   last ack or an idle sleep passed (a coin);
//! * the *link*: the RDMA WRITEs of the batches posted and not yet placed (in order), the writer's RC
//!   completions not yet polled, the partner's acks in flight, the notifications (receive completions) the
//!   partner has not yet handled, and the receives it has posted. A WRITE copies the writer's ring into the
//!   partner's ring *when it is placed*, not when it is posted, as a device does.
//!
//! Only a batch sent once half the ring awaits an ack notifies ([`crate::mirror::Batch::notify`]); the others are
//! plain WRITEs, whose last one still completes the batch.
//!
//! **Faults** (all drawn from the seed): random append sizes and bursts (the ring fills: back-pressure),
//! batches left in flight, a WRITE placed twice before its completion (an RC retransmission), the link cut
//! in three ways (a port-down cut placing a prefix of the WRITEs in flight, the last one maybe torn, with a
//! prefix of the completions and acks still delivered; a silent loss delivering nothing more; a failback
//! or migration placing everything but losing the completions), a new link each time (the writer resumes
//! with [`MirrorWriter::link_up`] at once, the partner later: late WRITEs of the cut link land until the
//! partner leaves it), the partner process crashing (maybe after
//! applying but before persisting its checkpoint) and restarting from its checkpoint, and the writer process
//! crashing (maybe mid-append or while persisting its checkpoint) and restarting with
//! [`MirrorWriter::recover`].
//!
//! **Invariants**, after every step:
//! 1. the partner applies entries in LSN order, each once, with the payload the writer's engine appended
//!    (across a partner crash the sequence continues from its persisted checkpoint: what was applied after
//!    it was applied by the dead process only, and is applied again by the new one);
//! 2. every LSN the writer ever reported durable (any incarnation) is in the partner's memory: a walk of the
//!    mirror ring from the partner's position reaches it, every entry intact;
//! 3. the writer never overwrites its ring beyond what the partner persisted as applied
//!    (`head <= partner checkpoint + capacity`), so no entry is overwritten before the partner applied it;
//! 4. a restarted writer continues at the LSN after the last one it returned (no gap, no reuse) with the
//!    same digest; no writer call fails on a report of a correct partner; no notification arrives without a
//!    posted receive.
//!
//! At the end the faults stop, everything is brought up and drained: every appended entry is applied once,
//! in order, the partner reports all it applied, the writer gets its whole ring back, the digests agree and
//! [`compare_rings`] finds both rings equal.
//!
//! A [`Bug`] makes one part deliberately wrong, to show the invariants catch it.

use std::collections::VecDeque;
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mirror::{
    compare_rings, Checkpoint, Digest, Lsn, MirrorReader, MirrorWriter, RingBytes, Segment,
    WriterCheckpoint,
};

/// A deliberate defect, to show that the invariants catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The link flips one byte of a WRITE as it places it.
    CorruptPlacement,
    /// The link drops a WRITE but completes its batch.
    LostWrite,
    /// The partner reports what it applied without persisting its checkpoint first.
    AckBeforeCheckpoint,
    /// The partner acks on a new connection while its old one still accepts writes (it never puts its old
    /// VI in the error state), so a late write of the old connection can land in reused ring space.
    OldLinkStaysOpen,
}

/// One simulation run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The seed: everything random is drawn from it.
    pub seed: u64,
    /// Fault steps before the final drain.
    pub steps: usize,
    /// A deliberate defect, if any.
    pub bug: Option<Bug>,
    /// Print every step to stderr.
    pub trace: bool,
}

impl Config {
    /// The standard run of a seed.
    pub fn seed(seed: u64) -> Config {
        Config {
            seed,
            steps: 600,
            bug: None,
            trace: false,
        }
    }
}

/// What a run did (for the totals the bin prints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries appended (returned an LSN).
    pub appended: u64,
    /// Appends refused with `RingFull` (back-pressure).
    pub ring_full: u64,
    /// Batches posted.
    pub batches: u64,
    /// WRITEs placed (duplicates included).
    pub placed: u64,
    /// WRITEs placed twice.
    pub duplicates: u64,
    /// Link cuts: port down with partial placement, silent loss, failback or migration.
    pub cuts: [u64; 3],
    /// New links (the writer resumes on each with `link_up`).
    pub links: u64,
    /// Late WRITEs of a cut link placed after the cut (packets already on the wire).
    pub late_writes: u64,
    /// Partner process crashes (then restarts from its checkpoint).
    pub partner_crashes: u64,
    /// Writer process crashes (then restarts with `MirrorWriter::recover`).
    pub writer_crashes: u64,
    /// Writer crashes in the middle of an append.
    pub torn_appends: u64,
    /// Entries applied by a partner process that died before persisting them (applied again after).
    pub reapplied: u64,
}

impl Report {
    /// Adds another run's counts to these totals.
    pub fn add(&mut self, r: &Report) {
        self.appended += r.appended;
        self.ring_full += r.ring_full;
        self.batches += r.batches;
        self.placed += r.placed;
        self.duplicates += r.duplicates;
        for (t, c) in self.cuts.iter_mut().zip(r.cuts) {
            *t += c;
        }
        self.links += r.links;
        self.late_writes += r.late_writes;
        self.partner_crashes += r.partner_crashes;
        self.writer_crashes += r.writer_crashes;
        self.torn_appends += r.torn_appends;
        self.reapplied += r.reapplied;
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed that breaks it.
    pub seed: u64,
    /// The step it broke at (`usize::MAX` for the final checks).
    pub step: usize,
    /// What broke.
    pub what: String,
    /// The deliberate defect of the run, if any.
    pub bug: Option<Bug>,
}

impl Bug {
    /// The bin's `--bug` value.
    pub fn flag(self) -> &'static str {
        match self {
            Bug::CorruptPlacement => "corrupt",
            Bug::LostWrite => "lost-write",
            Bug::AckBeforeCheckpoint => "ack-before-checkpoint",
            Bug::OldLinkStaysOpen => "old-link-open",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.step == usize::MAX {
            "the end".to_string()
        } else {
            format!("step {}", self.step)
        };
        let bug = self
            .bug
            .map_or(String::new(), |b| format!(" --bug {}", b.flag()));
        write!(
            f,
            "mirror seed {} at {at}: {} (replay: ccm-sim-mirror --seed {}{bug} --trace)",
            self.seed, self.what, self.seed
        )
    }
}

/// Run one seed with the standard configuration.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    run(Config::seed(seed))
}

/// Run one configuration.
pub fn run(cfg: Config) -> Result<Report, Failure> {
    let mut sim = Sim::new(cfg);
    for step in 0..cfg.steps {
        sim.step = step;
        sim.random_step();
        sim.check()?;
    }
    sim.step = usize::MAX;
    sim.drain()?;
    sim.final_check()?;
    Ok(sim.report)
}

#[derive(Clone, Copy, Debug)]
struct Op {
    seg: Segment,
    /// The batch's last WRITE (signalled: its completion is the batch's): the batch id.
    last: Option<u64>,
    /// That last WRITE carries the immediate (a notifying batch): it takes a receive on the partner.
    notify: bool,
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    pos: u64,
    lsn: Lsn,
    credits: u64,
}

#[derive(Debug, Default)]
struct Link {
    ops: VecDeque<Op>,
    completions: VecDeque<u64>,
    acks: VecDeque<Ack>,
    /// Receive completions (notifications) the partner has not handled yet.
    notifications: u64,
    /// Receives the partner has posted and that no notification consumed yet.
    receives: u64,
    /// Notification receives granted on this link, in total.
    granted: u64,
    /// The partner got its `Ready` for this link: it put its old connection's VI in the error state,
    /// handles notifications and acks. (The writer sends from the moment the link is up.)
    partner_ready: bool,
    /// The writer had the partner's first ack on this link.
    first_ack: bool,
    /// The applied position the partner's last ack on this link reported.
    acked_pos: u64,
}

/// A ring that takes only `budget` more bytes, then drops writes: a process killed while copying.
struct TornRing<'a> {
    ring: &'a mut Vec<u8>,
    budget: usize,
}

impl RingBytes for TornRing<'_> {
    fn capacity(&self) -> u64 {
        self.ring.len() as u64
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        let n = self.budget.min(data.len());
        self.ring.write_at(offset, &data[..n]);
        self.budget -= n;
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        self.ring.read_at(offset, buf)
    }
}

struct Sim {
    cfg: Config,
    rng: ChaCha8Rng,
    cap: u64,
    step: usize,
    local: Vec<u8>,
    wslots: [[u8; WriterCheckpoint::ENCODED_LEN]; 2],
    mirror: Vec<u8>,
    rslots: [[u8; Checkpoint::ENCODED_LEN]; 2],
    writer: Option<MirrorWriter>,
    partner: Option<MirrorReader>,
    link: Option<Link>,
    /// Payloads of every LSN the writer's engine got back from `append`, in order (index = LSN - 1).
    history: Vec<Vec<u8>>,
    /// Digest of `history`.
    digest: Digest,
    /// Highest LSN any writer incarnation reported durable.
    reported_durable: Lsn,
    /// Last LSN the partner's engine applied.
    applied: u64,
    violation: Option<String>,
    /// The payload of an append the writer was killed in (in the log only if it was copied whole).
    pending_torn: Option<Vec<u8>>,
    /// WRITEs of a cut link still on the wire: ring offset and the bytes they carry (read at the cut).
    /// They may land until the partner puts its old VI in the error state (its `Ready` on a new link).
    late: Vec<(u64, Vec<u8>)>,
    report: Report,
}

/// The partner's engine applying `lsn`: it must be the next one, with the payload appended.
fn check_apply(
    history: &[Vec<u8>],
    applied: &mut u64,
    violation: &mut Option<String>,
    lsn: Lsn,
    payload: &[u8],
) {
    if lsn.0 != *applied + 1 {
        violation.get_or_insert(format!(
            "partner applied LSN {} after {} (out of order or twice)",
            lsn.0, applied
        ));
    } else if history.get(lsn.0 as usize - 1).map(|p| p.as_slice()) != Some(payload) {
        violation.get_or_insert(format!(
            "partner applied LSN {} with a payload the writer never appended",
            lsn.0
        ));
    }
    *applied = lsn.0;
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let cap = 64 * rng.gen_range(16..256u64);
        let local = vec![0u8; cap as usize];
        let (writer, _) = MirrorWriter::recover(&local, None, 0).expect("a fresh ring");
        Sim {
            cfg,
            rng,
            cap,
            step: 0,
            local,
            wslots: [[0; WriterCheckpoint::ENCODED_LEN]; 2],
            mirror: vec![0u8; cap as usize],
            rslots: [[0; Checkpoint::ENCODED_LEN]; 2],
            writer: Some(writer),
            partner: Some(MirrorReader::new(cap).expect("valid capacity")),
            link: None,
            history: Vec::new(),
            digest: Digest::default(),
            reported_durable: Lsn(0),
            applied: 0,
            violation: None,
            pending_torn: None,
            late: Vec::new(),
            report: Report::default(),
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            eprintln!("[{:>4}] {}", self.step as i64, what());
        }
    }

    fn violate(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }

    fn random_step(&mut self) {
        match self.rng.gen_range(0..1130) {
            0..=199 => self.append_burst(),
            200..=339 => self.post(),
            340..=519 => self.place(),
            520..=639 => self.poll_completions(),
            640..=719 => self.partner_notified(),
            720..=759 => {
                let idle_passed = self.rng.gen_bool(0.25);
                self.partner_looks(idle_passed)
            }
            760..=879 => self.poll_acks(),
            880..=919 => self.link_up(),
            920..=934 => self.cut(),
            935..=939 => self.partner_crash(),
            940..=969 => self.partner_restart(),
            970..=974 => self.writer_crash(),
            975..=999 => self.writer_restart(),
            1000..=1119 => self.partner_ready(),
            _ => self.place_late(),
        }
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let len = if self.rng.gen_bool(0.9) {
            self.rng.gen_range(0..64.min(max))
        } else {
            self.rng.gen_range(0..=max)
        };
        (0..len).map(|_| self.rng.gen()).collect()
    }

    fn append_burst(&mut self) {
        let Some(max) = self.writer.as_ref().map(|w| w.max_entry()) else {
            return;
        };
        let n = self.rng.gen_range(1..=8);
        for _ in 0..n {
            let p = self.payload(max);
            let w = self.writer.as_mut().expect("checked");
            // Every other entry is given in three parts (`append_vectored`), cut without drawing from the
            // seed's random stream, so a seed replays as it did before parts existed.
            let appended = if self.history.len() % 2 == 1 {
                let (a, rest) = p.split_at(p.len() / 3);
                let (b, c) = rest.split_at(rest.len() / 2);
                w.append_vectored(&mut self.local, &[a, b, c])
            } else {
                w.append(&mut self.local, &p)
            };
            match appended {
                Ok(lsn) => {
                    if lsn.0 != self.history.len() as u64 + 1 {
                        self.violate(format!(
                            "append returned LSN {} after {}",
                            lsn.0,
                            self.history.len()
                        ));
                    }
                    self.digest = self.digest.add(lsn, &p);
                    self.history.push(p);
                    self.report.appended += 1;
                }
                Err(crate::mirror::MirrorError::RingFull { .. }) => {
                    self.report.ring_full += 1;
                    self.trace(|| "append: ring full (back-pressure)".into());
                    return;
                }
                Err(e) => {
                    self.violate(format!("append failed: {e}"));
                    return;
                }
            }
        }
        self.trace(|| format!("appended {n}, last LSN {}", self.history.len()));
    }

    fn post(&mut self) {
        let (Some(w), Some(link)) = (self.writer.as_mut(), self.link.as_mut()) else {
            return;
        };
        let mut n = 0;
        while let Some(b) = w.next_batch() {
            let segs = b.segments();
            for (k, seg) in segs.iter().enumerate() {
                let last = k + 1 == segs.len();
                if self.cfg.bug == Some(Bug::LostWrite) && !last && k == 0 {
                    continue;
                }
                link.ops.push_back(Op {
                    seg: *seg,
                    last: last.then_some(b.id),
                    notify: last && b.notify,
                });
            }
            n += 1;
            if self.rng.gen_bool(0.3) {
                break;
            }
        }
        self.report.batches += n;
        if n > 0 {
            self.trace(|| format!("posted {n} batches"));
        }
    }

    /// Place one WRITE: the writer's ring bytes, now, into the partner's ring at the same offset.
    fn place_one(&mut self, op: Op, torn: Option<u64>) {
        let (o, len) = (op.seg.offset as usize, torn.unwrap_or(op.seg.len) as usize);
        self.mirror[o..o + len].copy_from_slice(&self.local[o..o + len]);
        if self.cfg.bug == Some(Bug::CorruptPlacement) && len > 0 && self.rng.gen_bool(0.05) {
            let at = o + self.rng.gen_range(0..len);
            self.mirror[at] ^= 0x20;
        }
        self.report.placed += 1;
        if torn.is_some() {
            return;
        }
        if let Some(id) = op.last {
            let link = self.link.as_mut().expect("placing on a link");
            if op.notify {
                if link.receives == 0 {
                    self.violate("a notification arrived with no receive posted (RNR)".into());
                    return;
                }
                link.receives -= 1;
                link.notifications += 1;
            }
            link.completions.push_back(id);
        }
    }

    fn place(&mut self) {
        let n = self.rng.gen_range(1..=6);
        for _ in 0..n {
            let Some(link) = self.link.as_mut() else {
                return;
            };
            let Some(op) = link.ops.front().copied() else {
                return;
            };
            // An RC retransmission may place a WRITE again before its completion.
            if self.rng.gen_bool(0.1) {
                self.report.duplicates += 1;
                self.place_one(
                    Op {
                        last: None,
                        notify: false,
                        ..op
                    },
                    None,
                );
            }
            self.link.as_mut().expect("still up").ops.pop_front();
            self.place_one(op, None);
        }
        self.trace(|| format!("placed up to {n} WRITEs"));
    }

    fn poll_completions(&mut self) {
        let n = self.rng.gen_range(1..=4);
        for _ in 0..n {
            let Some(id) = self.link.as_mut().and_then(|l| l.completions.pop_front()) else {
                return;
            };
            self.completion(id);
        }
    }

    fn completion(&mut self, id: u64) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        match w.batch_completed(id) {
            Ok(d) => {
                if w.checkpoint_due() {
                    // As the client: a completed resend may free space the last checkpoint holds.
                    let c = w.checkpoint();
                    persist_writer(&mut self.wslots, c, None);
                    w.checkpoint_persisted(&c);
                }
                self.reported_durable = self.reported_durable.max(d);
                self.trace(|| format!("batch {id} completed: durable {}", d.0));
            }
            Err(e) => self.violate(format!("batch completion: {e}")),
        }
    }

    /// The partner handles its notifications: repost the receives, scan, persist, ack.
    fn partner_notified(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if !link.partner_ready || link.notifications == 0 {
            return;
        }
        let n = link.notifications;
        link.notifications = 0;
        link.receives += n;
        link.granted += n;
        self.scan_and_ack();
    }

    /// The partner scans without a notification (the client's quiet scan after an idle sleep): it acks
    /// only once it applied an eighth of the ring since its last ack, or anything since an ack at least
    /// an idle sleep old (`idle_passed`: a coin here, always in the final drain).
    fn partner_looks(&mut self, idle_passed: bool) {
        if self.link.as_ref().is_some_and(|l| l.partner_ready) {
            self.scan(Some(idle_passed));
        }
    }

    fn scan_and_ack(&mut self) {
        self.scan(None);
    }

    /// `quiet`: None for a scan on a notification or `Ready` (it always acks), else whether an idle sleep
    /// passed since the last ack.
    fn scan(&mut self, quiet: Option<bool>) {
        let Some(r) = self.partner.as_mut() else {
            return;
        };
        let (history, applied, violation) = (&self.history, &mut self.applied, &mut self.violation);
        let s = match r.scan(&self.mirror, |l, p| {
            check_apply(history, applied, violation, l, p)
        }) {
            Ok(s) => s,
            Err(e) => return self.violate(format!("partner scan: {e}")),
        };
        if self.cfg.bug != Some(Bug::AckBeforeCheckpoint) {
            let c = r.checkpoint();
            persist_reader(&mut self.rslots, c, None);
        }
        let eighth = self.mirror.len() as u64 / 8;
        if let Some(link) = self.link.as_mut() {
            let unacked = s.applied_pos.saturating_sub(link.acked_pos);
            let ack = match quiet {
                None => true,
                Some(idle_passed) => unacked >= eighth || (unacked > 0 && idle_passed),
            };
            if ack {
                link.acked_pos = s.applied_pos;
                link.acks.push_back(Ack {
                    pos: s.applied_pos,
                    lsn: s.applied_lsn,
                    credits: link.granted,
                });
            }
        }
        self.trace(|| {
            format!(
                "partner applied {} entries, up to {}{}",
                s.entries,
                s.applied_lsn.0,
                if quiet.is_some() { " (looked)" } else { "" }
            )
        });
    }

    fn poll_acks(&mut self) {
        let n = self.rng.gen_range(1..=3);
        for _ in 0..n {
            let Some(a) = self.link.as_mut().and_then(|l| l.acks.pop_front()) else {
                return;
            };
            self.writer_ack(a);
        }
    }

    /// The writer gets the partner's ack: it frees ring space; then the writer persists its checkpoint.
    fn writer_ack(&mut self, a: Ack) {
        let (Some(w), Some(link)) = (self.writer.as_mut(), self.link.as_mut()) else {
            return;
        };
        if let Err(e) = w.applied(a.pos, a.lsn, a.credits) {
            return self.violate(format!("writer refused the partner's ack {a:?}: {e}"));
        }
        if !link.first_ack {
            // Sent after the partner left every earlier link.
            link.first_ack = true;
            w.old_links_closed();
        }
        let c = w.checkpoint();
        persist_writer(&mut self.wslots, c, None);
        w.checkpoint_persisted(&c);
        self.reported_durable = self.reported_durable.max(w.durable_lsn());
        self.trace(|| format!("writer got ack {} (pos {})", a.lsn.0, a.pos));
    }

    fn link_up(&mut self) {
        if self.link.is_some() || self.writer.is_none() || self.partner.is_none() {
            return;
        }
        // The window every reader grants a new connection (the client's `NOTIFY_WINDOW`).
        let window = self.rng.gen_range(1..=8);
        self.link = Some(Link {
            receives: window,
            granted: window,
            ..Link::default()
        });
        // On its Ready the writer resumes at once, from what it knows the partner holds.
        self.writer.as_mut().expect("checked").link_up(window);
        self.report.links += 1;
        self.trace(|| format!("new link, {window} receives; the writer resumes"));
    }

    /// The partner gets its Ready on the new link (maybe long after the writer): it leaves its old
    /// connection (its VI goes to the error state: late writes of the old link no longer land), then tells
    /// the writer where it stands.
    fn partner_ready(&mut self) {
        if self.link.as_ref().is_none_or(|l| l.partner_ready) || self.partner.is_none() {
            return;
        }
        if self.cfg.bug != Some(Bug::OldLinkStaysOpen) {
            self.late.clear();
        }
        self.link.as_mut().expect("checked").partner_ready = true;
        self.trace(|| "partner ready on the new link".into());
        self.scan_and_ack();
    }

    /// A late WRITE of a cut link lands, while the partner's old VI still takes writes.
    fn place_late(&mut self) {
        let old_open = self.cfg.bug == Some(Bug::OldLinkStaysOpen)
            || !self.link.as_ref().is_some_and(|l| l.partner_ready);
        if self.late.is_empty() || !old_open {
            return;
        }
        let (offset, bytes) = self.late.remove(self.rng.gen_range(0..self.late.len()));
        let o = offset as usize;
        self.mirror[o..o + bytes.len()].copy_from_slice(&bytes);
        self.report.late_writes += 1;
        self.trace(|| format!("a late write of the old link landed at {offset}"));
    }

    /// The link dies: a prefix of what was in flight still happens, the rest is lost.
    fn cut(&mut self) {
        if self.link.is_none() {
            return;
        }
        let kind = self.rng.gen_range(0..3);
        self.report.cuts[kind] += 1;
        self.trace(|| {
            format!(
                "link cut ({})",
                ["port down", "silent loss", "failback"][kind]
            )
        });
        self.tear_down(kind);
    }

    fn tear_down(&mut self, kind: usize) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let ops: Vec<Op> = link.ops.drain(..).collect();
        match kind {
            0 => {
                // Port down: the WRITEs before the failure are placed, the one it hits maybe in part;
                // some after it may still be on the wire, carrying the ring's bytes of now.
                let k = self.rng.gen_range(0..=ops.len());
                for op in &ops[..k] {
                    self.place_one(*op, None);
                }
                if let Some(op) = ops.get(k) {
                    if self.rng.gen_bool(0.5) {
                        let cut = self.rng.gen_range(0..=op.seg.len);
                        self.place_one(*op, Some(cut));
                    }
                }
                for op in ops.iter().skip(k) {
                    if self.rng.gen_bool(0.5) {
                        let (o, len) = (op.seg.offset as usize, op.seg.len as usize);
                        self.late
                            .push((op.seg.offset, self.local[o..o + len].to_vec()));
                    }
                }
                // Completions and acks already generated may still be polled before the error.
                let link = self.link.as_mut().expect("still there");
                let c = self.rng.gen_range(0..=link.completions.len());
                let a = self.rng.gen_range(0..=link.acks.len());
                let comps: Vec<u64> = link.completions.drain(..).take(c).collect();
                let acks: Vec<Ack> = link.acks.drain(..).take(a).collect();
                for id in comps {
                    self.completion(id);
                }
                for ack in acks {
                    self.writer_ack(ack);
                }
                if self.rng.gen_bool(0.5) {
                    self.partner_notified();
                }
            }
            1 => {}
            _ => {
                // A graceful move: everything posted is placed, the completions are not seen.
                for op in &ops {
                    self.place_one(*op, None);
                }
            }
        }
        self.link = None;
    }

    fn partner_crash(&mut self) {
        if self.partner.is_none() {
            return;
        }
        let kind = self.rng.gen_range(0..3);
        self.tear_down(if kind == 2 { 1 } else { 0 });
        if kind == 2 {
            // Killed after applying, before persisting its checkpoint.
            let r = self.partner.as_mut().expect("checked");
            let (history, applied, violation) =
                (&self.history, &mut self.applied, &mut self.violation);
            let _ = r.scan(&self.mirror, |l, p| {
                check_apply(history, applied, violation, l, p)
            });
        }
        // Its VIs died with it: nothing of the old link lands any more.
        self.late.clear();
        self.partner = None;
        let persisted = newest_reader(&self.rslots).unwrap_or_default();
        self.report.reapplied += self.applied.saturating_sub(persisted.lsn.0);
        // The dead process's effects after its checkpoint are gone with it.
        self.applied = persisted.lsn.0;
        self.report.partner_crashes += 1;
        self.trace(|| format!("partner crashed; checkpoint at LSN {}", persisted.lsn.0));
    }

    fn partner_restart(&mut self) {
        if self.partner.is_some() {
            return;
        }
        let from = newest_reader(&self.rslots).unwrap_or_default();
        let mut r = match MirrorReader::resume(self.cap, from) {
            Ok(r) => r,
            Err(e) => return self.violate(format!("partner resume: {e}")),
        };
        let (history, applied, violation) = (&self.history, &mut self.applied, &mut self.violation);
        match r.scan(&self.mirror, |l, p| {
            check_apply(history, applied, violation, l, p)
        }) {
            Ok(s) => self.trace(|| {
                format!(
                    "partner restarted at {}, recovered {}",
                    from.lsn.0, s.entries
                )
            }),
            Err(e) => return self.violate(format!("partner recover: {e}")),
        }
        persist_reader(&mut self.rslots, r.checkpoint(), None);
        self.partner = Some(r);
    }

    fn writer_crash(&mut self) {
        if self.writer.is_none() {
            return;
        }
        let kind = self.rng.gen_range(0..2);
        self.tear_down(kind);
        match self.rng.gen_range(0..4) {
            0 => {
                // Killed in the middle of an append: part of it is in the ring, its LSN was never returned.
                let max = self.writer.as_ref().expect("checked").max_entry();
                let p = self.payload(max);
                let budget = self.rng.gen_range(0..=p.len() + 64);
                let w = self.writer.as_mut().expect("checked");
                let mut torn = TornRing {
                    ring: &mut self.local,
                    budget,
                };
                if w.append(&mut torn, &p).is_ok() {
                    self.report.torn_appends += 1;
                    self.pending_torn = Some(p);
                }
            }
            1 => {
                // Killed while persisting a checkpoint: that slot is torn.
                let w = self.writer.as_ref().expect("checked");
                let cut = self.rng.gen_range(0..WriterCheckpoint::ENCODED_LEN);
                persist_writer(&mut self.wslots, w.checkpoint(), Some(cut));
            }
            _ => {}
        }
        self.writer = None;
        self.report.writer_crashes += 1;
        self.trace(|| "writer crashed".into());
    }

    fn writer_restart(&mut self) {
        if self.writer.is_some() {
            return;
        }
        let from = WriterCheckpoint::newest([&self.wslots[0], &self.wslots[1]]);
        let (w, found) = match MirrorWriter::recover(&self.local, from, 0) {
            Ok(x) => x,
            Err(e) => return self.violate(format!("writer recover: {e}")),
        };
        let torn = self.pending_torn.take();
        let returned = self.history.len() as u64;
        if let Some(p) = torn {
            // The entry of an append killed mid-copy is in the log only if it was whole.
            if w.last_lsn().0 == returned + 1 {
                self.digest = self.digest.add(w.last_lsn(), &p);
                self.history.push(p);
            }
        }
        if w.last_lsn().0 != self.history.len() as u64 {
            return self.violate(format!(
                "restarted writer continues after LSN {}, the engine was returned {}",
                w.last_lsn().0,
                returned
            ));
        }
        if w.digest() != self.digest {
            return self.violate("restarted writer's digest differs from the log's".into());
        }
        self.trace(|| {
            format!(
                "writer restarted at LSN {} ({found} after its checkpoint)",
                w.last_lsn().0
            )
        });
        self.writer = Some(w);
    }

    fn check(&mut self) -> Result<(), Failure> {
        self.check_durable_in_partner();
        self.check_no_overwrite();
        match self.violation.take() {
            Some(what) => Err(Failure {
                seed: self.cfg.seed,
                step: self.step,
                what,
                bug: self.cfg.bug,
            }),
            None => Ok(()),
        }
    }

    /// Invariant 2: everything reported durable is in the partner's memory, intact.
    fn check_durable_in_partner(&mut self) {
        let from = match &self.partner {
            Some(r) => r.checkpoint(),
            None => newest_reader(&self.rslots).unwrap_or_default(),
        };
        let mut walker = MirrorReader::resume(self.cap, from).expect("valid capacity");
        let mut bad = None;
        let history = &self.history;
        let s = walker
            .scan(&self.mirror, |l, p| {
                if history.get(l.0 as usize - 1).map(|h| h.as_slice()) != Some(p) {
                    bad.get_or_insert(l);
                }
            })
            .expect("same capacity");
        if let Some(l) = bad {
            self.violate(format!(
                "the partner's ring holds LSN {} with a wrong payload",
                l.0
            ));
        }
        if s.applied_lsn < self.reported_durable {
            self.violate(format!(
                "LSN {} was reported durable but the partner's memory holds entries only up to {}",
                self.reported_durable.0, s.applied_lsn.0
            ));
        }
    }

    /// Invariant 3: the writer's ring is reused only behind the partner's persisted position.
    fn check_no_overwrite(&mut self) {
        let Some(w) = &self.writer else { return };
        let persisted = newest_reader(&self.rslots).unwrap_or_default();
        if w.head_pos() > persisted.pos + self.cap {
            self.violate(format!(
                "writer at position {} overwrote entries the partner persisted only up to {}",
                w.head_pos(),
                persisted.pos
            ));
        }
    }

    /// No more faults: restart what is down, bring a link up and run until everything is applied.
    fn drain(&mut self) -> Result<(), Failure> {
        self.writer_restart();
        self.partner_restart();
        self.link_up();
        self.partner_ready();
        for _ in 0..100_000 {
            while !self.late.is_empty() {
                self.place_late();
            }
            let done = {
                let w = self.writer.as_ref().expect("restarted");
                let l = self.link.as_ref().expect("up");
                let r = self.partner.as_ref().expect("restarted");
                l.partner_ready
                    // The partner reported all it applied (a quiet scan acks that once an idle sleep passed).
                    && l.acked_pos == r.applied_pos()
                    && w.durable_lsn() == w.last_lsn()
                    && self.applied == w.last_lsn().0
                    && l.ops.is_empty()
                    && l.acks.is_empty()
                    && l.completions.is_empty()
                    && w.in_flight() == 0
                    && l.notifications == 0
            };
            if done {
                return self.check();
            }
            self.post();
            while self.link.as_ref().is_some_and(|l| !l.ops.is_empty()) {
                let op = self
                    .link
                    .as_mut()
                    .expect("up")
                    .ops
                    .pop_front()
                    .expect("non-empty");
                self.place_one(op, None);
            }
            while let Some(id) = self.link.as_mut().and_then(|l| l.completions.pop_front()) {
                self.completion(id);
            }
            self.partner_notified();
            self.partner_looks(true);
            while let Some(a) = self.link.as_mut().and_then(|l| l.acks.pop_front()) {
                self.writer_ack(a);
            }
            self.check()?;
        }
        Err(Failure {
            seed: self.cfg.seed,
            step: self.step,
            what: "the mirror did not drain".into(),
            bug: self.cfg.bug,
        })
    }

    fn final_check(&mut self) -> Result<(), Failure> {
        let fail = |what: String| Failure {
            seed: self.cfg.seed,
            step: usize::MAX,
            what,
            bug: self.cfg.bug,
        };
        let w = self.writer.as_ref().expect("up");
        let r = self.partner.as_ref().expect("up");
        if self.applied != self.history.len() as u64 || r.applied_lsn() != w.last_lsn() {
            return Err(fail(format!(
                "partner applied {} of {} entries",
                self.applied,
                self.history.len()
            )));
        }
        if self.reported_durable.0 > self.applied {
            return Err(fail("more reported durable than applied".into()));
        }
        if r.digest() != w.digest() || w.digest() != self.digest {
            return Err(fail("digests differ".into()));
        }
        // Liveness: with everything applied and acknowledged the whole ring is free again (nothing keeps
        // space the writer could never get back, which would stall it at back-pressure forever).
        if w.free() != self.cap {
            return Err(fail(format!(
                "the drained writer gets only {} of {} ring bytes back: {w:?}",
                w.free(),
                self.cap
            )));
        }
        let c = compare_rings(&self.local, &self.mirror).map_err(|e| fail(e.to_string()))?;
        if w.last_lsn() > Lsn(0) && c.lsn_range.map(|r| r.1) != Some(w.last_lsn()) {
            return Err(fail(format!(
                "the log's live run does not end at its last LSN: {c:?}"
            )));
        }
        if !c.is_clean() {
            if self.cfg.trace {
                let mut buf = vec![0u8; self.cap as usize];
                for o in (0..self.cap).step_by(64) {
                    if let Some(e) = crate::mirror::read_entry(&self.local, o, &mut buf) {
                        eprintln!("local ring at offset {o}: {e:?}");
                    }
                }
                eprintln!("capacity {}, writer head {}", self.cap, w.head_pos());
            }
            return Err(fail(format!("rings differ: {c:?}")));
        }
        Ok(())
    }
}

fn newest_reader(slots: &[[u8; Checkpoint::ENCODED_LEN]; 2]) -> Option<Checkpoint> {
    slots
        .iter()
        .filter_map(Checkpoint::decode)
        .max_by_key(|c| c.pos)
}

/// Write `c` into the slot not holding the newest checkpoint (only its first `torn` bytes, if given).
fn persist_reader(
    slots: &mut [[u8; Checkpoint::ENCODED_LEN]; 2],
    c: Checkpoint,
    torn: Option<usize>,
) {
    let newest = newest_reader(slots);
    let i = usize::from(
        Checkpoint::decode(&slots[0]).is_some() && Checkpoint::decode(&slots[0]) == newest,
    );
    let b = c.encode();
    let n = torn.unwrap_or(b.len());
    slots[i][..n].copy_from_slice(&b[..n]);
}

fn persist_writer(
    slots: &mut [[u8; WriterCheckpoint::ENCODED_LEN]; 2],
    c: WriterCheckpoint,
    torn: Option<usize>,
) {
    let newest = WriterCheckpoint::newest([&slots[0], &slots[1]]);
    let i = usize::from(newest.is_some() && WriterCheckpoint::decode(&slots[0]) == newest);
    let b = c.encode();
    let n = torn.unwrap_or(b.len());
    slots[i][..n].copy_from_slice(&b[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_seeds_pass_and_replay_identically() {
        for seed in 0..20 {
            let a = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
            let b = run_seed(seed).unwrap();
            assert_eq!(a, b);
        }
    }

    /// The faults happen: over a few seeds every kind of fault is drawn.
    #[test]
    fn the_faults_are_exercised() {
        let mut t = Report::default();
        for seed in 0..60 {
            t.add(&run_seed(seed).unwrap_or_else(|f| panic!("{f}")));
        }
        assert!(t.ring_full > 0 && t.duplicates > 0, "{t:?}");
        assert!(t.cuts.iter().all(|&c| c > 0), "{t:?}");
        assert!(t.partner_crashes > 0 && t.writer_crashes > 0, "{t:?}");
        assert!(t.torn_appends > 0 && t.reapplied > 0, "{t:?}");
        assert!(t.late_writes > 0, "{t:?}");
        assert!(
            t.appended > 10_000 && t.batches > 300 && t.links > 100,
            "{t:?}"
        );
    }

    fn caught(bug: Bug) -> Failure {
        (0..200)
            .find_map(|seed| {
                run(Config {
                    bug: Some(bug),
                    ..Config::seed(seed)
                })
                .err()
            })
            .unwrap_or_else(|| panic!("{bug:?} was never caught"))
    }

    #[test]
    fn a_corrupted_byte_is_caught() {
        let f = caught(Bug::CorruptPlacement);
        assert!(
            f.what.contains("reported durable") || f.what.contains("wrong payload"),
            "{f}"
        );
    }

    #[test]
    fn a_lost_write_is_caught() {
        let f = caught(Bug::LostWrite);
        assert!(f.what.contains("reported durable"), "{f}");
    }

    /// Why the writer may resume on a new link before the partner's first ack: the partner acks there
    /// only after its old VI stopped taking writes. Without that, a late write lands in reused space.
    #[test]
    fn an_old_link_left_open_is_caught() {
        let f = caught(Bug::OldLinkStaysOpen);
        assert!(
            f.what.contains("wrong payload")
                || f.what.contains("reported durable")
                || f.what.contains("rings differ")
                || f.what.contains("applied"),
            "{f}"
        );
    }

    #[test]
    fn an_ack_before_the_checkpoint_is_caught() {
        let f = caught(Bug::AckBeforeCheckpoint);
        assert!(f.what.contains("overwrote"), "{f}");
    }
}
