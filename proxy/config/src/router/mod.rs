//! The route table: virtual hosts chosen by `domains` exactly as Envoy chooses them, then the first
//! route whose match accepts the request.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use std::sync::Arc;

use http::HeaderMap;

pub mod header_parser;
pub mod retry;
pub mod scoped;
pub mod uri_template;

pub use header_parser::HeaderParser;

use crate::model::{HeaderKey, HeaderMatch, HeaderMatchKind, QueryCheck, QueryMatch};

/// What route matching reads of a request: its pseudo-headers (as Envoy's header map holds
/// them for HTTP/1.1 too) and its headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestView<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// `:authority` (`Host` for HTTP/1.1).
    pub authority: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// The other headers.
    pub headers: &'a HeaderMap,
    /// The runtime values in force when the stream started.
    pub runtime: &'a crate::runtime::Values,
    /// The stream's random value (Envoy's stream id), which `runtime_fraction` and weighted
    /// clusters read.
    pub random: u64,
    /// Whether the client presented a certificate over TLS (skiff asks for one only with a
    /// trusted CA to check it against, so a presented certificate is also a validated one).
    pub peer_certificate: bool,
    /// The stream's dynamic metadata, as the filters that ran before the route was picked
    /// (or picked again) left it.
    pub metadata: Option<&'a crate::metadata::Metadata>,
    /// The filter state the stream sees (its connection's, and its own once filters set some).
    pub filter_state: crate::filter_state::View<'a>,
}

impl<'a> RequestView<'a> {
    /// A GET of `path` with `headers` (tests).
    pub fn get(path: &'a str, headers: &'a HeaderMap) -> Self {
        RequestView {
            method: "GET",
            path,
            authority: "",
            scheme: "http",
            headers,
            runtime: &crate::runtime::EMPTY,
            random: 0,
            peer_certificate: false,
            metadata: None,
            filter_state: Default::default(),
        }
    }
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// `prefix`: the start of `:path` (query included, as Envoy).
    Prefix(String),
    /// `path`: the whole path once the query string is removed.
    Exact(String),
    /// `path_separated_prefix`: the path without its query is the prefix, or the prefix
    /// followed by `/`.
    SeparatedPrefix(String),
    /// `safe_regex`: the whole path without its query (anchored at translation).
    Regex(crate::pattern::Regex),
    /// `connect_matcher`: CONNECT requests, which no other path matcher takes.
    Connect,
    /// `path_match_policy` with Envoy's URI template matcher (always case sensitive).
    Template(Arc<uri_template::PathTemplate>),
}

/// `RouteMatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// How the path matches.
    pub path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    grpc: bool,
    runtime_fraction: Option<crate::runtime::RuntimeFraction>,
    tls: Option<TlsMatch>,
    metadata: Vec<crate::metadata::MetadataMatcher>,
    cookies: Vec<CookieMatch>,
    /// `filter_state`: each must find its object.
    filter_state: Vec<crate::filter_state::Matcher>,
}

/// A `CookieMatcher`: the first value of the named cookie must match (or, inverted, must
/// not; an absent cookie matches only inverted).
#[derive(Debug, Clone, PartialEq)]
pub struct CookieMatch {
    /// `name`.
    pub name: String,
    /// `string_match`.
    pub matcher: crate::model::StringMatch,
    /// `invert_match`.
    pub invert: bool,
}

impl CookieMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let hit = cookie_value(headers, &self.name).is_some_and(|v| self.matcher.matches(&v));
        hit != self.invert
    }
}

/// `tls_context`: what the client's TLS must show (unset: either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsMatch {
    /// `presented`: whether it presented a certificate.
    pub presented: Option<bool>,
    /// `validated`: whether its certificate was validated.
    pub validated: Option<bool>,
}

impl TlsMatch {
    fn matches(&self, peer_certificate: bool) -> bool {
        self.presented.is_none_or(|p| p == peer_certificate)
            && self.validated.is_none_or(|v| v == peer_certificate)
    }
}

impl RouteMatch {
    /// A match; patterns of case-insensitive matches are lowered once here.
    pub fn new(path: PathMatch, case_sensitive: bool, headers: Vec<HeaderMatch>) -> Self {
        let path = if case_sensitive {
            path
        } else {
            match path {
                PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase()),
                PathMatch::Exact(p) => PathMatch::Exact(p.to_ascii_lowercase()),
                PathMatch::SeparatedPrefix(p) => PathMatch::SeparatedPrefix(p.to_ascii_lowercase()),
                // case_sensitive does not apply to regexes (Envoy).
                PathMatch::Regex(r) => PathMatch::Regex(r),
                PathMatch::Connect => PathMatch::Connect,
                PathMatch::Template(t) => PathMatch::Template(t),
            }
        };
        RouteMatch {
            path,
            case_sensitive,
            headers,
            query: Vec::new(),
            grpc: false,
            runtime_fraction: None,
            tls: None,
            metadata: Vec::new(),
            cookies: Vec::new(),
            filter_state: Vec::new(),
        }
    }

    /// With `filter_state`: each matcher must find its object.
    pub fn with_filter_state(mut self, m: Vec<crate::filter_state::Matcher>) -> Self {
        self.filter_state = m;
        self
    }

    /// With `cookies`: each must match.
    pub fn with_cookies(mut self, cookies: Vec<CookieMatch>) -> Self {
        self.cookies = cookies;
        self
    }

    /// With `dynamic_metadata`: each matcher must accept the stream's dynamic metadata.
    pub fn with_dynamic_metadata(mut self, m: Vec<crate::metadata::MetadataMatcher>) -> Self {
        self.metadata = m;
        self
    }

    /// Whether it reads the stream's dynamic metadata.
    pub fn reads_metadata(&self) -> bool {
        !self.metadata.is_empty()
    }

    /// With `tls_context`.
    pub fn with_tls(mut self, tls: Option<TlsMatch>) -> Self {
        self.tls = tls;
        self
    }

    /// With `runtime_fraction`: only that share of requests match.
    pub fn with_runtime_fraction(mut self, f: Option<crate::runtime::RuntimeFraction>) -> Self {
        self.runtime_fraction = f;
        self
    }

    /// With `query_parameters`.
    pub fn with_query(mut self, query: Vec<QueryMatch>) -> Self {
        self.query = query;
        self
    }

    /// With `grpc`: only gRPC requests match.
    pub fn with_grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// Whether a request matches.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path = req.path;
        let bare = path.split(['?', '#']).next().unwrap_or(path);
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    bare == p
                } else {
                    bare.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::SeparatedPrefix(p) => {
                (bare.len() == p.len() || bare.as_bytes().get(p.len()) == Some(&b'/'))
                    && starts_with(bare, p, self.case_sensitive)
            }
            PathMatch::Regex(r) => r.is_match(bare),
            PathMatch::Connect => req.method == "CONNECT",
            PathMatch::Template(t) => t.matches(bare),
        };
        // A CONNECT has no path: only connect_matcher routes take it (Envoy skips routes
        // that need a path).
        let path_ok = path_ok && (req.method != "CONNECT" || self.path == PathMatch::Connect);
        path_ok
            && self
                .runtime_fraction
                .as_ref()
                .is_none_or(|f| f.enabled(req.runtime, req.random))
            && (!self.grpc || is_grpc(req.headers))
            && self.tls.is_none_or(|t| t.matches(req.peer_certificate))
            && self.headers.iter().all(|h| header_matches(h, req))
            && (self.query.is_empty() || query_matches(&self.query, path))
            && self.cookies.iter().all(|c| c.matches(req.headers))
            && self.metadata.iter().all(|m| m.matches(req.metadata))
            && self
                .filter_state
                .iter()
                .all(|m| m.matches(req.filter_state))
    }
}

/// The first value of cookie `name` in the request's `Cookie` headers, without the quotes
/// around a quoted value (Envoy's `parseCookieValue`).
pub fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = std::str::from_utf8(h.as_bytes()) else {
            continue;
        };
        for pair in s.split(';') {
            let pair = pair.trim_start_matches(' ');
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k == name {
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.to_string());
            }
        }
    }
    None
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// A gRPC request: `content-type` `application/grpc`, or that followed by `+` or `;` (Envoy's
/// `Grpc::Common::isGrpcRequestHeaders`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match ct.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

/// Whether the header matcher `m` accepts `req`.
pub fn header_matches(m: &HeaderMatch, req: &RequestView<'_>) -> bool {
    let pseudo = match &m.name {
        HeaderKey::Method => Some(req.method),
        HeaderKey::Path => Some(req.path),
        HeaderKey::Authority => Some(req.authority),
        HeaderKey::Scheme => Some(req.scheme),
        HeaderKey::OtherPseudo | HeaderKey::Header(_) => None,
    };
    let check = |value: &str| match &m.kind {
        HeaderMatchKind::Present(_) => true,
        HeaderMatchKind::String(sm) => sm.matches(value),
        HeaderMatchKind::Range(start, end) => {
            parse_i64(value).is_some_and(|n| n >= *start && n < *end)
        }
    };
    // A header sent several times matches when any of its values does (Envoy 1.40).
    let (present, any) = match (&m.name, pseudo) {
        (_, Some(v)) => (true, check(v)),
        (HeaderKey::Header(name), None) => {
            let mut values = req.headers.get_all(name).iter().peekable();
            let present = values.peek().is_some();
            (present, values.any(|v| check(v.to_str().unwrap_or(""))))
        }
        _ => (false, false),
    };
    if let HeaderMatchKind::Present(want) = &m.kind {
        return (present == *want) != m.invert;
    }
    let result = if present {
        any
    } else if m.missing_as_empty {
        check("")
    } else {
        // An absent header never matches, inverted or not (Envoy).
        return false;
    };
    result != m.invert
}

/// A header value as a signed integer, as `absl::SimpleAtoi` reads it: surrounding whitespace
/// and one sign allowed.
fn parse_i64(v: &str) -> Option<i64> {
    let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(pos) = v.strip_prefix('+') {
        return pos.parse().ok();
    }
    v.parse().ok()
}

/// `query_parameters`: each parameter's first value, undecoded, as Envoy's route matching
/// reads the query string.
pub fn query_matches(matchers: &[QueryMatch], path: &str) -> bool {
    let query = match path.split_once('?') {
        Some((_, q)) => q.split('#').next().unwrap_or(q),
        None => "",
    };
    matchers.iter().all(|m| {
        let first = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == m.name)
            .map(|(_, v)| v);
        match &m.check {
            QueryCheck::Present(want) => first.is_some() == *want,
            QueryCheck::String(sm) => first.is_some_and(|v| sm.matches(v)),
        }
    })
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `name`.
    pub name: String,
    /// `metadata` (`%METADATA(ROUTE:…)%`).
    pub metadata: Arc<crate::metadata::Metadata>,
    /// `match`.
    pub matcher: RouteMatch,
    /// `route`, `redirect` or `direct_response`.
    pub action: Action,
    /// `route.timeout` (default 15 s); `None` when disabled with 0.
    pub timeout: Option<Duration>,
    /// `route.retry_policy`, which replaces the virtual host's.
    pub retry: Option<Arc<retry::RetryPolicy>>,
    /// `route.hedge_policy.hedge_on_per_try_timeout` when the route has a hedge policy, which
    /// replaces the virtual host's whole.
    pub hedge: Option<bool>,
    /// `route.upgrade_configs`: upgrade types (lower case) this route enables or disables,
    /// whatever the connection manager says.
    pub upgrades: Vec<(String, bool)>,
    /// `upgrade_configs[].connect_config`: a CONNECT is terminated here, its payload sent to
    /// the cluster over TCP.
    pub connect_terminate: bool,
    /// `connect_config.allow_post`: a POST is terminated likewise, its body sent to the
    /// cluster over TCP and what comes back its response's body.
    pub connect_allow_post: bool,
    /// `request_headers_to_add|remove`.
    pub request_headers: Arc<HeaderParser>,
    /// `response_headers_to_add|remove`.
    pub response_headers: Arc<HeaderParser>,
    /// `typed_per_filter_config`.
    pub per_filter: PerFilterConfigs,
    /// `route.cors` (deprecated): the CORS filter's policy when no level has one in
    /// `typed_per_filter_config`.
    pub cors: Option<Arc<crate::model::CorsPolicy>>,
    /// `route.max_grpc_timeout` and `grpc_timeout_offset` (deprecated): a gRPC request's
    /// timeout from its `grpc-timeout`.
    pub grpc_timeout: Option<GrpcTimeout>,
    /// `decorator`: (`operation`, `propagate`), for a traced request's span.
    pub decorator: Option<(String, bool)>,
    /// `tracing`: the sampling, tags and name of its requests' spans.
    pub tracing: Option<Arc<crate::trace::RouteTracing>>,
    /// `stat_prefix`: its requests count in `vhost.<virtual host>.route.<stat_prefix>.*`.
    pub stat_prefix: Option<Arc<str>>,
    /// `request_body_buffer_limit`, else `per_request_buffer_limit_bytes`: over the virtual
    /// host's.
    pub buffer_limit: Option<u64>,
}

/// `max_grpc_timeout` (zero: none) and `grpc_timeout_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcTimeout {
    pub max: Duration,
    pub offset: Option<Duration>,
}

impl GrpcTimeout {
    /// A gRPC request's timeout from its `grpc-timeout` (absent: none), less the offset when
    /// that leaves some, capped by the maximum; `None` for no timeout (Envoy's router).
    pub fn timeout(&self, header: Option<Duration>) -> Option<Duration> {
        let mut t = header.unwrap_or(Duration::ZERO);
        if let Some(o) = self.offset {
            if o < t {
                t -= o;
            }
        }
        if !self.max.is_zero() && (t.is_zero() || t > self.max) {
            t = self.max;
        }
        (!t.is_zero()).then_some(t)
    }
}

/// What a route does with a request it matched.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `route`: forward to a cluster.
    Forward(Forward),
    /// `redirect`: answer with a redirect.
    Redirect(Redirect),
    /// `direct_response`: answer with this status and body.
    Direct {
        /// `status`.
        status: http::StatusCode,
        /// `body`, read when the configuration loaded.
        body: bytes::Bytes,
        /// `body_format`: the body written by this format (`%LOCAL_REPLY_BODY%` is `body`),
        /// with its content type.
        format: Option<Arc<crate::model::BodyFormat>>,
        /// A `body_format` without operators (any bytes, not only text): the content type
        /// that goes with `body`, which is then the format's own bytes.
        content_type: Option<http::HeaderValue>,
    },
    /// `non_forwarding_action`: for a filter to answer; one that reaches the router is
    /// answered as for a missing cluster (503, `NC`), as in Envoy.
    NonForwarding,
}

/// `RouteAction`: where a request goes and how it is rewritten on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `cluster`, `cluster_header` or `weighted_clusters`.
    pub target: Target,
    /// `cluster_not_found_response_code`: 503 (default) or 404.
    pub cluster_not_found: http::StatusCode,
    /// `prefix_rewrite` or `regex_rewrite`.
    pub path_rewrite: Option<PathRewrite>,
    /// `host_rewrite_literal`, `host_rewrite_header` or `auto_host_rewrite`.
    pub host_rewrite: Option<HostRewrite>,
    /// `append_x_forwarded_host`: a rewritten host's original goes to `x-forwarded-host`.
    pub append_x_forwarded_host: bool,
    /// `max_stream_duration`: the stream's duration limit on this route.
    pub stream_duration: Option<StreamDuration>,
    /// `priority: HIGH`: the cluster's `HIGH` circuit breakers and connection pools.
    pub high_priority: bool,
    /// `idle_timeout`: replaces the connection manager's `stream_idle_timeout` once the route
    /// is chosen (zero: none).
    pub idle_timeout: Option<Duration>,
    /// `request_mirror_policies`.
    pub mirrors: Vec<Mirror>,
    /// `hash_policy`: the request's hash for RING_HASH and MAGLEV clusters, in order.
    pub hash_policy: Vec<HashPolicy>,
    /// `metadata_match`: the subset of the cluster's hosts to use (a weighted cluster's own
    /// replaces it).
    pub metadata_match: Option<Arc<crate::model::MatchCriteria>>,
    /// `internal_redirect_policy`: upstream redirects followed inside the proxy.
    pub internal_redirect: Option<Arc<InternalRedirect>>,
    /// `rate_limits` and `include_vh_rate_limits` (none: neither set).
    pub rate_limits: Option<Box<RouteRateLimits>>,
}

/// A route's `rate_limits`: the descriptors rate limit filters make for its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRateLimits {
    /// `rate_limits`.
    pub policies: Vec<crate::model::RateLimitPolicy>,
    /// `include_vh_rate_limits`: the virtual host's `rate_limits` apply as well.
    pub include_vh: bool,
}

/// A route's `internal_redirect_policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalRedirect {
    /// `max_internal_redirects` (default 1).
    pub max: u32,
    /// `redirect_response_codes` among 301, 302, 303, 307 and 308 (default 302 alone; Envoy
    /// ignores others).
    pub codes: Vec<u16>,
    /// `allow_cross_scheme_redirect`.
    pub cross_scheme: bool,
    /// `predicates`: each must accept the route the redirect leads to.
    pub predicates: Vec<RedirectPredicate>,
    /// `response_headers_to_copy`: set on the next request from the redirect's response (or
    /// removed when it has none), before the route is chosen again.
    pub copy_headers: Vec<http::HeaderName>,
    /// The name of the route with this policy (what `previous_routes` keeps its record under).
    pub route_name: Arc<str>,
}

/// An internal redirect predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectPredicate {
    /// `allow_listed_routes`: the target route's name must be one of these.
    AllowListed(Vec<String>),
    /// `previous_routes`: a route already led to from this policy's route is not again.
    PreviousRoutes,
    /// `safe_cross_scheme`: no redirect from plain HTTP to HTTPS.
    SafeCrossScheme,
}

/// One of a route's `hash_policy`: a part of the request hashed, combined with the parts
/// before it (Envoy's rotate and xor).
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    pub kind: HashKind,
    /// `terminal`: once a hash exists, the policies after this one are not looked at.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKind {
    /// `header`: all the header's values, sorted (each rewritten first by `regex_rewrite`).
    Header {
        name: crate::model::HeaderKey,
        rewrite: Option<(crate::pattern::Regex, String)>,
    },
    /// `cookie`: its value; without the cookie and with a `ttl`, a cookie is made and sent in
    /// the response.
    Cookie {
        name: String,
        /// `ttl` (zero: a session cookie).
        ttl: Option<Duration>,
        path: String,
        /// `attributes`: (name, value), added after `Path`.
        attributes: Vec<(String, String)>,
    },
    /// `connection_properties.source_ip`: the downstream address, without its port.
    SourceIp,
    /// `query_parameter`: the first value of the parameter, as sent.
    QueryParameter(String),
    /// `filter_state`: the object under the key, when it can be hashed
    /// (`envoy.hashable_string`, Istio's principals).
    FilterState(String),
    /// `connection_properties` without `source_ip`: no hash.
    Nothing,
}

/// One of `request_mirror_policies`: where a copy of the request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// `cluster`, or `cluster_header` (no copy when the request lacks it).
    pub target: MirrorTarget,
    /// `runtime_fraction`: the share of requests mirrored (all without it).
    pub fraction: Option<crate::runtime::RuntimeFraction>,
    /// The copy's host.
    pub host: MirrorHost,
}

/// Where a mirror sends its copy.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorTarget {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`.
    Header(http::HeaderName),
}

/// The host a mirror's copy carries.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorHost {
    /// The request's with `-shadow` appended to its name (the default).
    Suffixed,
    /// `disable_shadow_host_suffix_append`: the request's.
    Same,
    /// `host_rewrite_literal`.
    Literal(http::HeaderValue),
}

/// A route's `max_stream_duration`, applied to the connection manager's stream timer once the
/// route is chosen, as Envoy's `refreshDurationTimeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDuration {
    /// `max_stream_duration` (zero: no limit, the connection manager's too).
    pub max: Option<std::time::Duration>,
    /// `grpc_timeout_header_max`: a request's `grpc-timeout` is the limit, capped by this
    /// (zero: not capped).
    pub grpc_header_max: Option<std::time::Duration>,
    /// `grpc_timeout_header_offset`: taken off the `grpc-timeout`.
    pub grpc_header_offset: Option<std::time::Duration>,
}

impl StreamDuration {
    /// The limit for a request with `grpc_timeout` (its header, parsed), given the connection
    /// manager's own; `None`: no limit.
    pub fn limit(
        &self,
        grpc_timeout: Option<std::time::Duration>,
        hcm: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        use std::time::Duration;
        match (grpc_timeout, self.grpc_header_max) {
            (Some(t), Some(cap)) => {
                let t = if !cap.is_zero() && t > cap { cap } else { t };
                let t = match self.grpc_header_offset {
                    Some(o) if !t.is_zero() => t.saturating_sub(o),
                    _ => t,
                };
                Some(t)
            }
            _ => match self.max {
                Some(m) if m.is_zero() => None,
                Some(m) => Some(m),
                None => hcm.filter(|d| *d > Duration::ZERO),
            },
        }
    }
}

/// A timeout as a `grpc-timeout` value, as Envoy writes one: milliseconds while they fit in
/// eight digits, else seconds, minutes or hours.
pub fn grpc_timeout_value(t: std::time::Duration) -> String {
    const MAX: u128 = 99_999_999;
    let mut time = t.as_millis();
    let mut units = ['m', 'S', 'M', 'H'].into_iter();
    let mut unit = units.next().unwrap_or('m');
    if time > MAX {
        time /= 1000;
        unit = units.next().unwrap_or('S');
    }
    while time > MAX {
        match units.next() {
            Some(u) => {
                time /= 60;
                unit = u;
            }
            None => {
                time = MAX;
                break;
            }
        }
    }
    format!("{time}{unit}")
}

/// A `grpc-timeout` header's value (`<up to 8 digits><H|M|S|m|u|n>`), as Envoy parses it.
pub fn grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The cluster a request goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster named by this request header.
    Header(http::HeaderName),
    /// `weighted_clusters`: one picked at random by weight (boxed: most routes have one
    /// cluster).
    Weighted(Box<Weighted>),
    /// `inline_cluster_specifier_plugin` (Envoy's matcher cluster specifier): the cluster its
    /// matcher's action names for the request, picked with the route; none: no cluster.
    Specifier(Arc<ClusterSpecifier>),
}

/// A cluster specifier plugin: what names a request's cluster.
#[derive(Debug, PartialEq)]
pub enum ClusterSpecifier {
    /// Envoy's matcher (`MatcherClusterSpecifier`): the cluster its matcher's action names;
    /// none: no cluster.
    Matcher(crate::matcher::Matcher<String>),
    /// Envoy's Lua cluster specifier (`LuaConfig`).
    Lua(crate::lua::LuaSpecifier),
}

/// What a matcher that reads only request headers (a virtual host's, a cluster specifier's:
/// translation refuses other inputs) sees of a request.
fn headers_only<'a>(req: &'a RequestView<'a>) -> crate::matcher::Data<'a> {
    let none = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    crate::matcher::Data {
        view: req,
        source: none,
        direct_source: none.ip(),
        local: none,
        server_name: None,
        transport_protocol: "",
        application_protocols: &crate::filter_chain_match::ApplicationProtocols::None,
        metadata: req.metadata,
    }
}

/// `weighted_clusters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    /// Each cluster with its configured weight.
    pub clusters: Vec<(String, u64)>,
    /// What each cluster (same order) changes when it is picked; `None` when none changes
    /// anything.
    pub each: Option<Vec<ClusterChanges>>,
    /// `runtime_key_prefix`: a cluster's weight is the runtime integer at
    /// `<prefix>.<cluster name>` when set.
    pub runtime_key_prefix: Option<String>,
    /// `random_value_specifier`: where the value that picks comes from, when not at random.
    pub random_value: Option<RandomValue>,
}

/// Where a weighted pick's value comes from (`random_value_specifier`).
#[derive(Debug, Clone, PartialEq)]
pub enum RandomValue {
    /// `header_name`: the request header's unsigned integer (at random when missing or not
    /// a number).
    Header(http::HeaderName),
    /// `use_hash_policy`: the hash of the route's `hash_policy` (at random without one).
    HashPolicy,
}

/// A weighted cluster's own `request_headers_to_add|remove`, `response_headers_to_add|remove`
/// and `host_rewrite_literal`, applied before the route's (Envoy's `WeightedClusterEntry`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterChanges {
    /// Request header changes.
    pub request_headers: Arc<HeaderParser>,
    /// Response header changes.
    pub response_headers: Arc<HeaderParser>,
    /// `host_rewrite_literal`.
    pub host_rewrite: Option<http::HeaderValue>,
    /// `metadata_match` merged over the route's: the subset this cluster's requests go to.
    pub metadata_match: Option<Arc<crate::model::MatchCriteria>>,
    /// `cluster_header`: the cluster is named by this request header (none when it is
    /// missing), in place of the entry's name.
    pub cluster_header: Option<http::HeaderName>,
    /// `typed_per_filter_config`: the filters' configurations when this cluster is picked,
    /// over the route's.
    pub per_filter: PerFilterConfigs,
}

impl Target {
    /// The cluster for a request with `headers`; `random` in `[0, u64::MAX]` picks among
    /// weighted clusters, whose weights the runtime may set.
    pub fn pick<'a>(
        &'a self,
        headers: &'a HeaderMap,
        runtime: &crate::runtime::Values,
        random: u64,
    ) -> Option<&'a str> {
        self.pick_with_changes(headers, runtime, random)
            .map(|(c, _)| c)
    }

    /// [`Self::pick`], with what the picked weighted cluster changes.
    pub fn pick_with_changes<'a: 'h, 'h>(
        &'a self,
        headers: &'h HeaderMap,
        runtime: &crate::runtime::Values,
        random: u64,
    ) -> Option<(&'h str, Option<&'a ClusterChanges>)> {
        match self {
            Target::Cluster(c) => Some((c, None)),
            Target::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|c| (c, None)),
            Target::Weighted(_) => {
                let i = self.weighted_index(headers, runtime, random)?;
                self.weighted_at(i, headers)
            }
            // Picked with the route ([`Self::specified`]).
            Target::Specifier(_) => None,
        }
    }

    /// The cluster a cluster specifier names for a request (none for other targets, or when
    /// a matcher finds no action). `counts` reads a cluster for a Lua script's `getCluster`.
    pub fn specified(
        &self,
        req: &RequestView<'_>,
        counts: &dyn Fn(&str) -> Option<crate::lua::ClusterCounts>,
    ) -> Option<String> {
        let Target::Specifier(s) = self else {
            return None;
        };
        match &**s {
            ClusterSpecifier::Matcher(m) => m.evaluate(&headers_only(req)).cloned(),
            ClusterSpecifier::Lua(l) => Some(l.cluster(req, counts)),
        }
    }

    /// Which of a weighted target's clusters a request picks (none for other targets, or when
    /// every weight is 0).
    pub fn weighted_index(
        &self,
        headers: &HeaderMap,
        runtime: &crate::runtime::Values,
        random: u64,
    ) -> Option<usize> {
        match self {
            Target::Cluster(_) | Target::Header(_) | Target::Specifier(_) => None,
            Target::Weighted(w) => {
                let weight = |(c, d): &(String, u64)| match &w.runtime_key_prefix {
                    Some(p) => runtime.integer(&format!("{p}.{c}"), *d),
                    None => *d,
                };
                let total: u64 = w.clusters.iter().map(weight).sum();
                if total == 0 {
                    return None;
                }
                // A header's value, read as Envoy's `SimpleAtoi` reads it.
                let random = match &w.random_value {
                    Some(RandomValue::Header(h)) => headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim)
                        .map(|v| v.strip_prefix('+').unwrap_or(v))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(random),
                    _ => random,
                };
                // As Envoy: a value in [0, total), then the first cluster whose running sum
                // of weights exceeds it (the runtime read again: a change in between only
                // moves this one pick).
                let mut at = random % total;
                for (i, c) in w.clusters.iter().enumerate() {
                    let cw = weight(c);
                    if at < cw {
                        return Some(i);
                    }
                    at -= cw;
                }
                None
            }
        }
    }

    /// The weighted cluster at `index` (from [`Self::weighted_index`]) with what it changes;
    /// a `cluster_header` entry's name is read from `headers`.
    pub fn weighted_at<'a: 'h, 'h>(
        &'a self,
        index: usize,
        headers: &'h HeaderMap,
    ) -> Option<(&'h str, Option<&'a ClusterChanges>)> {
        let Target::Weighted(w) = self else {
            return None;
        };
        let changes = w.each.as_ref().and_then(|e| e.get(index));
        let name = match changes.and_then(|c| c.cluster_header.as_ref()) {
            Some(h) => headers.get(h).and_then(|v| v.to_str().ok())?,
            None => &w.clusters.get(index)?.0,
        };
        Some((name, changes))
    }
}

/// How the path is rewritten before the request is forwarded (or redirected).
#[derive(Debug, Clone, PartialEq)]
pub enum PathRewrite {
    /// `prefix_rewrite`: the part the route's prefix matched is replaced.
    Prefix(String),
    /// `regex_rewrite`: every match of the pattern in the path (query excluded) is replaced.
    Regex(crate::pattern::Regex, String),
    /// `path_rewrite_policy` with Envoy's URI template rewriter, filled from the route's path
    /// template.
    Template(uri_template::RewriteTemplate),
    /// `path_rewrite`: the path (query kept) becomes the format's rendering, unless empty (a
    /// value the stream does not have renders empty); the router renders it.
    Format(std::sync::Arc<crate::access_log::Format>),
}

/// How the `:authority` is rewritten before the request is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub enum HostRewrite {
    /// `host_rewrite_literal`.
    Literal(http::HeaderValue),
    /// `host_rewrite_header`: the value of this request header, when present.
    Header(http::HeaderName),
    /// `auto_host_rewrite`: the chosen host's hostname (for static and DNS clusters).
    Auto,
    /// `host_rewrite_path_regex`: every match of the pattern in the path (query and fragment
    /// left out) replaced, as the host.
    PathRegex(Box<(crate::pattern::Regex, String)>),
    /// `host_rewrite`: the format's rendering (a value the stream does not have is `-`), unless
    /// empty; the router renders it.
    Format(std::sync::Arc<crate::access_log::Format>),
}

/// `RedirectAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// `scheme_redirect`, or `https` for `https_redirect`.
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect`.
    pub port: Option<u16>,
    /// `path_redirect`, `prefix_rewrite` or `regex_rewrite`.
    pub path: PathRedirect,
    /// `response_code`.
    pub status: http::StatusCode,
    /// `strip_query`.
    pub strip_query: bool,
}

/// The path of a redirect's location.
#[derive(Debug, Clone, PartialEq)]
pub enum PathRedirect {
    /// The request's own path.
    Keep,
    /// `path_redirect`.
    Path(String),
    /// `prefix_rewrite` or `regex_rewrite` of the request's path.
    Rewrite(PathRewrite),
}

impl Route {
    /// Whether an upgrade of `kind` (lower case) may go through this route: the route's own
    /// setting wins; without one, the connection manager's `upgrade_configs` decide (Envoy's
    /// `createUpgradeFilterChain`).
    pub fn allows_upgrade(&self, kind: &str, hcm: &[(String, bool)]) -> bool {
        match self.upgrades.iter().find(|(t, _)| t == kind) {
            Some((_, enabled)) => *enabled,
            None => upgrade_allowed(kind, hcm),
        }
    }

    /// The path with `rewrite` applied (`path` includes the query). The prefix a
    /// `prefix_rewrite` replaces is this route's matched prefix.
    pub fn rewrite_path(&self, rewrite: &PathRewrite, path: &str) -> String {
        match rewrite {
            PathRewrite::Prefix(new) => {
                let len = match &self.matcher.path {
                    PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => p.len(),
                    PathMatch::Exact(_) => path.split(['?', '#']).next().unwrap_or(path).len(),
                    PathMatch::Regex(_) | PathMatch::Connect | PathMatch::Template(_) => 0,
                };
                let len = len.min(path.len());
                if !path.is_char_boundary(len) {
                    return path.to_string();
                }
                format!("{new}{}", &path[len..])
            }
            PathRewrite::Regex(re, sub) => {
                let (bare, query) = match path.find('?') {
                    Some(i) => path.split_at(i),
                    None => (path, ""),
                };
                format!("{}{query}", re.replace_all(bare, sub.as_str()))
            }
            PathRewrite::Template(rw) => match &self.matcher.path {
                PathMatch::Template(m) => rw.rewrite(m, path).unwrap_or_else(|| path.to_string()),
                _ => path.to_string(),
            },
            // Rendered by the router ([`with_path_only`]).
            PathRewrite::Format(_) => path.to_string(),
        }
    }
}

/// `path` (with its query and fragment) with its path part replaced by `new` (Envoy's
/// `generateNewPath`).
pub fn with_path_only(path: &str, new: &str) -> String {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    format!("{new}{}", &path[end..])
}

/// Whether the connection manager's `upgrade_configs` enable an upgrade of `kind`.
fn upgrade_allowed(kind: &str, hcm: &[(String, bool)]) -> bool {
    hcm.iter().any(|(t, enabled)| t == kind && *enabled)
}

/// An HTTP filter's configuration for the requests of a route, a virtual host or a route
/// table (one entry of `typed_per_filter_config`).
#[derive(Debug, Clone, PartialEq)]
pub enum PerFilterConfig {
    /// A `FilterConfig` with `disabled`: the filter does not run.
    Disabled,
    /// A `FilterConfig` without a configuration: the filter runs (even one `disabled` in the
    /// connection manager) with its own configuration.
    Enabled,
    /// `envoy.filters.http.local_ratelimit`'s own configuration, with its own buckets.
    LocalRateLimit(Arc<crate::model::HttpLocalRateLimit>),
    /// `envoy.filters.http.compressor`'s `CompressorPerRoute`.
    Compressor(CompressorPerRoute),
    /// `envoy.filters.http.fault`'s own configuration.
    Fault(Arc<crate::model::HttpFault>),
    /// `envoy.filters.http.rbac`'s `RBACPerRoute` with rules.
    Rbac(Arc<crate::rbac::HttpRbac>),
    /// `envoy.filters.http.jwt_authn`'s `PerRouteConfig`.
    Jwt(crate::jwt::PerRoute),
    /// `envoy.filters.http.header_to_metadata`'s own configuration (it replaces the filter's).
    HeaderToMetadata(Arc<crate::model::HeaderToMetadata>),
    /// `envoy.filters.http.cors`'s `CorsPolicy`.
    Cors(Arc<crate::model::CorsPolicy>),
    /// `envoy.filters.http.ratelimit`'s `RateLimitPerRoute`.
    RateLimit(Arc<crate::model::RateLimitPerRoute>),
    /// `envoy.filters.http.ext_authz`'s `ExtAuthzPerRoute`.
    ExtAuthz(Arc<crate::model::ExtAuthzPerRoute>),
    /// `envoy.filters.http.basic_auth`'s `BasicAuthPerRoute`: its users.
    BasicAuth(Arc<crate::model::BasicAuthUsers>),
    /// `envoy.filters.http.header_mutation`'s `HeaderMutationPerRoute`.
    HeaderMutation(Arc<crate::model::HeaderMutations>),
    /// `envoy.filters.http.stateful_session`'s `StatefulSessionPerRoute` with a configuration
    /// (`disabled` is [`PerFilterConfig::Disabled`]).
    StatefulSession(Arc<crate::model::StatefulSession>),
}

/// `CompressorPerRoute`: what it changes in the filter's response direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompressorPerRoute {
    /// `disabled` (false) or `overrides.response_direction_config` (true): whether responses
    /// are compressed, whatever the filter's `enabled` says.
    pub response_enabled: Option<bool>,
    /// `overrides.response_direction_config.remove_accept_encoding_header`.
    pub remove_accept_encoding: Option<bool>,
}

/// `typed_per_filter_config`, by filter name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PerFilterConfigs(pub Vec<(String, PerFilterConfig)>);

impl PerFilterConfigs {
    /// The configuration for the filter called `name`.
    pub fn get(&self, name: &str) -> Option<&PerFilterConfig> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `name`.
    pub name: String,
    /// `metadata` (`%METADATA(VIRTUAL_HOST:…)%`).
    pub metadata: Arc<crate::metadata::Metadata>,
    /// `domains`.
    pub domains: Vec<String>,
    /// `routes`, in order; with a `matcher`, the routes of its actions.
    pub routes: Vec<Route>,
    /// `matcher`: the match tree whose action names the routes a request may take (indices
    /// into `routes`, tried in order); a request it finds no action for has no route.
    pub matcher: Option<Arc<crate::matcher::Matcher<Vec<usize>>>>,
    /// `request_headers_to_add|remove`.
    pub request_headers: Arc<HeaderParser>,
    /// `response_headers_to_add|remove`.
    pub response_headers: Arc<HeaderParser>,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on upstream requests.
    pub attempt_count_upstream: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on responses.
    pub attempt_count_response: bool,
    /// `include_is_timeout_retry_header`: `x-envoy-is-timeout-retry` on retried requests.
    pub is_timeout_retry_header: bool,
    /// `require_tls`.
    pub require_tls: RequireTls,
    /// `retry_policy`, for routes without their own.
    pub retry: Option<Arc<retry::RetryPolicy>>,
    /// `hedge_policy.hedge_on_per_try_timeout`, for routes without a hedge policy.
    pub hedge: bool,
    /// `typed_per_filter_config`, for routes without their own.
    pub per_filter: PerFilterConfigs,
    /// `cors` (deprecated), after the route's, when no level has a `typed_per_filter_config`
    /// policy.
    pub cors: Option<Arc<crate::model::CorsPolicy>>,
    /// `rate_limits`: descriptors for the rate limit filters, by the routes' choice.
    pub rate_limits: Vec<crate::model::RateLimitPolicy>,
    /// `virtual_clusters`: the first whose headers all match names the request's; with any,
    /// the others count as `other`.
    pub virtual_clusters: Vec<VirtualCluster>,
    /// `request_body_buffer_limit`, else `per_request_buffer_limit_bytes`: what a request body
    /// kept for retries, mirrors and redirects may hold, for routes without their own,
    /// instead of the connection's limit.
    pub buffer_limit: Option<u64>,
}

/// A `VirtualCluster`: requests its header matchers pick count in
/// `vhost.<vhost>.vcluster.<name>.*` and show `%VIRTUAL_CLUSTER_NAME%`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualCluster {
    /// `name`.
    pub name: Arc<str>,
    /// `headers` (pseudo-headers too), all of which must match.
    pub headers: Vec<HeaderMatch>,
}

/// `VirtualHost.require_tls`: requests whose `x-forwarded-proto` is not `https` are redirected
/// to https (301) — all of them, or those that are not internal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTls {
    /// `NONE`.
    None,
    /// `EXTERNAL_ONLY`.
    ExternalOnly,
    /// `ALL`.
    All,
}

impl VirtualHost {
    /// The index of the route a request takes: the first that accepts it, of all routes or of
    /// those the `matcher` names.
    pub fn route_index(&self, req: &RequestView<'_>) -> Option<usize> {
        let Some(m) = &self.matcher else {
            return self.routes.iter().position(|r| r.matcher.matches(req));
        };
        m.evaluate(&headers_only(req))?
            .iter()
            .copied()
            .find(|&i| self.routes[i].matcher.matches(req))
    }

    /// The virtual cluster a request counts in: the first that matches, else `other` (`None`
    /// when the virtual host has no virtual clusters).
    pub fn virtual_cluster(&self, req: &RequestView<'_>) -> Option<Option<&VirtualCluster>> {
        if self.virtual_clusters.is_empty() {
            return None;
        }
        Some(
            self.virtual_clusters
                .iter()
                .find(|vc| vc.headers.iter().all(|h| header_matches(h, req))),
        )
    }
}

/// One `RouteConfiguration`: its virtual hosts in order and what applies to all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `name`.
    pub name: String,
    /// `virtual_hosts`.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `ignore_port_in_host_matching`.
    pub ignore_port: bool,
    /// `request_headers_to_add|remove`.
    pub request_headers: Arc<HeaderParser>,
    /// `response_headers_to_add|remove`.
    pub response_headers: Arc<HeaderParser>,
    /// `most_specific_header_mutations_wins`.
    pub most_specific_wins: bool,
    /// `typed_per_filter_config`, for virtual hosts and routes without their own.
    pub per_filter: PerFilterConfigs,
    /// `internal_only_headers`: removed from requests that are not internal.
    pub internal_only_headers: Vec<http::HeaderName>,
    /// `vhost_header`: the header whose value picks the virtual host, instead of the host.
    pub vhost_header: Option<http::HeaderName>,
}

impl RouteConfig {
    /// Refuses duplicate domains and misplaced wildcards as Envoy does (what
    /// [`RouteTable::new`] would refuse).
    pub fn check(&self) -> Result<(), String> {
        DomainIndex::new(&self.name, &self.virtual_hosts).map(drop)
    }
}

/// The virtual hosts of a route configuration by domain.
#[derive(Debug, Default, PartialEq)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// Wildcard suffixes (`*.example.com` → `.example.com`), longest first.
    suffixes: BTreeMap<std::cmp::Reverse<usize>, HashMap<String, usize>>,
    /// Wildcard prefixes (`api.*` → `api.`), longest first.
    prefixes: BTreeMap<std::cmp::Reverse<usize>, HashMap<String, usize>>,
    default: Option<usize>,
}

impl DomainIndex {
    fn new(name: &str, vhosts: &[VirtualHost]) -> Result<Self, String> {
        let mut t = DomainIndex::default();
        for (i, vh) in vhosts.iter().enumerate() {
            for domain in &vh.domains {
                let d = domain.to_ascii_lowercase();
                let dup = if d == "*" {
                    if t.default.is_some() {
                        return Err(format!(
                            "only a single wildcard domain is permitted in route {name}"
                        ));
                    }
                    t.default = Some(i);
                    false
                } else if let Some(rest) = d.strip_prefix('*') {
                    t.suffixes
                        .entry(std::cmp::Reverse(rest.len()))
                        .or_default()
                        .insert(rest.to_string(), i)
                        .is_some()
                } else if let Some(rest) = d.strip_suffix('*') {
                    t.prefixes
                        .entry(std::cmp::Reverse(rest.len()))
                        .or_default()
                        .insert(rest.to_string(), i)
                        .is_some()
                } else {
                    t.exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(format!(
                        "only unique values for domains are permitted: duplicate entry of domain {d} in route {name}"
                    ));
                }
            }
        }
        Ok(t)
    }
}

/// A route configuration as a worker serves it: the configuration with its virtual hosts
/// indexed by domain.
#[derive(Debug, PartialEq)]
pub struct RouteTable {
    config: Arc<RouteConfig>,
    index: DomainIndex,
    formats: bool,
}

impl std::ops::Deref for RouteTable {
    type Target = RouteConfig;

    fn deref(&self) -> &RouteConfig {
        &self.config
    }
}

impl RouteConfig {
    /// Whether a header value of any level, or a route's `path_rewrite` or `host_rewrite`,
    /// renders operators for the stream.
    fn formats_headers(&self) -> bool {
        let pair = |a: &HeaderParser, b: &HeaderParser| a.formats() || b.formats();
        pair(&self.request_headers, &self.response_headers)
            || self.virtual_hosts.iter().any(|vh| {
                pair(&vh.request_headers, &vh.response_headers)
                    || vh.routes.iter().any(|r| {
                        pair(&r.request_headers, &r.response_headers)
                            || matches!(
                                &r.action,
                                Action::Forward(Forward {
                                    path_rewrite: Some(PathRewrite::Format(_)),
                                    ..
                                }) | Action::Forward(Forward {
                                    host_rewrite: Some(HostRewrite::Format(_)),
                                    ..
                                })
                            )
                            || match &r.action {
                                Action::Forward(Forward {
                                    target: Target::Weighted(w),
                                    ..
                                }) => w.each.as_ref().is_some_and(|each| {
                                    each.iter()
                                        .any(|c| pair(&c.request_headers, &c.response_headers))
                                }),
                                _ => false,
                            }
                    })
            })
    }
}

impl RouteTable {
    /// Indexes the virtual hosts; refuses what [`RouteConfig::check`] refuses.
    pub fn new(config: Arc<RouteConfig>) -> Result<Self, String> {
        let index = DomainIndex::new(&config.name, &config.virtual_hosts)?;
        let formats = config.formats_headers();
        Ok(RouteTable {
            config,
            index,
            formats,
        })
    }

    /// Whether a header value anywhere in it renders operators for the stream (the stream's
    /// record must be kept).
    pub fn formats_headers(&self) -> bool {
        self.formats
    }

    /// The configuration it serves.
    pub fn config(&self) -> &Arc<RouteConfig> {
        &self.config
    }

    /// The index of the virtual host for a `Host`/`:authority` value.
    pub fn virtual_host_index(&self, authority: &str) -> Option<usize> {
        // The common sidecar table has only `*`: nothing to look up.
        if self.index.exact.is_empty()
            && self.index.suffixes.is_empty()
            && self.index.prefixes.is_empty()
        {
            return self.index.default;
        }
        let mut host = authority;
        if self.config.ignore_port {
            host = strip_port(host);
        }
        let host = host.to_ascii_lowercase();
        if let Some(i) = self.index.exact.get(&host) {
            return Some(*i);
        }
        // A wildcard must stand for at least one character.
        for (std::cmp::Reverse(len), map) in &self.index.suffixes {
            if *len < host.len() && host.is_char_boundary(host.len() - len) {
                if let Some(i) = map.get(&host[host.len() - len..]) {
                    return Some(*i);
                }
            }
        }
        for (std::cmp::Reverse(len), map) in &self.index.prefixes {
            if *len < host.len() && host.is_char_boundary(*len) {
                if let Some(i) = map.get(&host[..*len]) {
                    return Some(*i);
                }
            }
        }
        self.index.default
    }

    /// The virtual host for a `Host`/`:authority` value.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.virtual_host_index(authority)
            .map(|i| &self.config.virtual_hosts[i])
    }
}

/// `host:port` → `host`; IPv6 literals keep their brackets.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.rfind(']') {
        return &host[..=end];
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_and_route_stream_durations_as_envoy() {
        use std::time::Duration;
        assert_eq!(grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(grpc_timeout("123456789S"), None);
        assert_eq!(grpc_timeout("S"), None);
        assert_eq!(grpc_timeout("5s"), None);
        assert_eq!(grpc_timeout("\u{537}"), None);
        let ms = Duration::from_millis;
        let istio = StreamDuration {
            max: Some(Duration::ZERO),
            grpc_header_max: Some(Duration::ZERO),
            grpc_header_offset: None,
        };
        assert_eq!(istio.limit(Some(ms(300)), Some(ms(9))), Some(ms(300)));
        assert_eq!(istio.limit(None, Some(ms(9))), None);
        let capped = StreamDuration {
            max: None,
            grpc_header_max: Some(ms(200)),
            grpc_header_offset: Some(ms(50)),
        };
        assert_eq!(capped.limit(Some(ms(10_000)), None), Some(ms(150)));
        assert_eq!(capped.limit(Some(ms(20)), None), Some(Duration::ZERO));
        assert_eq!(capped.limit(None, Some(ms(9))), Some(ms(9)));
    }

    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            matcher: None,
            name: name.into(),
            metadata: Arc::default(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![],
            request_headers: Arc::default(),
            response_headers: Arc::default(),
            attempt_count_upstream: false,
            attempt_count_response: false,
            is_timeout_retry_header: false,
            require_tls: RequireTls::None,
            retry: None,
            hedge: false,
            per_filter: PerFilterConfigs::default(),
            cors: None,
            rate_limits: Vec::new(),
            virtual_clusters: Vec::new(),
            buffer_limit: None,
        }
    }

    fn config(virtual_hosts: Vec<VirtualHost>, ignore_port: bool) -> RouteConfig {
        RouteConfig {
            name: "rc".into(),
            virtual_hosts,
            ignore_port,
            request_headers: Arc::default(),
            response_headers: Arc::default(),
            most_specific_wins: false,
            internal_only_headers: Vec::new(),
            vhost_header: None,
            per_filter: PerFilterConfigs::default(),
        }
    }

    fn table(ignore_port: bool) -> RouteTable {
        let vhosts = vec![
            vh("exact", &["example.com", "example.com:8080"]),
            vh("suffix", &["*.example.com"]),
            vh("longsuffix", &["*.api.example.com"]),
            vh("prefix", &["api.*"]),
            vh("default", &["*"]),
        ];
        RouteTable::new(Arc::new(config(vhosts, ignore_port))).expect("valid table")
    }

    fn pick<'a>(t: &'a RouteTable, host: &str) -> &'a str {
        t.virtual_host(host)
            .map(|v| v.name.as_str())
            .unwrap_or("none")
    }

    #[test]
    fn envoy_domain_order() {
        let t = table(false);
        assert_eq!(pick(&t, "example.com"), "exact");
        assert_eq!(pick(&t, "EXAMPLE.com"), "exact");
        assert_eq!(pick(&t, "example.com:8080"), "exact");
        assert_eq!(pick(&t, "a.example.com"), "suffix");
        assert_eq!(pick(&t, "v1.api.example.com"), "longsuffix");
        assert_eq!(pick(&t, "api.other.org"), "prefix");
        // The port is part of the host unless ignore_port_in_host_matching.
        assert_eq!(pick(&t, "example.com:9090"), "default");
        assert_eq!(pick(&t, "a.example.com:80"), "default");
        // The wildcard must cover at least one character.
        assert_eq!(pick(&t, ".example.com"), "default");
        assert_eq!(pick(&t, "nothing"), "default");
    }

    #[test]
    fn ignore_port() {
        let t = table(true);
        assert_eq!(pick(&t, "a.example.com:80"), "suffix");
        assert_eq!(pick(&t, "[::1]:80"), "default");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("host"), "host");
    }

    #[test]
    fn duplicates_are_refused() {
        let e = config(vec![vh("a", &["x.com"]), vh("b", &["X.com"])], false).check();
        assert!(e.unwrap_err().contains("duplicate entry of domain x.com"));
        let e = config(vec![vh("a", &["*"]), vh("b", &["*"])], false).check();
        assert!(e.unwrap_err().contains("single wildcard"));
    }

    #[test]
    fn grpc_timeouts_as_envoys_router_sets_them() {
        let ms = Duration::from_millis;
        let g = GrpcTimeout {
            max: ms(2000),
            offset: Some(ms(500)),
        };
        assert_eq!(g.timeout(Some(ms(1000))), Some(ms(500)));
        assert_eq!(g.timeout(Some(ms(10_000))), Some(ms(2000)));
        assert_eq!(g.timeout(None), Some(ms(2000)));
        assert_eq!(g.timeout(Some(ms(100))), Some(ms(100)));
        let unbounded = GrpcTimeout {
            max: Duration::ZERO,
            offset: None,
        };
        assert_eq!(unbounded.timeout(None), None);
        assert_eq!(unbounded.timeout(Some(ms(3000))), Some(ms(3000)));
        assert_eq!(grpc_timeout_value(ms(500)), "500m");
        assert_eq!(grpc_timeout_value(ms(99_999_999)), "99999999m");
        assert_eq!(grpc_timeout_value(ms(100_000_000)), "100000S");
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(200_000_000)),
            "3333333M"
        );
    }

    #[test]
    fn upgrades_route_setting_wins_over_the_connection_manager() {
        let mut r = Route {
            name: String::new(),
            metadata: Arc::default(),
            matcher: RouteMatch::new(PathMatch::Prefix("/".into()), true, vec![]),
            action: Action::Direct {
                status: http::StatusCode::OK,
                body: bytes::Bytes::new(),
                format: None,
                content_type: None,
            },
            timeout: None,
            retry: None,
            hedge: None,
            upgrades: vec![],
            connect_terminate: false,
            connect_allow_post: false,
            request_headers: Arc::default(),
            response_headers: Arc::default(),
            per_filter: PerFilterConfigs::default(),
            cors: None,
            grpc_timeout: None,
            decorator: None,
            tracing: None,
            stat_prefix: None,
            buffer_limit: None,
        };
        let hcm = vec![("websocket".to_string(), true), ("off".to_string(), false)];
        assert!(r.allows_upgrade("websocket", &hcm));
        assert!(!r.allows_upgrade("off", &hcm));
        assert!(!r.allows_upgrade("other", &hcm));
        r.upgrades = vec![("websocket".into(), false), ("other".into(), true)];
        assert!(!r.allows_upgrade("websocket", &hcm));
        assert!(r.allows_upgrade("other", &hcm));
    }

    #[test]
    fn path_matching() {
        let h = HeaderMap::new();
        let get = |p| RequestView::get(p, &h);
        let m = RouteMatch::new(PathMatch::Prefix("/Api".into()), true, vec![]);
        assert!(m.matches(&get("/Api/x?q")));
        assert!(!m.matches(&get("/api/x")));
        let m = RouteMatch::new(PathMatch::Prefix("/Api".into()), false, vec![]);
        assert!(m.matches(&get("/api/x")));
        let m = RouteMatch::new(PathMatch::Exact("/a".into()), true, vec![]);
        assert!(m.matches(&get("/a?x=1")));
        assert!(!m.matches(&get("/a/")));
        let m = RouteMatch::new(PathMatch::SeparatedPrefix("/Api".into()), false, vec![]);
        for (p, want) in [
            ("/api", true),
            ("/API/x", true),
            ("/api?x", true),
            ("/apix", false),
            ("/ap", false),
        ] {
            assert_eq!(m.matches(&get(p)), want, "{p}");
        }
    }

    #[test]
    fn header_and_query_checks() {
        assert_eq!(parse_i64(" 42 "), Some(42));
        assert_eq!(parse_i64("+7"), Some(7));
        assert_eq!(parse_i64("-7"), Some(-7));
        assert_eq!(parse_i64("7a"), None);
        assert_eq!(parse_i64("+-7"), None);
        assert_eq!(parse_i64(""), None);
        let q = |name: &str, check| QueryMatch {
            name: name.into(),
            check,
        };
        assert!(query_matches(
            &[q("a", QueryCheck::Present(true))],
            "/p?b=1&a"
        ));
        assert!(query_matches(
            &[q("a", QueryCheck::Present(false))],
            "/p?b=1"
        ));
        assert!(!query_matches(&[q("a", QueryCheck::Present(true))], "/p"));
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/grpc+proto".parse().expect("value"),
        );
        assert!(is_grpc(&h));
        h.insert("content-type", "application/grpcx".parse().expect("value"));
        assert!(!is_grpc(&h));
    }
}
