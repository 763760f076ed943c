//! `envoy.filters.http.stateful_session` and its `StatefulSessionPerRoute`: the upstream host
//! of a session kept in a cookie (`envoy.http.stateful_session.cookie`) or a header
//! (`envoy.http.stateful_session.header`).

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3 as pb;
use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
use envoy_types::pb::envoy::extensions::http::stateful_session::header::v3::HeaderBasedSessionState;

use super::super::model::{SessionState, StatefulSession};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::{duration, required};

/// The filter's configuration.
pub(super) fn translate(
    c: &pb::StatefulSession,
    path: &str,
) -> Result<StatefulSession, ConfigError> {
    let pb::StatefulSession {
        session_state,
        strict,
        stat_prefix,
        status_on_strict_destination_not_found,
    } = c;
    if !stat_prefix.is_empty() {
        return Err(ConfigError::unsupported(format!("{path}.stat_prefix")));
    }
    let spath = format!("{path}.session_state");
    let ext = required(session_state, &spath)?;
    let tpath = format!("{spath}.typed_config");
    let any = required(&ext.typed_config, &tpath)?;
    let state = match type_name(&any.type_url) {
        "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState" => {
            let s: CookieBasedSessionState = unpack(any, &tpath)?;
            let cpath = format!("{tpath}.cookie");
            let cookie = required(&s.cookie, &cpath)?;
            if cookie.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{cpath}.name"),
                    "value length must be at least 1 characters",
                ));
            }
            let ttl = match &cookie.ttl {
                Some(d) => duration(d, &format!("{cpath}.ttl"))?,
                None => Duration::ZERO,
            };
            SessionState::Cookie {
                name: cookie.name.clone(),
                ttl,
                path: cookie.path.clone(),
                attributes: cookie
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
            }
        }
        "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState" => {
            let s: HeaderBasedSessionState = unpack(any, &tpath)?;
            let name = http::HeaderName::from_bytes(s.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new(format!("{tpath}.name"), "not a header name"))?;
            SessionState::Header { name }
        }
        other => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported session state '{}' ({other})", ext.name),
            ))
        }
    };
    // A strict session's missing host is answered as one without a healthy host: 503.
    if !matches!(*status_on_strict_destination_not_found, 0 | 503) {
        return Err(ConfigError::unsupported(format!(
            "{path}.status_on_strict_destination_not_found"
        )));
    }
    Ok(StatefulSession {
        state,
        strict: *strict,
    })
}

/// A route's `StatefulSessionPerRoute`: its own configuration, or none (`disabled`).
pub(super) fn per_route(
    c: &pb::StatefulSessionPerRoute,
    path: &str,
) -> Result<Option<StatefulSession>, ConfigError> {
    use pb::stateful_session_per_route::Override;
    match &c.r#override {
        Some(Override::Disabled(true)) => Ok(None),
        Some(Override::StatefulSession(s)) => {
            translate(s, &format!("{path}.stateful_session")).map(Some)
        }
        Some(Override::Disabled(false)) | None => Err(ConfigError::new(
            path,
            "either disabled: true or stateful_session is required",
        )),
    }
}
