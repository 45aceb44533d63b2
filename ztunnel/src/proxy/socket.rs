//! Socket set-up that needs options tokio does not expose. Every socket
//! the data path opens gets [`TcpOptions`] here, before it connects.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mesh::tcp::TcpOptions;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Pending connections the kernel may queue per listener. Bursts of new
/// connections (1,000 at once in the tests) must not overflow it.
const BACKLOG: i32 = 4096;

/// A listener with `IP_TRANSPARENT`, which capture needs: the accepted
/// sockets carry the client's original destination as their local address,
/// and the kernel must route their replies although that address is not ours.
pub(super) fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    set_transparent(&socket, addr.ip())?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `dst`, from `source` if given (an address that need not be
/// ours: the client pod's, so the destination sees the real client).
pub(super) async fn connect(
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
    tcp: &TcpOptions,
) -> Result<TcpStream, super::ProxyError> {
    let socket = upstream_socket(dst, source, tcp).map_err(super::ProxyError::Socket)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(cause)) => Err(super::ProxyError::Connect { addr: dst, cause }),
        Err(_) => Err(super::ProxyError::ConnectTimeout { addr: dst }),
    }
}

fn upstream_socket(dst: SocketAddr, source: Option<IpAddr>, tcp: &TcpOptions) -> io::Result<TcpSocket> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    tcp.apply_to(&SockRef::from(&socket))?;
    if let Some(source) = source {
        bind_transparent(&socket, source)?;
    }
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// Binds to `source`, an address that need not be ours. The source port is
/// chosen at connect time, by the full 4-tuple: a bind to port 0 would scan
/// for a port unused by every socket on that address, TIME_WAIT included,
/// which grows slow (and finally fails) under a high rate of new
/// connections from one pod.
fn bind_transparent(socket: &Socket, source: IpAddr) -> io::Result<()> {
    set_transparent(socket, source)?;
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
        .map_err(io::Error::from)?;
    socket.bind(&SocketAddr::new(source, 0).into())
}

/// Where an HBONE connection leaves from.
#[derive(Clone, Copy, Debug)]
pub(super) enum HboneSource {
    /// The client pod's own address, towards another node: the destination
    /// sees the pod as its TCP peer (as with Istio's ztunnel), and the
    /// replies come back through `node_ingress`, which hands them to us.
    Pod(IpAddr),
    /// Towards a pod on this node: 127.0.0.1 with the capture mark, so
    /// policy routing delivers it to our own HBONE listener, which sees it
    /// arrive for the pod's address as a remote connection would. (From
    /// the pod's address, the listener's replies would be routed to the
    /// client pod itself.) The client's address travels in `forwarded`.
    ThisNode,
}

/// A TCP connection for HBONE to `hop` (a pod IP, port 15008).
pub(super) async fn connect_hbone(hop: SocketAddr, source: HboneSource, tcp: &TcpOptions) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(hop), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    tcp.apply_to(&SockRef::from(&socket))?;
    match source {
        HboneSource::Pod(ip) => bind_transparent(&socket, ip)?,
        HboneSource::ThisNode => {
            socket.set_mark(ambit_ebpf_common::CAPTURE_MARK)?;
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        }
    }
    TcpSocket::from_std_stream(socket.into()).connect(hop).await
}

fn set_transparent(socket: &Socket, family_of: IpAddr) -> io::Result<()> {
    match family_of {
        IpAddr::V4(_) => socket.set_ip_transparent_v4(true),
        IpAddr::V6(_) => socket.set_ip_transparent_v6(true),
    }
}

/// Makes the next close send RST instead of FIN, so a refused client sees
/// "connection reset" rather than an empty, successful-looking stream.
pub(super) fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
