//! `envoy.filters.http.ext_authz`: each request waits for an authorization service's verdict
//! (a gRPC `envoy.service.auth.v3.Authorization/Check`, or a plain HTTP request) sent through
//! the worker's pools to the service's cluster. Allowed, it goes on with the headers the
//! service set, appended or removed; denied, it is answered with the service's status, headers
//! and body (flag UAEX); a failed check lets it through under `failure_mode_allow`, or answers
//! `status_on_error`. Counted as Envoy counts it: `http.<prefix>.ext_authz.*`, and
//! `cluster.<route cluster>.ext_authz.*` with the denials' statuses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3 as pb;
use http::{HeaderName, HeaderValue};
use prost::Message;

use crate::config::model::{AuthzService, ExtAuthz, ExtAuthzPerRoute, HttpAuthz, StringMatch};
use crate::http::filter::{HeadersStatus, HttpFilter, Resume, StreamContext};
use crate::http::filters::router::RouteRef;
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};
use crate::stream_info::ResponseFlag;
use crate::upstream::Cluster;
use crate::worker::Worker;

const METHOD: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Says whether the body a check carries is cut short.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// `http.<prefix>.ext_authz.[<stat_prefix>.]*`, as Envoy makes them all at once.
#[derive(Debug)]
struct Stats {
    ok: Counter,
    denied: Counter,
    error: Counter,
    disabled: Counter,
    failure_mode_allowed: Counter,
}

/// The filter on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<ExtAuthz>,
    shard: Arc<Shard>,
    stats: Rc<Stats>,
}

impl Factory {
    /// The filter for `config` in the connection manager of `stat_prefix`.
    pub fn new(config: Arc<ExtAuthz>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let prefix = if config.stat_prefix.is_empty() {
            format!("http.{stat_prefix}.ext_authz.")
        } else {
            format!("http.{stat_prefix}.ext_authz.{}.", config.stat_prefix)
        };
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        // Envoy's other counters (shadow mode, limits, metadata) stay at zero in skiff.
        for n in [
            "filter_state_name_collision",
            "ignored_dynamic_metadata",
            "invalid",
            "omitted_response_headers",
            "request_header_limits_reached",
            "response_header_limits_reached",
            "shadow_denied",
            "shadow_error",
        ] {
            c(n);
        }
        Factory {
            stats: Rc::new(Stats {
                ok: c("ok"),
                denied: c("denied"),
                error: c("error"),
                disabled: c("disabled"),
                failure_mode_allowed: c("failure_mode_allowed"),
            }),
            config,
            shard: shard.clone(),
        }
    }

    /// The filter for one stream: `per_route` are the route's, its virtual host's and its
    /// route table's `ExtAuthzPerRoute`, the most specific first.
    pub fn filter(
        self: &Rc<Self>,
        per_route: Vec<Arc<ExtAuthzPerRoute>>,
        cx: &StreamContext<'_>,
    ) -> ExtAuthzFilter {
        // The most specific says whether the route is checked; context extensions merge, the
        // more specific winning a key.
        let disabled = matches!(
            per_route.first().map(|p| &**p),
            Some(ExtAuthzPerRoute::Disabled)
        );
        let skip_body = matches!(
            per_route.first().map(|p| &**p),
            Some(ExtAuthzPerRoute::Check {
                disable_request_body_buffering: true,
                ..
            })
        );
        let mut extensions: Vec<(String, String)> = Vec::new();
        for p in per_route.iter().rev() {
            if let ExtAuthzPerRoute::Check {
                extensions: ext, ..
            } = &**p
            {
                for (k, v) in ext {
                    match extensions.iter_mut().find(|(x, _)| x == k) {
                        Some(e) => e.1 = v.clone(),
                        None => extensions.push((k.clone(), v.clone())),
                    }
                }
            }
        }
        ExtAuthzFilter {
            factory: self.clone(),
            disabled,
            skip_body,
            metadata: cx.metadata.cloned(),
            extensions,
            route: cx.selection.route_ref(),
            worker: cx.worker.clone(),
            peer: cx.downstream.peer,
            local: cx.downstream.local,
            runtime: cx.selection.runtime.clone(),
            random: cx.selection.random,
            added: Rc::default(),
        }
    }
}

/// The filter on one stream.
pub struct ExtAuthzFilter {
    factory: Rc<Factory>,
    disabled: bool,
    /// The route's `disable_request_body_buffering`.
    skip_body: bool,
    /// The stream's dynamic metadata (`filter_enabled_metadata` reads it).
    metadata: Option<crate::stream_info::DynamicMetadata>,
    extensions: Vec<(String, String)>,
    route: Option<RouteRef>,
    worker: Rc<Worker>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    runtime: Arc<crate::config::runtime::Values>,
    random: u64,
    /// Headers the service adds to the response.
    added: Rc<RefCell<Vec<(HeaderName, HeaderValue)>>>,
}

/// What the service said.
enum Verdict {
    Ok(Changes),
    Denied {
        status: http::StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
    Error,
}

/// What an allowed request changes.
#[derive(Default)]
struct Changes {
    set: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    response: Vec<(HeaderName, HeaderValue)>,
}

fn any_match(list: &[StringMatch], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

impl ExtAuthzFilter {
    /// The cluster the route sends the request to, if it exists.
    fn route_cluster(&self, head: &http::request::Parts) -> Option<Rc<Cluster>> {
        let name = self.route.as_ref()?.cluster(&head.headers, &self.runtime)?;
        self.worker.clusters.get(name)
    }

    /// Whether a header of the request goes to the service.
    fn sends(&self, name: &str, http: bool) -> bool {
        let c = &self.factory.config;
        if any_match(&c.disallowed_headers, name) {
            return false;
        }
        match &c.allowed_headers {
            Some(list) if any_match(list, name) => true,
            // The HTTP service always gets these (its method and path are the request's own).
            _ if http => matches!(name, "authorization" | "host" | "content-length"),
            Some(_) => false,
            None => true,
        }
    }

    /// A gRPC check's request, with the body read for it.
    fn check_request(&self, head: &http::request::Parts, body: Option<&Bytes>) -> pb::CheckRequest {
        let mut headers: HashMap<String, String> = HashMap::new();
        let view = crate::http::filter::request_view(head);
        let pseudo = [
            (":authority", view.authority),
            (":method", view.method),
            (":path", view.path),
            (":scheme", view.scheme),
        ];
        for (k, v) in pseudo {
            if self.sends(k, false) {
                headers.insert(k.to_string(), v.to_string());
            }
        }
        for (k, v) in &head.headers {
            // The host is `:authority` in Envoy's header map; a client's partial-body header
            // would pass for the proxy's.
            if k == http::header::HOST || k == PARTIAL_BODY || !self.sends(k.as_str(), false) {
                continue;
            }
            let v = String::from_utf8_lossy(v.as_bytes());
            headers
                .entry(k.as_str().to_string())
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(&v);
                })
                .or_insert_with(|| v.into_owned());
        }
        let address = |a: std::net::SocketAddr| {
            Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                        envoy_types::pb::envoy::config::core::v3::SocketAddress {
                            address: a.ip().to_string(),
                            port_specifier: Some(
                                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                                    u32::from(a.port()),
                                ),
                            ),
                            ..Default::default()
                        },
                    ),
                ),
            })
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // The body bytes received so far: those read for the check.
        let size = body.map_or(0, |b| b.len() as i64);
        let (mut text, mut raw) = (String::new(), Vec::new());
        if let Some((data, partial)) = self.body_part(body) {
            headers.insert(PARTIAL_BODY.to_string(), partial.to_string());
            match self.factory.config.with_request_body {
                Some(b) if b.pack_as_bytes => raw = data.to_vec(),
                _ => text = String::from_utf8_lossy(&data).into_owned(),
            }
        }
        // Envoy always sends both metadata contexts, empty when nothing is asked for.
        let mut route_metadata = envoy_types::pb::envoy::config::core::v3::Metadata::default();
        if let Some(r) = &self.route {
            let namespaces = &self.factory.config.route_metadata_namespaces;
            route_metadata.filter_metadata = r
                .route()
                .metadata
                .filter_metadata
                .iter()
                .filter(|(k, _)| namespaces.contains(k))
                .map(|(k, v)| (k.clone(), crate::config::metadata::struct_to_pb(v)))
                .collect();
        }
        pb::CheckRequest {
            attributes: Some(pb::AttributeContext {
                source: Some(pb::attribute_context::Peer {
                    address: address(self.peer),
                    ..Default::default()
                }),
                destination: Some(pb::attribute_context::Peer {
                    address: address(self.local),
                    ..Default::default()
                }),
                request: Some(pb::attribute_context::Request {
                    time: Some(envoy_types::pb::google::protobuf::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    }),
                    http: Some(pb::attribute_context::HttpRequest {
                        id: self.random.to_string(),
                        method: view.method.to_string(),
                        headers,
                        path: view.path.to_string(),
                        host: view.authority.to_string(),
                        scheme: view.scheme.to_string(),
                        size,
                        protocol: protocol(head.version).to_string(),
                        body: text,
                        raw_body: raw,
                        ..Default::default()
                    }),
                }),
                context_extensions: self.extensions.iter().cloned().collect(),
                metadata_context: Some(Default::default()),
                route_metadata_context: Some(route_metadata),
                ..Default::default()
            }),
        }
    }

    /// The part of the body a check carries (at most `max_request_bytes`), and whether that is
    /// less than what was read.
    fn body_part(&self, body: Option<&Bytes>) -> Option<(Bytes, bool)> {
        let body = body?;
        let max = self.factory.config.with_request_body?.max_request_bytes as usize;
        let n = body.len().min(max);
        Some((body.slice(..n), n != body.len()))
    }

    /// An HTTP check's request head.
    fn http_request(
        &self,
        h: &HttpAuthz,
        head: &http::request::Parts,
        body: Option<&Bytes>,
    ) -> Option<(http::request::Parts, Bytes)> {
        let part = self.body_part(body);
        let path = match &h.path_override {
            Some(p) => p.clone(),
            None => format!(
                "{}{}",
                h.path_prefix,
                head.uri.path_and_query().map_or("/", |p| p.as_str())
            ),
        };
        let authority = crate::http::conn_manager::authority(head).unwrap_or("");
        let mut b = http::Request::builder()
            .method(head.method.clone())
            .uri(path)
            .header(http::header::HOST, authority)
            .header(
                http::header::CONTENT_LENGTH,
                part.as_ref().map_or(0, |(d, _)| d.len()).to_string(),
            )
            .header("x-envoy-internal", "true")
            .header(
                "x-envoy-expected-rq-timeout-ms",
                // What the router expects of each try: a retried check's per-try timeout.
                h.retry
                    .as_ref()
                    .and_then(|r| r.per_try_timeout)
                    .filter(|t| *t < self.factory.config.timeout)
                    .unwrap_or(self.factory.config.timeout)
                    .as_millis()
                    .to_string(),
            );
        for (k, v) in &head.headers {
            if k != http::header::HOST
                && k != http::header::CONTENT_LENGTH
                && k != PARTIAL_BODY
                && self.sends(k.as_str(), true)
            {
                b = b.header(k, v);
            }
        }
        for (k, v) in &h.headers_to_add {
            b = b.header(k, v);
        }
        if let Some((_, partial)) = &part {
            b = b.header(PARTIAL_BODY, if *partial { "true" } else { "false" });
        }
        let body = part.map(|(d, _)| d).unwrap_or_default();
        Some((b.body(()).ok()?.into_parts().0, body))
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl ExtAuthzFilter {
    /// Whether `filter_enabled` and `filter_enabled_metadata` let the filter run.
    fn enabled(&self) -> bool {
        let c = &self.factory.config;
        if let Some(f) = &c.enabled {
            if !f.enabled(&self.runtime, fastrand::u64(..)) {
                return false;
            }
        }
        match &c.enabled_metadata {
            None => true,
            Some(m) => match &self.metadata {
                Some(md) => md.with(|md| m.matches(Some(md))),
                None => m.matches(None),
            },
        }
    }

    /// Sends the check (with the body read for it) and waits for the verdict.
    fn check(&mut self, head: &http::request::Parts, body: Option<&Bytes>) -> HeadersStatus {
        let c = self.factory.config.clone();
        let route_cluster = self.route_cluster(head);
        // `cluster.<route cluster>.ext_authz.*`, made when first counted (as Envoy's).
        let cluster_stats = route_cluster.as_ref().map(|cl| ClusterCounter {
            shard: self.factory.shard.clone(),
            prefix: if c.stat_prefix.is_empty() {
                format!("cluster.{}.ext_authz.", cl.name)
            } else {
                format!("cluster.{}.ext_authz.{}.", cl.name, c.stat_prefix)
            },
        });
        let stats = self.factory.stats.clone();
        let worker = self.worker.clone();
        let added = self.added.clone();
        let call: std::pin::Pin<Box<dyn std::future::Future<Output = Verdict>>> = match &c.service {
            AuthzService::Grpc { cluster, .. } => {
                let request = self.check_request(head, body);
                let service = worker.clusters.get(cluster);
                let config = c.clone();
                Box::pin(async move {
                    let AuthzService::Grpc {
                        authority,
                        metadata,
                        ..
                    } = &config.service
                    else {
                        return Verdict::Error;
                    };
                    match service {
                        Some(s) => {
                            grpc_check(&worker, &s, (authority, metadata), &request, config.timeout)
                                .await
                        }
                        None => Verdict::Error,
                    }
                })
            }
            AuthzService::Http(h) => {
                let request = self.http_request(h, head, body);
                let service = worker.clusters.get(&h.cluster);
                let config = c.clone();
                Box::pin(async move {
                    let AuthzService::Http(h) = &config.service else {
                        return Verdict::Error;
                    };
                    match (service, request) {
                        (Some(s), Some(r)) => http_check(&worker, &s, h, r, config.timeout).await,
                        _ => Verdict::Error,
                    }
                })
            }
        };
        HeadersStatus::StopIteration(Box::pin(async move {
            let verdict = call.await;
            decide(
                verdict,
                &c,
                &stats,
                cluster_stats.as_ref(),
                route_cluster.as_deref(),
                &added,
            )
        }))
    }
}

impl HttpFilter for ExtAuthzFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, end: bool) -> HeadersStatus {
        // No route, or a route that turns the filter off: no check.
        if self.disabled || self.route.is_none() {
            return HeadersStatus::Continue;
        }
        let c = self.factory.config.clone();
        if !self.enabled() {
            self.factory.stats.disabled.inc();
            if c.deny_at_disable
                .as_ref()
                .is_some_and(|f| f.enabled(&self.runtime))
            {
                return HeadersStatus::LocalReply(error_reply(&c));
            }
            return HeadersStatus::Continue;
        }
        match c.with_request_body {
            // An upgrade's or a tunnel's body is not a message to check.
            Some(b)
                if !self.skip_body
                    && !end
                    && head.method != http::Method::CONNECT
                    && !head.headers.contains_key(http::header::UPGRADE) =>
            {
                HeadersStatus::StopForBody {
                    limit: b.max_request_bytes as usize,
                    partial: b.allow_partial_message,
                }
            }
            _ => self.check(head, None),
        }
    }

    fn decode_buffered(
        &mut self,
        head: &mut http::request::Parts,
        body: &Bytes,
        _complete: bool,
    ) -> HeadersStatus {
        self.check(head, Some(body))
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _end: bool) -> HeadersStatus {
        for (name, value) in std::mem::take(&mut *self.added.borrow_mut()) {
            head.headers.insert(name, value);
        }
        HeadersStatus::Continue
    }
}

/// The route cluster's counters, made when first counted.
struct ClusterCounter {
    shard: Arc<Shard>,
    prefix: String,
}

impl ClusterCounter {
    fn inc(&self, name: &str) {
        self.shard.counter(&format!("{}{name}", self.prefix)).inc();
    }
}

/// What the stream does with the verdict.
fn decide(
    verdict: Verdict,
    c: &ExtAuthz,
    stats: &Stats,
    cluster_stats: Option<&ClusterCounter>,
    route_cluster: Option<&Cluster>,
    added: &RefCell<Vec<(HeaderName, HeaderValue)>>,
) -> Resume {
    match verdict {
        Verdict::Ok(changes) => {
            stats.ok.inc();
            if let Some(s) = cluster_stats {
                s.inc("ok");
            }
            *added.borrow_mut() = changes.response;
            let clear =
                c.clear_route_cache && !(changes.set.is_empty() && changes.append.is_empty());
            if changes.set.is_empty() && changes.append.is_empty() && changes.remove.is_empty() {
                return Resume::Continue;
            }
            Resume::ContinueWith(Box::new(move |head| {
                for (name, value) in changes.set {
                    head.headers.insert(name, value);
                }
                // Appended to the value there is, as Envoy joins them.
                for (name, value) in changes.append {
                    let joined = head.headers.get(&name).and_then(|old| {
                        let mut v = old.as_bytes().to_vec();
                        v.push(b',');
                        v.extend_from_slice(value.as_bytes());
                        HeaderValue::from_bytes(&v).ok()
                    });
                    head.headers.insert(name, joined.unwrap_or(value));
                }
                for name in changes.remove {
                    head.headers.remove(name);
                }
                if clear {
                    head.extensions.insert(crate::http::filter::ClearRouteCache);
                }
                None
            }))
        }
        Verdict::Denied {
            status,
            headers,
            body,
        } => {
            stats.denied.inc();
            if let Some(s) = cluster_stats {
                s.inc("denied");
            }
            if let (true, Some(cluster)) = (c.charge_cluster_response_stats, route_cluster) {
                cluster
                    .stats
                    .response_code(status.as_u16(), true, Default::default());
            }
            *added.borrow_mut() = headers;
            Resume::LocalReply(LocalReply {
                status,
                body,
                headers: Vec::new(),
                mutations: Vec::new(),
                flag: Some(ResponseFlag::UnauthorizedExternalService),
                details: "ext_authz_denied",
                close: false,
                grpc_status: None,
            })
        }
        Verdict::Error => {
            stats.error.inc();
            if let Some(s) = cluster_stats {
                s.inc("error");
            }
            if c.failure_mode_allow {
                stats.failure_mode_allowed.inc();
                if let Some(s) = cluster_stats {
                    s.inc("failure_mode_allowed");
                }
                if c.failure_mode_allow_header_add {
                    return Resume::ContinueWith(Box::new(|head| {
                        head.headers.insert(
                            "x-envoy-auth-failure-mode-allowed",
                            HeaderValue::from_static("true"),
                        );
                        None
                    }));
                }
                return Resume::Continue;
            }
            Resume::LocalReply(error_reply(c))
        }
    }
}

/// The reply to a request the filter failed (or, under `deny_at_disable`, was off for).
fn error_reply(c: &ExtAuthz) -> LocalReply {
    LocalReply {
        status: c.status_on_error,
        body: Bytes::new(),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UnauthorizedExternalService),
        details: "ext_authz_error",
        close: false,
        grpc_status: None,
    }
}

/// A gRPC check.
async fn grpc_check(
    worker: &Rc<Worker>,
    service: &Rc<Cluster>,
    target: (&str, &[(http::HeaderName, http::HeaderValue)]),
    request: &pb::CheckRequest,
    timeout: std::time::Duration,
) -> Verdict {
    let answer = crate::http::grpc_call::unary(
        worker,
        service,
        target,
        METHOD,
        &request.encode_to_vec(),
        Some(timeout),
    )
    .await;
    match answer.map(pb::CheckResponse::decode) {
        Ok(Ok(r)) => grpc_verdict(r),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "authorization answer not understood");
            Verdict::Error
        }
        Err(e) => {
            tracing::debug!(error = %e, "authorization check failed");
            Verdict::Error
        }
    }
}

/// The service's answer in a gRPC body: one uncompressed message, the body's whole length.
pub fn parse_check(data: &[u8]) -> Option<pb::CheckResponse> {
    pb::CheckResponse::decode(crate::http::grpc_call::unframe(data)?).ok()
}

/// What an answer decides: `None` to let the request through, else the status of the reply.
pub fn answer_status(r: pb::CheckResponse) -> Option<http::StatusCode> {
    match grpc_verdict(r) {
        Verdict::Ok(_) => None,
        Verdict::Denied { status, .. } => Some(status),
        Verdict::Error => Some(http::StatusCode::FORBIDDEN),
    }
}

/// A header option of the service's, with whether it appends (`append: true`).
#[allow(deprecated)]
fn option(
    o: &envoy_types::pb::envoy::config::core::v3::HeaderValueOption,
) -> Option<(HeaderName, HeaderValue, bool)> {
    let h = o.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    Some((name, value, o.append.as_ref().is_some_and(|a| a.value)))
}

/// What a gRPC answer means.
fn grpc_verdict(r: pb::CheckResponse) -> Verdict {
    let code = r.status.as_ref().map_or(0, |s| s.code);
    if code != 0 {
        let (status, headers, body) = match r.http_response {
            Some(pb::check_response::HttpResponse::DeniedResponse(d)) => (
                d.status
                    .and_then(|s| u16::try_from(s.code).ok())
                    .filter(|c| (200..600).contains(c))
                    .and_then(|c| http::StatusCode::from_u16(c).ok())
                    .unwrap_or(http::StatusCode::FORBIDDEN),
                d.headers
                    .iter()
                    .filter_map(option)
                    .map(|(n, v, _)| (n, v))
                    .collect(),
                Bytes::from(d.body),
            ),
            _ => (http::StatusCode::FORBIDDEN, Vec::new(), Bytes::new()),
        };
        return Verdict::Denied {
            status,
            headers,
            body,
        };
    }
    let mut changes = Changes::default();
    if let Some(pb::check_response::HttpResponse::OkResponse(ok)) = r.http_response {
        for (name, value, append) in ok.headers.iter().filter_map(option) {
            if append {
                changes.append.push((name, value));
            } else {
                changes.set.push((name, value));
            }
        }
        // Pseudo-headers and the host cannot be removed.
        changes.remove = ok
            .headers_to_remove
            .iter()
            .filter(|n| !n.starts_with(':') && !n.eq_ignore_ascii_case("host"))
            .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        changes.response = ok
            .response_headers_to_add
            .iter()
            .filter_map(option)
            .map(|(n, v, _)| (n, v))
            .collect();
    }
    Verdict::Ok(changes)
}

/// An HTTP check.
async fn http_check(
    worker: &Rc<Worker>,
    service: &Rc<Cluster>,
    h: &HttpAuthz,
    (head, body): (http::request::Parts, Bytes),
    timeout: std::time::Duration,
) -> Verdict {
    let (parts, body, _) = match crate::http::filters::router::own_request_retried(
        worker,
        service,
        head,
        body,
        Some(timeout),
        h.retry.as_ref(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "authorization check failed");
            return Verdict::Error;
        }
    };
    // A server error is a failed check, not a denial (Envoy's raw HTTP client).
    if parts.status.is_server_error() {
        return Verdict::Error;
    }
    let headers = || {
        parts
            .headers
            .iter()
            .filter(|(n, _)| *n != http::header::HOST)
    };
    if parts.status == http::StatusCode::OK {
        let pick = |list: &[StringMatch]| -> Vec<(HeaderName, HeaderValue)> {
            headers()
                .filter(|(n, _)| any_match(list, n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        return Verdict::Ok(Changes {
            set: pick(&h.upstream_headers),
            append: pick(&h.upstream_headers_to_append),
            remove: Vec::new(),
            response: pick(&h.client_headers_on_success),
        });
    }
    let client: Vec<(HeaderName, HeaderValue)> = headers()
        .filter(|(n, _)| match &h.client_headers {
            None => true,
            Some(list) => {
                any_match(list, n.as_str())
                    || matches!(
                        n.as_str(),
                        "path" | "status" | "content-length" | "www-authenticate" | "location"
                    )
            }
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Verdict::Denied {
        status: parts.status,
        headers: client,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_as_the_service_says() {
        let denied = include_bytes!("../../../../fuzz/corpus/ext_authz_response/denied");
        let r = parse_check(denied).expect("the seed parses");
        match grpc_verdict(r) {
            Verdict::Denied {
                status,
                headers,
                body,
            } => {
                assert_eq!(status, http::StatusCode::UNAUTHORIZED);
                assert_eq!(headers[0].0, "x-denied");
                assert_eq!(body, "no entry");
            }
            _ => panic!("a denial"),
        }
        let allowed = include_bytes!("../../../../fuzz/corpus/ext_authz_response/allowed");
        match grpc_verdict(parse_check(allowed).expect("the seed parses")) {
            Verdict::Ok(c) => {
                assert_eq!(c.set[0].0, "x-denied");
                assert_eq!(c.remove, ["x-remove-me"]);
            }
            _ => panic!("allowed"),
        }
        assert!(parse_check(&denied[..denied.len() - 1]).is_none());
    }
}
