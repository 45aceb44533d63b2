//! Running commands, with errors that say what failed.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs cargo (the one that runs us) in the workspace root, inheriting output.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(root()))
}

/// Runs a command inheriting stdout/stderr; fails on a non-zero exit.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {}", describe(command));
    let status = command.status().with_context(|| format!("cannot run {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails on a non-zero exit.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.stderr(Stdio::piped()).output().with_context(|| format!("cannot run {}", describe(command)))?;
    if !out.status.success() {
        bail!("{} failed: {}", describe(command), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("`{} {}`", command.get_program().to_string_lossy(), args.join(" "))
}
