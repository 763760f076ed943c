//! `envoy.filters.http.fault`: delays and aborts injected into a share of the requests, as
//! Envoy's fault filter does it (Istio's fault injection). A route's own `HTTPFault` replaces the
//! filter's. The shares and values are read from the runtime (`fault.http.*`, and the
//! `fault.http.<downstream cluster>.*` keys of an internal request's
//! `x-envoy-downstream-service-cluster`), with the configuration as the default.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::HttpFault;
use crate::config::runtime::{Fraction, Values};
use crate::http::filter::{HeadersStatus, HttpFilter, Resume};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Gauge, Shard};
use crate::stream_info::ResponseFlag;

/// The faults in progress on every worker, for `max_active_faults` (Envoy's `active_faults`
/// gauge, which it reads across workers).
static ACTIVE: AtomicU64 = AtomicU64::new(0);

/// `http.<prefix>.fault.*`.
#[derive(Debug)]
struct Stats {
    prefix: String,
    aborts_injected: Counter,
    delays_injected: Counter,
    faults_overflow: Counter,
    active_faults: Gauge,
    /// Made so that the stats list Envoy's (response rate limits are refused).
    _response_rl_injected: Counter,
}

/// The filter on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<HttpFault>,
    shard: Arc<Shard>,
    stats: Rc<Stats>,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<HttpFault>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let prefix = format!("http.{stat_prefix}.fault.");
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let stats = Stats {
            aborts_injected: c("aborts_injected"),
            delays_injected: c("delays_injected"),
            faults_overflow: c("faults_overflow"),
            _response_rl_injected: c("response_rl_injected"),
            active_faults: shard.gauge(&format!("{prefix}active_faults")),
            prefix,
        };
        Factory {
            config,
            shard: shard.clone(),
            stats: Rc::new(stats),
        }
    }

    /// The filter for one stream, with the route's own configuration if it has one.
    pub fn filter(&self, route: Option<&Arc<HttpFault>>) -> FaultFilter {
        FaultFilter {
            config: route.cloned().unwrap_or_else(|| self.config.clone()),
            shard: self.shard.clone(),
            stats: self.stats.clone(),
            active: Rc::new(Cell::new(false)),
        }
    }
}

/// The filter on one stream.
pub struct FaultFilter {
    config: Arc<HttpFault>,
    shard: Arc<Shard>,
    stats: Rc<Stats>,
    /// Whether this stream counts as an active fault.
    active: Rc<Cell<bool>>,
}

impl Drop for FaultFilter {
    fn drop(&mut self) {
        if self.active.get() {
            ACTIVE.fetch_sub(1, Ordering::Relaxed);
            self.stats.active_faults.dec();
        }
    }
}

/// What one request's fault decisions read.
struct Decide<'a> {
    config: &'a HttpFault,
    values: &'a Values,
    /// `x-envoy-downstream-service-cluster`.
    cluster: Option<String>,
}

impl Decide<'_> {
    /// Envoy's `featureEnabled` on the key, or on the downstream cluster's.
    fn enabled(&self, key: &str, cluster_key: &str, p: Fraction) -> bool {
        self.values.fraction_enabled(key, p, fastrand::u64(..))
            || self.cluster.as_ref().is_some_and(|c| {
                self.values.fraction_enabled(
                    &format!("fault.http.{c}.{cluster_key}"),
                    p,
                    fastrand::u64(..),
                )
            })
    }

    fn delay(&self, headers: &http::HeaderMap) -> Option<Duration> {
        let d = self.config.delay.as_ref()?;
        let mut p = d.percentage;
        let configured = match d.fixed {
            Some(t) => Some(t),
            None => {
                // header_delay: the request names the delay, and may lower the share.
                if let Some(n) = header_number(headers, "x-envoy-fault-delay-request-percentage") {
                    p.numerator = p.numerator.min(n);
                }
                header_number(headers, "x-envoy-fault-delay-request").map(Duration::from_millis)
            }
        };
        if !self.enabled(
            &self.config.keys.delay_percent,
            "delay.fixed_delay_percent",
            p,
        ) {
            return None;
        }
        let default = configured?.as_millis() as u64;
        let mut ms = self
            .values
            .integer(&self.config.keys.delay_duration, default);
        if let Some(c) = &self.cluster {
            ms = self
                .values
                .integer(&format!("fault.http.{c}.delay.fixed_duration_ms"), ms);
        }
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    fn abort(&self) -> Option<LocalReply> {
        let a = self.config.abort.as_ref()?;
        if !self.enabled(
            &self.config.keys.abort_percent,
            "abort.abort_percent",
            a.percentage,
        ) {
            return None;
        }
        // A gRPC abort: a 200, whose gRPC status the runtime may change as the HTTP one's.
        if let Some(g) = a.grpc_status {
            let mut code = self
                .values
                .integer(&self.config.keys.abort_grpc_status, u64::from(g));
            if let Some(c) = &self.cluster {
                code = self
                    .values
                    .integer(&format!("fault.http.{c}.abort.grpc_status"), u64::from(g));
            }
            return Some(LocalReply {
                status: http::StatusCode::OK,
                grpc_status: Some(u32::try_from(code).unwrap_or(u32::MAX)),
                ..self.reply(a)
            });
        }
        let mut code = self.values.integer(
            &self.config.keys.abort_http_status,
            u64::from(a.http_status),
        );
        if let Some(c) = &self.cluster {
            code = self
                .values
                .integer(&format!("fault.http.{c}.abort.http_status"), code);
        }
        let status = u16::try_from(code)
            .ok()
            .filter(|c| (200..600).contains(c))
            .and_then(|c| http::StatusCode::from_u16(c).ok())?;
        Some(LocalReply {
            status,
            ..self.reply(a)
        })
    }

    /// The abort's reply, its status aside.
    fn reply(&self, a: &crate::config::model::FaultAbort) -> LocalReply {
        LocalReply {
            status: http::StatusCode::OK,
            body: a.body.clone(),
            headers: Vec::new(),
            mutations: Vec::new(),
            flag: Some(ResponseFlag::FaultInjected),
            details: "fault_filter_abort",
            close: false,
            grpc_status: None,
        }
    }
}

fn header_number(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl FaultFilter {
    fn too_many(&self, values: &Values) -> bool {
        let max = self.config.max_active_faults.unwrap_or(u64::MAX);
        let max = values.integer(&self.config.keys.max_active_faults, max);
        if ACTIVE.load(Ordering::Relaxed) >= max {
            self.stats.faults_overflow.inc();
            return true;
        }
        false
    }

    fn activate(&self) {
        if !self.active.replace(true) {
            ACTIVE.fetch_add(1, Ordering::Relaxed);
            self.stats.active_faults.inc();
        }
    }
}

/// Counts an injected fault (`which`: `aborts_injected` or `delays_injected`), under the
/// request's downstream cluster too unless the configuration says not to.
fn count(stats: &Stats, shard: &Shard, per_cluster: Option<&str>, which: &str, total: &Counter) {
    total.inc();
    if let Some(c) = per_cluster {
        shard.counter(&format!("{}{c}.{which}", stats.prefix)).inc();
    }
}

impl HttpFilter for FaultFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _end: bool) -> HeadersStatus {
        let config = self.config.clone();
        if config.delay.is_none() && config.abort.is_none() {
            return HeadersStatus::Continue;
        }
        if !config.downstream_nodes.is_empty() {
            let node = head
                .headers
                .get("x-envoy-downstream-service-node")
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| config.downstream_nodes.iter().any(|d| d == n)) {
                return HeadersStatus::Continue;
            }
        }
        if !crate::http::filter::headers_match(&config.headers, head) {
            return HeadersStatus::Continue;
        }
        let values = crate::runtime::snapshot();
        if self.too_many(&values) {
            return HeadersStatus::Continue;
        }
        let cluster = head
            .headers
            .get("x-envoy-downstream-service-cluster")
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let decide = Decide {
            config: &config,
            values: &values,
            cluster: cluster.clone(),
        };
        let per_cluster = cluster.clone().filter(|_| config.downstream_cluster_stats);
        if let Some(delay) = decide.delay(&head.headers) {
            self.activate();
            count(
                &self.stats,
                &self.shard,
                per_cluster.as_deref(),
                "delays_injected",
                &self.stats.delays_injected,
            );
            let stats = self.stats.clone();
            let shard = self.shard.clone();
            return HeadersStatus::StopIteration(Box::pin(async move {
                tokio::time::sleep(delay).await;
                // The abort is decided after the delay, as Envoy's `postDelayInjection` does.
                let values = crate::runtime::snapshot();
                let decide = Decide {
                    config: &config,
                    values: &values,
                    cluster: cluster.clone(),
                };
                match decide.abort() {
                    Some(reply) => {
                        count(
                            &stats,
                            &shard,
                            per_cluster.as_deref(),
                            "aborts_injected",
                            &stats.aborts_injected,
                        );
                        Resume::LocalReply(reply)
                    }
                    None => Resume::Continue,
                }
            }));
        }
        match decide.abort() {
            Some(reply) => {
                self.activate();
                count(
                    &self.stats,
                    &self.shard,
                    per_cluster.as_deref(),
                    "aborts_injected",
                    &self.stats.aborts_injected,
                );
                HeadersStatus::LocalReply(reply)
            }
            None => HeadersStatus::Continue,
        }
    }
}
