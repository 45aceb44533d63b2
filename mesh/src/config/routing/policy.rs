//! What a DestinationRule says about a host: subsets, load balancing,
//! connection pool limits and outlier detection, per port where it says so.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::Labels;

/// What a DestinationRule says about one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicy {
    pub origin: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_empty")]
    pub traffic_policy: TrafficPolicy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    /// Endpoints whose labels include all of these.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Overrides the host's policy, field by field.
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_empty")]
    pub traffic_policy: TrafficPolicy,
}

/// Istio's loadBalancer, connectionPool and outlierDetection, with
/// Istio's defaults applied by the waypoint where a field is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Istio's `portLevelSettings`: for requests to one service port, a
    /// field set here wins over the same field above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level: Vec<PortTrafficPolicy>,
}

/// The settings for one service port (its own `port_level` is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    pub port: u16,
    pub policy: TrafficPolicy,
}

/// Istio's `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// Istio's default: the less loaded of two endpoints drawn at random.
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
}

impl TrafficPolicy {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// A field's value for requests to `port`, where the most specific
    /// setting wins: this policy's port-level, this policy's, then the
    /// same two of `parent` (a subset's policy has the host's as parent).
    pub fn resolve<'a, T>(
        &'a self,
        parent: Option<&'a Self>,
        port: u16,
        field: impl Fn(&'a Self) -> Option<&'a T>,
    ) -> Option<&'a T> {
        let levels = [Some(self), parent].into_iter().flatten();
        levels
            .flat_map(|policy| {
                let at_port = policy.port_level.iter().find(|p| p.port == port).map(|p| &p.policy);
                [at_port, Some(policy)]
            })
            .flatten()
            .find_map(field)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_load_balancer_wins() {
        let at = |port, lb| PortTrafficPolicy {
            port,
            policy: TrafficPolicy { load_balancer: Some(lb), ..Default::default() },
        };
        let host = TrafficPolicy {
            load_balancer: Some(LoadBalancer::Random),
            port_level: vec![at(9080, LoadBalancer::RoundRobin)],
            ..Default::default()
        };
        let lb =
            |policy: &TrafficPolicy, parent, port| policy.resolve(parent, port, |p| p.load_balancer.as_ref()).copied();
        assert_eq!(lb(&host, None, 9080), Some(LoadBalancer::RoundRobin));
        assert_eq!(lb(&host, None, 80), Some(LoadBalancer::Random));
        let subset = TrafficPolicy { port_level: vec![at(80, LoadBalancer::LeastRequest)], ..Default::default() };
        assert_eq!(lb(&subset, Some(&host), 80), Some(LoadBalancer::LeastRequest));
        assert_eq!(lb(&subset, Some(&host), 9080), Some(LoadBalancer::RoundRobin));
        assert_eq!(lb(&TrafficPolicy::default(), None, 80), None);
    }
}
