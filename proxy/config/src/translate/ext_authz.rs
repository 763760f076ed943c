//! `envoy.filters.http.ext_authz` and its `ExtAuthzPerRoute`, checked as Envoy checks them;
//! what skiff does not run is refused by path.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as pb;
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;

use super::super::model::{
    AuthzBody, AuthzService, ExtAuthz, ExtAuthzPerRoute, HttpAuthz, StringMatch,
};
use super::super::ConfigError;

/// Envoy's timeout for a gRPC check whose service names none.
const GRPC_TIMEOUT: Duration = Duration::from_millis(200);

fn matchers(list: &ListStringMatcher, path: &str) -> Result<Vec<StringMatch>, ConfigError> {
    list.patterns
        .iter()
        .enumerate()
        .map(|(i, m)| super::http_manager::string_match(m, &format!("{path}.patterns[{i}]")))
        .collect()
}

fn refuse_set(set: bool, path: String) -> Result<(), ConfigError> {
    if set {
        Err(ConfigError::unsupported(path))
    } else {
        Ok(())
    }
}

/// The filter's configuration.
pub(super) fn filter(c: &pb::ExtAuthz, path: &str) -> Result<ExtAuthz, ConfigError> {
    let pb::ExtAuthz {
        transport_api_version,
        failure_mode_allow,
        failure_mode_allow_header_add,
        with_request_body,
        clear_route_cache,
        status_on_error,
        validate_mutations,
        metadata_context_namespaces,
        typed_metadata_context_namespaces,
        route_metadata_context_namespaces,
        route_typed_metadata_context_namespaces,
        filter_enabled,
        filter_enabled_metadata,
        deny_at_disable,
        include_peer_certificate,
        stat_prefix,
        bootstrap_metadata_labels_key,
        allowed_headers,
        disallowed_headers,
        include_tls_session,
        charge_cluster_response_stats,
        encode_raw_headers,
        decoder_header_mutation_rules,
        enable_dynamic_metadata_ingestion,
        filter_metadata,
        emit_filter_state_stats,
        max_denied_response_body_bytes,
        enforce_response_header_limits,
        shadow_mode,
        emit_client_span,
        services,
    } = c;
    // AUTO is V3 in Envoy 1.40.
    if *transport_api_version != core::ApiVersion::V3 as i32
        && *transport_api_version != core::ApiVersion::Auto as i32
    {
        return Err(ConfigError::new(
            format!("{path}.transport_api_version"),
            "only V3 is supported",
        ));
    }
    refuse_set(*validate_mutations, format!("{path}.validate_mutations"))?;
    refuse_set(
        !metadata_context_namespaces.is_empty(),
        format!("{path}.metadata_context_namespaces"),
    )?;
    refuse_set(
        !typed_metadata_context_namespaces.is_empty(),
        format!("{path}.typed_metadata_context_namespaces"),
    )?;
    refuse_set(
        !route_typed_metadata_context_namespaces.is_empty(),
        format!("{path}.route_typed_metadata_context_namespaces"),
    )?;
    refuse_set(
        *include_peer_certificate,
        format!("{path}.include_peer_certificate"),
    )?;
    refuse_set(
        !bootstrap_metadata_labels_key.is_empty(),
        format!("{path}.bootstrap_metadata_labels_key"),
    )?;
    refuse_set(*include_tls_session, format!("{path}.include_tls_session"))?;
    refuse_set(*encode_raw_headers, format!("{path}.encode_raw_headers"))?;
    refuse_set(
        decoder_header_mutation_rules.is_some(),
        format!("{path}.decoder_header_mutation_rules"),
    )?;
    refuse_set(
        enable_dynamic_metadata_ingestion.is_some(),
        format!("{path}.enable_dynamic_metadata_ingestion"),
    )?;
    refuse_set(filter_metadata.is_some(), format!("{path}.filter_metadata"))?;
    refuse_set(
        *emit_filter_state_stats,
        format!("{path}.emit_filter_state_stats"),
    )?;
    refuse_set(
        *max_denied_response_body_bytes != 0,
        format!("{path}.max_denied_response_body_bytes"),
    )?;
    refuse_set(
        *enforce_response_header_limits,
        format!("{path}.enforce_response_header_limits"),
    )?;
    refuse_set(*shadow_mode, format!("{path}.shadow_mode"))?;
    // A tracing span of the check's own; skiff's tracers make none (traffic is the same).
    let _ = emit_client_span;
    let allowed = allowed_headers
        .as_ref()
        .map(|l| matchers(l, &format!("{path}.allowed_headers")))
        .transpose()?;
    let (service, timeout, allowed) = match services {
        Some(pb::ext_authz::Services::GrpcService(g)) => {
            let ((cluster, authority, metadata), timeout) =
                grpc(g, &format!("{path}.grpc_service"))?;
            (
                AuthzService::Grpc {
                    cluster,
                    authority,
                    metadata,
                },
                timeout,
                allowed,
            )
        }
        Some(pb::ext_authz::Services::HttpService(h)) => {
            let (h, timeout, request_allowed) = http(h, &format!("{path}.http_service"))?;
            // The filter's allowed_headers replace the request's (deprecated) list.
            (
                AuthzService::Http(Box::new(h)),
                timeout,
                allowed.or(request_allowed),
            )
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.grpc_service"),
                "one of grpc_service and http_service is required",
            ))
        }
    };
    let status_on_error = status_on_error
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (100..600).contains(c))
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .unwrap_or(http::StatusCode::FORBIDDEN);
    Ok(ExtAuthz {
        service,
        timeout,
        failure_mode_allow: *failure_mode_allow,
        failure_mode_allow_header_add: *failure_mode_allow_header_add,
        status_on_error,
        stat_prefix: stat_prefix.clone(),
        allowed_headers: allowed,
        disallowed_headers: disallowed_headers
            .as_ref()
            .map(|l| matchers(l, &format!("{path}.disallowed_headers")))
            .transpose()?
            .unwrap_or_default(),
        enabled: filter_enabled
            .as_ref()
            .map(|f| super::http_manager::runtime_fraction(f, &format!("{path}.filter_enabled")))
            .transpose()?,
        clear_route_cache: *clear_route_cache,
        charge_cluster_response_stats: charge_cluster_response_stats
            .as_ref()
            .is_none_or(|v| v.value),
        route_metadata_namespaces: route_metadata_context_namespaces.clone(),
        enabled_metadata: filter_enabled_metadata
            .as_ref()
            .map(|m| {
                super::metadata::metadata_matcher(m, &format!("{path}.filter_enabled_metadata"))
            })
            .transpose()?,
        deny_at_disable: deny_at_disable
            .as_ref()
            .map(|f| {
                let fpath = format!("{path}.deny_at_disable");
                let default = super::required(&f.default_value, &format!("{fpath}.default_value"))?;
                Ok::<_, ConfigError>(crate::runtime::RuntimeFlag {
                    key: f.runtime_key.clone(),
                    default: default.value,
                })
            })
            .transpose()?,
        with_request_body: with_request_body
            .as_ref()
            .map(|b| {
                if b.max_request_bytes == 0 {
                    return Err(ConfigError::new(
                        format!("{path}.with_request_body.max_request_bytes"),
                        "value must be greater than 0",
                    ));
                }
                Ok(AuthzBody {
                    max_request_bytes: b.max_request_bytes,
                    allow_partial_message: b.allow_partial_message,
                    pack_as_bytes: b.pack_as_bytes,
                })
            })
            .transpose()?,
    })
}

/// A `grpc_service`: its cluster, authority and metadata, and its timeout.
fn grpc(
    g: &core::GrpcService,
    path: &str,
) -> Result<((String, String, crate::model::GrpcMetadata), Duration), ConfigError> {
    let target = super::envoy_grpc(g, path)?;
    let timeout = match &g.timeout {
        Some(d) => super::duration(d, &format!("{path}.timeout"))?,
        None => GRPC_TIMEOUT,
    };
    Ok((target, timeout))
}

/// An `http_service`, its timeout and its (deprecated) request `allowed_headers`.
#[allow(deprecated)]
fn http(
    h: &pb::HttpService,
    path: &str,
) -> Result<(HttpAuthz, Duration, Option<Vec<StringMatch>>), ConfigError> {
    let pb::HttpService {
        server_uri,
        path_prefix,
        path_override,
        authorization_request,
        authorization_response,
        retry_policy,
    } = h;
    let retry = super::retry::own_calls(retry_policy.as_ref(), path)?;
    let upath = format!("{path}.server_uri");
    let uri = super::required(server_uri, &upath)?;
    let cluster = match &uri.http_upstream_type {
        Some(core::http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(ConfigError::new(format!("{upath}.cluster"), "required")),
    };
    let timeout = super::duration(
        super::required(&uri.timeout, &format!("{upath}.timeout"))?,
        &format!("{upath}.timeout"),
    )?;
    let mut headers_to_add = Vec::new();
    let mut request_allowed = None;
    if let Some(r) = authorization_request {
        let rpath = format!("{path}.authorization_request");
        request_allowed = r
            .allowed_headers
            .as_ref()
            .map(|l| matchers(l, &format!("{rpath}.allowed_headers")))
            .transpose()?;
        for (i, h) in r.headers_to_add.iter().enumerate() {
            let hpath = format!("{rpath}.headers_to_add[{i}]");
            if h.value.replace("%%", "").contains('%') {
                return Err(ConfigError::new(
                    format!("{hpath}.value"),
                    "unsupported: substitution operators (%...%)",
                ));
            }
            let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new(format!("{hpath}.key"), "not a valid header name"))?;
            let value = http::HeaderValue::from_str(&h.value.replace("%%", "%")).map_err(|_| {
                ConfigError::new(format!("{hpath}.value"), "not a valid header value")
            })?;
            headers_to_add.push((name, value));
        }
    }
    let mut out = HttpAuthz {
        cluster,
        path_prefix: path_prefix.clone(),
        path_override: Some(path_override.clone()).filter(|p| !p.is_empty()),
        headers_to_add,
        upstream_headers: Vec::new(),
        upstream_headers_to_append: Vec::new(),
        client_headers: None,
        client_headers_on_success: Vec::new(),
        retry,
    };
    if let Some(r) = authorization_response {
        let rpath = format!("{path}.authorization_response");
        refuse_set(
            r.dynamic_metadata_from_headers.is_some(),
            format!("{rpath}.dynamic_metadata_from_headers"),
        )?;
        let list = |l: &Option<ListStringMatcher>, name: &str| {
            l.as_ref()
                .map(|l| matchers(l, &format!("{rpath}.{name}")))
                .transpose()
        };
        out.upstream_headers =
            list(&r.allowed_upstream_headers, "allowed_upstream_headers")?.unwrap_or_default();
        out.upstream_headers_to_append = list(
            &r.allowed_upstream_headers_to_append,
            "allowed_upstream_headers_to_append",
        )?
        .unwrap_or_default();
        out.client_headers = list(&r.allowed_client_headers, "allowed_client_headers")?;
        out.client_headers_on_success = list(
            &r.allowed_client_headers_on_success,
            "allowed_client_headers_on_success",
        )?
        .unwrap_or_default();
    }
    Ok((out, timeout, request_allowed))
}

/// `ExtAuthzPerRoute`.
pub(super) fn per_route(
    c: &pb::ExtAuthzPerRoute,
    path: &str,
) -> Result<ExtAuthzPerRoute, ConfigError> {
    match &c.r#override {
        Some(pb::ext_authz_per_route::Override::Disabled(true)) => Ok(ExtAuthzPerRoute::Disabled),
        Some(pb::ext_authz_per_route::Override::Disabled(false)) => Err(ConfigError::new(
            format!("{path}.disabled"),
            "value must equal true",
        )),
        Some(pb::ext_authz_per_route::Override::CheckSettings(s)) => {
            let spath = format!("{path}.check_settings");
            refuse_set(
                s.with_request_body.is_some(),
                format!("{spath}.with_request_body"),
            )?;
            refuse_set(
                s.service_override.is_some(),
                format!("{spath}.service_override"),
            )?;
            // emit_client_span: a tracing span of the check's own, which skiff does not make.
            let mut ext: Vec<(String, String)> = s
                .context_extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            ext.sort();
            Ok(ExtAuthzPerRoute::Check {
                extensions: ext,
                disable_request_body_buffering: s.disable_request_body_buffering,
            })
        }
        None => Err(ConfigError::new(
            path,
            "one of disabled and check_settings is required",
        )),
    }
}
