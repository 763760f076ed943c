//! The xDS client: gRPC streams to a control plane, state of the world (`GRPC`) or incremental
//! (`DELTA_GRPC`), aggregated (ADS) or one per resource type (`api_config_source`), as Envoy's
//! gRPC subscriptions speak them.
//!
//! A stream runs as a task of the main thread's runtime. It owns the protocol: the node on the
//! first request (or every one), versions, nonces, the names each type is subscribed to, ACK and
//! NACK, and reconnection with jittered backoff. It owns no configuration: each response goes
//! to the [`ConfigStore`](crate::config_store::ConfigStore) as an [`XdsEvent`], and the store's
//! verdict (applied, or the NACK's message) comes back before the next response is read. The
//! store tells the stream which names it wants with [`Stream::interest`], and which types'
//! answers an ADS stream holds back for now ([`Paused`]: CDS while clusters warm, as Envoy's
//! cluster manager pauses it).
//!
//! A REST source ([`rest`]) has no stream: a task of the same shape polls for its one type.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, oneshot};

use crate::config::model::GrpcSource;

pub mod dial;
mod rate_limit;
mod rest;

use crate::config_store::type_url;
use crate::stats::Shard;
pub use dial::Peer;

/// Which stream: the bootstrap's `ads_config`, or an `api_config_source` (one per type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKey {
    /// `ads_config`.
    Ads,
    /// An `api_config_source` for one type URL and, for the named types (RDS, EDS, SDS), one
    /// resource name: as Envoy, each such subscription has a stream of its own.
    Api(GrpcSource, &'static str, String),
}

/// A response, as the store applies it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// State of the world: every resource of the type (LDS, CDS) or of the names asked (RDS,
    /// EDS).
    Sotw {
        /// `version_info`.
        version_info: String,
        /// `resources`.
        resources: Vec<Any>,
    },
    /// Incremental: resources added or changed, names removed.
    Delta {
        /// `system_version_info`.
        system_version_info: String,
        /// (name, version, resource).
        resources: Vec<(String, String, Any)>,
        /// `removed_resources`.
        removed: Vec<String>,
    },
    /// A REST server's JSON `DiscoveryResponse`, as it came (the store decodes it).
    Json(String),
}

/// A response for the store, with the channel its verdict goes back on.
#[derive(Debug)]
pub struct XdsEvent {
    /// The stream it came on.
    pub stream: StreamKey,
    /// Its type URL.
    pub type_url: String,
    /// What it holds.
    pub update: Update,
    /// `Ok`: ACK; `Err(message)`: NACK with this `error_detail.message`.
    pub verdict: oneshot::Sender<Result<(), String>>,
}

/// The type URLs whose ACKs and NACKs an ADS stream holds back for now; the last one held
/// goes out when the type leaves the set.
pub type Paused = tokio::sync::watch::Receiver<BTreeSet<&'static str>>;

/// What a stream is subscribed to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Every resource of the type (LDS, CDS).
    Wildcard,
    /// These names (RDS, EDS); empty: none.
    Names(BTreeSet<String>),
}

/// A running stream, as the store holds it.
#[derive(Debug)]
pub struct Stream {
    commands: mpsc::UnboundedSender<(String, Interest)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream {
    /// Starts a stream (inside a tokio runtime) that connects to `target`, sends what
    /// [`Self::interest`] asks and hands each response to `events`. Its stats are
    /// `<stats_prefix>connected_state` and so on (`control_plane.` for ADS).
    pub fn start(
        key: StreamKey,
        source: GrpcSource,
        peer: Peer,
        (node, node_json): (Node, serde_json::Value),
        events: mpsc::UnboundedSender<XdsEvent>,
        (main, stats_prefix): (Arc<Shard>, String),
        paused: Paused,
    ) -> Stream {
        let (commands, rx) = mpsc::unbounded_channel();
        let rest = source.rest;
        let bucket = source
            .rate_limit
            .map(|r| Arc::new(std::sync::Mutex::new(rate_limit::Bucket::new(r))));
        let conn = Conn {
            key,
            source,
            peer,
            bucket,
            node,
            node_json,
            events,
            main,
            stats_prefix,
            paused,
        };
        let task = match rest {
            Some(polling) => tokio::spawn(rest::run(conn, polling, rx)),
            None => tokio::spawn(run(conn, rx)),
        };
        Stream { commands, task }
    }

    /// Subscribes `type_url` to `interest` (a request goes out when it changes).
    pub fn interest(&self, type_url: &str, interest: Interest) {
        let _ = self.commands.send((type_url.to_string(), interest));
    }
}

/// What a stream needs to run.
struct Conn {
    key: StreamKey,
    source: GrpcSource,
    /// The server, through the source's bootstrap cluster.
    peer: Peer,
    /// `rate_limit_settings`' token bucket.
    bucket: Option<Arc<std::sync::Mutex<rate_limit::Bucket>>>,
    node: Node,
    /// The node in JSON, for REST requests.
    node_json: serde_json::Value,
    events: mpsc::UnboundedSender<XdsEvent>,
    main: Arc<Shard>,
    stats_prefix: String,
    paused: Paused,
}

impl Conn {
    fn connected(&self) -> crate::stats::Gauge {
        self.main
            .gauge(&format!("{}connected_state", self.stats_prefix))
    }

    /// Whether the answers for `type_url` are held back now (ADS only, as Envoy's pause).
    fn holds(&self, type_url: &str) -> bool {
        self.key == StreamKey::Ads && self.paused.borrow().contains(type_url)
    }
}

/// One type's protocol state on a stream.
#[derive(Debug, Default)]
struct TypeState {
    interest: Option<Interest>,
    /// The last version accepted (state of the world).
    version: String,
    /// The last nonce received on this connection.
    nonce: String,
    /// Delta: the version of each resource accepted, sent again on reconnect.
    known: BTreeMap<String, String>,
    /// Delta: the names subscribed on this connection.
    sent: BTreeSet<String>,
    /// A request went out for this type on this connection.
    started: bool,
    /// The answer held back while the type is paused (state of the world).
    held_sotw: Option<DiscoveryRequest>,
    /// The answers held back while the type is paused, in order (delta answers each
    /// response).
    held_delta: Vec<DeltaDiscoveryRequest>,
}

/// Envoy's backoff for xDS streams: 500 ms doubling to 30 s, each wait jittered in
/// `[0, interval)`.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    /// A fresh backoff.
    pub fn new() -> Self {
        Backoff { attempt: 0 }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let interval = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = interval.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(0..ms))
    }

    /// A stream got a response: start from the base again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The gRPC method of a stream.
fn method(key: &StreamKey, delta: bool) -> &'static str {
    let svc = match key {
        StreamKey::Ads => {
            return if delta {
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
            } else {
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            }
        }
        StreamKey::Api(_, t, _) => *t,
    };
    match (svc, delta) {
        (type_url::LISTENER, false) => {
            "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners"
        }
        (type_url::LISTENER, true) => {
            "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners"
        }
        (type_url::CLUSTER, false) => {
            "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters"
        }
        (type_url::CLUSTER, true) => {
            "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters"
        }
        (type_url::ROUTE, false) => "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
        (type_url::ROUTE, true) => "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes",
        (type_url::SCOPED_ROUTE, false) => {
            "/envoy.service.route.v3.ScopedRoutesDiscoveryService/StreamScopedRoutes"
        }
        (type_url::SCOPED_ROUTE, true) => {
            "/envoy.service.route.v3.ScopedRoutesDiscoveryService/DeltaScopedRoutes"
        }
        (type_url::ENDPOINT, false) => {
            "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints"
        }
        (type_url::ENDPOINT, true) => {
            "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints"
        }
        (type_url::RUNTIME, false) => {
            "/envoy.service.runtime.v3.RuntimeDiscoveryService/StreamRuntime"
        }
        (type_url::RUNTIME, true) => {
            "/envoy.service.runtime.v3.RuntimeDiscoveryService/DeltaRuntime"
        }
        (_, false) => "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
        (_, true) => "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
    }
}

async fn connect(peer: &Peer, authority: &str) -> Result<tonic::transport::Channel, String> {
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| format!("authority '{authority}': {e}"))?;
    let mut endpoint = tonic::transport::Endpoint::from_static("http://localhost").origin(origin);
    // The cluster's keepalive PINGs (hyper's, without Envoy's jitter) run while the stream
    // is open, idle or not.
    if let Some(k) = peer.keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(k.interval)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(true);
    }
    let p = peer.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = p.clone();
            async move {
                let io = dial::dial(&p, b"h2").await.map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        }))
        .await
        .map_err(|e| {
            // tonic wraps the connector's error: show the cause.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = s.to_string();
                source = s.source();
            }
            text
        })
}

/// Connects to a Unix socket; a path starting with `@` names an abstract socket, as in Envoy.
async fn unix_connect(path: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        s.set_nonblocking(true)?;
        return tokio::net::UnixStream::from_std(s);
    }
    tokio::net::UnixStream::connect(path).await
}

/// The stream's life: connect, run until the connection ends, back off, again.
async fn run(conn: Conn, mut commands: mpsc::UnboundedReceiver<(String, Interest)>) {
    let mut types: BTreeMap<String, TypeState> = BTreeMap::new();
    // The order types were first asked for: requests go out in it (CDS before LDS, as Envoy).
    let mut order: Vec<String> = Vec::new();
    let mut backoff = Backoff::new();
    let p = &conn.stats_prefix;
    let connected = conn.connected();
    conn.main.counter(&format!("{p}rate_limit_enforced"));
    conn.main.gauge(&format!("{p}pending_requests"));
    conn.main.set_text(&format!("{p}identifier"), "");
    loop {
        // Take what the store asked for while disconnected.
        while let Ok((t, i)) = commands.try_recv() {
            set_interest(&mut types, &mut order, t, i);
        }
        let outcome = match connect(&conn.peer, &conn.source.authority).await {
            Ok(channel) => {
                let r = if conn.source.delta {
                    run_delta(
                        &conn,
                        channel,
                        &mut types,
                        &mut order,
                        &mut commands,
                        &mut backoff,
                    )
                    .await
                } else {
                    run_sotw(
                        &conn,
                        channel,
                        &mut types,
                        &mut order,
                        &mut commands,
                        &mut backoff,
                    )
                    .await
                };
                connected.set(0);
                r
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Closed(why)) | Err(why) => {
                tracing::warn!(cluster = %conn.source.cluster, reason = %why, "xDS stream closed; reconnecting");
            }
        }
        for s in types.values_mut() {
            s.nonce.clear();
            s.sent.clear();
            s.started = false;
            s.held_sotw = None;
            s.held_delta.clear();
        }
        let wait = backoff.next_wait();
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some((t, i)) => {
                        set_interest(&mut types, &mut order, t, i);
                    }
                    None => return,
                },
            }
        }
    }
}

/// How a connection ended without an error of its own.
enum Ended {
    /// The store dropped the stream.
    Stopped,
    /// The server closed it.
    Closed(String),
}

/// Records an interest; true when it changed.
fn set_interest(
    types: &mut BTreeMap<String, TypeState>,
    order: &mut Vec<String>,
    type_url: String,
    interest: Interest,
) -> bool {
    if !order.contains(&type_url) {
        order.push(type_url.clone());
    }
    let s = types.entry(type_url).or_default();
    if s.interest.as_ref() == Some(&interest) {
        return false;
    }
    s.interest = Some(interest);
    true
}

fn names(i: &Option<Interest>) -> Vec<String> {
    match i {
        Some(Interest::Names(n)) => n.iter().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Sends `msg` with the stream's metadata and returns the response stream.
async fn open<Req, Resp>(
    conn: &Conn,
    channel: tonic::transport::Channel,
    first: Vec<Req>,
) -> Result<(mpsc::UnboundedSender<Req>, tonic::codec::Streaming<Resp>), String>
where
    Req: prost::Message + rate_limit::Coalesce + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Req>();
    for m in first {
        let _ = tx.send(m);
    }
    let p = &conn.stats_prefix;
    let limit = conn.bucket.clone().map(|b| rate_limit::Limiter {
        bucket: b,
        enforced: conn.main.counter(&format!("{p}rate_limit_enforced")),
        pending: conn.main.gauge(&format!("{p}pending_requests")),
        queue: std::collections::VecDeque::new(),
    });
    let outgoing = futures_util::stream::unfold((rx, limit), |(mut rx, limit)| async move {
        match limit {
            None => rx.recv().await.map(|m| (m, (rx, None))),
            Some(mut l) => {
                let m = l.next(&mut rx).await?;
                Some((m, (rx, Some(l))))
            }
        }
    });
    let mut req = tonic::Request::new(outgoing);
    for (k, v) in &conn.source.initial_metadata {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            req.metadata_mut().insert(k, v);
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::from_static(method(&conn.key, conn.source.delta));
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let resp = grpc
        .streaming(req, path, codec)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok((tx, resp.into_inner()))
}

/// Hands a response to the store and waits for its verdict; `None`: the store is gone.
async fn verdict(conn: &Conn, type_url: &str, update: Update) -> Option<Result<(), String>> {
    let (tx, rx) = oneshot::channel();
    conn.events
        .send(XdsEvent {
            stream: conn.key.clone(),
            type_url: type_url.to_string(),
            update,
            verdict: tx,
        })
        .ok()?;
    rx.await.ok()
}

/// The `error_detail` of a NACK: Envoy sends code INTERNAL with the rejection's message.
fn error_detail(message: String) -> Status {
    Status {
        code: 13,
        message,
        details: Vec::new(),
    }
}

/// A state-of-the-world request for `type_url`.
fn sotw_request(
    conn: &Conn,
    node_sent: &mut bool,
    type_url: &str,
    s: &TypeState,
    error: Option<String>,
) -> DiscoveryRequest {
    let node = (!conn.source.node_on_first_message_only || !*node_sent).then(|| conn.node.clone());
    *node_sent = true;
    DiscoveryRequest {
        version_info: s.version.clone(),
        node,
        resource_names: names(&s.interest),
        type_url: type_url.to_string(),
        response_nonce: s.nonce.clone(),
        error_detail: error.map(error_detail),
        ..Default::default()
    }
}

async fn run_sotw(
    conn: &Conn,
    channel: tonic::transport::Channel,
    types: &mut BTreeMap<String, TypeState>,
    order: &mut Vec<String>,
    commands: &mut mpsc::UnboundedReceiver<(String, Interest)>,
    backoff: &mut Backoff,
) -> Result<Ended, String> {
    let mut node_sent = false;
    let mut first = Vec::new();
    for t in order.iter() {
        if let Some(s) = types.get_mut(t).filter(|s| s.interest.is_some()) {
            first.push(sotw_request(conn, &mut node_sent, t, s, None));
            s.started = true;
        }
    }
    let (tx, mut incoming) =
        open::<DiscoveryRequest, DiscoveryResponse>(conn, channel, first).await?;
    conn.connected().set(1);
    let mut paused = conn.paused.clone();
    loop {
        tokio::select! {
            changed = paused.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Stopped);
                }
                for (t, s) in types.iter_mut() {
                    if !conn.holds(t) {
                        if let Some(r) = s.held_sotw.take() {
                            let _ = tx.send(r);
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some((t, i)) = cmd else { return Ok(Ended::Stopped) };
                if set_interest(types, order, t.clone(), i) {
                    if let Some(s) = types.get_mut(&t) {
                        let _ = tx.send(sotw_request(conn, &mut node_sent, &t, s, None));
                        s.started = true;
                    }
                }
            }
            msg = incoming.message() => {
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(Ended::Closed("closed by the server".into())),
                    Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
                };
                backoff.reset();
                let Some(s) = types.get_mut(&r.type_url).filter(|s| s.interest.is_some()) else {
                    tracing::warn!(type_url = %r.type_url, "xDS: ignoring a response for a type not subscribed");
                    continue;
                };
                s.nonce = r.nonce.clone();
                let update = Update::Sotw { version_info: r.version_info.clone(), resources: r.resources };
                let Some(v) = verdict(conn, &r.type_url, update).await else {
                    return Ok(Ended::Stopped);
                };
                let Some(s) = types.get_mut(&r.type_url) else { continue };
                let error = match v {
                    Ok(()) => {
                        s.version = r.version_info;
                        None
                    }
                    Err(e) => Some(e),
                };
                let answer = sotw_request(conn, &mut node_sent, &r.type_url, s, error);
                if conn.holds(&r.type_url) {
                    s.held_sotw = Some(answer);
                } else {
                    let _ = tx.send(answer);
                }
            }
        }
    }
}

/// The first delta request for a type on a connection: what it subscribes to and the
/// versions it already has.
fn delta_first(
    conn: &Conn,
    node_sent: &mut bool,
    t: &str,
    s: &mut TypeState,
) -> DeltaDiscoveryRequest {
    let node = (!conn.source.node_on_first_message_only || !*node_sent).then(|| conn.node.clone());
    *node_sent = true;
    let subscribe = names(&s.interest);
    s.sent = subscribe.iter().cloned().collect();
    s.started = true;
    DeltaDiscoveryRequest {
        node,
        type_url: t.to_string(),
        resource_names_subscribe: subscribe,
        initial_resource_versions: s.known.clone().into_iter().collect(),
        ..Default::default()
    }
}

async fn run_delta(
    conn: &Conn,
    channel: tonic::transport::Channel,
    types: &mut BTreeMap<String, TypeState>,
    order: &mut Vec<String>,
    commands: &mut mpsc::UnboundedReceiver<(String, Interest)>,
    backoff: &mut Backoff,
) -> Result<Ended, String> {
    let mut node_sent = false;
    let mut first = Vec::new();
    for t in order.iter() {
        if let Some(s) = types.get_mut(t).filter(|s| s.interest.is_some()) {
            first.push(delta_first(conn, &mut node_sent, t, s));
        }
    }
    let (tx, mut incoming) =
        open::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>(conn, channel, first).await?;
    conn.connected().set(1);
    let mut paused = conn.paused.clone();
    loop {
        tokio::select! {
            changed = paused.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Stopped);
                }
                for (t, s) in types.iter_mut() {
                    if !conn.holds(t) {
                        for r in s.held_delta.drain(..) {
                            let _ = tx.send(r);
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some((t, i)) = cmd else { return Ok(Ended::Stopped) };
                if !set_interest(types, order, t.clone(), i) {
                    continue;
                }
                let Some(s) = types.get_mut(&t) else { continue };
                if !s.started {
                    let _ = tx.send(delta_first(conn, &mut node_sent, &t, s));
                    continue;
                }
                let want: BTreeSet<String> = names(&s.interest).into_iter().collect();
                let subscribe: Vec<String> = want.difference(&s.sent).cloned().collect();
                let unsubscribe: Vec<String> = s.sent.difference(&want).cloned().collect();
                if subscribe.is_empty() && unsubscribe.is_empty() {
                    continue;
                }
                for n in &unsubscribe {
                    s.known.remove(n);
                }
                s.sent = want;
                let node = (!conn.source.node_on_first_message_only).then(|| conn.node.clone());
                let _ = tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: t.clone(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                });
            }
            msg = incoming.message() => {
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(Ended::Closed("closed by the server".into())),
                    Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
                };
                backoff.reset();
                if types.get(&r.type_url).is_none_or(|s| s.interest.is_none()) {
                    tracing::warn!(type_url = %r.type_url, "xDS: ignoring a response for a type not subscribed");
                    continue;
                }
                let (update, versions) = delta_update(&r);
                let Some(v) = verdict(conn, &r.type_url, update).await else {
                    return Ok(Ended::Stopped);
                };
                let Some(s) = types.get_mut(&r.type_url) else { continue };
                let error = match v {
                    Ok(()) => {
                        for (n, ver) in versions {
                            s.known.insert(n, ver);
                        }
                        for n in &r.removed_resources {
                            s.known.remove(n);
                        }
                        None
                    }
                    Err(e) => Some(e),
                };
                let node = (!conn.source.node_on_first_message_only).then(|| conn.node.clone());
                let answer = DeltaDiscoveryRequest {
                    node,
                    type_url: r.type_url.clone(),
                    response_nonce: r.nonce.clone(),
                    error_detail: error.map(error_detail),
                    ..Default::default()
                };
                if conn.holds(&r.type_url) {
                    s.held_delta.push(answer);
                } else {
                    let _ = tx.send(answer);
                }
            }
        }
    }
}

/// A delta response as the store applies it, and the version of each resource it carries.
/// A resource without a body (a name the server only acknowledges) is left out.
pub fn delta_update(r: &DeltaDiscoveryResponse) -> (Update, Vec<(String, String)>) {
    let mut resources = Vec::new();
    let mut versions = Vec::new();
    for res in &r.resources {
        let Some(any) = &res.resource else { continue };
        versions.push((res.name.clone(), res.version.clone()));
        resources.push((res.name.clone(), res.version.clone(), any.clone()));
    }
    (
        Update::Delta {
            system_version_info: r.system_version_info.clone(),
            resources,
            removed: r.removed_resources.clone(),
        },
        versions,
    )
}

/// A state-of-the-world response as the store applies it.
pub fn sotw_update(r: &DiscoveryResponse) -> Update {
    Update::Sotw {
        version_info: r.version_info.clone(),
        resources: r.resources.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_doubling_interval_capped_at_30s() {
        let mut b = Backoff::new();
        for i in 0..12 {
            let cap = (500u64 << i).min(30_000);
            let d = b.next_wait();
            assert!(d < Duration::from_millis(cap), "{i}: {d:?}");
        }
        b.reset();
        assert!(b.next_wait() < Duration::from_millis(500));
    }

    #[test]
    fn methods_follow_the_stream_and_protocol() {
        assert!(method(&StreamKey::Ads, true).ends_with("DeltaAggregatedResources"));
        assert!(method(&StreamKey::Ads, false).ends_with("StreamAggregatedResources"));
        let g = GrpcSource {
            delta: false,
            cluster: "x".into(),
            authority: "x".into(),
            node_on_first_message_only: false,
            initial_metadata: Vec::new(),
            rest: None,
            rate_limit: None,
            google: None,
        };
        assert!(method(
            &StreamKey::Api(g.clone(), type_url::ROUTE, "r".into()),
            false
        )
        .ends_with("StreamRoutes"));
        assert!(
            method(&StreamKey::Api(g, type_url::ENDPOINT, "e".into()), true)
                .ends_with("DeltaEndpoints")
        );
    }
}
