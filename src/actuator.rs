//! The only module that writes to the API server: pod conditions and deletions (or evictions),
//! Events, and DeviceTaintRule status. Every write builds a fresh object or patch; nothing
//! received from a watch is modified.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    core::ApiResource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::{debug, error, info, warn};

pub use crate::k8s::{DISRUPTION_MESSAGE, DISRUPTION_REASON};
use crate::{
    CONTROLLER_NAME, client,
    eviction::Eviction,
    k8s::{self, DeviceTaintRule, Pod, Timestamp},
    metrics::Metrics,
    rule_status::{self, RuleStatusCondition},
    view::{PodRef, RuleRef},
};

/// The `Accept` header of every pod and Event write whose answer is read at most for its
/// metadata: the API server answers a `PartialObjectMetadata` (the object's metadata alone)
/// instead of encoding the whole pod, or Event, which the controller would only drop. Plain JSON
/// is the fallback, so a server that cannot transform an answer (or an error `Status`, which is
/// never transformed) still answers in JSON.
pub const METADATA_ONLY: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// `request` with its answer asked as [`METADATA_ONLY`].
fn metadata_only(mut request: http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    request
}

/// Event reason of every pod Event (upstream).
pub const EVICTION_REASON: &str = "DeviceTaintManagerEviction";
/// Event reason on a pod whose due eviction `--protected-priority` withheld (SPEC D12).
pub const PROTECTED_REASON: &str = "EvictionProtectedByPriority";

/// How pods are removed from tainted devices (`--eviction-mode`; the variants' doc comments are
/// its `--help` text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvictionMode {
    /// DELETE the pod with a UID precondition, as the in-tree controller does.
    Delete,
    /// Use the Eviction API, so PodDisruptionBudgets are respected; refused evictions are retried.
    Evict,
}

/// A failed API call. Each is retried with backoff by the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `DisruptionTarget` status patch failed.
    #[error("failed to add the DisruptionTarget condition to pod {pod}")]
    PatchPodCondition {
        /// The pod.
        pod: PodRef,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// DELETE failed.
    #[error("failed to delete pod {pod}")]
    DeletePod {
        /// The pod.
        pod: PodRef,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The Eviction API call failed (other than a PodDisruptionBudget refusal).
    #[error("failed to evict pod {pod}")]
    EvictPod {
        /// The pod.
        pod: PodRef,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The rule status apply failed.
    #[error("failed to apply the status of DeviceTaintRule {rule}")]
    ApplyRuleStatus {
        /// The rule.
        rule: RuleRef,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The API verb, for the `api_errors_total` metric.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::PatchPodCondition { .. } => "patch",
            Self::DeletePod { .. } => "delete",
            Self::EvictPod { .. } => "evict",
            Self::ApplyRuleStatus { .. } => "apply_status",
        }
    }

    /// The permission the failed request needed, as the controller's ClusterRole grants it.
    #[must_use]
    pub fn permission(&self) -> String {
        match self {
            Self::PatchPodCondition { .. } => "patch pods/status".to_owned(),
            Self::DeletePod { .. } => "delete pods".to_owned(),
            Self::EvictPod { .. } => "create pods/eviction".to_owned(),
            Self::ApplyRuleStatus { .. } => {
                format!("patch devicetaintrules/status in {}", k8s::RESOURCE_GROUP)
            }
        }
    }

    /// The cause in one line for the log: the API status told by [`client::explain_status`] (for
    /// a 403 with how to fix it), or kube's own text for a transport or decoding failure.
    #[must_use]
    pub fn explain(&self) -> String {
        let (Self::PatchPodCondition { source, .. }
        | Self::DeletePod { source, .. }
        | Self::EvictPod { source, .. }
        | Self::ApplyRuleStatus { source, .. }) = self;
        match source {
            kube::Error::Api(status) if status.is_forbidden() => format!(
                "{}; grant the controller's ServiceAccount this permission (see charts/device-taint-eviction)",
                client::explain_status(status, &self.permission())
            ),
            kube::Error::Api(status) => client::explain_status(status, &self.permission()),
            other => other.to_string(),
        }
    }
    fn source_error(&self) -> &kube::Error {
        match self {
            Self::PatchPodCondition { source, .. }
            | Self::DeletePod { source, .. }
            | Self::EvictPod { source, .. }
            | Self::ApplyRuleStatus { source, .. } => source,
        }
    }

    /// What kind of refusal this was, for logs and metrics.
    #[must_use]
    pub fn refusal(&self) -> Refusal {
        match self.source_error() {
            e if crate::client::is_not_leader(e) => Refusal::NotLeader,
            kube::Error::Api(s) if s.code == 429 => Refusal::Throttled,
            kube::Error::Api(s) if s.is_conflict() => Refusal::Conflict,
            _ => Refusal::Other,
        }
    }

    /// How long the API server asked us to wait before trying again (`Retry-After`), if it did.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(self.source_error())
    }
}

/// The kind of a failed call, so that logs and metrics name the real cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 429 that is not a PodDisruptionBudget refusal: the API server sheds load (API
    /// priority and fairness, max requests in flight).
    Throttled,
    /// HTTP 409 other than a failed UID precondition, e.g. "the object has been modified".
    Conflict,
    /// Anything else (5xx, transport, timeouts, 403, ...).
    Other,
    /// Not sent: this replica does not lead (any more).
    NotLeader,
}

/// How an eviction attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod was deleted (or evicted) by this controller.
    Evicted,
    /// Dry run: an Event says what would have happened.
    DryRun,
    /// Nothing to do: the pod is gone, was replaced by another pod of that name, or is
    /// already terminating.
    NotNeeded,
    /// A PodDisruptionBudget refused the eviction for now (HTTP 429 with cause
    /// `DisruptionBudget`): try again, no sooner than `retry_after` if the server said so.
    Blocked {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// Writes to the API server.
#[derive(Clone)]
pub struct Actuator {
    client: Client,
    events: Arc<[mpsc::Sender<Queued>]>,
    backlog: Arc<Backlog>,
    mode: EvictionMode,
    dry_run: bool,
    rule_resource: Option<ApiResource>,
    metrics: Metrics,
}

/// Events are published by [`EVENT_PUBLISHERS`] tasks, each with its own queue of
/// [`EVENT_QUEUE`] Events and its own recorder; an object's Events all go to the same task
/// (chosen by its namespace and name), so they are written in order and a repeated Event becomes
/// a series, as upstream's event broadcaster does. Several tasks keep a bulk eviction's Events
/// up with its deletions (one task writing one Event at a time fell behind at thousands of
/// pods and had to drop them), yet a burst of Events never takes more than these few requests
/// of the API server at once: the evictions keep their own workers.
const EVENT_PUBLISHERS: usize = 4;
/// Events waiting in each publisher's queue; beyond that they are dropped and counted.
const EVENT_QUEUE: usize = 1000;

/// An Event waiting for its publisher.
struct Queued {
    event: Event,
    reference: ObjectReference,
    remember: Remember,
}

/// Whether a published Event is remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remember {
    /// Through the recorder, which keeps each Event it sent for some minutes so that a repeat
    /// becomes a series (a PATCH of its count).
    Series,
    /// Written as it is, not remembered: a pod's eviction Event, one per evicted pod (a second
    /// attempt after a failed DELETE writes a second Event rather than a series). Remembering one
    /// Event per evicted pod would hold thousands of Events in memory after a bulk eviction.
    Once,
}

async fn publish_events(
    recorder: Recorder,
    client: Client,
    reporter: Reporter,
    mut queue: mpsc::Receiver<Queued>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
) {
    while let Some(Queued {
        event,
        reference,
        remember,
    }) = queue.recv().await
    {
        let written = match remember {
            Remember::Once => write_event(&client, &reporter, &event, &reference).await,
            Remember::Series => recorder.publish(&event, &reference).await,
        };
        if let Err(error) = written
            && !crate::client::is_not_leader(&error)
        {
            metrics.api_error("create_event");
            warn!(%error, object = ?reference.name, namespace = ?reference.namespace, reason = %event.reason,
                  "failed to publish event");
        }
        backlog.done();
    }
}

/// Creates `event` about `reference` as an `events.k8s.io/v1` Event shaped as the recorder shapes
/// a new one (name `<object>.<nanoseconds hex>`, event time now, this controller and replica as
/// reporter), without remembering it; the answer (asked as [`METADATA_ONLY`]) is not decoded.
async fn write_event(
    client: &Client,
    reporter: &Reporter,
    event: &Event,
    reference: &ObjectReference,
) -> Result<(), kube::Error> {
    let namespace = event_namespace(reference);
    let body = event_body(reporter, event, reference, Timestamp::now()).map_err(kube::Error::SerdeError)?;
    let request = kube::core::Request::new(format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"))
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(metadata_only(request)).await.map(drop)
}

/// The JSON body of a new `events.k8s.io/v1` Event (what [`write_event`] sends) at `now`: the
/// JSON of k8s-openapi's `events::v1::Event` with the same fields set, written from borrowed
/// fields (no copies of the reference, the reporter and the texts; the event time printed
/// directly, not through a strftime pattern). One per evicted pod.
///
/// # Errors
/// When serde_json fails to write it (it does not for these field types).
pub fn event_body(
    reporter: &Reporter,
    event: &Event,
    reference: &ObjectReference,
    now: Timestamp,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&NewEvent::new(reporter, event, reference, now))
}

/// The namespace of an Event about `reference`: the object's, or "default" for a cluster-scoped one.
fn event_namespace(reference: &ObjectReference) -> &str {
    reference.namespace.as_deref().unwrap_or("default")
}

/// The fields of [`event_body`].
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NewEvent<'a> {
    action: &'a str,
    api_version: &'static str,
    /// `MicroTime`: RFC 3339, UTC, six fractional digits.
    event_time: String,
    kind: &'static str,
    metadata: NewEventMeta<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    reason: &'a str,
    regarding: &'a ObjectReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    related: Option<&'a ObjectReference>,
    reporting_controller: &'a str,
    reporting_instance: &'a str,
    #[serde(rename = "type")]
    type_: &'static str,
}

#[derive(serde::Serialize)]
struct NewEventMeta<'a> {
    name: String,
    namespace: &'a str,
}

impl<'a> NewEvent<'a> {
    fn new(reporter: &'a Reporter, event: &'a Event, reference: &'a ObjectReference, now: Timestamp) -> Self {
        Self {
            action: &event.action,
            api_version: "events.k8s.io/v1",
            event_time: format!("{now:.6}"),
            kind: "Event",
            metadata: NewEventMeta {
                name: format!(
                    "{}.{:x}",
                    reference.name.as_deref().unwrap_or(&reporter.controller),
                    now.as_nanosecond()
                ),
                namespace: event_namespace(reference),
            },
            note: event.note.as_deref(),
            reason: &event.reason,
            regarding: reference,
            related: event.secondary.as_ref(),
            reporting_controller: &reporter.controller,
            reporting_instance: reporter.instance.as_deref().unwrap_or(&reporter.controller),
            type_: match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            },
        }
    }
}

/// The publisher of `reference`'s Events: the same one for every Event of an object.
fn publisher_of(reference: &ObjectReference, publishers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default()
        .hash_one((reference.namespace.as_deref(), reference.name.as_deref()));
    // The remainder is below `publishers`, a usize.
    usize::try_from(hash % publishers as u64).unwrap_or_default()
}

/// Events queued or being published, so that shutdown can wait for them.
#[derive(Default)]
struct Backlog {
    pending: AtomicUsize,
    idle: Notify,
}

impl Backlog {
    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Whether a failed call means that the object we meant needs nothing more: it is gone, or
/// its name now belongs to another object.
#[must_use]
pub fn is_gone(e: &kube::Error) -> bool {
    // NotFound: deleted meanwhile. A failed UID precondition: the name now belongs to another
    // object. Either way the object we meant needs nothing more (upstream parity). Any other
    // conflict ("the object has been modified") is retried.
    matches!(e, kube::Error::Api(s)
        if s.is_not_found() || is_uid_precondition_failure(s) || is_other_uid(s))
}

/// Whether a PATCH that carried `metadata.uid` met an object with another UID. The API server
/// (1.37) does not answer that with a precondition conflict but with 422 Invalid, cause
/// `metadata.uid` "field is immutable".
fn is_other_uid(status: &kube::core::Status) -> bool {
    status.code == 422
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid"))
}

/// Whether a 409 says that a UID precondition failed. The API server words it in two ways:
/// `rest.BeforeDelete` (DELETE, Eviction) says "the UID in the precondition (..) does not match
/// the UID in record (..)"; the storage layer (a DELETE that lost a race) says "Precondition
/// failed: UID in precondition: .., UID in object meta: ..".
fn is_uid_precondition_failure(status: &kube::core::Status) -> bool {
    status.is_conflict()
        && (status.message.contains("UID in the precondition")
            || status.message.contains("UID in precondition"))
}

/// Whether a 429 is a PodDisruptionBudget refusal of the Eviction API: the API server names
/// the cause `DisruptionBudget`. Any other 429 is load shedding.
#[must_use]
pub fn is_disruption_budget_refusal(status: &kube::core::Status) -> bool {
    status.code == 429
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "DisruptionBudget"))
}

/// The server's `Retry-After` (`details.retryAfterSeconds`; [`crate::client::RetryAfterLayer`]
/// copies the header there), if any.
fn retry_after(e: &kube::Error) -> Option<Duration> {
    match e {
        kube::Error::Api(s) => status_retry_after(s),
        _ => None,
    }
}

fn status_retry_after(status: &kube::core::Status) -> Option<Duration> {
    status
        .details
        .as_ref()
        .map(|d| d.retry_after_seconds)
        .filter(|secs| *secs > 0)
        .map(|secs| Duration::from_secs(u64::from(secs)))
}

fn pod_reference(pod: &PodRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        ..ObjectReference::default()
    }
}

impl Actuator {
    /// An actuator. `rule_resource` is the served DeviceTaintRule version, if any.
    #[must_use]
    pub fn new(
        client: Client,
        identity: &str,
        mode: EvictionMode,
        dry_run: bool,
        rule_resource: Option<ApiResource>,
        metrics: Metrics,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(identity.to_owned()),
        };
        let backlog = Arc::new(Backlog::default());
        let events = (0..EVENT_PUBLISHERS)
            .map(|_| {
                let (events, queue) = mpsc::channel(EVENT_QUEUE);
                tokio::spawn(publish_events(
                    Recorder::new(client.clone(), reporter.clone()),
                    client.clone(),
                    reporter.clone(),
                    queue,
                    backlog.clone(),
                    metrics.clone(),
                ));
                events
            })
            .collect();
        Self {
            client,
            events,
            backlog,
            mode,
            dry_run,
            rule_resource,
            metrics,
        }
    }

    /// Queues an Event for publication without delaying the caller. When the queue is full the
    /// Event is dropped, logged and counted (`skipped_objects_total{kind="events",
    /// reason="event_queue_full"}`); when the publisher task is gone (it panicked) it is dropped
    /// with an error and counted under `reason="event_publisher_closed"`, which no amount of
    /// waiting fixes.
    fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        remember: Remember,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        self.backlog.pending.fetch_add(1, Ordering::SeqCst);
        let publisher = &self.events[publisher_of(&reference, self.events.len())];
        if let Err(error) = publisher.try_send(Queued {
            event,
            reference,
            remember,
        }) {
            self.backlog.done();
            match error {
                mpsc::error::TrySendError::Full(Queued { event, reference, .. }) => {
                    self.metrics.skipped("events", "event_queue_full");
                    warn!(
                        object = ?reference.name, namespace = ?reference.namespace, uid = ?reference.uid,
                        reason = %event.reason, "event queue full; dropping event"
                    );
                }
                mpsc::error::TrySendError::Closed(Queued { event, reference, .. }) => {
                    self.metrics.skipped("events", "event_publisher_closed");
                    error!(
                        object = ?reference.name, namespace = ?reference.namespace, uid = ?reference.uid,
                        reason = %event.reason, "event publisher stopped; dropping event"
                    );
                }
            }
        }
    }

    /// Waits until every queued Event is published (or failed), at most `timeout`. Returns false
    /// when some are still pending then.
    pub async fn flush_events(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.backlog.idle.notified();
                if self.backlog.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Tells a pod that its pending eviction was cancelled (upstream `Cancelling deletion`).
    pub fn pod_eviction_cancelled(&self, pod: &PodRef) {
        info!(pod = %pod, "cancelled pod eviction");
        self.publish(
            pod_reference(pod),
            EventType::Normal,
            EVICTION_REASON,
            "CancelEviction",
            "Cancelling deletion".into(),
            Remember::Series,
        );
    }

    /// Warns a pod that its due eviction is withheld because its priority is at or above
    /// `--protected-priority` (SPEC D12). Sent once per pod and eviction; nothing else is written.
    pub fn pod_eviction_protected(&self, pod: &PodRef, eviction: &Eviction, priority: i32, threshold: i32) {
        let reasons: Vec<String> = eviction.reasons.iter().map(ToString::to_string).collect();
        info!(pod = %pod, priority, protected_priority = threshold, reasons = ?reasons,
              "pod is protected by --protected-priority: not evicted automatically");
        let note = format!(
            "Not evicted despite the NoExecute taint ({}): priority {priority} is at or above \
             --protected-priority={threshold}. Move or delete the pod by hand.",
            reasons.join(", ")
        );
        self.publish(
            pod_reference(pod),
            EventType::Warning,
            PROTECTED_REASON,
            "Evict",
            note,
            Remember::Series,
        );
    }

    /// The Event reference of `rule`; none when the cluster serves no DeviceTaintRule version.
    fn rule_reference(&self, rule: &RuleRef) -> Option<ObjectReference> {
        let ar = self.rule_resource.as_ref()?;
        Some(ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some("DeviceTaintRule".into()),
            name: Some(rule.name.clone()),
            uid: Some(rule.uid.clone()),
            ..ObjectReference::default()
        })
    }

    /// Warns on a rule whose empty selector selects every device (SPEC D10).
    pub fn rule_selects_everything(&self, rule: &RuleRef, devices: usize) {
        let Some(reference) = self.rule_reference(rule) else {
            return;
        };
        let note = format!(
            "The device selector is empty and selects every device in the cluster ({devices} published now); \
             every pod using one of them is affected by the taint."
        );
        self.publish(
            reference,
            EventType::Warning,
            "EmptyDeviceSelector",
            "Select",
            note,
            Remember::Series,
        );
    }

    /// Warns that the blast-radius guard paused a rule's evictions (SPEC D11); `note` says why
    /// and how to resume.
    pub fn rule_evictions_paused(&self, rule: &RuleRef, note: String) {
        let Some(reference) = self.rule_reference(rule) else {
            return;
        };
        self.publish(
            reference,
            EventType::Warning,
            "EvictionPaused",
            "Evict",
            note,
            Remember::Series,
        );
    }

    /// Warns that a rule's selector has fields this controller does not understand, so that the
    /// rule selects no device here (fail closed).
    pub fn rule_selector_not_understood(&self, rule: &RuleRef, fields: &[String]) {
        let Some(reference) = self.rule_reference(rule) else {
            return;
        };
        let note = format!(
            "The device selector has fields this controller does not understand ({}); \
             the rule selects no device and evicts no pod until the controller is upgraded.",
            fields.join(", ")
        );
        self.publish(
            reference,
            EventType::Warning,
            "UnknownDeviceSelectorFields",
            "Select",
            note,
            Remember::Series,
        );
    }

    /// Evicts one pod (upstream `addConditionAndDeletePod`), deciding from the watched pod
    /// rather than a live GET (SPEC section 3): the `DisruptionTarget` condition, patched with
    /// the pod's UID (skipped when the attempt is `marked`: the watched pod has it already), then
    /// the Event and a DELETE with UID precondition (or the Eviction API); the time from the
    /// attempt's `due` to the DELETE being sent goes to `decision_seconds`. A pod that is gone or
    /// was replaced (NotFound, or the UID check failed) needs nothing more; one that the patch's
    /// answer shows terminating is being deleted by someone else and is not counted. Response bodies are not
    /// decoded into pods: the patch's answer is read for `metadata.deletionTimestamp` only, the
    /// DELETE's not at all.
    ///
    /// # Errors
    /// Any API failure other than "gone"; the caller retries with backoff.
    pub async fn evict(&self, pod: &PodRef, eviction: &Eviction, attempt: Attempt) -> Result<Outcome, Error> {
        let reasons: Vec<String> = eviction.reasons.iter().map(ToString::to_string).collect();
        if self.dry_run {
            info!(pod = %pod, reasons = ?reasons, "dry run: would evict pod");
            self.publish(
                pod_reference(pod),
                EventType::Normal,
                EVICTION_REASON,
                "Evict",
                "Would mark for deletion (dry run: the pod is not touched)".into(),
                Remember::Once,
            );
            return Ok(Outcome::DryRun);
        }
        if !attempt.marked {
            match add_disruption_condition(&self.client, pod).await? {
                Patched::Live => {}
                Patched::Gone => return Ok(Outcome::NotNeeded),
                Patched::Terminating => {
                    debug!(pod = %pod, "pod is already being deleted");
                    return Ok(Outcome::NotNeeded);
                }
            }
        }
        self.publish(
            pod_reference(pod),
            EventType::Normal,
            EVICTION_REASON,
            "Evict",
            "Marking for deletion".into(),
            Remember::Once,
        );
        self.metrics.decision(attempt.due.elapsed());
        match self.delete_or_evict(pod).await {
            Ok(()) => {
                debug!(pod = %pod, reasons = ?reasons, "evicted pod");
                Ok(Outcome::Evicted)
            }
            Err(e) if is_gone(&e) => Ok(Outcome::NotNeeded),
            Err(kube::Error::Api(s))
                if self.mode == EvictionMode::Evict && is_disruption_budget_refusal(&s) =>
            {
                Ok(budget_refusal(pod, &s))
            }
            Err(source) => Err(match self.mode {
                EvictionMode::Delete => Error::DeletePod {
                    pod: pod.clone(),
                    source,
                },
                EvictionMode::Evict => Error::EvictPod {
                    pod: pod.clone(),
                    source,
                },
            }),
        }
    }

    /// DELETE with the pod's UID as precondition, or the same through the Eviction API. The
    /// answer (asked as [`METADATA_ONLY`]) is not decoded: its status says all.
    async fn delete_or_evict(&self, pod: &PodRef) -> Result<(), kube::Error> {
        match self.mode {
            EvictionMode::Delete => {
                let delete = DeleteParams::default().preconditions(Preconditions {
                    uid: Some(pod.uid.clone()),
                    resource_version: None,
                });
                let request = pods(pod)
                    .delete(&pod.name, &delete)
                    .map_err(kube::Error::BuildRequest)?;
                self.client.request_text(metadata_only(request)).await.map(drop)
            }
            EvictionMode::Evict => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
                evict_pod(&api, pod).await
            }
        }
    }

    /// Applies a rule's `EvictionInProgress` condition with server-side apply. Returns false
    /// when the rule is gone (or was replaced).
    ///
    /// # Errors
    /// Any other API failure.
    pub async fn apply_rule_status(
        &self,
        rule: &RuleRef,
        generation: i64,
        condition: &RuleStatusCondition,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let Some(ar) = &self.rule_resource else {
            return Ok(false);
        };
        let api: Api<DeviceTaintRule> = Api::all_with(self.client.clone(), ar);
        let body = rule_status::apply_body(&ar.api_version, rule, generation, condition, now);
        let params = PatchParams::apply(CONTROLLER_NAME).force();
        match api.patch_status(&rule.name, &params, &Patch::Apply(body)).await {
            Ok(_) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(source) => Err(Error::ApplyRuleStatus {
                rule: rule.clone(),
                source,
            }),
        }
    }
}

/// Creates an Eviction for the pod with a UID precondition and the default grace period.
///
/// Built here rather than with kube's `Api::evict`, which sends the delete options under the key
/// `delete_options`: the API server ignores it, so the UID precondition would be lost and a pod
/// that replaced ours under the same name could be evicted.
///
/// # Errors
/// The API server's refusal, e.g. a 429 from a PodDisruptionBudget or a 409 when the UID
/// precondition failed.
pub async fn evict_pod(api: &Api<Pod>, pod: &PodRef) -> Result<(), kube::Error> {
    let eviction = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
        "deleteOptions": {"preconditions": {"uid": pod.uid}},
    });
    api.create_subresource::<_, kube::core::Status>("eviction", &pod.name, &PostParams::default(), &eviction)
        .await
        .map(|_| ())
}

/// What the worker knows of one eviction attempt besides the pod and its eviction.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The watched pod already has our `DisruptionTarget` condition: no status PATCH.
    pub marked: bool,
    /// When the eviction became due for this controller: its watch event applied, or its
    /// deadline passed (the work queue's [`Ticket::due`](crate::queue::Ticket::due)).
    pub due: Instant,
}

/// What the `DisruptionTarget` status patch found.
enum Patched {
    /// The pod (our UID) has the condition now and is not terminating.
    Live,
    /// The pod is gone, or its name belongs to another pod.
    Gone,
    /// The pod has the condition but is already being deleted (by someone else).
    Terminating,
}

/// The only part of the patch's answer that is read (asked as [`METADATA_ONLY`]: a
/// `PartialObjectMetadata`, or the whole pod from a server that does not transform answers).
#[derive(serde::Deserialize)]
struct Answered {
    metadata: AnsweredMeta,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnsweredMeta {
    #[serde(default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

/// The pods of `pod`'s namespace, as a request builder.
fn pods(pod: &PodRef) -> kube::core::Request {
    kube::core::Request::new(format!("/api/v1/namespaces/{}/pods", pod.namespace))
}

/// Adds the `DisruptionTarget` condition to the pod, with its UID in the patch so that a pod that
/// replaced it under the same name is never touched (the API server refuses the patch).
async fn add_disruption_condition(client: &Client, pod: &PodRef) -> Result<Patched, Error> {
    let patch = json!({
        "metadata": {"uid": pod.uid},
        "status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": DISRUPTION_REASON,
            "message": DISRUPTION_MESSAGE,
            "lastTransitionTime": Timestamp::now().to_string(),
        }]}
    });
    let answer = match pods(pod).patch_subresource(
        "status",
        &pod.name,
        &PatchParams::default(),
        &Patch::Strategic(patch),
    ) {
        Ok(request) => client.request::<Answered>(metadata_only(request)).await,
        Err(e) => Err(kube::Error::BuildRequest(e)),
    };
    match answer {
        Ok(answered) if answered.metadata.deletion_timestamp.is_some() => Ok(Patched::Terminating),
        Ok(_) => Ok(Patched::Live),
        Err(e) if is_gone(&e) => Ok(Patched::Gone),
        Err(source) => Err(Error::PatchPodCondition {
            pod: pod.clone(),
            source,
        }),
    }
}

/// Logs a PodDisruptionBudget refusal with the budget's own explanation.
fn budget_refusal(pod: &PodRef, status: &kube::core::Status) -> Outcome {
    let retry_after = status_retry_after(status);
    let budget = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .find(|c| c.reason == "DisruptionBudget")
        .map_or("", |c| c.message.as_str());
    warn!(pod = %pod, message = %status.message, budget, ?retry_after,
          "eviction refused for now (PodDisruptionBudget); will retry");
    Outcome::Blocked { retry_after }
}

/// The actuator against a scripted API server: every request it sends, in order.
#[cfg(test)]
mod scripted;
