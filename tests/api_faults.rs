//! X3: API errors (HTTP 500) on the PATCH (DisruptionTarget condition) and DELETE of one pod are
//! retried with per-pod backoff until the pod is evicted, counted by verb, and do not delay the
//! eviction of another pod.
//!
//! The errors come from a proxy between the controller and the real API server
//! (`support::proxy`), which answers 500 to the matching requests and forwards everything else.

mod support;

use std::path::Path;

use http::Method;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::taint,
    proxy::{Proxy, assert_evicted_exactly},
    wait_for,
};

const KEY: &str = "example.com/broken";

/// Tests that start a controller must not overlap: each controller acts on every tainted pod.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Failed requests per verb for the slow pod: the PATCH of the condition, then the DELETE.
/// Each failure doubles the pod's backoff from 5 ms, so ten failures keep it failing for about
/// five seconds.
const PATCH_FAILURES: usize = 8;
const DELETE_FAILURES: usize = 2;

async fn errors(c: &Controller, verb: &str) -> Option<f64> {
    c.metric(&format!(
        "device_taint_eviction_controller_api_errors_total{{verb=\"{verb}\"}}"
    ))
    .await
}

#[tokio::test]
async fn server_errors_are_retried_without_delaying_other_pods() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(&slice, 1, &[("gpu-0", vec![]), ("gpu-1", vec![])])
        .await;
    env.pod_with_claim("slow", "claim-slow", "gpu-0", vec![]).await;
    env.pod_with_claim("fast", "claim-fast", "gpu-1", vec![]).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let pod = format!("/api/v1/namespaces/{}/pods/slow", env.namespace);
    proxy.fail(Method::PATCH, &format!("{pod}/status"), PATCH_FAILURES);
    proxy.fail(Method::DELETE, &pod, DELETE_FAILURES);

    // The slow pod's device first: its failures have begun before the fast pod is due, so a
    // controller whose retries held up other work would delete the fast pod only after them.
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")]), ("gpu-1", vec![])],
    )
    .await;
    wait_for("the slow pod's first failure", TIMEOUT, || async {
        proxy
            .records()
            .iter()
            .any(|r| r.is_for_pod(&env.namespace, "slow") && r.status == Some(500))
            .then_some(())
    })
    .await;
    env.apply_slice(
        &slice,
        1,
        &[
            ("gpu-0", vec![taint(KEY, "NoExecute")]),
            ("gpu-1", vec![taint(KEY, "NoExecute")]),
        ],
    )
    .await;

    // Evicted: the API server accepted a DELETE of each (as recorded when its answer passed the
    // proxy; the pod can be gone a moment before that).
    wait_for("both pods to be evicted", TIMEOUT, || async {
        ["fast", "slow"]
            .iter()
            .all(|pod| !proxy.deletions_of(&env.namespace, pod).is_empty())
            .then_some(())
    })
    .await;
    // Not delayed: the fast pod's DELETE went out while the slow pod was still failing, i.e.
    // before the last failed request for the slow pod. Read from the proxy's record of what was
    // sent when, so a slow machine stretches both sides alike.
    let records = proxy.records();
    let fast_deleted = records
        .iter()
        .find(|r| r.method == Method::DELETE && r.is_for_pod(&env.namespace, "fast") && r.succeeded())
        .expect("the fast pod's DELETE")
        .at;
    let slow_last_failure = records
        .iter()
        .filter(|r| r.is_for_pod(&env.namespace, "slow") && r.status == Some(500))
        .map(|r| r.at)
        .max()
        .expect("failures for the slow pod");
    assert!(
        fast_deleted < slow_last_failure,
        "the fast pod was deleted only after the slow pod's failures ended; requests: {records:#?}"
    );
    for (verb, count) in [("patch", PATCH_FAILURES), ("delete", DELETE_FAILURES)] {
        #[allow(clippy::cast_precision_loss)] // small counts
        let expected = count as f64;
        assert_eq!(
            errors(&c, verb).await,
            Some(expected),
            "api_errors_total{{verb={verb}}}; log:\n{}",
            c.log_text()
        );
    }
    let seen = |method: Method, path: &str| {
        proxy
            .requests()
            .iter()
            .filter(|(m, p)| *m == method && p.split('?').next() == Some(path))
            .count()
    };
    assert_eq!(
        seen(Method::DELETE, &pod),
        DELETE_FAILURES + 1,
        "DELETEs of the slow pod"
    );
    // Decided from the watched pod: no pod is read with a GET, however often it is retried.
    let fast = format!("/api/v1/namespaces/{}/pods/fast", env.namespace);
    assert_eq!(
        (seen(Method::GET, &pod), seen(Method::GET, &fast)),
        (0, 0),
        "GETs of the pods"
    );
    // The deletion is counted once the DELETE response is in, which may be after the pod's
    // watch event.
    wait_for("both deletions to be counted", TIMEOUT, || async {
        (c.metric("device_taint_eviction_controller_pod_deletions_total")
            .await
            == Some(2.0))
        .then_some(())
    })
    .await;
    assert!(c.log_text().contains("will retry"));
    assert_eq!(c.stop().await, Some(0));
}

/// What the real API server answers when a write's UID precondition fails (DELETE, Eviction: 409;
/// the status PATCH that carries `metadata.uid`: 422 "field is immutable") is read as "gone"; a
/// 409 from optimistic concurrency ("the object has been modified") is not, so it is retried.
#[tokio::test]
async fn uid_precondition_conflicts_are_told_from_other_conflicts() {
    use device_taint_eviction::{
        actuator::{evict_pod, is_gone},
        view::PodRef,
    };
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};

    let env = TestEnv::new().await;
    let live = env.create_pod("p", "claim-p", None).await;
    let pods = env.api::<Pod>();
    let wrong = Preconditions {
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        resource_version: None,
    };
    let conflict = |what: &str, e: kube::Error| {
        let want = if what == "patch status" { 422 } else { 409 };
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == want),
            "{what}: {e:?}"
        );
        eprintln!("{what}: {e}");
        e
    };

    let delete = DeleteParams::default().preconditions(wrong.clone());
    let e = conflict("delete", pods.delete("p", &delete).await.expect_err("delete"));
    assert!(is_gone(&e), "DELETE with a stale UID: {e:?}");

    let stale = PodRef::new(&env.namespace, "p", wrong.uid.clone().unwrap_or_default());
    let e = conflict("evict", evict_pod(&pods, &stale).await.expect_err("evict"));
    assert!(is_gone(&e), "Eviction with a stale UID: {e:?}");

    let patch = serde_json::json!({
        "metadata": {"uid": wrong.uid},
        "status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}
    });
    let e = conflict(
        "patch status",
        pods.patch_status("p", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .expect_err("status patch"),
    );
    assert!(is_gone(&e), "status PATCH with a stale UID: {e:?}");

    let mut stale = live.clone();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("label the pod");
    stale.metadata.managed_fields = None;
    let e = conflict(
        "stale update",
        pods.replace("p", &PostParams::default(), &stale)
            .await
            .expect_err("update with a stale resourceVersion"),
    );
    assert!(
        !is_gone(&e),
        "an optimistic-concurrency conflict must be retried: {e:?}"
    );
    assert!(pods.get("p").await.is_ok(), "the pod is still there");
}

/// Start-up outlasts a failing API server: discovery that fails is retried (before, the process
/// exited), and the controller becomes ready once the server answers.
#[tokio::test]
async fn start_up_retries_discovery() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    proxy.fail(Method::GET, "/apis", 3);
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    assert!(
        c.log_text()
            .contains("failed to discover the DeviceTaintRule API; retrying"),
        "log:\n{}",
        c.log_text()
    );
    assert_eq!(c.stop().await, Some(0));
}

/// A 429 with `Retry-After: 3` on one pod's DELETE is retried no sooner than the server asked; a
/// 409 "the object has been modified" on another pod's status PATCH is a conflict to retry, not
/// a sign the pod is gone. Both pods are evicted exactly once, a third pod gets no write (all
/// counted at the proxy).
#[tokio::test]
async fn throttled_and_conflicting_writes_are_retried() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![]), ("gpu-1", vec![]), ("gpu-2", vec![])],
    )
    .await;
    env.pod_with_claim("throttled", "claim-0", "gpu-0", vec![]).await;
    env.pod_with_claim("conflicted", "claim-1", "gpu-1", vec![]).await;
    env.pod_with_claim("bystander", "claim-2", "gpu-2", vec![]).await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let pods = format!("/api/v1/namespaces/{}/pods", env.namespace);
    let retry_after = 3;
    proxy.throttle(Method::DELETE, &format!("{pods}/throttled"), 1, retry_after);
    proxy.conflict(Method::PATCH, &format!("{pods}/conflicted/status"), 1);
    let tainted = || vec![taint(KEY, "NoExecute")];
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", tainted()), ("gpu-1", tainted()), ("gpu-2", vec![])],
    )
    .await;

    wait_for("both pods to be evicted", TIMEOUT, || async {
        (env.pod_deleted("throttled").await && env.pod_deleted("conflicted").await).then_some(())
    })
    .await;
    wait_for("nothing pending", TIMEOUT, || async {
        (c.metric(support::objects::PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert_evicted_exactly(&[&proxy], &env.namespace, &["throttled", "conflicted"]).await;
    let deletes: Vec<_> = proxy
        .writes_for_pod(&env.namespace, "throttled")
        .into_iter()
        .filter(|r| r.method == Method::DELETE)
        .collect();
    assert_eq!(
        deletes.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![Some(429), Some(200)],
        "DELETEs of the throttled pod"
    );
    let waited = deletes[1].at.duration_since(deletes[0].at).unwrap_or_default();
    assert!(
        waited >= std::time::Duration::from_secs(retry_after.into()),
        "retried {waited:?} after a 429 with Retry-After: {retry_after}"
    );
    let patches: Vec<_> = proxy
        .writes_for_pod(&env.namespace, "conflicted")
        .into_iter()
        .filter(|r| r.method == Method::PATCH)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        patches,
        vec![Some(409), Some(200)],
        "status PATCHes of the conflicted pod"
    );
    assert_eq!(c.stop().await, Some(0));
}
