//! Compact, owned projections of the watched API objects.
//!
//! A view keeps exactly what the eviction decision needs and nothing else (no `managedFields`,
//! no container specs). Views derive `PartialEq`, so an update whose view did not change is
//! recognised and does no work. Converting an API object never fails hard: an object that lacks
//! what a view needs yields [`Invalid`], which the caller logs, counts and skips.

mod claim;
mod pod;
mod rule;
mod slice;
mod taint;

use std::fmt;

pub use claim::{AllocatedDevice, ClaimView};
pub use pod::{PodClaim, PodView};
pub use rule::{EVICTION_IN_PROGRESS, RuleCondition, RuleView, Selector};
pub use slice::{DeviceView, SliceView};
pub use taint::{Effect, Operator, Taint, Toleration};

/// Wall-clock time as the API server writes it.
pub type Time = crate::k8s::Timestamp;

/// Why an API object could not be turned into a view.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object} is missing {field}")]
pub struct Invalid {
    /// Kind of the object, e.g. `Pod`.
    pub kind: &'static str,
    /// `namespace/name` or `name`, as far as known.
    pub object: String,
    /// The missing or malformed field.
    pub field: &'static str,
}

impl Invalid {
    /// A short, stable label for the skipped-objects metric.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.field
    }
}

/// Namespace, name and UID of a namespaced object; a missing one makes the object invalid.
pub(crate) fn namespaced_ids(
    kind: &'static str,
    meta: &crate::k8s::ObjectMeta,
) -> Result<(String, String, String), Invalid> {
    let invalid = |field| Invalid {
        kind,
        object: format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
        field,
    };
    let namespace = meta
        .namespace
        .clone()
        .ok_or_else(|| invalid("metadata.namespace"))?;
    let name = meta.name.clone().ok_or_else(|| invalid("metadata.name"))?;
    let uid = meta.uid.clone().ok_or_else(|| invalid("metadata.uid"))?;
    Ok((namespace, name, uid))
}

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectName {
    /// Builds a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod identified by namespace, name and UID: a pod recreated under the same name is a
/// different pod, so every pending eviction is keyed by this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PodRef {
    /// Builds a reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, uid: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// The pod's `namespace/name`.
    #[must_use]
    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(&self.namespace, &self.name)
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// A DeviceTaintRule identified by name and UID (cluster-scoped).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl RuleRef {
    /// Builds a reference.
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {})", self.name, self.uid)
    }
}

/// A pool of devices: slices of one driver with the same pool name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId {
    /// Driver name.
    pub driver: String,
    /// Pool name.
    pub pool: String,
}

/// A device as named by an allocation result: driver, pool and device name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// Driver name.
    pub driver: String,
    /// Pool name.
    pub pool: String,
    /// Device name.
    pub device: String,
}

impl DeviceId {
    /// Builds an id.
    pub fn new(driver: impl Into<String>, pool: impl Into<String>, device: impl Into<String>) -> Self {
        Self {
            driver: driver.into(),
            pool: pool.into(),
            device: device.into(),
        }
    }

    /// The pool the device belongs to.
    #[must_use]
    pub fn pool_id(&self) -> PoolId {
        PoolId {
            driver: self.driver.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.driver, self.pool, self.device)
    }
}
