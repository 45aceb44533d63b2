//! `ambit-node-init`: the node agent DaemonSet's init container. It mounts
//! a bpffs on the host's `/sys/fs/bpf` if the host has none, through the
//! init container's bidirectionally propagated mount, so that the agent's
//! pins live in the node's bpffs and outlive the agent's container (which
//! sees the mount host-to-container only). Cilium's agent does the same.
#![forbid(unsafe_code)]

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(ztunnel::capture::bpffs::ROOT);
    let mounted = ztunnel::capture::bpffs::mount_if_absent(root)?;
    eprintln!("{}: {}", root.display(), if mounted { "bpffs mounted" } else { "bpffs already there" });
    Ok(())
}
