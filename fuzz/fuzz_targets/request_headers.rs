//! What the connection manager, the router and the filters read from request headers and
//! write back: `grpc-timeout` (a route's stream duration), the trace decision packed into
//! `x-request-id`, `x-forwarded-client-cert` appended to, and header_to_metadata's values
//! (numbers, base64, serialized `google.protobuf.Value`s) rendered as Envoy writes metadata. None may panic; the request id keeps its length
//! and changes at most its 15th character; a parsed `grpc-timeout` is its digits in its unit.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use skiff::config::model::{ForwardClientCert, TraceSampling, XfccDetail, XfccMode};
use skiff::http::conn_manager_utility::{forwarded_client_cert, trace_reason};
use skiff::router::grpc_timeout;
use skiff::stream_info::{CertInfo, TlsInfo};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let (timeout, id, xfcc) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );

    if let Ok(t) = std::str::from_utf8(timeout) {
        if let Some(d) = grpc_timeout(t) {
            let digits: u64 = t[..t.len() - 1].parse().expect("digits");
            assert!(d <= Duration::from_secs(digits.saturating_mul(3600)));
        }
    }

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(id) {
        headers.insert("x-request-id", v);
    }
    if knobs & 1 != 0 {
        headers.insert("x-client-trace-id", HeaderValue::from_static("1"));
    }
    let before = headers.get("x-request-id").map(|v| v.as_bytes().to_vec());
    let sampling = TraceSampling {
        client: u32::from(knobs >> 1 & 3) * 5000,
        random: u32::from(knobs >> 3 & 3) * 5000,
        overall: 10_000,
        pack_trace_reason: knobs & 0x20 == 0,
        use_request_id: knobs & 0x40 == 0,
    };
    trace_reason(&sampling, None, &mut headers, knobs & 0x80 != 0);
    let after = headers.get("x-request-id").map(|v| v.as_bytes().to_vec());
    match (before, after) {
        (Some(b), Some(a)) => {
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(x == y || i == 14, "changed at {i}");
            }
        }
        (b, a) => assert_eq!(b, a),
    }

    if let Ok(v) = HeaderValue::from_bytes(xfcc) {
        headers.insert("x-forwarded-client-cert", v);
    }
    let peer = CertInfo {
        subject: String::from_utf8_lossy(timeout).into_owned(),
        uri_sans: vec![String::from_utf8_lossy(id).into_owned()],
        dns_sans: vec!["a.test".into()],
        der: rest.to_vec(),
        ..CertInfo::default()
    };
    let tls = TlsInfo {
        version: None,
        cipher: None,
        peer: Some(peer),
        peer_intermediates: vec![rest.to_vec()],
        local: None,
    };
    let modes = [
        XfccMode::Sanitize,
        XfccMode::ForwardOnly,
        XfccMode::AppendForward,
        XfccMode::SanitizeSet,
        XfccMode::AlwaysForwardOnly,
    ];
    let x = ForwardClientCert {
        mode: modes[usize::from(knobs) % modes.len()],
        details: vec![
            XfccDetail::Cert,
            XfccDetail::Chain,
            XfccDetail::Subject,
            XfccDetail::Uri,
            XfccDetail::Dns,
        ],
    };
    forwarded_client_cert(&x, &mut headers, Some(&tls));

    // header_to_metadata: the value as each type and encoding, and its rendering.
    if let Ok(text) = std::str::from_utf8(rest) {
        use skiff::config::metadata::header_value;
        use skiff::config::model::MetadataValueType as T;
        for kind in [T::String, T::Number, T::ProtobufValue] {
            for base64 in [false, true] {
                if let Ok(v) = header_value(text, kind, base64) {
                    let _ = v.render();
                }
            }
        }
    }
});
