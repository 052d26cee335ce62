//! Property tests of the wire encoding: every valid message round-trips, and no byte string,
//! however hostile, makes the decoder panic or read past the frame.

use ccm_core::wire::*;
use proptest::prelude::*;

fn vi() -> impl Strategy<Value = ViAddress> {
    (
        any::<u8>(),
        0..=MAX_QPN,
        any::<[u8; 16]>(),
        0..=MAX_QPN,
        prop::sample::select(vec![
            Mtu::M256,
            Mtu::M512,
            Mtu::M1024,
            Mtu::M2048,
            Mtu::M4096,
        ]),
    )
        .prop_map(|(ic, qpn, gid, psn, mtu)| ViAddress {
            interconnect: InterconnectId(ic),
            qpn,
            gid,
            psn,
            mtu,
        })
}

fn window() -> impl Strategy<Value = MemoryWindow> {
    (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(addr, len, rkey)| MemoryWindow {
        addr,
        len,
        rkey,
    })
}

fn name(max: usize) -> impl Strategy<Value = String> {
    // Multi-byte characters included; the limit is in bytes.
    proptest::string::string_regex(".{0,20}")
        .expect("regex")
        .prop_filter("fits the byte limit", move |s| s.len() <= max)
}

fn entry() -> impl Strategy<Value = ClientEntry> {
    (
        any::<u32>(),
        name(MAX_NAME_LEN),
        any::<u64>(),
        prop::collection::vec(vi(), 0..5),
        prop::collection::vec(window(), 0..4),
        // Often none (a message of a manager of protocol version 2), else up to the limit.
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(any::<u8>(), 0..=MAX_PRIVATE)
        ],
    )
        .prop_map(|(c, name, g, vis, windows, private)| ClientEntry {
            client: ClientId(c),
            name,
            generation: Generation(g),
            vis,
            windows,
            private,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(a, b, f, n, c, i, nonce)| Message::Hello(Hello {
                min_version: a,
                max_version: b,
                features: f,
                node: NodeId(n),
                cluster: ClusterId(c),
                incarnation: i,
                nonce
            })),
        any::<[u8; 32]>().prop_map(|c| Message::AuthChallenge(AuthChallenge { challenge: c })),
        any::<[u8; 32]>().prop_map(|m| Message::AuthResponse(AuthResponse { mac: m })),
        (vi(), prop::collection::vec(window(), 0..4)).prop_map(|(v, w)| Message::PeerInfo(
            PeerInfo {
                control_vi: v,
                windows: w
            }
        )),
        prop::collection::vec(entry(), 0..4)
            .prop_map(|e| Message::ClientInfo(ClientInfo { entries: e })),
        prop::collection::vec(entry(), 0..4)
            .prop_map(|e| Message::Standby(ClientInfo { entries: e })),
        prop::collection::vec((any::<u32>(), any::<u64>()), 0..8).prop_map(|v| Message::Ready(
            Ready {
                clients: v
                    .into_iter()
                    .map(|(c, g)| ClientRef {
                        client: ClientId(c),
                        generation: Generation(g)
                    })
                    .collect()
            }
        )),
        (
            any::<u32>(),
            name(MAX_NAME_LEN),
            any::<bool>(),
            0..=MAX_VIS as u8,
            any::<u64>()
        )
            .prop_map(|(c, n, high, v, s)| Message::ClientOpen(ClientOpen {
                client: ClientId(c),
                name: n,
                class: if high {
                    BandwidthClass::High
                } else {
                    BandwidthClass::Low
                },
                vi_count: v,
                seq: s
            })),
        (any::<u32>(), any::<u64>()).prop_map(|(c, s)| Message::ClientClose(ClientClose {
            client: ClientId(c),
            seq: s
        })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(s, t)| Message::Heartbeat(Heartbeat { seq: s, time_ns: t })),
        (any::<u8>(), any::<u64>()).prop_map(|(i, t)| Message::Stop(Stop {
            interconnect: InterconnectId(i),
            session_tag: t
        })),
        any::<u8>().prop_map(|i| Message::Resume(Resume {
            interconnect: InterconnectId(i)
        })),
        (any::<u32>(), any::<u64>()).prop_map(|(c, g)| Message::ClientReset(ClientReset {
            client: ClientId(c),
            generation: Generation(g)
        })),
        prop::collection::vec((any::<u32>(), any::<u64>()), 0..40).prop_map(|v| {
            Message::LoadReport(LoadReport {
                clients: v
                    .into_iter()
                    .map(|(c, b)| ClientLoad {
                        client: ClientId(c),
                        bytes: b,
                    })
                    .collect(),
            })
        }),
        (
            prop::sample::select(vec![
                ErrorCode::IncompatibleVersion,
                ErrorCode::ForeignCluster,
                ErrorCode::AuthenticationFailed,
                ErrorCode::UnexpectedNode,
                ErrorCode::Protocol,
                ErrorCode::Malformed,
                ErrorCode::Unknown(4242),
            ]),
            name(MAX_TEXT_LEN)
        )
            .prop_map(|(code, text)| Message::Error(Error { code, text })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_valid_message_round_trips(m in message()) {
        let bytes = m.to_bytes();
        let (back, used) = Message::decode(&bytes).expect("decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_overrun(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((m, used)) = Message::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            // Whatever decodes re-encodes to the same frame: there is one encoding per message.
            prop_assert_eq!(&m.to_bytes()[..], &bytes[..used]);
        }
    }

    #[test]
    fn corrupting_a_valid_frame_never_panics(m in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = m.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok((m2, used)) = Message::decode(&bytes) {
            prop_assert_eq!(&m2.to_bytes()[..], &bytes[..used]);
        }
    }

    #[test]
    fn a_client_info_with_any_private_data_tail_has_one_encoding(
        entries in prop::collection::vec(entry(), 1..4),
        tail in prop::collection::vec(prop_oneof![Just(0u8), 0u8..4, any::<u8>()], 0..12),
    ) {
        // The entries without private data, then bytes where a private-data block would be.
        let entries = entries.into_iter().map(|e| ClientEntry { private: vec![], ..e }).collect();
        let mut bytes = Message::ClientInfo(ClientInfo { entries }).to_bytes();
        bytes.extend_from_slice(&tail);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        if let Ok(m) = Message::decode_exact(&bytes) {
            prop_assert_eq!(m.to_bytes(), bytes);
        }
    }

    #[test]
    fn valid_header_with_random_payload_never_panics(ty in 0u8..16, payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = MAGIC.to_vec();
        bytes.push(WIRE_VERSION);
        bytes.push(ty);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let _ = Message::decode(&bytes);
    }
}

mod hostile_partner {
    use super::message;
    use ccm_core::manager::{Action, Config, Input, Manager, SessionId};
    use ccm_core::wire::*;
    use ccm_core::Time;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of well-formed but arbitrary messages on a session never panics the manager,
        /// and it never slam connects or tells a client anything for a partner that never authenticated.
        #[test]
        fn arbitrary_messages_on_a_session_never_panic_nor_go_up(msgs in prop::collection::vec(message(), 0..12)) {
            let cfg = Config::new(NodeId(2), NodeId(1), ClusterId(7), b"s".to_vec(), 2);
            let mut m = Manager::new(cfg, Time::ZERO, [0; 32]);
            let ic = InterconnectId(0);
            let session = SessionId(1);
            let control_vi = ViAddress { interconnect: ic, qpn: 1, gid: [0; 16], psn: 1, mtu: Mtu::M1024 };
            m.handle(Time(1), Input::SessionEstablished { ic, session, control_vi, windows: vec![] });
            let mut t = 1;
            for msg in msgs {
                t += 1_000;
                m.handle(Time(t), Input::Message { ic, session, msg });
                m.handle(Time(t), Input::Timer);
            }
            while let Some(a) = m.poll_action() {
                prop_assert!(!matches!(a, Action::SlamConnectControl { .. } | Action::Tell { .. } | Action::SlamConnect { .. }), "{:?}", a);
            }
        }
    }
}
