//! D11, the blast-radius guard, against a real API server with the default guard flags:
//! Kubernetes issue #141422 (one DeviceTaintRule with an empty selector over every DRA pod of the
//! cluster, in 3 namespaces) is paused, visibly, survives a controller restart, and goes on once
//! an operator accepts it with `device-taint-eviction resume`; a single faulty device next to
//! those pods is still evicted at once.
//!
//! One test: an empty selector selects every device of the cluster, so nothing else of this
//! binary may run beside it. It runs its own controllers (one is stopped and replaced).

mod support;

use std::{path::Path, process::Stdio, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::{
    TIMEOUT, TestEnv,
    controller::{Controller, skip_with_deployed_controller},
    objects::taint,
    wait_for,
};

const PODS: usize = 30;
const DELETIONS: &str = "device_taint_eviction_controller_pod_deletions_total";

#[tokio::test]
async fn issue_141422_is_paused_until_accepted_and_one_device_still_evicts_at_once() {
    if skip_with_deployed_controller() {
        return;
    }
    let env = TestEnv::with_up_flags(&["--kwok-nodes=1"]).await;
    let namespaces = [&env, &env.sibling(1).await, &env.sibling(2).await];
    wait_for_no_other_dra_pods(&env, &namespaces).await;
    let controller = Controller::start(env.kubeconfig(), &["--leader-elect=false"]).await;

    // 31 GPUs and 31 pods in 3 namespaces; gpu-30 (pod p-30) is the single faulty device.
    let devices: Vec<String> = (0..=PODS).map(|i| format!("gpu-{i}")).collect();
    let slice_devices: Vec<(&str, Vec<serde_json::Value>)> =
        devices.iter().map(|d| (d.as_str(), vec![])).collect();
    env.apply_slice(&env.unique_name("slice"), 1, &slice_devices)
        .await;
    for i in 0..=PODS {
        namespaces[i % 3]
            .pod_with_claim(&format!("p-{i}"), &format!("c-{i}"), &format!("gpu-{i}"), vec![])
            .await;
    }

    // A single faulty device: evicted at once, nothing tripped.
    let one = env.unique_name("one");
    env.create_rule(&one, Some("gpu-30"), taint("example.com/broken", "NoExecute"))
        .await;
    wait_for("the pod of the faulty device to be evicted", TIMEOUT, || async {
        namespaces[0].pod_deleted("p-30").await.then_some(())
    })
    .await;
    assert_eq!(controller.metric(DELETIONS).await, Some(1.0));

    // The None report of the same empty selector says the guard would trip (and proves the
    // controller sees all 30 pods before the NoExecute rule comes).
    let report = env.unique_name("all-none");
    env.create_rule_with(
        &report,
        json!({"deviceSelector": {}, "taint": taint("example.com/all", "None")}),
    )
    .await;
    assert_none_report_would_trip(&env, &report).await;

    // Issue #141422: every pod's device tainted by one rule. Paused, and said everywhere.
    let all = env.unique_name("all");
    env.create_rule_with(
        &all,
        json!({"deviceSelector": {}, "taint": taint("example.com/all", "NoExecute")}),
    )
    .await;
    assert_paused_everywhere(&env, &controller, &all).await;
    assert_none_deleted(&namespaces).await;

    // A restart (or a new leader) finds the same trip in the API state: still nothing deleted.
    controller.stop().await;
    let controller = Controller::start(env.kubeconfig(), &["--leader-elect=false"]).await;
    wait_for("the new instance to find the trip", TIMEOUT, || async {
        (controller.metric(&tripped(&all)).await == Some(1.0)).then_some(())
    })
    .await;
    assert_none_deleted(&namespaces).await;
    assert_eq!(controller.metric(DELETIONS).await, Some(0.0));

    // The operator accepts the 30 evictions: they go at once.
    let run = cli(env.kubeconfig(), &["resume", "--name", &all, "--accept", "30"]).await;
    assert_eq!(run.0, Some(0), "{run:?}");
    assert_eq!(
        run.1,
        format!(
            "devicetaintrule/{all} annotated device-taint-eviction/accept-evictions=30: up to 30 evictions accepted\n"
        )
    );
    wait_for("every pod to be evicted", Duration::from_secs(60), || async {
        for (i, ns) in (0..PODS).map(|i| (i, namespaces[i % 3])) {
            if !ns.pod_deleted(&format!("p-{i}")).await {
                return None;
            }
        }
        Some(())
    })
    .await;
    wait_for("the rule to be Completed", TIMEOUT, || async {
        env.rule_condition(&all)
            .await
            .filter(|c| c.0 == "Completed" && c.1 == "30 pods evicted since starting the controller.")
    })
    .await;
    assert_eq!(controller.metric(&tripped(&all)).await, Some(0.0));
    assert_eq!(controller.metric(DELETIONS).await, Some(30.0));
}

/// The `None` report of the empty selector says the guard would trip (which also shows that the
/// controller sees all the pods).
async fn assert_none_report_would_trip(env: &TestEnv, report: &str) {
    let message = wait_for("the None report", TIMEOUT, || async {
        env.rule_condition(report)
            .await
            .filter(|(reason, m)| reason == "NoEffect" && m.contains("would be evicted"))
            .map(|(_, m)| m)
    })
    .await;
    assert!(
        message.contains(&format!("{PODS} pods would be evicted in 3 different namespaces"))
            && message.ends_with(&format!(
                " The blast-radius guard would pause these evictions: {PODS} evictions due within 600 s are more \
                 than 16 pods and 25% of the {PODS} pods using DRA devices."
            )),
        "{message}"
    );
}

/// The rule's status, a Warning Event, the metric, the log and `explain` all say that the rule's
/// evictions are paused, why and how to resume.
async fn assert_paused_everywhere(env: &TestEnv, controller: &Controller, all: &str) {
    let paused = format!(
        "{PODS} pods need to be evicted in 3 different namespaces. The blast-radius guard paused {PODS} of them \
         (scope rule/{all}): {PODS} evictions due within 600 s are more than 16 pods and 25% of the {PODS} pods \
         using DRA devices. To resume, accept them: device-taint-eviction resume --name {all} --accept {PODS} \
         (annotation device-taint-eviction/accept-evictions={PODS})."
    );
    wait_for("the rule to say it is paused", TIMEOUT, || async {
        env.rule_condition(all)
            .await
            .filter(|c| c.0 == "EvictionPaused" && c.1 == paused)
    })
    .await;
    let events = wait_for("the Warning Event on the rule", TIMEOUT, || async {
        let events = env.cluster_object_events(all, "EvictionPaused").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0].0, "Warning");
    assert!(events[0].1.contains("--accept 30"), "{events:?}");
    assert_eq!(controller.metric(&tripped(all)).await, Some(1.0));
    assert!(controller.log_text().contains("blast-radius guard tripped"));
    assert_explain_shows_the_pause(env.kubeconfig(), all).await;
}

/// The guard metric of a rule's scope.
fn tripped(rule: &str) -> String {
    format!("device_taint_eviction_controller_guard_tripped{{scope=\"rule/{rule}\"}}")
}

/// Waits until no pod outside the test's namespaces uses a claim and could be evicted (a
/// shared control plane, as in `make soak`, may still hold the pods of the previous binary):
/// the empty selector would count them.
async fn wait_for_no_other_dra_pods(env: &TestEnv, namespaces: &[&TestEnv]) {
    wait_for(
        "other tests' DRA pods to be gone",
        Duration::from_secs(120),
        || async {
            let pods = Api::<Pod>::all(env.client.clone())
                .list(&ListParams::default())
                .await
                .ok()?;
            let others = pods.items.iter().any(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !namespaces
                        .iter()
                        .any(|ns| p.metadata.namespace.as_deref() == Some(ns.namespace.as_str()))
                    && p.spec
                        .as_ref()
                        .is_some_and(|s| s.resource_claims.as_ref().is_some_and(|c| !c.is_empty()))
            });
            (!others).then_some(())
        },
    )
    .await;
}

async fn assert_none_deleted(namespaces: &[&TestEnv; 3]) {
    for i in 0..PODS {
        assert!(
            !namespaces[i % 3].pod_deleted(&format!("p-{i}")).await,
            "p-{i} was deleted while the guard holds it"
        );
    }
}

/// `explain --output json` names the pause for each of the rule's pods.
async fn assert_explain_shows_the_pause(kubeconfig: &Path, rule: &str) {
    let run = cli(kubeconfig, &["explain", "--output", "json"]).await;
    assert_eq!(run.0, Some(0), "{run:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&run.1).expect("explain JSON");
    let paused = rows
        .iter()
        .filter(|r| r["source"] == format!("rule {rule}") && r["pausedBy"] == format!("rule/{rule}"))
        .count();
    assert_eq!(paused, PODS, "{}", run.1);
}

/// Runs the binary with `KUBECONFIG`: (exit code, stdout, stderr).
async fn cli(kubeconfig: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-taint-eviction"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("DTE_LOG_LEVEL")
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(TIMEOUT, output)
        .await
        .expect("the command finishes")
        .expect("the command runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
