//! Envoy's default header handling (reference §4): hop-by-hop removal both ways, `te` reduced to
//! `trailers`, `x-forwarded-proto`, `x-request-id`, and stripping of the `x-envoy-*` control
//! headers a client may not set (since Envoy 1.33 no request is internal by default).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-envoy-*` headers that steer Envoy and are removed from external requests.
const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-ip-tags",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-original-url",
];

/// Header names used on every request.
pub mod names {
    use http::HeaderName;
    /// `x-request-id`.
    pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `x-forwarded-proto`.
    pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    /// `x-envoy-expected-rq-timeout-ms`.
    pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
        HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
    /// `x-envoy-original-path`: the path before a route rewrote it.
    pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
    /// `x-envoy-original-host`: the host before a route rewrote it.
    pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
    /// `x-envoy-upstream-service-time`.
    pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
        HeaderName::from_static("x-envoy-upstream-service-time");
    /// `keep-alive`.
    pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    /// `proxy-connection`.
    pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
}

/// Removes hop-by-hop headers: `connection` and every header it names, `keep-alive`,
/// `proxy-connection`, `upgrade`, `transfer-encoding` (framing is the codec's job), and `te`
/// except its `trailers` token.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: each lookup below hashes a name, and most messages carry
    // none of these; those that do carry one or two.
    let found = h.keys().fold(0, |found, name| found | hop_by_hop(name));
    if found == 0 {
        return;
    }
    if found & HOP_CONNECTION != 0 {
        // Every Connection header counts, not just the first. The names it gives are matched
        // against the message's own (a token such as `close` names nothing there).
        let mut named: Vec<HeaderName> = Vec::new();
        let tokens = h.get_all(header::CONNECTION);
        for token in tokens
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
        {
            let token = token.trim();
            // `te` listed in Connection is still reduced below, not dropped.
            if token.is_empty() || token.eq_ignore_ascii_case("te") {
                continue;
            }
            named.extend(
                h.keys()
                    .filter(|name| name.as_str().eq_ignore_ascii_case(token))
                    .cloned(),
            );
        }
        h.remove(header::CONNECTION);
        for name in named {
            h.remove(name);
        }
    }
    if found & HOP_KEEP_ALIVE != 0 {
        h.remove(&names::KEEP_ALIVE);
    }
    if found & HOP_PROXY_CONNECTION != 0 {
        h.remove(&names::PROXY_CONNECTION);
    }
    if found & HOP_UPGRADE != 0 {
        h.remove(header::UPGRADE);
    }
    if found & HOP_TRANSFER_ENCODING != 0 {
        h.remove(header::TRANSFER_ENCODING);
    }
    if found & HOP_TE != 0 {
        reduce_te(h);
    }
}

const HOP_CONNECTION: u8 = 1;
const HOP_UPGRADE: u8 = 2;
const HOP_TRANSFER_ENCODING: u8 = 4;
const HOP_TE: u8 = 8;
const HOP_KEEP_ALIVE: u8 = 16;
const HOP_PROXY_CONNECTION: u8 = 32;

/// Which hop-by-hop header `name` is, as a bit (0 for any other).
fn hop_by_hop(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        HOP_CONNECTION
    } else if name == header::UPGRADE {
        HOP_UPGRADE
    } else if name == header::TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == header::TE {
        HOP_TE
    } else if name == names::KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if name == names::PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else {
        0
    }
}

/// Reduces `te` to its `trailers` token, or drops it; only called when the message has one.
fn reduce_te(h: &mut HeaderMap) {
    let has_trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
    h.remove(header::TE);
    if has_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the headers a request's `Connection` nominates, before the connection manager looks
/// at the request: Envoy's HTTP/1.1 codec drops them first, so a nominated `Host` is a missing
/// one. The connection-level tokens (`close`, `keep-alive`, `upgrade`, `te`…) stay for the
/// checks that read them; [`remove_hop_by_hop`] removes the rest later.
pub fn remove_nominated(h: &mut HeaderMap) {
    let mut named = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        for token in v.to_str().unwrap_or("").split(',').map(str::trim) {
            let keep = [
                "",
                "close",
                "keep-alive",
                "upgrade",
                "http2-settings",
                "te",
                "connection",
            ]
            .iter()
            .any(|k| token.eq_ignore_ascii_case(k));
            if !keep {
                if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        h.remove(name);
    }
}

/// Joins several `Host` headers into one, comma-separated, as Envoy's header map does (observed:
/// `Host: a` and `Host: b` reach the upstream as `host: a,b`).
pub fn join_hosts(h: &mut HeaderMap) {
    if h.get_all(header::HOST).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(header::HOST)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b","[..])) {
        h.insert(header::HOST, v);
    }
}

/// Joins the `cookie` fields of an HTTP/2 request into one, `; `-separated (RFC 9113 §8.2.3),
/// as Envoy's HTTP/2 codec does: an HTTP/1.1 upstream must not get several `Cookie` lines.
pub fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

/// Whether an authority holds only the characters nghttp2's `check_authority` (which Envoy
/// uses) allows: no spaces, quotes or controls.
pub fn authority_is_valid(a: &str) -> bool {
    a.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=@[]_~".contains(&b))
}

/// Removes the `x-envoy-*` control headers that only internal requests may carry.
pub fn strip_envoy_control_headers(h: &mut HeaderMap) {
    // Removing by name parses and hashes each of them: look for the prefix once instead.
    if !h.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return;
    }
    for name in ENVOY_CONTROL_HEADERS {
        h.remove(*name);
    }
}

/// A new UUIDv4 request id.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 36];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Appends `value` to a `via` header, comma-separated, as Envoy does.
pub fn append_via(h: &mut HeaderMap, value: &HeaderValue) {
    match h.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            let joined = format!("{existing},{}", value.to_str().unwrap_or(""));
            if let Ok(v) = HeaderValue::from_str(&joined) {
                h.insert(header::VIA, v);
            }
        }
        _ => {
            h.insert(header::VIA, value.clone());
        }
    }
}

/// A header value from a number.
pub fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// Whether a `Connection` header asks to keep the connection (`keep-alive`, HTTP/1.0's way).
pub fn asks_keep_alive(h: &http::HeaderMap) -> bool {
    h.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
        })
    })
}

/// A `set-cookie` value as Envoy writes one: the value quoted, `Max-Age` in whole seconds when
/// there is a ttl, `Path` when there is one, the attributes, then `HttpOnly`.
pub fn set_cookie(
    name: &str,
    value: &str,
    ttl: Option<std::time::Duration>,
    path: &str,
    attributes: &[(String, String)],
) -> String {
    let mut cookie = format!("{name}=\"{value}\"");
    if let Some(ttl) = ttl.filter(|t| t.as_secs() != 0) {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        cookie.push_str(&format!("; Path={path}"));
    }
    for (n, v) in attributes {
        if v.is_empty() {
            cookie.push_str(&format!("; {n}"));
        } else {
            cookie.push_str(&format!("; {n}={v}"));
        }
    }
    cookie.push_str("; HttpOnly");
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `remove_hop_by_hop` leaves of a message built from `pairs` (appended in order),
    /// sorted, with the map itself.
    fn after_hop_by_hop(pairs: &[(&'static str, &str)]) -> (Vec<String>, HeaderMap) {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().expect("v"));
        }
        remove_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        (names, h)
    }

    #[test]
    fn hop_by_hop_as_envoy() {
        let (names, h) = after_hop_by_hop(&[
            ("connection", "keep-alive, x-foo"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("upgrade", "foo"),
            ("x-keep", "1"),
            ("connection", "x-bar"),
            ("x-bar", "1"),
        ]);
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
        let (names, _) = after_hop_by_hop(&[("te", "gzip")]);
        assert!(names.is_empty());
    }

    #[test]
    fn connection_names_headers_in_any_case_and_te_stays_reduced() {
        let (names, h) = after_hop_by_hop(&[
            ("connection", " Close ,X-Foo, TE,,"),
            ("close", "1"),
            ("x-foo", "1"),
            ("te", "trailers, gzip"),
            ("x-keep", "1"),
        ]);
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
        // Only the hop-by-hop headers a message has are looked for; none leaves it as it is.
        let (names, _) = after_hop_by_hop(&[("transfer-encoding", "chunked"), ("x-keep", "1")]);
        assert_eq!(names, ["x-keep"]);
        let (names, _) = after_hop_by_hop(&[("x-keep", "1")]);
        assert_eq!(names, ["x-keep"]);
    }

    #[test]
    fn nominated_and_hosts_as_envoy() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-foo, Keep-Alive, host".parse().expect("v"));
        h.insert("x-foo", "1".parse().expect("v"));
        h.insert("keep-alive", "1".parse().expect("v"));
        h.insert("host", "a".parse().expect("v"));
        remove_nominated(&mut h);
        assert!(!h.contains_key("x-foo") && !h.contains_key("host"));
        assert!(h.contains_key("keep-alive") && h.contains_key("connection"));
        let mut h = HeaderMap::new();
        h.append("host", "a".parse().expect("v"));
        h.append("host", "b".parse().expect("v"));
        join_hosts(&mut h);
        assert_eq!(h.get_all("host").iter().collect::<Vec<_>>(), ["a,b"]);
        assert!(authority_is_valid("u@a:80") && authority_is_valid("a,b"));
        assert!(!authority_is_valid("a, b") && !authority_is_valid("a\"b"));
        let mut h = HeaderMap::new();
        for c in ["a=1", "b=2", "c=3"] {
            h.append("cookie", c.parse().expect("v"));
        }
        join_cookies(&mut h);
        assert_eq!(
            h.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let v = new_request_id();
        let s = v.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
    }
}
