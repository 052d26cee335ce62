//! The manager's behaviour, pinned with two managers wired back to back (a perfect network unless a
//! test cuts an interconnect). Each test reads as the behaviour it guarantees.

use std::collections::VecDeque;
use std::time::Duration;

use ccm_core::manager::{
    Action, ClientEvent, ClientRequest, ClientSpec, ClientStatus, Config, HandshakeError, Input,
    LinkStatus, Manager, PartnerStatus, SessionId, Step, ViRef, PROTOCOL_VERSION,
};
use ccm_core::wire::{
    AuthChallenge, AuthResponse, BandwidthClass, ClientId, ClientLoad, ClusterId, DecodeError,
    ErrorCode, Generation, Heartbeat, Hello, InterconnectId, MemoryWindow, Message, Mtu, NodeId,
    PeerInfo, ViAddress,
};
use ccm_core::Time;

const MS: u64 = 1_000_000;

fn vi(ic: u8, qpn: u32) -> ViAddress {
    ViAddress {
        interconnect: InterconnectId(ic),
        qpn,
        gid: [ic; 16],
        psn: qpn,
        mtu: Mtu::M1024,
    }
}

/// Two managers and an ideal network: messages arrive 10 µs later, in order.
struct Pair {
    m: [Manager; 2],
    now: Time,
    queue: VecDeque<(Time, usize, Input)>,
    listening: Vec<[bool; 2]>,
    cut: Vec<bool>,
    next_qpn: u32,
    told: [Vec<(ClientId, ClientEvent)>; 2],
    refused: [Vec<(InterconnectId, HandshakeError)>; 2],
    steps: [Vec<(Time, Step)>; 2],
    /// Messages each node sent, with their time.
    sent: [Vec<(Time, Message)>; 2],
    sid: u64,
    /// [`Pair::hold`]: (node, interconnect) whose session inputs wait in `held`.
    holding: Option<(usize, u8)>,
    held: Vec<(usize, Input)>,
}

impl Pair {
    fn new(a: Config, b: Config) -> Pair {
        Pair::new_with(a, b, true)
    }

    /// `follower_started: false` models a follower process that is not running yet.
    fn new_with(a: Config, b: Config, follower_started: bool) -> Pair {
        Pair::new_reporting(a, b, follower_started, None)
    }

    /// Interconnect `ic`'s device is not open yet on either node: its port is not reported at start.
    fn new_unreported(ic: u8, a: Config, b: Config) -> Pair {
        Pair::new_reporting(a, b, true, Some(ic))
    }

    fn new_reporting(a: Config, b: Config, follower_started: bool, unreported: Option<u8>) -> Pair {
        let n = a.interconnects as usize;
        let mut p = Pair {
            m: [
                Manager::new(a, Time::ZERO, [1; 32]),
                Manager::new(b, Time::ZERO, [2; 32]),
            ],
            now: Time::ZERO,
            queue: VecDeque::new(),
            listening: vec![[false; 2]; n],
            cut: vec![false; n],
            next_qpn: 1,
            told: [Vec::new(), Vec::new()],
            refused: [Vec::new(), Vec::new()],
            steps: [Vec::new(), Vec::new()],
            sent: [Vec::new(), Vec::new()],
            sid: 0,
            holding: None,
            held: Vec::new(),
        };
        // Both nodes opened their devices at start: a node reports each port as its device opens.
        for m in &mut p.m {
            for ic in (0..n as u8).filter(|ic| Some(*ic) != unreported) {
                m.handle(
                    Time::ZERO,
                    Input::PortState {
                        ic: InterconnectId(ic),
                        up: true,
                    },
                );
            }
        }
        // The follower listens before the placer's first connect is carried out.
        p.drain(1);
        if !follower_started {
            p.listening.iter_mut().for_each(|l| l[1] = false);
        }
        p.drain(0);
        p
    }

    fn config(node: u64, partner: u64, ics: u8) -> Config {
        Config::new(
            NodeId(node),
            NodeId(partner),
            ClusterId(7),
            b"secret".to_vec(),
            ics,
        )
    }

    fn standard(ics: u8) -> Pair {
        Pair::new(Pair::config(1, 2, ics), Pair::config(2, 1, ics))
    }

    fn later(&mut self, to: usize, input: Input) {
        let ic = match &input {
            Input::SessionEstablished { ic, .. }
            | Input::SessionClosed { ic, .. }
            | Input::Message { ic, .. } => Some(ic.0),
            _ => None,
        };
        if self.holding.is_some_and(|(n, i)| n == to && Some(i) == ic) {
            self.held.push((to, input));
            return;
        }
        self.queue
            .push_back((self.now + Duration::from_micros(10), to, input));
    }

    /// Node `n`'s end of interconnect `ic` is not ready yet (its device still opening): its session
    /// there, and what the partner sends on it, wait until [`release`](Self::release). The partner's
    /// end is up: its connect succeeds and its handshake waits for `n`.
    fn hold(&mut self, n: usize, ic: u8) {
        self.holding = Some((n, ic));
    }

    /// Node `n`'s end of the held interconnect is ready: what waited arrives, in order.
    fn release(&mut self) {
        self.holding = None;
        for (to, input) in std::mem::take(&mut self.held) {
            self.later(to, input);
        }
    }

    fn drain(&mut self, n: usize) {
        while let Some(a) = self.m[n].poll_action() {
            match a {
                Action::Listen { ic } => self.listening[ic.0 as usize][n] = true,
                Action::Connect { ic, attempt } => {
                    let i = ic.0 as usize;
                    if self.listening[i][1 - n] && !self.cut[i] {
                        for side in [n, 1 - n] {
                            self.sid += 1;
                            let input = Input::SessionEstablished {
                                ic,
                                session: SessionId(i as u64),
                                control_vi: vi(ic.0, 1000 + self.sid as u32),
                                windows: vec![],
                            };
                            self.later(side, input);
                        }
                    } else {
                        self.later(n, Input::ConnectFailed { ic, attempt });
                    }
                }
                Action::Send { ic, session, msg } => {
                    self.sent[n].push((self.now, msg.clone()));
                    if !self.cut[ic.0 as usize] {
                        self.later(1 - n, Input::Message { ic, session, msg });
                    }
                }
                Action::CloseSession { ic, session } => {
                    if !self.cut[ic.0 as usize] {
                        self.later(1 - n, Input::SessionClosed { ic, session });
                    }
                }
                Action::CreateClientVis {
                    client,
                    ic,
                    generation,
                    count,
                } => {
                    let vis = (0..count)
                        .map(|_| {
                            self.next_qpn += 1;
                            vi(ic.0, self.next_qpn)
                        })
                        .collect();
                    let windows = vec![MemoryWindow {
                        addr: 0x1000,
                        len: 4096,
                        rkey: 9,
                    }];
                    self.later(
                        n,
                        Input::ClientVisCreated {
                            client,
                            generation,
                            vis,
                            windows,
                        },
                    );
                }
                Action::SlamConnect {
                    client, generation, ..
                } => self.later(n, Input::ClientVisConnected { client, generation }),
                Action::Tell { client, event } => self.told[n].push((client, event)),
                Action::LinkRefused { ic, error } => self.refused[n].push((ic, error)),
                Action::Step { at, step } => self.steps[n].push((at, step)),
                Action::SlamConnectControl { .. }
                | Action::ReleaseClientVis { .. }
                | Action::ArmTimer { .. } => {}
            }
        }
    }

    fn input(&mut self, n: usize, input: Input) {
        self.m[n].handle(self.now, input);
        self.drain(n);
    }

    /// `msg` arrives at node `n` from its partner on interconnect `ic`'s session (the pair numbers
    /// each interconnect's session after it).
    fn deliver(&mut self, n: usize, ic: InterconnectId, msg: Message) {
        let session = SessionId(ic.0 as u64);
        self.input(n, Input::Message { ic, session, msg });
    }

    /// Runs until `until`, delivering messages and firing timers in time order.
    fn run_until(&mut self, until: Time) {
        loop {
            let next_msg = self.queue.front().map(|q| q.0);
            let next_timer = [0, 1]
                .into_iter()
                .filter_map(|n| self.m[n].next_deadline().map(|d| (d, n)))
                .min();
            match (next_msg, next_timer) {
                (Some(t), timer) if t <= until && timer.is_none_or(|(d, _)| t <= d) => {
                    let (t, to, input) = self.queue.pop_front().expect("peeked");
                    self.now = self.now.max(t);
                    self.input(to, input);
                }
                (_, Some((d, n))) if d <= until => {
                    self.now = self.now.max(d);
                    self.input(n, Input::Timer);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn register(&mut self, n: usize, id: u32, class: BandwidthClass) {
        let spec = ClientSpec {
            id: ClientId(id),
            name: format!("client-{id}"),
            class,
            vi_count: 2,
            pinned: None,
            private: Vec::new(),
        };
        self.input(n, Input::Client(ClientRequest::Register(spec)));
    }

    /// Both nodes see interconnect `ic`'s port go `up` or down.
    fn port_state(&mut self, ic: InterconnectId, up: bool) {
        for n in 0..2 {
            self.input(n, Input::PortState { ic, up });
        }
    }

    fn events_of(&self, n: usize, id: u32) -> Vec<&ClientEvent> {
        self.told[n]
            .iter()
            .filter(|(c, e)| c.0 == id && !matches!(e, ClientEvent::PartnerInfo(_)))
            .map(|(_, e)| e)
            .collect()
    }

    fn ready_on(&self, n: usize, id: u32) -> Option<InterconnectId> {
        match self.m[n].client_status(ClientId(id)) {
            Some(ClientStatus::Ready { ic, .. }) => Some(ic),
            _ => None,
        }
    }
}

#[test]
fn fig4_bring_up_runs_410_to_445_in_order_and_both_clients_go() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    for n in 0..2 {
        assert!(matches!(p.events_of(n, 1)[..], [ClientEvent::Ready { .. }]));
    }
    let order: Vec<&'static str> = p.steps[0]
        .iter()
        .filter_map(|(_, s)| match s {
            Step::InitialSession410 { .. } => Some("410"),
            Step::PeerInfoExchanged415 { .. } => Some("415"),
            Step::CreateVis420 { .. } => Some("420"),
            Step::SendBatch425 { .. } => Some("425"),
            Step::PartnerInfo430 { .. } => Some("430"),
            Step::SlamConnect435 { .. } => Some("435"),
            Step::SendReady440 { .. } => Some("440"),
            Step::ClientsGo445 { .. } => Some("445"),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        ["410", "415", "420", "425", "430", "435", "440", "445"]
    );
    // Bring-up on an ideal network takes a handful of one-way trips, well under a millisecond.
    let go = p.steps[0]
        .iter()
        .find(|(_, s)| matches!(s, Step::ClientsGo445 { .. }))
        .map(|(t, _)| *t)
        .expect("went");
    assert!(go < Time(MS), "ready at {go}");
}

#[test]
fn the_handshake_takes_two_one_way_trips_hello_with_challenge_then_response_with_peer_info() {
    let mut p = Pair::standard(1);
    p.run_for(Duration::from_millis(1));
    for n in 0..2 {
        let at = |want: fn(&Step) -> bool| {
            p.steps[n]
                .iter()
                .find(|(_, s)| want(s))
                .map(|(t, _)| *t)
                .expect("step taken")
        };
        let session = at(|s| matches!(s, Step::SessionEstablished410 { .. }));
        let up = at(|s| matches!(s, Step::PeerInfoExchanged415 { .. }));
        // Hello + AuthChallenge one way, AuthResponse + PeerInfo the other: 2 x 10 µs on this network.
        assert_eq!(
            up.0 - session.0,
            20_000,
            "node {n}: 410 at {session}, 415 at {up}"
        );
    }
}

#[test]
fn a_peer_info_after_a_failed_response_is_never_acted_on() {
    let mut b = Pair::config(2, 1, 1);
    b.secret = b"guess".to_vec();
    let mut p = Pair::new(Pair::config(1, 2, 1), b);
    p.run_for(Duration::from_millis(1));
    for n in 0..2 {
        assert!(
            !p.steps[n]
                .iter()
                .any(|(_, s)| matches!(s, Step::PeerInfoExchanged415 { .. })),
            "node {n} took the partner's PeerInfo"
        );
        assert_eq!(p.m[n].partner_status(), PartnerStatus::Unknown);
    }
}

#[test]
fn a_response_or_peer_info_before_the_partners_hello_is_a_protocol_refusal() {
    for early in [
        Message::AuthResponse(ccm_core::wire::AuthResponse { mac: [0; 32] }),
        Message::PeerInfo(ccm_core::wire::PeerInfo {
            control_vi: vi(0, 7),
            windows: vec![],
        }),
    ] {
        let mut m = Manager::new(Pair::config(1, 2, 1), Time::ZERO, [1; 32]);
        let ic = InterconnectId(0);
        let session = SessionId(0);
        while m.poll_action().is_some() {}
        m.handle(
            Time(MS),
            Input::SessionEstablished {
                ic,
                session,
                control_vi: vi(0, 1),
                windows: vec![],
            },
        );
        // Our Hello and challenge go out together, before anything is heard from the partner.
        let mut sent = Vec::new();
        while let Some(a) = m.poll_action() {
            if let Action::Send { msg, .. } = a {
                sent.push(msg);
            }
        }
        assert!(matches!(
            sent[..],
            [Message::Hello(_), Message::AuthChallenge(_)]
        ));
        m.handle(
            Time(2 * MS),
            Input::Message {
                ic,
                session,
                msg: early,
            },
        );
        let mut refused = Vec::new();
        while let Some(a) = m.poll_action() {
            if let Action::LinkRefused { error, .. } = a {
                refused.push(error);
            }
        }
        assert!(
            matches!(refused[..], [HandshakeError::Protocol(_)]),
            "{refused:?}"
        );
        assert_eq!(
            m.link_status(),
            [LinkStatus::Backoff],
            "refused, retried later"
        );
    }
}

#[test]
fn all_clients_go_to_the_partner_in_one_batch() {
    let mut p = Pair::standard(1);
    for id in 1..=5 {
        p.register(0, id, BandwidthClass::Low);
        p.register(1, id, BandwidthClass::Low);
    }
    p.run_for(Duration::from_millis(5));
    let batches: Vec<usize> = p.steps[0]
        .iter()
        .filter_map(|(_, s)| match s {
            Step::SendBatch425 { clients, .. } => Some(*clients),
            _ => None,
        })
        .collect();
    assert_eq!(batches, [5]);
    assert!((1..=5).all(|id| p.ready_on(0, id).is_some() && p.ready_on(1, id).is_some()));
}

#[test]
fn a_node_starting_long_after_its_partner_still_brings_everything_up() {
    let mut p = Pair::new_with(Pair::config(1, 2, 2), Pair::config(2, 1, 2), false);
    p.register(0, 1, BandwidthClass::Low);
    // The follower is not running yet: the placer keeps retrying with a bounded back-off.
    p.run_for(Duration::from_secs(3));
    assert!(p.m[0]
        .link_status()
        .iter()
        .all(|l| matches!(l, LinkStatus::Backoff | LinkStatus::Connecting)));
    assert_eq!(
        p.m[0].client_status(ClientId(1)),
        Some(ClientStatus::WaitingForPartner)
    );
    // The follower starts (a new process) three seconds later.
    p.m[1] = Manager::new(Pair::config(2, 1, 2), p.now, [9; 32]);
    p.drain(1);
    p.register(1, 1, BandwidthClass::Low);
    let start = p.now;
    p.run_for(Duration::from_millis(150));
    assert_eq!(p.m[0].link_status(), [LinkStatus::Up, LinkStatus::Up]);
    assert!(p.ready_on(0, 1).is_some() && p.ready_on(1, 1).is_some());
    let up = p.steps[0]
        .iter()
        .find(|(t, s)| *t >= start && matches!(s, Step::PeerInfoExchanged415 { .. }))
        .expect("link came up")
        .0;
    assert!(
        up.saturating_since(start) <= Duration::from_millis(101),
        "back-off is bounded by backoff_max"
    );
}

/// The placer's steps `InitialSession410` (one per connect attempt) at or after `from` on `ic`.
fn connects_since(p: &Pair, from: Time, ic: u8) -> Vec<Time> {
    p.steps[0]
        .iter()
        .filter(|(t, s)| *t >= from && matches!(s, Step::InitialSession410 { ic: i } if i.0 == ic))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn a_follower_that_knocks_ends_the_placers_back_off_and_both_links_come_up_at_once() {
    let mut p = Pair::new_with(Pair::config(1, 2, 2), Pair::config(2, 1, 2), false);
    p.run_for(Duration::from_secs(3));
    // The follower starts while the placer waits out a back-off of up to backoff_max (100 ms).
    p.m[1] = Manager::new(Pair::config(2, 1, 2), p.now, [9; 32]);
    p.drain(1);
    let start = p.now;
    // Without a knock nothing happens for a while: the placer's next attempts are its back-off away.
    p.run_for(Duration::from_micros(100));
    assert!(p.m[0].link_status().contains(&LinkStatus::Backoff));
    // Its listeners bound, the follower knocks on both interconnects (the driver's datagram).
    for ic in 0..2 {
        p.later(
            0,
            Input::PartnerListening {
                ic: InterconnectId(ic),
            },
        );
    }
    p.run_for(Duration::from_micros(200));
    assert_eq!(p.m[0].link_status(), [LinkStatus::Up, LinkStatus::Up]);
    assert_eq!(p.m[1].link_status(), [LinkStatus::Up, LinkStatus::Up]);
    for ic in 0..2 {
        assert_eq!(connects_since(&p, start, ic).len(), 1, "interconnect {ic}");
    }
}

#[test]
fn knocks_never_bring_a_connect_closer_than_backoff_min_to_the_last() {
    let mut p = Pair::new_with(Pair::config(1, 2, 1), Pair::config(2, 1, 1), false);
    p.run_for(Duration::from_millis(500));
    // A knock every 100 µs for 100 ms from a follower that does not listen (a stale or forged one):
    // the placer connects at most once per backoff_min (5 ms) and never twice within it.
    let start = p.now;
    for _ in 0..1000 {
        p.later(
            0,
            Input::PartnerListening {
                ic: InterconnectId(0),
            },
        );
        p.run_for(Duration::from_micros(100));
    }
    let attempts = connects_since(&p, start, 0);
    assert!(
        attempts.len() >= 10,
        "the knocks did cut the back-off: {attempts:?}"
    );
    assert!(
        attempts.len() <= 21,
        "{} attempts in 100 ms",
        attempts.len()
    );
    for w in attempts.windows(2) {
        assert!(
            w[1].saturating_since(w[0]) >= Duration::from_millis(5),
            "{w:?}"
        );
    }
}

#[test]
fn a_knock_changes_nothing_on_an_up_link_nor_on_the_follower() {
    let mut p = Pair::standard(1);
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.m[0].link_status(), [LinkStatus::Up]);
    let (start, refused) = (p.now, p.refused.clone());
    for n in 0..2 {
        p.input(
            n,
            Input::PartnerListening {
                ic: InterconnectId(0),
            },
        );
    }
    // Out of range: ignored, not a panic.
    p.input(
        0,
        Input::PartnerListening {
            ic: InterconnectId(9),
        },
    );
    p.run_for(Duration::from_millis(50));
    assert_eq!(p.m[0].link_status(), [LinkStatus::Up]);
    assert_eq!(p.m[1].link_status(), [LinkStatus::Up]);
    assert!(connects_since(&p, start, 0).is_empty());
    assert_eq!(p.refused, refused);
}

#[test]
fn a_client_registered_on_one_side_only_waits_and_is_never_told_ready() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(0, 2, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(50));
    assert_eq!(
        p.m[0].client_status(ClientId(2)),
        Some(ClientStatus::WaitingForPartnerClient)
    );
    assert!(p.events_of(0, 2).is_empty());
    // It joins later through the same path, without disturbing client 1.
    p.register(1, 2, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    assert!(p.ready_on(0, 2).is_some() && p.ready_on(1, 2).is_some());
    assert_eq!(p.events_of(0, 1).len(), 1, "client 1 saw only its Ready");
}

#[test]
fn unregistering_releases_both_sides_and_tells_the_partner_client() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    p.input(1, Input::Client(ClientRequest::Unregister(ClientId(1))));
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.events_of(0, 1).last(), Some(&&ClientEvent::PartnerClosed));
    assert_eq!(
        p.m[0].client_status(ClientId(1)),
        Some(ClientStatus::WaitingForPartnerClient)
    );
}

fn refused_with(p: &Pair, n: usize) -> Vec<HandshakeError> {
    p.refused[n].iter().map(|(_, e)| e.clone()).collect()
}

#[test]
fn a_foreign_cluster_is_refused_on_both_sides_with_a_typed_error() {
    let mut b = Pair::config(2, 1, 1);
    b.cluster = ClusterId(8);
    let mut p = Pair::new(Pair::config(1, 2, 1), b);
    p.run_for(Duration::from_millis(2));
    assert!(refused_with(&p, 0).contains(&HandshakeError::ForeignCluster(ClusterId(8))));
    assert!(refused_with(&p, 1).contains(&HandshakeError::ForeignCluster(ClusterId(7))));
    assert_eq!(p.m[0].partner_status(), PartnerStatus::Unknown);
}

/// A second session reaching the follower (node 2) on an up interconnect, as a third party would open
/// it: its Hello claims the partner's cluster and node (no secret needed for that).
fn challenge_the_follower(p: &mut Pair, session: SessionId) {
    p.input(
        1,
        Input::SessionEstablished {
            ic: InterconnectId(0),
            session,
            control_vi: vi(0, 9000),
            windows: vec![],
        },
    );
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        features: 0,
        node: NodeId(1),
        cluster: ClusterId(7),
        incarnation: 99,
        nonce: [5; 32],
    });
    let ic = InterconnectId(0);
    p.input(
        1,
        Input::Message {
            ic,
            session,
            msg: hello,
        },
    );
}

fn stops_told(p: &Pair, n: usize) -> usize {
    p.told[n]
        .iter()
        .filter(|(_, e)| matches!(e, ClientEvent::Stop { .. }))
        .count()
}

#[test]
fn a_second_session_without_the_secret_never_disturbs_the_live_one() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(20));
    assert_eq!(p.m[1].link_status(), [LinkStatus::Up]);
    assert!(p.ready_on(1, 1).is_some());
    let (stops, refusals) = (stops_told(&p, 1), p.refused[1].len());
    let impostor = SessionId(77);
    challenge_the_follower(&mut p, impostor);
    // Its challenge is answered (our proof and PeerInfo go to it, not to the live session), then its own
    // proof is wrong.
    let ic = InterconnectId(0);
    let challenge = Message::AuthChallenge(AuthChallenge { challenge: [1; 32] });
    p.input(
        1,
        Input::Message {
            ic,
            session: impostor,
            msg: challenge,
        },
    );
    let wrong = Message::AuthResponse(AuthResponse { mac: [0; 32] });
    p.input(
        1,
        Input::Message {
            ic,
            session: impostor,
            msg: wrong,
        },
    );
    assert_eq!(
        p.refused[1][refusals..]
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
        [HandshakeError::AuthenticationFailed]
    );
    p.run_for(Duration::from_millis(100));
    assert_eq!(
        p.m[1].link_status(),
        [LinkStatus::Up],
        "the live session stays"
    );
    assert_eq!(stops_told(&p, 1), stops, "no client was stopped");
    assert!(!p.steps[1].iter().any(|(_, s)| matches!(
        s,
        Step::Reinitialize530 { .. } | Step::StopClients520 { .. }
    )));
    // A second session that never finishes its handshake is refused at the handshake timeout, and the
    // live one stays too.
    let refusals = p.refused[1].len();
    challenge_the_follower(&mut p, SessionId(78));
    p.run_for(Duration::from_millis(300));
    assert!(matches!(
        p.refused[1][refusals..],
        [(_, HandshakeError::Protocol(_))]
    ));
    assert_eq!(p.m[1].link_status(), [LinkStatus::Up]);
    assert_eq!(stops_told(&p, 1), stops);
}

#[test]
fn a_wrong_secret_fails_authentication_on_both_sides_and_nothing_goes_up() {
    let mut b = Pair::config(2, 1, 1);
    b.secret = b"guess".to_vec();
    let mut p = Pair::new(Pair::config(1, 2, 1), b);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(300));
    for n in 0..2 {
        let errs = refused_with(&p, n);
        assert!(!errs.is_empty(), "node {n} reports the refusal");
        assert!(errs.iter().all(|e| matches!(
            e,
            HandshakeError::AuthenticationFailed
                | HandshakeError::RefusedByPartner {
                    code: ErrorCode::AuthenticationFailed,
                    ..
                }
        )));
        assert!(p.events_of(n, 1).is_empty());
        assert_ne!(p.m[n].link_status(), [LinkStatus::Up]);
    }
}

#[test]
fn incompatible_versions_are_refused_and_overlapping_ranges_pick_the_highest_common() {
    let mut a = Pair::config(1, 2, 1);
    a.min_version = PROTOCOL_VERSION + 1;
    a.max_version = PROTOCOL_VERSION + 2;
    let mut p = Pair::new(a.clone(), Pair::config(2, 1, 1));
    p.run_for(Duration::from_millis(2));
    assert!(refused_with(&p, 0).iter().any(|e| matches!(
        e,
        HandshakeError::IncompatibleVersion { partner_max, .. } if *partner_max == PROTOCOL_VERSION
    )));
    assert!(refused_with(&p, 1).iter().any(|e| matches!(
        e,
        HandshakeError::IncompatibleVersion { .. }
            | HandshakeError::RefusedByPartner {
                code: ErrorCode::IncompatibleVersion,
                ..
            }
    )));

    let mut b = Pair::config(2, 1, 1);
    a.min_version = 1;
    a.max_version = 3;
    b.min_version = 1;
    b.max_version = 2;
    let mut p = Pair::new(a, b);
    p.run_for(Duration::from_millis(2));
    assert!(p.steps[0]
        .iter()
        .any(|(_, s)| matches!(s, Step::PeerInfoExchanged415 { version: 2, .. })));
}

/// Client 1, a mirror-like client of one VI, with `private` data.
fn mirror_spec(private: &[u8]) -> ClientSpec {
    ClientSpec {
        id: ClientId(1),
        name: "nvram".into(),
        class: BandwidthClass::High,
        vi_count: 1,
        pinned: None,
        private: private.to_vec(),
    }
}

/// The private data handed to node `n`'s client `id` about its partner, in every PartnerInfo so far.
fn partner_private(p: &Pair, n: usize, id: u32) -> Vec<Vec<u8>> {
    p.told[n]
        .iter()
        .filter_map(|(c, e)| match e {
            ClientEvent::PartnerInfo(entry) if c.0 == id => Some(entry.private.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_clients_private_data_reaches_its_peer_from_protocol_version_3_and_an_older_partner_gets_none()
{
    for (b_max, carried) in [(PROTOCOL_VERSION, true), (2, false)] {
        let mut b = Pair::config(2, 1, 2);
        b.max_version = b_max;
        let mut p = Pair::new(Pair::config(1, 2, 2), b);
        for (n, private) in [(0, &b"formats 2"[..]), (1, &b"formats 2,3"[..])] {
            p.input(
                n,
                Input::Client(ClientRequest::Register(mirror_spec(private))),
            );
        }
        p.run_for(Duration::from_millis(5));
        let on = p.ready_on(0, 1).expect("ready");
        assert_eq!(p.ready_on(1, 1), Some(on), "version {b_max}");
        // Fail the interconnect in use: the client moves (to its standby where there is one) and hears of
        // its partner again; every PartnerInfo, first and after the move, carries the same bytes.
        p.port_state(on, false);
        p.run_for(Duration::from_millis(50));
        assert_eq!(
            p.ready_on(0, 1),
            Some(InterconnectId(1 - on.0)),
            "version {b_max}"
        );
        for (n, theirs) in [(0, &b"formats 2,3"[..]), (1, &b"formats 2"[..])] {
            let seen = partner_private(&p, n, 1);
            assert!(!seen.is_empty());
            let expected = if carried { theirs.to_vec() } else { vec![] };
            assert!(
                seen.iter().all(|b| *b == expected),
                "node {n}, partner's versions up to {b_max}: {seen:?}"
            );
        }
    }
}

#[test]
fn a_registration_with_too_much_private_data_is_not_taken() {
    let mut p = Pair::standard(1);
    let spec = mirror_spec(&[0; ccm_core::wire::MAX_PRIVATE + 1]);
    p.input(0, Input::Client(ClientRequest::Register(spec)));
    assert_eq!(p.m[0].client_status(ClientId(1)), None);
}

#[test]
fn garbage_on_one_interconnect_is_refused_while_the_other_keeps_serving() {
    let mut p = Pair::standard(2);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(0, 1).expect("ready");
    let other = InterconnectId(1 - on.0);
    let garbage = Message::decode(b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
    p.input(
        1,
        Input::Malformed {
            ic: other,
            session: SessionId(other.0 as u64),
            error: garbage,
        },
    );
    p.run_for(Duration::from_micros(100));
    assert!(matches!(
        refused_with(&p, 1)[..],
        [HandshakeError::Malformed(DecodeError::BadMagic(_))]
    ));
    assert!(refused_with(&p, 0).iter().any(|e| matches!(
        e,
        HandshakeError::RefusedByPartner {
            code: ErrorCode::Malformed,
            ..
        }
    )));
    assert_eq!(p.ready_on(0, 1), Some(on), "the client was not disturbed");
    assert_eq!(p.m[0].partner_status(), PartnerStatus::Up);
}

#[test]
fn silence_on_the_only_interconnect_stops_clients_then_suspects_then_declares_the_partner_down() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let cut_at = p.now;
    p.cut[0] = true;
    p.run_for(Duration::from_millis(40));
    assert_eq!(
        p.events_of(0, 1)[1..],
        [
            &ClientEvent::Stop {
                ic: InterconnectId(0)
            },
            &ClientEvent::PartnerSuspect
        ]
    );
    let detected = p.steps[0]
        .iter()
        .find(|(_, s)| matches!(s, Step::StopClients520 { .. }))
        .expect("detected")
        .0;
    assert!(
        detected.saturating_since(cut_at) <= Duration::from_millis(31),
        "silent loss is detected within heartbeat_misses periods"
    );
    p.run_for(Duration::from_millis(500));
    assert_eq!(p.events_of(0, 1).last(), Some(&&ClientEvent::PartnerDown));
    assert_eq!(p.m[0].partner_status(), PartnerStatus::Down);
}

#[test]
fn losing_one_of_two_interconnects_fails_over_without_suspecting_the_partner() {
    let mut p = Pair::standard(2);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(0, 1).expect("ready");
    let other = InterconnectId(1 - on.0);
    p.cut[on.0 as usize] = true;
    p.port_state(on, false);
    p.run_for(Duration::from_millis(5));
    for n in 0..2 {
        assert_eq!(
            p.events_of(n, 1)[1..],
            [
                &ClientEvent::Stop { ic: on },
                &ClientEvent::Resumed {
                    ic: other,
                    generation: match p.m[n].client_status(ClientId(1)) {
                        Some(ClientStatus::Ready { generation, .. }) => generation,
                        s => panic!("not ready: {s:?}"),
                    }
                }
            ]
        );
        assert_eq!(p.m[n].partner_status(), PartnerStatus::Up);
    }
    // The port comes back: after the hold-down, the client fails back to its home.
    p.cut[on.0 as usize] = false;
    p.port_state(on, true);
    p.run_for(Duration::from_millis(300));
    assert_eq!(
        p.ready_on(0, 1),
        Some(other),
        "no failback before the hold-down"
    );
    p.run_for(Duration::from_millis(300));
    assert_eq!(p.ready_on(0, 1), Some(on));
    assert_eq!(p.ready_on(1, 1), Some(on));
}

#[test]
fn fig8_the_mirror_gets_its_own_interconnect() {
    let mut p = Pair::standard(2);
    for (id, class) in [
        (1, BandwidthClass::Low),
        (2, BandwidthClass::Low),
        (3, BandwidthClass::High),
    ] {
        p.register(0, id, class);
        p.register(1, id, class);
    }
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.ready_on(0, 3), Some(InterconnectId(1)));
    assert_eq!(p.ready_on(0, 1), Some(InterconnectId(0)));
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(0)));
    assert_eq!(p.ready_on(1, 3), Some(InterconnectId(1)));
}

#[test]
fn a_partner_restart_is_told_as_partner_down_and_its_clients_are_readmitted() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    // Node B restarts: a new manager with a new incarnation; the old session just vanishes.
    p.queue.clear();
    p.m[1] = Manager::new(Pair::config(2, 1, 1), p.now, [3; 32]);
    p.drain(1);
    p.input(
        0,
        Input::SessionClosed {
            ic: InterconnectId(0),
            session: SessionId(0),
        },
    );
    p.run_for(Duration::from_millis(150));
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let ev = p.events_of(0, 1);
    assert!(ev.contains(&&ClientEvent::PartnerDown) || ev.contains(&&ClientEvent::PartnerSuspect));
    assert!(matches!(
        ev.last(),
        Some(ClientEvent::Ready { .. } | ClientEvent::Resumed { .. })
    ));
    assert!(p.ready_on(0, 1).is_some() && p.ready_on(1, 1).is_some());
}

fn generation_of(p: &Pair, n: usize, id: u32) -> Generation {
    match p.m[n].client_status(ClientId(id)) {
        Some(ClientStatus::Ready { generation, .. }) => generation,
        s => panic!("client {id} on node {n} is not ready: {s:?}"),
    }
}

fn resets(p: &Pair, n: usize) -> Vec<(u32, Option<Duration>)> {
    p.steps[n]
        .iter()
        .filter_map(|(_, s)| match s {
            Step::ClientReset { resets, after, .. } => Some((*resets, *after)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_vi_error_on_a_healthy_link_resets_only_that_client_on_the_same_link() {
    for detecting in [0, 1] {
        let mut p = Pair::standard(2);
        for id in 1..=3 {
            p.register(0, id, BandwidthClass::Low);
            p.register(1, id, BandwidthClass::Low);
        }
        p.run_for(Duration::from_millis(5));
        let on = p.ready_on(0, 2).expect("ready");
        let before = [p.events_of(0, 1).len(), p.events_of(1, 1).len()];
        let others = [p.events_of(0, 3).len(), p.events_of(1, 3).len()];
        let generation = generation_of(&p, detecting, 2);
        // Client 2's peer never reposts receives: RNR retry exceeded on one of client 2's VIs.
        p.input(
            detecting,
            Input::ViError {
                ic: on,
                vi: ViRef::Client(ClientId(2), generation),
            },
        );
        p.run_for(Duration::from_millis(30));
        for n in 0..2 {
            let ev = p.events_of(n, 2);
            assert_eq!(
                ev[ev.len() - 2..],
                [
                    &ClientEvent::Stop { ic: on },
                    &ClientEvent::Resumed {
                        ic: on,
                        generation: generation_of(&p, n, 2)
                    }
                ],
                "node {n}"
            );
            assert_eq!(p.events_of(n, 1).len(), before[n], "client 1 untouched");
            assert_eq!(p.events_of(n, 3).len(), others[n], "client 3 untouched");
            assert_eq!(p.m[n].link_status(), [LinkStatus::Up, LinkStatus::Up]);
            assert_eq!(p.m[n].partner_status(), PartnerStatus::Up);
            assert!(!p.steps[n]
                .iter()
                .any(|(_, s)| matches!(s, Step::StopClients520 { .. })));
        }
        assert_ne!(generation_of(&p, 0, 2), generation);
        assert_eq!(resets(&p, 0), [(1, Some(Duration::from_millis(10)))]);
    }
}

#[test]
fn a_client_that_errors_in_a_loop_backs_off_exponentially_up_to_a_bound() {
    let mut a = Pair::config(1, 2, 1);
    a.client_backoff_max = Duration::from_millis(40);
    let mut p = Pair::new(a, Pair::config(2, 1, 1));
    for id in 1..=2 {
        p.register(0, id, BandwidthClass::Low);
        p.register(1, id, BandwidthClass::Low);
    }
    p.run_for(Duration::from_millis(5));
    let stable = p.events_of(0, 1).len();
    for round in 0..5 {
        let generation = generation_of(&p, 1, 2);
        p.input(
            1,
            Input::ViError {
                ic: InterconnectId(0),
                vi: ViRef::Client(ClientId(2), generation),
            },
        );
        p.run_for(Duration::from_millis(1));
        match p.m[0].client_status(ClientId(2)) {
            Some(ClientStatus::ResetBackoff { resets, .. }) => assert_eq!(resets, round + 1),
            s => panic!("round {round}: {s:?}"),
        }
        p.run_for(Duration::from_millis(45));
        assert!(p.ready_on(0, 2).is_some(), "round {round}: rebound");
    }
    let ms = Duration::from_millis;
    assert_eq!(
        resets(&p, 0),
        [
            (1, Some(ms(10))),
            (2, Some(ms(20))),
            (3, Some(ms(40))),
            (4, Some(ms(40))),
            (5, Some(ms(40)))
        ]
    );
    assert!(resets(&p, 1).iter().all(|(_, after)| after.is_none()));
    assert_eq!(
        p.events_of(0, 1).len(),
        stable,
        "the other client never noticed"
    );
    // Once it has run for the hold-down, the next error starts the back-off afresh.
    p.run_for(Duration::from_millis(600));
    let generation = generation_of(&p, 0, 2);
    p.input(
        0,
        Input::ViError {
            ic: InterconnectId(0),
            vi: ViRef::Client(ClientId(2), generation),
        },
    );
    assert_eq!(resets(&p, 0).last(), Some(&(1, Some(ms(10)))));
}

#[test]
fn a_control_vi_error_still_fails_the_whole_link() {
    let mut p = Pair::standard(1);
    for id in 1..=2 {
        p.register(0, id, BandwidthClass::Low);
        p.register(1, id, BandwidthClass::Low);
    }
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(0, 1).expect("ready");
    p.input(
        0,
        Input::ViError {
            ic: on,
            vi: ViRef::Control,
        },
    );
    assert!(p.steps[0]
        .iter()
        .any(|(_, s)| matches!(s, Step::StopClients520 { clients: 2, .. })));
    for id in 1..=2 {
        assert_eq!(p.events_of(0, id)[1], &ClientEvent::Stop { ic: on });
    }
}

const MB: u64 = 1_000_000;

/// Feeds both managers `rates` (client id, bytes/s of the pair; each node posts half) every
/// balance period for `d`, delivering messages and timers in between.
fn carry(p: &mut Pair, rates: &[(u32, u64)], d: Duration) {
    let period = p.m[0].config().balance_period;
    let until = p.now + d;
    while p.now + period <= until {
        p.run_for(period);
        for n in 0..2 {
            let samples = rates
                .iter()
                .map(|&(id, rate)| ClientLoad {
                    client: ClientId(id),
                    bytes: rate / 2 * period.as_millis() as u64 / 1000,
                })
                .collect();
            p.input(n, Input::Measured { samples });
        }
    }
    p.run_until(until);
}

fn migrations(p: &Pair) -> Vec<(ClientId, InterconnectId, InterconnectId)> {
    p.steps[0]
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Migrate {
                client, from, to, ..
            } => Some((*client, *from, *to)),
            _ => None,
        })
        .collect()
}

/// Two links of 100 and 200 MB/s; the mirror (client 1, high) on link 1, clients 2 and 3 on link 0,
/// all Ready, the links healthy beyond the hold-down and the clients beyond the dwell time.
fn balanced_pair(pin_2: bool) -> Pair {
    let mut cfg = [Pair::config(1, 2, 2), Pair::config(2, 1, 2)];
    for c in &mut cfg {
        c.capacity = vec![100 * MB, 200 * MB];
    }
    let [a, b] = cfg;
    let mut p = Pair::new(a, b);
    for (id, class) in [
        (1, BandwidthClass::High),
        (2, BandwidthClass::Low),
        (3, BandwidthClass::Low),
    ] {
        for n in 0..2 {
            let spec = ClientSpec {
                id: ClientId(id),
                name: format!("client-{id}"),
                class,
                vi_count: 1,
                pinned: (pin_2 && id == 2).then_some(InterconnectId(0)),
                private: Vec::new(),
            };
            p.input(n, Input::Client(ClientRequest::Register(spec)));
        }
    }
    carry(
        &mut p,
        &[(1, MB), (2, MB), (3, MB)],
        Duration::from_millis(2500),
    );
    assert_eq!(p.ready_on(0, 1), Some(InterconnectId(1)));
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(0)));
    assert_eq!(p.ready_on(0, 3), Some(InterconnectId(0)));
    p
}

#[test]
fn a_heavy_client_migrates_off_its_overloaded_link_once_and_the_others_stay() {
    let mut p = balanced_pair(false);
    let before: Vec<[usize; 2]> = (1..=3)
        .map(|id| [p.events_of(0, id).len(), p.events_of(1, id).len()])
        .collect();
    // Client 2 pushes 90 MB/s: link 0 (100 MB/s) goes above 80 %; link 1 ends at 46 %.
    let load = [(1, MB), (2, 90 * MB), (3, MB)];
    carry(&mut p, &load, Duration::from_millis(1500));
    assert_eq!(
        migrations(&p),
        [(ClientId(2), InterconnectId(0), InterconnectId(1))]
    );
    for n in 0..2 {
        let ev = p.events_of(n, 2);
        assert_eq!(
            ev[before[1][n]..],
            [
                &ClientEvent::Stop {
                    ic: InterconnectId(0)
                },
                &ClientEvent::Resumed {
                    ic: InterconnectId(1),
                    generation: generation_of(&p, n, 2)
                }
            ]
        );
        assert_eq!(p.events_of(n, 1).len(), before[0][n], "the mirror stays");
        assert_eq!(p.events_of(n, 3).len(), before[2][n], "client 3 stays");
    }
    let util = p.m[0].link_load();
    assert_eq!(util[1].1, 200 * MB);
    assert!(util[1].0 >= 90 * MB, "{util:?}");
    // Constant load for a long time: no further move, no failback to the static home.
    carry(&mut p, &load, Duration::from_secs(10));
    assert_eq!(migrations(&p).len(), 1);
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(1)));
    assert_eq!(p.ready_on(1, 2), Some(InterconnectId(1)));
}

#[test]
fn a_pinned_heavy_client_is_never_migrated_and_light_ones_are_not_churned() {
    let mut p = balanced_pair(true);
    carry(
        &mut p,
        &[(1, MB), (2, 95 * MB), (3, MB)],
        Duration::from_secs(5),
    );
    assert_eq!(migrations(&p), []);
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(0)));
    assert_eq!(p.ready_on(0, 3), Some(InterconnectId(0)));
}

#[test]
fn alternating_heavy_clients_move_at_most_once_per_dwell_and_never_storm() {
    let mut p = balanced_pair(false);
    // Clients 2 and 3 take turns pushing 90 MB/s every 300 ms.
    for round in 0..40 {
        let (a, b) = if round % 2 == 0 { (90, 1) } else { (1, 90) };
        carry(
            &mut p,
            &[(1, MB), (2, a * MB), (3, b * MB)],
            Duration::from_millis(300),
        );
    }
    let moves: Vec<(Time, ClientId)> = p.steps[0]
        .iter()
        .filter_map(|(t, s)| match s {
            Step::Migrate { client, .. } => Some((*t, *client)),
            _ => None,
        })
        .collect();
    let dwell = p.m[0].config().balance_dwell;
    for (i, (t, c)) in moves.iter().enumerate() {
        if let Some((t0, _)) = moves[..i].iter().rev().find(|(_, c0)| c0 == c) {
            assert!(t.saturating_since(*t0) >= dwell, "{moves:?}");
        }
    }
    // Averaged over the 1 s window both carry about 45 MB/s: 92 % on link 0, so one of them moves;
    // then each link carries about half and nothing moves again.
    assert_eq!(moves.len(), 1, "{moves:?}");
}

#[test]
fn fig9_failover_goes_to_the_least_utilised_link_by_measured_load() {
    // Three links: the mirror (high) on link 2, client 2 on link 0, client 3 on link 1.
    let mut p = Pair::standard(3);
    for (id, class) in [
        (1, BandwidthClass::High),
        (2, BandwidthClass::Low),
        (3, BandwidthClass::Low),
    ] {
        p.register(0, id, class);
        p.register(1, id, class);
    }
    // By class weights link 1 (one low client) would take client 2; measured, link 1 carries
    // 500 MB/s and the mirror's link 2 is idle.
    carry(
        &mut p,
        &[(1, 0), (2, MB), (3, 500 * MB)],
        Duration::from_secs(1),
    );
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(0)));
    assert_eq!(p.ready_on(0, 3), Some(InterconnectId(1)));
    p.cut[0] = true;
    p.port_state(InterconnectId(0), false);
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(2)));
    assert_eq!(p.ready_on(1, 2), Some(InterconnectId(2)));
}

#[test]
fn without_measurements_failover_ranks_links_by_class_weight() {
    let mut p = Pair::standard(3);
    for (id, class) in [
        (1, BandwidthClass::High),
        (2, BandwidthClass::Low),
        (3, BandwidthClass::Low),
    ] {
        p.register(0, id, class);
        p.register(1, id, class);
    }
    p.run_for(Duration::from_millis(5));
    p.cut[0] = true;
    p.port_state(InterconnectId(0), false);
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.ready_on(0, 2), Some(InterconnectId(1)));
}

#[test]
fn acknowledged_sends_keep_a_link_up_through_a_partner_stall_for_at_most_four_heartbeat_timeouts() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    // Node 1's manager goes quiet, but its host keeps acknowledging node 0's heartbeats.
    let quiet_at = p.now;
    p.cut[0] = true;
    let ic = InterconnectId(0);
    let stopped = |p: &Pair| {
        p.steps[0]
            .iter()
            .find(|(_, s)| matches!(s, Step::StopClients520 { .. }))
            .map(|(t, _)| *t)
    };
    while stopped(&p).is_none() && p.now.saturating_since(quiet_at) < Duration::from_millis(500) {
        p.input(
            0,
            Input::PathAlive {
                ic,
                session: SessionId(0),
            },
        );
        p.run_for(Duration::from_millis(5));
    }
    let after = stopped(&p)
        .expect("failed at last")
        .saturating_since(quiet_at);
    let timeout = Duration::from_millis(30);
    assert!(
        after > timeout * 3 && after <= timeout * 4 + Duration::from_millis(5),
        "up through acknowledged silence, failed after four heartbeat timeouts: {after:?}"
    );
}

#[test]
fn silence_while_the_node_itself_was_paused_is_not_counted() {
    let mut p = Pair::standard(1);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let cut_at = p.now;
    p.cut[0] = true;
    p.run_for(Duration::from_millis(20));
    // Node 0 was not scheduled for 25 ms (it woke that late): that time is not silence it heard.
    p.input(
        0,
        Input::Paused {
            duration: Duration::from_millis(25),
        },
    );
    p.run_for(Duration::from_millis(100));
    let detected = p.steps[0]
        .iter()
        .find(|(_, s)| matches!(s, Step::StopClients520 { .. }))
        .expect("detected")
        .0
        .saturating_since(cut_at);
    assert!(
        detected > Duration::from_millis(50) && detected <= Duration::from_millis(56),
        "heartbeat timeout (30 ms) plus the pause (25 ms): {detected:?}"
    );
}

#[test]
fn on_failover_the_answering_node_sends_its_vi_addresses_before_its_own_slam_connect_completes() {
    // Without standby bindings (a partner speaking protocol version 1), a failover runs 420-445.
    let mut a = Pair::config(1, 2, 2);
    a.max_version = 1;
    let mut p = Pair::new(a, Pair::config(2, 1, 2));
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(0, 1).expect("ready");
    let other = InterconnectId(1 - on.0);
    let cut_at = p.now;
    p.cut[on.0 as usize] = true;
    p.port_state(on, false);
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.ready_on(0, 1), Some(other));
    assert_eq!(p.ready_on(1, 1), Some(other));
    // Node 2 learns node 1's addresses first (430), hands out its VIs, and slam connects at once: its
    // ClientInfo (425) must not wait for that slam connect (435), or both ends connect one after the other.
    let on_other: Vec<&Step> = p.steps[1]
        .iter()
        .filter(|(at, _)| *at >= cut_at)
        .map(|(_, s)| s)
        .filter(|s| {
            matches!(s, Step::PartnerInfo430 { ic, .. } | Step::SendBatch425 { ic, .. }
                | Step::SlamConnect435 { ic, .. } | Step::SendReady440 { ic, .. } if *ic == other)
        })
        .collect();
    assert_eq!(
        on_other,
        [
            &Step::PartnerInfo430 {
                client: ClientId(1),
                ic: other
            },
            &Step::SendBatch425 {
                ic: other,
                clients: 1
            },
            &Step::SlamConnect435 {
                client: ClientId(1),
                ic: other
            },
            &Step::SendReady440 {
                ic: other,
                clients: 1
            },
        ]
    );
}

impl Pair {
    /// Interconnect `ic` carries nothing from now on (its first sessions included) until uncut.
    fn cut_from_start(&mut self, ic: u8) {
        self.cut[ic as usize] = true;
        self.queue
            .retain(|(_, _, i)| !matches!(i, Input::SessionEstablished { ic: x, .. } if x.0 == ic));
    }

    /// Two interconnects, node 1's end of interconnect 1 held ([`hold`](Self::hold)), client 2 of the High
    /// class (its home is interconnect 1) registered on both nodes; with the home grace.
    fn home_partner_end_held() -> (Pair, Duration) {
        let mut p = Pair::standard(2);
        let grace = p.m[0].config().home_grace;
        p.hold(1, 1);
        p.register(0, 2, BandwidthClass::High);
        p.register(1, 2, BandwidthClass::High);
        (p, grace)
    }

    fn moves(&self, n: usize) -> Vec<&Step> {
        self.steps[n]
            .iter()
            .map(|(_, s)| s)
            .filter(|s| matches!(s, Step::Failover { .. } | Step::Failback { .. }))
            .collect()
    }
}

#[test]
fn at_bring_up_a_client_waits_for_its_home_link_that_comes_up_a_little_later() {
    let mut p = Pair::standard(2);
    p.cut_from_start(0);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(60));
    assert_eq!(p.m[0].link_status()[1], LinkStatus::Up);
    assert_eq!(p.ready_on(0, 1), None, "not started on the other link");
    p.cut[0] = false;
    p.run_for(Duration::from_millis(1000));
    for n in 0..2 {
        assert_eq!(p.ready_on(n, 1), Some(InterconnectId(0)));
        assert_eq!(
            p.events_of(n, 1)
                .iter()
                .filter(|e| matches!(e, ClientEvent::Stop { .. }))
                .count(),
            0,
            "never stopped"
        );
        assert!(
            p.moves(n).is_empty(),
            "no failover and failback: {:?}",
            p.moves(n)
        );
    }
}

#[test]
fn at_bring_up_a_client_whose_home_stays_broken_starts_elsewhere_after_the_grace_and_goes_home_later(
) {
    let mut p = Pair::standard(2);
    let grace = p.m[0].config().home_grace;
    p.cut_from_start(0);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(grace - Duration::from_millis(10));
    assert_eq!(
        p.ready_on(0, 1),
        None,
        "waits for its home during the grace"
    );
    p.run_for(Duration::from_millis(30));
    assert_eq!(
        p.ready_on(0, 1),
        Some(InterconnectId(1)),
        "then takes the other link"
    );
    assert_eq!(p.ready_on(1, 1), Some(InterconnectId(1)));
    p.cut[0] = false;
    p.run_for(Duration::from_millis(1000));
    assert_eq!(
        p.ready_on(0, 1),
        Some(InterconnectId(0)),
        "home after the hold-down"
    );
    assert_eq!(p.ready_on(1, 1), Some(InterconnectId(0)));
}

/// The node opens the devices after the first one once the first heartbeat arrived: a home whose device
/// opens late is waited for, its grace counted from its opening, not from the partner's first contact.
#[test]
fn at_bring_up_a_client_waits_for_a_home_whose_device_opens_late_from_its_opening() {
    let mut p = Pair::new_unreported(1, Pair::config(1, 2, 2), Pair::config(2, 1, 2));
    let grace = p.m[0].config().home_grace;
    p.cut_from_start(1);
    // A High client: its home is the last interconnect.
    p.register(0, 2, BandwidthClass::High);
    p.register(1, 2, BandwidthClass::High);
    // Interconnect 1's device opens (its port is reported) after a grace has passed since the
    // partner came up on interconnect 0: the client still waits.
    p.run_for(grace + Duration::from_millis(20));
    assert_eq!(p.ready_on(0, 2), None, "its home's device is not open yet");
    p.port_state(InterconnectId(1), true);
    p.cut[1] = false;
    p.run_for(Duration::from_millis(300));
    assert_eq!(
        p.ready_on(0, 2),
        Some(InterconnectId(1)),
        "at home, never moved"
    );
    assert_eq!(p.ready_on(1, 2), Some(InterconnectId(1)));
    assert!(
        !p.events_of(0, 2)
            .iter()
            .any(|e| matches!(e, ClientEvent::Stop { .. })),
        "never stopped: {:?}",
        p.events_of(0, 2)
    );
}

/// Each node opens its devices after the first one once the first heartbeat arrived; with 64 clients
/// registering, the partner's second device took 110-150 ms to open in the lab guest. The placer's
/// sessions on that interconnect are established meanwhile, their handshakes waiting for the partner's
/// end (and timing out): a client whose home it is waits for it beyond one grace.
#[test]
fn at_bring_up_a_client_waits_beyond_one_grace_for_a_home_whose_partner_end_is_still_coming_up() {
    let (mut p, grace) = Pair::home_partner_end_held();
    p.run_for(grace * 2);
    assert_eq!(p.m[0].link_status()[0], LinkStatus::Up);
    assert_ne!(
        p.m[0].link_status()[1],
        LinkStatus::Up,
        "the placer's sessions there wait for the partner's end (and time out)"
    );
    assert_eq!(p.ready_on(0, 2), None, "still waits for its home");
    p.release();
    p.run_for(Duration::from_millis(300));
    for n in 0..2 {
        assert_eq!(p.ready_on(n, 2), Some(InterconnectId(1)), "at home");
        assert!(
            !p.events_of(n, 2)
                .iter()
                .any(|e| matches!(e, ClientEvent::Stop { .. })),
            "never stopped: {:?}",
            p.events_of(n, 2)
        );
        assert!(p.moves(n).is_empty(), "never moved: {:?}", p.moves(n));
    }
}

/// ... but not for ever: a partner end that never comes is given up after four graces.
#[test]
fn at_bring_up_a_client_gives_up_a_home_whose_partner_end_never_comes_after_four_graces() {
    let (mut p, grace) = Pair::home_partner_end_held();
    p.run_for(grace * 3);
    assert_eq!(
        p.ready_on(0, 2),
        None,
        "waits while sessions are made there"
    );
    p.run_for(grace * 2);
    assert_eq!(
        p.ready_on(0, 2),
        Some(InterconnectId(0)),
        "then takes the other link"
    );
    assert_eq!(p.ready_on(1, 2), Some(InterconnectId(0)));
}

#[test]
fn at_bring_up_a_client_whose_home_port_is_down_does_not_wait() {
    let mut p = Pair::standard(2);
    p.cut_from_start(0);
    p.port_state(InterconnectId(0), false);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.ready_on(0, 1), Some(InterconnectId(1)));
    assert_eq!(p.ready_on(1, 1), Some(InterconnectId(1)));
}

/// Runs a pair with one client on two interconnects until both nodes hold a ripe standby of it on
/// the other interconnect; returns (the binding's interconnect, the standby's generation).
fn pair_with_ripe_standby(p: &mut Pair) -> (InterconnectId, Generation) {
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(0, 1).expect("ready");
    let other = InterconnectId(1 - on.0);
    let sa = p.m[0].standbys(ClientId(1));
    assert_eq!(sa.len(), 1, "one standby on the other interconnect: {sa:?}");
    assert_eq!(
        sa,
        p.m[1].standbys(ClientId(1)),
        "both nodes hold the same standby"
    );
    let (ic, g, ripe) = sa[0];
    assert!(ic == other && ripe);
    (on, g)
}

#[test]
fn a_standby_binding_is_made_on_the_other_interconnect_once_the_client_runs_and_stays_silent_to_the_client(
) {
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    // The client heard of its binding only: one Ready, no PartnerInfo of the standby's generation.
    for n in 0..2 {
        assert!(matches!(p.events_of(n, 1)[..], [ClientEvent::Ready { ic, .. }] if *ic == on));
        assert!(!p.told[n]
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::PartnerInfo(entry) if entry.generation == g)));
    }
    // The bring-up itself went first: the standby was asked for after the client went.
    let go = p.steps[0]
        .iter()
        .find(|(_, s)| matches!(s, Step::ClientsGo445 { .. }))
        .expect("went")
        .0;
    let standby = p.steps[0]
        .iter()
        .find(|(_, s)| matches!(s, Step::Standby { .. }))
        .expect("standby")
        .0;
    assert!(standby >= go);
}

/// A port cut shows first as an error completion on the client's busy VI, a few milliseconds before
/// the port event: the client is reset (its back-off starts), then its link fails. The reset was the
/// link's failure, not the client's: it fails over at once, promoting its standby, without waiting
/// out the back-off.
#[test]
fn a_client_whose_vi_erred_just_before_its_port_went_down_fails_over_without_its_back_off() {
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    let other = InterconnectId(1 - on.0);
    let live = generation_of(&p, 0, 1);
    p.cut[on.0 as usize] = true;
    p.input(
        0,
        Input::ViError {
            ic: on,
            vi: ViRef::Client(ClientId(1), live),
        },
    );
    p.run_for(Duration::from_micros(500));
    assert!(
        matches!(
            p.m[0].client_status(ClientId(1)),
            Some(ClientStatus::ResetBackoff { .. })
        ),
        "reset first: {:?}",
        p.m[0].client_status(ClientId(1))
    );
    p.port_state(on, false);
    p.run_for(Duration::from_millis(1));
    for n in 0..2 {
        assert_eq!(
            p.m[n].client_status(ClientId(1)),
            Some(ClientStatus::Ready {
                ic: other,
                generation: g
            }),
            "node {n} runs the standby within 1 ms of the port event, well inside the 10 ms back-off"
        );
    }
}

#[test]
fn a_port_down_failover_promotes_the_standby_with_only_a_ready_exchange() {
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    let other = InterconnectId(1 - on.0);
    let cut_at = p.now;
    p.cut[on.0 as usize] = true;
    p.port_state(on, false);
    p.run_for(Duration::from_millis(1));
    for n in 0..2 {
        assert_eq!(
            p.m[n].client_status(ClientId(1)),
            Some(ClientStatus::Ready {
                ic: other,
                generation: g
            }),
            "node {n} runs the standby's generation"
        );
        assert!(matches!(
            p.events_of(n, 1)[..],
            [ClientEvent::Ready { .. }, ClientEvent::Stop { .. }, ClientEvent::Resumed { ic, generation }]
                if *ic == other && *generation == g
        ));
        // No VIs made, no addresses exchanged, no slam connect on the failover's path.
        let after: Vec<&Step> = p.steps[n]
            .iter()
            .filter(|(t, _)| *t >= cut_at)
            .map(|(_, s)| s)
            .collect();
        assert!(after
            .iter()
            .any(|s| matches!(s, Step::Promote { generation, .. } if *generation == g)));
        assert!(!after.iter().any(|s| matches!(
            s,
            Step::CreateVis420 { .. }
                | Step::SendBatch425 { .. }
                | Step::PartnerInfo430 { .. }
                | Step::SlamConnect435 { .. }
        )));
        // The partner's window for the promoted generation was handed to the client before it went.
        assert!(p.told[n]
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::PartnerInfo(entry) if entry.generation == g)));
    }
    // On the wire: node 1's Ready for the standby, node 2's Ready back (plus the Stop of the failed
    // link, heartbeats and standby traffic for the next failover).
    let readies: Vec<(usize, Time)> = (0..2)
        .flat_map(|n| {
            p.sent[n]
                .iter()
                .filter(|(t, m)| *t >= cut_at && matches!(m, Message::Ready(r) if r.clients.iter().any(|c| c.generation == g)))
                .map(move |(t, _)| (n, *t))
        })
        .collect();
    assert_eq!(readies.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1]);
    assert!(!p
        .sent
        .iter()
        .flatten()
        .any(|(t, m)| *t >= cut_at && matches!(m, Message::ClientInfo(_))));
    // Both nodes go within one round trip (2 x 10 us here) of the decision.
    let went = (0..2)
        .filter_map(|n| {
            p.steps[n]
                .iter()
                .rfind(|(_, s)| matches!(s, Step::ClientsGo445 { .. }))
                .map(|(t, _)| *t)
        })
        .max()
        .expect("went");
    assert!(
        went.saturating_since(cut_at) <= Duration::from_micros(30),
        "{went} after the cut at {cut_at}"
    );
}

#[test]
fn after_a_promotion_a_new_standby_is_made_on_the_healed_interconnect_and_failback_promotes_it_too()
{
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    p.cut[on.0 as usize] = true;
    p.port_state(on, false);
    p.run_for(Duration::from_millis(50));
    p.cut[on.0 as usize] = false;
    p.port_state(on, true);
    // Once home is up again, both nodes hold a ripe standby there (a newer generation) ...
    p.run_for(Duration::from_millis(50));
    let sb = p.m[0].standbys(ClientId(1));
    assert!(
        matches!(sb[..], [(ic, g2, true)] if ic == on && g2 > g),
        "{sb:?}"
    );
    assert_eq!(sb, p.m[1].standbys(ClientId(1)));
    let g2 = sb[0].1;
    // ... and failback after the hold-down promotes it: no VIs made on the way home.
    let before = p.now;
    p.run_for(Duration::from_millis(600));
    for n in 0..2 {
        assert_eq!(
            p.m[n].client_status(ClientId(1)),
            Some(ClientStatus::Ready {
                ic: on,
                generation: g2
            })
        );
        assert!(!p.steps[n]
            .iter()
            .any(|(t, s)| *t >= before && matches!(s, Step::CreateVis420 { .. })));
    }
}

#[test]
fn no_standby_is_made_with_a_partner_that_speaks_protocol_version_1() {
    let mut b = Pair::config(2, 1, 2);
    b.max_version = 1;
    let mut p = Pair::new(Pair::config(1, 2, 2), b);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(50));
    assert!(p.ready_on(0, 1).is_some());
    for n in 0..2 {
        assert!(p.m[n].standbys(ClientId(1)).is_empty());
        assert!(!p.sent[n]
            .iter()
            .any(|(_, m)| matches!(m, Message::Standby(_))));
    }
}

#[test]
fn a_standby_whose_vis_fail_goes_on_both_sides_the_binding_is_untouched_and_failover_takes_the_full_bring_up(
) {
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    let other = InterconnectId(1 - on.0);
    p.input(
        1,
        Input::ViError {
            ic: other,
            vi: ViRef::Client(ClientId(1), g),
        },
    );
    p.run_for(Duration::from_millis(5));
    for n in 0..2 {
        assert!(p.m[n].standbys(ClientId(1)).is_empty(), "node {n}");
        assert_eq!(p.ready_on(n, 1), Some(on));
        assert!(matches!(p.events_of(n, 1)[..], [ClientEvent::Ready { .. }]));
    }
    // Not made again at once (a sick device must not cause a creation storm) ...
    p.run_for(Duration::from_millis(100));
    assert!(p.m[0].standbys(ClientId(1)).is_empty());
    // ... so a failover now runs 420-445, and still resumes the client.
    let cut_at = p.now;
    p.cut[on.0 as usize] = true;
    p.port_state(on, false);
    p.run_for(Duration::from_millis(5));
    assert_eq!(p.ready_on(0, 1), Some(other));
    assert_eq!(p.ready_on(1, 1), Some(other));
    assert!(p.steps[0]
        .iter()
        .any(|(t, s)| *t >= cut_at && matches!(s, Step::CreateVis420 { .. })));
}

#[test]
fn the_follower_answers_a_ready_for_a_standby_it_does_not_hold_with_a_client_reset_and_ignores_stale_entries(
) {
    let mut p = Pair::standard(2);
    let (on, g) = pair_with_ripe_standby(&mut p);
    let other = InterconnectId(1 - on.0);
    // A standby entry below the follower's binding generation is stale: nothing is made.
    let bound = match p.m[1].client_status(ClientId(1)) {
        Some(ClientStatus::Ready { generation, .. }) => generation,
        s => panic!("{s:?}"),
    };
    let stale = ccm_core::wire::ClientEntry {
        client: ClientId(1),
        name: "client-1".into(),
        generation: Generation(bound.0 - 1),
        vis: vec![vi(other.0, 4000), vi(other.0, 4001)],
        windows: vec![],
        private: vec![],
    };
    let steps_before = p.steps[1].len();
    p.deliver(
        1,
        other,
        Message::Standby(ccm_core::wire::ClientInfo {
            entries: vec![stale],
        }),
    );
    assert!(!p.steps[1][steps_before..]
        .iter()
        .any(|(_, s)| matches!(s, Step::Standby { .. })));
    assert_eq!(p.m[1].standbys(ClientId(1)).len(), 1);
    // A Ready for a newer generation it does not hold: the follower says so with a ClientReset.
    let unknown = Generation(g.0 + 100);
    let sent_before = p.sent[1].len();
    p.deliver(
        1,
        other,
        Message::Ready(ccm_core::wire::Ready {
            clients: vec![ccm_core::wire::ClientRef {
                client: ClientId(1),
                generation: unknown,
            }],
        }),
    );
    assert!(p.sent[1][sent_before..].iter().any(|(_, m)| matches!(
        m,
        Message::ClientReset(r) if r.generation == unknown
    )));
    // The follower's own binding is untouched by either.
    assert_eq!(p.ready_on(1, 1), Some(on));
}

/// A client entry for a client not registered here (its ClientClose lost with a broken session) is
/// answered with a ClientClose, so the placer drops the binding it makes instead of waiting for our
/// entry forever (simulator seed 40500 of `ccm-sim`).
#[test]
fn a_client_entry_for_a_client_not_registered_here_is_answered_with_a_client_close() {
    let mut p = Pair::standard(2);
    p.register(0, 1, BandwidthClass::Low);
    p.register(1, 1, BandwidthClass::Low);
    p.run_for(Duration::from_millis(5));
    let on = p.ready_on(1, 1).expect("ready");
    let sent_before = p.sent[1].len();
    p.deliver(
        1,
        on,
        Message::ClientInfo(ccm_core::wire::ClientInfo {
            entries: vec![ccm_core::wire::ClientEntry {
                client: ClientId(9),
                name: "client-9".into(),
                generation: Generation(40),
                vis: vec![vi(on.0, 4000), vi(on.0, 4001)],
                windows: vec![],
                private: vec![],
            }],
        }),
    );
    assert!(p.sent[1][sent_before..]
        .iter()
        .any(|(_, m)| matches!(m, Message::ClientClose(c) if c.client == ClientId(9))));
    assert_eq!(
        p.ready_on(1, 1),
        Some(on),
        "the registered client is untouched"
    );
}

#[test]
fn a_reset_client_gets_standbys_again_only_after_its_new_binding_ran_the_hold_down() {
    let mut p = Pair::standard(2);
    let (on, _) = pair_with_ripe_standby(&mut p);
    let generation = generation_of(&p, 0, 1);
    p.input(
        0,
        Input::ViError {
            ic: on,
            vi: ViRef::Client(ClientId(1), generation),
        },
    );
    // Rebound on the same link; its standbys went with the old binding and are not made again yet.
    p.run_for(Duration::from_millis(30));
    assert_eq!(p.ready_on(0, 1), Some(on));
    assert_eq!(p.ready_on(1, 1), Some(on));
    let rebound = p.now;
    for n in 0..2 {
        assert!(p.m[n].standbys(ClientId(1)).is_empty(), "node {n}");
    }
    p.run_for(Duration::from_millis(400));
    assert!(p.m[0].standbys(ClientId(1)).is_empty());
    // Once the binding ran for the hold-down (500 ms), the standby is back on both nodes.
    p.run_for(Duration::from_millis(150));
    let sb = p.m[0].standbys(ClientId(1));
    assert!(
        matches!(sb[..], [(ic, _, true)] if ic != on),
        "{sb:?} at {} after the rebind",
        p.now.saturating_since(rebound).as_millis()
    );
    assert_eq!(sb, p.m[1].standbys(ClientId(1)));
}

/// What a hostile second session does, one step at a time ([`a_hostile_second_session_never_touches_the_live_one`]).
#[derive(Clone, Debug)]
enum Hostile {
    /// A new session (the next id) reaches the follower.
    Connect,
    /// A Hello: 0 the partner's ids, 1 another cluster, 2 another node, 3 no common version.
    Hello(u8, [u8; 32]),
    Challenge([u8; 32]),
    Proof([u8; 32]),
    PeerInfo(u32),
    Heartbeat(u64),
    Error,
    Malformed,
    Close,
    Wait(u8),
}

fn hostile() -> impl proptest::strategy::Strategy<Value = Hostile> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Hostile::Connect),
        (0u8..4, any::<[u8; 32]>()).prop_map(|(k, n)| Hostile::Hello(k, n)),
        any::<[u8; 32]>().prop_map(Hostile::Challenge),
        any::<[u8; 32]>().prop_map(Hostile::Proof),
        any::<u32>().prop_map(Hostile::PeerInfo),
        any::<u64>().prop_map(Hostile::Heartbeat),
        Just(Hostile::Error),
        Just(Hostile::Malformed),
        Just(Hostile::Close),
        (0u8..150).prop_map(Hostile::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Whatever a second session without the cluster secret says, in any order, and however many come,
    /// the follower's live session stays up and its clients are never stopped.
    #[test]
    fn a_hostile_second_session_never_touches_the_live_one(
        script in proptest::collection::vec(hostile(), 0..24)
    ) {
        let mut p = Pair::standard(1);
        p.register(0, 1, BandwidthClass::Low);
        p.register(1, 1, BandwidthClass::Low);
        p.run_for(Duration::from_millis(20));
        assert_eq!(p.m[1].link_status(), [LinkStatus::Up]);
        let stops = stops_told(&p, 1);
        let steps = p.steps[1].len();
        let ic = InterconnectId(0);
        let mut session = SessionId(100);
        for step in script {
            let msg = match step {
                Hostile::Connect => {
                    session = SessionId(session.0 + 1);
                    p.input(1, Input::SessionEstablished {
                        ic,
                        session,
                        control_vi: vi(0, 9000 + session.0 as u32),
                        windows: vec![],
                    });
                    None
                }
                Hostile::Hello(kind, nonce) => {
                    let mut h = Hello {
                        min_version: PROTOCOL_VERSION,
                        max_version: PROTOCOL_VERSION,
                        features: 0,
                        node: NodeId(1),
                        cluster: ClusterId(7),
                        incarnation: 5,
                        nonce,
                    };
                    match kind {
                        1 => h.cluster = ClusterId(8),
                        2 => h.node = NodeId(3),
                        3 => {
                            h.min_version = PROTOCOL_VERSION + 1;
                            h.max_version = PROTOCOL_VERSION + 1;
                        }
                        _ => {}
                    }
                    Some(Message::Hello(h))
                }
                Hostile::Challenge(c) => Some(Message::AuthChallenge(AuthChallenge { challenge: c })),
                Hostile::Proof(m) => Some(Message::AuthResponse(AuthResponse { mac: m })),
                Hostile::PeerInfo(q) => Some(Message::PeerInfo(PeerInfo {
                    control_vi: vi(0, q),
                    windows: vec![],
                })),
                Hostile::Heartbeat(seq) => Some(Message::Heartbeat(Heartbeat { seq, time_ns: 0 })),
                Hostile::Error => Some(Message::Error(ccm_core::wire::Error {
                    code: ErrorCode::Protocol,
                    text: "no".into(),
                })),
                Hostile::Malformed => {
                    p.input(1, Input::Malformed {
                        ic,
                        session,
                        error: DecodeError::BadMagic(*b"GET "),
                    });
                    None
                }
                Hostile::Close => {
                    p.input(1, Input::SessionClosed { ic, session });
                    None
                }
                Hostile::Wait(ms) => {
                    p.run_for(Duration::from_millis(ms as u64));
                    None
                }
            };
            if let Some(msg) = msg {
                p.input(1, Input::Message { ic, session, msg });
            }
        }
        p.run_for(Duration::from_millis(200));
        assert_eq!(p.m[1].link_status(), [LinkStatus::Up]);
        assert_eq!(stops_told(&p, 1), stops);
        let disturbed: Vec<_> = p.steps[1][steps..]
            .iter()
            .filter(|(_, s)| matches!(s, Step::Reinitialize530 { .. } | Step::StopClients520 { .. }))
            .collect();
        assert!(disturbed.is_empty(), "{disturbed:?}");
    }
}
