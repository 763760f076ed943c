//! `envoy.filters.listener.original_dst`: the connection's local address becomes where it was
//! going before it was redirected here (iptables REDIRECT or skiff's eBPF), via SO_ORIGINAL_DST.
//! On an internal listener's connection: where the connecting cluster or stream says.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{Accepted, Socket};
use crate::config::filter_state;

/// Restores the original destination, if the connection was redirected. On an internal
/// listener's connection, the address the connecting cluster passed through instead: the
/// dynamic metadata `envoy.filters.listener.original_dst` field `local` ("IP:port").
pub(super) fn on_accept(sock: &mut Accepted) {
    let dst = match &sock.stream {
        Socket::Tcp(stream) => original_dst(stream, &sock.local),
        Socket::Internal(_) => {
            // Else the filter state objects shared with the connection, for both addresses.
            let shared = |key| {
                sock.shared
                    .as_ref()
                    .and_then(|s| s.get(key))
                    .and_then(|o| o.value.parse::<SocketAddr>().ok())
            };
            if let Some(remote) = shared(filter_state::ORIGINAL_DST_REMOTE) {
                sock.remote = remote;
            }
            passed_through(sock.metadata.as_deref())
                .or_else(|| shared(filter_state::ORIGINAL_DST_LOCAL))
        }
    };
    if let Some(dst) = dst {
        sock.local = dst;
    }
}

/// The `local` address in a connection's passed-through metadata.
fn passed_through(metadata: Option<&crate::config::metadata::Metadata>) -> Option<SocketAddr> {
    let v = metadata?.lookup(
        "envoy.filters.listener.original_dst",
        &["local".to_string()],
    )?;
    match v {
        crate::config::metadata::Value::String(s) => s.parse().ok(),
        _ => None,
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
