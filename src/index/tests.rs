//! Upstream `TestController` cases (SPEC section 6, upstream-behaviour.md §6.1), written as
//! "initial objects + events + time steps → pending evictions, Events, rule conditions". Cases
//! whose events do not depend on order are replayed in every order of up to four events.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::*;
use crate::{
    controller::{Work, enqueue},
    fixtures::{claim, pod, rule, slice, t, taint, toleration},
    queue::{Backoff, Completion, WorkQueue},
    rule_status::{self, RuleStatusWork},
    view::{ClaimView, PodView, RuleView, SliceView, Toleration},
};

const NS: &str = "default";
const DRIVER: &str = "driver";
const POOL: &str = "pool";
const DEVICE: &str = "instance";
const KEY: &str = "example.com/taint";
const VALUE: &str = "something";

// === Fixtures ===

fn the_pod() -> PodView {
    pod(NS, "my-pod").with_claim("my-claim")
}

fn the_claim() -> ClaimView {
    claim(NS, "my-claim")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for(&the_pod())
}

fn tolerating_claim(tol: Toleration) -> ClaimView {
    the_claim().with_toleration(tol)
}

fn tolerate_secs(secs: Option<i64>) -> Toleration {
    toleration(KEY, "Exists", "", "NoExecute", secs)
}

fn untainted_slice() -> SliceView {
    slice("my-slice", DRIVER, POOL).with_device(DEVICE)
}

fn tainted_slice() -> SliceView {
    untainted_slice().with_taint(taint(KEY, VALUE, "NoExecute", Some(t(0))))
}

fn slice_with_effect(effect: &str) -> SliceView {
    untainted_slice().with_taint(taint(KEY, VALUE, effect, Some(t(0))))
}

fn the_rule() -> RuleView {
    rule("my-rule").selecting(Some(DRIVER), Some(POOL), Some(DEVICE))
}

fn none_rule() -> RuleView {
    the_rule().with_taint(taint("k", "v", "None", Some(t(0))))
}

fn slice_reason(device: &str, index: usize) -> TaintSource {
    TaintSource::Slice {
        device: DeviceId::new(DRIVER, POOL, device),
        index,
    }
}

fn rule_reason(rule: &RuleView) -> TaintSource {
    TaintSource::Rule(rule.rule_ref())
}

/// Pod `name` in namespace `ns` with its own claim on device `device`, and that claim.
fn pod_and_claim(ns: &str, name: &str, device: &str) -> (PodView, ClaimView) {
    let p = pod(ns, name).with_claim(&format!("{name}-claim"));
    let c = claim(ns, &format!("{name}-claim"))
        .with_device(DRIVER, POOL, device)
        .reserved_for(&p);
    (p, c)
}

// === Harness ===

#[derive(Clone, Debug)]
enum Ev {
    Pod(PodView),
    DeletePod(PodView),
    Claim(ClaimView),
    DeleteClaim(ClaimView),
    Slice(SliceView),
    DeleteSlice(&'static str),
    Rule(RuleView),
    DeleteRule(RuleView),
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test-only table rows
enum Step {
    /// Set the clock.
    At(i64),
    /// Apply an event.
    Apply(Ev),
    /// Run the workers for every due pod; these pods (by name) are evicted.
    Process(Vec<&'static str>),
}

/// The index with the controller's glue and a real [`WorkQueue`] on a paused tokio clock: the
/// workers only see the keys the queue hands out, as in production.
struct Harness {
    state: State,
    now: Time,
    /// Events as `pod: message`.
    emitted: Vec<String>,
    schedules: usize,
    queue: WorkQueue<Work>,
    /// Paused clock; `origin` on the wall clock is `base` on it.
    rt: tokio::runtime::Runtime,
    base: Instant,
}

/// Wall-clock origin of the harness' virtual clock (before any time a case uses).
const ORIGIN_SECS: i64 = -100_000;

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("test runtime");
        let base = rt.block_on(async { Instant::now() });
        Self {
            state: State::new(),
            now: t(0),
            emitted: Vec::new(),
            schedules: 0,
            queue: WorkQueue::new(Backoff::default()),
            rt,
            base,
        }
    }

    /// Moves the virtual clock to `self.now` (it never goes back).
    fn sync_clock(&self) {
        let offset = self.now.duration_since(t(ORIGIN_SECS)).unsigned_abs();
        let target = self.base + offset;
        self.rt.block_on(async {
            let now = Instant::now();
            if target > now {
                tokio::time::advance(target - now).await;
            }
        });
    }

    fn apply(&mut self, ev: &Ev) {
        self.apply_index_only(ev);
        self.collect();
    }

    fn apply_index_only(&mut self, ev: &Ev) {
        let now = self.now;
        let s = &mut self.state;
        match ev.clone() {
            Ev::Pod(p) => s.apply_pod(&p.object_name(), Some(p)),
            Ev::DeletePod(p) => s.delete_pod(&p.object_name(), &p.uid),
            Ev::Claim(c) => s.apply_claim(c),
            Ev::DeleteClaim(c) => s.delete_claim(&c.object_name(), &c.uid),
            Ev::Slice(sl) => s.apply_slice(sl, now),
            Ev::DeleteSlice(name) => s.delete_slice(name),
            Ev::Rule(r) => s.apply_rule(r, now),
            Ev::DeleteRule(r) => s.delete_rule(&r.name, &r.uid),
        }
    }

    /// Hands the changes to the controller's glue and checks that every pending eviction has a
    /// queue key due no later than it.
    fn collect(&mut self) {
        let changes = self.state.take_changes();
        self.enqueue(changes);
    }

    /// Applies `ev` to the index only, returning its changes for [`Harness::enqueue`] later.
    fn apply_held(&mut self, ev: &Ev) -> Vec<Change> {
        let held = self.state.take_changes();
        self.apply_index_only(ev);
        let changes = self.state.take_changes();
        assert!(held.is_empty(), "changes left over");
        changes
    }

    fn enqueue(&mut self, changes: Vec<Change>) {
        self.sync_clock();
        let _rt = self.rt.enter();
        self.schedules += changes
            .iter()
            .filter(|c| matches!(c, Change::Schedule { .. }))
            .count();
        for notice in enqueue(&self.queue, changes, self.now) {
            if let Change::Cancel { pod, notify: true } = notice {
                self.emitted.push(format!("{}: Cancelling deletion", pod.name));
            }
        }
        for (pod, eviction) in &self.state.pending {
            let at = self
                .queue
                .deadline(&Work::Pod(pod.clone()))
                .or_else(|| self.queue.deferred(&Work::Pod(pod.clone())))
                .unwrap_or_else(|| panic!("pending eviction of {pod} has no queue key"));
            let wait = eviction.at.duration_since(self.now);
            let latest = Instant::now()
                + if wait.is_negative() {
                    Duration::ZERO
                } else {
                    wait.unsigned_abs()
                };
            assert!(at <= latest, "queue key of {pod} is due after its eviction");
        }
    }

    /// The worker loop for every key the queue hands out now, in pod order.
    fn process(&mut self) -> Vec<String> {
        self.sync_clock();
        let entered = self.rt.enter();
        let mut due = Vec::new();
        while let Some((work, ticket)) = self.queue.try_next() {
            match work {
                Work::Pod(pod) => due.push((pod, ticket)),
                Work::Rule(_) => {
                    self.queue.done(&work, ticket, Completion::Forget);
                }
            }
        }
        due.sort_by(|(a, _), (b, _)| a.cmp(b));
        let mut evicted = Vec::new();
        for (pod, ticket) in due {
            let completion = match self.state.due(&pod, self.now) {
                Due::Gone => Completion::Forget,
                Due::Later(at) => Completion::After(at.duration_since(self.now).unsigned_abs()),
                Due::Now(eviction) => {
                    self.emitted.push(format!("{}: Marking for deletion", pod.name));
                    self.state.finish(&pod, &eviction, Finished::Evicted);
                    evicted.push(pod.name.clone());
                    Completion::Forget
                }
                Due::Protected { priority, .. } => {
                    if self.state.eviction_protected(&pod) {
                        self.emitted
                            .push(format!("{}: protected, priority {priority}", pod.name));
                    }
                    Completion::Forget
                }
            };
            self.queue.done(&Work::Pod(pod), ticket, completion);
        }
        drop(entered);
        self.collect();
        evicted
    }

    fn pending(&self) -> BTreeMap<String, i64> {
        self.state
            .pending
            .iter()
            .map(|(p, e)| (format!("{}/{}", p.namespace, p.name), e.at.as_second()))
            .collect()
    }

    fn condition(&self, name: &str) -> (String, String) {
        let view = self
            .state
            .rule(name)
            .unwrap_or_else(|| panic!("rule {name} missing"));
        let c = rule_status::current_condition(&self.state, view, self.now);
        (c.reason.to_owned(), c.message)
    }
}

#[derive(Debug, Default)]
struct Case {
    initial: Vec<Ev>,
    events: Vec<Ev>,
    /// The events must be applied in the given order (several versions of one object).
    ordered: bool,
    /// Pending evictions after the events: `namespace/pod` → eviction time in seconds.
    pending: Vec<(&'static str, i64)>,
    /// Reasons of pending evictions: `namespace/pod` → reasons.
    reasons: Vec<(&'static str, Vec<TaintSource>)>,
    /// Rule conditions after the events: (rule, reason, message).
    conditions: Vec<(&'static str, &'static str, &'static str)>,
    /// What happens next.
    steps: Vec<Step>,
    /// Rule conditions at the end.
    final_conditions: Vec<(&'static str, &'static str, &'static str)>,
    /// Every Event emitted, in order.
    emitted: Vec<&'static str>,
}

fn permutations(events: &[Ev]) -> Vec<Vec<Ev>> {
    if events.len() <= 1 {
        return vec![events.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..events.len() {
        let mut rest = events.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

fn run(name: &str, case: &Case) {
    let orders = if case.ordered || case.events.len() > 4 {
        vec![case.events.clone()]
    } else {
        permutations(&case.events)
    };
    for (n, events) in orders.iter().enumerate() {
        let ctx = format!("case {name}, order #{n}");
        let mut h = Harness::new();
        for ev in case.initial.iter().chain(events) {
            h.apply(ev);
        }
        let want: BTreeMap<String, i64> = case
            .pending
            .iter()
            .map(|(p, at)| ((*p).to_owned(), *at))
            .collect();
        assert_eq!(h.pending(), want, "{ctx}: pending");
        for (p, reasons) in &case.reasons {
            let (ns, name) = p.split_once('/').unwrap_or_default();
            let got = h
                .state
                .pending
                .iter()
                .find(|(r, _)| r.namespace == ns && r.name == name)
                .map(|(_, e)| &e.reasons);
            assert_eq!(got, Some(reasons), "{ctx}: reasons of {p}");
        }
        for (r, reason, message) in &case.conditions {
            assert_eq!(
                h.condition(r),
                ((*reason).to_owned(), (*message).to_owned()),
                "{ctx}: condition of {r}"
            );
        }
        for step in &case.steps {
            match step {
                Step::At(secs) => h.now = t(*secs),
                Step::Apply(ev) => h.apply(ev),
                Step::Process(want) => assert_eq!(h.process(), *want, "{ctx}: evicted at {}", h.now),
            }
        }
        for (r, reason, message) in &case.final_conditions {
            assert_eq!(
                h.condition(r),
                ((*reason).to_owned(), (*message).to_owned()),
                "{ctx}: final condition of {r}"
            );
        }
        assert_eq!(h.emitted, case.emitted, "{ctx}: events");
    }
}

/// The most common shape: the pod is evicted at `at`, nothing before.
fn evicted_at(at: i64) -> Vec<Step> {
    vec![
        Step::At(at - 1),
        Step::Process(vec![]),
        Step::At(at),
        Step::Process(vec!["my-pod"]),
    ]
}

// === Concurrent updates ===
//
// Two watch tasks update the index one after the other but may hand their changes to the queue in
// the opposite order. Each case applies the batches in the worst order; `enqueue` checks after
// each batch that every pending eviction still has a queue key due no later than it.

#[test]
fn cancel_reaching_the_queue_after_a_newer_schedule() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(untainted_slice()),
    ] {
        h.apply(&ev);
    }
    let first = h.apply_held(&Ev::Slice(tainted_slice()));
    let cancel = h.apply_held(&Ev::Slice(untainted_slice()));
    let newer = h.apply_held(&Ev::Slice(tainted_slice()));
    assert!(matches!(cancel[..], [Change::Cancel { .. }]), "{cancel:?}");
    assert!(matches!(newer[..], [Change::Schedule { .. }]), "{newer:?}");
    h.enqueue(first);
    h.enqueue(newer);
    h.enqueue(cancel);
    assert_eq!(h.process(), vec!["my-pod"]);
}

#[test]
fn schedules_reaching_the_queue_in_reverse() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
    ] {
        h.apply(&ev);
    }
    let later = h.apply_held(&Ev::Slice(tainted_slice()));
    let sooner = h.apply_held(&Ev::Claim(tolerating_claim(tolerate_secs(Some(5)))));
    assert!(matches!(later[..], [Change::Schedule { .. }, ..]), "{later:?}");
    assert!(matches!(sooner[..], [Change::Schedule { .. }, ..]), "{sooner:?}");
    h.enqueue(sooner);
    h.enqueue(later);
    h.now = t(4);
    assert_eq!(h.process(), Vec::<String>::new());
    h.now = t(5);
    assert_eq!(h.process(), vec!["my-pod"]);
}

const PENDING_ONE: &str = "1 pod needs to be evicted in 1 namespace.";
const EVICTED_ONE: &str = "1 pod evicted since starting the controller.";

// === Cases ===

#[test]
fn empty() {
    run(
        "empty",
        &Case {
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn populate_pools() {
    let mut h = Harness::new();
    h.apply(&Ev::Slice(tainted_slice()));
    h.apply(&Ev::Slice(
        slice("other", DRIVER, "other-pool")
            .with_device("x")
            .with_generation(3),
    ));
    assert_eq!(
        h.state.pools.taints(&DeviceId::new(DRIVER, POOL, DEVICE)).len(),
        1
    );
    assert_eq!(h.state.pools.slice_count(), 2);
    assert_eq!(h.state.pools.published_matching(&Selector::default()), 2);
}

#[test]
fn update_pools() {
    let mut h = Harness::new();
    h.apply(&Ev::Slice(tainted_slice()));
    h.apply(&Ev::Slice(
        slice("my-slice-2", DRIVER, POOL)
            .with_device(DEVICE)
            .with_generation(2),
    ));
    assert!(
        h.state
            .pools
            .taints(&DeviceId::new(DRIVER, POOL, DEVICE))
            .is_empty(),
        "old generation ignored"
    );
}

#[test]
fn untainted_claim() {
    let mut h = Harness::new();
    h.apply(&Ev::Slice(untainted_slice()));
    h.apply(&Ev::Claim(the_claim()));
    assert_eq!(
        h.state.claim(&ObjectName::new(NS, "my-claim")).map(|c| c.1),
        Some(None)
    );
}

#[test]
fn tainted_claim_through_resourceslice() {
    for events in permutations(&[Ev::Slice(tainted_slice()), Ev::Claim(the_claim())]) {
        let mut h = Harness::new();
        for e in &events {
            h.apply(e);
        }
        let eviction = h
            .state
            .claim(&ObjectName::new(NS, "my-claim"))
            .and_then(|c| c.1.cloned());
        assert_eq!(
            eviction,
            Some(Eviction {
                at: t(0),
                reasons: vec![slice_reason(DEVICE, 0)]
            })
        );
    }
}

#[test]
fn rule_status() {
    run(
        "rule-status",
        &Case {
            events: vec![Ev::Rule(the_rule()), Ev::Slice(untainted_slice())],
            conditions: vec![("my-rule", "NotStarted", "")],
            ..Case::default()
        },
    );
}

#[test]
fn tainted_claim_through_rule() {
    for events in permutations(&[Ev::Rule(the_rule()), Ev::Claim(the_claim())]) {
        let mut h = Harness::new();
        for e in &events {
            h.apply(e);
        }
        let eviction = h
            .state
            .claim(&ObjectName::new(NS, "my-claim"))
            .and_then(|c| c.1.cloned());
        assert_eq!(
            eviction,
            Some(Eviction {
                at: t(0),
                reasons: vec![rule_reason(&the_rule())]
            })
        );
    }
}

#[test]
fn evict_pod_resourceclaim() {
    run(
        "evict-pod-resourceclaim",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 0)],
            reasons: vec![("default/my-pod", vec![slice_reason(DEVICE, 0)])],
            steps: vec![
                Step::Process(vec!["my-pod"]),
                Step::At(100),
                Step::Process(vec![]),
            ],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_rule() {
    run(
        "evict-pod-rule",
        &Case {
            events: vec![Ev::Pod(the_pod()), Ev::Claim(the_claim()), Ev::Rule(the_rule())],
            pending: vec![("default/my-pod", 0)],
            reasons: vec![("default/my-pod", vec![rule_reason(&the_rule())])],
            conditions: vec![("my-rule", "PodsPendingEviction", PENDING_ONE)],
            steps: vec![Step::Process(vec!["my-pod"])],
            final_conditions: vec![("my-rule", "Completed", EVICTED_ONE)],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_rule_later() {
    run(
        "evict-pod-rule-later",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim().with_toleration(toleration("k", "Equal", "v", "NoExecute", Some(60)))),
                Ev::Rule(the_rule()),
            ],
            pending: vec![("default/my-pod", 60)],
            conditions: vec![("my-rule", "PodsPendingEviction", PENDING_ONE)],
            steps: evicted_at(60),
            final_conditions: vec![("my-rule", "Completed", EVICTED_ONE)],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

fn many_pods(namespaces: [&str; 3]) -> Vec<Ev> {
    let mut events = vec![Ev::Rule(rule("my-rule").selecting(
        Some(DRIVER),
        Some(POOL),
        None,
    ))];
    for (i, ns) in namespaces.iter().enumerate() {
        let (p, c) = pod_and_claim(ns, &format!("pod-{i}"), &format!("instance-{i}"));
        events.push(Ev::Pod(p));
        events.push(Ev::Claim(c));
    }
    events
}

#[test]
fn evict_many_pods_many_namespaces() {
    run(
        "evict-many-pods-many-namespaces",
        &Case {
            events: many_pods(["ns-0", "ns-1", "ns-2"]),
            pending: vec![("ns-0/pod-0", 0), ("ns-1/pod-1", 0), ("ns-2/pod-2", 0)],
            conditions: vec![(
                "my-rule",
                "PodsPendingEviction",
                "3 pods need to be evicted in 3 different namespaces.",
            )],
            steps: vec![Step::Process(vec!["pod-0", "pod-1", "pod-2"])],
            final_conditions: vec![(
                "my-rule",
                "Completed",
                "3 pods evicted since starting the controller.",
            )],
            emitted: vec![
                "pod-0: Marking for deletion",
                "pod-1: Marking for deletion",
                "pod-2: Marking for deletion",
            ],
            ..Case::default()
        },
    );
}

#[test]
fn evict_many_pods_same_namespace() {
    run(
        "evict-many-pods-same-namespace",
        &Case {
            events: many_pods(["ns", "ns", "ns"]),
            pending: vec![("ns/pod-0", 0), ("ns/pod-1", 0), ("ns/pod-2", 0)],
            conditions: vec![(
                "my-rule",
                "PodsPendingEviction",
                "3 pods need to be evicted in 1 namespace.",
            )],
            steps: vec![Step::Process(vec!["pod-0", "pod-1", "pod-2"])],
            final_conditions: vec![(
                "my-rule",
                "Completed",
                "3 pods evicted since starting the controller.",
            )],
            emitted: vec![
                "pod-0: Marking for deletion",
                "pod-1: Marking for deletion",
                "pod-2: Marking for deletion",
            ],
            ..Case::default()
        },
    );
}

const WOULD_SUFFIX: &str = "if the effect was NoExecute. This information will not be updated again. Recreate the DeviceTaintRule to trigger an update.";

#[test]
fn none_pod_rule() {
    let message = format!(
        "1 published device selected. 1 allocated device selected. 1 pod would be evicted in 1 namespace {WOULD_SUFFIX}"
    );
    let message: &'static str = Box::leak(message.into_boxed_str());
    run(
        "none-pod-rule",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Rule(none_rule()),
                Ev::Slice(untainted_slice()),
            ],
            conditions: vec![("my-rule", "NoEffect", message)],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

fn none_many(namespaces: [&str; 3], want: &'static str) {
    let mut events = many_pods(namespaces);
    events[0] = Ev::Rule(
        rule("my-rule")
            .selecting(Some(DRIVER), Some(POOL), None)
            .with_taint(taint("k", "v", "None", Some(t(0)))),
    );
    let mut s = slice("my-slice", DRIVER, POOL);
    for i in 0..4 {
        s = s.with_device(&format!("instance-{i}"));
    }
    events.push(Ev::Slice(s));
    run(
        "none-many",
        &Case {
            events,
            conditions: vec![("my-rule", "NoEffect", want)],
            ..Case::default()
        },
    );
}

#[test]
fn none_many_pods_many_namespaces() {
    none_many(
        ["ns-0", "ns-1", "ns-2"],
        "4 published devices selected. 3 allocated devices selected. 3 pods would be evicted in 3 different \
         namespaces if the effect was NoExecute. This information will not be updated again. Recreate the \
         DeviceTaintRule to trigger an update.",
    );
}

#[test]
fn none_many_pods_same_namespace() {
    none_many(
        ["ns", "ns", "ns"],
        "4 published devices selected. 3 allocated devices selected. 3 pods would be evicted in 1 namespace \
         if the effect was NoExecute. This information will not be updated again. Recreate the DeviceTaintRule \
         to trigger an update.",
    );
}

// === PodGroups (KEP-5729) ===

const GROUP: &str = "my-pod-group";

/// A member of `GROUP` that uses the group's claim.
fn group_member(name: &str) -> PodView {
    pod(NS, name).with_claim("group-claim").in_pod_group(GROUP)
}

/// The claim reserved for `GROUP` (not for any pod by name).
fn group_claim() -> ClaimView {
    claim(NS, "group-claim")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for_pod_group(GROUP)
}

#[test]
fn evict_pod_resourceclaim_podgroup() {
    run(
        "evict-pod-resourceclaim-podgroup",
        &Case {
            events: vec![
                Ev::Pod(group_member("member-0")),
                Ev::Pod(group_member("member-1")),
                Ev::Claim(group_claim()),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/member-0", 0), ("default/member-1", 0)],
            reasons: vec![
                ("default/member-0", vec![slice_reason(DEVICE, 0)]),
                ("default/member-1", vec![slice_reason(DEVICE, 0)]),
            ],
            steps: vec![Step::Process(vec!["member-0", "member-1"])],
            emitted: vec!["member-0: Marking for deletion", "member-1: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_pod_in_podgroup_without_claim() {
    run(
        "no-evict-pod-in-podgroup-without-claim",
        &Case {
            events: vec![
                Ev::Pod(group_member("member")),
                // Same PodGroup, but it does not reference the claim (it uses another one).
                Ev::Pod(pod(NS, "bystander").with_claim("other-claim").in_pod_group(GROUP)),
                Ev::Claim(group_claim()),
                Ev::Rule(the_rule()),
            ],
            pending: vec![("default/member", 0)],
            conditions: vec![("my-rule", "PodsPendingEviction", PENDING_ONE)],
            steps: vec![Step::Process(vec!["member"])],
            final_conditions: vec![("my-rule", "Completed", EVICTED_ONE)],
            emitted: vec!["member: Marking for deletion"],
            ..Case::default()
        },
    );
}

/// A pod outside the PodGroup that references the group's claim by name does not get it
/// through the group (nor through `reservedFor`), and leaving the group cancels the eviction.
#[test]
fn podgroup_membership_decides() {
    run(
        "podgroup-membership-decides",
        &Case {
            events: vec![
                Ev::Pod(pod(NS, "outsider").with_claim("group-claim")),
                Ev::Pod(
                    pod(NS, "other-group")
                        .with_claim("group-claim")
                        .in_pod_group("other"),
                ),
                Ev::Claim(group_claim()),
                Ev::Slice(tainted_slice()),
            ],
            ..Case::default()
        },
    );
    run(
        "podgroup-claim-released",
        &Case {
            initial: vec![
                Ev::Pod(group_member("member")),
                Ev::Claim(group_claim()),
                Ev::Slice(tainted_slice()),
            ],
            events: vec![Ev::Claim(
                claim(NS, "group-claim").with_device(DRIVER, POOL, DEVICE),
            )],
            emitted: vec!["member: Cancelling deletion"],
            ..Case::default()
        },
    );
    run(
        "podgroup-member-deleted-then-claim-changes",
        &Case {
            initial: vec![
                Ev::Pod(group_member("member")),
                Ev::Claim(group_claim()),
                Ev::DeletePod(group_member("member")),
            ],
            events: vec![Ev::Slice(tainted_slice())],
            ..Case::default()
        },
    );
}

/// A claim generated from a template for the PodGroup is controlled by the PodGroup, not by the
/// pod: it counts for the members.
#[test]
fn evict_pod_resourceclaimtemplate_podgroup() {
    let p = pod(NS, "member")
        .with_generated_claim("group-claim-xyz")
        .in_pod_group(GROUP);
    let c = claim(NS, "group-claim-xyz")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for_pod_group(GROUP)
        .owned_by_pod_group(GROUP);
    run(
        "evict-pod-resourceclaimtemplate-podgroup",
        &Case {
            events: vec![Ev::Pod(p), Ev::Claim(c), Ev::Slice(tainted_slice())],
            pending: vec![("default/member", 0)],
            steps: vec![Step::Process(vec!["member"])],
            emitted: vec!["member: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn none_podgroup_rule() {
    run(
        "none-podgroup-rule",
        &Case {
            initial: vec![Ev::Slice(untainted_slice())],
            events: vec![
                Ev::Pod(group_member("member-0")),
                Ev::Pod(group_member("member-1")),
                Ev::Claim(group_claim()),
                Ev::Rule(none_rule()),
            ],
            conditions: vec![(
                "my-rule",
                "NoEffect",
                "1 published device selected. 1 allocated device selected. 2 pods would be evicted in 1 \
                 namespace if the effect was NoExecute. This information will not be updated again. Recreate \
                 the DeviceTaintRule to trigger an update.",
            )],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn multiple_claims_same_rule() {
    let r = rule("my-rule").selecting(Some(DRIVER), Some(POOL), None);
    let (p0, c0) = pod_and_claim(NS, "pod-0", "instance-0");
    let (p1, c1) = pod_and_claim(NS, "pod-1", "instance-1");
    run(
        "multiple-claims-same-rule",
        &Case {
            events: vec![Ev::Rule(r.clone()), Ev::Pod(p0), Ev::Claim(c0), Ev::Claim(c1)],
            initial: vec![Ev::Pod(p1)],
            pending: vec![("default/pod-0", 0), ("default/pod-1", 0)],
            reasons: vec![
                ("default/pod-0", vec![rule_reason(&r)]),
                ("default/pod-1", vec![rule_reason(&r)]),
            ],
            conditions: vec![(
                "my-rule",
                "PodsPendingEviction",
                "2 pods need to be evicted in 1 namespace.",
            )],
            steps: vec![Step::Process(vec!["pod-0", "pod-1"])],
            final_conditions: vec![(
                "my-rule",
                "Completed",
                "2 pods evicted since starting the controller.",
            )],
            emitted: vec!["pod-0: Marking for deletion", "pod-1: Marking for deletion"],
            ..Case::default()
        },
    );
}

fn different_rules(order: [usize; 2]) {
    let rules = [
        rule("rule-a").selecting(Some(DRIVER), Some(POOL), Some("instance-0")),
        rule("rule-b").selecting(Some(DRIVER), Some(POOL), Some("instance-1")),
    ];
    let p = pod(NS, "my-pod").with_claim("my-claim");
    let c = claim(NS, "my-claim")
        .with_device(DRIVER, POOL, "instance-1")
        .with_device(DRIVER, POOL, "instance-0")
        .reserved_for(&p);
    run(
        "multiple-claims-different-rules",
        &Case {
            initial: vec![Ev::Pod(p), Ev::Claim(c)],
            events: vec![
                Ev::Rule(rules[order[0]].clone()),
                Ev::Rule(rules[order[1]].clone()),
            ],
            ordered: true,
            pending: vec![("default/my-pod", 0)],
            reasons: vec![(
                "default/my-pod",
                vec![rule_reason(&rules[0]), rule_reason(&rules[1])],
            )],
            conditions: vec![
                ("rule-a", "PodsPendingEviction", PENDING_ONE),
                ("rule-b", "PodsPendingEviction", PENDING_ONE),
            ],
            steps: vec![Step::Process(vec!["my-pod"])],
            final_conditions: vec![
                ("rule-a", "Completed", EVICTED_ONE),
                ("rule-b", "Completed", EVICTED_ONE),
            ],
            emitted: vec!["my-pod: Marking for deletion"],
        },
    );
}

#[test]
fn multiple_claims_different_rules_order_1() {
    different_rules([0, 1]);
}

#[test]
fn multiple_claims_different_rules_order_2() {
    different_rules([1, 0]);
}

#[test]
fn evict_pod_resourceclaim_again() {
    let new_pod = the_pod().with_uid("uid-my-pod-2");
    run(
        "evict-pod-resourceclaim-again",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 0)],
            steps: vec![
                Step::Process(vec!["my-pod"]),
                Step::At(10),
                Step::Apply(Ev::DeletePod(the_pod())),
                Step::Apply(Ev::Pod(new_pod.clone())),
                Step::Apply(Ev::Claim(
                    claim(NS, "my-claim")
                        .with_device(DRIVER, POOL, DEVICE)
                        .reserved_for(&new_pod),
                )),
                Step::Process(vec!["my-pod"]),
            ],
            emitted: vec!["my-pod: Marking for deletion", "my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_after_scheduling() {
    run(
        "evict-pod-after-scheduling",
        &Case {
            initial: vec![Ev::Claim(the_claim()), Ev::Slice(tainted_slice())],
            events: vec![Ev::Pod(the_pod().unscheduled()), Ev::Pod(the_pod())],
            ordered: true,
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_resourceclaim_unrelated_changes() {
    let events = [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(tainted_slice()),
    ];
    let mut h = Harness::new();
    for e in &events {
        h.apply(e);
    }
    assert_eq!(h.schedules, 1);
    // Updates that do not change any view (labels, unrelated status) do nothing at all.
    h.apply(&Ev::Pod(the_pod()));
    h.apply(&Ev::Claim(the_claim()));
    h.apply(&Ev::Slice(tainted_slice().with_device("other-device")));
    assert_eq!(h.schedules, 1, "unchanged eviction is not rescheduled");
    assert_eq!(h.process(), vec!["my-pod"]);
}

#[test]
fn evict_pod_resourceclaimtemplate() {
    let p = pod(NS, "my-pod").with_generated_claim("my-pod-my-claim-xyz");
    let c = claim(NS, "my-pod-my-claim-xyz")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for(&p)
        .owned_by(&p);
    run(
        "evict-pod-resourceclaimtemplate",
        &Case {
            events: vec![Ev::Pod(p), Ev::Claim(c), Ev::Slice(tainted_slice())],
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_later() {
    run(
        "evict-pod-later",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(tolerate_secs(Some(3600)))),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 3600)],
            steps: evicted_at(3600),
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_later_many() {
    let c = the_claim()
        .with_toleration(tolerate_secs(Some(20)))
        .with_toleration(tolerate_secs(Some(60)))
        .with_toleration(toleration("other", "Exists", "", "NoExecute", Some(1)));
    let c = ClaimView {
        allocation: c.allocation.map(|mut a| {
            a[0].tolerations[0].toleration_seconds = Some(30);
            a
        }),
        ..c
    };
    run(
        "evict-pod-later-many",
        &Case {
            events: vec![Ev::Pod(the_pod()), Ev::Claim(c), Ev::Slice(tainted_slice())],
            pending: vec![("default/my-pod", 30)],
            steps: evicted_at(30),
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_toleration_mismatch() {
    run(
        "evict-pod-toleration-mismatch",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(toleration(
                    "other",
                    "Exists",
                    "",
                    "NoExecute",
                    None,
                ))),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_pod_toleration_forever() {
    run(
        "no-evict-pod-toleration-forever",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(tolerate_secs(None))),
                Ev::Slice(tainted_slice()),
            ],
            steps: vec![Step::At(1_000_000), Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_pod_toleration_forever_many() {
    let c = the_claim()
        .with_toleration(tolerate_secs(Some(10)))
        .with_toleration(toleration(KEY, "Equal", VALUE, "", None))
        .with_toleration(tolerate_secs(Some(20)));
    run(
        "no-evict-pod-toleration-forever-many",
        &Case {
            events: vec![Ev::Pod(the_pod()), Ev::Claim(c), Ev::Slice(tainted_slice())],
            steps: vec![Step::At(1_000_000), Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_partial_toleration() {
    let s = tainted_slice().with_taint(taint("other", "", "NoExecute", Some(t(5))));
    run(
        "evict-pod-partial-toleration",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(tolerate_secs(None))),
                Ev::Slice(s),
            ],
            pending: vec![("default/my-pod", 5)],
            reasons: vec![("default/my-pod", vec![slice_reason(DEVICE, 1)])],
            steps: evicted_at(5),
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn evict_pod_many_taints() {
    let c = tolerating_claim(toleration("", "Exists", "", "NoExecute", Some(30)));
    run(
        "evict-pod-many-taints",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(c),
                Ev::Slice(tainted_slice()),
                Ev::Rule(the_rule()),
            ],
            pending: vec![("default/my-pod", 30)],
            reasons: vec![(
                "default/my-pod",
                vec![rule_reason(&the_rule()), slice_reason(DEVICE, 0)],
            )],
            conditions: vec![("my-rule", "PodsPendingEviction", PENDING_ONE)],
            steps: evicted_at(30),
            final_conditions: vec![("my-rule", "Completed", EVICTED_ONE)],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_pod_not_scheduled() {
    run(
        "no-evict-pod-not-scheduled",
        &Case {
            events: vec![
                Ev::Pod(the_pod().unscheduled()),
                Ev::Claim(the_claim()),
                Ev::Slice(tainted_slice()),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_no_taint() {
    run(
        "no-evict-no-taint",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(untainted_slice()),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_no_taint_update() {
    run(
        "no-evict-no-taint-update",
        &Case {
            initial: vec![Ev::Pod(the_pod()), Ev::Claim(the_claim())],
            events: vec![
                Ev::Slice(untainted_slice()),
                Ev::Slice(untainted_slice().with_device("other")),
            ],
            ordered: true,
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

fn api_pod(status: &serde_json::Value) -> crate::k8s::WatchedPod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": NS, "name": "my-pod", "uid": "uid-my-pod"},
        "spec": {"nodeName": "node", "containers": [], "resourceClaims": [{"name": "my-claim", "resourceClaimTemplateName": "tmpl"}]},
        "status": status
    }))
    .unwrap()
}

fn no_evict_template_pod(status: &serde_json::Value) {
    let view = PodView::from_api(&api_pod(status)).unwrap().unwrap();
    assert!(view.claims.is_empty());
    let p = pod(NS, "my-pod");
    let c = claim(NS, "my-pod-my-claim")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for(&p)
        .owned_by(&p);
    run(
        "no-evict-template",
        &Case {
            events: vec![Ev::Pod(view), Ev::Claim(c), Ev::Slice(tainted_slice())],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_pod_resourceclaimtemplate_no_status() {
    no_evict_template_pod(&serde_json::json!({}));
}

#[test]
fn no_evict_pod_resourceclaimtemplate_no_claim() {
    no_evict_template_pod(&serde_json::json!({"resourceClaimStatuses": [{"name": "my-claim"}]}));
}

#[test]
fn no_evict_other_device() {
    run(
        "no-evict-other-device",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(untainted_slice().with_device("other").with_taint(taint(
                    KEY,
                    VALUE,
                    "NoExecute",
                    Some(t(0)),
                ))),
                Ev::Rule(rule("r").selecting(Some(DRIVER), Some(POOL), Some("other"))),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_wrong_pod() {
    let other = pod(NS, "other-pod");
    run(
        "no-evict-wrong-pod",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(
                    claim(NS, "my-claim")
                        .with_device(DRIVER, POOL, DEVICE)
                        .reserved_for(&other),
                ),
                Ev::Slice(tainted_slice()),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn evict_wrong_pod_replaced() {
    let other = pod(NS, "other-pod");
    run(
        "evict-wrong-pod-replaced",
        &Case {
            initial: vec![Ev::Pod(the_pod()), Ev::Slice(tainted_slice())],
            events: vec![
                Ev::Claim(
                    claim(NS, "my-claim")
                        .with_device(DRIVER, POOL, DEVICE)
                        .reserved_for(&other),
                ),
                Ev::Claim(the_claim()),
            ],
            ordered: true,
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

/// A 60 s countdown interrupted at 30 s by `ev`.
fn cancelled_by(name: &str, ev: Ev, emitted: Vec<&'static str>) {
    run(
        name,
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 60)],
            steps: vec![
                Step::At(30),
                Step::Apply(ev),
                Step::At(60),
                Step::Process(vec![]),
                Step::At(1000),
                Step::Process(vec![]),
            ],
            emitted,
            ..Case::default()
        },
    );
}

#[test]
fn cancel_eviction_remove_taint() {
    cancelled_by(
        "cancel-eviction-remove-taint",
        Ev::Slice(untainted_slice()),
        vec!["my-pod: Cancelling deletion"],
    );
}

#[test]
fn cancel_eviction_reduce_taint() {
    cancelled_by(
        "cancel-eviction-reduce-taint",
        Ev::Slice(slice_with_effect("NoSchedule")),
        vec!["my-pod: Cancelling deletion"],
    );
}

#[test]
fn ignore_none_effect() {
    run(
        "ignore-none-effect",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(slice_with_effect("None")),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn ignore_unknown_effect() {
    run(
        "ignore-unknown-effect",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Slice(slice_with_effect("SomeFutureEffect")),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn eviction_change_taint() {
    let moved = untainted_slice().with_taint(taint(KEY, VALUE, "NoExecute", Some(t(20))));
    run(
        "eviction-change-taint",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
                Ev::Slice(tainted_slice()),
            ],
            pending: vec![("default/my-pod", 60)],
            steps: vec![
                Step::At(30),
                Step::Apply(Ev::Slice(moved)),
                Step::At(60),
                Step::Process(vec![]),
                Step::At(79),
                Step::Process(vec![]),
                Step::At(80),
                Step::Process(vec!["my-pod"]),
            ],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn cancel_eviction_remove_taint_in_new_slice() {
    cancelled_by(
        "cancel-eviction-remove-taint-in-new-slice",
        Ev::Slice(
            slice("my-slice-2", DRIVER, POOL)
                .with_device(DEVICE)
                .with_generation(2),
        ),
        vec!["my-pod: Cancelling deletion"],
    );
}

#[test]
fn cancel_eviction_remove_slice() {
    cancelled_by(
        "cancel-eviction-remove-slice",
        Ev::DeleteSlice("my-slice"),
        vec!["my-pod: Cancelling deletion"],
    );
}

#[test]
fn cancel_eviction_pod_deletion() {
    cancelled_by("cancel-eviction-pod-deletion", Ev::DeletePod(the_pod()), vec![]);
}

#[test]
fn no_evict_wrong_resourceclaim() {
    run(
        "no-evict-wrong-resourceclaim",
        &Case {
            events: vec![
                Ev::Pod(pod(NS, "my-pod").with_claim("other-claim")),
                Ev::Claim(the_claim()),
                Ev::Slice(tainted_slice()),
            ],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
}

#[test]
fn evict_wrong_resourceclaim_replaced() {
    let p = pod(NS, "my-pod").with_generated_claim("my-pod-claim");
    let other = pod(NS, "old-pod");
    let wrong = claim(NS, "my-pod-claim")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for(&p)
        .owned_by(&other);
    let right = wrong.clone().with_uid("uid-new-claim").owned_by(&p);
    run(
        "evict-wrong-resourceclaim-replaced",
        &Case {
            initial: vec![Ev::Pod(p), Ev::Slice(tainted_slice())],
            events: vec![Ev::Claim(wrong), Ev::Claim(right)],
            ordered: true,
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn no_evict_resourceclaim_deallocated() {
    cancelled_by(
        "no-evict-resourceclaim-deallocated",
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60))).deallocated()),
        vec!["my-pod: Cancelling deletion"],
    );
}

#[test]
fn no_evict_resourceclaim_deleted() {
    cancelled_by(
        "no-evict-resourceclaim-deleted",
        Ev::DeleteClaim(tolerating_claim(tolerate_secs(Some(60)))),
        vec!["my-pod: Cancelling deletion"],
    );
}

// === Our deliberate differences (SPEC section 4) and extra scenarios ===

#[test]
fn d1_terminal_pod_is_never_evicted_nor_counted() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod().finished()),
        Ev::Claim(the_claim()),
        Ev::Rule(the_rule()),
    ] {
        h.apply(&ev);
    }
    assert!(h.pending().is_empty());
    assert_eq!(h.condition("my-rule"), ("NotStarted".into(), String::new()));
    // A pod that finishes while counting down is cancelled (it still exists: an Event says so).
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.pending().len(), 1);
    h.apply(&Ev::Pod(the_pod().finished()));
    assert!(h.pending().is_empty());
    assert_eq!(h.emitted, vec!["my-pod: Cancelling deletion"]);
}

#[test]
fn d2_missing_time_added_counts_from_first_sight() {
    let mut h = Harness::new();
    h.now = t(100);
    let untimed = untainted_slice().with_taint(taint(KEY, VALUE, "NoExecute", None));
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
        Ev::Slice(untimed.clone()),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.pending(), BTreeMap::from([("default/my-pod".to_owned(), 160)]));
    // Seen again later (a resync, a re-list): the first-sight time stays.
    h.now = t(150);
    h.apply(&Ev::Slice(untimed.clone()));
    h.state.reset_slices(vec![untimed], t(150));
    assert_eq!(h.pending(), BTreeMap::from([("default/my-pod".to_owned(), 160)]));
    // Rules too.
    let mut h = Harness::new();
    h.now = t(500);
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Rule(the_rule().with_taint(taint("k", "v", "NoExecute", None))),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.pending(), BTreeMap::from([("default/my-pod".to_owned(), 500)]));
}

#[test]
fn d3_relist_removes_objects_missed_while_disconnected() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.pending().len(), 1);
    // The slice's delete was missed; the re-list no longer has it.
    h.state.reset_slices(vec![], t(10));
    h.collect();
    assert!(h.pending().is_empty(), "stale slice taint dropped");
    assert_eq!(h.emitted, vec!["my-pod: Cancelling deletion"]);
    // Same for rules, claims and pods.
    h.state.reset_rules(vec![the_rule()], t(10));
    assert_eq!(h.pending().len(), 1);
    h.state.reset_rules(vec![], t(10));
    assert!(h.pending().is_empty());
    h.state.reset_rules(vec![the_rule()], t(10));
    h.state.reset_claims(vec![]);
    assert!(h.pending().is_empty());
    assert_eq!(h.state.sizes().devices, 0);
    h.state.reset_claims(vec![the_claim()]);
    assert_eq!(h.pending().len(), 1);
    h.state.reset_pods(vec![]);
    assert!(h.pending().is_empty());
    assert_eq!(h.state.sizes().pods, 0);
    let p = the_pod();
    h.state
        .reset_pods(vec![(p.object_name(), p.uid.clone(), Some(p))]);
    assert_eq!(h.pending().len(), 1);
}

#[test]
fn d4_only_our_deletions_count() {
    let mut h = Harness::new();
    for ev in [Ev::Pod(the_pod()), Ev::Claim(the_claim()), Ev::Rule(the_rule())] {
        h.apply(&ev);
    }
    let pod = the_pod().pod_ref();
    let Due::Now(eviction) = h.state.due(&pod, t(0)) else {
        panic!("due")
    };
    h.state.finish(&pod, &eviction, Finished::NotNeeded);
    assert_eq!(h.state.evicted_by_rule("uid-my-rule"), 0);
    assert_eq!(h.condition("my-rule"), ("NotStarted".into(), String::new()));
}

#[test]
fn d6_extended_resource_claims_are_evicted() {
    let api: crate::k8s::WatchedPod = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": NS, "name": "my-pod", "uid": "uid-my-pod"},
        "spec": {"nodeName": "node", "containers": []},
        "status": {"extendedResourceClaimStatus": {"resourceClaimName": "my-pod-extended", "requestMappings": []}}
    }))
    .unwrap();
    let view = PodView::from_api(&api).unwrap().unwrap();
    let c = claim(NS, "my-pod-extended")
        .with_device(DRIVER, POOL, DEVICE)
        .reserved_for(&view)
        .owned_by(&view);
    run(
        "d6-extended-resource",
        &Case {
            events: vec![Ev::Pod(view), Ev::Claim(c), Ev::Slice(tainted_slice())],
            pending: vec![("default/my-pod", 0)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

#[test]
fn d10_empty_selector_warns_with_device_count() {
    let mut h = Harness::new();
    h.apply(&Ev::Slice(untainted_slice().with_device("second")));
    h.state.apply_rule(rule("all").selecting(None, None, None), t(0));
    let changes = h.state.take_changes();
    assert!(
        changes.contains(&Change::EmptySelector {
            rule: RuleRef::new("all", "uid-all"),
            devices: 2
        }),
        "{changes:?}"
    );
    // A nil selector selects nothing and is no reason to warn.
    h.state.apply_rule(rule("none"), t(0));
    assert!(
        !h.state
            .take_changes()
            .iter()
            .any(|c| matches!(c, Change::EmptySelector { .. }))
    );
}

/// D14: a toleration with an empty effect matches every effect, `NoExecute` included, as the
/// API documents (kube-controller-manager 1.37.2 only honours tolerations whose effect is exactly
/// `NoExecute` and evicts such pods at once). "Tolerate everything" keeps the pod for ever.
#[test]
fn d14_empty_effect_toleration_forever() {
    let tolerate_all = toleration("", "Exists", "", "", None);
    for taint_event in [Ev::Slice(tainted_slice()), Ev::Rule(the_rule())] {
        run(
            "d14-empty-effect-forever",
            &Case {
                events: vec![
                    Ev::Pod(the_pod()),
                    Ev::Claim(tolerating_claim(tolerate_all.clone())),
                    taint_event,
                ],
                steps: vec![Step::At(1_000_000), Step::Process(vec![])],
                ..Case::default()
            },
        );
    }
}

/// D14 with `tolerationSeconds`: evicted after them, not at once.
#[test]
fn d14_empty_effect_toleration_seconds() {
    let tolerate_all_for_9s = toleration("", "Exists", "", "", Some(9));
    for taint_event in [Ev::Slice(tainted_slice()), Ev::Rule(the_rule())] {
        run(
            "d14-empty-effect-seconds",
            &Case {
                events: vec![
                    Ev::Pod(the_pod()),
                    Ev::Claim(tolerating_claim(tolerate_all_for_9s.clone())),
                    taint_event,
                ],
                pending: vec![("default/my-pod", 9)],
                steps: evicted_at(9),
                emitted: vec!["my-pod: Marking for deletion"],
                ..Case::default()
            },
        );
    }
}

/// A NoExecute rule without a selector selects no device: nothing is evicted and no warning is
/// given; the same rule with an empty selector `{}` evicts the pod.
#[test]
fn nil_selector_evicts_nothing_empty_selector_everything() {
    run(
        "nil-selector",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Rule(rule("my-rule")),
            ],
            conditions: vec![("my-rule", "NotStarted", "")],
            steps: vec![Step::Process(vec![])],
            ..Case::default()
        },
    );
    run(
        "empty-selector",
        &Case {
            events: vec![
                Ev::Pod(the_pod()),
                Ev::Claim(the_claim()),
                Ev::Rule(rule("my-rule").selecting(None, None, None)),
            ],
            pending: vec![("default/my-pod", 0)],
            conditions: vec![("my-rule", "PodsPendingEviction", PENDING_ONE)],
            steps: vec![Step::Process(vec!["my-pod"])],
            emitted: vec!["my-pod: Marking for deletion"],
            ..Case::default()
        },
    );
}

/// A selector with a field this controller does not know fails closed: the rule selects nothing
/// (no eviction, although its known fields match the pod's device) and a warning says why.
#[test]
fn rule_with_unknown_selector_fields_selects_nothing() {
    let json = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1alpha3",
        "kind": "DeviceTaintRule",
        "metadata": {"name": "future", "uid": "uid-future", "generation": 1},
        "spec": {
            "deviceSelector": {"driver": DRIVER, "deviceClassName": "gpu", "selectors": []},
            "taint": {"key": "k", "value": "v", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}
        }
    });
    let api: crate::k8s::DeviceTaintRule = serde_json::from_value(json).expect("rule");
    let view = RuleView::from_api(&api).expect("valid rule");
    assert_eq!(view.selector, None);
    assert_eq!(view.unknown_selector_fields, ["deviceClassName", "selectors"]);
    assert!(!view.selects(&DeviceId::new(DRIVER, POOL, DEVICE)));

    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(untainted_slice()),
    ] {
        h.apply(&ev);
    }
    h.state.apply_rule(view, t(0));
    let changes = h.state.take_changes();
    assert!(
        changes.contains(&Change::UnknownSelector {
            rule: RuleRef::new("future", "uid-future"),
            fields: vec!["deviceClassName".into(), "selectors".into()],
        }),
        "{changes:?}"
    );
    assert!(h.pending().is_empty(), "{:?}", h.pending());
    assert!(!changes.iter().any(|c| matches!(c, Change::EmptySelector { .. })));
}

#[test]
fn x1_recreated_pod_is_not_evicted_by_old_deadline() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    // Same name, new UID, in one update (delete + add collapsed); the claim still names the old UID.
    h.apply(&Ev::Pod(the_pod().with_uid("uid-new")));
    assert!(h.pending().is_empty());
    assert!(h.emitted.is_empty(), "the old pod is gone: no cancel Event");
    h.now = t(60);
    assert!(h.process().is_empty());
    // The old key firing late finds nothing.
    assert_eq!(h.state.due(&the_pod().pod_ref(), t(60)), Due::Gone);
}

#[test]
fn finished_pod_is_not_scheduled_again_until_gone() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.process(), vec!["my-pod"]);
    // The watch still shows the pod (our DELETE is not visible yet); an update must not re-add it.
    h.apply(&Ev::Pod(the_pod().terminating()));
    h.apply(&Ev::Pod(the_pod()));
    assert!(h.pending().is_empty());
    assert_eq!(h.schedules, 1);
    h.apply(&Ev::DeletePod(the_pod()));
    assert!(h.state.finished.is_empty(), "bookkeeping released with the pod");
}

/// A worker that finishes after the pod's delete event (our DELETE raced the watch) leaves no
/// bookkeeping behind: the set of finished UIDs stays bounded by the pods that exist.
#[test]
fn finish_after_the_delete_event_leaves_nothing_behind() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    let pod = the_pod().pod_ref();
    let Due::Now(eviction) = h.state.due(&pod, t(0)) else {
        panic!("due")
    };
    h.apply(&Ev::DeletePod(the_pod()));
    h.state.finish(&pod, &eviction, Finished::Evicted);
    assert!(h.state.finished.is_empty(), "a deleted pod's UID was kept");
    assert!(h.state.pending.is_empty());
}

#[test]
fn due_reports_gone_later_and_now() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(tolerate_secs(Some(60)))),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    let p = the_pod().pod_ref();
    assert_eq!(h.state.due(&p, t(10)), Due::Later(t(60)));
    assert!(matches!(h.state.due(&p, t(60)), Due::Now(_)));
    assert_eq!(
        h.state.due(&the_pod().with_uid("other").pod_ref(), t(60)),
        Due::Gone
    );
}

#[test]
fn rule_status_is_rate_limited_and_immediate_on_change() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(tolerating_claim(toleration("k", "Exists", "", "", Some(60)))),
        Ev::Rule(the_rule()),
    ] {
        h.apply(&ev);
    }
    let r = the_rule().rule_ref();
    let RuleStatusWork::Apply {
        generation,
        condition,
    } = rule_status::rule_status(&h.state, &r, t(0))
    else {
        panic!("apply")
    };
    assert_eq!(condition.reason, "PodsPendingEviction");
    rule_status::status_written(&mut h.state, &r, generation, &condition, t(0));
    assert_eq!(
        rule_status::rule_status(&h.state, &r, t(4)),
        RuleStatusWork::Later(Duration::from_secs(6))
    );
    assert_eq!(
        rule_status::rule_status(&h.state, &r, t(10)),
        RuleStatusWork::UpToDate
    );
    h.now = t(60);
    assert_eq!(h.process(), vec!["my-pod"]);
    let RuleStatusWork::Apply { condition, .. } = rule_status::rule_status(&h.state, &r, t(60)) else {
        panic!("apply")
    };
    assert_eq!(
        (condition.reason, condition.message.as_str()),
        ("Completed", EVICTED_ONE)
    );
    // A spec change (new generation) is reported at once, whatever the rate limit says.
    rule_status::status_written(&mut h.state, &r, generation, &condition, t(60));
    h.apply(&Ev::Rule(the_rule().with_taint(taint(
        "k",
        "v",
        "None",
        Some(t(0)),
    ))));
    assert!(matches!(
        rule_status::rule_status(&h.state, &r, t(61)),
        RuleStatusWork::Apply { .. }
    ));
    h.apply(&Ev::DeleteRule(the_rule()));
    assert_eq!(
        rule_status::rule_status(&h.state, &r, t(61)),
        RuleStatusWork::Gone
    );
}

#[test]
fn rule_status_requests_follow_pod_changes() {
    let mut h = Harness::new();
    h.state.apply_rule(the_rule(), t(0));
    let r = the_rule().rule_ref();
    assert_eq!(
        h.state.take_changes(),
        vec![Change::RuleStatus {
            rule: r.clone(),
            after: Duration::ZERO
        }]
    );
    h.state.apply_pod(&the_pod().object_name(), Some(the_pod()));
    h.state.apply_claim(the_claim());
    let changes = h.state.take_changes();
    assert!(
        changes.contains(&Change::RuleStatus {
            rule: r,
            after: RULE_STATUS_PERIOD
        }),
        "{changes:?}"
    );
}

#[test]
fn rule_replaced_under_same_name_is_delete_and_add() {
    let mut h = Harness::new();
    for ev in [Ev::Pod(the_pod()), Ev::Claim(the_claim()), Ev::Rule(the_rule())] {
        h.apply(&ev);
    }
    h.process();
    assert_eq!(h.state.evicted_by_rule("uid-my-rule"), 1);
    h.apply(&Ev::Rule(the_rule().with_uid("uid-2")));
    assert_eq!(h.state.evicted_by_rule("uid-my-rule"), 0, "old stats dropped");
    assert_eq!(h.condition("my-rule"), ("NotStarted".into(), String::new()));
}

#[test]
fn x7_malformed_input_is_skipped() {
    // Unknown operator and effect, negative and huge seconds, duplicate taints, unknown pool.
    let mut h = Harness::new();
    let weird = the_claim()
        .with_toleration(toleration(KEY, "GreaterThan", "", "", None))
        .with_toleration(toleration("dup", "Exists", "", "NoExecute", Some(-5)))
        .with_toleration(toleration("huge", "Exists", "", "NoExecute", Some(i64::MAX)));
    let s = untainted_slice()
        .with_taint(taint("dup", "", "NoExecute", Some(t(10))))
        .with_taint(taint("dup", "", "NoExecute", Some(t(10))))
        .with_taint(taint("huge", "", "NoExecute", Some(t(10))))
        .with_taint(taint(KEY, VALUE, "Mystery", Some(t(0))));
    for ev in [Ev::Pod(the_pod()), Ev::Claim(weird), Ev::Slice(s)] {
        h.apply(&ev);
    }
    assert_eq!(h.pending(), BTreeMap::from([("default/my-pod".to_owned(), 10)]));
    let p = the_pod().pod_ref();
    assert_eq!(
        h.state.pending(&p).map(|e| e.reasons.clone()),
        Some(vec![
            slice_reason(DEVICE, 0),
            slice_reason(DEVICE, 1),
            slice_reason(DEVICE, 2)
        ])
    );
    // A claim on a pool nobody publishes: only rules can taint it.
    let mut h = Harness::new();
    let ghost = claim(NS, "my-claim")
        .with_device(DRIVER, "no-such-pool", DEVICE)
        .reserved_for(&the_pod());
    h.apply(&Ev::Pod(the_pod()));
    h.apply(&Ev::Claim(ghost));
    assert!(h.pending().is_empty());
    h.apply(&Ev::Rule(rule("r").selecting(Some(DRIVER), None, None)));
    assert_eq!(h.pending().len(), 1);
    // Stale deletes (a UID we do not have) change nothing.
    h.state.delete_pod(&the_pod().object_name(), "other-uid");
    h.state
        .delete_claim(&ObjectName::new(NS, "my-claim"), "other-uid");
    h.state.delete_rule("r", "other-uid");
    h.state.delete_slice("never-seen");
    assert_eq!(h.pending().len(), 1);
}

#[test]
fn selector_narrowing_finds_every_matching_device() {
    let mut h = Harness::new();
    let devices = [
        ("d1", "p1", "a"),
        ("d1", "p1", "b"),
        ("d1", "p2", "a"),
        ("d2", "p1", "a"),
        ("d10", "p1", "a"),
    ];
    for (i, (driver, pool, device)) in devices.iter().enumerate() {
        h.state
            .apply_claim(claim(NS, &format!("c{i}")).with_device(driver, pool, device));
    }
    let count = |driver: Option<&str>, pool: Option<&str>, device: Option<&str>| {
        let s = Selector {
            driver: driver.map(Into::into),
            pool: pool.map(Into::into),
            device: device.map(Into::into),
        };
        let fast = h.state.allocated_devices_matching(&s);
        let slow: Vec<DeviceId> = h
            .state
            .claims_by_device
            .keys()
            .filter(|d| s.matches(d))
            .cloned()
            .collect();
        assert_eq!(fast, slow, "{s:?}");
        fast.len()
    };
    assert_eq!(count(Some("d1"), None, None), 3);
    assert_eq!(count(Some("d1"), Some("p1"), None), 2);
    assert_eq!(count(Some("d1"), Some("p1"), Some("a")), 1);
    assert_eq!(count(Some("d1"), None, Some("a")), 2);
    assert_eq!(count(None, Some("p1"), Some("a")), 3);
    assert_eq!(count(None, None, None), 5);
    assert_eq!(count(Some("d"), None, None), 0);
}

/// Found by the property test: a pod without claims taking over a name must end the old
/// pod's countdown, whatever the old pod's UID.
#[test]
fn claimless_pod_replacing_a_counting_down_pod_cancels_it() {
    let mut h = Harness::new();
    for ev in [
        Ev::Pod(the_pod()),
        Ev::Claim(the_claim()),
        Ev::Slice(tainted_slice()),
    ] {
        h.apply(&ev);
    }
    assert_eq!(h.pending().len(), 1);
    h.state.apply_pod(&the_pod().object_name(), None);
    assert!(h.pending().is_empty());
    assert_eq!(h.state.sizes().pods, 0);
}

/// SPEC D7: a pod whose eviction a PodDisruptionBudget refused is named in the rule status
/// until it is gone; the message says nothing about budgets otherwise.
#[test]
fn rule_status_names_a_disruption_budget_wait() {
    let mut h = Harness::new();
    for ev in [Ev::Pod(the_pod()), Ev::Claim(the_claim()), Ev::Rule(the_rule())] {
        h.apply(&ev);
    }
    let pending = "1 pod needs to be evicted in 1 namespace.";
    assert_eq!(h.condition("my-rule").1, pending);
    let pod = the_pod().pod_ref();
    h.state.eviction_blocked(&pod);
    assert!(
        h.state
            .take_changes()
            .iter()
            .any(|c| matches!(c, Change::RuleStatus { after, .. } if after.is_zero())),
        "the rule status is refreshed at once"
    );
    assert_eq!(
        h.condition("my-rule").1,
        format!("{pending} 1 pod waits for a PodDisruptionBudget.")
    );
    // A pod that is not pending is never counted.
    h.state.eviction_blocked(&PodRef::new("other", "pod", "uid"));
    assert_eq!(h.state.blocked.len(), 1);
    let Due::Now(eviction) = h.state.due(&pod, t(0)) else {
        panic!("due")
    };
    h.state.finish(&pod, &eviction, Finished::Evicted);
    assert!(h.state.blocked.is_empty());
    assert_eq!(h.condition("my-rule"), ("Completed".into(), EVICTED_ONE.into()));
}

/// `--protected-priority` (SPEC D12): a due pod at or above it is `Protected`, not `Now`; it is
/// withheld once per eviction (a changed eviction withholds, and tells, again); a pod below it,
/// or any pod without the flag, is evicted; a gone pod is no longer protected.
#[test]
fn protected_pod_is_withheld_once_per_eviction() {
    let high = the_pod().with_priority(7);
    let setup = |threshold: Option<i32>, pod: &PodView| {
        let mut state = State::with_protected_priority(threshold);
        state.apply_slice(tainted_slice(), t(0));
        state.apply_claim(the_claim());
        state.apply_pod(&pod.object_name(), Some(pod.clone()));
        state
    };
    let pod_ref = high.pod_ref();
    let mut state = setup(Some(7), &high);
    assert!(
        state.take_changes().contains(&Change::Schedule {
            pod: pod_ref.clone(),
            at: t(0),
            priority: 7
        }),
        "the schedule carries the priority"
    );
    assert!(matches!(
        state.due(&pod_ref, t(1)),
        Due::Protected {
            priority: 7,
            threshold: 7,
            ..
        }
    ));
    assert!(!state.is_protected(&pod_ref));
    assert!(state.eviction_protected(&pod_ref), "told the first time");
    assert!(!state.eviction_protected(&pod_ref), "not again");
    assert!(state.is_protected(&pod_ref));
    // Another taint on the device: a new eviction, withheld (and told) anew.
    state.apply_rule(
        the_rule().with_taint(taint("other", "", "NoExecute", Some(t(0)))),
        t(0),
    );
    assert!(!state.is_protected(&pod_ref), "the situation changed");
    assert!(state.eviction_protected(&pod_ref));
    state.delete_pod(&high.object_name(), &high.uid);
    assert!(!state.is_protected(&pod_ref));
    assert!(!state.eviction_protected(&pod_ref), "nothing pending");

    let below = the_pod().with_priority(6);
    assert!(matches!(
        setup(Some(7), &below).due(&below.pod_ref(), t(1)),
        Due::Now(_)
    ));
    assert!(matches!(setup(None, &high).due(&pod_ref, t(1)), Due::Now(_)));
}

/// Whether the eviction may skip the `DisruptionTarget` patch is read from the stored pod of
/// that UID only: a pod that replaced it under the same name answers for nothing.
#[test]
fn disruption_target_is_read_from_the_pod_of_that_uid() {
    let mut state = State::new();
    let marked = PodView {
        disruption_target: true,
        ..the_pod()
    };
    state.apply_pod(&marked.object_name(), Some(marked.clone()));
    assert!(state.disruption_target(&marked.pod_ref()));
    let replaced = PodRef::new(NS, &marked.name, "uid-of-a-new-pod");
    assert!(!state.disruption_target(&replaced));
    state.apply_pod(&marked.object_name(), Some(the_pod()));
    assert!(!state.disruption_target(&the_pod().pod_ref()));
}
