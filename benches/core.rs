//! Decision-core benchmarks: what the controller's hot paths cost without any API server.
//!
//! The cluster: 1000 ResourceSlices of 10 devices (10 000 devices), 10 000 allocated claims
//! (one device each), 100 000 pods of which 10 000 use a claim; and the timed work queue with one
//! million keys; the JSON body of a pod's eviction Event. Run with `cargo bench --bench core`.

use std::time::Duration;

use device_taint_eviction::{
    fixtures::{claim, pod, rule, slice, t, taint},
    index::State,
    queue::{Backoff, Cancelled, Completion, Finished, Scheduled, WorkQueue},
    view::{ObjectName, SliceView},
};

const SLICES: usize = 1000;
const DEVICES_PER_SLICE: usize = 10;
const CLAIMS: usize = SLICES * DEVICES_PER_SLICE;
const PODS: usize = 100_000;

fn main() {
    divan::main();
}

fn slice_of(i: usize, tainted_device: Option<usize>) -> SliceView {
    let mut s = slice(&format!("slice-{i}"), "gpu.example.com", &format!("node-{i}"));
    for d in 0..DEVICES_PER_SLICE {
        s = s.with_device(&format!("gpu-{d}"));
        if tainted_device == Some(d) {
            s = s.with_taint(taint("example.com/broken", "", "NoExecute", Some(t(0))));
        }
    }
    s
}

fn build() -> State {
    let mut state = State::new();
    for i in 0..SLICES {
        state.apply_slice(slice_of(i, None), t(0));
    }
    for i in 0..PODS {
        let ns = format!("ns-{}", i % 100);
        let name = ObjectName::new(&ns, format!("pod-{i}"));
        if i < CLAIMS {
            let p = pod(&ns, &name.name).with_claim(&format!("claim-{i}"));
            let c = claim(&ns, &format!("claim-{i}"))
                .with_device(
                    "gpu.example.com",
                    &format!("node-{}", i / DEVICES_PER_SLICE),
                    &format!("gpu-{}", i % DEVICES_PER_SLICE),
                )
                .reserved_for(&p);
            state.apply_claim(c);
            state.apply_pod(&name, Some(p));
        } else {
            // Pods without claims are projected to nothing and not stored.
            state.apply_pod(&name, None);
        }
    }
    state.take_changes();
    state
}

/// Start-up: the initial lists of every kind.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn build_state() -> State {
    build()
}

/// One device of one slice gets a NoExecute taint, then loses it (upstream BenchmarkTaintUntaint).
#[divan::bench(sample_count = 50, sample_size = 10)]
fn taint_untaint_one_device(bencher: divan::Bencher) {
    let mut state = build();
    bencher.bench_local(|| {
        state.apply_slice(slice_of(500, Some(3)), t(1));
        assert_eq!(state.sizes().pending, 1);
        state.apply_slice(slice_of(500, None), t(1));
        state.take_changes()
    });
}

/// A DeviceTaintRule selecting the driver's 10 000 devices, added and deleted again.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn rule_matching_10k_devices(bencher: divan::Bencher) {
    let mut state = build();
    let r = rule("all-gpus").selecting(Some("gpu.example.com"), None, None);
    bencher.bench_local(|| {
        state.apply_rule(r.clone(), t(1));
        assert_eq!(state.sizes().pending, CLAIMS);
        state.delete_rule(&r.name, &r.uid);
        state.take_changes()
    });
}

/// A rule that selects a single device among 10 000 (the incremental path, SPEC D5).
#[divan::bench(sample_count = 50, sample_size = 10)]
fn rule_matching_one_device(bencher: divan::Bencher) {
    let mut state = build();
    let r = rule("one-gpu").selecting(Some("gpu.example.com"), Some("node-7"), Some("gpu-3"));
    bencher.bench_local(|| {
        state.apply_rule(r.clone(), t(1));
        state.delete_rule(&r.name, &r.uid);
        state.take_changes()
    });
}

/// A pod as the API server sends it in a watch event: a typical workload (two containers, probes,
/// volumes, labels, annotations) with two claims and the managedFields of three writers.
fn watch_event_pod_json() -> Vec<u8> {
    let fields = |manager: &str| {
        serde_json::json!({
            "manager": manager, "operation": "Update", "apiVersion": "v1", "time": "2026-11-23T10:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                         "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {},
                                    "f:resources": {"f:claims": {}}}}, "f:resourceClaims": {}},
                         "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}}}}}
        })
    };
    let container = |name: &str| {
        serde_json::json!({
            "name": name, "image": "registry.example.com/team/trainer:2.14.1",
            "command": ["/bin/trainer", "--epochs=100", "--checkpoint-dir=/data/ckpt"],
            "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "POD_NAME",
                     "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
            "resources": {"limits": {"cpu": "8", "memory": "64Gi"}, "requests": {"cpu": "8", "memory": "64Gi"},
                          "claims": [{"name": "gpu"}]},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"
        })
    };
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "trainer-7f9c8d-x2k4p", "namespace": "ml-team", "uid": "8c3e5a2b-1f4d-4e6a-9b7c-2d1e0f3a4b5c",
            "resourceVersion": "123456789", "creationTimestamp": "2026-11-23T10:00:00Z",
            "labels": {"app": "trainer", "tier": "gpu", "pod-template-hash": "7f9c8d"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-23T09:59:00Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "trainer-7f9c8d",
                                 "uid": "1a2b3c4d-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [fields("kube-controller-manager"), fields("kube-scheduler"), fields("kubelet")]
        },
        "spec": {
            "nodeName": "gpu-node-17", "serviceAccountName": "trainer", "restartPolicy": "Always",
            "containers": [container("app"), container("sidecar")],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "gpu"},
                               {"name": "nic", "resourceClaimName": "shared-nic"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "trainer-data"}},
                        {"name": "kube-api-access-abcde", "projected": {"sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "podIP": "10.244.17.23", "hostIP": "172.18.0.17", "qosClass": "Guaranteed",
            "startTime": "2026-11-23T10:00:05Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T10:00:20Z"},
                           {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-23T10:00:01Z"}],
            "resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "trainer-7f9c8d-x2k4p-gpu-q8w7e"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.example.com/team/trainer:2.14.1",
                                   "imageID": "registry.example.com/team/trainer@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                   "containerID": "containerd://0123456789abcdef", "started": true,
                                   "state": {"running": {"startedAt": "2026-11-23T10:00:10Z"}}}]
        }
    }))
    .expect("pod JSON")
}

/// Decoding one watched pod as the full k8s-openapi `Pod` (what a watch of `Pod` does).
#[divan::bench(sample_count = 100, sample_size = 100)]
fn decode_pod_full(bencher: divan::Bencher) {
    let json = watch_event_pod_json();
    bencher.bench(|| {
        let pod: device_taint_eviction::k8s::Pod =
            serde_json::from_slice(divan::black_box(&json)).expect("pod");
        pod
    });
}

/// Decoding the same pod as the controller's `WatchedPod`, plus projecting it to its view.
#[divan::bench(sample_count = 100, sample_size = 100)]
fn decode_pod_watched(bencher: divan::Bencher) {
    let json = watch_event_pod_json();
    bencher.bench(|| {
        let pod: device_taint_eviction::k8s::WatchedPod =
            serde_json::from_slice(divan::black_box(&json)).expect("pod");
        device_taint_eviction::view::PodView::from_api(&pod).expect("valid pod")
    });
}

/// Decoding the same pod as the controller's watch does since lists and watches decode item by
/// item: taken as raw JSON text, then decoded as a `WatchedPod` (an undecodable pod is then
/// skipped alone).
#[divan::bench(sample_count = 100, sample_size = 100)]
fn decode_pod_watched_item_by_item(bencher: divan::Bencher) {
    let json = watch_event_pod_json();
    bencher.bench(|| {
        let pod: device_taint_eviction::watch::Decoded<device_taint_eviction::k8s::WatchedPod> =
            serde_json::from_slice(divan::black_box(&json)).expect("pod");
        let device_taint_eviction::watch::Decoded::Ok(pod) = pod else {
            panic!("the pod decodes")
        };
        device_taint_eviction::view::PodView::from_api(&pod).expect("valid pod")
    });
}

/// A pod's eviction Event and its reference, for the Event body benchmarks.
fn eviction_event() -> (
    kube::runtime::events::Reporter,
    kube::runtime::events::Event,
    k8s_openapi::api::core::v1::ObjectReference,
) {
    let reporter = kube::runtime::events::Reporter {
        controller: "device-taint-eviction-controller".into(),
        instance: Some("device-taint-eviction-7d9c5b6f4-x2x9k".into()),
    };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "DeviceTaintManagerEviction".into(),
        note: Some("Marking for deletion".into()),
        action: "Evict".into(),
        secondary: None,
    };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some("team-a".into()),
        name: Some("trainer-1234".into()),
        uid: Some("0b7b4c8e-5a0e-4d2b-9c39-1d7d6c3f2e11".into()),
        ..Default::default()
    };
    (reporter, event, reference)
}

/// A pod's eviction Event body built as a k8s-openapi `Event` (copies of every field, the event
/// time through its strftime pattern; [`device_taint_eviction::fixtures::openapi_event`]) and
/// written as JSON: how the body was built before.
#[divan::bench(sample_count = 100, sample_size = 100)]
fn event_body_openapi(bencher: divan::Bencher) {
    let (reporter, event, reference) = eviction_event();
    bencher.bench(|| {
        let now = device_taint_eviction::k8s::Timestamp::now();
        let body = device_taint_eviction::fixtures::openapi_event(&reporter, &event, &reference, now);
        serde_json::to_vec(&body).expect("json")
    });
}

/// The same body as the controller writes it ([`device_taint_eviction::actuator::event_body`]).
#[divan::bench(sample_count = 100, sample_size = 100)]
fn event_body_borrowed(bencher: divan::Bencher) {
    let (reporter, event, reference) = eviction_event();
    bencher.bench(|| {
        device_taint_eviction::actuator::event_body(
            &reporter,
            &event,
            &reference,
            device_taint_eviction::k8s::Timestamp::now(),
        )
        .expect("json")
    });
}

/// The timed queue with one million keys: insert them with scrambled deadlines, move every tenth
/// one earlier, cancel every hundredth, then take and finish the 1000 that are due.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn queue_one_million_keys() {
    const N: u32 = 1_000_000;
    // Tokio's clock, paused: deadlines are compared with a time that does not move on its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let _context = runtime.enter();
    let q = WorkQueue::new(Backoff::default());
    let base = tokio::time::Instant::now();
    // Deadlines in a scrambled order (7919 is prime, so `i * 7919 % N` is a permutation of 0..N).
    let deadline = |i: u32| base + Duration::from_millis(u64::from(i) * 7919 % u64::from(N));
    for i in 0..N {
        assert_eq!(q.schedule(i, deadline(i)), Scheduled::Inserted);
    }
    assert_eq!(q.len(), N as usize);
    for i in (0..N).step_by(10) {
        q.schedule_no_later(i, base);
    }
    for i in (5..N).step_by(100) {
        assert_eq!(q.cancel(&i), Cancelled::Removed);
    }
    // Due at `base`: the moved keys (key 0 among them).
    let due: Vec<_> = std::iter::from_fn(|| q.try_next()).take(1000).collect();
    assert_eq!(due.len(), 1000);
    assert!(due.iter().all(|(k, _)| k % 10 == 0));
    for (key, ticket) in due {
        assert_eq!(q.done(&key, ticket, Completion::Forget), Finished::Forgotten);
    }
    assert_eq!(q.len(), (N - N / 100 - 1000) as usize);
}
