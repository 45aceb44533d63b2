//! ambit's control plane: watches Kubernetes, signs workload certificates and streams config to every ztunnel and waypoint.
//!
//! Only the command line exists so far; the component itself is built in a
//! later issue (see ARCHITECTURE.md). Running it says so and fails, rather
//! than pretending to work.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "ambit's control plane: watches Kubernetes, signs workload certificates and streams config to every ztunnel and waypoint"
)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let Args {} = Args::parse();
    anyhow::bail!("the controller is not implemented yet; see ARCHITECTURE.md for the plan")
}
