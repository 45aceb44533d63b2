//! The published config: versioned, with the last few versions kept so a
//! reconnecting agent can get a delta instead of the world. Publishing
//! never waits for agents: each follows the store at its own pace through a
//! watch channel, which keeps only the newest version.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mesh::config::MeshConfig;
use tokio::sync::watch;

/// Versions kept for resuming agents.
const HISTORY: usize = 64;

#[derive(Debug)]
pub struct Published {
    pub epoch: String,
    pub version: u64,
    pub config: Arc<MeshConfig>,
    /// When this version was published (for push latency).
    pub at: Instant,
    /// Earlier versions, oldest first, this one excluded.
    history: VecDeque<(u64, Arc<MeshConfig>)>,
}

impl Published {
    fn clone_shallow(&self) -> Self {
        Self {
            epoch: self.epoch.clone(),
            version: self.version,
            config: self.config.clone(),
            at: Instant::now(),
            history: self.history.clone(),
        }
    }

    /// The config as of `version`, if still remembered (this one included).
    pub fn at_version(&self, version: u64) -> Option<&Arc<MeshConfig>> {
        if version == self.version {
            return Some(&self.config);
        }
        self.history.iter().find(|(v, _)| *v == version).map(|(_, config)| config)
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    current: watch::Sender<Arc<Published>>,
}

impl Store {
    /// A store whose versions are tagged with a fresh random epoch.
    pub fn new() -> Self {
        let epoch = format!("{:016x}", rand::random::<u64>());
        let first = Published {
            epoch,
            version: 0,
            config: Arc::new(MeshConfig::default()),
            at: Instant::now(),
            history: VecDeque::new(),
        };
        Self { current: watch::channel(Arc::new(first)).0 }
    }

    pub fn current(&self) -> Arc<Published> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.current.subscribe()
    }

    /// Marks the (empty) initial config as published, for a source that
    /// holds nothing yet; a no-op once anything was published.
    pub fn publish_initial(&self) -> u64 {
        self.current.send_if_modified(|current| {
            if current.version > 0 {
                return false;
            }
            let mut first = Published { history: VecDeque::new(), ..(**current).clone_shallow() };
            first.version = 1;
            *current = Arc::new(first);
            true
        });
        self.current().version
    }

    /// Publishes `config` as a new version, unless nothing changed.
    /// Returns the version now in force.
    pub fn publish(&self, config: MeshConfig) -> u64 {
        let mut version = 0;
        self.current.send_if_modified(|current| {
            version = current.version;
            if *current.config == config {
                return false;
            }
            let mut history = current.history.clone();
            history.push_back((current.version, current.config.clone()));
            if history.len() > HISTORY {
                history.pop_front();
            }
            version = current.version + 1;
            *current = Arc::new(Published {
                epoch: current.epoch.clone(),
                version,
                config: Arc::new(config),
                at: Instant::now(),
                history,
            });
            true
        });
        version
    }
}

#[cfg(test)]
mod tests {
    use mesh::config::{MeshConfig, Namespace};

    use super::Store;

    fn config(name: &str) -> MeshConfig {
        MeshConfig { namespaces: vec![Namespace { name: name.into(), ..Default::default() }], ..Default::default() }
    }

    #[test]
    fn versions_advance_only_on_change_and_history_is_bounded() {
        let store = Store::new();
        assert_eq!(store.publish(config("a")), 1);
        assert_eq!(store.publish(config("a")), 1, "an unchanged config is not a new version");
        for i in 0..100 {
            store.publish(config(&format!("n{i}")));
        }
        let current = store.current();
        assert_eq!(current.version, 101);
        assert!(current.at_version(101).is_some());
        assert!(current.at_version(40).is_some());
        assert!(current.at_version(1).is_none(), "old versions are forgotten");
    }
}
