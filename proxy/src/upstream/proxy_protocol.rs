//! `envoy.transport_sockets.upstream_proxy_protocol`: the PROXY protocol header an upstream
//! connection starts with, naming the downstream connection's source and destination.

use std::net::{IpAddr, SocketAddr};

pub use crate::listener::filters::proxy_protocol::parser::Version;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: an IPv4 one becomes v4-mapped when the other is IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The header for a connection from `src` to `dst`.
pub fn header(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21); // version 2, PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.push(0x11); // TCP over IPv4
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let octets = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    h.push(0x21); // TCP over IPv6
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&octets(s));
                    h.extend_from_slice(&octets(d));
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::filters::proxy_protocol::parser::{parse, Options, Parse};

    fn round_trip(version: Version, src: &str, dst: &str) -> (SocketAddr, SocketAddr) {
        let h = header(
            version,
            src.parse().expect("src"),
            dst.parse().expect("dst"),
        );
        let opts = Options {
            allow_without: false,
            allow_v1: true,
            allow_v2: true,
        };
        match parse(&h, &opts) {
            Parse::Header(p) => {
                assert_eq!(p.version, version);
                assert_eq!(p.len, h.len(), "the whole header and nothing more");
                p.addresses.expect("addresses")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_is_the_text_line() {
        let h = header(
            Version::V1,
            "10.0.0.1:5000".parse().expect("src"),
            "10.0.0.2:80".parse().expect("dst"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n");
    }

    #[test]
    fn headers_parse_back_to_their_addresses() {
        for v in [Version::V1, Version::V2] {
            assert_eq!(
                round_trip(v, "10.0.0.1:5000", "10.0.0.2:80"),
                (
                    "10.0.0.1:5000".parse().expect("a"),
                    "10.0.0.2:80".parse().expect("a")
                )
            );
            assert_eq!(
                round_trip(v, "[fd00::1]:5000", "[fd00::2]:443"),
                (
                    "[fd00::1]:5000".parse().expect("a"),
                    "[fd00::2]:443".parse().expect("a")
                )
            );
            // Mixed families are written as IPv6, the IPv4 side v4-mapped.
            let (s, d) = round_trip(v, "10.0.0.1:5000", "[fd00::2]:443");
            assert_eq!(s, "[::ffff:10.0.0.1]:5000".parse().expect("a"));
            assert_eq!(d, "[fd00::2]:443".parse().expect("a"));
        }
    }
}
