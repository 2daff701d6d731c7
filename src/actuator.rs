//! The only module that writes to the API server: pod conditions and deletions (or evictions),
//! Events, and DeviceTaintRule status. Every write builds a fresh object or patch; nothing
//! received from a watch is modified.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    core::ApiResource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::{
    CONTROLLER_NAME, client,
    eviction::Eviction,
    k8s::{self, DeviceTaintRule, Pod, Timestamp},
    metrics::Metrics,
    rule_status::{self, RuleStatusCondition},
    view::{PodRef, RuleRef},
};

/// Event reason of every pod Event (upstream).
pub const EVICTION_REASON: &str = "DeviceTaintManagerEviction";
/// The `DisruptionTarget` condition's reason (upstream).
pub const DISRUPTION_REASON: &str = "DeletionByDeviceTaintManager";
/// The `DisruptionTarget` condition's message (upstream).
pub const DISRUPTION_MESSAGE: &str = "Device Taint manager: deleting due to NoExecute taint";

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
    /// GET of the live pod failed.
    #[error("failed to get pod {pod}")]
    GetPod {
        /// The pod.
        pod: PodRef,
        /// Cause.
        #[source]
        source: kube::Error,
    },
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
            Self::GetPod { .. } => "get",
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
            Self::GetPod { .. } => "get pods".to_owned(),
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
        let (Self::GetPod { source, .. }
        | Self::PatchPodCondition { source, .. }
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
    /// The Eviction API refused for now (a PodDisruptionBudget, HTTP 429): try again later.
    Blocked,
}

/// Writes to the API server.
#[derive(Clone)]
pub struct Actuator {
    client: Client,
    events: mpsc::Sender<(Event, ObjectReference)>,
    backlog: Arc<Backlog>,
    mode: EvictionMode,
    dry_run: bool,
    rule_resource: Option<ApiResource>,
    metrics: Metrics,
}

/// Events waiting for publication. They are written one at a time, in order, by one task (as
/// upstream's event broadcaster does): a burst of evictions then does not compete with its own
/// Events for the API server, nor open a connection per Event.
const EVENT_QUEUE: usize = 1000;

async fn publish_events(
    recorder: Recorder,
    mut queue: mpsc::Receiver<(Event, ObjectReference)>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
) {
    while let Some((event, reference)) = queue.recv().await {
        if let Err(error) = recorder.publish(&event, &reference).await {
            metrics.api_error("create_event");
            warn!(%error, object = ?reference.name, namespace = ?reference.namespace, reason = %event.reason,
                  "failed to publish event");
        }
        backlog.done();
    }
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

fn is_gone(e: &kube::Error) -> bool {
    // NotFound: deleted meanwhile. Conflict: the UID precondition failed, so the name now
    // belongs to another pod. Either way this pod needs nothing more (upstream parity).
    matches!(e, kube::Error::Api(s) if s.is_not_found() || s.is_conflict())
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
        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        let backlog = Arc::new(Backlog::default());
        tokio::spawn(publish_events(
            Recorder::new(client.clone(), reporter),
            queue,
            backlog.clone(),
            metrics.clone(),
        ));
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
    /// Event is dropped, logged and counted (`skipped_objects_total{kind="events"}`).
    fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        self.backlog.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.events.try_send((event, reference)) {
            self.backlog.done();
            let (event, reference) = match error {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => item,
            };
            self.metrics.skipped("events", "event_queue_full");
            warn!(
                object = ?reference.name, namespace = ?reference.namespace, reason = %event.reason,
                "event queue full; dropping event"
            );
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
        );
    }

    /// Warns on a rule whose empty selector selects every device (SPEC D10).
    pub fn rule_selects_everything(&self, rule: &RuleRef, devices: usize) {
        let Some(ar) = &self.rule_resource else { return };
        let reference = ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some("DeviceTaintRule".into()),
            name: Some(rule.name.clone()),
            uid: Some(rule.uid.clone()),
            ..ObjectReference::default()
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
        );
    }

    /// Warns that a rule's selector has fields this controller does not understand, so that the
    /// rule selects no device here (fail closed).
    pub fn rule_selector_not_understood(&self, rule: &RuleRef, fields: &[String]) {
        let Some(ar) = &self.rule_resource else { return };
        let reference = ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some("DeviceTaintRule".into()),
            name: Some(rule.name.clone()),
            uid: Some(rule.uid.clone()),
            ..ObjectReference::default()
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
        );
    }

    /// Evicts one pod (upstream `addConditionAndDeletePod`): GET it live, check the UID, skip
    /// a terminating pod, Event, `DisruptionTarget` condition, DELETE with UID precondition (or
    /// the Eviction API).
    ///
    /// # Errors
    /// Any API failure other than "gone"; the caller retries with backoff.
    pub async fn evict(&self, pod: &PodRef, eviction: &Eviction) -> Result<Outcome, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let live = match api.get(&pod.name).await {
            Ok(live) => live,
            Err(e) if is_gone(&e) => return Ok(Outcome::NotNeeded),
            Err(source) => {
                return Err(Error::GetPod {
                    pod: pod.clone(),
                    source,
                });
            }
        };
        if live.metadata.uid.as_deref() != Some(pod.uid.as_str()) {
            debug!(pod = %pod, "pod was replaced by another one with the same name");
            return Ok(Outcome::NotNeeded);
        }
        if live.metadata.deletion_timestamp.is_some() {
            debug!(pod = %pod, "pod is already being deleted");
            return Ok(Outcome::NotNeeded);
        }
        let reasons: Vec<String> = eviction.reasons.iter().map(ToString::to_string).collect();
        if self.dry_run {
            info!(pod = %pod, reasons = ?reasons, "dry run: would evict pod");
            self.publish(
                pod_reference(pod),
                EventType::Normal,
                EVICTION_REASON,
                "Evict",
                "Would mark for deletion (dry run: the pod is not touched)".into(),
            );
            return Ok(Outcome::DryRun);
        }
        self.publish(
            pod_reference(pod),
            EventType::Normal,
            EVICTION_REASON,
            "Evict",
            "Marking for deletion".into(),
        );
        if !has_disruption_condition(&live) {
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
            match api
                .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_gone(&e) => return Ok(Outcome::NotNeeded),
                Err(source) => {
                    return Err(Error::PatchPodCondition {
                        pod: pod.clone(),
                        source,
                    });
                }
            }
        }
        let result = self.delete_or_evict(&api, pod).await;
        match result {
            Ok(()) => {
                info!(pod = %pod, reasons = ?reasons, "evicted pod");
                Ok(Outcome::Evicted)
            }
            Err(e) if is_gone(&e) => Ok(Outcome::NotNeeded),
            Err(kube::Error::Api(s)) if self.mode == EvictionMode::Evict && s.code == 429 => {
                warn!(pod = %pod, message = %s.message, "eviction refused for now (PodDisruptionBudget); will retry");
                Ok(Outcome::Blocked)
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

    /// DELETE with the pod's UID as precondition, or the same through the Eviction API.
    async fn delete_or_evict(&self, api: &Api<Pod>, pod: &PodRef) -> Result<(), kube::Error> {
        let delete = DeleteParams::default().preconditions(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        });
        match self.mode {
            EvictionMode::Delete => api.delete(&pod.name, &delete).await.map(|_| ()),
            EvictionMode::Evict => {
                // Not `Api::evict`: it sends the delete options as `delete_options`, a field the
                // API server ignores, which would drop the UID precondition.
                let eviction = json!({
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": pod.name, "namespace": pod.namespace},
                    "deleteOptions": delete,
                });
                api.create_subresource::<_, serde_json::Value>(
                    "eviction",
                    &pod.name,
                    &PostParams::default(),
                    &eviction,
                )
                .await
                .map(|_| ())
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

/// Whether the pod already carries our `DisruptionTarget` condition (then no patch is sent).
fn has_disruption_condition(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "DisruptionTarget"
                    && c.status == "True"
                    && c.reason.as_deref() == Some(DISRUPTION_REASON)
                    && c.message.as_deref() == Some(DISRUPTION_MESSAGE)
            })
        })
}

#[cfg(test)]
mod tests;
