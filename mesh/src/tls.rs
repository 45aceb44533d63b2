//! TLS for HBONE, matching what Istio's ztunnel puts on the wire: TLS 1.3
//! only, AES-GCM suites, ALPN `h2`, mandatory client certificates, no SNI,
//! no session resumption.
//!
//! Peers are checked by SPIFFE identity, not by host name. The server side
//! accepts any client whose chain reaches the mesh root and whose URI SAN is
//! in its trust domain (who may talk is authorization's job). The client
//! side accepts a server only if its URI SAN is one the client expects for
//! the destination.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ca::{CaError, CertificateRequest, IssuedCertificate};
use crate::identity::Identity;

/// ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("invalid trust bundle: {0}")]
    Roots(String),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        Self::Config(error)
    }
}

/// A workload's certificate and key, ready for rustls.
#[derive(Debug)]
pub struct WorkloadCertificate {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    pub fn new(identity: Identity, request: CertificateRequest, issued: IssuedCertificate) -> Result<Self, CaError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
            .map_err(|e| CaError::Signing(format!("CA returned unreadable PEM: {e}")))?;
        Ok(Self {
            identity,
            chain: vec![CertificateDer::from(pem.contents)],
            key: PrivatePkcs8KeyDer::from(request.key.serialize_der()),
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The mesh's trust anchors and trust domain.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: String,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

impl TrustBundle {
    pub fn from_pem(trust_domain: &str, roots_pem: &str) -> Result<Self, TlsError> {
        let mut anchors = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(roots_pem.as_bytes()) {
            let pem = pem.map_err(|e| TlsError::Roots(e.to_string()))?;
            let der = CertificateDer::from(pem.contents);
            let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| TlsError::Roots(e.to_string()))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(TlsError::Roots("no certificates in the trust bundle".into()));
        }
        Ok(Self { trust_domain: trust_domain.to_owned(), anchors: Arc::new(anchors) })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Verifies a peer's chain for `usage` and returns its identity.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Identity, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(algorithms().all, &self.anchors, intermediates, now, usage, None, None)
            .map_err(webpki_error)?;
        let identity = identity_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if identity.trust_domain != self.trust_domain {
            return Err(rustls::Error::General(format!(
                "peer {identity} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok(identity)
    }
}

fn webpki_error(error: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as E;
    let cert_error = match error {
        webpki::Error::CertExpired { .. } => E::Expired,
        webpki::Error::CertNotValidYet { .. } => E::NotValidYet,
        webpki::Error::UnknownIssuer => E::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => E::BadSignature,
        other => E::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// The SPIFFE identity in a certificate's (single) URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| TlsError::Certificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .ok_or_else(|| TlsError::Certificate("no subject alternative name".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => {
            uri.parse().map_err(|e: crate::identity::IdentityError| TlsError::Certificate(e.to_string()))
        }
        _ => Err(TlsError::Certificate("expected exactly one URI SAN".into())),
    }
}

/// aws-lc-rs with only the TLS 1.3 AES-GCM suites, and the fastest key
/// exchanges (X25519, then P-256).
fn provider() -> Arc<CryptoProvider> {
    let base = aws_lc_rs::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        kx_groups: vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
        ..base
    })
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    static ALGORITHMS: std::sync::LazyLock<WebPkiSupportedAlgorithms> =
        std::sync::LazyLock::new(|| aws_lc_rs::default_provider().signature_verification_algorithms);
    &ALGORITHMS
}

/// Accepts HBONE as `cert`: the identity of the workload the connection is for.
pub fn server_config(cert: &WorkloadCertificate, trust: &TrustBundle) -> Result<Arc<ServerConfig>, TlsError> {
    peer_server_config(cert, trust, true)
}

/// The controller's endpoint: like [`server_config`], but a client may come
/// without a certificate (an agent asking for its first one; it proves who
/// it is with a credential instead).
pub fn control_server_config(cert: &WorkloadCertificate, trust: &TrustBundle) -> Result<Arc<ServerConfig>, TlsError> {
    peer_server_config(cert, trust, false)
}

fn peer_server_config(
    cert: &WorkloadCertificate,
    trust: &TrustBundle,
    client_cert_required: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier { trust: trust.clone(), required: client_cert_required });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Istio's peers do not resume; tickets would only cost CPU.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Connects as `cert`, accepting only a server whose identity is in `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    trust: &TrustBundle,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    control_client_config(Some(cert), trust, expected)
}

/// Like [`client_config`], with no client certificate when `cert` is `None`
/// (an agent's first request to the controller).
pub fn control_client_config(
    cert: Option<&WorkloadCertificate>,
    trust: &TrustBundle,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier { trust: trust.clone(), expected });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name rustls needs for a connection; with SNI off it never leaves us.
pub fn server_name(ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

/// The handshake-signature checks both verifiers share: the provider's
/// algorithms, nothing of our own.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms().supported_schemes()
        }
    };
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    trust: TrustBundle,
    required: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust.verify(end_entity, intermediates, now, webpki::KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    trust: TrustBundle,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self.trust.verify(end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        if !self.expected.contains(&identity) {
            return Err(rustls::Error::General(format!(
                "server identity {identity} is not one expected for the destination"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The identity a connection's peer proved during the handshake.
pub fn peer_identity(connection: &rustls::CommonState) -> Option<Identity> {
    identity_of(connection.peer_certificates()?.first()?).ok()
}

#[cfg(test)]
mod tests;
