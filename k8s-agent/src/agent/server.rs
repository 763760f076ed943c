//! `/healthz` (the process is alive), `/readyz` (the node is prepared: 503 until the entry is
//! in place and the programs attached) and `/metrics` (Prometheus text).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::{Health, Options};
use crate::netconf::Backend;
use crate::state::StateDir;

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>, opts: Options) {
    let opts = Arc::new(opts);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (health, opts) = (health.clone(), opts.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (health, opts) = (health.clone(), opts.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(answer(req.uri().path(), &health, &opts))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(path: &str, health: &Health, opts: &Options) -> http::Response<Full<Bytes>> {
    let (code, ctype, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (
            503,
            "text/plain",
            "not ready: skiff's conflist entry or programs are not in place yet\n".into(),
        ),
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(health, opts)),
        _ => (
            404,
            "text/plain",
            "not found: /healthz /readyz /metrics\n".into(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// The agent's gauges and counters, the plugin's records, and the kernel programs' counters.
pub fn metrics(health: &Health, opts: &Options) -> String {
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    line(
        "skiff_node_agent_ready",
        "gauge",
        "1 when skiff's conflist entry and programs are in place",
        u64::from(health.ready.load(Ordering::Relaxed)),
    );
    line(
        "skiff_node_agent_conflist_restores_total",
        "counter",
        "times skiff's entry was put back after the conflist was rewritten",
        health.conflist_restores.load(Ordering::Relaxed),
    );
    line(
        "skiff_node_agent_reconciled_pods_total",
        "counter",
        "running pods enrolled at start",
        health.reconciled_pods.load(Ordering::Relaxed),
    );
    line(
        "skiff_node_agent_reconcile_errors_total",
        "counter",
        "pods or lists that could not be reconciled",
        health.reconcile_errors.load(Ordering::Relaxed),
    );
    let records = StateDir::new(&opts.state_dir)
        .list()
        .map(|r| r.len())
        .unwrap_or(0);
    line(
        "skiff_cni_captured_pods",
        "gauge",
        "pods the CNI plugin has captured on this node",
        records as u64,
    );
    if opts.backend == Backend::Ebpf {
        if let Ok(s) = skiff_ebpf::status() {
            line(
                "skiff_ebpf_enrolled_namespaces",
                "gauge",
                "network namespaces enrolled in skiff_pods",
                s.pods.len() as u64,
            );
            line(
                "skiff_ebpf_original_destinations",
                "gauge",
                "open redirected connections recorded in skiff_orig_dst",
                s.orig_dst_entries as u64,
            );
            let _ = writeln!(
                out,
                "# HELP skiff_ebpf_events_total the kernel programs' counters\n# TYPE skiff_ebpf_events_total counter"
            );
            for (name, v) in &s.counters {
                let _ = writeln!(out, "skiff_ebpf_events_total{{counter=\"{name}\"}} {v}");
            }
        }
    }
    out
}
