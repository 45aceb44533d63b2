//! Wires the agent together and owns its lifetime: bind every listener
//! (failing fast), prepare capture, serve, and drain on SIGTERM.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use mesh::drain::{Drain, DrainOutcome};
use mesh::http_server::HttpServer;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::admin::Admin;
use crate::capture::{self, Capture, CaptureStatus};
use crate::cli::Settings;
use crate::config_file::{self, ConfigWatcher};
use crate::proxy::ProxyContext;
use crate::proxy::outbound::Outbound;
use crate::readiness::Readiness;
use crate::state::State;
use crate::telemetry::LogLevelHandle;

/// Capture re-reads interfaces and routes this often even without config
/// changes, to pick up pod veths created after the pod's config arrived.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(settings: Settings, log_level: LogLevelHandle) -> anyhow::Result<()> {
    info!(settings = %serde_json::to_string(&settings)?, "starting ztunnel");
    let prometheus = crate::metrics::install()?;
    let loaded = config_file::load(&settings.config)?;
    let watcher = ConfigWatcher::new(&settings.config, loaded.text)?;
    let state = State::new(loaded.snapshot);
    let drain = Drain::new();
    let ctx = ProxyContext::new(state.clone(), settings.own_ports(), settings.connect_timeout);

    let outbound = Outbound::new(settings.outbound_addr, ctx.clone())?;
    let readiness_server = HttpServer::new("readiness", settings.readiness_addr)?;
    let metrics_server = HttpServer::new("metrics", settings.metrics_addr)?;
    let admin_server = HttpServer::new("admin", settings.admin_addr)?;

    let mut capture = Capture::new(&settings.node, &settings.bpf_pin_dir()).await.context("preparing capture")?;
    capture.register_listener(capture::LISTENER_OUTBOUND, outbound.socket())?;
    let status = capture.sync(&state.current().snapshot).await.context("initial capture sync")?;
    ctx.set_local_addresses(capture.local_addresses().clone());
    let status = Arc::new(RwLock::new(status));
    let readiness = Readiness::default();
    readiness.set_captured();

    drain.spawn(outbound.run(drain.clone()));
    drain.spawn(readiness.clone().serve(readiness_server, drain.clone()));
    drain.spawn(crate::metrics::serve(metrics_server, prometheus, drain.clone()));
    let admin = Admin { node: settings.node.clone(), state: state.clone(), capture: status.clone(), log_level };
    drain.spawn(admin.serve(admin_server, drain.clone()));
    drain.spawn(watcher.run(state.clone(), drain.clone()));
    drain.spawn(sync_capture(capture, state, ctx, status, drain.clone()));
    info!(node = %settings.node, "ready");

    wait_for_shutdown_signal().await?;
    readiness.set_draining();
    info!(grace = ?settings.drain_grace, active = drain.active(), "draining");
    match drain.drain(settings.drain_grace).await {
        DrainOutcome::Complete => info!("drained"),
        DrainOutcome::TimedOut { remaining } => {
            warn!(remaining, "drain grace expired; closing remaining connections")
        }
    }
    Ok(())
}

/// Keeps the kernel in step with the config: on every new version, and
/// periodically for interfaces that appeared since.
async fn sync_capture(
    mut capture: Capture,
    state: State,
    ctx: Arc<ProxyContext>,
    status: Arc<RwLock<CaptureStatus>>,
    drain: Drain,
) {
    let mut updates = state.subscribe();
    let mut synced_version = state.current().version;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            () = drain.signaled() => break,
            changed = updates.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
        let current = state.current();
        match capture.sync(&current.snapshot).await {
            Ok(new_status) => {
                let enrolled = new_status.pods.iter().filter(|p| p.enrolled).count();
                metrics::gauge!(crate::metrics::CAPTURED_PODS).set(enrolled as f64);
                ctx.set_local_addresses(capture.local_addresses().clone());
                if let Ok(mut s) = status.write() {
                    if !s.same_capture(&new_status) || synced_version != current.version {
                        info!(
                            version = current.version,
                            enrolled,
                            interfaces = new_status.interfaces.len(),
                            "capture updated"
                        );
                    }
                    *s = new_status;
                }
                synced_version = current.version;
            }
            Err(error) => warn!(%error, version = current.version, "capture sync failed; will retry"),
        }
    }
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
