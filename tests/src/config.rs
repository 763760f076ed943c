//! Envoy v3 bootstraps for the tests, built as JSON values and written out as YAML.

use serde_json::{json, Value};

/// `@type` of the HTTP connection manager.
pub const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// `@type` of the router filter.
pub const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// `@type` of tcp_proxy.
pub const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// `@type` of the upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Serialises a bootstrap as YAML.
pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("bootstrap serialises to YAML")
}

/// The reference `envoy-minimal.yaml` (kept verbatim in `tests/configs/`) with its three ports
/// (admin 19901, listener 10000, upstream 18081) replaced.
pub fn envoy_minimal(admin: u16, listen: u16, upstream: u16) -> String {
    let text = std::fs::read_to_string(envoy_minimal_path()).expect("read envoy-minimal.yaml");
    text.replace("port_value: 19901", &format!("port_value: {admin}"))
        .replace("port_value: 10000", &format!("port_value: {listen}"))
        .replace("port_value: 18081", &format!("port_value: {upstream}"))
}

/// Where the verbatim copy of the reference `envoy-minimal.yaml` lives.
pub fn envoy_minimal_path() -> std::path::PathBuf {
    crate::package_dir().join("configs/envoy-minimal.yaml")
}

/// A bootstrap with admin on 127.0.0.1:`admin` and the given static resources.
pub fn bootstrap(admin: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin } } },
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

/// A listener on `ip:port` with one filter chain holding `filter`.
pub fn listener(name: &str, ip: &str, port: u16, filter: Value) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": ip, "port_value": port } },
        "filter_chains": [ { "filters": [ filter ] } ]
    })
}

/// An HTTP connection manager filter with an inline route config, the router, and a stdout
/// access log in the default format.
pub fn hcm(stat_prefix: &str, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "access_log": [ stdout_log() ],
            "route_config": { "name": "local_route", "virtual_hosts": virtual_hosts },
            "http_filters": [ router() ]
        }
    })
}

/// A virtual host.
pub fn vhost(name: &str, domains: &[&str], routes: Vec<Value>) -> Value {
    json!({ "name": name, "domains": domains, "routes": routes })
}

/// Listener `l` on 127.0.0.1:`port`: a connection manager (stat prefix `h`) with one virtual
/// host for every domain and these routes.
pub fn http_listener(port: u16, routes: Vec<Value>) -> Value {
    listener(
        "l",
        "127.0.0.1",
        port,
        hcm("h", vec![vhost("v", &["*"], routes)]),
    )
}

/// A route `prefix` → `cluster`.
pub fn route(prefix: &str, cluster: &str) -> Value {
    json!({ "match": { "prefix": prefix }, "route": { "cluster": cluster } })
}

/// A route with an arbitrary `match` → `cluster`.
pub fn route_match(m: Value, cluster: &str) -> Value {
    json!({ "match": m, "route": { "cluster": cluster } })
}

/// The router HTTP filter.
pub fn router() -> Value {
    json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } })
}

/// A stdout access log in the default format.
pub fn stdout_log() -> Value {
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" }
    })
}

/// A file access log, optionally with a `text_format_source` format.
pub fn file_log(path: &str, format: Option<&str>) -> Value {
    let mut v = json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path
        }
    });
    if let Some(f) = format {
        v["typed_config"]["log_format"] = json!({ "text_format_source": { "inline_string": f } });
    }
    v
}

/// A STATIC round-robin cluster over 127.0.0.1:`ports` (empty: no endpoints at all).
pub fn cluster(name: &str, ports: &[u16]) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .map(|p| json!({ "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": p } } } }))
        .collect();
    let endpoints = if eps.is_empty() {
        json!([])
    } else {
        json!([{ "lb_endpoints": eps }])
    };
    json!({
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": { "cluster_name": name, "endpoints": endpoints }
    })
}

/// A cluster that speaks HTTP/2 (h2c) upstream, optionally with its own stream limit.
pub fn h2_cluster(name: &str, ports: &[u16], max_concurrent_streams: Option<u32>) -> Value {
    let mut c = cluster(name, ports);
    let h2 = match max_concurrent_streams {
        Some(n) => json!({ "max_concurrent_streams": n }),
        None => json!({}),
    };
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
            "explicit_http_config": { "http2_protocol_options": h2 }
        }
    });
    c
}

/// A tcp_proxy filter to `cluster`.
pub fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster }
    })
}

/// The everyday HTTP shape: admin, listener `ingress_http` on 127.0.0.1:`listen` (stat prefix
/// `ingress_http`, vhost `*`, prefix `/` → cluster `backend`), cluster `backend` over `upstreams`.
pub fn simple_http(admin: u16, listen: u16, upstreams: &[u16]) -> Value {
    bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "backend")])],
            ),
        )],
        vec![cluster("backend", upstreams)],
    )
}

/// `static_resources.listeners[i].filter_chains[0].filters[0].typed_config` (the HCM or tcp_proxy).
pub fn filter_config(v: &mut Value, listener: usize) -> &mut Value {
    &mut v["static_resources"]["listeners"][listener]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

/// The first listener's HCM `typed_config`.
pub fn hcm_config(v: &mut Value) -> &mut Value {
    filter_config(v, 0)
}

/// The first listener's `route_config`.
pub fn route_config(v: &mut Value) -> &mut Value {
    &mut hcm_config(v)["route_config"]
}

/// A bootstrap (YAML) with the admin on `admin` and one HTTP listener on `port` routing each
/// `(prefix, cluster)` in order, with the router only; `clusters` is the YAML list of the
/// clusters (each item starting `- name:` at the left margin).
pub fn http_bootstrap_yaml(
    admin: u16,
    port: u16,
    routes: &[(&str, &str)],
    clusters: &str,
) -> String {
    let routes: Vec<String> = routes
        .iter()
        .map(|(p, c)| {
            format!("              - {{match: {{prefix: {p}}}, route: {{cluster: {c}}}}}")
        })
        .collect();
    let clusters: String = clusters
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: test, cluster: test}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: test
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{clusters}"#,
        routes.join("\n")
    )
}
