//! The clients that ship with ccm, as a storage engine would link them.
//!
//! * [`counter`]: a steady numbered stream, to show traffic undisturbed and measure failover gaps.
//! * [`monitor`]: the failover monitor: partner Up / Suspect / Down, and when a takeover may begin.

pub mod counter;
pub mod monitor;
