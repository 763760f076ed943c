//! UDP listeners (`address.socket_address.protocol: UDP`) and their
//! `envoy.filters.udp_listener.udp_proxy`; what skiff does not run is refused by path.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3 as pb;

use super::super::model::{UdpHash, UdpListener, UdpProxy, UdpRoute};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;

/// Envoy's session idle timeout when `idle_timeout` is unset.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's largest datagram read when `max_rx_datagram_size` is unset.
const MAX_DATAGRAM: u64 = 1500;

/// Whether `l` listens on UDP.
pub(super) fn is_udp(l: &listener::Listener) -> bool {
    matches!(
        l.address.as_ref().and_then(|a| a.address.as_ref()),
        Some(core::address::Address::SocketAddress(sa))
            if sa.protocol == core::socket_address::Protocol::Udp as i32
    )
}

fn refuse(set: bool, path: String) -> Result<(), ConfigError> {
    if set {
        Err(ConfigError::unsupported(path))
    } else {
        Ok(())
    }
}

/// A UDP listener with its UDP proxy.
pub(super) fn listener(l: &listener::Listener, path: &str) -> Result<UdpListener, ConfigError> {
    let apath = format!("{path}.address");
    let mut tcp = super::required(&l.address, &apath)?.clone();
    if let Some(core::address::Address::SocketAddress(sa)) = &mut tcp.address {
        sa.protocol = core::socket_address::Protocol::Tcp as i32;
    }
    let address = super::socket_address(&tcp, &apath)?;
    // Only what a UDP listener reads may be set: the rest of a Listener (its chains, TCP
    // socket options, connection limits, stat prefix, metadata…) would do nothing here.
    refuse_other_fields(l, path)?;
    // A UDP listener's `access_log`: checked, and written to never, as Envoy writes nothing
    // there (its listener logs are of TCP connections no chain took; measured).
    for (i, a) in l.access_log.iter().enumerate() {
        super::http_manager::translate_access_log(a, &format!("{path}.access_log[{i}]"))?;
        super::istio::without_effect("udp_listener_access_log");
    }
    let mut max_datagram = MAX_DATAGRAM;
    if let Some(u) = &l.udp_listener_config {
        let upath = format!("{path}.udp_listener_config");
        refuse(u.quic_options.is_some(), format!("{upath}.quic_options"))?;
        refuse(
            u.udp_packet_packet_writer_config.is_some(),
            format!("{upath}.udp_packet_packet_writer_config"),
        )?;
        if let Some(s) = &u.downstream_socket_config {
            max_datagram = socket_config(s, &format!("{upath}.downstream_socket_config"))?;
        }
    }
    let [f] = l.listener_filters.as_slice() else {
        return Err(ConfigError::new(
            format!("{path}.listener_filters"),
            "a UDP listener needs exactly one UDP listener filter (udp_proxy)",
        ));
    };
    let fpath = format!("{path}.listener_filters[0]");
    use listener::listener_filter::ConfigType;
    let any = match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        _ => {
            return Err(ConfigError::new(
                format!("{fpath}.typed_config"),
                "required",
            ))
        }
    };
    let tpath = format!("{fpath}.typed_config");
    if type_name(&any.type_url) != "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig" {
        return Err(ConfigError::new(
            tpath,
            format!("unsupported UDP listener filter '{}'", any.type_url),
        ));
    }
    let c: pb::UdpProxyConfig = unpack(any, &tpath)?;
    Ok(UdpListener {
        name: if l.name.is_empty() {
            address.to_string()
        } else {
            l.name.clone()
        },
        address,
        max_datagram: max_datagram as usize,
        proxy: proxy(&c, &tpath)?,
    })
}

/// Refuses, by path, the first field of `l` a UDP listener does not read (everything but
/// `name`, `address`, `listener_filters`, `udp_listener_config`, `access_log` and the
/// informational `traffic_direction`).
fn refuse_other_fields(l: &listener::Listener, path: &str) -> Result<(), ConfigError> {
    use prost::Message;
    let mut rest = l.clone();
    rest.name.clear();
    rest.address = None;
    rest.listener_filters.clear();
    rest.udp_listener_config = None;
    rest.traffic_direction = 0;
    rest.access_log.clear();
    if rest == listener::Listener::default() {
        return Ok(());
    }
    let desc = super::super::proto::message("envoy.config.listener.v3.Listener")?;
    let set = prost_reflect::DynamicMessage::decode(desc, rest.encode_to_vec().as_slice())
        .ok()
        .and_then(|m| m.fields().next().map(|(f, _)| f.name().to_string()))
        .unwrap_or_else(|| "listener_specifier".to_string());
    Err(ConfigError::new(
        format!("{path}.{set}"),
        "unsupported on a UDP listener",
    ))
}

/// A `UdpSocketConfig`: the largest datagram read.
fn socket_config(s: &core::UdpSocketConfig, path: &str) -> Result<u64, ConfigError> {
    // prefer_gro changes how datagrams are read, not which.
    let max = s
        .max_rx_datagram_size
        .as_ref()
        .map_or(MAX_DATAGRAM, |v| v.value);
    if !(1..65536).contains(&max) {
        return Err(ConfigError::new(
            format!("{path}.max_rx_datagram_size"),
            "value must be inside range (0, 65536)",
        ));
    }
    Ok(max)
}

#[allow(deprecated)]
fn proxy(c: &pb::UdpProxyConfig, path: &str) -> Result<UdpProxy, ConfigError> {
    use pb::udp_proxy_config::hash_policy::PolicySpecifier;
    use pb::udp_proxy_config::RouteSpecifier;
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "value length must be at least 1 characters",
        ));
    }
    refuse(c.use_original_src_ip, format!("{path}.use_original_src_ip"))?;
    refuse(
        !c.proxy_access_log.is_empty(),
        format!("{path}.proxy_access_log"),
    )?;
    refuse(
        !c.session_filters.is_empty(),
        format!("{path}.session_filters"),
    )?;
    refuse(
        c.tunneling_config.is_some(),
        format!("{path}.tunneling_config"),
    )?;
    refuse(
        c.access_log_options.is_some(),
        format!("{path}.access_log_options"),
    )?;
    let route = match &c.route_specifier {
        Some(RouteSpecifier::Cluster(name)) if !name.is_empty() => UdpRoute::Cluster(name.clone()),
        Some(RouteSpecifier::Cluster(_)) => {
            return Err(ConfigError::new(
                format!("{path}.cluster"),
                "value length must be at least 1 characters",
            ))
        }
        Some(RouteSpecifier::Matcher(m)) => UdpRoute::Matcher(super::matcher::matcher(
            m,
            &format!("{path}.matcher"),
            super::matcher::Domain::Udp,
            &route_action,
        )?),
        None => {
            return Err(ConfigError::new(
                format!("{path}.route_specifier"),
                "one of cluster and matcher is required",
            ))
        }
    };
    let hash = match c.hash_policies.as_slice() {
        [] => None,
        [h] => match &h.policy_specifier {
            Some(PolicySpecifier::SourceIp(true)) => Some(UdpHash::SourceIp),
            Some(PolicySpecifier::SourceIp(false)) => {
                return Err(ConfigError::new(
                    format!("{path}.hash_policies[0].source_ip"),
                    "value must equal true",
                ))
            }
            Some(PolicySpecifier::Key(k)) if !k.is_empty() => Some(UdpHash::Key(k.clone())),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.hash_policies[0].key"),
                    "value length must be at least 1 characters",
                ))
            }
        },
        _ => {
            return Err(ConfigError::new(
                format!("{path}.hash_policies"),
                "value must contain no more than 1 item(s)",
            ))
        }
    };
    let idle_timeout = match &c.idle_timeout {
        Some(d) => super::duration(d, &format!("{path}.idle_timeout"))?,
        None => IDLE_TIMEOUT,
    };
    let max_upstream_datagram = match &c.upstream_socket_config {
        Some(s) => socket_config(s, &format!("{path}.upstream_socket_config"))?,
        None => MAX_DATAGRAM,
    } as usize;
    let access_logs = c
        .access_log
        .iter()
        .enumerate()
        .map(|(i, a)| {
            super::http_manager::translate_access_log(a, &format!("{path}.access_log[{i}]"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UdpProxy {
        stat_prefix: c.stat_prefix.clone(),
        route,
        // Zero: sessions never time out.
        idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
        hash,
        per_packet: c.use_per_packet_load_balancing,
        max_upstream_datagram,
        access_logs,
    })
}

/// A UDP proxy matcher's action: `envoy.extensions.filters.udp.udp_proxy.v3.Route`.
fn route_action(
    a: &envoy_types::pb::xds::core::v3::TypedExtensionConfig,
    path: &str,
) -> Result<String, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = a
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    if type_name(&any.type_url) != "envoy.extensions.filters.udp.udp_proxy.v3.Route" {
        return Err(ConfigError::unsupported(tpath));
    }
    let r: pb::Route = unpack(any, &tpath)?;
    if r.cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{tpath}.cluster"),
            "value length must be at least 1 characters",
        ));
    }
    Ok(r.cluster)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_udp_listener_refuses_what_it_does_not_read() {
        let yaml = |extra: &str| {
            format!(
                r#"static_resources: {{ listeners: [{{ name: u, address: {{socket_address: {{address: 127.0.0.1, port_value: 1, protocol: UDP}}}}{extra}, listener_filters: [{{ name: p, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig, stat_prefix: s, cluster: c }} }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
            )
        };
        assert!(crate::load_text(&yaml("")).is_ok());
        assert!(crate::load_text(&yaml(", traffic_direction: INBOUND")).is_ok());
        for (extra, field) in [
            (", stat_prefix: x", "listeners[0].stat_prefix"),
            (
                ", per_connection_buffer_limit_bytes: 10",
                "per_connection_buffer_limit_bytes",
            ),
            (
                ", socket_options: [{level: 1, name: 2, int_value: 3}]",
                "socket_options",
            ),
        ] {
            match crate::load_text(&yaml(extra)) {
                Ok(_) => panic!("accepted: {extra}"),
                Err(e) => assert!(e.to_string().contains(field), "{extra}: {e}"),
            }
        }
    }
}
