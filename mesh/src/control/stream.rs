//! The agent's side of the config stream, free of IO: it applies updates in
//! order and says where to resume from after a reconnect.

use std::sync::Arc;

use super::{Update, UpdateBody};
use crate::config::MeshConfig;

/// Where a reconnecting agent asks the controller to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeFrom {
    pub epoch: String,
    pub version: u64,
}

impl ResumeFrom {
    /// The `since` query value: `EPOCH.VERSION`.
    pub fn to_query(&self) -> String {
        format!("{}.{}", self.epoch, self.version)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, version) = text.rsplit_once('.')?;
        Some(Self { epoch: epoch.to_owned(), version: version.parse().ok()? })
    }
}

/// A delta that does not follow on from what the agent holds. The stream is
/// then abandoned and restarted from scratch.
#[derive(Debug, thiserror::Error)]
#[error("config update {got_epoch}.{from} does not follow the held version {held}")]
pub struct OutOfOrder {
    pub got_epoch: String,
    pub from: u64,
    pub held: String,
}

/// The config an agent holds, and which controller version it is.
#[derive(Debug, Default)]
pub struct ConfigStream {
    /// Shared with the snapshot built from it, so the agent holds one copy.
    held: Option<(ResumeFrom, Arc<MeshConfig>)>,
}

impl ConfigStream {
    pub fn resume_from(&self) -> Option<ResumeFrom> {
        self.held.as_ref().map(|(at, _)| at.clone())
    }

    /// Forgets the version (not the config): the next stream starts with a
    /// full config.
    pub fn restart(&mut self) {
        self.held = None;
    }

    /// Applies `update` and returns the resulting config. A delta edits
    /// the held config in place when no snapshot shares it any more.
    pub fn apply(&mut self, update: Update) -> Result<Arc<MeshConfig>, OutOfOrder> {
        let config = match update.body {
            UpdateBody::Full(mut config) => {
                config.canonicalize();
                Arc::new(config)
            }
            UpdateBody::Delta { from, changes } => match self.held.take() {
                Some((at, mut config)) if at.epoch == update.epoch && at.version == from => {
                    changes.apply_in_place(Arc::make_mut(&mut config));
                    config
                }
                held => {
                    let described = held.as_ref().map_or_else(|| "none".to_owned(), |(at, _)| at.to_query());
                    self.held = held;
                    return Err(OutOfOrder { got_epoch: update.epoch, from, held: described });
                }
            },
        };
        let at = ResumeFrom { epoch: update.epoch, version: update.version };
        Ok(self.held.insert((at, config)).1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::delta::ConfigDelta;
    use crate::config::{MeshConfig, Namespace};

    fn config(namespaces: &[&str]) -> MeshConfig {
        MeshConfig {
            namespaces: namespaces.iter().map(|n| Namespace { name: (*n).into(), ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    fn update(epoch: &str, version: u64, body: UpdateBody) -> Update {
        Update { epoch: epoch.into(), version, body }
    }

    #[test]
    fn full_then_deltas_in_order() {
        let mut stream = ConfigStream::default();
        assert_eq!(stream.resume_from(), None);
        stream.apply(update("e1", 3, UpdateBody::Full(config(&["b", "a"])))).map(|_| ()).unwrap_or_default();
        let changes = ConfigDelta::between(&config(&["a", "b"]), &config(&["a", "c"]));
        let applied = stream.apply(update("e1", 4, UpdateBody::Delta { from: 3, changes }));
        assert_eq!(applied.ok().as_deref(), Some(&config(&["a", "c"])));
        assert_eq!(stream.resume_from().map(|r| r.to_query()), Some("e1.4".to_owned()));
    }

    #[test]
    fn a_delta_from_elsewhere_is_refused_and_keeps_the_config() {
        let mut stream = ConfigStream::default();
        let changes = ConfigDelta::default();
        assert!(stream.apply(update("e1", 2, UpdateBody::Delta { from: 1, changes: changes.clone() })).is_err());
        stream.apply(update("e1", 3, UpdateBody::Full(config(&["a"])))).map(|_| ()).unwrap_or_default();
        let other_epoch = stream.apply(update("e2", 4, UpdateBody::Delta { from: 3, changes: changes.clone() }));
        assert!(other_epoch.is_err());
        let gap = stream.apply(update("e1", 5, UpdateBody::Delta { from: 4, changes }));
        assert!(gap.is_err_and(|e| e.to_string().contains("e1.3")));
        assert_eq!(stream.resume_from().map(|r| r.version), Some(3));
    }

    #[test]
    fn resume_tokens_round_trip() {
        let at = ResumeFrom { epoch: "a1b2".into(), version: 17 };
        assert_eq!(ResumeFrom::parse(&at.to_query()), Some(at));
        assert_eq!(ResumeFrom::parse("nodot"), None);
        assert_eq!(ResumeFrom::parse("e.x"), None);
    }
}
