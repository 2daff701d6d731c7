//! A fault-injecting proxy in front of the test API server, for the controller under test.
//!
//! It listens on plain HTTP on 127.0.0.1 and forwards every request through the admin client
//! (which adds TLS and the admin token); the controller gets a kubeconfig pointing at it. Start one
//! proxy per replica to fault or count one replica's requests apart from another's. Responses,
//! including watch streams, are passed through as they arrive. Tests add faults, each for the next
//! `count` requests that match a method (or any method) and a path prefix:
//! - [`Proxy::fail`]: a 500 `Status`, as an overloaded or broken API server answers;
//! - [`Proxy::throttle`]: a 429 `Status` with a `Retry-After` header (API priority and fairness);
//! - [`Proxy::conflict`]: a 409 `Status` "the object has been modified" (optimistic concurrency);
//! - [`Proxy::expire_watches`]: the in-stream `410 Gone` ("too old resource version") the API
//!   server sends when a watch cannot resume, which makes the client list again;
//! - [`Proxy::stall`] / [`Proxy::blackhole`]: the connection stays open and no byte comes back,
//!   until [`Proxy::release_stalls`] (then a 504); the request never reaches the API server;
//! - [`Proxy::delay`]: added latency before the request is forwarded;
//! - [`Proxy::silence_watches`]: a watch answered with `200` headers and then nothing, never closed
//!   (a dead connection behind a NAT or load balancer); [`Proxy::mute_streams`] does the same to
//!   responses in flight;
//! - [`Proxy::corrupt_lists`] / [`Proxy::corrupt_watches`]: one malformed item (its `spec` a
//!   string) added to a list page, or one malformed event put into a watch stream after its first
//!   event.
//!
//! [`Proxy::cut_streams`] ends responses in flight, as a dropped connection would.
//!
//! Every request is recorded with its wall-clock time and the status it was answered with: the
//! proxy, not the controller's own metrics, is the witness of what a replica wrote
//! ([`Proxy::writes`], [`Proxy::writes_for_pod`]).

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::TIMEOUT;

type ProxyBody = UnsyncBoxBody<hyper::body::Bytes, Box<dyn std::error::Error + Send + Sync>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct Fault {
    /// `None`: any method.
    method: Option<Method>,
    prefix: String,
    remaining: usize,
    kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    ServerError,
    TooManyRequests { retry_after_secs: u32 },
    Conflict,
    ExpiredWatch,
    Stall,
    Delay(Duration),
    SilentWatch,
    MalformedListItem,
    MalformedWatchEvent,
}

impl FaultKind {
    /// Whether the fault applies to watch requests only (`Some(true)`), to anything but watches
    /// (`Some(false)`) or to both.
    fn watch(self) -> Option<bool> {
        match self {
            Self::ExpiredWatch | Self::SilentWatch | Self::MalformedWatchEvent => Some(true),
            Self::MalformedListItem => Some(false),
            _ => None,
        }
    }
}

/// Whether a GET of a collection at `path_and_query` lists it: a list (a page of one), or a
/// streaming list (a watch that first sends every object, `sendInitialEvents=true`); not a watch
/// resumed from a resource version.
pub fn is_list(path_and_query: &str) -> bool {
    let query: Vec<&str> = path_and_query.split(['?', '&']).skip(1).collect();
    !query.contains(&"watch=true") || query.contains(&"sendInitialEvents=true")
}

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it arrived (wall clock, comparable with server-set timestamps on this machine).
    pub at: SystemTime,
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The status it was answered with; `None` while it is stalled or was never answered.
    pub status: Option<u16>,
}

impl Record {
    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// Whether it is a write: POST, PUT, PATCH or DELETE.
    pub fn is_write(&self) -> bool {
        [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(&self.method)
    }

    /// Whether the API server answered it with a 2xx status.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// Whether it is about pod `namespace/name` (the pod or a subresource such as `status`).
    pub fn is_for_pod(&self, namespace: &str, name: &str) -> bool {
        let pod = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let path = self.path_only();
        path == pod || path.strip_prefix(&pod).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether it is about some pod (a pod path, with or without a subresource).
    pub fn is_for_a_pod(&self) -> bool {
        let path = self.path_only();
        path.starts_with("/api/v1/namespaces/")
            && path.split('/').nth(5) == Some("pods")
            && path.split('/').nth(6).is_some_and(|n| !n.is_empty())
    }
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    /// Responses in flight: path, the token that ends the body and the one that mutes it.
    streams: Vec<(String, CancellationToken, CancellationToken)>,
    /// Every request, in order of arrival.
    records: Vec<Record>,
    /// Paths (with query) of the watch responses in which the API server sent a 410 `ERROR` event.
    expired: Vec<String>,
    /// Cancelled by [`Proxy::release_stalls`], then replaced.
    stalls: CancellationToken,
}

/// The running proxy; it stops when the test's runtime ends.
pub struct Proxy {
    state: Arc<Mutex<State>>,
    /// A kubeconfig for the controller: `http://127.0.0.1:<port>`, no credentials.
    pub kubeconfig: PathBuf,
}

impl Proxy {
    /// Starts forwarding to the API server of `client` (an admin client).
    pub async fn start(client: Client, dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let kubeconfig = dir.join(format!("proxy-{}.kubeconfig", addr.port()));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: proxy\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\n\
                 current-context: proxy\n"
            ),
        )
        .expect("write proxy kubeconfig");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let client = client.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let client = client.clone();
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(forward(&client, &state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { state, kubeconfig }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the next `count` requests with `method` whose path starts with `prefix` with 500.
    pub fn fail(&self, method: Method, prefix: &str, count: usize) {
        self.add(Some(method), prefix, count, FaultKind::ServerError);
    }

    /// Answers the next `count` matching requests with 429 and `Retry-After: <retry_after_secs>`.
    pub fn throttle(&self, method: Method, prefix: &str, count: usize, retry_after_secs: u32) {
        self.add(
            Some(method),
            prefix,
            count,
            FaultKind::TooManyRequests { retry_after_secs },
        );
    }

    /// Answers the next `count` matching requests with 409 "the object has been modified".
    pub fn conflict(&self, method: Method, prefix: &str, count: usize) {
        self.add(Some(method), prefix, count, FaultKind::Conflict);
    }

    /// Answers the next `count` watch requests whose path starts with `prefix` with an expired
    /// watch (an in-stream `ERROR` event, code 410).
    pub fn expire_watches(&self, prefix: &str, count: usize) {
        self.add(Some(Method::GET), prefix, count, FaultKind::ExpiredWatch);
    }

    /// Holds the next `count` matching requests (`method` `None`: any method): the connection
    /// stays open, no byte is sent back and nothing is forwarded, until [`Self::release_stalls`].
    pub fn stall(&self, method: Option<Method>, prefix: &str, count: usize) {
        self.add(method, prefix, count, FaultKind::Stall);
    }

    /// [`Self::stall`] for every matching request from now on: a blackhole.
    pub fn blackhole(&self, method: Option<Method>, prefix: &str) {
        self.stall(method, prefix, usize::MAX);
    }

    /// Answers every stalled request with 504 and ends the stall faults.
    pub fn release_stalls(&self) {
        let mut state = self.lock();
        state.faults.retain(|f| f.kind != FaultKind::Stall);
        state.stalls.cancel();
        state.stalls = CancellationToken::new();
    }

    /// Forwards the next `count` matching requests only after `latency`.
    pub fn delay(&self, method: Option<Method>, prefix: &str, count: usize, latency: Duration) {
        self.add(method, prefix, count, FaultKind::Delay(latency));
    }

    /// Answers the next `count` watch requests under `prefix` with `200` and headers, then
    /// nothing: the stream neither carries an event nor ends (until [`Self::cut_streams`]).
    pub fn silence_watches(&self, prefix: &str, count: usize) {
        self.add(Some(Method::GET), prefix, count, FaultKind::SilentWatch);
    }

    /// Adds one malformed item (its `spec` a string) to the next `count` list responses under
    /// `prefix`.
    pub fn corrupt_lists(&self, prefix: &str, count: usize) {
        self.add(Some(Method::GET), prefix, count, FaultKind::MalformedListItem);
    }

    /// Puts one malformed `ADDED` event (its object's `spec` a string, its `resourceVersion` that
    /// of the event before it) after the first event of the next `count` watches under `prefix`.
    pub fn corrupt_watches(&self, prefix: &str, count: usize) {
        self.add(Some(Method::GET), prefix, count, FaultKind::MalformedWatchEvent);
    }

    fn add(&self, method: Option<Method>, prefix: &str, count: usize, kind: FaultKind) {
        self.lock().faults.push(Fault {
            method,
            prefix: prefix.to_owned(),
            remaining: count,
            kind,
        });
    }

    /// Drops every fault not used up yet (stalled requests stay stalled: [`Self::release_stalls`]).
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Ends every response in flight whose path starts with `prefix`; returns how many.
    pub fn cut_streams(&self, prefix: &str) -> usize {
        let mut state = self.lock();
        let mut cut = 0;
        state.streams.retain(|(path, token, _)| {
            if path.starts_with(prefix) {
                token.cancel();
                cut += 1;
                false
            } else {
                !token.is_cancelled()
            }
        });
        cut
    }

    /// Stops passing on the bytes of every response in flight whose path starts with `prefix`,
    /// without ending it: a watch that goes silent. Returns how many.
    pub fn mute_streams(&self, prefix: &str) -> usize {
        let state = self.lock();
        let mut muted = 0;
        for (path, cut, mute) in &state.streams {
            if path.starts_with(prefix) && !cut.is_cancelled() {
                mute.cancel();
                muted += 1;
            }
        }
        muted
    }

    /// Requests seen so far: (method, path with query).
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.lock()
            .records
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    }

    /// Every request seen so far, in order of arrival.
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    /// Every write (POST, PUT, PATCH, DELETE) seen so far, answered or not.
    pub fn writes(&self) -> Vec<Record> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.is_write())
            .cloned()
            .collect()
    }

    /// Every write about pod `namespace/name` (the pod or its subresources).
    pub fn writes_for_pod(&self, namespace: &str, name: &str) -> Vec<Record> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.is_write() && r.is_for_pod(namespace, name))
            .cloned()
            .collect()
    }

    /// DELETEs of pod `namespace/name` that the API server accepted (2xx).
    pub fn deletions_of(&self, namespace: &str, name: &str) -> Vec<Record> {
        self.writes_for_pod(namespace, name)
            .into_iter()
            .filter(|r| r.method == Method::DELETE && r.succeeded())
            .collect()
    }

    /// Paths (with query) of the watches that the API server itself ended with a 410 ("too old
    /// resource version") event, in order; not those of [`Self::expire_watches`].
    pub fn expired_watches(&self) -> Vec<String> {
        self.lock().expired.clone()
    }

    /// Every write about some pod (any namespace).
    pub fn pod_writes(&self) -> Vec<Record> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.is_write() && r.is_for_a_pod())
            .cloned()
            .collect()
    }
}

fn full(bytes: impl Into<hyper::body::Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn status_response(code: StatusCode, body: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_owned()))
        .expect("response")
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

/// A copy of `item` (an object of a list or watch event) that no typed decoder accepts: another
/// name and uid, and a `spec` that is a string.
fn malformed(item: &serde_json::Value, name: &str) -> serde_json::Value {
    let mut bad = item.clone();
    if !bad.is_object() {
        bad = serde_json::json!({});
    }
    bad["metadata"]["name"] = name.into();
    bad["metadata"]["uid"] = "00000000-0000-0000-0000-00000000bad0".into();
    bad["spec"] = "malformed by the test proxy".into();
    bad
}

/// The list body with one malformed item added (the body unchanged if it is no list).
fn corrupt_list(body: &[u8]) -> Vec<u8> {
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    let Some(items) = list.get_mut("items").and_then(serde_json::Value::as_array_mut) else {
        return body.to_vec();
    };
    let template = items.first().cloned().unwrap_or_default();
    items.push(malformed(&template, "malformed-list-item"));
    serde_json::to_vec(&list).unwrap_or_else(|_| body.to_vec())
}

/// Passes watch `chunks` on and puts one malformed event after the first complete event line.
fn corrupt_watch<S>(chunks: S) -> impl futures::Stream<Item = Result<hyper::body::Bytes, BoxError>>
where
    S: futures::Stream<Item = Result<hyper::body::Bytes, BoxError>> + Unpin,
{
    futures::stream::unfold(
        (chunks, Vec::<u8>::new(), false),
        |(mut chunks, mut seen, mut done)| async move {
            let chunk = match chunks.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e), (chunks, seen, done))),
            };
            if done {
                return Some((Ok(chunk), (chunks, seen, done)));
            }
            seen.extend_from_slice(&chunk);
            let Some(end) = seen.iter().position(|&b| b == b'\n') else {
                return Some((Ok(chunk), (chunks, seen, done)));
            };
            done = true;
            let mut out = chunk.to_vec();
            if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&seen[..end]) {
                let bad = serde_json::json!({
                    "type": "ADDED",
                    "object": malformed(&event["object"], "malformed-watch-event"),
                });
                // After the first line: at its end within this chunk.
                let line_end_in_chunk = end + 1 - (seen.len() - chunk.len());
                let mut line = serde_json::to_vec(&bad).unwrap_or_default();
                line.push(b'\n');
                out.splice(line_end_in_chunk..line_end_in_chunk, line);
            }
            seen.clear();
            Some((Ok(out.into()), (chunks, seen, done)))
        },
    )
}

/// Whether a watch chunk holds an `ERROR` event with code 410.
fn is_expired_event(chunk: &[u8]) -> bool {
    chunk.split(|&b| b == b'\n').any(|line| {
        serde_json::from_slice::<serde_json::Value>(line)
            .is_ok_and(|e| e["type"] == "ERROR" && e["object"]["code"] == 410)
    })
}

#[allow(clippy::too_many_lines)] // one match over the fault kinds
async fn forward(
    client: &Client,
    state: &Arc<Mutex<State>>,
    request: Request<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    let path = request.uri().path().to_owned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), ToString::to_string);
    let is_watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let method = request.method().clone();
    let (index, fault, stalls) = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.records.push(Record {
            at: SystemTime::now(),
            method: method.clone(),
            path: path_and_query.clone(),
            status: None,
        });
        let index = state.records.len() - 1;
        let fault = state
            .faults
            .iter_mut()
            .find(|f| {
                f.remaining > 0
                    && f.method.as_ref().is_none_or(|m| *m == method)
                    && path.starts_with(&f.prefix)
                    && f.kind.watch().is_none_or(|w| w == is_watch)
            })
            .map(|f| {
                f.remaining -= 1;
                f.kind
            });
        (index, fault, state.stalls.clone())
    };
    let answered = |code: StatusCode| {
        state.lock().unwrap_or_else(PoisonError::into_inner).records[index].status = Some(code.as_u16());
    };
    let reply = |code: StatusCode, body: &str| {
        answered(code);
        status_response(code, body)
    };
    match fault {
        Some(FaultKind::ServerError) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status_body(500, "InternalError", "injected by the test proxy"),
            );
        }
        Some(FaultKind::TooManyRequests { retry_after_secs }) => {
            answered(StatusCode::TOO_MANY_REQUESTS);
            let mut response = status_response(
                StatusCode::TOO_MANY_REQUESTS,
                &status_body(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later",
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
            return response;
        }
        Some(FaultKind::Conflict) => {
            return reply(
                StatusCode::CONFLICT,
                &status_body(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply your \
                     changes to the latest version and try again",
                ),
            );
        }
        Some(FaultKind::ExpiredWatch) => {
            return reply(
                StatusCode::OK,
                &format!(
                    "{{\"type\":\"ERROR\",\"object\":{}}}\n",
                    status_body(410, "Expired", "too old resource version: 1 (2)")
                ),
            );
        }
        Some(FaultKind::Stall) => {
            stalls.cancelled().await;
            return reply(
                StatusCode::GATEWAY_TIMEOUT,
                &status_body(504, "Timeout", "stalled by the test proxy"),
            );
        }
        Some(FaultKind::Delay(latency)) => tokio::time::sleep(latency).await,
        Some(FaultKind::SilentWatch) => {
            answered(StatusCode::OK);
            let cut = CancellationToken::new();
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .streams
                .push((path, cut.clone(), CancellationToken::new()));
            let silent = futures::stream::pending::<Result<Frame<hyper::body::Bytes>, BoxError>>()
                .take_until(cut.cancelled_owned());
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(BodyExt::boxed_unsync(StreamBody::new(silent)))
                .expect("response");
        }
        Some(FaultKind::MalformedListItem | FaultKind::MalformedWatchEvent) | None => {}
    }

    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(http_body_util::Collected::to_bytes) else {
        return reply(StatusCode::BAD_REQUEST, "{}");
    };
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(path_and_query.clone())
        .body(kube::client::Body::from(body.to_vec()))
        .expect("upstream request");
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION && name != header::CONNECTION {
            upstream.headers_mut().append(name, value.clone());
        }
    }
    if matches!(
        fault,
        Some(FaultKind::MalformedListItem | FaultKind::MalformedWatchEvent)
    ) {
        // The list or watch is corrupted as JSON, whatever encoding the client asked for.
        upstream.headers_mut().insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/json"),
        );
    }
    let response = match client.send(upstream).await {
        Ok(response) => response,
        Err(error) => {
            return reply(
                StatusCode::BAD_GATEWAY,
                &format!("{{\"message\":{:?}}}", error.to_string()),
            );
        }
    };
    answered(response.status());
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONNECTION);
    if fault == Some(FaultKind::MalformedListItem) && parts.status.is_success() {
        let Ok(bytes) = body.collect().await.map(http_body_util::Collected::to_bytes) else {
            return status_response(StatusCode::BAD_GATEWAY, "{}");
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, full(corrupt_list(&bytes)));
    }
    let cut = CancellationToken::new();
    let mute = CancellationToken::new();
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .streams
        .push((path, cut.clone(), mute.clone()));
    let shared = Arc::clone(state);
    // A watch in protobuf is read through the controller's own decoder, to see its events.
    let mut protobuf = (is_watch
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(device_taint_eviction::protobuf::MEDIA_TYPE)))
    .then(device_taint_eviction::protobuf::WatchDecoder::default);
    let data = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| Box::new(e) as BoxError)?;
        let expired = match &mut protobuf {
            Some(decoder) => decoder.push(&chunk).is_ok_and(|lines| is_expired_event(&lines)),
            None => is_expired_event(&chunk),
        };
        if is_watch && expired {
            shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expired
                .push(path_and_query.clone());
        }
        Ok(chunk)
    });
    let data: futures::stream::BoxStream<'static, Result<hyper::body::Bytes, BoxError>> =
        if fault == Some(FaultKind::MalformedWatchEvent) {
            corrupt_watch(data).boxed()
        } else {
            data.boxed()
        };
    // Muted: no more bytes, yet the response stays open until it is cut. Not muted, it ends with
    // the upstream body.
    let muted = mute.clone();
    let hold_if_muted = futures::stream::once(async move {
        if muted.is_cancelled() {
            std::future::pending::<()>().await;
        }
    })
    .filter_map(|()| async { None });
    let frames = data
        .take_until(mute.cancelled_owned())
        .chain(hold_if_muted)
        .take_until(cut.cancelled_owned())
        .map(|chunk| chunk.map(Frame::data));
    Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(frames)))
}

/// The name of the pod a request is about, if it is about a pod of `namespace`.
fn pod_of<'a>(record: &'a Record, namespace: &str) -> Option<&'a str> {
    let rest = record
        .path_only()
        .strip_prefix("/api/v1/namespaces/")?
        .strip_prefix(namespace)?
        .strip_prefix("/pods/")?;
    rest.split('/').next().filter(|n| !n.is_empty())
}

/// Asserts, over the writes `proxies` saw (one proxy per replica): each pod of `evicted` in
/// `namespace` was deleted exactly once (one DELETE the API server accepted, whichever replica
/// sent it), and no other pod of `namespace` got any write at all. Returns the accepted DELETEs of
/// the pods of `evicted`, in that order.
///
/// A pod can be gone at the API server (and seen gone by the test) before the answer to its
/// DELETE has come back through the proxy, so this first waits, up to [`TIMEOUT`], until every pod
/// of `evicted` has an accepted DELETE on record; the counts are taken after that.
pub async fn assert_evicted_exactly(proxies: &[&Proxy], namespace: &str, evicted: &[&str]) -> Vec<Record> {
    let recorded = || {
        evicted
            .iter()
            .all(|pod| proxies.iter().any(|p| !p.deletions_of(namespace, pod).is_empty()))
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !recorded() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes: Vec<Record> = proxies.iter().flat_map(|p| p.pod_writes()).collect();
    let touched: Vec<String> = writes
        .iter()
        .filter_map(|r| pod_of(r, namespace))
        .filter(|pod| !evicted.contains(pod))
        .map(str::to_owned)
        .collect();
    assert!(
        touched.is_empty(),
        "pods that must not be touched got writes: {touched:?}; all pod writes: {writes:#?}"
    );
    evicted
        .iter()
        .map(|pod| {
            let deletes: Vec<&Record> = writes
                .iter()
                .filter(|r| pod_of(r, namespace) == Some(pod))
                .filter(|r| r.method == Method::DELETE && r.succeeded())
                .collect();
            assert_eq!(
                deletes.len(),
                1,
                "accepted DELETEs of {namespace}/{pod}; all pod writes: {writes:#?}"
            );
            deletes[0].clone()
        })
        .collect()
}
