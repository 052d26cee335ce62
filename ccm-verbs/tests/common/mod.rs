//! Helpers shared by the device tests (run in the rxe lab; they skip elsewhere).
#![allow(dead_code)]

use ccm_verbs::lab::LabSide;
use ccm_verbs::*;
use std::time::{Duration, Instant};

/// Bound of every wait in the device tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// One side of a connection: a device context and everything an RC QP needs.
pub struct Node {
    pub ctx: Context,
    pub pd: ProtectionDomain,
    pub channel: CompletionChannel,
    pub send_cq: CompletionQueue,
    pub recv_cq: CompletionQueue,
    pub qp: QueuePair,
    pub gid: GidEntry,
}

impl Node {
    /// Opens `side`'s device and creates an RC QP on it.
    pub fn open(side: &LabSide) -> Node {
        let ctx = Context::open(&side.device).expect("open device");
        Node::on(&ctx, side)
    }

    /// Creates a QP on an already open context (same-device tests).
    pub fn on(ctx: &Context, side: &LabSide) -> Node {
        let pd = ProtectionDomain::new(ctx).expect("alloc pd");
        let channel = CompletionChannel::new(ctx).expect("comp channel");
        let send_cq = CompletionQueue::new(ctx, 256, None).expect("send cq");
        let recv_cq = CompletionQueue::new(ctx, 256, Some(&channel)).expect("recv cq");
        let qp = QueuePair::new_rc(&pd, &send_cq, &recv_cq, QpCaps::default()).expect("create qp");
        let gid = ctx
            .gid_by_ip(1, side.ip)
            .expect("RoCE v2 GID of the lab IP");
        Node {
            ctx: ctx.clone(),
            pd,
            channel,
            send_cq,
            recv_cq,
            qp,
            gid,
        }
    }

    pub fn endpoint(&self, psn: u32) -> Endpoint {
        self.qp.endpoint(1, self.gid.gid, psn).expect("endpoint")
    }

    pub fn rtr_attr(&self) -> RtrAttr {
        RtrAttr {
            sgid_index: self.gid.index as u8,
            ..RtrAttr::default()
        }
    }
}

/// Bounded-retry RTS attributes so a dead peer shows up in well under a second.
pub fn quick_rts() -> RtsAttr {
    RtsAttr {
        timeout: 12,
        retry_cnt: 3,
        rnr_retry: 3,
        max_rd_atomic: 16,
    }
}

/// Moves both QPs to INIT, runs `before_rtr` (post receives), then RTR and RTS, with fresh PSNs.
pub fn connect(
    a: &Node,
    b: &Node,
    access: AccessFlags,
    before_rtr: impl FnOnce(),
) -> (Endpoint, Endpoint) {
    let ea = a.endpoint(random_psn());
    let eb = b.endpoint(random_psn());
    let init = InitAttr {
        access,
        ..InitAttr::default()
    };
    a.qp.to_init(&init).expect("a INIT");
    b.qp.to_init(&init).expect("b INIT");
    before_rtr();
    let ma = a.qp.to_rtr(&eb, &a.rtr_attr()).expect("a RTR");
    let mb = b.qp.to_rtr(&ea, &b.rtr_attr()).expect("b RTR");
    assert_eq!(ma, mb);
    a.qp.to_rts(ea.psn, &quick_rts()).expect("a RTS");
    b.qp.to_rts(eb.psn, &quick_rts()).expect("b RTS");
    assert_eq!(a.qp.state().unwrap(), QpState::Rts);
    assert_eq!(b.qp.state().unwrap(), QpState::Rts);
    (ea, eb)
}

/// Waits (bounded) for exactly one completion on `cq`.
pub fn one(cq: &CompletionQueue) -> Completion {
    let mut wc = [Completion::default(); 1];
    let n = cq
        .wait(&mut wc, Duration::from_millis(1), WAIT)
        .expect("poll");
    assert_eq!(n, 1, "no completion within {WAIT:?}");
    wc[0]
}

/// Collects `n` completions (bounded).
pub fn collect(cq: &CompletionQueue, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [Completion::default(); 16];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions within {WAIT:?}: {out:?}",
            out.len()
        );
        let k = cq
            .wait(
                &mut buf,
                Duration::from_millis(1),
                Duration::from_millis(200),
            )
            .expect("poll");
        out.extend_from_slice(&buf[..k]);
    }
    out
}

/// A registered buffer of `len` bytes.
pub fn buffer(pd: &ProtectionDomain, len: usize, access: AccessFlags) -> MemoryRegion<Vec<u8>> {
    MemoryRegion::register(pd, vec![0u8; len], access).expect("reg mr")
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Waits (bounded) for an async event matching `pred`, returning it; other events are printed.
pub fn wait_event(
    ev: &AsyncEvents,
    timeout: Duration,
    pred: impl Fn(&AsyncEvent) -> bool,
) -> Option<AsyncEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match ev.next_timeout(left).expect("async event read") {
            Some(e) if pred(&e) => return Some(e),
            Some(e) => eprintln!("(other async event: {e:?})"),
            None => return None,
        }
    }
}

/// Waits (bounded) until `port` of `ctx` is in `state`.
pub fn wait_port(ctx: &Context, state: PortState, timeout: Duration) -> PortAttr {
    let deadline = Instant::now() + timeout;
    loop {
        let a = ctx.query_port(1).expect("query port");
        if a.state == state {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{} port never {state:?}: {a:?}",
            ctx.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
