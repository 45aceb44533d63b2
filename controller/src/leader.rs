//! One leader among the replicas, by a coordination.k8s.io Lease: the
//! leader renews it; the others take it over once it lapses. Every replica
//! serves config and certificates; only the leader writes status, so
//! replicas never fight over an object's conditions. Optimistic concurrency
//! (the Lease's resourceVersion) decides races.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use mesh::drain::Drain;
use tokio::sync::watch;
use tracing::{info, warn};

pub const LEASE: &str = "ambit-controller";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Keeps `leader` true while this replica (`identity`) holds the Lease.
pub async fn run(client: kube::Client, namespace: String, identity: String, leader: watch::Sender<bool>, drain: Drain) {
    let leases = Api::<Lease>::namespaced(client, &namespace);
    loop {
        let held = match try_acquire(&leases, &identity).await {
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

async fn try_acquire(leases: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
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
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let lapsed = spec.renew_time.as_ref().is_none_or(|t| t.0.as_second() + duration < now.0.as_second());
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
    use http::{Method, StatusCode};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::Api;
    use serde_json::{Value, json};

    use crate::kube_mock::{Exchange, scripted_client, status};

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ambit-system/leases/ambit-controller";

    fn lease(holder: &str, renewed_seconds_ago: i64) -> Value {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_seconds_ago);
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "ambit-controller", "resourceVersion": "7"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 3}})
    }

    async fn attempt(script: Vec<Exchange>) -> (bool, Vec<Value>) {
        let (client, verifier) = scripted_client(script);
        let leases = Api::<Lease>::namespaced(client, "ambit-system");
        let held = super::try_acquire(&leases, "me").await.unwrap_or_else(|e| panic!("{e}"));
        (held, verifier.await.unwrap_or_default())
    }

    #[tokio::test]
    async fn a_live_lease_of_another_replica_is_left_alone() {
        let get = Exchange { method: Method::GET, path: LEASE_PATH, status: StatusCode::OK, body: lease("other", 2) };
        let (held, _) = attempt(vec![get]).await;
        assert!(!held);
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_over() {
        let (held, sent) = attempt(vec![
            Exchange { method: Method::GET, path: LEASE_PATH, status: StatusCode::OK, body: lease("other", 60) },
            Exchange { method: Method::PUT, path: LEASE_PATH, status: StatusCode::OK, body: lease("me", 0) },
        ])
        .await;
        assert!(held);
        assert_eq!(sent[1]["spec"]["holderIdentity"], "me");
        assert_eq!(sent[1]["spec"]["leaseTransitions"], 4);
        assert_eq!(sent[1]["metadata"]["resourceVersion"], "7", "optimistic concurrency decides races");
    }

    #[tokio::test]
    async fn losing_a_renewal_race_means_not_leader() {
        let (held, _) = attempt(vec![
            Exchange { method: Method::GET, path: LEASE_PATH, status: StatusCode::OK, body: lease("me", 3) },
            Exchange {
                method: Method::PUT,
                path: LEASE_PATH,
                status: StatusCode::CONFLICT,
                body: status(409, "Conflict"),
            },
        ])
        .await;
        assert!(!held);
    }
}
