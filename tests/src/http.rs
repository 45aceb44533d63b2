//! HTTP GET from inside a namespace, for the agents' node-local endpoints.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

use crate::netns::Netns;

/// GETs `path` from `addr`, connecting from inside `netns`. Returns the
/// status code and the body as text.
pub async fn get(netns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = netns.connect(addr).await.with_context(|| format!("connect {addr} in {}", netns.name()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path).header(http::header::HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads one sample of a Prometheus text exposition: the sum of every series
/// of `name` whose labels include all of `labels`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted =
                series_name == name && labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_matching_series() {
        let text = "# HELP x\nx{direction=\"outbound\"} 3\nx{direction=\"inbound\"} 4\nxy 9\nx 1\n";
        assert_eq!(super::metric_sum(text, "x", &[]), 8.0);
        assert_eq!(super::metric_sum(text, "x", &[("direction", "outbound")]), 3.0);
        assert_eq!(super::metric_sum(text, "missing", &[]), 0.0);
    }
}
