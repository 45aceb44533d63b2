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
    connect_status_with(send, uri, &[]).await
}

/// Like [`connect_status`], with extra request headers.
pub async fn connect_status_with(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<http::StatusCode, h2::Error> {
    let ready = send.clone().ready().await?;
    *send = ready;
    let mut request = http::Request::builder().method(http::Method::CONNECT).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).map_err(|_| h2::Reason::INTERNAL_ERROR)?;
    let (response, _stream) = send.send_request(request, false)?;
    Ok(response.await?.status())
}

/// An HTTP/2 rapid-reset flood (CVE-2023-44487's pattern), written as raw
/// frames the way an attacker's tool sends them: after the preface and an
/// empty SETTINGS, CONNECT requests to `authority`, each HEADERS frame
/// followed by its stream's RST_STREAM (CANCEL) in the same write, so the
/// server receives every request already withdrawn. Stops after `streams`
/// requests or when the server closes the connection; returns how many
/// were sent.
pub async fn rapid_reset_flood(mut tls: TlsStream<TcpStream>, authority: &str, streams: u32) -> anyhow::Result<u32> {
    use tokio::io::AsyncWriteExt as _;
    anyhow::ensure!(authority.len() < 127, "the authority must fit a one-byte HPACK length");
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame_header(0, 0x4, 0, 0));
    tls.write_all(&opening).await?;
    // HPACK, literal without indexing, names from the static table:
    // `:method` (index 2) and `:authority` (index 1).
    let mut block = vec![0x02, 7];
    block.extend(b"CONNECT");
    block.extend([0x01, authority.len() as u8]);
    block.extend(authority.as_bytes());
    let mut sent = 0;
    for id in (1..).step_by(2).take(streams as usize) {
        let mut pair = frame_header(block.len(), 0x1, 0x4, id);
        pair.extend(&block);
        pair.extend(frame_header(4, 0x3, 0, id));
        pair.extend(0x8u32.to_be_bytes());
        if tls.write_all(&pair).await.is_err() {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}

/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
fn frame_header(length: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut header = (length as u32).to_be_bytes()[1..].to_vec();
    header.extend([kind, flags]);
    header.extend(stream.to_be_bytes());
    header
}
