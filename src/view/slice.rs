//! The ResourceSlice view: pool membership and device taints.

use super::{Invalid, PoolId, Taint};
use crate::k8s::ResourceSlice;

/// A published device and its taints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// Device name, unique within its pool.
    pub name: String,
    /// Taints in the order the slice lists them (the index identifies a taint in reasons).
    pub taints: Vec<Taint>,
}

/// The parts of a ResourceSlice that the eviction decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceView {
    /// Name (cluster-scoped).
    pub name: String,
    /// Driver and pool.
    pub pool: PoolId,
    /// `spec.pool.generation`: only slices of the highest generation in a pool count.
    pub generation: i64,
    /// Devices.
    pub devices: Vec<DeviceView>,
}

impl SliceView {
    /// Projects a slice.
    ///
    /// # Errors
    /// A slice without name, or with an empty driver or pool name, is invalid.
    pub fn from_api(slice: &ResourceSlice) -> Result<Self, Invalid> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let invalid = |field| Invalid {
            kind: "ResourceSlice",
            object: name.clone(),
            field,
        };
        if name.is_empty() {
            return Err(invalid("metadata.name"));
        }
        if slice.spec.driver.is_empty() {
            return Err(invalid("spec.driver"));
        }
        if slice.spec.pool.name.is_empty() {
            return Err(invalid("spec.pool.name"));
        }
        let devices = slice
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| DeviceView {
                name: d.name.clone(),
                taints: d.taints.iter().flatten().map(Taint::from_api).collect(),
            })
            .collect();
        Ok(Self {
            name,
            pool: PoolId {
                driver: slice.spec.driver.clone(),
                pool: slice.spec.pool.name.clone(),
            },
            generation: slice.spec.pool.generation,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Effect;

    #[test]
    fn projects_devices_and_taints() {
        let slice: ResourceSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"driver": "d", "pool": {"name": "p", "generation": 3, "resourceSliceCount": 1}, "allNodes": true,
                "devices": [{"name": "gpu-0", "taints": [{"key": "k", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}]},
                            {"name": "gpu-1"}]}
        }))
        .unwrap();
        let view = SliceView::from_api(&slice).unwrap();
        assert_eq!(view.generation, 3);
        assert_eq!(view.devices.len(), 2);
        assert_eq!(view.devices[0].taints[0].effect, Effect::NoExecute);
        assert!(view.devices[0].taints[0].time_added.is_some());
        assert!(view.devices[1].taints.is_empty());
    }

    #[test]
    fn slice_without_driver_is_invalid() {
        let slice: ResourceSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"driver": "", "pool": {"name": "p", "generation": 1, "resourceSliceCount": 1}}
        }))
        .unwrap();
        assert_eq!(SliceView::from_api(&slice).unwrap_err().field, "spec.driver");
    }
}
