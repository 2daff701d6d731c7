//! Upstream PodGroup cases (KEP-5729) against a real API server that serves PodGroups: claims
//! reserved for a `scheduling.k8s.io` PodGroup count for the pods of that group
//! (`spec.schedulingGroup.podGroupName`).
//!
//! A self-started control plane gets the gates and API version Kubernetes 1.37 needs for that
//! (`DRAWorkloadResourceClaims`, `GenericWorkload`, `scheduling.k8s.io/v1beta1`). On an existing
//! cluster (`DTE_TEST_KUBECONFIG`) that does not serve PodGroups, and on older minors
//! (`CONTROLPLANE_K8S_VERSION`), every test is skipped with the reason on stderr.

mod support;

use k8s_openapi::api::{core::v1::Pod, resource::v1::ResourceClaim, scheduling::v1beta1::PodGroup};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{
    TestEnv,
    controller::Controller,
    objects::{DRIVER, taint},
    shared_controller, wait_for,
};

/// `up.sh` flags: KWOK plays node-1's kubelet, and PodGroups are served and honoured (1.37).
const UP_FLAGS: &[&str] = &[
    "--kwok-nodes=1",
    "--feature-gates=DRAWorkloadResourceClaims=true,GenericWorkload=true",
    "--runtime-config=scheduling.k8s.io/v1beta1=true",
];

const KEY: &str = "example.com/broken";
const GROUP: &str = "my-pod-group";
const GROUP_CLAIM: &str = "group-claim";
/// Long enough for Completed: the status is refreshed at most every 10 s.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// The test's environment, or `None` (with the reason on stderr) where PodGroups are not served.
async fn podgroup_env() -> Option<TestEnv> {
    let older = std::env::var("CONTROLPLANE_K8S_VERSION").is_ok_and(|v| !v.is_empty() && v != "1.37");
    if older && support::existing_cluster_kubeconfig().is_none() {
        eprintln!("skipped: PodGroup claims need Kubernetes 1.37 (scheduling.k8s.io/v1beta1)");
        return None;
    }
    let env = TestEnv::with_up_flags(UP_FLAGS).await;
    if !serves_podgroups(&env).await {
        eprintln!(
            "skipped: the cluster does not serve scheduling.k8s.io/v1beta1 podgroups (feature gates \
             DRAWorkloadResourceClaims and GenericWorkload, runtime config scheduling.k8s.io/v1beta1)"
        );
        return None;
    }
    Some(env)
}

async fn serves_podgroups(env: &TestEnv) -> bool {
    env.client
        .list_api_group_resources("scheduling.k8s.io/v1beta1")
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == "podgroups"))
}

/// The controller shared by these tests; None on a cluster with a deployed controller.
async fn controller() -> Option<&'static Controller> {
    shared_controller(&["--leader-elect=false"]).await
}

/// Creates PodGroup `name` (basic scheduling policy) and returns it.
async fn create_pod_group(env: &TestEnv, name: &str) -> PodGroup {
    let group: PodGroup = serde_json::from_value(json!({
        "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
        "metadata": {"name": name},
        "spec": {"schedulingPolicy": {"basic": {}}}
    }))
    .expect("pod group");
    env.api::<PodGroup>()
        .create(&PostParams::default(), &group)
        .await
        .expect("create pod group")
}

/// Creates a pod on node-1 that belongs to PodGroup `group` and uses `claim` (by name), if any.
async fn create_member(env: &TestEnv, name: &str, group: &str, claim: Option<&str>) -> Pod {
    let mut container = json!({"name": "c", "image": "registry.k8s.io/pause:3.10"});
    let mut spec = json!({
        "nodeName": "node-1",
        "schedulingGroup": {"podGroupName": group},
        "terminationGracePeriodSeconds": 0
    });
    if let Some(claim) = claim {
        container["resources"] = json!({"claims": [{"name": "gpu"}]});
        spec["resourceClaims"] = json!([{"name": "gpu", "resourceClaimName": claim}]);
    }
    spec["containers"] = json!([container]);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec
    }))
    .expect("pod");
    let pod = env
        .api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let kept = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_group.as_ref())
        .and_then(|g| g.pod_group_name.as_deref());
    assert_eq!(kept, Some(group), "the API server dropped spec.schedulingGroup");
    pod
}

/// Creates claim `name` allocated `device` of the test's pool and reserved for `group` only, as
/// the scheduler writes a PodGroup's claim.
async fn create_group_claim(env: &TestEnv, name: &str, device: &str, group: &PodGroup) -> ResourceClaim {
    let claim: ResourceClaim = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}}
    }))
    .expect("claim");
    let api = env.api::<ResourceClaim>();
    api.create(&PostParams::default(), &claim)
        .await
        .expect("create claim");
    let status = json!({"status": {
        "allocation": {"devices": {"results": [
            {"request": "gpu", "driver": DRIVER, "pool": env.pool(), "device": device}]}},
        "reservedFor": [{"apiGroup": "scheduling.k8s.io", "resource": "podgroups",
                         "name": group.metadata.name, "uid": group.metadata.uid}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("claim status")
}

/// Waits for the rule's `EvictionInProgress` condition to have `reason`; returns its message.
async fn wait_condition(env: &TestEnv, rule: &str, reason: &str) -> String {
    wait_for(&format!("rule condition {reason}"), STATUS_TIMEOUT, || async {
        env.rule_condition(rule)
            .await
            .filter(|(r, _)| r == reason)
            .map(|(_, m)| m)
    })
    .await
}

/// The slice of the test's pool with devices `gpu-0` and `w` (the witness's), each with `taints`.
async fn apply_slice(env: &TestEnv, name: &str, gpu: Vec<Value>, witness: Vec<Value>) {
    env.apply_slice(name, 1, &[("gpu-0", gpu), ("w", witness)]).await;
}

/// Upstream case 9, `evict-pod-resourceclaim-podgroup`: a claim reserved for a PodGroup is
/// tainted; every member pod that uses it is evicted, and the rule counts them.
#[tokio::test]
async fn evict_pod_resourceclaim_podgroup() {
    let Some(env) = podgroup_env().await else { return };
    let ctrl = controller().await;
    apply_slice(&env, &env.unique_name("slice"), vec![], vec![]).await;
    let group = create_pod_group(&env, GROUP).await;
    create_member(&env, "member-0", GROUP, Some(GROUP_CLAIM)).await;
    create_member(&env, "member-1", GROUP, Some(GROUP_CLAIM)).await;
    create_group_claim(&env, GROUP_CLAIM, "gpu-0", &group).await;
    let rule = env.unique_name("rule");
    env.create_rule(&rule, Some("gpu-0"), taint(KEY, "NoExecute"))
        .await;
    env.wait_evicted("member-0").await;
    env.wait_evicted("member-1").await;
    for pod in ["member-0", "member-1"] {
        assert_eq!(
            env.eviction_events(pod).await,
            vec!["Marking for deletion".to_owned()],
            "events of {pod}"
        );
    }
    if ctrl.is_some() {
        assert_eq!(
            wait_condition(&env, &rule, "Completed").await,
            "2 pods evicted since starting the controller."
        );
    }
}

/// Upstream case 10, `no-evict-pod-in-podgroup-without-claim`: a member of the PodGroup that does
/// not reference the group's claim stays while the member that does is evicted.
#[tokio::test]
async fn no_evict_pod_in_podgroup_without_claim() {
    let Some(env) = podgroup_env().await else { return };
    controller().await;
    let slice = env.unique_name("slice");
    apply_slice(&env, &slice, vec![], vec![]).await;
    let group = create_pod_group(&env, GROUP).await;
    create_member(&env, "member", GROUP, Some(GROUP_CLAIM)).await;
    create_member(&env, "bystander", GROUP, None).await;
    create_group_claim(&env, GROUP_CLAIM, "gpu-0", &group).await;
    env.witness(vec![]).await;
    apply_slice(
        &env,
        &slice,
        vec![taint(KEY, "NoExecute")],
        vec![taint(KEY, "NoExecute")],
    )
    .await;
    env.wait_evicted("member").await;
    env.assert_spared("bystander").await;
}

/// Upstream case 18, `none-podgroup-rule`: a rule with effect None evicts nothing and its report
/// counts the PodGroup's member pods that would be evicted.
#[tokio::test]
async fn none_podgroup_rule() {
    let Some(env) = podgroup_env().await else { return };
    controller().await;
    let slice = env.unique_name("slice");
    apply_slice(&env, &slice, vec![], vec![]).await;
    let group = create_pod_group(&env, GROUP).await;
    create_member(&env, "member-0", GROUP, Some(GROUP_CLAIM)).await;
    create_member(&env, "member-1", GROUP, Some(GROUP_CLAIM)).await;
    create_group_claim(&env, GROUP_CLAIM, "gpu-0", &group).await;
    // Once the witness is evicted, the controller has seen the members and the claim.
    env.witness(vec![]).await;
    apply_slice(&env, &slice, vec![], vec![taint(KEY, "NoExecute")]).await;
    env.assert_spared("member-0").await;
    let rule = env.unique_name("rule");
    env.create_rule(&rule, Some("gpu-0"), taint(KEY, "None")).await;
    assert_eq!(
        wait_condition(&env, &rule, "NoEffect").await,
        "1 published device selected. 1 allocated device selected. 2 pods would be evicted in 1 \
         namespace if the effect was NoExecute. This information will not be updated again. \
         Recreate the DeviceTaintRule to trigger an update."
    );
    for pod in ["member-0", "member-1"] {
        assert!(!env.pod_deleted(pod).await, "{pod} is being deleted");
        env.assert_no_eviction_event(pod).await;
    }
}

/// Kept out of the PodGroup: a pod that uses the group's claim by name without belonging to the
/// group is not a consumer of the claim, and is not evicted through it.
#[tokio::test]
async fn no_evict_pod_outside_podgroup() {
    let Some(env) = podgroup_env().await else { return };
    controller().await;
    let slice = env.unique_name("slice");
    apply_slice(&env, &slice, vec![], vec![]).await;
    let group = create_pod_group(&env, GROUP).await;
    create_pod_group(&env, "other-group").await;
    create_member(&env, "member", GROUP, Some(GROUP_CLAIM)).await;
    create_member(&env, "other-member", "other-group", Some(GROUP_CLAIM)).await;
    create_group_claim(&env, GROUP_CLAIM, "gpu-0", &group).await;
    env.witness(vec![]).await;
    apply_slice(
        &env,
        &slice,
        vec![taint(KEY, "NoExecute")],
        vec![taint(KEY, "NoExecute")],
    )
    .await;
    env.wait_evicted("member").await;
    env.assert_spared("other-member").await;
}
