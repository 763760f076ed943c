//! A cluster's `health_checks`: HTTP and TCP checks, with Envoy's defaults and checks.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;

use super::super::model::{
    ActiveHealthCheck as HealthCheck, GrpcHealthCheck, HealthCheckKind, HttpHealthCheck,
};
use super::super::ConfigError;
use super::{duration, required};

/// `health_checks`: none, or one check (several are refused: skiff runs one per cluster).
pub(super) fn health_checks(
    checks: &[core::HealthCheck],
    (cluster, http2): (&str, bool),
    path: &str,
) -> Result<Option<Arc<HealthCheck>>, ConfigError> {
    let Some(first) = checks.first() else {
        return Ok(None);
    };
    if checks.len() > 1 {
        return Err(ConfigError::unsupported(format!("{path}.health_checks[1]")));
    }
    let path = format!("{path}.health_checks[0]");
    let check = health_check(first, &path)?;
    if matches!(check.kind, HealthCheckKind::Grpc(_)) && !http2 {
        return Err(ConfigError::new(
            format!("{path}.grpc_health_check"),
            format!("{cluster} cluster must support HTTP/2 for gRPC healthchecking"),
        ));
    }
    Ok(Some(Arc::new(check)))
}

#[allow(deprecated)] // event_log_path: deprecated, still read by 1.40
fn health_check(h: &core::HealthCheck, path: &str) -> Result<HealthCheck, ConfigError> {
    use core::health_check::HealthChecker;
    let core::HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        event_logger,
        event_service,
        always_log_health_check_failures,
        always_log_health_check_success,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = h;
    let refuse = |set: bool, field: &str| {
        if set {
            Err(ConfigError::unsupported(format!("{path}.{field}")))
        } else {
            Ok(())
        }
    };
    refuse(alt_port.is_some(), "alt_port")?;
    refuse(event_service.is_some(), "event_service")?;
    let mut event_logs = Vec::new();
    if !event_log_path.is_empty() {
        event_logs.push(std::path::PathBuf::from(event_log_path));
    }
    for (i, e) in event_logger.iter().enumerate() {
        use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
        const FILE_SINK: &str =
            "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink";
        let epath = format!("{path}.event_logger[{i}].typed_config");
        let Some(any) = &e.typed_config else {
            return Err(ConfigError::new(epath, "required"));
        };
        let ty = super::super::proto::type_name(&any.type_url);
        if ty != FILE_SINK {
            return Err(ConfigError::new(
                epath,
                format!("unsupported event sink '{ty}' (only envoy.health_check.event_sinks.file)"),
            ));
        }
        let sink: HealthCheckEventFileSink = super::super::proto::unpack(any, &epath)?;
        if sink.event_log_path.is_empty() {
            return Err(ConfigError::new(
                format!("{epath}.event_log_path"),
                "value length must be at least 1 characters",
            ));
        }
        event_logs.push(std::path::PathBuf::from(sink.event_log_path));
    }
    let alpn = tls_options
        .as_ref()
        .map(|t| t.alpn_protocols.clone())
        .unwrap_or_default();
    let socket_criteria = transport_socket_match_criteria
        .as_ref()
        .map(|s| Arc::new(s.fields.clone().into_iter().collect()));
    // Envoy's checks: these four are required, the durations above zero.
    let positive = |d: &Option<envoy_types::pb::google::protobuf::Duration>, field: &str| {
        let p = format!("{path}.{field}");
        let d = duration(required(d, &p)?, &p)?;
        if d.is_zero() {
            return Err(ConfigError::new(p, "must be greater than 0"));
        }
        Ok(d)
    };
    let timeout = positive(timeout, "timeout")?;
    let interval = positive(interval, "interval")?;
    let threshold = |v: &Option<u32>, field: &str| {
        v.ok_or_else(|| ConfigError::new(format!("{path}.{field}"), "required"))
    };
    let unhealthy_threshold = threshold(
        &unhealthy_threshold.as_ref().map(|v| v.value),
        "unhealthy_threshold",
    )?;
    let healthy_threshold = threshold(
        &healthy_threshold.as_ref().map(|v| v.value),
        "healthy_threshold",
    )?;
    let optional = |d: &Option<envoy_types::pb::google::protobuf::Duration>,
                    field: &str|
     -> Result<Option<Duration>, ConfigError> {
        let p = format!("{path}.{field}");
        match d {
            None => Ok(None),
            Some(d) => {
                let d = duration(d, &p)?;
                Ok(Some(d))
            }
        }
    };
    let positive_opt = |d: &Option<envoy_types::pb::google::protobuf::Duration>, field: &str| {
        let v = optional(d, field)?;
        if v.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                "must be greater than 0",
            ));
        }
        Ok(v)
    };
    let no_traffic_interval = positive_opt(no_traffic_interval, "no_traffic_interval")?
        .unwrap_or(Duration::from_secs(60));
    let no_traffic_healthy_interval =
        positive_opt(no_traffic_healthy_interval, "no_traffic_healthy_interval")?
            .unwrap_or(no_traffic_interval);
    let unhealthy_interval =
        positive_opt(unhealthy_interval, "unhealthy_interval")?.unwrap_or(interval);
    let unhealthy_edge_interval = positive_opt(unhealthy_edge_interval, "unhealthy_edge_interval")?
        .unwrap_or(unhealthy_interval);
    let healthy_edge_interval =
        positive_opt(healthy_edge_interval, "healthy_edge_interval")?.unwrap_or(interval);
    let kind = match health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            HealthCheckKind::Http(http_check(http, &format!("{path}.http_health_check"))?)
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            let tpath = format!("{path}.tcp_health_check");
            if tcp.proxy_protocol_config.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.proxy_protocol_config"
                )));
            }
            use core::health_check::payload::Payload as P;
            // As Envoy: only a `text` send is sent (a binary one is not read).
            let send = match tcp.send.as_ref().and_then(|p| p.payload.as_ref()) {
                Some(P::Text(t)) if !t.is_empty() => {
                    hex(t).filter(|b| !b.is_empty()).ok_or_else(|| {
                        ConfigError::new(
                            format!("{tpath}.send.text"),
                            format!("invalid hex string '{t}'"),
                        )
                    })?
                }
                _ => Vec::new(),
            };
            HealthCheckKind::Tcp {
                send,
                receive: payloads(&tcp.receive, &format!("{tpath}.receive"))?,
            }
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => {
            let gpath = format!("{path}.grpc_health_check");
            HealthCheckKind::Grpc(GrpcHealthCheck {
                service: g.service_name.clone(),
                authority: g.authority.clone(),
                metadata: Arc::new(super::route_action::fixed_values(
                    super::route_action::header_adds(
                        &g.initial_metadata,
                        &format!("{gpath}.initial_metadata"),
                    )?,
                    &format!("{gpath}.initial_metadata"),
                )?),
            })
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.custom_health_check"
            )))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.health_checker"),
                "required",
            ))
        }
    };
    Ok(HealthCheck {
        timeout,
        interval,
        initial_jitter: optional(initial_jitter, "initial_jitter")?.unwrap_or_default(),
        interval_jitter: optional(interval_jitter, "interval_jitter")?.unwrap_or_default(),
        interval_jitter_percent: *interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        reuse_connection: reuse_connection.as_ref().is_none_or(|v| v.value),
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        kind,
        event_logs,
        always_log_failures: *always_log_health_check_failures,
        always_log_success: *always_log_health_check_success,
        alpn,
        socket_criteria,
    })
}

fn http_check(
    h: &core::health_check::HttpHealthCheck,
    path: &str,
) -> Result<HttpHealthCheck, ConfigError> {
    use core::RequestMethod as M;
    let service_name = h
        .service_name_matcher
        .as_ref()
        .map(|m| super::http_manager::string_match(m, &format!("{path}.service_name_matcher")))
        .transpose()?;
    // Envoy: the path must be set, and a header name valid.
    if h.path.is_empty() {
        return Err(ConfigError::new(format!("{path}.path"), "required"));
    }
    let method = match M::try_from(h.method) {
        Ok(M::MethodUnspecified | M::Get) => "GET",
        Ok(M::Head) => "HEAD",
        Ok(M::Post) => "POST",
        Ok(M::Put) => "PUT",
        Ok(M::Delete) => "DELETE",
        Ok(M::Options) => "OPTIONS",
        Ok(M::Trace) => "TRACE",
        Ok(M::Patch) => "PATCH",
        Ok(M::Connect) | Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.method"),
                "must not be CONNECT",
            ))
        }
    };
    let http2 = match h.codec_client_type {
        0 => false, // HTTP1
        1 => true,  // HTTP2
        _ => {
            return Err(ConfigError::unsupported(format!(
                "{path}.codec_client_type"
            )))
        }
    };
    let ranges = |r: &[envoy_types::pb::envoy::r#type::v3::Int64Range],
                  field: &str|
     -> Result<Vec<(u16, u16)>, ConfigError> {
        r.iter()
            .enumerate()
            .map(|(i, r)| {
                // Envoy: statuses in [100, 600), start below end.
                if r.start < 100 || r.start >= 600 || r.end <= 100 || r.end > 600 || r.start >= r.end
                {
                    return Err(ConfigError::new(
                        format!("{path}.{field}[{i}]"),
                        format!(
                            "invalid range [{}, {}): statuses are in [100, 600) and start is below end",
                            r.start, r.end
                        ),
                    ));
                }
                Ok((r.start as u16, r.end as u16))
            })
            .collect()
    };
    let mut expected = ranges(&h.expected_statuses, "expected_statuses")?;
    if expected.is_empty() {
        expected.push((200, 201));
    }
    let send = h
        .send
        .as_ref()
        .map(|p| payload(p, &format!("{path}.send")))
        .transpose()?
        .unwrap_or_default();
    if !send.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE" | "TRACE") {
        return Err(ConfigError::new(
            format!("{path}.send"),
            format!("HTTP health check cannot specify a request payload with method '{method}'"),
        ));
    }
    let receive = payloads(&h.receive, &format!("{path}.receive"))?;
    // 0: no limit.
    let response_buffer_size = h
        .response_buffer_size
        .as_ref()
        .map_or(1024, |v| v.value as usize);
    let wanted: usize = receive.iter().map(Vec::len).sum();
    if response_buffer_size != 0 && wanted > response_buffer_size {
        return Err(ConfigError::new(
            format!("{path}.response_buffer_size"),
            format!("the receive payloads ({wanted} bytes) do not fit in the response buffer ({response_buffer_size} bytes)"),
        ));
    }
    Ok(HttpHealthCheck {
        service_name,
        host: h.host.clone(),
        path: h.path.clone(),
        method: method.to_string(),
        send,
        receive,
        response_buffer_size: if response_buffer_size == 0 {
            usize::MAX
        } else {
            response_buffer_size
        },
        headers: Arc::new(super::route_action::fixed_values(
            (*super::route_action::header_parser(
                &h.request_headers_to_add,
                &h.request_headers_to_remove,
                path,
                "request",
            )?)
            .clone(),
            &format!("{path}.request_headers_to_add"),
        )?),
        expected,
        retriable: ranges(&h.retriable_statuses, "retriable_statuses")?,
        http2,
    })
}

/// A payload: `text` is hex, `binary` raw bytes.
fn payload(p: &core::health_check::Payload, path: &str) -> Result<Vec<u8>, ConfigError> {
    use core::health_check::payload::Payload as P;
    match &p.payload {
        Some(P::Text(t)) => hex(t).filter(|b| !b.is_empty()).ok_or_else(|| {
            ConfigError::new(format!("{path}.text"), format!("invalid hex string '{t}'"))
        }),
        Some(P::Binary(b)) => Ok(b.clone()),
        None => Err(ConfigError::new(format!("{path}.payload"), "required")),
    }
}

fn payloads(ps: &[core::health_check::Payload], path: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
    ps.iter()
        .enumerate()
        .map(|(i, p)| payload(p, &format!("{path}[{i}]")))
        .collect()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|c| {
            let d = |b: u8| (b as char).to_digit(16);
            Some((d(c[0])? * 16 + d(c[1])?) as u8)
        })
        .collect()
}
