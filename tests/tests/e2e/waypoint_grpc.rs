//! gRPC through the waypoint with a real gRPC stack on both ends (tonic):
//! a unary call, a failing one, and a bidirectional stream, trailers
//! intact, `grpc_response_status` recorded. Messages are prost messages
//! written out by hand, so no protoc is needed.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ambit_tests::require_root;
use ambit_tests::waypoint::L7Bed;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::codegen::{BoxFuture, Service};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::WAIT;

#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
}

const GRPC_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const GRPC_PORT: u16 = 50051;
const GET: &str = "/reviews.Reviews/Get";
const CHAT: &str = "/reviews.Reviews/Chat";

/// The server: `Get` answers `"<version>: <text>"` (NOT_FOUND for
/// `missing`); `Chat` answers each message in upper case.
#[derive(Clone)]
struct Reviews {
    version: &'static str,
}

impl Service<http::Request<tonic::body::Body>> for Reviews {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let version = self.version;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
            Ok(match request.uri().path() {
                GET => grpc.unary(Get { version }, request).await,
                CHAT => grpc.streaming(Chat, request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

struct Get {
    version: &'static str,
}

impl Service<Request<Note>> for Get {
    type Response = Response<Note>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Note>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Note>) -> Self::Future {
        let text = request.into_inner().text;
        std::future::ready(match text.as_str() {
            "missing" => Err(Status::not_found("no such review")),
            _ => Ok(Response::new(Note { text: format!("{}: {text}", self.version) })),
        })
    }
}

type Notes = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;

struct Chat;

impl Service<Request<Streaming<Note>>> for Chat {
    type Response = Response<Notes>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Notes>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<Note>>) -> Self::Future {
        let upper = request.into_inner().map(|note| note.map(|n| Note { text: n.text.to_uppercase() }));
        std::future::ready(Ok(Response::new(Box::pin(upper) as Notes)))
    }
}

/// Hands tonic one connection made beforehand inside the client pod (a
/// channel dials through this; the pod's namespace is not the test's).
#[derive(Clone)]
struct OneConnection(Arc<Mutex<Option<TcpStream>>>);

impl Service<http::Uri> for OneConnection {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<TokioIo<TcpStream>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let stream = self.0.lock().ok().and_then(|mut s| s.take());
        std::future::ready(stream.map(TokioIo::new).ok_or_else(|| std::io::Error::other("one connection only")))
    }
}

const GRPC_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews-grpc, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: reviews}
  ports: [{name: grpc, port: 50051}]
";

#[tokio::test]
async fn grpc_unary_and_streaming_calls_pass_with_their_status() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let mut servers = Vec::new();
    for (pod, version) in [("reviews-v1", "v1"), ("reviews-v2", "v2")] {
        let netns = &bed.cluster.pod(pod).netns;
        let listener = netns.listen(bed.cluster.pod(pod).addr(GRPC_PORT)).unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder().serve_with_incoming(Reviews { version }, incoming);
        servers.push(tokio::spawn(server));
    }
    bed.apply("grpc.yaml", GRPC_SERVICE).await.unwrap();
    let addr = SocketAddr::new(IpAddr::V4(GRPC_VIP), GRPC_PORT);
    let stream = bed.cluster.pod("client").netns.connect(addr).await.unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://reviews-grpc.shop:50051")
        .connect_with_connector(OneConnection(Arc::new(Mutex::new(Some(stream)))))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let codec = ProstCodec::<Note, Note>::default;

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(GET);
    let answer = grpc.unary(Request::new(Note { text: "hello".into() }), path.clone(), codec()).await.unwrap();
    let text = answer.into_inner().text;
    assert!(text == "v1: hello" || text == "v2: hello", "{text}");
    grpc.ready().await.unwrap();
    let missing = grpc.unary(Request::new(Note { text: "missing".into() }), path, codec()).await.unwrap_err();
    assert_eq!((missing.code(), missing.message()), (Code::NotFound, "no such review"));

    grpc.ready().await.unwrap();
    let (notes, received) = tokio::sync::mpsc::channel(4);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(received);
    let response = grpc.streaming(Request::new(outbound), PathAndQuery::from_static(CHAT), codec()).await.unwrap();
    let mut inbound = response.into_inner();
    for word in ["one", "two", "three"] {
        notes.send(Note { text: word.into() }).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, inbound.message()).await.unwrap().unwrap();
        assert_eq!(echoed.map(|n| n.text), Some(word.to_uppercase()), "each answer before the next message");
    }
    drop(notes);
    assert_eq!(tokio::time::timeout(WAIT, inbound.message()).await.unwrap().unwrap(), None, "ends with status OK");

    let deadline = tokio::time::Instant::now() + WAIT;
    let count = |status: &'static str| {
        let bed = &bed;
        async move {
            let labels = [("request_protocol", "grpc"), ("grpc_response_status", status)];
            bed.waypoint_metrics().await.unwrap().sum_or_zero("istio_requests_total", &labels)
        }
    };
    while count("0").await < 2.0 || count("5").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", bed.waypoint_metrics().await.unwrap().text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((count("0").await, count("5").await), (2.0, 1.0));
    for server in servers {
        server.abort();
    }
}
