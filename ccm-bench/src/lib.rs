//! ccm-bench: benchmarks of ccm's verbs layer next to perftest, in the same guest boot.
//!
//! * [`verbs_bench`]: RC ping-pong latency (SEND/RECV like `ib_send_lat`, RDMA WRITE like
//!   `ib_write_lat`) and a windowed RDMA WRITE / SEND stream (like `ib_write_bw`), both sides of
//!   the connection in one process (one thread per side, each with its own device, QP and CQs).
//! * [`perftest`]: running perftest's server and client and parsing what they print.
//! * [`stats`]: HdrHistogram summaries and `.hgrm` percentile distributions.
//! * [`report`]: the per-run records printed as a table or as one JSON object per run.
//! * [`pair`], [`mirror_bench`], [`failover`]: two real ccm nodes in one process with the NVRAM mirror
//!   client: mirror latency and throughput (`mirror`, `compare mirror`), link cuts under traffic (`failover`).
//! * [`bringup`]: slam connect of N VIs (`bringup`), next to rdma_cm's `cmtime` (`compare bringup`).
//! * [`cpu`]: the machine's CPU use during a throughput run (`/proc/stat`).
//! * [`plot`]: SVG latency percentile curves and the failover timeline.
//!
//! Latency is one-way = RTT / 2, measured as perftest does: a cycle-counter timestamp at every
//! post of the initiating side, one sample per consecutive pair of posts. The counter is
//! [`ccm_verbs::clock`]: this crate contains no `unsafe` (ccm-verbs is the only crate that does).
#![forbid(unsafe_code)]

pub mod bringup;
pub mod cpu;
pub mod failover;
pub mod mirror_bench;
pub mod pair;
pub mod perftest;
pub mod plot;
pub mod report;
pub mod stats;
pub mod verbs_bench;
