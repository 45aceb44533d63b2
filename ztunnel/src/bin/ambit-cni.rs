//! `ambit-cni`: a chained CNI plugin (CNI spec 1.x, also 0.3–0.4). The
//! runtime runs it after the pod's network is up and before the pod's
//! containers start. On ADD it asks the node's agent to capture the pod and
//! waits for the answer, so an enrolled pod's first packet is already
//! captured. The previous plugin's result passes through unchanged.
//!
//! When the agent cannot be reached, a pod of a namespace the agent last
//! knew as enrolled is refused (CNI error 11, "try again later": the
//! runtime retries), so it never starts uncaptured; other pods start.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, reason = "stdout is the CNI protocol's channel")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use ztunnel::cni::protocol::{self, EnrolledNamespaces, PodNetwork, Reply, Request};

const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Where the agent keeps its socket when the network config does not say.
const DEFAULT_STATE_DIR: &str = "/var/run/ambit";
/// How long the agent may take to put capture in place.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// CNI's well-known error codes.
const TRY_AGAIN_LATER: u32 = 11;
const INVALID_CONFIG: u32 = 7;

/// A failure, as the CNI spec has plugins report them.
struct Failure {
    code: u32,
    msg: String,
}

fn main() -> ExitCode {
    let mut stdin = String::new();
    let _ = std::io::stdin().take(1 << 20).read_to_string(&mut stdin);
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let config: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    let version = config["cniVersion"].as_str().unwrap_or("1.0.0").to_owned();
    let outcome = match command.as_str() {
        "VERSION" => Ok(json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})),
        "ADD" => add(&config),
        "DEL" => {
            del(&config);
            Ok(Value::Null)
        }
        "CHECK" | "GC" | "STATUS" => Ok(Value::Null),
        other => Err(Failure { code: 4, msg: format!("unknown CNI_COMMAND {other:?}") }),
    };
    match outcome {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("{}", json!({"cniVersion": version, "code": failure.code, "msg": failure.msg}));
            ExitCode::FAILURE
        }
    }
}

/// ADD: have the agent capture the pod, then pass the previous result on.
fn add(config: &Value) -> Result<Value, Failure> {
    let mut result = config.get("prevResult").cloned().ok_or_else(|| Failure {
        code: INVALID_CONFIG,
        msg: "ambit-cni is a chained plugin: it needs the previous plugin's result".into(),
    })?;
    if let Some(fields) = result.as_object_mut() {
        fields.insert("cniVersion".into(), config["cniVersion"].clone());
    }
    let pod = pod_network(&result)?;
    let state_dir = state_dir(config);
    match ask_agent(&state_dir, &Request::Add(pod.clone())) {
        Ok(Reply::Done { .. }) => Ok(result),
        Ok(Reply::Refused { reason }) => Err(Failure { code: TRY_AGAIN_LATER, msg: reason }),
        Err(error) if namespace_enrolled(&state_dir, &pod.namespace) => Err(Failure {
            code: TRY_AGAIN_LATER,
            msg: format!(
                "ambit's node agent is unreachable ({error}); namespace {} is enrolled, so the pod waits for it",
                pod.namespace
            ),
        }),
        Err(_) => Ok(result),
    }
}

/// DEL must succeed whatever happens; the agent is told if it listens.
fn del(config: &Value) {
    let pod = PodNetwork {
        namespace: pod_arg("K8S_POD_NAMESPACE").unwrap_or_default(),
        name: pod_arg("K8S_POD_NAME").unwrap_or_default(),
        ips: config.get("prevResult").map(result_ips).unwrap_or_default(),
        host_interface: None,
    };
    let _ = ask_agent(&state_dir(config), &Request::Del(pod));
}

fn state_dir(config: &Value) -> PathBuf {
    PathBuf::from(config["stateDir"].as_str().unwrap_or(DEFAULT_STATE_DIR))
}

/// The pod as the runtime and the previous plugin describe it.
fn pod_network(result: &Value) -> Result<PodNetwork, Failure> {
    let missing = |what: &str| Failure { code: INVALID_CONFIG, msg: format!("no {what} in CNI_ARGS") };
    let ips = result_ips(result);
    if ips.is_empty() {
        return Err(Failure { code: INVALID_CONFIG, msg: "the previous result has no IP address".into() });
    }
    // The node-side interface is the one without a sandbox (netns path).
    let host_interface = result["interfaces"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some(""))))
        .and_then(|i| i["name"].as_str())
        .map(str::to_owned);
    Ok(PodNetwork {
        namespace: pod_arg("K8S_POD_NAMESPACE").ok_or_else(|| missing("K8S_POD_NAMESPACE"))?,
        name: pod_arg("K8S_POD_NAME").ok_or_else(|| missing("K8S_POD_NAME"))?,
        ips,
        host_interface,
    })
}

/// The addresses of a CNI result's `ips` (CIDR notation).
fn result_ips(result: &Value) -> Vec<IpAddr> {
    let ips = result["ips"].as_array().map(Vec::as_slice).unwrap_or_default();
    ips.iter().filter_map(|ip| ip["address"].as_str()).filter_map(|cidr| cidr.split('/').next()?.parse().ok()).collect()
}

/// One `KEY=value` of `CNI_ARGS` (`;`-separated), as kubelet passes them.
fn pod_arg(key: &str) -> Option<String> {
    let args = std::env::var("CNI_ARGS").ok()?;
    args.split(';').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned)
}

fn ask_agent(state_dir: &Path, request: &Request) -> Result<Reply, String> {
    let path = state_dir.join(protocol::SOCKET);
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(AGENT_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(stream.take(protocol::MAX_LINE as u64)).read_line(&mut reply).map_err(|e| e.to_string())?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from the agent: {e}"))
}

/// Whether the agent's last word was that `namespace` is enrolled. No
/// word (the agent never ran here) counts as not enrolled.
fn namespace_enrolled(state_dir: &Path, namespace: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(state_dir.join(protocol::ENROLLED_NAMESPACES)) else { return false };
    serde_json::from_str::<EnrolledNamespaces>(&text).is_ok_and(|e| e.namespaces.iter().any(|n| n == namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pod_from_a_ptp_result() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "veth1234", "mac": "aa:bb"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.1.0.7/32", "interface": 1}, {"address": "fd00::7/128", "interface": 1}]
        });
        let ips = result_ips(&result);
        assert_eq!(ips, ["10.1.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
        let host = result["interfaces"].as_array().unwrap().iter().find(|i| i.get("sandbox").is_none());
        assert_eq!(host.and_then(|i| i["name"].as_str()), Some("veth1234"));
    }

    #[test]
    fn the_fallback_knows_only_what_the_agent_wrote() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!namespace_enrolled(dir.path(), "shop"));
        std::fs::write(dir.path().join(protocol::ENROLLED_NAMESPACES), r#"{"namespaces":["shop"]}"#).unwrap();
        assert!(namespace_enrolled(dir.path(), "shop"));
        assert!(!namespace_enrolled(dir.path(), "legacy"));
    }
}
