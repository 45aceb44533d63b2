//! ztunnel: ambit's per-node agent. Parses settings and starts [`app`].
#![forbid(unsafe_code)]

mod admin;
mod app;
mod capture;
mod cli;
mod config_file;
mod metrics;
mod proxy;
mod readiness;
mod state;
mod telemetry;

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let settings = cli::Settings::parse();
    let log_level = telemetry::init(&settings.log_level, settings.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(app::run(settings, log_level));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "ztunnel failed");
    }
    result
}
