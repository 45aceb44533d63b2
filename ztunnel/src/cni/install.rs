//! Putting the plugin on the node: the `ambit-cni` binary into the CNI bin
//! directory, and an `ambit-cni` entry at the end of the node's primary
//! network config, so the runtime calls it after the pod's network is up
//! and before the pod's containers start. As Istio's CNI installer does:
//! the primary config is the first `*.conflist` or `*.conf` by name (the one
//! the runtime uses); a `.conf` becomes a `.conflist` of the same name. The
//! entry is kept there: the agent re-checks whenever the directory changes
//! (a primary CNI that rewrites its config drops our entry).

use std::path::{Path, PathBuf};

use mesh::drain::Drain;
use serde_json::{Value, json};
use tracing::{info, warn};

/// The plugin's `type`, its binary's name in the CNI bin directory.
pub const PLUGIN: &str = "ambit-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path} is not a CNI network config: {reason}")]
    Config { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |cause| InstallError::Io { path: path.to_owned(), cause }
}

/// Copies the plugin binary (`ambit-cni` next to this executable) into
/// `bin_dir`, replacing an older one atomically.
pub fn install_binary(bin_dir: &Path) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().map_err(io_error(Path::new("/proc/self/exe")))?;
    let source = exe.with_file_name(PLUGIN);
    let target = bin_dir.join(PLUGIN);
    let bytes = std::fs::read(&source).map_err(io_error(&source))?;
    if std::fs::read(&target).is_ok_and(|current| current == bytes) {
        return Ok(());
    }
    let tmp = bin_dir.join(format!(".{PLUGIN}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(io_error(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_error(&target))?;
    info!(path = %target.display(), "installed the CNI plugin");
    Ok(())
}

/// The runtime's primary network config in `conf_dir`: the first
/// `.conflist` or `.conf` by name.
fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let entries = std::fs::read_dir(conf_dir).map_err(io_error(conf_dir))?;
    let mut configs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf"))
        .collect();
    configs.sort();
    Ok(configs.into_iter().next())
}

/// `config` with our plugin chained last, or `None` if it already is. A
/// single-plugin `.conf` becomes a list of it and ours.
pub fn chained(config: &Value, state_dir: &Path) -> Result<Option<Value>, String> {
    let ours = json!({"type": PLUGIN, "stateDir": state_dir});
    let Some(object) = config.as_object() else { return Err("not a JSON object".into()) };
    if let Some(plugins) = object.get("plugins") {
        let plugins = plugins.as_array().ok_or("`plugins` is not a list")?;
        if plugins.iter().any(|p| p.get("type") == Some(&Value::from(PLUGIN))) {
            return Ok(None);
        }
        let mut updated = config.clone();
        if let Some(list) = updated.get_mut("plugins").and_then(Value::as_array_mut) {
            list.push(ours);
        }
        return Ok(Some(updated));
    }
    if object.get("type").is_none() {
        return Err("neither `plugins` nor `type`".into());
    }
    let mut single = config.clone();
    let name = single.as_object_mut().and_then(|o| o.remove("name")).unwrap_or_else(|| "k8s-pod-network".into());
    let version = single.as_object_mut().and_then(|o| o.remove("cniVersion")).unwrap_or_else(|| "0.3.1".into());
    Ok(Some(json!({"cniVersion": version, "name": name, "plugins": [single, ours]})))
}

/// Chains the plugin into the primary config, if there is one yet.
/// Returns whether the plugin is chained now.
pub fn chain(conf_dir: &Path, state_dir: &Path) -> Result<bool, InstallError> {
    let Some(path) = primary_config(conf_dir)? else { return Ok(false) };
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let invalid = |reason: String| InstallError::Config { path: path.clone(), reason };
    let config: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let Some(updated) = chained(&config, state_dir).map_err(invalid)? else { return Ok(true) };
    let target = path.with_extension("conflist");
    let tmp = conf_dir.join(format!(".{PLUGIN}.conflist.tmp"));
    let body = serde_json::to_vec_pretty(&updated).map_err(|e| invalid(e.to_string()))?;
    std::fs::write(&tmp, body).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_error(&target))?;
    if target != path {
        std::fs::remove_file(&path).map_err(io_error(&path))?;
    }
    info!(config = %target.display(), "chained the CNI plugin");
    Ok(true)
}

/// Keeps the plugin chained until drained: re-checks whenever `conf_dir`
/// changes.
pub async fn keep_chained(conf_dir: PathBuf, state_dir: PathBuf, drain: Drain) {
    let mut changes = match mesh::dir_watch::DirWatch::new(&conf_dir) {
        Ok(changes) => changes,
        Err(error) => return warn!(%error, dir = %conf_dir.display(), "cannot watch the CNI config directory"),
    };
    loop {
        match chain(&conf_dir, &state_dir) {
            Ok(true) => {}
            Ok(false) => info!(dir = %conf_dir.display(), "no CNI network config yet; waiting for one"),
            Err(error) => warn!(%error, "cannot chain the CNI plugin; will retry on the next change"),
        }
        tokio::select! {
            () = drain.signaled() => return,
            changed = changes.changed.recv() => if changed.is_none() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflist_gets_our_plugin_last_and_only_once() {
        let config = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "ptp"}, {"type": "portmap"}]});
        let chained_once = chained(&config, Path::new("/var/run/ambit")).unwrap().unwrap();
        let types: Vec<_> = chained_once["plugins"].as_array().unwrap().iter().map(|p| p["type"].clone()).collect();
        assert_eq!(types, [json!("ptp"), json!("portmap"), json!(PLUGIN)]);
        assert_eq!(chained_once["plugins"][2]["stateDir"], "/var/run/ambit");
        assert_eq!(chained(&chained_once, Path::new("/var/run/ambit")).unwrap(), None);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let config = json!({"cniVersion": "0.3.1", "name": "net", "type": "bridge", "bridge": "cni0"});
        let list = chained(&config, Path::new("/run/ambit")).unwrap().unwrap();
        assert_eq!((list["name"].as_str(), list["cniVersion"].as_str()), (Some("net"), Some("0.3.1")));
        assert_eq!(list["plugins"][0], json!({"type": "bridge", "bridge": "cni0"}));
        assert_eq!(list["plugins"][1]["type"], PLUGIN);
        assert!(chained(&json!([1, 2]), Path::new("/x")).is_err());
    }

    #[test]
    fn the_first_config_by_name_is_chained_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-primary.conf"), r#"{"cniVersion":"1.0.0","name":"n","type":"ptp"}"#)
            .unwrap();
        std::fs::write(dir.path().join("99-other.conflist"), r#"{"name":"o","plugins":[]}"#).unwrap();
        assert!(chain(dir.path(), Path::new("/run/ambit")).unwrap());
        assert!(!dir.path().join("10-primary.conf").exists(), "the .conf became a .conflist");
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("10-primary.conflist")).unwrap()).unwrap();
        assert_eq!(list["plugins"][1]["type"], PLUGIN);
        let other = std::fs::read_to_string(dir.path().join("99-other.conflist")).unwrap();
        assert!(!other.contains(PLUGIN), "only the primary config is chained");
        assert!(chain(dir.path(), Path::new("/run/ambit")).unwrap(), "a second pass changes nothing");
    }
}
