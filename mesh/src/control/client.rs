//! The agent's connection to the controller: one HTTP/2-over-TLS connection
//! per call (certificate requests are rare; the config stream is long-lived).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::{CERTIFICATES_PATH, CONFIG_PATH, ResumeFrom, SignRequest, SignResponse, Update, controller_identity};
use crate::ca::{CaError, CertificateRequest, IssuedCertificate};
use crate::identity::Identity;
use crate::tls::{self, TrustBundle, WorkloadCertificate};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// PINGs on the config stream, so a vanished controller is noticed.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// A hostile or broken controller cannot make us buffer without bound.
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
}

/// Where the controller is and how to prove who we are to it.
#[derive(Clone, Debug)]
pub struct ControlClient {
    /// `host:port`; a name is resolved on every connection (a Service's
    /// DNS name in Kubernetes).
    addr: String,
    trust: TrustBundle,
    /// The bearer credential that says which node we are.
    credential: String,
    node: String,
}

impl ControlClient {
    pub fn new(addr: impl Into<String>, trust: TrustBundle, credential: String, node: String) -> Self {
        Self { addr: addr.into(), trust, credential: credential.trim().to_owned(), node }
    }

    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    async fn connect(&self, cert: Option<&WorkloadCertificate>) -> Result<SendRequest<Full<Bytes>>, ControlError> {
        let expected = vec![controller_identity(self.trust.trust_domain())];
        let config =
            tls::control_client_config(cert, &self.trust, expected).map_err(|e| ControlError::Tls(e.to_string()))?;
        let connect_error = |cause| ControlError::Connect { addr: self.addr.clone(), cause };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
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
        let mut sender = self.connect(None).await?;
        let response = sender.send_request(self.request(Method::POST, CERTIFICATES_PATH, body.into())?).await?;
        let response = check_status(response).await?;
        let body = response.into_body().collect().await?.to_bytes();
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
        let response = sender.send_request(self.request(Method::GET, &query, Bytes::new())?).await?;
        let response = check_status(response).await?;
        Ok(UpdateStream { body: response.into_body(), buffer: BytesMut::new(), _sender: sender })
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

/// The config stream's messages, one JSON document per line.
#[derive(Debug)]
pub struct UpdateStream {
    body: Incoming,
    buffer: BytesMut,
    /// Keeps the connection's request handle (and so the connection) alive.
    _sender: SendRequest<Full<Bytes>>,
}

impl UpdateStream {
    /// The next update; `None` when the controller ends the stream.
    pub async fn next(&mut self) -> Option<Result<Update, ControlError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(line).map_err(|e| ControlError::Protocol(e.to_string())));
            }
            if self.buffer.len() > MAX_MESSAGE {
                return Some(Err(ControlError::Protocol(format!("a message exceeds {MAX_MESSAGE} bytes"))));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Err(error) => return Some(Err(error.into())),
            }
        }
    }
}
