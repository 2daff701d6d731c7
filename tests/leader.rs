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
use support::{TIMEOUT, TestEnv, controller::Controller, objects::taint, wait_for};
use tokio::{sync::Mutex, time::Instant};

static SERIAL: Mutex<()> = Mutex::const_new(());

const KEY: &str = "example.com/broken";
const LEASE: &str = "device-taint-eviction-controller";
const LEADER: &str = "device_taint_eviction_controller_leader";
const DELETIONS: &str = "device_taint_eviction_controller_pod_deletions_total";

/// Starts replica `identity` with leader election on a Lease in the test's namespace.
async fn replica(env: &TestEnv, identity: &str, lease_seconds: u32) -> Controller {
    Controller::start(
        env.kubeconfig(),
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

/// Exactly one of two replicas leads and evicts; killed, the standby takes over and evicts.
#[tokio::test]
async fn standby_takes_over_after_leader_dies() {
    if support::controller::skip_with_deployed_controller() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let slice = env.unique_name("slice");
    let devices = ["gpu-0", "gpu-1"];
    env.apply_slice(&slice, 1, &taint_devices(&[], &devices)).await;
    env.pod_with_claim("pod-0", "claim-0", "gpu-0", vec![]).await;
    env.pod_with_claim("pod-1", "claim-1", "gpu-1", vec![]).await;

    let a = replica(&env, "replica-a", 3).await;
    let b = replica(&env, "replica-b", 3).await;
    let replicas = [("replica-a", &a), ("replica-b", &b)];
    let first = leader_of(&env, &replicas, TIMEOUT).await;
    let (leader, standby) = (replicas[first].1, replicas[1 - first].1);
    for (name, c) in &replicas {
        let ready = c.get("/readyz").await.map(|(code, _)| code);
        assert_eq!(ready, Some(200), "{name} (leader or standby) must be ready");
    }
    assert_eq!(standby.metric(LEADER).await, Some(0.0));

    env.apply_slice(&slice, 1, &taint_devices(&["gpu-0"], &devices))
        .await;
    evicted_once(&env, "pod-0", TIMEOUT).await;
    wait_for("the leader to count its deletion", TIMEOUT, || async {
        (leader.metric(DELETIONS).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        standby.metric(DELETIONS).await,
        Some(0.0),
        "the standby must not evict"
    );

    leader.kill().await;
    let killed = Instant::now();
    env.apply_slice(&slice, 1, &taint_devices(&["gpu-0", "gpu-1"], &devices))
        .await;
    // One lease duration (3 s) for the Lease to run out, plus margin for the standby's poll, a
    // busy machine and the deletion itself.
    evicted_once(&env, "pod-1", Duration::from_secs(3 + 7)).await;
    let took = killed.elapsed();
    let now_leading = leader_of(&env, &replicas[1 - first..=1 - first], TIMEOUT).await;
    assert_eq!(now_leading, 0);
    assert_eq!(standby.metric(DELETIONS).await, Some(1.0));
    eprintln!("standby evicted {took:?} after the leader was killed");
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

    let lease_seconds = 15;
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
