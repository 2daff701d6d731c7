//! Client-side pacing: a token bucket that delays callers, never rejects them.
//!
//! The same bucket serves two places: [`ThrottleLayer`] paces every request of the API client
//! (`--kube-api-qps` / `--kube-api-burst`, like client-go's QPS/burst), and the actuator can pace
//! evictions with [`TokenBucket::acquire`] (`--max-evictions-per-second`).
//!
//! The bucket works by reservation, as Go's `rate.Limiter.Wait` does: taking a token may drive the
//! balance negative, and the caller waits until its token would have been earned. Callers are thus
//! served in the order they asked, with no polling loop and no wake-up storms. Time is
//! `tokio::time`, so tests run on a paused clock.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The longest wait [`TokenBucket::reserve`] returns (about 30 years, still a valid deadline).
const MAX_WAIT: Duration = Duration::from_secs(1_000_000_000);

/// Shortfall of a token that [`TokenBucket::try_acquire`] still counts as a whole token.
const TOKEN_EPSILON: f64 = 1e-6;

/// A token bucket shared by clones: `qps` tokens per second, at most `burst` saved up.
#[derive(Clone)]
pub struct TokenBucket {
    /// `None` when unlimited: every reservation is granted at once.
    inner: Option<Arc<Bucket>>,
}

struct Bucket {
    qps: f64,
    burst: f64,
    /// Token balance and when it was last brought up to date; negative while callers wait.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A bucket that starts full. A `qps` of 0 (or any value that is not a positive finite number)
    /// means unlimited; a `burst` of 0 is treated as 1.
    #[must_use]
    pub fn new(qps: f64, burst: u32) -> Self {
        if !(qps.is_finite() && qps > 0.0) {
            return Self::unlimited();
        }
        let burst = f64::from(burst.max(1));
        Self {
            inner: Some(Arc::new(Bucket {
                qps,
                burst,
                state: Mutex::new((burst, Instant::now())),
            })),
        }
    }

    /// A bucket that never delays.
    #[must_use]
    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// Whether this bucket never delays.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.inner.is_none()
    }

    /// Take one token now and return how long the caller must wait before using it (zero when a
    /// token was available). The token is spent even if the caller then gives up.
    #[must_use]
    pub fn reserve(&self) -> Duration {
        let Some(bucket) = &self.inner else {
            return Duration::ZERO;
        };
        // The critical section cannot panic, but a poisoned lock still holds a consistent balance.
        let mut state = bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let earned = now.saturating_duration_since(*last).as_secs_f64() * bucket.qps;
        *tokens = (*tokens + earned).min(bucket.burst) - 1.0;
        *last = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            // A tiny `qps` makes the wait overflow a `Duration`: wait "for ever" instead.
            Duration::try_from_secs_f64(-*tokens / bucket.qps).unwrap_or(MAX_WAIT)
        }
    }

    /// Take one token if one is there now; otherwise take nothing and return how long until one
    /// is (never zero). Unlike [`reserve`](Self::reserve) the balance never goes negative, so a
    /// caller that does not come back costs nothing, and whoever asks first once the token is
    /// earned gets it.
    ///
    /// # Errors
    /// The wait until a token is earned, when none is there now.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let Some(bucket) = &self.inner else {
            return Ok(());
        };
        let mut state = bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let earned = now.saturating_duration_since(*last).as_secs_f64() * bucket.qps;
        *tokens = (*tokens + earned).min(bucket.burst);
        *last = now;
        // The tolerance absorbs rounding, so that a caller who comes back after exactly the
        // returned wait finds its token.
        if *tokens >= 1.0 - TOKEN_EPSILON {
            *tokens = (*tokens - 1.0).max(0.0);
            return Ok(());
        }
        let secs = (1.0 - *tokens) / bucket.qps;
        // Rounded up to whole microseconds, and never zero.
        let micros = (secs * 1e6).ceil().max(1.0);
        Err(Duration::try_from_secs_f64(micros / 1e6).map_or(MAX_WAIT, |wait| wait.min(MAX_WAIT)))
    }

    /// Wait for a token. Returns at once while the burst lasts.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("TokenBucket(unlimited)"),
            Some(b) => write!(f, "TokenBucket(qps: {}, burst: {})", b.qps, b.burst),
        }
    }
}

/// A tower layer that takes one token from a [`TokenBucket`] per request before sending it.
///
/// Requests wait for their token in `poll_ready`, so behind kube's request buffer they leave in the
/// order they were made. A watch is one request: it takes one token when it starts and none for
/// the events it streams afterwards.
#[derive(Clone, Debug)]
pub struct ThrottleLayer {
    bucket: TokenBucket,
}

impl ThrottleLayer {
    #[must_use]
    pub fn new(bucket: TokenBucket) -> Self {
        Self { bucket }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            reserved: false,
        }
    }
}

/// The service made by [`ThrottleLayer`].
pub struct Throttle<S> {
    inner: S,
    bucket: TokenBucket,
    /// The wait for the token reserved for the next call, while it lasts.
    wait: Option<Pin<Box<Sleep>>>,
    /// A token is reserved for the next `call` (readiness granted, not yet used).
    reserved: bool,
}

impl<S: Clone> Clone for Throttle<S> {
    fn clone(&self) -> Self {
        // A clone must earn its own token: the reservation belongs to this instance's next call.
        Self {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            wait: None,
            reserved: false,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Throttle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("bucket", &self.bucket)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Throttle<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.reserved {
            self.reserved = true;
            let wait = self.bucket.reserve();
            if !wait.is_zero() {
                self.wait = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        if let Some(wait) = &mut self.wait {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.reserved = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    fn elapsed_ms(start: Instant) -> u128 {
        start.elapsed().as_millis()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_passes_at_once_then_qps_spacing() {
        let bucket = TokenBucket::new(10.0, 3);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            bucket.acquire().await;
            at.push(elapsed_ms(start));
        }
        assert_eq!(at, [0, 0, 0, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_rate_waits_long_without_panicking() {
        for qps in [f64::MIN_POSITIVE, 1e-300, 1e-12] {
            let bucket = TokenBucket::new(qps, 1);
            assert_eq!(bucket.reserve(), Duration::ZERO, "{qps}: burst");
            let wait = bucket.reserve();
            assert!(wait >= Duration::from_secs(1_000_000_000), "{qps}: {wait:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_up_to_burst_only() {
        let bucket = TokenBucket::new(2.0, 2);
        for _ in 0..2 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::from_millis(500));
        // A second waiter queues behind the first: reservations are served in order.
        assert_eq!(bucket.reserve(), Duration::from_secs(1));
    }

    /// `try_acquire` takes a token only when one is there, says how long until the next, and a
    /// caller coming back after exactly that wait gets it.
    #[tokio::test(start_paused = true)]
    async fn try_acquire_never_goes_negative() {
        let bucket = TokenBucket::new(3.0, 2);
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Ok(()));
        let wait = bucket.try_acquire().expect_err("burst spent");
        assert_eq!(wait, Duration::from_micros(333_334));
        assert_eq!(bucket.try_acquire(), Err(wait), "a refusal costs nothing");
        tokio::time::advance(wait).await;
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert!(bucket.try_acquire().is_err());
        assert_eq!(TokenBucket::unlimited().try_acquire(), Ok(()));
        let tiny = TokenBucket::new(1e-300, 1);
        assert_eq!(tiny.try_acquire(), Ok(()));
        assert_eq!(tiny.try_acquire(), Err(MAX_WAIT));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_bucket() {
        let a = TokenBucket::new(1.0, 1);
        let b = a.clone();
        assert_eq!(a.reserve(), Duration::ZERO);
        assert_eq!(b.reserve(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_qps_is_unlimited() {
        for bucket in [
            TokenBucket::new(0.0, 5),
            TokenBucket::new(f64::NAN, 5),
            TokenBucket::unlimited(),
        ] {
            assert!(bucket.is_unlimited());
            for _ in 0..1000 {
                assert_eq!(bucket.reserve(), Duration::ZERO);
            }
        }
        assert!(!TokenBucket::new(0.5, 0).is_unlimited());
    }

    #[tokio::test(start_paused = true)]
    async fn layer_delays_requests_and_never_rejects() {
        let start = Instant::now();
        let svc = tower::service_fn(move |n: u32| async move { Ok::<_, Infallible>((n, elapsed_ms(start))) });
        let mut svc = ThrottleLayer::new(TokenBucket::new(4.0, 2)).layer(svc);
        let mut seen = Vec::new();
        for n in 0..5 {
            let (echo, at) = svc.ready().await.expect("ready").call(n).await.expect("response");
            assert_eq!(echo, n);
            seen.push(at);
        }
        assert_eq!(seen, [0, 0, 250, 500, 750]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_readiness_reserves_one_token() {
        let svc = tower::service_fn(|()| async { Ok::<_, Infallible>(()) });
        let bucket = TokenBucket::new(1.0, 1);
        let mut svc = ThrottleLayer::new(bucket.clone()).layer(svc);
        svc.ready().await.expect("ready");
        svc.ready().await.expect("ready again without a call");
        // Only the first readiness took a token, so the bucket owes exactly one second.
        assert_eq!(bucket.reserve(), Duration::from_secs(1));
    }
}
