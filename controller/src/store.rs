//! The published config: versioned, each version with its delta from the
//! one before, computed and encoded once for every agent. Earlier versions
//! are kept as deltas only (bounded in count and in encoded bytes), so a
//! reconnecting or slow agent gets the composition of the steps it missed;
//! one that fell further behind gets the full config. Publishing never
//! waits for agents: each follows the store at its own pace through a
//! watch channel, which keeps only the newest version.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use mesh::config::delta::ConfigDelta;
use mesh::control::{Update, UpdateBody};
use tokio::sync::watch;

use crate::translate::ConfigView;

/// Steps kept for resuming agents: at most this many versions…
const HISTORY_VERSIONS: usize = 1024;
/// …and at most this many bytes of encoded deltas.
const HISTORY_BYTES: usize = 16 << 20;

/// The change from `version - 1` to `version` (cheap to clone: the delta
/// is shared).
#[derive(Clone, Debug)]
struct Step {
    version: u64,
    delta: Arc<ConfigDelta>,
    encoded_len: usize,
}

#[derive(Debug)]
pub struct Published {
    pub epoch: String,
    pub version: u64,
    /// The whole config of this version, shared with the translator's.
    pub config: ConfigView,
    /// When this version was published (for push latency).
    pub at: Instant,
    /// The update line from the previous version, encoded once.
    step_line: Option<Bytes>,
    /// The full config's update line, encoded once, when first needed.
    full_line: OnceLock<Bytes>,
    /// The steps that led here, oldest first, this version's last.
    history: Arc<VecDeque<Step>>,
}

/// An update line and whether it is a delta (or the full config).
pub struct Line {
    pub bytes: Bytes,
    pub delta: bool,
}

impl Published {
    /// The update line that brings an agent at version `from` (of this
    /// epoch) to this version: the shared step after one version, the
    /// composition of the remembered steps after several, the full config
    /// when `from` is unknown or forgotten.
    pub fn update_from(&self, from: Option<u64>) -> Line {
        let Some(from) = from.filter(|&from| from <= self.version) else { return self.full() };
        if from + 1 == self.version
            && let Some(line) = &self.step_line
        {
            return Line { bytes: line.clone(), delta: true };
        }
        let first = self.history.iter().position(|step| step.version == from + 1);
        let composed = match first {
            _ if from == self.version => Some(ConfigDelta::default()),
            Some(first) => Some(self.history.iter().skip(first).fold(ConfigDelta::default(), |mut all, step| {
                all.then(&step.delta);
                all
            })),
            None => None,
        };
        match composed {
            Some(mut changes) => {
                changes.root_namespace = Some(self.config.root_namespace().to_owned());
                Line { bytes: encode(&self.update(UpdateBody::Delta { from, changes })), delta: true }
            }
            None => self.full(),
        }
    }

    fn full(&self) -> Line {
        let bytes = self.full_line.get_or_init(|| encode(&self.update(UpdateBody::Full(self.config.to_config()))));
        Line { bytes: bytes.clone(), delta: false }
    }

    fn update(&self, body: UpdateBody) -> Update {
        Update { epoch: self.epoch.clone(), version: self.version, body }
    }
}

/// One update as a line of the stream.
fn encode(update: &Update) -> Bytes {
    let mut line = serde_json::to_vec(update).unwrap_or_else(|_| unreachable_encoding());
    line.push(b'\n');
    Bytes::from(line)
}

/// The config model is plain data (strings, numbers, maps with string
/// keys), which JSON always encodes.
#[cold]
fn unreachable_encoding() -> Vec<u8> {
    tracing::error!("a config update failed to encode as JSON");
    Vec::new()
}

#[derive(Clone, Debug)]
pub struct Store {
    current: watch::Sender<Arc<Published>>,
}

impl Store {
    /// A store whose versions are tagged with a fresh random epoch.
    pub fn new() -> Self {
        let first = Published {
            epoch: format!("{:016x}", rand::random::<u64>()),
            version: 0,
            config: ConfigView::default(),
            at: Instant::now(),
            step_line: None,
            full_line: OnceLock::new(),
            history: Arc::default(),
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
            *current = Arc::new(Published {
                epoch: current.epoch.clone(),
                version: 1,
                config: current.config.clone(),
                at: Instant::now(),
                step_line: None,
                full_line: OnceLock::new(),
                history: Arc::default(),
            });
            true
        });
        self.current().version
    }

    /// Publishes `config`, which `changes` led to from the current
    /// version, as a new version, unless nothing changed. Returns the
    /// version now in force. The cost is the change's, not the config's:
    /// the delta is encoded once here, and the whole config only when an
    /// agent first needs it.
    pub fn publish(&self, config: ConfigView, mut changes: ConfigDelta) -> u64 {
        let mut version = 0;
        self.current.send_if_modified(|current| {
            version = current.version;
            if changes.changed_objects() == 0 && current.config.root_namespace() == config.root_namespace() {
                return false;
            }
            version = current.version + 1;
            changes.root_namespace = Some(config.root_namespace().to_owned());
            let update = Update {
                epoch: current.epoch.clone(),
                version,
                body: UpdateBody::Delta { from: version - 1, changes },
            };
            let line = encode(&update);
            let UpdateBody::Delta { changes, .. } = update.body else { return false };
            let mut history = VecDeque::clone(&current.history);
            history.push_back(Step { version, delta: Arc::new(changes), encoded_len: line.len() });
            trim(&mut history);
            *current = Arc::new(Published {
                epoch: current.epoch.clone(),
                version,
                config,
                at: Instant::now(),
                step_line: Some(line),
                full_line: OnceLock::new(),
                history: Arc::new(history),
            });
            true
        });
        version
    }
}

/// Forgets the oldest steps beyond the bounds.
fn trim(history: &mut VecDeque<Step>) {
    let mut bytes: usize = history.iter().map(|step| step.encoded_len).sum();
    while history.len() > HISTORY_VERSIONS || (bytes > HISTORY_BYTES && history.len() > 1) {
        bytes -= history.pop_front().map_or(0, |step| step.encoded_len);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::Namespace as K8sNamespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use mesh::config::MeshConfig;
    use mesh::control::{Update, UpdateBody};

    use super::{HISTORY_VERSIONS, Store};
    use crate::resources::{Kind, Object, ObjectKey};
    use crate::translate::Translator;

    /// Publishes the namespaces `names` (and no others) as the reconciler
    /// would: through the translator, as a delta.
    pub(crate) fn publish(store: &Store, translator: &mut Translator, names: &[String]) -> u64 {
        for name in translator.config().namespaces.iter().map(|n| n.name.clone()) {
            if !names.contains(&name) {
                translator.remove(&ObjectKey { kind: Kind::Namespace, namespace: String::new(), name });
            }
        }
        for name in names {
            let meta = ObjectMeta { name: Some(name.clone()), ..Default::default() };
            translator.upsert(&Object::Namespace(Box::new(K8sNamespace { metadata: meta, ..Default::default() })));
        }
        store.publish(translator.view(), translator.take_delta())
    }

    fn parse(line: &super::Line) -> Update {
        serde_json::from_slice(&line.bytes).unwrap_or_else(|e| panic!("bad update line: {e}"))
    }

    /// What an agent holds after applying `update` to `held`.
    fn apply(held: &MeshConfig, update: &Update) -> MeshConfig {
        match &update.body {
            UpdateBody::Full(config) => config.clone(),
            UpdateBody::Delta { changes, .. } => changes.apply(held),
        }
    }

    #[test]
    fn versions_advance_only_on_change() {
        let (store, mut translator) = (Store::new(), Translator::new("istio-system"));
        assert_eq!(publish(&store, &mut translator, &["a".into()]), 1);
        assert_eq!(publish(&store, &mut translator, &["a".into()]), 1, "an unchanged config is not a new version");
        assert_eq!(publish(&store, &mut translator, &["b".into()]), 2);
    }

    /// From any remembered version, one line brings an agent to the
    /// current config; from a forgotten one, the full config does.
    #[test]
    fn every_remembered_version_resumes_with_one_delta() {
        let (store, mut translator) = (Store::new(), Translator::new("istio-system"));
        let mut configs = vec![MeshConfig::default()];
        for i in 0..HISTORY_VERSIONS + 20 {
            // Each version adds one namespace and drops the one from 3 back.
            let names: Vec<String> = (i.saturating_sub(3)..=i).map(|n| format!("n{n}")).collect();
            assert_eq!(publish(&store, &mut translator, &names), i as u64 + 1);
            configs.push(translator.config());
        }
        let current = store.current();
        let now = current.config.to_config();
        for from in [0, 10, 20, 21, 500, current.version - 1, current.version] {
            let line = current.update_from(Some(from));
            let update = parse(&line);
            assert_eq!(update.version, current.version);
            let from_config = &configs[from as usize];
            assert_eq!(line.delta, from >= 20, "from {from}: delta or full");
            assert_eq!(apply(from_config, &update), now, "from version {from}");
        }
        assert!(!current.update_from(None).delta, "a new agent gets the full config");
        assert!(!current.update_from(Some(current.version + 1)).delta, "a version from the future is unknown");
    }
}
