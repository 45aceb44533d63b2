//! One leader among the replicas, by a coordination.k8s.io Lease: the
//! leader renews it; the others take it over once it lapses. Every replica
//! serves config and certificates; only the leader writes status, so
//! replicas never fight over an object's conditions. Optimistic concurrency
//! (the Lease's resourceVersion) decides races.
//!
//! Whether a lease has lapsed is judged on this replica's own monotonic
//! clock, as client-go's leader election does: it is lapsed when its
//! record (holder, renew time) has not changed for a whole lease duration
//! since this replica last saw it change. Comparing the holder's
//! `renewTime` with our wall clock instead would let a clock skew between
//! replicas make a follower take over a live lease: two leaders.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use mesh::drain::Drain;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

pub const LEASE: &str = "ambit-controller";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The last lease record this replica saw, and when it first saw it.
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<(Option<String>, Option<String>)>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes `spec`'s record; returns whether it has stayed the same for a
    /// whole lease duration by our clock.
    fn lapsed(&mut self, spec: &LeaseSpec) -> bool {
        let record = (spec.holder_identity.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
        let now = Instant::now();
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.since = Some(now);
            return false;
        }
        let duration =
            Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS)).unwrap_or(15));
        self.since.is_some_and(|since| now.duration_since(since) >= duration)
    }
}

/// Keeps `leader` true while this replica (`identity`) holds the Lease.
pub async fn run(client: kube::Client, namespace: String, identity: String, leader: watch::Sender<bool>, drain: Drain) {
    let leases = Api::<Lease>::namespaced(client, &namespace);
    let mut observed = Observed::default();
    loop {
        let held = match try_acquire(&leases, &identity, &mut observed).await {
            Ok(held) => held,
            Err(error) => {
                warn!(%error, "cannot read or renew the leader Lease");
                false
            }
        };
        if leader.send_replace(held) != held {
            info!(leader = held, "leadership changed");
        }
        tokio::select! {
            () = drain.signaled() => return,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
}

async fn try_acquire(leases: &Api<Lease>, identity: &str, observed: &mut Observed) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let Some(mut lease) = leases.get_opt(LEASE).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(LEASE.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.into()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(identity);
    let lapsed = observed.lapsed(spec) || spec.holder_identity.is_none();
    if !ours && !lapsed {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(identity.into());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(now);
    match leases.replace(LEASE, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else renewed or took it first.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::Api;
    use serde_json::{Value, json};

    use super::Observed;
    use crate::kube_mock::{Exchange, scripted_client, status};

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ambit-system/leases/ambit-controller";

    /// A lease as its holder wrote it, `renewed_seconds_ago` by the holder's
    /// own (possibly skewed) clock.
    fn lease(holder: &str, renewed_seconds_ago: i64) -> Value {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_seconds_ago);
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "ambit-controller", "resourceVersion": "7"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 3}})
    }

    fn get(body: Value) -> Exchange {
        Exchange { method: Method::GET, path: LEASE_PATH, status: StatusCode::OK, body }
    }

    async fn attempt(observed: &mut Observed, script: Vec<Exchange>) -> (bool, Vec<Value>) {
        let (client, verifier) = scripted_client(script);
        let leases = Api::<Lease>::namespaced(client, "ambit-system");
        let held = super::try_acquire(&leases, "me", observed).await.unwrap_or_else(|e| panic!("{e}"));
        (held, verifier.await.unwrap_or_default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_lease_of_another_replica_is_left_alone_whatever_its_clock_says() {
        let mut observed = Observed::default();
        // The holder's clock runs an hour behind ours: its renewTime looks
        // ancient, but it keeps renewing, so the lease is live.
        for renewal in 0..5 {
            let (held, _) = attempt(&mut observed, vec![get(lease("other", 3600 - renewal))]).await;
            assert!(!held, "took over a lease that was renewed {renewal} times");
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_unchanged_for_its_duration_is_taken_over_even_if_it_looks_fresh() {
        let mut observed = Observed::default();
        // The holder's clock runs ahead: its last renewTime is "in the future".
        let stale = lease("other", -600);
        let (held, _) = attempt(&mut observed, vec![get(stale.clone())]).await;
        assert!(!held, "a lease seen for the first time is live");
        tokio::time::advance(Duration::from_secs(15)).await;
        let (held, sent) = attempt(
            &mut observed,
            vec![
                get(stale),
                Exchange { method: Method::PUT, path: LEASE_PATH, status: StatusCode::OK, body: lease("me", 0) },
            ],
        )
        .await;
        assert!(held);
        assert_eq!(sent[1]["spec"]["holderIdentity"], "me");
        assert_eq!(sent[1]["spec"]["leaseTransitions"], 4);
        assert_eq!(sent[1]["metadata"]["resourceVersion"], "7", "optimistic concurrency decides races");
    }

    #[tokio::test]
    async fn losing_a_renewal_race_means_not_leader() {
        let mut observed = Observed::default();
        let (held, _) = attempt(
            &mut observed,
            vec![
                get(lease("me", 3)),
                Exchange {
                    method: Method::PUT,
                    path: LEASE_PATH,
                    status: StatusCode::CONFLICT,
                    body: status(409, "Conflict"),
                },
            ],
        )
        .await;
        assert!(!held);
    }
}
