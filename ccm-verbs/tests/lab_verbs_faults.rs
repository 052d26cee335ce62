//! Device tests that disturb the lab topology (link down/up, device deletion) and restore it.

mod common;

use ccm_verbs::lab::LabTopology;
use ccm_verbs::*;
use common::*;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Runs a restoring fault hook when dropped (also on panic), so later tests see the lab intact.
struct Restore<'a> {
    lab: &'a LabTopology,
    args: Vec<&'static str>,
    armed: bool,
}

impl<'a> Restore<'a> {
    fn new(lab: &'a LabTopology, args: &[&'static str]) -> Self {
        Restore {
            lab,
            args: args.to_vec(),
            armed: true,
        }
    }
    fn now(mut self) {
        self.armed = false;
        self.lab
            .fault(&self.args)
            .expect("restore the lab topology");
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.lab.fault(&self.args) {
                eprintln!("could not restore the lab: {e}");
            }
        }
    }
}

#[test]
fn link_down_up_delivers_port_events_and_port_query_agrees() {
    let Some(lab) = LabTopology::from_env_or_skip("link_down_up_port_events") else {
        return;
    };
    let ic = lab.ic(1);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let ev_a = AsyncEvents::new(&a.ctx).unwrap();
    let ev_b = AsyncEvents::new(&b.ctx).unwrap();
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {});
    while ev_a.try_next().unwrap().is_some() {}
    while ev_b.try_next().unwrap().is_some() {}

    let restore = Restore::new(&lab, &["link-up", "1"]);
    let t0 = Instant::now();
    lab.fault(&["link-down", "1"]).unwrap();
    let e = wait_event(&ev_a, WAIT, |e| matches!(e, AsyncEvent::PortErr { .. }));
    assert_eq!(
        e,
        Some(AsyncEvent::PortErr { port: 1 }),
        "PORT_ERR on {}",
        ic.a.device
    );
    eprintln!(
        "{}: PORT_ERR {:?} after the command started",
        ic.a.device,
        t0.elapsed()
    );
    let pa = a.ctx.query_port(1).unwrap();
    assert_ne!(pa.state, PortState::Active, "port query agrees: {pa:?}");
    // Carrier loss takes the peer's port down too.
    let e = wait_event(&ev_b, WAIT, |e| matches!(e, AsyncEvent::PortErr { .. }));
    assert_eq!(
        e,
        Some(AsyncEvent::PortErr { port: 1 }),
        "PORT_ERR on {}",
        ic.b.device
    );
    assert_ne!(b.ctx.query_port(1).unwrap().state, PortState::Active);
    assert!(matches!(
        a.ctx.active_mtu(1),
        Err(Error::PortDown { port: 1, .. })
    ));

    // A SEND on the downed link fails within the bounded retry budget instead of hanging.
    let s = buffer(&a.pd, 64, AccessFlags::LOCAL_WRITE);
    let sge = [s.slice(0, 64).unwrap()];
    a.qp.post_send_one(&SendWr::new(5, SendOp::Send, &sge))
        .unwrap();
    let c = one(&a.send_cq);
    // Measured: rxe on 6.1 completes the failing WR with LOC_QP_OP_ERR; on 6.12 (rxe's tasks and error
    // flushing reworked) the requester moves the QP to ERR and the completer flushes the whole send queue,
    // the failing WR included, so it completes with WR_FLUSH_ERR. Either way the QP ends in ERR.
    let flush_reports_the_failing_wr = kernel_version() > (6, 1);
    assert!(
        matches!(
            c.status(),
            WcStatus::LocalQpOperation | WcStatus::RetryExceeded
        ) || (flush_reports_the_failing_wr && c.status() == WcStatus::Flushed),
        "send on a downed link (kernel {:?}): {c:?}",
        kernel_version()
    );
    assert_eq!(a.qp.state().unwrap(), QpState::Err);
    eprintln!("send while down: {:?}", c.status());

    let t1 = Instant::now();
    restore.now(); // link-up 1 (waits for both ports ACTIVE)
    let e = wait_event(&ev_a, WAIT, |e| matches!(e, AsyncEvent::PortActive { .. }));
    assert_eq!(e, Some(AsyncEvent::PortActive { port: 1 }));
    let e = wait_event(&ev_b, WAIT, |e| matches!(e, AsyncEvent::PortActive { .. }));
    assert_eq!(e, Some(AsyncEvent::PortActive { port: 1 }));
    eprintln!("PORT_ACTIVE on both within {:?}", t1.elapsed());
    assert_eq!(a.ctx.query_port(1).unwrap().state, PortState::Active);
    assert_eq!(b.ctx.query_port(1).unwrap().state, PortState::Active);

    // The link carries traffic again: reconnect the errored QP pair and send.
    a.qp.reset().unwrap();
    b.qp.reset().unwrap();
    let r = buffer(&b.pd, 64, AccessFlags::LOCAL_WRITE);
    let rsge = [r.sge().unwrap()];
    wait_gid(&a.ctx, &ic.a);
    wait_gid(&b.ctx, &ic.b);
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(1, &rsge).unwrap()
    });
    a.qp.post_send_one(&SendWr::inline(6, SendOp::Send, b"after link-up"))
        .unwrap();
    assert_eq!(one(&a.send_cq).status(), WcStatus::Success);
    let c = one(&b.recv_cq);
    assert!(c.is_success(), "{c:?}");
    assert_eq!(&r.as_slice()[..13], b"after link-up");
}

/// Waits (bounded) until the lab IP's RoCE v2 GID is back in the table.
fn wait_gid(ctx: &Context, side: &ccm_verbs::lab::LabSide) -> GidEntry {
    let deadline = Instant::now() + WAIT;
    loop {
        match ctx.gid_by_ip(1, side.ip) {
            Ok(g) => return g,
            Err(e) => assert!(
                Instant::now() < deadline,
                "GID of {} never back: {e}",
                side.ip
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn device_deleted_under_live_qp_errors_without_hanging() {
    let Some(lab) = LabTopology::from_env_or_skip("device_deleted_under_live_qp") else {
        return;
    };
    let ic = lab.ic(1);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let ev_b = AsyncEvents::new(&b.ctx).unwrap();
    let rb = buffer(&b.pd, 4096, AccessFlags::LOCAL_WRITE);
    let rsge = [rb.sge().unwrap()];
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(1, &rsge).unwrap();
        b.qp.post_recv_one(2, &rsge).unwrap();
    });

    let restore = Restore::new(&lab, &["dev-add", "1", "B"]);
    let mut del = Command::new(lab.fault_script())
        .args(["dev-del", "1", "B"])
        .spawn()
        .unwrap();
    // Watch what the live context sees, bounded. On rxe (no kernel disassociate support) the
    // kernel raises no DEVICE_FATAL and the deletion waits for us to close the context; the
    // removal shows as the uverbs device vanishing, which Context::is_removed detects.
    let t0 = Instant::now();
    let mut seen = None;
    while t0.elapsed() < WAIT {
        match ev_b.next_timeout(Duration::from_millis(20)) {
            Ok(Some(AsyncEvent::DeviceFatal)) => {
                seen = Some("DEVICE_FATAL".to_string());
                break;
            }
            Ok(Some(e)) => eprintln!("event on {}: {e:?}", ic.b.device),
            Ok(None) => {}
            Err(e) => {
                seen = Some(format!("async event error: {e}"));
                break;
            }
        }
        if let Err(e) = b.ctx.check_alive() {
            seen = Some(format!("{e}"));
            break;
        }
    }
    let seen = seen.expect("the live context saw no sign of its device's deletion within 5 s");
    eprintln!(
        "{} deleted: seen {seen:?} after {:?}",
        ic.b.device,
        t0.elapsed()
    );
    assert!(matches!(b.ctx.check_alive(), Err(Error::DeviceRemoved(_))));
    assert!(b.ctx.is_removed());
    assert!(!a.ctx.is_removed(), "the other device is untouched");

    // Closing everything of the deleted device must not hang, and lets the deletion finish.
    let t1 = Instant::now();
    drop(rb);
    drop(ev_b);
    drop(b);
    eprintln!("closed the deleted device's objects in {:?}", t1.elapsed());
    let st =
        wait_child(&mut del, WAIT).expect("dev-del did not finish once the context was closed");
    assert!(st.success(), "dev-del: {st}");
    eprintln!("dev-del finished {:?} after it started", t0.elapsed());
    assert!(matches!(
        Context::open(&ic.b.device),
        Err(Error::NoDevice(_))
    ));

    // The peer's SEND to the vanished device fails within the bounded retry budget.
    let s = buffer(&a.pd, 64, AccessFlags::LOCAL_WRITE);
    let sge = [s.slice(0, 64).unwrap()];
    a.qp.post_send_one(&SendWr::new(9, SendOp::Send, &sge))
        .unwrap();
    let c = one(&a.send_cq);
    eprintln!("peer send after the deletion: {c:?}");
    assert_eq!(c.status(), WcStatus::RetryExceeded, "{c:?}");
    assert_eq!(a.qp.state().unwrap(), QpState::Err);

    restore.now();
    let ctx = Context::open(&ic.b.device).expect("re-added device opens");
    wait_port(&ctx, PortState::Active, WAIT);
    wait_gid(&ctx, &ic.b);
}

/// (major, minor) of the running kernel: the lab guest's, whose rxe reports some failures differently.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("unparsable kernel release {release:?}"),
    }
}
