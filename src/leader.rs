//! Leader election over a `coordination.k8s.io/v1` Lease, built on kube-lease-manager.
//!
//! Every replica runs the watches and keeps its caches warm; only the replica whose receiver reads
//! `true` may write to the API. [`Leadership::start`] returns that receiver:
//! - `false -> true`: this replica acquired the Lease.
//! - `true -> false`: leadership is lost (another holder, a failed renewal that could not be
//!   confirmed in time, a deleted Lease) or [`Leadership::release`] was called. The controller
//!   is expected to fail-stop on this edge (stop its writers and exit), as kube-controller-manager
//!   does, because work in flight may already race a successor. The value may later return to
//!   `true` if the Lease is re-acquired, which matters only to a caller that does not fail-stop.
//! - A closed channel (`changed()` returns an error) means the election task has ended; treat it
//!   as lost leadership.
//!
//! Why a wrapper and not kube-lease-manager's own `watch()`: the crate reports a change only when
//! it observes one. If renewals fail or hang (API server unreachable, a dead connection without a
//! read timeout), its state stays "leader" while the Lease runs out and a standby may take over.
//! Here every Lease the API server returns is inspected, and leadership counts only while the
//! server has confirmed our holder identity with a `renewTime` (written by our own clock) plus the
//! lease duration minus a safety margin that is still in the future. Each Lease request is also
//! bounded by a timeout so that a dead connection cannot stall a standby forever.
//!
//! Timing for a lease duration `D` seconds: the holder renews `grace = clamp(2D/5, 1, D-1)` seconds
//! before expiry (every 9 s for the default 15 s), and steps down `grace / 2` seconds before expiry
//! (3 s) if no renewal was confirmed. Both are measured against the holder's own `renewTime`,
//! written by its own clock.
//!
//! Takeover never compares another node's clock with ours: a Lease held by someone else is handed
//! to kube-lease-manager with its `renewTime` replaced by the local time at which this process
//! first saw that renewal (a standby reads the Lease every 2 s), so it counts as expired only
//! after a full lease duration without a renewal *as observed here*, as client-go decides it.
//!
//! The controller gives the Lease a client of its own, outside the `--kube-api-qps` bucket, so
//! that renewals never wait behind evictions; and its writes go through a fence
//! ([`crate::client::FenceLayer`]) that stops them the moment the receiver reads `false`.
//!
//! RBAC (the verbs the crate uses, read in its source): `coordination.k8s.io` `leases`: `get`,
//! `create` (only when the Lease does not exist yet) and `patch` (server-side apply to acquire,
//! strategic merge to renew, count transitions and release). It never uses `update`, `list`,
//! `watch` or `delete`. The namespaced Role can be narrowed with `resourceNames` for `get` and
//! `patch`; `create` cannot be restricted by name.

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{
    FutureExt as _,
    future::{Fuse, FusedFuture as _},
};
use http::{Request, Response};
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{Client, client::Body};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::{bytes::Bytes, sync::CancellationToken};

use crate::CONTROLLER_NAME;

/// Longest field manager name the API server accepts.
const MAX_FIELD_MANAGER_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease duration must be between 2 and {max} seconds, got {0}", max = i32::MAX)]
    InvalidDuration(u64),

    #[error("lease holder identity must not be empty")]
    EmptyIdentity,

    #[error("failed to prepare lease {namespace}/{name}")]
    PrepareLease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },

    #[error("failed to release lease {namespace}/{name}")]
    ReleaseLease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },

    #[error("lease request timed out after {0:?}")]
    LeaseRequest(Duration),

    #[error("leader election task failed")]
    JoinTask(#[source] tokio::task::JoinError),
}

/// Where the Lease lives and who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Holder identity, unique per replica (usually the pod name).
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing it (at least 2).
    pub duration_secs: u64,
}

/// Renewal and safety timings derived from the lease duration (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    duration_secs: u64,
    /// Seconds before expiry at which the holder renews (kube-lease-manager's `grace`).
    grace_secs: u64,
    /// Leadership ends this long before the confirmed expiry.
    margin: Duration,
    /// Upper bound on one Lease request, response body included.
    request_timeout: Duration,
    /// Longest wait between retries after a failed Lease request.
    max_backoff: Duration,
}

impl Timing {
    fn new(duration_secs: u64) -> Self {
        let grace_secs = (duration_secs * 2 / 5).clamp(1, duration_secs.saturating_sub(1).max(1));
        let margin = Duration::from_secs(grace_secs) / 2;
        Self {
            duration_secs,
            grace_secs,
            margin,
            request_timeout: margin.max(Duration::from_secs(1)),
            max_backoff: margin.max(Duration::from_millis(500)),
        }
    }
}

/// The field manager of our Lease writes. It must differ between replicas: server-side apply
/// conflicts between managers are what stop two replicas from acquiring the Lease at once.
fn field_manager(identity: &str) -> String {
    let name = format!("{CONTROLLER_NAME}-{identity}");
    if name.len() <= MAX_FIELD_MANAGER_LEN {
        return name;
    }
    let hash = crate::fnv1a(identity.as_bytes());
    let suffix = format!("-{hash:016x}");
    let mut end = MAX_FIELD_MANAGER_LEN - suffix.len();
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &name[..end])
}

/// Until when `lease` lets `identity` act as leader: its `renewTime` plus duration minus `margin`,
/// or `None` when someone else (or nobody) holds it.
fn valid_until(lease: &Lease, identity: &str, margin: Duration) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    renewed.checked_add(duration)?.checked_sub(margin)
}

/// Sees every Lease the API server returns and publishes how long our leadership is confirmed.
#[derive(Clone)]
struct Observer {
    lease_name: Arc<str>,
    identity: Arc<str>,
    margin: Duration,
    confirmed: Arc<watch::Sender<Option<SystemTime>>>,
    /// Another holder's record (identity, `renewTime` as written) and when this process first
    /// saw it, by its own clock.
    seen: Arc<std::sync::Mutex<Option<(HolderRecord, SystemTime)>>>,
}

/// A holder identity and the `renewTime` it wrote.
type HolderRecord = (String, Option<MicroTime>);

impl Observer {
    /// Publishes our confirmed leadership and returns the body to hand on. A Lease held by
    /// another replica is handed on with `renewTime` replaced by the local time at which this
    /// process first saw that renewal: takeover then happens a lease duration after the holder
    /// was last seen renewing, by our clock (as client-go decides it), so clock skew between
    /// nodes cannot make two replicas lead at once.
    fn observe(&self, body: Bytes) -> Bytes {
        // k8s-openapi checks apiVersion and kind, so a Status or any other object does not parse.
        let Ok(mut lease) = serde_json::from_slice::<Lease>(&body) else {
            return body;
        };
        if lease.metadata.name.as_deref() != Some(&*self.lease_name) {
            return body;
        }
        self.confirmed
            .send_replace(valid_until(&lease, &self.identity, self.margin));
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(spec) = lease.spec.as_mut() else {
            *seen = None;
            return body;
        };
        let other = spec
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty() && *h != &*self.identity);
        let Some(holder) = other else {
            *seen = None;
            return body;
        };
        let record = (holder.to_owned(), spec.renew_time.clone());
        let at = match &*seen {
            Some((known, at)) if *known == record => *at,
            _ => {
                let now = SystemTime::now();
                *seen = Some((record, now));
                now
            }
        };
        let Ok(at) = Timestamp::try_from(at) else {
            return body;
        };
        spec.renew_time = Some(MicroTime(at));
        serde_json::to_vec(&lease).map_or(body, Bytes::from)
    }
}

/// A client for Lease requests only: each request (body included) is bounded by `timeout`, and
/// every successful response is shown to `observer`.
fn lease_client(client: Client, observer: Observer, timeout: Duration) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |request: Request<Body>| {
        let client = client.clone();
        let observer = observer.clone();
        async move {
            let exchange = async {
                let response = client.send(request).await?;
                let (parts, body) = response.into_parts();
                let mut bytes = body.collect_bytes().await?;
                if parts.status.is_success() {
                    bytes = observer.observe(bytes);
                }
                Ok::<_, kube::Error>(Response::from_parts(parts, Body::from(bytes)))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result.map_err(tower::BoxError::from),
                Err(_) => Err(tower::BoxError::from(Error::LeaseRequest(timeout))),
            }
        }
    });
    Client::new(service, namespace)
}

/// Everything needed to (re)build the lease manager.
struct Setup {
    client: Client,
    config: LeaderConfig,
    timing: Timing,
}

impl Setup {
    /// Builds a manager; this reads the Lease and creates it when missing.
    fn build(&self) -> impl Future<Output = Result<LeaseManager, LeaseManagerError>> + Send + 'static {
        LeaseManagerBuilder::new(self.client.clone(), self.config.lease_name.clone())
            .with_namespace(self.config.namespace.clone())
            .with_identity(self.config.identity.clone())
            .with_duration(self.timing.duration_secs)
            .with_grace(self.timing.grace_secs)
            .with_field_manager(field_manager(&self.config.identity))
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
    }
}

/// Doubling delay between failed Lease requests.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);

    fn new(max: Duration) -> Self {
        Self { next: Self::MIN, max }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Handle on the running election; call [`Leadership::release`] on shutdown.
#[derive(Debug)]
pub struct Leadership {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Leader election is off: the receiver always reads `true`. The sender is kept so that the
    /// receiver's `changed()` stays pending instead of reporting a closed channel.
    Disabled {
        _sender: watch::Sender<bool>,
    },
    Running {
        stop: CancellationToken,
        task: JoinHandle<Result<(), Error>>,
    },
    Released,
}

impl Leadership {
    /// Read (or create) the Lease and start competing for it in a background task.
    ///
    /// Errors here are the ones worth failing start-up for (a missing RBAC permission, an
    /// unreachable API server, a bad configuration); later API errors are logged and retried.
    ///
    /// # Errors
    /// When the configuration is invalid or the Lease can neither be read nor created.
    pub async fn start(client: Client, config: LeaderConfig) -> Result<(Self, watch::Receiver<bool>), Error> {
        if config.duration_secs < 2 || config.duration_secs > u64::from(i32::MAX.unsigned_abs()) {
            return Err(Error::InvalidDuration(config.duration_secs));
        }
        if config.identity.trim().is_empty() {
            return Err(Error::EmptyIdentity);
        }
        let timing = Timing::new(config.duration_secs);
        let (confirmed_tx, confirmed_rx) = watch::channel(None);
        let observer = Observer {
            lease_name: config.lease_name.as_str().into(),
            identity: config.identity.as_str().into(),
            margin: timing.margin,
            confirmed: Arc::new(confirmed_tx),
            seen: Arc::default(),
        };
        let setup = Setup {
            client: lease_client(client, observer, timing.request_timeout),
            config,
            timing,
        };
        let manager = setup.build().await.map_err(|source| Error::PrepareLease {
            namespace: setup.config.namespace.clone(),
            name: setup.config.lease_name.clone(),
            source,
        })?;
        tracing::info!(
            lease = %format!("{}/{}", setup.config.namespace, setup.config.lease_name),
            identity = %setup.config.identity,
            duration_secs = timing.duration_secs,
            "competing for leadership"
        );
        let (leader_tx, leader_rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(setup, manager, confirmed_rx, leader_tx, stop.clone()));
        Ok((
            Self {
                state: State::Running { stop, task },
            },
            leader_rx,
        ))
    }

    /// No election: this process is the only writer and its receiver always reads `true`.
    #[must_use]
    pub fn disabled() -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(true);
        (
            Self {
                state: State::Disabled { _sender: tx },
            },
            rx,
        )
    }

    /// Stop competing and, if we hold the Lease, clear its holder so that a standby takes over at
    /// once instead of after the lease duration. The receiver reads `false` before the Lease is
    /// released, then closes. Does nothing when election is disabled.
    ///
    /// # Errors
    /// When the Lease could not be released (a successor then waits for it to expire).
    pub async fn release(mut self) -> Result<(), Error> {
        match std::mem::replace(&mut self.state, State::Released) {
            State::Running { stop, task } => {
                stop.cancel();
                task.await.map_err(Error::JoinTask)?
            }
            State::Disabled { .. } | State::Released => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropped without `release`: stop renewing; the task still releases the Lease if the
        // runtime lives long enough.
        if let State::Running { stop, .. } = &self.state {
            stop.cancel();
        }
    }
}

/// Why following one lease manager ended.
enum Exit {
    Stopped,
    LeaseGone,
    /// The Lease was released by its holder: a fresh manager acquires it at once.
    Released,
}

/// How often a standby reads the Lease to notice a release (client-go's retry period is 2 s).
const STANDBY_POLL: Duration = Duration::from_secs(2);

/// The Lease's holder as the server has it now: `Some("")` when nobody holds it, `None` when
/// it could not be read.
async fn lease_holder(client: &Client, config: &LeaderConfig) -> Option<String> {
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &config.namespace);
    match tokio::time::timeout(STANDBY_POLL, api.get_opt(&config.lease_name)).await {
        Ok(Ok(Some(lease))) => Some(lease.spec.and_then(|s| s.holder_identity).unwrap_or_default()),
        _ => None,
    }
}

async fn run(
    setup: Setup,
    mut manager: LeaseManager,
    mut confirmed: watch::Receiver<Option<SystemTime>>,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let lease = format!("{}/{}", setup.config.namespace, setup.config.lease_name);
    loop {
        match follow(&manager, &setup, &mut confirmed, &leader, &stop, &lease).await {
            Exit::Stopped => break,
            Exit::Released => {
                // kube-lease-manager only re-reads a Lease held by someone else once it expires;
                // a new manager reads it now and takes it.
                tracing::info!(%lease, "lease was released by its holder; taking over");
                match setup.build().await {
                    Ok(fresh) => manager = fresh,
                    Err(error) => tracing::warn!(%lease, %error, "failed to rebuild the lease manager"),
                }
            }
            Exit::LeaseGone => {
                publish(&leader, false, &lease);
                tracing::warn!(%lease, "lease was deleted; creating it again");
                let mut backoff = Backoff::new(setup.timing.max_backoff);
                manager = loop {
                    let attempt = tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        result = setup.build() => result,
                    };
                    match attempt {
                        Ok(manager) => break manager,
                        Err(error) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(%lease, %error, retry_in = ?delay, "failed to create the lease");
                            tokio::select! {
                                () = stop.cancelled() => return Ok(()),
                                () = tokio::time::sleep(delay) => {}
                            }
                        }
                    }
                };
            }
        }
    }
    // Stop acting as leader before a successor can take over.
    publish(&leader, false, &lease);
    manager.release().await.map_err(|source| Error::ReleaseLease {
        namespace: setup.config.namespace.clone(),
        name: setup.config.lease_name.clone(),
        source,
    })?;
    tracing::info!(%lease, "released leadership");
    Ok(())
}

/// Drive one lease manager and publish whether we lead, until stopped or the Lease is deleted.
async fn follow(
    manager: &LeaseManager,
    setup: &Setup,
    confirmed: &mut watch::Receiver<Option<SystemTime>>,
    leader: &watch::Sender<bool>,
    stop: &CancellationToken,
    lease: &str,
) -> Exit {
    // What the lease manager last reported; a new manager always starts as non-holder.
    let mut holder = false;
    let mut backoff = Backoff::new(setup.timing.max_backoff);
    let mut retry_at: Option<Instant> = None;
    let mut poll = tokio::time::interval_at(Instant::now() + STANDBY_POLL, STANDBY_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first look comes one period in: a manager that can take a free Lease has done so by
    // then, so a Lease still free at a look means the manager sleeps on an expiry it read before
    // the holder released it. Rebuilding it is always safe.
    // One `changed()` call is kept alive across iterations: cancelling it mid-request would make
    // the manager repeat renewals.
    let mut changed = pin!(manager.changed().fuse());
    loop {
        let remaining = (*confirmed.borrow_and_update())
            .and_then(|until| until.duration_since(SystemTime::now()).ok())
            .filter(|left| !left.is_zero());
        let leading = holder && remaining.is_some();
        publish(leader, leading, lease);

        tokio::select! {
            biased;
            () = stop.cancelled() => {
                // Drop the request in flight so that `release` gets the manager's lock.
                changed.set(Fuse::terminated());
                return Exit::Stopped;
            }
            result = &mut changed, if !changed.is_terminated() => match result {
                Ok(is_holder) => {
                    holder = is_holder;
                    backoff.reset();
                    changed.set(manager.changed().fuse());
                }
                Err(LeaseManagerError::NonexistentLease(_)) => return Exit::LeaseGone,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%lease, %error, retry_in = ?delay, "lease request failed");
                    retry_at = Some(Instant::now() + delay);
                }
            },
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                changed.set(manager.changed().fuse());
            }
            Ok(()) = confirmed.changed() => {}
            () = tokio::time::sleep(remaining.unwrap_or_default()), if leading => {}
            _ = poll.tick(), if !holder => {
                if lease_holder(&setup.client, &setup.config).await.is_some_and(|h| h.is_empty()) {
                    changed.set(Fuse::terminated());
                    return Exit::Released;
                }
            }
        }
    }
}

fn publish(leader: &watch::Sender<bool>, leading: bool, lease: &str) {
    let changed = leader.send_if_modified(|current| {
        let changed = *current != leading;
        *current = leading;
        changed
    });
    if changed && leading {
        tracing::info!(%lease, "acquired leadership");
    } else if changed {
        tracing::warn!(%lease, "lost leadership");
    }
}

#[cfg(test)]
mod tests;
