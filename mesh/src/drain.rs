//! The one shutdown primitive. Every listener and connection task is spawned
//! through a [`Drain`]; on shutdown the owner calls [`Drain::drain`], which
//! tells listeners to stop accepting and then waits, up to a grace period,
//! for every tracked task to finish.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every task finished within the grace period.
    Complete,
    /// The grace period ran out; this many tasks were still running.
    TimedOut { remaining: usize },
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a task that a drain waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Resolves once shutdown has started. Listeners stop accepting then;
    /// established connections carry on until they end or the grace expires.
    pub async fn signaled(&self) {
        self.token.cancelled().await;
    }

    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Number of tracked tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Starts the drain and waits up to `grace` for tracked tasks to end.
    pub async fn drain(&self, grace: Duration) -> DrainOutcome {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::TimedOut { remaining: self.tracker.len() },
        }
    }
}

/// Waits for SIGTERM (the kubelet stopping a pod) or SIGINT (Ctrl-C), and
/// names the one that came: every binary drains on either.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tasks_and_signals_listeners() {
        let drain = Drain::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let listener = drain.clone();
        let accept_loop = drain.spawn(async move { listener.signaled().await });
        drain.spawn(async move {
            let _ = released.await;
        });
        assert_eq!(drain.active(), 2);
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(10)).await }
        });
        accept_loop.await.unwrap();
        assert!(drain.is_draining());
        release.send(()).unwrap();
        assert_eq!(waiting.await.unwrap(), DrainOutcome::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_grace() {
        let drain = Drain::new();
        drain.spawn(std::future::pending::<()>());
        let outcome = drain.drain(Duration::from_secs(1)).await;
        assert_eq!(outcome, DrainOutcome::TimedOut { remaining: 1 });
    }
}
