//! `envoy.filters.http.local_ratelimit`: token buckets shared by the workers (or kept per
//! connection) that answer the requests they have no token for with a local reply (429 by
//! default). A route's own configuration replaces the filter's, with buckets of its own.
//!
//! A request takes a token from the bucket of each configured descriptor its own descriptors
//! (made by the `rate_limits` actions) match, the slowest-refilling first, and from the default
//! bucket when none matched or `always_consume_default_token_bucket` says so, as Envoy's
//! `LocalRateLimiterImpl::requestAllowed` does.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::model::{
    HeaderKey, HitsAddend, HttpLocalRateLimit, RateLimitAction, RateLimitPolicy, ValuePart,
    VhRateLimits,
};
use crate::http::filter::{HeadersStatus, HttpFilter, StreamContext};
use crate::http::filters::token_bucket::{Bucket, Limiter, Verdict};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};
use crate::stream_info::ResponseFlag;

/// `<stat_prefix>.http_local_rate_limit.*`.
#[derive(Debug)]
struct Stats {
    enabled: Counter,
    enforced: Counter,
    rate_limited: Counter,
    ok: Counter,
    shadow_mode: Counter,
}

impl Stats {
    fn new(shard: &Shard, stat_prefix: &str) -> Stats {
        let c = |n: &str| shard.counter(&format!("{stat_prefix}.http_local_rate_limit.{n}"));
        Stats {
            enabled: c("enabled"),
            enforced: c("enforced"),
            rate_limited: c("rate_limited"),
            ok: c("ok"),
            shadow_mode: c("shadow_mode"),
        }
    }
}

/// The filter on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<HttpLocalRateLimit>,
    shard: Arc<Shard>,
    stats: Rc<Stats>,
    /// Stats of routes' own configurations, by stat prefix, made when first used.
    route_stats: RefCell<Vec<(String, Rc<Stats>)>>,
}

impl Factory {
    /// The filter for `config`.
    pub fn new(config: Arc<HttpLocalRateLimit>, shard: &Arc<Shard>) -> Self {
        Factory {
            stats: Rc::new(Stats::new(shard, &config.stat_prefix)),
            config,
            shard: shard.clone(),
            route_stats: RefCell::default(),
        }
    }

    /// The filter for one stream, with the route's own configuration if it has one.
    pub fn filter(
        &self,
        route: Option<&Arc<HttpLocalRateLimit>>,
        cx: &StreamContext<'_>,
    ) -> LocalRateLimitFilter {
        let (config, stats) = match route {
            None => (self.config.clone(), self.stats.clone()),
            Some(r) => {
                let mut all = self.route_stats.borrow_mut();
                let stats = match all.iter().find(|(p, _)| *p == r.stat_prefix) {
                    Some((_, s)) => s.clone(),
                    None => {
                        let s = Rc::new(Stats::new(&self.shard, &r.stat_prefix));
                        all.push((r.stat_prefix.clone(), s.clone()));
                        s
                    }
                };
                (r.clone(), stats)
            }
        };
        let limiter = if config.per_connection {
            cx.connection.limiter(&config)
        } else {
            crate::http::filters::token_bucket::shared(&config)
        };
        // The route's descriptors are read when the configuration has none of its own.
        let route = if config.descriptors.is_empty() || !config.rate_limits.is_empty() {
            None
        } else {
            cx.selection.route_ref()
        };
        let render = Render::when_needed([&config.rate_limits[..]], cx);
        LocalRateLimitFilter {
            config,
            limiter,
            stats,
            route,
            remote: cx.remote,
            runtime: cx.selection.runtime.clone(),
            verdict: None,
            render,
        }
    }
}

/// The filter on one stream.
pub struct LocalRateLimitFilter {
    config: Arc<HttpLocalRateLimit>,
    limiter: Arc<Limiter>,
    stats: Rc<Stats>,
    /// The route and virtual host whose `rate_limits` make the descriptors.
    route: Option<crate::http::filters::router::RouteRef>,
    remote: IpAddr,
    /// The runtime values the stream started with.
    runtime: Arc<crate::config::runtime::Values>,
    /// What the bucket that decided said, for the `x-ratelimit-*` headers, and its
    /// descriptor's `x_ratelimit_option` (none: the filter's choice).
    verdict: Option<(Verdict, Option<bool>)>,
    /// What `hits_addend` formats are rendered with, when a policy has one.
    render: Option<Render>,
}

/// The stream's record, for the `hits_addend` formats of rate limit policies: the connection
/// manager's when it keeps one, else one with the stream's addresses and dynamic metadata.
pub(super) struct Render(Box<crate::stream_info::StreamInfo>);

impl Render {
    /// A renderer when one of the filter's own policies has a `hits_addend` format (Envoy
    /// reads none on routes and virtual hosts).
    pub(super) fn when_needed<'a>(
        own: impl IntoIterator<Item = &'a [RateLimitPolicy]>,
        cx: &StreamContext<'_>,
    ) -> Option<Render> {
        let formats = |l: &[RateLimitPolicy]| {
            l.iter()
                .any(|p| matches!(p.hits_addend, Some(HitsAddend::Format(_))))
        };
        if !own.into_iter().any(formats) {
            return None;
        }
        let mut info = match cx.info {
            Some(i) => Box::new(i.clone()),
            None => Box::new(crate::stream_info::StreamInfo::new(
                cx.downstream.peer,
                cx.downstream.local,
            )),
        };
        if info.dynamic_metadata.is_none() {
            info.dynamic_metadata = cx.metadata.cloned();
        }
        Some(Render(info))
    }

    /// The hits of a descriptor of `p` for a request with `headers`: `Some(None)` for none
    /// configured, `None` when its format does not give a number from 0 to 10⁹ (the
    /// descriptor is dropped, as Envoy drops it).
    pub(super) fn hits(
        render: Option<&Render>,
        p: &RateLimitPolicy,
        headers: &http::HeaderMap,
    ) -> Option<Option<u64>> {
        match &p.hits_addend {
            None => Some(None),
            Some(HitsAddend::Number(n)) => Some(Some(*n)),
            Some(HitsAddend::Format(f)) => {
                let v = crate::access_log::header_value(f, &render?.0, Some(headers), None);
                let n: f64 = v.trim().parse().ok()?;
                (0.0..=1e9).contains(&n).then_some(Some(n as u64))
            }
        }
    }
}

/// What one descriptor action adds: an entry, nothing (the action is skipped), or the end of
/// the descriptor.
enum Step {
    Entry(String, String),
    Skip,
    Drop,
}

fn step(a: &RateLimitAction, head: &http::request::Parts, remote: IpAddr) -> Step {
    match a {
        RateLimitAction::RequestHeaders {
            header,
            key,
            skip_if_absent,
        } => match header_value(header, head) {
            Some(v) if !v.is_empty() => Step::Entry(key.clone(), v.to_string()),
            _ if *skip_if_absent => Step::Skip,
            _ => Step::Drop,
        },
        RateLimitAction::RemoteAddress => Step::Entry("remote_address".into(), remote.to_string()),
        RateLimitAction::MaskedRemoteAddress { v4, v6 } => {
            let (ip, len) = match remote {
                IpAddr::V4(a) => {
                    let bits =
                        u32::from(a) & u32::MAX.checked_shl(32 - u32::from(*v4)).unwrap_or(0);
                    (IpAddr::V4(bits.into()), *v4)
                }
                IpAddr::V6(a) => {
                    let bits =
                        u128::from(a) & u128::MAX.checked_shl(128 - u32::from(*v6)).unwrap_or(0);
                    (IpAddr::V6(bits.into()), *v6)
                }
            };
            Step::Entry("masked_remote_address".into(), format!("{ip}/{len}"))
        }
        RateLimitAction::GenericKey { key, value } => Step::Entry(key.clone(), value.clone()),
        RateLimitAction::HeaderValueMatch {
            key,
            value,
            expect_match,
            headers,
        } => {
            if crate::http::filter::headers_match(headers, head) == *expect_match {
                Step::Entry(key.clone(), value.clone())
            } else {
                Step::Drop
            }
        }
        RateLimitAction::QueryValueMatch {
            key,
            value,
            expect_match,
            params,
        } => {
            let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            if crate::router::query_matches(params, path) == *expect_match {
                Step::Entry(key.clone(), value.clone())
            } else {
                Step::Drop
            }
        }
        RateLimitAction::RemoteAddressMatch {
            key,
            value,
            ranges,
            invert,
        } => {
            if ranges.iter().any(|r| r.contains(remote)) != *invert {
                let text = value.0.iter().map(|p| match p {
                    ValuePart::Text(t) => t.clone(),
                    ValuePart::RemoteAddress => remote.to_string(),
                });
                Step::Entry(key.clone(), text.collect())
            } else {
                Step::Drop
            }
        }
    }
}

/// The policies a rate limit filter of `stage` applies to a request on `route`: the filter's
/// own when it has some; else the route's of that stage, with its virtual host's as `vh` (or
/// the route's `include_vh_rate_limits`) says, as Envoy's filters choose.
pub(super) fn applicable<'a>(
    own: &'a [RateLimitPolicy],
    route: Option<&'a crate::http::filters::router::RouteRef>,
    stage: u32,
    vh: VhRateLimits,
) -> Vec<&'a RateLimitPolicy> {
    if !own.is_empty() {
        return own.iter().collect();
    }
    let Some(r) = route else { return Vec::new() };
    let crate::router::Action::Forward(fw) = &r.route().action else {
        return Vec::new();
    };
    let (own, include_vh) = fw
        .rate_limits
        .as_deref()
        .map_or((&[][..], false), |r| (&r.policies[..], r.include_vh));
    let vh = if include_vh {
        VhRateLimits::Include
    } else {
        vh
    };
    let of_stage = |list: &'a [RateLimitPolicy]| list.iter().filter(move |p| p.stage == stage);
    let mut out: Vec<&RateLimitPolicy> = of_stage(own).collect();
    let with_vhost = match vh {
        VhRateLimits::Include => true,
        VhRateLimits::Override => own.is_empty(),
        VhRateLimits::Ignore => false,
    };
    if with_vhost {
        out.extend(of_stage(&r.vhost().rate_limits));
    }
    out
}

/// A request header's value, pseudo-headers included, as Envoy's header map holds them.
fn header_value<'a>(key: &HeaderKey, head: &'a http::request::Parts) -> Option<&'a str> {
    match key {
        HeaderKey::Header(name) => head.headers.get(name).and_then(|v| v.to_str().ok()),
        HeaderKey::Method => Some(head.method.as_str()),
        HeaderKey::Path => Some(crate::http::filter::route_path(head)),
        HeaderKey::Authority => crate::http::conn_manager::authority(head),
        HeaderKey::Scheme => Some(head.uri.scheme_str().unwrap_or("http")),
        HeaderKey::OtherPseudo => None,
    }
}

/// The descriptors the policies make for a request.
#[cfg(test)]
fn descriptors<'a>(
    policies: impl IntoIterator<Item = &'a RateLimitPolicy>,
    head: &http::request::Parts,
    remote: IpAddr,
) -> Vec<Vec<(String, String)>> {
    descriptors_of(policies, head, remote)
        .into_iter()
        .map(|(d, _)| d)
        .collect()
}

/// The descriptors the policies make for a request, each with the policy that made it.
pub(super) fn descriptors_of<'a>(
    policies: impl IntoIterator<Item = &'a RateLimitPolicy>,
    head: &http::request::Parts,
    remote: IpAddr,
) -> Vec<(Vec<(String, String)>, &'a RateLimitPolicy)> {
    let mut out = Vec::new();
    'policy: for p in policies {
        let mut entries = Vec::new();
        for a in &p.actions {
            match step(a, head, remote) {
                Step::Entry(k, v) => entries.push((k, v)),
                Step::Skip => {}
                Step::Drop => continue 'policy,
            }
        }
        if !entries.is_empty() {
            out.push((entries, p));
        }
    }
    out
}

/// Whether a wildcard descriptor's entries match a request's: the same keys in order, each value
/// equal or left empty in the configuration.
fn wildcard_matches(config: &[(String, String)], request: &[(String, String)]) -> bool {
    config.len() == request.len()
        && config.iter().any(|(_, v)| v.is_empty())
        && config
            .iter()
            .zip(request)
            .all(|((ck, cv), (rk, rv))| ck == rk && (cv.is_empty() || cv == rv))
}

impl LocalRateLimitFilter {
    /// Envoy's `requestAllowed`: the matched descriptors' buckets, slowest first, then the
    /// default bucket.
    /// With the verdict, the `x_ratelimit_option` of the descriptor that gave it.
    fn allowed(&self, head: &http::request::Parts) -> (Verdict, Option<bool>) {
        let c = &self.config;
        let now = Instant::now();
        // (the descriptor's index, its bucket for these values when it is a wildcard, the
        // request descriptor's hits and `x_ratelimit_option`)
        type Matched = (usize, Option<Arc<Bucket>>, u64, Option<bool>);
        let mut matched: Vec<Matched> = Vec::new();
        if !c.descriptors.is_empty() {
            let policies = applicable(
                &c.rate_limits,
                self.route.as_ref(),
                c.stage,
                c.vh_rate_limits,
            );
            for (d, p) in descriptors_of(policies, head, self.remote) {
                // The filter's own list never applies a policy kept for the stream's end.
                if p.on_stream_done && !c.rate_limits.is_empty() {
                    continue;
                }
                let Some(hits) = Render::hits(self.render.as_ref(), p, &head.headers) else {
                    continue;
                };
                // An exact descriptor first, else a wildcard whose keys match.
                let exact = c.descriptors.iter().position(|x| x.entries == d);
                let hit = exact.map(|i| (i, None)).or_else(|| {
                    let i = c
                        .descriptors
                        .iter()
                        .position(|x| wildcard_matches(&x.entries, &d))?;
                    let dynamic = self.limiter.dynamic.get(i)?.as_ref()?;
                    Some((i, Some(dynamic.bucket(&d))))
                });
                if let Some((i, b)) = hit {
                    let seen = matched.iter().any(|(j, o, _, _)| {
                        *j == i
                            && match (o, &b) {
                                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                                _ => true,
                            }
                    });
                    if !seen {
                        matched.push((i, b, hits.unwrap_or(1), p.x_ratelimit));
                    }
                }
            }
        }
        let buckets = &self.limiter.descriptors;
        fn pick<'a>(buckets: &'a [Bucket], m: &'a Matched) -> Option<&'a Bucket> {
            match &m.1 {
                Some(b) => Some(b.as_ref()),
                None => buckets.get(m.0),
            }
        }
        matched.sort_by(|a, b| {
            let rate = |m| pick(buckets, m).map_or(0.0, Bucket::rate);
            rate(a).total_cmp(&rate(b))
        });
        let mut first: Option<(Verdict, Option<bool>)> = None;
        for m in &matched {
            let Some(b) = pick(buckets, m) else { continue };
            let v = b.take_n(now, m.2);
            if !v.allowed {
                // A shadow descriptor's refusal is counted and let through.
                if !c.descriptors[m.0].shadow {
                    return (v, m.3);
                }
                self.stats.shadow_mode.inc();
            }
            first.get_or_insert((Verdict { allowed: true, ..v }, m.3));
        }
        if matched.is_empty() || c.always_consume_default {
            if let Some(b) = &self.limiter.default {
                let v = b.take(now);
                if !v.allowed || first.is_none() {
                    return (v, None);
                }
            }
        }
        first.unwrap_or((
            Verdict {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset: 0,
            },
            None,
        ))
    }
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl LocalRateLimitFilter {
    fn x_ratelimit(&self, headers: &mut Vec<(HeaderName, HeaderValue)>) {
        let Some((v, option)) = self.verdict else {
            return;
        };
        if option.unwrap_or(self.config.x_ratelimit_headers) && v.limit > 0 {
            headers.push((X_RATELIMIT_LIMIT.clone(), number(u64::from(v.limit))));
            headers.push((
                X_RATELIMIT_REMAINING.clone(),
                number(u64::from(v.remaining)),
            ));
            headers.push((X_RATELIMIT_RESET.clone(), number(v.reset)));
        }
    }
}

impl HttpFilter for LocalRateLimitFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _end: bool) -> HeadersStatus {
        let c = self.config.clone();
        let values = &self.runtime;
        let on = |f: &Option<crate::config::runtime::RuntimeFraction>| {
            f.as_ref()
                .is_some_and(|f| f.enabled(values, fastrand::u64(..)))
        };
        if !on(&c.enabled) {
            return HeadersStatus::Continue;
        }
        self.stats.enabled.inc();
        let (verdict, option) = self.allowed(head);
        self.verdict = Some((verdict, option));
        if verdict.allowed {
            self.stats.ok.inc();
            return HeadersStatus::Continue;
        }
        self.stats.rate_limited.inc();
        if !on(&c.enforced) {
            c.request_headers_not_enforced.apply(&mut head.headers);
            return HeadersStatus::Continue;
        }
        self.stats.enforced.inc();
        // The reply passes this filter's encode hook, which adds the x-ratelimit headers.
        HeadersStatus::LocalReply(LocalReply {
            status: c.status,
            body: Bytes::from_static(b"local_rate_limited"),
            headers: Vec::new(),
            mutations: if c.response_headers.is_empty() {
                Vec::new()
            } else {
                vec![c.response_headers.clone()]
            },
            flag: Some(ResponseFlag::RateLimited),
            details: "local_rate_limited",
            close: false,
            grpc_status: None,
        })
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _end: bool) -> HeadersStatus {
        let mut headers = Vec::new();
        self.x_ratelimit(&mut headers);
        for (n, v) in headers {
            head.headers.insert(n, v);
        }
        HeadersStatus::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn descriptors_follow_envoy_actions() {
        let policies = vec![RateLimitPolicy {
            x_ratelimit: None,
            hits_addend: None,
            on_stream_done: false,
            limit: None,
            stage: 0,
            actions: vec![
                RateLimitAction::GenericKey {
                    key: "k".into(),
                    value: "v".into(),
                },
                RateLimitAction::RequestHeaders {
                    header: HeaderKey::Header(HeaderName::from_static("x-user")),
                    key: "user".into(),
                    skip_if_absent: false,
                },
            ],
        }];
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let with = parts("/", &[("x-user", "ann")]);
        assert_eq!(
            descriptors(&policies, &with, ip),
            vec![vec![
                ("k".to_string(), "v".to_string()),
                ("user".to_string(), "ann".to_string())
            ]]
        );
        // A missing header drops the whole descriptor.
        assert!(descriptors(&policies, &parts("/", &[]), ip).is_empty());
        let masked = vec![RateLimitPolicy {
            x_ratelimit: None,
            hits_addend: None,
            on_stream_done: false,
            limit: None,
            stage: 0,
            actions: vec![RateLimitAction::MaskedRemoteAddress { v4: 16, v6: 64 }],
        }];
        assert_eq!(
            descriptors(&masked, &with, ip)[0][0].1,
            "10.1.0.0/16".to_string()
        );
    }
}
