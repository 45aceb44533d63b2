//! Metrics, in Istio's names and labels (`reporter="waypoint"`), so
//! Istio's dashboards and Kiali read them unchanged: the `istio_request*`
//! family per HTTP request, `istio_tcp_*` for opaque connections. Served on
//! `:15020/metrics`.

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "istio_requests_total";
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// CONNECTs for a destination this waypoint does not serve.
pub const UNKNOWN_TARGETS: &str = "ambit_waypoint_unknown_targets_total";
/// Copies of requests for mirrors, by result: sent, failed, timeout,
/// over_limit (too many in flight), streamed_body (the body was not kept).
pub const MIRRORED: &str = "ambit_waypoint_mirrored_requests_total";
/// Connections refused at a connection limit, by limit.
pub const REFUSED_CONNECTIONS: &str = "ambit_waypoint_refused_connections_total";

/// Istio's buckets for request durations, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for request and response sizes, in bytes.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0];

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct RecorderError(#[from] metrics_exporter_prometheus::BuildError);

pub fn install() -> Result<PrometheusHandle, RecorderError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REQUEST_BYTES.into()), &SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RESPONSE_BYTES.into()), &SIZE_BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!(REQUESTS, "HTTP requests through the waypoint.");
    metrics::describe_histogram!(REQUEST_DURATION, "Request durations, in milliseconds.");
    metrics::describe_histogram!(REQUEST_BYTES, "Request body sizes, in bytes.");
    metrics::describe_histogram!(RESPONSE_BYTES, "Response body sizes, in bytes.");
    metrics::describe_counter!(UNKNOWN_TARGETS, "CONNECTs refused: not a destination this waypoint serves.");
    metrics::describe_counter!(MIRRORED, "Copies of requests sent to mirrors (shadow traffic), by result.");
    metrics::describe_counter!(REFUSED_CONNECTIONS, "Connections refused at a connection limit.");
    metrics::counter!(UNKNOWN_TARGETS).absolute(0);
    metrics::gauge!("istio_build", "component" => "waypoint", "tag" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

pub async fn serve(handle: PrometheusHandle, server: HttpServer, drain: Drain) {
    server.run(drain, move |req: Request| std::future::ready(respond(&handle, &req))).await;
}

fn respond(handle: &PrometheusHandle, req: &Request) -> Response {
    if req.uri().path() != "/metrics" {
        return http_server::text(http::StatusCode::NOT_FOUND, "not found\n");
    }
    http_server::text(http::StatusCode::OK, handle.render())
}
