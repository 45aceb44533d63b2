//! What the waypoint routes by: the controller's latest valid config,
//! compiled once per version into a [`RouteTable`] (routes and policies by
//! service host, regexes compiled). Requests take the current table and
//! hold it only while they are being routed.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use mesh::config::Snapshot;
use mesh::config::routing::{DestinationPolicy, HttpRoutes, StringMatch, full_match_regex};

/// One config version, indexed for the data path.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub version: u64,
    pub snapshot: Snapshot,
    /// Service index (in the config's services) by hostname.
    services_by_host: HashMap<String, usize>,
    /// Route objects by the service host they route, in config order
    /// (Istio merges them in creation order; ours is the controller's).
    routes_by_host: HashMap<String, Vec<usize>>,
    policy_by_host: HashMap<String, usize>,
    regexes: HashMap<String, regex::Regex>,
}

impl RouteTable {
    pub fn new(version: u64, snapshot: Snapshot) -> Self {
        let config = snapshot.config();
        let services_by_host = config.services.iter().enumerate().map(|(i, s)| (s.hostname(), i)).collect();
        let mut routes_by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, routes) in config.http_routes.iter().enumerate() {
            for host in &routes.hosts {
                routes_by_host.entry(host.clone()).or_default().push(index);
            }
        }
        let policy_by_host = config.destination_policies.iter().enumerate().map(|(i, p)| (p.host.clone(), i)).collect();
        let regexes = compile_regexes(&config.http_routes);
        Self { version, snapshot, services_by_host, routes_by_host, policy_by_host, regexes }
    }

    pub fn service_index(&self, host: &str) -> Option<usize> {
        self.services_by_host.get(host).copied()
    }

    /// The route objects for `host`, in order.
    pub fn routes_for<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a HttpRoutes> + 'a {
        let config = self.snapshot.config();
        self.routes_by_host.get(host).into_iter().flatten().map(move |&i| &config.http_routes[i])
    }

    pub fn policy_for(&self, host: &str) -> Option<&DestinationPolicy> {
        self.policy_by_host.get(host).map(|&i| &self.snapshot.config().destination_policies[i])
    }

    /// Whether `value` matches `pattern`. Regexes were compiled with the
    /// table; the config was validated, so every one is there.
    pub fn matches(&self, pattern: &StringMatch, value: &str) -> bool {
        match pattern {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::PathPrefix(prefix) => path_prefix_matches(prefix, value),
            StringMatch::Regex(pattern) => self.regexes.get(pattern).is_some_and(|re| re.is_match(value)),
        }
    }
}

/// The Gateway API's PathPrefix: whole segments, a trailing `/` ignored.
fn path_prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn compile_regexes(routes: &[HttpRoutes]) -> HashMap<String, regex::Regex> {
    let mut regexes = HashMap::new();
    let patterns = routes
        .iter()
        .flat_map(|r| &r.rules)
        .flat_map(|rule| &rule.matches)
        .flat_map(|m| m.path.iter().chain(&m.method).chain(m.headers.values()).chain(m.query_params.values()));
    for pattern in patterns {
        if let StringMatch::Regex(text) = pattern
            && let Ok(re) = full_match_regex(text)
        {
            regexes.insert(text.clone(), re);
        }
    }
    regexes
}

/// The current table, swapped whole on each config version.
#[derive(Clone, Debug, Default)]
pub struct State {
    current: Arc<RwLock<Arc<RouteTable>>>,
}

impl State {
    pub fn current(&self) -> Arc<RouteTable> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes `snapshot` in as the next version; returns its number.
    pub fn apply(&self, snapshot: Snapshot) -> u64 {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let version = current.version + 1;
        *current = Arc::new(RouteTable::new(version, snapshot));
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_match_whole_segments() {
        assert!(path_prefix_matches("/api", "/api"));
        assert!(path_prefix_matches("/api", "/api/users"));
        assert!(path_prefix_matches("/api/", "/api/users"));
        assert!(!path_prefix_matches("/api", "/apis"));
        assert!(path_prefix_matches("/", "/anything"));
    }
}
