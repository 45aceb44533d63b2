//! ztunnel, ambit's per-node agent, as a library: the agent binary
//! (`main.rs`) runs [`app`]; the CNI plugin binary (`bin/ambit-cni.rs`)
//! shares [`cni::protocol`] with it.
#![forbid(unsafe_code)]

mod admin;
pub mod app;
pub mod capture;
pub mod cli;
pub mod cni;
mod config_file;
mod metrics;
mod proxy;
mod readiness;
mod state;
mod sync;
pub mod telemetry;
