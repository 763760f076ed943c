//! Retry policies (Envoy's `RetryPolicy`, on a route or its virtual host): which failures are
//! retried, how often, with which timeouts and backoff; and the `x-envoy-retry-*` request
//! headers that add to them, parsed as Envoy's `RetryStateImpl` parses them.

use std::time::Duration;

use http::HeaderMap;

use crate::model::HeaderMatch;

/// The `retry_on` conditions, as a set of bits (Envoy's `RetryPolicy::RETRY_ON_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    /// `5xx`: any 5xx response, and any reset or connect failure.
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// `gateway-error`: 502, 503, 504, and any reset or connect failure.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// `connect-failure`.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 3);
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 4);
    /// `retriable-status-codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    /// `reset`: any reset, connect failures included.
    pub const RESET: RetryOn = RetryOn(1 << 6);
    /// `retriable-headers`.
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 7);
    /// `envoy-ratelimited`: a response carrying `x-envoy-ratelimited`.
    pub const ENVOY_RATE_LIMITED: RetryOn = RetryOn(1 << 8);
    /// `http3-post-connect-failure` (skiff has no HTTP/3 upstreams: never applies).
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 9);
    /// `reset-before-request`: a reset before the request headers went upstream.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 10);
    /// gRPC `cancelled` (1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 16);
    /// gRPC `deadline-exceeded` (4).
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 17);
    /// gRPC `resource-exhausted` (8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 18);
    /// gRPC `unavailable` (14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 19);
    /// gRPC `internal` (13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 20);

    const HTTP_TOKENS: [(&'static str, RetryOn); 11] = [
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("reset", RetryOn::RESET),
        ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
        ("envoy-ratelimited", RetryOn::ENVOY_RATE_LIMITED),
        (
            "http3-post-connect-failure",
            RetryOn::HTTP3_POST_CONNECT_FAILURE,
        ),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
    ];
    const GRPC_TOKENS: [(&'static str, RetryOn, u32); 5] = [
        ("cancelled", RetryOn::GRPC_CANCELLED, 1),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED, 4),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED, 8),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE, 14),
        ("internal", RetryOn::GRPC_INTERNAL, 13),
    ];
    const ANY_GRPC: RetryOn = RetryOn(0x1f << 16);

    /// No condition.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether any of `other`'s conditions is in this set.
    pub fn has(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// Envoy's `parseRetryOn`: comma-separated HTTP conditions, blanks around each trimmed;
    /// `false` when a token is unknown (Envoy ignores it).
    pub fn parse_http(s: &str) -> (RetryOn, bool) {
        Self::parse(s, |t| {
            Self::HTTP_TOKENS
                .iter()
                .find(|(n, _)| *n == t)
                .map(|(_, v)| *v)
        })
    }

    /// Envoy's `parseRetryGrpcOn`: comma-separated gRPC conditions.
    pub fn parse_grpc(s: &str) -> (RetryOn, bool) {
        Self::parse(s, |t| {
            Self::GRPC_TOKENS
                .iter()
                .find(|(n, _, _)| *n == t)
                .map(|(_, v, _)| *v)
        })
    }

    /// A route's `retry_on`, which takes both kinds; the unknown tokens, which Envoy ignores.
    pub fn parse_config(s: &str) -> (RetryOn, Vec<String>) {
        let mut unknown = Vec::new();
        let (on, _) = Self::parse(s, |t| {
            let found = Self::parse_http(t).0 | Self::parse_grpc(t).0;
            if found.is_empty() {
                unknown.push(t.to_string());
                None
            } else {
                Some(found)
            }
        });
        (on, unknown)
    }

    fn parse(s: &str, mut token: impl FnMut(&str) -> Option<RetryOn>) -> (RetryOn, bool) {
        let mut on = RetryOn::default();
        let mut valid = true;
        for t in s
            .split(',')
            .map(|t| t.trim_matches(|c: char| c.is_ascii_whitespace()))
        {
            if t.is_empty() {
                continue;
            }
            match token(t) {
                Some(v) => on = on | v,
                None => valid = false,
            }
        }
        (on, valid)
    }

    /// Whether a `grpc-status` is one of the gRPC conditions in this set.
    pub fn grpc_status(self, status: u32) -> bool {
        self.has(Self::ANY_GRPC)
            && Self::GRPC_TOKENS
                .iter()
                .any(|(_, v, code)| *code == status && self.has(*v))
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, o: RetryOn) -> RetryOn {
        RetryOn(self.0 | o.0)
    }
}

/// Envoy's default `retry_back_off.base_interval` (`upstream.base_retry_backoff_ms`).
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// A route's (or virtual host's) `retry_policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `retry_on`.
    pub retry_on: RetryOn,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout`.
    pub per_try_idle_timeout: Option<Duration>,
    /// `retry_back_off.base_interval` (default 25 ms).
    pub base_interval: Duration,
    /// `retry_back_off.max_interval` (default 10 × base).
    pub max_interval: Duration,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u16>,
    /// `retriable_headers`: responses that match one are retried (`retriable-headers`).
    pub retriable_headers: Vec<HeaderMatch>,
    /// `retriable_request_headers`: only requests that match one are retried.
    pub retriable_request_headers: Vec<HeaderMatch>,
    /// `retry_host_predicate` `envoy.retry_host_predicates.previous_hosts`: a retry avoids the
    /// hosts already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts`: how many times a host is picked again when the
    /// predicate rejects it.
    pub host_selection_max_attempts: u32,
    /// `rate_limited_retry_back_off`: a retried response that says when to come back sets the
    /// wait.
    pub rate_limited: Option<RateLimitedBackOff>,
    /// `retry_priority` `envoy.retry_priorities.previous_priorities`: its `update_frequency`.
    pub previous_priorities: Option<u32>,
    /// `retry_host_predicate` `envoy.retry_host_predicates.omit_canary_hosts`: hosts whose
    /// `envoy.lb` `canary` is true are picked again.
    pub omit_canary_hosts: bool,
    /// `retry_host_predicate` `envoy.retry_host_predicates.omit_host_metadata`: hosts whose
    /// `envoy.lb` metadata has all these values are picked again.
    pub omit_host_metadata: Option<Vec<(String, crate::model::MetaValue)>>,
}

/// `rate_limited_retry_back_off`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitedBackOff {
    /// `reset_headers`, in order: the first that gives an interval within `max_interval` wins.
    pub reset_headers: Vec<(http::HeaderName, ResetFormat)>,
    /// `max_interval` (default 300 s).
    pub max_interval: Duration,
}

/// `ResetHeaderFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// `SECONDS`: the seconds to wait.
    Seconds,
    /// `UNIX_TIMESTAMP`: the second, since the epoch, to wait for.
    UnixTimestamp,
}

impl RateLimitedBackOff {
    /// The wait a response asks for, as Envoy's `parseResetInterval`: the first reset header
    /// (its first value) that parses as a whole number to an interval within `max_interval`;
    /// `now` is the time since the epoch.
    pub fn interval(&self, h: &http::HeaderMap, now: Duration) -> Option<Duration> {
        self.reset_headers.iter().find_map(|(name, format)| {
            let v = h.get(name)?.to_str().ok()?.trim();
            let n: u64 = v.strip_prefix('+').unwrap_or(v).parse().ok()?;
            let secs = match format {
                ResetFormat::Seconds => n,
                ResetFormat::UnixTimestamp => n.checked_sub(now.as_secs())?,
            };
            let d = Duration::from_secs(secs);
            (d <= self.max_interval).then_some(d)
        })
    }

    /// Envoy's jittered lower bound: a wait in `[interval, 1.5 × interval)`, `random` being
    /// uniform over `u64`.
    pub fn wait(interval: Duration, random: u64) -> Duration {
        let ms = interval.as_millis() as u64;
        Duration::from_millis(ms + random % (ms >> 1).max(1))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            base_interval: DEFAULT_BASE_INTERVAL,
            max_interval: DEFAULT_BASE_INTERVAL * 10,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            previous_hosts: false,
            host_selection_max_attempts: 1,
            rate_limited: None,
            previous_priorities: None,
            omit_canary_hosts: false,
            omit_host_metadata: None,
        }
    }
}

/// What the `x-envoy-retry-*` request headers of an internal request say (Envoy reads them only
/// there: the connection manager strips them from every other request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryHeaders {
    /// `x-envoy-retry-on` and `x-envoy-retry-grpc-on`, merged.
    pub retry_on: Option<RetryOn>,
    /// `x-envoy-max-retries`.
    pub max_retries: Option<u32>,
    /// `x-envoy-retriable-status-codes`.
    pub status_codes: Vec<u16>,
    /// `x-envoy-retriable-header-names`: present-matches on these names.
    pub header_names: Vec<http::HeaderName>,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`.
    pub per_try_timeout: Option<Duration>,
    /// `x-envoy-hedge-on-per-try-timeout`: `true` or `false` override the route's hedge policy.
    pub hedge: Option<bool>,
}

impl RetryHeaders {
    /// The retry headers of `h`; `None` when it carries none.
    pub fn read(h: &HeaderMap) -> Option<RetryHeaders> {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let mut out = RetryHeaders::default();
        if let Some(v) = get("x-envoy-retry-on") {
            out.retry_on = Some(RetryOn::parse_http(v).0);
        }
        if let Some(v) = get("x-envoy-retry-grpc-on") {
            out.retry_on = Some(out.retry_on.unwrap_or_default() | RetryOn::parse_grpc(v).0);
        }
        out.max_retries = get("x-envoy-max-retries").and_then(simple_atoi);
        if let Some(v) = get("x-envoy-retriable-status-codes") {
            out.status_codes = v
                .split(',')
                .filter_map(simple_atoi)
                .filter_map(|c| u16::try_from(c).ok())
                .collect();
        }
        if let Some(v) = get("x-envoy-retriable-header-names") {
            out.header_names = v
                .split(',')
                .map(|n| n.trim_matches(|c: char| c.is_ascii_whitespace()))
                .filter(|n| !n.is_empty())
                .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
        }
        out.per_try_timeout = get("x-envoy-upstream-rq-per-try-timeout-ms")
            .and_then(simple_atoi)
            .map(|ms| Duration::from_millis(u64::from(ms)));
        out.hedge = match get("x-envoy-hedge-on-per-try-timeout") {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        };
        (out != RetryHeaders::default()).then_some(out)
    }
}

/// `absl::SimpleAtoi` for an unsigned 32-bit value: blanks around it and one `+` allowed.
fn simple_atoi(v: &str) -> Option<u32> {
    let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = v.strip_prefix('+').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Envoy's `JitteredExponentialBackOffStrategy`: each wait is uniform in `[0, interval)`, the
/// interval doubling from the base up to the maximum, and no wait longer than the maximum.
#[derive(Debug, Clone, PartialEq)]
pub struct BackOff {
    next: u64,
    max: u64,
}

impl BackOff {
    /// A strategy from `base` to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        BackOff {
            next: (base.as_millis() as u64).max(1),
            max: (max.as_millis() as u64).max(1),
        }
    }

    /// The next wait, `random` being uniform over `u64`.
    pub fn next(&mut self, random: u64) -> Duration {
        let interval = self.next;
        self.next = if self.next > self.max / 2 {
            self.max
        } else {
            self.next * 2
        };
        Duration::from_millis((random % interval).min(self.max))
    }
}

impl RetryPolicy {
    /// Whether a retry host predicate sends a pick of `host` (its address, its `envoy.lb`
    /// metadata) back for another one; `tried`: the hosts attempted so far.
    pub fn rejects(
        &self,
        address: std::net::SocketAddr,
        lb: &crate::model::LbMetadata,
        tried: &[std::net::SocketAddr],
    ) -> bool {
        (self.previous_hosts && tried.contains(&address))
            || (self.omit_canary_hosts
                && lb.0.get("canary").is_some_and(|(v, _)| &*v.0 == "b:true"))
            || self.omit_host_metadata.as_ref().is_some_and(|labels| {
                // Without labels nothing is sent back (Envoy's `OmitHostsRetryPredicate`).
                !labels.is_empty()
                    && labels
                        .iter()
                        .all(|(k, v)| lb.0.get(k).is_some_and(|(h, _)| h == v))
            })
    }

    /// Whether any retry host predicate is configured.
    pub fn has_host_predicate(&self) -> bool {
        self.previous_hosts || self.omit_canary_hosts || self.omit_host_metadata.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_parses_as_envoy() {
        let (on, ok) = RetryOn::parse_http(" 5xx, connect-failure ,reset-before-request");
        assert!(ok);
        assert!(on.has(RetryOn::FIVE_XX));
        assert!(on.has(RetryOn::CONNECT_FAILURE));
        assert!(on.has(RetryOn::RESET_BEFORE_REQUEST));
        assert!(!on.has(RetryOn::RESET));
        let (on, ok) = RetryOn::parse_http("5xx,unavailable,bogus");
        assert!(!ok, "gRPC tokens are not HTTP ones");
        assert_eq!(on, RetryOn::FIVE_XX);
        let (on, ok) = RetryOn::parse_grpc("unavailable,cancelled");
        assert!(ok);
        assert!(on.grpc_status(14) && on.grpc_status(1) && !on.grpc_status(4));
        let (on, unknown) = RetryOn::parse_config("gateway-error,internal,bogus,,");
        assert!(on.has(RetryOn::GATEWAY_ERROR) && on.grpc_status(13));
        assert_eq!(unknown, ["bogus"]);
        assert!(RetryOn::parse_http("").0.is_empty());
    }

    #[test]
    fn retry_headers_read_as_envoy() {
        let mut h = HeaderMap::new();
        assert_eq!(RetryHeaders::read(&h), None);
        h.insert("x-envoy-retry-on", "5xx".parse().unwrap());
        h.insert("x-envoy-retry-grpc-on", "unavailable".parse().unwrap());
        h.insert("x-envoy-max-retries", " 3 ".parse().unwrap());
        h.insert(
            "x-envoy-retriable-status-codes",
            "418,x, 409,70000".parse().unwrap(),
        );
        h.insert(
            "x-envoy-retriable-header-names",
            "x-a, X-B,,bad name".parse().unwrap(),
        );
        let r = RetryHeaders::read(&h).expect("headers");
        let on = r.retry_on.expect("retry on");
        assert!(on.has(RetryOn::FIVE_XX) && on.grpc_status(14));
        assert_eq!(r.max_retries, Some(3));
        assert_eq!(r.status_codes, [418, 409]);
        assert_eq!(r.header_names.len(), 2);
        let mut h = HeaderMap::new();
        h.insert("x-envoy-max-retries", "-1".parse().unwrap());
        assert_eq!(RetryHeaders::read(&h), None);
    }

    #[test]
    fn backoff_is_full_jitter_doubling_to_the_max() {
        let mut b = BackOff::new(Duration::from_millis(25), Duration::from_millis(250));
        let max = u64::MAX;
        // random % interval: the largest waits are interval - 1.
        let waits: Vec<u64> = (0..6).map(|_| b.next(max).as_millis() as u64).collect();
        let bounds = [25, 50, 100, 200, 250, 250];
        for (w, bound) in waits.iter().zip(bounds) {
            assert!(*w < bound, "{waits:?}");
        }
        let mut b = BackOff::new(Duration::from_millis(25), Duration::from_millis(250));
        assert_eq!(b.next(0), Duration::ZERO);
        for seed in 0..1000u64 {
            let mut b = BackOff::new(Duration::from_millis(10), Duration::from_millis(15));
            for _ in 0..4 {
                assert!(
                    b.next(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) <= Duration::from_millis(15)
                );
            }
        }
    }

    #[test]
    fn reset_headers_give_the_wait_as_envoy_reads_them() {
        let policy = RateLimitedBackOff {
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
            max_interval: Duration::from_secs(300),
        };
        let now = Duration::from_secs(1_000_000);
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            policy.interval(&h, now)
        };
        assert_eq!(with(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            with(&[("retry-after", " 3 ")]),
            Some(Duration::from_secs(3))
        );
        // Over max_interval, or not a number: the next header is tried.
        assert_eq!(
            with(&[("retry-after", "301"), ("x-ratelimit-reset", "1000005")]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            with(&[("retry-after", "soon"), ("x-ratelimit-reset", "1000001")]),
            Some(Duration::from_secs(1))
        );
        // A time already past gives nothing.
        assert_eq!(with(&[("x-ratelimit-reset", "999999")]), None);
        assert_eq!(with(&[]), None);
        let w = RateLimitedBackOff::wait(Duration::from_secs(2), 12345);
        assert!(
            w >= Duration::from_secs(2) && w < Duration::from_secs(3),
            "{w:?}"
        );
    }
}
