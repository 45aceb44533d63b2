//! The container runtime's part in the test bed: after a pod's veth and
//! address are up (what the primary "ptp" plugin does), it runs the
//! chained `ambit-cni` plugin exactly as a runtime would (environment,
//! network config with the previous result on stdin), and the pod may only
//! start if the plugin succeeds.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The pod whose network was just set up.
#[derive(Debug)]
pub struct PodNetwork<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub netns_path: &'a str,
    /// The node-side end of the pod's veth.
    pub host_interface: &'a str,
    pub ip: Ipv4Addr,
}

/// Runs the plugin's ADD for `pod`, with the agent's state in `state_dir`.
/// An error carries the plugin's CNI error message.
pub fn add(state_dir: &Path, pod: &PodNetwork<'_>) -> anyhow::Result<()> {
    let previous = serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": pod.host_interface},
            {"name": "eth0", "sandbox": pod.netns_path},
        ],
        "ips": [{"address": format!("{}/32", pod.ip), "interface": 1}],
    });
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ambit-test",
        "type": "ambit-cni",
        "stateDir": state_dir,
        "prevResult": previous,
    });
    let plugin = crate::ztunnel::binary("ambit-cni")?;
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{}-{}", pod.namespace, pod.name))
        .env("CNI_NETNS", pod.netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name))
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run ambit-cni")?;
    child.stdin.take().context("plugin stdin")?.write_all(config.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("CNI ADD for {}/{} failed: {stdout}", pod.namespace, pod.name);
    }
    let result: serde_json::Value = serde_json::from_str(&stdout).context("the plugin's result")?;
    anyhow::ensure!(result["ips"] == previous["ips"], "the plugin changed the previous result: {stdout}");
    Ok(())
}
