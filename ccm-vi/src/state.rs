//! VI states as in the VI Architecture specification 1.0 (section 2.5 / VI state diagram),
//! for slam-connected VIs: there is no "pending connect" state because slam connect has no
//! request/response.
//!
//! ```text
//!            slam_connect               error completion / async QP error / disconnect
//!   Idle ------------------> Connected ------------------------------------------> Error
//!    ^                          |  slam_connect(same remote): no-op                    |
//!    |                          |  slam_connect(other remote): AlreadyConnected       |
//!    +------------------------- reset (descriptors flushed, QP reset or recreated) ----+
//! ```

use crate::address::ViAddress;
use crate::error::{Error, Result};

/// State of a VI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViState {
    /// Created or reset; not connected. Receives may be posted (they go to the QP at connect).
    Idle,
    /// Slam connected to one remote VI.
    Connected,
    /// Broken: every outstanding descriptor completes with an error status; reset to reuse.
    Error,
}

/// Why a VI entered the Error state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCause {
    /// A descriptor completed with this error status (e.g. retry exceeded, local QP error).
    Completion(ccm_verbs::WcStatus),
    /// The device reported an async error for the VI's QP.
    AsyncEvent(ccm_verbs::AsyncEvent),
    /// The owner disconnected the VI.
    Disconnected,
    /// Slam connect failed after receives were handed to the QP (they are flushed).
    ConnectFailed,
    /// The device reported the QP in the error state.
    QpState,
}

/// What slam connect has to do, decided from the state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectAction {
    /// Drive the QP to RTS.
    Connect,
    /// Already connected to this remote: nothing to do.
    AlreadyDone,
}

/// The state machine of one VI (pure: no device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViStateMachine {
    state: ViState,
    remote: Option<ViAddress>,
    cause: Option<ErrorCause>,
}

impl Default for ViStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

/// Two addresses name the same remote VI if interconnect, VI number, GID and PSN agree.
fn same_remote(a: &ViAddress, b: &ViAddress) -> bool {
    a.interconnect == b.interconnect
        && a.vi_number == b.vi_number
        && a.gid == b.gid
        && a.psn == b.psn
}

impl ViStateMachine {
    /// A new VI: Idle.
    pub fn new() -> Self {
        ViStateMachine {
            state: ViState::Idle,
            remote: None,
            cause: None,
        }
    }
    /// Current state.
    pub fn state(&self) -> ViState {
        self.state
    }
    /// The remote VI while connected (and in Error, the one it was connected to).
    pub fn remote(&self) -> Option<&ViAddress> {
        self.remote.as_ref()
    }
    /// Why the VI is in Error (the first cause).
    pub fn cause(&self) -> Option<ErrorCause> {
        self.cause
    }
    /// Decides what slam connect to `remote` means now.
    pub fn check_connect(&self, remote: &ViAddress) -> Result<ConnectAction> {
        match (self.state, &self.remote) {
            (ViState::Idle, _) => Ok(ConnectAction::Connect),
            (ViState::Connected, Some(r)) if same_remote(r, remote) => {
                Ok(ConnectAction::AlreadyDone)
            }
            (ViState::Connected, Some(r)) => Err(Error::AlreadyConnected {
                connected: r.vi_number,
                asked: remote.vi_number,
            }),
            (ViState::Connected, None) => Err(Error::InError),
            (ViState::Error, _) => Err(Error::InError),
        }
    }
    /// Idle -> Connected.
    pub fn connected(&mut self, remote: ViAddress) -> Result<()> {
        if self.state != ViState::Idle {
            return Err(Error::NotConnected(self.state));
        }
        self.state = ViState::Connected;
        self.remote = Some(remote);
        Ok(())
    }
    /// Any state -> Error; returns true if this call made the transition (first cause kept).
    pub fn fail(&mut self, cause: ErrorCause) -> bool {
        if self.state == ViState::Error {
            return false;
        }
        self.state = ViState::Error;
        self.cause = Some(cause);
        true
    }
    /// Any state -> Idle (after the descriptors were flushed and the QP reset).
    pub fn reset(&mut self) {
        *self = ViStateMachine::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reliability;
    use ccm_verbs::{Gid, Mtu, WcStatus};

    fn remote(qpn: u32, psn: u32) -> ViAddress {
        ViAddress {
            interconnect: 0,
            vi_number: qpn,
            gid: Gid([1; 16]),
            psn,
            mtu: Mtu::Mtu1024,
            reliability: Reliability::ReliableDelivery,
            rdma_write: false,
            rdma_read: false,
            credits: 8,
            mailbox: ccm_verbs::RemoteAddr {
                addr: 0x1000,
                rkey: 7,
            },
        }
    }

    #[test]
    fn idle_connected_error_idle() {
        let mut m = ViStateMachine::new();
        assert_eq!(m.state(), ViState::Idle);
        let r = remote(0x20, 5);
        assert_eq!(m.check_connect(&r), Ok(ConnectAction::Connect));
        m.connected(r).unwrap();
        assert_eq!(m.state(), ViState::Connected);
        assert_eq!(m.remote(), Some(&r));
        // Same remote again: no-op. Credits differ but do not name another VI.
        let mut again = r;
        again.credits = 1;
        assert_eq!(m.check_connect(&again), Ok(ConnectAction::AlreadyDone));
        // Another remote (other QPN, or same QPN with a fresh PSN): refused.
        assert_eq!(
            m.check_connect(&remote(0x21, 5)),
            Err(Error::AlreadyConnected {
                connected: 0x20,
                asked: 0x21
            })
        );
        assert!(m.check_connect(&remote(0x20, 6)).is_err());
        // Connecting twice without the check is refused too.
        assert_eq!(m.connected(r), Err(Error::NotConnected(ViState::Connected)));
        assert!(m.fail(ErrorCause::Completion(WcStatus::RetryExceeded)));
        assert!(!m.fail(ErrorCause::Disconnected), "first cause is kept");
        assert_eq!(m.state(), ViState::Error);
        assert_eq!(
            m.cause(),
            Some(ErrorCause::Completion(WcStatus::RetryExceeded))
        );
        assert_eq!(m.check_connect(&r), Err(Error::InError));
        m.reset();
        assert_eq!(m.state(), ViState::Idle);
        assert_eq!(m.cause(), None);
        assert_eq!(m.remote(), None);
        assert_eq!(
            m.check_connect(&remote(0x30, 1)),
            Ok(ConnectAction::Connect)
        );
    }

    #[test]
    fn idle_can_fail_and_reset() {
        let mut m = ViStateMachine::new();
        assert!(m.fail(ErrorCause::ConnectFailed));
        assert_eq!(m.state(), ViState::Error);
        assert_eq!(
            m.connected(remote(1, 1)),
            Err(Error::NotConnected(ViState::Error))
        );
        m.reset();
        assert_eq!(m.state(), ViState::Idle);
    }
}
