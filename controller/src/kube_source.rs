//! Kubernetes mode: watchers on every kind the mesh reads, merged into one
//! stream of changes for the same [`Reconciler`] the local directory feeds.
//! Nothing is published until every kind has been listed once, so agents
//! never see a half-read cluster; after that, whatever arrived together is
//! applied together.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;

use futures::{FutureExt as _, Stream, StreamExt as _};
use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use mesh::config::policy::{ObjectMeta, Resource, SECURITY_API_VERSION};
use mesh::drain::Drain;
use tracing::{info, warn};

use crate::crds;
use crate::reconcile::{Change, Reconciler};
use crate::resources::{Kind, Object, ObjectKey};
use crate::status::StatusWriter;

/// What a watcher reported, kind-agnostic.
enum Seen {
    Relist(Kind),
    Object(Object, Option<Meta>),
    Deleted(ObjectKey),
    Listed(Kind),
    /// The API server does not serve the kind (its CRD is not installed).
    Unserved(Kind),
}

/// What status writing needs of a policy object.
#[derive(Clone, Debug)]
pub struct Meta {
    pub generation: Option<i64>,
    pub reference: ObjectReference,
    /// An HTTPRoute's Service parentRefs: its status is per parent.
    pub route_parents: Vec<serde_json::Value>,
    /// What a change must alter to matter: the object's identity, spec
    /// (its generation), labels and annotations. Not its status, which the
    /// controller itself writes.
    pub fingerprint: u64,
}

fn meta_of<K: kube::Resource<DynamicType = ()>>(object: &K) -> Meta {
    use std::hash::{Hash as _, Hasher as _};
    let meta = object.meta();
    // Events are aggregated per (reason, regarding); naming the version
    // makes each rejected version its own Event, so the latest problem is
    // the one users see rather than a count on the first.
    let reference = ObjectReference { resource_version: meta.resource_version.clone(), ..object.object_ref(&()) };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&meta.uid, meta.generation, &meta.labels, &meta.annotations).hash(&mut hasher);
    Meta { generation: meta.generation, reference, route_parents: Vec::new(), fingerprint: hasher.finish() }
}

/// Watch events of the kinds the controller writes status to, by whether
/// they changed anything it reads (`applied`) or only status (`unchanged`).
pub const WATCH_EVENTS: &str = "ambit_controller_watch_events_total";

/// A 404 from a list means the kind is not served; a watcher keeps
/// retrying, so the kind is picked up once its CRD is installed.
fn is_unserved(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404)
}

type SeenStream = Pin<Box<dyn Stream<Item = Result<Seen, watcher::Error>> + Send>>;

fn watch<K, F>(api: Api<K>, kind: Kind, convert: F) -> SeenStream
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    F: Fn(K) -> (Object, Option<Meta>) + Send + Sync + 'static,
{
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    Box::pin(events.map(move |event| {
        if event.as_ref().is_err_and(is_unserved) {
            return Ok(Seen::Unserved(kind));
        }
        event.map(|event| match event {
            Event::Init => Seen::Relist(kind),
            Event::InitDone => Seen::Listed(kind),
            Event::Apply(object) | Event::InitApply(object) => {
                let (object, meta) = convert(object);
                Seen::Object(object, meta)
            }
            Event::Delete(object) => Seen::Deleted(convert(object).0.key()),
        })
    }))
}

fn policy<S: Clone>(kind: &str, metadata: &kube::core::ObjectMeta, spec: &S) -> Resource<S> {
    Resource {
        api_version: SECURITY_API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: metadata.name.clone().unwrap_or_default(),
            namespace: metadata.namespace.clone().unwrap_or_default(),
            annotations: ObjectMeta::honoured_annotations(&metadata.annotations.clone().unwrap_or_default()),
        },
        spec: spec.clone(),
        status: None,
    }
}

fn streams(client: &kube::Client) -> Vec<SeenStream> {
    let c = || client.clone();
    vec![
        watch(Api::<Namespace>::all(c()), Kind::Namespace, |o| (Object::Namespace(Box::new(o)), None)),
        watch(Api::<Pod>::all(c()), Kind::Pod, |o| (Object::Pod(Box::new(o)), None)),
        watch(Api::<Service>::all(c()), Kind::Service, |o| (Object::Service(Box::new(o)), None)),
        watch(Api::<crds::AuthorizationPolicy>::all(c()), Kind::AuthorizationPolicy, |o| {
            let meta = meta_of(&o);
            let resource = policy("AuthorizationPolicy", &o.metadata, &o.spec.spec);
            (Object::AuthorizationPolicy(Box::new(resource)), Some(meta))
        }),
        watch(Api::<crds::PeerAuthentication>::all(c()), Kind::PeerAuthentication, |o| {
            let meta = meta_of(&o);
            let resource = policy("PeerAuthentication", &o.metadata, &o.spec.spec);
            (Object::PeerAuthentication(Box::new(resource)), Some(meta))
        }),
        watch(Api::<crds::networking::VirtualService>::all(c()), Kind::VirtualService, |o| {
            (Object::VirtualService(Box::new(o.clone())), Some(meta_of(&o)))
        }),
        watch(Api::<crds::networking::DestinationRule>::all(c()), Kind::DestinationRule, |o| {
            (Object::DestinationRule(Box::new(o.clone())), Some(meta_of(&o)))
        }),
        watch(Api::<HttpRoute>::all(c()), Kind::HttpRoute, |o| {
            let parents = crate::translate::service_parents(&o);
            let parents = parents.iter().filter_map(|p| serde_json::to_value(p).ok()).collect();
            let meta = Meta { route_parents: parents, ..meta_of(&o) };
            (Object::HttpRoute(Box::new(o)), Some(meta))
        }),
        watch(Api::<Gateway>::all(c()), Kind::Gateway, |o| (Object::Gateway(Box::new(o.clone())), Some(meta_of(&o)))),
    ]
}

const KINDS: usize = Kind::ALL.len();

/// Follows the cluster until drained.
pub async fn follow(client: kube::Client, mut reconciler: Reconciler, status: StatusWriter, drain: Drain) {
    let mut events = futures::stream::select_all(streams(&client));
    let mut state = SyncState::default();
    loop {
        let first = tokio::select! {
            () = drain.signaled() => return,
            next = events.next() => match next { Some(seen) => seen, None => return },
        };
        // Take whatever else is already waiting: one publication per burst.
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
            if batch.len() >= 10_000 {
                break;
            }
        }
        for seen in batch {
            match seen {
                Ok(seen) => state.record(seen),
                Err(error) => warn!(%error, "watch failed; retrying with backoff"),
            }
        }
        // Wait for the first full listing; after it, publish only on change.
        // (An empty cluster still gets its first, empty, publication.)
        if state.listed.len() < KINDS || (state.synced && state.pending.is_empty()) {
            continue;
        }
        let first_sync = !state.synced;
        state.synced = true;
        let (outcomes, version) = reconciler.apply(std::mem::take(&mut state.pending));
        if first_sync {
            info!(version, "every kind listed; serving config");
        }
        status.report(outcomes, &state.metas);
    }
}

#[derive(Default)]
struct SyncState {
    /// Kinds listed at least once.
    listed: BTreeSet<Kind>,
    synced: bool,
    /// Per kind, keys seen since its last relist began.
    relisting: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    /// Every key currently known, per kind.
    known: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    pending: Vec<Change>,
    metas: BTreeMap<ObjectKey, Meta>,
    /// Kinds whose CRD is missing (reported once each).
    unserved: BTreeSet<Kind>,
}

impl SyncState {
    fn record(&mut self, seen: Seen) {
        match seen {
            Seen::Relist(kind) => {
                self.relisting.insert(kind, BTreeSet::new());
            }
            Seen::Object(object, meta) => {
                let key = object.key();
                if let Some(keys) = self.relisting.get_mut(&key.kind) {
                    keys.insert(key.clone());
                }
                self.known.entry(key.kind).or_default().insert(key.clone());
                if let Some(meta) = meta {
                    // The predicate: a change to status alone (our own
                    // write, or another controller's) is no change at all.
                    let unchanged = self.metas.get(&key).is_some_and(|m| m.fingerprint == meta.fingerprint);
                    let effect = if unchanged { "unchanged" } else { "applied" };
                    metrics::counter!(WATCH_EVENTS, "kind" => format!("{:?}", key.kind), "effect" => effect)
                        .increment(1);
                    self.metas.insert(key, meta);
                    if unchanged {
                        return;
                    }
                }
                self.pending.push(Change::Upsert(object));
            }
            Seen::Deleted(key) => {
                self.forget(&key);
            }
            Seen::Unserved(kind) => {
                if self.unserved.insert(kind) {
                    warn!(?kind, "the API server does not serve this kind (is its CRD installed?); reading none");
                }
                // As good as an empty listing: whatever was known is gone.
                self.relisting.insert(kind, BTreeSet::new());
                self.finish_listing(kind);
            }
            Seen::Listed(kind) => {
                if self.unserved.remove(&kind) {
                    info!(?kind, "the API server serves this kind now");
                }
                self.finish_listing(kind);
            }
        }
    }

    /// Whatever was known but not relisted was deleted meanwhile.
    fn finish_listing(&mut self, kind: Kind) {
        let relisted = self.relisting.remove(&kind).unwrap_or_default();
        let gone: Vec<ObjectKey> =
            self.known.get(&kind).map(|k| k.difference(&relisted).cloned().collect()).unwrap_or_default();
        for key in gone {
            self.forget(&key);
        }
        self.listed.insert(kind);
    }

    fn forget(&mut self, key: &ObjectKey) {
        if let Some(keys) = self.known.get_mut(&key.kind) {
            keys.remove(key);
        }
        self.metas.remove(key);
        self.pending.push(Change::Delete(key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::{Seen, SyncState};
    use crate::resources::{Kind, Object, parse_documents};

    fn route() -> Object {
        let yaml =
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: x}\nspec: {}\n";
        parse_documents(yaml).ok().and_then(|p| p.objects.into_iter().next()).unwrap_or_else(|| panic!("no route"))
    }

    fn meta(fingerprint: u64) -> super::Meta {
        super::Meta { generation: Some(1), reference: Default::default(), route_parents: Vec::new(), fingerprint }
    }

    /// A status-only change (the controller's own write) is no change: it
    /// reaches neither translation nor the agents.
    #[test]
    fn status_only_changes_are_ignored() {
        let mut state = SyncState::default();
        state.record(Seen::Object(route(), Some(meta(7))));
        state.record(Seen::Object(route(), Some(meta(7))));
        assert_eq!(state.pending.len(), 1, "the second event changed only status");
        state.record(Seen::Object(route(), Some(meta(8))));
        assert_eq!(state.pending.len(), 2, "a new generation, label or annotation counts");
    }

    #[test]
    fn an_unserved_kind_counts_as_listed_and_empty() {
        let mut state = SyncState::default();
        state.record(Seen::Unserved(Kind::HttpRoute));
        state.record(Seen::Unserved(Kind::HttpRoute));
        assert!(state.listed.contains(&Kind::HttpRoute), "it does not hold up the first publication");
        assert!(state.pending.is_empty(), "and, being empty, changes nothing");
        // Its CRD appears: a real listing brings its objects in.
        state.record(Seen::Relist(Kind::HttpRoute));
        state.record(Seen::Object(route(), None));
        state.record(Seen::Listed(Kind::HttpRoute));
        assert!(state.unserved.is_empty());
        assert_eq!(state.pending.len(), 1);
        // Its CRD is deleted: the objects go with it.
        state.pending.clear();
        state.record(Seen::Unserved(Kind::HttpRoute));
        assert!(matches!(state.pending.as_slice(), [crate::reconcile::Change::Delete(key)] if key.name == "r"));
    }
}
