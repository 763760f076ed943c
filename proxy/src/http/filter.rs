//! The HTTP filter API (Envoy's semantics, Rust's idiom).
//!
//! Decoder hooks see the request (headers, data, trailers) in configuration order; encoder hooks
//! see the response in reverse order. A headers hook may continue, answer with a local reply, or
//! stop with a future that later resumes the chain (async work such as an authorization call).
//! A data hook may continue or ask the connection manager to buffer the body until it is
//! complete (StopIterationAndBuffer); nothing is buffered unless a filter asks. The router is
//! the terminal decoder filter and is not part of this chain: it consumes what the chain passes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::http::body::{BoxError, ProxyBody};
use crate::http::local_reply::LocalReply;

/// What a stopped headers hook resolves to.
pub enum Resume {
    /// Go on with the next filter.
    Continue,
    /// Go on with the next filter once this changed the request (the headers a rate limit
    /// or an authorization service adds), or answer with the reply it gives (a check made
    /// once the keys it needed came).
    ContinueWith(RequestChange),
    /// Answer with this reply.
    LocalReply(LocalReply),
}

/// A change a stopped filter makes to the request when it resumes, or the reply it gives.
pub type RequestChange = Box<dyn FnOnce(&mut http::request::Parts) -> Option<LocalReply>>;

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resume::Continue => f.write_str("Continue"),
            Resume::ContinueWith(_) => f.write_str("ContinueWith(..)"),
            Resume::LocalReply(r) => f.debug_tuple("LocalReply").field(r).finish(),
        }
    }
}

/// The result of a headers hook.
pub enum HeadersStatus {
    /// Go on with the next filter.
    Continue,
    /// Stop; the future resumes the chain.
    StopIteration(Pin<Box<dyn Future<Output = Resume>>>),
    /// Answer with this reply; later filters and the router are skipped.
    LocalReply(LocalReply),
    /// Stop until the request body is in: all of it, or, when `partial`, at least `limit`
    /// bytes of it; the filter's [`HttpFilter::decode_buffered`] then decides. Without
    /// `partial`, a body longer than `limit` is answered 413, as Envoy answers a request over
    /// a filter's decoder buffer limit. Only the request's headers hooks may return it.
    StopForBody {
        /// The bytes the filter needs.
        limit: usize,
        /// Whether a longer body is cut rather than refused.
        partial: bool,
    },
}

/// Put into a request's extensions by a filter that clears the route cache (jwt_authn's
/// `clear_route_cache`): the route is picked again once the decoder filters ran.
#[derive(Debug, Clone, Copy)]
pub struct ClearRouteCache;

/// The result of a data hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// Pass the data on.
    Continue,
    /// Hold the data (and what follows) until this filter continues, at the latest at the end of
    /// the body.
    StopIterationAndBuffer,
}

/// One HTTP filter on one stream. Every hook has a pass-through default.
pub trait HttpFilter {
    /// Request headers.
    fn decode_headers(
        &mut self,
        _head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }
    /// The decision of a filter whose headers hook stopped for the body
    /// ([`HeadersStatus::StopForBody`]): `body` is what came of it (with `partial`, possibly
    /// more than the limit), `complete` whether that is all of it.
    fn decode_buffered(
        &mut self,
        _head: &mut http::request::Parts,
        _body: &Bytes,
        _complete: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }
    /// A chunk of the request body.
    fn decode_data(&mut self, _data: &mut Bytes, _end_stream: bool) -> DataStatus {
        DataStatus::Continue
    }
    /// Request trailers.
    fn decode_trailers(&mut self, _trailers: &mut HeaderMap) {}
    /// Response headers.
    fn encode_headers(
        &mut self,
        _head: &mut http::response::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }
    /// A chunk of the response body.
    fn encode_data(&mut self, _data: &mut Bytes, _end_stream: bool) -> DataStatus {
        DataStatus::Continue
    }
    /// Response trailers.
    fn encode_trailers(&mut self, _trailers: &mut HeaderMap) {}
}

/// One configured HTTP filter on one worker: its name, whether it runs by default, its
/// configuration and its stats.
#[derive(Debug)]
pub struct Factory {
    /// `name`, which routes' `typed_per_filter_config` use.
    name: String,
    /// `disabled`: runs only where a route's configuration names it.
    disabled: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// `envoy.filters.http.compressor`.
    Compressor(Rc<crate::http::filters::compressor::Factory>),
    /// `envoy.filters.http.decompressor`.
    Decompressor(Rc<crate::http::filters::decompressor::Factory>),
    /// Istio's `istio.alpn`.
    IstioAlpn(std::sync::Arc<crate::config::model::IstioAlpn>),
    /// Istio's `istio.metadata_exchange` (HTTP).
    PeerMetadata(Rc<crate::http::filters::istio::PeerFactory>),
    /// `envoy.filters.http.health_check`.
    HealthCheck(std::sync::Arc<crate::config::model::HealthCheck>),
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(Rc<crate::http::filters::local_ratelimit::Factory>),
    /// `envoy.filters.http.fault`.
    Fault(Rc<crate::http::filters::fault::Factory>),
    /// `envoy.filters.http.rbac`.
    Rbac(Rc<crate::http::filters::rbac::Factory>),
    /// `envoy.filters.http.jwt_authn`.
    JwtAuthn(Rc<crate::http::filters::jwt_authn::Factory>),
    /// `envoy.filters.http.header_to_metadata`.
    HeaderToMetadata(Rc<crate::http::filters::header_to_metadata::Factory>),
    /// `envoy.filters.http.cors`.
    Cors(Rc<crate::http::filters::cors::Factory>),
    /// `envoy.filters.http.ratelimit`.
    RateLimit(Rc<crate::http::filters::ratelimit::Factory>),
    /// `envoy.filters.http.ext_authz`.
    ExtAuthz(Rc<crate::http::filters::ext_authz::Factory>),
    /// `envoy.filters.http.set_filter_state`.
    SetFilterState(std::sync::Arc<crate::config::filter_state::HttpSetFilterState>),
    /// `envoy.filters.http.basic_auth`.
    BasicAuth(Rc<crate::http::filters::basic_auth::Factory>),
    /// `envoy.filters.http.stateful_session`.
    StatefulSession(std::sync::Arc<crate::config::model::StatefulSession>),
    /// `envoy.filters.http.header_mutation`.
    HeaderMutation(std::sync::Arc<crate::config::model::HeaderMutation>),
}

impl Factory {
    /// Starts what the filter does in the background on `worker` (fetching remote keys
    /// ahead), for as long as it is configured.
    pub fn start(&self, worker: &Rc<crate::worker::Worker>) {
        if let Kind::JwtAuthn(j) = &self.kind {
            j.start(worker);
        }
    }

    /// Whether the filter may write the stream's dynamic metadata or filter state.
    pub fn writes_metadata(&self) -> bool {
        match &self.kind {
            // RBAC writes its verdicts, a rate limit service may send some.
            Kind::HeaderToMetadata(_)
            | Kind::SetFilterState(_)
            | Kind::Rbac(_)
            | Kind::RateLimit(_) => true,
            Kind::JwtAuthn(j) => j.writes_metadata(),
            _ => false,
        }
    }

    /// Whether the filter renders formats from the stream's record (which the connection
    /// manager then keeps).
    pub fn reads_record(&self) -> bool {
        match &self.kind {
            Kind::SetFilterState(_) => true,
            // Its values with operators (a route's too, which may come from RDS).
            Kind::HeaderMutation(_) => true,
            _ => false,
        }
    }
}

/// The worker's factories for an HCM's filters; stats go under `http.<stat_prefix>.`.
pub fn factories(
    configs: &[crate::config::model::HttpFilter],
    shard: &std::sync::Arc<crate::stats::Shard>,
    stat_prefix: &str,
) -> Vec<Factory> {
    use crate::config::model::HttpFilterConfig;
    configs
        .iter()
        .map(|f| Factory {
            name: f.name.clone(),
            disabled: f.disabled,
            kind: match &f.config {
                HttpFilterConfig::Compressor(cfg) => Kind::Compressor(Rc::new(
                    crate::http::filters::compressor::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
                HttpFilterConfig::Decompressor(cfg) => {
                    Kind::Decompressor(Rc::new(crate::http::filters::decompressor::Factory::new(
                        cfg.clone(),
                        shard,
                        stat_prefix,
                    )))
                }
                HttpFilterConfig::IstioAlpn(cfg) => Kind::IstioAlpn(cfg.clone()),
                HttpFilterConfig::PeerMetadata(cfg) => Kind::PeerMetadata(Rc::new(
                    crate::http::filters::istio::PeerFactory::new(cfg.clone()),
                )),
                HttpFilterConfig::HealthCheck(cfg) => Kind::HealthCheck(cfg.clone()),
                HttpFilterConfig::LocalRateLimit(cfg) => Kind::LocalRateLimit(Rc::new(
                    crate::http::filters::local_ratelimit::Factory::new(cfg.clone(), shard),
                )),
                HttpFilterConfig::Fault(cfg) => Kind::Fault(Rc::new(
                    crate::http::filters::fault::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
                HttpFilterConfig::Rbac(cfg) => Kind::Rbac(Rc::new(
                    crate::http::filters::rbac::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
                HttpFilterConfig::JwtAuthn(cfg) => Kind::JwtAuthn(Rc::new(
                    crate::http::filters::jwt_authn::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
                HttpFilterConfig::HeaderToMetadata(cfg) => Kind::HeaderToMetadata(Rc::new(
                    crate::http::filters::header_to_metadata::Factory::new(cfg.clone(), shard),
                )),
                HttpFilterConfig::Cors => Kind::Cors(Rc::new(
                    crate::http::filters::cors::Factory::new(shard, stat_prefix),
                )),
                HttpFilterConfig::ExtAuthz(cfg) => Kind::ExtAuthz(Rc::new(
                    crate::http::filters::ext_authz::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
                HttpFilterConfig::RateLimit(cfg) => Kind::RateLimit(Rc::new(
                    crate::http::filters::ratelimit::Factory::new(cfg.clone(), shard),
                )),
                HttpFilterConfig::SetFilterState(cfg) => Kind::SetFilterState(cfg.clone()),
                HttpFilterConfig::HeaderMutation(cfg) => Kind::HeaderMutation(cfg.clone()),
                HttpFilterConfig::StatefulSession(cfg) => Kind::StatefulSession(cfg.clone()),
                HttpFilterConfig::BasicAuth(cfg) => Kind::BasicAuth(Rc::new(
                    crate::http::filters::basic_auth::Factory::new(cfg.clone(), shard, stat_prefix),
                )),
            },
        })
        .collect()
}

/// Whether a request's head matches every one of `matchers` (a filter's `headers`), pseudo
/// headers included, as Envoy's `HeaderUtility::matchHeaders`.
pub fn headers_match(
    matchers: &[crate::config::model::HeaderMatch],
    head: &http::request::Parts,
) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let view = request_view(head);
    matchers
        .iter()
        .all(|m| crate::router::header_matches(m, &view))
}

/// A request head as header matchers read it (pseudo-headers included), outside routing.
pub fn request_view(head: &http::request::Parts) -> crate::router::RequestView<'_> {
    crate::router::RequestView {
        method: head.method.as_str(),
        path: route_path(head),
        authority: crate::http::conn_manager::authority(head).unwrap_or(""),
        scheme: head.uri.scheme_str().unwrap_or("http"),
        headers: &head.headers,
        runtime: &crate::config::runtime::EMPTY,
        random: 0,
        peer_certificate: false,
        metadata: None,
        filter_state: Default::default(),
    }
}

/// What a stream's filters are made with: the route it selected (each filter's per-route
/// configuration) and what they need to know of the connection.
pub struct StreamContext<'a> {
    /// The worker the stream runs on (its clusters, for the filters' own requests).
    pub worker: &'a Rc<crate::worker::Worker>,
    /// The route, resolved before the filters run.
    pub selection: &'a crate::http::filters::router::Selection,
    /// The client's address as the connection manager trusts it (from `x-forwarded-for`
    /// where configured), Envoy's downstream remote address.
    pub remote: std::net::IpAddr,
    /// What the connection's streams share.
    pub connection: &'a ConnectionState,
    /// The downstream connection.
    pub downstream: Downstream<'a>,
    /// The stream's dynamic metadata, when a filter of the chain writes some.
    pub metadata: Option<&'a crate::stream_info::DynamicMetadata>,
    /// The stream's record, when the connection manager keeps one.
    pub info: Option<&'a crate::stream_info::StreamInfo>,
}

/// The downstream connection a stream arrived on, as filters see it.
pub struct Downstream<'a> {
    /// Its local address (the original destination once listener filters ran).
    pub local: std::net::SocketAddr,
    /// Its peer (after a PROXY protocol header).
    pub peer: std::net::SocketAddr,
    /// What the listener learnt of it: the direct peer, the SNI, TLS.
    pub connection: &'a std::sync::Arc<crate::stream_info::Connection>,
}

/// What the filters of one connection's streams share: the buckets of local rate limits kept
/// per connection, by configuration object (held, so its address cannot pass to another).
#[derive(Debug, Default)]
pub struct ConnectionState {
    limiters: RefCell<
        Vec<(
            std::sync::Arc<crate::config::model::HttpLocalRateLimit>,
            std::sync::Arc<crate::http::filters::token_bucket::Limiter>,
        )>,
    >,
}

impl ConnectionState {
    /// This connection's buckets for the configuration `c`.
    pub fn limiter(
        &self,
        c: &std::sync::Arc<crate::config::model::HttpLocalRateLimit>,
    ) -> std::sync::Arc<crate::http::filters::token_bucket::Limiter> {
        let mut all = self.limiters.borrow_mut();
        if let Some((_, l)) = all.iter().find(|(k, _)| std::sync::Arc::ptr_eq(k, c)) {
            return l.clone();
        }
        let l = std::sync::Arc::new(crate::http::filters::token_bucket::Limiter::new(c));
        all.push((c.clone(), l.clone()));
        l
    }
}

/// Creates the filters of a new stream, in order; `None` when there are none, so a stream
/// without filters allocates nothing for them. The router is not among them: it is the
/// terminal filter the connection manager runs after the chain. A filter a route disables
/// (or that is disabled unless a route names it) is left out, as Envoy leaves it out of the
/// stream's chain.
pub fn build(factories: &[Factory], cx: &StreamContext<'_>) -> Option<FilterChain> {
    use crate::router::PerFilterConfig;
    if factories.is_empty() {
        return None;
    }
    // What the stream's compressor filters share: the encodings offered and the choice.
    let negotiation = Rc::default();
    let filters: Vec<Box<dyn HttpFilter>> = factories
        .iter()
        .filter_map(|f| -> Option<Box<dyn HttpFilter>> {
            let per_route = cx.selection.per_filter(&f.name);
            match per_route {
                Some(PerFilterConfig::Disabled) => return None,
                None if f.disabled => return None,
                _ => {}
            }
            Some(match &f.kind {
                Kind::Compressor(c) => {
                    let route = match per_route {
                        Some(PerFilterConfig::Compressor(r)) => Some(*r),
                        _ => None,
                    };
                    Box::new(c.filter(&negotiation, route))
                }
                Kind::Decompressor(d) => Box::new(d.filter()),
                Kind::IstioAlpn(t) => {
                    Box::new(crate::http::filters::istio::AlpnFilter::new(t.clone()))
                }
                Kind::PeerMetadata(p) => Box::new(p.filter()),
                Kind::HealthCheck(c) => Box::new(
                    crate::http::filters::health_check::HealthCheckFilter::new(c.clone()),
                ),
                Kind::LocalRateLimit(l) => {
                    let route = match per_route {
                        Some(PerFilterConfig::LocalRateLimit(r)) => Some(r),
                        _ => None,
                    };
                    Box::new(l.filter(route, cx))
                }
                Kind::Fault(f) => {
                    let route = match per_route {
                        Some(PerFilterConfig::Fault(r)) => Some(r),
                        _ => None,
                    };
                    Box::new(f.filter(route))
                }
                Kind::Rbac(r) => {
                    let route = match per_route {
                        Some(PerFilterConfig::Rbac(c)) => Some(c),
                        _ => None,
                    };
                    Box::new(r.filter(route, cx))
                }
                Kind::JwtAuthn(j) => Box::new(j.filter(per_route, cx.metadata, cx.worker)),
                Kind::HeaderToMetadata(h) => {
                    let route = match per_route {
                        Some(PerFilterConfig::HeaderToMetadata(r)) => Some(r),
                        _ => None,
                    };
                    Box::new(h.filter(route, cx.metadata))
                }
                Kind::Cors(c) => {
                    let mut policies: Vec<_> = cx
                        .selection
                        .per_filter_all(&f.name)
                        .filter_map(|p| match p {
                            PerFilterConfig::Cors(p) => Some(p.clone()),
                            _ => None,
                        })
                        .collect();
                    // Without any, the route's and the virtual host's deprecated `cors`.
                    if policies.is_empty() {
                        let route = cx.selection.route().and_then(|r| r.cors.clone());
                        let vhost = cx.selection.vhost().and_then(|v| v.cors.clone());
                        policies.extend(route.into_iter().chain(vhost));
                    }
                    Box::new(c.filter(policies, cx.selection))
                }
                Kind::ExtAuthz(a) => {
                    let per_route = cx
                        .selection
                        .per_filter_all(&f.name)
                        .filter_map(|p| match p {
                            PerFilterConfig::ExtAuthz(c) => Some(c.clone()),
                            _ => None,
                        })
                        .collect();
                    Box::new(a.filter(per_route, cx))
                }
                Kind::RateLimit(r) => {
                    let route = match per_route {
                        Some(PerFilterConfig::RateLimit(c)) => Some(c.clone()),
                        _ => None,
                    };
                    Box::new(r.filter(route, cx))
                }
                Kind::SetFilterState(c) => Box::new(
                    crate::http::filters::set_filter_state::SetFilterState::new(c.clone(), cx),
                ),
                Kind::HeaderMutation(h) => {
                    let routes = cx
                        .selection
                        .per_filter_all(&f.name)
                        .filter_map(|p| match p {
                            PerFilterConfig::HeaderMutation(m) => Some(m.clone()),
                            _ => None,
                        })
                        .collect();
                    Box::new(
                        crate::http::filters::header_mutation::HeaderMutationFilter::new(
                            h, routes, cx.info,
                        ),
                    )
                }
                Kind::BasicAuth(b) => {
                    let route = match per_route {
                        Some(PerFilterConfig::BasicAuth(u)) => Some(u),
                        _ => None,
                    };
                    Box::new(b.filter(route))
                }
                Kind::StatefulSession(s) => {
                    let config = match per_route {
                        Some(PerFilterConfig::StatefulSession(r)) => r.clone(),
                        _ => s.clone(),
                    };
                    Box::new(
                        crate::http::filters::stateful_session::StatefulSessionFilter::new(config),
                    )
                }
            })
        })
        .collect();
    if filters.is_empty() {
        return None;
    }
    Some(FilterChain::new(filters))
}

/// Wraps a body so it passes through the chain, if there is one.
pub fn wrap(chain: Option<&FilterChain>, body: ProxyBody, direction: Direction) -> ProxyBody {
    match chain {
        Some(chain) => ProxyBody::Filtered(Box::new(chain.filter_body(body, direction))),
        None => body,
    }
}

/// The filters of one stream, shared by the request and response paths.
#[derive(Default, Clone)]
pub struct FilterChain {
    filters: Rc<RefCell<Vec<Box<dyn HttpFilter>>>>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilterChain({} filters)", self.filters.borrow().len())
    }
}

/// Which way a body flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request: decoder hooks, configuration order.
    Decode,
    /// Response: encoder hooks, reverse order.
    Encode,
}

impl FilterChain {
    /// A chain of these filters.
    pub fn new(filters: Vec<Box<dyn HttpFilter>>) -> Self {
        FilterChain {
            filters: Rc::new(RefCell::new(filters)),
        }
    }

    /// True when there is nothing to run (the common case: bodies then pass untouched).
    pub fn is_empty(&self) -> bool {
        self.filters.borrow().is_empty()
    }

    /// Runs the decoder headers hooks; `Some(reply)` ends the stream with a local reply. A
    /// filter that waits for the body has it read here, and `body` then starts with what
    /// was read.
    pub async fn decode_headers(
        &self,
        head: &mut http::request::Parts,
        body: &mut ProxyBody,
    ) -> Option<LocalReply> {
        let end_stream = body.is_end_stream();
        let n = self.filters.borrow().len();
        for i in 0..n {
            let mut status = self.filters.borrow_mut()[i].decode_headers(head, end_stream);
            if let HeadersStatus::StopForBody { limit, partial } = status {
                let (data, complete) =
                    match crate::http::body::read_prefix(body, limit, partial).await {
                        Ok(read) => read,
                        Err(reply) => return Some(reply),
                    };
                status = self.filters.borrow_mut()[i].decode_buffered(head, &data, complete);
            }
            if let Some(reply) = resolve(status, Some(&mut *head)).await {
                return Some(reply);
            }
        }
        None
    }

    /// Runs the encoder headers hooks in reverse order.
    pub async fn encode_headers(
        &self,
        head: &mut http::response::Parts,
        end_stream: bool,
    ) -> Option<LocalReply> {
        let n = self.filters.borrow().len();
        for i in (0..n).rev() {
            let status = self.filters.borrow_mut()[i].encode_headers(head, end_stream);
            if let Some(reply) = resolve(status, None).await {
                return Some(reply);
            }
        }
        None
    }

    /// Wraps a body so its frames pass through the data and trailers hooks.
    pub fn filter_body<B: Body>(&self, inner: B, direction: Direction) -> FilteredBody<B> {
        // A body that is over before it starts stays so (a request's `content-length: 0`
        // goes upstream as it came, not as a chunked body).
        let done = inner.is_end_stream();
        FilteredBody {
            inner,
            chain: self.clone(),
            direction,
            held: None,
            done,
            trailers: None,
        }
    }

    /// Runs data hooks from filter `from` on; returns the index of a filter that asked to buffer.
    fn run_data(
        &self,
        direction: Direction,
        from: usize,
        data: &mut Bytes,
        end: bool,
    ) -> Option<usize> {
        let mut filters = self.filters.borrow_mut();
        let n = filters.len();
        for step in from..n {
            let i = if direction == Direction::Decode {
                step
            } else {
                n - 1 - step
            };
            let status = match direction {
                Direction::Decode => filters[i].decode_data(data, end),
                Direction::Encode => filters[i].encode_data(data, end),
            };
            if status == DataStatus::StopIterationAndBuffer && !end {
                return Some(step);
            }
        }
        None
    }

    fn run_trailers(&self, direction: Direction, trailers: &mut HeaderMap) {
        let mut filters = self.filters.borrow_mut();
        let n = filters.len();
        for step in 0..n {
            match direction {
                Direction::Decode => filters[step].decode_trailers(trailers),
                Direction::Encode => filters[n - 1 - step].encode_trailers(trailers),
            }
        }
    }
}

/// What a headers hook ends in: a reply, or none to go on. A resumed decoder filter's change
/// applies to the `request` (encoder hooks have no request to change).
async fn resolve(
    status: HeadersStatus,
    request: Option<&mut http::request::Parts>,
) -> Option<LocalReply> {
    match status {
        HeadersStatus::Continue => None,
        HeadersStatus::LocalReply(r) => Some(r),
        // Only a request's filter may wait for its body; twice is a filter's mistake.
        HeadersStatus::StopForBody { .. } => None,
        HeadersStatus::StopIteration(fut) => match fut.await {
            Resume::Continue => None,
            Resume::ContinueWith(change) => request.and_then(change),
            Resume::LocalReply(r) => Some(r),
        },
    }
}

/// A body whose frames pass through a filter chain.
pub struct FilteredBody<B = ProxyBody> {
    inner: B,
    chain: FilterChain,
    direction: Direction,
    /// The body held for a filter that asked to buffer, and that filter's position in the chain.
    held: Option<(BytesMut, usize)>,
    /// Trailers waiting behind released data.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> std::fmt::Debug for FilteredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilteredBody")
            .field("direction", &self.direction)
            .field("done", &self.done)
            .finish()
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(mut trailers) = this.trailers.take() {
                this.chain.run_trailers(this.direction, &mut trailers);
                this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    // The body ended without an end-of-stream data frame: whoever holds the
                    // buffer sees it all now, with end_stream.
                    this.done = true;
                    return Poll::Ready(this.release(Bytes::new()).map(|d| Ok(Frame::data(d))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let end = this.inner.is_end_stream();
                    if let Some((buf, _)) = this.held.as_mut() {
                        if !end {
                            buf.extend_from_slice(&data);
                            continue;
                        }
                        this.done = true;
                        return Poll::Ready(this.release(data).map(|d| Ok(Frame::data(d))));
                    }
                    let mut data = data;
                    if let Some(step) = this.chain.run_data(this.direction, 0, &mut data, end) {
                        this.held = Some((BytesMut::from(&data[..]), step));
                        continue;
                    }
                    this.done = end;
                    if data.is_empty() && !end {
                        // A filter holding its output back (a compressor): nothing to send yet.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        // Trailers end the body: release what is held first.
                        if let Some(data) = this.release(Bytes::new()) {
                            this.pending_trailers(trailers);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        this.chain.run_trailers(this.direction, &mut trailers);
                        this.done = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.done && self.held.is_none() && self.trailers.is_none() {
            http_body::SizeHint::with_exact(0)
        } else {
            http_body::SizeHint::default()
        }
    }
}

impl<B> FilteredBody<B> {
    /// Hands the held buffer (plus `last`) to the holding filter and those after it, with
    /// end_stream; `None` when that leaves nothing to send.
    fn release(&mut self, last: Bytes) -> Option<Bytes> {
        match self.held.take() {
            Some((mut buf, step)) => {
                buf.extend_from_slice(&last);
                let mut data = buf.freeze();
                let _ = self.chain.run_data(self.direction, step, &mut data, true);
                Some(data)
            }
            None => {
                // Every filter sees the end of the body, even with nothing left in it: one
                // that holds output back (a compressor) releases it now.
                let mut data = last;
                let _ = self.chain.run_data(self.direction, 0, &mut data, true);
                (!data.is_empty()).then_some(data)
            }
        }
    }

    fn pending_trailers(&mut self, trailers: HeaderMap) {
        // Re-queue the trailers behind the released data.
        self.trailers = Some(trailers);
    }
}

/// The path routes match a request by: a CONNECT has none (its target is an authority).
pub fn route_path(head: &http::request::Parts) -> &str {
    if head.method == http::Method::CONNECT {
        return "";
    }
    head.uri.path_and_query().map_or("/", |p| p.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Upper;
    impl HttpFilter for Upper {
        fn decode_headers(&mut self, head: &mut http::request::Parts, _: bool) -> HeadersStatus {
            head.headers.insert("x-upper", "1".parse().expect("v"));
            HeadersStatus::Continue
        }
        fn decode_data(&mut self, data: &mut Bytes, _: bool) -> DataStatus {
            *data = Bytes::from(data.to_ascii_uppercase());
            DataStatus::Continue
        }
    }

    struct BufferAll(Rc<RefCell<Vec<usize>>>);
    impl HttpFilter for BufferAll {
        fn decode_data(&mut self, data: &mut Bytes, end: bool) -> DataStatus {
            self.0.borrow_mut().push(data.len());
            if end {
                DataStatus::Continue
            } else {
                DataStatus::StopIterationAndBuffer
            }
        }
    }

    struct Deny;
    impl HttpFilter for Deny {
        fn decode_headers(&mut self, _: &mut http::request::Parts, _: bool) -> HeadersStatus {
            HeadersStatus::StopIteration(Box::pin(async {
                Resume::LocalReply(LocalReply::NO_ROUTE)
            }))
        }
    }

    fn parts() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    #[tokio::test]
    async fn headers_hooks_run_in_order_and_can_answer() {
        let chain = FilterChain::new(vec![Box::new(Upper), Box::new(Deny)]);
        let mut p = parts();
        let reply = chain
            .decode_headers(&mut p, &mut crate::http::body::ProxyBody::Empty)
            .await;
        assert_eq!(p.headers["x-upper"], "1");
        assert_eq!(reply.map(|r| r.status.as_u16()), Some(404));
    }

    fn body_of(chunks: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn data_hooks_transform_and_buffer() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let chain = FilterChain::new(vec![Box::new(BufferAll(seen.clone())), Box::new(Upper)]);
        let body = chain.filter_body(body_of(&["ab", "cd", "ef"]), Direction::Decode);
        let out = body.collect().await.expect("body").to_bytes();
        assert_eq!(&out[..], b"ABCDEF");
        // The buffering filter saw the first chunk, then the whole body at the end.
        assert_eq!(*seen.borrow(), vec![2, 6]);
    }

    #[tokio::test]
    async fn data_passes_untouched_without_buffering() {
        let chain = FilterChain::new(vec![Box::new(Upper)]);
        let mut body = chain.filter_body(body_of(&["ab", "cd"]), Direction::Decode);
        let first = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(&first[..], b"AB", "chunks stream one by one");
    }
}
