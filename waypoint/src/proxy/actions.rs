//! Part of phase 4, route: what a chosen rule does to the request besides
//! naming its destination. A redirect answers at once; a rewrite changes
//! the path and authority the destination sees.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Response, StatusCode};
use mesh::config::routing::{Redirect, RedirectFrom, RequestMatch, Rewrite};

use super::body::{self, Body};

/// The request's authority: `:authority` (HTTP/2) or `Host` (HTTP/1.1).
pub fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(Authority::as_str).or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

/// The redirect's answer, with Envoy's empty body.
pub fn redirect(
    redirect: &Redirect,
    parts: &Parts,
    port: u16,
    fallback_host: &str,
    matched: Option<&RequestMatch>,
) -> Response<Body> {
    let from = RedirectFrom {
        scheme: parts.uri.scheme_str().unwrap_or("http"),
        host: authority(parts).unwrap_or(fallback_host),
        port,
        path: parts.uri.path(),
        query: parts.uri.query(),
    };
    let location = redirect.location(from, matched.and_then(|m| m.path.as_ref()));
    let mut response = Response::new(body::full(String::new()));
    *response.status_mut() = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(&location) {
        Ok(value) => drop(response.headers_mut().insert(header::LOCATION, value)),
        // Only a request path that is not a valid header value gets here.
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// Applies `rewrite` to the request on its way to the destination.
pub fn rewrite(rewrite: &Rewrite, parts: &mut Parts, matched: Option<&RequestMatch>) {
    if let Some(path) = &rewrite.path {
        let new_path = path.apply(parts.uri.path(), matched.and_then(|m| m.path.as_ref()));
        let with_query = match parts.uri.query() {
            Some(query) => format!("{new_path}?{query}"),
            None => new_path,
        };
        if let Ok(path_and_query) = PathAndQuery::try_from(with_query) {
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = Some(path_and_query);
            parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| parts.uri.clone());
        }
    }
    if let Some(authority) = &rewrite.authority {
        set_authority(parts, authority);
    }
}

/// Sets the authority wherever the request carries it (checked to be a
/// valid authority when the config was taken in).
pub fn set_authority(parts: &mut Parts, authority: &str) {
    let Ok(new) = Authority::try_from(authority) else { return };
    if parts.uri.authority().is_some() {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = Some(new);
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| parts.uri.clone());
    }
    let carries_host = parts.uri.authority().is_none() || parts.headers.contains_key(header::HOST);
    if let (true, Ok(value)) = (carries_host, HeaderValue::from_str(authority)) {
        parts.headers.insert(header::HOST, value);
    }
}

#[cfg(test)]
mod tests {
    use mesh::config::routing::{PathRewrite, RedirectPort, StringMatch};

    use super::*;

    fn parts(uri: &str, host: &str) -> Parts {
        let request = http::Request::get(uri).header(header::HOST, host).body(());
        request.map(|r| r.into_parts().0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rewrites_keep_the_query_and_move_the_host() {
        let matched = RequestMatch { path: Some(StringMatch::PathPrefix("/api".into())), ..Default::default() };
        let mut request = parts("/api/users?page=2", "reviews:9080");
        let change = Rewrite { path: Some(PathRewrite::Prefix("/v2".into())), authority: Some("ratings:9080".into()) };
        rewrite(&change, &mut request, Some(&matched));
        assert_eq!(request.uri.to_string(), "/v2/users?page=2");
        assert_eq!(request.headers[header::HOST], "ratings:9080");
        let mut h2 = http::Request::get("http://reviews:9080/x")
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{e}"));
        set_authority(&mut h2, "ratings");
        assert_eq!(h2.uri.to_string(), "http://ratings/x");
        assert!(!h2.headers.contains_key(header::HOST), "HTTP/2 carries it in :authority only");
    }

    #[test]
    fn redirects_answer_with_location() {
        let moved = Redirect {
            scheme: None,
            host: Some("example.org".into()),
            port: RedirectPort::Request,
            path: None,
            status: 302,
        };
        let response = redirect(&moved, &parts("/a?b=c", "reviews:9080"), 9080, "unused", None);
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()[header::LOCATION], "http://example.org:9080/a?b=c");
    }
}
