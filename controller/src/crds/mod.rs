//! The custom resources the controller reads, as Rust types: the source of
//! the CRDs in `manifests/crds/` (`cargo xtask codegen` writes them from
//! here, `cargo xtask codegen --check` fails when they drift). The security
//! specs are the mesh's own policy types, and the networking ones
//! ([`networking`]) name exactly the fields the mesh implements, so what the
//! API server accepts is what the mesh understands; the API server rejects
//! structurally bad objects at apply time.
//!
//! The Gateway API kinds come from the `gateway-api` crate. Most clusters
//! install their CRDs from upstream; `manifests/gateway-api/` holds ones
//! generated from the same types for clusters that have none.

pub mod destination_rule;
pub mod networking;

use kube::CustomResource;
use kube::core::CustomResourceExt as _;
use mesh::config::policy;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `security.istio.io/v1` AuthorizationPolicy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io"
)]
pub struct AuthorizationPolicyBody {
    #[serde(flatten)]
    pub spec: policy::AuthorizationPolicySpec,
}

/// `security.istio.io/v1` PeerAuthentication.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "PolicyStatus",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io"
)]
pub struct PeerAuthenticationBody {
    #[serde(flatten)]
    pub spec: policy::PeerAuthenticationSpec,
}

/// What the controller reports on a policy: Kubernetes-style conditions;
/// `Accepted` says whether the mesh enforces this version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The versions each API group serves besides `v1`, with `v1`'s schema, as
/// Istio's and the Gateway API's own CRDs serve them: objects written for
/// any of them (Istio's task pages still say `v1beta1` and `v1alpha3`) are
/// accepted, stored as `v1`, and read back as any.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
pub const GATEWAY_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// The generated CRD files: path under `manifests/`, and contents.
pub fn files() -> Result<Vec<(&'static str, String)>, yaml_serde::Error> {
    use gateway_api::apis::experimental::httproutes::HttpRoute;
    use gateway_api::apis::standard::gateways::Gateway;
    let istio = |crd: Crd, versions: &[&str]| serving(conditions_by_type(crd), versions);
    Ok(vec![
        (
            "crds/istio-security.yaml",
            render(&[
                istio(AuthorizationPolicy::crd(), SECURITY_VERSIONS),
                istio(PeerAuthentication::crd(), SECURITY_VERSIONS),
            ])?,
        ),
        (
            "crds/istio-networking.yaml",
            render(&[
                istio(networking::VirtualService::crd(), NETWORKING_VERSIONS),
                istio(networking::DestinationRule::crd(), NETWORKING_VERSIONS),
            ])?,
        ),
        (
            "gateway-api/crds.yaml",
            render(&[
                serving(approved(Gateway::crd()), GATEWAY_VERSIONS),
                serving(approved(HttpRoute::crd()), GATEWAY_VERSIONS),
            ])?,
        ),
    ])
}

/// `crd` serving `versions` (the first is its own, and the stored one),
/// all with the same schema, so no conversion is needed.
fn serving(mut crd: Crd, versions: &[&str]) -> Crd {
    let Some(stored) = crd.spec.versions.first().cloned() else { return crd };
    crd.spec.versions = versions
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut version = stored.clone();
            version.name = (*name).to_owned();
            version.storage = i == 0;
            version.served = true;
            version
        })
        .collect();
    crd
}

/// Marks `status.conditions` as a list keyed by `type`, so server-side apply
/// merges conditions by type: the controller owns its `Accepted` condition,
/// and other controllers' conditions on the same object survive its writes.
fn conditions_by_type(mut crd: Crd) -> Crd {
    for version in &mut crd.spec.versions {
        let conditions = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"))
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("conditions"));
        if let Some(conditions) = conditions {
            conditions.x_kubernetes_list_type = Some("map".into());
            conditions.x_kubernetes_list_map_keys = Some(vec!["type".into()]);
        }
    }
    crd
}

/// The API server accepts CRDs in `*.k8s.io` groups only with the
/// Kubernetes API review's approval; this names the Gateway API's.
fn approved(mut crd: Crd) -> Crd {
    const APPROVAL: &str = "https://github.com/kubernetes-sigs/gateway-api/pull/3328";
    let annotations = crd.metadata.annotations.get_or_insert_default();
    annotations.insert("api-approved.kubernetes.io".into(), APPROVAL.into());
    crd
}

fn render(crds: &[Crd]) -> Result<String, yaml_serde::Error> {
    let mut text = String::from("# Generated by `cargo xtask codegen` from controller/src/crds/. Do not edit.\n");
    for crd in crds {
        let mut value = serde_json::to_value(crd).map_err(<yaml_serde::Error as serde::ser::Error>::custom)?;
        drop_null_enum_values(&mut value);
        text.push_str("---\n");
        text.push_str(&yaml_serde::to_string(&value)?);
    }
    Ok(text)
}

/// schemars lists `null` among an optional enum's values (beside
/// `nullable: true`); kubectl's validation of CRDs refuses a null there, and
/// `nullable` already says it, so it is dropped.
fn drop_null_enum_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::Array(values)) = fields.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            fields.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_the_mesh_policy_spec_on_the_wire() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n\
                    spec: {action: DENY, rules: [{from: [{source: {namespaces: [a]}}]}]}\n";
        let crd: AuthorizationPolicy = yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(crd.spec.spec.action, policy::Action::Deny);
        assert_eq!(crd.spec.spec.rules[0].from[0].source.namespaces, ["a"]);
    }

    #[test]
    fn crds_are_structural_enough_to_name_their_fields() {
        let text: String = files().unwrap_or_default().into_iter().map(|(_, text)| text).collect();
        let needles = [
            "name: authorizationpolicies.security.istio.io",
            "name: v1beta1",
            "name: v1alpha3",
            "x-kubernetes-list-type: map",
            "ipBlocks:",
            "portLevelMtls:",
            "subresources:",
            "name: virtualservices.networking.istio.io",
            "consecutive5xxErrors:",
            "x-kubernetes-preserve-unknown-fields: true",
            "name: httproutes.gateway.networking.k8s.io",
        ];
        for needle in needles {
            assert!(text.contains(needle), "generated CRDs lack {needle}");
        }
    }
}
