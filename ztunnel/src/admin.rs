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
            "/logging" => self.logging(req.uri().query()),
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

    fn logging(&self, query: Option<&str>) -> Response {
        let level = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("level="));
        match level {
            None => http_server::text(http::StatusCode::OK, format!("{}\n", self.log_level.current())),
            Some(level) => match self.log_level.set(level) {
                Ok(()) => http_server::text(http::StatusCode::OK, format!("log level set to {level}\n")),
                Err(e) => http_server::text(http::StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
        }
    }
}
