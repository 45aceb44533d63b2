//! Who is in the mesh. Same rule as Istio's ambient mode
//! (`PodRedirectionEnabled` in istio-cni): the namespace or the pod carries
//! `istio.io/dataplane-mode=ambient`, and the pod does not opt out with
//! `istio.io/dataplane-mode=none`.

use super::{Labels, Namespace, Workload};

pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

/// Whether `workload`'s traffic is captured, given its namespace (if known).
pub fn enrolled(workload: &Workload, namespace: Option<&Namespace>) -> bool {
    let pod_mode = mode(&workload.labels);
    if pod_mode == Some(DATAPLANE_MODE_NONE) {
        return false;
    }
    pod_mode == Some(DATAPLANE_MODE_AMBIENT)
        || namespace.is_some_and(|ns| mode(&ns.labels) == Some(DATAPLANE_MODE_AMBIENT))
}

fn mode(labels: &Labels) -> Option<&str> {
    labels.get(DATAPLANE_MODE_LABEL).map(String::as_str)
}
