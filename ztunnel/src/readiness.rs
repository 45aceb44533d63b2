//! `/healthz/ready`: 200 once the agent can do its job (config loaded,
//! capture attached, a certificate for every local enrolled identity it
//! started with), 503 before that and while draining.
//!
//! Readiness is about start-up, as Istio's ztunnel reports it: once ready,
//! the agent stays ready until it drains. A pod that appears later needs a
//! certificate too, but an agent that is fetching one is still serving
//! every other pod; reporting it unready would only make a rolling update
//! wait, or a load balancer drop a healthy node, each time a pod starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer, Request, Response};

use mesh::certs::CertManager;

#[derive(Clone, Debug)]
pub struct Readiness {
    captured: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    /// Set the first time every condition held; never cleared.
    ready_once: Arc<AtomicBool>,
    certs: CertManager,
}

impl Readiness {
    pub fn new(certs: CertManager) -> Self {
        Self { captured: Arc::default(), draining: Arc::default(), ready_once: Arc::default(), certs }
    }

    pub fn set_captured(&self) {
        self.captured.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The status the endpoint answers with, and why.
    fn status(&self) -> (StatusCode, &'static str) {
        if self.draining.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if self.ready_once.load(Ordering::SeqCst) {
            return (StatusCode::OK, "ready\n");
        }
        if !self.captured.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "capture not attached\n");
        }
        if !self.certs.all_ready() {
            return (StatusCode::SERVICE_UNAVAILABLE, "certificates not ready\n");
        }
        self.ready_once.store(true, Ordering::SeqCst);
        (StatusCode::OK, "ready\n")
    }

    fn response(&self, req: &Request) -> Response {
        if req.uri().path() != "/healthz/ready" {
            return http_server::text(StatusCode::NOT_FOUND, "not found\n");
        }
        let (status, body) = self.status();
        http_server::text(status, body)
    }

    pub async fn serve(self, server: HttpServer, drain: Drain) {
        server.run(drain, move |req| std::future::ready(self.response(&req))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use mesh::ca::{CaClient, CertificateAuthority};
    use mesh::identity::Identity;
    use mesh::tls::TrustBundle;

    use super::*;

    #[tokio::test]
    async fn a_new_pod_does_not_make_a_ready_agent_unready() {
        let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let trust = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
        let ca: Arc<dyn CaClient> = Arc::new(ca);
        let certs = CertManager::new(ca, trust, Duration::from_secs(3600));
        let web = Identity::new("cluster.local", "shop", "web");
        certs.set_wanted(&HashSet::from([web.clone()]));
        let readiness = Readiness::new(certs.clone());
        assert_eq!(readiness.status().0, StatusCode::SERVICE_UNAVAILABLE, "capture not attached yet");
        readiness.set_captured();
        assert_eq!(readiness.status().0, StatusCode::SERVICE_UNAVAILABLE, "no certificate yet");
        certs.get(&web).await.unwrap();
        assert_eq!(readiness.status().0, StatusCode::OK);
        // A pod with a new identity arrives; its certificate is not there yet.
        let db = Identity::new("cluster.local", "shop", "db");
        certs.set_wanted(&HashSet::from([web, db]));
        assert!(!certs.all_ready());
        assert_eq!(readiness.status().0, StatusCode::OK, "readiness must not flap");
        readiness.set_draining();
        assert_eq!(readiness.status(), (StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
    }
}
