//! Idempotent installation of what building and testing need, on a fresh
//! machine of the project's kind (Debian, root, stable + nightly Rust):
//!
//! * the nightly `rust-src` component (eBPF programs build `core` from source);
//! * `bpf-linker`, linked against the very LLVM that rustc nightly uses;
//! * Debian packages: nftables (capture's conntrack bypass and the test
//!   bed's kube-proxy), bpftool (inspecting programs), iperf3 and tcpdump,
//!   and make (jemalloc, ztunnel's allocator, is built from C source).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

const DEBIAN_PACKAGES: &[&str] = &["nftables", "bpftool", "iperf3", "tcpdump", "iproute2", "util-linux", "make"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const OHA_VERSION: &str = "^1";

pub fn run() -> anyhow::Result<()> {
    if !is_root()? {
        bail!("ambit's build and tests need root (eBPF, network namespaces, apt); run as root");
    }
    rust_src()?;
    bpf_linker()?;
    apt_install(DEBIAN_PACKAGES)
}

fn is_root() -> anyhow::Result<bool> {
    Ok(cmd::output(Command::new("id").arg("-u"))?.trim() == "0")
}

fn rust_src() -> anyhow::Result<()> {
    let installed =
        cmd::output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("the nightly toolchain is needed to build eBPF programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join(name)
}

fn bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_bin("bpf-linker");
    if linker.exists() && Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let verbose = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&verbose).context("rustc +nightly -vV printed no LLVM version")?;
    let prefix = llvm_prefix()?;
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// oha, the HTTP load generator the benchmarks drive (`cargo install`,
/// pinned so results stay comparable).
pub fn oha() -> anyhow::Result<()> {
    let oha = cargo_bin("oha");
    if oha.exists() && Command::new(&oha).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    cmd::run(Command::new("cargo").args(["install", "oha", "--locked", "--version", OHA_VERSION]))
}

/// `LLVM version: 22.1.4` → 22.
fn llvm_major(rustc_verbose: &str) -> Option<u32> {
    rustc_verbose.lines().find_map(|l| l.strip_prefix("LLVM version: "))?.split('.').next()?.parse().ok()
}

/// bpf-linker links `-lLLVM` from `$LLVM_PREFIX/lib`. rustc ships its LLVM
/// as `lib/libLLVM.so.<ver>-rust-<ver>`; a prefix of two symlinks to it
/// (the link name and the file's own name, for the rpath) is enough.
fn llvm_prefix() -> anyhow::Result<PathBuf> {
    let sysroot = PathBuf::from(cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so"))
        .with_context(|| format!("no libLLVM.so* in {}", lib.display()))?;
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let prefix = home.join(".cache/ambit/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        symlink_fresh(&lib.join(&llvm), &prefix_lib.join(name))?;
    }
    Ok(prefix)
}

fn symlink_fresh(target: &Path, link: &Path) -> anyhow::Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {}", link.display()))
}

/// Installs those of `packages` that are not installed yet.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_llvm_major() {
        let text = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(super::llvm_major(text), Some(22));
        assert_eq!(super::llvm_major("no llvm here"), None);
    }
}
