//! From object changes to a published config: translate each change,
//! checking each object on its own and against the others (an object that
//! agents would refuse, or that claims another's IP, is refused alone and
//! its last good version stays), then publish what changed as one delta.

use tracing::{info, warn};

use crate::metrics::{CONFIG_VERSION, RECONCILE_ERRORS};
use crate::resources::{Object, ObjectKey};
use crate::store::Store;
use crate::translate::{Outcome, Translator};

#[derive(Clone, Debug)]
pub enum Change {
    Upsert(Object),
    Delete(ObjectKey),
}

/// An object whose latest version is rejected (its `Accepted=False`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub object: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Reconciler {
    translator: Translator,
    store: Store,
    rejections: tokio::sync::watch::Sender<Vec<Rejection>>,
}

impl Reconciler {
    pub fn new(root_namespace: &str, cluster_domain: &str, store: Store) -> Self {
        let rejections = tokio::sync::watch::channel(Vec::new()).0;
        let translator = Translator::new(root_namespace).with_cluster_domain(cluster_domain);
        Self { translator, store, rejections }
    }

    /// Rejected objects and why, kept current (served on `/status`).
    pub fn rejections(&self) -> tokio::sync::watch::Receiver<Vec<Rejection>> {
        self.rejections.subscribe()
    }

    /// Applies a batch of changes and publishes the result. Returns the
    /// outcome of each upserted object (for status), and the version in force.
    pub fn apply(&mut self, changes: Vec<Change>) -> (Vec<(ObjectKey, Outcome)>, u64) {
        let mut outcomes = Vec::new();
        for change in changes {
            match change {
                Change::Upsert(object) => outcomes.push((object.key(), self.translator.upsert(&object))),
                Change::Delete(key) => self.translator.remove(&key),
            }
        }
        // Routes are settled once the batch is in: their final word wins.
        let settled = self.translator.settle();
        outcomes.retain(|(key, _)| !settled.iter().any(|(k, _)| k == key));
        outcomes.extend(settled);
        // Rejections are visible (on `/status`) before they are logged, so
        // whoever reads the log finds them there.
        self.publish_rejections();
        for (key, outcome) in &outcomes {
            if let Outcome::Rejected(reason) = outcome {
                metrics::counter!(RECONCILE_ERRORS, "kind" => format!("{:?}", key.kind)).increment(1);
                warn!(object = %key, %reason, "rejected; its last good version stays in force");
            }
        }
        (outcomes, self.publish())
    }

    fn publish_rejections(&self) {
        let rejections = self
            .translator
            .rejected()
            .iter()
            .map(|(key, reason)| Rejection { object: key.to_string(), reason: reason.clone() })
            .collect();
        self.rejections.send_if_modified(|current| {
            let changed = *current != rejections;
            *current = rejections;
            changed
        });
    }

    /// Publishes what changed in force. Every object was checked as it
    /// came in (alone, and for clashes with the others), so the result is
    /// a config agents accept without checking the whole of it here.
    fn publish(&mut self) -> u64 {
        let changes = self.translator.take_delta();
        let changed = changes.changed_objects();
        let before = self.store.current().version;
        let version = self.store.publish(self.translator.view(), changes);
        if version != before {
            metrics::gauge!(CONFIG_VERSION).set(version as f64);
            info!(version, changed, "config published");
        }
        version
    }
}

#[cfg(test)]
mod tests;
