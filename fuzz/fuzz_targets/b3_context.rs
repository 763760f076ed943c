//! A request's B3 trace context (`x-b3-*`, or the single `b3` header) and a caller's
//! `x-envoy-decorator-operation`, read by the Zipkin tracer: starting a span from any values
//! must not panic, and what goes upstream is well-formed B3 (hex ids of 16 or 32 digits, a
//! sampled flag of 0 or 1).
#![no_main]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use skiff::config::trace::{HttpTracer, Provider, Zipkin};
use skiff::trace::Span;

const NAMES: [&str; 7] = [
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-envoy-decorator-operation",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(rest.split(|b| *b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    let tracer = Arc::new(HttpTracer {
        provider: Provider::Zipkin(Arc::new(Zipkin {
            cluster: "zipkin".into(),
            endpoint: "/api/v2/spans".into(),
            hostname: "zipkin".into(),
            trace_id_128bit: flags & 1 != 0,
            shared_span_context: flags & 2 != 0,
        })),
        custom_tags: Vec::new(),
        max_path_tag_length: 256,
        egress: flags & 4 != 0,
        spawn_upstream_span: flags & 16 != 0,
        operation: None,
        upstream_operation: None,
    });
    let span = Span::start(
        &tracer,
        &mut headers,
        flags & 8 != 0,
        "host",
        (Some(("op", true)), None),
    );
    let Some(context) = span.context() else {
        return;
    };
    let mut up = HeaderMap::new();
    context.inject(&mut up);
    let hex = |v: &HeaderValue, lens: &[usize]| {
        let s = v.to_str().expect("ascii");
        assert!(
            lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()),
            "{s}"
        );
    };
    if let Some(b3) = up.get("b3") {
        let text = b3.to_str().expect("ascii");
        let parts: Vec<&str> = text.split('-').collect();
        assert!(parts.len() == 3 || parts.len() == 4, "{text}");
        assert!(parts[2] == "0" || parts[2] == "1", "{text}");
    } else {
        hex(&up["x-b3-traceid"], &[16, 32]);
        hex(&up["x-b3-spanid"], &[16]);
        if let Some(p) = up.get("x-b3-parentspanid") {
            hex(p, &[16]);
        }
        let s = &up["x-b3-sampled"];
        assert!(s == "0" || s == "1");
    }
});
