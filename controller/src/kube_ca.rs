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
async fn publish_root(client: &kube::Client, namespace: &str, root_pem: &str) -> anyhow::Result<()> {
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let wanted = BTreeMap::from([(CERT_KEY.to_owned(), root_pem.to_owned())]);
    match configmaps.get_opt(ROOT_CONFIGMAP).await.context("read the root ConfigMap")? {
        Some(existing) if existing.data.as_ref() == Some(&wanted) => Ok(()),
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
