//! Bulk eviction side by side (SPEC section 7): N pods on N devices tainted by one rule, evicted by
//! (1) a plain concurrent deleter (the API server's raw delete throughput), (2) this controller,
//! (3) the upstream controller in kube-controller-manager. Each runs on a fresh local control plane
//! with the same client QPS limits.
//!
//! `cargo bench --bench bulk` (env: `BULK_PODS`, default 1000; `BULK_QPS`, default 1000;
//! `BULK_ONLY=raw,ours,upstream`). Not part of `cargo test`.

// Pod counts and QPS stay far below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use device_taint_eviction::{k8s::device_taint_rule_resource, throttle::TokenBucket};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, ServiceAccount},
    resource::v1::{ResourceClaim, ResourceSlice},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

const NS: &str = "bulk";
const DRIVER: &str = "gpu.example.com";
const DEVICES_PER_SLICE: usize = 50;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    name: &'static str,
    seconds: f64,
    cpu: Option<f64>,
    rss_mib: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let pods = env_or("BULK_PODS", 1000);
    let qps = env_or("BULK_QPS", 1000);
    let only = std::env::var("BULK_ONLY").unwrap_or_else(|_| "raw,ours,upstream".into());
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench binaries without it,
    // and this one needs minutes and three control planes: only build it there.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bulk: run with `cargo bench --bench bulk`");
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
        .args(["build", "--release", "--quiet", "--locked"])
        .current_dir(root)
        .status()?;
    assert!(status.success(), "cargo build --release failed");
    let mut runs = Vec::new();
    for name in only.split(',') {
        let name: &'static str = match name {
            "raw" => "raw deleter",
            "ours" => "device-taint-eviction",
            "upstream" => "kube-controller-manager",
            other => panic!("unknown BULK_ONLY entry {other}"),
        };
        eprintln!("== {name}: {pods} pods, qps {qps}");
        runs.push(run(root, name, pods, qps).await?);
    }
    let raw = runs.iter().find(|r| r.name == "raw deleter").map(|r| r.seconds);
    let upstream = runs
        .iter()
        .find(|r| r.name == "kube-controller-manager")
        .map(|r| r.seconds);
    println!(
        "\n{pods} pods on {pods} devices, one NoExecute rule, client qps/burst {qps}/{}",
        qps * 2
    );
    println!(
        "{:<26} {:>9} {:>8} {:>12} {:>14} {:>10}",
        "evictor", "seconds", "x raw", "x upstream", "CPU ms/evict", "peak RSS"
    );
    for r in &runs {
        let ratio = |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.2}", r.seconds / b));
        println!(
            "{:<26} {:>9.2} {:>8} {:>12} {:>14} {:>10}",
            r.name,
            r.seconds,
            ratio(raw),
            ratio(upstream),
            r.cpu
                .map_or("-".into(), |c| format!("{:.3}", c * 1000.0 / pods as f64)),
            r.rss_mib.map_or("-".into(), |m| format!("{m:.1} MiB")),
        );
    }
    Ok(())
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR` or `target/`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

struct ControlPlane(PathBuf);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/down.sh"))
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) and peak RSS of a process, from /proc.
fn usage(pid: u32) -> (Option<f64>, Option<f64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let cpu = stat.and_then(|s| {
        let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        });
    (cpu, rss.map(|kb| kb / 1024.0))
}

#[allow(clippy::too_many_lines)] // one measured run, start to finish
async fn run(root: &Path, name: &'static str, pods: usize, qps: usize) -> Result<Run> {
    let dir = std::env::temp_dir().join(format!("dte-bulk-{}-{}", std::process::id(), name.len()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let up = Command::new(root.join("tests/controlplane/up.sh"))
        .arg(&dir)
        .stdout(Stdio::null())
        .status()?;
    assert!(up.success(), "up.sh failed");
    let _cp = ControlPlane(dir.clone());
    let kubeconfig = dir.join("kubeconfig");
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default())
            .await?;
    let client = Client::try_from(config)?;
    populate(&client, pods).await?;

    let burst = (qps * 2).to_string();
    let qps_s = qps.to_string();
    let log = std::fs::File::create(dir.join("evictor.log"))?;
    let evictor = match name {
        "device-taint-eviction" => Some(Proc(
            Command::new(target_dir(root).join("release/device-taint-eviction"))
                .args(["controller", "--leader-elect=false", "--http-addr=127.0.0.1:0"])
                .args(["--kube-api-qps", &qps_s, "--kube-api-burst", &burst])
                // One rule over every pod is what the blast-radius guard pauses by default; the
                // in-tree controller has none, so the comparison runs without it.
                .args(["--guard-max-percent=100", "--guard-max-pods=0"])
                .env("KUBECONFIG", &kubeconfig)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        )),
        "kube-controller-manager" => {
            let bin = std::fs::read_to_string(dir.join("cluster.env"))?
                .lines()
                .find_map(|l| l.strip_prefix("BIN_DIR=").map(PathBuf::from))
                .ok_or("BIN_DIR missing from cluster.env")?;
            let kc = format!("--kubeconfig={}", kubeconfig.display());
            Some(Proc(
                Command::new(bin.join("kube-controller-manager"))
                    .args([
                        kc.as_str(),
                        "--controllers=device-taint-eviction-controller",
                        "--leader-elect=false",
                    ])
                    .args([
                        "--secure-port=0",
                        "--v=2",
                        "--concurrent-device-taint-eviction-syncs=10",
                    ])
                    .args(["--kube-api-qps", &qps_s, "--kube-api-burst", &burst])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?,
            ))
        }
        _ => None,
    };
    if evictor.is_some() {
        let marker = if name == "device-taint-eviction" {
            "starting workers"
        } else {
            "Underlying informers have synced"
        };
        wait_log(&dir.join("evictor.log"), marker, Duration::from_secs(120)).await?;
    }
    let before = evictor.as_ref().map(|p| usage(p.0.id()));

    let start = Instant::now();
    if evictor.is_some() {
        let ar = device_taint_rule_resource("v1");
        let rule: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": {"name": "bulk"},
            "spec": {"deviceSelector": {"driver": DRIVER}, "taint": {"key": "example.com/broken", "effect": "NoExecute"}}
        }))?;
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .create(&PostParams::default(), &rule)
            .await?;
    } else {
        raw_delete(&client, qps).await?;
    }
    loop {
        let list = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        let remaining = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        if remaining == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{remaining} pods still not deleted after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let (cpu, rss_mib) = match (&evictor, before) {
        (Some(p), Some((cpu0, _))) => {
            let (cpu1, rss) = usage(p.0.id());
            (cpu1.zip(cpu0).map(|(a, b)| a - b), rss)
        }
        _ => (None, None),
    };
    eprintln!("   {seconds:.2} s");
    Ok(Run {
        name,
        seconds,
        cpu,
        rss_mib,
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

/// The baseline: every pod deleted with a UID precondition, 10 at a time, paced like the controllers.
async fn raw_delete(client: &Client, qps: usize) -> Result<()> {
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    let bucket = TokenBucket::new(qps as f64, u32::try_from(qps * 2).unwrap_or(u32::MAX));
    let pods = api.list(&ListParams::default()).await?.items;
    stream::iter(pods)
        .map(|p| {
            let (api, bucket) = (api.clone(), bucket.clone());
            async move {
                bucket.acquire().await;
                let uid = p.metadata.uid.clone();
                let dp = DeleteParams::default().preconditions(kube::api::Preconditions {
                    uid,
                    resource_version: None,
                });
                api.delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(10)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// N pods, each with its own claim allocated one device; N/50 slices of 50 devices.
async fn populate(client: &Client, pods: usize) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sa)
        .await?;
    let slices = pods.div_ceil(DEVICES_PER_SLICE);
    let started = Instant::now();
    stream::iter(0..slices)
        .map(|s| {
            let api = Api::<ResourceSlice>::all(client.clone());
            async move {
                let devices: Vec<_> = (0..DEVICES_PER_SLICE).map(|d| json!({"name": format!("gpu-{d}")})).collect();
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
    stream::iter(0..pods)
        .map(|i| {
            let (pods_api, claims) = (Api::<Pod>::namespaced(client.clone(), NS), Api::<ResourceClaim>::namespaced(client.clone(), NS));
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{i}")},
                    "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0,
                             "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
                             "resourceClaims": [{"name": "gpu", "resourceClaimName": format!("claim-{i}")}]}
                }))?;
                let pod = pods_api.create(&PostParams::default(), &pod).await?;
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
                claims.patch_status(&format!("claim-{i}"), &PatchParams::default(), &Patch::Merge(&status)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "   populated {pods} pods in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
