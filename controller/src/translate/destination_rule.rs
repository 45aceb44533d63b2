//! DestinationRule to a destination policy: subsets, and per host, subset
//! and port the load balancer, connection pool and outlier detection.

use mesh::config::routing::{self, DestinationPolicy, LoadBalancer};

use super::routing::{Translated, duration, name_of, qualify, refuse_unsupported};
use crate::crds::destination_rule as istio;

pub fn destination_rule(object: &istio::DestinationRule, domain: &str) -> Translated<DestinationPolicy> {
    let (namespace, name) = name_of(&object.metadata)?;
    let spec = &object.spec;
    refuse_unsupported("spec", &crate::crds::networking::set_fields(&[("workloadSelector", &spec.workload_selector)]))?;
    if spec.host.is_empty() {
        return Err("spec.host is empty".into());
    }
    let mut subsets = Vec::new();
    for subset in &spec.subsets {
        if subset.name.is_empty() || subsets.iter().any(|s: &routing::Subset| s.name == subset.name) {
            return Err(format!("subset name {:?} is empty or repeated", subset.name));
        }
        let traffic_policy = traffic_policy(subset.traffic_policy.as_ref())
            .map_err(|e| format!("subset {}: trafficPolicy.{e}", subset.name))?;
        subsets.push(routing::Subset { name: subset.name.clone(), labels: subset.labels.clone(), traffic_policy });
    }
    let traffic_policy = traffic_policy(spec.traffic_policy.as_ref()).map_err(|e| format!("trafficPolicy.{e}"))?;
    Ok(Some(DestinationPolicy {
        origin: format!("DestinationRule {namespace}/{name}"),
        host: qualify(&spec.host, &namespace, domain),
        subsets,
        traffic_policy,
    }))
}

fn traffic_policy(policy: Option<&istio::TrafficPolicy>) -> Result<routing::TrafficPolicy, String> {
    let Some(policy) = policy else { return Ok(routing::TrafficPolicy::default()) };
    let mut port_level = Vec::new();
    for (index, settings) in policy.port_level_settings.iter().enumerate() {
        let at = |e: String| format!("portLevelSettings[{index}].{e}");
        let number = settings.port.as_ref().map(|p| p.number).ok_or_else(|| at("port.number is missing".into()))?;
        let port = u16::try_from(number)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| at(format!("port {number} is out of range")))?;
        if port_level.iter().any(|p: &routing::PortTrafficPolicy| p.port == port) {
            return Err(at(format!("port {port} is repeated")));
        }
        let parts = Parts {
            load_balancer: settings.load_balancer.as_ref(),
            connection_pool: settings.connection_pool.as_ref(),
            outlier_detection: settings.outlier_detection.as_ref(),
            tls: settings.tls.as_ref(),
        };
        port_level.push(routing::PortTrafficPolicy { port, policy: parts.translate().map_err(at)? });
    }
    let parts = Parts {
        load_balancer: policy.load_balancer.as_ref(),
        connection_pool: policy.connection_pool.as_ref(),
        outlier_detection: policy.outlier_detection.as_ref(),
        tls: policy.tls.as_ref(),
    };
    Ok(routing::TrafficPolicy { port_level, ..parts.translate()? })
}

/// The fields a traffic policy and a port's settings have in common.
struct Parts<'a> {
    load_balancer: Option<&'a istio::LoadBalancerSettings>,
    connection_pool: Option<&'a istio::ConnectionPoolSettings>,
    outlier_detection: Option<&'a istio::OutlierDetection>,
    tls: Option<&'a istio::ClientTlsSettings>,
}

impl Parts<'_> {
    fn translate(&self) -> Result<routing::TrafficPolicy, String> {
        if let Some(tls) = self.tls {
            check_tls(tls)?;
        }
        Ok(routing::TrafficPolicy {
            load_balancer: self.load_balancer.map(load_balancer).transpose()?,
            connection_pool: self.connection_pool.map(connection_pool).transpose()?,
            outlier_detection: self.outlier_detection.map(outlier_detection).transpose()?,
            port_level: Vec::new(),
        })
    }
}

/// `ISTIO_MUTUAL` is what mesh traffic always is (HBONE); an unset mode
/// is Istio's `DISABLE`, which the mesh cannot honour either.
fn check_tls(tls: &istio::ClientTlsSettings) -> Result<(), String> {
    match tls.mode.as_deref() {
        Some("ISTIO_MUTUAL") if tls.other.is_empty() => Ok(()),
        Some("ISTIO_MUTUAL") => Err(format!(
            "tls: {} not supported by ambit with ISTIO_MUTUAL (the mesh's own certificates are used)",
            tls.other.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
        mode => Err(format!(
            "tls.mode {}: only ISTIO_MUTUAL is supported; mesh traffic is always mutual TLS over HBONE, \
             and TLS origination to other destinations (egress) is not implemented",
            mode.unwrap_or("(unset, meaning DISABLE)")
        )),
    }
}

fn load_balancer(settings: &istio::LoadBalancerSettings) -> Result<LoadBalancer, String> {
    let unsupported = crate::crds::networking::set_fields(&[
        ("consistentHash", &settings.consistent_hash),
        ("localityLbSetting", &settings.locality_lb_setting),
        ("warmupDurationSecs", &settings.warmup_duration_secs),
        ("warmup", &settings.warmup),
    ]);
    refuse_unsupported("loadBalancer", &unsupported)?;
    match settings.simple.as_deref() {
        None | Some("UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN") => Ok(LoadBalancer::LeastRequest),
        Some("ROUND_ROBIN") => Ok(LoadBalancer::RoundRobin),
        Some("RANDOM") => Ok(LoadBalancer::Random),
        Some(other) => {
            Err(format!("loadBalancer.simple {other:?} is not supported (LEAST_REQUEST, ROUND_ROBIN or RANDOM)"))
        }
    }
}

fn count(field: &str, value: Option<i32>) -> Result<Option<u32>, String> {
    value.map(|v| u32::try_from(v).map_err(|_| format!("{field} {v} is negative"))).transpose()
}

fn connection_pool(pool: &istio::ConnectionPoolSettings) -> Result<routing::ConnectionPool, String> {
    let (tcp, http) = (pool.tcp.clone().unwrap_or_default(), pool.http.clone().unwrap_or_default());
    Ok(routing::ConnectionPool {
        max_connections: count("connectionPool.tcp.maxConnections", tcp.max_connections)?,
        connect_timeout: duration("connectionPool.tcp.connectTimeout", tcp.connect_timeout.as_ref())?,
        http1_max_pending_requests: count("http1MaxPendingRequests", http.http1_max_pending_requests)?,
        http2_max_requests: count("http2MaxRequests", http.http2_max_requests)?,
        max_requests_per_connection: count("maxRequestsPerConnection", http.max_requests_per_connection)?,
        max_retries: count("maxRetries", http.max_retries)?,
        idle_timeout: duration("connectionPool.http.idleTimeout", http.idle_timeout.as_ref())?,
    })
}

fn outlier_detection(o: &istio::OutlierDetection) -> Result<routing::OutlierDetection, String> {
    let max_ejection_percent = o
        .max_ejection_percent
        .map(|p| u32::try_from(p).ok().filter(|p| *p <= 100).ok_or(format!("maxEjectionPercent {p} is not 0..100")))
        .transpose()?;
    // Istio's meaning of the deprecated `consecutiveErrors`: that many
    // gateway errors eject, 5xx alone do not; the current fields, when set,
    // have the last word.
    let deprecated = o
        .consecutive_errors
        .map(|n| u32::try_from(n).map_err(|_| format!("outlierDetection.consecutiveErrors {n} is negative")))
        .transpose()?
        .filter(|n| *n > 0);
    Ok(routing::OutlierDetection {
        consecutive_5xx_errors: o.consecutive_5xx_errors.or(deprecated.map(|_| 0)),
        consecutive_gateway_errors: o.consecutive_gateway_errors.or(deprecated),
        interval: duration("outlierDetection.interval", o.interval.as_ref())?,
        base_ejection_time: duration("outlierDetection.baseEjectionTime", o.base_ejection_time.as_ref())?,
        max_ejection_percent,
    })
}
