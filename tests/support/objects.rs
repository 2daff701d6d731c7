//! Builders for the API objects of the scenarios: a driver's slice, a pod with a claim whose
//! allocation and reservation are written the way the scheduler writes them, rules.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::Pod,
        resource::v1::{ResourceClaim, ResourceSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::TestEnv;

/// The pretend driver of the scenarios.
pub const DRIVER: &str = "gpu.example.com";

/// A device taint (no `timeAdded`: the server sets it) as JSON.
pub fn taint(key: &str, effect: &str) -> Value {
    json!({"key": key, "value": "broken", "effect": effect})
}

/// A toleration as JSON; `seconds` None tolerates forever.
pub fn toleration(key: &str, seconds: Option<i64>) -> Value {
    let mut t = json!({"key": key, "operator": "Exists", "effect": "NoExecute"});
    if let Some(s) = seconds {
        t["tolerationSeconds"] = json!(s);
    }
    t
}

impl TestEnv {
    /// The pool name of this test (unique, so tests sharing a cluster never touch each other).
    pub fn pool(&self) -> String {
        self.unique_name("pool")
    }

    /// Creates (or replaces) the test's ResourceSlice with `devices`, each with its taints.
    pub async fn apply_slice(
        &self,
        name: &str,
        generation: i64,
        devices: &[(&str, Vec<Value>)],
    ) -> ResourceSlice {
        let devices: Vec<Value> = devices
            .iter()
            .map(|(n, taints)| json!({"name": n, "taints": taints}))
            .collect();
        let slice: ResourceSlice = serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": name, "labels": self.labels()},
            "spec": {"driver": DRIVER, "pool": {"name": self.pool(), "generation": generation, "resourceSliceCount": 1},
                     "allNodes": true, "devices": devices}
        }))
        .expect("slice");
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams::apply("dte-tests").force(),
            &Patch::Apply(&slice),
        )
        .await
        .expect("apply slice")
    }

    /// Creates a scheduled pod `name` using claim `claim` (by name), and that claim allocated
    /// `device` with `tolerations` and reserved for the pod. Returns the pod.
    pub async fn pod_with_claim(
        &self,
        name: &str,
        claim: &str,
        device: &str,
        tolerations: Vec<Value>,
    ) -> Pod {
        let pod = self.create_pod(name, claim, Some("node-1")).await;
        self.create_allocated_claim(claim, device, tolerations, &pod)
            .await;
        pod
    }

    /// Creates a pod referencing claim `claim`; `node` None leaves it unscheduled.
    pub async fn create_pod(&self, name: &str, claim: &str, node: Option<&str>) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                      "resources": {"claims": [{"name": "gpu"}]}}],
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
                     "terminationGracePeriodSeconds": 0}
        }))
        .expect("pod");
        pod.spec.as_mut().expect("spec").node_name = node.map(Into::into);
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    /// Creates claim `name` allocated `device` (in this test's pool) and reserved for `pod`.
    pub async fn create_allocated_claim(
        &self,
        name: &str,
        device: &str,
        tolerations: Vec<Value>,
        pod: &Pod,
    ) -> ResourceClaim {
        let claim = ResourceClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: serde_json::from_value(json!({"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": DRIVER, "tolerations": tolerations}}]}}))
            .expect("claim spec"),
            status: None,
        };
        let api = self.api::<ResourceClaim>();
        api.create(&PostParams::default(), &claim)
            .await
            .expect("create claim");
        self.set_claim_status(name, device, tolerations, pod).await
    }

    /// Writes a claim's allocation and reservation as the scheduler would.
    pub async fn set_claim_status(
        &self,
        name: &str,
        device: &str,
        tolerations: Vec<Value>,
        pod: &Pod,
    ) -> ResourceClaim {
        let status = json!({"status": {
            "allocation": {"devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": self.pool(),
                                                      "device": device, "tolerations": tolerations}]}},
            "reservedFor": [{"resource": "pods", "name": pod.metadata.name, "uid": pod.metadata.uid}]
        }});
        self.api::<ResourceClaim>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("claim status")
    }

    /// Creates a DeviceTaintRule at `version` selecting `device` of this test's pool.
    pub async fn create_rule(
        &self,
        version: &str,
        name: &str,
        device: Option<&str>,
        taint: Value,
    ) -> DynamicObject {
        let ar = device_taint_eviction::k8s::device_taint_rule_resource(version);
        let mut selector = json!({"driver": DRIVER, "pool": self.pool()});
        if let Some(d) = device {
            selector["device"] = json!(d);
        }
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": ar.api_version, "kind": "DeviceTaintRule",
            "metadata": {"name": name, "labels": self.labels()},
            "spec": {"deviceSelector": selector, "taint": taint}
        }))
        .expect("rule");
        Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .create(&PostParams::default(), &obj)
            .await
            .expect("create rule")
    }

    /// The `EvictionInProgress` condition of a rule: (reason, message).
    pub async fn rule_condition(&self, name: &str) -> Option<(String, String)> {
        let ar = device_taint_eviction::k8s::device_taint_rule_resource("v1");
        let obj = Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .get(name)
            .await
            .ok()?;
        let c = obj.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "EvictionInProgress")?
            .clone();
        Some((
            c["reason"].as_str()?.to_owned(),
            c["message"].as_str()?.to_owned(),
        ))
    }

    /// Whether the pod is being deleted or gone (no kubelet runs on a local control plane, so a
    /// deleted pod stays Terminating; on kind it disappears).
    pub async fn pod_deleted(&self, name: &str) -> bool {
        match self.api::<Pod>().get_opt(name).await.expect("get pod") {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Event messages with reason `DeviceTaintManagerEviction` about `pod`.
    pub async fn eviction_events(&self, pod: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let list = api.list(&kube::api::ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
            .filter(|e| e.reason.as_deref() == Some("DeviceTaintManagerEviction"))
            .filter_map(|e| e.note)
            .collect()
    }
}

/// Labels as a selector string.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
