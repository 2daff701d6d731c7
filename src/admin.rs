//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` (also `/livez`): 200 `ok` while the process runs, 503 once a task has reported a fatal condition
//!   through [`Liveness::set_failed`], so the kubelet restarts a wedged process: a long-lived task
//!   ended, or the controller's watchdog found a watch whose loop stopped turning (twice
//!   `--watch-idle-timeout`) or due work that no running worker took or finished for ten times
//!   `--api-timeout`.
//! - `/readyz`: 200 once every watch has delivered its initial list ([`Readiness`]), 503 with the
//!   missing kinds before that. A standby replica is as ready as the leader: its caches are warm.
//!   `/readyz?verbose` lists every kind and any detail messages.
//! - `/metrics`: the Prometheus registry in `OpenMetrics` text.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Router,
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{StatusCode, header};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to bind admin server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("admin server failed")]
    Serve(#[source] std::io::Error),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below only assigns plain values, so a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which watches have delivered their initial list, plus free-form details for `/readyz?verbose`.
/// Clones share the same state.
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
    /// Whether every kind has synced, for tasks that wait for it.
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug)]
struct ReadinessState {
    /// Each expected kind and whether its initial list has arrived, in registration order.
    kinds: Vec<(&'static str, bool)>,
    /// Detail messages by key (e.g. `devicetaintrules`), shown in verbose output.
    details: BTreeMap<String, String>,
}

impl Readiness {
    /// Readiness that waits for the initial list of every kind in `kinds`.
    #[must_use]
    pub fn new(kinds: &[&'static str]) -> Self {
        let mut unique: Vec<(&'static str, bool)> = Vec::with_capacity(kinds.len());
        for kind in kinds {
            if !unique.iter().any(|(k, _)| k == kind) {
                unique.push((kind, false));
            }
        }
        let unique_empty = unique.is_empty();
        Self {
            inner: Arc::new(Mutex::new(ReadinessState {
                kinds: unique,
                details: BTreeMap::new(),
            })),
            ready: Arc::new(tokio::sync::watch::Sender::new(unique_empty)),
        }
    }

    /// A receiver that turns `true` once every initial list has been received.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The initial list of `kind` has been received. Readiness is not withdrawn on later re-lists:
    /// the index keeps serving the previous state until the new list is complete. A kind not given
    /// to [`Readiness::new`] is added as synced.
    pub fn mark_synced(&self, kind: &'static str) {
        let mut state = lock(&self.inner);
        match state.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, synced)) => *synced = true,
            None => state.kinds.push((kind, true)),
        }
        let all = state.kinds.iter().all(|(_, synced)| *synced);
        drop(state);
        self.ready.send_replace(all);
    }

    /// Set a detail shown by `/readyz?verbose`, e.g. key `devicetaintrules`, value
    /// `"DeviceTaintRule API not served: running with ResourceSlice taints only"`.
    pub fn set_detail(&self, key: impl Into<String>, message: impl Into<String>) {
        lock(&self.inner).details.insert(key.into(), message.into());
    }

    /// Remove a detail.
    pub fn clear_detail(&self, key: &str) {
        lock(&self.inner).details.remove(key);
    }

    /// Whether every expected initial list has been received.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        lock(&self.inner).kinds.iter().all(|(_, synced)| *synced)
    }

    /// Kinds whose initial list is still missing.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        lock(&self.inner)
            .kinds
            .iter()
            .filter(|(_, synced)| !synced)
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// Body and status of `/readyz`.
    fn report(&self, verbose: bool) -> (StatusCode, String) {
        let state = lock(&self.inner);
        let ready = state.kinds.iter().all(|(_, synced)| *synced);
        if ready && !verbose {
            return (StatusCode::OK, "ok\n".to_owned());
        }
        let mut body = String::new();
        for (kind, synced) in &state.kinds {
            if *synced {
                let _ = writeln!(body, "[+]{kind} synced");
            } else {
                let _ = writeln!(body, "[-]{kind} waiting for the initial list");
            }
        }
        for (key, message) in &state.details {
            let _ = writeln!(body, "detail {key}: {message}");
        }
        if ready {
            body.push_str("readyz check passed\n");
            (StatusCode::OK, body)
        } else {
            body.push_str("readyz check failed\n");
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

/// Process liveness for `/healthz`. Healthy until a task calls [`Liveness::set_failed`].
/// Clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    failure: Arc<Mutex<Option<String>>>,
}

impl Liveness {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Report a condition the process cannot recover from; `/healthz` answers 503 with `reason`.
    pub fn set_failed(&self, reason: impl Into<String>) {
        *lock(&self.failure) = Some(reason.into());
    }

    /// Whether no fatal condition has been reported.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        lock(&self.failure).is_none()
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }
}

/// What the admin server reports on.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub liveness: Liveness,
}

/// The admin routes, for embedding or testing without a socket.
pub fn router(state: AdminState) -> Router {
    health_router(state.clone()).merge(metrics_router(state))
}

/// `/healthz`, `/livez` and `/readyz` only.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `/metrics` only, for a listener of its own (`--metrics-addr`, e.g. on localhost).
pub fn metrics_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

async fn healthz(State(state): State<AdminState>) -> Response {
    match state.liveness.failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")).into_response(),
    }
}

async fn readyz(State(state): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair.split_once('=').map_or(pair, |(k, _)| k), "verbose"))
    });
    state.readiness.report(verbose).into_response()
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(&state.registry),
    )
        .into_response()
}

/// Serve the admin endpoints on `addr` until `shutdown` completes.
///
/// # Errors
/// When `addr` cannot be bound (reported as `failed to bind admin server to {addr}`) or accepting
/// connections fails.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "admin server listening");
    serve_on(listener, state, shutdown).await
}

/// Serve `router` on `addr` until `shutdown` completes.
///
/// # Errors
/// As [`serve`].
pub async fn serve_router(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "admin server listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// Serve the admin endpoints on an already bound listener until `shutdown` completes.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve_on(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::metrics::Metrics;

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 GET over a fresh connection.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), Error>>,
    }

    async fn start(state: AdminState) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, state, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn state(kinds: &[&'static str]) -> (AdminState, Metrics) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let state = AdminState {
            registry: Arc::new(registry),
            readiness: Readiness::new(kinds),
            liveness: Liveness::new(),
        };
        (state, metrics)
    }

    /// With `--metrics-addr`, the health port serves no metrics and the metrics port nothing else.
    #[tokio::test]
    async fn health_and_metrics_can_listen_apart() {
        let (state, _) = state(&[]);
        let serve = |router: Router| async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            addr
        };
        let health = serve(health_router(state.clone())).await;
        let metrics = serve(metrics_router(state)).await;
        assert_eq!(get(health, "/healthz").await.status, 200);
        assert_eq!(get(health, "/metrics").await.status, 404);
        assert_eq!(get(metrics, "/metrics").await.status, 200);
        assert_eq!(get(metrics, "/healthz").await.status, 404);
    }

    #[tokio::test]
    async fn healthz_is_ok_until_a_failure_is_reported() {
        let (state, _) = state(&[]);
        let liveness = state.liveness.clone();
        let server = start(state).await;
        let reply = get(server.addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
        liveness.set_failed("event loop stalled");
        let reply = get(server.addr, "/healthz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "unhealthy: event loop stalled\n");
    }

    #[tokio::test]
    async fn readyz_waits_for_every_initial_list() {
        let (state, _) = state(&["pods", "resourceclaims", "devicetaintrules"]);
        let readiness = state.readiness.clone();
        let server = start(state).await;

        let reply = get(server.addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.contains("[-]pods waiting for the initial list\n"),
            "{}",
            reply.body
        );
        assert!(reply.body.ends_with("readyz check failed\n"), "{}", reply.body);

        readiness.mark_synced("pods");
        readiness.mark_synced("resourceclaims");
        assert!(!readiness.is_ready());
        assert_eq!(readiness.missing(), ["devicetaintrules"]);
        let reply = get(server.addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("[+]pods synced\n"));
        assert!(reply.body.contains("[-]devicetaintrules waiting"));

        readiness.mark_synced("devicetaintrules");
        readiness.set_detail(
            "devicetaintrules",
            "DeviceTaintRule API not served: running with ResourceSlice taints only",
        );
        let reply = get(server.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

        let reply = get(server.addr, "/readyz?verbose").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body,
            "[+]pods synced\n[+]resourceclaims synced\n[+]devicetaintrules synced\n\
             detail devicetaintrules: DeviceTaintRule API not served: running with ResourceSlice \
             taints only\nreadyz check passed\n"
        );
        assert_eq!(get(server.addr, "/readyz?verbose=1").await.body, reply.body);
        assert_eq!(get(server.addr, "/readyz?x=1").await.body, "ok\n");
    }

    #[test]
    fn readiness_edge_cases() {
        let r = Readiness::new(&["pods", "pods"]);
        assert_eq!(r.missing(), ["pods"]);
        r.mark_synced("pods");
        r.mark_synced("pods");
        assert!(r.is_ready());
        r.mark_synced("extra");
        assert!(r.is_ready());
        assert!(Readiness::new(&[]).is_ready());
        r.set_detail("k", "v");
        r.clear_detail("k");
        assert!(!r.report(true).1.contains("detail"));
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let (state, metrics) = state(&[]);
        metrics.pod_deleted(std::time::Duration::from_secs(1));
        let server = start(state).await;
        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(
            reply
                .body
                .contains("device_taint_eviction_controller_pod_deletions_total 1\n")
        );
        assert!(reply.body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let (state, _) = state(&[]);
        let server = start(state).await;
        assert_eq!(get(server.addr, "/nope").await.status, 404);
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let (state, _) = state(&[]);
        let mut server = start(state).await;
        assert_eq!(get(server.addr, "/healthz").await.status, 200);
        server.stop.take().expect("sender").send(()).expect("send");
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), server.task)
            .await
            .expect("server stops")
            .expect("task");
        assert!(result.is_ok());
        assert!(TcpStream::connect(server.addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let (state, _) = state(&[]);
        let err = serve(addr, state, std::future::pending())
            .await
            .expect_err("address in use");
        assert_eq!(err.to_string(), format!("failed to bind admin server to {addr}"));
        assert!(matches!(err, Error::Bind { .. }));
    }
}
