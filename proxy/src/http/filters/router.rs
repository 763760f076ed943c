//! `envoy.filters.http.router`, the terminal filter: picks the route, the cluster and a host,
//! and forwards the stream over a pooled HTTP/1.1 or HTTP/2 connection.

use std::cell::RefCell;
use std::rc::Rc;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;

use crate::config::model::{self, OriginalDstHeader, UpstreamProtocol};
use crate::http::body::{Deadline, EndReason, ProxyBody, RequestProgress, Trailers};
use crate::http::conn_manager::authority;
use crate::http::headers::{self, names};
use crate::http::local_reply::LocalReply;
use crate::router::retry::RetryHeaders;
use crate::router::{Action, HostRewrite, PathRedirect, Redirect, Route};
use crate::stream_info::StreamInfo;
use crate::upstream::pool::{self, ConnectError, Http1Sender, Http2Stream};
use crate::upstream::{Charged, Cluster, Host, HostStats};
use crate::worker::Worker;

/// The upstream side of one stream. Counting is tied to its lifetime: however the stream ends
/// (response complete, client gone mid-flight, upstream failure), dropping it settles the
/// cluster and host stats exactly once.
#[derive(Debug)]
pub struct Upstream {
    cluster: Rc<Cluster>,
    host: Rc<Host>,
    conn: Option<Conn>,
    request: Rc<RequestProgress>,
    pub(super) failed: bool,
    finished: bool,
    /// The response head arrived: a reset from now on is reported to outlier detection.
    responded: bool,
    /// Whether `upstream_rq_time` is recorded (dynamic stats on), for an internal request or
    /// not, and for which virtual cluster too.
    timed: bool,
    internal: bool,
    /// The response said `x-envoy-upstream-canary: true`.
    canary_header: bool,
    endpoint_stats: crate::http::vcluster::EndpointStats,
    /// Its span (a tracer's `spawn_upstream_span`, the router's `start_child_span`),
    /// reported as it ends.
    pub(super) span: Option<Box<crate::trace::UpstreamSpan>>,
}

#[derive(Debug)]
pub(super) enum Conn {
    Http1(Http1Sender),
    /// A terminated CONNECT's TCP connection (the tunnel holds the socket itself).
    Tunnel(crate::stream_info::UpstreamConnection),
    Http2 {
        // Held to keep the stream's slot on its connection until the response ends.
        stream: Http2Stream,
        pump: Option<tokio::task::AbortHandle>,
    },
}

impl Conn {
    /// The connection, for the access log.
    pub(super) fn info(&self) -> crate::stream_info::UpstreamConnection {
        match self {
            Conn::Http1(sender) => sender.info(),
            Conn::Tunnel(info) => *info,
            Conn::Http2 { stream, .. } => stream.conn().info,
        }
    }
}

impl Upstream {
    /// The cluster the request went to.
    pub fn cluster(&self) -> &Rc<Cluster> {
        &self.cluster
    }

    fn start(f: &Forward<'_>, host: Rc<Host>) -> Self {
        let cluster = f.cluster.clone();
        let request = f.request.clone();
        let (timed, internal) = (f.dynamic_stats, f.internal);
        let endpoint_stats = if timed {
            f.endpoint_stats.clone()
        } else {
            Default::default()
        };
        // `upstream_rq_total` and the host's `rq_total` count when the pool gives the request
        // its connection, as in Envoy (a request refused by a circuit breaker is not counted).
        cluster.stats.upstream_rq_active.inc();
        HostStats::inc(&host.stats.rq_active);
        Upstream {
            cluster,
            host,
            conn: None,
            request,
            failed: false,
            finished: false,
            responded: false,
            timed,
            internal,
            canary_header: false,
            endpoint_stats,
            span: None,
        }
    }

    /// Ends the upstream side of the stream.
    pub fn finish(mut self, reason: EndReason) {
        self.settle(reason);
    }

    /// Ends an attempt whose response is dropped for a retry: its connection goes back to the
    /// pool when the response had no body to read.
    pub(super) fn finish_with(mut self, conn: Conn, complete: bool) {
        let reason = if complete {
            self.conn = Some(conn);
            EndReason::Complete
        } else {
            EndReason::DownstreamReset
        };
        self.failed = true;
        self.settle(reason);
    }

    /// Ends a hedged attempt another one's response overtook: reset by us, and not counted as
    /// a completed request (Envoy's).
    pub(super) fn finish_overtaken(mut self) {
        if let Some(s) = self.span.as_mut() {
            s.canceled = true;
        }
        self.failed = true;
        self.finished = true;
        self.cluster.stats.upstream_rq_active.dec();
        HostStats::dec(&self.host.stats.rq_active);
        HostStats::inc(&self.host.stats.rq_error);
    }

    /// Ends an attempt whose per-try timeout passed: the host counts a timeout, the cluster a
    /// reset of ours.
    pub(super) fn finish_try_timeout(mut self) {
        HostStats::inc(&self.host.stats.rq_timeout);
        self.failed = true;
        self.settle(EndReason::DownstreamReset);
    }

    fn settle(&mut self, reason: EndReason) {
        if self.finished {
            return;
        }
        self.finished = true;
        // The router's own resets cancel the upstream request's span (Envoy's `canceled`).
        if let Some(s) = self.span.as_mut() {
            s.canceled = matches!(
                reason,
                EndReason::DownstreamReset
                    | EndReason::Expired(_)
                    | EndReason::Overload
                    | EndReason::Timeout
            );
        }
        // upstream_rq_completed counts the responses charged (Envoy's code stats), not the
        // attempts: a retried response or an overtaken attempt is not one.
        let stats = &self.cluster.stats;
        stats.upstream_rq_active.dec();
        HostStats::dec(&self.host.stats.rq_active);
        match reason {
            EndReason::Complete if !self.failed => {
                HostStats::inc(&self.host.stats.rq_success);
                // From the end of the client's request, as Envoy's router measures it.
                if let Some(done) = self.request.done_at().filter(|_| self.timed) {
                    let took = done.elapsed();
                    stats.response_time(
                        took,
                        self.internal,
                        Charged::host(&self.host, self.canary_header),
                    );
                    for s in self.endpoint_stats.each() {
                        s.upstream_rq_time().record_ms(took);
                    }
                }
            }
            _ => HostStats::inc(&self.host.stats.rq_error),
        }
        // Envoy's router reports a reset after the response head too (before it, the retry
        // loop reported it).
        if self.responded
            && matches!(
                reason,
                EndReason::UpstreamReset | EndReason::UpstreamProtocolError
            )
        {
            if let Some(o) = &self.cluster.config().outlier {
                crate::upstream::outlier::Monitor::put_connect_failed(&self.host.stats, o);
            }
        }
        match reason {
            EndReason::Complete => {}
            EndReason::Expired(crate::http::timeouts::Expiry::UpstreamMaxDuration) => {
                stats.upstream_rq_max_duration_reached.inc()
            }
            // Envoy counts a reset it sends only on multiplexed connections: its HTTP/1.1
            // pool closes the connection uncounted (measured: 0 after an overload reset).
            EndReason::DownstreamReset | EndReason::Expired(_) | EndReason::Overload => {
                if matches!(self.conn, Some(Conn::Http2 { .. })) {
                    stats.upstream_rq_tx_reset.inc()
                }
            }
            EndReason::UpstreamReset | EndReason::UpstreamProtocolError => {
                stats.upstream_rq_rx_reset.inc()
            }
            EndReason::Timeout => {
                stats.upstream_rq_timeout.inc();
                HostStats::inc(&self.host.stats.rq_timeout);
            }
        }
        let request_done = self.request.done_at().is_some();
        match self.conn.take() {
            // Reusable only when both the request and the response went through in full.
            Some(Conn::Http1(sender)) if reason == EndReason::Complete && request_done => {
                self.host.h1.put_idle(sender)
            }
            // A reset in the middle (the client's, a timer's, the overload manager's): the
            // connection cannot carry another request, and what it still holds of this one
            // (the rest of the request body, the client's stream with it) goes now.
            Some(Conn::Http1(sender)) if reason != EndReason::Complete => sender.abandon(),
            Some(Conn::Http2 {
                pump: Some(pump), ..
            }) if !request_done => pump.abort(),
            _ => {}
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.settle(EndReason::DownstreamReset);
    }
}

/// The route a stream resolved before its filters run (Envoy's cached route): the filters
/// see it (their per-route configuration), and the router forwards by it.
pub struct Selection {
    table: Option<std::sync::Arc<crate::router::RouteTable>>,
    /// Scoped routes: the tables a reselection picks from again by the request's key.
    scoped: Option<std::sync::Arc<crate::router::scoped::ScopedTables>>,
    vhost: Option<usize>,
    route: Option<usize>,
    /// `require_tls`: the request is sent to https first.
    to_https: bool,
    /// The runtime values in force when the stream started; route matching and the weighted
    /// cluster pick read them.
    pub runtime: std::sync::Arc<crate::config::runtime::Values>,
    /// The stream's random value (Envoy's stream id).
    pub random: u64,
    /// The client presented a certificate (routes' `tls_context`).
    peer_certificate: bool,
    /// The connection, when its filters set filter state (routes' `filter_state`).
    connection: Option<std::sync::Arc<crate::stream_info::Connection>>,
    /// The downstream remote and local addresses and the client's address, for a weighted
    /// cluster picked by the route's hash policy.
    addresses: Addresses,
    /// Which of the route's weighted clusters the request goes to, picked with the route (as
    /// Envoy's weighted cluster entry): its per-filter configurations are in view.
    weighted: Option<usize>,
    /// The cluster the route's cluster specifier named, picked with the route.
    specified: Option<std::sync::Arc<str>>,
}

/// A connection manager's own route tables: its `route_config`, or its inline
/// `scoped_routes` (none with RDS: each stream takes the table in force).
#[derive(Debug, Clone, Default)]
pub enum StaticRoutes {
    #[default]
    None,
    Table(std::sync::Arc<crate::router::RouteTable>),
    Scoped(std::sync::Arc<crate::router::scoped::ScopedTables>),
}

impl StaticRoutes {
    /// Whether a header value of any table renders operators for the stream (unknown with
    /// RDS: yes).
    pub fn formats_headers(&self) -> bool {
        match self {
            StaticRoutes::None => true,
            StaticRoutes::Table(t) => t.formats_headers(),
            StaticRoutes::Scoped(s) => s.formats_headers(),
        }
    }
}

/// A stream's downstream remote and local addresses and its client's address.
pub type Addresses = (std::net::SocketAddr, std::net::SocketAddr, std::net::IpAddr);

impl Selection {
    /// The route configuration the stream reads.
    pub fn table(&self) -> Option<&crate::router::RouteTable> {
        self.table.as_deref()
    }

    /// The virtual host the request's authority picked.
    /// Whether its route table has header values that render operators.
    pub fn formats_headers(&self) -> bool {
        self.table.as_ref().is_some_and(|t| t.formats_headers())
    }

    pub fn vhost(&self) -> Option<&crate::router::VirtualHost> {
        Some(&self.table.as_ref()?.virtual_hosts[self.vhost?])
    }

    /// The route the request matched.
    pub fn route(&self) -> Option<&Route> {
        Some(&self.vhost()?.routes[self.route?])
    }

    /// Whether the virtual host's `require_tls` sends the request to https.
    pub fn redirects_to_https(&self) -> bool {
        self.to_https
    }

    /// The route's header changes for requests (`false`) or responses (`true`), with its
    /// virtual host's and route configuration's, in the order they apply (none without a
    /// route).
    pub fn header_mutations(
        &self,
        response: bool,
    ) -> Vec<std::sync::Arc<crate::router::HeaderParser>> {
        let (Some(table), Some(vhost), Some(route)) = (self.table(), self.vhost(), self.route())
        else {
            return Vec::new();
        };
        let (g, v, rt) = if response {
            (
                &table.response_headers,
                &vhost.response_headers,
                &route.response_headers,
            )
        } else {
            (
                &table.request_headers,
                &vhost.request_headers,
                &route.request_headers,
            )
        };
        let list = if table.most_specific_wins {
            [g, v, rt]
        } else {
            [rt, v, g]
        };
        list.into_iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect()
    }

    /// The route, held: the table it is in stays while a filter holds it.
    pub fn route_ref(&self) -> Option<RouteRef> {
        Some(RouteRef {
            table: self.table.clone()?,
            vhost: self.vhost?,
            route: self.route?,
            weighted: self.weighted,
            specified: self.specified.clone(),
        })
    }

    /// The weighted cluster the request goes to, with what it changes (none when the route
    /// has no weighted clusters); the name of a `cluster_header` entry is read from `headers`.
    pub fn weighted_cluster<'a: 'h, 'h>(
        &'a self,
        headers: &'h http::HeaderMap,
    ) -> Option<(&'h str, Option<&'a crate::router::ClusterChanges>)> {
        let crate::router::Action::Forward(f) = &self.route()?.action else {
            return None;
        };
        f.target.weighted_at(self.weighted?, headers)
    }

    /// The picked weighted cluster's own changes.
    fn weighted_changes(&self) -> Option<&crate::router::ClusterChanges> {
        let crate::router::Action::Forward(f) = &self.route()?.action else {
            return None;
        };
        let crate::router::Target::Weighted(w) = &f.target else {
            return None;
        };
        w.each.as_ref()?.get(self.weighted?)
    }

    /// Every level's configuration for the filter called `name`, the most specific first:
    /// the picked weighted cluster's, the route's, the virtual host's, the route table's.
    pub fn per_filter_all<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a crate::router::PerFilterConfig> + 'a {
        let table = self.table.as_ref();
        let vhost = table.zip(self.vhost).map(|(t, v)| &t.virtual_hosts[v]);
        let route = vhost.zip(self.route).map(|(v, r)| &v.routes[r]);
        [
            self.weighted_changes().and_then(|c| c.per_filter.get(name)),
            route.and_then(|r| r.per_filter.get(name)),
            vhost.and_then(|v| v.per_filter.get(name)),
            table.and_then(|t| t.per_filter.get(name)),
        ]
        .into_iter()
        .flatten()
    }

    /// The most specific per-route configuration of the filter called `name`: the picked
    /// weighted cluster's, else the route's, else its virtual host's, else the route
    /// configuration's.
    pub fn per_filter<'a>(&'a self, name: &'a str) -> Option<&'a crate::router::PerFilterConfig> {
        self.per_filter_all(name).next()
    }
}

/// A stream's route and its virtual host, held past the selection (by a filter that reads
/// them when the request's headers come).
#[derive(Clone)]
pub struct RouteRef {
    table: std::sync::Arc<crate::router::RouteTable>,
    vhost: usize,
    route: usize,
    weighted: Option<usize>,
    specified: Option<std::sync::Arc<str>>,
}

impl RouteRef {
    /// The cluster the route sends a request with `headers` to: the weighted cluster picked
    /// with the route, or its one cluster, or the cluster its header names.
    pub fn cluster<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
        runtime: &crate::config::runtime::Values,
    ) -> Option<&'a str> {
        let crate::router::Action::Forward(f) = &self.route().action else {
            return None;
        };
        match &f.target {
            crate::router::Target::Weighted(_) => f
                .target
                .weighted_at(self.weighted?, headers)
                .map(|(n, _)| n),
            crate::router::Target::Specifier(_) => self.specified.as_deref(),
            t => t.pick(headers, runtime, 0),
        }
    }

    /// The virtual host.
    pub fn vhost(&self) -> &crate::router::VirtualHost {
        &self.table.virtual_hosts[self.vhost]
    }

    /// The route.
    pub fn route(&self) -> &Route {
        &self.vhost().routes[self.route]
    }
}

/// What a Lua cluster specifier's `getCluster` reads of a cluster: its open connections, active
/// and pending requests, as its circuit breakers count them over every worker (Envoy's
/// resource managers).
fn cluster_counts(worker: &Worker, name: &str) -> Option<crate::config::lua::ClusterCounts> {
    let c = worker.clusters.get(name)?;
    // The circuit breakers' counts, which every worker shares, both priorities as Envoy adds
    // them.
    let b = &c.info.breakers;
    let both =
        |r: fn(&crate::upstream::circuit_breaker::Resources) -> u64| r(&b.default) + r(&b.high);
    Some((
        both(|r| r.connections.count()),
        both(|r| r.requests.count()),
        both(|r| r.pending.count()),
    ))
}

/// Resolves the route of a request whose headers the connection manager has finished with.
/// `internal_only_headers` are removed here from requests that are not internal.
pub fn select(
    worker: &Worker,
    (cfg, static_routes): (&model::HttpConnectionManager, &StaticRoutes),
    parts: &mut http::request::Parts,
    scheme: &str,
    (peer_certificate, connection, addresses): (
        bool,
        Option<&std::sync::Arc<crate::stream_info::Connection>>,
        Addresses,
    ),
) -> Selection {
    // Each stream reads the route table in force when it starts (RDS updates reach
    // long-lived connections on their next stream).
    let (table, scoped) = match (&cfg.routes, static_routes) {
        (model::RouteSource::Rds { name, .. }, _) => (worker.route_table(name), None),
        // The scopes SRDS has when the stream starts; a key that finds none, or a scope whose
        // route configuration has not come, is no route (404), as in Envoy.
        (model::RouteSource::ScopedRds(s), _) => {
            let tables = std::sync::Arc::new(crate::router::scoped::ScopedTables::of(
                s.fragments.clone(),
                worker.scope_tables(&s.name),
            ));
            (tables.table(&parts.headers), Some(tables))
        }
        (_, StaticRoutes::Table(t)) => (Some(t.clone()), None),
        (_, StaticRoutes::Scoped(s)) => (s.table(&parts.headers), Some(s.clone())),
        (_, StaticRoutes::None) => (None, None),
    };
    let runtime = arc_swap::Guard::into_inner(crate::runtime::snapshot());
    let random = fastrand::u64(..);
    let mut out = Selection {
        table: None,
        scoped,
        vhost: None,
        route: None,
        to_https: false,
        runtime,
        random,
        peer_certificate,
        connection: connection.filter(|c| !c.filter_state.is_empty()).cloned(),
        addresses,
        weighted: None,
        specified: None,
    };
    let Some(t) = table else {
        return out;
    };
    // The view borrows a handle of its own: the selection is changed while it is read.
    let connection = out.connection.clone();
    let state = skiff_config::filter_state::View {
        stream: None,
        connection: connection.as_ref().map(|c| &c.filter_state),
    };
    out.pick(worker, t, parts, scheme, None, state);
    out
}

impl Selection {
    /// What the stream's record shows of the route: its name and its and its virtual host's
    /// metadata.
    pub fn record(&self, info: &mut StreamInfo) {
        if let (Some(route), Some(vhost)) = (self.route(), self.vhost()) {
            info.route_name = (!route.name.is_empty()).then(|| route.name.as_str().into());
            info.route_metadata = Some((route.metadata.clone(), vhost.metadata.clone()));
        }
    }

    /// Picks the route again (a filter cleared the route cache), the stream's dynamic metadata
    /// as it is now in view; the same runtime values and random value as the first time.
    pub fn reselect(
        &mut self,
        worker: &Worker,
        parts: &mut http::request::Parts,
        scheme: &str,
        metadata: Option<&crate::stream_info::DynamicMetadata>,
    ) {
        // Scoped routes: the request's key now picks the table (none: no route).
        let table = match &self.scoped {
            Some(s) => {
                self.table = None;
                s.table(&parts.headers)
            }
            None => self.table.take(),
        };
        let Some(t) = table else {
            self.vhost = None;
            self.route = None;
            return;
        };
        self.vhost = None;
        self.route = None;
        self.to_https = false;
        self.weighted = None;
        self.specified = None;
        let connection = self.connection.clone();
        let connection = connection.as_ref().map(|c| &c.filter_state);
        match metadata {
            Some(m) => m.with_all(|m, stream| {
                let state = skiff_config::filter_state::View {
                    stream: Some(stream),
                    connection,
                };
                self.pick(worker, t, parts, scheme, Some(m), state)
            }),
            None => {
                let state = skiff_config::filter_state::View {
                    stream: None,
                    connection,
                };
                self.pick(worker, t, parts, scheme, None, state)
            }
        }
    }

    fn pick(
        &mut self,
        worker: &Worker,
        t: std::sync::Arc<crate::router::RouteTable>,
        parts: &mut http::request::Parts,
        scheme: &str,
        metadata: Option<&crate::config::metadata::Metadata>,
        filter_state: skiff_config::filter_state::View<'_>,
    ) {
        let out = self;
        let (random, peer_certificate) = (out.random, out.peer_certificate);
        // internal_only_headers reach only internal requests (Envoy removes them before routing).
        if !t.internal_only_headers.is_empty()
            && parts
                .headers
                .get("x-envoy-internal")
                .is_none_or(|v| v != "true")
        {
            for h in &t.internal_only_headers {
                parts.headers.remove(h);
            }
        }
        let host_header = authority(parts).unwrap_or("");
        let path = crate::http::filter::route_path(parts);
        let view = crate::router::RequestView {
            method: parts.method.as_str(),
            path,
            authority: host_header,
            scheme,
            headers: &parts.headers,
            runtime: &out.runtime,
            random,
            peer_certificate,
            metadata,
            filter_state,
        };
        // vhost_header: another header's value picks the virtual host (none when absent).
        let vhost_key = match &t.vhost_header {
            Some(h) => parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            None => host_header,
        };
        if let Some(vi) = t.virtual_host_index(vhost_key) {
            let vh = &t.virtual_hosts[vi];
            // require_tls: a request not forwarded as https is sent to https first (Envoy's SSL
            // redirect route, a 301 built like a route's https_redirect).
            let forwarded_https = view
                .headers
                .get(&names::X_FORWARDED_PROTO)
                .is_some_and(|v| v == "https");
            let internal = view
                .headers
                .get("x-envoy-internal")
                .is_some_and(|v| v == "true");
            out.to_https = !vh.routes.is_empty()
                && match vh.require_tls {
                    crate::router::RequireTls::None => false,
                    crate::router::RequireTls::All => !forwarded_https,
                    crate::router::RequireTls::ExternalOnly => !forwarded_https && !internal,
                };
            out.vhost = Some(vi);
            out.route = vh.route_index(&view);
            // A weighted cluster is picked with the route, from the request as it is now.
            if let Some(crate::router::Action::Forward(f)) = out.route.map(|r| &vh.routes[r].action)
            {
                out.weighted = out.weighted_pick(f, parts, scheme);
                out.specified = f
                    .target
                    .specified(&view, &|name| cluster_counts(worker, name))
                    .map(Into::into);
            }
        }
        out.table = Some(t);
    }

    /// Which weighted cluster a request to `f` goes to: by the stream's random value, or the
    /// header or hash policy the route names.
    fn weighted_pick(
        &self,
        f: &crate::router::Forward,
        parts: &http::request::Parts,
        scheme: &str,
    ) -> Option<usize> {
        let crate::router::Target::Weighted(w) = &f.target else {
            return None;
        };
        // use_hash_policy: the route's hash picks the weighted cluster (no cookie is made for
        // it).
        let value = if w.random_value == Some(crate::router::RandomValue::HashPolicy)
            && !f.hash_policy.is_empty()
        {
            let (remote, local, client) = self.addresses;
            request_hash(
                &f.hash_policy,
                parts,
                scheme,
                client,
                (remote, local),
                &mut Vec::new(),
            )
            .unwrap_or(self.random)
        } else {
            self.random
        };
        f.target
            .weighted_index(&parts.headers, &self.runtime, value)
    }
}

/// A request head as the router passes it on: boxed, as each layer (the route, the retry loop,
/// an attempt, the codec's sender) would otherwise copy it twice.
pub type Head = Box<http::request::Parts>;

/// Forwards one request by the route its stream selected. `Err` is the local reply to send
/// instead. With `source` (original_src), upstream connections come from that address.
/// `upgrade` is the type of an HTTP/1.1 upgrade the request asks for (lower case).
#[allow(clippy::too_many_arguments)]
pub async fn route(
    worker: &Rc<Worker>,
    cfg: &model::HttpConnectionManager,
    selection: &Selection,
    mut parts: Head,
    body: ProxyBody,
    request: &Rc<RequestProgress>,
    (downstream_remote, downstream_local, client): (
        std::net::SocketAddr,
        std::net::SocketAddr,
        std::net::IpAddr,
    ),
    source: Option<pool::Source>,
    (scheme, upgrade, header_timeout): (&str, Option<&str>, Option<std::time::Duration>),
    retry_headers: Option<&RetryHeaders>,
    (buffer_limit, timers): (usize, Option<&Rc<crate::http::timeouts::StreamTimers>>),
    mut info: Option<&mut StreamInfo>,
) -> Result<(Response<ProxyBody>, Upstream, Option<Deadline>), LocalReply> {
    let host_header = authority(&parts).unwrap_or("").to_string();
    let runtime = &selection.runtime;
    let random = selection.random;
    if selection.to_https {
        if let Some(r) = selection.vhost().and_then(|vh| vh.routes.first()) {
            let to_https = Redirect {
                scheme: Some("https".into()),
                host: None,
                port: None,
                path: PathRedirect::Keep,
                status: StatusCode::MOVED_PERMANENTLY,
                strip_query: false,
            };
            let location = redirect_location(r, &to_https, &parts, &host_header, scheme);
            return Err(LocalReply::redirect(
                StatusCode::MOVED_PERMANENTLY,
                location,
            ));
        }
    }
    let (Some(route), Some(vhost)) = (selection.route(), selection.vhost()) else {
        return Err(LocalReply::NO_ROUTE);
    };
    // The route's or its virtual host's limit replaces the connection's.
    let buffer_limit = route
        .buffer_limit
        .or(vhost.buffer_limit)
        .map_or(buffer_limit, |v| usize::try_from(v).unwrap_or(usize::MAX));
    let order = |response: bool| selection.header_mutations(response);
    // An upgrade neither the route nor the connection manager takes: Envoy's 403.
    if upgrade.is_some_and(|kind| !route.allows_upgrade(kind, &cfg.upgrades)) {
        return Err(LocalReply::UPGRADE_FORBIDDEN);
    }
    if let Some(info) = info.as_deref_mut() {
        selection.record(info);
    }
    let forward = match &route.action {
        Action::Forward(f) => f,
        Action::Direct {
            status,
            body,
            format,
            content_type,
        } => {
            // The route's header changes apply as to every local reply (the connection
            // manager's `routed_local`).
            let mut reply = match format {
                // body_format: written now, as Envoy's router writes it (no response code
                // yet: `%RESPONSE_CODE%` is 0), the body as `%LOCAL_REPLY_BODY%`.
                Some(f) => {
                    let mut own;
                    let info = match info.as_deref_mut() {
                        Some(i) => i,
                        None => {
                            own = StreamInfo::new(downstream_remote, downstream_local);
                            own.connection = parts
                                .extensions
                                .get::<std::sync::Arc<crate::stream_info::Connection>>()
                                .cloned();
                            own.method = Some(parts.method.clone());
                            own.path = parts.uri.path_and_query().map(|p| p.as_str().to_string());
                            own.authority = Some(host_header.clone());
                            own.scheme = if scheme == "https" { "https" } else { "http" };
                            own.request_headers = parts.headers.clone();
                            &mut own
                        }
                    };
                    let code = info.response_code.take();
                    let headers =
                        std::mem::replace(&mut info.request_headers, parts.headers.clone());
                    info.local_reply_body = Some(body.clone());
                    let mut text = String::new();
                    crate::access_log::Render::render(&*f.format, info, &mut text);
                    info.local_reply_body = None;
                    info.request_headers = headers;
                    info.response_code = code;
                    let mut reply = LocalReply::direct(*status, bytes::Bytes::from(text));
                    // text/plain is every local reply's own (added after content-length).
                    if f.content_type != "text/plain" {
                        reply
                            .headers
                            .push((header::CONTENT_TYPE, f.content_type.clone()));
                    }
                    reply
                }
                None => {
                    let mut reply = LocalReply::direct(*status, body.clone());
                    if let Some(ct) = content_type.as_ref().filter(|ct| *ct != "text/plain") {
                        reply.headers.push((header::CONTENT_TYPE, ct.clone()));
                    }
                    reply
                }
            };
            // A 201 or a 3xx direct response says where: the request's own URL (Envoy).
            if *status == StatusCode::CREATED || status.is_redirection() {
                let here = Redirect {
                    scheme: None,
                    host: None,
                    port: None,
                    path: PathRedirect::Keep,
                    status: *status,
                    strip_query: false,
                };
                let location = redirect_location(route, &here, &parts, &host_header, scheme);
                reply.headers.push((header::LOCATION, location));
            }
            return Err(reply);
        }
        Action::Redirect(r) => {
            let location = redirect_location(route, r, &parts, &host_header, scheme);
            return Err(LocalReply::redirect(r.status, location));
        }
        // Meant for a filter to answer; the router has no cluster for it (Envoy: 503, NC).
        Action::NonForwarding => return Err(LocalReply::NO_CLUSTER),
    };
    // A route that follows redirects keeps the request as it came (and its body, to send
    // again) for the next pass.
    let redirect = forward.internal_redirect.as_ref().map(|policy| {
        let mut saved = super::retry::copy_parts(&parts);
        saved.extensions = parts.extensions.clone();
        (policy.clone(), saved)
    });
    let (body, replay) = match &redirect {
        Some(_) if !body.is_end_stream() => {
            let r = crate::http::replay::ReplayBuffer::new(
                body,
                buffer_limit,
                crate::stats::Counter::default(),
            );
            (r.body(), Some(r))
        }
        _ => (body, None),
    };
    // The route's max_stream_duration moves the connection manager's stream timer.
    if let (Some(t), Some(d)) = (timers, &forward.stream_duration) {
        let grpc_timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::router::grpc_timeout);
        t.route_duration(d, grpc_timeout);
    }
    if let (Some(t), Some(d)) = (timers, forward.idle_timeout) {
        t.route_idle(d);
    }
    // A weighted cluster was picked with the route.
    let picked = match &forward.target {
        crate::router::Target::Weighted(_) => selection.weighted_cluster(&parts.headers),
        crate::router::Target::Specifier(_) => selection.specified.as_deref().map(|c| (c, None)),
        t => t.pick_with_changes(&parts.headers, runtime, random),
    };
    let (cluster, changes) = picked
        .and_then(|(name, changes)| worker.clusters.get(name).map(|c| (c, changes)))
        .ok_or(LocalReply {
            status: forward.cluster_not_found,
            ..LocalReply::NO_CLUSTER
        })?;
    if let Some(info) = info.as_deref_mut() {
        info.upstream_cluster = Some(cluster.name.clone());
        info.cluster_metadata = Some(cluster.config().metadata.clone());
        info.upstream_cluster_stat = cluster.config().alt_stat_name.as_deref().map(Into::into);
    }
    // The virtual cluster the request counts in (the virtual host's first that matches, or
    // `other`), judged on the request as the router got it.
    let vcluster = if vhost.virtual_clusters.is_empty() {
        None
    } else {
        let view = crate::router::RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path_and_query().map_or("", |p| p.as_str()),
            authority: authority(&parts).unwrap_or(""),
            scheme,
            headers: &parts.headers,
            runtime,
            random,
            peer_certificate: false,
            metadata: None,
            filter_state: Default::default(),
        };
        vhost.virtual_cluster(&view).map(|vc| {
            let name = vc.map_or("other", |v| &v.name);
            if let (Some(info), Some(vc)) = (info.as_deref_mut(), vc) {
                info.virtual_cluster = Some(vc.name.clone());
            }
            worker.vclusters.get(&worker.shard, &vhost.name, name)
        })
    };
    let endpoint_stats = crate::http::vcluster::EndpointStats {
        vcluster,
        route: route
            .stat_prefix
            .as_deref()
            .map(|p| worker.vclusters.route(&worker.shard, &vhost.name, p)),
    };
    // The request's hash, for a cluster that picks hosts by it: from the request as the
    // router got it (before the route's header changes, as Envoy picks the host first).
    let mut set_cookies = Vec::new();
    // The cluster's own hash, mirror and retry policies replace the route's.
    let routing = &cluster.config().routing;
    let hash_policy = if routing.hash_policy.is_empty() {
        &forward.hash_policy
    } else {
        &routing.hash_policy
    };
    let hash = if cluster.config().lb.hashed() && !hash_policy.is_empty() {
        request_hash(
            hash_policy,
            &parts,
            scheme,
            client,
            (downstream_remote, downstream_local),
            &mut set_cookies,
        )
    } else {
        None
    };
    // Istio's filters, which look at the routed cluster (before the route's header changes,
    // as they run before the router in Envoy).
    if let Some(mx) = parts
        .extensions
        .get::<super::istio::PeerExchange>()
        .cloned()
    {
        mx.routed(&cluster.name, cluster.config().istio, &mut parts.headers);
    }
    let alpn = parts
        .extensions
        .get::<super::istio::AlpnChoice>()
        .and_then(|a| a.pick(cluster.config()));
    // What the stream's filter state shares with the upstream connection (only
    // internal_upstream hands it over, to an internal listener).
    let shared = cluster
        .config()
        .internal_upstream
        .is_some()
        .then(|| request_filter_state(&parts, |state| state.shared_with_upstream()))
        .flatten()
        .map(std::sync::Arc::new);
    // Header changes, then rewrites, as Envoy's router applies them before the upstream request
    // (the original path kept in x-envoy-original-path unless Envoy's headers are suppressed).
    // A weighted cluster's own changes come first (Envoy's `WeightedClusterEntry`).
    // Its host_rewrite_literal sets the host as it is (no x-envoy-original-host); the
    // route's own host rewrite may still follow.
    // The timeouts, and the headers that carry them, come before the route's header changes
    // (Envoy's `finalTimeout` runs before `finalizeRequestHeaders`).
    // An internal request's x-envoy-upstream-rq-timeout-ms replaces the route's timeout (0:
    // none), as in Envoy.
    // A gRPC request on a route with max_grpc_timeout: its grpc-timeout, offset and capped.
    let base_timeout = match route.grpc_timeout {
        Some(g) if crate::router::is_grpc(&parts.headers) => g.timeout(
            parts
                .headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::router::grpc_timeout),
        ),
        _ => route.timeout,
    };
    let route_timeout = match header_timeout {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => base_timeout,
    };
    // The route's retry policy, or its virtual host's, with what an internal request's
    // x-envoy-retry-* headers add; none for upgrades, whose body is a tunnel.
    let retry = upgrade
        .is_none()
        .then(|| {
            super::retry::RetryState::new(
                routing
                    .retry
                    .as_ref()
                    .or(route.retry.as_ref())
                    .or(vhost.retry.as_ref()),
                retry_headers,
                &parts.headers,
            )
        })
        .flatten();
    // A per-try timeout no shorter than the route timeout never fires first (Envoy drops it).
    let per_try_timeout = retry
        .as_ref()
        .and_then(|r| r.per_try_timeout())
        .filter(|p| route_timeout.is_none_or(|t| *p < t));
    // hedge_policy.hedge_on_per_try_timeout: the route's policy, else its virtual host's; it
    // matters only with a per-try timeout.
    // An internal request's x-envoy-hedge-on-per-try-timeout overrides it.
    let hedge = per_try_timeout.is_some()
        && retry_headers
            .and_then(|h| h.hedge)
            .unwrap_or_else(|| route.hedge.unwrap_or(vhost.hedge));
    if !cfg.router.suppress_envoy_headers {
        // A hedged request's attempts may all run to the route timeout: that is what each
        // expects (the time left of it, for a later attempt).
        let expected = if hedge {
            route_timeout
        } else {
            per_try_timeout.or(route_timeout)
        };
        if let Some(t) = expected {
            parts.headers.insert(
                names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                headers::number(t.as_millis() as u64),
            );
        }
    }
    // With max_grpc_timeout a gRPC request's grpc-timeout becomes the time it is given.
    if route.grpc_timeout.is_some() && crate::router::is_grpc(&parts.headers) {
        let expected = if hedge {
            route_timeout
        } else {
            per_try_timeout.or(route_timeout)
        };
        if let Some(t) = expected.filter(|t| !t.is_zero()) {
            parts.headers.insert(
                "grpc-timeout",
                HeaderValue::from_str(&crate::router::grpc_timeout_value(t))
                    .unwrap_or(HeaderValue::from_static("0m")),
            );
        }
    }
    // Values with operators render for this stream, `%REQ%` reading the headers as changed so
    // far.
    let recorded = info.as_deref();
    let render = |f: &crate::access_log::Format, h: &http::HeaderMap| {
        recorded.map_or_else(String::new, |i| {
            crate::access_log::header_value(f, i, Some(h), None)
        })
    };
    if let Some(c) = changes {
        c.request_headers.apply_with(&mut parts.headers, &render);
    }
    let host_header = match changes
        .and_then(|c| c.host_rewrite.as_ref())
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => h.to_string(),
        None => host_header,
    };
    for p in order(false) {
        p.apply_with(&mut parts.headers, &render);
    }
    // A traced request's span context (Envoy's tracer injects it as the router sends).
    if let Some(c) = parts.extensions.get::<crate::trace::Context>().cloned() {
        c.inject(&mut parts.headers);
    }
    let mut response_headers = order(true);
    if let Some(c) = changes.filter(|c| !c.response_headers.is_empty()) {
        response_headers.insert(0, c.response_headers.clone());
    }
    // host_rewrite_path_regex reads the path as the route matched it (Envoy rewrites the host
    // before the path).
    let host_from_path = match &forward.host_rewrite {
        Some(HostRewrite::PathRegex(rw)) => {
            let (re, sub) = &**rw;
            Some(re.replace_all(parts.uri.path(), sub.as_str()).into_owned())
        }
        // host_rewrite: a value the stream does not have is `-` (Envoy's formatter keeps it).
        Some(HostRewrite::Format(f)) => {
            recorded.map(|i| crate::access_log::text(f, i, Some(&parts.headers)))
        }
        _ => None,
    };
    if let Some(rw) = &forward.path_rewrite {
        let old = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let new = match rw {
            // path_rewrite: an empty rendering leaves the path as it is.
            crate::router::PathRewrite::Format(f) => {
                let only = recorded.map_or_else(String::new, |i| {
                    crate::access_log::header_value(f, i, Some(&parts.headers), None)
                });
                if only.is_empty() {
                    old.clone()
                } else {
                    crate::router::with_path_only(&old, &only)
                }
            }
            rw => route.rewrite_path(rw, &old),
        };
        if new != old {
            if let Ok(pq) = http::uri::PathAndQuery::try_from(new.as_str()) {
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = Some(pq);
                if let Ok(u) = Uri::from_parts(uri) {
                    parts.uri = u;
                    if !cfg.router.suppress_envoy_headers {
                        if let Ok(v) = HeaderValue::from_str(&old) {
                            parts
                                .headers
                                .insert(names::X_ENVOY_ORIGINAL_PATH.clone(), v);
                        }
                    }
                }
            }
        }
    }
    let rewritten = match &forward.host_rewrite {
        Some(HostRewrite::Literal(v)) => v.to_str().ok().map(str::to_string),
        Some(HostRewrite::Header(h)) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        Some(HostRewrite::PathRegex(..) | HostRewrite::Format(_)) => {
            host_from_path.filter(|h| !h.is_empty())
        }
        Some(HostRewrite::Auto) | None => None,
    };
    let host_header = match rewritten {
        Some(new) => {
            if forward.append_x_forwarded_host && !host_header.is_empty() {
                append_forwarded_host(&mut parts.headers, &host_header);
            }
            // The host before the rewrite goes upstream as x-envoy-original-host (Envoy 1.40).
            if !cfg.router.suppress_envoy_headers {
                if let Ok(v) = HeaderValue::from_str(&host_header) {
                    parts
                        .headers
                        .insert(names::X_ENVOY_ORIGINAL_HOST.clone(), v);
                }
            }
            new
        }
        None => host_header,
    };
    if host_header != authority(&parts).unwrap_or("") {
        set_host(&mut parts, &host_header);
    }
    // ORIGINAL_DST with use_http_header: the header names the host; without it, the
    // connection's original destination does.
    let mut dest = downstream_local;
    if let Some(h) = &cluster.config().original_dst_header {
        let value = match h {
            OriginalDstHeader::Authority => authority(&parts),
            OriginalDstHeader::Header(h) => parts.headers.get(h).map(|v| v.to_str().unwrap_or("")),
        };
        if let Some(v) = value {
            match v.parse().ok() {
                Some(a) => dest = a,
                None => {
                    cluster.stats.original_dst_host_invalid.inc();
                    cluster.stats.upstream_cx_none_healthy.inc();
                    return Err(LocalReply::NO_HEALTHY_UPSTREAM);
                }
            }
        }
    }
    // The upstream's `:scheme`: the request's, or with `match_upstream` the upstream
    // connection's (the stream's record sees the change, as Envoy's header map does).
    let upstream_scheme = if cfg.scheme_matches_upstream {
        let s = if cluster.config().any_tls() {
            "https"
        } else {
            "http"
        };
        if let Some(info) = info.as_deref_mut() {
            info.scheme = s;
        }
        s
    } else {
        scheme
    };
    if let Some(info) = info.as_deref_mut() {
        // The header map Envoy logs is the one the router forwards: what the filters and the
        // route changed in it included.
        info.request_headers_bytes =
            crate::http::conn_manager::request_headers_bytes(&parts, info.scheme);
        info.request_headers = parts.headers.clone();
    }
    // Mirrors get a copy of the request as it goes upstream (not of an upgrade's tunnel).
    let mirrors = if routing.mirrors.is_empty() {
        &forward.mirrors
    } else {
        &routing.mirrors
    };
    let body = if mirrors.is_empty() || upgrade.is_some() {
        body
    } else {
        let ctx = MirrorContext {
            worker,
            dest,
            downstream: (downstream_remote, downstream_local),
            source,
            request,
            timeout: route_timeout,
            buffer_limit,
            dynamic_stats: cfg.router.dynamic_stats,
            scheme: if upstream_scheme == "https" {
                "https"
            } else {
                "http"
            },
        };
        start_mirrors(&ctx, mirrors, runtime, &parts, &host_header, body)
    };
    let f = Forward {
        worker,
        cluster: &cluster,
        dest,
        downstream: (downstream_remote, downstream_local),
        authority: &host_header,
        source,
        alpn,
        shared,
        upgrade,
        terminate: (upgrade == Some("connect") && route.connect_terminate)
            || (upgrade.is_none()
                && route.connect_allow_post
                && parts.method == http::Method::POST),
        request,
        dynamic_stats: cfg.router.dynamic_stats,
        response_headers,
        attempt_count: (vhost.attempt_count_upstream, vhost.attempt_count_response),
        is_timeout_retry_header: vhost.is_timeout_retry_header,
        // Envoy's route timeout runs from the end of the request to the end of the response;
        // an upgrade's request never ends (its body is the tunnel), so its timeout never starts.
        timeout: if upgrade.is_some() {
            None
        } else {
            route_timeout
        },
        per_try_timeout,
        hedge,
        high: forward.high_priority,
        periodic: cfg
            .log_flush
            .interval
            .filter(|_| info.is_some() && !cfg.access_logs.is_empty())
            .map(|interval| Periodic {
                interval,
                logs: &cfg.access_logs,
                writer: &worker.access_log,
            }),
        buffer_limit,
        hash,
        criteria: dynamic_lb_criteria(
            match changes {
                Some(c) => c.metadata_match.clone(),
                None => forward.metadata_match.clone(),
            },
            &parts,
        ),
        set_cookies,
        endpoint_stats,
        override_host: parts
            .extensions
            .get::<crate::http::filters::stateful_session::OverrideHost>()
            .copied(),
        scheme: upstream_scheme,
        internal: parts
            .headers
            .get("x-envoy-internal")
            .is_some_and(|v| v.as_bytes() == b"true"),
        last_host: Default::default(),
        attempts: Default::default(),
        override_hosts: (named_hosts(&cluster, &parts), Default::default()),
    };
    let result = super::retry::forward(&f, parts, body, retry, info.as_deref_mut()).await;
    let Some((policy, saved)) = redirect else {
        return result;
    };
    let (resp, upstream, deadline) = result?;
    if !policy.codes.contains(&resp.status().as_u16()) {
        return Ok((resp, upstream, deadline));
    }
    let body_kept = replay.as_ref().is_none_or(|r| !r.overflowed());
    let next = if request.done_at().is_some() && body_kept {
        redirect_request(&policy, saved, resp.headers(), scheme, resp.status())
    } else {
        Err(None)
    };
    let scheme_of_request = scheme;
    let next = next.and_then(|(mut parts, scheme)| {
        let routes = match (&selection.scoped, &selection.table) {
            (Some(s), _) => StaticRoutes::Scoped(s.clone()),
            (None, Some(t)) => StaticRoutes::Table(t.clone()),
            (None, None) => StaticRoutes::None,
        };
        let selection = select(
            worker,
            (cfg, &routes),
            &mut parts,
            scheme,
            (
                selection.peer_certificate,
                selection.connection.as_ref(),
                selection.addresses,
            ),
        );
        let Some(target) = selection.route() else {
            return Err(Some("no_route"));
        };
        let from_https = scheme_of_request == "https";
        if !redirect_accepted(
            &policy,
            &mut parts,
            &target.name,
            from_https,
            scheme == "https",
        ) {
            return Err(Some("predicate"));
        }
        Ok((parts, scheme, selection))
    });
    let (parts, next_scheme, next_selection) = match next {
        Ok(n) => n,
        Err(reason) => {
            cluster
                .stats
                .counter("upstream_internal_redirect_failed_total")
                .inc();
            if let Some(r) = reason {
                worker
                    .shard
                    .counter(&format!(
                        "http.{}.passthrough_internal_redirect_{r}",
                        cfg.stat_prefix
                    ))
                    .inc();
            }
            return Ok((resp, upstream, deadline));
        }
    };
    cluster
        .stats
        .counter("upstream_internal_redirect_succeeded_total")
        .inc();
    // The redirect's own response is not the client's: its upstream request ends here.
    drop(resp);
    upstream.finish(EndReason::DownstreamReset);
    let body = match (&replay, parts.method == http::Method::GET) {
        (Some(r), false) => r.body(),
        _ => ProxyBody::Empty,
    };
    let scheme: &'static str = if next_scheme == "https" {
        "https"
    } else {
        "http"
    };
    Box::pin(self::route(
        worker,
        cfg,
        &next_selection,
        Box::new(parts),
        body,
        request,
        (downstream_remote, downstream_local, client),
        source,
        (scheme, None, header_timeout),
        retry_headers,
        (buffer_limit, timers),
        info,
    ))
    .await
}

/// The request's hash by its route's `hash_policy` (Envoy's `HashPolicyImpl::generateHash`):
/// each policy's hash combined with those before (the old one rotated left by one, then xor);
/// a `terminal` policy with a hash so far ends it. A cookie policy whose cookie is missing and
/// that has a `ttl` makes one (the hex xxHash of the connection's addresses, as Envoy's) and
/// adds its `Set-Cookie` to `set_cookies`.
pub fn request_hash(
    policies: &[crate::router::HashPolicy],
    parts: &http::request::Parts,
    scheme: &str,
    client: std::net::IpAddr,
    (remote, local): (std::net::SocketAddr, std::net::SocketAddr),
    set_cookies: &mut Vec<HeaderValue>,
) -> Option<u64> {
    use crate::config::model::HeaderKey;
    use crate::router::HashKind;
    use crate::upstream::hashing::{xxhash, xxhash_parts};
    let mut hash: Option<u64> = None;
    for p in policies {
        let new = match &p.kind {
            HashKind::Header { name, rewrite } => {
                let mut values: Vec<Vec<u8>> = match name {
                    HeaderKey::Header(h) => parts
                        .headers
                        .get_all(h)
                        .iter()
                        .map(|v| v.as_bytes().to_vec())
                        .collect(),
                    HeaderKey::Method => vec![parts.method.as_str().into()],
                    HeaderKey::Authority => {
                        authority(parts).map(|a| a.into()).into_iter().collect()
                    }
                    HeaderKey::Path => parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().into())
                        .into_iter()
                        .collect(),
                    HeaderKey::Scheme => vec![scheme.into()],
                    HeaderKey::OtherPseudo => Vec::new(),
                };
                if values.is_empty() {
                    None
                } else {
                    if let Some((re, sub)) = rewrite {
                        for v in &mut values {
                            let text = String::from_utf8_lossy(v);
                            *v = re.replace_all(&text, sub.as_str()).as_bytes().to_vec();
                        }
                    }
                    // The same hash whatever order the values came in.
                    values.sort();
                    let parts: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                    Some(xxhash_parts(&parts))
                }
            }
            HashKind::FilterState(key) => {
                request_filter_state(parts, |state| state.get(key).and_then(|o| o.hash()))
            }
            HashKind::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match cookie_value(&parts.headers, name) {
                Some(v) if !v.is_empty() => Some(xxhash(v.as_bytes())),
                _ => ttl.map(|ttl| {
                    let value = format!("{:016x}", xxhash(format!("{remote}{local}").as_bytes()));
                    // Whole seconds, as Envoy keeps the ttl.
                    let cookie =
                        crate::http::headers::set_cookie(name, &value, Some(ttl), path, attributes);
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        set_cookies.push(v);
                    }
                    xxhash(value.as_bytes())
                }),
            },
            HashKind::SourceIp => Some(xxhash(client.to_string().as_bytes())),
            HashKind::QueryParameter(name) => parts
                .uri
                .query()
                .and_then(|q| query_value(q, name))
                .map(|v| xxhash(v.as_bytes())),
            // Envoy drops such a policy: it hashes nothing and ends nothing.
            HashKind::Nothing => continue,
        };
        if let Some(n) = new {
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ n);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

pub(crate) use crate::router::cookie_value;

/// The first value of query parameter `name`, as sent (a parameter without `=` has the empty
/// value), as Envoy's `parseQueryString`.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|p| match p.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if p == name => Some(""),
        _ => None,
    })
}

/// Makes `host` the request's host: its `Host` header, and its URI's authority when it has one
/// (HTTP/2's `:authority`).
fn set_host(parts: &mut http::request::Parts, host: &str) {
    if let Ok(v) = HeaderValue::from_str(host) {
        parts.headers.insert(header::HOST, v);
    }
    if parts.uri.authority().is_some() {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = http::uri::Authority::try_from(host).ok();
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

/// What the mirrors of one request share with it.
struct MirrorContext<'a> {
    worker: &'a Rc<Worker>,
    dest: std::net::SocketAddr,
    downstream: (std::net::SocketAddr, std::net::SocketAddr),
    source: Option<pool::Source>,
    request: &'a Rc<RequestProgress>,
    timeout: Option<std::time::Duration>,
    buffer_limit: usize,
    dynamic_stats: bool,
    scheme: &'static str,
}

/// Sends a copy of the request (`parts` as it goes upstream, to `host`) to each mirror whose
/// share admits it, on its own task, and returns the body the main request reads (copying to
/// the mirrors as it goes). Their responses are read and thrown away.
fn start_mirrors(
    ctx: &MirrorContext<'_>,
    mirrors: &[crate::router::Mirror],
    runtime: &crate::config::runtime::Values,
    parts: &http::request::Parts,
    host: &str,
    body: ProxyBody,
) -> ProxyBody {
    use crate::router::{MirrorHost, MirrorTarget};
    let mut picked = Vec::new();
    for m in mirrors {
        if m.fraction
            .as_ref()
            .is_some_and(|f| !f.enabled(runtime, fastrand::u64(..)))
        {
            continue;
        }
        let name = match &m.target {
            MirrorTarget::Cluster(c) => Some(c.as_str()),
            MirrorTarget::Header(h) => parts.headers.get(h).and_then(|v| v.to_str().ok()),
        };
        let Some(cluster) = name.and_then(|n| ctx.worker.clusters.get(n)) else {
            continue;
        };
        let shadow_host = match &m.host {
            MirrorHost::Suffixed => crate::http::shadow::shadow_host(host),
            MirrorHost::Same => host.to_string(),
            MirrorHost::Literal(v) => v.to_str().unwrap_or(host).to_string(),
        };
        picked.push((cluster.clone(), shadow_host));
    }
    if picked.is_empty() {
        return body;
    }
    let counters = picked
        .iter()
        .map(|(c, _)| c.stats.retry_or_shadow_abandoned.clone())
        .collect();
    let (body, copies) = crate::http::shadow::tee(body, counters, ctx.buffer_limit);
    for ((cluster, shadow_host), copy) in picked.into_iter().zip(copies) {
        let mut head = super::retry::copy_parts(parts);
        // A mirror goes out as Envoy's internal requests do: marked internal, this machine's
        // address appended to x-forwarded-for.
        head.headers
            .insert("x-envoy-internal", HeaderValue::from_static("true"));
        crate::http::conn_manager_utility::append_xff(
            &mut head.headers,
            crate::http::conn_manager_utility::machine_address()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        );
        set_host(&mut head, &shadow_host);
        let worker = ctx.worker.clone();
        let request = ctx.request.clone();
        let (dest, downstream, source, scheme) = (ctx.dest, ctx.downstream, ctx.source, ctx.scheme);
        let (timeout, buffer_limit, dynamic_stats) =
            (ctx.timeout, ctx.buffer_limit, ctx.dynamic_stats);
        tokio::task::spawn_local(async move {
            let f = Forward {
                dest,
                downstream,
                source,
                timeout,
                buffer_limit,
                dynamic_stats,
                scheme,
                // A shadow is sent with `x-envoy-internal: true`.
                internal: true,
                ..Forward::own(&worker, &cluster, &shadow_host, &request)
            };
            if let Ok((resp, upstream, _)) =
                super::retry::forward(&f, Box::new(head), copy, None, None).await
            {
                let mut body = resp.into_body();
                let drain = async {
                    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                        if frame.is_err() {
                            return EndReason::UpstreamReset;
                        }
                    }
                    EndReason::Complete
                };
                // The route timeout bounds the mirror's whole response too.
                let reason = match timeout {
                    Some(t) => tokio::time::timeout(t, drain)
                        .await
                        .unwrap_or(EndReason::Timeout),
                    None => drain.await,
                };
                upstream.finish(reason);
            }
        });
    }
    body
}

/// What every attempt of one request shares.
pub(super) struct Forward<'a> {
    pub worker: &'a Rc<Worker>,
    pub cluster: &'a Rc<Cluster>,
    /// The original destination (ORIGINAL_DST clusters).
    pub dest: std::net::SocketAddr,
    pub downstream: (std::net::SocketAddr, std::net::SocketAddr),
    pub authority: &'a str,
    pub source: Option<pool::Source>,
    /// Istio's `istio.alpn`: the ALPN list upstream TLS offers instead of the cluster's.
    pub alpn: Option<std::sync::Arc<[Vec<u8>]>>,
    /// The filter state objects the stream shares with its upstream connection (to an
    /// internal listener).
    pub shared: Option<std::sync::Arc<skiff_config::filter_state::FilterState>>,
    pub upgrade: Option<&'a str>,
    /// A CONNECT the route terminates (`connect_config`): a TCP connection to the host, and a
    /// 200 for the client.
    pub terminate: bool,
    pub request: &'a Rc<RequestProgress>,
    pub dynamic_stats: bool,
    /// The header changes of the route, virtual host and table for the response.
    pub response_headers: Vec<std::sync::Arc<crate::router::HeaderParser>>,
    /// `include_request_attempt_count`, `include_attempt_count_in_response`.
    pub attempt_count: (bool, bool),
    /// `include_is_timeout_retry_header`.
    pub is_timeout_retry_header: bool,
    /// The route timeout, over all attempts.
    pub timeout: Option<std::time::Duration>,
    pub per_try_timeout: Option<std::time::Duration>,
    /// `hedge_on_per_try_timeout`: an attempt past its per-try timeout goes on while the next
    /// one starts; the first response wins.
    pub hedge: bool,
    /// `access_log_flush_interval`: periodic lines while the response head is awaited.
    pub periodic: Option<Periodic<'a>>,
    /// The route's `priority: HIGH`: the hosts' `HIGH` copies (their own pools and the
    /// cluster's `HIGH` circuit breakers).
    pub high: bool,
    /// What the request body may hold to be sent again (`per_connection_buffer_limit_bytes`).
    pub buffer_limit: usize,
    /// The request's hash (RING_HASH and MAGLEV clusters).
    pub hash: Option<u64>,
    /// The route's (or its weighted cluster's) `metadata_match`, for subsets.
    pub criteria: Option<std::sync::Arc<crate::config::model::MatchCriteria>>,
    /// Cookies its hash policy made, for the response.
    pub set_cookies: Vec<HeaderValue>,
    /// The virtual cluster and the route the request counts in.
    pub endpoint_stats: crate::http::vcluster::EndpointStats,
    /// The host a stateful session names.
    pub override_host: Option<crate::http::filters::stateful_session::OverrideHost>,
    /// The `:scheme` an HTTP/2 upstream gets.
    pub scheme: &'a str,
    /// The request is internal (`x-envoy-internal: true`): its codes and times count under
    /// the cluster's `internal.`, else `external.`.
    pub internal: bool,
    /// The host last picked for an attempt, which a local reply's codes are charged to.
    pub last_host: RefCell<Option<Rc<Host>>>,
    /// The attempts made so far (for `x-envoy-attempt-count` on local replies).
    pub attempts: std::cell::Cell<u32>,
    /// The hosts the request names for the cluster's `override_host` policy, in order, and
    /// how many attempts took one.
    pub override_hosts: (Vec<String>, std::cell::Cell<usize>),
}

impl<'a> Forward<'a> {
    /// A request of skiff's own to `cluster` (a mirror, a rate limit service's call): no
    /// route's options, no downstream connection.
    pub(super) fn own(
        worker: &'a Rc<Worker>,
        cluster: &'a Rc<Cluster>,
        authority: &'a str,
        request: &'a Rc<RequestProgress>,
    ) -> Self {
        let nowhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        Forward {
            worker,
            cluster,
            dest: nowhere,
            downstream: (nowhere, nowhere),
            authority,
            source: None,
            alpn: None,
            shared: None,
            upgrade: None,
            terminate: false,
            request,
            dynamic_stats: true,
            response_headers: Vec::new(),
            attempt_count: (false, false),
            is_timeout_retry_header: false,
            timeout: None,
            per_try_timeout: None,
            hedge: false,
            periodic: None,
            high: false,
            buffer_limit: 0,
            hash: None,
            criteria: None,
            set_cookies: Vec::new(),
            endpoint_stats: Default::default(),
            override_host: None,
            scheme: "http",
            internal: false,
            last_host: Default::default(),
            attempts: Default::default(),
            override_hosts: Default::default(),
        }
    }

    /// Counts a response code for the cluster and the virtual cluster, with dynamic stats on.
    pub(super) fn charge(&self, code: u16) {
        let host = self.last_host.borrow();
        let host = host.as_deref().map(|h| Charged::host(h, false));
        self.charge_to(code, host.unwrap_or_default());
    }

    /// Counts a response code as [`Forward::charge`], for the host that answered.
    fn charge_to(&self, code: u16, host: Charged<'_>) {
        if self.dynamic_stats {
            self.cluster.stats.response_code(code, self.internal, host);
            self.endpoint_stats.response_code(code);
        }
    }

    /// The next host the request names (`override_host`) that the cluster has, whatever its
    /// health; none once each was tried (the fallback policy picks then).
    fn next_named_host(&self) -> Option<Rc<Host>> {
        let (named, next) = &self.override_hosts;
        while let Some(a) = named.get(next.get()) {
            next.set(next.get() + 1);
            let found = self
                .cluster
                .hosts
                .iter()
                .find(|h| h.address.to_string() == *a);
            if let Some(h) = found {
                return Some(h.clone());
            }
        }
        None
    }

    /// A host for the next attempt, avoiding `avoid` up to `tries` more picks.
    pub(super) fn select_host(
        &self,
        reject: &dyn Fn(&Host) -> bool,
        tries: u32,
        load: Option<&crate::upstream::lb::PriorityLoad>,
    ) -> Option<Rc<Host>> {
        let pick = |attempt| match load {
            Some(load) => {
                self.cluster
                    .pick_host_with_load(self.hash, attempt, self.criteria.as_deref(), load)
            }
            None => self.cluster.select_host_hashed(
                self.dest,
                |d| self.worker.is_own_listener(d),
                self.hash,
                attempt,
                self.criteria.as_deref(),
            ),
        };
        // A stateful session's host, when its health is one the cluster lets a session name
        // (`override_host_status`).
        let wanted = self.override_host.filter(|o| o.address.is_some());
        let allowed = self.cluster.config().override_host_status;
        let session = wanted.and_then(|o| {
            self.cluster
                .hosts
                .iter()
                .find(|h| Some(h.address) == o.address)
                .filter(|h| allowed.contains(h.status))
                .cloned()
        });
        let mut host = match session.or_else(|| self.next_named_host()) {
            Some(h) => h,
            // `strict`: no other host.
            None if wanted.is_some_and(|o| o.strict) => return None,
            None => pick(0)?,
        };
        for attempt in 1..=tries {
            if !reject(&host) {
                break;
            }
            host = pick(attempt)?;
        }
        let host = self.cluster.variant_from(
            host,
            self.downstream,
            Some(self.authority),
            self.source,
            self.alpn.clone(),
            self.high,
            self.shared.clone(),
        );
        *self.last_host.borrow_mut() = Some(host.clone());
        Some(host)
    }

    /// The response of a successful attempt as the client gets it.
    pub(super) fn finish_response(
        &self,
        mut resp: Response<ProxyBody>,
        conn: Conn,
        mut upstream: Upstream,
        attempts: u32,
        stream_until: Option<tokio::time::Instant>,
        info: Option<&StreamInfo>,
    ) -> (Response<ProxyBody>, Upstream, Option<Deadline>) {
        // Envoy's router: a canary by the host's metadata or by the response's word.
        let canary = resp
            .headers()
            .get("x-envoy-upstream-canary")
            .is_some_and(|v| v == "true");
        upstream.canary_header = canary;
        // Client-side weighted round robin: the response's load report weighs its host.
        if let Some(cfg) = &self.cluster.config().client_side_weights {
            if let Some(w) = crate::upstream::orca::parse(resp.headers())
                .ok()
                .and_then(|r| crate::upstream::orca::weight(&r, cfg))
            {
                upstream.host.stats.weight.report(w);
            }
        }
        self.charge_to(
            resp.status().as_u16(),
            Charged::host(&upstream.host, canary),
        );
        upstream.failed = resp.status().is_server_error();
        upstream.responded = true;
        // For a stateful session, which names the host that answered.
        if self.override_host.is_some() {
            resp.extensions_mut()
                .insert(crate::http::filters::stateful_session::UpstreamAddress(
                    upstream.host.address,
                ));
        }
        let render = |f: &crate::access_log::Format, h: &http::HeaderMap| {
            info.map_or_else(String::new, |i| {
                crate::access_log::header_value(f, i, None, Some(h))
            })
        };
        for p in &self.response_headers {
            p.apply_with(resp.headers_mut(), &render);
        }
        // After the route's changes, as Envoy's router adds them.
        for c in &self.set_cookies {
            resp.headers_mut().append(header::SET_COOKIE, c.clone());
        }
        if self.attempt_count.1 {
            resp.headers_mut().insert(
                X_ENVOY_ATTEMPT_COUNT.clone(),
                headers::number(attempts.into()),
            );
        }
        // After a 101 (or a CONNECT's 2xx) the upstream connection belongs to the tunnel,
        // never to the pool.
        if self.upgrade.is_none() || !switches(self.upgrade, resp.status()) {
            upstream.conn = Some(conn);
        }
        let deadline = (self.timeout.is_some() || stream_until.is_some()).then(|| Deadline {
            timeout: self.timeout,
            request: self.request.clone(),
            upstream_until: stream_until,
        });
        (resp, upstream, deadline)
    }
}

/// How far one attempt got.
pub(super) struct AttemptState {
    /// Its upstream request, once a connection was given to it.
    pub upstream: std::cell::RefCell<Option<Upstream>>,
    /// Why a connect failed, for `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub failure: std::cell::RefCell<Option<String>>,
    /// Whether it negotiated HTTP/2.
    pub http2: std::cell::Cell<bool>,
    /// Whether the pool gave it a connection (Envoy's `onPoolReady`).
    pub connected: std::cell::Cell<bool>,
    /// Its span, until the attempt ends (then its upstream request's).
    span: std::cell::RefCell<Option<Box<crate::trace::UpstreamSpan>>>,
}

impl AttemptState {
    pub(super) fn new() -> Self {
        AttemptState {
            upstream: std::cell::RefCell::new(None),
            failure: std::cell::RefCell::new(None),
            http2: std::cell::Cell::new(false),
            connected: std::cell::Cell::new(false),
            span: std::cell::RefCell::new(None),
        }
    }

    /// The protocol the attempt speaks upstream (`%UPSTREAM_PROTOCOL%`).
    pub(super) fn protocol(&self) -> &'static str {
        if self.http2.get() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }

    /// Gives attempt `attempt` to `host` a span of its own when the stream's tracer spawns
    /// them (`spawn`, from the request as the router got it): its context, not the stream's,
    /// goes upstream.
    pub(super) fn spawn_span(
        &self,
        f: &Forward<'_>,
        spawn: Option<&crate::trace::Spawn>,
        host: &Host,
        parts: &mut http::request::Parts,
        attempt: u32,
    ) {
        let Some(spawn) = spawn else {
            return;
        };
        let config = f.cluster.config();
        let span = spawn.child(
            f.worker,
            &config.name,
            config.stat_name(),
            host.address,
            attempt,
            parts,
            f.downstream,
        );
        span.context().inject(&mut parts.headers);
        *self.span.borrow_mut() = Some(Box::new(span));
    }

    /// The attempt's upstream request as the attempt ends (`outcome`: its response head or
    /// failure, if it came to one), with its span, which learns how far it got. Without an
    /// upstream request (no connection was had) the span ends here.
    pub(super) fn take_upstream(
        &self,
        outcome: Option<&Result<(Response<ProxyBody>, Conn), LocalReply>>,
    ) -> Option<Upstream> {
        let mut upstream = self.upstream.take();
        let Some(mut span) = self.span.take() else {
            return upstream;
        };
        if self.connected.get() {
            span.protocol = Some(self.protocol());
        }
        match outcome {
            Some(Ok((resp, _))) => span.status = Some(resp.status().as_u16()),
            Some(Err(reply)) => span.failed(reply.flag, reply.details),
            None => {}
        }
        if let Some(u) = upstream.as_mut() {
            u.span = Some(span);
        }
        upstream
    }
}

/// The subset criteria of a request: its route's, with the `envoy.lb` values the stream's
/// dynamic metadata holds (a filter's, header_to_metadata's) over them, as Envoy's router
/// merges them.
fn dynamic_lb_criteria(
    route: Option<std::sync::Arc<crate::config::model::MatchCriteria>>,
    parts: &http::request::Parts,
) -> Option<std::sync::Arc<crate::config::model::MatchCriteria>> {
    use crate::config::model::{MatchCriteria, MetaValue};
    let Some(md) = parts
        .extensions
        .get::<crate::stream_info::DynamicMetadata>()
    else {
        return route;
    };
    let keys: Vec<(String, MetaValue)> = md.with(|m| {
        m.filter_metadata
            .get("envoy.lb")
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.clone(), MetaValue(v.canonical().into())))
                    .collect()
            })
            .unwrap_or_default()
    });
    if keys.is_empty() {
        return route;
    }
    Some(std::sync::Arc::new(match route {
        Some(r) => MatchCriteria {
            keys: r.merged(&keys),
            fallback_list: r.fallback_list.clone(),
        },
        None => MatchCriteria {
            keys,
            fallback_list: None,
        },
    }))
}

/// A whole response: its head, body and trailers.
pub type WholeResponse = (http::response::Parts, bytes::Bytes, Option<http::HeaderMap>);

/// Sends a request of skiff's own (a rate limit service's call) to `cluster`, as the router
/// sends one: through the worker's load balancer and pools, counted in the cluster's stats.
/// `timeout` bounds the whole exchange, whose response is read whole.
pub async fn own_request(
    worker: &Rc<Worker>,
    cluster: &Rc<Cluster>,
    head: http::request::Parts,
    body: bytes::Bytes,
    timeout: Option<std::time::Duration>,
) -> Result<WholeResponse, String> {
    own_request_retried(worker, cluster, head, body, timeout, None).await
}

/// [`own_request`], retried under `retry` as the router retries (the body kept to be sent
/// again); `timeout` bounds every attempt together.
pub async fn own_request_retried(
    worker: &Rc<Worker>,
    cluster: &Rc<Cluster>,
    head: http::request::Parts,
    body: bytes::Bytes,
    timeout: Option<std::time::Duration>,
    retry: Option<&std::sync::Arc<crate::router::retry::RetryPolicy>>,
) -> Result<WholeResponse, String> {
    let request = Rc::new(RequestProgress::new(crate::io::FlowPair::default()));
    request.mark_done();
    let authority = authority(&head).unwrap_or_default().to_string();
    let exchange = async {
        let retry = retry.and_then(|p| super::retry::RetryState::new(Some(p), None, &head.headers));
        let f = Forward {
            timeout,
            per_try_timeout: retry.as_ref().and_then(|r| r.per_try_timeout()),
            buffer_limit: if retry.is_some() { usize::MAX } else { 0 },
            ..Forward::own(worker, cluster, &authority, &request)
        };
        let started = std::time::Instant::now();
        let (resp, upstream, _) =
            super::retry::forward(&f, Box::new(head), ProxyBody::full(body), retry, None)
                .await
                .map_err(|r| format!("{} {}", r.status.as_u16(), r.details))?;
        let (mut parts, mut body) = resp.into_parts();
        // As Envoy's router marks every response it forwards, its own requests' too.
        parts.headers.insert(
            &names::X_ENVOY_UPSTREAM_SERVICE_TIME,
            HeaderValue::from(started.elapsed().as_millis() as u64),
        );
        let mut data = bytes::BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(e) => {
                    upstream.finish(EndReason::UpstreamReset);
                    return Err(format!("the response was reset: {e}"));
                }
            }
        }
        upstream.finish(EndReason::Complete);
        Ok((parts, data.freeze(), trailers))
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or_else(|_| Err("timed out".into())),
        None => exchange.await,
    }
}

/// Runs `f` over the filter state a request sees: its stream's, then its connection's.
fn request_filter_state<R>(
    parts: &http::request::Parts,
    f: impl FnOnce(skiff_config::filter_state::View<'_>) -> R,
) -> R {
    crate::stream_info::with_filter_state(
        parts
            .extensions
            .get::<crate::stream_info::DynamicMetadata>(),
        parts
            .extensions
            .get::<std::sync::Arc<crate::stream_info::Connection>>()
            .map(|c| &**c),
        f,
    )
}

/// The connection manager's `access_log_flush_interval` and its logs.
#[derive(Clone, Copy)]
pub(super) struct Periodic<'a> {
    pub interval: std::time::Duration,
    pub logs: &'a [crate::config::model::AccessLog],
    pub writer: &'a crate::access_log::Writer,
}

impl Periodic<'_> {
    /// Writes a periodic line for the stream, and waits for the next one.
    pub(super) fn tick(&self, info: Option<&mut StreamInfo>) {
        if let Some(info) = info {
            self.writer.log_early(self.logs, info, "DownstreamPeriodic");
        }
    }
}

/// One attempt to `host`: the connection, the request, and the response headers.
pub(super) async fn attempt(
    f: &Forward<'_>,
    host: &Rc<Host>,
    parts: Head,
    body: ProxyBody,
    state: &AttemptState,
) -> Result<(Response<ProxyBody>, Conn), LocalReply> {
    let cluster = f.cluster;
    let failure = &state.failure;
    if f.terminate {
        *state.upstream.borrow_mut() = Some(Upstream::start(f, host.clone()));
        let mut stream = Box::pin(pool::connect(cluster, host))
            .await
            .map_err(|e| connect_failure(e, failure))?;
        state.connected.set(true);
        let info = pool::connection_info(stream.get_mut());
        if f.upgrade.is_none() {
            // A POST (`allow_post`): its body goes to the connection, and what comes back is
            // the 200's body, as Envoy's TCP upstream answers.
            let (read, write) = tokio::io::split(stream);
            tokio::task::spawn_local(send_body_over_tcp(body, write));
            let resp = Response::new(ProxyBody::Tcp(Box::new(crate::http::body::TcpBody::new(
                read,
            ))));
            return Ok((resp, Conn::Tunnel(info)));
        }
        let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
        resp.extensions_mut().insert(TcpTunnel::new(stream));
        return Ok((resp, Conn::Tunnel(info)));
    }
    let http2 = match cluster.config().protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Downstream => parts.version == Version::HTTP_2,
        // Known after a host's first connection; only learning it (a connection) is boxed.
        UpstreamProtocol::Auto => match host.negotiated_h2.get() {
            Some(h2) => h2,
            None => match Box::pin(pool::negotiate(cluster, host)).await {
                Ok(h2) => h2,
                Err(e) => return Err(connect_failure(e, failure)),
            },
        },
    };
    state.http2.set(http2);
    *state.upstream.borrow_mut() = Some(Upstream::start(f, host.clone()));
    let target = Target {
        cluster,
        host,
        authority: f.authority,
        request: f.request,
        failure,
        connected: &state.connected,
        tunnel: f.upgrade.is_some(),
        scheme: f.scheme,
    };
    if http2 {
        send_http2(&target, parts, body).await
    } else {
        send_http1(&target, parts, body).await
    }
}

/// Writes a request body to a TCP connection, then half-closes it; a failed read or write
/// drops the connection's write half.
async fn send_body_over_tcp(
    mut body: ProxyBody,
    mut write: tokio::io::WriteHalf<pool::UpstreamStream>,
) {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        if let Some(data) = frame.data_ref() {
            if write.write_all(data).await.is_err() {
                return;
            }
        }
    }
    let _ = write.shutdown().await;
}

/// The local reply for a failed connect; its reason goes to `failure` for the access log.
fn connect_failure(e: ConnectError, failure: &std::cell::RefCell<Option<String>>) -> LocalReply {
    tracing::debug!(error = %e, "upstream connect failed");
    *failure.borrow_mut() = e.transport_failure_reason();
    match e {
        ConnectError::Handshake(_) => LocalReply::PROTOCOL_ERROR,
        ConnectError::Timeout => LocalReply::CONNECT_TIMEOUT,
        ConnectError::Io(_) | ConnectError::PendingFailed | ConnectError::Tls(_) => {
            LocalReply::CONNECT_FAILURE
        }
        ConnectError::Overflow => LocalReply::OVERFLOW,
        // As Envoy's router when no pool can be had: no healthy upstream.
        ConnectError::PoolOverflow => LocalReply::NO_HEALTHY_UPSTREAM,
    }
}

fn hyper_failure(e: &hyper::Error) -> LocalReply {
    tracing::debug!(error = %e, "upstream request failed");
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        LocalReply::PROTOCOL_ERROR
    } else {
        LocalReply::CONNECTION_TERMINATION
    }
}

/// Where one request goes, for the protocol's sender.
struct Target<'a> {
    cluster: &'a Rc<Cluster>,
    host: &'a Rc<Host>,
    authority: &'a str,
    request: &'a RequestProgress,
    /// Why a connect failed, for `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    failure: &'a std::cell::RefCell<Option<String>>,
    /// Set when the pool gives the request a connection.
    connected: &'a std::cell::Cell<bool>,
    /// A CONNECT or an upgrade: over HTTP/2 its stream is the tunnel (a CONNECT, or an
    /// extended CONNECT naming the upgrade's protocol).
    tunnel: bool,
    /// The `:scheme` an HTTP/2 upstream gets.
    scheme: &'a str,
}

/// The TCP connection of a terminated CONNECT, handed to the connection manager with its 200
/// (response extensions must be `Clone`; the connection is taken once).
#[derive(Clone)]
pub struct TcpTunnel(std::sync::Arc<std::sync::Mutex<Option<pool::UpstreamStream>>>);

impl TcpTunnel {
    fn new(stream: pool::UpstreamStream) -> Self {
        TcpTunnel(std::sync::Arc::new(std::sync::Mutex::new(Some(stream))))
    }

    /// The connection, the first time.
    pub fn take(&self) -> Option<pool::UpstreamStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The HTTP/2 stream of a CONNECT the upstream accepted, handed to the connection manager with
/// its 2xx (taken once).
#[derive(Clone)]
pub struct H2Tunnel(std::sync::Arc<std::sync::Mutex<Option<crate::http::h2_tunnel::H2Io>>>);

impl H2Tunnel {
    /// The stream, the first time.
    pub fn take(&self) -> Option<crate::http::h2_tunnel::H2Io> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Whether a response with `status` starts the tunnel of an upgrade of type `upgrade`: a 101,
/// or any 2xx to a CONNECT.
pub fn switches(upgrade: Option<&str>, status: StatusCode) -> bool {
    match upgrade {
        Some("connect") => status.is_success(),
        Some(_) => status == StatusCode::SWITCHING_PROTOCOLS,
        None => false,
    }
}

async fn send_http1(
    t: &Target<'_>,
    mut parts: Head,
    body: ProxyBody,
) -> Result<(Response<ProxyBody>, Conn), LocalReply> {
    let (cluster, host, authority, request) = (t.cluster, t.host, t.authority, t.request);
    let connect_failure = |e| connect_failure(e, t.failure);
    // The authority of an absolute-form or HTTP/2 request wins over any Host header, as in Envoy.
    if parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // HTTP/1.1 upstream requests use origin-form and carry the authority in Host; a CONNECT
    // keeps its authority-form target.
    if parts.method != http::Method::CONNECT
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
    {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            // An absolute-form target without a path (`http://a`) has an empty one.
            .filter(|u| !u.path().is_empty())
            .unwrap_or_else(|| Uri::from_static("/"));
    }
    // A request without a body says so in its framing, as Envoy's codec writes it:
    // `content-length: 0`, but for the methods that carry no body.
    if body.is_end_stream()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && !matches!(
            parts.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::DELETE
                | http::Method::TRACE
                | http::Method::CONNECT
        )
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    parts.version = Version::HTTP_11;
    // proxy_100_continue: the upstream's `100 Continue` goes on to an HTTP/1.1 client.
    let relay = parts
        .extensions
        .remove::<crate::http::h1_guard::ContinueRelay>();
    let mut req = Request::from_parts(*parts, body);
    if let Some(relay) = relay {
        hyper::ext::on_informational(&mut req, move |r| relay.forward(r.status(), r.headers()));
    }
    let (mut sender, mut reused) = host
        .h1
        .acquire(cluster, host)
        .await
        .map_err(connect_failure)?;
    t.connected.set(true);
    loop {
        sender.sending_for(request.downstream_flow.clone());
        if let Err(e) = sender.ready().await {
            if reused {
                // The idle connection went away while it sat in the pool.
                sender = Box::pin(pool::connect_http1(cluster, host))
                    .await
                    .map_err(connect_failure)?;
                reused = false;
                continue;
            }
            return Err(hyper_failure(&e));
        }
        let guard = sender.abandon_guard();
        let sent = sender.try_send_request(req).await;
        guard.disarm();
        match sent {
            Ok(resp) => {
                // More headers than the cluster's max_headers_count: Envoy's codec refuses the
                // response (502, UPE) and the connection with it.
                if crate::http::framing::ambiguous_response(resp.status(), resp.headers())
                    || resp.headers().len() > cluster.config().max_response_headers as usize
                {
                    // Envoy refuses the response (502 UPE); dropping the sender and the body
                    // here closes the connection, so nothing after it is read as a response.
                    tracing::debug!("upstream response with ambiguous framing");
                    return Err(LocalReply::PROTOCOL_ERROR);
                }
                sender.saw_response(&resp);
                return Ok((
                    // Trailers read over HTTP/1.1 go on only with the cluster's
                    // `enable_trailers`, as Envoy's codec reads them.
                    resp.map(|b| {
                        let trailers = if cluster.config().h1_trailers {
                            Trailers::Keep
                        } else {
                            Trailers::Drop
                        };
                        ProxyBody::Incoming(b, None, trailers)
                    }),
                    Conn::Http1(sender),
                ));
            }
            Err(mut e) => match e.take_message() {
                // Not sent: safe to try once more on a fresh connection.
                Some(unsent) if reused => {
                    req = unsent;
                    sender = Box::pin(pool::connect_http1(cluster, host))
                        .await
                        .map_err(connect_failure)?;
                    reused = false;
                }
                _ => return Err(hyper_failure(e.error())),
            },
        }
    }
}

async fn send_http2(
    t: &Target<'_>,
    mut parts: Head,
    body: ProxyBody,
) -> Result<(Response<ProxyBody>, Conn), LocalReply> {
    let (cluster, host, authority, request) = (t.cluster, t.host, t.authority, t.request);
    let connect_failure = |e| connect_failure(e, t.failure);
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // An upgrade goes as an extended CONNECT (RFC 8441): `:protocol` from its `Upgrade`
    // header, as Envoy's `transformUpgradeRequestFromH1toH2`.
    let protocol = (t.tunnel && parts.method != http::Method::CONNECT)
        .then(|| {
            parts
                .headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .flatten();
    // A CONNECT names its authority alone (`:path` and `:scheme` absent).
    let uri = if t.tunnel && protocol.is_none() {
        Uri::builder().authority(authority).build()
    } else {
        Uri::builder()
            .scheme(t.scheme)
            .authority(authority)
            .path_and_query(pq)
            .build()
    }
    .map_err(|_| LocalReply::MISSING_HOST)?;
    parts.headers.remove(header::HOST);
    if t.tunnel {
        // HTTP/1.1's connection headers have no place on an HTTP/2 stream.
        for h in [
            header::CONNECTION,
            header::UPGRADE,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
        ] {
            parts.headers.remove(h);
        }
        parts.headers.remove("keep-alive");
        parts.headers.remove("proxy-connection");
        return Box::pin(send_h2_connect(t, *parts, uri, protocol)).await;
    }
    let end_stream = body.is_end_stream();
    let mut body = Some(body);
    // A stream the upstream refused without processing (GOAWAY, REFUSED_STREAM) is retried once on
    // another connection when its body has not been sent yet.
    for attempt in 0..2 {
        let slot = host
            .h2
            .stream(cluster, host)
            .await
            .map_err(connect_failure)?;
        t.connected.set(true);
        let mut req = Request::new(());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = parts.headers.clone();
        let sender = match slot.sender().ready().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection refuses new streams");
                slot.conn().retire();
                continue;
            }
        };
        let mut sender = sender;
        let (response, send_stream) = match sender.send_request(req, end_stream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection refused a stream");
                slot.conn().retire();
                continue;
            }
        };
        let mut pump = None;
        if !end_stream {
            if let Some(b) = body.take() {
                pump = Some(
                    tokio::task::spawn_local(pool::pump_h2_body(
                        b,
                        send_stream,
                        cluster.clone(),
                        request.downstream_flow.clone(),
                    ))
                    .abort_handle(),
                );
            }
        }
        match response.await {
            // Envoy's HTTP/2 codec counts `:status` among the headers it limits; it resets the
            // stream, which the router reports as the upstream's reset (503, UR).
            Ok(resp)
                if resp.headers().len() + 1 > cluster.config().max_response_headers as usize =>
            {
                tracing::debug!("upstream HTTP/2 response with too many headers");
                if let Some(p) = pump {
                    p.abort();
                }
                return Err(LocalReply::REMOTE_RESET);
            }
            Ok(resp) => {
                let resp = resp.map(|recv| ProxyBody::H2 {
                    recv,
                    data_done: false,
                });
                return Ok((resp, Conn::Http2 { stream: slot, pump }));
            }
            Err(e) => {
                let refused = e.is_go_away() && e.is_remote()
                    || e.reason() == Some(h2::Reason::REFUSED_STREAM);
                if refused {
                    slot.conn().retire();
                }
                if refused && end_stream && attempt == 0 {
                    continue;
                }
                tracing::debug!(error = %e, "upstream HTTP/2 stream failed");
                return Err(if refused && !e.is_go_away() {
                    LocalReply::REFUSED_STREAM
                } else if e.is_io() {
                    LocalReply::CONNECTION_TERMINATION
                } else {
                    LocalReply::REMOTE_RESET
                });
            }
        }
    }
    Err(LocalReply::CONNECTION_TERMINATION)
}

/// A CONNECT over an HTTP/2 connection: the stream stays open for the tunnel; a 2xx hands it
/// to the connection manager ([`H2Tunnel`]), any other answer goes to the client as it is.
/// With `protocol`, an upgrade as an extended CONNECT: its 200 goes to the client as the
/// `101` that switches protocols (Envoy's `transformUpgradeResponseFromH2toH1`).
async fn send_h2_connect(
    t: &Target<'_>,
    parts: http::request::Parts,
    uri: Uri,
    protocol: Option<String>,
) -> Result<(Response<ProxyBody>, Conn), LocalReply> {
    let (cluster, host) = (t.cluster, t.host);
    let slot = host
        .h2
        .stream(cluster, host)
        .await
        .map_err(|e| connect_failure(e, t.failure))?;
    t.connected.set(true);
    let mut req = Request::new(());
    *req.method_mut() = http::Method::CONNECT;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = parts.headers;
    if let Some(p) = &protocol {
        req.extensions_mut()
            .insert(h2::ext::Protocol::from(p.as_str()));
    }
    let mut sender = match slot.sender().ready().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "upstream HTTP/2 connection refuses new streams");
            slot.conn().retire();
            return Err(LocalReply::CONNECTION_TERMINATION);
        }
    };
    let (response, send) = sender.send_request(req, false).map_err(|e| {
        tracing::debug!(error = %e, "upstream HTTP/2 connection refused a stream");
        slot.conn().retire();
        LocalReply::CONNECTION_TERMINATION
    })?;
    let switched = |s: StatusCode| match &protocol {
        Some(_) => s == StatusCode::OK,
        None => s.is_success(),
    };
    match response.await {
        Ok(resp) if switched(resp.status()) => {
            let (mut head, recv) = resp.into_parts();
            if let Some(p) = &protocol {
                head.status = StatusCode::SWITCHING_PROTOCOLS;
                if let Ok(v) = HeaderValue::from_str(p) {
                    head.headers.insert(header::UPGRADE, v);
                }
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            let mut resp = Response::from_parts(head, ProxyBody::Empty);
            let io = crate::http::h2_tunnel::H2Io::new(send, recv);
            resp.extensions_mut()
                .insert(H2Tunnel(std::sync::Arc::new(std::sync::Mutex::new(Some(
                    io,
                )))));
            Ok((
                resp,
                Conn::Http2 {
                    stream: slot,
                    pump: None,
                },
            ))
        }
        Ok(resp) => {
            let resp = resp.map(|recv| ProxyBody::H2 {
                recv,
                data_done: false,
            });
            Ok((
                resp,
                Conn::Http2 {
                    stream: slot,
                    pump: None,
                },
            ))
        }
        Err(e) => {
            tracing::debug!(error = %e, "upstream HTTP/2 CONNECT failed");
            Err(if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                LocalReply::REFUSED_STREAM
            } else if e.is_io() {
                LocalReply::CONNECTION_TERMINATION
            } else {
                LocalReply::REMOTE_RESET
            })
        }
    }
}

/// The number of internal redirects a request has followed (Envoy keeps it in filter state).
#[derive(Debug, Clone, Copy)]
struct InternalRedirects(u32);

/// The routes `previous_routes` predicates have let a request's redirects lead to, by the name
/// of the route whose policy has the predicate (Envoy keeps them in filter state).
#[derive(Debug, Clone, Default)]
struct PreviousRoutes(Vec<(std::sync::Arc<str>, Vec<String>)>);

/// Whether every predicate of `policy` accepts the route named `target` (Envoy's
/// `acceptTargetRoute`, in order, each one's record kept on the request).
fn redirect_accepted(
    policy: &crate::router::InternalRedirect,
    parts: &mut http::request::Parts,
    target: &str,
    from_https: bool,
    to_https: bool,
) -> bool {
    use crate::router::RedirectPredicate as P;
    policy.predicates.iter().all(|p| match p {
        P::AllowListed(names) => names.iter().any(|n| n == target),
        P::SafeCrossScheme => from_https || !to_https,
        P::PreviousRoutes => {
            let seen = parts
                .extensions
                .get_mut::<PreviousRoutes>()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut seen = seen.0;
            let i = match seen.iter().position(|(r, _)| *r == policy.route_name) {
                Some(i) => i,
                None => {
                    seen.push((policy.route_name.clone(), Vec::new()));
                    seen.len() - 1
                }
            };
            let fresh = !seen[i].1.iter().any(|r| r == target);
            if fresh {
                seen[i].1.push(target.to_string());
            }
            parts.extensions.insert(PreviousRoutes(seen));
            fresh
        }
    })
}

/// The request an upstream's redirect leads to, as Envoy's
/// `convertRequestHeadersForInternalRedirect` makes it: the `Location`'s scheme, authority and
/// path (its fragment dropped), `x-envoy-original-url` naming the request as it was, and a 303
/// to anything but GET or HEAD turned into a GET without a body. `Err` names the
/// `passthrough_internal_redirect_*` reason (none for a missing `Location`).
fn redirect_request(
    policy: &crate::router::InternalRedirect,
    mut parts: http::request::Parts,
    response: &http::HeaderMap,
    scheme: &str,
    status: StatusCode,
) -> Result<(http::request::Parts, &'static str), Option<&'static str>> {
    let location = response.get(header::LOCATION).ok_or(None)?;
    let url = location
        .to_str()
        .ok()
        .filter(|l| !l.is_empty())
        .and_then(|l| Uri::try_from(l).ok())
        .filter(|u| u.scheme().is_some() && u.authority().is_some())
        .ok_or(Some("bad_location"))?;
    let from_http = scheme != "https";
    let to_http = url.scheme_str() != Some("https");
    if !policy.cross_scheme && from_http != to_http {
        return Err(Some("unsafe_scheme"));
    }
    let count = parts
        .extensions
        .get::<InternalRedirects>()
        .map_or(0, |c| c.0);
    if count >= policy.max {
        return Err(Some("too_many_redirects"));
    }
    let original = format!(
        "{}://{}{}",
        if from_http { "http" } else { "https" },
        authority(&parts).unwrap_or(""),
        parts.uri.path_and_query().map_or("", |p| p.as_str())
    );
    let pq = url.path_and_query().map_or("/", |p| p.as_str());
    let pq = pq.split('#').next().unwrap_or(pq);
    let pq = if pq.is_empty() || pq.starts_with('?') {
        format!("/{pq}")
    } else {
        pq.to_string()
    };
    let authority = url.authority().map_or("", |a| a.as_str()).to_string();
    parts.uri = Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|_| Some("bad_location"))?;
    set_host(&mut parts, &authority);
    // response_headers_to_copy: the redirect's values replace the request's; a header the
    // redirect lacks is removed.
    for name in &policy.copy_headers {
        parts.headers.remove(name);
        for v in response.get_all(name) {
            parts.headers.append(name.clone(), v.clone());
        }
    }
    if status == StatusCode::SEE_OTHER
        && parts.method != http::Method::GET
        && parts.method != http::Method::HEAD
    {
        parts.method = http::Method::GET;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    if let Ok(v) = HeaderValue::from_str(&original) {
        parts
            .headers
            .insert(http::HeaderName::from_static("x-envoy-original-url"), v);
    }
    parts.extensions.insert(InternalRedirects(count + 1));
    Ok((parts, if to_http { "http" } else { "https" }))
}

/// The `location` of a redirect, as Envoy's `Http::Utility::newUri` builds it.
fn redirect_location(
    route: &Route,
    r: &Redirect,
    parts: &http::request::Parts,
    host: &str,
    scheme: &str,
) -> HeaderValue {
    let request_path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let final_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
    let final_host = match &r.host {
        Some(h) => h.clone(),
        None => redirect_host(host, final_scheme, &port, parts),
    };
    let mut keep_query = true;
    let path = match &r.path {
        PathRedirect::Keep => request_path.to_string(),
        PathRedirect::Rewrite(rw) => route.rewrite_path(rw, request_path),
        PathRedirect::Path(p) if p.contains('?') => {
            // A query in path_redirect replaces the request's and survives strip_query.
            keep_query = false;
            p.clone()
        }
        PathRedirect::Path(p) => match request_path.find('?') {
            Some(i) => format!("{p}{}", &request_path[i..]),
            None => p.clone(),
        },
    };
    let mut path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    if keep_query && r.strip_query {
        if let Some(i) = path.find('?') {
            path.truncate(i);
        }
    }
    let location = format!("{final_scheme}://{final_host}{port}{path}");
    HeaderValue::from_str(&location).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// The request's host for a redirect: its port dropped when the redirect sets one, or when
/// the scheme changes away from the port's default (Envoy's `processRequestHost`).
fn redirect_host(
    host: &str,
    new_scheme: &str,
    new_port: &str,
    parts: &http::request::Parts,
) -> String {
    if host.is_empty() {
        return String::new();
    }
    let port_at = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    let Some(at) = port_at else {
        return host.to_string();
    };
    let request_port = &host[at..];
    let proto = parts
        .headers
        .get(&names::X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut remove = !new_port.is_empty();
    if new_scheme != proto {
        remove |= proto == "https" && request_port == ":443";
        remove |= proto == "http" && request_port == ":80";
    }
    if remove {
        host[..at].to_string()
    } else {
        host.to_string()
    }
}

/// `x-envoy-is-timeout-retry`.
pub(super) static X_ENVOY_IS_TIMEOUT_RETRY: http::HeaderName =
    http::HeaderName::from_static("x-envoy-is-timeout-retry");

/// `x-envoy-attempt-count`: the attempt a request is, or the attempts a response took.
pub(super) static X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");

/// Appends the host a rewrite replaced to `x-forwarded-host`, unless it is already the last
/// value there (Envoy's `updateAuthority`).
fn append_forwarded_host(headers: &mut http::HeaderMap, host: &str) {
    static XFH: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
    let existing = headers
        .get(&XFH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if existing.rsplit(',').next().map(str::trim) == Some(host) {
        return;
    }
    let value = if existing.is_empty() {
        host.to_string()
    } else {
        format!("{existing},{host}")
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFH.clone(), v);
    }
}

/// The hosts a request names for its cluster's `override_host` policy: from each source in
/// order (a header's first value, a dynamic metadata string), comma-separated addresses.
fn named_hosts(cluster: &Cluster, parts: &http::request::Parts) -> Vec<String> {
    use crate::config::model::OverrideHostSource;
    let Some(policy) = &cluster.config().override_host else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for source in &policy.sources {
        let value = match source {
            OverrideHostSource::Header(name) => parts
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            OverrideHostSource::Metadata { namespace, path } => parts
                .extensions
                .get::<crate::stream_info::DynamicMetadata>()
                .and_then(|m| {
                    m.with(|m| match m.lookup(namespace, path) {
                        Some(skiff_config::metadata::Value::String(s)) => Some(s.clone()),
                        _ => None,
                    })
                }),
        };
        if let Some(v) = value {
            out.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            );
        }
    }
    out
}
