//! Per-client byte meters for adaptive balancing.
//!
//! A client thread adds the bytes of every work request it posts to its [`ByteMeter`] (one relaxed
//! `fetch_add` on a shared counter: no allocation, no system call, no lock). The driver takes the
//! count every `balance_period` ([`ByteMeter::take`]) and feeds the manager one
//! [`crate::manager::Input::Measured`] with every client's bytes of the period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes a client posted since the driver last sampled it. Cheap to clone; clones count together.
#[derive(Clone, Debug, Default)]
pub struct ByteMeter(Arc<AtomicU64>);

impl ByteMeter {
    /// Count `bytes` posted (a send, an RDMA write, ...).
    #[inline]
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The bytes counted since the previous take, resetting the count (the driver's sample).
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_count_together_and_a_take_starts_a_new_period() {
        let m = ByteMeter::default();
        let c = m.clone();
        m.add(100);
        c.add(24);
        assert_eq!(m.take(), 124);
        assert_eq!(c.take(), 0);
        c.add(7);
        assert_eq!(m.take(), 7);
    }
}
