//! Property test: after every step of a random event sequence, the incremental state equals a
//! from-scratch evaluation by the naive reference in `model.rs`.

use proptest::prelude::*;

use super::model::{
    DEVICES, DRIVERS, EFFECTS, GROUPS, Op, Owner, POOLS, check_sequence, claim_op, pod_op, rule_op, slice_op,
    taint, toleration,
};

fn taint_strategy() -> impl Strategy<Value = crate::view::Taint> {
    (0..2usize, 0..EFFECTS.len(), 0..100i64).prop_map(|(k, effect, at)| taint(k, effect, at))
}

fn toleration_strategy() -> impl Strategy<Value = crate::view::Toleration> {
    (
        0..3usize,
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["NoExecute", "NoSchedule"])),
        prop::option::of(-10..200i64),
    )
        .prop_map(|(k, exists, effect, secs)| toleration(k, exists, effect, secs))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let pod = (
        0..4usize,
        0..2usize,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::option::of(0..GROUPS.len()),
        prop::collection::vec((0..3usize, any::<bool>()), 0..3),
    )
        .prop_map(|(n, uid, scheduled, terminal, group, claims)| {
            pod_op(n, uid, (scheduled, terminal), group, claims)
        });
    let owner = prop_oneof![
        (0..4usize, 0..2usize).prop_map(|(p, u)| Owner::Pod(p, u)),
        (0..GROUPS.len()).prop_map(Owner::Group),
    ];
    let claim = (
        (0..3usize, 0..2usize, 0..2usize),
        prop::option::of(owner),
        prop::option::of(prop::collection::vec(
            (0..12usize, prop::collection::vec(toleration_strategy(), 0..3)),
            0..3,
        )),
        prop::collection::vec((0..4usize, 0..2usize), 0..3),
        prop::collection::vec(0..GROUPS.len(), 0..2),
    )
        .prop_map(|(ids, owner, allocation, reserved, groups)| {
            claim_op(ids, owner, allocation, reserved, groups)
        });
    let slice = (
        0..3usize,
        0..4usize,
        1..3i64,
        prop::collection::vec((0..3usize, prop::collection::vec(taint_strategy(), 0..3)), 0..3),
    )
        .prop_map(|(n, pool, generation, devices)| slice_op(n, pool, generation, devices));
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
        .prop_map(|(n, uid, selector, taint)| rule_op(n, uid, selector, taint));
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn incremental_state_matches_recomputation(ops in prop::collection::vec(op_strategy(), 1..60)) {
        check_sequence(&ops);
    }
}
