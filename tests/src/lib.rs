//! ambit's test bed: a Kubernetes-like cluster built from Linux network
//! namespaces, with ztunnel running as a process per node, sample apps in
//! the pods, and helpers to watch what the agents do. The demo, the
//! end-to-end tests and the benchmarks all stand on it.
//!
//! Needs root (namespaces, veths, eBPF). Nothing it does touches the root
//! namespace's routing or firewall, and everything it creates is removed
//! when the owning value drops, even if a test panics.
#![forbid(unsafe_code)]
#![allow(clippy::panic, reason = "test-bed helpers fail the calling test loudly")]

pub mod cluster;
pub mod cni;
pub mod control_plane;
pub mod hbone_client;
pub mod http;
pub mod http_app;
pub mod kube_apiserver;
pub mod kube_objects;
pub mod netns;
pub mod pcap;
pub mod process;
pub mod raw_h2;
pub mod sample;
pub mod sample_http;
pub mod topology;
pub mod waypoint;
pub mod ztunnel;

/// Fails (never skips) when the process cannot create namespaces and load
/// eBPF, with a message that says why and what to do.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "end-to-end tests need root (network namespaces, veths, eBPF); \
             run them with `cargo xtask test` as root"
        );
    }
}
