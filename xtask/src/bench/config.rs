//! The configurations the benchmark runs: one Envoy v3 bootstrap for both proxies, and nginx's.

use std::path::Path;

use super::Row;

/// Loopback ports used by one benchmark run (picked free at start).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// nginx, HTTP/1.1: `/` returns "ok", `/64k` a 65,536-byte file.
    pub nginx_h1: u16,
    /// nginx, h2c (prior knowledge): `/` returns "ok".
    pub nginx_h2: u16,
    /// nginx, HTTP/1.1: `/` returns "alt" (the other upstream of the live-configuration rows).
    pub nginx_alt: u16,
    pub admin: u16,
    /// Proxy HTTP listener routing to the HTTP/1.1 upstream.
    pub http: u16,
    /// Proxy HTTP listener routing to the HTTP/2 upstream cluster.
    pub h2: u16,
    /// Proxy tcp_proxy listener to the HTTP/1.1 upstream.
    pub tcp: u16,
    /// Proxy HTTP listener to ten HTTP/1.1 endpoints (127.0.0.1–10) by least request.
    pub least_request: u16,
    /// Proxy HTTP listener to the same ten endpoints by a ring hash of `x-user`.
    pub ring_hash: u16,
}

/// Optional tuning from the benchmarking method. A proxy that rejects one of these gets it
/// dropped for both proxies, so both always run the same YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    CircuitBreakers,
    DynamicStats,
    SuppressEnvoyHeaders,
}

impl Tuning {
    pub const ALL: [Tuning; 3] = [
        Tuning::CircuitBreakers,
        Tuning::DynamicStats,
        Tuning::SuppressEnvoyHeaders,
    ];

    /// What the setting is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Tuning::CircuitBreakers => {
                "circuit breaker thresholds raised (max_connections, max_pending_requests, \
                 max_requests: 100000)"
            }
            Tuning::DynamicStats => "router `dynamic_stats: false`",
            Tuning::SuppressEnvoyHeaders => "router `suppress_envoy_headers: true`",
        }
    }

    /// The field name as it appears in the YAML (and in a rejection message).
    pub fn field(self) -> &'static str {
        match self {
            Tuning::CircuitBreakers => "circuit_breakers",
            Tuning::DynamicStats => "dynamic_stats",
            Tuning::SuppressEnvoyHeaders => "suppress_envoy_headers",
        }
    }
}

fn router(tuning: &[Tuning]) -> String {
    let mut s = String::from(
        "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n",
    );
    if tuning.contains(&Tuning::DynamicStats) {
        s.push_str("              dynamic_stats: false\n");
    }
    if tuning.contains(&Tuning::SuppressEnvoyHeaders) {
        s.push_str("              suppress_envoy_headers: true\n");
    }
    s
}

fn http_listener(name: &str, port: u16, cluster: &str, tuning: &[Tuning]) -> String {
    http_listener_with(name, port, cluster, "", tuning)
}

/// An HTTP listener whose one route has `extra` in its route action (flow style, e.g.
/// `, hash_policy: [...]`).
fn http_listener_with(
    name: &str,
    port: u16,
    cluster: &str,
    extra: &str,
    tuning: &[Tuning],
) -> String {
    let hosts = format!(
        r#"            - name: {name}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster}{extra} }}
"#
    );
    http_listener_hosts(name, port, &hosts, tuning)
}

/// An HTTP listener whose route table holds the virtual hosts `hosts` (YAML, indented).
fn http_listener_hosts(name: &str, port: u16, hosts: &str, tuning: &[Tuning]) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            name: {name}
            virtual_hosts:
{hosts}          http_filters:
{router}"#,
        router = router(tuning)
    )
}

fn cluster(name: &str, port: u16, h2: bool, tuning: &[Tuning]) -> String {
    cluster_with(name, port, 1, "ROUND_ROBIN", h2, tuning)
}

/// A static cluster of `hosts` endpoints, 127.0.0.1 to 127.0.0.<hosts>, all on `port`.
fn cluster_with(
    name: &str,
    port: u16,
    hosts: u8,
    lb_policy: &str,
    h2: bool,
    tuning: &[Tuning],
) -> String {
    let mut s = format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
    lb_policy: {lb_policy}
"#
    );
    if tuning.contains(&Tuning::CircuitBreakers) {
        s.push_str(
            r#"    circuit_breakers:
      thresholds:
      - max_connections: 100000
        max_pending_requests: 100000
        max_requests: 100000
"#,
        );
    }
    if h2 {
        s.push_str(
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"#,
        );
    }
    s.push_str(&format!(
        r#"    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
"#
    ));
    for i in 1..=hosts {
        s.push_str(&format!(
            r#"        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.{i}, port_value: {port} }}
"#
        ));
    }
    s
}

/// The bootstrap both proxies run. The load-balancer rows' listeners and clusters are in it
/// only when `rows` has those rows, so that an older build without their features can still
/// be measured on the others.
pub fn proxy_yaml(p: &Ports, tuning: &[Tuning], rows: &[Row]) -> String {
    proxy_yaml_with(
        p,
        tuning,
        rows,
        http_listener("bench_http", p.http, "upstream_h1", tuning),
    )
}

/// Virtual hosts and routes of the route-table row: this many hosts of this many routes.
pub const ROUTE_HOSTS: usize = 1_000;
/// Routes per virtual host of the route-table row.
pub const ROUTES_PER_HOST: usize = 10;

/// The bootstrap of the route-table row: the same, with the HTTP listener's table holding
/// 1,000 virtual hosts of 10 prefix routes each. The requests (any host but the 999 named
/// ones) go to the last, `*`, whose last route (`/`) matches after nine prefixes that do not.
pub fn proxy_yaml_routes(p: &Ports, tuning: &[Tuning], rows: &[Row]) -> String {
    let mut hosts = String::new();
    for h in 0..ROUTE_HOSTS {
        let domain = if h + 1 == ROUTE_HOSTS {
            "\"*\"".to_string()
        } else {
            format!("\"vh{h}.bench.example\"")
        };
        hosts.push_str(&format!(
            "            - name: vh{h}\n              domains: [{domain}]\n              routes:\n"
        ));
        for r in 0..ROUTES_PER_HOST {
            let prefix = if h + 1 == ROUTE_HOSTS && r + 1 == ROUTES_PER_HOST {
                "/".to_string()
            } else {
                format!("/v{h}/r{r}/")
            };
            hosts.push_str(&format!(
                "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: upstream_h1 }}\n"
            ));
        }
    }
    let listener = http_listener_hosts("bench_http", p.http, &hosts, tuning);
    proxy_yaml_with(p, tuning, rows, listener)
}

fn proxy_yaml_with(p: &Ports, tuning: &[Tuning], rows: &[Row], l_http: String) -> String {
    let fields: Vec<&str> = tuning.iter().map(|t| t.field()).collect();
    let lr10 = rows.contains(&Row::LeastRequest);
    let ring10 = rows.contains(&Row::RingHash);
    let when = |on: bool, s: String| if on { s } else { String::new() };
    format!(
        r#"# skiff benchmark bootstrap; the same file is given to skiff and to Envoy.
# tuning: {fields}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
{l_http}{l_h2}{l_lr}{l_ring}  - name: bench_tcp
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {tcp} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench_tcp
          cluster: upstream_h1
  clusters:
{c_h1}{c_h2}{c_lr}{c_ring}"#,
        fields = if fields.is_empty() {
            "none".to_string()
        } else {
            fields.join(", ")
        },
        admin = p.admin,
        tcp = p.tcp,
        l_h2 = http_listener("bench_h2", p.h2, "upstream_h2", tuning),
        c_h1 = cluster("upstream_h1", p.nginx_h1, false, tuning),
        c_h2 = cluster("upstream_h2", p.nginx_h2, true, tuning),
        l_lr = when(
            lr10,
            http_listener("bench_lr10", p.least_request, "upstream_lr10", tuning)
        ),
        l_ring = when(
            ring10,
            http_listener_with(
                "bench_ring10",
                p.ring_hash,
                "upstream_ring10",
                ", hash_policy: [{ header: { header_name: x-user } }]",
                tuning
            )
        ),
        c_lr = when(
            lr10,
            cluster_with(
                "upstream_lr10",
                p.nginx_h1,
                10,
                "LEAST_REQUEST",
                false,
                tuning
            )
        ),
        c_ring = when(
            ring10,
            cluster_with(
                "upstream_ring10",
                p.nginx_h1,
                10,
                "RING_HASH",
                false,
                tuning
            )
        ),
    )
}

/// nginx as the upstream: one process (`master_process off`), everything under `dir`.
pub fn nginx_conf(p: &Ports, dir: &Path) -> String {
    let d = dir.display();
    // The "ok" and "alt" servers also on 127.0.0.2 to 127.0.0.10: the live-configuration
    // rows give one cluster ten endpoints on them.
    let more = |port: u16| -> String {
        (2..=10)
            .map(|i| format!("        listen 127.0.0.{i}:{port};\n"))
            .collect()
    };
    let servers = format!(
        r#"    server {{
        listen 127.0.0.1:{h1} backlog=4096;
{h1_more}        location = /64k {{
            root {d}/www;
        }}
        location / {{
            return 200 "ok";
        }}
    }}
    server {{
        listen 127.0.0.1:{h2} http2 backlog=4096;
        http2_max_concurrent_streams 1024;
        location / {{
            return 200 "ok";
        }}
    }}
    server {{
        listen 127.0.0.1:{alt} backlog=4096;
{alt_more}        location / {{
            return 200 "alt";
        }}
    }}
"#,
        h1 = p.nginx_h1,
        h2 = p.nginx_h2,
        alt = p.nginx_alt,
        h1_more = more(p.nginx_h1),
        alt_more = more(p.nginx_alt),
    );
    nginx_conf_with(dir, "nginx", &servers)
}

/// The one-process nginx settings around `servers`, with its pid and error log named `name`.
pub fn nginx_conf_with(dir: &Path, name: &str, servers: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{
    worker_connections 16384;
    multi_accept on;
}}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{servers}}}
"#
    )
}
