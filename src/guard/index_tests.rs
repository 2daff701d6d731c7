//! The guard through the index: the window, the rule status, acceptances, the `None` report,
//! `explain`, and a restart (a state rebuilt from the same API objects decides the same).

use super::*;
use crate::{
    fixtures::{claim, pod, rule, slice, t, taint, toleration},
    index::State,
    ops::explain,
    rule_status::current_condition,
    view::{RuleView, SliceView},
};

const DRIVER: &str = "gpu.example.com";

/// `pods` pods in 3 namespaces, 8 per pool (node), each on its own device; `tolerate` seconds of
/// toleration for key `k` (none: evicted at `timeAdded`).
fn objects(
    pods: usize,
    tolerate: Option<i64>,
) -> (
    Vec<SliceView>,
    Vec<(crate::view::PodView, crate::view::ClaimView)>,
) {
    let pools = pods.div_ceil(8);
    let slices = (0..pools)
        .map(|p| {
            (0..8).fold(slice(&format!("s-{p}"), DRIVER, &format!("node-{p}")), |s, d| {
                s.with_device(&format!("gpu-{d}"))
            })
        })
        .collect();
    let users = (0..pods)
        .map(|i| {
            let the_pod = pod(&format!("ns-{}", i % 3), &format!("p-{i}")).with_claim(&format!("c-{i}"));
            let mut the_claim = claim(&format!("ns-{}", i % 3), &format!("c-{i}")).with_device(
                DRIVER,
                &format!("node-{}", i / 8),
                &format!("gpu-{}", i % 8),
            );
            if let Some(seconds) = tolerate {
                the_claim =
                    the_claim.with_toleration(toleration("k", "Exists", "", "NoExecute", Some(seconds)));
            }
            (the_pod.clone(), the_claim.reserved_for(&the_pod))
        })
        .collect();
    (slices, users)
}

/// The issue #141422 rule: an empty selector, `NoExecute`, added at `t(0)`.
fn everything() -> RuleView {
    rule("all")
        .selecting(None, None, None)
        .with_taint(taint("k", "v", "NoExecute", Some(t(0))))
}

fn state_of(pods: usize, tolerate: Option<i64>, rules: Vec<RuleView>) -> State {
    let mut state = State::new();
    state.set_guard(GuardConfig::default());
    let (slices, users) = objects(pods, tolerate);
    for s in slices {
        state.apply_slice(s, t(0));
    }
    for (p, c) in users {
        state.apply_claim(c);
        state.apply_pod(&p.object_name(), Some(p.clone()));
    }
    for r in rules {
        state.apply_rule(r, t(0));
    }
    drop(state.take_changes());
    state
}

fn tripped_at(state: &State, now: i64) -> Vec<String> {
    state
        .guard_verdict(t(now))
        .tripped
        .keys()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_window_counts_evictions_due_soon_and_overdue() {
    // (case, tolerationSeconds, now, tripped)
    let cases: [(&str, Option<i64>, i64, Vec<&str>); 5] = [
        ("due-now", None, 0, vec!["rule/all", "cluster"]),
        ("overdue", None, 5000, vec!["rule/all", "cluster"]),
        (
            "due-at-the-window-edge",
            Some(600),
            0,
            vec!["rule/all", "cluster"],
        ),
        ("due-after-the-window", Some(601), 0, vec![]),
        ("came-into-the-window", Some(601), 1, vec!["rule/all", "cluster"]),
    ];
    for (case, tolerate, now, want) in cases {
        let state = state_of(30, tolerate, vec![everything()]);
        assert_eq!(tripped_at(&state, now), want, "{case}");
    }
}

#[test]
fn one_failing_node_never_trips() {
    // Two nodes' worth of pods; one node's 8 GPUs fail (slice taints), in the smallest cluster.
    let mut state = state_of(16, None, vec![]);
    let failing = (0..8).fold(slice("s-0", DRIVER, "node-0").with_generation(2), |s, d| {
        s.with_device(&format!("gpu-{d}"))
            .with_taint(taint("k", "v", "NoExecute", Some(t(0))))
    });
    state.apply_slice(failing, t(0));
    assert_eq!(state.pending_evictions().count(), 8);
    assert!(tripped_at(&state, 0).is_empty());
    // The same node tainted by a rule: 8 pods of 16, still never.
    let state = state_of(
        16,
        None,
        vec![rule("node-0").selecting(Some(DRIVER), Some("node-0"), None)],
    );
    assert_eq!(state.pending_evictions().count(), 8);
    assert!(tripped_at(&state, 0).is_empty());
}

#[test]
fn pods_on_their_way_out_do_not_dilute_the_percentage() {
    // 30 pods tainted by the empty selector, and 100 more pods with claims that are already
    // terminating (a namespace being deleted): still 100% of the pods that could be evicted.
    let mut state = state_of(30, None, vec![everything()]);
    for i in 0..100 {
        let leaving = pod("leaving", &format!("l-{i}"))
            .with_claim(&format!("lc-{i}"))
            .terminating();
        state.apply_pod(&leaving.object_name(), Some(leaving.clone()));
    }
    assert_eq!(state.dra_pods(), 30);
    assert_eq!(tripped_at(&state, 0), ["rule/all", "cluster"]);
}

#[test]
fn rule_status_says_paused_why_and_how_to_resume() {
    let mut state = state_of(30, None, vec![everything()]);
    let view = state.rule("all").expect("rule").clone();
    let condition = current_condition(&state, &view, t(1));
    assert_eq!((condition.status, condition.reason), ("True", "EvictionPaused"));
    assert_eq!(
        condition.message,
        "30 pods need to be evicted in 3 different namespaces. The blast-radius guard paused 30 of them \
         (scope rule/all): 30 evictions due within 600 s are more than 16 pods and 25% of the 30 pods using \
         DRA devices. To resume, accept them: device-taint-eviction resume --name all --accept 30 (annotation \
         device-taint-eviction/accept-evictions=30)."
    );
    // The operator accepts 30: every held pod is scheduled again at its own (past) deadline, the
    // status is refreshed now, and the message is upstream's.
    state.apply_rule(view.clone().accepting(Some(30)), t(1));
    let changes = state.take_changes();
    let rescheduled = changes
        .iter()
        .filter(|c| matches!(c, crate::index::Change::Schedule { at, .. } if *at == t(0)))
        .count();
    assert_eq!(rescheduled, 30, "{changes:?}");
    assert!(changes.iter().any(|c| matches!(c,
        crate::index::Change::RuleStatus { rule, after } if rule.name == "all" && after.is_zero())));
    let view = state.rule("all").expect("rule").clone();
    let condition = current_condition(&state, &view, t(1));
    assert_eq!(
        (condition.reason, condition.message.as_str()),
        (
            "PodsPendingEviction",
            "30 pods need to be evicted in 3 different namespaces."
        )
    );
    // Too few accepted: paused again, and the message says so.
    state.apply_rule(view.accepting(Some(10)), t(1));
    let view = state.rule("all").expect("rule").clone();
    let condition = current_condition(&state, &view, t(1));
    assert_eq!(condition.reason, "EvictionPaused");
    assert!(
        condition.message.contains("(and more than the 10 accepted)"),
        "{}",
        condition.message
    );
}

#[test]
fn a_restart_finds_the_same_trip() {
    // The trip is derived from API objects: a state rebuilt from them (another replica, a
    // restart), in another order, holds the same pods. Nothing was accepted in memory.
    let first = state_of(30, None, vec![everything()]);
    let mut second = State::new();
    second.set_guard(GuardConfig::default());
    second.apply_rule(everything(), t(0));
    let (slices, users) = objects(30, None);
    for (p, c) in users.into_iter().rev() {
        second.apply_pod(&p.object_name(), Some(p.clone()));
        second.apply_claim(c);
    }
    for s in slices {
        second.apply_slice(s, t(0));
    }
    assert_eq!(first.guard_verdict(t(7)), second.guard_verdict(t(7)));
    assert_eq!(tripped_at(&second, 7), ["rule/all", "cluster"]);
    // An accepted rule stays accepted after the restart: the annotation is part of the rule.
    let accepted = state_of(30, None, vec![everything().accepting(Some(30))]);
    assert!(tripped_at(&accepted, 7).is_empty());
}

#[test]
fn a_check_tells_each_trip_and_its_end_once() {
    let mut state = state_of(30, None, vec![everything()]);
    let eviction = state
        .pending_evictions()
        .next()
        .map(|(_, e)| e.clone())
        .expect("pending");
    let first = state.guard_check(&eviction, t(1)).expect("guard on");
    assert_eq!(first.tripped.len(), 2);
    assert!(first.hold.is_some());
    assert_eq!(first.held, 30);
    let warned: Vec<(String, String, usize)> = first
        .rules_paused
        .iter()
        .map(|(rule, scope, _, blast)| (rule.name.clone(), scope.to_string(), *blast))
        .collect();
    assert_eq!(warned, [("all".to_owned(), "rule/all".to_owned(), 30)]);
    let again = state.guard_check(&eviction, t(1)).expect("guard on");
    assert!(again.tripped.is_empty() && again.cleared.is_empty() && again.rules_paused.is_empty());
    assert!(again.hold.is_some());
    let view = state.rule("all").expect("rule").clone();
    state.apply_rule(view.clone().accepting(Some(30)), t(1));
    let resumed = state.guard_check(&eviction, t(1)).expect("guard on");
    assert_eq!(resumed.cleared, [Scope::Rule(view.rule_ref()), Scope::Cluster]);
    assert!(resumed.hold.is_none());
    // The trip ends without a pod to check: the rule is deleted.
    let mut state = state_of(30, None, vec![everything()]);
    assert!(!state.guard_announced());
    assert_eq!(
        state
            .guard_check(&eviction, t(1))
            .expect("guard on")
            .tripped
            .len(),
        2
    );
    assert!(state.guard_announced());
    state.delete_rule("all", "uid-all");
    let ended = state.guard_transitions(t(1)).expect("guard on");
    assert_eq!(ended.cleared, [Scope::Rule(view.rule_ref()), Scope::Cluster]);
    assert!(!state.guard_announced());
    // Off: no check at all.
    state.set_guard(GuardConfig::off());
    assert!(state.guard_check(&eviction, t(1)).is_none());
}

#[test]
fn rules_held_by_the_cluster_scope_are_warned_too() {
    // One rule per node (8, 8, 8 and 6 pods): none trips alone, together they are every pod.
    let rules = (0..4)
        .map(|n| rule(&format!("node-{n}")).selecting(Some(DRIVER), Some(&format!("node-{n}")), None))
        .collect();
    let mut state = state_of(30, None, rules);
    assert_eq!(tripped_at(&state, 0), ["cluster"]);
    let eviction = state
        .pending_evictions()
        .next()
        .map(|(_, e)| e.clone())
        .expect("pending");
    let check = state.guard_check(&eviction, t(0)).expect("guard on");
    let warned: Vec<(String, String, usize)> = check
        .rules_paused
        .iter()
        .map(|(rule, scope, _, blast)| (rule.name.clone(), scope.to_string(), *blast))
        .collect();
    assert_eq!(
        warned,
        [
            ("node-0".to_owned(), "cluster".to_owned(), 8),
            ("node-1".to_owned(), "cluster".to_owned(), 8),
            ("node-2".to_owned(), "cluster".to_owned(), 8),
            ("node-3".to_owned(), "cluster".to_owned(), 6),
        ]
    );
    let view = state.rule("node-3").expect("rule").clone();
    let condition = current_condition(&state, &view, t(0));
    assert_eq!(condition.reason, "EvictionPaused");
    assert!(
        condition.message.contains(
            "(scope cluster): 30 evictions due within 600 s are more than 16 pods and 25% of the 30 pods using DRA \
             devices. To resume, accept them: device-taint-eviction resume --name node-3 --accept 6"
        ),
        "{}",
        condition.message
    );
}

#[test]
fn none_report_says_whether_the_guard_would_trip() {
    let none = |accept| {
        rule("all")
            .selecting(None, None, None)
            .with_taint(taint("k", "v", "None", Some(t(0))))
            .accepting(accept)
    };
    let state = state_of(30, None, vec![none(None)]);
    let view = state.rule("all").expect("rule").clone();
    assert!(
        current_condition(&state, &view, t(1)).message.ends_with(
            "if the effect was NoExecute. This information will not be updated again. Recreate the \
             DeviceTaintRule to trigger an update. The blast-radius guard would pause these evictions: 30 \
             evictions due within 600 s are more than 16 pods and 25% of the 30 pods using DRA devices."
        ),
        "{}",
        current_condition(&state, &view, t(1)).message
    );
    let state = state_of(30, None, vec![none(Some(30))]);
    let view = state.rule("all").expect("rule").clone();
    assert!(
        !current_condition(&state, &view, t(1))
            .message
            .contains("blast-radius")
    );
    let state = state_of(8, None, vec![none(None)]);
    let view = state.rule("all").expect("rule").clone();
    assert!(
        !current_condition(&state, &view, t(1))
            .message
            .contains("blast-radius")
    );
}

#[test]
fn explain_shows_what_the_guard_holds() {
    let state = state_of(30, None, vec![everything()]);
    let rows = explain(&state, t(1));
    assert_eq!(rows.len(), 30);
    assert!(
        rows.iter().all(|r| r.paused_by.as_deref() == Some("rule/all")),
        "{rows:?}"
    );
    let mut out = Vec::new();
    crate::ops::write_guard(&state.guard_verdict(t(1)), &mut out).expect("write");
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        "Evictions paused by the blast-radius guard for rule/all: 30 evictions due within 600 s are more than 16 \
         pods and 25% of the 30 pods using DRA devices; resume with: device-taint-eviction resume --name all \
         --accept 30 (annotation device-taint-eviction/accept-evictions).\n\
         Evictions paused by the blast-radius guard for cluster: 30 evictions due within 600 s are more than 16 \
         pods and 25% of the 30 pods using DRA devices; resume by accepting the rules' evictions, or with the \
         controller flag --guard-accept-cluster 30.\n"
    );
    let accepted = state_of(30, None, vec![everything().accepting(Some(30))]);
    assert!(explain(&accepted, t(1)).iter().all(|r| r.paused_by.is_none()));
}
