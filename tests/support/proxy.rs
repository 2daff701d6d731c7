//! A fault-injecting proxy in front of the test API server, for the controller under test.
//!
//! It listens on plain HTTP on 127.0.0.1 and forwards every request through the admin client
//! (which adds TLS and the admin token); the controller gets a kubeconfig pointing at it.
//! Responses, including watch streams, are passed through as they arrive. Tests add faults:
//! - [`Proxy::fail`]: answer the next `count` requests matching a method and path prefix with
//!   a 500 `Status`, as an overloaded or broken API server would;
//! - [`Proxy::expire_watches`]: answer the next `count` matching watch requests with the
//!   in-stream `410 Gone` ("too old resource version") the API server sends when a watch cannot
//!   resume, which makes the client list again;
//! - [`Proxy::cut_streams`]: end the responses in flight whose path matches, as a dropped
//!   connection would.
//!
//! Every request is recorded (method, path and query) for assertions.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type ProxyBody = UnsyncBoxBody<hyper::body::Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug)]
struct Fault {
    method: Method,
    prefix: String,
    remaining: usize,
    kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    ServerError,
    ExpiredWatch,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    /// Responses in flight: path and the token that ends the body.
    streams: Vec<(String, CancellationToken)>,
    /// (method, path with query) of every request, in order.
    requests: Vec<(Method, String)>,
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
        self.add(method, prefix, count, FaultKind::ServerError);
    }

    /// Answers the next `count` watch requests whose path starts with `prefix` with an expired
    /// watch (an in-stream `ERROR` event, code 410).
    pub fn expire_watches(&self, prefix: &str, count: usize) {
        self.add(Method::GET, prefix, count, FaultKind::ExpiredWatch);
    }

    fn add(&self, method: Method, prefix: &str, count: usize, kind: FaultKind) {
        self.lock().faults.push(Fault {
            method,
            prefix: prefix.to_owned(),
            remaining: count,
            kind,
        });
    }

    /// Drops every fault not used up yet.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Ends every response in flight whose path starts with `prefix`; returns how many.
    pub fn cut_streams(&self, prefix: &str) -> usize {
        let mut state = self.lock();
        let mut cut = 0;
        state.streams.retain(|(path, token)| {
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

    /// Requests seen so far: (method, path with query).
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.lock().requests.clone()
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

async fn forward(
    client: &Client,
    state: &Mutex<State>,
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
    let fault = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requests.push((method.clone(), path_and_query.clone()));
        state
            .faults
            .iter_mut()
            .find(|f| {
                f.remaining > 0
                    && f.method == method
                    && path.starts_with(&f.prefix)
                    && (f.kind != FaultKind::ExpiredWatch || is_watch)
            })
            .map(|f| {
                f.remaining -= 1;
                f.kind
            })
    };
    match fault {
        Some(FaultKind::ServerError) => {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"injected by the test proxy","reason":"InternalError","code":500}"#,
            );
        }
        Some(FaultKind::ExpiredWatch) => {
            return status_response(
                StatusCode::OK,
                "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
                 \"message\":\"too old resource version: 1 (2)\",\"reason\":\"Expired\",\"code\":410}}\n",
            );
        }
        None => {}
    }

    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(http_body_util::Collected::to_bytes) else {
        return status_response(StatusCode::BAD_REQUEST, "{}");
    };
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(path_and_query)
        .body(kube::client::Body::from(body.to_vec()))
        .expect("upstream request");
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION && name != header::CONNECTION {
            upstream.headers_mut().append(name, value.clone());
        }
    }
    let response = match client.send(upstream).await {
        Ok(response) => response,
        Err(error) => {
            return status_response(
                StatusCode::BAD_GATEWAY,
                &format!("{{\"message\":{:?}}}", error.to_string()),
            );
        }
    };
    let token = CancellationToken::new();
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .streams
        .push((path, token.clone()));
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONNECTION);
    let frames = body
        .into_data_stream()
        .take_until(token.cancelled_owned())
        .map(|chunk| {
            chunk
                .map(Frame::data)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        });
    Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(frames)))
}
