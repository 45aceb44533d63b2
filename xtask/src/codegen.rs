//! `cargo xtask codegen [--check]`: the generated files the repository
//! holds. CRDs come from the controller's Rust types (`controller
//! --write-crds`); `--check` generates them afresh in a scratch directory
//! and fails when the checked-in copy differs, so a type change cannot ship
//! without its CRD.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// The generated files, relative to `manifests/`.
pub const GENERATED: [&str; 3] = ["crds/istio-security.yaml", "crds/istio-networking.yaml", "gateway-api/crds.yaml"];

pub fn run(check: bool) -> anyhow::Result<()> {
    cmd::cargo(&["build", "--quiet", "-p", "controller"])?;
    let controller = cmd::root().join("target/debug/controller");
    let manifests = cmd::root().join("manifests");
    if !check {
        cmd::run(Command::new(&controller).arg("--write-crds").arg(&manifests))?;
        eprintln!("xtask: wrote {}", GENERATED.join(", "));
        return Ok(());
    }
    let scratch = cmd::root().join("target/codegen-check");
    let _ = std::fs::remove_dir_all(&scratch);
    cmd::run(Command::new(&controller).arg("--write-crds").arg(&scratch))?;
    for file in GENERATED {
        let generated =
            std::fs::read_to_string(scratch.join(file)).with_context(|| format!("{file} was not generated"))?;
        let current = std::fs::read_to_string(manifests.join(file)).unwrap_or_default();
        if current != generated {
            bail!("manifests/{file} is out of date with controller/src/crds/; run `cargo xtask codegen` and commit it");
        }
    }
    eprintln!("xtask: generated CRDs are up to date");
    Ok(())
}
