use super::*;

const OPENSSL_SNI_ALPN: &[u8] = include_bytes!("../testdata/openssl_sni_alpn.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("../testdata/openssl_no_sni.bin");
const CURL_TLS12: &[u8] = include_bytes!("../testdata/curl_tls12.bin");

fn hello(buf: &[u8]) -> ClientHello {
    match parse(buf) {
        Parse::Tls(h) => h,
        other => panic!("{other:?}"),
    }
}

fn names(h: &ClientHello) -> Vec<String> {
    h.alpn
        .as_deref()
        .map(|l| {
            alpn_names(l)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A ClientHello body with `version` and `extensions` (type, data).
fn body(version: u16, extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = version.to_be_bytes().to_vec();
    b.extend_from_slice(&[7; 32]);
    b.push(0); // session id
    b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
    b.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    for (t, d) in extensions {
        ext.extend_from_slice(&t.to_be_bytes());
        ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
        ext.extend_from_slice(d);
    }
    b.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    b.extend_from_slice(&ext);
    b
}

/// The handshake message for `body`, in records of at most `fragment` bytes.
fn records(msg_type: u8, body: &[u8], fragment: usize) -> Vec<u8> {
    let mut msg = vec![msg_type];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    let mut out = Vec::new();
    for chunk in msg.chunks(fragment) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn sni(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut d = (entry.len() as u16).to_be_bytes().to_vec();
    d.extend_from_slice(&entry);
    d
}

fn alpn(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for n in names {
        list.push(n.len() as u8);
        list.extend_from_slice(n);
    }
    let mut d = (list.len() as u16).to_be_bytes().to_vec();
    d.extend_from_slice(&list);
    d
}

#[test]
fn real_client_hellos() {
    let h = hello(OPENSSL_SNI_ALPN);
    assert_eq!(h.server_name.as_deref(), Some("a.example.com"));
    assert_eq!(names(&h), ["h2", "http/1.1"]);
    let h = hello(OPENSSL_NO_SNI);
    assert_eq!((h.server_name, h.alpn), (None, None));
    assert_eq!(
        hello(CURL_TLS12).server_name.as_deref(),
        Some("b.example.com")
    );
}

#[test]
fn every_prefix_is_incomplete() {
    for n in 0..OPENSSL_SNI_ALPN.len() {
        assert_eq!(parse(&OPENSSL_SNI_ALPN[..n]), Parse::Incomplete, "{n}");
    }
}

#[test]
fn hello_split_across_records() {
    let b = body(
        0x0303,
        &[(0, sni(b"split.example.com")), (16, alpn(&[b"h2"]))],
    );
    for fragment in [1, 3, 4, 5, 17, 100] {
        let wire = records(1, &b, fragment);
        let h = hello(&wire);
        assert_eq!(h.server_name.as_deref(), Some("split.example.com"));
        assert_eq!(names(&h), ["h2"]);
        for n in 0..wire.len() {
            assert_eq!(parse(&wire[..n]), Parse::Incomplete, "{fragment}/{n}");
        }
    }
}

#[test]
fn plaintext_is_not_tls() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
    assert_eq!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parse::NotTls);
    // Five bytes decide: fewer wait, as BoringSSL's record layer does.
    assert_eq!(parse(b"GET "), Parse::Incomplete);
    assert_eq!(parse(b"\x16\x03"), Parse::Incomplete);
}

#[test]
fn refused_hellos_are_not_tls() {
    let ok = body(0x0303, &[(0, sni(b"a"))]);
    let cases: Vec<Vec<u8>> = vec![
        // not a handshake record, not a ClientHello, a record too long
        {
            let mut r = records(1, &ok, 1000);
            r[0] = 23;
            r
        },
        records(2, &ok, 1000),
        vec![22, 3, 1, 0x41, 0x41],
        // a message longer than BoringSSL takes
        vec![22, 3, 1, 0, 4, 1, 0, 0x40, 0x01],
        // a session id longer than 32 bytes
        {
            let mut b = body(0x0303, &[]);
            b[34] = 33;
            b.splice(35..35, [0u8; 33]);
            records(1, &b, 1000)
        },
        // duplicate extension
        records(1, &body(0x0303, &[(5, vec![]), (5, vec![])]), 1000),
        // SNI: empty name, other type, two names, NUL, trailing bytes
        records(1, &body(0x0303, &[(0, sni(b""))]), 1000),
        records(1, &body(0x0303, &[(0, vec![0, 4, 1, 0, 1, b'a'])]), 1000),
        records(
            1,
            &body(0x0303, &[(0, vec![0, 8, 0, 0, 1, b'a', 0, 0, 1, b'b'])]),
            1000,
        ),
        records(1, &body(0x0303, &[(0, sni(b"a\0b"))]), 1000),
        records(
            1,
            &body(0x0303, &[(0, [sni(b"a"), vec![0]].concat())]),
            1000,
        ),
        // extensions block with trailing garbage
        {
            let mut b = body(0x0303, &[]);
            b.push(0);
            records(1, &b, 1000)
        },
    ];
    for c in cases {
        assert_eq!(parse(&c), Parse::NotTls, "{c:x?}");
    }
}

/// Observed on Envoy 1.40: the offered versions do not matter, the legacy version does.
#[test]
fn versions() {
    for v in [
        vec![2, 0x03, 0x00],
        vec![0],
        vec![3, 3, 4, 0],
        vec![2, 3, 4, 0],
    ] {
        let b = body(0x0303, &[(43, v.clone()), (0, sni(b"a"))]);
        assert!(
            matches!(parse(&records(1, &b, 1000)), Parse::Tls(_)),
            "{v:x?}"
        );
    }
    for legacy in [0x0300, 0x0200, 0x0400] {
        let b = body(legacy, &[(0, sni(b"a")), (43, vec![2, 3, 4])]);
        assert_eq!(
            parse(&records(1, &b, 1000)),
            Parse::BadVersion { server_name: true }
        );
    }
    assert_eq!(
        parse(&records(1, &body(0x0300, &[]), 1000)),
        Parse::BadVersion { server_name: false }
    );
}

/// A record longer than TLS allows is refused from its header once it cannot be a protected
/// record either; up to that, TLS waits for it.
#[test]
fn record_lengths() {
    assert_eq!(parse(&[22, 3, 1, 0x41, 0x41]), Parse::NotTls);
    assert_eq!(parse(&[22, 3, 1, 0x40, 0x01, 1]), Parse::Incomplete);
    let mut long = vec![22, 3, 1, 0x40, 0x01];
    long.resize(5 + 16385, 1);
    assert_eq!(parse(&long), Parse::NotTls);
}

#[test]
fn tls13_only_and_no_extensions_are_tls() {
    let h = hello(&records(
        1,
        &body(0x0303, &[(43, vec![2, 0x03, 0x04])]),
        1000,
    ));
    assert_eq!(h, ClientHello::default());
    let mut b = body(0x0301, &[]);
    b.truncate(b.len() - 2); // no extensions block at all
    assert_eq!(hello(&records(1, &b, 1000)), ClientHello::default());
}

#[test]
fn malformed_alpn_is_no_alpn() {
    for bad in [
        vec![0, 0],
        vec![0, 4, 2, b'h', b'2'],
        vec![0, 3, 3, b'h', b'2'],
        vec![0, 3, 0, 1, b'x'],
        [alpn(&[b"h2"]), vec![0]].concat(),
    ] {
        let h = hello(&records(1, &body(0x0303, &[(16, bad.clone())]), 1000));
        assert_eq!(h.alpn, None, "{bad:x?}");
    }
}
