//! X8: one NoExecute DeviceTaintRule over a pool of 1000 allocated devices evicts 1000 pods.
//! A binary of its own, so that its controller (with a high client rate limit) and its load do
//! not disturb the scenarios. The pods run on node-1, a KWOK node: once the test lets them go,
//! they are really removed.

mod support;

use std::time::Instant;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use support::{TestEnv, objects::taint, shared_controller, wait_for};

const SLICES: usize = 20;
const DEVICES_PER_SLICE: usize = 50;
const PODS: usize = SLICES * DEVICES_PER_SLICE;

#[tokio::test]
async fn evict_1000_pods_one_rule() {
    let env = TestEnv::with_up_flags(&["--kwok-nodes=1"]).await;
    // 1000 pods of one rule are exactly what the blast-radius guard (D11) pauses by default;
    // X8 measures the eviction path, so the guard is off here (tests/guard.rs covers it).
    shared_controller(&[
        "--leader-elect=false",
        "--kube-api-qps=1000",
        "--kube-api-burst=2000",
        "--guard-max-percent=100",
        "--guard-max-pods=0",
    ])
    .await;
    let device = |i: usize| format!("gpu-{}-{}", i / DEVICES_PER_SLICE, i % DEVICES_PER_SLICE);

    for s in 0..SLICES {
        let names: Vec<String> = (0..DEVICES_PER_SLICE)
            .map(|d| device(s * DEVICES_PER_SLICE + d))
            .collect();
        let devices: Vec<(&str, Vec<serde_json::Value>)> =
            names.iter().map(|n| (n.as_str(), vec![])).collect();
        env.try_apply_slice(
            &env.unique_name(&format!("slice-{s}")),
            1,
            i64::try_from(SLICES).expect("count"),
            &devices,
        )
        .await
        .expect("apply slice");
    }
    let setup = Instant::now();
    stream::iter(0..PODS)
        .map(|i| {
            let env = &env;
            let device = device(i);
            async move {
                let pod = format!("pod-{i}");
                env.pod_with_claim(&pod, &format!("claim-{i}"), &device, vec![])
                    .await;
                // Keeps the deleted pod and its deletionTimestamp readable.
                env.keep_pod(&pod).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    eprintln!("X8: {PODS} pods with claims created in {:?}", setup.elapsed());

    let rule = env.unique_name("rule");
    let started = Instant::now();
    let created = env
        .create_rule(&rule, None, taint("example.com/broken", "NoExecute"))
        .await;
    let created = created
        .metadata
        .creation_timestamp
        .expect("creationTimestamp")
        .0
        .as_second();

    let last: Option<i64> = wait_for(
        "all pods to be evicted",
        std::time::Duration::from_secs(180),
        || async {
            let pods = env.api::<Pod>().list(&ListParams::default()).await.ok()?; // a failed list (the server under load) is retried
            (pods.items.len() == PODS && pods.items.iter().all(|p| p.metadata.deletion_timestamp.is_some()))
                .then(|| {
                    pods.items
                        .iter()
                        .filter_map(|p| p.metadata.deletion_timestamp.as_ref())
                        .map(|t| t.0.as_second())
                        .max()
                })
        },
    )
    .await;
    let observed = started.elapsed();
    let last = last.expect("deletionTimestamps");
    eprintln!(
        "X8: last deletionTimestamp {} s after the rule's creationTimestamp (observed after {observed:?})",
        last - created
    );

    let message = wait_for(
        "rule status Completed",
        std::time::Duration::from_secs(60),
        || async {
            env.rule_condition(&rule)
                .await
                .filter(|(reason, _)| reason == "Completed")
                .map(|(_, m)| m)
        },
    )
    .await;
    eprintln!("X8: rule Completed after {:?}", started.elapsed());
    stream::iter(0..PODS)
        .map(|i| {
            let env = &env;
            async move { env.release_pod(&format!("pod-{i}")).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(message, "1000 pods evicted since starting the controller.");
    wait_all_gone(&env, started).await;
}

/// Waits until KWOK, playing node-1's kubelet, has removed every pod of the test (on a control
/// plane with KWOK; elsewhere pods on node-1 have no kubelet).
async fn wait_all_gone(env: &TestEnv, started: Instant) {
    if !env.kwok() {
        return;
    }
    wait_for(
        "KWOK to remove every evicted pod",
        std::time::Duration::from_secs(180),
        || async {
            let pods = env.api::<Pod>().list(&ListParams::default()).await.ok()?; // a failed list (the server under load) is retried
            pods.items.is_empty().then_some(())
        },
    )
    .await;
    eprintln!("X8: every pod gone after {:?}", started.elapsed());
}
