//! ztunnel: ambit's per-node agent. Parses settings and starts [`app`].
#![forbid(unsafe_code)]

use clap::Parser as _;
use ztunnel::{app, cli, telemetry};

/// jemalloc, as Istio's ztunnel uses: per-connection buffers and frames are
/// allocated and freed on every hop, and glibc's malloc showed up at ~5% of
/// the agent's CPU in the echo profile (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let settings = cli::Settings::parse();
    let log_level = telemetry::init(&settings.log)?;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(app::run(settings, log_level));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "ztunnel failed");
    }
    result
}

/// Each proxied connection holds two sockets; the default soft limit (often
/// 1024) would cap the agent at a few hundred connections. Raise it to the
/// hard limit, as Istio's ztunnel does.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}
