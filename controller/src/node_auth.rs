//! Which node is asking. Local mode: a bootstrap token from a file
//! ([`NodeCredentials`]). Kubernetes: the agent's ServiceAccount token,
//! bound to its pod. The API server vouches for it (TokenReview, with our
//! audience); the pod it is bound to says which node.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use tracing::{debug, warn};

use crate::credentials::NodeCredentials;

const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_CLAIM: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Debug)]
pub enum NodeAuth {
    Local(NodeCredentials),
    Kubernetes(TokenReviewer),
}

impl NodeAuth {
    /// The node an `Authorization` header proves, if any.
    pub async fn node_for(&self, authorization: Option<&str>) -> Option<String> {
        match self {
            Self::Local(credentials) => credentials.node_for(authorization).map(str::to_owned),
            Self::Kubernetes(reviewer) => reviewer.node_for(authorization?.strip_prefix("Bearer ")?).await,
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
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    async fn node_for(&self, token: &str) -> Option<String> {
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
        let expected = format!("system:serviceaccount:{}:{}", self.namespace, self.service_account);
        if user.username.as_deref() != Some(expected.as_str()) {
            debug!(user = ?user.username, "a token of another account asked as an agent");
            return None;
        }
        let extra = user.extra.unwrap_or_default();
        let claim = |name: &str| extra.get(name).and_then(|v| v.first()).cloned();
        let (pod_name, pod_uid) = (claim(POD_NAME_CLAIM)?, claim(POD_UID_CLAIM)?);
        // The token names its pod; the pod (if it is still that pod) names its node.
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace).get_opt(&pod_name).await.ok()??;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return None;
        }
        pod.spec?.node_name
    }
}
