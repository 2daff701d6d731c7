//! Faults of the real control plane while the controller counts down: kube-apiserver killed and
//! started again, etcd killed and started again, etcd's history compacted. For each, the pod that
//! must go is evicted exactly once at its original deadline (within [`SLACK`]), and the pods that
//! must stay (one tolerating the taint forever, one on an untainted device) get no write at all.
//! Every write is counted at a proxy between the controller and the API server.
//!
//! Each test kills components of a control plane of its own ([`OwnedControlPlane`]); on an
//! existing cluster (`DTE_TEST_KUBECONFIG`, e.g. kind) they are skipped with a note. They run one
//! at a time ([`SERIAL`]): each control plane costs a core while it starts.

mod support;

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use support::{
    OwnedControlPlane, TIMEOUT, TestEnv,
    controller::Controller,
    objects::{PENDING, taint, toleration},
    proxy::{Proxy, assert_evicted_exactly, is_list},
    wait_for,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEY: &str = "example.com/broken";
/// How late after its deadline an eviction may be sent: the controller's own latency plus a
/// loaded machine. The control-plane faults end before the deadline, so they add nothing.
const SLACK: Duration = Duration::from_secs(5);

/// The pods of every test here: `doomed` tolerates the taint for a while, `tolerant` forever,
/// `bystander` sits on a device that is never tainted.
const DOOMED: &str = "doomed";
const TOLERANT: &str = "tolerant";
const BYSTANDER: &str = "bystander";

struct CountingDown {
    env: TestEnv,
    proxy: Proxy,
    controller: Controller,
    /// When `doomed` must go: the taint's server-set `timeAdded` plus its toleration.
    deadline: SystemTime,
}

/// The pods, a controller behind a proxy, and the taint on `gpu-0` (`doomed`) and `gpu-2`
/// (`tolerant`), with `doomed` tolerating it for `toleration`; returns once the controller has
/// scheduled the eviction.
async fn counting_down(cp: &OwnedControlPlane, tolerated: Duration) -> CountingDown {
    let env = TestEnv::on(cp.cluster).await;
    let slice = env.unique_name("slice");
    let devices = |tainted: bool| {
        let t = || {
            if tainted {
                vec![taint(KEY, "NoExecute")]
            } else {
                vec![]
            }
        };
        vec![("gpu-0", t()), ("gpu-1", vec![]), ("gpu-2", t())]
    };
    env.apply_slice(&slice, 1, &devices(false)).await;
    let seconds = i64::try_from(tolerated.as_secs()).expect("seconds");
    env.pod_with_claim(DOOMED, "claim-0", "gpu-0", vec![toleration(KEY, Some(seconds))])
        .await;
    env.pod_with_claim(BYSTANDER, "claim-1", "gpu-1", vec![]).await;
    env.pod_with_claim(TOLERANT, "claim-2", "gpu-2", vec![toleration(KEY, None)])
        .await;

    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let controller = Controller::start(&proxy.kubeconfig, &["--leader-elect=false"]).await;
    let applied = env.apply_slice(&slice, 1, &devices(true)).await;
    let added: Timestamp = applied.spec.devices.as_ref().expect("devices")[0]
        .taints
        .as_ref()
        .expect("taints")[0]
        .time_added
        .clone()
        .expect("the server sets timeAdded")
        .0;
    let deadline = SystemTime::from(added) + tolerated;
    wait_for("the controller to schedule the eviction", TIMEOUT, || async {
        (controller.metric(PENDING).await == Some(1.0)).then_some(())
    })
    .await;
    CountingDown {
        env,
        proxy,
        controller,
        deadline,
    }
}

/// A toleration long enough that a component killed now is back before the deadline: three
/// times what starting the whole control plane took, at least 10 s.
fn toleration_for(cp: &OwnedControlPlane) -> Duration {
    Duration::from_secs((3 * cp.startup.as_secs()).max(10))
}

/// Waits until the admin client's reads fail: the fault is in effect.
async fn wait_reads_fail(env: &TestEnv) {
    wait_for("the API server to fail reads", TIMEOUT, || async {
        let read = tokio::time::timeout(Duration::from_secs(2), env.api::<Pod>().get(DOOMED)).await;
        (!matches!(read, Ok(Ok(_)))).then_some(())
    })
    .await;
}

/// Waits for the eviction of `doomed` and checks it: exactly once, within [`SLACK`] after the
/// deadline, nothing else touched. `restored`: when the control plane was whole again; a restore
/// after the deadline makes the timing check meaningless (the machine was too slow), which is
/// reported and skipped rather than failed.
async fn check_eviction(run: &CountingDown, restored: SystemTime) {
    let CountingDown {
        env,
        proxy,
        controller,
        deadline,
    } = run;
    wait_for("the doomed pod to be evicted", TIMEOUT + SLACK, || async {
        (!proxy.deletions_of(&env.namespace, DOOMED).is_empty()).then_some(())
    })
    .await;
    wait_for("the eviction Event", TIMEOUT, || async {
        env.eviction_events(DOOMED)
            .await
            .iter()
            .any(|e| e == "Marking for deletion")
            .then_some(())
    })
    .await;
    wait_for("the controller to have nothing pending", TIMEOUT, || async {
        (controller.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;
    let deleted = assert_evicted_exactly(&[proxy], &env.namespace, &[DOOMED]).await;
    let at = deleted[0].at;
    let log = || controller.log_text();
    assert!(
        at >= *deadline,
        "evicted {:?} before the deadline; log:\n{}",
        deadline.duration_since(at).unwrap_or_default(),
        log()
    );
    let late = at.duration_since(*deadline).unwrap_or_default();
    eprintln!("evicted {late:?} after the deadline");
    if restored + Duration::from_secs(1) > *deadline {
        eprintln!(
            "inconclusive timing: the control plane was whole again only {:?} before the deadline",
            deadline.duration_since(restored).unwrap_or_default()
        );
        return;
    }
    assert!(
        late <= SLACK,
        "evicted {late:?} after the deadline (slack {SLACK:?}); log:\n{}",
        log()
    );
    assert!(!env.pod_deleted(TOLERANT).await && !env.pod_deleted(BYSTANDER).await);
}

/// kube-apiserver crashes (SIGKILL) mid-countdown and comes back: the watches reconnect and the
/// pod is evicted at its original deadline, once.
#[tokio::test]
async fn apiserver_killed_mid_countdown() {
    let _serial = SERIAL.lock().await;
    let Some(cp) = OwnedControlPlane::start().await else {
        return;
    };
    let run = counting_down(&cp, toleration_for(&cp)).await;
    cp.kill("kube-apiserver").await;
    wait_reads_fail(&run.env).await;
    // The controller notices too: a request of its own fails at the proxy.
    wait_for("the controller to hit the outage", TIMEOUT, || async {
        run.proxy
            .records()
            .iter()
            .any(|r| r.status == Some(502))
            .then_some(())
    })
    .await;
    cp.restart("kube-apiserver").await;
    check_eviction(&run, SystemTime::now()).await;
    assert_eq!(run.controller.stop().await, Some(0));
}

/// etcd crashes (SIGKILL) mid-countdown and comes back with its data: the API server reconnects,
/// and the pod is evicted at its original deadline, once.
#[tokio::test]
async fn etcd_killed_mid_countdown() {
    let _serial = SERIAL.lock().await;
    let Some(cp) = OwnedControlPlane::start().await else {
        return;
    };
    let run = counting_down(&cp, toleration_for(&cp)).await;
    cp.kill("etcd").await;
    wait_reads_fail(&run.env).await;
    cp.restart("etcd").await;
    wait_for("the API server to read from etcd again", TIMEOUT, || async {
        run.env.api::<Pod>().get(DOOMED).await.ok()
    })
    .await;
    check_eviction(&run, SystemTime::now()).await;
    assert_eq!(run.controller.stop().await, Some(0));
}

/// The kinds the controller watches, by the path of their list and watch requests: DeviceTaintRules
/// at the version the cluster serves (v1alpha3 on 1.35, v1beta2 on 1.36, v1 from 1.37).
async fn watched_paths(client: &kube::Client) -> Vec<String> {
    let rules = device_taint_eviction::k8s::discover_device_taint_rule(client)
        .await
        .expect("discovery")
        .expect("the cluster serves DeviceTaintRules");
    vec![
        "/api/v1/pods".to_owned(),
        "/apis/resource.k8s.io/v1/resourceclaims".to_owned(),
        "/apis/resource.k8s.io/v1/resourceslices".to_owned(),
        format!("/apis/{}/devicetaintrules", rules.api_version),
    ]
}

/// etcd's history is compacted mid-countdown, then kube-apiserver restarts (as in a rollout),
/// so its watch cache starts afresh after the compaction: every kind's watch resumes from a
/// revision that neither the cache nor etcd has any more, gets 410 ("too old resource version"),
/// and the controller lists that kind again. The pod is still evicted at its original deadline,
/// once.
#[tokio::test]
async fn etcd_compaction_makes_every_watch_list_again() {
    let _serial = SERIAL.lock().await;
    let Some(cp) = OwnedControlPlane::start().await else {
        return;
    };
    let run = counting_down(&cp, toleration_for(&cp)).await;
    let kinds = watched_paths(&run.env.client).await;
    // A write the controller does not watch moves etcd's revision past every watch's.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(run.env.client.clone());
    namespaces
        .patch(
            &run.env.namespace,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {"moved": "on"}}})),
        )
        .await
        .expect("annotate the namespace");
    let compacted = cp.compact().await;
    let seen = run.proxy.records().len();
    cp.kill("kube-apiserver").await;
    cp.restart("kube-apiserver").await;
    let restored = SystemTime::now();
    // What is still missing is told on stderr each time it changes, so a timeout says which kind
    // got no 410 or did not list again, and what its requests were answered.
    let mut told = String::new();
    wait_for("every kind's watch to get 410 and list again", TIMEOUT, || {
        let expired = run.proxy.expired_watches();
        let records = run.proxy.records();
        let after = &records[seen..];
        let missing: Vec<String> = kinds
            .iter()
            .filter_map(|kind| {
                let is_kind = |p: &str| p.split('?').next() == Some(kind.as_str());
                let got_410 = expired.iter().any(|p| is_kind(p));
                let listed = after
                    .iter()
                    .any(|r| is_kind(&r.path) && is_list(&r.path) && r.status == Some(200));
                let answers: Vec<_> = after
                    .iter()
                    .filter(|r| is_kind(&r.path))
                    .map(|r| r.status)
                    .collect();
                (!(got_410 && listed)).then(|| {
                    format!(
                        "{kind} (410: {got_410}, listed: {listed}, answers since the restart: {answers:?})"
                    )
                })
            })
            .collect();
        let now = missing.join("; ");
        if !missing.is_empty() && now != told {
            eprintln!(
                "{:.1?} after the restart, still waiting for: {now}",
                restored.elapsed().unwrap_or_default()
            );
            told = now;
        }
        std::future::ready(missing.is_empty().then_some(()))
    })
    .await;
    eprintln!(
        "compacted etcd at revision {compacted}; watches ended with 410: {:#?}",
        run.proxy.expired_watches()
    );
    check_eviction(&run, restored).await;
    assert_eq!(run.controller.stop().await, Some(0));
}
