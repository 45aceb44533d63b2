//! Metrics, in Istio's names and labels so existing dashboards work
//! unchanged (see Istio's "standard metrics"): the `istio_tcp_*` family,
//! labelled by reporter, both workloads and principals, the service, and
//! the connection's security policy. Byte counters move while data flows,
//! so long-lived connections show up before they close.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};
use metrics::{Counter, Label, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const OPEN_CONNECTIONS: &str = "ambit_open_connections";
pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
/// Bytes towards the source (the response direction), as Istio counts them.
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
/// Bytes from the source (the request direction).
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
pub use mesh::control::follow::CONFIG_UPDATES;
pub const CAPTURED_PODS: &str = "ambit_captured_pods";
pub const POLICY_CLOSED: &str = "ambit_connections_closed_by_policy_total";
/// Connections `istio.io/dry-run` policies would have allowed or denied.
pub const DRY_RUN: &str = "ambit_authz_dry_run_total";
/// Packets the capture programs dropped, by reason (read from their map).
pub const CAPTURE_DROPS: &str = "ambit_capture_dropped_packets_total";
/// Local pods in the config whose interface or route is not on the node.
pub const CONFIG_VERSIONS_HELD: &str = "ambit_config_versions_held";
pub const PODS_WITHOUT_ROUTE: &str = "ambit_capture_pods_without_route";

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct RecorderError(metrics_exporter_prometheus::BuildError);

impl From<metrics_exporter_prometheus::BuildError> for RecorderError {
    fn from(error: metrics_exporter_prometheus::BuildError) -> Self {
        Self(error)
    }
}

pub fn install() -> Result<PrometheusHandle, RecorderError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Connections this agent is proxying right now.");
    metrics::describe_counter!(CONNECTIONS_OPENED, "TCP connections opened.");
    metrics::describe_counter!(CONNECTIONS_CLOSED, "TCP connections closed.");
    metrics::describe_counter!(SENT_BYTES, "Bytes sent towards the source (response direction).");
    metrics::describe_counter!(RECEIVED_BYTES, "Bytes received from the source (request direction).");
    metrics::describe_counter!(CONFIG_UPDATES, "Config updates, by result (applied or rejected).");
    metrics::describe_gauge!(CAPTURED_PODS, "Local pods whose traffic is captured.");
    metrics::describe_counter!(POLICY_CLOSED, "Live connections closed because policy came to deny them.");
    metrics::describe_counter!(CAPTURE_DROPS, "Packets the capture programs dropped, by reason.");
    metrics::describe_counter!(DRY_RUN, "Connections dry-run policies would have allowed or denied (never enforced).");
    metrics::describe_gauge!(PODS_WITHOUT_ROUTE, "Local pods in the config with no interface or route on the node.");
    metrics::describe_gauge!(
        CONFIG_VERSIONS_HELD,
        "Config versions in memory: 1 unless something still holds an old one."
    );
    metrics::describe_counter!(
        crate::proxy::FORGED_SOURCE,
        "Inbound streams refused: the claimed client address does not fit the peer's identity."
    );
    metrics::describe_counter!(crate::proxy::LISTENER_REFUSED, "Connections refused at a connection limit.");
    // Present from the start, so a reader can tell zero from missing.
    for direction in ["outbound", "inbound", "inbound_plaintext"] {
        gauge!(OPEN_CONNECTIONS, "direction" => direction).set(0.0);
    }
    gauge!(PODS_WITHOUT_ROUTE).set(0.0);
    gauge!(CONFIG_VERSIONS_HELD).set(crate::state::held_versions() as f64);
    gauge!("istio_build", "component" => "ztunnel", "tag" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Who is at one end of a connection, as telemetry names it. Unknown
/// values are `unknown`, as in Istio.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    pub workload: Option<String>,
    pub namespace: Option<String>,
    /// The full SPIFFE URI (`spiffe://…`), as Istio's ztunnel reports it.
    pub principal: Option<String>,
    /// The workload's cluster (the agent's `--cluster-id` for known workloads).
    pub cluster: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub canonical_service: Option<String>,
    pub canonical_revision: Option<String>,
}

/// A service's hostname, name and namespace, as metrics label it.
pub type ServiceLabels = (String, String, String);

pub fn service_labels(service: &mesh::config::Service) -> ServiceLabels {
    (service.hostname(), service.name.clone(), service.namespace.clone())
}

/// Everything a connection's metrics are labelled with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    /// `source` on the client's node, `destination` on the server's.
    pub reporter: &'static str,
    pub source: PeerLabels,
    pub destination: PeerLabels,
    /// The service, when the client addressed one.
    pub service: Option<ServiceLabels>,
    /// `mutual_tls` or `unknown`.
    pub security_policy: &'static str,
}

impl ConnectionLabels {
    pub fn to_labels(&self, response_flags: &str) -> Vec<Label> {
        let v = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".to_owned());
        let (service, service_name, service_namespace) =
            self.service.clone().unwrap_or_else(|| ("unknown".into(), "unknown".into(), "unknown".into()));
        let (s, d) = (&self.source, &self.destination);
        vec![
            Label::new("reporter", self.reporter),
            Label::new("source_workload", v(&s.workload)),
            Label::new("source_workload_namespace", v(&s.namespace)),
            Label::new("source_principal", v(&s.principal)),
            Label::new("source_app", v(&s.app)),
            Label::new("source_version", v(&s.version)),
            Label::new("source_canonical_service", v(&s.canonical_service)),
            Label::new("source_canonical_revision", v(&s.canonical_revision)),
            Label::new("source_cluster", v(&s.cluster)),
            Label::new("destination_workload", v(&d.workload)),
            Label::new("destination_workload_namespace", v(&d.namespace)),
            Label::new("destination_principal", v(&d.principal)),
            Label::new("destination_app", v(&d.app)),
            Label::new("destination_version", v(&d.version)),
            Label::new("destination_canonical_service", v(&d.canonical_service)),
            Label::new("destination_canonical_revision", v(&d.canonical_revision)),
            Label::new("destination_cluster", v(&d.cluster)),
            Label::new("destination_service", service),
            Label::new("destination_service_name", service_name),
            Label::new("destination_service_namespace", service_namespace),
            Label::new("request_protocol", "tcp"),
            Label::new("response_flags", response_flags.to_owned()),
            Label::new("connection_security_policy", self.security_policy),
        ]
    }
}

/// Live byte counters of one connection.
#[derive(Clone, Debug)]
pub struct ByteCounters {
    pub sent: Counter,
    pub received: Counter,
}

/// The counters of one label set, registered once. Looking each up per
/// connection built and hashed its 23 labels four times and cloned them
/// twice: about 6% of the agents' CPU when connections are short.
#[derive(Debug)]
struct Series {
    labels: ConnectionLabels,
    opened: Counter,
    bytes: ByteCounters,
    /// `istio_tcp_connections_closed_total`, by response flags.
    closed: Mutex<Vec<(&'static str, Counter)>>,
}

/// Label sets seen so far. The exporter keeps every series it has seen
/// anyway; this only spares the lookups. Past the bound it starts afresh
/// (handles stay valid: the registry still holds the series).
static SERIES: LazyLock<Mutex<HashMap<ConnectionLabels, Arc<Series>>>> = LazyLock::new(Mutex::default);
const SERIES_CACHED: usize = 4096;

fn series(labels: ConnectionLabels) -> Arc<Series> {
    let mut cache = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = cache.get(&labels) {
        return Arc::clone(found);
    }
    if cache.len() >= SERIES_CACHED {
        cache.clear();
    }
    let open_labels = labels.to_labels("-");
    let series = Arc::new(Series {
        opened: counter!(CONNECTIONS_OPENED, open_labels.clone()),
        bytes: ByteCounters {
            sent: counter!(SENT_BYTES, open_labels.clone()),
            received: counter!(RECEIVED_BYTES, open_labels),
        },
        closed: Mutex::default(),
        labels: labels.clone(),
    });
    cache.insert(labels, Arc::clone(&series));
    series
}

impl Series {
    fn closed(&self, response_flags: &'static str) -> Counter {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = closed.iter().find(|(flags, _)| *flags == response_flags) {
            return counter.clone();
        }
        let counter = counter!(CONNECTIONS_CLOSED, self.labels.to_labels(response_flags));
        closed.push((response_flags, counter.clone()));
        counter
    }
}

/// Counts one connection from open to close, so the open gauge cannot leak
/// whatever path the connection takes out.
#[derive(Debug)]
pub struct ConnectionMetrics {
    direction: &'static str,
    series: Arc<Series>,
}

impl ConnectionMetrics {
    pub fn open(direction: &'static str, labels: ConnectionLabels) -> Self {
        gauge!(OPEN_CONNECTIONS, "direction" => direction).increment(1.0);
        let series = series(labels);
        series.opened.increment(1);
        Self { direction, series }
    }

    /// Live byte counters of this connection's series.
    pub fn bytes(&self) -> ByteCounters {
        self.series.bytes.clone()
    }

    /// Records the close, with the connection's final response flags.
    pub fn close(self, response_flags: &'static str) {
        self.series.closed(response_flags).increment(1);
        // The gauge is settled in Drop.
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        gauge!(OPEN_CONNECTIONS, "direction" => self.direction).decrement(1.0);
    }
}

/// Serves `/metrics` (and Istio's alias `/stats/prometheus`), reading the
/// capture programs' drop counters at each scrape.
pub async fn serve(server: HttpServer, handle: PrometheusHandle, drops: crate::capture::Counters, drain: Drain) {
    let upkeep = handle.clone();
    let upkeep_drain = drain.clone();
    drain.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = upkeep_drain.signaled() => break,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    server
        .run(drain, move |req: Request| {
            for (reason, count) in drops.read() {
                counter!(CAPTURE_DROPS, "reason" => reason).absolute(count);
            }
            let handle = handle.clone();
            async move { metrics_response(&req, &handle) }
        })
        .await;
}

fn metrics_response(req: &Request, handle: &PrometheusHandle) -> Response {
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => http_server::text(http::StatusCode::OK, handle.render()),
        _ => http_server::text(http::StatusCode::NOT_FOUND, "not found\n"),
    }
}
