//! The only module that names version-specific Kubernetes API types.
//!
//! Pods, ResourceClaims and ResourceSlices are read at `resource.k8s.io/v1` through k8s-openapi.
//! DeviceTaintRule is served at `v1alpha3` (1.35), `v1beta2` (1.36) and `v1` (1.37) with the same
//! shape for everything this controller reads, so it goes through [`DeviceTaintRule`], our own
//! version-agnostic serde type, whose API version is chosen at start-up by discovery.

use std::borrow::Cow;

pub use k8s_openapi::{
    api::{
        core::v1::{
            Pod, PodExtendedResourceClaimStatus, PodResourceClaim, PodResourceClaimStatus, PodSchedulingGroup,
        },
        resource::v1::{
            DeviceTaint as ApiDeviceTaint, DeviceToleration as ApiDeviceToleration, ResourceClaim,
            ResourceSlice,
        },
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    core::{ApiResource, DynamicResourceScope, GroupVersionKind, NamespaceResourceScope},
    discovery,
};
use serde::{Deserialize, Deserializer, Serialize};

/// The API group of every DRA object this controller reads.
pub const RESOURCE_GROUP: &str = "resource.k8s.io";

/// The `DisruptionTarget` condition's reason (upstream).
pub const DISRUPTION_REASON: &str = "DeletionByDeviceTaintManager";
/// The `DisruptionTarget` condition's message (upstream).
pub const DISRUPTION_MESSAGE: &str = "Device Taint manager: deleting due to NoExecute taint";

/// DeviceTaintRule versions this controller understands, most preferred first.
pub const DEVICE_TAINT_RULE_VERSIONS: [&str; 3] = ["v1", "v1beta2", "v1alpha3"];

/// A DeviceTaintRule at any served version (`v1alpha3`, `v1beta2`, `v1`).
///
/// Every field is optional on input so that an object that another server version or a
/// hand-written client produced still parses; the view layer decides what is usable.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct DeviceTaintRule {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The selector and the taint.
    #[serde(default)]
    pub spec: DeviceTaintRuleSpec,
    /// Written by this controller (`EvictionInProgress` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceTaintRuleStatus>,
}

/// `spec` of a DeviceTaintRule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTaintRuleSpec {
    /// Which devices the taint applies to. `None` matches no device; an empty selector matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceTaintSelector>,
    /// The taint added to every selected device.
    #[serde(default)]
    pub taint: DeviceTaintFields,
}

/// `spec.deviceSelector`: each set field must match exactly, an unset field matches anything.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct DeviceTaintSelector {
    /// Driver name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Fields this controller does not know (a newer API): a rule with any selects nothing.
    #[serde(
        flatten,
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A device taint as found in a DeviceTaintRule (same fields as in a ResourceSlice).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTaintFields {
    /// Taint key.
    #[serde(default)]
    pub key: String,
    /// Taint value, may be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoExecute`, `NoSchedule`, `None` or an effect unknown to this controller.
    #[serde(default)]
    pub effect: String,
    /// When the taint was added; defaulted by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

/// `status` of a DeviceTaintRule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct DeviceTaintRuleStatus {
    /// Conditions; this controller owns `EvictionInProgress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

impl kube::Resource for DeviceTaintRule {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.kind)
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.group)
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.version)
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.api_version)
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A pod as the controller watches and lists it: only what the eviction decision reads.
///
/// Everything else in a pod's JSON (containers, volumes, labels, annotations, managedFields, ...)
/// is skipped by the parser without being built, which is most of the work of following every pod
/// of a cluster. Writes never start from this type: the actuator reads the live [`Pod`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct WatchedPod {
    /// Namespace, name, UID, resourceVersion and deletionTimestamp; nothing else is kept.
    #[serde(default, deserialize_with = "watched_metadata")]
    pub metadata: ObjectMeta,
    /// `spec.nodeName`, `spec.priority`, `spec.resourceClaims` and `spec.schedulingGroup`.
    #[serde(default)]
    pub spec: Option<WatchedPodSpec>,
    /// `status.phase`, `status.resourceClaimStatuses`, `status.extendedResourceClaimStatus`, and
    /// whether `status.conditions` holds this controller's `DisruptionTarget`.
    #[serde(default)]
    pub status: Option<WatchedPodStatus>,
}

/// The parts of `spec` of a [`WatchedPod`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodSpec {
    /// Set once the pod is scheduled.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Set by the API server's Priority admission from `priorityClassName` (or the global default
    /// PriorityClass); absent means 0, as Kubernetes treats it.
    #[serde(default)]
    pub priority: Option<i32>,
    /// The claims the pod references, directly or through a template.
    #[serde(default)]
    pub resource_claims: Option<Vec<PodResourceClaim>>,
    /// The PodGroup the pod belongs to (`podGroupName`): claims reserved for that PodGroup count
    /// for the pod.
    #[serde(default)]
    pub scheduling_group: Option<PodSchedulingGroup>,
}

/// The parts of `status` of a [`WatchedPod`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Names of the claims generated from templates.
    #[serde(default)]
    pub resource_claim_statuses: Option<Vec<PodResourceClaimStatus>>,
    /// The claim generated for DRA-backed extended resources.
    #[serde(default)]
    pub extended_resource_claim_status: Option<PodExtendedResourceClaimStatus>,
    /// `status.conditions` has the `DisruptionTarget` condition this controller adds before it
    /// deletes a pod (an earlier attempt got that far), so it is not patched again. Only this
    /// flag is kept of the conditions.
    #[serde(default, rename = "conditions", deserialize_with = "has_disruption_target")]
    pub disruption_target: bool,
}

/// Whether a pod's `status.conditions` holds our `DisruptionTarget` condition: type, status,
/// reason and message as the controller writes them. The conditions are read in place; no
/// string is kept.
fn has_disruption_target<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    struct Listed<'a> {
        #[serde(default, rename = "type", borrow)]
        type_: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        status: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        reason: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        message: Option<Cow<'a, str>>,
    }
    let conditions: Option<Vec<Listed<'de>>> = Option::deserialize(deserializer)?;
    Ok(conditions.into_iter().flatten().any(|c| {
        c.type_.as_deref() == Some("DisruptionTarget")
            && c.status.as_deref() == Some("True")
            && c.reason.as_deref() == Some(DISRUPTION_REASON)
            && c.message.as_deref() == Some(DISRUPTION_MESSAGE)
    }))
}

/// The metadata fields a [`WatchedPod`] keeps (the watcher needs `resourceVersion`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
}

fn watched_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let meta = WatchedMetadata::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn api_version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The [`ApiResource`] of DeviceTaintRule at `version`.
#[must_use]
pub fn device_taint_rule_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(RESOURCE_GROUP, version, "DeviceTaintRule"),
        "devicetaintrules",
    )
}

/// Finds the DeviceTaintRule version the server prefers among those this controller understands.
///
/// Returns `Ok(None)` when the server serves no DeviceTaintRule at all (the controller then runs
/// with ResourceSlice taints only).
///
/// # Errors
/// Fails when discovery itself fails.
pub async fn discover_device_taint_rule(client: &kube::Client) -> Result<Option<ApiResource>, kube::Error> {
    let group = match discovery::group(client, RESOURCE_GROUP).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let served: Vec<String> = group
        .versions()
        .filter(|v| {
            group
                .versioned_resources(v)
                .iter()
                .any(|(ar, _)| ar.kind == "DeviceTaintRule")
        })
        .map(str::to_owned)
        .collect();
    // Prefer the server's preferred version when we understand it, else the newest we know.
    let preferred = group.preferred_version_or_latest();
    let version = if served.iter().any(|v| v == preferred) && DEVICE_TAINT_RULE_VERSIONS.contains(&preferred)
    {
        Some(preferred.to_owned())
    } else {
        DEVICE_TAINT_RULE_VERSIONS
            .iter()
            .find(|v| served.iter().any(|s| s == *v))
            .map(|v| (*v).to_owned())
    };
    Ok(version.map(|v| device_taint_rule_resource(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `WatchedPod` keeps exactly what the view and the watcher read, from a pod with much more.
    #[test]
    fn watched_pod_keeps_what_the_controller_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "42",
                         "deletionTimestamp": "2026-11-23T10:00:00Z", "labels": {"a": "b"},
                         "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}],
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}],
                     "schedulingGroup": {"podGroupName": "g"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "p-gpu"}],
                       "extendedResourceClaimStatus": {"resourceClaimName": "p-ext", "requestMappings": []}}
        });
        let pod: WatchedPod = serde_json::from_value(json.clone()).unwrap();
        let full: Pod = serde_json::from_value(json).unwrap();
        assert_eq!(pod.metadata.name, full.metadata.name);
        assert_eq!(pod.metadata.namespace, full.metadata.namespace);
        assert_eq!(pod.metadata.uid, full.metadata.uid);
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(pod.metadata.deletion_timestamp, full.metadata.deletion_timestamp);
        assert_eq!(pod.metadata.labels, None, "labels are not kept");
        assert_eq!(pod.metadata.managed_fields, None, "managedFields are not kept");
        let spec = pod.spec.unwrap();
        let full_spec = full.spec.unwrap();
        assert_eq!(spec.node_name, full_spec.node_name);
        assert_eq!(spec.resource_claims, full_spec.resource_claims);
        assert_eq!(spec.scheduling_group, full_spec.scheduling_group);
        assert!(spec.scheduling_group.is_some());
        let status = pod.status.unwrap();
        let full_status = full.status.unwrap();
        assert_eq!(status.phase, full_status.phase);
        assert_eq!(
            status.resource_claim_statuses,
            full_status.resource_claim_statuses
        );
        assert_eq!(
            status.extended_resource_claim_status,
            full_status.extended_resource_claim_status
        );
    }

    /// Missing and null parts decode as absent, as in k8s-openapi's `Pod`.
    #[test]
    fn watched_pod_tolerates_missing_parts() {
        let pod: WatchedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": null
        }))
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert_eq!(pod.spec, None);
        assert_eq!(pod.status, None);
        let empty: WatchedPod = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, WatchedPod::default());
    }

    /// Of the conditions only whether ours is there is kept: exactly our type, status, reason
    /// and message, read from bytes as the watcher reads them (escaped strings too).
    #[test]
    fn watched_pod_knows_only_whether_it_has_our_disruption_target() {
        let ours = serde_json::json!({"type": "DisruptionTarget", "status": "True",
            "reason": DISRUPTION_REASON, "message": DISRUPTION_MESSAGE, "lastTransitionTime": "2026-11-23T10:00:00Z"});
        let with = |conditions: serde_json::Value| -> bool {
            let json = serde_json::json!({"metadata": {"name": "p"}, "status": {"conditions": conditions}});
            let pod: WatchedPod = serde_json::from_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
            pod.status.is_some_and(|s| s.disruption_target)
        };
        assert!(with(
            serde_json::json!([{"type": "Ready", "status": "True"}, ours])
        ));
        assert!(!with(serde_json::json!([{"type": "Ready", "status": "True"}])));
        assert!(!with(serde_json::json!(null)));
        for (field, other) in [
            ("type", "Ready"),
            ("status", "False"),
            ("reason", "EvictionByEvictionAPI"),
            ("message", "deleting \"x\"\n"),
        ] {
            let mut theirs = ours.clone();
            theirs[field] = other.into();
            assert!(!with(serde_json::json!([theirs])), "{field}");
        }
        let pod: WatchedPod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": {}})).unwrap();
        assert!(!pod.status.unwrap().disruption_target);
    }

    #[test]
    fn parses_rule_at_every_version() {
        for version in DEVICE_TAINT_RULE_VERSIONS {
            let json = serde_json::json!({
                "apiVersion": format!("resource.k8s.io/{version}"),
                "kind": "DeviceTaintRule",
                "metadata": {"name": "r", "uid": "u", "generation": 2},
                "spec": {
                    "deviceSelector": {"driver": "gpu.example.com", "pool": "p"},
                    "taint": {"key": "k", "value": "v", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}
                },
                "status": {"conditions": [{"type": "EvictionInProgress", "status": "False", "reason": "NotStarted",
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}]}
            });
            let rule: DeviceTaintRule = serde_json::from_value(json).unwrap();
            assert_eq!(rule.spec.taint.effect, "NoExecute");
            assert_eq!(rule.spec.device_selector.unwrap().pool.as_deref(), Some("p"));
            assert_eq!(rule.status.unwrap().conditions.unwrap().len(), 1);
        }
    }

    #[test]
    fn parses_rule_with_missing_fields() {
        let rule: DeviceTaintRule =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "r"}})).unwrap();
        assert!(rule.spec.device_selector.is_none());
        assert_eq!(rule.spec.taint.effect, "");
    }

    #[test]
    fn resource_names_version() {
        let ar = device_taint_rule_resource("v1beta2");
        assert_eq!(ar.api_version, "resource.k8s.io/v1beta2");
        assert_eq!(ar.plural, "devicetaintrules");
    }
}
