//! Phase 6, forward: the request to an endpoint, within the route's
//! timeout, retried as its retry policy says (Istio's default when the
//! route has none: 2 retries on connect-failure, refused-stream,
//! unavailable, cancelled and retriable-status-codes, 503). Each attempt
//! balances afresh. A request body is only replayed if it was kept: bodies
//! of a declared length up to [`MAX_REPLAY_BYTES`] are; longer or
//! unbounded ones (streams) are sent once, never retried.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use mesh::config::routing::{Mirror, RetryPolicy};

use super::balance::{self, Destination, Endpoint};
use super::body::{self, Body};
use super::detect::Protocol;
use super::log::Exchange;
use super::respond::Failure;
use super::{Context, Downstream, mirror};
use crate::state::RouteTable;

/// Request bodies up to this size, with a declared length, are kept so
/// that a retry can send them again.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
#[cfg(test)]
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Envoy's retry conditions, as Istio's `retryOn` names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    five_xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    status_codes: Vec<u16>,
    /// gRPC statuses (in `grpc-status`) that are retried.
    grpc: Vec<u32>,
}

impl RetryOn {
    fn parse(tokens: &[String]) -> Self {
        let mut on = Self::default();
        for token in tokens.iter().flat_map(|t| t.split(',')).map(str::trim) {
            match token {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                code => on.status_codes.extend(code.parse::<u16>().ok()),
            }
        }
        on
    }

    /// Istio's default `retryOn`, with 503 as its retriable status code.
    fn istio_default() -> Self {
        let mut on =
            Self::parse(&["connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()]);
        on.status_codes.push(503);
        on
    }

    fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let code = status.as_u16();
        let grpc = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
        (self.five_xx && code >= 500)
            || (self.gateway_error && (502..=504).contains(&code))
            || (self.retriable_4xx && code == 409)
            || self.status_codes.contains(&code)
            || grpc.is_some_and(|g| self.grpc.contains(&g))
    }

    fn retries_failure(&self, failure: &AttemptFailure) -> bool {
        match failure {
            AttemptFailure::Connect { denied: true, .. } => false,
            AttemptFailure::Connect { .. } => self.connect_failure || self.five_xx || self.gateway_error,
            AttemptFailure::Refused => self.refused_stream || self.five_xx,
            AttemptFailure::Reset(_) => self.reset || self.five_xx,
            AttemptFailure::Timeout => self.five_xx || self.gateway_error || self.reset,
        }
    }
}

/// How one route forwards: its timeout and retries.
#[derive(Clone, Debug)]
pub struct Plan {
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// The least wait before a retry.
    pub backoff: Duration,
}

impl Plan {
    /// The plan for a route's `timeout` and `retries`; Istio's defaults
    /// where it sets none (no timeout; 2 retries). `retries` with no
    /// `retryOn` gets Istio's default conditions.
    pub fn new(timeout: Option<Duration>, retries: Option<&RetryPolicy>) -> Self {
        match retries {
            None => Self {
                timeout,
                retries: 2,
                per_try_timeout: None,
                retry_on: RetryOn::istio_default(),
                backoff: BACKOFF_BASE,
            },
            Some(policy) => Self {
                timeout,
                retries: policy.attempts,
                per_try_timeout: policy.per_try_timeout,
                retry_on: if policy.retry_on.is_empty() {
                    RetryOn::istio_default()
                } else {
                    RetryOn::parse(&policy.retry_on)
                },
                backoff: policy.backoff.unwrap_or(BACKOFF_BASE),
            },
        }
    }
}

/// Why one attempt failed before a response arrived.
#[derive(Debug)]
pub(super) enum AttemptFailure {
    Connect { reason: String, denied: bool },
    Refused,
    Reset(String),
    Timeout,
}

impl AttemptFailure {
    fn into_failure(self) -> Failure {
        match self {
            Self::Connect { reason, .. } => Failure::UpstreamConnect(reason),
            Self::Refused => Failure::UpstreamReset("refused stream".into()),
            Self::Reset(reason) => Failure::UpstreamReset(reason),
            Self::Timeout => Failure::Timeout,
        }
    }

    fn of(error: &hyper::Error) -> Self {
        let refused = std::error::Error::source(error)
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM));
        if refused { Self::Refused } else { Self::Reset(error.to_string()) }
    }
}

/// A request body, kept for replay or sent once.
enum RequestBody {
    Kept(Bytes),
    Once(Option<Incoming>),
}

impl RequestBody {
    /// Keeps `body` if it is empty or declares a small enough length.
    async fn new(body: Incoming) -> Result<Self, Failure> {
        if body.is_end_stream() {
            return Ok(Self::Kept(Bytes::new()));
        }
        match body.size_hint().exact() {
            Some(length) if length <= MAX_REPLAY_BYTES => {
                let collected = body.collect().await.map_err(|e| Failure::DownstreamBody(e.to_string()))?;
                Ok(Self::Kept(collected.to_bytes()))
            }
            _ => Ok(Self::Once(Some(body))),
        }
    }

    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Kept(bytes) => Some(body::full(bytes.clone())),
            Self::Once(body) => body.take().map(body::boxed),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Kept(_))
    }

    /// The body, when it was kept.
    fn kept(&self) -> Option<&Bytes> {
        match self {
            Self::Kept(bytes) => Some(bytes),
            Self::Once(_) => None,
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Kept(bytes) => bytes.len() as u64,
            Self::Once(_) => 0,
        }
    }
}

/// Everything an attempt needs besides the endpoint.
pub struct Forward<'a> {
    pub ctx: &'a Arc<Context>,
    pub table: &'a RouteTable,
    pub downstream: &'a Arc<Downstream>,
    pub destination: Destination<'a>,
    pub protocol: Protocol,
    pub plan: Plan,
    /// Where copies of the request go.
    pub mirrors: &'a [Mirror],
}

impl Forward<'_> {
    /// Sends `parts` with `body`, retrying as planned, within the timeout.
    pub async fn send(self, parts: Parts, body: Incoming, exchange: &mut Exchange) -> Result<Response<Body>, Failure> {
        let timeout = self.plan.timeout;
        let attempts = self.attempts(parts, body, exchange);
        match timeout {
            Some(limit) => tokio::time::timeout(limit, attempts).await.unwrap_or(Err(Failure::Timeout)),
            None => attempts.await,
        }
    }

    async fn attempts(&self, parts: Parts, body: Incoming, exchange: &mut Exchange) -> Result<Response<Body>, Failure> {
        let mut body = RequestBody::new(body).await?;
        exchange.request_bytes = body.len();
        if !self.mirrors.is_empty() {
            mirror::send(self.ctx, self.downstream, self.protocol, self.mirrors, &parts, body.kept());
        }
        let mut attempt = 0;
        loop {
            let endpoint = balance::pick(
                self.table,
                &self.ctx.balancers,
                &self.downstream.target,
                &self.destination,
                &self.ctx.identity.trust_domain,
            )?;
            exchange.endpoint = Some(endpoint.addr);
            exchange.destination = Some(endpoint.peer.clone());
            exchange.attempts = attempt + 1;
            let Some(request_body) = body.take() else {
                return Err(Failure::UpstreamReset("body already sent".into()));
            };
            let request = Request::from_parts(clone_parts(&parts), request_body);
            let last = attempt >= self.plan.retries || !body.replayable();
            let outcome = self.attempt(&endpoint, request).await;
            match outcome {
                Ok(response) if last || !self.plan.retry_on.retries_response(response.status(), response.headers()) => {
                    return Ok(response.map(body::boxed));
                }
                Err(failure) if last || !self.plan.retry_on.retries_failure(&failure) => {
                    return Err(failure.into_failure());
                }
                _ => {}
            }
            attempt += 1;
            tokio::time::sleep(backoff(self.plan.backoff, attempt)).await;
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, request: Request<Body>) -> Result<Response<Incoming>, AttemptFailure> {
        let _in_flight = self.ctx.balancers.start(endpoint.addr.ip());
        let send = send_once(self.ctx, endpoint, self.downstream.client_ip, self.protocol, request);
        match self.plan.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, send).await.unwrap_or(Err(AttemptFailure::Timeout)),
            None => send.await,
        }
    }
}

pub(super) async fn send_once(
    ctx: &Context,
    endpoint: &Endpoint,
    client: IpAddr,
    protocol: Protocol,
    request: Request<Body>,
) -> Result<Response<Incoming>, AttemptFailure> {
    let connect_failure =
        |e: super::upstream::ConnectError| AttemptFailure::Connect { reason: e.reason, denied: e.denied };
    if protocol == Protocol::Http2 {
        let mut sender = ctx.upstreams.http2(endpoint, client).await.map_err(connect_failure)?;
        sender.ready().await.map_err(|e| AttemptFailure::Reset(e.to_string()))?;
        return sender.send_request(request).await.map_err(|e| AttemptFailure::of(&e));
    }
    let mut sender = ctx.upstreams.http1(endpoint, client).await.map_err(connect_failure)?;
    sender.ready().await.map_err(|e| AttemptFailure::Reset(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| AttemptFailure::of(&e))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        ctx.upstreams.release_http1(endpoint.addr, client, sender);
    }
    Ok(response)
}

pub(super) fn clone_parts(parts: &Parts) -> Parts {
    let mut builder = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
    }
    let (mut cloned, ()) = builder.body(()).unwrap_or_default().into_parts();
    cloned.extensions = parts.extensions.clone();
    cloned
}

/// Envoy's: exponential from `base` (25 ms by default), at most ten times
/// that, jittered, but never under `base` (the Gateway API's minimum).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(8)).min(base.saturating_mul(10));
    base + (ceiling.saturating_sub(base)).mul_f64(rand::random_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_default_retries_503_and_connect_failures_only() {
        let plan = Plan::new(None, None);
        assert_eq!(plan.retries, 2);
        let on = &plan.retry_on;
        assert!(on.retries_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
        assert!(!on.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
        assert!(on.retries_failure(&AttemptFailure::Connect { reason: String::new(), denied: false }));
        assert!(!on.retries_failure(&AttemptFailure::Connect { reason: String::new(), denied: true }));
        assert!(on.retries_failure(&AttemptFailure::Refused));
        assert!(!on.retries_failure(&AttemptFailure::Reset(String::new())));
        let mut unavailable = HeaderMap::new();
        unavailable.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(on.retries_response(StatusCode::OK, &unavailable));
    }

    #[test]
    fn retry_on_tokens() {
        let policy = RetryPolicy { attempts: 3, retry_on: vec!["5xx,409".into()], ..Default::default() };
        let plan = Plan::new(Some(Duration::from_secs(1)), Some(&policy));
        assert_eq!(plan.retries, 3);
        assert!(plan.retry_on.retries_response(StatusCode::BAD_GATEWAY, &HeaderMap::new()));
        assert!(plan.retry_on.retries_response(StatusCode::CONFLICT, &HeaderMap::new()));
        assert!(!plan.retry_on.retries_response(StatusCode::NOT_FOUND, &HeaderMap::new()));
        assert!(plan.retry_on.retries_failure(&AttemptFailure::Timeout));
        let gateway = RetryOn::parse(&["gateway-error".into()]);
        assert!(!gateway.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
        assert!(gateway.retries_response(StatusCode::GATEWAY_TIMEOUT, &HeaderMap::new()));
    }

    #[test]
    fn backoff_stays_under_envoys_ceiling() {
        assert!((1..20).all(|attempt| backoff(BACKOFF_BASE, attempt) <= BACKOFF_MAX));
        let base = Duration::from_millis(100);
        assert!((1..20).all(|attempt| backoff(base, attempt) >= base), "never sooner than the route asks");
    }
}
