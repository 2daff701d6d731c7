//! The actuator against a scripted API server: a `tower` service that records every request and
//! answers the pod and rule requests from a script, in order. Each test asserts the exact requests
//! sent (method, path, query, the body parts that matter) and the outcome.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::Layer as _;

use super::*;
// The controller's name and the eviction mode, wherever they are defined.
use crate::{CONTROLLER_NAME, actuator::EvictionMode, view::EVICTION_IN_PROGRESS};
use crate::{
    client::RetryAfterLayer,
    eviction::TaintSource,
    k8s::device_taint_rule_resource,
    metrics,
    view::{PodRef, RuleRef},
};

const NS: &str = "team-a";
const POD: &str = "trainer-0";
const UID: &str = "uid-trainer-0";
const RULE: &str = "gpu-broken";
const RULE_UID: &str = "uid-gpu-broken";

/// One request as the API server received it.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    method: String,
    /// Path and query, e.g. `/api/v1/namespaces/ns/pods/p?dryRun=All`.
    uri: String,
    content_type: Option<String>,
    accept: Option<String>,
    /// The JSON body, `Null` when there is none.
    body: Value,
}

impl Sent {
    /// Method and path, without the query: `GET /api/v1/namespaces/ns/pods/p`.
    fn line(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

/// What the API server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json")],
            body: serde_json::to_vec(body).expect("reply JSON"),
        }
    }

    fn ok(body: &Value) -> Self {
        Self::json(200, body)
    }

    /// A `Status` failure as the API server sends it; `details` is left out when `Null`.
    fn failure(code: u16, reason: &str, message: &str, details: Value) -> Self {
        let mut body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        if !details.is_null() {
            body["details"] = details;
        }
        Self::json(code, &body)
    }

    /// A `Status` failure with a scripted message.
    fn error(code: u16, reason: &str) -> Self {
        Self::failure(code, reason, &format!("scripted {reason}"), Value::Null)
    }

    /// A 409 Conflict about the pod, with this message.
    fn conflict(message: &str) -> Self {
        Self::failure(409, "Conflict", message, json!({"name": POD, "kind": "pods"}))
    }

    /// The API server's answer to a DELETE whose UID precondition names another pod.
    fn uid_precondition_failed() -> Self {
        Self::failure(
            409,
            "Conflict",
            "Precondition failed: UID in precondition: uid-a, UID in object meta: uid-b",
            Value::Null,
        )
    }

    /// The API server's answer to a status PATCH naming our UID when the pod of that name has
    /// another one (1.37: 422 Invalid on `metadata.uid`, not a precondition conflict).
    fn other_uid() -> Self {
        Self::failure(
            422,
            "Invalid",
            &format!("Pod \"{POD}\" is invalid: metadata.uid: Invalid value: \"{UID}\": field is immutable"),
            json!({"name": POD, "kind": "Pod", "causes": [{"reason": "FieldValueInvalid",
                    "message": format!("Invalid value: \"{UID}\": field is immutable"), "field": "metadata.uid"}]}),
        )
    }

    fn success_status() -> Self {
        Self::ok(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
    }

    /// A 429 from the API server's load shedding: plain text, the wait only in `Retry-After`.
    fn shed() -> Self {
        Self {
            status: 429,
            headers: vec![
                ("content-type", "text/plain; charset=utf-8"),
                ("retry-after", "7"),
            ],
            body: b"Too many requests, please try again later.\n".to_vec(),
        }
    }
}

/// The scripted API server. Event writes (`events.k8s.io`) are published by a background task in
/// their own order, so they are answered `201` and recorded apart; everything else takes the next
/// scripted reply (`500` once the script is exhausted, so an unexpected request fails the test's
/// outcome check as well as its request check). The client sees it through [`RetryAfterLayer`],
/// as in production.
#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    sent: Mutex<Vec<Sent>>,
    events: Mutex<Vec<Sent>>,
}

impl Script {
    fn new(replies: impl IntoIterator<Item = Reply>) -> Arc<Self> {
        Arc::new(Self {
            replies: Mutex::new(replies.into_iter().collect()),
            ..Self::default()
        })
    }

    fn client(self: &Arc<Self>) -> Client {
        let script = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let script = script.clone();
            async move { Ok::<_, Infallible>(script.answer(request).await) }
        });
        Client::new(
            RetryAfterLayer::new().layer(crate::client::boxed(service)),
            "default",
        )
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<kube::client::Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let sent = Sent {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().expect("ASCII content type").to_owned()),
            accept: parts
                .headers
                .get(http::header::ACCEPT)
                .map(|v| v.to_str().expect("ASCII accept").to_owned()),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            },
        };
        let reply = if sent.uri.starts_with("/apis/events.k8s.io/") {
            let created = Reply::json(201, &sent.body);
            self.events.lock().expect("events").push(sent);
            created
        } else {
            self.sent.lock().expect("sent").push(sent);
            self.replies
                .lock()
                .expect("replies")
                .pop_front()
                .unwrap_or_else(|| Reply::error(500, "InternalError"))
        };
        let mut response = Response::builder().status(reply.status);
        for (name, value) in reply.headers {
            response = response.header(name, value);
        }
        response
            .body(kube::client::Body::from(reply.body))
            .expect("response")
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("sent").clone()
    }

    fn events(&self) -> Vec<Sent> {
        self.events.lock().expect("events").clone()
    }
}

fn actuator(script: &Arc<Script>, mode: EvictionMode, dry_run: bool) -> Actuator {
    let metrics = Metrics::register(&mut Registry::default());
    Actuator::new(
        script.client(),
        "replica-1",
        mode,
        dry_run,
        Some(device_taint_rule_resource("v1")),
        metrics,
    )
}

/// An attempt that became due just now.
fn attempt(marked: bool) -> Attempt {
    Attempt {
        marked,
        due: Instant::now(),
    }
}

fn pod_ref() -> PodRef {
    PodRef::new(NS, POD, UID)
}

fn eviction() -> Eviction {
    Eviction {
        at: crate::fixtures::t(100),
        reasons: vec![TaintSource::Rule(RuleRef::new(RULE, RULE_UID))],
    }
}

/// The pod as the API server returns it after a status patch.
fn live_pod(uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NS, "uid": uid, "resourceVersion": "7"},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"},
    })
}

/// The pod's metadata alone, as the API server answers a write asked as [`METADATA_ONLY`].
fn live_pod_metadata(uid: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": live_pod(uid)["metadata"],
    })
}

/// Checks the `DisruptionTarget` status patch: strategic merge, the pod's UID (so a replacement
/// pod of the same name is never patched), the upstream condition, the answer asked as metadata.
fn assert_condition_patch(sent: &Sent) {
    assert_eq!(sent.method, "PATCH");
    assert_eq!(sent.uri, format!("/api/v1/namespaces/{NS}/pods/{POD}/status?"));
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(sent.accept.as_deref(), Some(METADATA_ONLY));
    assert_eq!(sent.body["metadata"], json!({"uid": UID}));
    let conditions = sent.body["status"]["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    let condition = &conditions[0];
    assert_eq!(condition["type"], "DisruptionTarget");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], DISRUPTION_REASON);
    assert_eq!(condition["message"], DISRUPTION_MESSAGE);
    assert!(condition["lastTransitionTime"].is_string(), "{condition}");
}

/// The DELETE: no dry run, the UID precondition in the body, the answer asked as metadata.
fn delete_pod() -> Sent {
    Sent {
        method: "DELETE".into(),
        uri: format!("/api/v1/namespaces/{NS}/pods/{POD}?"),
        content_type: Some("application/json".into()),
        accept: Some(METADATA_ONLY.into()),
        body: json!({"preconditions": {"uid": UID}}),
    }
}

/// The Eviction API call: the eviction names the pod and carries the UID precondition.
fn evict_pod() -> Sent {
    Sent {
        method: "POST".into(),
        uri: format!("/api/v1/namespaces/{NS}/pods/{POD}/eviction?"),
        content_type: Some("application/json".into()),
        accept: None,
        body: json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": POD, "namespace": NS},
            "deleteOptions": {"preconditions": {"uid": UID}},
        }),
    }
}

/// Waits until every queued Event is published and checks there is exactly one, for the pod,
/// with this note and action.
async fn assert_one_pod_event(actuator: &Actuator, script: &Script, action: &str, note: &str) {
    assert!(actuator.flush_events(Duration::from_secs(10)).await);
    let events = script.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.method, "POST");
    assert_eq!(
        event.uri,
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
    );
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["reason"], EVICTION_REASON);
    assert_eq!(event.body["action"], action);
    assert_eq!(event.body["note"], note);
    assert_eq!(event.body["reportingController"], CONTROLLER_NAME);
    assert_eq!(event.body["reportingInstance"], "replica-1");
    assert_eq!(
        event.body["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": NS, "name": POD, "uid": UID})
    );
}

async fn assert_no_event(actuator: &Actuator, script: &Script) {
    assert!(actuator.flush_events(Duration::from_secs(10)).await);
    assert_eq!(script.events(), Vec::new());
}

/// No GET: the status patch (with the UID), the Event, the DELETE (with the UID precondition).
#[tokio::test]
async fn delete_mode_success_sends_condition_delete_and_one_event() {
    let script = Script::new([
        Reply::ok(&live_pod_metadata(UID)),
        Reply::ok(&live_pod_metadata(UID)),
    ]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("evicted");
    assert_eq!(outcome, Outcome::Evicted);
    let sent = script.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_condition_patch(&sent[0]);
    assert_eq!(sent[1], delete_pod());
    assert_one_pod_event(&actuator, &script, "Evict", "Marking for deletion").await;
}

#[tokio::test]
async fn evict_mode_success_posts_an_eviction_with_the_uid_precondition() {
    let script = Script::new([Reply::ok(&live_pod(UID)), Reply::success_status()]);
    let actuator = actuator(&script, EvictionMode::Evict, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("evicted");
    assert_eq!(outcome, Outcome::Evicted);
    let sent = script.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_condition_patch(&sent[0]);
    assert_eq!(sent[1], evict_pod());
    assert_one_pod_event(&actuator, &script, "Evict", "Marking for deletion").await;
}

/// The pod is gone (404 on the status patch): nothing more is sent, no Event.
#[tokio::test]
async fn pod_not_found_needs_nothing_more_and_gets_no_event() {
    let script = Script::new([Reply::error(404, "NotFound")]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("not needed");
    assert_eq!(outcome, Outcome::NotNeeded);
    let sent = script.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_condition_patch(&sent[0]);
    assert_no_event(&actuator, &script).await;
}

/// A pod of the same name with another UID: the API server refuses the patch that names our
/// UID (422 on `metadata.uid`), and the other pod gets nothing else, not even an Event.
#[tokio::test]
async fn a_pod_of_the_same_name_with_another_uid_is_left_alone() {
    let script = Script::new([Reply::other_uid()]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("not needed");
    assert_eq!(outcome, Outcome::NotNeeded);
    assert_eq!(script.sent().len(), 1);
    assert_no_event(&actuator, &script).await;
}

/// The patch's answer shows the pod terminating (someone else deletes it, and the watch has not
/// said so yet): no DELETE, no Event, not counted as ours.
/// Read from the whole pod or from its metadata alone (the answer asked for).
#[tokio::test]
async fn a_terminating_pod_is_left_alone() {
    for mut answer in [live_pod(UID), live_pod_metadata(UID)] {
        answer["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
        let script = Script::new([Reply::ok(&answer)]);
        let actuator = actuator(&script, EvictionMode::Delete, false);
        let outcome = actuator
            .evict(&pod_ref(), &eviction(), attempt(false))
            .await
            .expect("not needed");
        assert_eq!(outcome, Outcome::NotNeeded, "{answer}");
        assert_eq!(script.sent().len(), 1);
        assert_no_event(&actuator, &script).await;
    }
}

/// The UID precondition failed (409): the name now belongs to another pod, which is not touched.
#[tokio::test]
async fn uid_conflict_on_delete_means_the_pod_was_replaced() {
    let script = Script::new([Reply::ok(&live_pod(UID)), Reply::uid_precondition_failed()]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("not needed");
    assert_eq!(outcome, Outcome::NotNeeded);
    let sent = script.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[1], delete_pod());
}

/// The pod was deleted between the status patch and the DELETE: done, not counted.
#[tokio::test]
async fn pod_gone_before_the_delete_is_done() {
    let script = Script::new([Reply::ok(&live_pod(UID)), Reply::error(404, "NotFound")]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("not needed");
    assert_eq!(outcome, Outcome::NotNeeded);
    assert_eq!(script.sent()[1], delete_pod());
}

/// In delete mode a 429 (API server overload) is an error like any other: retried with backoff.
#[tokio::test]
async fn delete_refused_with_429_is_an_error() {
    let script = Script::new([Reply::ok(&live_pod(UID)), Reply::error(429, "TooManyRequests")]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let error = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect_err("error");
    assert!(matches!(error, Error::DeletePod { .. }), "{error:?}");
    assert_eq!(error.verb(), "delete");
    assert_eq!(script.sent()[1], delete_pod());
}

#[tokio::test]
async fn server_errors_are_returned_for_the_step_that_failed() {
    // The condition patch fails: no DELETE, no Event.
    let script = Script::new([Reply::error(503, "ServiceUnavailable")]);
    let actuator1 = actuator(&script, EvictionMode::Delete, false);
    let error = actuator1
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect_err("error");
    assert!(matches!(error, Error::PatchPodCondition { .. }), "{error:?}");
    assert_eq!(error.verb(), "patch");
    assert_eq!(script.sent().len(), 1);
    assert_no_event(&actuator1, &script).await;

    // The Eviction API fails with 500.
    let script = Script::new([Reply::ok(&live_pod(UID)), Reply::error(500, "InternalError")]);
    let actuator2 = actuator(&script, EvictionMode::Evict, false);
    let error = actuator2
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect_err("error");
    assert!(matches!(error, Error::EvictPod { .. }), "{error:?}");
    assert_eq!(error.verb(), "evict");
    assert_eq!(script.sent()[1], evict_pod());
}

/// A pod whose watched state already carries the condition (an earlier attempt failed after
/// the patch) is not patched again: the DELETE alone, and the Event.
#[tokio::test]
async fn an_existing_disruption_condition_is_not_patched_again() {
    let script = Script::new([Reply::ok(&live_pod(UID))]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(true))
        .await
        .expect("evicted");
    assert_eq!(outcome, Outcome::Evicted);
    assert_eq!(script.sent(), [delete_pod()]);
    assert_one_pod_event(&actuator, &script, "Evict", "Marking for deletion").await;
}

/// The eviction Event is written, not remembered: a second attempt for the same pod (its DELETE
/// failed) writes a second Event rather than a series of the first, which the recorder would do
/// by keeping every Event it sent for minutes (thousands after a bulk eviction). Shaped as the
/// recorder shapes a new Event.
#[tokio::test]
async fn eviction_events_are_written_not_remembered() {
    let script = Script::new([
        Reply::ok(&live_pod(UID)),
        Reply::error(500, "InternalError"),
        Reply::ok(&live_pod(UID)),
    ]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect_err("DELETE failed");
    assert!(actuator.flush_events(Duration::from_secs(10)).await);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(true))
        .await
        .expect("evicted");
    assert_eq!(outcome, Outcome::Evicted);
    assert!(actuator.flush_events(Duration::from_secs(10)).await);
    let events = script.events();
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(methods, ["POST", "POST"], "{events:#?}");
    for event in &events {
        let name = event.body["metadata"]["name"].as_str().expect("name");
        assert!(
            name.strip_prefix(&format!("{POD}."))
                .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())),
            "{name}"
        );
        assert_eq!(event.body["metadata"]["namespace"], NS);
        assert!(event.body["eventTime"].is_string(), "{}", event.body);
        assert_eq!(event.body["note"], "Marking for deletion");
        assert_eq!(event.accept.as_deref(), Some(METADATA_ONLY));
    }
}

/// `decision_seconds` runs from when the eviction became due to the DELETE being sent: observed
/// once per DELETE (or Eviction) sent, after the status PATCH, and never for an attempt that
/// sends none (the pod is gone, the PATCH failed, dry run).
#[tokio::test]
async fn decision_time_runs_from_due_to_the_delete_sent() {
    let count = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("device_taint_eviction_controller_decision_seconds_count "))
            .map(|n| n.parse::<u64>().expect("count"))
    };
    let three_seconds_ago = Attempt {
        marked: false,
        due: Instant::now()
            .checked_sub(Duration::from_secs(3))
            .expect("uptime"),
    };
    for (replies, mode, dry_run, sent) in [
        (
            vec![Reply::ok(&live_pod(UID)), Reply::ok(&live_pod(UID))],
            EvictionMode::Delete,
            false,
            1,
        ),
        (
            vec![Reply::ok(&live_pod(UID)), Reply::success_status()],
            EvictionMode::Evict,
            false,
            1,
        ),
        (
            vec![Reply::ok(&live_pod(UID)), Reply::error(500, "InternalError")],
            EvictionMode::Delete,
            false,
            1,
        ),
        (
            vec![Reply::error(404, "NotFound")],
            EvictionMode::Delete,
            false,
            0,
        ),
        (
            vec![Reply::error(503, "ServiceUnavailable")],
            EvictionMode::Delete,
            false,
            0,
        ),
        (vec![], EvictionMode::Delete, true, 0),
    ] {
        let script = Script::new(replies);
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let actuator = Actuator::new(script.client(), "test", mode, dry_run, None, metrics);
        let _ = actuator.evict(&pod_ref(), &eviction(), three_seconds_ago).await;
        let text = metrics::encode(&registry);
        assert_eq!(count(&text), Some(sent), "{mode:?} dry run {dry_run}: {text}");
        if sent == 1 {
            // From the due instant, not from the call: in the 5 s bucket, not in the 2.5 s one.
            let bucket = |le: &str| {
                text.contains(&format!(
                    "device_taint_eviction_controller_decision_seconds_bucket{{le=\"{le}\"}} 1\n"
                ))
            };
            assert!(bucket("5.0") && !bucket("2.5"), "{text}");
        }
    }
}

/// Dry run sends nothing but the Event saying what it would do.
#[tokio::test]
async fn dry_run_only_publishes_a_would_evict_event() {
    let script = Script::new([]);
    let actuator = actuator(&script, EvictionMode::Delete, true);
    let outcome = actuator
        .evict(&pod_ref(), &eviction(), attempt(false))
        .await
        .expect("dry run");
    assert_eq!(outcome, Outcome::DryRun);
    assert_eq!(script.sent(), []);
    assert_one_pod_event(
        &actuator,
        &script,
        "Evict",
        "Would mark for deletion (dry run: the pod is not touched)",
    )
    .await;
}

#[tokio::test]
async fn cancelled_eviction_publishes_an_event() {
    let script = Script::new([]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    actuator.pod_eviction_cancelled(&pod_ref());
    assert_one_pod_event(&actuator, &script, "CancelEviction", "Cancelling deletion").await;
    assert_eq!(script.sent(), []);
}

/// The rule status: server-side apply of the status subresource, forced, as the controller's
/// field manager, with the rule's UID (a re-created rule of the same name is not written).
#[tokio::test]
async fn rule_status_is_applied_with_the_rules_uid() {
    let script = Script::new([Reply::ok(&json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule",
        "metadata": {"name": RULE, "uid": RULE_UID},
        "spec": {"taint": {"key": "k", "effect": "NoExecute"}},
    }))]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let condition = RuleStatusCondition {
        status: "True",
        reason: "PodsPendingEviction",
        message: "1 pod needs to be evicted in 1 namespace.".into(),
    };
    let now = crate::fixtures::t(1_000_000);
    let applied = actuator
        .apply_rule_status(&RuleRef::new(RULE, RULE_UID), 3, &condition, now)
        .await
        .expect("applied");
    assert!(applied);
    let sent = script.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].method, "PATCH");
    assert_eq!(
        sent[0].uri,
        format!(
            "/apis/resource.k8s.io/v1/devicetaintrules/{RULE}/status?&force=true&fieldManager={CONTROLLER_NAME}"
        )
    );
    assert_eq!(
        sent[0].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        sent[0].body,
        json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule",
            "metadata": {"name": RULE, "uid": RULE_UID},
            "status": {"conditions": [{
                "type": EVICTION_IN_PROGRESS, "status": "True", "reason": "PodsPendingEviction",
                "message": "1 pod needs to be evicted in 1 namespace.",
                "lastTransitionTime": now.to_string(), "observedGeneration": 3,
            }]},
        })
    );
}

/// A rule deleted (404) or replaced (409, UID mismatch) meanwhile: `false`, no error.
#[tokio::test]
async fn rule_status_of_a_gone_or_replaced_rule_is_not_an_error() {
    let condition = RuleStatusCondition {
        status: "False",
        reason: "NoEffect",
        message: String::new(),
    };
    // Any other conflict is retried (see `only_a_uid_precondition_conflict_means_done`).
    for code in [(404, "NotFound")] {
        let script = Script::new([Reply::error(code.0, code.1)]);
        let actuator = actuator(&script, EvictionMode::Delete, false);
        let applied = actuator
            .apply_rule_status(
                &RuleRef::new(RULE, RULE_UID),
                1,
                &condition,
                crate::fixtures::t(0),
            )
            .await
            .expect("not an error");
        assert!(!applied, "{code:?}");
        assert_eq!(script.sent().len(), 1);
    }
    let script = Script::new([Reply::error(500, "InternalError")]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    let error = actuator
        .apply_rule_status(
            &RuleRef::new(RULE, RULE_UID),
            1,
            &condition,
            crate::fixtures::t(0),
        )
        .await
        .expect_err("error");
    assert!(matches!(error, Error::ApplyRuleStatus { .. }), "{error:?}");
}

/// Evicts the pod against these replies; returns the outcome and each request's method and path.
/// Every request must have a scripted reply, and every write must name the pod's UID: the status
/// PATCH in its metadata, the DELETE and the Eviction as a precondition, under the keys the API
/// server reads.
async fn evict_with(replies: Vec<Reply>, mode: EvictionMode) -> (Result<Outcome, Error>, Vec<String>) {
    let scripted = replies.len();
    let script = Script::new(replies);
    let actuator = actuator(&script, mode, false);
    let result = actuator.evict(&pod_ref(), &eviction(), attempt(false)).await;
    let sent = script.sent();
    assert!(
        sent.len() <= scripted,
        "a scripted reply for every request: {sent:#?}"
    );
    for request in &sent {
        let uid = if request.method == "PATCH" {
            &request.body["metadata"]["uid"]
        } else if request.line().ends_with("/eviction") {
            &request.body["deleteOptions"]["preconditions"]["uid"]
        } else if request.method == "DELETE" {
            &request.body["preconditions"]["uid"]
        } else {
            continue;
        };
        assert_eq!(uid, UID, "{request:?}");
    }
    (result, sent.iter().map(Sent::line).collect())
}

/// A 409 is "done" only when a UID precondition failed (both wordings of the API server); any
/// other conflict, on the status PATCH or the DELETE, is an error that is retried.
#[tokio::test]
async fn only_a_uid_precondition_conflict_means_done() {
    let modified = format!(
        "Operation cannot be fulfilled on pods \"{POD}\": the object has been modified; please \
         apply your changes to the latest version and try again"
    );
    let storage_uid = format!(
        "Operation cannot be fulfilled on pods \"{POD}\": Precondition failed: UID in \
         precondition: {UID}, UID in object meta: uid-2"
    );
    let delete_uid = format!(
        "Operation cannot be fulfilled on Pod \"{POD}\": the UID in the precondition ({UID}) does \
         not match the UID in record (uid-2). The object might have been deleted and then recreated"
    );
    let live = || Reply::ok(&live_pod(UID));
    let delete = EvictionMode::Delete;
    let (result, requests) = evict_with(vec![Reply::conflict(&modified)], delete).await;
    let error = result.expect_err("a modified object is retried");
    assert!(matches!(error, Error::PatchPodCondition { .. }), "{error:?}");
    assert_eq!(error.refusal(), Refusal::Conflict);
    assert_eq!(
        requests,
        [format!("PATCH /api/v1/namespaces/{NS}/pods/{POD}/status")]
    );

    let (result, _) = evict_with(vec![live(), Reply::conflict(&modified)], delete).await;
    let error = result.expect_err("a conflicting DELETE is retried");
    assert!(matches!(error, Error::DeletePod { .. }), "{error:?}");
    assert_eq!(error.refusal(), Refusal::Conflict);

    // The status PATCH of a pod whose name now has another UID (what the API server answers).
    let (result, requests) = evict_with(vec![Reply::other_uid()], delete).await;
    assert_eq!(result.expect("done"), Outcome::NotNeeded);
    assert_eq!(requests.len(), 1, "no DELETE after the PATCH met another UID");
    // Any other 422 is an error.
    let invalid = Reply::failure(
        422,
        "Invalid",
        &format!("Pod \"{POD}\" is invalid"),
        json!({"causes": [{"reason": "FieldValueInvalid", "field": "status.conditions"}]}),
    );
    let (result, _) = evict_with(vec![invalid], delete).await;
    assert!(
        matches!(result, Err(Error::PatchPodCondition { .. })),
        "{result:?}"
    );

    for message in [&storage_uid, &delete_uid] {
        let (result, requests) = evict_with(vec![Reply::conflict(message)], delete).await;
        assert_eq!(result.expect("done"), Outcome::NotNeeded, "{message}");
        assert_eq!(requests.len(), 1, "no DELETE after the PATCH precondition failed");
        let (result, _) = evict_with(vec![live(), Reply::conflict(message)], delete).await;
        assert_eq!(result.expect("done"), Outcome::NotNeeded, "{message}");
        let (result, _) = evict_with(vec![live(), Reply::conflict(message)], EvictionMode::Evict).await;
        assert_eq!(result.expect("done"), Outcome::NotNeeded, "{message}");
    }
}

/// In evict mode only a 429 naming the `DisruptionBudget` cause is a budget refusal; a 429 from
/// load shedding (plain text, `Retry-After` header only) is a throttled error, and both carry the
/// server's wait.
#[tokio::test]
async fn throttling_is_not_reported_as_a_disruption_budget() {
    let live = || Reply::ok(&live_pod(UID));
    let evict_mode = EvictionMode::Evict;
    let budget = Reply::failure(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
        json!({"causes": [{"reason": "DisruptionBudget",
                           "message": "The disruption budget keep-one needs 1 healthy pods and has 1 currently"}],
               "retryAfterSeconds": 10}),
    );
    let (result, requests) = evict_with(vec![live(), budget], evict_mode).await;
    assert_eq!(
        result.expect("blocked"),
        Outcome::Blocked {
            retry_after: Some(Duration::from_secs(10))
        }
    );
    assert_eq!(
        requests[1],
        format!("POST /api/v1/namespaces/{NS}/pods/{POD}/eviction")
    );

    let (result, _) = evict_with(vec![live(), Reply::shed()], evict_mode).await;
    let error = result.expect_err("throttling is an error, not a budget");
    assert!(matches!(error, Error::EvictPod { .. }), "{error:?}");
    assert_eq!(error.refusal(), Refusal::Throttled);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(
        matches!(&error, Error::EvictPod { source: kube::Error::Api(s), .. }
                 if s.message == "Too many requests, please try again later."),
        "{error:?}"
    );

    // The same on the status patch and in delete mode.
    let (result, _) = evict_with(vec![Reply::shed()], EvictionMode::Delete).await;
    let error = result.expect_err("throttled PATCH");
    assert_eq!((error.verb(), error.refusal()), ("patch", Refusal::Throttled));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

/// Queued Events are all attempted before `flush_events` returns; each failed publication is
/// counted. The API server here is a closed port, so every attempt fails at once.
#[tokio::test]
async fn flush_waits_for_every_queued_event() {
    let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let actuator = Actuator::new(client, "test", EvictionMode::Delete, false, None, metrics);
    for i in 0..5 {
        actuator.pod_eviction_cancelled(&PodRef::new("ns", format!("pod-{i}"), "uid"));
    }
    assert!(actuator.flush_events(Duration::from_secs(30)).await);
    assert_eq!(actuator.backlog.pending.load(Ordering::SeqCst), 0);
    let text = metrics::encode(&registry);
    assert!(
        text.contains("api_errors_total{verb=\"create_event\"} 5"),
        "{text}"
    );
    // Nothing queued: returns at once.
    assert!(actuator.flush_events(Duration::from_millis(1)).await);
}

/// A rule whose selector has fields this controller does not understand gets one Warning Event
/// that names the fields and says that the rule selects nothing here.
#[tokio::test]
async fn unknown_selector_fields_post_one_warning_event_for_the_rule() {
    let script = Script::new([]);
    let actuator = actuator(&script, EvictionMode::Delete, false);
    actuator.rule_selector_not_understood(
        &RuleRef::new(RULE, RULE_UID),
        &["spec.deviceSelector.futureField".to_owned()],
    );
    assert!(actuator.flush_events(Duration::from_secs(10)).await);
    assert_eq!(script.sent(), Vec::new(), "only the Event is written");
    let events = script.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.method, "POST");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "UnknownDeviceSelectorFields");
    assert_eq!(event.body["action"], "Select");
    assert_eq!(
        event.body["note"],
        "The device selector has fields this controller does not understand \
         (spec.deviceSelector.futureField); the rule selects no device and evicts no pod until \
         the controller is upgraded."
    );
    assert_eq!(event.body["reportingController"], CONTROLLER_NAME);
    assert_eq!(
        event.body["regarding"],
        json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "name": RULE, "uid": RULE_UID})
    );
}

/// A burst of Events far beyond one publisher's queue (2 500 pods' Events queued without a
/// pause, as a bulk eviction does) is spread over the publishers by object and every one is
/// written, none dropped; an object's Events stay with one publisher, in order, so a repeated one
/// becomes a series (a POST, then a PATCH of it).
#[tokio::test]
async fn a_burst_of_events_beyond_one_queue_is_all_published() {
    let script = Script::new([]);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let actuator = Actuator::new(
        script.client(),
        "replica-1",
        EvictionMode::Delete,
        false,
        None,
        metrics,
    );
    let repeated = PodRef::new(NS, "repeated", "uid-repeated");
    actuator.pod_eviction_cancelled(&repeated);
    for i in 0..2500 {
        actuator.pod_eviction_cancelled(&PodRef::new(NS, format!("pod-{i}"), format!("uid-{i}")));
    }
    actuator.pod_eviction_cancelled(&repeated);
    assert!(actuator.flush_events(Duration::from_secs(60)).await);
    let text = metrics::encode(&registry);
    assert!(!text.contains("event_queue_full"), "{text}");
    let events = script.events();
    assert_eq!(events.len(), 2502);
    let of_repeated: Vec<&str> = events
        .iter()
        .filter(|e| e.body["regarding"]["name"] == "repeated" || e.uri.contains("/events/repeated."))
        .map(|e| e.method.as_str())
        .collect();
    assert_eq!(of_repeated, ["POST", "PATCH"], "one series, in order");
}

/// An Event that cannot be queued because the publisher task is gone is counted and logged as
/// such, not as a full queue.
#[test]
fn a_stopped_event_publisher_is_not_reported_as_a_full_queue() {
    let script = Script::new([]);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // The publisher task lives on a runtime that is then shut down: it is gone, as after a panic.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let actuator = runtime.block_on(async {
        Actuator::new(
            script.client(),
            "replica-1",
            EvictionMode::Delete,
            false,
            Some(device_taint_rule_resource("v1")),
            metrics,
        )
    });
    drop(runtime);
    actuator.rule_selector_not_understood(&RuleRef::new(RULE, RULE_UID), &["x".to_owned()]);
    let text = metrics::encode(&registry);
    assert!(
        text.contains(
            "device_taint_eviction_controller_skipped_objects_total{kind=\"events\",reason=\"event_publisher_closed\"} 1\n"
        ),
        "{text}"
    );
    assert!(!text.contains("event_queue_full"), "{text}");
}

/// The Event body written from borrowed fields is the JSON of k8s-openapi's Event with the same
/// fields: with and without a note, a related object and a replica name; the event time with six
/// fractional digits, cut (not rounded) from nanoseconds, and whole seconds still with six.
#[test]
fn new_event_body_is_the_openapi_event() {
    let reference = pod_reference(&pod_ref());
    let related = ObjectReference {
        kind: Some("DeviceTaintRule".into()),
        name: Some("rule".into()),
        ..ObjectReference::default()
    };
    for (nanos, note, secondary, instance) in [
        (
            1_780_000_000_123_456_789_i128,
            Some("Marking for deletion"),
            None,
            Some("replica-1"),
        ),
        (1_780_000_000_000_000_000, None, Some(related.clone()), None),
        (
            1_780_000_000_999_999_999,
            Some("a \"quoted\"\nnote"),
            Some(related),
            Some("r"),
        ),
    ] {
        let now = Timestamp::from_nanosecond(nanos).expect("time");
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: instance.map(Into::into),
        };
        let event = Event {
            type_: EventType::Warning,
            reason: EVICTION_REASON.into(),
            note: note.map(Into::into),
            action: "Evict".into(),
            secondary,
        };
        let expected = crate::fixtures::openapi_event(&reporter, &event, &reference, now);
        let written: Value =
            serde_json::from_slice(&event_body(&reporter, &event, &reference, now).expect("json"))
                .expect("parses");
        assert_eq!(written, serde_json::to_value(&expected).expect("json"), "{nanos}");
    }
}

/// An Event about an object reference without a namespace or a name goes to the "default"
/// namespace and is named after the reporting controller, as k8s-openapi's Event of the recorder.
#[test]
fn new_event_body_without_namespace_or_name_falls_back() {
    let reference = ObjectReference {
        kind: Some("Node".into()),
        uid: Some("uid-1".into()),
        ..ObjectReference::default()
    };
    let now = Timestamp::from_nanosecond(1_780_000_000_000_000_255).expect("time");
    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: None,
    };
    let event = Event {
        type_: EventType::Normal,
        reason: EVICTION_REASON.into(),
        note: None,
        action: "Evict".into(),
        secondary: None,
    };
    let written: Value =
        serde_json::from_slice(&event_body(&reporter, &event, &reference, now).expect("json"))
            .expect("parses");
    let expected = crate::fixtures::openapi_event(&reporter, &event, &reference, now);
    assert_eq!(written, serde_json::to_value(&expected).expect("json"));
    assert_eq!(written["metadata"]["namespace"], "default");
    assert_eq!(
        written["metadata"]["name"],
        format!("{CONTROLLER_NAME}.{:x}", now.as_nanosecond())
    );
    assert_eq!(written["reportingInstance"], CONTROLLER_NAME);
    assert_eq!(written["type"], "Normal");
    assert!(written.get("note").is_none() && written.get("related").is_none());
}
