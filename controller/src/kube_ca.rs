//! The CA root in Kubernetes: a Secret in the controller's namespace,
//! created by whichever replica starts first (the others read it back), and
//! the root certificate published as a ConfigMap agents mount.
//! Rotation is in ARCHITECTURE.md.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use mesh::ca::CertificateAuthority;
use tracing::info;

pub const CA_SECRET: &str = "ambit-ca";
pub const ROOT_CONFIGMAP: &str = "ambit-ca-root";
const CERT_KEY: &str = "root-cert.pem";
const KEY_KEY: &str = "root-key.pem";

/// Loads the root from the Secret, creating both on first start.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> anyhow::Result<CertificateAuthority> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let ca = match secrets.get_opt(CA_SECRET).await.context("read the CA Secret")? {
        Some(secret) => from_secret(&secret, trust_domain)?,
        None => {
            let ca = CertificateAuthority::generate(trust_domain)?;
            let data = BTreeMap::from([
                (CERT_KEY.to_owned(), ByteString(ca.root_pem().as_bytes().to_vec())),
                (KEY_KEY.to_owned(), ByteString(ca.key_pem().as_bytes().to_vec())),
            ]);
            let secret = Secret {
                metadata: ObjectMeta { name: Some(CA_SECRET.into()), ..Default::default() },
                data: Some(data),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    info!(secret = CA_SECRET, "created a new mesh root CA");
                    ca
                }
                // Another replica won the race: use its root.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    from_secret(&secrets.get(CA_SECRET).await.context("read the CA Secret")?, trust_domain)?
                }
                Err(error) => return Err(error).context("create the CA Secret"),
            }
        }
    };
    publish_root(client, namespace, ca.root_pem()).await?;
    Ok(ca)
}

fn from_secret(secret: &Secret, trust_domain: &str) -> anyhow::Result<CertificateAuthority> {
    let data = secret.data.clone().unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .with_context(|| format!("Secret {CA_SECRET} has no {key}"))
    };
    Ok(CertificateAuthority::from_pem(trust_domain, &field(CERT_KEY)?, &field(KEY_KEY)?)?)
}

/// The root certificate, where agents mount it from.
/// Creates or updates the root ConfigMap in `namespace`; one that already
/// contains the root is left alone (it may hold a rotation's bundle).
pub async fn publish_root(client: &kube::Client, namespace: &str, root_pem: &str) -> anyhow::Result<()> {
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let wanted = BTreeMap::from([(CERT_KEY.to_owned(), root_pem.to_owned())]);
    match configmaps.get_opt(ROOT_CONFIGMAP).await.context("read the root ConfigMap")? {
        // A bundle that already holds our root (during a rotation: old and
        // new) is the operator's; leave it.
        Some(existing)
            if existing.data.as_ref().and_then(|d| d.get(CERT_KEY)).is_some_and(|b| b.contains(root_pem.trim())) =>
        {
            Ok(())
        }
        Some(mut existing) => {
            existing.data = Some(wanted);
            configmaps
                .replace(ROOT_CONFIGMAP, &PostParams::default(), &existing)
                .await
                .context("update the root ConfigMap")?;
            Ok(())
        }
        None => {
            let configmap = ConfigMap {
                metadata: ObjectMeta { name: Some(ROOT_CONFIGMAP.into()), ..Default::default() },
                data: Some(wanted),
                ..Default::default()
            };
            match configmaps.create(&PostParams::default(), &configmap).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(error) => Err(error).context("create the root ConfigMap"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use mesh::ca::CertificateAuthority;
    use serde_json::json;

    use crate::kube_mock::{Exchange, scripted_client, status};

    const SECRET: &str = "/api/v1/namespaces/ambit-system/secrets/ambit-ca";
    const SECRETS: &str = "/api/v1/namespaces/ambit-system/secrets";
    const CONFIGMAP: &str = "/api/v1/namespaces/ambit-system/configmaps/ambit-ca-root";
    const CONFIGMAPS: &str = "/api/v1/namespaces/ambit-system/configmaps";

    /// Secret data as the API server sends it (base64, by ByteString).
    fn b64(text: &str) -> serde_json::Value {
        serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap_or_default()
    }

    /// Two replicas start together: ours loses the race to create the CA
    /// Secret (409), so it must use the winner's root, not its own.
    #[tokio::test]
    async fn losing_the_race_to_create_the_root_uses_the_winners() {
        let winner = CertificateAuthority::generate("cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ambit-ca"}, "data": {
            "root-cert.pem": b64(winner.root_pem()), "root-key.pem": b64(winner.key_pem()),
        }});
        let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ambit-ca-root"}});
        let (client, verifier) = scripted_client(vec![
            Exchange {
                method: Method::GET,
                path: SECRET,
                status: StatusCode::NOT_FOUND,
                body: status(404, "NotFound"),
            },
            Exchange {
                method: Method::POST,
                path: SECRETS,
                status: StatusCode::CONFLICT,
                body: status(409, "AlreadyExists"),
            },
            Exchange { method: Method::GET, path: SECRET, status: StatusCode::OK, body: secret },
            Exchange {
                method: Method::GET,
                path: CONFIGMAP,
                status: StatusCode::NOT_FOUND,
                body: status(404, "NotFound"),
            },
            Exchange { method: Method::POST, path: CONFIGMAPS, status: StatusCode::CREATED, body: configmap },
        ]);
        let ca =
            super::load_or_create(&client, "ambit-system", "cluster.local").await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(ca.root_pem(), winner.root_pem(), "the winner's root, not a second one");
        let sent = verifier.await.unwrap_or_default();
        assert_eq!(sent[4]["data"]["root-cert.pem"], winner.root_pem(), "agents are given that same root");
    }
}
