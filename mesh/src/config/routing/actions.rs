//! What a rule does to a request besides choosing its destination: header
//! operations, URL rewrites, redirects and mirrors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StringMatch;

/// Istio's `headers.request`/`headers.response`, and the Gateway API's
/// header modifier filters: `set` overwrites, `add` appends a value,
/// `remove` deletes. Names are lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOperations {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the operations to `headers`: remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name.as_str());
        }
        let valid = |(name, value): (&String, &String)| {
            Some((http::HeaderName::from_bytes(name.as_bytes()).ok()?, http::HeaderValue::from_str(value).ok()?))
        };
        for (name, value) in self.set.iter().filter_map(valid) {
            headers.insert(name, value);
        }
        for (name, value) in self.add.iter().filter_map(valid) {
            headers.append(name, value);
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        for name in self.set.keys().chain(self.add.keys()).chain(&self.remove) {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))?;
        }
        for value in self.set.values().chain(self.add.values()) {
            http::HeaderValue::from_str(value).map_err(|_| format!("{value:?} is not a header value"))?;
        }
        Ok(())
    }
}

/// Changes to the forwarded request's URL: Istio's `rewrite`, the Gateway
/// API's URLRewrite filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// The new `Host`/`:authority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl Rewrite {
    pub(super) fn check(&self) -> Result<(), String> {
        if let Some(authority) = &self.authority {
            http::uri::Authority::try_from(authority.as_str())
                .map_err(|_| format!("{authority:?} is not an authority"))?;
        }
        self.path.as_ref().map_or(Ok(()), PathRewrite::check)
    }
}

/// A new path; the query string always stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathRewrite {
    /// The whole path.
    Full(String),
    /// The part the rule's prefix match matched (Istio's `rewrite.uri`, the
    /// Gateway API's ReplacePrefixMatch); the whole path when the request
    /// matched without a prefix.
    Prefix(String),
}

impl PathRewrite {
    fn check(&self) -> Result<(), String> {
        let (Self::Full(text) | Self::Prefix(text)) = self;
        if !text.starts_with('/') || http::uri::PathAndQuery::try_from(text.as_str()).is_err() {
            return Err(format!("{text:?} is not an absolute path"));
        }
        Ok(())
    }

    /// The new path for `path`, which matched `matched`.
    pub fn apply(&self, path: &str, matched: Option<&StringMatch>) -> String {
        let replacement = match self {
            Self::Full(full) => return full.clone(),
            Self::Prefix(replacement) => replacement,
        };
        match matched {
            Some(StringMatch::Prefix(prefix)) if path.starts_with(prefix.as_str()) => {
                format!("{replacement}{}", &path[prefix.len()..])
            }
            // Whole segments: `/a` replaced by `/b` turns `/a/c` into
            // `/b/c`, and a replacement `/` strips the prefix, leaving `/`
            // at least (the Gateway API's rewrite conformance cases).
            Some(StringMatch::PathPrefix(prefix)) => {
                let prefix = prefix.trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() { "/".to_owned() } else { joined }
            }
            _ => replacement.clone(),
        }
    }
}

/// An answer that sends the client elsewhere (Istio's `redirect`, the
/// Gateway API's RequestRedirect filter), with `Location` built from the
/// request's URL and these changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The new host; with [`RedirectPort::Keep`] it may carry a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: RedirectPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// Where `Location`'s port comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RedirectPort {
    /// The request's `Host` as it was (Istio's default).
    Keep,
    Exact(u16),
    /// 80 for http, 443 for https (Istio's FROM_PROTOCOL_DEFAULT; the
    /// Gateway API's when a scheme is set).
    SchemeDefault,
    /// The service port the request arrived for (Istio's
    /// FROM_REQUEST_PORT; the Gateway API's listener port).
    Request,
}

impl Redirect {
    pub(super) fn check(&self) -> Result<(), String> {
        if !matches!(self.status, 301 | 302 | 303 | 307 | 308) {
            return Err(format!("redirect status {} is not 301, 302, 303, 307 or 308", self.status));
        }
        if let Some(host) = &self.host {
            http::uri::Authority::try_from(host.as_str()).map_err(|_| format!("{host:?} is not a host name"))?;
        }
        self.path.as_ref().map_or(Ok(()), PathRewrite::check)
    }

    /// The `Location` for a request to `scheme://host_header path_and_query`
    /// that arrived on service port `port` and matched `matched`.
    pub fn location(&self, request: RedirectFrom<'_>, matched: Option<&StringMatch>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request.scheme);
        // A new host replaces the whole authority, port included, as
        // Envoy's `host_redirect` does.
        let (host, kept_port) = split_host_port(self.host.as_deref().unwrap_or(request.host));
        let port = match self.port {
            RedirectPort::Keep => kept_port,
            RedirectPort::Exact(port) => Some(port),
            RedirectPort::SchemeDefault => default_port(scheme),
            RedirectPort::Request => Some(request.port),
        };
        // A scheme's own port is left out, as the Gateway API asks.
        let port = port.filter(|p| Some(*p) != default_port(scheme)).map(|p| format!(":{p}")).unwrap_or_default();
        let path = self.path.as_ref().map_or_else(|| request.path.to_owned(), |p| p.apply(request.path, matched));
        let query = request.query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

/// The parts of a request a redirect's `Location` is built from.
#[derive(Clone, Copy, Debug)]
pub struct RedirectFrom<'a> {
    pub scheme: &'a str,
    /// The `Host` header or `:authority`, maybe with a port.
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Shadow traffic: a copy of the request, sent to another destination,
/// whose answer is thrown away (Istio's `mirrors`/`mirrorPercentage`, the
/// Gateway API's RequestMirror filter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Of requests, in parts per million.
    pub ppm: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_follow_the_gateway_apis_cases() {
        let segment = |prefix: &str| StringMatch::PathPrefix(prefix.into());
        let cases = [
            ("/one", "/prefix/one", "/prefix/one/two", "/one/two"),
            ("/", "/strip-prefix", "/strip-prefix/three", "/three"),
            ("/", "/strip-prefix", "/strip-prefix", "/"),
            (
                "/prefix",
                "/prefix/rewrite-path-and-modify-headers",
                "/prefix/rewrite-path-and-modify-headers/one",
                "/prefix/one",
            ),
            ("/new", "/", "/x/y", "/new/x/y"),
        ];
        for (replacement, prefix, path, want) in cases {
            assert_eq!(PathRewrite::Prefix(replacement.into()).apply(path, Some(&segment(prefix))), want, "{path}");
        }
        let istio = PathRewrite::Prefix("/v2".into());
        assert_eq!(istio.apply("/v1abc", Some(&StringMatch::Prefix("/v1".into()))), "/v2abc");
        assert_eq!(
            istio.apply("/exact", Some(&StringMatch::Exact("/exact".into()))),
            "/v2",
            "not a prefix: whole path"
        );
        assert_eq!(PathRewrite::Full("/one".into()).apply("/full/one/two", Some(&segment("/full"))), "/one");
    }

    #[test]
    fn redirect_locations() {
        let from = RedirectFrom { scheme: "http", host: "echo:8080", port: 8080, path: "/port", query: Some("a=1") };
        let redirect = |port, scheme: Option<&str>| Redirect {
            scheme: scheme.map(str::to_owned),
            host: None,
            port,
            path: None,
            status: 302,
        };
        assert_eq!(redirect(RedirectPort::Exact(8083), None).location(from, None), "http://echo:8083/port?a=1");
        assert_eq!(redirect(RedirectPort::SchemeDefault, Some("https")).location(from, None), "https://echo/port?a=1");
        assert_eq!(redirect(RedirectPort::Request, None).location(from, None), "http://echo:8080/port?a=1");
        assert_eq!(redirect(RedirectPort::Keep, None).location(from, None), "http://echo:8080/port?a=1");
        let plain = RedirectFrom { host: "echo", port: 80, query: None, ..from };
        assert_eq!(redirect(RedirectPort::Request, None).location(plain, None), "http://echo/port", "80 is http's own");
        let moved = Redirect {
            host: Some("example.org".into()),
            path: Some(PathRewrite::Full("/new".into())),
            ..redirect(RedirectPort::Keep, None)
        };
        assert_eq!(moved.location(plain, None), "http://example.org/new");
        assert_eq!(moved.location(from, None), "http://example.org/new?a=1", "a new host drops the old port");
    }
}
