//! gRPC health checks side by side with Envoy 1.40: each proxy checks its own pair of h2c
//! upstreams that answer `grpc.health.v1.Health/Check` as the test tells them (serving, not
//! serving, an HTTP 503, a `grpc-status` of 14); the test compares the check request each
//! proxy sends, and which upstreams take traffic as the answers change.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, route, to_yaml};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

const SERVING: u8 = 0;
const NOT_SERVING: u8 = 1;
const HTTP_503: u8 = 2;
const GRPC_UNAVAILABLE: u8 = 3;

/// One check request as the upstream saw it: its headers (sorted, `grpc-timeout` kept) and
/// its body.
type Check = (Vec<(String, String)>, Vec<u8>);

/// An h2c upstream: health checks answered by `mode`, anything else a 200 naming it.
struct GrpcUpstream {
    port: u16,
    mode: Arc<AtomicU8>,
    checks: Arc<Mutex<Vec<Check>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn health_response(status: u8) -> Vec<u8> {
    // HealthCheckResponse { status }: field 1, varint.
    vec![0, 0, 0, 0, 2, 0x08, status]
}

async fn serve(
    stream: tokio::net::TcpStream,
    name: String,
    mode: Arc<AtomicU8>,
    checks: Arc<Mutex<Vec<Check>>>,
) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let (name, mode, checks) = (name.clone(), mode.clone(), checks.clone());
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut data = Vec::new();
            while let Some(Ok(d)) = body.data().await {
                let _ = body.flow_control().release_capacity(d.len());
                data.extend_from_slice(&d);
            }
            if parts.uri.path() != "/grpc.health.v1.Health/Check" {
                let resp = http::Response::builder()
                    .status(200)
                    .header("x-upstream", name.as_str())
                    .body(())
                    .expect("response");
                if let Ok(mut s) = respond.send_response(resp, false) {
                    let _ = s.send_data(Bytes::from_static(b"ok"), true);
                }
                return;
            }
            let mut headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            headers.push((":method".into(), parts.method.to_string()));
            headers.push((
                ":authority".into(),
                parts
                    .uri
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ));
            headers.sort();
            checks.lock().expect("checks").push((headers, data));
            let m = mode.load(Ordering::SeqCst);
            let status = if m == HTTP_503 { 503 } else { 200 };
            let resp = http::Response::builder()
                .status(status)
                .header("content-type", "application/grpc")
                .body(())
                .expect("response");
            let Ok(mut s) = respond.send_response(resp, false) else {
                return;
            };
            let serving = if m == NOT_SERVING { 2 } else { 1 };
            let _ = s.send_data(Bytes::from(health_response(serving)), false);
            let mut trailers = http::HeaderMap::new();
            let code = if m == GRPC_UNAVAILABLE { "14" } else { "0" };
            trailers.insert("grpc-status", code.parse().expect("value"));
            let _ = s.send_trailers(trailers);
        });
    }
}

impl GrpcUpstream {
    async fn start(name: &str) -> GrpcUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(SERVING));
        let checks = Arc::new(Mutex::new(Vec::new()));
        let (m, c, name) = (mode.clone(), checks.clone(), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, name.clone(), m.clone(), c.clone()));
            }
        });
        GrpcUpstream {
            port,
            mode,
            checks,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn first_check(&self) -> Option<Check> {
        self.checks.lock().expect("checks").first().cloned()
    }
}

fn grpc_cluster(ports: &[u16], http2: bool) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } } })
        })
        .collect();
    let mut c = json!({ "name": "grpc", "type": "STATIC", "connect_timeout": "1s",
        "common_lb_config": { "healthy_panic_threshold": { "value": 0 } },
        "load_assignment": { "cluster_name": "grpc", "endpoints": [ { "lb_endpoints": eps } ] },
        "health_checks": [ { "interval": "0.2s", "no_traffic_interval": "0.2s", "timeout": "1s",
            "unhealthy_threshold": 3, "healthy_threshold": 1,
            "grpc_health_check": { "service_name": "payments.v1", "authority": "grpc.example",
                "initial_metadata": [ { "header": { "key": "x-hc", "value": "probe" } } ] } } ] });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} } } });
    }
    c
}

struct Side {
    kind: Kind,
    _proxy: ProxyProcess,
    client: Http1Client,
    ups: [GrpcUpstream; 2],
}

impl Side {
    /// Waits until requests reach exactly `want` of its upstreams.
    async fn wait_for(&mut self, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..8 {
                let r = self
                    .client
                    .send(get("/", "grpc.example"))
                    .await
                    .expect("response");
                if r.status == 200 {
                    seen.insert(r.header("x-upstream").unwrap_or("?").to_string());
                }
            }
            let want: std::collections::BTreeSet<String> =
                want.iter().map(|s| s.to_string()).collect();
            if seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: traffic reaches {seen:?}, not {want:?}",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn grpc_health_checks_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let ups = [
                GrpcUpstream::start("g0").await,
                GrpcUpstream::start("g1").await,
            ];
            let (admin, port) = (free_port(), free_port());
            let yaml = to_yaml(&bootstrap(
                admin,
                vec![http_listener(port, vec![route("/", "grpc")])],
                vec![grpc_cluster(&[ups[0].port, ups[1].port], true)],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            sides.push(Side {
                kind,
                _proxy: proxy,
                client,
                ups,
            });
        }
        for side in sides.iter_mut() {
            side.wait_for(&["g0", "g1"]).await;
        }
        // The check request, header for header and byte for byte.
        let checks: Vec<Check> = sides
            .iter()
            .map(|s| s.ups[0].first_check().expect("a check"))
            .collect();
        assert_eq!(checks[1], checks[0], "skiff's check, Envoy's");
        assert!(checks[0]
            .0
            .contains(&("grpc-timeout".into(), "1000m".into())));
        assert_eq!(
            checks[0].1,
            b"\x00\x00\x00\x00\x0d\x0a\x0bpayments.v1".to_vec()
        );

        // Each failing answer takes g1 out at once (no unhealthy_threshold); serving again,
        // it is back after one check.
        for mode in [NOT_SERVING, HTTP_503, GRPC_UNAVAILABLE] {
            for side in sides.iter_mut() {
                side.ups[1].set(mode);
            }
            for side in sides.iter_mut() {
                side.wait_for(&["g0"]).await;
            }
            for side in sides.iter_mut() {
                side.ups[1].set(SERVING);
            }
            for side in sides.iter_mut() {
                side.wait_for(&["g0", "g1"]).await;
            }
        }
        for side in &sides {
            let admin = side._proxy.admin();
            assert_eq!(
                admin
                    .stat("cluster.grpc.health_check.network_failure")
                    .await,
                Some(0),
                "{}",
                side.kind.name()
            );
            assert!(
                admin
                    .stat("cluster.grpc.health_check.failure")
                    .await
                    .unwrap_or(0)
                    >= 3,
                "{}",
                side.kind.name()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_grpc_check_of_an_http1_cluster_is_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let yaml = to_yaml(&bootstrap(
            free_port(),
            vec![],
            vec![grpc_cluster(&[free_port()], false)],
        ));
        let cfg = write_config("grpc-hc-http1", &yaml);
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: accepted", kind.name());
            assert!(
                out.output()
                    .contains("cluster must support HTTP/2 for gRPC healthchecking"),
                "{}: {}",
                kind.name(),
                out.output()
            );
        }
    })
    .await;
}
