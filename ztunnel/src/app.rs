//! Wires the agent together and owns its lifetime: bind every listener
//! (failing fast), prepare capture, serve, and drain on SIGTERM.

use std::sync::{Arc, RwLock};

use ambit_ebpf_common::{LISTENER_HBONE, LISTENER_INBOUND_PLAIN, LISTENER_OUTBOUND};
use anyhow::Context as _;
use mesh::ca::{CaClient, CertificateAuthority};
use mesh::config::Snapshot;
use mesh::control::{ConfigFollower, ControlClient, RemoteCa, ztunnel_identity};
use mesh::drain::{Drain, DrainOutcome};
use mesh::hbone::pool::{Pool, PoolSettings};
use mesh::hbone::server::ServerLimits;
use mesh::http_server::HttpServer;
use mesh::tls::TrustBundle;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::capture::{Capture, CaptureStatus};
use crate::cli::Settings;
use crate::cni::server::CniServer;
use crate::config_file::{self, ConfigWatcher};
use crate::proxy::inbound::Inbound;
use crate::proxy::inbound_plain::InboundPlain;
use crate::proxy::outbound::Outbound;
use crate::proxy::{ConnectionLimits, ContextSettings, HboneDialer, ProxyContext};
use crate::readiness::Readiness;
use crate::state::State;
use crate::sync::Syncer;
use crate::telemetry::LogLevelHandle;
use mesh::certs::CertManager;

pub async fn run(settings: Settings, log_level: LogLevelHandle) -> anyhow::Result<()> {
    info!(settings = %serde_json::to_string(&settings)?, "starting ztunnel");
    let prometheus = crate::metrics::install()?;
    let (source, certs) = config_source(&settings).await?;
    let state = State::new(source.initial);
    let pool = hbone_pool(&settings, &certs, &state);
    let ctx = ProxyContext::new(context_settings(&settings), state.clone(), certs.clone(), pool.clone());
    let listeners = Listeners::bind(&settings, &ctx)?;
    let (capture, status) = start_capture(&settings, &listeners, &ctx).await?;
    prefetch_certificates(&certs, &state.current().snapshot, &settings).await;
    let readiness = Readiness::new(certs.clone());
    readiness.set_captured();

    let drain = Drain::new();
    let admin = Admin {
        node: settings.node.clone(),
        state: state.clone(),
        capture: status.clone(),
        certs: certs.clone(),
        pool: pool.clone(),
        connections: ctx.clone(),
        log_level,
    };
    let (cni_calls, cni_requests) = tokio::sync::mpsc::channel(crate::cni::server::MAX_CONCURRENT);
    listeners.serve(&drain, &readiness, prometheus, capture.counters(), admin, cni_calls);
    drain.spawn(certs.run(drain.clone()));
    drain.spawn(pool.run_reaper(drain.clone()));
    match source.follow {
        Follow::File(watcher) => drain.spawn(watcher.run(state, drain.clone())),
        Follow::Controller(controller) => {
            drain.spawn(controller.follow(drain.clone(), move |snapshot| state.apply(snapshot)))
        }
    };
    if let (Some(bin_dir), Some(conf_dir)) = (&settings.cni_bin_dir, &settings.cni_conf_dir) {
        crate::cni::install::install_binary(bin_dir)?;
        drain.spawn(crate::cni::install::keep_chained(conf_dir.clone(), settings.cni_state_dir.clone(), drain.clone()));
    }
    let syncer = Syncer::new(capture, ctx, status, settings.clone());
    drain.spawn(syncer.run(cni_requests, drain.clone()));
    info!(node = %settings.node, "ready");

    let received = mesh::drain::shutdown_signal().await.context("signal handlers")?;
    info!(signal = received, "shutting down");
    readiness.set_draining();
    info!(grace = ?settings.drain_grace, active = drain.active(), "draining");
    match drain.drain(settings.drain_grace).await {
        DrainOutcome::Complete => info!("drained"),
        DrainOutcome::TimedOut { remaining } => warn!(remaining, "drain grace expired; closing remaining connections"),
    }
    Ok(())
}

fn hbone_pool(settings: &Settings, certs: &CertManager, state: &State) -> Pool {
    let dialer = HboneDialer {
        certs: certs.clone(),
        state: state.clone(),
        node: settings.node.clone(),
        tcp: settings.tcp_options(),
    };
    let pool = PoolSettings {
        streams_per_connection: settings.pool_streams,
        idle_timeout: settings.pool_idle_timeout,
        dial_timeout: settings.connect_timeout,
        answer_timeout: settings.connect_timeout,
    };
    Pool::new(dialer, pool)
}

fn context_settings(settings: &Settings) -> ContextSettings {
    let limits = |per_peer| ConnectionLimits { total: settings.max_connections, per_peer };
    ContextSettings {
        node: settings.node.clone(),
        trust_domain: settings.trust_domain.clone(),
        cluster_id: settings.cluster_id.clone(),
        own_ports: settings.own_ports(),
        connect_timeout: settings.connect_timeout,
        tcp: settings.tcp_options(),
        hbone_limits: ServerLimits {
            handshake_timeout: settings.connect_timeout,
            idle_timeout: settings.hbone_idle_timeout,
            ..ServerLimits::default()
        },
        connection_limits: limits(settings.max_connections_per_peer),
        hbone_connection_limits: limits(settings.max_hbone_connections_per_peer),
    }
}

/// Every listener, bound before anything is served, so that a taken port
/// fails start-up at once.
struct Listeners {
    outbound: Outbound,
    inbound: Inbound,
    inbound_plain: InboundPlain,
    readiness: HttpServer,
    metrics: HttpServer,
    admin: HttpServer,
    cni: CniServer,
}

impl Listeners {
    fn bind(settings: &Settings, ctx: &Arc<ProxyContext>) -> anyhow::Result<Self> {
        let listeners = Self {
            outbound: Outbound::new(settings.outbound_addr, ctx.clone())?,
            inbound: Inbound::new(settings.hbone_addr, ctx.clone())?,
            inbound_plain: InboundPlain::new(settings.inbound_plain_addr, ctx.clone())?,
            readiness: HttpServer::new("readiness", settings.readiness_addr)?,
            metrics: HttpServer::new("metrics", settings.metrics_addr)?,
            admin: HttpServer::new("admin", settings.admin_addr)?,
            cni: CniServer::new(&settings.cni_state_dir)?,
        };
        info!(
            outbound = %listeners.outbound.address(),
            hbone = %listeners.inbound.address(),
            inbound_plaintext = %listeners.inbound_plain.address(),
            readiness = %listeners.readiness.address(),
            metrics = %listeners.metrics.address(),
            admin = %listeners.admin.address(),
            cni = %listeners.cni.address().display(),
            "listeners bound"
        );
        Ok(listeners)
    }

    fn serve(
        self,
        drain: &Drain,
        readiness: &Readiness,
        prometheus: PrometheusHandle,
        drops: crate::capture::Counters,
        admin: Admin,
        cni_calls: tokio::sync::mpsc::Sender<crate::cni::server::CniCall>,
    ) {
        drain.spawn(self.outbound.run(drain.clone()));
        drain.spawn(self.inbound.run(drain.clone()));
        drain.spawn(self.inbound_plain.run(drain.clone()));
        drain.spawn(readiness.clone().serve(self.readiness, drain.clone()));
        drain.spawn(crate::metrics::serve(self.metrics, prometheus, drops, drain.clone()));
        drain.spawn(admin.serve(self.admin, drain.clone()));
        drain.spawn(self.cni.run(cni_calls, drain.clone()));
    }
}

/// Loads the capture programs, hands them the data-path listeners and
/// applies the initial config.
async fn start_capture(
    settings: &Settings,
    listeners: &Listeners,
    ctx: &ProxyContext,
) -> anyhow::Result<(Capture, Arc<RwLock<CaptureStatus>>)> {
    let mut capture = Capture::new(&settings.node, &settings.bpf_pin_dir()).await.context("preparing capture")?;
    capture.register_listener(LISTENER_OUTBOUND, listeners.outbound.socket())?;
    capture.register_listener(LISTENER_HBONE, listeners.inbound.socket())?;
    capture.register_listener(LISTENER_INBOUND_PLAIN, listeners.inbound_plain.socket())?;
    let status = capture.sync(&ctx.state.current().snapshot).await.context("initial capture sync")?;
    ctx.set_local_addresses(capture.local_addresses().clone());
    Ok((capture, Arc::new(RwLock::new(status))))
}

/// Where config comes from after the first version.
enum Follow {
    File(ConfigWatcher),
    Controller(Box<ConfigFollower>),
}

struct ConfigSource {
    initial: Snapshot,
    follow: Follow,
}

/// Static mode: config from a file and a CA from key files. Controller
/// mode: both from the controller (waiting for its first config).
async fn config_source(settings: &Settings) -> anyhow::Result<(ConfigSource, CertManager)> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let roots_pem = read(&settings.ca_cert)?;
    let trust = TrustBundle::from_pem(&settings.trust_domain, &roots_pem)?;
    match (&settings.config, &settings.ca_key, &settings.controller, &settings.node_credential) {
        (Some(config), Some(ca_key), _, _) => {
            let ca = CertificateAuthority::from_pem(&settings.trust_domain, &roots_pem, &read(ca_key)?).with_context(
                || format!("--ca-cert {} with --ca-key {}", settings.ca_cert.display(), ca_key.display()),
            )?;
            let ca: Arc<dyn CaClient> = Arc::new(Arc::new(ca));
            let loaded = config_file::load(config)?;
            let watcher = ConfigWatcher::new(config, loaded.text)?;
            let source = ConfigSource { initial: loaded.snapshot, follow: Follow::File(watcher) };
            Ok((source, CertManager::new(ca, trust, settings.cert_ttl)))
        }
        (_, _, Some(addr), Some(credential)) => {
            let client = ControlClient::new(addr.clone(), trust.clone(), read(credential)?, settings.node.clone());
            let ca: Arc<dyn CaClient> = Arc::new(RemoteCa::new(client.clone(), roots_pem));
            let mut controller = ConfigFollower::new(client, ztunnel_identity(&settings.trust_domain));
            info!(%addr, "waiting for the controller's first config");
            let initial = controller.first().await;
            let source = ConfigSource { initial, follow: Follow::Controller(Box::new(controller)) };
            Ok((source, CertManager::new(ca, trust, settings.cert_ttl)))
        }
        _ => anyhow::bail!("either --config with --ca-key, or --controller with --node-credential, is required"),
    }
}

/// Gets every local identity's certificate before reporting ready; failures
/// are retried by the certificate manager and keep readiness false.
async fn prefetch_certificates(certs: &CertManager, snapshot: &Snapshot, settings: &Settings) {
    let wanted = crate::sync::local_identities(snapshot, settings);
    certs.set_wanted(&wanted);
    for identity in &wanted {
        if let Err(error) = certs.get(identity).await {
            warn!(%error, "certificate prefetch failed; will retry");
        }
    }
}
