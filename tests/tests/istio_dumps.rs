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
use skiff_tests::netns::Netns;
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
    // Wasm (older Istio ran its stats and metadata exchange in the null Wasm VM).
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

/// Secrets `default` and `ROOTCA`, as pilot-agent's SDS server sends them.
fn secrets(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/sa/default"
            .to_string()
            .try_into()
            .expect("URI"),
    ));
    let leaf = p.signed_by(&key, &ca, &ca_key).expect("leaf");
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
            // pilot-agent's command line (istio pkg/envoy/proxy.go).
            ns.spawn(
                &[
                    &skiff,
                    "-c",
                    &config,
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
                ],
                "skiff.log",
            );
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
