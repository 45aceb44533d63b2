//! Start-up order: bind every listener (failing fast), load or create the
//! CA, read the sources once and publish, then serve; drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::dir_watch::DirWatch;
use mesh::drain::Drain;
use mesh::http_server::{self, HttpServer};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::Settings;
use crate::authority::{self, SERVING_TTL};
use crate::credentials::NodeCredentials;
use crate::local_dir::LocalDir;
use crate::reconcile::Reconciler;
use crate::server::{ControlServer, Shared};
use crate::store::Store;

const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let prometheus = PrometheusBuilder::new().install_recorder().context("install the metrics recorder")?;
    crate::metrics::describe();
    let control = ControlServer::new(settings.listen)?;
    let metrics_server = HttpServer::new("metrics", settings.metrics_addr)?;

    let (Some(config_dir), Some(ca_dir), Some(credentials)) =
        (&settings.config_dir, &settings.ca_dir, &settings.node_credentials)
    else {
        anyhow::bail!("local-directory mode needs --config-dir, --ca-dir and --node-credentials");
    };
    let ca = authority::load_or_create(ca_dir, &settings.trust_domain)?;
    let credentials = NodeCredentials::from_file(credentials)?;
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(authority::serving_config(&ca)?);
    let store = Store::new();

    // Watch before the first read, so no change falls between them.
    let watch = DirWatch::new(config_dir).with_context(|| format!("cannot watch {}", config_dir.display()))?;
    let mut local = LocalDir::new(config_dir);
    let mut reconciler = Reconciler::new(&settings.root_namespace, store.clone());
    let first = local.read().with_context(|| format!("cannot read {}", config_dir.display()))?;
    let (_, version) = reconciler.apply(first);
    let reconciler_rejections = reconciler.rejections();
    // An empty directory is a valid (empty) mesh: publish it as version 1,
    // so agents are not left waiting for a first config.
    let version = if version == 0 { store.publish_initial() } else { version };
    info!(version, dir = %config_dir.display(), "local-directory mode");

    let shared = Arc::new(Shared { store: store.clone(), ca, credentials });
    let drain = Drain::new();
    drain.spawn(local.follow(reconciler, watch, drain.clone()));
    drain.spawn(renew_serving_certificate(shared.clone(), tls_tx, drain.clone()));
    drain.spawn(control.run(shared.clone(), tls_rx, drain.clone()));
    let ready_store = store.clone();
    let rejections = reconciler_rejections;
    drain.spawn(metrics_server.run(drain.clone(), move |request| {
        let (prometheus, store, rejections) = (prometheus.clone(), ready_store.clone(), rejections.clone());
        async move {
            match request.uri().path() {
                "/metrics" => http_server::text(http::StatusCode::OK, prometheus.render()),
                // Local mode's stand-in for status conditions: what is rejected, and why.
                "/status" => http_server::json(&serde_json::json!({
                    "version": store.current().version,
                    "rejected": *rejections.borrow(),
                })),
                "/ready" if store.current().version > 0 => http_server::text(http::StatusCode::OK, "ready\n"),
                "/ready" => http_server::text(http::StatusCode::SERVICE_UNAVAILABLE, "no config yet\n"),
                _ => http_server::text(http::StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    }));

    signal(SignalKind::terminate())?.recv().await;
    info!("draining");
    drain.drain(DRAIN_GRACE).await;
    Ok(())
}

/// Re-issues the controller's serving certificate at half its lifetime.
async fn renew_serving_certificate(
    shared: Arc<Shared>,
    tls: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    drain: Drain,
) {
    loop {
        tokio::select! {
            () = drain.signaled() => return,
            () = tokio::time::sleep(SERVING_TTL / 2) => {}
        }
        match authority::serving_config(&shared.ca) {
            Ok(config) => drop(tls.send_replace(config)),
            Err(error) => error!(%error, "cannot renew the controller's serving certificate"),
        }
    }
}
