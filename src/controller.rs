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
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kube::{Api, Client, core::ApiResource};
use prometheus_client::registry::Registry;
use tokio::{sync::watch as channel, task::JoinSet, time::Instant};
use tracing::{debug, error, info, warn};

use crate::{
    actuator::{Actuator, Attempt, EvictionMode, Outcome, Refusal},
    admin::{self, AdminState, Liveness, Readiness},
    client::{self, ClientSettings},
    guard::{self, GuardConfig},
    index::{Change, Due, Finished, State},
    k8s::{self, DeviceTaintRule, ResourceClaim, ResourceSlice, Timestamp, WatchedPod},
    leader::{LeaderConfig, Leadership},
    metrics::{EvictionTotals, Metrics},
    queue::{Backoff, Completion, Rank, Ticket, WorkQueue, deadline_after},
    rule_status::{self, RuleStatusWork},
    throttle::TokenBucket,
    view::{PodRef, RuleRef, Time},
    watch::{self, Kind as _},
};

/// How the controller runs, as the command line chose it.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How to reach the API server.
    pub client: ClientSettings,
    /// Pods evicted concurrently (workers).
    pub workers: u32,
    /// How a pod is removed.
    pub eviction_mode: EvictionMode,
    /// Upper bound on evictions per second; 0 means unlimited.
    pub max_evictions_per_second: f64,
    /// Evictions allowed at once before the per-second pacing applies.
    pub max_evictions_burst: u32,
    /// Pods whose `spec.priority` is at or above this are not evicted automatically.
    pub protected_priority: Option<i32>,
    /// Decide, log, count and emit "would evict" Events, but never touch a pod.
    pub dry_run: bool,
    /// A watch that receives nothing, not even a bookmark, for this long is restarted.
    pub watch_idle_timeout: Duration,
    /// How each watch receives its initial state.
    pub initial_list: watch::InitialList,
    /// Address of the HTTP server for health and metrics.
    pub http_addr: SocketAddr,
    /// Serve metrics only here instead of on `http_addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// This replica's identity: the Lease holder and the Events' reporting instance.
    pub identity: String,
    /// The Lease to elect a leader through; `None` runs without leader election.
    pub lease: Option<LeaseSettings>,
    /// The blast-radius guard's limits and flag acceptances (SPEC D11).
    pub guard: GuardConfig,
}

/// Where the leader election Lease lives and how long it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Seconds a leader holds the Lease without renewing it.
    pub duration_secs: u64,
}

impl Config {
    /// The leader election settings, when leader election is on.
    #[must_use]
    pub fn leader_config(&self) -> Option<LeaderConfig> {
        self.lease.as_ref().map(|lease| LeaderConfig {
            namespace: lease.namespace.clone(),
            lease_name: lease.name.clone(),
            identity: self.identity.clone(),
            duration_secs: lease.duration_secs,
        })
    }
}

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
    /// A long-lived task (a watch, the workers) ended while the controller was running.
    #[error("the {0} task ended unexpectedly; stopping")]
    TaskEnded(String),
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
    leader: channel::Receiver<bool>,
    evictions: TokenBucket,
    workers: WorkerBeat,
}

/// What the watchdog sees of the workers.
#[derive(Debug)]
struct WorkerBeat {
    /// Whether workers run (this replica leads and every initial list is in); only then must
    /// due work be taken.
    running: AtomicBool,
    /// When a worker last took or finished a key.
    last: Mutex<Instant>,
}

impl WorkerBeat {
    fn new() -> Self {
        Self {
            running: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        }
    }

    fn beat(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long due work may wait while no worker takes or finishes anything before the workers
/// count as stuck, in multiples of `--api-timeout` (a key's work is a few calls, each bounded by it).
const WORK_STALL_TIMEOUTS: u32 = 10;

/// What is stuck, if anything, at `now`: a watch whose loop has not turned for twice the idle
/// timeout (it turns at least once per idle timeout), or due work that waited longer than
/// `work_bound` while running workers took or finished nothing and evictions were not held back
/// for a token (`--max-evictions-per-second`: waiting by design).
fn stuck(
    shared: &Shared,
    beats: &watch::Beats,
    idle_timeout: Duration,
    work_bound: Duration,
) -> Option<String> {
    let now = Instant::now();
    if let Some((kind, at)) = beats.stalest()
        && now.duration_since(at) > idle_timeout * 2
    {
        return Some(format!(
            "the {kind} watch has not made progress for {:?}",
            now.duration_since(at)
        ));
    }
    let workers = &shared.workers;
    if !workers.running.load(Ordering::SeqCst) || shared.queue.is_holding() {
        return None;
    }
    let overdue = shared
        .queue
        .next_deadline()
        .is_some_and(|due| now.duration_since(due) > work_bound);
    let idle = now.duration_since(workers.last()) > work_bound;
    (overdue && idle).then(|| format!("due work has not been taken by any worker for {work_bound:?}"))
}

/// Checks every `period` whether a watch or the workers are stuck ([`stuck`]); the first time
/// they are, fails `/healthz` with the reason (the kubelet then restarts the process) and
/// returns it.
async fn watchdog(
    shared: Arc<Shared>,
    beats: watch::Beats,
    idle_timeout: Duration,
    work_bound: Duration,
    liveness: Liveness,
) -> String {
    let period = (work_bound.min(idle_timeout) / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        if let Some(reason) = stuck(&shared, &beats, idle_timeout, work_bound) {
            error!(reason = %reason, "stuck; failing /healthz");
            liveness.set_failed(reason.clone());
            return reason;
        }
    }
}

/// The instant at which a wall-clock time arrives (now if it has passed), `now` being the
/// wall-clock time of the queue's `Instant::now()`.
fn instant_at(at: Time, now: Time) -> Instant {
    let wait = at.duration_since(now);
    if wait.is_negative() {
        Instant::now()
    } else {
        deadline_after(Instant::now(), wait.unsigned_abs())
    }
}

/// The work queue for an eviction pacer: paced pod keys are handed out one token decision at a
/// time when `evictions` limits the rate (SPEC D12), all at once when it does not.
fn work_queue(evictions: &TokenBucket) -> WorkQueue<Work> {
    let queue = WorkQueue::new(Backoff::default());
    if !evictions.is_unlimited() {
        queue.serialize_paced();
    }
    queue
}

/// Turns the index's changes into queue operations; returns the changes that ask for an Event.
///
/// Order-safe: batches from concurrent [`Shared::update`] calls may reach the queue in any order,
/// so the queue is only ever a superset of the pending evictions, each key due no later than its
/// eviction. A pod key is scheduled no later than asked and never removed on `Cancel`; the
/// worker re-checks the index when the key comes due ([`Due::Gone`] forgets it, [`Due::Later`]
/// re-queues it at the index's time). Removing it on `Cancel` would lose a newer `Schedule`
/// applied first, and moving it later would delay an earlier newer one. A pod key is ranked by
/// the pod's priority (immutable for a pod UID), so that when evictions wait, the lowest priority
/// goes first (SPEC D12); rule status keys are never paced and go before any pod.
pub(crate) fn enqueue(queue: &WorkQueue<Work>, changes: Vec<Change>, now: Time) -> Vec<Change> {
    let mut notices = Vec::new();
    for change in changes {
        match change {
            Change::Schedule { pod, at, priority } => {
                queue.schedule_no_later_ranked(Work::Pod(pod), instant_at(at, now), Rank::Paced(priority));
            }
            Change::RuleStatus { rule, after } => {
                queue.schedule_no_later(Work::Rule(rule), deadline_after(Instant::now(), after));
            }
            Change::Cancel { notify: false, .. } => {}
            notice @ (Change::Cancel { notify: true, .. }
            | Change::EmptySelector { .. }
            | Change::UnknownSelector { .. }) => {
                notices.push(notice);
            }
        }
    }
    notices
}

impl Shared {
    /// The state. A poisoned lock (a task panicked while it updated the state, which a release
    /// build turns into an abort) is fatal: the index may be half-updated, and acting on it could
    /// evict the wrong pod or miss one. The task that finds it panics, and supervision stops the
    /// process with a non-zero exit (`/healthz` fails first).
    fn lock(&self) -> MutexGuard<'_, State> {
        let Ok(state) = self.state.lock() else {
            error!("the index state is poisoned (a task panicked while updating it); stopping");
            panic!("index state poisoned");
        };
        state
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Runs `update` on the state and acts on the changes it made.
    fn update(&self, update: impl FnOnce(&mut State)) {
        let (changes, pending, guard) = {
            let mut state = self.lock();
            update(&mut state);
            let guard = if state.guard_announced() {
                state.guard_transitions(Timestamp::now())
            } else {
                None
            };
            (state.take_changes(), state.sizes().pending, guard)
        };
        if let Some(check) = &guard {
            self.announce(check);
        }
        for notice in enqueue(&self.queue, changes, Timestamp::now()) {
            if !self.is_leader() {
                continue;
            }
            match notice {
                Change::Cancel { pod, .. } => self.actuator.pod_eviction_cancelled(&pod),
                Change::EmptySelector { rule, devices } => {
                    self.actuator.rule_selects_everything(&rule, devices);
                }
                Change::UnknownSelector { rule, fields } => {
                    self.actuator.rule_selector_not_understood(&rule, &fields);
                }
                Change::Schedule { .. } | Change::RuleStatus { .. } => {}
            }
        }
        self.metrics
            .set_pending(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics
            .set_queue_depth(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
    }

    /// Processes one work item; returns how the queue should treat the key.
    async fn process(&self, work: &Work, ticket: Ticket) -> Completion {
        match work {
            Work::Pod(pod) => self.process_pod(pod, ticket).await,
            Work::Rule(rule) => self.process_rule(rule).await,
        }
    }

    /// What to do with a pod key now: the pending eviction if it is due, else the completion.
    /// A protected pod (`--protected-priority`) is told once and forgotten: it comes due again
    /// only when its eviction changes.
    fn due_now(&self, pod: &PodRef) -> Result<crate::eviction::Eviction, Completion> {
        let now = Timestamp::now();
        let due = self.lock().due(pod, now);
        match due {
            Due::Gone => Err(Completion::Forget),
            Due::Later(at) => Err(Completion::After(at.duration_since(now).unsigned_abs())),
            Due::Now(eviction) => Ok(eviction),
            Due::Protected {
                eviction,
                priority,
                threshold,
            } => {
                let mut first = false;
                self.update(|state| first = state.eviction_protected(pod));
                if first {
                    self.metrics.eviction_protected();
                    self.actuator
                        .pod_eviction_protected(pod, &eviction, priority, threshold);
                }
                Err(Completion::Forget)
            }
        }
    }

    /// Processes a due pod key. The queue hands out no other pod key until this one has said
    /// whether it got its token ([`WorkQueue::paced_decided`], or the key's `done`), so that with
    /// pacing the token goes to the lowest (priority, deadline) due pod, whichever worker took it.
    async fn process_pod(&self, pod: &PodRef, ticket: Ticket) -> Completion {
        if self.evictions.is_unlimited() {
            self.queue.paced_decided(ticket);
        }
        let eviction = match self.due_now(pod) {
            Ok(eviction) => eviction,
            Err(completion) => return completion,
        };
        if let Some(held) = self.guard_holds(pod, &eviction) {
            return held;
        }
        // No token yet: the pod goes back to its place and every pod waits until one is earned;
        // then the lowest (priority, deadline) due *then* goes (SPEC D12). A pod is thus never
        // held by a worker while it waits, and is re-checked right before its token is taken.
        if let Err(wait) = self.evictions.try_acquire() {
            self.metrics.eviction_rate_limited();
            debug!(pod = %pod, ?wait, "eviction paced by --max-evictions-per-second");
            self.queue
                .hold_paced_until(Some(deadline_after(Instant::now(), wait)));
            return Completion::PutBack;
        }
        self.queue.paced_decided(ticket);
        let attempt = Attempt {
            marked: self.lock().disruption_target(pod),
            due: ticket.due(),
        };
        match self.actuator.evict(pod, &eviction, attempt).await {
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

    /// Asks the blast-radius guard about a due eviction (SPEC D11): `Some` holds it (the pod stays
    /// pending with its deadline and is looked at again after [`guard::RECHECK_PERIOD`], or at
    /// once when an acceptance changes). Tells each trip and its end once: log, metric and, for a
    /// rule's own scope, a Warning Event on the rule.
    fn guard_holds(&self, pod: &PodRef, eviction: &crate::eviction::Eviction) -> Option<Completion> {
        let now = Timestamp::now();
        let mut check = None;
        self.update(|state| check = state.guard_check(eviction, now));
        let check = check?;
        self.announce(&check);
        let (scope, trip) = check.hold?;
        debug!(pod = %pod, scope = %scope, blast = trip.blast, "eviction held by the blast-radius guard");
        Some(Completion::After(guard::RECHECK_PERIOD))
    }

    /// Tells the trips and ends a guard check found: log, metric, Warning Events.
    fn announce(&self, check: &crate::index::GuardCheck) {
        for (scope, trip) in &check.tripped {
            warn!(scope = %scope, blast = trip.blast, reason = %trip, "blast-radius guard tripped: evictions paused until accepted");
            self.metrics.set_guard_tripped(&scope.to_string(), true);
        }
        for (rule, scope, trip, blast) in &check.rules_paused {
            let how = match scope {
                guard::Scope::Rule(_) => String::new(),
                guard::Scope::Pool(pool) => format!(", or accept the pool's: --guard-accept-pool {pool}=N"),
                guard::Scope::Cluster => ", or accept more cluster-wide: --guard-accept-cluster N".to_owned(),
            };
            self.actuator.rule_evictions_paused(
                rule,
                format!(
                    "Evictions paused by the blast-radius guard (scope {scope}): {trip}. To resume, accept \
                     this rule's {blast} evictions: device-taint-eviction resume --name {name} --accept \
                     {blast} (annotation {key}={blast}){how}.",
                    name = rule.name,
                    key = guard::ACCEPT_ANNOTATION,
                ),
            );
        }
        for scope in &check.cleared {
            info!(scope = %scope, "blast-radius guard no longer holds this scope's evictions");
            self.metrics.set_guard_tripped(&scope.to_string(), false);
        }
        self.metrics.set_guard_held(check.held);
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
        warn!(error = %error, source = %error.explain(), cause, ?retry_after, "{message}");
        retry(retry_after)
    }

    async fn process_rule(&self, rule: &RuleRef) -> Completion {
        let now = Timestamp::now();
        let work = rule_status::rule_status(&self.lock(), rule, now);
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
                            rule_status::status_written(&mut self.lock(), rule, generation, &condition, now);
                        }
                        Completion::Forget
                    }
                    Err(error) => self.failed(&error, "rule status update failed, will retry"),
                }
            }
        }
    }
}

/// Runs a start-up step that needs the API server until it succeeds, retrying errors that
/// `retryable` accepts with a doubling delay (200 ms up to 30 s): an API server that is slow,
/// briefly unreachable or not yet granting a permission must not make the process exit. Other
/// errors (a bad configuration) end start-up.
async fn until_ok<T, E, F, Fut>(what: &str, mut attempt: F, retryable: impl Fn(&E) -> bool) -> Result<T, E>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if retryable(&error) => {
                let mut cause = error.to_string();
                let mut source = error.source();
                while let Some(e) = source {
                    cause = format!("{cause}: {e}");
                    source = e.source();
                }
                warn!(error = %cause, retry_in = ?delay, "failed to {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Err(error),
        }
    }
}

/// A retry with backoff, no sooner than the server's `Retry-After` if it sent one.
fn retry(retry_after: Option<Duration>) -> Completion {
    retry_after.map_or(Completion::Retry, Completion::RetryAfter)
}

impl watch::Sink for Shared {
    fn update(&self, update: impl FnOnce(&mut State)) {
        Shared::update(self, update);
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Runs a watch; returns what to call it when it ends (it should not).
async fn named_watch<K: watch::Kind>(
    shared: Arc<Shared>,
    readiness: Readiness,
    api: Api<watch::Decoded<K>>,
    idle: watch::Idle,
    initial: watch::InitialList,
) -> String {
    watch::watch(shared, readiness, api, idle, initial).await;
    format!("{} watch", K::PLURAL)
}

/// Starts one watch per kind; without a served DeviceTaintRule API, rules count as listed.
fn spawn_watches(
    tasks: &mut JoinSet<String>,
    client: &Client,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    rule_resource: Option<&ApiResource>,
    idle: &watch::Idle,
    initial: watch::InitialList,
) {
    tasks.spawn(named_watch(
        shared.clone(),
        readiness.clone(),
        Api::<watch::Decoded<WatchedPod>>::all(client.clone()),
        idle.clone(),
        initial,
    ));
    tasks.spawn(named_watch(
        shared.clone(),
        readiness.clone(),
        Api::<watch::Decoded<ResourceClaim>>::all(client.clone()),
        idle.clone(),
        initial,
    ));
    tasks.spawn(named_watch(
        shared.clone(),
        readiness.clone(),
        Api::<watch::Decoded<ResourceSlice>>::all(client.clone()),
        idle.clone(),
        initial,
    ));
    match rule_resource {
        Some(ar) => {
            tasks.spawn(named_watch(
                shared.clone(),
                readiness.clone(),
                Api::<watch::Decoded<DeviceTaintRule>>::all_with(client.clone(), ar),
                idle.clone(),
                initial,
            ));
        }
        None => readiness.mark_synced(DeviceTaintRule::PLURAL),
    }
}

/// Waits until every initial list is in and this replica leads. Returns false if leadership
/// was never obtained before the channel closed.
async fn wait_until_active(readiness: &Readiness, leader: &mut channel::Receiver<bool>) -> bool {
    let mut synced = readiness.subscribe();
    if synced.wait_for(|ready| *ready).await.is_err() {
        return false;
    }
    leader.wait_for(|leading| *leading).await.is_ok()
}

/// A worker: takes due keys and processes them, until the queue shuts down.
async fn worker(shared: Arc<Shared>) {
    while let Some((work, ticket)) = shared.queue.next().await {
        shared.workers.beat();
        let completion = shared.process(&work, ticket).await;
        shared.queue.done(&work, ticket, completion);
        shared.workers.beat();
        shared
            .metrics
            .set_queue_depth(i64::try_from(shared.queue.len()).unwrap_or(i64::MAX));
    }
}

/// Runs the controller until SIGTERM/SIGINT (Ok) or until leadership is lost (Err).
///
/// # Errors
/// Start-up failures (client, discovery, leader election, admin server) and loss of leadership.
pub async fn run(config: Config) -> Result<(), Error> {
    run_until(config, shutdown_signal()).await
}

/// Like [`run`], stopping when `shutdown` completes.
///
/// # Errors
/// See [`run`].
#[allow(clippy::too_many_lines)] // start-up reads best as one sequence
pub async fn run_until(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let kube_config = client::load_config(&config.client).await?;
    // Reads and writes share one --kube-api-qps bucket; the Lease has a client of its own.
    let bucket = TokenBucket::new(config.client.qps, config.client.burst);
    let progress = client::WatchProgress::default();
    let client = client::client_from_config(
        kube_config.clone(),
        bucket.clone(),
        config.client.timeout,
        &progress,
    )?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new(&watch::KINDS);
    let liveness = Liveness::new();
    let admin_state = AdminState {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
        liveness: liveness.clone(),
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match config.metrics_addr {
        None => tokio::spawn(admin::serve(config.http_addr, admin_state, async {
            let _ = admin_stopped.await;
        })),
        Some(metrics_addr) => {
            let metrics_server =
                admin::serve_router(metrics_addr, admin::metrics_router(admin_state.clone()), async {
                    let _ = metrics_stopped.await;
                });
            let health_server =
                admin::serve_router(config.http_addr, admin::health_router(admin_state), async {
                    let _ = admin_stopped.await;
                });
            tokio::spawn(async move { tokio::try_join!(health_server, metrics_server).map(|_| ()) })
        }
    };

    let rule_resource = until_ok(
        "discover the DeviceTaintRule API",
        || k8s::discover_device_taint_rule(&client),
        |_| true,
    )
    .await
    .map_err(Error::Discovery)?;
    if let Some(ar) = &rule_resource {
        info!(version = %ar.api_version, "watching DeviceTaintRules");
    } else {
        let message = "DeviceTaintRule API not served: running with ResourceSlice taints only";
        warn!("{message}");
        readiness.set_detail(DeviceTaintRule::PLURAL, message);
    }

    let identity = &config.identity;
    let (leadership, leader) = match config.leader_config() {
        // Renewals must never wait behind evictions for a token: the Lease client is unthrottled.
        Some(leader_config) => {
            let lease_client = client::client_from_config(
                kube_config.clone(),
                TokenBucket::unlimited(),
                config.client.timeout,
                &client::WatchProgress::default(),
            )?;
            until_ok(
                "start leader election",
                || Leadership::start(lease_client.clone(), leader_config.clone()),
                |e| matches!(e, crate::leader::Error::PrepareLease { .. }),
            )
            .await
            .map_err(Error::StartLeaderElection)?
        }
        None => Leadership::disabled(),
    };

    // Every write goes through the leadership fence, checked right before it is sent.
    let writer = client::writer_from_config(kube_config, bucket, config.client.timeout, leader.clone())?;
    let actuator = Actuator::new(
        writer,
        identity,
        config.eviction_mode,
        config.dry_run,
        rule_resource.clone(),
        metrics.clone(),
    );
    let mut state = State::with_protected_priority(config.protected_priority);
    state.set_guard(config.guard.clone());
    let evictions = if config.max_evictions_per_second > 0.0 {
        TokenBucket::new(config.max_evictions_per_second, config.max_evictions_burst)
    } else {
        TokenBucket::unlimited()
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        queue: work_queue(&evictions),
        actuator,
        metrics: metrics.clone(),
        leader: leader.clone(),
        evictions,
        workers: WorkerBeat::new(),
    });
    info!(
        identity = %identity,
        workers = config.workers,
        mode = ?config.eviction_mode,
        dry_run = config.dry_run,
        protected_priority = ?config.protected_priority,
        leader_election = config.lease.is_some(),
        "starting device-taint-eviction-controller"
    );

    let mut watches = JoinSet::new();
    let idle = watch::Idle {
        timeout: config.watch_idle_timeout,
        progress,
        beats: watch::Beats::default(),
    };
    spawn_watches(
        &mut watches,
        &client,
        &shared,
        &readiness,
        rule_resource.as_ref(),
        &idle,
        config.initial_list,
    );
    let watchdog = tokio::spawn(watchdog(
        shared.clone(),
        idle.beats.clone(),
        idle.timeout,
        config.client.timeout * WORK_STALL_TIMEOUTS,
        liveness.clone(),
    ));

    // Workers start once every initial list is in (nothing is deleted before) and this replica leads.
    let mut workers = JoinSet::new();
    {
        let shared = shared.clone();
        let readiness = readiness.clone();
        let mut leader = leader.clone();
        let count = config.workers;
        workers.spawn(async move {
            if !wait_until_active(&readiness, &mut leader).await {
                return "worker start (leadership channel closed)".to_owned();
            }
            info!("caches synced and leading: starting workers");
            shared.metrics.set_leader(true);
            shared.workers.beat();
            shared.workers.running.store(true, Ordering::SeqCst);
            let mut set = JoinSet::new();
            for _ in 0..count {
                set.spawn(worker(shared.clone()));
            }
            tokio::spawn(summarize_evictions(shared.clone()));
            // Workers only stop once the queue is shut down; one that ends before (a panic in a
            // test build; release builds abort) ends the whole controller.
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(()) if shared.queue.is_shut_down() => {}
                    Ok(()) => return "worker".to_owned(),
                    Err(error) => return format!("worker ({error})"),
                }
            }
            "worker".to_owned()
        });
    }

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
        error = supervise(&mut watches, &mut workers, &liveness) => Err(error),
    };
    stop_workers(
        &shared,
        &mut workers,
        matches!(result, Err(Error::LostLeadership)),
    )
    .await;
    watches.abort_all();
    watchdog.abort();
    if result.is_ok() {
        match tokio::time::timeout(LEASE_RELEASE, leadership.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "failed to release the leader lease"),
            Err(_) => warn!(
                seconds = LEASE_RELEASE.as_secs(),
                "releasing the leader lease timed out; a successor takes over when it expires"
            ),
        }
    }
    shared.metrics.set_leader(false);
    let _ = stop_admin.send(());
    let _ = stop_metrics.send(());
    result
}

/// How long in-flight calls may finish after SIGTERM. With [`EVENT_FLUSH`] and [`LEASE_RELEASE`]
/// the whole stop stays well inside the chart's 30 s termination grace period, whatever
/// `--api-timeout` is: a call still hanging then is abandoned (the pod stays pending on the API
/// server's side, and the next leader evicts it at its deadline, once: writes carry the pod's UID).
/// How often the evictions of the last period are summed up in one info line (per-pod lines are
/// at debug level: a bulk eviction of thousands of pods must not log thousands of lines).
const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// Logs, every [`SUMMARY_PERIOD`] in which pods were evicted (or would have been, in dry run),
/// how many, the totals and what is still pending; silent otherwise. Ends with the queue.
async fn summarize_evictions(shared: Arc<Shared>) {
    let mut last = shared.metrics.eviction_totals();
    let mut tick = tokio::time::interval_at(Instant::now() + SUMMARY_PERIOD, SUMMARY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.queue.is_shut_down() {
        tick.tick().await;
        let now = shared.metrics.eviction_totals();
        if let Some(line) = eviction_summary(last, now) {
            info!(
                evicted = now.evicted - last.evicted,
                dry_run = now.dry_run - last.dry_run,
                evicted_total = now.evicted,
                pending = now.pending,
                "{line}"
            );
        }
        last = now;
    }
}

/// The summary line for the change from `before` to `now`, if anything was evicted.
fn eviction_summary(before: EvictionTotals, now: EvictionTotals) -> Option<String> {
    let evicted = now.evicted.saturating_sub(before.evicted);
    let dry_run = now.dry_run.saturating_sub(before.dry_run);
    let pending = now.pending;
    match (evicted, dry_run) {
        (0, 0) => None,
        (n, 0) => Some(format!(
            "evicted {n} pods in the last {}s ({} since start, {pending} pending)",
            SUMMARY_PERIOD.as_secs(),
            now.evicted
        )),
        (_, n) => Some(format!(
            "dry run: would have evicted {n} pods in the last {}s ({} since start, {pending} pending)",
            SUMMARY_PERIOD.as_secs(),
            now.dry_run
        )),
    }
}

const DRAIN: Duration = Duration::from_secs(15);
/// How long queued Events may be published after the drain.
const EVENT_FLUSH: Duration = Duration::from_secs(3);
/// How long the Lease release may take on a clean stop.
const LEASE_RELEASE: Duration = Duration::from_secs(5);

/// Stops the workers once the controller stops. After a lost Lease (`lost`) a successor may
/// already act: waiting work (paced, or not yet due) and in-flight work are aborted at once, with
/// no further request (the fence refuses any write still on its way). Otherwise workers stop
/// taking work and in-flight calls finish for at most [`DRAIN`] (then they are aborted), then
/// queued Events for [`EVENT_FLUSH`].
async fn stop_workers(shared: &Shared, workers: &mut JoinSet<String>, lost: bool) {
    shared.queue.shutdown();
    if lost {
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        return;
    }
    let drain = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drain).await.is_err() {
        warn!(
            seconds = DRAIN.as_secs(),
            "in-flight work did not finish in time; abandoning it to the next leader"
        );
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    if !shared.actuator.flush_events(EVENT_FLUSH).await {
        warn!(
            seconds = EVENT_FLUSH.as_secs(),
            "some Events were not published in time"
        );
    }
}

/// Completes when any watch or the worker group ends (they should run until shutdown), with the
/// error to stop on; `/healthz` fails from then on.
async fn supervise(
    watches: &mut JoinSet<String>,
    workers: &mut JoinSet<String>,
    liveness: &Liveness,
) -> Error {
    let (ended, group) = tokio::select! {
        Some(ended) = watches.join_next() => (ended, "watch"),
        Some(ended) = workers.join_next() => (ended, "worker"),
        else => return std::future::pending().await,
    };
    task_ended(liveness, ended, group)
}

/// A supervised task ended before shutdown: logs which one and how, and fails liveness.
fn task_ended(liveness: &Liveness, ended: Result<String, tokio::task::JoinError>, group: &str) -> Error {
    let task = match ended {
        Ok(task) => {
            error!(task = %task, "long-lived task ended unexpectedly; stopping");
            task
        }
        Err(join) => {
            error!(group, error = %join, "long-lived task failed (panicked or cancelled); stopping");
            format!("{group} ({join})")
        }
    };
    liveness.set_failed("a long-lived task ended");
    Error::TaskEnded(task)
}

/// Completes when a replica that was leading stops leading.
async fn lost_leadership(leader: &mut channel::Receiver<bool>) {
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

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, convert::Infallible};

    use super::*;

    /// One info line per period with evictions, none for a quiet one; dry run says so.
    #[test]
    fn eviction_summary_counts_the_period() {
        let at = |evicted, dry_run, pending| EvictionTotals {
            evicted,
            dry_run,
            pending,
        };
        assert_eq!(eviction_summary(at(5, 0, 3), at(5, 0, 3)), None);
        assert_eq!(
            eviction_summary(at(5, 0, 300), at(105, 0, 200)).as_deref(),
            Some("evicted 100 pods in the last 10s (105 since start, 200 pending)")
        );
        assert_eq!(
            eviction_summary(at(0, 2, 9), at(0, 9, 2)).as_deref(),
            Some("dry run: would have evicted 7 pods in the last 10s (9 since start, 2 pending)")
        );
    }
    use crate::fixtures::{claim, pod, rule, slice, t, taint};

    /// A client whose API server records each request and answers `500`.
    fn recording_client(sent: &Arc<Mutex<Vec<String>>>) -> Client {
        let sent = sent.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let sent = sent.clone();
            async move {
                sent.lock()
                    .expect("sent")
                    .push(format!("{} {}", request.method(), request.uri()));
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(500)
                        .body(kube::client::Body::from(b"{}".to_vec()))
                        .expect("response"),
                )
            }
        });
        Client::new(service, "default")
    }

    fn shared(client: Client, evictions: TokenBucket) -> Arc<Shared> {
        let metrics = Metrics::register(&mut Registry::default());
        let (_, leader) = channel::channel(true);
        Arc::new(Shared {
            state: Mutex::new(State::new()),
            queue: work_queue(&evictions),
            actuator: Actuator::new(client, "test", EvictionMode::Delete, false, None, metrics.clone()),
            metrics,
            leader,
            evictions,
            workers: WorkerBeat::new(),
        })
    }

    /// A pod whose claim's device is tainted `NoExecute` (due now), or not.
    fn set_taint(shared: &Shared, tainted: bool) {
        let the_pod = pod("ns", "p").with_claim("c");
        let the_claim = claim("ns", "c")
            .with_device("d", "pool", "dev")
            .reserved_for(&the_pod);
        let mut the_slice = slice("s", "d", "pool").with_device("dev");
        if tainted {
            the_slice = the_slice.with_taint(taint("k", "v", "NoExecute", Some(t(0))));
        }
        shared.update(|state| {
            state.apply_pod(&the_pod.object_name(), Some(the_pod.clone()));
            state.apply_claim(the_claim);
            state.apply_slice(the_slice, Timestamp::now());
        });
    }

    /// A taint removed while the pod waits for `--max-evictions-per-second` stops the eviction:
    /// the pod goes back to the queue (no worker holds it), and is re-checked when a token is
    /// there.
    #[tokio::test(start_paused = true)]
    async fn paced_eviction_is_rechecked_after_the_wait() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let shared = shared(recording_client(&sent), TokenBucket::new(1.0, 1));
        set_taint(&shared, true);
        assert_eq!(
            shared.evictions.reserve(),
            Duration::ZERO,
            "the burst is spent elsewhere"
        );
        let (work, ticket) = shared.queue.try_next().expect("the pod is due");
        let Work::Pod(pod) = &work else {
            panic!("expected a pod key, got {work:?}");
        };
        assert_eq!(shared.process_pod(pod, ticket).await, Completion::PutBack);
        shared.queue.done(&work, ticket, Completion::PutBack);
        assert!(shared.queue.is_holding(), "every pod waits for the token");
        assert!(shared.queue.try_next().is_none());
        set_taint(&shared, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (work, ticket) = shared.queue.try_next().expect("due with the token");
        let Work::Pod(pod) = &work else {
            panic!("expected a pod key, got {work:?}");
        };
        assert_eq!(shared.process_pod(pod, ticket).await, Completion::Forget);
        let sent = sent.lock().expect("sent").clone();
        assert!(
            !sent.iter().any(|r| r.contains("/pods/")),
            "no request for the pod: {sent:?}"
        );
    }

    /// A watch that ends, or a worker group whose worker panicked, stops the controller by name.
    #[tokio::test(start_paused = true)]
    async fn supervision_stops_on_an_ended_task() {
        let liveness = Liveness::new();
        let mut watches = JoinSet::new();
        let mut workers = JoinSet::new();
        watches.spawn(std::future::pending::<String>());
        workers.spawn(std::future::pending::<String>());
        let quiet = tokio::time::timeout(
            Duration::from_secs(3600),
            supervise(&mut watches, &mut workers, &liveness),
        );
        assert!(quiet.await.is_err(), "nothing ended: supervision waits");
        watches.spawn(async { "pods watch".to_owned() });
        let error = tokio::time::timeout(
            Duration::from_secs(1),
            supervise(&mut watches, &mut workers, &liveness),
        )
        .await
        .expect("an ended watch is noticed");
        assert!(
            matches!(&error, Error::TaskEnded(task) if task == "pods watch"),
            "{error:?}"
        );
        assert!(!liveness.is_alive());

        let liveness = Liveness::new();
        let mut watches = JoinSet::new();
        watches.spawn(std::future::pending::<String>());
        let mut workers = JoinSet::new();
        workers.spawn(async { panic!("worker bug") });
        let error = tokio::time::timeout(
            Duration::from_secs(1),
            supervise(&mut watches, &mut workers, &liveness),
        )
        .await
        .expect("a panicked worker group is noticed");
        assert!(
            matches!(&error, Error::TaskEnded(task) if task.starts_with("worker (") && task.contains("panicked")),
            "{error:?}"
        );
        assert!(!liveness.is_alive());
    }

    /// Due work that no running worker takes within the bound fails `/healthz`; on a standby
    /// (workers not running) or with a worker taking the work, health stays green.
    #[tokio::test(start_paused = true)]
    async fn watchdog_fails_health_when_due_work_is_not_taken() {
        let bound = Duration::from_secs(300);
        let idle = Duration::from_secs(330);
        let run = |running: bool, take: bool| async move {
            let sent = Arc::new(Mutex::new(Vec::new()));
            let shared = shared(recording_client(&sent), TokenBucket::unlimited());
            shared.workers.running.store(running, Ordering::SeqCst);
            set_taint(&shared, true);
            assert!(shared.queue.next_deadline().is_some(), "a pod is due");
            let liveness = Liveness::new();
            let beats = watch::Beats::default();
            let dog = tokio::spawn(watchdog(shared.clone(), beats, idle, bound, liveness.clone()));
            tokio::time::sleep(Duration::from_secs(290)).await;
            assert!(liveness.is_alive(), "not stuck before the bound");
            if take {
                let (work, ticket) = shared.queue.try_next().expect("due");
                shared.workers.beat();
                shared.queue.done(&work, ticket, Completion::Forget);
                shared.workers.beat();
            }
            tokio::time::sleep(Duration::from_secs(100)).await;
            dog.abort();
            liveness.is_alive()
        };
        assert!(
            !run(true, false).await,
            "due work not taken for 300 s fails /healthz"
        );
        assert!(run(false, false).await, "a standby runs no workers: not stuck");
        assert!(run(true, true).await, "a worker took the work: not stuck");
    }

    /// A watch whose loop stops turning for twice the idle timeout fails `/healthz`; one that
    /// turns (here once per idle timeout, as an idle watch does) does not.
    #[tokio::test(start_paused = true)]
    async fn watchdog_fails_health_when_a_watch_is_stuck() {
        let idle = Duration::from_secs(10);
        let bound = Duration::from_secs(300);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let shared = shared(recording_client(&sent), TokenBucket::unlimited());
        let beats = watch::Beats::default();
        let liveness = Liveness::new();
        let turning = tokio::spawn({
            let beats = beats.clone();
            async move {
                loop {
                    beats.beat("pods");
                    tokio::time::sleep(idle).await;
                }
            }
        });
        beats.beat("resourceslices");
        let dog = tokio::spawn(watchdog(
            shared.clone(),
            beats.clone(),
            idle,
            bound,
            liveness.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(19)).await;
        assert!(liveness.is_alive());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!liveness.is_alive(), "the slices watch stopped turning 24 s ago");
        let reason = dog.await.expect("watchdog");
        assert!(reason.contains("resourceslices watch"), "{reason}");
        turning.abort();
    }

    /// Work waiting when the Lease is lost (a worker paced by --max-evictions-per-second, a pod
    /// not yet due) is aborted at once: not one request leaves after the loss.
    #[tokio::test(start_paused = true)]
    async fn waiting_work_is_aborted_when_leadership_is_lost() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (leading, leader) = channel::channel(true);
        let metrics = Metrics::register(&mut Registry::default());
        let client = recording_client(&sent);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            queue: work_queue(&TokenBucket::new(1.0, 1)),
            actuator: Actuator::new(client, "test", EvictionMode::Delete, false, None, metrics.clone()),
            metrics,
            leader,
            evictions: TokenBucket::new(1.0, 1),
            workers: WorkerBeat::new(),
        });
        assert_eq!(shared.evictions.reserve(), Duration::ZERO, "the burst is spent");
        set_taint(&shared, true);
        shared.queue.schedule(
            Work::Rule(RuleRef::new("later", "uid-later")),
            Instant::now() + Duration::from_secs(10),
        );
        let mut workers = JoinSet::new();
        for _ in 0..2 {
            let shared = shared.clone();
            workers.spawn(async move {
                worker(shared).await;
                "worker".to_owned()
            });
        }
        while !shared.queue.is_holding() {
            tokio::task::yield_now().await;
        }
        leading.send_replace(false);
        let start = Instant::now();
        stop_workers(&shared, &mut workers, true).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "stopped at once");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let sent = sent.lock().expect("sent").clone();
        assert_eq!(sent, Vec::<String>::new(), "no request after the loss");
    }

    /// On SIGTERM a call that hangs (here: every request never answers) holds the stop for at
    /// most the drain bound, whatever `--api-timeout` is, so the process exits inside the chart's
    /// termination grace period.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_does_not_hold_the_stop_beyond_the_drain_bound() {
        let client = Client::new(
            tower::service_fn(|_: http::Request<kube::client::Body>| {
                std::future::pending::<Result<http::Response<kube::client::Body>, Infallible>>()
            }),
            "default",
        );
        let shared = shared(client, TokenBucket::unlimited());
        set_taint(&shared, true);
        let mut workers = JoinSet::new();
        let busy = shared.clone();
        workers.spawn(async move {
            worker(busy).await;
            "worker".to_owned()
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while shared.queue.in_flight() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the worker took the eviction");
        let start = Instant::now();
        stop_workers(&shared, &mut workers, false).await;
        let took = start.elapsed();
        assert!(took <= DRAIN + EVENT_FLUSH, "stop took {took:?}");
        assert!(took >= DRAIN, "the in-flight call had its chance: {took:?}");
        assert!(DRAIN + EVENT_FLUSH + LEASE_RELEASE < Duration::from_secs(30));
    }

    /// A poisoned state is never used again: the task that finds it stops, and supervision stops
    /// the controller on it.
    #[tokio::test]
    async fn a_poisoned_state_stops_the_controller() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let shared = shared(recording_client(&sent), TokenBucket::unlimited());
        let holder = shared.clone();
        let _ = std::thread::spawn(move || {
            let _state = holder.state.lock();
            panic!("a bug while the state is held");
        })
        .join();
        assert!(shared.state.is_poisoned());
        let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut watches = JoinSet::new();
        watches.spawn({
            let shared = shared.clone();
            let used = used.clone();
            async move {
                shared.update(|_| used.store(true, std::sync::atomic::Ordering::SeqCst));
                std::future::pending::<String>().await
            }
        });
        let mut workers = JoinSet::new();
        workers.spawn(std::future::pending::<String>());
        let liveness = Liveness::new();
        let error = tokio::time::timeout(
            Duration::from_secs(10),
            supervise(&mut watches, &mut workers, &liveness),
        )
        .await
        .expect("the task that met the poisoned state ended");
        assert!(
            matches!(&error, Error::TaskEnded(task) if task.contains("panicked")),
            "{error:?}"
        );
        assert!(
            !used.load(std::sync::atomic::Ordering::SeqCst),
            "the state was not used"
        );
        assert!(!liveness.is_alive());
    }

    /// Without the removal the same wait ends in an eviction attempt (the check above is real).
    #[tokio::test(start_paused = true)]
    async fn paced_eviction_proceeds_after_the_wait() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = shared_with(
            fake_api(&received, |_| None),
            TokenBucket::new(1.0, 1),
            EvictionMode::Delete,
            false,
            None,
        );
        add_tainted_pod(&shared, "p", 0);
        assert_eq!(shared.evictions.reserve(), Duration::ZERO);
        let start = Instant::now();
        let workers = spawn_workers(&shared, 2);
        let patches = until_requests(&received, start, "PATCH", "/p/status", 1).await;
        let at = received.lock().expect("received")[0].0;
        assert_eq!(named(&patches), [("p", 1)]);
        assert_eq!(at - start, Duration::from_secs(1), "paced by one token at 1/s");
        drop(workers);
    }

    /// Runs `count` workers on the queue.
    fn spawn_workers(shared: &Arc<Shared>, count: usize) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for _ in 0..count {
            set.spawn(worker(shared.clone()));
        }
        set
    }

    /// A request the fake API server received: when, method, path, body.
    type Received = (Instant, String, String, String);

    /// An API server that records every request with its (paused) time and answers: a pod with
    /// the UID `uid-NAME` for GET and PATCH of `pods/NAME`, success for DELETE, `refuse(name)`
    /// (a PodDisruptionBudget refusal, when `Some`) or success for an eviction, `{}` otherwise.
    fn fake_api(
        received: &Arc<Mutex<Vec<Received>>>,
        refuse: impl Fn(&str) -> Option<u32> + Clone + Send + Sync + 'static,
    ) -> Client {
        use http_body_util::BodyExt as _;
        let received = received.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let received = received.clone();
            let refuse = refuse.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect().await.expect("body").to_bytes();
                received.lock().expect("received").push((
                    Instant::now(),
                    method.clone(),
                    path.clone(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
                let name = path
                    .strip_prefix("/api/v1/namespaces/ns/pods/")
                    .map(|rest| rest.split('/').next().unwrap_or_default().to_owned());
                let (status, body) = match (method.as_str(), name) {
                    ("POST", Some(name)) if path.ends_with("/eviction") => match refuse(&name) {
                        Some(retry_after) => (
                            429,
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "code": 429, "reason": "TooManyRequests",
                                "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                                "details": {"retryAfterSeconds": retry_after, "causes": [
                                    {"reason": "DisruptionBudget", "message": "needs 1 healthy pod"}]}}),
                        ),
                        None => (
                            201,
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                        ),
                    },
                    (_, Some(name)) => (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}}),
                    ),
                    _ => (200, serde_json::json!({})),
                };
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body.to_string().into_bytes()))
                        .expect("response"),
                )
            }
        });
        Client::new(service, "default")
    }

    /// A controller state for these tests, evicting as `mode`, `dry_run` and `protected` say.
    fn shared_with(
        client: Client,
        evictions: TokenBucket,
        mode: EvictionMode,
        dry_run: bool,
        protected: Option<i32>,
    ) -> Arc<Shared> {
        let metrics = Metrics::register(&mut Registry::default());
        let (_, leader) = channel::channel(true);
        Arc::new(Shared {
            state: Mutex::new(State::with_protected_priority(protected)),
            queue: work_queue(&evictions),
            actuator: Actuator::new(client, "test", mode, dry_run, None, metrics.clone()),
            metrics,
            leader,
            evictions,
            workers: WorkerBeat::new(),
        })
    }

    /// Pod `name` of this priority on its own device `pool-NAME/dev`, which the rule `bad`
    /// (selecting every pool of driver `d`) taints `NoExecute` since 1970: due at once.
    fn add_tainted_pod(shared: &Shared, name: &str, priority: i32) {
        let the_pod = pod("ns", name)
            .with_claim(&format!("c-{name}"))
            .with_priority(priority);
        let the_claim = claim("ns", &format!("c-{name}"))
            .with_device("d", &format!("pool-{name}"), "dev")
            .reserved_for(&the_pod);
        let the_slice = slice(&format!("s-{name}"), "d", &format!("pool-{name}")).with_device("dev");
        shared.update(|state| {
            if state.rule("bad").is_none() {
                state.apply_rule(
                    rule("bad").selecting(Some("d"), None, None).with_taint(taint(
                        "k",
                        "v",
                        "NoExecute",
                        Some(t(0)),
                    )),
                    Timestamp::now(),
                );
            }
            state.apply_slice(the_slice, Timestamp::now());
            state.apply_claim(the_claim);
            state.apply_pod(&the_pod.object_name(), Some(the_pod.clone()));
        });
    }

    /// Names of the pods to which a request `method` ending in `suffix` went, with the seconds
    /// (since `start`) at which it went, in order.
    fn pod_requests(
        received: &Mutex<Vec<Received>>,
        start: Instant,
        method: &str,
        suffix: &str,
    ) -> Vec<(String, u64)> {
        received
            .lock()
            .expect("received")
            .iter()
            .filter(|(_, m, path, _)| m == method && path.ends_with(suffix))
            .filter_map(|(at, _, path, _)| {
                let rest = path.strip_prefix("/api/v1/namespaces/ns/pods/")?;
                let name = rest.split('/').next()?.to_owned();
                Some((name, at.duration_since(start).as_secs()))
            })
            .collect()
    }

    /// Waits (paused time) until `count` requests match, at most an hour.
    async fn until_requests(
        received: &Mutex<Vec<Received>>,
        start: Instant,
        method: &str,
        suffix: &str,
        count: usize,
    ) -> Vec<(String, u64)> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let got = pod_requests(received, start, method, suffix);
            if got.len() >= count {
                return got;
            }
            assert!(Instant::now() < deadline, "only {got:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn named(list: &[(String, u64)]) -> Vec<(&str, u64)> {
        list.iter().map(|(n, s)| (n.as_str(), *s)).collect()
    }

    /// With pacing (1/s, burst 1) and ten workers, three pods due at once go lowest priority
    /// first, one a second; a pod of lower priority that becomes due while the others wait for a
    /// token gets the next token.
    #[tokio::test(start_paused = true)]
    async fn paced_evictions_go_lowest_priority_first() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = shared_with(
            fake_api(&received, |_| None),
            TokenBucket::new(1.0, 1),
            EvictionMode::Delete,
            false,
            None,
        );
        for (name, priority) in [("p100", 100), ("p0", 0), ("p50", 50)] {
            add_tainted_pod(&shared, name, priority);
        }
        let start = Instant::now();
        let workers = spawn_workers(&shared, 10);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            named(&pod_requests(&received, start, "DELETE", "")),
            [("p0", 0)],
            "one token at first"
        );
        add_tainted_pod(&shared, "p10", 10);
        let deletes = until_requests(&received, start, "DELETE", "", 4).await;
        assert_eq!(
            named(&deletes),
            [("p0", 0), ("p10", 1), ("p50", 2), ("p100", 3)],
            "by priority, each when a token is earned"
        );
        drop(workers);
    }

    /// Without pacing nothing waits: pods due at once are all evicted at once, whatever their
    /// priority.
    #[tokio::test(start_paused = true)]
    async fn unpaced_evictions_all_go_at_once() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = shared_with(
            fake_api(&received, |_| None),
            TokenBucket::unlimited(),
            EvictionMode::Delete,
            false,
            None,
        );
        for (name, priority) in [("p100", 100), ("p0", 0), ("p50", 50)] {
            add_tainted_pod(&shared, name, priority);
        }
        let start = Instant::now();
        let workers = spawn_workers(&shared, 10);
        let mut deletes = until_requests(&received, start, "DELETE", "", 3).await;
        deletes.sort();
        assert_eq!(named(&deletes), [("p0", 0), ("p100", 0), ("p50", 0)]);
        assert!(!shared.queue.is_holding());
        drop(workers);
    }

    /// Pods a PodDisruptionBudget refused are retried lowest priority first once a token is
    /// there, even when a higher-priority pod's retry was due earlier.
    #[tokio::test(start_paused = true)]
    async fn refused_evictions_are_retried_lowest_priority_first() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(HashSet::new()));
        let refuse = {
            let refused = refused.clone();
            // The first attempt of each pod is refused; the highest priority is told to come
            // back soonest.
            move |name: &str| {
                refused
                    .lock()
                    .expect("refused")
                    .insert(name.to_owned())
                    .then_some(match name {
                        "p100" => 1,
                        "p50" => 2,
                        _ => 3,
                    })
            }
        };
        let shared = shared_with(
            fake_api(&received, refuse),
            TokenBucket::new(0.1, 3),
            EvictionMode::Evict,
            false,
            None,
        );
        for (name, priority) in [("p100", 100), ("p0", 0), ("p50", 50)] {
            add_tainted_pod(&shared, name, priority);
        }
        let start = Instant::now();
        let workers = spawn_workers(&shared, 1);
        let evictions = until_requests(&received, start, "POST", "/eviction", 6).await;
        assert_eq!(
            named(&evictions),
            [
                ("p0", 0),
                ("p50", 0),
                ("p100", 0),
                ("p0", 10),
                ("p50", 20),
                ("p100", 30)
            ],
            "the burst of 3, all refused; then one token every 10 s, by priority"
        );
        drop(workers);
    }

    /// A pod at or above `--protected-priority` is not touched (dry run or not): it gets one
    /// Warning Event, the rule status counts it, and it does not come back in a loop; a pod
    /// below is evicted.
    #[tokio::test(start_paused = true)]
    async fn protected_pods_are_told_once_and_left_alone() {
        for dry_run in [false, true] {
            let received = Arc::new(Mutex::new(Vec::new()));
            let shared = shared_with(
                fake_api(&received, |_| None),
                TokenBucket::unlimited(),
                EvictionMode::Evict,
                dry_run,
                Some(1000),
            );
            add_tainted_pod(&shared, "low", 999);
            add_tainted_pod(&shared, "high", 1000);
            let start = Instant::now();
            let workers = spawn_workers(&shared, 10);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert!(shared.actuator.flush_events(Duration::from_secs(5)).await);
            let evictions = pod_requests(&received, start, "POST", "/eviction");
            let patches = pod_requests(&received, start, "PATCH", "/status");
            let expected = if dry_run { vec![] } else { vec![("low", 0)] };
            assert_eq!(named(&evictions), expected, "dry run {dry_run}");
            assert_eq!(named(&patches), expected, "no request for the protected pod");
            let events: Vec<String> = received
                .lock()
                .expect("received")
                .iter()
                .filter(|(_, m, path, _)| m == "POST" && path.ends_with("/events"))
                .map(|(_, _, _, body)| body.clone())
                .collect();
            let protected: Vec<&String> = events
                .iter()
                .filter(|b| b.contains(crate::actuator::PROTECTED_REASON))
                .collect();
            assert_eq!(protected.len(), 1, "one Event: {events:?}");
            let event_writes = received
                .lock()
                .expect("received")
                .iter()
                .filter(|(_, _, path, _)| path.contains("/events"))
                .count();
            assert_eq!(
                event_writes, 2,
                "one Event for each pod, never repeated (a repeat would PATCH the series): {events:?}"
            );
            assert!(
                protected[0].contains("\"name\":\"high\"")
                    && protected[0].contains("DeviceTaintRule bad")
                    && protected[0].contains("priority 1000 is at or above --protected-priority=1000"),
                "{}",
                protected[0]
            );
            let high = PodRef::new("ns", "high", "uid-high");
            let state = shared.lock();
            assert!(state.is_protected(&high));
            assert_eq!(state.pending(&high).map(|e| e.at), Some(t(0)), "still pending");
            let rule = state.rule("bad").expect("rule");
            let condition = rule_status::current_condition(&state, rule, Timestamp::now());
            assert!(
                condition.message.contains(
                    "1 pod is not evicted because its priority is protected (--protected-priority)."
                ),
                "{condition:?}"
            );
            drop(state);
            assert!(shared.queue.is_empty(), "nothing comes back: no loop");
            drop(workers);
        }
    }

    /// The blast-radius guard holds a due pod of a tripped rule (no request for it, looked at
    /// again after the recheck period, still pending with its deadline) until the rule's
    /// evictions are accepted; then the same key evicts at once. The same in every mode: delete,
    /// evict (Eviction API) and dry run.
    #[tokio::test(start_paused = true)]
    async fn a_tripped_guard_holds_the_pod_until_accepted() {
        for (mode, dry_run) in [
            (EvictionMode::Delete, false),
            (EvictionMode::Evict, false),
            (EvictionMode::Delete, true),
        ] {
            held_until_accepted(mode, dry_run).await;
        }
    }

    async fn held_until_accepted(mode: EvictionMode, dry_run: bool) {
        let case = format!("{mode:?}, dry run {dry_run}");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let metrics = Metrics::register(&mut Registry::default());
        let (_, leader) = channel::channel(true);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            queue: work_queue(&TokenBucket::unlimited()),
            actuator: Actuator::new(
                recording_client(&sent),
                "test",
                mode,
                dry_run,
                None,
                metrics.clone(),
            ),
            metrics,
            leader,
            evictions: TokenBucket::unlimited(),
            workers: WorkerBeat::new(),
        });
        let everything = crate::fixtures::rule("all").selecting(None, None, None);
        shared.update(|state| {
            for i in 0..30 {
                let p = pod("ns", &format!("p-{i}")).with_claim(&format!("c-{i}"));
                let c = claim("ns", &format!("c-{i}"))
                    .with_device("d", &format!("node-{}", i / 8), &format!("dev-{i}"))
                    .reserved_for(&p);
                state.apply_pod(&p.object_name(), Some(p.clone()));
                state.apply_claim(c);
            }
            state.apply_rule(everything.clone(), Timestamp::now());
        });
        // Every due key is held; none is left due.
        let mut held = 0;
        while let Some((work, ticket)) = shared.queue.try_next() {
            let Work::Pod(pod) = &work else {
                shared.queue.done(&work, ticket, Completion::Forget);
                continue;
            };
            let before = shared.lock().pending(pod).cloned().expect("pending");
            let completion = shared.process_pod(pod, ticket).await;
            assert_eq!(completion, Completion::After(guard::RECHECK_PERIOD), "{case}");
            assert_eq!(
                shared.lock().pending(pod),
                Some(&before),
                "{case}: still pending, same deadline"
            );
            shared.queue.done(&work, ticket, completion);
            held += 1;
        }
        assert_eq!(held, 30, "{case}");
        assert!(
            !sent.lock().expect("sent").iter().any(|r| r.contains("/pods/")),
            "{case}: no request for a held pod"
        );
        shared.update(|state| state.apply_rule(everything.accepting(Some(30)), Timestamp::now()));
        // Rule status work goes first (it never waits behind pods); then a held pod is due.
        let (again, ticket) = loop {
            let (work, ticket) = shared
                .queue
                .try_next()
                .expect("accepting makes the held pods due at once");
            match work {
                Work::Pod(pod) => break (pod, ticket),
                rule @ Work::Rule(_) => {
                    shared.queue.done(&rule, ticket, Completion::Forget);
                }
            }
        };
        let again = &again;
        // The accepted pod is worked on: in dry run it is done (an Event says what would
        // happen); otherwise the scripted API server answers its status PATCH with 500: retried.
        let worked = shared.process_pod(again, ticket).await;
        if dry_run {
            assert_eq!(worked, Completion::Forget, "{case}");
            assert!(shared.lock().pending(again).is_none(), "{case}: dry run is done");
            return;
        }
        assert_eq!(worked, Completion::Retry, "{case}");
        let path = format!("/namespaces/ns/pods/{}/status", again.name);
        let requests: Vec<String> = sent
            .lock()
            .expect("sent")
            .iter()
            .filter(|r| r.contains(&path))
            .cloned()
            .collect();
        assert!(!requests.is_empty(), "{case}: the accepted pod is worked on");
    }
}
