//! Policy status: `Accepted=True`, or `Accepted=False` with the reason, on
//! each policy's status, plus a Warning Event for a rejection. Only the
//! leader writes. Each object's latest outcome is kept; a writer task
//! brings the cluster in line with it, so a replica that becomes leader
//! writes everything once, and a burst of changes coalesces.
//!
//! Writing leaves others' status alone:
//! - Istio kinds and Gateways: server-side apply of the one condition,
//!   with the field manager [`FIELD_MANAGER`] (the CRDs list conditions by
//!   `type`, so other controllers' conditions survive);
//! - HTTPRoutes: `status.parents` is one list shared by every controller
//!   that serves a parent, so the writer reads it, replaces only the entries
//!   with its [`CONTROLLER_NAME`], and writes it back under the read's
//!   resourceVersion (a concurrent writer makes it retry).
//!
//! A condition keeps its `lastTransitionTime` while its status stays the
//! same. A failed write is retried with exponential backoff (1 s to 60 s),
//! as kube-rs's `error_policy` would requeue it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use mesh::drain::Drain;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::crds;
use crate::kube_source::Meta;
use crate::resources::{Kind, ObjectKey};
use crate::translate::Outcome;

/// Who the controller is in `managedFields`.
pub const FIELD_MANAGER: &str = "ambit-controller";
/// Who writes Gateway API route status (`status.parents[].controllerName`).
pub const CONTROLLER_NAME: &str = "ambit.dev/mesh-controller";
/// Status writes retried after failing, by kind.
pub const STATUS_RETRIES: &str = "ambit_controller_status_write_retries_total";

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

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

/// A write that failed, and when to try it again.
struct Retry {
    at: Instant,
    failures: u32,
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
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
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
        let mut retries: BTreeMap<ObjectKey, Retry> = BTreeMap::new();
        loop {
            if *leader.borrow_and_update() {
                for (key, (wanted, meta)) in self.due(&written, &retries) {
                    match write(&client, &recorder, &key, &wanted, &meta).await {
                        Ok(()) => {
                            retries.remove(&key);
                            written.insert(key, wanted);
                        }
                        Err(error) => {
                            let failures = retries.get(&key).map_or(1, |r| r.failures + 1);
                            let pause = backoff(failures);
                            warn!(object = %key, %error, retry_in = ?pause, "cannot write status");
                            metrics::counter!(STATUS_RETRIES, "kind" => format!("{:?}", key.kind)).increment(1);
                            retries.insert(key, Retry { at: Instant::now() + pause, failures });
                        }
                    }
                }
            } else {
                written.clear();
                retries.clear();
            }
            let next_retry = retries.values().map(|r| r.at).min();
            tokio::select! {
                () = drain.signaled() => return,
                () = self.changed.notified() => {}
                changed = leader.changed() => if changed.is_err() { return },
                () = sleep_until(next_retry) => {}
            }
        }
    }

    /// What to write now: what changed since it was written, unless a
    /// retry for it is not due yet.
    fn due(
        &self,
        written: &BTreeMap<ObjectKey, Wanted>,
        retries: &BTreeMap<ObjectKey, Retry>,
    ) -> Vec<(ObjectKey, (Wanted, Meta))> {
        let now = Instant::now();
        let wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        wanted
            .iter()
            .filter(|(k, (w, _))| written.get(*k) != Some(w))
            .filter(|(k, _)| retries.get(*k).is_none_or(|r| r.at <= now))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 1 s, 2 s, 4 s … 60 s.
fn backoff(failures: u32) -> Duration {
    RETRY_MIN.saturating_mul(1 << failures.saturating_sub(1).min(10)).min(RETRY_MAX)
}

/// The `Accepted` condition to write, given the one on the object now: its
/// `lastTransitionTime` moves only when its status does.
fn condition(kind: Kind, wanted: &Wanted, previous: Option<&Value>, now: Timestamp) -> Value {
    let status = if wanted.accepted { "True" } else { "False" };
    let reason = match (wanted.accepted, kind) {
        (true, _) => "Accepted",
        (false, Kind::HttpRoute) => "UnsupportedValue",
        (false, _) => "Invalid",
    };
    let since = previous
        .filter(|p| p["status"] == status)
        .and_then(|p| p["lastTransitionTime"].as_str())
        .map_or_else(|| now.to_string(), str::to_owned);
    let mut condition = json!({
        "type": "Accepted",
        "status": status,
        "reason": reason,
        "message": wanted.message,
        "lastTransitionTime": since,
    });
    if let (Some(generation), Some(fields)) = (wanted.generation, condition.as_object_mut()) {
        fields.insert("observedGeneration".into(), generation.into());
    }
    condition
}

/// The `Accepted` condition in `conditions`, if there is one.
fn accepted_in(conditions: &Value) -> Option<&Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == "Accepted")
}

async fn write(
    client: &kube::Client,
    recorder: &Recorder,
    key: &ObjectKey,
    wanted: &Wanted,
    meta: &Meta,
) -> kube::Result<()> {
    use gateway_api::apis::standard::gateways::Gateway;
    match key.kind {
        Kind::AuthorizationPolicy => apply_condition::<crds::AuthorizationPolicy>(client, key, wanted).await?,
        Kind::PeerAuthentication => apply_condition::<crds::PeerAuthentication>(client, key, wanted).await?,
        Kind::VirtualService => apply_condition::<crds::networking::VirtualService>(client, key, wanted).await?,
        Kind::DestinationRule => apply_condition::<crds::networking::DestinationRule>(client, key, wanted).await?,
        Kind::Gateway => apply_condition::<Gateway>(client, key, wanted).await?,
        Kind::HttpRoute => replace_route_parents(client, key, wanted, meta).await?,
        Kind::Namespace | Kind::Pod | Kind::Service => return Ok(()),
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
    Ok(())
}

/// Server-side apply of the one condition, as [`FIELD_MANAGER`].
async fn apply_condition<K>(client: &kube::Client, key: &ObjectKey, wanted: &Wanted) -> kube::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let api = Api::<K>::namespaced(client.clone(), &key.namespace);
    let current = serde_json::to_value(api.get_status(&key.name).await?).unwrap_or_default();
    let previous = accepted_in(&current["status"]["conditions"]);
    let condition = condition(key.kind, wanted, previous, Timestamp::now());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": {"conditions": [condition]},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&key.name, &params, &Patch::Apply(patch)).await.map(drop)
}

/// Reads the route, replaces this controller's `status.parents` entries,
/// and writes it back under the read's resourceVersion.
async fn replace_route_parents(
    client: &kube::Client,
    key: &ObjectKey,
    wanted: &Wanted,
    meta: &Meta,
) -> kube::Result<()> {
    use gateway_api::apis::experimental::httproutes::HttpRoute;
    let api = Api::<HttpRoute>::namespaced(client.clone(), &key.namespace);
    let mut route = serde_json::to_value(api.get_status(&key.name).await?).map_err(kube::Error::SerdeError)?;
    let parents = route_parents(&route["status"]["parents"], key.kind, wanted, meta, Timestamp::now());
    route["status"] = json!({"parents": parents});
    let route: HttpRoute = serde_json::from_value(route).map_err(kube::Error::SerdeError)?;
    api.replace_status(&key.name, &PostParams::default(), &route).await.map(drop)
}

/// Others' parent entries as they are, then one of ours per Service parent.
fn route_parents(current: &Value, kind: Kind, wanted: &Wanted, meta: &Meta, now: Timestamp) -> Vec<Value> {
    let entries = current.as_array().cloned().unwrap_or_default();
    let (ours, others): (Vec<Value>, Vec<Value>) =
        entries.into_iter().partition(|p| p["controllerName"] == CONTROLLER_NAME);
    let mut parents = others;
    for parent in &meta.route_parents {
        let previous = ours.iter().find(|p| p["parentRef"] == *parent).and_then(|p| accepted_in(&p["conditions"]));
        let condition = condition(kind, wanted, previous, now);
        parents.push(json!({"parentRef": parent, "controllerName": CONTROLLER_NAME, "conditions": [condition]}));
    }
    parents
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;

    use super::*;

    fn wanted(accepted: bool) -> Wanted {
        Wanted { accepted, message: "m".into(), generation: Some(3) }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let first = condition(Kind::AuthorizationPolicy, &wanted(true), None, at(1_000));
        assert_eq!((first["status"].as_str(), first["observedGeneration"].as_i64()), (Some("True"), Some(3)));
        let again = condition(Kind::AuthorizationPolicy, &wanted(true), Some(&first), at(2_000));
        assert_eq!(again["lastTransitionTime"], first["lastTransitionTime"], "same status, same transition");
        let flipped = condition(Kind::AuthorizationPolicy, &wanted(false), Some(&again), at(3_000));
        assert_ne!(flipped["lastTransitionTime"], first["lastTransitionTime"]);
        assert_eq!(flipped["reason"], "Invalid");
    }

    #[test]
    fn other_controllers_route_parents_survive() {
        let theirs =
            json!({"parentRef": {"name": "gw"}, "controllerName": "istio.io/gateway-controller", "conditions": []});
        let stale = json!({"parentRef": {"kind": "Service", "name": "old"}, "controllerName": CONTROLLER_NAME});
        let meta = Meta {
            generation: Some(3),
            reference: ObjectReference::default(),
            route_parents: vec![json!({"kind": "Service", "name": "reviews"})],
            fingerprint: 0,
        };
        let parents = route_parents(&json!([theirs, stale]), Kind::HttpRoute, &wanted(true), &meta, at(1_000));
        assert_eq!(parents.len(), 2, "{parents:#?}");
        assert_eq!(parents[0], theirs, "another controller's entry is untouched");
        assert_eq!(parents[1]["parentRef"]["name"], "reviews", "ours replaced, for the current parents");
    }

    #[test]
    fn retries_back_off() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), RETRY_MAX);
    }
}
