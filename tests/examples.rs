//! The walkthrough of `examples/README.md`, step by step, with the files of `examples/` as they
//! are: a real kube-scheduler allocates the devices through the upstream resource claim
//! controller, the controller under test evicts. What the README quotes (condition messages) is
//! checked against what the cluster says, so the README stays true.
//!
//! The examples have fixed names (DeviceClass `gpu.example.com`, pool `node-1`, rules
//! `gpu-0-unhealthy*`), so this file holds a single test.

mod support;

use std::path::Path;

use k8s_openapi::api::{core::v1::Node, events::v1::Event, resource::v1::ResourceClaim};
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    discovery::{self, ApiResource, Scope},
};
use serde_json::{Value, json};
use support::{TIMEOUT, TestEnv, wait_for};

const RULE: &str = "gpu-0-unhealthy";
const DRY_RUN_RULE: &str = "gpu-0-unhealthy-dry-run";
const PENDING: &str = "1 pod needs to be evicted in 1 namespace.";

/// The text of `examples/<file>`.
fn example_text(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One manifest of `examples/`, parsed.
fn example(file: &str) -> Value {
    parse(file, &example_text(file))
}

fn parse(file: &str, yaml: &str) -> Value {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("examples/{file} is not one YAML document: {e}"))
}

/// Asserts that `examples/README.md` quotes `text` (a condition message the cluster showed);
/// line breaks and indentation in the README count as single spaces.
fn assert_readme_quotes(text: &str) {
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = words(&example_text("README.md"));
    assert!(
        readme.contains(&words(text)),
        "examples/README.md does not quote what the cluster says: {text:?}"
    );
}

/// Applies a manifest the way `kubectl apply` would, in the test's namespace when the kind is
/// namespaced. DeviceTaintRules go to the version the server prefers (the README's `sed` for 1.35
/// and 1.36). Cluster-scoped objects also get the test's labels, so that they are deleted with the
/// test environment even when the test fails halfway.
async fn apply(env: &TestEnv, mut manifest: Value) -> DynamicObject {
    let (resource, scope) = resource_of(env, &manifest).await;
    manifest["apiVersion"] = json!(resource.api_version);
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("manifest has a name")
        .to_owned();
    let api: Api<DynamicObject> = match scope {
        Scope::Namespaced => Api::namespaced_with(env.client.clone(), &env.namespace, &resource),
        Scope::Cluster => {
            for (key, value) in env.labels() {
                manifest["metadata"]["labels"][key] = json!(value);
            }
            Api::all_with(env.client.clone(), &resource)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply("dte-examples-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {} {name}: {e}", resource.kind))
}

/// Deletes what a manifest describes and waits until it is gone.
async fn delete(env: &TestEnv, manifest: &Value) {
    let (resource, scope) = resource_of(env, manifest).await;
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("manifest has a name");
    let api: Api<DynamicObject> = match scope {
        Scope::Namespaced => Api::namespaced_with(env.client.clone(), &env.namespace, &resource),
        Scope::Cluster => Api::all_with(env.client.clone(), &resource),
    };
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting {} {name}: {e}", resource.kind));
    wait_for(
        &format!("{} {name} to be gone", resource.kind),
        TIMEOUT,
        || async { api.get_opt(name).await.expect("get").is_none().then_some(()) },
    )
    .await;
}

async fn resource_of(env: &TestEnv, manifest: &Value) -> (ApiResource, Scope) {
    let kind = manifest["kind"].as_str().expect("manifest has a kind");
    if kind == "DeviceTaintRule" {
        let resource = device_taint_eviction::k8s::discover_device_taint_rule(&env.client)
            .await
            .expect("discovery")
            .expect("the cluster serves DeviceTaintRules");
        return (resource, Scope::Cluster);
    }
    let api_version = manifest["apiVersion"]
        .as_str()
        .expect("manifest has an apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(&env.client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the cluster does not serve {api_version} {kind}: {e}"));
    (resource, capabilities.scope)
}

/// A node for the example slice: a fresh KWOK node on the self-started control plane (its pods
/// run and, once evicted, go), else the first node that takes pods (kind's worker).
async fn node_for_the_slice(env: &TestEnv) -> String {
    if env.cluster.dir.is_some() {
        return env.create_kwok_node("node-1").await;
    }
    let nodes = Api::<Node>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    nodes
        .items
        .into_iter()
        .find(|n| {
            let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
            !taints.is_some_and(|t| t.iter().any(|t| t.effect == "NoSchedule"))
        })
        .and_then(|n| n.metadata.name)
        .expect("a node that takes pods")
}

/// The device allocated to pod `pod`'s claim, once the scheduler has allocated and reserved it.
async fn allocated_device(env: &TestEnv, pod: &str) -> String {
    let claims: Api<ResourceClaim> = env.api();
    wait_for(&format!("a device for pod {pod}"), TIMEOUT, || async {
        let claims = claims.list(&ListParams::default()).await.ok()?;
        claims.items.into_iter().find_map(|claim| {
            let status = claim.status?;
            status.reserved_for?.iter().find(|r| r.name == pod)?;
            let results = status.allocation?.devices?.results?;
            results.first().map(|r| r.device.clone())
        })
    })
    .await
}

/// The rule's `EvictionInProgress` condition as (status, reason, message), once it reports on
/// the rule's current generation.
async fn rule_condition(env: &TestEnv, name: &str) -> Option<(String, String, String)> {
    let resource = device_taint_eviction::k8s::discover_device_taint_rule(&env.client)
        .await
        .ok()??;
    let rule = Api::<DynamicObject>::all_with(env.client.clone(), &resource)
        .get_opt(name)
        .await
        .ok()??;
    let generation = rule.metadata.generation?;
    let condition = rule.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "EvictionInProgress" && c["observedGeneration"] == json!(generation))?
        .clone();
    let text = |field: &str| condition[field].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

async fn wait_for_condition(env: &TestEnv, rule: &str, reason: &str, message: &str) -> String {
    wait_for(
        &format!("rule {rule} to report {reason}: {message:?}"),
        TIMEOUT,
        || async {
            let (status, r, m) = rule_condition(env, rule).await?;
            (r == reason && m == message).then_some(status)
        },
    )
    .await
}

/// When the controller recorded "Marking for deletion" for `pod` (epoch seconds).
async fn marking_time(env: &TestEnv, pod: &str) -> i64 {
    let events: Api<Event> = env.api();
    let events = events.list(&ListParams::default()).await.expect("list events");
    events
        .items
        .into_iter()
        .find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                && e.reason.as_deref() == Some("DeviceTaintManagerEviction")
                && e.note.as_deref() == Some("Marking for deletion")
        })
        .and_then(|e| e.event_time)
        .unwrap_or_else(|| panic!("no \"Marking for deletion\" Event with a time for {pod}"))
        .0
        .as_second()
}

/// Step 1 of the README: a node with four GPUs, a pod using one.
async fn step_1_a_pod_using_a_gpu(env: &TestEnv) {
    let node = node_for_the_slice(env).await;
    apply(env, example("deviceclass.yaml")).await;
    let mut slice = example("resourceslice.yaml");
    slice["spec"]["nodeName"] = json!(node);
    apply(env, slice).await;
    apply(env, example("claim-template.yaml")).await;
    apply(env, example("pod.yaml")).await;
    assert_eq!(
        allocated_device(env, "gpu-workload").await,
        "gpu-0",
        "the README says a fresh pool hands out gpu-0 first"
    );
    env.wait_pod_running("gpu-workload").await;
}

/// Step 2: what would happen? Effect None: a report, no eviction.
async fn step_2_a_none_rule_reports(env: &TestEnv) {
    let dry_run = example("devicetaintrule-none.yaml");
    apply(env, dry_run.clone()).await;
    let report = "1 published device selected. 1 allocated device selected. 1 pod would be evicted in 1 \
                  namespace if the effect was NoExecute. This information will not be updated again. \
                  Recreate the DeviceTaintRule to trigger an update.";
    let status = wait_for_condition(env, DRY_RUN_RULE, "NoEffect", report).await;
    assert_eq!(status, "False");
    assert_readme_quotes(report);
    delete(env, &dry_run).await;
    assert!(
        !env.pod_deleted("gpu-workload").await,
        "a None rule evicted the pod"
    );
    env.assert_no_eviction_event("gpu-workload").await;
}

/// Step 3: gpu-0 reports ECC errors, taint it. The pod goes at once, with an Event and the
/// DisruptionTarget condition; the rule reports completion.
async fn step_3_a_noexecute_rule_evicts(env: &TestEnv) {
    let rule = example("devicetaintrule-noexecute.yaml");
    apply(env, rule.clone()).await;
    wait_for("gpu-workload to be evicted", TIMEOUT, || async {
        env.pod_deleted("gpu-workload").await.then_some(())
    })
    .await;
    // Read before the pod is gone (when it still exists).
    if let Some((status, reason, _)) = env.disruption_target("gpu-workload").await {
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "DeletionByDeviceTaintManager")
        );
    }
    let events = env.eviction_events("gpu-workload").await;
    assert_eq!(events, ["Marking for deletion"]);
    let done = "1 pod evicted since starting the controller.";
    let status = wait_for_condition(env, RULE, "Completed", done).await;
    assert_eq!(status, "False");
    assert_readme_quotes(&format!("message: {done}"));
    delete(env, &rule).await;
    // KWOK, playing the node's kubelet, ends the pod's graceful termination: it is gone. On kind,
    // the pod (which step 4 creates again) is not left to finish its grace period.
    env.wait_evicted("gpu-workload").await;
    if !env.kwok() {
        env.delete_pod_now("gpu-workload").await;
    }
}

/// Step 4: tolerations of 60 seconds and forever. The whole pool is tainted (the README drops the
/// `device:` line of the rule).
async fn step_4_tolerations(env: &TestEnv) {
    for file in [
        "claim-template-tolerating-60s.yaml",
        "claim-template-tolerating-forever.yaml",
        "pod.yaml",
        "pod-tolerating-60s.yaml",
        "pod-tolerating-forever.yaml",
    ] {
        apply(env, example(file)).await;
    }
    for pod in [
        "gpu-workload",
        "gpu-workload-tolerating-60s",
        "gpu-workload-tolerating-forever",
    ] {
        allocated_device(env, pod).await;
    }
    let text = example_text("devicetaintrule-noexecute.yaml");
    let pool_rule_text: String = text
        .lines()
        .filter(|l| !l.contains("device: gpu-0"))
        .flat_map(|l| [l, "\n"])
        .collect();
    assert_ne!(
        pool_rule_text, text,
        "the rule has no `device: gpu-0` line to drop"
    );
    let applied = apply(env, parse("devicetaintrule-noexecute.yaml", &pool_rule_text)).await;
    let time_added = support::objects::seconds(&applied.data["spec"]["taint"]["timeAdded"]);

    env.wait_evicted("gpu-workload").await;
    let pending = format!("{PENDING} 1 pod evicted since starting the controller.");
    wait_for_condition(env, RULE, "PodsPendingEviction", &pending).await;
    assert_readme_quotes(PENDING);
    assert_readme_quotes(" 1 pod evicted since starting the controller.");

    wait_for(
        "gpu-workload-tolerating-60s to be evicted",
        std::time::Duration::from_secs(100),
        || async { env.pod_deleted("gpu-workload-tolerating-60s").await.then_some(()) },
    )
    .await;
    env.wait_evicted("gpu-workload-tolerating-60s").await;
    let marked_at = marking_time(env, "gpu-workload-tolerating-60s").await;
    assert!(
        (time_added + 60..=time_added + 70).contains(&marked_at),
        "gpu-workload-tolerating-60s was marked for deletion at timeAdded{:+}s, expected +60s",
        marked_at - time_added
    );
    let done = "2 pods evicted since starting the controller.";
    wait_for_condition(env, RULE, "Completed", done).await;
    assert_readme_quotes(done);
    assert!(
        !env.pod_deleted("gpu-workload-tolerating-forever").await,
        "the pod tolerating forever was evicted"
    );
    env.assert_no_eviction_event("gpu-workload-tolerating-forever")
        .await;
    delete(env, &example("devicetaintrule-noexecute.yaml")).await;
}

#[tokio::test]
async fn the_examples_walkthrough_holds() {
    let env = TestEnv::with_up_flags(&[
        "--with-scheduler",
        "--controllers=resourceclaim-controller",
        "--kwok-nodes=0",
    ])
    .await;
    support::shared_controller(&["--leader-elect=false"]).await;

    step_1_a_pod_using_a_gpu(&env).await;
    step_2_a_none_rule_reports(&env).await;
    step_3_a_noexecute_rule_evicts(&env).await;
    step_4_tolerations(&env).await;
}
