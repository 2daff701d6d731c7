//! D9 `--dry-run`, D7 `--eviction-mode=evict` and D12 (priority order when evictions wait,
//! `--protected-priority`) against a real API server.
//!
//! Each test starts its own controller, so they must not overlap (both would act on every
//! tainted pod): each holds [`SERIAL`].

mod support;

use std::{path::Path, time::Duration};

use http::Method;
use k8s_openapi::api::{
    core::v1::Pod, events::v1::Event, policy::v1::PodDisruptionBudget, scheduling::v1::PriorityClass,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::taint,
    proxy::{Proxy, Record},
    wait_for,
};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const KEY: &str = "example.com/broken";
const DELETIONS: &str = "device_taint_eviction_controller_pod_deletions_total";

async fn taint_gpu0(env: &TestEnv, slice: &str) {
    env.apply_slice(slice, 1, &[("gpu-0", vec![taint(KEY, "NoExecute")])])
        .await;
}

/// D9: the full decision, a "would" Event, the dry-run metric; the pod is left alone.
#[tokio::test]
async fn dry_run_touches_no_pod() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(&slice, 1, &[("gpu-0", vec![])]).await;
    env.pod_with_claim("my-pod", "my-claim", "gpu-0", vec![]).await;
    let c = Controller::start(env.kubeconfig(), &["--leader-elect=false", "--dry-run"]).await;
    taint_gpu0(&env, &slice).await;

    wait_for("the dry-run metric", TIMEOUT, || async {
        (c.metric("device_taint_eviction_controller_dry_run_evictions_total")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    let events = wait_for("the dry-run event", TIMEOUT, || async {
        let e = env.eviction_events("my-pod").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(
        events,
        vec!["Would mark for deletion (dry run: the pod is not touched)".to_owned()]
    );
    let pod = env
        .api::<Pod>()
        .get("my-pod")
        .await
        .expect("the pod still exists");
    assert!(
        pod.metadata.deletion_timestamp.is_none(),
        "dry run deleted the pod"
    );
    let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions.iter().all(|c| c.type_ != "DisruptionTarget"),
        "dry run wrote a DisruptionTarget condition: {conditions:?}"
    );
    assert_eq!(c.metric(DELETIONS).await, Some(0.0));
    assert!(c.log_text().contains("dry run: would evict pod"));
    assert_eq!(c.stop().await, Some(0));
}

/// D7: with `--eviction-mode=evict` a PodDisruptionBudget holds the eviction back (the API server
/// answers 429, retried with backoff); once the budget is gone the pod is evicted.
///
/// No kube-controller-manager runs here, so the budget's status is never computed: the Eviction
/// API refuses with 429 because the budget's `observedGeneration` lags its generation. The pod is
/// marked Running first, as a kubelet would, because the Eviction API ignores budgets for Pending
/// pods.
#[tokio::test]
async fn evict_mode_respects_disruption_budget() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(&slice, 1, &[("gpu-0", vec![])]).await;
    env.pod_with_claim("my-pod", "my-claim", "gpu-0", vec![]).await;
    let pods = env.api::<Pod>();
    pods.patch(
        "my-pod",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "gpu-user"}}})),
    )
    .await
    .expect("label the pod");
    pods.patch_status(
        "my-pod",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("mark the pod running");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "keep-one"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "gpu-user"}}}
    }))
    .expect("pdb");
    env.api::<PodDisruptionBudget>()
        .create(&PostParams::default(), &pdb)
        .await
        .expect("create pdb");

    let c = Controller::start(
        env.kubeconfig(),
        &["--leader-elect=false", "--eviction-mode=evict"],
    )
    .await;
    taint_gpu0(&env, &slice).await;

    let blocked = "device_taint_eviction_controller_eviction_blocked_total";
    wait_for("the eviction to be refused twice", TIMEOUT, || async {
        (c.metric(blocked).await >= Some(2.0)).then_some(())
    })
    .await;
    assert!(!env.pod_deleted("my-pod").await, "the budget did not hold");
    assert!(
        c.log_text()
            .contains("eviction refused for now (PodDisruptionBudget); will retry"),
        "the log shows no retry:\n{}",
        c.log_text()
    );
    assert_eq!(c.metric(DELETIONS).await, Some(0.0));

    env.api::<PodDisruptionBudget>()
        .delete("keep-one", &DeleteParams::default())
        .await
        .expect("delete pdb");
    wait_for("the pod to be evicted", TIMEOUT, || async {
        env.pod_deleted("my-pod").await.then_some(())
    })
    .await;
    wait_for("the deletion metric", TIMEOUT, || async {
        (c.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    let events = env.eviction_events("my-pod").await;
    assert!(
        events.iter().any(|e| e == "Marking for deletion"),
        "events: {events:?}"
    );
    assert_eq!(c.stop().await, Some(0));
}

/// D12: pods of three priorities tainted at once with `--max-evictions-per-second=2` are deleted
/// lowest priority first (the order of the DELETEs at a proxy in front of the API server); a pod
/// at or above `--protected-priority` is not touched, gets one Warning Event, and the rule's
/// status counts it.
///
/// Priorities come from PriorityClasses: the API server's Priority admission plugin sets
/// `spec.priority` from `priorityClassName` (a pod cannot set it itself). The rule exists before
/// the controller starts, so every pod is due by the time its workers start.
#[tokio::test]
async fn paced_evictions_go_lowest_priority_first_and_protected_pods_stay() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    // Created in an order that is neither the priority order nor the name order.
    let pods = [
        ("p-mid", 500, "gpu-0"),
        ("p-protected", 2000, "gpu-1"),
        ("p-high", 900, "gpu-2"),
        ("p-low", -10, "gpu-3"),
    ];
    env.apply_slice(&slice, 1, &pods.map(|(_, _, device)| (device, vec![])))
        .await;
    for (pod, priority, device) in pods {
        create_pod_with_priority(&env, pod, priority, device).await;
    }
    let rule = env.unique_name("rule");
    env.create_rule(&rule, None, taint(KEY, "NoExecute")).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(
        &proxy.kubeconfig,
        &[
            "--leader-elect=false",
            "--max-evictions-per-second=2",
            "--protected-priority=1000",
        ],
    )
    .await;
    let evicted = ["p-low", "p-mid", "p-high"];
    wait_for("the proxy to record three accepted DELETEs", TIMEOUT, || async {
        evicted
            .iter()
            .all(|pod| !proxy.deletions_of(&env.namespace, pod).is_empty())
            .then_some(())
    })
    .await;
    // A worker's first request for a pod (its status PATCH) goes out right after it took the
    // pod's token, so the first requests show the order in which tokens went; the DELETEs that
    // follow a PATCH may pass each other on a loaded machine.
    let firsts = first_pod_requests(&proxy);
    let order: Vec<&str> = firsts.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        order,
        evicted,
        "tokens by priority, lowest first: {firsts:?}; DELETEs: {:?}",
        pod_deletes(&proxy)
    );
    let spread = firsts[2].1.duration_since(firsts[0].1).expect("in order");
    assert!(
        spread >= Duration::from_millis(500),
        "two tokens at 2/s take a second, minus request latencies: {spread:?}"
    );

    let told = wait_for("the protected pod's Event", TIMEOUT, || async {
        let events = protected_events(&env, "p-protected").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let (reason, message) = wait_for("the rule status to count the protected pod", TIMEOUT, || async {
        env.rule_condition(&rule).await.filter(|(_, message)| {
            message.contains("1 pod is not evicted because its priority is protected (--protected-priority).")
                && message.contains("3 pods evicted since starting the controller.")
        })
    })
    .await;
    assert_eq!(reason, "PodsPendingEviction", "{message}");
    assert_eq!(
        told,
        vec![(
            "Warning".to_owned(),
            format!(
                "Not evicted despite the NoExecute taint (DeviceTaintRule {rule}): priority 2000 is at or \
                 above --protected-priority=1000. Move or delete the pod by hand."
            )
        )],
        "exactly one Event"
    );
    assert_eq!(
        c.metric("device_taint_eviction_controller_evictions_protected_total")
            .await,
        Some(1.0)
    );
    assert!(
        proxy
            .records()
            .iter()
            .all(|r| !r.is_for_pod(&env.namespace, "p-protected")),
        "no request for the protected pod"
    );
    assert!(!env.pod_deleted("p-protected").await);
    assert!(
        c.log_text()
            .contains("pod is protected by --protected-priority: not evicted automatically"),
        "{}",
        c.log_text()
    );
    assert_eq!(c.metric(DELETIONS).await, Some(3.0));
    assert_eq!(
        protected_events(&env, "p-protected").await.len(),
        1,
        "still one Event"
    );
    assert_eq!(c.stop().await, Some(0));
}

/// Creates a PriorityClass of value `priority` and a scheduled pod `pod` of that class using its
/// own claim `claim-<pod>`, allocated `device`; checks that the API server set `spec.priority`.
async fn create_pod_with_priority(env: &TestEnv, pod: &str, priority: i32, device: &str) {
    let class = env.unique_name(pod);
    let priority_class: PriorityClass = serde_json::from_value(json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": class, "labels": env.labels()},
        "value": priority,
    }))
    .expect("priority class");
    kube::Api::<PriorityClass>::all(env.client.clone())
        .create(&PostParams::default(), &priority_class)
        .await
        .expect("create priority class");
    let manifest: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod},
        "spec": {"nodeName": "node-1", "priorityClassName": class,
                 "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"claims": [{"name": "gpu"}]}}],
                 "resourceClaims": [{"name": "gpu", "resourceClaimName": format!("claim-{pod}")}],
                 "terminationGracePeriodSeconds": 0}
    }))
    .expect("pod");
    // The Priority admission plugin reads PriorityClasses from its own cache, which may not have
    // the new class yet: its "no PriorityClass with name" refusal is retried, anything else fails.
    let created: Pod = wait_for("the API server to know the PriorityClass", TIMEOUT, || async {
        match env.api::<Pod>().create(&PostParams::default(), &manifest).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("no PriorityClass with name") =>
            {
                None
            }
            Err(error) => panic!("create pod {pod}: {error}"),
        }
    })
    .await;
    assert_eq!(
        created.spec.as_ref().and_then(|s| s.priority),
        Some(priority),
        "the Priority admission plugin set spec.priority"
    );
    env.create_allocated_claim(&format!("claim-{pod}"), device, vec![], &created)
        .await;
}

/// Every DELETE of a pod the proxy saw, in order of arrival: (pod name, when).
/// Each pod that got a request, with the time of its first one, in that order.
fn first_pod_requests(proxy: &Proxy) -> Vec<(String, std::time::SystemTime)> {
    let mut firsts: Vec<(String, std::time::SystemTime)> = Vec::new();
    for r in proxy.records().into_iter().filter(Record::is_for_a_pod) {
        let name = r.path_only().split('/').nth(6).unwrap_or_default().to_owned();
        if !firsts.iter().any(|(seen, _)| *seen == name) {
            firsts.push((name, r.at));
        }
    }
    firsts
}

fn pod_deletes(proxy: &Proxy) -> Vec<(String, std::time::SystemTime)> {
    proxy
        .records()
        .into_iter()
        .filter(|r| r.method == Method::DELETE && r.is_for_a_pod())
        .map(|r| {
            let name = r.path_only().rsplit('/').next().unwrap_or_default().to_owned();
            (name, r.at)
        })
        .collect()
}

/// (type, note) of the `EvictionProtectedByPriority` Events about `pod`.
async fn protected_events(env: &TestEnv, pod: &str) -> Vec<(String, String)> {
    let api: kube::Api<Event> = env.api();
    api.list(&kube::api::ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
        .filter(|e| e.reason.as_deref() == Some("EvictionProtectedByPriority"))
        .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}
