//! `envoy.filters.http.cors`: answers CORS preflight requests and adds the CORS headers to
//! responses to allowed origins, by the route's, virtual host's and route table's policies
//! (each field from the most specific policy that sets it), as Envoy's filter does.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::config::model::CorsPolicy;
use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};

/// The filter on one worker: `http.<stat_prefix>.cors.origin_valid|origin_invalid`.
#[derive(Debug)]
pub struct Factory {
    origin_valid: Counter,
    origin_invalid: Counter,
}

impl Factory {
    /// The filter of the connection manager with `stat_prefix`.
    pub fn new(shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("http.{stat_prefix}.cors.{n}"));
        Factory {
            origin_valid: c("origin_valid"),
            origin_invalid: c("origin_invalid"),
        }
    }

    /// The filter of a stream whose route has these policies, the most specific first.
    pub fn filter(
        &self,
        policies: Vec<Arc<CorsPolicy>>,
        selection: &crate::http::filters::router::Selection,
    ) -> CorsFilter {
        // Only a route that forwards (Envoy's route entry) has a policy in effect.
        let forwards = selection
            .route()
            .is_some_and(|r| matches!(r.action, crate::router::Action::Forward(_)));
        let first = policies.first().filter(|_| forwards);
        let enabled = first.is_some_and(|p| {
            p.filter_enabled
                .as_ref()
                .is_none_or(|f| f.enabled(&selection.runtime, selection.random))
        });
        let shadow = first.is_some_and(|p| {
            p.shadow_enabled
                .as_ref()
                .is_some_and(|f| f.enabled(&selection.runtime, selection.random))
        });
        CorsFilter {
            policies,
            enabled,
            shadow,
            valid: self.origin_valid.clone(),
            invalid: self.origin_invalid.clone(),
            latched: None,
        }
    }
}

/// The filter on one stream.
pub struct CorsFilter {
    policies: Vec<Arc<CorsPolicy>>,
    enabled: bool,
    shadow: bool,
    valid: Counter,
    invalid: Counter,
    /// The allowed origin of a CORS request, for the response.
    latched: Option<HeaderValue>,
}

impl CorsFilter {
    /// The first policy's value that is set.
    fn pick<'a, T: ?Sized>(&'a self, f: impl Fn(&'a CorsPolicy) -> Option<&'a T>) -> Option<&'a T> {
        self.policies.iter().find_map(|p| f(p))
    }

    fn text(&self, f: impl Fn(&CorsPolicy) -> &String) -> &str {
        self.pick(|p| Some(f(p)).filter(|s| !s.is_empty()))
            .map_or("", String::as_str)
    }

    fn flag(&self, f: impl Fn(&CorsPolicy) -> Option<bool>) -> Option<bool> {
        self.policies.iter().find_map(|p| f(p))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.pick(|p| Some(&p.allow_origins).filter(|o| !o.is_empty()))
            .is_some_and(|list| list.iter().any(|m| m.matches("*") || m.matches(origin)))
    }
}

fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

impl HttpFilter for CorsFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _end: bool) -> HeadersStatus {
        if !self.enabled && !self.shadow {
            return HeadersStatus::Continue;
        }
        let Some(origin) = head
            .headers
            .get(http::header::ORIGIN)
            .filter(|v| !v.is_empty())
            .cloned()
        else {
            return HeadersStatus::Continue;
        };
        let allowed = self.origin_allowed(&String::from_utf8_lossy(origin.as_bytes()));
        if allowed {
            self.valid.inc();
            self.latched = Some(origin.clone());
        } else {
            self.invalid.inc();
        }
        if !self.enabled {
            self.latched = None;
            return HeadersStatus::Continue;
        }
        let requested_method = head
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|v| !v.is_empty())
            .cloned();
        let Some(requested_method) = requested_method.filter(|_| head.method == Method::OPTIONS)
        else {
            return HeadersStatus::Continue;
        };
        // A preflight: OPTIONS with an origin and the method asked for.
        if !allowed
            && self
                .flag(|p| p.forward_not_matching_preflights)
                .unwrap_or(true)
        {
            return HeadersStatus::Continue;
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if allowed {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
        }
        if self.flag(|p| p.allow_credentials) == Some(true) {
            headers.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        let methods = self.text(|p| &p.allow_methods);
        if methods == "*" {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_METHODS, requested_method));
        } else if let Some(v) = value(methods).filter(|_| !methods.is_empty()) {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        let allow_headers = self.text(|p| &p.allow_headers);
        if allow_headers == "*" {
            let asked = head
                .headers
                .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static(""));
            headers.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, asked));
        } else if let Some(v) = value(allow_headers).filter(|_| !allow_headers.is_empty()) {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        let max_age = self.text(|p| &p.max_age);
        if let Some(v) = value(max_age).filter(|_| !max_age.is_empty()) {
            headers.push((http::header::ACCESS_CONTROL_MAX_AGE, v));
        }
        let private = head
            .headers
            .get("access-control-request-private-network")
            .is_some_and(|v| v.as_bytes() == b"true");
        if private && self.flag(|p| p.allow_private_network_access) == Some(true) {
            headers.push((
                HeaderName::from_static("access-control-allow-private-network"),
                HeaderValue::from_static("true"),
            ));
        }
        HeadersStatus::LocalReply(LocalReply {
            status: StatusCode::OK,
            body: bytes::Bytes::new(),
            headers,
            mutations: Vec::new(),
            flag: None,
            details: "cors_response",
            close: false,
            grpc_status: None,
        })
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _end: bool) -> HeadersStatus {
        let Some(origin) = self.latched.clone() else {
            return HeadersStatus::Continue;
        };
        head.headers
            .insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.flag(|p| p.allow_credentials) == Some(true) {
            head.headers.insert(
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let expose = self.text(|p| &p.expose_headers);
        if let Some(v) = value(expose).filter(|_| !expose.is_empty()) {
            head.headers
                .insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
        HeadersStatus::Continue
    }
}
