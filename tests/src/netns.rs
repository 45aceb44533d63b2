//! Network namespaces: created with iproute2, entered in-process on a
//! dedicated thread (`setns` affects only the calling thread), removed on
//! drop. Sockets keep the namespace they were created in, so a socket made
//! inside can be used from anywhere.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A name no other test (in this or another process) uses:
/// `ambit-<pid>-<n>`. The pid lets a sweeper tell leftovers of dead runs.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("ambit-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self { name: name.to_owned() };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs many `ip` commands (one per line) in one process.
    pub fn ip_batch(&self, commands: &[String]) -> anyhow::Result<()> {
        let script = commands.join("\n");
        run_with_stdin(Command::new("ip").args(["-n", &self.name, "-batch", "-"]), &script)
    }

    /// Runs a command inside the namespace, e.g. `nft` or `sysctl`.
    pub fn exec(&self, program: &str, args: &[&str], stdin: &str) -> anyhow::Result<()> {
        run_with_stdin(
            Command::new("nsenter").arg(format!("--net={}", self.path())).arg("--").arg(program).args(args),
            stdin,
        )
    }

    /// A command that will run inside the namespace; `nsenter` execs it, so
    /// the child's pid is the program's own. (`ip netns exec` would remount
    /// /sys and hide bpffs pins.)
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path())).arg("--").arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> anyhow::Result<R> + Send) -> anyhow::Result<R> {
        let file = File::open(self.path()).with_context(|| format!("open {}", self.path()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
        })
    }

    /// A TCP listener inside this namespace. Needs a tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let listener = self.enter(|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            socket.set_nonblocking(true)?;
            Ok(std::net::TcpListener::from(socket))
        })?;
        TcpListener::from_std(listener).with_context(|| format!("listen on {addr} in {}", self.name))
    }

    /// An unconnected TCP socket that lives in this namespace. Needs a
    /// tokio runtime; connecting it borrows nothing from `self`.
    pub fn socket(&self, family_of: SocketAddr) -> std::io::Result<TcpSocket> {
        let socket = self
            .enter(|| {
                let socket = Socket::new(Domain::for_address(family_of), Type::STREAM, Some(Protocol::TCP))?;
                socket.set_nonblocking(true)?;
                Ok(std::net::TcpStream::from(socket))
            })
            .map_err(std::io::Error::other)?;
        Ok(TcpSocket::from_std_stream(socket))
    }

    /// Connects from inside this namespace. Needs a tokio runtime.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.socket(addr)?.connect(addr).await
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("spawn {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_with_stdin(command: &mut Command, stdin: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{command:?} failed: {}\ninput:\n{stdin}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
