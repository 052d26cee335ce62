//! The cluster connection manager (CCM) of an HA storage pair, written sans-IO.
//!
//! * [`wire`]: the versioned, length-checked binary control protocol between the two managers.
//! * [`auth`]: challenge-response authentication over the shared cluster secret.
//! * [`manager`]: the manager state machine: the patent's Fig. 4 bring-up and Fig. 5 operation,
//!   the link monitor, failover and failback. Events and time in, [`manager::Action`]s out.
//! * [`mirror`]: NVRAM mirroring bookkeeping: the log format, the writer, the partner's in-order apply.
//! * [`node`]: the real driver: the manager on RDMA devices and TCP initial sessions, the client API.
//! * [`placement`]: pure placement decisions (Fig. 8 static balancing, Fig. 9 failover target).
//! * [`sim`]: a deterministic simulator of two nodes and N interconnects with seeded faults that
//!   drives the same state machine and checks invariants after every step.
//! * [`sim_mirror`]: a deterministic simulation of the NVRAM mirror (the real writer and reader over a
//!   simulated RC link with seeded faults and process crashes), checking its invariants after every step.
//!
//! Nothing here owns a thread, a clock or a socket: a driver (the real one on ccm-vi / ccm-verbs, or
//! the simulator) feeds [`manager::Input`]s with the current [`Time`] and carries out the actions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod clients;
pub mod manager;
pub mod mirror;
pub mod node;
pub mod placement;
pub mod seeds;
pub mod sim;
pub mod sim_mirror;
pub mod wire;

use std::time::Duration;

/// A point in time, in nanoseconds since an arbitrary origin chosen by the driver (a monotonic clock
/// in the real driver, zero at the start of a simulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms * 1_000_000)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
