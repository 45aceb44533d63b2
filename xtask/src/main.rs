//! ambit's task runner (`cargo xtask <task>`). Each task installs what it
//! needs first, idempotently, so the README's commands work on a fresh
//! machine.
#![forbid(unsafe_code)]

mod cmd;
mod setup;
mod sweep;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "ambit's build, test and demo tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the toolchain parts and Debian packages the build and tests need.
    Setup,
    /// Run every check and test: formatting, clippy, unit and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Bring up a local two-node mesh, show capture at work, clean up on Ctrl-C.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Setup => setup::run(),
        Task::Test { cargo_args } => test(&cargo_args),
        Task::Demo => demo(),
    }
}

fn test(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    sweep::stale_test_leftovers()?;
    cmd::cargo(&["fmt", "--all", "--check"])?;
    cmd::cargo(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
    // The end-to-end tests start the workspace's binaries: build them first.
    cmd::cargo(&["build", "--bins", "--quiet"])?;
    let mut args = vec!["test".to_owned(), "--no-fail-fast".to_owned()];
    if !cargo_args.is_empty() {
        args.push("--".to_owned());
        args.extend(cargo_args.iter().cloned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::cargo(&args)?;
    sweep::check_nothing_left()
}

fn demo() -> anyhow::Result<()> {
    setup::run()?;
    sweep::stale_test_leftovers()?;
    cmd::cargo(&["build", "--bins", "--quiet"])?;
    cmd::cargo(&["run", "--quiet", "-p", "ambit-tests", "--bin", "ambit-demo"])
}
