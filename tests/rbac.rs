//! Proof that the Helm chart's RBAC is enough for the controller, and no more than enough: the
//! chart's ServiceAccount, ClusterRole(+Binding) and leader-election Role(+Binding), rendered by
//! `tests/chart/render-rbac.sh` and applied to a real API server with RBAC, let the controller
//! (running as that ServiceAccount and nothing else) evict a pod end to end; with one permission
//! taken away the eviction fails and the log says which permission was missing.
//!
//! One test: the controller is cluster-wide, and this binary runs it twice in sequence.

mod support;

use std::{path::Path, process::Command};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::Pod,
    rbac::v1::{ClusterRole, PolicyRule, Role},
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::Value;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{taint, toleration},
    wait_for,
};

const KEY: &str = "example.com/broken";

/// Every cluster-wide permission the controller uses (eviction mode "delete", the chart's
/// default), as `verb resource`. The chart must grant exactly these: the scenario below proves
/// each is needed (taken away, the controller fails naming it); this list makes a granted but
/// unused verb fail at once, by name, instead of as a wait for a Forbidden that never comes.
const USED_CLUSTER: [&str; 13] = [
    "create events",                 // Events on pods and rules
    "delete pods",                   // eviction mode "delete"
    "list devicetaintrules",         // the watches (list: in pages)
    "list pods",                     //
    "list resourceclaims",           //
    "list resourceslices",           //
    "patch devicetaintrules/status", // EvictionInProgress, by server-side apply
    "patch events",                  // a repeated Event (its series count)
    "patch pods/status",             // the DisruptionTarget condition
    "watch devicetaintrules",        //
    "watch pods",                    //
    "watch resourceclaims",          //
    "watch resourceslices",          //
];

/// The leader-election Role's permissions: read and renew the Lease, create it when missing.
const USED_LEASE: [&str; 3] = ["create leases", "get leases", "patch leases"];

/// The `verb resource` pairs `rules` grant, sorted.
fn granted(rules: &[PolicyRule]) -> Vec<String> {
    let mut pairs: Vec<String> = rules
        .iter()
        .flat_map(|rule| {
            rule.resources
                .iter()
                .flatten()
                .flat_map(move |resource| rule.verbs.iter().map(move |verb| format!("{verb} {resource}")))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

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

/// Runs the controller without permission `verb` on `resource` (the roles are already narrowed)
/// and waits for the Forbidden answer that names it; returns that log line. The scenario uses
/// every permission: a pod evicted through a rule (Event, condition, DELETE, rule status), a
/// missing Lease (created), and a pod whose eviction is cancelled twice (the second "Cancelling
/// deletion" Event is a patch of the first).
async fn without_permission(
    env: &TestEnv,
    kubeconfig: &Path,
    args: &[&str],
    verb: &str,
    resource: &str,
    run: usize,
) -> String {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let _ = leases
        .delete("device-taint-eviction-controller", &DeleteParams::default())
        .await;
    let controller = Controller::spawn(kubeconfig, args);
    let pod = format!("pod-{run}");
    let device = format!("gpu-{run}");
    let spare = format!("{device}-w");
    pod_and_rule(env, &[device.as_str(), spare.as_str()], &pod, &device).await;
    let wanted = format!("cannot {verb} resource \\\"{resource}\\\"");
    let plain = format!("cannot {verb} resource \"{resource}\"");
    let find = || {
        controller
            .log_text()
            .lines()
            .find(|l| l.contains(&wanted) || l.contains(&plain))
            .map(str::to_owned)
    };
    if verb == "patch" && resource == "events" {
        // A repeated Event is the only use of this permission.
        let waiting = format!("{pod}-w");
        let claim = format!("{waiting}-claim");
        env.pod_with_claim(&waiting, &claim, &spare, vec![toleration(KEY, Some(3600))])
            .await;
        for round in 0..2 {
            let rule = env.unique_name(&format!("{waiting}-{round}"));
            env.create_rule(&rule, Some(&spare), taint(KEY, "NoExecute"))
                .await;
            wait_for("the waiting pod to be pending", TIMEOUT, || async {
                env.rule_condition(&rule)
                    .await
                    .filter(|(reason, message)| reason == "PodsPendingEviction" && message.contains("1 pod"))
            })
            .await;
            let ar = env.rule_resource().await;
            Api::<DynamicObject>::all_with(env.client.clone(), &ar)
                .delete(&rule, &DeleteParams::default())
                .await
                .expect("delete rule");
            if round == 0 {
                wait_for("the first Cancelling deletion Event", TIMEOUT, || async {
                    let events: Api<k8s_openapi::api::events::v1::Event> =
                        Api::namespaced(env.client.clone(), &env.namespace);
                    let list = events.list(&kube::api::ListParams::default()).await.ok()?;
                    list.items
                        .iter()
                        .any(|e| e.note.as_deref() == Some("Cancelling deletion"))
                        .then_some(())
                })
                .await;
            }
        }
    }
    let line = wait_for(
        &format!("a Forbidden error naming {verb} {resource}"),
        TIMEOUT,
        || async { find() },
    )
    .await;
    controller.stop().await;
    env.release_pod(&pod).await;
    line
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
    for (kind, used) in [("ClusterRole", &USED_CLUSTER[..]), ("Role", &USED_LEASE[..])] {
        let rules: Vec<PolicyRule> = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .map(|d| serde_json::from_value(d["rules"].clone()).expect("rules"))
            .unwrap_or_default();
        assert_eq!(
            granted(&rules),
            used,
            "the chart's {kind} must grant exactly what the controller uses"
        );
    }
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

    // 2. Each granted verb taken away in turn: the controller fails in a way that names it.
    let cluster_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("ClusterRole name")
        .to_owned();
    let lease_role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("Role name")
        .to_owned();
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.namespace);
    let granted_cluster = cluster_roles.get(&cluster_role).await.expect("ClusterRole");
    let granted_lease = roles.get(&lease_role).await.expect("Role");
    let mut checked = Vec::new();
    for (in_cluster_role, rules) in [
        (true, granted_cluster.rules.clone().unwrap_or_default()),
        (false, granted_lease.rules.clone().unwrap_or_default()),
    ] {
        for (index, rule) in rules.iter().enumerate() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let mut fewer = rules.clone();
                    fewer[index].verbs.retain(|v| v != verb);
                    if fewer[index].verbs.is_empty() {
                        fewer.remove(index);
                    }
                    // One resource of a rule with several: keep the others.
                    for other in rule.resources.iter().flatten().filter(|r| *r != resource) {
                        fewer.push(PolicyRule {
                            resources: Some(vec![other.clone()]),
                            ..rule.clone()
                        });
                    }
                    if in_cluster_role {
                        let mut narrowed = granted_cluster.clone();
                        narrowed.rules = Some(fewer);
                        narrowed.metadata.resource_version = None;
                        cluster_roles
                            .replace(&cluster_role, &PostParams::default(), &narrowed)
                            .await
                            .expect("replace the ClusterRole");
                    } else {
                        let mut narrowed = granted_lease.clone();
                        narrowed.rules = Some(fewer);
                        narrowed.metadata.resource_version = None;
                        roles
                            .replace(&lease_role, &PostParams::default(), &narrowed)
                            .await
                            .expect("replace the Role");
                    }
                    // A streaming list is a watch: lists are what paged initial lists need (a
                    // server that refuses streaming lists, or --initial-list=paged).
                    let paged = [args.as_slice(), &["--initial-list=paged"]].concat();
                    let args = if verb == "list" { &paged } else { &args };
                    let line =
                        without_permission(&env, &kubeconfig, args, verb, resource, checked.len() + 1).await;
                    eprintln!("without {verb} {resource}: {line}");
                    checked.push(format!("{verb} {resource}"));
                }
            }
        }
        // Restore what this role grants before the next one loses a verb.
        let mut narrowed = granted_cluster.clone();
        narrowed.metadata.resource_version = None;
        cluster_roles
            .replace(&cluster_role, &PostParams::default(), &narrowed)
            .await
            .expect("restore the ClusterRole");
        let mut narrowed = granted_lease.clone();
        narrowed.metadata.resource_version = None;
        roles
            .replace(&lease_role, &PostParams::default(), &narrowed)
            .await
            .expect("restore the Role");
    }
    assert_eq!(
        checked.len(),
        USED_CLUSTER.len() + USED_LEASE.len(),
        "every granted verb must be taken away once: {checked:?}"
    );
    env.release_pod("pod-0").await;

    // The cluster-scoped objects carry no test label: remove them here.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(env.client.clone());
    let _ = bindings.delete(&cluster_role, &DeleteParams::default()).await;
    let _ = cluster_roles
        .delete(&cluster_role, &DeleteParams::default())
        .await;
}
