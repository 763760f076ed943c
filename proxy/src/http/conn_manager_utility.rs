//! What Envoy's `ConnectionManagerUtility` does to a request before routing: path
//! normalization (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`), host
//! port stripping, and the forwarding headers (`x-forwarded-for`, `x-envoy-internal`,
//! `x-envoy-external-address`) under `use_remote_address` and `xff_num_trusted_hops`.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::model::{EscapedSlashes, HttpConnectionManager, StripPort};
use crate::http::headers::names;

/// What path normalization decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// Route the request with this path (changed or not).
    Continue(String),
    /// Escaped slashes were unescaped: redirect the client to this path (307).
    Redirect(String),
    /// The path cannot be normalized, or has escaped slashes the configuration refuses: 400.
    Reject,
}

/// Envoy's `maybeNormalizePath` for `path` (query included); `None` when nothing is to be
/// done.
pub fn normalize_path(cfg: &HttpConnectionManager, path: &str) -> Option<PathAction> {
    let keep = cfg.escaped_slashes == EscapedSlashes::KeepUnchanged;
    if keep && !cfg.normalize_path && !cfg.merge_slashes {
        return None;
    }
    let mut path = path.to_string();
    let mut redirect = false;
    if !keep {
        if let Some(unescaped) = unescape_slashes(&path) {
            match cfg.escaped_slashes {
                EscapedSlashes::RejectRequest => return Some(PathAction::Reject),
                EscapedSlashes::UnescapeAndRedirect => redirect = true,
                EscapedSlashes::UnescapeAndForward | EscapedSlashes::KeepUnchanged => {}
            }
            path = unescaped;
        }
    }
    if cfg.normalize_path {
        let (bare, query) = split_query(&path);
        match canonical_path(bare) {
            Some(c) => path = format!("{c}{query}"),
            None => return Some(PathAction::Reject),
        }
    }
    if cfg.merge_slashes {
        path = merge_slashes(&path);
    }
    Some(if redirect {
        PathAction::Redirect(path)
    } else {
        PathAction::Continue(path)
    })
}

fn split_query(path: &str) -> (&str, &str) {
    match path.find('?') {
        Some(i) => path.split_at(i),
        None => (path, ""),
    }
}

/// `%2F`/`%2f` to `/` and `%5C`/`%5c` to `\` in the path (not the query); `None` if none.
fn unescape_slashes(path: &str) -> Option<String> {
    let (bare, query) = split_query(path);
    if !bare.contains('%') {
        return None;
    }
    let mut out = String::with_capacity(bare.len());
    let mut rest = bare;
    let mut found = false;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or("");
        if esc.eq_ignore_ascii_case("%2f") {
            out.push('/');
            found = true;
            rest = &rest[i + 3..];
        } else if esc.eq_ignore_ascii_case("%5c") {
            out.push('\\');
            found = true;
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    found.then(|| format!("{out}{query}"))
}

/// Envoy's `mergeSlashes`: runs of `/` in the path (not the query) become one, keeping a
/// leading and a trailing slash.
fn merge_slashes(path: &str) -> String {
    let (bare, query) = split_query(path);
    if !bare.contains("//") {
        return path.to_string();
    }
    let prefix = if bare.starts_with('/') { "/" } else { "" };
    let suffix = if bare.ends_with('/') { "/" } else { "" };
    let joined: Vec<&str> = bare.split('/').filter(|s| !s.is_empty()).collect();
    format!("{prefix}{}{suffix}{query}", joined.join("/"))
}

/// How the URL canonicalizer Envoy uses (Chromium's) treats a path byte.
#[derive(PartialEq, Eq)]
enum Class {
    Pass,
    Escape,
    /// Passed as is, and decoded when it arrives percent-encoded.
    Unescape,
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        _ => Class::Escape,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Envoy's `canonicalPath` (Chromium's path canonicalizer) for a path without its query:
/// dot segments resolved (`%2e` counts as a dot), percent-encoded unreserved characters
/// decoded, characters a path may not hold encoded. `None` for a path it refuses.
pub fn canonical_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(path.to_string());
    }
    let mut segments: Vec<String> = Vec::new();
    // A backslash separates segments as a slash does (Chromium's canonicalizer).
    let raw: Vec<&str> = path[1..].split(['/', '\\']).collect();
    let last = raw.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in raw.iter().enumerate() {
        let mut out = String::with_capacity(seg.len());
        let bytes = seg.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match class(b) {
                Class::Invalid => return None,
                Class::Pass | Class::Unescape if b != b'%' => out.push(b as char),
                _ if b == b'%' => {
                    match (
                        bytes.get(i + 1).copied().and_then(hex),
                        bytes.get(i + 2).copied().and_then(hex),
                    ) {
                        (Some(h), Some(l)) => {
                            let v = h * 16 + l;
                            if class(v) == Class::Unescape {
                                out.push(v as char);
                            } else {
                                out.push_str(&seg[i..i + 3]);
                            }
                            i += 2;
                        }
                        _ => out.push('%'),
                    }
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
            i += 1;
        }
        match out.as_str() {
            "." => trailing_slash = n == last,
            ".." => {
                segments.pop();
                trailing_slash = n == last;
            }
            _ => {
                segments.push(out);
                trailing_slash = false;
            }
        }
    }
    let mut result = format!("/{}", segments.join("/"));
    if trailing_slash && !result.ends_with('/') {
        result.push('/');
    }
    Some(result)
}

/// A host without its trailing dot (`a.b.` and `a.b.:80`), when it has one (Envoy's
/// `stripTrailingHostDot`).
pub fn strip_trailing_host_dot(host: &str) -> Option<String> {
    if let Some(h) = host.strip_suffix('.') {
        return Some(h.to_string());
    }
    // A port after the dot; an IPv6 literal's colons are inside its brackets.
    let colon = host.rfind(':').filter(|c| !host[*c..].contains(']'))?;
    let (name, port) = host.split_at(colon);
    let name = name.strip_suffix('.')?;
    Some(format!("{name}{port}"))
}

/// The host with its port removed as `strip_matching_host_port` / `strip_any_host_port` say
/// (`listener_port` is the port the connection arrived on); `None` when it stays.
pub fn strip_port(mode: StripPort, host: &str, listener_port: u16) -> Option<String> {
    if mode == StripPort::None {
        return None;
    }
    let colon = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)?
    } else {
        let i = host.rfind(':')?;
        // An IPv6 address without brackets has no port to strip.
        if host[..i].contains(':') {
            return None;
        }
        i
    };
    let port: u16 = host[colon + 1..].parse().ok()?;
    match mode {
        StripPort::Any => Some(host[..colon].to_string()),
        StripPort::Matching if port == listener_port => Some(host[..colon].to_string()),
        _ => None,
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
/// Stripped from edge requests (`cleanInternalHeaders`), so clients cannot set them.
const EDGE_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// Every `x-forwarded-for` value, joined by ',' as Envoy's header map holds them.
fn xff_joined(headers: &HeaderMap) -> String {
    let all: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    all.join(",")
}

/// The address `x-forwarded-for` holds `hops` entries from its end, if it parses.
fn xff_address(headers: &HeaderMap, hops: u32) -> (Option<IpAddr>, bool) {
    let mut all = headers.get_all(&X_FORWARDED_FOR).iter();
    // Most requests have no x-forwarded-for or one: read it in place.
    let joined;
    let list = match (all.next(), all.next()) {
        (None, _) => return (None, false),
        (Some(v), None) => v.to_str().unwrap_or(""),
        (Some(_), Some(_)) => {
            joined = xff_joined(headers);
            joined.as_str()
        }
    };
    if list.is_empty() {
        return (None, false);
    }
    let count = list.split(',').count();
    if count <= hops as usize {
        return (None, false);
    }
    let entry = list.rsplit(',').nth(hops as usize).unwrap_or("").trim();
    (entry.parse().ok(), count == 1)
}

/// Envoy's `mutateRequestHeaders` for the forwarding headers: `x-forwarded-for` appended under
/// `use_remote_address`, the trusted client address found, `x-envoy-internal` set for internal
/// requests (and removed otherwise), `x-envoy-external-address` set on edge requests. Returns
/// the client's address as trusted (Envoy's downstream remote address from then on) and
/// whether it came from the request's headers rather than the peer, or the status an original
/// IP detection extension rejects the request with.
pub fn forwarding_headers(
    cfg: &HttpConnectionManager,
    headers: &mut HeaderMap,
    remote: SocketAddr,
    local: SocketAddr,
    secure: bool,
) -> Result<(IpAddr, bool), http::StatusCode> {
    join_xff(headers);
    let hops = cfg.xff_num_trusted_hops;
    let mut trusted: Option<IpAddr> = None;
    let allow_checks;
    let from_headers;
    if cfg.use_remote_address {
        allow_checks = !headers.contains_key(&X_FORWARDED_FOR);
        if hops > 0 {
            trusted = xff_address(headers, hops - 1).0;
        }
        from_headers = trusted.is_some();
        if trusted.is_none() {
            trusted = Some(remote.ip());
        }
        // A peer that is not an IP address (an internal listener's client) is not appended.
        if !cfg.skip_xff_append && skiff_config::model::internal_name(&remote).is_none() {
            append_xff(headers, xff_peer(remote, local));
        }
        if hops == 0 || !headers.contains_key(&names::X_FORWARDED_PROTO) {
            headers.insert(
                names::X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(if secure { "https" } else { "http" }),
            );
        }
        // append_x_forwarded_port: the port the client reached, unless a trusted hop set one.
        if cfg.append_x_forwarded_port && (hops == 0 || !headers.contains_key("x-forwarded-port")) {
            headers.insert("x-forwarded-port", HeaderValue::from(local.port()));
        }
    } else if !cfg.ip_detection.is_empty() {
        // The extensions in order: the first that finds an address decides; one that cannot
        // may reject the request.
        let mut found = None;
        let mut append = false;
        for d in &cfg.ip_detection {
            // An xff extension with `skip_xff_append: false` that looked appends the peer
            // once the extensions are done, found or not (measured against Envoy 1.40).
            append |= matches!(
                d,
                crate::config::model::IpDetection::Xff { append: true, .. }
            );
            match detect(d, headers, remote.ip()) {
                Detected::Address(ip, checks) => {
                    found = Some((ip, checks));
                    break;
                }
                Detected::Reject(status) => return Err(status),
                Detected::Nothing => {}
            }
        }
        if append && skiff_config::model::internal_name(&remote).is_none() {
            append_xff(headers, xff_peer(remote, local));
        }
        trusted = found.map(|(ip, _)| ip);
        allow_checks = found.is_some_and(|(_, checks)| checks);
        from_headers = trusted.is_some();
    } else {
        let (addr, single) = xff_address(headers, hops);
        trusted = addr;
        allow_checks = single;
        from_headers = trusted.is_some();
    }
    let internal = allow_checks && trusted.is_some_and(|ip| cfg.is_internal(ip));
    let edge = !internal && cfg.use_remote_address;
    headers.remove(&X_ENVOY_INTERNAL);
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    } else if edge {
        for h in EDGE_STRIPPED {
            headers.remove(*h);
        }
    }
    if edge {
        let ip = trusted.unwrap_or(remote.ip());
        // Only an IP address: not an internal listener's client.
        let internal_peer =
            ip == remote.ip() && skiff_config::model::internal_name(&remote).is_some();
        if let (false, Ok(v)) = (internal_peer, HeaderValue::from_str(&ip.to_string())) {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
        }
    }
    Ok((trusted.unwrap_or(remote.ip()), from_headers))
}

/// What an original IP detection extension made of a request.
enum Detected {
    /// The client, and whether it may make the request internal.
    Address(IpAddr, bool),
    /// Nothing found; the next extension looks.
    Nothing,
    /// Nothing found, and the request is answered with this status.
    Reject(http::StatusCode),
}

/// Envoy's `CustomHeaderIPDetection` and `XffIPDetection`.
fn detect(d: &crate::config::model::IpDetection, headers: &HeaderMap, peer: IpAddr) -> Detected {
    use crate::config::model::IpDetection;
    match d {
        IpDetection::CustomHeader {
            header,
            trusted,
            reject,
        } => {
            let ip = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<IpAddr>().ok());
            match (ip, reject) {
                (Some(ip), _) => Detected::Address(ip, *trusted),
                (None, Some(status)) => Detected::Reject(*status),
                (None, None) => Detected::Nothing,
            }
        }
        IpDetection::Xff {
            hops,
            trusted_cidrs,
            ..
        } if trusted_cidrs.is_empty() => match xff_address(headers, *hops) {
            (Some(ip), single) => Detected::Address(ip, single),
            (None, _) => Detected::Nothing,
        },
        IpDetection::Xff { trusted_cidrs, .. } => {
            if !trusted_cidrs.iter().any(|c| c.contains(peer)) {
                return Detected::Nothing;
            }
            // From the end, the first entry that is not a trusted proxy; every one trusted:
            // the first entry.
            let joined = xff_joined(headers);
            if joined.is_empty() {
                return Detected::Nothing;
            }
            let entries: Vec<&str> = joined.split(',').map(str::trim).collect();
            let mut last = None;
            for e in entries.iter().rev() {
                let Ok(ip) = e.parse::<IpAddr>() else {
                    return Detected::Nothing;
                };
                last = Some(ip);
                if !trusted_cidrs.iter().any(|c| c.contains(ip)) {
                    return Detected::Address(ip, entries.len() == 1);
                }
            }
            match last {
                Some(ip) => Detected::Address(ip, entries.len() == 1),
                None => Detected::Nothing,
            }
        }
    }
}

/// The peer as `x-forwarded-for` records it: a loopback peer as this machine's address, as
/// Envoy does.
fn xff_peer(remote: SocketAddr, local: SocketAddr) -> IpAddr {
    if remote.ip().is_loopback() {
        machine_address().unwrap_or(local.ip())
    } else {
        remote.ip()
    }
}

/// This machine's IPv4 address as Envoy's `Network::Utility::getLocalAddress` finds it (the
/// first non-loopback interface address): the source address of the default route, learnt
/// once by connecting a UDP socket (no packet is sent).
pub(crate) fn machine_address() -> Option<IpAddr> {
    static ADDRESS: std::sync::OnceLock<Option<IpAddr>> = std::sync::OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect("198.51.100.1:9").ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    })
}

/// Several `x-forwarded-for` headers become one, joined by ',', as Envoy's header map holds
/// them.
fn join_xff(headers: &mut HeaderMap) {
    if headers.get_all(&X_FORWARDED_FOR).iter().nth(1).is_none() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&xff_joined(headers)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

pub(crate) fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = ip.to_string();
    // Several x-forwarded-for headers are one list, joined by ',' (Envoy's header map).
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .collect();
    let value = if existing.is_empty() {
        ip
    } else {
        format!("{},{ip}", existing.join(","))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// `x-forwarded-client-cert`.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Envoy's `mutateXfccRequestHeader`: the header removed, kept, appended to or replaced by the
/// client certificate of a mutual TLS connection (`tls`: the connection's), as
/// `forward_client_cert_details` says.
pub fn forwarded_client_cert(
    x: &crate::config::model::ForwardClientCert,
    headers: &mut HeaderMap,
    tls: Option<&crate::stream_info::TlsInfo>,
) {
    use crate::config::model::{XfccDetail, XfccMode};
    if x.mode == XfccMode::AlwaysForwardOnly {
        return;
    }
    let peer = tls.and_then(|t| t.peer.as_ref());
    let Some(peer) = peer.filter(|_| x.mode != XfccMode::Sanitize) else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    if x.mode == XfccMode::ForwardOnly {
        return;
    }
    let mut parts: Vec<String> = Vec::new();
    for uri in tls
        .and_then(|t| t.local.as_ref())
        .map_or(&[][..], |l| &l.uri_sans[..])
    {
        parts.push(format!("By={uri}"));
    }
    if let Some(digest) = crate::tls::info::sha256(&peer.der) {
        parts.push(format!("Hash={}", crate::tls::info::hex(&digest)));
    }
    for d in &x.details {
        match d {
            XfccDetail::Cert => {
                parts.push(format!(
                    "Cert=\"{}\"",
                    crate::tls::info::url_encoded_pem(&peer.der)
                ));
            }
            XfccDetail::Chain => {
                let intermediates = tls.map_or(&[][..], |t| &t.peer_intermediates[..]);
                parts.push(format!(
                    "Chain=\"{}\"",
                    crate::tls::info::url_encoded_pems(
                        std::iter::once(&peer.der[..])
                            .chain(intermediates.iter().map(Vec::as_slice))
                    )
                ));
            }
            // The key is there even when the subject is empty, as in Envoy.
            XfccDetail::Subject => parts.push(format!("Subject=\"{}\"", peer.subject)),
            XfccDetail::Uri if peer.uri_sans.is_empty() => parts.push("URI=".into()),
            XfccDetail::Uri => parts.extend(peer.uri_sans.iter().map(|u| format!("URI={u}"))),
            XfccDetail::Dns => parts.extend(peer.dns_sans.iter().map(|d| format!("DNS={d}"))),
        }
    }
    let value = parts.join(";");
    let value = match (x.mode, headers.get(&X_FORWARDED_CLIENT_CERT)) {
        (XfccMode::AppendForward, Some(old)) if !old.is_empty() => {
            format!("{},{value}", String::from_utf8_lossy(old.as_bytes()))
        }
        _ => value,
    };
    headers.remove(&X_FORWARDED_CLIENT_CERT);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
    }
}

/// Envoy's UUID request id as a number (`toInteger`): its first eight hex digits.
pub fn request_id_integer(id: &[u8]) -> Option<u64> {
    id.get(..8)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// The node's cluster and id, for `add_user_agent`.
static LOCAL_NODE: std::sync::OnceLock<(HeaderValue, Option<HeaderValue>)> =
    std::sync::OnceLock::new();

/// Names the node (`node.cluster`, `node.id`, or `--service-cluster` and `--service-node`).
pub fn set_local_node(cluster: &str, id: &str) {
    let cluster = HeaderValue::from_str(cluster).unwrap_or(HeaderValue::from_static(""));
    let id = (!id.is_empty())
        .then(|| HeaderValue::from_str(id).ok())
        .flatten();
    let _ = LOCAL_NODE.set((cluster, id));
}

/// `add_user_agent`, as Envoy's `mutateRequestHeaders`: the node's cluster (empty when none
/// is named, as Envoy sends it) as `x-envoy-downstream-service-cluster` and as `user-agent`
/// when the request has none or an empty one, and the node's id, when named, as
/// `x-envoy-downstream-service-node`.
pub fn add_user_agent(headers: &mut HeaderMap) {
    let (cluster, id) = LOCAL_NODE.get_or_init(|| (HeaderValue::from_static(""), None));
    headers.insert("x-envoy-downstream-service-cluster", cluster.clone());
    if headers
        .get(http::header::USER_AGENT)
        .is_none_or(|v| v.is_empty())
    {
        headers.insert(http::header::USER_AGENT, cluster.clone());
    }
    if let Some(id) = id {
        headers.insert("x-envoy-downstream-service-node", id.clone());
    }
}

/// Envoy's `mutateTracingRequestHeader` without a tracer: the sampling decision, from the
/// request id's first eight hex digits (modulo 10,000) and the request's own marks, packed
/// into the 15th character of a 36-character `x-request-id`. `force` is an internal request's
/// `x-envoy-force-trace`. Why the request is traced, or that it is not.
pub fn trace_reason(
    t: &crate::config::model::TraceSampling,
    route: Option<&crate::config::trace::RouteTracing>,
    headers: &mut HeaderMap,
    force: bool,
) -> TraceReason {
    // The connection manager's shares are out of 10,000; a route's (over them) are fractions
    // Envoy evaluates as `value % denominator < numerator`, the value the request id's or a
    // random one.
    let pass = |hcm: u32, route: Option<(u32, u32)>, value: u64| match route {
        Some((n, d)) => value % u64::from(d.max(1)) < u64::from(n),
        None => value % 10_000 < u64::from(hcm),
    };
    let client = |v| pass(t.client, route.map(|r| r.client), v);
    let random = |v| pass(t.random, route.map(|r| r.random), v);
    let overall = |v| pass(t.overall, route.map(|r| r.overall), v);
    if !t.use_request_id {
        let v = fastrand::u64(..);
        return match random(v) && overall(v) {
            true => TraceReason::Sampled,
            false => TraceReason::NotTraceable,
        };
    }
    let Some(id) = headers.get(&names::X_REQUEST_ID).map(HeaderValue::as_bytes) else {
        return TraceReason::NotTraceable;
    };
    let Some(n) = request_id_integer(id) else {
        return TraceReason::NotTraceable;
    };
    let result = n % 10_000;
    const SAMPLED: u8 = b'9';
    const CLIENT: u8 = b'b';
    const FORCED: u8 = b'a';
    const NONE: u8 = b'4';
    let reason = match (id.len(), id.get(14)) {
        (36, Some(&c)) if c == SAMPLED || c == CLIENT || c == FORCED => c,
        _ => NONE,
    };
    let mut decided = reason;
    if decided == NONE {
        if headers.contains_key("x-client-trace-id") && client(fastrand::u64(..)) {
            decided = CLIENT;
        } else if force {
            decided = FORCED;
        } else if random(result) {
            decided = SAMPLED;
        }
    }
    // Measured: a request id already marked forced is unmarked here too.
    if !overall(result) {
        decided = NONE;
    }
    let why = match decided {
        SAMPLED => TraceReason::Sampled,
        CLIENT => TraceReason::Client,
        FORCED => TraceReason::Forced,
        _ => TraceReason::NotTraceable,
    };
    if decided == reason || !t.pack_trace_reason || id.len() != 36 {
        return why;
    }
    let mut bytes = id.to_vec();
    bytes[14] = decided;
    if let Ok(v) = HeaderValue::from_bytes(&bytes) {
        headers.insert(names::X_REQUEST_ID.clone(), v);
    }
    why
}

/// Why a request is traced (Envoy's trace reasons), or that it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceReason {
    /// `random_sampling`.
    Sampled,
    /// `x-client-trace-id` with `client_sampling`.
    Client,
    /// `x-envoy-force-trace`.
    Forced,
    NotTraceable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        for (input, want) in [
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/%2e%2E/b", "/b"),
            ("/%61%7e", "/a~"),
            ("/a%2fb", "/a%2fb"),
            ("/a b", "/a%20b"),
            ("/a%zz", "/a%zz"),
            ("//a//b", "//a//b"),
            ("/", "/"),
            ("/a\\b", "/a/b"),
        ] {
            assert_eq!(canonical_path(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn slashes() {
        assert_eq!(merge_slashes("//a///b/?x=//"), "/a/b/?x=//");
        assert_eq!(merge_slashes("/a/b"), "/a/b");
        assert_eq!(
            unescape_slashes("/a%2Fb%5cc?q=%2F").as_deref(),
            Some("/a/b\\c?q=%2F")
        );
        assert_eq!(unescape_slashes("/a%20b"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(strip_port(StripPort::Any, "a:80", 1).as_deref(), Some("a"));
        assert_eq!(
            strip_port(StripPort::Matching, "a:80", 80).as_deref(),
            Some("a")
        );
        assert_eq!(strip_port(StripPort::Matching, "a:81", 80), None);
        assert_eq!(
            strip_port(StripPort::Any, "[::1]:80", 1).as_deref(),
            Some("[::1]")
        );
        assert_eq!(strip_port(StripPort::Any, "::1", 1), None);
        assert_eq!(strip_port(StripPort::Any, "a", 1), None);
        assert_eq!(strip_trailing_host_dot("a.b.").as_deref(), Some("a.b"));
        assert_eq!(
            strip_trailing_host_dot("a.b.:80").as_deref(),
            Some("a.b:80")
        );
        assert_eq!(strip_trailing_host_dot("a.b:80"), None);
        assert_eq!(strip_trailing_host_dot("[::1]:80"), None);
        assert_eq!(strip_trailing_host_dot("a"), None);
    }

    #[test]
    fn xff_address_counts_hops_from_the_end_over_every_header() {
        let mut h = HeaderMap::new();
        assert_eq!(xff_address(&h, 0), (None, false));
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        assert_eq!(xff_address(&h, 0), (Some([10, 0, 0, 1].into()), true));
        assert_eq!(xff_address(&h, 1), (None, false));
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1, 10.0.0.2 ,10.0.0.3"),
        );
        assert_eq!(xff_address(&h, 0), (Some([10, 0, 0, 3].into()), false));
        assert_eq!(xff_address(&h, 1), (Some([10, 0, 0, 2].into()), false));
        assert_eq!(xff_address(&h, 2), (Some([10, 0, 0, 1].into()), false));
        assert_eq!(xff_address(&h, 3), (None, false));
        // Several headers are one list.
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.4"),
        );
        assert_eq!(xff_address(&h, 0), (Some([10, 0, 0, 4].into()), false));
        assert_eq!(xff_address(&h, 3), (Some([10, 0, 0, 1].into()), false));
        // An entry that is not an address is none.
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("unknown"));
        assert_eq!(xff_address(&h, 0), (None, true));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static(""));
        assert_eq!(xff_address(&h, 0), (None, false));
    }
}
