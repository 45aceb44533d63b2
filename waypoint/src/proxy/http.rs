//! HTTP on one tunnel: hyper serves the connection (HTTP/1.1 with upgrades
//! passed through, or HTTP/2), bounded against floods, and each request
//! goes through phases 3–8 in [`handle`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::hbone::H2Stream;
use tracing::debug;

use super::balance::Destination;
use super::body::{Body, Observed};
use super::detect::{Prefixed, Protocol};
use super::forward::{Forward, Plan};
use super::log::{Exchange, Peer};
use super::respond::Failure;
use super::route::{self, Selected};
use super::{Context, Downstream, actions, authorize};
use crate::state::RouteTable;

/// A request's headers, at most (larger: 431, from hyper).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time for a request's headers to arrive on an HTTP/1.1 connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 client may have open at once.
const MAX_STREAMS: u32 = 1000;
/// Streams a client may reset before being answered before hyper closes
/// the connection (CVE-2023-44487, "rapid reset").
const MAX_PENDING_RESETS: usize = 100;
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Serves HTTP on `io` until the client closes it.
pub async fn serve(ctx: Arc<Context>, downstream: Arc<Downstream>, protocol: Protocol, io: Prefixed<H2Stream>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let (ctx, downstream) = (ctx.clone(), downstream.clone());
        async move { Ok::<_, Infallible>(handle(ctx, downstream, protocol, request).await) }
    });
    let io = TokioIo::new(io);
    let served = match protocol {
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
                .keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended with an error");
    }
}

/// Phases 3–8 for one request. A route's header operations apply to the
/// request it forwards and to the upstream's response, not to the
/// waypoint's own answers.
async fn handle(
    ctx: Arc<Context>,
    downstream: Arc<Downstream>,
    protocol: Protocol,
    mut request: Request<Incoming>,
) -> Response<Observed> {
    let table = ctx.state.current();
    let client_upgrade = request.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let source = table.snapshot.workload_by_ip(downstream.client_ip).map(|w| Peer::of(w, &downstream.identity));
    let mut exchange = Box::new(Exchange::new(downstream.clone(), source, &parts, ctx.cluster_id.clone()));
    let result = route_and_forward(&ctx, &table, &downstream, protocol, parts, body, &mut exchange).await;
    let response = match result {
        Ok(mut response) => {
            let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            if let (true, Some(client)) = (upgraded, client_upgrade) {
                tokio::spawn(splice_upgrade(client, hyper::upgrade::on(&mut response)));
            }
            if protocol == Protocol::Http1 {
                strip_hop_by_hop(response.headers_mut(), upgraded);
            }
            response
        }
        Err(failure) => {
            exchange.add_flag(failure.flag());
            debug!(%failure, fault = ?failure.fault(), "answered by the waypoint");
            failure.response()
        }
    };
    exchange.status = response.status().as_u16();
    exchange.note_grpc_status(response.headers());
    response.map(|body: Body| Observed::new(body, exchange))
}

/// Phases 3–6: authorize, route (with the rule's faults and actions),
/// then balance and forward.
async fn route_and_forward(
    ctx: &Arc<Context>,
    table: &RouteTable,
    downstream: &Arc<Downstream>,
    protocol: Protocol,
    mut parts: Parts,
    body: Incoming,
    exchange: &mut Exchange,
) -> Result<Response<Body>, Failure> {
    authorize::check(table, ctx, downstream, Some(&parts))?;
    let (destination, plan, mirrors, response_headers) = match route::select(table, &downstream.target, &parts)? {
        Selected::Direct => (direct(downstream), Plan::new(None, None), &[][..], Vec::new()),
        Selected::Rule { rule, origin, matched } => {
            exchange.route = Some(origin.to_owned());
            if let Some(delay) = route::fault_delay(rule) {
                exchange.add_flag("DI");
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = route::fault_abort(rule) {
                return Err(Failure::FaultAbort(status));
            }
            if let Some(redirect) = &rule.redirect {
                let (host, port) = target_host_port(downstream);
                return Ok(actions::redirect(redirect, &parts, port, host, matched));
            }
            let chosen = route::pick_destination(rule)?;
            rule.request_headers.apply(&mut parts.headers);
            chosen.request_headers.apply(&mut parts.headers);
            if let Some(rewrite) = &rule.rewrite {
                actions::rewrite(rewrite, &mut parts, matched);
            }
            let destination = Destination { host: &chosen.host, subset: chosen.subset.as_deref(), port: chosen.port };
            let plan = Plan::new(rule.timeout, rule.retries.as_ref());
            (destination, plan, rule.mirrors.as_slice(), vec![&rule.response_headers, &chosen.response_headers])
        }
    };
    prepare_headers(&mut parts.headers, protocol);
    let forward = Forward { ctx, table, downstream, destination, protocol, plan, mirrors };
    let mut response = forward.send(parts, body, exchange).await?;
    for operations in response_headers {
        operations.apply(response.headers_mut());
    }
    Ok(response)
}

/// The service host and port the client asked for (for a redirect's
/// `Location` when the request carries no authority).
fn target_host_port(downstream: &Downstream) -> (&str, u16) {
    match &downstream.target {
        super::Target::Service { hostname, port, .. } => (hostname, *port),
        super::Target::Workload { addr } => ("", addr.port()),
    }
}

/// After a 101 on both sides (WebSocket and other upgrades), the two
/// connections are spliced byte for byte until either side closes.
async fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(%error, "upgraded connection ended");
    }
}

/// The destination when no route applies: the service the client asked for.
fn direct(downstream: &Downstream) -> Destination<'_> {
    match &downstream.target {
        super::Target::Service { hostname, .. } => Destination { host: hostname, subset: None, port: None },
        super::Target::Workload { .. } => Destination { host: "", subset: None, port: None },
    }
}

/// What a proxy changes on the way up: hop-by-hop headers go (an upgrade's
/// stay), a request id is added if missing, and trace context continues
/// with a new span for this hop (W3C `traceparent` and B3).
fn prepare_headers(headers: &mut HeaderMap, protocol: Protocol) {
    if protocol == Protocol::Http1 {
        let upgrade = headers.contains_key(header::UPGRADE);
        strip_hop_by_hop(headers, upgrade);
    }
    if !headers.contains_key("x-request-id") {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", value);
        }
    }
    continue_trace(headers);
}

/// A new span id under the caller's trace, in both formats it used.
fn continue_trace(headers: &mut HeaderMap) {
    let span = format!("{:016x}", rand::random::<u64>().max(1));
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let fields: Vec<&str> = parent.split('-').collect();
        if let [version, trace, _, flags] = fields.as_slice()
            && trace.len() == 32
            && let Ok(value) = HeaderValue::from_str(&format!("{version}-{trace}-{span}-{flags}"))
        {
            headers.insert("traceparent", value);
        }
    }
    if let Some(parent_span) = headers.get("x-b3-spanid").cloned()
        && headers.contains_key("x-b3-traceid")
        && let Ok(value) = HeaderValue::from_str(&span)
    {
        headers.insert("x-b3-parentspanid", parent_span);
        headers.insert("x-b3-spanid", value);
    }
}

/// RFC 9110's connection-specific headers, and any the `connection` header
/// names. `te: trailers` stays (gRPC needs it); an upgrade keeps
/// `connection` and `upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "transfer-encoding"] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_continues_with_a_new_span() {
        let mut headers = HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", HeaderValue::from_static(parent));
        headers.insert("x-b3-traceid", HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c"));
        headers.insert("x-b3-spanid", HeaderValue::from_static("b7ad6b7169203331"));
        continue_trace(&mut headers);
        let next = headers["traceparent"].to_str().unwrap_or_default().to_owned();
        assert!(next.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{next}");
        assert!(next.ends_with("-01"), "{next}");
        assert_ne!(next, parent, "a new span id");
        assert_eq!(headers["x-b3-parentspanid"], "b7ad6b7169203331");
        assert_ne!(headers["x-b3-spanid"], "b7ad6b7169203331");
    }

    #[test]
    fn hop_by_hop_headers_go_unless_upgrading() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key("x-secret") && !headers.contains_key("keep-alive"));
        assert!(!headers.contains_key(header::CONNECTION));
        assert_eq!(headers[header::TE], "trailers");
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrade.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade[header::UPGRADE], "websocket");
        assert!(upgrade.contains_key(header::CONNECTION));
    }
}
