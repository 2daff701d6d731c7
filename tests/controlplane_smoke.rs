//! Smoke tests of the test control plane (tests/controlplane, tests/support): the API server
//! serves every DRA object the controller reads or writes, with the fields it relies on.
//! With `DTE_TEST_KUBECONFIG` set they run against that cluster instead (`KUBECONFIG` is ignored).

mod support;

use device_taint_eviction::k8s::WatchedPod;
use k8s_openapi::api::{core::v1::Pod, resource::v1};
use kube::{
    api::{Api, DynamicObject, ListParams, PostParams},
    core::WatchEvent,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::TestEnv;

const DRIVER: &str = "gpu.example.com";

/// Builds a typed object from JSON, which reads closer to the YAML one would write.
fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches its type")
}

fn request_error(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn resource_slice_taint_without_time_added_is_defaulted() {
    let env = TestEnv::new().await;
    let name = env.unique_name("slice");
    let pool = env.unique_name("pool");
    let slices: Api<v1::ResourceSlice> = Api::all(env.client.clone());
    let slice: v1::ResourceSlice = object(json!({
        "metadata": { "name": name, "labels": env.labels() },
        "spec": {
            "driver": DRIVER,
            "pool": { "name": pool, "generation": 1, "resourceSliceCount": 1 },
            "allNodes": true,
            "devices": [{
                "name": "gpu-0",
                "taints": [{ "key": "example.com/unhealthy", "value": "ecc", "effect": "NoExecute" }],
            }],
        },
    }));
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("create ResourceSlice");

    let stored = slices.get(&name).await.expect("get ResourceSlice");
    let devices = stored.spec.devices.expect("devices");
    let taint = &devices[0].taints.as_ref().expect("taints")[0];
    assert_eq!(taint.key, "example.com/unhealthy");
    assert_eq!(taint.effect, "NoExecute");
    assert!(
        taint.time_added.is_some(),
        "the API server defaults timeAdded: {taint:?}"
    );
}

#[tokio::test]
async fn device_taint_rule_at_every_served_version() {
    let env = TestEnv::new().await;
    let pool = env.unique_name("pool");
    let versions = env.served_rule_versions().await;
    if support::serves_every_rule_version(env.cluster) {
        assert_eq!(
            versions,
            ["v1", "v1beta2", "v1alpha3"],
            "up.sh serves every version"
        );
    }
    assert!(
        !versions.is_empty(),
        "the cluster serves no DeviceTaintRule version"
    );

    let mut expected = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let name = env.unique_name(&format!("rule-{version}"));
        let device = format!("gpu-{i}");
        let resource = device_taint_eviction::k8s::device_taint_rule_resource(version);
        let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &resource);
        let rule: DynamicObject = object(json!({
            "apiVersion": resource.api_version, "kind": "DeviceTaintRule",
            "metadata": { "name": name, "labels": env.labels() },
            "spec": {
                "deviceSelector": { "driver": DRIVER, "pool": pool, "device": device },
                "taint": { "key": "example.com/maintenance", "value": device, "effect": "NoExecute" },
            },
        }));
        api.create(&PostParams::default(), &rule)
            .await
            .unwrap_or_else(|e| panic!("create {version} DeviceTaintRule: {e}"));
        let stored = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("get {version} DeviceTaintRule: {e}"));
        assert_eq!(stored.data["spec"]["taint"]["value"], json!(device));
        assert!(
            stored.data["spec"]["taint"]["timeAdded"].is_string(),
            "timeAdded defaulted at {version}: {}",
            stored.data["spec"]["taint"]
        );
        expected.push(name);
    }

    // One storage behind all versions: a list at the preferred version sees every rule.
    let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &env.rule_resource().await);
    let listed = api
        .list(&ListParams::default().labels(&format!("{}={}", support::TEST_NAMESPACE_LABEL, env.namespace)))
        .await
        .expect("list DeviceTaintRules");
    let mut names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
}

/// A claim allocated (one result, with a toleration) and reserved for a pod, as the scheduler
/// would leave it, and that pod, bound to a node where no kubelet runs, so it stays Pending.
#[tokio::test]
async fn resource_claim_status_and_pod_using_it() {
    let env = TestEnv::new().await;
    let pool = env.unique_name("pool");
    let claims: Api<v1::ResourceClaim> = env.api();
    let claim: v1::ResourceClaim = object(json!({
        "metadata": { "name": "gpu" },
        "spec": {
            "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": DRIVER } }] },
        },
    }));
    let created = claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("create ResourceClaim");
    assert!(created.status.is_none_or(|s| s.allocation.is_none()));

    let pods: Api<Pod> = env.api();
    let pod: Pod = object(json!({
        "metadata": { "name": "user" },
        "spec": {
            "nodeName": "node-that-does-not-exist",
            "resourceClaims": [{ "name": "gpu", "resourceClaimName": "gpu" }],
            "containers": [{
                "name": "app",
                "image": "registry.invalid/app:1",
                "resources": { "claims": [{ "name": "gpu" }] },
            }],
        },
    }));
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
    let pod_uid = pod.metadata.uid.clone().expect("pod uid");

    let mut allocated = claims.get("gpu").await.expect("get ResourceClaim");
    allocated.status = Some(object(json!({
        "allocation": {
            "devices": {
                "results": [{
                    "request": "gpu",
                    "driver": DRIVER,
                    "pool": pool,
                    "device": "gpu-0",
                    "tolerations": [{
                        "key": "example.com/unhealthy",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    }],
                }],
            },
        },
        "reservedFor": [{ "resource": "pods", "name": "user", "uid": pod_uid }],
    })));
    claims
        .replace_status("gpu", &PostParams::default(), &allocated)
        .await
        .expect("update ResourceClaim status");

    let stored = claims.get("gpu").await.expect("get ResourceClaim");
    let status = stored.status.expect("status");
    let results = status
        .allocation
        .and_then(|a| a.devices)
        .expect("allocation.devices")
        .results
        .unwrap_or_default();
    assert_eq!(results.len(), 1);
    assert_eq!(
        (
            results[0].driver.as_str(),
            results[0].pool.as_str(),
            results[0].device.as_str()
        ),
        (DRIVER, pool.as_str(), "gpu-0")
    );
    let toleration = &results[0].tolerations.as_ref().expect("tolerations")[0];
    assert_eq!(toleration.toleration_seconds, Some(300));
    let reserved = status.reserved_for.expect("reservedFor");
    assert_eq!(
        (reserved[0].name.as_str(), reserved[0].uid.as_str()),
        ("user", pod_uid.as_str())
    );

    let stored = pods.get("user").await.expect("get Pod");
    let spec = stored.spec.expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some("node-that-does-not-exist"));
    let claim_refs = spec.resource_claims.expect("resourceClaims");
    assert_eq!(claim_refs[0].resource_claim_name.as_deref(), Some("gpu"));
    let phase = stored.status.and_then(|s| s.phase);
    assert!(
        matches!(phase.as_deref(), None | Some("Pending")),
        "no kubelet runs, got phase {phase:?}"
    );
}

/// Tests can act as an identity without permissions: a `ServiceAccount` with a minted token (any
/// cluster) and, on a self-started control plane, the static `test-user`.
#[tokio::test]
async fn non_admin_identities_are_denied_without_rbac() {
    let env = TestEnv::new().await;
    let client = env.service_account_client("limited").await;
    let err = Api::<Pod>::namespaced(client, &env.namespace)
        .list(&ListParams::default())
        .await
        .expect_err("denied");
    assert_eq!(request_error(&err), Some(403), "{err}");

    if let Some(client) = env.token_user_client().await {
        let err = Api::<v1::ResourceSlice>::all(client)
            .list(&ListParams::default())
            .await
            .expect_err("denied");
        assert_eq!(request_error(&err), Some(403), "{err}");
    }
}

/// A shell's `KUBECONFIG` (say, a production context) never becomes the tests' cluster: this test
/// binary, run again with `KUBECONFIG` naming another cluster and without `DTE_TEST_KUBECONFIG`,
/// finds no existing cluster to use, so it would start its own control plane.
#[test]
fn a_shell_kubeconfig_is_never_the_test_cluster() {
    let kubeconfig = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("shell-context.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: production\n\
         clusters: [{name: production, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: admin, user: {token: not-a-token}}]\n\
         contexts: [{name: production, context: {cluster: production, user: admin}}]\n",
    )
    .expect("writing the kubeconfig");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "shell_kubeconfig_child"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove(support::TEST_KUBECONFIG_VAR)
        .output()
        .expect("running the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[ignore = "run by a_shell_kubeconfig_is_never_the_test_cluster, with KUBECONFIG set"]
fn shell_kubeconfig_child() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "run with KUBECONFIG set"
    );
    assert_eq!(support::existing_cluster_kubeconfig(), None);
}

/// Pods `plain` (no claim), `claims` (two claims, with status and our `DisruptionTarget`) and
/// `leaving` (two claims, terminating: held by a finalizer, which the caller removes).
async fn pods_of_every_shape(env: &TestEnv) -> Api<Pod> {
    use kube::api::{DeleteParams, Patch, PatchParams};

    let pods: Api<Pod> = env.api();
    let container = json!([{ "name": "app", "image": "registry.invalid/app:1" }]);
    let plain: Pod = object(json!({
        "metadata": { "name": "plain", "labels": { "app": "web" } },
        "spec": { "nodeName": "node-a", "containers": container },
    }));
    let with_claims = |name: &str, finalizers: serde_json::Value| -> Pod {
        object(json!({
            "metadata": { "name": name, "finalizers": finalizers },
            "spec": {
                "nodeName": "node-a",
                "resourceClaims": [
                    { "name": "direct", "resourceClaimName": "shared" },
                    { "name": "templated", "resourceClaimTemplateName": "gpu-template" },
                ],
                "containers": [{
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "resources": { "claims": [{ "name": "direct" }, { "name": "templated" }] },
                }],
            },
        }))
    };
    for pod in [
        plain,
        with_claims("claims", json!([])),
        with_claims("leaving", json!(["example.com/hold"])),
    ] {
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create Pod");
    }
    let status = json!({ "status": {
        "phase": "Running",
        "conditions": [
            { "type": "Ready", "status": "True" },
            { "type": "DisruptionTarget", "status": "True",
              "reason": device_taint_eviction::k8s::DISRUPTION_REASON,
              "message": device_taint_eviction::k8s::DISRUPTION_MESSAGE },
        ],
        "resourceClaimStatuses": [{ "name": "templated", "resourceClaimName": "claims-templated-x7" }],
    }});
    pods.patch_status("claims", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
    pods.delete("leaving", &DeleteParams::default())
        .await
        .expect("delete Pod");

    pods
}

/// The API server's protobuf pod list, as the controller converts it, reads the same as its JSON
/// list: every field the controller looks at of pods with claims (by name, from a template, with
/// status, terminating), and the identity of pods without.
#[tokio::test]
async fn pod_list_in_protobuf_reads_as_the_json_list() {
    use device_taint_eviction::{k8s::WatchedPod, protobuf, view::PodView};

    let env = TestEnv::new().await;
    let pods = pods_of_every_shape(&env).await;
    let response = get_in_protobuf(&env, &format!("/api/v1/namespaces/{}/pods", env.namespace)).await;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let converted: kube::core::ObjectList<WatchedPod> =
        serde_json::from_slice(&protobuf::to_json(&body).expect("converts")).expect("a pod list");
    let json = Api::<WatchedPod>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("JSON list");

    assert!(converted.metadata.resource_version.is_some_and(|v| !v.is_empty()));
    let name = |p: &WatchedPod| p.metadata.name.clone().unwrap_or_default();
    assert_eq!(
        converted.items.iter().map(name).collect::<Vec<_>>(),
        json.items.iter().map(name).collect::<Vec<_>>()
    );
    for (converted, json) in converted.items.iter().zip(&json.items) {
        let view = PodView::from_api(converted).expect("valid");
        assert_eq!(view, PodView::from_api(json).expect("valid"), "{}", name(json));
        if view.is_some() {
            assert_eq!(converted, json, "every field read");
        } else {
            assert_eq!(converted.metadata, json.metadata);
        }
    }
    let views: Vec<PodView> = converted
        .items
        .iter()
        .filter_map(|p| PodView::from_api(p).expect("valid"))
        .collect();
    let claims = views.iter().find(|v| v.name == "claims").expect("claims");
    assert_eq!(claims.claims.len(), 2, "{claims:?}");
    assert!(claims.scheduled && claims.disruption_target && !claims.terminating);
    let leaving = views.iter().find(|v| v.name == "leaving").expect("leaving");
    assert!(leaving.terminating, "{leaving:?}");

    release_finalizer(&pods, "leaving").await;
}

/// Removes the finalizers of pod `name`, which [`pods_of_every_shape`] gives one.
async fn release_finalizer(pods: &Api<Pod>, name: &str) {
    use kube::api::{Patch, PatchParams};

    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .expect("release the finalizer");
}

/// Type and pod of a pod watch event; bookmarks and errors fail the test.
fn typed(event: WatchEvent<WatchedPod>) -> (&'static str, WatchedPod) {
    match event {
        WatchEvent::Added(pod) => ("ADDED", pod),
        WatchEvent::Modified(pod) => ("MODIFIED", pod),
        WatchEvent::Deleted(pod) => ("DELETED", pod),
        other => panic!("unexpected event {other:?}"),
    }
}
/// Events of a pod watch up to the one of the pod named `marker`.
async fn until_marker(
    mut events: impl futures::Stream<Item = WatchEvent<WatchedPod>> + Unpin,
) -> Vec<(&'static str, WatchedPod)> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(next) = futures::StreamExt::next(&mut events).await {
            let (kind, pod) = typed(next);
            let marker = pod.metadata.name.as_deref() == Some("marker");
            seen.push((kind, pod));
            if marker {
                return;
            }
        }
        panic!("the watch ended before the marker");
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the marker pod's event within a minute");
    seen
}

/// The API server's answer to a GET of `path` asked in protobuf, which it answers in protobuf.
async fn get_in_protobuf(env: &TestEnv, path: &str) -> http::Response<kube::client::Body> {
    use device_taint_eviction::protobuf;

    let request = http::Request::get(path)
        .header(http::header::ACCEPT, protobuf::ACCEPT)
        .body(kube::client::Body::empty())
        .expect("request");
    let response = env.client.send(request).await.expect("GET in protobuf");
    assert!(
        response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(protobuf::MEDIA_TYPE)),
        "the API server answers {path} in protobuf: {:?}",
        response.headers()
    );
    response
}

/// A watch of `env`'s pods from `from`, asked in protobuf and converted as the controller does.
async fn protobuf_pod_watch(
    env: &TestEnv,
    from: &str,
) -> futures::stream::BoxStream<'static, WatchEvent<WatchedPod>> {
    use device_taint_eviction::protobuf;
    use futures::StreamExt as _;

    let response = get_in_protobuf(
        env,
        &format!(
            "/api/v1/namespaces/{}/pods?watch=true&resourceVersion={from}",
            env.namespace
        ),
    )
    .await;
    let mut decoder = protobuf::WatchDecoder::default();
    http_body_util::BodyExt::into_data_stream(response.into_body())
        .map(move |chunk| {
            let lines = decoder.push(&chunk.expect("watch bytes")).expect("converts");
            let events: Vec<WatchEvent<WatchedPod>> = lines
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).expect("a watch event"))
                .collect();
            futures::stream::iter(events)
        })
        .flatten()
        .boxed()
}

/// The API server's protobuf pod watch, as the controller converts it, reads the same as its
/// JSON watch from the same resourceVersion: the same events in the same order, each pod with
/// every field the controller looks at (or its identity, without claims).
#[tokio::test]
async fn pod_watch_in_protobuf_reads_as_the_json_watch() {
    use device_taint_eviction::view::PodView;
    use futures::StreamExt as _;
    use kube::api::{DeleteParams, WatchParams};

    let env = TestEnv::new().await;
    let from = env
        .api::<WatchedPod>()
        .list(&ListParams::default())
        .await
        .expect("JSON list")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let converted = protobuf_pod_watch(&env, &from).await;
    let json = env
        .api::<WatchedPod>()
        .watch(&WatchParams::default(), &from)
        .await
        .expect("JSON watch")
        .map(|e| e.expect("JSON event"))
        .boxed();

    let pods = pods_of_every_shape(&env).await;
    release_finalizer(&pods, "leaving").await;
    pods.delete("leaving", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the Pod at once");
    pods.create(
        &PostParams::default(),
        &object(json!({
            "metadata": { "name": "marker" },
            "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] },
        })),
    )
    .await
    .expect("create the marker Pod");
    let (converted, json) = tokio::join!(until_marker(converted), until_marker(json));

    let name =
        |(kind, p): &(&str, WatchedPod)| format!("{kind} {}", p.metadata.name.as_deref().unwrap_or_default());
    assert_eq!(
        converted.iter().map(name).collect::<Vec<_>>(),
        json.iter().map(name).collect::<Vec<_>>()
    );
    let names: Vec<String> = json.iter().map(name).collect();
    assert!(
        [
            "ADDED claims",
            "MODIFIED claims",
            "MODIFIED leaving",
            "DELETED leaving",
            "ADDED marker"
        ]
        .iter()
        .all(|e| names.iter().any(|n| n == e)),
        "creations, status, deletion and the marker: {names:?}"
    );
    for ((_, converted), (kind, json)) in converted.iter().zip(&json) {
        let view = PodView::from_api(converted).expect("valid");
        assert_eq!(
            view,
            PodView::from_api(json).expect("valid"),
            "{kind} {:?}",
            json.metadata.name
        );
        if view.is_some() {
            assert_eq!(converted, json, "every field read");
        } else {
            assert_eq!(converted.metadata, json.metadata);
        }
    }
    let last_of = |pod: &str| {
        converted
            .iter()
            .rev()
            .find(|(_, p)| p.metadata.name.as_deref() == Some(pod))
            .and_then(|(_, p)| PodView::from_api(p).expect("valid"))
            .expect("a pod with claims")
    };
    assert!(last_of("claims").disruption_target);
    assert!(last_of("leaving").terminating);
}

/// The actuator's writes ask their answers as metadata only (`actuator::METADATA_ONLY`), and the
/// API server's answers say what the actuator must know: a terminating pod is left alone, a pod
/// whose name belongs to another UID is not touched, a live pod gets the condition, the DELETE
/// and one Event.
#[tokio::test]
async fn the_actuator_reads_metadata_only_answers() {
    use device_taint_eviction::{
        actuator::{Actuator, Attempt, EvictionMode, Outcome},
        eviction::{Eviction, TaintSource},
        k8s::Timestamp,
        metrics::Metrics,
        view::{PodRef, RuleRef},
    };
    use k8s_openapi::api::events::v1::Event;

    let env = TestEnv::new().await;
    let pods = pods_of_every_shape(&env).await;
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    let actuator = Actuator::new(
        env.client.clone(),
        "smoke",
        EvictionMode::Delete,
        false,
        None,
        metrics,
    );
    let eviction = Eviction {
        at: Timestamp::now(),
        reasons: vec![TaintSource::Rule(RuleRef::new("gpu-broken", "uid-gpu-broken"))],
    };
    let attempt = Attempt {
        marked: false,
        due: tokio::time::Instant::now(),
    };
    let uid = |pod: &Pod| pod.metadata.uid.clone().expect("uid");
    let evict = |name: &'static str, uid: String| {
        let pod = PodRef::new(env.namespace.clone(), name, uid);
        let (actuator, eviction) = (&actuator, &eviction);
        async move {
            actuator
                .evict(&pod, eviction, attempt)
                .await
                .expect("no API error")
        }
    };

    let leaving = pods.get("leaving").await.expect("leaving");
    assert_eq!(evict("leaving", uid(&leaving)).await, Outcome::NotNeeded);
    let plain = pods.get("plain").await.expect("plain");
    assert_eq!(evict("plain", "another-uid".into()).await, Outcome::NotNeeded);
    let untouched = pods.get("plain").await.expect("plain");
    assert_eq!(
        untouched.metadata.resource_version,
        plain.metadata.resource_version
    );

    assert_eq!(evict("plain", uid(&plain)).await, Outcome::Evicted);
    let evicted = pods
        .get("plain")
        .await
        .expect("plain, bound to a node without kubelet");
    assert!(evicted.metadata.deletion_timestamp.is_some(), "deleted");
    let conditions = evicted.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.type_ == "DisruptionTarget"
            && c.reason.as_deref() == Some(device_taint_eviction::k8s::DISRUPTION_REASON)),
        "{conditions:?}"
    );
    assert!(actuator.flush_events(std::time::Duration::from_secs(30)).await);
    let events: Vec<Event> = env
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items;
    let evicted: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(device_taint_eviction::actuator::EVICTION_REASON))
        .filter_map(|e| e.regarding.as_ref()?.name.as_deref())
        .collect();
    assert_eq!(evicted, ["plain"], "one eviction Event, for the evicted pod");

    release_finalizer(&pods, "leaving").await;
}
