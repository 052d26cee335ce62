//! Receive-credit flow control, so that a sender never sends a message the peer has no
//! receive descriptor for (no RNR NAKs, no RNR storms).
//!
//! # Protocol
//! A message that consumes a receive descriptor at the peer (SEND, RDMA WRITE with immediate
//! data) needs one credit. Plain RDMA WRITE and RDMA READ need none.
//!
//! Credits are cumulative counters (wrapping u32):
//! - the receiver counts the receives it has posted (`posted`) and the total it has told the
//!   peer (`advertised`); the first grant is the `credits` field of its [`crate::ViAddress`]
//!   (receives posted before the address was taken);
//! - it tells the peer a new total by an inline **RDMA WRITE** of one 8-byte word into the
//!   peer VI's *credit mailbox* (address and rkey in the peer's [`crate::ViAddress`]). The
//!   write consumes no receive and needs no credit, so credit updates can never deadlock,
//!   never ping-pong, and leave the owner's 32-bit immediate data untouched;
//! - the sender's credits are `granted - consumed`; it reads its mailbox only when it runs
//!   out.
//!
//! The receiver writes an update when it has unadvertised receives and either they reach
//! the threshold (batching) or the peer is low (`advertised - received <= threshold`: the
//! peer may be about to block). A blocked sender is thus unblocked by the next receive the
//! peer posts.
//!
//! The mailbox word is `total | !total << 32` ([`encode_mailbox`]): a torn or stale
//! (all-zero) read does not decode and is retried or ignored.

/// Encodes a credit total for the mailbox.
pub fn encode_mailbox(total: u32) -> u64 {
    total as u64 | ((!total as u64) << 32)
}

/// Decodes a mailbox word; `None` for zero (nothing written) or a torn word.
pub fn decode_mailbox(word: u64) -> Option<u32> {
    let total = word as u32;
    ((word >> 32) as u32 == !total).then_some(total)
}

/// Credit state of one connected VI, both directions (pure: no device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    // Sending side.
    granted: u32,
    consumed: u32,
    // Receiving side.
    posted: u32,
    advertised: u32,
    received: u32,
    threshold: u32,
}

/// `a - b` as a signed distance on wrapping counters.
fn ahead(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Credits {
    /// State at connect: the peer granted `from_peer` (its address), this side advertised
    /// `advertised` (its address) and has `posted` receives on the QP (>= advertised).
    /// `threshold` is the batch size of updates (>= 1).
    pub fn new(from_peer: u32, advertised: u32, posted: u32, threshold: u32) -> Credits {
        Credits {
            granted: from_peer,
            consumed: 0,
            posted,
            advertised,
            received: 0,
            threshold: threshold.max(1),
        }
    }
    /// Credits available to send with.
    pub fn available(&self) -> u32 {
        self.granted.wrapping_sub(self.consumed)
    }
    /// True if a message that consumes a peer receive may be sent.
    pub fn can_send(&self) -> bool {
        self.available() > 0
    }
    /// Accounts such a message sent.
    pub fn on_sent(&mut self) {
        self.consumed = self.consumed.wrapping_add(1);
    }
    /// A mailbox total read from the peer's updates (older or equal totals are ignored).
    pub fn on_mailbox(&mut self, total: u32) {
        if ahead(total, self.granted) {
            self.granted = total;
        }
    }
    /// Receives posted and not yet advertised.
    pub fn unadvertised(&self) -> u32 {
        self.posted.wrapping_sub(self.advertised)
    }
    /// Credits the peer holds as far as this side knows (advertised minus received).
    pub fn peer_view(&self) -> u32 {
        self.advertised.wrapping_sub(self.received)
    }
    /// Accounts a message received that consumed one of this side's receives.
    pub fn on_receive(&mut self) {
        self.received = self.received.wrapping_add(1);
    }
    /// Accounts a receive posted while connected.
    pub fn on_repost(&mut self) {
        self.posted = self.posted.wrapping_add(1);
    }
    /// True if an update should be written to the peer now.
    pub fn update_due(&self) -> bool {
        let u = self.unadvertised();
        u > 0 && (u >= self.threshold || self.peer_view() <= self.threshold)
    }
    /// Accounts an update written; returns the total to write.
    pub fn on_update_sent(&mut self) -> u32 {
        self.advertised = self.posted;
        self.posted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_word() {
        for t in [0u32, 1, 64, u32::MAX] {
            assert_eq!(decode_mailbox(encode_mailbox(t)), Some(t));
        }
        assert_eq!(decode_mailbox(0), None, "nothing written yet");
        // A torn word (half of an old value, half of a new one) does not decode.
        let torn = (encode_mailbox(5) & 0xffff_ffff) | (encode_mailbox(6) & !0xffff_ffff);
        assert_eq!(decode_mailbox(torn), None);
    }

    #[test]
    fn sender_accounting() {
        let mut c = Credits::new(2, 4, 4, 2);
        assert_eq!(c.available(), 2);
        c.on_sent();
        c.on_sent();
        assert!(!c.can_send());
        c.on_mailbox(1); // stale
        assert_eq!(c.available(), 0);
        c.on_mailbox(5);
        assert_eq!(c.available(), 3);
        c.on_mailbox(4); // reordered older total
        assert_eq!(c.available(), 3);
    }

    #[test]
    fn wrapping_counters() {
        let mut c = Credits::new(u32::MAX, 0, 0, 1);
        c.consumed = u32::MAX - 1;
        assert_eq!(c.available(), 1);
        c.on_mailbox(2); // wrapped past zero: newer
        assert_eq!(c.available(), 4);
    }

    #[test]
    fn receiver_update_rules() {
        // Batching: 8 advertised, peer holds plenty; an update every 4 reposts.
        let mut c = Credits::new(0, 8, 8, 4);
        assert!(!c.update_due());
        c.on_receive();
        c.on_repost();
        assert!(!c.update_due(), "peer still holds 7");
        for _ in 0..3 {
            c.on_receive();
            c.on_repost();
        }
        assert_eq!(c.unadvertised(), 4);
        assert!(c.update_due());
        assert_eq!(c.on_update_sent(), 12);
        assert_eq!(c.peer_view(), 8);
        // Peer low: every repost is told at once.
        let mut c = Credits::new(0, 2, 2, 4);
        c.on_receive();
        c.on_receive();
        c.on_repost();
        assert!(c.update_due());
        assert_eq!(c.on_update_sent(), 3);
        assert!(!c.update_due());
    }

    /// Two sides with random owners over a wire that reorders nothing but delays freely:
    /// a message is delivered only if a receive is posted (else RNR: failure); updates are
    /// bounded by reposts; every wanted message is sent as long as the owners repost.
    #[test]
    fn simulation_no_rnr_live_bounded() {
        #[derive(Default, Clone, Copy)]
        struct Side {
            posted: u32,
            held: u32,
            to_send: u32,
            sent: u32,
            updates: u32,
            mailbox: u32,
        }
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for run in 0..500 {
            let depth = 1 + rnd(16) as u32;
            let thr = 1 + rnd(depth as u64) as u32;
            let pre = [1 + rnd(depth as u64) as u32, 1 + rnd(depth as u64) as u32];
            let mut s = [Side::default(); 2];
            let mut c = [
                Credits::new(pre[1], pre[0], depth, thr),
                Credits::new(pre[0], pre[1], depth, thr),
            ];
            for side in &mut s {
                side.posted = depth;
                side.to_send = 50 + rnd(200) as u32;
            }
            // Messages and mailbox writes in flight, per direction, in order.
            #[derive(Clone, Copy, Debug)]
            enum Msg {
                Data,
                Update(u32),
            }
            let mut wire: [std::collections::VecDeque<Msg>; 2] = Default::default();
            let mut reposts = 0u64;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 200_000, "run {run}: no progress {c:?} {:?}", wire);
                if s.iter().all(|x| x.sent == x.to_send) && wire.iter().all(|w| w.is_empty()) {
                    break;
                }
                let i = rnd(2) as usize;
                let j = 1 - i;
                match rnd(4) {
                    0 if s[i].sent < s[i].to_send => {
                        if !c[i].can_send() {
                            c[i].on_mailbox(s[i].mailbox);
                        }
                        if c[i].can_send() {
                            c[i].on_sent();
                            wire[i].push_back(Msg::Data);
                            s[i].sent += 1;
                        }
                    }
                    1 => match wire[i].pop_front() {
                        Some(Msg::Data) => {
                            assert!(s[j].posted > 0, "run {run}: RNR");
                            s[j].posted -= 1;
                            s[j].held += 1;
                            c[j].on_receive();
                        }
                        Some(Msg::Update(t)) => s[j].mailbox = t,
                        None => {}
                    },
                    2 => {
                        let k = if s[i].held > 0 {
                            1 + rnd(s[i].held as u64) as u32
                        } else {
                            0
                        };
                        for _ in 0..k {
                            s[i].held -= 1;
                            s[i].posted += 1;
                            c[i].on_repost();
                            reposts += 1;
                        }
                    }
                    _ => {}
                }
                for k in 0..2 {
                    if c[k].update_due() {
                        wire[k].push_back(Msg::Update(c[k].on_update_sent()));
                        s[k].updates += 1;
                    }
                    // No RNR possible: everything side k ever granted and has not yet received
                    // (held by the peer, in its mailbox, or in flight) fits its posted receives.
                    assert!(
                        c[k].peer_view() <= s[k].posted,
                        "run {run}: side {k} granted {} beyond its {} posted receives",
                        c[k].peer_view(),
                        s[k].posted
                    );
                }
            }
            let updates = (s[0].updates + s[1].updates) as u64;
            assert!(
                updates <= reposts,
                "run {run}: {updates} updates for {reposts} reposts"
            );
        }
    }
}
