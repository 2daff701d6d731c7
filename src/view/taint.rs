//! Device taints and tolerations, parsed leniently: an unknown effect or operator is kept as
//! such (and never acts), it is not an error.

use super::Time;
use crate::k8s::{ApiDeviceTaint, ApiDeviceToleration};

/// The effect of a device taint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// Pods using the device are evicted unless they tolerate the taint.
    NoExecute,
    /// No new allocations; no eviction.
    NoSchedule,
    /// Informational only (`None`).
    None,
    /// An effect this controller does not know; treated like `None` as the API requires.
    Unknown(String),
}

impl Effect {
    /// Parses an effect string as the API carries it.
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s {
            "NoExecute" => Self::NoExecute,
            "NoSchedule" => Self::NoSchedule,
            "None" => Self::None,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The API string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::NoExecute => "NoExecute",
            Self::NoSchedule => "NoSchedule",
            Self::None => "None",
            Self::Unknown(s) => s,
        }
    }
}

/// A device taint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value, empty when unset.
    pub value: String,
    /// Effect.
    pub effect: Effect,
    /// When the taint became active. `None` only when the object carried no `timeAdded`; the
    /// index replaces that with the time it first saw the taint (SPEC D2) before deciding.
    pub time_added: Option<Time>,
}

impl Taint {
    /// Projects an API taint.
    #[must_use]
    pub fn from_api(taint: &ApiDeviceTaint) -> Self {
        Self::from_parts(
            &taint.key,
            taint.value.as_deref(),
            &taint.effect,
            taint.time_added.as_ref(),
        )
    }

    /// Projects a taint from its fields.
    #[must_use]
    pub fn from_parts(
        key: &str,
        value: Option<&str>,
        effect: &str,
        time_added: Option<&crate::k8s::Time>,
    ) -> Self {
        Self {
            key: key.to_owned(),
            value: value.unwrap_or_default().to_owned(),
            effect: Effect::parse(effect),
            time_added: time_added.map(|t| t.0),
        }
    }

    /// True when key, value and effect are equal (the time may differ).
    #[must_use]
    pub fn same_taint(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value && self.effect == other.effect
    }
}

/// The operator of a toleration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// Values must be equal (also the meaning of an empty operator).
    Equal,
    /// Any value.
    Exists,
    /// An operator this controller does not know: the toleration matches nothing.
    Unknown(String),
}

/// A device toleration, as copied into the claim's allocation result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// Key, empty matches every key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Value.
    pub value: String,
    /// Effect, `None` matches every effect.
    pub effect: Option<Effect>,
    /// How long a `NoExecute` taint is tolerated; `None` means forever.
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Projects an API toleration.
    #[must_use]
    pub fn from_api(t: &ApiDeviceToleration) -> Self {
        let operator = match t.operator.as_deref() {
            None | Some("" | "Equal") => Operator::Equal,
            Some("Exists") => Operator::Exists,
            Some(other) => Operator::Unknown(other.to_owned()),
        };
        Self {
            key: t.key.clone().unwrap_or_default(),
            operator,
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.as_deref().filter(|e| !e.is_empty()).map(Effect::parse),
            toleration_seconds: t.toleration_seconds,
        }
    }

    /// Whether this toleration matches `taint` (upstream `ToleratesTaint`, 1.37 semantics: an
    /// empty effect matches every effect).
    #[must_use]
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.as_ref().is_some_and(|e| *e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            Operator::Equal => self.value == taint.value,
            Operator::Exists => true,
            Operator::Unknown(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: Effect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
            time_added: None,
        }
    }

    fn tol(key: &str, op: Operator, value: &str, effect: Option<Effect>) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_matching_table() {
        let t = taint("k", "v", Effect::NoExecute);
        let cases = [
            (
                "exact",
                tol("k", Operator::Equal, "v", Some(Effect::NoExecute)),
                true,
            ),
            (
                "empty-effect-matches-all",
                tol("k", Operator::Equal, "v", None),
                true,
            ),
            (
                "other-effect",
                tol("k", Operator::Equal, "v", Some(Effect::NoSchedule)),
                false,
            ),
            ("other-key", tol("x", Operator::Exists, "", None), false),
            ("other-value", tol("k", Operator::Equal, "w", None), false),
            ("exists-any-value", tol("k", Operator::Exists, "", None), true),
            ("empty-key-exists", tol("", Operator::Exists, "", None), true),
            (
                "empty-key-equal-needs-value",
                tol("", Operator::Equal, "v", None),
                true,
            ),
            (
                "empty-key-equal-other-value",
                tol("", Operator::Equal, "w", None),
                false,
            ),
            (
                "unknown-operator",
                tol("k", Operator::Unknown("Gt".into()), "v", None),
                false,
            ),
        ];
        for (name, toleration, want) in cases {
            assert_eq!(toleration.tolerates(&t), want, "case {name}");
        }
        let no_schedule = taint("k", "v", Effect::NoSchedule);
        assert!(tol("k", Operator::Exists, "", Some(Effect::NoSchedule)).tolerates(&no_schedule));
        assert!(!tol("k", Operator::Exists, "", Some(Effect::NoExecute)).tolerates(&no_schedule));
    }

    #[test]
    fn parses_api_toleration_defaults() {
        let api = ApiDeviceToleration {
            key: Some("k".into()),
            ..Default::default()
        };
        let t = Toleration::from_api(&api);
        assert_eq!(t.operator, Operator::Equal);
        assert_eq!(t.effect, None);
        let api = ApiDeviceToleration {
            operator: Some("Lt".into()),
            effect: Some(String::new()),
            ..Default::default()
        };
        let t = Toleration::from_api(&api);
        assert_eq!(t.operator, Operator::Unknown("Lt".into()));
        assert_eq!(t.effect, None);
    }

    #[test]
    fn unknown_effect_round_trips() {
        assert_eq!(Effect::parse("Sometimes"), Effect::Unknown("Sometimes".into()));
        assert_eq!(Effect::parse("Sometimes").as_str(), "Sometimes");
        assert_eq!(Effect::parse("None"), Effect::None);
    }
}
