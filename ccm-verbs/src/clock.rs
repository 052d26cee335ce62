//! A cheap cycle counter for measured paths, and its calibration against the monotonic clock.
//!
//! A guest under QEMU TCG whose kernel judged the TSC unstable reads the HPET, and `Instant::now()`
//! then costs about 1 us, a few percent of a ping-pong round trip (the lab guest boots with
//! `tsc=reliable` since 2026-12-01; docs/lab-contract.md); the TSC costs about 20 ns. perftest
//! timestamps with the TSC too (`get_cycles`). Ticks are converted to time with a rate
//! calibrated against the monotonic clock over the measured run itself ([`Calibration`]), so
//! no CPU frequency has to be trusted.
//!
//! ```
//! use ccm_verbs::clock::{cycles, Calibration};
//! let calib = Calibration::start();
//! let t0 = cycles();
//! std::thread::sleep(std::time::Duration::from_millis(5));
//! let t1 = cycles();
//! let ns = t1.wrapping_sub(t0) as f64 / calib.ticks_per_ns();
//! assert!(ns > 1e6);
//! ```

use std::time::Instant;

/// Reads the cycle counter: the TSC on x86_64; elsewhere nanoseconds of a monotonic clock
/// since the first call in the process. Only differences are meaningful; convert them to time
/// with [`Calibration::ticks_per_ns`].
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a register, touches no memory and exists on every x86_64 CPU
        // (the `_rdtsc` intrinsic needs no target feature). User-mode RDTSC is allowed by
        // Linux unless the process disables it with prctl(PR_SET_TSC), which would make it
        // fault (SIGSEGV), not misbehave; nothing in ccm does that.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Calibrates ticks of [`cycles`] per nanosecond between [`Calibration::start`] and
/// [`Calibration::ticks_per_ns`].
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    t0: Instant,
    c0: u64,
}

impl Calibration {
    /// Starts a calibration window.
    pub fn start() -> Self {
        let t0 = Instant::now();
        let c0 = cycles();
        Calibration { t0, c0 }
    }

    /// Ticks per nanosecond since `start` (call after at least a few milliseconds). Returns
    /// 1.0 if no time or no ticks have passed.
    pub fn ticks_per_ns(&self) -> f64 {
        let c1 = cycles();
        let ns = self.t0.elapsed().as_nanos() as f64;
        let ticks = c1.wrapping_sub(self.c0) as f64;
        if ns <= 0.0 || ticks <= 0.0 {
            1.0
        } else {
            ticks / ns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cycles_advance_and_calibrate() {
        let calib = Calibration::start();
        let a = cycles();
        std::thread::sleep(Duration::from_millis(20));
        let b = cycles();
        assert!(b.wrapping_sub(a) > 0, "the counter did not advance");
        let rate = calib.ticks_per_ns();
        assert!(rate.is_finite() && rate > 0.0, "rate {rate}");
        // The slept interval, measured in ticks and converted back, is about 20 ms (generous
        // bounds: CI machines and TCG guests are noisy).
        let ns = b.wrapping_sub(a) as f64 / rate;
        assert!(
            (15e6..2e9).contains(&ns),
            "measured {ns} ns for a 20 ms sleep"
        );
    }
}
