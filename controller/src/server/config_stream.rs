//! `GET /v1/config`: a full config, then a delta per new version, one JSON
//! document per line. Each agent has its own task following the store;
//! the store never waits for it, so a slow agent only falls behind itself
//! (and then gets one delta spanning the versions it missed). Lines are
//! encoded once per version in the store and shared by all agents.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use http::StatusCode;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use mesh::control::{ResumeFrom, ztunnel_identity};
use mesh::drain::Drain;
use mesh::identity::Identity;
use tokio::sync::mpsc;
use tracing::{Instrument as _, debug, info, info_span};

use super::{Response, Shared, text};
use crate::authority::is_waypoint_identity;
use crate::metrics::{CONNECTED_AGENTS, PUSH_SECONDS, UPDATE_BYTES};
use crate::store::Line;

pub async fn open(
    request: &hyper::Request<hyper::body::Incoming>,
    shared: &Shared,
    node: &str,
    peer: Option<&Identity>,
    drain: &Drain,
) -> Response {
    let agent = ztunnel_identity(shared.ca.trust_domain());
    let waypoint = peer.is_some_and(|p| is_waypoint_identity(&shared.store.current().config, p));
    if peer != Some(&agent) && !waypoint {
        let message = format!("the config stream needs mutual TLS as {agent}, or as a waypoint's account");
        return text(StatusCode::FORBIDDEN, message);
    }
    let since = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("since=")))
        .and_then(ResumeFrom::parse);
    // One message in flight per agent: a slow agent holds only its own task.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let store = shared.store.clone();
    let task_drain = drain.clone();
    drain.spawn(
        async move {
            tokio::select! {
                () = follow(&store, since, &tx) => {}
                () = task_drain.signaled() => {}
            }
        }
        .instrument(info_span!("config_stream", %node)),
    );
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = hyper::Response::new(StreamBody::new(frames.boxed()).boxed_unsync());
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    response
}

/// Counts connected agents while alive.
struct Connected;

impl Connected {
    fn new() -> Self {
        metrics::gauge!(CONNECTED_AGENTS).increment(1.0);
        Self
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTED_AGENTS).decrement(1.0);
    }
}

async fn follow(store: &crate::store::Store, since: Option<ResumeFrom>, tx: &mpsc::Sender<Bytes>) {
    let _connected = Connected::new();
    let connected_at = Instant::now();
    let mut versions = store.subscribe();
    // Never hand out the empty config of a controller that has not read its
    // sources yet: agents would drop everything they know.
    let first = tokio::select! {
        () = tx.closed() => return,
        first = versions.wait_for(|p| p.version > 0) => first.map(|p| p.clone()),
    };
    let Ok(first) = first else { return };
    versions.mark_unchanged();
    let resume = since.filter(|s| s.epoch == first.epoch).map(|s| s.version);
    let line = first.update_from(resume);
    info!(version = first.version, resumed = line.delta, "agent following config");
    if send(tx, line, first.at.max(connected_at)).await.is_err() {
        return;
    }
    // Only the version number: a follower pins no config of its own.
    let mut sent = first.version;
    drop(first);
    loop {
        // An agent that goes away ends its task (and leaves the connected
        // count) at once, not at the next version.
        tokio::select! {
            () = tx.closed() => return debug!("agent went away"),
            changed = versions.changed() => if changed.is_err() { return },
        }
        let now = versions.borrow_and_update().clone();
        if send(tx, now.update_from(Some(sent)), now.at.max(connected_at)).await.is_err() {
            return;
        }
        sent = now.version;
    }
}

/// Hands `line` to the agent's connection; push latency counts from
/// `since`, the moment this agent could first have had the version.
async fn send(tx: &mpsc::Sender<Bytes>, line: Line, since: Instant) -> Result<(), ()> {
    let kind = if line.delta { "delta" } else { "full" };
    metrics::counter!(UPDATE_BYTES, "kind" => kind).increment(line.bytes.len() as u64);
    tx.send(line.bytes).await.map_err(|_| debug!("agent went away"))?;
    metrics::histogram!(PUSH_SECONDS).record(since.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mesh::control::{Update, UpdateBody};
    use tokio::sync::mpsc;

    use crate::store::Store;
    use crate::translate::Translator;

    /// Publishes a config of one namespace, `name`.
    fn publish(store: &Store, translator: &mut Translator, name: &str) {
        crate::store::tests::publish(store, translator, &[name.to_owned()]);
    }

    fn parse(line: &Bytes) -> Update {
        serde_json::from_slice(line).unwrap_or_else(|e| panic!("bad update line: {e}"))
    }

    /// An agent whose stream ends is let go at once: its task returns
    /// without waiting for another version.
    #[tokio::test]
    async fn a_vanished_agent_is_let_go_at_once() {
        let (store, mut translator) = (Store::new(), Translator::new("istio-system"));
        publish(&store, &mut translator, "v1");
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let follower = tokio::spawn(async move { super::follow(&store, None, &tx).await });
        rx.recv().await.unwrap_or_else(|| panic!("no first update"));
        drop(rx);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), follower).await;
        assert!(ended.is_ok(), "the follower outlived its agent's stream");
    }

    /// One agent stops reading; another keeps up with every version, and
    /// the slow one, once it reads again, gets one delta for all it missed.
    #[tokio::test]
    async fn a_slow_agent_delays_no_one() {
        let (store, mut translator) = (Store::new(), Translator::new("istio-system"));
        publish(&store, &mut translator, "v1");
        let (slow_tx, mut slow_rx) = mpsc::channel::<Bytes>(1);
        let (fast_tx, mut fast_rx) = mpsc::channel::<Bytes>(1);
        let (slow_store, fast_store) = (store.clone(), store.clone());
        tokio::spawn(async move { super::follow(&slow_store, None, &slow_tx).await });
        tokio::spawn(async move { super::follow(&fast_store, None, &fast_tx).await });
        let first = fast_rx.recv().await.map(|l| parse(&l)).map(|u| u.version);
        assert_eq!(first, Some(1));
        for version in 2..=20u64 {
            publish(&store, &mut translator, &format!("v{version}"));
            let update = fast_rx.recv().await.map(|l| parse(&l));
            let Some(Update { version: got, body: UpdateBody::Delta { from, .. }, .. }) = update else {
                panic!("the fast agent got no delta for version {version}");
            };
            assert_eq!((from, got), (version - 1, version), "the fast agent keeps up");
        }
        let mut slow = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(std::time::Duration::from_secs(5), slow_rx.recv()).await {
            let update = parse(&line);
            let last = update.version == 20;
            slow.push(update);
            if last {
                break;
            }
        }
        assert!(slow.len() <= 3, "the slow agent got {} messages, not one per version", slow.len());
        let Some(Update { body: UpdateBody::Delta { changes, .. }, .. }) = slow.last() else {
            panic!("the slow agent's last message is not a delta: {slow:?}");
        };
        assert_eq!(changes.namespaces.upserted[0].name, "v20");
    }
}
