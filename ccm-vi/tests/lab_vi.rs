//! Device tests of ccm-vi on the rxe lab (they skip outside it): slam connect of 1/16/256 VI
//! pairs, integrity of every descriptor type, link failure -> Error -> flush -> reset ->
//! reconnect on the other interconnect, protection tags, stale addresses, credits.

use ccm_verbs::lab::{LabTopology, Side};
use ccm_vi::*;
use std::time::{Duration, Instant};

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(10);

fn open(lab: &LabTopology, ic: usize, side: Side) -> Nic {
    let s = lab.ic(ic).side(side);
    Nic::open(&s.device, 1, s.ip, ic as u8).expect("open NIC")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rdma_attrs() -> ViAttributes {
    ViAttributes {
        enable_rdma_write: true,
        enable_rdma_read: true,
        send_depth: 16,
        recv_depth: 16,
        ..ViAttributes::default()
    }
}

/// Posts `n` receives of `len` bytes each from `mem` (slot i at offset i*len).
fn post_recvs(vi: &Vi, mem: &ViMemory, n: usize, len: usize) {
    for i in 0..n {
        let seg = [mem.segment(i * len, len).unwrap()];
        vi.post_recv(&RecvDesc {
            id: i as u64,
            segments: &seg,
        })
        .expect("post recv");
    }
}

fn slam_pairs(lab: &LabTopology, n: usize) {
    let a = open(lab, 0, Side::A);
    let b = open(lab, 0, Side::B);
    let (ta, tb) = (a.create_ptag().unwrap(), b.create_ptag().unwrap());
    let cq_size = (n as u32) * 8 + 16;
    let (sa, ra) = (a.create_cq(cq_size).unwrap(), a.create_cq(cq_size).unwrap());
    let (sb, rb) = (b.create_cq(cq_size).unwrap(), b.create_cq(cq_size).unwrap());
    let attrs = ViAttributes {
        send_depth: 2,
        recv_depth: 2,
        max_segments: 1,
        ..ViAttributes::default()
    };
    let t0 = Instant::now();
    let vis_a: Vec<Vi> = (0..n)
        .map(|_| a.create_vi(&ta, &attrs, Some(&sa), Some(&ra)).unwrap())
        .collect();
    let vis_b: Vec<Vi> = (0..n)
        .map(|_| b.create_vi(&tb, &attrs, Some(&sb), Some(&rb)).unwrap())
        .collect();
    let created = t0.elapsed();
    let ma = ta
        .register_zeroed(64 * n, MemAttributes::default())
        .unwrap();
    let mut mb = tb
        .register_zeroed(64 * n, MemAttributes::default())
        .unwrap();
    for (i, vi) in vis_a.iter().enumerate() {
        let seg = [ma.segment(i * 64, 64).unwrap()];
        vi.post_recv(&RecvDesc {
            id: i as u64,
            segments: &seg,
        })
        .unwrap();
    }
    for (i, vi) in vis_b.iter().enumerate() {
        let seg = [mb.segment(i * 64, 64).unwrap()];
        vi.post_recv(&RecvDesc {
            id: i as u64,
            segments: &seg,
        })
        .unwrap();
    }
    // The manager's exchange: one batch of addresses each way.
    let mut batch_a = Vec::new();
    encode_batch(
        &vis_a
            .iter()
            .map(|v| v.address().unwrap())
            .collect::<Vec<_>>(),
        &mut batch_a,
    )
    .unwrap();
    let mut batch_b = Vec::new();
    encode_batch(
        &vis_b
            .iter()
            .map(|v| v.address().unwrap())
            .collect::<Vec<_>>(),
        &mut batch_b,
    )
    .unwrap();
    let addrs_a = decode_batch(&batch_a).unwrap();
    let addrs_b = decode_batch(&batch_b).unwrap();
    let t1 = Instant::now();
    for (vi, r) in vis_a.iter().zip(&addrs_b) {
        vi.slam_connect(r).expect("slam connect A");
    }
    for (vi, r) in vis_b.iter().zip(&addrs_a) {
        vi.slam_connect(r).expect("slam connect B");
    }
    let connected = t1.elapsed();
    // Idempotent: the same remote again is a no-op.
    vis_a[0]
        .slam_connect(&addrs_b[0])
        .expect("same remote again");
    eprintln!(
        "SLAM N={n}: create {n}+{n} VIs {:.2} ms, slam connect {n}+{n} VIs {:.2} ms ({:.1} us/VI), addresses {} bytes per side",
        created.as_secs_f64() * 1e3,
        connected.as_secs_f64() * 1e3,
        connected.as_secs_f64() * 1e6 / (2 * n) as f64,
        batch_a.len()
    );
    for vi in vis_a.iter().chain(&vis_b) {
        assert_eq!(vi.state(), ViState::Connected);
        assert_eq!(vi.path_mtu(), Some(ccm_verbs::Mtu::Mtu1024));
    }
    // Data on every pair, A -> B, verified.
    let mut src = ta
        .register_zeroed(32 * n, MemAttributes::default())
        .unwrap();
    for i in 0..n {
        src.as_mut_slice()[i * 32..(i + 1) * 32].copy_from_slice(&pattern(32, i as u8));
    }
    for (i, vi) in vis_a.iter().enumerate() {
        let seg = [src.segment(i * 32, 32).unwrap()];
        vi.post_send(&SendDesc::send(1000 + i as u64, &seg).with_imm(i as u32))
            .expect("post send");
    }
    let mut got = Vec::new();
    sa.wait_many(n, WAIT, &mut got).unwrap();
    assert_eq!(got.len(), n, "send completions");
    assert!(got
        .iter()
        .all(|c| c.is_success() && c.op == CompletedOp::Send));
    let mut got = Vec::new();
    rb.wait_many(n, WAIT, &mut got).unwrap();
    assert_eq!(got.len(), n, "receive completions");
    for c in &got {
        assert!(c.is_success(), "{c:?}");
        let i = c.id as usize;
        let vi = vis_b.iter().find(|v| v.id() == c.vi).expect("known VI");
        assert_eq!(
            vi.id(),
            vis_b[i].id(),
            "completion on the VI the receive was posted to"
        );
        assert_eq!(c.imm, Some(i as u32));
        assert_eq!(c.byte_len, 32);
        assert_eq!(
            &mb.as_mut_slice()[i * 64..i * 64 + 32],
            &pattern(32, i as u8)[..]
        );
    }
    eprintln!("SLAM N={n}: {n} messages verified");
}

#[test]
fn slam_connect_1_16_256_pairs_with_data() {
    let Some(lab) = LabTopology::from_env_or_skip("lab_vi::slam_connect_1_16_256_pairs_with_data")
    else {
        return;
    };
    for n in [1, 16, 256] {
        slam_pairs(&lab, n);
    }
}

struct Pair {
    a: Vi,
    b: Vi,
    ta: Ptag,
    tb: Ptag,
}

/// One VI pair with private CQs on interconnect `ic`, one client tag per side (not connected).
fn pair(lab: &LabTopology, ic: usize, attrs: &ViAttributes) -> (Nic, Nic, Pair) {
    let na = open(lab, ic, Side::A);
    let nb = open(lab, ic, Side::B);
    let ta = na.create_ptag().unwrap();
    let tb = nb.create_ptag().unwrap();
    let a = na.create_vi(&ta, attrs, None, None).unwrap();
    let b = nb.create_vi(&tb, attrs, None, None).unwrap();
    (na, nb, Pair { a, b, ta, tb })
}

fn connect(p: &Pair) {
    let aa = p.a.address().unwrap();
    let ab = p.b.address().unwrap();
    p.a.slam_connect(&ab).unwrap();
    p.b.slam_connect(&aa).unwrap();
}

#[test]
fn every_descriptor_type_moves_data_intact() {
    let Some(lab) =
        LabTopology::from_env_or_skip("lab_vi::every_descriptor_type_moves_data_intact")
    else {
        return;
    };
    let (_na, _nb, p) = pair(&lab, 0, &rdma_attrs());
    let rw = MemAttributes {
        enable_rdma_write: true,
        enable_rdma_read: true,
    };
    let mut src =
        p.ta.register_zeroed(8192, MemAttributes::default())
            .unwrap();
    let sink =
        p.ta.register_zeroed(8192, MemAttributes::default())
            .unwrap();
    let rbuf =
        p.tb.register_zeroed(16 * 4096, MemAttributes::default())
            .unwrap();
    let mut window_mem = p.tb.register_zeroed(8192, rw).unwrap();
    // B's exposed window: first half written by A, second half read by A.
    window_mem.as_mut_slice()[4096..].copy_from_slice(&pattern(4096, 77));
    let window = window_mem.expose(0, 8192).unwrap();
    post_recvs(&p.b, &rbuf, 8, 4096);
    post_recvs(&p.a, &sink, 2, 64);
    connect(&p);
    src.as_mut_slice().copy_from_slice(&pattern(8192, 3));

    // SEND, 3 segments (gather) -> one receive.
    let segs = [
        src.segment(0, 100).unwrap(),
        src.segment(1000, 200).unwrap(),
        src.segment(3000, 3000).unwrap(),
    ];
    p.a.post_send(&SendDesc::send(1, &segs)).unwrap();
    let c = p.a.send_wait(WAIT).unwrap().expect("send completion");
    assert_eq!(
        (c.id, c.status, c.op),
        (1, WcStatus::Success, CompletedOp::Send)
    );
    let r = p.b.recv_wait(WAIT).unwrap().expect("recv completion");
    assert_eq!(
        (r.id, r.status, r.byte_len, r.imm),
        (0, WcStatus::Success, 3300, None)
    );
    let mut want = Vec::new();
    want.extend_from_slice(&src.as_slice()[0..100]);
    want.extend_from_slice(&src.as_slice()[1000..1200]);
    want.extend_from_slice(&src.as_slice()[3000..6000]);
    assert_eq!(&rbuf.as_slice()[0..3300], &want[..]);

    // SEND with immediate data (full 32 bits).
    let seg = [src.segment(10, 1).unwrap()];
    p.a.post_send(&SendDesc::send(2, &seg).with_imm(0xdead_beef))
        .unwrap();
    assert!(p.a.send_wait(WAIT).unwrap().unwrap().is_success());
    let r = p.b.recv_wait(WAIT).unwrap().unwrap();
    assert_eq!(
        (r.id, r.byte_len, r.imm, r.op),
        (1, 1, Some(0xdead_beef), CompletedOp::Recv)
    );
    assert_eq!(rbuf.as_slice()[4096], src.as_slice()[10]);

    // Zero-length SEND.
    p.a.post_send(&SendDesc::send(3, &[]).with_imm(7)).unwrap();
    assert!(p.a.send_wait(WAIT).unwrap().unwrap().is_success());
    let r = p.b.recv_wait(WAIT).unwrap().unwrap();
    assert_eq!((r.id, r.byte_len, r.imm), (2, 0, Some(7)));

    // RDMA WRITE (no receive consumed at B).
    let seg = [src.segment(0, 4000).unwrap()];
    p.a.post_send(&SendDesc::write(4, window.slice(0, 4000).unwrap(), &seg))
        .unwrap();
    let c = p.a.send_wait(WAIT).unwrap().unwrap();
    assert_eq!(
        (c.id, c.status, c.op),
        (4, WcStatus::Success, CompletedOp::RdmaWrite)
    );
    assert_eq!(
        p.b.recv_done().unwrap(),
        None,
        "a plain write consumes no receive"
    );
    assert_eq!(&window_mem.as_slice()[..4000], &src.as_slice()[..4000]);

    // RDMA WRITE with immediate: data to the window, immediate to a receive.
    let seg = [src.segment(5000, 96).unwrap()];
    p.a.post_send(&SendDesc::write(5, window.slice(4000, 96).unwrap(), &seg).with_imm(0x1234_5678))
        .unwrap();
    assert!(p.a.send_wait(WAIT).unwrap().unwrap().is_success());
    let r = p.b.recv_wait(WAIT).unwrap().unwrap();
    assert_eq!(
        (r.id, r.op, r.imm, r.byte_len),
        (3, CompletedOp::RecvRdmaWrite, Some(0x1234_5678), 96)
    );
    assert_eq!(
        &window_mem.as_slice()[4000..4096],
        &src.as_slice()[5000..5096]
    );

    // RDMA READ of B's second half, scattered into two segments of A.
    let segs = [
        src.segment(0, 1000).unwrap(),
        src.segment(2000, 3096).unwrap(),
    ];
    p.a.post_send(&SendDesc::read(6, window.slice(4096, 4096).unwrap(), &segs))
        .unwrap();
    let c = p.a.send_wait(WAIT).unwrap().unwrap();
    assert_eq!(
        (c.id, c.status, c.op, c.byte_len),
        (6, WcStatus::Success, CompletedOp::RdmaRead, 4096)
    );
    let expect = pattern(4096, 77);
    assert_eq!(&src.as_slice()[..1000], &expect[..1000]);
    assert_eq!(&src.as_slice()[2000..5096], &expect[1000..]);

    // B -> A SEND: the other direction works too.
    let bsrc = p.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    let seg = [bsrc.segment(0, 64).unwrap()];
    p.b.post_send(&SendDesc::send(9, &seg)).unwrap();
    assert!(p.b.send_wait(WAIT).unwrap().unwrap().is_success());
    let r = p.a.recv_wait(WAIT).unwrap().unwrap();
    assert_eq!((r.id, r.byte_len), (0, 64));

    // Local checks: read with immediate data, too many segments, too large.
    let one = [src.segment(0, 8).unwrap()];
    assert!(matches!(
        p.a.post_send(&SendDesc::read(7, window.slice(0, 8).unwrap(), &one).with_imm(1)),
        Err(Error::InvalidDescriptor(_))
    ));
    let five = [one[0]; 5];
    assert!(matches!(
        p.a.post_send(&SendDesc::send(8, &five)),
        Err(Error::TooManySegments { .. })
    ));
    assert_eq!(p.a.state(), ViState::Connected);
    assert_eq!(p.b.state(), ViState::Connected);
}

#[test]
fn credits_stop_a_sender_before_rnr_and_resume() {
    let Some(lab) =
        LabTopology::from_env_or_skip("lab_vi::credits_stop_a_sender_before_rnr_and_resume")
    else {
        return;
    };
    let attrs = ViAttributes {
        send_depth: 32,
        recv_depth: 4,
        ..ViAttributes::default()
    };
    let (_na, _nb, p) = pair(&lab, 0, &attrs);
    let rbuf =
        p.tb.register_zeroed(4 * 64, MemAttributes::default())
            .unwrap();
    let abuf = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    let mut src = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    src.as_mut_slice().copy_from_slice(&pattern(64, 9));
    post_recvs(&p.b, &rbuf, 4, 64);
    post_recvs(&p.a, &abuf, 1, 64);
    connect(&p);
    assert_eq!(p.a.send_credits(), 4);
    let seg = [src.segment(0, 64).unwrap()];
    for i in 0..4 {
        p.a.post_send(&SendDesc::send(i, &seg)).unwrap();
    }
    // B posted 4 receives: a 5th message would hit RNR, so it is refused locally.
    assert_eq!(
        p.a.post_send(&SendDesc::send(4, &seg)),
        Err(Error::NoCredits)
    );
    let mut delivered = 0u64;
    let deadline = Instant::now() + WAIT;
    let total = 40u64;
    let mut sent = 4u64;
    while delivered < total {
        assert!(
            Instant::now() < deadline,
            "only {delivered} of {total} delivered"
        );
        while let Some(c) = p.a.send_done().unwrap() {
            assert!(c.is_success(), "{c:?}");
        }
        if let Some(r) = p.b.recv_wait(Duration::from_millis(50)).unwrap() {
            assert!(r.is_success(), "{r:?}");
            assert_eq!(
                &rbuf.as_slice()[r.id as usize * 64..r.id as usize * 64 + 64],
                src.as_slice()
            );
            delivered += 1;
            // Repost the same buffer: a credit for A (written to A's mailbox).
            let seg = [rbuf.segment(r.id as usize * 64, 64).unwrap()];
            p.b.post_recv(&RecvDesc {
                id: r.id,
                segments: &seg,
            })
            .unwrap();
        }
        while sent < total {
            match p.a.post_send(&SendDesc::send(sent, &seg)) {
                Ok(()) => sent += 1,
                Err(Error::NoCredits) => break,
                Err(e) => panic!("post send: {e}"),
            }
        }
    }
    while let Some(c) = p.a.send_wait(Duration::from_millis(100)).unwrap() {
        assert!(c.is_success());
    }
    assert_eq!(p.a.state(), ViState::Connected, "no RNR error");
    assert_eq!(p.b.state(), ViState::Connected);
    eprintln!("CREDITS: {total} messages through 4 receive credits, no RNR");
}

#[test]
fn protection_tags_refuse_foreign_memory() {
    let Some(lab) = LabTopology::from_env_or_skip("lab_vi::protection_tags_refuse_foreign_memory")
    else {
        return;
    };
    let (na, nb, p) = pair(&lab, 0, &rdma_attrs());
    // A second client on each node, with its own tag.
    let other_a = na.create_ptag().unwrap();
    let other_b = nb.create_ptag().unwrap();
    assert_ne!(other_a.id(), p.ta.id());
    let foreign = other_a
        .register_zeroed(64, MemAttributes::default())
        .unwrap();
    let rw = MemAttributes {
        enable_rdma_write: true,
        enable_rdma_read: true,
    };
    // B's memory: one region of B's own client exposed, one of the other client (exposed to
    // *its* peers), one local-only region.
    let own_window_mem = p.tb.register_zeroed(64, rw).unwrap();
    let mut other_client_mem = other_b.register_zeroed(64, rw).unwrap();
    other_client_mem.as_mut_slice().fill(0x5a);
    let mut local_only = p.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    local_only.as_mut_slice().fill(0x33);
    assert!(matches!(
        local_only.expose(0, 64),
        Err(Error::NotExposed(_))
    ));
    let rbuf = p.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    post_recvs(&p.b, &rbuf, 1, 64);
    let abuf = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    post_recvs(&p.a, &abuf, 1, 64);
    connect(&p);

    // A descriptor naming another tag's memory is refused locally, for every queue.
    let seg = [foreign.segment(0, 64).unwrap()];
    assert_eq!(
        p.a.post_send(&SendDesc::send(1, &seg)),
        Err(Error::ProtectionTag {
            vi: p.ta.id(),
            segment: other_a.id()
        })
    );
    assert!(matches!(
        p.a.post_recv(&RecvDesc {
            id: 1,
            segments: &seg
        }),
        Err(Error::ProtectionTag { .. })
    ));
    let own_window = own_window_mem.expose(0, 64).unwrap();
    assert!(matches!(
        p.a.post_send(&SendDesc::write(1, own_window.slice(0, 64).unwrap(), &seg)),
        Err(Error::ProtectionTag { .. })
    ));
    assert_eq!(
        p.a.state(),
        ViState::Connected,
        "local refusals do not break the VI"
    );

    // A write with the right tag locally into the other client's exposed memory at B: the
    // device refuses it (rkey of another PD); the sender sees the error, B's bytes are intact.
    let mut src = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    src.as_mut_slice().fill(0xee);
    let seg = [src.segment(0, 64).unwrap()];
    let foreign_window = other_client_mem.expose(0, 64).unwrap();
    p.a.post_send(&SendDesc::write(
        2,
        foreign_window.slice(0, 64).unwrap(),
        &seg,
    ))
    .unwrap();
    let c =
        p.a.send_wait(WAIT)
            .unwrap()
            .expect("completion of the refused write");
    assert_eq!(c.status, WcStatus::RemoteAccess, "{c:?}");
    assert_eq!(p.a.state(), ViState::Error);
    assert_eq!(other_client_mem.as_slice(), &[0x5au8; 64][..]);
    let b_state = p.b.refresh_state().unwrap();
    eprintln!(
        "PROTECTION: foreign write -> sender {:?}, responder VI {:?}",
        c.status, b_state
    );
}

#[test]
fn unexposed_region_write_fails_on_the_sender() {
    let Some(lab) =
        LabTopology::from_env_or_skip("lab_vi::unexposed_region_write_fails_on_the_sender")
    else {
        return;
    };
    let (_na, _nb, p) = pair(&lab, 0, &rdma_attrs());
    let rw = MemAttributes {
        enable_rdma_write: true,
        enable_rdma_read: false,
    };
    let exposed = p.tb.register_zeroed(64, rw).unwrap();
    let mut local_only = p.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    local_only.as_mut_slice().fill(0x33);
    let rbuf = p.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    post_recvs(&p.b, &rbuf, 1, 64);
    let abuf = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    post_recvs(&p.a, &abuf, 1, 64);
    connect(&p);
    let src = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    let seg = [src.segment(0, 64).unwrap()];
    // The peer forges a target: the local-only region's address with the only key it has.
    let forged = RemoteAddr {
        addr: local_only.addr(),
        rkey: exposed.expose(0, 64).unwrap().rkey,
    };
    p.a.post_send(&SendDesc::write(1, forged, &seg)).unwrap();
    let c = p.a.send_wait(WAIT).unwrap().expect("completion");
    assert_eq!(c.status, WcStatus::RemoteAccess, "{c:?}");
    assert_eq!(
        local_only.as_slice(),
        &[0x33u8; 64][..],
        "target bytes untouched"
    );
    eprintln!(
        "UNEXPOSED: forged write -> sender {:?}, responder {:?}",
        c.status,
        p.b.refresh_state().unwrap()
    );
}

#[test]
fn link_down_errors_flushes_then_reset_and_reconnect_on_other_interconnect() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "lab_vi::link_down_errors_flushes_then_reset_and_reconnect_on_other_interconnect",
    ) else {
        return;
    };
    let attrs = ViAttributes {
        send_depth: 8,
        recv_depth: 8,
        ..ViAttributes::default()
    };
    let (_na, _nb, p) = pair(&lab, 0, &attrs);
    let abuf =
        p.ta.register_zeroed(8 * 64, MemAttributes::default())
            .unwrap();
    let bbuf =
        p.tb.register_zeroed(8 * 64, MemAttributes::default())
            .unwrap();
    post_recvs(&p.a, &abuf, 8, 64);
    post_recvs(&p.b, &bbuf, 8, 64);
    connect(&p);
    let src = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    let seg = [src.segment(0, 64).unwrap()];
    // One message gets through first.
    p.a.post_send(&SendDesc::send(100, &seg)).unwrap();
    assert!(p.a.send_wait(WAIT).unwrap().unwrap().is_success());
    assert!(p.b.recv_wait(WAIT).unwrap().unwrap().is_success());

    lab.fault(&["link-down", "0"]).expect("link-down 0");
    let t0 = Instant::now();
    for i in 0..3 {
        p.a.post_send(&SendDesc::send(200 + i, &seg)).unwrap();
    }
    // Every outstanding descriptor of A completes: 3 sends and 8 receives, the first send
    // with the transport error, the rest flushed.
    let mut sends = Vec::new();
    let mut recvs = Vec::new();
    let deadline = Instant::now() + WAIT;
    while sends.len() < 3 || recvs.len() < 8 {
        assert!(Instant::now() < deadline, "sends {sends:?} recvs {recvs:?}");
        if let Some(c) = p.a.send_wait(Duration::from_millis(20)).unwrap() {
            sends.push(c);
        }
        while let Some(c) = p.a.recv_done().unwrap() {
            recvs.push(c);
        }
    }
    let detect = t0.elapsed();
    assert!(sends.iter().all(|c| !c.is_success()), "{sends:?}");
    assert!(
        recvs.iter().all(|c| c.status == WcStatus::Flushed),
        "{recvs:?}"
    );
    assert_eq!(p.a.state(), ViState::Error);
    let cause = p.a.error_cause();
    assert_eq!(p.a.outstanding(), 0);
    eprintln!(
        "LINK DOWN: A in Error after {:.1} ms, cause {cause:?}, first send status {:?}",
        detect.as_secs_f64() * 1e3,
        sends[0].status
    );
    assert_eq!(p.a.post_send(&SendDesc::send(1, &seg)), Err(Error::InError));
    assert!(matches!(
        p.a.post_recv(&RecvDesc {
            id: 1,
            segments: &seg
        }),
        Err(Error::InError)
    ));
    // Reset: back to Idle, fresh PSN.
    let old = p.a.address();
    assert!(old.is_err(), "no address while in Error");
    p.a.reset(WAIT).expect("reset");
    assert_eq!(p.a.state(), ViState::Idle);

    // The client's traffic moves to interconnect 1: its VIs there slam connect at once.
    let (_n1a, _n1b, q) = pair(&lab, 1, &attrs);
    let qa = q.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    let qb = q.tb.register_zeroed(64, MemAttributes::default()).unwrap();
    post_recvs(&q.a, &qa, 1, 64);
    post_recvs(&q.b, &qb, 1, 64);
    let t1 = Instant::now();
    connect(&q);
    let mut qsrc = q.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    qsrc.as_mut_slice().copy_from_slice(&pattern(64, 42));
    let qseg = [qsrc.segment(0, 64).unwrap()];
    q.a.post_send(&SendDesc::send(1, &qseg)).unwrap();
    assert!(q.a.send_wait(WAIT).unwrap().unwrap().is_success());
    let r = q.b.recv_wait(WAIT).unwrap().unwrap();
    assert!(r.is_success());
    assert_eq!(qb.as_slice(), qsrc.as_slice());
    eprintln!(
        "FAILOVER: interconnect 1 connected and delivered in {:.2} ms",
        t1.elapsed().as_secs_f64() * 1e3
    );

    lab.fault(&["link-up", "0"]).expect("link-up 0");
    // B saw its port go down; flush its side too and reconnect the reset pair on ic 0.
    p.b.reset(WAIT).expect("reset B");
    // B's receives still outstanding at the reset complete, flushed.
    let mut flushed = 0;
    while let Some(c) = p.b.recv_done().unwrap() {
        assert_eq!(c.status, WcStatus::Flushed, "{c:?}");
        flushed += 1;
    }
    assert_eq!(flushed, 7, "8 posted, 1 consumed");
    assert_eq!(p.b.outstanding(), 0);
    post_recvs(&p.a, &abuf, 2, 64);
    post_recvs(&p.b, &bbuf, 2, 64);
    connect(&p);
    p.a.post_send(&SendDesc::send(300, &seg)).unwrap();
    let c = p.a.send_wait(WAIT).unwrap().unwrap();
    assert!(c.is_success(), "{c:?}");
    assert!(p.b.recv_wait(WAIT).unwrap().unwrap().is_success());
}

#[test]
fn stale_remote_address_fails_cleanly() {
    let Some(lab) = LabTopology::from_env_or_skip("lab_vi::stale_remote_address_fails_cleanly")
    else {
        return;
    };
    let attrs = ViAttributes {
        send_depth: 4,
        recv_depth: 4,
        ..ViAttributes::default()
    };
    let (_na, _nb, p) = pair(&lab, 0, &attrs);
    let abuf =
        p.ta.register_zeroed(4 * 64, MemAttributes::default())
            .unwrap();
    let bbuf =
        p.tb.register_zeroed(4 * 64, MemAttributes::default())
            .unwrap();
    post_recvs(&p.b, &bbuf, 2, 64);
    let stale_b = p.b.address().unwrap();
    // B resets with a new QP (new VI number) before A connects: A holds a stale address.
    p.b.reset_recreate(WAIT).unwrap();
    let fresh_b = {
        post_recvs(&p.b, &bbuf, 2, 64);
        p.b.address().unwrap()
    };
    assert_ne!(stale_b.vi_number, fresh_b.vi_number);
    post_recvs(&p.a, &abuf, 2, 64);
    let aa = p.a.address().unwrap();
    p.a.slam_connect(&stale_b)
        .expect("slam connect is local: it succeeds");
    p.b.slam_connect(&aa).unwrap();
    let src = p.ta.register_zeroed(64, MemAttributes::default()).unwrap();
    let seg = [src.segment(0, 64).unwrap()];
    let t0 = Instant::now();
    p.a.post_send(&SendDesc::send(1, &seg)).unwrap();
    let c = p.a.send_wait(WAIT).unwrap().expect("bounded failure");
    let took = t0.elapsed();
    assert!(!c.is_success(), "{c:?}");
    assert_eq!(p.a.state(), ViState::Error);
    let budget = attrs.timeouts.nominal_detection() * 3;
    assert!(took < budget, "took {took:?}, budget {budget:?}");
    eprintln!(
        "STALE: send to old VI number fails with {:?} after {:.1} ms",
        c.status,
        took.as_secs_f64() * 1e3
    );
    // A different remote while connected is an error, not a silent reconnect.
    p.a.reset(WAIT).unwrap();
    post_recvs(&p.a, &abuf, 2, 64);
    let _ = p.a.address().unwrap();
    p.a.slam_connect(&fresh_b).unwrap();
    assert!(matches!(
        p.a.slam_connect(&stale_b),
        Err(Error::AlreadyConnected { .. })
    ));
}
