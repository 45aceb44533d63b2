//! The bpffs that holds the pins. Pins are what keep capture failing
//! closed while the agent is down, so they must live in the node's own
//! bpffs, not in one that dies with the agent's container.
//!
//! On Kubernetes, the DaemonSet's init container (`ambit-node-init`) mounts
//! a bpffs on the host's `/sys/fs/bpf` if it has none, through a
//! bidirectionally propagated mount, as Cilium's does; the agent sees it
//! through a host-to-container mount. On a bare host the agent mounts it
//! itself. What the agent must never do is mount one where the mount would
//! not reach the host: on a slave mount (a container's view of a host
//! directory) it refuses, saying why.

use std::path::Path;

use super::Error;

/// Where the node's bpffs normally is.
pub const ROOT: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` is on a bpffs, mounting one at [`ROOT`] if it may.
pub fn ensure(pin_dir: &Path) -> Result<(), Error> {
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    let root = Path::new(ROOT);
    if !pin_dir.starts_with(root) || !root.exists() {
        return Err(Error::Bpffs(pin_dir.to_owned(), "not on a bpffs mount".into()));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if receives_only(&mountinfo, root) {
        return Err(Error::Bpffs(
            root.to_owned(),
            "no bpffs here, and this is a slave mount (a container's view of the host's directory): a bpffs \
             mounted here would die with this container, and the pins with it. Mount one on the host first \
             (the DaemonSet's init container, ambit-node-init, does)"
                .into(),
        ));
    }
    mount(root)
}

/// Mounts a bpffs at `path` unless one is there (`ambit-node-init`).
pub fn mount_if_absent(path: &Path) -> Result<bool, Error> {
    if is_bpffs(path)? {
        return Ok(false);
    }
    mount(path).map(|()| true)
}

fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| Error::Bpffs(path.to_owned(), e.to_string()))?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn mount(path: &Path) -> Result<(), Error> {
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| Error::Bpffs(path.to_owned(), format!("cannot mount: {e}")))
}

/// Whether the mount that holds `path` (the longest mount point above it,
/// per `/proc/self/mountinfo`) only receives propagation: a mount made on
/// it stays in this mount namespace.
fn receives_only(mountinfo: &str, path: &Path) -> bool {
    let holder = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = Path::new(fields.get(4)?);
            let separator = fields.iter().position(|f| *f == "-")?;
            path.starts_with(mount_point).then(|| (mount_point.as_os_str().len(), fields[6..separator].to_vec()))
        })
        .max_by_key(|(depth, _)| *depth);
    holder.is_some_and(|(_, tags)| {
        tags.iter().any(|t| t.starts_with("master:")) && !tags.iter().any(|t| t.starts_with("shared:"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw\n\
                        58 23 0:40 / /sys/fs/bpf rw,relatime shared:9 - bpf bpf rw\n";
    const CONTAINER: &str = "600 500 0:22 / /sys rw,relatime - sysfs sysfs rw\n\
                             601 600 0:40 / /sys/fs/bpf rw,relatime master:9 - bpf bpf rw\n";
    const PRIVATE: &str = "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n";

    #[test]
    fn a_container_view_of_the_host_may_not_be_mounted_over() {
        let pins = Path::new("/sys/fs/bpf/ambit/node1");
        assert!(receives_only(CONTAINER, pins));
        assert!(!receives_only(HOST, pins), "the host's own, shared mount");
        assert!(!receives_only(PRIVATE, pins), "a private mount on a bare host");
    }
}
