//! A deliberately naive reference for the index: current objects and finished pods, from which
//! the pending evictions are recomputed from scratch after every event. The property test
//! (`proptests.rs`) and the `index_events` fuzz target (`fuzz/`) drive [`State`] and this model
//! with the same event sequences and compare them after each step.

// The step function reads best as one table.
#![allow(clippy::too_many_lines, clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    AllocatedDevice, BTreeSet, ClaimView, DeviceId, Due, Effect, Eviction, Finished, ObjectName, PodRef,
    PodView, RuleView, Selector, SliceView, State, TaintSource, Time,
};
use crate::{
    fixtures::t,
    view::{DeviceView, PodClaim, PoolId, Taint, Toleration},
};

/// Drivers, pools, devices, taint keys and namespaces the events draw from: few, so that events
/// collide often.
pub const DRIVERS: [&str; 2] = ["d0", "d1"];
pub const POOLS: [&str; 2] = ["p0", "p1"];
pub const DEVICES: [&str; 3] = ["x0", "x1", "x2"];
pub const KEYS: [&str; 2] = ["k0", "k1"];
pub const NS: [&str; 2] = ["a", "b"];
/// PodGroups pods may belong to and claims may be reserved for or owned by.
pub const GROUPS: [&str; 2] = ["g0", "g1"];
/// Taint effects drawn (NoExecute twice as often; `Odd` is an effect unknown to the controller).
pub const EFFECTS: [&str; 5] = ["NoExecute", "NoExecute", "NoSchedule", "None", "Odd"];

/// The i-th of the 12 devices: 2 drivers x 2 pools x 3 devices.
#[must_use]
pub fn device_id(i: usize) -> DeviceId {
    DeviceId::new(DRIVERS[i % 2], POOLS[(i / 2) % 2], DEVICES[(i / 4) % 3])
}

/// One event of a sequence.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // test and fuzz input, never stored in bulk
pub enum Op {
    Pod(PodView),
    DeletePod(usize, usize),
    Claim(ClaimView),
    DeleteClaim(usize, usize),
    Slice(SliceView),
    DeleteSlice(usize),
    Rule(RuleView),
    DeleteRule(usize, usize),
    /// Re-list one kind (0..4), keeping the objects whose bit is set.
    Relist(usize, u8),
    /// Finish the n-th pending eviction (in key order), as a worker would.
    Finish(usize, bool),
}

/// Namespace and name of the i-th pod.
#[must_use]
pub fn pod_name(i: usize) -> (String, String) {
    (NS[i % 2].to_owned(), format!("pod-{}", i / 2))
}

/// A taint with key `k`, effect `EFFECTS[effect]` and `timeAdded` at second `at`.
#[must_use]
pub fn taint(k: usize, effect: usize, at: i64) -> Taint {
    Taint {
        key: KEYS[k % KEYS.len()].to_owned(),
        value: String::new(),
        effect: Effect::parse(EFFECTS[effect % EFFECTS.len()]),
        time_added: Some(t(at)),
    }
}

/// A toleration of key `k` (one past the keys: an empty key), operator Exists or Equal.
#[must_use]
pub fn toleration(k: usize, exists: bool, effect: Option<&str>, seconds: Option<i64>) -> Toleration {
    Toleration {
        key: KEYS.get(k).map_or(String::new(), |k| (*k).to_owned()),
        operator: if exists {
            crate::view::Operator::Exists
        } else {
            crate::view::Operator::Equal
        },
        value: String::new(),
        effect: effect.map(Effect::parse),
        toleration_seconds: seconds,
    }
}

/// The n-th pod (UID variant `uid`), member of PodGroup `GROUPS[group]`, using claims
/// `(claim index, generated)`.
#[must_use]
pub fn pod_op(
    n: usize,
    uid: usize,
    (scheduled, terminal): (bool, bool),
    group: Option<usize>,
    claims: Vec<(usize, bool)>,
) -> Op {
    let (namespace, name) = pod_name(n);
    Op::Pod(PodView {
        namespace,
        name,
        uid: format!("pu{n}-{uid}"),
        scheduled,
        terminal,
        terminating: false,
        priority: 0,
        disruption_target: false,
        pod_group: group.map(|g| GROUPS[g % GROUPS.len()].to_owned()),
        claims: claims
            .into_iter()
            .map(|(c, generated)| PodClaim {
                claim: format!("claim-{c}"),
                generated,
            })
            .collect(),
    })
}

/// Who controls a claim.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    /// Pod (index, UID variant).
    Pod(usize, usize),
    /// PodGroup `GROUPS[i]`.
    Group(usize),
}

/// Claim `c` (UID variant `uid`) in namespace `NS[ns]`, controlled by `owner`, allocated to
/// `(device index, tolerations)` and reserved for pods `(index, uid variant)` and PodGroups
/// `GROUPS[i]`.
#[must_use]
pub fn claim_op(
    (c, uid, ns): (usize, usize, usize),
    owner: Option<Owner>,
    allocation: Option<Vec<(usize, Vec<Toleration>)>>,
    reserved: Vec<(usize, usize)>,
    reserved_groups: Vec<usize>,
) -> Op {
    Op::Claim(ClaimView {
        namespace: NS[ns % NS.len()].to_owned(),
        name: format!("claim-{c}"),
        uid: format!("cu{c}-{uid}"),
        controller_uid: owner.map(|o| match o {
            Owner::Pod(p, u) => format!("pu{p}-{u}"),
            Owner::Group(g) => format!("gu{}", g % GROUPS.len()),
        }),
        controller_pod_group: owner.and_then(|o| match o {
            Owner::Pod(..) => None,
            Owner::Group(g) => Some(GROUPS[g % GROUPS.len()].to_owned()),
        }),
        reserved_for_groups: reserved_groups
            .into_iter()
            .map(|g| GROUPS[g % GROUPS.len()].to_owned())
            .collect(),
        allocation: allocation.map(|a| {
            a.into_iter()
                .map(|(d, tolerations)| AllocatedDevice {
                    device: device_id(d),
                    tolerations,
                })
                .collect()
        }),
        reserved_for: reserved
            .into_iter()
            .map(|(p, u)| (pod_name(p).1, format!("pu{p}-{u}")))
            .collect(),
    })
}

/// Slice `n` of pool `pool` (0..4) at `generation`, with `(device index, taints)`.
#[must_use]
pub fn slice_op(n: usize, pool: usize, generation: i64, devices: Vec<(usize, Vec<Taint>)>) -> Op {
    Op::Slice(SliceView {
        name: format!("slice-{n}"),
        pool: PoolId {
            driver: DRIVERS[pool % 2].to_owned(),
            pool: POOLS[(pool / 2) % 2].to_owned(),
        },
        generation,
        devices: devices
            .into_iter()
            .map(|(d, taints)| DeviceView {
                name: DEVICES[d % DEVICES.len()].to_owned(),
                taints,
            })
            .collect(),
    })
}

/// Rule `n` (UID variant `uid`) with an optional selector (each part optional) and a taint.
#[must_use]
pub fn rule_op(
    n: usize,
    uid: usize,
    selector: Option<(Option<&str>, Option<&str>, Option<&str>)>,
    taint: Taint,
) -> Op {
    Op::Rule(RuleView {
        name: format!("rule-{n}"),
        uid: format!("ru{n}-{uid}"),
        generation: 1,
        selector: selector.map(|(driver, pool, device)| Selector {
            driver: driver.map(Into::into),
            pool: pool.map(Into::into),
            device: device.map(Into::into),
        }),
        taint,
        condition: None,
        unknown_selector_fields: Vec::new(),
        accept: None,
    })
}

/// Reads an event sequence from raw bytes (for the fuzzer): every byte string is a valid
/// sequence, and each byte steers one choice, so mutations of the input stay meaningful.
#[must_use]
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let mut bytes = Bytes(data);
    let mut ops = Vec::new();
    while !bytes.0.is_empty() && ops.len() < 100 {
        ops.push(bytes.op());
    }
    ops
}

/// A cursor over fuzzer input; an exhausted input reads as zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn list<T>(&mut self, max: usize, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.below(max + 1);
        (0..n).map(|_| item(self)).collect()
    }

    fn pick<'s>(&mut self, values: &[&'s str]) -> Option<&'s str> {
        let i = self.below(values.len() + 1);
        values.get(i).copied()
    }

    fn taint(&mut self) -> Taint {
        taint(
            self.below(2),
            self.below(EFFECTS.len()),
            i64::from(self.byte() % 100),
        )
    }

    fn toleration(&mut self) -> Toleration {
        let (k, exists) = (self.below(3), self.bool());
        let effect = self.pick(&["NoExecute", "NoSchedule"]);
        let seconds = self.bool().then(|| i64::from(self.byte()) - 10);
        toleration(k, exists, effect, seconds)
    }

    fn op(&mut self) -> Op {
        match self.below(10) {
            0 => {
                let (n, uid, scheduled) = (self.below(4), self.below(2), self.bool());
                let terminal = self.below(7) == 0;
                let group = self.bool().then(|| self.below(GROUPS.len()));
                let claims = self.list(2, |b| (b.below(3), b.bool()));
                pod_op(n, uid, (scheduled, terminal), group, claims)
            }
            1 => Op::DeletePod(self.below(4), self.below(2)),
            2 => {
                let ids = (self.below(3), self.below(2), self.below(2));
                let owner = match self.below(4) {
                    0 | 1 => None,
                    2 => Some(Owner::Pod(self.below(4), self.below(2))),
                    _ => Some(Owner::Group(self.below(GROUPS.len()))),
                };
                let allocation = self
                    .bool()
                    .then(|| self.list(2, |b| (b.below(12), b.list(2, Bytes::toleration))));
                let reserved = self.list(2, |b| (b.below(4), b.below(2)));
                let reserved_groups = self.list(1, |b| b.below(GROUPS.len()));
                claim_op(ids, owner, allocation, reserved, reserved_groups)
            }
            3 => Op::DeleteClaim(self.below(3), self.below(2)),
            4 => {
                let (n, pool, generation) = (self.below(3), self.below(4), 1 + i64::from(self.byte() % 2));
                let devices = self.list(2, |b| (b.below(3), b.list(2, Bytes::taint)));
                slice_op(n, pool, generation, devices)
            }
            5 => Op::DeleteSlice(self.below(3)),
            6 => {
                let (n, uid) = (self.below(3), self.below(2));
                let selector = self
                    .bool()
                    .then(|| (self.pick(&DRIVERS), self.pick(&POOLS), self.pick(&DEVICES)));
                let taint = self.taint();
                rule_op(n, uid, selector, taint)
            }
            7 => Op::DeleteRule(self.below(3), self.below(2)),
            8 => Op::Relist(self.below(4), self.byte()),
            _ => Op::Finish(self.below(8), self.bool()),
        }
    }
}

/// Runs `ops` through a fresh [`State`] and the model, comparing the pending evictions and the
/// device and PodGroup indexes after every step. Panics with the step and event that diverged.
pub fn check_sequence(ops: &[Op]) {
    let mut state = State::new();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        step(&mut state, &mut model, op.clone());
        // Compared first and described only on a mismatch: the fuzzer runs this millions of times.
        let want = model.expected();
        assert!(
            state.pending == want,
            "after step {i} ({op:?}): {:?} != {want:?}",
            state.pending
        );
        check_indexes(&state);
    }
}

/// The naive reference: current objects, and the pods whose eviction has finished.
#[derive(Debug, Default)]
pub struct Model {
    pods: BTreeMap<ObjectName, PodView>,
    claims: BTreeMap<ObjectName, ClaimView>,
    slices: BTreeMap<String, SliceView>,
    rules: BTreeMap<String, RuleView>,
    finished: HashSet<String>,
}

impl Model {
    fn delete_pod(&mut self, name: &ObjectName, uid: &str) {
        self.finished.remove(uid);
        if self.pods.get(name).is_some_and(|p| p.uid == uid) {
            self.pods.remove(name);
        }
    }

    fn taints_of(&self, device: &DeviceId) -> Vec<(TaintSource, Taint)> {
        let in_pool: Vec<&SliceView> = self
            .slices
            .values()
            .filter(|s| s.pool.driver == device.driver && s.pool.pool == device.pool)
            .collect();
        let max = in_pool.iter().map(|s| s.generation).max().unwrap_or_default();
        let mut taints = Vec::new();
        for s in in_pool.iter().filter(|s| s.generation == max) {
            for d in s.devices.iter().filter(|d| d.name == device.device) {
                taints.extend(d.taints.iter().cloned());
            }
        }
        let mut out: Vec<(TaintSource, Taint)> = taints
            .into_iter()
            .enumerate()
            .map(|(index, taint)| {
                (
                    TaintSource::Slice {
                        device: device.clone(),
                        index,
                    },
                    taint,
                )
            })
            .collect();
        for r in self.rules.values() {
            if r.selector.as_ref().is_some_and(|s| s.matches(device)) {
                out.push((TaintSource::Rule(r.rule_ref()), r.taint.clone()));
            }
        }
        out
    }

    pub fn expected(&self) -> HashMap<PodRef, Eviction> {
        let mut out = HashMap::new();
        for pod in self.pods.values() {
            if self.finished.contains(&pod.uid) || !pod.scheduled || pod.terminal || pod.terminating {
                continue;
            }
            let mut at: Option<Time> = None;
            let mut reasons = Vec::new();
            for pc in &pod.claims {
                let Some(c) = self.claims.get(&ObjectName::new(&pod.namespace, &pc.claim)) else {
                    continue;
                };
                let Some(devices) = &c.allocation else { continue };
                let group = pod.pod_group.as_ref();
                let reserved_for_pod = c.reserved_for.iter().any(|(_, uid)| *uid == pod.uid);
                let reserved_for_group = group.is_some_and(|g| c.reserved_for_groups.contains(g));
                if !reserved_for_pod && !reserved_for_group {
                    continue;
                }
                let owned_by_pod = c.controller_uid.as_deref() == Some(pod.uid.as_str());
                let owned_by_group = group.is_some_and(|g| c.controller_pod_group.as_ref() == Some(g));
                if pc.generated && !owned_by_pod && !owned_by_group {
                    continue;
                }
                for d in devices {
                    for (source, taint) in self.taints_of(&d.device) {
                        if taint.effect != Effect::NoExecute {
                            continue;
                        }
                        let matching: Vec<&Toleration> =
                            d.tolerations.iter().filter(|x| x.tolerates(&taint)).collect();
                        if matching.iter().any(|x| x.toleration_seconds.is_none()) {
                            continue;
                        }
                        let secs = matching
                            .iter()
                            .filter_map(|x| x.toleration_seconds)
                            .min()
                            .unwrap_or(0)
                            .max(0);
                        let when = t(taint.time_added.map_or(0, Time::as_second) + secs);
                        at = Some(at.map_or(when, |a| a.min(when)));
                        reasons.push(source);
                    }
                }
            }
            reasons.sort();
            reasons.dedup();
            if let Some(at) = at {
                out.insert(pod.pod_ref(), Eviction { at, reasons });
            }
        }
        out
    }
}

pub fn step(state: &mut State, model: &mut Model, op: Op) {
    let now = t(1000);
    match op {
        Op::Pod(p) => {
            let name = p.object_name();
            if let Some(old) = model.pods.get(&name).filter(|o| o.uid != p.uid) {
                let uid = old.uid.clone();
                model.delete_pod(&name, &uid);
            }
            let view = (!p.claims.is_empty()).then(|| p.clone());
            match &view {
                Some(v) => {
                    model.pods.insert(name.clone(), v.clone());
                }
                None => {
                    if let Some(stored) = model.pods.get(&name).map(|o| o.uid.clone()) {
                        model.delete_pod(&name, &stored);
                    }
                }
            }
            state.apply_pod(&name, view);
        }
        Op::DeletePod(n, u) => {
            let (ns, name) = pod_name(n);
            let name = ObjectName::new(ns, name);
            let uid = format!("pu{n}-{u}");
            model.delete_pod(&name, &uid);
            state.delete_pod(&name, &uid);
        }
        Op::Claim(c) => {
            model.claims.insert(c.object_name(), c.clone());
            state.apply_claim(c);
        }
        Op::DeleteClaim(n, u) => {
            for ns in NS {
                let name = ObjectName::new(ns, format!("claim-{n}"));
                let uid = format!("cu{n}-{u}");
                if model.claims.get(&name).is_some_and(|c| c.uid == uid) {
                    model.claims.remove(&name);
                }
                state.delete_claim(&name, &uid);
            }
        }
        Op::Slice(s) => {
            model.slices.insert(s.name.clone(), s.clone());
            state.apply_slice(s, now);
        }
        Op::DeleteSlice(n) => {
            let name = format!("slice-{n}");
            model.slices.remove(&name);
            state.delete_slice(&name);
        }
        Op::Rule(r) => {
            model.rules.insert(r.name.clone(), r.clone());
            state.apply_rule(r, now);
        }
        Op::DeleteRule(n, u) => {
            let (name, uid) = (format!("rule-{n}"), format!("ru{n}-{u}"));
            if model.rules.get(&name).is_some_and(|r| r.uid == uid) {
                model.rules.remove(&name);
            }
            state.delete_rule(&name, &uid);
        }
        Op::Relist(kind, mask) => {
            let keep = |i: usize| mask & (1 << (i % 8)) != 0;
            match kind {
                0 => {
                    let kept: Vec<PodView> = model
                        .pods
                        .values()
                        .enumerate()
                        .filter(|(i, _)| keep(*i))
                        .map(|(_, p)| p.clone())
                        .collect();
                    model.pods = kept.iter().map(|p| (p.object_name(), p.clone())).collect();
                    let uids: HashSet<&String> = kept.iter().map(|p| &p.uid).collect();
                    model.finished.retain(|u| uids.contains(u));
                    state.reset_pods(
                        kept.into_iter()
                            .map(|p| (p.object_name(), p.uid.clone(), Some(p)))
                            .collect(),
                    );
                }
                1 => {
                    let kept: Vec<ClaimView> = model
                        .claims
                        .values()
                        .enumerate()
                        .filter(|(i, _)| keep(*i))
                        .map(|(_, c)| c.clone())
                        .collect();
                    model.claims = kept.iter().map(|c| (c.object_name(), c.clone())).collect();
                    state.reset_claims(kept);
                }
                2 => {
                    let kept: Vec<SliceView> = model
                        .slices
                        .values()
                        .enumerate()
                        .filter(|(i, _)| keep(*i))
                        .map(|(_, s)| s.clone())
                        .collect();
                    model.slices = kept.iter().map(|s| (s.name.clone(), s.clone())).collect();
                    state.reset_slices(kept, now);
                }
                _ => {
                    let kept: Vec<RuleView> = model
                        .rules
                        .values()
                        .enumerate()
                        .filter(|(i, _)| keep(*i))
                        .map(|(_, r)| r.clone())
                        .collect();
                    model.rules = kept.iter().map(|r| (r.name.clone(), r.clone())).collect();
                    state.reset_rules(kept, now);
                }
            }
        }
        Op::Finish(n, counted) => {
            let mut keys: Vec<PodRef> = state.pending.keys().cloned().collect();
            keys.sort();
            if let Some(pod) = keys.get(n % keys.len().max(1)).cloned()
                && let Due::Now(eviction) = state.due(&pod, Time::MAX)
            {
                state.finish(
                    &pod,
                    &eviction,
                    if counted {
                        Finished::Evicted
                    } else {
                        Finished::NotNeeded
                    },
                );
                model.finished.insert(pod.uid);
            }
        }
    }
    state.take_changes();
}

pub fn check_indexes(state: &State) {
    let mut want: BTreeMap<DeviceId, BTreeSet<ObjectName>> = BTreeMap::new();
    for (name, entry) in &state.claims {
        for d in entry.view.allocation.iter().flatten() {
            want.entry(d.device.clone()).or_default().insert(name.clone());
        }
    }
    assert_eq!(state.claims_by_device, want, "device index");
    let mut groups: HashMap<ObjectName, BTreeSet<ObjectName>> = HashMap::new();
    for (name, pod) in &state.pods {
        if let Some(group) = pod.group_name() {
            groups.entry(group).or_default().insert(name.clone());
        }
    }
    assert_eq!(state.pods_by_group, groups, "PodGroup index");
}
