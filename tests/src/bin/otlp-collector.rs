//! An OpenTelemetry collector for the tests, of traces (`opentelemetry.proto.collector.trace.v1.
//! TraceService/Export`) and logs (`opentelemetry.proto.collector.logs.v1.LogsService/Export`),
//! gRPC over plain HTTP/2: `otlp-collector <port>` (0: any), which prints `{"event": "ready",
//! "port": P}`, then for each trace export `{"event": "export", "path": …, "authority": …,
//! "grpc_timeout": …, "spans": N}` (both kinds of export also give the values of the
//! `authorization` and `x-tenant-id` headers the tests' services set, as "metadata") and for
//! each span in it one line `{"event": "span",
//! "resource": {…}, "scope": {…}, "trace_id": hex, "span_id": hex, "parent_span_id": hex,
//! "trace_state": …, "name": …, "kind": K, "start": ns, "end": ns, "attributes": {…},
//! "status": {…}, "flags": F}`; for each log export `{"event": "log_export", "path": …,
//! "authority": …, "records": N}` and for each record `{"event": "log", "resource": {…},
//! "scope": {…}, "time": ns, "observed": ns, "severity_number": N, "severity_text": …,
//! "body": …, "attributes": {…}, "trace_id": hex, "span_id": hex, "flags": F,
//! "event_name": …}`. Every export is answered OK.

use std::io::Write;

use bytes::{Bytes, BytesMut};
use prost::Message;
use serde_json::{json, Map, Value};
use skiff::otlp::{
    any_value, AnyValue, ExportLogsServiceRequest, ExportTraceServiceRequest, KeyValue,
};

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value as JSON: a string, number or boolean as itself, a list as a list, a key-value
/// list as an object, bytes as `{"bytes": hex}`, none as null.
fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => attributes(&l.values),
        Some(any_value::Value::BytesValue(b)) => json!({ "bytes": hex(b) }),
        Some(any_value::Value::StringValueStrindex(i)) => json!({ "strindex": i }),
        None => Value::Null,
    }
}

fn attributes(list: &[KeyValue]) -> Value {
    let mut m = Map::new();
    for kv in list {
        m.insert(kv.key.clone(), value(kv.value.as_ref()));
    }
    Value::Object(m)
}

/// Prints a log export and its records.
fn logs(path: &str, authority: Option<String>, metadata: Value, message: &[u8]) {
    let req = match ExportLogsServiceRequest::decode(message) {
        Ok(r) => r,
        Err(e) => return emit(json!({ "event": "bad_export", "error": e.to_string() })),
    };
    let count: usize = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    emit(
        json!({ "event": "log_export", "path": path, "authority": authority,
        "metadata": metadata, "records": count }),
    );
    for r in &req.resource_logs {
        let resource = attributes(
            r.resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default(),
        );
        for s in &r.scope_logs {
            let scope = s.scope.as_ref().map(|s| {
                json!({ "name": s.name, "version": s.version,
                        "attributes": attributes(&s.attributes) })
            });
            for l in &s.log_records {
                emit(
                    json!({ "event": "log", "resource": resource, "scope": scope,
                    "time": l.time_unix_nano, "observed": l.observed_time_unix_nano,
                    "severity_number": l.severity_number, "severity_text": l.severity_text,
                    "body": value(l.body.as_ref()), "attributes": attributes(&l.attributes),
                    "trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id),
                    "flags": l.flags, "event_name": l.event_name }),
                );
            }
        }
    }
}

async fn handle(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let (head, mut body) = req.into_parts();
    let mut data = BytesMut::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let message = data.get(5..).unwrap_or_default();
    let header = |n: &str| {
        head.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authority = head.uri.authority().map(|a| a.to_string());
    let metadata = json!({ "authorization": header("authorization"),
        "x-tenant-id": header("x-tenant-id") });
    if head.uri.path().ends_with(".LogsService/Export") {
        logs(head.uri.path(), authority, metadata, message);
    } else {
        trace(&head, &header, message);
    }
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("response");
    if let Ok(mut send) = respond.send_response(resp, false) {
        let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = send.send_trailers(trailers);
    }
}

/// Prints a trace export and its spans.
fn trace(head: &http::request::Parts, header: &dyn Fn(&str) -> Option<String>, message: &[u8]) {
    match ExportTraceServiceRequest::decode(message) {
        Ok(req) => {
            let count: usize = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            emit(json!({ "event": "export", "path": head.uri.path(),
                "authority": head.uri.authority().map(|a| a.to_string()),
                "content_type": header("content-type"),
                "grpc_timeout": header("grpc-timeout"), "spans": count }));
            for r in &req.resource_spans {
                let resource = attributes(
                    r.resource
                        .as_ref()
                        .map(|r| r.attributes.as_slice())
                        .unwrap_or_default(),
                );
                for s in &r.scope_spans {
                    let scope = s.scope.as_ref().map(|s| {
                        json!({ "name": s.name, "version": s.version,
                                "attributes": attributes(&s.attributes) })
                    });
                    for span in &s.spans {
                        emit(
                            json!({ "event": "span", "resource": resource, "scope": scope,
                            "trace_id": hex(&span.trace_id), "span_id": hex(&span.span_id),
                            "parent_span_id": hex(&span.parent_span_id),
                            "trace_state": span.trace_state, "name": span.name,
                            "kind": span.kind, "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": attributes(&span.attributes),
                            "status": span.status.as_ref().map(|s| json!({
                                "code": s.code, "message": s.message })),
                            "flags": span.flags }),
                        );
                    }
                }
            }
        }
        Err(e) => emit(json!({ "event": "bad_export", "error": e.to_string() })),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    emit(json!({ "event": "ready", "port": port }));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((req, respond))) = conn.accept().await {
                tokio::spawn(handle(req, respond));
            }
        });
    }
}
