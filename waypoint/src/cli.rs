//! `Settings`: every flag and environment variable the waypoint reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh::logging::LogArgs;

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[derive(Clone, Debug, Parser)]
#[command(version, about = "ambit's optional per-namespace L7 proxy (istio.io/use-waypoint)")]
pub struct Settings {
    /// The controller's control endpoint (`host:port`): config and the
    /// waypoint's certificate come from it.
    #[arg(long, env = "AMBIT_CONTROLLER")]
    pub controller: String,

    /// The credential that proves who we are to the controller: on
    /// Kubernetes, the pod's projected ServiceAccount token (audience
    /// `ambit`); in local mode, the node's bootstrap token.
    #[arg(long, env = "AMBIT_CREDENTIAL")]
    pub credential: PathBuf,

    /// Root certificate of the mesh CA (PEM).
    #[arg(long, env = "AMBIT_CA_CERT")]
    pub ca_cert: PathBuf,

    /// The waypoint Gateway this pod serves (its `gateway.networking.k8s.io/gateway-name` label).
    #[arg(long, env = "AMBIT_GATEWAY")]
    pub gateway: String,

    /// The pod's namespace (downward API `metadata.namespace`).
    #[arg(long, env = "AMBIT_POD_NAMESPACE")]
    pub namespace: String,

    /// The ServiceAccount the pod runs as (downward API
    /// `spec.serviceAccountName`); defaults to the Gateway's name, as Istio
    /// names a waypoint's account.
    #[arg(long, env = "AMBIT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// The node the pod runs on (downward API `spec.nodeName`), for the
    /// controller's logs.
    #[arg(long, env = "AMBIT_NODE", default_value = "")]
    pub node: String,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// The cluster's name in telemetry (`source_cluster`, `destination_cluster`).
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Lifetime of the waypoint's certificate; it is renewed at half of it.
    #[arg(long, env = "AMBIT_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// HBONE listener (mTLS + HTTP/2 CONNECT), Istio's port.
    #[arg(long, env = "AMBIT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,

    /// Readiness endpoint (`/healthz/ready`), Istio's port.
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Prometheus metrics (`/metrics`), Istio's port.
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Admin endpoint (`/config_dump`, `/logging`), loopback only.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Upper bound on reaching an endpoint: the HBONE dial (TCP, TLS and
    /// HTTP/2 handshakes), and again the CONNECT's answer.
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long in-flight requests may run on after SIGTERM.
    #[arg(long, env = "AMBIT_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.gateway)
    }
}
