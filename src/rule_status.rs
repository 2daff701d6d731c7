//! The DeviceTaintRule `EvictionInProgress` status: what it says (byte-exact with upstream 1.37),
//! the counts behind it, and how often it is written.
//!
//! The index only answers queries (pending evictions, claims on a device, pods); this module turns
//! those answers into a condition. The actuator writes it; the controller asks [`rule_status`]
//! what to do when a rule's key fires in the queue.

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use tracing::info;

use crate::{
    eviction::{claim_counts_for_pod, pod_is_evictable, taint_deadline},
    guard::{ACCEPT_ANNOTATION, Scope, Trip, scopes_of},
    index::State,
    k8s::SignedDuration,
    view::{EVICTION_IN_PROGRESS, Effect, RuleCondition, RuleRef, RuleView, Time},
};

/// How often at most a rule's status is refreshed while pods are pending (upstream: 10 s).
pub const RULE_STATUS_PERIOD: Duration = Duration::from_secs(10);

/// What a rule status worker should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleStatusWork {
    /// The rule no longer exists (or was replaced): drop the work item.
    Gone,
    /// Rate limited: come back after this long.
    Later(Duration),
    /// The stored condition is already current.
    UpToDate,
    /// Apply this condition with server-side apply.
    Apply {
        /// Generation to record as `observedGeneration`.
        generation: i64,
        /// The condition.
        condition: RuleStatusCondition,
    },
}

/// What a rule status worker should do at `now` (upstream `maybeUpdateRuleStatus`).
#[must_use]
pub fn rule_status(state: &State, rule: &RuleRef, now: Time) -> RuleStatusWork {
    let Some(view) = state.rule(&rule.name).filter(|r| r.uid == rule.uid) else {
        return RuleStatusWork::Gone;
    };
    if let Some(c) = &view.condition
        && c.observed_generation == Some(view.generation)
    {
        let since = now.duration_since(c.last_transition_time);
        let period = SignedDuration::try_from(RULE_STATUS_PERIOD).unwrap_or_default();
        if since < period {
            return RuleStatusWork::Later((period - since).unsigned_abs());
        }
    }
    let condition = current_condition(state, view, now);
    if let Some(c) = &view.condition
        && c.observed_generation == Some(view.generation)
        && c.status == condition.status
        && c.reason == condition.reason
        && c.message == condition.message
    {
        return RuleStatusWork::UpToDate;
    }
    info!(rule = %rule, reason = condition.reason, message = %condition.message, "calculated new rule condition");
    RuleStatusWork::Apply {
        generation: view.generation,
        condition,
    }
}

/// Our status write succeeded: remember it in the index so that the rate limit holds even before
/// the rule watch delivers it.
pub fn status_written(
    state: &mut State,
    rule: &RuleRef,
    generation: i64,
    condition: &RuleStatusCondition,
    at: Time,
) {
    state.set_rule_condition(
        rule,
        RuleCondition {
            status: condition.status.to_owned(),
            reason: condition.reason.to_owned(),
            message: condition.message.clone(),
            observed_generation: Some(generation),
            last_transition_time: at,
        },
    );
}

/// The server-side apply body that sets a rule's `EvictionInProgress` condition. `api_version`
/// is the served DeviceTaintRule version.
#[must_use]
pub fn apply_body(
    api_version: &str,
    rule: &RuleRef,
    generation: i64,
    condition: &RuleStatusCondition,
    now: Time,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "DeviceTaintRule",
        "metadata": {"name": rule.name, "uid": rule.uid},
        "status": {"conditions": [{
            "type": EVICTION_IN_PROGRESS,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": now.to_string(),
            "observedGeneration": generation,
        }]}
    })
}

/// The condition a rule should carry in the current state at `now`.
#[must_use]
pub fn current_condition(state: &State, rule: &RuleView, now: Time) -> RuleStatusCondition {
    rule_condition(&rule.taint.effect, &rule_counts(state, rule, now))
}

/// The counts behind a rule's condition.
fn rule_counts(state: &State, rule: &RuleView, now: Time) -> RuleCounts {
    let rule_ref = rule.rule_ref();
    let mut counts = RuleCounts {
        evicted: state.evicted_by_rule(&rule.uid),
        ..RuleCounts::default()
    };
    match rule.taint.effect {
        Effect::NoExecute => {
            let mut namespaces = HashSet::new();
            for (pod, eviction) in state.pending_evictions() {
                if eviction.has_rule(&rule_ref) {
                    counts.pending_pods += 1;
                    counts.blocked_pods += usize::from(state.is_blocked(pod));
                    counts.protected_pods += usize::from(state.is_protected(pod));
                    namespaces.insert(pod.namespace.as_str());
                }
            }
            counts.pending_namespaces = namespaces.len();
            if counts.pending_pods > 0 {
                counts.paused = paused(state, &rule_ref, counts.pending_pods, now);
            }
        }
        Effect::None => {
            let sim = simulate(state, rule);
            counts.guard_would_trip = state
                .guard_config()
                .exceeded(sim.pods, state.dra_pods())
                .filter(|_| rule.accept.is_none_or(|n| sim.pods > n))
                .map(|limit| {
                    Trip {
                        blast: sim.pods,
                        window: state.guard_config().window,
                        limit,
                        accepted: rule.accept,
                    }
                    .to_string()
                });
            counts.simulation = Some(sim);
        }
        Effect::NoSchedule | Effect::Unknown(_) => {}
    }
    counts
}

/// Why the blast-radius guard holds a rule's pending pods, and how to resume (SPEC D11), if it
/// holds any: the rule's own scope first, else the pool or cluster scope that holds the first.
fn paused(state: &State, rule: &RuleRef, pending: usize, now: Time) -> Option<Pause> {
    let verdict = state.guard_verdict(now);
    if verdict.tripped.is_empty() {
        return None;
    }
    let own = Scope::Rule(rule.clone());
    let mut held = 0;
    let mut by: Option<(Scope, Trip)> = None;
    for (_, eviction) in state.pending_evictions().filter(|(_, e)| e.has_rule(rule)) {
        if let Some((scope, trip)) = verdict.holds(&scopes_of(eviction)) {
            held += 1;
            if by.as_ref().is_none_or(|(s, _)| *s != own) {
                by = Some((scope.clone(), trip.clone()));
            }
        }
    }
    let (scope, trip) = by?;
    let how = match &scope {
        Scope::Rule(_) | Scope::Cluster => format!(
            "To resume, accept them: device-taint-eviction resume --name {name} --accept {pending} \
             (annotation {ACCEPT_ANNOTATION}={pending}){}.",
            if scope == Scope::Cluster {
                ", or raise --guard-accept-cluster"
            } else {
                ""
            },
            name = rule.name,
        ),
        Scope::Pool(pool) => format!("To resume, accept the pool's evictions: --guard-accept-pool {pool}=N."),
    };
    Some(Pause {
        held,
        message: format!("The blast-radius guard paused {held} of them (scope {scope}): {trip}. {how}"),
    })
}

/// What a `None` rule would do with `NoExecute` (upstream's one-shot report).
fn simulate(state: &State, rule: &RuleView) -> Simulation {
    let Some(selector) = &rule.selector else {
        return Simulation::default();
    };
    let mut sim = Simulation {
        published_devices: state.published_devices_matching(selector),
        ..Simulation::default()
    };
    let mut as_no_execute = rule.taint.clone();
    as_no_execute.effect = Effect::NoExecute;
    let mut affected_claims = BTreeSet::new();
    for device in state.allocated_devices_matching(selector) {
        for (name, claim) in state.claims_on_device(&device) {
            for allocated in claim.allocation.iter().flatten().filter(|a| a.device == device) {
                sim.allocated_devices += 1;
                if taint_deadline(&as_no_execute, &allocated.tolerations).is_some() {
                    affected_claims.insert(name.clone());
                }
            }
        }
    }
    let mut pods = HashSet::new();
    for name in &affected_claims {
        let Some((claim, _)) = state.claim(name) else {
            continue;
        };
        for pod_name in state.claim_consumers(claim) {
            let Some(pod) = state.pod(&pod_name) else {
                continue;
            };
            // The pod would be evicted through this claim if it uses it as a pod must.
            let uses = pod_is_evictable(pod)
                && pod
                    .claims
                    .iter()
                    .any(|c| c.claim == claim.name && claim_counts_for_pod(pod, c, claim));
            if uses {
                pods.insert(pod.pod_ref());
            }
        }
    }
    sim.pods = pods.len();
    sim.namespaces = pods
        .iter()
        .map(|p| p.namespace.as_str())
        .collect::<HashSet<_>>()
        .len();
    sim
}

/// Why the blast-radius guard holds some of a rule's pending pods (SPEC D11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pause {
    /// Pods held.
    pub held: usize,
    /// Why, and how to resume.
    pub message: String,
}

/// Counts describing a rule's effect on the cluster right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Pods waiting for eviction because of the rule (NoExecute).
    pub pending_pods: usize,
    /// Distinct namespaces of those pods.
    pub pending_namespaces: usize,
    /// Those of the pending pods whose eviction a PodDisruptionBudget refused (SPEC D7).
    pub blocked_pods: usize,
    /// Those of the pending pods whose due eviction `--protected-priority` withheld (SPEC D12).
    pub protected_pods: usize,
    /// Pods this controller deleted because of the rule since it started.
    pub evicted: u64,
    /// For a `None` rule: what would happen with `NoExecute`.
    pub simulation: Option<Simulation>,
    /// Pending pods the blast-radius guard holds, why and how to resume (SPEC D11).
    pub paused: Option<Pause>,
    /// For a `None` rule: why the blast-radius guard would pause its evictions with
    /// `NoExecute`, if it would.
    pub guard_would_trip: Option<String>,
}

/// The one-shot report of a rule with effect `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Simulation {
    /// Devices in current ResourceSlices that the selector matches.
    pub published_devices: usize,
    /// Allocation results that the selector matches.
    pub allocated_devices: usize,
    /// Pods that would be evicted.
    pub pods: usize,
    /// Their distinct namespaces.
    pub namespaces: usize,
}

/// The computed condition (type `EvictionInProgress`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleStatusCondition {
    /// `True` or `False`.
    pub status: &'static str,
    /// Reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_owned()
    } else {
        many.replace("%d", &n.to_string())
    }
}

/// The condition for a rule with this effect and these counts.
#[must_use]
pub fn rule_condition(effect: &Effect, counts: &RuleCounts) -> RuleStatusCondition {
    let (status, reason, mut message) = match effect {
        Effect::NoExecute if counts.pending_pods > 0 => (
            "True",
            if counts.paused.is_some() {
                "EvictionPaused"
            } else {
                "PodsPendingEviction"
            },
            plural(
                counts.pending_pods,
                "1 pod needs to be evicted in ",
                "%d pods need to be evicted in ",
            ) + &plural(
                counts.pending_namespaces,
                "1 namespace.",
                "%d different namespaces.",
            ),
        ),
        Effect::NoExecute if counts.evicted > 0 => ("False", "Completed", String::new()),
        Effect::NoExecute => ("False", "NotStarted", String::new()),
        Effect::None => {
            let sim = counts.simulation.unwrap_or_default();
            (
                "False",
                "NoEffect",
                plural(
                    sim.published_devices,
                    "1 published device selected. ",
                    "%d published devices selected. ",
                ) + &plural(
                    sim.allocated_devices,
                    "1 allocated device selected. ",
                    "%d allocated devices selected. ",
                ) + &plural(
                    sim.pods,
                    "1 pod would be evicted in ",
                    "%d pods would be evicted in ",
                ) + &plural(sim.namespaces, "1 namespace ", "%d different namespaces ")
                    + "if the effect was NoExecute. This information will not be updated again. \
                       Recreate the DeviceTaintRule to trigger an update."
                    + &counts
                        .guard_would_trip
                        .as_ref()
                        .map(|why| format!(" The blast-radius guard would pause these evictions: {why}."))
                        .unwrap_or_default(),
            )
        }
        Effect::NoSchedule | Effect::Unknown(_) => (
            "False",
            "OtherEffect",
            "Eviction only happens for the NoExecute effect.".to_owned(),
        ),
    };
    if let Some(pause) = counts.paused.as_ref().filter(|_| status == "True") {
        message.push(' ');
        message += &pause.message;
    }
    if counts.blocked_pods > 0 && status == "True" {
        message += &plural(
            counts.blocked_pods,
            " 1 pod waits for a PodDisruptionBudget.",
            " %d pods wait for PodDisruptionBudgets.",
        );
    }
    if counts.protected_pods > 0 && status == "True" {
        message += &plural(
            counts.protected_pods,
            " 1 pod is not evicted because its priority is protected (--protected-priority).",
            " %d pods are not evicted because their priority is protected (--protected-priority).",
        );
    }
    if counts.evicted > 0 {
        if !message.is_empty() {
            message.push(' ');
        }
        message += &plural(
            usize::try_from(counts.evicted).unwrap_or(usize::MAX),
            "1 pod evicted since starting the controller.",
            "%d pods evicted since starting the controller.",
        );
    }
    RuleStatusCondition {
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // the cases build their counts inline
    fn cond(effect: &Effect, counts: RuleCounts) -> (String, String, String) {
        let c = rule_condition(effect, &counts);
        (c.status.into(), c.reason.into(), c.message)
    }

    #[test]
    fn no_execute_messages() {
        let pending = |p, n, e| RuleCounts {
            blocked_pods: 0,
            protected_pods: 0,
            pending_pods: p,
            pending_namespaces: n,
            evicted: e,
            simulation: None,
            ..RuleCounts::default()
        };
        assert_eq!(
            cond(&Effect::NoExecute, pending(1, 1, 0)),
            (
                "True".into(),
                "PodsPendingEviction".into(),
                "1 pod needs to be evicted in 1 namespace.".into()
            )
        );
        assert_eq!(
            cond(&Effect::NoExecute, pending(5, 3, 0)).2,
            "5 pods need to be evicted in 3 different namespaces."
        );
        assert_eq!(
            cond(&Effect::NoExecute, pending(5, 1, 0)).2,
            "5 pods need to be evicted in 1 namespace."
        );
        assert_eq!(
            cond(&Effect::NoExecute, pending(1, 1, 1)).2,
            "1 pod needs to be evicted in 1 namespace. 1 pod evicted since starting the controller."
        );
        assert_eq!(
            cond(&Effect::NoExecute, pending(0, 0, 1000)),
            (
                "False".into(),
                "Completed".into(),
                "1000 pods evicted since starting the controller.".into()
            )
        );
        assert_eq!(
            cond(&Effect::NoExecute, pending(0, 0, 0)),
            ("False".into(), "NotStarted".into(), String::new())
        );
        let blocked = |b| RuleCounts {
            blocked_pods: b,
            ..pending(5, 3, 2)
        };
        assert_eq!(
            cond(&Effect::NoExecute, blocked(1)).2,
            "5 pods need to be evicted in 3 different namespaces. 1 pod waits for a PodDisruptionBudget. \
             2 pods evicted since starting the controller."
        );
        let protected = |b, p| RuleCounts {
            protected_pods: p,
            ..blocked(b)
        };
        assert_eq!(
            cond(&Effect::NoExecute, protected(1, 1)).2,
            "5 pods need to be evicted in 3 different namespaces. 1 pod waits for a PodDisruptionBudget. \
             1 pod is not evicted because its priority is protected (--protected-priority). \
             2 pods evicted since starting the controller."
        );
        assert_eq!(
            cond(&Effect::NoExecute, protected(0, 3)).2,
            "5 pods need to be evicted in 3 different namespaces. \
             3 pods are not evicted because their priority is protected (--protected-priority). \
             2 pods evicted since starting the controller."
        );
        assert_eq!(
            cond(&Effect::NoExecute, blocked(4)).2,
            "5 pods need to be evicted in 3 different namespaces. 4 pods wait for PodDisruptionBudgets. \
             2 pods evicted since starting the controller."
        );
    }

    #[test]
    fn none_effect_report() {
        let sim = |published_devices, allocated_devices, pods, namespaces| RuleCounts {
            simulation: Some(Simulation {
                published_devices,
                allocated_devices,
                pods,
                namespaces,
            }),
            ..RuleCounts::default()
        };
        assert_eq!(
            cond(&Effect::None, sim(1, 1, 1, 1)),
            (
                "False".into(),
                "NoEffect".into(),
                "1 published device selected. 1 allocated device selected. 1 pod would be evicted in 1 namespace \
                 if the effect was NoExecute. This information will not be updated again. Recreate the \
                 DeviceTaintRule to trigger an update."
                    .into()
            )
        );
        assert_eq!(
            cond(&Effect::None, sim(0, 0, 0, 0)).2,
            "0 published devices selected. 0 allocated devices selected. 0 pods would be evicted in 0 different \
             namespaces if the effect was NoExecute. This information will not be updated again. Recreate the \
             DeviceTaintRule to trigger an update."
        );
        assert_eq!(
            cond(&Effect::None, sim(1000, 1000, 1000, 1)).2,
            "1000 published devices selected. 1000 allocated devices selected. 1000 pods would be evicted in 1 \
             namespace if the effect was NoExecute. This information will not be updated again. Recreate the \
             DeviceTaintRule to trigger an update."
        );
    }

    #[test]
    fn other_effects() {
        for effect in [Effect::NoSchedule, Effect::Unknown("Later".into())] {
            assert_eq!(
                cond(&effect, RuleCounts::default()),
                (
                    "False".into(),
                    "OtherEffect".into(),
                    "Eviction only happens for the NoExecute effect.".into()
                )
            );
        }
        assert_eq!(
            cond(
                &Effect::NoSchedule,
                RuleCounts {
                    evicted: 2,
                    ..RuleCounts::default()
                }
            )
            .2,
            "Eviction only happens for the NoExecute effect. 2 pods evicted since starting the controller."
        );
    }
}
