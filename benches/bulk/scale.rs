//! `make bench-scale` (SPEC section 7): a large cluster with few devices, ours against
//! kube-controller-manager. `BENCH_PODS` pods (default 50 000), a tenth of them with a claim on a
//! device of their own, the rest with none, populated once. Per contender and round, on a fresh
//! copy of the populated cluster:
//!
//! - start-up: once the API server's watch caches of pods, claims and slices are initialised (a
//!   restarted server is ready seconds before they are), a rule already taints `pod-0`'s device
//!   when the contender starts; measured from
//!   process start to that pod's deletion seen by a watch (start-up to effective: every cache
//!   listed and the first decision made), and, for reference, to the contender's own "synced" log
//!   line; with the contender's CPU seconds up to then;
//! - single taint, [`TARGETS`] times in turn: a rule tainting the device of `pod-1` ... `pod-20`,
//!   from just before the rule is created to the pod's deletion seen by the watch;
//! - memory: RSS once the start-up eviction is seen, and the peak (VmHWM) at the end;
//! - ours only: `decision_seconds` from its metrics, the part of each eviction spent inside the
//!   controller (from the eviction being due to its DELETE sent).
//!
//! The watch runs in this process, on the labelled target pods only. `BENCH_ROUNDS` (default 3)
//! rounds, the two contenders (`BENCH_ONLY`, default `ours,upstream`) in a new random order each
//! round. Writes `target/bench/scale.json`
//! and `target/bench/scale.md`.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
};

use kube::{core::PartialObjectMeta, runtime::WatchStreamExt as _};
use tokio::sync::mpsc;

use super::*;

/// The longest wait for one pod to be deleted.
const DELETE_TIMEOUT: Duration = Duration::from_secs(300);
const SCALE_CONTENDERS: [&str; 2] = ["ours", "upstream"];

/// One contender's run.
struct ScaleRun {
    round: usize,
    contender: &'static str,
    /// Process start to the start-up target's deletion seen, seconds.
    startup: f64,
    /// Process start to the contender's "caches synced" log line, seconds.
    synced: f64,
    /// Contender CPU seconds from its start to the start-up deletion seen.
    startup_cpu: f64,
    /// Each single taint, from just before its rule was created to the deletion seen, seconds.
    single: Vec<f64>,
    /// RSS once the start-up deletion was seen, and the peak at the end, MiB.
    ready_rss_mib: f64,
    peak_rss_mib: f64,
    /// Ours: `decision_seconds` over its evictions: the mean, and the bound of the smallest
    /// bucket holding them all, in ms.
    inside_ms: Option<(f64, f64)>,
}

pub(super) async fn run(root: &Path, out: &Path) -> Result<()> {
    let pods = env_or("BENCH_PODS", 50_000);
    if pods <= TARGETS {
        return Err(format!("BENCH_PODS must be more than {TARGETS}").into());
    }
    let claimed = (pods / 10).max(TARGETS + 1);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let qps = env_or("BENCH_QPS", 1000).max(1);
    let template = out.join(format!("scale-{pods}"));
    populate_template(root, &template, pods, claimed).await?;
    let mut seed = order_seed();
    eprintln!(
        "scale: {pods} pods ({claimed} with a device), {rounds} rounds of {SCALE_CONTENDERS:?}, qps {qps}, order seed {seed}"
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| SCALE_CONTENDERS.join(","));
    let mut runs = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<&'static str> = SCALE_CONTENDERS
            .into_iter()
            .filter(|c| only.split(',').any(|o| o.trim() == *c))
            .collect();
        shuffle(&mut order, &mut seed);
        for contender in order {
            eprintln!("== round {}/{rounds}: {contender}", round + 1);
            let run = measure_scale(root, &template, out, contender, qps, round).await?;
            eprintln!(
                "   start-up {:.2} s (synced {:.2} s, CPU {:.2} s), single taint median {:.1} ms, RSS {:.1} MiB, peak {:.1} MiB{}",
                run.startup,
                run.synced,
                run.startup_cpu,
                Spread::of(run.single.clone()).map_or(f64::NAN, |s| s.median * 1000.0),
                run.ready_rss_mib,
                run.peak_rss_mib,
                run.inside_ms.map_or(String::new(), |(mean, bound)| format!(
                    ", inside {mean:.2} ms (all <= {bound} ms)"
                )),
            );
            runs.push(run);
        }
    }
    let report = ScaleReport {
        pods,
        claimed,
        rounds,
        qps,
        seed,
        runs,
    };
    write_report(out, "scale", &report.markdown(), &report.json())
}

async fn measure_scale(
    root: &Path,
    template: &Path,
    out: &Path,
    contender: &'static str,
    qps: usize,
    round: usize,
) -> Result<ScaleRun> {
    let dir = out.join(format!("scale-run-{contender}"));
    let cp = start_copy(root, template, &dir)?;
    let client = cp.client().await?;
    warm_caches(&client).await?;
    let mut gone = Deletions::watch(&client).await?;
    taint_device_of(&client, 0).await?;
    let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let log_path = dir.join("contender.log");
    let log = std::fs::File::create(&log_path)?;
    let marker = if contender == "ours" {
        OURS_READY
    } else {
        UPSTREAM_READY
    };
    let start = unix_now();
    let proc = Proc(
        controller_command(root, &cp, contender, qps, &http)?
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let pid = proc.0.id();
    let synced = tokio::spawn(async move { wait_log_fast(&log_path, marker).await.map(|()| unix_now()) });
    let startup = gone.wait("pod-0").await? - start;
    let startup_cpu = cpu_seconds(pid);
    let (_, ready_rss_mib) = rss_mib(pid);
    let synced = synced.await?? - start;
    let mut single = Vec::with_capacity(TARGETS);
    for i in 1..=TARGETS {
        let before = unix_now();
        taint_device_of(&client, i).await?;
        single.push(gone.wait(&format!("pod-{i}")).await? - before);
    }
    let inside_ms = if contender == "ours" {
        Some(decision_ms(&http)?)
    } else {
        None
    };
    let (peak_rss_mib, _) = rss_mib(pid);
    drop(proc);
    Ok(ScaleRun {
        round,
        contender,
        startup,
        synced,
        startup_cpu,
        single,
        ready_rss_mib,
        peak_rss_mib,
        inside_ms,
    })
}

/// Waits until the API server serves pods, claims and slices from its watch cache. A restarted
/// API server answers `/readyz` seconds before its pod cache holds 50 000 pods; without this wait
/// start-up would measure that server warm-up as much as the contender (a controller normally
/// starts against a server that has been running).
async fn warm_caches(client: &Client) -> Result<()> {
    async fn streamed<K>(client: &Client) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static,
    {
        let api = Api::<PartialObjectMeta<K>>::all(client.clone());
        // A streaming list is served only from an initialised watch cache.
        let config = watcher::Config::default().streaming_lists();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                return Ok(());
            }
        }
        Err("a warm-up watch ended".into())
    }
    let warm = async {
        tokio::try_join!(
            streamed::<Pod>(client),
            streamed::<ResourceClaim>(client),
            streamed::<ResourceSlice>(client),
        )
    };
    tokio::time::timeout(Duration::from_secs(120), warm)
        .await
        .map_err(|_| "the API server's watch caches were not ready within 120 s")??;
    Ok(())
}

/// A NoExecute DeviceTaintRule on the device of `pod-{i}`'s claim.
async fn taint_device_of(client: &Client, i: usize) -> Result<()> {
    let rule: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule",
        "metadata": {"name": format!("device-of-pod-{i}")},
        "spec": {
            "deviceSelector": {"driver": DRIVER, "pool": format!("pool-{}", i / DEVICES_PER_SLICE),
                               "device": format!("gpu-{}", i % DEVICES_PER_SLICE)},
            "taint": {"key": "example.com/broken", "effect": "NoExecute"}
        }
    }))?;
    Api::<DynamicObject>::all_with(client.clone(), &device_taint_rule_resource("v1"))
        .create(&PostParams::default(), &rule)
        .await?;
    Ok(())
}

/// Deletions of the target pods (deletionTimestamp set, or gone), as a watch sees them.
struct Deletions {
    events: mpsc::UnboundedReceiver<(String, f64)>,
    seen: HashMap<String, f64>,
    task: tokio::task::JoinHandle<()>,
}

impl Deletions {
    /// Starts the watch of the labelled pods; returns once it has listed them.
    async fn watch(client: &Client) -> Result<Self> {
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let (tx, events) = mpsc::unbounded_channel();
        let api = Api::<Pod>::namespaced(client.clone(), NS);
        let config = watcher::Config::default().labels(&format!("{TARGET_LABEL}=true"));
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            let mut listed_tx = Some(listed_tx);
            while let Some(event) = stream.next().await {
                let name = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = listed_tx.take() {
                            let _ = listed.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Delete(pod)) => pod.metadata.name,
                    Ok(watcher::Event::Apply(pod)) if pod.metadata.deletion_timestamp.is_some() => {
                        pod.metadata.name
                    }
                    _ => continue,
                };
                if tx.send((name.unwrap_or_default(), unix_now())).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), listed)
            .await
            .map_err(|_| "the watch of the target pods did not list them within 60 s")??;
        Ok(Self {
            events,
            seen: HashMap::new(),
            task,
        })
    }

    /// When `pod` was first seen deleted (waits for it).
    async fn wait(&mut self, pod: &str) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + DELETE_TIMEOUT;
        loop {
            if let Some(at) = self.seen.get(pod) {
                return Ok(*at);
            }
            let (name, at) = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| format!("{pod} not deleted within {DELETE_TIMEOUT:?}"))?
                .ok_or("the watch of the target pods ended")?;
            self.seen.entry(name).or_insert(at);
        }
    }
}

impl Drop for Deletions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for `marker` in the log at `path`, looking every 10 ms.
async fn wait_log_fast(path: &Path, marker: &str) -> Result<()> {
    let deadline = Instant::now() + DELETE_TIMEOUT;
    while !std::fs::read_to_string(path).unwrap_or_default().contains(marker) {
        if Instant::now() > deadline {
            return Err(format!("{} never logged {marker:?}", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Ours' `decision_seconds`: the mean and the bound of the smallest bucket holding every
/// observation, in ms.
fn decision_ms(addr: &str) -> Result<(f64, f64)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let name = "device_taint_eviction_controller_decision_seconds";
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (Some(sum), Some(count)) = (value("_sum"), value("_count")) else {
        return Err(format!("no {name} in the metrics").into());
    };
    if count < 1.0 {
        return Err(format!("{name} observed nothing").into());
    }
    let bound = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, n) = rest.split_once("\"} ")?;
            Some((le.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= count)
        .map_or(f64::INFINITY, |(le, _)| le);
    Ok((sum / count * 1000.0, bound * 1000.0))
}

struct ScaleReport {
    pods: usize,
    claimed: usize,
    rounds: usize,
    qps: usize,
    seed: u64,
    runs: Vec<ScaleRun>,
}

impl ScaleReport {
    fn of(&self, contender: &str) -> Vec<&ScaleRun> {
        self.runs.iter().filter(|r| r.contender == contender).collect()
    }

    fn ratio(&self, figure: impl Fn(&ScaleRun) -> f64) -> Option<Spread> {
        per_round_ratio(&self.runs, self.rounds, "upstream", figure)
    }

    fn ratios(&self) -> [(&'static str, Option<Spread>); 3] {
        [
            ("peak_rss_vs_upstream", self.ratio(|r| r.peak_rss_mib)),
            ("startup_vs_upstream", self.ratio(|r| r.startup)),
            ("single_taint_vs_upstream", self.ratio(single_median)),
        ]
    }

    fn ours(&self, figure: impl Fn(&ScaleRun) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.of("ours").into_iter().filter_map(figure).collect())
    }

    fn json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "round": r.round, "contender": r.contender,
                    "startup_seconds": r.startup, "synced_seconds": r.synced,
                    "startup_cpu_seconds": r.startup_cpu, "single_taint_seconds": r.single,
                    "ready_rss_mib": r.ready_rss_mib, "peak_rss_mib": r.peak_rss_mib,
                    "decision_mean_ms": r.inside_ms.map(|(mean, _)| mean),
                    "decision_all_within_ms": r.inside_ms.map(|(_, bound)| bound),
                })
            })
            .collect();
        let ratios = ratios_json(self.ratios());
        let median = |s: Option<Spread>| s.map(|s| s.median);
        json!({
            "pods": self.pods, "pods_with_devices": self.claimed, "rounds": self.rounds,
            "qps": self.qps, "burst": self.qps * 2, "order_seed": self.seed,
            "single_taint_repetitions": TARGETS, "runs": runs, "ratios": ratios,
            "peak_rss_mib": median(self.ours(|r| Some(r.peak_rss_mib))),
            "single_taint_inside_ms": median(self.ours(|r| r.inside_ms.map(|(mean, _)| mean))),
        })
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "Scale: {} pods, {} of them with a device of their own; client QPS {} / burst {}; median (min-max) \
             of {} rounds, contenders in random order (seed {}). Start-up: process start to the deletion of a \
             pod whose device was tainted before it started. Single taint: {TARGETS} devices tainted one at a \
             time, rule created to pod deletion seen by a watch.\n\n\
             | contender | start-up s | synced (log) s | start-up CPU s | single taint ms (median of {TARGETS}) | \
             RSS after start-up MiB | peak RSS MiB | inside: decision_seconds mean ms |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.pods,
            self.claimed,
            self.qps,
            self.qps * 2,
            self.rounds,
            self.seed
        );
        for contender in SCALE_CONTENDERS {
            let runs = self.of(contender);
            if runs.is_empty() {
                continue;
            }
            let spread = |f: &dyn Fn(&ScaleRun) -> f64, digits: usize| {
                Spread::of(runs.iter().map(|r| f(r)).collect()).map_or("-".into(), |s| s.text(digits))
            };
            let inside = Spread::of(
                runs.iter()
                    .filter_map(|r| r.inside_ms.map(|(mean, _)| mean))
                    .collect(),
            )
            .map_or("-".into(), |s| s.text(2));
            let _ = writeln!(
                md,
                "| {contender} | {} | {} | {} | {} | {} | {} | {inside} |",
                spread(&|r| r.startup, 2),
                spread(&|r| r.synced, 2),
                spread(&|r| r.startup_cpu, 2),
                spread(&|r| single_median(r) * 1000.0, 1),
                spread(&|r| r.ready_rss_mib, 1),
                spread(&|r| r.peak_rss_mib, 1),
            );
        }
        ratios_markdown(&mut md, "upstream", self.ratios());
        md
    }
}

impl Measured for ScaleRun {
    fn round(&self) -> usize {
        self.round
    }

    fn contender(&self) -> &str {
        self.contender
    }
}

/// The median of a run's single-taint times, seconds.
fn single_median(run: &ScaleRun) -> f64 {
    Spread::of(run.single.clone()).map_or(f64::NAN, |s| s.median)
}
