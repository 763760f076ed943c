//! Any access log format string: parsing and rendering must not panic, with or without the
//! formatter extensions, for a bare record and for one with TLS and upstream details.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::access_log::{Extensions, Format, Render};
use skiff::stream_info::{CertInfo, Connection, StreamInfo, TlsInfo, UpstreamConnection};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The length picks the variant, so every seed stays a plain format string.
    let variant = data.len() % 4;
    let ext = Extensions {
        req_without_query: variant & 1 == 1,
    };
    let Ok(format) = Format::parse_with(text, ext) else {
        return;
    };
    let mut info = StreamInfo::new(
        "127.0.0.1:1".parse().expect("addr"),
        "127.0.0.1:2".parse().expect("addr"),
    );
    if variant & 2 == 2 {
        let cert = CertInfo {
            subject: "CN=a,O=b".into(),
            issuer: "CN=ca".into(),
            uri_sans: vec!["spiffe://x/y".into()],
            dns_sans: vec!["a.test".into(), "*.a.test".into()],
            serial: "0a1b".into(),
            validity: (-1, 4_102_444_800),
            der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
        };
        info.connection = Some(std::sync::Arc::new(Connection {
            id: 7,
            direct_remote: "10.0.0.1:3".parse().ok(),
            requested_server_name: Some("a.test".into()),
            tls: Some(TlsInfo {
                version: Some("TLSv1.3"),
                cipher: Some("TLS_AES_128_GCM_SHA256"),
                peer: Some(cert.clone()),
                peer_intermediates: Vec::new(),
                local: Some(cert),
            }),
            peer_certificate: true,
            listener_metadata: None,
            filter_state: {
                use skiff::config::filter_state::{FilterState, Kind, Object};
                let mut state = FilterState::default();
                state.set(
                    "k",
                    Object {
                        value: "v \"w\"".into(),
                        kind: Kind::String,
                        read_only: false,
                        shared: Default::default(),
                    },
                );
                state
            },
            metadata: None,
        }));
        info.upstream_host = "127.0.0.1:9".parse().ok();
        info.upstream_connection = Some(UpstreamConnection {
            id: 8,
            local: "127.0.0.1:40000".parse().ok(),
            tls_version: Some("TLSv1.2"),
        });
        info.upstream_protocol = Some("HTTP/2");
        info.upstream_transport_failure = Some("delayed connect error: x".into());
        info.path = Some("/a?b=c".into());
        info.response_code = Some(200);
        info.request_done = Some(info.start);
        info.response_started = Some(info.start);
        info.response_done = Some(info.start);
    }
    let mut out = String::new();
    format.render(&info, &mut out);
});
