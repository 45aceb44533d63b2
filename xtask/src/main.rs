//! ambit's task runner (`cargo xtask <task>`). Each task installs what it
//! needs first, idempotently, so the README's commands work on a fresh
//! machine.
#![forbid(unsafe_code)]

mod cmd;
mod codegen;
mod kube;
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
    /// Write generated files (the CRDs, from the controller's types).
    Codegen {
        /// Fail if the checked-in files differ from what would be generated.
        #[arg(long)]
        check: bool,
    },
    /// Build (once, cached) the real kube-apiserver the controller's tests use.
    KubeApiserver,
    /// Bring up a local two-node mesh, show capture at work, clean up on Ctrl-C.
    Demo,
    /// Run a benchmark against release builds and record it in BENCHMARKS.md.
    Bench {
        #[arg(value_enum)]
        suite: Suite,
        /// Extra arguments for the benchmark binary (e.g. `--runs 5`).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Suite {
    /// ztunnel's L4 tunnel against direct pod-to-pod.
    L4,
    /// ztunnel's resident memory: idle, with many tunnels, under bulk load.
    Memory,
    /// The waypoint against direct, ztunnels only, nginx and haproxy.
    L7,
    /// The controller at 2,000 and 10,000 pods with 100 and 1,000 simulated
    /// agents: change-to-agent latency, CPU per change, memory, bytes.
    Controller,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Setup => setup::run(),
        Task::Test { cargo_args } => test(&cargo_args),
        Task::Demo => demo(),
        Task::Codegen { check } => codegen::run(check),
        Task::KubeApiserver => kube::ensure_apiserver().map(|path| eprintln!("kube-apiserver: {}", path.display())),
        Task::Bench { suite: Suite::L4, bench_args } => bench(&bench_args),
        Task::Bench { suite: Suite::Memory, bench_args } => {
            bench(&[&["--memory".to_owned()][..], &bench_args].concat())
        }
        Task::Bench { suite: Suite::Controller, bench_args } => {
            bench(&[&["--controller".to_owned()][..], &bench_args].concat())
        }
        Task::Bench { suite: Suite::L7, bench_args } => {
            // The peers the waypoint is measured against.
            setup::apt_install(&["nginx", "haproxy"])?;
            bench(&[&["--l7".to_owned()][..], &bench_args].concat())
        }
    }
}

fn bench(bench_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    setup::oha()?;
    sweep::stale_test_leftovers()?;
    cmd::cargo(&["build", "--release", "--bins", "--quiet"])?;
    let release = cmd::root().join("target/release");
    cmd::run(
        std::process::Command::new(release.join("ambit-bench"))
            .args(bench_args)
            .env("AMBIT_BIN_DIR", &release)
            .current_dir(cmd::root()),
    )
}

fn test(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    // The controller's e2e tests run against a real API server.
    kube::ensure_apiserver()?;
    sweep::stale_test_leftovers()?;
    cmd::cargo(&["fmt", "--all", "--check"])?;
    codegen::run(true)?;
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
