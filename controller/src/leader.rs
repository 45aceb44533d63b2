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
