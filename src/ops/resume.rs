//! `resume`: accept a DeviceTaintRule's evictions that the blast-radius guard paused (SPEC D11),
//! by setting the acceptance annotation on the rule. The annotation is the audit trail: who set
//! it and when is in the API server's audit log and the rule's `managedFields`.

use std::io::Write;

use kube::api::{Patch, PatchParams};

use super::{Error, FIELD_MANAGER, is_not_found, rule_api, rule_permission, write_line};
use crate::{client::ApiError, guard::ACCEPT_ANNOTATION};

/// What `resume` is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The rule.
    pub name: String,
    /// How many of its evictions the operator accepts; `None` removes the acceptance.
    pub accept: Option<usize>,
}

/// The merge patch that sets (or, for `None`, removes) the acceptance annotation.
#[must_use]
pub fn accept_patch(accept: Option<usize>) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {ACCEPT_ANNOTATION: accept.map(|n| n.to_string())}}})
}

/// Sets the acceptance annotation on the rule.
///
/// # Errors
/// The rule API is not served, the rule does not exist, or the patch fails.
pub async fn resume(
    client: &kube::Client,
    request: &ResumeRequest,
    out: &mut impl Write,
) -> Result<(), Error> {
    let (api, _) = rule_api(client).await?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let name = &request.name;
    match api
        .patch(name, &params, &Patch::Merge(accept_patch(request.accept)))
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Err(Error::ResumeMissingRule { name: name.clone() }),
        Err(e) => {
            return Err(Error::ResumeRule {
                name: name.clone(),
                source: ApiError::new(rule_permission("patch"), e),
            });
        }
    }
    let line = match request.accept {
        Some(n) => {
            format!("devicetaintrule/{name} annotated {ACCEPT_ANNOTATION}={n}: up to {n} evictions accepted")
        }
        None => format!("devicetaintrule/{name}: acceptance {ACCEPT_ANNOTATION} removed"),
    };
    write_line(out, &line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_or_removes_the_annotation() {
        assert_eq!(
            accept_patch(Some(30)),
            serde_json::json!({"metadata": {"annotations": {"device-taint-eviction/accept-evictions": "30"}}})
        );
        assert_eq!(
            accept_patch(None),
            serde_json::json!({"metadata": {"annotations": {"device-taint-eviction/accept-evictions": null}}})
        );
    }
}
