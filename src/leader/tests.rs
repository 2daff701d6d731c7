//! Leader election against an in-memory Lease API (GET, POST, server-side apply and strategic
//! merge PATCH, with apply conflicts between holders), in real time with 2-second leases.

use std::{collections::BTreeSet, sync::Mutex};

use http::header::CONTENT_TYPE;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use serde_json::{Value, json};

use super::*;

const LEASE: &str = "test-lease";

#[derive(Default)]
struct FakeState {
    lease: Option<Value>,
    resource_version: u64,
    /// Answer every request with 500.
    failing: bool,
    /// Never answer.
    hanging: bool,
    /// Method and query of every request, in order.
    requests: Vec<(String, String)>,
}

/// The Lease part of an API server, enough for kube-lease-manager.
#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<FakeState>>);

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn status(code: u16, reason: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": reason, "reason": reason, "code": code}),
    )
}

fn now_micro() -> Value {
    serde_json::to_value(MicroTime(Timestamp::now())).expect("time")
}

impl FakeApi {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("fake state")
    }

    fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.handle(request).await) }
        });
        Client::new(service, "default")
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = request.into_body().collect_bytes().await.expect("request body");
        if self.state().hanging {
            std::future::pending::<()>().await;
        }
        let mut state = self.state();
        state.requests.push((method.clone(), query));
        if state.failing {
            return status(500, "InternalError");
        }
        let collection = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
        match (method.as_str(), path.strip_prefix(collection)) {
            ("GET", Some(name)) if name == format!("/{LEASE}") => match &state.lease {
                Some(lease) => json_response(200, lease),
                None => status(404, "NotFound"),
            },
            ("POST", Some("")) => {
                if state.lease.is_some() {
                    return status(409, "AlreadyExists");
                }
                let mut lease: Value = serde_json::from_slice(&body).expect("lease body");
                state.resource_version += 1;
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.lease = Some(lease.clone());
                json_response(201, &lease)
            }
            ("PATCH", Some(name)) if name == format!("/{LEASE}") => {
                let changes: Value = serde_json::from_slice(&body).expect("patch body");
                state.resource_version += 1;
                let version = state.resource_version;
                let Some(lease) = state.lease.as_mut() else {
                    return status(404, "NotFound");
                };
                let current = lease["spec"]["holderIdentity"].as_str().map(str::to_owned);
                let wanted = changes["spec"]["holderIdentity"].as_str().map(str::to_owned);
                // Server-side apply: another manager owns a different holder value.
                if content_type.contains("apply-patch")
                    && current.is_some()
                    && wanted.is_some()
                    && current != wanted
                {
                    return status(409, "Conflict");
                }
                if !lease["spec"].is_object() {
                    lease["spec"] = json!({});
                }
                for (key, value) in changes["spec"].as_object().into_iter().flatten() {
                    let spec = lease["spec"].as_object_mut().expect("spec object");
                    if value.is_null() {
                        spec.remove(key);
                    } else {
                        spec.insert(key.clone(), value.clone());
                    }
                }
                lease["metadata"]["resourceVersion"] = json!(version.to_string());
                json_response(200, lease)
            }
            _ => status(404, "NotFound"),
        }
    }

    fn hold(&self, identity: &str) {
        let mut state = self.state();
        state.lease = Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": "default", "resourceVersion": "1"},
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": 2,
                     "acquireTime": now_micro(), "renewTime": now_micro()}
        }));
    }

    fn renew(&self) {
        if let Some(lease) = self.state().lease.as_mut() {
            lease["spec"]["renewTime"] = now_micro();
        }
    }

    fn holder(&self) -> Option<String> {
        let state = self.state();
        state.lease.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    fn renew_time(&self) -> Option<SystemTime> {
        let state = self.state();
        let value = state.lease.as_ref()?["spec"]["renewTime"].clone();
        let time: MicroTime = serde_json::from_value(value).ok()?;
        Some(SystemTime::from(time.0))
    }

    fn verbs(&self) -> BTreeSet<String> {
        self.state().requests.iter().map(|(m, _)| m.clone()).collect()
    }
}

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "default".to_owned(),
        lease_name: LEASE.to_owned(),
        identity: identity.to_owned(),
        duration_secs: 2,
    }
}

async fn becomes(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) -> bool {
    tokio::time::timeout(within, rx.wait_for(|v| *v == want))
        .await
        .is_ok()
}

#[tokio::test]
async fn acquires_a_missing_lease_and_releases_it() {
    let api = FakeApi::default();
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(api.state().lease.is_some(), "the lease is created at start");
    assert!(becomes(&mut rx, true, Duration::from_secs(5)).await);
    assert_eq!(api.holder().as_deref(), Some("me"));

    leadership.release().await.expect("release");
    assert!(!*rx.borrow(), "false before the lease is released");
    assert_eq!(api.holder(), None, "the holder is cleared for a successor");
    assert!(rx.has_changed().is_err(), "the channel closes after release");

    let verbs = api.verbs();
    assert!(
        verbs.is_subset(&["GET", "POST", "PATCH"].map(str::to_owned).into()),
        "{verbs:?}"
    );
    let managers: BTreeSet<String> = api
        .state()
        .requests
        .iter()
        .filter(|(m, _)| m == "PATCH")
        .map(|(_, q)| q.clone())
        .collect();
    assert!(
        managers
            .iter()
            .all(|q| q.contains("fieldManager=device-taint-eviction-controller-me")),
        "{managers:?}"
    );
}

#[tokio::test]
async fn standby_waits_for_a_live_holder_then_takes_over() {
    let api = FakeApi::default();
    api.hold("other");
    let renewer = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                api.renew();
            }
        })
    };
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(
        !becomes(&mut rx, true, Duration::from_millis(2500)).await,
        "never leads while the holder renews"
    );
    renewer.abort();
    assert!(
        becomes(&mut rx, true, Duration::from_secs(6)).await,
        "takes over after expiry"
    );
    assert_eq!(api.holder().as_deref(), Some("me"));
    leadership.release().await.expect("release");
}

#[tokio::test]
async fn two_replicas_never_lead_at_once() {
    let api = FakeApi::default();
    let (a, rx_a) = Leadership::start(api.client(), config("a"))
        .await
        .expect("start a");
    let (b, rx_b) = Leadership::start(api.client(), config("b"))
        .await
        .expect("start b");
    let mut someone_led = false;
    for _ in 0..60 {
        let (la, lb) = (*rx_a.borrow(), *rx_b.borrow());
        assert!(!(la && lb), "both replicas lead");
        someone_led |= la || lb;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(someone_led);
    let holder = api.holder().expect("held");
    let (winner, mut loser_rx, loser) = if holder == "a" { (a, rx_b, b) } else { (b, rx_a, a) };
    winner.release().await.expect("release winner");
    assert!(
        becomes(&mut loser_rx, true, Duration::from_secs(4)).await,
        "the standby takes over a released lease"
    );
    loser.release().await.expect("release");
}

#[tokio::test]
async fn steps_down_before_expiry_when_renewals_fail() {
    let api = FakeApi::default();
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(becomes(&mut rx, true, Duration::from_secs(5)).await);
    api.state().failing = true;
    let last_renewal = api.renew_time().expect("renewed");
    assert!(becomes(&mut rx, false, Duration::from_secs(5)).await);
    let stepped_down = SystemTime::now();
    let expiry = last_renewal + Duration::from_secs(2);
    assert!(
        stepped_down < expiry,
        "stepped down {:?} after expiry",
        stepped_down.duration_since(expiry).unwrap_or_default()
    );
    // The API server is still failing, so the lease cannot be released: a successor waits for
    // the expiry instead.
    assert!(matches!(
        leadership.release().await,
        Err(Error::ReleaseLease { .. })
    ));
}

#[tokio::test]
async fn hung_requests_time_out_and_leadership_comes_back() {
    let api = FakeApi::default();
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(becomes(&mut rx, true, Duration::from_secs(5)).await);
    api.state().hanging = true;
    assert!(becomes(&mut rx, false, Duration::from_secs(5)).await);
    api.state().hanging = false;
    assert!(
        becomes(&mut rx, true, Duration::from_secs(6)).await,
        "renews again once the API server answers"
    );
    leadership.release().await.expect("release");
}

#[tokio::test]
async fn a_deleted_lease_is_created_again() {
    let api = FakeApi::default();
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(becomes(&mut rx, true, Duration::from_secs(5)).await);
    api.state().lease = None;
    assert!(becomes(&mut rx, false, Duration::from_secs(5)).await);
    assert!(becomes(&mut rx, true, Duration::from_secs(8)).await);
    assert_eq!(api.holder().as_deref(), Some("me"));
    leadership.release().await.expect("release");
}

#[tokio::test]
async fn start_fails_clearly_when_the_lease_cannot_be_read() {
    let api = FakeApi::default();
    api.state().failing = true;
    let err = Leadership::start(api.client(), config("me"))
        .await
        .expect_err("API down");
    assert_eq!(err.to_string(), "failed to prepare lease default/test-lease");
}

#[tokio::test]
async fn invalid_configuration_is_rejected_before_any_request() {
    let api = FakeApi::default();
    let mut short = config("me");
    short.duration_secs = 1;
    assert!(matches!(
        Leadership::start(api.client(), short).await,
        Err(Error::InvalidDuration(1))
    ));
    assert!(matches!(
        Leadership::start(api.client(), config(" ")).await,
        Err(Error::EmptyIdentity)
    ));
    assert!(api.state().requests.is_empty());
}

#[tokio::test]
async fn disabled_election_always_leads() {
    let (leadership, mut rx) = Leadership::disabled();
    assert!(*rx.borrow());
    let pending = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
    assert!(pending.is_err(), "the channel neither changes nor closes");
    leadership.release().await.expect("release is a no-op");
}

#[test]
fn timings() {
    let t = Timing::new(15);
    assert_eq!((t.grace_secs, t.margin), (6, Duration::from_secs(3)));
    assert_eq!(t.request_timeout, Duration::from_secs(3));
    let t = Timing::new(2);
    assert_eq!((t.grace_secs, t.margin), (1, Duration::from_millis(500)));
    assert_eq!(t.request_timeout, Duration::from_secs(1));
    for d in 2..200 {
        let t = Timing::new(d);
        assert!(
            t.grace_secs >= 1 && t.grace_secs < d,
            "grace {} for {d}",
            t.grace_secs
        );
        assert!(t.margin < Duration::from_secs(t.grace_secs));
    }
}

#[test]
fn field_managers_are_unique_and_bounded() {
    assert_eq!(field_manager("pod-0"), "device-taint-eviction-controller-pod-0");
    let long_a = field_manager(&"a".repeat(300));
    let long_b = field_manager(&format!("{}b", "a".repeat(299)));
    assert_eq!(long_a.len(), MAX_FIELD_MANAGER_LEN);
    assert_eq!(long_b.len(), MAX_FIELD_MANAGER_LEN);
    assert_ne!(long_a, long_b);
    assert!(field_manager(&"é".repeat(100)).len() <= MAX_FIELD_MANAGER_LEN);
}

fn lease(holder: Option<&str>, renew: Option<Timestamp>, duration: Option<i32>) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                 "renewTime": renew.map(MicroTime)}
    }))
    .expect("lease")
}

#[test]
fn validity_needs_our_identity_a_renewal_and_a_duration() {
    // The API carries microseconds.
    let now = Timestamp::from_microsecond(Timestamp::now().as_microsecond()).expect("timestamp");
    let margin = Duration::from_secs(3);
    let until = valid_until(&lease(Some("me"), Some(now), Some(15)), "me", margin).expect("valid");
    assert_eq!(until, SystemTime::from(now) + Duration::from_secs(12));
    assert_eq!(
        valid_until(&lease(Some("you"), Some(now), Some(15)), "me", margin),
        None
    );
    assert_eq!(valid_until(&lease(None, Some(now), Some(15)), "me", margin), None);
    assert_eq!(
        valid_until(&lease(Some("me"), None, Some(15)), "me", margin),
        None
    );
    assert_eq!(
        valid_until(&lease(Some("me"), Some(now), None), "me", margin),
        None
    );
    assert_eq!(
        valid_until(&lease(Some("me"), Some(now), Some(-1)), "me", margin),
        None
    );
}

#[test]
fn observer_only_trusts_our_lease() {
    let (tx, rx) = watch::channel(None);
    let observer = Observer {
        lease_name: LEASE.into(),
        identity: "me".into(),
        margin: Duration::from_secs(1),
        confirmed: Arc::new(tx),
        seen: Arc::default(),
    };
    let json = |lease: &Lease| Bytes::from(serde_json::to_vec(lease).expect("json"));
    let ours = json(&lease(Some("me"), Some(Timestamp::now()), Some(15)));
    assert_eq!(
        observer.observe(ours.clone()),
        ours,
        "our own Lease is handed on as is"
    );
    assert!(rx.borrow().is_some());

    let mut other = lease(Some("you"), Some(Timestamp::now()), Some(15));
    other.metadata.name = Some("another-lease".to_owned());
    observer.observe(json(&other));
    observer.observe(Bytes::from_static(
        br#"{"kind":"Status","apiVersion":"v1","status":"Success"}"#,
    ));
    observer.observe(Bytes::from_static(b"not json"));
    assert!(
        rx.borrow().is_some(),
        "other objects leave the confirmation alone"
    );

    observer.observe(json(&lease(Some("you"), Some(Timestamp::now()), Some(15))));
    assert!(rx.borrow().is_none(), "another holder ends our confirmation");
}

/// Another holder's `renewTime` is replaced by the local time at which this process first saw
/// it, so a skewed clock on the holder's node cannot make its Lease look expired here.
#[test]
fn another_holders_renewal_counts_from_when_we_saw_it() {
    let (tx, _rx) = watch::channel(None);
    let observer = Observer {
        lease_name: LEASE.into(),
        identity: "me".into(),
        margin: Duration::from_secs(1),
        confirmed: Arc::new(tx),
        seen: Arc::default(),
    };
    let renew_time = |body: &Bytes| {
        let lease: Lease = serde_json::from_slice(body).expect("lease");
        SystemTime::from(lease.spec.and_then(|s| s.renew_time).expect("renewTime").0)
    };
    // The holder's clock is an hour behind ours.
    let skewed = Timestamp::now() - jiff_hours(1);
    let before = SystemTime::now();
    let first = observer.observe(Bytes::from(
        serde_json::to_vec(&lease(Some("you"), Some(skewed), Some(15))).expect("json"),
    ));
    let seen_at = renew_time(&first);
    assert!(seen_at >= before && seen_at <= SystemTime::now(), "{seen_at:?}");
    // The same record seen again keeps the time it was first seen.
    std::thread::sleep(Duration::from_millis(5));
    let again = observer.observe(Bytes::from(
        serde_json::to_vec(&lease(Some("you"), Some(skewed), Some(15))).expect("json"),
    ));
    assert_eq!(renew_time(&again), seen_at);
    // A renewal (a new renewTime) is a new observation.
    let renewed = observer.observe(Bytes::from(
        serde_json::to_vec(&lease(
            Some("you"),
            Some(skewed + jiff_hours(0) + jiff_secs(9)),
            Some(15),
        ))
        .expect("json"),
    ));
    assert!(renew_time(&renewed) > seen_at);
}

fn jiff_hours(n: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_hours(n)
}

fn jiff_secs(n: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(n)
}

/// A holder whose clock is far behind ours keeps renewing: its Lease never looks expired here,
/// so we never take over while it renews; once it stops, we take over after a lease duration.
#[tokio::test]
async fn a_holder_with_a_slow_clock_is_not_overthrown() {
    let api = FakeApi::default();
    api.hold("other");
    let skew = jiff_hours(1);
    let renewer = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                if let Some(lease) = api.state().lease.as_mut() {
                    lease["spec"]["renewTime"] =
                        serde_json::to_value(MicroTime(Timestamp::now() - skew)).expect("time");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let (leadership, mut rx) = Leadership::start(api.client(), config("me"))
        .await
        .expect("start");
    assert!(
        !becomes(&mut rx, true, Duration::from_millis(4500)).await,
        "took over from a live holder whose clock is behind"
    );
    assert_eq!(api.holder().as_deref(), Some("other"));
    renewer.abort();
    assert!(
        becomes(&mut rx, true, Duration::from_secs(6)).await,
        "takes over once the holder stops renewing"
    );
    leadership.release().await.expect("release");
}
