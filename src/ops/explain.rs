//! `explain`: which pods are or would be evicted, because of which taint on which device, and
//! when. The cluster is listed once into the same [`State`] the controller keeps, so the answer is
//! the controller's own decision, not a second implementation of it.

use std::io::Write;

use kube::{Api, api::ListParams};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, warn};

use super::{ApiError, Error, is_not_found, write_line};
use crate::{
    eviction::{TaintSource, claim_counts_for_pod, taint_deadline},
    index::State,
    k8s::{self, DeviceTaintRule, ResourceClaim, ResourceSlice, WatchedPod},
    view::{AllocatedDevice, DeviceId, Invalid, ObjectName, Operator, PodView, Taint, Time, Toleration},
    watch::{self, Decoded},
};

/// Objects per list request, so that a large cluster is read in pages.
const LIST_PAGE: u32 = 500;

/// Output format of `explain` (`--output`; the variants' doc comments are its `--help` text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// A JSON document for scripts.
    Json,
}

/// What `explain` shows and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainRequest {
    /// Only pods in this namespace; `None` for all namespaces.
    pub namespace: Option<String>,
    /// Output format.
    pub output: OutputFormat,
    /// The controller's blast-radius guard settings, to show what it holds.
    pub guard: crate::guard::GuardConfig,
    /// The controller's `--protected-priority`, if it has one.
    pub protected_priority: Option<i32>,
}

/// One reason a pod is pending eviction: a taint that applies to devices the pod uses.
///
/// A pod with several untolerated taints has one row per taint; it is evicted at the earliest of
/// their times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainRow {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// UID of the pod.
    pub uid: String,
    /// The pod's devices that carry the taint, as `driver/pool/device`.
    pub devices: Vec<String>,
    /// The taint, as `key=value:effect` (`key:effect` without a value).
    pub taint: String,
    /// Where the taint comes from: `rule <name>` or `slice <driver/pool/device>`.
    pub source: String,
    /// The toleration that delays the eviction (kubectl's notation, e.g. `key:NoExecute op=Exists
    /// for 60s`); `None` when no toleration matches and the eviction is due at `timeAdded`.
    pub toleration: Option<String>,
    /// When this taint evicts the pod (RFC 3339, UTC).
    pub evict_at: String,
    /// Seconds from the time of the explanation until then; negative when overdue.
    pub evict_in_seconds: i64,
    /// The blast-radius guard scope that holds the pod's eviction (`rule/NAME`,
    /// `pool/DRIVER/POOL` or `cluster`), if one does (SPEC D11).
    pub paused_by: Option<String>,
    /// The pod's `spec.priority`: when evictions wait, the lowest goes first.
    pub priority: i32,
    /// The priority is at or above `--protected-priority`: the pod is not evicted automatically,
    /// it gets an Event once the eviction is due (SPEC D12).
    pub protected: bool,
}

/// The rows for every pending eviction in `state`, as seen at `now`: sorted by time, then
/// namespace, pod and source.
#[must_use]
pub fn explain(state: &State, now: Time) -> Vec<ExplainRow> {
    let verdict = state.guard_verdict(now);
    let mut rows: Vec<(Time, ExplainRow)> = Vec::new();
    for (pod_ref, eviction) in state.pending_evictions() {
        let Some(pod) = state.pod(&pod_ref.object_name()).filter(|p| p.uid == pod_ref.uid) else {
            continue;
        };
        let paused_by = verdict
            .holds(&crate::guard::scopes_of(eviction))
            .map(|(scope, _)| scope.to_string());
        let devices = used_devices(state, pod);
        for reason in &eviction.reasons {
            let Some((taint, source)) = taint_of(state, reason) else {
                continue;
            };
            // Every device the pod uses that carries this taint, with when it fires there.
            let mut hits: Vec<(Time, &AllocatedDevice)> = devices
                .iter()
                .filter(|a| applies(state, reason, &a.device))
                .filter_map(|a| taint_deadline(taint, &a.tolerations).map(|at| (at, *a)))
                .collect();
            hits.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.device.cmp(&b.1.device)));
            let Some(&(at, first)) = hits.first() else {
                continue;
            };
            let mut names: Vec<String> = hits.iter().map(|(_, a)| a.device.to_string()).collect();
            names.sort();
            names.dedup();
            let evict_in_seconds = at.duration_since(now).as_secs();
            rows.push((
                at,
                ExplainRow {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    uid: pod.uid.clone(),
                    devices: names,
                    taint: format_taint(taint),
                    source,
                    toleration: deciding_toleration(taint, &first.tolerations).map(format_toleration),
                    evict_at: format_time(at),
                    evict_in_seconds,
                    paused_by: paused_by.clone(),
                    priority: pod.priority,
                    protected: state.protects(pod.priority).is_some(),
                },
            ));
        }
    }
    rows.sort_by(|a, b| {
        (a.0, &a.1.namespace, &a.1.pod, &a.1.source).cmp(&(b.0, &b.1.namespace, &b.1.pod, &b.1.source))
    });
    rows.into_iter().map(|(_, row)| row).collect()
}

/// Allocated devices of the claims that count for the pod's eviction (the decision's own rule,
/// [`claim_counts_for_pod`]).
fn used_devices<'a>(state: &'a State, pod: &PodView) -> Vec<&'a AllocatedDevice> {
    let mut devices = Vec::new();
    for pod_claim in &pod.claims {
        let Some((claim, Some(_))) = state.claim(&ObjectName::new(&pod.namespace, &pod_claim.claim)) else {
            continue;
        };
        if !claim_counts_for_pod(pod, pod_claim, claim) {
            continue;
        }
        devices.extend(claim.allocation.iter().flatten());
    }
    devices
}

/// The taint behind a reason and how to name its source.
fn taint_of<'a>(state: &'a State, reason: &TaintSource) -> Option<(&'a Taint, String)> {
    match reason {
        TaintSource::Rule(rule) => state
            .rule(&rule.name)
            .filter(|r| r.uid == rule.uid)
            .map(|r| (&r.taint, format!("rule {}", r.name))),
        TaintSource::Slice { device, index } => state
            .device_taints(device)
            .get(*index)
            .map(|t| (t, format!("slice {device}"))),
    }
}

/// Whether the reason's taint is on this device.
fn applies(state: &State, reason: &TaintSource, device: &DeviceId) -> bool {
    match reason {
        TaintSource::Rule(rule) => state
            .rule(&rule.name)
            .is_some_and(|r| r.uid == rule.uid && r.selects(device)),
        TaintSource::Slice { device: tainted, .. } => tainted == device,
    }
}

/// The matching toleration with the shortest `tolerationSeconds`: the one that sets the time.
fn deciding_toleration<'a>(taint: &Taint, tolerations: &'a [Toleration]) -> Option<&'a Toleration> {
    tolerations
        .iter()
        .filter(|t| t.tolerates(taint))
        .min_by_key(|t| t.toleration_seconds.unwrap_or(i64::MAX))
}

fn format_taint(taint: &Taint) -> String {
    if taint.value.is_empty() {
        format!("{}:{}", taint.key, taint.effect.as_str())
    } else {
        format!("{}={}:{}", taint.key, taint.value, taint.effect.as_str())
    }
}

/// kubectl's notation for tolerations (`kubectl describe pod`).
fn format_toleration(t: &Toleration) -> String {
    let mut s = t.key.clone();
    if !t.value.is_empty() {
        s = format!("{s}={}", t.value);
    }
    if let Some(effect) = &t.effect {
        s = format!("{s}:{}", effect.as_str());
    }
    if t.operator == Operator::Exists && t.value.is_empty() {
        s = if s.is_empty() {
            "op=Exists".to_owned()
        } else {
            format!("{s} op=Exists")
        };
    }
    if let Some(seconds) = t.toleration_seconds {
        s = format!("{s} for {seconds}s");
    }
    s
}

/// RFC 3339 in UTC, whole seconds.
fn format_time(time: Time) -> String {
    format!("{time:.0}")
}

/// `now`, `in 59s`, `12s ago`, `in 4m10s`, `3h5m ago`, `in 2d3h`.
#[must_use]
pub fn format_relative(seconds: i64) -> String {
    if seconds == 0 {
        return "now".to_owned();
    }
    let total = seconds.unsigned_abs();
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let span = if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    };
    if seconds > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Writes the rows as aligned columns, or `No pod is pending eviction.` when there are none.
///
/// # Errors
/// When writing fails.
pub fn write_table(rows: &[ExplainRow], out: &mut impl Write) -> Result<(), Error> {
    if rows.is_empty() {
        return write_line(out, "No pod is pending eviction.");
    }
    let header = [
        "NAMESPACE",
        "POD",
        "DEVICE(S)",
        "TAINT",
        "SOURCE",
        "TOLERATION",
        "EVICT AT",
    ]
    .map(str::to_owned);
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
                r.pod.clone(),
                r.devices.join(","),
                r.taint.clone(),
                r.source.clone(),
                r.toleration.clone().unwrap_or_else(|| "none".to_owned()),
                if r.protected {
                    format!(
                        "never: priority {} is protected (due {}, {})",
                        r.priority,
                        r.evict_at,
                        format_relative(r.evict_in_seconds)
                    )
                } else {
                    format!("{} ({})", r.evict_at, format_relative(r.evict_in_seconds))
                } + &r
                    .paused_by
                    .as_ref()
                    .map(|scope| format!(", paused by the blast-radius guard ({scope})"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(&cells) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let padding = width - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', padding));
            }
        }
        write_line(out, &line)?;
    }
    Ok(())
}

/// One line per scope the blast-radius guard holds: why, and how to resume (SPEC D11).
///
/// # Errors
/// When writing fails.
pub fn write_guard(verdict: &crate::guard::Verdict, out: &mut impl Write) -> Result<(), Error> {
    use crate::guard::{ACCEPT_ANNOTATION, Scope};
    for (scope, trip) in &verdict.tripped {
        let how = match scope {
            Scope::Rule(rule) => format!(
                "resume with: device-taint-eviction resume --name {} --accept {} (annotation {ACCEPT_ANNOTATION})",
                rule.name, trip.blast
            ),
            Scope::Pool(pool) => format!(
                "resume with the controller flag --guard-accept-pool {pool}={}",
                trip.blast
            ),
            Scope::Cluster => format!(
                "resume by accepting the rules' evictions, or with the controller flag --guard-accept-cluster {}",
                trip.blast
            ),
        };
        write_line(
            out,
            &format!("Evictions paused by the blast-radius guard for {scope}: {trip}; {how}."),
        )?;
    }
    Ok(())
}

/// Lists pods, ResourceClaims, ResourceSlices and DeviceTaintRules of the whole cluster, decides
/// as the controller would, and prints the pending evictions of the requested namespace (all
/// namespaces without one) as a table or as a JSON array of [`ExplainRow`]s.
///
/// Returns the rows printed. Without a served DeviceTaintRule API only slice taints count.
///
/// # Errors
/// When listing fails or the output cannot be written.
pub async fn explain_cluster(
    client: &kube::Client,
    request: &ExplainRequest,
    out: &mut impl Write,
) -> Result<Vec<ExplainRow>, Error> {
    let slices = list_all(
        &Api::<Decoded<ResourceSlice>>::all(client.clone()),
        "resourceslices",
    )
    .await?;
    let rules = match k8s::discover_device_taint_rule(client).await {
        Ok(Some(resource)) => {
            list_all(
                &Api::<Decoded<DeviceTaintRule>>::all_with(client.clone(), &resource),
                "devicetaintrules",
            )
            .await?
        }
        Ok(None) => {
            warn!("this cluster serves no DeviceTaintRule API: only ResourceSlice taints are considered");
            Vec::new()
        }
        Err(e) => {
            return Err(Error::DiscoverRuleApi(ApiError::new(
                format!("get /apis/{}", k8s::RESOURCE_GROUP),
                e,
            )));
        }
    };
    let claims = list_all(
        &Api::<Decoded<ResourceClaim>>::all(client.clone()),
        "resourceclaims",
    )
    .await?;
    let pods = list_all(&Api::<Decoded<WatchedPod>>::all(client.clone()), "pods").await?;

    let now = Time::now();
    let mut state = State::with_protected_priority(request.protected_priority);
    state.set_guard(request.guard.clone());
    watch::reset(&mut state, &slices, now, skipping);
    watch::reset(&mut state, &rules, now, skipping);
    watch::reset(&mut state, &claims, now, skipping);
    watch::reset(&mut state, &pods, now, skipping);
    drop(state.take_changes());

    let mut rows = explain(&state, now);
    if let Some(namespace) = &request.namespace {
        rows.retain(|r| r.namespace == *namespace);
    }
    match request.output {
        OutputFormat::Table => {
            write_table(&rows, out)?;
            write_guard(&state.guard_verdict(now), out)?;
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows).map_err(Error::EncodeJson)?;
            write_line(out, "")?;
        }
    }
    Ok(rows)
}

/// Objects that do not make a valid view are logged and skipped, as the controller does.
fn skipping(invalid: &Invalid) {
    debug!(%invalid, "skipping object");
}

/// Every object of a kind, read in pages. Items are decoded one by one, as the controller's
/// watches do: one that cannot be decoded is skipped with a warning, the rest are kept.
async fn list_all<K>(api: &Api<Decoded<K>>, plural: &'static str) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(LIST_PAGE);
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(|e| {
            // A kind the server does not serve (no DRA at all) reads as "none".
            Error::List {
                kind: plural,
                source: ApiError::new(format!("list {plural}"), e),
            }
        });
        let page = match page {
            Ok(page) => page,
            Err(Error::List { source, .. }) if is_not_found(&source.error) => {
                warn!(
                    kind = plural,
                    "the API server does not serve this kind: treating it as empty"
                );
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        for item in page.items {
            match item {
                Decoded::Ok(object) => items.push(object),
                Decoded::Bad { meta, error } => watch::log_undecodable(plural, &meta, &error),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        fixtures::{claim, pod, rule, slice, t, taint, toleration},
        view::{ClaimView, RuleView, SliceView},
    };

    const NS: &str = "default";
    const DRIVER: &str = "gpu.example.com";
    const POOL: &str = "node-1";
    const KEY: &str = "example.com/unhealthy";

    fn row(
        pod: &str,
        devices: &[&str],
        taint: &str,
        source: &str,
        toleration: Option<&str>,
        at: i64,
        now: i64,
    ) -> ExplainRow {
        ExplainRow {
            namespace: NS.into(),
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            devices: devices.iter().map(|d| format!("{DRIVER}/{POOL}/{d}")).collect(),
            taint: taint.into(),
            source: source.into(),
            toleration: toleration.map(Into::into),
            evict_at: format_time(t(at)),
            evict_in_seconds: at - now,
            paused_by: None,
            priority: 0,
            protected: false,
        }
    }

    fn state_with(
        slices: Vec<SliceView>,
        rules: Vec<RuleView>,
        claims: Vec<ClaimView>,
        pods: Vec<PodView>,
    ) -> State {
        let mut state = State::new();
        state.reset_slices(slices, t(0));
        state.reset_rules(rules, t(0));
        state.reset_claims(claims);
        state.reset_pods(
            pods.into_iter()
                .map(|p| (p.object_name(), p.uid.clone(), Some(p)))
                .collect(),
        );
        state
    }

    #[test]
    fn empty_state_explains_nothing() {
        assert!(explain(&State::new(), t(10)).is_empty());
    }

    #[test]
    fn slice_taint_without_toleration_is_due_at_time_added() {
        let p = pod(NS, "p").with_claim("c");
        let state = state_with(
            vec![slice("s", DRIVER, POOL).with_device("gpu-0").with_taint(taint(
                KEY,
                "ecc",
                "NoExecute",
                Some(t(5)),
            ))],
            vec![],
            vec![claim(NS, "c").with_device(DRIVER, POOL, "gpu-0").reserved_for(&p)],
            vec![p],
        );
        assert_eq!(
            explain(&state, t(17)),
            vec![row(
                "p",
                &["gpu-0"],
                &format!("{KEY}=ecc:NoExecute"),
                &format!("slice {DRIVER}/{POOL}/gpu-0"),
                None,
                5,
                17
            )]
        );
    }

    /// With `--protected-priority`, a pod at or above it is shown as protected with its
    /// priority; one below it, or any pod without the flag, is not.
    #[test]
    fn protected_priority_is_shown() {
        let high = pod(NS, "high").with_claim("c-high").with_priority(1000);
        let low = pod(NS, "low").with_claim("c-low").with_priority(999);
        let build = |threshold: Option<i32>| {
            let mut state = State::with_protected_priority(threshold);
            state.reset_slices(
                vec![slice("s", DRIVER, POOL).with_device("gpu-0").with_taint(taint(
                    KEY,
                    "",
                    "NoExecute",
                    Some(t(5)),
                ))],
                t(0),
            );
            state.reset_claims(vec![
                claim(NS, "c-high")
                    .with_device(DRIVER, POOL, "gpu-0")
                    .reserved_for(&high),
                claim(NS, "c-low")
                    .with_device(DRIVER, POOL, "gpu-0")
                    .reserved_for(&low),
            ]);
            state.reset_pods(
                [high.clone(), low.clone()]
                    .into_iter()
                    .map(|p| (p.object_name(), p.uid.clone(), Some(p)))
                    .collect(),
            );
            explain(&state, t(17))
        };
        let shown: Vec<(String, i32, bool)> = build(Some(1000))
            .into_iter()
            .map(|r| (r.pod, r.priority, r.protected))
            .collect();
        assert_eq!(
            shown,
            [("high".to_owned(), 1000, true), ("low".to_owned(), 999, false)]
        );
        assert!(build(None).iter().all(|r| !r.protected));
        let mut out = Vec::new();
        write_table(&build(Some(1000)), &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.lines().nth(1).is_some_and(
                |l| l.ends_with("never: priority 1000 is protected (due 1970-01-01T00:00:05Z, 12s ago)")
            ),
            "{text}"
        );
    }

    #[test]
    fn rule_taint_with_toleration_seconds() {
        let p = pod(NS, "p").with_claim("c");
        let state = state_with(
            vec![slice("s", DRIVER, POOL).with_device("gpu-0").with_device("gpu-1")],
            vec![
                rule("maintenance")
                    .selecting(Some(DRIVER), Some(POOL), None)
                    .with_taint(taint(KEY, "", "NoExecute", Some(t(100)))),
            ],
            vec![
                claim(NS, "c")
                    .with_device(DRIVER, POOL, "gpu-1")
                    .with_toleration(toleration(KEY, "Exists", "", "NoExecute", Some(300)))
                    .with_toleration(toleration("", "Exists", "", "", Some(60)))
                    .with_device(DRIVER, POOL, "gpu-0")
                    .with_toleration(toleration(KEY, "Exists", "", "NoExecute", Some(30)))
                    .reserved_for(&p),
            ],
            vec![p],
        );
        // gpu-0 fires first (30 s); its toleration is the one shown.
        assert_eq!(
            explain(&state, t(101)),
            vec![row(
                "p",
                &["gpu-0", "gpu-1"],
                &format!("{KEY}:NoExecute"),
                "rule maintenance",
                Some(&format!("{KEY}:NoExecute op=Exists for 30s")),
                130,
                101
            )]
        );
    }

    #[test]
    fn one_row_per_taint_sorted_by_time_and_tolerated_forever_is_left_out() {
        let a = pod(NS, "a").with_claim("ca");
        let b = pod(NS, "b").with_claim("cb");
        let forever = pod(NS, "forever").with_claim("cf");
        let state = state_with(
            vec![
                slice("s", DRIVER, POOL)
                    .with_device("gpu-0")
                    .with_taint(taint("slice-key", "", "NoExecute", Some(t(50))))
                    .with_device("gpu-1")
                    .with_device("gpu-2"),
            ],
            vec![rule("r").selecting(Some(DRIVER), None, None).with_taint(taint(
                KEY,
                "v",
                "NoExecute",
                Some(t(10)),
            ))],
            vec![
                claim(NS, "ca")
                    .with_device(DRIVER, POOL, "gpu-0")
                    .reserved_for(&a),
                claim(NS, "cb")
                    .with_device(DRIVER, POOL, "gpu-1")
                    .with_toleration(toleration(KEY, "Equal", "v", "NoExecute", Some(5)))
                    .reserved_for(&b),
                claim(NS, "cf")
                    .with_device(DRIVER, POOL, "gpu-2")
                    .with_toleration(toleration(KEY, "Exists", "", "", None))
                    .reserved_for(&forever),
            ],
            vec![a, b, forever],
        );
        assert_eq!(
            explain(&state, t(12)),
            vec![
                row(
                    "a",
                    &["gpu-0"],
                    &format!("{KEY}=v:NoExecute"),
                    "rule r",
                    None,
                    10,
                    12
                ),
                row(
                    "b",
                    &["gpu-1"],
                    &format!("{KEY}=v:NoExecute"),
                    "rule r",
                    Some(&format!("{KEY}=v:NoExecute for 5s")),
                    15,
                    12
                ),
                row(
                    "a",
                    &["gpu-0"],
                    "slice-key:NoExecute",
                    &format!("slice {DRIVER}/{POOL}/gpu-0"),
                    None,
                    50,
                    12
                ),
            ]
        );
    }

    #[test]
    fn pods_that_are_not_evicted_are_not_explained() {
        let unreserved = pod(NS, "unreserved").with_claim("c1");
        let terminal = pod(NS, "terminal").with_claim("c2").finished();
        let foreign = pod(NS, "foreign").with_generated_claim("c3");
        let owner = pod(NS, "owner");
        let state = state_with(
            vec![slice("s", DRIVER, POOL).with_device("gpu-0").with_taint(taint(
                KEY,
                "",
                "NoExecute",
                Some(t(0)),
            ))],
            vec![],
            vec![
                claim(NS, "c1").with_device(DRIVER, POOL, "gpu-0"),
                claim(NS, "c2")
                    .with_device(DRIVER, POOL, "gpu-0")
                    .reserved_for(&terminal),
                claim(NS, "c3")
                    .with_device(DRIVER, POOL, "gpu-0")
                    .reserved_for(&foreign)
                    .owned_by(&owner),
            ],
            vec![unreserved, terminal, foreign],
        );
        assert!(explain(&state, t(1)).is_empty());
    }

    #[test]
    fn toleration_notation() {
        let cases = [
            (
                toleration("k", "Exists", "", "NoExecute", Some(60)),
                "k:NoExecute op=Exists for 60s",
            ),
            (toleration("k", "Equal", "v", "", None), "k=v"),
            (toleration("", "Exists", "", "", Some(0)), "op=Exists for 0s"),
            (
                toleration("k", "Equal", "v", "NoExecute", Some(-5)),
                "k=v:NoExecute for -5s",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(format_toleration(&t), want);
        }
    }

    #[test]
    fn relative_times() {
        let cases = [
            (0, "now"),
            (59, "in 59s"),
            (-12, "12s ago"),
            (250, "in 4m10s"),
            (-(3 * 3600 + 5 * 60 + 9), "3h5m ago"),
            (2 * 86_400 + 3 * 3600 + 1, "in 2d3h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(format_relative(seconds), want);
        }
    }

    #[test]
    fn time_is_whole_seconds_utc() {
        assert_eq!(format_time(t(59)), "1970-01-01T00:00:59Z");
        let precise = t(59)
            .checked_add(k8s::SignedDuration::from_millis(250))
            .expect("in range");
        assert_eq!(format_time(precise), "1970-01-01T00:00:59Z");
    }

    #[test]
    fn table_and_empty_message() {
        let mut out = Vec::new();
        write_table(&[], &mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "No pod is pending eviction.\n"
        );

        let rows = [
            row("p", &["gpu-0"], "k:NoExecute", "rule r", None, 60, 1),
            row(
                "long-pod-name",
                &["gpu-0", "gpu-1"],
                "k=v:NoExecute",
                "rule r",
                Some("k:NoExecute op=Exists for 60s"),
                0,
                12,
            ),
        ];
        let mut out = Vec::new();
        write_table(&rows, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("NAMESPACE   POD             DEVICE(S)"),
            "{text}"
        );
        assert!(lines[1].ends_with("1970-01-01T00:01:00Z (in 59s)"), "{text}");
        assert!(lines[1].contains("   none   "), "{text}");
        assert!(
            lines[2].contains("gpu.example.com/node-1/gpu-0,gpu.example.com/node-1/gpu-1"),
            "{text}"
        );
        assert!(lines[2].ends_with("1970-01-01T00:00:00Z (12s ago)"), "{text}");
        // Columns line up: SOURCE starts at the same offset in every line.
        let offsets: Vec<usize> = lines
            .iter()
            .map(|l| l.find("SOURCE").or_else(|| l.find("rule r")).expect("source"))
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn json_field_names() {
        let value =
            serde_json::to_value(row("p", &["gpu-0"], "k:NoExecute", "rule r", None, 60, 1)).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "namespace": "default",
                "pod": "p",
                "uid": "uid-p",
                "devices": ["gpu.example.com/node-1/gpu-0"],
                "taint": "k:NoExecute",
                "source": "rule r",
                "toleration": null,
                "evictAt": "1970-01-01T00:01:00Z",
                "evictInSeconds": 59,
                "pausedBy": null,
                "priority": 0,
                "protected": false
            })
        );
    }

    /// `explain` against a scripted API server whose lists each hold one object that cannot be
    /// decoded (the slices in the first of two pages): each is skipped, the rest are explained.
    #[tokio::test]
    async fn undecodable_listed_objects_are_skipped_one_by_one() {
        let slice = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": "slice-a", "uid": "uid-slice-a"},
            "spec": {"driver": DRIVER, "pool": {"name": POOL, "generation": 1, "resourceSliceCount": 1},
                     "nodeName": POOL,
                     "devices": [{"name": "gpu-0", "taints": [{"key": KEY, "effect": "NoExecute",
                                                                "timeAdded": "2026-01-01T00:00:00Z"}]}]},
        });
        let mut bad_slice = slice.clone();
        bad_slice["metadata"] = json!({"name": "slice-bad", "uid": "uid-slice-bad"});
        bad_slice["spec"]["devices"] = json!("not-a-list");
        let claim = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "claim-1", "namespace": NS, "uid": "uid-claim-1"},
            "spec": {"devices": {"requests": []}},
            "status": {"allocation": {"devices": {"results": [
                           {"request": "gpu", "driver": DRIVER, "pool": POOL, "device": "gpu-0"}]}},
                       "reservedFor": [{"resource": "pods", "name": "p", "uid": "uid-p"}]},
        });
        let mut bad_claim = claim.clone();
        bad_claim["metadata"] = json!({"name": "claim-bad", "namespace": NS, "uid": "uid-claim-bad"});
        bad_claim["status"]["allocation"] = json!(7);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": NS, "uid": "uid-p"},
            "spec": {"nodeName": POOL, "resourceClaims": [{"name": "gpu", "resourceClaimName": "claim-1"}]},
            "status": {"phase": "Running"},
        });
        let mut bad_pod = pod.clone();
        bad_pod["metadata"] = json!({"name": "p-bad", "namespace": NS, "uid": "uid-p-bad"});
        bad_pod["spec"]["nodeName"] = json!(5);
        // Each bad object is undecodable for the controller too, and each good one decodes.
        assert!(decodes::<ResourceSlice>(&slice) && !decodes::<ResourceSlice>(&bad_slice));
        assert!(decodes::<ResourceClaim>(&claim) && !decodes::<ResourceClaim>(&bad_claim));
        assert!(decodes::<WatchedPod>(&pod) && !decodes::<WatchedPod>(&bad_pod));

        let (client, sent) = scripted_lists(
            [vec![bad_slice, slice], Vec::new()],
            vec![claim, bad_claim],
            vec![bad_pod, pod],
        );
        let request = ExplainRequest {
            namespace: None,
            output: OutputFormat::Json,
            guard: crate::guard::GuardConfig::default(),
            protected_priority: None,
        };
        let mut out = Vec::new();
        let rows = explain_cluster(&client, &request, &mut out)
            .await
            .expect("explained despite the bad items");
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!((rows[0].namespace.as_str(), rows[0].pod.as_str()), (NS, "p"));
        assert_eq!(rows[0].devices, [format!("{DRIVER}/{POOL}/gpu-0")]);
        assert_eq!(rows[0].source, format!("slice {DRIVER}/{POOL}/gpu-0"));
        let printed: Value = serde_json::from_slice(&out).expect("JSON output");
        assert_eq!(printed, serde_json::to_value(&rows).expect("rows"));
        let sent = sent.lock().expect("sent");
        assert_eq!(
            sent.iter().filter(|u| u.contains("resourceslices")).count(),
            2,
            "both pages read: {sent:#?}"
        );
    }

    /// A list page of `kind`, continued by `next` (none when empty).
    fn list(kind: &str, items: &[Value], next: &str) -> Value {
        json!({"apiVersion": "v1", "kind": format!("{kind}List"),
               "metadata": {"resourceVersion": "9", "continue": next}, "items": items})
    }

    /// Whether `object` decodes as `K`, as the controller's lists and watches decode it.
    fn decodes<K: DeserializeOwned>(object: &Value) -> bool {
        matches!(serde_json::from_value(object.clone()), Ok(Decoded::<K>::Ok(_)))
    }

    /// A scripted API server that serves these slices (in two pages), claims and pods and no
    /// DeviceTaintRule API, and records the URI of each request.
    fn scripted_lists(
        slice_pages: [Vec<Value>; 2],
        claims: Vec<Value>,
        pods: Vec<Value>,
    ) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let [slices, more_slices] = slice_pages;
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let uri = request.uri().to_string();
            log.lock().expect("sent").push(uri.clone());
            let path = request.uri().path();
            let (status, body) = if path == "/apis/resource.k8s.io/v1/resourceslices" {
                if uri.contains("continue=page-2") {
                    (200, list("ResourceSlice", &more_slices, ""))
                } else {
                    (200, list("ResourceSlice", &slices, "page-2"))
                }
            } else if path == "/apis/resource.k8s.io/v1/resourceclaims" {
                (200, list("ResourceClaim", &claims, ""))
            } else if path == "/api/v1/pods" {
                (200, list("Pod", &pods, ""))
            } else {
                // Discovery included: no DeviceTaintRule API.
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": "not found"}),
                )
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(body.to_string().into_bytes()))
                        .expect("response"),
                )
            }
        });
        (kube::Client::new(service, "default"), sent)
    }
}
