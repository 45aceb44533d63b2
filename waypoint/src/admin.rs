//! Node-local endpoints besides metrics: readiness (`:15021/healthz/ready`,
//! 200 once the waypoint has its certificate and a config, 503 before and
//! while draining) and admin on loopback (`/config_dump`: the config
//! version and contents, certificate, upstream pool; `/logging`: read or
//! change the log filter, `?level=debug`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use mesh::certs::{CertManager, CertStatus};
use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};
use mesh::logging::LogLevelHandle;
use serde::Serialize;

use crate::proxy::Context;

#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn response(&self, req: &Request) -> Response {
        if req.uri().path() != "/healthz/ready" {
            return http_server::text(StatusCode::NOT_FOUND, "not found\n");
        }
        if self.draining.load(Ordering::SeqCst) {
            return http_server::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if !self.ready.load(Ordering::SeqCst) {
            return http_server::text(StatusCode::SERVICE_UNAVAILABLE, "waiting for config and certificate\n");
        }
        http_server::text(StatusCode::OK, "ready\n")
    }

    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }
}

#[derive(Clone, Debug)]
pub struct Admin {
    pub ctx: Arc<Context>,
    pub certs: CertManager,
    pub log_level: LogLevelHandle,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    gateway: String,
    identity: String,
    version: u64,
    config: &'a mesh::config::MeshConfig,
    certificates: Vec<CertStatus>,
    pool: mesh::hbone::pool::PoolStats,
}

impl Admin {
    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }

    fn response(&self, req: &Request) -> Response {
        match req.uri().path() {
            "/config_dump" => {
                let table = self.ctx.state.current();
                http_server::json(&ConfigDump {
                    gateway: format!("{}/{}", self.ctx.gateway.0, self.ctx.gateway.1),
                    identity: self.ctx.identity.to_string(),
                    version: table.version,
                    config: table.snapshot.config(),
                    certificates: self.certs.status(),
                    pool: self.ctx.pool_stats(),
                })
            }
            "/logging" => mesh::logging::admin_response(&self.log_level, req.uri().query()),
            _ => http_server::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
