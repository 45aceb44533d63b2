//! `cargo xtask codegen [--check]`: the generated files the repository
//! holds. CRDs come from the controller's Rust types (`controller
//! --print-crds`); `--check` fails when the checked-in copy differs, so a
//! type change cannot ship without its CRD.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// Where the generated CRDs live, relative to the workspace root.
pub const CRDS: &str = "manifests/crds/istio-security.yaml";

pub fn run(check: bool) -> anyhow::Result<()> {
    cmd::cargo(&["build", "--quiet", "-p", "controller"])?;
    let controller = cmd::root().join("target/debug/controller");
    let generated = cmd::output(Command::new(&controller).arg("--print-crds"))?;
    let path: PathBuf = cmd::root().join(CRDS);
    if check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != generated {
            bail!("{CRDS} is out of date with controller/src/crds.rs; run `cargo xtask codegen` and commit it");
        }
        eprintln!("xtask: {CRDS} is up to date");
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().context("CRD path has a parent")?)?;
    std::fs::write(&path, generated).with_context(|| format!("write {}", path.display()))?;
    eprintln!("xtask: wrote {CRDS}");
    Ok(())
}
