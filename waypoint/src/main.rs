//! ambit's optional per-namespace L7 proxy (istio.io/use-waypoint).
//!
//! Only the command line exists so far; the component itself is built in a
//! later issue (see ARCHITECTURE.md). Running it says so and fails, rather
//! than pretending to work.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "ambit's optional per-namespace L7 proxy (istio.io/use-waypoint)")]
struct Args {}

fn main() -> anyhow::Result<()> {
    let Args {} = Args::parse();
    anyhow::bail!("the waypoint is not implemented yet; see ARCHITECTURE.md for the plan")
}
