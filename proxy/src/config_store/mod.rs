//! The configuration in force. The ConfigStore lives on the main thread and owns every listener,
//! cluster, route configuration and endpoint assignment, static or dynamic, with the version and
//! time each arrived. After each accepted change it publishes an immutable [`Snapshot`]: to the
//! workers, which put it in force between two events of their loops, and to the admin server
//! (arc-swap). An update is checked whole before anything changes: a rejected one changes
//! nothing.
//!
//! As Envoy's init manager does, a listener whose routes (RDS) or secrets (SDS), or a cluster
//! whose endpoints (EDS) or secrets have not arrived is *warming*: it is kept aside, and the version in force (if any)
//! goes on serving, until they arrive or the source's `initial_fetch_timeout` passes. At start
//! the workers begin only once nothing warms any more.

mod files;
mod merge;
mod xds_source;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;

use crate::config::discovery::{Discovery, FileError};
use crate::config::model::{self, ConfigSource, GrpcSource, GrpcTarget, SourceKind};
use crate::config::{resource, ConfigError, Loaded, Secrets};
use crate::drain::{DrainKind, Draining};
use crate::router::RouteTable;
use crate::stats::{Shard, Store};
use crate::upstream::dns::{DnsClusters, Resolved};
use crate::upstream::health::{HealthCheckers, HealthEvent};
use crate::upstream::outlier::{Detected, OutlierDetectors};
use crate::upstream::ClusterInfo;
use crate::worker::WorkerUpdate;
use crate::xds::{self, Interest, StreamKey, Update, XdsEvent};

pub use files::{FileEvent, Watchers};

/// Type URLs of the resources the store takes.
pub mod type_url {
    /// `Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `ScopedRouteConfiguration` (SRDS).
    pub const SCOPED_ROUTE: &str =
        "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    /// `ClusterLoadAssignment`.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `Secret`.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// `Runtime` (RTDS).
    pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
}

/// The configuration in force, as workers and the admin server see it. Immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Active listeners (warm ones), by name order.
    pub listeners: Vec<Arc<model::Listener>>,
    /// Active clusters by name.
    pub clusters: HashMap<String, Arc<ClusterInfo>>,
    /// Route configurations from RDS by name.
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// The scopes of each SRDS subscription (by `scoped_routes.name`), with their route
    /// tables: a scope whose route configuration has not come is left out (no route).
    pub scoped: HashMap<String, Arc<crate::router::scoped::ScopeTables>>,
    /// What `/config_dump` shows.
    pub dump: Dump,
}

/// One resource as `/config_dump` shows it.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// Its name.
    pub name: String,
    /// The resource in Envoy's JSON form.
    pub json: Arc<CompactJson>,
    /// `version_info` of the update that brought it (empty for static resources).
    pub version: String,
    /// When it arrived.
    pub last_updated: SystemTime,
}

/// A JSON document kept as its text: a tree of maps costs ten times as much, and a dump is
/// read only when `/config_dump` asks (a route table of 10,000 routes held 20 MiB as trees).
#[derive(Debug, Clone, Default)]
pub struct CompactJson(Box<str>);

impl CompactJson {
    /// Keeps `v`'s text.
    pub fn new(v: &serde_json::Value) -> Self {
        CompactJson(v.to_string().into_boxed_str())
    }

    /// A document already in text.
    pub fn from_text(text: &str) -> Self {
        CompactJson(text.into())
    }

    /// The document again.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// A listener or cluster's dump: static, or its dynamic active and warming versions.
#[derive(Debug, Clone)]
pub struct DumpedSlot {
    /// From the bootstrap.
    pub is_static: bool,
    /// In force.
    pub active: Option<Dumped>,
    /// Waiting for what it depends on.
    pub warming: Option<Dumped>,
}

/// Everything `/config_dump` shows of the dynamic configuration.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// Listeners by name.
    pub listeners: Vec<DumpedSlot>,
    /// Clusters by name.
    pub clusters: Vec<DumpedSlot>,
    /// Route configurations from RDS.
    pub routes: Vec<Dumped>,
    /// Each SRDS subscription's scopes: its name, and the scopes as accepted (the version and
    /// time of the update that brought the set in force).
    pub scoped: Vec<(String, Vec<Dumped>)>,
    /// Endpoint assignments, (static, dump): EDS ones and clusters' `load_assignment`s.
    pub endpoints: Vec<(bool, Dumped)>,
    /// Secrets, private keys redacted: (static, the secret).
    pub secrets: Vec<(bool, Dumped)>,
    /// SDS secrets subscribed to that have not arrived (version `uninitialized`, as Envoy).
    pub warming_secrets: Vec<Dumped>,
    /// The last accepted LDS version.
    pub lds_version: String,
    /// The last accepted CDS version.
    pub cds_version: String,
}

/// One version of a resource.
#[derive(Debug, Clone)]
struct Version<P, M> {
    proto: P,
    model: M,
    dump: Dumped,
}

/// A listener or cluster: static, or its dynamic active and warming versions.
#[derive(Debug)]
struct Slot<P, M> {
    is_static: bool,
    active: Option<Version<P, M>>,
    warming: Option<Version<P, M>>,
}

impl<P: PartialEq, M> Slot<P, M> {
    /// The version a new update is compared with: the warming one if any, else the active one.
    fn latest(&self) -> Option<&Version<P, M>> {
        self.warming.as_ref().or(self.active.as_ref())
    }

    fn dumped(&self) -> DumpedSlot {
        DumpedSlot {
            is_static: self.is_static,
            active: self.active.as_ref().map(|v| v.dump.clone()),
            warming: self.warming.as_ref().map(|v| v.dump.clone()),
        }
    }
}

type ListenerSlot = Slot<listener_pb::Listener, Arc<model::Listener>>;
type ClusterSlot = Slot<cluster_pb::Cluster, Arc<model::Cluster>>;

/// A subscription's progress and stats.
#[derive(Debug)]
struct Subscription {
    source: ConfigSource,
    /// Stat scope, with the trailing dot.
    scope: String,
    /// The first update was applied or refused, or `initial_fetch_timeout` passed.
    ready: bool,
    created: Instant,
    version: String,
    /// The version `/config_dump` shows: as Envoy's LDS and CDS, that of the last update
    /// that changed something, even one partly rejected.
    dump_version: String,
}

impl Subscription {
    /// A subscription; its stats exist from now on, at zero, as Envoy's do.
    fn new(source: ConfigSource, scope: String, main: &Shard) -> Self {
        for c in [
            "update_attempt",
            "update_success",
            "update_rejected",
            "update_failure",
            "update_empty",
            "init_fetch_timeout",
        ] {
            main.counter(&format!("{scope}{c}"));
        }
        for g in ["version", "update_time"] {
            main.gauge(&format!("{scope}{g}"));
        }
        // As Envoy's gRPC subscriptions (ADS included), starting counts as an attempt.
        let streamed = match &source.kind {
            SourceKind::Ads => true,
            SourceKind::Grpc(g) => g.rest.is_none(),
            SourceKind::File { .. } => false,
        };
        if streamed {
            main.counter(&format!("{scope}update_attempt")).inc();
        }
        main.histogram(&format!("{scope}update_duration"));
        Subscription {
            source,
            scope,
            ready: false,
            created: Instant::now(),
            version: String::new(),
            dump_version: String::new(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.ready {
            return None;
        }
        self.source.initial_fetch_timeout.map(|t| self.created + t)
    }
}

/// An RDS subscription and the route configuration it last accepted.
#[derive(Debug)]
struct Rds {
    sub: Subscription,
    table: Option<Version<route_pb::RouteConfiguration, Arc<RouteTable>>>,
}

/// An SRDS subscription (wildcard) and the scopes it last accepted.
#[derive(Debug)]
struct Srds {
    sub: Subscription,
    /// `rds_config_source` of the connection manager that asked first: where its scopes'
    /// route configurations come from.
    rds_source: ConfigSource,
    /// That connection manager's stat prefix (the RDS subscriptions' stats).
    prefix: String,
    /// The scopes by name, as accepted.
    scopes: BTreeMap<String, SrdsScope>,
    /// When the scopes in force came, and in what version.
    accepted: Option<(String, SystemTime)>,
}

/// A scope from SRDS: as sent, as translated, and as `/config_dump` shows it.
type SrdsScope = (
    route_pb::ScopedRouteConfiguration,
    crate::router::scoped::Scope,
    Arc<CompactJson>,
);

/// An EDS subscription and the assignment it last accepted.
#[derive(Debug)]
struct Eds {
    sub: Subscription,
    hosts: Option<Version<endpoint_pb::ClusterLoadAssignment, Vec<model::Host>>>,
}

/// How often the stats of removed resources are looked at, to drop those nothing holds.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// A secret: static, or from SDS with its subscription.
#[derive(Debug)]
struct SecretSlot {
    sub: Option<Subscription>,
    value: Option<Version<tls_pb::Secret, ()>>,
}

/// The main thread's owner of the configuration in force.
pub struct ConfigStore {
    /// When the allocator last gave free memory back (after a configuration was applied).
    last_trim: Option<std::time::Instant>,
    main: Arc<Shard>,
    stats: Arc<Store>,
    drain_time: Duration,
    workers: Vec<mpsc::UnboundedSender<WorkerUpdate>>,
    published: Arc<ArcSwap<Snapshot>>,
    listeners: BTreeMap<String, ListenerSlot>,
    clusters: BTreeMap<String, ClusterSlot>,
    /// Shared cluster state in force, kept across publications so workers keep their pools.
    infos: HashMap<String, Arc<ClusterInfo>>,
    /// `update_merge_window` per cluster and priority.
    merges: HashMap<(String, u32), merge::Window>,
    /// Client-side weighted round robin: when each such cluster's weights are next computed,
    /// and the clusters whose weights changed (their workers rebuild their balancers).
    weights_due: HashMap<String, Instant>,
    weights_changed: HashSet<String>,
    /// Clusters whose hosts had their first checks, and since with the same configuration:
    /// their changes count as updates, and may be merged.
    warmed: HashSet<String>,
    lds: Option<Subscription>,
    cds: Option<Subscription>,
    rds: BTreeMap<String, Rds>,
    /// SRDS subscriptions by `scoped_routes.name`.
    srds: BTreeMap<String, Srds>,
    eds: BTreeMap<String, Eds>,
    secrets: BTreeMap<String, SecretSlot>,
    /// RTDS subscriptions by resource name, and the runtime their layers feed.
    rtds: BTreeMap<String, Subscription>,
    runtime: Option<Arc<std::sync::Mutex<crate::runtime::Loader>>>,
    /// The listeners the workers run, to know which need new sockets.
    running: HashMap<String, Arc<model::Listener>>,
    /// When each listener drain in progress ends.
    draining_listeners: Vec<Instant>,
    /// When each filter chain drain (of listeners updated in place) ends.
    draining_chains: Vec<Instant>,
    /// The RDS route configurations draining listeners still use, until their drain ends (as
    /// in Envoy, their subscriptions stay until then).
    draining_rds: Vec<(Instant, Vec<RdsUse>)>,
    /// The same for SRDS subscriptions.
    draining_srds: Vec<(Instant, Vec<SrdsUse>)>,
    /// Listeners whose warming version replaces the active one in place.
    in_place: HashSet<String>,
    /// Stat scopes of removed resources, pruned once nothing holds them.
    pending_prune: Vec<String>,
    watchers: Watchers,
    decoder: crate::config::discovery::Decoder,
    /// STRICT_DNS and LOGICAL_DNS clusters' resolutions and hosts.
    dns: DnsClusters,
    /// Active health checks of the clusters that have them.
    health: HealthCheckers,
    /// Outlier detection of the clusters in force that have it.
    outlier: OutlierDetectors,
    /// The bootstrap has the internal-listener extension: listeners may be internal.
    internal_listeners: bool,
    /// `ads_config`.
    ads: Option<GrpcSource>,
    /// Where each static cluster an xDS stream may use is.
    xds_targets: BTreeMap<String, GrpcTarget>,
    /// Those clusters, for how the streams connect through them (TLS, DNS, keepalive).
    xds_clusters: BTreeMap<String, Arc<model::Cluster>>,
    /// The bootstrap's `node`, sent to xDS servers.
    node: envoy_types::pb::envoy::config::core::v3::Node,
    /// The same node in Envoy's JSON form (the bootstrap's), for REST requests.
    node_json: serde_json::Value,
    /// The xDS streams running.
    streams: BTreeMap<StreamKey, xds::Stream>,
    /// What each stream was last asked for, per type.
    interests: BTreeMap<(StreamKey, &'static str), Interest>,
    /// Listeners are asked for once the first clusters are warm, as Envoy does.
    lds_asked: bool,
    /// Start-up's first round is over (the workers run, or may).
    initialized: bool,
    /// The types whose answers ADS holds back (CDS while clusters warm).
    paused: tokio::sync::watch::Sender<BTreeSet<&'static str>>,
    xds_tx: mpsc::UnboundedSender<XdsEvent>,
    xds_rx: Option<mpsc::UnboundedReceiver<XdsEvent>>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("listeners", &self.listeners.len())
            .field("clusters", &self.clusters.len())
            .finish()
    }
}

fn now_dumped(name: &str, json: serde_json::Value, version: &str) -> Dumped {
    now_dumped_compact(name, CompactJson::new(&json), version)
}

fn now_dumped_compact(name: &str, json: CompactJson, version: &str) -> Dumped {
    Dumped {
        name: name.to_string(),
        json: Arc::new(json),
        version: version.to_string(),
        last_updated: SystemTime::now(),
    }
}

fn decode_any<T: Message + Default>(any: &Any, want: &str, path: &str) -> Result<T, ConfigError> {
    if any.type_url != want {
        return Err(ConfigError::new(
            path,
            format!(
                "unexpected resource type '{}' (expected '{want}')",
                any.type_url
            ),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| ConfigError::new(path, format!("cannot decode: {e}")))
}

impl ConfigStore {
    /// A store holding the bootstrap's static resources, its dynamic sources not read yet.
    pub fn new(
        loaded: &Loaded,
        stats: Arc<Store>,
        drain_time: Duration,
        events: mpsc::UnboundedSender<FileEvent>,
    ) -> Self {
        let statics = loaded.proto.static_resources.clone().unwrap_or_default();
        let main = stats.main().clone();
        let (xds_tx, xds_rx) = mpsc::unbounded_channel();
        let mut node = loaded.model.node.proto.clone();
        if node.user_agent_name.is_empty() {
            node.user_agent_name = "skiff".into();
        }
        let mut node_json = loaded
            .dump
            .bootstrap
            .get("node")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = node_json.as_object_mut() {
            o.entry("user_agent_name")
                .or_insert_with(|| node.user_agent_name.clone().into());
        }
        let health = HealthCheckers::new(main.clone(), stats.clone());
        let mut store = ConfigStore {
            last_trim: None,
            main: main.clone(),
            stats,
            drain_time,
            workers: Vec::new(),
            published: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
            infos: HashMap::new(),
            merges: HashMap::new(),
            warmed: HashSet::new(),
            weights_due: HashMap::new(),
            weights_changed: HashSet::new(),
            lds: None,
            cds: None,
            rds: BTreeMap::new(),
            srds: BTreeMap::new(),
            eds: BTreeMap::new(),
            secrets: BTreeMap::new(),
            rtds: BTreeMap::new(),
            runtime: None,
            running: HashMap::new(),
            draining_listeners: Vec::new(),
            draining_chains: Vec::new(),
            draining_rds: Vec::new(),
            draining_srds: Vec::new(),
            in_place: HashSet::new(),
            pending_prune: Vec::new(),
            watchers: Watchers::new(events),
            decoder: Default::default(),
            internal_listeners: loaded.model.internal_listener_buffer.is_some(),
            outlier: OutlierDetectors::new(
                main.clone(),
                loaded
                    .model
                    .outlier_event_log
                    .as_deref()
                    .and_then(crate::upstream::outlier::EventLog::open),
            ),
            dns: DnsClusters::new(main),
            health,
            ads: loaded.model.dynamic.ads.clone(),
            xds_targets: loaded.model.xds_targets.clone(),
            xds_clusters: loaded
                .model
                .clusters
                .iter()
                .filter(|c| loaded.model.xds_targets.contains_key(&c.name))
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            node,
            node_json,
            streams: BTreeMap::new(),
            interests: BTreeMap::new(),
            lds_asked: false,
            initialized: false,
            paused: tokio::sync::watch::Sender::new(BTreeSet::new()),
            xds_tx,
            xds_rx: Some(xds_rx),
        };
        let model = &loaded.model;
        for s in &statics.secrets {
            let json = redacted(serde_json::json!({"name": s.name}), s);
            store.secrets.insert(
                s.name.clone(),
                SecretSlot {
                    sub: None,
                    value: Some(Version {
                        proto: s.clone(),
                        model: (),
                        dump: now_dumped(&s.name, json, ""),
                    }),
                },
            );
        }
        for (i, c) in model.clusters.iter().enumerate() {
            let json = CompactJson::from_text(loaded.dump.clusters.get(i).map_or("null", |s| s));
            let proto = statics.clusters.get(i).cloned().unwrap_or_default();
            store.clusters.insert(
                c.name.clone(),
                Slot {
                    is_static: true,
                    active: Some(Version {
                        proto,
                        model: c.clone(),
                        dump: now_dumped_compact(&c.name, json, ""),
                    }),
                    warming: None,
                },
            );
        }
        for (i, l) in model.listeners.iter().enumerate() {
            let json = CompactJson::from_text(loaded.dump.listeners.get(i).map_or("null", |s| s));
            let proto = statics.listeners.get(i).cloned().unwrap_or_default();
            store.listeners.insert(
                l.name.clone(),
                Slot {
                    is_static: true,
                    active: None,
                    warming: Some(Version {
                        proto,
                        model: l.clone(),
                        dump: now_dumped_compact(&l.name, json, ""),
                    }),
                },
            );
        }
        let m = &store.main;
        for c in [
            "listener_manager.listener_added",
            "listener_manager.listener_modified",
            "listener_manager.listener_removed",
            "listener_manager.listener_create_success",
            "listener_manager.listener_create_failure",
            "listener_manager.listener_in_place_updated",
            "listener_manager.listener_stopped",
            "cluster_manager.cluster_added",
            "cluster_manager.cluster_modified",
            "cluster_manager.cluster_removed",
            "cluster_manager.cluster_updated",
            "cluster_manager.cluster_updated_via_merge",
            "cluster_manager.update_merge_cancelled",
            "cluster_manager.update_out_of_merge_window",
            "server.dynamic_unknown_fields",
        ] {
            m.counter(c);
        }
        m.counter("cluster_manager.cluster_added")
            .add(model.clusters.len() as u64);
        m.counter("listener_manager.listener_added")
            .add(model.listeners.len() as u64);
        if let Some(src) = &model.dynamic.cds {
            store.cds = Some(Subscription::new(
                src.clone(),
                "cluster_manager.cds.".into(),
                &store.main,
            ));
        }
        if let Some(src) = &model.dynamic.lds {
            store.lds = Some(Subscription::new(
                src.clone(),
                "listener_manager.lds.".into(),
                &store.main,
            ));
        }
        store
    }

    /// The runtime whose RTDS layers this store follows (once, before [`Self::start`]).
    pub fn set_runtime(&mut self, runtime: Arc<std::sync::Mutex<crate::runtime::Loader>>) {
        let wanted = runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rtds();
        for (name, source) in wanted {
            self.rtds
                .entry(name)
                .or_insert_with(|| Subscription::new(source, "runtime.".into(), &self.main));
        }
        self.runtime = Some(runtime);
    }

    /// The snapshot the admin server reads.
    pub fn published(&self) -> Arc<ArcSwap<Snapshot>> {
        self.published.clone()
    }

    /// Reads the dynamic sources for the first time (clusters first, then their endpoints,
    /// then listeners and their routes, in Envoy's order) and starts following them.
    pub fn start(&mut self) {
        // RTDS first, as Envoy's runtime starts before the cluster manager.
        let files: Vec<ConfigSource> = self
            .rtds
            .values()
            .map(|s| s.source.clone())
            .filter(|s| matches!(s.kind, SourceKind::File { .. }))
            .collect();
        for src in files {
            self.watchers.watch(&src);
            self.refresh_source(&src);
        }
        // The SDS secrets static listeners and clusters name (their TLS waits for them).
        let refs: Vec<_> = self
            .listeners
            .values()
            .filter(|s| s.is_static)
            .flat_map(|s| s.active.iter().chain(s.warming.iter()))
            .flat_map(|v| secret_refs(&listener_tls(&v.proto)))
            .chain(
                self.clusters
                    .values()
                    .filter(|s| s.is_static)
                    .flat_map(|s| s.active.iter().chain(s.warming.iter()))
                    .flat_map(|v| secret_refs(&cluster_tls(&v.proto))),
            )
            .collect();
        if let Err(e) = self.follow_secrets(&refs, "static_resources") {
            tracing::error!(error = %e, "static resources: cannot follow their SDS secrets");
        }
        if let Some(src) = self.cds.as_ref().map(|s| s.source.clone()) {
            self.watchers.watch(&src);
            self.refresh_source(&src);
        }
        self.sync_eds();
        if let Some(src) = self.lds.as_ref().map(|s| s.source.clone()) {
            self.watchers.watch(&src);
            self.refresh_source(&src);
        }
        self.sync_rds();
        self.promote();
        self.publish();
    }

    /// Whether anything still warms (start-up waits for this, as Envoy's init manager does).
    pub fn initializing(&self) -> bool {
        self.lds.as_ref().is_some_and(|s| !s.ready)
            || self.cds.as_ref().is_some_and(|s| !s.ready)
            || self
                .listeners
                .values()
                .any(|s| s.warming.is_some() && s.active.is_none())
            || self
                .clusters
                .values()
                .any(|s| s.warming.is_some() && s.active.is_none())
            || self.clusters.values().any(|s| {
                s.active
                    .as_ref()
                    .is_some_and(|v| v.model.dns.is_some() && !self.dns.ready(&v.model))
            })
            || self
                .secrets
                .values()
                .any(|s| s.sub.as_ref().is_some_and(|sub| !sub.ready))
            || self.rtds.values().any(|s| !s.ready)
    }

    /// The channel DNS resolutions come back on; the main loop gives each to
    /// [`ConfigStore::on_dns`]. Taken once.
    pub fn dns_events(&mut self) -> Option<mpsc::UnboundedReceiver<Resolved>> {
        self.dns.take_events()
    }

    /// A DNS resolution ended: a cluster whose hosts changed, or that it warmed, is published.
    pub fn on_dns(&mut self, r: Resolved) {
        if self.dns.on_resolved(r) {
            self.promote();
            self.publish();
        }
    }

    /// The results of active health checks, for [`ConfigStore::on_health`]. Taken once.
    pub fn health_events(&mut self) -> Option<mpsc::UnboundedReceiver<HealthEvent>> {
        self.health.take_events()
    }

    /// A check's result: a host whose health changed goes into the next snapshot; a cluster
    /// whose hosts all had their first check may go into force.
    pub fn on_health(&mut self, ev: HealthEvent) {
        // A passed check brings back a host outlier detection ejected (Envoy's
        // successful_active_health_check_uneject_host).
        let unejected = match self.health.passed(&ev) {
            Some((config, address)) => self.outlier.on_check_passed(&config, address),
            None => false,
        };
        if self.health.on_event(ev) || unejected {
            self.promote();
            self.publish();
        }
    }

    /// Outlier detections from the workers, for [`ConfigStore::on_outlier`]. Taken once.
    pub fn outlier_events(&mut self) -> Option<mpsc::UnboundedReceiver<Detected>> {
        self.outlier.take_events()
    }

    /// A worker's detection: an ejected host goes out with the next snapshot.
    pub fn on_outlier(&mut self, ev: Detected) {
        if self.outlier.on_detected(ev) {
            self.publish();
        }
    }

    /// The next time something is due: a subscription's initial fetch timeout or the end of a
    /// listener drain.
    pub fn next_deadline(&self) -> Option<Instant> {
        let subs = self
            .lds
            .iter()
            .chain(self.cds.iter())
            .chain(self.rds.values().map(|r| &r.sub))
            .chain(self.srds.values().map(|r| &r.sub))
            .chain(self.eds.values().map(|e| &e.sub))
            .chain(self.secrets.values().filter_map(|s| s.sub.as_ref()))
            .chain(self.rtds.values())
            .filter_map(Subscription::deadline);
        let prune = (!self.pending_prune.is_empty()).then(|| Instant::now() + PRUNE_EVERY);
        subs.chain(self.draining_listeners.iter().copied())
            .chain(self.draining_chains.iter().copied())
            .chain(self.draining_rds.iter().map(|(d, _)| *d))
            .chain(self.draining_srds.iter().map(|(d, _)| *d))
            .chain(prune)
            .chain(self.decoder.idle_deadline())
            .chain(self.dns.next_deadline())
            .chain(self.outlier.next_deadline())
            .chain(self.merges.values().filter_map(|w| w.due))
            .chain(self.weights_due.values().copied())
            .min()
    }

    /// Timeouts: subscriptions past `initial_fetch_timeout` count as fetched (what waited on
    /// them goes into force without them), finished drains leave the gauge, removed resources'
    /// stats go once nothing holds them.
    pub fn on_timer(&mut self, now: Instant) {
        let main = self.main.clone();
        let mut changed = false;
        let subs = self
            .lds
            .iter_mut()
            .chain(self.cds.iter_mut())
            .chain(self.rds.values_mut().map(|r| &mut r.sub))
            .chain(self.srds.values_mut().map(|r| &mut r.sub))
            .chain(self.eds.values_mut().map(|e| &mut e.sub))
            .chain(self.secrets.values_mut().filter_map(|s| s.sub.as_mut()))
            .chain(self.rtds.values_mut());
        for sub in subs {
            if sub.deadline().is_some_and(|d| d <= now) {
                tracing::warn!(source = %sub.source.describe(), "initial fetch timed out");
                main.counter(&format!("{}init_fetch_timeout", sub.scope))
                    .inc();
                sub.ready = true;
                changed = true;
            }
        }
        self.decoder.stop_if_idle();
        self.dns.on_timer();
        changed |= self.outlier.on_timer();
        let due: Vec<String> = self
            .weights_due
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(info) = self.infos.get(&name) {
                if let Some(cfg) = &info.config.client_side_weights {
                    self.weights_due
                        .insert(name.clone(), now + cfg.weight_update_period);
                    if client_weights(info, cfg) {
                        self.weights_changed.insert(name);
                        changed = true;
                    }
                }
            }
        }
        for w in self.merges.values_mut() {
            if w.due.is_some_and(|d| d <= now) {
                w.due = None;
                w.last_updated = Some(now);
                main.counter("cluster_manager.cluster_updated_via_merge")
                    .inc();
                changed = true;
            }
        }
        self.draining_listeners.retain(|d| *d > now);
        self.draining_chains.retain(|d| *d > now);
        let held = self.draining_rds.len() + self.draining_srds.len();
        self.draining_rds.retain(|(d, _)| *d > now);
        self.draining_srds.retain(|(d, _)| *d > now);
        if self.draining_rds.len() + self.draining_srds.len() != held {
            self.sync_rds();
            changed = true;
        }
        let stats = self.stats.clone();
        self.pending_prune.retain(|p| !stats.prune(p));
        if changed {
            self.promote();
            self.publish();
        } else {
            self.update_gauges();
        }
    }

    /// A watched file was moved into place: read it again for every subscription on it.
    pub fn on_file_event(&mut self, ev: &FileEvent) {
        self.refresh_source(&ev.source);
        self.sync_eds();
        self.sync_rds();
        self.sync_sds();
        self.promote();
        self.publish();
    }

    /// Decodes `src` once and gives it to every subscription that reads it.
    fn refresh_source(&mut self, src: &ConfigSource) {
        let wanted = self.lds.as_ref().is_some_and(|s| &s.source == src)
            || self.cds.as_ref().is_some_and(|s| &s.source == src)
            || self.rds.values().any(|r| &r.sub.source == src)
            || self.srds.values().any(|r| &r.sub.source == src)
            || self.eds.values().any(|e| &e.sub.source == src)
            || self
                .secrets
                .values()
                .any(|s| s.sub.as_ref().is_some_and(|s| &s.source == src))
            || self.rtds.values().any(|s| &s.source == src);
        if !wanted {
            return;
        }
        let SourceKind::File { path, .. } = &src.kind else {
            return;
        };
        let decoded = self.decoder.decode(path);
        if self.cds.as_ref().is_some_and(|s| &s.source == src) {
            let _ = self.deliver(Kind::Cds, src, &decoded, None);
        }
        if self.lds.as_ref().is_some_and(|s| &s.source == src) {
            let _ = self.deliver(Kind::Lds, src, &decoded, None);
        }
        let rds: Vec<String> = self
            .rds
            .iter()
            .filter(|(_, r)| &r.sub.source == src)
            .map(|(n, _)| n.clone())
            .collect();
        for name in rds {
            let _ = self.deliver(Kind::Rds(name), src, &decoded, None);
        }
        let srds: Vec<String> = self
            .srds
            .iter()
            .filter(|(_, r)| &r.sub.source == src)
            .map(|(n, _)| n.clone())
            .collect();
        for name in srds {
            let _ = self.deliver(Kind::Srds(name), src, &decoded, None);
        }
        let eds: Vec<String> = self
            .eds
            .iter()
            .filter(|(_, e)| &e.sub.source == src)
            .map(|(n, _)| n.clone())
            .collect();
        for name in eds {
            let _ = self.deliver(Kind::Eds(name), src, &decoded, None);
        }
        let sds: Vec<String> = self
            .secrets
            .iter()
            .filter(|(_, s)| s.sub.as_ref().is_some_and(|s| &s.source == src))
            .map(|(n, _)| n.clone())
            .collect();
        for name in sds {
            let _ = self.deliver(Kind::Sds(name), src, &decoded, None);
        }
        let rtds: Vec<String> = self
            .rtds
            .iter()
            .filter(|(_, s)| &s.source == src)
            .map(|(n, _)| n.clone())
            .collect();
        for name in rtds {
            let _ = self.deliver(Kind::Rtds(name), src, &decoded, None);
        }
    }

    fn subscription(&mut self, kind: &Kind) -> Option<&mut Subscription> {
        match kind {
            Kind::Lds => self.lds.as_mut(),
            Kind::Cds => self.cds.as_mut(),
            Kind::Rds(n) => self.rds.get_mut(n).map(|r| &mut r.sub),
            Kind::Srds(n) => self.srds.get_mut(n).map(|r| &mut r.sub),
            Kind::Eds(n) => self.eds.get_mut(n).map(|e| &mut e.sub),
            Kind::Sds(n) => self.secrets.get_mut(n).and_then(|s| s.sub.as_mut()),
            Kind::Rtds(n) => self.rtds.get_mut(n),
        }
    }

    /// Applies a decoded update (a file, or a response from an xDS server) to one
    /// subscription, counting as Envoy does. `removed`: the names a delta response removes
    /// (none: state of the world). Returns the rejection's message, for a NACK.
    fn deliver(
        &mut self,
        kind: Kind,
        src: &ConfigSource,
        decoded: &Result<Discovery, FileError>,
        removed: Option<&[String]>,
    ) -> Result<(), String> {
        let main = self.main.clone();
        let Some(scope) = self.subscription(&kind).map(|s| s.scope.clone()) else {
            return Ok(());
        };
        let file = matches!(src.kind, SourceKind::File { .. });
        // `update_duration`: the time an update took to apply, for gRPC streams (Envoy's
        // filesystem and REST subscriptions record none).
        let timed = match &src.kind {
            SourceKind::Ads => true,
            SourceKind::Grpc(g) => g.rest.is_none(),
            SourceKind::File { .. } => false,
        };
        let began = Instant::now();
        main.counter(&format!("{scope}update_attempt")).inc();
        let result = match decoded {
            Err(FileError::Read(e)) => {
                tracing::warn!(source = %src.describe(), error = %e, "config update failure");
                main.counter(&format!("{scope}update_failure")).inc();
                // As Envoy, a file that cannot be loaded ends the initial fetch too.
                if let Some(sub) = self.subscription(&kind) {
                    sub.ready = true;
                }
                return Err(e.clone());
            }
            Err(FileError::Rejected(e)) => Err(e.clone()),
            Ok(d) => {
                if !d.unknown_fields.is_empty() {
                    for f in &d.unknown_fields {
                        tracing::warn!(source = %src.describe(), field = %f, "unknown field ignored");
                    }
                    // As Envoy, one count per file that had any.
                    main.counter("server.dynamic_unknown_fields").inc();
                }
                match &kind {
                    Kind::Lds => self.apply_lds(d, removed),
                    Kind::Cds => self.apply_cds(d, removed),
                    Kind::Rds(name) => self.apply_rds(name, d),
                    Kind::Srds(name) => self.apply_srds(name, d, removed),
                    Kind::Eds(name) => self.apply_eds(name, d),
                    Kind::Sds(name) => self.apply_sds(name, d),
                    Kind::Rtds(name) => self.apply_rtds(name, d, removed),
                }
            }
        };
        let Some(sub) = self.subscription(&kind) else {
            return result.map_err(|e| e.to_string());
        };
        sub.ready = true;
        match result {
            Ok(()) => {
                let version = decoded
                    .as_ref()
                    .map(|d| d.version_info.clone())
                    .unwrap_or_default();
                sub.version = version.clone();
                main.counter(&format!("{scope}update_success")).inc();
                main.gauge(&format!("{scope}version"))
                    .set(xxhash_rust::xxh64::xxh64(version.as_bytes(), 0) as i64);
                main.set_text(&format!("{scope}version_text"), &version);
                let ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                main.gauge(&format!("{scope}update_time")).set(ms);
                if timed {
                    main.histogram(&format!("{scope}update_duration"))
                        .record_ms(began.elapsed());
                }
                if decoded
                    .as_ref()
                    .is_ok_and(|d| d.resources.is_empty() && removed.is_none_or(|r| r.is_empty()))
                {
                    main.counter(&format!("{scope}update_empty")).inc();
                }
                Ok(())
            }
            Err(e) => {
                if file {
                    tracing::warn!(source = %src.describe(), error = %e, "filesystem config update rejected");
                } else {
                    tracing::warn!(source = %src.describe(), error = %e, "xDS config update rejected");
                }
                main.counter(&format!("{scope}update_rejected")).inc();
                // Envoy's delta gRPC subscription counts the attempt, then the failure as
                // another.
                if timed && removed.is_some() {
                    main.counter(&format!("{scope}update_attempt")).inc();
                }
                Err(e.to_string())
            }
        }
    }

    /// An RTDS update, as Envoy's `RtdsSubscription`: no resource (or its removal) empties
    /// the layer; one resource, named as the layer asks, replaces its values, each key checked
    /// as a static layer's (Envoy's own keys only where skiff honours them).
    fn apply_rtds(
        &mut self,
        name: &str,
        d: &Discovery,
        removed: Option<&[String]>,
    ) -> Result<(), ConfigError> {
        use envoy_types::pb::envoy::service::runtime::v3::Runtime;
        let values = match d.resources.as_slice() {
            [] => {
                if removed.is_some() && !removed.is_some_and(|r| r.iter().any(|n| n == name)) {
                    return Ok(());
                }
                BTreeMap::new()
            }
            [any] => {
                let r: Runtime = decode_any(any, type_url::RUNTIME, "resources[0]")?;
                if r.name != name {
                    return Err(ConfigError::new(
                        "resources[0].name",
                        format!("Unexpected RTDS runtime (expecting {name}): {}", r.name),
                    ));
                }
                let layer = r.layer.unwrap_or_default();
                crate::config::runtime::proto_layer(&layer, "resources[0].layer", false)?
            }
            more => {
                return Err(ConfigError::new(
                    "resources",
                    format!("Unexpected RTDS resource length: {}", more.len()),
                ))
            }
        };
        if let Some(rt) = &self.runtime {
            rt.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_rtds(name, values);
        }
        Ok(())
    }

    /// Every cluster name a route may name now (active and warming).
    fn cluster_names(&self) -> HashSet<String> {
        self.clusters.keys().cloned().collect()
    }

    /// A listener update. As Envoy's LDS: a response that does not decode, or names a listener
    /// twice, changes nothing; otherwise each listener is added or updated on its own, those
    /// that fail keep their version in force, and the failures make one rejection. State of the
    /// world removes the dynamic listeners the response does not name; delta (`removed`) those
    /// it lists.
    fn apply_lds(&mut self, d: &Discovery, removed: Option<&[String]>) -> Result<(), ConfigError> {
        let clusters = self.cluster_names();
        let mut secrets = self.secret_values();
        let mut in_place = HashSet::new();
        let mut next: BTreeMap<String, Version<listener_pb::Listener, Arc<model::Listener>>> =
            BTreeMap::new();
        let protos = decode_all::<listener_pb::Listener>(d, type_url::LISTENER)?;
        let named: HashSet<String> = protos.iter().map(|(_, p)| p.name.clone()).collect();
        // As Envoy, a name given twice: the first applies, the second fails.
        let mut seen: HashSet<String> = HashSet::new();
        let mut unchanged: HashSet<String> = HashSet::new();
        let mut errors: Vec<(String, ConfigError)> = Vec::new();
        for (i, proto) in protos {
            let path = format!("resources[{i}]");
            if !seen.insert(proto.name.clone()) {
                let e = ConfigError::new("", format!("duplicate listener {} found", proto.name));
                errors.push((proto.name.clone(), e));
                continue;
            }
            if let Some(e) = d.errors.get(&i) {
                errors.push((proto.name.clone(), e.clone()));
                continue;
            }
            // Unchanged: the version in force stays, untranslated.
            if let Some(cur) = self
                .listeners
                .get(&proto.name)
                .filter(|s| !s.is_static && !proto.name.is_empty())
                .and_then(|s| s.latest())
                .filter(|c| c.proto == proto)
            {
                unchanged.insert(proto.name.clone());
                next.insert(proto.name.clone(), cur.clone());
                continue;
            }
            let built = (|| {
                if self.follow_secrets(&secret_refs(&listener_tls(&proto)), &path)? {
                    secrets = self.secret_values();
                }
                let model = resource::listener(&proto, &path, &clusters, &secrets)?;
                if model.internal && !self.internal_listeners {
                    return Err(ConfigError::new(
                        format!("{path}.internal_listener"),
                        format!(
                            "error adding listener named '{}': InternalListener bootstrap extension is mandatory",
                            model.name
                        ),
                    ));
                }
                if self.listeners.get(&model.name).is_some_and(|s| s.is_static) {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!(
                            "cannot add or update listener '{}': it is a static listener",
                            model.name
                        ),
                    ));
                }
                Ok(model)
            })();
            let mut model = match built {
                Ok(m) => m,
                Err(e) if e.invalid => return Err(e),
                Err(e) => {
                    errors.push((proto.name.clone(), e));
                    continue;
                }
            };
            let name = model.name.clone();
            let mut version = d.version_of(i).to_string();
            if let Some(cur) = self.listeners.get(&name).and_then(|s| s.latest()) {
                if cur.proto != proto && adopt_chains(cur, &proto, &mut model) {
                    in_place.insert(name.clone());
                    // Envoy's in-place filter chain update keeps the listener's version_info.
                    version = cur.dump.version.clone();
                }
            }
            let dump = now_dumped(&name, d.dumps.get(i).cloned().unwrap_or_default(), &version);
            next.insert(
                name,
                Version {
                    proto,
                    model: Arc::new(model),
                    dump,
                },
            );
        }
        // In delta, the listeners the response does not name stay as they are.
        let kept: Vec<String> = match removed {
            Some(gone) => self
                .listeners
                .iter()
                .filter(|(n, s)| {
                    !s.is_static
                        && !next.contains_key(*n)
                        && !gone.contains(n)
                        && !named.contains(*n)
                })
                .map(|(n, _)| n.clone())
                .collect(),
            None => Vec::new(),
        };
        // Two listeners may not share an address (the static ones included); a new or changed
        // one that takes the address of another (unchanged ones first) fails alone.
        let mut seen: HashMap<std::net::SocketAddr, String> = HashMap::new();
        let fixed = self
            .listeners
            .iter()
            .filter(|(n, s)| {
                s.is_static || kept.contains(n) || (!next.contains_key(*n) && named.contains(*n))
            })
            .filter_map(|(n, s)| s.latest().map(|v| (n.clone(), v.model.clone())));
        for (name, l) in fixed {
            if l.bind_to_port {
                for a in l.addresses() {
                    seen.insert(a, name.clone());
                }
            }
        }
        let mut clash = Vec::new();
        let ordered = next
            .iter()
            .filter(|(n, _)| unchanged.contains(*n))
            .chain(next.iter().filter(|(n, _)| !unchanged.contains(*n)));
        for (name, v) in ordered {
            if !v.model.bind_to_port {
                continue;
            }
            let addrs: Vec<SocketAddr> = v.model.addresses().collect();
            if let Some((a, other)) = addrs
                .iter()
                .find_map(|a| seen.get(a).map(|o| (*a, o.clone())))
            {
                errors.push((
                    name.clone(),
                    ConfigError::new(
                        "address",
                        format!(
                            "error adding listener '{name}': listener '{other}' already uses {a}"
                        ),
                    ),
                ));
                clash.push(name.clone());
                continue;
            }
            for a in addrs {
                seen.insert(a, name.clone());
            }
        }
        for n in clash {
            next.remove(&n);
        }
        let main = self.main.clone();
        let removed: Vec<String> = self
            .listeners
            .iter()
            .filter(|(n, s)| {
                !s.is_static
                    && match removed {
                        Some(gone) => gone.contains(n) && !next.contains_key(*n),
                        None => !next.contains_key(*n) && !named.contains(*n),
                    }
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut applied = !removed.is_empty();
        for name in removed {
            if let Some(slot) = self.listeners.remove(&name) {
                if let Some(v) = slot.latest() {
                    // Its stats go once its connections (which hold them) are gone.
                    self.pending_prune
                        .push(format!("listener.{}.", v.model.stat_prefix));
                }
                if let Some(old) = &slot.active {
                    let ends = Instant::now() + self.drain_time;
                    self.draining_listeners.push(ends);
                    self.draining_rds.push((ends, rds_of(&old.model)));
                    self.draining_srds.push((ends, srds_of(&old.model)));
                }
            }
            main.counter("listener_manager.listener_removed").inc();
            tracing::info!(listener = %name, "listener removed");
        }
        for (name, v) in next {
            let scope = format!("listener.{}.", v.model.stat_prefix);
            self.pending_prune.retain(|p| *p != scope);
            match self.listeners.get_mut(&name) {
                Some(slot) => {
                    if slot.latest().is_some_and(|cur| cur.proto == v.proto) {
                        continue;
                    }
                    applied = true;
                    main.counter("listener_manager.listener_modified").inc();
                    if in_place.contains(&name) {
                        main.counter("listener_manager.listener_in_place_updated")
                            .inc();
                        self.in_place.insert(name.clone());
                    } else {
                        self.in_place.remove(&name);
                    }
                    tracing::info!(listener = %name, in_place = in_place.contains(&name), "listener modified");
                    slot.warming = Some(v);
                }
                None => {
                    applied = true;
                    main.counter("listener_manager.listener_added").inc();
                    tracing::info!(listener = %name, "listener added");
                    self.listeners.insert(
                        name,
                        Slot {
                            is_static: false,
                            active: None,
                            warming: Some(v),
                        },
                    );
                }
            }
        }
        if applied {
            if let Some(sub) = self.lds.as_mut() {
                sub.dump_version = d.version_info.clone();
            }
        }
        failures("listener", errors)
    }

    /// A cluster update, resource by resource as [`Self::apply_lds`].
    fn apply_cds(&mut self, d: &Discovery, removed: Option<&[String]>) -> Result<(), ConfigError> {
        let mut next: BTreeMap<String, Version<cluster_pb::Cluster, Arc<model::Cluster>>> =
            BTreeMap::new();
        let mut secrets = self.secret_values();
        let protos = decode_all::<cluster_pb::Cluster>(d, type_url::CLUSTER)?;
        let mut failed = Vec::new();
        let named: HashSet<String> = protos.iter().map(|(_, p)| p.name.clone()).collect();
        // As Envoy, a name given twice: the first applies, the second fails.
        let mut seen: HashSet<String> = HashSet::new();
        let mut errors: Vec<(String, ConfigError)> = Vec::new();
        for (i, proto) in protos {
            let path = format!("resources[{i}]");
            if !seen.insert(proto.name.clone()) {
                let e = ConfigError::new("", format!("duplicate cluster {} found", proto.name));
                errors.push((proto.name.clone(), e));
                continue;
            }
            if let Some(e) = d.errors.get(&i) {
                errors.push((proto.name.clone(), e.clone()));
                continue;
            }
            // Unchanged: the version in force stays, untranslated (and keeps its version_info,
            // as in Envoy).
            if let Some(cur) = self
                .clusters
                .get(&proto.name)
                .filter(|s| !s.is_static)
                .and_then(|s| s.latest())
                .filter(|c| c.proto == proto)
            {
                next.insert(proto.name.clone(), cur.clone());
                continue;
            }
            let built = (|| {
                if self.follow_secrets(&secret_refs(&cluster_tls(&proto)), &path)? {
                    secrets = self.secret_values();
                }
                resource::cluster(&proto, &path, &secrets)
            })();
            let model = match built {
                Ok(m) => m,
                Err(e) if e.invalid => return Err(e),
                Err(e) => {
                    // Envoy counts the cluster added or modified before it fails to load.
                    failed.push(match self.clusters.get(&proto.name) {
                        Some(s) if !s.is_static => "cluster_manager.cluster_modified",
                        _ => "cluster_manager.cluster_added",
                    });
                    errors.push((proto.name.clone(), e));
                    continue;
                }
            };
            let name = model.name.clone();
            let dump = now_dumped(
                &name,
                d.dumps.get(i).cloned().unwrap_or_default(),
                d.version_of(i),
            );
            next.insert(
                name,
                Version {
                    proto,
                    model: Arc::new(model),
                    dump,
                },
            );
        }
        let main = self.main.clone();
        for counter in failed {
            main.counter(counter).inc();
        }
        let removed: Vec<String> = self
            .clusters
            .iter()
            .filter(|(n, s)| {
                !s.is_static
                    && match removed {
                        Some(gone) => gone.contains(n) && !next.contains_key(*n),
                        None => !next.contains_key(*n) && !named.contains(*n),
                    }
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut applied = !removed.is_empty();
        for name in removed {
            let stat = self
                .clusters
                .remove(&name)
                .and_then(|s| s.active.or(s.warming))
                .map_or_else(|| name.clone(), |v| v.model.stat_name().to_string());
            main.counter("cluster_manager.cluster_removed").inc();
            self.pending_prune.push(format!("cluster.{stat}."));
            tracing::info!(cluster = %name, "cluster removed");
        }
        for (name, v) in next {
            let stat = format!("cluster.{}.", v.model.stat_name());
            self.pending_prune.retain(|p| *p != stat);
            match self.clusters.get_mut(&name) {
                Some(slot) if slot.is_static => {
                    tracing::warn!(cluster = %name, "cds: a static cluster of that name exists; update skipped");
                }
                Some(slot) => {
                    if slot.latest().is_some_and(|cur| cur.proto == v.proto) {
                        continue;
                    }
                    applied = true;
                    main.counter("cluster_manager.cluster_modified").inc();
                    tracing::info!(cluster = %name, "cluster modified");
                    slot.warming = Some(v);
                }
                None => {
                    applied = true;
                    main.counter("cluster_manager.cluster_added").inc();
                    tracing::info!(cluster = %name, "cluster added");
                    self.clusters.insert(
                        name,
                        Slot {
                            is_static: false,
                            active: None,
                            warming: Some(v),
                        },
                    );
                }
            }
        }
        if applied {
            if let Some(sub) = self.cds.as_mut() {
                sub.dump_version = d.version_info.clone();
            }
        }
        failures("cluster", errors)
    }

    fn apply_rds(&mut self, name: &str, d: &Discovery) -> Result<(), ConfigError> {
        let proto: route_pb::RouteConfiguration = the_one(
            d,
            (type_url::ROUTE, "RDS", "configuration"),
            ("name", name),
            |r: &route_pb::RouteConfiguration| &r.name,
        )?;
        let config = resource::route_configuration(&proto, "resources[0]")?;
        // Translation checked that it indexes.
        let table = RouteTable::new(Arc::new(config))
            .map_err(|e| ConfigError::new("resources[0].virtual_hosts", e))?;
        let Some(rds) = self.rds.get_mut(name) else {
            return Ok(());
        };
        if rds.table.as_ref().is_some_and(|t| t.proto == proto) {
            return Ok(());
        }
        rds.table = Some(Version {
            proto,
            model: Arc::new(table),
            dump: now_dumped(
                name,
                d.dumps.first().cloned().unwrap_or_default(),
                &d.version_info,
            ),
        });
        Ok(())
    }

    /// An SRDS response (wildcard: every scope, or in delta the changes and `removed`),
    /// checked as Envoy checks it: two scopes of one name or of one key reject it whole.
    fn apply_srds(
        &mut self,
        name: &str,
        d: &Discovery,
        removed: Option<&[String]>,
    ) -> Result<(), ConfigError> {
        use crate::router::scoped::ScopeRoute;
        let Some(next) = self.srds_next(name, d, removed)? else {
            return Ok(());
        };
        let Some(srds) = self.srds.get_mut(name) else {
            return Ok(());
        };
        let same = srds.scopes.len() == next.len()
            && srds
                .scopes
                .iter()
                .zip(next.iter())
                .all(|((a, (pa, ..)), (b, (pb, ..)))| a == b && pa == pb);
        if same {
            return Ok(());
        }
        srds.scopes = next;
        srds.accepted = Some((d.version_info.clone(), SystemTime::now()));
        let scope = srds.sub.scope.clone();
        let count = |f: fn(&ScopeRoute) -> bool| {
            srds.scopes.values().filter(|(_, s, _)| f(&s.route)).count() as i64
        };
        let all = srds.scopes.len() as i64;
        let on_demand = count(|r| matches!(r, ScopeRoute::OnDemand(_)));
        let active = count(|r| matches!(r, ScopeRoute::Rds(_)));
        self.main.counter(&format!("{scope}config_reload")).inc();
        self.main.gauge(&format!("{scope}all_scopes")).set(all);
        self.main
            .gauge(&format!("{scope}on_demand_scopes"))
            .set(on_demand);
        self.main
            .gauge(&format!("{scope}active_scopes"))
            .set(active);
        Ok(())
    }

    /// The scopes SRDS subscription `name` would have after an update (none: no such
    /// subscription), or why the update is rejected; nothing changes.
    pub(super) fn srds_next(
        &self,
        name: &str,
        d: &Discovery,
        removed: Option<&[String]>,
    ) -> Result<Option<BTreeMap<String, SrdsScope>>, ConfigError> {
        let mut fresh = Vec::with_capacity(d.resources.len());
        let mut names = HashSet::new();
        for (i, any) in d.resources.iter().enumerate() {
            let path = format!("resources[{i}]");
            let proto: route_pb::ScopedRouteConfiguration =
                decode_any(any, type_url::SCOPED_ROUTE, &path)?;
            if !names.insert(proto.name.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!(
                        "Error adding/updating scoped route(s): duplicate scoped route configuration '{}' found",
                        proto.name
                    ),
                ));
            }
            let (scope_name, scope) = resource::scope(&proto, &path)?;
            let dump = Arc::new(CompactJson::new(
                &d.dumps.get(i).cloned().unwrap_or_default(),
            ));
            fresh.push((scope_name, proto, scope, dump));
        }
        let Some(srds) = self.srds.get(name) else {
            return Ok(None);
        };
        // What stays: in delta, the scopes neither removed nor sent again.
        let mut next: BTreeMap<String, _> = match removed {
            None => BTreeMap::new(),
            Some(gone) => srds
                .scopes
                .iter()
                .filter(|(n, _)| !gone.contains(n) && !names.contains(*n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        };
        let mut by_key: HashMap<Vec<String>, String> = next
            .iter()
            .map(|(n, (_, s, _))| (s.key.clone(), n.clone()))
            .collect();
        for (i, (scope_name, proto, scope, dump)) in fresh.into_iter().enumerate() {
            if let Some(first) = by_key.insert(scope.key.clone(), scope_name.clone()) {
                return Err(ConfigError::new(
                    format!("resources[{i}].key"),
                    format!(
                        "Error adding/updating scoped route(s): scope key conflict found, first scope is '{first}', second scope is '{scope_name}'"
                    ),
                ));
            }
            next.insert(scope_name, (proto, scope, dump));
        }
        Ok(Some(next))
    }

    fn apply_eds(&mut self, service: &str, d: &Discovery) -> Result<(), ConfigError> {
        if d.resources.is_empty() {
            // An empty response leaves the cluster without hosts.
            if let Some(eds) = self.eds.get_mut(service) {
                eds.hosts = Some(Version {
                    proto: endpoint_pb::ClusterLoadAssignment {
                        cluster_name: service.to_string(),
                        ..Default::default()
                    },
                    model: Vec::new(),
                    dump: now_dumped(
                        service,
                        serde_json::json!({"cluster_name": service}),
                        &d.version_info,
                    ),
                });
            }
            return Ok(());
        }
        let proto: endpoint_pb::ClusterLoadAssignment = the_one(
            d,
            (type_url::ENDPOINT, "EDS", "cluster"),
            ("cluster_name", service),
            |e: &endpoint_pb::ClusterLoadAssignment| &e.cluster_name,
        )?;
        let hosts = resource::endpoints(&proto, "resources[0]")?;
        // Active health checks run on the main thread, which reaches no internal listener.
        if let Some(i) = hosts.iter().position(|h| h.internal.is_some()) {
            let checked = self.clusters.values().any(|slot| {
                slot.active.iter().chain(slot.warming.iter()).any(|v| {
                    v.model.health_check.is_some()
                        && v.model
                            .eds
                            .as_ref()
                            .is_some_and(|e| e.service_name == service)
                })
            });
            if checked {
                return Err(ConfigError::new(
                    format!("resources[0].endpoints: host {i}"),
                    "unsupported: an internal address (envoy_internal_address) in a cluster \
                     with active health checks",
                ));
            }
        }
        let Some(eds) = self.eds.get_mut(service) else {
            return Ok(());
        };
        if eds.hosts.as_ref().is_some_and(|h| h.proto == proto) {
            return Ok(());
        }
        eds.hosts = Some(Version {
            proto,
            model: hosts,
            dump: now_dumped(
                service,
                d.dumps.first().cloned().unwrap_or_default(),
                &d.version_info,
            ),
        });
        Ok(())
    }

    /// The secrets in force, for translation.
    fn secret_values(&self) -> Secrets {
        self.secrets
            .iter()
            .filter_map(|(n, s)| s.value.as_ref().map(|v| (n.clone(), v.proto.clone())))
            .collect()
    }

    /// Subscribes to the SDS secrets a resource names (a secret named without `sds_config` is a
    /// static one) and reads each new one now, so the resource can be translated with them.
    fn follow_secrets(
        &mut self,
        refs: &[(
            String,
            Option<envoy_types::pb::envoy::config::core::v3::ConfigSource>,
        )],
        path: &str,
    ) -> Result<bool, ConfigError> {
        let mut fresh = Vec::new();
        for (name, source) in refs {
            let Some(source) = source else { continue };
            if self
                .secrets
                .get(name)
                .is_some_and(|s| s.sub.is_some() || s.value.is_some())
            {
                continue;
            }
            let source = crate::config::translate_config_source(
                source,
                &format!("{path} (sds_config of secret '{name}')"),
            )?;
            self.secrets.insert(
                name.clone(),
                SecretSlot {
                    sub: Some(Subscription::new(
                        source.clone(),
                        format!("sds.{name}."),
                        &self.main,
                    )),
                    value: None,
                },
            );
            fresh.push(source);
        }
        let added = !fresh.is_empty();
        self.follow_sources(fresh);
        Ok(added)
    }

    /// SDS subscriptions no listener or cluster names any more are dropped.
    fn sync_sds(&mut self) {
        let mut wanted = HashSet::new();
        for slot in self.listeners.values() {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                wanted.extend(
                    secret_refs(&listener_tls(&v.proto))
                        .into_iter()
                        .map(|r| r.0),
                );
            }
        }
        for slot in self.clusters.values() {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                wanted.extend(secret_refs(&cluster_tls(&v.proto)).into_iter().map(|r| r.0));
            }
        }
        self.secrets
            .retain(|n, s| s.sub.is_none() || wanted.contains(n));
    }

    /// A secret from SDS. Listeners and clusters that use it have their TLS rebuilt with it;
    /// new handshakes take it while they and their connections stay (rotation). A secret that
    /// does not build is refused and the previous one stays.
    fn apply_sds(&mut self, name: &str, d: &Discovery) -> Result<(), ConfigError> {
        let proto: tls_pb::Secret = the_one(
            d,
            (type_url::SECRET, "SDS", "secret"),
            ("name", name),
            |s: &tls_pb::Secret| &s.name,
        )?;
        let Some(slot) = self.secrets.get_mut(name) else {
            return Ok(());
        };
        if slot.value.as_ref().is_some_and(|v| v.proto == proto) {
            return Ok(());
        }
        let json = redacted(d.dumps.first().cloned().unwrap_or_default(), &proto);
        let previous = slot.value.replace(Version {
            proto,
            model: (),
            dump: now_dumped(name, json, &d.version_info),
        });
        if let Err(e) = self.rotate(name) {
            if let Some(slot) = self.secrets.get_mut(name) {
                slot.value = previous;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Rebuilds the TLS of every listener and cluster that uses secret `name` and swaps it into
    /// the versions in force. Either all build or nothing changes.
    fn rotate(&mut self, name: &str) -> Result<(), ConfigError> {
        let secrets = self.secret_values();
        let clusters = self.cluster_names();
        let uses = |refs: Vec<(
            String,
            Option<envoy_types::pb::envoy::config::core::v3::ConfigSource>,
        )>| { refs.iter().any(|(n, _)| n == name) };
        let mut listeners = Vec::new();
        for (lname, slot) in &self.listeners {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                if uses(secret_refs(&listener_tls(&v.proto))) {
                    let path = format!("listener '{lname}'");
                    let fresh = resource::listener(&v.proto, &path, &clusters, &secrets)?;
                    listeners.push((v.model.clone(), fresh));
                }
            }
        }
        let mut built = Vec::new();
        for (cname, slot) in &self.clusters {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                if uses(secret_refs(&cluster_tls(&v.proto))) {
                    let fresh =
                        resource::cluster(&v.proto, &format!("cluster '{cname}'"), &secrets)?;
                    built.push((v.model.clone(), fresh));
                }
            }
        }
        // Everything is built before anything is swapped in.
        let tls_error =
            |what: String, e: crate::tls::TlsError| ConfigError::new(what, e.to_string());
        let mut servers = Vec::new();
        for (old, fresh) in &listeners {
            for (oc, nc) in chains_of(old).zip(chains_of(fresh)) {
                if let (Some(o), Some(n)) = (&oc.tls, &nc.tls) {
                    let t = crate::tls::transport::build_server(n).map_err(|e| {
                        tls_error(format!("listener '{}' chain '{}'", old.name, oc.name), e)
                    })?;
                    servers.push((o.clone(), t));
                }
            }
        }
        let mut clients = Vec::new();
        for (old, fresh) in &built {
            let all = |c: &model::Cluster| {
                let matches: Vec<_> = c.socket_matches.iter().map(|m| m.tls.clone()).collect();
                std::iter::once(c.tls.clone())
                    .chain(matches)
                    .collect::<Vec<_>>()
            };
            for (o, n) in all(old).into_iter().zip(all(fresh)) {
                if let (Some(o), Some(n)) = (o, n) {
                    let t = crate::tls::transport::build_client(&n)
                        .map_err(|e| tls_error(format!("cluster '{}'", old.name), e))?;
                    clients.push((o, t));
                }
            }
        }
        for (o, t) in servers {
            crate::tls::transport::rotate_server(&o, t);
        }
        for (o, t) in clients {
            crate::tls::transport::rotate_client(&o, t);
        }
        tracing::info!(secret = %name, "secret rotated");
        Ok(())
    }

    /// SRDS subscriptions follow the listeners, as RDS ones do: one per `scoped_routes.name`
    /// a listener (active or warming) uses.
    fn sync_srds(&mut self) {
        let mut wanted: BTreeMap<String, (ConfigSource, ConfigSource, String)> = BTreeMap::new();
        for slot in self.listeners.values() {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                for (name, source, rds_source, prefix) in srds_of(&v.model) {
                    wanted.entry(name).or_insert((source, rds_source, prefix));
                }
            }
        }
        for (_, used) in &self.draining_srds {
            for (name, source, rds_source, prefix) in used {
                wanted.entry(name.clone()).or_insert((
                    source.clone(),
                    rds_source.clone(),
                    prefix.clone(),
                ));
            }
        }
        let gone: Vec<String> = self
            .srds
            .iter()
            .filter(|(n, _)| !wanted.contains_key(*n))
            .map(|(_, r)| r.sub.scope.clone())
            .collect();
        self.pending_prune.extend(gone);
        self.srds.retain(|n, _| wanted.contains_key(n));
        type Peer = (
            ConfigSource,
            BTreeMap<String, SrdsScope>,
            Option<(String, SystemTime)>,
            String,
        );
        let peers: Vec<Peer> = self
            .srds
            .values()
            .filter(|s| s.sub.ready && s.accepted.is_some())
            .map(|s| {
                (
                    s.sub.source.clone(),
                    s.scopes.clone(),
                    s.accepted.clone(),
                    s.sub.version.clone(),
                )
            })
            .collect();
        let mut fresh = Vec::new();
        for (name, (source, rds_source, prefix)) in wanted {
            if let std::collections::btree_map::Entry::Vacant(e) = self.srds.entry(name) {
                let scope = format!("http.{prefix}.scoped_rds.{}.", e.key());
                self.pending_prune.retain(|p| *p != scope);
                self.main.counter(&format!("{scope}config_reload"));
                for g in ["all_scopes", "active_scopes", "on_demand_scopes"] {
                    self.main.gauge(&format!("{scope}{g}"));
                }
                let mut srds = Srds {
                    sub: Subscription::new(source.clone(), scope, &self.main),
                    rds_source,
                    prefix,
                    scopes: BTreeMap::new(),
                    accepted: None,
                };
                // The stream's wildcard interest is already answered: a second subscription
                // on it starts from what the first has, as Envoy's shared cache gives it.
                if let Some(other) = peers.iter().find(|(src, ..)| {
                    *src == source && !matches!(source.kind, SourceKind::File { .. })
                }) {
                    srds.scopes = other.1.clone();
                    srds.accepted = other.2.clone();
                    srds.sub.ready = true;
                    srds.sub.version = other.3.clone();
                }
                e.insert(srds);
                fresh.push(source);
            }
        }
        self.follow_sources(fresh);
    }

    /// The route configuration names the scopes of SRDS subscriptions use (on-demand ones
    /// are never fetched), with their source and stat prefix.
    fn srds_routes(&self) -> Vec<RdsUse> {
        let mut out = Vec::new();
        for s in self.srds.values() {
            for (_, scope, _) in s.scopes.values() {
                if let crate::router::scoped::ScopeRoute::Rds(n) = &scope.route {
                    out.push((n.clone(), s.rds_source.clone(), s.prefix.clone()));
                }
            }
        }
        out
    }

    /// RDS subscriptions follow the listeners: one per route configuration name a listener
    /// (active or warming) uses, directly or through the scopes of its SRDS; a new one is
    /// read at once, an unused one is dropped.
    fn sync_rds(&mut self) {
        self.sync_srds();
        let mut wanted: BTreeMap<String, (ConfigSource, String)> = BTreeMap::new();
        for (name, source, prefix) in self.srds_routes() {
            wanted.entry(name).or_insert((source, prefix));
        }
        for slot in self.listeners.values() {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                for (name, source, prefix) in rds_of(&v.model) {
                    wanted.entry(name).or_insert((source, prefix));
                }
            }
        }
        for (_, used) in &self.draining_rds {
            for (name, source, prefix) in used {
                wanted
                    .entry(name.clone())
                    .or_insert((source.clone(), prefix.clone()));
            }
        }
        // A subscription nothing uses any more goes, and its stats with it, as in Envoy.
        let gone: Vec<String> = self
            .rds
            .iter()
            .filter(|(n, _)| !wanted.contains_key(*n))
            .map(|(_, r)| r.sub.scope.clone())
            .collect();
        self.pending_prune.extend(gone);
        self.rds.retain(|n, _| wanted.contains_key(n));
        let mut fresh = Vec::new();
        for (name, (source, prefix)) in wanted {
            if let std::collections::btree_map::Entry::Vacant(e) = self.rds.entry(name) {
                let scope = format!("http.{prefix}.rds.{}.", e.key());
                self.pending_prune.retain(|p| *p != scope);
                e.insert(Rds {
                    sub: Subscription::new(source.clone(), scope, &self.main),
                    table: None,
                });
                fresh.push(source);
            }
        }
        self.follow_sources(fresh);
    }

    /// EDS subscriptions follow the clusters, as [`Self::sync_rds`] does the listeners.
    fn sync_eds(&mut self) {
        let mut wanted: BTreeMap<String, (ConfigSource, String)> = BTreeMap::new();
        for slot in self.clusters.values() {
            for v in slot.active.iter().chain(slot.warming.iter()) {
                if let Some(e) = &v.model.eds {
                    wanted
                        .entry(e.service_name.clone())
                        .or_insert((e.source.clone(), v.model.stat_name().to_string()));
                }
            }
        }
        self.eds.retain(|n, _| wanted.contains_key(n));
        let mut fresh = Vec::new();
        for (service, (source, cluster)) in wanted {
            if let std::collections::btree_map::Entry::Vacant(e) = self.eds.entry(service) {
                e.insert(Eds {
                    sub: Subscription::new(
                        source.clone(),
                        format!("cluster.{cluster}."),
                        &self.main,
                    ),
                    hosts: None,
                });
                fresh.push(source);
            }
        }
        self.follow_sources(fresh);
    }

    /// Starts watching new sources and reads each once; watches no longer used stop.
    fn follow_sources(&mut self, fresh: Vec<ConfigSource>) {
        let used: HashSet<ConfigSource> = self
            .lds
            .iter()
            .chain(self.cds.iter())
            .chain(self.rds.values().map(|r| &r.sub))
            .chain(self.srds.values().map(|r| &r.sub))
            .chain(self.eds.values().map(|e| &e.sub))
            .chain(self.secrets.values().filter_map(|s| s.sub.as_ref()))
            .map(|s| s.source.clone())
            .collect();
        self.watchers.retain(&used);
        let mut done = HashSet::new();
        for src in fresh {
            if done.insert(src.clone()) {
                self.watchers.watch(&src);
                self.refresh_source(&src);
            }
        }
    }

    /// Warming versions whose dependencies are ready go into force.
    fn promote(&mut self) {
        // DNS clusters, new ones among them, resolve before they can go into force.
        self.dns.sync(
            self.clusters
                .values()
                .flat_map(|s| s.active.iter().chain(s.warming.iter()))
                .map(|v| &v.model),
        );
        let rds_ready = |name: &str| self.rds.get(name).is_some_and(|r| r.sub.ready);
        // A listener with SRDS waits for its first scopes and for the route configurations
        // of those (not on demand), as Envoy's init manager does.
        let srds_ready = |name: &str| {
            self.srds.get(name).is_some_and(|s| {
                s.sub.ready
                    && s.scopes.values().all(|(_, scope, _)| match &scope.route {
                        crate::router::scoped::ScopeRoute::Rds(n) => rds_ready(n),
                        _ => true,
                    })
            })
        };
        let secrets = &self.secrets;
        let ends = Instant::now() + self.drain_time;
        for (name, slot) in self.listeners.iter_mut() {
            let ready = slot.warming.as_ref().is_some_and(|w| {
                rds_of(&w.model).iter().all(|(n, _, _)| rds_ready(n))
                    && srds_of(&w.model).iter().all(|(n, ..)| srds_ready(n))
                    && secrets_ready(secrets, &secret_refs(&listener_tls(&w.proto)))
            });
            if !ready {
                continue;
            }
            let next = slot.warming.take();
            if let (Some(old), Some(new)) = (&slot.active, &next) {
                self.draining_rds.push((ends, rds_of(&old.model)));
                self.draining_srds.push((ends, srds_of(&old.model)));
                // What drains: the whole old listener, or in place only its chains that the
                // new version did not keep.
                if self.in_place.remove(name) {
                    let kept = |c: &Arc<model::FilterChain>| {
                        chains_of(&new.model).any(|n| Arc::ptr_eq(n, c))
                    };
                    let gone = chains_of(&old.model).filter(|c| !kept(c)).count();
                    self.draining_chains.extend(std::iter::repeat_n(ends, gone));
                } else {
                    self.draining_listeners.push(ends);
                }
            }
            slot.active = next;
        }
        let eds_ready = |service: &str| self.eds.get(service).is_some_and(|e| e.sub.ready);
        // Health checks run on the hosts of active and warming versions alike.
        let checked: Vec<(Arc<model::Cluster>, Vec<model::Host>)> = self
            .clusters
            .values()
            .flat_map(|s| s.active.iter().chain(s.warming.iter()))
            .filter(|v| v.model.health_check.is_some())
            .map(|v| (v.model.clone(), self.discovered_hosts(&v.model)))
            .collect();
        self.health
            .sync(checked.iter().map(|(c, h)| (c, h.clone())));
        let health = &self.health;
        let dns = &self.dns;
        for slot in self.clusters.values_mut() {
            let ready = slot.warming.as_ref().is_some_and(|w| {
                w.model
                    .eds
                    .as_ref()
                    .is_none_or(|e| eds_ready(&e.service_name))
                    && (w.model.dns.is_none() || dns.ready(&w.model))
                    && secrets_ready(secrets, &secret_refs(&cluster_tls(&w.proto)))
                    && checked
                        .iter()
                        .find(|(c, _)| Arc::ptr_eq(c, &w.model))
                        .is_none_or(|(c, hosts)| health.ready(c, hosts))
            });
            if ready {
                slot.active = slot.warming.take();
            }
        }
    }

    /// A cluster version's hosts as discovery gives them: its EDS resource's, its DNS
    /// answers', or its `load_assignment`'s.
    fn discovered_hosts(&self, model: &Arc<model::Cluster>) -> Vec<model::Host> {
        match &model.eds {
            Some(e) => self
                .eds
                .get(&e.service_name)
                .and_then(|s| s.hosts.as_ref())
                .map(|h| h.model.clone())
                .unwrap_or_default(),
            None if model.dns.is_some() => self.dns.hosts(model),
            None => model.hosts.clone(),
        }
    }

    /// Shared cluster state for the active clusters: kept when neither the cluster nor its
    /// endpoints changed, so workers keep their pools.
    fn cluster_infos(&mut self) -> HashMap<String, Arc<ClusterInfo>> {
        let mut next = HashMap::new();
        for (name, slot) in &self.clusters {
            let Some(v) = &slot.active else { continue };
            let discovered = self.discovered_hosts(&v.model);
            // Until its first checks are done a cluster is warming: its hosts go as they are,
            // neither merged nor counted as updates (Envoy follows a cluster's updates from its
            // initialization on).
            let warm = self.health.ready(&v.model, &discovered);
            let hosts = self
                .outlier
                .apply(&v.model, self.health.apply(&v.model, discovered));
            let prev = self
                .infos
                .get(name)
                .filter(|p| Arc::ptr_eq(&p.config, &v.model))
                .filter(|_| self.warmed.contains(name));
            if prev.is_none() {
                // A new or changed cluster starts without merges (Envoy drops its pending
                // updates).
                self.merges.retain(|(n, _), _| n != name);
                if warm {
                    self.warmed.insert(name.clone());
                } else {
                    self.warmed.remove(name);
                }
            }
            // New weights: the workers rebuild the cluster's balancer (keeping its pools).
            let reweighed = self.weights_changed.remove(name);
            let info = match prev {
                Some(p) => {
                    let now_hosts = p.pending.as_ref().unwrap_or(&p.hosts);
                    let held = self
                        .merges
                        .iter()
                        .any(|((n, _), w)| n == name && w.due.is_some());
                    if *now_hosts == hosts && (held == p.pending.is_some()) && !reweighed {
                        p.clone()
                    } else {
                        let workers = merge::hosts(
                            &mut self.merges,
                            &self.main,
                            name,
                            v.model.update_merge_window,
                            (&p.hosts, now_hosts),
                            &hosts,
                        );
                        if *now_hosts != hosts {
                            membership(&self.main, v.model.stat_name(), Some(now_hosts), &hosts);
                        }
                        let pending = (workers != hosts).then(|| hosts.clone());
                        if workers == p.hosts && pending == p.pending && !reweighed {
                            p.clone()
                        } else {
                            let mut info = ClusterInfo::with_hosts(
                                v.model.clone(),
                                workers,
                                Some(p),
                                &self.main,
                            );
                            info.pending = pending;
                            Arc::new(info)
                        }
                    }
                }
                None => {
                    let before = self
                        .infos
                        .get(name)
                        .map(|p| &p.pending.as_ref().unwrap_or(&p.hosts)[..]);
                    membership(&self.main, v.model.stat_name(), before, &hosts);
                    Arc::new(ClusterInfo::with_hosts(
                        v.model.clone(),
                        hosts,
                        self.infos.get(name).map(|p| &**p),
                        &self.main,
                    ))
                }
            };
            if let Some(cfg) = &v.model.client_side_weights {
                self.weights_due
                    .entry(name.clone())
                    .or_insert_with(|| Instant::now() + cfg.weight_update_period);
                // New hosts get the median weight at once, as Envoy's.
                if !self.infos.get(name).is_some_and(|p| Arc::ptr_eq(p, &info)) {
                    client_weights(&info, cfg);
                }
            }
            next.insert(name.clone(), info);
        }
        self.weights_due.retain(|n, _| {
            next.get(n)
                .is_some_and(|i| i.config.client_side_weights.is_some())
        });
        self.outlier.sync(&next);
        self.warmed.retain(|n| next.contains_key(n));
        self.merges.retain(|(n, _), _| next.contains_key(n));
        self.infos = next.clone();
        next
    }

    /// Each active cluster's endpoints as `/config_dump?include_eds` shows them: EDS ones from
    /// their assignment, the others from their `load_assignment`; (static, dump).
    fn endpoint_dumps(&self) -> Vec<(bool, Dumped)> {
        let mut out = Vec::new();
        for (name, slot) in &self.clusters {
            let Some(v) = &slot.active else { continue };
            let dump = match &v.model.eds {
                Some(e) => self
                    .eds
                    .get(&e.service_name)
                    .and_then(|s| s.hosts.as_ref())
                    .map(|h| h.dump.clone()),
                None => v.dump.json.value().get("load_assignment").map(|la| {
                    let mut la = la.clone();
                    if la.get("cluster_name").is_none() {
                        la["cluster_name"] = serde_json::Value::String(name.clone());
                    }
                    Dumped {
                        name: name.clone(),
                        json: Arc::new(CompactJson::new(&la)),
                        version: v.dump.version.clone(),
                        last_updated: v.dump.last_updated,
                    }
                }),
            };
            out.extend(dump.map(|d| (slot.is_static, d)));
        }
        out
    }

    fn snapshot(&mut self) -> Snapshot {
        let clusters = self.cluster_infos();
        let listeners = self
            .listeners
            .values()
            .filter_map(|s| s.active.as_ref().map(|v| v.model.clone()))
            .collect();
        let routes: HashMap<String, Arc<RouteTable>> = self
            .rds
            .iter()
            .filter_map(|(n, r)| r.table.as_ref().map(|t| (n.clone(), t.model.clone())))
            .collect();
        let scoped = self
            .srds
            .iter()
            .map(|(n, s)| {
                use crate::router::scoped::ScopeRoute;
                let tables = s
                    .scopes
                    .values()
                    .filter_map(|(_, scope, _)| {
                        let table = match &scope.route {
                            ScopeRoute::Rds(r) => routes.get(r)?.clone(),
                            ScopeRoute::Inline(t) => t.clone(),
                            ScopeRoute::OnDemand(_) => return None,
                        };
                        Some((scope.key.clone(), table))
                    })
                    .collect();
                (n.clone(), Arc::new(tables))
            })
            .collect();
        let dump = Dump {
            listeners: self.listeners.values().map(Slot::dumped).collect(),
            clusters: self.clusters.values().map(Slot::dumped).collect(),
            routes: self
                .rds
                .values()
                .filter_map(|r| r.table.as_ref().map(|t| t.dump.clone()))
                .collect(),
            scoped: self
                .srds
                .iter()
                .filter_map(|(n, s)| {
                    let (version, at) = s.accepted.as_ref()?;
                    let scopes = s
                        .scopes
                        .iter()
                        .map(|(name, (_, _, json))| Dumped {
                            name: name.clone(),
                            json: json.clone(),
                            version: version.clone(),
                            last_updated: *at,
                        })
                        .collect();
                    Some((n.clone(), scopes))
                })
                .collect(),
            endpoints: self.endpoint_dumps(),
            secrets: self
                .secrets
                .values()
                .filter_map(|s| s.value.as_ref().map(|v| (s.sub.is_none(), v.dump.clone())))
                .collect(),
            warming_secrets: self
                .secrets
                .iter()
                .filter(|(_, s)| s.value.is_none())
                .filter_map(|(name, s)| {
                    let sub = s.sub.as_ref()?;
                    let json = serde_json::json!({"@type": type_url::SECRET, "name": name});
                    Some(Dumped {
                        name: name.clone(),
                        json: Arc::new(CompactJson::new(&json)),
                        version: "uninitialized".into(),
                        last_updated: SystemTime::now()
                            .checked_sub(sub.created.elapsed())
                            .unwrap_or_else(SystemTime::now),
                    })
                })
                .collect(),
            lds_version: self
                .lds
                .as_ref()
                .map(|s| s.dump_version.clone())
                .unwrap_or_default(),
            cds_version: self
                .cds
                .as_ref()
                .map(|s| s.dump_version.clone())
                .unwrap_or_default(),
        };
        Snapshot {
            listeners,
            clusters,
            routes,
            scoped,
            dump,
        }
    }

    /// Publishes the configuration in force to the admin server and, once they run, to the
    /// workers, with sockets bound for listeners that need new ones. A listener whose address
    /// cannot be bound is dropped (`listener_create_failure`).
    pub fn publish(&mut self) {
        let mut snapshot = self.snapshot();
        attach_tls(&snapshot);
        if !self.workers.is_empty() {
            let mut sockets: Vec<HashMap<String, Vec<(SocketAddr, std::net::TcpListener)>>> =
                (0..self.workers.len()).map(|_| HashMap::new()).collect();
            let mut failed = HashSet::new();
            for l in &snapshot.listeners {
                let prev = self.running.get(&l.name);
                if prev.is_some_and(|p| Arc::ptr_eq(p, l)) {
                    continue;
                }
                // Addresses the previous version has keep its sockets; the others get new ones.
                let kept = prev.map(|p| crate::listener::kept_addresses(p, l));
                let fresh: Vec<SocketAddr> = l
                    .addresses()
                    .filter(|a| !kept.as_ref().is_some_and(|k| k.contains(a)))
                    .collect();
                if l.bind_to_port && !fresh.is_empty() {
                    match bind_all(l, &fresh, self.workers.len()) {
                        Ok(socks) => {
                            for (per_worker, s) in sockets.iter_mut().zip(socks) {
                                per_worker.insert(l.name.clone(), s);
                            }
                        }
                        Err(e) => {
                            tracing::error!(listener = %l.name, address = %l.address, error = %e, "cannot bind listener");
                            self.main
                                .counter("listener_manager.listener_create_failure")
                                .inc();
                            failed.insert(l.name.clone());
                            continue;
                        }
                    }
                }
                self.main
                    .counter("listener_manager.listener_create_success")
                    .add(self.workers.len() as u64);
            }
            if !failed.is_empty() {
                snapshot.listeners.retain(|l| !failed.contains(&l.name));
                for name in &failed {
                    self.listeners.remove(name);
                }
            }
            let snapshot = Arc::new(snapshot);
            for (tx, socks) in self.workers.iter().zip(sockets) {
                let _ = tx.send(WorkerUpdate::Config {
                    snapshot: snapshot.clone(),
                    sockets: socks,
                    drain_time: self.drain_time,
                });
            }
            self.running = snapshot
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.clone()))
                .collect();
            self.published.store(snapshot);
        } else {
            self.published.store(Arc::new(snapshot));
        }
        // The workers start once nothing warms any more (or they already run).
        self.initialized |= !self.workers.is_empty() || !self.initializing();
        self.sync_pause();
        self.update_gauges();
        self.sync_xds();
        // Reading a configuration leaves its parse trees' memory free but held by the
        // allocator; give it back, at most every ten seconds (it walks the heap).
        if self
            .last_trim
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            crate::overload::monitors::release_free_memory();
            self.last_trim = Some(std::time::Instant::now());
        }
    }

    /// Hands the workers over; binds every listener (a static one that cannot be bound fails
    /// start-up, as in Envoy) and sends them the configuration.
    pub fn attach_workers(
        &mut self,
        workers: Vec<mpsc::UnboundedSender<WorkerUpdate>>,
    ) -> Result<(), String> {
        for slot in self.listeners.values() {
            if let (true, Some(v)) = (slot.is_static, &slot.active) {
                let l = &v.model;
                if l.bind_to_port {
                    // Probe now so a port in use fails start-up with its name.
                    let all: Vec<SocketAddr> = l.addresses().collect();
                    bind_all(l, &all, 1).map_err(|e| {
                        format!("listener '{}': cannot bind {}: {e}", l.name, l.address)
                    })?;
                }
            }
        }
        self.workers = workers;
        self.publish();
        Ok(())
    }

    /// Drains listeners (`/drain_listeners`, shutdown): the workers stop accepting on them and
    /// ask their connections to close.
    pub fn drain_listeners(&self, draining: Draining, inbound_only: bool) {
        for tx in &self.workers {
            let _ = tx.send(WorkerUpdate::Drain {
                draining,
                inbound_only,
            });
        }
    }

    /// Starts the process's shutdown drain with this deadline.
    pub fn shutdown(&self, deadline: Instant) {
        self.drain_listeners(
            Draining {
                kind: DrainKind::Shutdown,
                started: Instant::now(),
                deadline,
                accepting: false,
                asks_close: true,
                force_close: true,
            },
            false,
        );
    }

    fn update_gauges(&self) {
        let m = &self.main;
        // As Envoy's listener manager: before the workers start, a listener goes straight
        // into the active list (the server's initialization waits for it instead).
        let started = self.initialized;
        let active = self
            .listeners
            .values()
            .filter(|s| s.active.is_some() || (!started && s.warming.is_some()))
            .count();
        let warming = self
            .listeners
            .values()
            .filter(|s| started && s.warming.is_some())
            .count();
        m.gauge("listener_manager.total_listeners_active")
            .set(active as i64);
        m.gauge("listener_manager.total_listeners_warming")
            .set(warming as i64);
        m.gauge("listener_manager.total_listeners_draining")
            .set(self.draining_listeners.len() as i64);
        m.gauge("listener_manager.total_filter_chains_draining")
            .set(self.draining_chains.len() as i64);
        let active = self
            .clusters
            .values()
            .filter(|s| s.active.is_some())
            .count();
        let warming = self
            .clusters
            .values()
            .filter(|s| s.warming.is_some())
            .count();
        m.gauge("cluster_manager.active_clusters")
            .set(active as i64);
        m.gauge("cluster_manager.warming_clusters")
            .set(warming as i64);
    }
}

/// `cluster.<name>.membership_*`: the hosts in force and, when the set of hosts changed,
/// `membership_change`.
/// Client-side weighted round robin's weights for a cluster's hosts, priority by priority
/// (Envoy's `updateWeightsOnHosts`). True when one changed.
fn client_weights(info: &ClusterInfo, cfg: &model::ClientSideWeights) -> bool {
    let mut priorities: Vec<u32> = info.hosts.iter().map(|h| h.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let now = Instant::now();
    let mut changed = false;
    for p in priorities {
        let hosts: Vec<&crate::upstream::orca::HostWeight> = info
            .hosts
            .iter()
            .zip(&info.host_stats)
            .filter(|(h, _)| h.priority == p)
            .map(|(_, s)| &s.weight)
            .collect();
        changed |= crate::upstream::orca::update(&hosts, cfg, now);
    }
    changed
}

fn membership(main: &Shard, name: &str, before: Option<&[model::Host]>, after: &[model::Host]) {
    let g = |n: &str| main.gauge(&format!("cluster.{name}.{n}"));
    g("membership_total").set(after.len() as i64);
    g("membership_healthy").set(
        after
            .iter()
            .filter(|h| h.usable() && !h.degraded_now())
            .count() as i64,
    );
    g("membership_degraded").set(after.iter().filter(|h| h.degraded).count() as i64);
    g("membership_excluded").set(after.iter().filter(|h| h.excluded_now()).count() as i64);
    let change = main.counter(&format!("cluster.{name}.membership_change"));
    let same = |a: &[model::Host], b: &[model::Host]| {
        a.len() == b.len() && a.iter().all(|h| b.iter().any(|o| o.address == h.address))
    };
    let unchanged = match before {
        Some(b) => same(b, after),
        None => after.is_empty(),
    };
    if !unchanged {
        change.inc();
    }
}

/// Which subscription a file update is for.
#[derive(Debug, Clone)]
enum Kind {
    Lds,
    Cds,
    Rds(String),
    Srds(String),
    Eds(String),
    Sds(String),
    Rtds(String),
}

/// An SRDS subscription a connection manager uses: its name, source, the source of its
/// scopes' route configurations and the HCM's stat prefix.
type SrdsUse = (String, ConfigSource, ConfigSource, String);

/// The SRDS subscriptions a listener's HTTP connection managers use.
fn srds_of(l: &model::Listener) -> Vec<SrdsUse> {
    let mut out = Vec::new();
    for c in chains_of(l) {
        for f in &c.filters {
            if let model::NetworkFilter::HttpConnectionManager(h) = f {
                if let model::RouteSource::ScopedRds(s) = &h.routes {
                    out.push((
                        s.name.clone(),
                        s.source.clone(),
                        s.rds_source.clone(),
                        h.stat_prefix.clone(),
                    ));
                }
            }
        }
    }
    out
}

/// An RDS route configuration an HTTP connection manager uses: its name, source and the
/// HCM's stat prefix.
type RdsUse = (String, ConfigSource, String);

/// The RDS route configurations a listener's HTTP connection managers use, with their source
/// and the first HCM's stat prefix.
fn rds_of(l: &model::Listener) -> Vec<RdsUse> {
    let chains = l
        .filter_chains
        .iter()
        .map(|(_, c)| c)
        .chain(l.default_filter_chain.iter());
    let mut out = Vec::new();
    for c in chains {
        for f in &c.filters {
            if let model::NetworkFilter::HttpConnectionManager(h) = f {
                if let model::RouteSource::Rds { name, source } = &h.routes {
                    out.push((name.clone(), source.clone(), h.stat_prefix.clone()));
                }
            }
        }
    }
    out
}

/// The one resource an RDS, EDS or SDS response must hold, named `name` in its `field`, as
/// Envoy's subscriptions check it (`what` and `noun` word the error as Envoy does).
fn the_one<T: Message + Default>(
    d: &Discovery,
    (url, what, noun): (&str, &str, &str),
    (field, name): (&str, &str),
    name_of: impl Fn(&T) -> &str,
) -> Result<T, ConfigError> {
    if d.resources.len() != 1 {
        return Err(ConfigError::new(
            "resources",
            format!(
                "Unexpected {what} resource length: {} (expecting 1)",
                d.resources.len()
            ),
        ));
    }
    let proto: T = decode_any(&d.resources[0], url, "resources[0]")?;
    let got = name_of(&proto);
    if got != name {
        return Err(ConfigError::new(
            format!("resources[0].{field}"),
            format!("Unexpected {what} {noun} (expecting {name}): {got}"),
        ));
    }
    Ok(proto)
}

/// Decodes every resource of a listener or cluster response with its name; a resource of
/// another type or that does not decode refuses the whole response, as Envoy's decoding does.
/// A resource already refused by the field check keeps its index.
fn decode_all<T: Message + Default>(
    d: &Discovery,
    url: &str,
) -> Result<Vec<(usize, T)>, ConfigError> {
    let mut out = Vec::with_capacity(d.resources.len());
    for (i, any) in d.resources.iter().enumerate() {
        let path = format!("resources[{i}]");
        match decode_any::<T>(any, url, &path) {
            Ok(p) => out.push((i, p)),
            Err(e) => return Err(d.errors.get(&i).cloned().unwrap_or(e)),
        }
    }
    Ok(out)
}

/// The rejection of a listener or cluster update whose resources failed one by one, worded
/// as Envoy's: `Error adding/updating listener(s) a: why, b: why`.
fn failures(what: &str, errors: Vec<(String, ConfigError)>) -> Result<(), ConfigError> {
    if errors.is_empty() {
        return Ok(());
    }
    let message = if what == "listener" {
        // Envoy's LDS ends each failure with a newline; CDS joins them with commas.
        let list: String = errors
            .iter()
            .map(|(name, e)| format!("{name}: {e}\n"))
            .collect();
        format!("Error adding/updating listener(s) {list}")
    } else {
        let list: Vec<String> = errors
            .iter()
            .map(|(name, e)| format!("{name}: {e}"))
            .collect();
        format!("Error adding/updating {what}(s) {}", list.join(", "))
    };
    Err(ConfigError::new("", message))
}

/// A listener's filter chains, the default one included.
/// Builds, here on the main thread, the TLS each chain and cluster in `s` serves and connects
/// with, so no worker builds it (workers find it attached to the same settings). Translation
/// built each once already; a failure here means files changed since, and is the workers' to
/// report.
fn attach_tls(s: &Snapshot) {
    for l in &s.listeners {
        for c in chains_of(l) {
            if let Some(t) = &c.tls {
                let _ = crate::tls::transport::server(t);
            }
        }
    }
    for c in s.clusters.values() {
        let matches = c.config.socket_matches.iter().map(|m| &m.tls);
        for t in std::iter::once(&c.config.tls).chain(matches).flatten() {
            let _ = crate::tls::transport::client(t);
        }
    }
}

fn chains_of(l: &model::Listener) -> impl Iterator<Item = &Arc<model::FilterChain>> {
    l.filter_chains
        .iter()
        .map(|(_, c)| c)
        .chain(l.default_filter_chain.iter())
}

/// Envoy's in-place update: when a listener changes in nothing but its filter chains, the
/// chains whose configuration is the same are kept (the same `Arc`, so workers keep them and
/// their connections) and only the others drain. True when the update is such.
fn adopt_chains(
    cur: &Version<listener_pb::Listener, Arc<model::Listener>>,
    proto: &listener_pb::Listener,
    model: &mut model::Listener,
) -> bool {
    let strip = |l: &listener_pb::Listener| listener_pb::Listener {
        filter_chains: Vec::new(),
        default_filter_chain: None,
        ..l.clone()
    };
    if strip(&cur.proto) != strip(proto) {
        return false;
    }
    for (i, fc) in proto.filter_chains.iter().enumerate() {
        let old = cur.proto.filter_chains.iter().position(|o| o == fc);
        if let (Some(j), Some(slot)) = (old, model.filter_chains.get_mut(i)) {
            if let Some((_, c)) = cur.model.filter_chains.get(j) {
                slot.1 = c.clone();
            }
        }
    }
    if proto.default_filter_chain.is_some()
        && proto.default_filter_chain == cur.proto.default_filter_chain
    {
        model.default_filter_chain = cur.model.default_filter_chain.clone();
    }
    true
}

/// Binds a listener's sockets on `addresses` for `n` workers: for each worker, one
/// SO_REUSEPORT socket per address.
fn bind_all(
    l: &model::Listener,
    addresses: &[SocketAddr],
    n: usize,
) -> std::io::Result<Vec<Vec<(SocketAddr, std::net::TcpListener)>>> {
    (0..n)
        .map(|_| {
            addresses
                .iter()
                .map(|a| crate::listener::bind(l, *a).map(|s| (*a, s)))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod xds_tests;

/// The TLS contexts' common parts of a listener's filter chains.
fn listener_tls(l: &listener_pb::Listener) -> Vec<tls_pb::CommonTlsContext> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .filter_map(
            |fc| match fc.transport_socket.as_ref()?.config_type.as_ref()? {
                ConfigType::TypedConfig(any) => {
                    let ctx = tls_pb::DownstreamTlsContext::decode(any.value.as_slice()).ok()?;
                    (any.type_url.ends_with("DownstreamTlsContext"))
                        .then_some(ctx.common_tls_context)
                        .flatten()
                }
            },
        )
        .collect()
}

/// The TLS context's common part of a cluster (inside upstream PROXY protocol too).
fn cluster_tls(c: &cluster_pb::Cluster) -> Vec<tls_pb::CommonTlsContext> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    let mut sockets: Vec<_> = c
        .transport_socket_matches
        .iter()
        .map(|m| m.transport_socket.clone())
        .collect();
    sockets.push(c.transport_socket.clone());
    let mut out = Vec::new();
    for mut ts in sockets {
        while let Some(Some(ConfigType::TypedConfig(any))) = ts.take().map(|t| t.config_type) {
            if any.type_url.ends_with("UpstreamTlsContext") {
                if let Some(common) = tls_pb::UpstreamTlsContext::decode(any.value.as_slice())
                    .ok()
                    .and_then(|c| c.common_tls_context)
                {
                    out.push(common);
                }
            } else if any.type_url.ends_with("ProxyProtocolUpstreamTransport") {
                ts = ProxyProtocolUpstreamTransport::decode(any.value.as_slice())
                    .ok()
                    .and_then(|p| p.transport_socket);
            }
        }
    }
    out
}

/// Whether every SDS secret of `refs` has arrived, or its initial fetch ended (a rejected
/// first version or `initial_fetch_timeout`, after which, as in Envoy, the resource goes into
/// force and its handshakes fail).
fn secrets_ready(
    secrets: &BTreeMap<String, SecretSlot>,
    refs: &[(
        String,
        Option<envoy_types::pb::envoy::config::core::v3::ConfigSource>,
    )],
) -> bool {
    refs.iter().filter(|(_, src)| src.is_some()).all(|(n, _)| {
        secrets
            .get(n)
            .is_none_or(|s| s.value.is_some() || s.sub.as_ref().is_none_or(|sub| sub.ready))
    })
}

/// The secrets TLS contexts name, with their SDS source (none: a static secret).
fn secret_refs(
    contexts: &[tls_pb::CommonTlsContext],
) -> Vec<(
    String,
    Option<envoy_types::pb::envoy::config::core::v3::ConfigSource>,
)> {
    use tls_pb::common_tls_context::ValidationContextType;
    let mut out = Vec::new();
    for c in contexts {
        for s in &c.tls_certificate_sds_secret_configs {
            out.push((s.name.clone(), s.sds_config.clone()));
        }
        match &c.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                out.push((s.name.clone(), s.sds_config.clone()));
            }
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                if let Some(s) = &cv.validation_context_sds_secret_config {
                    out.push((s.name.clone(), s.sds_config.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

/// A secret's dump with its private key and password replaced, as Envoy's `/config_dump` shows
/// them.
fn redacted(mut json: serde_json::Value, s: &tls_pb::Secret) -> serde_json::Value {
    if json.get("tls_certificate").is_none() {
        if let Some(tls_pb::secret::Type::TlsCertificate(_)) = &s.r#type {
            json["tls_certificate"] = serde_json::json!({});
        }
    }
    if let Some(t) = json
        .get_mut("tls_certificate")
        .and_then(|t| t.as_object_mut())
    {
        for field in ["private_key", "password"] {
            if let Some(v) = t.get_mut(field).and_then(|v| v.as_object_mut()) {
                for (_, inner) in v.iter_mut() {
                    *inner = serde_json::Value::String("[redacted]".into());
                }
            }
        }
    }
    json
}
