//! The agent's connection to the controller. Certificate requests share
//! one HTTP/2 connection (re-opened when it breaks), at most
//! [`MAX_CONCURRENT_SIGNS`] at a time, each under a deadline; the config
//! stream is a long-lived connection of its own, authenticated with the
//! agent's certificate, read line by line with a bound on a line's length.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyDataStream, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use tracing::debug;

use super::{CERTIFICATES_PATH, CONFIG_PATH, ResumeFrom, SignRequest, SignResponse, Update, controller_identity};
use crate::ca::{CaError, CertificateRequest, IssuedCertificate};
use crate::identity::Identity;
use crate::tcp::TcpOptions;
use crate::tls::{self, TrustBundle, WorkloadCertificate};

/// TCP, TLS and the HTTP/2 handshake with the controller, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request, from sending it to the end of its answer (the config
/// stream: to its response headers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Certificate requests in flight at once, whatever asks for them.
pub const MAX_CONCURRENT_SIGNS: usize = 4;
/// PINGs on every connection, so a vanished controller is noticed.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// A hostile or broken controller cannot make us buffer without bound: the
/// longest config-stream line (one full config) we accept.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the controller at {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("TLS with the controller failed: {0}")]
    Tls(String),
    #[error("HTTP/2 with the controller failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the controller answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("bad message from the controller: {0}")]
    Protocol(String),
    #[error("the controller did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where the controller is and how to prove who we are to it. Clones share
/// the certificate-request connection and its concurrency bound.
#[derive(Clone, Debug)]
pub struct ControlClient {
    /// `host:port`; a name is resolved on every connection (a Service's
    /// DNS name in Kubernetes).
    addr: String,
    trust: TrustBundle,
    /// The bearer credential that says which node we are.
    credential: String,
    node: String,
    signing: Arc<Signing>,
}

/// The shared connection for certificate requests, and their bound.
#[derive(Debug)]
struct Signing {
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
    permits: Semaphore,
}

impl ControlClient {
    pub fn new(addr: impl Into<String>, trust: TrustBundle, credential: String, node: String) -> Self {
        let signing = Signing { connection: Mutex::new(None), permits: Semaphore::new(MAX_CONCURRENT_SIGNS) };
        Self { addr: addr.into(), trust, credential: credential.trim().to_owned(), node, signing: Arc::new(signing) }
    }

    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    async fn connect(&self, cert: Option<&WorkloadCertificate>) -> Result<SendRequest<Full<Bytes>>, ControlError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now(cert)).await {
            Ok(result) => result,
            Err(_) => Err(ControlError::Timeout(CONNECT_TIMEOUT)),
        }
    }

    async fn connect_now(&self, cert: Option<&WorkloadCertificate>) -> Result<SendRequest<Full<Bytes>>, ControlError> {
        let expected = vec![controller_identity(self.trust.trust_domain())];
        let config =
            tls::control_client_config(cert, &self.trust, expected).map_err(|e| ControlError::Tls(e.to_string()))?;
        let connect_error = |cause| ControlError::Connect { addr: self.addr.clone(), cause };
        let tcp = TcpStream::connect(self.addr.as_str()).await.map_err(connect_error)?;
        TcpOptions::default().apply(&tcp).map_err(connect_error)?;
        let peer: SocketAddr = tcp.peer_addr().map_err(connect_error)?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(tls::server_name(peer.ip()), tcp)
            .await
            .map_err(|e| ControlError::Tls(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "control connection ended");
            }
        });
        Ok(sender)
    }

    /// The shared certificate-request connection, opened if there is none
    /// or the last one closed.
    async fn signing_connection(&self) -> Result<SendRequest<Full<Bytes>>, ControlError> {
        let mut connection = self.signing.connection.lock().await;
        if let Some(sender) = connection.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = self.connect(None).await?;
        *connection = Some(sender.clone());
        Ok(sender)
    }

    fn request(&self, method: Method, path_and_query: &str, body: Bytes) -> Result<Request<Full<Bytes>>, ControlError> {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path_and_query}", self.addr))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.credential))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// Asks the controller to sign a CSR.
    pub async fn sign(&self, request: &SignRequest) -> Result<SignResponse, ControlError> {
        let body = serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
        let _permit = self.signing.permits.acquire().await.map_err(|_| ControlError::Timeout(REQUEST_TIMEOUT))?;
        let exchange = async {
            let mut sender = self.signing_connection().await?;
            sender.ready().await?;
            let response = sender.send_request(self.request(Method::POST, CERTIFICATES_PATH, body.into())?).await?;
            let response = check_status(response).await?;
            Ok::<_, ControlError>(response.into_body().collect().await?.to_bytes())
        };
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(body) => body?,
            Err(_) => return Err(ControlError::Timeout(REQUEST_TIMEOUT)),
        };
        serde_json::from_slice(&body).map_err(|e| ControlError::Protocol(format!("certificate response: {e}")))
    }

    /// A fresh key and certificate for `identity`, signed by the controller.
    pub async fn certificate(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCertificate, CaError> {
        let request = CertificateRequest::new(identity)?;
        let issued = issue(self, request.csr_pem.clone(), identity, ttl).await?;
        WorkloadCertificate::new(identity.clone(), request, issued)
    }

    /// Opens the config stream as `cert` (the agent's own certificate).
    pub async fn config_stream(
        &self,
        cert: &WorkloadCertificate,
        since: Option<&ResumeFrom>,
    ) -> Result<UpdateStream, ControlError> {
        let mut query = format!("{CONFIG_PATH}?node={}", self.node);
        if let Some(since) = since {
            query.push_str(&format!("&since={}", since.to_query()));
        }
        let mut sender = self.connect(Some(cert)).await?;
        let request = self.request(Method::GET, &query, Bytes::new())?;
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request)).await {
            Ok(response) => check_status(response?).await?,
            Err(_) => return Err(ControlError::Timeout(REQUEST_TIMEOUT)),
        };
        Ok(UpdateStream::new(response.into_body(), sender))
    }
}

/// Signs through the controller, mapping its answers to CA errors.
pub(super) async fn issue(
    client: &ControlClient,
    csr: String,
    identity: &Identity,
    ttl: Duration,
) -> Result<IssuedCertificate, CaError> {
    let request = SignRequest { identity: identity.to_string(), csr, ttl_seconds: ttl.as_secs().max(1) };
    let response = client.sign(&request).await.map_err(|error| match error {
        ControlError::Status { status, message } if status == StatusCode::FORBIDDEN => {
            CaError::IdentityMismatch { requested: identity.to_string(), allowed: message }
        }
        other => CaError::Unavailable(other.to_string()),
    })?;
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    Ok(IssuedCertificate {
        cert_pem: response.certificate,
        not_before: at(response.not_before_unix),
        not_after: at(response.not_after_unix),
    })
}

async fn check_status(response: http::Response<Incoming>) -> Result<http::Response<Incoming>, ControlError> {
    if response.status() == StatusCode::OK {
        return Ok(response);
    }
    let status = response.status();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let message = String::from_utf8_lossy(&body[..body.len().min(1024)]).trim().to_owned();
    Err(ControlError::Status { status, message })
}

type BodyBytes = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// The config stream's messages, one JSON document per line.
pub struct UpdateStream {
    lines: FramedRead<Reader, LinesCodec>,
    /// Keeps the connection's request handle (and so the connection) alive.
    _sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for UpdateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateStream").finish_non_exhaustive()
    }
}

impl UpdateStream {
    fn new(body: Incoming, sender: SendRequest<Full<Bytes>>) -> Self {
        let bytes: BodyBytes = Box::pin(BodyDataStream::new(body).map_err(io::Error::other));
        Self::from_reader(Box::pin(StreamReader::new(bytes)), MAX_MESSAGE, Some(sender))
    }

    fn from_reader(reader: Reader, max_line: usize, sender: Option<SendRequest<Full<Bytes>>>) -> Self {
        Self { lines: FramedRead::new(reader, LinesCodec::new_with_max_length(max_line)), _sender: sender }
    }

    /// The next update; `None` when the controller ends the stream.
    pub async fn next(&mut self) -> Option<Result<Update, ControlError>> {
        loop {
            let line = match self.lines.next().await? {
                Ok(line) => line,
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    let max = self.lines.decoder().max_length();
                    return Some(Err(ControlError::Protocol(format!("a message exceeds {max} bytes"))));
                }
                Err(LinesCodecError::Io(error)) => return Some(Err(ControlError::Protocol(error.to_string()))),
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests;
