//! Metric names and the Prometheus recorder. Names follow Istio's where a
//! counterpart exists, so existing dashboards keep working; the rest are
//! `ambit_`-prefixed.

use std::time::Duration;

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const OPEN_CONNECTIONS: &str = "ambit_open_connections";
pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
pub const CONFIG_UPDATES: &str = "ambit_config_updates_total";
pub const CAPTURED_PODS: &str = "ambit_captured_pods";

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct RecorderError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs the process-wide Prometheus recorder.
pub fn install() -> Result<PrometheusHandle, RecorderError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Connections this agent is proxying right now.");
    metrics::describe_counter!(CONNECTIONS_OPENED, "Proxied TCP connections opened.");
    metrics::describe_counter!(CONNECTIONS_CLOSED, "Proxied TCP connections closed.");
    metrics::describe_counter!(SENT_BYTES, "Bytes sent towards the destination.");
    metrics::describe_counter!(RECEIVED_BYTES, "Bytes received from the destination.");
    metrics::describe_counter!(CONFIG_UPDATES, "Config updates, by result (applied or rejected).");
    metrics::describe_gauge!(CAPTURED_PODS, "Local pods whose traffic is captured.");
    gauge!("istio_build", "component" => "ztunnel", "tag" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Counts one proxied connection from creation to drop, so the open gauge
/// cannot leak whatever path the connection takes out.
#[derive(Debug)]
pub struct ConnectionMetrics {
    direction: &'static str,
    sent: u64,
    received: u64,
}

impl ConnectionMetrics {
    pub fn open(direction: &'static str) -> Self {
        gauge!(OPEN_CONNECTIONS, "direction" => direction).increment(1.0);
        counter!(CONNECTIONS_OPENED, "direction" => direction).increment(1);
        Self { direction, sent: 0, received: 0 }
    }

    pub fn record_bytes(&mut self, sent: u64, received: u64) {
        self.sent += sent;
        self.received += received;
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        let direction = self.direction;
        gauge!(OPEN_CONNECTIONS, "direction" => direction).decrement(1.0);
        counter!(CONNECTIONS_CLOSED, "direction" => direction).increment(1);
        counter!(SENT_BYTES, "direction" => direction).increment(self.sent);
        counter!(RECEIVED_BYTES, "direction" => direction).increment(self.received);
    }
}

/// Serves `/metrics` and keeps the recorder's histograms trimmed.
pub async fn serve(server: HttpServer, handle: PrometheusHandle, drain: Drain) {
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
