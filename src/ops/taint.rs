//! `taint` and `untaint`: create or delete a DeviceTaintRule, and follow the eviction progress
//! that the controller reports in the rule's `EvictionInProgress` condition.

use std::{fmt, io::Write, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
    core::ApiResource,
};
use tokio::time::{Instant, MissedTickBehavior};

use super::{
    ApiError, CONTROLLER_REPORT_TIMEOUT, Error, FIELD_MANAGER, is_not_found, rule_api, rule_permission,
    write_line,
};
use crate::{k8s::DeviceTaintRule, watch::Kind as _};

/// Longest Kubernetes object name (DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// How often the rule is read while showing progress. The controller refreshes the condition at
/// most every 10 s while pods are pending, so a faster poll would only repeat itself.
const PROGRESS_POLL: Duration = Duration::from_secs(1);

/// How often `untaint --wait` checks whether the rule is gone.
const DELETION_POLL: Duration = Duration::from_millis(500);

/// Taint effect of a DeviceTaintRule, spelled as in the API (`--effect`; the variants' doc
/// comments are its `--help` text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum TaintEffect {
    /// Pods using the device are evicted unless they tolerate the taint.
    NoExecute,
    /// New pods are not scheduled onto the device; running pods stay.
    NoSchedule,
    /// Nothing is enforced; the controller reports which pods would be evicted.
    None,
}

impl TaintEffect {
    /// The value of `spec.taint.effect`.
    #[must_use]
    pub fn as_api_str(self) -> &'static str {
        match self {
            Self::NoExecute => "NoExecute",
            Self::NoSchedule => "NoSchedule",
            Self::None => "None",
        }
    }
}

/// The rule `taint` creates and how to follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintRequest {
    /// Name of the rule; `None` to derive it from the selector and key ([`derive_rule_name`]).
    pub name: Option<String>,
    /// DRA driver whose devices are tainted.
    pub driver: String,
    /// Only devices of this pool.
    pub pool: Option<String>,
    /// Only this device.
    pub device: Option<String>,
    /// Taint key.
    pub key: String,
    /// Taint value (empty: none).
    pub value: String,
    /// Taint effect.
    pub effect: TaintEffect,
    /// Follow the eviction progress until every affected pod is gone.
    pub wait: bool,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

impl TaintRequest {
    /// Name of the rule to create: the given name, else derived from the selectors.
    #[must_use]
    pub fn rule_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            derive_rule_name(
                &self.driver,
                self.pool.as_deref(),
                self.device.as_deref(),
                &self.key,
            )
        })
    }
}

/// The rule `untaint` deletes: by name, or by the selectors and key `taint` derived its name from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UntaintRequest {
    /// Name of the rule.
    pub name: Option<String>,
    /// Driver given to `taint`.
    pub driver: Option<String>,
    /// Pool given to `taint`.
    pub pool: Option<String>,
    /// Device given to `taint`.
    pub device: Option<String>,
    /// Taint key given to `taint`.
    pub key: Option<String>,
    /// Wait until the rule is gone from the API server.
    pub wait: bool,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

impl UntaintRequest {
    /// Name of the rule to delete: the given name, else derived from the selectors as `taint`
    /// derives it. `None` when neither was given.
    #[must_use]
    pub fn rule_name(&self) -> Option<String> {
        match (&self.name, &self.driver, &self.key) {
            (Some(name), _, _) => Some(name.clone()),
            (None, Some(driver), Some(key)) => Some(derive_rule_name(
                driver,
                self.pool.as_deref(),
                self.device.as_deref(),
                key,
            )),
            _ => None,
        }
    }
}

/// Default DeviceTaintRule name for a selector: `dte-<driver>[-<pool>][-<device>]-<key>`, lowercased,
/// with every character a DNS-1123 subdomain does not allow replaced by `-`. Names longer than 253
/// characters are cut and end in a hash of the full name, so that distinct long selectors keep
/// distinct names and `untaint` derives the same name as `taint`.
#[must_use]
pub fn derive_rule_name(driver: &str, pool: Option<&str>, device: Option<&str>, key: &str) -> String {
    let raw: Vec<&str> = ["dte", driver]
        .into_iter()
        .chain(pool)
        .chain(device)
        .chain([key])
        .filter(|part| !part.is_empty())
        .collect();
    let raw = raw.join("-");
    let name = sanitize_dns_subdomain(&raw);
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let suffix = format!("-{:016x}", crate::fnv1a(raw.as_bytes()));
    let mut cut = name[..MAX_NAME_LEN - suffix.len()].to_owned();
    // A label must not end in '-' or '.', so trim before appending the hash.
    while cut.ends_with(['-', '.']) {
        cut.pop();
    }
    cut + &suffix
}

/// Lowercase and replace what a DNS-1123 subdomain forbids; every dot-separated label starts and
/// ends with an alphanumeric character and runs of '-' are collapsed.
fn sanitize_dns_subdomain(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let labels: Vec<String> = mapped
        .split('.')
        .map(|label| {
            let mut collapsed = String::with_capacity(label.len());
            for c in label.chars() {
                if !(c == '-' && collapsed.ends_with('-')) {
                    collapsed.push(c);
                }
            }
            collapsed.trim_matches('-').to_owned()
        })
        .filter(|label| !label.is_empty())
        .collect();
    labels.join(".")
}

/// Whether `name` is a valid DNS-1123 subdomain (the name of most Kubernetes objects).
#[must_use]
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What `taint` did to the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The rule did not exist.
    Created,
    /// The rule existed and was brought to the requested spec (possibly unchanged).
    Configured,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
        })
    }
}

/// Eviction progress of a rule, read from its `EvictionInProgress` condition message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pods waiting to be evicted because of the rule.
    pub pending: u64,
    /// Pods the controller evicted because of the rule since it started.
    pub evicted: u64,
}

/// How `--wait` shows progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressDisplay {
    /// A live progress bar on stderr; only the final result goes to the output.
    Bar,
    /// One line on the output whenever the numbers change (for logs and CI, which have no TTY).
    Lines,
}

impl ProgressDisplay {
    /// A bar when stderr is a terminal, lines otherwise.
    #[must_use]
    pub fn detect() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

/// Reads the counts from an `EvictionInProgress` message such as "5 pods need to be evicted in 2
/// different namespaces. 3 pods evicted since starting the controller." A count the message does
/// not state is 0 (upstream leaves out the parts that are zero).
#[must_use]
pub fn parse_progress(message: &str) -> Progress {
    let count = |suffixes: [&str; 2]| {
        suffixes
            .iter()
            .find_map(|suffix| number_before(message, suffix))
            .unwrap_or_default()
    };
    Progress {
        pending: count([" pods need to be evicted", " pod needs to be evicted"]),
        evicted: count([
            " pods evicted since starting the controller",
            " pod evicted since starting the controller",
        ]),
    }
}

/// The number written right before `suffix` in `text`.
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let head = &text[..text.find(suffix)?];
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    head[head.len() - digits..].parse().ok()
}

/// The server-side apply body for the rule `taint` creates: selector and taint only. `timeAdded`
/// is left to the server, which sets it when the taint is first added.
#[must_use]
pub fn rule_manifest(request: &TaintRequest, resource: &ApiResource) -> serde_json::Value {
    let mut selector = serde_json::Map::new();
    selector.insert("driver".into(), request.driver.clone().into());
    if let Some(pool) = &request.pool {
        selector.insert("pool".into(), pool.clone().into());
    }
    if let Some(device) = &request.device {
        selector.insert("device".into(), device.clone().into());
    }
    let mut taint = serde_json::Map::new();
    taint.insert("key".into(), request.key.clone().into());
    if !request.value.is_empty() {
        taint.insert("value".into(), request.value.clone().into());
    }
    taint.insert("effect".into(), request.effect.as_api_str().into());
    serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": request.rule_name()},
        "spec": {"deviceSelector": selector, "taint": taint},
    })
}

/// Creates or updates (server-side apply, so re-running is harmless) the DeviceTaintRule that
/// `request` describe, prints `devicetaintrule/<name> created` or `configured`, and with `--wait`
/// follows the eviction progress until it is done (see [`wait_until_done`]).
///
/// # Errors
/// When the server has no DeviceTaintRule API, refuses the rule (permission, validation, a
/// field owned by another manager), or `--wait` does not finish in time.
pub async fn taint(
    client: &kube::Client,
    request: &TaintRequest,
    display: ProgressDisplay,
    out: &mut impl Write,
) -> Result<Applied, Error> {
    let (api, resource) = rule_api(client).await?;
    let name = request.rule_name();
    // Server-side apply does not say whether it created the object, so look first.
    let existed = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::GetRule {
            name: name.clone(),
            source: ApiError::new(rule_permission("get"), e),
        })?
        .is_some();
    let verb = if existed { "patch" } else { "create and patch" };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(rule_manifest(request, &resource)),
    )
    .await
    .map_err(|e| Error::ApplyRule {
        name: name.clone(),
        source: ApiError::new(rule_permission(verb), e),
    })?;
    let applied = if existed {
        Applied::Configured
    } else {
        Applied::Created
    };
    write_line(out, &format!("devicetaintrule/{name} {applied}"))?;
    if request.wait {
        wait_until_done(&api, &name, request.timeout, display, out).await?;
    }
    Ok(applied)
}

/// Follows a rule's `EvictionInProgress` condition until the controller reports, for the rule's
/// current generation, that no pod is pending (`Completed` or `NotStarted`), updating the
/// progress about once a second. For an effect other than `NoExecute` it prints the condition
/// once it appears for the current generation and returns `None`.
///
/// # Errors
/// [`Error::WaitForController`] when no condition for the current generation appears within
/// [`CONTROLLER_REPORT_TIMEOUT`]; [`Error::WaitForEviction`] after `timeout`;
/// [`Error::WaitForDeletedRule`] when the rule disappears; read errors.
pub async fn wait_until_done(
    api: &Api<DeviceTaintRule>,
    name: &str,
    timeout: Duration,
    display: ProgressDisplay,
    out: &mut impl Write,
) -> Result<Option<Progress>, Error> {
    let started = Instant::now();
    let mut reporter = Reporter::new(name, display);
    let mut ticker = tokio::time::interval(PROGRESS_POLL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<Progress> = None;
    loop {
        ticker.tick().await;
        let result = check_rule(api, name, &mut reporter, out).await;
        match result {
            Ok(Check::Done(progress)) => {
                reporter.clear();
                return Ok(progress);
            }
            Ok(Check::Pending(progress)) => last = progress.or(last),
            Err(e) => {
                reporter.clear();
                return Err(e);
            }
        }
        let waited = started.elapsed();
        let error = if waited >= timeout {
            Some(Error::WaitForEviction {
                name: name.to_owned(),
                timeout,
                progress: last,
            })
        } else if last.is_none() && waited >= CONTROLLER_REPORT_TIMEOUT {
            Some(Error::WaitForController {
                name: name.to_owned(),
                waited: CONTROLLER_REPORT_TIMEOUT,
            })
        } else {
            None
        };
        if let Some(error) = error {
            reporter.clear();
            return Err(error);
        }
    }
}

/// What one look at the rule found.
enum Check {
    /// Finished, with the final counts for a `NoExecute` rule.
    Done(Option<Progress>),
    /// Not yet; the counts when the controller reported on the current generation.
    Pending(Option<Progress>),
}

async fn check_rule(
    api: &Api<DeviceTaintRule>,
    name: &str,
    reporter: &mut Reporter,
    out: &mut impl Write,
) -> Result<Check, Error> {
    let rule = api
        .get_opt(name)
        .await
        .map_err(|e| Error::GetRule {
            name: name.to_owned(),
            source: ApiError::new(rule_permission("get"), e),
        })?
        .ok_or_else(|| Error::WaitForDeletedRule {
            name: name.to_owned(),
        })?;
    // A condition computed for an older generation says nothing about the current spec.
    let current = rule.project().ok().and_then(|view| {
        view.condition
            .filter(|c| c.observed_generation == Some(view.generation))
    });
    let Some(condition) = current else {
        reporter.waiting(out)?;
        return Ok(Check::Pending(None));
    };
    if rule.spec.taint.effect != "NoExecute" {
        reporter.clear();
        let mut line = format!("devicetaintrule/{name}: {}", condition.reason);
        if !condition.message.is_empty() {
            line = format!("{line}: {}", condition.message);
        }
        write_line(out, &line)?;
        return Ok(Check::Done(None));
    }
    let progress = parse_progress(&condition.message);
    if matches!(condition.reason.as_str(), "Completed" | "NotStarted") {
        reporter.clear();
        let summary = if progress.evicted == 0 {
            "no pod needed eviction".to_owned()
        } else {
            format!("{} evicted", pods(progress.evicted))
        };
        write_line(out, &format!("devicetaintrule/{name}: done, {summary}"))?;
        return Ok(Check::Done(Some(progress)));
    }
    reporter.progress(progress, out)?;
    Ok(Check::Pending(Some(progress)))
}

fn pods(n: u64) -> String {
    if n == 1 {
        "1 pod".to_owned()
    } else {
        format!("{n} pods")
    }
}

/// Shows waiting and progress either as a live bar on stderr or as lines on the output, where a
/// line is only written when it differs from the previous one.
struct Reporter {
    name: String,
    bar: Option<ProgressBar>,
    last_line: Option<String>,
}

impl Reporter {
    fn new(name: &str, display: ProgressDisplay) -> Self {
        let bar = (display == ProgressDisplay::Bar).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            name: name.to_owned(),
            bar,
            last_line: None,
        }
    }

    fn waiting(&mut self, out: &mut impl Write) -> Result<(), Error> {
        let line = format!(
            "devicetaintrule/{}: waiting for the controller to report eviction progress",
            self.name
        );
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            return Ok(());
        }
        self.line(&line, out)
    }

    fn progress(&mut self, progress: Progress, out: &mut impl Write) -> Result<(), Error> {
        if let Some(bar) = &self.bar {
            if bar.length().is_none() {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{bar:40}] {pos}/{len} pods evicted, {msg} [{elapsed}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
            }
            bar.set_length(progress.pending + progress.evicted);
            bar.set_position(progress.evicted);
            bar.set_message(format!("{} pending", progress.pending));
            return Ok(());
        }
        let line = format!(
            "devicetaintrule/{}: {} pending eviction, {} evicted",
            self.name,
            pods(progress.pending),
            progress.evicted
        );
        self.line(&line, out)
    }

    fn line(&mut self, line: &str, out: &mut impl Write) -> Result<(), Error> {
        if self.last_line.as_deref() == Some(line) {
            return Ok(());
        }
        write_line(out, line)?;
        self.last_line = Some(line.to_owned());
        Ok(())
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Deletes the rule named by `request` (`--name`, or derived from the selectors as `taint` derives
/// it), prints `devicetaintrule/<name> deleted`, and with `--wait` returns only once the rule is
/// gone.
///
/// # Errors
/// [`Error::DeleteMissingRule`] when there is no such rule; [`Error::WaitForRuleDeletion`] when it
/// is still there after `--timeout`; API errors.
pub async fn untaint(
    client: &kube::Client,
    request: &UntaintRequest,
    out: &mut impl Write,
) -> Result<(), Error> {
    let name = request.rule_name().ok_or(Error::NameRule)?;
    let (api, _) = rule_api(client).await?;
    let deleted = match api.delete(&name, &DeleteParams::default()).await {
        Ok(deleted) => deleted,
        Err(e) if is_not_found(&e) => return Err(Error::DeleteMissingRule { name }),
        Err(e) => {
            return Err(Error::DeleteRule {
                name,
                source: ApiError::new(rule_permission("delete"), e),
            });
        }
    };
    write_line(out, &format!("devicetaintrule/{name} deleted"))?;
    // `Right` is the server's word that the object is gone already; `Left` is the object
    // still present (finalizers).
    if request.wait && deleted.is_left() {
        wait_until_gone(&api, &name, request.timeout).await?;
    }
    Ok(())
}

/// Polls until the rule no longer exists.
async fn wait_until_gone(api: &Api<DeviceTaintRule>, name: &str, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(DELETION_POLL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let present = api.get_opt(name).await.map_err(|e| Error::GetRule {
            name: name.to_owned(),
            source: ApiError::new(rule_permission("get"), e),
        })?;
        if present.is_none() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::WaitForRuleDeletion {
                name: name.to_owned(),
                timeout,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::device_taint_rule_resource;

    fn taint_request(driver: &str, key: &str) -> TaintRequest {
        TaintRequest {
            name: None,
            driver: driver.to_owned(),
            pool: None,
            device: None,
            key: key.to_owned(),
            value: String::new(),
            effect: TaintEffect::NoExecute,
            wait: false,
            timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn progress_from_messages() {
        let cases = [
            ("", Progress::default()),
            (
                "1 pod needs to be evicted in 1 namespace.",
                Progress {
                    pending: 1,
                    evicted: 0,
                },
            ),
            (
                "5 pods need to be evicted in 3 different namespaces.",
                Progress {
                    pending: 5,
                    evicted: 0,
                },
            ),
            (
                "12 pods need to be evicted in 1 namespace. 1 pod evicted since starting the controller.",
                Progress {
                    pending: 12,
                    evicted: 1,
                },
            ),
            (
                "1000 pods evicted since starting the controller.",
                Progress {
                    pending: 0,
                    evicted: 1000,
                },
            ),
            (
                "Eviction only happens for the NoExecute effect. 2 pods evicted since starting the controller.",
                Progress {
                    pending: 0,
                    evicted: 2,
                },
            ),
            (
                // The None report is about what would happen: nothing pending.
                "1 published device selected. 1 allocated device selected. 1 pod would be evicted in 1 namespace \
                 if the effect was NoExecute.",
                Progress::default(),
            ),
        ];
        for (message, want) in cases {
            assert_eq!(parse_progress(message), want, "message {message:?}");
        }
    }

    #[test]
    fn progress_parses_what_the_controller_writes() {
        use crate::{
            rule_status::{RuleCounts, rule_condition},
            view::Effect,
        };
        for (pending_pods, evicted) in [(0, 0), (1, 0), (7, 0), (1, 1), (40, 960), (0, 1000)] {
            let condition = rule_condition(
                &Effect::NoExecute,
                &RuleCounts {
                    pending_pods,
                    pending_namespaces: usize::from(pending_pods > 0),
                    blocked_pods: 0,
                    protected_pods: 0,
                    evicted,
                    simulation: None,
                    ..RuleCounts::default()
                },
            );
            assert_eq!(
                parse_progress(&condition.message),
                Progress {
                    pending: pending_pods as u64,
                    evicted
                },
                "{}",
                condition.message
            );
        }
    }

    #[test]
    fn manifest_has_selector_and_taint_without_time() {
        let request = TaintRequest {
            pool: Some("node-1".to_owned()),
            device: Some("gpu-0".to_owned()),
            value: "ecc".to_owned(),
            ..taint_request("gpu.example.com", "example.com/unhealthy")
        };
        let manifest = rule_manifest(&request, &device_taint_rule_resource("v1beta2"));
        assert_eq!(
            manifest,
            serde_json::json!({
                "apiVersion": "resource.k8s.io/v1beta2",
                "kind": "DeviceTaintRule",
                "metadata": {"name": "dte-gpu.example.com-node-1-gpu-0-example.com-unhealthy"},
                "spec": {
                    "deviceSelector": {"driver": "gpu.example.com", "pool": "node-1", "device": "gpu-0"},
                    "taint": {"key": "example.com/unhealthy", "value": "ecc", "effect": "NoExecute"}
                }
            })
        );
        // What we send parses as our own type, so the apply response does too.
        let rule: DeviceTaintRule = serde_json::from_value(manifest).expect("parses");
        assert!(rule.spec.taint.time_added.is_none());
    }

    #[test]
    fn manifest_leaves_out_unset_fields() {
        let request = TaintRequest {
            name: Some("maintenance".to_owned()),
            effect: TaintEffect::None,
            ..taint_request("gpu.example.com", "k")
        };
        let manifest = rule_manifest(&request, &device_taint_rule_resource("v1alpha3"));
        assert_eq!(manifest["metadata"]["name"], "maintenance");
        assert_eq!(manifest["apiVersion"], "resource.k8s.io/v1alpha3");
        assert_eq!(
            manifest["spec"],
            serde_json::json!({
                "deviceSelector": {"driver": "gpu.example.com"},
                "taint": {"key": "k", "effect": "None"}
            })
        );
    }

    #[test]
    fn line_reporter_writes_changes_only() {
        let mut out = Vec::new();
        let mut reporter = Reporter::new("r", ProgressDisplay::Lines);
        reporter.waiting(&mut out).expect("write");
        reporter.waiting(&mut out).expect("write");
        let p = Progress {
            pending: 2,
            evicted: 1,
        };
        reporter.progress(p, &mut out).expect("write");
        reporter.progress(p, &mut out).expect("write");
        reporter
            .progress(
                Progress {
                    pending: 1,
                    evicted: 2,
                },
                &mut out,
            )
            .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "devicetaintrule/r: waiting for the controller to report eviction progress\n\
             devicetaintrule/r: 2 pods pending eviction, 1 evicted\n\
             devicetaintrule/r: 1 pod pending eviction, 2 evicted\n"
        );
    }

    #[test]
    fn applied_spelling() {
        assert_eq!(Applied::Created.to_string(), "created");
        assert_eq!(Applied::Configured.to_string(), "configured");
    }

    #[test]
    fn derived_names_are_valid() {
        assert_eq!(
            derive_rule_name("Gpu_Driver", None, None, "..Key//x.."),
            "dte-gpu-driver.key-x"
        );
        assert_eq!(derive_rule_name("a", Some(""), None, "b"), "dte-a-b");
        let long = "x".repeat(300);
        let name = derive_rule_name("d", Some(&long), None, "k");
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(is_dns_subdomain(&name), "{name}");
        let other = derive_rule_name("d", Some(&long), None, "k2");
        assert_ne!(name, other, "long names keep a distinguishing hash");
        let dotted = derive_rule_name("d", Some(&format!("{}.-y", "z".repeat(240))), None, "k");
        assert!(is_dns_subdomain(&dotted), "{dotted}");
    }
}
