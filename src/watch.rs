//! The watches: the one list of watched kinds, and for each kind how its API objects become views
//! and index updates (apply, delete, reset after a re-list). This is the only module that turns
//! API objects into views; the controller runs [`watch`] for every kind, and `explain` feeds a
//! one-shot listing through [`reset`].

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::Debug,
    marker::PhantomData,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, MapAccess, Unexpected, Visitor},
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{
    admin::Readiness,
    client::WatchProgress,
    index::State,
    k8s::{self, DeviceTaintRule, ResourceClaim, ResourceSlice, Timestamp, WatchedPod},
    metrics::Metrics,
    view::{ClaimView, Invalid, ObjectName, PodView, RuleView, SliceView, Time},
};

/// Every watched kind, by plural: each initial list must arrive before anything is deleted, and
/// each has a watch-restart counter from the start.
pub const KINDS: [&str; 4] = [
    WatchedPod::PLURAL,
    ResourceClaim::PLURAL,
    ResourceSlice::PLURAL,
    DeviceTaintRule::PLURAL,
];

/// A watched kind: how one of its objects becomes a view, and how views and deletions update the
/// index.
pub trait Kind: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static {
    /// The resource's plural, as in [`KINDS`], metric labels and readiness.
    const PLURAL: &'static str;
    /// What the index keeps of one object.
    type View: Send;

    /// The view of an object; an invalid object is skipped by the caller.
    ///
    /// # Errors
    /// When a field the view needs is missing or malformed.
    fn project(&self) -> Result<Self::View, Invalid>;

    /// An object was added or changed. `now` stands in for a missing `timeAdded` (SPEC D2).
    fn apply(state: &mut State, view: Self::View, now: Time);

    /// The object with this metadata was deleted (or can no longer be read).
    fn delete(meta: &k8s::ObjectMeta, state: &mut State);

    /// A complete list of the kind: what it does not contain is gone (SPEC D3).
    fn reset(state: &mut State, views: Vec<Self::View>, now: Time);

    /// Whether a listed object's view is kept until the list is complete: the views the index
    /// does not store are dropped as they arrive, not held for the whole list.
    fn kept(_view: &Self::View) -> bool {
        true
    }
}

fn object_name(meta: &k8s::ObjectMeta) -> ObjectName {
    ObjectName::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A pod projected for the index: its name, UID and view (`None` when it uses no claim, so that
/// whatever was stored under its name is dropped).
pub type PodEntry = (ObjectName, String, Option<PodView>);

impl Kind for WatchedPod {
    const PLURAL: &'static str = "pods";
    type View = PodEntry;

    fn project(&self) -> Result<PodEntry, Invalid> {
        let view = PodView::from_api(self)?;
        Ok((
            object_name(&self.metadata),
            self.metadata.uid.clone().unwrap_or_default(),
            view,
        ))
    }

    fn apply(state: &mut State, (name, _, view): PodEntry, _: Time) {
        state.apply_pod(&name, view);
    }

    fn delete(meta: &k8s::ObjectMeta, state: &mut State) {
        state.delete_pod(&object_name(meta), meta.uid.as_deref().unwrap_or_default());
    }

    fn reset(state: &mut State, pods: Vec<PodEntry>, _: Time) {
        state.reset_pods(pods.into_iter().filter(Self::kept).collect());
    }

    /// Pods without claims are not stored, so a list only needs the ones with claims (at 50 000
    /// pods, a tenth with claims, the others would hold ~10 MiB until the list is complete).
    fn kept((_, _, view): &PodEntry) -> bool {
        view.is_some()
    }
}

impl Kind for ResourceClaim {
    const PLURAL: &'static str = "resourceclaims";
    type View = ClaimView;

    fn project(&self) -> Result<ClaimView, Invalid> {
        ClaimView::from_api(self)
    }

    fn apply(state: &mut State, view: ClaimView, _: Time) {
        state.apply_claim(view);
    }

    fn delete(meta: &k8s::ObjectMeta, state: &mut State) {
        state.delete_claim(&object_name(meta), meta.uid.as_deref().unwrap_or_default());
    }

    fn reset(state: &mut State, views: Vec<ClaimView>, _: Time) {
        state.reset_claims(views);
    }
}

impl Kind for ResourceSlice {
    const PLURAL: &'static str = "resourceslices";
    type View = SliceView;

    fn project(&self) -> Result<SliceView, Invalid> {
        SliceView::from_api(self)
    }

    fn apply(state: &mut State, view: SliceView, now: Time) {
        state.apply_slice(view, now);
    }

    fn delete(meta: &k8s::ObjectMeta, state: &mut State) {
        state.delete_slice(meta.name.as_deref().unwrap_or_default());
    }

    fn reset(state: &mut State, views: Vec<SliceView>, now: Time) {
        state.reset_slices(views, now);
    }
}

impl Kind for DeviceTaintRule {
    const PLURAL: &'static str = "devicetaintrules";
    type View = RuleView;

    fn project(&self) -> Result<RuleView, Invalid> {
        RuleView::from_api(self)
    }

    fn apply(state: &mut State, view: RuleView, now: Time) {
        state.apply_rule(view, now);
    }

    fn delete(meta: &k8s::ObjectMeta, state: &mut State) {
        state.delete_rule(
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default(),
        );
    }

    fn reset(state: &mut State, views: Vec<RuleView>, now: Time) {
        state.reset_rules(views, now);
    }
}

/// An object of a watched kind as the API server sent it: decoded, or why it could not be, with
/// what could be read of its metadata. Lists and watches decode through this type item by item,
/// so one undecodable object is skipped and counted instead of failing its whole list page (the
/// kind would never sync) or vanishing from a watch stream. Read from `serde_json` (kube reads
/// every list answer and watch line with it), an item is taken as its raw JSON text and decoded
/// from that; only an object that does not decode is read again, as a JSON value, for what can
/// be read of its metadata. Where serde has buffered the item first (a watch line that names its
/// object before its type: the API server names the type first), it is read as a JSON value and
/// decoded from that. `cargo bench --bench core -- decode_pod` compares the price with decoding
/// a `WatchedPod` directly.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    /// The object.
    Ok(K),
    /// An object that does not decode as `K`.
    Bad {
        /// Its name, namespace, UID and resourceVersion as far as they could be read (the
        /// watcher needs the resourceVersion to resume). Boxed: the rare case stays small.
        meta: Box<k8s::ObjectMeta>,
        /// The decoding error.
        error: String,
    },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(RAW_JSON, DecodedVisitor(PhantomData))
    }
}

/// The name under which `serde_json` hands out an item's raw text (as its `RawValue` asks for
/// it): a map of one entry, this name to the text. Any other deserializer, and `serde_json`
/// for buffered content, visits a newtype instead, read as a JSON value.
const RAW_JSON: &str = "$serde_json::private::RawValue";

struct DecodedVisitor<K>(PhantomData<K>);

impl<'de, K: DeserializeOwned> Visitor<'de> for DecodedVisitor<K> {
    type Value = Decoded<K>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if map.next_key::<String>()?.as_deref() != Some(RAW_JSON) {
            return Err(serde::de::Error::invalid_type(Unexpected::Map, &self));
        }
        let text: String = map.next_value()?;
        Ok(Decoded::of(serde_json::from_str(&text), || {
            serde_json::from_str(&text)
                .map_or_else(|_| k8s::ObjectMeta::default(), |value| readable_meta(&value))
        }))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(Decoded::of(K::deserialize(&value), || readable_meta(&value)))
    }
}

impl<K> Decoded<K> {
    /// The object, or why it did not decode with what `meta` reads of it.
    fn of(decoded: Result<K, serde_json::Error>, meta: impl FnOnce() -> k8s::ObjectMeta) -> Self {
        match decoded {
            Ok(object) => Self::Ok(object),
            Err(error) => Self::Bad {
                meta: Box::new(meta()),
                error: error.to_string(),
            },
        }
    }
}

/// What can be read of an undecodable object's metadata: each of name, namespace, uid and
/// resourceVersion that is a string.
fn readable_meta(object: &serde_json::Value) -> k8s::ObjectMeta {
    let field = |name: &str| object["metadata"][name].as_str().map(str::to_owned);
    k8s::ObjectMeta {
        name: field("name"),
        namespace: field("namespace"),
        uid: field("uid"),
        resource_version: field("resourceVersion"),
        ..k8s::ObjectMeta::default()
    }
}

impl<K: kube::Resource> kube::Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &k8s::ObjectMeta {
        match self {
            Self::Ok(object) => object.meta(),
            Self::Bad { meta, .. } => meta,
        }
    }

    fn meta_mut(&mut self) -> &mut k8s::ObjectMeta {
        match self {
            Self::Ok(object) => object.meta_mut(),
            Self::Bad { meta, .. } => meta,
        }
    }
}

/// Skips an object that could not be decoded: logged by reference and counted, never fatal.
fn skip_undecodable(metrics: &Metrics, kind: &str, meta: &k8s::ObjectMeta, error: &str) {
    metrics.skipped(kind, "undecodable");
    log_undecodable(kind, meta, error);
}

/// Logs an object of `kind` that could not be decoded ([`Decoded::Bad`]) by reference, with why.
pub fn log_undecodable(kind: &str, meta: &k8s::ObjectMeta, error: &str) {
    warn!(
        kind,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        uid = meta.uid.as_deref().unwrap_or_default(),
        %error,
        "skipping an object that cannot be decoded"
    );
}

/// Replaces what `state` holds of kind `K` with `objects`, a complete list read at `now`, as a
/// watch does after its initial list. Objects that cannot be projected are handed to `skip`.
pub fn reset<K: Kind>(state: &mut State, objects: &[K], now: Time, mut skip: impl FnMut(&Invalid)) {
    let views = objects
        .iter()
        .filter_map(|o| o.project().map_err(|invalid| skip(&invalid)).ok())
        .collect();
    K::reset(state, views, now);
}

/// Where a watch delivers its updates: the shared state and the metrics.
pub trait Sink: Send + Sync + 'static {
    /// Runs `update` on the state and acts on the changes it made.
    fn update(&self, update: impl FnOnce(&mut State));
    /// The metrics to count restarts and skipped objects in.
    fn metrics(&self) -> &Metrics;
}

/// Skips an object that cannot be projected: logged and counted, never fatal.
fn skip(metrics: &Metrics, kind: &str, invalid: &Invalid) {
    metrics.skipped(kind, invalid.reason());
    warn!(kind, object = %invalid.object, field = invalid.field, "skipping malformed object");
}

/// An object was added or changed. One that no longer projects is skipped and what the index held
/// of it is removed: an old view must not stay in force (nor a new object's be guessed).
fn apply<K: Kind, S: Sink>(sink: &S, obj: &K, now: Time) {
    match obj.project() {
        Ok(view) => sink.update(|state| K::apply(state, view, now)),
        Err(invalid) => {
            skip(sink.metrics(), K::PLURAL, &invalid);
            sink.update(|state| K::delete(obj.meta(), state));
        }
    }
}

/// The default `--watch-idle-timeout`: the server-side timeout kube's watcher asks for (290 s),
/// after which a healthy server ends the watch, plus a margin.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// When a watch counts as silent and is restarted (`--watch-idle-timeout`).
#[derive(Clone, Debug)]
pub struct Idle {
    /// How long a watch may receive nothing at all, not even a bookmark.
    pub timeout: Duration,
    /// What the client's watches received, bookmarks included (kube's watcher hides those).
    pub progress: WatchProgress,
    /// Where each watch's loop reports that it turns, for the watchdog.
    pub beats: Beats,
}

/// When each watch's loop last turned (started, handled an event, checked its idle timer, which
/// it does at least every idle timeout), by kind. A loop that stops turning for longer is stuck
/// (e.g. blocked on the state), which the controller's watchdog reports on `/healthz`.
#[derive(Clone, Debug, Default)]
pub struct Beats {
    last: Arc<Mutex<HashMap<&'static str, Instant>>>,
}

impl Beats {
    /// The loop of `kind`'s watch turns now.
    pub fn beat(&self, kind: &'static str) {
        self.lock().insert(kind, Instant::now());
    }

    /// The watch whose loop turned least recently, and when.
    #[must_use]
    pub fn stalest(&self) -> Option<(&'static str, Instant)> {
        self.lock()
            .iter()
            .map(|(kind, at)| (*kind, *at))
            .min_by_key(|(_, at)| *at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Instant>> {
        // A map of instants cannot be left half-updated: a poisoned lock is still consistent.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Watches every object of kind `K` through `api` and applies the events to the state; marks the
/// kind synced in `readiness` after each initial list, received as `initial` says (a server that
/// refuses streaming lists is listed in pages from then on). Runs until the stream ends (never,
/// normally); a failed watch is retried with kube's default backoff, and a watch that receives
/// nothing, not even a bookmark, for `idle.timeout` is dropped and started afresh (a new list,
/// then a new watch): a connection that went silent without closing must not leave the index
/// stale for ever.
pub async fn watch<K: Kind, S: Sink>(
    sink: Arc<S>,
    readiness: Readiness,
    api: Api<Decoded<K>>,
    idle: Idle,
    initial: InitialList,
) {
    let kind = K::PLURAL;
    let mut streaming = initial == InitialList::Streaming;
    loop {
        let config = if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default()
        };
        let mut stream = std::pin::pin!(watcher(api.clone(), config).default_backoff());
        let mut listing: Option<Vec<K::View>> = None;
        // Last sign of life of this watcher: its start, an event, or anything its requests received.
        let mut last = Instant::now();
        loop {
            idle.beats.beat(kind);
            let alive = |last: Instant| idle.progress.last(kind).map_or(last, |p| p.max(last));
            let event = tokio::select! {
                event = stream.next() => event,
                () = tokio::time::sleep_until(alive(last) + idle.timeout) => {
                    if Instant::now() < alive(last) + idle.timeout {
                        continue;
                    }
                    sink.metrics().watch_idle_restart(kind);
                    warn!(
                        kind,
                        idle_timeout = ?idle.timeout,
                        "watch received nothing, not even a bookmark, within --watch-idle-timeout; restarting it"
                    );
                    break;
                }
            };
            let Some(event) = event else {
                return;
            };
            last = Instant::now();
            if streaming
                && let Err(error) = &event
                && refuses_streaming(error)
            {
                warn!(kind, %error, "the API server refuses streaming lists; listing in pages instead");
                streaming = false;
                break;
            }
            handle(&*sink, &readiness, &mut listing, event);
        }
    }
}

/// How each watch receives its initial state (`--initial-list`; the variants' doc comments are its
/// `--help` text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// One watch streams every object, then goes on watching (`sendInitialEvents`): no pages, and
    /// the API server serves it from its watch cache. Where the server refuses it (the WatchList
    /// feature off), paged lists instead.
    Streaming,
    /// Lists in pages of 500, then a watch.
    Paged,
}

/// Whether `error` is the API server refusing a streaming list: one with the WatchList feature
/// off answers the watch with 422 Invalid ("sendInitialEvents is forbidden"); 400 from a proxy
/// that does not know the parameter.
fn refuses_streaming(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if matches!(status.code, 400 | 422))
}

/// Applies one item of a watch stream.
fn handle<K: Kind, S: Sink>(
    sink: &S,
    readiness: &Readiness,
    listing: &mut Option<Vec<K::View>>,
    event: Result<watcher::Event<Decoded<K>>, watcher::Error>,
) {
    let kind = K::PLURAL;
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            sink.metrics().watch_restart(kind);
            warn!(kind, %error, "watch failed; retrying with backoff");
            return;
        }
    };
    let now = Timestamp::now();
    match event {
        watcher::Event::Init => *listing = Some(Vec::new()),
        watcher::Event::InitApply(Decoded::Ok(obj)) => match obj.project() {
            Ok(view) if K::kept(&view) => listing.get_or_insert_with(Vec::new).push(view),
            Ok(_) => {}
            Err(invalid) => skip(sink.metrics(), kind, &invalid),
        },
        watcher::Event::InitApply(Decoded::Bad { meta, error }) => {
            skip_undecodable(sink.metrics(), kind, &meta, &error);
        }
        watcher::Event::InitDone => {
            let views = listing.take().unwrap_or_default();
            info!(kind, objects = views.len(), "initial list received");
            sink.update(|state| K::reset(state, views, now));
            readiness.mark_synced(kind);
        }
        watcher::Event::Apply(Decoded::Ok(obj)) => apply(sink, &obj, now),
        // An object that became undecodable is removed from the index, not kept stale.
        watcher::Event::Apply(Decoded::Bad { meta, error }) => {
            skip_undecodable(sink.metrics(), kind, &meta, &error);
            sink.update(|state| K::delete(&meta, state));
        }
        watcher::Event::Delete(obj) => sink.update(|state| K::delete(kube::Resource::meta(&obj), state)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{Request, Response};
    use http_body_util::{BodyExt as _, StreamBody};
    use kube::client::{Body, ClientBuilder};
    use prometheus_client::registry::Registry;
    use tokio_util::bytes::Bytes;

    use super::*;
    use crate::{client::WatchProgressLayer, fixtures::t};

    struct TestSink {
        state: Mutex<State>,
        metrics: Metrics,
    }

    impl Sink for TestSink {
        fn update(&self, update: impl FnOnce(&mut State)) {
            update(&mut self.state.lock().expect("state"));
        }

        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
    }

    fn slice(driver: &str) -> ResourceSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "uid": "u"},
            "spec": {
                "driver": driver, "pool": {"name": "p", "generation": 1, "resourceSliceCount": 1},
                "nodeName": "n",
                "devices": [{"name": "dev", "taints": [{"key": "k", "effect": "NoExecute"}]}]
            }
        }))
        .expect("slice")
    }

    /// An update that no longer projects removes the old view instead of keeping it in force.
    #[test]
    fn update_that_fails_to_project_removes_the_stale_view() {
        let sink = TestSink {
            state: Mutex::new(State::new()),
            metrics: Metrics::register(&mut Registry::default()),
        };
        let device = crate::view::DeviceId::new("d", "p", "dev");
        apply(&sink, &slice("d"), t(0));
        assert_eq!(sink.state.lock().expect("state").device_taints(&device).len(), 1);
        apply(&sink, &slice(""), t(1));
        assert!(
            sink.state
                .lock()
                .expect("state")
                .device_taints(&device)
                .is_empty()
        );
    }

    /// A listed pod without claims is dropped as it arrives, not held until the list is complete
    /// (at 50 000 pods, a tenth with claims, the others held ~10 MiB at the peak of start-up); the
    /// pods with claims are indexed once the list is.
    #[test]
    fn listed_pods_without_claims_are_not_held_until_the_list_is_complete() {
        let sink = sink();
        let readiness = Readiness::new(&[WatchedPod::PLURAL]);
        let pod = |name: &str, claims: bool| -> WatchedPod {
            let mut pod = serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                "spec": {"containers": []},
            });
            if claims {
                pod["spec"]["resourceClaims"] =
                    serde_json::json!([{"name": "gpu", "resourceClaimName": "c"}]);
            }
            serde_json::from_value(pod).expect("pod")
        };
        let mut listing = None;
        let event = |e| Ok::<_, watcher::Error>(e);
        handle(&*sink, &readiness, &mut listing, event(watcher::Event::Init));
        for i in 0..10 {
            let listed = watcher::Event::InitApply(Decoded::Ok(pod(&format!("p{i}"), i == 3)));
            handle(&*sink, &readiness, &mut listing, event(listed));
        }
        assert_eq!(
            listing.as_ref().map(Vec::len),
            Some(1),
            "only the pod with a claim is held"
        );
        handle(&*sink, &readiness, &mut listing, event(watcher::Event::InitDone));
        assert!(readiness.is_ready());
        let state = sink.state.lock().expect("state");
        assert_eq!(state.sizes().pods, 1);
    }

    /// How the scripted API server answers a watch after the (empty) list.
    #[derive(Clone, Copy)]
    enum WatchBody {
        /// Answers, then sends nothing and never closes (a connection that went silent).
        Silent,
        /// A bookmark every minute and nothing else (a quiet cluster).
        Bookmarks,
    }

    /// An API server for ResourceSlices: every list is empty, every watch answers as `body`.
    /// Returns the client (its watches reporting to `progress`) and the requests it received.
    fn slice_server(body: WatchBody, progress: &WatchProgress) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let watching = request.uri().query().is_some_and(|q| q.contains("watch=true"));
            log.lock()
                .expect("sent")
                .push(if watching { "watch" } else { "list" }.to_owned());
            async move {
                let body = if watching {
                    let frames = futures::stream::unfold(0_u64, move |n| async move {
                        if matches!(body, WatchBody::Silent) {
                            return std::future::pending().await;
                        }
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        let line = serde_json::json!({"type": "BOOKMARK", "object": {
                            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                            "metadata": {"resourceVersion": (n + 2).to_string()}}});
                        let frame = http_body::Frame::data(Bytes::from(format!("{line}\n")));
                        Some((Ok::<_, std::convert::Infallible>(frame), n + 1))
                    });
                    StreamBody::new(frames).boxed_unsync()
                } else {
                    let list = serde_json::json!({"apiVersion": "resource.k8s.io/v1",
                        "kind": "ResourceSliceList", "metadata": {"resourceVersion": "1"}, "items": []});
                    http_body_util::Full::new(Bytes::from(list.to_string()))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                };
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        });
        let client = ClientBuilder::new(crate::client::boxed(service), "default")
            .with_layer(&WatchProgressLayer::new(progress.clone()))
            .build();
        (client, sent)
    }

    /// A ResourceSlice of its own pool with one `NoExecute`-tainted device `dev`.
    fn slice_json(name: &str, resource_version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": resource_version},
            "spec": {
                "driver": "d", "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                "nodeName": "n",
                "devices": [{"name": "dev", "taints": [{"key": "k", "effect": "NoExecute"}]}]
            }
        })
    }

    /// A ResourceSlice that does not decode: `spec.devices` is not a list.
    fn undecodable_slice_json(name: &str, resource_version: &str) -> serde_json::Value {
        let mut slice = slice_json(name, resource_version);
        slice["spec"]["devices"] = serde_json::json!("not-a-list");
        slice
    }

    /// A watch line decodes whichever of its type and object comes first: from the object's raw
    /// text (type first, as the API server writes it) or from serde's buffered copy of it (object
    /// first). In both, an undecodable object is told apart with its metadata.
    #[test]
    fn watch_lines_decode_in_either_order() {
        let decode = |line: String| -> (bool, Option<String>, Option<String>) {
            let event: kube::core::WatchEvent<Decoded<ResourceSlice>> =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let kube::core::WatchEvent::Added(object) = event else {
                panic!("{line}: not an ADDED event")
            };
            let meta = kube::Resource::meta(&object);
            (
                matches!(object, Decoded::Ok(_)),
                meta.name.clone(),
                meta.resource_version.clone(),
            )
        };
        for (object, decodes) in [
            (slice_json("a", "1"), true),
            (undecodable_slice_json("a", "1"), false),
        ] {
            let type_first = format!(r#"{{"type":"ADDED","object":{object}}}"#);
            let object_first = format!(r#"{{"object":{object},"type":"ADDED"}}"#);
            for line in [type_first, object_first] {
                assert_eq!(
                    decode(line),
                    (decodes, Some("a".to_owned()), Some("1".to_owned()))
                );
            }
        }
    }

    /// One undecodable object in a list page and one in a watch stream are skipped, logged and
    /// counted; the others are indexed, the kind syncs, and the watch goes on (no re-list).
    #[tokio::test(start_paused = true)]
    async fn undecodable_objects_are_skipped_one_by_one() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let watching = request.uri().query().is_some_and(|q| q.contains("watch=true"));
            log.lock()
                .expect("sent")
                .push(if watching { "watch" } else { "list" }.to_owned());
            async move {
                let body = if watching {
                    let lines = [
                        serde_json::json!({"type": "ADDED", "object": undecodable_slice_json("bad-watched", "11")}),
                        serde_json::json!({"type": "ADDED", "object": slice_json("c", "12")}),
                    ]
                    .map(|line| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(format!("{line}\n")))));
                    StreamBody::new(futures::stream::iter(lines).chain(futures::stream::pending()))
                        .boxed_unsync()
                } else {
                    let list = serde_json::json!({"apiVersion": "resource.k8s.io/v1",
                        "kind": "ResourceSliceList", "metadata": {"resourceVersion": "10"},
                        "items": [slice_json("a", "1"), undecodable_slice_json("bad-listed", "2"), slice_json("b", "3")]});
                    http_body_util::Full::new(Bytes::from(list.to_string()))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                };
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        });
        let client = ClientBuilder::new(service, "default").build();
        let (sink, readiness) = watch_slices_for_a_second(client, InitialList::Paged).await;
        assert!(readiness.is_ready(), "the kind synced despite the bad item");
        assert_eq!(*sent.lock().expect("sent"), ["list", "watch"], "no re-list");
        let state = sink.state.lock().expect("state");
        for pool in ["a", "b", "c"] {
            let device = crate::view::DeviceId::new("d", pool, "dev");
            assert_eq!(state.device_taints(&device).len(), 1, "slice {pool} is indexed");
        }
        assert_eq!(
            sink.metrics.skipped_count(ResourceSlice::PLURAL, "undecodable"),
            2
        );
    }

    /// Runs a ResourceSlice watch through `client` for a second of virtual time, its initial
    /// state received as `initial`; returns what it indexed and its readiness.
    async fn watch_slices_for_a_second(
        client: kube::Client,
        initial: InitialList,
    ) -> (Arc<TestSink>, Readiness) {
        let sink = sink();
        let readiness = Readiness::new(&[ResourceSlice::PLURAL]);
        let idle = Idle {
            timeout: DEFAULT_IDLE_TIMEOUT,
            progress: WatchProgress::default(),
            beats: Beats::default(),
        };
        let task = tokio::spawn(watch(
            sink.clone(),
            readiness.clone(),
            Api::<Decoded<ResourceSlice>>::all(client),
            idle,
            initial,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        task.abort();
        (sink, readiness)
    }

    /// A ResourceSlice API server that answers a streaming list with slices `a` and `b` and the
    /// end-of-initial-events bookmark, or, when `refuse_streaming`, with 422 as a server with the
    /// WatchList feature off does; a list with slice `a`; a watch with nothing. Records each
    /// request as "stream", "list" or "watch".
    fn streaming_server(refuse_streaming: bool) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let query = request.uri().query().unwrap_or_default().to_owned();
            let streaming = query.contains("sendInitialEvents=true");
            let watching = query.contains("watch=true");
            log.lock().expect("sent").push(
                match (streaming, watching) {
                    (true, _) => "stream",
                    (false, true) => "watch",
                    (false, false) => "list",
                }
                .to_owned(),
            );
            async move {
                let full = |status: u16, body: serde_json::Value| {
                    let mut response = Response::new(
                        http_body_util::Full::new(Bytes::from(body.to_string()))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    );
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    response
                };
                let response = if streaming && refuse_streaming {
                    full(
                        422,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                        "reason": "Invalid", "code": 422}),
                    )
                } else if streaming {
                    let lines = [
                        serde_json::json!({"type": "ADDED", "object": slice_json("a", "1")}),
                        serde_json::json!({"type": "ADDED", "object": slice_json("b", "2")}),
                        serde_json::json!({"type": "BOOKMARK", "object": {
                            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                            "metadata": {"resourceVersion": "3", "annotations": {"k8s.io/initial-events-end": "true"}}}}),
                    ]
                    .map(|line| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(format!("{line}\n")))));
                    Response::new(
                        StreamBody::new(futures::stream::iter(lines).chain(futures::stream::pending()))
                            .boxed_unsync(),
                    )
                } else if watching {
                    Response::new(StreamBody::new(futures::stream::pending()).boxed_unsync())
                } else {
                    full(
                        200,
                        serde_json::json!({"apiVersion": "resource.k8s.io/v1",
                        "kind": "ResourceSliceList", "metadata": {"resourceVersion": "10"},
                        "items": [slice_json("a", "1")]}),
                    )
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        (ClientBuilder::new(service, "default").build(), sent)
    }

    /// Runs a streaming ResourceSlice watch against [`streaming_server`] for a second of virtual
    /// time; returns the requests sent, whether the kind synced, and the pools indexed.
    async fn run_streaming(refuse_streaming: bool) -> (Vec<String>, bool, Vec<&'static str>) {
        let (client, sent) = streaming_server(refuse_streaming);
        let (sink, readiness) = watch_slices_for_a_second(client, InitialList::Streaming).await;
        let state = sink.state.lock().expect("state");
        let pools = ["a", "b"]
            .into_iter()
            .filter(|pool| {
                !state
                    .device_taints(&crate::view::DeviceId::new("d", *pool, "dev"))
                    .is_empty()
            })
            .collect();
        let sent = sent.lock().expect("sent").clone();
        (sent, readiness.is_ready(), pools)
    }

    /// A streaming list is one request: every object, then the bookmark that ends the initial
    /// events syncs the kind; the same watch goes on.
    #[tokio::test(start_paused = true)]
    async fn a_streaming_list_syncs_from_one_watch() {
        let (sent, synced, pools) = run_streaming(false).await;
        assert_eq!(sent, ["stream"]);
        assert!(synced);
        assert_eq!(pools, ["a", "b"]);
    }

    /// A server that refuses streaming lists (422) is listed in pages instead, at once and for
    /// good, and the kind syncs.
    #[tokio::test(start_paused = true)]
    async fn a_refused_streaming_list_falls_back_to_pages() {
        let (sent, synced, pools) = run_streaming(true).await;
        assert_eq!(sent, ["stream", "list", "watch"]);
        assert!(synced);
        assert_eq!(pools, ["a"]);
    }

    fn sink() -> Arc<TestSink> {
        Arc::new(TestSink {
            state: Mutex::new(State::new()),
            metrics: Metrics::register(&mut Registry::default()),
        })
    }

    /// Runs a ResourceSlice watch against the scripted server for `run` of virtual time; returns
    /// the requests sent.
    async fn run_slice_watch(body: WatchBody, idle_timeout: Duration, run: Duration) -> Vec<String> {
        let progress = WatchProgress::default();
        let (client, sent) = slice_server(body, &progress);
        let readiness = Readiness::new(&KINDS);
        let idle = Idle {
            timeout: idle_timeout,
            progress,
            beats: Beats::default(),
        };
        let task = tokio::spawn(watch(
            sink(),
            readiness.clone(),
            Api::<Decoded<ResourceSlice>>::all(client),
            idle,
            InitialList::Paged,
        ));
        tokio::time::sleep(run).await;
        assert!(!task.is_finished(), "a watch runs until aborted");
        task.abort();
        sent.lock().expect("sent").clone()
    }

    /// A watch that answers and then stays silent is restarted after --watch-idle-timeout,
    /// with a new list, and counted.
    #[tokio::test(start_paused = true)]
    async fn silent_watch_is_restarted_after_the_idle_timeout() {
        let progress = WatchProgress::default();
        let (client, sent) = slice_server(WatchBody::Silent, &progress);
        let sink = sink();
        let idle = Idle {
            timeout: Duration::from_secs(5),
            progress,
            beats: Beats::default(),
        };
        let task = tokio::spawn(watch(
            sink.clone(),
            Readiness::new(&KINDS),
            Api::<Decoded<ResourceSlice>>::all(client),
            idle,
            InitialList::Paged,
        ));
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(
            *sent.lock().expect("sent"),
            ["list", "watch"],
            "not restarted early"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *sent.lock().expect("sent"),
            ["list", "watch", "list", "watch"],
            "restarted (a new list) once the watch was silent for 5 s"
        );
        task.abort();
        assert_eq!(sink.metrics.idle_restarts(ResourceSlice::PLURAL), 1);
    }

    /// A quiet watch that receives a bookmark every minute is never restarted, even though kube's
    /// watcher yields no event for the bookmarks.
    #[tokio::test(start_paused = true)]
    async fn bookmarks_keep_a_quiet_watch_alive() {
        let sent = run_slice_watch(
            WatchBody::Bookmarks,
            Duration::from_secs(90),
            Duration::from_secs(1000),
        )
        .await;
        assert_eq!(sent, ["list", "watch"], "never restarted");
        // The same silence without bookmarks is restarted (the bookmarks above are what count).
        let sent = run_slice_watch(
            WatchBody::Silent,
            Duration::from_secs(90),
            Duration::from_secs(1000),
        )
        .await;
        assert!(sent.len() > 2, "{sent:?}");
    }
}
