//! Simulated agents: the real control client (`mesh::control`), many per
//! process, each following the config stream over its own mutual-TLS
//! connection as a node agent would. They do not route, so they keep only
//! the version they hold (checking that every delta follows on from it)
//! and report when a change's marked objects reach them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mesh::control::{ControlClient, Update, UpdateBody};
use mesh::tls::WorkloadCertificate;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::controller_cluster::MARK_LABEL;

/// What an agent saw, and when.
#[derive(Debug)]
pub enum Seen {
    Full {
        agent: usize,
        at: Instant,
        bytes: usize,
    },
    /// `count` objects carrying `mark` arrived in one delta of `bytes`.
    Marked {
        agent: usize,
        mark: u64,
        count: usize,
        at: Instant,
        bytes: usize,
    },
    Failed {
        agent: usize,
        error: String,
    },
}

/// Starts `count` agents (numbered from `first`), spread over `clients`
/// (one per node).
pub fn start(
    agents: &mut JoinSet<()>,
    clients: &[ControlClient],
    cert: &Arc<WorkloadCertificate>,
    first: usize,
    count: usize,
    tx: &mpsc::Sender<Seen>,
) {
    for agent in first..first + count {
        let (client, cert, tx) = (clients[agent % clients.len()].clone(), cert.clone(), tx.clone());
        agents.spawn(async move {
            if let Err(error) = follow(agent, &client, &cert, &tx).await {
                let _ = tx.send(Seen::Failed { agent, error: format!("{error:#}") }).await;
            }
        });
    }
}

async fn follow(
    agent: usize,
    client: &ControlClient,
    cert: &WorkloadCertificate,
    tx: &mpsc::Sender<Seen>,
) -> anyhow::Result<()> {
    let mut stream = client.config_stream(cert, None).await?;
    let mut held: Option<(String, u64)> = None;
    while let Some(update) = stream.next().await {
        let update = update?;
        let at = Instant::now();
        // Sizes as on the wire (the same encoding), from one agent only.
        let bytes = if agent == 0 { serde_json::to_vec(&update).map_or(0, |v| v.len() + 1) } else { 0 };
        let Update { epoch, version, body } = update;
        match body {
            UpdateBody::Full(_) => tx.send(Seen::Full { agent, at, bytes }).await?,
            UpdateBody::Delta { from, changes } => {
                if held.as_ref() != Some(&(epoch.clone(), from)) {
                    bail!("agent {agent}: a delta from {epoch}.{from} while holding {held:?}");
                }
                let marks = changes.workloads.upserted.iter().map(|w| &w.labels);
                let mut counts: HashMap<u64, usize> = HashMap::new();
                for labels in marks.chain(changes.services.upserted.iter().map(|s| &s.labels)) {
                    if let Some(mark) = labels.get(MARK_LABEL).and_then(|m| m.parse().ok()) {
                        *counts.entry(mark).or_default() += 1;
                    }
                }
                for (mark, count) in counts {
                    tx.send(Seen::Marked { agent, mark, count, at, bytes }).await?;
                }
            }
        }
        held = Some((epoch, version));
    }
    bail!("agent {agent}: the controller ended the stream")
}

/// Gathers what the agents report.
pub struct Collector {
    rx: mpsc::Receiver<Seen>,
    pub agents: usize,
    pub full_bytes: usize,
    pub delta_bytes: usize,
}

impl Collector {
    pub fn new(rx: mpsc::Receiver<Seen>) -> Self {
        Self { rx, agents: 0, full_bytes: 0, delta_bytes: 0 }
    }

    /// Waits until agents `first..self.agents` hold a full config; returns
    /// when the last did.
    pub async fn wait_full(&mut self, first: usize, deadline: Duration) -> anyhow::Result<Instant> {
        let mut pending: Vec<bool> = (0..self.agents).map(|a| a >= first).collect();
        let mut left = self.agents - first;
        let mut last = Instant::now();
        let until = tokio::time::Instant::now() + deadline;
        while left > 0 {
            match self.next(until).await? {
                Seen::Full { agent, at, bytes } if pending[agent] => {
                    pending[agent] = false;
                    left -= 1;
                    last = last.max(at);
                    self.full_bytes = self.full_bytes.max(bytes);
                }
                _ => {}
            }
        }
        Ok(last)
    }

    /// Waits until every agent has received `expected` objects marked
    /// `mark`; returns when each did.
    pub async fn wait_mark(&mut self, mark: u64, expected: usize, deadline: Duration) -> anyhow::Result<Vec<Instant>> {
        let mut counts = vec![0usize; self.agents];
        let mut done: Vec<Option<Instant>> = vec![None; self.agents];
        let mut left = self.agents;
        let until = tokio::time::Instant::now() + deadline;
        let mut bytes_seen = 0;
        while left > 0 {
            if let Seen::Marked { agent, mark: got, count, at, bytes } = self.next(until).await?
                && got == mark
            {
                counts[agent] += count;
                if agent == 0 {
                    bytes_seen += bytes;
                }
                if counts[agent] >= expected && done[agent].is_none() {
                    done[agent] = Some(at);
                    left -= 1;
                }
            }
        }
        self.delta_bytes = bytes_seen;
        Ok(done.into_iter().flatten().collect())
    }

    async fn next(&mut self, until: tokio::time::Instant) -> anyhow::Result<Seen> {
        let seen = tokio::time::timeout_at(until, self.rx.recv()).await.context("agents did not all get it in time")?;
        match seen.context("every agent stopped")? {
            Seen::Failed { agent, error } => bail!("agent {agent} failed: {error}"),
            seen => Ok(seen),
        }
    }
}
