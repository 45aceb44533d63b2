//! `POST /v1/certificates`: signs a CSR if the caller may have the
//! identity: a node, its own pods' and its agent's; a waypoint's pod, its
//! own; nothing else.

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use mesh::control::{SignRequest, SignResponse};
use mesh::identity::Identity;
use tracing::{info, warn};

use super::{MAX_CERT_TTL, Response, Shared, json, text};
use crate::authority::may_issue_to;
use crate::metrics::CERTIFICATES;
use crate::node_auth::Caller;

/// CSRs are about 500 bytes; anything much bigger is not one.
const MAX_BODY: usize = 64 * 1024;

pub async fn sign(request: hyper::Request<Incoming>, shared: &Shared, caller: &Caller) -> Response {
    let response = match read_request(request).await {
        Ok((sign, identity)) => issue(shared, caller, &sign, &identity),
        Err(response) => response,
    };
    let result = if response.status() == StatusCode::OK { "issued" } else { "refused" };
    metrics::counter!(CERTIFICATES, "result" => result).increment(1);
    response
}

async fn read_request(request: hyper::Request<Incoming>) -> Result<(SignRequest, Identity), Response> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("cannot read the request: {e}")))?
        .to_bytes();
    let sign: SignRequest = serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("not a certificate request: {e}")))?;
    let identity: Identity =
        sign.identity.parse().map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad identity: {e}")))?;
    Ok((sign, identity))
}

fn issue(shared: &Shared, caller: &Caller, sign: &SignRequest, identity: &Identity) -> Response {
    let node = caller.node();
    if let Err(refusal) = may_issue_to(&shared.store.current().config, caller, identity) {
        warn!(%node, %identity, "refused a certificate: {refusal}");
        return text(StatusCode::FORBIDDEN, refusal.to_string());
    }
    let ttl = Duration::from_secs(sign.ttl_seconds).min(MAX_CERT_TTL);
    match shared.ca.sign_csr(&sign.csr, identity, ttl) {
        Ok(issued) => {
            info!(%node, %identity, ttl_seconds = ttl.as_secs(), "issued a certificate");
            let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            json(&SignResponse {
                certificate: issued.cert_pem,
                not_before_unix: unix(issued.not_before),
                not_after_unix: unix(issued.not_after),
            })
        }
        Err(error) => text(StatusCode::BAD_REQUEST, error.to_string()),
    }
}
