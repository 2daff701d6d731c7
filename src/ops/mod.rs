//! The operator commands: `taint` and `untaint` create and delete a DeviceTaintRule and can follow
//! the eviction progress the controller reports on it; `explain` lists, for the current cluster
//! state, every pod that is or would be evicted, why and when.
//!
//! Each command takes a client and writes what a person reads to an injected writer, so that the
//! cluster tests can run the commands and inspect their output. Progress bars, when enabled, are
//! drawn on stderr and never mixed into that writer.

mod explain;
mod resume;
mod taint;

use std::time::Duration;

pub use explain::{
    ExplainRequest, ExplainRow, OutputFormat, explain, explain_cluster, format_relative, write_guard,
    write_table,
};
use kube::{Api, core::ApiResource};
pub use resume::{ResumeRequest, accept_patch, resume};
pub use taint::{
    Applied, MAX_NAME_LEN, Progress, ProgressDisplay, TaintEffect, TaintRequest, UntaintRequest,
    derive_rule_name, is_dns_subdomain, parse_progress, rule_manifest, taint, untaint, wait_until_done,
};

use crate::{
    client::ApiError,
    k8s::{self, DeviceTaintRule},
};

/// Field manager of every write the command-line tool makes.
pub const FIELD_MANAGER: &str = "device-taint-eviction-cli";

/// What `taint` tells when the server has no DeviceTaintRule API.
pub const RULE_API_NOT_SERVED: &str = "this cluster serves no DeviceTaintRule API; enable the DRADeviceTaintRules \
     feature gate and resource.k8s.io/v1alpha3 (1.35) or v1beta2 (1.36)";

/// How long `--wait` waits for the first `EvictionInProgress` condition before concluding that no
/// controller handles the rule.
pub const CONTROLLER_REPORT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to discover which DeviceTaintRule version the API server serves")]
    DiscoverRuleApi(#[source] ApiError),

    #[error("{RULE_API_NOT_SERVED}")]
    RuleApiNotServed,

    #[error("failed to read DeviceTaintRule {name}")]
    GetRule {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("failed to apply DeviceTaintRule {name}")]
    ApplyRule {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("failed to name the DeviceTaintRule to delete: give --name, or --driver and --key")]
    NameRule,

    #[error("failed to delete DeviceTaintRule {name}: it does not exist")]
    DeleteMissingRule { name: String },

    #[error("failed to delete DeviceTaintRule {name}")]
    DeleteRule {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("failed to resume DeviceTaintRule {name}: it does not exist")]
    ResumeMissingRule { name: String },

    #[error("failed to resume DeviceTaintRule {name}")]
    ResumeRule {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("failed to list {kind}")]
    List {
        kind: &'static str,
        #[source]
        source: ApiError,
    },

    #[error(
        "failed to wait for DeviceTaintRule {name}: it was deleted while waiting for the eviction progress"
    )]
    WaitForDeletedRule { name: String },

    #[error(
        "failed to wait for DeviceTaintRule {name}: no controller reported on it within {}s; the \
         device-taint-eviction controller (or kube-controller-manager's device-taint-eviction-controller) \
         does not seem to run",
        waited.as_secs()
    )]
    WaitForController { name: String, waited: Duration },

    #[error(
        "failed to wait for DeviceTaintRule {name}: gave up after {}s{}",
        timeout.as_secs(),
        progress.map_or_else(
            || " before any controller reported on it".to_owned(),
            |p| match p.pending {
                1 => " with 1 pod still pending eviction".to_owned(),
                n => format!(" with {n} pods still pending eviction"),
            }
        )
    )]
    WaitForEviction {
        name: String,
        timeout: Duration,
        progress: Option<Progress>,
    },

    #[error("failed to wait for DeviceTaintRule {name} to be deleted: still present after {}s", timeout.as_secs())]
    WaitForRuleDeletion { name: String, timeout: Duration },

    #[error("failed to encode the result as JSON")]
    EncodeJson(#[source] serde_json::Error),

    #[error("failed to write the output")]
    WriteOutput(#[source] std::io::Error),
}

/// Whether an error is the server's NotFound answer.
fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// `<verb> devicetaintrules.resource.k8s.io`, the permission a rule request needs.
fn rule_permission(verb: &str) -> String {
    format!("{verb} devicetaintrules.{}", k8s::RESOURCE_GROUP)
}

/// The DeviceTaintRule API at the version the server prefers.
///
/// # Errors
/// [`Error::RuleApiNotServed`] when the server has none; [`Error::DiscoverRuleApi`] when discovery
/// fails.
pub async fn rule_api(client: &kube::Client) -> Result<(Api<DeviceTaintRule>, ApiResource), Error> {
    let resource = k8s::discover_device_taint_rule(client)
        .await
        .map_err(|e| Error::DiscoverRuleApi(ApiError::new(format!("get /apis/{}", k8s::RESOURCE_GROUP), e)))?
        .ok_or(Error::RuleApiNotServed)?;
    Ok((Api::all_with(client.clone(), &resource), resource))
}

fn write_line(out: &mut impl std::io::Write, line: &str) -> Result<(), Error> {
    writeln!(out, "{line}").map_err(Error::WriteOutput)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_served_message() {
        assert_eq!(
            Error::RuleApiNotServed.to_string(),
            "this cluster serves no DeviceTaintRule API; enable the DRADeviceTaintRules feature gate and \
             resource.k8s.io/v1alpha3 (1.35) or v1beta2 (1.36)"
        );
    }

    #[test]
    fn wait_errors() {
        let e = Error::WaitForEviction {
            name: "r".into(),
            timeout: Duration::from_secs(600),
            progress: Some(Progress {
                pending: 3,
                evicted: 7,
            }),
        };
        assert_eq!(
            e.to_string(),
            "failed to wait for DeviceTaintRule r: gave up after 600s with 3 pods still pending eviction"
        );
        let e = Error::WaitForController {
            name: "r".into(),
            waited: CONTROLLER_REPORT_TIMEOUT,
        };
        assert!(
            e.to_string().contains("no controller reported on it within 30s"),
            "{e}"
        );
    }
}
