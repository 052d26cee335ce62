//! Proves the data path allocates nothing: a counting global allocator around posts and polls,
//! on the lab's devices. Also exercises the completion channel fd directly.

mod common;

use ccm_verbs::lab::LabTopology;
use ccm_verbs::*;
use common::*;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ccm_verbs::alloc_count::Counting = ccm_verbs::alloc_count::Counting;

fn allocs() -> u64 {
    ccm_verbs::alloc_count::allocations()
}

#[test]
fn post_and_poll_allocate_nothing() {
    let Some(lab) = LabTopology::from_env_or_skip("post_and_poll_allocate_nothing") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let src = buffer(&a.pd, 4096, AccessFlags::LOCAL_WRITE);
    let dst = buffer(&b.pd, 4096, access);
    connect(&a, &b, access, || {});
    let win = dst.remote_window(0, 4096).unwrap();
    let ssge = [src.slice(0, 256).unwrap()];
    let rsge = [dst.slice(1024, 256).unwrap()];
    let mut wc = [Completion::default(); 16];

    // The counter sees allocations of this thread (so a zero below means something).
    let probe = allocs();
    let v = std::hint::black_box(vec![1u8; 32]);
    assert!(allocs() > probe);
    drop(v);

    let before = allocs();
    for i in 0..200u64 {
        b.qp.post_recv_one(i, &rsge).unwrap();
        let chain = [
            SendWr::new(i, SendOp::Write(win.slice(0, 256).unwrap()), &ssge).unsignaled(),
            SendWr::new(i, SendOp::Read(win.slice(0, 256).unwrap()), &ssge).unsignaled(),
            SendWr::inline(i, SendOp::SendWithImm(i as u32), b"x"),
        ];
        a.qp.post_send(&chain).unwrap();
        // Spin-poll both CQs (bounded).
        let deadline = Instant::now() + WAIT;
        let (mut got_s, mut got_r) = (0, 0);
        while got_s < 1 || got_r < 1 {
            assert!(Instant::now() < deadline, "iteration {i} timed out");
            let n = a.send_cq.poll(&mut wc).unwrap();
            for c in &wc[..n] {
                assert!(c.is_success());
                got_s += 1;
            }
            let n = b.recv_cq.poll(&mut wc).unwrap();
            for c in &wc[..n] {
                assert!(c.is_success());
                assert_eq!(c.imm(), Some(i as u32));
                got_r += 1;
            }
        }
    }
    let during = allocs() - before;
    assert_eq!(
        during, 0,
        "{during} heap allocations in 200 post/poll rounds"
    );
}

#[test]
fn completion_channel_fd_wakes_a_sleeper() {
    let Some(lab) = LabTopology::from_env_or_skip("completion_channel_fd_wakes_a_sleeper") else {
        return;
    };
    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let r = buffer(&b.pd, 64, AccessFlags::LOCAL_WRITE);
    let rsge = [r.sge().unwrap()];
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(3, &rsge).unwrap()
    });
    // Nothing pending: the nonblocking channel returns at once.
    assert_eq!(b.channel.try_get_event().unwrap(), None);
    b.recv_cq.req_notify(false).unwrap();
    let mut pfd = libc::pollfd {
        fd: b.channel.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY (test): one valid pollfd.
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 50) },
        0,
        "no event before any completion"
    );
    a.qp.post_send_one(&SendWr::inline(1, SendOp::Send, b"wake"))
        .unwrap();
    // SAFETY (test): one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(rc, 1, "channel fd readable after the completion");
    let ev = b
        .channel
        .get_event(Duration::from_secs(1))
        .unwrap()
        .expect("event");
    assert_eq!(ev.cq_handle, b.recv_cq.handle());
    let mut wc = [Completion::default(); 2];
    assert_eq!(b.recv_cq.poll(&mut wc).unwrap(), 1);
    assert_eq!((wc[0].wr_id(), wc[0].byte_len()), (3, 4));
    // Not re-armed: a further wait times out cleanly (bounded), no event.
    assert_eq!(
        b.channel.get_event(Duration::from_millis(50)).unwrap(),
        None
    );
}
