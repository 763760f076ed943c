//! `envoy.filters.http.ratelimit`: the global rate limit service. A request's descriptors (made
//! by the `rate_limits` actions of its route, its virtual host, the filter or the route's
//! `RateLimitPerRoute`) go to the service (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, over the worker's pools to the configured cluster) while the request
//! waits; `OVER_LIMIT` answers it (429 by default, `x-envoy-ratelimited`, flag RL), `OK` lets
//! it through with the headers the service adds, and a failed call lets it through unless
//! `failure_mode_deny` (500, flag RLSE). Counted, as Envoy counts them, on the cluster the
//! route sends to: `cluster.<c>.ratelimit.{ok,over_limit,error,failure_mode_allowed}`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ratelimit::v3 as pb;
use http::{HeaderName, HeaderValue};
use prost::Message;

use crate::config::model::{HttpRateLimit, RateLimitPerRoute, RateLimitRequestType};
use crate::http::filter::{HeadersStatus, HttpFilter, Resume, StreamContext};
use crate::http::filters::local_ratelimit::{applicable, descriptors_of, Render};
use crate::http::filters::router::RouteRef;
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};
use crate::stream_info::ResponseFlag;
use crate::upstream::Cluster;
use crate::worker::Worker;

const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The counters of one route cluster.
#[derive(Debug)]
struct Stats {
    ok: Counter,
    over_limit: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
}

/// The filter on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<HttpRateLimit>,
    shard: Arc<Shard>,
    /// Counters by route cluster, made when first used.
    stats: RefCell<HashMap<String, Rc<Stats>>>,
}

impl Factory {
    /// The filter for `config`.
    pub fn new(config: Arc<HttpRateLimit>, shard: &Arc<Shard>) -> Self {
        Factory {
            config,
            shard: shard.clone(),
            stats: RefCell::default(),
        }
    }

    fn stats(&self, cluster: &str) -> Rc<Stats> {
        if let Some(s) = self.stats.borrow().get(cluster) {
            return s.clone();
        }
        let prefix = if self.config.stat_prefix.is_empty() {
            format!("cluster.{cluster}.ratelimit.")
        } else {
            format!("cluster.{cluster}.ratelimit.{}.", self.config.stat_prefix)
        };
        let c = |n: &str| self.shard.counter(&format!("{prefix}{n}"));
        let s = Rc::new(Stats {
            ok: c("ok"),
            over_limit: c("over_limit"),
            error: c("error"),
            failure_mode_allowed: c("failure_mode_allowed"),
        });
        self.stats
            .borrow_mut()
            .insert(cluster.to_string(), s.clone());
        s
    }

    /// The filter for one stream, with the route's `RateLimitPerRoute` if it has one.
    pub fn filter(
        self: &Rc<Self>,
        per_route: Option<Arc<RateLimitPerRoute>>,
        cx: &StreamContext<'_>,
    ) -> RateLimitFilter {
        let render = Render::when_needed(
            [&self.config.rate_limits[..]]
                .into_iter()
                .chain(per_route.as_deref().map(|p| &p.rate_limits[..])),
            cx,
        );
        RateLimitFilter {
            factory: self.clone(),
            per_route,
            route: cx.selection.route_ref(),
            worker: cx.worker.clone(),
            remote: cx.remote,
            runtime: cx.selection.runtime.clone(),
            added: Rc::default(),
            render,
            calling: Rc::default(),
            on_done: None,
            metadata: cx.metadata.cloned(),
        }
    }
}

/// What the service asked to add to the response.
#[derive(Debug, Default)]
struct Added {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The request was answered here: a `content-type` of the service's replaces the reply's.
    replied: bool,
}

/// The filter on one stream.
pub struct RateLimitFilter {
    factory: Rc<Factory>,
    per_route: Option<Arc<RateLimitPerRoute>>,
    route: Option<RouteRef>,
    worker: Rc<Worker>,
    remote: IpAddr,
    runtime: Arc<crate::config::runtime::Values>,
    added: Rc<RefCell<Added>>,
    /// What `hits_addend` formats are rendered with, when a policy has one.
    render: Option<Render>,
    /// The request's call is under way (a stream that ends then sends nothing more).
    calling: Rc<std::cell::Cell<bool>>,
    /// The policies kept for the stream's end (`apply_on_stream_done`), with the request they
    /// read.
    on_done: Option<OnDone>,
    /// The stream's dynamic metadata (policies' `limit`), when a filter writes some.
    metadata: Option<crate::stream_info::DynamicMetadata>,
}

/// A descriptor as it goes to the service: its entries, hits and limit.
type Descriptor = (Vec<(String, String)>, Option<u64>, Option<(u32, i32)>);

/// A call the stream makes when it is done.
struct OnDone {
    policies: Vec<crate::config::model::RateLimitPolicy>,
    head: http::request::Parts,
    domain: String,
}

/// What the service said.
enum Verdict {
    Ok(pb::RateLimitResponse),
    OverLimit(pb::RateLimitResponse),
    Error,
}

impl RateLimitFilter {
    /// Whether a runtime fraction (or, unset, Envoy's runtime key at 100%) admits the request.
    fn on(&self, f: &Option<crate::config::runtime::RuntimeFraction>, key: &str) -> bool {
        match f {
            Some(f) => f.enabled(&self.runtime, fastrand::u64(..)),
            None => self.runtime.integer(key, 100) > fastrand::u64(..100),
        }
    }

    /// The cluster the route sends the request to, when it exists (Envoy's filter does
    /// nothing for a request without one).
    fn route_cluster(&self, head: &http::request::Parts) -> Option<String> {
        let name = self.route.as_ref()?.cluster(&head.headers, &self.runtime)?;
        self.worker.clusters.get(name).map(|_| name.to_string())
    }
}

impl RateLimitFilter {
    /// The descriptors `policies` make for a request, each with its policy (a descriptor
    /// whose `hits_addend` format gives no number is dropped, as in Envoy).
    fn descriptors<'a>(
        &self,
        policies: Vec<&'a crate::config::model::RateLimitPolicy>,
        head: &http::request::Parts,
    ) -> Vec<(Descriptor, &'a crate::config::model::RateLimitPolicy)> {
        descriptors_of(policies, head, self.remote)
            .into_iter()
            .filter_map(|(d, p)| {
                let hits = Render::hits(self.render.as_ref(), p, &head.headers)?;
                Some(((d, hits, self.limit(p)), p))
            })
            .collect()
    }

    /// A policy's `limit` from the stream's dynamic metadata: a struct with a number
    /// `requests_per_unit` and a `unit` name, else none (Envoy's override).
    fn limit(&self, p: &crate::config::model::RateLimitPolicy) -> Option<(u32, i32)> {
        use crate::config::metadata::Value;
        let (namespace, path) = p.limit.as_ref()?;
        self.metadata.as_ref()?.with(|m| {
            let Value::Struct(s) = m.lookup(namespace, path)? else {
                return None;
            };
            let (Some(Value::Number(n)), Some(Value::String(unit))) =
                (s.get("requests_per_unit"), s.get("unit"))
            else {
                return None;
            };
            let unit = envoy_types::pb::envoy::r#type::v3::RateLimitUnit::from_str_name(unit)?;
            Some((*n as u32, unit as i32))
        })
    }
}

/// The service's request for `descriptors`.
fn service_request(
    domain: String,
    descriptors: impl Iterator<Item = Descriptor>,
) -> pb::RateLimitRequest {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::{Entry, RateLimitOverride},
        RateLimitDescriptor,
    };
    pb::RateLimitRequest {
        domain,
        descriptors: descriptors
            .map(|(d, hits, limit)| RateLimitDescriptor {
                entries: d
                    .into_iter()
                    .map(|(key, value)| Entry { key, value })
                    .collect(),
                hits_addend: hits
                    .map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
                limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
                    requests_per_unit,
                    unit,
                }),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// A copy of a request's head (its extensions left out), for what is read at the stream's end.
fn request_copy(head: &http::request::Parts) -> http::request::Parts {
    let mut copy = http::Request::new(()).into_parts().0;
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

impl Drop for RateLimitFilter {
    /// The stream is done: the descriptors kept for its end go to the service, unless the
    /// request's own call is still under way (Envoy cancels that and sends nothing). Nobody
    /// waits for the answer.
    fn drop(&mut self) {
        let Some(done) = self.on_done.take() else {
            return;
        };
        if self.calling.get() {
            return;
        }
        let list = self.descriptors(done.policies.iter().collect(), &done.head);
        if list.is_empty() {
            return;
        }
        let request = service_request(done.domain, list.into_iter().map(|(d, _)| d));
        let c = self.factory.config.clone();
        let Some(service) = self.worker.clusters.get(&c.cluster) else {
            return;
        };
        let worker = self.worker.clone();
        tokio::task::spawn_local(async move {
            let _ = call(&worker, &service, &c, &request).await;
        });
    }
}

impl HttpFilter for RateLimitFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _end: bool) -> HeadersStatus {
        let c = self.factory.config.clone();
        if !self.on(&c.enabled, "ratelimit.http_filter_enabled") {
            return HeadersStatus::Continue;
        }
        let internal = head
            .headers
            .get("x-envoy-internal")
            .is_some_and(|v| v == "true");
        match c.request_type {
            RateLimitRequestType::Internal if !internal => return HeadersStatus::Continue,
            RateLimitRequestType::External if internal => return HeadersStatus::Continue,
            _ => {}
        }
        let Some(cluster) = self.route_cluster(head) else {
            return HeadersStatus::Continue;
        };
        // The route's own list replaces every other; else the filter's, else the route's and
        // its virtual host's.
        let (own, vh) = match &self.per_route {
            Some(p) if !p.rate_limits.is_empty() => (&p.rate_limits, p.vh_rate_limits),
            Some(p) => (&c.rate_limits, p.vh_rate_limits),
            None => (&c.rate_limits, Default::default()),
        };
        let mut policies = applicable(own, self.route.as_ref(), c.stage, vh);
        let domain = self
            .per_route
            .as_ref()
            .and_then(|p| p.domain.clone())
            .unwrap_or_else(|| c.domain.clone());
        // Policies kept for the stream's end are set aside (rare: most requests copy nothing).
        if policies.iter().any(|p| p.on_stream_done) {
            self.on_done = Some(OnDone {
                policies: policies
                    .iter()
                    .filter(|p| p.on_stream_done)
                    .map(|p| (*p).clone())
                    .collect(),
                head: request_copy(head),
                domain: domain.clone(),
            });
            policies.retain(|p| !p.on_stream_done);
        }
        let list = self.descriptors(policies, head);
        if list.is_empty() {
            return HeadersStatus::Continue;
        }
        // Whether each descriptor's status may write `x-ratelimit-*`.
        let x_ratelimit: Vec<bool> = list
            .iter()
            .map(|(_, p)| p.x_ratelimit.unwrap_or(c.x_ratelimit_headers))
            .collect();
        let request = service_request(domain, list.into_iter().map(|(d, _)| d));
        let stats = self.factory.stats(&cluster);
        let route_cluster = self.worker.clusters.get(&cluster);
        let service = self.worker.clusters.get(&c.cluster);
        let worker = self.worker.clone();
        let added = self.added.clone();
        let enforced = self.on(&c.enforced, "ratelimit.http_filter_enforcing");
        let calling = self.calling.clone();
        let metadata = self.metadata.clone();
        calling.set(true);
        HeadersStatus::StopIteration(Box::pin(async move {
            let verdict = match service {
                Some(service) => call(&worker, &service, &c, &request).await,
                None => {
                    tracing::debug!(cluster = %c.cluster, "rate limit service cluster not found");
                    Verdict::Error
                }
            };
            calling.set(false);
            if let (Verdict::Ok(r) | Verdict::OverLimit(r), Some(m)) = (&verdict, &metadata) {
                keep_metadata(r, m);
            }
            decide(
                verdict,
                (&c, &x_ratelimit),
                &stats,
                route_cluster.as_deref(),
                &added,
                enforced,
            )
        }))
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _end: bool) -> HeadersStatus {
        let added = std::mem::take(&mut *self.added.borrow_mut());
        for (name, value) in added.headers {
            if added.replied && name == http::header::CONTENT_TYPE {
                head.headers.insert(name, value);
            } else {
                head.headers.append(name, value);
            }
        }
        HeadersStatus::Continue
    }
}

/// The service's `dynamic_metadata`, into the stream's under the filter's name, as Envoy
/// merges it.
fn keep_metadata(r: &pb::RateLimitResponse, into: &crate::stream_info::DynamicMetadata) {
    let Some(m) = r.dynamic_metadata.as_ref().filter(|m| !m.fields.is_empty()) else {
        return;
    };
    let added = crate::config::metadata::struct_from_pb(m);
    into.with(|d| {
        d.filter_metadata
            .entry("envoy.filters.http.ratelimit".to_string())
            .or_default()
            .extend(added)
    });
}

/// Asks the service.
async fn call(
    worker: &Rc<Worker>,
    service: &Rc<Cluster>,
    c: &HttpRateLimit,
    request: &pb::RateLimitRequest,
) -> Verdict {
    let answer = crate::http::grpc_call::unary(
        worker,
        service,
        (&c.authority, &c.metadata),
        METHOD,
        &request.encode_to_vec(),
        c.timeout,
    )
    .await;
    match answer.map(pb::RateLimitResponse::decode) {
        Ok(Ok(r)) if r.overall_code == pb::rate_limit_response::Code::OverLimit as i32 => {
            Verdict::OverLimit(r)
        }
        Ok(Ok(r)) => Verdict::Ok(r),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "rate limit service answer not understood");
            Verdict::Error
        }
        Err(e) => {
            tracing::debug!(error = %e, "rate limit service call failed");
            Verdict::Error
        }
    }
}

/// The service's answer in a gRPC body: one uncompressed message, the body's whole length.
pub fn parse(data: &[u8]) -> Option<pb::RateLimitResponse> {
    pb::RateLimitResponse::decode(crate::http::grpc_call::unframe(data)?).ok()
}

/// The headers an answer adds to the response: the service's own, then the `x-ratelimit-*`
/// its statuses make, as `x_ratelimit` (by descriptor, else `default`) lets them be written.
pub fn answer_headers(
    r: &pb::RateLimitResponse,
    (x_ratelimit_headers, default): (&[bool], bool),
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = header_list(&r.response_headers_to_add);
    out.extend(x_ratelimit(&r.statuses, x_ratelimit_headers, default));
    out
}

/// What the stream does with the service's answer.
fn decide(
    verdict: Verdict,
    (c, x_ratelimit_headers): (&HttpRateLimit, &[bool]),
    stats: &Stats,
    route_cluster: Option<&Cluster>,
    added: &RefCell<Added>,
    enforced: bool,
) -> Resume {
    let response = match verdict {
        Verdict::Error => {
            stats.error.inc();
            if !c.failure_mode_deny {
                stats.failure_mode_allowed.inc();
                return Resume::Continue;
            }
            return Resume::LocalReply(LocalReply {
                status: c.status_on_error,
                body: Bytes::new(),
                headers: Vec::new(),
                mutations: Vec::new(),
                flag: Some(ResponseFlag::RateLimitServiceError),
                details: "rate_limiter_error",
                close: false,
                grpc_status: None,
            });
        }
        Verdict::Ok(r) => {
            stats.ok.inc();
            added.borrow_mut().headers =
                answer_headers(&r, (x_ratelimit_headers, c.x_ratelimit_headers));
            return append(header_list(&r.request_headers_to_add));
        }
        Verdict::OverLimit(r) => r,
    };
    stats.over_limit.inc();
    // Envoy charges the reply's status to the route's cluster, as an internal response.
    if let Some(cluster) = route_cluster {
        cluster
            .stats
            .response_code(c.rate_limited_status.as_u16(), true, Default::default());
    }
    let mut a = added.borrow_mut();
    a.headers = header_list(&response.response_headers_to_add);
    if c.x_envoy_ratelimited {
        a.headers.push((
            HeaderName::from_static("x-envoy-ratelimited"),
            HeaderValue::from_static("true"),
        ));
    }
    a.headers.extend(x_ratelimit(
        &response.statuses,
        x_ratelimit_headers,
        c.x_ratelimit_headers,
    ));
    if !enforced {
        return append(header_list(&response.request_headers_to_add));
    }
    a.replied = true;
    Resume::LocalReply(LocalReply {
        status: c.rate_limited_status,
        body: Bytes::from(response.raw_body),
        headers: Vec::new(),
        mutations: if c.response_headers.is_empty() {
            Vec::new()
        } else {
            vec![c.response_headers.clone()]
        },
        flag: Some(ResponseFlag::RateLimited),
        details: "request_rate_limited",
        close: false,
        grpc_status: None,
    })
}

/// Goes on with `headers` appended to the request.
fn append(headers: Vec<(HeaderName, HeaderValue)>) -> Resume {
    if headers.is_empty() {
        return Resume::Continue;
    }
    Resume::ContinueWith(Box::new(move |head| {
        for (name, value) in headers {
            head.headers.append(name, value);
        }
        None
    }))
}

/// Headers from the service, those that are valid.
pub fn header_list(
    list: &[envoy_types::pb::envoy::config::core::v3::HeaderValue],
) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            Some((name, value))
        })
        .collect()
}

/// The seconds of a `RateLimit.Unit` (none for UNKNOWN).
fn window(unit: i32) -> Option<u64> {
    use pb::rate_limit_response::rate_limit::Unit;
    Some(match Unit::try_from(unit).ok()? {
        Unit::Unknown => return None,
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        Unit::Week => 604_800,
        Unit::Month => 2_592_000,
        Unit::Year => 31_536_000,
    })
}

/// `x-ratelimit-limit`, `-remaining` and `-reset` (draft 03) from the descriptors' statuses:
/// the status closest to its limit, and each limit's quota policy. `enabled` says, by
/// descriptor (statuses follow the descriptors sent), which may write them: none are written
/// when the closest may not, and the quota policy lists only those that may (Envoy's
/// `x_ratelimit_option`). A status past the descriptors takes `default` (the filter's).
fn x_ratelimit(
    statuses: &[pb::rate_limit_response::DescriptorStatus],
    enabled: &[bool],
    default: bool,
) -> Vec<(HeaderName, HeaderValue)> {
    let on = |i: usize| enabled.get(i).copied().unwrap_or(default);
    let mut min: Option<(usize, &pb::rate_limit_response::DescriptorStatus)> = None;
    for (i, s) in statuses.iter().enumerate() {
        if s.current_limit.is_some()
            && min.is_none_or(|(_, m)| s.limit_remaining < m.limit_remaining)
        {
            min = Some((i, s));
        }
    }
    let Some((at, m)) = min else {
        return Vec::new();
    };
    if !on(at) {
        return Vec::new();
    }
    let mut policy = String::new();
    for (i, s) in statuses.iter().enumerate() {
        let Some(limit) = s.current_limit.as_ref().filter(|_| on(i)) else {
            continue;
        };
        policy.push_str(&format!(", {}", limit.requests_per_unit));
        if let Some(w) = window(limit.unit) {
            policy.push_str(&format!(";w={w}"));
        }
        if !limit.name.is_empty() {
            policy.push_str(&format!(";name=\"{}\"", limit.name));
        }
    }
    let limit = m.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
    let reset = m
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds.max(0));
    [
        ("x-ratelimit-limit", format!("{limit}{policy}")),
        ("x-ratelimit-remaining", m.limit_remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((HeaderName::from_static(n), HeaderValue::from_str(&v).ok()?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::rate_limit_response::{rate_limit::Unit, DescriptorStatus, RateLimit};

    fn status(rpu: u32, unit: Unit, name: &str, remaining: u32, reset: i64) -> DescriptorStatus {
        DescriptorStatus {
            current_limit: Some(RateLimit {
                name: name.into(),
                requests_per_unit: rpu,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: reset,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn x_ratelimit_headers_as_envoy_writes_them() {
        // Envoy's own cases (ratelimit_headers_test.cc).
        let statuses = [
            status(1, Unit::Minute, "first", 2, 3),
            status(4, Unit::Hour, "second", 5, 6),
        ];
        let h = x_ratelimit(&statuses, &[], true);
        let v: Vec<&str> = h.iter().map(|(_, v)| v.to_str().expect("ascii")).collect();
        assert_eq!(
            v,
            [
                "1, 1;w=60;name=\"first\", 4;w=3600;name=\"second\"",
                "2",
                "3"
            ]
        );
        assert!(x_ratelimit(&[], &[], true).is_empty());
        let none = DescriptorStatus::default();
        assert!(x_ratelimit(&[none], &[], true).is_empty());
        // x_ratelimit_option: the closest status's descriptor decides whether any are
        // written; the others' choices, whether they are in the quota policy.
        assert!(x_ratelimit(&statuses, &[false, true], true).is_empty());
        let h = x_ratelimit(&statuses, &[true, false], true);
        assert_eq!(h[0].1, "1, 1;w=60;name=\"first\"");
        assert!(x_ratelimit(&statuses, &[true], false).len() == 3);
        assert!(x_ratelimit(&statuses, &[], false).is_empty());
    }

    #[test]
    fn answers_are_one_whole_message() {
        let seed = include_bytes!("../../../../fuzz/corpus/ratelimit_response/over_limit");
        let r = parse(seed).expect("the seed parses");
        assert_eq!(
            r.overall_code,
            pb::rate_limit_response::Code::OverLimit as i32
        );
        let h = answer_headers(&r, (&[], true));
        assert_eq!(h[0].0, "x-rls-over");
        assert_eq!(h[1].1, "10, 10;w=60;name=\"per-user\"");
        // Short, longer than its frame says, compressed.
        assert!(parse(&seed[..seed.len() - 1]).is_none());
        assert!(parse(&[seed.as_slice(), b"x"].concat()).is_none());
        let mut compressed = seed.to_vec();
        compressed[0] = 1;
        assert!(parse(&compressed).is_none());
        assert!(parse(&[]).is_none());
    }
}
