//! Timed work queue: keys with deadlines, handed to concurrent async workers once due.
//!
//! The controller keeps the pending evictions (the source of truth) elsewhere. This queue only
//! carries *keys* and *deadlines*: it wakes one of N concurrent workers when a key's deadline has
//! passed, and the worker re-reads the truth (missing means cancelled, a later deadline means
//! "schedule again"). Every operation is defined for every state of a key; nothing here panics.
//!
//! # State machine
//!
//! Per key the queue holds at most one record, which is in exactly one of two states (a key
//! without a record is *absent*):
//!
//! | state \ operation | `schedule(at)` | `schedule_no_later(at)` | `cancel` | due and taken by `next`/`try_next` | `done(ticket, c)` |
//! |---|---|---|---|---|---|
//! | absent | → waiting(at) | → waiting(at) | no-op | — | stale, ignored |
//! | waiting(d) | → waiting(at), earlier or later | → waiting(min(d, at)) | → absent | → in flight(deferred = none) | stale, ignored |
//! | in flight(deferred) | deferred := at | deferred := min(deferred, at) | deferred := none | never (one worker per key) | see below |
//!
//! [`WorkQueue::clear`] and [`WorkQueue::shutdown`] make every key absent (shutdown also makes
//! `next` return `None` and later schedules no-ops).
//!
//! `done` with the ticket of the current in-flight record computes the completion's own deadline
//! (`Forget`: none, `After(d)`: now + d, `Retry`: now + per-key exponential backoff) and re-queues
//! the key at the *earlier* of that deadline and the deferred one; with neither, the key becomes
//! absent. `done` with any other ticket (an older run of the same key, another key's ticket, a
//! ticket from before [`WorkQueue::clear`] or [`WorkQueue::shutdown`], or a second `done` with
//! the same ticket) changes nothing and reports [`Finished::Stale`]: the completion of an old item
//! never removes or alters its replacement. Tickets are unique for the life of the queue.
//!
//! Cancelling an in-flight key only drops its deferred deadline; the running worker is unaffected,
//! and its own completion (`After`, `Retry`) still re-queues the key. This errs on the side of one
//! extra wake-up: the worker then re-reads the truth, finds the eviction gone and answers `Forget`.
//!
//! # Ordering and data structures
//!
//! Waiting keys live in a `BTreeMap<(deadline, seq), key>` (the ordered set the workers pop
//! from) plus a `HashMap<key, record>` (state, failure count, and the `(deadline, seq)` position
//! needed to move or remove a waiting key). `seq` grows by one each time a key is put into the
//! waiting set (inserted, moved, or re-queued), so keys with equal deadlines are handed out in the
//! order they were last (re)positioned; a schedule that leaves the deadline unchanged keeps the
//! position. Every operation is O(log n) (the hash map is amortised O(1)).
//!
//! # Deadlines
//!
//! All deadlines are clamped to at most [`MAX_HORIZON`] (365 days) after the time they are set,
//! so `Instant + huge Duration` never overflows or panics; use [`deadline_after`] to compute one.
//! A deadline in the past is simply due immediately.
//!
//! # Waking workers
//!
//! A waiting [`WorkQueue::next`] first registers interest in the queue's [`Notify`], then checks
//! the state, then sleeps until the earliest deadline or a notification, so no wake-up is lost.
//! Every change that makes the earliest deadline earlier (and [`WorkQueue::shutdown`]) wakes all
//! sleeping workers, which re-check and go back to sleep until the new earliest deadline. There is
//! no polling loop: a worker only runs when a deadline passes or the head of the queue changes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The furthest in the future a deadline may lie: 365 days after the moment it is set.
///
/// Later deadlines (including `Duration::MAX` delays) are clamped to this horizon. An eviction
/// toleration that long is effectively "never"; the key is simply re-examined once a year.
pub const MAX_HORIZON: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `now + d`, saturating: the delay is clamped to [`MAX_HORIZON`], and should even that overflow
/// the platform's `Instant`, it is halved until it fits. Never panics.
#[must_use]
pub fn deadline_after(now: Instant, d: Duration) -> Instant {
    let mut d = d.min(MAX_HORIZON);
    loop {
        match now.checked_add(d) {
            Some(at) => return at,
            // Terminates: `checked_add(Duration::ZERO)` always succeeds.
            None => d /= 2,
        }
    }
}

/// Clamps an absolute deadline to at most [`MAX_HORIZON`] after `now`.
fn clamp_deadline(now: Instant, at: Instant) -> Instant {
    at.min(deadline_after(now, MAX_HORIZON))
}

/// Per-key exponential backoff for [`Completion::Retry`]: `base * 2^failures`, capped at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
}

impl Backoff {
    /// Default delay after the first failure: 5 ms (as client-go's item exponential limiter).
    pub const DEFAULT_BASE: Duration = Duration::from_millis(5);
    /// Default upper bound of the delay: 1000 s (as client-go's item exponential limiter).
    pub const DEFAULT_CAP: Duration = Duration::from_secs(1000);

    /// The delay before the next attempt of a key that has already failed `failures` times in a
    /// row: `base * 2^failures`, capped at `cap`, computed without overflow.
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let raw = match 2u32.checked_pow(failures) {
            Some(factor) => self.base.saturating_mul(factor),
            None if self.base.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        raw.min(self.cap)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Self::DEFAULT_BASE,
            cap: Self::DEFAULT_CAP,
        }
    }
}

/// What [`WorkQueue::schedule`] or [`WorkQueue::schedule_no_later`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// The key was absent; it now waits for the deadline.
    Inserted,
    /// The key was waiting and now waits for a different deadline.
    Moved {
        /// Whether the new deadline is earlier than the old one.
        earlier: bool,
    },
    /// The key was waiting and keeps its deadline and its place among equal deadlines (the same
    /// deadline was given, or `schedule_no_later` was given a later one).
    Unchanged,
    /// The key is in flight; the deadline is remembered and applied when its worker calls
    /// [`WorkQueue::done`].
    DeferredWhileInFlight,
    /// The queue has been shut down; nothing was recorded.
    ShutDown,
}

/// What [`WorkQueue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The key was waiting and has been removed (with its failure count).
    Removed,
    /// The key is in flight: its deferred re-queue (if any) was dropped; the running worker is
    /// unaffected and its completion is still applied.
    InFlight,
    /// The queue held nothing for the key.
    NotPresent,
}

/// How a worker finished processing a key, passed to [`WorkQueue::done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Success, nothing more to do: the failure count is cleared. The key is re-queued only if it
    /// was re-scheduled while in flight.
    Forget,
    /// Success, but look again after this delay: the failure count is cleared.
    After(Duration),
    /// Failure: retry after the per-key [`Backoff`] delay for the current failure count, which
    /// then grows by one.
    Retry,
    /// Failure, and the server asked us to wait (`Retry-After`): as [`Completion::Retry`], but no
    /// sooner than this delay.
    RetryAfter(Duration),
}

/// What [`WorkQueue::done`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The key is no longer in the queue.
    Forgotten,
    /// The key waits again, for this deadline.
    Requeued {
        /// The deadline the key now waits for.
        at: Instant,
    },
    /// The ticket does not belong to the key's current in-flight record; nothing changed.
    Stale,
}

/// Proof that a worker took a key from the queue; hand it back to [`WorkQueue::done`].
///
/// Each ticket is unique for the life of its queue, so a ticket from an earlier run of the same
/// key (or from before a [`WorkQueue::clear`]) is recognised as stale. Copying a ticket is
/// harmless: only the first `done` with it can take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// In the ordered set at position `(at, seq)`.
    Waiting { at: Instant, seq: u64 },
    /// Handed to a worker holding ticket `generation`; `deferred` is the deadline for the re-queue
    /// requested while it runs.
    InFlight {
        generation: u64,
        deferred: Option<Instant>,
    },
}

#[derive(Debug)]
struct Record {
    state: State,
    /// Consecutive `Retry` completions since the last `Forget`/`After`.
    failures: u32,
}

/// Returns the counter's value and advances it (wrapping: 2^64 steps never happen in practice).
fn bump(counter: &mut u64) -> u64 {
    let value = *counter;
    *counter = value.wrapping_add(1);
    value
}

struct Inner<K> {
    /// Waiting keys ordered by `(deadline, seq)`. Invariant: exactly the keys whose record is
    /// `Waiting`, each at the position stored in its record.
    waiting: BTreeMap<(Instant, u64), K>,
    /// One record per key present (waiting or in flight).
    records: HashMap<K, Record>,
    next_seq: u64,
    next_generation: u64,
    shut_down: bool,
}

impl<K: Clone + Eq + Hash> Inner<K> {
    fn earliest(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Whether a key put into the waiting set at `at` becomes the new head, i.e. whether
    /// sleeping workers must re-compute their wake-up time.
    fn heads_queue(&self, at: Instant) -> bool {
        self.earliest().is_none_or(|first| at < first)
    }

    /// Returns the outcome and whether sleeping workers must be woken.
    fn schedule(&mut self, key: K, at: Instant, no_later: bool) -> (Scheduled, bool) {
        let wake = self.heads_queue(at);
        let Some(record) = self.records.get_mut(&key) else {
            let seq = bump(&mut self.next_seq);
            self.waiting.insert((at, seq), key.clone());
            self.records.insert(
                key,
                Record {
                    state: State::Waiting { at, seq },
                    failures: 0,
                },
            );
            return (Scheduled::Inserted, wake);
        };
        match record.state {
            State::InFlight { generation, deferred } => {
                let deferred = match deferred {
                    Some(old) if no_later => old.min(at),
                    _ => at,
                };
                record.state = State::InFlight {
                    generation,
                    deferred: Some(deferred),
                };
                (Scheduled::DeferredWhileInFlight, false)
            }
            State::Waiting {
                at: old,
                seq: old_seq,
            } => {
                if at == old || (no_later && at > old) {
                    return (Scheduled::Unchanged, false);
                }
                self.waiting.remove(&(old, old_seq));
                let seq = bump(&mut self.next_seq);
                self.waiting.insert((at, seq), key);
                record.state = State::Waiting { at, seq };
                (Scheduled::Moved { earlier: at < old }, wake)
            }
        }
    }

    fn cancel(&mut self, key: &K) -> Cancelled {
        let Some(record) = self.records.get_mut(key) else {
            return Cancelled::NotPresent;
        };
        match record.state {
            State::InFlight { generation, .. } => {
                record.state = State::InFlight {
                    generation,
                    deferred: None,
                };
                Cancelled::InFlight
            }
            State::Waiting { at, seq } => {
                self.waiting.remove(&(at, seq));
                self.records.remove(key);
                Cancelled::Removed
            }
        }
    }

    /// Takes the earliest waiting key if it is due at `now`, marking it in flight.
    fn pop_due(&mut self, now: Instant) -> Option<(K, Ticket)> {
        loop {
            let head = self.waiting.first_entry()?;
            let (at, seq) = *head.key();
            if at > now {
                return None;
            }
            let key = head.remove();
            // The record must agree that the key waits at this very position; anything else is a
            // position orphaned by a panic in `K`'s `Hash`/`Eq`/`Clone` mid-update: drop it rather
            // than risk handing out a key that is already in flight.
            let Some(record) = self.records.get_mut(&key) else {
                continue;
            };
            if !matches!(record.state, State::Waiting { at: a, seq: s } if a == at && s == seq) {
                continue;
            }
            let generation = bump(&mut self.next_generation);
            record.state = State::InFlight {
                generation,
                deferred: None,
            };
            return Some((key, Ticket { generation }));
        }
    }

    /// Returns the outcome and whether sleeping workers must be woken.
    fn done(
        &mut self,
        key: &K,
        ticket: Ticket,
        completion: Completion,
        now: Instant,
        backoff: &Backoff,
    ) -> (Finished, bool) {
        // The key is in flight, hence not among the waiting keys: the head stays as it is.
        let head = self.earliest();
        let Some(record) = self.records.get_mut(key) else {
            return (Finished::Stale, false);
        };
        let State::InFlight { generation, deferred } = record.state else {
            return (Finished::Stale, false);
        };
        if generation != ticket.generation {
            return (Finished::Stale, false);
        }
        let own = match completion {
            Completion::Forget => {
                record.failures = 0;
                None
            }
            Completion::After(delay) => {
                record.failures = 0;
                Some(deadline_after(now, delay))
            }
            Completion::Retry => {
                let delay = backoff.delay(record.failures);
                record.failures = record.failures.saturating_add(1);
                Some(deadline_after(now, delay))
            }
            Completion::RetryAfter(at_least) => {
                let delay = backoff.delay(record.failures).max(at_least);
                record.failures = record.failures.saturating_add(1);
                Some(deadline_after(now, delay))
            }
        };
        let target = match (deferred, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(at) = target else {
            self.records.remove(key);
            return (Finished::Forgotten, false);
        };
        let wake = head.is_none_or(|first| at < first);
        let seq = bump(&mut self.next_seq);
        self.waiting.insert((at, seq), key.clone());
        record.state = State::Waiting { at, seq };
        (Finished::Requeued { at }, wake)
    }

    fn record(&self, key: &K) -> Option<&Record> {
        self.records.get(key)
    }
}

/// A timed work queue of keys, shared by N async workers (as `Arc<WorkQueue<K>>`).
///
/// See the [module documentation](self) for the state machine. All methods take `&self`; the
/// state is behind a mutex that is never held across an `.await`.
pub struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
    backoff: Backoff,
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// An empty queue whose `Retry` completions back off as `backoff` says.
    #[must_use]
    pub fn new(backoff: Backoff) -> Self {
        Self {
            inner: Mutex::new(Inner {
                waiting: BTreeMap::new(),
                records: HashMap::new(),
                next_seq: 0,
                next_generation: 0,
                shut_down: false,
            }),
            notify: Notify::new(),
            backoff,
        }
    }

    /// The backoff applied to `Retry` completions.
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Locks the state, recovering it if a thread panicked while holding the lock. Only `K`'s own
    /// `Hash`, `Eq` or `Clone` could panic mid-update; every operation tolerates the half-applied
    /// update that may leave (no panic, no key handed out twice; at worst one key that does not
    /// fire until it is scheduled again).
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the key's deadline (clamped to [`MAX_HORIZON`] from now).
    ///
    /// A waiting key is moved, earlier or later; an absent key is inserted; for an in-flight key
    /// the deadline is remembered (replacing an earlier remembered one) and, when its worker calls
    /// [`done`](Self::done), the key is re-queued at the earlier of this deadline and the
    /// completion's own. Wakes sleeping workers if the key becomes the head of the queue.
    pub fn schedule(&self, key: K, at: Instant) -> Scheduled {
        self.schedule_with(key, at, false)
    }

    /// Like [`schedule`](Self::schedule), but never moves a waiting key later (client-go's
    /// `AddAfter`): the key waits for the earlier of its current deadline and `at`. For an
    /// in-flight key the remembered deadline likewise only moves earlier.
    pub fn schedule_no_later(&self, key: K, at: Instant) -> Scheduled {
        self.schedule_with(key, at, true)
    }

    fn schedule_with(&self, key: K, at: Instant, no_later: bool) -> Scheduled {
        let at = clamp_deadline(Instant::now(), at);
        let mut inner = self.lock();
        if inner.shut_down {
            return Scheduled::ShutDown;
        }
        let (outcome, wake) = inner.schedule(key, at, no_later);
        drop(inner);
        if wake {
            self.notify.notify_waiters();
        }
        outcome
    }

    /// Removes a waiting key (and its failure count). For an in-flight key, drops any deferred
    /// re-queue; the running worker is unaffected. An absent key is left alone.
    pub fn cancel(&self, key: &K) -> Cancelled {
        self.lock().cancel(key)
    }

    /// Waits until a key is due (its deadline is at or before now), marks it in flight and returns
    /// it with the [`Ticket`] to pass to [`done`](Self::done). Returns `None` once the queue has
    /// been [shut down](Self::shutdown), also to callers already waiting.
    ///
    /// Any number of workers may wait concurrently; a key is never handed to two workers at once
    /// (it stays in flight until `done`). Among due keys the earliest deadline goes first, ties in
    /// the order the keys were (re)positioned. Cancel-safe: dropping the future before it
    /// completes takes nothing from the queue.
    pub async fn next(&self) -> Option<(K, Ticket)> {
        loop {
            // Register for notifications *before* looking at the state, so that a change made
            // after the look is never missed.
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            let earliest = {
                let mut inner = self.lock();
                if inner.shut_down {
                    return None;
                }
                if let Some(taken) = inner.pop_due(Instant::now()) {
                    return Some(taken);
                }
                inner.earliest()
            };
            match earliest {
                Some(at) => {
                    tokio::select! {
                        biased;
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Like [`next`](Self::next) without waiting: takes the earliest key if it is due now.
    /// Returns `None` if no key is due or the queue has been shut down.
    #[must_use = "a taken key stays in flight until `done` is called with its ticket"]
    pub fn try_next(&self) -> Option<(K, Ticket)> {
        let mut inner = self.lock();
        if inner.shut_down {
            return None;
        }
        inner.pop_due(Instant::now())
    }

    /// Finishes processing of `key`, taken with `ticket`.
    ///
    /// `Forget` and `After` clear the key's failure count; `Retry` backs off by
    /// `base * 2^failures` (capped) and counts one more failure. If the key was scheduled while in
    /// flight, it is re-queued at the earlier of that deferred deadline and the completion's own
    /// (`Forget` has none); with neither it leaves the queue. A ticket that does not belong to the
    /// key's current in-flight record is stale: nothing changes and [`Finished::Stale`] is
    /// returned, so the completion of an old item never removes or alters its replacement.
    pub fn done(&self, key: &K, ticket: Ticket, completion: Completion) -> Finished {
        let now = Instant::now();
        let (outcome, wake) = self.lock().done(key, ticket, completion, now, &self.backoff);
        if wake {
            self.notify.notify_waiters();
        }
        outcome
    }

    /// Number of waiting keys (not counting keys in flight).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether no key is waiting (keys may still be in flight).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().waiting.is_empty()
    }

    /// Number of keys handed to workers and not yet finished with a current ticket.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        let inner = self.lock();
        inner.records.len().saturating_sub(inner.waiting.len())
    }

    /// Whether `key` is currently in flight.
    #[must_use]
    pub fn is_in_flight(&self, key: &K) -> bool {
        matches!(
            self.lock().record(key),
            Some(Record {
                state: State::InFlight { .. },
                ..
            })
        )
    }

    /// The deadline `key` is waiting for; `None` if it is absent or in flight.
    #[must_use]
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        match self.lock().record(key)?.state {
            State::Waiting { at, .. } => Some(at),
            State::InFlight { .. } => None,
        }
    }

    /// The deadline remembered for an in-flight `key` (see [`schedule`](Self::schedule));
    /// `None` if nothing is deferred or the key is not in flight.
    #[must_use]
    pub fn deferred(&self, key: &K) -> Option<Instant> {
        match self.lock().record(key)?.state {
            State::InFlight { deferred, .. } => deferred,
            State::Waiting { .. } => None,
        }
    }

    /// The earliest deadline among waiting keys, if any.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().earliest()
    }

    /// Consecutive `Retry` completions of `key` (0 for an absent key).
    #[must_use]
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().record(key).map_or(0, |record| record.failures)
    }

    /// Drops every waiting and in-flight record (failure counts included), e.g. when leadership
    /// is lost. Outstanding tickets become stale; workers keep waiting for new keys.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.waiting.clear();
        inner.records.clear();
    }

    /// Shuts the queue down: every current and future [`next`](Self::next) returns `None`,
    /// waiting and in-flight records are dropped (outstanding tickets become stale) and later
    /// schedules are ignored ([`Scheduled::ShutDown`]). Idempotent.
    pub fn shutdown(&self) {
        {
            let mut inner = self.lock();
            inner.shut_down = true;
            inner.waiting.clear();
            inner.records.clear();
        }
        self.notify.notify_waiters();
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl<K> fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("WorkQueue")
            .field("waiting", &inner.waiting.len())
            .field(
                "in_flight",
                &inner.records.len().saturating_sub(inner.waiting.len()),
            )
            .field("shut_down", &inner.shut_down)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;
    use proptest::test_runner::{RngAlgorithm, TestCaseError};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn queue() -> Arc<WorkQueue<u32>> {
        Arc::new(WorkQueue::new(Backoff::default()))
    }

    /// Lets spawned tasks run (on the current-thread test runtime) without moving time.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A worker that takes one key and reports it together with the time it got it.
    fn spawn_take_one(q: &Arc<WorkQueue<u32>>) -> tokio::task::JoinHandle<Option<(u32, Ticket, Instant)>> {
        let q = Arc::clone(q);
        tokio::spawn(async move { q.next().await.map(|(key, ticket)| (key, ticket, Instant::now())) })
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let b = Backoff::default();
        assert_eq!(
            b,
            Backoff {
                base: ms(5),
                cap: secs(1000)
            }
        );
        assert_eq!(b.delay(0), ms(5));
        assert_eq!(b.delay(1), ms(10));
        assert_eq!(b.delay(2), ms(20));
        assert_eq!(b.delay(17), Duration::from_millis(5 << 17));
        assert_eq!(b.delay(18), secs(1000));
        assert_eq!(b.delay(31), secs(1000));
        assert_eq!(b.delay(32), secs(1000));
        assert_eq!(b.delay(u32::MAX), secs(1000));
        let zero = Backoff {
            base: Duration::ZERO,
            cap: secs(1),
        };
        assert_eq!(zero.delay(u32::MAX), Duration::ZERO);
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        assert_eq!(huge.delay(0), Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
        let tiny = Backoff {
            base: Duration::from_nanos(1),
            cap: Duration::MAX,
        };
        assert_eq!(
            tiny.delay(40),
            Duration::MAX,
            "past 2^31 the factor saturates rather than wraps"
        );
        let inverted = Backoff {
            base: secs(10),
            cap: secs(1),
        };
        assert_eq!(inverted.delay(0), secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_new_key_fires_at_deadline_not_before() {
        let q = queue();
        let start = Instant::now();
        assert_eq!(q.schedule(1, start + ms(100)), Scheduled::Inserted);
        assert_eq!(
            (q.len(), q.in_flight(), q.deadline(&1)),
            (1, 0, Some(start + ms(100)))
        );
        let worker = spawn_take_one(&q);
        settle().await;
        tokio::time::advance(ms(99)).await;
        settle().await;
        assert!(!worker.is_finished(), "fired before its deadline");
        assert!(q.try_next().is_none());
        tokio::time::advance(ms(1)).await;
        let (key, _, fired) = worker.await.unwrap().unwrap();
        assert_eq!((key, fired), (1, start + ms(100)));
        assert_eq!((q.len(), q.in_flight(), q.deadline(&1)), (0, 1, None));
        assert!(q.is_in_flight(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn moving_earlier_wakes_a_sleeping_worker() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start + secs(10));
        let worker = spawn_take_one(&q);
        settle().await;
        assert_eq!(q.schedule(1, start + secs(1)), Scheduled::Moved { earlier: true });
        assert_eq!(q.deadline(&1), Some(start + secs(1)));
        let (key, _, fired) = worker.await.unwrap().unwrap();
        assert_eq!((key, fired), (1, start + secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_by_done_wakes_a_sleeping_worker() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start + secs(3600));
        q.schedule(2, start);
        let (_, ticket) = q.try_next().unwrap();
        let worker = spawn_take_one(&q);
        settle().await;
        assert_eq!(
            q.done(&2, ticket, Completion::After(secs(1))),
            Finished::Requeued { at: start + secs(1) }
        );
        let (key, _, fired) = worker.await.unwrap().unwrap();
        assert_eq!((key, fired), (2, start + secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn moving_later_delays_firing() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start + secs(1));
        let worker = spawn_take_one(&q);
        settle().await;
        assert_eq!(
            q.schedule(1, start + secs(5)),
            Scheduled::Moved { earlier: false }
        );
        tokio::time::advance(secs(1)).await;
        settle().await;
        assert!(!worker.is_finished(), "fired at the old deadline");
        let (key, _, fired) = worker.await.unwrap().unwrap();
        assert_eq!((key, fired), (1, start + secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_no_later_never_moves_a_waiting_key_later() {
        let q = queue();
        let start = Instant::now();
        assert_eq!(q.schedule_no_later(1, start + secs(2)), Scheduled::Inserted);
        assert_eq!(q.schedule_no_later(1, start + secs(5)), Scheduled::Unchanged);
        assert_eq!(q.schedule_no_later(1, start + secs(2)), Scheduled::Unchanged);
        assert_eq!(q.deadline(&1), Some(start + secs(2)));
        assert_eq!(
            q.schedule_no_later(1, start + secs(1)),
            Scheduled::Moved { earlier: true }
        );
        assert_eq!(q.deadline(&1), Some(start + secs(1)));
        // While in flight, the deferred deadline also only moves earlier.
        tokio::time::advance(secs(1)).await;
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(
            q.schedule_no_later(1, start + secs(9)),
            Scheduled::DeferredWhileInFlight
        );
        assert_eq!(
            q.schedule_no_later(1, start + secs(20)),
            Scheduled::DeferredWhileInFlight
        );
        assert_eq!(
            q.schedule_no_later(1, start + secs(7)),
            Scheduled::DeferredWhileInFlight
        );
        assert_eq!(q.deferred(&1), Some(start + secs(7)));
        // A plain schedule replaces the deferred deadline, later or not.
        assert_eq!(q.schedule(1, start + secs(8)), Scheduled::DeferredWhileInFlight);
        assert_eq!(q.deferred(&1), Some(start + secs(8)));
        assert_eq!(
            q.done(&1, ticket, Completion::Forget),
            Finished::Requeued { at: start + secs(8) }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_of_a_missing_key_inserts_it() {
        let q = queue();
        let start = Instant::now();
        assert_eq!(q.schedule(7, start + secs(3)), Scheduled::Inserted);
        assert_eq!(q.schedule(7, start + secs(3)), Scheduled::Unchanged);
        assert_eq!(q.cancel(&7), Cancelled::Removed);
        assert_eq!(q.schedule(7, start + secs(4)), Scheduled::Inserted);
        assert_eq!(q.deadline(&7), Some(start + secs(4)));
        assert_eq!((q.len(), q.failures(&7)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_while_in_flight_is_deferred_until_done() {
        let q = queue();
        let start = Instant::now();
        for key in 1..=3 {
            q.schedule(key, start);
        }
        let taken: Vec<_> = std::iter::from_fn(|| q.try_next()).collect();
        assert_eq!(taken.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 2, 3]);
        for key in 1..=3 {
            assert_eq!(q.schedule(key, start + secs(2)), Scheduled::DeferredWhileInFlight);
            assert_eq!(
                (q.deadline(&key), q.deferred(&key)),
                (None, Some(start + secs(2)))
            );
        }
        assert_eq!((q.len(), q.in_flight()), (0, 3));
        tokio::time::advance(secs(5)).await;
        assert!(
            q.try_next().is_none(),
            "an in-flight key must not be handed out again"
        );
        let now = Instant::now();
        let [(_, t1), (_, t2), (_, t3)] = taken.try_into().unwrap();
        // Forget: the deferred deadline is used (even though it has passed: due at once).
        assert_eq!(
            q.done(&1, t1, Completion::Forget),
            Finished::Requeued { at: start + secs(2) }
        );
        // Retry: the backoff (5 ms from now) is later than the deferred deadline.
        assert_eq!(
            q.done(&2, t2, Completion::Retry),
            Finished::Requeued { at: start + secs(2) }
        );
        assert_eq!(q.failures(&2), 1);
        // After: whichever is earlier.
        q.schedule(3, now + secs(60));
        assert_eq!(
            q.done(&3, t3, Completion::After(secs(10))),
            Finished::Requeued { at: now + secs(10) }
        );
        assert_eq!((q.len(), q.in_flight()), (3, 0));
        assert_eq!(q.try_next().map(|(k, _)| k), Some(1));
        assert_eq!(q.try_next().map(|(k, _)| k), Some(2));
        assert!(q.try_next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_while_in_flight_uses_the_earlier_backoff_deadline() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start);
        let (_, ticket) = q.try_next().unwrap();
        q.schedule(1, start + secs(2));
        assert_eq!(
            q.done(&1, ticket, Completion::Retry),
            Finished::Requeued { at: start + ms(5) }
        );
        assert_eq!((q.deadline(&1), q.failures(&1)), (Some(start + ms(5)), 1));
    }

    /// A server's `Retry-After` delays the retry beyond a shorter backoff, never below a longer
    /// one, and still counts as a failure.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_longer_of_backoff_and_the_servers_wait() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start);
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(
            q.done(&1, ticket, Completion::RetryAfter(secs(7))),
            Finished::Requeued { at: start + secs(7) }
        );
        assert_eq!(q.failures(&1), 1);
        tokio::time::advance(secs(7)).await;
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(
            q.done(&1, ticket, Completion::RetryAfter(ms(1))),
            Finished::Requeued {
                at: start + secs(7) + ms(10)
            }
        );
        assert_eq!(q.failures(&1), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_while_waiting_removes_the_key() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start + secs(1));
        q.schedule(2, start + secs(2));
        let worker = spawn_take_one(&q);
        settle().await;
        assert_eq!(q.cancel(&1), Cancelled::Removed);
        assert_eq!((q.len(), q.deadline(&1)), (1, None));
        let (key, _, fired) = worker.await.unwrap().unwrap();
        assert_eq!(
            (key, fired),
            (2, start + secs(2)),
            "the cancelled key must never fire"
        );
        assert_eq!(q.cancel(&1), Cancelled::NotPresent);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_while_in_flight_drops_the_deferred_requeue() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start);
        let (_, ticket) = q.try_next().unwrap();
        q.schedule(1, start + secs(1));
        assert_eq!(q.cancel(&1), Cancelled::InFlight);
        assert_eq!(q.deferred(&1), None);
        assert!(q.is_in_flight(&1), "the running worker keeps its key");
        assert_eq!(q.done(&1, ticket, Completion::Forget), Finished::Forgotten);
        assert_eq!((q.len(), q.in_flight()), (0, 0));
        tokio::time::advance(secs(2)).await;
        assert!(q.try_next().is_none());
        // The worker's own completion still counts: a Retry comes back (the worker will then see
        // that the eviction is gone and forget it).
        q.schedule(2, Instant::now());
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(q.cancel(&2), Cancelled::InFlight);
        assert_eq!(
            q.done(&2, ticket, Completion::Retry),
            Finished::Requeued {
                at: Instant::now() + ms(5)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_of_a_missing_key_is_a_no_op() {
        let q = queue();
        assert_eq!(q.cancel(&1), Cancelled::NotPresent);
        q.schedule(2, Instant::now() + secs(1));
        assert_eq!(q.cancel(&1), Cancelled::NotPresent);
        assert_eq!(
            (q.len(), q.in_flight(), q.deadline(&2)),
            (1, 0, Some(Instant::now() + secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn completion_of_an_old_item_does_not_remove_its_replacement() {
        let q = queue();
        let start = Instant::now();
        q.schedule(1, start);
        let (_, old) = q.try_next().unwrap();
        // Re-scheduled while in flight, finished, and fired again: a new run with a new ticket.
        q.schedule(1, start);
        assert_eq!(
            q.done(&1, old, Completion::Forget),
            Finished::Requeued { at: start }
        );
        let (_, new) = q.try_next().unwrap();
        assert_ne!(old, new);
        // The old worker's late (duplicate) completion changes nothing, whatever it says.
        for completion in [Completion::Forget, Completion::Retry, Completion::After(secs(1))] {
            assert_eq!(q.done(&1, old, completion), Finished::Stale);
        }
        assert!(q.is_in_flight(&1));
        assert_eq!((q.in_flight(), q.failures(&1)), (1, 0));
        q.schedule(1, start + secs(3));
        assert_eq!(q.done(&1, old, Completion::Forget), Finished::Stale);
        assert_eq!(
            q.deferred(&1),
            Some(start + secs(3)),
            "stale completion kept the deferred deadline"
        );
        // A ticket presented with the wrong key is stale too.
        q.schedule(2, start);
        let (_, other) = q.try_next().unwrap();
        assert_eq!(q.done(&1, other, Completion::Forget), Finished::Stale);
        assert_eq!(q.done(&2, new, Completion::Forget), Finished::Stale);
        // The current ticket works, once; afterwards it is stale and the waiting key is untouched.
        assert_eq!(
            q.done(&1, new, Completion::Forget),
            Finished::Requeued { at: start + secs(3) }
        );
        assert_eq!(q.done(&1, new, Completion::Forget), Finished::Stale);
        assert_eq!(q.deadline(&1), Some(start + secs(3)));
        assert_eq!(q.done(&2, other, Completion::Forget), Finished::Forgotten);
        assert_eq!(q.done(&3, other, Completion::Forget), Finished::Stale);
    }

    #[tokio::test(start_paused = true)]
    async fn clear_and_shutdown_make_outstanding_tickets_stale() {
        let q = queue();
        q.schedule(1, Instant::now());
        let (_, before_clear) = q.try_next().unwrap();
        q.clear();
        assert_eq!((q.len(), q.in_flight()), (0, 0));
        q.schedule(1, Instant::now());
        let (_, after_clear) = q.try_next().unwrap();
        assert_eq!(q.done(&1, before_clear, Completion::Forget), Finished::Stale);
        assert!(
            q.is_in_flight(&1),
            "the replacement survives the old worker's completion"
        );
        q.shutdown();
        assert_eq!(q.done(&1, after_clear, Completion::Retry), Finished::Stale);
        assert_eq!((q.len(), q.in_flight()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_backoff_doubles_up_to_the_cap_and_forget_resets_it() {
        let q = queue();
        q.schedule(1, Instant::now());
        let mut expected = ms(5);
        for failures in 0..25 {
            let (key, ticket) = q.try_next().unwrap();
            assert_eq!(q.failures(&key), failures);
            let now = Instant::now();
            assert_eq!(
                q.done(&key, ticket, Completion::Retry),
                Finished::Requeued { at: now + expected }
            );
            assert_eq!(q.failures(&key), failures + 1);
            tokio::time::advance(expected.checked_sub(Duration::from_nanos(1)).unwrap()).await;
            assert!(
                q.try_next().is_none(),
                "due before its backoff after {failures} failures"
            );
            tokio::time::advance(Duration::from_nanos(1)).await;
            expected = (expected * 2).min(secs(1000));
        }
        assert_eq!(expected, secs(1000), "25 doublings of 5 ms must reach the cap");
        let (key, ticket) = q.try_next().unwrap();
        assert_eq!(q.done(&key, ticket, Completion::Forget), Finished::Forgotten);
        assert_eq!(q.failures(&key), 0);
        q.schedule(1, Instant::now());
        let (key, ticket) = q.try_next().unwrap();
        let now = Instant::now();
        assert_eq!(
            q.done(&key, ticket, Completion::Retry),
            Finished::Requeued { at: now + ms(5) }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_requeues_at_the_delay_and_clears_failures() {
        let q = queue();
        q.schedule(1, Instant::now());
        let (_, ticket) = q.try_next().unwrap();
        q.done(&1, ticket, Completion::Retry);
        tokio::time::advance(ms(5)).await;
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(q.failures(&1), 1);
        let now = Instant::now();
        assert_eq!(
            q.done(&1, ticket, Completion::After(secs(30))),
            Finished::Requeued { at: now + secs(30) }
        );
        assert_eq!(q.failures(&1), 0);
        tokio::time::advance(ms(29_999)).await;
        assert!(q.try_next().is_none());
        tokio::time::advance(ms(1)).await;
        assert_eq!(q.try_next().map(|(k, _)| k), Some(1));
    }

    /// X3: a key that keeps failing, or whose worker hangs, does not delay other keys.
    #[tokio::test(start_paused = true)]
    async fn a_failing_key_does_not_delay_other_keys() {
        let q = queue();
        let start = Instant::now();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(AtomicUsize::new(0));
        // Key 0 fails at once, every time; key 100 hangs for an hour, then fails.
        q.schedule(0, start);
        q.schedule(100, start);
        for key in 1..=9 {
            q.schedule(key, start + secs(u64::from(key)));
        }
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, fired, retries) = (Arc::clone(&q), Arc::clone(&fired), Arc::clone(&retries));
                tokio::spawn(async move {
                    while let Some((key, ticket)) = q.next().await {
                        match key {
                            0 => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                q.done(&key, ticket, Completion::Retry);
                            }
                            100 => {
                                tokio::time::sleep(secs(3600)).await;
                                q.done(&key, ticket, Completion::Retry);
                            }
                            _ => {
                                fired.lock().unwrap().push((key, Instant::now()));
                                q.done(&key, ticket, Completion::Forget);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(secs(10)).await;
        let expected: Vec<_> = (1..=9).map(|key| (key, start + secs(u64::from(key)))).collect();
        assert_eq!(*fired.lock().unwrap(), expected);
        // 5 ms * (2^11 - 1) = 10.235 s: key 0 was retried 11 times in the 10 s.
        assert_eq!(retries.load(Ordering::Relaxed), 11);
        assert!(q.is_in_flight(&100));
        q.shutdown();
        for worker in workers {
            worker.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn far_deadlines_are_clamped_without_panicking() {
        let q = WorkQueue::new(Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
        });
        let now = Instant::now();
        let horizon = now + MAX_HORIZON;
        assert_eq!(deadline_after(now, Duration::MAX), horizon);
        assert_eq!(deadline_after(now, secs(1)), now + secs(1));
        assert_eq!(
            q.schedule(1, deadline_after(now, Duration::MAX)),
            Scheduled::Inserted
        );
        assert_eq!(q.deadline(&1), Some(horizon));
        assert_eq!(q.schedule(2, now + MAX_HORIZON * 10), Scheduled::Inserted);
        assert_eq!(q.deadline(&2), Some(horizon));
        assert_eq!(
            q.schedule_no_later(3, now + MAX_HORIZON * 10),
            Scheduled::Inserted
        );
        assert_eq!(q.deadline(&3), Some(horizon));
        assert_eq!(q.schedule(3, now + MAX_HORIZON * 3), Scheduled::Unchanged);
        q.schedule(4, now);
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(
            q.done(&4, ticket, Completion::After(Duration::MAX)),
            Finished::Requeued { at: horizon }
        );
        q.schedule(5, now);
        let (_, ticket) = q.try_next().unwrap();
        assert_eq!(
            q.done(&5, ticket, Completion::Retry),
            Finished::Requeued { at: horizon }
        );
        assert_eq!(q.next_deadline(), Some(horizon));
        // A year later the clamped keys are due.
        tokio::time::advance(MAX_HORIZON).await;
        assert_eq!(std::iter::from_fn(|| q.try_next()).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_all_waiting_workers() {
        let q = queue();
        let idle: Vec<_> = (0..3).map(|_| spawn_take_one(&q)).collect();
        settle().await;
        q.schedule(1, Instant::now() + secs(3600));
        let sleeping: Vec<_> = (0..3).map(|_| spawn_take_one(&q)).collect();
        settle().await;
        assert!(idle.iter().chain(&sleeping).all(|w| !w.is_finished()));
        q.shutdown();
        settle().await;
        for worker in idle.into_iter().chain(sleeping) {
            assert!(
                worker.is_finished(),
                "shutdown must not wait for the next deadline"
            );
            assert!(worker.await.unwrap().is_none());
        }
        assert!(q.is_shut_down());
        assert!(q.next().await.is_none(), "later callers get None too");
        assert!(q.try_next().is_none());
        assert_eq!(q.schedule(2, Instant::now()), Scheduled::ShutDown);
        assert_eq!(q.schedule_no_later(2, Instant::now()), Scheduled::ShutDown);
        assert_eq!(q.cancel(&1), Cancelled::NotPresent);
        assert_eq!((q.len(), q.in_flight()), (0, 0));
        q.shutdown();
        assert!(q.is_shut_down());
    }

    #[tokio::test(start_paused = true)]
    async fn equal_deadlines_go_in_scheduling_order() {
        let q = queue();
        let at = Instant::now() + secs(1);
        for key in [3, 1, 2, 5] {
            q.schedule(key, at);
        }
        q.schedule(1, at); // unchanged: keeps its place
        q.schedule(3, at + secs(1));
        q.schedule(3, at); // moved away and back: goes last
        q.schedule(4, at - secs(1)); // earlier deadline goes first
        tokio::time::advance(secs(1)).await;
        let order: Vec<_> = std::iter::from_fn(|| q.try_next()).map(|(k, _)| k).collect();
        assert_eq!(order, [4, 1, 2, 5, 3]);
    }

    /// A key whose `Hash` panics on the n-th call from now (0: never).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Touchy(u32);

    thread_local! {
        static PANIC_ON_HASH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    impl Hash for Touchy {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            PANIC_ON_HASH.with(|n| match n.get() {
                0 => {}
                1 => {
                    n.set(0);
                    panic!("hash of {self:?} panicked");
                }
                more => n.set(more - 1),
            });
            self.0.hash(state);
        }
    }

    #[test]
    fn a_key_panicking_mid_update_neither_poisons_the_queue_nor_is_handed_out_twice() {
        let q = WorkQueue::new(Backoff::default());
        let now = Instant::now();
        q.schedule(Touchy(0), now + secs(3600));
        // Panic in the second hash of an insert (the lookup is the first): the key got its place
        // in the ordered set, but no record, and the mutex is poisoned.
        PANIC_ON_HASH.with(|n| n.set(2));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.schedule(Touchy(1), now)));
        assert!(panicked.is_err());
        assert!(q.inner.is_poisoned());
        assert_eq!(q.schedule(Touchy(1), now), Scheduled::Inserted);
        let (key, ticket) = q.try_next().unwrap();
        assert_eq!(key, Touchy(1));
        assert!(
            q.try_next().is_none(),
            "the orphaned position must not hand the key out again"
        );
        assert_eq!(q.done(&key, ticket, Completion::Forget), Finished::Forgotten);
        assert_eq!((q.len(), q.in_flight()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_next_takes_nothing() {
        let q = queue();
        q.schedule(1, Instant::now() + secs(1));
        assert!(tokio::time::timeout(ms(500), q.next()).await.is_err());
        tokio::time::advance(ms(500)).await;
        assert_eq!(q.next().await.map(|(k, _)| k), Some(1));
        assert_eq!(q.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn multiple_workers_never_get_the_same_key_concurrently() {
        let q = queue();
        let active = Arc::new(Mutex::new(HashSet::new()));
        let processed = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4u64)
            .map(|worker| {
                let (q, active, processed) = (Arc::clone(&q), Arc::clone(&active), Arc::clone(&processed));
                tokio::spawn(async move {
                    while let Some((key, ticket)) = q.next().await {
                        assert!(active.lock().unwrap().insert(key), "key {key} handed out twice");
                        tokio::time::sleep(ms(u64::from(key % 3) + worker)).await;
                        assert!(active.lock().unwrap().remove(&key));
                        processed.fetch_add(1, Ordering::Relaxed);
                        let completion = match key % 3 {
                            0 => Completion::Forget,
                            1 => Completion::Retry,
                            _ => Completion::After(ms(2)),
                        };
                        let finished = q.done(&key, ticket, completion);
                        assert!(finished != Finished::Stale || q.is_shut_down());
                    }
                })
            })
            .collect();
        for round in 0..500u32 {
            for key in 0..8 {
                let at = Instant::now() + ms(u64::from((key * 7 + round) % 5));
                if round % 2 == 0 {
                    q.schedule(key, at);
                } else {
                    q.schedule_no_later(key, at);
                }
            }
            if round % 7 == 0 {
                q.cancel(&(round % 8));
            }
            tokio::time::sleep(ms(1)).await;
        }
        q.shutdown();
        for worker in workers {
            worker.await.unwrap();
        }
        assert!(processed.load(Ordering::Relaxed) > 500, "workers made progress");
    }

    /// The same on a multi-threaded runtime with the real clock, every deadline already due (no
    /// sleeping): real parallelism between the workers and the scheduler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multiple_workers_on_threads_never_share_a_key() {
        let q: Arc<WorkQueue<u32>> = queue();
        let active = Arc::new(Mutex::new(HashSet::new()));
        let processed = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (q, active, processed) = (Arc::clone(&q), Arc::clone(&active), Arc::clone(&processed));
                tokio::spawn(async move {
                    while let Some((key, ticket)) = q.next().await {
                        assert!(active.lock().unwrap().insert(key), "key {key} handed out twice");
                        tokio::task::yield_now().await;
                        assert!(active.lock().unwrap().remove(&key));
                        processed.fetch_add(1, Ordering::Relaxed);
                        let finished = q.done(&key, ticket, Completion::Forget);
                        assert!(finished != Finished::Stale || q.is_shut_down());
                    }
                })
            })
            .collect();
        for _ in 0..2000 {
            for key in 0..8 {
                q.schedule(key, Instant::now());
            }
            tokio::task::yield_now().await;
        }
        // Wait for the workers to drain the queue (a lost wake-up would hang here), then stop them.
        let drained = async {
            while !(q.is_empty() && q.in_flight() == 0) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(secs(60), drained)
            .await
            .expect("workers stopped taking due keys");
        q.shutdown();
        for worker in workers {
            worker.await.unwrap();
        }
        assert!(processed.load(Ordering::Relaxed) >= 8);
    }

    fn many_keys(n: u32) {
        let started = std::time::Instant::now();
        let q = WorkQueue::new(Backoff::default());
        let base = Instant::now();
        // Deadlines in a scrambled order (7919 is prime, so `i * 7919 % n` is a permutation of 0..n).
        let deadline = |i: u32| base + ms(u64::from(i) * 7919 % u64::from(n));
        for i in 0..n {
            assert_eq!(q.schedule(i, deadline(i)), Scheduled::Inserted);
        }
        assert_eq!(q.len(), usize::try_from(n).unwrap());
        // Move every tenth key earlier, and cancel every hundredth.
        for i in (0..n).step_by(10) {
            q.schedule_no_later(i, base);
        }
        for i in (5..n).step_by(100) {
            assert_eq!(q.cancel(&i), Cancelled::Removed);
        }
        // Everything up to deadline `base` is due: the moved keys plus key 0.
        let due: Vec<_> = std::iter::from_fn(|| q.try_next()).take(1000).collect();
        assert_eq!(due.len(), 1000);
        assert!(due.iter().all(|(k, _)| k % 10 == 0));
        for (key, ticket) in due {
            assert_eq!(q.done(&key, ticket, Completion::Forget), Finished::Forgotten);
        }
        assert_eq!(q.len(), usize::try_from(n - n / 100 - 1000).unwrap());
        eprintln!("{n} keys: {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn one_million_keys() {
        many_keys(1_000_000);
    }

    /// Reference model for the property test: a plain map from key to state, time in whole
    /// milliseconds since the test's start, and linear scans instead of ordered structures.
    mod model {
        use std::collections::HashMap;

        use super::super::{Cancelled, Completion, Finished, MAX_HORIZON, Scheduled, Ticket};

        pub const KEYS: u8 = 6;

        pub fn horizon_ms() -> u64 {
            u64::try_from(MAX_HORIZON.as_millis()).unwrap()
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum State {
            Waiting { at: u64, seq: u64 },
            InFlight { ticket: Ticket, deferred: Option<u64> },
        }

        #[derive(Debug, Default)]
        pub struct Model {
            pub now: u64,
            seq: u64,
            /// Key → (state, failures).
            pub records: HashMap<u8, (State, u32)>,
            pub shut_down: bool,
        }

        /// Outcome of `done` with times in model milliseconds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Done {
            Forgotten,
            Requeued(u64),
            Stale,
        }

        impl Done {
            pub fn of(finished: Finished, to_ms: impl Fn(tokio::time::Instant) -> u64) -> Self {
                match finished {
                    Finished::Forgotten => Done::Forgotten,
                    Finished::Requeued { at } => Done::Requeued(to_ms(at)),
                    Finished::Stale => Done::Stale,
                }
            }
        }

        impl Model {
            fn next_seq(&mut self) -> u64 {
                self.seq += 1;
                self.seq
            }

            pub fn schedule(&mut self, key: u8, at: u64, no_later: bool) -> Scheduled {
                if self.shut_down {
                    return Scheduled::ShutDown;
                }
                let at = at.min(self.now + horizon_ms());
                let seq = self.next_seq();
                match self.records.get_mut(&key) {
                    None => {
                        self.records.insert(key, (State::Waiting { at, seq }, 0));
                        Scheduled::Inserted
                    }
                    Some((State::InFlight { deferred, .. }, _)) => {
                        *deferred = Some(match *deferred {
                            Some(old) if no_later => old.min(at),
                            _ => at,
                        });
                        Scheduled::DeferredWhileInFlight
                    }
                    Some((
                        State::Waiting {
                            at: old,
                            seq: old_seq,
                        },
                        _,
                    )) => {
                        if at == *old || (no_later && at > *old) {
                            Scheduled::Unchanged
                        } else {
                            let earlier = at < *old;
                            (*old, *old_seq) = (at, seq);
                            Scheduled::Moved { earlier }
                        }
                    }
                }
            }

            pub fn cancel(&mut self, key: u8) -> Cancelled {
                match self.records.get_mut(&key) {
                    None => Cancelled::NotPresent,
                    Some((State::InFlight { deferred, .. }, _)) => {
                        *deferred = None;
                        Cancelled::InFlight
                    }
                    Some((State::Waiting { .. }, _)) => {
                        self.records.remove(&key);
                        Cancelled::Removed
                    }
                }
            }

            /// The key `next` must hand out now: earliest deadline, ties by sequence.
            pub fn due(&self) -> Option<u8> {
                if self.shut_down {
                    return None;
                }
                self.records
                    .iter()
                    .filter_map(|(&key, &(state, _))| match state {
                        State::Waiting { at, seq } if at <= self.now => Some(((at, seq), key)),
                        _ => None,
                    })
                    .min()
                    .map(|(_, key)| key)
            }

            pub fn take(&mut self, key: u8, ticket: Ticket) {
                if let Some((state, _)) = self.records.get_mut(&key) {
                    *state = State::InFlight {
                        ticket,
                        deferred: None,
                    };
                }
            }

            pub fn done(&mut self, key: u8, ticket: Ticket, completion: Completion) -> Done {
                let now = self.now;
                let seq = self.next_seq();
                let Some((
                    State::InFlight {
                        ticket: current,
                        deferred,
                    },
                    failures,
                )) = self.records.get(&key).copied()
                else {
                    return Done::Stale;
                };
                if current != ticket {
                    return Done::Stale;
                }
                let (own, failures) = match completion {
                    Completion::Forget => (None, 0),
                    Completion::After(d) => {
                        let d = u64::try_from(d.min(MAX_HORIZON).as_millis()).unwrap();
                        (Some(now + d), 0)
                    }
                    Completion::Retry => {
                        // 5 ms * 2^failures, capped at 1000 s.
                        let delay = (5u128 << failures.min(100)).min(1_000_000);
                        (Some(now + u64::try_from(delay).unwrap()), failures + 1)
                    }
                    Completion::RetryAfter(d) => {
                        let delay = (5u128 << failures.min(100))
                            .min(1_000_000)
                            .max(d.min(MAX_HORIZON).as_millis());
                        (Some(now + u64::try_from(delay).unwrap()), failures + 1)
                    }
                };
                let target = [deferred, own].into_iter().flatten().min();
                match target {
                    None => {
                        self.records.remove(&key);
                        Done::Forgotten
                    }
                    Some(at) => {
                        self.records.insert(key, (State::Waiting { at, seq }, failures));
                        Done::Requeued(at)
                    }
                }
            }

            pub fn clear(&mut self) {
                self.records.clear();
            }

            pub fn shutdown(&mut self) {
                self.records.clear();
                self.shut_down = true;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule {
            key: u8,
            past: bool,
            ms: u64,
            no_later: bool,
        },
        ScheduleFar {
            key: u8,
            no_later: bool,
        },
        Cancel {
            key: u8,
        },
        Advance {
            ms: u64,
        },
        TryNext,
        /// `next()` under a zero timeout: takes a due key without waiting.
        NextNow,
        /// `done` with the current ticket of one of the in-flight keys.
        Done {
            pick: usize,
            completion: Completion,
        },
        /// `done` with any ticket ever issued, for any key: mostly stale.
        DoneAnyTicket {
            pick: usize,
            key: u8,
            completion: Completion,
        },
        Clear,
    }

    fn completion_strategy() -> impl Strategy<Value = Completion> {
        prop_oneof![
            Just(Completion::Forget),
            (0u64..200).prop_map(|n| Completion::After(ms(n))),
            Just(Completion::After(Duration::MAX)),
            Just(Completion::Retry),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let key = 0..model::KEYS;
        prop_oneof![
            6 => (key.clone(), any::<bool>(), 0u64..300, any::<bool>())
                .prop_map(|(key, past, ms, no_later)| Op::Schedule { key, past, ms, no_later }),
            1 => (key.clone(), any::<bool>()).prop_map(|(key, no_later)| Op::ScheduleFar { key, no_later }),
            2 => key.clone().prop_map(|key| Op::Cancel { key }),
            3 => prop_oneof![0u64..20, 0u64..300].prop_map(|ms| Op::Advance { ms }),
            3 => Just(Op::TryNext),
            2 => Just(Op::NextNow),
            4 => (any::<usize>(), completion_strategy()).prop_map(|(pick, completion)| Op::Done { pick, completion }),
            2 => (any::<usize>(), key, completion_strategy())
                .prop_map(|(pick, key, completion)| Op::DoneAnyTicket { pick, key, completion }),
            1 => Just(Op::Clear),
        ]
    }

    /// Checks that `next`/`try_next` handed out the key the model expects, and records the take.
    fn take(
        m: &mut model::Model,
        issued: &mut Vec<(u8, Ticket)>,
        taken: Option<(u8, Ticket)>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(taken.map(|(k, _)| k), m.due());
        if let Some((key, ticket)) = taken {
            prop_assert!(issued.iter().all(|&(_, t)| t != ticket), "ticket reused");
            issued.push((key, ticket));
            m.take(key, ticket);
        }
        Ok(())
    }

    /// Compares everything observable about the queue with the model.
    fn check_state(
        q: &WorkQueue<u8>,
        m: &model::Model,
        start: Instant,
        op: &Op,
    ) -> Result<(), TestCaseError> {
        use model::State;

        let at = |t: u64| start + ms(t);
        prop_assert_eq!(Instant::now(), at(m.now));
        for key in 0..model::KEYS {
            let (waiting, deferred, in_flight, failures) = match m.records.get(&key) {
                None => (None, None, false, 0),
                Some(&(State::Waiting { at: t, .. }, f)) => (Some(at(t)), None, false, f),
                Some(&(State::InFlight { deferred, .. }, f)) => (None, deferred.map(at), true, f),
            };
            prop_assert_eq!(q.deadline(&key), waiting, "deadline of {} after {:?}", key, op);
            prop_assert_eq!(q.deferred(&key), deferred, "deferred of {} after {:?}", key, op);
            prop_assert_eq!(
                q.is_in_flight(&key),
                in_flight,
                "in flight {} after {:?}",
                key,
                op
            );
            prop_assert_eq!(q.failures(&key), failures, "failures of {} after {:?}", key, op);
        }
        let waiting: Vec<u64> = m
            .records
            .values()
            .filter_map(|&(state, _)| match state {
                State::Waiting { at, .. } => Some(at),
                State::InFlight { .. } => None,
            })
            .collect();
        prop_assert_eq!(q.len(), waiting.len());
        prop_assert_eq!(q.is_empty(), waiting.is_empty());
        prop_assert_eq!(q.in_flight(), m.records.len() - waiting.len());
        prop_assert_eq!(q.next_deadline(), waiting.iter().min().map(|&t| at(t)));
        prop_assert_eq!(q.is_shut_down(), m.shut_down);
        Ok(())
    }

    /// Runs `ops` (with a shutdown before step `shutdown_at`, if any) against a queue and the
    /// model, comparing every outcome and, after every step, the whole observable state.
    fn run_model(ops: &[Op], shutdown_at: Option<usize>) -> Result<(), TestCaseError> {
        use model::{Done, Model, State};

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?;
        let _context = rt.enter();
        let q: WorkQueue<u8> = WorkQueue::new(Backoff::default());
        let mut m = Model::default();
        let start = Instant::now();
        let at = |t: u64| start + ms(t);
        let to_ms = |i: Instant| u64::try_from((i - start).as_millis()).unwrap();
        let mut issued: Vec<(u8, Ticket)> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            if shutdown_at == Some(step) {
                q.shutdown();
                m.shutdown();
            }
            match *op {
                Op::Schedule {
                    key,
                    past,
                    ms: offset,
                    no_later,
                } => {
                    let t = if past {
                        m.now.saturating_sub(offset)
                    } else {
                        m.now + offset
                    };
                    let got = if no_later {
                        q.schedule_no_later(key, at(t))
                    } else {
                        q.schedule(key, at(t))
                    };
                    prop_assert_eq!(got, m.schedule(key, t, no_later));
                }
                Op::ScheduleFar { key, no_later } => {
                    let far = Instant::now() + MAX_HORIZON * 2;
                    let got = if no_later {
                        q.schedule_no_later(key, far)
                    } else {
                        q.schedule(key, far)
                    };
                    prop_assert_eq!(got, m.schedule(key, to_ms(far), no_later));
                }
                Op::Cancel { key } => prop_assert_eq!(q.cancel(&key), m.cancel(key)),
                Op::Advance { ms: by } => {
                    rt.block_on(tokio::time::advance(ms(by)));
                    m.now += by;
                }
                Op::TryNext => take(&mut m, &mut issued, q.try_next())?,
                Op::NextNow => match rt.block_on(tokio::time::timeout(Duration::ZERO, q.next())) {
                    Ok(Some(taken)) => take(&mut m, &mut issued, Some(taken))?,
                    Ok(None) => prop_assert!(m.shut_down, "next() returned None before shutdown"),
                    Err(_elapsed) => {
                        prop_assert!(!m.shut_down, "next() waited after shutdown");
                        take(&mut m, &mut issued, None)?;
                    }
                },
                Op::Done { pick, completion } => {
                    let mut in_flight: Vec<_> = m
                        .records
                        .iter()
                        .filter_map(|(&key, &(state, _))| match state {
                            State::InFlight { ticket, .. } => Some((key, ticket)),
                            State::Waiting { .. } => None,
                        })
                        .collect();
                    in_flight.sort_by_key(|&(key, _)| key);
                    if let Some(&(key, ticket)) = in_flight.get(pick % in_flight.len().max(1)) {
                        let expected = m.done(key, ticket, completion);
                        prop_assert_ne!(expected, Done::Stale);
                        prop_assert_eq!(Done::of(q.done(&key, ticket, completion), to_ms), expected);
                    }
                }
                Op::DoneAnyTicket {
                    pick,
                    key,
                    completion,
                } => {
                    if let Some(&(_, ticket)) = issued.get(pick % issued.len().max(1)) {
                        let expected = m.done(key, ticket, completion);
                        prop_assert_eq!(Done::of(q.done(&key, ticket, completion), to_ms), expected);
                    }
                }
                Op::Clear => {
                    q.clear();
                    m.clear();
                }
            }
            check_state(&q, &m, start, op)?;
        }
        Ok(())
    }

    proptest! {
        // XorShift: the default ChaCha generator dominates the run time in unoptimised builds.
        #![proptest_config(ProptestConfig {
            cases: 2000,
            rng_algorithm: RngAlgorithm::XorShift,
            ..ProptestConfig::default()
        })]

        #[test]
        fn queue_matches_the_reference_model(
            ops in prop::collection::vec(op_strategy(), 1..80),
            shutdown_at in prop::option::weighted(0.15, 0usize..80),
        ) {
            run_model(&ops, shutdown_at)?;
        }
    }
}
