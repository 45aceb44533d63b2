//! Wiring: every listener binds first (so a busy port fails the start at
//! once), then the waypoint fetches its certificate and waits for the
//! controller's first config, then serves until SIGTERM, and drains.

use std::sync::Arc;

use anyhow::Context as _;
use mesh::ca::CaClient;
use mesh::certs::CertManager;
use mesh::control::{ConfigFollower, ControlClient, RemoteCa};
use mesh::drain::{Drain, DrainOutcome};
use mesh::http_server::HttpServer;
use mesh::identity::Identity;
use mesh::logging::LogLevelHandle;
use mesh::tls::TrustBundle;
use tracing::{info, warn};

use crate::admin::{Admin, Readiness};
use crate::cli::Settings;
use crate::proxy::accept::Hbone;
use crate::proxy::{self, Context};
use crate::state::State;

pub async fn run(settings: Settings, log_level: LogLevelHandle) -> anyhow::Result<()> {
    let prometheus = crate::metrics::install()?;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let roots_pem = read(&settings.ca_cert)?;
    let trust = TrustBundle::from_pem(&settings.trust_domain, &roots_pem)?;
    let identity = Identity::new(&settings.trust_domain, &settings.namespace, settings.service_account());
    let client = ControlClient::new(
        settings.controller.clone(),
        trust.clone(),
        read(&settings.credential)?,
        settings.node.clone(),
    );
    let ca: Arc<dyn CaClient> = Arc::new(RemoteCa::new(client.clone(), roots_pem));
    let certs = CertManager::new(ca, trust, settings.cert_ttl);
    let state = State::default();
    let gateway = (settings.namespace.clone(), settings.gateway.clone());
    let proxy_settings =
        proxy::Settings { cluster_id: settings.cluster_id.clone(), connect_timeout: settings.connect_timeout };
    let ctx = Arc::new(Context::new(state.clone(), certs.clone(), identity.clone(), gateway, proxy_settings));

    let hbone = Hbone::new(settings.hbone_addr, ctx.clone())?;
    let readiness_server = HttpServer::new("readiness", settings.readiness_addr)?;
    let metrics_server = HttpServer::new("metrics", settings.metrics_addr)?;
    let admin_server = HttpServer::new("admin", settings.admin_addr)?;
    info!(hbone = %hbone.address(), %identity, "waypoint listening");

    let drain = Drain::new();
    let readiness = Readiness::default();
    drain.spawn(readiness.clone().serve(readiness_server, drain.clone()));
    drain.spawn(crate::metrics::serve(prometheus, metrics_server, drain.clone()));
    let admin = Admin { ctx: ctx.clone(), certs: certs.clone(), log_level };
    drain.spawn(admin.serve(admin_server, drain.clone()));

    certs.set_wanted(&[identity.clone()].into());
    drain.spawn(certs.clone().run(drain.clone()));
    let mut follower = ConfigFollower::new(client, identity.clone());
    info!(controller = %settings.controller, "waiting for the controller's first config");
    let version = state.apply(follower.first().await);
    info!(version, "config applied");
    let follow_state = state.clone();
    drain.spawn(follower.follow(drain.clone(), move |snapshot| follow_state.apply(snapshot)));
    if let Err(error) = certs.get(&identity).await {
        warn!(%error, "no certificate yet; retrying in the background");
    }
    let (reaper_ctx, reaper_drain) = (ctx.clone(), drain.clone());
    drain.spawn(async move { reaper_ctx.upstreams.run_reaper(reaper_drain).await });
    drain.spawn(hbone.run(drain.clone()));
    readiness.set_ready();
    info!("waypoint ready");

    let received = mesh::drain::shutdown_signal().await.context("signal handlers")?;
    info!(signal = received, "shutting down");
    readiness.set_draining();
    match drain.drain(settings.drain_grace).await {
        DrainOutcome::Complete => info!("drained"),
        DrainOutcome::TimedOut { remaining } => warn!(remaining, "drain grace expired; exiting anyway"),
    }
    Ok(())
}
