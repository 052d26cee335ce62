//! Completion queues, completion channels and decoded work completions.

use crate::device::Context;
use crate::error::{verb_errno, verb_rc, Error, Result};
use crate::types::{WcOpcode, WcStatus};
use ibverbs_sys as sys;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A work completion, layout-identical to `ibv_wc`, so `ibv_poll_cq` writes straight into a
/// caller's `&mut [Completion]` (no copy, no allocation).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    wr_id: u64,
    status: u32,
    opcode: u32,
    vendor_err: u32,
    byte_len: u32,
    imm_data: u32,
    qp_num: u32,
    src_qp: u32,
    wc_flags: u32,
    pkey_index: u16,
    slid: u16,
    sl: u8,
    dlid_path_bits: u8,
}

const _: () = assert!(std::mem::size_of::<Completion>() == std::mem::size_of::<sys::ibv_wc>());
const _: () = assert!(std::mem::align_of::<Completion>() == std::mem::align_of::<sys::ibv_wc>());
const _: () = assert!(std::mem::offset_of!(Completion, wc_flags) == 36);
const _: () = assert!(std::mem::offset_of!(Completion, dlid_path_bits) == 45);

const WC_WITH_IMM: u32 = sys::ibv_wc_flags::IBV_WC_WITH_IMM.0;

impl Default for Completion {
    fn default() -> Self {
        Completion {
            wr_id: 0,
            status: u32::MAX,
            opcode: u32::MAX,
            vendor_err: 0,
            byte_len: 0,
            imm_data: 0,
            qp_num: 0,
            src_qp: 0,
            wc_flags: 0,
            pkey_index: 0,
            slid: 0,
            sl: 0,
            dlid_path_bits: 0,
        }
    }
}

impl Completion {
    /// The `wr_id` of the work request.
    pub fn wr_id(&self) -> u64 {
        self.wr_id
    }
    /// Decoded status.
    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.status)
    }
    /// Raw `IBV_WC_*` status.
    pub fn raw_status(&self) -> u32 {
        self.status
    }
    /// True on success.
    pub fn is_success(&self) -> bool {
        self.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }
    /// Decoded opcode (only meaningful on success; flushed completions may carry any value).
    pub fn opcode(&self) -> WcOpcode {
        WcOpcode::from_raw(self.opcode)
    }
    /// Bytes received (receive side) or read (RDMA READ).
    pub fn byte_len(&self) -> u32 {
        self.byte_len
    }
    /// Immediate data in **host** byte order (the wire carries it big-endian; this undoes it),
    /// if the message carried one.
    pub fn imm(&self) -> Option<u32> {
        (self.wc_flags & WC_WITH_IMM != 0).then(|| u32::from_be(self.imm_data))
    }
    /// Local QP number the completion belongs to.
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }
    /// Provider-specific error syndrome.
    pub fn vendor_err(&self) -> u32 {
        self.vendor_err
    }
    /// Raw `IBV_WC_*` flags.
    pub fn wc_flags(&self) -> u32 {
        self.wc_flags
    }
    /// Builds a completion from raw fields (for tests of completion handling code).
    pub fn from_raw_parts(
        wr_id: u64,
        status: u32,
        opcode: u32,
        byte_len: u32,
        qp_num: u32,
    ) -> Self {
        Completion {
            wr_id,
            status,
            opcode,
            byte_len,
            qp_num,
            ..Default::default()
        }
    }
    /// Same, with an immediate given in host order.
    pub fn with_imm(mut self, imm_host: u32) -> Self {
        self.imm_data = imm_host.to_be();
        self.wc_flags |= WC_WITH_IMM;
        self
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("wr_id", &self.wr_id)
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len)
            .field("imm", &self.imm())
            .field("qp_num", &self.qp_num)
            .finish()
    }
}

pub(crate) struct ChannelInner {
    ch: *mut sys::ibv_comp_channel,
    _ctx: Context,
}

// SAFETY: owned pointer; ibv_get_cq_event on a channel is thread safe (a read of its fd).
unsafe impl Send for ChannelInner {}
// SAFETY: as above.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: every CQ using the channel holds an Arc of it, so none is left.
        unsafe {
            sys::ibv_destroy_comp_channel(self.ch);
        }
    }
}

/// A completion channel: an fd that becomes readable when an armed CQ gets a completion.
/// Its fd is nonblocking, so a caller can `poll(2)` it alongside others.
#[derive(Clone)]
pub struct CompletionChannel {
    inner: Arc<ChannelInner>,
}

/// Which CQ an event of a [`CompletionChannel`] was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEvent {
    /// The CQ's handle ([`CompletionQueue::handle`]).
    pub cq_handle: u32,
}

impl std::os::fd::AsFd for CompletionChannel {
    /// The channel's fd, for `poll(2)` alongside others.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the channel's fd is open until `ibv_destroy_comp_channel`, which runs only when
        // the last clone (this one among them) is dropped.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }
    }
}

impl CompletionChannel {
    /// Creates a channel on `ctx` and makes its fd nonblocking.
    pub fn new(ctx: &Context) -> Result<CompletionChannel> {
        // SAFETY: valid open context.
        let ch = unsafe { sys::ibv_create_comp_channel(ctx.raw()) };
        if ch.is_null() {
            return Err(verb_errno("ibv_create_comp_channel"));
        }
        let c = CompletionChannel {
            inner: Arc::new(ChannelInner {
                ch,
                _ctx: ctx.clone(),
            }),
        };
        set_nonblocking(c.fd())?;
        Ok(c)
    }

    /// The channel's fd (nonblocking).
    pub fn fd(&self) -> i32 {
        // SAFETY: live channel.
        unsafe { (*self.inner.ch).fd }
    }

    /// Takes one pending event, if any, and acknowledges it at once. Nonblocking.
    pub fn try_get_event(&self) -> Result<Option<CqEvent>> {
        let mut cq: *mut sys::ibv_cq = std::ptr::null_mut();
        let mut cq_ctx: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: live channel, valid out pointers.
        let rc = unsafe { sys::ibv_get_cq_event(self.inner.ch, &mut cq, &mut cq_ctx) };
        if rc != 0 {
            let e = verb_errno("ibv_get_cq_event");
            return match e.errno() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `cq` is the live CQ the event is for: a CQ cannot be destroyed while it has
        // unacknowledged events, and we acknowledge right after reading its handle.
        let handle = unsafe { (*cq).handle };
        // SAFETY: as above; one ack per event got.
        unsafe { sys::ibv_ack_cq_events(cq, 1) };
        Ok(Some(CqEvent { cq_handle: handle }))
    }

    /// Waits up to `timeout` for an event: poll(2) on the fd, then
    /// [`try_get_event`](Self::try_get_event). `Ok(None)` on timeout.
    pub fn get_event(&self, timeout: Duration) -> Result<Option<CqEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.try_get_event()? {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            wait_readable(self.fd(), left)?;
        }
    }
}

pub(crate) fn set_nonblocking(fd: i32) -> Result<()> {
    // SAFETY: fcntl on an fd we own; no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::Sys {
            call: "fcntl(F_GETFL)",
            errno: crate::error::last_errno(),
        });
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(Error::Sys {
            call: "fcntl(F_SETFL)",
            errno: crate::error::last_errno(),
        });
    }
    Ok(())
}

/// poll(2) for readability, up to `timeout`. Returns true if readable (or error/hangup).
pub(crate) fn wait_readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let errno = crate::error::last_errno();
        if errno == libc::EINTR {
            return Ok(false);
        }
        return Err(Error::Sys {
            call: "poll",
            errno,
        });
    }
    Ok(rc > 0)
}

pub(crate) struct CqInner {
    pub(crate) cq: *mut sys::ibv_cq,
    poll_fn: PollFn,
    notify_fn: NotifyFn,
    pub(crate) ctx: Context,
    channel: Option<CompletionChannel>,
}

type PollFn = unsafe extern "C" fn(*mut sys::ibv_cq, i32, *mut sys::ibv_wc) -> i32;
type NotifyFn = unsafe extern "C" fn(*mut sys::ibv_cq, i32) -> i32;

// SAFETY: owned pointer; polling and arming a CQ are thread safe in libibverbs providers
// (they lock the CQ).
unsafe impl Send for CqInner {}
// SAFETY: as above.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: QPs hold an Arc of their CQs, so none uses it; channel events were acked
        // when taken.
        unsafe {
            sys::ibv_destroy_cq(self.cq);
        }
    }
}

/// A completion queue (classic `ibv_poll_cq`; the extended CQ is avoided, it is broken on
/// Debian 12's rxe). Cheap to clone; QPs keep their CQs alive.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CompletionQueue({}, handle {})",
            self.inner.ctx.name(),
            self.handle()
        )
    }
}

impl CompletionQueue {
    /// Creates a CQ of at least `cqe` entries, optionally tied to a completion channel
    /// (needed for [`wait`](Self::wait) to sleep instead of spin).
    pub fn new(ctx: &Context, cqe: u32, channel: Option<&CompletionChannel>) -> Result<Self> {
        let ch = channel.map_or(std::ptr::null_mut(), |c| c.inner.ch);
        let cqe = i32::try_from(cqe).map_err(|_| Error::InvalidArgument("cqe too large"))?;
        // SAFETY: valid context; `ch` is null or a live channel of the same context kept alive
        // by the CQ below.
        let cq = unsafe { sys::ibv_create_cq(ctx.raw(), cqe, std::ptr::null_mut(), ch, 0) };
        if cq.is_null() {
            return Err(verb_errno("ibv_create_cq"));
        }
        // SAFETY: a live CQ's context ops were filled by the provider at open time.
        let ops = unsafe { &(*ctx.raw()).ops };
        let (poll_fn, notify_fn) = match (ops.poll_cq, ops.req_notify_cq) {
            (Some(p), Some(n)) => (p, n),
            _ => {
                // SAFETY: destroy the CQ we just created.
                unsafe { sys::ibv_destroy_cq(cq) };
                return Err(Error::Verb {
                    verb: "ibv_poll_cq",
                    errno: libc::ENOSYS,
                });
            }
        };
        Ok(CompletionQueue {
            inner: Arc::new(CqInner {
                cq,
                poll_fn,
                notify_fn,
                ctx: ctx.clone(),
                channel: channel.cloned(),
            }),
        })
    }

    /// The CQ's handle (matches [`CqEvent::cq_handle`]).
    pub fn handle(&self) -> u32 {
        // SAFETY: live CQ.
        unsafe { (*self.inner.cq).handle }
    }

    /// Actual number of entries.
    pub fn capacity(&self) -> u32 {
        // SAFETY: live CQ.
        unsafe { (*self.inner.cq).cqe }.max(0) as u32
    }

    /// The device context.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Polls up to `out.len()` completions into `out`; returns how many. No allocation.
    #[inline]
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize> {
        let n = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `Completion` is layout-identical to ibv_wc and `out` has room for `n`.
        let rc = unsafe { (self.inner.poll_fn)(self.inner.cq, n, out.as_mut_ptr().cast()) };
        if rc < 0 {
            return Err(Error::Verb {
                verb: "ibv_poll_cq",
                errno: if rc == -1 { libc::EIO } else { -rc },
            });
        }
        Ok(rc as usize)
    }

    /// Polls into raw `ibv_wc` entries (for code that wants the bindings' type).
    #[inline]
    pub fn poll_raw(&self, out: &mut [sys::ibv_wc]) -> Result<usize> {
        let n = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `out` has room for `n` entries.
        let rc = unsafe { (self.inner.poll_fn)(self.inner.cq, n, out.as_mut_ptr()) };
        if rc < 0 {
            return Err(Error::Verb {
                verb: "ibv_poll_cq",
                errno: if rc == -1 { libc::EIO } else { -rc },
            });
        }
        Ok(rc as usize)
    }

    /// Arms the CQ: the next completion (or next solicited one) raises a channel event.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: live CQ.
        let rc = unsafe { (self.inner.notify_fn)(self.inner.cq, solicited_only as i32) };
        verb_rc("ibv_req_notify_cq", rc)
    }

    /// Spin-then-block wait: polls for up to `spin`, then arms the CQ and sleeps on its
    /// channel (if it has one; otherwise keeps polling) until a completion arrives or
    /// `timeout` (counted from the call) passes. Returns the number polled into `out`;
    /// 0 means the timeout passed.
    ///
    /// Use one channel per waited-on CQ: events of other CQs on a shared channel are consumed.
    pub fn wait(&self, out: &mut [Completion], spin: Duration, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            let Some(ch) = &self.inner.channel else {
                std::hint::spin_loop();
                continue;
            };
            if now < start + spin {
                std::hint::spin_loop();
                continue;
            }
            self.req_notify(false)?;
            // A completion that arrived before arming raises no event: poll once more.
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            ch.get_event(deadline.saturating_duration_since(Instant::now()))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_decoding() {
        let c = Completion::from_raw_parts(7, 0, 129, 64, 0x11).with_imm(0xdead_beef);
        assert_eq!(c.status(), WcStatus::Success);
        assert_eq!(c.opcode(), WcOpcode::RecvRdmaWithImm);
        assert_eq!(c.imm(), Some(0xdead_beef));
        // On the wire / in ibv_wc the immediate is big-endian.
        assert_eq!(c.imm_data, 0xdead_beef_u32.to_be());
        assert_eq!((c.wr_id(), c.byte_len(), c.qp_num()), (7, 64, 0x11));
        let f = Completion::from_raw_parts(1, 5, 0xffff, 0, 1);
        assert_eq!(f.status(), WcStatus::Flushed);
        assert_eq!(f.opcode(), WcOpcode::Other(0xffff));
        assert_eq!(f.imm(), None);
        assert!(!f.is_success());
        let u = Completion::from_raw_parts(1, 999, 0, 0, 1);
        assert_eq!(u.status(), WcStatus::Other(999));
        assert!(format!("{u:?}").contains("Other(999)"));
    }

    #[test]
    fn completion_matches_ibv_wc_layout() {
        assert_eq!(std::mem::size_of::<Completion>(), 48);
        assert_eq!(std::mem::offset_of!(Completion, imm_data), 24);
        assert_eq!(std::mem::offset_of!(Completion, qp_num), 28);
        let raw = sys::ibv_wc::default();
        // SAFETY (test): same size and alignment, checked at compile time.
        let c: Completion = unsafe { std::mem::transmute(raw) };
        assert_eq!(c.raw_status(), sys::ibv_wc_status::IBV_WC_GENERAL_ERR);
        assert_eq!(c.opcode(), WcOpcode::LocalInv);
    }
}
