//! The fault proxy itself (`support::proxy`), driven by a plain client against the real API
//! server: each fault mode does what the tests that rely on it assume.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use http::Method;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use support::{TIMEOUT, TestEnv, proxy::Proxy};

/// A client that talks through `proxy`.
async fn through(proxy: &Proxy) -> Client {
    let kubeconfig = Kubeconfig::read_from(&proxy.kubeconfig).expect("proxy kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("proxy config");
    Client::try_from(config).expect("client")
}

async fn config_map(api: &Api<ConfigMap>, name: &str) {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create config map");
}

async fn setup() -> (TestEnv, Proxy, Api<ConfigMap>, String) {
    let env = TestEnv::new().await;
    let proxy = Proxy::start(env.client.clone(), Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let api = Api::namespaced(through(&proxy).await, &env.namespace);
    let prefix = format!("/api/v1/namespaces/{}/configmaps", env.namespace);
    (env, proxy, api, prefix)
}

/// Stall: no answer until released (then 504), and the request never reaches the server;
/// delay: the answer comes no sooner; 429 carries Retry-After; 409 is a conflict; the writes are
/// counted with their status.
#[tokio::test]
async fn stall_delay_throttle_conflict() {
    let (env, proxy, api, prefix) = setup().await;
    proxy.stall(Some(Method::POST), &prefix, 1);
    let stalled = tokio::spawn({
        let api = api.clone();
        async move { config_map(&api, "stalled").await }
    });
    let waited = tokio::time::timeout(Duration::from_secs(2), async {
        while proxy.writes().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the stalled request reached the proxy");
    assert!(!stalled.is_finished(), "a stalled request gets no answer");
    assert_eq!(proxy.writes()[0].status, None);
    let direct: Api<ConfigMap> = env.api();
    assert!(
        direct.get_opt("stalled").await.expect("get").is_none(),
        "not forwarded"
    );
    proxy.release_stalls();
    // kube's default client retries a 504; the retry passes.
    let _ = stalled.await;
    assert_eq!(proxy.writes()[0].status, Some(504));

    proxy.delay(Some(Method::GET), &prefix, 1, Duration::from_secs(2));
    let started = Instant::now();
    api.list(&ListParams::default()).await.expect("list");
    assert!(started.elapsed() >= Duration::from_secs(2), "delayed");

    let before = proxy.writes().len();
    proxy.conflict(Method::POST, &prefix, 1);
    match api.create(&PostParams::default(), &ConfigMap::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("expected 409, got {other:?}"),
    }
    // kube's default client retries a 429 itself, after its Retry-After.
    proxy.throttle(Method::POST, &prefix, 1, 1);
    config_map(&api, "throttled").await;
    let statuses: Vec<_> = proxy.writes()[before..].iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(409), Some(429), Some(201)]);
}

/// Waits `quiet` for an event about `name` on `stream`; returns it if one came.
async fn event_about<S>(stream: &mut S, name: &str, quiet: Duration) -> Option<String>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    tokio::time::timeout(quiet, async {
        while let Some(event) = stream.next().await {
            if let Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) = &event
                && o.metadata.name.as_deref() == Some(name)
            {
                return format!("{event:?}");
            }
        }
        std::future::pending().await
    })
    .await
    .ok()
}

/// A silenced watch sends headers and then nothing, even when an object changes; a muted stream
/// in flight stops passing events on without ending.
#[tokio::test]
async fn silent_and_muted_watches() {
    let (_env, proxy, api, prefix) = setup().await;
    proxy.silence_watches(&prefix, 1);
    let mut silent = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    config_map(&api, "while-silent").await;
    let event = event_about(&mut silent, "while-silent", Duration::from_secs(3)).await;
    assert_eq!(event, None, "a silenced watch delivered an event");

    let mut live = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let first = tokio::time::timeout(TIMEOUT, live.try_next()).await;
    assert!(matches!(first, Ok(Ok(Some(WatchEvent::Added(_))))), "{first:?}");
    assert!(proxy.mute_streams(&prefix) >= 1);
    config_map(&api, "while-muted").await;
    let event = event_about(&mut live, "while-muted", Duration::from_secs(3)).await;
    assert_eq!(event, None, "a muted watch delivered an event");
    // The check can fail: without the mute, the same watch delivers the next object.
    let mut control = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    config_map(&api, "unmuted").await;
    assert!(
        event_about(&mut control, "unmuted", TIMEOUT).await.is_some(),
        "an unmuted watch delivers"
    );
}

/// A corrupted list page holds one extra item whose `spec` is a string; a corrupted watch has one
/// extra event after its first, carrying such an object.
#[tokio::test]
async fn malformed_list_items_and_watch_events() {
    let (env, proxy, _api, prefix) = setup().await;
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        through(&proxy).await,
        &env.namespace,
        &kube::api::ApiResource::erase::<ConfigMap>(&()),
    );
    config_map(&env.api(), "one").await;
    proxy.corrupt_lists(&prefix, 1);
    let list = raw.list(&ListParams::default()).await.expect("list");
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["one", "malformed-list-item"]);
    assert_eq!(list.items[1].data["spec"], "malformed by the test proxy");

    proxy.corrupt_watches(&prefix, 1);
    let events: Vec<_> = raw
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .take(2)
        .collect()
        .await;
    let names: Vec<_> = events
        .iter()
        .map(|e| match e {
            Ok(WatchEvent::Added(o)) => o.metadata.name.clone().unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["one", "malformed-watch-event"]);
}
