//! The failover monitor: decides whether the partner is alive, suspect or down, and says when a
//! takeover may begin.
//!
//! The decision follows the manager, which watches every interconnect: the loss of one link stops and
//! moves the clients on it but leaves the partner **Up**; only when no interconnect is left is the
//! partner **Suspect**, and only when none came back within `partner_down` (the configured window in
//! which all links must agree) is it **Down**, which is when a takeover may begin. A restarted partner
//! is Down at once (its clients and state are gone), then Up again when it is back.
//!
//! On top of that the monitor exchanges its own heartbeats with its peer monitor over its VI, so the
//! embedding code can see that the peer *process* (not just its manager) is making progress.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_verbs::Completion;
use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::node::channel::{Delivery, RcChannel};
use crate::node::{ClientHandle, ClientNotice};
use crate::wire::{Generation, InterconnectId};

/// What the monitor concluded about the partner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartnerState {
    /// Not seen yet.
    Unknown,
    /// Connected and heartbeating.
    Up {
        /// Since when (time since the monitor started).
        since: Duration,
    },
    /// No interconnect left; not yet declared down.
    Suspect {
        /// Since when.
        since: Duration,
    },
    /// Declared down: a takeover may begin.
    Down {
        /// When.
        at: Duration,
        /// Why.
        reason: DownReason,
    },
}

/// Why the partner was declared down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// Every interconnect stayed silent for the whole window.
    AllInterconnectsSilent,
    /// The partner restarted (a new incarnation): its state is gone.
    Restarted,
}

/// A decision, as sent to the embedding code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The partner state changed.
    State(PartnerState),
    /// The partner is down: the takeover may begin.
    TakeoverMayBegin,
}

/// What the monitor publishes.
#[derive(Debug)]
pub struct MonitorView {
    /// The current state.
    pub state: PartnerState,
    /// Heartbeats received from the peer monitor.
    pub heartbeats_received: u64,
    /// Every decision so far, with the interconnect in use when it was taken.
    pub history: Vec<(Duration, PartnerState, Option<InterconnectId>)>,
}

/// Run the monitor until its handle closes. Decisions go to `decisions`; `view` is kept current.
pub fn run(
    handle: ClientHandle,
    period: Duration,
    view: Arc<Mutex<MonitorView>>,
    decisions: Sender<Decision>,
) {
    let started = Instant::now();
    let mut vi: Option<(Arc<RcChannel>, InterconnectId, Generation)> = None;
    let mut wc = [Completion::default(); 16];
    let mut next_beat = Instant::now();
    let mut seq = 0u64;
    let set = |state: PartnerState, ic: Option<InterconnectId>| {
        let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
        if v.state != state {
            v.state = state.clone();
            v.history.push((started.elapsed(), state.clone(), ic));
            let down = matches!(state, PartnerState::Down { .. });
            let _ = decisions.send(Decision::State(state));
            if down {
                let _ = decisions.send(Decision::TakeoverMayBegin);
            }
        }
    };
    loop {
        // It wakes for its next heartbeat and then takes the peer's beats that arrived meanwhile: they
        // are counted, never judged (the manager decides about the partner), so nothing is gained by
        // looking more often, and each wake-up costs CPU that the node's driver and rxe need.
        let wait = if vi.is_some() {
            next_beat
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(100))
        } else {
            Duration::from_millis(20)
        };
        match handle.events.recv_timeout(wait) {
            Ok(ClientNotice::Ready {
                ic,
                generation,
                vis,
                ..
            }) => {
                vi = vis.into_iter().next().map(|v| (v, ic, generation));
                let up = matches!(
                    view.lock().unwrap_or_else(|e| e.into_inner()).state,
                    PartnerState::Up { .. }
                );
                if !up {
                    set(
                        PartnerState::Up {
                            since: started.elapsed(),
                        },
                        Some(ic),
                    );
                }
            }
            // One link's loss: the monitor's VI moves; the partner stays Up.
            Ok(ClientNotice::Stop { .. }) => vi = None,
            Ok(ClientNotice::PartnerSuspect) => set(
                PartnerState::Suspect {
                    since: started.elapsed(),
                },
                None,
            ),
            Ok(ClientNotice::PartnerDown) => {
                vi = None;
                let was_suspect = matches!(
                    view.lock().unwrap_or_else(|e| e.into_inner()).state,
                    PartnerState::Suspect { .. }
                );
                let reason = if was_suspect {
                    DownReason::AllInterconnectsSilent
                } else {
                    DownReason::Restarted
                };
                set(
                    PartnerState::Down {
                        at: started.elapsed(),
                        reason,
                    },
                    None,
                );
            }
            Ok(ClientNotice::PartnerClosed) => vi = None,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some((v, ic, generation)) = &vi else {
            continue;
        };
        let mut failed = false;
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + period;
            seq += 1;
            let beat = seq.to_le_bytes();
            match v.send_inline(&beat) {
                Ok(_) => handle.add_bytes(beat.len() as u64),
                Err(_) => failed = true,
            }
        }
        failed |= v.poll_messages(&mut wc, |d| {
            if let Delivery::Received(_) = d {
                view.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .heartbeats_received += 1;
            }
        });
        if failed {
            handle.report_vi_error(*ic, *generation);
            vi = None;
        }
    }
}

impl MonitorView {
    /// A fresh view.
    pub fn new() -> MonitorView {
        MonitorView {
            state: PartnerState::Unknown,
            heartbeats_received: 0,
            history: Vec::new(),
        }
    }
}

impl Default for MonitorView {
    fn default() -> Self {
        Self::new()
    }
}
