//! Kubernetes mode: the root certificate, as the ConfigMap `ambit-ca-root`,
//! in every namespace that holds a waypoint. A waypoint's pods mount it to
//! trust the controller (as Istio's namespace controller does with
//! `istio-ca-root-cert`). Only the leader writes; the ConfigMap is created
//! if absent and left alone while it contains the root, so a rotation's
//! two-root bundle is not undone.

use std::collections::BTreeSet;

use mesh::drain::Drain;
use tokio::sync::watch;
use tracing::warn;

use crate::kube_ca::publish_root;
use crate::store::Store;

pub async fn run(
    client: kube::Client,
    root_pem: String,
    store: Store,
    mut leader: watch::Receiver<bool>,
    drain: Drain,
) {
    let mut versions = store.subscribe();
    // Namespaces that already have it, since this replica became leader.
    let mut published: BTreeSet<String> = BTreeSet::new();
    loop {
        if *leader.borrow_and_update() {
            let wanted: BTreeSet<String> =
                versions.borrow_and_update().config.waypoints().map(|w| w.namespace.clone()).collect();
            for namespace in wanted.difference(&published.clone()) {
                match publish_root(&client, namespace, &root_pem).await {
                    Ok(()) => drop(published.insert(namespace.clone())),
                    Err(error) => warn!(%namespace, error = format!("{error:#}"), "cannot publish the root"),
                }
            }
        } else {
            published.clear();
        }
        tokio::select! {
            () = drain.signaled() => return,
            changed = versions.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}
