//! Pure eviction decisions: when must a pod go, and why. No clock, no client, no tokio.
//!
//! The rules are upstream's 1.37 rules (`claimEvictionTime`, `podEvictionTime`): every
//! `NoExecute` taint of every allocated device counts unless a matching toleration without
//! `tolerationSeconds` covers it; a taint fires at `timeAdded` plus the smallest matching
//! `tolerationSeconds` (negative counts as 0); the earliest taint wins; the reasons are every
//! taint that is not tolerated forever, sorted (rules by name first, then slice taints by driver,
//! pool, device, index).

use crate::view::{AllocatedDevice, ClaimView, DeviceId, Effect, PodClaim, PodView, RuleRef, Taint, Time};

/// Where a taint comes from. The derived order is the reasons' order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaintSource {
    /// A DeviceTaintRule.
    Rule(RuleRef),
    /// The `index`-th taint of a device in its ResourceSlice.
    Slice {
        /// The device.
        device: DeviceId,
        /// Position in the device's taints.
        index: usize,
    },
}

impl std::fmt::Display for TaintSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rule(rule) => write!(f, "DeviceTaintRule {}", rule.name),
            Self::Slice { device, index } => write!(f, "ResourceSlice taint #{index} of device {device}"),
        }
    }
}

/// When a pod (or claim) must be evicted, and because of which taints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The earliest moment the eviction is allowed.
    pub at: Time,
    /// Every taint that is not tolerated forever, sorted and without duplicates.
    pub reasons: Vec<TaintSource>,
}

impl Eviction {
    /// Whether a rule is among the reasons.
    #[must_use]
    pub fn has_rule(&self, rule: &RuleRef) -> bool {
        self.reasons
            .iter()
            .any(|r| matches!(r, TaintSource::Rule(r) if r == rule))
    }

    /// The rules among the reasons.
    pub fn rules(&self) -> impl Iterator<Item = &RuleRef> {
        self.reasons.iter().filter_map(|r| match r {
            TaintSource::Rule(rule) => Some(rule),
            TaintSource::Slice { .. } => None,
        })
    }

    /// Folds another eviction into this one: earliest time, union of reasons.
    fn merge(&mut self, other: &Self) {
        self.at = self.at.min(other.at);
        self.reasons.extend(other.reasons.iter().cloned());
        self.reasons.sort();
        self.reasons.dedup();
    }
}

/// When a taint fires for a device with these tolerations: `None` when tolerated forever.
///
/// `time_added` must already be resolved (the index fills a missing one with the time it first
/// saw the taint, SPEC D2); a taint without it contributes nothing.
#[must_use]
pub fn taint_deadline(taint: &Taint, tolerations: &[crate::view::Toleration]) -> Option<Time> {
    let added = taint.time_added?;
    let mut seconds: Option<i64> = None;
    for toleration in tolerations.iter().filter(|t| t.tolerates(taint)) {
        match toleration.toleration_seconds {
            None => return None,
            Some(s) => seconds = Some(seconds.map_or(s, |cur| cur.min(s))),
        }
    }
    let seconds = seconds.unwrap_or(0).max(0);
    // A huge tolerationSeconds is "practically forever", never an overflow.
    Some(
        added
            .checked_add(crate::k8s::SignedDuration::from_secs(seconds))
            .unwrap_or(Time::MAX),
    )
}

/// The eviction of an allocated claim, given a way to enumerate the taints of a device.
///
/// `taints_of(device, visit)` must call `visit` for every taint that applies to the device
/// (slice taints of the pool's current generation and taints of rules selecting it); effects
/// other than `NoExecute` are ignored here.
pub fn claim_eviction<F>(devices: &[AllocatedDevice], mut taints_of: F) -> Option<Eviction>
where
    F: FnMut(&DeviceId, &mut dyn FnMut(TaintSource, &Taint)),
{
    let mut at: Option<Time> = None;
    let mut reasons = Vec::new();
    for allocated in devices {
        taints_of(&allocated.device, &mut |source, taint| {
            if taint.effect != Effect::NoExecute {
                return;
            }
            if let Some(when) = taint_deadline(taint, &allocated.tolerations) {
                at = Some(at.map_or(when, |cur| cur.min(when)));
                reasons.push(source);
            }
        });
    }
    reasons.sort();
    reasons.dedup();
    at.map(|at| Eviction { at, reasons })
}

/// Whether a pod can be evicted at all: only scheduled pods that are neither terminal (SPEC D1)
/// nor already terminating.
#[must_use]
pub fn pod_is_evictable(pod: &PodView) -> bool {
    pod.scheduled && !pod.terminal && !pod.terminating
}

/// Whether a claim the pod references (`pod_claim`, resolved to `claim`) counts for the pod's
/// eviction: it is allocated, reserved for this pod's UID or for the PodGroup the pod belongs to
/// and, if generated, controlled by this pod or by its PodGroup (upstream `podEvictionTime` with
/// `DRAWorkloadResourceClaims`). The decision, the rule status and `explain` all ask this one
/// question.
#[must_use]
pub fn claim_counts_for_pod(pod: &PodView, pod_claim: &PodClaim, claim: &ClaimView) -> bool {
    let group = pod.pod_group.as_deref();
    let reserved = claim.reserved_by(&pod.uid) || group.is_some_and(|g| claim.reserved_by_group(g));
    let owned = !pod_claim.generated
        || claim.controller_uid.as_deref() == Some(pod.uid.as_str())
        || group.is_some_and(|g| claim.controller_pod_group.as_deref() == Some(g));
    claim.allocation.is_some() && reserved && owned
}

/// The eviction of a pod, given a way to find a claim (by name, in the pod's namespace) and its
/// cached eviction.
///
/// Only scheduled pods that are neither terminal (SPEC D1) nor already terminating are
/// evicted; a claim counts only as [`claim_counts_for_pod`] says.
pub fn pod_eviction<'a, F>(pod: &PodView, mut claim: F) -> Option<Eviction>
where
    F: FnMut(&str) -> Option<(&'a ClaimView, Option<&'a Eviction>)>,
{
    if !pod_is_evictable(pod) {
        return None;
    }
    let mut result: Option<Eviction> = None;
    for pod_claim in &pod.claims {
        let Some((view, Some(eviction))) = claim(&pod_claim.claim) else {
            continue;
        };
        if !claim_counts_for_pod(pod, pod_claim, view) {
            continue;
        }
        match &mut result {
            None => result = Some(eviction.clone()),
            Some(r) => r.merge(eviction),
        }
    }
    result
}

#[cfg(test)]
mod tests;
