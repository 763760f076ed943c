//! Istio's own sidecar config dumps (istioctl's testdata, kept in the configuration corpus next
//! to this repository): their dynamic listeners, clusters, routes and endpoints are served over
//! delta ADS through a Unix socket to skiff, started as pilot-agent starts the proxy (Istio's
//! rendered bootstrap, pilot-agent's command line) in a network namespace of its own, with the
//! workload certificate and root over SDS from a second socket. skiff must ACK every resource
//! except those that use what docs/istio.md lists as not run yet, and become ready, as
//! pilot-agent requires of a pod.
//!
//! Without the corpus (`SKIFF_CORPUS`, or `../shared/corpus`) there is nothing to check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use skiff_tests::netns::{pair, skiff_iptables, text, veth_names, Netns, PROXY_UID, SIDECAR_FLAGS};
use skiff_tests::proxy::Kind;
use skiff_tests::xds::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use skiff_tests::{run_for, scratch_dir};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The node of Istio's default bootstrap golden.
const NODE: &str = "sidecar~1.2.3.4~foo~bar";

/// What a NACK may name: features docs/istio.md lists as not run yet (Wasm, istio-proxy's
/// own ambient filters).
const NOT_YET: &[&str] = &[
    // Wasm other than the null VM's metadata exchange (a WasmPlugin; older Istio's stats).
    "envoy.extensions.filters.http.wasm.v3.Wasm",
    "envoy.extensions.filters.network.wasm.v3.Wasm",
    // istio-proxy's own ambient extensions, which upstream Envoy does not have either: the
    // internal listener's destination from HBONE's CONNECT authority, and HBONE's baggage.
    "istio.set_internal_dst_address",
    "io.istio.http.connect_baggage.Config",
];

/// What a NACK may name because Envoy 1.40 refuses it too, in dumps cut short by hand: an EDS
/// cluster without `eds_cluster_config` ("cannot create an EDS cluster without an EDS
/// config"), an inline route to a cluster the dump left out.
const ENVOY_TOO: &[&str] = &[
    "eds_cluster_config: required for an EDS cluster",
    "unknown cluster 'main_internal'",
];

/// Whether a NACK's line names only what skiff may refuse.
fn expected(line: &str) -> bool {
    NOT_YET.iter().chain(ENVOY_TOO).any(|n| line.contains(n))
}

fn corpus() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SKIFF_CORPUS") {
        return Some(PathBuf::from(d));
    }
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    d.is_dir().then_some(d)
}

/// The dynamic resources of a config dump, by type URL.
fn resources(dump: &Value) -> Vec<(&'static str, Vec<Value>)> {
    let mut out = vec![
        (CLUSTER, Vec::new()),
        (ENDPOINT, Vec::new()),
        (LISTENER, Vec::new()),
        (ROUTE, Vec::new()),
    ];
    let push = |out: &mut Vec<(&'static str, Vec<Value>)>, t: &str, v: &Value| {
        if let Some((_, list)) = out.iter_mut().find(|(u, _)| *u == t) {
            list.push(v.clone());
        }
    };
    for c in dump["configs"].as_array().into_iter().flatten() {
        let kind = c["@type"].as_str().unwrap_or_default();
        let items = |field: &str| c[field].as_array().cloned().unwrap_or_default();
        if kind.ends_with("ListenersConfigDump") {
            for l in items("dynamic_listeners") {
                push(&mut out, LISTENER, &l["active_state"]["listener"]);
            }
        } else if kind.ends_with("ClustersConfigDump") {
            for c in items("dynamic_active_clusters") {
                push(&mut out, CLUSTER, &c["cluster"]);
            }
        } else if kind.ends_with("RoutesConfigDump") {
            for r in items("dynamic_route_configs") {
                push(&mut out, ROUTE, &r["route_config"]);
            }
        } else if kind.ends_with("EndpointsConfigDump") {
            for e in items("dynamic_endpoint_configs") {
                push(&mut out, ENDPOINT, &e["endpoint_config"]);
            }
        }
    }
    for (_, list) in &mut out {
        list.retain(|v| v.is_object());
    }
    // A dump of listeners alone (istioctl's authz testdata) names route configurations and
    // has no cluster: an empty table for each name and Istio's BlackHoleCluster stand in, so
    // that the proxy gets past CDS and RDS as it would with istiod.
    let mut names = Vec::new();
    route_names(dump, &mut names);
    names.sort();
    names.dedup();
    let have: Vec<String> = out[3]
        .1
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    for n in names.into_iter().filter(|n| !have.contains(n)) {
        out[3].1.push(serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": n,
        }));
    }
    // An EDS cluster whose assignment the dump lacks gets an empty one.
    let assigned: Vec<String> = out[1]
        .1
        .iter()
        .filter_map(|e| e["cluster_name"].as_str().map(str::to_string))
        .collect();
    let eds: Vec<String> = out[0]
        .1
        .iter()
        .filter(|c| c["type"] == "EDS")
        .map(|c| {
            c["eds_cluster_config"]["service_name"]
                .as_str()
                .or(c["name"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for n in eds.into_iter().filter(|n| !assigned.contains(n)) {
        out[1].1.push(serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": n,
        }));
    }
    if out[0].1.is_empty() {
        out[0].1.push(serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "BlackHoleCluster",
            "type": "STATIC",
            "connect_timeout": "10s",
        }));
    }
    out
}

/// The names and `@type`s of the objects on the way to the field a NACK line names
/// (`… <resource name>: resources[N].<path>: <why>`), in the resource of that name.
fn context(list: &[Value], line: &str) -> String {
    let Some((head, rest)) = line.split_once(": resources[") else {
        return String::new();
    };
    let name = head.rsplit(' ').next().unwrap_or_default();
    let Some(resource) = list.iter().find(|r| r["name"] == name) else {
        return String::new();
    };
    let path = rest
        .split_once("].")
        .map(|(_, p)| p.split_once(": ").map_or(p, |(p, _)| p))
        .unwrap_or_default();
    let mut out = String::new();
    let mut cur = resource;
    for seg in path.split('.') {
        let (field, index) = match seg.split_once('[') {
            Some((f, i)) => (f, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        cur = &cur[field];
        if let Some(i) = index {
            cur = &cur[i];
        }
        for k in ["name", "@type", "type_url"] {
            if let Some(v) = cur[k].as_str() {
                out.push_str(v);
                out.push(' ');
            }
        }
    }
    out
}

/// Whether a resource can be written in binary, as the control plane writes it.
fn encodable(r: &Value) -> Result<(), String> {
    let text = format!(
        "resources:\n {}",
        serde_json::to_string(&[r]).expect("JSON")
    );
    let desc = skiff::config::proto::message("envoy.service.discovery.v3.DiscoveryResponse")
        .map_err(|e| e.to_string())?;
    skiff::config::proto::decode_text_lenient_keeping_typed_structs(&text, desc)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Every `route_config_name` in a dump's listeners.
fn route_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("route_config_name", Value::String(n)) => out.push(n.clone()),
                    _ => route_names(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| route_names(x, out)),
        _ => {}
    }
}

/// The mesh's certificate authority, as istiod's.
struct MeshCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl MeshCa {
    fn new() -> MeshCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        let cert = p.self_signed(&key).expect("CA");
        MeshCa { cert, key }
    }
}

/// Secrets `default` and `ROOTCA` for service account `default`, as pilot-agent's SDS server
/// sends them.
fn secrets(dir: &Path) -> String {
    workload_secrets(dir, &MeshCa::new(), "default")
}

/// Secrets `default` (a workload certificate whose only name is the SPIFFE identity of
/// service account `sa` in namespace `default`, as istiod signs it) and `ROOTCA`.
fn workload_secrets(dir: &Path, mesh: &MeshCa, sa: &str) -> String {
    let (ca, ca_key) = (&mesh.cert, &mesh.key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    // istiod's workload certificates have an empty subject.
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .try_into()
            .expect("URI"),
    ));
    let leaf = p.signed_by(&key, ca, ca_key).expect("leaf");
    let files = [
        (dir.join("cert.pem"), leaf.pem()),
        (dir.join("key.pem"), key.serialize_pem()),
        (dir.join("root.pem"), ca.pem()),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).expect("write");
    }
    format!(
        r#"- "@type": {SECRET}
  name: default
  tls_certificate: {{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}
- "@type": {SECRET}
  name: ROOTCA
  validation_context: {{trusted_ca: {{filename: {}}}}}
"#,
        files[0].0.display(),
        files[1].0.display(),
        files[2].0.display()
    )
}

/// Istio's default bootstrap golden, its xDS and SDS sockets moved to `dir`.
fn bootstrap(corpus: &Path, dir: &Path) -> PathBuf {
    let golden = corpus.join("istio/pkg__bootstrap__testdata__default_golden.json");
    let mut b: Value =
        serde_json::from_str(&std::fs::read_to_string(golden).expect("golden")).expect("JSON");
    for c in b["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        let sock = match c["name"].as_str() {
            Some("xds-grpc") => dir.join("XDS"),
            Some("sds-grpc") => dir.join("SDS"),
            _ => continue,
        };
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
            serde_json::json!({"pipe": {"path": sock.display().to_string()}});
    }
    let path = dir.join("envoy-rev.json");
    std::fs::write(&path, serde_json::to_string_pretty(&b).expect("JSON")).expect("write");
    path
}

/// pilot-agent's command line after the binary (istio pkg/envoy/proxy.go).
fn pilot_agent_args(config: &str) -> impl Iterator<Item = &str> {
    [
        "-c",
        config,
        "--drain-time-s",
        "45",
        "--drain-strategy",
        "immediate",
        "--local-address-ip-version",
        "v4",
        "--file-flush-interval-msec",
        "1000",
        "--disable-hot-restart",
        "--allow-unknown-static-fields",
        "--log-format",
        "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
        "-l",
        "warning",
        "--component-log-level",
        "misc:error",
        "--skip-deprecated-logs",
        "--concurrency",
        "2",
    ]
    .into_iter()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_config_dumps_load_over_delta_ads_as_pilot_agent_runs_the_proxy() {
    let Some(corpus) = corpus() else {
        eprintln!("the corpus is not here: nothing to check");
        return;
    };
    run_for(Duration::from_secs(120), async {
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(corpus.join("_dumps/istio"))
            .expect("dumps")
            .flatten()
            .map(|e| e.path())
            .collect();
        dumps.sort();
        let mut checked = 0;
        for dump in dumps {
            let name = dump
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&dump).expect("dump");
            let Ok(json) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let res = resources(&json);
            if res.iter().all(|(_, l)| l.is_empty()) {
                continue;
            }
            let dir = scratch_dir("istio-dump");
            let mut xds = ControlPlane::start(CP, 0, &dir.join("XDS")).await;
            let mut sds = ControlPlane::start(CP, 0, &dir.join("SDS")).await;
            sds.set(NODE, SECRET, "1", &secrets(&dir)).await;
            let mut res = res;
            for (_, list) in &mut res {
                // A resource whose messages are not in Envoy 1.40's descriptor set cannot be
                // written as istiod writes it; it must be one of what skiff does not run yet.
                list.retain(|r| match encodable(r) {
                    Ok(()) => true,
                    Err(e) => {
                        assert!(expected(&e), "{name}: cannot serve {}: {e}", r["name"]);
                        false
                    }
                });
            }
            for (t, list) in &res {
                let yaml = format!(" {}", serde_json::to_string(list).expect("JSON"));
                xds.set(NODE, t, "1", &yaml).await;
            }
            let config = bootstrap(&corpus, &dir);
            let mut ns = Netns::new("istio");
            let skiff = Kind::Skiff.binary().display().to_string();
            let config = config.display().to_string();
            let args: Vec<&str> = std::iter::once(skiff.as_str())
                .chain(pilot_agent_args(&config))
                .collect();
            ns.spawn(&args, "skiff.log");
            // Readiness needs listeners (an empty LDS answer never comes in delta).
            let listeners = res.iter().any(|(t, l)| *t == LISTENER && !l.is_empty());
            if listeners {
                tokio::task::block_in_place(|| ns.wait_ready(&name, "skiff.log"));
            } else {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for (t, list) in &res {
                // A type nothing accepted names (RDS for NACKed listeners) is not asked for.
                let asked = xds.requests(NODE).iter().any(|r| r["type_url"] == *t);
                if list.is_empty() || !asked {
                    continue;
                }
                let a = xds.answer(NODE, t, "1").await;
                let Some(error) = a.error else { continue };
                let unexpected: Vec<&str> = error
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .filter(|l| {
                        let seen = format!("{l} {}", context(list, l));
                        !expected(&seen)
                    })
                    .collect();
                assert!(
                    unexpected.is_empty(),
                    "{name}: {t} NACKed for what skiff should run:\n{}",
                    unexpected.join("\n")
                );
            }
            if listeners {
                let live = tokio::task::block_in_place(|| ns.stat("server.state"));
                assert_eq!(live, 0, "{name}: server.state (0 = LIVE)");
            }
            checked += 1;
            xds.stop().await;
            sds.stop().await;
        }
        assert!(checked >= 4, "{checked} dumps checked");
    })
    .await;
}

/// The SDS source of Istio's TLS contexts: pilot-agent's `sds-grpc` cluster.
fn sds_source(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
        },
    })
}

/// An outbound cluster as istiod writes one for a service port (pilot `cluster_builder.go`,
/// `cluster_tls.go`): EDS over ADS, least request, auto-mTLS through `transport_socket_matches`
/// on the endpoints' `tlsMode`, the service accounts' SPIFFE names required of the server.
fn outbound_cluster(port: u16, host: &str, sa: &str) -> Value {
    let name = format!("outbound|{port}||{host}");
    let short = host.split('.').next().unwrap_or_default();
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "service_name": name,
        },
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {},
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32, "max_retries": 4294967295u32, "track_remaining": true,
        }]},
        "filters": [{
            "name": "istio.metadata_exchange",
            "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
                "value": {"protocol": "istio-peer-exchange"},
            },
        }],
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": host, "name": short, "namespace": "default"}],
        }}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {
                    "http_protocol_options": {}, "http2_protocol_options": {},
                },
            },
        },
        "alt_stat_name": format!("{name};"),
        "transport_socket_matches": [
            {
                "name": "tlsMode-istio",
                "match": {"tlsMode": "istio"},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {
                            "tls_params": {
                                "tls_minimum_protocol_version": "TLSv1_2",
                                "tls_maximum_protocol_version": "TLSv1_3",
                            },
                            "alpn_protocols": ["istio-peer-exchange", "istio"],
                            "tls_certificate_sds_secret_configs": [sds_source("default")],
                            "combined_validation_context": {
                                "default_validation_context": {"match_subject_alt_names": [
                                    {"exact": format!("spiffe://cluster.local/ns/default/sa/{sa}")},
                                ]},
                                "validation_context_sds_secret_config": sds_source("ROOTCA"),
                            },
                        },
                        "sni": format!("outbound_.{port}_._.{host}"),
                    },
                },
            },
            {
                "name": "tlsMode-disabled",
                "match": {},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                    },
                },
            },
        ],
    })
}

/// Istio's fixed clusters (pilot `cluster.go`): the passthrough clusters (inbound ones bound
/// to 127.0.0.6, which the capture rules let through), the black hole, an inbound port's
/// cluster, and the ext_authz service the authz dump's inbound filters name.
fn fixed_clusters() -> Vec<Value> {
    let original_dst = |name: &str, inbound: bool| {
        let mut c = serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "10s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": {"idle_timeout": "300s"},
                    "use_downstream_protocol_config": {
                        "http_protocol_options": {}, "http2_protocol_options": {},
                    },
                },
            },
        });
        if inbound {
            c["upstream_bind_config"] =
                serde_json::json!({"source_address": {"address": "127.0.0.6", "port_value": 0}});
        }
        c
    };
    // An inbound port's cluster never forgets its destinations (Istio's "max duration").
    let mut inbound_port = original_dst("inbound|80||", true);
    inbound_port["cleanup_interval"] = "9223372035s".into();
    let mut ext_authz = outbound_cluster(9191, "sample-ext-authz-grpc", "ext-authz");
    ext_authz["name"] = "outbound|9191||sample-ext-authz-grpc".into();
    vec![
        original_dst("PassthroughCluster", false),
        original_dst("InboundPassthroughClusterIpv4", true),
        inbound_port,
        serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "BlackHoleCluster",
            "type": "STATIC",
            "connect_timeout": "10s",
        }),
        ext_authz,
    ]
}

/// Route configuration `8000` (what the authz dump's outbound listener `0.0.0.0_8000` asks
/// for), as istiod writes it (pilot `httproute.go`): a virtual host per service on the port,
/// named by its host names and cluster IP, and `allow_any` to the passthrough cluster.
fn outbound_routes() -> Value {
    let vhost = |host: &str, vip: &str| {
        let short = host.split('.').next().unwrap_or_default();
        let cluster = format!("outbound|8000||{host}");
        serde_json::json!({
            "name": format!("{host}:8000"),
            "domains": [host, short, format!("{short}.default.svc"), format!("{short}.default"), vip],
            "include_request_attempt_count": true,
            "routes": [{
                "name": "default",
                "match": {"prefix": "/"},
                "decorator": {"operation": format!("{host}:8000/*")},
                "route": {
                    "cluster": cluster,
                    "timeout": "0s",
                    "max_grpc_timeout": "0s",
                    "retry_policy": {
                        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                        "num_retries": 2,
                        "retry_host_predicate": [{
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
                        }],
                        "host_selection_retry_max_attempts": "5",
                    },
                },
            }],
        })
    };
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "8000",
        "validate_clusters": false,
        "ignore_port_in_host_matching": true,
        "virtual_hosts": [
            vhost("httpbin.default.svc.cluster.local", "10.96.50.50"),
            vhost("impostor.default.svc.cluster.local", "10.96.50.51"),
            {
                "name": "allow_any",
                "domains": ["*"],
                "include_request_attempt_count": true,
                "routes": [{
                    "name": "allow_any",
                    "match": {"prefix": "/"},
                    "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"},
                }],
            },
        ],
    })
}

/// The assignment of an outbound cluster: the pod at `ip:port`, with a sidecar (`tlsMode`).
fn pod_endpoint(cluster: &str, ip: &str, port: u16, workload: &str) -> Value {
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{
            "locality": {},
            "lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
                "health_status": "HEALTHY",
                "metadata": {"filter_metadata": {
                    "envoy.transport_socket_match": {"tlsMode": "istio"},
                    "istio": {"workload": format!("{workload};default;{workload};v1;Kubernetes")},
                }},
                "load_balancing_weight": 1,
            }],
            "load_balancing_weight": 1,
        }],
    })
}

/// The authz dump's listeners a sidecar's traffic passes: `virtualOutbound`, the outbound
/// HTTP listener of port 8000, and `virtualInbound`.
fn mesh_listeners(corpus: &Path) -> Vec<Value> {
    let dump = corpus.join("_dumps/istio/istioctl__pkg__authz__testdata__configdump.yaml");
    let text = std::fs::read_to_string(dump).expect("authz dump");
    let dump: Value = serde_yaml::from_str(&text).expect("YAML");
    let all = resources(&dump);
    let listeners = &all
        .iter()
        .find(|(t, _)| *t == LISTENER)
        .expect("listeners")
        .1;
    ["virtualOutbound", "0.0.0.0_8000", "virtualInbound"]
        .iter()
        .map(|n| {
            listeners
                .iter()
                .find(|l| l["name"] == *n)
                .unwrap_or_else(|| panic!("{n} in the authz dump"))
                .clone()
        })
        .collect()
}

/// `virtualInbound` as istiod writes it for a workload no authorization policy selects: the
/// same chains without the RBAC and ext_authz filters.
fn without_authorization(mut inbound: Value) -> Value {
    for chain in inbound["filter_chains"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let filters = chain["filters"].as_array_mut().expect("filters");
        filters.retain(|f| f["name"] != "envoy.filters.network.rbac");
        for f in filters {
            if let Some(list) = f["typed_config"]["http_filters"].as_array_mut() {
                list.retain(|h| {
                    !matches!(
                        h["name"].as_str(),
                        Some("envoy.filters.http.rbac" | "envoy.filters.http.ext_authz")
                    )
                });
            }
        }
    }
    inbound
}

/// A recording application: answers every GET on each port given with what it received (the
/// path, the peer's address, the headers) as JSON, and logs each request.
const APP: &str = r#"
import http.server, json, socketserver, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"path": self.path, "peer": self.client_address[0],
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        sys.stderr.write("request %s %s\n" % (self.client_address[0], self.path))
        sys.stderr.flush()
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
for p in sys.argv[1:]:
    threading.Thread(target=S(("0.0.0.0", int(p)), H).serve_forever, daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
"#;

/// A pod: a network namespace with Istio's capture rules, and skiff started by pilot-agent's
/// command line as the proxy's uid, fed by a control plane and an SDS server of its own
/// through Unix sockets.
struct Pod {
    ns: Netns,
    xds: ControlPlane,
    _sds: ControlPlane,
}

impl Pod {
    async fn start(
        mut ns: Netns,
        corpus: &Path,
        mesh: &MeshCa,
        sa: &str,
        resources: &[(&str, Vec<Value>)],
    ) -> Pod {
        let dir = ns.dir.clone();
        let mut xds = ControlPlane::start(CP, 0, &dir.join("XDS")).await;
        let mut sds = ControlPlane::start(CP, 0, &dir.join("SDS")).await;
        sds.set(NODE, SECRET, "1", &workload_secrets(&dir, mesh, sa))
            .await;
        for (t, list) in resources {
            let yaml = format!(" {}", serde_json::to_string(list).expect("JSON"));
            xds.set(NODE, t, "1", &yaml).await;
        }
        // The proxy runs as uid 1337, as in Istio: it may use the sockets and read its files.
        use std::os::unix::fs::PermissionsExt;
        for sock in ["XDS", "SDS"] {
            std::fs::set_permissions(dir.join(sock), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        let out = skiff_iptables(&ns, SIDECAR_FLAGS);
        assert!(out.status.success(), "{}", text(&out));
        let config = bootstrap(corpus, &dir).display().to_string();
        let skiff = Kind::Skiff.binary().display().to_string();
        let args: Vec<&str> = [
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            skiff.as_str(),
        ]
        .into_iter()
        .chain(pilot_agent_args(&config))
        .collect();
        ns.spawn(&args, "skiff.log");
        tokio::task::block_in_place(|| ns.wait_ready(sa, "skiff.log"));
        Pod { ns, xds, _sds: sds }
    }

    /// `curl` in the pod (captured: it does not run as the proxy's uid): status, response
    /// headers, body.
    fn curl(&self, url: &str, host: &str) -> (String, String, String) {
        let out = self
            .ns
            .command(&[
                "curl",
                "-s",
                "-m",
                "10",
                "-D",
                "-",
                "-H",
                &format!("host: {host}"),
                "-w",
                "\n%{http_code}",
                url,
            ])
            .output()
            .expect("run curl");
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (rest, code) = all.rsplit_once('\n').unwrap_or(("", &all));
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (code.to_string(), head.to_lowercase(), body.to_string())
    }

    fn stat(&self, name: &str) -> u64 {
        tokio::task::block_in_place(|| self.ns.stat(name))
    }

    /// A counter of the one host of `cluster`, from `/clusters`.
    fn host_stat(&self, cluster: &str, name: &str) -> u64 {
        let (_, body) =
            tokio::task::block_in_place(|| self.ns.curl("http://127.0.0.1:15000/clusters"));
        body.lines()
            .filter_map(|l| l.strip_prefix(cluster)?.strip_prefix("::"))
            .filter_map(|l| l.split_once("::"))
            .find_map(|(_, rest)| rest.strip_prefix(name)?.strip_prefix("::"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Two pods of a mesh, each with skiff as its sidecar as Istio runs it (iptables capture,
/// pilot-agent's command line and bootstrap, delta ADS and SDS over Unix sockets): the
/// listeners of istioctl's authz dump (`virtualOutbound`, the outbound HTTP listener of
/// port 8000, `virtualInbound`) with clusters, routes and endpoints in istiod's shape, and
/// workload certificates whose only names are SPIFFE identities. `sleep` (10.99.0.1) calls
/// the service `httpbin` (cluster IP 10.96.50.50, port 8000), whose pod (10.99.0.2) serves
/// on port 80.
/// - Through the dump's authorization policy (an ALLOW rule that needs a JWT nobody sent):
///   mTLS from `sleep`'s skiff to `httpbin`'s, which denies with RBAC's 403; the app sees
///   nothing.
/// - With the policy gone (`virtualInbound` pushed again without its RBAC and ext_authz
///   filters): the request reaches the app over mTLS from 127.0.0.6, with the caller's and
///   the server's SPIFFE identities in `x-forwarded-client-cert` and the peer metadata
///   headers taken off on each side; a call to a port no service names goes through both
///   proxies' passthrough chains in plaintext; a service whose servers must be another
///   identity fails the handshake (503) and reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_sidecars_carry_mtls_traffic_through_the_dumps_virtual_listeners() {
    let Some(corpus) = corpus() else {
        eprintln!("the corpus is not here: nothing to check");
        return;
    };
    run_for(Duration::from_secs(120), async {
        let (client_ns, app_ns) = pair("im");
        let (veth, _) = veth_names("im");
        // Cluster IPs are routed off the pod, as in Kubernetes; capture takes them first.
        client_ns.exec(&["ip", "route", "add", "default", "dev", &veth]);
        let mut app_ns = app_ns;
        app_ns.spawn(&["python3", "-c", APP, "80", "8080"], "app.log");
        let listeners = mesh_listeners(&corpus);
        let mut clusters = fixed_clusters();
        clusters.push(outbound_cluster(
            8000,
            "httpbin.default.svc.cluster.local",
            "httpbin",
        ));
        clusters.push(outbound_cluster(
            8000,
            "impostor.default.svc.cluster.local",
            "impostor",
        ));
        let endpoints = vec![
            pod_endpoint(
                "outbound|8000||httpbin.default.svc.cluster.local",
                "10.99.0.2",
                80,
                "httpbin",
            ),
            pod_endpoint(
                "outbound|8000||impostor.default.svc.cluster.local",
                "10.99.0.2",
                80,
                "impostor",
            ),
            pod_endpoint(
                "outbound|9191||sample-ext-authz-grpc",
                "10.99.0.2",
                9191,
                "ext-authz",
            ),
        ];
        let resources = vec![
            (LISTENER, listeners.clone()),
            (ROUTE, vec![outbound_routes()]),
            (CLUSTER, clusters),
            (ENDPOINT, endpoints),
        ];
        let mesh = MeshCa::new();
        let mut server = Pod::start(app_ns, &corpus, &mesh, "httpbin", &resources).await;
        let client = Pod::start(client_ns, &corpus, &mesh, "sleep", &resources).await;
        for pod in [&server, &client] {
            for (t, _) in &resources {
                let a = pod.xds.answer(NODE, t, "1").await;
                assert_eq!(a.error, None, "{t} NACKed");
            }
        }
        let service = "httpbin.default.svc.cluster.local";

        // The dump's policy: an ALLOW rule whose principals need JWT claims.
        let (code, _, body) = client.curl("http://10.96.50.50:8000/info", service);
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("403", "RBAC: access denied"),
            "client:\n{}\nserver:\n{}\nclient stats:\n{}",
            client.ns.log("skiff.log"),
            server.ns.log("skiff.log"),
            client.ns.curl("http://127.0.0.1:15000/stats").1
        );
        assert!(
            !server.ns.log("app.log").contains("request"),
            "{}",
            server.ns.log("app.log")
        );
        assert_eq!(server.stat("http.inbound_0.0.0.0_80.rbac.denied"), 1);
        // Istio's stats matcher keeps no cluster or listener stats; /clusters has the host's.
        let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
        assert_eq!(client.host_stat(httpbin, "cx_total"), 1);
        assert_eq!(client.host_stat(httpbin, "rq_total"), 1, "the 403");

        // No policy: virtualInbound again without authorization filters.
        let mut open = listeners.clone();
        open[2] = without_authorization(open[2].clone());
        let yaml = format!(" {}", serde_json::to_string(&open).expect("JSON"));
        server.xds.set(NODE, LISTENER, "2", &yaml).await;
        assert_eq!(server.xds.answer(NODE, LISTENER, "2").await.error, None);

        let mut seen = None;
        for _ in 0..50 {
            let r = client.curl("http://10.96.50.50:8000/headers?x=1", service);
            if r.0 != "403" {
                seen = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, head, body) = seen.expect("the open virtualInbound in force");
        assert_eq!(code, "200", "{head}{body}\n{}", server.ns.log("skiff.log"));
        let got: Value = serde_json::from_str(&body).expect("the app's JSON");
        assert_eq!(got["path"], "/headers?x=1");
        assert_eq!(
            got["peer"], "127.0.0.6",
            "inbound from Istio's passthrough source"
        );
        let xfcc = got["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default();
        assert!(
            xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/httpbin;Hash=")
                && xfcc.contains(";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"),
            "x-forwarded-client-cert: {xfcc}"
        );
        for h in ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"] {
            assert!(got["headers"].get(h).is_none(), "the app got {h}: {body}");
            assert!(!head.contains(h), "the client got {h}: {head}");
        }
        assert_eq!(got["headers"]["host"], service);

        // A port no service names: both passthrough chains, in plaintext.
        let (code, _, body) = client.curl("http://10.99.0.2:8080/direct", "10.99.0.2:8080");
        assert_eq!(code, "200", "{body}");
        let got: Value = serde_json::from_str(&body).expect("the app's JSON");
        assert_eq!(got["peer"], "127.0.0.6");
        assert!(
            got["headers"].get("x-forwarded-client-cert").is_none(),
            "{body}"
        );
        assert!(server
            .ns
            .log("app.log")
            .contains("request 127.0.0.6 /direct"));

        // A service whose servers must be another identity: the handshake fails.
        let before = server.ns.log("app.log").matches("request").count();
        let (code, _, _) = client.curl(
            "http://10.96.50.51:8000/x",
            "impostor.default.svc.cluster.local",
        );
        assert_eq!(code, "503");
        assert_eq!(server.ns.log("app.log").matches("request").count(), before);
        let impostor = "outbound|8000||impostor.default.svc.cluster.local";
        assert!(client.host_stat(impostor, "cx_connect_fail") >= 1);
    })
    .await;
}
