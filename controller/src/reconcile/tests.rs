//! The incremental path end to end, without IO: random changes go through
//! the reconciler into the store, and agents following the store's lines
//! (every version, resuming after gaps, or connecting afresh) must hold
//! exactly the config in force, which must be one agents accept.

use mesh::config::{MeshConfig, Snapshot};
use mesh::control::{ConfigStream, Update};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::{Change, Reconciler};
use crate::resources::{Kind, Object, ObjectKey, parse_documents};
use crate::store::Store;

fn object(yaml: &str) -> Object {
    match parse_documents(yaml) {
        Ok(mut parsed) if parsed.objects.len() == 1 => parsed.objects.remove(0),
        other => panic!("test YAML is not one object: {other:?}"),
    }
}

/// A random change among a few pods, services and namespaces, with IPs
/// from small pools so that clashes, replacements (a new UID under the
/// same name) and deletions all happen.
fn random_change(rng: &mut StdRng, generation: u64) -> Change {
    let namespace = format!("ns{}", rng.random_range(0..2));
    match rng.random_range(0..10) {
        0..=4 => {
            let name = format!("p{}", rng.random_range(0..12));
            let (node, ip) = (rng.random_range(0..3), rng.random_range(1..14));
            let phase = if rng.random_ratio(1, 8) { "Succeeded" } else { "Running" };
            let uid = format!("{name}-{}", generation % 3);
            Change::Upsert(object(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, uid: {uid}, \
                 labels: {{app: a{}}}}}\nspec: {{nodeName: n{node}, containers: [{{name: c, image: i}}]}}\n\
                 status: {{phase: {phase}, podIP: 10.0.0.{ip}}}\n",
                generation % 2
            )))
        }
        5..=6 => {
            let name = format!("s{}", rng.random_range(0..4));
            let vip = rng.random_range(10..16);
            Change::Upsert(object(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec: {{clusterIP: 10.0.0.{vip}, selector: {{app: a{}}}, ports: [{{port: 80}}]}}\n",
                generation % 2
            )))
        }
        7 => Change::Upsert(object(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {{gen: g{}}}}}\n",
            generation % 3
        ))),
        _ => {
            let (kind, name) = match rng.random_range(0..3) {
                0 => (Kind::Pod, format!("p{}", rng.random_range(0..12))),
                1 => (Kind::Service, format!("s{}", rng.random_range(0..4))),
                _ => (Kind::Namespace, String::new()),
            };
            let (namespace, name) = if name.is_empty() { (String::new(), namespace) } else { (namespace, name) };
            Change::Delete(ObjectKey { kind, namespace, name })
        }
    }
}

/// An agent: the stream state machine agents run, fed the store's lines.
struct Agent {
    stream: ConfigStream,
    config: MeshConfig,
    version: Option<u64>,
}

impl Agent {
    fn new() -> Self {
        Self { stream: ConfigStream::default(), config: MeshConfig::default(), version: None }
    }

    /// Catches up with the store as a (re)connecting agent does: one line
    /// from the version it holds (or the full config).
    fn catch_up(&mut self, store: &Store) {
        let current = store.current();
        let line = current.update_from(self.version);
        let update: Update = serde_json::from_slice(&line.bytes).unwrap_or_else(|e| panic!("bad line: {e}"));
        let applied = self.stream.apply(update).unwrap_or_else(|e| panic!("an agent refused a line: {e}"));
        self.config = MeshConfig::clone(&applied);
        self.version = Some(current.version);
    }
}

#[test]
fn agents_hold_exactly_the_config_in_force_whatever_they_missed() {
    for seed in 0..8 {
        let store = Store::new();
        let mut reconciler = Reconciler::new("istio-system", "cluster.local", store.clone());
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut every, mut gappy) = (Agent::new(), Agent::new());
        for generation in 0..300 {
            let batch = (0..rng.random_range(1..5)).map(|_| random_change(&mut rng, generation)).collect();
            reconciler.apply(batch);
            let in_force = reconciler.translator.config();
            if let Err(error) = Snapshot::new(in_force.clone()) {
                panic!("seed {seed}, generation {generation}: agents would refuse the config in force: {error}");
            }
            every.catch_up(&store);
            assert_eq!(
                every.config, in_force,
                "seed {seed}, generation {generation}: the agent following every version"
            );
            if rng.random_ratio(1, 7) {
                gappy.catch_up(&store);
                assert_eq!(
                    gappy.config, in_force,
                    "seed {seed}, generation {generation}: the agent resuming after a gap"
                );
            }
            if rng.random_ratio(1, 20) {
                let mut fresh = Agent::new();
                fresh.catch_up(&store);
                assert_eq!(fresh.config, in_force, "seed {seed}, generation {generation}: a new agent");
            }
        }
    }
}

/// Two pods claim one IP: the second waits (rejected, with a reason
/// naming the first) while the first keeps it, and goes into force when
/// the first lets go, without being applied again.
#[test]
fn a_clashing_pod_waits_alone_and_goes_in_when_the_address_frees() {
    let store = Store::new();
    let mut reconciler = Reconciler::new("istio-system", "cluster.local", store.clone());
    let pod = |name: &str| {
        object(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {name}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.1}}\n"
        ))
    };
    let other = object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: shop, uid: other}\n\
         spec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.0.0.2}\n",
    );
    reconciler.apply(vec![Change::Upsert(pod("first"))]);
    let (outcomes, _) = reconciler.apply(vec![Change::Upsert(pod("second")), Change::Upsert(other)]);
    let second = outcomes.iter().find(|(key, _)| key.name == "second").map(|(_, outcome)| outcome.clone());
    let Some(super::Outcome::Rejected(reason)) = second else { panic!("the clash was not refused: {outcomes:?}") };
    assert!(reason.contains("10.0.0.1") && reason.contains("shop/first"), "the reason names both: {reason}");
    let names = |r: &Reconciler| r.translator.config().workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&reconciler), ["first", "other"], "the rest of the batch went in");
    let first = ObjectKey { kind: Kind::Pod, namespace: "shop".into(), name: "first".into() };
    let (outcomes, _) = reconciler.apply(vec![Change::Delete(first)]);
    assert!(outcomes.iter().any(|(key, outcome)| key.name == "second" && *outcome == super::Outcome::Accepted));
    assert_eq!(names(&reconciler), ["other", "second"]);
    assert!(reconciler.translator.rejected().is_empty());
}

/// The same objects, whatever the order and batching of their arrival,
/// give the same config.
#[test]
fn the_config_does_not_depend_on_arrival_order() {
    let mut rng = StdRng::seed_from_u64(7);
    // Distinct IPs, so no order decides a clash.
    let changes: Vec<Change> = (0..40)
        .map(|i| {
            Change::Upsert(object(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, uid: u{i}}}\n\
                 spec: {{nodeName: n{}, containers: [{{name: c, image: i}}]}}\n\
                 status: {{phase: Running, podIP: 10.1.0.{i}}}\n",
                i % 3,
                i % 2
            )))
        })
        .collect();
    let mut configs = Vec::new();
    for _ in 0..5 {
        let mut shuffled = changes.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.random_range(0..=i));
        }
        let mut reconciler = Reconciler::new("istio-system", "cluster.local", Store::new());
        while !shuffled.is_empty() {
            let take = rng.random_range(1..=shuffled.len().min(6));
            reconciler.apply(shuffled.drain(..take).collect());
        }
        configs.push(reconciler.translator.config());
    }
    assert_eq!(configs[0].workloads.len(), 40);
    assert!(configs.windows(2).all(|pair| pair[0] == pair[1]), "arrival order changed the config");
}
