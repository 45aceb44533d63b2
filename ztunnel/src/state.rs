//! The agent's current view of the mesh: the last good config snapshot,
//! versioned. Readers take a cheap `Arc`; the config source replaces it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh::config::Snapshot;
use tokio::sync::watch;

/// One applied config.
#[derive(Debug)]
pub struct Versioned {
    /// Increases by one with every applied config; 0 before the first.
    pub version: u64,
    pub snapshot: Snapshot,
    /// Counts this version in [`held_versions`] while it lives.
    _held: Held,
}

impl Versioned {
    fn new(version: u64, snapshot: Snapshot) -> Self {
        Self { version, snapshot, _held: Held::new() }
    }
}

/// Config versions alive in memory (the current one, and older ones that
/// someone still holds). A live connection must not pin its version, so
/// this stays at 1 however long connections last; the gauge lets tests and
/// operators check that.
static HELD: AtomicUsize = AtomicUsize::new(0);

pub fn held_versions() -> usize {
    HELD.load(Ordering::Relaxed)
}

#[derive(Debug)]
struct Held(());

impl Held {
    fn new() -> Self {
        let held = HELD.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::metrics::CONFIG_VERSIONS_HELD).set(held as f64);
        Self(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let held = HELD.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(crate::metrics::CONFIG_VERSIONS_HELD).set(held as f64);
    }
}

#[derive(Clone, Debug)]
pub struct State {
    current: watch::Sender<Arc<Versioned>>,
}

impl State {
    pub fn new(initial: Snapshot) -> Self {
        let (current, _) = watch::channel(Arc::new(Versioned::new(1, initial)));
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
            *current = Arc::new(Versioned::new(version, snapshot));
        });
        version
    }

    /// Notified on every applied config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Versioned>> {
        self.current.subscribe()
    }
}
