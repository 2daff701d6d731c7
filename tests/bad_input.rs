//! Bad input from the API server and watches that go quiet: watches that go silent without
//! closing are restarted after `--watch-idle-timeout` and a pod created meanwhile is still evicted;
//! a malformed pod in a list page, a streaming list or a watch stream is skipped and counted
//! (`skipped_objects_total`) while the other pods are still evicted. The faults come from the
//! proxy (`support::proxy`); every write is counted there.
//!
//! They start their own controllers, so they hold [`SERIAL`].

mod support;

use std::{path::Path, time::Duration};

use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{PENDING, taint},
    proxy::{Proxy, assert_evicted_exactly},
    wait_for,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEY: &str = "example.com/broken";
const PODS: &str = "/api/v1/pods";

/// The sum of the samples of counter `name` whose labels include `label` (e.g. `kind="pods"`).
async fn counter(c: &Controller, name: &str, label: &str) -> f64 {
    let (_, body) = c.get("/metrics").await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const SKIPPED: &str = "device_taint_eviction_controller_skipped_objects_total";
const IDLE_RESTARTS: &str = "device_taint_eviction_controller_watch_idle_restarts_total";

async fn evicted(env: &TestEnv, pods: &[&str], timeout: Duration) {
    wait_for(&format!("{pods:?} to be evicted"), timeout, || async {
        for pod in pods {
            if !env.pod_deleted(pod).await {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The watches go silent without closing (the proxy stops passing their bytes on); a pod and its
/// claim created meanwhile on a tainted device reach the controller only through new watches,
/// which `--watch-idle-timeout 5s` starts: the pod is evicted, once. (With the default 330 s the
/// pod is still there when the test gives up.)
#[tokio::test]
async fn silent_watches_are_restarted() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")]), ("gpu-1", vec![])],
    )
    .await;
    env.pod_with_claim("bystander", "claim-1", "gpu-1", vec![]).await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let c = Controller::start(
        &proxy.kubeconfig,
        &["--leader-elect=false", "--watch-idle-timeout=5s"],
    )
    .await;
    // Every watch goes silent: the claim alone (with the pod in its reservedFor) would be
    // enough to evict, so the claim watch must not carry the news either.
    assert!(proxy.mute_streams("/") >= 4, "the watches to silence");
    env.pod_with_claim("late", "claim-0", "gpu-0", vec![]).await;
    evicted(&env, &["late"], TIMEOUT).await;
    assert!(
        counter(&c, IDLE_RESTARTS, "kind=\"pods\"").await >= 1.0,
        "the pod watch was restarted for being idle; log:\n{}",
        c.log_text()
    );
    wait_for("nothing pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert_evicted_exactly(&[&proxy], &env.namespace, &["late"]).await;
    assert_eq!(c.stop().await, Some(0));
}

/// Every pod list page carries one malformed item (`--initial-list=paged`): it is skipped and
/// counted, and both good pods on tainted devices are evicted, once.
#[tokio::test]
async fn a_malformed_pod_in_a_list_page_is_skipped() {
    // Every page, so that a controller which fails a whole page for one bad item never lists.
    malformed_pod_in_the_initial_state("paged", |proxy| proxy.corrupt_lists(PODS, usize::MAX)).await;
}

/// The same in a streaming list (`--initial-list=streaming`, the default): the malformed item
/// comes right after the stream's first pod.
#[tokio::test]
async fn a_malformed_pod_in_a_streaming_list_is_skipped() {
    malformed_pod_in_the_initial_state("streaming", |proxy| proxy.corrupt_watches(PODS, usize::MAX)).await;
}

async fn malformed_pod_in_the_initial_state(initial_list: &str, corrupt: impl FnOnce(&Proxy)) {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let tainted = || vec![taint(KEY, "NoExecute")];
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![]), ("gpu-1", vec![]), ("gpu-2", vec![])],
    )
    .await;
    env.pod_with_claim("a", "claim-a", "gpu-0", vec![]).await;
    env.pod_with_claim("b", "claim-b", "gpu-1", vec![]).await;
    env.pod_with_claim("bystander", "claim-c", "gpu-2", vec![]).await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    corrupt(&proxy);
    let initial_list = format!("--initial-list={initial_list}");
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false", &initial_list]).await;
    assert!(
        counter(&c, SKIPPED, "kind=\"pods\"").await >= 1.0,
        "the malformed pod was counted; log:\n{}",
        c.log_text()
    );
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", tainted()), ("gpu-1", tainted()), ("gpu-2", vec![])],
    )
    .await;
    evicted(&env, &["a", "b"], TIMEOUT).await;
    wait_for("nothing pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert_evicted_exactly(&[&proxy], &env.namespace, &["a", "b"]).await;
    assert_eq!(c.stop().await, Some(0));
}

/// A malformed pod event arrives in every pod watch right after its first event: it is skipped
/// and counted, the watch goes on, and the pods on tainted devices are evicted, once.
#[tokio::test]
async fn a_malformed_pod_in_a_watch_stream_is_skipped() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    env.apply_slice(
        &slice,
        1,
        &[("gpu-0", vec![taint(KEY, "NoExecute")]), ("gpu-1", vec![])],
    )
    .await;
    env.pod_with_claim("bystander", "claim-b", "gpu-1", vec![]).await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    // Every watch, so that a controller which drops a whole stream for one bad event and lists
    // again meets the bad event again.
    proxy.corrupt_watches(PODS, usize::MAX);
    let c = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    env.pod_with_claim("first", "claim-0", "gpu-0", vec![]).await;
    wait_for("the malformed event to be counted", TIMEOUT, || async {
        (counter(&c, SKIPPED, "kind=\"pods\"").await >= 1.0).then_some(())
    })
    .await;
    env.pod_with_claim("second", "claim-1", "gpu-0", vec![]).await;
    evicted(&env, &["first", "second"], TIMEOUT).await;
    wait_for("nothing pending", TIMEOUT, || async {
        (c.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    assert_evicted_exactly(&[&proxy], &env.namespace, &["first", "second"]).await;
    assert_eq!(c.stop().await, Some(0));
}
