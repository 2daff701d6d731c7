use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use proptest::{
    prelude::*,
    test_runner::{RngAlgorithm, TestCaseError},
};

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

/// Among due keys: unpaced first, then paced by rank (lowest first), then deadline, then place.
#[tokio::test(start_paused = true)]
async fn due_keys_go_by_rank_then_deadline() {
    let q = queue();
    let start = Instant::now();
    q.schedule_ranked(1, start + secs(1), Rank::Paced(100));
    q.schedule_ranked(2, start + secs(3), Rank::Paced(0));
    q.schedule_ranked(3, start + secs(2), Rank::Paced(50));
    q.schedule_ranked(6, start + secs(1), Rank::Paced(50)); // same rank, earlier deadline
    q.schedule(4, start + secs(4));
    q.schedule_ranked(5, start + secs(9), Rank::Paced(-5)); // lowest rank, not yet due
    tokio::time::advance(secs(5)).await;
    let order: Vec<_> = std::iter::from_fn(|| q.try_next()).map(|(k, _)| k).collect();
    assert_eq!(order, [4, 2, 6, 3, 1], "the key not yet due stays");
    assert_eq!(q.rank(&5), Some(Rank::Paced(-5)));
    assert_eq!(q.rank(&1), Some(Rank::Paced(100)), "kept while in flight");
}

/// A rank given to a waiting key (same deadline, found due or not) reorders it; one given while
/// in flight applies when the key is re-queued.
#[tokio::test(start_paused = true)]
async fn a_new_rank_reorders_waiting_and_in_flight_keys() {
    let q = queue();
    let at = Instant::now() + secs(1);
    q.schedule_ranked(1, at, Rank::Paced(1));
    q.schedule_ranked(2, at, Rank::Paced(2));
    q.schedule_ranked(3, at, Rank::Paced(3));
    tokio::time::advance(secs(1)).await;
    let (first, ticket) = q.try_next().expect("due");
    assert_eq!(first, 1);
    assert_eq!(
        q.schedule_no_later_ranked(3, at + secs(5), Rank::Paced(0)),
        Scheduled::Unchanged,
        "the deadline stays"
    );
    assert_eq!(
        q.schedule_ranked(1, at, Rank::Paced(9)),
        Scheduled::DeferredWhileInFlight
    );
    assert_eq!(q.done(&1, ticket, Completion::Forget), Finished::Requeued { at });
    let order: Vec<_> = std::iter::from_fn(|| q.try_next()).map(|(k, _)| k).collect();
    assert_eq!(order, [3, 2, 1]);
}

/// While a hold lasts paced keys wait and unpaced ones go; when it ends, the lowest rank due
/// *then* goes first, even one that became due during the hold.
#[tokio::test(start_paused = true)]
async fn a_hold_keeps_paced_keys_and_its_end_serves_the_lowest_rank_then_due() {
    let q = queue();
    let start = Instant::now();
    q.schedule_ranked(1, start, Rank::Paced(100));
    q.hold_paced_until(Some(start + secs(10)));
    assert!(q.is_holding());
    assert_eq!(q.try_next().map(|(k, _)| k), None, "held");
    q.schedule(9, start + secs(1));
    let worker = spawn_take_one(&q);
    tokio::time::advance(secs(1)).await;
    let (key, ticket, when) = worker.await.expect("worker").expect("a key");
    assert_eq!((key, when), (9, start + secs(1)), "unpaced work is not held");
    q.done(&9, ticket, Completion::Forget);
    let worker = spawn_take_one(&q);
    settle().await;
    tokio::time::advance(secs(4)).await;
    q.schedule_ranked(2, Instant::now(), Rank::Paced(0));
    settle().await;
    assert!(!worker.is_finished(), "still held");
    tokio::time::advance(secs(5)).await;
    let (key, _, when) = worker.await.expect("worker").expect("a key");
    assert_eq!(
        (key, when),
        (2, start + secs(10)),
        "the lower rank that became due during the hold goes first, at its end"
    );
    assert!(!q.is_holding());
    assert_eq!(q.try_next().map(|(k, _)| k), Some(1));
}

/// With paced keys serialised, a paced key handed out keeps every other paced key back until its
/// worker has decided (`paced_decided`) or finished (`done`), so workers that take keys at the
/// same moment cannot race for one token; unpaced work still goes, and a waiting worker is woken
/// when the decision comes. Without serialising, all due keys go at once.
#[tokio::test(start_paused = true)]
async fn serialised_paced_keys_go_one_decision_at_a_time() {
    let q = queue();
    q.serialize_paced();
    let now = Instant::now();
    for (key, rank) in [(1, 500), (2, -10), (3, 900)] {
        q.schedule_ranked(key, now, Rank::Paced(rank));
    }
    q.schedule(9, now);
    let (first, ticket) = q.try_next().expect("unpaced work first");
    assert_eq!(first, 9);
    q.done(&9, ticket, Completion::Forget);
    let (lowest, ticket) = q.try_next().expect("the lowest rank");
    assert_eq!(lowest, 2);
    assert_eq!(
        q.try_next().map(|(k, _)| k),
        None,
        "no other paced key before the decision"
    );
    let worker = spawn_take_one(&q);
    settle().await;
    assert!(!worker.is_finished(), "waits for the decision");
    q.paced_decided(ticket);
    let (next, next_ticket, _) = worker.await.expect("worker").expect("a key");
    assert_eq!(next, 1, "woken by the decision, the next rank");
    assert_eq!(q.try_next().map(|(k, _)| k), None);
    q.done(&1, next_ticket, Completion::PutBack);
    assert_eq!(
        q.try_next().map(|(k, _)| k),
        Some(1),
        "done decides too; the put-back key keeps its rank"
    );

    let q = queue();
    for (key, rank) in [(1, 500), (2, -10)] {
        q.schedule_ranked(key, now, Rank::Paced(rank));
    }
    assert_eq!(q.try_next().map(|(k, _)| k), Some(2));
    assert_eq!(
        q.try_next().map(|(k, _)| k),
        Some(1),
        "not serialised: both at once"
    );
}

/// A key put back waits at its old deadline, rank and place, failure count unchanged; an earlier
/// deadline deferred meanwhile wins.
#[tokio::test(start_paused = true)]
async fn put_back_restores_the_place() {
    let q = queue();
    let at = Instant::now() + secs(1);
    q.schedule_ranked(1, at, Rank::Paced(5));
    q.schedule_ranked(2, at, Rank::Paced(5));
    tokio::time::advance(secs(1)).await;
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 1);
    q.done(&1, ticket, Completion::Retry);
    tokio::time::advance(secs(1)).await;
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 2, "1 retries later");
    assert_eq!(q.done(&2, ticket, Completion::PutBack), Finished::Requeued { at });
    assert_eq!(q.failures(&2), 0);
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 2, "put back before 1, as it was");
    assert_eq!(q.done(&2, ticket, Completion::PutBack), Finished::Requeued { at });
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 2);
    q.done(&2, ticket, Completion::Forget);
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 1);
    let retried = Instant::now() - secs(1) + ms(5);
    q.schedule_ranked(3, at - secs(1), Rank::Paced(5));
    assert_eq!(
        q.done(&1, ticket, Completion::PutBack),
        Finished::Requeued { at: retried }
    );
    assert_eq!(q.failures(&1), 1, "unchanged by PutBack");
    let (key, ticket) = q.try_next().expect("due");
    assert_eq!(key, 3, "earlier deadline first");
    q.schedule(3, at);
    assert_eq!(
        q.done(&3, ticket, Completion::PutBack),
        Finished::Requeued { at: at - secs(1) }
    );
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

#[derive(Debug, Clone)]
enum Op {
    Schedule {
        key: u8,
        past: bool,
        ms: u64,
        no_later: bool,
        rank: Rank,
    },
    ScheduleFar {
        key: u8,
        no_later: bool,
        rank: Rank,
    },
    /// `hold_paced_until(now + ms)`, or lift the hold.
    Hold {
        ms: Option<u64>,
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
        Just(Completion::PutBack),
    ]
}

fn rank_strategy() -> impl Strategy<Value = Rank> {
    prop_oneof![Just(Rank::Unpaced), (-2i32..3).prop_map(Rank::Paced)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..model::KEYS;
    prop_oneof![
        6 => (key.clone(), any::<bool>(), 0u64..300, any::<bool>(), rank_strategy())
            .prop_map(|(key, past, ms, no_later, rank)| Op::Schedule { key, past, ms, no_later, rank }),
        1 => (key.clone(), any::<bool>(), rank_strategy())
            .prop_map(|(key, no_later, rank)| Op::ScheduleFar { key, no_later, rank }),
        1 => prop::option::of(0u64..300).prop_map(|ms| Op::Hold { ms }),
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
fn check_state(q: &WorkQueue<u8>, m: &model::Model, start: Instant, op: &Op) -> Result<(), TestCaseError> {
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
        prop_assert_eq!(
            q.rank(&key),
            m.ranks.get(&key).copied(),
            "rank of {} after {:?}",
            key,
            op
        );
    }
    prop_assert_eq!(q.is_holding(), m.hold.is_some_and(|until| m.now < until));
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
                rank,
            } => {
                let t = if past {
                    m.now.saturating_sub(offset)
                } else {
                    m.now + offset
                };
                let got = match (no_later, rank) {
                    (true, Rank::Unpaced) => q.schedule_no_later(key, at(t)),
                    (false, Rank::Unpaced) => q.schedule(key, at(t)),
                    (true, rank) => q.schedule_no_later_ranked(key, at(t), rank),
                    (false, rank) => q.schedule_ranked(key, at(t), rank),
                };
                prop_assert_eq!(got, m.schedule(key, t, rank, no_later));
            }
            Op::ScheduleFar { key, no_later, rank } => {
                let far = Instant::now() + MAX_HORIZON * 2;
                let got = if no_later {
                    q.schedule_no_later_ranked(key, far, rank)
                } else {
                    q.schedule_ranked(key, far, rank)
                };
                prop_assert_eq!(got, m.schedule(key, to_ms(far), rank, no_later));
            }
            Op::Hold { ms: offset } => {
                q.hold_paced_until(offset.map(|o| at(m.now + o)));
                m.hold(offset.map(|o| m.now + o));
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

/// A ticket tells when its key became due: the instant it was scheduled when that is later than
/// its deadline, else the deadline; a key put back keeps it; a retry's is the end of its backoff.
#[tokio::test(start_paused = true)]
async fn a_ticket_tells_when_its_key_became_due() {
    let q = queue();
    let start = Instant::now();
    q.schedule(1, start);
    q.schedule(2, start + secs(5));
    tokio::time::advance(secs(2)).await;
    let (key, ticket) = q.try_next().expect("1 is due");
    assert_eq!((key, ticket.due()), (1, start), "waited 2 s for a worker");
    q.done(&1, ticket, Completion::PutBack);
    let (key, ticket) = q.try_next().expect("1 again");
    assert_eq!(
        (key, ticket.due()),
        (1, start),
        "put back: still due since the start"
    );
    assert_eq!(
        q.done(&1, ticket, Completion::Retry),
        Finished::Requeued {
            at: Instant::now() + ms(5)
        }
    );
    tokio::time::advance(secs(4)).await;
    let (key, ticket) = q.try_next().expect("1 after its backoff");
    assert_eq!((key, ticket.due()), (1, start + secs(2) + ms(5)));
    let (key, ticket) = q.try_next().expect("2 is due");
    assert_eq!((key, ticket.due()), (2, start + secs(5)));
}
