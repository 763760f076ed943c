//! `envoy.filters.network.ratelimit`: a new connection's descriptors (their values formatted
//! with what is known of the connection when it opens) go to the rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, over the worker's pools to the
//! configured cluster) before the connection is served. `OVER_LIMIT` closes it; a failed call
//! lets it on unless `failure_mode_deny`. The runtime keys `ratelimit.tcp_filter_enabled` and
//! `ratelimit.tcp_filter_enforcing` (percent, default 100) turn the call and the closing off, as
//! in Envoy. Stats are `ratelimit.<stat_prefix>.{total, ok, over_limit, error,
//! failure_mode_allowed, cx_closed}` and the gauge `active`.

use std::rc::Rc;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3 as pb;
use prost::Message;

use crate::access_log::Render;
use crate::config::model::NetworkRateLimit;
use crate::stats::{Counter, Gauge, Shard};
use crate::stream_info::StreamInfo;
use crate::worker::Worker;

const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Where the service's `dynamic_metadata` goes in the connection's.
pub const METADATA_NAMESPACE: &str = "envoy.filters.network.ratelimit";

/// One worker's copy of the filter.
#[derive(Debug)]
pub struct Gate {
    config: Arc<NetworkRateLimit>,
    total: Counter,
    ok: Counter,
    over_limit: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
    cx_closed: Counter,
    active: Gauge,
}

/// What the filter decided for a connection.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Served, with the service's `dynamic_metadata` when it sent some.
    Admit(Option<skiff_config::metadata::Struct>),
    /// Closed.
    Close,
}

impl Gate {
    /// The filter for `config` on a worker whose stats are in `shard`.
    pub fn new(config: &Arc<NetworkRateLimit>, shard: &Shard) -> Self {
        let c = |n: &str| shard.counter(&format!("ratelimit.{}.{n}", config.stat_prefix));
        Gate {
            config: config.clone(),
            total: c("total"),
            ok: c("ok"),
            over_limit: c("over_limit"),
            error: c("error"),
            failure_mode_allowed: c("failure_mode_allowed"),
            cx_closed: c("cx_closed"),
            active: shard.gauge(&format!("ratelimit.{}.active", config.stat_prefix)),
        }
    }

    /// The service's request for a connection described by `info`.
    fn request(&self, info: &StreamInfo) -> pb::RateLimitRequest {
        let mut value = String::new();
        pb::RateLimitRequest {
            domain: self.config.domain.clone(),
            descriptors: self
                .config
                .descriptors
                .iter()
                .map(|entries| RateLimitDescriptor {
                    entries: entries
                        .iter()
                        .map(|(key, format)| {
                            value.clear();
                            format.render(info, &mut value);
                            Entry {
                                key: key.clone(),
                                value: value.clone(),
                            }
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        }
    }

    /// Asks the service about a new connection (described by `info` as it is when it opens)
    /// and decides.
    pub async fn check(&self, worker: &Rc<Worker>, info: &StreamInfo) -> Decision {
        let runtime = crate::runtime::snapshot();
        let percent = |key: &str| runtime.integer(key, 100) > fastrand::u64(..100);
        if !percent("ratelimit.tcp_filter_enabled") {
            return Decision::Admit(None);
        }
        self.total.inc();
        self.active.inc();
        // The gauge comes down however the wait ends (the connection may close under it).
        struct Active<'a>(&'a Gauge);
        impl Drop for Active<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let active = Active(&self.active);
        let request = self.request(info);
        let c = &self.config;
        let answer = match worker.clusters.get(&c.cluster) {
            Some(service) => crate::http::grpc_call::unary(
                worker,
                &service,
                (&c.authority, &c.metadata),
                METHOD,
                &request.encode_to_vec(),
                c.timeout,
            )
            .await
            .and_then(|b| pb::RateLimitResponse::decode(b).map_err(|e| e.to_string())),
            None => Err(format!("cluster '{}' not found", c.cluster)),
        };
        drop(active);
        let over = pb::rate_limit_response::Code::OverLimit as i32;
        match answer {
            Ok(r) => {
                let metadata = r
                    .dynamic_metadata
                    .as_ref()
                    .filter(|m| !m.fields.is_empty())
                    .map(skiff_config::metadata::struct_from_pb);
                if r.overall_code == over {
                    self.over_limit.inc();
                    let runtime = crate::runtime::snapshot();
                    if runtime.integer("ratelimit.tcp_filter_enforcing", 100) > fastrand::u64(..100)
                    {
                        self.cx_closed.inc();
                        return Decision::Close;
                    }
                } else {
                    self.ok.inc();
                }
                Decision::Admit(metadata)
            }
            Err(e) => {
                tracing::debug!(error = %e, "network rate limit service call failed");
                self.error.inc();
                if c.failure_mode_deny {
                    self.cx_closed.inc();
                    Decision::Close
                } else {
                    self.failure_mode_allowed.inc();
                    Decision::Admit(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_values_are_formatted_with_the_connection() {
        let config = Arc::new(NetworkRateLimit {
            stat_prefix: "p".into(),
            domain: "d".into(),
            descriptors: vec![vec![
                (
                    "k".into(),
                    crate::access_log::Format::parse("fixed").unwrap(),
                ),
                (
                    "addr".into(),
                    crate::access_log::Format::parse(
                        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%REQUESTED_SERVER_NAME%",
                    )
                    .unwrap(),
                ),
            ]],
            timeout: None,
            failure_mode_deny: false,
            cluster: "rls".into(),
            authority: "rls".into(),
            metadata: Default::default(),
        });
        let shard = Shard::default();
        let gate = Gate::new(&config, &shard);
        let info = StreamInfo::new(
            "10.1.2.3:5555".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let r = gate.request(&info);
        assert_eq!(r.domain, "d");
        let entries: Vec<_> = r.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(entries, [("k", "fixed"), ("addr", "10.1.2.3:-")]);
    }
}
