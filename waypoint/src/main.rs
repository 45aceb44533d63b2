//! ambit's waypoint: the optional per-namespace L7 proxy
//! (`istio.io/use-waypoint`). See the library's docs and ARCHITECTURE.md.
#![forbid(unsafe_code)]

use clap::Parser as _;

/// jemalloc, as ztunnel: requests allocate and free headers and frames on
/// every hop.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let settings = waypoint::cli::Settings::parse();
    let log_level = mesh::logging::init(&settings.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(waypoint::app::run(settings, log_level))
}
