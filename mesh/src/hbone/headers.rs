//! The CONNECT request's headers: `forwarded` (the original client
//! address), `baggage` (who the peer workload is, W3C baggage with
//! OpenTelemetry's k8s keys, as Istio sends them) and `traceparent`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};

pub const FORWARDED: &str = "forwarded";
pub const BAGGAGE: &str = "baggage";
pub const TRACEPARENT: &str = "traceparent";

/// Who a peer workload is, as baggage describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
    pub version: Option<String>,
}

impl PeerInfo {
    /// A mesh workload as its peers see it: the source announces itself this
    /// way on a CONNECT, the destination in its answer.
    pub fn of_workload(w: &crate::config::Workload, cluster: &str) -> Self {
        Self {
            cluster: Some(cluster.to_owned()),
            namespace: Some(w.namespace.clone()),
            workload: Some(w.workload_name().to_owned()),
            service: Some(w.canonical_service().to_owned()),
            version: Some(w.canonical_revision().to_owned()),
        }
    }

    pub fn to_baggage(&self) -> String {
        let pairs = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.deployment.name", &self.workload),
            ("service.name", &self.service),
            ("service.version", &self.version),
        ];
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect::<Vec<_>>().join(",")
    }

    /// Reads what it can; unknown keys and malformed members are ignored, as
    /// the W3C baggage spec asks of receivers.
    pub fn from_baggage(text: &str) -> Self {
        let members: BTreeMap<&str, &str> = text
            .split(',')
            .filter_map(|m| {
                let (k, v) = m.split(';').next()?.split_once('=')?;
                Some((k.trim(), v.trim()))
            })
            .collect();
        let get = |k: &str| members.get(k).map(|v| decode(v));
        let workload = ["k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.pod.name"]
            .iter()
            .find_map(|k| get(k));
        Self {
            cluster: get("k8s.cluster.name"),
            namespace: get("k8s.namespace.name"),
            workload,
            service: get("service.name"),
            version: get("service.version"),
        }
    }
}

/// Percent-encodes what baggage values may not contain.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'!' | b'#'..=b'+' | b'-'..=b':' | b'<'..=b'[' | b']'..=b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = value.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `for="<ip:port>"` (RFC 7239; the port forces the quotes).
pub fn forwarded_for(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

/// The client address in a `forwarded` header: `for=` with an IP, with or
/// without a port, quoted or not. IPv6 appears as `"[::1]:80"`.
pub fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let element = value.split(',').next()?;
    let for_value = element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for").then_some(v.trim().trim_matches('"'))
    })?;
    if let Ok(addr) = for_value.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    for_value.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The client address in a `forwarded` header, with port 0 when the
/// header carries only an IP.
pub fn parse_forwarded_addr(value: &str) -> Option<SocketAddr> {
    let element = value.split(',').next()?;
    let for_value = element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for").then_some(v.trim().trim_matches('"'))
    })?;
    for_value.parse::<SocketAddr>().ok().or_else(|| parse_forwarded_for(value).map(|ip| SocketAddr::new(ip, 0)))
}

/// A fresh W3C trace context: version 00, random trace and span ids, not sampled.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// Headers of a CONNECT request from `client`, sent by `peer`.
pub fn connect_headers(client: SocketAddr, peer: &PeerInfo) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put(FORWARDED, forwarded_for(client));
    put(BAGGAGE, peer.to_baggage());
    put(TRACEPARENT, new_traceparent());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_announces_its_namespace_workload_and_canonical_labels() {
        let workload = crate::config::Workload {
            name: "reviews-v2-7d9f".into(),
            namespace: "shop".into(),
            workload_name: Some("reviews-v2".into()),
            labels: [("app".to_owned(), "reviews".to_owned()), ("version".to_owned(), "v2".to_owned())].into(),
            ..Default::default()
        };
        let baggage = PeerInfo::of_workload(&workload, "Kubernetes").to_baggage();
        assert_eq!(
            baggage,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=reviews-v2,\
             service.name=reviews,service.version=v2"
        );
        assert_eq!(PeerInfo::from_baggage(&baggage), PeerInfo::of_workload(&workload, "Kubernetes"));
    }

    #[test]
    fn forwarded_round_trip_and_variants() {
        let client: SocketAddr = "10.1.0.2:43210".parse().unwrap();
        assert_eq!(forwarded_for(client), "for=\"10.1.0.2:43210\"");
        assert_eq!(parse_forwarded_for(&forwarded_for(client)), Some(client.ip()));
        assert_eq!(parse_forwarded_for("for=10.1.0.3"), Some("10.1.0.3".parse().unwrap()));
        assert_eq!(parse_forwarded_for("proto=http;For=\"[fd00::1]:80\""), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_forwarded_for("for=\"[fd00::2]\""), Some("fd00::2".parse().unwrap()));
        assert_eq!(parse_forwarded_for("by=10.0.0.1"), None);
        assert_eq!(parse_forwarded_for("for=unknown"), None);
        assert_eq!(parse_forwarded_addr(&forwarded_for(client)), Some(client));
        assert_eq!(parse_forwarded_addr("for=10.1.0.3"), Some("10.1.0.3:0".parse().unwrap()));
    }

    #[test]
    fn baggage_round_trip() {
        let peer = PeerInfo {
            cluster: Some("Kubernetes".into()),
            namespace: Some("shop".into()),
            workload: Some("web,v1=x".into()),
            service: Some("web".into()),
            version: None,
        };
        let text = peer.to_baggage();
        assert_eq!(
            text,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web%2Cv1=x,service.name=web"
        );
        assert_eq!(PeerInfo::from_baggage(&text), peer);
        let other = PeerInfo::from_baggage("k8s.namespace.name=a;prop=1, junk, k8s.pod.name=p");
        assert_eq!(other.namespace.as_deref(), Some("a"));
        assert_eq!(other.workload.as_deref(), Some("p"));
    }

    #[test]
    fn traceparent_shape() {
        let tp = new_traceparent();
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "00"));
        assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn connect_headers_present() {
        let headers = connect_headers("10.1.0.2:1".parse().unwrap(), &PeerInfo::default());
        assert!(headers.contains_key(FORWARDED) && headers.contains_key(BAGGAGE) && headers.contains_key(TRACEPARENT));
    }
}
