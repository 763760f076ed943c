//! A cluster's `outlier_detection`, with Envoy's defaults and checks.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;

use super::super::model::OutlierDetection;
use super::super::ConfigError;
use super::duration;

/// `outlier_detection`, when set.
pub(super) fn outlier_detection(
    o: Option<&cluster::OutlierDetection>,
    path: &str,
) -> Result<Option<Arc<OutlierDetection>>, ConfigError> {
    let Some(o) = o else { return Ok(None) };
    let path = format!("{path}.outlier_detection");
    let cluster::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    if !monitors.is_empty() {
        return Err(ConfigError::unsupported(format!("{path}.monitors")));
    }
    let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    // Percentages: at most 100 (Envoy's validation).
    let percent = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                   default: u32,
                   field: &str|
     -> Result<u32, ConfigError> {
        let v = u(v, default);
        if v > 100 {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                "must be at most 100",
            ));
        }
        Ok(v)
    };
    let positive = |d: &Option<envoy_types::pb::google::protobuf::Duration>,
                    default: Duration,
                    field: &str|
     -> Result<Duration, ConfigError> {
        let Some(d) = d else { return Ok(default) };
        let p = format!("{path}.{field}");
        let d = duration(d, &p)?;
        if d.is_zero() {
            return Err(ConfigError::new(p, "must be greater than 0"));
        }
        Ok(d)
    };
    let base_ejection_time = positive(
        base_ejection_time,
        Duration::from_secs(30),
        "base_ejection_time",
    )?;
    let max_ejection_time = positive(
        max_ejection_time,
        Duration::from_secs(300).max(base_ejection_time),
        "max_ejection_time",
    )?;
    if base_ejection_time > max_ejection_time {
        return Err(ConfigError::new(
            format!("{path}.max_ejection_time"),
            "base_ejection_time must be less than or equal to max_ejection_time",
        ));
    }
    Ok(Some(Arc::new(OutlierDetection {
        consecutive_5xx: u(consecutive_5xx, 5),
        consecutive_gateway_failure: u(consecutive_gateway_failure, 5),
        consecutive_local_origin_failure: u(consecutive_local_origin_failure, 5),
        interval: positive(interval, Duration::from_secs(10), "interval")?,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter: match max_ejection_time_jitter {
            Some(d) => duration(d, &format!("{path}.max_ejection_time_jitter"))?,
            None => Duration::ZERO,
        },
        max_ejection_percent: percent(max_ejection_percent, 10, "max_ejection_percent")?,
        enforcing_consecutive_5xx: percent(
            enforcing_consecutive_5xx,
            100,
            "enforcing_consecutive_5xx",
        )?,
        enforcing_consecutive_gateway_failure: percent(
            enforcing_consecutive_gateway_failure,
            0,
            "enforcing_consecutive_gateway_failure",
        )?,
        enforcing_consecutive_local_origin_failure: percent(
            enforcing_consecutive_local_origin_failure,
            100,
            "enforcing_consecutive_local_origin_failure",
        )?,
        enforcing_success_rate: percent(enforcing_success_rate, 100, "enforcing_success_rate")?,
        enforcing_local_origin_success_rate: percent(
            enforcing_local_origin_success_rate,
            100,
            "enforcing_local_origin_success_rate",
        )?,
        enforcing_failure_percentage: percent(
            enforcing_failure_percentage,
            0,
            "enforcing_failure_percentage",
        )?,
        enforcing_failure_percentage_local_origin: percent(
            enforcing_failure_percentage_local_origin,
            0,
            "enforcing_failure_percentage_local_origin",
        )?,
        success_rate_minimum_hosts: u(success_rate_minimum_hosts, 5),
        success_rate_request_volume: u(success_rate_request_volume, 100),
        success_rate_stdev_factor: u(success_rate_stdev_factor, 1900),
        failure_percentage_threshold: percent(
            failure_percentage_threshold,
            85,
            "failure_percentage_threshold",
        )?,
        failure_percentage_minimum_hosts: u(failure_percentage_minimum_hosts, 5),
        failure_percentage_request_volume: u(failure_percentage_request_volume, 50),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        successful_active_health_check_uneject_host: successful_active_health_check_uneject_host
            .as_ref()
            .is_none_or(|v| v.value),
        always_eject_one_host: always_eject_one_host.as_ref().is_some_and(|v| v.value),
        detect_degraded_hosts: detect_degraded_hosts.as_ref().is_some_and(|v| v.value),
    })))
}
