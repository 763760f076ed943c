use super::*;

const ALL: Options = Options {
    allow_without: false,
    allow_v1: true,
    allow_v2: true,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn header(buf: &[u8], opts: &Options) -> Header<'static> {
    let owned: &'static [u8] = Box::leak(buf.to_vec().into_boxed_slice());
    match parse(owned, opts) {
        Parse::Header(h) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// A v2 header: command, family byte, address block, TLVs.
fn v2(cmd: u8, fam: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut b = V2_SIGNATURE.to_vec();
    b.push(0x20 | cmd);
    b.push(fam);
    let len = (addr.len() + tlvs.len()) as u16;
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(addr);
    b.extend_from_slice(tlvs);
    b
}

fn inet(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&src);
    a.extend_from_slice(&dst);
    a.extend_from_slice(&sp.to_be_bytes());
    a.extend_from_slice(&dp.to_be_bytes());
    a
}

#[test]
fn v1_tcp4_tcp6_unknown() {
    let h = header(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 10010\r\nGET /", &ALL);
    assert_eq!(h.version, Version::V1);
    assert_eq!(h.len, 42);
    assert_eq!(
        h.addresses,
        Some((sa("10.1.2.3:5555"), sa("127.0.0.1:10010")))
    );
    let h = header(b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 65535\r\n", &ALL);
    assert_eq!(
        h.addresses,
        Some((sa("[2001:db8::1]:1"), sa("[::ffff:127.0.0.1]:65535")))
    );
    assert_eq!(header(b"PROXY UNKNOWN\r\n", &ALL).addresses, None);
    let h = header(b"PROXY UNKNOWN ffff:: 1.2.3.4 \xff 2\r\n", &ALL);
    assert_eq!((h.addresses, h.len), (None, 34));
    // Trailing whitespace before the CRLF and leading zeros in ports are accepted, as Envoy.
    assert!(header(b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2 \r\n", &ALL)
        .addresses
        .is_some());
}

#[test]
fn v1_malformed() {
    for bad in [
        &b"PROXY garbage\r\n"[..],
        b"GARBAGE\r\n",
        b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n",
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
        b"PROXY TCP4 0.0.0.0 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 255.255.255.255 1 2\r\n",
        b"PROXY TCP4 224.0.0.1 1.2.3.4 1 2\r\n",
        b"PROXY TCP6 ff02::1 ::1 1 2\r\n",
        b"PROXY\r\n",
    ] {
        assert_eq!(
            parse(bad, &ALL),
            Parse::Error(Some(Version::V1)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn v1_incomplete_then_too_long() {
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4", &ALL),
        Parse::Incomplete { want: INITIAL_READ }
    );
    // A bare LF does not end the line.
    assert!(matches!(
        parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", &ALL),
        Parse::Incomplete { .. }
    ));
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(MAX_V1_LEN + 1, b'x');
    assert_eq!(parse(&long, &ALL), Parse::Error(None));
    long.truncate(MAX_V1_LEN - 2);
    long.extend_from_slice(b"\r\n");
    assert_eq!(header(&long, &ALL).len, MAX_V1_LEN);
    long.insert(20, b'x');
    assert_eq!(parse(&long, &ALL), Parse::Error(Some(Version::V1)));
}

#[test]
fn not_a_header() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n", &ALL), Parse::Error(None));
    // Sixteen bytes decide; fewer wait for a CRLF.
    assert!(matches!(
        parse(b"GET / HTTP/1.1", &ALL),
        Parse::Incomplete { .. }
    ));
    let allow = Options {
        allow_without: true,
        ..ALL
    };
    assert_eq!(parse(b"G", &allow), Parse::NotFound);
    assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n", &allow), Parse::NotFound);
    assert!(matches!(parse(b"PRO", &allow), Parse::Incomplete { .. }));
    assert!(matches!(
        parse(b"\r\n\r\n", &allow),
        Parse::Incomplete { .. }
    ));
    // With v1 disallowed, a v1 line is not a header at all.
    let v2_only = Options {
        allow_v1: false,
        ..allow
    };
    assert_eq!(parse(b"PROXY UNKNOWN\r\n", &v2_only), Parse::NotFound);
}

#[test]
fn disallowed_versions() {
    let no_v1 = Options {
        allow_v1: false,
        ..ALL
    };
    assert_eq!(
        parse(b"PROXY UNKNOWN\r\n", &no_v1),
        Parse::Denied(Version::V1)
    );
    let no_v2 = Options {
        allow_v2: false,
        ..ALL
    };
    let b = v2(1, 0x11, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[]);
    assert_eq!(parse(&b, &no_v2), Parse::Denied(Version::V2));
}

#[test]
fn v2_inet_inet6_local_and_tlvs() {
    let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0xE0, 0x00, 0x00];
    let mut b = v2(
        1,
        0x11,
        &inet([10, 1, 2, 3], [127, 0, 0, 1], 5555, 80),
        &tlvs,
    );
    b.extend_from_slice(b"payload");
    let h = header(&b, &ALL);
    assert_eq!(h.version, Version::V2);
    assert_eq!(h.len, 16 + 12 + tlvs.len());
    assert_eq!(h.addresses, Some((sa("10.1.2.3:5555"), sa("127.0.0.1:80"))));
    assert_eq!(
        h.tlvs.collect::<Vec<_>>(),
        vec![(1, &b"h2"[..]), (0xE0, &b""[..])]
    );

    let mut a = Vec::new();
    a.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
    a.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&7u16.to_be_bytes());
    a.extend_from_slice(&8u16.to_be_bytes());
    // UDP over IPv6 is accepted too, as Envoy does.
    let h = header(&v2(1, 0x22, &a, &[]), &ALL);
    assert_eq!(h.addresses, Some((sa("[2001:db8::1]:7"), sa("[::1]:8"))));

    // LOCAL: any family, the block is skipped, its TLVs unread.
    let h = header(&v2(0, 0x00, &[], &[0xff]), &ALL);
    assert_eq!((h.addresses, h.len), (None, 17));
}

#[test]
fn v2_malformed() {
    let addr = inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    let cases: Vec<Vec<u8>> = vec![
        // version 1 in the binary header
        {
            let mut b = v2(1, 0x11, &addr, &[]);
            b[12] = 0x11;
            b
        },
        // UNSPEC family with PROXY, and AF_UNIX
        v2(1, 0x00, &[], &[]),
        v2(1, 0x31, &[0; 216], &[]),
        // unknown command
        v2(2, 0x11, &addr, &[]),
        // UNSPEC transport
        v2(1, 0x10, &addr, &[]),
        // address block shorter than the family needs
        v2(1, 0x11, &addr[..8], &[]),
        // truncated TLVs
        v2(1, 0x11, &addr, &[0x01]),
        v2(1, 0x11, &addr, &[0x01, 0x00]),
        v2(1, 0x11, &addr, &[0x01, 0x00, 0x02, b'x']),
        // not unicast
        v2(1, 0x11, &inet([0, 0, 0, 0], [5, 6, 7, 8], 1, 2), &[]),
    ];
    for b in cases {
        assert_eq!(parse(&b, &ALL), Parse::Error(Some(Version::V2)), "{b:x?}");
    }
}

#[test]
fn v2_incomplete_asks_for_the_whole_header() {
    let tlvs = vec![0x02; 3 + 300];
    let mut tl = vec![0x02, 0x01, 0x2c];
    tl.extend_from_slice(&tlvs[..300]);
    let b = v2(1, 0x11, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &tl);
    assert!(matches!(parse(&b[..10], &ALL), Parse::Incomplete { .. }));
    assert_eq!(
        parse(&b[..INITIAL_READ], &ALL),
        Parse::Incomplete { want: b.len() }
    );
    assert_eq!(header(&b, &ALL).len, b.len());
}

#[test]
fn any_prefix_of_a_header_is_incomplete() {
    let v1 = b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 10010\r\n".to_vec();
    let v2b = v2(
        1,
        0x11,
        &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
        &[1, 0, 1, 9],
    );
    for whole in [v1, v2b] {
        for n in 1..whole.len() {
            assert!(
                matches!(parse(&whole[..n], &ALL), Parse::Incomplete { .. }),
                "{n}: {:?}",
                parse(&whole[..n], &ALL)
            );
        }
        assert!(matches!(parse(&whole, &ALL), Parse::Header(_)));
    }
}
