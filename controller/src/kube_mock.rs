//! kube's mock-API pattern for the edge cases a real API server will not
//! produce on demand (two replicas racing to create one object, a Lease
//! renewed under our feet). A scripted verifier answers each request in
//! order and checks it was the expected one. The happy paths run against
//! a real API server in the e2e tests.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, pair};

/// One expected request and the answer to give.
pub struct Exchange {
    pub method: Method,
    pub path: &'static str,
    pub status: StatusCode,
    pub body: Value,
}

/// A client whose requests are answered by `script`, in order. The returned
/// task fails if a request differs from the script or one is missing.
pub fn scripted_client(script: Vec<Exchange>) -> (kube::Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (client, tokio::spawn(verify(handle, script)))
}

/// Returns the bodies the client sent, for the test to inspect.
async fn verify(mut handle: Handle<Request<Body>, Response<Body>>, script: Vec<Exchange>) -> Vec<Value> {
    let mut sent = Vec::new();
    for expected in script {
        let Some((request, respond)) = handle.next_request().await else {
            panic!("the client stopped before {} {}", expected.method, expected.path);
        };
        assert_eq!((request.method(), request.uri().path()), (&expected.method, expected.path));
        let bytes =
            http_body_util::BodyExt::collect(request.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
        sent.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
        let response = Response::builder()
            .status(expected.status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&expected.body).unwrap_or_default()));
        match response {
            Ok(response) => respond.send_response(response),
            Err(error) => panic!("bad scripted response: {error}"),
        }
    }
    sent
}

/// The API server's error body for `code`.
pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code})
}
