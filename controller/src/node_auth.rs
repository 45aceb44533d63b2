//! Who is asking. Local mode: a node, by a bootstrap token from a file
//! ([`NodeCredentials`]). Kubernetes: a ServiceAccount token bound to a pod,
//! which the API server vouches for (TokenReview, with our audience). The
//! agents' account makes the caller that pod's node; any other account is
//! accepted only from a waypoint's pod, which may have its own identity.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
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
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    async fn caller_for(&self, token: &str) -> Option<Caller> {
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
