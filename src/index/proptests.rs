//! Property test: after every step of a random event sequence, the incremental state equals a
//! from-scratch evaluation by a deliberately naive reference written only for this test.

// The strategy and the step function read best as one table each.
#![allow(clippy::too_many_lines)]

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::{
    fixtures::t,
    view::{DeviceView, PodClaim, PoolId, Taint, Toleration},
};

const DRIVERS: [&str; 2] = ["d0", "d1"];
const POOLS: [&str; 2] = ["p0", "p1"];
const DEVICES: [&str; 3] = ["x0", "x1", "x2"];
const KEYS: [&str; 2] = ["k0", "k1"];
const NS: [&str; 2] = ["a", "b"];

fn device_id(i: usize) -> DeviceId {
    // 2 drivers x 2 pools x 3 devices.
    DeviceId::new(DRIVERS[i % 2], POOLS[(i / 2) % 2], DEVICES[(i / 4) % 3])
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // test-only operations
enum Op {
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

fn pod_name(i: usize) -> (String, String) {
    (NS[i % 2].to_owned(), format!("pod-{}", i / 2))
}

fn taint_strategy() -> impl Strategy<Value = Taint> {
    (
        0..2usize,
        prop::sample::select(vec!["NoExecute", "NoExecute", "NoSchedule", "None", "Odd"]),
        0..100i64,
    )
        .prop_map(|(k, effect, at)| Taint {
            key: KEYS[k].to_owned(),
            value: String::new(),
            effect: Effect::parse(effect),
            time_added: Some(t(at)),
        })
}

fn toleration_strategy() -> impl Strategy<Value = Toleration> {
    (
        0..3usize,
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["NoExecute", "NoSchedule"])),
        prop::option::of(-10..200i64),
    )
        .prop_map(|(k, exists, effect, secs)| Toleration {
            key: KEYS.get(k).map_or(String::new(), |k| (*k).to_owned()),
            operator: if exists {
                crate::view::Operator::Exists
            } else {
                crate::view::Operator::Equal
            },
            value: String::new(),
            effect: effect.map(Effect::parse),
            toleration_seconds: secs,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let pod = (
        0..4usize,
        0..2usize,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::collection::vec((0..3usize, any::<bool>()), 0..3),
    )
        .prop_map(|(n, uid, scheduled, terminal, claims)| {
            let (namespace, name) = pod_name(n);
            Op::Pod(PodView {
                namespace,
                name,
                uid: format!("pu{n}-{uid}"),
                scheduled,
                terminal,
                terminating: false,
                claims: claims
                    .into_iter()
                    .map(|(c, generated)| PodClaim {
                        claim: format!("claim-{c}"),
                        generated,
                    })
                    .collect(),
            })
        });
    let claim = (
        0..3usize,
        0..2usize,
        0..2usize,
        prop::option::of((0..4usize, 0..2usize)),
        prop::option::of(prop::collection::vec(
            (0..12usize, prop::collection::vec(toleration_strategy(), 0..3)),
            0..3,
        )),
        prop::collection::vec((0..4usize, 0..2usize), 0..3),
    )
        .prop_map(|(c, uid, ns, owner, allocation, reserved)| {
            Op::Claim(ClaimView {
                namespace: NS[ns].to_owned(),
                name: format!("claim-{c}"),
                uid: format!("cu{c}-{uid}"),
                controller_uid: owner.map(|(p, u)| format!("pu{p}-{u}")),
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
        });
    let slice = (
        0..3usize,
        0..4usize,
        1..3i64,
        prop::collection::vec((0..3usize, prop::collection::vec(taint_strategy(), 0..3)), 0..3),
    )
        .prop_map(|(n, pool, generation, devices)| {
            Op::Slice(SliceView {
                name: format!("slice-{n}"),
                pool: PoolId {
                    driver: DRIVERS[pool % 2].to_owned(),
                    pool: POOLS[pool / 2].to_owned(),
                },
                generation,
                devices: devices
                    .into_iter()
                    .map(|(d, taints)| DeviceView {
                        name: DEVICES[d].to_owned(),
                        taints,
                    })
                    .collect(),
            })
        });
    let selector_part = |values: &'static [&'static str]| prop::option::of(prop::sample::select(values));
    let rule = (
        0..3usize,
        0..2usize,
        prop::option::of((
            selector_part(&DRIVERS),
            selector_part(&POOLS),
            selector_part(&DEVICES),
        )),
        taint_strategy(),
    )
        .prop_map(|(n, uid, selector, taint)| {
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
            })
        });
    prop_oneof![
        4 => pod,
        1 => (0..4usize, 0..2usize).prop_map(|(n, u)| Op::DeletePod(n, u)),
        4 => claim,
        1 => (0..3usize, 0..2usize).prop_map(|(n, u)| Op::DeleteClaim(n, u)),
        3 => slice,
        1 => (0..3usize).prop_map(Op::DeleteSlice),
        3 => rule,
        1 => (0..3usize, 0..2usize).prop_map(|(n, u)| Op::DeleteRule(n, u)),
        1 => (0..4usize, any::<u8>()).prop_map(|(k, m)| Op::Relist(k, m)),
        2 => (0..8usize, any::<bool>()).prop_map(|(n, counted)| Op::Finish(n, counted)),
    ]
}

/// The naive reference: current objects, and the pods whose eviction has finished.
#[derive(Default)]
struct Model {
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

    fn expected(&self) -> HashMap<PodRef, Eviction> {
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
                if !c.reserved_for.iter().any(|(_, uid)| *uid == pod.uid) {
                    continue;
                }
                if pc.generated && c.controller_uid.as_deref() != Some(pod.uid.as_str()) {
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

fn step(state: &mut State, model: &mut Model, op: Op) {
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

fn check_device_index(state: &State) {
    let mut want: BTreeMap<DeviceId, BTreeSet<ObjectName>> = BTreeMap::new();
    for (name, entry) in &state.claims {
        for d in entry.view.allocation.iter().flatten() {
            want.entry(d.device.clone()).or_default().insert(name.clone());
        }
    }
    assert_eq!(state.claims_by_device, want, "device index");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn incremental_state_matches_recomputation(ops in prop::collection::vec(op_strategy(), 1..60)) {
        let mut state = State::new();
        let mut model = Model::default();
        for (i, op) in ops.into_iter().enumerate() {
            let desc = format!("{op:?}");
            step(&mut state, &mut model, op);
            let want = model.expected();
            prop_assert_eq!(&state.pending, &want, "after step {} ({})", i, desc);
            check_device_index(&state);
        }
    }
}
