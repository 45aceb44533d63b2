//! L4 authorization with Istio's semantics, free of IO. Policies are
//! compiled once per config ([`Authorizer::new`]) and evaluated per
//! connection at the destination ([`Authorizer::authorize`]):
//!
//! 1. any matching DENY policy → deny;
//! 2. no ALLOW policy for the workload → allow;
//! 3. any matching ALLOW policy → allow;
//! 4. otherwise deny.
//!
//! L7 attributes cannot be evaluated at L4. As in Istio, a rule of an ALLOW
//! policy that uses them never matches, and in a DENY policy they are
//! ignored, so the DENY matches more. Either way the result fails closed.
//! CUSTOM policies (external authorizers) are unsupported and deny all
//! traffic in their scope; AUDIT policies have no effect on decisions.
//! Policies with `targetRef(s)` are for waypoints: ztunnel skips them, and
//! a waypoint evaluates them with the request's attributes too
//! ([`Authorizer::authorize_at_waypoint`]), in the same order.
//!
//! Policies annotated `istio.io/dry-run: "true"` never decide. They are
//! evaluated beside the others ([`Authorizer::dry_run`]), as Istio's shadow
//! engines evaluate them: the dry-run DENY policies deny if any matches; the
//! dry-run ALLOW policies, if there are any, deny unless one matches. The
//! caller logs and counts what they would have done.

mod matcher;
mod peer_authentication;

use std::fmt;
use std::net::IpAddr;

use matcher::{CompiledRule, compile_rule};

use crate::config::policy::{Action, AuthorizationPolicy, PeerAuthentication, WorkloadSelector};
use crate::config::{Labels, Workload};
use crate::identity::Identity;

pub use peer_authentication::PeerAuthenticator;

/// The default Istio root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// What is known about a connection when deciding on it.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo<'a> {
    /// `None` for plaintext (no verified peer).
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// The port on the destination workload.
    pub dst_port: u16,
}

/// What a waypoint knows about one HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The `:authority` (or `host` header).
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// What a waypoint policy's `targetRefs` may name.
#[derive(Clone, Copy, Debug)]
pub struct WaypointTargets<'a> {
    /// The waypoint Gateway: (namespace, name).
    pub gateway: (&'a str, &'a str),
    /// The Service the request is for, if any: (namespace, name).
    pub service: Option<(&'a str, &'a str)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Deny(reason) => write!(f, "denied: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {message}")]
pub struct PolicyError {
    pub policy: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
struct CompiledPolicy {
    key: String,
    namespace: String,
    selector: Option<WorkloadSelector>,
    effect: Effect,
    rules: Vec<CompiledRule>,
}

/// Compiled authorization policies and peer authentication for one config.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    root_namespace: String,
    policies: Vec<CompiledPolicy>,
    /// Evaluated, never enforced.
    dry_run: Vec<CompiledPolicy>,
    /// Bound by `targetRef(s)`, for waypoints, with their targets.
    waypoint: Vec<(Vec<crate::config::policy::PolicyTargetReference>, CompiledPolicy)>,
    peer: PeerAuthenticator,
}

impl Authorizer {
    pub fn new(
        policies: &[AuthorizationPolicy],
        peer_authentications: &[PeerAuthentication],
        root_namespace: &str,
    ) -> Result<Self, PolicyError> {
        let (mut compiled, mut dry_run, mut waypoint) = (Vec::new(), Vec::new(), Vec::new());
        for policy in policies {
            if let Some(bound) = compile_waypoint_policy(policy)? {
                waypoint.push(bound);
                continue;
            }
            if let Some(compiled_policy) = compile_policy(policy)? {
                if policy.dry_run() { &mut dry_run } else { &mut compiled }.push(compiled_policy);
            }
        }
        let peer = PeerAuthenticator::new(peer_authentications, root_namespace)?;
        Ok(Self { root_namespace: root_namespace.to_owned(), policies: compiled, dry_run, waypoint, peer })
    }

    fn applies(&self, policy: &CompiledPolicy, namespace: &str, labels: &Labels) -> bool {
        (policy.namespace == self.root_namespace || policy.namespace == namespace)
            && policy.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// Decides on a connection to `destination`.
    pub fn authorize(&self, destination: &Workload, connection: &ConnectionInfo<'_>) -> Decision {
        let applicable =
            || self.policies.iter().filter(|p| self.applies(p, &destination.namespace, &destination.labels));
        let matches = |p: &CompiledPolicy| p.rules.iter().any(|r| r.matches(connection));
        if let Some(deny) = applicable().find(|p| p.effect == Effect::Deny && matches(p)) {
            return Decision::Deny(format!("policy {} denies it", deny.key));
        }
        let mut allows = applicable().filter(|p| p.effect == Effect::Allow).peekable();
        if allows.peek().is_none() {
            return Decision::Allow;
        }
        if allows.any(matches) {
            return Decision::Allow;
        }
        Decision::Deny("no ALLOW policy matches it".into())
    }

    /// What the dry-run policies for `destination` would decide, if any
    /// applies; it is never enforced (see the module's doc).
    pub fn dry_run(&self, destination: &Workload, connection: &ConnectionInfo<'_>) -> Option<Decision> {
        let applicable: Vec<&CompiledPolicy> =
            self.dry_run.iter().filter(|p| self.applies(p, &destination.namespace, &destination.labels)).collect();
        if applicable.is_empty() {
            return None;
        }
        let matches = |p: &CompiledPolicy| p.rules.iter().any(|r| r.matches(connection));
        if let Some(deny) = applicable.iter().find(|p| p.effect == Effect::Deny && matches(p)) {
            return Some(Decision::Deny(format!("dry-run policy {} would deny it", deny.key)));
        }
        let mut allows = applicable.iter().filter(|p| p.effect == Effect::Allow).peekable();
        if allows.peek().is_some() && !allows.any(|p| matches(p)) {
            return Some(Decision::Deny("no dry-run ALLOW policy would match it".into()));
        }
        Some(Decision::Allow)
    }

    /// Decides on a request (or, with `request` None, an opaque connection)
    /// at a waypoint, by the policies bound to the waypoint's Gateway or to
    /// the Service the request is for: CUSTOM (unsupported) and DENY
    /// first, then ALLOW if there is any; AUDIT never decides.
    pub fn authorize_at_waypoint(
        &self,
        targets: WaypointTargets<'_>,
        connection: &ConnectionInfo<'_>,
        request: Option<&RequestInfo<'_>>,
    ) -> Decision {
        let bound = |refs: &[crate::config::policy::PolicyTargetReference], namespace: &str| {
            refs.iter().any(|r| {
                let ns = r.namespace.as_deref().unwrap_or(namespace);
                (r.kind == "Gateway" && (ns, r.name.as_str()) == targets.gateway)
                    || (r.kind == "Service" && Some((ns, r.name.as_str())) == targets.service)
            })
        };
        let applicable = || self.waypoint.iter().filter(|(refs, p)| bound(refs, &p.namespace)).map(|(_, p)| p);
        let matches = |p: &CompiledPolicy| {
            let allow = p.effect == Effect::Allow;
            p.rules.iter().any(|r| r.matches_request(connection, request, allow))
        };
        if let Some(deny) = applicable().find(|p| p.effect == Effect::Deny && matches(p)) {
            return Decision::Deny(format!("policy {} denies it", deny.key));
        }
        let mut allows = applicable().filter(|p| p.effect == Effect::Allow).peekable();
        if allows.peek().is_none() || allows.any(matches) {
            return Decision::Allow;
        }
        Decision::Deny("no ALLOW policy matches it".into())
    }

    /// Whether `destination` accepts plaintext (non-mTLS) connections on `port`.
    pub fn plaintext_allowed(&self, destination: &Workload, port: u16) -> bool {
        self.peer.plaintext_allowed(destination, port)
    }
}

/// A policy bound by `targetRef(s)` (to a waypoint's Gateway or a Service
/// behind one), compiled with L7 attributes; `None` for any other policy.
/// Dry-run ones are not enforced at the waypoint either.
#[allow(clippy::type_complexity, reason = "a pair of the targets and the policy")]
fn compile_waypoint_policy(
    policy: &AuthorizationPolicy,
) -> Result<Option<(Vec<crate::config::policy::PolicyTargetReference>, CompiledPolicy)>, PolicyError> {
    let spec = &policy.spec;
    let refs: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).cloned().collect();
    if refs.is_empty() {
        return Ok(None);
    }
    let key = policy.key();
    let error = |message: String| PolicyError { policy: format!("AuthorizationPolicy {key}"), message };
    policy.check_kind("AuthorizationPolicy").map_err(error)?;
    let (effect, rules) = match spec.action {
        Action::Audit => return Ok(None),
        Action::Custom => (Effect::Deny, vec![CompiledRule::match_all()]),
        Action::Allow | Action::Deny => {
            let allow = spec.action == Action::Allow;
            let mut rules = Vec::new();
            for rule in &spec.rules {
                rules.extend(matcher::compile_waypoint_rule(rule, allow, &policy.metadata.namespace).map_err(error)?);
            }
            (if allow { Effect::Allow } else { Effect::Deny }, rules)
        }
    };
    if policy.dry_run() {
        return Ok(None);
    }
    let compiled = CompiledPolicy { key, namespace: policy.metadata.namespace.clone(), selector: None, effect, rules };
    Ok(Some((refs, compiled)))
}

fn compile_policy(policy: &AuthorizationPolicy) -> Result<Option<CompiledPolicy>, PolicyError> {
    let key = policy.key();
    let error = |message: String| PolicyError { policy: format!("AuthorizationPolicy {key}"), message };
    policy.check_kind("AuthorizationPolicy").map_err(error)?;
    let spec = &policy.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return Ok(None);
    }
    let (effect, rules) = match spec.action {
        Action::Audit => return Ok(None),
        // Unsupported here: deny everything in scope rather than allow it.
        Action::Custom => (Effect::Deny, vec![CompiledRule::match_all()]),
        Action::Allow | Action::Deny => {
            let effect = if spec.action == Action::Allow { Effect::Allow } else { Effect::Deny };
            let mut rules = Vec::new();
            for rule in &spec.rules {
                if let Some(compiled) =
                    compile_rule(rule, effect == Effect::Allow, &policy.metadata.namespace).map_err(error)?
                {
                    rules.push(compiled);
                }
            }
            (effect, rules)
        }
    };
    Ok(Some(CompiledPolicy {
        key,
        namespace: policy.metadata.namespace.clone(),
        selector: spec.selector.clone(),
        effect,
        rules,
    }))
}

#[cfg(test)]
mod tests;
