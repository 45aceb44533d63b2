//! Builds the eBPF programs (`ebpf/programs`) for the bpf target with the
//! nightly toolchain and bpf-linker, so a plain `cargo build` embeds them.
//! `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../ebpf/programs");
    let root_dir = root_dir.canonicalize().context("ebpf/programs")?;
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {root_dir:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "ambit-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         rust-src component and bpf-linker",
    )
}
