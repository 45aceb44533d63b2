//! The controller's own metrics (Prometheus, on its metrics port).

pub const CONNECTED_AGENTS: &str = "ambit_controller_connected_agents";
pub const PUSH_SECONDS: &str = "ambit_controller_push_seconds";
/// Bytes of config updates handed to agents, by kind (full or delta).
pub const UPDATE_BYTES: &str = "ambit_controller_update_bytes_total";
pub const CONFIG_VERSION: &str = "ambit_controller_config_version";
pub const RECONCILE_ERRORS: &str = "ambit_controller_reconcile_errors_total";
pub const CERTIFICATES: &str = "ambit_controller_certificates_total";
/// TLS connections agents and waypoints have opened to the control endpoint.
pub const CONNECTIONS: &str = "ambit_controller_connections_total";

pub fn describe() {
    metrics::describe_gauge!(CONNECTED_AGENTS, "Agents following the config stream right now.");
    metrics::describe_histogram!(
        PUSH_SECONDS,
        metrics::Unit::Seconds,
        "From when an agent could first have had a config version (its publication, or the agent's connection if \
         later) to its hand-over to that agent's connection."
    );
    metrics::describe_counter!(UPDATE_BYTES, metrics::Unit::Bytes, "Config update bytes sent to agents, by kind.");
    metrics::describe_gauge!(CONFIG_VERSION, "The config version in force.");
    metrics::describe_counter!(RECONCILE_ERRORS, "Objects or configs rejected, by kind.");
    metrics::describe_counter!(CERTIFICATES, "Certificate requests, by result (issued or refused).");
    metrics::describe_counter!(CONNECTIONS, "TLS connections agents and waypoints opened to the control endpoint.");
    metrics::describe_counter!(
        crate::kube_source::WATCH_EVENTS,
        "Watch events of status-bearing kinds, by whether they changed what the controller reads."
    );
    metrics::describe_counter!(crate::status::STATUS_RETRIES, "Status writes retried after failing, by kind.");
    metrics::describe_counter!(crate::server::REFUSED, "Connections refused at a limit or a TLS deadline.");
    metrics::gauge!("istio_build", "component" => "controller", "tag" => env!("CARGO_PKG_VERSION")).set(1.0);
}
