//! `/healthz/ready`: 200 once the agent can do its job (config loaded,
//! capture attached, a certificate for every local enrolled identity), 503
//! before that and while draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};

use crate::identity::CertManager;

#[derive(Clone, Debug)]
pub struct Readiness {
    captured: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    certs: CertManager,
}

impl Readiness {
    pub fn new(certs: CertManager) -> Self {
        Self { captured: Arc::default(), draining: Arc::default(), certs }
    }

    pub fn set_captured(&self) {
        self.captured.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn response(&self, req: &Request) -> Response {
        if req.uri().path() != "/healthz/ready" {
            return http_server::text(http::StatusCode::NOT_FOUND, "not found\n");
        }
        if self.draining.load(Ordering::SeqCst) {
            http_server::text(http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !self.captured.load(Ordering::SeqCst) {
            http_server::text(http::StatusCode::SERVICE_UNAVAILABLE, "capture not attached\n")
        } else if !self.certs.all_ready() {
            http_server::text(http::StatusCode::SERVICE_UNAVAILABLE, "certificates not ready\n")
        } else {
            http_server::text(http::StatusCode::OK, "ready\n")
        }
    }

    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }
}
