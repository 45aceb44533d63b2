//! Who is asking. Local mode: a node, by a bootstrap token from a file
//! ([`NodeCredentials`]). Kubernetes: a ServiceAccount token bound to a pod,
//! which the API server vouches for (TokenReview, with our audience). The
//! agents' account makes the caller that pod's node; any other account is
//! accepted only from a waypoint's pod, which may have its own identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::credentials::NodeCredentials;

const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_CLAIM: &str = "authentication.kubernetes.io/pod-uid";
/// The label the Gateway's pods carry (as Istio's waypoint deployments do).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Who a credential proves the caller to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node's agent: it may have the identities of its node's pods.
    Node(String),
    /// One pod of waypoint `gateway`, with its own ServiceAccount's token:
    /// it may have that account's identity only.
    Waypoint { node: String, namespace: String, service_account: String, gateway: String },
}

impl Caller {
    /// The node the caller runs on, for logs.
    pub fn node(&self) -> &str {
        match self {
            Self::Node(node) | Self::Waypoint { node, .. } => node,
        }
    }
}

#[derive(Debug)]
pub enum NodeAuth {
    Local(NodeCredentials),
    Kubernetes(TokenReviewer),
}

impl NodeAuth {
    /// The caller an `Authorization` header proves, if any.
    pub async fn caller_for(&self, authorization: Option<&str>) -> Option<Caller> {
        match self {
            Self::Local(credentials) => credentials.node_for(authorization).map(|n| Caller::Node(n.to_owned())),
            Self::Kubernetes(reviewer) => reviewer.caller_for(authorization?.strip_prefix("Bearer ")?).await,
        }
    }
}

#[derive(Clone)]
pub struct TokenReviewer {
    pub client: kube::Client,
    /// The agents' namespace and ServiceAccount (`ambit-system`/`ztunnel`).
    pub namespace: String,
    pub service_account: String,
    /// The audience agents' tokens are minted for.
    pub audience: String,
    /// What recent reviews said, so a token is reviewed once per validity.
    pub reviews: Arc<ReviewCache>,
}

/// How long a review's answer is trusted: a valid token's caller until the
/// token expires, at most [`TRUST_VALID`] (a deleted pod's token stops
/// working within it); a refusal for [`TRUST_REFUSED`].
const TRUST_VALID: Duration = Duration::from_secs(300);
const TRUST_REFUSED: Duration = Duration::from_secs(30);
/// Answers remembered at most; past it, expired ones go first, then all.
const MAX_REMEMBERED: usize = 10_000;
/// TokenReviews in flight at once, whoever is asking: anyone who reaches
/// the control port can send tokens, and must not turn that into load on
/// the API server.
const MAX_CONCURRENT_REVIEWS: usize = 4;

/// Recent review answers by the token's SHA-256 (the token itself is not
/// kept), and the bound on reviews in flight.
/// A review's answer (the caller, or none), and until when it is trusted.
type Answer = (Option<Caller>, Instant);

#[derive(Debug)]
pub struct ReviewCache {
    answers: Mutex<HashMap<[u8; 32], Answer>>,
    in_flight: Semaphore,
}

impl Default for ReviewCache {
    fn default() -> Self {
        Self { answers: Mutex::default(), in_flight: Semaphore::new(MAX_CONCURRENT_REVIEWS) }
    }
}

impl ReviewCache {
    fn get(&self, key: &[u8; 32]) -> Option<Option<Caller>> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.get(key).filter(|(_, until)| *until > Instant::now()).map(|(caller, _)| caller.clone())
    }

    fn put(&self, key: [u8; 32], caller: Option<Caller>, until: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() >= MAX_REMEMBERED {
            let now = Instant::now();
            answers.retain(|_, (_, until)| *until > now);
            if answers.len() >= MAX_REMEMBERED {
                answers.clear();
            }
        }
        answers.insert(key, (caller, until));
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// The caller `token` proves, reviewed at most once per validity.
    async fn caller_for(&self, token: &str) -> Option<Caller> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.reviews.get(&key) {
            return answer;
        }
        let _permit = self.reviews.in_flight.acquire().await.ok()?;
        // Someone may have reviewed the same token while we waited.
        if let Some(answer) = self.reviews.get(&key) {
            return answer;
        }
        let caller = self.review(token).await;
        let trust = if caller.is_some() { TRUST_VALID.min(token_lifetime(token)) } else { TRUST_REFUSED };
        self.reviews.put(key, caller.clone(), Instant::now() + trust);
        caller
    }

    async fn review(&self, token: &str) -> Option<Caller> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| warn!(%error, "TokenReview failed"))
            .ok()?;
        let status = reviewed.status?;
        let user = status.user.filter(|_| status.authenticated == Some(true))?;
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = username.strip_prefix("system:serviceaccount:")?.split_once(':')?;
        let extra = user.extra.unwrap_or_default();
        let claim = |name: &str| extra.get(name).and_then(|v| v.first()).cloned();
        let (pod_name, pod_uid) = (claim(POD_NAME_CLAIM)?, claim(POD_UID_CLAIM)?);
        // The token names its pod; the pod (if it is still that pod) names its node.
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(&pod_name).await.ok()??;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return None;
        }
        let node = pod.spec?.node_name?;
        if namespace == self.namespace && service_account == self.service_account {
            return Some(Caller::Node(node));
        }
        let Some(gateway) = pod.metadata.labels.unwrap_or_default().remove(GATEWAY_NAME_LABEL) else {
            debug!(%username, "a token of a pod that is neither an agent nor a waypoint");
            return None;
        };
        Some(Caller::Waypoint {
            node,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            gateway,
        })
    }
}

/// How long `token` (a JWT) stays valid by its `exp` claim; zero if it
/// says nothing usable. Read without verifying: the API server has just
/// vouched for the token, this only bounds how long we remember that.
fn token_lifetime(token: &str) -> Duration {
    let claims = token.split('.').nth(1).and_then(|payload| {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice::<serde_json::Value>(&json).ok()
    });
    let Some(expires) = claims.and_then(|c| c["exp"].as_u64()) else { return Duration::ZERO };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(expires.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::kube_mock::{Exchange, scripted_client};

    fn jwt(expires_in: u64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", encode(json!({"alg": "RS256"})), encode(json!({"exp": now + expires_in})))
    }

    fn reviewer(client: kube::Client) -> TokenReviewer {
        TokenReviewer {
            client,
            namespace: "ambit-system".into(),
            service_account: "ztunnel".into(),
            audience: "ambit".into(),
            reviews: Arc::default(),
        }
    }

    fn authenticated() -> Exchange {
        let extra = json!({"authentication.kubernetes.io/pod-name": ["ztunnel-x"], "authentication.kubernetes.io/pod-uid": ["u1"]});
        Exchange {
            method: Method::POST,
            path: "/apis/authentication.k8s.io/v1/tokenreviews",
            status: StatusCode::CREATED,
            body: json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                         "status": {"authenticated": true,
                                    "user": {"username": "system:serviceaccount:ambit-system:ztunnel", "extra": extra}}}),
        }
    }

    fn agent_pod() -> Exchange {
        Exchange {
            method: Method::GET,
            path: "/api/v1/namespaces/ambit-system/pods/ztunnel-x",
            status: StatusCode::OK,
            body: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ztunnel-x", "uid": "u1"},
                         "spec": {"nodeName": "node1", "containers": []}}),
        }
    }

    /// A token is reviewed once: asking again (every certificate request
    /// and config stream does) costs the API server nothing more. The
    /// scripted API server answers exactly one review and one pod read.
    #[tokio::test]
    async fn a_token_is_reviewed_once_per_validity() {
        let (client, verifier) = scripted_client(vec![authenticated(), agent_pod()]);
        let reviewer = reviewer(client);
        let token = jwt(3600);
        for _ in 0..20 {
            assert_eq!(reviewer.caller_for(&token).await, Some(Caller::Node("node1".into())));
        }
        drop(reviewer);
        assert_eq!(verifier.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_token_is_remembered_too() {
        let refused = Exchange {
            method: Method::POST,
            path: "/apis/authentication.k8s.io/v1/tokenreviews",
            status: StatusCode::CREATED,
            body: json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                         "status": {"authenticated": false}}),
        };
        let (client, verifier) = scripted_client(vec![refused]);
        let reviewer = reviewer(client);
        for _ in 0..20 {
            assert_eq!(reviewer.caller_for("garbage").await, None);
        }
        drop(reviewer);
        assert_eq!(verifier.await.unwrap().len(), 1);
    }

    #[test]
    fn the_lifetime_comes_from_the_tokens_expiry() {
        let lifetime = token_lifetime(&jwt(600));
        assert!((Duration::from_secs(590)..=Duration::from_secs(600)).contains(&lifetime), "{lifetime:?}");
        assert_eq!(token_lifetime("not-a-jwt"), Duration::ZERO);
    }
}
