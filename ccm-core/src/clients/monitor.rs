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
//!
//! **Both nodes must agree on when a partner is down.** A monitor registered with [`register`] tells its
//! peer, as its private data, how its node declares the partner down ([`Detection`]: heartbeat period,
//! misses, the `partner_down` window), and compares the peer's with its own on every `Ready`. Nodes whose
//! settings differ would declare each other down after different silences (one may begin a takeover while
//! the other still waits): the monitor reports it ([`DetectionCheck::Differs`], in [`MonitorView::detection`]
//! and as a [`Decision::Detection`]), and keeps running; the embedding code decides what a mismatch means.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_verbs::Completion;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::manager::{ClientSpec, Detection};
use crate::node::channel::{Delivery, RcChannel};
use crate::node::{ClientHandle, ClientNotice, NodeError, NodeHandle};
use crate::wire::{Generation, InterconnectId};

/// Encoded [`Detection`] (the monitor's private data), little-endian:
/// `CCMD`, layout 1, heartbeat period in microseconds (u32), misses (u32), `partner_down` in milliseconds (u32).
const DETECTION_LEN: usize = 17;
const DETECTION_MAGIC: [u8; 4] = *b"CCMD";

/// A [`Detection`] as the monitor's private data. Durations beyond the fields' range (71 minutes of
/// heartbeat period, 49 days of window) are saturated.
pub fn encode_detection(d: &Detection) -> [u8; DETECTION_LEN] {
    let sat = |v: u128| u32::try_from(v).unwrap_or(u32::MAX);
    let mut b = [0u8; DETECTION_LEN];
    b[0..4].copy_from_slice(&DETECTION_MAGIC);
    b[4] = 1;
    b[5..9].copy_from_slice(&sat(d.heartbeat_period.as_micros()).to_le_bytes());
    b[9..13].copy_from_slice(&d.heartbeat_misses.to_le_bytes());
    b[13..17].copy_from_slice(&sat(d.partner_down_after.as_millis()).to_le_bytes());
    b
}

/// What the peer monitor's private data says, against this node's own [`Detection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectionCheck {
    /// Both nodes declare the partner down after the same silences.
    Same(Detection),
    /// They do not.
    Differs {
        /// This node's.
        ours: Detection,
        /// The partner's.
        partner: Detection,
    },
    /// The peer client's private data is no monitor's (another kind of client under the monitor's id:
    /// the nodes' configurations disagree).
    NotAMonitor {
        /// Its length.
        len: usize,
    },
}

/// Compare the peer monitor's private data with `ours`; `None` if it told nothing (a monitor registered
/// without [`register`], or a manager older than protocol version 3). Compared as encoded, so both sides
/// judge the same values.
pub fn check_detection(ours: &Detection, partner_private: &[u8]) -> Option<DetectionCheck> {
    if partner_private.is_empty() {
        return None;
    }
    let b = partner_private;
    if b.len() < DETECTION_LEN || b[0..4] != DETECTION_MAGIC || b[4] == 0 {
        return Some(DetectionCheck::NotAMonitor { len: b.len() });
    }
    let u = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes"));
    let partner = Detection {
        heartbeat_period: Duration::from_micros(u(5..9).into()),
        heartbeat_misses: u(9..13),
        partner_down_after: Duration::from_millis(u(13..17).into()),
    };
    Some(match encode_detection(ours)[5..] == b[5..DETECTION_LEN] {
        true => DetectionCheck::Same(*ours),
        false => DetectionCheck::Differs {
            ours: *ours,
            partner,
        },
    })
}

/// Register a failover monitor on `node`: `spec` with the node's [`Detection`] as its private data, for the
/// peer monitor's check. [`run`] it on the returned handle.
pub fn register(node: &NodeHandle, spec: ClientSpec) -> Result<ClientHandle, NodeError> {
    let private = encode_detection(&node.detection()).to_vec();
    node.register(ClientSpec { private, ..spec }, Vec::new())
}

/// A failover monitor running on a thread of its own ([`start`]).
pub struct Monitor {
    /// Its current view, kept up to date by the thread.
    pub view: Arc<Mutex<MonitorView>>,
    /// Its decisions, in order; the thread never blocks on them.
    pub decisions: Receiver<Decision>,
}

/// [`register`] a failover monitor on `node` and [`run`] it, polling every `period`, on a thread named
/// `client-<name>`; it ends when the node stops or the client is unregistered.
pub fn start(node: &NodeHandle, spec: ClientSpec, period: Duration) -> Result<Monitor, NodeError> {
    let thread = format!("client-{}", spec.name);
    let handle = register(node, spec)?;
    let view = Arc::new(Mutex::new(MonitorView::new()));
    let (tx, decisions) = crossbeam_channel::unbounded();
    let v = view.clone();
    std::thread::Builder::new()
        .name(thread)
        .spawn(move || run(handle, period, v, tx))
        .map_err(|source| NodeError::Io {
            what: "spawning the failover monitor's thread".into(),
            source,
        })?;
    Ok(Monitor { view, decisions })
}

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
    /// The peer monitor told how its node declares the partner down, and it is not how this one does (or
    /// it is no monitor); sent when that changes.
    Detection(DetectionCheck),
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
    /// The last check of the peer monitor's [`Detection`] against this node's; `None` until a peer
    /// registered with [`register`] was met.
    pub detection: Option<DetectionCheck>,
}

/// Run the monitor until its handle closes. Decisions go to `decisions`; `view` is kept current.
pub fn run(
    handle: ClientHandle,
    period: Duration,
    view: Arc<Mutex<MonitorView>>,
    decisions: Sender<Decision>,
) {
    let started = Instant::now();
    let ours = handle.node().detection();
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
                partner,
                ..
            }) => {
                vi = vis.into_iter().next().map(|v| (v, ic, generation));
                if let Some(check) = check_detection(&ours, &partner.private) {
                    let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                    if v.detection != Some(check) {
                        v.detection = Some(check);
                        drop(v);
                        if !matches!(check, DetectionCheck::Same(_)) {
                            tracing::warn!(target: "ccm::monitor", "{check:?}");
                            let _ = decisions.send(Decision::Detection(check));
                        }
                    }
                }
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
            detection: None,
        }
    }
}

impl Default for MonitorView {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(heartbeat_ms: u64, misses: u32, down_ms: u64) -> Detection {
        Detection {
            heartbeat_period: Duration::from_millis(heartbeat_ms),
            heartbeat_misses: misses,
            partner_down_after: Duration::from_millis(down_ms),
        }
    }

    #[test]
    fn a_peer_with_the_same_detection_is_the_same_and_one_that_differs_is_named() {
        let ours = detection(10, 3, 500);
        let same = encode_detection(&ours);
        assert_eq!(
            check_detection(&ours, &same),
            Some(DetectionCheck::Same(ours))
        );
        for theirs in [
            detection(10, 3, 5000),
            detection(20, 3, 500),
            detection(10, 5, 500),
        ] {
            assert_eq!(
                check_detection(&ours, &encode_detection(&theirs)),
                Some(DetectionCheck::Differs {
                    ours,
                    partner: theirs
                })
            );
        }
        // A later layout may append fields: the first ones are still compared.
        let mut longer = same.to_vec();
        longer.extend_from_slice(&[7; 8]);
        longer[4] = 2;
        assert_eq!(
            check_detection(&ours, &longer),
            Some(DetectionCheck::Same(ours))
        );
    }

    #[test]
    fn a_peer_that_tells_nothing_is_not_judged_and_one_that_is_no_monitor_is_named() {
        let ours = detection(10, 3, 500);
        assert_eq!(check_detection(&ours, &[]), None);
        let mirror_formats = b"CCMF\x01\x02\x04\x00\x00\x00";
        assert_eq!(
            check_detection(&ours, mirror_formats),
            Some(DetectionCheck::NotAMonitor { len: 10 })
        );
        let mut layout0 = encode_detection(&ours);
        layout0[4] = 0;
        assert_eq!(
            check_detection(&ours, &layout0),
            Some(DetectionCheck::NotAMonitor { len: 17 })
        );
    }

    #[test]
    fn durations_beyond_the_fields_saturate_and_sub_unit_values_compare_as_encoded() {
        let huge = Detection {
            heartbeat_period: Duration::from_secs(5000),
            heartbeat_misses: 3,
            partner_down_after: Duration::from_secs(u64::MAX / 4),
        };
        let b = encode_detection(&huge);
        assert_eq!(&b[5..9], &u32::MAX.to_le_bytes());
        assert_eq!(&b[13..17], &u32::MAX.to_le_bytes());
        // 500.4 ms and 500 ms encode alike: both sides judge the same values.
        let ours = detection(10, 3, 500);
        let close = Detection {
            partner_down_after: Duration::from_micros(500_400),
            ..ours
        };
        assert!(matches!(
            check_detection(&close, &encode_detection(&ours)),
            Some(DetectionCheck::Same(_))
        ));
    }
}
