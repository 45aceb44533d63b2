//! What the CNI plugin and the agent say to each other over the agent's
//! unix socket: one JSON request line, one JSON reply line, per connection.
//! Both binaries are built from this crate, so they agree by construction.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The agent's socket, under its state directory.
pub const SOCKET: &str = "cni.sock";
/// The namespaces enrolled as of the agent's last config, under its state
/// directory: what the plugin falls back on when the agent is down.
pub const ENROLLED_NAMESPACES: &str = "enrolled-namespaces.json";
/// Longest request or reply line either side reads.
pub const MAX_LINE: usize = 64 * 1024;

/// A pod whose network the container runtime has just set up (ADD) or is
/// tearing down (DEL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNetwork {
    pub namespace: String,
    pub name: String,
    /// The pod's addresses, from the previous plugin's result.
    pub ips: Vec<IpAddr>,
    /// The node-side interface, when the previous plugin reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "command", deny_unknown_fields)]
pub enum Request {
    /// Capture the pod now (if it is enrolled) and answer once capture is in
    /// place: the runtime starts the pod's containers only after that.
    Add(PodNetwork),
    /// The pod is going away.
    Del(PodNetwork),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result", deny_unknown_fields)]
pub enum Reply {
    /// Done: the pod's traffic is captured (`enrolled`) or left alone.
    Done { enrolled: bool },
    /// The pod must not start yet (for example, capture could not be put
    /// in place); the runtime retries.
    Refused { reason: String },
}

/// The contents of [`ENROLLED_NAMESPACES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolledNamespaces {
    pub namespaces: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_tagged_json() {
        let pod = PodNetwork {
            namespace: "shop".into(),
            name: "web-1".into(),
            ips: vec!["10.1.0.7".parse().unwrap()],
            host_interface: Some("veth12ab".into()),
        };
        let line = serde_json::to_string(&Request::Add(pod.clone())).unwrap();
        assert!(line.starts_with(r#"{"command":"add","namespace":"shop""#), "{line}");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), Request::Add(pod));
        let reply = serde_json::to_string(&Reply::Done { enrolled: true }).unwrap();
        assert_eq!(reply, r#"{"result":"done","enrolled":true}"#);
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm","namespace":"x"}"#).is_err());
    }
}
