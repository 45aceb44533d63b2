//! Packet captures with tcpdump (Debian's), to see what really crosses a
//! link: whether a payload shows in clear, and whether TLS 1.3 is spoken.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::netns::Netns;

/// A running capture; stop it to get the packets.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts tcpdump on `interface` in `netns` and waits until it listens.
    /// Keeps the first 512 bytes of each packet: headers and the start of
    /// the payload, where TLS handshakes and our markers sit.
    pub async fn start(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("capture.pcap");
        let mut command = Command::from(netns.command("tcpdump"));
        command
            .args(["-i", interface, "-U", "-n", "-s", "512", "-Z", "root", "-w"])
            .arg(&path)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawn tcpdump (is it installed? `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("listening on") {
                    return anyhow::Ok(());
                }
            }
            bail!("tcpdump exited before listening")
        };
        tokio::time::timeout(Duration::from_secs(20), listening).await.context("tcpdump did not start")??;
        // Keep draining stderr so tcpdump never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, path, _dir: dir })
    }

    /// Waits (up to `timeout`) until the capture file holds `needle`.
    /// tcpdump reads packets in order, so once a marker sent last is in the
    /// file, everything sent before it is too.
    pub async fn wait_for(&self, needle: &[u8], timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if contains(&tokio::fs::read(&self.path).await.unwrap_or_default(), needle) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the capture never saw {:?} within {timeout:?}", String::from_utf8_lossy(needle));
            }
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the pcap bytes.
    pub async fn stop(mut self) -> anyhow::Result<Vec<u8>> {
        if let Some(pid) = self.child.id() {
            kill(Pid::from_raw(pid as i32), Signal::SIGINT)?;
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.context("tcpdump did not stop")??;
        Ok(tokio::fs::read(&self.path).await?)
    }
}

/// tcpdump's one-line summaries of the packets in `pcap` that match
/// `filter` (pcap-filter syntax), e.g.
/// `IP 10.1.0.2.40312 > 10.2.0.2.15008: Flags [S], seq 1, …`.
pub async fn summaries(pcap: &[u8], filter: &str) -> anyhow::Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("read.pcap");
    tokio::fs::write(&path, pcap).await?;
    let output = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&path)
        .arg(filter)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run tcpdump -r")?;
    if !output.status.success() {
        bail!("tcpdump -r failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
}

/// The source address of a summary line from [`summaries`]: what follows
/// `IP ` up to the port.
pub fn source_ip(summary: &str) -> Option<std::net::IpAddr> {
    let after = summary.split_once(" IP ")?.1;
    let endpoint = after.split_whitespace().next()?;
    endpoint.rsplit_once('.')?.0.parse().ok()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a server chose TLS 1.3: a ServerHello's `supported_versions`
/// extension (type 0x002b) carrying exactly 0x0304.
pub fn saw_tls13(pcap: &[u8]) -> bool {
    contains(pcap, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04])
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_source_of_a_summary() {
        let line = "10:11:12.000001 IP 10.1.0.2.40312 > 10.2.0.2.15008: Flags [S], seq 1, win 64240, length 0";
        assert_eq!(super::source_ip(line), Some("10.1.0.2".parse().unwrap()));
        assert_eq!(super::source_ip("garbage"), None);
    }
}
