//! nginx and haproxy (Debian's packages) doing the waypoint's job in the
//! L7 benchmark: weighted proxying of plain HTTP/1.1 to two backends, with
//! upstream keep-alive, two workers (the waypoint's runtime has two
//! threads on this machine), and the rest of their settings left at the
//! packages' defaults (nginx logs every request to a file, as the waypoint
//! logs every request; haproxy logs nothing without a syslog target).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_tests::netns::Netns;
use ambit_tests::process::Process;
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procstat;

/// A proxy under test, running in a pod's namespace; killed (with its
/// workers) on drop.
#[derive(Debug)]
pub struct Peer {
    pub name: &'static str,
    pub addr: SocketAddr,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// nginx on `addr`, splitting by `weights` over `upstreams`.
    pub async fn nginx(netns: &Netns, addr: SocketAddr, upstreams: &[(SocketAddr, u32)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().display();
        let servers: String =
            upstreams.iter().map(|(upstream, weight)| format!("    server {upstream} weight={weight};\n")).collect();
        let config = format!(
            "worker_processes 2;\npid {path}/nginx.pid;\nerror_log {path}/error.log warn;\ndaemon off;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log {path}/access.log;\n  client_body_temp_path {path}/body;\n  \
             proxy_temp_path {path}/proxy;\n  fastcgi_temp_path {path}/fastcgi;\n  uwsgi_temp_path {path}/uwsgi;\n  \
             scgi_temp_path {path}/scgi;\n  upstream backends {{\n{servers}    keepalive 64;\n  }}\n  \
             server {{\n    listen {addr} reuseport;\n    location / {{\n      proxy_pass http://backends;\n      \
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config)?;
        let mut command = tokio::process::Command::from(netns.command("nginx"));
        command.arg("-p").arg(dir.path()).arg("-c").arg(&file).arg("-e").arg(dir.path().join("error.log"));
        Self::start("nginx", netns, addr, command, dir).await
    }

    /// haproxy on `addr`, splitting by `weights` over `upstreams`.
    pub async fn haproxy(netns: &Netns, addr: SocketAddr, upstreams: &[(SocketAddr, u32)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let servers: String = upstreams
            .iter()
            .enumerate()
            .map(|(i, (upstream, weight))| format!("  server s{i} {upstream} weight {weight}\n"))
            .collect();
        let config = format!(
            "global\n  nbthread 2\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  \
             http-reuse always\n\
             frontend in\n  bind {addr}\n  default_backend backends\n\
             backend backends\n  balance roundrobin\n{servers}"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config)?;
        let mut command = tokio::process::Command::from(netns.command("haproxy"));
        command.arg("-f").arg(&file).arg("-db");
        Self::start("haproxy", netns, addr, command, dir).await
    }

    async fn start(
        name: &'static str,
        netns: &Netns,
        addr: SocketAddr,
        command: tokio::process::Command,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let process = Process::spawn(name, command)?;
        let peer = Self { name, addr, process, _dir: dir };
        peer.wait_listening(netns).await?;
        Ok(peer)
    }

    /// Polls until `addr` accepts a connection; a deadline, not a sleep.
    async fn wait_listening(&self, netns: &Netns) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while netns.connect(self.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("{} did not listen on {} within 10 s: {:?}", self.name, self.addr, self.process.log_lines());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The master and its workers, whose CPU and memory count.
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        Ok(procstat::with_children(self.process.pid().context("the peer has exited")?))
    }
}

impl Drop for Peer {
    /// Workers first: nginx's workers outlive a SIGKILLed master.
    fn drop(&mut self) {
        if let Ok(pids) = self.pids() {
            for pid in pids.into_iter().skip(1) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}
