//! A cluster's load balancer: `lb_policy` with `lb_config`, or the `load_balancing_policy`
//! extension form; and `common_lb_config`.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3 as common;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::{
    least_request::SelectionMethod, LeastRequest,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::random::v3::Random;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;

use super::super::model::{DiscoveryType, LbPolicy};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;

const ROUND_ROBIN: &str = "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST: &str =
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const RANDOM: &str = "envoy.extensions.load_balancing_policies.random.v3.Random";

/// The cluster's load balancer, checked against its discovery type as Envoy pairs them.
pub(super) fn lb_policy(
    c: &cluster::Cluster,
    discovery: DiscoveryType,
    path: &str,
) -> Result<(LbPolicy, bool), ConfigError> {
    // As Envoy: load_balancing_policy, when set, is the policy whatever lb_policy says.
    if let Some(p) = &c.load_balancing_policy {
        return extension(p, &format!("{path}.load_balancing_policy"));
    }
    Ok((legacy(c, discovery, path)?, false))
}

/// `lb_policy` with `lb_config`.
fn legacy(
    c: &cluster::Cluster,
    discovery: DiscoveryType,
    path: &str,
) -> Result<LbPolicy, ConfigError> {
    use cluster::cluster::{LbConfig, LbPolicy as P};
    let policy = match P::try_from(c.lb_policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        },
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::ClusterProvided) => LbPolicy::ClusterProvided,
        Ok(P::LoadBalancingPolicyConfig) => {
            return Err(ConfigError::new(
                format!("{path}.load_balancing_policy"),
                "required with lb_policy LOAD_BALANCING_POLICY_CONFIG",
            ))
        }
        Ok(other) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!(
                "unsupported: {} (only ROUND_ROBIN, LEAST_REQUEST, RANDOM and CLUSTER_PROVIDED)",
                other.as_str_name()
            ),
            ))
        }
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!("{} is not a policy", c.lb_policy),
            ))
        }
    };
    let policy = match (&c.lb_config, policy) {
        (Some(LbConfig::LeastRequestLbConfig(l)), LbPolicy::LeastRequest { .. }) => {
            let lpath = format!("{path}.least_request_lb_config");
            if l.slow_start_config.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{lpath}.slow_start_config"
                )));
            }
            least_request(
                l.choice_count.as_ref().map(|v| v.value),
                l.active_request_bias.as_ref().map(|v| v.default_value),
                &lpath,
            )?
        }
        (Some(LbConfig::RoundRobinLbConfig(r)), LbPolicy::RoundRobin) => {
            if r.slow_start_config.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.round_robin_lb_config.slow_start_config"
                )));
            }
            LbPolicy::RoundRobin
        }
        (Some(LbConfig::OriginalDstLbConfig(_)), p) => p,
        (Some(LbConfig::LeastRequestLbConfig(_)), p)
        | (Some(LbConfig::RoundRobinLbConfig(_)), p) => {
            // Envoy ignores the config of another policy; so does skiff.
            p
        }
        (Some(LbConfig::RingHashLbConfig(_)), _) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.ring_hash_lb_config"
            )))
        }
        (Some(LbConfig::MaglevLbConfig(_)), _) => {
            return Err(ConfigError::unsupported(format!("{path}.maglev_lb_config")))
        }
        (None, p) => p,
    };
    // Envoy's pairing: ORIGINAL_DST clusters take CLUSTER_PROVIDED, the others a real policy.
    let ok = match discovery {
        DiscoveryType::OriginalDst => policy == LbPolicy::ClusterProvided,
        _ => policy != LbPolicy::ClusterProvided,
    };
    if !ok {
        let want = match discovery {
            DiscoveryType::OriginalDst => "CLUSTER_PROVIDED (required by ORIGINAL_DST)",
            _ => "ROUND_ROBIN, LEAST_REQUEST or RANDOM",
        };
        let name = cluster::cluster::LbPolicy::try_from(c.lb_policy)
            .map(|p| p.as_str_name())
            .unwrap_or("unknown");
        return Err(ConfigError::new(
            format!("{path}.lb_policy"),
            format!("unsupported: {name} (only {want})"),
        ));
    }
    Ok(policy)
}

fn least_request(
    choice_count: Option<u32>,
    bias: Option<f64>,
    path: &str,
) -> Result<LbPolicy, ConfigError> {
    let choice_count = choice_count.unwrap_or(2);
    if choice_count < 2 {
        return Err(ConfigError::new(
            format!("{path}.choice_count"),
            "must be at least 2",
        ));
    }
    let active_request_bias = bias.unwrap_or(1.0);
    if !(0.0..).contains(&active_request_bias) || !active_request_bias.is_finite() {
        return Err(ConfigError::new(
            format!("{path}.active_request_bias"),
            "must be a number of at least 0",
        ));
    }
    Ok(LbPolicy::LeastRequest {
        choice_count,
        active_request_bias,
    })
}

/// `load_balancing_policy`: Envoy uses the first policy of the list it knows; skiff takes the
/// first one too and refuses it, by path, when it is not one skiff runs.
#[allow(deprecated)]
fn extension(
    p: &cluster::LoadBalancingPolicy,
    path: &str,
) -> Result<(LbPolicy, bool), ConfigError> {
    let Some(first) = p.policies.first() else {
        return Err(ConfigError::new(format!("{path}.policies"), "required"));
    };
    let ppath = format!("{path}.policies[0].typed_extension_config");
    let Some(any) = first
        .typed_extension_config
        .as_ref()
        .and_then(|t| t.typed_config.as_ref())
    else {
        return Err(ConfigError::new(
            format!("{ppath}.typed_config"),
            "required",
        ));
    };
    let tpath = format!("{ppath}.typed_config");
    match type_name(&any.type_url) {
        ROUND_ROBIN => {
            let r: RoundRobin = unpack(any, &tpath)?;
            if r.slow_start_config.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.slow_start_config"
                )));
            }
            Ok((LbPolicy::RoundRobin, locality(&r.locality_lb_config)))
        }
        LEAST_REQUEST => {
            let l: LeastRequest = unpack(any, &tpath)?;
            if l.slow_start_config.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.slow_start_config"
                )));
            }
            if l.enable_full_scan.as_ref().is_some_and(|v| v.value)
                || l.selection_method == SelectionMethod::FullScan as i32
            {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.selection_method"
                )));
            }
            Ok((
                least_request(
                    l.choice_count.as_ref().map(|v| v.value),
                    l.active_request_bias.as_ref().map(|v| v.default_value),
                    &tpath,
                )?,
                locality(&l.locality_lb_config),
            ))
        }
        RANDOM => {
            let r: Random = unpack(any, &tpath)?;
            Ok((LbPolicy::Random, locality(&r.locality_lb_config)))
        }
        other => Err(ConfigError::new(
            tpath,
            format!("unsupported load balancing policy '{other}' (only round_robin, least_request and random)"),
        )),
    }
}

/// `locality_lb_config`: whether it asks for locality-weighted balancing. Zone-aware routing
/// needs the bootstrap's `cluster_manager.local_cluster_name`, which skiff refuses; without it
/// Envoy routes as if it were not set.
fn locality(l: &Option<common::LocalityLbConfig>) -> bool {
    use common::locality_lb_config::LocalityConfigSpecifier as S;
    matches!(
        l.as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref()),
        Some(S::LocalityWeightedLbConfig(_))
    )
}

/// Whether `common_lb_config` asks for locality-weighted balancing.
pub(super) fn common_locality_weighted(c: &cluster::Cluster) -> bool {
    use cluster::cluster::common_lb_config::LocalityConfigSpecifier as S;
    matches!(
        c.common_lb_config
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref()),
        Some(S::LocalityWeightedLbConfig(_))
    )
}

/// `common_lb_config`: the panic threshold in percent (default 50).
pub(super) fn common_lb_config(c: &cluster::Cluster, path: &str) -> Result<f64, ConfigError> {
    let Some(common) = &c.common_lb_config else {
        return Ok(50.0);
    };
    let cpath = format!("{path}.common_lb_config");
    let cluster::cluster::CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = common;
    let refuse = |set: bool, field: &str| {
        if set {
            Err(ConfigError::unsupported(format!("{cpath}.{field}")))
        } else {
            Ok(())
        }
    };
    refuse(update_merge_window.is_some(), "update_merge_window")?;
    refuse(
        *ignore_new_hosts_until_first_hc,
        "ignore_new_hosts_until_first_hc",
    )?;
    refuse(
        *close_connections_on_host_set_change,
        "close_connections_on_host_set_change",
    )?;
    refuse(
        consistent_hashing_lb_config.is_some(),
        "consistent_hashing_lb_config",
    )?;
    refuse(override_host_status.is_some(), "override_host_status")?;
    // Read by `common_locality_weighted`; zone-aware routing has no effect (see `locality`).
    let _ = locality_config_specifier;
    let threshold = healthy_panic_threshold.as_ref().map_or(50.0, |p| p.value);
    if !(0.0..=100.0).contains(&threshold) {
        return Err(ConfigError::new(
            format!("{cpath}.healthy_panic_threshold"),
            "must be between 0 and 100",
        ));
    }
    Ok(threshold)
}
