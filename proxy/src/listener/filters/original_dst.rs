//! `envoy.filters.listener.original_dst`: the connection's local address becomes where it was
//! going before it was redirected here (iptables REDIRECT or skiff's eBPF), via SO_ORIGINAL_DST.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Accepted;

/// Restores the original destination, if the connection was redirected.
pub(super) fn on_accept(sock: &mut Accepted) {
    if let Some(dst) = original_dst(&sock.stream, &sock.local) {
        sock.local = dst;
    }
}

/// The original destination of a redirected connection (SO_ORIGINAL_DST, or its IPv6 form).
fn original_dst(stream: &TcpStream, local: &SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    addr.ok().and_then(|a| a.as_socket())
}
