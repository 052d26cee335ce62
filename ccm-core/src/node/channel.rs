//! An RC message channel: one queue pair with its own completion queue and a ring of receive slots
//! posted before the connection goes to RTR. The manager's control VI is one; every client VI is one.
//!
//! Slam connect (step 435): with the partner's VI address exchanged beforehand, the queue pair goes
//! RESET -> INIT -> RTR -> RTS directly; there is no connect request or response on the wire.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ccm_verbs::{
    AccessFlags, Completion, CompletionChannel, CompletionQueue, Context, DeviceList, Endpoint,
    Gid, GidEntry, InitAttr, MemoryRegion, Mtu as VerbsMtu, ProtectionDomain, QpCaps, QueuePair,
    RtrAttr, RtsAttr, SendOp, SendWr,
};

use crate::wire::{InterconnectId, Mtu, ViAddress};

/// The device side of one interconnect: what a channel is created on.
#[derive(Clone, Debug)]
pub struct IcDevice {
    /// The interconnect.
    pub id: InterconnectId,
    /// The device context.
    pub ctx: Context,
    /// The port.
    pub port: u8,
    /// The RoCE v2 GID of the interconnect's local address.
    pub gid: GidEntry,
    /// Whether the port is ACTIVE, as the node last saw it (set by the driver on port and async events).
    /// Channels refuse to post while it is down: rxe on the lab's kernel can loop forever inside a post
    /// made while its netdev goes down (see docs/lab-contract.md).
    pub port_up: Arc<AtomicBool>,
}

impl IcDevice {
    /// Open `device` (or, if `None`, the device whose GID table holds `local_ip`) and select the
    /// RoCE v2 GID of `local_ip`. Works with the port down; the GID must exist.
    pub fn open(
        id: InterconnectId,
        device: Option<&str>,
        port: u8,
        local_ip: IpAddr,
    ) -> Result<IcDevice, ccm_verbs::Error> {
        IcDevice::open_listed(&DeviceList::get()?, id, device, port, local_ip)
    }

    /// [`IcDevice::open`] from a device list already made (listing costs a sysfs scan of every device).
    pub fn open_listed(
        list: &DeviceList,
        id: InterconnectId,
        device: Option<&str>,
        port: u8,
        local_ip: IpAddr,
    ) -> Result<IcDevice, ccm_verbs::Error> {
        let ctx = match device {
            Some(name) => list.open(name)?,
            None => {
                let mut found = None;
                for name in list.names() {
                    let ctx = list.open(&name)?;
                    if ctx.gid_by_ip(port, local_ip).is_ok() {
                        found = Some(ctx);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    ccm_verbs::Error::GidNotFound(format!(
                        "no device has a RoCE v2 GID for {local_ip}"
                    ))
                })?
            }
        };
        let gid = ctx.gid_by_ip(port, local_ip)?;
        let up = ctx
            .query_port(port)
            .map(|p| p.state == ccm_verbs::PortState::Active)
            .unwrap_or(false);
        Ok(IcDevice {
            id,
            ctx,
            port,
            gid,
            port_up: Arc::new(AtomicBool::new(up)),
        })
    }
}

/// RC timing of a channel (see docs/decisions: derived from the failover budget, never "retry forever").
#[derive(Clone, Copy, Debug)]
pub struct RcTiming {
    /// Local ACK timeout code (4.096 us x 2^code).
    pub timeout: u8,
    /// Transport retries before RETRY_EXC_ERR.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever is never used).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code.
    pub min_rnr_timer: u8,
}

impl RcTiming {
    /// Control VIs (at least; see [`control_for`](Self::control_for)): RC gives up after about
    /// 7 x 16.8 ms = 117 ms (timeout code 12, 6 retries), well after the default heartbeat timeout, so heartbeats stay the primary detector and a busy (or, in the lab,
    /// software-emulated) partner that acknowledges late is not mistaken for a dead path.
    pub const CONTROL: RcTiming = RcTiming {
        timeout: 12,
        retry_cnt: 6,
        rnr_retry: 6,
        min_rnr_timer: 1,
    };
    /// Control VIs for a link monitor that fails a link after `heartbeat_timeout` of silence: the RC
    /// transport must not give up first (a RETRY_EXC_ERR fails the link as surely as heartbeat loss), so
    /// the ACK timeout grows from [`CONTROL`](Self::CONTROL)'s until the retries span the heartbeat
    /// timeout. With the lab's 30 ms x 10 heartbeats that is code 14 (7 x 67 ms); with the defaults
    /// (10 ms x 3) it stays 12.
    pub fn control_for(heartbeat_timeout: std::time::Duration) -> RcTiming {
        let mut t = RcTiming::CONTROL;
        while t.gives_up_after() < heartbeat_timeout && t.timeout < 20 {
            t.timeout += 1;
        }
        t
    }

    /// How long RC retries before RETRY_EXC_ERR: (retries + 1) x 4.096 us x 2^timeout.
    pub fn gives_up_after(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            (u64::from(self.retry_cnt) + 1) * 4096 * (1u64 << self.timeout),
        )
    }

    /// Client VIs: ccm-vi's defaults (docs/decisions/0002-vi-defaults.md): 67 ms x (3 + 1) retries, so a
    /// client's own RC notices a dead path within the failover budget even when idle of heartbeats.
    pub const CLIENT: RcTiming = RcTiming {
        timeout: 14,
        retry_cnt: 3,
        rnr_retry: 3,
        min_rnr_timer: 14,
    };
}

fn to_verbs_mtu(m: Mtu) -> VerbsMtu {
    match m {
        Mtu::M256 => VerbsMtu::Mtu256,
        Mtu::M512 => VerbsMtu::Mtu512,
        Mtu::M1024 => VerbsMtu::Mtu1024,
        Mtu::M2048 => VerbsMtu::Mtu2048,
        Mtu::M4096 => VerbsMtu::Mtu4096,
    }
}

fn from_verbs_mtu(m: VerbsMtu) -> Mtu {
    match m {
        VerbsMtu::Mtu256 => Mtu::M256,
        VerbsMtu::Mtu512 => Mtu::M512,
        VerbsMtu::Mtu1024 => Mtu::M1024,
        VerbsMtu::Mtu2048 => Mtu::M2048,
        VerbsMtu::Mtu4096 => Mtu::M4096,
    }
}

/// One completion of a message channel, as [`RcChannel::poll_messages`] hands it over.
#[derive(Debug)]
pub enum Delivery<'a> {
    /// A send completed.
    Sent,
    /// A message arrived.
    Received(&'a [u8]),
}

/// Inline data a channel's queue pair is created for: the NVRAM mirror posts entries of up to this many
/// ring bytes inline (on rxe the provider copies them into the work request and the kernel skips the
/// memory region lookup: a 128-byte WRITE was faster inline in 8 of 13 paired runs in the lab guest,
/// median 77 against 86 us, docs/performance.md). rxe allows up to 512.
pub const MAX_INLINE: usize = 256;

/// Work request ids at or above this are sends; below are receive slot indices.
pub const SEND_WR_BASE: u64 = 1 << 32;

/// A message channel over one RC queue pair, with a completion queue for its sends and another for its
/// receives: [`poll`](RcChannel::poll) reads both, [`poll_send`](RcChannel::poll_send) and
/// [`poll_recv`](RcChannel::poll_recv) one each, so one thread can reap its own sends (the NVRAM mirror's
/// appending thread) while another handles what arrives.
pub struct RcChannel {
    dev: IcDevice,
    qp: QueuePair,
    cq: CompletionQueue,
    send_cq: CompletionQueue,
    rx: MemoryRegion<Vec<u8>>,
    slots: u32,
    slot_size: u32,
    psn: u32,
    mtu: Mtu,
    remote: Option<ViAddress>,
    sends: AtomicU64,
    /// The completion channel both queues are tied to, if any.
    events: Option<CompletionChannel>,
}

impl Drop for RcChannel {
    /// A queue pair is moved to the error state and its completions drained (bounded) before it is
    /// destroyed: destroying an rxe QP that still retransmits to a vanished peer waits on its retry
    /// task, which is where the lab's guest kernel has soft-locked.
    fn drop(&mut self) {
        let _ = self.qp.to_error();
        let mut wc = [Completion::default(); 16];
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(20) {
            match self.poll(&mut wc) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl std::fmt::Debug for RcChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcChannel")
            .field("qpn", &self.qp.qpn())
            .field("remote", &self.remote)
            .finish()
    }
}

impl RcChannel {
    /// A channel on `dev` in protection domain `pd`, with `slots` receive slots of `slot_size` bytes and
    /// room for `send_depth` outstanding sends. Nothing is posted until [`slam_connect`](Self::slam_connect).
    pub fn create(
        dev: &IcDevice,
        pd: &ProtectionDomain,
        slots: u32,
        slot_size: u32,
        send_depth: u32,
    ) -> Result<RcChannel, ccm_verbs::Error> {
        RcChannel::create_notified(dev, pd, slots, slot_size, send_depth, None)
    }

    /// [`create`](Self::create), with the completion queues tied to `events`: once
    /// [`arm_receives`](Self::arm_receives) was called, the next receive makes the channel's fd
    /// readable, so a thread can sleep in `poll(2)` instead of polling the queues on a timer.
    pub fn create_notified(
        dev: &IcDevice,
        pd: &ProtectionDomain,
        slots: u32,
        slot_size: u32,
        send_depth: u32,
        events: Option<&CompletionChannel>,
    ) -> Result<RcChannel, ccm_verbs::Error> {
        let cq = CompletionQueue::new(&dev.ctx, slots + 8, events)?;
        let send_cq = CompletionQueue::new(&dev.ctx, send_depth + 8, events)?;
        let caps = QpCaps {
            max_send_wr: send_depth,
            max_recv_wr: slots,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: MAX_INLINE as u32,
        };
        let qp = QueuePair::new_rc(pd, &send_cq, &cq, caps)?;
        let rx = MemoryRegion::register(
            pd,
            vec![0u8; (slots * slot_size) as usize],
            AccessFlags::LOCAL_WRITE,
        )?;
        let mtu = from_verbs_mtu(dev.ctx.active_mtu(dev.port).unwrap_or(VerbsMtu::Mtu1024));
        Ok(RcChannel {
            dev: dev.clone(),
            qp,
            cq,
            send_cq,
            rx,
            slots,
            slot_size,
            psn: ccm_verbs::random_psn(),
            mtu,
            remote: None,
            sends: AtomicU64::new(0),
            events: events.cloned(),
        })
    }

    /// The completion channel the queues are tied to ([`create_notified`](Self::create_notified)), whose fd
    /// a thread can `poll(2)` after [`arm_receives`](Self::arm_receives) or
    /// [`arm_solicited_receives`](Self::arm_solicited_receives).
    pub fn completion_channel(&self) -> Option<&CompletionChannel> {
        self.events.as_ref()
    }

    /// This VI's address, for the partner.
    pub fn address(&self) -> ViAddress {
        ViAddress {
            interconnect: self.dev.id,
            qpn: self.qp.qpn(),
            gid: self.dev.gid.gid.0,
            psn: self.psn,
            mtu: self.mtu,
        }
    }

    /// The queue pair (clients post RDMA on it directly).
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// `Err(PortDown)` while the interconnect's port is known to be down: call before posting.
    pub fn check_port(&self) -> Result<(), ccm_verbs::Error> {
        if self.dev.port_up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ccm_verbs::Error::PortDown {
                port: self.dev.port,
                state: 1,
            })
        }
    }

    /// The interconnect.
    pub fn interconnect(&self) -> InterconnectId {
        self.dev.id
    }

    /// Slam connect to `remote`: receives posted, then RESET -> INIT -> RTR -> RTS. Idempotent for the
    /// same remote; a different remote is refused.
    pub fn slam_connect(
        &mut self,
        remote: &ViAddress,
        timing: RcTiming,
        access: AccessFlags,
    ) -> Result<Mtu, ccm_verbs::Error> {
        if let Some(r) = &self.remote {
            if r == remote {
                return Ok(self.mtu);
            }
            return Err(ccm_verbs::Error::InvalidArgument(
                "VI already connected to another remote VI",
            ));
        }
        self.qp.to_init(&InitAttr {
            port: self.dev.port,
            access,
            ..InitAttr::default()
        })?;
        for slot in 0..self.slots {
            self.post_slot(slot)?;
        }
        let endpoint = Endpoint {
            gid: Gid(remote.gid),
            qpn: remote.qpn,
            psn: remote.psn,
            mtu: to_verbs_mtu(remote.mtu),
        };
        let rtr = RtrAttr {
            port: self.dev.port,
            sgid_index: self.dev.gid.index as u8,
            path_mtu: None,
            min_rnr_timer: timing.min_rnr_timer,
            ..RtrAttr::default()
        };
        let mtu = self.qp.to_rtr(&endpoint, &rtr)?;
        self.qp.to_rts(
            self.psn,
            &RtsAttr {
                timeout: timing.timeout,
                retry_cnt: timing.retry_cnt,
                rnr_retry: timing.rnr_retry,
                ..RtsAttr::default()
            },
        )?;
        self.remote = Some(*remote);
        self.mtu = from_verbs_mtu(mtu);
        Ok(self.mtu)
    }

    fn post_slot(&self, slot: u32) -> Result<(), ccm_verbs::Error> {
        let sge = self
            .rx
            .slice((slot * self.slot_size) as usize, self.slot_size as usize)?;
        self.qp.post_recv_one(slot as u64, &[sge])
    }

    /// Bytes a send may carry inline on this queue pair (what the provider granted, at least
    /// [`MAX_INLINE`] on rxe).
    pub fn max_inline(&self) -> usize {
        self.qp.caps().max_inline_data as usize
    }

    /// Send `bytes` inline (at most [`max_inline`](Self::max_inline)), signalled.
    pub fn send_inline(&self, bytes: &[u8]) -> Result<(), ccm_verbs::Error> {
        self.send_inline_soliciting(bytes, false)
    }

    /// [`send_inline`](Self::send_inline), asking for a solicited event at the partner if `solicit`: it
    /// wakes a partner thread asleep on [`arm_solicited_receives`](Self::arm_solicited_receives).
    pub fn send_inline_soliciting(
        &self,
        bytes: &[u8],
        solicit: bool,
    ) -> Result<(), ccm_verbs::Error> {
        self.check_port()?;
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        self.qp
            .post_send_one(&SendWr::inline(SEND_WR_BASE + n, SendOp::Send, bytes).solicit(solicit))
    }

    /// Poll completions of both queues, sends first (no allocation).
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize, ccm_verbs::Error> {
        let n = self.send_cq.poll(out)?;
        Ok(n + self.cq.poll(&mut out[n..])?)
    }

    /// Poll the completions of sends and RDMA WRITEs only (no allocation).
    pub fn poll_send(&self, out: &mut [Completion]) -> Result<usize, ccm_verbs::Error> {
        self.send_cq.poll(out)
    }

    /// Poll the completions of receives only (no allocation).
    pub fn poll_recv(&self, out: &mut [Completion]) -> Result<usize, ccm_verbs::Error> {
        self.cq.poll(out)
    }

    /// The bytes a receive completion delivered into its slot.
    pub fn received(&self, c: &Completion) -> &[u8] {
        let slot = c.wr_id() as usize;
        let start = slot * self.slot_size as usize;
        let len = (c.byte_len() as usize).min(self.slot_size as usize);
        &self.rx.as_slice()[start..start + len]
    }

    /// Give a receive slot back to the queue pair.
    pub fn repost(&self, c: &Completion) -> Result<(), ccm_verbs::Error> {
        self.post_slot(c.wr_id() as u32)
    }

    /// Poll completions (no allocation) and hand each to `on`: [`Delivery::Sent`] for a completed
    /// send, [`Delivery::Received`] with the bytes of a receive (its slot is reposted right after). Returns
    /// whether any completion carried an error (the VI is then broken: report it).
    pub fn poll_messages(&self, wc: &mut [Completion], mut on: impl FnMut(Delivery<'_>)) -> bool {
        let Ok(n) = self.poll(wc) else { return true };
        let mut failed = false;
        for c in &wc[..n] {
            if !c.is_success() {
                failed = true;
            } else if c.wr_id() >= SEND_WR_BASE {
                on(Delivery::Sent);
            } else {
                on(Delivery::Received(self.received(c)));
                failed |= self.repost(c).is_err();
            }
        }
        failed
    }

    /// Arm the receive queue's completions: the next receive raises an event on the completion channel
    /// the channel was created with ([`create_notified`](Self::create_notified)). Arm first, then poll
    /// until empty: a completion that came before the arming is found by the poll, any later one
    /// raises the event. Send completions raise none: they are found by the next poll.
    pub fn arm_receives(&self) -> Result<(), ccm_verbs::Error> {
        self.cq.req_notify(false)
    }

    /// [`arm_receives`](Self::arm_receives) for solicited receives only: the next receive of a SEND or
    /// WRITE_WITH_IMM the partner posted soliciting (or a failed one) raises the event; the others are
    /// found by the next poll.
    pub fn arm_solicited_receives(&self) -> Result<(), ccm_verbs::Error> {
        self.cq.req_notify(true)
    }

    /// Put the queue pair in the error state: every outstanding work request completes flushed.
    pub fn fail(&self) {
        let _ = self.qp.to_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_control_vi_never_gives_up_before_the_heartbeat_timeout() {
        assert_eq!(RcTiming::control_for(Duration::from_millis(30)).timeout, 12);
        assert_eq!(
            RcTiming::control_for(Duration::from_millis(100)).timeout,
            12
        );
        let lab = RcTiming::control_for(Duration::from_millis(300));
        assert_eq!(lab.timeout, 14);
        for ms in [1, 30, 117, 118, 300, 1000, 4000] {
            let hb = Duration::from_millis(ms);
            assert!(RcTiming::control_for(hb).gives_up_after() >= hb, "{ms} ms");
        }
    }
}
