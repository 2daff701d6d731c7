//! Reference model for the property test: a plain map from key to state, time in whole
//! milliseconds since the test's start, and linear scans instead of ordered structures.

use std::collections::HashMap;

use super::{Cancelled, Completion, Finished, MAX_HORIZON, Rank, Scheduled, Ticket};

pub const KEYS: u8 = 6;

pub fn horizon_ms() -> u64 {
    u64::try_from(MAX_HORIZON.as_millis()).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Waiting {
        at: u64,
        seq: u64,
    },
    InFlight {
        ticket: Ticket,
        deferred: Option<u64>,
        taken: (u64, u64),
    },
}

#[derive(Debug, Default)]
pub struct Model {
    pub now: u64,
    seq: u64,
    /// Key → (state, failures).
    pub records: HashMap<u8, (State, u32)>,
    /// Key → rank, for every key in `records`.
    pub ranks: HashMap<u8, Rank>,
    /// Paced keys are not handed out before this time.
    pub hold: Option<u64>,
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

    pub fn schedule(&mut self, key: u8, at: u64, rank: Rank, no_later: bool) -> Scheduled {
        if self.shut_down {
            return Scheduled::ShutDown;
        }
        let at = at.min(self.now + horizon_ms());
        let seq = self.next_seq();
        self.ranks.insert(key, rank);
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
                self.ranks.remove(&key);
                Cancelled::Removed
            }
        }
    }

    /// The key `next` must hand out now: among due keys (paced ones only when not held) the
    /// lowest rank, then the earliest deadline, ties by sequence.
    pub fn due(&self) -> Option<u8> {
        if self.shut_down {
            return None;
        }
        let held = self.hold.is_some_and(|until| self.now < until);
        self.records
            .iter()
            .filter_map(|(&key, &(state, _))| {
                let rank = self.ranks[&key];
                match state {
                    State::Waiting { at, seq } if at <= self.now && !(held && rank != Rank::Unpaced) => {
                        Some(((rank, at, seq), key))
                    }
                    _ => None,
                }
            })
            .min()
            .map(|(_, key)| key)
    }

    pub fn take(&mut self, key: u8, ticket: Ticket) {
        if let Some((state, _)) = self.records.get_mut(&key)
            && let State::Waiting { at, seq } = *state
        {
            *state = State::InFlight {
                ticket,
                deferred: None,
                taken: (at, seq),
            };
        }
    }

    pub fn hold(&mut self, until: Option<u64>) {
        self.hold = until;
    }

    pub fn done(&mut self, key: u8, ticket: Ticket, completion: Completion) -> Done {
        let now = self.now;
        let seq = self.next_seq();
        let Some((
            State::InFlight {
                ticket: current,
                deferred,
                taken,
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
            Completion::PutBack => (Some(taken.0), failures),
        };
        let target = [deferred, own].into_iter().flatten().min();
        match target {
            None => {
                self.records.remove(&key);
                self.ranks.remove(&key);
                Done::Forgotten
            }
            Some(at) => {
                // Put back to its own deadline, a key keeps its place.
                let seq = if completion == Completion::PutBack && at == taken.0 {
                    taken.1
                } else {
                    seq
                };
                self.records.insert(key, (State::Waiting { at, seq }, failures));
                Done::Requeued(at)
            }
        }
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.ranks.clear();
        self.hold = None;
    }

    pub fn shutdown(&mut self) {
        self.clear();
        self.shut_down = true;
    }
}
