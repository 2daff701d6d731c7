//! The DeviceTaintRule view: selector, taint, and the condition this controller last wrote.

use super::{DeviceId, Invalid, RuleRef, Taint, Time};
use crate::k8s::DeviceTaintRule;

/// `spec.deviceSelector`: every set field must match, an unset field matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// Driver.
    pub driver: Option<String>,
    /// Pool.
    pub pool: Option<String>,
    /// Device.
    pub device: Option<String>,
}

impl Selector {
    /// Whether the selector matches a device.
    #[must_use]
    pub fn matches(&self, device: &DeviceId) -> bool {
        self.driver.as_ref().is_none_or(|d| *d == device.driver)
            && self.pool.as_ref().is_none_or(|p| *p == device.pool)
            && self.device.as_ref().is_none_or(|n| *n == device.device)
    }

    /// An empty selector `{}` selects every device in the cluster (SPEC D10).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.driver.is_none() && self.pool.is_none() && self.device.is_none()
    }
}

/// The `EvictionInProgress` condition as last seen on the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCondition {
    /// `True` or `False`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Rule generation the condition was computed for.
    pub observed_generation: Option<i64>,
    /// When the condition last changed.
    pub last_transition_time: Time,
}

/// The parts of a DeviceTaintRule that the controller reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleView {
    /// Name (cluster-scoped).
    pub name: String,
    /// UID.
    pub uid: String,
    /// `metadata.generation`, bumped on spec changes.
    pub generation: i64,
    /// `None` selects nothing; an empty selector selects every device.
    pub selector: Option<Selector>,
    /// The taint.
    pub taint: Taint,
    /// The `EvictionInProgress` condition, if any (status only: never triggers eviction work).
    pub condition: Option<RuleCondition>,
    /// Selector fields this controller does not understand. When there are any, `selector` is
    /// `None`: the rule fails closed and selects nothing (matching everything would be wrong).
    pub unknown_selector_fields: Vec<String>,
    /// Evictions the operator accepted beyond the blast-radius guard (annotation
    /// [`crate::guard::ACCEPT_ANNOTATION`], SPEC D11); `None` when absent or not a count.
    pub accept: Option<usize>,
}

/// The condition type this controller owns on DeviceTaintRules.
pub const EVICTION_IN_PROGRESS: &str = "EvictionInProgress";

impl RuleView {
    /// Projects a rule.
    ///
    /// # Errors
    /// A rule without name or UID is invalid.
    pub fn from_api(rule: &DeviceTaintRule) -> Result<Self, Invalid> {
        let name = rule.metadata.name.clone().unwrap_or_default();
        let invalid = |field| Invalid {
            kind: "DeviceTaintRule",
            object: name.clone(),
            field,
        };
        if name.is_empty() {
            return Err(invalid("metadata.name"));
        }
        let uid = rule.metadata.uid.clone().ok_or_else(|| invalid("metadata.uid"))?;
        let t = &rule.spec.taint;
        let condition = rule
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == EVICTION_IN_PROGRESS))
            .map(|c| RuleCondition {
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: c.observed_generation,
                last_transition_time: c.last_transition_time.0,
            });
        Ok(Self {
            name,
            uid,
            generation: rule.metadata.generation.unwrap_or_default(),
            selector: rule
                .spec
                .device_selector
                .as_ref()
                .filter(|s| s.other.is_empty())
                .map(|s| Selector {
                    driver: s.driver.clone(),
                    pool: s.pool.clone(),
                    device: s.device.clone(),
                }),
            taint: Taint::from_parts(&t.key, t.value.as_deref(), &t.effect, t.time_added.as_ref()),
            condition,
            unknown_selector_fields: rule
                .spec
                .device_selector
                .as_ref()
                .map(|s| s.other.keys().cloned().collect())
                .unwrap_or_default(),
            accept: rule
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::guard::ACCEPT_ANNOTATION))
                .and_then(|v| v.trim().parse().ok()),
        })
    }

    /// The rule's reference.
    #[must_use]
    pub fn rule_ref(&self) -> RuleRef {
        RuleRef::new(&self.name, &self.uid)
    }

    /// Whether the rule selects the device (a missing selector selects nothing).
    #[must_use]
    pub fn selects(&self, device: &DeviceId) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(device))
    }

    /// Same UID, selector and taint: a status-only change.
    #[must_use]
    pub fn same_spec(&self, other: &Self) -> bool {
        self.uid == other.uid
            && self.generation == other.generation
            && self.selector == other.selector
            && self.unknown_selector_fields == other.unknown_selector_fields
            && self.taint == other.taint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nil_selector_selects_nothing_empty_selects_all() {
        let d = DeviceId::new("d", "p", "x");
        let mut rule = RuleView {
            name: "r".into(),
            uid: "u".into(),
            generation: 1,
            selector: None,
            taint: Taint::from_parts("k", None, "NoExecute", None),
            condition: None,
            unknown_selector_fields: Vec::new(),
            accept: None,
        };
        assert!(!rule.selects(&d));
        rule.selector = Some(Selector::default());
        assert!(rule.selects(&d));
        rule.selector = Some(Selector {
            pool: Some("p".into()),
            ..Selector::default()
        });
        assert!(rule.selects(&d));
        rule.selector = Some(Selector {
            device: Some("y".into()),
            ..Selector::default()
        });
        assert!(!rule.selects(&d));
    }

    /// The acceptance annotation: a count, else no acceptance (a typo accepts nothing).
    #[test]
    fn acceptance_annotation() {
        let decode = |value: Option<&str>| {
            let mut metadata = serde_json::json!({"name": "r", "uid": "u"});
            if let Some(value) = value {
                metadata["annotations"] = serde_json::json!({ crate::guard::ACCEPT_ANNOTATION: value });
            }
            let api: DeviceTaintRule = serde_json::from_value(serde_json::json!({
                "metadata": metadata, "spec": {"taint": {"key": "k", "effect": "NoExecute"}}
            }))
            .expect("rule");
            RuleView::from_api(&api).expect("valid rule").accept
        };
        assert_eq!(decode(None), None);
        assert_eq!(decode(Some("30")), Some(30));
        assert_eq!(decode(Some(" 0 ")), Some(0));
        assert_eq!(decode(Some("-1")), None);
        assert_eq!(decode(Some("all")), None);
    }

    /// As decoded from the API: `deviceSelector` absent or `null` selects nothing, `{}` selects
    /// every device (upstream's documented semantics; D10 warns about the latter).
    #[test]
    fn decoded_selector_semantics() {
        let d = DeviceId::new("d", "p", "x");
        let decode = |selector: Option<serde_json::Value>| {
            let mut spec = serde_json::json!({"taint": {"key": "k", "effect": "NoExecute"}});
            if let Some(selector) = selector {
                spec["deviceSelector"] = selector;
            }
            let api: DeviceTaintRule = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "r", "uid": "u"}, "spec": spec
            }))
            .expect("rule");
            RuleView::from_api(&api).expect("valid rule")
        };
        let absent = decode(None);
        assert_eq!(absent.selector, None);
        assert!(!absent.selects(&d));
        let null = decode(Some(serde_json::Value::Null));
        assert_eq!(null.selector, None);
        assert!(!null.selects(&d));
        let empty = decode(Some(serde_json::json!({})));
        assert!(empty.selector.as_ref().is_some_and(Selector::is_empty));
        assert!(empty.selects(&d));
    }
}
