//! The guard's arithmetic: per rule, per pool and cluster-wide, absolute and percent, acceptances.
//! The window (which evictions count at all) is the index's filter, tested in `index::tests`.

use super::*;

fn rule(name: &str) -> Scope {
    Scope::Rule(RuleRef::new(name, format!("uid-{name}")))
}

fn pool(name: &str) -> Scope {
    Scope::Pool(Pool {
        driver: "gpu.example.com".into(),
        pool: name.into(),
    })
}

/// `n` pods each pending for `scopes`.
fn pods(n: usize, scopes: &[Scope]) -> Vec<Vec<Scope>> {
    vec![scopes.to_vec(); n]
}

fn config(min_pods: usize, max_percent: f64, max_pods: usize) -> GuardConfig {
    GuardConfig {
        min_pods,
        max_percent,
        max_pods,
        ..GuardConfig::default()
    }
}

fn tripped(verdict: &Verdict) -> Vec<String> {
    verdict.tripped.keys().map(ToString::to_string).collect()
}

/// (case, config, DRA pods, pending evictions, tripped scopes)
type Case = (
    &'static str,
    GuardConfig,
    usize,
    Vec<Vec<Scope>>,
    Vec<&'static str>,
);

#[test]
#[allow(clippy::too_many_lines)] // one table
fn trips_above_floor_and_percent_or_above_ceiling() {
    let cases: Vec<Case> = vec![
        (
            "issue-141422-empty-selector-30-of-30",
            GuardConfig::default(),
            30,
            pods(30, &[rule("all")]),
            vec!["rule/all", "cluster"],
        ),
        (
            "one-node-16-pods-whole-cluster-is-one-node",
            GuardConfig::default(),
            16,
            pods(16, &[rule("node-1")]),
            vec![],
        ),
        (
            "one-node-8-slice-taints-in-small-cluster",
            GuardConfig::default(),
            10,
            pods(8, &[pool("node-1")]),
            vec![],
        ),
        (
            "floor-is-not-enough-percent-too",
            config(16, 25.0, 0),
            1000,
            pods(17, &[rule("r")]),
            vec![],
        ),
        (
            "percent-is-not-enough-floor-too",
            config(16, 25.0, 0),
            20,
            pods(16, &[rule("r")]),
            vec![],
        ),
        (
            "just-above-both",
            config(16, 25.0, 0),
            67,
            pods(17, &[rule("r")]),
            vec!["rule/r", "cluster"],
        ),
        (
            "exactly-the-percent-does-not-trip",
            config(16, 25.0, 0),
            68,
            pods(17, &[rule("r")]),
            vec![],
        ),
        (
            "ceiling-trips-whatever-the-percent",
            config(16, 25.0, 100),
            100_000,
            pods(101, &[rule("r")]),
            vec!["rule/r", "cluster"],
        ),
        (
            "at-the-ceiling-does-not-trip",
            config(16, 25.0, 100),
            100_000,
            pods(100, &[rule("r")]),
            vec![],
        ),
        ("off", GuardConfig::off(), 30, pods(30, &[rule("all")]), vec![]),
        (
            "percent-100-only-the-ceiling",
            config(0, 100.0, 20),
            21,
            pods(21, &[rule("r")]),
            vec!["rule/r", "cluster"],
        ),
        (
            // Each pool is one node, none trips alone; together they are the whole cluster.
            "many-pools-trip-only-the-cluster",
            GuardConfig::default(),
            40,
            [
                pods(10, &[pool("a")]),
                pods(10, &[pool("b")]),
                pods(10, &[pool("c")]),
            ]
            .concat(),
            vec!["cluster"],
        ),
        (
            "per-rule-counts-apart",
            config(5, 10.0, 0),
            1000,
            [pods(6, &[rule("a")]), pods(5, &[rule("b")])].concat(),
            vec![],
        ),
        (
            "per-rule-one-of-two",
            config(5, 0.0, 0),
            1000,
            [pods(6, &[rule("a")]), pods(5, &[rule("b")])].concat(),
            vec!["rule/a", "cluster"],
        ),
        (
            "a-pod-with-a-rule-and-a-slice-taint-counts-in-both",
            config(5, 0.0, 0),
            1000,
            [pods(3, &[rule("a"), pool("p")]), pods(3, &[pool("p")])].concat(),
            vec!["pool/gpu.example.com/p", "cluster"],
        ),
    ];
    for (case, config, dra_pods, due, want) in cases {
        let verdict = decide(&config, dra_pods, &due, |_| None);
        assert_eq!(tripped(&verdict), want, "{case}");
    }
}

#[test]
fn holds_the_pods_of_tripped_scopes_only() {
    let config = config(5, 0.0, 0);
    let due = [
        pods(6, &[rule("big")]),
        pods(2, &[rule("small")]),
        pods(2, &[rule("big"), rule("small")]),
    ]
    .concat();
    let mut config_no_cluster = config.clone();
    config_no_cluster.accept_cluster = Some(100);
    let verdict = decide(&config_no_cluster, 1000, &due, |_| None);
    assert_eq!(tripped(&verdict), ["rule/big"]);
    assert!(verdict.holds(&[rule("big")]).is_some());
    assert!(verdict.holds(&[rule("small")]).is_none(), "other rules go on");
    assert!(
        verdict.holds(&[rule("big"), rule("small")]).is_some(),
        "held if any scope is tripped"
    );
    assert!(verdict.holds(&[pool("p")]).is_none());
    assert_eq!(verdict.held, 8);
}

#[test]
fn acceptance_resumes_a_scope_up_to_its_number() {
    let config = GuardConfig::default();
    let due = pods(30, &[rule("all")]);
    // (case, accepted, tripped)
    let cases: [(&str, Option<usize>, Vec<&str>); 4] = [
        ("none", None, vec!["rule/all", "cluster"]),
        ("too-few", Some(29), vec!["rule/all", "cluster"]),
        ("exactly", Some(30), vec![]),
        ("more", Some(1000), vec![]),
    ];
    for (case, accepted, want) in cases {
        let verdict = decide(&config, 30, &due, |r| {
            (r.name == "all").then_some(accepted).flatten()
        });
        assert_eq!(tripped(&verdict), want, "{case}");
        if want.is_empty() {
            assert!(verdict.holds(&[rule("all")]).is_none(), "{case}");
            assert_eq!(verdict.accepted.get(&rule("all")), Some(&30), "{case}");
        } else {
            assert_eq!(verdict.tripped[&rule("all")].accepted, accepted, "{case}");
        }
    }
}

#[test]
fn pool_and_cluster_acceptances_come_from_the_flags() {
    let due = [
        pods(10, &[pool("a")]),
        pods(10, &[pool("b")]),
        pods(10, &[pool("c")]),
    ]
    .concat();
    let mut config = GuardConfig::default();
    assert_eq!(tripped(&decide(&config, 40, &due, |_| None)), ["cluster"]);
    // Accepting one pool takes its pods out of the cluster count: 20 of 40 still trip.
    config.accept_pools.insert(
        Pool {
            driver: "gpu.example.com".into(),
            pool: "a".into(),
        },
        10,
    );
    let verdict = decide(&config, 40, &due, |_| None);
    assert_eq!(tripped(&verdict), ["cluster"]);
    assert_eq!(verdict.tripped[&Scope::Cluster].blast, 20);
    assert!(verdict.holds(&[pool("a")]).is_none(), "accepted pool goes on");
    assert!(verdict.holds(&[pool("b")]).is_some(), "held by the cluster scope");
    config.accept_cluster = Some(20);
    assert_eq!(
        tripped(&decide(&config, 40, &due, |_| None)),
        Vec::<String>::new()
    );
    config.accept_cluster = Some(19);
    assert_eq!(tripped(&decide(&config, 40, &due, |_| None)), ["cluster"]);
}

#[test]
fn accepting_the_rule_also_clears_the_cluster() {
    let due = pods(30, &[rule("all")]);
    let verdict = decide(&GuardConfig::default(), 30, &due, |_| Some(30));
    assert!(verdict.tripped.is_empty());
    assert_eq!(verdict.held, 0);
}

#[test]
fn trip_explains_itself() {
    let verdict = decide(&GuardConfig::default(), 30, &pods(30, &[rule("all")]), |_| {
        Some(20)
    });
    assert_eq!(
        verdict.tripped[&rule("all")].to_string(),
        "30 evictions due within 600 s are more than 16 pods and 25% of the 30 pods using DRA devices \
         (and more than the 20 accepted)"
    );
    let verdict = decide(&config(16, 25.0, 100), 100_000, &pods(101, &[rule("r")]), |_| {
        None
    });
    assert_eq!(
        verdict.tripped[&Scope::Cluster].to_string(),
        "101 evictions due within 600 s are more than the ceiling of 100 pods"
    );
}

#[test]
fn scopes_of_an_eviction() {
    use crate::view::{DeviceId, Time};
    let eviction = Eviction {
        at: Time::UNIX_EPOCH,
        reasons: vec![
            TaintSource::Rule(RuleRef::new("b", "uid-b")),
            TaintSource::Rule(RuleRef::new("a", "uid-a")),
            TaintSource::Slice {
                device: DeviceId::new("gpu.example.com", "p", "gpu-0"),
                index: 0,
            },
            TaintSource::Slice {
                device: DeviceId::new("gpu.example.com", "p", "gpu-1"),
                index: 2,
            },
        ],
    };
    assert_eq!(scopes_of(&eviction), [rule("a"), rule("b"), pool("p")]);
}
