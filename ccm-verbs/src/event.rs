//! Asynchronous device events (port up/down, QP and CQ errors, device fatal).

use crate::cq::{set_nonblocking, wait_readable};
use crate::device::Context;
use crate::error::{verb_errno, Result};
use ibverbs_sys as sys;
use std::time::{Duration, Instant};

/// An asynchronous event, decoded from its integer type (unknown numbers are kept, never UB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEvent {
    /// CQ overrun or error (CQ handle).
    CqErr {
        /// CQ handle.
        cq_handle: u32,
    },
    /// QP catastrophic error.
    QpFatal {
        /// QP number.
        qpn: u32,
    },
    /// Invalid request on a QP.
    QpReqErr {
        /// QP number.
        qpn: u32,
    },
    /// Access violation on a QP.
    QpAccessErr {
        /// QP number.
        qpn: u32,
    },
    /// Communication established (first packet in RTR).
    CommEst {
        /// QP number.
        qpn: u32,
    },
    /// Send queue drained.
    SqDrained {
        /// QP number.
        qpn: u32,
    },
    /// Path migrated.
    PathMig {
        /// QP number.
        qpn: u32,
    },
    /// Path migration error.
    PathMigErr {
        /// QP number.
        qpn: u32,
    },
    /// Last WQE reached (SRQ QPs).
    QpLastWqeReached {
        /// QP number.
        qpn: u32,
    },
    /// The device is gone or broken: every object of the context is dead.
    DeviceFatal,
    /// A port became ACTIVE.
    PortActive {
        /// Port number.
        port: u8,
    },
    /// A port left ACTIVE.
    PortErr {
        /// Port number.
        port: u8,
    },
    /// LID changed.
    LidChange {
        /// Port number.
        port: u8,
    },
    /// P_Key table changed.
    PkeyChange {
        /// Port number.
        port: u8,
    },
    /// Subnet manager changed.
    SmChange {
        /// Port number.
        port: u8,
    },
    /// Client re-register request.
    ClientReregister {
        /// Port number.
        port: u8,
    },
    /// GID table changed.
    GidChange {
        /// Port number.
        port: u8,
    },
    /// SRQ error.
    SrqErr,
    /// SRQ limit reached.
    SrqLimitReached,
    /// WQ fatal.
    WqFatal,
    /// An event number this crate does not know.
    Unknown(u32),
}

/// Raw mirror of `struct ibv_async_event` with the event type as a plain integer.
#[repr(C)]
struct RawAsyncEvent {
    element: sys::ibv_async_event__bindgen_ty_1,
    event_type: u32,
}

const _: () =
    assert!(std::mem::size_of::<RawAsyncEvent>() == std::mem::size_of::<sys::ibv_async_event>());

/// Reader of one device context's async events. The context's async fd is made nonblocking,
/// so [`fd`](Self::fd) can be polled with others. Every event read is acknowledged.
pub struct AsyncEvents {
    ctx: Context,
}

impl std::os::fd::AsFd for AsyncEvents {
    /// The async fd, for `poll(2)` alongside others.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the context's async fd is open as long as the context, which `self` keeps alive
        // for the borrow's lifetime.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ctx.async_fd()) }
    }
}

impl AsyncEvents {
    /// A reader for `ctx` (sets its async fd nonblocking).
    pub fn new(ctx: &Context) -> Result<AsyncEvents> {
        set_nonblocking(ctx.async_fd())?;
        Ok(AsyncEvents { ctx: ctx.clone() })
    }

    /// The async fd (readable when an event is pending).
    pub fn fd(&self) -> i32 {
        self.ctx.async_fd()
    }

    /// Takes one pending event, if any (nonblocking), and acknowledges it.
    pub fn try_next(&self) -> Result<Option<AsyncEvent>> {
        let mut raw = std::mem::MaybeUninit::<RawAsyncEvent>::zeroed();
        // SAFETY: RawAsyncEvent has the size and layout of ibv_async_event; its event type is
        // read as u32, so any number the kernel sends is a valid value.
        let rc = unsafe { sys::ibv_get_async_event(self.ctx.raw(), raw.as_mut_ptr().cast()) };
        if rc != 0 {
            let e = verb_errno("ibv_get_async_event");
            return match e.errno() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: filled by a successful ibv_get_async_event; every field is plain data.
        let raw = unsafe { raw.assume_init() };
        let ev = decode(&raw);
        // SAFETY: one ack for one successful get, with the struct it returned.
        unsafe {
            sys::ibv_ack_async_event(&raw as *const RawAsyncEvent as *mut sys::ibv_async_event)
        };
        Ok(Some(ev))
    }

    /// Waits up to `timeout` for the next event. `Ok(None)` on timeout.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Option<AsyncEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.try_next()? {
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

fn decode(raw: &RawAsyncEvent) -> AsyncEvent {
    // SAFETY (all three helpers): the union member read is the one libibverbs documents for
    // the event type; the QP/CQ pointed to cannot be destroyed before the event is acked, and
    // we ack only after decoding.
    let qpn = || unsafe {
        let qp = raw.element.qp;
        if qp.is_null() {
            0
        } else {
            (*qp).qp_num
        }
    };
    // SAFETY: see above (CQ member for CQ events).
    let cqh = || unsafe {
        let cq = raw.element.cq;
        if cq.is_null() {
            0
        } else {
            (*cq).handle
        }
    };
    // SAFETY: see above (port member for port events; any int is valid).
    let port = || unsafe { raw.element.port_num.clamp(0, 255) as u8 };
    match raw.event_type {
        sys::IBV_EVENT_CQ_ERR => AsyncEvent::CqErr { cq_handle: cqh() },
        sys::IBV_EVENT_QP_FATAL => AsyncEvent::QpFatal { qpn: qpn() },
        sys::IBV_EVENT_QP_REQ_ERR => AsyncEvent::QpReqErr { qpn: qpn() },
        sys::IBV_EVENT_QP_ACCESS_ERR => AsyncEvent::QpAccessErr { qpn: qpn() },
        sys::IBV_EVENT_COMM_EST => AsyncEvent::CommEst { qpn: qpn() },
        sys::IBV_EVENT_SQ_DRAINED => AsyncEvent::SqDrained { qpn: qpn() },
        sys::IBV_EVENT_PATH_MIG => AsyncEvent::PathMig { qpn: qpn() },
        sys::IBV_EVENT_PATH_MIG_ERR => AsyncEvent::PathMigErr { qpn: qpn() },
        sys::IBV_EVENT_QP_LAST_WQE_REACHED => AsyncEvent::QpLastWqeReached { qpn: qpn() },
        sys::IBV_EVENT_DEVICE_FATAL => AsyncEvent::DeviceFatal,
        sys::IBV_EVENT_PORT_ACTIVE => AsyncEvent::PortActive { port: port() },
        sys::IBV_EVENT_PORT_ERR => AsyncEvent::PortErr { port: port() },
        sys::IBV_EVENT_LID_CHANGE => AsyncEvent::LidChange { port: port() },
        sys::IBV_EVENT_PKEY_CHANGE => AsyncEvent::PkeyChange { port: port() },
        sys::IBV_EVENT_SM_CHANGE => AsyncEvent::SmChange { port: port() },
        sys::IBV_EVENT_CLIENT_REREGISTER => AsyncEvent::ClientReregister { port: port() },
        sys::IBV_EVENT_GID_CHANGE => AsyncEvent::GidChange { port: port() },
        sys::IBV_EVENT_SRQ_ERR => AsyncEvent::SrqErr,
        sys::IBV_EVENT_SRQ_LIMIT_REACHED => AsyncEvent::SrqLimitReached,
        sys::IBV_EVENT_WQ_FATAL => AsyncEvent::WqFatal,
        v => AsyncEvent::Unknown(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_event(t: u32, port: i32) -> RawAsyncEvent {
        RawAsyncEvent {
            element: sys::ibv_async_event__bindgen_ty_1 { port_num: port },
            event_type: t,
        }
    }

    #[test]
    fn decodes_port_device_and_unknown_events() {
        assert_eq!(
            decode(&port_event(9, 1)),
            AsyncEvent::PortActive { port: 1 }
        );
        assert_eq!(decode(&port_event(10, 2)), AsyncEvent::PortErr { port: 2 });
        assert_eq!(
            decode(&port_event(18, 1)),
            AsyncEvent::GidChange { port: 1 }
        );
        assert_eq!(decode(&port_event(8, 0)), AsyncEvent::DeviceFatal);
        assert_eq!(decode(&port_event(10, -5)), AsyncEvent::PortErr { port: 0 });
        assert_eq!(decode(&port_event(1000, 1)), AsyncEvent::Unknown(1000));
        assert_eq!(
            decode(&port_event(u32::MAX, 1)),
            AsyncEvent::Unknown(u32::MAX)
        );
        // QP events with a null element decode to QPN 0 rather than dereferencing it.
        let qp = RawAsyncEvent {
            element: sys::ibv_async_event__bindgen_ty_1 {
                qp: std::ptr::null_mut(),
            },
            event_type: sys::IBV_EVENT_QP_FATAL,
        };
        assert_eq!(decode(&qp), AsyncEvent::QpFatal { qpn: 0 });
    }
}
