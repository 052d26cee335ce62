//! Whatever a hostile partner sends on an established session, the manager does not panic:
//! every frame that decodes is fed to a manager mid-handshake, and every one that does not is
//! reported as malformed.
#![no_main]

use ccm_core::manager::{Config, Input, Manager, SessionId};
use ccm_core::wire::{ClusterId, InterconnectId, Message, Mtu, NodeId, ViAddress};
use ccm_core::Time;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config::new(NodeId(2), NodeId(1), ClusterId(7), b"s".to_vec(), 2);
    let mut m = Manager::new(cfg, Time::ZERO, [0; 32]);
    let ic = InterconnectId(0);
    let session = SessionId(1);
    let control_vi = ViAddress {
        interconnect: ic,
        qpn: 1,
        gid: [0; 16],
        psn: 1,
        mtu: Mtu::M1024,
    };
    m.handle(Time(1), Input::SessionEstablished { ic, session, control_vi, windows: vec![] });
    let mut rest = data;
    let mut t = 2;
    while !rest.is_empty() {
        t += 1_000;
        match Message::decode(rest) {
            Ok((msg, used)) => {
                rest = &rest[used..];
                m.handle(Time(t), Input::Message { ic, session, msg });
            }
            Err(error) => {
                m.handle(Time(t), Input::Malformed { ic, session, error });
                break;
            }
        }
        while m.poll_action().is_some() {}
    }
    m.handle(Time(t + 1_000_000_000), Input::Timer);
});
