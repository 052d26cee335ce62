//! The clients that ship with ccm, as a storage engine would link them.
//!
//! * [`counter`]: a steady numbered stream, to show traffic undisturbed and measure failover gaps.

pub mod counter;
