//! An HTTP app for the L7 tests, bookinfo-style: every answer says which
//! pod (`server`) and version answered, and what it received. It speaks
//! HTTP/1.1 and HTTP/2 (prior knowledge). Behaviour is set per request:
//!
//! * `x-delay-ms: N`: answer after N ms;
//! * `x-fail-every: N`: every N-th request this pod gets is a 503;
//! * `x-status: S`: answer with status S;
//! * `x-stream-echo: 1`: stream the request body back as it arrives, then
//!   trailers `grpc-status: 0` and `x-trailer: end` (a streaming call);
//! * `upgrade: websocket`: 101, then every byte is echoed on the upgraded
//!   connection.
//!
//! The body echoes the request: `{"server","version","method","path",
//! "body_len","body_sha256","headers":{…}}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

use crate::netns::Netns;

/// What the app answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub server: String,
    pub version: String,
    pub method: String,
    pub path: String,
    pub body_len: usize,
    pub body_sha256: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A running app; stops when dropped.
#[derive(Debug)]
pub struct HttpApp {
    task: JoinHandle<()>,
    seen: Arc<Seen>,
}

/// Hosts kept in [`Seen`]; older ones are forgotten.
const RECENT_HOSTS: usize = 64;

/// What the app has received.
#[derive(Debug, Default)]
struct Seen {
    requests: AtomicU64,
    /// The `Host` (or `:authority`) of the latest requests, oldest first.
    hosts: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl HttpApp {
    pub fn start(netns: &Netns, addr: SocketAddr, server: &str, version: &str) -> anyhow::Result<Self> {
        let listener = netns.listen(addr)?;
        let seen = Arc::new(Seen::default());
        let identity = Arc::new((server.to_owned(), version.to_owned()));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (identity, counter) = (identity.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(identity.clone(), counter.clone(), request));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { task, seen })
    }

    /// Requests this pod has received.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// The hosts of the latest requests (up to 64), oldest first.
    pub fn recent_hosts(&self) -> Vec<String> {
        self.seen.hosts.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type AppBody = UnsyncBoxBody<Bytes, BoxError>;

async fn answer(
    identity: Arc<(String, String)>,
    seen: Arc<Seen>,
    mut request: hyper::Request<Incoming>,
) -> Result<hyper::Response<AppBody>, Infallible> {
    let nth = seen.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let host = request.uri().authority().map(ToString::to_string).or_else(|| {
        request.headers().get(hyper::header::HOST).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    });
    if let (Some(host), Ok(mut hosts)) = (host, seen.hosts.lock()) {
        if hosts.len() == RECENT_HOSTS {
            hosts.pop_front();
        }
        hosts.push_back(host);
    }
    if request.headers().get(hyper::header::UPGRADE).is_some_and(|v| v == "websocket") {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let mut response = hyper::Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(hyper::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        response.headers_mut().insert(hyper::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        return Ok(response);
    }
    if request.headers().contains_key("x-stream-echo") {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert("x-trailer", http::HeaderValue::from_static("end"));
        let body = request.into_body().map_err(BoxError::from).with_trailers(async move { Some(Ok(trailers)) });
        return Ok(hyper::Response::new(body.boxed_unsync()));
    }
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let (delay, fail_every, status) = (header("x-delay-ms"), header("x-fail-every"), header("x-status"));
    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
    // Repeated headers are joined with commas, as the Gateway API's echo
    // server shows them.
    let mut headers = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.to_string())
            .and_modify(|v| *v = format!("{v},{value}"))
            .or_insert_with(|| value.into_owned());
    }
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let failing = fail_every.is_some_and(|n| n > 0 && nth.is_multiple_of(n));
    let code = if failing { 503 } else { status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200) };
    let answer = Answer {
        server: identity.0.clone(),
        version: identity.1.clone(),
        method,
        path,
        body_len: body.len(),
        body_sha256: Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect(),
        headers,
    };
    let body = Full::new(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default()));
    let mut response = hyper::Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    Ok(response)
}

/// An HTTP/1.1 client on one keep-alive connection, opened from a pod.
#[derive(Debug)]
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

/// What one request got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// Parsed when the app answered; `None` for the waypoint's own answers.
    pub answer: Option<Answer>,
    pub body: String,
}

impl Client {
    pub async fn connect(netns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = netns.connect(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender, authority: addr.to_string() })
    }

    /// Sends one request: `method` `path` with `headers` and `body`; `Host`
    /// is the address connected to unless `headers` has one.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        let mut request = http::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            request = request.header(http::header::HOST, &self.authority);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::copy_from_slice(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Reply { status, headers, answer: serde_json::from_str(&body).ok(), body })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.send("GET", path, headers, b"").await
    }
}
