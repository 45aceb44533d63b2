use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::CertificateAuthority;

const TD: &str = "cluster.local";

fn issue(ca: &CertificateAuthority, ns: &str, sa: &str) -> WorkloadCertificate {
    let id = Identity::new(TD, ns, sa);
    let request = CertificateRequest::new(&id).unwrap();
    let issued = ca.sign_csr(&request.csr_pem, &id, Duration::from_secs(3600)).unwrap();
    WorkloadCertificate::new(id, request, issued).unwrap()
}

fn expired(ca: &CertificateAuthority, ns: &str, sa: &str) -> WorkloadCertificate {
    let id = Identity::new(TD, ns, sa);
    let request = CertificateRequest::new(&id).unwrap();
    let past = SystemTime::now() - Duration::from_secs(7200);
    let issued = ca.sign_csr_for_period(&request.csr_pem, &id, past, past + Duration::from_secs(3600)).unwrap();
    WorkloadCertificate::new(id, request, issued).unwrap()
}

fn bundle(ca: &CertificateAuthority) -> TrustBundle {
    TrustBundle::from_pem(TD, ca.root_pem()).unwrap()
}

/// Runs one handshake and a tiny exchange; returns (client result, server's
/// view of the client identity).
async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Result<(), String>, Result<Identity, String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(b).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let id = peer_identity(conn).ok_or("no peer identity")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    };
    let client_side = async move {
        let name = server_name("10.0.0.1".parse().unwrap());
        let mut tls = TlsConnector::from(client).connect(name, a).await.map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    tokio::join!(client_side, server_side)
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let (client_cert, server_cert) = (issue(&ca, "shop", "web"), issue(&ca, "shop", "db"));
    let trust = bundle(&ca);
    let client = client_config(&client_cert, &trust, vec![server_cert.identity.clone()]).unwrap();
    let server = server_config(&server_cert, &trust).unwrap();
    let (client_result, server_view) = handshake(client, server).await;
    client_result.unwrap();
    assert_eq!(server_view.unwrap(), client_cert.identity);
}

#[tokio::test]
async fn client_rejects_unexpected_server_identity() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let (client_cert, server_cert) = (issue(&ca, "shop", "web"), issue(&ca, "shop", "impostor"));
    let trust = bundle(&ca);
    let expected = vec![Identity::new(TD, "shop", "db")];
    let client = client_config(&client_cert, &trust, expected).unwrap();
    let server = server_config(&server_cert, &trust).unwrap();
    let (client_result, _) = handshake(client, server).await;
    let error = client_result.unwrap_err();
    assert!(error.contains("not one expected"), "{error}");
}

#[tokio::test]
async fn server_rejects_client_from_another_ca() {
    let (ours, theirs) = (CertificateAuthority::generate(TD).unwrap(), CertificateAuthority::generate(TD).unwrap());
    let server_cert = issue(&ours, "shop", "db");
    let rogue = issue(&theirs, "shop", "web");
    // The rogue trusts our root, so only the server's check can stop it.
    let client = client_config(&rogue, &bundle(&ours), vec![server_cert.identity.clone()]).unwrap();
    let server = server_config(&server_cert, &bundle(&ours)).unwrap();
    let (_, server_view) = handshake(client, server).await;
    let error = server_view.unwrap_err();
    // Both roots are named O=cluster.local: webpki finds a candidate issuer
    // by name and then fails its signature.
    assert!(error.contains("UnknownIssuer") || error.contains("BadSignature"), "{error}");
}

#[tokio::test]
async fn server_rejects_expired_client() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let server_cert = issue(&ca, "shop", "db");
    let old = expired(&ca, "shop", "web");
    let trust = bundle(&ca);
    let client = client_config(&old, &trust, vec![server_cert.identity.clone()]).unwrap();
    let server = server_config(&server_cert, &trust).unwrap();
    let (_, server_view) = handshake(client, server).await;
    let error = server_view.unwrap_err();
    assert!(error.contains("Expired"), "{error}");
}

#[tokio::test]
async fn server_rejects_foreign_trust_domain() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let server_cert = issue(&ca, "shop", "db");
    let client_cert = issue(&ca, "shop", "web");
    // The server only trusts another trust domain's identities.
    let server = server_config(&server_cert, &TrustBundle::from_pem("other.local", ca.root_pem()).unwrap()).unwrap();
    let client = client_config(&client_cert, &bundle(&ca), vec![server_cert.identity.clone()]).unwrap();
    let (_, server_view) = handshake(client, server).await;
    assert!(server_view.unwrap_err().contains("outside trust domain"));
}

#[test]
fn bundle_needs_certificates() {
    assert!(TrustBundle::from_pem(TD, "").is_err());
    assert!(TrustBundle::from_pem(TD, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
}
