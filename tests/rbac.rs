//! Proof that the Helm chart's RBAC is enough for the controller, and no more than enough: the
//! chart's ServiceAccount, ClusterRole(+Binding) and leader-election Role(+Binding), rendered by
//! `tests/chart/render-rbac.sh` and applied to a real API server with RBAC, let the controller
//! (running as that ServiceAccount and nothing else) evict a pod end to end; with one permission
//! taken away the eviction fails and the log says which permission was missing.
//!
//! One test: the controller is cluster-wide, and this binary runs it twice in sequence.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::Value;
use support::controller::Controller;
use support::objects::taint;
use support::{TIMEOUT, TestEnv, wait_for};

const KEY: &str = "example.com/broken";

/// The chart's RBAC objects for release `release` in `namespace` (leader election on, eviction
/// mode "delete": the chart's defaults), parsed from `render-rbac.sh`'s YAML.
fn render_rbac(namespace: &str, release: &str) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/render-rbac.sh");
    let output = Command::new(&script)
        .args([namespace, release, "--set", "leaderElection.enabled=true"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("render-rbac.sh prints YAML documents");
    docs.into_iter().filter(serde_json::Value::is_object).collect()
}

/// Server-side applies one rendered object as the admin.
async fn apply(env: &TestEnv, doc: &Value) -> DynamicObject {
    let (group, version) = match doc["apiVersion"].as_str().expect("apiVersion").split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().expect("apiVersion").to_owned(),
        ),
    };
    let kind = doc["kind"].as_str().expect("kind");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, kind));
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(env.client.clone(), ns, &resource),
        None => Api::all_with(env.client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply("dte-rbac-test").force(),
        &Patch::Apply(doc),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"))
}

/// Whether `pod` carries the `DisruptionTarget` condition (the pod is held by a test finalizer).
async fn has_disruption_target(env: &TestEnv, pod: &str) -> bool {
    let pod = env.api::<Pod>().get(pod).await.expect("get pod");
    pod.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
}

/// Creates device `device` (untainted) in the test's slice, a pod using it, then a NoExecute rule
/// on it; returns the rule's name.
async fn pod_and_rule(env: &TestEnv, devices: &[&str], pod: &str, device: &str) -> String {
    let slice: Vec<(&str, Vec<Value>)> = devices.iter().map(|d| (*d, vec![])).collect();
    env.apply_slice(&env.unique_name("slice"), 1, &slice).await;
    env.pod_with_claim(pod, &format!("{pod}-claim"), device, vec![])
        .await;
    // Keep the deleted pod readable, so that its DisruptionTarget condition can be checked.
    env.keep_pod(pod).await;
    let rule = env.unique_name(pod);
    env.create_rule(&rule, Some(device), taint(KEY, "NoExecute"))
        .await;
    rule
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one scenario in two runs, start to finish
async fn chart_rbac_is_enough_and_no_more() {
    let env = TestEnv::new().await;
    // Cluster-scoped ClusterRole(+Binding) take the release's name: unique per run.
    let release = env.unique_name("dte");
    let docs = render_rbac(&env.namespace, &release);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(&kind), "the chart renders no {kind}: {kinds:?}");
    }
    for doc in &docs {
        apply(&env, doc).await;
    }
    let account = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("ServiceAccount name")
        .to_owned();
    let kubeconfig = env.service_account_kubeconfig(&account).await;
    let args = [
        "--leader-elect=true".to_owned(),
        format!("--leader-elect-namespace={}", env.namespace),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // 1. With exactly the chart's permissions: the whole eviction.
    let controller = Controller::start(&kubeconfig, &args).await;
    let rule = pod_and_rule(&env, &["gpu-0"], "pod-0", "gpu-0").await;
    wait_for("the pod to be evicted", TIMEOUT, || async {
        env.pod_deleted("pod-0").await.then_some(())
    })
    .await;
    assert!(
        has_disruption_target(&env, "pod-0").await,
        "pod-0 was deleted without the DisruptionTarget condition; log:\n{}",
        controller.log_text()
    );
    let events = wait_for("the eviction event", TIMEOUT, || async {
        let e = env.eviction_events("pod-0").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Marking for deletion".to_owned()]);
    wait_for("the rule to report Completed", TIMEOUT, || async {
        env.rule_condition(&rule)
            .await
            .filter(|(reason, _)| reason == "Completed")
    })
    .await;
    let log = controller.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC was not enough; log:\n{log}"
    );
    assert_eq!(
        controller.stop().await,
        Some(0),
        "log:\n{}",
        controller.log_text()
    );

    // 2. Without `delete` on pods: no eviction, and the log names what is missing.
    let cluster_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("ClusterRole name")
        .to_owned();
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let mut applied = cluster_roles
        .get(&cluster_role)
        .await
        .expect("get the chart's ClusterRole");
    let role_rules = applied.rules.as_mut().expect("ClusterRole rules");
    let pods = role_rules
        .iter_mut()
        .find(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.iter().any(|x| x == "pods"))
        })
        .expect("a rule on pods");
    assert!(
        pods.verbs.iter().any(|v| v == "delete"),
        "the chart grants no delete on pods"
    );
    pods.verbs.retain(|v| v != "delete");
    cluster_roles
        .replace(&cluster_role, &kube::api::PostParams::default(), &applied)
        .await
        .expect("replace the ClusterRole");

    let controller = Controller::start(&kubeconfig, &args).await;
    let rule = pod_and_rule(&env, &["gpu-0", "gpu-1"], "pod-1", "gpu-1").await;
    let line = wait_for("a Forbidden error in the controller log", TIMEOUT, || async {
        controller
            .log_text()
            .lines()
            .find(|l| l.to_lowercase().contains("forbidden"))
            .map(str::to_owned)
    })
    .await;
    let log = controller.log_text();
    assert!(
        line.contains("delete") && line.contains("pods"),
        "the Forbidden message does not name the verb and resource (delete pods):\n{line}\nlog:\n{log}"
    );
    assert!(
        !env.pod_deleted("pod-1").await,
        "pod-1 was deleted without the delete permission"
    );
    assert_ne!(
        env.rule_condition(&rule)
            .await
            .map(|(reason, _)| reason)
            .as_deref(),
        Some("Completed"),
        "the rule reports Completed although the pod was not deleted"
    );
    eprintln!("controller log line for the missing permission:\n{line}");
    controller.stop().await;
    env.release_pod("pod-0").await;
    env.release_pod("pod-1").await;

    // The cluster-scoped objects carry no test label: remove them here.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(env.client.clone());
    let _ = bindings.delete(&cluster_role, &DeleteParams::default()).await;
    let _ = cluster_roles
        .delete(&cluster_role, &DeleteParams::default())
        .await;
}
