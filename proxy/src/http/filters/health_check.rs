//! `envoy.filters.http.health_check`: a request matching the filter's headers is the server's
//! health check. It is answered here (200, or 503 once `/healthcheck/fail` was posted), or in
//! `pass_through_mode` sent upstream unless the server fails its checks, as Envoy's filter does.
//! Its response names the local cluster (`x-envoy-upstream-healthchecked-cluster`); every
//! response of a failing server says so (`x-envoy-immediate-health-check-fail`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::config::model::HealthCheck;
use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::http::local_reply::LocalReply;
use crate::stream_info::ResponseFlag;

static SERVER: OnceLock<(Arc<AtomicBool>, HeaderValue)> = OnceLock::new();

/// The server's health-check state (`/healthcheck/fail`, `/healthcheck/ok`) and its local
/// cluster's name (the node's `cluster`), set once at start-up.
pub fn set_server(failed: Arc<AtomicBool>, cluster: &str) {
    let name = HeaderValue::from_str(cluster).unwrap_or(HeaderValue::from_static(""));
    let _ = SERVER.set((failed, name));
}

fn failed() -> bool {
    SERVER.get().is_some_and(|(f, _)| f.load(Ordering::Relaxed))
}

static CHECKED_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");
static IMMEDIATE_FAIL: HeaderName = HeaderName::from_static("x-envoy-immediate-health-check-fail");

/// The filter on one stream.
/// Marks a request the health check filter took as a health check.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheckRequest;

#[derive(Debug)]
pub struct HealthCheckFilter {
    config: Arc<HealthCheck>,
    is_check: bool,
}

impl HealthCheckFilter {
    /// The filter for a new stream.
    pub fn new(config: Arc<HealthCheck>) -> Self {
        HealthCheckFilter {
            config,
            is_check: false,
        }
    }
}

impl HttpFilter for HealthCheckFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        self.is_check = crate::http::filter::headers_match(&self.config.headers, head);
        if self.is_check {
            // The stream is a health check (Envoy's `streamInfo().healthCheck(true)`), for
            // `not_health_check_filter`.
            head.extensions.insert(HealthCheckRequest);
        }
        if !self.is_check || (self.config.pass_through && !failed()) {
            return HeadersStatus::Continue;
        }
        let (status, flag, details) = if failed() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(ResponseFlag::FailedLocalHealthCheck),
                "health_check_failed",
            )
        } else {
            (StatusCode::OK, None, "health_check_ok")
        };
        let mut headers = Vec::new();
        if let Some((_, cluster)) = SERVER.get() {
            headers.push((CHECKED_CLUSTER.clone(), cluster.clone()));
        }
        if failed() {
            headers.push((IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true")));
        }
        HeadersStatus::LocalReply(LocalReply {
            status,
            body: Bytes::new(),
            headers,
            mutations: Vec::new(),
            flag,
            details,
            close: false,
            grpc_status: None,
        })
    }

    fn encode_headers(
        &mut self,
        head: &mut http::response::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        if self.is_check {
            if let Some((_, cluster)) = SERVER.get() {
                head.headers
                    .insert(CHECKED_CLUSTER.clone(), cluster.clone());
            }
        }
        if failed() {
            head.headers
                .insert(IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true"));
        }
        HeadersStatus::Continue
    }
}
