//! One record per proxied connection (or HBONE stream): it opens the
//! connection's metrics once the peers are known, collects what the data
//! path learns, and on finish closes the metrics and writes exactly one
//! line to the `access` target. Fields, in order: direction, source
//! (address, workload, identity), destination (address, service, workload,
//! identity), upstream, bytes (`bytes_sent`: towards the destination,
//! `bytes_recv`: back from it), duration, response flags, error, and what
//! dry-run policies would have decided (`authz.dry_run`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh::authz::Decision;
use mesh::config::{Snapshot, Workload};
use mesh::identity::Identity;
use tracing::info;

use super::ProxyError;
use super::relay::Totals;
use crate::metrics::{ByteCounters, ConnectionLabels, ConnectionMetrics, PeerLabels};

#[derive(Debug)]
pub(super) struct Record {
    direction: &'static str,
    started: Instant,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub src_workload: Option<String>,
    pub src_identity: Option<Identity>,
    pub dst_workload: Option<String>,
    pub dst_identity: Option<Identity>,
    pub dst_service: Option<String>,
    metrics: Option<ConnectionMetrics>,
    pub totals: Arc<Totals>,
    /// What `istio.io/dry-run` policies would have decided, if any applied.
    dry_run: Option<Decision>,
}

impl Record {
    pub fn new(direction: &'static str, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            direction,
            started: Instant::now(),
            src,
            dst,
            upstream: None,
            src_workload: None,
            src_identity: None,
            dst_workload: None,
            dst_identity: None,
            dst_service: None,
            metrics: None,
            totals: Arc::default(),
            dry_run: None,
        }
    }

    /// Notes (logs with the connection, and counts) what the dry-run
    /// policies would have decided; they decide nothing.
    pub fn note_dry_run(&mut self, verdict: Option<Decision>) {
        if let Some(verdict) = &verdict {
            let result = if verdict.is_allowed() { "allow" } else { "deny" };
            metrics::counter!(crate::metrics::DRY_RUN, "result" => result).increment(1);
        }
        self.dry_run = verdict;
    }

    /// Opens the connection's metrics, labelled with what is known now.
    pub fn open_metrics(&mut self, labels: ConnectionLabels) {
        self.metrics = Some(ConnectionMetrics::open(self.direction, labels));
    }

    /// The destination side's view, once the local pod `destination` is
    /// known: both workloads, the destination's identity and service, and
    /// the metrics (`security_policy`: `mutual_tls` or `unknown`). The source
    /// identity is whatever the caller proved (`src_identity`), if anything.
    pub fn open_at_destination(
        &mut self,
        snapshot: &Snapshot,
        destination: &Workload,
        (trust_domain, cluster): (&str, &str),
        security_policy: &'static str,
    ) {
        let source = snapshot.workload_by_ip(self.src.ip());
        self.src_workload = source.map(Workload::qualified_name);
        self.dst_workload = Some(destination.qualified_name());
        self.dst_identity = Some(destination.identity(trust_domain));
        let service = snapshot.services_of(destination).next().map(crate::metrics::service_labels);
        self.dst_service = service.as_ref().map(|s| s.0.clone());
        self.open_metrics(ConnectionLabels {
            reporter: "destination",
            source: peer_labels(source, self.src_identity.as_ref(), cluster),
            destination: peer_labels(Some(destination), self.dst_identity.as_ref(), cluster),
            service,
            security_policy,
        });
    }

    /// Live byte counters; a no-op pair if metrics were never opened.
    pub fn byte_counters(&self) -> ByteCounters {
        self.metrics
            .as_ref()
            .map(ConnectionMetrics::bytes)
            .unwrap_or_else(|| ByteCounters { sent: metrics::Counter::noop(), received: metrics::Counter::noop() })
    }

    /// Closes the metrics, then logs: a reader of the access line may rely
    /// on the connection no longer counting as open.
    pub fn finish(mut self, result: Result<(), ProxyError>) {
        let (sent, received) = self.totals.get();
        let flags = result.as_ref().err().map_or("-", ProxyError::response_flag);
        if let Some(metrics) = self.metrics.take() {
            metrics.close(result.as_ref().err().map_or("-", ProxyError::metric_flag));
        }
        let (error, fault, retryable) = match &result {
            Err(e) => (Some(e), Some(e.fault().label()), e.retryable()),
            Ok(()) => (None, None, false),
        };
        // Display adapters, not Strings: this runs once per connection.
        info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            src.workload = %Or(self.src_workload.as_ref(), "-"),
            src.identity = %Or(self.src_identity.as_ref(), "-"),
            dst.addr = %self.dst,
            dst.service = %Or(self.dst_service.as_ref(), "-"),
            dst.workload = %Or(self.dst_workload.as_ref(), "-"),
            dst.identity = %Or(self.dst_identity.as_ref(), "-"),
            upstream = %Or(self.upstream.as_ref(), "-"),
            bytes_sent = received,
            bytes_recv = sent,
            duration_ms = self.started.elapsed().as_millis() as u64,
            response_flags = flags,
            error = %Or(error, ""),
            error.fault = fault.unwrap_or_default(),
            error.retryable = retryable,
            authz.dry_run = %Or(self.dry_run.as_ref(), "-"),
            "connection complete"
        );
    }
}

/// A value, or `fallback` when it is not known (`-`; nothing for `error`).
struct Or<'a, T>(Option<&'a T>, &'static str);

impl<T: std::fmt::Display> std::fmt::Display for Or<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str(self.1),
        }
    }
}

/// Telemetry's view of a workload, as Istio's ztunnel labels it: the
/// principal as the full SPIFFE URI, and `app`/`version` as the canonical
/// service and revision (which Istio derives from the same labels).
pub(super) fn peer_labels(workload: Option<&Workload>, identity: Option<&Identity>, cluster: &str) -> PeerLabels {
    let Some(w) = workload else {
        return PeerLabels {
            principal: identity.map(Identity::to_string),
            namespace: identity.map(|i| i.namespace.clone()),
            ..Default::default()
        };
    };
    PeerLabels {
        workload: Some(w.workload_name().to_owned()),
        namespace: Some(w.namespace.clone()),
        principal: identity.map(Identity::to_string),
        cluster: Some(cluster.to_owned()),
        app: Some(w.canonical_service().to_owned()),
        version: Some(w.canonical_revision().to_owned()),
        canonical_service: Some(w.canonical_service().to_owned()),
        canonical_revision: Some(w.canonical_revision().to_owned()),
    }
}
