//! The controller as config source, for ztunnel and the waypoint alike:
//! follow its config stream as one identity, hand each valid version on,
//! and when the stream breaks keep serving the last good config while
//! reconnecting with jittered exponential backoff. A reconnect resumes
//! from the version held, so the controller can answer with a delta.

use std::time::Duration;

use rand::Rng as _;
use tracing::{info, warn};

use super::client::UpdateStream;
use super::{ConfigStream, ControlClient, ControlError};
use crate::config::Snapshot;
use crate::drain::Drain;
use crate::identity::Identity;

/// Config versions taken from the controller, by result (applied or rejected).
pub const CONFIG_UPDATES: &str = "ambit_config_updates_total";

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The follower's own certificate, for the stream's mutual TLS; a fresh one
/// per connection, so its lifetime only needs to cover the handshake.
const AGENT_CERT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot get our own certificate: {0}")]
    Certificate(#[from] crate::ca::CaError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    OutOfOrder(#[from] super::stream::OutOfOrder),
    #[error("the controller ended the config stream")]
    Ended,
}

#[derive(Debug)]
pub struct ConfigFollower {
    client: ControlClient,
    /// Who we follow the stream as (the controller admits agents and waypoints).
    identity: Identity,
    stream: ConfigStream,
    open: Option<UpdateStream>,
    failures: u32,
}

impl ConfigFollower {
    pub fn new(client: ControlClient, identity: Identity) -> Self {
        Self { client, identity, stream: ConfigStream::default(), open: None, failures: 0 }
    }

    /// Waits (retrying) for the first config; nothing can route without one.
    pub async fn first(&mut self) -> Snapshot {
        loop {
            match self.next_snapshot().await {
                Ok(Some(snapshot)) => return snapshot,
                Ok(None) => {}
                Err(error) => self.back_off(&error).await,
            }
        }
    }

    /// Hands every later valid version to `apply` until drained; `apply`
    /// returns the version number it gave it, for the log.
    pub async fn follow(mut self, drain: Drain, mut apply: impl FnMut(Snapshot) -> u64) {
        loop {
            let next = tokio::select! {
                () = drain.signaled() => return,
                next = self.next_snapshot() => next,
            };
            match next {
                Ok(Some(snapshot)) => {
                    let config = snapshot.config();
                    let (workloads, routes, waypoints) =
                        (config.workloads.len(), config.http_routes.len(), config.waypoints.len());
                    let version = apply(snapshot);
                    metrics::counter!(CONFIG_UPDATES, "result" => "applied").increment(1);
                    info!(version, workloads, routes, waypoints, "config applied");
                }
                Ok(None) => {}
                Err(error) => {
                    tokio::select! {
                        () = drain.signaled() => return,
                        () = self.back_off(&error) => {}
                    }
                }
            }
        }
    }

    /// The next config from the stream (connecting first if need be).
    /// `None` when the controller's config was one we refuse (kept last good).
    async fn next_snapshot(&mut self) -> Result<Option<Snapshot>, FollowError> {
        if self.open.is_none() {
            let cert = self.client.certificate(&self.identity, AGENT_CERT_TTL).await?;
            let since = self.stream.resume_from();
            self.open = Some(self.client.config_stream(&cert, since.as_ref()).await?);
            info!(resume_from = since.map(|s| s.to_query()), "following the controller's config");
        }
        let Some(open) = self.open.as_mut() else { return Err(FollowError::Ended) };
        let update = match open.next().await {
            Some(Ok(update)) => update,
            Some(Err(error)) => return Err(self.broken(error.into())),
            None => return Err(self.broken(FollowError::Ended)),
        };
        let config = match self.stream.apply(update) {
            Ok(config) => config,
            Err(error) => {
                self.stream.restart();
                return Err(self.broken(error.into()));
            }
        };
        self.failures = 0;
        match Snapshot::from_shared(config) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(error) => {
                metrics::counter!(CONFIG_UPDATES, "result" => "rejected").increment(1);
                warn!(%error, "the controller's config is invalid; keeping the last good config");
                Ok(None)
            }
        }
    }

    fn broken(&mut self, error: FollowError) -> FollowError {
        self.open = None;
        error
    }

    async fn back_off(&mut self, error: &FollowError) {
        self.open = None;
        self.failures = self.failures.saturating_add(1);
        let exponential = BACKOFF_MIN.saturating_mul(1 << self.failures.min(10)).min(BACKOFF_MAX);
        // Full jitter: agents that lost the controller together do not
        // come back in lockstep.
        let delay = rand::rng().random_range(BACKOFF_MIN..=exponential.max(BACKOFF_MIN));
        warn!(%error, retry_in = ?delay, "controller unreachable; serving the last good config");
        tokio::time::sleep(delay).await;
    }
}
