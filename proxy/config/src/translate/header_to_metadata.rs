//! `envoy.filters.http.header_to_metadata`, checked as Envoy checks it.

use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3 as h2m;

use crate::model::{
    HeaderToMetadata, MetadataKeyValue, MetadataRule, MetadataSource, MetadataValueType,
};
use crate::ConfigError;

/// The default namespace of the metadata the filter writes.
pub const NAMESPACE: &str = "envoy.filters.http.header_to_metadata";

/// The filter's configuration; `per_route` is a route's, which must have rules.
pub(super) fn translate(
    c: &h2m::Config,
    path: &str,
    per_route: bool,
) -> Result<HeaderToMetadata, ConfigError> {
    if per_route && c.request_rules.is_empty() && c.response_rules.is_empty() {
        return Err(ConfigError::new(
            path,
            "header_to_metadata_filter: Per filter configs must at least specify either request or response rules",
        ));
    }
    let rules = |list: &[h2m::config::Rule], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, r)| rule(r, &format!("{path}.{field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(HeaderToMetadata {
        request_rules: rules(&c.request_rules, "request_rules")?,
        response_rules: rules(&c.response_rules, "response_rules")?,
        stat_prefix: (!c.stat_prefix.is_empty()).then(|| c.stat_prefix.clone()),
    })
}

fn rule(r: &h2m::config::Rule, path: &str) -> Result<MetadataRule, ConfigError> {
    let source = match (r.header.is_empty(), r.cookie.is_empty()) {
        (false, false) => {
            return Err(ConfigError::new(
                path,
                "Cannot specify both header and cookie in the same rule",
            ))
        }
        (true, true) => {
            return Err(ConfigError::new(
                path,
                "One of Cookie or Header option needs to be specified",
            ))
        }
        (false, true) if r.header.starts_with(':') => {
            let name = r.header.to_ascii_lowercase();
            if ![":path", ":authority", ":method", ":scheme", ":status"].contains(&name.as_str()) {
                return Err(ConfigError::new(
                    format!("{path}.header"),
                    "unsupported: not a pseudo-header skiff knows",
                ));
            }
            if r.remove {
                return Err(ConfigError::new(
                    format!("{path}.remove"),
                    "unsupported: a pseudo-header cannot be removed",
                ));
            }
            MetadataSource::Pseudo(name)
        }
        (false, true) => {
            MetadataSource::Header(http::HeaderName::from_bytes(r.header.as_bytes()).map_err(
                |_| ConfigError::new(format!("{path}.header"), "not a valid header name"),
            )?)
        }
        (true, false) => MetadataSource::Cookie(r.cookie.clone()),
    };
    if r.on_header_present.is_none() && r.on_header_missing.is_none() {
        let what = match &source {
            MetadataSource::Header(h) => format!("header '{h}'"),
            MetadataSource::Pseudo(h) => format!("header '{h}'"),
            MetadataSource::Cookie(c) => format!("cookie '{c}'"),
        };
        return Err(ConfigError::new(
            path,
            format!("header to metadata filter: rule for {what} has neither `on_header_present` nor `on_header_missing` set"),
        ));
    }
    if r.remove && matches!(source, MetadataSource::Cookie(_)) {
        return Err(ConfigError::new(path, "Cannot specify remove for cookie"));
    }
    let on_present = r
        .on_header_present
        .as_ref()
        .map(|kv| key_value(kv, &format!("{path}.on_header_present"), true))
        .transpose()?;
    let on_missing = match &r.on_header_missing {
        Some(kv) => {
            if kv.value.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.on_header_missing"),
                    "Cannot specify on_header_missing rule with an empty value",
                ));
            }
            Some(key_value(kv, &format!("{path}.on_header_missing"), false)?)
        }
        None => None,
    };
    Ok(MetadataRule {
        source,
        on_present,
        on_missing,
        remove: r.remove,
    })
}

fn key_value(
    kv: &h2m::config::KeyValuePair,
    path: &str,
    present: bool,
) -> Result<MetadataKeyValue, ConfigError> {
    if kv.key.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.key"),
            "value length must be at least 1 characters",
        ));
    }
    if present && !kv.value.is_empty() && kv.regex_value_rewrite.is_some() {
        return Err(ConfigError::new(
            path,
            "Cannot specify both value and regex_value_rewrite",
        ));
    }
    let rewrite = kv
        .regex_value_rewrite
        .as_ref()
        .map(|r| super::route_action::regex_substitution(r, &format!("{path}.regex_value_rewrite")))
        .transpose()?;
    use h2m::config::{ValueEncode, ValueType};
    let kind = match ValueType::try_from(kv.r#type) {
        Ok(ValueType::String) => MetadataValueType::String,
        Ok(ValueType::Number) => MetadataValueType::Number,
        Ok(ValueType::ProtobufValue) => MetadataValueType::ProtobufValue,
        Err(_) => return Err(ConfigError::new(format!("{path}.type"), "unknown value")),
    };
    let base64 = match ValueEncode::try_from(kv.encode) {
        Ok(ValueEncode::None) => false,
        Ok(ValueEncode::Base64) => true,
        Err(_) => return Err(ConfigError::new(format!("{path}.encode"), "unknown value")),
    };
    Ok(MetadataKeyValue {
        namespace: if kv.metadata_namespace.is_empty() {
            NAMESPACE.to_string()
        } else {
            kv.metadata_namespace.clone()
        },
        key: kv.key.clone(),
        value: (!kv.value.is_empty()).then(|| kv.value.clone()),
        rewrite,
        kind,
        base64,
    })
}

#[cfg(test)]
mod tests {
    /// A listener whose HCM runs header_to_metadata with `rules`, and a route with `route`.
    fn config(rules: &str, route: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{prefix: /}}, route: {{cluster: c}} {route} }}] }}] }}, http_filters: [{{ name: envoy.filters.http.header_to_metadata, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config, {rules} }} }}, {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    fn error(rules: &str, route: &str) -> String {
        match crate::load_text(&config(rules, route)) {
            Ok(_) => panic!("accepted: {rules} {route}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn refused_as_envoy_refuses() {
        let cases = [
            ("request_rules: [{on_header_present: {key: k}}]", "One of Cookie or Header option needs to be specified"),
            ("request_rules: [{header: x-a, cookie: c, on_header_present: {key: k}}]", "Cannot specify both header and cookie in the same rule"),
            ("request_rules: [{header: x-a}]", "header to metadata filter: rule for header 'x-a' has neither `on_header_present` nor `on_header_missing` set"),
            ("request_rules: [{header: x-a, on_header_missing: {key: k}}]", "Cannot specify on_header_missing rule with an empty value"),
            ("request_rules: [{header: x-a, on_header_present: {key: k, value: v, regex_value_rewrite: {pattern: {regex: a}, substitution: b}}}]", "Cannot specify both value and regex_value_rewrite"),
            ("request_rules: [{cookie: c, on_header_present: {key: k}, remove: true}]", "Cannot specify remove for cookie"),
            ("request_rules: [{header: x-a, on_header_present: {}}]", "value length must be at least 1 characters"),
        ];
        for (rules, want) in cases {
            let e = error(rules, "");
            assert!(e.contains(want), "{rules}: {e}");
        }
        let e = error(
            "request_rules: []",
            r#", typed_per_filter_config: { envoy.filters.http.header_to_metadata: { "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config, stat_prefix: p } }"#,
        );
        assert!(
            e.contains("Per filter configs must at least specify either request or response rules"),
            "{e}"
        );
        assert!(crate::load_text(&config("request_rules: []", "")).is_ok());
    }
}
