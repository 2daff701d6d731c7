//! D9 `--dry-run` and D7 `--eviction-mode=evict` against a real API server.
//!
//! Each test starts its own controller, so they must not overlap (both would act on every
//! tainted pod): each holds [`SERIAL`].

mod support;

use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TIMEOUT, TestEnv, controller::Controller, objects::taint, wait_for};
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
