//! A cluster's load balancer: `lb_policy` with `lb_config`, or the `load_balancing_policy`
//! extension form; and `common_lb_config`.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3 as common;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::{
    least_request::SelectionMethod, LeastRequest,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::maglev::v3 as maglev;
use envoy_types::pb::envoy::extensions::load_balancing_policies::random::v3::Random;
use envoy_types::pb::envoy::extensions::load_balancing_policies::ring_hash::v3 as ring_hash;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;

use super::super::model::{self, ConsistentHashing, DiscoveryType, LbPolicy, SlowStart, ZoneAware};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;

const ROUND_ROBIN: &str = "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST: &str =
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const RANDOM: &str = "envoy.extensions.load_balancing_policies.random.v3.Random";
const RING_HASH: &str = "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";
const MAGLEV: &str = "envoy.extensions.load_balancing_policies.maglev.v3.Maglev";
const WRR_LOCALITY: &str = "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality";
const CLIENT_SIDE_WRR: &str = "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin";
const OVERRIDE_HOST: &str =
    "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost";

/// Envoy's largest ring (`minimum_ring_size` and `maximum_ring_size` at most this).
const MAX_RING: u64 = 8 * 1024 * 1024;
/// Envoy's largest Maglev table.
const MAX_MAGLEV: u64 = 5_000_011;

/// `RING_HASH`'s sizes, checked as Envoy checks them.
fn ring_hash(
    min: Option<u64>,
    max: Option<u64>,
    murmur: bool,
    path: &str,
) -> Result<LbPolicy, ConfigError> {
    let (min_ring, max_ring) = (min.unwrap_or(1024), max.unwrap_or(MAX_RING));
    for (v, field) in [
        (min_ring, "minimum_ring_size"),
        (max_ring, "maximum_ring_size"),
    ] {
        if v > MAX_RING {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("must be at most {MAX_RING}"),
            ));
        }
    }
    if min_ring > max_ring {
        return Err(ConfigError::new(
            path,
            format!("ring hash: minimum_ring_size ({min_ring}) > maximum_ring_size ({max_ring})"),
        ));
    }
    Ok(LbPolicy::RingHash {
        min_ring,
        max_ring,
        murmur,
    })
}

/// `MAGLEV`'s table size: a prime, at most 5000011 (65537 by default).
fn maglev(size: Option<u64>, path: &str) -> Result<LbPolicy, ConfigError> {
    let table_size = size.unwrap_or(65537);
    if table_size > MAX_MAGLEV {
        return Err(ConfigError::new(
            format!("{path}.table_size"),
            format!("must be at most {MAX_MAGLEV}"),
        ));
    }
    let prime = table_size >= 2
        && (2..)
            .take_while(|d| d * d <= table_size)
            .all(|d| !table_size.is_multiple_of(d));
    if !prime {
        return Err(ConfigError::new(
            format!("{path}.table_size"),
            "The table size of maglev must be prime number",
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

/// The hashing policies' host keys and bounded loads: `consistent_hashing_lb_config` when set,
/// else the ring hash's own (deprecated) fields, as Envoy reads them.
fn consistent_hashing(
    use_hostname: bool,
    balance_factor: Option<u32>,
    common: Option<&common::ConsistentHashingLbConfig>,
    path: &str,
) -> Result<ConsistentHashing, ConfigError> {
    match common {
        Some(c) => checked_hashing(
            c.use_hostname_for_hashing,
            c.hash_balance_factor.as_ref().map(|v| v.value),
            &format!("{path}.consistent_hashing_lb_config"),
        ),
        None => checked_hashing(use_hostname, balance_factor, path),
    }
}

/// `hash_balance_factor` is at least 100 when set (Envoy's validation).
fn checked_hashing(
    use_hostname: bool,
    balance_factor: Option<u32>,
    path: &str,
) -> Result<ConsistentHashing, ConfigError> {
    if let Some(f) = balance_factor.filter(|f| *f < 100) {
        return Err(ConfigError::new(
            format!("{path}.hash_balance_factor"),
            format!("value must be greater than or equal to 100 (is {f})"),
        ));
    }
    Ok(ConsistentHashing {
        use_hostname,
        balance_factor: balance_factor.unwrap_or(0),
    })
}

/// `slow_start_config` (either form): none without a window, as Envoy's.
fn slow_start(
    window: Option<&envoy_types::pb::google::protobuf::Duration>,
    aggression: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeDouble>,
    min_weight_percent: Option<&envoy_types::pb::envoy::r#type::v3::Percent>,
    path: &str,
) -> Result<Option<SlowStart>, ConfigError> {
    let window = match window {
        Some(w) => super::duration(w, &format!("{path}.slow_start_window"))?,
        None => return Ok(None),
    };
    let min_weight = min_weight_percent.map_or(10.0, |p| p.value);
    if !(0.0..=100.0).contains(&min_weight) {
        return Err(ConfigError::new(
            format!("{path}.min_weight_percent.value"),
            "must be between 0 and 100",
        ));
    }
    // Envoy takes an aggression that is not above 0 as 1.0 (and logs it).
    let aggression = aggression
        .map(|a| a.default_value)
        .filter(|a| *a > 0.0 && a.is_finite())
        .unwrap_or(1.0);
    Ok((!window.is_zero()).then_some(SlowStart {
        window,
        aggression,
        min_weight: min_weight / 100.0,
    }))
}

/// What the load-balancing fields give a cluster.
pub(super) struct Lb {
    pub policy: LbPolicy,
    /// Localities picked first, by weight.
    pub locality_weighted: bool,
    pub zone: ZoneAware,
    pub slow_start: Option<SlowStart>,
    pub consistent_hashing: ConsistentHashing,
    /// `override_host`, with the policy above as its fallback.
    pub override_host: Option<Arc<model::OverrideHostPolicy>>,
    /// `client_side_weighted_round_robin` (the policy above is round robin).
    pub client_side_weights: Option<Arc<model::ClientSideWeights>>,
}

/// The cluster's load balancer, checked against its discovery type as Envoy pairs them.
pub(super) fn lb_policy(
    c: &cluster::Cluster,
    discovery: DiscoveryType,
    path: &str,
) -> Result<Lb, ConfigError> {
    // As Envoy: load_balancing_policy, when set, is the policy whatever lb_policy says.
    if let Some(p) = &c.load_balancing_policy {
        return extension(p, &format!("{path}.load_balancing_policy"));
    }
    let zone = legacy_zone_aware(c, &format!("{path}.common_lb_config"))?;
    let common_hashing = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.consistent_hashing_lb_config.as_ref());
    // Envoy's check, on this form only: hostnames are hashed in STRICT_DNS clusters.
    if common_hashing.is_some_and(|h| h.use_hostname_for_hashing)
        && discovery != DiscoveryType::StrictDns
    {
        let kind = match discovery {
            DiscoveryType::Static => "static",
            DiscoveryType::OriginalDst => "original_dst",
            DiscoveryType::Eds => "eds",
            DiscoveryType::LogicalDns => "logical_dns",
            DiscoveryType::StrictDns => "strict_dns",
        };
        return Err(ConfigError::new(
            format!("{path}.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing"),
            format!("Cannot use hostname for consistent hashing loadbalancing for cluster of type: 'envoy.cluster.{kind}'"),
        ));
    }
    let (policy, slow_start) = legacy(c, discovery, path)?;
    let consistent_hashing = match common_hashing {
        Some(h) if policy.hashed() => checked_hashing(
            h.use_hostname_for_hashing,
            h.hash_balance_factor.as_ref().map(|v| v.value),
            &format!("{path}.common_lb_config.consistent_hashing_lb_config"),
        )?,
        _ => ConsistentHashing::default(),
    };
    Ok(Lb {
        policy,
        locality_weighted: false,
        zone,
        slow_start,
        consistent_hashing,
        override_host: None,
        client_side_weights: None,
    })
}

/// `lb_policy` with `lb_config`.
fn legacy(
    c: &cluster::Cluster,
    discovery: DiscoveryType,
    path: &str,
) -> Result<(LbPolicy, Option<SlowStart>), ConfigError> {
    use cluster::cluster::{LbConfig, LbPolicy as P};
    let policy = match P::try_from(c.lb_policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        },
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::ClusterProvided) => LbPolicy::ClusterProvided,
        Ok(P::RingHash) => ring_hash(None, None, false, path)?,
        Ok(P::Maglev) => maglev(None, path)?,
        Ok(P::LoadBalancingPolicyConfig) => {
            return Err(ConfigError::new(
                format!("{path}.load_balancing_policy"),
                "required with lb_policy LOAD_BALANCING_POLICY_CONFIG",
            ))
        }
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!("{} is not a policy", c.lb_policy),
            ))
        }
    };
    let legacy_slow_start = |s: &Option<cluster::cluster::SlowStartConfig>, path: &str| {
        s.as_ref().map_or(Ok(None), |s| {
            slow_start(
                s.slow_start_window.as_ref(),
                s.aggression.as_ref(),
                s.min_weight_percent.as_ref(),
                &format!("{path}.slow_start_config"),
            )
        })
    };
    let mut slow = None;
    let policy = match (&c.lb_config, policy) {
        (Some(LbConfig::LeastRequestLbConfig(l)), LbPolicy::LeastRequest { .. }) => {
            let lpath = format!("{path}.least_request_lb_config");
            slow = legacy_slow_start(&l.slow_start_config, &lpath)?;
            least_request(
                l.choice_count.as_ref().map(|v| v.value),
                l.active_request_bias.as_ref().map(|v| v.default_value),
                &lpath,
            )?
        }
        (Some(LbConfig::RoundRobinLbConfig(r)), LbPolicy::RoundRobin) => {
            slow = legacy_slow_start(
                &r.slow_start_config,
                &format!("{path}.round_robin_lb_config"),
            )?;
            LbPolicy::RoundRobin
        }
        (Some(LbConfig::OriginalDstLbConfig(_)), p) => p,
        (Some(LbConfig::LeastRequestLbConfig(_)), p)
        | (Some(LbConfig::RoundRobinLbConfig(_)), p) => {
            // Envoy ignores the config of another policy; so does skiff.
            p
        }
        (Some(LbConfig::RingHashLbConfig(r)), LbPolicy::RingHash { .. }) => {
            use cluster::cluster::ring_hash_lb_config::HashFunction as F;
            let rpath = format!("{path}.ring_hash_lb_config");
            let murmur = match F::try_from(r.hash_function) {
                Ok(F::XxHash) => false,
                Ok(F::MurmurHash2) => true,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{rpath}.hash_function"),
                        "unknown value",
                    ))
                }
            };
            ring_hash(
                r.minimum_ring_size.as_ref().map(|v| v.value),
                r.maximum_ring_size.as_ref().map(|v| v.value),
                murmur,
                &rpath,
            )?
        }
        (Some(LbConfig::MaglevLbConfig(m)), LbPolicy::Maglev { .. }) => maglev(
            m.table_size.as_ref().map(|v| v.value),
            &format!("{path}.maglev_lb_config"),
        )?,
        (Some(LbConfig::RingHashLbConfig(_)), p) | (Some(LbConfig::MaglevLbConfig(_)), p) => p,
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
            _ => "ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV",
        };
        let name = cluster::cluster::LbPolicy::try_from(c.lb_policy)
            .map(|p| p.as_str_name())
            .unwrap_or("unknown");
        return Err(ConfigError::new(
            format!("{path}.lb_policy"),
            format!("unsupported: {name} (only {want})"),
        ));
    }
    Ok((policy, slow))
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
fn extension(p: &cluster::LoadBalancingPolicy, path: &str) -> Result<Lb, ConfigError> {
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
    let common_slow_start = |s: &Option<common::SlowStartConfig>| {
        s.as_ref().map_or(Ok(None), |s| {
            slow_start(
                s.slow_start_window.as_ref(),
                s.aggression.as_ref(),
                s.min_weight_percent.as_ref(),
                &format!("{tpath}.slow_start_config"),
            )
        })
    };
    let lb = |policy, (locality_weighted, zone), slow_start, consistent_hashing| Lb {
        policy,
        locality_weighted,
        zone,
        slow_start,
        consistent_hashing,
        override_host: None,
        client_side_weights: None,
    };
    match type_name(&any.type_url) {
        ROUND_ROBIN => {
            let r: RoundRobin = unpack(any, &tpath)?;
            Ok(lb(
                LbPolicy::RoundRobin,
                locality(&r.locality_lb_config, &tpath)?,
                common_slow_start(&r.slow_start_config)?,
                ConsistentHashing::default(),
            ))
        }
        LEAST_REQUEST => {
            let l: LeastRequest = unpack(any, &tpath)?;
            if l.enable_full_scan.as_ref().is_some_and(|v| v.value)
                || l.selection_method == SelectionMethod::FullScan as i32
            {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.selection_method"
                )));
            }
            Ok(lb(
                least_request(
                    l.choice_count.as_ref().map(|v| v.value),
                    l.active_request_bias.as_ref().map(|v| v.default_value),
                    &tpath,
                )?,
                locality(&l.locality_lb_config, &tpath)?,
                common_slow_start(&l.slow_start_config)?,
                ConsistentHashing::default(),
            ))
        }
        RANDOM => {
            let r: Random = unpack(any, &tpath)?;
            Ok(lb(
                LbPolicy::Random,
                locality(&r.locality_lb_config, &tpath)?,
                None,
                ConsistentHashing::default(),
            ))
        }
        RING_HASH => {
            use ring_hash::ring_hash::HashFunction as F;
            let r: ring_hash::RingHash = unpack(any, &tpath)?;
            let hashing = consistent_hashing(
                r.use_hostname_for_hashing,
                r.hash_balance_factor.as_ref().map(|v| v.value),
                r.consistent_hashing_lb_config.as_ref(),
                &tpath,
            )?;
            let murmur = match F::try_from(r.hash_function) {
                Ok(F::DefaultHash | F::XxHash) => false,
                Ok(F::MurmurHash2) => true,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{tpath}.hash_function"),
                        "unknown value",
                    ))
                }
            };
            let policy = ring_hash(
                r.minimum_ring_size.as_ref().map(|v| v.value),
                r.maximum_ring_size.as_ref().map(|v| v.value),
                murmur,
                &tpath,
            )?;
            let weighted = r.locality_weighted_lb_config.is_some();
            Ok(lb(policy, (weighted, ZoneAware::default()), None, hashing))
        }
        MAGLEV => {
            let m: maglev::Maglev = unpack(any, &tpath)?;
            let hashing = consistent_hashing(
                false,
                None,
                m.consistent_hashing_lb_config.as_ref(),
                &tpath,
            )?;
            Ok(lb(
                maglev(m.table_size.as_ref().map(|v| v.value), &tpath)?,
                (m.locality_weighted_lb_config.is_some(), ZoneAware::default()),
                None,
                hashing,
            ))
        }
        // Envoy takes only client-side weighted round robin (from ORCA load reports) inside,
        // which skiff does not have.
        WRR_LOCALITY => {
            use envoy_types::pb::envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality;
            let w: WrrLocality = unpack(any, &tpath)?;
            let inner = w
                .endpoint_picking_policy
                .as_ref()
                .and_then(|p| p.policies.first())
                .and_then(|p| p.typed_extension_config.as_ref())
                .and_then(|t| t.typed_config.as_ref())
                .map(|a| type_name(&a.type_url));
            let epath = format!("{tpath}.endpoint_picking_policy");
            match inner {
                Some(CLIENT_SIDE_WRR) => {
                    let inner = w.endpoint_picking_policy.as_ref().ok_or_else(|| {
                        ConfigError::new(epath.clone(), "required")
                    })?;
                    let mut inner = extension(inner, &epath)?;
                    inner.locality_weighted = true;
                    Ok(inner)
                }
                _ => Err(ConfigError::new(
                    epath,
                    "Currently WrrLocalityLoadBalancer only supports ClientSideWeightedRoundRobinLoadBalancer as its endpoint picking policy.",
                )),
            }
        }
        CLIENT_SIDE_WRR => {
            use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
            let c: ClientSideWeightedRoundRobin = unpack(any, &tpath)?;
            // Out-of-band reports need an ORCA stream to each host.
            if c.enable_oob_load_report.as_ref().is_some_and(|v| v.value) {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.enable_oob_load_report"
                )));
            }
            let period = |d: &Option<envoy_types::pb::google::protobuf::Duration>,
                          default: Duration,
                          field: &str| {
                d.as_ref().map_or(Ok(default), |d| {
                    super::duration(d, &format!("{tpath}.{field}"))
                })
            };
            let penalty = c.error_utilization_penalty.as_ref().map_or(1.0, |v| v.value);
            if penalty < 0.0 {
                return Err(ConfigError::new(
                    format!("{tpath}.error_utilization_penalty"),
                    "value must be greater than or equal to 0",
                ));
            }
            let weights = model::ClientSideWeights {
                blackout_period: period(&c.blackout_period, Duration::from_secs(10), "blackout_period")?,
                weight_expiration_period: period(
                    &c.weight_expiration_period,
                    Duration::from_secs(180),
                    "weight_expiration_period",
                )?,
                weight_update_period: period(
                    &c.weight_update_period,
                    Duration::from_secs(1),
                    "weight_update_period",
                )?
                .max(Duration::from_millis(100)),
                error_utilization_penalty: f64::from(penalty),
                metric_names: c.metric_names_for_computing_utilization.clone(),
            };
            let mut out = lb(
                LbPolicy::RoundRobin,
                (false, ZoneAware::default()),
                common_slow_start(&c.slow_start_config)?,
                ConsistentHashing::default(),
            );
            out.client_side_weights = Some(Arc::new(weights));
            Ok(out)
        }
        OVERRIDE_HOST => {
            use envoy_types::pb::envoy::extensions::load_balancing_policies::override_host::v3::OverrideHost;
            let o: OverrideHost = unpack(any, &tpath)?;
            if o.selected_host_key.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.selected_host_key"
                )));
            }
            if o.override_host_sources.is_empty() {
                return Err(ConfigError::new(
                    format!("{tpath}.override_host_sources"),
                    "value must contain at least 1 item(s)",
                ));
            }
            let mut sources = Vec::new();
            for (i, s) in o.override_host_sources.iter().enumerate() {
                let spath = format!("{tpath}.override_host_sources[{i}]");
                let source = match (s.header.is_empty(), &s.metadata) {
                    (false, None) => model::OverrideHostSource::Header(s.header.to_ascii_lowercase()),
                    (true, Some(m)) => {
                        use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
                        let mut path = Vec::new();
                        for (j, p) in m.path.iter().enumerate() {
                            match &p.segment {
                                Some(Segment::Key(k)) => path.push(k.clone()),
                                _ => {
                                    return Err(ConfigError::unsupported(format!(
                                        "{spath}.metadata.path[{j}]"
                                    )))
                                }
                            }
                        }
                        model::OverrideHostSource::Metadata {
                            namespace: m.key.clone(),
                            path,
                        }
                    }
                    (true, None) => return Err(ConfigError::new(spath, "Empty override source")),
                    (false, Some(_)) => {
                        return Err(ConfigError::new(spath, "Only one override source must be set"))
                    }
                };
                sources.push(source);
            }
            let fallback = o.fallback_policy.as_ref().ok_or_else(|| {
                ConfigError::new(format!("{tpath}.fallback_policy"), "required")
            })?;
            let mut inner = extension(fallback, &format!("{tpath}.fallback_policy"))?;
            if inner.override_host.is_some() {
                return Err(ConfigError::unsupported(format!("{tpath}.fallback_policy")));
            }
            inner.override_host = Some(Arc::new(model::OverrideHostPolicy { sources }));
            Ok(inner)
        }
        other => Err(ConfigError::new(
            tpath,
            format!("unsupported load balancing policy '{other}' (only round_robin, least_request, random, ring_hash, maglev, client_side_weighted_round_robin, wrr_locality and override_host)"),
        )),
    }
}

/// `locality_lb_config`: whether it asks for locality-weighted balancing, and its
/// `zone_aware_lb_config` (which takes effect when the bootstrap names a local cluster).
fn locality(
    l: &Option<common::LocalityLbConfig>,
    path: &str,
) -> Result<(bool, ZoneAware), ConfigError> {
    use common::locality_lb_config::zone_aware_lb_config::LocalityBasis;
    use common::locality_lb_config::LocalityConfigSpecifier as S;
    match l
        .as_ref()
        .and_then(|l| l.locality_config_specifier.as_ref())
    {
        Some(S::LocalityWeightedLbConfig(_)) => Ok((true, ZoneAware::default())),
        Some(S::ZoneAwareLbConfig(z)) => {
            let zpath = format!("{path}.locality_lb_config.zone_aware_lb_config");
            let by_weight = match LocalityBasis::try_from(z.locality_basis) {
                Ok(LocalityBasis::HealthyHostsNum) => false,
                Ok(LocalityBasis::HealthyHostsWeight) => true,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{zpath}.locality_basis"),
                        "unknown value",
                    ))
                }
            };
            #[allow(deprecated)] // force_locality_direct_routing: deprecated, still read by 1.40
            let force_local_zone = match &z.force_local_zone {
                Some(f) => Some(f.min_size.as_ref().map_or(1, |v| u64::from(v.value))),
                None => z.force_locality_direct_routing.then_some(1),
            };
            Ok((
                false,
                ZoneAware {
                    routing_enabled: routing_enabled(z.routing_enabled.as_ref(), &zpath)?,
                    min_cluster_size: z.min_cluster_size.as_ref().map_or(6, |v| v.value),
                    fail_traffic_on_panic: z.fail_traffic_on_panic,
                    force_local_zone,
                    by_weight,
                },
            ))
        }
        None => Ok((false, ZoneAware::default())),
    }
}

/// `routing_enabled`, a percentage rounded to a whole number as Envoy rounds it (default 100).
fn routing_enabled(
    p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>,
    path: &str,
) -> Result<u64, ConfigError> {
    let Some(p) = p else { return Ok(100) };
    if !(0.0..=100.0).contains(&p.value) {
        return Err(ConfigError::new(
            format!("{path}.routing_enabled.value"),
            "must be between 0 and 100",
        ));
    }
    Ok(p.value.round() as u64)
}

/// `common_lb_config.zone_aware_lb_config`, which the `lb_policy` form reads.
fn legacy_zone_aware(c: &cluster::Cluster, path: &str) -> Result<ZoneAware, ConfigError> {
    use cluster::cluster::common_lb_config::LocalityConfigSpecifier as S;
    match c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.locality_config_specifier.as_ref())
    {
        Some(S::ZoneAwareLbConfig(z)) => {
            let zpath = format!("{path}.zone_aware_lb_config");
            Ok(ZoneAware {
                routing_enabled: routing_enabled(z.routing_enabled.as_ref(), &zpath)?,
                min_cluster_size: z.min_cluster_size.as_ref().map_or(6, |v| v.value),
                fail_traffic_on_panic: z.fail_traffic_on_panic,
                ..ZoneAware::default()
            })
        }
        _ => Ok(ZoneAware::default()),
    }
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

/// `common_lb_config.override_host_status`: Envoy's default without it; an empty set lets no
/// host be named.
pub(super) fn override_host_status(
    c: &cluster::Cluster,
    path: &str,
) -> Result<model::HealthStatusSet, ConfigError> {
    let Some(set) = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.override_host_status.as_ref())
    else {
        return Ok(model::HealthStatusSet::default());
    };
    let mut mask = 0u8;
    for (i, s) in set.statuses.iter().enumerate() {
        match u8::try_from(*s).ok().filter(|s| *s <= 5) {
            Some(s) => mask |= 1 << s,
            None => {
                return Err(ConfigError::new(
                    format!("{path}.common_lb_config.override_host_status.statuses[{i}]"),
                    format!("{s} is not a defined HealthStatus"),
                ))
            }
        }
    }
    Ok(model::HealthStatusSet(mask))
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
    // Read by the cluster's translation (ignore_new_hosts_until_first_hc does nothing without
    // health checks, as in Envoy).
    let _ = (
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
    );
    // Read by `lb_policy` for RING_HASH and MAGLEV (the other policies ignore it, as Envoy's).
    let _ = consistent_hashing_lb_config;
    // override_host_status: read by `override_host_status`.
    let _ = override_host_status;
    // Read by `common_locality_weighted` and `legacy_zone_aware`.
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
