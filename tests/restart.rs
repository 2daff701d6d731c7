//! X2: the controller restarted mid-countdown. The deadline derives from the taint's server-set
//! `timeAdded`, so a new process evicts at the original deadline: not earlier, not much later,
//! exactly once; and a deadline that passed while no controller ran is acted on at once.
//!
//! The tests start and kill their own controllers, so they must not overlap (two unrelated
//! controllers in one cluster would both act): each holds [`SERIAL`].

mod support;

use std::time::Duration;

use http::Method;

use k8s_openapi::{
    api::core::v1::Pod,
    jiff::{SignedDuration, Timestamp},
};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{taint, toleration},
    proxy::{Proxy, assert_evicted_exactly},
    wait_for,
};
use tokio::{sync::Mutex, time::Instant};

static SERIAL: Mutex<()> = Mutex::const_new(());

const KEY: &str = "example.com/broken";
const PENDING: &str = "device_taint_eviction_controller_pending_evictions";
const DELETIONS: &str = "device_taint_eviction_controller_pod_deletions_total";
/// How late after it is due an eviction may come: the controller's latency, a busy machine and
/// `deletionTimestamp`'s whole seconds.
const SLACK: SignedDuration = SignedDuration::from_secs(5);

/// Taints `gpu-0` of `slice` and returns the taint's `timeAdded` as the server set it.
async fn taint_device(env: &TestEnv, slice: &str) -> Timestamp {
    let applied = env
        .apply_slice(slice, 1, &[("gpu-0", vec![taint(KEY, "NoExecute")])])
        .await;
    applied.spec.devices.as_ref().expect("devices")[0]
        .taints
        .as_ref()
        .expect("taints")[0]
        .time_added
        .clone()
        .expect("the server sets timeAdded")
        .0
}

/// A finalizer that keeps a deleted pod (grace period 0) around with its `deletionTimestamp`.
const FINALIZER: &str = "device-taint-eviction.test/keep";

async fn set_finalizer(env: &TestEnv, pod: &str, on: bool) {
    let finalizers: Vec<&str> = if on { vec![FINALIZER] } else { vec![] };
    let patch = json!({"metadata": {"finalizers": finalizers}});
    let _ = env
        .api::<Pod>()
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// The pod's `deletionTimestamp`, once it has one.
async fn deletion_time(env: &TestEnv, pod: &str) -> Option<Timestamp> {
    let pod = env.api::<Pod>().get_opt(pod).await.expect("get pod")?;
    pod.metadata.deletion_timestamp.map(|t| t.0)
}

/// A pod tolerating the taint for `seconds` on `gpu-0` of a fresh slice, and a controller that
/// has seen the taint; returns the controller and the taint's `timeAdded`.
async fn counting_down(env: &TestEnv, slice: &str, seconds: i64) -> (Controller, Timestamp) {
    env.apply_slice(slice, 1, &[("gpu-0", vec![])]).await;
    env.pod_with_claim(
        "my-pod",
        "my-claim",
        "gpu-0",
        vec![toleration(KEY, Some(seconds))],
    )
    .await;
    set_finalizer(env, "my-pod", true).await;
    let a = Controller::start(env.kubeconfig(), &["--leader-elect=false"]).await;
    let added = taint_device(env, slice).await;
    wait_for("controller A to schedule the eviction", TIMEOUT, || async {
        (a.metric(PENDING).await == Some(1.0)).then_some(())
    })
    .await;
    (a, added)
}

/// The toleration of the mid-countdown restart.
const TOLERATED: i64 = 14;

/// Killed (SIGKILL) mid-countdown, a new controller evicts at the original deadline.
#[tokio::test]
async fn restart_mid_countdown_keeps_the_deadline() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let (a, added) = counting_down(&env, &slice, TOLERATED).await;
    a.kill().await;
    // B starts half-way through the countdown, so that a deadline counted from when B first saw
    // the taint (not from timeAdded) would come about 7 s late, well past the 5 s slack.
    wait_for("half of the countdown to pass", TIMEOUT, || async {
        (Timestamp::now() >= added + SignedDuration::from_secs(TOLERATED / 2)).then_some(())
    })
    .await;
    assert!(
        !env.pod_deleted("my-pod").await,
        "the pod was deleted before the deadline; log of A:\n{}",
        a.log_text()
    );

    let b = Controller::start(env.kubeconfig(), &["--leader-elect=false"]).await;
    let b_ready = Timestamp::now();
    let deleted = wait_for("controller B to evict the pod", TIMEOUT, || {
        deletion_time(&env, "my-pod")
    })
    .await;
    let deadline = added + SignedDuration::from_secs(TOLERATED);
    assert!(
        deleted >= deadline,
        "deleted at {deleted}, before the deadline {deadline} (timeAdded {added} + {TOLERATED} s)"
    );
    // B acts at the deadline, or at once if it was ready only after it (a slow start is not
    // B's lateness); `deletionTimestamp` has whole seconds.
    let due = if b_ready > deadline { b_ready } else { deadline };
    let late = deleted.duration_since(due);
    if b_ready > deadline {
        eprintln!(
            "B was ready {} after the deadline: lateness measured from then",
            b_ready.duration_since(deadline)
        );
    }
    assert!(
        late < SLACK,
        "deleted {late} after it was due ({due}; deadline {deadline}); log of B:\n{}",
        b.log_text()
    );
    let events = wait_for("the eviction event", TIMEOUT, || async {
        let e = env.eviction_events("my-pod").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Marking for deletion".to_owned()]);
    wait_for("B to count its deletion", TIMEOUT, || async {
        (b.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(b.stop().await, Some(0));
    set_finalizer(&env, "my-pod", false).await;
}

/// The deadline passes while no controller runs: the next controller evicts at once.
#[tokio::test]
async fn deadline_passed_while_down_evicts_at_start() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let (a, added) = counting_down(&env, &slice, 2).await;
    a.kill().await;
    let deadline = added + SignedDuration::from_secs(2);
    wait_for("the deadline to pass", TIMEOUT, || async {
        (Timestamp::now() > deadline + SignedDuration::from_secs(2)).then_some(())
    })
    .await;
    assert!(
        !env.pod_deleted("my-pod").await,
        "no controller runs, yet the pod was deleted"
    );

    let b = Controller::start(env.kubeconfig(), &["--leader-elect=false"]).await;
    let ready = Timestamp::now();
    let deleted = wait_for("controller B to evict the pod", TIMEOUT, || {
        deletion_time(&env, "my-pod")
    })
    .await;
    // Measured from B's readiness (its start-up, however slow, is no delay of the eviction);
    // deletionTimestamp has whole seconds.
    let late = deleted.duration_since(ready);
    assert!(
        late < SLACK,
        "evicted {late} after the controller was ready; log:\n{}",
        b.log_text()
    );
    let events = wait_for("the eviction event", TIMEOUT, || async {
        let e = env.eviction_events("my-pod").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Marking for deletion".to_owned()]);
    wait_for("B to count its deletion", TIMEOUT, || async {
        (b.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(b.stop().await, Some(0));
    set_finalizer(&env, "my-pod", false).await;
}

/// What the chart gives the pod to shut down after SIGTERM (`terminationGracePeriodSeconds`).
const GRACE: Duration = Duration::from_secs(30);

/// SIGTERM while the pod's DELETE hangs at the proxy (the connection open, no answer, the API
/// server never sees it): the controller exits 0 within the chart's grace period, and the next
/// instance evicts the pod exactly once; the bystander gets no write.
#[tokio::test]
async fn sigterm_while_a_delete_is_stalled() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(&slice, 1, &[("gpu-0", vec![]), ("gpu-1", vec![])])
        .await;
    env.pod_with_claim("doomed", "claim-0", "gpu-0", vec![]).await;
    env.pod_with_claim("bystander", "claim-1", "gpu-1", vec![]).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let first = Proxy::start(env.client.clone(), dir).await;
    let doomed = format!("/api/v1/namespaces/{}/pods/doomed", env.namespace);
    first.stall(Some(Method::DELETE), &doomed, 1);
    let a = Controller::start(&first.kubeconfig, &["--leader-elect=false"]).await;
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")]), ("gpu-1", vec![])],
    )
    .await;
    wait_for("the DELETE to hang at the proxy", TIMEOUT, || async {
        first
            .writes_for_pod(&env.namespace, "doomed")
            .iter()
            .any(|r| r.method == Method::DELETE && r.status.is_none())
            .then_some(())
    })
    .await;

    let stopping = Instant::now();
    let code = a.stop().await;
    let took = stopping.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{}", a.log_text());
    assert!(
        took < GRACE,
        "took {took:?} to exit after SIGTERM, more than the {GRACE:?} grace period; log:\n{}",
        a.log_text()
    );
    assert!(
        !env.pod_deleted("doomed").await,
        "the hung DELETE never reached the API server"
    );
    first.release_stalls();

    let second = Proxy::start(env.client.clone(), dir).await;
    let b = Controller::start(&second.kubeconfig, &["--leader-elect=false"]).await;
    wait_for("the next instance to evict the pod", TIMEOUT, || async {
        env.pod_deleted("doomed").await.then_some(())
    })
    .await;
    wait_for("B to have nothing pending", TIMEOUT, || async {
        (b.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    let deleted = assert_evicted_exactly(&[&first, &second], &env.namespace, &["doomed"]).await;
    assert!(
        second.deletions_of(&env.namespace, "doomed") == deleted,
        "the accepted DELETE came from the second instance"
    );
    assert_eq!(b.stop().await, Some(0));
}

/// Clock skew, shown and bounded: the deadline is the taint's `timeAdded` (written by the API
/// server's clock, or by whoever sets it) plus the toleration, compared with the controller's own
/// clock. A `timeAdded` written by a clock `skew` ahead of the controller's (here: set explicitly,
/// since one machine has one clock) moves the eviction exactly `skew` later; one behind, exactly
/// `skew` earlier. The error is the clock offset, never more: each pod goes at `timeAdded` plus
/// its toleration by the controller's clock, within the slack, whatever the offset.
#[tokio::test]
async fn skewed_time_added_moves_the_eviction_by_the_skew() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let skew = SignedDuration::from_secs(6);
    let tolerated = 4;
    env.apply_slice(&slice, 1, &[("gpu-0", vec![]), ("gpu-1", vec![])])
        .await;
    env.pod_with_claim(
        "ahead",
        "claim-0",
        "gpu-0",
        vec![toleration(KEY, Some(tolerated))],
    )
    .await;
    env.pod_with_claim(
        "behind",
        "claim-1",
        "gpu-1",
        vec![toleration(KEY, Some(tolerated + 8))],
    )
    .await;
    let proxy = Proxy::start(
        env.client.clone(),
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
    .await;
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let now = Timestamp::now();
    let skewed = |by: SignedDuration| {
        let mut t = taint(KEY, "NoExecute");
        t["timeAdded"] = json!(
            (now + by)
                .round(k8s_openapi::jiff::Unit::Second)
                .expect("round")
                .to_string()
        );
        t
    };
    let applied = env
        .apply_slice(
            &slice,
            1,
            &[("gpu-0", vec![skewed(skew)]), ("gpu-1", vec![skewed(-skew)])],
        )
        .await;
    let added: Vec<Timestamp> = applied.spec.devices.as_ref().expect("devices")[..2]
        .iter()
        .map(|d| {
            d.taints.as_ref().expect("taints")[0]
                .time_added
                .clone()
                .expect("timeAdded")
                .0
        })
        .collect();
    assert_eq!(
        added[0]
            .duration_since(added[1])
            .round(k8s_openapi::jiff::SignedDurationRound::new().smallest(k8s_openapi::jiff::Unit::Second))
            .expect("round"),
        skew * 2,
        "the API server keeps a timeAdded it is given"
    );
    wait_for("both pods to be evicted", TIMEOUT, || async {
        (env.pod_deleted("ahead").await && env.pod_deleted("behind").await).then_some(())
    })
    .await;
    wait_for("the controller to have nothing pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    let deleted = assert_evicted_exactly(&[&proxy], &env.namespace, &["ahead", "behind"]).await;
    for ((pod, record), (added, tolerated)) in ["ahead", "behind"]
        .iter()
        .zip(&deleted)
        .zip(added.iter().zip([tolerated, tolerated + 8]))
    {
        let deadline = *added + SignedDuration::from_secs(tolerated);
        let at = Timestamp::try_from(record.at).expect("timestamp");
        let off = at.duration_since(deadline);
        eprintln!("{pod}: timeAdded {added}, evicted {off} after timeAdded + toleration");
        assert!(
            off >= SignedDuration::ZERO && off < SignedDuration::from_secs(3),
            "{pod} evicted {off} after timeAdded + toleration; log:\n{}",
            c.log_text()
        );
    }
    assert_eq!(c.stop().await, Some(0));
}
