//! `set_filter_state` (network and HTTP) and the filter-state matchers, checked as Envoy
//! checks them.

use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3 as sfs;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::super::ConfigError;
use crate::filter_state::{
    HttpSetFilterState, Kind, Matcher, NetworkSetFilterState, Sharing, Value,
};

/// The generic factories skiff makes objects with.
fn generic(name: &str) -> Option<Kind> {
    match name {
        "envoy.string" => Some(Kind::String),
        "envoy.hashable_string" => Some(Kind::HashableString),
        _ => None,
    }
}

/// The keys Envoy gives a meaning to that skiff runs: the addresses an internal listener's
/// original_dst filter restores.
fn honoured(name: &str) -> Option<Kind> {
    match name {
        crate::filter_state::ORIGINAL_DST_LOCAL | crate::filter_state::ORIGINAL_DST_REMOTE => {
            Some(Kind::Address)
        }
        _ => None,
    }
}

/// Keys (and factories) Envoy gives a meaning to: an upstream's SNI, ALPN or SANs, tcp_proxy's
/// cluster, the dynamic forward proxy's host, …; skiff runs none of these off filter state
/// (but the `honoured` ones).
fn well_known(name: &str) -> bool {
    name.starts_with("envoy.") && generic(name).is_none() && honoured(name).is_none()
}

/// One `FilterStateValue` at `path`.
fn value(v: &sfs::FilterStateValue, path: &str) -> Result<Value, ConfigError> {
    use sfs::filter_state_value::{Key, SharedWithUpstream, Value as V};
    #[allow(deprecated)]
    let sfs::FilterStateValue {
        factory_key,
        read_only,
        shared_with_upstream,
        skip_if_empty,
        key,
        value,
    } = v;
    let key = match key {
        Some(Key::ObjectKey(k)) if !k.is_empty() => k.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.object_key"),
                "value length must be at least 1 characters",
            ))
        }
    };
    if well_known(&key) {
        return Err(ConfigError::new(
            format!("{path}.object_key"),
            format!(
                "'{key}' is an object Envoy gives a meaning to; skiff does not honour it \
                 (only objects that filters, RBAC, routes and formatters read by name)"
            ),
        ));
    }
    let factory = if factory_key.is_empty() {
        &key
    } else {
        factory_key
    };
    let kind = match generic(factory).or_else(|| honoured(factory)) {
        Some(k) => k,
        None if !factory_key.is_empty() && well_known(factory_key) => {
            return Err(ConfigError::new(
                format!("{path}.factory_key"),
                format!("skiff makes objects with envoy.string and envoy.hashable_string only, not '{factory_key}'"),
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.factory_key"),
                format!("'{factory}' does not have an object factory"),
            ))
        }
    };
    let shared = match SharedWithUpstream::try_from(*shared_with_upstream) {
        Ok(SharedWithUpstream::None) => Sharing::None,
        Ok(SharedWithUpstream::Once) => Sharing::Once,
        Ok(SharedWithUpstream::Transitive) => Sharing::Transitive,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.shared_with_upstream"),
                format!("unknown value {shared_with_upstream}"),
            ))
        }
    };
    let format = match value {
        Some(V::FormatString(f)) => {
            if matches!(
                f.format,
                Some(envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::JsonFormat(_))
            ) {
                return Err(ConfigError::unsupported(format!(
                    "{path}.format_string.json_format"
                )));
            }
            super::http_manager::substitution_format(f, &format!("{path}.format_string"))?
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.format_string"),
                "a value is required",
            ))
        }
    };
    Ok(Value {
        key,
        kind,
        format,
        read_only: *read_only,
        skip_if_empty: *skip_if_empty,
        shared,
    })
}

fn values(list: &[sfs::FilterStateValue], path: &str) -> Result<Vec<Value>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| value(v, &format!("{path}[{i}]")))
        .collect()
}

/// `envoy.filters.network.set_filter_state` at `path`.
pub(super) fn network(
    c: &envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config,
    path: &str,
) -> Result<NetworkSetFilterState, ConfigError> {
    if !c.on_downstream_data.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.on_downstream_data"
        )));
    }
    Ok(NetworkSetFilterState {
        on_new_connection: values(&c.on_new_connection, &format!("{path}.on_new_connection"))?,
        on_tls_handshake: values(
            &c.on_downstream_tls_handshake,
            &format!("{path}.on_downstream_tls_handshake"),
        )?,
    })
}

/// `envoy.filters.http.set_filter_state` at `path`.
pub(super) fn http(
    c: &envoy_types::pb::envoy::extensions::filters::http::set_filter_state::v3::Config,
    path: &str,
) -> Result<HttpSetFilterState, ConfigError> {
    Ok(HttpSetFilterState {
        on_request_headers: values(&c.on_request_headers, &format!("{path}.on_request_headers"))?,
        clear_route_cache: c.clear_route_cache,
    })
}

/// A `FilterStateMatcher` at `path` (its string form; skiff's objects are strings).
pub(super) fn matcher(m: &matcher::FilterStateMatcher, path: &str) -> Result<Matcher, ConfigError> {
    use matcher::filter_state_matcher::Matcher as M;
    if m.key.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.key"),
            "value length must be at least 1 characters",
        ));
    }
    match &m.matcher {
        Some(M::StringMatch(s)) => Ok(Matcher {
            key: m.key.clone(),
            string: super::http_manager::string_match(s, &format!("{path}.string_match"))?,
        }),
        Some(M::AddressMatch(_)) => Err(ConfigError::unsupported(format!("{path}.address_match"))),
        None => Err(ConfigError::new(path, "a matcher is required")),
    }
}

#[cfg(test)]
mod tests {
    /// A listener with the network filter's `values` in front of an HCM.
    fn config(values: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: s, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config, {values} }} }}, {{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{prefix: /}}, route: {{cluster: c}} }}] }}] }}, http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    #[test]
    fn refused_with_the_path_and_why() {
        let v = |rest: &str| {
            format!("on_new_connection: [{{ {rest}, format_string: {{ text_format_source: {{ inline_string: x }} }} }}]")
        };
        let cases = [
            (v("object_key: my.key"), "on_new_connection[0].factory_key: 'my.key' does not have an object factory"),
            (v("object_key: envoy.tcp_proxy.cluster"), "on_new_connection[0].object_key: 'envoy.tcp_proxy.cluster' is an object Envoy gives a meaning to"),
            (v("object_key: k, factory_key: envoy.network.upstream_server_name"), "on_new_connection[0].factory_key: skiff makes objects with envoy.string"),
            (v("object_key: k, factory_key: envoy.string, shared_with_upstream: 7"), "on_new_connection[0].shared_with_upstream: unknown value 7"),
            ("on_new_connection: [{ object_key: k, factory_key: envoy.string }]".to_string(), "on_new_connection[0].format_string: a value is required"),
            ("on_downstream_data: [{ object_key: k, factory_key: envoy.string, format_string: { text_format_source: { inline_string: x } } }]".to_string(), "on_downstream_data"),
            ("on_new_connection: [{ object_key: k, factory_key: envoy.string, format_string: { text_format_source: { inline_string: '%NOPE%' } } }]".to_string(), "on_new_connection[0].format_string.text_format_source"),
        ];
        for (values, want) in &cases {
            match crate::load_text(&config(values)) {
                Ok(_) => panic!("accepted: {values}"),
                Err(e) => assert!(e.to_string().contains(want), "{values}: {e}"),
            }
        }
        let ok = v("object_key: k, factory_key: envoy.hashable_string, read_only: true, skip_if_empty: true");
        assert!(crate::load_text(&config(&ok)).is_ok());
        // What an internal listener's original_dst reads, shared with the upstream connection.
        for ok in [
            v("object_key: envoy.filters.listener.original_dst.local_ip, shared_with_upstream: ONCE"),
            v("object_key: envoy.filters.listener.original_dst.remote_ip, shared_with_upstream: TRANSITIVE"),
            v("object_key: k, factory_key: envoy.string, shared_with_upstream: ONCE"),
        ] {
            assert!(crate::load_text(&config(&ok)).is_ok(), "{ok}");
        }
    }
}
