use std::sync::atomic::{AtomicUsize, Ordering};

use crate::ca::{CaError, CaFuture, CertificateAuthority};

use super::*;

const TD: &str = "cluster.local";

/// The real CA, made to fail its first `failures` requests. A double only
/// in that: a CA outage cannot be produced on demand otherwise.
#[derive(Debug)]
struct FlakyCa {
    ca: Arc<CertificateAuthority>,
    failures: usize,
    calls: AtomicUsize,
}

impl CaClient for FlakyCa {
    fn sign(&self, csr_pem: String, identity: Identity, ttl: Duration) -> CaFuture {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.failures {
            return Box::pin(async { Err(CaError::Unavailable("injected outage".into())) });
        }
        self.ca.sign(csr_pem, identity, ttl)
    }

    fn roots_pem(&self) -> String {
        self.ca.roots_pem()
    }
}

fn manager(failures: usize, ttl: Duration) -> (CertManager, Arc<FlakyCa>) {
    let ca = Arc::new(CertificateAuthority::generate(TD).unwrap());
    let trust = TrustBundle::from_pem(TD, ca.root_pem()).unwrap();
    let flaky = Arc::new(FlakyCa { ca, failures, calls: AtomicUsize::new(0) });
    (CertManager::new(flaky.clone(), trust, ttl), flaky)
}

fn id(sa: &str) -> Identity {
    Identity::new(TD, "shop", sa)
}

#[tokio::test]
async fn fetches_on_demand_and_caches() {
    let (manager, ca) = manager(0, Duration::from_secs(3600));
    let first = manager.get(&id("web")).await.unwrap();
    let second = manager.get(&id("web")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    assert_eq!(first.cert.identity, id("web"));
    assert!(manager.all_ready());
    let status = manager.status();
    assert_eq!((status[0].identity.as_str(), status[0].state), ("spiffe://cluster.local/ns/shop/sa/web", "valid"));
}

#[tokio::test]
async fn concurrent_first_uses_share_one_fetch() {
    let (manager, ca) = manager(0, Duration::from_secs(3600));
    let web = id("web");
    let gets: Vec<_> = (0..20).map(|_| manager.get(&web)).collect();
    for result in futures::future::join_all(gets).await {
        result.unwrap();
    }
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
}

/// On a paused clock: renewal falls due at half the lifetime, and the old
/// certificate serves until the new one is there.
#[tokio::test(start_paused = true)]
async fn renews_at_half_life_and_keeps_serving() {
    let (manager, _) = manager(0, Duration::from_secs(3600));
    let first = manager.get(&id("web")).await.unwrap();
    let mut issued = manager.subscribe();
    let drain = Drain::new();
    tokio::spawn(manager.clone().run(drain.clone()));
    let started = Instant::now();
    issued.changed().await.unwrap();
    let renewed = manager.get(&id("web")).await.unwrap();
    assert!(!Arc::ptr_eq(&renewed, &first));
    let at = started.elapsed();
    assert!((Duration::from_secs(1799)..Duration::from_secs(1801)).contains(&at), "renewed after {at:?}");
    assert!(renewed.cert.not_after > first.cert.not_after);
    drain.drain(Duration::from_secs(1)).await;
}

/// While an identity backs off, asking for its certificate fails at once
/// and does not reach the CA; after the backoff a fetch goes through.
#[tokio::test(start_paused = true)]
async fn callers_share_the_identitys_backoff() {
    let (manager, ca) = manager(1, Duration::from_secs(3600));
    assert!(manager.get(&id("web")).await.is_err());
    for _ in 0..10 {
        let error = manager.get(&id("web")).await.unwrap_err();
        assert!(error.to_string().contains("backing off"), "{error}");
    }
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1, "one CA request, not one per caller");
    tokio::time::advance(BACKOFF_MAX).await;
    manager.get(&id("web")).await.unwrap();
    assert_eq!(ca.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn outage_backs_off_then_recovers() {
    let (manager, ca) = manager(3, Duration::from_secs(3600));
    manager.set_wanted(&HashSet::from([id("web")]));
    assert!(!manager.all_ready());
    let started = Instant::now();
    let mut issued = manager.subscribe();
    let drain = Drain::new();
    tokio::spawn(manager.clone().run(drain.clone()));
    while !manager.all_ready() {
        issued.changed().await.unwrap();
    }
    assert_eq!(ca.calls.load(Ordering::SeqCst), 4);
    // Three failures back off at least 0.75 × (200 + 400 + 800) ms.
    assert!(started.elapsed() >= Duration::from_millis(1050), "{:?}", started.elapsed());
    drain.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn forgets_identities_no_longer_wanted() {
    let (manager, _) = manager(0, Duration::from_secs(3600));
    manager.get(&id("web")).await.unwrap();
    manager.get(&id("db")).await.unwrap();
    manager.set_wanted(&HashSet::from([id("db")]));
    let left: Vec<_> = manager.status().into_iter().map(|s| s.identity).collect();
    assert_eq!(left, ["spiffe://cluster.local/ns/shop/sa/db"]);
}

#[test]
fn backoff_grows_and_is_capped() {
    let d1 = backoff(1);
    assert!(d1 >= Duration::from_millis(150) && d1 <= Duration::from_millis(250), "{d1:?}");
    let d3 = backoff(3);
    assert!(d3 >= Duration::from_millis(600) && d3 <= Duration::from_millis(1000), "{d3:?}");
    assert!(backoff(40) <= BACKOFF_MAX.mul_f64(1.25));
}
