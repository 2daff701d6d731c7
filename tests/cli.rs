//! The `taint`, `untaint` and `explain` subcommands as an operator runs them: the built binary
//! against a real API server, with a controller evicting.
//!
//! Every test works on a pool of its own (and names its rules after it), so the tests run in
//! parallel; they share one controller.

mod support;

use std::{path::Path, process::Stdio};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use support::{
    TIMEOUT, TestEnv,
    objects::{DRIVER, toleration},
    wait_for,
};

const KEY: &str = "example.com/cli";

/// What one run of the binary printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `device-taint-eviction ARGS` with `KUBECONFIG=kubeconfig` to completion (stdout and stderr
/// are pipes, so the progress shows as lines, as in a CI log), giving up after `timeout`.
async fn cli(kubeconfig: &Path, args: &[&str], timeout: std::time::Duration) -> Run {
    cli_env(kubeconfig, args, &[], timeout).await
}

/// [`cli`] with `env` added to the environment.
async fn cli_env(
    kubeconfig: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-taint-eviction"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("DTE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the device-taint-eviction binary");
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("device-taint-eviction {args:?} still running after {timeout:?}"))
        .expect("waiting for the device-taint-eviction binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A test namespace with the shared controller running, a slice of `devices` (untainted) in the
/// test's pool.
async fn setup(devices: &[&str]) -> TestEnv {
    let env = TestEnv::new().await;
    support::shared_controller(&["--leader-elect=false"]).await;
    let slice = env.unique_name("slice");
    let devices: Vec<(&str, Vec<Value>)> = devices.iter().map(|d| (*d, vec![])).collect();
    env.apply_slice(&slice, 1, &devices).await;
    env
}

/// `taint --wait` creates the rule, follows the eviction and ends when the controller reports the
/// rule Completed; running it again is idempotent ("configured"); `untaint` with the same selectors
/// finds the rule by the same derived name.
#[tokio::test]
async fn taint_wait_follows_the_eviction_until_done() {
    let env = setup(&["gpu-0", "gpu-1"]).await;
    env.pod_with_claim("victim", "victim-claim", "gpu-0", vec![])
        .await;
    env.pod_with_claim("bystander", "bystander-claim", "gpu-1", vec![])
        .await;
    let pool = env.pool();
    let selectors = [
        "--driver", DRIVER, "--pool", &pool, "--device", "gpu-0", "--key", KEY,
    ];
    let taint: Vec<&str> = ["taint"]
        .iter()
        .chain(&selectors)
        .chain(&["--value", "ecc", "--wait", "--timeout", "90s"])
        .copied()
        .collect();

    let run = cli(env.kubeconfig(), &taint, std::time::Duration::from_secs(120)).await;
    assert_eq!(run.code, Some(0), "{run}");
    let name = format!("dte-gpu.example.com-{pool}-gpu-0-example.com-cli");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&format!("devicetaintrule/{name} created").as_str()),
        "{run}"
    );
    assert_eq!(
        lines.last(),
        Some(&format!("devicetaintrule/{name}: done, 1 pod evicted").as_str()),
        "{run}"
    );
    // Progress lines in between, each different from the one before.
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "a progress line repeated: {run}");
    }
    assert!(env.pod_deleted("victim").await, "victim still running: {run}");
    assert!(
        !env.pod_deleted("bystander").await,
        "the untainted device's pod was evicted"
    );

    let (reason, message) = env.rule_condition(&name).await.expect("rule condition");
    assert_eq!(
        (reason.as_str(), message.as_str()),
        ("Completed", "1 pod evicted since starting the controller.")
    );

    // The same command again changes nothing and says so.
    let again = cli(env.kubeconfig(), &taint, std::time::Duration::from_secs(60)).await;
    assert_eq!(again.code, Some(0), "{again}");
    assert_eq!(
        again.stdout.lines().next(),
        Some(format!("devicetaintrule/{name} configured").as_str()),
        "{again}"
    );
    assert!(
        again
            .stdout
            .contains(&format!("devicetaintrule/{name}: done, 1 pod evicted")),
        "{again}"
    );

    let untaint: Vec<&str> = ["untaint"]
        .iter()
        .chain(&selectors)
        .chain(&["--wait"])
        .copied()
        .collect();
    let run = cli(env.kubeconfig(), &untaint, TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.stdout, format!("devicetaintrule/{name} deleted\n"), "{run}");
    assert!(
        env.rule_condition(&name).await.is_none(),
        "the rule is still there"
    );
}

/// `explain` shows a pod that tolerates the taint for a while: device, taint, rule, toleration
/// and when, as a table and as JSON; `untaint` cancels the countdown and `explain` then shows
/// nothing for the namespace. The countdown is short enough to end inside the test: a witness
/// in a sibling namespace, tainted by a rule made just after, tolerates as long, so once it is
/// evicted the patient's old deadline has passed too, and the patient must still be there.
#[tokio::test]
async fn explain_shows_the_countdown_and_untaint_cancels_it() {
    /// Seconds both pods tolerate the taint.
    const TOLERATE: i64 = 30;
    /// Time the untaint needs before the deadline.
    const MARGIN: i64 = 4;
    let env = setup(&["gpu-0", "w"]).await;
    let witness = env.sibling(1).await;
    env.pod_with_claim(
        "patient",
        "patient-claim",
        "gpu-0",
        vec![toleration(KEY, Some(TOLERATE))],
    )
    .await;
    witness.witness(vec![toleration(KEY, Some(TOLERATE))]).await;
    let name = env.unique_name("cli-explain");
    let pool = env.pool();
    let run = cli(
        env.kubeconfig(),
        &[
            "taint", "--name", &name, "--driver", DRIVER, "--pool", &pool, "--device", "gpu-0", "--key", KEY,
            "--value", "ecc",
        ],
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.stdout, format!("devicetaintrule/{name} created\n"), "{run}");
    let time_added = env.rule_time_added(&name).await;
    env.create_rule(
        &env.unique_name("witness-rule"),
        Some("w"),
        support::objects::taint(KEY, "NoExecute"),
    )
    .await;

    // The controller has it pending once the rule status says so.
    wait_for("the rule to report the pending pod", TIMEOUT, || async {
        let (reason, message) = env.rule_condition(&name).await?;
        (reason == "PodsPendingEviction" && message == "1 pod needs to be evicted in 1 namespace.")
            .then_some(())
    })
    .await;

    let device = format!("{DRIVER}/{pool}/gpu-0");
    let expected = Expected {
        pod: "patient",
        device: &device,
        taint: &format!("{KEY}=ecc:NoExecute"),
        source: &format!("rule {name}"),
        toleration: &format!("{KEY}:NoExecute op=Exists for {TOLERATE}s"),
        evict_at: time_added + TOLERATE,
    };
    check_explain_json(&env, &expected).await;
    check_explain_table(&env, &expected).await;
    let left = time_added + TOLERATE - now_secs();
    if left < MARGIN {
        eprintln!(
            "inconclusive: setup too slow, {left} s left before the deadline (need {MARGIN}); \
             the cancellation was not checked"
        );
        return;
    }

    let run = cli(env.kubeconfig(), &["untaint", "--name", &name, "--wait"], TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.stdout, format!("devicetaintrule/{name} deleted\n"), "{run}");

    let events = wait_for("the cancellation event", TIMEOUT, || async {
        let events = env.eviction_events("patient").await;
        events
            .iter()
            .any(|e| e == "Cancelling deletion")
            .then_some(events)
    })
    .await;
    assert!(
        !events.iter().any(|e| e == "Marking for deletion"),
        "the pod was marked for deletion: {events:?}"
    );
    let run = cli(env.kubeconfig(), &["explain", "-n", &env.namespace], TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.stdout, "No pod is pending eviction.\n", "{run}");
    env.assert_spared_with(&witness, "patient").await;
}

/// Seconds since the epoch now.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Deleting a rule that does not exist is an error (exit 1) that names it.
#[tokio::test]
async fn untaint_of_a_missing_rule_fails_and_names_it() {
    let env = TestEnv::new().await;
    let name = env.unique_name("no-such-rule");
    let run = cli(env.kubeconfig(), &["untaint", "--name", &name], TIMEOUT).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.stdout, "", "{run}");
    assert!(
        run.stderr.contains(&format!(
            "failed to delete DeviceTaintRule {name}: it does not exist"
        )),
        "{run}"
    );
}

/// `resume` sets and removes the acceptance annotation of the blast-radius guard on a rule, and
/// names a missing rule.
#[tokio::test]
async fn resume_sets_and_withdraws_the_acceptance_and_names_a_missing_rule() {
    let env = TestEnv::new().await;
    let name = env.unique_name("resume");
    let run = cli(
        env.kubeconfig(),
        &["resume", "--name", &name, "--accept", "12"],
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.stdout, "", "{run}");
    assert_eq!(
        run.stderr,
        format!("error: failed to resume DeviceTaintRule {name}: it does not exist\n"),
        "{run}"
    );

    env.create_rule(&name, Some("gpu-0"), json!({"key": KEY, "effect": "NoExecute"}))
        .await;
    let annotation = || async {
        let ar = env.rule_resource().await;
        let rule = Api::<kube::api::DynamicObject>::all_with(env.client.clone(), &ar)
            .get(&name)
            .await
            .expect("get rule");
        rule.metadata
            .annotations
            .and_then(|a| a.get("device-taint-eviction/accept-evictions").cloned())
    };
    let run = cli(
        env.kubeconfig(),
        &["resume", "--name", &name, "--accept", "12"],
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        format!(
            "devicetaintrule/{name} annotated device-taint-eviction/accept-evictions=12: up to 12 evictions accepted\n"
        ),
        "{run}"
    );
    assert_eq!(annotation().await.as_deref(), Some("12"));
    let run = cli(
        env.kubeconfig(),
        &["resume", "--name", &name, "--withdraw"],
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        format!("devicetaintrule/{name}: acceptance device-taint-eviction/accept-evictions removed\n"),
        "{run}"
    );
    assert_eq!(annotation().await, None);
}

/// Expected errors print as kubectl prints them, `error: ` and the causes, and nothing else: no
/// backtrace even with `RUST_BACKTRACE=1` (only a panic may show one).
const BACKTRACE_ON: [(&str, &str); 2] = [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")];

#[tokio::test]
async fn untaint_of_a_missing_rule_prints_only_the_error() {
    let env = TestEnv::new().await;
    let run = cli_env(
        env.kubeconfig(),
        &["untaint", "--name", "does-not-exist"],
        &BACKTRACE_ON,
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.stdout, "", "{run}");
    assert_eq!(
        run.stderr, "error: failed to delete DeviceTaintRule does-not-exist: it does not exist\n",
        "{run}"
    );
}

/// What the API server says about the key `not a key!` (Kubernetes' qualified-name rule).
const INVALID_KEY_CAUSE: &str = "spec.taint.key: Invalid value: \"not a key!\": name part must consist of \
     alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
     'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
     '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// A key the API server rejects: the server's reason, nothing else.
#[tokio::test]
async fn taint_with_an_invalid_key_prints_only_the_error() {
    let env = TestEnv::new().await;
    let name = env.unique_name("cli-bad-key");
    let run = cli_env(
        env.kubeconfig(),
        &[
            "taint",
            "--name",
            &name,
            "--driver",
            DRIVER,
            "--pool",
            "pool-x",
            "--key",
            "not a key!",
        ],
        &BACKTRACE_ON,
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.stdout, "", "{run}");
    assert_eq!(
        run.stderr,
        format!(
            "error: failed to apply DeviceTaintRule {name}\n\
             caused by: the API server rejected it as invalid: DeviceTaintRule.resource.k8s.io \
             \"{name}\" is invalid: {INVALID_KEY_CAUSE}\n"
        ),
        "{run}"
    );
    assert!(env.rule_condition(&name).await.is_none(), "a rule was created");
}

/// `taint --wait --timeout 10s` on a device whose pod tolerates the taint for 300s gives up after
/// 10s and says how many pods are still pending.
#[tokio::test]
async fn taint_wait_timing_out_prints_only_the_error() {
    let env = setup(&["gpu-0"]).await;
    env.pod_with_claim(
        "patient",
        "patient-claim",
        "gpu-0",
        vec![toleration(KEY, Some(300))],
    )
    .await;
    let name = env.unique_name("cli-timeout");
    let pool = env.pool();
    let taint = [
        "taint", "--name", &name, "--driver", DRIVER, "--pool", &pool, "--device", "gpu-0", "--key", KEY,
    ];
    let run = cli(env.kubeconfig(), &taint, TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
    // The controller has counted the pending pod before the timed wait starts, so the message
    // names it.
    wait_for("the rule to report the pending pod", TIMEOUT, || async {
        let (reason, _) = env.rule_condition(&name).await?;
        (reason == "PodsPendingEviction").then_some(())
    })
    .await;
    let wait: Vec<&str> = taint
        .iter()
        .chain(&["--wait", "--timeout", "10s"])
        .copied()
        .collect();
    let run = cli_env(env.kubeconfig(), &wait, &BACKTRACE_ON, TIMEOUT).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(
        run.stderr,
        format!(
            "error: failed to wait for DeviceTaintRule {name}: gave up after 10s with 1 pod still \
             pending eviction\n"
        ),
        "{run}"
    );
    assert!(
        !env.pod_deleted("patient").await,
        "the tolerating pod was evicted"
    );
    // Leave nothing pending for the shared controller: other tests wait until it has nothing to do.
    let run = cli(env.kubeconfig(), &["untaint", "--name", &name, "--wait"], TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
}

/// Without the permissions it needs, `taint` fails (exit 1) and says which permission is missing:
/// first `get` (reading the rule), then, with read access granted, `create and patch`.
#[tokio::test]
async fn taint_without_permission_names_the_missing_permission() {
    let env = TestEnv::new().await;
    let kubeconfig = env.service_account_kubeconfig("operator").await;
    let name = env.unique_name("cli-forbidden");
    let taint = [
        "taint", "--name", &name, "--driver", DRIVER, "--pool", "pool-x", "--key", KEY,
    ];
    let user = format!("system:serviceaccount:{}:operator", env.namespace);

    let run = cli(&kubeconfig, &taint, TIMEOUT).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr
            .contains(&format!("failed to read DeviceTaintRule {name}"))
            && run
                .stderr
                .contains("permission denied, this needs get devicetaintrules.resource.k8s.io"),
        "{run}"
    );
    assert!(
        run.stderr.contains(&user),
        "the server's message names the user: {run}"
    );

    // Read access only.
    let role_name = env.unique_name("cli-read-rules");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": role_name, "labels": env.labels() },
        "rules": [{ "apiGroups": ["resource.k8s.io"], "resources": ["devicetaintrules"],
                    "verbs": ["get", "list", "watch"] }],
    }))
    .expect("ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": role_name, "labels": env.labels() },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name },
        "subjects": [{ "kind": "ServiceAccount", "name": "operator", "namespace": env.namespace }],
    }))
    .expect("ClusterRoleBinding");
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create ClusterRole");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create ClusterRoleBinding");

    // RBAC changes reach the authorizer through its informers: wait until the `get` goes through.
    let run = wait_for("read access to take effect", TIMEOUT, || async {
        let run = cli(&kubeconfig, &taint, TIMEOUT).await;
        (!run.stderr.contains("this needs get ")).then_some(run)
    })
    .await;
    let _ = bindings.delete(&role_name, &DeleteParams::default()).await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr
            .contains(&format!("failed to apply DeviceTaintRule {name}"))
            && run
                .stderr
                .contains("permission denied, this needs create and patch devicetaintrules.resource.k8s.io"),
        "{run}"
    );
    assert!(env.rule_condition(&name).await.is_none(), "a rule was created");
}

/// One row `explain` should print.
struct Expected<'a> {
    pod: &'a str,
    device: &'a str,
    taint: &'a str,
    source: &'a str,
    toleration: &'a str,
    /// Epoch seconds.
    evict_at: i64,
}

/// `explain -o json -n <namespace>` prints exactly the `expected` row.
async fn check_explain_json(env: &TestEnv, expected: &Expected<'_>) {
    let run = cli(
        env.kubeconfig(),
        &["explain", "-o", "json", "-n", &env.namespace],
        TIMEOUT,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    assert_eq!(rows.len(), 1, "{run}");
    let row = &rows[0];
    assert_eq!(row["namespace"], json!(env.namespace), "{run}");
    assert_eq!(row["pod"], json!(expected.pod), "{run}");
    assert_eq!(row["devices"], json!([expected.device]), "{run}");
    assert_eq!(row["taint"], json!(expected.taint), "{run}");
    assert_eq!(row["source"], json!(expected.source), "{run}");
    assert_eq!(row["toleration"], json!(expected.toleration), "{run}");
    assert_eq!(
        support::objects::seconds(&row["evictAt"]),
        expected.evict_at,
        "{run}"
    );
    let evict_in = row["evictInSeconds"].as_i64().expect("evictInSeconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .cast_signed();
    assert!(
        (expected.evict_at - now - evict_in).abs() <= 30,
        "evictInSeconds {evict_in} does not match evictAt: {run}"
    );
}

/// `explain -n <namespace>` prints a header and exactly the `expected` row, in columns.
async fn check_explain_table(env: &TestEnv, expected: &Expected<'_>) {
    let run = cli(env.kubeconfig(), &["explain", "-n", &env.namespace], TIMEOUT).await;
    assert_eq!(run.code, Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run}");
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "POD",
            "DEVICE(S)",
            "TAINT",
            "SOURCE",
            "TOLERATION",
            "EVICT AT"
        ],
        "{run}"
    );
    for cell in [
        env.namespace.as_str(),
        expected.pod,
        expected.device,
        expected.taint,
        expected.source,
        expected.toleration,
        " (in ",
    ] {
        assert!(lines[1].contains(cell), "{cell:?} missing from the row: {run}");
    }
}
