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
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<HttpRbac>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let c = |rules_prefix: &str, n: &str| {
            shard.counter(&format!("http.{stat_prefix}.rbac.{rules_prefix}{n}"))
        };
        let stats = Stats {
            allowed: c(&config.rules_stat_prefix, "allowed"),
            denied: c(&config.rules_stat_prefix, "denied"),
            shadow_allowed: c(&config.shadow_stat_prefix, "shadow_allowed"),
            shadow_denied: c(&config.shadow_stat_prefix, "shadow_denied"),
        };
        Factory {
            config,
            stats: Rc::new(stats),
        }
    }

    /// The filter for one stream, with its route's own rules if it has them.
    pub fn filter(&self, route: Option<&Arc<HttpRbac>>, cx: &StreamContext<'_>) -> RbacFilter {
        RbacFilter {
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
    stats: Rc<Stats>,
    remote: IpAddr,
    local: SocketAddr,
    source: IpAddr,
    source_port: u16,
    connection: Arc<crate::stream_info::Connection>,
    /// The stream's own filter state, when its filters may write some.
    stream_state: Option<crate::stream_info::DynamicMetadata>,
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
        crate::stream_info::with_filter_state(
            self.stream_state.as_ref(),
            Some(&self.connection),
            |filter_state| {
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
            shadow_allowed: c(&format!("{}shadow_allowed", config.shadow_stat_prefix)),
            shadow_denied: c(&format!("{}shadow_denied", config.shadow_stat_prefix)),
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

impl HttpFilter for RbacFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        if let Some(shadow) = &self.config.shadow {
            match self.judge(shadow, head).0 {
                true => self.stats.shadow_allowed.inc(),
                false => self.stats.shadow_denied.inc(),
            }
        }
        let Some(rules) = &self.config.rules else {
            return HeadersStatus::Continue;
        };
        let (allowed, policy) = self.judge(rules, head);
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
        })
    }
}
