//! Bulk eviction side by side (SPEC section 7), measured fairly: N pods, each with its own claim on
//! its own device, all tainted at once by one `NoExecute` DeviceTaintRule, evicted by
//!
//! - `raw`: a DELETE-only client (a floor no controller with upstream semantics can reach);
//! - `minimal`: a minimal-semantics client doing exactly the writes upstream semantics need per
//!   pod (`DisruptionTarget` status PATCH with the UID, DELETE with a UID precondition, one
//!   Event), 10 at a time (the physical limit we compare against);
//! - `ours`: device-taint-eviction (release build, the blast-radius guard off: upstream has none);
//! - `upstream`: kube-controller-manager of the control plane's version running only
//!   `device-taint-eviction-controller`;
//!
//! all four with the same client QPS and burst and a concurrency of 10.
//!
//! How it is kept fair:
//! - the cluster is populated once per size; the stopped control plane's directory (etcd data,
//!   certificates) is copied for every run, so population is outside every measurement and every
//!   run starts from the same state;
//! - the end is observed by watches (pods gone, Events created) from a separate process at nice
//!   19, never by polling LISTs; the clock starts just before the rule is created, once the
//!   contender is ready (caches synced) and the observer is watching;
//! - a warm-up round is not counted; then `BENCH_ROUNDS` rounds with the contenders in a new random
//!   order each round;
//! - per run: time to the last pod gone and to the last Event; CPU seconds of the contender, of
//!   kube-apiserver and of etcd apart; the API server's `apiserver_request_total` before and after
//!   (the requests per eviction); Events seen; peak and final RSS of the contender.
//!
//! `make bench` (`cargo bench --bench bulk`): `BENCH_PODS` (default 10000), `BENCH_ROUNDS`
//! (default 5), `BENCH_WARMUP` (warm-up rounds, default 1), `BENCH_QPS` (client QPS of every
//! contender, burst twice that; default 1000), `BENCH_ONLY` (default `raw,minimal,ours,upstream`),
//! `BENCH_OURS_BIN` (our binary to run, taken as it is, e.g. the image's musl one; default the host
//! release build, which is built first).
//! Prints a table and writes `target/bench/bulk.json` and `target/bench/bulk.md`. Not part of
//! `cargo test` (which only builds it).

// Pod counts, QPS and CPU ticks stay far below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use device_taint_eviction::{k8s::device_taint_rule_resource, throttle::TokenBucket};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Event, Namespace, Pod, ServiceAccount},
    resource::v1::{ResourceClaim, ResourceSlice},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde_json::json;

const NS: &str = "bulk";
const DRIVER: &str = "gpu.example.com";
const DEVICES_PER_SLICE: usize = 50;
const CONCURRENCY: usize = 10;
/// The reason of the per-pod Event (upstream's, ours, the minimal client's).
const EVENT_REASON: &str = "DeviceTaintManagerEviction";
/// The longest a run may take before it is reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// Once every pod is gone, how long the observer waits for a missing Event before it gives up.
const EVENT_GRACE: Duration = Duration::from_secs(30);
const CONTENDERS: [&str; 4] = ["raw", "minimal", "ours", "upstream"];
/// Pods `pod-0` ... `pod-TARGETS` carry this label: the single-taint targets of `make bench-scale`.
const TARGET_LABEL: &str = "bench-target";
/// Single-taint repetitions of `make bench-scale` (`pod-0` is the start-up target).
const TARGETS: usize = 20;

#[path = "bulk/scale.rs"]
mod scale;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    // Roles of this same binary run as child processes.
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("observe") => return observe().await,
        Ok(role @ ("raw" | "minimal")) => return client_contender(role).await,
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench binaries without it,
    // and this one needs minutes and a control plane: only build it there.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bulk: run with `cargo bench --bench bulk` (or `make bench`)");
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = target_dir(root).join("bench");
    std::fs::create_dir_all(&out)?;
    // Another build of ours is taken as it is; otherwise the release build is brought up to date.
    if std::env::var_os("BENCH_OURS_BIN").is_none() {
        build_release(root)?;
    }
    let bench = async {
        if std::env::var_os("BENCH_SCALE").is_some_and(|v| v == "1") {
            scale::run(root, &out).await
        } else {
            bulk(root, &out).await
        }
    };
    // Interrupted, the bench drops the run in progress, whose control plane and contender stop
    // with it (their `Drop`), rather than leaving them running.
    tokio::select! {
        result = bench => result,
        signal = interrupted() => Err(format!("interrupted by {signal}: stopped the run in progress").into()),
    }
}

/// The first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `make bench`: the bulk eviction, every contender, every round.
async fn bulk(root: &Path, out: &Path) -> Result<()> {
    let pods = env_or("BENCH_PODS", 10_000);
    let rounds = env_or("BENCH_ROUNDS", 5).max(1);
    let warmup = env_or("BENCH_WARMUP", 1);
    let qps = env_or("BENCH_QPS", 1000).max(1);
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| CONTENDERS.join(","));
    let contenders: Vec<&'static str> = only
        .split(',')
        .map(|name| {
            CONTENDERS
                .into_iter()
                .find(|c| *c == name.trim())
                .ok_or_else(|| format!("unknown BENCH_ONLY entry {name:?} (known: {CONTENDERS:?})"))
        })
        .collect::<Result<_, String>>()?;
    let template = out.join(format!("populated-{pods}"));
    populate_template(root, &template, pods, pods).await?;

    let mut seed = order_seed();
    eprintln!(
        "bulk: {pods} pods, {warmup} warm-up + {rounds} rounds of {contenders:?}, qps {qps}, order seed {seed}"
    );
    let mut runs = Vec::new();
    for round in 0..warmup + rounds {
        let mut order = contenders.clone();
        shuffle(&mut order, &mut seed);
        let counted = round >= warmup;
        let label = if counted {
            format!("round {}/{rounds}", round - warmup + 1)
        } else {
            format!("warm-up {}/{warmup}", round + 1)
        };
        for contender in order {
            eprintln!("== {label}: {contender}");
            let run = measure(root, &template, out, contender, pods, qps).await?;
            eprintln!(
                "   last DELETE {:.2} s, last Event {}, {}/{pods} Events, contender CPU {:.2} s, apiserver {:.2} s, etcd {:.2} s",
                run.last_delete,
                run.last_event.map_or("-".into(), |s| format!("{s:.2} s")),
                run.events,
                run.cpu,
                run.apiserver_cpu,
                run.etcd_cpu,
            );
            if counted {
                runs.push(Run {
                    round: round - warmup,
                    ..run
                });
            }
        }
    }
    let report = Report::new(pods, rounds, qps, seed, runs);
    write_report(out, "bulk", &report.markdown(), &report.json())
}

/// Prints the markdown report and writes it and the JSON to `out/NAME.md` and `out/NAME.json`.
fn write_report(out: &Path, name: &str, markdown: &str, json: &serde_json::Value) -> Result<()> {
    println!("\n{markdown}");
    let (json_path, md_path) = (out.join(format!("{name}.json")), out.join(format!("{name}.md")));
    std::fs::write(&json_path, serde_json::to_vec_pretty(json)?)?;
    std::fs::write(&md_path, markdown)?;
    eprintln!("{name}: wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// The release binary of the controller, built by the same cargo.
fn build_release(root: &Path) -> Result<()> {
    // `cargo bench` sets CARGO_* variables for this process; passed on, they change build-script
    // fingerprints and the inner build would recompile every dependency on every run.
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && !matches!(name.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
            build.env_remove(name.as_ref());
        }
    }
    let status = build
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--bin",
            "device-taint-eviction",
        ])
        .current_dir(root)
        .status()?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    Ok(())
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR` or `target/`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// A seed for the contenders' order, from the clock (never 0).
fn order_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_nanos() % u128::from(u64::MAX)).unwrap_or(1)
    }) | 1
}

/// Fisher-Yates with xorshift64: a new order every round, reproducible from the printed seed.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = usize::try_from(*seed % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

/// A local control plane in `dir`, stopped (and the directory removed unless `keep`) when dropped.
struct ControlPlane {
    dir: PathBuf,
    keep: bool,
}

impl ControlPlane {
    fn up(root: &Path, dir: &Path, keep: bool) -> Result<Self> {
        let up = Command::new(root.join("tests/controlplane/up.sh"))
            .arg(dir)
            .stdout(Stdio::null())
            .status()?;
        if !up.success() {
            return Err(format!("up.sh {} failed", dir.display()).into());
        }
        Ok(Self {
            dir: dir.to_owned(),
            keep,
        })
    }

    async fn client(&self) -> Result<Client> {
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(self.kubeconfig())?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(Client::try_from(config)?)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn pid(&self, component: &str) -> Result<u32> {
        let pid = std::fs::read_to_string(self.dir.join(format!("run/{component}.pid")))?;
        Ok(pid.trim().parse()?)
    }

    fn bin_dir(&self) -> Result<PathBuf> {
        std::fs::read_to_string(self.dir.join("cluster.env"))?
            .lines()
            .find_map(|l| l.strip_prefix("BIN_DIR=").map(PathBuf::from))
            .ok_or_else(|| "BIN_DIR missing from cluster.env".into())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/down.sh"))
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        });
    ticks.unwrap_or(0.0) / 100.0
}

/// Peak and current resident memory of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The cluster of `pods` pods (the first `claimed` of them with a device) in `template`,
/// populated once and stopped; reused while it holds a complete population (stamp file) for this
/// size.
async fn populate_template(root: &Path, template: &Path, pods: usize, claimed: usize) -> Result<()> {
    let stamp = template.join(".populated");
    if stamp.exists() {
        eprintln!("bulk: reusing the populated cluster in {}", template.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(template);
    std::fs::create_dir_all(template)?;
    {
        let cp = ControlPlane::up(root, template, true)?;
        populate(&cp.client().await?, pods, claimed).await?;
    }
    std::fs::write(stamp, format!("{pods}\n"))?;
    Ok(())
}

/// A fresh copy of the populated cluster in `template`, started in `dir`.
fn start_copy(root: &Path, template: &Path, dir: &Path) -> Result<ControlPlane> {
    let _ = std::fs::remove_dir_all(dir);
    let copied = Command::new("cp").arg("-a").arg(template).arg(dir).status()?;
    if !copied.success() {
        return Err("copying the populated cluster failed".into());
    }
    ControlPlane::up(root, dir, false)
}

/// N pods, the first `claimed` each with its own claim allocated one device (`claimed`/50 slices
/// of 50 devices), the others with none; the first [`TARGETS`] + 1 labelled [`TARGET_LABEL`].
async fn populate(client: &Client, pods: usize, claimed: usize) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sa)
        .await?;
    let slices = claimed.div_ceil(DEVICES_PER_SLICE);
    let started = Instant::now();
    stream::iter(0..slices)
        .map(|s| {
            let api = Api::<ResourceSlice>::all(client.clone());
            async move {
                let devices: Vec<_> = (0..DEVICES_PER_SLICE)
                    .map(|d| json!({"name": format!("gpu-{d}")}))
                    .collect();
                let slice: ResourceSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("slice-{s}")},
                    "spec": {"driver": DRIVER, "pool": {"name": format!("pool-{s}"), "generation": 1, "resourceSliceCount": 1},
                             "allNodes": true, "devices": devices}
                }))?;
                api.create(&PostParams::default(), &slice).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let done = std::sync::atomic::AtomicUsize::new(0);
    stream::iter(0..pods)
        .map(|i| {
            let pods_api = Api::<Pod>::namespaced(client.clone(), NS);
            let claims = Api::<ResourceClaim>::namespaced(client.clone(), NS);
            let done = &done;
            async move {
                let mut pod = json!({
                    "metadata": {"name": format!("pod-{i}")},
                    "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0,
                             "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
                });
                if i <= TARGETS {
                    pod["metadata"]["labels"] = json!({TARGET_LABEL: "true"});
                }
                if i < claimed {
                    pod["spec"]["resourceClaims"] =
                        json!([{"name": "gpu", "resourceClaimName": format!("claim-{i}")}]);
                }
                let pod = pods_api
                    .create(&PostParams::default(), &serde_json::from_value(pod)?)
                    .await?;
                if i < claimed {
                    let claim: ResourceClaim = serde_json::from_value(json!({
                        "metadata": {"name": format!("claim-{i}")},
                        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}}
                    }))?;
                    claims.create(&PostParams::default(), &claim).await?;
                    let status = json!({"status": {
                        "allocation": {"devices": {"results": [{"request": "gpu", "driver": DRIVER,
                            "pool": format!("pool-{}", i / DEVICES_PER_SLICE), "device": format!("gpu-{}", i % DEVICES_PER_SLICE)}]}},
                        "reservedFor": [{"resource": "pods", "name": pod.metadata.name, "uid": pod.metadata.uid}]
                    }});
                    claims
                        .patch_status(&format!("claim-{i}"), &PatchParams::default(), &Patch::Merge(&status))
                        .await?;
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    eprintln!("   populated {n}/{pods} pods");
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "bulk: populated {pods} pods in {:.1} s (once for this size)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One measured run.
#[derive(Clone, Debug)]
struct Run {
    round: usize,
    contender: &'static str,
    /// Seconds from just before the rule was created to the last pod gone.
    last_delete: f64,
    /// Seconds to the last eviction Event (none for the raw deleter).
    last_event: Option<f64>,
    events: usize,
    /// CPU seconds during the run: the contender's, kube-apiserver's, etcd's.
    cpu: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    peak_rss_mib: f64,
    rss_mib: f64,
    /// `apiserver_request_total` increase by "VERB resource[/subresource]".
    requests: BTreeMap<String, f64>,
}

/// Copies the template, starts its control plane, the contender and the observer, creates the
/// rule and measures until every pod is gone and its Event seen.
#[allow(clippy::too_many_lines)] // one measured run, start to finish
async fn measure(
    root: &Path,
    template: &Path,
    out: &Path,
    contender: &'static str,
    pods: usize,
    qps: usize,
) -> Result<Run> {
    let dir = out.join(format!("run-{contender}"));
    let cp = start_copy(root, template, &dir)?;
    let client = cp.client().await?;
    let kubeconfig = cp.kubeconfig();
    let qps_s = qps.to_string();
    let log_path = dir.join("contender.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = match contender {
        "ours" | "upstream" => controller_command(root, &cp, contender, qps, "127.0.0.1:0")?,
        role => {
            let mut c = Command::new(std::env::current_exe()?);
            c.env("BENCH_ROLE", role)
                .env("BENCH_QPS", &qps_s)
                .env("KUBECONFIG", &kubeconfig)
                .stdin(Stdio::piped());
            c
        }
    };
    let mut proc = Proc(command.stdout(log.try_clone()?).stderr(log).spawn()?);
    let marker = match contender {
        "ours" => OURS_READY,
        "upstream" => UPSTREAM_READY,
        _ => "ready",
    };
    wait_log(&log_path, marker, Duration::from_secs(180)).await?;
    // The raw and minimal clients start on a line on their stdin and exit when it closes.
    let mut go: Option<ChildStdin> = proc.0.stdin.take();

    let (mut observer, mut results) = spawn_observer(&kubeconfig, pods, contender != "raw")?;
    let mut line = String::new();
    results.read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(format!("observer did not start: {line:?}").into());
    }

    let measured = (proc.0.id(), cp.pid("kube-apiserver")?, cp.pid("etcd")?);
    let cpu_before = (
        cpu_seconds(measured.0),
        cpu_seconds(measured.1),
        cpu_seconds(measured.2),
    );
    let requests_before = request_totals(&client).await?;
    let start = unix_now();
    if let Some(go) = &mut go {
        writeln!(go, "go")?;
    } else {
        let rule: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": {"name": "bulk"},
            "spec": {"deviceSelector": {"driver": DRIVER}, "taint": {"key": "example.com/broken", "effect": "NoExecute"}}
        }))?;
        Api::<DynamicObject>::all_with(client.clone(), &device_taint_rule_resource("v1"))
            .create(&PostParams::default(), &rule)
            .await?;
    }
    line.clear();
    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        results.read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(RUN_TIMEOUT + EVENT_GRACE, read)
        .await
        .map_err(|_| format!("{contender}: not done within {RUN_TIMEOUT:?}"))???;
    let _ = observer.0.wait();
    let cpu_after = (
        cpu_seconds(measured.0),
        cpu_seconds(measured.1),
        cpu_seconds(measured.2),
    );
    let (peak_rss_mib, rss_mib) = rss_mib(measured.0);
    drop(go);
    let requests_after = request_totals(&client).await?;
    // "done DELETED LAST_DELETE EVENTS LAST_EVENT" (times in Unix seconds, 0 for none).
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (Some(deleted), Some(last_delete), Some(events), Some(last_event)) = (
        fields.get(1).and_then(|f| f.parse::<usize>().ok()),
        fields.get(2).and_then(|f| f.parse::<f64>().ok()),
        fields.get(3).and_then(|f| f.parse::<usize>().ok()),
        fields.get(4).and_then(|f| f.parse::<f64>().ok()),
    ) else {
        return Err(format!("observer said {line:?}").into());
    };
    if deleted < pods {
        return Err(format!(
            "{contender}: only {deleted} of {pods} pods gone after {RUN_TIMEOUT:?}; log {}",
            log_path.display()
        )
        .into());
    }
    let requests = requests_after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - requests_before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect();
    Ok(Run {
        round: 0,
        contender,
        last_delete: last_delete - start,
        last_event: (last_event > 0.0).then_some(last_event - start),
        events,
        cpu: cpu_after.0 - cpu_before.0,
        apiserver_cpu: cpu_after.1 - cpu_before.1,
        etcd_cpu: cpu_after.2 - cpu_before.2,
        peak_rss_mib,
        rss_mib,
        requests,
    })
}

/// The line each controller logs once its caches are synced.
const OURS_READY: &str = "starting workers";
const UPSTREAM_READY: &str = "Underlying informers have synced";

/// The command line of a controller contender: ours (the blast-radius guard off, its HTTP
/// server on `http_addr`) or kube-controller-manager running only
/// `device-taint-eviction-controller`, both with the client QPS `qps` and burst twice that.
fn controller_command(
    root: &Path,
    cp: &ControlPlane,
    contender: &str,
    qps: usize,
    http_addr: &str,
) -> Result<Command> {
    let (qps, burst) = (qps.to_string(), (qps * 2).to_string());
    let kubeconfig = cp.kubeconfig();
    Ok(if contender == "ours" {
        let binary = std::env::var_os("BENCH_OURS_BIN").map_or_else(
            || target_dir(root).join("release/device-taint-eviction"),
            PathBuf::from,
        );
        let mut c = Command::new(binary);
        c.args(["controller", "--leader-elect=false"])
            .arg(format!("--http-addr={http_addr}"))
            .args(["--kube-api-qps", &qps, "--kube-api-burst", &burst])
            // One rule over every pod is what the blast-radius guard pauses by default; the
            // in-tree controller has none, so the comparison runs without it.
            .args(["--guard-max-percent=100", "--guard-max-pods=0"])
            .env("KUBECONFIG", &kubeconfig);
        c
    } else {
        let mut c = Command::new(cp.bin_dir()?.join("kube-controller-manager"));
        c.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "--controllers=device-taint-eviction-controller",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=2",
                "--concurrent-device-taint-eviction-syncs=10",
            ])
            .args(["--kube-api-qps", &qps, "--kube-api-burst", &burst]);
        c
    })
}

async fn wait_log(path: &Path, marker: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while !std::fs::read_to_string(path).unwrap_or_default().contains(marker) {
        if start.elapsed() > timeout {
            return Err(format!("{} never logged {marker:?}", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The observer: this binary again, at nice 19, its results on its stdout.
fn spawn_observer(kubeconfig: &Path, pods: usize, events: bool) -> Result<(Proc, BufReader<ChildStdout>)> {
    let mut child = Command::new("nice")
        .args(["-n", "19"])
        .arg(std::env::current_exe()?)
        .env("BENCH_ROLE", "observe")
        .env("BENCH_PODS", pods.to_string())
        .env("BENCH_EXPECT_EVENTS", if events { "1" } else { "0" })
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("observer stdout")?;
    Ok((Proc(child), BufReader::new(stdout)))
}

async fn kubeconfig_client() -> Result<Client> {
    let path = std::env::var("KUBECONFIG")?;
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Watches the pods and Events of the namespace; prints `ready` once both watches have listed,
/// then `done DELETED LAST_DELETE EVENTS LAST_EVENT` when every pod is gone and (if expected) its
/// Event seen, or when the time is up.
async fn observe() -> Result<()> {
    let pods = env_or("BENCH_PODS", 0);
    let expect_events = std::env::var("BENCH_EXPECT_EVENTS").as_deref() == Ok("1");
    let client = kubeconfig_client().await?;
    let pod_events = watcher(
        Api::<Pod>::namespaced(client.clone(), NS),
        watcher::Config::default(),
    )
    .boxed();
    let event_events = watcher(
        Api::<Event>::namespaced(client.clone(), NS),
        watcher::Config::default(),
    )
    .boxed();
    let mut merged = futures::stream::select(pod_events.map(Either::Pod), event_events.map(Either::Event));
    let (mut pods_listed, mut events_listed, mut ready) = (false, false, false);
    let mut gone = HashSet::new();
    let mut evented = HashSet::new();
    let (mut last_delete, mut last_event) = (0.0, 0.0);
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let mut all_gone_at: Option<tokio::time::Instant> = None;
    loop {
        let wait_until = all_gone_at.map_or(deadline, |at| (at + EVENT_GRACE).min(deadline));
        let Ok(next) = tokio::time::timeout_at(wait_until, merged.next()).await else {
            break;
        };
        let Some(next) = next else { break };
        match next {
            Either::Pod(Ok(watcher::Event::InitDone)) => pods_listed = true,
            Either::Event(Ok(watcher::Event::InitDone)) => events_listed = true,
            Either::Pod(Ok(watcher::Event::Delete(pod)))
                if gone.insert(pod.metadata.name.clone().unwrap_or_default()) =>
            {
                last_delete = unix_now();
            }
            Either::Pod(Ok(watcher::Event::Apply(pod)))
                if pod.metadata.deletion_timestamp.is_some()
                    && gone.insert(pod.metadata.name.clone().unwrap_or_default()) =>
            {
                last_delete = unix_now();
            }
            Either::Event(Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event)))
                if event.reason.as_deref() == Some(EVENT_REASON) =>
            {
                let pod = event.involved_object.name.unwrap_or_default();
                if evented.insert(pod) {
                    last_event = unix_now();
                }
            }
            _ => {}
        }
        if !ready && pods_listed && events_listed {
            ready = true;
            println!("ready");
        }
        if ready && gone.len() >= pods {
            if !expect_events || evented.len() >= pods {
                break;
            }
            all_gone_at.get_or_insert_with(tokio::time::Instant::now);
        }
    }
    println!(
        "done {} {last_delete:.6} {} {last_event:.6}",
        gone.len(),
        evented.len()
    );
    Ok(())
}

enum Either<P, E> {
    Pod(P),
    Event(E),
}

/// The raw and minimal clients: list the pods (their "cache"), say `ready`, wait for `go` on
/// stdin, then evict every pod 10 at a time, paced by the same token bucket as the controllers;
/// exit when stdin closes.
async fn client_contender(role: &str) -> Result<()> {
    let qps = env_or("BENCH_QPS", 1000).max(1);
    let client = kubeconfig_client().await?;
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    let events = Api::<Event>::namespaced(client.clone(), NS);
    let bucket = TokenBucket::new(qps as f64, u32::try_from(qps * 2).unwrap_or(u32::MAX));
    let pods = api.list(&ListParams::default()).await?.items;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let minimal = role == "minimal";
    stream::iter(pods)
        .map(|p| {
            let (api, events, bucket) = (api.clone(), events.clone(), bucket.clone());
            async move {
                let name = p.metadata.name.clone().unwrap_or_default();
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if minimal {
                    bucket.acquire().await;
                    events
                        .create(&PostParams::default(), &eviction_event(&name, &uid)?)
                        .await?;
                    bucket.acquire().await;
                    let patch = json!({
                        "metadata": {"uid": uid},
                        "status": {"conditions": [{"type": "DisruptionTarget", "status": "True",
                            "reason": "DeletionByDeviceTaintManager",
                            "message": "Device Taint manager: deleting due to NoExecute taint"}]}
                    });
                    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                        .await?;
                }
                bucket.acquire().await;
                let params = DeleteParams::default().preconditions(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                });
                api.delete(&name, &params).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // Measured (CPU, memory) while it lives: exit only when the bench closes stdin.
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

fn eviction_event(pod: &str, uid: &str) -> Result<Event> {
    let now = k8s_openapi::jiff::Timestamp::now();
    Ok(serde_json::from_value(json!({
        "metadata": {"generateName": format!("{pod}.")},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": NS, "name": pod, "uid": uid},
        "reason": EVENT_REASON,
        "message": "Marking for deletion",
        "type": "Normal",
        "source": {"component": "bench-minimal"},
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    }))?)
}

/// `apiserver_request_total` of the API server, summed by "VERB resource[/subresource]".
async fn request_totals(client: &Client) -> Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let (subresource, resource) = (label("subresource"), label("resource"));
        let key = if subresource.is_empty() {
            format!("{} {resource}", label("verb"))
        } else {
            format!("{} {resource}/{subresource}", label("verb"))
        };
        *totals.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(totals)
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            f64::midpoint(values[n / 2 - 1], values[n / 2])
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    fn json(self) -> serde_json::Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }

    fn text(self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}-{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// Coefficient of variation (standard deviation / mean).
fn cv(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
}

/// A run of one contender in one counted round.
trait Measured {
    fn round(&self) -> usize;
    fn contender(&self) -> &str;
}

impl Measured for Run {
    fn round(&self) -> usize {
        self.round
    }

    fn contender(&self) -> &str {
        self.contender
    }
}

/// Per round, `ours`'s figure over `base`'s; the spread over the rounds.
fn per_round_ratio<R: Measured>(
    runs: &[R],
    rounds: usize,
    base: &str,
    figure: impl Fn(&R) -> f64,
) -> Option<Spread> {
    let ratios = (0..rounds)
        .filter_map(|round| {
            let find = |c: &str| runs.iter().find(|r| r.round() == round && r.contender() == c);
            let (ours, base) = (find("ours")?, find(base)?);
            let b = figure(base);
            (b > 0.0).then(|| figure(ours) / b)
        })
        .collect();
    Spread::of(ratios)
}

/// The ratios as a JSON object of `{median, min, max}` (null where a contender did not run).
fn ratios_json(ratios: impl IntoIterator<Item = (&'static str, Option<Spread>)>) -> serde_json::Value {
    ratios
        .into_iter()
        .map(|(name, spread)| {
            (
                name.to_owned(),
                spread.map_or(serde_json::Value::Null, Spread::json),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The ratios as a markdown table, ours over `other`.
fn ratios_markdown(
    md: &mut String,
    other: &str,
    ratios: impl IntoIterator<Item = (&'static str, Option<Spread>)>,
) {
    let _ = write!(
        md,
        "\n| ratio (per round, ours / {other}) | median (min-max) |\n|---|---|\n"
    );
    for (name, spread) in ratios {
        let _ = writeln!(md, "| {name} | {} |", spread.map_or("-".into(), |s| s.text(3)));
    }
}

struct Report {
    pods: usize,
    rounds: usize,
    qps: usize,
    seed: u64,
    runs: Vec<Run>,
}

impl Report {
    fn new(pods: usize, rounds: usize, qps: usize, seed: u64, runs: Vec<Run>) -> Self {
        Self {
            pods,
            rounds,
            qps,
            seed,
            runs,
        }
    }

    fn of(&self, contender: &str) -> Vec<&Run> {
        self.runs.iter().filter(|r| r.contender == contender).collect()
    }

    fn ratio(&self, base: &str, figure: impl Fn(&Run) -> f64) -> Option<Spread> {
        per_round_ratio(&self.runs, self.rounds, base, figure)
    }

    fn ratios(&self) -> [(&'static str, Option<Spread>); 4] {
        let per_eviction = self.pods as f64;
        [
            (
                "last_delete_vs_upstream",
                self.ratio("upstream", |r| r.last_delete),
            ),
            ("last_delete_vs_minimal", self.ratio("minimal", |r| r.last_delete)),
            (
                "cpu_per_eviction_vs_upstream",
                self.ratio("upstream", |r| r.cpu / per_eviction),
            ),
            (
                "server_cpu_per_eviction_vs_upstream",
                self.ratio("upstream", |r| (r.apiserver_cpu + r.etcd_cpu) / per_eviction),
            ),
        ]
    }

    fn json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "round": r.round, "contender": r.contender,
                    "last_delete_seconds": r.last_delete, "last_event_seconds": r.last_event,
                    "events": r.events, "cpu_seconds": r.cpu,
                    "apiserver_cpu_seconds": r.apiserver_cpu, "etcd_cpu_seconds": r.etcd_cpu,
                    "peak_rss_mib": r.peak_rss_mib, "rss_mib": r.rss_mib,
                    "apiserver_requests": r.requests,
                })
            })
            .collect();
        let ratios = ratios_json(self.ratios());
        json!({
            "pods": self.pods, "rounds": self.rounds, "qps": self.qps, "burst": self.qps * 2,
            "concurrency": CONCURRENCY, "order_seed": self.seed, "runs": runs, "ratios": ratios,
        })
    }

    fn markdown(&self) -> String {
        let n = self.pods as f64;
        let mut md = format!(
            "Bulk eviction: {} pods on {} devices, one NoExecute DeviceTaintRule; client QPS {} / burst {}, \
             concurrency {CONCURRENCY}; median (min-max) of {} rounds, contenders in random order (seed {}).\n\n\
             | contender | last DELETE s | CV | last Event s | Events | CPU ms/eviction | apiserver+etcd CPU ms/eviction | peak RSS MiB | API requests/eviction |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.pods,
            self.pods,
            self.qps,
            self.qps * 2,
            self.rounds,
            self.seed
        );
        for contender in CONTENDERS {
            let runs = self.of(contender);
            if runs.is_empty() {
                continue;
            }
            let spread = |f: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(|r| f(r)).collect());
            let fmt = |s: Option<Spread>, d: usize| s.map_or("-".into(), |s| s.text(d));
            let deletes: Vec<f64> = runs.iter().map(|r| r.last_delete).collect();
            let requests = runs
                .last()
                .map(|r| {
                    r.requests
                        .iter()
                        .filter(|(k, v)| **v >= n / 2.0 && !k.starts_with("WATCH") && !k.starts_with("LIST"))
                        .map(|(k, v)| format!("{k} {:.2}", v / n))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {contender} | {} | {:.3} | {} | {} | {} | {} | {} | {requests} |",
                fmt(spread(&|r| r.last_delete), 2),
                cv(&deletes),
                if contender == "raw" {
                    "-".into()
                } else {
                    fmt(spread(&|r| r.last_event.unwrap_or(f64::NAN)), 2)
                },
                runs.iter().map(|r| r.events).min().unwrap_or(0),
                fmt(spread(&|r| r.cpu * 1000.0 / n), 3),
                fmt(spread(&|r| (r.apiserver_cpu + r.etcd_cpu) * 1000.0 / n), 3),
                fmt(spread(&|r| r.peak_rss_mib), 1),
            );
        }
        ratios_markdown(&mut md, "other", self.ratios());
        md
    }
}
