//! A cheap cycle counter for the measured path.
//!
//! In the lab guest (QEMU TCG) the kernel's clocksource is the HPET and `Instant::now()` costs
//! about 1 us, a few percent of a ping-pong round trip; the TSC costs about 20 ns. perftest
//! timestamps with the TSC too (`get_cycles`). Ticks are converted to time with a rate
//! calibrated against the monotonic clock over the measured run itself, so no CPU frequency
//! has to be trusted.

use std::time::Instant;

/// Reads the cycle counter (TSC on x86_64; elsewhere nanoseconds of a monotonic clock).
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unsafe_code)]
        // SAFETY: RDTSC reads a register, touches no memory and exists on every x86_64 CPU
        // (user-mode RDTSC is allowed by Linux unless a process disables it with prctl, which
        // this program never does).
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Calibrates ticks per nanosecond between [`Calibration::start`] and
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

    /// Ticks per nanosecond since `start` (call after at least a few milliseconds).
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
