//! ztunnel: ambit's per-node agent. Parses settings and starts [`app`].
#![deny(unsafe_code)]

use clap::Parser as _;
use ztunnel::{app, cli, telemetry};

/// jemalloc, as Istio's ztunnel uses: per-connection buffers and frames are
/// allocated and freed on every hop, and glibc's malloc showed up at ~5% of
/// the agent's CPU in the echo profile (see BENCHMARKS.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options (the `_RJEM_MALLOC_CONF` environment
/// variable still overrides them). By default jemalloc returns freed pages to
/// the kernel only while the process allocates, so an idle agent kept the
/// start-up garbage (~17 MiB) for good. A background thread purges instead:
/// dirty pages after 2 s, muzzy ones at once. `cargo xtask bench memory`
/// measured idle RSS 33 → 17 MiB with it.
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code, reason = "jemalloc reads this symbol (a weak default it defines) before main")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"background_thread:true,max_background_threads:1,dirty_decay_ms:2000,muzzy_decay_ms:0\0"[0];

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
