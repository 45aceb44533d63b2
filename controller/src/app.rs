//! Start-up order: bind every listener (failing fast), set up the CA and
//! the config source (a directory, or the API server), then serve; drain on
//! SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::ca::CertificateAuthority;
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
use crate::node_auth::{NodeAuth, TokenReviewer};
use crate::reconcile::Reconciler;
use crate::server::{ControlServer, Shared};
use crate::store::Store;

const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let prometheus = PrometheusBuilder::new().install_recorder().context("install the metrics recorder")?;
    crate::metrics::describe();
    let control = ControlServer::new(settings.listen)?;
    let metrics_server = HttpServer::new("metrics", settings.metrics_addr)?;

    let store = Store::new();
    let drain = Drain::new();
    let reconciler = Reconciler::new(&settings.root_namespace, &settings.cluster_domain, store.clone());
    let rejections = reconciler.rejections();
    let (ca, auth) = if settings.kubernetes {
        start_kubernetes(&settings, reconciler, store.clone(), &drain).await?
    } else {
        start_local(&settings, reconciler, &store, &drain)?
    };
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(authority::serving_config(&ca)?);
    let shared = Arc::new(Shared { store: store.clone(), ca, auth });
    drain.spawn(renew_serving_certificate(shared.clone(), tls_tx, drain.clone()));
    drain.spawn(control.run(shared.clone(), tls_rx, drain.clone()));
    drain.spawn(metrics_server.run(drain.clone(), move |request| {
        let (prometheus, store, rejections) = (prometheus.clone(), store.clone(), rejections.clone());
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

/// Local-directory mode: objects from files, the CA from a directory,
/// nodes proven by bootstrap tokens.
fn start_local(
    settings: &Settings,
    mut reconciler: Reconciler,
    store: &Store,
    drain: &Drain,
) -> anyhow::Result<(CertificateAuthority, NodeAuth)> {
    let (Some(config_dir), Some(ca_dir), Some(credentials)) =
        (&settings.config_dir, &settings.ca_dir, &settings.node_credentials)
    else {
        anyhow::bail!("local-directory mode needs --config-dir, --ca-dir and --node-credentials");
    };
    let ca = authority::load_or_create(ca_dir, &settings.trust_domain)?;
    let credentials = NodeCredentials::from_file(credentials)?;
    // Watch before the first read, so no change falls between them.
    let watch = DirWatch::new(config_dir).with_context(|| format!("cannot watch {}", config_dir.display()))?;
    let mut local = LocalDir::new(config_dir);
    let first = local.read().with_context(|| format!("cannot read {}", config_dir.display()))?;
    let (_, version) = reconciler.apply(first);
    // An empty directory is a valid (empty) mesh: publish it as version 1,
    // so agents are not left waiting for a first config.
    let version = if version == 0 { store.publish_initial() } else { version };
    info!(version, dir = %config_dir.display(), "local-directory mode");
    drain.spawn(local.follow(reconciler, watch, drain.clone()));
    Ok((ca, NodeAuth::Local(credentials)))
}

/// Kubernetes mode: watchers, the CA in a Secret, TokenReview, a leader
/// Lease for status writing.
async fn start_kubernetes(
    settings: &Settings,
    reconciler: Reconciler,
    store: Store,
    drain: &Drain,
) -> anyhow::Result<(CertificateAuthority, NodeAuth)> {
    let client = kube::Client::try_default().await.context("connect to the Kubernetes API")?;
    let ca = crate::kube_ca::load_or_create(&client, &settings.namespace, &settings.trust_domain).await?;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    drain.spawn(crate::leader::run(
        client.clone(),
        settings.namespace.clone(),
        settings.pod_name.clone(),
        leader_tx,
        drain.clone(),
    ));
    let reporter = kube::runtime::events::Reporter {
        controller: "ambit-controller".into(),
        instance: Some(settings.pod_name.clone()),
    };
    let root = ca.root_pem().to_owned();
    drain.spawn(crate::root_publisher::run(client.clone(), root, store, leader_rx.clone(), drain.clone()));
    let status = crate::status::StatusWriter::start(client.clone(), reporter, leader_rx, drain);
    drain.spawn(crate::kube_source::follow(client.clone(), reconciler, status, drain.clone()));
    info!(namespace = %settings.namespace, "Kubernetes mode");
    let reviewer = TokenReviewer {
        client,
        namespace: settings.namespace.clone(),
        service_account: mesh::control::ZTUNNEL_SERVICE_ACCOUNT.into(),
        audience: settings.token_audience.clone(),
        reviews: std::sync::Arc::default(),
    };
    Ok((ca, NodeAuth::Kubernetes(reviewer)))
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
