//! The agent's end of the CNI plugin: a unix socket under the state
//! directory. Same shape as every listener: [`CniServer::new`] binds and
//! fails fast, [`CniServer::address`], then [`CniServer::run`]. Each
//! connection carries one request; the agent's sync loop (which owns
//! capture) does the work and answers, and the reply goes back.
//!
//! Bounded like everything else: a request must arrive within
//! [`REQUEST_TIMEOUT`] and be at most [`protocol::MAX_LINE`] long, at most
//! [`MAX_CONCURRENT`] are served at once, and the sync loop must answer
//! within [`REQUEST_TIMEOUT`] (else the plugin is told to retry).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use mesh::drain::Drain;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{Framed, LinesCodec};
use tracing::{debug, info, warn};

use super::protocol::{self, EnrolledNamespaces, Reply, Request};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONCURRENT: usize = 16;
/// CNI requests, by command and outcome.
pub const CNI_REQUESTS: &str = "ambit_cni_requests_total";

/// A request from the plugin, for the sync loop to carry out.
#[derive(Debug)]
pub struct CniCall {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the CNI plugin on {path}: {cause}")]
pub struct BindError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

#[derive(Debug)]
pub struct CniServer {
    listener: UnixListener,
    path: PathBuf,
}

impl CniServer {
    /// Binds `<state_dir>/cni.sock` (replacing a stale socket of an earlier
    /// process), readable by root only.
    pub fn new(state_dir: &Path) -> Result<Self, BindError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = state_dir.join(protocol::SOCKET);
        let error = |cause| BindError { path: path.clone(), cause };
        std::fs::create_dir_all(state_dir).map_err(error)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e)),
        }
        let listener = UnixListener::bind(&path).map_err(error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
        Ok(Self { listener, path })
    }

    pub fn address(&self) -> &Path {
        &self.path
    }

    /// Serves until drained, handing requests to `calls`.
    pub async fn run(self, calls: mpsc::Sender<CniCall>, drain: Drain) {
        info!(socket = %self.path.display(), "listening for the CNI plugin");
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!("too many CNI requests at once; refusing one (the runtime retries)");
                continue;
            };
            let calls = calls.clone();
            drain.spawn(async move {
                serve(stream, &calls).await;
                drop(slot);
            });
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, calls: &mpsc::Sender<CniCall>) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(protocol::MAX_LINE));
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, lines.next()).await {
        Ok(Some(Ok(line))) => serde_json::from_str::<Request>(&line),
        Ok(other) => return debug!(?other, "a CNI connection without a request"),
        Err(_) => return debug!("a CNI connection sent nothing in time"),
    };
    let reply = match request {
        Ok(request) => answer(request, calls).await,
        Err(error) => Reply::Refused { reason: format!("malformed request: {error}") },
    };
    if let Ok(line) = serde_json::to_string(&reply) {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, lines.send(line)).await;
    }
}

/// Has the sync loop carry out `request`, within the deadline.
async fn answer(request: Request, calls: &mpsc::Sender<CniCall>) -> Reply {
    let command = match &request {
        Request::Add(_) => "add",
        Request::Del(_) => "del",
    };
    let (reply, answered) = oneshot::channel();
    let carried_out = async {
        calls.send(CniCall { request, reply }).await.ok()?;
        answered.await.ok()
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, carried_out)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| Reply::Refused { reason: format!("the agent did not act within {REQUEST_TIMEOUT:?}") });
    let outcome = match &reply {
        Reply::Done { enrolled: true } => "captured",
        Reply::Done { enrolled: false } => "not_enrolled",
        Reply::Refused { .. } => "refused",
    };
    metrics::counter!(CNI_REQUESTS, "command" => command, "outcome" => outcome).increment(1);
    reply
}

/// Writes the namespaces enrolled in `namespaces` for the plugin to read
/// while the agent is down. Write, then rename: the plugin never reads half.
pub fn write_enrolled_namespaces(state_dir: &Path, namespaces: Vec<String>) -> std::io::Result<()> {
    let path = state_dir.join(protocol::ENROLLED_NAMESPACES);
    let tmp = state_dir.join(format!(".{}.tmp", protocol::ENROLLED_NAMESPACES));
    let body = serde_json::to_vec(&EnrolledNamespaces { namespaces }).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    use super::*;
    use crate::cni::protocol::PodNetwork;

    fn pod() -> PodNetwork {
        PodNetwork {
            namespace: "shop".into(),
            name: "web".into(),
            ips: vec!["10.1.0.9".parse().unwrap()],
            host_interface: None,
        }
    }

    async fn exchange(path: &Path, line: &str) -> String {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(line.as_bytes()).await.unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn requests_reach_the_sync_loop_and_its_answer_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let server = CniServer::new(dir.path()).unwrap();
        let path = server.address().to_owned();
        let (calls, mut received) = mpsc::channel(4);
        let drain = Drain::new();
        tokio::spawn(server.run(calls, drain.clone()));
        tokio::spawn(async move {
            while let Some(call) = received.recv().await {
                assert_eq!(call.request, Request::Add(pod()));
                let _ = call.reply.send(Reply::Done { enrolled: true });
            }
        });
        let line = format!("{}\n", serde_json::to_string(&Request::Add(pod())).unwrap());
        assert_eq!(exchange(&path, &line).await.trim(), r#"{"result":"done","enrolled":true}"#);
        let refused = exchange(&path, "{\"command\":\"nonsense\"}\n").await;
        assert!(refused.contains("refused") && refused.contains("malformed"), "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_loop_that_never_answers_makes_the_plugin_retry() {
        let (calls, _received) = mpsc::channel(4);
        let reply = answer(Request::Add(pod()), &calls).await;
        assert!(matches!(reply, Reply::Refused { ref reason } if reason.contains("did not act")), "{reply:?}");
    }
}
