//! The clients that ship with ccm, as a storage engine would link them.
//!
//! * [`counter`]: a steady numbered stream, to show traffic undisturbed and measure failover gaps.
//! * [`nvram`]: NVRAM mirroring: a log appended locally and RDMA-written into the partner's memory, acknowledged
//!   once there, resent across failovers, applied on the partner in order and exactly once.
//! * [`monitor`]: the failover monitor: partner Up / Suspect / Down, and when a takeover may begin.

pub mod counter;
pub mod monitor;
pub mod nvram;
