//! How each watch receives its initial state when the API server refuses streaming lists: this
//! file's control plane runs with the WatchList feature off, so the watch with
//! `sendInitialEvents` that the controller starts each kind with is answered 422. The controller
//! must list that kind in pages instead, sync, and evict as usual. (The streaming list itself,
//! which every other test file's controller uses, is checked in `tests/relist.rs`.)
//!
//! Against an existing cluster (`DTE_TEST_KUBECONFIG`) the feature cannot be turned off: the test
//! then checks whichever way that server answered.

mod support;

use std::path::Path;

use support::{
    TestEnv,
    controller::Controller,
    objects::taint,
    proxy::{Proxy, assert_evicted_exactly},
};

const KEY: &str = "example.com/broken";

/// What a watch of each kind the controller reads asks for first.
const KINDS: [&str; 3] = [
    "/api/v1/pods",
    "/apis/resource.k8s.io/v1/resourceclaims",
    "/apis/resource.k8s.io/v1/resourceslices",
];

#[tokio::test]
async fn a_refused_streaming_list_is_listed_in_pages() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let env = TestEnv::with_up_flags(&["--feature-gates=WatchList=false"]).await;
    env.apply_slice(
        &env.unique_name("slice"),
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")])],
    )
    .await;
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![]).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let _controller = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    assert_evicted_exactly(&[&proxy], &env.namespace, &["pod-0"]).await;

    let records = proxy.records();
    for kind in KINDS {
        let first = records
            .iter()
            .find(|r| r.path_only() == kind && r.path.contains("sendInitialEvents=true"))
            .unwrap_or_else(|| panic!("{kind} was not asked for as a streaming list: {records:#?}"));
        let refused = first.status == Some(422);
        if env.cluster.dir.is_some() {
            assert!(refused, "the WatchList feature is off, yet {first:?}");
        }
        if refused {
            assert!(
                records.iter().any(|r| r.path_only() == kind
                    && r.at >= first.at
                    && !r.path.contains("watch=true")
                    && r.succeeded()),
                "{kind} was not listed after its streaming list was refused: {records:#?}"
            );
            assert_eq!(
                records
                    .iter()
                    .filter(|r| r.path_only() == kind && r.path.contains("sendInitialEvents=true"))
                    .count(),
                1,
                "{kind}: a refused streaming list is not asked for again"
            );
        }
    }
}
