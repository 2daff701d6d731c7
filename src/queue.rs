//! Timed work queue: keys with deadlines and ranks, handed to concurrent async workers once due.
//!
//! The controller keeps the pending evictions (the source of truth) elsewhere. This queue only
//! carries *keys*, *deadlines* and *ranks*: it wakes one of N concurrent workers when a key's
//! deadline has passed, and the worker re-reads the truth (missing means cancelled, a later
//! deadline means "schedule again"). Every operation is defined for every state of a key; nothing
//! here panics.
//!
//! # State machine
//!
//! Per key the queue holds at most one record, which is in exactly one of two states (a key
//! without a record is *absent*). Every record carries a [`Rank`], set by each schedule (`r`
//! below) and kept across states:
//!
//! | state \ operation | `schedule(at, r)` | `schedule_no_later(at, r)` | `cancel` | due and taken by `next`/`try_next` | `done(ticket, c)` |
//! |---|---|---|---|---|---|
//! | absent | → waiting(at, r) | → waiting(at, r) | no-op | — | stale, ignored |
//! | waiting(d, _) | → waiting(at, r), earlier or later | → waiting(min(d, at), r) | → absent | → in flight(taken = d, deferred = none) | stale, ignored |
//! | in flight(taken, deferred) | deferred := at, rank := r | deferred := min(deferred, at), rank := r | deferred := none | never (one worker per key) | see below |
//!
//! `schedule` and `schedule_no_later` give the rank [`Rank::Unpaced`]; `schedule_ranked` and
//! `schedule_no_later_ranked` take one. `clear` (in tests) and [`WorkQueue::shutdown`] make every
//! key absent and lift the hold (shutdown also makes `next` return `None` and later schedules
//! no-ops). [`WorkQueue::hold_paced_until`] changes no key's state: it only decides which due
//! keys may be taken (below).
//!
//! `done` with the ticket of the current in-flight record computes the completion's own deadline
//! (`Forget`: none, `After(d)`: now + d, `Retry`: now + per-key exponential backoff, `PutBack`:
//! `taken`, the deadline the key had when it was taken) and re-queues the key at the *earlier* of
//! that deadline and the deferred one; with neither, the key becomes absent. A key put back at its
//! taken deadline also gets its old place among equal ranks and deadlines back, and `PutBack`
//! leaves the failure count alone. `done` with any other ticket (an older run of the same key,
//! another key's ticket, a ticket from before `clear` or [`WorkQueue::shutdown`], or a second
//! `done` with the same ticket) changes nothing and reports [`Finished::Stale`]: the completion of
//! an old item never removes or alters its replacement. Tickets are unique for the life of the
//! queue.
//!
//! Cancelling an in-flight key only drops its deferred deadline; the running worker is unaffected,
//! and its own completion (`After`, `Retry`, `PutBack`) still re-queues the key. This errs on the
//! side of one extra wake-up: the worker then re-reads the truth, finds the eviction gone and
//! answers `Forget`.
//!
//! # Order among due keys, and the hold
//!
//! A key is *due* once its deadline has passed. Among due keys, `next` hands out the lowest
//! `(rank, deadline, seq)`: every [`Rank::Unpaced`] key before any [`Rank::Paced`] one, paced keys
//! by their number (the pod priority: lowest first), then the earliest deadline, then the order
//! in which the keys were last (re)positioned. Without paced keys this is plain deadline order.
//!
//! [`WorkQueue::hold_paced_until`] holds every paced key back until an instant (the controller
//! sets it to when the next eviction token is earned): until then only unpaced keys are handed
//! out, and at that instant the lowest-ranked paced key *then* due is. So the order is decided
//! at the moment a paced key can proceed, not earlier; a key that became due meanwhile with a
//! lower rank goes first.
//!
//! After [`WorkQueue::serialize_paced`] (the controller calls it when the eviction rate is
//! limited), a paced key handed out keeps every other paced key back until its worker says
//! whether it took its token ([`WorkQueue::paced_decided`]) or finishes it (`done`): several
//! workers taking paced keys at the same moment would otherwise race for one token, and the
//! token need not go to the lowest rank. Unpaced keys are not held back by it.
//!
//! # Data structures
//!
//! Waiting keys live in a `BTreeMap<(deadline, seq), key>` (all of them, due or not: the timer
//! order) plus, for those already found due, a `BTreeMap<(rank, deadline, seq), key>` (the order
//! in which workers take them), plus a `HashMap<key, record>` (state, rank, failure count, and the
//! `(deadline, seq)` position needed to move or remove a waiting key). A watermark (the latest
//! instant at which due keys were looked for) says which waiting keys are in the second map:
//! exactly those whose deadline is at or before it; each look moves the keys whose deadlines
//! passed since the last one. `seq` grows by one each time a key is put into the waiting set
//! (inserted, moved, or re-queued other than by `PutBack` to its taken deadline), so keys with
//! equal ranks and deadlines are handed out in the order they were last (re)positioned; a
//! schedule that leaves the deadline unchanged keeps the position. Every operation is O(log n)
//! (the hash map is amortised O(1); moving k newly due keys costs O(k log n), once per key).
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
//! the state, then sleeps until the earliest deadline not yet found due (or the end of the hold,
//! while only held keys are due) or a notification, so no wake-up is lost. Every change that makes
//! the earliest deadline earlier, every hold change (and [`WorkQueue::shutdown`]) wakes all
//! sleeping workers, which re-check and go back to sleep until the new earliest deadline. There is
//! no polling loop: a worker only runs when a deadline passes, the hold ends or the head of the
//! queue changes.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::Hash,
    ops::Bound,
    pin::pin,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

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

/// Where a due key stands in line (see the [module documentation](self#order-among-due-keys-and-the-hold)).
///
/// The derived order is the order of service: every `Unpaced` key before any `Paced` one, paced
/// keys by their number, lowest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rank {
    /// Never held back by [`WorkQueue::hold_paced_until`] (work that is not paced).
    #[default]
    Unpaced,
    /// Held back while a hold lasts; among due paced keys the lowest number goes first.
    Paced(i32),
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
    /// Not processed (e.g. no eviction token yet): the key waits again where it was when taken
    /// (its deadline and, unless an earlier deadline was deferred meanwhile, its place); the
    /// failure count is unchanged.
    PutBack,
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
/// key (or from before a `clear`) is recognised as stale. Copying a ticket is
/// harmless: only the first `done` with it can take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    generation: u64,
    due: Instant,
}

impl Ticket {
    /// The deadline the key was taken at: when its work became due (the instant it was scheduled,
    /// or its later deadline; for a retry, the end of its backoff). A key put back keeps it.
    #[must_use]
    pub fn due(&self) -> Instant {
        self.due
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// In the ordered set at position `(at, seq)`.
    Waiting { at: Instant, seq: u64 },
    /// Handed to a worker holding ticket `generation`; `deferred` is the deadline for the re-queue
    /// requested while it runs; `taken` the position it was taken from (for `PutBack`).
    InFlight {
        generation: u64,
        deferred: Option<Instant>,
        taken: (Instant, u64),
    },
}

#[derive(Debug)]
struct Record {
    state: State,
    /// Set by the latest schedule.
    rank: Rank,
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
    /// The waiting keys whose deadline is at or before `due_until`, ordered by
    /// `(rank, deadline, seq)`: the order in which workers take them. Invariant: exactly those
    /// keys, each with the rank and position stored in its record.
    due: BTreeMap<(Rank, Instant, u64), K>,
    /// The latest instant at which due keys were looked for (never decreases); `None` before the
    /// first look.
    due_until: Option<Instant>,
    /// Paced keys are not handed out before this instant.
    hold: Option<Instant>,
    /// The generation of the paced key handed out whose worker has not yet said whether it got
    /// its token ([`WorkQueue::paced_decided`], or its `done`): no other paced key is handed out
    /// meanwhile, so that the token goes to the lowest-ranked due key, not to whichever of
    /// several workers that took paced keys at once reaches the token bucket first.
    deciding: Option<u64>,
    /// Whether paced keys are handed out one decision at a time ([`WorkQueue::serialize_paced`]).
    serial: bool,
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

    /// Whether a waiting key with deadline `at` belongs in the due set.
    fn is_found_due(&self, at: Instant) -> bool {
        self.due_until.is_some_and(|until| at <= until)
    }

    /// Puts a waiting key at `(at, seq)` with `rank` into the ordered sets.
    fn insert_waiting(&mut self, key: K, at: Instant, seq: u64, rank: Rank) {
        if self.is_found_due(at) {
            self.due.insert((rank, at, seq), key.clone());
        }
        self.waiting.insert((at, seq), key);
    }

    /// Takes a waiting key at `(at, seq)` with `rank` out of the ordered sets.
    fn remove_waiting(&mut self, at: Instant, seq: u64, rank: Rank) {
        if self.is_found_due(at) {
            self.due.remove(&(rank, at, seq));
        }
        self.waiting.remove(&(at, seq));
    }

    /// Moves the keys whose deadline passed since the last look into the due set.
    fn find_due(&mut self, now: Instant) {
        let from = match self.due_until {
            Some(until) if now <= until => return,
            Some(until) => Bound::Excluded((until, u64::MAX)),
            None => Bound::Unbounded,
        };
        let newly: Vec<((Instant, u64), K)> = self
            .waiting
            .range((from, Bound::Included((now, u64::MAX))))
            .map(|(&position, key)| (position, key.clone()))
            .collect();
        self.due_until = Some(now);
        for ((at, seq), key) in newly {
            let rank = self.records.get(&key).map_or_else(Rank::default, |r| r.rank);
            self.due.insert((rank, at, seq), key);
        }
    }

    /// Whether paced keys are held back at `now`.
    fn held(&self, now: Instant) -> bool {
        self.hold.is_some_and(|until| now < until)
    }

    /// When a worker that found nothing to take at `now` must look again (besides
    /// notifications): the earliest deadline not yet found due, or the end of the hold while
    /// held keys are due.
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        let next = self
            .waiting
            .range((
                Bound::Excluded((self.due_until.map_or(now, |u| u.max(now)), u64::MAX)),
                Bound::Unbounded,
            ))
            .next()
            .map(|(&(at, _), _)| at);
        let hold_end = self.hold.filter(|_| !self.due.is_empty());
        match (next, hold_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a key put into the waiting set at `at` becomes the new head, i.e. whether
    /// sleeping workers must re-compute their wake-up time.
    fn heads_queue(&self, at: Instant) -> bool {
        self.earliest().is_none_or(|first| at < first)
    }

    /// Returns the outcome and whether sleeping workers must be woken.
    fn schedule(&mut self, key: K, at: Instant, rank: Rank, no_later: bool) -> (Scheduled, bool) {
        let wake = self.heads_queue(at);
        let Some(record) = self.records.get_mut(&key) else {
            let seq = bump(&mut self.next_seq);
            self.records.insert(
                key.clone(),
                Record {
                    state: State::Waiting { at, seq },
                    rank,
                    failures: 0,
                },
            );
            self.insert_waiting(key, at, seq, rank);
            return (Scheduled::Inserted, wake);
        };
        let old_rank = record.rank;
        record.rank = rank;
        match record.state {
            State::InFlight {
                generation,
                deferred,
                taken,
            } => {
                let deferred = match deferred {
                    Some(old) if no_later => old.min(at),
                    _ => at,
                };
                record.state = State::InFlight {
                    generation,
                    deferred: Some(deferred),
                    taken,
                };
                (Scheduled::DeferredWhileInFlight, false)
            }
            State::Waiting {
                at: old,
                seq: old_seq,
            } => {
                if at == old || (no_later && at > old) {
                    if rank != old_rank {
                        // Same deadline and place, another rank: only the due order changes.
                        self.remove_waiting(old, old_seq, old_rank);
                        self.insert_waiting(key, old, old_seq, rank);
                    }
                    return (Scheduled::Unchanged, false);
                }
                self.remove_waiting(old, old_seq, old_rank);
                let seq = bump(&mut self.next_seq);
                if let Some(record) = self.records.get_mut(&key) {
                    record.state = State::Waiting { at, seq };
                }
                self.insert_waiting(key, at, seq, rank);
                (Scheduled::Moved { earlier: at < old }, wake)
            }
        }
    }

    fn cancel(&mut self, key: &K) -> Cancelled {
        let Some(record) = self.records.get_mut(key) else {
            return Cancelled::NotPresent;
        };
        match record.state {
            State::InFlight {
                generation, taken, ..
            } => {
                record.state = State::InFlight {
                    generation,
                    deferred: None,
                    taken,
                };
                Cancelled::InFlight
            }
            State::Waiting { at, seq } => {
                let rank = record.rank;
                self.records.remove(key);
                self.remove_waiting(at, seq, rank);
                Cancelled::Removed
            }
        }
    }

    /// Takes the lowest-ranked due key at `now` (paced keys only when not held), marking it in
    /// flight.
    fn pop_due(&mut self, now: Instant) -> Option<(K, Ticket)> {
        self.find_due(now);
        let holding = self.held(now) || self.deciding.is_some();
        loop {
            let head = self.due.first_entry()?;
            let (rank, at, seq) = *head.key();
            if holding && matches!(rank, Rank::Paced(_)) {
                return None;
            }
            let key = head.remove();
            self.waiting.remove(&(at, seq));
            // The record must agree that the key waits at this very position; anything else is a
            // position orphaned by a panic in `K`'s `Hash`/`Eq`/`Clone` mid-update: drop it rather
            // than risk handing out a key that is already in flight.
            let Some(record) = self.records.get_mut(&key) else {
                continue;
            };
            if record.rank != rank
                || !matches!(record.state, State::Waiting { at: a, seq: s } if a == at && s == seq)
            {
                continue;
            }
            let generation = bump(&mut self.next_generation);
            record.state = State::InFlight {
                generation,
                deferred: None,
                taken: (at, seq),
            };
            if self.serial && matches!(rank, Rank::Paced(_)) {
                self.deciding = Some(generation);
            }
            return Some((key, Ticket { generation, due: at }));
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
        let State::InFlight {
            generation,
            deferred,
            taken,
        } = record.state
        else {
            return (Finished::Stale, false);
        };
        if generation != ticket.generation {
            return (Finished::Stale, false);
        }
        let decided = self.deciding == Some(generation);
        if decided {
            self.deciding = None;
        }
        let Some(record) = self.records.get_mut(key) else {
            return (Finished::Stale, decided);
        };
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
            Completion::PutBack => Some(taken.0),
        };
        let target = match (deferred, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(at) = target else {
            self.records.remove(key);
            return (Finished::Forgotten, decided);
        };
        let wake = decided || head.is_none_or(|first| at < first);
        let seq = if completion == Completion::PutBack && at == taken.0 {
            taken.1
        } else {
            bump(&mut self.next_seq)
        };
        let rank = record.rank;
        record.state = State::Waiting { at, seq };
        self.insert_waiting(key.clone(), at, seq, rank);
        (Finished::Requeued { at }, wake)
    }

    #[cfg(test)]
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
                due: BTreeMap::new(),
                due_until: None,
                hold: None,
                deciding: None,
                serial: false,
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
    #[cfg(test)]
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

    /// Sets the key's deadline (clamped to [`MAX_HORIZON`] from now), with [`Rank::Unpaced`].
    ///
    /// A waiting key is moved, earlier or later; an absent key is inserted; for an in-flight key
    /// the deadline is remembered (replacing an earlier remembered one) and, when its worker calls
    /// [`done`](Self::done), the key is re-queued at the earlier of this deadline and the
    /// completion's own. Wakes sleeping workers if the key becomes the head of the queue.
    pub fn schedule(&self, key: K, at: Instant) -> Scheduled {
        self.schedule_with(key, at, Rank::Unpaced, false)
    }

    /// Like [`schedule`](Self::schedule), with this rank (kept while the key is in flight too).
    pub fn schedule_ranked(&self, key: K, at: Instant, rank: Rank) -> Scheduled {
        self.schedule_with(key, at, rank, false)
    }

    /// Like [`schedule`](Self::schedule), but never moves a waiting key later (client-go's
    /// `AddAfter`): the key waits for the earlier of its current deadline and `at`. For an
    /// in-flight key the remembered deadline likewise only moves earlier.
    pub fn schedule_no_later(&self, key: K, at: Instant) -> Scheduled {
        self.schedule_with(key, at, Rank::Unpaced, true)
    }

    /// Like [`schedule_no_later`](Self::schedule_no_later), with this rank.
    pub fn schedule_no_later_ranked(&self, key: K, at: Instant, rank: Rank) -> Scheduled {
        self.schedule_with(key, at, rank, true)
    }

    /// Holds every [`Rank::Paced`] key back until `until` (replacing any earlier hold; `None`
    /// lifts it): until then `next` hands out only unpaced keys. Changes no key's state.
    pub fn hold_paced_until(&self, until: Option<Instant>) {
        self.lock().hold = until;
        self.notify.notify_waiters();
    }

    /// From now on, after handing out a paced key, hands out no other paced key until its worker
    /// has decided whether it may go ([`Self::paced_decided`] or its `done`). For a pacer with
    /// one token bucket: without this, several workers that took paced keys at once race for the
    /// next token, and it need not go to the lowest rank.
    pub fn serialize_paced(&self) {
        self.lock().serial = true;
    }

    /// The worker of the paced key with `ticket` has decided (it took its token, or needs none):
    /// the next paced key may be handed out. Its `done` does the same.
    pub fn paced_decided(&self, ticket: Ticket) {
        let mut inner = self.lock();
        if inner.deciding == Some(ticket.generation) {
            inner.deciding = None;
            drop(inner);
            self.notify.notify_waiters();
        }
    }

    /// Whether paced keys are held back now (the eviction pacing is waiting for a token).
    #[must_use]
    pub fn is_holding(&self) -> bool {
        self.lock().held(Instant::now())
    }

    fn schedule_with(&self, key: K, at: Instant, rank: Rank, no_later: bool) -> Scheduled {
        let at = clamp_deadline(Instant::now(), at);
        let mut inner = self.lock();
        if inner.shut_down {
            return Scheduled::ShutDown;
        }
        let (outcome, wake) = inner.schedule(key, at, rank, no_later);
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
    /// (it stays in flight until `done`). Among due keys the lowest rank goes first, then the
    /// earliest deadline, ties in the order the keys were (re)positioned; paced keys wait while a
    /// [hold](Self::hold_paced_until) lasts. Cancel-safe: dropping the future before it
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
                let now = Instant::now();
                if let Some(taken) = inner.pop_due(now) {
                    return Some(taken);
                }
                inner.wake_at(now)
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

    /// Like [`next`](Self::next) without waiting: takes the key `next` would take now, if any.
    /// Returns `None` if no key is due or the queue has been shut down.
    #[cfg(any(test, feature = "testing"))]
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
    #[cfg(test)]
    #[must_use]
    pub fn in_flight(&self) -> usize {
        let inner = self.lock();
        inner.records.len().saturating_sub(inner.waiting.len())
    }

    /// Whether `key` is currently in flight.
    #[cfg(test)]
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
    #[cfg(test)]
    #[must_use]
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        match self.lock().record(key)?.state {
            State::Waiting { at, .. } => Some(at),
            State::InFlight { .. } => None,
        }
    }

    /// The deadline remembered for an in-flight `key` (see [`schedule`](Self::schedule));
    /// `None` if nothing is deferred or the key is not in flight.
    #[cfg(test)]
    #[must_use]
    pub fn deferred(&self, key: &K) -> Option<Instant> {
        match self.lock().record(key)?.state {
            State::InFlight { deferred, .. } => deferred,
            State::Waiting { .. } => None,
        }
    }

    /// The rank of a waiting or in-flight `key`.
    #[cfg(test)]
    #[must_use]
    pub fn rank(&self, key: &K) -> Option<Rank> {
        self.lock().record(key).map(|record| record.rank)
    }

    /// The earliest deadline among waiting keys, if any.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().earliest()
    }

    /// Consecutive `Retry` completions of `key` (0 for an absent key).
    #[cfg(test)]
    #[must_use]
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().record(key).map_or(0, |record| record.failures)
    }

    /// Drops every waiting and in-flight record (failure counts included) and lifts the hold.
    /// Outstanding tickets become stale; workers keep waiting for new keys.
    #[cfg(test)]
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.waiting.clear();
        inner.due.clear();
        inner.records.clear();
        inner.hold = None;
        inner.deciding = None;
    }

    /// Shuts the queue down: every current and future [`next`](Self::next) returns `None`,
    /// waiting and in-flight records are dropped (outstanding tickets become stale), the hold is
    /// lifted and later
    /// schedules are ignored ([`Scheduled::ShutDown`]). Idempotent.
    pub fn shutdown(&self) {
        {
            let mut inner = self.lock();
            inner.shut_down = true;
            inner.waiting.clear();
            inner.due.clear();
            inner.records.clear();
            inner.hold = None;
            inner.deciding = None;
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
mod model;
#[cfg(test)]
mod tests;
