//! Builders for the API objects of the scenarios: a driver's slice, a pod with a claim whose
//! allocation and reservation are written the way the scheduler writes them, rules.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::Pod,
        resource::v1::{ResourceClaim, ResourceSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{TIMEOUT, TestEnv, wait_for};

/// Name of the witness pod (see [`TestEnv::witness`]).
pub const WITNESS: &str = "witness";
/// The controller's gauge of pods scheduled for eviction (counting down or being deleted).
pub const PENDING: &str = "device_taint_eviction_controller_pending_evictions";
/// The controller's gauge of pods past their deadline that wait for a worker.
pub const QUEUE_DEPTH: &str = "device_taint_eviction_controller_queue_depth";
/// Finalizer that keeps a deleted pod readable (see [`TestEnv::keep_pod`]).
const KEEP: &str = "device-taint-eviction.test/keep";

/// Seconds since the epoch of an API timestamp given as JSON (RFC 3339).
pub fn seconds(time: &Value) -> i64 {
    serde_json::from_value::<Time>(time.clone())
        .unwrap_or_else(|e| panic!("timestamp {time}: {e}"))
        .0
        .as_second()
}

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
        self.try_apply_slice(name, generation, 1, devices)
            .await
            .expect("apply slice")
    }

    /// Like [`Self::apply_slice`] for a pool of `count` slices, returning the API's answer.
    pub async fn try_apply_slice(
        &self,
        name: &str,
        generation: i64,
        count: i64,
        devices: &[(&str, Vec<Value>)],
    ) -> kube::Result<ResourceSlice> {
        let devices: Vec<Value> = devices
            .iter()
            .map(|(n, taints)| json!({"name": n, "taints": taints}))
            .collect();
        let slice: ResourceSlice = serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": name, "labels": self.labels()},
            "spec": {"driver": DRIVER, "pool": {"name": self.pool(), "generation": generation, "resourceSliceCount": count},
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
    }

    /// `timeAdded` (epoch seconds) of the first taint of `device` in slice `name`.
    pub async fn slice_time_added(&self, name: &str, device: &str) -> i64 {
        let slice = Api::<ResourceSlice>::all(self.client.clone())
            .get(name)
            .await
            .expect("get slice");
        let slice = serde_json::to_value(slice).expect("slice json");
        let device = slice["spec"]["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == device))
            .expect("device in slice");
        seconds(&device["taints"][0]["timeAdded"])
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
        self.create_pod_with(name, json!({"name": "gpu", "resourceClaimName": claim}), node)
            .await
    }

    /// Creates a pod whose only `spec.resourceClaims` entry is `pod_claim` (named `gpu`).
    pub async fn create_pod_with(&self, name: &str, pod_claim: Value, node: Option<&str>) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                      "resources": {"claims": [{"name": "gpu"}]}}],
                     "resourceClaims": [pod_claim],
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

    /// The DeviceTaintRule API at the version this cluster prefers (`v1` from Kubernetes 1.37,
    /// `v1beta2` on 1.36, `v1alpha3` on 1.35), as the controller reads it.
    pub async fn rule_resource(&self) -> ApiResource {
        device_taint_eviction::k8s::discover_device_taint_rule(&self.client)
            .await
            .expect("discovering the DeviceTaintRule API")
            .expect("this cluster serves no DeviceTaintRule API")
    }

    /// The DeviceTaintRule versions this cluster serves, of those the controller understands.
    pub async fn served_rule_versions(&self) -> Vec<&'static str> {
        let group = kube::discovery::group(&self.client, device_taint_eviction::k8s::RESOURCE_GROUP)
            .await
            .expect("discovering resource.k8s.io");
        device_taint_eviction::k8s::DEVICE_TAINT_RULE_VERSIONS
            .iter()
            .copied()
            .filter(|v| {
                group
                    .versioned_resources(v)
                    .iter()
                    .any(|(ar, _)| ar.kind == "DeviceTaintRule")
            })
            .collect()
    }

    /// Creates a DeviceTaintRule (at the preferred version) selecting `device` of this test's pool,
    /// or the whole pool.
    pub async fn create_rule(&self, name: &str, device: Option<&str>, taint: Value) -> DynamicObject {
        let version = self.rule_resource().await.version;
        self.create_rule_at(&version, name, device, taint).await
    }

    /// [`Self::create_rule`] at `version`.
    pub async fn create_rule_at(
        &self,
        version: &str,
        name: &str,
        device: Option<&str>,
        taint: Value,
    ) -> DynamicObject {
        let mut selector = json!({"driver": DRIVER, "pool": self.pool()});
        if let Some(d) = device {
            selector["device"] = json!(d);
        }
        let spec = json!({"deviceSelector": selector, "taint": taint});
        let ar = device_taint_eviction::k8s::device_taint_rule_resource(version);
        create_rule_object(&self.client, &ar, name, self.labels(), spec).await
    }

    /// Creates a DeviceTaintRule (at the preferred version) with the given `spec`.
    pub async fn create_rule_with(&self, name: &str, spec: Value) -> DynamicObject {
        let ar = self.rule_resource().await;
        create_rule_object(&self.client, &ar, name, self.labels(), spec).await
    }

    /// `timeAdded` (epoch seconds) of a rule's taint.
    pub async fn rule_time_added(&self, name: &str) -> i64 {
        let ar = self.rule_resource().await;
        let obj = Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .get(name)
            .await
            .expect("get rule");
        seconds(&obj.data["spec"]["taint"]["timeAdded"])
    }

    /// The `EvictionInProgress` condition of a rule: (reason, message).
    pub async fn rule_condition(&self, name: &str) -> Option<(String, String)> {
        let ar = self.rule_resource().await;
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

    /// `deletionTimestamp` (epoch seconds) of a pod, if it is being deleted.
    pub async fn pod_deletion_time(&self, name: &str) -> Option<i64> {
        let pod = self.api::<Pod>().get_opt(name).await.expect("get pod")?;
        pod.metadata.deletion_timestamp.map(|t| t.0.as_second())
    }

    /// The pod's `DisruptionTarget` condition: (status, reason, message).
    pub async fn disruption_target(&self, name: &str) -> Option<(String, String, String)> {
        let pod = self.api::<Pod>().get_opt(name).await.expect("get pod")?;
        let c = pod
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget")?;
        Some((
            c.status,
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default(),
        ))
    }

    /// Adds a test finalizer to a pod, so that after its deletion it stays (with its
    /// `deletionTimestamp`) until [`Self::release_pod`].
    pub async fn keep_pod(&self, name: &str) {
        self.api::<Pod>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": [KEEP]}})),
            )
            .await
            .expect("add finalizer");
    }

    /// Removes the finalizers [`Self::keep_pod`] added (best effort).
    pub async fn release_pod(&self, name: &str) {
        let _ = self
            .api::<Pod>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }

    /// Deletes a pod without grace (also one already terminating) and waits until it is gone.
    pub async fn delete_pod_now(&self, name: &str) {
        let _ = self
            .api::<Pod>()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
        wait_for("the pod to be gone", TIMEOUT, || async {
            self.api::<Pod>()
                .get_opt(name)
                .await
                .expect("get pod")
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Binds an unscheduled pod to `node` through the `pods/binding` subresource, as the
    /// scheduler does.
    pub async fn bind_pod(&self, name: &str, node: &str) {
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        self.api::<Pod>()
            .create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
            .await
            .expect("bind pod");
    }

    /// Removes a claim's allocation and reservation (deallocation).
    pub async fn clear_claim_status(&self, name: &str) {
        let status = json!({"status": {"allocation": null, "reservedFor": null}});
        self.api::<ResourceClaim>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("clear claim status");
    }

    /// The witness: pod `witness` on device `w` of this test's pool with `tolerations`. A test
    /// that expects no eviction taints `w` together with (or after) its subject; once the
    /// witness is evicted, the controller has seen everything the test wrote before.
    pub async fn witness(&self, tolerations: Vec<Value>) -> Pod {
        self.pod_with_claim(WITNESS, "witness-claim", "w", tolerations)
            .await
    }

    /// Waits for the witness to be evicted, then asserts that `pod` is not being deleted and
    /// got no "Marking for deletion" Event.
    ///
    /// The witness being gone is not enough: a wrong eviction of `pod` due at the same moment
    /// may still be in flight. So it also waits for the witness's own Event and, with the shared
    /// controller of this binary at hand, until that controller has nothing pending or queued
    /// (every eviction it decided on is finished or cancelled), and checks its log: it never
    /// evicted `pod`.
    pub async fn assert_spared(&self, pod: &str) {
        self.assert_spared_with(self, pod).await;
    }

    /// [`Self::assert_spared`] with the witness pod of `witness` (e.g. a sibling namespace).
    pub async fn assert_spared_with(&self, witness: &TestEnv, pod: &str) {
        wait_for("the witness pod to be evicted", TIMEOUT, || async {
            witness.pod_deleted(WITNESS).await.then_some(())
        })
        .await;
        wait_for("the witness's eviction Event", TIMEOUT, || async {
            witness
                .eviction_events(WITNESS)
                .await
                .iter()
                .any(|e| e == "Marking for deletion")
                .then_some(())
        })
        .await;
        if let Some(Some(ctrl)) = super::CONTROLLER.get() {
            // Other tests of the binary share the controller: allow for their countdowns. Nothing
            // pending means no eviction is in flight either (an eviction leaves the pending map
            // only when its worker finishes). The queue depth is no witness: a cancelled key stays
            // queued until its old deadline and is then dropped by the worker.
            wait_for("the controller to have nothing pending", 3 * TIMEOUT, || async {
                (ctrl.metric(PENDING).await? == 0.0).then_some(())
            })
            .await;
            let needle = format!("{}/{pod} (uid ", self.namespace);
            let evicted: Vec<String> = ctrl
                .log_text()
                .lines()
                .filter(|l| l.contains("evicted pod") && l.contains(&needle))
                .map(str::to_owned)
                .collect();
            assert!(evicted.is_empty(), "the controller evicted {pod}: {evicted:?}");
        }
        assert!(!self.pod_deleted(pod).await, "pod {pod} is being deleted");
        self.assert_no_eviction_event(pod).await;
    }

    /// Asserts that `pod` got no "Marking for deletion" Event.
    pub async fn assert_no_eviction_event(&self, pod: &str) {
        let events = self.eviction_events(pod).await;
        assert!(
            !events.iter().any(|e| e == "Marking for deletion"),
            "eviction Event for {pod}: {events:?}"
        );
    }

    /// Events about cluster-scoped object `name` with `reason`, from namespace `default`:
    /// (type, note).
    pub async fn cluster_object_events(&self, name: &str, reason: &str) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), "default");
        let list = api.list(&kube::api::ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
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

async fn create_rule_object(
    client: &kube::Client,
    ar: &ApiResource,
    name: &str,
    labels: BTreeMap<String, String>,
    spec: Value,
) -> DynamicObject {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": "DeviceTaintRule",
        "metadata": {"name": name, "labels": labels},
        "spec": spec
    }))
    .expect("rule");
    Api::<DynamicObject>::all_with(client.clone(), ar)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating DeviceTaintRule {name} at {}: {e}", ar.api_version))
}

/// Labels as a selector string.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
