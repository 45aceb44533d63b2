//! Kubernetes mode: watchers on every kind the mesh reads, merged into one
//! stream of changes for the same [`Reconciler`] the local directory feeds.
//! Nothing is published until every kind has been listed once, so agents
//! never see a half-read cluster; after that, whatever arrived together is
//! applied together.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;

use futures::{FutureExt as _, Stream, StreamExt as _};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource as _};
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
}

/// What status writing needs of a policy object.
#[derive(Clone, Debug)]
pub struct Meta {
    pub generation: Option<i64>,
    pub reference: ObjectReference,
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
            let meta = Meta { generation: o.metadata.generation, reference: o.object_ref(&()) };
            let resource = policy("AuthorizationPolicy", &o.metadata, &o.spec.spec);
            (Object::AuthorizationPolicy(Box::new(resource)), Some(meta))
        }),
        watch(Api::<crds::PeerAuthentication>::all(c()), Kind::PeerAuthentication, |o| {
            let meta = Meta { generation: o.metadata.generation, reference: o.object_ref(&()) };
            let resource = policy("PeerAuthentication", &o.metadata, &o.spec.spec);
            (Object::PeerAuthentication(Box::new(resource)), Some(meta))
        }),
    ]
}

const KINDS: usize = 5;

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
                    self.metas.insert(key, meta);
                }
                self.pending.push(Change::Upsert(object));
            }
            Seen::Deleted(key) => {
                self.forget(&key);
            }
            Seen::Listed(kind) => {
                // Whatever was known but not relisted was deleted meanwhile.
                let relisted = self.relisting.remove(&kind).unwrap_or_default();
                let gone: Vec<ObjectKey> =
                    self.known.get(&kind).map(|k| k.difference(&relisted).cloned().collect()).unwrap_or_default();
                for key in gone {
                    self.forget(&key);
                }
                self.listed.insert(kind);
            }
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        if let Some(keys) = self.known.get_mut(&key.kind) {
            keys.remove(key);
        }
        self.metas.remove(key);
        self.pending.push(Change::Delete(key.clone()));
    }
}
