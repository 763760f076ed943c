//! A rate limit service for the tests (`envoy.service.ratelimit.v3.RateLimitService`, gRPC
//! over plain HTTP/2): `rls-server <port>` (0: any), which prints `{"event": "ready", "port":
//! P}` and then each request it answers as one JSON line (`{"event": "request", "domain": D,
//! "descriptors": [[[key, value], …], …], "hits_addend": H, "descriptor_hits": [each
//! descriptor's hits_addend or null], "limits": [each descriptor's [requests_per_unit, unit]
//! or null], "grpc_timeout": T}`).
//!
//! Its answers depend on the descriptors' values, so a test picks the outcome by the request
//! it sends:
//! - a value `over`: `OVER_LIMIT`, with `x-rls-over: 1` for the response;
//! - a value `over-body`: `OVER_LIMIT` with a body of its own (`raw_body`) and its own
//!   `content-type`;
//! - a value `error`: gRPC status `UNAVAILABLE`;
//! - a value `slow`: `OK`, after 500 ms;
//! - a value `meta`: `OK`, with `dynamic_metadata` `{"rls": "yes", "n": 7}`;
//! - otherwise `OK`, adding `x-rls-req: ok` to the request and `x-rls-resp: ok` to the
//!   response.
//!
//! Every answer carries a status per descriptor (`hourly`, 100 an hour, 42 left, reset in 1200
//! s; `per-user`, 10 a minute, 0 left, reset in 30 s for the descriptors over the limit).

use std::io::Write;
use std::pin::Pin;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::json;
use tonic::{Request, Response, Status};

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn status(over: bool) -> DescriptorStatus {
    let (name, rpu, unit, remaining, reset) = if over {
        ("per-user", 10, Unit::Minute, 0, 30)
    } else {
        ("hourly", 100, Unit::Hour, 42, 1200)
    };
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: Some(RateLimit {
            name: name.into(),
            requests_per_unit: rpu,
            unit: unit as i32,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: reset,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[derive(Clone)]
struct Service;

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let grpc_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        let values: Vec<Vec<(String, String)>> = r
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        emit(json!({
            "event": "request",
            "domain": r.domain,
            "descriptors": values,
            "hits_addend": r.hits_addend,
            "descriptor_hits": r.descriptors.iter().map(|d| d.hits_addend.as_ref().map(|h| h.value)).collect::<Vec<_>>(),
            "limits": r.descriptors.iter().map(|d| d.limit.as_ref().map(|l| (l.requests_per_unit, l.unit))).collect::<Vec<_>>(),
            "grpc_timeout": grpc_timeout,
        }));
        let has = |v: &str| values.iter().flatten().any(|(_, x)| x == v);
        if has("error") {
            return Err(Status::unavailable("asked to fail"));
        }
        if has("slow") {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let over = has("over") || has("over-body");
        let statuses = values
            .iter()
            .map(|d| status(d.iter().any(|(_, v)| v.starts_with("over"))))
            .collect();
        let mut resp = RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        };
        if has("over-body") {
            resp.raw_body = b"{\"limited\": true}".to_vec();
            resp.response_headers_to_add = vec![header("content-type", "application/json")];
        } else if over {
            resp.response_headers_to_add = vec![header("x-rls-over", "1")];
        } else {
            if has("meta") {
                use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
                let v = |k: Kind| Value { kind: Some(k) };
                resp.dynamic_metadata = Some(Struct {
                    fields: [
                        ("rls".to_string(), v(Kind::StringValue("yes".into()))),
                        ("n".to_string(), v(Kind::NumberValue(7.0))),
                    ]
                    .into_iter()
                    .collect(),
                });
            }
            resp.request_headers_to_add = vec![header("x-rls-req", "ok")];
            resp.response_headers_to_add = vec![header("x-rls-resp", "ok")];
        }
        Ok(Response::new(resp))
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        emit(json!({"event": "ready", "port": port}));
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                use tonic::codegen::Service as _;
                type Answer = Pin<
                    Box<
                        dyn std::future::Future<
                                Output = Result<
                                    http::Response<tonic::body::Body>,
                                    std::convert::Infallible,
                                >,
                            > + Send,
                    >,
                >;
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut svc = RateLimitServiceServer::new(Service);
                        let req = req.map(tonic::body::Body::new);
                        let answer: Answer = Box::pin(async move { svc.call(req).await });
                        answer
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
}
