//! Socket options every TCP connection of ours carries, set in one place,
//! as linkerd2-proxy does: no Nagle delay, TCP keepalive (so a peer that
//! vanished without a FIN or RST is noticed on an idle connection), and
//! `TCP_USER_TIMEOUT` (so data a dead peer never acknowledges cannot hold a
//! connection, and its buffers, for the kernel's default of ~15 minutes of
//! retransmissions).

use std::io;
use std::time::Duration;

use serde::Serialize;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// linkerd2-proxy's defaults: keepalive after 10 s idle, give up on
/// unacknowledged data after 30 s.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Unanswered keepalive probes before the kernel drops the connection.
const KEEPALIVE_PROBES: u32 = 3;

/// How our TCP connections detect dead peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TcpOptions {
    /// Idle time before the first keepalive probe, and between probes.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    #[serde(with = "humantime_serde")]
    pub user_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { keepalive: DEFAULT_KEEPALIVE, user_timeout: DEFAULT_USER_TIMEOUT }
    }
}

impl TcpOptions {
    /// Applies the options to a connected or accepted socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        self.apply_to(&SockRef::from(stream))
    }

    /// Applies the options to a socket before it connects, so they hold
    /// from the handshake on.
    pub fn apply_to(&self, socket: &SockRef<'_>) -> io::Result<()> {
        let keepalive =
            TcpKeepalive::new().with_time(self.keepalive).with_interval(self.keepalive).with_retries(KEEPALIVE_PROBES);
        socket.set_tcp_keepalive(&keepalive)?;
        socket.set_tcp_user_timeout(Some(self.user_timeout))?;
        socket.set_tcp_nodelay(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_reach_the_kernel() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let options = TcpOptions { keepalive: Duration::from_secs(7), user_timeout: Duration::from_secs(11) };
        options.apply(&client).unwrap();
        let socket = SockRef::from(&client);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(11)));
        assert!(client.nodelay().unwrap());
    }
}
