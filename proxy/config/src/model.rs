//! skiff's own configuration model: validated, immutable, and shaped for the hot path. Built once
//! per configuration change by `translate`; workers only read it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::access_log::Format;
use crate::router::RouteConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// `node`.
    pub node: Node,
    /// `admin`, when it has an address.
    pub admin: Option<Admin>,
    /// `static_resources.listeners`.
    pub listeners: Vec<Arc<Listener>>,
    /// `static_resources.listeners` on UDP, each with its UDP proxy.
    pub udp_listeners: Vec<Arc<UdpListener>>,
    /// `static_resources.clusters`.
    pub clusters: Vec<Arc<Cluster>>,
    /// `dynamic_resources`: where listeners and clusters beyond the static ones come from.
    pub dynamic: DynamicResources,
    /// `overload_manager`.
    pub overload: Overload,
    /// `stats_config`.
    pub stats: StatsConfig,
    /// The address of each static cluster an xDS stream may use (its first endpoint).
    pub xds_targets: std::collections::BTreeMap<String, GrpcTarget>,
    /// `layered_runtime.layers`.
    pub runtime: Vec<crate::runtime::Layer>,
    /// `cluster_manager.local_cluster_name`: the cluster of this proxy's peers, whose
    /// localities zone-aware routing compares with each cluster's.
    pub local_cluster: Option<String>,
    /// `cluster_manager.outlier_detection.event_log_path`: a JSON line per ejection and
    /// return.
    pub outlier_event_log: Option<std::path::PathBuf>,
    /// The `envoy.bootstrap.internal_listener` extension's buffer in bytes (each direction of
    /// a connection to an internal listener holds at most this much); none: no extension, and
    /// no listener may be internal.
    pub internal_listener_buffer: Option<usize>,
}

/// `stats_config`: which stats exist and how the Prometheus output tags them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsConfig {
    /// `stats_matcher`; `None` keeps every stat.
    pub matcher: Option<Arc<crate::stats::StatsMatcher>>,
    /// `stats_tags` and `use_all_default_tags`.
    pub tagging: Arc<crate::stats::Tagging>,
    /// `histogram_bucket_settings`.
    pub buckets: Arc<crate::stats::HistogramBuckets>,
    /// The bootstrap's `stats_flush_interval`: how often histograms are merged (their interval
    /// values); `None` is Envoy's 5 s.
    pub flush_interval: Option<std::time::Duration>,
}

/// `dynamic_resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicResources {
    /// `lds_config`.
    pub lds: Option<ConfigSource>,
    /// `cds_config`.
    pub cds: Option<ConfigSource>,
    /// `ads_config`: the aggregated stream that `ads: {}` sources share.
    pub ads: Option<GrpcSource>,
}

/// A `ConfigSource` skiff can follow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigSource {
    /// Where the resources come from.
    pub kind: SourceKind,
    /// `initial_fetch_timeout` (default 15 s; none: wait for ever).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Where a `ConfigSource`'s resources come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// A file holding a `DiscoveryResponse` (YAML, or JSON), read again when a new file is
    /// moved into place, as Envoy's filesystem subscriptions do.
    File {
        /// `path_config_source.path` (or the legacy `path`).
        path: std::path::PathBuf,
        /// `path_config_source.watched_directory.path`: a move into this directory reloads
        /// `path` (for Kubernetes ConfigMaps, whose files are swapped through a symlink).
        watched_directory: Option<std::path::PathBuf>,
    },
    /// `ads: {}`: the bootstrap's `ads_config` stream.
    Ads,
    /// `api_config_source` with `api_type` GRPC or DELTA_GRPC (a stream of its own per
    /// type), or REST (polled).
    Grpc(GrpcSource),
}

impl ConfigSource {
    /// A file source (`path_config_source`).
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        ConfigSource {
            kind: SourceKind::File {
                path: path.into(),
                watched_directory: None,
            },
            initial_fetch_timeout: Some(Duration::from_secs(15)),
        }
    }

    /// What logs call this source: its file, or the xDS stream.
    pub fn describe(&self) -> String {
        match &self.kind {
            SourceKind::File { path, .. } => path.display().to_string(),
            SourceKind::Ads => "ads".into(),
            SourceKind::Grpc(g) => format!("grpc cluster '{}'", g.cluster),
        }
    }
}

/// An xDS gRPC stream: `ads_config`, or an `api_config_source` of `api_type` GRPC or
/// DELTA_GRPC, with its one `envoy_grpc` service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcSource {
    /// DELTA_GRPC (incremental) rather than GRPC (state of the world).
    pub delta: bool,
    /// `envoy_grpc.cluster_name`: a static cluster of the bootstrap (its address is in
    /// [`Bootstrap::xds_targets`]).
    pub cluster: String,
    /// `envoy_grpc.authority` (default: the cluster name).
    pub authority: String,
    /// `set_node_on_first_message_only`.
    pub node_on_first_message_only: bool,
    /// `grpc_services[].initial_metadata`: headers sent with the stream.
    pub initial_metadata: Vec<(String, String)>,
    /// `api_type: REST`: no stream; JSON requests polled over HTTP/1.1 to `cluster`
    /// (`cluster_names`).
    pub rest: Option<RestPolling>,
    /// `rate_limit_settings`: a token bucket that every request on the stream takes from.
    pub rate_limit: Option<XdsRateLimit>,
    /// `google_grpc`: the server is named by its `target_uri`, not by `cluster` (empty).
    pub google: Option<Box<GoogleGrpc>>,
}

/// A `google_grpc` service: where its `target_uri` leads and the TLS its channel credentials
/// ask for. Two are the same service when their target and credentials are.
#[derive(Debug, Clone)]
pub struct GoogleGrpc {
    /// `target_uri`, as given.
    pub target_uri: String,
    pub target: GrpcTarget,
    /// `channel_credentials.ssl_credentials` (none: plain, as without credentials or with
    /// `local_credentials`).
    pub ssl: Option<GoogleSsl>,
    /// The target and credentials in one text, for comparisons.
    pub key: String,
}

/// `ssl_credentials` as gRPC applies them: the server's chain must lead to `root_certs` and
/// name `host`; SNI is the host unless it is an address.
#[derive(Debug, Clone)]
pub struct GoogleSsl {
    /// `root_certs`.
    pub root_certs: crate::tls::DataSource,
    /// `cert_chain` and `private_key`.
    pub client: Option<crate::tls::CertificateConfig>,
    /// The target's host name or address.
    pub host: String,
}

impl GoogleSsl {
    /// The TLS settings of connections to the server.
    pub fn upstream_tls(&self) -> crate::tls::UpstreamTls {
        use crate::tls::{Params, SanMatcher, SanType, UpstreamTls, Validation};
        let ip = self.host.parse::<IpAddr>().is_ok();
        UpstreamTls {
            client_certificate: self.client.clone(),
            params: Params::default(),
            alpn: Vec::new(),
            validation: Some(Validation {
                trusted_ca: Some(self.root_certs.clone()),
                san_matchers: vec![SanMatcher {
                    san_type: if ip { SanType::IpAddress } else { SanType::Dns },
                    matcher: StringMatch {
                        kind: StringMatchKind::Exact(self.host.clone()),
                        ignore_case: !ip,
                    },
                }],
            }),
            sni: (!ip).then(|| self.host.clone()),
            check_sni: false,
            auto_host_sni: false,
            sni_replaces_sans: false,
            pending: false,
        }
    }
}

impl PartialEq for GoogleGrpc {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for GoogleGrpc {}

impl std::hash::Hash for GoogleGrpc {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for GoogleGrpc {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GoogleGrpc {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// `ApiConfigSource.rate_limit_settings`, as Envoy's token bucket: it starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct XdsRateLimit {
    /// `max_tokens` (default 100).
    pub max_tokens: u32,
    /// The time one token takes to come back: 1 / `fill_rate` (default 10 per second).
    pub refill: Duration,
}

/// How a REST xDS source is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RestPolling {
    /// `refresh_delay` (required): the next request goes out this long after an answer, plus
    /// up to as long again at random, as Envoy's.
    pub refresh_delay: Duration,
    /// `request_timeout` (default 1 s).
    pub request_timeout: Duration,
}

/// The address of an xDS server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrpcTarget {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket (`pipe.path`; a leading `@` names an abstract socket).
    Unix(std::path::PathBuf),
    /// The name and port of a `STRICT_DNS` or `LOGICAL_DNS` cluster's first endpoint,
    /// resolved with the cluster's DNS settings each time the stream connects.
    Dns(String, u16),
}

/// `node`: identity only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// The whole `node` as the bootstrap gives it, sent to xDS servers.
    pub proto: envoy_types::pb::envoy::config::core::v3::Node,
}

/// `admin`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `admin.address`.
    pub address: SocketAddr,
    /// `admin.access_log`: a line per admin request.
    pub access_logs: Vec<AccessLog>,
}

/// `overload_manager`: the resources skiff watches and what it does as they fill.
#[derive(Debug, Clone, PartialEq)]
pub struct Overload {
    /// `global_downstream_max_connections`'s `max_active_downstream_connections`.
    pub max_downstream_connections: Option<u64>,
    /// `refresh_interval` (default 1 s): how often the monitors are read.
    pub refresh_interval: Duration,
    /// `resource_monitors`, in order.
    pub monitors: Vec<ResourceMonitor>,
    /// `actions`, in order.
    pub actions: Vec<OverloadAction>,
    /// `loadshed_points`, in order.
    pub loadshed_points: Vec<LoadShedPoint>,
    /// `reduce_timeouts`'s `timer_scale_factors`: the shortest each scaled timer may become.
    pub timer_minimums: Vec<(ScaledTimer, TimerMinimum)>,
    /// `shrink_heap`'s `ShrinkHeapConfig`.
    pub shrink_heap: ShrinkHeap,
    /// `buffer_factory_config.minimum_account_to_track_power_of_two`: streams holding at least
    /// 2^n bytes are tracked for `reset_high_memory_stream`.
    pub minimum_account_power_of_two: Option<u32>,
    /// HTTP/2's premature-reset protection, from the `overload.premature_reset_*` runtime keys.
    pub premature_reset: PrematureReset,
}

/// Envoy's protection against clients that open streams and reset them at once
/// (`overload.premature_reset_*` runtime keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrematureReset {
    /// `overload.premature_reset_min_stream_lifetime_seconds` (default 1 s): a stream reset
    /// sooner counts as premature.
    pub min_stream_lifetime: Duration,
    /// `overload.premature_reset_total_stream_count` (default 500): before this many streams,
    /// half of this many premature resets end the connection; after, half of all streams.
    pub total_stream_count: u64,
}

impl Default for PrematureReset {
    fn default() -> Self {
        PrematureReset {
            min_stream_lifetime: Duration::from_secs(1),
            total_stream_count: 500,
        }
    }
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            max_downstream_connections: None,
            refresh_interval: Duration::from_secs(1),
            monitors: Vec::new(),
            actions: Vec::new(),
            loadshed_points: Vec::new(),
            timer_minimums: Vec::new(),
            shrink_heap: ShrinkHeap::default(),
            minimum_account_power_of_two: None,
            premature_reset: PrematureReset::default(),
        }
    }
}

/// A resource monitor: a named pressure between 0 and 1 (more when over its limit).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceMonitor {
    /// `name`: what triggers name, and the stats scope `overload.<name>.`.
    pub name: String,
    /// What it measures.
    pub kind: MonitorKind,
}

/// What a resource monitor measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorKind {
    /// `envoy.resource_monitors.fixed_heap`: bytes the allocator has handed out, over
    /// `max_heap_size_bytes`.
    FixedHeap {
        /// `max_heap_size_bytes`.
        max_bytes: u64,
    },
    /// `envoy.resource_monitors.cgroup_memory`: the process's cgroup memory use over its limit
    /// (the lower of the cgroup's own limit and `max_memory_bytes`).
    CgroupMemory {
        /// `max_memory_bytes` (0: the cgroup's limit alone).
        max_bytes: Option<u64>,
    },
    /// `envoy.resource_monitors.injected_resource`: a pressure written in a file, read again
    /// when a new file is moved onto the path (for tests and drills).
    Injected {
        /// `filename`.
        path: std::path::PathBuf,
    },
    /// `envoy.resource_monitors.global_downstream_max_connections`: downstream connections
    /// over `max_active_downstream_connections`.
    DownstreamConnections {
        /// `max_active_downstream_connections`.
        max: u64,
    },
}

/// An overload action and what sets it off.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadAction {
    /// Which action (`name`).
    pub action: ActionName,
    /// `triggers`: the action's state is the highest of theirs.
    pub triggers: Vec<Trigger>,
}

/// The overload actions Envoy knows (`OverloadActionNames::WellKnownActions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionName {
    /// `envoy.overload_actions.stop_accepting_requests`: 503 to new requests.
    StopAcceptingRequests,
    /// `envoy.overload_actions.disable_http_keepalive`: responses end their connection.
    DisableHttpKeepalive,
    /// `envoy.overload_actions.stop_accepting_connections`: listeners stop accepting.
    StopAcceptingConnections,
    /// `envoy.overload_actions.reject_incoming_connections`: accepted connections are closed.
    RejectIncomingConnections,
    /// `envoy.overload_actions.shrink_heap`: free memory goes back to the system.
    ShrinkHeap,
    /// `envoy.overload_actions.reduce_timeouts`: scaled timers run shorter.
    ReduceTimeouts,
    /// `envoy.overload_actions.reset_high_memory_stream`: the streams holding the most memory
    /// are reset.
    ResetHighMemoryStream,
}

impl ActionName {
    /// Every action, in the order of [`ActionName::index`].
    pub const ALL: [ActionName; 7] = [
        ActionName::StopAcceptingRequests,
        ActionName::DisableHttpKeepalive,
        ActionName::StopAcceptingConnections,
        ActionName::RejectIncomingConnections,
        ActionName::ShrinkHeap,
        ActionName::ReduceTimeouts,
        ActionName::ResetHighMemoryStream,
    ];

    /// The action's configured name.
    pub fn name(self) -> &'static str {
        match self {
            ActionName::StopAcceptingRequests => "envoy.overload_actions.stop_accepting_requests",
            ActionName::DisableHttpKeepalive => "envoy.overload_actions.disable_http_keepalive",
            ActionName::StopAcceptingConnections => {
                "envoy.overload_actions.stop_accepting_connections"
            }
            ActionName::RejectIncomingConnections => {
                "envoy.overload_actions.reject_incoming_connections"
            }
            ActionName::ShrinkHeap => "envoy.overload_actions.shrink_heap",
            ActionName::ReduceTimeouts => "envoy.overload_actions.reduce_timeouts",
            ActionName::ResetHighMemoryStream => "envoy.overload_actions.reset_high_memory_stream",
        }
    }

    /// The action a name stands for.
    pub fn from_name(name: &str) -> Option<ActionName> {
        ActionName::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its place in [`ActionName::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A trigger: from one monitor's pressure to an action state between 0 and 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// `name`: the resource monitor.
    pub resource: String,
    /// `threshold` or `scaled`.
    pub kind: TriggerKind,
}

/// How a trigger reads pressure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TriggerKind {
    /// `threshold.value`: saturated at or above it, inactive below.
    Threshold(f64),
    /// `scaled`: inactive at or below `scaling_threshold`, saturated at or above
    /// `saturation_threshold`, in proportion between.
    Scaled {
        /// `scaling_threshold`.
        scaling: f64,
        /// `saturation_threshold`.
        saturation: f64,
    },
}

impl TriggerKind {
    /// The state (0 to 1) at `pressure`, as Envoy's triggers compute it.
    pub fn state(self, pressure: f64) -> f64 {
        match self {
            TriggerKind::Threshold(v) => {
                if pressure >= v {
                    1.0
                } else {
                    0.0
                }
            }
            TriggerKind::Scaled {
                scaling,
                saturation,
            } => {
                if pressure <= scaling {
                    0.0
                } else if pressure >= saturation {
                    1.0
                } else {
                    (pressure - scaling) / (saturation - scaling)
                }
            }
        }
    }
}

/// A load shed point and what sets it off.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadShedPoint {
    /// `name`: the stats scope `overload.<name>.`.
    pub name: String,
    /// Where it sheds.
    pub point: ShedPoint,
    /// `triggers`: the chance of shedding is the highest of their states.
    pub triggers: Vec<Trigger>,
}

/// The load shed points skiff runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedPoint {
    /// `envoy.load_shed_points.tcp_listener_accept`: close a connection as it is accepted.
    TcpListenerAccept,
    /// `envoy.load_shed_points.http_connection_manager_decode_headers`: 503 to a new request.
    HcmDecodeHeaders,
    /// `envoy.load_shed_points.hcm_ondata_creating_codec`: close a new HTTP connection before
    /// its codec reads it.
    HcmCodecCreation,
    /// `envoy.load_shed_points.http1_server_abort_dispatch`: 500 and close on an HTTP/1.1
    /// request.
    Http1AbortDispatch,
    /// `envoy.load_shed_points.http2_server_go_away_on_dispatch`: GOAWAY on an HTTP/2
    /// request.
    Http2GoAway,
    /// `envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch`: GOAWAY and close on
    /// an HTTP/2 request.
    Http2GoAwayAndClose,
    /// `envoy.load_shed_points.connection_pool_new_connection`: no new upstream connection.
    ConnectionPoolNewConnection,
    /// A name no Envoy code asks about (HTTP/3's points included, as skiff serves no
    /// HTTP/3): it has stats and no effect, as in Envoy.
    Unqueried,
}

impl ShedPoint {
    /// Every point skiff queries, in the order of [`ShedPoint::index`].
    pub const QUERIED: [ShedPoint; 7] = [
        ShedPoint::TcpListenerAccept,
        ShedPoint::HcmDecodeHeaders,
        ShedPoint::HcmCodecCreation,
        ShedPoint::Http1AbortDispatch,
        ShedPoint::Http2GoAway,
        ShedPoint::Http2GoAwayAndClose,
        ShedPoint::ConnectionPoolNewConnection,
    ];

    /// The point's configured name (none for [`ShedPoint::Unqueried`]).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ShedPoint::TcpListenerAccept => "envoy.load_shed_points.tcp_listener_accept",
            ShedPoint::HcmDecodeHeaders => {
                "envoy.load_shed_points.http_connection_manager_decode_headers"
            }
            ShedPoint::HcmCodecCreation => "envoy.load_shed_points.hcm_ondata_creating_codec",
            ShedPoint::Http1AbortDispatch => "envoy.load_shed_points.http1_server_abort_dispatch",
            ShedPoint::Http2GoAway => "envoy.load_shed_points.http2_server_go_away_on_dispatch",
            ShedPoint::Http2GoAwayAndClose => {
                "envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch"
            }
            ShedPoint::ConnectionPoolNewConnection => {
                "envoy.load_shed_points.connection_pool_new_connection"
            }
            ShedPoint::Unqueried => return None,
        })
    }

    /// Its place in [`ShedPoint::QUERIED`] (none for [`ShedPoint::Unqueried`]).
    pub fn index(self) -> Option<usize> {
        ShedPoint::QUERIED.iter().position(|p| *p == self)
    }
}

/// The timers `reduce_timeouts` scales (`ScaleTimersOverloadActionConfig.TimerType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaledTimer {
    /// `HTTP_DOWNSTREAM_CONNECTION_IDLE`: the HCM's `idle_timeout`.
    ConnectionIdle,
    /// `HTTP_DOWNSTREAM_STREAM_IDLE`: `stream_idle_timeout` and a route's `idle_timeout`.
    StreamIdle,
    /// `TRANSPORT_SOCKET_CONNECT`: a filter chain's `transport_socket_connect_timeout`.
    TransportSocketConnect,
    /// `HTTP_DOWNSTREAM_CONNECTION_MAX`: the HCM's `max_connection_duration`.
    ConnectionMax,
    /// `HTTP_DOWNSTREAM_STREAM_FLUSH`: `stream_flush_timeout`.
    StreamFlush,
}

impl ScaledTimer {
    /// Every scaled timer, in the order of [`ScaledTimer::index`].
    pub const ALL: [ScaledTimer; 5] = [
        ScaledTimer::ConnectionIdle,
        ScaledTimer::StreamIdle,
        ScaledTimer::TransportSocketConnect,
        ScaledTimer::ConnectionMax,
        ScaledTimer::StreamFlush,
    ];

    /// Its place in [`ScaledTimer::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How short a scaled timer may become.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimerMinimum {
    /// `min_timeout`.
    Absolute(Duration),
    /// `min_scale`: a share (0 to 1) of the configured timeout.
    Scale(f64),
}

impl TimerMinimum {
    /// The shortest `configured` may become.
    pub fn of(self, configured: Duration) -> Duration {
        match self {
            TimerMinimum::Absolute(d) => d.min(configured),
            TimerMinimum::Scale(s) => configured.mul_f64(s.clamp(0.0, 1.0)),
        }
    }
}

/// `ShrinkHeapConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkHeap {
    /// `timer_interval` (default 10 s): how often free memory is released while the action
    /// is saturated.
    pub interval: Duration,
    /// `max_unfreed_memory_bytes` (default 100 MiB): free memory kept before releasing.
    pub max_unfreed_bytes: u64,
}

impl Default for ShrinkHeap {
    fn default() -> Self {
        ShrinkHeap {
            interval: Duration::from_secs(10),
            max_unfreed_bytes: 100 * 1024 * 1024,
        }
    }
}

/// A listener.
#[derive(Debug, PartialEq)]
pub struct Listener {
    /// `name`.
    pub name: String,
    /// `metadata` (`%METADATA(LISTENER:…)%`).
    pub metadata: Arc<crate::metadata::Metadata>,
    /// `access_log`: one line for each connection closed before a filter chain took it (no
    /// chain matched, or the listener filters ended it).
    pub access_logs: Vec<AccessLog>,
    /// `address`.
    pub address: SocketAddr,
    /// `additional_addresses`: more addresses the listener serves (Istio's dual stack).
    pub additional_addresses: Vec<SocketAddr>,
    /// The stat scope: `listener.<stat_prefix>.`; Envoy's default is the address with `_` for `:`.
    pub stat_prefix: String,
    /// `filter_chains`, each with its `filter_chain_match`.
    pub filter_chains: Vec<(FilterChainMatch, Arc<FilterChain>)>,
    /// `default_filter_chain`: for connections no chain matches.
    pub default_filter_chain: Option<Arc<FilterChain>>,
    /// `filter_chain_matcher`: picks a chain by name (its index here; `None` for a name no
    /// chain has: the connection is then closed, as Envoy closes it), in place of the chains'
    /// `filter_chain_match`; no match: the default chain.
    pub filter_chain_matcher: Option<crate::matcher::Matcher<Option<usize>>>,
    /// `use_original_dst`: a redirected connection goes to the listener of its original
    /// destination, when there is one.
    pub use_original_dst: bool,
    /// `bind_to_port` (default true): false makes a listener that only takes connections
    /// handed off by a `use_original_dst` listener.
    pub bind_to_port: bool,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub buffer_limit: usize,
    /// `listener_filters` that run code on accept, in order (original_src is applied by the
    /// terminal filter instead, see `original_src`).
    pub listener_filters: Vec<ListenerFilter>,
    /// Each listener filter's `filter_disabled` (by index; empty when none has one): the
    /// filter is skipped for a connection the predicate matches.
    pub listener_filters_disabled: Vec<Option<ListenerPredicate>>,
    /// `listener_filters_timeout` (default 15 s; zero: none).
    pub listener_filters_timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: a timed-out socket goes on to the filter chain
    /// instead of being closed.
    pub continue_on_listener_filters_timeout: bool,
    /// `envoy.filters.listener.original_src`: upstream connections use the client's address.
    pub original_src: Option<OriginalSrc>,
    /// `transparent`: IP_TRANSPARENT, to accept connections for any address (TPROXY).
    pub transparent: bool,
    /// `freebind`: IP_FREEBIND, to bind an address the host does not have (yet).
    pub freebind: bool,
    /// `drain_type`.
    pub drain_type: DrainType,
    /// `traffic_direction` is `INBOUND` (`/drain_listeners?inboundonly` drains only these).
    pub inbound: bool,
    /// `max_connections_to_accept_per_socket_event`: after this many accepts in a row the
    /// accept loop lets the worker's connections run (none: accept all that are pending).
    pub accept_batch: Option<u32>,
    /// `socket_options` that apply to this listener's sockets (TCP, its address family).
    pub socket_options: Vec<SocketOption>,
    /// `additional_addresses[].socket_options`: the options of these addresses' sockets in
    /// place of `socket_options` (an empty list: none), as Envoy's `SocketOptionsOverride`.
    pub address_socket_options: Vec<(SocketAddr, Vec<SocketOption>)>,
    /// `tcp_fast_open_queue_length`: TCP Fast Open with this queue (0: off).
    pub tcp_fast_open_queue_length: Option<u32>,
    /// `ignore_global_conn_limit`: the overload manager's global connection limit neither
    /// counts nor limits this listener's connections.
    pub ignore_global_conn_limit: bool,
    /// `bypass_overload_manager`: no overload action or load shed point applies to this
    /// listener's connections and requests.
    pub bypass_overload_manager: bool,
    /// `internal_listener`: no socket; its connections come in memory, on the same worker,
    /// from clusters whose endpoints name it (`envoy_internal_address`). `address` is then
    /// unspecified and `bind_to_port` false.
    pub internal: bool,
    /// The IPv6 addresses (`address`, `additional_addresses`) with `ipv4_compat`: their
    /// sockets take IPv4 connections too (IPV6_V6ONLY off).
    pub dual_stack: Vec<SocketAddr>,
}

/// `envoy.config.core.v3.SocketOption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOption {
    /// `level`.
    pub level: i32,
    /// `name`.
    pub name: i32,
    /// `int_value` (a C `int`) or `buf_value`.
    pub value: SocketOptionValue,
    /// `state`: when it is set.
    pub state: SocketState,
}

/// A socket option's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketOptionValue {
    /// `int_value`.
    Int(i32),
    /// `buf_value`.
    Bytes(Vec<u8>),
}

/// `SocketOption.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// Before `bind()`.
    PreBind,
    /// After `bind()`, before `listen()`.
    Bound,
    /// After `listen()`.
    Listening,
}

/// `drain_type`: which drains ask this listener's connections to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainType {
    /// `DEFAULT`: every drain (listener updates, `/drain_listeners`, failed health checks,
    /// shutdown).
    #[default]
    Default,
    /// `MODIFY_ONLY`: only this listener's own modification or removal, and shutdown.
    ModifyOnly,
}

/// A listener filter, in `listener_filters` order.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerFilter {
    /// `envoy.filters.listener.original_dst`: the connection's local address becomes its
    /// original destination (SO_ORIGINAL_DST).
    OriginalDst,
    /// `envoy.filters.listener.proxy_protocol`.
    ProxyProtocol(Arc<ProxyProtocol>),
    /// `envoy.filters.listener.tls_inspector`.
    TlsInspector(TlsInspector),
    /// `envoy.filters.listener.http_inspector`.
    HttpInspector,
}

/// `envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInspector {
    /// `initial_read_buffer_size` (default: `max_client_hello_size`).
    pub initial_read_buffer_size: usize,
    /// `max_client_hello_size` (default 16 KiB).
    pub max_client_hello_size: usize,
    /// `close_connection_on_client_hello_parsing_errors`.
    pub close_connection_on_client_hello_parsing_errors: bool,
}

/// `ListenerFilterChainMatchPredicate`: when a listener filter is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerPredicate {
    /// `any_match: true`.
    Any,
    /// `or_match`.
    Or(Vec<ListenerPredicate>),
    /// `and_match`.
    And(Vec<ListenerPredicate>),
    /// `not_match`.
    Not(Box<ListenerPredicate>),
    /// `destination_port_range`: the local port (the original destination's, once
    /// original_dst has run) in `[start, end)`.
    DestinationPorts { start: i32, end: i32 },
}

impl ListenerPredicate {
    /// Whether a connection to local port `port` matches.
    pub fn matches(&self, port: u16) -> bool {
        match self {
            ListenerPredicate::Any => true,
            ListenerPredicate::Or(all) => all.iter().any(|p| p.matches(port)),
            ListenerPredicate::And(all) => all.iter().all(|p| p.matches(port)),
            ListenerPredicate::Not(p) => !p.matches(port),
            ListenerPredicate::DestinationPorts { start, end } => {
                (*start..*end).contains(&i32::from(port))
            }
        }
    }
}

impl ListenerFilter {
    /// Whether the filter reads bytes from the connection (and so can stall on it).
    pub fn needs_bytes(&self) -> bool {
        match self {
            ListenerFilter::OriginalDst => false,
            ListenerFilter::ProxyProtocol(_)
            | ListenerFilter::TlsInspector(_)
            | ListenerFilter::HttpInspector => true,
        }
    }
}

/// `envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// `stat_prefix`: stats under `proxy_proto.<stat_prefix>.` (`proxy_proto.` when empty).
    pub stat_prefix: String,
    /// `allow_requests_without_proxy_protocol`.
    pub allow_without: bool,
    /// V1 is not in `disallowed_versions`.
    pub allow_v1: bool,
    /// V2 is not in `disallowed_versions`.
    pub allow_v2: bool,
    /// `pass_through_tlvs`: the TLV types kept with the connection (bit per type).
    pub pass_through_tlvs: TlvSet,
}

/// A set of PROXY protocol v2 TLV types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlvSet([u64; 4]);

impl TlvSet {
    /// Every type.
    pub const ALL: TlvSet = TlvSet([u64::MAX; 4]);

    /// Adds `t`.
    pub fn insert(&mut self, t: u8) {
        self.0[usize::from(t >> 6)] |= 1 << (t & 63);
    }

    /// Whether `t` is in the set.
    pub fn contains(&self, t: u8) -> bool {
        self.0[usize::from(t >> 6)] & (1 << (t & 63)) != 0
    }

    /// Whether no type is in the set.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// `envoy.extensions.filters.listener.original_src.v3.OriginalSrc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalSrc {
    /// `bind_port`: keep the client's port too.
    pub bind_port: bool,
    /// `mark`: SO_MARK for the upstream socket (0: none), so policy routing returns replies.
    pub mark: u32,
}

impl Listener {
    /// The socket options of the socket on `addr`.
    pub fn socket_options_at(&self, addr: SocketAddr) -> &[SocketOption] {
        self.address_socket_options
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(&self.socket_options, |(_, o)| o)
    }

    /// Every address the listener serves: `address`, then `additional_addresses`.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.address).chain(self.additional_addresses.iter().copied())
    }
}

/// `filter_chain_match`, canonical (lists sorted, names in lower case) so equal matches compare
/// equal. An empty match takes everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges`: the destination address.
    pub prefix_ranges: Vec<CidrRange>,
    /// `server_names`: exact names and `*.suffix` wildcards.
    pub server_names: Vec<String>,
    /// `transport_protocol` ("" for any).
    pub transport_protocol: String,
    /// `application_protocols`.
    pub application_protocols: Vec<String>,
    /// `direct_source_prefix_ranges`: the peer of the connection itself.
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`: the downstream remote address.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
}

/// `filter_chain_match.source_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceType {
    /// `ANY`.
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`: the peer is a loopback address or the local address.
    SameIpOrLoopback,
    /// `EXTERNAL`: any other peer.
    External,
}

/// `envoy.config.core.v3.CidrRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CidrRange {
    /// `address_prefix`, IPv4 as IPv4.
    pub address: IpAddr,
    /// `prefix_len`.
    pub prefix_len: u8,
}

impl CidrRange {
    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A UDP listener (`protocol: UDP`) and its `envoy.filters.udp_listener.udp_proxy`.
#[derive(Debug, PartialEq)]
pub struct UdpListener {
    /// `name`.
    pub name: String,
    /// `address`.
    pub address: SocketAddr,
    /// `udp_listener_config.downstream_socket_config.max_rx_datagram_size` (1500): longer
    /// datagrams are dropped.
    pub max_datagram: usize,
    /// The proxy.
    pub proxy: UdpProxy,
}

/// `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`: each client (source address)
/// gets a session, a connected socket to a host of the route's cluster, that carries its
/// datagrams both ways until it is idle for `idle_timeout`.
#[derive(Debug, PartialEq)]
pub struct UdpProxy {
    /// `stat_prefix`: stats under `udp.<stat_prefix>.`.
    pub stat_prefix: String,
    /// `cluster` or `matcher`.
    pub route: UdpRoute,
    /// `idle_timeout` (60 s; `None` for zero: never).
    pub idle_timeout: Option<Duration>,
    /// `hash_policies`.
    pub hash: Option<UdpHash>,
    /// `use_per_packet_load_balancing`: each datagram picks its host.
    pub per_packet: bool,
    /// `upstream_socket_config.max_rx_datagram_size` (1500).
    pub max_upstream_datagram: usize,
    /// `access_log`: a line per session when it ends.
    pub access_logs: Vec<AccessLog>,
}

/// Where a UDP proxy sends a session.
#[derive(Debug, PartialEq)]
pub enum UdpRoute {
    /// `cluster`.
    Cluster(String),
    /// `matcher`: a `Route`'s cluster by the datagram's addresses.
    Matcher(crate::matcher::Matcher<String>),
}

/// A UDP proxy's `hash_policies` entry.
#[derive(Debug, PartialEq)]
pub enum UdpHash {
    /// `source_ip`: the hash of the client's address.
    SourceIp,
    /// `key`.
    Key(String),
}

/// A filter chain.
#[derive(Debug, PartialEq)]
pub struct FilterChain {
    /// `name`.
    pub name: String,
    /// `filters`, the terminal one last.
    pub filters: Vec<NetworkFilter>,
    /// `transport_socket`: TLS termination (none: plain TCP). What it serves with is the
    /// runtime's (`tls::transport`).
    pub tls: Option<Arc<crate::tls::DownstreamTls>>,
    /// `transport_socket_connect_timeout`: a TLS handshake not done by then closes the
    /// connection (none: no limit).
    pub handshake_timeout: Option<Duration>,
}

/// `envoy.filters.network.local_ratelimit`: every new connection takes a token or is closed
/// at once. The bucket, shared by every worker, is the runtime's
/// (`network::filters::local_ratelimit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimit {
    /// `stat_prefix`: stats are `local_rate_limit.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// `token_bucket.max_tokens`: also the tokens at start.
    pub max_tokens: u32,
    /// `token_bucket.tokens_per_fill` (default 1).
    pub tokens_per_fill: u32,
    /// `token_bucket.fill_interval`.
    pub fill_interval: Duration,
}

/// `envoy.filters.network.ratelimit`: each new connection's descriptors go to the rate limit
/// service (`ShouldRateLimit`) before the connection is served; `OVER_LIMIT` closes it. The call
/// and its stats (`ratelimit.<stat_prefix>.*`) are the runtime's
/// (`network::filters::ratelimit`).
#[derive(Debug, PartialEq)]
pub struct NetworkRateLimit {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `domain`.
    pub domain: String,
    /// `descriptors`: each entry's key, and its value as a format of the connection.
    pub descriptors: Vec<Vec<(String, Format)>>,
    /// `timeout` of the call (default 20 ms; 0: none).
    pub timeout: Option<Duration>,
    /// `failure_mode_deny`: a failed call closes the connection instead of letting it on.
    pub failure_mode_deny: bool,
    /// `rate_limit_service.grpc_service.envoy_grpc.cluster_name`.
    pub cluster: String,
    /// `rate_limit_service.grpc_service.envoy_grpc.authority` (default: the cluster's name).
    pub authority: String,
    /// `rate_limit_service.grpc_service.initial_metadata`.
    pub metadata: GrpcMetadata,
}

/// `envoy.filters.network.connection_limit`: at most `max_connections` open at once through
/// the filter (over every worker); one more is closed, after `delay` if set. The count is the
/// runtime's (`network::filters::connection_limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// `stat_prefix`: stats are `connection_limit.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// `max_connections` (at least 1).
    pub max_connections: u64,
    /// `delay`: how long a refused connection is held before it is closed (none: at once).
    pub delay: Option<Duration>,
    /// `runtime_enabled`: the filter limits only while this is on (none: always).
    pub enabled: Option<crate::runtime::RuntimeFlag>,
    /// `runtime_enabled.default_value` without a runtime key: whether the filter limits.
    pub on: bool,
}

/// An original IP detection extension: how the client's address is found when the connection
/// manager does not take its peer's.
#[derive(Debug, Clone, PartialEq)]
pub enum IpDetection {
    /// `envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig`.
    CustomHeader {
        /// `header_name`: its first value, an IP address.
        header: http::HeaderName,
        /// `allow_extension_to_set_address_as_trusted`: the address may make the request
        /// internal.
        trusted: bool,
        /// `reject_with_status`: a request without a usable address is answered so.
        reject: Option<http::StatusCode>,
    },
    /// `envoy.extensions.http.original_ip_detection.xff.v3.XffConfig`.
    Xff {
        /// `xff_num_trusted_hops`.
        hops: u32,
        /// `xff_trusted_cidrs`: a peer in them, and the `x-forwarded-for` entries in them
        /// from the end, are proxies; the first entry outside them is the client.
        trusted_cidrs: Vec<CidrRange>,
        /// `skip_xff_append: false`: once it finds the client, the peer is appended to
        /// `x-forwarded-for` (unset or true: nothing is appended).
        append: bool,
    },
}

/// A network filter.
#[derive(Debug, PartialEq)]
pub enum NetworkFilter {
    /// `envoy.filters.network.local_ratelimit` (never last).
    LocalRateLimit(Arc<LocalRateLimit>),
    /// `envoy.filters.network.connection_limit` (never last).
    ConnectionLimit(Arc<ConnectionLimit>),
    /// `envoy.filters.network.ratelimit` (never last).
    RateLimit(Arc<NetworkRateLimit>),
    /// `envoy.filters.network.rbac` (never last).
    Rbac(Arc<crate::rbac::NetworkRbac>),
    /// `envoy.filters.network.set_filter_state` (never last).
    SetFilterState(Arc<crate::filter_state::NetworkSetFilterState>),
    /// Istio's `istio_authn` (`io.istio.network.authn.Config`): once TLS is done, the peer's
    /// and the connection's own SPIFFE identities go into the connection's filter state
    /// (`io.istio.peer_principal`, `io.istio.local_principal`), which Istio's RBAC
    /// principals read (never last).
    IstioAuthn,
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(Arc<TcpProxy>),
    /// `envoy.filters.network.http_connection_manager`.
    HttpConnectionManager(Arc<HttpConnectionManager>),
}

/// Where a TCP proxy sends a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChoice {
    /// `cluster`.
    Single(String),
    /// `weighted_clusters`: (name, weight), weights > 0.
    Weighted(Vec<(String, u32)>),
}

impl ClusterChoice {
    /// Picks a cluster; weighted choices draw at random by weight, as Envoy does.
    pub fn pick(&self) -> &str {
        self.name(self.pick_index())
    }

    /// The index of the cluster picked (0 for a single cluster).
    pub fn pick_index(&self) -> usize {
        match self {
            ClusterChoice::Single(_) => 0,
            ClusterChoice::Weighted(all) => {
                let total: u64 = all.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut draw = fastrand::u64(0..total.max(1));
                for (i, (_, w)) in all.iter().enumerate() {
                    if draw < u64::from(*w) {
                        return i;
                    }
                    draw -= u64::from(*w);
                }
                0
            }
        }
    }

    /// The name of the `i`th cluster.
    pub fn name(&self, i: usize) -> &str {
        match self {
            ClusterChoice::Single(c) => c,
            ClusterChoice::Weighted(all) => all.get(i).map_or(&all[0].0, |(n, _)| n),
        }
    }
}

/// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.
#[derive(Debug, PartialEq)]
pub struct TcpProxy {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `cluster` or `weighted_clusters`.
    pub cluster: ClusterChoice,
    /// `metadata_match` (merged under each weighted cluster's own), by the index of the
    /// cluster picked: the subset its hosts come from.
    pub criteria: Vec<Option<Arc<MatchCriteria>>>,
    /// `idle_timeout` (default 1 h; zero disables).
    pub idle_timeout: Option<Duration>,
    /// `access_log`.
    pub access_logs: Vec<AccessLog>,
    /// `tunneling_config`: the connection carried in an HTTP CONNECT (or POST) to the upstream.
    pub tunneling: Option<Arc<Tunneling>>,
    /// `access_log_options` (or the older fields): when lines are written besides the end.
    pub log_flush: LogFlush,
}

/// `access_log_options` of a connection manager or tcp_proxy (or their deprecated fields):
/// the lines written before a stream or connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogFlush {
    /// `access_log_flush_interval`: a periodic line (`DownstreamPeriodic`, `TcpPeriodic`),
    /// timed from the start.
    pub interval: Option<Duration>,
    /// `flush_access_log_on_new_request` (`DownstreamStart`, once the route is known) or
    /// tcp_proxy's `flush_access_log_on_connected` (`TcpUpstreamConnected`).
    pub on_start: bool,
    /// `flush_log_on_tunnel_successfully_established` (`DownstreamTunnelSuccessfullyEstablished`).
    pub on_tunnel: bool,
}

/// tcp_proxy's `tunneling_config`.
#[derive(Debug, PartialEq)]
pub struct Tunneling {
    /// `hostname`: the CONNECT's authority, a format of the connection.
    pub hostname: Arc<Format>,
    /// `use_post`: a POST to `post_path` instead of a CONNECT.
    pub use_post: bool,
    /// `post_path` (default `/`).
    pub post_path: String,
    /// `headers_to_add`.
    pub headers: crate::router::HeaderParser,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecType {
    /// HTTP/1.1, or HTTP/2 when the connection opens with the h2 preface.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (prior knowledge).
    Http2,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    /// Always `server: <server_name>`.
    Overwrite,
    /// Only when the upstream sent none.
    AppendIfAbsent,
    /// As the upstream sent it.
    PassThrough,
}

/// `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.
#[derive(Debug, PartialEq)]
pub struct HttpConnectionManager {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `codec_type`.
    pub codec: CodecType,
    /// `route_config` or `rds`.
    pub routes: RouteSource,
    /// `http_filters` before the router.
    pub http_filters: Vec<HttpFilter>,
    /// The terminal `envoy.filters.http.router`.
    pub router: RouterConfig,
    /// `access_log`.
    pub access_logs: Vec<AccessLog>,
    /// `local_reply_config`: how the connection manager's own replies are rewritten.
    pub local_reply: Option<Arc<LocalReplyConfig>>,
    /// `add_user_agent`: the node's cluster as `x-envoy-downstream-service-cluster` (and
    /// `user-agent` when the request has none), its id as `x-envoy-downstream-service-node`.
    pub add_user_agent: bool,
    /// `scheme_header_transformation.scheme_to_overwrite`: the request's `:scheme` (and
    /// `x-forwarded-proto`) before routing.
    pub scheme_to_overwrite: Option<&'static str>,
    /// `scheme_header_transformation.match_upstream`: the upstream's `:scheme` is that of the
    /// upstream connection.
    pub scheme_matches_upstream: bool,
    /// `server_name` (default `envoy`, as Envoy).
    pub server_name: http::HeaderValue,
    /// `server_header_transformation`.
    pub server_header: ServerHeader,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`.
    pub always_set_request_id_in_response: bool,
    /// `via`.
    pub via: Option<http::HeaderValue>,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    pub forward_client_cert: ForwardClientCert,
    /// `tracing`: its sampling decision, packed into `x-request-id`.
    pub tracing: Option<TraceSampling>,
    /// `tracing.provider`: the tracer that makes spans of the traced requests.
    pub tracer: Option<Arc<crate::trace::HttpTracer>>,
    /// `http2_protocol_options` for downstream HTTP/2 connections.
    pub http2: Http2Options,
    /// `upgrade_configs`: the upgrade types (lower case) this connection manager takes, and
    /// whether each is enabled unless a route says otherwise.
    pub upgrades: Vec<(String, bool)>,
    /// `upgrade_configs[].filters`: an upgrade type's own filters (before its router), which
    /// replace `http_filters` for its requests when the route lets it through.
    pub upgrade_filters: Vec<(String, Vec<HttpFilter>)>,
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append`.
    pub skip_xff_append: bool,
    /// `original_ip_detection_extensions`, in order (without `use_remote_address`).
    pub ip_detection: Vec<IpDetection>,
    /// `early_header_mutation_extensions`' mutations, made on a request's headers before
    /// anything else reads them.
    pub early_mutations: Vec<HeaderMutationStep>,
    /// `internal_address_config.cidr_ranges`: the addresses whose requests are internal.
    pub internal_addresses: Vec<CidrRange>,
    /// `normalize_path`.
    pub normalize_path: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashes,
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: StripPort,
    /// `strip_trailing_host_dot`: a trailing dot leaves the host (before its port).
    pub strip_trailing_host_dot: bool,
    /// `append_x_forwarded_port` (with `use_remote_address`): `x-forwarded-port` set to the
    /// port the client reached.
    pub append_x_forwarded_port: bool,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub underscores: Underscores,
    /// The connection manager's timeouts and per-connection limits.
    pub timeouts: HcmTimeouts,
    /// `http_protocol_options.accept_http_10`: HTTP/1.0 requests are served (else 426), with
    /// `default_host_for_http_10` as the host of those without one.
    pub http10: Option<Http10>,
    /// `http_protocol_options.header_key_format`: the case of the header names written to the
    /// client, and with `preserve_case`, that of the request's names kept for the upstream.
    pub header_case: HeaderCase,
    /// `http_protocol_options.enable_trailers`: a request's trailers read and a response's
    /// written over HTTP/1.1 (without it both are dropped, as Envoy's codec drops them).
    pub enable_trailers: bool,
    /// `http_protocol_options.allow_chunked_length`: a request with `Content-Length` and a
    /// chunked `Transfer-Encoding` is taken as chunked, its length dropped (else 400).
    pub allow_chunked_length: bool,
    /// `http_protocol_options.allow_absolute_url` (default true): an HTTP/1.1 request in
    /// absolute form (`GET http://a/x`) is routed by its URL's authority; without it, 404.
    pub allow_absolute_url: bool,
    /// `http_protocol_options.ignore_http_11_upgrade`: an HTTP/1.1 upgrade whose `Upgrade`
    /// value one of these matches is an ordinary request (as h2c always is).
    pub ignore_http11_upgrade: Vec<StringMatch>,
    /// `access_log_options` (or the older fields): when lines are written besides the end.
    pub log_flush: LogFlush,
    /// `proxy_100_continue`: `Expect: 100-continue` goes upstream and the upstream's `100
    /// Continue` comes back; without it the connection manager answers it at once and drops
    /// the upstream's.
    pub proxy_100_continue: bool,
}

/// `http_protocol_options.header_key_format`: how HTTP/1.1 header names are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCase {
    /// Lower case (Envoy's default).
    #[default]
    Lower,
    /// `proper_case_words`: `Content-Type`.
    ProperCase,
    /// The `preserve_case` stateful formatter: names keep the case they arrived in (the
    /// downstream's in requests, the upstream's in responses); others are lower case.
    Preserve,
}

/// How a connection manager serves HTTP/1.0 (`accept_http_10`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http10 {
    /// `default_host_for_http_10`.
    pub default_host: Option<http::HeaderValue>,
}

/// The timeouts and limits of a connection manager's connections and streams, as Envoy applies
/// them (`None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HcmTimeouts {
    /// `stream_idle_timeout` (Envoy's default 5 min; zero: off): a stream with no bytes either
    /// way for this long ends (408 or 504 before its response, a reset after).
    pub stream_idle: Option<Duration>,
    /// `request_timeout`: the whole request must arrive within it.
    pub request: Option<Duration>,
    /// `request_headers_timeout`: a request head must arrive within it of its first byte
    /// (408, then the connection closes).
    pub request_headers: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`.
    pub max_stream_duration: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout` (default 1 h; zero: off): a connection with
    /// no stream for this long closes.
    pub connection_idle: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration`: the connection drains after it.
    pub max_connection_duration: Option<Duration>,
    /// `http1_safe_max_connection_duration`: an HTTP/1.1 connection past its
    /// `max_connection_duration` is never closed while idle; its next response says close.
    pub http1_safe_max_duration: bool,
    /// `common_http_protocol_options.max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
    /// `drain_timeout` (default 5 s): an HTTP/2 connection that drains (GOAWAY) is not closed
    /// before this has passed.
    pub drain: Duration,
    /// `drain_timeout_jitter`: each draining connection waits up to this much longer, drawn
    /// at random (`drain_timeout` times the percentage).
    pub drain_jitter: Duration,
    /// `delayed_close_timeout` (default 1 s; zero: off): after the last bytes of a connection
    /// the proxy closes, how long it waits for the client to close first.
    pub delayed_close: Option<Duration>,
    /// `max_request_headers_kb` (default 60): a request head (HTTP/1.1) or header list
    /// (HTTP/2) longer than this many KiB gets 431 or a reset stream.
    pub max_request_headers_kb: u32,
    /// `common_http_protocol_options.max_headers_count` (default 100): a request with more
    /// headers gets 431 (HTTP/1.1) or a reset stream (HTTP/2).
    pub max_headers_count: u32,
}

impl Default for HcmTimeouts {
    fn default() -> Self {
        HcmTimeouts {
            stream_idle: Some(Duration::from_secs(300)),
            request: None,
            request_headers: None,
            max_stream_duration: None,
            connection_idle: Some(Duration::from_secs(3600)),
            max_connection_duration: None,
            http1_safe_max_duration: false,
            max_requests_per_connection: None,
            drain: Duration::from_secs(5),
            drain_jitter: Duration::ZERO,
            delayed_close: Some(Duration::from_secs(1)),
            max_request_headers_kb: 60,
            max_headers_count: 100,
        }
    }
}

/// `headers_with_underscores_action`: what becomes of a request header whose name has `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// `ALLOW` (the default).
    Allow,
    /// `REJECT_REQUEST`: 400 over HTTP/1.1, a reset stream over HTTP/2.
    Reject,
    /// `DROP_HEADER`.
    Drop,
}

impl HttpConnectionManager {
    /// Whether a request from `ip` is internal (`internal_address_config`).
    pub fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        self.internal_addresses.iter().any(|r| r.contains(ip))
    }
}

/// `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// `KEEP_UNCHANGED` (and Envoy's default).
    KeepUnchanged,
    /// `REJECT_REQUEST`: 400.
    RejectRequest,
    /// `UNESCAPE_AND_REDIRECT`: 307 to the unescaped path.
    UnescapeAndRedirect,
    /// `UNESCAPE_AND_FORWARD`.
    UnescapeAndForward,
}

/// Which port the connection manager strips from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    /// None.
    None,
    /// `strip_matching_host_port`: the listener's port.
    Matching,
    /// `strip_any_host_port`: any port.
    Any,
}

/// Envoy 1.40's `SETTINGS_MAX_CONCURRENT_STREAMS` for downstream connections when
/// `http2_protocol_options.max_concurrent_streams` is unset (observed with `nghttp -v`).
pub const DOWNSTREAM_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The sampling of `tracing` and what the UUID request id extension does with it, as Envoy's
/// connection manager decides it without a tracer: the decision goes into `x-request-id`
/// (Sampled `9`, Client `b`, Forced `a`, not traced `4` at its 15th character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSampling {
    /// `client_sampling`, `random_sampling`, `overall_sampling`, out of 10,000 (default all).
    pub client: u32,
    pub random: u32,
    pub overall: u32,
    /// The request id extension's `pack_trace_reason` (default true).
    pub pack_trace_reason: bool,
    /// Its `use_request_id_for_trace_sampling` (default true).
    pub use_request_id: bool,
}

/// `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XfccMode {
    /// Removed (the default).
    #[default]
    Sanitize,
    /// Forwarded as it came, on mutual TLS connections only.
    ForwardOnly,
    /// This connection's client certificate appended, on mutual TLS connections only.
    AppendForward,
    /// Replaced by this connection's client certificate, on mutual TLS connections only.
    SanitizeSet,
    /// Forwarded as it came, always.
    AlwaysForwardOnly,
}

/// `x-forwarded-client-cert` handling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardClientCert {
    pub mode: XfccMode,
    /// `set_current_client_cert_details`, in the order Envoy writes them.
    pub details: Vec<XfccDetail>,
}

/// One element `set_current_client_cert_details` adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XfccDetail {
    Cert,
    /// `chain`: the client's whole certificate chain (its leaf first), PEM, URL-encoded.
    Chain,
    Subject,
    Uri,
    Dns,
}

/// Where an HTTP connection manager's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// `route_config`: inline, fixed for the listener's life.
    Static(Arc<RouteConfig>),
    /// `rds`: the route configuration of that name in force when each stream starts.
    Rds {
        /// `rds.route_config_name`.
        name: String,
        /// `rds.config_source`.
        source: ConfigSource,
    },
    /// `scoped_routes` with `scoped_route_configurations_list`: a key from request headers
    /// picks one of several inline route configurations.
    Scoped(Arc<crate::router::scoped::ScopedRoutes>),
    /// `scoped_routes` with `scoped_rds`: the scopes from SRDS, their route configurations
    /// from RDS.
    ScopedRds(Arc<crate::router::scoped::ScopedRds>),
}

/// A configured HTTP filter other than the router.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilterConfig {
    /// `envoy.filters.http.compressor`.
    Compressor(Arc<Compressor>),
    /// `envoy.filters.http.decompressor`.
    Decompressor(Arc<Decompressor>),
    /// Istio's `istio.alpn`.
    IstioAlpn(Arc<IstioAlpn>),
    /// Istio's `istio.metadata_exchange` (`io.istio.http.peer_metadata.Config`).
    PeerMetadata(Arc<PeerMetadata>),
    /// `envoy.filters.http.health_check`.
    HealthCheck(Arc<HealthCheck>),
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(Arc<HttpLocalRateLimit>),
    /// `envoy.filters.http.fault`.
    Fault(Arc<HttpFault>),
    /// `envoy.filters.http.rbac`.
    Rbac(Arc<crate::rbac::HttpRbac>),
    /// `envoy.filters.http.jwt_authn`.
    JwtAuthn(Arc<crate::jwt::JwtAuthn>),
    /// `envoy.filters.http.header_to_metadata`.
    HeaderToMetadata(Arc<HeaderToMetadata>),
    /// `envoy.filters.http.cors`: it acts by the routes' policies.
    Cors,
    /// `envoy.filters.http.ratelimit`: the global rate limit service.
    RateLimit(Arc<HttpRateLimit>),
    /// `envoy.filters.http.ext_authz`: an external authorization service.
    ExtAuthz(Arc<ExtAuthz>),
    /// `envoy.filters.http.set_filter_state`.
    SetFilterState(Arc<crate::filter_state::HttpSetFilterState>),
    /// `envoy.filters.http.basic_auth`.
    BasicAuth(Arc<BasicAuth>),
    /// `envoy.filters.http.stateful_session`.
    StatefulSession(Arc<StatefulSession>),
    /// `envoy.filters.http.header_mutation`.
    HeaderMutation(Arc<HeaderMutation>),
}

/// `envoy.filters.http.header_mutation`.
#[derive(Debug, PartialEq)]
pub struct HeaderMutation {
    /// `mutations`.
    pub mutations: Arc<HeaderMutations>,
    /// `most_specific_header_mutations_wins`: the routes' mutations run from the route
    /// configuration's to the route's (the route's last); otherwise the other way round.
    pub most_specific_wins: bool,
}

/// `Mutations`: the request's and the response's changes, each made in order.
#[derive(Debug, Default, PartialEq)]
pub struct HeaderMutations {
    pub request: Vec<HeaderMutationStep>,
    pub response: Vec<HeaderMutationStep>,
}

impl HeaderMutations {
    /// Whether a value needs the stream to render.
    pub fn formats(&self) -> bool {
        self.request
            .iter()
            .chain(&self.response)
            .any(|s| matches!(s, HeaderMutationStep::Append(p) if p.formats()))
    }
}

/// One `HeaderMutation`.
#[derive(Debug, PartialEq)]
pub enum HeaderMutationStep {
    /// `append`: one header value option (a parser of one addition).
    Append(Arc<crate::router::HeaderParser>),
    /// `remove`.
    Remove(http::HeaderName),
    /// `remove_on_match`: every header whose name matches.
    RemoveOnMatch(StringMatch),
}

/// `envoy.filters.http.stateful_session`: the upstream host a session's request names is
/// picked when the cluster has it, and a response from another host names that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSession {
    /// Where the session's host is kept.
    pub state: SessionState,
    /// `strict`: a request whose session host the cluster does not have healthy is answered
    /// 503, instead of going to another host.
    pub strict: bool,
}

/// Where a session's upstream host is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// `envoy.http.stateful_session.cookie`: a cookie named `name`, set for `ttl` (zero: a
    /// session cookie) on `path`, with `attributes`; only requests under `path` have a session.
    Cookie {
        name: String,
        ttl: std::time::Duration,
        path: String,
        attributes: Vec<(String, String)>,
    },
    /// `envoy.http.stateful_session.header`: a header, both ways.
    Header { name: http::HeaderName },
}

/// `envoy.filters.http.basic_auth`: requests must carry the `Basic` credentials of one of its
/// users (a route's `BasicAuthPerRoute` users replacing them).
#[derive(Debug, PartialEq)]
pub struct BasicAuth {
    /// `users`.
    pub users: Arc<BasicAuthUsers>,
    /// `forward_username_header`: the user's name goes upstream in it.
    pub forward_username_header: Option<http::HeaderName>,
    /// `authentication_header` (default `authorization`): where the credentials are.
    pub authentication_header: http::HeaderName,
}

/// htpasswd users: each name with its password's base64 SHA-1 (`{SHA}`).
#[derive(Debug, PartialEq)]
pub struct BasicAuthUsers(pub std::collections::HashMap<String, String>);

/// Why a request's `Basic` credentials are refused, as Envoy tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicAuthDenial {
    Missing,
    Scheme,
    Format,
    Invalid,
}

impl BasicAuthDenial {
    /// The reply's body.
    pub fn body(self) -> &'static str {
        match self {
            BasicAuthDenial::Missing => {
                "User authentication failed. Missing username and password."
            }
            BasicAuthDenial::Scheme => {
                "User authentication failed. Expected 'Basic' authentication scheme."
            }
            BasicAuthDenial::Format => {
                "User authentication failed. Invalid basic credential format."
            }
            BasicAuthDenial::Invalid => {
                "User authentication failed. Invalid username/password combination."
            }
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`.
    pub fn details(self) -> &'static str {
        match self {
            BasicAuthDenial::Missing => "no_credential_for_basic_auth",
            BasicAuthDenial::Scheme => "invalid_scheme_for_basic_auth",
            BasicAuthDenial::Format => "invalid_format_for_basic_auth",
            BasicAuthDenial::Invalid => "invalid_credential_for_basic_auth",
        }
    }
}

impl BasicAuthUsers {
    /// The user whose credentials the header's `value` carries (`Basic <base64 name:password>`),
    /// or why there is none.
    pub fn authenticate(&self, value: Option<&[u8]>) -> Result<String, BasicAuthDenial> {
        use base64::Engine;
        let value = value.ok_or(BasicAuthDenial::Missing)?;
        let token = value
            .strip_prefix(b"Basic ")
            .ok_or(BasicAuthDenial::Scheme)?;
        // Padding or not, as Envoy decodes it; what does not decode holds no colon.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine.decode(token).unwrap_or_default();
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(BasicAuthDenial::Format)?;
        let (name, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let name = std::str::from_utf8(name).map_err(|_| BasicAuthDenial::Invalid)?;
        let stored = self.0.get(name).ok_or(BasicAuthDenial::Invalid)?;
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password);
        let hashed = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        if hashed == *stored {
            Ok(name.to_string())
        } else {
            Err(BasicAuthDenial::Invalid)
        }
    }
}

/// `envoy.filters.http.ext_authz`: each request is checked with an authorization service (gRPC
/// `envoy.service.auth.v3.Authorization/Check`, or a plain HTTP request) before it goes on.
#[derive(Debug, PartialEq)]
pub struct ExtAuthz {
    /// `grpc_service` or `http_service`.
    pub service: AuthzService,
    /// The check's timeout: `grpc_service.timeout` (default 200 ms) or
    /// `http_service.server_uri.timeout`.
    pub timeout: Duration,
    /// `failure_mode_allow`: a failed check lets the request through.
    pub failure_mode_allow: bool,
    /// `failure_mode_allow_header_add`: such a request carries
    /// `x-envoy-auth-failure-mode-allowed: true`.
    pub failure_mode_allow_header_add: bool,
    /// `status_on_error` (default 403).
    pub status_on_error: http::StatusCode,
    /// `stat_prefix`: the filter's stats under `http.<hcm>.ext_authz.<stat_prefix>.`.
    pub stat_prefix: String,
    /// `allowed_headers` (none: every header, for gRPC; the defaults only, for HTTP).
    pub allowed_headers: Option<Vec<StringMatch>>,
    /// `disallowed_headers`.
    pub disallowed_headers: Vec<StringMatch>,
    /// `filter_enabled` (unset: on).
    pub enabled: Option<crate::runtime::RuntimeFraction>,
    /// `clear_route_cache`: headers the service set or added pick the route again.
    pub clear_route_cache: bool,
    /// `charge_cluster_response_stats` (default true): a denial's status counts on the route's
    /// cluster.
    pub charge_cluster_response_stats: bool,
    /// `route_metadata_context_namespaces`: the route's metadata of these namespaces goes with
    /// a gRPC check.
    pub route_metadata_namespaces: Vec<String>,
    /// `filter_enabled_metadata`: only requests whose dynamic metadata matches are checked
    /// (Istio's CUSTOM action reads the RBAC filter's shadow verdict).
    pub enabled_metadata: Option<crate::metadata::MetadataMatcher>,
    /// `deny_at_disable`: a request the filter is turned off for is answered
    /// `status_on_error` instead.
    pub deny_at_disable: Option<crate::runtime::RuntimeFlag>,
    /// `with_request_body`: the check carries the start of the request body.
    pub with_request_body: Option<AuthzBody>,
}

/// `with_request_body`.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct AuthzBody {
    /// `max_request_bytes`: the body bytes a check carries (and, without
    /// `allow_partial_message`, the longest body let through: longer ones are answered 413).
    pub max_request_bytes: u32,
    /// `allow_partial_message`: a longer body is checked by its first `max_request_bytes`.
    pub allow_partial_message: bool,
    /// `pack_as_bytes`: the gRPC check carries it as `raw_body` rather than `body`.
    pub pack_as_bytes: bool,
}

/// Where the checks go.
#[derive(Debug, PartialEq)]
pub enum AuthzService {
    /// `grpc_service.envoy_grpc`, with the service's `initial_metadata`.
    Grpc {
        cluster: String,
        authority: String,
        metadata: GrpcMetadata,
    },
    /// `http_service`.
    Http(Box<HttpAuthz>),
}

/// `http_service`: the check is a request to `cluster` of the client's method, with the
/// client's path after `path_prefix` (or `path_override`), and the headers allowed.
#[derive(Debug, PartialEq)]
pub struct HttpAuthz {
    /// `server_uri.cluster`.
    pub cluster: String,
    /// `path_prefix`.
    pub path_prefix: String,
    /// `path_override`: the path of every check, instead of the client's.
    pub path_override: Option<String>,
    /// `authorization_request.headers_to_add` (fixed values).
    pub headers_to_add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `authorization_response.allowed_upstream_headers`: set on the request when allowed.
    pub upstream_headers: Vec<StringMatch>,
    /// `authorization_response.allowed_upstream_headers_to_append`.
    pub upstream_headers_to_append: Vec<StringMatch>,
    /// `authorization_response.allowed_client_headers`: on a denial's reply (none: every
    /// header but the host).
    pub client_headers: Option<Vec<StringMatch>>,
    /// `authorization_response.allowed_client_headers_on_success`: on the response.
    pub client_headers_on_success: Vec<StringMatch>,
    /// `retry_policy`: the check is retried as the router retries (Envoy's
    /// `convertCoreToRouteRetryPolicy`).
    pub retry: Option<Arc<crate::router::retry::RetryPolicy>>,
}

/// `ExtAuthzPerRoute`.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtAuthzPerRoute {
    /// `disabled: true`: no check for the route.
    Disabled,
    /// `check_settings`.
    Check {
        /// `context_extensions`, merged over the less specific levels'.
        extensions: Vec<(String, String)>,
        /// `disable_request_body_buffering`: checked without the body (read from the most
        /// specific level only, as Envoy reads it).
        disable_request_body_buffering: bool,
    },
}

/// `envoy.filters.http.ratelimit`: each request's descriptors (from the route's, the virtual
/// host's or the filter's `rate_limits`) go to a rate limit service (gRPC
/// `envoy.service.ratelimit.v3.RateLimitService`), which lets the request through or has it
/// answered with 429.
#[derive(Debug, PartialEq)]
pub struct HttpRateLimit {
    /// `domain`.
    pub domain: String,
    /// `stage`: only `rate_limits` of the same stage apply.
    pub stage: u32,
    /// `request_type`: which requests the filter acts on, by `x-envoy-internal`.
    pub request_type: RateLimitRequestType,
    /// `timeout` of the call (default 20 ms; 0: none).
    pub timeout: Option<Duration>,
    /// `failure_mode_deny`: a failed call answers the request (`status_on_error`) instead of
    /// letting it through.
    pub failure_mode_deny: bool,
    /// `rate_limit_service.grpc_service.envoy_grpc.cluster_name`.
    pub cluster: String,
    /// `rate_limit_service.grpc_service.envoy_grpc.authority` (default: the cluster's name).
    pub authority: String,
    /// `rate_limit_service.grpc_service.initial_metadata`.
    pub metadata: GrpcMetadata,
    /// `enable_x_ratelimit_headers` DRAFT_VERSION_03: `x-ratelimit-*` from the service's
    /// descriptor statuses.
    pub x_ratelimit_headers: bool,
    /// Not `disable_x_envoy_ratelimited_header`: `x-envoy-ratelimited: true` on the 429.
    pub x_envoy_ratelimited: bool,
    /// `rate_limited_status` (default 429; below 400 becomes 429).
    pub rate_limited_status: http::StatusCode,
    /// `status_on_error` (default 500).
    pub status_on_error: http::StatusCode,
    /// `response_headers_to_add`: on the replies to limited requests.
    pub response_headers: Arc<crate::router::HeaderParser>,
    /// `stat_prefix`: the cluster's stats go under `ratelimit.<stat_prefix>.` instead of
    /// `ratelimit.`.
    pub stat_prefix: String,
    /// `filter_enabled` (unset: runtime `ratelimit.http_filter_enabled`, 100%).
    pub enabled: Option<crate::runtime::RuntimeFraction>,
    /// `filter_enforced` (unset: runtime `ratelimit.http_filter_enforcing`, 100%).
    pub enforced: Option<crate::runtime::RuntimeFraction>,
    /// `rate_limits`: the filter's own descriptors, instead of the routes'.
    pub rate_limits: Vec<RateLimitPolicy>,
}

/// The rate limit filter's `request_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitRequestType {
    Both,
    Internal,
    External,
}

/// Which virtual host `rate_limits` a request's descriptors include (`vh_rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhRateLimits {
    /// The virtual host's unless the route has its own.
    #[default]
    Override,
    /// The virtual host's as well as the route's.
    Include,
    /// Never the virtual host's.
    Ignore,
}

/// `RateLimitPerRoute`: a route's choices for the rate limit filter.
#[derive(Debug, PartialEq)]
pub struct RateLimitPerRoute {
    /// `vh_rate_limits`.
    pub vh_rate_limits: VhRateLimits,
    /// `rate_limits`: descriptors instead of the route's, the virtual host's and the filter's.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `domain`, instead of the filter's.
    pub domain: Option<String>,
}

/// `envoy.filters.http.header_to_metadata` (the filter's configuration, or a route's, which
/// replaces it whole).
#[derive(Debug, PartialEq)]
pub struct HeaderToMetadata {
    /// `request_rules`, in order (a later rule wins a key).
    pub request_rules: Vec<MetadataRule>,
    /// `response_rules`.
    pub response_rules: Vec<MetadataRule>,
    /// `stat_prefix`: stats under `http_filter_name.<stat_prefix>.` (none: no stats).
    pub stat_prefix: Option<String>,
}

/// A header_to_metadata `Rule`.
#[derive(Debug, PartialEq)]
pub struct MetadataRule {
    /// `header` or `cookie`.
    pub source: MetadataSource,
    /// `on_header_present`.
    pub on_present: Option<MetadataKeyValue>,
    /// `on_header_missing` (always with a value).
    pub on_missing: Option<MetadataKeyValue>,
    /// `remove`: the header does not go on (headers only).
    pub remove: bool,
}

/// Where a header_to_metadata rule reads its value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataSource {
    /// `header`: every value, joined with `,`.
    Header(http::HeaderName),
    /// `header` naming a pseudo-header (`:path`, `:authority`, `:method`, `:scheme`,
    /// `:status`).
    Pseudo(String),
    /// `cookie`: the cookie's value (an empty one is missing).
    Cookie(String),
}

/// A header_to_metadata `KeyValuePair`.
#[derive(Debug, PartialEq)]
pub struct MetadataKeyValue {
    /// `metadata_namespace` (default `envoy.filters.http.header_to_metadata`).
    pub namespace: String,
    /// `key`.
    pub key: String,
    /// `value`: what is written instead of the header's value (none: the header's).
    pub value: Option<String>,
    /// `regex_value_rewrite`: the header's value rewritten (every match replaced).
    pub rewrite: Option<(crate::pattern::Regex, String)>,
    /// `type`.
    pub kind: MetadataValueType,
    /// `encode: BASE64`: the value is decoded first.
    pub base64: bool,
}

/// A header_to_metadata `ValueType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataValueType {
    /// `STRING`.
    String,
    /// `NUMBER`: the value read as a double.
    Number,
    /// `PROTOBUF_VALUE`: the value is a serialized `google.protobuf.Value`.
    ProtobufValue,
}

/// One of an HCM's `http_filters` before the router.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFilter {
    /// `name`: what routes' `typed_per_filter_config` call it.
    pub name: String,
    /// `disabled`: the filter runs only on routes whose `typed_per_filter_config` names it.
    pub disabled: bool,
    /// `typed_config`.
    pub config: HttpFilterConfig,
}

/// `envoy.filters.http.local_ratelimit`, as the filter's own configuration or a route's.
#[derive(Debug, PartialEq)]
pub struct HttpLocalRateLimit {
    /// `stat_prefix`: stats go under `<stat_prefix>.http_local_rate_limit.`.
    pub stat_prefix: String,
    /// `status` (default 429).
    pub status: http::StatusCode,
    /// `token_bucket`: the default bucket (none: only descriptors limit).
    pub bucket: Option<TokenBucket>,
    /// `filter_enabled` (unset: 0%, the filter does nothing).
    pub enabled: Option<crate::runtime::RuntimeFraction>,
    /// `filter_enforced` (unset: 0%, limited requests are counted and let through).
    pub enforced: Option<crate::runtime::RuntimeFraction>,
    /// `request_headers_to_add_when_not_enforced`.
    pub request_headers_not_enforced: Arc<crate::router::HeaderParser>,
    /// `response_headers_to_add`: on the replies to limited requests.
    pub response_headers: Arc<crate::router::HeaderParser>,
    /// `descriptors`, each with its own bucket.
    pub descriptors: Vec<LocalDescriptor>,
    /// `rate_limits`: how a request's descriptors are made, instead of the route's and the
    /// virtual host's.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `stage`: the routes' `rate_limits` of this stage apply.
    pub stage: u32,
    /// `vh_rate_limits`: whether the virtual host's `rate_limits` apply too.
    pub vh_rate_limits: VhRateLimits,
    /// `local_rate_limit_per_downstream_connection`: buckets per connection, not shared.
    pub per_connection: bool,
    /// `enable_x_ratelimit_headers` DRAFT_VERSION_03: `x-ratelimit-*` on responses.
    pub x_ratelimit_headers: bool,
    /// `always_consume_default_token_bucket` (default true): the default bucket is taken from
    /// even when a descriptor matched.
    pub always_consume_default: bool,
    /// `max_dynamic_descriptors` (20): how many values' buckets each wildcard descriptor keeps,
    /// the least recently used going first.
    pub max_dynamic_descriptors: usize,
}

/// `envoy.filters.http.fault` (`HTTPFault`), as the filter's own configuration or a route's.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFault {
    /// `delay`.
    pub delay: Option<FaultDelay>,
    /// `abort`.
    pub abort: Option<FaultAbort>,
    /// `headers`: faults apply only to requests matching all of them.
    pub headers: Vec<HeaderMatch>,
    /// `downstream_nodes`: faults apply only to requests whose
    /// `x-envoy-downstream-service-node` is one of them (empty: any request).
    pub downstream_nodes: Vec<String>,
    /// `max_active_faults` (none: no limit).
    pub max_active_faults: Option<u64>,
    /// The runtime keys (Envoy's `fault.http.*` unless the configuration names others).
    pub keys: FaultRuntimeKeys,
    /// Not `disable_downstream_cluster_stats`: faults are also counted under the
    /// `x-envoy-downstream-service-cluster` of the request.
    pub downstream_cluster_stats: bool,
}

/// The runtime keys a fault reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRuntimeKeys {
    /// `delay_percent_runtime`.
    pub delay_percent: String,
    /// `abort_percent_runtime`.
    pub abort_percent: String,
    /// `delay_duration_runtime`.
    pub delay_duration: String,
    /// `abort_http_status_runtime`.
    pub abort_http_status: String,
    /// `abort_grpc_status_runtime`.
    pub abort_grpc_status: String,
    /// `max_active_faults_runtime`.
    pub max_active_faults: String,
}

/// `FaultDelay`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    /// `fixed_delay`; `None`: `header_delay` (`x-envoy-fault-delay-request`, milliseconds).
    pub fixed: Option<Duration>,
    /// `percentage` (with `header_delay`, `x-envoy-fault-delay-request-percentage` may lower it).
    pub percentage: crate::runtime::Fraction,
}

/// `FaultAbort` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    /// `http_status` (200 for a `grpc_status` abort).
    pub http_status: u16,
    /// `grpc_status`: a gRPC request gets this `grpc-status` (others a 200).
    pub grpc_status: Option<u32>,
    /// `percentage`.
    pub percentage: crate::runtime::Fraction,
    /// `response_body` (default `fault filter abort`).
    pub body: bytes::Bytes,
}

/// `envoy.type.v3.TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// `max_tokens`: the bucket's size, and what it starts with.
    pub max_tokens: u32,
    /// `tokens_per_fill` (default 1).
    pub tokens_per_fill: u32,
    /// `fill_interval`.
    pub fill_interval: Duration,
}

/// A `LocalRateLimitDescriptor`: the requests whose descriptor has these entries share a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDescriptor {
    /// `entries`: key and value (an empty value matches any value of the key: a wildcard, with
    /// a bucket of its own for each set of values).
    pub entries: Vec<(String, String)>,
    /// `token_bucket`.
    pub bucket: TokenBucket,
    /// `shadow_mode`: counted, never limits.
    pub shadow: bool,
}

/// A descriptor value as configured: text, in which `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`
/// stands for the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorValue(pub Vec<ValuePart>);

/// A piece of a [`DescriptorValue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    Text(String),
    RemoteAddress,
}

/// A route's `RateLimit`: the actions that make one descriptor for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    /// `stage`: the filters of this stage use it.
    pub stage: u32,
    /// `actions`, in order; a request for which one yields nothing has no descriptor.
    pub actions: Vec<RateLimitAction>,
    /// `x_ratelimit_option`: whether the `x-ratelimit-*` headers its descriptor's status
    /// makes are written (`Some(true)`: `DRAFT_VERSION_03`, `Some(false)`: `OFF`; unset:
    /// as the filter's `enable_x_ratelimit_headers`).
    pub x_ratelimit: Option<bool>,
    /// `hits_addend`: the hits its descriptor counts for (a rate limit filter's own lists
    /// only: Envoy reads none on routes and virtual hosts).
    pub hits_addend: Option<HitsAddend>,
    /// `apply_on_stream_done`: the global filter sends its descriptor once the stream is
    /// done, without waiting for the answer; a local filter's own list never applies it.
    pub on_stream_done: bool,
    /// `limit.dynamic_metadata.metadata_key` (namespace, path): a struct there with a number
    /// `requests_per_unit` and a `unit` name is the descriptor's limit at the service.
    pub limit: Option<(String, Vec<String>)>,
}

/// `RateLimit.hits_addend`.
#[derive(Debug, Clone, PartialEq)]
pub enum HitsAddend {
    /// `number`.
    Number(u64),
    /// `format`: one operator, rendered for the request; a value that is not a number from
    /// 0 to 10⁹ drops the descriptor, as in Envoy.
    Format(Arc<crate::access_log::Format>),
}

/// One `RateLimit.Action`.
#[derive(Debug, Clone, PartialEq)]
pub enum RateLimitAction {
    /// `request_headers`: (`descriptor_key`, the header's value; pseudo-headers too).
    RequestHeaders {
        header: HeaderKey,
        key: String,
        skip_if_absent: bool,
    },
    /// `remote_address`: (`remote_address`, the trusted client address).
    RemoteAddress,
    /// `masked_remote_address`: (`masked_remote_address`, the client's network).
    MaskedRemoteAddress { v4: u8, v6: u8 },
    /// `generic_key`: (`descriptor_key` or `generic_key`, `descriptor_value`).
    GenericKey { key: String, value: String },
    /// `header_value_match`: (`descriptor_key` or `header_match`, `descriptor_value`) when the
    /// headers match as `expect_match` says.
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
    /// `remote_address_match`: (`descriptor_key` or `remote_address_match`,
    /// `descriptor_value`) when the client address is in `ranges` (or, inverted, is not).
    RemoteAddressMatch {
        key: String,
        value: DescriptorValue,
        ranges: Vec<CidrRange>,
        invert: bool,
    },
    /// `query_parameter_value_match`, like `header_value_match` over query parameters.
    QueryValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        params: Vec<QueryMatch>,
    },
}

/// `envoy.filters.http.health_check`: which requests are the server's health checks, and
/// whether they go upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `pass_through_mode`: health checks go upstream unless the server fails them.
    pub pass_through: bool,
    /// `headers`: a request matching all of them is a health check.
    pub headers: Vec<HeaderMatch>,
}

/// Istio's `istio.alpn`: the ALPN list upstream TLS offers for a request, by the HTTP
/// protocol the request goes upstream in, instead of the cluster's (none: no override). Each
/// list is made once, and shared by the requests and the pools that use it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IstioAlpn {
    pub http10: Option<Arc<[Vec<u8>]>>,
    pub http11: Option<Arc<[Vec<u8>]>>,
    pub http2: Option<Arc<[Vec<u8>]>>,
}

/// Istio's peer metadata exchange over HTTP headers (`x-envoy-peer-metadata-id`,
/// `x-envoy-peer-metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// `downstream_discovery` reads the headers of requests: they are removed before the
    /// request goes on.
    pub downstream_headers: bool,
    /// `upstream_discovery` reads the headers of responses: removed likewise.
    pub upstream_headers: bool,
    /// `downstream_propagation`: responses carry this proxy's identity, when the request
    /// carried the peer's (`skip_external_clusters` with it).
    pub downstream_propagation: Option<bool>,
    /// `upstream_propagation`: requests carry this proxy's identity (`skip_external_clusters`
    /// with it).
    pub upstream_propagation: Option<bool>,
    /// `additional_labels`: node labels sent besides Istio's four.
    pub additional_labels: Vec<String>,
}

/// The `istio` filter metadata of a cluster, as Istio's filters read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IstioClusterMetadata {
    /// `alpn_override: "false"`: `istio.alpn` leaves this cluster's ALPN alone.
    pub no_alpn_override: bool,
    /// `disable_mx: true`: no peer metadata headers are sent to it.
    pub disable_mx: bool,
    /// `external: true`: a service outside the mesh.
    pub external: bool,
}

/// `envoy.extensions.filters.http.decompressor.v3.Decompressor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decompressor {
    /// `decompressor_library.name`: part of the stat names.
    pub library_name: String,
    /// `decompressor_library.typed_config`.
    pub library: DecompressorLibrary,
    /// `request_direction_config`: decompress requests (default on).
    pub request: Option<DecompressionDirection>,
    /// `request_direction_config.advertise_accept_encoding` (default true): with response
    /// decompression on, the library's encoding is added to the request's `accept-encoding`.
    pub advertise_accept_encoding: bool,
    /// `response_direction_config`: decompress responses (default on).
    pub response: Option<DecompressionDirection>,
}

/// `Decompressor.CommonDirectionConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecompressionDirection {
    /// `ignore_no_transform_header`: decompress despite `cache-control: no-transform`.
    pub ignore_no_transform_header: bool,
    /// `enabled` with a runtime key: read per stream.
    pub runtime: Option<crate::runtime::RuntimeFlag>,
}

/// A decompression library and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecompressorLibrary {
    /// `envoy.compression.gzip.decompressor`.
    Gzip {
        /// `window_bits` 9–15 (default 15).
        window_bits: u8,
        /// `max_inflate_ratio` (default 100): output beyond this many times the input is an
        /// error.
        max_inflate_ratio: u64,
        /// `chunk_size` (default 4096).
        chunk_size: usize,
    },
    /// `envoy.compression.brotli.decompressor`.
    Brotli {
        /// `chunk_size` (default 4096).
        chunk_size: usize,
    },
    /// `envoy.compression.zstd.decompressor`.
    Zstd {
        /// `chunk_size` (default 4096).
        chunk_size: usize,
    },
}

impl DecompressorLibrary {
    /// The `content-encoding` token it decodes.
    pub fn encoding(&self) -> &'static str {
        match self {
            DecompressorLibrary::Gzip { .. } => "gzip",
            DecompressorLibrary::Brotli { .. } => "br",
            DecompressorLibrary::Zstd { .. } => "zstd",
        }
    }

    /// The library's part of the stat names.
    pub fn stat_prefix(&self) -> &'static str {
        match self {
            DecompressorLibrary::Gzip { .. } => "gzip",
            DecompressorLibrary::Brotli { .. } => "brotli",
            DecompressorLibrary::Zstd { .. } => "zstd",
        }
    }
}

/// `envoy.extensions.filters.http.compressor.v3.Compressor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compressor {
    /// `compressor_library.name`: part of the stat names.
    pub library_name: String,
    /// `compressor_library.typed_config`.
    pub library: CompressorLibrary,
    /// `response_direction_config` (or the deprecated top-level fields); `None` when disabled.
    pub response: Option<CompressionDirection>,
    /// `response_direction_config.disable_on_etag_header`.
    pub disable_on_etag_header: bool,
    /// `response_direction_config.remove_accept_encoding_header`.
    pub remove_accept_encoding_header: bool,
    /// Whether `response_direction_config` was given: Envoy then counts the response stats
    /// under `response.` (the deprecated fields count them at the filter's root).
    pub response_direction_config: bool,
    /// `response_direction_config.weaken_etag_on_compress`: a strong `etag` of a compressed
    /// response is made weak rather than removed.
    pub weaken_etag_on_compress: bool,
    /// `response_direction_config.uncompressible_response_codes`.
    pub uncompressible_response_codes: Vec<u16>,
    /// `request_direction_config`; `None` when disabled (the default).
    pub request: Option<CompressionDirection>,
}

/// `CommonDirectionConfig`: which messages one direction compresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionDirection {
    /// `min_content_length` (default 30): a shorter `content-length` is not compressed.
    pub min_content_length: u64,
    /// `content_type`: media types (without parameters) compressed; Envoy's list by default.
    pub content_types: Vec<String>,
    /// `enabled` (or `runtime_enabled`) with a runtime key: read per stream.
    pub runtime: Option<crate::runtime::RuntimeFlag>,
}

/// A compression library and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressorLibrary {
    /// `envoy.compression.gzip.compressor`.
    Gzip {
        /// zlib level 1–9 (`compression_level`; `DEFAULT_COMPRESSION` is zlib's 6).
        level: u32,
        /// `window_bits` 9–15 (default 12).
        window_bits: u8,
        /// `chunk_size` (default 4096): the output buffer.
        chunk_size: usize,
    },
    /// `envoy.compression.brotli.compressor`.
    Brotli {
        /// `quality` 0–11 (default 3).
        quality: u32,
        /// `window_bits` 10–24 (default 18).
        window_bits: u32,
        /// `input_block_bits` 16–24 (default 24).
        input_block_bits: u32,
        /// `disable_literal_context_modeling`.
        disable_literal_context_modeling: bool,
        /// `encoder_mode`: 0 default, 1 generic, 2 text, 3 font.
        mode: u32,
        /// `chunk_size` (default 4096).
        chunk_size: usize,
    },
    /// `envoy.compression.zstd.compressor`.
    Zstd {
        /// `compression_level` (default 3).
        level: i32,
        /// `enable_checksum`.
        checksum: bool,
        /// `strategy` (0: the library's default).
        strategy: u32,
        /// `chunk_size` (default 4096).
        chunk_size: usize,
    },
}

impl CompressorLibrary {
    /// The `content-encoding` token.
    pub fn encoding(&self) -> &'static str {
        match self {
            CompressorLibrary::Gzip { .. } => "gzip",
            CompressorLibrary::Brotli { .. } => "br",
            CompressorLibrary::Zstd { .. } => "zstd",
        }
    }

    /// The library's part of the stat names.
    pub fn stat_prefix(&self) -> &'static str {
        match self {
            CompressorLibrary::Gzip { .. } => "gzip",
            CompressorLibrary::Brotli { .. } => "brotli",
            CompressorLibrary::Zstd { .. } => "zstd",
        }
    }
}

/// `envoy.extensions.filters.http.router.v3.Router`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// `dynamic_stats` (default true): per-code cluster stats.
    pub dynamic_stats: bool,
    /// `suppress_envoy_headers`: no `x-envoy-upstream-service-time` / expected-timeout headers.
    pub suppress_envoy_headers: bool,
    /// `start_child_span`: with a tracer, each upstream request gets a span of its own (as
    /// with the tracer's `spawn_upstream_span`).
    pub start_child_span: bool,
}

/// An access log sink with its format.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// Where lines go.
    pub sink: AccessLogSink,
    /// The line format.
    pub format: Arc<Format>,
    /// `filter`: which streams get a line (none: all).
    pub filter: Option<LogFilter>,
}

/// A connection manager's `local_reply_config`.
#[derive(Debug, PartialEq)]
pub struct LocalReplyConfig {
    /// `mappers`, tried in order; the first whose filter passes applies.
    pub mappers: Vec<ReplyMapper>,
    /// `body_format` (none: the body as it is, `text/plain`).
    pub body_format: Option<BodyFormat>,
}

/// A `ResponseMapper`.
#[derive(Debug, PartialEq)]
pub struct ReplyMapper {
    /// `filter`: which replies it rewrites (an access log filter).
    pub filter: LogFilter,
    /// `status_code`.
    pub status: Option<http::StatusCode>,
    /// `body`.
    pub body: Option<bytes::Bytes>,
    /// `body_format_override`.
    pub body_format: Option<BodyFormat>,
    /// `headers_to_add`.
    pub headers: crate::router::HeaderParser,
}

/// A local reply's `body_format`: the body made by a format (`%LOCAL_REPLY_BODY%` is the body
/// as it was), and its content type.
#[derive(Debug, PartialEq)]
pub struct BodyFormat {
    /// The format.
    pub format: Arc<Format>,
    /// `content_type`, else `text/plain` or, for a `json_format`, `application/json`.
    pub content_type: http::HeaderValue,
}

/// An access log `filter`.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFilter {
    /// `status_code_filter`: the response code (0 without one) against a value.
    StatusCode(Comparison),
    /// `duration_filter`: the stream's duration in milliseconds against a value.
    Duration(Comparison),
    /// `response_flag_filter`: any of these flags set (any flag when empty).
    ResponseFlags(Vec<String>),
    /// `header_filter`: a request header matcher.
    Header(HeaderMatch),
    /// `extension_filter` `envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter`:
    /// the expression holds for the stream (an error or a value that is not a bool does not).
    Cel(Arc<crate::cel::Expr>),
    /// `and_filter`.
    And(Vec<LogFilter>),
    /// `or_filter`.
    Or(Vec<LogFilter>),
    /// `not_health_check_filter`: streams the health check filter did not answer or mark.
    NotHealthCheck,
    /// `metadata_filter`: the stream's dynamic metadata at `matcher`'s path matches it (its
    /// `invert` ignored, as Envoy's filter ignores it), or, where there is nothing (or no
    /// matcher), `match_if_key_not_found` (default true).
    Metadata {
        /// `matcher`.
        matcher: Option<crate::metadata::MetadataMatcher>,
        /// `match_if_key_not_found`.
        if_not_found: bool,
    },
    /// `traceable_filter`: streams whose trace the service forced (`x-envoy-force-trace` on
    /// an internal request, or a request id that says so) with `tracing` configured.
    Traceable,
    /// `runtime_filter`: a share of streams, drawn from the request id (the first eight hex
    /// digits of a UUID) unless `use_independent_randomness`.
    Runtime {
        /// `runtime_key` and `percent_sampled`.
        fraction: crate::runtime::RuntimeFraction,
        /// `use_independent_randomness`.
        independent: bool,
    },
    /// `grpc_status_filter`: the stream's gRPC status (trailers, else headers, else from the
    /// HTTP status) among `statuses`, or not with `exclude`.
    GrpcStatus {
        /// `statuses`, as gRPC codes.
        statuses: Vec<u32>,
        /// `exclude`.
        exclude: bool,
    },
    /// `log_type_filter`: the line's access log type among `types`, or not with `exclude`.
    LogType {
        /// `types`, by Envoy's names (`DownstreamEnd`, `TcpConnectionEnd`, …).
        types: Vec<String>,
        /// `exclude`.
        exclude: bool,
    },
}

/// A `ComparisonFilter`: `op` and a value the runtime may set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// `op`.
    pub op: ComparisonOp,
    /// `value.default_value`.
    pub value: u32,
    /// `value.runtime_key` (empty: none).
    pub runtime_key: String,
}

/// `ComparisonFilter.Op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComparisonOp {
    /// `EQ`.
    Eq,
    /// `GE`.
    Ge,
    /// `LE`.
    Le,
    /// `NE`.
    Ne,
}

impl Comparison {
    /// Whether `n` passes under the runtime values in force (Envoy's `ComparisonFilter`).
    pub fn passes(&self, n: u64, runtime: &crate::runtime::Values) -> bool {
        let v = runtime.integer(&self.runtime_key, u64::from(self.value));
        match self.op {
            ComparisonOp::Eq => n == v,
            ComparisonOp::Ge => n >= v,
            ComparisonOp::Le => n <= v,
            ComparisonOp::Ne => n != v,
        }
    }
}

/// The response flags Envoy's `response_flag_filter` takes.
pub const RESPONSE_FLAG_NAMES: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogSink {
    /// `envoy.access_loggers.stdout`.
    Stdout,
    /// `envoy.access_loggers.stderr`.
    Stderr,
    /// `envoy.access_loggers.file`.
    File(String),
    /// `envoy.access_loggers.open_telemetry`: records exported over OTLP gRPC (the log's
    /// `format` is not used: the record's body and attributes are formats of their own).
    OpenTelemetry(Arc<OtelAccessLog>),
}

/// A gRPC service's `initial_metadata`: headers every call carries.
pub type GrpcMetadata = Vec<(http::HeaderName, http::HeaderValue)>;

/// `envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig` with a
/// gRPC service.
#[derive(Debug, PartialEq)]
pub struct OtelAccessLog {
    /// The `envoy_grpc` cluster the records go to, and the authority they are sent with.
    pub cluster: String,
    pub authority: String,
    /// The gRPC service's `initial_metadata`.
    pub metadata: GrpcMetadata,
    /// The gRPC service's `timeout` (none: no limit).
    pub timeout: Option<std::time::Duration>,
    /// `log_name` (or `common_config.log_name`): the resource's `log_name`.
    pub log_name: String,
    /// Not `disable_builtin_labels`: the resource names the log and the node (`log_name`,
    /// `zone_name`, `cluster_name`, `node_name`).
    pub builtin_labels: bool,
    /// `resource_attributes`, over the built-in labels of the same keys.
    pub resource_attributes: Vec<envoy_types::pb::opentelemetry::proto::common::v1::KeyValue>,
    /// `body`, formatted for each stream.
    pub body: Option<OtelValue>,
    /// `attributes`, formatted for each stream, in order.
    pub attributes: Vec<(String, OtelValue)>,
    /// `buffer_flush_interval` (default 1 s): how long records wait to be sent.
    pub flush_interval: std::time::Duration,
    /// `buffer_size_bytes` (default 16 KiB): records are sent as soon as they hold this much.
    pub buffer_size: usize,
    /// The stats' root: `access_logs.open_telemetry_access_log.[<stat_prefix>.]`.
    pub stat_prefix: String,
}

/// A value of an OpenTelemetry access log's body or attributes: a format rendered for each
/// stream, or a list or key-value list of them.
#[derive(Debug, PartialEq)]
pub enum OtelValue {
    Text(Format),
    List(Vec<OtelValue>),
    Map(Vec<(String, OtelValue)>),
}

/// The upstream HTTP protocol of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// The downstream request's protocol.
    Downstream,
    /// `auto_config`: HTTP/2 when the upstream's TLS handshake chooses `h2` by ALPN, else
    /// HTTP/1.1.
    Auto,
}

/// HTTP/2 settings (a cluster's for upstream connections, a connection manager's for its
/// clients).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Http2Options {
    /// `max_concurrent_streams`: a cap on streams per connection on top of the peer's.
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`; unset, it follows the cluster's buffer limit so a slow
    /// downstream bounds what an upstream stream may send ahead.
    pub initial_stream_window_size: Option<u32>,
    /// `initial_connection_window_size`; unset, sixteen stream windows.
    pub initial_connection_window_size: Option<u32>,
    /// `connection_keepalive`.
    pub keepalive: Option<Http2Keepalive>,
    /// `max_consecutive_inbound_frames_with_empty_payload` (default 1; downstream only).
    pub max_consecutive_empty_frames: u32,
    /// `max_inbound_priority_frames_per_stream` (default 100; downstream only).
    pub max_priority_frames_per_stream: u32,
    /// `max_inbound_window_update_frames_per_data_frame_sent` (default 10; downstream only).
    pub max_window_update_frames_per_data_frame: u32,
    /// `max_outbound_frames` (default 10000; downstream only).
    pub max_outbound_frames: u32,
    /// `max_outbound_control_frames` (default 1000; downstream only).
    pub max_outbound_control_frames: u32,
    /// `allow_connect`: extended CONNECT (RFC 8441) is announced and taken as an upgrade
    /// (downstream only).
    pub allow_connect: bool,
}

/// `connection_keepalive`: PINGs every `interval` (plus up to `jitter` of it, at random); a
/// connection whose PING is not answered within `timeout` is closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Http2Keepalive {
    /// `interval` (zero in Envoy: no PINGs, kept as `None` here).
    pub interval: Duration,
    /// `timeout`.
    pub timeout: Duration,
    /// `interval_jitter` as a fraction (default 0.15).
    pub jitter: f64,
}

impl Default for Http2Options {
    fn default() -> Self {
        Http2Options {
            max_concurrent_streams: 2_147_483_647,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            keepalive: None,
            max_consecutive_empty_frames: 1,
            max_priority_frames_per_stream: 100,
            max_window_update_frames_per_data_frame: 10,
            max_outbound_frames: 10_000,
            max_outbound_control_frames: 1_000,
            allow_connect: false,
        }
    }
}

impl Http2Options {
    /// (stream window, connection window) for a connection with this buffer limit.
    pub fn windows(&self, buffer_limit: usize) -> (u32, u32) {
        let stream = self
            .initial_stream_window_size
            .unwrap_or_else(|| buffer_limit.clamp(65_535, 256 * 1024 * 1024) as u32);
        let conn = self
            .initial_connection_window_size
            .unwrap_or_else(|| stream.saturating_mul(16).min(256 * 1024 * 1024));
        (stream, conn)
    }
}

/// `InternalUpstreamTransport`: the metadata a connection to an internal listener hands to
/// that listener's connection (its dynamic metadata there), by filter name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InternalUpstream {
    /// `passthrough_metadata`, in order: where each comes from and its filter name.
    pub passthrough: Vec<(PassthroughFrom, String)>,
}

/// `passthrough_metadata[].kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughFrom {
    /// The endpoint's metadata.
    Host,
    /// The cluster's.
    Cluster,
}

/// An upstream host.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Its address.
    pub address: SocketAddr,
    /// False when `health_status` says it must not receive traffic.
    pub healthy: bool,
    /// `health_status: DEGRADED`: takes what the healthy hosts cannot.
    pub degraded: bool,
    /// `health_status: DRAINING`: left out of the health computation (Envoy's excluded hosts).
    pub excluded: bool,
    /// The endpoint's `health_status` as given (`HealthStatus`: 0 UNKNOWN … 5 DEGRADED).
    pub health_status: u8,
    /// Its locality's `priority` (0 first).
    pub priority: u32,
    /// The endpoint's `hostname`, or for a DNS cluster the name resolved (what
    /// `auto_host_rewrite` sends and `/clusters` shows).
    pub hostname: Option<Arc<str>>,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// Its locality: the index of its `LocalityLbEndpoints` in the assignment.
    pub locality: u32,
    /// That locality's `load_balancing_weight` (used with `locality_weighted_lb_config`).
    pub locality_weight: Option<u32>,
    /// That locality's `region`, `zone` and `sub_zone` (zone-aware routing compares them).
    pub place: Arc<Locality>,
    /// The `envoy.transport_socket_match` metadata of the endpoint, then of its locality,
    /// which the cluster's `transport_socket_matches` compare.
    pub socket_match: SocketMatchLabels,
    /// The endpoint's `envoy.lb` metadata `hash_key`: what RING_HASH and MAGLEV hash for it
    /// instead of its address.
    pub hash_key: Option<Arc<str>>,
    /// What the cluster's active health checks say of it.
    pub checks: HcFlags,
    /// The endpoint's `health_check_config`.
    pub check_config: Option<Arc<EndpointCheck>>,
    /// The endpoint's `envoy.lb` metadata, which subsets group hosts by.
    pub lb_metadata: Arc<LbMetadata>,
    /// The endpoint's `metadata` (`%UPSTREAM_METADATA%`).
    pub metadata: Arc<crate::metadata::Metadata>,
    /// `envoy_internal_address`: an internal listener of this proxy, reached in memory
    /// (`address` is then a stand-in that only tells hosts apart).
    pub internal: Option<Arc<InternalAddress>>,
    /// The endpoint's `additional_addresses` (a LOGICAL_DNS host's: the rest of the answer):
    /// its connections try them after `address`, as Envoy's happy eyeballs does.
    pub additional: Vec<SocketAddr>,
}

/// `envoy_internal_address`: the internal listener a host's connections go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InternalAddress {
    /// `server_listener_name`.
    pub listener: String,
    /// `endpoint_id`: tells apart hosts on the same listener.
    pub endpoint_id: String,
}

impl InternalAddress {
    /// A socket address that stands for this one where a host needs an IP address (its
    /// identity, hashing): in the discard-only prefix `100::/64`, so nothing ever reaches it.
    pub fn stand_in(&self) -> SocketAddr {
        // FNV-1a: stable across runs and builds, so a host keeps its identity.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .listener
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.endpoint_id.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let ip = std::net::Ipv6Addr::from((0x0100u128 << 112) | u128::from(h) | 1);
        let addr = SocketAddr::new(IpAddr::V6(ip), 0);
        if let Ok(mut names) = INTERNAL_NAMES.lock() {
            names
                .entry(addr)
                .or_insert_with(|| Arc::from(self.to_string()));
        }
        addr
    }
}

/// The stand-in address of the client end of every connection to an internal listener.
pub const INTERNAL_CLIENT: SocketAddr = SocketAddr::new(
    IpAddr::V6(std::net::Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0)),
    0,
);

/// The internal addresses behind the stand-ins made so far.
static INTERNAL_NAMES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<str>>>,
> = std::sync::LazyLock::new(Default::default);

/// An address as Envoy prints it: a stand-in as the internal address it stands for
/// (`envoy://encap/e1`, `envoy://internal_client_address/`), any other as `IP:port`.
pub fn address_text(a: &SocketAddr) -> String {
    match internal_name(a) {
        Some(n) => n.to_string(),
        None => a.to_string(),
    }
}

/// [`address_text`] without the port: an internal address prints whole.
pub fn address_ip_text(a: &SocketAddr) -> String {
    match internal_name(a) {
        Some(n) => n.to_string(),
        None => a.ip().to_string(),
    }
}

/// The internal address a stand-in stands for.
pub fn internal_name(a: &SocketAddr) -> Option<Arc<str>> {
    let SocketAddr::V6(v6) = a else { return None };
    let seg = v6.ip().segments();
    if seg[..4] != [0x0100, 0, 0, 0] || a.port() != 0 {
        return None;
    }
    if *a == INTERNAL_CLIENT {
        return Some(Arc::from("envoy://internal_client_address/"));
    }
    INTERNAL_NAMES.lock().ok()?.get(a).cloned()
}

impl std::fmt::Display for InternalAddress {
    /// As Envoy prints it: `envoy://<listener>/<endpoint_id>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "envoy://{}/{}", self.listener, self.endpoint_id)
    }
}

/// A metadata value as the subset load balancer compares it (Envoy's `ValueUtil::equal`): its
/// canonical text, where numbers are doubles (1 and 1.0 alike), strings and booleans differ from
/// each other and from numbers, and lists and structs compare by their contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaValue(pub Arc<str>);

/// An endpoint's `envoy.lb` metadata: each key's value and, when it is a list, its elements
/// (`list_as_any` groups a host by each of them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LbMetadata(pub BTreeMap<String, (MetaValue, Vec<MetaValue>)>);

impl LbMetadata {
    /// Whether the endpoint is a canary (`envoy.lb` `canary: true`, as Envoy reads it).
    pub fn canary(&self) -> bool {
        self.0.get("canary").is_some_and(|(v, _)| &*v.0 == "b:true")
    }
}

/// A route's `metadata_match` (`filter_metadata["envoy.lb"]`), merged with a weighted
/// cluster's: the criteria a subset must meet, sorted by key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchCriteria {
    pub keys: Vec<(String, MetaValue)>,
    /// `fallback_list` (a list of structs), for clusters with `metadata_fallback_policy:
    /// FALLBACK_LIST`; other clusters see it as an ordinary key.
    pub fallback_list: Option<Vec<Vec<(String, MetaValue)>>>,
}

impl MatchCriteria {
    /// `over` merged over these criteria: its keys replace or add to theirs (Envoy's
    /// `mergeMatchCriteria`).
    pub fn merged(&self, over: &[(String, MetaValue)]) -> Vec<(String, MetaValue)> {
        let mut keys: BTreeMap<&str, &MetaValue> =
            self.keys.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (k, v) in over {
            keys.insert(k, v);
        }
        keys.into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
}

/// `lb_subset_config` with at least one selector: hosts grouped by their `envoy.lb` metadata,
/// a request sent to the group its route's `metadata_match` names.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetConfig {
    /// `fallback_policy`.
    pub fallback: SubsetFallback,
    /// `default_subset`: what a host of the default subset has (empty: every host).
    pub default_subset: Vec<(String, MetaValue)>,
    /// `subset_selectors` with keys, in order.
    pub selectors: Vec<SubsetSelector>,
    /// `panic_mode_any`: when the fallback has no host, any host.
    pub panic_mode_any: bool,
    /// `list_as_any`: a list value puts a host in a subset per element.
    pub list_as_any: bool,
    /// `metadata_fallback_policy: FALLBACK_LIST`.
    pub fallback_list: bool,
    /// `locality_weight_aware`: a subset's hosts are picked by locality weight (the cluster
    /// has `locality_weighted_lb_config`); without it, subsets ignore locality weights.
    pub locality_weight_aware: bool,
    /// `scale_locality_weight`: a subset's locality weight is scaled by the share of the
    /// locality's hosts in the subset.
    pub scale_locality_weight: bool,
}

/// Where a request goes when no subset matches its criteria.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsetFallback {
    /// `NO_FALLBACK`: nowhere (503 `UH`).
    NoFallback,
    /// `ANY_ENDPOINT`: any host of the cluster.
    AnyEndpoint,
    /// `DEFAULT_SUBSET`: the hosts that meet `default_subset`.
    DefaultSubset,
}

/// One of `subset_selectors`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetSelector {
    /// `keys`, sorted and without repeats.
    pub keys: Vec<String>,
    /// `single_host_per_subset`.
    pub single_host: bool,
    /// `fallback_policy`, for criteria with exactly these keys that no subset meets.
    pub fallback: SelectorFallback,
}

/// A selector's `fallback_policy`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectorFallback {
    /// `NOT_DEFINED`: the cluster's.
    NotDefined,
    NoFallback,
    AnyEndpoint,
    DefaultSubset,
    /// `KEYS_SUBSET`: again with only `fallback_keys_subset` of the criteria.
    KeysSubset(Vec<String>),
}

/// An endpoint's `health_check_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCheck {
    /// `address`: checks go to this address instead of the endpoint's.
    pub address: Option<SocketAddr>,
    /// `port_value`: checks go to this port (0: the endpoint's, or `address`'s).
    pub port: u16,
    /// `hostname`: the checks' `:authority`, before the check's own `host`.
    pub hostname: String,
    /// `disable_active_health_check`: the host is not checked.
    pub disabled: bool,
}

impl Host {
    /// The host ORIGINAL_DST cluster `cluster` makes for a destination: named by the cluster
    /// and the address as Envoy names it, healthy, weight 1, priority 0, no locality, no
    /// metadata.
    pub fn destination(cluster: &str, address: SocketAddr) -> Host {
        Host {
            address,
            healthy: true,
            degraded: false,
            excluded: false,
            health_status: 0,
            priority: 0,
            hostname: Some(format!("{cluster}{}", address_text(&address)).into()),
            weight: 1,
            locality: 0,
            locality_weight: None,
            place: Arc::default(),
            socket_match: SocketMatchLabels::default(),
            hash_key: None,
            checks: HcFlags::default(),
            check_config: None,
            lb_metadata: Arc::default(),
            metadata: Arc::default(),
            internal: None,
            additional: Vec::new(),
        }
    }

    /// Whether it may take traffic: healthy by discovery and not failed by the active checks.
    pub fn usable(&self) -> bool {
        self.healthy && !self.checks.failed && !self.checks.ejected
    }

    /// Left out of the health computation: DRAINING by discovery, or waiting for its first
    /// check (Envoy's excluded hosts).
    pub fn excluded_now(&self) -> bool {
        self.excluded || self.checks.pending
    }

    /// Degraded by discovery or by the active checks.
    pub fn degraded_now(&self) -> bool {
        self.degraded || self.checks.degraded || self.checks.outlier_degraded
    }

    /// Its health as one `HealthStatus`, as Envoy's `healthStatus()`: UNHEALTHY when the active
    /// checks or outlier detection failed it, DEGRADED when the checks degraded it, else what
    /// discovery said.
    pub fn health_status(&self) -> u8 {
        if self.checks.failed || self.checks.ejected {
            HealthStatusSet::UNHEALTHY
        } else if self.checks.degraded {
            HealthStatusSet::DEGRADED
        } else {
            self.health_status
        }
    }
}

/// A set of `HealthStatus` values, one bit each (`common_lb_config.override_host_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthStatusSet(pub u8);

impl HealthStatusSet {
    /// `HealthStatus.UNHEALTHY`.
    pub const UNHEALTHY: u8 = 2;
    /// `HealthStatus.DEGRADED`.
    pub const DEGRADED: u8 = 5;

    /// Whether `status` is in the set.
    pub fn contains(self, status: u8) -> bool {
        status < 8 && self.0 & (1 << status) != 0
    }
}

impl Default for HealthStatusSet {
    /// Envoy's default: UNKNOWN, HEALTHY and DEGRADED.
    fn default() -> Self {
        HealthStatusSet(1 | 1 << 1 | 1 << Self::DEGRADED)
    }
}

/// `outlier_detection`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// `consecutive_5xx` (5).
    pub consecutive_5xx: u32,
    /// `consecutive_gateway_failure` (5).
    pub consecutive_gateway_failure: u32,
    /// `consecutive_local_origin_failure` (5).
    pub consecutive_local_origin_failure: u32,
    /// `interval` (10 s): how often success rates are judged and ejections end.
    pub interval: Duration,
    /// `base_ejection_time` (30 s), times the host's ejection count.
    pub base_ejection_time: Duration,
    /// `max_ejection_time` (300 s, at least the base).
    pub max_ejection_time: Duration,
    /// `max_ejection_time_jitter` (0): a random time below it is added to each ejection.
    pub max_ejection_time_jitter: Duration,
    /// `max_ejection_percent` (10).
    pub max_ejection_percent: u32,
    /// `enforcing_consecutive_5xx` (100).
    pub enforcing_consecutive_5xx: u32,
    /// `enforcing_consecutive_gateway_failure` (0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_local_origin_failure` (100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `enforcing_success_rate` (100).
    pub enforcing_success_rate: u32,
    /// `enforcing_local_origin_success_rate` (100).
    pub enforcing_local_origin_success_rate: u32,
    /// `enforcing_failure_percentage` (0).
    pub enforcing_failure_percentage: u32,
    /// `enforcing_failure_percentage_local_origin` (0).
    pub enforcing_failure_percentage_local_origin: u32,
    /// `success_rate_minimum_hosts` (5).
    pub success_rate_minimum_hosts: u32,
    /// `success_rate_request_volume` (100).
    pub success_rate_request_volume: u32,
    /// `success_rate_stdev_factor` (1900: 1.9 standard deviations).
    pub success_rate_stdev_factor: u32,
    /// `failure_percentage_threshold` (85).
    pub failure_percentage_threshold: u32,
    /// `failure_percentage_minimum_hosts` (5).
    pub failure_percentage_minimum_hosts: u32,
    /// `failure_percentage_request_volume` (50).
    pub failure_percentage_request_volume: u32,
    /// `split_external_local_origin_errors`.
    pub split_external_local_origin_errors: bool,
    /// `successful_active_health_check_uneject_host` (true).
    pub successful_active_health_check_uneject_host: bool,
    /// `detect_degraded_hosts`: a host answering `x-envoy-degraded` (without a 5xx) is
    /// degraded for an ejection time.
    pub detect_degraded_hosts: bool,
    /// `always_eject_one_host`.
    pub always_eject_one_host: bool,
}

/// A host's active health check flags, as Envoy names them in `/clusters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcFlags {
    /// `failed_active_hc` (also before the first check passes).
    pub failed: bool,
    /// `active_hc_timeout`.
    pub timeout: bool,
    /// `degraded_active_hc`.
    pub degraded: bool,
    /// `pending_dynamic_removal`: discovery removed it, kept while its checks pass.
    pub removed: bool,
    /// `pending_active_hc`: new to a cluster with `ignore_new_hosts_until_first_hc`, not yet
    /// checked; left out of the health computation until its first check ends.
    pub pending: bool,
    /// `failed_outlier_check`: ejected by outlier detection.
    pub ejected: bool,
    /// `degraded_outlier_detection`: it answered `x-envoy-degraded` (`detect_degraded_hosts`).
    pub outlier_degraded: bool,
}

/// A cluster's active health check (`health_checks[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealthCheck {
    /// `timeout`: a check without an answer by then is a network failure.
    pub timeout: Duration,
    /// `interval`.
    pub interval: Duration,
    /// `initial_jitter`: the first check waits a random time below it.
    pub initial_jitter: Duration,
    /// `interval_jitter`: a random time below it is added to each wait.
    pub interval_jitter: Duration,
    /// `interval_jitter_percent`: a random time below this share of the wait is added.
    pub interval_jitter_percent: u32,
    /// `unhealthy_threshold`: network failures in a row before a healthy host is marked
    /// unhealthy (other failures mark it at once).
    pub unhealthy_threshold: u32,
    /// `healthy_threshold`: successes in a row before an unhealthy host is marked healthy
    /// (one, for a host never checked before).
    pub healthy_threshold: u32,
    /// `reuse_connection` (default true).
    pub reuse_connection: bool,
    /// `no_traffic_interval` (default 60 s): the wait while the cluster has had no traffic.
    pub no_traffic_interval: Duration,
    /// `no_traffic_healthy_interval` (default `no_traffic_interval`): the same, for a healthy
    /// host.
    pub no_traffic_healthy_interval: Duration,
    /// `unhealthy_interval` (default `interval`).
    pub unhealthy_interval: Duration,
    /// `unhealthy_edge_interval` (default `unhealthy_interval`): after a failure that has not
    /// yet made the host unhealthy.
    pub unhealthy_edge_interval: Duration,
    /// `healthy_edge_interval` (default `interval`): after a success that has not yet made
    /// the host healthy.
    pub healthy_edge_interval: Duration,
    /// What a check sends and expects.
    pub kind: HealthCheckKind,
    /// `event_log_path` and the `envoy.health_check.event_sinks.file` `event_logger`s: files
    /// that get a JSON line per health event.
    pub event_logs: Vec<std::path::PathBuf>,
    /// `always_log_health_check_failures`: every failure is logged, not only a host's first.
    pub always_log_failures: bool,
    /// `always_log_health_check_success`: every pass is logged.
    pub always_log_success: bool,
    /// `tls_options.alpn_protocols`: the ALPN of checks over TLS (none: the TLS context's).
    pub alpn: Vec<String>,
    /// `transport_socket_match_criteria`: what picks the checks' transport socket among the
    /// cluster's `transport_socket_matches`, instead of the endpoint's metadata.
    pub socket_criteria: Option<Arc<Labels>>,
}

/// `http_health_check` or `tcp_health_check`.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// `http_health_check`.
    Http(HttpHealthCheck),
    /// `grpc_health_check`: `grpc.health.v1.Health/Check` over HTTP/2.
    Grpc(GrpcHealthCheck),
    /// `tcp_health_check`: connect, send `send`, and find each of `receive` in what comes back.
    Tcp {
        /// `send` (none: the connection alone is the check).
        send: Vec<u8>,
        /// `receive`, in order.
        receive: Vec<Vec<u8>>,
    },
}

/// `grpc_health_check`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcHealthCheck {
    /// `service_name`: the `service` of the `HealthCheckRequest`.
    pub service: String,
    /// `authority` (empty: the cluster's name).
    pub authority: String,
    /// `initial_metadata`: headers added to the request.
    pub metadata: Arc<crate::router::HeaderParser>,
}

/// `http_health_check`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpHealthCheck {
    /// `service_name_matcher`: a passing answer's `x-envoy-upstream-healthchecked-cluster`
    /// must match it (a missing header reads as empty).
    pub service_name: Option<StringMatch>,
    /// `host` (empty: the cluster's name).
    pub host: String,
    /// `path`.
    pub path: String,
    /// `method` (default GET).
    pub method: String,
    /// `send`: the request body.
    pub send: Vec<u8>,
    /// `receive`: what the response body must contain, in order.
    pub receive: Vec<Vec<u8>>,
    /// `response_buffer_size` (default 1024): how much of the body is searched.
    pub response_buffer_size: usize,
    /// `request_headers_to_add` and `request_headers_to_remove`.
    pub headers: Arc<crate::router::HeaderParser>,
    /// `expected_statuses` as `[start, end)` ranges (default 200 only).
    pub expected: Vec<(u16, u16)>,
    /// `retriable_statuses`: failures that count toward `unhealthy_threshold`.
    pub retriable: Vec<(u16, u16)>,
    /// `codec_client_type: HTTP2`.
    pub http2: bool,
}

/// A locality's `region`, `zone` and `sub_zone`, ordered as Envoy orders localities.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

/// `zone_aware_lb_config`: how a cluster routes to its hosts in this proxy's locality when
/// the bootstrap names a local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneAware {
    /// `routing_enabled`: the percentage of picks that consider localities (default 100).
    pub routing_enabled: u64,
    /// `min_cluster_size`: fewer healthy hosts than this and localities are not considered
    /// (default 6).
    pub min_cluster_size: u64,
    /// `fail_traffic_on_panic`: no host at all while the cluster (or the local one) is in panic.
    pub fail_traffic_on_panic: bool,
    /// `force_local_zone.min_size` (1 for `force_locality_direct_routing`): with at least
    /// this many healthy hosts in this proxy's locality, every pick goes there.
    pub force_local_zone: Option<u64>,
    /// `locality_basis: HEALTHY_HOSTS_WEIGHT`: localities compared by the weights of their
    /// healthy hosts, not their number.
    pub by_weight: bool,
}

impl Default for ZoneAware {
    fn default() -> Self {
        ZoneAware {
            routing_enabled: 100,
            min_cluster_size: 6,
            fail_traffic_on_panic: false,
            force_local_zone: None,
            by_weight: false,
        }
    }
}

/// The `envoy.transport_socket_match` filter metadata of an endpoint and of its locality
/// (none: the metadata has no such filter).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocketMatchLabels {
    /// The endpoint's.
    pub endpoint: Option<Arc<Labels>>,
    /// Its `LocalityLbEndpoints`'.
    pub locality: Option<Arc<Labels>>,
}

/// Metadata fields by name.
pub type Labels = std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Value>;

/// One entry of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    /// `name`.
    pub name: String,
    /// `match`: each field must be in the host's labels with an equal value (none: any host).
    pub criteria: Labels,
    /// `transport_socket`: TLS, or plain TCP.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl TransportSocketMatch {
    /// The match a host takes: the first its endpoint's labels meet, else the first its
    /// locality's labels meet (none: the cluster's own transport socket).
    pub fn pick<'m>(matches: &'m [Self], host: &SocketMatchLabels) -> Option<&'m Self> {
        [&host.endpoint, &host.locality]
            .into_iter()
            .find_map(|labels| matches.iter().find(|m| m.matches(labels.as_deref())))
    }

    /// Envoy's `metadataLabelMatch`: every criterion has an equal value among `labels`; with
    /// no labels only a match without criteria matches.
    fn matches(&self, labels: Option<&Labels>) -> bool {
        match labels {
            None => self.criteria.is_empty(),
            Some(l) => self.criteria.iter().all(|(k, v)| l.get(k) == Some(v)),
        }
    }
}

/// How a cluster finds its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    /// `STATIC`: the hosts of `load_assignment`.
    Static,
    /// `ORIGINAL_DST`: the host is the connection's original destination.
    OriginalDst,
    /// `EDS`: the hosts of the `ClusterLoadAssignment` its `eds_cluster_config` names.
    Eds,
    /// `STRICT_DNS`: every address each `load_assignment` name resolves to is a host.
    StrictDns,
    /// `LOGICAL_DNS`: one host, at the first address its one name resolves to.
    LogicalDns,
}

/// `dns_lookup_family`: which address families a DNS cluster asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsLookupFamily {
    /// `AUTO` (the default): IPv6 addresses, IPv4 ones when there is none.
    Auto,
    /// `V4_ONLY`.
    V4Only,
    /// `V6_ONLY`.
    V6Only,
    /// `V4_PREFERRED`: IPv4 addresses, IPv6 ones when there is none.
    V4Preferred,
    /// `ALL`: both.
    All,
}

/// The resolver a DNS cluster uses: `typed_dns_resolver_config` (c-ares's settings) or the
/// deprecated `dns_resolvers`/`dns_resolution_config`; none of them: resolv.conf's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DnsResolverConfig {
    /// `resolvers`: the name servers (empty: resolv.conf's).
    pub resolvers: Vec<SocketAddr>,
    /// `dns_resolver_options.use_tcp_for_dns_lookups`.
    pub use_tcp: bool,
    /// `dns_resolver_options.no_default_search_domain`: resolv.conf's search domains unused.
    pub no_search_domains: bool,
    /// `query_timeout_seconds` (c-ares's default 5 s).
    pub query_timeout: Option<Duration>,
    /// `query_tries` (c-ares's default 4).
    pub query_tries: Option<u32>,
    /// `rotate_nameservers`.
    pub rotate: bool,
}

/// A name a DNS cluster resolves: one `lb_endpoint` of its `load_assignment`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    /// `socket_address.address`: the name (or an address literal).
    pub name: String,
    /// `socket_address.port_value`.
    pub port: u16,
    /// `endpoint.hostname`, else the name.
    pub hostname: Arc<str>,
    /// The endpoint's `health_status` as given.
    pub health_status: u8,
    /// False when the endpoint's `health_status` says it must not receive traffic.
    pub healthy: bool,
    /// `health_status: DEGRADED`.
    pub degraded: bool,
    /// `health_status: DRAINING`.
    pub excluded: bool,
    /// Its locality's `priority` (LOGICAL_DNS: always 0, as Envoy).
    pub priority: u32,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// The index of its `LocalityLbEndpoints`.
    pub locality: u32,
    /// That locality's `load_balancing_weight`.
    pub locality_weight: Option<u32>,
    /// That locality's `region`, `zone` and `sub_zone`.
    pub place: Arc<Locality>,
    /// The endpoint's and its locality's `envoy.transport_socket_match` metadata.
    pub socket_match: SocketMatchLabels,
    /// The endpoint's `envoy.lb` `hash_key`.
    pub hash_key: Option<Arc<str>>,
    /// The endpoint's `health_check_config`.
    pub check_config: Option<Arc<EndpointCheck>>,
    /// The endpoint's `envoy.lb` metadata.
    pub lb_metadata: Arc<LbMetadata>,
    /// The endpoint's `metadata` (`%UPSTREAM_METADATA%`).
    pub metadata: Arc<crate::metadata::Metadata>,
}

/// `TcpKeepalive`: SO_KEEPALIVE, and the settings given (the system's otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// `keepalive_probes`.
    pub probes: Option<u32>,
    /// `keepalive_time` in seconds.
    pub time: Option<u32>,
    /// `keepalive_interval` in seconds.
    pub interval: Option<u32>,
}

/// `slow_start_config` (ROUND_ROBIN and LEAST_REQUEST): a host that has just become healthy
/// takes a growing share of its weight over the window, as Envoy's: weight ×
/// max(`min_weight`, (t / window)^(1 / `aggression`)).
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    /// `slow_start_window`.
    pub window: Duration,
    /// `aggression` (1.0: linear; a value that is not above 0 is 1.0, as Envoy's).
    pub aggression: f64,
    /// `min_weight_percent` as a fraction (0.1).
    pub min_weight: f64,
}

/// `consistent_hashing_lb_config` of RING_HASH and MAGLEV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsistentHashing {
    /// `use_hostname_for_hashing`: hosts are placed by their hostname, not their address.
    pub use_hostname: bool,
    /// `hash_balance_factor` (at least 100), or 0: no host takes more than this percentage of
    /// its share of the cluster's requests under way; a busier one passes the request on.
    pub balance_factor: u32,
}

/// `envoy.load_balancing_policies.client_side_weighted_round_robin`: round robin whose weights
/// come from the hosts' ORCA load reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSideWeights {
    /// `blackout_period` (10 s).
    pub blackout_period: Duration,
    /// `weight_expiration_period` (3 min).
    pub weight_expiration_period: Duration,
    /// `weight_update_period` (1 s, at least 100 ms).
    pub weight_update_period: Duration,
    /// `error_utilization_penalty` (1.0).
    pub error_utilization_penalty: f64,
    /// `metric_names_for_computing_utilization`.
    pub metric_names: Vec<String>,
}

/// `envoy.load_balancing_policies.override_host`: the hosts a request names (by address, in
/// order: the first for the first attempt, the next ones for retries), before the cluster's
/// own policy (its `fallback_policy`).
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideHostPolicy {
    /// `override_host_sources`, in order.
    pub sources: Vec<OverrideHostSource>,
}

/// Where a request names its hosts: a comma-separated list of addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum OverrideHostSource {
    /// A request header (its first value).
    Header(String),
    /// A string of the request's dynamic metadata.
    Metadata {
        /// The filter namespace.
        namespace: String,
        /// The keys down to the value.
        path: Vec<String>,
    },
}

/// How a cluster picks a host: `lb_policy` (with `lb_config`) or `load_balancing_policy`.
#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`: in turn, weighted by `load_balancing_weight` (Envoy's EDF schedule).
    RoundRobin,
    /// `LEAST_REQUEST`: the host with the fewest active requests among `choice_count` random
    /// ones; with weights, EDF on weight / (active + 1)^`active_request_bias`.
    LeastRequest {
        /// `choice_count` (default 2).
        choice_count: u32,
        /// `active_request_bias` (default 1.0).
        active_request_bias: f64,
    },
    /// `RANDOM`.
    Random,
    /// `CLUSTER_PROVIDED` (ORIGINAL_DST).
    ClusterProvided,
    /// `RING_HASH`: the host at the request's hash on a ring of the hosts' hashes (Envoy's
    /// ketama ring, hashed as Envoy hashes).
    RingHash {
        /// `minimum_ring_size` (1024).
        min_ring: u64,
        /// `maximum_ring_size` (8M).
        max_ring: u64,
        /// `hash_function: MURMUR_HASH_2` (else xxHash).
        murmur: bool,
    },
    /// `MAGLEV`: the host in Maglev's lookup table at the request's hash.
    Maglev {
        /// `table_size` (65537, a prime).
        table_size: u64,
    },
}

impl LbPolicy {
    /// Whether hosts are picked by the request's hash (its route's `hash_policy`).
    pub fn hashed(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// `circuit_breakers.thresholds[]` of one priority (Envoy's defaults when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// `max_connections` (1024).
    pub max_connections: u64,
    /// `max_pending_requests` (1024).
    pub max_pending_requests: u64,
    /// `max_requests` (1024).
    pub max_requests: u64,
    /// `max_retries` (3).
    pub max_retries: u64,
    /// `max_connection_pools` (unlimited).
    pub max_connection_pools: u64,
    /// `track_remaining`: `remaining_*` gauges.
    pub track_remaining: bool,
    /// `retry_budget`: `(budget_percent` as millionths of the active requests,
    /// `min_retry_concurrency)` (20 % and 3 by default), in place of `max_retries`.
    pub retry_budget: Option<(u64, u64)>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            max_connection_pools: u64::MAX,
            track_remaining: false,
            retry_budget: None,
        }
    }
}

/// `circuit_breakers`: the thresholds of the `DEFAULT` and `HIGH` priorities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CircuitBreakers {
    /// `DEFAULT`.
    pub default: Thresholds,
    /// `HIGH`.
    pub high: Thresholds,
    /// `per_host_thresholds`' `max_connections` (of `DEFAULT`): no host has more connections
    /// open.
    pub per_host_max_connections: Option<u64>,
}

/// How a `STRICT_DNS` or `LOGICAL_DNS` cluster resolves its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// The names to resolve (a LOGICAL_DNS cluster has exactly one).
    pub targets: Vec<DnsTarget>,
    /// `dns_lookup_family`.
    pub family: DnsLookupFamily,
    /// `dns_refresh_rate` (default 5 s).
    pub refresh_rate: Duration,
    /// `dns_failure_refresh_rate` (base, max); without it failures back off from the
    /// refresh rate up to ten times it.
    pub failure_refresh: Option<(Duration, Duration)>,
    /// `respect_dns_ttl`: refresh after the answer's smallest TTL instead.
    pub respect_ttl: bool,
    /// `dns_jitter`: a random extra wait below this after each successful resolution.
    pub jitter: Duration,
    /// The resolver.
    pub resolver: DnsResolverConfig,
    /// `wait_for_warm_on_init` (default true): the cluster warms until its first resolution.
    pub wait_for_warm: bool,
}

/// `eds_cluster_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdsConfig {
    /// `service_name`, else the cluster's name: the `ClusterLoadAssignment` to use.
    pub service_name: String,
    /// `eds_config`.
    pub source: ConfigSource,
}

/// What requests routed to a cluster use in place of their route's (the cluster's HTTP
/// protocol options' `hash_policy`, `request_mirror_policies` and `retry_policy`).
#[derive(Debug, PartialEq, Default)]
pub struct ClusterRouting {
    /// The hash a hashing balancer picks hosts by (none: the route's).
    pub hash_policy: Vec<crate::router::HashPolicy>,
    /// The mirrors (none: the route's).
    pub mirrors: Vec<crate::router::Mirror>,
    /// The retry policy, which replaces the route's and its virtual host's whole.
    pub retry: Option<Arc<crate::router::retry::RetryPolicy>>,
}

/// How a host with several addresses orders them (RFC 8305 as Envoy's happy eyeballs):
/// `first_count` of the first family, then one of the other, and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HappyEyeballs {
    /// `first_address_family_version`.
    pub first: FirstFamily,
    /// `first_address_family_count` (default 1).
    pub first_count: u32,
}

/// Which address family a host's connections try first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstFamily {
    /// `DEFAULT`: the family of the host's first address.
    Default,
    /// `V4`.
    V4,
    /// `V6`.
    V6,
    /// `PIPE` or `INTERNAL`: no IP address is of it, so the order stays.
    Neither,
}

impl Default for HappyEyeballs {
    fn default() -> Self {
        HappyEyeballs {
            first: FirstFamily::Default,
            first_count: 1,
        }
    }
}

impl HappyEyeballs {
    /// `addresses` in the order connections try them.
    pub fn sort(&self, addresses: &[SocketAddr]) -> Vec<SocketAddr> {
        let Some(first) = addresses.first() else {
            return Vec::new();
        };
        let preferred_family = |a: &&SocketAddr| match self.first {
            FirstFamily::Default => a.is_ipv6() == first.is_ipv6(),
            FirstFamily::V4 => a.is_ipv4(),
            FirstFamily::V6 => a.is_ipv6(),
            FirstFamily::Neither => false,
        };
        let mut preferred = addresses.iter().filter(preferred_family).peekable();
        let mut other = addresses.iter().filter(|a| !preferred_family(a)).peekable();
        let mut out = Vec::with_capacity(addresses.len());
        while preferred.peek().is_some() || other.peek().is_some() {
            out.extend(preferred.by_ref().take(self.first_count.max(1) as usize));
            out.extend(other.next());
        }
        out
    }
}

/// A cluster.
#[derive(Debug, PartialEq)]
pub struct Cluster {
    /// `name`.
    pub name: String,
    /// What the cluster's requests use in place of their route's hash, mirror and retry
    /// policies.
    pub routing: ClusterRouting,
    /// `alt_stat_name`: the name in stats, `/clusters` and `%UPSTREAM_CLUSTER%`.
    pub alt_stat_name: Option<String>,
    /// `track_cluster_stats.per_endpoint_stats`: each host's stats in `/stats` and
    /// `/stats/prometheus` (`cluster.<name>.endpoint.<address>.*`).
    pub per_endpoint_stats: bool,
    /// `metadata` (`%CLUSTER_METADATA%`).
    pub metadata: Arc<crate::metadata::Metadata>,
    /// `type`.
    pub discovery: DiscoveryType,
    /// ORIGINAL_DST with `original_dst_lb_config.use_http_header`: the request header naming
    /// the host (`x-envoy-original-dst-host` unless `http_header_name` says otherwise).
    pub original_dst_header: Option<OriginalDstHeader>,
    /// `original_dst_lb_config.upstream_port_override`: an ORIGINAL_DST cluster connects to
    /// this port of the destination's address.
    pub original_dst_port: Option<u16>,
    /// `cleanup_interval` (5 s): an ORIGINAL_DST cluster forgets a destination's host (its
    /// pooled connections and its counters) once no stream picked it for this long.
    pub original_dst_cleanup: Duration,
    /// `upstream_bind_config.source_address`: the local address of upstream connections.
    pub source_address: Option<std::net::SocketAddr>,
    /// `upstream_bind_config.extra_source_addresses`: the local address of connections to a
    /// host of another IP family than `source_address`'s.
    pub extra_source_addresses: Vec<std::net::SocketAddr>,
    /// `connect_timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// The hosts of `load_assignment` (EDS clusters get theirs from `eds`).
    pub hosts: Vec<Host>,
    /// `eds_cluster_config`, for `EDS` clusters.
    pub eds: Option<EdsConfig>,
    /// For `STRICT_DNS` and `LOGICAL_DNS` clusters: what to resolve and how.
    pub dns: Option<DnsConfig>,
    /// `circuit_breakers`.
    pub circuit_breakers: CircuitBreakers,
    /// `max_requests_per_connection` (the cluster's, or its HTTP protocol options'
    /// `common_http_protocol_options`): a connection closes after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.idle_timeout` of its HTTP protocol options (Envoy's 1 h
    /// default; zero: none): a pooled connection without requests for this long closes.
    pub pool_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_headers_count` (default 100): a response with more
    /// headers is refused (502, `UPE`).
    pub max_response_headers: u32,
    /// `common_http_protocol_options.max_connection_duration`: a pooled connection drains
    /// after this long (it takes no new request and closes once idle).
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`: an upstream request that has not
    /// ended this long after it started is ended (504 `UMSDR`, or the response cut).
    pub max_stream_duration: Option<Duration>,
    /// `upstream_connection_options.tcp_keepalive`: keepalive on upstream connections.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `upstream_connection_options.happy_eyeballs_config`: the order in which a host with
    /// several addresses tries them.
    pub happy_eyeballs: HappyEyeballs,
    /// `common_lb_config.close_connections_on_host_set_change`: when hosts are added or
    /// removed, every host's connections are drained.
    pub close_connections_on_host_set_change: bool,
    /// `common_lb_config.override_host_status`: the statuses a host a stateful session names
    /// may have to be used.
    pub override_host_status: HealthStatusSet,
    /// `common_lb_config.ignore_new_hosts_until_first_hc`, with active health checks: a host
    /// discovery adds is left out of the health computation until its first check ends.
    pub ignore_new_hosts_until_first_hc: bool,
    /// `common_lb_config.update_merge_window` (1 s; zero: none): changes of health, weight or
    /// metadata alone within it reach the workers together at its end.
    pub update_merge_window: Duration,
    /// `load_balancing_policy` `override_host`: hosts a request names, before `lb`.
    pub override_host: Option<Arc<OverrideHostPolicy>>,
    /// `client_side_weighted_round_robin`: `lb` is round robin with these weights.
    pub client_side_weights: Option<Arc<ClientSideWeights>>,
    /// `preconnect_policy.per_upstream_preconnect_ratio` (HTTP/1.1 and HTTP/2 pools): connections made
    /// ahead so that the pool has this many per request under way or waiting.
    pub preconnect_ratio: Option<f64>,
    /// `preconnect_policy.predictive_preconnect_ratio` (above 1): before each new stream,
    /// connections made ahead on the hosts the balancer will pick next.
    pub predictive_ratio: Option<f64>,
    /// The load balancer.
    pub lb: LbPolicy,
    /// `locality_weighted_lb_config`: a locality is picked first, by its weight times its
    /// share of healthy hosts, then a host in it.
    pub locality_weighted: bool,
    /// `zone_aware_lb_config` (Envoy's defaults when absent): used when the bootstrap names a
    /// local cluster.
    pub zone_aware: ZoneAware,
    /// `slow_start_config` of ROUND_ROBIN or LEAST_REQUEST.
    pub slow_start: Option<SlowStart>,
    /// RING_HASH and MAGLEV: hostnames and bounded loads.
    pub consistent_hashing: ConsistentHashing,
    /// `lb_subset_config` (with selectors).
    pub subsets: Option<Arc<SubsetConfig>>,
    /// `health_checks` (at most one, as Envoy): active checks of every host.
    pub health_check: Option<Arc<ActiveHealthCheck>>,
    /// `ignore_health_on_host_removal`: a host EDS or DNS removes goes at once even while
    /// its active checks pass.
    pub ignore_health_on_host_removal: bool,
    /// `outlier_detection`: hosts ejected for their errors.
    pub outlier: Option<Arc<OutlierDetection>>,
    /// `common_lb_config.healthy_panic_threshold` in percent (default 50; 0 disables): below
    /// it, the share of healthy hosts no longer limits traffic to them.
    pub panic_threshold: f64,
    /// Upstream HTTP protocol.
    pub protocol: UpstreamProtocol,
    /// HTTP/2 settings.
    pub http2: Http2Options,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub buffer_limit: usize,
    /// `transport_socket`: TLS to the hosts (none: plain TCP).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// `transport_socket_matches`: per host, the first whose criteria its endpoint's labels
    /// meet, else the first its locality's labels meet, else `tls`.
    pub socket_matches: Vec<TransportSocketMatch>,
    /// `envoy.transport_sockets.upstream_proxy_protocol`: the PROXY header version each
    /// upstream connection starts with.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// `envoy.transport_sockets.internal_upstream`: what connections to internal listeners
    /// carry to the other side.
    pub internal_upstream: Option<Arc<InternalUpstream>>,
    /// `upstream_http_protocol_options.auto_sni`: TLS SNI from each request's host.
    pub auto_sni: bool,
    /// The HTTP/1.1 `http_protocol_options.header_key_format`: the case of the header names
    /// written upstream, and with `preserve_case`, that of the response's names kept for the
    /// client.
    pub header_case: HeaderCase,
    /// The HTTP/1.1 `http_protocol_options.enable_trailers`: trailers go both ways on its
    /// HTTP/1.1 connections (without it, a response's are dropped as read and a request's are
    /// not written).
    pub h1_trailers: bool,
    /// `metadata.filter_metadata.istio`.
    pub istio: IstioClusterMetadata,
}

impl Cluster {
    /// The TLS of connections to `host` (none: plain TCP), as Envoy's transport socket
    /// matcher picks it: endpoint labels first, then locality labels, then the default.
    pub fn tls_for(&self, host: &SocketMatchLabels) -> Option<&Arc<crate::tls::UpstreamTls>> {
        match TransportSocketMatch::pick(&self.socket_matches, host) {
            Some(m) => m.tls.as_ref(),
            None => self.tls.as_ref(),
        }
    }

    /// Whether any connection of the cluster may use TLS.
    pub fn any_tls(&self) -> bool {
        self.tls.is_some() || self.socket_matches.iter().any(|m| m.tls.is_some())
    }

    /// The cluster's name for observability: `alt_stat_name`, else `name`.
    pub fn stat_name(&self) -> &str {
        self.alt_stat_name.as_deref().unwrap_or(&self.name)
    }
}

/// A CORS policy (`envoy.extensions.filters.http.cors.v3.CorsPolicy`) of a route, a virtual
/// host or a route table. The CORS filter takes each field from the most specific policy that
/// sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    /// `allow_origin_string_match`.
    pub allow_origins: Vec<StringMatch>,
    /// `allow_methods` (`*`: the requested method).
    pub allow_methods: String,
    /// `allow_headers` (`*`: the requested headers).
    pub allow_headers: String,
    /// `expose_headers`.
    pub expose_headers: String,
    /// `max_age`.
    pub max_age: String,
    /// `allow_credentials`.
    pub allow_credentials: Option<bool>,
    /// `allow_private_network_access`.
    pub allow_private_network_access: Option<bool>,
    /// `forward_not_matching_preflights` (default true).
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled` (unset: on).
    pub filter_enabled: Option<crate::runtime::RuntimeFraction>,
    /// `shadow_enabled` (unset: off): origins are judged and counted, nothing else.
    pub shadow_enabled: Option<crate::runtime::RuntimeFraction>,
}

/// A string match as Envoy's `StringMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct StringMatch {
    /// What to compare.
    pub kind: StringMatchKind,
    /// `ignore_case`.
    pub ignore_case: bool,
}

/// The comparison of a [`StringMatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatchKind {
    /// `exact`.
    Exact(String),
    /// `prefix`.
    Prefix(String),
    /// `suffix`.
    Suffix(String),
    /// `contains`.
    Contains(String),
    /// `safe_regex`: the whole value must match (anchored at translation).
    SafeRegex(crate::pattern::Regex),
}

impl StringMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let pattern = match &self.kind {
            StringMatchKind::Exact(p)
            | StringMatchKind::Prefix(p)
            | StringMatchKind::Suffix(p)
            | StringMatchKind::Contains(p) => p.as_str(),
            StringMatchKind::SafeRegex(re) => return re.is_match(value),
        };
        if self.ignore_case {
            // Patterns were lowered at translation time.
            let value = value.to_ascii_lowercase();
            self.compare(&value, pattern)
        } else {
            self.compare(value, pattern)
        }
    }

    fn compare(&self, value: &str, pattern: &str) -> bool {
        match self.kind {
            StringMatchKind::Exact(_) => value == pattern,
            StringMatchKind::Prefix(_) => value.starts_with(pattern),
            StringMatchKind::Suffix(_) => value.ends_with(pattern),
            StringMatchKind::Contains(_) => value.contains(pattern),
            StringMatchKind::SafeRegex(_) => false,
        }
    }
}

/// A header match of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// `name`.
    pub name: HeaderKey,
    /// What to check.
    pub kind: HeaderMatchKind,
    /// `invert_match`.
    pub invert: bool,
    /// `treat_missing_header_as_empty`: an absent header is matched as the empty value.
    pub missing_as_empty: bool,
}

/// The header a [`HeaderMatch`] reads: a header, or one of the pseudo-headers Envoy's request
/// header map holds for every request (HTTP/1.1 included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    /// A regular header.
    Header(HeaderName),
    /// `:method`.
    Method,
    /// `:authority` (the `Host` header of an HTTP/1.1 request).
    Authority,
    /// `:path`, query included.
    Path,
    /// `:scheme`.
    Scheme,
    /// Any other name starting with `:`, which no request carries.
    OtherPseudo,
}

/// The check of a [`HeaderMatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatchKind {
    /// `present_match`: the header is present (true) or absent (false).
    Present(bool),
    /// `string_match` (and the older `exact_match`, `prefix_match`, …) on the header's value
    /// (several values are joined with `,`).
    String(StringMatch),
    /// `range_match`: the value as a signed integer in `[start, end)`.
    Range(i64, i64),
}

/// A `query_parameters` entry of a route match.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    /// `name`.
    pub name: String,
    /// What to check.
    pub check: QueryCheck,
}

/// The check of a [`QueryMatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryCheck {
    /// `present_match` (and no specifier, which asks for presence).
    Present(bool),
    /// `string_match` on the parameter's first value.
    String(StringMatch),
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text line.
    V1,
    /// The binary header.
    V2,
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{value::Kind, Value};

    #[test]
    fn happy_eyeballs_orders_addresses_as_rfc_8305_and_envoy() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        let (v4a, v4b, v4c) = (a("10.0.0.1:1"), a("10.0.0.2:1"), a("10.0.0.3:1"));
        let (v6a, v6b, v6c) = (a("[fd00::1]:1"), a("[fd00::2]:1"), a("[fd00::3]:1"));
        let order = |first, first_count, list: &[SocketAddr]| {
            HappyEyeballs { first, first_count }.sort(list)
        };
        // The first address's family first, then one of each in turn.
        assert_eq!(
            order(FirstFamily::Default, 1, &[v4a, v4b, v6a, v6b]),
            [v4a, v6a, v4b, v6b]
        );
        assert_eq!(
            order(FirstFamily::Default, 1, &[v6a, v4a, v4b]),
            [v6a, v4a, v4b]
        );
        // Two of the named family each round.
        assert_eq!(
            order(FirstFamily::V6, 2, &[v4a, v6a, v6b, v6c, v4b, v4c]),
            [v6a, v6b, v4a, v6c, v4b, v4c]
        );
        assert_eq!(order(FirstFamily::V4, 1, &[v6a, v4a]), [v4a, v6a]);
        // No IP address is of the pipe family: the order stays.
        assert_eq!(
            order(FirstFamily::Neither, 1, &[v6a, v4a, v6b]),
            [v6a, v4a, v6b]
        );
        assert!(order(FirstFamily::Default, 1, &[]).is_empty());
    }

    fn labels(pairs: &[(&str, &str)]) -> Option<Arc<Labels>> {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        Some(Arc::new(
            pairs.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
        ))
    }

    fn tls(sni: &str) -> Option<Arc<crate::tls::UpstreamTls>> {
        Some(Arc::new(crate::tls::UpstreamTls {
            sni: Some(sni.into()),
            ..Default::default()
        }))
    }

    #[test]
    fn transport_socket_matches_take_endpoint_labels_then_locality_labels_then_the_default() {
        let m = |name: &str, criteria: Option<Arc<Labels>>| TransportSocketMatch {
            name: name.into(),
            criteria: criteria.map(|c| (*c).clone()).unwrap_or_default(),
            tls: tls(name),
        };
        let socket_matches = vec![
            m("istio", labels(&[("tlsMode", "istio")])),
            m("zone", labels(&[("zone", "a"), ("tier", "x")])),
        ];
        let pick = |endpoint, locality| {
            let host = SocketMatchLabels { endpoint, locality };
            let m = TransportSocketMatch::pick(&socket_matches, &host);
            Some(m.map_or("default".to_string(), |m| m.name.clone()))
        };
        assert_eq!(
            pick(labels(&[("tlsMode", "istio")]), None).as_deref(),
            Some("istio")
        );
        // Every criterion must hold; extra labels do not matter.
        assert_eq!(
            pick(labels(&[("zone", "a"), ("tier", "x"), ("more", "y")]), None).as_deref(),
            Some("zone")
        );
        assert_eq!(
            pick(labels(&[("zone", "a")]), None).as_deref(),
            Some("default")
        );
        // The endpoint's labels are tried against every match before the locality's.
        assert_eq!(
            pick(
                labels(&[("tlsMode", "istio")]),
                labels(&[("zone", "a"), ("tier", "x")])
            )
            .as_deref(),
            Some("istio")
        );
        assert_eq!(
            pick(None, labels(&[("zone", "a"), ("tier", "x")])).as_deref(),
            Some("zone")
        );
        assert_eq!(pick(None, None).as_deref(), Some("default"));
    }
}

/// Where an ORIGINAL_DST cluster with `use_http_header` reads the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginalDstHeader {
    /// `:authority` (the request's authority, a CONNECT's target).
    Authority,
    /// A header.
    Header(HeaderName),
}
