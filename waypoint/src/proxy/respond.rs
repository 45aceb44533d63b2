//! Phase 7, respond: the answers the waypoint gives itself, with Envoy's
//! status, body and response flag, so clients and dashboards see what they
//! would see from Istio's waypoint. Whose fault each is, and whether a
//! retry could help, is [`Failure`]'s to say.

use http::{HeaderValue, Response, StatusCode};

use super::body::{self, Body};

/// Why the waypoint answered instead of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no route matches the request")]
    NoRoute,
    #[error("denied by authorization policy: {0}")]
    Denied(String),
    #[error("fault injection: abort with {0}")]
    FaultAbort(u16),
    #[error("the destination has no healthy endpoint")]
    NoHealthyUpstream,
    #[error("could not connect to the endpoint: {0}")]
    UpstreamConnect(String),
    #[error("the endpoint reset the request before answering: {0}")]
    UpstreamReset(String),
    #[error("the route's timeout expired")]
    Timeout,
    #[error("the route has no destinations")]
    NoDestinations,
    #[error("the client's request body failed: {0}")]
    DownstreamBody(String),
}

/// Who caused a failure (pingora's split): the access log's `error.fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Downstream,
    Upstream,
    Config,
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::FaultAbort(code) => StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Self::NoHealthyUpstream | Self::UpstreamConnect(_) | Self::UpstreamReset(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoDestinations => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DownstreamBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::NoRoute | Self::NoDestinations => "NR",
            Self::Denied(_) => "RBAC",
            Self::FaultAbort(_) => "FI",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnect(_) => "UF",
            Self::UpstreamReset(_) => "UR",
            Self::Timeout => "UT",
            Self::DownstreamBody(_) => "DPE",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::Denied(_) | Self::DownstreamBody(_) => Fault::Downstream,
            Self::NoRoute | Self::NoDestinations | Self::FaultAbort(_) => Fault::Config,
            Self::NoHealthyUpstream | Self::UpstreamConnect(_) | Self::UpstreamReset(_) | Self::Timeout => {
                Fault::Upstream
            }
        }
    }

    /// Envoy's body text for the same answer.
    fn body(&self) -> String {
        match self {
            Self::Denied(_) => "RBAC: access denied".to_owned(),
            Self::NoHealthyUpstream => "no healthy upstream".to_owned(),
            Self::Timeout => "upstream request timeout".to_owned(),
            Self::FaultAbort(_) => "fault filter abort".to_owned(),
            Self::UpstreamConnect(reason) => {
                format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {reason}"
                )
            }
            Self::UpstreamReset(reason) => {
                format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
            }
            Self::NoRoute | Self::NoDestinations | Self::DownstreamBody(_) => String::new(),
        }
    }

    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert("server", HeaderValue::from_static("ambit-waypoint"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_envoys_status_and_flag() {
        assert_eq!((Failure::NoRoute.status().as_u16(), Failure::NoRoute.flag()), (404, "NR"));
        let denied = Failure::Denied("x".into());
        assert_eq!((denied.status().as_u16(), denied.flag()), (403, "RBAC"));
        assert_eq!((Failure::NoHealthyUpstream.status().as_u16(), Failure::NoHealthyUpstream.flag()), (503, "UH"));
        assert_eq!((Failure::Timeout.status().as_u16(), Failure::Timeout.flag()), (504, "UT"));
        assert_eq!(Failure::FaultAbort(418).status().as_u16(), 418);
        assert_eq!(denied.fault(), Fault::Downstream);
    }
}
