//! The ResourceClaim view: allocated devices with their tolerations, and who reserved it.

use std::collections::BTreeSet;

use super::{DeviceId, Invalid, ObjectName, Toleration};
use crate::k8s::ResourceClaim;

/// The API group of PodGroups (KEP-5729).
pub const SCHEDULING_GROUP: &str = "scheduling.k8s.io";

/// The group of an `apiVersion` (`group/version`, or just `version` for the core group).
fn api_group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// One allocation result: a device and the tolerations the allocator copied for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllocatedDevice {
    /// The device.
    pub device: DeviceId,
    /// `status.allocation.devices.results[].tolerations` (not the spec: upstream bug #134434).
    pub tolerations: Vec<Toleration>,
}

/// The parts of a ResourceClaim that the eviction decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// UID of the controlling owner (the pod a generated claim belongs to).
    pub controller_uid: Option<String>,
    /// Name of the controlling owner when it is a `scheduling.k8s.io` PodGroup (a claim generated
    /// for a PodGroup counts for its member pods).
    pub controller_pod_group: Option<String>,
    /// Allocated devices; `None` while the claim is not allocated.
    pub allocation: Option<Vec<AllocatedDevice>>,
    /// Pods in `status.reservedFor`, as (name, UID).
    pub reserved_for: Vec<(String, String)>,
    /// Names of the `scheduling.k8s.io` PodGroups in `status.reservedFor` (KEP-5729): the claim is
    /// reserved for every pod whose `spec.schedulingGroup.podGroupName` names one of them. Other
    /// consumer kinds are ignored.
    pub reserved_for_groups: Vec<String>,
}

impl ClaimView {
    /// Projects a claim.
    ///
    /// # Errors
    /// A claim without namespace, name or UID is invalid.
    pub fn from_api(claim: &ResourceClaim) -> Result<Self, Invalid> {
        let meta = &claim.metadata;
        let (namespace, name, uid) = super::namespaced_ids("ResourceClaim", meta)?;
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let controller_uid = controller.map(|o| o.uid.clone());
        let controller_pod_group = controller
            .filter(|o| o.kind == "PodGroup" && api_group(&o.api_version) == SCHEDULING_GROUP)
            .map(|o| o.name.clone());
        let status = claim.status.as_ref();
        let allocation = status.and_then(|s| s.allocation.as_ref()).map(|a| {
            a.devices
                .iter()
                .flat_map(|d| d.results.iter().flatten())
                .map(|r| AllocatedDevice {
                    device: DeviceId::new(&r.driver, &r.pool, &r.device),
                    tolerations: r.tolerations.iter().flatten().map(Toleration::from_api).collect(),
                })
                .collect()
        });
        let consumers = status.and_then(|s| s.reserved_for.as_deref()).unwrap_or_default();
        let reserved_for = consumers
            .iter()
            .filter(|r| r.api_group.as_deref().unwrap_or_default().is_empty() && r.resource == "pods")
            .map(|r| (r.name.clone(), r.uid.clone()))
            .collect();
        let reserved_for_groups = consumers
            .iter()
            .filter(|r| r.api_group.as_deref() == Some(SCHEDULING_GROUP) && r.resource == "podgroups")
            .map(|r| r.name.clone())
            .collect();
        Ok(Self {
            namespace,
            name,
            uid,
            controller_uid,
            controller_pod_group,
            allocation,
            reserved_for,
            reserved_for_groups,
        })
    }

    /// The claim's `namespace/name`.
    #[must_use]
    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(&self.namespace, &self.name)
    }

    /// Whether the pod with this UID is in `reservedFor`.
    #[must_use]
    pub fn reserved_by(&self, pod_uid: &str) -> bool {
        self.reserved_for.iter().any(|(_, uid)| uid == pod_uid)
    }

    /// Whether the PodGroup with this name (in the claim's namespace) is in `reservedFor`.
    #[must_use]
    pub fn reserved_by_group(&self, pod_group: &str) -> bool {
        self.reserved_for_groups.iter().any(|g| g == pod_group)
    }

    /// PodGroups named in `reservedFor`, as `namespace/name`.
    pub fn reserved_groups(&self) -> impl Iterator<Item = ObjectName> + '_ {
        self.reserved_for_groups
            .iter()
            .map(|g| ObjectName::new(&self.namespace, g))
    }

    /// Pods named in `reservedFor`.
    #[must_use]
    pub fn reserved_pods(&self) -> BTreeSet<ObjectName> {
        self.reserved_for
            .iter()
            .map(|(name, _)| ObjectName::new(&self.namespace, name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Effect, Operator};

    #[test]
    fn projects_allocation_and_reservations() {
        let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "c", "uid": "cu",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "pu", "controller": true}]},
            "spec": {"devices": {}},
            "status": {
                "allocation": {"devices": {"results": [
                    {"request": "r", "driver": "d", "pool": "p", "device": "gpu-0",
                     "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}
                ]}},
                "reservedFor": [
                    {"resource": "pods", "name": "p", "uid": "pu"},
                    {"apiGroup": "scheduling.k8s.io", "resource": "podgroups", "name": "g", "uid": "gu"}
                ]
            }
        }))
        .unwrap();
        let view = ClaimView::from_api(&claim).unwrap();
        assert_eq!(view.controller_uid.as_deref(), Some("pu"));
        let alloc = view.allocation.as_ref().unwrap();
        assert_eq!(alloc[0].device, DeviceId::new("d", "p", "gpu-0"));
        assert_eq!(alloc[0].tolerations[0].operator, Operator::Exists);
        assert_eq!(alloc[0].tolerations[0].effect, Some(Effect::NoExecute));
        assert_eq!(alloc[0].tolerations[0].toleration_seconds, Some(30));
        assert_eq!(view.reserved_for, vec![("p".to_owned(), "pu".to_owned())]);
        assert!(view.reserved_by("pu") && !view.reserved_by("gu"));
        assert_eq!(view.reserved_for_groups, ["g"]);
        assert!(view.reserved_by_group("g") && !view.reserved_by_group("p"));
        assert_eq!(view.controller_pod_group, None);
    }

    #[test]
    fn claim_generated_for_a_pod_group() {
        let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "c", "uid": "cu",
                "ownerReferences": [
                    {"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup", "name": "g", "uid": "gu", "controller": true}
                ]},
            "spec": {"devices": {}},
            "status": {"reservedFor": [
                {"apiGroup": "scheduling.k8s.io", "resource": "podgroups", "name": "g", "uid": "gu"},
                {"apiGroup": "example.com", "resource": "podgroups", "name": "other", "uid": "ou"}
            ]}
        }))
        .unwrap();
        let view = ClaimView::from_api(&claim).unwrap();
        assert_eq!(view.controller_pod_group.as_deref(), Some("g"));
        assert_eq!(
            view.reserved_for_groups,
            ["g"],
            "only scheduling.k8s.io PodGroups"
        );
        assert!(view.reserved_for.is_empty());
    }

    #[test]
    fn unallocated_claim() {
        let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "c", "uid": "cu"}, "spec": {"devices": {}}
        }))
        .unwrap();
        let view = ClaimView::from_api(&claim).unwrap();
        assert_eq!(view.allocation, None);
        assert!(view.reserved_for.is_empty());
    }
}
