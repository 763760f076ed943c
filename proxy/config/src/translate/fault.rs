//! `envoy.filters.http.fault`: delays and aborts injected into a share of the requests.

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;

use super::super::model::{FaultAbort, FaultDelay, FaultRuntimeKeys, HttpFault};
use super::super::ConfigError;

fn key(configured: &str, default: &str) -> String {
    if configured.is_empty() {
        default.to_string()
    } else {
        configured.to_string()
    }
}

fn percentage(
    p: &Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
    path: &str,
) -> Result<crate::runtime::Fraction, ConfigError> {
    match p {
        Some(p) => super::http_manager::fraction(p, path),
        None => Ok(crate::runtime::Fraction {
            numerator: 0,
            denominator: 100,
        }),
    }
}

/// `HTTPFault`, checked as Envoy checks it (in the connection manager or on a route).
pub(super) fn translate(f: &fault::HttpFault, path: &str) -> Result<HttpFault, ConfigError> {
    let fault::HttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        delay_percent_runtime,
        abort_percent_runtime,
        delay_duration_runtime,
        abort_http_status_runtime,
        max_active_faults_runtime,
        response_rate_limit_percent_runtime: _,
        abort_grpc_status_runtime,
        disable_downstream_cluster_stats,
        filter_metadata,
    } = f;
    if !upstream_cluster.is_empty() {
        return Err(ConfigError::unsupported(format!("{path}.upstream_cluster")));
    }
    if response_rate_limit.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.response_rate_limit"
        )));
    }
    if filter_metadata.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.filter_metadata")));
    }
    let delay = match delay {
        None => None,
        Some(d) => {
            let dpath = format!("{path}.delay");
            use common::fault_delay::FaultDelaySecifier as S;
            let fixed = match &d.fault_delay_secifier {
                Some(S::FixedDelay(t)) => {
                    let t = super::duration(t, &format!("{dpath}.fixed_delay"))?;
                    if t.is_zero() {
                        return Err(ConfigError::new(
                            format!("{dpath}.fixed_delay"),
                            "value must be greater than 0s",
                        ));
                    }
                    Some(t)
                }
                Some(S::HeaderDelay(_)) => None,
                None => {
                    return Err(ConfigError::new(
                        dpath,
                        "fault_delay_secifier: value is required",
                    ))
                }
            };
            Some(FaultDelay {
                fixed,
                percentage: percentage(&d.percentage, &format!("{dpath}.percentage"))?,
            })
        }
    };
    let abort = match abort {
        None => None,
        Some(a) => {
            let apath = format!("{path}.abort");
            use fault::fault_abort::ErrorType as E;
            let (http_status, grpc_status) = match &a.error_type {
                Some(E::HttpStatus(s)) if (200..600).contains(s) => (*s as u16, None),
                Some(E::HttpStatus(_)) => {
                    return Err(ConfigError::new(
                        format!("{apath}.http_status"),
                        "value must be inside range [200, 600)",
                    ))
                }
                // A gRPC abort is a 200 with this status (to a gRPC request).
                Some(E::GrpcStatus(g)) => (200, Some(*g)),
                Some(E::HeaderAbort(_)) => {
                    return Err(ConfigError::unsupported(format!("{apath}.header_abort")))
                }
                None => return Err(ConfigError::new(apath, "error_type: value is required")),
            };
            Some(FaultAbort {
                http_status,
                grpc_status,
                percentage: percentage(&a.percentage, &format!("{apath}.percentage"))?,
                body: if a.response_body.is_empty() {
                    bytes::Bytes::from_static(b"fault filter abort")
                } else {
                    bytes::Bytes::from(a.response_body.clone())
                },
            })
        }
    };
    Ok(HttpFault {
        delay,
        abort,
        headers: headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                super::http_manager::translate_header_match(h, &format!("{path}.headers[{i}]"))
            })
            .collect::<Result<_, _>>()?,
        downstream_nodes: downstream_nodes.clone(),
        max_active_faults: max_active_faults.map(|v| u64::from(v.value)),
        keys: FaultRuntimeKeys {
            delay_percent: key(
                delay_percent_runtime,
                "fault.http.delay.fixed_delay_percent",
            ),
            abort_percent: key(abort_percent_runtime, "fault.http.abort.abort_percent"),
            delay_duration: key(delay_duration_runtime, "fault.http.delay.fixed_duration_ms"),
            abort_http_status: key(abort_http_status_runtime, "fault.http.abort.http_status"),
            abort_grpc_status: key(abort_grpc_status_runtime, "fault.http.abort.grpc_status"),
            max_active_faults: key(max_active_faults_runtime, "fault.http.max_active_faults"),
        },
        downstream_cluster_stats: !disable_downstream_cluster_stats,
    })
}
