//! `listener_filters` → [`ListenerFilter`]s (and original_src, which the terminal filter applies).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version;
use envoy_types::pb::envoy::config::core::v3::proxy_protocol_pass_through_tl_vs::PassTlVsMatchType;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc as PbOriginalSrc;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol as PbProxyProtocol;

use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as PbTlsInspector;

use super::super::model::{
    ListenerFilter, ListenerPredicate, OriginalSrc, ProxyProtocol, TlsInspector, TlvSet,
};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::typed_config;

const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const ORIGINAL_SRC: &str = "envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
const PROXY_PROTOCOL: &str = "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Envoy's default and largest `max_client_hello_size`.
const DEFAULT_MAX_CLIENT_HELLO: u32 = 16 * 1024;
const LARGEST_MAX_CLIENT_HELLO: u32 = 64 * 1024;

/// The translated `listener_filters` of one listener.
#[derive(Debug, Default)]
pub(super) struct Translated {
    pub filters: Vec<ListenerFilter>,
    /// Each filter's `filter_disabled` (empty when none has one).
    pub disabled: Vec<Option<ListenerPredicate>>,
    /// original_src, with the path of its filter for later errors.
    pub original_src: Option<(OriginalSrc, String)>,
}

/// `use_original_dst` appends an original_dst filter to the configured ones, as Envoy's
/// listener does: a listener that hands off redirected connections needs their destination.
pub(super) fn translate(
    all: &[listener::ListenerFilter],
    use_original_dst: bool,
    path: &str,
) -> Result<Translated, ConfigError> {
    let mut out = Translated::default();
    for (i, f) in all.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        use listener::listener_filter::ConfigType;
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let any = typed_config(typed, f.config_type.is_some(), &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        let disabled = f
            .filter_disabled
            .as_ref()
            .map(|p| predicate(p, &format!("{fpath}.filter_disabled")))
            .transpose()?;
        if disabled.is_some() && type_name(&any.type_url) == ORIGINAL_SRC {
            return Err(ConfigError::unsupported(format!("{fpath}.filter_disabled")));
        }
        let before = out.filters.len();
        match type_name(&any.type_url) {
            ORIGINAL_DST => out.filters.push(ListenerFilter::OriginalDst),
            ORIGINAL_SRC => {
                let o: PbOriginalSrc = unpack(any, &tpath)?;
                let cfg = OriginalSrc {
                    bind_port: o.bind_port,
                    mark: o.mark,
                };
                out.original_src = Some((cfg, fpath));
            }
            PROXY_PROTOCOL => {
                if let Some((_, src_path)) = &out.original_src {
                    // Envoy's original_src takes the address as it stands where it runs; skiff
                    // applies it with the final downstream address.
                    return Err(ConfigError::new(
                        src_path.clone(),
                        "unsupported before envoy.filters.listener.proxy_protocol (put it after)",
                    ));
                }
                let p: PbProxyProtocol = unpack(any, &tpath)?;
                out.filters
                    .push(ListenerFilter::ProxyProtocol(Arc::new(proxy_protocol(
                        &p, &tpath,
                    )?)));
            }
            HTTP_INSPECTOR => out.filters.push(ListenerFilter::HttpInspector),
            TLS_INSPECTOR => {
                let t: PbTlsInspector = unpack(any, &tpath)?;
                out.filters
                    .push(ListenerFilter::TlsInspector(tls_inspector(&t, &tpath)?));
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported listener filter '{}' ({other})", f.name),
                ))
            }
        }
        if out.filters.len() > before {
            out.disabled.resize(before, None);
            out.disabled.push(disabled);
        }
    }
    // One that always runs already restores the destination; a second would find it again.
    let always = |i: usize| out.disabled.get(i).is_none_or(Option::is_none);
    let present = (0..out.filters.len())
        .any(|i| matches!(out.filters[i], ListenerFilter::OriginalDst) && always(i));
    if use_original_dst && !present {
        out.filters.push(ListenerFilter::OriginalDst);
    }
    if out.disabled.iter().all(Option::is_none) {
        out.disabled.clear();
    } else {
        out.disabled.resize(out.filters.len(), None);
    }
    Ok(out)
}

/// `ListenerFilterChainMatchPredicate`, checked as Envoy checks it (one rule set, a match set
/// with at least two rules).
fn predicate(
    p: &listener::ListenerFilterChainMatchPredicate,
    path: &str,
) -> Result<ListenerPredicate, ConfigError> {
    use listener::listener_filter_chain_match_predicate::Rule;
    let set = |m: &listener::listener_filter_chain_match_predicate::MatchSet, field: &str| {
        if m.rules.len() < 2 {
            return Err(ConfigError::new(
                format!("{path}.{field}.rules"),
                "value must contain at least 2 item(s)",
            ));
        }
        m.rules
            .iter()
            .enumerate()
            .map(|(i, r)| predicate(r, &format!("{path}.{field}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        None => return Err(ConfigError::new(path, "a rule is required")),
        Some(Rule::AnyMatch(true)) => ListenerPredicate::Any,
        Some(Rule::AnyMatch(false)) => {
            return Err(ConfigError::new(
                format!("{path}.any_match"),
                "value must equal true",
            ))
        }
        Some(Rule::OrMatch(m)) => ListenerPredicate::Or(set(m, "or_match")?),
        Some(Rule::AndMatch(m)) => ListenerPredicate::And(set(m, "and_match")?),
        Some(Rule::NotMatch(n)) => {
            ListenerPredicate::Not(Box::new(predicate(n, &format!("{path}.not_match"))?))
        }
        Some(Rule::DestinationPortRange(r)) => {
            if r.start > r.end {
                return Err(ConfigError::new(
                    format!("{path}.destination_port_range"),
                    "start must not be greater than end",
                ));
            }
            ListenerPredicate::DestinationPorts {
                start: r.start,
                end: r.end,
            }
        }
    })
}

fn proxy_protocol(p: &PbProxyProtocol, path: &str) -> Result<ProxyProtocol, ConfigError> {
    let (mut allow_v1, mut allow_v2) = (true, true);
    for (i, v) in p.disallowed_versions.iter().enumerate() {
        match Version::try_from(*v) {
            Ok(Version::V1) => allow_v1 = false,
            Ok(Version::V2) => allow_v2 = false,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.disallowed_versions[{i}]"),
                    format!("{v} is not a PROXY protocol version"),
                ))
            }
        }
    }
    if !allow_v1 && !allow_v2 {
        return Err(ConfigError::new(
            format!("{path}.disallowed_versions"),
            "Proxy Protocol filter is misconfigured: all proxy protocol versions are disallowed.",
        ));
    }
    let pass_through_tlvs = match &p.pass_through_tlvs {
        None => TlvSet::default(),
        Some(t) => match PassTlVsMatchType::try_from(t.match_type) {
            Ok(PassTlVsMatchType::IncludeAll) => TlvSet::ALL,
            Ok(PassTlVsMatchType::Include) => {
                let mut set = TlvSet::default();
                // Envoy keeps the low byte of each type.
                for ty in &t.tlv_type {
                    set.insert((ty & 0xff) as u8);
                }
                set
            }
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.pass_through_tlvs.match_type"),
                    format!("{} is not a match type", t.match_type),
                ))
            }
        },
    };
    Ok(ProxyProtocol {
        stat_prefix: p.stat_prefix.clone(),
        allow_without: p.allow_requests_without_proxy_protocol,
        allow_v1,
        allow_v2,
        pass_through_tlvs,
    })
}

fn tls_inspector(t: &PbTlsInspector, path: &str) -> Result<TlsInspector, ConfigError> {
    let max = t
        .max_client_hello_size
        .as_ref()
        .map_or(DEFAULT_MAX_CLIENT_HELLO, |v| v.value);
    if max > LARGEST_MAX_CLIENT_HELLO {
        return Err(ConfigError::new(
            format!("{path}.max_client_hello_size"),
            format!(
                "max_client_hello_size of {max} is greater than maximum of {LARGEST_MAX_CLIENT_HELLO}."
            ),
        ));
    }
    let initial = t.initial_read_buffer_size.as_ref().map_or(max, |v| v.value);
    if !(256..=max).contains(&initial) {
        return Err(ConfigError::new(
            format!("{path}.initial_read_buffer_size"),
            format!("{initial} must be at least 256 and at most max_client_hello_size ({max})"),
        ));
    }
    Ok(TlsInspector {
        initial_read_buffer_size: initial as usize,
        max_client_hello_size: max as usize,
        close_connection_on_client_hello_parsing_errors: t
            .close_connection_on_client_hello_parsing_errors,
    })
}

#[cfg(test)]
mod tests {
    use crate::load_text;

    fn listener_with(filters: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 15001}}}}, listener_filters: [{filters}], filter_chains: [{{filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}}}]}}] }}], clusters: [{{name: c, type: STATIC, load_assignment: {{cluster_name: c, endpoints: []}}}}] }}"#
        )
    }

    const PP: &str = r#"{name: pp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}"#;
    const SRC: &str = r#"{name: src, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc}}"#;
    const TLS: &str = r#"{name: tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector, max_client_hello_size: 70000}}"#;

    #[test]
    fn refusals_name_the_field() {
        let e = load_text(&listener_with(&format!("{SRC}, {PP}"))).expect_err("order");
        assert_eq!(
            e.to_string(),
            "static_resources.listeners[0].listener_filters[0]: unsupported before envoy.filters.listener.proxy_protocol (put it after)"
        );
        assert!(load_text(&listener_with(&format!("{PP}, {SRC}"))).is_ok());
        let e = load_text(&listener_with(TLS)).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "static_resources.listeners[0].listener_filters[0].typed_config.max_client_hello_size: max_client_hello_size of 70000 is greater than maximum of 65536."
        );
        let both = r#"{name: pp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol, disallowed_versions: [V1, V2]}}"#;
        let e = load_text(&listener_with(both)).expect_err("no version");
        assert!(
            e.to_string()
                .ends_with("all proxy protocol versions are disallowed."),
            "{e}"
        );
    }

    #[test]
    fn original_src_with_http_loads_but_not_its_bind_port() {
        let http = |src: &str| {
            format!(
                r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 15006}}}}, listener_filters: [{src}], filter_chains: [{{filters: [{{name: h, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h, route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: c}}}}]}}]}}, http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]}}] }}], clusters: [{{name: c, type: STATIC, load_assignment: {{cluster_name: c, endpoints: []}}}}] }}"#
            )
        };
        assert!(load_text(&http(SRC)).is_ok());
        let bind_port = r#"{name: src, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc, bind_port: true}}"#;
        let e = load_text(&http(bind_port)).expect_err("bind_port");
        assert!(
            e.to_string().starts_with(
                "static_resources.listeners[0].listener_filters[0].typed_config.bind_port: unsupported with http_connection_manager"
            ),
            "{e}"
        );
    }
}
