//! Device tests of the data path on the lab's rxe devices: connections, every opcode verified
//! byte for byte, remote access errors, flush and reconnect, MTU refusal.

mod common;

use ccm_verbs::lab::LabTopology;
use ccm_verbs::*;
use common::*;

fn remote_rw() -> AccessFlags {
    AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ
}

#[test]
fn same_device_connection_send_recv() {
    let Some(lab) = LabTopology::from_env_or_skip("same_device_connection_send_recv") else {
        return;
    };
    let side = &lab.ic(0).a;
    let ctx = Context::open(&side.device).unwrap();
    let a = Node::on(&ctx, side);
    let b = Node::on(&ctx, side);
    let mut s = buffer(&a.pd, 4096, AccessFlags::LOCAL_WRITE);
    let r = buffer(&b.pd, 4096, AccessFlags::LOCAL_WRITE);
    let data = pattern(3000, 5); // spans three 1024-byte packets
    s.as_mut_slice()[..3000].copy_from_slice(&data);
    let rsge = [r.sge().unwrap()];
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(1, &rsge).unwrap()
    });
    let ssge = [s.slice(0, 3000).unwrap()];
    a.qp.post_send_one(&SendWr::new(2, SendOp::Send, &ssge))
        .unwrap();
    assert_eq!(one(&a.send_cq).status(), WcStatus::Success);
    let c = one(&b.recv_cq);
    assert_eq!((c.status(), c.byte_len()), (WcStatus::Success, 3000));
    assert_eq!(&r.as_slice()[..3000], &data[..]);
}

#[test]
fn write_read_imm_inline_sgl_and_chains_byte_for_byte() {
    let Some(lab) = LabTopology::from_env_or_skip("write_read_imm_inline") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    // A's memory: a Vec and an anonymous mapping; B's: a file mapping granted for remote R/W.
    let mut a_vec = buffer(&a.pd, 16384, AccessFlags::LOCAL_WRITE);
    let anon = memmap2::MmapMut::map_anon(8192).unwrap();
    let mut a_map = MemoryRegion::register(&a.pd, anon, AccessFlags::LOCAL_WRITE).unwrap();
    let file = tempfile_in_tmp();
    file.set_len(16384).unwrap();
    // SAFETY (test): the file is private to this test and not resized while mapped.
    let fmap = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    let b_mem = MemoryRegion::register(&b.pd, fmap, remote_rw()).unwrap();
    let b_recv = buffer(&b.pd, 4096, AccessFlags::LOCAL_WRITE);
    let window = b_mem.remote_window(0, b_mem.len()).unwrap();
    // The window travels as bytes, as it would out of band.
    let window = RemoteWindow::decode(&window.encode()).unwrap();

    let rsges: Vec<[Sge; 1]> = (0..4)
        .map(|i| [b_recv.slice(i * 1024, 1024).unwrap()])
        .collect();
    connect(&a, &b, remote_rw(), || {
        let wrs: Vec<RecvWr> = rsges
            .iter()
            .enumerate()
            .map(|(i, s)| RecvWr {
                wr_id: 100 + i as u64,
                sges: s,
            })
            .collect();
        b.qp.post_recv(&wrs).unwrap();
    });

    // 1. RDMA WRITE with a two-entry gather list (Vec + mapping) into B's file mapping.
    let p1 = pattern(5000, 1);
    let p2 = pattern(3000, 2);
    a_vec.as_mut_slice()[..5000].copy_from_slice(&p1);
    a_map.as_mut_slice()[..3000].copy_from_slice(&p2);
    let gather = [a_vec.slice(0, 5000).unwrap(), a_map.slice(0, 3000).unwrap()];
    a.qp.post_send_one(&SendWr::new(
        1,
        SendOp::Write(window.slice(100, 8000).unwrap()),
        &gather,
    ))
    .unwrap();
    let c = one(&a.send_cq);
    assert_eq!(
        (c.status(), c.opcode(), c.wr_id()),
        (WcStatus::Success, WcOpcode::RdmaWrite, 1)
    );
    assert_eq!(&b_mem.as_slice()[100..5100], &p1[..]);
    assert_eq!(&b_mem.as_slice()[5100..8100], &p2[..]);
    assert!(b_mem.as_slice()[..100].iter().all(|&x| x == 0));
    assert!(b_mem.as_slice()[8100..8200].iter().all(|&x| x == 0));

    // 2. RDMA READ it back into A's mapping at another offset (scatter into two entries).
    let scatter = [
        a_map.slice(4096, 4000).unwrap(),
        a_vec.slice(5000, 4000).unwrap(),
    ];
    a.qp.post_send_one(&SendWr::new(
        2,
        SendOp::Read(window.slice(100, 8000).unwrap()),
        &scatter,
    ))
    .unwrap();
    let c = one(&a.send_cq);
    assert_eq!(
        (c.status(), c.opcode(), c.byte_len()),
        (WcStatus::Success, WcOpcode::RdmaRead, 8000)
    );
    let mut back = a_map.as_slice()[4096..8096].to_vec();
    back.extend_from_slice(&a_vec.as_slice()[5000..9000]);
    let mut want = p1.clone();
    want.extend_from_slice(&p2);
    assert_eq!(back, want);

    // 3. A chain in one call: unsignalled WRITE, WRITE_WITH_IMM, inline SEND, SEND with imm.
    let p3 = pattern(700, 3);
    a_vec.as_mut_slice()[..700].copy_from_slice(&p3);
    let w_sge = [a_vec.slice(0, 700).unwrap()];
    let imm_sge = [a_vec.slice(0, 64).unwrap()];
    let inline_bytes = *b"inline payload, copied at post time";
    let chain = [
        SendWr::new(10, SendOp::Write(window.slice(9000, 700).unwrap()), &w_sge).unsignaled(),
        SendWr::new(
            11,
            SendOp::WriteWithImm(window.slice(10000, 64).unwrap(), 0xdead_beef),
            &imm_sge,
        ),
        SendWr::inline(12, SendOp::Send, &inline_bytes),
        SendWr::inline(13, SendOp::SendWithImm(0x0102_0304), b"imm+inline"),
    ];
    a.qp.post_send(&chain).unwrap();
    let sends = collect(&a.send_cq, 3);
    assert_eq!(
        sends.iter().map(|c| c.wr_id()).collect::<Vec<_>>(),
        vec![11, 12, 13]
    );
    assert!(sends.iter().all(|c| c.is_success()), "{sends:?}");
    let recvs = collect(&b.recv_cq, 3);
    assert!(recvs.iter().all(|c| c.is_success()), "{recvs:?}");
    // Receives complete in order: WRITE_WITH_IMM took recv 100, the SENDs 101 and 102.
    assert_eq!(recvs[0].wr_id(), 100);
    assert_eq!(recvs[0].opcode(), WcOpcode::RecvRdmaWithImm);
    assert_eq!(recvs[0].imm(), Some(0xdead_beef), "immediate in host order");
    assert_eq!(recvs[0].byte_len(), 64);
    assert_eq!(recvs[1].wr_id(), 101);
    assert_eq!(recvs[1].opcode(), WcOpcode::Recv);
    assert_eq!(recvs[1].imm(), None);
    assert_eq!(recvs[1].byte_len() as usize, inline_bytes.len());
    assert_eq!(
        &b_recv.as_slice()[1024..1024 + inline_bytes.len()],
        &inline_bytes
    );
    assert_eq!(recvs[2].imm(), Some(0x0102_0304));
    assert_eq!(&b_recv.as_slice()[2048..2048 + 10], b"imm+inline");
    assert_eq!(&b_mem.as_slice()[9000..9700], &p3[..]);
    assert_eq!(&b_mem.as_slice()[10000..10064], &p3[..64]);
    // The file mapping's bytes are in the file too.
    drop(b_mem);
}

fn tempfile_in_tmp() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("ccm-verbs-mr-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn bad_rkey_and_out_of_bounds_write_give_remote_access_error() {
    let Some(lab) = LabTopology::from_env_or_skip("bad_rkey_and_out_of_bounds_write") else {
        return;
    };
    let ic = lab.ic(0);
    for case in ["wrong rkey", "out of bounds", "no remote write granted"] {
        let a = Node::open(&ic.a);
        let b = Node::open(&ic.b);
        let access = if case == "no remote write granted" {
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ
        } else {
            remote_rw()
        };
        let target = buffer(&b.pd, 4096, access);
        let src = buffer(&a.pd, 4096, AccessFlags::LOCAL_WRITE);
        let good = target.remote_window(0, 4096).unwrap();
        let remote = match case {
            "wrong rkey" => RemoteAddr {
                addr: good.addr,
                rkey: good.rkey ^ 0x5a5a00,
            },
            // The window says 4096 bytes; forge an address past it.
            "out of bounds" => RemoteAddr {
                addr: good.addr + 4096 - 100,
                rkey: good.rkey,
            },
            _ => good.slice(0, 512).unwrap(),
        };
        connect(&a, &b, remote_rw(), || {});
        let sge = [src.slice(0, 512).unwrap()];
        a.qp.post_send_one(&SendWr::new(9, SendOp::Write(remote), &sge))
            .unwrap();
        let c = one(&a.send_cq);
        assert_eq!(c.status(), WcStatus::RemoteAccess, "{case}: {c:?}");
        assert_eq!(c.wr_id(), 9);
        assert_eq!(
            a.qp.state().unwrap(),
            QpState::Err,
            "{case}: requester QP to ERR"
        );
        assert!(
            target.as_slice().iter().all(|&x| x == 0),
            "{case}: nothing written"
        );
        eprintln!(
            "{case}: {c:?}, requester QP in ERR, responder {:?}",
            b.qp.state().unwrap()
        );
    }
    // Nothing else broke: a fresh pair on the same devices still works.
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let target = buffer(&b.pd, 4096, remote_rw());
    let mut src = buffer(&a.pd, 4096, AccessFlags::LOCAL_WRITE);
    src.as_mut_slice()[..512].copy_from_slice(&pattern(512, 9));
    connect(&a, &b, remote_rw(), || {});
    let sge = [src.slice(0, 512).unwrap()];
    let dst = target
        .remote_window(0, 4096)
        .unwrap()
        .slice(0, 512)
        .unwrap();
    a.qp.post_send_one(&SendWr::new(1, SendOp::Write(dst), &sge))
        .unwrap();
    assert_eq!(one(&a.send_cq).status(), WcStatus::Success);
    assert_eq!(&target.as_slice()[..512], &pattern(512, 9)[..]);
}

#[test]
fn error_flushes_receives_then_reset_reconnects_with_fresh_psns() {
    let Some(lab) = LabTopology::from_env_or_skip("error_flush_reset_reconnect") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let rbuf = buffer(&b.pd, 16 * 256, AccessFlags::LOCAL_WRITE);
    let sges: Vec<[Sge; 1]> = (0..16)
        .map(|i| [rbuf.slice(i * 256, 256).unwrap()])
        .collect();
    let wrs: Vec<RecvWr> = sges
        .iter()
        .enumerate()
        .map(|(i, s)| RecvWr {
            wr_id: i as u64,
            sges: s,
        })
        .collect();
    let (_, eb1) = connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv(&wrs).unwrap()
    });

    b.qp.to_error().unwrap();
    assert_eq!(b.qp.state().unwrap(), QpState::Err);
    let flushed = collect(&b.recv_cq, 16);
    assert!(
        flushed.iter().all(|c| c.status() == WcStatus::Flushed),
        "{flushed:?}"
    );
    let mut ids: Vec<u64> = flushed.iter().map(|c| c.wr_id()).collect();
    ids.sort();
    assert_eq!(ids, (0..16).collect::<Vec<u64>>());
    let mut extra = [Completion::default(); 4];
    assert_eq!(b.recv_cq.poll(&mut extra).unwrap(), 0, "exactly 16 flushed");

    // Both sides back to RESET, then reconnect with fresh PSNs.
    a.qp.to_error().unwrap();
    a.qp.reset().unwrap();
    b.qp.reset().unwrap();
    assert_eq!(a.qp.state().unwrap(), QpState::Reset);
    assert_eq!(b.qp.state().unwrap(), QpState::Reset);
    let mut drain = [Completion::default(); 16];
    while a.send_cq.poll(&mut drain).unwrap() > 0 {}
    let (ea2, eb2) = connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(77, &sges[0]).unwrap()
    });
    assert_eq!(b.qp.query().unwrap().rq_psn, ea2.psn);
    assert_eq!(a.qp.query().unwrap().sq_psn, ea2.psn);
    eprintln!(
        "PSNs: first b {:#x}, now a {:#x} b {:#x}",
        eb1.psn, ea2.psn, eb2.psn
    );
    let mut s = buffer(&a.pd, 256, AccessFlags::LOCAL_WRITE);
    s.as_mut_slice()[..100].copy_from_slice(&pattern(100, 7));
    let ssge = [s.slice(0, 100).unwrap()];
    a.qp.post_send_one(&SendWr::new(1, SendOp::Send, &ssge))
        .unwrap();
    assert_eq!(one(&a.send_cq).status(), WcStatus::Success);
    let c = one(&b.recv_cq);
    assert_eq!(
        (c.status(), c.wr_id(), c.byte_len()),
        (WcStatus::Success, 77, 100)
    );
    assert_eq!(&rbuf.as_slice()[..100], &pattern(100, 7)[..]);
}

#[test]
fn path_mtu_mismatch_is_refused_before_any_traffic() {
    let Some(lab) = LabTopology::from_env_or_skip("path_mtu_mismatch_refused") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    assert_eq!(a.ctx.active_mtu(1).unwrap(), Mtu::Mtu1024);
    let eb = b.endpoint(random_psn());
    a.qp.to_init(&InitAttr::default()).unwrap();
    // Asking for 4096 on a port whose active MTU is 1024 is refused with a typed error.
    let forced = RtrAttr {
        path_mtu: Some(Mtu::Mtu4096),
        ..a.rtr_attr()
    };
    match a.qp.to_rtr(&eb, &forced) {
        Err(Error::MtuMismatch {
            local,
            remote,
            requested,
        }) => {
            assert_eq!(
                (local, remote, requested),
                (Mtu::Mtu1024, Mtu::Mtu1024, Mtu::Mtu4096)
            )
        }
        other => panic!("expected MtuMismatch, got {other:?}"),
    }
    assert_eq!(
        a.qp.state().unwrap(),
        QpState::Init,
        "the QP was not touched"
    );
    // A peer advertising 4096 gets min(local active, remote) = 1024.
    let big = Endpoint {
        mtu: Mtu::Mtu4096,
        ..eb
    };
    assert_eq!(a.qp.to_rtr(&big, &a.rtr_attr()).unwrap(), Mtu::Mtu1024);
    assert_eq!(a.qp.query().unwrap().path_mtu, Some(Mtu::Mtu1024));
    // A peer advertising less wins too.
    let c = Node::open(&ic.a);
    c.qp.to_init(&InitAttr::default()).unwrap();
    let small = Endpoint {
        mtu: Mtu::Mtu512,
        ..eb
    };
    assert_eq!(c.qp.to_rtr(&small, &c.rtr_attr()).unwrap(), Mtu::Mtu512);
}

#[test]
fn posting_errors_are_typed() {
    let Some(lab) = LabTopology::from_env_or_skip("posting_errors_are_typed") else {
        return;
    };
    let a = Node::open(&lab.ic(0).a);
    let buf = buffer(&a.pd, 4096, AccessFlags::LOCAL_WRITE);
    assert!(matches!(
        buf.slice(4000, 97),
        Err(Error::OutOfBounds { .. })
    ));
    let big = vec![0u8; a.qp.caps().max_inline_data as usize + 1];
    assert!(matches!(
        a.qp.post_send_one(&SendWr::inline(1, SendOp::Send, &big)),
        Err(Error::InlineTooLong { .. })
    ));
    let sges = vec![buf.slice(0, 8).unwrap(); a.qp.caps().max_send_sge as usize + 1];
    assert!(matches!(
        a.qp.post_send_one(&SendWr::new(1, SendOp::Send, &sges)),
        Err(Error::TooManySges { .. })
    ));
    // A SEND on a QP in RESET is rejected by the provider with a named verb and errno.
    let one_sge = [buf.slice(0, 8).unwrap()];
    match a.qp.post_send_one(&SendWr::new(1, SendOp::Send, &one_sge)) {
        Err(Error::Post { verb, errno, index }) => {
            assert_eq!((verb, index), ("ibv_post_send", 0));
            assert!(errno > 0);
        }
        other => panic!("expected a post error, got {other:?}"),
    }
    // A bad transition is a named verb error.
    match a.qp.to_rts(1, &RtsAttr::default()) {
        Err(Error::Verb { verb, errno }) => {
            assert_eq!(verb, "ibv_modify_qp");
            assert!(errno > 0);
        }
        other => panic!("expected a verb error, got {other:?}"),
    }
    assert!(matches!(Context::open("rxe-nope"), Err(Error::NoDevice(_))));
}

/// A context and all its objects in one struct, moved to another thread and used there.
struct Bundle {
    node: Node,
    mr: MemoryRegion<Vec<u8>>,
}

#[test]
fn objects_live_in_one_struct_and_move_across_threads() {
    let Some(lab) = LabTopology::from_env_or_skip("objects_move_across_threads") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let mr = buffer(&b.pd, 128, AccessFlags::LOCAL_WRITE);
    let rsge = [mr.sge().unwrap()];
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(1, &rsge).unwrap()
    });
    let bundle = Bundle { node: b, mr };
    let receiver = std::thread::spawn(move || {
        let c = one(&bundle.node.recv_cq);
        assert!(c.is_success(), "{c:?}");
        bundle.mr.as_slice()[..c.byte_len() as usize].to_vec()
    });
    let sender = std::thread::spawn(move || {
        a.qp.post_send_one(&SendWr::inline(1, SendOp::Send, b"moved"))
            .unwrap();
        one(&a.send_cq).status()
    });
    assert_eq!(sender.join().unwrap(), WcStatus::Success);
    assert_eq!(receiver.join().unwrap(), b"moved");
}
