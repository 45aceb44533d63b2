use super::*;
use crate::config::MeshConfig;
use crate::control::UpdateBody;

fn line(version: u64) -> String {
    let update = Update { epoch: "e".into(), version, body: UpdateBody::Full(MeshConfig::default()) };
    format!("{}\n", serde_json::to_string(&update).unwrap())
}

#[tokio::test]
async fn reads_updates_line_by_line_and_skips_blank_lines() {
    let text = format!("{}\n{}", line(1), line(2));
    let mut stream = UpdateStream::from_reader(Box::pin(std::io::Cursor::new(text.into_bytes())), 1024, None);
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    assert_eq!(stream.next().await.unwrap().unwrap().version, 2);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn an_overlong_line_is_an_error_not_a_buffer() {
    let text = format!("{}{}\n", line(1), "x".repeat(4096));
    let mut stream = UpdateStream::from_reader(Box::pin(std::io::Cursor::new(text.into_bytes())), 1024, None);
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(error.to_string().contains("exceeds 1024 bytes"), "{error}");
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let mut stream = UpdateStream::from_reader(Box::pin(std::io::Cursor::new(b"{nope\n".to_vec())), 1024, None);
    assert!(matches!(stream.next().await, Some(Err(ControlError::Protocol(_)))));
}

/// A stand-in controller: TLS as the controller's identity, HTTP/2, and a
/// certificate endpoint that holds each request until `release` and
/// counts connections and requests in flight. The real controller cannot
/// run inside this crate (it depends on this one).
struct Controller {
    addr: SocketAddr,
    trust: TrustBundle,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn controller() -> Controller {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::ca::CertificateAuthority;

    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let trust = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
    let identity = controller_identity("cluster.local");
    let request = CertificateRequest::new(&identity).unwrap();
    let issued = ca.sign_csr(&request.csr_pem, &identity, Duration::from_secs(3600)).unwrap();
    let serving = WorkloadCertificate::new(identity, request, issued).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::control_server_config(&serving, &trust).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let state = (Arc::clone(&connections), in_flight, Arc::clone(&most), release.clone(), ca);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (connections, in_flight, most, release, ca) = state.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                AtomicUsize::fetch_add(&connections, 1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let (in_flight, most, release, ca) = (in_flight.clone(), most.clone(), release.clone(), ca.clone());
                    async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let _ = release.acquire().await.map(|p| p.forget());
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let sign: SignRequest = serde_json::from_slice(&body).unwrap();
                        let identity: Identity = sign.identity.parse().unwrap();
                        let issued = ca.sign_csr(&sign.csr, &identity, Duration::from_secs(60)).unwrap();
                        let at = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                        let answer = SignResponse {
                            certificate: issued.cert_pem,
                            not_before_unix: at(issued.not_before),
                            not_after_unix: at(issued.not_after),
                        };
                        let json = Bytes::from(serde_json::to_vec(&answer).unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(json)))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Controller { addr, trust, connections, most_in_flight: most, release }
}

/// Ten certificates wanted at once: they share one connection, and at
/// most four requests are in flight at a time.
#[tokio::test]
async fn certificate_requests_share_one_connection_four_at_a_time() {
    use std::sync::atomic::Ordering;
    let controller = controller().await;
    let client = ControlClient::new(controller.addr.to_string(), controller.trust.clone(), "t".into(), "n1".into());
    let all = tokio::spawn(async move {
        let wanted: Vec<Identity> =
            (0..10).map(|i| Identity::new("cluster.local", "shop", &format!("sa-{i}"))).collect();
        let requests = wanted.iter().map(|id| client.certificate(id, Duration::from_secs(60)));
        futures::future::join_all(requests).await.into_iter().filter(Result::is_ok).count()
    });
    // Let them through one by one; the bound holds throughout.
    for _ in 0..10 {
        controller.release.add_permits(1);
        tokio::task::yield_now().await;
    }
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), all).await.unwrap().unwrap(), 10);
    assert_eq!(controller.connections.load(Ordering::SeqCst), 1, "one connection for every request");
    let most = controller.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= MAX_CONCURRENT_SIGNS, "{most} requests in flight at once");
}
