//! Where the client of an inbound HBONE stream really is. The address
//! matters twice: `ipBlocks` policy decides on it, and the pod sees it as
//! its peer. A mesh certificate proves an identity, not an address, so an
//! address is only believed when it fits the identity:
//!
//! * With no `forwarded` header, the client is the TCP peer, as Istio's
//!   ztunnel decides (its outer connection leaves from the pod's own IP,
//!   and so does ours).
//! * A `forwarded` address other than the TCP peer's (a same-node tunnel
//!   arrives from 127.0.0.1; an agent that dials from its node's IP) is
//!   believed only if it is the address of a workload that runs as the
//!   identity the peer proved.
//! * Either way, an address that belongs to a workload of another identity
//!   is refused: the peer is claiming to be a pod it is not.

use std::net::{IpAddr, SocketAddr};

use mesh::config::Snapshot;
use mesh::identity::Identity;

/// Refused inbound streams whose claimed client address did not fit the
/// peer's identity, by what carried the claim.
pub const FORGED_SOURCE: &str = "ambit_hbone_forged_source_total";

/// A source address the peer's identity does not vouch for.
#[derive(Debug, thiserror::Error)]
pub enum ForgedSource {
    #[error("forwarded address {claimed} is not a workload running as {peer}")]
    Forwarded { claimed: IpAddr, peer: Identity },
    #[error("{claimed} belongs to a workload running as {owner}, not to the peer {peer}")]
    OtherIdentity { claimed: IpAddr, owner: Identity, peer: Identity },
}

impl ForgedSource {
    /// The metric label of what carried the claim.
    pub fn claim(&self) -> &'static str {
        match self {
            Self::Forwarded { .. } => "forwarded",
            Self::OtherIdentity { .. } => "address",
        }
    }
}

/// The client's address: `forwarded` or the TCP peer, if `peer` (the
/// identity TLS proved) vouches for it. Without a port in `forwarded`, or
/// without `forwarded`, the port is 0: the TCP peer's port belongs to the
/// outer connection, not to the client.
pub fn client_address(
    snapshot: &Snapshot,
    trust_domain: &str,
    peer: &Identity,
    tcp_peer: SocketAddr,
    forwarded: Option<SocketAddr>,
) -> Result<SocketAddr, Box<ForgedSource>> {
    let claimed = forwarded.unwrap_or(SocketAddr::new(tcp_peer.ip(), 0));
    let owner = snapshot.workload_by_ip(claimed.ip()).map(|w| w.identity(trust_domain));
    match owner {
        Some(owner) if owner != *peer => {
            Err(Box::new(ForgedSource::OtherIdentity { claimed: claimed.ip(), owner, peer: peer.clone() }))
        }
        None if claimed.ip() != tcp_peer.ip() => {
            Err(Box::new(ForgedSource::Forwarded { claimed: claimed.ip(), peer: peer.clone() }))
        }
        _ => Ok(claimed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    fn snapshot() -> Snapshot {
        Snapshot::from_yaml(
            r#"
workloads:
  - { uid: "1", name: a, namespace: shop, serviceAccount: web, node: n1, ips: [10.1.0.2] }
  - { uid: "2", name: b, namespace: shop, serviceAccount: db, node: n1, ips: [10.1.0.3] }
"#,
        )
        .unwrap()
    }

    fn id(sa: &str) -> Identity {
        Identity::new(TD, "shop", sa)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_tcp_peer_is_the_client_when_nothing_else_is_claimed() {
        let got = client_address(&snapshot(), TD, &id("web"), addr("10.1.0.2:40000"), None).unwrap();
        assert_eq!(got, addr("10.1.0.2:0"));
        let outside = client_address(&snapshot(), TD, &id("web"), addr("10.200.0.9:1"), None).unwrap();
        assert_eq!(outside, addr("10.200.0.9:0"), "an address of no workload is what TCP says it is");
    }

    #[test]
    fn forwarded_is_believed_for_the_peers_own_workloads() {
        let same = client_address(&snapshot(), TD, &id("web"), addr("10.1.0.2:1"), Some(addr("10.1.0.2:5555")));
        assert_eq!(same.unwrap(), addr("10.1.0.2:5555"));
        let loopback = client_address(&snapshot(), TD, &id("web"), addr("127.0.0.1:1"), Some(addr("10.1.0.2:5555")));
        assert_eq!(loopback.unwrap(), addr("10.1.0.2:5555"), "a same-node tunnel");
    }

    #[test]
    fn claims_the_identity_does_not_vouch_for_are_refused() {
        let s = snapshot();
        let other = client_address(&s, TD, &id("web"), addr("127.0.0.1:1"), Some(addr("10.1.0.3:1"))).unwrap_err();
        assert!(matches!(*other, ForgedSource::OtherIdentity { ref owner, .. } if *owner == id("db")), "{other}");
        assert_eq!(other.claim(), "address");
        let nobody = client_address(&s, TD, &id("web"), addr("10.1.0.2:1"), Some(addr("192.0.2.1:1"))).unwrap_err();
        assert_eq!(nobody.claim(), "forwarded");
        let spoofed_peer = client_address(&s, TD, &id("web"), addr("10.1.0.3:1"), None).unwrap_err();
        assert!(matches!(*spoofed_peer, ForgedSource::OtherIdentity { .. }), "{spoofed_peer}");
    }
}
