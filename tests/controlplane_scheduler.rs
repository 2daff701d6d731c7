//! The test control plane with kube-scheduler (`up.sh --with-scheduler`): a pod whose
//! `ResourceClaim` asks for a device gets it allocated and reserved by the real scheduler.
//! Skipped against an external cluster (`DTE_TEST_KUBECONFIG`), which has real nodes of its own.

mod support;

use k8s_openapi::api::{core::v1::Pod, resource::v1};
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{TIMEOUT, TestEnv, wait_for};

fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches its type")
}

#[tokio::test]
async fn scheduler_allocates_a_device_for_a_pending_pod() {
    let env = TestEnv::with_up_flags(&["--with-scheduler"]).await;
    if env.cluster.dir.is_none() {
        eprintln!("skipped: creates a fake node, which only a self-started control plane may get");
        return;
    }
    let node = env.create_ready_node("node").await;
    let driver = format!("{}.example.com", env.unique_name("gpu"));
    let pp = PostParams::default();

    let class: v1::DeviceClass = object(json!({
        "metadata": { "name": driver, "labels": env.labels() },
        "spec": { "selectors": [{ "cel": { "expression": format!("device.driver == '{driver}'") } }] },
    }));
    Api::<v1::DeviceClass>::all(env.client.clone())
        .create(&pp, &class)
        .await
        .expect("create DeviceClass");
    let slice: v1::ResourceSlice = object(json!({
        "metadata": { "name": env.unique_name("slice"), "labels": env.labels() },
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
            "devices": [{ "name": "gpu-0" }],
        },
    }));
    Api::<v1::ResourceSlice>::all(env.client.clone())
        .create(&pp, &slice)
        .await
        .expect("create ResourceSlice");

    let claims: Api<v1::ResourceClaim> = env.api();
    let claim: v1::ResourceClaim = object(json!({
        "metadata": { "name": "gpu" },
        "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": driver } }] } },
    }));
    claims.create(&pp, &claim).await.expect("create ResourceClaim");
    let pods: Api<Pod> = env.api();
    let pod: Pod = object(json!({
        "metadata": { "name": "user" },
        "spec": {
            "resourceClaims": [{ "name": "gpu", "resourceClaimName": "gpu" }],
            "containers": [{
                "name": "app",
                "image": "registry.invalid/app:1",
                "resources": { "claims": [{ "name": "gpu" }] },
            }],
        },
    }));
    let pod = pods.create(&pp, &pod).await.expect("create Pod");
    let pod_uid = pod.metadata.uid.expect("pod uid");

    let bound_to = wait_for("the pod to be scheduled", TIMEOUT, || async {
        pods.get("user").await.ok()?.spec?.node_name
    })
    .await;
    assert_eq!(bound_to, node);

    let status = claims
        .get("gpu")
        .await
        .expect("get ResourceClaim")
        .status
        .expect("claim status");
    let results = status
        .allocation
        .and_then(|a| a.devices)
        .and_then(|d| d.results)
        .expect("allocation results");
    assert_eq!(
        (
            results[0].driver.as_str(),
            results[0].pool.as_str(),
            results[0].device.as_str()
        ),
        (driver.as_str(), node.as_str(), "gpu-0")
    );
    let reserved = status.reserved_for.expect("reservedFor");
    assert_eq!(reserved[0].uid, pod_uid);
}
