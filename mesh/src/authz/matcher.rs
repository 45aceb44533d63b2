//! Rules compiled for evaluation. A rule is a list of groups that must all
//! match; a group matches if any of its matchers does; a matcher matches if
//! every field it sets does (a positive list: any value; a negative list:
//! none). That is Istio's structure: `to` entries form one group, `from`
//! entries another, and each `when` condition its own.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{ConnectionInfo, RequestInfo};
use crate::config::policy::{Condition, Operation, Rule, Source};

/// Istio string matching: exact, `prefix*`, `*suffix`, or `*` (any
/// non-empty value).
#[derive(Clone, Debug)]
enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    fn new(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Present
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(pattern.to_owned())
        }
    }

    fn matches_ignoring_case(&self, value: &str) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            Self::Exact(e) => value.eq_ignore_ascii_case(e),
            Self::Prefix(p) => lower(value).starts_with(&lower(p)),
            Self::Suffix(s) => lower(value).ends_with(&lower(s)),
            Self::Present => !value.is_empty(),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Present => !value.is_empty(),
        }
    }
}

/// A positive and a negative list of one attribute.
#[derive(Clone, Debug)]
struct Field<T> {
    any_of: Vec<T>,
    none_of: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self { any_of: Vec::new(), none_of: Vec::new() }
    }
}

impl<T> Field<T> {
    fn check(&self, hit: impl Fn(&T) -> bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(&hit)) && !self.none_of.iter().any(hit)
    }
}

#[derive(Clone, Debug, Default)]
struct Matcher {
    principals: Field<StringMatch>,
    namespaces: Field<StringMatch>,
    /// (namespace, service account)
    service_accounts: Field<(String, String)>,
    source_ips: Field<IpNet>,
    destination_ips: Field<IpNet>,
    ports: Field<u16>,
    /// L7, compiled only for waypoints.
    methods: Field<StringMatch>,
    paths: Field<StringMatch>,
    hosts: Field<StringMatch>,
    /// `request.headers[name]` conditions, name lower case.
    headers: Vec<(String, Field<StringMatch>)>,
}

impl Matcher {
    fn has_l7(&self) -> bool {
        let used = |f: &Field<StringMatch>| !f.any_of.is_empty() || !f.none_of.is_empty();
        used(&self.methods) || used(&self.paths) || used(&self.hosts) || !self.headers.is_empty()
    }

    /// Without a request (opaque TCP at a waypoint), L7 fields cannot be
    /// checked: they hold in a DENY rule and fail in an ALLOW rule, so the
    /// result fails closed either way.
    fn matches_request(&self, r: Option<&RequestInfo<'_>>, allow: bool) -> bool {
        let Some(r) = r else { return !allow || !self.has_l7() };
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        self.methods.check(|m| m.matches(r.method))
            && self.paths.check(|m| m.matches(r.path))
            && self.hosts.check(|m| m.matches_ignoring_case(r.host))
            && self.headers.iter().all(|(name, field)| field.check(|m| m.matches(header(name))))
    }

    fn matches(&self, c: &ConnectionInfo<'_>) -> bool {
        // A plaintext peer has no principal: "" for matching, so `*` and
        // every name fail, and every `not` list passes.
        let principal = c.src_identity.map(|i| i.principal()).unwrap_or_default();
        let namespace = c.src_identity.map(|i| i.namespace.as_str()).unwrap_or_default();
        self.principals.check(|m| m.matches(&principal))
            && self.namespaces.check(|m| m.matches(namespace))
            && self
                .service_accounts
                .check(|(ns, sa)| c.src_identity.is_some_and(|i| &i.namespace == ns && &i.service_account == sa))
            && self.source_ips.check(|net| net.contains(&c.src_ip))
            && self.destination_ips.check(|net| net.contains(&c.dst_ip))
            && self.ports.check(|p| *p == c.dst_port)
    }
}

#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    groups: Vec<Vec<Matcher>>,
}

impl CompiledRule {
    pub(super) fn match_all() -> Self {
        Self { groups: Vec::new() }
    }

    pub(super) fn matches(&self, c: &ConnectionInfo<'_>) -> bool {
        self.groups.iter().all(|group| group.iter().any(|m| m.matches(c)))
    }

    /// At a waypoint: the connection's and, if there is one, the request's
    /// attributes.
    pub(super) fn matches_request(&self, c: &ConnectionInfo<'_>, r: Option<&RequestInfo<'_>>, allow: bool) -> bool {
        self.groups.iter().all(|group| group.iter().any(|m| m.matches(c) && m.matches_request(r, allow)))
    }
}

/// Compiles a rule of a policy bound to a waypoint: L7 attributes too.
/// `None` for an ALLOW rule that uses attributes the waypoint cannot
/// evaluate (JWT `requestPrincipals`, `remoteIpBlocks`, other `when` keys):
/// it never matches; in a DENY rule they are ignored, so it matches more.
pub(super) fn compile_waypoint_rule(rule: &Rule, allow: bool, namespace: &str) -> Result<Option<CompiledRule>, String> {
    let unsupported = rule.l7_attributes().into_iter().any(|a| {
        !matches!(a.as_str(), "hosts" | "notHosts" | "methods" | "notMethods" | "paths" | "notPaths")
            && !a.starts_with("when request.headers[")
    });
    if allow && unsupported {
        return Ok(None);
    }
    let mut groups = Vec::new();
    if !rule.to.is_empty() {
        groups.push(rule.to.iter().map(|t| l7_operation(&t.operation)).collect::<Result<_, _>>()?);
    }
    if !rule.from.is_empty() {
        groups.push(rule.from.iter().map(|f| source(&f.source, namespace)).collect::<Result<_, _>>()?);
    }
    for condition in &rule.when {
        groups.push(vec![l7_when(condition)?]);
    }
    Ok(Some(CompiledRule { groups }))
}

fn l7_operation(o: &Operation) -> Result<Matcher, String> {
    Ok(Matcher {
        methods: Field { any_of: strings(&o.methods), none_of: strings(&o.not_methods) },
        paths: Field { any_of: strings(&o.paths), none_of: strings(&o.not_paths) },
        hosts: Field { any_of: strings(&o.hosts), none_of: strings(&o.not_hosts) },
        ..operation(o)?
    })
}

fn l7_when(c: &Condition) -> Result<Matcher, String> {
    let header = c.key.strip_prefix("request.headers[").and_then(|rest| rest.strip_suffix(']'));
    match header {
        Some(name) => Ok(Matcher {
            headers: vec![(
                name.to_ascii_lowercase(),
                Field { any_of: strings(&c.values), none_of: strings(&c.not_values) },
            )],
            ..Default::default()
        }),
        None => when(c),
    }
}

/// Compiles a rule of a policy in `namespace` (unqualified service
/// accounts are in it). `None` for an ALLOW rule that uses L7 attributes: it
/// never matches. In a DENY rule the L7 attributes are simply not compiled.
pub(super) fn compile_rule(rule: &Rule, allow: bool, namespace: &str) -> Result<Option<CompiledRule>, String> {
    if allow && !rule.l7_attributes().is_empty() {
        return Ok(None);
    }
    let mut groups = Vec::new();
    if !rule.to.is_empty() {
        groups.push(rule.to.iter().map(|t| operation(&t.operation)).collect::<Result<_, _>>()?);
    }
    if !rule.from.is_empty() {
        groups.push(rule.from.iter().map(|f| source(&f.source, namespace)).collect::<Result<_, _>>()?);
    }
    for condition in &rule.when {
        groups.push(vec![when(condition)?]);
    }
    Ok(Some(CompiledRule { groups }))
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| StringMatch::new(v)).collect()
}

fn ips(values: &[String]) -> Result<Vec<IpNet>, String> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))
        })
        .collect()
}

fn ports(values: &[String]) -> Result<Vec<u16>, String> {
    values
        .iter()
        .map(|v| v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{v:?} is not a port")))
        .collect()
}

fn service_accounts(values: &[String], policy_namespace: &str) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) => (ns.to_owned(), sa.to_owned()),
            None => (policy_namespace.to_owned(), v.clone()),
        })
        .collect()
}

fn operation(o: &Operation) -> Result<Matcher, String> {
    Ok(Matcher { ports: Field { any_of: ports(&o.ports)?, none_of: ports(&o.not_ports)? }, ..Default::default() })
}

fn source(s: &Source, policy_namespace: &str) -> Result<Matcher, String> {
    Ok(Matcher {
        principals: Field { any_of: strings(&s.principals), none_of: strings(&s.not_principals) },
        namespaces: Field { any_of: strings(&s.namespaces), none_of: strings(&s.not_namespaces) },
        service_accounts: Field {
            any_of: service_accounts(&s.service_accounts, policy_namespace),
            none_of: service_accounts(&s.not_service_accounts, policy_namespace),
        },
        source_ips: Field { any_of: ips(&s.ip_blocks)?, none_of: ips(&s.not_ip_blocks)? },
        ..Default::default()
    })
}

fn when(c: &Condition) -> Result<Matcher, String> {
    let mut m = Matcher::default();
    match c.key.as_str() {
        "source.ip" => m.source_ips = Field { any_of: ips(&c.values)?, none_of: ips(&c.not_values)? },
        "source.namespace" => m.namespaces = Field { any_of: strings(&c.values), none_of: strings(&c.not_values) },
        "source.principal" => m.principals = Field { any_of: strings(&c.values), none_of: strings(&c.not_values) },
        "destination.ip" => m.destination_ips = Field { any_of: ips(&c.values)?, none_of: ips(&c.not_values)? },
        "destination.port" => m.ports = Field { any_of: ports(&c.values)?, none_of: ports(&c.not_values)? },
        // An L7 key in a DENY rule: ignored, so the condition always holds.
        _ => {}
    }
    Ok(m)
}
