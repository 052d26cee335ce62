//! Completion queues shared by several VIs, with spin-then-block waiting.

use crate::error::{Error, Result};
use crate::vi::{ViCompletion, ViShared};
use ccm_verbs::{Completion, CompletionChannel, CompletionQueue, Context};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Default number of polls before a wait arms the CQ and sleeps on its channel.
pub const DEFAULT_SPIN_POLLS: u32 = 200;

/// Completions taken from the device per poll call.
const POLL_BATCH: usize = 16;

struct CqState {
    /// Completions for the owner, already decoded; capacity reserved for every bound queue.
    ready: VecDeque<ViCompletion>,
    buf: [Completion; POLL_BATCH],
}

struct Registry {
    vis: HashMap<u32, Weak<ViShared>>,
    reserved: u32,
}

pub(crate) struct CqShared {
    cq: CompletionQueue,
    channel: CompletionChannel,
    capacity: u32,
    pub(crate) private: bool,
    state: Mutex<CqState>,
    registry: Mutex<Registry>,
    spin_polls: std::sync::atomic::AtomicU32,
}

/// A completion queue (`VIP_CQ_HANDLE`): the send and/or receive queues of several VIs
/// complete into it. [`done`](Self::done) / [`wait`](Self::wait) return the next completed
/// descriptor with its VI and queue. Cheap to clone.
#[derive(Clone)]
pub struct ViCq {
    pub(crate) inner: Arc<CqShared>,
}

impl std::fmt::Debug for ViCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ViCq({:?}, {} entries)",
            self.inner.cq, self.inner.capacity
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ViCq {
    pub(crate) fn new(ctx: &Context, entries: u32, private: bool) -> Result<ViCq> {
        if entries == 0 {
            return Err(Error::InvalidArgument("CQ of zero entries"));
        }
        let channel = CompletionChannel::new(ctx)?;
        let cq = CompletionQueue::new(ctx, entries, Some(&channel))?;
        let capacity = cq.capacity().max(entries);
        Ok(ViCq {
            inner: Arc::new(CqShared {
                cq,
                channel,
                capacity,
                private,
                state: Mutex::new(CqState {
                    ready: VecDeque::new(),
                    buf: [Completion::default(); POLL_BATCH],
                }),
                registry: Mutex::new(Registry {
                    vis: HashMap::new(),
                    reserved: 0,
                }),
                spin_polls: std::sync::atomic::AtomicU32::new(DEFAULT_SPIN_POLLS),
            }),
        })
    }

    /// Entries of the device CQ.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity
    }

    /// Polls before a wait blocks on the completion channel.
    pub fn set_spin_polls(&self, n: u32) {
        self.inner
            .spin_polls
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The completion channel fd (readable after [`arm`](Self::arm) when a completion
    /// arrives), for an event loop that polls many fds.
    pub fn fd(&self) -> i32 {
        self.inner.channel.fd()
    }

    /// Arms the CQ for one channel event.
    pub fn arm(&self) -> Result<()> {
        Ok(self.inner.cq.req_notify(false)?)
    }

    pub(crate) fn verbs_cq(&self) -> &CompletionQueue {
        &self.inner.cq
    }

    pub(crate) fn same(&self, other: &ViCq) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Binds a VI queue needing `entries` CQ entries.
    pub(crate) fn attach(&self, qpn: u32, vi: &Arc<ViShared>, entries: u32) -> Result<()> {
        let mut r = lock(&self.inner.registry);
        if r.reserved + entries > self.inner.capacity {
            return Err(Error::CqTooSmall {
                capacity: self.inner.capacity - r.reserved,
                needed: entries,
            });
        }
        r.reserved += entries;
        r.vis.insert(qpn, Arc::downgrade(vi));
        drop(r);
        // Room for every completion the bound queues can have outstanding, so pushing a
        // completion never reallocates.
        let mut s = lock(&self.inner.state);
        let r = lock(&self.inner.registry).reserved as usize;
        let have = s.ready.capacity() - s.ready.len();
        if r > have {
            s.ready.reserve(r);
        }
        Ok(())
    }

    /// The VI's QP was recreated: new QPN.
    pub(crate) fn rebind(&self, old: u32, new: u32, vi: &Arc<ViShared>) {
        let mut r = lock(&self.inner.registry);
        r.vis.remove(&old);
        r.vis.insert(new, Arc::downgrade(vi));
    }

    pub(crate) fn detach(&self, qpn: u32, entries: u32) {
        let mut r = lock(&self.inner.registry);
        r.vis.remove(&qpn);
        r.reserved = r.reserved.saturating_sub(entries);
    }

    /// Moves every completion the device has into the ready list (handling flow-control
    /// messages and errors on the way). Returns how many device completions were taken.
    pub(crate) fn process(&self) -> Result<usize> {
        let mut s = lock(&self.inner.state);
        self.process_locked(&mut s)
    }

    fn process_locked(&self, s: &mut CqState) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.inner.cq.poll(&mut s.buf)?;
            for i in 0..n {
                let wc = s.buf[i];
                let vi = lock(&self.inner.registry)
                    .vis
                    .get(&wc.qp_num())
                    .and_then(Weak::upgrade);
                // Completions of destroyed VIs are dropped.
                if let Some(vi) = vi {
                    if let Some(c) = vi.on_completion(&wc) {
                        s.ready.push_back(c);
                    }
                }
            }
            total += n;
            if n < POLL_BATCH {
                return Ok(total);
            }
        }
    }

    /// `VipCQDone` (+ `VipSendDone`/`VipRecvDone` of the VI it names): the next completed
    /// descriptor of any bound VI, or `None`. Never blocks, never allocates.
    pub fn done(&self) -> Result<Option<ViCompletion>> {
        let mut s = lock(&self.inner.state);
        if let Some(c) = s.ready.pop_front() {
            return Ok(Some(c));
        }
        self.process_locked(&mut s)?;
        Ok(s.ready.pop_front())
    }

    /// `VipCQWait`: spin-then-block. Polls up to the spin count, then arms the CQ and sleeps
    /// on its completion channel until a completion arrives or `timeout` passes (`None`).
    pub fn wait(&self, timeout: Duration) -> Result<Option<ViCompletion>> {
        let deadline = Instant::now() + timeout;
        let spin = self
            .inner
            .spin_polls
            .load(std::sync::atomic::Ordering::Relaxed);
        loop {
            for _ in 0..spin.max(1) {
                if let Some(c) = self.done()? {
                    return Ok(Some(c));
                }
                std::hint::spin_loop();
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.arm()?;
            // A completion that arrived before arming raises no event: look once more.
            if let Some(c) = self.done()? {
                return Ok(Some(c));
            }
            self.inner
                .channel
                .get_event(deadline.saturating_duration_since(now))?;
        }
    }

    /// Waits (bounded) for `n` completions, appending them to `out`. Returns early on
    /// timeout; the caller compares `out.len()`.
    pub fn wait_many(
        &self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<ViCompletion>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let goal = out.len() + n;
        while out.len() < goal {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.wait(left)? {
                Some(c) => out.push(c),
                None => return Ok(()),
            }
        }
        Ok(())
    }
}
