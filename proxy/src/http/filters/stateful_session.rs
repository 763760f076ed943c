//! `envoy.filters.http.stateful_session`: a session's upstream host, kept in a cookie or a
//! header, is picked again for its requests ([`OverrideHost`], which the router honours), and
//! a response from another host names that one, as Envoy's cookie and header session states
//! write them: the cookie's value is a base64 `Cookie` message (the host's address, and when
//! it expires if the cookie has a ttl), the header's the base64 address.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use prost::Message;

use crate::http::filter::{HeadersStatus, HttpFilter};
use skiff_config::model::{SessionState, StatefulSession};

/// A request's session, for the router (a request extension): the host it names, if any.
/// The router tells the filter which host answered ([`UpstreamAddress`]) only when a request
/// has one.
#[derive(Debug, Clone, Copy)]
pub struct OverrideHost {
    /// The host's address.
    pub address: Option<SocketAddr>,
    /// `strict`: the request fails rather than go to another host.
    pub strict: bool,
}

/// The upstream host a response came from (a response extension the router sets).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAddress(pub SocketAddr);

/// Envoy's session cookie.
#[derive(Clone, PartialEq, Message)]
struct SessionCookie {
    #[prost(string, tag = "1")]
    address: String,
    #[prost(uint64, tag = "2")]
    expires: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a request to `path` (query excluded) is within the cookie's `cookie_path`.
fn path_matches(cookie_path: &str, path: &str) -> bool {
    if cookie_path.is_empty() || cookie_path == "/" {
        return true;
    }
    match path.strip_prefix(cookie_path) {
        Some(rest) => rest.is_empty() || cookie_path.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The address a session cookie's value names, if it is one and has not expired.
pub fn cookie_address(value: &str) -> Option<SocketAddr> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    let address = match SessionCookie::decode(bytes.as_slice()) {
        Ok(c) if !c.address.is_empty() => {
            if c.expires != 0 && c.expires < now_secs() {
                return None;
            }
            c.address
        }
        // An older cookie: the address alone.
        _ => String::from_utf8(bytes).ok()?,
    };
    address.parse().ok()
}

/// The filter on one stream.
pub struct StatefulSessionFilter {
    config: Arc<StatefulSession>,
    /// The request is within the session's reach (a cookie's path).
    active: bool,
    /// The host the request's session named.
    requested: Option<SocketAddr>,
}

impl StatefulSessionFilter {
    pub fn new(config: Arc<StatefulSession>) -> Self {
        StatefulSessionFilter {
            config,
            active: false,
            requested: None,
        }
    }
}

impl HttpFilter for StatefulSessionFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _: bool) -> HeadersStatus {
        let requested = match &self.config.state {
            SessionState::Cookie { name, path, .. } => {
                if !path_matches(path, head.uri.path()) {
                    return HeadersStatus::Continue;
                }
                skiff_config::router::cookie_value(&head.headers, name)
                    .and_then(|v| cookie_address(&v))
            }
            SessionState::Header { name } => head
                .headers
                .get(name)
                .and_then(|v| {
                    base64::engine::general_purpose::STANDARD
                        .decode(v.as_bytes())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|a| a.parse().ok()),
        };
        self.active = true;
        self.requested = requested;
        head.extensions.insert(OverrideHost {
            address: requested,
            strict: self.config.strict,
        });
        HeadersStatus::Continue
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _: bool) -> HeadersStatus {
        let Some(UpstreamAddress(host)) = head.extensions.get::<UpstreamAddress>().copied() else {
            return HeadersStatus::Continue;
        };
        if !self.active || self.requested == Some(host) {
            return HeadersStatus::Continue;
        }
        let address = skiff_config::model::address_text(&host);
        let b64 = base64::engine::general_purpose::STANDARD;
        match &self.config.state {
            SessionState::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => {
                let expires = if ttl.is_zero() {
                    0
                } else {
                    now_secs() + ttl.as_secs()
                };
                let value = b64.encode(SessionCookie { address, expires }.encode_to_vec());
                let cookie = crate::http::headers::set_cookie(
                    name,
                    &value,
                    Some(*ttl).filter(|t| !t.is_zero()),
                    path,
                    attributes,
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    head.headers.append(http::header::SET_COOKIE, v);
                }
            }
            SessionState::Header { name } => {
                if let Ok(v) = HeaderValue::from_str(&b64.encode(address.as_bytes())) {
                    head.headers.insert(name.clone(), v);
                }
            }
        }
        HeadersStatus::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::{cookie_address, path_matches};

    #[test]
    fn a_cookie_path_covers_its_own_path_and_what_is_below_it() {
        assert!(path_matches("", "/x"));
        assert!(path_matches("/", "/x"));
        assert!(path_matches("/path", "/path"));
        assert!(path_matches("/path", "/path/x"));
        assert!(!path_matches("/path", "/pathx"));
        assert!(path_matches("/path/", "/path/x"));
        assert!(!path_matches("/path", "/other"));
    }

    #[test]
    fn a_cookie_names_its_host_until_it_expires() {
        // Envoy's message with an expiry in 2026 (past, as these tests run later).
        assert_eq!(cookie_address("Cg8xMjcuMC4wLjE6MTk5NzMQ5N/R2AY="), None);
        // Without an expiry, and an older cookie of the bare address.
        assert_eq!(
            cookie_address("Cg8xMjcuMC4wLjE6MTk5NzM="),
            Some("127.0.0.1:19973".parse().expect("address"))
        );
        assert_eq!(
            cookie_address("MTI3LjAuMC4xOjE="),
            Some("127.0.0.1:1".parse().expect("address"))
        );
        assert_eq!(cookie_address("not base64"), None);
    }
}
