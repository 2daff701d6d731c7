//! X4 / D3: the ResourceSlice watch breaks and cannot resume (410 Gone), so the controller lists
//! again. A slice deleted while the watch was down must not leave its taint behind (the pending
//! eviction is cancelled, the pod is never evicted), and a taint that appeared meanwhile is acted
//! on after the re-list.
//!
//! X1: a pod deleted and recreated under the same name (new UID) while the pod and claim
//! watches are down: the controller never sees the DELETE, only a re-list with the new pod. The
//! old pod's deadline must not evict the new one; the new one is evicted once, at its own
//! (later) deadline.
//!
//! The outage is made by a proxy between the controller and the real API server
//! (`support::proxy`): it cuts the slice watch, answers the following slice requests with 500,
//! then answers one watch with the in-stream "too old resource version" error (code 410) the API
//! server sends when a watch cannot resume. Everything else passes through.

mod support;

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use http::Method;
use k8s_openapi::api::{
    core::v1::Pod,
    resource::v1::{ResourceClaim, ResourceSlice},
};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{DRIVER, PENDING, WITNESS, taint, toleration},
    proxy::{Proxy, is_list},
    wait_for,
};

const KEY: &str = "example.com/broken";
const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";
const RESTARTS: &str = "device_taint_eviction_controller_watch_restarts_total{kind=\"resourceslices\"}";

const PODS: &str = "/api/v1/pods";
const CLAIMS: &str = "/apis/resource.k8s.io/v1/resourceclaims";
const POD_RESTARTS: &str = "device_taint_eviction_controller_watch_restarts_total{kind=\"pods\"}";

/// Seconds pod-0 and the witness tolerate their taints in the slice test: short enough that
/// pod-0's old deadline passes inside the test.
const TOLERATE: i64 = 15;
/// Time a re-list and what follows need before a deadline; with less left, a test is
/// inconclusive (a slow setup, not a wrong controller).
const MARGIN: i64 = 4;
/// X1: what the old pod tolerates, what the new pod tolerates, how late after its deadline the
/// new pod may be deleted (seconds). Between the two deadlines the watches come back from the
/// outage (after the watcher's backoff, which grew while every list failed), re-list, and the
/// witness goes: 13 s proved too little on a loaded machine, hence 28.
const OLD: i64 = 12;
const NEW: i64 = 40;
const SLACK: i64 = 10;

/// Each test runs a controller of its own without leader election; two at once would both act
/// on every pod, so the tests of this file take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seconds since the epoch now.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Each kind's initial state comes from one streaming list, not from pages, and that list is a
/// consistent read: no `resourceVersion=0`, which the API server would serve from a watch cache
/// however far behind etcd. (A server that refuses streaming lists is `tests/initial_list.rs`.)
#[tokio::test]
async fn initial_state_is_one_consistent_streaming_list() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let _c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let records = proxy.records();
    for kind in [PODS, CLAIMS, SLICES] {
        let streams: Vec<_> = records
            .iter()
            .filter(|r| r.path_only() == kind && r.path.contains("sendInitialEvents=true"))
            .collect();
        assert_eq!(streams.len(), 1, "{kind}: {records:#?}");
        let stream = streams[0];
        let query: Vec<&str> = stream.path.split(['?', '&']).collect();
        assert!(!query.contains(&"resourceVersion=0"), "{stream:?}");
        assert!(query.contains(&"resourceVersionMatch=NotOlderThan"), "{stream:?}");
        if stream.status == Some(422) {
            // This server has the WatchList feature off; the controller listed in pages.
            continue;
        }
        assert_eq!(stream.status, Some(200), "{stream:?}");
        let lists: Vec<_> = records
            .iter()
            .filter(|r| r.path_only() == kind && !r.path.contains("watch=true"))
            .collect();
        assert!(lists.is_empty(), "{kind} was listed in pages too: {lists:#?}");
    }
}

#[tokio::test]
async fn relist_drops_stale_taints_and_keeps_new_ones() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let old_slice = env.unique_name("slice-a");
    env.apply_slice(
        &old_slice,
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")]), ("w", vec![])],
    )
    .await;
    let added = env.slice_time_added(&old_slice, "gpu-0").await;
    // pod-0 tolerates the taint on gpu-0 for a while; pod-1 uses gpu-1, which no slice has yet.
    // The witness on `w` tolerates a rule's taint, made later, as long: once it is evicted,
    // pod-0's old deadline has passed.
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![toleration(KEY, Some(TOLERATE))])
        .await;
    env.pod_with_claim("pod-1", "claim-1", "gpu-1", vec![]).await;
    env.witness(vec![toleration(KEY, Some(TOLERATE))]).await;
    env.create_rule(&env.unique_name("rule"), Some("w"), taint(KEY, "NoExecute"))
        .await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    wait_for(
        "pod-0's and the witness's evictions to be scheduled",
        TIMEOUT,
        || async { (c.metric(PENDING).await == Some(2.0)).then_some(()) },
    )
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
    replace_pool(&env).await;

    wait_for("the controller to see the slice watch fail", TIMEOUT, || async {
        (c.metric(RESTARTS).await > Some(restarts_before)).then_some(())
    })
    .await;
    assert_eq!(
        c.metric(PENDING).await,
        Some(2.0),
        "during the outage the controller still knows only the old taint"
    );
    assert!(!env.pod_deleted("pod-1").await);
    let left = added + TOLERATE - now_secs();
    if left < MARGIN {
        eprintln!(
            "inconclusive: setup too slow, {left} s left before pod-0's deadline (need {MARGIN}); \
             nothing was checked"
        );
        return;
    }

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
    // pod-0's old deadline passes (the witness goes); pending counts an eviction until it is
    // finished or seen done, so 0 means nothing due then is still in flight.
    wait_for("the witness to be evicted", TIMEOUT, || async {
        env.pod_deleted(WITNESS).await.then_some(())
    })
    .await;
    wait_for("no pending eviction", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert!(!env.pod_deleted("pod-0").await, "pod-0 evicted by a stale taint");
    assert_eq!(
        env.eviction_events("pod-0").await,
        vec!["Cancelling deletion".to_owned()]
    );
    assert_eq!(
        env.eviction_events("pod-1").await,
        vec!["Marking for deletion".to_owned()]
    );

    let relisted = proxy.requests()[before_relist..]
        .iter()
        .any(|(m, p)| *m == Method::GET && p.starts_with(SLICES) && is_list(p));
    assert!(relisted, "the controller did not list the slices again");
    assert!(c.metric(RESTARTS).await >= Some(restarts_before + 2.0));
    wait_for(
        "the deletions of pod-1 and the witness to be counted",
        TIMEOUT,
        || async {
            (c.metric("device_taint_eviction_controller_pod_deletions_total")
                .await
                == Some(2.0))
            .then_some(())
        },
    )
    .await;
    assert_eq!(c.stop().await, Some(0));
}

/// X1 with a missed delete. `my-pod` tolerates the taint for [`OLD`] s, the witness too (same
/// taint, same deadline). While the pod and claim watches are down, `my-pod` is deleted and
/// recreated (new UID) with its claim now tolerating [`NEW`] s. After the re-list, the old
/// deadline passes (the witness is evicted) without touching the new pod; the new pod is evicted
/// exactly once (one DELETE at the proxy), no earlier than the taint's `timeAdded + NEW`.
/// A controller that keyed pods by name would carry the old deadline over to the new pod.
#[tokio::test]
async fn recreated_pod_after_missed_delete_keeps_its_own_deadline() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(&slice, 1, &[("gpu-0", vec![]), ("w", vec![])])
        .await;
    env.pod_with_claim("my-pod", "my-claim", "gpu-0", vec![toleration(KEY, Some(OLD))])
        .await;
    env.witness(vec![toleration(KEY, Some(OLD))]).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let tainted = vec![taint(KEY, "NoExecute")];
    env.apply_slice(&slice, 1, &[("gpu-0", tainted.clone()), ("w", tainted)])
        .await;
    let added = env.slice_time_added(&slice, "gpu-0").await;
    wait_for("both evictions to be scheduled", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(2.0)).then_some(())
    })
    .await;

    // The outage: pod and claim requests fail, their watches are cut.
    if !recreate_unseen(&env, &proxy, &c, added).await {
        return;
    }

    // The watches come back but cannot resume: the controller lists and never sees the DELETE.
    let before_relist = proxy.requests().len();
    proxy.clear_faults();
    proxy.expire_watches(PODS, 1);
    proxy.expire_watches(CLAIMS, 1);
    wait_for("the controller to list pods again", TIMEOUT, || async {
        proxy.requests()[before_relist..]
            .iter()
            .any(|(m, p)| *m == Method::GET && p.starts_with(PODS) && is_list(p))
            .then_some(())
    })
    .await;

    // The old deadline passes: the witness goes, and with it anything else due then.
    wait_for("the witness to be evicted", TIMEOUT, || async {
        env.pod_deleted(WITNESS).await.then_some(())
    })
    .await;
    // Pending counts an eviction until it is finished or seen done, so this also waits for
    // any other deletion due at the old deadline.
    wait_for("only the new pod to be pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        now_secs() < added + NEW,
        "setup too slow: the new deadline passed before the check"
    );
    assert!(
        !env.pod_deleted("my-pod").await,
        "the new pod was deleted at the old pod's deadline"
    );

    let deleted = wait_for("the new pod to be evicted", TIMEOUT, || async {
        env.pod_deletion_time("my-pod").await
    })
    .await;
    env.release_pod("my-pod").await;
    assert!(
        (added + NEW..=added + NEW + SLACK).contains(&deleted),
        "deleted at {deleted}, taint added at {added}, new toleration {NEW} s"
    );
    wait_for("nothing pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    let pod_path = format!("/api/v1/namespaces/{}/pods/my-pod", env.namespace);
    let pod_deletes = proxy
        .requests()
        .iter()
        .filter(|(m, p)| *m == Method::DELETE && p.split('?').next() == Some(pod_path.as_str()))
        .count();
    assert_eq!(pod_deletes, 1, "DELETEs of my-pod seen at the proxy");
    // If the claims were listed before the pods, the old pod's countdown was cancelled first
    // ("Cancelling deletion", same name): allowed. One eviction, no more.
    let events = env.eviction_events("my-pod").await;
    assert_eq!(
        events.iter().filter(|e| *e == "Marking for deletion").count(),
        1,
        "{events:?}"
    );
    assert_eq!(c.stop().await, Some(0));
}

/// Creates generation 2 of the test's pool: gpu-1 tainted, `w` untainted.
async fn replace_pool(env: &TestEnv) {
    let new_slice: ResourceSlice = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": env.unique_name("slice-b"), "labels": env.labels()},
        "spec": {"driver": DRIVER, "pool": {"name": env.pool(), "generation": 2, "resourceSliceCount": 1},
                 "allNodes": true, "devices": [{"name": "gpu-1", "taints": [taint(KEY, "NoExecute")]},
                                               {"name": "w"}]}
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
}

/// While the pod and claim watches of controller `c` are down (requests fail at `proxy`),
/// deletes `my-pod` and its claim and creates them again: the new pod has a new UID and its
/// claim tolerates [`NEW`] s. Returns false (inconclusive) if the old deadline, `added + OLD`,
/// was too close to do that in time.
async fn recreate_unseen(env: &TestEnv, proxy: &Proxy, c: &Controller, added: i64) -> bool {
    let restarts_before = c.metric(POD_RESTARTS).await.unwrap_or_default();
    proxy.fail(Method::GET, PODS, usize::MAX);
    proxy.fail(Method::GET, CLAIMS, usize::MAX);
    assert!(proxy.cut_streams(PODS) >= 1, "no pod watch was open");
    assert!(proxy.cut_streams(CLAIMS) >= 1, "no claim watch was open");
    wait_for("the controller to see the pod watch fail", TIMEOUT, || async {
        (c.metric(POD_RESTARTS).await > Some(restarts_before)).then_some(())
    })
    .await;
    // The old pod must still be there to be deleted by the test, not by its deadline.
    let left = added + OLD - now_secs();
    if left < MARGIN {
        eprintln!(
            "inconclusive: setup too slow, {left} s left before the old deadline (need {MARGIN}); \
             nothing was checked"
        );
        return false;
    }
    let old_uid = env
        .api::<Pod>()
        .get("my-pod")
        .await
        .expect("get pod")
        .metadata
        .uid;
    env.delete_pod_now("my-pod").await;
    let claims = env.api::<ResourceClaim>();
    claims
        .delete("my-claim", &DeleteParams::default())
        .await
        .expect("delete claim");
    wait_for("the claim to be gone", TIMEOUT, || async {
        claims
            .get_opt("my-claim")
            .await
            .expect("get claim")
            .is_none()
            .then_some(())
    })
    .await;
    let new = env
        .pod_with_claim("my-pod", "my-claim", "gpu-0", vec![toleration(KEY, Some(NEW))])
        .await;
    assert_ne!(old_uid, new.metadata.uid);
    env.keep_pod("my-pod").await;
    true
}
