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

/// A Prometheus text exposition, parsed (with `prometheus-parse`, not by
/// hand), for assertions that fail when a metric is missing rather than
/// reading it as zero.
#[derive(Debug)]
pub struct Metrics {
    samples: Vec<prometheus_parse::Sample>,
    text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .context("the exposition does not parse")?;
        Ok(Self { samples: scrape.samples, text: text.to_owned() })
    }

    /// The sum of every series of `name` whose labels include all of
    /// `labels`; an error if there is no such series at all.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let values: Vec<f64> = self.matching(name, labels).map(value).collect();
        anyhow::ensure!(!values.is_empty(), "no series {name}{labels:?} in:\n{}", self.text);
        Ok(values.iter().sum())
    }

    /// Like [`Metrics::sum`], but 0 when the series does not exist yet: only
    /// for a baseline read before the first event a later [`Metrics::sum`]
    /// must see (counters appear with their first increment).
    pub fn sum_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(value).sum()
    }

    /// Whether any series of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.metric == name)
    }

    /// The exposition as scraped, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
        self.samples.iter().filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }
}

fn value(sample: &prometheus_parse::Sample) -> f64 {
    use prometheus_parse::Value;
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    const TEXT: &str =
        "# TYPE x counter\nx{direction=\"outbound\"} 3\nx{direction=\"inbound\"} 4\n# TYPE xy gauge\nxy 9\n";

    #[test]
    fn sums_matching_series_and_refuses_missing_ones() {
        let m = Metrics::parse(TEXT).unwrap();
        assert_eq!(m.sum("x", &[]).unwrap(), 7.0);
        assert_eq!(m.sum("x", &[("direction", "outbound")]).unwrap(), 3.0);
        assert!(m.sum("missing", &[]).is_err(), "a missing metric is an error, not zero");
        assert!(m.sum("x", &[("direction", "sideways")]).is_err());
        assert_eq!(m.sum_or_zero("missing", &[]), 0.0);
    }
}
