//! `envoy.filters.http.rbac`: each request judged by the filter's rules (or its route's
//! `RBACPerRoute`), a denied one answered 403 `RBAC: access denied`; shadow rules judged and
//! counted only. Stats as Envoy's: `http.<prefix>.rbac.<rules_stat_prefix>{allowed,denied}`
//! and `…<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;

use crate::http::filter::{HeadersStatus, HttpFilter, StreamContext};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};
use skiff_config::metadata::Value;
use skiff_config::rbac::{Engine, HttpRbac, Peer, Request};

#[derive(Debug)]
struct Stats {
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
}

/// The filter of one connection manager on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<HttpRbac>,
    stats: Rc<Stats>,
    /// The metadata keys of the filter's own configuration's verdicts.
    keys: Rc<[[String; 2]; 2]>,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<HttpRbac>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let c = |rules_prefix: &str, n: &str| {
            shard.counter(&format!(
                "http.{stat_prefix}.rbac.{}",
                stat_prefix_join(rules_prefix, n)
            ))
        };
        let stats = Stats {
            allowed: c(&config.rules_stat_prefix, "allowed"),
            denied: c(&config.rules_stat_prefix, "denied"),
            shadow_allowed: c(&config.shadow_stat_prefix, "shadow_allowed"),
            shadow_denied: c(&config.shadow_stat_prefix, "shadow_denied"),
        };
        Factory {
            keys: Rc::new(config.metadata_keys()),
            config,
            stats: Rc::new(stats),
        }
    }

    /// The filter for one stream, with its route's own rules if it has them.
    pub fn filter(&self, route: Option<&Arc<HttpRbac>>, cx: &StreamContext<'_>) -> RbacFilter {
        RbacFilter {
            // A route's own rules name their keys with their own prefixes.
            keys: match route {
                // Each prefix the route's rules leave empty is the filter's (Envoy's keys).
                Some(r) => Rc::new(
                    HttpRbac {
                        rules: None,
                        shadow: None,
                        rules_stat_prefix: if r.rules_stat_prefix.is_empty() {
                            self.config.rules_stat_prefix.clone()
                        } else {
                            r.rules_stat_prefix.clone()
                        },
                        shadow_stat_prefix: if r.shadow_stat_prefix.is_empty() {
                            self.config.shadow_stat_prefix.clone()
                        } else {
                            r.shadow_stat_prefix.clone()
                        },
                    }
                    .metadata_keys(),
                ),
                None => self.keys.clone(),
            },
            config: route.cloned().unwrap_or_else(|| self.config.clone()),
            stats: self.stats.clone(),
            remote: cx.remote,
            local: cx.downstream.local,
            source: cx.downstream.peer.ip(),
            source_port: cx.downstream.peer.port(),
            connection: cx.downstream.connection.clone(),
            stream_state: cx.metadata.cloned(),
        }
    }
}

/// The filter on one stream.
pub struct RbacFilter {
    config: Arc<HttpRbac>,
    /// [`HttpRbac::metadata_keys`] of `config`.
    keys: Rc<[[String; 2]; 2]>,
    stats: Rc<Stats>,
    remote: IpAddr,
    local: SocketAddr,
    source: IpAddr,
    source_port: u16,
    connection: Arc<crate::stream_info::Connection>,
    /// The stream's own filter state, when its filters may write some.
    stream_state: Option<crate::stream_info::DynamicMetadata>,
}

/// A rules prefix and a stat's name joined as Envoy's `statPrefixJoin` joins them: with a dot
/// unless the prefix is empty or ends in one.
fn stat_prefix_join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}.{name}")
    }
}

/// `rbac_access_denied_matched_policy[<policy>]`.
fn denied_details(policy: Option<&str>) -> &'static str {
    crate::http::local_reply::intern_details(format!(
        "rbac_access_denied_matched_policy[{}]",
        policy.unwrap_or("none")
    ))
}

impl RbacFilter {
    /// The verdict of `rules` on the request, and the policy that decided (borrowed from
    /// the rules: nothing is copied per request).
    fn judge<'r>(&self, rules: &'r Engine, head: &http::request::Parts) -> (bool, Option<&'r str>) {
        let tls = self.connection.tls.as_ref();
        let peer_cert = tls.and_then(|t| t.peer.as_ref());
        crate::stream_info::with_stream_data(
            self.stream_state.as_ref(),
            Some(&self.connection),
            |filter_state, metadata| {
                rules.decide(&Request {
                    view: crate::http::filter::request_view(head),
                    local: self.local,
                    source: self.source,
                    source_port: self.source_port,
                    direct_remote: self
                        .connection
                        .direct_remote
                        .map_or(self.source, |a| a.ip()),
                    remote: self.remote,
                    server_name: self.connection.requested_server_name.as_deref(),
                    peer: tls.map(|_| Peer {
                        uri_sans: peer_cert.map_or(&[][..], |c| &c.uri_sans),
                        dns_sans: peer_cert.map_or(&[][..], |c| &c.dns_sans),
                        subject: peer_cert.map_or("", |c| &c.subject),
                    }),
                    http: true,
                    filter_state,
                    metadata,
                })
            },
        )
    }
}

/// The connection's verdict under a network RBAC filter, counted in its stats.
pub struct NetworkGate {
    config: Arc<skiff_config::rbac::NetworkRbac>,
    stats: Stats,
}

impl NetworkGate {
    /// The filter's stats under `<stat_prefix>.rbac.`.
    pub fn new(config: Arc<skiff_config::rbac::NetworkRbac>, shard: &Arc<Shard>) -> Self {
        let prefix = if config.stat_prefix.ends_with('.') {
            format!("{}rbac.", config.stat_prefix)
        } else {
            format!("{}.rbac.", config.stat_prefix)
        };
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let stats = Stats {
            allowed: c("allowed"),
            denied: c("denied"),
            shadow_allowed: c(&stat_prefix_join(
                &config.shadow_stat_prefix,
                "shadow_allowed",
            )),
            shadow_denied: c(&stat_prefix_join(
                &config.shadow_stat_prefix,
                "shadow_denied",
            )),
        };
        NetworkGate { config, stats }
    }

    /// Whether the connection may go on (from `peer`, directly from `direct`, to `local`).
    pub fn admits(
        &self,
        connection: &crate::stream_info::Connection,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> bool {
        let empty = http::HeaderMap::new();
        let tls = connection.tls.as_ref();
        let peer_cert = tls.and_then(|t| t.peer.as_ref());
        let request = Request {
            view: crate::router::RequestView::get("", &empty),
            local,
            source: peer.ip(),
            source_port: peer.port(),
            direct_remote: connection.direct_remote.map_or(peer.ip(), |a| a.ip()),
            remote: peer.ip(),
            server_name: connection.requested_server_name.as_deref(),
            peer: tls.map(|_| Peer {
                uri_sans: peer_cert.map_or(&[][..], |c| &c.uri_sans),
                dns_sans: peer_cert.map_or(&[][..], |c| &c.dns_sans),
                subject: peer_cert.map_or("", |c| &c.subject),
            }),
            http: false,
            filter_state: skiff_config::filter_state::View {
                stream: None,
                connection: Some(&connection.filter_state),
            },
            metadata: None,
        };
        if let Some(shadow) = &self.config.shadow {
            match shadow.decide(&request).0 {
                true => self.stats.shadow_allowed.inc(),
                false => self.stats.shadow_denied.inc(),
            }
        }
        let Some(rules) = &self.config.rules else {
            return true;
        };
        let allowed = rules.decide(&request).0;
        match allowed {
            true => self.stats.allowed.inc(),
            false => self.stats.denied.inc(),
        }
        allowed
    }
}

impl RbacFilter {
    /// Writes the verdicts into the stream's dynamic metadata under `envoy.filters.http.rbac`,
    /// as Envoy's filter writes them (Istio's CUSTOM action reads the shadow policy there):
    /// `<prefix>{shadow,enforced}_effective_policy_id` (when a policy matched) and
    /// `<prefix>{shadow,enforced}_engine_result`.
    fn record(&self, verdicts: [Option<(bool, Option<&str>)>; 2]) {
        let Some(state) = &self.stream_state else {
            return;
        };
        state.with(|md| {
            for (keys, verdict) in self.keys.iter().zip(verdicts) {
                let Some((allowed, policy)) = verdict else {
                    continue;
                };
                if let Some(p) = policy {
                    md.set(NAMESPACE, &keys[0], Value::String(p.to_string()));
                }
                md.set(
                    NAMESPACE,
                    &keys[1],
                    Value::String(if allowed { "allowed" } else { "denied" }.to_string()),
                );
            }
        });
    }
}

/// The namespace of the verdicts in the stream's dynamic metadata.
const NAMESPACE: &str = "envoy.filters.http.rbac";

impl HttpFilter for RbacFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        let config = self.config.clone();
        let shadow = config.shadow.as_ref().map(|shadow| {
            let (allowed, policy) = self.judge(shadow, head);
            match allowed {
                true => self.stats.shadow_allowed.inc(),
                false => self.stats.shadow_denied.inc(),
            }
            (allowed, policy)
        });
        let Some(rules) = &config.rules else {
            self.record([shadow, None]);
            return HeadersStatus::Continue;
        };
        let (allowed, policy) = self.judge(rules, head);
        self.record([shadow, Some((allowed, policy))]);
        if allowed {
            self.stats.allowed.inc();
            return HeadersStatus::Continue;
        }
        self.stats.denied.inc();
        HeadersStatus::LocalReply(LocalReply {
            status: StatusCode::FORBIDDEN,
            body: Bytes::from_static(b"RBAC: access denied"),
            headers: Vec::new(),
            mutations: Vec::new(),
            flag: None,
            details: denied_details(policy),
            close: false,
            grpc_status: None,
        })
    }
}
