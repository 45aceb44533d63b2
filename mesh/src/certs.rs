//! The certificate manager: one certificate per identity a component
//! serves (ztunnel: its node's enrolled pods; a waypoint: its own). Certificates are fetched on first use and cached;
//! they are renewed at half their lifetime, with jittered exponential
//! backoff when the CA fails. The backoff is the identity's, whoever asks:
//! while it runs, connections that need the certificate fail at once
//! instead of each asking the CA again. A certificate is only replaced by a
//! newer one, never removed while still wanted, so rotation cannot break
//! new connections; established TLS sessions never look at it again.
//!
//! Times are on tokio's clock, so tests can run them on a paused one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ca::{CaClient, CertificateRequest};
use crate::drain::Drain;
use crate::identity::Identity;
use crate::tls::{self, TrustBundle, WorkloadCertificate};
use rand::Rng as _;
use rustls::ServerConfig;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("cannot get a certificate for {identity}: {reason}")]
    Fetch { identity: String, reason: String },
}

/// A certificate with the server TLS config built from it.
#[derive(Debug)]
pub struct Certified {
    pub cert: WorkloadCertificate,
    pub server: Arc<ServerConfig>,
    received: Instant,
    /// `not_after` on our monotonic clock.
    expires: Instant,
}

impl Certified {
    fn renew_at(&self) -> Instant {
        self.received + (self.expires.saturating_duration_since(self.received)) / 2
    }

    fn usable(&self) -> bool {
        Instant::now() < self.expires
    }
}

#[derive(Debug, Default)]
struct Entry {
    current: Option<Arc<Certified>>,
    /// One fetch at a time per identity.
    fetching: Arc<tokio::sync::Mutex<()>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CertManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca: Arc<dyn CaClient>,
    trust: TrustBundle,
    ttl: Duration,
    entries: Mutex<HashMap<Identity, Entry>>,
    /// Wakes the renewal loop when the set of identities changes.
    wanted_changed: Notify,
    /// Counts issued certificates; observers wait on it.
    issued: tokio::sync::watch::Sender<u64>,
}

/// One identity's certificate, for the admin config dump.
#[derive(Clone, Debug, Serialize)]
pub struct CertStatus {
    pub identity: String,
    pub state: &'static str,
    #[serde(with = "humantime_serde::option")]
    pub not_before: Option<SystemTime>,
    #[serde(with = "humantime_serde::option")]
    pub not_after: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl CertManager {
    pub fn new(ca: Arc<dyn CaClient>, trust: TrustBundle, ttl: Duration) -> Self {
        let (issued, _) = tokio::sync::watch::channel(0);
        Self {
            inner: Arc::new(Inner { ca, trust, ttl, entries: Mutex::default(), wanted_changed: Notify::new(), issued }),
        }
    }

    /// Changes whenever a certificate is issued.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.issued.subscribe()
    }

    pub fn trust(&self) -> &TrustBundle {
        &self.inner.trust
    }

    /// The current certificate for `identity`, fetching one if there is none
    /// or it has expired. Adds `identity` to the ones kept renewed.
    pub async fn get(&self, identity: &Identity) -> Result<Arc<Certified>, CertError> {
        let fetching = {
            let mut entries = self.lock();
            let entry = entries.entry(identity.clone()).or_default();
            if let Some(current) = entry.current.as_ref().filter(|c| c.usable()) {
                return Ok(current.clone());
            }
            if let Some(retry_at) = entry.retry_at.filter(|at| *at > Instant::now()) {
                let last = entry.last_error.as_deref().unwrap_or("unknown error");
                let reason = format!("backing off for {:?} after: {last}", retry_at - Instant::now());
                return Err(CertError::Fetch { identity: identity.to_string(), reason });
            }
            entry.fetching.clone()
        };
        let _one_at_a_time = fetching.lock().await;
        if let Some(current) = self.current(identity) {
            return Ok(current);
        }
        self.fetch(identity).await
    }

    fn current(&self, identity: &Identity) -> Option<Arc<Certified>> {
        self.lock().get(identity).and_then(|e| e.current.clone()).filter(|c| c.usable())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        // A poisoned map still holds valid certificates; keep serving them.
        self.inner.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch(&self, identity: &Identity) -> Result<Arc<Certified>, CertError> {
        let error = |reason: String| CertError::Fetch { identity: identity.to_string(), reason };
        let request = CertificateRequest::new(identity).map_err(|e| error(e.to_string()))?;
        let csr = request.csr_pem.clone();
        let result = self.inner.ca.sign(csr, identity.clone(), self.inner.ttl).await;
        let certified = result.map_err(|e| e.to_string()).and_then(|issued| {
            let expires_in = issued.not_after.duration_since(SystemTime::now()).unwrap_or_default();
            let cert = WorkloadCertificate::new(identity.clone(), request, issued).map_err(|e| e.to_string())?;
            let server = tls::server_config(&cert, &self.inner.trust).map_err(|e| e.to_string())?;
            let received = Instant::now();
            Ok(Arc::new(Certified { cert, server, received, expires: received + expires_in }))
        });
        let mut entries = self.lock();
        let entry = entries.entry(identity.clone()).or_default();
        match certified {
            Ok(certified) => {
                entry.current = Some(certified.clone());
                entry.failures = 0;
                entry.retry_at = None;
                entry.last_error = None;
                drop(entries);
                self.inner.issued.send_modify(|n| *n += 1);
                info!(%identity, "certificate issued");
                Ok(certified)
            }
            Err(reason) => {
                entry.failures += 1;
                entry.retry_at = Some(Instant::now() + backoff(entry.failures));
                entry.last_error = Some(reason.clone());
                warn!(%identity, %reason, failures = entry.failures, "certificate fetch failed");
                Err(error(reason))
            }
        }
    }

    /// Keeps certificates for exactly `wanted` (the local enrolled pods'
    /// identities); others are forgotten.
    pub fn set_wanted(&self, wanted: &HashSet<Identity>) {
        let mut entries = self.lock();
        entries.retain(|id, _| wanted.contains(id));
        for id in wanted {
            entries.entry(id.clone()).or_default();
        }
        drop(entries);
        self.inner.wanted_changed.notify_one();
    }

    /// Whether every wanted identity has a usable certificate.
    pub fn all_ready(&self) -> bool {
        self.lock().values().all(|e| e.current.as_ref().is_some_and(|c| c.usable()))
    }

    /// Fetches or renews whatever is due, forever (until drained).
    pub async fn run(self, drain: Drain) {
        loop {
            for identity in self.due().0 {
                let _ = self.renew(&identity).await;
            }
            // After the renewals: a failure just scheduled its retry.
            let (_, next) = self.due();
            let sleep = next;
            tokio::select! {
                () = drain.signaled() => return,
                () = self.inner.wanted_changed.notified() => {}
                () = async { if let Some(at) = sleep { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {}
            }
        }
    }

    async fn renew(&self, identity: &Identity) -> Result<Arc<Certified>, CertError> {
        let fetching = self.lock().get(identity).map(|e| e.fetching.clone()).unwrap_or_default();
        let _one_at_a_time = fetching.lock().await;
        self.fetch(identity).await
    }

    /// Identities due now, and the next time one falls due.
    fn due(&self) -> (Vec<Identity>, Option<Instant>) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, entry) in self.lock().iter() {
            let at = match (&entry.current, entry.retry_at) {
                (_, Some(retry)) => retry,
                (Some(current), None) => current.renew_at(),
                (None, None) => now,
            };
            if at <= now {
                due.push(id.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let mut status: Vec<CertStatus> = self
            .lock()
            .iter()
            .map(|(id, e)| CertStatus {
                identity: id.to_string(),
                state: match &e.current {
                    Some(c) if c.usable() => "valid",
                    Some(_) => "expired",
                    None if e.last_error.is_some() => "failing",
                    None => "pending",
                },
                not_before: e.current.as_ref().map(|c| c.cert.not_before),
                not_after: e.current.as_ref().map(|c| c.cert.not_after),
                last_error: e.last_error.clone(),
            })
            .collect();
        status.sort_by(|a, b| a.identity.cmp(&b.identity));
        status
    }
}

/// Exponential from [`BACKOFF_MIN`], capped at [`BACKOFF_MAX`], with ±25% jitter
/// so a fleet of agents does not retry in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.75..1.25))
}

#[cfg(test)]
mod tests;
