//! A small xDS control plane for the tests: ADS and the per-type services (listeners,
//! clusters, routes, endpoints, secrets), state of the world and delta, over TCP (`--tcp ADDR`) and a
//! Unix socket (`--uds PATH`), both at once if asked.
//!
//! Driven over stdin, one JSON command per line:
//! - `{"cmd": "set", "node": N, "type_url": T, "version": V, "yaml": Y}`: the resources of type
//!   `T` for node `N` are now those of `Y` (a YAML list of `@type` resources); a resource whose
//!   content changed takes version `V` (delta), the type's version is `V` (state of the world).
//!   Every stream of that node that subscribed to `T` is sent what changed for it.
//! - `{"cmd": "rest_status", "status": S}`: REST answers get status `S` with no body (0: answer
//!   normally again).
//! - `{"cmd": "quit"}`.
//!
//! With `--rest ADDR` it also serves REST xDS over HTTP/1.1: a JSON `DiscoveryRequest` POSTed to
//! `/v3/discovery:<type>` is answered with the node's current resources of that type in JSON,
//! or `304` when the request already has the current version (as go-control-plane's gateway).
//!
//! With `--tls-cert PATH --tls-key PATH` the TCP listener takes TLS (HTTP/2 by ALPN only, as
//! gRPC servers do), and with `--tls-client-ca PATH` it requires a client certificate; each
//! handshake is reported (`tls`: SNI, ALPN, whether a client certificate came; `tls_error`).
//!
//! It reports on stdout, one JSON object per line: `ready` (with the TCP port), each request
//! received (`request`: stream, node id, protocol, type, version, nonce, names, error) and each
//! response sent (`response`), and `set` once a command is applied; each with `ms`, the
//! milliseconds since the process started.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const SCOPED_ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";

/// One type's resources: the type's version and each resource's (version, body).
#[derive(Debug, Clone, Default)]
struct TypeState {
    version: String,
    resources: BTreeMap<String, (String, Any)>,
}

/// Each node's resources, by node id and type URL.
type State = BTreeMap<(String, String), TypeState>;

static OUT: Mutex<()> = Mutex::new(());

/// When the process started: every event carries its time since (`ms`).
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn emit(mut v: serde_json::Value) {
    let start = *START.get_or_init(std::time::Instant::now);
    if let Some(o) = v.as_object_mut() {
        o.insert("ms".into(), (start.elapsed().as_millis() as u64).into());
    }
    let _g = OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn is_wildcard_type(t: &str) -> bool {
    t == LISTENER || t == CLUSTER || t == SCOPED_ROUTE
}

/// The name of a resource, by its type.
fn name_of(any: &Any) -> String {
    use envoy_types::pb::envoy::config::{cluster, endpoint, listener, route};
    let v = any.value.as_slice();
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.config.listener.v3.Listener" => listener::v3::Listener::decode(v)
            .map(|r| r.name)
            .unwrap_or_default(),
        "envoy.config.cluster.v3.Cluster" => cluster::v3::Cluster::decode(v)
            .map(|r| r.name)
            .unwrap_or_default(),
        "envoy.config.route.v3.RouteConfiguration" => route::v3::RouteConfiguration::decode(v)
            .map(|r| r.name)
            .unwrap_or_default(),
        "envoy.config.route.v3.ScopedRouteConfiguration" => {
            route::v3::ScopedRouteConfiguration::decode(v)
                .map(|r| r.name)
                .unwrap_or_default()
        }
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
            endpoint::v3::ClusterLoadAssignment::decode(v)
                .map(|r| r.cluster_name)
                .unwrap_or_default()
        }
        "envoy.service.runtime.v3.Runtime" => {
            envoy_types::pb::envoy::service::runtime::v3::Runtime::decode(v)
                .map(|r| r.name)
                .unwrap_or_default()
        }
        _ => envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(v)
            .map(|r| r.name)
            .unwrap_or_default(),
    }
}

/// Decodes a YAML list of `@type` resources into binary ones.
fn decode_resources(yaml: &str) -> Result<Vec<Any>, String> {
    let text = format!("resources:\n{yaml}");
    let desc = skiff::config::proto::message("envoy.service.discovery.v3.DiscoveryResponse")
        .map_err(|e| e.to_string())?;
    // TypedStructs go out as they are written, as istiod sends them.
    let (msg, _) = skiff::config::proto::decode_text_lenient_keeping_typed_structs(&text, desc)
        .map_err(|e| e.to_string())?;
    let r: DiscoveryResponse = skiff::config::proto::to_typed(&msg).map_err(|e| e.to_string())?;
    Ok(r.resources)
}

#[derive(Clone)]
struct Server {
    state: watch::Receiver<State>,
    streams: Arc<AtomicU64>,
    nonces: Arc<AtomicU64>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn outgoing<T: Send + 'static>(rx: mpsc::UnboundedReceiver<T>) -> BoxStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (Ok(m), rx))
    }))
}

impl Server {
    /// Runs one stream with `run` (state of the world or delta) and answers with its responses.
    fn start<Req, Resp, Fut>(
        &self,
        req: Request<Streaming<Req>>,
        run: impl FnOnce(
            u64,
            Streaming<Req>,
            mpsc::UnboundedSender<Resp>,
            watch::Receiver<State>,
            Arc<AtomicU64>,
        ) -> Fut,
    ) -> Result<Response<BoxStream<Resp>>, Status>
    where
        Resp: Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(
            id,
            req.into_inner(),
            tx,
            self.state.clone(),
            self.nonces.clone(),
        ));
        Ok(Response::new(outgoing(rx)))
    }

    fn start_sotw(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<BoxStream<DiscoveryResponse>>, Status> {
        self.start(req, sotw)
    }

    fn start_delta(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<BoxStream<DeltaDiscoveryResponse>>, Status> {
        self.start(req, delta)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Server {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.start_sotw(req)
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.start_delta(req)
    }
}

/// A per-type discovery service: the same streams as ADS, one type each.
macro_rules! per_type {
    ($svc:path, $sotw_ty:ident, $sotw_fn:ident, $delta_ty:ident, $delta_fn:ident, $fetch_fn:ident) => {
        #[tonic::async_trait]
        impl $svc for Server {
            type $sotw_ty = BoxStream<DiscoveryResponse>;
            type $delta_ty = BoxStream<DeltaDiscoveryResponse>;

            async fn $sotw_fn(
                &self,
                req: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$sotw_ty>, Status> {
                self.start_sotw(req)
            }

            async fn $delta_fn(
                &self,
                req: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_ty>, Status> {
                self.start_delta(req)
            }

            async fn $fetch_fn(
                &self,
                _req: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("REST-style fetch"))
            }
        }
    };
}

per_type!(
    envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService,
    StreamListenersStream, stream_listeners, DeltaListenersStream, delta_listeners, fetch_listeners
);
per_type!(
    envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService,
    StreamClustersStream, stream_clusters, DeltaClustersStream, delta_clusters, fetch_clusters
);
per_type!(
    envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService,
    StreamRoutesStream, stream_routes, DeltaRoutesStream, delta_routes, fetch_routes
);
per_type!(
    envoy_types::pb::envoy::service::route::v3::scoped_routes_discovery_service_server::ScopedRoutesDiscoveryService,
    StreamScopedRoutesStream, stream_scoped_routes, DeltaScopedRoutesStream, delta_scoped_routes, fetch_scoped_routes
);
per_type!(
    envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService,
    StreamEndpointsStream, stream_endpoints, DeltaEndpointsStream, delta_endpoints, fetch_endpoints
);

per_type!(
    envoy_types::pb::envoy::service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryService,
    StreamRuntimeStream, stream_runtime, DeltaRuntimeStream, delta_runtime, fetch_runtime
);
per_type!(
    envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService,
    StreamSecretsStream, stream_secrets, DeltaSecretsStream, delta_secrets, fetch_secrets
);

/// A state-of-the-world subscription: its names (none: wildcard) and what was last sent.
struct Sub {
    names: Option<BTreeSet<String>>,
    sent: Option<BTreeMap<String, String>>,
    sent_version: Option<String>,
}

async fn sotw(
    id: u64,
    mut incoming: Streaming<DiscoveryRequest>,
    tx: mpsc::UnboundedSender<DiscoveryResponse>,
    mut state: watch::Receiver<State>,
    nonces: Arc<AtomicU64>,
) {
    let mut subs: BTreeMap<String, Sub> = BTreeMap::new();
    let mut node = String::new();
    emit(json!({"event": "connected", "stream": id, "delta": false}));
    loop {
        let mut push: Vec<(String, bool)> = Vec::new();
        tokio::select! {
            msg = incoming.message() => {
                let Ok(Some(r)) = msg else { break };
                if let Some(n) = &r.node { node = n.id.clone(); }
                emit(json!({
                    "event": "request", "stream": id, "delta": false, "node": node,
                    "has_node": r.node.is_some(), "type_url": r.type_url,
                    "version": r.version_info, "nonce": r.response_nonce,
                    "names": r.resource_names,
                    "error": r.error_detail.as_ref().map(|e| e.message.clone()),
                    "error_code": r.error_detail.as_ref().map(|e| e.code),
                }));
                let names = (!(is_wildcard_type(&r.type_url) && r.resource_names.is_empty()))
                    .then(|| r.resource_names.iter().cloned().collect::<BTreeSet<_>>());
                match subs.get_mut(&r.type_url) {
                    Some(s) if s.names == names => {}
                    Some(s) => {
                        s.names = names;
                        push.push((r.type_url.clone(), false));
                    }
                    None => {
                        subs.insert(r.type_url.clone(), Sub { names, sent: None, sent_version: None });
                        push.push((r.type_url.clone(), true));
                    }
                }
            }
            changed = state.changed() => {
                if changed.is_err() { break }
                push.extend(subs.keys().map(|t| (t.clone(), false)));
            }
        }
        let st = state.borrow().clone();
        for (t, _) in push {
            let (Some(sub), Some(ts)) = (subs.get_mut(&t), st.get(&(node.clone(), t.clone())))
            else {
                continue;
            };
            let chosen: BTreeMap<String, (String, Any)> = ts
                .resources
                .iter()
                .filter(|(n, _)| sub.names.as_ref().is_none_or(|w| w.contains(*n)))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let versions: BTreeMap<String, String> = chosen
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect();
            let wildcard = sub.names.is_none();
            // Wildcard types are sent whenever their version moves; named ones when what the
            // names select changed.
            let due = if wildcard {
                sub.sent_version.as_deref() != Some(ts.version.as_str())
            } else {
                sub.sent.as_ref() != Some(&versions) && !chosen.is_empty()
            };
            if !due {
                continue;
            }
            sub.sent = Some(versions);
            sub.sent_version = Some(ts.version.clone());
            let nonce = nonces.fetch_add(1, Ordering::Relaxed).to_string();
            emit(json!({
                "event": "response", "stream": id, "delta": false, "node": node,
                "type_url": t, "version": ts.version, "nonce": nonce,
                "names": chosen.keys().collect::<Vec<_>>(),
            }));
            let _ = tx.send(DiscoveryResponse {
                version_info: ts.version.clone(),
                resources: chosen.into_values().map(|(_, a)| a).collect(),
                type_url: t.clone(),
                nonce,
                ..Default::default()
            });
        }
    }
    emit(json!({"event": "closed", "stream": id, "node": node}));
}

/// A delta subscription: wildcard or its names, and the version of each resource the client
/// has.
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    has: BTreeMap<String, String>,
}

async fn delta(
    id: u64,
    mut incoming: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::UnboundedSender<DeltaDiscoveryResponse>,
    mut state: watch::Receiver<State>,
    nonces: Arc<AtomicU64>,
) {
    let mut subs: BTreeMap<String, DeltaSub> = BTreeMap::new();
    let mut node = String::new();
    emit(json!({"event": "connected", "stream": id, "delta": true}));
    loop {
        let mut push: Vec<String> = Vec::new();
        tokio::select! {
            msg = incoming.message() => {
                let Ok(Some(r)) = msg else { break };
                if let Some(n) = &r.node { node = n.id.clone(); }
                emit(json!({
                    "event": "request", "stream": id, "delta": true, "node": node,
                    "has_node": r.node.is_some(), "type_url": r.type_url,
                    "nonce": r.response_nonce, "names": r.resource_names_subscribe,
                    "unsubscribe": r.resource_names_unsubscribe,
                    "initial_versions": r.initial_resource_versions,
                    "error": r.error_detail.as_ref().map(|e| e.message.clone()),
                    "error_code": r.error_detail.as_ref().map(|e| e.code),
                }));
                let sub = subs.entry(r.type_url.clone()).or_insert_with(|| DeltaSub {
                    wildcard: is_wildcard_type(&r.type_url) && r.resource_names_subscribe.is_empty(),
                    names: BTreeSet::new(),
                    has: r.initial_resource_versions.clone().into_iter().collect(),
                });
                for n in &r.resource_names_subscribe {
                    if n == "*" { sub.wildcard = true } else { sub.names.insert(n.clone()); }
                }
                for n in &r.resource_names_unsubscribe {
                    sub.names.remove(n);
                    sub.has.remove(n);
                }
                if r.response_nonce.is_empty() || !r.resource_names_subscribe.is_empty() {
                    push.push(r.type_url.clone());
                }
            }
            changed = state.changed() => {
                if changed.is_err() { break }
                push.extend(subs.keys().cloned());
            }
        }
        let st = state.borrow().clone();
        for t in push {
            let (Some(sub), Some(ts)) = (subs.get_mut(&t), st.get(&(node.clone(), t.clone())))
            else {
                continue;
            };
            let mut resources = Vec::new();
            for (n, (v, any)) in &ts.resources {
                if !(sub.wildcard || sub.names.contains(n)) {
                    continue;
                }
                if sub.has.get(n) != Some(v) {
                    sub.has.insert(n.clone(), v.clone());
                    resources.push(Resource {
                        name: n.clone(),
                        version: v.clone(),
                        resource: Some(any.clone()),
                        ..Default::default()
                    });
                }
            }
            let removed: Vec<String> = sub
                .has
                .keys()
                .filter(|n| !ts.resources.contains_key(*n))
                .cloned()
                .collect();
            for n in &removed {
                sub.has.remove(n);
            }
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            let nonce = nonces.fetch_add(1, Ordering::Relaxed).to_string();
            emit(json!({
                "event": "response", "stream": id, "delta": true, "node": node,
                "type_url": t, "version": ts.version, "nonce": nonce,
                "names": resources.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                "removed": removed,
            }));
            let _ = tx.send(DeltaDiscoveryResponse {
                system_version_info: ts.version.clone(),
                resources,
                type_url: t.clone(),
                removed_resources: removed,
                nonce,
                ..Default::default()
            });
        }
    }
    emit(json!({"event": "closed", "stream": id, "node": node}));
}

/// Serves one HTTP/2 connection with ADS and the per-type services, chosen by path.
async fn serve<S>(stream: S, server: Server)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use envoy_types::pb::envoy::service::{cluster, endpoint, listener, route, secret};
    use tonic::codegen::Service;
    type Answer = Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
                > + Send,
        >,
    >;
    let hsvc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let req = req.map(tonic::body::Body::new);
        let s = server.clone();
        let path = req.uri().path().to_string();
        let answer: Answer = if path.starts_with("/envoy.service.listener.v3.") {
            let mut svc =
                listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.cluster.v3.") {
            let mut svc =
                cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer::new(
                    s,
                );
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.route.v3.ScopedRoutes") {
            let mut svc =
                route::v3::scoped_routes_discovery_service_server::ScopedRoutesDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.route.v3.") {
            let mut svc =
                route::v3::route_discovery_service_server::RouteDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.endpoint.v3.") {
            let mut svc =
                endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.runtime.v3.") {
            let mut svc = envoy_types::pb::envoy::service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else if path.starts_with("/envoy.service.secret.v3.") {
            let mut svc =
                secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        } else {
            let mut svc = AggregatedDiscoveryServiceServer::new(s);
            Box::pin(async move { svc.call(req).await })
        };
        answer
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), hsvc)
        .await;
}

/// TLS for the TCP listener (`--tls-cert`, `--tls-key`): HTTP/2 only, as gRPC servers
/// insist (a client that offers no ALPN, or another protocol, is refused); with
/// `--tls-client-ca`, a client certificate signed by that CA is required.
fn tls_acceptor(cert: &str, key: &str, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("read --tls-cert")
        .collect::<Result<_, _>>()
        .expect("parse --tls-cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("read --tls-key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("read --tls-client-ca") {
                roots
                    .add(c.expect("parse --tls-client-ca"))
                    .expect("add CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.ignore_client_order = true;
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// REST answers' forced status (0: none).
static REST_STATUS: AtomicU64 = AtomicU64::new(0);

/// Answers one REST request.
fn rest_answer(path: &str, body: &[u8], state: &State) -> http::Response<String> {
    let reply = |status: u16, body: String| {
        let mut r = http::Response::new(body);
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    let text = String::from_utf8_lossy(body);
    let decoded = skiff::config::proto::message("envoy.service.discovery.v3.DiscoveryRequest")
        .and_then(|d| skiff::config::proto::decode_text_lenient(&text, d))
        .and_then(|(m, _)| skiff::config::proto::to_typed::<DiscoveryRequest>(&m));
    let r = match decoded {
        Ok(r) => r,
        Err(e) => return reply(400, e.to_string()),
    };
    let node = r.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
    emit(json!({
        "event": "request", "stream": "rest", "rest": true, "path": path, "node": node,
        "has_node": r.node.is_some(), "type_url": r.type_url,
        "version": r.version_info, "names": r.resource_names,
        "error": r.error_detail.as_ref().map(|e| e.message.clone()),
    }));
    let forced = REST_STATUS.load(Ordering::Relaxed);
    if forced != 0 {
        return reply(forced as u16, String::new());
    }
    let Some(ts) = state.get(&(node, r.type_url.clone())) else {
        return reply(503, "no resources of that type yet".into());
    };
    if r.version_info == ts.version {
        return reply(304, String::new());
    }
    let wildcard = is_wildcard_type(&r.type_url) && r.resource_names.is_empty();
    let resources = ts
        .resources
        .iter()
        .filter(|(n, _)| wildcard || r.resource_names.contains(n))
        .map(|(_, (_, any))| any.clone())
        .collect();
    let response = DiscoveryResponse {
        version_info: ts.version.clone(),
        resources,
        type_url: r.type_url.clone(),
        ..Default::default()
    };
    let json = skiff::config::proto::message("envoy.service.discovery.v3.DiscoveryResponse")
        .ok()
        .and_then(|d| {
            prost_reflect::DynamicMessage::decode(d, response.encode_to_vec().as_slice()).ok()
        })
        .map(|m| skiff::config::to_json(&m));
    emit(
        json!({"event": "response", "stream": "rest", "type_url": r.type_url, "version": ts.version}),
    );
    match json {
        Some(j) => reply(200, j.to_string()),
        None => reply(500, "cannot encode".into()),
    }
}

/// Serves REST xDS on one HTTP/1.1 connection.
async fn serve_rest(stream: tokio::net::TcpStream, state: watch::Receiver<State>) {
    use http_body_util::BodyExt;
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let answer = rest_answer(&path, &body, &state.borrow());
            Ok::<_, std::convert::Infallible>(
                answer.map(|b| http_body_util::Full::new(bytes::Bytes::from(b))),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (state_tx, state_rx) = watch::channel(State::new());
        let server = Server {
            state: state_rx,
            streams: Arc::new(AtomicU64::new(0)),
            nonces: Arc::new(AtomicU64::new(1)),
        };
        let mut port = 0;
        if let Some(addr) = arg("--tcp") {
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .expect("bind tcp");
            port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            let server = server.clone();
            let tls = arg("--tls-cert").map(|cert| {
                tls_acceptor(
                    &cert,
                    &arg("--tls-key").expect("--tls-key"),
                    arg("--tls-client-ca").as_deref(),
                )
            });
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    match &tls {
                        None => {
                            tokio::spawn(serve(s, server.clone()));
                        }
                        Some(acceptor) => {
                            let (acceptor, server) = (acceptor.clone(), server.clone());
                            tokio::spawn(async move {
                                match acceptor.accept(s).await {
                                    Ok(t) if t.get_ref().1.alpn_protocol() != Some(b"h2") => {
                                        emit(json!({"event": "tls_error", "error": "the client did not negotiate h2"}));
                                    }
                                    Ok(t) => {
                                        let (_, c) = t.get_ref();
                                        emit(json!({
                                            "event": "tls",
                                            "sni": c.server_name(),
                                            "alpn": c.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
                                            "client_cert": c.peer_certificates().is_some_and(|p| !p.is_empty()),
                                        }));
                                        serve(t, server).await
                                    }
                                    Err(e) => emit(json!({"event": "tls_error", "error": e.to_string()})),
                                }
                            });
                        }
                    }
                }
            });
        }
        let mut rest_port = 0;
        if let Some(addr) = arg("--rest") {
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .expect("bind rest");
            rest_port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            let state = server.state.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve_rest(s, state.clone()));
                }
            });
        }
        if let Some(path) = arg("--uds") {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path).expect("bind uds");
            let server = server.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(serve(s, server.clone()));
                }
            });
        }
        emit(json!({"event": "ready", "port": port, "rest_port": rest_port}));
        let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let Ok(cmd) = serde_json::from_str::<serde_json::Value>(&line) else {
                emit(json!({"event": "error", "message": format!("bad command: {line}")}));
                continue;
            };
            match cmd["cmd"].as_str() {
                Some("set") => {
                    let t = cmd["type_url"].as_str().unwrap_or_default().to_string();
                    let node = cmd["node"].as_str().unwrap_or_default().to_string();
                    let version = cmd["version"].as_str().unwrap_or_default().to_string();
                    let resources = match decode_resources(cmd["yaml"].as_str().unwrap_or("[]")) {
                        Ok(r) => r,
                        Err(e) => {
                            emit(json!({"event": "error", "message": e}));
                            continue;
                        }
                    };
                    state_tx.send_modify(|s| {
                        let ts = s.entry((node.clone(), t.clone())).or_default();
                        let mut next = BTreeMap::new();
                        for any in resources {
                            let name = name_of(&any);
                            let v = match ts.resources.get(&name) {
                                Some((v, old)) if *old == any => v.clone(),
                                _ => version.clone(),
                            };
                            next.insert(name, (v, any));
                        }
                        ts.resources = next;
                        ts.version = version.clone();
                    });
                    emit(json!({"event": "set", "node": node, "type_url": t, "version": version}));
                }
                Some("rest_status") => {
                    REST_STATUS.store(cmd["status"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    emit(json!({"event": "rest_status"}));
                }
                Some("quit") => break,
                _ => emit(json!({"event": "error", "message": format!("unknown command: {line}")})),
            }
        }
    });
}
