//! End-to-end tests: real namespaces, real eBPF, real ztunnel processes.
//! One binary (each file under tests/ would link its own), one module per
//! area. Every test builds its own cluster, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail the test on error")]

mod authz;
mod capture;
mod config;
mod control_plane;
mod enrollment;
mod fail_closed;
mod hbone;
mod hostile;
mod istio_tasks;
mod kubernetes;
mod new_pods;
mod routing;
mod scale;
mod services;
mod support;
mod telemetry;
mod waypoint;
mod waypoint_actions;
mod waypoint_attacks;
mod waypoint_grpc;
