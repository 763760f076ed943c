//! `envoy.filters.http.jwt_authn` and its `PerRouteConfig`, checked as Envoy checks them.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;

use super::super::ConfigError;
use crate::jwt::{JwtAuthn, Provider, Requirement};

/// The filter's configuration at `path`.
pub(super) fn filter(c: &pb::JwtAuthentication, path: &str) -> Result<JwtAuthn, ConfigError> {
    let pb::JwtAuthentication {
        providers,
        rules,
        filter_state_rules,
        bypass_cors_preflight,
        requirement_map,
        strip_failure_response,
        stat_prefix,
    } = c;
    if filter_state_rules.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.filter_state_rules"
        )));
    }
    let mut names: Vec<&String> = providers.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for name in names {
        let p = provider(
            name,
            &providers[name],
            &format!("{path}.providers[\"{name}\"]"),
        )?;
        out.insert(name.clone(), Arc::new(p));
    }
    let mut map = HashMap::new();
    let mut names: Vec<&String> = requirement_map.keys().collect();
    names.sort();
    for name in names {
        let r = requirement(
            &requirement_map[name],
            &out,
            &format!("{path}.requirement_map[\"{name}\"]"),
        )?;
        map.insert(name.clone(), Arc::new(r));
    }
    let mut translated = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{i}]");
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{rpath}.match"), "required"))?;
        // A rule's match is judged without the stream's dynamic metadata (nothing has written
        // any yet when the filter starts): a matcher on it is refused.
        if !m.dynamic_metadata.is_empty() {
            return Err(ConfigError::unsupported(format!(
                "{rpath}.match.dynamic_metadata"
            )));
        }
        let (matcher, _) = super::http_manager::route_match(m, &format!("{rpath}.match"))?;
        use pb::requirement_rule::RequirementType as T;
        let req = match &r.requirement_type {
            None => None,
            Some(T::Requires(q)) => Some(Arc::new(requirement(
                q,
                &out,
                &format!("{rpath}.requires"),
            )?)),
            Some(T::RequirementName(n)) => Some(map.get(n).cloned().ok_or_else(|| {
                ConfigError::new(
                    format!("{rpath}.requirement_name"),
                    format!(
                        "Wrong requirement_name: {n}. It should be one of [{}]",
                        known(&map)
                    ),
                )
            })?),
        };
        translated.push((matcher, req));
    }
    Ok(JwtAuthn {
        providers: out,
        rules: translated,
        requirement_map: map,
        bypass_cors_preflight: *bypass_cors_preflight,
        strip_failure_response: *strip_failure_response,
        stat_prefix: stat_prefix.clone(),
    })
}

fn known(map: &HashMap<String, Arc<Requirement>>) -> String {
    let mut n: Vec<&str> = map.keys().map(String::as_str).collect();
    n.sort();
    n.join(", ")
}

/// `PerRouteConfig`.
pub(super) fn per_route(
    c: &pb::PerRouteConfig,
    path: &str,
) -> Result<crate::jwt::PerRoute, ConfigError> {
    use pb::per_route_config::RequirementSpecifier as S;
    match &c.requirement_specifier {
        Some(S::Disabled(true)) => Ok(crate::jwt::PerRoute::Disabled),
        Some(S::RequirementName(n)) if !n.is_empty() => {
            Ok(crate::jwt::PerRoute::Requirement(n.clone()))
        }
        _ => Err(ConfigError::new(
            path,
            "a requirement_name or disabled: true is required",
        )),
    }
}

/// `remote_jwks`: where the keys are fetched, and for how long they are kept.
fn remote_jwks(r: &pb::RemoteJwks, path: &str) -> Result<crate::jwt::RemoteJwks, ConfigError> {
    let pb::RemoteJwks {
        http_uri,
        cache_duration,
        async_fetch,
        retry_policy,
    } = r;
    let retry = super::retry::own_calls(retry_policy.as_ref(), path)?;
    // async_fetch.fast_listener: the listener does not wait for the keys in skiff
    // (docs/compatibility.md).
    let async_fetch = async_fetch
        .as_ref()
        .map(|a| match &a.failed_refetch_duration {
            Some(d) => super::duration(d, &format!("{path}.async_fetch.failed_refetch_duration")),
            None => Ok(std::time::Duration::from_secs(1)),
        })
        .transpose()?;
    let upath = format!("{path}.http_uri");
    let uri = super::required(http_uri, &upath)?;
    let cluster =
        match &uri.http_upstream_type {
            Some(
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(c),
            ) if !c.is_empty() => c.clone(),
            _ => return Err(ConfigError::new(format!("{upath}.cluster"), "required")),
        };
    let parsed = http::Uri::try_from(uri.uri.as_str())
        .ok()
        .filter(|u| u.authority().is_some())
        .ok_or_else(|| ConfigError::new(format!("{upath}.uri"), "not an absolute URL"))?;
    let timeout = super::duration(
        super::required(&uri.timeout, &format!("{upath}.timeout"))?,
        &format!("{upath}.timeout"),
    )?;
    let cache_duration = match cache_duration {
        Some(d) => super::duration(d, &format!("{path}.cache_duration"))?,
        None => std::time::Duration::from_secs(600),
    };
    Ok(crate::jwt::RemoteJwks::new(
        cluster,
        parsed
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        parsed
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        timeout,
        cache_duration,
        async_fetch,
        retry,
    ))
}

fn provider(name: &str, p: &pb::JwtProvider, path: &str) -> Result<Provider, ConfigError> {
    let pb::JwtProvider {
        issuer,
        audiences,
        subjects,
        require_expiration,
        max_lifetime,
        forward,
        from_headers,
        from_params,
        from_cookies,
        forward_payload_header,
        pad_forward_payload_header,
        payload_in_metadata,
        normalize_payload_in_metadata,
        header_in_metadata,
        failed_status_in_metadata,
        clock_skew_seconds,
        jwt_cache_config,
        claim_to_headers,
        clear_route_cache,
        jwks_source_specifier,
    } = p;
    // payload_in_metadata, normalize_payload_in_metadata, header_in_metadata,
    // failed_status_in_metadata and clear_route_cache: below.
    // The cache of verified tokens changes how often a signature is checked, not the verdict.
    let _ = jwt_cache_config;
    use pb::jwt_provider::JwksSourceSpecifier as J;
    let mut remote = None;
    let jwks = match jwks_source_specifier {
        Some(J::LocalJwks(ds)) => {
            let dpath = format!("{path}.local_jwks");
            let bytes = super::route_action::data_source(ds, &dpath)?;
            crate::jwt::parse_jwks(&String::from_utf8_lossy(&bytes))
        }
        Some(J::RemoteJwks(r)) => {
            remote = Some(std::sync::Arc::new(remote_jwks(
                r,
                &format!("{path}.remote_jwks"),
            )?));
            Ok(Vec::new())
        }
        None => {
            return Err(ConfigError::new(
                path,
                "jwks_source_specifier: one of remote_jwks or local_jwks is required",
            ))
        }
    };
    let header = |n: &str, at: String| {
        http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| ConfigError::new(at, format!("invalid header name '{n}'")))
    };
    let mut headers = Vec::new();
    for (i, h) in from_headers.iter().enumerate() {
        headers.push((
            header(&h.name, format!("{path}.from_headers[{i}].name"))?,
            h.value_prefix.clone(),
        ));
    }
    let mut claims = Vec::new();
    for (i, c) in claim_to_headers.iter().enumerate() {
        let cpath = format!("{path}.claim_to_headers[{i}]");
        if !c.claim_path.is_empty() {
            return Err(ConfigError::unsupported(format!("{cpath}.claim_path")));
        }
        if c.claim_name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.claim_name"),
                "value length must be at least 1 characters",
            ));
        }
        claims.push((
            header(&c.header_name, format!("{cpath}.header_name"))?,
            c.claim_name.split('.').map(str::to_string).collect(),
        ));
    }
    Ok(Provider {
        name: name.to_string(),
        issuer: issuer.clone(),
        audiences: audiences.clone(),
        subjects: subjects
            .as_ref()
            .map(|m| super::http_manager::string_match(m, &format!("{path}.subjects")))
            .transpose()?,
        require_expiration: *require_expiration,
        max_lifetime: max_lifetime
            .as_ref()
            .map(|d| super::duration(d, &format!("{path}.max_lifetime")))
            .transpose()?,
        forward: *forward,
        from_headers: headers,
        from_params: from_params.clone(),
        from_cookies: from_cookies.clone(),
        forward_payload_header: (!forward_payload_header.is_empty())
            .then(|| {
                header(
                    forward_payload_header,
                    format!("{path}.forward_payload_header"),
                )
            })
            .transpose()?,
        pad_forward_payload_header: *pad_forward_payload_header,
        clock_skew: if *clock_skew_seconds == 0 {
            60
        } else {
            u64::from(*clock_skew_seconds)
        },
        claim_to_headers: claims,
        jwks,
        payload_in_metadata: (!payload_in_metadata.is_empty()).then(|| payload_in_metadata.clone()),
        space_delimited_claims: normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        header_in_metadata: (!header_in_metadata.is_empty()).then(|| header_in_metadata.clone()),
        failed_status_in_metadata: (!failed_status_in_metadata.is_empty())
            .then(|| failed_status_in_metadata.clone()),
        clear_route_cache: *clear_route_cache,
        remote,
    })
}

fn requirement(
    r: &pb::JwtRequirement,
    providers: &HashMap<String, Arc<Provider>>,
    path: &str,
) -> Result<Requirement, ConfigError> {
    use pb::jwt_requirement::RequiresType as T;
    let named = |n: &str, at: String| {
        providers.get(n).cloned().ok_or_else(|| {
            ConfigError::new(at, format!("Required provider ['{n}'] is not configured."))
        })
    };
    Ok(match &r.requires_type {
        None => {
            return Err(ConfigError::new(path, "a requirement type is required"));
        }
        Some(T::ProviderName(n)) => {
            Requirement::Provider(named(n, format!("{path}.provider_name"))?, None)
        }
        Some(T::ProviderAndAudiences(pa)) => Requirement::Provider(
            named(
                &pa.provider_name,
                format!("{path}.provider_and_audiences.provider_name"),
            )?,
            Some(pa.audiences.clone()),
        ),
        Some(T::RequiresAny(l)) => Requirement::Any(list(
            &l.requirements,
            providers,
            &format!("{path}.requires_any"),
        )?),
        Some(T::RequiresAll(l)) => Requirement::All(list(
            &l.requirements,
            providers,
            &format!("{path}.requires_all"),
        )?),
        Some(T::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(T::AllowMissing(_)) => Requirement::AllowMissing,
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.extract_only_without_validation"
            )))
        }
    })
}

fn list(
    l: &[pb::JwtRequirement],
    providers: &HashMap<String, Arc<Provider>>,
    path: &str,
) -> Result<Vec<Requirement>, ConfigError> {
    if l.len() < 2 {
        return Err(ConfigError::new(
            format!("{path}.requirements"),
            "value must contain at least 2 item(s)",
        ));
    }
    l.iter()
        .enumerate()
        .map(|(i, r)| requirement(r, providers, &format!("{path}.requirements[{i}]")))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rule_matching_dynamic_metadata_is_refused() {
        let config = r#"static_resources: { listeners: [{ name: l, address: {socket_address: {address: 127.0.0.1, port_value: 1}}, filter_chains: [{ filters: [{ name: h, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, route_config: { virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: {prefix: /}, route: {cluster: c} }] }] }, http_filters: [{ name: envoy.filters.http.jwt_authn, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication, providers: { p: { local_jwks: { inline_string: '{"keys":[]}' } } }, rules: [{ match: { prefix: /, dynamic_metadata: [{ filter: f, path: [{key: k}], value: {present_match: true} }] }, requires: { provider_name: p } }] } }, { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }] } }] }] }], clusters: [{ name: c, connect_timeout: 1s }] }"#;
        let e = crate::load_text(config).expect_err("refused");
        assert!(
            e.to_string()
                .ends_with("rules[0].match.dynamic_metadata: unsupported"),
            "{e}"
        );
    }
}
