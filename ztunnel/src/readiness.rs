//! `/healthz/ready`: 200 once the agent can do its job (config loaded and
//! capture attached), 503 before that and while draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};

#[derive(Clone, Debug, Default)]
pub struct Readiness {
    captured: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
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
        } else {
            http_server::text(http::StatusCode::OK, "ready\n")
        }
    }

    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }
}
