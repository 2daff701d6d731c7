//! The in-memory state: indexes of compact views, cached claim evictions and the pending
//! evictions (the source of truth for what the workers do).
//!
//! Every watch event becomes one synchronous call (`apply_*`, `delete_*`, `reset_*`) that never
//! awaits anything. Its effect on the outside world is a list of [`Change`]s, collected with
//! [`State::take_changes`]: the controller turns them into queue operations and Events.
//!
//! Work is proportional to what an event affects (SPEC D5): a slice event re-evaluates only
//! claims on devices whose `NoExecute` taints changed; a rule event only claims on devices that
//! the old or new selector matches; a claim event only the pods in its old and new `reservedFor`
//! (directly, or as members of a PodGroup named there).

mod pools;
mod rules;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

pub use pools::Pools;
pub use rules::Rules;
use tracing::{debug, warn};

use crate::{
    eviction::{Eviction, TaintSource, claim_eviction, pod_eviction},
    guard::{self, GuardConfig, Scope, Trip, Verdict},
    rule_status::RULE_STATUS_PERIOD,
    view::{
        AllocatedDevice, ClaimView, DeviceId, Effect, ObjectName, PodRef, PodView, RuleCondition, RuleRef,
        RuleView, Selector, SliceView, Time,
    },
};

/// What the controller must do after an index update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A pod's pending eviction was added or changed: (re)schedule it at `at`.
    Schedule {
        /// The pod.
        pod: PodRef,
        /// When.
        at: Time,
        /// The pod's `spec.priority`: when evictions wait, the lowest goes first (SPEC D12).
        priority: i32,
    },
    /// A pending eviction was dropped before it happened.
    Cancel {
        /// The pod.
        pod: PodRef,
        /// The pod still exists: tell it with a `Cancelling deletion` Event.
        notify: bool,
    },
    /// Recompute the rule's status after `after` (zero: now).
    RuleStatus {
        /// The rule.
        rule: RuleRef,
        /// Delay.
        after: Duration,
    },
    /// A rule's selector has fields this controller does not understand: it selects nothing.
    UnknownSelector {
        /// The rule.
        rule: RuleRef,
        /// The fields.
        fields: Vec<String>,
    },
    /// A NoExecute or None rule with an empty selector `{}` selects every device (SPEC D10).
    EmptySelector {
        /// The rule.
        rule: RuleRef,
        /// Published devices it matches now.
        devices: usize,
    },
}

/// What a worker should do with a pod key that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing pending any more (cancelled, or already handled).
    Gone,
    /// Pending, but not yet: come back at this time.
    Later(Time),
    /// Evict now, for these reasons.
    Now(Eviction),
    /// Due, but the pod's priority is at or above `--protected-priority`: not evicted
    /// automatically (SPEC D12).
    Protected {
        /// Why it would have been evicted.
        eviction: Eviction,
        /// The pod's priority.
        priority: i32,
        /// The `--protected-priority` it reaches.
        threshold: i32,
    },
}

/// How a worker's eviction attempt ended (errors are retried and never reach the state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// This controller deleted (or evicted) the pod: counted.
    Evicted,
    /// Dry run: the pod would have been evicted.
    DryRun,
    /// Not needed: the pod was gone, replaced or already terminating. Not counted (SPEC D4).
    NotNeeded,
}

/// A claim and its cached eviction.
#[derive(Clone, Debug)]
struct ClaimEntry {
    view: ClaimView,
    /// Computed from the allocation and the current taints; `None` for unallocated claims.
    eviction: Option<Eviction>,
}

/// Index sizes, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Pods that use claims.
    pub pods: usize,
    /// Claims.
    pub claims: usize,
    /// Allocated devices.
    pub devices: usize,
    /// Slices.
    pub slices: usize,
    /// Rules.
    pub rules: usize,
    /// Pending evictions.
    pub pending: usize,
}

/// The controller's in-memory state. See the module documentation.
#[derive(Debug, Default)]
pub struct State {
    /// Pod `namespace/name` → view, for pods that use at least one claim. Pod events.
    pods: HashMap<ObjectName, PodView>,
    /// PodGroup `namespace/name` → its member pods among `pods` (upstream's `podGroupPerPod`
    /// index), to find the pods of a claim reserved for a PodGroup. Pod events.
    pods_by_group: HashMap<ObjectName, BTreeSet<ObjectName>>,
    /// Claim `namespace/name` → view and cached eviction. Claim events; the eviction also
    /// changes on slice and rule events.
    claims: HashMap<ObjectName, ClaimEntry>,
    /// Allocated device → claims whose allocation names it. Claim events.
    claims_by_device: BTreeMap<DeviceId, BTreeSet<ObjectName>>,
    /// Slices by pool. Slice events.
    pools: Pools,
    /// Rules. Rule events.
    rules: Rules,
    /// Pod → pending eviction: the source of truth for the workers.
    pending: HashMap<PodRef, Eviction>,
    /// UIDs of pods whose eviction finished; removed when the pod watch reports the pod gone.
    /// Prevents a second eviction while the watch lags behind our own deletion.
    finished: HashSet<String>,
    /// Pending pods whose last eviction attempt a PodDisruptionBudget refused (evict mode), for
    /// the rule status. Set by the worker, cleared when the pod is no longer pending.
    blocked: HashSet<PodRef>,
    /// Pods at or above this `spec.priority` are not evicted automatically (`--protected-priority`,
    /// SPEC D12). Set once at start.
    protected_priority: Option<i32>,
    /// Pending pods whose due eviction `protected_priority` withheld, for the rule status and so
    /// that each is told once. Set by the worker; cleared when the pod's eviction changes or ends.
    protected: HashSet<PodRef>,
    /// Rule UID → pods this controller evicted because of it since start. Dropped with the rule.
    evicted_per_rule: HashMap<String, u64>,
    /// Changes not yet taken by the controller.
    changes: Vec<Change>,
    /// Rule status requests not yet taken, with the shortest delay asked for.
    rule_requests: BTreeMap<RuleRef, Duration>,
    /// The blast-radius guard's limits and flag acceptances (SPEC D11). Set once at start.
    guard: GuardConfig,
    /// Bumped when a pending eviction is added, changed or cancelled or a rule's acceptance
    /// changes (not when a worker finishes one, which only shrinks blasts): a cached verdict of an
    /// older version may be wrong.
    guard_version: u64,
    /// The last verdict of [`State::guard_verdict_cached`], with the version and time it was
    /// computed at.
    guard_cache: Option<(u64, Time, Verdict)>,
    /// Scopes the workers found tripped at their last guard check, to tell a trip and its end
    /// once each (Event, log). Memory only: a new leader tells the trips it finds again.
    guard_told: BTreeSet<Scope>,
}

/// What a worker's guard check found (SPEC D11).
#[derive(Clone, Debug, PartialEq)]
pub struct GuardCheck {
    /// The tripped scope that holds the eviction, if any.
    pub hold: Option<(Scope, Trip)>,
    /// Scopes tripped since the last check.
    pub tripped: Vec<(Scope, Trip)>,
    /// Scopes no longer tripped since the last check.
    pub cleared: Vec<Scope>,
    /// Evictions due within the window that the guard holds.
    pub held: usize,
    /// Rules whose pending pods a scope tripped since the last check holds, each with that scope
    /// (the rule's own first), its trip and the rule's own blast: whom to warn with an Event.
    pub rules_paused: Vec<(RuleRef, Scope, Trip, usize)>,
}

impl State {
    /// An empty state.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the blast-radius guard's limits and flag acceptances.
    pub fn set_guard(&mut self, config: GuardConfig) {
        self.guard = config;
        self.guard_version += 1;
    }

    /// The blast-radius guard's limits and flag acceptances.
    #[must_use]
    pub fn guard_config(&self) -> &GuardConfig {
        &self.guard
    }

    /// Pods that use at least one claim and could be evicted (scheduled, neither terminal nor
    /// terminating): the base of the guard's percentage. Pods on their way out do not dilute it.
    #[must_use]
    pub fn dra_pods(&self) -> usize {
        self.pods
            .values()
            .filter(|p| crate::eviction::pod_is_evictable(p))
            .count()
    }

    /// The blast-radius guard's verdict at `now` (SPEC D11): its blasts are the pending
    /// evictions due by `now` plus the window, overdue ones included.
    #[must_use]
    pub fn guard_verdict(&self, now: Time) -> Verdict {
        if self.guard.is_off() {
            return Verdict::default();
        }
        let horizon = self.guard_horizon(now);
        let due: Vec<Vec<Scope>> = self
            .pending
            .values()
            .filter(|e| e.at <= horizon)
            .map(guard::scopes_of)
            .collect();
        guard::decide(&self.guard, self.dra_pods(), &due, |rule| {
            self.rules
                .get(&rule.name)
                .filter(|r| r.uid == rule.uid)
                .and_then(|r| r.accept)
        })
    }

    /// The end of the guard's window: evictions due by then count.
    fn guard_horizon(&self, now: Time) -> Time {
        crate::k8s::SignedDuration::try_from(self.guard.window)
            .ok()
            .and_then(|w| now.checked_add(w).ok())
            .unwrap_or(Time::MAX)
    }

    /// [`State::guard_verdict`], computed again only when a pending eviction was added, changed
    /// or cancelled, an acceptance changed or a second has passed: workers ask for every pod.
    /// Evictions the workers finish only shrink blasts, and a pod count change moves the
    /// percentage a little: either is seen within the second.
    pub fn guard_verdict_cached(&mut self, now: Time) -> Verdict {
        if let Some((version, at, verdict)) = &self.guard_cache
            && *version == self.guard_version
            && now >= *at
            && now.duration_since(*at) < crate::k8s::SignedDuration::from_secs(1)
        {
            return verdict.clone();
        }
        let verdict = self.guard_verdict(now);
        self.guard_cache = Some((self.guard_version, now, verdict.clone()));
        verdict
    }

    /// The guard's answer for a due eviction at `now`, and which scopes tripped or cleared since
    /// the last check (on a change, every rule with pending pods gets its status refreshed now).
    /// `None` when the guard is off.
    pub fn guard_check(&mut self, eviction: &Eviction, now: Time) -> Option<GuardCheck> {
        let mut check = self.guard_transitions(now)?;
        check.hold = self
            .guard_verdict_cached(now)
            .holds(&guard::scopes_of(eviction))
            .map(|(s, t)| (s.clone(), t.clone()));
        Some(check)
    }

    /// Whether a trip was announced and has not been seen to clear: then every index update asks
    /// [`State::guard_transitions`], so that a trip that ends without a pod to check (the rule
    /// deleted, the pods gone) is seen to end.
    #[must_use]
    pub fn guard_announced(&self) -> bool {
        !self.guard_told.is_empty()
    }

    /// Which scopes tripped or cleared since the last check, as [`State::guard_check`] without
    /// a pod.
    pub fn guard_transitions(&mut self, now: Time) -> Option<GuardCheck> {
        if self.guard.is_off() {
            return None;
        }
        let verdict = self.guard_verdict_cached(now);
        let tripped: Vec<(Scope, Trip)> = verdict
            .tripped
            .iter()
            .filter(|(s, _)| !self.guard_told.contains(*s))
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        let cleared: Vec<Scope> = self
            .guard_told
            .iter()
            .filter(|s| !verdict.tripped.contains_key(*s))
            .cloned()
            .collect();
        let mut rules_paused: BTreeMap<RuleRef, (Scope, Trip)> = BTreeMap::new();
        let mut blasts: BTreeMap<RuleRef, usize> = BTreeMap::new();
        if !tripped.is_empty() || !cleared.is_empty() {
            self.guard_told = verdict.tripped.keys().cloned().collect();
            let horizon = self.guard_horizon(now);
            for eviction in self.pending.values() {
                let in_window = eviction.at <= horizon;
                let held = in_window
                    .then(|| verdict.holds(&guard::scopes_of(eviction)))
                    .flatten()
                    .filter(|(scope, _)| tripped.iter().any(|(s, _)| s == *scope));
                for rule in eviction.rules() {
                    self.rule_requests.insert(rule.clone(), Duration::ZERO);
                    *blasts.entry(rule.clone()).or_default() += usize::from(in_window);
                    let Some((scope, trip)) = held else { continue };
                    let own = *scope == Scope::Rule(rule.clone());
                    if own || !rules_paused.contains_key(rule) {
                        rules_paused.insert(rule.clone(), (scope.clone(), trip.clone()));
                    }
                }
            }
        }
        Some(GuardCheck {
            hold: None,
            tripped,
            cleared,
            held: verdict.held,
            rules_paused: rules_paused
                .into_iter()
                .map(|(rule, (scope, trip))| {
                    let blast = blasts.get(&rule).copied().unwrap_or_default();
                    (rule, scope, trip, blast)
                })
                .collect(),
        })
    }

    /// An empty state that keeps pods whose priority is at or above `threshold` from automatic
    /// eviction (`--protected-priority`; `None`: no pod is protected).
    #[must_use]
    pub fn with_protected_priority(threshold: Option<i32>) -> Self {
        Self {
            protected_priority: threshold,
            ..Self::default()
        }
    }

    /// The `--protected-priority` threshold, if any.
    #[must_use]
    pub fn protected_priority(&self) -> Option<i32> {
        self.protected_priority
    }

    /// Whether a pod of this priority is kept from automatic eviction; the threshold if so.
    #[must_use]
    pub fn protects(&self, priority: i32) -> Option<i32> {
        self.protected_priority.filter(|threshold| priority >= *threshold)
    }

    /// Takes the changes accumulated since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.changes);
        changes.extend(
            std::mem::take(&mut self.rule_requests)
                .into_iter()
                .map(|(rule, after)| Change::RuleStatus { rule, after }),
        );
        changes
    }

    /// Index sizes.
    #[must_use]
    pub fn sizes(&self) -> Sizes {
        Sizes {
            pods: self.pods.len(),
            claims: self.claims.len(),
            devices: self.claims_by_device.len(),
            slices: self.pools.slice_count(),
            rules: self.rules.len(),
            pending: self.pending.len(),
        }
    }

    /// The pending eviction of a pod.
    #[must_use]
    pub fn pending(&self, pod: &PodRef) -> Option<&Eviction> {
        self.pending.get(pod)
    }

    /// Every pending eviction.
    pub fn pending_evictions(&self) -> impl Iterator<Item = (&PodRef, &Eviction)> {
        self.pending.iter()
    }

    /// The stored view of a pod.
    #[must_use]
    pub fn pod(&self, name: &ObjectName) -> Option<&PodView> {
        self.pods.get(name)
    }

    /// The stored view of a rule.
    #[must_use]
    pub fn rule(&self, name: &str) -> Option<&RuleView> {
        self.rules.get(name)
    }

    /// The stored view of a claim and its cached eviction.
    #[must_use]
    pub fn claim(&self, name: &ObjectName) -> Option<(&ClaimView, Option<&Eviction>)> {
        self.claims.get(name).map(|e| (&e.view, e.eviction.as_ref()))
    }

    /// Taints of a device in its pool's current generation.
    #[must_use]
    pub fn device_taints(&self, device: &DeviceId) -> &[crate::view::Taint] {
        self.pools.taints(device)
    }

    /// Claims whose allocation names this device, by name.
    pub fn claims_on_device(&self, device: &DeviceId) -> impl Iterator<Item = (&ObjectName, &ClaimView)> {
        self.claims_by_device
            .get(device)
            .into_iter()
            .flatten()
            .filter_map(|name| self.claims.get(name).map(|entry| (name, &entry.view)))
    }

    /// Devices in current ResourceSlices that a selector matches.
    #[must_use]
    pub fn published_devices_matching(&self, selector: &Selector) -> usize {
        self.pools.published_matching(selector)
    }

    /// All rules.
    pub fn rules(&self) -> impl Iterator<Item = &RuleView> {
        self.rules.iter()
    }

    /// Pods this controller evicted because of a rule since it started.
    #[must_use]
    pub fn evicted_by_rule(&self, uid: &str) -> u64 {
        self.evicted_per_rule.get(uid).copied().unwrap_or_default()
    }

    // === Pods ===

    /// A pod was added or updated (`view` is `None` for a pod that uses no claim).
    pub fn apply_pod(&mut self, name: &ObjectName, view: Option<PodView>) {
        let Some(view) = view else {
            // The pod now at this name uses no claim: whatever we stored under it is gone.
            if let Some(stored) = self.pods.get(name).map(|p| p.uid.clone()) {
                self.delete_pod(name, &stored);
            }
            return;
        };
        match self.pods.get(name) {
            Some(old) if *old == view => return,
            // A new pod under an old name: the old one is gone (SPEC X1).
            Some(old) if old.uid != view.uid => {
                let old_uid = old.uid.clone();
                self.delete_pod(name, &old_uid);
            }
            _ => {}
        }
        if let Some(old) = self.pods.insert(name.clone(), view) {
            self.unindex_group(name, &old);
        }
        if let Some(group) = self.pods.get(name).and_then(PodView::group_name) {
            self.pods_by_group.entry(group).or_default().insert(name.clone());
        }
        self.evaluate_pod(name);
    }

    fn unindex_group(&mut self, name: &ObjectName, pod: &PodView) {
        if let Some(group) = pod.group_name()
            && let Some(members) = self.pods_by_group.get_mut(&group)
        {
            members.remove(name);
            if members.is_empty() {
                self.pods_by_group.remove(&group);
            }
        }
    }

    /// Pods that may use a claim: those named in its `reservedFor` and the stored members of the
    /// PodGroups named there (upstream `handlePods`).
    #[must_use]
    pub fn claim_consumers(&self, claim: &ClaimView) -> BTreeSet<ObjectName> {
        let mut pods = claim.reserved_pods();
        for group in claim.reserved_groups() {
            if let Some(members) = self.pods_by_group.get(&group) {
                pods.extend(members.iter().cloned());
            }
        }
        pods
    }

    /// A pod was deleted. A stale delete (another UID) is ignored.
    pub fn delete_pod(&mut self, name: &ObjectName, uid: &str) {
        self.finished.remove(uid);
        if self.pods.get(name).is_some_and(|p| p.uid == uid)
            && let Some(pod) = self.pods.remove(name)
        {
            self.unindex_group(name, &pod);
            self.set_pending(pod.pod_ref(), None, false);
        }
    }

    /// A re-list of all pods: pods missing from it are deleted (SPEC D3).
    pub fn reset_pods(&mut self, pods: Vec<(ObjectName, String, Option<PodView>)>) {
        let listed: HashSet<&ObjectName> = pods.iter().map(|(n, _, _)| n).collect();
        let gone: Vec<(ObjectName, String)> = self
            .pods
            .iter()
            .filter(|(n, _)| !listed.contains(n))
            .map(|(n, p)| (n.clone(), p.uid.clone()))
            .collect();
        let live_uids: HashSet<&str> = pods.iter().map(|(_, uid, _)| uid.as_str()).collect();
        self.finished.retain(|uid| live_uids.contains(uid.as_str()));
        for (name, uid) in gone {
            self.delete_pod(&name, &uid);
        }
        for (name, _, view) in pods {
            self.apply_pod(&name, view);
        }
    }

    /// Recomputes a pod's eviction and updates the pending map.
    fn evaluate_pod(&mut self, name: &ObjectName) {
        let Some(pod) = self.pods.get(name) else { return };
        let eviction = if self.finished.contains(&pod.uid) {
            None
        } else {
            pod_eviction(pod, |claim| {
                self.claims
                    .get(&ObjectName::new(&pod.namespace, claim))
                    .map(|e| (&e.view, e.eviction.as_ref()))
            })
        };
        // A pod that someone else is deleting needs no "Cancelling deletion" Event.
        let notify = !pod.terminating;
        self.set_pending(pod.pod_ref(), eviction, notify);
    }

    fn set_pending(&mut self, pod: PodRef, eviction: Option<Eviction>, notify: bool) {
        match eviction {
            Some(eviction) => {
                if self.pending.get(&pod) == Some(&eviction) {
                    return;
                }
                debug!(pod = %pod, at = %eviction.at, reasons = eviction.reasons.len(), "pod eviction scheduled");
                let at = eviction.at;
                self.guard_version += 1;
                // A new situation: if it is withheld again, the pod is told again.
                self.protected.remove(&pod);
                let priority = self.pod_priority(&pod);
                if let Some(old) = self.pending.insert(pod.clone(), eviction) {
                    self.request_status_of(&old, RULE_STATUS_PERIOD);
                }
                if let Some(new) = self.pending.get(&pod).cloned() {
                    self.request_status_of(&new, RULE_STATUS_PERIOD);
                }
                self.changes.push(Change::Schedule { pod, at, priority });
            }
            None => {
                if let Some(old) = self.pending.remove(&pod) {
                    self.guard_version += 1;
                    self.blocked.remove(&pod);
                    self.protected.remove(&pod);
                    debug!(pod = %pod, "pod eviction cancelled");
                    self.request_status_of(&old, RULE_STATUS_PERIOD);
                    self.changes.push(Change::Cancel { pod, notify });
                }
            }
        }
    }

    /// The stored pod's priority (0 if the watch no longer shows this pod).
    /// Whether the stored pod of this UID already carries the `DisruptionTarget` condition this
    /// controller adds (then the eviction does not patch it again).
    #[must_use]
    pub fn disruption_target(&self, pod: &PodRef) -> bool {
        self.pods
            .get(&pod.object_name())
            .is_some_and(|p| p.uid == pod.uid && p.disruption_target)
    }

    fn pod_priority(&self, pod: &PodRef) -> i32 {
        self.pods
            .get(&pod.object_name())
            .filter(|p| p.uid == pod.uid)
            .map_or(0, |p| p.priority)
    }

    fn request_status_of(&mut self, eviction: &Eviction, after: Duration) {
        for rule in eviction.rules() {
            self.request_status(rule.clone(), after);
        }
    }

    fn request_status(&mut self, rule: RuleRef, after: Duration) {
        let entry = self.rule_requests.entry(rule).or_insert(after);
        *entry = (*entry).min(after);
    }

    // === Claims ===

    /// A claim was added or updated.
    pub fn apply_claim(&mut self, view: ClaimView) {
        let name = view.object_name();
        match self.claims.get(&name) {
            Some(old) if old.view == view => return,
            // Deleted and recreated under the same name: delete + add, as upstream.
            Some(old) if old.view.uid != view.uid => {
                let old_uid = old.view.uid.clone();
                self.delete_claim(&name, &old_uid);
            }
            _ => {}
        }
        let old = self.claims.remove(&name);
        let same_allocation = old.as_ref().is_some_and(|o| o.view.allocation == view.allocation);
        let eviction = match (&old, &view.allocation) {
            // Allocations are immutable: keep the cached eviction.
            (Some(o), Some(_)) if same_allocation => o.eviction.clone(),
            (_, Some(devices)) => compute_claim_eviction(&self.pools, &self.rules, devices),
            (_, None) => None,
        };
        if !same_allocation {
            if let Some(devices) = old.as_ref().and_then(|o| o.view.allocation.as_ref()) {
                unindex_devices(&mut self.claims_by_device, &name, devices);
            }
            if let Some(devices) = &view.allocation {
                for d in devices {
                    self.claims_by_device
                        .entry(d.device.clone())
                        .or_default()
                        .insert(name.clone());
                }
            }
        }
        let mut affected: BTreeSet<ObjectName> = self.claim_consumers(&view);
        if let Some(old) = &old {
            affected.extend(self.claim_consumers(&old.view));
        }
        if eviction.is_some() {
            debug!(claim = %name, uid = %view.uid, "claim is affected by device taint");
        }
        self.claims.insert(name, ClaimEntry { view, eviction });
        for pod in affected {
            self.evaluate_pod(&pod);
        }
    }

    /// A claim was deleted. A stale delete (another UID) is ignored.
    pub fn delete_claim(&mut self, name: &ObjectName, uid: &str) {
        if self.claims.get(name).is_none_or(|c| c.view.uid != uid) {
            return;
        }
        let Some(old) = self.claims.remove(name) else {
            return;
        };
        if let Some(devices) = &old.view.allocation {
            unindex_devices(&mut self.claims_by_device, name, devices);
        }
        for pod in self.claim_consumers(&old.view) {
            self.evaluate_pod(&pod);
        }
    }

    /// A re-list of all claims: claims missing from it are deleted (SPEC D3).
    pub fn reset_claims(&mut self, claims: Vec<ClaimView>) {
        let listed: HashSet<ObjectName> = claims.iter().map(ClaimView::object_name).collect();
        let gone: Vec<(ObjectName, String)> = self
            .claims
            .iter()
            .filter(|(n, _)| !listed.contains(*n))
            .map(|(n, c)| (n.clone(), c.view.uid.clone()))
            .collect();
        for (name, uid) in gone {
            self.delete_claim(&name, &uid);
        }
        for claim in claims {
            self.apply_claim(claim);
        }
    }

    /// Recomputes the eviction of claims on these devices; re-evaluates their pods on change.
    fn devices_changed(&mut self, devices: &[DeviceId]) {
        let mut claims = BTreeSet::new();
        for device in devices {
            if let Some(names) = self.claims_by_device.get(device) {
                claims.extend(names.iter().cloned());
            }
        }
        for name in claims {
            let Some(entry) = self.claims.get_mut(&name) else {
                continue;
            };
            let Some(devices) = &entry.view.allocation else {
                continue;
            };
            let eviction = compute_claim_eviction(&self.pools, &self.rules, devices);
            if eviction == entry.eviction {
                continue;
            }
            entry.eviction = eviction;
            let Some(entry) = self.claims.get(&name) else {
                continue;
            };
            let pods = self.claim_consumers(&entry.view);
            for pod in pods {
                self.evaluate_pod(&pod);
            }
        }
    }

    // === Slices ===

    /// A slice was added or updated. `now` stands in for a missing `timeAdded` (SPEC D2).
    pub fn apply_slice(&mut self, slice: SliceView, now: Time) {
        let changed = self.pools.apply(slice, now);
        self.devices_changed(&changed);
    }

    /// A slice was deleted.
    pub fn delete_slice(&mut self, name: &str) {
        let changed = self.pools.delete(name);
        self.devices_changed(&changed);
    }

    /// A re-list of all slices: slices missing from it are deleted (SPEC D3; upstream keeps
    /// them after a missed delete).
    pub fn reset_slices(&mut self, slices: Vec<SliceView>, now: Time) {
        let listed: HashSet<&str> = slices.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .pools
            .slice_names()
            .filter(|n| !listed.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.delete_slice(&name);
        }
        for slice in slices {
            self.apply_slice(slice, now);
        }
    }

    // === Rules ===

    /// A rule was added or updated. `now` stands in for a missing `timeAdded` (SPEC D2).
    pub fn apply_rule(&mut self, mut rule: RuleView, now: Time) {
        if let Some(old) = self.rules.get(&rule.name)
            && old.uid != rule.uid
        {
            // Replaced under the same name: delete + add (upstream keeps the old stats).
            let (name, uid) = (old.name.clone(), old.uid.clone());
            self.delete_rule(&name, &uid);
        }
        let old = self.rules.get(&rule.name);
        if rule.taint.time_added.is_none() {
            rule.taint.time_added = old
                .filter(|o| o.taint.same_taint(&rule.taint))
                .and_then(|o| o.taint.time_added)
                .or(Some(now));
        }
        if let Some(old) = old
            && old.accept != rule.accept
        {
            self.acceptance_changed(&rule);
        }
        let old = self.rules.get(&rule.name);
        if let Some(old) = old
            && old.same_spec(&rule)
        {
            // Status-only update, including our own status writes.
            if let Some(stored) = self.rules.get_mut(&rule.name) {
                stored.condition = rule.condition;
                stored.accept = rule.accept;
            }
            return;
        }
        let rule_ref = rule.rule_ref();
        if !rule.unknown_selector_fields.is_empty() {
            let fields = rule.unknown_selector_fields.clone();
            warn!(rule = %rule_ref, ?fields, "DeviceTaintRule selector has fields this controller does not understand; it selects no device");
            self.changes.push(Change::UnknownSelector {
                rule: rule_ref.clone(),
                fields,
            });
        }
        let selector = rule.selector.clone();
        let effect = rule.taint.effect.clone();
        let old = self.rules.insert(rule);
        let mut devices = Vec::new();
        if let Some(r) = &old
            && r.taint.effect == Effect::NoExecute
            && let Some(s) = &r.selector
        {
            devices.extend(self.allocated_devices_matching(s));
        }
        if effect == Effect::NoExecute
            && let Some(s) = &selector
        {
            devices.extend(self.allocated_devices_matching(s));
        }
        devices.sort();
        devices.dedup();
        self.devices_changed(&devices);
        self.request_status(rule_ref.clone(), Duration::ZERO);
        if let Some(s) = selector.filter(Selector::is_empty)
            && matches!(effect, Effect::NoExecute | Effect::None)
        {
            let published = self.pools.published_matching(&s);
            warn!(rule = %rule_ref, devices = published, "DeviceTaintRule has an empty device selector and selects every device");
            self.changes.push(Change::EmptySelector {
                rule: rule_ref,
                devices: published,
            });
        }
    }

    /// An operator changed how many of a rule's evictions they accept (SPEC D11): the pods held
    /// for it are looked at again now, and the rule status says what changed.
    fn acceptance_changed(&mut self, rule: &RuleView) {
        let rule_ref = rule.rule_ref();
        tracing::info!(rule = %rule_ref, accept = ?rule.accept, "DeviceTaintRule acceptance of the blast-radius guard changed");
        self.guard_version += 1;
        let held: Vec<Change> = self
            .pending
            .iter()
            .filter(|(_, e)| e.has_rule(&rule_ref))
            .map(|(pod, e)| Change::Schedule {
                pod: pod.clone(),
                at: e.at,
                priority: self.pod_priority(pod),
            })
            .collect();
        self.changes.extend(held);
        self.request_status(rule_ref, Duration::ZERO);
    }

    /// A rule was deleted. A stale delete (another UID) is ignored.
    pub fn delete_rule(&mut self, name: &str, uid: &str) {
        if self.rules.get(name).is_none_or(|r| r.uid != uid) {
            return;
        }
        let Some(old) = self.rules.remove(name) else {
            return;
        };
        self.evicted_per_rule.remove(&old.uid);
        self.rule_requests.remove(&old.rule_ref());
        if old.taint.effect == Effect::NoExecute
            && let Some(s) = &old.selector
        {
            let devices = self.allocated_devices_matching(s);
            self.devices_changed(&devices);
        }
    }

    /// A re-list of all rules: rules missing from it are deleted (SPEC D3).
    pub fn reset_rules(&mut self, rules: Vec<RuleView>, now: Time) {
        let listed: HashSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<(String, String)> = self
            .rules
            .iter()
            .filter(|r| !listed.contains(r.name.as_str()))
            .map(|r| (r.name.clone(), r.uid.clone()))
            .collect();
        for (name, uid) in gone {
            self.delete_rule(&name, &uid);
        }
        for rule in rules {
            self.apply_rule(rule, now);
        }
    }

    /// Allocated devices that a selector matches, using the ordered device index to narrow
    /// the search by driver and pool.
    #[must_use]
    pub fn allocated_devices_matching(&self, selector: &Selector) -> Vec<DeviceId> {
        match (&selector.driver, &selector.pool, &selector.device) {
            (Some(driver), Some(pool), Some(device)) => {
                let id = DeviceId::new(driver, pool, device);
                if self.claims_by_device.contains_key(&id) {
                    vec![id]
                } else {
                    Vec::new()
                }
            }
            (Some(driver), pool, _) => {
                let start = DeviceId::new(driver, pool.clone().unwrap_or_default(), "");
                self.claims_by_device
                    .range(start..)
                    .map(|(id, _)| id)
                    .take_while(|id| id.driver == *driver && pool.as_ref().is_none_or(|p| *p == id.pool))
                    .filter(|id| selector.matches(id))
                    .cloned()
                    .collect()
            }
            (None, _, _) => self
                .claims_by_device
                .keys()
                .filter(|id| selector.matches(id))
                .cloned()
                .collect(),
        }
    }

    // === Workers ===

    /// What to do for a pod key that fired at `now`.
    #[must_use]
    pub fn due(&self, pod: &PodRef, now: Time) -> Due {
        match self.pending.get(pod) {
            None => Due::Gone,
            Some(e) if e.at > now => Due::Later(e.at),
            Some(e) => {
                let priority = self.pod_priority(pod);
                match self.protects(priority) {
                    Some(threshold) => Due::Protected {
                        eviction: e.clone(),
                        priority,
                        threshold,
                    },
                    None => Due::Now(e.clone()),
                }
            }
        }
    }

    /// A due eviction was withheld because the pod is protected (see [`Due::Protected`]).
    /// Returns true the first time for the pod's current eviction (then tell the pod), false
    /// when it was already withheld or is no longer pending.
    pub fn eviction_protected(&mut self, pod: &PodRef) -> bool {
        let Some(eviction) = self.pending.get(pod) else {
            return false;
        };
        if !self.protected.insert(pod.clone()) {
            return false;
        }
        let eviction = eviction.clone();
        self.request_status_of(&eviction, Duration::ZERO);
        true
    }

    /// Whether a pending pod's due eviction is withheld by `--protected-priority`.
    #[must_use]
    pub fn is_protected(&self, pod: &PodRef) -> bool {
        self.protected.contains(pod)
    }

    /// A worker finished a pod. `eviction` is what [`State::due`] returned.
    pub fn finish(&mut self, pod: &PodRef, eviction: &Eviction, outcome: Finished) {
        self.pending.remove(pod);
        self.blocked.remove(pod);
        self.protected.remove(pod);
        // Only a pod the watch still shows needs guarding; if its delete event came first, the
        // UID would otherwise stay in the set for ever.
        if self
            .pods
            .get(&pod.object_name())
            .is_some_and(|p| p.uid == pod.uid)
        {
            self.finished.insert(pod.uid.clone());
        }
        if outcome == Finished::Evicted {
            for rule in eviction.rules() {
                *self.evicted_per_rule.entry(rule.uid.clone()).or_default() += 1;
            }
        }
        self.request_status_of(eviction, RULE_STATUS_PERIOD);
    }

    /// A PodDisruptionBudget refused the eviction of a pending pod; the rule status says so.
    pub fn eviction_blocked(&mut self, pod: &PodRef) {
        let Some(eviction) = self.pending.get(pod) else {
            return;
        };
        if self.blocked.insert(pod.clone()) {
            let eviction = eviction.clone();
            self.request_status_of(&eviction, Duration::ZERO);
        }
    }

    /// Whether a PodDisruptionBudget refused the last eviction attempt of a pending pod.
    #[must_use]
    pub fn is_blocked(&self, pod: &PodRef) -> bool {
        self.blocked.contains(pod)
    }

    /// Stores the condition this controller wrote on a rule (see
    /// [`crate::rule_status::status_written`]). Ignored when the rule is gone or was replaced.
    pub fn set_rule_condition(&mut self, rule: &RuleRef, condition: RuleCondition) {
        if let Some(stored) = self.rules.get_mut(&rule.name).filter(|r| r.uid == rule.uid) {
            stored.condition = Some(condition);
        }
    }
}

/// The eviction of a claim with these devices under the current slices and rules.
fn compute_claim_eviction(pools: &Pools, rules: &Rules, devices: &[AllocatedDevice]) -> Option<Eviction> {
    claim_eviction(devices, |device, visit| {
        for (index, taint) in pools.taints(device).iter().enumerate() {
            visit(
                TaintSource::Slice {
                    device: device.clone(),
                    index,
                },
                taint,
            );
        }
        rules.for_each_evicting(device, |rule| {
            visit(TaintSource::Rule(rule.rule_ref()), &rule.taint);
        });
    })
}

fn unindex_devices(
    index: &mut BTreeMap<DeviceId, BTreeSet<ObjectName>>,
    claim: &ObjectName,
    devices: &[AllocatedDevice],
) {
    for d in devices {
        if let Some(names) = index.get_mut(&d.device) {
            names.remove(claim);
            if names.is_empty() {
                index.remove(&d.device);
            }
        }
    }
}

/// The naive reference the property test and the `index_events` fuzz target compare against.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
