//! `envoy.access_loggers.open_telemetry`: each stream's record (its body and attributes
//! formatted from the stream) goes to the worker's exporter for the logger, which sends what it
//! holds over OTLP gRPC (`LogsService/Export`) every `buffer_flush_interval`, or at once when
//! it holds `buffer_size_bytes`, as Envoy's logger does. Stats
//! `access_logs.open_telemetry_access_log.[<stat_prefix>.]{logs_written,logs_dropped}`: the
//! records an export delivered or lost.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use prost::Message;

use crate::access_log::Render;
use crate::config::model::{OtelAccessLog, OtelValue};
use crate::otlp::{self, any_value, AnyValue, KeyValue};
use crate::stats::Counter;
use crate::stream_info::StreamInfo;
use crate::worker::Worker;

/// One worker's exporter for one logger configuration.
struct Exporter {
    config: Arc<OtelAccessLog>,
    records: RefCell<Vec<otlp::LogRecord>>,
    /// The encoded size of `records`.
    bytes: Cell<usize>,
    logs_written: Counter,
    logs_dropped: Counter,
}

thread_local! {
    /// This worker's exporters, by configuration object.
    static EXPORTERS: RefCell<Vec<Rc<Exporter>>> = const { RefCell::new(Vec::new()) };
}

/// The stream's record for `config`, handed to this worker's exporter.
pub fn log(worker: &Rc<Worker>, config: &Arc<OtelAccessLog>, info: &StreamInfo) {
    let exporter = EXPORTERS.with(|all| {
        let mut all = all.borrow_mut();
        // Exporters of configurations gone (only this list holds them) go too, sending what
        // they still hold.
        let (keep, gone): (Vec<_>, Vec<_>) = all
            .drain(..)
            .partition(|e| Arc::strong_count(&e.config) > 1 || Arc::ptr_eq(&e.config, config));
        *all = keep;
        for e in gone {
            flush(worker, &e);
        }
        if let Some(e) = all.iter().find(|e| Arc::ptr_eq(&e.config, config)) {
            return e.clone();
        }
        let root = if config.stat_prefix.is_empty() {
            "access_logs.open_telemetry_access_log.".to_string()
        } else {
            format!(
                "access_logs.open_telemetry_access_log.{}.",
                config.stat_prefix
            )
        };
        let c = |n: &str| worker.shard.counter(&format!("{root}{n}"));
        // Envoy's logger makes these two as well; its OTLP exports never move them.
        let _ = (c("grpc_entries_flushed"), c("grpc_entries_flush_failed"));
        let e = Rc::new(Exporter {
            config: config.clone(),
            records: RefCell::new(Vec::new()),
            bytes: Cell::new(0),
            logs_written: c("logs_written"),
            logs_dropped: c("logs_dropped"),
        });
        all.push(e.clone());
        start_timer(worker, Rc::downgrade(&e));
        e
    });
    let record = record(config, info);
    exporter
        .bytes
        .set(exporter.bytes.get() + record.encoded_len());
    exporter.records.borrow_mut().push(record);
    if exporter.bytes.get() >= config.buffer_size {
        flush(worker, &exporter);
    }
}

/// The stream's log record: its start, the formatted body and attributes, and the trace it is
/// part of.
fn record(config: &OtelAccessLog, info: &StreamInfo) -> otlp::LogRecord {
    let micros = info
        .start_time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let (trace_id, span_id) = match info.span_ids {
        Some(ids) => {
            // A 64-bit trace id is eight bytes, as Envoy writes the hex id it has.
            let mut trace = Vec::with_capacity(16);
            if let Some(h) = ids.trace_high {
                trace.extend_from_slice(&h.to_be_bytes());
            }
            trace.extend_from_slice(&ids.trace.to_be_bytes());
            (trace, ids.span.to_be_bytes().to_vec())
        }
        None => (Vec::new(), Vec::new()),
    };
    otlp::LogRecord {
        time_unix_nano: micros * 1000,
        body: config.body.as_ref().map(|b| render(b, info)),
        attributes: render_list(&config.attributes, info),
        trace_id,
        span_id,
        ..Default::default()
    }
}

fn render(v: &OtelValue, info: &StreamInfo) -> AnyValue {
    let value = match v {
        OtelValue::Text(f) => {
            let mut s = String::new();
            f.render(info, &mut s);
            any_value::Value::StringValue(s)
        }
        OtelValue::List(items) => any_value::Value::ArrayValue(otlp::ArrayValue {
            values: items.iter().map(|i| render(i, info)).collect(),
        }),
        OtelValue::Map(entries) => any_value::Value::KvlistValue(otlp::KeyValueList {
            values: render_list(entries, info),
        }),
    };
    AnyValue { value: Some(value) }
}

/// A key-value list with its values rendered.
fn render_list(entries: &[(String, OtelValue)], info: &StreamInfo) -> Vec<KeyValue> {
    entries
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(render(v, info)),
            ..Default::default()
        })
        .collect()
}

/// The resource every export names: the built-in labels (the log and the node), with
/// `resource_attributes` over them.
fn resource(config: &OtelAccessLog) -> otlp::Resource {
    let mut attributes = Vec::new();
    if config.builtin_labels {
        let (id, cluster, zone) = crate::trace::node();
        for (k, v) in [
            ("log_name", config.log_name.as_str()),
            ("zone_name", zone.as_str()),
            ("cluster_name", cluster.as_str()),
            ("node_name", id.as_str()),
        ] {
            attributes.push(otlp::attribute(k, v));
        }
    }
    for kv in &config.resource_attributes {
        match attributes.iter_mut().find(|a| a.key == kv.key) {
            Some(a) => *a = kv.clone(),
            None => attributes.push(kv.clone()),
        }
    }
    otlp::Resource { attributes }
}

/// Sends what waits every `buffer_flush_interval`, for as long as the exporter lives.
fn start_timer(worker: &Rc<Worker>, exporter: Weak<Exporter>) {
    let worker = worker.clone();
    tokio::task::spawn_local(async move {
        loop {
            let Some(every) = exporter.upgrade().map(|e| e.config.flush_interval) else {
                return;
            };
            tokio::time::sleep(every).await;
            let Some(e) = exporter.upgrade() else {
                return;
            };
            flush(&worker, &e);
        }
    });
}

/// Sends the waiting records in one export.
fn flush(worker: &Rc<Worker>, e: &Rc<Exporter>) {
    let records = std::mem::take(&mut *e.records.borrow_mut());
    e.bytes.set(0);
    if records.is_empty() {
        return;
    }
    let count = records.len() as u64;
    let Some(cluster) = worker.clusters.get(&e.config.cluster) else {
        e.logs_dropped.add(count);
        return;
    };
    let request = otlp::ExportLogsServiceRequest {
        resource_logs: vec![otlp::ResourceLogs {
            resource: Some(resource(&e.config)),
            scope_logs: vec![otlp::ScopeLogs {
                scope: None,
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let message = request.encode_to_vec();
    let worker = worker.clone();
    let e = e.clone();
    tokio::task::spawn_local(async move {
        let call = crate::http::grpc_call::unary(
            &worker,
            &cluster,
            (&e.config.authority, &e.config.metadata),
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            &message,
            None,
        );
        let done = match e.config.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
            None => call.await,
        };
        match done {
            Ok(_) => e.logs_written.add(count),
            Err(err) => {
                tracing::debug!(error = %err, "OpenTelemetry log export failed");
                e.logs_dropped.add(count);
            }
        }
    });
}
