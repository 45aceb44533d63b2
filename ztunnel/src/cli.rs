//! Command line and environment: the only place that reads either. Produces
//! a typed [`Settings`], logged once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Clone, Debug, Parser, Serialize)]
#[command(version, about = "ambit's per-node agent: captures enrolled pods' TCP traffic with eBPF")]
pub struct Settings {
    /// This node's name, as pods' `node` field names it (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    /// Mesh config file (YAML). Reloaded whenever it changes.
    #[arg(long, env = "AMBIT_CONFIG")]
    pub config: PathBuf,

    /// Outbound listener: receives enrolled pods' captured connections.
    /// Loopback, so pods cannot reach it except through capture.
    #[arg(long, env = "AMBIT_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,

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

    /// How long established connections may run on after SIGTERM.
    #[arg(long, env = "AMBIT_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,

    /// Upper bound on connecting to an upstream.
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,

    /// Log filter, `tracing` EnvFilter syntax; changeable at run time through
    /// the admin endpoint.
    #[arg(long, env = "AMBIT_LOG", default_value = "info")]
    pub log_level: String,

    #[arg(long, env = "AMBIT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

impl Settings {
    pub fn bpf_pin_dir(&self) -> PathBuf {
        self.bpf_pin_dir.clone().unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ambit").join(&self.node))
    }

    /// The ports this agent listens on: captured connections to them are refused.
    pub fn own_ports(&self) -> Vec<u16> {
        [self.outbound_addr, self.readiness_addr, self.metrics_addr, self.admin_addr]
            .iter()
            .map(SocketAddr::port)
            .collect()
    }
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::try_parse_from(["ztunnel", "--node", "n1", "--config", "/c.yaml"]).unwrap();
        assert_eq!(s.outbound_addr, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(s.bpf_pin_dir(), PathBuf::from("/sys/fs/bpf/ambit/n1"));
        assert_eq!(s.drain_grace, Duration::from_secs(5));
        assert_eq!(s.own_ports(), [15001, 15021, 15020, 15000]);
        let s = Settings::try_parse_from(["ztunnel", "--node", "n1", "--config", "/c.yaml", "--drain-grace", "250ms"])
            .unwrap();
        assert_eq!(s.drain_grace, Duration::from_millis(250));
    }

    #[test]
    fn bad_duration_is_named() {
        let err =
            Settings::try_parse_from(["ztunnel", "--node", "n1", "--config", "/c.yaml", "--connect-timeout", "soon"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("--connect-timeout"), "{err}");
        assert!(err.contains("soon"), "{err}");
    }
}
