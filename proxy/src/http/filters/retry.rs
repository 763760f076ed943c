//! The router's attempts: one upstream request after another until one gives a response the
//! retry policy accepts, the retries run out, or the route timeout passes (Envoy's
//! `RetryStateImpl` and the retry half of `Router::Filter`).
//!
//! A request without a retry policy (or retry headers) makes exactly one attempt, with no
//! buffering and no allocation for retries.

use crate::http::vcluster::EndpointStats;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body as _;

use super::router::{
    attempt, AttemptState, Forward, Upstream, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_IS_TIMEOUT_RETRY,
};
use crate::http::body::{Deadline, EndReason, ProxyBody};
use crate::http::headers;
use crate::http::local_reply::LocalReply;
use crate::http::replay::ReplayBuffer;
use crate::router::retry::{BackOff, RateLimitedBackOff, RetryHeaders, RetryOn, RetryPolicy};
use crate::router::{header_matches, RequestView};
use crate::stream_info::{ResponseFlag, StreamInfo};
use crate::upstream::circuit_breaker::Held;
use crate::upstream::Cluster;

/// How an attempt failed before its response headers, as Envoy's stream reset reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The connection could not be made (refused, timed out, TLS failed).
    ConnectFailure,
    /// A circuit breaker refused the request: never retried.
    Overflow,
    /// The upstream refused the HTTP/2 stream without processing it.
    RefusedStream,
    /// Any other reset or closed connection after the request started.
    Other,
}

impl Reset {
    /// The reset a local reply of an attempt stands for.
    fn of(reply: &LocalReply) -> Reset {
        match reply.details {
            d if d == LocalReply::CONNECT_FAILURE.details
                || d == LocalReply::CONNECT_TIMEOUT.details =>
            {
                Reset::ConnectFailure
            }
            d if d == LocalReply::OVERFLOW.details => Reset::Overflow,
            d if d == LocalReply::REFUSED_STREAM.details => Reset::RefusedStream,
            _ => Reset::Other,
        }
    }
}

/// What the retry state says about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a failure the policy retries.
    No,
    /// Retry after this wait.
    Retry(Duration),
    /// A retriable failure with no retries left (`URX`).
    LimitExceeded,
    /// A retriable failure the `max_retries` circuit breaker refused (`UO`).
    Overflow,
}

/// One request's retry state: the policy with what its headers add, the retries left, the
/// backoff, and the circuit-breaker hold of the retry under way.
#[derive(Debug)]
pub struct RetryState {
    policy: Arc<RetryPolicy>,
    retry_on: RetryOn,
    remaining: u32,
    status_codes: Vec<u16>,
    header_names: Vec<http::HeaderName>,
    per_try_timeout: Option<Duration>,
    backoff: BackOff,
    /// A retry was made and its outcome not yet judged (`upstream_rq_retry_success`).
    pending: bool,
    held: Option<Held>,
    /// `retry_priority` `previous_priorities`.
    priorities: Option<PreviousPriorities>,
    /// The route's `priority: HIGH`: retries count in the `HIGH` `max_retries` breaker.
    pub high: bool,
}

/// Envoy's `PreviousPrioritiesRetryPriority`: every `update_frequency` attempts, the
/// priorities of the hosts tried so far are left out of the load retries pick by; once none
/// is left, the load is the cluster's own again and the count starts over.
#[derive(Debug)]
struct PreviousPriorities {
    update_frequency: usize,
    /// The priorities of the hosts tried, the first attempt's included.
    attempted: Vec<u32>,
    excluded: Vec<u32>,
    /// The load worked out last (`None`: the cluster's own).
    load: Option<crate::upstream::lb::PriorityLoad>,
}

impl PreviousPriorities {
    fn load(&mut self, cluster: &Cluster) -> Option<crate::upstream::lb::PriorityLoad> {
        if self.attempted.len() < self.update_frequency {
            return None;
        }
        if self.attempted.len().is_multiple_of(self.update_frequency) {
            for p in &self.attempted {
                if !self.excluded.contains(p) {
                    self.excluded.push(*p);
                }
            }
            self.load = cluster.load_without(&self.excluded);
            if self.load.is_none() {
                self.excluded.clear();
                self.attempted.clear();
            }
        }
        self.load.clone()
    }
}

impl RetryState {
    /// The state for a request with `headers` under `policy` (the route's, else its virtual
    /// host's) and the retry headers of an internal request; `None` when nothing can be retried.
    pub fn new(
        policy: Option<&Arc<RetryPolicy>>,
        retry_headers: Option<&RetryHeaders>,
        headers: &HeaderMap,
    ) -> Option<RetryState> {
        let header_on = retry_headers.and_then(|h| h.retry_on);
        if policy.is_none_or(|p| p.retry_on.is_empty()) && header_on.is_none() {
            return None;
        }
        let policy = policy.cloned().unwrap_or_default();
        let mut retry_on = policy.retry_on | header_on.unwrap_or_default();
        if !policy.retriable_request_headers.is_empty() {
            let view = RequestView::get("", headers);
            if !policy
                .retriable_request_headers
                .iter()
                .any(|m| header_matches(m, &view))
            {
                retry_on = RetryOn::default();
            }
        }
        let mut remaining = policy.num_retries;
        let mut status_codes = policy.retriable_status_codes.clone();
        let mut header_names = Vec::new();
        let mut per_try_timeout = policy.per_try_timeout;
        if let Some(h) = retry_headers {
            if let Some(n) = h.max_retries.filter(|_| !retry_on.is_empty()) {
                remaining = n;
            }
            status_codes.extend_from_slice(&h.status_codes);
            header_names.extend_from_slice(&h.header_names);
            if h.per_try_timeout.is_some() {
                per_try_timeout = h.per_try_timeout;
            }
        }
        let priorities = policy.previous_priorities.map(|n| PreviousPriorities {
            update_frequency: n as usize,
            attempted: Vec::new(),
            excluded: Vec::new(),
            load: None,
        });
        Some(RetryState {
            backoff: BackOff::new(policy.base_interval, policy.max_interval),
            policy,
            retry_on,
            remaining,
            status_codes,
            header_names,
            per_try_timeout,
            pending: false,
            held: None,
            priorities,
            high: false,
        })
    }

    /// The load over the cluster's priorities the next retry picks by (`None`: the cluster's).
    fn priority_load(&mut self, cluster: &Cluster) -> Option<crate::upstream::lb::PriorityLoad> {
        self.priorities.as_mut()?.load(cluster)
    }

    /// An attempt went to a host of `priority`.
    fn attempted(&mut self, priority: u32) {
        if let Some(p) = &mut self.priorities {
            p.attempted.push(priority);
        }
    }

    /// `per_try_timeout`, or an internal request's `x-envoy-upstream-rq-per-try-timeout-ms`.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Envoy's `wouldRetryFromHeaders`.
    pub fn would_retry_headers(&self, status: u16, h: &HeaderMap) -> bool {
        let on = self.retry_on;
        // A response an upstream Envoy rate limited is retried only under envoy-ratelimited.
        if h.contains_key("x-envoy-ratelimited") {
            return on.has(RetryOn::ENVOY_RATE_LIMITED);
        }
        if on.has(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.has(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status) {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&status) {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_HEADERS) {
            let view = RequestView::get("", h);
            if self
                .policy
                .retriable_headers
                .iter()
                .any(|m| header_matches(m, &view))
                || self.header_names.iter().any(|n| h.contains_key(n))
            {
                return true;
            }
        }
        // gRPC statuses in the headers: a trailers-only response.
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|code| on.grpc_status(code))
    }

    /// Envoy's `wouldRetryFromReset`; `started` when the request headers went upstream.
    pub fn would_retry_reset(&self, reset: Reset, started: bool) -> bool {
        let on = self.retry_on;
        if reset == Reset::Overflow {
            return false;
        }
        if on.has(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
            || (on.has(RetryOn::RESET_BEFORE_REQUEST) && !started)
        {
            return true;
        }
        match reset {
            Reset::RefusedStream => on.has(RetryOn::REFUSED_STREAM),
            Reset::ConnectFailure => on.has(RetryOn::CONNECT_FAILURE),
            _ => false,
        }
    }

    /// Envoy's `shouldRetry`: the decision on an attempt's outcome, counted in the cluster's
    /// stats, the retry taking one of the `max_retries` circuit breaker's slots until its own
    /// outcome is known.
    /// `reset` is the wait a rate-limited response asked for ([`Self::reset_interval`]).
    pub fn should_retry(
        &mut self,
        would: bool,
        reset: Option<Duration>,
        cluster: &Cluster,
        endpoint: &EndpointStats,
        random: u64,
    ) -> Decision {
        let stats = &cluster.stats;
        if self.pending && !would {
            stats.upstream_rq_retry_success.inc();
            endpoint
                .each()
                .for_each(|s| s.upstream_rq_retry_success.inc());
        }
        self.pending = false;
        self.held = None;
        if !would {
            return Decision::No;
        }
        if self.remaining == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            endpoint
                .each()
                .for_each(|s| s.upstream_rq_retry_limit_exceeded.inc());
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        let Some(held) = cluster.info.breakers.of(self.high).retries.try_acquire() else {
            stats.upstream_rq_retry_overflow.inc();
            endpoint
                .each()
                .for_each(|s| s.upstream_rq_retry_overflow.inc());
            return Decision::Overflow;
        };
        self.held = Some(held);
        self.pending = true;
        stats.upstream_rq_retry.inc();
        endpoint.each().for_each(|s| s.upstream_rq_retry.inc());
        if let Some(interval) = reset {
            stats.upstream_rq_retry_backoff_ratelimited.inc();
            return Decision::Retry(RateLimitedBackOff::wait(interval, random));
        }
        stats.upstream_rq_retry_backoff_exponential.inc();
        Decision::Retry(self.backoff.next(random))
    }

    /// The wait a response to be retried asks for in its `rate_limited_retry_back_off` reset
    /// headers, when the policy has them (Envoy's `parseResetInterval`, taken above 1 ms).
    pub fn reset_interval(&self, h: &HeaderMap) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.policy
            .rate_limited
            .as_ref()?
            .interval(h, now)
            .filter(|d| *d > Duration::from_millis(1))
    }

    /// How many more picks the retry host predicates allow (none without one).
    fn host_selection_tries(&self) -> u32 {
        if self.policy.has_host_predicate() {
            self.policy.host_selection_max_attempts
        } else {
            0
        }
    }

    /// Whether a retry host predicate sends this pick back (`tried`: the hosts attempted).
    fn rejects(&self, host: &crate::upstream::Host, tried: &[std::net::SocketAddr]) -> bool {
        self.policy.rejects(host.address, &host.lb_metadata, tried)
    }
}

/// How an attempt ended (short-lived, on the stack of one request: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Done(Result<(Response<ProxyBody>, super::router::Conn), LocalReply>),
    PerTryTimeout,
    PerTryIdleTimeout,
    RouteTimeout,
    /// The cluster's `max_stream_duration` passed before the response head.
    MaxStreamDuration,
}

/// Resolves after `d` from the end of the request (from now for an attempt after the first),
/// never without `d`.
async fn after_request(request: &crate::http::body::RequestProgress, d: Option<Duration>) {
    match d {
        Some(d) => {
            request.wait_done().await;
            tokio::time::sleep(d).await;
        }
        None => std::future::pending().await,
    }
}

/// An attempt that failed before its response head (`reply`): its upstream request ended, and
/// what reset it was and whether the request had started; `Err` is the reply to send at once
/// (the client's own body failed: 400, as Envoy answers).
fn attempt_failed(
    f: &Forward<'_>,
    reply: &LocalReply,
    upstream: Option<Upstream>,
) -> Result<(Reset, bool), LocalReply> {
    let reset = Reset::of(reply);
    let started = reset != Reset::ConnectFailure && upstream.is_some();
    if let Some(mut u) = upstream {
        u.failed = true;
        u.finish(EndReason::UpstreamReset);
    }
    if f.request.failed() {
        f.charge(LocalReply::BAD_REQUEST.status.as_u16());
        return Err(LocalReply::BAD_REQUEST);
    }
    Ok((reset, started))
}

/// Envoy's body for a reset after a retry: `… retried and the latest reset reason: …`.
fn retried_body(reply: &mut LocalReply) {
    const PLAIN: &[u8] =
        b"upstream connect error or disconnect/reset before headers. reset reason: ";
    if let Some(rest) = reply.body.strip_prefix(PLAIN) {
        let mut b = b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: ".to_vec();
        b.extend_from_slice(rest);
        reply.body = Bytes::from(b);
    }
}

/// Sends the request upstream, attempt after attempt as `retry` allows, and returns the
/// response of the last attempt (or the local reply for its failure).
///
/// Not an `async fn`: the attempts' future is returned as it is (a wrapper's state would be
/// one more copy of it per request).
pub(super) fn forward<'a, 'b>(
    f: &'a Forward<'b>,
    parts: super::router::Head,
    body: ProxyBody,
    retry: Option<RetryState>,
    info: Option<&'a mut StreamInfo>,
) -> impl Future<Output = Result<(Response<ProxyBody>, Upstream, Option<Deadline>), LocalReply>>
       + use<'a, 'b> {
    let retry = retry.map(|mut r| {
        r.high = f.high;
        r
    });
    let count_in_replies = f.attempt_count.1;
    futures_util::FutureExt::map(
        attempts_loop(f, parts, body, retry, info, &f.attempts),
        move |result| {
            // The router's local replies say how many attempts were made too (Envoy).
            result.map_err(|mut reply| {
                if count_in_replies {
                    reply.headers.push((
                        X_ENVOY_ATTEMPT_COUNT.clone(),
                        headers::number(f.attempts.get().into()),
                    ));
                }
                reply
            })
        },
    )
}

async fn attempts_loop(
    f: &Forward<'_>,
    parts: super::router::Head,
    body: ProxyBody,
    mut retry: Option<RetryState>,
    mut info: Option<&mut StreamInfo>,
    attempts: &std::cell::Cell<u32>,
) -> Result<(Response<ProxyBody>, Upstream, Option<Deadline>), LocalReply> {
    if f.hedge {
        if let Some(r) = retry {
            return hedged(f, parts, body, r, info, attempts).await;
        }
    }
    let cluster = f.cluster;
    let stats = &cluster.stats;
    let route_timer = after_request(f.request, f.timeout);
    tokio::pin!(route_timer);
    // With a retry state the body is kept to be sent again; without one it passes once, as
    // does the request head.
    let (replay, mut body) = match &retry {
        Some(_) => (
            Some(ReplayBuffer::new(
                body,
                f.buffer_limit,
                stats.retry_or_shadow_abandoned.clone(),
            )),
            None,
        ),
        None => (None, Some(body)),
    };
    // Attempts copy the request head without its extensions: the upstream spans' source is
    // kept here.
    let spawn = parts.extensions.get::<crate::trace::Spawn>().cloned();
    let expected_header = parts
        .headers
        .contains_key(&crate::http::headers::names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS);
    let mut head = Some(parts);
    // The last attempt ended in a per-try timeout (`x-envoy-is-timeout-retry`).
    let mut timed_out = false;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    loop {
        attempts.set(attempts.get() + 1);
        let attempts = attempts.get();
        // Retry host predicates judge the hosts of retries only (Envoy's docs, and measured:
        // a first attempt may go to a host a predicate would send back).
        let retrying = attempts > 1;
        let tries = retry
            .as_ref()
            .filter(|_| retrying)
            .map_or(0, RetryState::host_selection_tries);
        let load = match retry.as_mut() {
            Some(r) if retrying => r.priority_load(cluster),
            _ => None,
        };
        let reject = |h: &crate::upstream::Host| {
            retrying && retry.as_ref().is_some_and(|r| r.rejects(h, &tried))
        };
        let Some(host) = f.select_host(&reject, tries, load.as_ref()) else {
            stats.upstream_cx_none_healthy.inc();
            return Err(LocalReply::NO_HEALTHY_UPSTREAM);
        };
        if let Some(r) = retry.as_mut() {
            r.attempted(host.priority);
        }
        // Only a retry policy's host predicates look at the hosts tried.
        if retry.is_some() {
            tried.push(host.address);
        }
        let mut parts = match (&replay, head.as_ref()) {
            (Some(_), Some(p)) => attempt_parts(p),
            _ => head.take().ok_or(LocalReply::CONNECTION_TERMINATION)?,
        };
        if f.attempt_count.0 {
            parts.headers.insert(
                X_ENVOY_ATTEMPT_COUNT.clone(),
                headers::number(attempts.into()),
            );
        }
        if f.is_timeout_retry_header && retrying {
            parts.headers.insert(
                X_ENVOY_IS_TIMEOUT_RETRY.clone(),
                is_timeout_retry(timed_out),
            );
        }
        // A retry expects what is left of the route timeout (or its per-try timeout, when
        // shorter).
        if let (true, true, Some(t), Some(done)) =
            (expected_header, retrying, f.timeout, f.request.done_at())
        {
            parts.headers.insert(
                crate::http::headers::names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                headers::number(time_left_ms(t, f.per_try_timeout, done)),
            );
        }
        timed_out = false;
        let attempt_body = match &replay {
            Some(r) => r.body(),
            None => body.take().unwrap_or(ProxyBody::Empty),
        };
        if let Some(info) = info.as_deref_mut() {
            info.upstream_host = Some(host.address);
            info.upstream_metadata = Some(host.metadata.clone());
            info.attempts = attempts;
        }
        let state = AttemptState::new();
        state.spawn_span(f, spawn.as_ref(), &host, &mut parts, attempts);
        let (per_try, idle) = match &retry {
            Some(r) => (f.per_try_timeout, r.policy.per_try_idle_timeout),
            None => (None, None),
        };
        let stream_until = cluster
            .config()
            .max_stream_duration
            .map(|d| tokio::time::Instant::now() + d);
        let outcome = {
            // Pinned where it is made: a moved attempt would be copied whole.
            let mut send = std::pin::pin!(attempt(f, &host, parts, attempt_body, &state));
            let stream_timer = async {
                match stream_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let per_try_timer = after_request(f.request, per_try);
            let idle_timer = async {
                match idle {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stream_timer, per_try_timer, idle_timer);
            // Timers that are not set are not polled: a request without retries or timeout
            // waits on its attempt alone.
            loop {
                let periodic = async {
                    match (&f.periodic, info.as_deref()) {
                        (Some(p), Some(i)) => {
                            tokio::time::sleep_until(crate::http::body::next_tick(
                                i.start, p.interval,
                            ))
                            .await
                        }
                        _ => std::future::pending().await,
                    }
                };
                // Biased: the attempt first, then the timers; none of them repeats, so
                // none starves another (and no random start is drawn per poll).
                break tokio::select! {
                    biased;
                    r = send.as_mut() => Outcome::Done(r),
                    _ = &mut per_try_timer, if per_try.is_some() => Outcome::PerTryTimeout,
                    _ = &mut idle_timer, if idle.is_some() => Outcome::PerTryIdleTimeout,
                    _ = route_timer.as_mut(), if f.timeout.is_some() => Outcome::RouteTimeout,
                    _ = &mut stream_timer, if stream_until.is_some() => Outcome::MaxStreamDuration,
                    _ = periodic, if f.periodic.is_some() => {
                        if let Some(p) = &f.periodic {
                            p.tick(info.as_deref_mut());
                        }
                        continue;
                    }
                };
            }
        };
        let upstream = state.take_upstream(match &outcome {
            Outcome::Done(r) => Some(r),
            _ => None,
        });
        if let Some(info) = info.as_deref_mut() {
            info.upstream_transport_failure = state.failure.take();
        }
        report_outlier(f, &host, &outcome, upstream.is_some());
        // The virtual cluster counts the attempts that got a connection (Envoy's onPoolReady).
        if state.connected.get() {
            f.endpoint_stats
                .each()
                .for_each(|s| s.upstream_rq_total.inc());
        }
        // A body too large to keep ends the chance of a retry (Envoy drops its retry state).
        if replay.as_ref().is_some_and(|r| r.overflowed()) {
            retry = None;
        }
        let (mut reply, reset, started) = match outcome {
            Outcome::Done(Ok((resp, conn))) => {
                let Some(upstream) = upstream else {
                    return Err(LocalReply::CONNECTION_TERMINATION);
                };
                if let Some(info) = info.as_deref_mut() {
                    info.upstream_connection = Some(conn.info());
                    info.upstream_protocol = Some(state.protocol());
                }
                let status = resp.status().as_u16();
                if let Some(r) = retry.as_mut() {
                    let would = r.would_retry_headers(status, resp.headers());
                    let reset = would.then(|| r.reset_interval(resp.headers())).flatten();
                    let random = fastrand::u64(..);
                    match r.should_retry(would, reset, cluster, &f.endpoint_stats, random) {
                        Decision::Retry(wait) => {
                            if f.dynamic_stats {
                                stats.retry_response_code(status);
                            }
                            let complete = resp.body().is_end_stream();
                            drop(resp);
                            upstream.finish_with(conn, complete);
                            if back_off(wait, route_timer.as_mut()).await {
                                continue;
                            }
                            return Err(route_timeout(f, None));
                        }
                        Decision::LimitExceeded => {
                            flag(&mut info, ResponseFlag::UpstreamRetryLimitExceeded)
                        }
                        Decision::Overflow => flag(&mut info, ResponseFlag::UpstreamOverflow),
                        Decision::No => {}
                    }
                }
                // The code is known from here on (Envoy's router sets it before the route's
                // response header changes).
                if let Some(info) = info.as_deref_mut() {
                    info.response_code = Some(status);
                }
                return Ok(f.finish_response(
                    resp,
                    conn,
                    upstream,
                    attempts,
                    stream_until,
                    info.as_deref(),
                ));
            }
            Outcome::RouteTimeout => return Err(route_timeout(f, upstream)),
            // Envoy's router ends the stream with a local reply and no retry.
            Outcome::MaxStreamDuration => {
                use crate::http::timeouts::Expiry;
                match upstream {
                    Some(mut u) => {
                        u.failed = true;
                        u.finish(EndReason::Expired(Expiry::UpstreamMaxDuration));
                    }
                    None => stats.upstream_rq_max_duration_reached.inc(),
                }
                let reply = Expiry::UpstreamMaxDuration.reply(f.request.done_at().is_some());
                f.charge(reply.status.as_u16());
                return Err(reply);
            }
            Outcome::Done(Err(reply)) => {
                let (reset, started) = attempt_failed(f, &reply, upstream)?;
                (reply, reset, started)
            }
            Outcome::PerTryTimeout | Outcome::PerTryIdleTimeout => {
                timed_out = true;
                let idle = matches!(outcome, Outcome::PerTryIdleTimeout);
                if idle {
                    stats.upstream_rq_per_try_idle_timeout.inc();
                } else {
                    stats.upstream_rq_per_try_timeout.inc();
                }
                if let Some(u) = upstream {
                    u.finish_try_timeout();
                }
                let details = if idle {
                    "upstream_per_try_idle_timeout"
                } else {
                    "upstream_per_try_timeout"
                };
                (
                    LocalReply {
                        details,
                        ..LocalReply::TIMEOUT
                    },
                    Reset::Other,
                    true,
                )
            }
        };
        if let Some(r) = retry.as_mut() {
            let would = r.would_retry_reset(reset, started);
            match r.should_retry(would, None, cluster, &f.endpoint_stats, fastrand::u64(..)) {
                Decision::Retry(wait) => {
                    if back_off(wait, route_timer.as_mut()).await {
                        continue;
                    }
                    return Err(route_timeout(f, None));
                }
                Decision::LimitExceeded => {
                    flag(&mut info, ResponseFlag::UpstreamRetryLimitExceeded)
                }
                Decision::Overflow => flag(&mut info, ResponseFlag::UpstreamOverflow),
                Decision::No => {}
            }
        }
        if attempts > 1 {
            retried_body(&mut reply);
        }
        f.charge(reply.status.as_u16());
        return Err(reply);
    }
}

/// An attempt's response head (or its local reply), as its future gives it.
type Sending<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<(Response<ProxyBody>, super::router::Conn), LocalReply>> + 'a>,
>;

/// One attempt of a hedged request, under way.
struct Flight<'a> {
    host: std::rc::Rc<crate::upstream::Host>,
    state: std::rc::Rc<AttemptState>,
    send: Sending<'a>,
    /// Its per-try timer, until it fires.
    per_try: Option<std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>>,
    /// `per_try_idle_timeout`, from its start.
    idle: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The cluster's `max_stream_duration`, from its start.
    stream_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Its per-try timeout passed and the next attempt was asked for: its response is never
    /// retried.
    hedged: bool,
    stream_until: Option<tokio::time::Instant>,
}

impl Flight<'_> {
    /// Resets it: another attempt's response won.
    fn overtaken(self) {
        drop(self.send);
        if let Some(u) = self.state.take_upstream(None) {
            u.finish_overtaken();
        }
    }
}

/// What a hedged request waits for (short-lived, on the stack of one request).
#[allow(clippy::large_enum_variant)]
enum Event {
    Done(
        usize,
        Result<(Response<ProxyBody>, super::router::Conn), LocalReply>,
    ),
    PerTry(usize),
    Idle(usize),
    StreamDuration(usize),
    Start,
    RouteTimeout,
    Periodic,
}

/// A hedged attempt that failed or timed out and may be retried (`would`): a retry is
/// scheduled in `next` after its backoff (true), a refusal flagged on the stream.
fn hedge_retry(
    f: &Forward<'_>,
    retry: &mut RetryState,
    (would, timeout): (bool, bool),
    reset: Option<Duration>,
    (next, next_timeout): (&mut Next, &mut bool),
    info: &mut Option<&mut StreamInfo>,
) -> bool {
    match retry.should_retry(
        would,
        reset,
        f.cluster,
        &f.endpoint_stats,
        fastrand::u64(..),
    ) {
        Decision::Retry(wait) => {
            if next.is_none() {
                *next = Some(Box::pin(tokio::time::sleep(wait)));
                *next_timeout = timeout;
            }
            true
        }
        Decision::LimitExceeded => {
            flag(info, ResponseFlag::UpstreamRetryLimitExceeded);
            false
        }
        Decision::Overflow => {
            flag(info, ResponseFlag::UpstreamOverflow);
            false
        }
        Decision::No => false,
    }
}

/// The next attempt of a hedged request, once its backoff has passed.
type Next = Option<std::pin::Pin<Box<tokio::time::Sleep>>>;

/// `x-envoy-is-timeout-retry`: whether a retry follows a per-try timeout.
fn is_timeout_retry(yes: bool) -> http::HeaderValue {
    http::HeaderValue::from_static(if yes { "true" } else { "false" })
}

/// The attempts of a request whose route hedges on per-try timeouts (Envoy's
/// `hedge_on_per_try_timeout`): an attempt past its per-try timeout goes on while the next
/// starts after the usual backoff (a retry, counted as one); the first response that is not to
/// be retried wins and the others are reset; a response to be retried from an attempt that
/// already asked for the next one is dropped while others are under way, as is any failure
/// that cannot be retried; the route timeout ends them all.
async fn hedged(
    f: &Forward<'_>,
    head: super::router::Head,
    body: ProxyBody,
    mut retry: RetryState,
    mut info: Option<&mut StreamInfo>,
    attempts: &std::cell::Cell<u32>,
) -> Result<(Response<ProxyBody>, Upstream, Option<Deadline>), LocalReply> {
    use std::task::Poll;
    let cluster = f.cluster;
    let stats = &cluster.stats;
    let route_timer = after_request(f.request, f.timeout);
    tokio::pin!(route_timer);
    let replay = ReplayBuffer::new(
        body,
        f.buffer_limit,
        stats.retry_or_shadow_abandoned.clone(),
    );
    let expected_header = head
        .headers
        .contains_key(&crate::http::headers::names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS);
    let spawn = head.extensions.get::<crate::trace::Spawn>().cloned();
    let mut flights: Vec<Flight<'_>> = Vec::new();
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut next_timeout = false;
    let mut next: Next = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
    let mut periodic: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            if f.timeout.is_some() && route_timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::RouteTimeout);
            }
            if let (Some(p), Some(i)) = (&f.periodic, info.as_deref()) {
                let t = periodic.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(crate::http::body::next_tick(
                        i.start, p.interval,
                    )))
                });
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Periodic);
                }
            }
            if let Some(n) = next.as_mut() {
                if n.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Start);
                }
            }
            for (i, fl) in flights.iter_mut().enumerate() {
                if let Poll::Ready(r) = fl.send.as_mut().poll(cx) {
                    return Poll::Ready(Event::Done(i, r));
                }
                if let Some(t) = fl.per_try.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::PerTry(i));
                    }
                }
                if let Some(t) = fl.idle.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Idle(i));
                    }
                }
                if let Some(t) = fl.stream_timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::StreamDuration(i));
                    }
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Periodic => {
                periodic = None;
                if let Some(p) = &f.periodic {
                    p.tick(info.as_deref_mut());
                }
            }
            Event::RouteTimeout => {
                // Every attempt under way times out (each counted, as Envoy counts them).
                let mut reply = flights.is_empty().then(|| route_timeout(f, None));
                for fl in flights.drain(..) {
                    let upstream = fl.state.take_upstream(None);
                    drop(fl.send);
                    reply = Some(route_timeout(f, upstream));
                }
                // Envoy's details for the route timeout of a hedged request.
                return Err(LocalReply {
                    details: "response_timeout",
                    ..reply.unwrap_or(LocalReply::TIMEOUT)
                });
            }
            Event::Start => {
                next = None;
                attempts.set(attempts.get() + 1);
                let n = attempts.get();
                let tries = if n > 1 {
                    retry.host_selection_tries()
                } else {
                    0
                };
                let load = if n > 1 {
                    retry.priority_load(cluster)
                } else {
                    None
                };
                let reject = |h: &crate::upstream::Host| n > 1 && retry.rejects(h, &tried);
                let Some(host) = f.select_host(&reject, tries, load.as_ref()) else {
                    stats.upstream_cx_none_healthy.inc();
                    if flights.is_empty() {
                        return Err(LocalReply::NO_HEALTHY_UPSTREAM);
                    }
                    // No attempt was made: the others go on.
                    attempts.set(attempts.get() - 1);
                    continue;
                };
                retry.attempted(host.priority);
                tried.push(host.address);
                let mut parts = attempt_parts(&head);
                if f.attempt_count.0 {
                    parts
                        .headers
                        .insert(X_ENVOY_ATTEMPT_COUNT.clone(), headers::number(n.into()));
                }
                if f.is_timeout_retry_header && n > 1 {
                    parts.headers.insert(
                        X_ENVOY_IS_TIMEOUT_RETRY.clone(),
                        is_timeout_retry(next_timeout),
                    );
                }
                // A later attempt expects what is left of the route timeout.
                if let (true, Some(t), Some(done)) =
                    (expected_header && n > 1, f.timeout, f.request.done_at())
                {
                    parts.headers.insert(
                        crate::http::headers::names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                        headers::number(time_left_ms(t, None, done)),
                    );
                }
                if let Some(info) = info.as_deref_mut() {
                    info.upstream_host = Some(host.address);
                    info.upstream_metadata = Some(host.metadata.clone());
                    info.attempts = n;
                }
                let state = std::rc::Rc::new(AttemptState::new());
                state.spawn_span(f, spawn.as_ref(), &host, &mut parts, n);
                let (st, h, b) = (state.clone(), host.clone(), replay.body());
                let send: Sending<'_> =
                    Box::pin(async move { attempt(f, &h, parts, b, &st).await });
                let per_try = f.per_try_timeout;
                let stream_until = cluster
                    .config()
                    .max_stream_duration
                    .map(|d| tokio::time::Instant::now() + d);
                flights.push(Flight {
                    host,
                    state,
                    send,
                    per_try: Some(Box::pin(after_request(f.request, per_try))),
                    idle: retry
                        .policy
                        .per_try_idle_timeout
                        .map(|d| Box::pin(tokio::time::sleep(d))),
                    stream_timer: stream_until.map(|at| Box::pin(tokio::time::sleep_until(at))),
                    hedged: false,
                    stream_until,
                });
            }
            Event::StreamDuration(i) => {
                // The cluster's `max_stream_duration` ends the stream, as in the other loop.
                use crate::http::timeouts::Expiry;
                let fl = flights.remove(i);
                drop(fl.send);
                match fl.state.take_upstream(None) {
                    Some(mut u) => {
                        u.failed = true;
                        u.finish(EndReason::Expired(Expiry::UpstreamMaxDuration));
                    }
                    None => stats.upstream_rq_max_duration_reached.inc(),
                }
                for other in flights.drain(..) {
                    other.overtaken();
                }
                let reply = Expiry::UpstreamMaxDuration.reply(f.request.done_at().is_some());
                f.charge(reply.status.as_u16());
                return Err(reply);
            }
            Event::Idle(i) => {
                // `per_try_idle_timeout`: the attempt is reset, and retried as a reset.
                let fl = flights.remove(i);
                drop(fl.send);
                stats.upstream_rq_per_try_idle_timeout.inc();
                report_outlier(
                    f,
                    &fl.host,
                    &Outcome::PerTryIdleTimeout,
                    fl.state.upstream.borrow().is_some(),
                );
                if let Some(u) = fl.state.take_upstream(None) {
                    u.finish_try_timeout();
                }
                if !fl.hedged {
                    let would = retry.would_retry_reset(Reset::Other, true);
                    if hedge_retry(
                        f,
                        &mut retry,
                        (would, true),
                        None,
                        (&mut next, &mut next_timeout),
                        &mut info,
                    ) {
                        continue;
                    }
                }
                if !flights.is_empty() || next.is_some() {
                    continue;
                }
                let mut reply = LocalReply {
                    details: "upstream_per_try_idle_timeout",
                    ..LocalReply::TIMEOUT
                };
                if attempts.get() > 1 {
                    retried_body(&mut reply);
                }
                f.charge(reply.status.as_u16());
                return Err(reply);
            }
            Event::PerTry(i) => {
                let fl = &mut flights[i];
                fl.per_try = None;
                report_outlier(
                    f,
                    &fl.host,
                    &Outcome::PerTryTimeout,
                    fl.state.upstream.borrow().is_some(),
                );
                // Only an attempt that did start the next one is never retried itself
                // (Envoy's `retried`): one past the retry limit is judged again on its response.
                fl.hedged = hedge_retry(
                    f,
                    &mut retry,
                    (true, true),
                    None,
                    (&mut next, &mut next_timeout),
                    &mut info,
                );
            }
            Event::Done(i, r) => {
                let fl = flights.remove(i);
                let upstream = fl.state.take_upstream(Some(&r));
                if let Some(info) = info.as_deref_mut() {
                    info.upstream_transport_failure = fl.state.failure.take();
                }
                let outcome = Outcome::Done(r);
                report_outlier(f, &fl.host, &outcome, upstream.is_some());
                if fl.state.connected.get() {
                    f.endpoint_stats
                        .each()
                        .for_each(|s| s.upstream_rq_total.inc());
                }
                let Outcome::Done(r) = outcome else {
                    unreachable!("built as Done above")
                };
                let others = !flights.is_empty() || next.is_some();
                match r {
                    Ok((resp, conn)) => {
                        let Some(upstream) = upstream else {
                            return Err(LocalReply::CONNECTION_TERMINATION);
                        };
                        let status = resp.status().as_u16();
                        let would = retry.would_retry_headers(status, resp.headers());
                        let mut dropped = false;
                        if would && !fl.hedged {
                            let reset = retry.reset_interval(resp.headers());
                            if hedge_retry(
                                f,
                                &mut retry,
                                (true, false),
                                reset,
                                (&mut next, &mut next_timeout),
                                &mut info,
                            ) {
                                if f.dynamic_stats {
                                    stats.retry_response_code(status);
                                }
                                dropped = true;
                            } else {
                                dropped = others;
                            }
                        } else if would {
                            dropped = others;
                        } else if !fl.hedged {
                            retry.should_retry(
                                false,
                                None,
                                cluster,
                                &f.endpoint_stats,
                                fastrand::u64(..),
                            );
                        }
                        if dropped {
                            let complete = resp.body().is_end_stream();
                            drop(resp);
                            upstream.finish_with(conn, complete);
                            continue;
                        }
                        for other in flights.drain(..) {
                            other.overtaken();
                        }
                        if let Some(info) = info.as_deref_mut() {
                            info.upstream_host = Some(fl.host.address);
                            info.upstream_metadata = Some(fl.host.metadata.clone());
                            info.upstream_connection = Some(conn.info());
                            info.upstream_protocol = Some(fl.state.protocol());
                            info.response_code = Some(status);
                        }
                        return Ok(f.finish_response(
                            resp,
                            conn,
                            upstream,
                            attempts.get(),
                            fl.stream_until,
                            info.as_deref(),
                        ));
                    }
                    Err(mut reply) => {
                        let (reset, started) = attempt_failed(f, &reply, upstream)?;
                        if !fl.hedged {
                            let would = retry.would_retry_reset(reset, started);
                            if hedge_retry(
                                f,
                                &mut retry,
                                (would, false),
                                None,
                                (&mut next, &mut next_timeout),
                                &mut info,
                            ) {
                                continue;
                            }
                        }
                        if others {
                            continue;
                        }
                        if attempts.get() > 1 {
                            retried_body(&mut reply);
                        }
                        f.charge(reply.status.as_u16());
                        return Err(reply);
                    }
                }
            }
        }
    }
}

/// What an attempt tells outlier detection, as Envoy's router: the connection it had, the
/// response's status, a failure to connect or a reset (never a circuit breaker's refusal or
/// the client's own failure), or a timeout before the response.
fn report_outlier(
    f: &Forward<'_>,
    host: &crate::upstream::Host,
    outcome: &Outcome,
    connected: bool,
) {
    use crate::upstream::outlier::Monitor;
    let Some(o) = &f.cluster.config().outlier else {
        return;
    };
    let stats = &host.stats;
    if connected {
        Monitor::put_connected(stats, o);
    }
    match outcome {
        // A 5xx counts as one even with `x-envoy-degraded` (ejection comes first).
        Outcome::Done(Ok((resp, _)))
            if resp.status().as_u16() < 500 && resp.headers().contains_key("x-envoy-degraded") =>
        {
            Monitor::put_degraded(stats, o, resp.status().as_u16())
        }
        Outcome::Done(Ok((resp, _))) => Monitor::put_status(stats, o, resp.status().as_u16()),
        Outcome::Done(Err(reply)) => {
            if Reset::of(reply) != Reset::Overflow && !f.request.failed() {
                Monitor::put_connect_failed(stats, o);
            }
        }
        Outcome::PerTryTimeout
        | Outcome::PerTryIdleTimeout
        | Outcome::RouteTimeout
        | Outcome::MaxStreamDuration => {
            Monitor::put_timeout(stats, o, LocalReply::TIMEOUT.status.as_u16())
        }
    }
}

/// Waits `wait` before the next attempt; `false` when the route timeout passes first.
async fn back_off(
    wait: Duration,
    route_timer: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = route_timer => false,
    }
}

/// The route timeout passed: the attempt under way (if any) ends, and the client gets 504.
fn route_timeout(f: &Forward<'_>, upstream: Option<Upstream>) -> LocalReply {
    match upstream {
        Some(mut u) => {
            u.failed = true;
            u.finish(EndReason::Timeout);
        }
        None => f.cluster.stats.upstream_rq_timeout.inc(),
    }
    f.endpoint_stats
        .each()
        .for_each(|s| s.upstream_rq_timeout.inc());
    f.charge(LocalReply::TIMEOUT.status.as_u16());
    LocalReply::TIMEOUT
}

fn flag(info: &mut Option<&mut StreamInfo>, f: ResponseFlag) {
    if let Some(i) = info.as_deref_mut() {
        i.flags.set(f);
    }
}

/// What a later attempt expects, in milliseconds: its per-try timeout (none: the route's),
/// within what is left of the route timeout since the request completed, and at least 1 (as
/// Envoy's `setTimeoutHeaders`, whole milliseconds elapsed).
fn time_left_ms(route: Duration, per_try: Option<Duration>, done: tokio::time::Instant) -> u64 {
    let global = route.as_millis() as u64;
    let elapsed = done.elapsed().as_millis() as u64;
    let left = global.saturating_sub(elapsed).max(1);
    per_try.map_or(left, |p| left.min(p.as_millis() as u64))
}

/// The head of one more attempt: a copy, with the relay of the upstream's `100 Continue`
/// (`proxy_100_continue`), the one extension every attempt needs.
fn attempt_parts(p: &http::request::Parts) -> super::router::Head {
    let mut parts = Box::new(copy_parts(p));
    if let Some(relay) = p.extensions.get::<crate::http::h1_guard::ContinueRelay>() {
        parts.extensions.insert(relay.clone());
    }
    parts
}

/// A copy of a request head for one more attempt (extensions belong to the first).
pub(super) fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(on: &str, headers: &[(&str, &str)]) -> Option<RetryState> {
        let policy = Arc::new(RetryPolicy {
            retry_on: RetryOn::parse_config(on).0,
            retriable_status_codes: vec![418],
            ..RetryPolicy::default()
        });
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let retry_headers = RetryHeaders::read(&h);
        RetryState::new(Some(&policy), retry_headers.as_ref(), &h)
    }

    #[test]
    fn no_state_without_conditions() {
        assert!(state("", &[]).is_none());
        assert!(state("bogus", &[]).is_none());
        assert!(state("", &[("x-envoy-retry-on", "5xx")]).is_some());
    }

    #[test]
    fn response_conditions_as_envoy() {
        let h = HeaderMap::new();
        let s = state("5xx", &[]).expect("state");
        assert!(s.would_retry_headers(500, &h) && s.would_retry_headers(503, &h));
        assert!(!s.would_retry_headers(409, &h));
        let s = state("gateway-error", &[]).expect("state");
        assert!(!s.would_retry_headers(500, &h) && s.would_retry_headers(504, &h));
        let s = state("retriable-4xx,retriable-status-codes", &[]).expect("state");
        assert!(s.would_retry_headers(409, &h) && s.would_retry_headers(418, &h));
        assert!(!s.would_retry_headers(404, &h));
        let mut limited = HeaderMap::new();
        limited.insert("x-envoy-ratelimited", "true".parse().expect("value"));
        let s = state("5xx", &[]).expect("state");
        assert!(
            !s.would_retry_headers(503, &limited),
            "only envoy-ratelimited"
        );
        let s = state("envoy-ratelimited", &[]).expect("state");
        assert!(s.would_retry_headers(429, &limited));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().expect("value"));
        let s = state("unavailable", &[]).expect("state");
        assert!(s.would_retry_headers(200, &grpc));
        let s = state("cancelled", &[]).expect("state");
        assert!(!s.would_retry_headers(200, &grpc));
    }

    #[test]
    fn reset_conditions_as_envoy() {
        let s = state("connect-failure", &[]).expect("state");
        assert!(s.would_retry_reset(Reset::ConnectFailure, false));
        assert!(!s.would_retry_reset(Reset::Other, true));
        let s = state("reset-before-request", &[]).expect("state");
        assert!(s.would_retry_reset(Reset::ConnectFailure, false));
        assert!(!s.would_retry_reset(Reset::Other, true));
        let s = state("5xx", &[]).expect("state");
        assert!(s.would_retry_reset(Reset::Other, true));
        assert!(
            !s.would_retry_reset(Reset::Overflow, false),
            "never an overflow"
        );
        let s = state("refused-stream", &[]).expect("state");
        assert!(s.would_retry_reset(Reset::RefusedStream, true));
        assert!(!s.would_retry_reset(Reset::Other, true));
    }

    #[test]
    fn headers_add_to_the_policy() {
        let s = state(
            "connect-failure",
            &[
                ("x-envoy-retry-on", "retriable-status-codes"),
                ("x-envoy-retriable-status-codes", "429"),
                ("x-envoy-max-retries", "4"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "250"),
            ],
        )
        .expect("state");
        let h = HeaderMap::new();
        assert!(s.would_retry_headers(429, &h) && s.would_retry_headers(418, &h));
        assert_eq!(s.remaining, 4);
        assert_eq!(s.per_try_timeout(), Some(Duration::from_millis(250)));
        assert!(s.would_retry_reset(Reset::ConnectFailure, false));
    }
}
