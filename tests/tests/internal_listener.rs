//! Internal listeners side by side with Envoy 1.40: listeners with no socket that clusters
//! reach in memory through `envoy_internal_address` endpoints, with `internal_upstream`
//! passing the endpoint's metadata through to the listener's connection.
//!
//! One configuration carries four paths, each checked through both proxies:
//! - TCP: a tcp_proxy to an internal listener whose tcp_proxy goes on to an echo upstream;
//!   both access logs (the internal addresses, the metadata passed through) and the bytes.
//! - A CONNECT tunnel, as Envoy's own example configurations chain them: HTTP into an internal
//!   listener whose tcp_proxy tunnels over HTTP/2 CONNECT to this proxy's own listener, which
//!   terminates CONNECT into another internal listener answering with a direct response.
//! - Istio's waypoint shape: an HTTP route to an internal listener whose `original_dst`
//!   listener filter takes the destination from the metadata passed through, a listener
//!   matcher that picks a chain by that destination's port, and an ORIGINAL_DST cluster to
//!   the upstream it names.
//! - An endpoint naming no internal listener: the connection fails (503, `UF`).
//! - HBONE as Istio's waypoints terminate it: an HTTP/2 CONNECT whose target and client
//!   `set_filter_state` shares with the upstream connection to an internal listener, where
//!   original_dst restores them and the other shared objects are the connection's.

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::echo::EchoUpstream;
use skiff_tests::upstream::tcp::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run_for};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";
const NET: &str = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3";

/// A file access log with `format`.
fn log(path: &str, format: &str) -> String {
    format!(
        r#"[{{name: f, typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: "{path}", log_format: {{text_format_source: {{inline_string: "{format}\n"}}}}}}}}]"#
    )
}

/// A cluster of internal endpoints (listener, endpoint id, `original_dst` destination).
fn internal_cluster(name: &str, endpoints: &[(&str, &str, Option<u16>)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(l, id, dst)| {
            let md = match dst {
                Some(p) => format!(
                    r#", metadata: {{filter_metadata: {{envoy.filters.listener.original_dst: {{local: "127.0.0.1:{p}"}}, tag: {{endpoint: {id}}}}}}}"#
                ),
                None => format!(r#", metadata: {{filter_metadata: {{tag: {{endpoint: {id}}}}}}}"#),
            };
            format!(
                r#"{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: {l}, endpoint_id: {id}}}}}}}{md}}}"#
            )
        })
        .collect();
    format!(
        r#"
  - name: {name}
    connect_timeout: 1s
    metadata: {{filter_metadata: {{cluster_tag: {{cluster: {name}}}}}}}
    transport_socket:
      name: iu
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        passthrough_metadata:
        - {{kind: {{host: {{}}}}, name: envoy.filters.listener.original_dst}}
        - {{kind: {{host: {{}}}}, name: tag}}
        - {{kind: {{cluster: {{}}}}, name: cluster_tag}}
        transport_socket: {{name: raw, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{}]}}]"#,
        eps.join(", ")
    )
}

struct Ports {
    admin: u16,
    tcp: u16,
    http: u16,
    connect: u16,
    hbone: u16,
    echo_tcp: u16,
    echo_http: u16,
}

fn config(p: &Ports, dir: &str) -> String {
    let Ports {
        admin,
        tcp,
        http,
        connect,
        hbone,
        echo_tcp,
        echo_http,
    } = p;
    let hbone_log = log(
        &format!("{dir}/hbone.log"),
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %FILTER_STATE(my.peer:PLAIN)% %FILTER_STATE(my.transitive:PLAIN)%",
    );
    let shared = |key: &str, value: &str, how: &str, factory: &str| {
        format!(
            r#"{{object_key: {key}, {factory}format_string: {{text_format_source: {{inline_string: "{value}"}}}}, shared_with_upstream: {how}}}"#
        )
    };
    let set_filter_state = format!(
        r#"{{name: connect_authority, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config, on_request_headers: [{}, {}, {}, {}]}}}}"#,
        shared(
            "envoy.filters.listener.original_dst.local_ip",
            "%REQ(:AUTHORITY)%",
            "ONCE",
            ""
        ),
        shared(
            "envoy.filters.listener.original_dst.remote_ip",
            "%DOWNSTREAM_REMOTE_ADDRESS%",
            "ONCE",
            ""
        ),
        shared(
            "my.peer",
            "spiffe://cluster.local/ns/a/sa/b",
            "ONCE",
            "factory_key: envoy.string, "
        ),
        shared(
            "my.transitive",
            "kept",
            "TRANSITIVE",
            "factory_key: envoy.string, "
        ),
    );
    let outer_log = log(
        &format!("{dir}/outer.log"),
        "%UPSTREAM_HOST% %UPSTREAM_LOCAL_ADDRESS% %RESPONSE_FLAGS%",
    );
    let inner_log = log(
        &format!("{dir}/inner.log"),
        "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %DYNAMIC_METADATA(tag)% %DYNAMIC_METADATA(cluster_tag)%",
    );
    let http_log = log(
        &format!("{dir}/http.log"),
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER%",
    );
    let waypoint_log = log(
        &format!("{dir}/waypoint.log"),
        "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %DYNAMIC_METADATA(tag)%",
    );
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    buffer_size_kb: 64
static_resources:
  listeners:
  - name: tcp_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp}}}}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config: {{"@type": {TCP}, stat_prefix: tcp_in, cluster: to_encap, access_log: {outer_log}}}
  - name: encap
    internal_listener: {{}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config: {{"@type": {TCP}, stat_prefix: encap, cluster: echo_tcp, access_log: {inner_log}}}
  - name: http_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": {HCM}
          stat_prefix: http_in
          access_log: {http_log}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: /tunnel}}, route: {{cluster: to_tunnel}}}}
              - {{match: {{prefix: /waypoint}}, route: {{cluster: to_waypoint}}}}
              - {{match: {{prefix: /missing}}, route: {{cluster: to_nowhere}}}}
          http_filters: [{ROUTER}]
  - name: encap_connect
    internal_listener: {{}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config: {{"@type": {TCP}, stat_prefix: encap_connect, cluster: connect_term, tunneling_config: {{hostname: "host.com:443"}}}}
  - name: connect_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {connect}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": {HCM}
          stat_prefix: connect_in
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: to_decap, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
          http_filters: [{ROUTER}]
  - name: decap
    internal_listener: {{}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": {HCM}
          stat_prefix: decap
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: "Hello, world!\n"}}}}
          http_filters: [{ROUTER}]
  - name: waypoint
    internal_listener: {{}}
    listener_filters:
    - {{name: od, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}}}
    - {{name: hi, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}}}
    filter_chain_matcher:
      matcher_tree:
        input: {{name: port, typed_config: {{"@type": {NET}.DestinationPortInput}}}}
        exact_match_map:
          map:
            "{echo_http}":
              action: {{name: http, typed_config: {{"@type": type.googleapis.com/google.protobuf.StringValue, value: http}}}}
    filter_chains:
    - name: http
      filters:
      - name: hcm
        typed_config:
          "@type": {HCM}
          stat_prefix: waypoint
          use_remote_address: true
          access_log: {waypoint_log}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: /}}, route: {{cluster: passthrough}}}}
          http_filters: [{ROUTER}]
  - name: hbone_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {hbone}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": {HCM}
          stat_prefix: hbone_in
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}, headers: [{{name: x-bare, present_match: true}}]}}
                route: {{cluster: to_main_internal_bare, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: to_main_internal, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
          http_filters: [{set_filter_state}, {ROUTER}]
  - name: main_internal
    internal_listener: {{}}
    listener_filters:
    - {{name: od, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config: {{"@type": {TCP}, stat_prefix: main_internal, cluster: passthrough, access_log: {hbone_log}}}
  clusters:{to_encap}{to_tunnel}{to_waypoint}{to_nowhere}{to_decap}
  - name: to_main_internal
    connect_timeout: 1s
    transport_socket:
      name: iu
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        transport_socket: {{name: raw, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}
    load_assignment:
      cluster_name: to_main_internal
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: main_internal}}}}}}}}]}}]
  - name: to_main_internal_bare
    connect_timeout: 1s
    load_assignment:
      cluster_name: to_main_internal_bare
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: main_internal}}}}}}}}]}}]
  - name: echo_tcp
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo_tcp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo_tcp}}}}}}}}}]}}]
  - name: connect_term
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: connect_term
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {connect}}}}}}}}}]}}]
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#,
        to_encap = internal_cluster("to_encap", &[("encap", "e1", None)]),
        to_tunnel = internal_cluster("to_tunnel", &[("encap_connect", "", None)]),
        to_waypoint = internal_cluster("to_waypoint", &[("waypoint", "w1", Some(*echo_http))]),
        to_nowhere = internal_cluster("to_nowhere", &[("nowhere", "n1", None)]),
        to_decap = internal_cluster("to_decap", &[("decap", "", None)]),
    )
}

/// What one proxy did with the four paths.
#[derive(Debug, PartialEq)]
struct Seen {
    tcp_reply: Vec<u8>,
    tcp_upstream: Vec<Vec<u8>>,
    responses: Vec<String>,
    upstream_headers: Vec<String>,
    logs: Vec<String>,
    clusters: Vec<String>,
    stats: Vec<String>,
}

async fn drive(kind: Kind) -> Seen {
    let echo_tcp = TcpUpstream::start(TcpMode::Echo).await;
    let echo_http = EchoUpstream::start("waypoint-target").await;
    let ports = Ports {
        admin: free_port(),
        tcp: free_port(),
        http: free_port(),
        connect: free_port(),
        hbone: free_port(),
        echo_tcp: echo_tcp.port(),
        echo_http: echo_http.port(),
    };
    let dir = skiff_tests::scratch_dir(&format!("internal-listener-{}", kind.name()));
    let d = dir.display().to_string();
    let p = ProxyProcess::start(kind, &config(&ports, &d), &[]).await;

    // TCP through an internal listener, half-closed by the client.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ports.tcp))
        .await
        .expect("connect");
    s.write_all(b"through the internal listener")
        .await
        .expect("write");
    s.shutdown().await.expect("half-close");
    let mut tcp_reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut tcp_reply))
        .await
        .expect("echo in time")
        .expect("read");
    let tcp_upstream = echo_tcp
        .wait_finished(1, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|r| r.received)
        .collect();

    let addr = format!("127.0.0.1:{}", ports.http);
    let mut responses = Vec::new();
    for path in ["/tunnel", "/waypoint/a?x=1", "/missing"] {
        let r = client::http1_once(&addr, client::get(path, "example.com")).await;
        responses.push(match r {
            // The request id is random.
            Ok(r) => format!(
                "{path}: {} {}",
                r.status,
                r.text()
                    .trim_end()
                    .lines()
                    .filter(|l| !l.starts_with("x-request-id:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Err(e) => format!("{path}: {e}"),
        });
    }
    let upstream_headers = echo_http
        .rec
        .wait_requests(1, Duration::from_secs(5))
        .await
        .iter()
        .map(|r| {
            let xff = r.header("x-forwarded-for").unwrap_or("-");
            let proto = r.header("x-forwarded-proto").unwrap_or("-");
            format!("{} {} xff={xff} proto={proto}", r.method, r.path)
        })
        .collect();

    // HBONE as Istio's waypoints terminate it: an HTTP/2 CONNECT whose target and client the
    // stream shares with the internal listener's connection, restored by its original_dst.
    let (status, echo) =
        client::connect_h2(ports.hbone, &format!("127.0.0.1:{}", ports.echo_tcp), &[]).await;
    responses.push(format!(
        "hbone: {status} {}",
        String::from_utf8_lossy(&echo)
    ));
    // Without internal_upstream nothing is handed over: no destination to go to.
    let (status, echo) = client::connect_h2(
        ports.hbone,
        &format!("127.0.0.1:{}", ports.echo_tcp),
        &[("x-bare", "1")],
    )
    .await;
    responses.push(format!(
        "hbone bare: {status} {}",
        String::from_utf8_lossy(&echo)
    ));

    let admin = p.admin();
    let mut clusters: Vec<String> = admin
        .get("/clusters")
        .await
        .text()
        .lines()
        .filter(|l| {
            l.contains("envoy://") && (l.contains("::cx_total::") || l.contains("::health_flags::"))
        })
        .map(str::to_string)
        .collect();
    clusters.sort();
    let all = admin.stats().await;
    let mut stats: Vec<String> = [
        "listener.envoy_internal_encap.downstream_cx_total",
        "listener.envoy_internal_waypoint.downstream_cx_total",
        "listener.envoy_internal_decap.downstream_cx_total",
        "listener.envoy_internal_encap_connect.downstream_cx_total",
        "listener.envoy_internal_main_internal.downstream_cx_total",
        "cluster.to_encap.upstream_cx_total",
        "cluster.to_nowhere.upstream_cx_connect_fail",
        "cluster.to_waypoint.upstream_rq_200",
        "cluster.passthrough.upstream_rq_200",
        "http.decap.downstream_rq_2xx",
        "tcp.encap.downstream_cx_total",
    ]
    .iter()
    .map(|k| {
        format!(
            "{k}={}",
            all.get(*k).map(String::as_str).unwrap_or("absent")
        )
    })
    .collect();
    stats.sort();
    let mut logs = Vec::new();
    for (name, n) in [
        ("outer", 1),
        ("inner", 1),
        ("http", 3),
        ("waypoint", 1),
        ("hbone", 2),
    ] {
        let lines = skiff_tests::sorted_log_lines(&dir.join(format!("{name}.log")), n).await;
        // The upstreams' ports differ from run to run.
        logs.extend(lines.into_iter().map(|l| {
            format!("{name}: {l}")
                .replace(&format!(":{}", ports.echo_tcp), ":ECHO_TCP")
                .replace(&format!(":{}", ports.echo_http), ":ECHO_HTTP")
        }));
    }
    drop(p);
    Seen {
        tcp_reply,
        tcp_upstream,
        responses,
        upstream_headers,
        logs,
        clusters,
        stats,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listeners_serve_as_envoys_do() {
    run_for(Duration::from_secs(90), async {
        let envoy = drive(Kind::Envoy).await;
        let skiff = drive(Kind::Skiff).await;
        println!("envoy: {envoy:#?}");
        assert_eq!(envoy.tcp_reply, b"through the internal listener".to_vec());
        assert!(
            envoy.responses[0].ends_with("200 Hello, world!"),
            "{envoy:#?}"
        );
        assert!(envoy.responses[1].contains(" 200 "), "{envoy:#?}");
        assert!(envoy.responses[2].contains(" 503 "), "{envoy:#?}");
        assert_eq!(envoy.responses[3], "hbone: 200 through the stream");
        assert_eq!(envoy.responses[4], "hbone bare: 503 ");
        assert_eq!(skiff, envoy, "skiff (left) and Envoy (right) differ");
    })
    .await;
}
