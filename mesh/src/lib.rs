//! ambit's shared library: the vocabulary that ztunnel, the waypoint and the
//! controller all speak. No eBPF and no Kubernetes client live here.
//!
//! * [`admission`]: how many connections a listener holds, in all and per peer.
//! * [`certs`]: `CertManager`, certificates kept renewed for the identities
//!   a component serves.
//! * [`config`]: the mesh config model (workloads, services, namespaces), its
//!   YAML form, validation and lookup index.
//! * [`control`]: the protocol agents speak with the controller (config
//!   stream and certificate signing).
//! * [`drain`]: the one shutdown primitive every listener and task uses.
//! * [`http_server`]: the small HTTP/1 server behind readiness, admin and
//!   metrics endpoints.
//! * [`json_log`]: the JSON log-line format every binary writes.
//! * [`logging`]: the logging flags and set-up every binary shares.
//! * [`tcp`]: the socket options every TCP connection carries.
#![forbid(unsafe_code)]

pub mod admission;
pub mod authz;
pub mod ca;
pub mod certs;
pub mod config;
pub mod control;
pub mod dir_watch;
pub mod drain;
pub mod hbone;
pub mod http_server;
pub mod identity;
pub mod json_log;
pub mod logging;
pub mod tcp;
pub mod tls;
