//! `envoy.filters.http.jwt_authn`: each request's tokens found where its providers look
//! (`Authorization: Bearer` and `access_token` unless configured otherwise), checked against
//! the requirement its route or the filter's rules give, as Envoy's filter does it:
//!
//! - every token found for a requirement must verify (the last found first);
//! - a verified token is taken out of the request unless `forward`, and its payload and claims
//!   are added as `forward_payload_header` and `claim_to_headers` (a client's own copies of
//!   those headers are removed first, always);
//! - a failure is a 401 with `www-authenticate: Bearer realm="<url>"` (and
//!   `error="invalid_token"` once a token was found), a 403 for audiences; the body is the
//!   verifier's message.
//!
//! Stats under `http.<prefix>.jwt_authn.<stat_prefix>`: `allowed`, `denied`,
//! `cors_preflight_bypassed` (and Envoy's cache and fetch counters, which stay 0 for local keys
//! except `jwt_cache_miss`, a token checked).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::http::local_reply::LocalReply;
use crate::router::PerFilterConfig;
use crate::stats::{Counter, Shard};
use skiff_config::jwt::{self, Failure, Jwt, JwtAuthn, PerRoute, Provider, Requirement};

#[derive(Debug)]
struct Stats {
    jwks_fetch_success: Counter,
    jwks_fetch_failed: Counter,
    allowed: Counter,
    denied: Counter,
    cors_preflight_bypassed: Counter,
    jwt_cache_miss: Counter,
}

/// The filter of one connection manager on one worker.
#[derive(Debug)]
pub struct Factory {
    prepared: Rc<Prepared>,
}

/// What every stream's filter reads, worked out once from the configuration.
#[derive(Debug)]
struct Prepared {
    config: Arc<JwtAuthn>,
    stats: Stats,
    /// Each provider's token locations, by provider name.
    locations: HashMap<String, Vec<Location>>,
    /// The providers in name order, for `allow_missing` and `allow_missing_or_failed`, which
    /// pick a token's provider by its issuer.
    ordered: Vec<Arc<Provider>>,
    /// Every provider's locations, each once, in that order.
    all_locations: Vec<Location>,
    /// The headers verified tokens set: a client's own copies are removed first.
    set_headers: Vec<HeaderName>,
    /// A provider's keys are remote (a request may have to wait for them).
    remote: bool,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<JwtAuthn>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let prefix = format!("http.{stat_prefix}.jwt_authn.{}", config.stat_prefix);
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let _ = c("jwt_cache_hit");
        let stats = Stats {
            jwks_fetch_success: c("jwks_fetch_success"),
            jwks_fetch_failed: c("jwks_fetch_failed"),
            allowed: c("allowed"),
            denied: c("denied"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            jwt_cache_miss: c("jwt_cache_miss"),
        };
        let mut ordered: Vec<Arc<Provider>> = config.providers.values().cloned().collect();
        ordered.sort_by(|a, b| a.name.cmp(&b.name));
        let locations: HashMap<String, Vec<Location>> = ordered
            .iter()
            .map(|p| (p.name.clone(), locations(p)))
            .collect();
        let mut all_locations: Vec<Location> = Vec::new();
        for p in &ordered {
            for l in &locations[&p.name] {
                if !all_locations.contains(l) {
                    all_locations.push(l.clone());
                }
            }
        }
        let set_headers = ordered
            .iter()
            .flat_map(|p| {
                p.forward_payload_header
                    .iter()
                    .chain(p.claim_to_headers.iter().map(|(h, _)| h))
                    .cloned()
            })
            .collect();
        Factory {
            prepared: Rc::new(Prepared {
                remote: ordered.iter().any(|p| p.remote.is_some()),
                config,
                stats,
                locations,
                ordered,
                all_locations,
                set_headers,
            }),
        }
    }

    /// Whether a provider writes the stream's dynamic metadata.
    pub fn writes_metadata(&self) -> bool {
        self.prepared.ordered.iter().any(|p| p.writes_metadata())
    }

    /// The filter for one stream, with its route's `PerRouteConfig` if it has one, writing
    /// into `metadata`.
    pub fn filter(
        &self,
        route: Option<&PerFilterConfig>,
        metadata: Option<&crate::stream_info::DynamicMetadata>,
        worker: &Rc<crate::worker::Worker>,
    ) -> JwtFilter {
        JwtFilter {
            worker: worker.clone(),
            prepared: self.prepared.clone(),
            per_route: match route {
                Some(PerFilterConfig::Jwt(p)) => Some(p.clone()),
                _ => None,
            },
            metadata: metadata.cloned(),
            clear_route_cache: std::cell::Cell::new(false),
        }
    }
}

/// The filter on one stream.
pub struct JwtFilter {
    /// The worker, whose clusters remote keys are fetched through.
    worker: Rc<crate::worker::Worker>,
    prepared: Rc<Prepared>,
    per_route: Option<PerRoute>,
    /// The stream's dynamic metadata, when a provider writes some.
    metadata: Option<crate::stream_info::DynamicMetadata>,
    /// A token of a provider with `clear_route_cache` verified.
    clear_route_cache: std::cell::Cell<bool>,
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Location {
    /// A header, with the prefix before the token.
    Header(HeaderName, String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// A token and where it was.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    location: Location,
}

/// What a verified token adds to the request.
struct Verified {
    provider: Arc<Provider>,
    location: Location,
    jwt: Jwt,
}

/// Where a provider looks: its own locations, or Envoy's defaults.
fn locations(p: &Provider) -> Vec<Location> {
    if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
        return vec![
            Location::Header(http::header::AUTHORIZATION, "Bearer ".to_string()),
            Location::Param("access_token".to_string()),
        ];
    }
    let mut out: Vec<Location> = p
        .from_headers
        .iter()
        .map(|(h, prefix)| Location::Header(h.clone(), prefix.clone()))
        .collect();
    out.extend(p.from_params.iter().cloned().map(Location::Param));
    out.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    out
}

/// The characters a token is made of (base64url and the dots between its parts).
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// The token in a header value after `prefix`: from the first token character after it to the
/// end of the value (Envoy's `extractJWT`).
fn after_prefix(value: &str, prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some(value.to_string());
    }
    let at = value.find(prefix)? + prefix.len();
    let rest = &value[at..];
    Some(match rest.find(token_char) {
        Some(start) => rest[start..].to_string(),
        None => rest.to_string(),
    })
}

fn query_pairs(path: &str) -> impl Iterator<Item = (&str, &str)> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// The tokens found at `locs`, in the order Envoy's extractor lists them.
fn extract(head: &http::request::Parts, locs: &[Location]) -> Vec<Token> {
    let mut out = Vec::new();
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    for loc in locs {
        match loc {
            Location::Header(name, prefix) => {
                let values: Vec<&str> = head
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                // Envoy keeps `authorization` as one header: several are joined.
                let values = if *name == http::header::AUTHORIZATION && values.len() > 1 {
                    vec![values.join(",")]
                } else {
                    values.into_iter().map(str::to_string).collect()
                };
                for v in values {
                    if let Some(t) = after_prefix(&v, prefix) {
                        out.push(Token {
                            value: t,
                            location: loc.clone(),
                        });
                    }
                }
            }
            Location::Param(name) => {
                if let Some((_, v)) = query_pairs(path).find(|(k, _)| k == name) {
                    out.push(Token {
                        value: percent_decode(v),
                        location: loc.clone(),
                    });
                }
            }
            Location::Cookie(name) => {
                let found = head
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k == name);
                if let Some((_, v)) = found {
                    out.push(Token {
                        value: v.trim_matches('"').to_string(),
                        location: loc.clone(),
                    });
                }
            }
        }
    }
    out
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The outcome of a requirement: what verified, or why it failed and whether a token was
/// found.
type Outcome = Result<Vec<Verified>, Failure>;

impl JwtFilter {
    /// Checks every token `p` finds (the last found first): all must verify.
    fn provider(
        &self,
        head: &mut http::request::Parts,
        p: &Arc<Provider>,
        audiences: Option<&[String]>,
    ) -> Outcome {
        // Each provider's check starts by removing the headers its tokens set (what an earlier
        // provider of the same requirement set under the same names included), as Envoy's.
        for h in p
            .forward_payload_header
            .iter()
            .chain(p.claim_to_headers.iter().map(|(h, _)| h))
        {
            head.headers.remove(h);
        }
        let locs = self
            .prepared
            .locations
            .get(&p.name)
            .map_or(&[][..], Vec::as_slice);
        let tokens = extract(head, locs);
        self.verify_all(head, tokens, audiences, Some(p), |_| Ok(p))
    }

    /// `allow_missing` and `allow_missing_or_failed`: tokens where any provider looks, each
    /// checked by the provider of its issuer.
    fn any_provider(&self, head: &mut http::request::Parts) -> Outcome {
        let tokens = extract(head, &self.prepared.all_locations);
        self.verify_all(head, tokens, None, None, |jwt| {
            let iss = jwt.claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
            self.prepared
                .ordered
                .iter()
                .find(|p| p.issuer == iss || p.issuer.is_empty())
                .ok_or(Failure::UnknownIssuer)
        })
    }

    /// Verifies every token, the last found first, each with the provider `pick` gives it
    /// (`fixed`, when the requirement names it). Each token's metadata is written as it is
    /// judged, as Envoy's verifier writes it, whatever the requirement then decides.
    fn verify_all<'p>(
        &self,
        head: &mut http::request::Parts,
        tokens: Vec<Token>,
        audiences: Option<&[String]>,
        fixed: Option<&'p Arc<Provider>>,
        pick: impl Fn(&Jwt) -> Result<&'p Arc<Provider>, Failure>,
    ) -> Outcome {
        if tokens.is_empty() {
            return Err(Failure::Missing);
        }
        let mut out = Vec::new();
        for t in tokens.into_iter().rev() {
            self.prepared.stats.jwt_cache_miss.inc();
            let jwt = Jwt::parse(&t.value).inspect_err(|f| self.failed(fixed, *f))?;
            let p = pick(&jwt).inspect_err(|f| self.failed(fixed, *f))?;
            p.verify(&jwt, audiences, now())
                .inspect_err(|f| self.failed(Some(p), *f))?;
            self.verified(p, &jwt);
            let v = Verified {
                provider: p.clone(),
                location: t.location,
                jwt,
            };
            // What a verified token changes applies at once, as Envoy's verifier applies it,
            // whatever the rest of the requirement then decides.
            self.apply(head, &v);
            out.push(v);
        }
        Ok(out)
    }

    fn requirement(&self, head: &mut http::request::Parts, r: &Requirement) -> Outcome {
        match r {
            Requirement::Provider(p, auds) => self.provider(head, p, auds.as_deref()),
            Requirement::AllowMissing => match self.any_provider(head) {
                Err(Failure::Missing) => Ok(Vec::new()),
                other => other,
            },
            Requirement::AllowMissingOrFailed => Ok(self.any_provider(head).unwrap_or_default()),
            Requirement::All(list) => {
                let mut out = Vec::new();
                for r in list {
                    out.extend(self.requirement(head, r)?);
                }
                Ok(out)
            }
            Requirement::Any(list) => {
                let mut failure = None;
                for r in list {
                    match self.requirement(head, r) {
                        Ok(v) => return Ok(v),
                        Err(Failure::Missing) => {
                            failure.get_or_insert(Failure::Missing);
                        }
                        Err(f) => {
                            if matches!(failure, None | Some(Failure::Missing)) {
                                failure = Some(f);
                            }
                        }
                    }
                }
                Err(failure.unwrap_or(Failure::Missing))
            }
        }
    }

    /// What the request must satisfy: its route's requirement, or the first rule it matches.
    fn requirement_for(
        &self,
        head: &http::request::Parts,
    ) -> Result<Option<Arc<Requirement>>, String> {
        match &self.per_route {
            Some(PerRoute::Disabled) => return Ok(None),
            Some(PerRoute::Requirement(name)) => {
                return match self.prepared.config.requirement_map.get(name) {
                    Some(r) => Ok(Some(r.clone())),
                    None => {
                        let mut known: Vec<&str> = self
                            .prepared
                            .config
                            .requirement_map
                            .keys()
                            .map(String::as_str)
                            .collect();
                        known.sort();
                        Err(format!(
                            "Wrong requirement_name: {name}. It should be one of [{}]",
                            known.join(", ")
                        ))
                    }
                };
            }
            None => {}
        }
        let view = crate::http::filter::request_view(head);
        Ok(self
            .prepared
            .config
            .rules
            .iter()
            .find(|(m, _)| m.matches(&view))
            .and_then(|(_, r)| r.clone()))
    }

    /// A token of `p` verified: its payload and header into the metadata, as `p` asks.
    fn verified(&self, p: &Provider, jwt: &Jwt) {
        if p.clear_route_cache {
            self.clear_route_cache.set(true);
        }
        let Some(md) = &self.metadata else {
            return;
        };
        use crate::config::metadata::Value;
        md.with(|md| {
            if let Some(key) = &p.payload_in_metadata {
                let mut payload: crate::config::metadata::Struct = jwt
                    .claims
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect();
                // normalize_payload_in_metadata: a space-delimited claim as a list.
                for claim in &p.space_delimited_claims {
                    if let Some(Value::String(text)) = payload.get(claim) {
                        let words: Vec<Value> = text
                            .split(' ')
                            .filter(|w| !w.is_empty())
                            .map(|w| Value::String(w.to_string()))
                            .collect();
                        if !words.is_empty() {
                            payload.insert(claim.clone(), Value::List(words));
                        }
                    }
                }
                md.set(jwt::METADATA_NAMESPACE, key, Value::Struct(payload));
            }
            if let Some(key) = &p.header_in_metadata {
                let header = jwt
                    .header
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect();
                md.set(jwt::METADATA_NAMESPACE, key, Value::Struct(header));
            }
        });
    }

    /// A token failed (for `p`, when its provider is known): `{code, message}` into the
    /// metadata, as `p` asks.
    fn failed(&self, p: Option<&Arc<Provider>>, f: Failure) {
        let (Some(md), Some(key)) = (
            &self.metadata,
            p.and_then(|p| p.failed_status_in_metadata.as_ref()),
        ) else {
            return;
        };
        use crate::config::metadata::{Struct, Value};
        let mut status = Struct::new();
        status.insert("code".into(), Value::Number(f64::from(f.code())));
        status.insert("message".into(), Value::String(f.message().to_string()));
        md.with(|md| md.set(jwt::METADATA_NAMESPACE, key, Value::Struct(status)));
    }

    /// Removes a verified token from the request and adds its payload and claims.
    fn apply(&self, head: &mut http::request::Parts, v: &Verified) {
        {
            if !v.provider.forward {
                match &v.location {
                    Location::Header(h, _) => {
                        head.headers.remove(h);
                    }
                    Location::Param(name) => remove_param(head, name),
                    Location::Cookie(_) => {}
                }
            }
            if let Some(h) = &v.provider.forward_payload_header {
                let p = jwt::payload_header(&v.jwt, v.provider.pad_forward_payload_header);
                if let Ok(value) = HeaderValue::from_str(&p) {
                    head.headers.append(h.clone(), value);
                }
            }
            for (h, path) in &v.provider.claim_to_headers {
                if let Some(value) = v
                    .jwt
                    .claim_text(path)
                    .and_then(|t| HeaderValue::from_str(&t).ok())
                {
                    head.headers.append(h.clone(), value);
                }
            }
        }
    }

    fn deny(&mut self, head: &http::request::Parts, failure: Failure) -> HeadersStatus {
        self.prepared.stats.denied.inc();
        let message = failure.message();
        let status = if failure == Failure::AudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut headers = Vec::new();
        if !self.prepared.config.strip_failure_response {
            let scheme = head.uri.scheme_str().unwrap_or("http");
            let host = crate::http::conn_manager::authority(head).unwrap_or("");
            let mut path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            if path.len() > 256 {
                let mut end = 256;
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                path = &path[..end];
            }
            let mut realm = format!("Bearer realm=\"{scheme}://{host}{path}\"");
            if failure != Failure::Missing {
                realm.push_str(", error=\"invalid_token\"");
            }
            if let Ok(v) = HeaderValue::from_str(&realm) {
                headers.push((http::header::WWW_AUTHENTICATE, v));
            }
        }
        HeadersStatus::LocalReply(reply(
            status,
            if self.prepared.config.strip_failure_response {
                ""
            } else {
                message
            },
            headers,
            message,
        ))
    }
}

/// A reply of the filter's, its details `jwt_authn_access_denied{<message>}`.
fn reply(
    status: StatusCode,
    body: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    message: &str,
) -> LocalReply {
    LocalReply {
        status,
        body: Bytes::copy_from_slice(body.as_bytes()),
        headers,
        mutations: Vec::new(),
        flag: None,
        details: details(message),
        close: false,
        grpc_status: None,
    }
}

/// `jwt_authn_access_denied{<message, spaces as _>}`.
fn details(message: &str) -> &'static str {
    crate::http::local_reply::intern_details(format!(
        "jwt_authn_access_denied{{{}}}",
        message.replace(' ', "_")
    ))
}

/// Removes the query parameter `name` from the request's path.
fn remove_param(head: &mut http::request::Parts, name: &str) {
    let Some(pq) = head.uri.path_and_query() else {
        return;
    };
    let Some((path, query)) = pq.as_str().split_once('?') else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    let new = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = head.uri.clone().into_parts();
    if let Ok(p) = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(new)) {
        parts.path_and_query = Some(p);
        if let Ok(u) = http::Uri::from_parts(parts) {
            head.uri = u;
        }
    }
}

impl HttpFilter for JwtFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        // Remote keys a token of this request needs and that are not at hand are fetched
        // first (each provider's, through its cluster); the request is checked once they came
        // or failed to, as Envoy's verifier waits for its fetch.
        if !self.prepared.remote {
            return self.check(head);
        }
        let mut usable = Vec::new();
        if let Ok(Some(r)) = self.requirement_for(head) {
            providers_of(&r, &self.prepared.ordered, &mut usable);
        }
        let missing: Vec<Arc<Provider>> = usable
            .into_iter()
            .filter(|p| p.remote.as_ref().is_some_and(|r| r.keys().is_none()))
            .filter(|p| {
                let locs = self
                    .prepared
                    .locations
                    .get(&p.name)
                    .map_or(&[][..], Vec::as_slice);
                !extract(head, locs).is_empty()
            })
            .collect();
        if missing.is_empty() {
            return self.check(head);
        }
        let mut later = JwtFilter {
            worker: self.worker.clone(),
            prepared: self.prepared.clone(),
            per_route: self.per_route.clone(),
            metadata: self.metadata.clone(),
            clear_route_cache: std::cell::Cell::new(false),
        };
        HeadersStatus::StopIteration(Box::pin(async move {
            for p in &missing {
                if let Some(r) = &p.remote {
                    fetch(&later.worker, &later.prepared.stats, r).await;
                }
            }
            crate::http::filter::Resume::ContinueWith(Box::new(move |head| {
                match later.check(head) {
                    HeadersStatus::LocalReply(r) => Some(r),
                    _ => None,
                }
            }))
        }))
    }
}

/// The providers a requirement may check tokens with (each once).
fn providers_of(r: &Requirement, all: &[Arc<Provider>], out: &mut Vec<Arc<Provider>>) {
    let mut add = |p: &Arc<Provider>| {
        if !out.iter().any(|o| Arc::ptr_eq(o, p)) {
            out.push(p.clone());
        }
    };
    match r {
        Requirement::Provider(p, _) => add(p),
        Requirement::AllowMissing | Requirement::AllowMissingOrFailed => all.iter().for_each(add),
        Requirement::Any(list) | Requirement::All(list) => {
            for r in list {
                providers_of(r, all, out);
            }
        }
    }
}

/// Fetches a provider's keys and keeps them, counted in `jwks_fetch_success` or
/// `jwks_fetch_failed`; whether they came.
async fn fetch(worker: &Rc<crate::worker::Worker>, stats: &Stats, r: &jwt::RemoteJwks) -> bool {
    let Some(cluster) = worker.clusters.get(&r.cluster) else {
        stats.jwks_fetch_failed.inc();
        return false;
    };
    let Ok(req) = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("http://{}{}", r.authority, r.path))
        .header(http::header::HOST, r.authority.as_str())
        .body(())
    else {
        stats.jwks_fetch_failed.inc();
        return false;
    };
    let (head, ()) = req.into_parts();
    let answer = crate::http::filters::router::own_request_retried(
        worker,
        &cluster,
        head,
        Bytes::new(),
        Some(r.timeout),
        r.retry.as_ref(),
    )
    .await;
    let keys = match answer {
        Ok((parts, body, _)) if parts.status == StatusCode::OK => {
            jwt::parse_jwks(&String::from_utf8_lossy(&body)).ok()
        }
        Ok((parts, _, _)) => {
            tracing::debug!(status = %parts.status, "JWKS fetch refused");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "JWKS fetch failed");
            None
        }
    };
    match keys {
        Some(k) => {
            stats.jwks_fetch_success.inc();
            r.store(k);
            true
        }
        None => {
            stats.jwks_fetch_failed.inc();
            false
        }
    }
}

impl Factory {
    /// Starts fetching ahead the keys of the providers with `async_fetch`, on `worker`, for as
    /// long as this filter's configuration is in use: at once, again before they expire, and
    /// after `failed_refetch_duration` when a fetch failed. One worker fetches at a time; the
    /// keys serve them all.
    pub fn start(&self, worker: &Rc<crate::worker::Worker>) {
        for p in &self.prepared.ordered {
            let Some(r) = p.remote.clone().filter(|r| r.async_fetch.is_some()) else {
                continue;
            };
            let prepared = Rc::downgrade(&self.prepared);
            let worker = worker.clone();
            tokio::task::spawn_local(async move {
                use std::sync::atomic::Ordering;
                let retry = r.async_fetch.unwrap_or(std::time::Duration::from_secs(1));
                loop {
                    let wait = match r.fresh_for() {
                        Some(left) => left,
                        None if r.fetching.swap(true, Ordering::AcqRel) => retry,
                        None => {
                            let Some(prepared) = prepared.upgrade() else {
                                return;
                            };
                            let ok = fetch(&worker, &prepared.stats, &r).await;
                            r.fetching.store(false, Ordering::Release);
                            if ok {
                                continue;
                            }
                            retry
                        }
                    };
                    tokio::time::sleep(wait).await;
                    if prepared.strong_count() == 0 {
                        return;
                    }
                }
            });
        }
    }
}

impl JwtFilter {
    /// Checks the request with the keys at hand.
    fn check(&mut self, head: &mut http::request::Parts) -> HeadersStatus {
        // A client's own copies of the headers verified tokens set are not kept.
        for h in &self.prepared.set_headers {
            head.headers.remove(h);
        }
        let (config, stats) = (&self.prepared.config, &self.prepared.stats);
        if config.bypass_cors_preflight
            && head.method == http::Method::OPTIONS
            && head.headers.contains_key(http::header::ORIGIN)
            && head
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            stats.cors_preflight_bypassed.inc();
            stats.allowed.inc();
            return HeadersStatus::Continue;
        }
        let requirement = match self.requirement_for(head) {
            Ok(r) => r,
            Err(text) => {
                stats.denied.inc();
                let message = format!("Failed JWT authentication: {text}");
                return HeadersStatus::LocalReply(reply(
                    StatusCode::FORBIDDEN,
                    &message,
                    Vec::new(),
                    &text,
                ));
            }
        };
        let Some(requirement) = requirement else {
            stats.allowed.inc();
            return HeadersStatus::Continue;
        };
        let outcome = self.requirement(head, &requirement);
        // clear_route_cache: the route is picked again, the token's headers and metadata in
        // view, once a token of such a provider verified (even if the request is then
        // refused, as Envoy).
        if self.clear_route_cache.get() {
            head.extensions.insert(crate::http::filter::ClearRouteCache);
        }
        match outcome {
            Ok(_) => {
                stats.allowed.inc();
                HeadersStatus::Continue
            }
            Err(f) => self.deny(head, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_taken_after_their_prefix_to_the_end() {
        assert_eq!(
            after_prefix("Bearer a.b.c", "Bearer ").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            after_prefix("Bearer  a.b.c", "Bearer ").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(after_prefix("bearer a.b.c", "Bearer "), None);
        assert_eq!(
            after_prefix("Bearer t1,Bearer t2", "Bearer ").as_deref(),
            Some("t1,Bearer t2")
        );
        assert_eq!(
            after_prefix("Bearer @@@.###", "Bearer ").as_deref(),
            Some(".###")
        );
    }

    #[test]
    fn a_parameter_leaves_the_path() {
        let (mut head, _) = http::Request::get("/req?x=1&access_token=t&y=2")
            .body(())
            .expect("request")
            .into_parts();
        remove_param(&mut head, "access_token");
        assert_eq!(head.uri, "/req?x=1&y=2");
        let (mut head, _) = http::Request::get("/req?access_token=t")
            .body(())
            .expect("request")
            .into_parts();
        remove_param(&mut head, "access_token");
        assert_eq!(head.uri, "/req");
    }
}
