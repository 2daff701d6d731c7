//! The watches: the one list of watched kinds, and for each kind how its API objects become views
//! and index updates (apply, delete, reset after a re-list). This is the only module that turns
//! API objects into views; the controller runs [`watch`] for every kind, and `explain` feeds a
//! one-shot listing through [`reset`].

use std::{fmt::Debug, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::{
    admin::Readiness,
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

    /// The object was deleted.
    fn delete(&self, state: &mut State);

    /// A complete list of the kind: what it does not contain is gone (SPEC D3).
    fn reset(state: &mut State, views: Vec<Self::View>, now: Time);
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

    fn delete(&self, state: &mut State) {
        state.delete_pod(
            &object_name(&self.metadata),
            self.metadata.uid.as_deref().unwrap_or_default(),
        );
    }

    fn reset(state: &mut State, pods: Vec<PodEntry>, _: Time) {
        // Pods without claims are not stored, so a re-list only needs the ones with claims.
        state.reset_pods(pods.into_iter().filter(|(_, _, v)| v.is_some()).collect());
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

    fn delete(&self, state: &mut State) {
        state.delete_claim(
            &object_name(&self.metadata),
            self.metadata.uid.as_deref().unwrap_or_default(),
        );
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

    fn delete(&self, state: &mut State) {
        state.delete_slice(self.metadata.name.as_deref().unwrap_or_default());
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

    fn delete(&self, state: &mut State) {
        state.delete_rule(
            self.metadata.name.as_deref().unwrap_or_default(),
            self.metadata.uid.as_deref().unwrap_or_default(),
        );
    }

    fn reset(state: &mut State, views: Vec<RuleView>, now: Time) {
        state.reset_rules(views, now);
    }
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

/// Watches every object of kind `K` through `api` and applies the events to the state; marks the
/// kind synced in `readiness` after each initial list. Runs until the stream ends (never,
/// normally); a failed watch is retried with kube's default backoff.
pub async fn watch<K: Kind, S: Sink>(sink: Arc<S>, readiness: Readiness, api: Api<K>) {
    let kind = K::PLURAL;
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<Vec<K::View>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                sink.metrics().watch_restart(kind);
                warn!(kind, %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        let now = Timestamp::now();
        match event {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(obj) => match obj.project() {
                Ok(view) => listing.get_or_insert_with(Vec::new).push(view),
                Err(invalid) => skip(sink.metrics(), kind, &invalid),
            },
            watcher::Event::InitDone => {
                let views = listing.take().unwrap_or_default();
                info!(kind, objects = views.len(), "initial list received");
                sink.update(|state| K::reset(state, views, now));
                readiness.mark_synced(kind);
            }
            watcher::Event::Apply(obj) => match obj.project() {
                Ok(view) => sink.update(|state| K::apply(state, view, now)),
                Err(invalid) => skip(sink.metrics(), kind, &invalid),
            },
            watcher::Event::Delete(obj) => sink.update(|state| obj.delete(state)),
        }
    }
}
