//! Istio's security policies, in the form users `kubectl apply`:
//! `security.istio.io/v1` AuthorizationPolicy and PeerAuthentication.
//! Field names and defaults follow Istio's API. Evaluation is in
//! [`crate::authz`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Labels;

pub const SECURITY_API_VERSION: &str = "security.istio.io/v1";
/// Older API versions Istio still serves with the same schema.
const SECURITY_API_VERSIONS: [&str; 2] = [SECURITY_API_VERSION, "security.istio.io/v1beta1"];

/// The part of Kubernetes object metadata the mesh uses. Other metadata
/// (uid, resourceVersion, …) is accepted and ignored, so `kubectl get -o
/// yaml` output can be pasted as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// Only the annotations the mesh honours are kept ([`DRY_RUN_ANNOTATION`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Istio's dry-run annotation: an AuthorizationPolicy that carries it with
/// `"true"` is evaluated and its verdict logged and counted, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

impl ObjectMeta {
    /// The annotations of `all` that the mesh honours.
    pub fn honoured_annotations(all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        all.iter().filter(|(k, _)| k.as_str() == DRY_RUN_ANNOTATION).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A Kubernetes object of one of the policy kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    /// Written by the controller; ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

pub type AuthorizationPolicy = Resource<AuthorizationPolicySpec>;
pub type PeerAuthentication = Resource<PeerAuthenticationSpec>;

impl<S> Resource<S> {
    /// Whether the object asks to be evaluated but not enforced.
    pub fn dry_run(&self) -> bool {
        self.metadata.annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    pub(crate) fn check_kind(&self, kind: &'static str) -> Result<(), String> {
        if self.kind != kind {
            return Err(format!("kind is {:?}, expected {kind}", self.kind));
        }
        if !SECURITY_API_VERSIONS.contains(&self.api_version.as_str()) {
            return Err(format!("apiVersion {:?} is not {SECURITY_API_VERSION}", self.api_version));
        }
        if self.metadata.name.is_empty() || self.metadata.namespace.is_empty() {
            return Err("metadata needs a name and a namespace".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A reference to a Gateway or Service; such policies target waypoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// Empty for the core group, as Istio's docs write it (`group: ""`).
    /// Nullable in the CRD schema: `kubectl apply` sends an empty string as
    /// null, which a plain string schema refuses; null reads as empty.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_as_empty")]
    #[schemars(schema_with = "nullable_string")]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

fn nullable_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "nullable": true})
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

macro_rules! string_lists {
    ($(#[$meta:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $(
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub $field: Vec<String>,
            )*
        }
    };
}

string_lists!(
    /// Who the peer is. `principals` are SPIFFE IDs without `spiffe://`.
    Source {
        principals, not_principals, request_principals, not_request_principals, namespaces,
        not_namespaces, service_accounts, not_service_accounts, ip_blocks, not_ip_blocks,
        remote_ip_blocks, not_remote_ip_blocks,
    }
);

string_lists!(
    /// What the peer asks for. Only ports exist at L4.
    Operation { hosts, not_hosts, ports, not_ports, methods, not_methods, paths, not_paths }
);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the enclosing scope.
    #[default]
    Unset,
    /// Plaintext accepted. (In ambient, mesh traffic is mTLS regardless.)
    Disable,
    /// Both mTLS and plaintext accepted.
    Permissive,
    /// Only mTLS accepted.
    Strict,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Per target port; keys are port numbers (strings in YAML, as in Istio).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

/// Condition keys that ztunnel can evaluate (Istio's list); any other key
/// is an L7 attribute.
pub const L4_CONDITION_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

impl Rule {
    /// The L7 attributes this rule uses, by field name. ztunnel cannot
    /// evaluate them; see [`crate::authz`] for how that fails closed.
    pub fn l7_attributes(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut note = |present: bool, name: &str| {
            if present {
                found.push(name.to_owned());
            }
        };
        for RuleFrom { source: s } in &self.from {
            note(!s.request_principals.is_empty(), "requestPrincipals");
            note(!s.not_request_principals.is_empty(), "notRequestPrincipals");
            note(!s.remote_ip_blocks.is_empty(), "remoteIpBlocks");
            note(!s.not_remote_ip_blocks.is_empty(), "notRemoteIpBlocks");
        }
        for RuleTo { operation: o } in &self.to {
            note(!o.hosts.is_empty(), "hosts");
            note(!o.not_hosts.is_empty(), "notHosts");
            note(!o.methods.is_empty(), "methods");
            note(!o.not_methods.is_empty(), "notMethods");
            note(!o.paths.is_empty(), "paths");
            note(!o.not_paths.is_empty(), "notPaths");
        }
        for c in &self.when {
            note(!L4_CONDITION_KEYS.contains(&c.key.as_str()), &format!("when {}", c.key));
        }
        found.sort();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_group_reads_the_same_whether_empty_or_null() {
        for group in ["''", "null", "~"] {
            let yaml = format!("{{group: {group}, kind: Service, name: productpage}}");
            let reference: PolicyTargetReference = yaml_serde::from_str(&yaml).unwrap();
            assert_eq!(reference.group, "", "group: {group}");
        }
    }
}
