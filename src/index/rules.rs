//! DeviceTaintRules, with the `NoExecute` ones indexed by selector shape so that the rules of a
//! device are found with eight hash lookups instead of a scan.

use std::collections::{BTreeSet, HashMap};

use crate::view::{DeviceId, Effect, RuleView, Selector};

/// All rules. Updated by DeviceTaintRule events only.
#[derive(Debug, Default)]
pub struct Rules {
    /// Rule name → rule (with `timeAdded` resolved).
    by_name: HashMap<String, RuleView>,
    /// Selector → names of `NoExecute` rules with exactly that selector.
    evicting: HashMap<Selector, BTreeSet<String>>,
}

impl Rules {
    /// The rule of this name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&RuleView> {
        self.by_name.get(name)
    }

    /// Mutable access (status-only updates).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut RuleView> {
        self.by_name.get_mut(name)
    }

    /// All rules.
    pub fn iter(&self) -> impl Iterator<Item = &RuleView> {
        self.by_name.values()
    }

    /// Number of rules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No rules at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Stores a rule, returning the previous one of that name.
    pub fn insert(&mut self, rule: RuleView) -> Option<RuleView> {
        let old = self.remove(&rule.name);
        if let (Effect::NoExecute, Some(selector)) = (&rule.taint.effect, &rule.selector) {
            self.evicting
                .entry(selector.clone())
                .or_default()
                .insert(rule.name.clone());
        }
        self.by_name.insert(rule.name.clone(), rule);
        old
    }

    /// Removes a rule.
    pub fn remove(&mut self, name: &str) -> Option<RuleView> {
        let old = self.by_name.remove(name)?;
        if let Some(selector) = &old.selector
            && let Some(names) = self.evicting.get_mut(selector)
        {
            names.remove(name);
            if names.is_empty() {
                self.evicting.remove(selector);
            }
        }
        Some(old)
    }

    /// Visits every `NoExecute` rule that selects the device.
    pub fn for_each_evicting(&self, device: &DeviceId, mut visit: impl FnMut(&RuleView)) {
        if self.evicting.is_empty() {
            return;
        }
        for mask in 0u8..8 {
            let key = Selector {
                driver: (mask & 1 != 0).then(|| device.driver.clone()),
                pool: (mask & 2 != 0).then(|| device.pool.clone()),
                device: (mask & 4 != 0).then(|| device.device.clone()),
            };
            for name in self.evicting.get(&key).into_iter().flatten() {
                if let Some(rule) = self.by_name.get(name) {
                    visit(rule);
                }
            }
        }
    }
}
