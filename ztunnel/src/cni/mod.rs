//! Closing the window between a pod's network appearing and its capture:
//! a chained CNI plugin (`ambit-cni`) asks the agent, before the runtime
//! starts the pod's containers, to capture the pod at once ([`server`]).
//! The agent installs the plugin on the node ([`install`]) and keeps a file
//! of enrolled namespaces for the plugin to fall back on while the agent is
//! down: a pod of an enrolled namespace then does not start at all.
//!
//! This is how Istio's CNI node agent closes the same window; the agent
//! decides enrollment from its config (the pod's own labels when the
//! controller has sent the pod, else its namespace's).

pub mod install;
pub mod protocol;
pub mod server;
