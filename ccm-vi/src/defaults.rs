//! Reliability timeouts of a VI, derived from a failure-detection budget
//! (see `docs/decisions/0002-vi-defaults.md`).

use crate::error::{Error, Result};
use std::time::Duration;

/// The transport timers of a reliable VI (the QP's RTR/RTS attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Local ACK timeout code: 4.096 us * 2^code per try.
    pub ack_timeout: u8,
    /// Transport retries after the first try (0..=6; 7 means "forever" on rxe: refused).
    pub retry_cnt: u8,
    /// RNR retries (0..=6; 7 means forever: refused).
    pub rnr_retry: u8,
    /// RNR NAK timer code this VI asks a sender to wait (14 = 1.28 ms).
    pub min_rnr_timer: u8,
}

/// Failure-detection budget of the defaults: how long the RC transport may take to declare a
/// silent peer dead (the manager's heartbeats and port events cover the rest; see 0002).
pub const DEFAULT_DETECTION_BUDGET: Duration = Duration::from_millis(350);

/// Retries preferred: 3 tolerates three consecutive lost packets (or ACKs).
pub const PREFERRED_RETRY_CNT: u8 = 3;

/// Measured spread of rxe's retry timer over the nominal value: retry_cnt 3, timeout 14
/// (nominal 4 x 67.1 ms = 268 ms) gave 242-327 ms, i.e. up to 1.22x. Budgets use 1.25x.
pub const TIMER_SPREAD: f64 = 1.25;

/// Smallest and largest ACK timeout codes used (1.05 ms .. 4.3 s).
const MIN_CODE: u8 = 8;
const MAX_CODE: u8 = 20;

/// Duration of one try for ACK timeout `code`.
pub fn ack_timeout_duration(code: u8) -> Duration {
    Duration::from_nanos(4096u64 << code.min(31))
}

/// RNR NAK timer code -> duration (IBTA table; code 0 is 655.36 ms).
pub fn rnr_timer_duration(code: u8) -> Duration {
    const US: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840,
        5120, 7680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
        245_760, 327_680, 491_520,
    ];
    Duration::from_micros(US[(code & 31) as usize] as u64)
}

impl Timeouts {
    /// The defaults: derived from [`DEFAULT_DETECTION_BUDGET`] (timeout 14, retry_cnt 3,
    /// rnr_retry 3, min_rnr_timer 14).
    pub fn default_for_budget() -> Timeouts {
        Self::from_detection_budget(DEFAULT_DETECTION_BUDGET)
            .expect("the default budget is feasible")
    }

    /// The longest per-try ACK timeout such that `(retry_cnt + 1)` tries, stretched by
    /// [`TIMER_SPREAD`], fit in `budget`, with retry_cnt = 3 (fewer retries only if even
    /// the smallest timeout does not fit). RNR: credits make RNR impossible unless a peer
    /// misbehaves, so an RNR fails fast: 3 retries of 1.28 ms.
    pub fn from_detection_budget(budget: Duration) -> Result<Timeouts> {
        for retry in (1..=PREFERRED_RETRY_CNT).rev() {
            let tries = retry as f64 + 1.0;
            let best = (MIN_CODE..=MAX_CODE).rev().find(|&c| {
                ack_timeout_duration(c).as_secs_f64() * tries * TIMER_SPREAD <= budget.as_secs_f64()
            });
            if let Some(code) = best {
                return Ok(Timeouts {
                    ack_timeout: code,
                    retry_cnt: retry,
                    rnr_retry: 3,
                    min_rnr_timer: 14,
                });
            }
        }
        Err(Error::InvalidArgument(
            "detection budget below 2 tries of 1 ms",
        ))
    }

    /// Refuses values that mean "forever" or "never".
    pub fn validate(&self) -> Result<()> {
        if self.retry_cnt >= 7 {
            return Err(Error::InvalidArgument("retry_cnt 7 retries forever on rxe"));
        }
        if self.rnr_retry >= 7 {
            return Err(Error::InvalidArgument("rnr_retry 7 retries forever"));
        }
        if self.ack_timeout == 0 || self.ack_timeout > 31 {
            return Err(Error::InvalidArgument(
                "ack_timeout 0 (infinite) or above 31",
            ));
        }
        if self.min_rnr_timer > 31 {
            return Err(Error::InvalidArgument("min_rnr_timer above 31"));
        }
        Ok(())
    }

    /// Nominal time to declare a silent peer dead: (retry_cnt + 1) x ACK timeout.
    pub fn nominal_detection(&self) -> Duration {
        ack_timeout_duration(self.ack_timeout) * (self.retry_cnt as u32 + 1)
    }

    /// Longest time an RNR condition lasts before the VI fails: (rnr_retry + 1) x RNR timer.
    pub fn rnr_give_up(&self) -> Duration {
        rnr_timer_duration(self.min_rnr_timer) * (self.rnr_retry as u32 + 1)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::default_for_budget()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_derived_and_bounded() {
        let t = Timeouts::default();
        assert_eq!(
            t,
            Timeouts {
                ack_timeout: 14,
                retry_cnt: 3,
                rnr_retry: 3,
                min_rnr_timer: 14
            }
        );
        t.validate().unwrap();
        let nominal = t.nominal_detection();
        assert!(nominal > Duration::from_millis(260) && nominal < Duration::from_millis(280));
        assert!(nominal.mul_f64(TIMER_SPREAD) <= DEFAULT_DETECTION_BUDGET);
        assert_eq!(t.rnr_give_up(), Duration::from_micros(4 * 1280));
    }

    #[test]
    fn budgets_map_to_timeouts_never_seven() {
        for ms in [3u64, 10, 50, 100, 200, 350, 500, 1000, 5000, 60_000] {
            let t = Timeouts::from_detection_budget(Duration::from_millis(ms)).unwrap();
            t.validate().unwrap();
            assert!(t.retry_cnt < 7 && t.rnr_retry < 7);
            let worst = t.nominal_detection().mul_f64(TIMER_SPREAD);
            assert!(
                worst <= Duration::from_millis(ms),
                "{ms} ms -> {t:?} ({worst:?})"
            );
        }
        // A larger budget never gives a shorter timeout.
        let a = Timeouts::from_detection_budget(Duration::from_millis(100)).unwrap();
        let b = Timeouts::from_detection_budget(Duration::from_millis(1000)).unwrap();
        assert!(b.ack_timeout >= a.ack_timeout);
        assert!(Timeouts::from_detection_budget(Duration::from_millis(1)).is_err());
    }

    #[test]
    fn validate_refuses_forever() {
        for t in [
            Timeouts {
                retry_cnt: 7,
                ..Timeouts::default()
            },
            Timeouts {
                rnr_retry: 7,
                ..Timeouts::default()
            },
            Timeouts {
                ack_timeout: 0,
                ..Timeouts::default()
            },
            Timeouts {
                min_rnr_timer: 32,
                ..Timeouts::default()
            },
        ] {
            assert!(t.validate().is_err(), "{t:?}");
        }
    }

    #[test]
    fn timer_tables() {
        assert_eq!(ack_timeout_duration(14), Duration::from_nanos(67_108_864));
        assert_eq!(rnr_timer_duration(12), Duration::from_micros(640));
        assert_eq!(rnr_timer_duration(0), Duration::from_micros(655_360));
    }
}
