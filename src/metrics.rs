//! Prometheus metrics, all named `device_taint_eviction_controller_*`.
//!
//! The two upstream metrics keep upstream's exact names, help texts and buckets, so dashboards and
//! alerts written for kube-controller-manager keep working. The others are ours. Exposition is
//! `OpenMetrics` text (see [`encode`] and [`CONTENT_TYPE`]).
//!
//! [`Metrics`] is a cheap handle (one `Arc`) that every task may clone; recording never blocks
//! and never fails.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::watch;

/// Prefix of every metric name (followed by `_`).
pub const PREFIX: &str = "device_taint_eviction_controller";

/// Content type of [`encode`]'s output, for the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What [`Metrics::eviction_totals`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictionTotals {
    /// `pod_deletions_total`.
    pub evicted: u64,
    /// `dry_run_evictions_total`.
    pub dry_run: u64,
    /// `pending_evictions`.
    pub pending: i64,
}

/// Upstream help of `pod_deletions_total`, verbatim.
const POD_DELETIONS_HELP: &str =
    "Total number of Pods deleted by DeviceTaintEvictionController since its start.";

/// Upstream help of `pod_deletion_duration_seconds`, verbatim.
const POD_DELETION_DURATION_HELP: &str = "Latency, in seconds, between the time when a device taint effect has \
     been activated and a Pod's deletion via DeviceTaintEvictionController.";

/// Upstream buckets of `pod_deletion_duration_seconds`.
const POD_DELETION_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 120.0, 180.0, 240.0,
];

/// Help of `decision_seconds`.
const DECISION_HELP: &str = "Time, in seconds, from the moment a pod's eviction became due for this controller \
     (the watch event that made it due was applied, or its tolerationSeconds ran out) to its DELETE (or \
     Eviction) being sent: waiting for a worker and the client's rate limit, the DisruptionTarget status \
     PATCH and the decision itself.";

/// Buckets of `decision_seconds`: from half a millisecond (a single taint) to a minute (the last
/// pod of a bulk eviction waits for the pods ahead of it).
const DECISION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// API verbs whose error counters are exposed from the start (as 0); other verbs appear on first use.
pub const API_VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "patch",
    "delete",
    "evict",
    "create_event",
    "apply_status",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    kind: String,
    reason: String,
}

/// Handle on the controller's metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pod_deletions: Counter,
    pod_deletion_duration: Histogram,
    decision: Histogram,
    pending_evictions: Gauge,
    queue_depth: Gauge,
    api_errors: Family<VerbLabels, Counter>,
    watch_restarts: Family<KindLabels, Counter>,
    watch_idle_restarts: Family<KindLabels, Counter>,
    skipped_objects: Family<SkipLabels, Counter>,
    dry_run_evictions: Counter,
    eviction_blocked: Counter,
    api_throttled: Family<VerbLabels, Counter>,
    api_conflicts: Family<VerbLabels, Counter>,
    evictions_rate_limited: Counter,
    evictions_protected: Counter,
    leader: Gauge,
    guard_tripped: Family<ScopeLabels, Gauge>,
    guard_held: Gauge,
}

/// prometheus-client appends a '.' to every help text; strip ours so the exposed line has one.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

impl Metrics {
    /// Register every metric in `registry` under [`PREFIX`] and return the handle.
    #[must_use]
    #[allow(clippy::too_many_lines)] // one registration per metric, in the order of the README
    pub fn register(registry: &mut Registry) -> Self {
        let inner = Inner {
            pod_deletions: Counter::default(),
            pod_deletion_duration: Histogram::new(POD_DELETION_DURATION_BUCKETS),
            decision: Histogram::new(DECISION_BUCKETS),
            pending_evictions: Gauge::default(),
            queue_depth: Gauge::default(),
            api_errors: Family::default(),
            watch_restarts: Family::default(),
            watch_idle_restarts: Family::default(),
            skipped_objects: Family::default(),
            dry_run_evictions: Counter::default(),
            eviction_blocked: Counter::default(),
            api_throttled: Family::default(),
            api_conflicts: Family::default(),
            evictions_rate_limited: Counter::default(),
            evictions_protected: Counter::default(),
            leader: Gauge::default(),
            guard_tripped: Family::default(),
            guard_held: Gauge::default(),
        };
        for verb in API_VERBS {
            let _ = inner.api_errors.get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            });
        }
        // Every watched kind's restarts are exposed from the start (as 0), so that a first restart
        // is visible to `rate()` / `increase()`.
        for kind in watch::KINDS {
            let _ = inner.watch_restarts.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            });
            let _ = inner.watch_idle_restarts.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            });
        }
        let r = registry.sub_registry_with_prefix(PREFIX);
        // Counters are registered without `_total`: the encoder appends it.
        r.register(
            "pod_deletions",
            help(POD_DELETIONS_HELP),
            inner.pod_deletions.clone(),
        );
        r.register(
            "pod_deletion_duration_seconds",
            help(POD_DELETION_DURATION_HELP),
            inner.pod_deletion_duration.clone(),
        );
        r.register("decision_seconds", help(DECISION_HELP), inner.decision.clone());
        r.register(
            "pending_evictions",
            "Pods currently scheduled for eviction (counting down or waiting to be deleted)",
            inner.pending_evictions.clone(),
        );
        r.register(
            "queue_depth",
            "Work items waiting in the queue, due or not: pod keys (a cancelled eviction's key stays until its old deadline) and DeviceTaintRule status refreshes",
            inner.queue_depth.clone(),
        );
        r.register(
            "api_errors",
            "Failed API server requests, by verb",
            inner.api_errors.clone(),
        );
        r.register(
            "watch_restarts",
            "Watch streams that failed and were restarted, by resource kind",
            inner.watch_restarts.clone(),
        );
        r.register(
            "watch_idle_restarts",
            "Watches restarted because they received nothing, not even a bookmark, for --watch-idle-timeout, by resource kind",
            inner.watch_idle_restarts.clone(),
        );
        r.register(
            "skipped_objects",
            "Malformed or unsupported objects and fields that were logged and skipped, by kind and reason",
            inner.skipped_objects.clone(),
        );
        r.register(
            "dry_run_evictions",
            "Pods that would have been evicted but were left alone because of --dry-run",
            inner.dry_run_evictions.clone(),
        );
        r.register(
            "eviction_blocked",
            "Evictions refused by a PodDisruptionBudget (HTTP 429 with cause DisruptionBudget) and retried later",
            inner.eviction_blocked.clone(),
        );
        r.register(
            "api_throttled",
            "Requests the API server refused with HTTP 429 for load (priority and fairness, max in flight), \
             by verb; retried no sooner than its Retry-After. Also counted in api_errors",
            inner.api_throttled.clone(),
        );
        r.register(
            "api_conflicts",
            "Writes refused with HTTP 409 other than a failed UID precondition (e.g. the object has been \
             modified), by verb; retried. Also counted in api_errors",
            inner.api_conflicts.clone(),
        );
        r.register(
            "evictions_rate_limited",
            "Times a due eviction found no --max-evictions-per-second token and went back to wait for one \
             (the lowest priority goes first when one is earned)",
            inner.evictions_rate_limited.clone(),
        );
        r.register(
            "evictions_protected",
            "Due evictions withheld because the pod's priority is at or above --protected-priority \
             (once per pod and eviction)",
            inner.evictions_protected.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0",
            inner.leader.clone(),
        );
        r.register(
            "guard_tripped",
            "1 while the blast-radius guard holds the evictions of a scope (rule/NAME, pool/DRIVER/POOL or \
             cluster), 0 once it no longer does",
            inner.guard_tripped.clone(),
        );
        r.register(
            "guard_held_evictions",
            "Evictions due within the guard's window that the blast-radius guard holds",
            inner.guard_held.clone(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A pod was deleted (or evicted) by this controller, `latency` after its taint became effective.
    pub fn pod_deleted(&self, latency: Duration) {
        self.inner.pod_deletions.inc();
        self.inner.pod_deletion_duration.observe(latency.as_secs_f64());
    }

    /// A pod's DELETE (or Eviction) is being sent, `latency` after its eviction became due.
    pub fn decision(&self, latency: Duration) {
        self.inner.decision.observe(latency.as_secs_f64());
    }

    /// Pods evicted and dry-run evictions so far, and pods pending now: the periodic summary.
    #[must_use]
    pub fn eviction_totals(&self) -> EvictionTotals {
        EvictionTotals {
            evicted: self.inner.pod_deletions.get(),
            dry_run: self.inner.dry_run_evictions.get(),
            pending: self.inner.pending_evictions.get(),
        }
    }

    /// Number of pods scheduled for eviction.
    pub fn set_pending(&self, pods: i64) {
        self.inner.pending_evictions.set(pods);
    }

    /// Number of work items waiting in the queue (see the metric's help).
    pub fn set_queue_depth(&self, items: i64) {
        self.inner.queue_depth.set(items);
    }

    /// An API request failed; `verb` is one of [`API_VERBS`] or another short lowercase verb.
    pub fn api_error(&self, verb: &str) {
        self.inner
            .api_errors
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// A watch of `kind` (one of [`watch::KINDS`]) received nothing for `--watch-idle-timeout`
    /// and is restarted.
    pub fn watch_idle_restart(&self, kind: &str) {
        self.inner
            .watch_idle_restarts
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Objects of `kind` skipped for `reason` so far.
    #[cfg(test)]
    pub(crate) fn skipped_count(&self, kind: &str, reason: &str) -> u64 {
        self.inner
            .skipped_objects
            .get_or_create(&SkipLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Idle restarts of `kind`'s watch so far.
    #[cfg(test)]
    pub(crate) fn idle_restarts(&self, kind: &str) -> u64 {
        self.inner
            .watch_idle_restarts
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .get()
    }

    /// A watch stream of `kind` (one of [`watch::KINDS`]) failed and restarts.
    pub fn watch_restart(&self, kind: &str) {
        self.inner
            .watch_restarts
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// An object (or a part of it) of `kind` was skipped for `reason`, e.g. `unknown_effect`.
    pub fn skipped(&self, kind: &str, reason: &str) {
        self.inner
            .skipped_objects
            .get_or_create(&SkipLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A pod would have been evicted in `--dry-run`.
    pub fn dry_run_eviction(&self) {
        self.inner.dry_run_evictions.inc();
    }

    /// A PodDisruptionBudget refused an eviction (429); it will be retried.
    pub fn eviction_blocked(&self) {
        self.inner.eviction_blocked.inc();
    }

    /// The API server shed a request of `verb` with 429.
    pub fn api_throttled(&self, verb: &str) {
        self.inner
            .api_throttled
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// A write of `verb` hit a 409 other than a failed UID precondition.
    pub fn api_conflict(&self, verb: &str) {
        self.inner
            .api_conflicts
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// A due eviction found no `--max-evictions-per-second` token and went back to wait.
    pub fn eviction_rate_limited(&self) {
        self.inner.evictions_rate_limited.inc();
    }

    /// Whether the blast-radius guard holds a scope's evictions.
    pub fn set_guard_tripped(&self, scope: &str, tripped: bool) {
        self.inner
            .guard_tripped
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .set(i64::from(tripped));
    }

    /// Evictions the blast-radius guard holds.
    pub fn set_guard_held(&self, pods: usize) {
        self.inner.guard_held.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// A due eviction was withheld by `--protected-priority`.
    pub fn eviction_protected(&self) {
        self.inner.evictions_protected.inc();
    }

    /// Whether this replica currently leads.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }
}

/// The registry in `OpenMetrics` text format, ending with `# EOF`.
#[must_use]
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error could only come from a broken metric
    // implementation, and then a partial page is still the most useful answer.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "failed to encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Metrics, Registry) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        (metrics, registry)
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn upstream_metrics_are_byte_exact() {
        let (metrics, registry) = setup();
        metrics.pod_deleted(Duration::from_millis(300));
        let text = encode(&registry);
        let lines = lines(&text);
        assert!(lines.contains(
            &"# HELP device_taint_eviction_controller_pod_deletions Total number of Pods deleted by \
              DeviceTaintEvictionController since its start."
        ));
        assert!(lines.contains(&"# TYPE device_taint_eviction_controller_pod_deletions counter"));
        assert!(lines.contains(&"device_taint_eviction_controller_pod_deletions_total 1"));
        assert!(lines.contains(
            &"# HELP device_taint_eviction_controller_pod_deletion_duration_seconds Latency, in seconds, \
              between the time when a device taint effect has been activated and a Pod's deletion via \
              DeviceTaintEvictionController."
        ));
        assert!(
            lines
                .contains(&"# TYPE device_taint_eviction_controller_pod_deletion_duration_seconds histogram")
        );
        for help in lines.iter().filter(|l| l.starts_with("# HELP")) {
            assert!(!help.ends_with(".."), "doubled dot: {help}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_has_upstream_buckets() {
        let (metrics, registry) = setup();
        metrics.pod_deleted(Duration::from_millis(300));
        metrics.pod_deleted(Duration::from_secs(500));
        let text = encode(&registry);
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("device_taint_eviction_controller_pod_deletion_duration_seconds_bucket")
            })
            .collect();
        let les: Vec<&str> = buckets
            .iter()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            les,
            [
                "0.005", "0.025", "0.1", "0.5", "1.0", "2.5", "10.0", "30.0", "60.0", "120.0", "180.0",
                "240.0", "+Inf"
            ]
        );
        assert!(buckets[2].ends_with(" 0"), "{}", buckets[2]);
        assert!(
            buckets[3].ends_with(" 1"),
            "0.3 s lands in le=0.5: {}",
            buckets[3]
        );
        assert!(buckets[12].ends_with(" 2"), "+Inf counts all: {}", buckets[12]);
        assert!(text.contains("device_taint_eviction_controller_pod_deletion_duration_seconds_count 2\n"));
        assert!(text.contains("device_taint_eviction_controller_pod_deletion_duration_seconds_sum 500.3\n"));
    }

    #[test]
    fn our_metrics_and_labels() {
        let (metrics, registry) = setup();
        metrics.set_pending(7);
        metrics.set_queue_depth(2);
        metrics.api_error("delete");
        metrics.api_error("delete");
        metrics.api_error("apply_status");
        metrics.watch_restart("resourceslices");
        metrics.skipped("resourceslices", "unknown_effect");
        metrics.dry_run_eviction();
        metrics.eviction_blocked();
        metrics.eviction_rate_limited();
        metrics.eviction_protected();
        metrics.set_leader(true);
        let clone = metrics.clone();
        clone.set_leader(false);
        clone.set_leader(true);
        let text = encode(&registry);
        for expected in [
            "device_taint_eviction_controller_pending_evictions 7",
            "device_taint_eviction_controller_queue_depth 2",
            "device_taint_eviction_controller_api_errors_total{verb=\"delete\"} 2",
            "device_taint_eviction_controller_api_errors_total{verb=\"apply_status\"} 1",
            "device_taint_eviction_controller_watch_restarts_total{kind=\"resourceslices\"} 1",
            "device_taint_eviction_controller_skipped_objects_total{kind=\"resourceslices\",reason=\"unknown_effect\"} 1",
            "device_taint_eviction_controller_dry_run_evictions_total 1",
            "device_taint_eviction_controller_eviction_blocked_total 1",
            "device_taint_eviction_controller_evictions_rate_limited_total 1",
            "device_taint_eviction_controller_evictions_protected_total 1",
            "device_taint_eviction_controller_leader 1",
            "# TYPE device_taint_eviction_controller_pending_evictions gauge",
            "# TYPE device_taint_eviction_controller_api_errors counter",
        ] {
            assert!(
                lines(&text).contains(&expected),
                "missing {expected:?} in\n{text}"
            );
        }
    }

    #[test]
    fn known_series_start_at_zero() {
        let (_metrics, registry) = setup();
        let text = encode(&registry);
        for kind in watch::KINDS {
            let line = format!("device_taint_eviction_controller_watch_restarts_total{{kind=\"{kind}\"}} 0");
            assert!(lines(&text).contains(&line.as_str()), "missing {line}");
            let line =
                format!("device_taint_eviction_controller_watch_idle_restarts_total{{kind=\"{kind}\"}} 0");
            assert!(lines(&text).contains(&line.as_str()), "missing {line}");
        }
        for verb in API_VERBS {
            let line = format!("device_taint_eviction_controller_api_errors_total{{verb=\"{verb}\"}} 0");
            assert!(lines(&text).contains(&line.as_str()), "missing {line}");
        }
        assert!(text.contains("device_taint_eviction_controller_pod_deletions_total 0\n"));
        assert!(
            !text.contains("skipped_objects_total{"),
            "reasons appear on first use only"
        );
    }
}
