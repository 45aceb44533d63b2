//! The admin endpoint, on loopback: `/config_dump` shows what the agent
//! believes (config version and contents, capture state); `/logging` reads
//! or changes the log filter (`/logging?level=debug`).

use std::sync::{Arc, RwLock};

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};
use serde::Serialize;

use crate::capture::CaptureStatus;
use crate::state::State;
use crate::telemetry::LogLevelHandle;
use mesh::certs::{CertManager, CertStatus};

#[derive(Clone, Debug)]
pub struct Admin {
    pub node: String,
    pub state: State,
    pub capture: Arc<RwLock<CaptureStatus>>,
    pub certs: CertManager,
    pub pool: mesh::hbone::pool::Pool,
    pub connections: Arc<crate::proxy::ProxyContext>,
    pub log_level: LogLevelHandle,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    node: &'a str,
    version: u64,
    config: &'a mesh::config::MeshConfig,
    capture: CaptureStatus,
    certificates: Vec<CertStatus>,
    pool: mesh::hbone::pool::PoolStats,
    /// Inbound connections that policy changes are checked against.
    live_inbound_connections: usize,
}

impl Admin {
    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }

    fn response(&self, req: &Request) -> Response {
        match req.uri().path() {
            "/config_dump" => self.config_dump(),
            "/logging" => mesh::logging::admin_response(&self.log_level, req.uri().query()),
            _ => http_server::text(http::StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn config_dump(&self) -> Response {
        let current = self.state.current();
        let capture = self.capture.read().map(|c| c.clone()).unwrap_or_default();
        http_server::json(&ConfigDump {
            node: &self.node,
            version: current.version,
            config: current.snapshot.config(),
            capture,
            certificates: self.certs.status(),
            pool: self.pool.stats(),
            live_inbound_connections: self.connections.connections.len(),
        })
    }
}
