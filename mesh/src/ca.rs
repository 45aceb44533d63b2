//! The mesh CA, on rcgen. It signs short-lived workload certificates from
//! CSRs: ECDSA P-256, the SPIFFE ID as the only URI SAN, usable for both TLS
//! client and server auth (HBONE peers are both).
//!
//! Agents reach a CA through [`CaClient`]. Today the CA runs in-process
//! from key files ([`CertificateAuthority`] implements the trait); in the
//! controller's issue a remote client takes its place without touching the
//! certificate manager.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use crate::identity::Identity;

/// Clock skew we tolerate between CA and peers: certificates are valid from
/// a minute before they were signed.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("invalid CA certificate or key: {0}")]
    InvalidRoot(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("the CSR asks for {requested}, but the caller may only have {allowed}")]
    IdentityMismatch { requested: String, allowed: String },
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain { identity: String, trust_domain: String },
    #[error("signing failed: {0}")]
    Signing(String),
    /// The CA could not be reached or refused to answer (remote CAs).
    #[error("CA unavailable: {0}")]
    Unavailable(String),
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The leaf, PEM. Workload certificates are signed by the root directly.
    pub cert_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Something that signs CSRs for identities: the local CA now, the
/// controller later.
pub trait CaClient: Send + Sync + std::fmt::Debug + 'static {
    fn sign(&self, csr_pem: String, identity: Identity, ttl: Duration) -> CaFuture;
    /// The roots peers' certificates must chain to, PEM.
    fn roots_pem(&self) -> String;
}

pub type CaFuture = Pin<Box<dyn Future<Output = Result<IssuedCertificate, CaError>> + Send>>;

pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed root for `trust_domain` (subject `O=<trust domain>`,
    /// as Istio's roots have).
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let cert = params.self_signed(&key).map_err(|e| CaError::Signing(e.to_string()))?;
        let root_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self { trust_domain: trust_domain.to_owned(), issuer: Issuer::new(params, key), root_pem, key_pem })
    }

    /// The root from its certificate and key. A key that is not the
    /// certificate's is refused here: otherwise every certificate signed
    /// with it would fail verification later, far from the cause.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidRoot(e.to_string()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| CaError::InvalidRoot(format!("the certificate is not PEM: {e}")))?;
        let cert =
            pem.parse_x509().map_err(|e| CaError::InvalidRoot(format!("the certificate does not parse: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::InvalidRoot(
                "the key does not belong to the certificate (they are not a pair)".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::InvalidRoot(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            root_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn from_files(trust_domain: &str, cert: &Path, key: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|cause| CaError::Read { path: path.display().to_string(), cause })
        };
        Self::from_pem(trust_domain, &read(cert)?, &read(key)?)
    }

    /// Writes the root certificate and its key (mode 0600) for local runs.
    pub fn write_files(&self, cert: &Path, key: &Path) -> Result<(), CaError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let write_error = |path: &Path, cause| CaError::Write { path: path.display().to_string(), cause };
        std::fs::write(cert, &self.root_pem).map_err(|e| write_error(cert, e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key)
            .map_err(|e| write_error(key, e))?;
        std::io::Write::write_all(&mut file, self.key_pem.as_bytes()).map_err(|e| write_error(key, e))
    }

    /// The root's private key, PEM: for storing it (a file, a Secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` for `identity`, valid for `ttl` (plus the backdating).
    /// Only the CSR's public key is used: the certificate's contents are the
    /// CA's decision, and a CSR asking for another identity is refused.
    pub fn sign_csr(&self, csr_pem: &str, identity: &Identity, ttl: Duration) -> Result<IssuedCertificate, CaError> {
        let now = SystemTime::now();
        self.sign_csr_for_period(csr_pem, identity, now - BACKDATE, now + ttl)
    }

    /// Like [`Self::sign_csr`], with an explicit validity period (tests use
    /// it to make certificates that are already expired).
    pub fn sign_csr_for_period(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCertificate, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let uri = identity.to_string();
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [uri.clone()] {
            return Err(CaError::IdentityMismatch { requested: requested.join(", "), allowed: uri });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|_| CaError::InvalidCsr(format!("bad URI {uri}")))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(IssuedCertificate { cert_pem: signed.pem(), not_before, not_after })
    }
}

impl CaClient for Arc<CertificateAuthority> {
    fn sign(&self, csr_pem: String, identity: Identity, ttl: Duration) -> CaFuture {
        let ca = self.clone();
        Box::pin(async move { ca.sign_csr(&csr_pem, &identity, ttl) })
    }

    fn roots_pem(&self) -> String {
        self.root_pem.clone()
    }
}

/// A workload's half of issuance: a fresh key and a CSR naming `identity`.
pub struct CertificateRequest {
    pub key: KeyPair,
    pub csr_pem: String,
}

impl std::fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRequest").finish_non_exhaustive()
    }
}

impl CertificateRequest {
    pub fn new(identity: &Identity) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.to_string();
        params.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|_| CaError::InvalidCsr(format!("bad URI {uri}")))?)];
        let csr = params.serialize_request(&key).map_err(|e| CaError::Signing(e.to_string()))?;
        let csr_pem = csr.pem().map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(Self { key, csr_pem })
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    use super::*;

    fn parse_leaf(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }

    #[test]
    fn issues_spiffe_leaf_from_csr() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let issued = ca.sign_csr(&request.csr_pem, &id, Duration::from_secs(3600)).unwrap();
        let der = parse_leaf(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None })
            .collect();
        assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/web"]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60);
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), request.key.public_key_raw());
    }

    #[test]
    fn refuses_other_identities_and_trust_domains() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let mine = Identity::new("cluster.local", "shop", "web");
        let theirs = Identity::new("cluster.local", "bank", "vault");
        let request = CertificateRequest::new(&theirs).unwrap();
        let err = ca.sign_csr(&request.csr_pem, &mine, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
        let foreign = Identity::new("evil.local", "shop", "web");
        let request = CertificateRequest::new(&foreign).unwrap();
        let err = ca.sign_csr(&request.csr_pem, &foreign, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
        let err = ca.sign_csr("not a csr", &mine, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");
    }

    #[test]
    fn a_key_from_another_root_is_refused() {
        let (a, b) = (
            CertificateAuthority::generate("cluster.local").unwrap(),
            CertificateAuthority::generate("cluster.local").unwrap(),
        );
        let error = CertificateAuthority::from_pem("cluster.local", a.root_pem(), b.key_pem()).unwrap_err();
        assert!(error.to_string().contains("not a pair"), "{error}");
        assert!(CertificateAuthority::from_pem("cluster.local", a.root_pem(), a.key_pem()).is_ok());
    }

    #[test]
    fn round_trips_through_files() {
        let dir = std::env::temp_dir().join(format!("ambit-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        ca.write_files(&dir.join("ca.pem"), &dir.join("ca.key")).unwrap();
        let again =
            CertificateAuthority::from_files("cluster.local", &dir.join("ca.pem"), &dir.join("ca.key")).unwrap();
        assert_eq!(again.root_pem(), ca.root_pem());
        let id = Identity::new("cluster.local", "a", "b");
        let request = CertificateRequest::new(&id).unwrap();
        again.sign_csr(&request.csr_pem, &id, Duration::from_secs(60)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
