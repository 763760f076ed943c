//! An external authorization service for the tests: `authz-server` serves
//! `envoy.service.auth.v3.Authorization/Check` (gRPC over plain HTTP/2) on one port and the
//! HTTP form of the service on another, prints `{"event": "ready", "grpc": P, "http": Q}`,
//! then one JSON line per check it answers: for gRPC (`"event": "grpc"`) what the
//! `CheckRequest` said of the request (method, path, host, scheme, query, fragment, protocol,
//! size, body, headers, context extensions, route metadata, and whether source, destination
//! and id were set);
//! for HTTP (`"event": "http"`) the method, path, headers and body it was sent.
//!
//! Its answer depends on the request's `x-authz` header (a gRPC check reads it from the
//! `CheckRequest`, an HTTP check from the request it gets):
//! - absent or `allow`: allowed; over gRPC, `x-authz-added: yes` set on the request,
//!   `x-authz-appended: more` appended, `x-remove-me` removed, `x-authz-resp: ok` for the
//!   response; over HTTP, a 200 with `x-authz-added: yes`, `x-other: no` and `x-authz-resp: ok`;
//! - `deny`: denied with 401, `x-denied: yes`, `www-authenticate: Basic` and a body `no entry`;
//! - `deny-plain`: denied without a status of its own (gRPC: PERMISSION_DENIED alone; HTTP: a
//!   bare 403);
//! - `error`: gRPC status `UNAVAILABLE`; over HTTP, a 503;
//! - `flaky` (HTTP): a 503 for the first check, allowed for the second, and so on;
//! - `slow`: allowed after 500 ms.

use std::io::Write;
use std::pin::Pin;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use serde_json::json;
use tonic::{Request, Response, Status};

/// How many `flaky` HTTP checks came.
static FLAKY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A header for an answer, with the `append` flag authorization servers commonly set.
#[allow(deprecated)]
fn header(key: &str, value: &str, append: bool) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: Some(envoy_types::pb::google::protobuf::BoolValue { value: append }),
        ..Default::default()
    }
}

fn rpc_status(code: i32) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code,
        ..Default::default()
    }
}

fn to_json_struct(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

fn to_json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => to_json_struct(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(to_json).collect())
        }
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
    }
}

#[derive(Clone)]
struct Grpc;

#[tonic::async_trait]
impl Authorization for Grpc {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let r = request.into_inner();
        let a = r.attributes.unwrap_or_default();
        let req = a.request.unwrap_or_default();
        let http = req.http.unwrap_or_default();
        let mut headers: Vec<(String, String)> = http
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.sort();
        let mut extensions: Vec<(String, String)> = a
            .context_extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        extensions.sort();
        emit(json!({
            "event": "grpc",
            "method": http.method,
            "path": http.path,
            "host": http.host,
            "scheme": http.scheme,
            "query": http.query,
            "fragment": http.fragment,
            "protocol": http.protocol,
            "size": http.size,
            "body": http.body,
            "raw_body": String::from_utf8_lossy(&http.raw_body),
            "headers": headers,
            "context_extensions": extensions,
            "has_id": !http.id.is_empty(),
            "has_time": req.time.is_some(),
            "source": a.source.as_ref().and_then(|p| p.address.as_ref()).is_some(),
            "route_metadata": a.route_metadata_context.as_ref().map(|m| {
                m.filter_metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json_struct(v)))
                    .collect::<serde_json::Map<_, _>>()
            }),
            "destination": a.destination.as_ref().and_then(|p| p.address.as_ref()).is_some(),
        }));
        let verdict = http.headers.get("x-authz").map_or("allow", String::as_str);
        let resp = match verdict {
            "deny" => CheckResponse {
                status: Some(rpc_status(7)),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                    headers: vec![
                        header("x-denied", "yes", false),
                        header("www-authenticate", "Basic", false),
                    ],
                    body: "no entry".into(),
                })),
                ..Default::default()
            },
            "deny-plain" => CheckResponse {
                status: Some(rpc_status(7)),
                ..Default::default()
            },
            "error" => return Err(Status::unavailable("asked to fail")),
            other => {
                if other == "slow" {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                CheckResponse {
                    status: Some(rpc_status(0)),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![
                            header("x-authz-added", "yes", false),
                            header("x-authz-appended", "more", true),
                        ],
                        headers_to_remove: vec!["x-remove-me".into()],
                        response_headers_to_add: vec![header("x-authz-resp", "ok", false)],
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(resp))
    }
}

type Answer = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

async fn grpc_conn(s: tokio::net::TcpStream) {
    use tonic::codegen::Service as _;
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut svc = AuthorizationServer::new(Grpc);
        let req = req.map(tonic::body::Body::new);
        let answer: Answer = Box::pin(async move { svc.call(req).await });
        answer
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}

async fn http_check(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let method = req.method().as_str().to_string();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string());
    let verdict_header = req.headers().get("x-authz").cloned();
    let body = http_body_util::BodyExt::collect(req.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    emit(json!({
        "event": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }));
    let verdict = verdict_header
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("allow")
        .to_string();
    let b = http::Response::builder();
    let full = |s: &'static str| http_body_util::Full::new(bytes::Bytes::from_static(s.as_bytes()));
    let resp = match verdict.as_str() {
        "deny" => b
            .status(401)
            .header("x-denied", "yes")
            .header("www-authenticate", "Basic")
            .body(full("no entry")),
        "deny-plain" => b.status(403).body(full("")),
        "error" => b.status(503).body(full("")),
        // Every other flaky check fails.
        "flaky"
            if FLAKY
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(2) =>
        {
            b.status(503).body(full(""))
        }
        other => {
            if other == "slow" {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            b.status(200)
                .header("x-authz-added", "yes")
                .header("x-other", "no")
                .header("x-authz-resp", "ok")
                .body(full(""))
        }
    };
    Ok(resp.expect("response"))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
        emit(json!({"event": "ready", "grpc": port(&grpc), "http": port(&http)}));
        tokio::spawn(async move {
            while let Ok((s, _)) = http.accept().await {
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(s),
                            hyper::service::service_fn(http_check),
                        )
                        .await;
                });
            }
        });
        while let Ok((s, _)) = grpc.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(grpc_conn(s));
        }
    });
}
