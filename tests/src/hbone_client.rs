//! A raw HBONE client for hostile-input tests: TLS with any certificate we
//! like (valid, expired, from another CA), then whatever bytes or HTTP/2
//! requests the test wants to throw at the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mesh::ca::{CertificateAuthority, CertificateRequest};
use mesh::identity::Identity;
use mesh::tls::{self, TrustBundle, WorkloadCertificate};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cluster::TRUST_DOMAIN;
use crate::netns::Netns;

/// Issues a certificate for `identity` from `ca`, valid over `validity`
/// (relative to now; negative offsets make it expired).
pub fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    from: SystemTime,
    until: SystemTime,
) -> anyhow::Result<WorkloadCertificate> {
    let request = CertificateRequest::new(identity)?;
    let issued = ca.sign_csr_for_period(&request.csr_pem, identity, from, until)?;
    Ok(WorkloadCertificate::new(identity.clone(), request, issued)?)
}

/// A certificate valid for the next hour.
pub fn issue_valid(ca: &CertificateAuthority, identity: &Identity) -> anyhow::Result<WorkloadCertificate> {
    let now = SystemTime::now();
    issue(ca, identity, now - Duration::from_secs(60), now + Duration::from_secs(3600))
}

/// Opens TCP from `netns` to `hop` and does a TLS handshake as `cert`,
/// expecting the server to be `server`. The server's rejection shows up as
/// the handshake's error.
pub async fn connect(
    netns: &Netns,
    hop: SocketAddr,
    cert: &WorkloadCertificate,
    roots_pem: &str,
    server: Identity,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let trust = TrustBundle::from_pem(TRUST_DOMAIN, roots_pem)?;
    let config = tls::client_config(cert, &trust, vec![server])?;
    let tcp = netns.connect(hop).await.with_context(|| format!("TCP to {hop}"))?;
    let tls = TlsConnector::from(Arc::clone(&config)).connect(tls::server_name(hop.ip()), tcp).await?;
    Ok(tls)
}

/// HTTP/2 over an established TLS stream, with the mesh's settings; the
/// connection is driven by a spawned task.
pub async fn h2(tls: TlsStream<TcpStream>) -> anyhow::Result<h2::client::SendRequest<bytes::Bytes>> {
    let (send, connection) = mesh::hbone::settings::client_builder().handshake(tls).await?;
    tokio::spawn(connection);
    Ok(send)
}

/// Sends a CONNECT for `uri` (normally `ip:port`) and returns the status,
/// or the stream error if the server reset it instead of answering.
pub async fn connect_status(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &str,
) -> Result<http::StatusCode, h2::Error> {
    let ready = send.clone().ready().await?;
    *send = ready;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .body(())
        .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
    let (response, _stream) = send.send_request(request, false)?;
    Ok(response.await?.status())
}
