//! A message-counter client: sends a numbered message to its peer every period and counts what
//! arrives. It shows that a pair's traffic continues undisturbed while other clients come and go,
//! and measures the gap a failover leaves in a steady stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_verbs::Completion;
use crossbeam_channel::RecvTimeoutError;

use crate::node::channel::{Delivery, RcChannel};
use crate::node::{ClientHandle, ClientNotice};

/// Counters a running counter client publishes.
#[derive(Debug, Default)]
pub struct CounterStats {
    /// Messages sent and completed.
    pub sent: AtomicU64,
    /// Messages received from the peer.
    pub received: AtomicU64,
    /// Highest sequence number received.
    pub last_seq: AtomicU64,
    /// Longest time between two received messages, in microseconds (the largest gap).
    pub max_gap_us: AtomicU64,
    /// Times the client was stopped (failover, re-initialization).
    pub stops: AtomicU64,
    /// Set to stop sending and let go of the VI (a graceful leave: quiesce, then unregister).
    pub quiesce: std::sync::atomic::AtomicBool,
}

/// Run a counter client until its handle's channel closes. Sends every `period`, and polls for
/// completions every quarter period (at least every 25 ms, at most every millisecond).
pub fn run(handle: ClientHandle, period: Duration, stats: Arc<CounterStats>) {
    let mut vi: Option<(
        Arc<RcChannel>,
        crate::wire::InterconnectId,
        crate::wire::Generation,
    )> = None;
    let mut seq = 0u64;
    let mut wc = [Completion::default(); 16];
    let mut next_send = Instant::now();
    let mut last_rx: Option<Instant> = None;
    // Completions are polled every quarter period (1 to 25 ms): gaps are measured to that precision.
    // Polling every millisecond whatever the period, 64 counters used three quarters of the lab
    // guest's CPU and starved the node's own thread (its heartbeats) in the 64-client bring-up.
    let poll_every = (period / 4).clamp(Duration::from_millis(1), Duration::from_millis(25));
    loop {
        let wait = if vi.is_some() {
            next_send
                .saturating_duration_since(Instant::now())
                .min(poll_every)
        } else {
            Duration::from_millis(50)
        };
        match handle.events.recv_timeout(wait) {
            Ok(ClientNotice::Ready {
                ic,
                generation,
                vis,
                ..
            }) => {
                vi = vis.into_iter().next().map(|v| (v, ic, generation));
            }
            Ok(ClientNotice::Stop { .. }) => {
                vi = None;
                stats.stops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ClientNotice::PartnerDown) | Ok(ClientNotice::PartnerClosed) => vi = None,
            Ok(ClientNotice::PartnerSuspect) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stats.quiesce.load(Ordering::Relaxed) {
            vi = None;
        }
        let Some((v, ic, generation)) = &vi else {
            continue;
        };
        let mut failed = false;
        if Instant::now() >= next_send {
            next_send += period;
            if next_send < Instant::now() {
                next_send = Instant::now() + period;
            }
            seq += 1;
            let msg = seq.to_le_bytes();
            match v.send_inline(&msg) {
                Ok(_) => handle.add_bytes(msg.len() as u64),
                Err(_) => failed = true,
            }
        }
        failed |= v.poll_messages(&mut wc, |d| match d {
            Delivery::Sent => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Delivery::Received(bytes) => {
                if let Ok(b) = <[u8; 8]>::try_from(bytes) {
                    stats
                        .last_seq
                        .fetch_max(u64::from_le_bytes(b), Ordering::Relaxed);
                }
                stats.received.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if let Some(prev) = last_rx {
                    stats
                        .max_gap_us
                        .fetch_max((now - prev).as_micros() as u64, Ordering::Relaxed);
                }
                last_rx = Some(now);
            }
        });
        if failed {
            handle.report_vi_error(*ic, *generation);
            vi = None;
        }
    }
}
