//! The Kubernetes objects the controller reads, whether from the API server
//! or from a directory of YAML: their kinds, keys and parsing.

use std::fmt;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};

use crate::crds::networking::{DestinationRule, VirtualService};

/// The kinds that feed the mesh config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    AuthorizationPolicy,
    PeerAuthentication,
    VirtualService,
    DestinationRule,
    HttpRoute,
    Gateway,
}

impl Kind {
    /// Every kind, in the order they are watched.
    pub const ALL: [Self; 9] = [
        Self::Namespace,
        Self::Pod,
        Self::Service,
        Self::AuthorizationPolicy,
        Self::PeerAuthentication,
        Self::VirtualService,
        Self::DestinationRule,
        Self::HttpRoute,
        Self::Gateway,
    ];
}

/// A kind and a namespaced name; namespaces have an empty `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    HttpRoute(Box<HttpRoute>),
    Gateway(Box<Gateway>),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Self::Namespace(o) => (Kind::Namespace, None, o.metadata.name.clone()),
            Self::Pod(o) => (Kind::Pod, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Self::Service(o) => (Kind::Service, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Self::AuthorizationPolicy(o) => {
                (Kind::AuthorizationPolicy, Some(o.metadata.namespace.clone()), Some(o.metadata.name.clone()))
            }
            Self::PeerAuthentication(o) => {
                (Kind::PeerAuthentication, Some(o.metadata.namespace.clone()), Some(o.metadata.name.clone()))
            }
            Self::VirtualService(o) => (Kind::VirtualService, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Self::DestinationRule(o) => (Kind::DestinationRule, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Self::HttpRoute(o) => (Kind::HttpRoute, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Self::Gateway(o) => (Kind::Gateway, o.metadata.namespace.clone(), o.metadata.name.clone()),
        };
        ObjectKey { kind, namespace: namespace.unwrap_or_default(), name: name.unwrap_or_default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {index}: {cause}")]
    Yaml { index: usize, cause: String },
    #[error("document {index} ({kind}): {cause}")]
    Object { index: usize, kind: String, cause: String },
}

/// What a YAML text held: objects of the kinds we read, and the kinds we
/// skipped (other resources may share the directory).
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub skipped: Vec<String>,
}

/// Parses multi-document YAML, as `kubectl apply -f` takes it. Objects
/// without a namespace land in `default`, as kubectl would put them.
pub fn parse_documents(text: &str) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed::default();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value =
            yaml_serde::Value::deserialize(document).map_err(|e| ParseError::Yaml { index, cause: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(yaml_serde::Value::as_str).unwrap_or_default().to_owned();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let object_error = |cause: String| ParseError::Object { index, kind: kind.clone(), cause };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        if let Some(served) = served_versions(group).filter(|served| !served.contains(&version)) {
            return Err(object_error(format!("{api_version} is not served; {group} serves {}", served.join(", "))));
        }
        if let Some(pruned) = istio_fields_pruned(group, &kind, &value) {
            return Err(object_error(pruned));
        }
        let object = match (group, kind.as_str()) {
            ("", "Namespace") => Object::Namespace(Box::new(from_value(value.clone()).map_err(object_error)?)),
            ("", "Pod") => Object::Pod(Box::new(from_value(value.clone()).map_err(object_error)?)),
            ("", "Service") => Object::Service(Box::new(from_value(value.clone()).map_err(object_error)?)),
            ("security.istio.io", "AuthorizationPolicy") => {
                Object::AuthorizationPolicy(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            ("security.istio.io", "PeerAuthentication") => {
                Object::PeerAuthentication(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            ("networking.istio.io", "VirtualService") => {
                Object::VirtualService(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            ("networking.istio.io", "DestinationRule") => {
                Object::DestinationRule(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                Object::HttpRoute(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            ("gateway.networking.k8s.io", "Gateway") => {
                Object::Gateway(Box::new(from_value(value.clone()).map_err(object_error)?))
            }
            _ => {
                parsed.skipped.push(format!("{api_version} {kind}"));
                continue;
            }
        };
        parsed.objects.push(default_namespace(object));
    }
    Ok(parsed)
}

use serde::Deserialize as _;

/// The versions of a group whose kinds are read, as the CRDs serve them.
fn served_versions(group: &str) -> Option<&'static [&'static str]> {
    match group {
        "security.istio.io" => Some(crate::crds::SECURITY_VERSIONS),
        "networking.istio.io" => Some(crate::crds::NETWORKING_VERSIONS),
        "gateway.networking.k8s.io" => Some(crate::crds::GATEWAY_VERSIONS),
        _ => None,
    }
}

/// A field of an Istio object that its type does not know, and so would be
/// dropped: the API server prunes such a field (modern `kubectl` warns of
/// it); this mode refuses the document instead, naming the field, so that
/// nothing is silently pruned.
fn istio_fields_pruned(group: &str, kind: &str, value: &yaml_serde::Value) -> Option<String> {
    let spec = value.get("spec")?;
    let typed: Result<serde_json::Value, String> = match (group, kind) {
        ("networking.istio.io", "VirtualService") => round_trip::<crate::crds::networking::VirtualServiceSpec>(spec),
        ("networking.istio.io", "DestinationRule") => round_trip::<crate::crds::networking::DestinationRuleSpec>(spec),
        _ => return None,
    };
    let original = serde_json::to_value(spec).ok()?;
    let missing = typed.ok().and_then(|typed| first_missing(&original, &typed, "spec"))?;
    Some(format!("unknown field `{missing}`: not in Istio's API, or not one ambit reads; it would be ignored"))
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    spec: &yaml_serde::Value,
) -> Result<serde_json::Value, String> {
    let typed: T = yaml_serde::from_value(spec.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The first field (a dotted path) set in `original` that `typed` lacks.
/// Empty values do not count: types leave empty lists and maps out.
fn first_missing(original: &serde_json::Value, typed: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (original, typed) {
        (Value::Object(fields), Value::Object(kept)) => fields.iter().find_map(|(name, field)| {
            let here = format!("{path}.{name}");
            match kept.get(name) {
                Some(kept) => first_missing(field, kept, &here),
                None if is_empty(field) => None,
                None => Some(here),
            }
        }),
        (Value::Array(items), Value::Array(kept)) => items
            .iter()
            .zip(kept)
            .enumerate()
            .find_map(|(i, (item, kept))| first_missing(item, kept, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

fn from_value<T: serde::de::DeserializeOwned>(value: yaml_serde::Value) -> Result<T, String> {
    yaml_serde::from_value(value).map_err(|e| e.to_string())
}

fn default_namespace(mut object: Object) -> Object {
    const DEFAULT: &str = "default";
    match &mut object {
        Object::Namespace(_) => {}
        Object::Pod(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        Object::Service(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        Object::AuthorizationPolicy(o) if o.metadata.namespace.is_empty() => {
            DEFAULT.clone_into(&mut o.metadata.namespace)
        }
        Object::PeerAuthentication(o) if o.metadata.namespace.is_empty() => {
            DEFAULT.clone_into(&mut o.metadata.namespace)
        }
        Object::VirtualService(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        Object::DestinationRule(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        Object::HttpRoute(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        Object::Gateway(o) => {
            o.metadata.namespace.get_or_insert_with(|| DEFAULT.into());
        }
        _ => {}
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kinds_it_knows_and_skips_the_rest() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
                    apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\n\
                    spec: {action: DENY}\n---\n\
                    apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [a]}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: x}\nspec: {}\n";
        let parsed = parse_documents(text).unwrap_or_default();
        let keys: Vec<String> = parsed.objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(
            keys,
            ["Namespace mesh", "AuthorizationPolicy default/deny", "VirtualService default/vs", "HttpRoute x/r"]
        );
        assert_eq!(parsed.skipped, ["v1 ConfigMap"]);
    }

    #[test]
    fn istio_versions_are_served_as_the_api_server_serves_them() {
        let doc = |version: &str| {
            format!(
                "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: d}}\nspec: {{host: a}}\n"
            )
        };
        for served in ["v1", "v1beta1", "v1alpha3"] {
            assert_eq!(parse_documents(&doc(served)).map(|p| p.objects.len()).ok(), Some(1), "{served}");
        }
        let error = parse_documents(&doc("v2")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("networking.istio.io/v2 is not served"), "{error}");
    }

    #[test]
    fn an_unknown_istio_field_is_refused_by_name_not_dropped() {
        let text = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: d}\n\
                    spec:\n  host: a\n  trafficPolicy: {outlierDetection: {consecutiveErrrors: 5}}\n  exportTo: []\n";
        let error = parse_documents(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("`spec.trafficPolicy.outlierDetection.consecutiveErrrors`"), "{error}");
    }

    #[test]
    fn names_the_bad_document() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nspec: 7\n";
        let error = parse_documents(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("document 1 (Pod)"), "{error}");
        let error = parse_documents("a: [").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("document 0"), "{error}");
    }
}
