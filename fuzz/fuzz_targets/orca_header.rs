//! An upstream's ORCA load report header (`endpoint-load-metrics` in its `TEXT`, `JSON` and
//! `BIN` forms, `endpoint-load-metrics-bin`): reading it and weighing it must not panic, and a
//! weight is never zero-divided into being.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use skiff::config::model::ClientSideWeights;
use skiff::upstream::orca;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(rest) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let name = if kind % 2 == 0 {
        "endpoint-load-metrics"
    } else {
        "endpoint-load-metrics-bin"
    };
    headers.insert(name, value);
    let cfg = ClientSideWeights {
        blackout_period: std::time::Duration::ZERO,
        weight_expiration_period: std::time::Duration::from_secs(180),
        weight_update_period: std::time::Duration::from_secs(1),
        error_utilization_penalty: f64::from(kind) / 16.0,
        metric_names: vec!["named_metrics.*".into(), "utilization.a".into()],
    };
    if let Ok(report) = orca::parse(&headers) {
        if let Some(w) = orca::weight(&report, &cfg) {
            assert!(report.rps_fractional > 0.0);
            let _ = w;
        }
    }
});
