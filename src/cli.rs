//! Command-line interface: the `controller`, `taint`, `untaint` and `explain` subcommands.
//!
//! Every flag can also be set through an environment variable (shown in `--help`), so the same binary
//! is configured by flags on a workstation and by env in a Deployment. Values are validated here, at
//! parse time, so that a bad setting fails with a clap error before any connection is made.

// Doc comments on clap items are the `--help` text, where Markdown backticks would print literally.
#![allow(clippy::doc_markdown)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};

use crate::{
    CONTROLLER_NAME,
    client::ClientSettings,
    controller::{self, LeaseSettings},
    ops::{self, ExplainRequest, TaintRequest, UntaintRequest},
    telemetry::LogSettings,
};
pub use crate::{
    actuator::EvictionMode,
    ops::{OutputFormat, TaintEffect},
    telemetry::LogFormat,
    watch::InitialList,
};

/// Evicts pods whose DRA devices carry a NoExecute taint (standalone device-taint-eviction-controller).
#[derive(Debug, Parser)]
#[command(name = "device-taint-eviction", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: watch pods, claims, slices and DeviceTaintRules and evict pods from
    /// NoExecute-tainted devices.
    Controller(ControllerArgs),
    /// Create a DeviceTaintRule that taints a driver's devices (all, one pool, or one device).
    Taint(TaintArgs),
    /// Delete a DeviceTaintRule created by "taint".
    Untaint(UntaintArgs),
    /// Show, for the current cluster state, which pods are or would be evicted, why and when.
    Explain(ExplainArgs),
    /// Accept a DeviceTaintRule's evictions that the blast-radius guard paused (sets the
    /// device-taint-eviction/accept-evictions annotation).
    Resume(ResumeArgs),
}

/// How to reach the Kubernetes API server.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Path to a kubeconfig file (several paths may be joined like $KUBECONFIG). Without it the
    /// in-cluster service account is used, or ~/.kube/config outside a cluster.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current context.
    #[arg(long, env = "DTE_KUBE_CONTEXT")]
    pub context: Option<String>,

    /// Sustained requests per second this process may send to the API server; 0 disables the
    /// client-side limit. Requests above the limit wait, they are never dropped.
    #[arg(long, env = "DTE_KUBE_API_QPS", default_value_t = 100.0, value_parser = rate)]
    pub kube_api_qps: f64,

    /// Requests that may be sent at once before --kube-api-qps pacing applies.
    #[arg(long, env = "DTE_KUBE_API_BURST", default_value_t = 200, value_parser = positive_u32)]
    pub kube_api_burst: u32,

    /// Seconds an API request other than a watch may take, response included; a request that
    /// takes longer fails and is retried with backoff.
    #[arg(long, env = "DTE_API_TIMEOUT", default_value_t = 30, value_parser = positive_u32)]
    pub api_timeout: u32,
}

/// Where and how to log.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "DTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// "info,kube=warn". When unset, RUST_LOG is used if present, else "info".
    #[arg(long, env = "DTE_LOG_LEVEL", value_parser = log_filter)]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Log filter in effect: `--log-level`, else `RUST_LOG`, else `info`.
    #[must_use]
    pub fn filter(&self) -> String {
        self.log_level
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_else(|| "info".to_owned())
    }

    /// The logging settings these flags choose.
    #[must_use]
    pub fn settings(&self) -> LogSettings {
        LogSettings {
            format: self.log_format,
            filter: self.filter(),
        }
    }
}

impl KubeArgs {
    /// The API client settings these flags choose.
    #[must_use]
    pub fn settings(&self) -> ClientSettings {
        ClientSettings {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            qps: self.kube_api_qps,
            burst: self.kube_api_burst,
            timeout: std::time::Duration::from_secs(u64::from(self.api_timeout)),
        }
    }
}

/// Flags of `device-taint-eviction controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Number of pods evicted concurrently (same flag and default as kube-controller-manager).
    #[arg(long, env = "DTE_CONCURRENT_DEVICE_TAINT_EVICTION_SYNCS", default_value_t = 10,
        value_parser = positive_u32)]
    pub concurrent_device_taint_eviction_syncs: u32,

    /// Threads that run the controller (watches, decisions, API requests). One (a current-thread
    /// runtime) spends the least CPU per eviction: no scheduler shared between threads; more
    /// overlap the decoding of large lists and watch events with evictions.
    #[arg(long, env = "DTE_RUNTIME_THREADS", default_value_t = 1, value_parser = positive_u32)]
    pub runtime_threads: u32,

    /// How a pod is removed: "delete" (as upstream) or "evict" (Eviction API, honours
    /// PodDisruptionBudgets).
    #[arg(long, env = "DTE_EVICTION_MODE", value_enum, default_value_t = EvictionMode::Delete)]
    pub eviction_mode: EvictionMode,

    /// Upper bound on evictions per second across the controller; 0 means unlimited (as upstream).
    #[arg(long, env = "DTE_MAX_EVICTIONS_PER_SECOND", default_value_t = 0.0, value_parser = rate)]
    pub max_evictions_per_second: f64,

    /// Evictions allowed at once before --max-evictions-per-second pacing applies.
    #[arg(long, env = "DTE_MAX_EVICTIONS_BURST", default_value_t = 1, value_parser = positive_u32)]
    pub max_evictions_burst: u32,

    /// Never evict automatically a pod whose spec.priority is at or above this value: it gets a
    /// Warning Event and the rule status counts it [default: off, every pod is evicted].
    #[arg(long, env = "DTE_PROTECTED_PRIORITY", allow_negative_numbers = true)]
    pub protected_priority: Option<i32>,

    /// Decide, log, count and emit "would evict" Events, but never touch a pod.
    #[arg(long, env = "DTE_DRY_RUN", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// Restart a watch that receives nothing, not even a bookmark, for this long (a new list,
    /// then a new watch): seconds, or a duration such as 90s or 5m. The default is the
    /// server-side watch timeout (290s) plus a margin.
    #[arg(long, env = "DTE_WATCH_IDLE_TIMEOUT", default_value = "330s", value_parser = positive_duration)]
    pub watch_idle_timeout: Duration,

    /// How each watch receives every object before watching: one streaming watch, or paged lists.
    #[arg(long, env = "DTE_INITIAL_LIST", value_enum, default_value_t = InitialList::Streaming)]
    pub initial_list: InitialList,

    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "DTE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Serve /metrics only on this address (e.g. 127.0.0.1:9090, for a local scraper or an
    /// authenticating proxy) instead of on --http-addr.
    #[arg(long, env = "DTE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Elect a leader through a coordination.k8s.io Lease so that only one replica writes;
    /// --leader-elect=false for a single replica without a Lease.
    #[arg(long, env = "DTE_LEADER_ELECT", default_value_t = true, num_args = 0..=1,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease [default: $POD_NAMESPACE, else "default"].
    #[arg(long, env = "DTE_LEADER_ELECT_NAMESPACE")]
    pub leader_elect_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(long, env = "DTE_LEADER_ELECT_LEASE_NAME", default_value = CONTROLLER_NAME)]
    pub leader_elect_lease_name: String,

    /// Seconds a leader holds the Lease without renewing it; a standby takes over after that.
    #[arg(long, env = "DTE_LEADER_ELECT_LEASE_DURATION", default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(2..))]
    pub leader_elect_lease_duration: u64,

    /// Holder identity written to the Lease, unique per replica [default: $POD_NAME, else the
    /// host name plus a random suffix].
    #[arg(long, env = "DTE_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,

    #[command(flatten)]
    pub guard: GuardArgs,
}

impl ControllerArgs {
    /// The controller configuration these flags choose (Lease namespace and identity resolved
    /// as documented on the accessors below).
    #[must_use]
    pub fn config(&self) -> controller::Config {
        controller::Config {
            client: self.kube.settings(),
            workers: self.concurrent_device_taint_eviction_syncs,
            eviction_mode: self.eviction_mode,
            max_evictions_per_second: self.max_evictions_per_second,
            max_evictions_burst: self.max_evictions_burst,
            protected_priority: self.protected_priority,
            dry_run: self.dry_run,
            watch_idle_timeout: self.watch_idle_timeout,
            initial_list: self.initial_list,
            http_addr: self.http_addr,
            metrics_addr: self.metrics_addr,
            identity: self.leader_elect_identity(),
            lease: self.leader_elect.then(|| LeaseSettings {
                namespace: self.leader_elect_namespace(),
                name: self.leader_elect_lease_name.clone(),
                duration_secs: self.leader_elect_lease_duration,
            }),
            guard: self.guard.config(),
        }
    }

    /// Namespace of the Lease: the flag, else `$POD_NAMESPACE`, else `default`.
    #[must_use]
    pub fn leader_elect_namespace(&self) -> String {
        resolve_namespace(self.leader_elect_namespace.as_deref(), |k| std::env::var(k).ok())
    }

    /// Lease holder identity: the flag, else `$POD_NAME`, else the host name (`$HOSTNAME` or
    /// `/etc/hostname`) with a random suffix, so that two processes on one host never share it.
    /// The suffix is drawn once per process: repeated calls return the same identity.
    #[must_use]
    pub fn leader_elect_identity(&self) -> String {
        resolve_identity(
            self.leader_elect_identity.as_deref(),
            |k| std::env::var(k).ok(),
            || std::fs::read_to_string("/etc/hostname").ok(),
            &random_suffix(),
        )
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn resolve_namespace(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    non_empty(flag.map(str::to_owned))
        .or_else(|| non_empty(env("POD_NAMESPACE")))
        .unwrap_or_else(|| "default".to_owned())
}

fn resolve_identity(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    etc_hostname: impl FnOnce() -> Option<String>,
    suffix: &str,
) -> String {
    if let Some(identity) = non_empty(flag.map(str::to_owned)).or_else(|| non_empty(env("POD_NAME"))) {
        return identity;
    }
    let host = non_empty(env("HOSTNAME"))
        .or_else(|| non_empty(etc_hostname()))
        .unwrap_or_else(|| CONTROLLER_NAME.to_owned());
    format!("{host}-{suffix}")
}

/// Five random lowercase alphanumerics, drawn once per process so that the identity is stable.
fn random_suffix() -> String {
    static SUFFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SUFFIX
        .get_or_init(|| {
            use rand::{RngExt, distr::Alphanumeric};
            rand::rng()
                .sample_iter(&Alphanumeric)
                .take(5)
                .map(|b| char::from(b).to_ascii_lowercase())
                .collect()
        })
        .clone()
}

/// Flags of `device-taint-eviction taint`.
#[derive(Debug, Clone, Args)]
pub struct TaintArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Name of the DeviceTaintRule [default: dte-DRIVER-POOL-DEVICE-KEY, lowercased and made a valid name].
    #[arg(long, env = "DTE_TAINT_NAME", value_parser = rule_name)]
    pub name: Option<String>,

    /// DRA driver whose devices are tainted, e.g. gpu.example.com.
    #[arg(long, env = "DTE_TAINT_DRIVER")]
    pub driver: String,

    /// Only devices of this pool (usually a node name) [default: every pool of the driver].
    #[arg(long, env = "DTE_TAINT_POOL")]
    pub pool: Option<String>,

    /// Only this device [default: every device of the selected pools].
    #[arg(long, env = "DTE_TAINT_DEVICE")]
    pub device: Option<String>,

    /// Taint key, e.g. example.com/unhealthy.
    #[arg(long, env = "DTE_TAINT_KEY")]
    pub key: String,

    /// Taint value.
    #[arg(long, env = "DTE_TAINT_VALUE", default_value = "")]
    pub value: String,

    /// Taint effect.
    #[arg(long, env = "DTE_TAINT_EFFECT", value_enum, ignore_case = true,
        default_value_t = TaintEffect::NoExecute)]
    pub effect: TaintEffect,

    /// After creating the rule, show eviction progress until every affected pod is gone.
    #[arg(long, env = "DTE_TAINT_WAIT", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub wait: bool,

    /// Give up waiting after this long: seconds, or a duration such as 90s, 10m, 1h30m.
    #[arg(long, env = "DTE_TAINT_TIMEOUT", default_value = "600", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl TaintArgs {
    /// What `taint` is asked to do.
    #[must_use]
    pub fn request(&self) -> TaintRequest {
        TaintRequest {
            name: self.name.clone(),
            driver: self.driver.clone(),
            pool: self.pool.clone(),
            device: self.device.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            effect: self.effect,
            wait: self.wait,
            timeout: self.timeout,
        }
    }
}

/// Flags of `device-taint-eviction untaint`.
#[derive(Debug, Clone, Args)]
pub struct UntaintArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Name of the DeviceTaintRule to delete; or give the selectors used with "taint".
    #[arg(long, env = "DTE_UNTAINT_NAME", value_parser = rule_name,
        required_unless_present = "driver", conflicts_with_all = ["driver", "pool", "device", "key"])]
    pub name: Option<String>,

    /// Driver given to "taint" (the rule name is derived as "taint" derives it).
    #[arg(long, env = "DTE_UNTAINT_DRIVER", requires = "key")]
    pub driver: Option<String>,

    /// Pool given to "taint".
    #[arg(long, env = "DTE_UNTAINT_POOL", requires = "driver")]
    pub pool: Option<String>,

    /// Device given to "taint".
    #[arg(long, env = "DTE_UNTAINT_DEVICE", requires = "driver")]
    pub device: Option<String>,

    /// Taint key given to "taint".
    #[arg(long, env = "DTE_UNTAINT_KEY", requires = "driver")]
    pub key: Option<String>,

    /// Wait until the rule is gone from the API server.
    #[arg(long, env = "DTE_UNTAINT_WAIT", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub wait: bool,

    /// Give up waiting after this long: seconds, or a duration such as 90s, 10m, 1h30m.
    #[arg(long, env = "DTE_UNTAINT_TIMEOUT", default_value = "600", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl UntaintArgs {
    /// What `untaint` is asked to do. Naming no rule at all is rejected by clap already.
    #[must_use]
    pub fn request(&self) -> UntaintRequest {
        UntaintRequest {
            name: self.name.clone(),
            driver: self.driver.clone(),
            pool: self.pool.clone(),
            device: self.device.clone(),
            key: self.key.clone(),
            wait: self.wait,
            timeout: self.timeout,
        }
    }
}

/// Flags of `device-taint-eviction explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Output format.
    #[arg(short, long, env = "DTE_EXPLAIN_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only pods in this namespace [default: all namespaces].
    #[arg(short, long, env = "DTE_EXPLAIN_NAMESPACE")]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub guard: GuardArgs,
    /// The controller's --protected-priority: pods at or above it are shown as protected (not
    /// evicted automatically) [default: off].
    #[arg(long, env = "DTE_PROTECTED_PRIORITY", allow_negative_numbers = true)]
    pub protected_priority: Option<i32>,
}

impl ExplainArgs {
    /// What `explain` is asked to show.
    #[must_use]
    pub fn request(&self) -> ExplainRequest {
        ExplainRequest {
            namespace: self.namespace.clone(),
            output: self.output,
            guard: self.guard.config(),
            protected_priority: self.protected_priority,
        }
    }
}

/// The blast-radius guard's flags (SPEC D11), shared by `controller` and `explain` so that
/// `explain` shows what the controller decides.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// Blast-radius guard: evictions due within this long from now count towards its limits
    /// (seconds, or a duration such as 90s or 10m).
    #[arg(long, env = "DTE_GUARD_WINDOW", default_value = "10m", value_parser = positive_duration)]
    pub guard_window: Duration,

    /// Blast-radius guard: a rule, pool or the cluster with at most this many evictions due never
    /// trips on --guard-max-percent (more than one node's device pods).
    #[arg(long, env = "DTE_GUARD_MIN_PODS", default_value_t = 16)]
    pub guard_min_pods: usize,

    /// Blast-radius guard: pause a rule's, a pool's or the cluster's evictions when they are more
    /// than --guard-min-pods and more than this percentage of the pods using DRA devices; 100
    /// never trips on the percentage.
    #[arg(long, env = "DTE_GUARD_MAX_PERCENT", default_value_t = 25.0, value_parser = percent)]
    pub guard_max_percent: f64,

    /// Blast-radius guard: pause a rule's, a pool's or the cluster's evictions when they are more
    /// than this many, whatever the percentage; 0: no ceiling.
    #[arg(long, env = "DTE_GUARD_MAX_PODS", default_value_t = 1000)]
    pub guard_max_pods: usize,

    /// Blast-radius guard: accept up to N evictions caused by the slice taints of a pool,
    /// DRIVER/POOL=N (repeat the flag, or separate with commas).
    #[arg(long, env = "DTE_GUARD_ACCEPT_POOL", value_delimiter = ',', value_parser = pool_acceptance)]
    pub guard_accept_pool: Vec<(crate::guard::Pool, usize)>,

    /// Blast-radius guard: accept up to N evictions cluster-wide (those of rules and pools not
    /// accepted on their own).
    #[arg(long, env = "DTE_GUARD_ACCEPT_CLUSTER")]
    pub guard_accept_cluster: Option<usize>,
}

impl GuardArgs {
    /// The guard configuration these flags choose.
    #[must_use]
    pub fn config(&self) -> crate::guard::GuardConfig {
        crate::guard::GuardConfig {
            window: self.guard_window,
            min_pods: self.guard_min_pods,
            max_percent: self.guard_max_percent,
            max_pods: self.guard_max_pods,
            accept_pools: self.guard_accept_pool.iter().cloned().collect(),
            accept_cluster: self.guard_accept_cluster,
        }
    }
}

/// Flags of `device-taint-eviction resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Name of the DeviceTaintRule whose evictions are accepted.
    #[arg(long, env = "DTE_RESUME_NAME", value_parser = rule_name)]
    pub name: String,

    /// How many of the rule's evictions to accept: the rule's evictions proceed while at most
    /// this many are due within the guard's window.
    #[arg(long, env = "DTE_RESUME_ACCEPT", required_unless_present = "withdraw")]
    pub accept: Option<usize>,

    /// Remove the acceptance instead: the guard applies again.
    #[arg(long, env = "DTE_RESUME_WITHDRAW", default_value_t = false, conflicts_with = "accept",
        num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub withdraw: bool,
}

impl ResumeArgs {
    /// What `resume` is asked to do.
    #[must_use]
    pub fn request(&self) -> ops::ResumeRequest {
        ops::ResumeRequest {
            name: self.name.clone(),
            accept: if self.withdraw { None } else { self.accept },
        }
    }
}

/// A percentage from 0 to 100.
fn percent(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be a percentage from 0 to 100".to_owned()),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// `DRIVER/POOL=N`.
fn pool_acceptance(value: &str) -> Result<(crate::guard::Pool, usize), String> {
    let usage = || format!("expected DRIVER/POOL=N, got \"{value}\"");
    let (pool, n) = value.trim().rsplit_once('=').ok_or_else(usage)?;
    let (driver, pool) = pool.split_once('/').ok_or_else(usage)?;
    if driver.is_empty() || pool.is_empty() {
        return Err(usage());
    }
    let n = n.trim().parse().map_err(|e| format!("{}: {e}", usage()))?;
    Ok((
        crate::guard::Pool {
            driver: driver.to_owned(),
            pool: pool.to_owned(),
        },
        n,
    ))
}

impl Command {
    /// The logging flags of whichever subcommand was chosen.
    #[must_use]
    pub fn log_args(&self) -> &LogArgs {
        match self {
            Self::Controller(a) => &a.log,
            Self::Taint(a) => &a.log,
            Self::Untaint(a) => &a.log,
            Self::Explain(a) => &a.log,
            Self::Resume(a) => &a.log,
        }
    }

    /// Threads of the async runtime: `--runtime-threads` for the controller, one for the
    /// commands, which wait on the API server.
    #[must_use]
    pub fn runtime_threads(&self) -> usize {
        match self {
            Self::Controller(a) => usize::try_from(a.runtime_threads).unwrap_or(1),
            Self::Taint(_) | Self::Untaint(_) | Self::Explain(_) | Self::Resume(_) => 1,
        }
    }

    /// The async runtime of [`Self::runtime_threads`] threads. One thread is a current-thread
    /// runtime: every task runs on the thread that starts it, with none of the multi-thread
    /// scheduler's bookkeeping (measured: about a tenth less CPU per eviction than a
    /// multi-thread runtime with one worker). More threads are a multi-thread runtime with that
    /// many workers.
    ///
    /// # Errors
    /// When the runtime cannot be built (its I/O driver or threads cannot be created).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = self.runtime_threads();
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        builder.enable_all().build()
    }

    /// The API server flags of whichever subcommand was chosen.
    #[must_use]
    pub fn kube_args(&self) -> &KubeArgs {
        match self {
            Self::Controller(a) => &a.kube,
            Self::Taint(a) => &a.kube,
            Self::Untaint(a) => &a.kube,
            Self::Explain(a) => &a.kube,
            Self::Resume(a) => &a.kube,
        }
    }
}

fn rule_name(value: &str) -> Result<String, String> {
    if ops::is_dns_subdomain(value) {
        Ok(value.to_owned())
    } else {
        Err(
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending \
             with a letter or digit, at most 253 characters"
                .to_owned(),
        )
    }
}

fn positive_u32(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// Smallest positive rate accepted (one per 1000 s); smaller ones are mistakes.
const MIN_RATE: f64 = 0.001;
/// Largest rate accepted; larger ones cannot be told apart from unlimited.
const MAX_RATE: f64 = 1_000_000.0;

/// A per-second rate: 0 (unlimited) or a number from [`MIN_RATE`] to [`MAX_RATE`].
fn rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v == 0.0 || (MIN_RATE..=MAX_RATE).contains(&v) => Ok(v),
        Ok(_) => Err(format!(
            "must be 0 (unlimited) or a per-second rate from {MIN_RATE} to {MAX_RATE}"
        )),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log level or filter directive: {e}"))
}

/// Parse `600`, `90s`, `10m`, `1h30m` or `1d` into a duration; a bare number is seconds.
///
/// # Errors
/// A message for clap when the text is empty, has an unknown unit or overflows.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "expected a number at \"{rest}\" (examples: 600, 90s, 10m, 1h30m)"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hr" | "hrs" => 3600,
            "d" => 86_400,
            "" => return Err(format!("missing unit after \"{number}\" (use s, m, h or d)")),
            other => return Err(format!("unknown unit \"{other}\" (use s, m, h or d)")),
        };
        let number: u64 = number
            .parse()
            .map_err(|e| format!("bad number \"{number}\": {e}"))?;
        total = number
            .checked_mul(scale)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| "duration too long".to_owned())?;
        rest = tail;
    }
    Ok(Duration::from_secs(total))
}

/// A duration as [`parse_duration`] reads it, greater than zero.
fn positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err("must be greater than 0".to_owned()),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, error::ErrorKind};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("device-taint-eviction").chain(args.iter().copied()))
    }

    fn controller(args: &[&str]) -> ControllerArgs {
        let mut full = vec!["controller"];
        full.extend_from_slice(args);
        match parse(&full).expect("valid arguments").command {
            Command::Controller(a) => a,
            other => panic!("expected controller, got {other:?}"),
        }
    }

    #[test]
    fn guard_flags() {
        assert_eq!(
            controller(&[]).config().guard,
            crate::guard::GuardConfig::default()
        );
        let config = controller(&[
            "--guard-window=90s",
            "--guard-min-pods=4",
            "--guard-max-percent=50",
            "--guard-max-pods=0",
            "--guard-accept-pool=gpu.example.com/node-1=12,gpu.example.com/a/b=3",
            "--guard-accept-pool",
            "other.example.com/p=0",
            "--guard-accept-cluster=40",
        ])
        .config()
        .guard;
        let pool = |driver: &str, pool: &str| crate::guard::Pool {
            driver: driver.into(),
            pool: pool.into(),
        };
        assert_eq!(
            config,
            crate::guard::GuardConfig {
                window: Duration::from_secs(90),
                min_pods: 4,
                max_percent: 50.0,
                max_pods: 0,
                accept_pools: [
                    (pool("gpu.example.com", "node-1"), 12),
                    (pool("gpu.example.com", "a/b"), 3),
                    (pool("other.example.com", "p"), 0),
                ]
                .into(),
                accept_cluster: Some(40),
            }
        );
        for bad in [
            "--guard-max-percent=101",
            "--guard-max-percent=-1",
            "--guard-accept-pool=node-1=3",
            "--guard-accept-pool=d/p=x",
            "--guard-accept-pool=/p=3",
            "--guard-min-pods=-1",
            "--guard-window=0",
        ] {
            let err = parse(&["controller", bad]).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}: {err}");
        }
    }

    #[test]
    fn resume_flags() {
        let resume = |args: &[&str]| match parse(&[&["resume"], args].concat()) {
            Ok(Cli {
                command: Command::Resume(a),
            }) => Ok(a.request()),
            Ok(other) => panic!("expected resume, got {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(
            resume(&["--name=all", "--accept=30"]),
            Ok(ops::ResumeRequest {
                name: "all".into(),
                accept: Some(30),
            })
        );
        assert_eq!(
            resume(&["--name=all", "--withdraw"]),
            Ok(ops::ResumeRequest {
                name: "all".into(),
                accept: None,
            })
        );
        assert_eq!(resume(&["--name=all"]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            resume(&["--name=all", "--accept=3", "--withdraw"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            resume(&["--name=Bad_Name", "--accept=3"]),
            Err(ErrorKind::ValueValidation)
        );
    }

    #[test]
    fn runtime_threads() {
        let threads = |args: &[&str]| parse(args).map(|cli| cli.command.runtime_threads());
        assert_eq!(threads(&["controller"]).expect("default"), 1);
        assert_eq!(threads(&["controller", "--runtime-threads=4"]).expect("four"), 4);
        assert_eq!(
            threads(&["controller", "--runtime-threads=0"])
                .expect_err("none")
                .kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(threads(&["explain"]).expect("a command"), 1);
    }

    #[test]
    fn one_runtime_thread_is_a_current_thread_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |args: &[&str]| {
            let cli = parse(args).expect("valid");
            cli.command.runtime().expect("runtime").handle().runtime_flavor()
        };
        assert_eq!(flavor(&["controller"]), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(&["explain"]), RuntimeFlavor::CurrentThread);
        assert_eq!(
            flavor(&["controller", "--runtime-threads=2"]),
            RuntimeFlavor::MultiThread
        );
    }

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn controller_defaults() {
        let a = controller(&[]);
        assert_eq!(a.concurrent_device_taint_eviction_syncs, 10);
        assert_eq!(a.eviction_mode, EvictionMode::Delete);
        assert!((a.max_evictions_per_second - 0.0).abs() < f64::EPSILON);
        assert_eq!(a.max_evictions_burst, 1);
        assert_eq!(a.protected_priority, None, "off by default");
        assert!(!a.dry_run);
        assert_eq!(a.http_addr, "0.0.0.0:8080".parse().expect("addr"));
        assert!(a.leader_elect);
        assert_eq!(a.leader_elect_lease_name, "device-taint-eviction-controller");
        assert_eq!(a.leader_elect_lease_duration, 15);
        assert!((a.kube.kube_api_qps - 100.0).abs() < f64::EPSILON);
        assert_eq!(a.kube.kube_api_burst, 200);
        assert_eq!(a.log.log_format, LogFormat::Text);
        assert_eq!(a.log.log_level, None);
    }

    #[test]
    fn controller_flags() {
        let a = controller(&[
            "--concurrent-device-taint-eviction-syncs=3",
            "--eviction-mode",
            "evict",
            "--max-evictions-per-second=2.5",
            "--max-evictions-burst=4",
            "--protected-priority",
            "-5",
            "--dry-run",
            "--http-addr=127.0.0.1:9000",
            "--leader-elect=false",
            "--leader-elect-namespace=kube-system",
            "--leader-elect-lease-duration=2",
            "--leader-elect-identity=me",
            "--log-format=json",
            "--log-level=debug,kube=warn",
            "--kube-api-qps=0",
            "--kube-api-burst=1",
            "--context=kind",
        ]);
        assert_eq!(a.concurrent_device_taint_eviction_syncs, 3);
        assert_eq!(a.eviction_mode, EvictionMode::Evict);
        assert!((a.max_evictions_per_second - 2.5).abs() < f64::EPSILON);
        assert_eq!(a.max_evictions_burst, 4);
        assert_eq!(a.protected_priority, Some(-5));
        assert_eq!(a.config().protected_priority, Some(-5));
        assert!(a.dry_run);
        assert_eq!(a.http_addr.port(), 9000);
        assert!(!a.leader_elect);
        assert_eq!(a.leader_elect_namespace(), "kube-system");
        assert_eq!(a.leader_elect_lease_duration, 2);
        assert_eq!(a.leader_elect_identity(), "me");
        assert_eq!(a.log.log_format, LogFormat::Json);
        assert_eq!(a.log.filter(), "debug,kube=warn");
        assert_eq!(a.kube.context.as_deref(), Some("kind"));
    }

    #[test]
    fn bool_flags_accept_values() {
        assert!(!controller(&["--leader-elect", "false"]).leader_elect);
        assert!(controller(&["--leader-elect"]).leader_elect);
        assert!(!controller(&["--dry-run=no"]).dry_run);
        assert!(controller(&["--dry-run", "--leader-elect=0"]).dry_run);
    }

    /// Environment variables are process-global and `set_var` is unsafe, so the env cases run in a
    /// child process: this test binary re-executed on `env_child` with the variables set.
    fn run_env_child(case: &str, vars: &[(&str, &str)]) {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "--exact",
            "cli::tests::env_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, _) in std::env::vars() {
            if k.starts_with("DTE_") || k == "KUBECONFIG" || k == "POD_NAME" || k == "POD_NAMESPACE" {
                cmd.env_remove(k);
            }
        }
        cmd.env("DTE_CLI_ENV_CHILD", case).envs(vars.iter().copied());
        let out = cmd.output().expect("run child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child case {case} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn env_overrides_defaults() {
        run_env_child(
            "env",
            &[
                ("DTE_CONCURRENT_DEVICE_TAINT_EVICTION_SYNCS", "7"),
                ("DTE_EVICTION_MODE", "evict"),
                ("DTE_MAX_EVICTIONS_PER_SECOND", "1.5"),
                ("DTE_DRY_RUN", "true"),
                ("DTE_LEADER_ELECT", "false"),
                ("DTE_HTTP_ADDR", "127.0.0.1:1234"),
                ("DTE_KUBE_API_QPS", "5"),
                ("DTE_LOG_FORMAT", "json"),
                ("KUBECONFIG", "/tmp/kc"),
                ("POD_NAMESPACE", "from-pod"),
                ("POD_NAME", "pod-0"),
            ],
        );
    }

    #[test]
    fn flags_override_env() {
        run_env_child(
            "flag",
            &[
                ("DTE_CONCURRENT_DEVICE_TAINT_EVICTION_SYNCS", "7"),
                ("DTE_LEADER_ELECT_NAMESPACE", "env-ns"),
            ],
        );
    }

    #[test]
    fn invalid_env_is_rejected() {
        run_env_child("invalid", &[("DTE_CONCURRENT_DEVICE_TAINT_EVICTION_SYNCS", "0")]);
        run_env_child("invalid", &[("DTE_DRY_RUN", "perhaps")]);
    }

    #[test]
    #[ignore = "run by the env tests in a child process"]
    fn env_child() {
        match std::env::var("DTE_CLI_ENV_CHILD").as_deref() {
            Ok("env") => {
                let a = controller(&[]);
                assert_eq!(a.concurrent_device_taint_eviction_syncs, 7);
                assert_eq!(a.eviction_mode, EvictionMode::Evict);
                assert!((a.max_evictions_per_second - 1.5).abs() < f64::EPSILON);
                assert!(a.dry_run);
                assert!(!a.leader_elect);
                assert_eq!(a.http_addr.port(), 1234);
                assert!((a.kube.kube_api_qps - 5.0).abs() < f64::EPSILON);
                assert_eq!(a.log.log_format, LogFormat::Json);
                assert_eq!(
                    a.kube.kubeconfig.as_deref(),
                    Some(std::path::Path::new("/tmp/kc"))
                );
                assert_eq!(a.leader_elect_namespace(), "from-pod");
                assert_eq!(a.leader_elect_identity(), "pod-0");
            }
            Ok("flag") => {
                let a = controller(&[
                    "--concurrent-device-taint-eviction-syncs=2",
                    "--leader-elect-namespace=f",
                ]);
                assert_eq!(a.concurrent_device_taint_eviction_syncs, 2);
                assert_eq!(a.leader_elect_namespace(), "f");
            }
            Ok("invalid") => {
                let err = parse(&["controller"]).expect_err("invalid env value must be rejected");
                assert_eq!(err.kind(), ErrorKind::ValueValidation, "{err}");
            }
            _ => {}
        }
    }

    #[test]
    fn invalid_values_are_rejected() {
        for args in [
            &["controller", "--concurrent-device-taint-eviction-syncs=0"][..],
            &["controller", "--max-evictions-per-second=-1"],
            &["controller", "--max-evictions-per-second=NaN"],
            &["controller", "--max-evictions-per-second=inf"],
            &["controller", "--max-evictions-per-second=1e-300"],
            &["controller", "--max-evictions-per-second=0.0009"],
            &["controller", "--max-evictions-per-second=1e7"],
            &["controller", "--kube-api-qps=1e-300"],
            &["controller", "--max-evictions-burst=0"],
            &["controller", "--kube-api-qps=-5"],
            &["controller", "--leader-elect-lease-duration=1"],
            &["controller", "--eviction-mode=drain"],
            &["controller", "--http-addr=localhost"],
            &["controller", "--leader-elect=maybe"],
            &["controller", "--log-format=xml"],
            &["controller", "--log-level=info,[bad"],
            &["taint", "--driver=d", "--key=k", "--effect=Evict"],
            &["taint", "--driver=d", "--key=k", "--name=Bad_Name"],
            &["taint", "--driver=d", "--key=k", "--timeout=5 weeks"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} must be rejected"));
            assert!(
                matches!(err.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn rate_bounds() {
        for (value, want) in [("0", 0.0), ("0.001", 0.001), ("2.5", 2.5), ("1000000", 1e6)] {
            let a = controller(&[&format!("--max-evictions-per-second={value}")]);
            assert!(
                (a.max_evictions_per_second - want).abs() < f64::EPSILON,
                "{value}"
            );
        }
        let err = parse(&["controller", "--max-evictions-per-second=1e-9"])
            .expect_err("a tiny rate must be rejected")
            .to_string();
        assert!(
            err.contains("must be 0 (unlimited) or a per-second rate from 0.001 to 1000000"),
            "{err}"
        );
    }

    #[test]
    fn zero_syncs_error_is_clear() {
        let err = parse(&["controller", "--concurrent-device-taint-eviction-syncs", "0"])
            .expect_err("0 must be rejected")
            .to_string();
        assert!(err.contains("--concurrent-device-taint-eviction-syncs"), "{err}");
        assert!(err.contains("must be at least 1"), "{err}");
    }

    #[test]
    fn namespace_resolution() {
        let env = |pod_ns: Option<&str>| {
            let pod_ns = pod_ns.map(str::to_owned);
            move |k: &str| {
                if k == "POD_NAMESPACE" {
                    pod_ns.clone()
                } else {
                    None
                }
            }
        };
        assert_eq!(resolve_namespace(Some("flag"), env(Some("pod"))), "flag");
        assert_eq!(resolve_namespace(None, env(Some("pod"))), "pod");
        assert_eq!(resolve_namespace(None, env(Some(" "))), "default");
        assert_eq!(resolve_namespace(None, env(None)), "default");
    }

    #[test]
    fn identity_resolution() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let no_file = || None;
        assert_eq!(
            resolve_identity(Some("id"), env(&[("POD_NAME", "pod")]), no_file, "x"),
            "id"
        );
        assert_eq!(
            resolve_identity(None, env(&[("POD_NAME", "pod")]), no_file, "x"),
            "pod"
        );
        assert_eq!(
            resolve_identity(None, env(&[("HOSTNAME", "host")]), no_file, "ab12c"),
            "host-ab12c"
        );
        assert_eq!(
            resolve_identity(None, env(&[]), || Some("file-host\n".to_owned()), "q"),
            "file-host-q"
        );
        assert_eq!(
            resolve_identity(None, env(&[]), no_file, "q"),
            "device-taint-eviction-controller-q"
        );
        let suffix = random_suffix();
        assert_eq!(suffix, random_suffix(), "stable within the process");
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn taint_defaults_and_name() {
        let cli = parse(&[
            "taint",
            "--driver=gpu.example.com",
            "--pool=node-1",
            "--key=example.com/unhealthy",
        ])
        .expect("valid");
        let Command::Taint(a) = cli.command else {
            panic!("expected taint")
        };
        assert_eq!(a.effect, TaintEffect::NoExecute);
        assert_eq!(a.value, "");
        assert!(!a.wait);
        assert_eq!(a.timeout, Duration::from_secs(600));
        assert_eq!(
            a.request().rule_name(),
            "dte-gpu.example.com-node-1-example.com-unhealthy"
        );
        assert!(ops::is_dns_subdomain(&a.request().rule_name()));
    }

    #[test]
    fn taint_effect_spelling() {
        for (flag, effect) in [
            ("NoExecute", TaintEffect::NoExecute),
            ("noschedule", TaintEffect::NoSchedule),
            ("None", TaintEffect::None),
        ] {
            let cli = parse(&["taint", "--driver=d", "--key=k", "--effect", flag]).expect("valid");
            let Command::Taint(a) = cli.command else {
                panic!("expected taint")
            };
            assert_eq!(a.effect, effect);
            assert_eq!(a.effect.as_api_str().to_lowercase(), flag.to_lowercase());
        }
    }

    #[test]
    fn taint_requires_driver_and_key() {
        let err = parse(&["taint", "--key=k"]).expect_err("driver required");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["taint", "--driver=d"]).expect_err("key required");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn untaint_by_name_or_selector() {
        let cli = parse(&["untaint", "--name=my-rule", "--wait"]).expect("valid");
        let Command::Untaint(a) = cli.command else {
            panic!("expected untaint")
        };
        assert_eq!(a.request().rule_name().as_deref(), Some("my-rule"));
        assert!(a.wait);

        let cli = parse(&["untaint", "--driver=D", "--device=gpu-0", "--key=k"]).expect("valid");
        let Command::Untaint(a) = cli.command else {
            panic!("expected untaint")
        };
        assert_eq!(
            a.request().rule_name(),
            Some(ops::derive_rule_name("D", None, Some("gpu-0"), "k"))
        );
        assert_eq!(a.request().rule_name().as_deref(), Some("dte-d-gpu-0-k"));

        assert_eq!(
            parse(&["untaint"]).expect_err("nothing").kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["untaint", "--driver=d"]).expect_err("no key").kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["untaint", "--name=n", "--driver=d", "--key=k"])
                .expect_err("both")
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn explain_flags() {
        let cli = parse(&["explain"]).expect("valid");
        let Command::Explain(a) = cli.command else {
            panic!("expected explain")
        };
        assert_eq!(a.output, OutputFormat::Table);
        assert_eq!(a.namespace, None);
        let cli = parse(&["explain", "-o", "json", "-n", "team-a"]).expect("valid");
        let Command::Explain(a) = cli.command else {
            panic!("expected explain")
        };
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn leader_config_from_flags() {
        let a = controller(&[
            "--leader-elect-namespace=ops",
            "--leader-elect-identity=replica-1",
            "--leader-elect-lease-duration=20",
        ]);
        assert_eq!(
            a.config().leader_config(),
            Some(crate::leader::LeaderConfig {
                namespace: "ops".to_owned(),
                lease_name: "device-taint-eviction-controller".to_owned(),
                identity: "replica-1".to_owned(),
                duration_secs: 20,
            })
        );
        assert_eq!(
            controller(&["--leader-elect=false"]).config().leader_config(),
            None
        );
    }

    #[test]
    fn watch_idle_timeout() {
        assert_eq!(
            controller(&[]).config().watch_idle_timeout,
            crate::watch::DEFAULT_IDLE_TIMEOUT
        );
        assert_eq!(
            controller(&["--watch-idle-timeout=5s"])
                .config()
                .watch_idle_timeout,
            Duration::from_secs(5)
        );
        assert!(parse(&["controller", "--watch-idle-timeout=0"]).is_err());
        assert!(parse(&["controller", "--watch-idle-timeout=5x"]).is_err());
    }

    #[test]
    fn initial_list() {
        assert_eq!(controller(&[]).config().initial_list, InitialList::Streaming);
        assert_eq!(
            controller(&["--initial-list=paged"]).config().initial_list,
            InitialList::Paged
        );
        assert!(parse(&["controller", "--initial-list=pages"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10m5").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
