//! Differential comparison: what an upstream and a client saw through Envoy and through skiff,
//! minus the documented differences (see `tests/DIFFERENCES.md`).

use std::collections::BTreeMap;

use crate::client::Resp;
use crate::upstream::RecordedRequest;

/// Response headers whose values may differ between the two proxies (presence must agree).
pub const VOLATILE_RESPONSE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time", "server"];

/// A request as the upstream saw it, reduced to what must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamView {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Version as text.
    pub version: String,
    /// Headers by name; values sorted; generated ids replaced by `<uuid>`.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body.
    pub body: Vec<u8>,
}

/// Reduces an upstream-observed request for comparison.
pub fn upstream_view(r: &RecordedRequest) -> UpstreamView {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &r.headers {
        let v = if k == "x-request-id" && crate::is_uuid(v) {
            "<uuid>".to_string()
        } else {
            v.clone()
        };
        headers.entry(k.clone()).or_default().push(v);
    }
    if let Some(a) = &r.authority {
        headers
            .entry(":authority".to_string())
            .or_default()
            .push(a.clone());
    }
    for v in headers.values_mut() {
        v.sort();
    }
    if headers
        .get("x-envoy-attempt-count")
        .is_some_and(|v| v.iter().any(|n| n != "1"))
    {
        if let Some(v) = headers.get_mut(EXPECTED_TIMEOUT) {
            v.iter_mut().for_each(|t| *t = "<left>".to_string());
        }
    }
    UpstreamView {
        method: r.method.clone(),
        path: r.path.clone(),
        version: format!("{:?}", r.version),
        headers,
        body: r.body.to_vec(),
    }
}

/// A response as the client saw it, reduced to what must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseView {
    /// Status.
    pub status: u16,
    /// Version as text.
    pub version: String,
    /// Headers by name with sorted values; volatile values replaced by `<any>`.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body with UUIDs masked; an echo dump's lines are sorted (header order may differ).
    pub body: String,
}

/// Reduces a client-observed response for comparison.
pub fn response_view(r: &Resp) -> ResponseView {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &r.headers {
        let k = k.to_ascii_lowercase();
        let v = if VOLATILE_RESPONSE_HEADERS.contains(&k.as_str()) {
            "<any>".to_string()
        } else {
            v.clone()
        };
        headers.entry(k).or_default().push(v);
    }
    for v in headers.values_mut() {
        v.sort();
    }
    ResponseView {
        status: r.status,
        version: format!("{:?}", r.version),
        headers,
        body: normalize_body(&r.text()),
    }
}

/// What a retry expects of the route timeout: the time left, which depends on the backoff's
/// jitter (masked as `<left>` on attempts after the first).
const EXPECTED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// Masks UUIDs and, for an echo dump (request line + header lines), sorts the header lines
/// (and masks a retry's time left).
pub fn normalize_body(body: &str) -> String {
    let masked = mask_uuids(body);
    let mut lines: Vec<&str> = masked.lines().collect();
    let looks_like_echo = lines.first().is_some_and(|l| {
        l.ends_with(" HTTP/1.1") || l.ends_with(" HTTP/2") || l.ends_with(" HTTP/1.0")
    });
    let retried = lines.iter().any(|l| {
        l.strip_prefix("x-envoy-attempt-count: ")
            .is_some_and(|n| n != "1")
    });
    let left = format!("{EXPECTED_TIMEOUT}: <left>");
    if looks_like_echo && retried {
        for l in lines.iter_mut() {
            if l.starts_with(EXPECTED_TIMEOUT) {
                *l = &left;
            }
        }
    }
    if looks_like_echo && lines.len() > 1 {
        lines[1..].sort_unstable();
        return lines.join("\n");
    }
    masked
}

/// Replaces every UUID-shaped substring with `<uuid>`.
pub fn mask_uuids(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len()
            && s.is_char_boundary(i)
            && s.is_char_boundary(i + 36)
            && crate::is_uuid(&s[i..i + 36])
        {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Lists the differences between two maps of headers, or nothing when they agree.
pub fn header_differences(
    left_name: &str,
    left: &BTreeMap<String, Vec<String>>,
    right_name: &str,
    right: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in left {
        match right.get(k) {
            None => out.push(format!(
                "header `{k}`: {left_name} {v:?}, {right_name} absent"
            )),
            Some(w) if w != v => out.push(format!(
                "header `{k}`: {left_name} {v:?}, {right_name} {w:?}"
            )),
            _ => {}
        }
    }
    for (k, w) in right {
        if !left.contains_key(k) {
            out.push(format!(
                "header `{k}`: {left_name} absent, {right_name} {w:?}"
            ));
        }
    }
    out
}

/// Every difference between the upstream views (empty when they agree).
pub fn upstream_differences(envoy: &UpstreamView, skiff: &UpstreamView) -> Vec<String> {
    let mut out = Vec::new();
    if envoy.method != skiff.method {
        out.push(format!(
            "method: envoy {} skiff {}",
            envoy.method, skiff.method
        ));
    }
    if envoy.path != skiff.path {
        out.push(format!("path: envoy {} skiff {}", envoy.path, skiff.path));
    }
    if envoy.version != skiff.version {
        out.push(format!(
            "version: envoy {} skiff {}",
            envoy.version, skiff.version
        ));
    }
    out.extend(header_differences(
        "envoy",
        &envoy.headers,
        "skiff",
        &skiff.headers,
    ));
    if envoy.body != skiff.body {
        out.push(format!(
            "body: envoy {:?} skiff {:?}",
            String::from_utf8_lossy(&envoy.body),
            String::from_utf8_lossy(&skiff.body)
        ));
    }
    out
}

/// Every difference between the client-observed responses (empty when they agree).
pub fn response_differences(envoy: &ResponseView, skiff: &ResponseView) -> Vec<String> {
    let mut out = Vec::new();
    if envoy.status != skiff.status {
        out.push(format!(
            "status: envoy {} skiff {}",
            envoy.status, skiff.status
        ));
    }
    if envoy.version != skiff.version {
        out.push(format!(
            "version: envoy {} skiff {}",
            envoy.version, skiff.version
        ));
    }
    out.extend(header_differences(
        "envoy",
        &envoy.headers,
        "skiff",
        &skiff.headers,
    ));
    if envoy.body != skiff.body {
        out.push(format!(
            "body: envoy {:?}\n      skiff {:?}",
            envoy.body, skiff.body
        ));
    }
    out
}

/// Asserts that what Envoy saw (`seen[0]`) and what skiff saw (`seen[1]`) are the same lines,
/// naming each line that differs, and returns Envoy's joined. With `SKIFF_TESTS_DUMP=<path>`
/// both lists are also written to `<path>.envoy` and `<path>.skiff`.
pub fn assert_same_lines(seen: &[Vec<String>]) -> String {
    let (e, s) = (&seen[0], &seen[1]);
    if let Ok(d) = std::env::var("SKIFF_TESTS_DUMP") {
        let _ = std::fs::write(format!("{d}.envoy"), e.join("\n"));
        let _ = std::fs::write(format!("{d}.skiff"), s.join("\n"));
    }
    let diff: Vec<String> = e
        .iter()
        .zip(s.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("envoy {a}\nskiff {b}"))
        .collect();
    assert!(
        diff.is_empty() && e.len() == s.len(),
        "{} lines (envoy) vs {}:\n{}\n\nenvoy:\n{}\n\nskiff:\n{}",
        e.len(),
        s.len(),
        diff.join("\n\n"),
        e.join("\n"),
        s.join("\n")
    );
    e.join("\n")
}
