//! ResourceSlices grouped into pools; only the highest generation of a pool counts.

use std::collections::HashMap;

use crate::view::{DeviceId, Effect, PoolId, Selector, SliceView, Taint, Time};

/// One pool: its slices and the device taints of its current generation.
#[derive(Debug, Default)]
struct Pool {
    /// Slice name → slice, every generation (an older one may become current again when the
    /// newer slices are deleted).
    slices: HashMap<String, SliceView>,
    /// Highest `spec.pool.generation` among `slices`.
    generation: i64,
    /// Device name → taints, from the slices of `generation` only, in slice order.
    devices: HashMap<String, Vec<Taint>>,
}

impl Pool {
    fn rebuild(&mut self) {
        self.generation = self
            .slices
            .values()
            .map(|s| s.generation)
            .max()
            .unwrap_or_default();
        self.devices.clear();
        let mut current: Vec<&SliceView> = self
            .slices
            .values()
            .filter(|s| s.generation == self.generation)
            .collect();
        // A device listed by two slices is invalid input; sorting keeps the merged order stable.
        current.sort_by(|a, b| a.name.cmp(&b.name));
        for slice in current {
            for device in &slice.devices {
                self.devices
                    .entry(device.name.clone())
                    .or_default()
                    .extend(device.taints.iter().cloned());
            }
        }
    }
}

/// All pools. Updated by ResourceSlice events only.
#[derive(Debug, Default)]
pub struct Pools {
    /// Pool → slices and current device taints.
    by_id: HashMap<PoolId, Pool>,
    /// Slice name → the pool it is in (a slice may move to another pool on update).
    slice_pool: HashMap<String, PoolId>,
}

/// `NoExecute` taints with their positions: what a device contributes to evictions.
fn no_execute(taints: &[Taint]) -> impl Iterator<Item = (usize, &Taint)> {
    taints
        .iter()
        .enumerate()
        .filter(|(_, t)| t.effect == Effect::NoExecute)
}

impl Pools {
    /// Taints of a device in its pool's current generation (empty when unpublished).
    #[must_use]
    pub fn taints(&self, device: &DeviceId) -> &[Taint] {
        self.by_id
            .get(&PoolId {
                driver: device.driver.clone(),
                pool: device.pool.clone(),
            })
            .and_then(|p| p.devices.get(&device.device))
            .map_or(&[], Vec::as_slice)
    }

    /// The stored slice of this name.
    #[must_use]
    pub fn slice(&self, name: &str) -> Option<&SliceView> {
        self.slice_pool
            .get(name)
            .and_then(|id| self.by_id.get(id))
            .and_then(|p| p.slices.get(name))
    }

    /// Names of all stored slices.
    pub fn slice_names(&self) -> impl Iterator<Item = &String> {
        self.slice_pool.keys()
    }

    /// Number of stored slices.
    #[must_use]
    pub fn slice_count(&self) -> usize {
        self.slice_pool.len()
    }

    /// Devices of current generations that the selector matches.
    #[must_use]
    pub fn published_matching(&self, selector: &Selector) -> usize {
        self.by_id
            .iter()
            .filter(|(id, _)| {
                selector.driver.as_ref().is_none_or(|d| *d == id.driver)
                    && selector.pool.as_ref().is_none_or(|p| *p == id.pool)
            })
            .map(|(_, pool)| {
                pool.devices
                    .keys()
                    .filter(|n| selector.device.as_ref().is_none_or(|d| d == *n))
                    .count()
            })
            .sum()
    }

    /// Stores a slice and returns the devices whose `NoExecute` taints changed.
    ///
    /// A taint without `timeAdded` gets the time the same taint had in the previous version of
    /// the slice, else `now` (SPEC D2).
    pub fn apply(&mut self, mut slice: SliceView, now: Time) -> Vec<DeviceId> {
        let previous = self.slice(&slice.name);
        for device in &mut slice.devices {
            for taint in device.taints.iter_mut().filter(|t| t.time_added.is_none()) {
                taint.time_added = previous
                    .and_then(|p| p.devices.iter().find(|d| d.name == device.name))
                    .and_then(|d| d.taints.iter().find(|t| t.same_taint(taint)))
                    .and_then(|t| t.time_added)
                    .or(Some(now));
            }
        }
        if previous == Some(&slice) {
            return Vec::new();
        }
        let mut changed = self.delete(&slice.name);
        let id = slice.pool.clone();
        let pool = self.by_id.entry(id.clone()).or_default();
        let before = std::mem::take(&mut pool.devices);
        self.slice_pool.insert(slice.name.clone(), id.clone());
        pool.slices.insert(slice.name.clone(), slice);
        pool.rebuild();
        changed.extend(diff(&id, &before, &pool.devices));
        changed.sort();
        changed.dedup();
        changed
    }

    /// Removes a slice and returns the devices whose `NoExecute` taints changed.
    pub fn delete(&mut self, name: &str) -> Vec<DeviceId> {
        let Some(id) = self.slice_pool.remove(name) else {
            return Vec::new();
        };
        let Some(pool) = self.by_id.get_mut(&id) else {
            return Vec::new();
        };
        pool.slices.remove(name);
        let before = std::mem::take(&mut pool.devices);
        pool.rebuild();
        let changed = diff(&id, &before, &pool.devices);
        if pool.slices.is_empty() {
            self.by_id.remove(&id);
        }
        changed
    }
}

/// Devices whose `NoExecute` taints (with positions) differ between two device maps of a pool.
fn diff(
    id: &PoolId,
    before: &HashMap<String, Vec<Taint>>,
    after: &HashMap<String, Vec<Taint>>,
) -> Vec<DeviceId> {
    let empty = Vec::new();
    let mut changed: Vec<DeviceId> = before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
        .filter(|name| {
            let b = before.get(*name).unwrap_or(&empty);
            let a = after.get(*name).unwrap_or(&empty);
            !no_execute(b).eq(no_execute(a))
        })
        .map(|name| DeviceId::new(&id.driver, &id.pool, name))
        .collect();
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::DeviceView;

    fn t(secs: i64) -> Time {
        Time::from_second(secs).unwrap()
    }

    fn slice(name: &str, generation: i64, devices: &[(&str, &[(&str, &str)])]) -> SliceView {
        SliceView {
            name: name.into(),
            pool: PoolId {
                driver: "d".into(),
                pool: "p".into(),
            },
            generation,
            devices: devices
                .iter()
                .map(|(n, taints)| DeviceView {
                    name: (*n).into(),
                    taints: taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: (*k).into(),
                            value: String::new(),
                            effect: Effect::parse(e),
                            time_added: Some(t(1)),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn newer_generation_replaces_older() {
        let mut pools = Pools::default();
        let changed = pools.apply(slice("a", 1, &[("gpu-0", &[("k", "NoExecute")])]), t(0));
        assert_eq!(changed, vec![DeviceId::new("d", "p", "gpu-0")]);
        assert_eq!(pools.taints(&DeviceId::new("d", "p", "gpu-0")).len(), 1);
        let changed = pools.apply(slice("b", 2, &[("gpu-0", &[])]), t(0));
        assert_eq!(changed, vec![DeviceId::new("d", "p", "gpu-0")]);
        assert!(pools.taints(&DeviceId::new("d", "p", "gpu-0")).is_empty());
        // Deleting the newer slice makes the older generation current again.
        let changed = pools.delete("b");
        assert_eq!(changed, vec![DeviceId::new("d", "p", "gpu-0")]);
        assert_eq!(pools.taints(&DeviceId::new("d", "p", "gpu-0")).len(), 1);
        pools.delete("a");
        assert_eq!(pools.slice_count(), 0);
        assert!(pools.by_id.is_empty());
    }

    #[test]
    fn only_no_execute_changes_count() {
        let mut pools = Pools::default();
        pools.apply(slice("a", 1, &[("gpu-0", &[("k", "NoSchedule")])]), t(0));
        let changed = pools.apply(slice("a", 1, &[("gpu-0", &[("k", "None")])]), t(0));
        assert!(changed.is_empty());
    }

    #[test]
    fn missing_time_added_is_first_sight_and_kept() {
        let mut pools = Pools::default();
        let mut s = slice("a", 1, &[("gpu-0", &[("k", "NoExecute")])]);
        s.devices[0].taints[0].time_added = None;
        pools.apply(s.clone(), t(100));
        assert_eq!(
            pools.taints(&DeviceId::new("d", "p", "gpu-0"))[0].time_added,
            Some(t(100))
        );
        // The same object again later: unchanged, keeps the first-seen time.
        assert!(pools.apply(s, t(200)).is_empty());
        assert_eq!(
            pools.taints(&DeviceId::new("d", "p", "gpu-0"))[0].time_added,
            Some(t(100))
        );
    }

    #[test]
    fn published_matching_counts_current_devices() {
        let mut pools = Pools::default();
        pools.apply(slice("a", 1, &[("gpu-0", &[]), ("gpu-1", &[])]), t(0));
        assert_eq!(pools.published_matching(&Selector::default()), 2);
        assert_eq!(
            pools.published_matching(&Selector {
                device: Some("gpu-1".into()),
                ..Selector::default()
            }),
            1
        );
        assert_eq!(
            pools.published_matching(&Selector {
                driver: Some("x".into()),
                ..Selector::default()
            }),
            0
        );
    }
}
