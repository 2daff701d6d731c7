//! X4 / D3: the ResourceSlice watch breaks and cannot resume (410 Gone), so the controller lists
//! again. A slice deleted while the watch was down must not leave its taint behind (the pending
//! eviction is cancelled, the pod is never evicted), and a taint that appeared meanwhile is acted
//! on after the re-list.
//!
//! The outage is made by a proxy between the controller and the real API server
//! (`support::proxy`): it cuts the slice watch, answers the following slice requests with 500,
//! then answers one watch with the in-stream "too old resource version" error (code 410) the API
//! server sends when a watch cannot resume. Everything else passes through.

mod support;

use std::path::Path;

use http::Method;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{DRIVER, taint, toleration},
    proxy::Proxy,
    wait_for,
};

const KEY: &str = "example.com/broken";
const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";
const PENDING: &str = "device_taint_eviction_controller_pending_evictions";
const RESTARTS: &str = "device_taint_eviction_controller_watch_restarts_total{kind=\"resourceslices\"}";

#[tokio::test]
async fn relist_drops_stale_taints_and_keeps_new_ones() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let env = TestEnv::new().await;
    let old_slice = env.unique_name("slice-a");
    env.apply_slice(&old_slice, 1, &[("gpu-0", vec![taint(KEY, "NoExecute")])])
        .await;
    // pod-0 tolerates the taint on gpu-0 for 30 s; pod-1 uses gpu-1, which no slice has yet.
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![toleration(KEY, Some(30))])
        .await;
    env.pod_with_claim("pod-1", "claim-1", "gpu-1", vec![]).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    wait_for("pod-0's eviction to be scheduled", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(1.0)).then_some(())
    })
    .await;
    let restarts_before = c.metric(RESTARTS).await.unwrap_or_default();

    // The outage: slice requests fail, the open slice watch is cut.
    proxy.fail(Method::GET, SLICES, usize::MAX);
    assert!(proxy.cut_streams(SLICES) >= 1, "no slice watch was open");

    // Meanwhile the driver replaces its pool: the slice with the tainted gpu-0 is gone, a new
    // generation has gpu-1, tainted.
    Api::<ResourceSlice>::all(env.client.clone())
        .delete(&old_slice, &DeleteParams::default())
        .await
        .expect("delete the old slice");
    let new_slice: ResourceSlice = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": env.unique_name("slice-b"), "labels": env.labels()},
        "spec": {"driver": DRIVER, "pool": {"name": env.pool(), "generation": 2, "resourceSliceCount": 1},
                 "allNodes": true, "devices": [{"name": "gpu-1", "taints": [taint(KEY, "NoExecute")]}]}
    }))
    .expect("slice");
    Api::<ResourceSlice>::all(env.client.clone())
        .patch(
            &env.unique_name("slice-b"),
            &PatchParams::apply("dte-tests").force(),
            &Patch::Apply(&new_slice),
        )
        .await
        .expect("create the new slice");

    wait_for("the controller to see the slice watch fail", TIMEOUT, || async {
        (c.metric(RESTARTS).await > Some(restarts_before)).then_some(())
    })
    .await;
    assert_eq!(
        c.metric(PENDING).await,
        Some(1.0),
        "during the outage the controller still knows only the old taint"
    );
    assert!(!env.pod_deleted("pod-1").await);

    // The watch comes back, but cannot resume from where it was: the client has to list.
    let before_relist = proxy.requests().len();
    proxy.clear_faults();
    proxy.expire_watches(SLICES, 1);

    wait_for("pod-1 to be evicted after the re-list", TIMEOUT, || async {
        env.pod_deleted("pod-1").await.then_some(())
    })
    .await;
    let events = wait_for("pod-0's eviction to be cancelled", TIMEOUT, || async {
        let e = env.eviction_events("pod-0").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Cancelling deletion".to_owned()]);
    wait_for("no pending eviction", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert!(!env.pod_deleted("pod-0").await, "pod-0 evicted by a stale taint");
    assert_eq!(
        env.eviction_events("pod-1").await,
        vec!["Marking for deletion".to_owned()]
    );

    let relisted = proxy.requests()[before_relist..]
        .iter()
        .any(|(m, p)| *m == Method::GET && p.starts_with(SLICES) && !p.contains("watch=true"));
    assert!(relisted, "the controller did not list the slices again");
    assert!(c.metric(RESTARTS).await >= Some(restarts_before + 2.0));
    wait_for("the deletion of pod-1 to be counted", TIMEOUT, || async {
        (c.metric("device_taint_eviction_controller_pod_deletions_total")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(c.stop().await, Some(0));
}
