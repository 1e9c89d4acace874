//! The backend's fair share: at most `max_concurrent` requests in flight to the
//! upstreams, and when they are all taken, one FIFO queue per tenant served in turn
//! (deficit round robin with every request costing one quantum, which is round robin
//! over the tenants that wait). A tenant that floods waits behind itself: another
//! tenant's request waits for at most one of the flooder's per freed slot.
//!
//! A freed slot is handed straight to the next waiter (it never goes back to the pool
//! in between), so a newcomer cannot overtake the queue. A waiter past `queue_deadline`
//! (or whose client left) takes itself out of its queue; one that was handed a slot in
//! that instant gives it back.
//!
//! Locking: `state` is a `std::sync::Mutex` held for queue bookkeeping only, never
//! across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::config::BackendLimits;
use super::metrics::{LimitMetrics, Rejection};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// `max_queue` requests wait already.
    QueueFull,
    /// No slot within `queue_deadline`.
    Deadline,
}

impl Busy {
    pub fn rejection(self) -> Rejection {
        match self {
            Busy::QueueFull => Rejection::QueueFull,
            Busy::Deadline => Rejection::QueueDeadline,
        }
    }
}

/// The gate. Cheap to clone.
#[derive(Clone)]
pub struct FairShare {
    inner: Arc<Inner>,
}

struct Inner {
    limits: BackendLimits,
    state: Mutex<State>,
    metrics: LimitMetrics,
}

#[derive(Default)]
struct State {
    /// Slots taken.
    busy: usize,
    /// Waiters in all queues (those that left are removed by themselves).
    queued: usize,
    /// Each waiting tenant's queue, oldest first.
    flows: HashMap<u64, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with a non-empty queue, in service order.
    turn: VecDeque<u64>,
}

/// A backend slot; dropping it hands the slot to the next waiter.
pub struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl FairShare {
    pub fn new(limits: BackendLimits, metrics: LimitMetrics) -> FairShare {
        FairShare {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(State::default()),
                metrics,
            }),
        }
    }

    /// A slot for `tenant` (any stable key for it), now or after its turn in the queue.
    pub async fn acquire(&self, tenant: u64) -> Result<Slot, Busy> {
        let inner = &self.inner;
        let receiver = {
            let mut state = inner.lock();
            if state.busy < inner.limits.max_concurrent && state.turn.is_empty() {
                state.busy += 1;
                inner.publish(&state);
                return Ok(Slot {
                    inner: inner.clone(),
                });
            }
            if state.queued >= inner.limits.max_queue {
                return Err(Busy::QueueFull);
            }
            let (sender, receiver) = oneshot::channel();
            let flow = state.flows.entry(tenant).or_default();
            flow.push_back(sender);
            if flow.len() == 1 {
                state.turn.push_back(tenant);
            }
            state.queued += 1;
            inner.publish(&state);
            receiver
        };
        let started = Instant::now();
        let mut waiting = Waiting {
            inner: inner.clone(),
            tenant,
            receiver: Some(receiver),
        };
        let granted = tokio::time::timeout(
            inner.limits.queue_deadline,
            waiting.receiver.as_mut().expect("set above"),
        )
        .await;
        match granted {
            Ok(Ok(())) => {
                waiting.receiver = None;
                inner.metrics.waited(started.elapsed());
                Ok(Slot {
                    inner: inner.clone(),
                })
            }
            // The sender is only dropped unsent by `Waiting` itself, or when the gate
            // is gone: either way no slot.
            Ok(Err(_)) | Err(_) => Err(Busy::Deadline),
        }
    }

    /// Slots taken and requests waiting, for tests and metrics.
    pub fn load(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.busy, state.queued)
    }

    /// The configured bound.
    pub fn max_concurrent(&self) -> usize {
        self.inner.limits.max_concurrent
    }

    pub fn queue_deadline(&self) -> Duration {
        self.inner.limits.queue_deadline
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: &State) {
        self.metrics.set_backend(state.busy, state.queued);
    }

    /// A slot is free: to the next tenant's oldest waiter, or back to the pool.
    fn release(&self) {
        let mut state = self.lock();
        while let Some(tenant) = state.turn.pop_front() {
            let Some(flow) = state.flows.get_mut(&tenant) else {
                continue;
            };
            let next = flow.pop_front();
            let more = !flow.is_empty();
            if more {
                state.turn.push_back(tenant);
            } else {
                state.flows.remove(&tenant);
            }
            if let Some(sender) = next {
                state.queued -= 1;
                if sender.send(()).is_ok() {
                    self.publish(&state);
                    return;
                }
            }
        }
        state.busy -= 1;
        self.publish(&state);
    }

    /// A waiter left: its closed sender is removed from its tenant's queue.
    fn forget_closed(&self, tenant: u64) {
        let mut state = self.lock();
        let Some(flow) = state.flows.get_mut(&tenant) else {
            return;
        };
        let before = flow.len();
        flow.retain(|sender| !sender.is_closed());
        let removed = before - flow.len();
        let empty = flow.is_empty();
        state.queued -= removed;
        if empty {
            state.flows.remove(&tenant);
            state.turn.retain(|t| *t != tenant);
        }
        self.publish(&state);
    }
}

/// A queued request; dropped before it was granted (deadline, client gone), it leaves
/// its queue, and gives back a slot handed to it in that instant.
struct Waiting {
    inner: Arc<Inner>,
    tenant: u64,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if receiver.try_recv().is_ok() {
            self.inner.release();
        }
        self.inner.forget_closed(self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_concurrent: usize, max_queue: usize, deadline: Duration) -> FairShare {
        FairShare::new(
            BackendLimits {
                max_concurrent,
                queue_deadline: deadline,
                max_queue,
            },
            LimitMetrics::default(),
        )
    }

    /// Polls `future` once, to enqueue it.
    async fn enqueue<F: std::future::Future + Unpin>(future: &mut F) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::pin::Pin::new(future).poll(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn tenants_are_served_in_turn_whoever_queued_more() {
        let gate = gate(1, 100, Duration::from_secs(60));
        let first = gate.acquire(1).await.expect("free slot");
        // Tenant 1 queues three, then tenant 2 one: 2 is served second, not fourth.
        let mut waiters = Vec::new();
        for tenant in [1, 1, 1, 2] {
            let g = gate.clone();
            let mut w = Box::pin(async move { (tenant, g.acquire(tenant).await) });
            enqueue(&mut w).await;
            waiters.push(w);
        }
        assert_eq!(gate.load(), (1, 4));
        drop(first);
        let mut order = Vec::new();
        let mut pending: Vec<_> = waiters.into_iter().collect();
        while !pending.is_empty() {
            let ((tenant, slot), _, rest) = futures_util::future::select_all(pending).await;
            order.push(tenant);
            drop(slot.expect("granted"));
            pending = rest;
        }
        assert_eq!(order, [1, 2, 1, 1]);
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_deadline_refuses_later() {
        let gate = gate(1, 1, Duration::from_millis(10));
        let held = gate.acquire(7).await.expect("free slot");
        let g = gate.clone();
        let mut queued = Box::pin(async move { g.acquire(7).await.map(drop) });
        enqueue(&mut queued).await;
        assert_eq!(gate.acquire(8).await.err(), Some(Busy::QueueFull));
        assert_eq!(queued.await.err(), Some(Busy::Deadline));
        // The waiter that left is out of the queue; the slot is still held.
        assert_eq!(gate.load(), (1, 0));
        drop(held);
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_whose_client_left_never_takes_a_slot() {
        let gate = gate(1, 10, Duration::from_secs(60));
        let held = gate.acquire(1).await.expect("free slot");
        let g = gate.clone();
        let mut gone = Box::pin(async move { g.acquire(2).await.map(drop) });
        enqueue(&mut gone).await;
        drop(gone);
        assert_eq!(gate.load(), (1, 0));
        drop(held);
        assert_eq!(gate.load(), (0, 0));
        let _again = gate.acquire(3).await.expect("the slot came back");
    }
}
