//! Live inbound connections, so that a policy change can close the ones it
//! now denies (Istio's behaviour: authorization applies to established
//! connections too, not only new ones).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mesh::authz::ConnectionInfo;
use mesh::config::Snapshot;
use mesh::identity::Identity;
use tokio_util::sync::CancellationToken;

/// What authorization decided on, kept to decide again.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// Whether the connection arrived in plaintext (PeerAuthentication applies).
    pub plaintext: bool,
    pub cancel: CancellationToken,
}

#[derive(Debug, Default)]
pub struct Connections {
    live: Arc<Mutex<HashMap<u64, Tracked>>>,
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    live: Arc<Mutex<HashMap<u64, Tracked>>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&self.id);
        }
    }
}

impl Connections {
    pub fn register(&self, id: u64, tracked: Tracked) -> Registration {
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, tracked);
        }
        Registration { id, live: self.live.clone() }
    }

    /// Re-authorizes every live connection against `snapshot` and cancels
    /// those it denies, or whose destination left the mesh or the node.
    /// Returns how many were cancelled.
    pub fn revalidate(&self, snapshot: &Snapshot, node: &str) -> usize {
        let Ok(live) = self.live.lock() else { return 0 };
        let mut cancelled = 0;
        for tracked in live.values() {
            let allowed = super::local_enrolled(snapshot, node, tracked.dst_ip).is_some_and(|w| {
                let info = ConnectionInfo {
                    src_identity: tracked.src_identity.as_ref(),
                    src_ip: tracked.src_ip,
                    dst_ip: tracked.dst_ip,
                    dst_port: tracked.dst_port,
                };
                let authorizer = snapshot.authorizer();
                (!tracked.plaintext || authorizer.plaintext_allowed(w, tracked.dst_port))
                    && authorizer.authorize(w, &info).is_allowed()
            });
            if !allowed && !tracked.cancel.is_cancelled() {
                tracked.cancel.cancel();
                cancelled += 1;
            }
        }
        cancelled
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }
}
