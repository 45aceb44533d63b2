//! The agent's current view of the mesh: the last good config snapshot,
//! versioned. Readers take a cheap `Arc`; the config source replaces it.

use std::sync::Arc;

use mesh::config::Snapshot;
use tokio::sync::watch;

/// One applied config.
#[derive(Debug, Default)]
pub struct Versioned {
    /// Increases by one with every applied config; 0 before the first.
    pub version: u64,
    pub snapshot: Snapshot,
}

#[derive(Clone, Debug)]
pub struct State {
    current: watch::Sender<Arc<Versioned>>,
}

impl State {
    pub fn new(initial: Snapshot) -> Self {
        let (current, _) = watch::channel(Arc::new(Versioned { version: 1, snapshot: initial }));
        Self { current }
    }

    pub fn current(&self) -> Arc<Versioned> {
        self.current.borrow().clone()
    }

    /// Publishes a new snapshot and returns its version.
    pub fn apply(&self, snapshot: Snapshot) -> u64 {
        let mut version = 0;
        self.current.send_modify(|current| {
            version = current.version + 1;
            *current = Arc::new(Versioned { version, snapshot });
        });
        version
    }

    /// Notified on every applied config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Versioned>> {
        self.current.subscribe()
    }
}
