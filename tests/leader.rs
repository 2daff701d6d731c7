//! X5: two replicas with leader election. Exactly one leads and evicts; after the leader dies
//! (SIGKILL) the standby takes over within about one lease duration and evicts; a leader that is
//! stopped (SIGTERM) releases the Lease, so its standby takes over well before the Lease would
//! have run out, and the stopped process exits 0.
//!
//! The tests start their own controllers, so they must not overlap (the controllers of one test
//! would act on the pods of the other): each holds [`SERIAL`].

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use support::{
    TIMEOUT, TestEnv,
    controller::Controller,
    objects::{PENDING, taint, toleration},
    proxy::{Proxy, Record, assert_evicted_exactly},
    wait_for,
};
use tokio::{sync::Mutex, time::Instant};

static SERIAL: Mutex<()> = Mutex::const_new(());

const KEY: &str = "example.com/broken";
const LEASE: &str = "device-taint-eviction-controller";
const LEADER: &str = "device_taint_eviction_controller_leader";
const DELETIONS: &str = "device_taint_eviction_controller_pod_deletions_total";
/// How late after its deadline an eviction may come (a loaded machine included).
const SLACK: Duration = Duration::from_secs(5);

fn toleration_for(seconds: i64) -> serde_json::Value {
    toleration(KEY, Some(seconds))
}

/// Starts replica `identity` with leader election on a Lease in the test's namespace.
async fn replica(env: &TestEnv, identity: &str, lease_seconds: u32) -> Controller {
    start_replica(env.kubeconfig(), env, identity, lease_seconds).await
}

/// [`replica`] talking to the API server through `proxy` (one proxy per replica).
async fn replica_via(env: &TestEnv, identity: &str, lease_seconds: u32, proxy: &Proxy) -> Controller {
    start_replica(&proxy.kubeconfig, env, identity, lease_seconds).await
}

async fn start_replica(
    kubeconfig: &std::path::Path,
    env: &TestEnv,
    identity: &str,
    lease_seconds: u32,
) -> Controller {
    Controller::start(
        kubeconfig,
        &[
            "--leader-elect=true",
            &format!("--leader-elect-namespace={}", env.namespace),
            &format!("--leader-elect-lease-duration={lease_seconds}"),
            &format!("--leader-elect-identity={identity}"),
        ],
    )
    .await
}

async fn holder(env: &TestEnv) -> Option<String> {
    env.api::<Lease>()
        .get_opt(LEASE)
        .await
        .expect("get lease")?
        .spec?
        .holder_identity
}

/// Waits until exactly one of `replicas` reports itself leader and the Lease names it; returns
/// its index.
async fn leader_of(env: &TestEnv, replicas: &[(&str, &Controller)], timeout: Duration) -> usize {
    wait_for("exactly one leader", timeout, || async {
        let mut leaders = Vec::new();
        for (i, (_, c)) in replicas.iter().enumerate() {
            if c.metric(LEADER).await == Some(1.0) {
                leaders.push(i);
            }
        }
        let [i] = leaders[..] else { return None };
        (holder(env).await.as_deref() == Some(replicas[i].0)).then_some(i)
    })
    .await
}

async fn evicted_once(env: &TestEnv, pod: &str, timeout: Duration) {
    wait_for(&format!("{pod} to be evicted"), timeout, || async {
        env.pod_deleted(pod).await.then_some(())
    })
    .await;
    let events = wait_for("the eviction event", TIMEOUT, || async {
        let e = env.eviction_events(pod).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events, vec!["Marking for deletion".to_owned()], "events of {pod}");
}

fn taint_devices<'a>(tainted: &[&str], all: &'a [&'a str]) -> Vec<(&'a str, Vec<serde_json::Value>)> {
    all.iter()
        .map(|d| {
            let taints = if tainted.contains(d) {
                vec![taint(KEY, "NoExecute")]
            } else {
                vec![]
            };
            (*d, taints)
        })
        .collect()
}

/// Exactly one of two replicas leads and evicts; killed, the standby takes over and evicts. Each
/// replica talks through a proxy of its own, which counts its writes: the standby sends none
/// (but Lease calls) while the leader lives, and each pod is deleted exactly once, by the replica
/// that led at the time.
#[tokio::test]
async fn standby_takes_over_after_leader_dies() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let devices = ["gpu-0", "gpu-1", "gpu-2"];
    env.apply_slice(&slice, 1, &taint_devices(&[], &devices)).await;
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![]).await;
    env.pod_with_claim("pod-1", "claim-1", "gpu-1", vec![]).await;
    env.pod_with_claim("bystander", "claim-2", "gpu-2", vec![]).await;

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let proxies = [
        Proxy::start(env.client.clone(), dir).await,
        Proxy::start(env.client.clone(), dir).await,
    ];
    let lease_seconds = 3;
    let started = Instant::now();
    let a = replica_via(&env, "replica-a", lease_seconds, &proxies[0]).await;
    let b = replica_via(&env, "replica-b", lease_seconds, &proxies[1]).await;
    let startup = started.elapsed() / 2;
    let replicas = [("replica-a", &a), ("replica-b", &b)];
    let first = leader_of(&env, &replicas, TIMEOUT).await;
    let (leader, standby) = (replicas[first].1, replicas[1 - first].1);
    let (leader_proxy, standby_proxy) = (&proxies[first], &proxies[1 - first]);
    for (name, c) in &replicas {
        let ready = c.get("/readyz").await.map(|(code, _)| code);
        assert_eq!(ready, Some(200), "{name} (leader or standby) must be ready");
    }
    assert_eq!(standby.metric(LEADER).await, Some(0.0));

    env.apply_slice(&slice, 1, &taint_devices(&["gpu-0"], &devices))
        .await;
    // Whichever replica deletes pod-0, its DELETE shows at its proxy.
    wait_for("a DELETE of pod-0", TIMEOUT, || async {
        let deleted = proxies
            .iter()
            .any(|p| !p.deletions_of(&env.namespace, "pod-0").is_empty());
        deleted.then_some(())
    })
    .await;
    let leases = lease_prefix(&env);
    let standby_writes: Vec<Record> = standby_proxy
        .writes()
        .into_iter()
        .filter(|r| !r.path.starts_with(&leases))
        .collect();
    assert!(
        standby_writes.is_empty(),
        "the standby wrote while the leader lived: {standby_writes:#?}"
    );
    wait_for("the leader to count its deletion", TIMEOUT, || async {
        (leader.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        leader_proxy.deletions_of(&env.namespace, "pod-0").len(),
        1,
        "the leader deleted pod-0"
    );
    evicted_once(&env, "pod-0", TIMEOUT).await;

    leader.kill().await;
    let killed = Instant::now();
    env.apply_slice(&slice, 1, &taint_devices(&["gpu-0", "gpu-1"], &devices))
        .await;
    // One lease duration for the Lease to run out and the standby's next read of it (every 2 s),
    // plus three times a replica's measured start-up for a busy machine and the deletion itself.
    let window = Duration::from_secs(u64::from(lease_seconds) + 2) + 3 * startup.max(Duration::from_secs(1));
    evicted_once(&env, "pod-1", window).await;
    let took = killed.elapsed();
    let now_leading = leader_of(&env, &replicas[1 - first..=1 - first], TIMEOUT).await;
    assert_eq!(now_leading, 0);
    // The pod is gone once the API server has the DELETE; the counter follows when the new
    // leader's worker has the answer.
    wait_for("the new leader to count its deletion", TIMEOUT, || async {
        (standby.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    eprintln!("standby evicted {took:?} after the leader was killed (window {window:?})");
    assert_eq!(
        standby_proxy.deletions_of(&env.namespace, "pod-1").len(),
        1,
        "the new leader deleted pod-1"
    );
    assert_evicted_exactly(
        &proxies.iter().collect::<Vec<_>>(),
        &env.namespace,
        &["pod-0", "pod-1"],
    )
    .await;
    assert_eq!(standby.stop().await, Some(0));
}

/// SIGTERM on the leader releases the Lease and the process exits 0: the running standby (which
/// reads the Lease every 2 s) takes it at once, well within the (long) lease duration, where after
/// a crash it would have to wait for the Lease to run out.
#[tokio::test]
async fn stopped_leader_releases_the_lease() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let devices = ["gpu-0"];
    env.apply_slice(&slice, 1, &taint_devices(&[], &devices)).await;
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![]).await;

    // Long enough that a Lease left held (not released) cannot run out within a third of it:
    // the holder renews 2/5 of a duration before expiry, so at least 12 s remain of a 30 s Lease,
    // and a third (10 s) is room for a slow takeover after a release.
    let lease_seconds = 30;
    let a = replica(&env, "replica-a", lease_seconds).await;
    let first = leader_of(&env, &[("replica-a", &a)], TIMEOUT).await;
    assert_eq!(first, 0);
    let b = replica(&env, "replica-b", lease_seconds).await;
    assert_eq!(
        b.get("/readyz").await.map(|(code, _)| code),
        Some(200),
        "standby ready"
    );
    assert_eq!(b.metric(LEADER).await, Some(0.0));

    let stopping = Instant::now();
    assert_eq!(
        a.stop().await,
        Some(0),
        "a stopped leader exits 0; log:\n{}",
        a.log_text()
    );
    assert_eq!(holder(&env).await, None, "the Lease is released on SIGTERM");

    let replicas = [("replica-b", &b)];
    let leading = leader_of(&env, &replicas, TIMEOUT).await;
    let took = stopping.elapsed();
    eprintln!("the standby leads {took:?} after the leader was stopped");
    assert!(
        took < Duration::from_secs(u64::from(lease_seconds) / 3),
        "the standby led only after {took:?}, as if the Lease had not been released"
    );

    env.apply_slice(&slice, 1, &taint_devices(&["gpu-0"], &devices))
        .await;
    evicted_once(&env, "pod-0", TIMEOUT).await;
    assert_eq!(replicas[leading].1.metric(DELETIONS).await, Some(1.0));
    assert_eq!(b.stop().await, Some(0));
}

/// Lease renewals do not go through the `--kube-api-qps` bucket: the bucket here holds enough
/// for start-up (discovery, the watches) and then refills once every 100 s, yet the replica keeps
/// renewing its 2-second Lease (a renewal is two requests every second).
#[tokio::test]
async fn the_lease_is_not_throttled_with_other_requests() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let c = Controller::start(
        env.kubeconfig(),
        &[
            "--leader-elect=true",
            &format!("--leader-elect-namespace={}", env.namespace),
            "--leader-elect-lease-duration=2",
            "--leader-elect-identity=slow-client",
            "--kube-api-qps=0.01",
            "--kube-api-burst=20",
        ],
    )
    .await;
    let renewed = |lease: &Lease| {
        let spec = lease.spec.as_ref()?;
        (spec.holder_identity.as_deref() == Some("slow-client"))
            .then(|| spec.renew_time.clone())
            .flatten()
    };
    let first = wait_for("the Lease to be taken", TIMEOUT, || async {
        renewed(&env.api::<Lease>().get_opt(LEASE).await.ok()??)
    })
    .await;
    wait_for("ten seconds of renewals", TIMEOUT, || async {
        let last = renewed(&env.api::<Lease>().get_opt(LEASE).await.ok()??)?;
        (last.0.duration_since(first.0) >= k8s_openapi::jiff::SignedDuration::from_secs(10)).then_some(())
    })
    .await;
    assert_eq!(c.metric(LEADER).await, Some(1.0), "log:\n{}", c.log_text());
    assert_eq!(c.stop().await, Some(0), "log:\n{}", c.log_text());
}

/// The path prefix of the Lease calls of replicas electing in `env`'s namespace.
fn lease_prefix(env: &TestEnv) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", env.namespace)
}

/// Asserts that the replica behind `proxy` sent no write but Lease calls once its Lease could have
/// run out: a lease duration after its last renewal the API server confirmed (the holder writes
/// `renewTime` just before sending it).
fn assert_no_write_after_lease(env: &TestEnv, proxy: &Proxy, lease: Duration, replica: &Controller) {
    let leases = lease_prefix(env);
    let renewed = proxy
        .records()
        .iter()
        .filter(|r| r.path.starts_with(&leases) && r.is_write() && r.succeeded())
        .map(|r| r.at)
        .max()
        .expect("the replica renewed its Lease");
    let valid_until = renewed + lease;
    let late: Vec<Record> = proxy
        .writes()
        .into_iter()
        .filter(|r| !r.path.starts_with(&leases) && r.at >= valid_until)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after its Lease ran out: {late:#?}; log:\n{}",
        replica.log_text()
    );
}

/// The server-set `timeAdded` of the first taint of the first device of `slice`.
fn first_time_added(slice: &k8s_openapi::api::resource::v1::ResourceSlice) -> k8s_openapi::jiff::Timestamp {
    slice.spec.devices.as_ref().expect("devices")[0]
        .taints
        .as_ref()
        .expect("taints")[0]
        .time_added
        .clone()
        .expect("timeAdded")
        .0
}

/// The leader is cut off from its Lease (its Lease calls hang at its own proxy; its other calls
/// pass) while two pods count down. It steps down before its Lease can have run out and sends no
/// write after that; the standby takes over once the Lease has run out and evicts both pods at
/// their deadline, each exactly once; the bystander gets no write at all.
#[tokio::test]
async fn leader_cut_off_from_its_lease_steps_down() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let devices = ["gpu-0", "gpu-1", "gpu-2"];
    env.apply_slice(&slice, 1, &taint_devices(&[], &devices)).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let proxies = [
        Proxy::start(env.client.clone(), dir).await,
        Proxy::start(env.client.clone(), dir).await,
    ];
    let lease_seconds = 4;
    let started = Instant::now();
    let a = replica_via(&env, "replica-a", lease_seconds, &proxies[0]).await;
    let b = replica_via(&env, "replica-b", lease_seconds, &proxies[1]).await;
    let startup = started.elapsed() / 2;
    let replicas = [("replica-a", &a), ("replica-b", &b)];
    let first = leader_of(&env, &replicas, TIMEOUT).await;
    let (leader, standby) = (replicas[first].1, replicas[1 - first].1);
    let (leader_proxy, standby_proxy) = (&proxies[first], &proxies[1 - first]);

    // The deadline leaves room for the Lease to run out and the standby to see it (every 2 s),
    // plus three times a replica's measured start-up for a slow machine.
    let lease = Duration::from_secs(lease_seconds.into());
    let toleration = lease + Duration::from_secs(2) + 3 * startup.max(Duration::from_secs(1));
    let seconds = i64::try_from(toleration.as_secs()).expect("seconds");
    for (pod, device) in [("pod-0", "gpu-0"), ("pod-1", "gpu-1")] {
        env.pod_with_claim(
            pod,
            &format!("claim-{pod}"),
            device,
            vec![toleration_for(seconds)],
        )
        .await;
    }
    env.pod_with_claim("bystander", "claim-bystander", "gpu-2", vec![])
        .await;
    let applied = env
        .apply_slice(&slice, 1, &taint_devices(&["gpu-0", "gpu-1"], &devices))
        .await;
    let deadline = std::time::SystemTime::from(first_time_added(&applied)) + toleration;
    wait_for("the leader to schedule both evictions", TIMEOUT, || async {
        (leader.metric(PENDING).await == Some(2.0)).then_some(())
    })
    .await;

    leader_proxy.blackhole(None, &lease_prefix(&env));
    let cut = std::time::SystemTime::now();
    wait_for("the standby to lead", TIMEOUT, || async {
        (standby.metric(LEADER).await == Some(1.0)).then_some(())
    })
    .await;
    let took_over = std::time::SystemTime::now();
    eprintln!(
        "the standby leads {:?} after the cut",
        took_over.duration_since(cut).unwrap_or_default()
    );
    wait_for("both pods to be evicted", TIMEOUT + toleration, || async {
        (env.pod_deleted("pod-0").await && env.pod_deleted("pod-1").await).then_some(())
    })
    .await;
    wait_for("the new leader to have nothing pending", TIMEOUT, || async {
        (standby.metric(PENDING).await == Some(0.0)).then_some(())
    })
    .await;

    assert_no_write_after_lease(&env, leader_proxy, lease, leader);
    let deleted = assert_evicted_exactly(
        &proxies.iter().collect::<Vec<_>>(),
        &env.namespace,
        &["pod-0", "pod-1"],
    )
    .await;
    for (pod, record) in ["pod-0", "pod-1"].iter().zip(&deleted) {
        assert_eq!(
            standby_proxy.deletions_of(&env.namespace, pod),
            vec![record.clone()],
            "{pod} was deleted by the new leader"
        );
        assert!(record.at >= deadline, "{pod} deleted before its deadline");
        let late = record.at.duration_since(deadline).unwrap_or_default();
        if took_over + Duration::from_secs(1) > deadline {
            eprintln!("inconclusive timing: the standby led only after the deadline");
        } else {
            assert!(late < SLACK, "{pod} deleted {late:?} after its deadline");
        }
    }
    for pod in ["pod-0", "pod-1"] {
        evicted_once(&env, pod, TIMEOUT).await;
    }
    assert!(
        leader.log_text().contains("lost the leader lease"),
        "the old leader stepped down; log:\n{}",
        leader.log_text()
    );
    leader_proxy.release_stalls();
    assert_eq!(standby.stop().await, Some(0));
}
