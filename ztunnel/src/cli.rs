//! Command line and environment: the only place that reads either. Produces
//! a typed [`Settings`], logged once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

#[derive(Clone, Debug, Parser, Serialize)]
#[command(version, about = "ambit's per-node agent: captures enrolled pods' TCP traffic with eBPF")]
// A flag given twice takes the last value, as in most tools (a wrapper's
// defaults first, the operator's own after).
#[command(args_override_self = true)]
pub struct Settings {
    /// This node's name, as pods' `node` field names it (downward API `spec.nodeName`).
    #[arg(long, env = "AMBIT_NODE")]
    pub node: String,

    /// Static mode: the mesh config from this YAML file, reloaded whenever
    /// it changes. The alternative to `--controller`.
    #[arg(long, env = "AMBIT_CONFIG", required_unless_present = "controller", conflicts_with = "controller")]
    pub config: Option<PathBuf>,

    /// The controller's control endpoint (`host:port`, e.g. its Service's
    /// DNS name): config and certificates come from it.
    #[arg(long, env = "AMBIT_CONTROLLER", requires = "node_credential")]
    pub controller: Option<String>,

    /// The bootstrap credential (a token) that proves this node to the
    /// controller.
    #[arg(long, env = "AMBIT_NODE_CREDENTIAL")]
    pub node_credential: Option<PathBuf>,

    /// Outbound listener: receives enrolled pods' captured connections.
    /// Loopback, so pods cannot reach it except through capture.
    #[arg(long, env = "AMBIT_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,

    /// Inbound HBONE listener (mTLS + HTTP/2 CONNECT), Istio's port. Bound to
    /// all addresses: tunnels for local pods reach it through capture, and
    /// same-node tunnels through policy routing.
    #[arg(long, env = "AMBIT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,

    /// Inbound plaintext listener: connections to enrolled pods from outside
    /// the mesh. Loopback; reached only through capture.
    #[arg(long, env = "AMBIT_INBOUND_PLAIN_ADDR", default_value = "127.0.0.1:15006")]
    pub inbound_plain_addr: SocketAddr,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// The cluster's name in telemetry (`source_cluster`,
    /// `destination_cluster`) and in the baggage peers exchange; Istio's
    /// default.
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Root certificate of the mesh CA (PEM): peers and the controller must
    /// chain to it.
    #[arg(long, env = "AMBIT_CA_CERT")]
    pub ca_cert: PathBuf,

    /// Static mode only: the mesh CA's private key (PEM); ztunnel then signs
    /// its pods' certificates itself.
    #[arg(long, env = "AMBIT_CA_KEY", required_unless_present = "controller", conflicts_with = "controller")]
    pub ca_key: Option<PathBuf>,

    /// Lifetime of workload certificates; they are renewed at half of it.
    #[arg(long, env = "AMBIT_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub cert_ttl: Duration,

    /// Streams an HBONE connection carries before the pool opens another
    /// (the peer's MAX_CONCURRENT_STREAMS caps it further).
    #[arg(long, env = "AMBIT_POOL_STREAMS", default_value_t = mesh::hbone::settings::DEFAULT_STREAMS_PER_CONNECTION)]
    pub pool_streams: usize,

    /// An HBONE connection with no streams for this long is closed.
    #[arg(long, env = "AMBIT_POOL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,

    /// Readiness endpoint (`/healthz/ready`), Istio's port.
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Prometheus metrics (`/metrics`), Istio's port.
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Admin endpoint (`/config_dump`, `/logging`), loopback only.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Directory under a bpffs mount for pinned maps and links. Pins
    /// outlive the process, so capture keeps failing closed while it is down.
    /// Defaults to `/sys/fs/bpf/ambit/<node>`.
    #[arg(long, env = "AMBIT_BPF_PIN_DIR")]
    pub bpf_pin_dir: Option<PathBuf>,

    /// Where the CNI plugin finds this agent: its socket, and the file of
    /// enrolled namespaces it falls back on while the agent is down.
    #[arg(long, env = "AMBIT_CNI_STATE_DIR", default_value = "/var/run/ambit")]
    pub cni_state_dir: PathBuf,

    /// Install the `ambit-cni` plugin binary into this directory (the
    /// node's `/opt/cni/bin`, mounted); with `--cni-conf-dir`.
    #[arg(long, env = "AMBIT_CNI_BIN_DIR", requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,

    /// Chain the plugin into the node's primary CNI network config in this
    /// directory (the node's `/etc/cni/net.d`, mounted), and keep it there.
    #[arg(long, env = "AMBIT_CNI_CONF_DIR", requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,

    /// How long established connections may run on after SIGTERM.
    #[arg(long, env = "AMBIT_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,

    /// Upper bound on connecting to an upstream: a TCP connect; for HBONE
    /// the TCP, TLS and HTTP/2 handshakes together, and then again the wait
    /// for the CONNECT's answer.
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,

    /// Idle time before TCP keepalive probes start, and between them, on
    /// every connection (linkerd2-proxy's default).
    #[arg(long, env = "AMBIT_TCP_KEEPALIVE", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,

    /// `TCP_USER_TIMEOUT` on every connection: sent data a peer does not
    /// acknowledge for this long closes the connection (linkerd2-proxy's
    /// default).
    #[arg(long, env = "AMBIT_TCP_USER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,

    /// An inbound HBONE connection that carries no stream for this long is
    /// closed (longer than clients' pool idle timeouts, Istio's included).
    #[arg(long, env = "AMBIT_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub hbone_idle_timeout: Duration,

    /// Connections each data-path listener holds at once; more are reset.
    #[arg(long, env = "AMBIT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Connections the outbound and inbound plaintext listeners hold at once
    /// from one address (one pod, or one client outside the mesh).
    #[arg(long, env = "AMBIT_MAX_CONNECTIONS_PER_PEER", default_value_t = 10_000)]
    pub max_connections_per_peer: usize,

    /// HBONE connections held at once from one address. Each carries up to
    /// 200 streams; a client pod needs a handful.
    #[arg(long, env = "AMBIT_MAX_HBONE_CONNECTIONS_PER_PEER", default_value_t = 1024)]
    pub max_hbone_connections_per_peer: usize,

    /// Threads that run the data path. More threads add CPU headroom but
    /// also cross-thread wakeups and cache misses on every hop. Default: one
    /// per two CPUs this process may use (cgroup quota and affinity count),
    /// at least one and at most Istio's two.
    #[arg(long, env = "AMBIT_WORKER_THREADS", default_value_t = default_worker_threads())]
    pub worker_threads: usize,

    /// Logging (changeable at run time through the admin endpoint).
    #[command(flatten)]
    pub log: mesh::logging::LogArgs,
}

impl Settings {
    pub fn tcp_options(&self) -> mesh::tcp::TcpOptions {
        mesh::tcp::TcpOptions { keepalive: self.tcp_keepalive, user_timeout: self.tcp_user_timeout }
    }

    pub fn bpf_pin_dir(&self) -> PathBuf {
        self.bpf_pin_dir.clone().unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ambit").join(&self.node))
    }

    /// The ports this agent listens on: captured connections to them are refused.
    pub fn own_ports(&self) -> Vec<u16> {
        [
            self.outbound_addr,
            self.hbone_addr,
            self.inbound_plain_addr,
            self.readiness_addr,
            self.metrics_addr,
            self.admin_addr,
        ]
        .iter()
        .map(SocketAddr::port)
        .collect()
    }
}

/// On a two-CPU node a second data-path thread competes with the workloads
/// it serves and hands each stream's frames between cores: with one thread
/// the tunnel's throughput relative to direct was 16–21% higher there
/// (BENCHMARKS.md). Larger nodes get Istio's two.
fn default_worker_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cpus / 2).clamp(1, 2)
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGS: &[&str] =
        &["ztunnel", "--node", "n1", "--config", "/c.yaml", "--ca-cert", "/ca.pem", "--ca-key", "/ca.key"];

    fn with(extra: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(ARGS.iter().chain(extra))
    }

    #[test]
    fn defaults_and_overrides() {
        let s = with(&[]).unwrap();
        assert_eq!(s.outbound_addr, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(s.bpf_pin_dir(), PathBuf::from("/sys/fs/bpf/ambit/n1"));
        assert_eq!(s.drain_grace, Duration::from_secs(5));
        assert_eq!(
            (s.trust_domain.as_str(), s.cert_ttl, s.pool_streams),
            ("cluster.local", Duration::from_secs(86400), 100)
        );
        assert_eq!(s.own_ports(), [15001, 15008, 15006, 15021, 15020, 15000]);
        assert_eq!(with(&["--drain-grace", "250ms"]).unwrap().drain_grace, Duration::from_millis(250));
        assert!((1..=2).contains(&s.worker_threads), "{}", s.worker_threads);
        assert_eq!(with(&["--worker-threads", "4"]).unwrap().worker_threads, 4);
    }

    #[test]
    fn bad_values_are_named() {
        let err = with(&["--connect-timeout", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--connect-timeout") && err.contains("soon"), "{err}");
        let err = Settings::try_parse_from(["ztunnel", "--node", "n1", "--config", "/c.yaml"]).unwrap_err().to_string();
        assert!(err.contains("--ca-cert"), "{err}");
    }

    #[test]
    fn controller_mode_needs_a_credential_and_no_static_config() {
        let base = ["ztunnel", "--node", "n1", "--ca-cert", "/ca.pem", "--controller", "10.0.0.1:15012"];
        let err = Settings::try_parse_from(base).unwrap_err().to_string();
        assert!(err.contains("--node-credential"), "{err}");
        let ok = Settings::try_parse_from(base.iter().chain(&["--node-credential", "/t"])).unwrap();
        assert_eq!((ok.config, ok.ca_key), (None, None));
        let err = Settings::try_parse_from(base.iter().chain(&["--node-credential", "/t", "--config", "/c"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--config"), "{err}");
    }
}
