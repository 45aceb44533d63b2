//! Policy status: `Accepted=True`, or `Accepted=False` with the reason, on
//! each policy's `status.conditions`, plus a Warning Event for a rejection.
//! Only the leader writes. Each object's latest outcome is kept; a writer
//! task brings the cluster in line with it, so a replica that becomes
//! leader writes everything once, and a burst of changes coalesces.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use mesh::drain::Drain;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::crds;
use crate::kube_source::Meta;
use crate::resources::{Kind, ObjectKey};
use crate::translate::Outcome;

#[derive(Clone, Debug, PartialEq)]
struct Wanted {
    accepted: bool,
    message: String,
    generation: Option<i64>,
}

#[derive(Clone)]
pub struct StatusWriter {
    wanted: Arc<Mutex<BTreeMap<ObjectKey, (Wanted, Meta)>>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// Starts the writer task; it writes only while `leader` is true.
    pub fn start(client: kube::Client, reporter: Reporter, leader: watch::Receiver<bool>, drain: &Drain) -> Self {
        let writer = Self { wanted: Arc::default(), changed: Arc::default() };
        let recorder = Recorder::new(client.clone(), reporter);
        drain.spawn(writer.clone().run(client, recorder, leader, drain.clone()));
        writer
    }

    /// Records the outcomes of a reconcile.
    pub fn report(&self, outcomes: Vec<(ObjectKey, Outcome)>, metas: &BTreeMap<ObjectKey, Meta>) {
        let Ok(mut wanted) = self.wanted.lock() else { return };
        for (key, outcome) in outcomes {
            let Some(meta) = metas.get(&key) else { continue };
            let (accepted, message) = match outcome {
                Outcome::Accepted => (true, "the mesh applies this version".to_owned()),
                Outcome::Rejected(reason) => (false, format!("{reason}; the last good version stays in force")),
                Outcome::NotRouted(_) => continue,
            };
            wanted.insert(key, (Wanted { accepted, message, generation: meta.generation }, meta.clone()));
        }
        wanted.retain(|key, _| metas.contains_key(key));
        self.changed.notify_one();
    }

    async fn run(self, client: kube::Client, recorder: Recorder, mut leader: watch::Receiver<bool>, drain: Drain) {
        let mut written: BTreeMap<ObjectKey, Wanted> = BTreeMap::new();
        loop {
            if *leader.borrow_and_update() {
                let todo: Vec<_> = match self.wanted.lock() {
                    Ok(wanted) => wanted
                        .iter()
                        .filter(|(k, (w, _))| written.get(*k) != Some(w))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    Err(_) => return,
                };
                for (key, (wanted, meta)) in todo {
                    if write(&client, &recorder, &key, &wanted, &meta).await {
                        written.insert(key, wanted);
                    }
                }
            } else {
                written.clear();
            }
            tokio::select! {
                () = drain.signaled() => return,
                () = self.changed.notified() => {}
                changed = leader.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Who writes Gateway API route status (`status.parents[].controllerName`).
pub const CONTROLLER_NAME: &str = "ambit.dev/mesh-controller";

/// The status patch for one object. Istio kinds and Gateways carry
/// `status.conditions`; an HTTPRoute carries one entry per Service parent,
/// as the Gateway API asks.
fn status_patch(kind: Kind, wanted: &Wanted, meta: &Meta) -> serde_json::Value {
    let reason = match (wanted.accepted, kind) {
        (true, _) => "Accepted",
        (false, Kind::HttpRoute) => "UnsupportedValue",
        (false, _) => "Invalid",
    };
    let mut condition = json!({
        "type": "Accepted",
        "status": if wanted.accepted { "True" } else { "False" },
        "reason": reason,
        "message": wanted.message,
        "lastTransitionTime": Timestamp::now().to_string(),
    });
    if let (Some(generation), Some(fields)) = (wanted.generation, condition.as_object_mut()) {
        fields.insert("observedGeneration".into(), generation.into());
    }
    if kind == Kind::HttpRoute {
        let parents: Vec<_> = meta
            .route_parents
            .iter()
            .map(|parent| json!({"parentRef": parent, "controllerName": CONTROLLER_NAME, "conditions": [condition]}))
            .collect();
        return json!({"status": {"parents": parents}});
    }
    json!({"status": {"conditions": [condition]}})
}

async fn patch_status<K>(client: &kube::Client, key: &ObjectKey, patch: &Patch<serde_json::Value>) -> kube::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + std::fmt::Debug,
    K: serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), &key.namespace);
    api.patch_status(&key.name, &PatchParams::default(), patch).await.map(drop)
}

async fn write(client: &kube::Client, recorder: &Recorder, key: &ObjectKey, wanted: &Wanted, meta: &Meta) -> bool {
    use gateway_api::apis::standard::{gateways::Gateway, httproutes::HttpRoute};
    let patch = Patch::Merge(status_patch(key.kind, wanted, meta));
    let result = match key.kind {
        Kind::AuthorizationPolicy => patch_status::<crds::AuthorizationPolicy>(client, key, &patch).await,
        Kind::PeerAuthentication => patch_status::<crds::PeerAuthentication>(client, key, &patch).await,
        Kind::VirtualService => patch_status::<crds::networking::VirtualService>(client, key, &patch).await,
        Kind::DestinationRule => patch_status::<crds::networking::DestinationRule>(client, key, &patch).await,
        Kind::HttpRoute => patch_status::<HttpRoute>(client, key, &patch).await,
        Kind::Gateway => patch_status::<Gateway>(client, key, &patch).await,
        Kind::Namespace | Kind::Pod | Kind::Service => return true,
    };
    if let Err(error) = result {
        warn!(object = %key, %error, "cannot write status");
        return false;
    }
    if !wanted.accepted {
        let event = Event {
            type_: EventType::Warning,
            reason: "Invalid".into(),
            note: Some(wanted.message.clone()),
            action: "Translate".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &meta.reference).await {
            debug!(object = %key, %error, "cannot publish the event");
        }
    }
    true
}
