//! ambit's waypoint, as a library: the binary (`main.rs`) runs [`app`].
//!
//! A waypoint is a pod that ztunnel does not capture. Source ztunnels send
//! it the traffic of services (or pods) that use it, over HBONE, with the
//! original destination as the CONNECT authority. It applies the L7 config
//! (VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy bound to
//! it) and tunnels each request on to a chosen endpoint, as itself.
//! [`proxy`] names the phases a request goes through.
#![forbid(unsafe_code)]

mod admin;
pub mod app;
pub mod cli;
mod metrics;
mod proxy;
mod state;
