//! The pod view: what decides whether and when a pod is evicted.

use super::{Invalid, ObjectName, PodRef};
use crate::k8s::WatchedPod;

/// A claim a pod uses, with its name already resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodClaim {
    /// Name of the ResourceClaim object in the pod's namespace.
    pub claim: String,
    /// The claim was generated for this pod (from a template, or for DRA-backed extended
    /// resources), so it only counts when the pod controls it (upstream `IsForPod`).
    pub generated: bool,
}

/// The parts of a pod that the eviction decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // four independent facts of the pod, not a state machine
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// `spec.nodeName` is set: only scheduled pods are evicted.
    pub scheduled: bool,
    /// Phase `Succeeded` or `Failed`: never evicted nor counted (SPEC D1).
    pub terminal: bool,
    /// `metadata.deletionTimestamp` is set: someone is deleting it already.
    pub terminating: bool,
    /// `spec.priority` (0 when absent): when evictions wait, the lowest goes first, and
    /// `--protected-priority` keeps pods at or above a value (SPEC D12).
    pub priority: i32,
    /// `spec.schedulingGroup.podGroupName`: the PodGroup (in the pod's namespace) the pod belongs
    /// to. A claim reserved for that PodGroup counts for the pod (KEP-5729).
    pub pod_group: Option<String>,
    /// `status.conditions` has this controller's `DisruptionTarget` condition (an earlier attempt
    /// added it): the eviction skips that status patch and goes straight to the DELETE.
    pub disruption_target: bool,
    /// Claims in use, resolved from `spec.resourceClaims`, `status.resourceClaimStatuses` and
    /// `status.extendedResourceClaimStatus` (SPEC D6).
    pub claims: Vec<PodClaim>,
}

impl PodView {
    /// Projects a pod. Returns `Ok(None)` for a pod that references no claim at all: such pods
    /// are not stored.
    ///
    /// # Errors
    /// A pod without namespace, name or UID is invalid.
    pub fn from_api(pod: &WatchedPod) -> Result<Option<Self>, Invalid> {
        let spec_claims = pod.spec.as_ref().and_then(|s| s.resource_claims.as_ref());
        let status = pod.status.as_ref();
        let extended = status.and_then(|s| s.extended_resource_claim_status.as_ref());
        if spec_claims.is_none_or(Vec::is_empty) && extended.is_none() {
            return Ok(None);
        }
        let meta = &pod.metadata;
        let (namespace, name, uid) = super::namespaced_ids("Pod", meta)?;

        let statuses = status
            .and_then(|s| s.resource_claim_statuses.as_deref())
            .unwrap_or_default();
        let mut claims = Vec::new();
        for pod_claim in spec_claims.into_iter().flatten() {
            if let Some(claim) = &pod_claim.resource_claim_name {
                claims.push(PodClaim {
                    claim: claim.clone(),
                    generated: false,
                });
            } else if pod_claim.resource_claim_template_name.is_some() {
                // The generated claim's name is only known once the pod status records it; a
                // missing entry or a nil name means "no claim (yet)".
                if let Some(claim) = statuses
                    .iter()
                    .find(|s| s.name == pod_claim.name)
                    .and_then(|s| s.resource_claim_name.clone())
                {
                    claims.push(PodClaim {
                        claim,
                        generated: true,
                    });
                }
            }
        }
        if let Some(ext) = extended.filter(|e| !e.resource_claim_name.is_empty()) {
            claims.push(PodClaim {
                claim: ext.resource_claim_name.clone(),
                generated: true,
            });
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Ok(Some(Self {
            namespace,
            name,
            uid,
            scheduled: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty()),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            terminating: meta.deletion_timestamp.is_some(),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or_default(),
            pod_group: pod
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_group.as_ref())
                .and_then(|g| g.pod_group_name.clone())
                .filter(|g| !g.is_empty()),
            disruption_target: status.is_some_and(|s| s.disruption_target),
            claims,
        }))
    }

    /// The pod's `namespace/name`.
    #[must_use]
    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(&self.namespace, &self.name)
    }

    /// The pod's PodGroup as `namespace/name`, if it belongs to one.
    #[must_use]
    pub fn group_name(&self) -> Option<ObjectName> {
        self.pod_group
            .as_ref()
            .map(|g| ObjectName::new(&self.namespace, g))
    }

    /// The pod's reference including its UID.
    #[must_use]
    pub fn pod_ref(&self) -> PodRef {
        PodRef::new(&self.namespace, &self.name, &self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> WatchedPod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pod_without_claims_is_not_kept() {
        let p = pod(
            serde_json::json!({"metadata": {"namespace": "ns", "name": "p", "uid": "u"}, "spec": {"containers": []}}),
        );
        assert_eq!(PodView::from_api(&p), Ok(None));
    }

    #[test]
    fn resolves_direct_template_and_extended_claims() {
        let p = pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
            "spec": {"nodeName": "n", "containers": [], "resourceClaims": [
                {"name": "a", "resourceClaimName": "direct"},
                {"name": "b", "resourceClaimTemplateName": "tmpl"},
                {"name": "c", "resourceClaimTemplateName": "tmpl"},
                {"name": "d", "resourceClaimTemplateName": "tmpl"}
            ]},
            "status": {"phase": "Running",
                "resourceClaimStatuses": [{"name": "b", "resourceClaimName": "p-b-xyz"}, {"name": "c"}],
                "extendedResourceClaimStatus": {"resourceClaimName": "p-extended", "requestMappings": []}}
        }));
        let view = PodView::from_api(&p).unwrap().unwrap();
        assert!(view.scheduled && !view.terminal && !view.terminating && !view.disruption_target);
        assert_eq!(
            view.claims,
            vec![
                PodClaim {
                    claim: "direct".into(),
                    generated: false
                },
                PodClaim {
                    claim: "p-b-xyz".into(),
                    generated: true
                },
                PodClaim {
                    claim: "p-extended".into(),
                    generated: true
                },
            ]
        );
    }

    #[test]
    fn terminal_and_unscheduled() {
        let p = pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [], "resourceClaims": [{"name": "a", "resourceClaimName": "c"}]},
            "status": {"phase": "Succeeded", "conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": crate::k8s::DISRUPTION_REASON, "message": crate::k8s::DISRUPTION_MESSAGE}]}
        }));
        let view = PodView::from_api(&p).unwrap().unwrap();
        assert!(!view.scheduled && view.terminal && view.terminating);
        assert!(view.disruption_target, "an earlier attempt added our condition");
        assert_eq!(view.pod_group, None);
        assert_eq!(view.priority, 0, "no spec.priority counts as 0");
    }

    #[test]
    fn keeps_the_priority() {
        let p = pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
            "spec": {"containers": [], "priority": -7,
                     "resourceClaims": [{"name": "a", "resourceClaimName": "c"}]}
        }));
        assert_eq!(PodView::from_api(&p).unwrap().unwrap().priority, -7);
    }

    #[test]
    fn keeps_the_pod_group() {
        let p = pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
            "spec": {"containers": [], "schedulingGroup": {"podGroupName": "g"},
                     "resourceClaims": [{"name": "a", "resourceClaimName": "c"}]}
        }));
        assert_eq!(
            PodView::from_api(&p).unwrap().unwrap().pod_group.as_deref(),
            Some("g")
        );
    }

    #[test]
    fn pod_without_uid_is_invalid() {
        let p = pod(serde_json::json!({"metadata": {"namespace": "ns", "name": "p"},
            "spec": {"containers": [], "resourceClaims": [{"name": "a", "resourceClaimName": "c"}]}}));
        assert_eq!(PodView::from_api(&p).unwrap_err().field, "metadata.uid");
    }
}
