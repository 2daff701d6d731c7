//! The DeviceTaintRule `EvictionInProgress` condition, byte-exact with upstream 1.37.

use crate::view::Effect;

/// Counts describing a rule's effect on the cluster right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Pods waiting for eviction because of the rule (NoExecute).
    pub pending_pods: usize,
    /// Distinct namespaces of those pods.
    pub pending_namespaces: usize,
    /// Those of the pending pods whose eviction a PodDisruptionBudget refused (SPEC D7).
    pub blocked_pods: usize,
    /// Pods this controller deleted because of the rule since it started.
    pub evicted: u64,
    /// For a `None` rule: what would happen with `NoExecute`.
    pub simulation: Option<Simulation>,
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
            "PodsPendingEviction",
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
                       Recreate the DeviceTaintRule to trigger an update.",
            )
        }
        Effect::NoSchedule | Effect::Unknown(_) => (
            "False",
            "OtherEffect",
            "Eviction only happens for the NoExecute effect.".to_owned(),
        ),
    };
    if counts.blocked_pods > 0 && status == "True" {
        message += &plural(
            counts.blocked_pods,
            " 1 pod waits for a PodDisruptionBudget.",
            " %d pods wait for PodDisruptionBudgets.",
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

    fn cond(effect: &Effect, counts: RuleCounts) -> (String, String, String) {
        let c = rule_condition(effect, &counts);
        (c.status.into(), c.reason.into(), c.message)
    }

    #[test]
    fn no_execute_messages() {
        let pending = |p, n, e| RuleCounts {
            blocked_pods: 0,
            pending_pods: p,
            pending_namespaces: n,
            evicted: e,
            simulation: None,
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
