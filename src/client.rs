//! Building the Kubernetes API client.
//!
//! Two choices differ from kube's defaults, both on purpose:
//! - kube's built-in retry is off. Since kube 4 it retries 429/503/504 up to 15 times with backoff
//!   up to 1000 s, for every verb; a `PodDisruptionBudget` refusal (429 on evict) or a DELETE would
//!   then be retried invisibly for minutes. The controller retries per item with its own backoff.
//! - Requests are paced by a client-side token bucket (`--kube-api-qps`, `--kube-api-burst`), as
//!   client-go does, so a burst of evictions cannot flood the API server. Requests wait for a
//!   token; none is rejected.
//! - The controller's writer client is fenced by leadership ([`FenceLayer`]): a write leaves only
//!   while this replica leads, checked after its wait for a token, right before it is sent.
//! - A 429 answer carries its `Retry-After` header into the `Status` (`details.retryAfterSeconds`),
//!   see [`RetryAfterLayer`], so that callers can honour it: kube's errors keep the `Status` but
//!   not the headers.
//! - API connections use TCP keepalive ([`http_connector`]): kube's own connector sets none, so a
//!   peer that vanished without closing (a dead node, a dropped NAT or load-balancer entry) would
//!   leave a watch or a pooled connection hanging until the kernel gives up hours later.
//! - Pod lists and watches are asked for in protobuf and handed up as compact JSON
//!   ([`PodProtobufLayer`]): the API server encodes them several times faster, start-up in a
//!   large cluster waits on the list, and each eviction brings two pod watch events.
//! - Streaming lists (`--initial-list=streaming`) are consistent reads ([`ConsistentStreamLayer`]),
//!   not served from a possibly lagging watch cache.
//! - Watches report every frame they receive, bookmarks included, to a [`WatchProgress`], so that
//!   a watch that receives nothing at all can be told from a quiet one (`--watch-idle-timeout`).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt as _, future::BoxFuture};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper_util::{
    client::legacy::{self as hyper_client, connect::HttpConnector},
    rt::TokioExecutor,
};
use kube::{
    Client, Config,
    client::{Body, ClientBuilder, ConfigExt as _},
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
};
use tokio::{sync::watch, time::Instant};
use tokio_util::bytes::Bytes;
use tower::{ServiceBuilder, ServiceExt as _, util::BoxService};
use tracing::warn;

use crate::{
    protobuf,
    throttle::{ThrottleLayer, TokenBucket},
};

/// How to reach the API server and how fast to talk to it, as the command line chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Kubeconfig path(s), joined like `$KUBECONFIG`; `None` for kube's inference.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context instead of the current one.
    pub context: Option<String>,
    /// Sustained requests per second; 0 disables the client-side limit.
    pub qps: f64,
    /// Requests that may be sent at once before `qps` pacing applies.
    pub burst: u32,
    /// Deadline of every request other than a watch, response body included.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read kubeconfig")]
    ReadKubeconfig(#[source] KubeconfigError),

    #[error("failed to merge kubeconfig {path}")]
    MergeKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },

    #[error("--kubeconfig names no file")]
    EmptyKubeconfigPath,

    #[error("failed to load the API server configuration from the kubeconfig")]
    LoadKubeconfig(#[source] KubeconfigError),

    #[error("failed to find an API server configuration (neither a kubeconfig nor in-cluster)")]
    InferConfig(#[source] InferConfigError),

    #[error("failed to build the API client")]
    BuildClient(#[source] kube::Error),
}

/// The API server configuration chosen by the settings (from the flags): `--kubeconfig` (several paths separated as in
/// `$KUBECONFIG` are merged) and `--context`; without them, kube's inference (`$KUBECONFIG` or
/// `~/.kube/config`, else the in-cluster service account). kube's default retry is switched off.
///
/// # Errors
/// When no configuration can be read or the chosen context does not exist.
pub async fn load_config(args: &ClientSettings) -> Result<Config, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &args.kubeconfig {
        Some(paths) => {
            let kubeconfig = read_kubeconfigs(paths)?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(Error::LoadKubeconfig)?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(Error::LoadKubeconfig)?,
        None => Config::infer().await.map_err(Error::InferConfig)?,
    };
    config.default_retry = false;
    Ok(config)
}

fn read_kubeconfigs(paths: &std::path::Path) -> Result<Kubeconfig, Error> {
    let mut merged: Option<Kubeconfig> = None;
    for path in std::env::split_paths(paths).filter(|p| !p.as_os_str().is_empty()) {
        let next = Kubeconfig::read_from(&path).map_err(Error::ReadKubeconfig)?;
        merged = Some(match merged {
            None => next,
            Some(first) => first
                .merge(next)
                .map_err(|source| Error::MergeKubeconfig { path, source })?,
        });
    }
    merged.ok_or(Error::EmptyKubeconfigPath)
}

/// A client for the configuration chosen by `settings`, without kube's hidden retries and paced by
/// the `--kube-api-qps` / `--kube-api-burst` token bucket.
///
/// # Errors
/// When the configuration cannot be loaded or the TLS/auth stack cannot be built from it.
pub async fn client(settings: &ClientSettings) -> Result<Client, Error> {
    let config = load_config(settings).await?;
    client_from_config(
        config,
        TokenBucket::new(settings.qps, settings.burst),
        settings.timeout,
        &WatchProgress::default(),
    )
}

/// Idle time of an API connection before TCP keepalive probes start.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Interval between unanswered keepalive probes; after [`KEEPALIVE_RETRIES`] of them the kernel
/// fails the connection (about a minute after the peer went silent).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes before the connection is failed.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// The TCP connector of every API client: kube's (any scheme, the configured connect timeout)
/// plus TCP keepalive.
#[must_use]
pub fn http_connector(config: &Config) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    http
}

/// The bottom of every client's stack, below the [`Step`] layers.
pub type BaseService = BoxService<Request<Body>, Response<ResponseBody>, tower::BoxError>;

/// kube's client stack for `config` (TLS, base URI, authentication, extra headers) over
/// [`http_connector`], with kube's retry off. A proxy (which this build does not support) is
/// left to kube's builder, which says so.
fn base_builder(mut config: Config) -> Result<ClientBuilder<BaseService>, Error> {
    config.default_retry = false;
    if config.proxy_url.is_some() {
        let builder = ClientBuilder::try_from(config).map_err(Error::BuildClient)?;
        return Ok(builder.with_layer(&tower::layer::layer_fn(boxed)));
    }
    let https = config
        .rustls_https_connector_with_connector(http_connector(&config))
        .map_err(Error::BuildClient)?;
    let client: hyper_client::Client<_, Body> = hyper_client::Builder::new(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::BuildClient)?)
        .layer(config.extra_headers_layer().map_err(Error::BuildClient)?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(ClientBuilder::new(boxed(service), config.default_namespace))
}

/// `service` as the bottom of a client stack, its errors and response bodies boxed once.
pub fn boxed<S, B>(service: S) -> BaseService
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    BoxService::new(service.map_err(Into::into).map_response(|r| r.map(boxed_body)))
}

/// A client for `config`, paced by `bucket`, each request other than a watch bounded by
/// `timeout`, each watch reporting what it receives to `progress`. `default_retry` is forced
/// off whatever `config` says.
///
/// # Errors
/// When the TLS or authentication stack cannot be built from `config`.
pub fn client_from_config(
    config: Config,
    bucket: TokenBucket,
    timeout: Duration,
    progress: &WatchProgress,
) -> Result<Client, Error> {
    Ok(base_builder(config)?
        .with_layer(&PodProtobufLayer::new())
        .with_layer(&ConsistentStreamLayer::default())
        .with_layer(&WatchProgressLayer::new(progress.clone()))
        .with_layer(&DeadlineLayer::new(timeout))
        .with_layer(&RetryAfterLayer::new())
        .with_layer(&ThrottleLayer::new(bucket))
        .build())
}

/// A client for the controller's writes: as [`client_from_config`], and every request other
/// than a GET is refused without being sent while `leader` reads `false` ([`FenceLayer`]).
///
/// # Errors
/// When the TLS or authentication stack cannot be built from `config`.
pub fn writer_from_config(
    config: Config,
    bucket: TokenBucket,
    timeout: Duration,
    leader: watch::Receiver<bool>,
) -> Result<Client, Error> {
    Ok(base_builder(config)?
        .with_layer(&FenceLayer::new(leader))
        .with_layer(&DeadlineLayer::new(timeout))
        .with_layer(&RetryAfterLayer::new())
        .with_layer(&ThrottleLayer::new(bucket))
        .build())
}

/// A write refused because this replica does not lead (any more).
#[derive(Debug, thiserror::Error)]
#[error("not the leader: {method} {path} not sent")]
pub struct NotLeader {
    method: http::Method,
    path: String,
}

/// Whether a failed call was refused by the leadership fence, not by the API server.
#[must_use]
pub fn is_not_leader(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<NotLeader>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The response body of every client stack, boxed once per layer.
pub type ResponseBody = UnsyncBoxBody<Bytes, tower::BoxError>;

/// A response on its way up the stack.
pub type ResponseFuture = BoxFuture<'static, Result<Response<ResponseBody>, tower::BoxError>>;

/// What one layer of the client stack does: looks at each request as it is handed down (and may
/// amend it, or refuse it unsent), then wraps the answer. [`StepLayer`] makes a tower layer of it, so the
/// layers below differ only in these two functions.
pub trait Step: Clone + Send + Sync + 'static {
    /// What [`Step::before`] learns of the request for [`Step::after`].
    type Seen: Send + 'static;

    /// Runs when the request is handed to this layer; an error refuses it.
    ///
    /// # Errors
    /// The reason the request is not sent.
    fn before(&self, request: &mut Request<Body>) -> Result<Self::Seen, tower::BoxError>;

    /// Wraps `response`, the call of the layer below (not polled yet).
    fn after(&self, seen: Self::Seen, response: ResponseFuture) -> ResponseFuture;
}

/// The tower layer of a [`Step`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StepLayer<T>(T);

impl<T: Step, S> tower::Layer<S> for StepLayer<T> {
    type Service = StepService<T, S>;

    fn layer(&self, inner: S) -> Self::Service {
        StepService {
            step: self.0.clone(),
            inner,
        }
    }
}

/// The service made by a [`StepLayer`].
#[derive(Clone, Debug)]
pub struct StepService<T, S> {
    step: T,
    inner: S,
}

/// Over a service of the stack's own types ([`BaseService`] or another step): the answer of the
/// layer below is handed to [`Step::after`] as it is, so a step that does not touch it costs
/// neither an allocation nor a level of indirection per request or per body frame.
impl<T, S> tower::Service<Request<Body>> for StepService<T, S>
where
    T: Step,
    S: tower::Service<
            Request<Body>,
            Response = Response<ResponseBody>,
            Error = tower::BoxError,
            Future = ResponseFuture,
        >,
{
    type Response = Response<ResponseBody>;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.step.before(&mut request) {
            Ok(seen) => self.step.after(seen, self.inner.call(request)),
            Err(refused) => Box::pin(async move { Err(refused) }),
        }
    }
}

fn boxed_body<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Refuses every request but a GET while `leader` reads `false`. It sits below the token
/// bucket, so a write that waited for a token is checked again when it is finally sent: a
/// replica that lost its Lease stops writing at once, whatever was queued.
#[derive(Clone, Debug)]
pub struct Fence {
    leader: watch::Receiver<bool>,
}

/// The layer of [`Fence`].
pub type FenceLayer = StepLayer<Fence>;

impl FenceLayer {
    #[must_use]
    pub fn new(leader: watch::Receiver<bool>) -> Self {
        StepLayer(Fence { leader })
    }
}

impl Step for Fence {
    type Seen = ();

    fn before(&self, request: &mut Request<Body>) -> Result<(), tower::BoxError> {
        if request.method() != http::Method::GET && !*self.leader.borrow() {
            return Err(NotLeader {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            }
            .into());
        }
        Ok(())
    }

    fn after(&self, (): (), response: ResponseFuture) -> ResponseFuture {
        response
    }
}

/// A request that did not complete (response body included) within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request timed out after {0:?}")]
pub struct RequestTimeout(pub Duration);

/// Bounds every request but a watch by a deadline, response body included (the body is read
/// here, within the deadline). A hung call then fails like any other error and is retried with
/// its item's backoff, instead of holding a worker, the Event publisher or start-up for ever.
/// Watches are long by design; a silent one is restarted (`--watch-idle-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    timeout: Duration,
}

/// The layer of [`Deadline`].
pub type DeadlineLayer = StepLayer<Deadline>;

impl DeadlineLayer {
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        StepLayer(Deadline { timeout })
    }
}

fn is_watch<B>(request: &Request<B>) -> bool {
    protobuf::is_watch(request.uri())
}

impl Step for Deadline {
    /// Whether the request is a watch.
    type Seen = bool;

    fn before(&self, request: &mut Request<Body>) -> Result<bool, tower::BoxError> {
        Ok(is_watch(request))
    }

    fn after(&self, watch: bool, response: ResponseFuture) -> ResponseFuture {
        if watch {
            return response;
        }
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async {
                let (parts, body) = response.await?.into_parts();
                let bytes = body.collect().await?.to_bytes();
                Ok::<_, tower::BoxError>(Response::from_parts(parts, boxed_body(Full::new(bytes))))
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(RequestTimeout(timeout).into()))
        })
    }
}

/// Makes a streaming list a consistent read. kube's watcher asks for it from `resourceVersion=0`,
/// which the API server serves from its watch cache however far that lags behind etcd; without a
/// resource version (and `resourceVersionMatch=NotOlderThan`, which kube sends) the server first
/// brings its cache up to the current revision, as a list without a resource version does and as
/// client-go's streaming lists ask. An initial state older than what is in etcd could evict a pod
/// for a taint already removed.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsistentStream;

/// The layer of [`ConsistentStream`].
pub type ConsistentStreamLayer = StepLayer<ConsistentStream>;

impl Step for ConsistentStream {
    type Seen = ();

    fn before(&self, request: &mut Request<Body>) -> Result<(), tower::BoxError> {
        let uri = request.uri();
        let Some(query) = uri.query() else {
            return Ok(());
        };
        let pairs = query.split('&');
        if !pairs.clone().any(|p| p == "sendInitialEvents=true")
            || !pairs.clone().any(|p| p == "resourceVersion=0")
        {
            return Ok(());
        }
        let kept = pairs
            .filter(|p| *p != "resourceVersion=0")
            .collect::<Vec<_>>()
            .join("&");
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(format!("{}?{kept}", uri.path()).parse()?);
        *request.uri_mut() = http::Uri::from_parts(parts)?;
        Ok(())
    }

    fn after(&self, (): (), response: ResponseFuture) -> ResponseFuture {
        response
    }
}

/// When each watched resource's watch last received anything from the API server (its response,
/// an event, a bookmark, any bytes), by the resource's plural (the last segment of the watch
/// path). Fed by [`WatchProgressLayer`]; read by the watches to tell a silent watch from a quiet
/// one, since kube's watcher does not surface bookmarks.
#[derive(Clone, Debug, Default)]
pub struct WatchProgress {
    last: Arc<Mutex<HashMap<String, Instant>>>,
}

impl WatchProgress {
    /// When a watch of `resource` last received something, if ever.
    #[must_use]
    pub fn last(&self, resource: &str) -> Option<Instant> {
        self.lock().get(resource).copied()
    }

    /// A watch of `resource` received something now.
    pub fn touch(&self, resource: &str) {
        let now = Instant::now();
        let mut last = self.lock();
        match last.get_mut(resource) {
            Some(at) => *at = now,
            None => {
                last.insert(resource.to_owned(), now);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A map of instants cannot be left half-updated: a poisoned lock is still consistent.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The resource a watch request watches: the last segment of its path.
fn watched_resource<B>(request: &Request<B>) -> Option<String> {
    is_watch(request).then(|| {
        let path = request.uri().path().trim_end_matches('/');
        path.rsplit('/').next().unwrap_or(path).to_owned()
    })
}

/// The layer of [`WatchProgress`]: reports the response and every body frame of a watch to it.
/// It sits at the bottom of the stack, where every byte arrives.
pub type WatchProgressLayer = StepLayer<WatchProgress>;

impl WatchProgressLayer {
    #[must_use]
    pub fn new(progress: WatchProgress) -> Self {
        StepLayer(progress)
    }
}

impl Step for WatchProgress {
    /// The watched resource, for a watch.
    type Seen = Option<String>;

    fn before(&self, request: &mut Request<Body>) -> Result<Option<String>, tower::BoxError> {
        Ok(watched_resource(request))
    }

    fn after(&self, resource: Option<String>, response: ResponseFuture) -> ResponseFuture {
        let Some(resource) = resource else {
            return response;
        };
        let progress = self.clone();
        Box::pin(async move {
            let response = response.await?;
            progress.touch(&resource);
            Ok(response.map(|body| {
                body.map_frame(move |frame| {
                    progress.touch(&resource);
                    frame
                })
                .boxed_unsync()
            }))
        })
    }
}

/// Asks for pod lists and watches in protobuf and hands them up as compact JSON
/// ([`protobuf::to_json`], [`protobuf::WatchDecoder`]): at start-up in a large cluster the API
/// server's encoding of the pod list is most of the wait, protobuf is about three times cheaper
/// to encode and a quarter of the bytes, and only the fields the controller reads are decoded.
/// Every other request, and an answer in JSON, passes unchanged. Should a protobuf answer ever not
/// decode, it is logged, the request (or the watch stream, at that event) fails, so the watch
/// lists or watches again with backoff, and pods are read in JSON from then on.
#[derive(Clone, Debug, Default)]
pub struct PodProtobuf {
    /// Set once a protobuf answer did not decode.
    json_only: Arc<AtomicBool>,
}

/// The layer of [`PodProtobuf`].
pub type PodProtobufLayer = StepLayer<PodProtobuf>;

impl PodProtobufLayer {
    #[must_use]
    pub fn new() -> Self {
        StepLayer(PodProtobuf::default())
    }
}

/// A protobuf answer that did not decode.
#[derive(Debug, thiserror::Error)]
#[error("pods answered in protobuf: {0}; reading pods in JSON from now on")]
pub struct UndecodableProtobuf(#[source] protobuf::Error);

/// What [`PodProtobuf`] asked protobuf for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRead {
    /// Not a pod list or watch, or protobuf is off: the request is left alone.
    Untouched,
    List,
    Watch,
}

impl PodProtobuf {
    /// The error of an undecodable answer; pods are read in JSON from now on.
    fn undecodable(json_only: &AtomicBool, error: protobuf::Error) -> UndecodableProtobuf {
        json_only.store(true, Ordering::Relaxed);
        let error = UndecodableProtobuf(error);
        warn!(%error, "pod answer not decoded");
        error
    }
}

impl Step for PodProtobuf {
    type Seen = PodRead;

    fn before(&self, request: &mut Request<Body>) -> Result<PodRead, tower::BoxError> {
        let read = if self.json_only.load(Ordering::Relaxed) {
            PodRead::Untouched
        } else if protobuf::is_pod_list(request.method(), request.uri()) {
            PodRead::List
        } else if protobuf::is_pod_watch(request.method(), request.uri()) {
            PodRead::Watch
        } else {
            PodRead::Untouched
        };
        if read != PodRead::Untouched {
            request
                .headers_mut()
                .insert(header::ACCEPT, header::HeaderValue::from_static(protobuf::ACCEPT));
        }
        Ok(read)
    }

    fn after(&self, read: PodRead, response: ResponseFuture) -> ResponseFuture {
        if read == PodRead::Untouched {
            return response;
        }
        let json_only = Arc::clone(&self.json_only);
        Box::pin(async move {
            let response = response.await?;
            let is_protobuf = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(protobuf::MEDIA_TYPE));
            if !is_protobuf {
                return Ok(response);
            }
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            if read == PodRead::Watch && parts.status.is_success() {
                // A stream of events: converted as they come, never held whole. It ends after
                // an error: the watch then resumes (in JSON) from the last event it received,
                // rather than read on past an event it could not.
                parts.headers.remove(header::CONTENT_LENGTH);
                let mut decoder = protobuf::WatchDecoder::default();
                let events = body
                    .into_data_stream()
                    .scan(false, move |failed, chunk| {
                        if *failed {
                            return std::future::ready(None);
                        }
                        let lines = match chunk {
                            Ok(chunk) => decoder
                                .push(&chunk)
                                .map_err(|e| Self::undecodable(&json_only, e).into()),
                            Err(error) => Err(error),
                        };
                        *failed = lines.is_err();
                        std::future::ready(Some(lines))
                    })
                    .filter_map(|lines| {
                        std::future::ready(match lines {
                            Ok(lines) if lines.is_empty() => None,
                            Ok(lines) => Some(Ok(http_body::Frame::data(Bytes::from(lines)))),
                            Err(error) => Some(Err(error)),
                        })
                    });
                return Ok(Response::from_parts(parts, boxed_body(StreamBody::new(events))));
            }
            // A list, or an error answer (a `Status`) to a list or a watch.
            let bytes = body.collect().await?.to_bytes();
            let json = protobuf::to_json(&bytes).map_err(|e| Self::undecodable(&json_only, e))?;
            parts.headers.insert(header::CONTENT_LENGTH, json.len().into());
            Ok(Response::from_parts(
                parts,
                boxed_body(Full::new(Bytes::from(json))),
            ))
        })
    }
}

/// Makes the `Retry-After` header of a 429 answer visible in the error kube returns: its seconds
/// become the `Status`'s `details.retryAfterSeconds` (when the body is a `Status` without them),
/// and a body that is no `Status` at all (API priority and fairness and the max-in-flight filter
/// answer in plain text) is replaced by one with the text as message.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryAfter;

/// The layer of [`RetryAfter`].
pub type RetryAfterLayer = StepLayer<RetryAfter>;

impl RetryAfterLayer {
    #[must_use]
    pub fn new() -> Self {
        StepLayer(RetryAfter)
    }
}

impl Step for RetryAfter {
    type Seen = ();

    fn before(&self, _: &mut Request<Body>) -> Result<(), tower::BoxError> {
        Ok(())
    }

    fn after(&self, (): (), response: ResponseFuture) -> ResponseFuture {
        Box::pin(async move { with_retry_after(response.await?).await })
    }
}

async fn with_retry_after(
    response: Response<ResponseBody>,
) -> Result<Response<ResponseBody>, tower::BoxError> {
    let seconds = (response.status() == StatusCode::TOO_MANY_REQUESTS)
        .then(|| response.headers().get(header::RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let Some(seconds) = seconds else {
        return Ok(response);
    };
    let (mut parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let mut status = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) if value["kind"] == "Status" => value,
        _ => serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": String::from_utf8_lossy(&bytes).trim(),
            "reason": "TooManyRequests",
            "code": 429,
        }),
    };
    if !status["details"].is_object() {
        status["details"] = serde_json::json!({});
    }
    if status["details"]["retryAfterSeconds"]
        .as_u64()
        .unwrap_or_default()
        == 0
    {
        status["details"]["retryAfterSeconds"] = seconds.into();
    }
    let body = Bytes::from(serde_json::to_vec(&status)?);
    parts.headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, boxed_body(Full::new(body))))
}

/// A failed API request, told the way a person needs it (see [`explain_status`]). kube's error
/// text (a debug dump of the whole status) is not repeated.
#[derive(Debug)]
pub struct ApiError {
    /// The permission the request needed, e.g. `patch devicetaintrules.resource.k8s.io`.
    pub permission: String,
    /// The error as kube returned it.
    pub error: kube::Error,
}

impl ApiError {
    /// The error of a request that needed `permission`.
    #[must_use]
    pub fn new(permission: impl Into<String>, error: kube::Error) -> Self {
        Self {
            permission: permission.into(),
            error,
        }
    }

    /// The API status when the server answered with an error.
    #[must_use]
    pub fn status(&self) -> Option<&kube::core::Status> {
        match &self.error {
            kube::Error::Api(status) => Some(status),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status() {
            Some(status) => f.write_str(&explain_status(status, &self.permission)),
            None => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // An API status is fully told above; anything else (transport, decoding) is kube's to tell.
        match &self.error {
            kube::Error::Api(_) => None,
            other => Some(other),
        }
    }
}

/// An error status of the API server told to a person: what the status means (for a Forbidden
/// answer, that the request needed `permission`) and the server's own message. The one place that
/// puts an API error into words, for the controller's log and the commands' output alike.
#[must_use]
pub fn explain_status(status: &kube::core::Status, permission: &str) -> String {
    let message = &status.message;
    if status.is_forbidden() {
        format!("permission denied, this needs {permission}: {message}")
    } else if status.is_invalid() {
        format!("the API server rejected it as invalid: {message}")
    } else if status.is_not_found() {
        format!("not found: {message}")
    } else if status.is_conflict() {
        format!("conflict: {message}")
    } else {
        let reason = if status.reason.is_empty() {
            "error"
        } else {
            status.reason.as_str()
        };
        format!("{reason} (HTTP {}): {message}", status.code)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const KUBECONFIG: &str = r"
apiVersion: v1
kind: Config
current-context: one
clusters:
- name: c1
  cluster: {server: 'https://one.example:6443'}
- name: c2
  cluster: {server: 'https://two.example:6443'}
contexts:
- name: one
  context: {cluster: c1, user: u, namespace: ns-one}
- name: two
  context: {cluster: c2, user: u}
users:
- name: u
  user: {token: secret}
";

    fn args(kubeconfig: Option<PathBuf>, context: Option<&str>) -> ClientSettings {
        ClientSettings {
            kubeconfig,
            context: context.map(str::to_owned),
            qps: 5.0,
            burst: 10,
            timeout: Duration::from_secs(30),
        }
    }

    /// A kubeconfig written to the temp directory, removed again on drop.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write_temp(name: &str, content: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("dte-client-test-{}-{name}", std::process::id()));
        let mut file = std::fs::File::create(&path).expect("temp file");
        file.write_all(content.as_bytes()).expect("write");
        TempFile(path)
    }

    #[tokio::test]
    async fn explicit_kubeconfig_and_context() {
        let file = write_temp("kc-a", KUBECONFIG);
        let path = file.0.clone();
        let config = load_config(&args(Some(path.clone()), None))
            .await
            .expect("config");
        assert_eq!(config.cluster_url.host(), Some("one.example"));
        assert_eq!(config.default_namespace, "ns-one");
        assert!(!config.default_retry, "kube's hidden retry must be off");

        let config = load_config(&args(Some(path), Some("two"))).await.expect("config");
        assert_eq!(config.cluster_url.host(), Some("two.example"));
        assert_eq!(config.default_namespace, "default");
    }

    #[tokio::test]
    async fn unknown_context_and_missing_file_are_errors() {
        let file = write_temp("kc-b", KUBECONFIG);
        let path = file.0.clone();
        let err = load_config(&args(Some(path), Some("nope")))
            .await
            .expect_err("no such context");
        assert!(matches!(err, Error::LoadKubeconfig(_)), "{err:?}");
        let err = load_config(&args(Some(PathBuf::from("/nonexistent/kubeconfig")), None))
            .await
            .expect_err("missing file");
        assert!(matches!(err, Error::ReadKubeconfig(_)), "{err:?}");
    }

    #[tokio::test]
    async fn several_paths_are_merged() {
        let first = write_temp("kc-c", KUBECONFIG);
        let second = write_temp(
            "kc-d",
            r"
apiVersion: v1
kind: Config
clusters:
- name: c3
  cluster: {server: 'https://three.example:6443'}
contexts:
- name: three
  context: {cluster: c3, user: u}
users: []
",
        );
        let joined = std::env::join_paths([&first.0, &second.0]).expect("join");
        let config = load_config(&args(Some(PathBuf::from(joined)), Some("three")))
            .await
            .expect("merged config");
        assert_eq!(config.cluster_url.host(), Some("three.example"));
    }

    /// A local API server that answers every request with 503 and counts them.
    async fn unavailable_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","code":503}"#,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, hits)
    }

    async fn get_pod(client: Client) -> Result<k8s_openapi::api::core::v1::Pod, kube::Error> {
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "default")
            .get("p")
            .await
    }

    /// Writes leave only while leading, checked when they are sent: a write that waited for a
    /// token while leadership was lost is never sent; reads are not fenced.
    #[tokio::test(start_paused = true)]
    async fn writes_are_fenced_by_leadership_after_the_throttle() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use tower::Layer as _;
        let sent = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let service = tower::service_fn(move |_: Request<Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(200)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(
                            br#"{"kind":"Status","apiVersion":"v1","status":"Success","code":200}"#.to_vec(),
                        ))
                        .expect("response"),
                )
            }
        });
        let (leading, leader) = watch::channel(true);
        // One token per second, none saved: the second request waits a second for its token.
        let stack = ThrottleLayer::new(TokenBucket::new(1.0, 1))
            .layer(RetryAfterLayer::new().layer(FenceLayer::new(leader).layer(boxed(service))));
        let client = Client::new(stack, "default");
        let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "ns");
        let delete = move || {
            let pods = pods.clone();
            async move { pods.delete("p", &kube::api::DeleteParams::default()).await }
        };

        assert!(delete().await.is_ok(), "a leader writes");
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        let queued = tokio::spawn(delete());
        tokio::task::yield_now().await;
        leading.send_replace(false);
        let error = queued.await.expect("join").expect_err("fenced");
        assert!(is_not_leader(&error), "{error:?}");
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "the queued DELETE was sent after losing the lead"
        );
        assert!(
            get_pod(client.clone()).await.is_err(),
            "the GET reached the server (no pod body)"
        );
        assert_eq!(sent.load(Ordering::SeqCst), 2, "reads are not fenced");
    }

    /// A streaming list loses kube's `resourceVersion=0` (a read from a possibly lagging cache)
    /// and keeps everything else; other lists and watches are untouched.
    #[test]
    fn streaming_lists_are_consistent_reads() {
        let amended = |uri: &str| {
            let mut request = Request::get(uri).body(Body::empty()).expect("request");
            ConsistentStream.before(&mut request).expect("sent");
            request.uri().to_string()
        };
        assert_eq!(
            amended(
                "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
            ),
            "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        );
        for untouched in [
            "/api/v1/pods?&watch=true&allowWatchBookmarks=true&resourceVersion=0",
            "/api/v1/pods?&watch=true&sendInitialEvents=true&resourceVersion=120",
            "/api/v1/pods?limit=500&resourceVersion=0",
            "/api/v1/pods",
        ] {
            assert_eq!(amended(untouched), untouched);
        }
    }

    /// A request whose answer (headers or body) does not come within the deadline fails with
    /// [`RequestTimeout`]; a watch is not bounded.
    #[tokio::test(start_paused = true)]
    async fn requests_but_watches_have_a_deadline() {
        use tower::Layer as _;
        let service = tower::service_fn(|request: Request<Body>| async move {
            if is_watch(&request) {
                // A quiet watch: headers at once, then nothing for an hour.
                let body = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"")))
                });
                let body = http_body_util::StreamBody::new(body);
                return Ok::<_, std::convert::Infallible>(Response::new(body.boxed_unsync()));
            }
            std::future::pending::<()>().await;
            unreachable!()
        });
        let deadline = DeadlineLayer::new(Duration::from_secs(30));
        let stack = deadline.layer(boxed(service));
        let start = tokio::time::Instant::now();
        let get = Request::get("/api/v1/namespaces/ns/pods/p")
            .body(Body::empty())
            .expect("request");
        let error = tokio::time::timeout(
            Duration::from_secs(60),
            tower::ServiceExt::oneshot(deadline.layer(boxed(service)), get),
        )
        .await
        .expect("the GET ends within its deadline")
        .expect_err("a hung GET times out");
        assert!(error.is::<RequestTimeout>(), "{error:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        let watch = Request::get("/api/v1/pods?watch=true&timeoutSeconds=290")
            .body(Body::empty())
            .expect("request");
        let response = tower::ServiceExt::oneshot(stack, watch)
            .await
            .expect("a watch is answered");
        let body = tokio::time::timeout(Duration::from_secs(600), response.into_body().collect()).await;
        assert!(body.is_err(), "the watch body is not cut by the deadline");
    }

    /// Pod lists are asked for in protobuf and read as JSON; other requests are left alone; a
    /// JSON answer passes; a protobuf answer that does not decode fails the list, and pods are
    /// listed in JSON from then on.
    #[tokio::test]
    async fn pod_lists_travel_in_protobuf() {
        use tower::Layer as _;

        use crate::k8s::WatchedPod;
        /// What the scripted server answers a pod list with.
        #[derive(Clone, Copy, Debug)]
        enum Answer {
            Protobuf,
            Json,
            Garbage,
        }
        let answer = Arc::new(Mutex::new(Answer::Protobuf));
        let accepts = Arc::new(Mutex::new(Vec::<String>::new()));
        let (answering, seen) = (answer.clone(), accepts.clone());
        let service = tower::service_fn(move |request: Request<Body>| {
            let accept = record_accept(&request, &seen);
            let asked_protobuf = accept.starts_with(protobuf::MEDIA_TYPE);
            let list = request.uri().path().ends_with("/pods");
            let (content_type, body) = match (*answering.lock().expect("lock"), list) {
                (Answer::Protobuf, true) if asked_protobuf => (
                    protobuf::MEDIA_TYPE,
                    protobuf::testing::pod_list("ns", &["a", "b"]),
                ),
                (Answer::Garbage, true) if asked_protobuf => {
                    (protobuf::MEDIA_TYPE, b"k8s\0\x0a\xff".to_vec())
                }
                (_, true) => (
                    "application/json",
                    br#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"9"},
                         "items":[{"metadata":{"name":"c","namespace":"ns","uid":"u-c"}}]}"#
                        .to_vec(),
                ),
                (_, false) => (
                    "application/json",
                    br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"ns","uid":"uid-a"}}"#
                        .to_vec(),
                ),
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(200)
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Body::from(body))
                        .expect("response"),
                )
            }
        });
        let client = Client::new(PodProtobufLayer::new().layer(boxed(service)), "default");
        let pods = kube::Api::<WatchedPod>::namespaced(client, "ns");
        let names = |list: kube::core::ObjectList<WatchedPod>| {
            list.items
                .into_iter()
                .map(|p| p.metadata.name.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let params = kube::api::ListParams::default();

        let listed = pods.list(&params).await.expect("a protobuf list");
        assert_eq!(names(listed), ["a", "b"]);
        let got = pods.get("a").await.expect("a JSON pod");
        assert_eq!(got.metadata.uid.as_deref(), Some("uid-a"));
        *answer.lock().expect("lock") = Answer::Json;
        assert_eq!(names(pods.list(&params).await.expect("a JSON list")), ["c"]);
        {
            let accepts = accepts.lock().expect("lock");
            assert!(accepts[0].starts_with(protobuf::MEDIA_TYPE), "{accepts:?}");
            assert!(!accepts[1].contains("protobuf"), "a GET of one pod: {accepts:?}");
            assert!(accepts[2].starts_with(protobuf::MEDIA_TYPE), "{accepts:?}");
        }

        *answer.lock().expect("lock") = Answer::Garbage;
        let error = pods.list(&params).await.expect_err("undecodable");
        assert!(format!("{error:?}").contains("UndecodableProtobuf"), "{error:?}");
        *answer.lock().expect("lock") = Answer::Protobuf;
        assert_eq!(
            names(pods.list(&params).await.expect("a JSON list")),
            ["c"],
            "pods are listed in JSON once protobuf failed"
        );
        let accepts = accepts.lock().expect("lock");
        assert!(!accepts[4].contains("protobuf"), "{accepts:?}");
    }

    /// The `Accept` header of `request`, also added to `seen`.
    fn record_accept(request: &Request<Body>, seen: &Mutex<Vec<String>>) -> String {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        seen.lock().expect("lock").push(accept.clone());
        accept
    }

    /// What the scripted server of [`pod_watches_travel_in_protobuf`] answers a pod watch asked
    /// in protobuf with.
    #[derive(Clone, Copy, Debug)]
    enum WatchAnswer {
        Events,
        Forbidden,
        Garbage,
    }

    /// The answer to a pod watch: `answer` in protobuf (frames cut into chunks of 7 bytes) when
    /// `accept` asks for it, else one JSON event of pod `json`.
    fn watch_answer(accept: &str, answer: WatchAnswer) -> Response<ResponseBody> {
        let response = Response::builder().status(200);
        if !accept.starts_with(protobuf::MEDIA_TYPE) {
            let json =
                br#"{"type":"ADDED","object":{"metadata":{"name":"json","namespace":"ns","uid":"u-j"}}}
"#;
            return response
                .header(header::CONTENT_TYPE, "application/json")
                .body(boxed_body(Full::new(Bytes::from_static(json))))
                .expect("response");
        }
        let frames = match answer {
            WatchAnswer::Events => [
                protobuf::testing::pod_event("ADDED", "ns", "a"),
                protobuf::testing::pod_event("MODIFIED", "ns", "a"),
                protobuf::testing::pod_event("DELETED", "ns", "a"),
            ]
            .concat(),
            WatchAnswer::Forbidden => {
                return response
                    .status(403)
                    .header(header::CONTENT_TYPE, protobuf::MEDIA_TYPE)
                    .body(boxed_body(Full::new(Bytes::from(protobuf::testing::status(
                        403,
                        "Forbidden",
                    )))))
                    .expect("response");
            }
            WatchAnswer::Garbage => [
                protobuf::testing::pod_event("ADDED", "ns", "a"),
                vec![0, 0, 0, 2, 0x0a, 0xff],
                protobuf::testing::pod_event("DELETED", "ns", "a"),
            ]
            .concat(),
        };
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = frames
            .chunks(7)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        response
            .header(
                header::CONTENT_TYPE,
                "application/vnd.kubernetes.protobuf;stream=watch",
            )
            .body(boxed_body(StreamBody::new(futures::stream::iter(chunks))))
            .expect("response")
    }

    /// Pod watches are asked for in protobuf and read as JSON events, however the frames are cut
    /// into chunks; an error answer to a watch is a `Status`; an undecodable event ends the watch
    /// with an error, and pods are watched in JSON from then on.
    #[tokio::test]
    async fn pod_watches_travel_in_protobuf() {
        use futures::TryStreamExt as _;
        use kube::core::WatchEvent;
        use tower::Layer as _;

        use crate::k8s::WatchedPod;
        use WatchAnswer as Answer;
        let answer = Arc::new(Mutex::new(Answer::Events));
        let accepts = Arc::new(Mutex::new(Vec::<String>::new()));
        let (answering, seen) = (answer.clone(), accepts.clone());
        let service = tower::service_fn(move |request: Request<Body>| {
            let accept = record_accept(&request, &seen);
            let answer = *answering.lock().expect("lock");
            std::future::ready(Ok::<_, std::convert::Infallible>(watch_answer(&accept, answer)))
        });
        let client = Client::new(PodProtobufLayer::new().layer(boxed(service.clone())), "default");
        let pods = kube::Api::<WatchedPod>::namespaced(client, "ns");
        let params = kube::api::WatchParams::default();
        let events = |stream: Vec<WatchEvent<WatchedPod>>| {
            stream
                .into_iter()
                .map(|e| match e {
                    WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.unwrap_or_default()),
                    WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.name.unwrap_or_default()),
                    WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.name.unwrap_or_default()),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };

        let stream = pods.watch(&params, "5").await.expect("a protobuf watch");
        let got: Vec<_> = stream.try_collect().await.expect("decoded events");
        assert_eq!(
            got.iter()
                .filter(|e| matches!(e, WatchEvent::Added(p) if p.spec.is_some()))
                .count(),
            1
        );
        assert_eq!(events(got), ["ADDED a", "MODIFIED a", "DELETED a"]);

        *answer.lock().expect("lock") = Answer::Forbidden;
        let error = pods.watch(&params, "5").await.err().expect("refused");
        assert!(
            matches!(&error, kube::Error::Api(status) if status.code == 403),
            "the error answer reads as its Status: {error:?}"
        );

        *answer.lock().expect("lock") = Answer::Garbage;
        let mut stream = pods.watch(&params, "5").await.expect("a protobuf watch").boxed();
        assert!(matches!(stream.try_next().await, Ok(Some(WatchEvent::Added(_)))));
        let error = stream.try_next().await.expect_err("an undecodable event");
        assert!(format!("{error:?}").contains("UndecodableProtobuf"), "{error:?}");
        assert!(
            matches!(stream.try_next().await, Ok(None)),
            "the watch ends after the undecodable event"
        );
        // The body itself ends there, the event after the undecodable one unread.
        let request = Request::get("/api/v1/namespaces/ns/pods?watch=true")
            .body(Body::empty())
            .expect("request");
        let response = PodProtobufLayer::new()
            .layer(boxed(service))
            .oneshot(request)
            .await
            .expect("a protobuf watch");
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.map(|f| f.into_data().expect("data")));
        }
        assert_eq!(frames.len(), 2, "the first event, then the error: {frames:?}");
        assert!(
            frames[0]
                .as_ref()
                .is_ok_and(|d| d.starts_with(b"{\"type\":\"ADDED\""))
        );
        assert!(frames[1].is_err());
        *answer.lock().expect("lock") = Answer::Events;
        let got: Vec<_> = pods
            .watch(&params, "5")
            .await
            .expect("a JSON watch")
            .try_collect()
            .await
            .expect("events");
        assert_eq!(
            events(got),
            ["ADDED json"],
            "pods are watched in JSON once protobuf failed"
        );
        let accepts = accepts.lock().expect("lock");
        assert_eq!(accepts.len(), 5);
        assert!(
            accepts[..4].iter().all(|a| a.starts_with(protobuf::MEDIA_TYPE)),
            "{accepts:?}"
        );
        assert!(!accepts[4].contains("protobuf"), "{accepts:?}");
    }

    /// The API clients' connections carry TCP keepalive (kube's connector sets none).
    #[tokio::test]
    async fn api_connections_use_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Config::new(format!("https://{addr}").parse().expect("url"));
        let mut connector = http_connector(&config);
        let uri: http::Uri = format!("http://{addr}").parse().expect("uri");
        let io = tower::ServiceExt::oneshot(&mut connector, uri)
            .await
            .expect("connect");
        let socket = socket2::SockRef::from(io.inner());
        assert!(socket.keepalive().expect("SO_KEEPALIVE"), "keepalive is on");
        assert_eq!(socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            KEEPALIVE_RETRIES
        );
    }

    #[tokio::test]
    async fn a_503_is_not_retried_inside_the_client() {
        use std::sync::atomic::Ordering;
        let (url, hits) = unavailable_server().await;
        let mut config = Config::new(url.parse().expect("url"));
        config.default_retry = true;
        let client = client_from_config(
            config.clone(),
            TokenBucket::new(100.0, 10),
            Duration::from_secs(30),
            &WatchProgress::default(),
        )
        .expect("client");
        let err = get_pod(client).await.expect_err("503");
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 503), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "exactly one request for one call");

        // The same configuration with kube's default stack retries on its own: what we avoid.
        hits.store(0, Ordering::SeqCst);
        let retrying = ClientBuilder::try_from(config).expect("builder").build();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), get_pod(retrying)).await;
        assert!(
            hits.load(Ordering::SeqCst) > 1,
            "kube's default retry would resend"
        );
    }

    fn api_error(code: u16, reason: &str, message: &str) -> ApiError {
        ApiError::new(
            "patch devicetaintrules.resource.k8s.io",
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: message.into(),
                ..kube::core::Status::default()
            })),
        )
    }

    #[test]
    fn forbidden_names_the_permission() {
        let e = api_error(
            403,
            "Forbidden",
            "User \"bob\" cannot patch resource \"devicetaintrules\"",
        );
        assert_eq!(
            e.to_string(),
            "permission denied, this needs patch devicetaintrules.resource.k8s.io: User \"bob\" cannot patch \
             resource \"devicetaintrules\""
        );
        assert!(std::error::Error::source(&e).is_none(), "the status is told once");
    }

    #[test]
    fn other_statuses() {
        assert_eq!(
            api_error(422, "Invalid", "spec.taint.key: Required value").to_string(),
            "the API server rejected it as invalid: spec.taint.key: Required value"
        );
        assert_eq!(
            api_error(404, "NotFound", "x not found").to_string(),
            "not found: x not found"
        );
        assert_eq!(
            api_error(409, "Conflict", "owned by kubectl").to_string(),
            "conflict: owned by kubectl"
        );
        assert_eq!(
            api_error(500, "InternalError", "boom").to_string(),
            "InternalError (HTTP 500): boom"
        );
        assert_eq!(api_error(503, "", "later").to_string(), "error (HTTP 503): later");
    }

    #[test]
    fn transport_errors_keep_their_cause() {
        let e = ApiError::new("get pods", kube::Error::LinesCodecMaxLineLengthExceeded);
        assert_eq!(e.to_string(), "request failed");
        assert!(std::error::Error::source(&e).is_some());
    }
}
