//! Part of phase 6, forward: shadow traffic. A copy of the request goes to
//! each mirror its rule draws, with `-shadow` added to its host (as Envoy
//! does, so the shadow's logs tell the copies apart); the answer is read and
//! thrown away, and never delays the client. Only requests whose body the
//! waypoint kept (see [`super::forward`]) are copied; mirrors in flight are
//! bounded, and a copy beyond the bound is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body_util::BodyExt as _;
use mesh::config::routing::Mirror;
use tokio::sync::Semaphore;
use tracing::debug;

use super::balance::{self, Destination};
use super::detect::Protocol;
use super::{Context, Downstream, actions, body, forward, route};
use crate::metrics::MIRRORED;

/// Copies in flight at once, across the waypoint.
pub const MAX_IN_FLIGHT: usize = 256;
/// A copy that takes longer is abandoned.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds the copies in flight.
#[derive(Debug)]
pub struct Mirrors {
    permits: Arc<Semaphore>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Self { permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) }
    }
}

/// Sends a copy of the request to each mirror that draws it. `body` is
/// `None` when the body was streamed, not kept: then nothing is copied.
pub fn send(
    ctx: &Arc<Context>,
    downstream: &Arc<Downstream>,
    protocol: Protocol,
    mirrors: &[Mirror],
    parts: &Parts,
    body: Option<&Bytes>,
) {
    for mirror in mirrors.iter().filter(|m| route::hit(m.ppm)) {
        let Some(body) = body else {
            metrics::counter!(MIRRORED, "result" => "streamed_body").increment(1);
            continue;
        };
        let Ok(permit) = ctx.mirrors.permits.clone().try_acquire_owned() else {
            metrics::counter!(MIRRORED, "result" => "over_limit").increment(1);
            continue;
        };
        let mut copy = forward::clone_parts(parts);
        if let Some(host) = actions::authority(&copy).map(shadow_host) {
            actions::set_authority(&mut copy, &host);
        }
        let request = Request::from_parts(copy, body::full(body.clone()));
        let (ctx, downstream, mirror) = (ctx.clone(), downstream.clone(), mirror.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(TIMEOUT, shadow(&ctx, &downstream, protocol, &mirror, request)).await;
            let result = match outcome {
                Ok(Ok(())) => "sent",
                Ok(Err(())) => "failed",
                Err(_) => "timeout",
            };
            metrics::counter!(MIRRORED, "result" => result).increment(1);
            drop(permit);
        });
    }
}

async fn shadow(
    ctx: &Context,
    downstream: &Downstream,
    protocol: Protocol,
    mirror: &Mirror,
    request: Request<body::Body>,
) -> Result<(), ()> {
    let table = ctx.state.current();
    let destination = Destination { host: &mirror.host, subset: mirror.subset.as_deref(), port: mirror.port };
    let endpoint = balance::pick(&table, &ctx.balancers, &downstream.target, &destination, &ctx.identity.trust_domain)
        .map_err(|failure| debug!(%failure, host = mirror.host, "mirror has no endpoint"))?;
    let response = forward::send_once(ctx, &endpoint, downstream.client_ip, protocol, request)
        .await
        .map_err(|failure| debug!(?failure, host = mirror.host, "mirror failed"))?;
    // Read to the end so the connection can be reused.
    let _ = response.into_body().collect().await;
    Ok(())
}

/// Envoy's shadow host: `reviews:9080` becomes `reviews-shadow:9080`.
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(super::shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(super::shadow_host("reviews.shop"), "reviews.shop-shadow");
    }
}
