//! Phase 8, log: one record per request ([`Exchange`]), filled in as the
//! phases learn things, finished when the response ends: Istio's request
//! metrics (`reporter="waypoint"`) and one access line on the `access`
//! target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use mesh::config::Workload;
use mesh::identity::Identity;
use metrics::Label;

use super::Downstream;
use super::accept::Target;
use crate::metrics::{REQUEST_BYTES, REQUEST_DURATION, REQUESTS, RESPONSE_BYTES};

/// Who a request went to, as telemetry names it.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
}

impl Peer {
    pub fn of(workload: &Workload, identity: &Identity) -> Self {
        Self {
            workload: workload.workload_name().to_owned(),
            namespace: workload.namespace.clone(),
            principal: identity.to_string(),
            app: workload.canonical_service().to_owned(),
            version: workload.canonical_revision().to_owned(),
        }
    }

    fn unknown() -> Self {
        let unknown = || "unknown".to_owned();
        Self { workload: unknown(), namespace: unknown(), principal: unknown(), app: unknown(), version: unknown() }
    }
}

/// One request's record.
#[derive(Debug)]
pub struct Exchange {
    start: Instant,
    downstream: Arc<Downstream>,
    source: Peer,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub destination: Option<Peer>,
    pub endpoint: Option<SocketAddr>,
    pub route: Option<String>,
    pub status: u16,
    flags: Vec<&'static str>,
    pub grpc_status: Option<String>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub attempts: u32,
    cluster_id: Arc<str>,
}

impl Exchange {
    pub fn new(
        downstream: Arc<Downstream>,
        source: Option<Peer>,
        request: &http::request::Parts,
        cluster: Arc<str>,
    ) -> Self {
        let grpc = request
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Self {
            start: Instant::now(),
            downstream,
            source: source.unwrap_or_else(Peer::unknown),
            method: request.method.to_string(),
            path: request.uri.path_and_query().map_or_else(|| "/".to_owned(), ToString::to_string),
            protocol: if grpc { "grpc" } else { "http" },
            destination: None,
            endpoint: None,
            route: None,
            status: 0,
            flags: Vec::new(),
            grpc_status: None,
            request_bytes: 0,
            response_bytes: 0,
            attempts: 0,
            cluster_id: cluster,
        }
    }

    pub fn add_flag(&mut self, flag: &'static str) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    /// Notes `grpc-status` from response headers (trailers-only) or trailers.
    pub fn note_grpc_status(&mut self, headers: &HeaderMap) {
        if let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
            self.grpc_status = Some(status.to_owned());
        }
    }

    fn flags(&self) -> String {
        if self.flags.is_empty() { "-".to_owned() } else { self.flags.join(",") }
    }

    /// Records the metrics and writes the access line.
    pub fn finish(self) {
        let elapsed = self.start.elapsed();
        let labels = self.labels();
        metrics::counter!(REQUESTS, labels.clone()).increment(1);
        metrics::histogram!(REQUEST_DURATION, labels.clone()).record(elapsed.as_secs_f64() * 1000.0);
        metrics::histogram!(REQUEST_BYTES, labels.clone()).record(self.request_bytes as f64);
        metrics::histogram!(RESPONSE_BYTES, labels).record(self.response_bytes as f64);
        let d = &self.downstream;
        tracing::info!(
            target: "access",
            protocol = self.protocol,
            connection = d.id,
            src.addr = %d.client_ip,
            src.identity = %d.identity,
            dst.service = %d.target.name(),
            dst.addr = self.endpoint.map(|e| e.to_string()),
            dst.workload = self.destination.as_ref().map(|p| format!("{}/{}", p.namespace, p.workload)),
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref(),
            status = self.status,
            response_flags = %self.flags(),
            grpc_status = self.grpc_status.as_deref(),
            attempts = self.attempts,
            bytes_received = self.request_bytes,
            bytes_sent = self.response_bytes,
            duration_ms = elapsed.as_millis() as u64,
            "request"
        );
    }

    fn labels(&self) -> Vec<Label> {
        let d = &self.downstream;
        let (service, service_name, service_namespace) = match &d.target {
            Target::Service { hostname, name, namespace, .. } => (hostname.clone(), name.clone(), namespace.clone()),
            Target::Workload { addr } => (addr.ip().to_string(), "unknown".to_owned(), "unknown".to_owned()),
        };
        let destination = self.destination.clone().unwrap_or_else(Peer::unknown);
        let source = &self.source;
        let cluster = self.cluster_id.to_string();
        vec![
            Label::new("reporter", "waypoint"),
            Label::new("source_workload", source.workload.clone()),
            Label::new("source_workload_namespace", source.namespace.clone()),
            Label::new("source_principal", d.identity.to_string()),
            Label::new("source_app", source.app.clone()),
            Label::new("source_version", source.version.clone()),
            Label::new("source_cluster", cluster.clone()),
            Label::new("destination_workload", destination.workload),
            Label::new("destination_workload_namespace", destination.namespace),
            Label::new("destination_principal", destination.principal),
            Label::new("destination_app", destination.app),
            Label::new("destination_version", destination.version),
            Label::new("destination_service", service),
            Label::new("destination_service_name", service_name),
            Label::new("destination_service_namespace", service_namespace),
            Label::new("destination_cluster", cluster),
            Label::new("request_protocol", self.protocol),
            Label::new("response_code", self.status.to_string()),
            Label::new("grpc_response_status", self.grpc_status.clone().unwrap_or_default()),
            Label::new("response_flags", self.flags()),
            Label::new("connection_security_policy", "mutual_tls"),
        ]
    }
}
