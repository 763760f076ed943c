use super::*;

fn cidr(s: &str) -> CidrRange {
    let (a, l) = s.split_once('/').expect("cidr");
    CidrRange {
        address: a.parse().expect("ip"),
        prefix_len: l.parse().expect("len"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

struct Conn {
    local: SocketAddr,
    remote: SocketAddr,
    direct: SocketAddr,
    sni: &'static str,
    transport: &'static str,
    alpn: ApplicationProtocols,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            local: sa("10.0.0.1:443"),
            remote: sa("192.0.2.1:5000"),
            direct: sa("192.0.2.1:5000"),
            sni: "",
            transport: "raw_buffer",
            alpn: ApplicationProtocols::None,
        }
    }
    fn input(&self) -> ChainInput<'_> {
        ChainInput {
            local: self.local,
            remote: self.remote,
            direct_remote: self.direct,
            server_name: self.sni,
            transport_protocol: self.transport,
            application_protocols: &self.alpn,
        }
    }
}

fn table(ms: &[FilterChainMatch]) -> ChainTable {
    let refs: Vec<&FilterChainMatch> = ms.iter().collect();
    ChainTable::new(&refs).expect("no overlap")
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[test]
fn server_names_exact_then_longest_wildcard_then_any() {
    let t = table(&[
        FilterChainMatch {
            server_names: names(&["a.example.com"]),
            ..Default::default()
        },
        FilterChainMatch {
            server_names: names(&["*.example.com"]),
            ..Default::default()
        },
        FilterChainMatch {
            server_names: names(&["*.b.example.com"]),
            ..Default::default()
        },
        FilterChainMatch::default(),
    ]);
    let pick = |sni: &'static str| {
        let mut c = Conn::new();
        c.sni = sni;
        t.lookup(&c.input())
    };
    assert_eq!(pick("a.example.com"), Lookup::Chain(0));
    assert_eq!(pick("x.example.com"), Lookup::Chain(1));
    assert_eq!(pick("x.b.example.com"), Lookup::Chain(2));
    assert_eq!(pick("b.example.com"), Lookup::Chain(1));
    assert_eq!(
        pick("example.com"),
        Lookup::Chain(3),
        "a wildcard needs a label"
    );
    assert_eq!(pick(""), Lookup::Chain(3));
    assert_eq!(pick("other.org"), Lookup::Chain(3));
    assert_eq!(
        pick("\u{e9}x.example.com"),
        Lookup::Chain(1),
        "bytes, not chars"
    );
}

#[test]
fn no_backtracking_past_a_more_specific_level() {
    // The port-specific chain wants TLS; a plaintext connection to that port does not fall back
    // to the catch-all chain.
    let t = table(&[
        FilterChainMatch {
            destination_port: Some(443),
            transport_protocol: "tls".into(),
            ..Default::default()
        },
        FilterChainMatch::default(),
    ]);
    let c = Conn::new();
    assert_eq!(t.lookup(&c.input()), Lookup::Default);
    let mut c = Conn::new();
    c.local = sa("10.0.0.1:80");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(1));
    // Same at the server name level: the exact name wins, then its source range fails.
    let t = table(&[
        FilterChainMatch {
            server_names: names(&["a.example.com"]),
            source_prefix_ranges: vec![cidr("10.0.0.0/8")],
            ..Default::default()
        },
        FilterChainMatch {
            server_names: names(&["*.example.com"]),
            ..Default::default()
        },
    ]);
    let mut c = Conn::new();
    c.sni = "a.example.com";
    assert_eq!(t.lookup(&c.input()), Lookup::Default);
    c.remote = sa("10.1.1.1:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(0));
}

#[test]
fn transport_alpn_in_client_order_and_sources() {
    let t = table(&[
        FilterChainMatch {
            transport_protocol: "tls".into(),
            application_protocols: names(&["h2"]),
            ..Default::default()
        },
        FilterChainMatch {
            transport_protocol: "tls".into(),
            application_protocols: names(&["http/1.1"]),
            ..Default::default()
        },
        FilterChainMatch {
            transport_protocol: "tls".into(),
            ..Default::default()
        },
        FilterChainMatch {
            source_type: SourceType::SameIpOrLoopback,
            ..Default::default()
        },
        FilterChainMatch {
            source_prefix_ranges: vec![cidr("192.0.2.0/24")],
            source_ports: vec![5000],
            ..Default::default()
        },
        FilterChainMatch {
            source_prefix_ranges: vec![cidr("192.0.2.0/24")],
            ..Default::default()
        },
        FilterChainMatch {
            direct_source_prefix_ranges: vec![cidr("198.51.100.0/24")],
            ..Default::default()
        },
    ]);
    let alpn = |list: &[&str]| {
        let mut wire = Vec::new();
        for p in list {
            wire.push(p.len() as u8);
            wire.extend_from_slice(p.as_bytes());
        }
        ApplicationProtocols::Alpn(wire.into())
    };
    let mut c = Conn::new();
    c.transport = "tls";
    c.alpn = alpn(&["http/1.1", "h2"]);
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(1), "the client's order");
    c.alpn = alpn(&["h3", "h2"]);
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(0));
    c.alpn = alpn(&["h3"]);
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(2));
    let mut c = Conn::new();
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(4), "source port");
    c.remote = sa("192.0.2.1:5001");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(5), "source range");
    c.remote = sa("127.0.0.1:5001");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(3), "loopback");
    c.remote = sa("10.0.0.1:5001");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(3), "same IP as local");
    c.remote = sa("127.0.0.3:5001");
    assert_eq!(
        t.lookup(&c.input()),
        Lookup::Default,
        "only 127.0.0.1 is loopback to Envoy"
    );
    c.remote = sa("203.0.113.9:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Default, "external, no range");
    c.direct = sa("198.51.100.7:1");
    assert_eq!(
        t.lookup(&c.input()),
        Lookup::Chain(6),
        "direct source first"
    );
}

#[test]
fn longest_destination_prefix_and_overlap() {
    let t = table(&[
        FilterChainMatch {
            prefix_ranges: vec![cidr("10.0.0.0/8")],
            ..Default::default()
        },
        FilterChainMatch {
            prefix_ranges: vec![cidr("10.1.0.0/16"), cidr("fd00::/8")],
            ..Default::default()
        },
    ]);
    let mut c = Conn::new();
    c.local = sa("10.1.2.3:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(1));
    c.local = sa("10.2.2.3:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(0));
    c.local = sa("[fd00::1]:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Chain(1));
    c.local = sa("11.0.0.1:1");
    assert_eq!(t.lookup(&c.input()), Lookup::Default);
    let a = FilterChainMatch {
        server_names: names(&["a", "b"]),
        ..Default::default()
    };
    let b = FilterChainMatch {
        server_names: names(&["b"]),
        ..Default::default()
    };
    assert_eq!(ChainTable::new(&[&a, &b]).err(), Some(Overlap { chain: 1 }));
}
