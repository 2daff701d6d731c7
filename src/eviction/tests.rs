use super::*;
use crate::{
    fixtures::{claim, pod, t, taint, toleration},
    view::{ClaimView, Taint, Toleration},
};

fn device() -> DeviceId {
    DeviceId::new("driver", "pool", "gpu-0")
}

fn slice_source(index: usize) -> TaintSource {
    TaintSource::Slice {
        device: device(),
        index,
    }
}

fn eviction_with(taints: &[Taint], tolerations: Vec<Toleration>) -> Option<Eviction> {
    let devices = vec![AllocatedDevice {
        device: device(),
        tolerations,
    }];
    claim_eviction(&devices, |_, visit| {
        for (i, taint) in taints.iter().enumerate() {
            visit(slice_source(i), taint);
        }
    })
}

fn no_execute(at: i64) -> Taint {
    taint("k", "v", "NoExecute", Some(t(at)))
}

/// Upstream `TestClaimEvictionTimeTolerationEffect`: since 1.37 a toleration with an empty
/// effect counts for eviction, a NoSchedule or mismatching one does not.
#[test]
fn claim_eviction_time_toleration_effect() {
    let cases = [
        (
            "empty-effect",
            toleration("k", "Equal", "v", "", Some(30)),
            Some(30),
        ),
        (
            "no-execute",
            toleration("k", "Equal", "v", "NoExecute", Some(30)),
            Some(30),
        ),
        (
            "no-schedule",
            toleration("k", "Equal", "v", "NoSchedule", Some(30)),
            Some(0),
        ),
        (
            "mismatch",
            toleration("other", "Equal", "v", "", Some(30)),
            Some(0),
        ),
    ];
    for (name, tol, want) in cases {
        let got = eviction_with(&[no_execute(100)], vec![tol]).map(|e| e.at);
        assert_eq!(got, want.map(|s| t(100 + s)), "case {name}");
    }
}

#[test]
fn untolerated_taint_fires_at_time_added() {
    let e = eviction_with(&[no_execute(100)], vec![]).unwrap();
    assert_eq!(
        e,
        Eviction {
            at: t(100),
            reasons: vec![slice_source(0)]
        }
    );
}

#[test]
fn toleration_without_seconds_is_forever() {
    assert_eq!(
        eviction_with(
            &[no_execute(100)],
            vec![toleration("k", "Exists", "", "NoExecute", None)]
        ),
        None
    );
}

#[test]
fn smallest_matching_seconds_win() {
    let tols = vec![
        toleration("k", "Exists", "", "NoExecute", Some(60)),
        toleration("k", "Exists", "", "NoExecute", Some(30)),
        toleration("other", "Exists", "", "NoExecute", Some(20)),
    ];
    assert_eq!(eviction_with(&[no_execute(0)], tols).unwrap().at, t(30));
}

#[test]
fn forever_beats_seconds_for_the_same_taint() {
    let tols = vec![
        toleration("k", "Exists", "", "NoExecute", Some(5)),
        toleration("k", "Exists", "", "NoExecute", None),
    ];
    assert_eq!(eviction_with(&[no_execute(0)], tols), None);
}

#[test]
fn negative_seconds_count_as_zero() {
    let tols = vec![toleration("k", "Exists", "", "NoExecute", Some(-100))];
    assert_eq!(eviction_with(&[no_execute(50)], tols).unwrap().at, t(50));
}

#[test]
fn huge_seconds_clamp_instead_of_overflowing() {
    let tols = vec![toleration("k", "Exists", "", "NoExecute", Some(i64::MAX))];
    assert_eq!(eviction_with(&[no_execute(50)], tols).unwrap().at, Time::MAX);
}

#[test]
fn only_no_execute_taints_count() {
    for effect in ["NoSchedule", "None", "Sometime", ""] {
        assert_eq!(
            eviction_with(&[taint("k", "v", effect, Some(t(0)))], vec![]),
            None,
            "effect {effect}"
        );
    }
}

#[test]
fn earliest_taint_wins_and_all_untolerated_are_reasons() {
    let taints = [
        no_execute(100),
        taint("k2", "", "NoExecute", Some(t(10))),
        taint("k3", "", "NoExecute", Some(t(5))),
    ];
    // k3 is tolerated forever: not a reason.
    let tols = vec![toleration("k3", "Exists", "", "", None)];
    let e = eviction_with(&taints, tols).unwrap();
    assert_eq!(e.at, t(10));
    assert_eq!(e.reasons, vec![slice_source(0), slice_source(1)]);
}

#[test]
fn reasons_are_sorted_rules_first() {
    let devices = vec![AllocatedDevice {
        device: device(),
        tolerations: vec![],
    }];
    let tx = no_execute(0);
    let e = claim_eviction(&devices, |_, visit| {
        visit(slice_source(1), &tx);
        visit(TaintSource::Rule(RuleRef::new("b", "ub")), &tx);
        visit(slice_source(0), &tx);
        visit(TaintSource::Rule(RuleRef::new("a", "ua")), &tx);
        visit(TaintSource::Rule(RuleRef::new("a", "ua")), &tx);
    })
    .unwrap();
    assert_eq!(
        e.reasons,
        vec![
            TaintSource::Rule(RuleRef::new("a", "ua")),
            TaintSource::Rule(RuleRef::new("b", "ub")),
            slice_source(0),
            slice_source(1)
        ]
    );
}

#[test]
fn missing_time_added_contributes_nothing_here() {
    // The index always resolves timeAdded (SPEC D2); the pure function never invents a time.
    assert_eq!(eviction_with(&[taint("k", "v", "NoExecute", None)], vec![]), None);
}

fn claimed(c: ClaimView) -> (ClaimView, Option<Eviction>) {
    (
        c,
        Some(Eviction {
            at: t(7),
            reasons: vec![slice_source(0)],
        }),
    )
}

#[test]
fn pod_eviction_requires_schedule_reservation_and_ownership() {
    let p = pod("ns", "p").with_claim("c");
    let good = claimed(
        claim("ns", "c")
            .with_device("driver", "pool", "gpu-0")
            .reserved_for(&p),
    );
    let at = |pod: &PodView, entry: &(ClaimView, Option<Eviction>)| {
        pod_eviction(pod, |_| Some((&entry.0, entry.1.as_ref()))).map(|e| e.at)
    };
    assert_eq!(at(&p, &good), Some(t(7)));
    assert_eq!(at(&p.clone().unscheduled(), &good), None, "unscheduled");
    assert_eq!(at(&p.clone().finished(), &good), None, "terminal (D1)");
    assert_eq!(at(&p.clone().terminating(), &good), None, "terminating");
    let not_reserved = claimed(claim("ns", "c").with_device("driver", "pool", "gpu-0"));
    assert_eq!(at(&p, &not_reserved), None, "not in reservedFor");
    let unallocated = claimed(claim("ns", "c").reserved_for(&p));
    assert_eq!(at(&p, &unallocated), None, "not allocated");
    let generated = pod("ns", "p").with_generated_claim("c");
    assert_eq!(at(&generated, &good), None, "generated claim not owned");
    let owned = claimed(
        claim("ns", "c")
            .with_device("driver", "pool", "gpu-0")
            .reserved_for(&p)
            .owned_by(&p),
    );
    assert_eq!(at(&generated, &owned), Some(t(7)), "generated claim owned");
}

/// KEP-5729: a claim reserved for (or generated for) a PodGroup counts for its member pods only.
#[test]
fn pod_eviction_through_a_pod_group() {
    let member = pod("ns", "p").with_claim("c").in_pod_group("g");
    let for_group = claimed(
        claim("ns", "c")
            .with_device("driver", "pool", "gpu-0")
            .reserved_for_pod_group("g"),
    );
    let at = |pod: &PodView, entry: &(ClaimView, Option<Eviction>)| {
        pod_eviction(pod, |_| Some((&entry.0, entry.1.as_ref()))).map(|e| e.at)
    };
    assert_eq!(
        at(&member, &for_group),
        Some(t(7)),
        "member of the reserving group"
    );
    let outsider = pod("ns", "p").with_claim("c");
    assert_eq!(at(&outsider, &for_group), None, "no PodGroup");
    let other_group = pod("ns", "p").with_claim("c").in_pod_group("h");
    assert_eq!(at(&other_group, &for_group), None, "another PodGroup");

    let generated_member = pod("ns", "p").with_generated_claim("c").in_pod_group("g");
    assert_eq!(
        at(&generated_member, &for_group),
        None,
        "generated claim owned by nobody"
    );
    let group_owned = claimed(
        claim("ns", "c")
            .with_device("driver", "pool", "gpu-0")
            .reserved_for_pod_group("g")
            .owned_by_pod_group("g"),
    );
    assert_eq!(
        at(&generated_member, &group_owned),
        Some(t(7)),
        "generated for the group"
    );
    let generated_other = pod("ns", "p").with_generated_claim("c").in_pod_group("h");
    let owned_by_g_reserved_for_both = claimed(
        claim("ns", "c")
            .with_device("driver", "pool", "gpu-0")
            .reserved_for_pod_group("g")
            .reserved_for_pod_group("h")
            .owned_by_pod_group("g"),
    );
    assert_eq!(
        at(&generated_other, &owned_by_g_reserved_for_both),
        None,
        "generated for another group"
    );
}

#[test]
fn pod_eviction_merges_claims() {
    let p = pod("ns", "p").with_claim("a").with_claim("b");
    let a = claim("ns", "a")
        .with_device("driver", "pool", "gpu-0")
        .reserved_for(&p);
    let b = claim("ns", "b")
        .with_device("driver", "pool", "gpu-1")
        .reserved_for(&p);
    let ea = Eviction {
        at: t(50),
        reasons: vec![TaintSource::Rule(RuleRef::new("r", "u"))],
    };
    let eb = Eviction {
        at: t(20),
        reasons: vec![slice_source(0)],
    };
    let e = pod_eviction(&p, |name| match name {
        "a" => Some((&a, Some(&ea))),
        "b" => Some((&b, Some(&eb))),
        _ => None,
    })
    .unwrap();
    assert_eq!(e.at, t(20));
    assert_eq!(
        e.reasons,
        vec![TaintSource::Rule(RuleRef::new("r", "u")), slice_source(0)]
    );
}
