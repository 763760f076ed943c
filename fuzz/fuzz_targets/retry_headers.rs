//! The `x-envoy-retry-*` headers of an internal request and a route's `retry_on`: reading them
//! and deciding on a response must not panic, and a route's `retry_on` takes every condition
//! the HTTP and gRPC header forms take. A response's rate-limit reset headers give a wait within
//! the policy's maximum, or none.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use skiff::http::filters::retry::RetryState;
use skiff::router::retry::{RateLimitedBackOff, ResetFormat, RetryHeaders, RetryOn};

const NAMES: [&str; 8] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "retry-after",
    "x-ratelimit-reset",
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
    let reset = RateLimitedBackOff {
        reset_headers: vec![
            (
                http::HeaderName::from_static("retry-after"),
                ResetFormat::Seconds,
            ),
            (
                http::HeaderName::from_static("x-ratelimit-reset"),
                ResetFormat::UnixTimestamp,
            ),
        ],
        max_interval: std::time::Duration::from_secs(300),
    };
    let now = std::time::Duration::from_secs(1_700_000_000);
    if let Some(d) = reset.interval(&headers, now) {
        assert!(d <= reset.max_interval);
        let w = RateLimitedBackOff::wait(d, u64::from(status) * 7919);
        assert!(w >= d && w <= d + d / 2 + std::time::Duration::from_millis(1));
    }
    let read = RetryHeaders::read(&headers);
    if let Some(state) = RetryState::new(None, read.as_ref(), &headers) {
        let status = 200 + u16::from(status) * 2;
        let _ = state.would_retry_headers(status, &headers);
    }
});
