//! Upstream scenarios against a real API server with the controller running as a process.
//! Each test has its own namespace and pool; one controller serves the whole binary.

mod support;

use support::{TIMEOUT, TestEnv, objects::taint, shared_controller, wait_for};

/// The controller shared by these tests (no leader election: it is alone).
async fn controller() {
    shared_controller(&["--leader-elect=false"]).await;
}

/// Upstream case 8, `evict-pod-resourceclaim`: a slice taint evicts the pod using the device;
/// an Event, the DisruptionTarget condition and the deletion follow.
#[tokio::test]
async fn evict_pod_resourceclaim() {
    let env = TestEnv::new().await;
    controller().await;
    env.apply_slice(&env.unique_name("slice"), 1, &[("gpu-0", vec![])])
        .await;
    env.pod_with_claim("my-pod", "my-claim", "gpu-0", vec![]).await;
    env.apply_slice(
        &env.unique_name("slice"),
        1,
        &[("gpu-0", vec![taint("example.com/broken", "NoExecute")])],
    )
    .await;
    wait_for("the pod to be evicted", TIMEOUT, || async {
        env.pod_deleted("my-pod").await.then_some(())
    })
    .await;
    let events = wait_for("the eviction event", TIMEOUT, || async {
        let e = env.eviction_events("my-pod").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Marking for deletion".to_owned()]);
}
