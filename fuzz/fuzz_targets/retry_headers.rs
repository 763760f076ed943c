//! The `x-envoy-retry-*` headers of an internal request and a route's `retry_on`: reading them
//! and deciding on a response must not panic, and a route's `retry_on` takes every condition
//! the HTTP and gRPC header forms take.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use skiff::http::filters::retry::RetryState;
use skiff::router::retry::{RetryHeaders, RetryOn};

const NAMES: [&str; 6] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

fuzz_target!(|data: &[u8]| {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(rest.split(|b| *b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
        let text = String::from_utf8_lossy(value);
        let (http, _) = RetryOn::parse_http(&text);
        let (grpc, _) = RetryOn::parse_grpc(&text);
        let (config, _) = RetryOn::parse_config(&text);
        assert_eq!(config, http | grpc);
    }
    let read = RetryHeaders::read(&headers);
    if let Some(state) = RetryState::new(None, read.as_ref(), &headers) {
        let status = 200 + u16::from(status) * 2;
        let _ = state.would_retry_headers(status, &headers);
    }
});
