//! Shared setup for integration tests that talk to a real Kubernetes API server.
//!
//! Use it from a test file with `mod support;`, then in each test:
//!
//! ```ignore
//! let env = support::TestEnv::new().await; // admin client + a fresh namespace
//! let slice_name = env.unique_name("slice"); // cluster-scoped names must be unique per test
//! ```
//!
//! Which cluster:
//! - `DTE_TEST_KUBECONFIG` set (`tests/kind/e2e.sh` does): the cluster of that kubeconfig file
//!   (e.g. kind), used as it is; nothing is started or stopped.
//! - otherwise, whatever `KUBECONFIG` says (a shell's exported context is never used): one control
//!   plane per test binary, started lazily on first use by `tests/controlplane/up.sh` in a
//!   directory under `CARGO_TARGET_TMPDIR`, and stopped by a detached reaper process when the test
//!   process exits, whatever the way (success, panic, abort, SIGKILL). The reaper also deletes the directory unless `DTE_KEEP_CONTROLPLANE` is set (then
//!   the logs stay in `<dir>/logs` for a look after a failure).
//!
//! Each [`TestEnv`] owns a namespace labelled `device-taint-eviction.test=true`; dropping the
//! environment deletes it and every cluster-scoped `ResourceSlice`, `DeviceTaintRule`,
//! `DeviceClass` and `PriorityClass` labelled with [`TestEnv::labels`] (best effort: a self-started control plane runs
//! no namespace controller, so namespaces stay `Terminating` there, which is harmless).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod controller;
pub mod kwok;
pub mod objects;
pub mod proxy;

use std::{
    collections::BTreeMap,
    future::Future,
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, Node, ServiceAccount},
        resource::v1::{DeviceClass, ResourceSlice},
        scheduling::v1::PriorityClass,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Client, Config,
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};
use tokio::sync::OnceCell;

/// Label on every namespace a test creates (value `"true"`), for cleaning up a shared cluster.
pub const TEST_LABEL: &str = "device-taint-eviction.test";
/// Label on cluster-scoped test objects; its value is the owning test's namespace.
pub const TEST_NAMESPACE_LABEL: &str = "device-taint-eviction.test/namespace";
/// A deadline that suits most waits on the API server.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster every test of this binary uses.
pub struct Cluster {
    /// Admin kubeconfig (for a self-started control plane: `<dir>/kubeconfig`).
    pub kubeconfig: PathBuf,
    /// Admin client configuration. Build a [`Client`] per test: a client is bound to the tokio
    /// runtime it was created in, and every `#[tokio::test]` has its own.
    pub config: Config,
    /// The control plane directory when this process started it, `None` for `DTE_TEST_KUBECONFIG`.
    pub dir: Option<PathBuf>,
    /// The `up.sh` flags it was started with (empty for `DTE_TEST_KUBECONFIG`).
    pub up_flags: Vec<String>,
}

impl Cluster {
    /// Kubeconfig of the static non-admin user `test-user` (no RBAC permissions at all), only on
    /// a self-started control plane. [`TestEnv::service_account_client`] works everywhere.
    pub fn token_user_kubeconfig(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join("token-user-kubeconfig"))
    }
}

static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// The shared cluster, started on first use. Panics (in every test) if it cannot be had.
pub async fn cluster() -> &'static Cluster {
    cluster_with(&[]).await
}

/// Like [`cluster`], with `up.sh` flags for a self-started control plane, e.g.
/// `["--with-scheduler", "--controllers=resourceclaim-controller"]`. Every test of one binary
/// must ask for the same flags (the control plane is shared). Ignored with `DTE_TEST_KUBECONFIG`: that
/// cluster must already run what the tests need.
pub async fn cluster_with(up_flags: &[&str]) -> &'static Cluster {
    let up_flags: Vec<String> = up_flags.iter().map(|&f| f.to_owned()).collect();
    let cluster = match CLUSTER.get_or_init(|| connect(up_flags.clone())).await {
        Ok(cluster) => cluster,
        Err(message) => panic!("no Kubernetes cluster for the tests: {message}"),
    };
    assert!(
        cluster.dir.is_none() || cluster.up_flags == up_flags,
        "this test binary's control plane runs with up.sh flags {:?}, this test wants {up_flags:?}: \
         put tests that need other flags in another test file",
        cluster.up_flags
    );
    cluster
}

/// Names the kubeconfig of an existing cluster for the tests. `KUBECONFIG` is deliberately not
/// read: a shell with a production context exported must not get test Nodes and evictions.
pub const TEST_KUBECONFIG_VAR: &str = "DTE_TEST_KUBECONFIG";

/// The kubeconfig of an existing cluster to test against: [`TEST_KUBECONFIG_VAR`], never
/// `KUBECONFIG`. `None`: the tests start their own control plane.
pub fn existing_cluster_kubeconfig() -> Option<PathBuf> {
    std::env::var_os(TEST_KUBECONFIG_VAR)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

async fn connect(up_flags: Vec<String>) -> Result<Cluster, String> {
    if let Some(path) = existing_cluster_kubeconfig() {
        let kubeconfig = Kubeconfig::read_from(&path)
            .map_err(|e| format!("reading {TEST_KUBECONFIG_VAR}={}: {e}", path.display()))?;
        let config = config_from(kubeconfig).await?;
        return Ok(Cluster {
            kubeconfig: path,
            config,
            dir: None,
            up_flags: Vec::new(),
        });
    }
    let flags = up_flags.clone();
    let dir = tokio::task::spawn_blocking(move || start_control_plane(&flags))
        .await
        .map_err(|e| format!("starting the control plane: {e}"))??;
    let kubeconfig = dir.join("kubeconfig");
    let config = config_from(
        Kubeconfig::read_from(&kubeconfig).map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?,
    )
    .await?;
    Ok(Cluster {
        kubeconfig,
        config,
        dir: Some(dir),
        up_flags,
    })
}

async fn config_from(kubeconfig: Kubeconfig) -> Result<Config, String> {
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("loading the kubeconfig: {e}"))
}

/// A control plane of one test's own, for faults of its components (kill and restart etcd or
/// kube-apiserver, compact etcd) that must not hit the other tests of the binary. Dropping it stops
/// the control plane (`down.sh`); the reaper of [`start_control_plane`] covers a test process that
/// dies first.
pub struct OwnedControlPlane {
    /// The cluster, leaked so that a [`TestEnv`] can borrow it (a few bytes per test).
    pub cluster: &'static Cluster,
    /// The control plane directory (`up.sh`'s `DIR`).
    pub dir: PathBuf,
    /// How long `up.sh` took: a measure of how slow this machine is right now, from which tests
    /// derive their timing windows.
    pub startup: Duration,
}

impl OwnedControlPlane {
    /// Starts a control plane (etcd and kube-apiserver) for the calling test alone. `None`, with
    /// the reason on stderr, when the tests run against an existing cluster ([`TEST_KUBECONFIG_VAR`]),
    /// which may have no binaries to start one from (kind), unless `DTE_OWN_CONTROLPLANES=1`
    /// says that local control planes can be started beside it (`make soak`).
    pub async fn start() -> Option<Self> {
        // `make soak` names its own local control plane in DTE_TEST_KUBECONFIG and allows this.
        let allowed = std::env::var("DTE_OWN_CONTROLPLANES").is_ok_and(|v| v == "1");
        if existing_cluster_kubeconfig().is_some() && !allowed {
            eprintln!(
                "skipped: {TEST_KUBECONFIG_VAR} names an existing cluster, whose etcd and kube-apiserver \
                 this test cannot kill or restart"
            );
            return None;
        }
        let started = std::time::Instant::now();
        let dir = tokio::task::spawn_blocking(|| start_control_plane(&[]))
            .await
            .expect("starting the control plane")
            .unwrap_or_else(|e| panic!("starting a control plane of the test's own: {e}"));
        let startup = started.elapsed();
        let kubeconfig = dir.join("kubeconfig");
        let config = config_from(Kubeconfig::read_from(&kubeconfig).expect("reading the kubeconfig"))
            .await
            .expect("the kubeconfig");
        let cluster = Box::leak(Box::new(Cluster {
            kubeconfig,
            config,
            dir: Some(dir.clone()),
            up_flags: Vec::new(),
        }));
        eprintln!("own control plane in {} up in {startup:?}", dir.display());
        Some(Self {
            cluster,
            dir,
            startup,
        })
    }

    /// Runs `tests/controlplane/component.sh <action> <component> <dir>`; panics if it fails.
    pub async fn component(&self, action: &str, component: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/component.sh");
        let mut command = tokio::process::Command::new(script);
        command
            .env_remove("KUBECONFIG")
            .args([action, component])
            .arg(&self.dir)
            .stdin(Stdio::null());
        let status = command.status().await.expect("running component.sh");
        assert!(
            status.success(),
            "component.sh {action} {component} failed ({status})"
        );
    }

    /// SIGKILL to `component` (`etcd`, `kube-apiserver`): a crash.
    pub async fn kill(&self, component: &str) {
        self.component("kill", component).await;
    }

    /// Starts `component` again with its old flags, ports and data; returns once it is ready.
    pub async fn restart(&self, component: &str) {
        self.component("start", component).await;
    }

    /// The etcd client URL (`ETCD_ENDPOINT` of `cluster.env`).
    pub fn etcd_endpoint(&self) -> String {
        let env = std::fs::read_to_string(self.dir.join("cluster.env")).expect("cluster.env");
        env.lines()
            .find_map(|l| l.strip_prefix("ETCD_ENDPOINT="))
            .expect("ETCD_ENDPOINT in cluster.env")
            .trim_matches(['\'', '"'])
            .to_owned()
    }

    /// POSTs `body` to etcd's JSON gateway at `path` (e.g. `/v3/kv/range`) and returns the answer.
    async fn etcd(&self, path: &str, body: &str) -> serde_json::Value {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "30", "-X", "POST", "-d", body])
            .arg(format!("{}{path}", self.etcd_endpoint()))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("running curl");
        assert!(
            output.status.success(),
            "etcd {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("etcd's answer is JSON")
    }

    /// etcd's current revision.
    pub async fn etcd_revision(&self) -> i64 {
        let answer = self.etcd("/v3/kv/range", r#"{"key":"AA=="}"#).await;
        answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("header.revision")
    }

    /// Compacts etcd's history up to its current revision, which it returns: every watch that
    /// resumes from an older revision gets "too old resource version" (410).
    pub async fn compact(&self) -> i64 {
        let revision = self.etcd_revision().await;
        self.etcd(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )
        .await;
        revision
    }
}

impl Drop for OwnedControlPlane {
    fn drop(&mut self) {
        let down = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/down.sh");
        let _ = Command::new(down)
            .env_remove("KUBECONFIG")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `up.sh` into a fresh directory and arranges for `down.sh` to run when this process exits.
fn start_control_plane(up_flags: &[String]) -> Result<PathBuf, String> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("controlplane-{}", random_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;

    // up.sh's progress (and a cold build's) goes to stderr; its stdout is only an export line.
    // Every kubectl and component of up.sh gets its kubeconfig explicitly; removing the shell's
    // `KUBECONFIG` makes sure nothing there can fall back to it.
    let mut up = Command::new(scripts.join("up.sh"))
        .env_remove("KUBECONFIG")
        .args(up_flags)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("running {}: {e}", scripts.join("up.sh").display()))?;

    // The reaper lives in its own process group, so Ctrl-C on the test run does not reach it. It
    // waits until both this process and up.sh are gone (up.sh may still be starting things after
    // this process died), then stops the control plane.
    let reaper = r#"
        while kill -0 "$0" 2>/dev/null || kill -0 "$1" 2>/dev/null; do sleep 1; done
        "$2" "$3"
        [ -n "$4" ] || rm -rf "$3"
    "#;
    std::os::unix::process::CommandExt::process_group(
        Command::new("sh")
            .env_remove("KUBECONFIG")
            .arg("-c")
            .arg(reaper)
            .arg(std::process::id().to_string())
            .arg(up.id().to_string())
            .arg(scripts.join("down.sh"))
            .arg(&dir)
            .arg(std::env::var_os("DTE_KEEP_CONTROLPLANE").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        0,
    )
    .spawn()
    .map_err(|e| format!("starting the teardown process: {e}"))?;

    let status = up.wait().map_err(|e| format!("waiting for up.sh: {e}"))?;
    if status.success() {
        Ok(dir)
    } else {
        Err(format!(
            "{} {} failed ({status}); its output is above",
            scripts.join("up.sh").display(),
            dir.display()
        ))
    }
}

/// One test's view of the cluster: an admin client and a namespace of its own.
pub struct TestEnv {
    /// Admin client (bound to the runtime of the test that created this environment).
    pub client: Client,
    /// The test's namespace, created fresh, labelled [`TEST_LABEL`].
    pub namespace: String,
    pub cluster: &'static Cluster,
    suffix: String,
}

impl TestEnv {
    /// Connects (starting the control plane if this is the binary's first test) and creates the
    /// test's namespace with its `default` `ServiceAccount`, which pods need and which no
    /// controller creates on a bare control plane.
    pub async fn new() -> Self {
        Self::with_up_flags(&[]).await
    }

    /// [`TestEnv::new`] on a control plane started with these `up.sh` flags (see [`cluster_with`]).
    pub async fn with_up_flags(up_flags: &[&str]) -> Self {
        Self::on(cluster_with(up_flags).await).await
    }

    /// [`TestEnv::new`] on `cluster`, e.g. an [`OwnedControlPlane`]'s.
    pub async fn on(cluster: &'static Cluster) -> Self {
        let client = Client::try_from(cluster.config.clone()).expect("admin client");
        let suffix = random_suffix();
        let namespace = format!("dte-{}-{suffix}", test_name_for_dns());

        create_namespace(&client, &namespace).await;

        Self {
            client,
            namespace,
            cluster,
            suffix,
        }
    }

    /// Another namespace `<namespace>-<n>` for the same test, sharing its suffix (so its pool and
    /// unique names); it is deleted when the returned environment is dropped.
    pub async fn sibling(&self, n: u32) -> Self {
        let namespace = format!("{}-{n}", self.namespace);
        create_namespace(&self.client, &namespace).await;
        Self {
            client: self.client.clone(),
            namespace,
            cluster: self.cluster,
            suffix: self.suffix.clone(),
        }
    }

    /// Admin kubeconfig path, e.g. for running the controller binary against the same cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.cluster.kubeconfig
    }

    /// An API handle for a namespaced kind in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `base` plus this test's random suffix: use it for every cluster-scoped object.
    pub fn unique_name(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    /// Labels for cluster-scoped objects (`ResourceSlices`, `DeviceTaintRules`, `DeviceClasses`)
    /// so that dropping this environment deletes them.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(TEST_NAMESPACE_LABEL.to_owned(), self.namespace.clone())])
    }

    /// A client authenticated as `ServiceAccount` `name` of the test's namespace (created if
    /// missing), with a token from the `TokenRequest` API. It has no permissions until the test
    /// binds roles to `system:serviceaccount:<namespace>:<name>`. Works on any cluster.
    pub async fn service_account_client(&self, name: &str) -> Client {
        let token = self.service_account_token(name).await;
        let mut config = self.cluster.config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        };
        Client::try_from(config).expect("service account client")
    }

    /// A kubeconfig file (under the cargo target tmp dir) for `ServiceAccount` `name` of the test's
    /// namespace, for running the binary as that identity: the admin kubeconfig's cluster with a
    /// `TokenRequest` token as the only credential. Works on any cluster.
    pub async fn service_account_kubeconfig(&self, name: &str) -> PathBuf {
        let token = self.service_account_token(name).await;
        let mut kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("admin kubeconfig");
        for named in &mut kubeconfig.auth_infos {
            named.auth_info = Some(AuthInfo {
                token: Some(token.clone().into()),
                ..AuthInfo::default()
            });
        }
        let path =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sa-{}-{name}.kubeconfig", self.namespace));
        let json = serde_json::to_string(&kubeconfig).expect("kubeconfig as JSON");
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A `TokenRequest` token (one hour) for `ServiceAccount` `name` of the test's namespace,
    /// created if missing.
    pub async fn service_account_token(&self, name: &str) -> String {
        create_service_account(&self.client, &self.namespace, name).await;
        let accounts: Api<ServiceAccount> = self.api();
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let response = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("requesting a token for {}/{name}: {e}", self.namespace));
        response
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest status.token")
    }

    /// Creates a Node named [`TestEnv::unique_name`]`(base)` that kube-scheduler accepts (Ready,
    /// untainted, room for 110 pods) and returns its name; deleted with this environment. No
    /// kubelet runs: pods bound to it stay Pending. Do not run node-lifecycle-controller against
    /// it. Same as `tests/controlplane/make-node.sh`.
    pub async fn create_ready_node(&self, base: &str) -> String {
        let name = self.unique_name(base);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut labels = self.labels();
        labels.insert("kubernetes.io/hostname".to_owned(), name.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        // The TaintNodesByCondition admission plugin taints every new node not-ready; the node
        // lifecycle controller would lift that once a kubelet reports Ready.
        let untaint = serde_json::json!({ "spec": { "taints": null } });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&untaint))
            .await
            .unwrap_or_else(|e| panic!("untainting node {name}: {e}"));
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let resources = serde_json::json!({ "cpu": "64", "memory": "256Gi", "pods": "110" });
        let status = serde_json::json!({ "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "test node, no kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
        }});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("setting the status of node {name}: {e}"));
        name
    }

    /// A client for the static non-admin user `test-user` of a self-started control plane.
    pub async fn token_user_client(&self) -> Option<Client> {
        let path = self.cluster.token_user_kubeconfig()?;
        let kubeconfig = Kubeconfig::read_from(&path).expect("token-user kubeconfig");
        let config = config_from(kubeconfig).await.expect("token-user config");
        Some(Client::try_from(config).expect("token-user client"))
    }
}

impl Drop for TestEnv {
    /// Best-effort cleanup, also when the test panicked. It runs on a thread of its own with its
    /// own runtime, since the test's runtime may be shutting down.
    fn drop(&mut self) {
        let config = self.cluster.config.clone();
        let namespace = self.namespace.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let selector = ListParams::default().labels(&format!("{TEST_NAMESPACE_LABEL}={namespace}"));
                let dp = DeleteParams::background();
                let work = async {
                    let _ = Api::<ResourceSlice>::all(client.clone())
                        .delete_collection(&dp, &selector)
                        .await;
                    if let Ok(Some(rules)) =
                        device_taint_eviction::k8s::discover_device_taint_rule(&client).await
                    {
                        let _ = Api::<kube::api::DynamicObject>::all_with(client.clone(), &rules)
                            .delete_collection(&dp, &selector)
                            .await;
                    }
                    let _ = Api::<DeviceClass>::all(client.clone())
                        .delete_collection(&dp, &selector)
                        .await;
                    let _ = Api::<PriorityClass>::all(client.clone())
                        .delete_collection(&dp, &selector)
                        .await;
                    let _ = Api::<Node>::all(client.clone())
                        .delete_collection(&dp, &selector)
                        .await;
                    let _ = Api::<Namespace>::all(client.clone())
                        .delete(&namespace, &dp)
                        .await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that value. Panics with
/// "timed out after ... waiting for <what>" once `timeout` has passed.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates namespace `namespace` labelled [`TEST_LABEL`] with its `default` `ServiceAccount`.
async fn create_namespace(client: &Client, namespace: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(TEST_LABEL.to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
    create_service_account(client, namespace, "default").await;
}

async fn create_service_account(client: &Client, namespace: &str, name: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {e}"),
    }
}

/// Eight hex digits, different for every call in this process and (very likely) across processes.
fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:08x}", hasher.finish() & 0xffff_ffff)
}

/// The current test's function name (libtest names the thread after the test), made a valid part
/// of a DNS label and at most 40 characters long.
fn test_name_for_dns() -> String {
    let thread = std::thread::current();
    let name = thread
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "test".to_owned()
    } else {
        name.to_owned()
    }
}

static CONTROLLER: OnceCell<Option<controller::Controller>> = OnceCell::const_new();

/// The controller every test of this binary shares: started once with `args` (the first caller's
/// `args` win), or `None` when a deployed controller serves the cluster (kind e2e).
pub async fn shared_controller(args: &[&str]) -> Option<&'static controller::Controller> {
    CONTROLLER
        .get_or_init(|| async {
            if controller::deployed() {
                return None;
            }
            // The cluster this binary's tests already use, whatever up.sh flags it runs with.
            let cluster = match CLUSTER.get() {
                Some(Ok(cluster)) => cluster,
                _ => cluster().await,
            };
            Some(controller::Controller::start(&cluster.kubeconfig, args).await)
        })
        .await
        .as_ref()
}

/// Whether the cluster is a self-started control plane of the newest minor, which serves
/// DeviceTaintRules at every version (`v1`, `v1beta2`, `v1alpha3`); an older one
/// (`CONTROLPLANE_K8S_VERSION`, `make test-compat`) serves only the version it needs.
pub fn serves_every_rule_version(cluster: &Cluster) -> bool {
    let older = std::env::var("CONTROLPLANE_K8S_VERSION").is_ok_and(|v| !v.is_empty() && v != "1.37");
    cluster.dir.is_some() && !older
}
