//! `envoy.filters.http.basic_auth` and its `BasicAuthPerRoute`.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::basic_auth::v3 as pb;

use super::ConfigError;
use crate::model::{BasicAuth, BasicAuthUsers};

/// The filter's configuration at `path`.
pub(super) fn translate(c: &pb::BasicAuth, path: &str) -> Result<BasicAuth, ConfigError> {
    for (set, field) in [
        (c.allow_missing, "allow_missing"),
        (c.emit_dynamic_metadata, "emit_dynamic_metadata"),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let header = |name: &str, field: &str| {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::new(format!("{path}.{field}"), "not a valid header name"))
    };
    Ok(BasicAuth {
        users: Arc::new(users(c.users.as_ref(), &format!("{path}.users"))?),
        forward_username_header: match c.forward_username_header.as_str() {
            "" => None,
            h => Some(header(h, "forward_username_header")?),
        },
        authentication_header: match c.authentication_header.as_str() {
            "" => http::header::AUTHORIZATION,
            h => header(h, "authentication_header")?,
        },
    })
}

/// A route's `BasicAuthPerRoute`: its users replace the filter's.
pub(super) fn per_route(
    c: &pb::BasicAuthPerRoute,
    path: &str,
) -> Result<BasicAuthUsers, ConfigError> {
    let upath = format!("{path}.users");
    if c.users.is_none() {
        return Err(ConfigError::new(upath, "required"));
    }
    users(c.users.as_ref(), &upath)
}

/// htpasswd lines `name:{SHA}<base64 SHA-1>`, read as Envoy reads them (empty lines and
/// `#` comments skipped; anything else but `{SHA}` refused).
fn users(
    ds: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
    path: &str,
) -> Result<BasicAuthUsers, ConfigError> {
    let text = match ds {
        Some(ds) => super::route_action::data_source(ds, path)?,
        None => bytes::Bytes::new(),
    };
    let text = String::from_utf8_lossy(&text);
    let mut out = HashMap::new();
    for line in text.split('\n') {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(ConfigError::new(
                path,
                "basic auth: invalid htpasswd format, username:password is expected",
            ));
        };
        if name.is_empty() || hash.is_empty() {
            return Err(ConfigError::new(
                path,
                "basic auth: empty user name or password",
            ));
        }
        if out.contains_key(name) {
            return Err(ConfigError::new(path, "basic auth: duplicate users"));
        }
        let Some(sha) = hash.strip_prefix("{SHA}") else {
            return Err(ConfigError::new(
                path,
                "basic auth: unsupported htpasswd format: please use {SHA}",
            ));
        };
        if sha.len() != 28 {
            return Err(ConfigError::new(
                path,
                "basic auth: invalid htpasswd format, invalid SHA hash length",
            ));
        }
        out.insert(name.to_string(), sha.to_string());
    }
    Ok(BasicAuthUsers(out))
}

#[cfg(test)]
mod tests {
    #[test]
    fn htpasswd_as_envoy_reads_it() {
        let ds = |s: &str| envoy_types::pb::envoy::config::core::v3::DataSource {
            specifier: Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                    s.to_string(),
                ),
            ),
            ..Default::default()
        };
        let ok = super::users(
            Some(&ds("# users\nuser1:{SHA}tESsBmE/yNY3lb6a0L6vVQEZNqw=\n\n")),
            "u",
        )
        .expect("one user");
        assert_eq!(ok.0.len(), 1);
        for (text, want) in [
            ("user1", "username:password is expected"),
            (":{SHA}x", "empty user name"),
            (
                "a:{SHA}tESsBmE/yNY3lb6a0L6vVQEZNqw=\na:{SHA}tESsBmE/yNY3lb6a0L6vVQEZNqw=",
                "duplicate",
            ),
            ("a:$apr1$x", "please use {SHA}"),
            ("a:{SHA}short", "invalid SHA hash length"),
        ] {
            let e = super::users(Some(&ds(text)), "u").expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }
}
