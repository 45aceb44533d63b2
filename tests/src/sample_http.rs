//! A minimal HTTP/1.1 server answering every request with a fixed-size
//! body: the target of request/response benchmarks (oha).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::netns::Netns;

/// Serves `body_size` bytes per request on `addr` inside `netns`; stops on drop.
#[derive(Debug)]
pub struct HttpResponder {
    task: JoinHandle<()>,
}

impl HttpResponder {
    pub fn start(netns: &Netns, addr: SocketAddr, body_size: usize) -> anyhow::Result<Self> {
        let listener = netns.listen(addr)?;
        let body = Bytes::from(vec![b'x'; body_size]);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { task })
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
