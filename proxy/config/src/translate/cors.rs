//! `envoy.extensions.filters.http.cors.v3.CorsPolicy`: a route's, a virtual host's or a route
//! table's CORS policy, which the CORS filter reads.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;

use super::super::model::CorsPolicy;
use super::super::ConfigError;

/// Translates a per-route CORS policy.
pub(super) fn policy(p: &cors::CorsPolicy, path: &str) -> Result<CorsPolicy, ConfigError> {
    let cors::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    } = p;
    let allow_origins = allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            super::http_manager::string_match(m, &format!("{path}.allow_origin_string_match[{i}]"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fraction =
        |f: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
         field: &str| {
            f.as_ref()
                .map(|f| super::http_manager::runtime_fraction(f, &format!("{path}.{field}")))
                .transpose()
        };
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: allow_methods.clone(),
        allow_headers: allow_headers.clone(),
        expose_headers: expose_headers.clone(),
        max_age: max_age.clone(),
        allow_credentials: allow_credentials.as_ref().map(|v| v.value),
        allow_private_network_access: allow_private_network_access.as_ref().map(|v| v.value),
        forward_not_matching_preflights: forward_not_matching_preflights.as_ref().map(|v| v.value),
        filter_enabled: fraction(filter_enabled, "filter_enabled")?,
        shadow_enabled: fraction(shadow_enabled, "shadow_enabled")?,
    })
}

/// The deprecated `cors` of a route or a virtual host (`envoy.config.route.v3.CorsPolicy`),
/// which the filter reads when no level has a policy in `typed_per_filter_config`.
pub(super) fn legacy(
    p: &envoy_types::pb::envoy::config::route::v3::CorsPolicy,
    path: &str,
) -> Result<CorsPolicy, ConfigError> {
    use envoy_types::pb::envoy::config::route::v3::cors_policy::EnabledSpecifier;
    policy(
        &cors::CorsPolicy {
            allow_origin_string_match: p.allow_origin_string_match.clone(),
            allow_methods: p.allow_methods.clone(),
            allow_headers: p.allow_headers.clone(),
            expose_headers: p.expose_headers.clone(),
            max_age: p.max_age.clone(),
            allow_credentials: p.allow_credentials,
            filter_enabled: p
                .enabled_specifier
                .as_ref()
                .map(|EnabledSpecifier::FilterEnabled(f)| f.clone()),
            shadow_enabled: p.shadow_enabled.clone(),
            allow_private_network_access: p.allow_private_network_access,
            forward_not_matching_preflights: p.forward_not_matching_preflights,
        },
        path,
    )
}
