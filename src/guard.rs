//! The blast-radius guard (SPEC D11): evictions that would exceed a limit per DeviceTaintRule, per
//! pool (ResourceSlice taints) or cluster-wide within a window are held until an operator
//! accepts them through the API. Pure: no clock, no client; the index feeds it the pending
//! evictions and the acceptances, the controller acts on its [`Verdict`].
//!
//! A scope's *blast* is the number of its pending evictions due no later than `now + window`
//! (overdue ones included). A scope trips when its blast is above the floor `min_pods` *and*
//! above `max_percent` of the pods that use DRA devices, or above the ceiling `max_pods`. The
//! pending set does not shrink while evictions are held, so the verdict is the same after a
//! restart or a leader failover: it is derived from API state (pending evictions, the rules'
//! acceptance annotations, the flags), not from memory.
//!
//! Acceptance: a rule or pool scope with an acceptance of `N` proceeds while its blast is at
//! most `N`; its pods then no longer count for the cluster scope. The cluster scope counts the
//! pending evictions of pods none of whose scopes is accepted, and proceeds while that count is
//! at most its own acceptance (`--guard-accept-cluster`).

use std::{collections::BTreeMap, fmt, time::Duration};

use crate::{
    eviction::{Eviction, TaintSource},
    view::RuleRef,
};

/// The annotation on a DeviceTaintRule by which an operator accepts that many of its evictions.
pub const ACCEPT_ANNOTATION: &str = "device-taint-eviction/accept-evictions";

/// How often a held pod is looked at again without any change (an acceptance or a rule change
/// re-schedules it at once).
pub const RECHECK_PERIOD: Duration = Duration::from_secs(10);

/// What may trip the guard, and what the operator accepted beyond it.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardConfig {
    /// Evictions due within this long from now count.
    pub window: Duration,
    /// A scope with at most this many evictions never trips on the percentage.
    pub min_pods: usize,
    /// A scope trips when its evictions are above this percentage of the pods using DRA devices
    /// (and above `min_pods`); 100 never trips on the percentage.
    pub max_percent: f64,
    /// A scope trips when its evictions are above this many, whatever the percentage; 0: no
    /// ceiling.
    pub max_pods: usize,
    /// Accepted evictions per pool (`--guard-accept-pool DRIVER/POOL=N`).
    pub accept_pools: BTreeMap<Pool, usize>,
    /// Accepted evictions cluster-wide (`--guard-accept-cluster N`).
    pub accept_cluster: Option<usize>,
}

impl Default for GuardConfig {
    /// The documented defaults (README, D11).
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            min_pods: 16,
            max_percent: 25.0,
            max_pods: 1000,
            accept_pools: BTreeMap::new(),
            accept_cluster: None,
        }
    }
}

impl GuardConfig {
    /// A guard that never trips (`--guard-max-percent=100 --guard-max-pods=0`).
    #[must_use]
    pub fn off() -> Self {
        Self {
            max_percent: 100.0,
            max_pods: 0,
            ..Self::default()
        }
    }

    /// Whether no blast can ever trip it.
    #[must_use]
    pub fn is_off(&self) -> bool {
        self.max_percent >= 100.0 && self.max_pods == 0
    }

    /// Why `blast` evictions out of `dra_pods` pods using DRA devices trip the guard, if they do.
    #[must_use]
    pub fn exceeded(&self, blast: usize, dra_pods: usize) -> Option<Limit> {
        if self.max_pods > 0 && blast > self.max_pods {
            return Some(Limit::Ceiling {
                max_pods: self.max_pods,
            });
        }
        #[allow(clippy::cast_precision_loss)] // pod counts are far below 2^52
        let over_percent = blast as f64 * 100.0 > self.max_percent * dra_pods as f64;
        (blast > self.min_pods && over_percent).then_some(Limit::Share {
            min_pods: self.min_pods,
            max_percent: self.max_percent,
            dra_pods,
        })
    }
}

/// A pool: the slice taints of its devices form one scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pool {
    /// Driver.
    pub driver: String,
    /// Pool name.
    pub pool: String,
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.driver, self.pool)
    }
}

/// What the guard counts evictions in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The evictions a DeviceTaintRule causes.
    Rule(RuleRef),
    /// The evictions the slice taints of a pool cause.
    Pool(Pool),
    /// Every eviction not covered by an accepted rule or pool.
    Cluster,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(rule) => write!(f, "rule/{}", rule.name),
            Self::Pool(pool) => write!(f, "pool/{pool}"),
            Self::Cluster => f.write_str("cluster"),
        }
    }
}

/// The rule and pool scopes of an eviction, sorted, without duplicates.
#[must_use]
pub fn scopes_of(eviction: &Eviction) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = eviction
        .reasons
        .iter()
        .map(|reason| match reason {
            TaintSource::Rule(rule) => Scope::Rule(rule.clone()),
            TaintSource::Slice { device, .. } => Scope::Pool(Pool {
                driver: device.driver.clone(),
                pool: device.pool.clone(),
            }),
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The limit a tripped scope exceeded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// Above `min_pods` and above `max_percent` of `dra_pods`.
    Share {
        /// The floor.
        min_pods: usize,
        /// The percentage.
        max_percent: f64,
        /// Pods using DRA devices.
        dra_pods: usize,
    },
    /// Above the ceiling.
    Ceiling {
        /// The ceiling.
        max_pods: usize,
    },
}

/// A tripped scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Trip {
    /// Its evictions due within the window.
    pub blast: usize,
    /// The window.
    pub window: Duration,
    /// The limit exceeded.
    pub limit: Limit,
    /// What the operator accepted, when the blast has grown beyond it.
    pub accepted: Option<usize>,
}

impl fmt::Display for Trip {
    /// "30 evictions due within 600 s are more than 16 pods and 25% of the 30 pods using DRA
    /// devices".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} due within {} s {}",
            plural(self.blast, "1 eviction", "evictions"),
            self.window.as_secs(),
            if self.blast == 1 { "is" } else { "are" }
        )?;
        match self.limit {
            Limit::Share {
                min_pods,
                max_percent,
                dra_pods,
            } => write!(
                f,
                " more than {min_pods} pods and {max_percent}% of the {} using DRA devices",
                plural(dra_pods, "1 pod", "pods")
            )?,
            Limit::Ceiling { max_pods } => write!(f, " more than the ceiling of {max_pods} pods")?,
        }
        if let Some(accepted) = self.accepted {
            write!(f, " (and more than the {accepted} accepted)")?;
        }
        Ok(())
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_owned()
    } else {
        format!("{n} {many}")
    }
}

/// The guard's decision for every scope at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Tripped scopes: their evictions are held.
    pub tripped: BTreeMap<Scope, Trip>,
    /// Rule and pool scopes whose acceptance covers their blast: their pods do not count for the
    /// cluster scope.
    pub accepted: BTreeMap<Scope, usize>,
    /// Evictions due within the window that are held.
    pub held: usize,
}

impl Verdict {
    /// The tripped scope that holds a pod with these scopes (its rule and pool scopes, see
    /// [`scopes_of`]), if any: one of its own, or the cluster scope unless one of its own is
    /// accepted.
    #[must_use]
    pub fn holds(&self, scopes: &[Scope]) -> Option<(&Scope, &Trip)> {
        if let Some(hit) = scopes.iter().find_map(|s| self.tripped.get_key_value(s)) {
            return Some(hit);
        }
        if scopes.iter().any(|s| self.accepted.contains_key(s)) {
            return None;
        }
        self.tripped.get_key_value(&Scope::Cluster)
    }
}

/// Decides which scopes are tripped.
///
/// `due` lists the scopes of each pending eviction due within the window (the caller filters by
/// time); `dra_pods` is the number of pods using DRA devices; `accept_rule` returns a rule's
/// acceptance annotation.
#[must_use]
pub fn decide(
    config: &GuardConfig,
    dra_pods: usize,
    due: &[Vec<Scope>],
    accept_rule: impl Fn(&RuleRef) -> Option<usize>,
) -> Verdict {
    let mut verdict = Verdict::default();
    if config.is_off() {
        return verdict;
    }
    let mut blasts: BTreeMap<&Scope, usize> = BTreeMap::new();
    for scopes in due {
        for scope in scopes {
            *blasts.entry(scope).or_default() += 1;
        }
    }
    for (scope, blast) in blasts {
        let accepted = match scope {
            Scope::Rule(rule) => accept_rule(rule),
            Scope::Pool(pool) => config.accept_pools.get(pool).copied(),
            Scope::Cluster => None,
        };
        if accepted.is_some_and(|n| blast <= n) {
            verdict.accepted.insert(scope.clone(), blast);
            continue;
        }
        if let Some(limit) = config.exceeded(blast, dra_pods) {
            verdict.tripped.insert(
                scope.clone(),
                Trip {
                    blast,
                    window: config.window,
                    limit,
                    accepted,
                },
            );
        }
    }
    let unaccepted = due
        .iter()
        .filter(|scopes| !scopes.iter().any(|s| verdict.accepted.contains_key(s)))
        .count();
    if config.accept_cluster.is_none_or(|n| unaccepted > n)
        && let Some(limit) = config.exceeded(unaccepted, dra_pods)
    {
        verdict.tripped.insert(
            Scope::Cluster,
            Trip {
                blast: unaccepted,
                window: config.window,
                limit,
                accepted: config.accept_cluster,
            },
        );
    }
    verdict.held = due.iter().filter(|s| verdict.holds(s).is_some()).count();
    verdict
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;
