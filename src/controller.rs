//! The running controller: watches feed the index, changes become queue entries, workers
//! evict at the deadlines, and only the leader writes.
//!
//! ```text
//! watch tasks ──apply/delete/reset──▶ State (Mutex, no I/O) ──Change──▶ WorkQueue (keys, deadlines)
//!                                                                          │
//!                               workers (leader only, after every initial list) ◀──┘
//!                                   │ due()? ──▶ Actuator (GET, Event, PATCH, DELETE / status apply)
//!                                   └── finish() ──▶ State
//! ```

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    core::ApiResource,
    runtime::{WatchStreamExt as _, watcher},
};
use prometheus_client::registry::Registry;
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tracing::{debug, error, info, warn};

use crate::{
    actuator::{Actuator, Outcome, Refusal},
    admin::{self, AdminState, Liveness, Readiness},
    cli::ControllerArgs,
    client,
    index::{Change, Due, Finished, RuleStatusWork, State},
    k8s::{self, DeviceTaintRule, ResourceClaim, ResourceSlice, Timestamp, WatchedPod},
    leader::{LeaderConfig, Leadership},
    metrics::Metrics,
    queue::{Backoff, Completion, WorkQueue, deadline_after},
    throttle::TokenBucket,
    view::{ClaimView, Invalid, ObjectName, PodRef, PodView, RuleRef, RuleView, SliceView, Time},
};

/// Kinds whose initial lists must all arrive before anything is deleted.
pub const KINDS: [&str; 4] = ["pods", "resourceclaims", "resourceslices", "devicetaintrules"];

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built.
    #[error("failed to create the Kubernetes client")]
    Client(#[from] client::Error),
    /// Discovery of the DeviceTaintRule API failed.
    #[error("failed to discover the DeviceTaintRule API")]
    Discovery(#[source] kube::Error),
    /// Leader election could not start.
    #[error("failed to start leader election")]
    StartLeaderElection(#[source] crate::leader::Error),
    /// The admin HTTP server failed.
    #[error("admin server failed")]
    Admin(#[from] admin::Error),
    /// This replica lost the lease: it stops so that it can never evict next to a new leader.
    #[error("lost the leader lease; stopping")]
    LostLeadership,
}

/// A unit of work in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Evict a pod when due.
    Pod(PodRef),
    /// Refresh a rule's status.
    Rule(RuleRef),
}

/// State shared by watches and workers.
struct Shared {
    state: Mutex<State>,
    queue: WorkQueue<Work>,
    actuator: Actuator,
    metrics: Metrics,
    leader: watch::Receiver<bool>,
    evictions: TokenBucket,
}

/// The instant at which a wall-clock time arrives (now if it has passed).
fn instant_at(at: Time) -> Instant {
    let wait = at.duration_since(Timestamp::now());
    if wait.is_negative() {
        Instant::now()
    } else {
        deadline_after(Instant::now(), wait.unsigned_abs())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Runs `update` on the state and acts on the changes it made.
    fn update(&self, update: impl FnOnce(&mut State)) {
        let (changes, pending) = {
            let mut state = self.lock();
            update(&mut state);
            (state.take_changes(), state.sizes().pending)
        };
        for change in changes {
            match change {
                Change::Schedule { pod, at } => {
                    self.queue.schedule(Work::Pod(pod), instant_at(at));
                }
                Change::Cancel { pod, notify } => {
                    self.queue.cancel(&Work::Pod(pod.clone()));
                    if notify && self.is_leader() {
                        self.actuator.pod_eviction_cancelled(&pod);
                    }
                }
                Change::RuleStatus { rule, after } => {
                    self.queue
                        .schedule_no_later(Work::Rule(rule), deadline_after(Instant::now(), after));
                }
                Change::EmptySelector { rule, devices } => {
                    if self.is_leader() {
                        self.actuator.rule_selects_everything(&rule, devices);
                    }
                }
            }
        }
        self.metrics
            .set_pending(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics
            .set_queue_depth(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
    }

    /// Processes one work item; returns how the queue should treat the key.
    async fn process(&self, work: &Work) -> Completion {
        match work {
            Work::Pod(pod) => self.process_pod(pod).await,
            Work::Rule(rule) => self.process_rule(rule).await,
        }
    }

    async fn process_pod(&self, pod: &PodRef) -> Completion {
        let now = Timestamp::now();
        let eviction = match self.lock().due(pod, now) {
            Due::Gone => return Completion::Forget,
            Due::Later(at) => return Completion::After(at.duration_since(now).unsigned_abs()),
            Due::Now(eviction) => eviction,
        };
        let wait = self.evictions.reserve();
        if !wait.is_zero() {
            self.metrics.eviction_rate_limited();
            debug!(pod = %pod, ?wait, "eviction paced by --max-evictions-per-second");
            tokio::time::sleep(wait).await;
        }
        match self.actuator.evict(pod, &eviction).await {
            Ok(Outcome::Blocked { retry_after }) => {
                self.metrics.eviction_blocked();
                self.update(|state| state.eviction_blocked(pod));
                retry(retry_after)
            }
            Ok(outcome) => {
                let finished = match outcome {
                    Outcome::Evicted => {
                        let latency = Timestamp::now().duration_since(eviction.at);
                        self.metrics.pod_deleted(if latency.is_negative() {
                            Duration::ZERO
                        } else {
                            latency.unsigned_abs()
                        });
                        Finished::Evicted
                    }
                    Outcome::DryRun => {
                        self.metrics.dry_run_eviction();
                        Finished::DryRun
                    }
                    Outcome::NotNeeded | Outcome::Blocked { .. } => Finished::NotNeeded,
                };
                self.update(|state| state.finish(pod, &eviction, finished));
                Completion::Forget
            }
            Err(error) => self.failed(&error, "processing work item failed, will retry"),
        }
    }

    /// Counts, logs and schedules the retry of a failed call, naming its real cause.
    fn failed(&self, error: &crate::actuator::Error, message: &str) -> Completion {
        let verb = error.verb();
        if error.refusal() == Refusal::NotLeader {
            debug!(error = %error, "write not sent: not the leader");
            return Completion::Retry;
        }
        self.metrics.api_error(verb);
        let cause = match error.refusal() {
            Refusal::Throttled => {
                self.metrics.api_throttled(verb);
                "throttled by the API server"
            }
            Refusal::Conflict => {
                self.metrics.api_conflict(verb);
                "conflict"
            }
            Refusal::Other | Refusal::NotLeader => "error",
        };
        let retry_after = error.retry_after();
        warn!(error = %error, source = %error_source(error), cause, ?retry_after, "{message}");
        retry(retry_after)
    }

    async fn process_rule(&self, rule: &RuleRef) -> Completion {
        let now = Timestamp::now();
        let work = self.lock().rule_status(rule, now);
        match work {
            RuleStatusWork::Gone | RuleStatusWork::UpToDate => Completion::Forget,
            RuleStatusWork::Later(after) => Completion::After(after),
            RuleStatusWork::Apply {
                generation,
                condition,
            } => {
                match self
                    .actuator
                    .apply_rule_status(rule, generation, &condition, now)
                    .await
                {
                    Ok(applied) => {
                        if applied {
                            self.lock().rule_status_written(rule, generation, &condition, now);
                        }
                        Completion::Forget
                    }
                    Err(error) => self.failed(&error, "rule status update failed, will retry"),
                }
            }
        }
    }
}

/// A retry with backoff, no sooner than the server's `Retry-After` if it sent one.
fn retry(retry_after: Option<Duration>) -> Completion {
    retry_after.map_or(Completion::Retry, Completion::RetryAfter)
}

/// The cause of an actuator error in one line: the server's message with code and reason (no
/// debug dump), and for a 403 which permission is missing.
fn error_source(error: &dyn std::error::Error) -> String {
    match error.source().and_then(|s| s.downcast_ref::<kube::Error>()) {
        Some(kube::Error::Api(status)) if status.code == 403 => format!(
            "permission denied ({} {}): {}; grant the controller's ServiceAccount this permission \
             (see charts/device-taint-eviction)",
            status.code, status.reason, status.message
        ),
        Some(kube::Error::Api(status)) => format!("{} {}: {}", status.code, status.reason, status.message),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Skips an object that cannot be projected: logged and counted, never fatal.
fn skip(metrics: &Metrics, kind: &str, invalid: &Invalid) {
    metrics.skipped(kind, invalid.reason());
    warn!(kind, object = %invalid.object, field = invalid.field, "skipping malformed object");
}

/// One watch, applying events to the state. Runs until the stream ends (never, normally).
async fn watch_kind<K, V>(
    (shared, readiness, kind): (Arc<Shared>, Readiness, &'static str),
    api: Api<K>,
    project: impl Fn(&K) -> Result<V, Invalid> + Send + 'static,
    apply: impl Fn(&mut State, V, Time) + Send + 'static,
    delete: impl Fn(&mut State, &K) + Send + 'static,
    reset: impl Fn(&mut State, Vec<V>, Time) + Send + 'static,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    V: Send,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<Vec<V>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                shared.metrics.watch_restart(kind);
                warn!(kind, %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        let now = Timestamp::now();
        match event {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(obj) => match project(&obj) {
                Ok(view) => listing.get_or_insert_with(Vec::new).push(view),
                Err(invalid) => skip(&shared.metrics, kind, &invalid),
            },
            watcher::Event::InitDone => {
                let views = listing.take().unwrap_or_default();
                info!(kind, objects = views.len(), "initial list received");
                shared.update(|state| reset(state, views, now));
                readiness.mark_synced(kind);
            }
            watcher::Event::Apply(obj) => match project(&obj) {
                Ok(view) => shared.update(|state| apply(state, view, now)),
                Err(invalid) => skip(&shared.metrics, kind, &invalid),
            },
            watcher::Event::Delete(obj) => shared.update(|state| delete(state, &obj)),
        }
    }
}

fn object_name(meta: &k8s::ObjectMeta) -> ObjectName {
    ObjectName::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A pod projected for the index: its name, UID and view (`None` when it uses no claim).
type PodEntry = (ObjectName, String, Option<PodView>);

fn project_pod(pod: &WatchedPod) -> Result<PodEntry, Invalid> {
    let view = PodView::from_api(pod)?;
    Ok((
        object_name(&pod.metadata),
        pod.metadata.uid.clone().unwrap_or_default(),
        view,
    ))
}

fn spawn_watches(
    tasks: &mut JoinSet<()>,
    client: &Client,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    rule_resource: Option<&ApiResource>,
) {
    tasks.spawn(watch_kind(
        (shared.clone(), readiness.clone(), "pods"),
        Api::<WatchedPod>::all(client.clone()),
        project_pod,
        |state, (name, _, view), _| state.apply_pod(&name, view),
        |state, pod| {
            state.delete_pod(
                &object_name(&pod.metadata),
                pod.metadata.uid.as_deref().unwrap_or_default(),
            );
        },
        // Pods without claims are not stored, so a re-list only needs the ones with claims.
        |state, pods, _| state.reset_pods(pods.into_iter().filter(|(_, _, v)| v.is_some()).collect()),
    ));
    tasks.spawn(watch_kind(
        (shared.clone(), readiness.clone(), "resourceclaims"),
        Api::<ResourceClaim>::all(client.clone()),
        ClaimView::from_api,
        |state, view, _| state.apply_claim(view),
        |state, claim| {
            state.delete_claim(
                &object_name(&claim.metadata),
                claim.metadata.uid.as_deref().unwrap_or_default(),
            );
        },
        |state, views, _| state.reset_claims(views),
    ));
    tasks.spawn(watch_kind(
        (shared.clone(), readiness.clone(), "resourceslices"),
        Api::<ResourceSlice>::all(client.clone()),
        SliceView::from_api,
        State::apply_slice,
        |state, slice| state.delete_slice(slice.metadata.name.as_deref().unwrap_or_default()),
        State::reset_slices,
    ));
    match rule_resource {
        Some(ar) => {
            tasks.spawn(watch_kind(
                (shared.clone(), readiness.clone(), "devicetaintrules"),
                Api::<DeviceTaintRule>::all_with(client.clone(), ar),
                RuleView::from_api,
                State::apply_rule,
                |state, rule| {
                    state.delete_rule(
                        rule.metadata.name.as_deref().unwrap_or_default(),
                        rule.metadata.uid.as_deref().unwrap_or_default(),
                    );
                },
                State::reset_rules,
            ));
        }
        None => readiness.mark_synced("devicetaintrules"),
    }
}

/// Waits until every initial list is in and this replica leads. Returns false if leadership
/// was never obtained before the channel closed.
async fn wait_until_active(readiness: &Readiness, leader: &mut watch::Receiver<bool>) -> bool {
    let mut synced = readiness.subscribe();
    if synced.wait_for(|ready| *ready).await.is_err() {
        return false;
    }
    leader.wait_for(|leading| *leading).await.is_ok()
}

/// A worker: takes due keys and processes them, until the queue shuts down.
async fn worker(shared: Arc<Shared>) {
    while let Some((work, ticket)) = shared.queue.next().await {
        let completion = shared.process(&work).await;
        shared.queue.done(&work, ticket, completion);
        shared
            .metrics
            .set_queue_depth(i64::try_from(shared.queue.len()).unwrap_or(i64::MAX));
    }
}

/// Runs the controller until SIGTERM/SIGINT (Ok) or until leadership is lost (Err).
///
/// # Errors
/// Start-up failures (client, discovery, leader election, admin server) and loss of leadership.
pub async fn run(args: ControllerArgs) -> Result<(), Error> {
    run_until(args, shutdown_signal()).await
}

/// Like [`run`], stopping when `shutdown` completes.
///
/// # Errors
/// See [`run`].
#[allow(clippy::too_many_lines)] // start-up reads best as one sequence
pub async fn run_until(args: ControllerArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let config = client::load_config(&args.kube).await?;
    // Reads and writes share one --kube-api-qps bucket; the Lease has a client of its own.
    let bucket = TokenBucket::new(args.kube.kube_api_qps, args.kube.kube_api_burst);
    let client = client::client_from_config(config.clone(), bucket.clone())?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new(&KINDS);
    let liveness = Liveness::new();
    let admin_state = AdminState {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
        liveness: liveness.clone(),
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(args.http_addr, admin_state, async {
        let _ = admin_stopped.await;
    }));

    let rule_resource = k8s::discover_device_taint_rule(&client)
        .await
        .map_err(Error::Discovery)?;
    if let Some(ar) = &rule_resource {
        info!(version = %ar.api_version, "watching DeviceTaintRules");
    } else {
        let message = "DeviceTaintRule API not served: running with ResourceSlice taints only";
        warn!("{message}");
        readiness.set_detail("devicetaintrules", message);
    }

    let identity = args.leader_elect_identity();
    let (leadership, leader) = if args.leader_elect {
        // Renewals must never wait behind evictions for a token: the Lease client is unthrottled.
        let lease_client = client::client_from_config(config.clone(), TokenBucket::unlimited())?;
        Leadership::start(lease_client, LeaderConfig::from_args(&args))
            .await
            .map_err(Error::StartLeaderElection)?
    } else {
        Leadership::disabled()
    };

    // Every write goes through the leadership fence, checked right before it is sent.
    let writer = client::writer_from_config(config, bucket, leader.clone())?;
    let actuator = Actuator::new(
        writer,
        &identity,
        args.eviction_mode,
        args.dry_run,
        rule_resource.clone(),
        metrics.clone(),
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new()),
        queue: WorkQueue::new(Backoff::default()),
        actuator,
        metrics: metrics.clone(),
        leader: leader.clone(),
        evictions: if args.max_evictions_per_second > 0.0 {
            TokenBucket::new(args.max_evictions_per_second, args.max_evictions_burst)
        } else {
            TokenBucket::unlimited()
        },
    });
    info!(
        identity = %identity,
        workers = args.concurrent_device_taint_eviction_syncs,
        mode = ?args.eviction_mode,
        dry_run = args.dry_run,
        leader_election = args.leader_elect,
        "starting device-taint-eviction-controller"
    );

    let mut watches = JoinSet::new();
    spawn_watches(&mut watches, &client, &shared, &readiness, rule_resource.as_ref());

    // Workers start once every initial list is in (nothing is deleted before) and this replica leads.
    let mut workers = JoinSet::new();
    let starter = {
        let shared = shared.clone();
        let readiness = readiness.clone();
        let mut leader = leader.clone();
        let count = args.concurrent_device_taint_eviction_syncs;
        tokio::spawn(async move {
            if wait_until_active(&readiness, &mut leader).await {
                info!("caches synced and leading: starting workers");
                shared.metrics.set_leader(true);
                let mut set = JoinSet::new();
                for _ in 0..count {
                    set.spawn(worker(shared.clone()));
                }
                while set.join_next().await.is_some() {}
            }
        })
    };
    workers.spawn(async move {
        let _ = starter.await;
    });

    let mut lost = leader.clone();
    let result = tokio::select! {
        () = shutdown => {
            info!("shutting down: finishing in-flight work");
            Ok(())
        }
        () = lost_leadership(&mut lost) => {
            error!("lost the leader lease; stopping at once");
            Err(Error::LostLeadership)
        }
        Some(Ok(Err(e))) = async { Some(admin.await) } => {
            liveness.set_failed("admin server stopped");
            Err(Error::Admin(e))
        }
    };
    shared.queue.shutdown();
    if matches!(result, Err(Error::LostLeadership)) {
        // A successor may already act: abort waiting and in-flight work at once (the fence
        // refuses any write still on its way) instead of draining it.
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    } else {
        // Stop taking work; in-flight calls finish (workers exit when next() returns None).
        let drain = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            warn!("in-flight work did not finish within 30s");
        }
        if !shared.actuator.flush_events(Duration::from_secs(5)).await {
            warn!("some Events were not published within 5s");
        }
    }
    watches.abort_all();
    if result.is_ok()
        && let Err(error) = leadership.release().await
    {
        warn!(%error, "failed to release the leader lease");
    }
    shared.metrics.set_leader(false);
    let _ = stop_admin.send(());
    result
}

/// Completes when a replica that was leading stops leading.
async fn lost_leadership(leader: &mut watch::Receiver<bool>) {
    if leader.wait_for(|leading| *leading).await.is_err() {
        return std::future::pending().await;
    }
    let _ = leader.wait_for(|leading| !*leading).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
