//! Issue 3, test 7: hostile input to the HBONE port. Each gets its
//! documented answer, and the legitimate traffic beside it is unharmed.
//!
//! | input                           | answer                                  |
//! |---------------------------------|-----------------------------------------|
//! | expired client certificate      | TLS handshake refused                   |
//! | certificate from another CA     | TLS handshake refused                   |
//! | garbage after the handshake     | connection closed (HTTP/2 preface error)|
//! | CONNECT to a non-local IP       | 400 on that stream                      |
//! | CONNECT without an authority    | 400 or stream reset                     |
//! | a flood of streams reset at once| no dial to the pod; the connection may be closed (ENHANCE_YOUR_CALM) |
//! | a `forwarded` address the certificate does not vouch for | 401, counted, no dial |

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ambit_tests::hbone_client::{self, connect_status, connect_status_with, h2, issue, issue_valid};
use ambit_tests::require_root;
use ambit_tests::sample::{echo_connect, echo_roundtrip, exchange};
use ambit_tests::topology::{APP_PORT, Standard};
use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{WAIT, wait_for_metric};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "mesh", sa)
}

struct Target {
    hop: SocketAddr,
    server: Identity,
}

/// The legitimate traffic that must survive: a live tunnel and new ones.
async fn assert_unharmed(bed: &Standard, live: &mut tokio::io::BufReader<tokio::net::TcpStream>) {
    echo_roundtrip(live, b"unharmed").await.unwrap();
    let client = bed.cluster.pod("n1-a");
    exchange(&client.netns, &client.name, bed.cluster.pod("n2-a").addr(APP_PORT), 4096, 4096).await.unwrap();
}

/// The inbound access line the server wrote for the hostile peer.
async fn server_logged(bed: &Standard, what: &str, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    bed.cluster
        .ztunnel(1)
        .wait_for_log(what, WAIT, |r| r["target"] == "access" && r["direction"] == "inbound" && matches(r))
        .await
        .unwrap()
}

fn error_of(r: &serde_json::Value) -> &str {
    r["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hbone_input_is_refused_without_harm() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a");
    let target = Target { hop: SocketAddr::new(IpAddr::V4(n2a.ip), 15008), server: id("sa-n2-a") };
    let client = bed.cluster.pod("n1-a");
    let (_, mut live) = echo_connect(&client.netns, &client.name, n2a.addr(APP_PORT)).await.unwrap();
    let attacker = &bed.cluster.outside.as_ref().unwrap().netns;
    let roots = bed.cluster.ca().root_pem().to_owned();

    // Expired certificate.
    let past = SystemTime::now() - Duration::from_secs(7200);
    let expired = issue(bed.cluster.ca(), &id("old"), past, past + Duration::from_secs(3600)).unwrap();
    let result =
        use_tls(hbone_client::connect(attacker, target.hop, &expired, &roots, target.server.clone()).await).await;
    assert!(result.is_err(), "an expired certificate was accepted");
    let log = server_logged(&bed, "expired handshake", |r| error_of(r).contains("Expired")).await;
    assert!(error_of(&log).contains("TLS handshake failed"), "{log}");
    assert_unharmed(&bed, &mut live).await;

    // A certificate from another CA (trusting ours, so only the server can object).
    let rogue_ca = CertificateAuthority::generate("cluster.local").unwrap();
    let rogue = issue_valid(&rogue_ca, &id("rogue")).unwrap();
    let result =
        use_tls(hbone_client::connect(attacker, target.hop, &rogue, &roots, target.server.clone()).await).await;
    assert!(result.is_err(), "a foreign CA's certificate was accepted");
    server_logged(&bed, "foreign CA handshake", |r| {
        error_of(r).contains("TLS handshake failed")
            && (error_of(r).contains("BadSignature") || error_of(r).contains("UnknownIssuer"))
    })
    .await;
    assert_unharmed(&bed, &mut live).await;

    // A valid client that sends garbage instead of HTTP/2.
    let valid = issue_valid(bed.cluster.ca(), &id("hostile")).unwrap();
    let mut tls = hbone_client::connect(attacker, target.hop, &valid, &roots, target.server.clone()).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: nonsense\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a garbage connection open");
    server_logged(&bed, "protocol error", |r| r["response_flags"] == "DPE").await;
    assert_unharmed(&bed, &mut live).await;

    // Bad CONNECTs on one connection, then a good one on the same connection.
    let tls = hbone_client::connect(attacker, target.hop, &valid, &roots, target.server.clone()).await.unwrap();
    let mut send = h2(tls).await.unwrap();
    let elsewhere = bed.cluster.pod("n1-a").addr(APP_PORT).to_string();
    assert_eq!(connect_status(&mut send, &elsewhere).await.unwrap(), http::StatusCode::BAD_REQUEST);
    server_logged(&bed, "authority mismatch", |r| error_of(r).contains("arrived on")).await;
    match connect_status(&mut send, "/").await {
        Ok(status) => assert_eq!(status, http::StatusCode::BAD_REQUEST),
        Err(error) => assert!(error.is_reset(), "{error}"),
    }
    let good = n2a.addr(APP_PORT).to_string();
    assert_eq!(connect_status(&mut send, &good).await.unwrap(), http::StatusCode::OK, "other streams must be unharmed");
    assert_unharmed(&bed, &mut live).await;

    let (status, _) =
        ambit_tests::http::get(&bed.cluster.nodes[1].netns, "127.0.0.1:15021".parse().unwrap(), "/healthz/ready")
            .await
            .unwrap();
    assert_eq!(status, 200, "ztunnel must stay ready");
}

/// HTTP/2 rapid reset (CVE-2023-44487's pattern) on port 15008: a client
/// opens CONNECT streams to a pod and resets each at once. No reset stream
/// may make the agent dial the pod (counted at the pod's server, which
/// sees every dial), and the legitimate traffic beside it is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_never_dials_the_pod() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a");
    let hop = SocketAddr::new(IpAddr::V4(n2a.ip), 15008);
    let client = bed.cluster.pod("n1-a");
    let (_, mut live) = echo_connect(&client.netns, &client.name, n2a.addr(APP_PORT)).await.unwrap();
    let attacker = &bed.cluster.outside.as_ref().unwrap().netns;
    let roots = bed.cluster.ca().root_pem().to_owned();
    let valid = issue_valid(bed.cluster.ca(), &id("hostile")).unwrap();
    let good = n2a.addr(APP_PORT).to_string();
    let dials_before = bed.servers["n2-a"].accepted();
    let mut sent = 0;
    // Several connections: a flood may end its connection (GOAWAY), and the
    // attacker simply opens another.
    for _ in 0..10 {
        let tls = hbone_client::connect(attacker, hop, &valid, &roots, id("sa-n2-a")).await.unwrap();
        sent += hbone_client::rapid_reset_flood(tls, &good, 500).await.unwrap();
    }
    assert!(sent >= 100, "the flood sent only {sent} streams");
    // Every stream the agent took is settled once only the live tunnel is
    // open again; then count what reached the pod.
    wait_for_metric(&bed.cluster, 1, "ambit_open_connections", &[("direction", "inbound")], |open| open == 1.0).await;
    let dials = bed.servers["n2-a"].accepted() - dials_before;
    assert_eq!(dials, 0, "{sent} reset streams made the agent dial the pod {dials} times");
    assert_unharmed(&bed, &mut live).await;
    let (status, _) =
        ambit_tests::http::get(&bed.cluster.nodes[1].netns, "127.0.0.1:15021".parse().unwrap(), "/healthz/ready")
            .await
            .unwrap();
    assert_eq!(status, 200, "ztunnel must stay ready");
}

/// A mesh certificate proves an identity, not an address: a client that
/// claims (in `forwarded`) the address of a pod running as another
/// identity, or of no workload at all, is refused with 401, counted, and
/// the pod is never dialed. Without a claim, it is what TCP says it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_client_addresses_are_refused() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a");
    let hop = SocketAddr::new(IpAddr::V4(n2a.ip), 15008);
    let attacker = &bed.cluster.outside.as_ref().unwrap().netns;
    let roots = bed.cluster.ca().root_pem().to_owned();
    // A genuine certificate of one mesh workload (n1-a's identity).
    let stolen = issue_valid(bed.cluster.ca(), &id("sa-n1-a")).unwrap();
    let tls = hbone_client::connect(attacker, hop, &stolen, &roots, id("sa-n2-a")).await.unwrap();
    let mut send = h2(tls).await.unwrap();
    let good = n2a.addr(APP_PORT).to_string();
    let dials_before = bed.servers["n2-a"].accepted();

    let other_pod = format!("for=\"{}:4000\"", bed.cluster.pod("n1-b").ip);
    let status = connect_status_with(&mut send, &good, &[("forwarded", &other_pod)]).await.unwrap();
    assert_eq!(status, http::StatusCode::UNAUTHORIZED, "claiming a pod of another identity");
    let nobody = "for=\"192.0.2.7:4000\"";
    let status = connect_status_with(&mut send, &good, &[("forwarded", nobody)]).await.unwrap();
    assert_eq!(status, http::StatusCode::UNAUTHORIZED, "claiming an address of no workload");
    assert_eq!(bed.servers["n2-a"].accepted(), dials_before, "a refused stream dialed the pod");
    let logged =
        server_logged(&bed, "forged source", |r| r["response_flags"] == "DENY" && error_of(r).contains("192.0.2.7"))
            .await;
    assert_eq!(logged["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-a");
    let metrics = bed.cluster.metrics(1).await.unwrap();
    assert_eq!(metrics.sum("ambit_hbone_forged_source_total", &[("claim", "address")]).unwrap(), 1.0);
    assert_eq!(metrics.sum("ambit_hbone_forged_source_total", &[("claim", "forwarded")]).unwrap(), 1.0);

    // The identity's own address is fine; so is no claim (the outside's own IP).
    let own = format!("for=\"{}:4000\"", bed.cluster.pod("n1-a").ip);
    assert_eq!(connect_status_with(&mut send, &good, &[("forwarded", &own)]).await.unwrap(), http::StatusCode::OK);
    assert_eq!(connect_status_with(&mut send, &good, &[]).await.unwrap(), http::StatusCode::OK);
    assert_eq!(bed.servers["n2-a"].accepted(), dials_before + 2, "each accepted stream dials the pod once");
}

/// Completes what a TLS 1.3 client cannot know at `connect`: whether the
/// server accepted its certificate. The server's verdict arrives with the
/// first read.
async fn use_tls(
    connected: anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) -> anyhow::Result<()> {
    let mut tls = connected?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, tls.read(&mut buf)).await? {
        Ok(0) => anyhow::bail!("closed"),
        Ok(_) => Ok(()),
        Err(error) => Err(error.into()),
    }
}
