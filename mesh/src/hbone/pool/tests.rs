//! HBONE client, server and pool together over loopback TCP and real TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::{CertificateAuthority, CertificateRequest};
use crate::hbone::headers::{self, PeerInfo};
use crate::hbone::server::{self, ConnectRequest, Responder};
use crate::tls::{self, TrustBundle, WorkloadCertificate};

const TD: &str = "cluster.local";

struct Fixture {
    addr: SocketAddr,
    client_cert: Arc<WorkloadCertificate>,
    server_id: Identity,
    trust: TrustBundle,
    dials: Arc<AtomicUsize>,
    _drain: Drain,
}

fn issue(ca: &CertificateAuthority, sa: &str) -> WorkloadCertificate {
    let id = Identity::new(TD, "test", sa);
    let request = CertificateRequest::new(&id).unwrap();
    let issued = ca.sign_csr(&request.csr_pem, &id, Duration::from_secs(3600)).unwrap();
    WorkloadCertificate::new(id, request, issued).unwrap()
}

/// The test server's behaviour per request: echo, or reject with a status
/// chosen by the authority's port.
async fn handle(request: ConnectRequest, responder: Responder) {
    match request.authority.port() {
        401 => responder.reject(StatusCode::UNAUTHORIZED),
        // A server that never answers.
        999 => {
            let _held = responder;
            std::future::pending::<()>().await;
        }
        503 => responder.reject(StatusCode::SERVICE_UNAVAILABLE),
        _ => {
            let forwarded = request.headers.get(headers::FORWARDED).and_then(|v| v.to_str().ok()).unwrap_or("");
            let baggage = request.headers.get(headers::BAGGAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let greeting = format!("{forwarded}|{baggage}|{}\n", request.headers.contains_key(headers::TRACEPARENT));
            let Ok(mut stream) = responder.accept(HeaderMap::new()) else { return };
            let _ = stream.write_all(greeting.as_bytes()).await;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        }
    }
}

async fn fixture() -> Fixture {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let trust = TrustBundle::from_pem(TD, ca.root_pem()).unwrap();
    let server_cert = issue(&ca, "server");
    let server_id = server_cert.identity.clone();
    let acceptor = TlsAcceptor::from(tls::server_config(&server_cert, &trust).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drain = Drain::new();
    let server_drain = drain.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let drain = server_drain.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = server::serve_connection(tls, server::ServerLimits::default(), drain, handle).await;
                }
            });
        }
    });
    Fixture {
        addr,
        client_cert: Arc::new(issue(&ca, "client")),
        server_id,
        trust,
        dials: Arc::new(AtomicUsize::new(0)),
        _drain: drain,
    }
}

struct TestDialer {
    cert: Arc<WorkloadCertificate>,
    trust: TrustBundle,
    dials: Arc<AtomicUsize>,
}

impl Dialer for TestDialer {
    fn dial(&self, key: &PoolKey) -> DialFuture {
        let config = tls::client_config(&self.cert, &self.trust, vec![key.dst.clone()]).unwrap();
        let next_hop = key.next_hop;
        self.dials.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let tcp =
                TcpStream::connect(next_hop).await.map_err(|cause| HboneError::Connect { addr: next_hop, cause })?;
            let tls = TlsConnector::from(config)
                .connect(tls::server_name(next_hop.ip()), tcp)
                .await
                .map_err(|cause| HboneError::Tls { addr: next_hop, cause })?;
            Ok(Box::new(tls) as Box<dyn Io>)
        })
    }
}

fn settings(streams: usize, idle: Duration) -> PoolSettings {
    PoolSettings {
        streams_per_connection: streams,
        idle_timeout: idle,
        dial_timeout: Duration::from_secs(10),
        answer_timeout: Duration::from_secs(10),
    }
}

fn pool(f: &Fixture, streams: usize, idle: Duration) -> (Pool, PoolKey) {
    let dialer = TestDialer { cert: f.client_cert.clone(), trust: f.trust.clone(), dials: f.dials.clone() };
    let key = PoolKey {
        src: f.client_cert.identity.clone(),
        dst: f.server_id.clone(),
        src_ip: "127.0.0.1".parse().unwrap(),
        next_hop: f.addr,
    };
    (Pool::new(dialer, settings(streams, idle)), key)
}

fn peer() -> PeerInfo {
    PeerInfo { namespace: Some("test".into()), workload: Some("client".into()), ..Default::default() }
}

async fn read_greeting(stream: &mut H2Stream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test]
async fn tunnel_carries_bytes_and_headers_with_half_close() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    let client: SocketAddr = "10.1.0.2:4321".parse().unwrap();
    let mut stream =
        pool.connect(&key, "10.1.0.3:8080".parse().unwrap(), headers::connect_headers(client, &peer())).await.unwrap();
    let greeting = read_greeting(&mut stream).await;
    assert_eq!(greeting, "for=\"10.1.0.2:4321\"|k8s.namespace.name=test,k8s.deployment.name=client|true");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = async {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let reader = async {
        let mut back = Vec::new();
        read.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(writer, reader);
    assert!(back == payload, "echo differs ({} bytes back)", back.len());
}

#[tokio::test]
async fn rejections_carry_status() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    let denied = pool.connect(&key, "10.1.0.3:401".parse().unwrap(), HeaderMap::new()).await.unwrap_err();
    assert!(denied.is_denied(), "{denied}");
    let unavailable = pool.connect(&key, "10.1.0.3:503".parse().unwrap(), HeaderMap::new()).await.unwrap_err();
    assert!(matches!(unavailable, HboneError::Status(StatusCode::SERVICE_UNAVAILABLE)), "{unavailable}");
    // The connection survives both.
    let mut ok = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut ok).await;
    assert_eq!(f.dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_requests_get_400_and_spare_other_streams() {
    let f = fixture().await;
    let config = tls::client_config(&f.client_cert, &f.trust, vec![f.server_id.clone()]).unwrap();
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let tls = TlsConnector::from(config).connect(tls::server_name(f.addr.ip()), tcp).await.unwrap();
    let (send, connection) = crate::hbone::settings::client_builder().handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let connection = client::Connection::for_test(send.clone());
    let mut good = connection.connect("10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut good).await;

    let mut send = send.ready().await.unwrap();
    for (method, uri) in [("GET", "http://10.1.0.3/"), ("CONNECT", "example.com:80")] {
        let request = http::Request::builder().method(method).uri(uri).body(()).unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::BAD_REQUEST, "{method} {uri}");
    }
    good.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    good.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn sequential_streams_share_one_connection() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    for _ in 0..50 {
        let mut stream = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
        read_greeting(&mut stream).await;
    }
    assert_eq!(f.dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().connections.len(), 1);
}

#[tokio::test]
async fn full_connections_make_the_pool_dial_again() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 3, Duration::from_secs(60));
    let mut held = Vec::new();
    for _ in 0..7 {
        let mut stream = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
        read_greeting(&mut stream).await;
        held.push(stream);
    }
    // 3 + 3 + 1 streams.
    assert_eq!(f.dials.load(Ordering::SeqCst), 3);
    let active: Vec<usize> = pool.stats().connections.iter().map(|c| c.active_streams).collect();
    assert_eq!(active.iter().sum::<usize>(), 7);
    drop(held);
    let mut again = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut again).await;
    assert_eq!(f.dials.load(Ordering::SeqCst), 3, "freed slots are reused");
}

#[tokio::test]
async fn the_peers_stream_limit_caps_the_pools() {
    let f = fixture().await;
    // Our limit is above the server's MAX_CONCURRENT_STREAMS (200).
    let (pool, key) = pool(&f, 1000, Duration::from_secs(60));
    let mut first = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut first).await;
    let mut held = vec![first];
    for _ in 0..210 {
        held.push(pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap());
    }
    assert_eq!(f.dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_released() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::ZERO);
    let mut stream = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut stream).await;
    pool.release_idle();
    assert_eq!(pool.stats().connections.len(), 1, "busy connections stay");
    drop(stream);
    pool.release_idle();
    assert_eq!(pool.stats().connections.len(), 0);
}

#[tokio::test]
async fn optimistic_open_relays_and_reports_refusals() {
    use crate::hbone::copy::{RelayError, relay_opening};
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    let none = |_: u64| {};

    // Accepted: bytes written before the answer arrives still get through.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let pending = pool.open(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    theirs.write_all(b"early bytes").await.unwrap();
    let relay = tokio::spawn(async move { relay_opening(tokio::io::split(ours), pending, &none, &none).await });
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while theirs.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        greeting.push(byte[0]);
    }
    let mut echoed = [0u8; 11];
    theirs.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"early bytes");
    drop(theirs);
    relay.await.unwrap().unwrap();

    // Refused: the relay ends with the status, whatever was sent.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let pending = pool.open(&key, "10.1.0.3:401".parse().unwrap(), HeaderMap::new()).await.unwrap();
    theirs.write_all(b"never delivered").await.unwrap();
    let result = relay_opening(tokio::io::split(ours), pending, &none, &none).await;
    assert!(matches!(result, Err(RelayError::Refused(StatusCode::UNAUTHORIZED))), "{result:?}");
}

/// A refusal resets the stream, which can end a busy upload before the
/// answer is read; the relay must still report the refusal.
#[tokio::test]
async fn refusal_is_reported_even_when_the_upload_fails_first() {
    use crate::hbone::copy::{RelayError, relay_opening};
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    let none = |_: u64| {};
    let (ours, mut theirs) = tokio::io::duplex(1024 * 1024);
    let pending = pool.open(&key, "10.1.0.3:401".parse().unwrap(), HeaderMap::new()).await.unwrap();
    // More than the stream window, so the upload is still sending when the
    // reset arrives.
    tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..256 {
            if theirs.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let result = relay_opening(tokio::io::split(ours), pending, &none, &none).await;
    assert!(matches!(result, Err(RelayError::Refused(StatusCode::UNAUTHORIZED))), "{result:?}");
}

#[tokio::test]
async fn a_burst_shares_one_dial() {
    let f = fixture().await;
    let (pool, key) = pool(&f, 100, Duration::from_secs(60));
    let opens = (0..20).map(|_| pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()));
    let streams = futures::future::join_all(opens).await;
    assert!(streams.iter().all(Result::is_ok));
    assert_eq!(f.dials.load(Ordering::SeqCst), 1, "20 tunnels opened at once share one dial");
    assert_eq!(pool.stats().dialing, 0, "the dial's entry is gone once it is done");
}

/// A dialer whose peer never answers, or that fails at once; it counts its dials.
struct BrokenDialer {
    hang: bool,
    dials: Arc<AtomicUsize>,
}

impl Dialer for BrokenDialer {
    fn dial(&self, key: &PoolKey) -> DialFuture {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (hang, addr) = (self.hang, key.next_hop);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Err(HboneError::Connect { addr, cause: std::io::ErrorKind::ConnectionRefused.into() })
        })
    }
}

fn broken_pool(hang: bool) -> (Pool, PoolKey, Arc<AtomicUsize>) {
    let dials = Arc::new(AtomicUsize::new(0));
    let pool = Pool::new(BrokenDialer { hang, dials: dials.clone() }, settings(100, Duration::from_secs(60)));
    let id = |sa| Identity::new(TD, "test", sa);
    let key = PoolKey {
        src: id("client"),
        dst: id("server"),
        src_ip: "10.1.0.2".parse().unwrap(),
        next_hop: "10.2.0.2:15008".parse().unwrap(),
    };
    (pool, key, dials)
}

/// A black-holed peer costs each waiter one bounded wait, all of them the
/// same one, and leaves nothing behind in the pool.
#[tokio::test(start_paused = true)]
async fn a_black_holed_peer_costs_one_bounded_dial() {
    let (pool, key, dials) = broken_pool(true);
    let started = tokio::time::Instant::now();
    let opens = (0..10).map(|_| pool.connect(&key, "10.2.0.2:80".parse().unwrap(), HeaderMap::new()));
    let results = futures::future::join_all(opens).await;
    assert_eq!(dials.load(Ordering::SeqCst), 1, "the waiters shared one dial");
    for result in results {
        let error = result.unwrap_err();
        assert!(error.to_string().contains("took longer than 10s"), "{error}");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(10), "every waiter gave up at the one dial's deadline");
    let stats = pool.stats();
    assert_eq!((stats.dialing, stats.connections.len()), (0, 0), "nothing stays behind");
}

#[tokio::test]
async fn a_failed_dial_is_shared_then_forgotten() {
    let (pool, key, dials) = broken_pool(false);
    let opens = (0..10).map(|_| pool.connect(&key, "10.2.0.2:80".parse().unwrap(), HeaderMap::new()));
    let failed = futures::future::join_all(opens).await.into_iter().filter(Result::is_err).count();
    assert_eq!(failed, 10);
    assert!(dials.load(Ordering::SeqCst) <= 10, "no waiter dials twice");
    // The next attempt after a failure dials afresh rather than reusing it.
    let before = dials.load(Ordering::SeqCst);
    assert!(pool.connect(&key, "10.2.0.2:80".parse().unwrap(), HeaderMap::new()).await.is_err());
    assert_eq!(dials.load(Ordering::SeqCst), before + 1);
    assert_eq!(pool.stats().dialing, 0);
}

/// A server that never answers a CONNECT costs the client its answer
/// deadline, no more; the connection stays usable for other streams.
#[tokio::test]
async fn an_unanswered_connect_fails_at_its_deadline() {
    let f = fixture().await;
    let dialer = TestDialer { cert: f.client_cert.clone(), trust: f.trust.clone(), dials: f.dials.clone() };
    let settings =
        PoolSettings { answer_timeout: Duration::from_millis(200), ..settings(100, Duration::from_secs(60)) };
    let pool = Pool::new(dialer, settings);
    let key = PoolKey {
        src: f.client_cert.identity.clone(),
        dst: f.server_id.clone(),
        src_ip: "127.0.0.1".parse().unwrap(),
        next_hop: f.addr,
    };
    let error = pool.connect(&key, "10.1.0.3:999".parse().unwrap(), HeaderMap::new()).await.unwrap_err();
    assert!(matches!(error, HboneError::AnswerTimeout(_)), "{error}");
    let mut ok = pool.connect(&key, "10.1.0.3:80".parse().unwrap(), HeaderMap::new()).await.unwrap();
    read_greeting(&mut ok).await;
    assert_eq!(f.dials.load(Ordering::SeqCst), 1);
}
