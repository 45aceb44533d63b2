//! The control protocol between the controller and its agents (ztunnels,
//! later waypoints): HTTP/2 over TLS 1.3, JSON bodies. ARCHITECTURE.md has
//! the whole flow; in short:
//!
//! * `POST /v1/certificates`: a CSR for one identity ([`SignRequest`]). The
//!   agent proves which node it runs on with a bearer credential (a
//!   bootstrap token in local mode); the controller signs only identities
//!   of pods on that node, plus the agent's own.
//! * `GET /v1/config?node=N&since=EPOCH.VERSION`: a stream of
//!   newline-delimited [`Update`]s: first a full config (or, when resuming
//!   from a version the controller still remembers, a delta from it), then
//!   a delta per change. Needs mutual TLS with the agent's own certificate.
//!
//! Versions are per controller process (its `epoch`): after a controller
//! restart, or when asked to resume from a version it no longer holds, the
//! controller starts over with a full config.

pub mod client;
pub mod follow;
mod remote_ca;
pub mod stream;

use serde::{Deserialize, Serialize};

pub use client::{ControlClient, ControlError};
pub use follow::ConfigFollower;
pub use remote_ca::RemoteCa;
pub use stream::{ConfigStream, ResumeFrom};

use crate::config::MeshConfig;
use crate::config::delta::ConfigDelta;
use crate::identity::Identity;

/// The controller's port (istiod's, for familiarity).
pub const CONTROL_PORT: u16 = 15012;
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
pub const CONFIG_PATH: &str = "/v1/config";
/// The namespace the mesh's own components run in.
pub const SYSTEM_NAMESPACE: &str = "ambit-system";
/// Service accounts of the mesh's components (their identities).
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "ambit-controller";
pub const ZTUNNEL_SERVICE_ACCOUNT: &str = "ztunnel";

/// The controller's identity, which agents insist on.
pub fn controller_identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, SYSTEM_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
}

/// The node agent's own identity (it talks to the controller as this).
pub fn ztunnel_identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, SYSTEM_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)
}

/// A request to sign a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignRequest {
    /// The SPIFFE ID the certificate is for.
    pub identity: String,
    /// PKCS#10, PEM.
    pub csr: String,
    pub ttl_seconds: u64,
}

/// A signed certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignResponse {
    /// The leaf, PEM.
    pub certificate: String,
    pub not_before_unix: u64,
    pub not_after_unix: u64,
}

/// One message of the config stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// Identifies the controller process whose versions these are.
    pub epoch: String,
    pub version: u64,
    #[serde(flatten)]
    pub body: UpdateBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdateBody {
    /// The whole config.
    Full(MeshConfig),
    /// What changed since version `from` (same epoch).
    Delta { from: u64, changes: ConfigDelta },
}
