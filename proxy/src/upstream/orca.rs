//! Client-side weighted round robin (`envoy.load_balancing_policies.client_side_weighted_round_robin`)
//! as Envoy's: each response's ORCA load report (`endpoint-load-metrics` in the `TEXT`, `JSON`
//! or `BIN` format, or `endpoint-load-metrics-bin`) gives its host a weight of
//! `rps_fractional / (utilization + error_utilization_penalty × eps / rps_fractional)`; the main
//! thread turns those into the weights round robin uses every `weight_update_period`, a host's
//! own once it reported for `blackout_period` and while its reports are newer than
//! `weight_expiration_period`, the median of those for the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::config::model::ClientSideWeights;

/// An ORCA load report (`xds.data.orca.v3.OrcaLoadReport`), as far as the weights read it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Report {
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    #[prost(map = "string, double", tag = "4")]
    pub request_cost: HashMap<String, f64>,
    #[prost(map = "string, double", tag = "5")]
    pub utilization: HashMap<String, f64>,
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    #[prost(double, tag = "7")]
    pub eps: f64,
    #[prost(map = "string, double", tag = "8")]
    pub named_metrics: HashMap<String, f64>,
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// The response's load report, as Envoy's `parseOrcaLoadReportHeaders` reads it; an error
/// (or no report) leaves the host's weight as it was.
pub fn parse(headers: &http::HeaderMap) -> Result<Report, String> {
    if let Some(v) = headers.get("endpoint-load-metrics-bin") {
        return binary(v.as_bytes());
    }
    let Some(v) = headers.get("endpoint-load-metrics") else {
        return Err("no ORCA data sent from the backend".into());
    };
    let v = v.as_bytes();
    if let Some(rest) = v.strip_prefix(b"BIN ") {
        binary(rest)
    } else if let Some(rest) = v.strip_prefix(b"TEXT ") {
        text(std::str::from_utf8(rest).map_err(|_| "not text".to_string())?)
    } else if let Some(rest) = v.strip_prefix(b"JSON ") {
        json(rest)
    } else {
        let head = String::from_utf8_lossy(&v[..v.len().min(5)]).into_owned();
        let head = head.split(' ').next().unwrap_or_default().to_string();
        Err(format!("unsupported ORCA header format: {head}"))
    }
}

fn binary(b64: &[u8]) -> Result<Report, String> {
    use prost::Message;
    if b64.is_empty() {
        return Err("ORCA binary header value is empty".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "unable to decode ORCA binary header value".to_string())?;
    if bytes.is_empty() {
        return Err("unable to decode ORCA binary header value".into());
    }
    Report::decode(&bytes[..]).map_err(|_| "unable to parse binary header to OrcaLoadReport".into())
}

/// `TEXT name=value, …` (or `name:value`).
fn text(s: &str) -> Result<Report, String> {
    let mut r = Report::default();
    let mut seen = std::collections::HashSet::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) = entry
            .split_once(['=', ':'])
            .map(|(n, v)| (n.trim(), v.trim()))
            .unwrap_or((entry, ""));
        if !seen.insert(name) {
            return Err(format!("duplicate metric: {name}"));
        }
        set(&mut r, name, value)?;
    }
    Ok(r)
}

fn set(r: &mut Report, name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || value.is_empty() {
        return Err("metric names and values cannot be empty".into());
    }
    let v: f64 = value
        .parse()
        .map_err(|_| format!("unable to parse metric value ({name}): {value}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "metric value ({name}) must be a finite, non-negative number"
        ));
    }
    if let Some(key) = name.strip_prefix("utilization.") {
        if key.is_empty() {
            return Err("utilization metric key is empty".into());
        }
        r.utilization.insert(key.to_string(), v);
        return Ok(());
    }
    if let Some(key) = name.strip_prefix("named_metrics.") {
        if key.is_empty() {
            return Err("named metric key is empty".into());
        }
        r.named_metrics.insert(key.to_string(), v);
        return Ok(());
    }
    match name {
        "cpu_utilization" => r.cpu_utilization = v,
        "mem_utilization" => r.mem_utilization = v,
        "application_utilization" => r.application_utilization = v,
        "eps" => r.eps = v,
        "rps_fractional" => r.rps_fractional = v,
        _ => return Err(format!("unsupported metric name: {name}")),
    }
    Ok(())
}

/// `JSON {…}`: the report's JSON form (field names as in the proto or in lower camel case).
fn json(bytes: &[u8]) -> Result<Report, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not an object")?;
    let mut r = Report::default();
    let num = |keys: [&str; 2]| -> Result<f64, String> {
        match keys.iter().find_map(|k| obj.get(*k)) {
            None => Ok(0.0),
            Some(serde_json::Value::Number(n)) => n.as_f64().ok_or_else(|| "bad number".into()),
            Some(_) => Err(format!("{}: not a number", keys[0])),
        }
    };
    let map = |keys: [&str; 2]| -> Result<HashMap<String, f64>, String> {
        match keys.iter().find_map(|k| obj.get(*k)) {
            None => Ok(HashMap::new()),
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_f64()
                        .map(|f| (k.clone(), f))
                        .ok_or_else(|| format!("{k}: not a number"))
                })
                .collect(),
            Some(_) => Err(format!("{}: not a map", keys[0])),
        }
    };
    r.cpu_utilization = num(["cpu_utilization", "cpuUtilization"])?;
    r.mem_utilization = num(["mem_utilization", "memUtilization"])?;
    r.application_utilization = num(["application_utilization", "applicationUtilization"])?;
    r.rps_fractional = num(["rps_fractional", "rpsFractional"])?;
    r.eps = num(["eps", "eps"])?;
    r.utilization = map(["utilization", "utilization"])?;
    r.named_metrics = map(["named_metrics", "namedMetrics"])?;
    r.request_cost = map(["request_cost", "requestCost"])?;
    Ok(r)
}

/// The utilization the weight divides by: `application_utilization`, else the largest of
/// `metric_names_for_computing_utilization`, else `cpu_utilization`.
fn utilization(r: &Report, names: &[String]) -> f64 {
    if r.application_utilization > 0.0 {
        return r.application_utilization;
    }
    let mut max = 0f64;
    for name in names {
        let from_map = |prefix: &str, m: &HashMap<String, f64>| {
            name.strip_prefix(prefix).map(|key| {
                if key == "*" {
                    m.values().copied().fold(0.0, f64::max)
                } else {
                    m.get(key).copied().unwrap_or(0.0)
                }
            })
        };
        let v = match name.as_str() {
            "cpu_utilization" => r.cpu_utilization,
            "mem_utilization" => r.mem_utilization,
            "application_utilization" => r.application_utilization,
            "eps" => r.eps,
            "rps_fractional" => r.rps_fractional,
            _ => from_map("named_metrics.", &r.named_metrics)
                .or_else(|| from_map("utilization.", &r.utilization))
                .or_else(|| from_map("request_cost.", &r.request_cost))
                .unwrap_or(0.0),
        };
        max = max.max(v);
    }
    if max > 0.0 {
        max
    } else {
        r.cpu_utilization
    }
}

/// The weight a report gives (Envoy's `calculateWeightFromOrcaReport`): none without a
/// positive rate or utilization.
pub fn weight(r: &Report, cfg: &ClientSideWeights) -> Option<u32> {
    let qps = r.rps_fractional;
    if qps <= 0.0 {
        return None;
    }
    let u = utilization(r, &cfg.metric_names) + cfg.error_utilization_penalty * r.eps / qps;
    if u <= 0.0 {
        return None;
    }
    Some((qps / u).min(f64::from(u32::MAX)) as u32)
}

/// Milliseconds on a process-wide clock, from 1 (0 stands for "never").
fn now_ms(now: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    now.saturating_duration_since(start).as_millis() as u64 + 1
}

/// One host's reported weight and the weight round robin gives it (shared by all workers).
#[derive(Debug)]
pub struct HostWeight {
    reported: AtomicU32,
    last_update: AtomicU64,
    non_empty_since: AtomicU64,
    applied: AtomicU32,
}

impl Default for HostWeight {
    fn default() -> Self {
        HostWeight {
            reported: AtomicU32::new(0),
            last_update: AtomicU64::new(0),
            non_empty_since: AtomicU64::new(0),
            applied: AtomicU32::new(1),
        }
    }
}

impl HostWeight {
    /// A response's report gave `weight` (Envoy's `updateWeightNow`).
    pub fn report(&self, weight: u32) {
        let now = now_ms(Instant::now());
        self.reported.store(weight, Relaxed);
        self.last_update.store(now, Relaxed);
        let _ = self
            .non_empty_since
            .compare_exchange(0, now, Relaxed, Relaxed);
    }

    /// The weight round robin uses now.
    pub fn applied(&self) -> u32 {
        self.applied.load(Relaxed)
    }

    /// The host's own weight, if it reported long enough and recently enough (Envoy's
    /// `getWeightIfValid`); a host whose reports expired starts its blackout again.
    fn valid(&self, now: u64, blackout: Duration, expiration: Duration) -> Option<u32> {
        let since = self.non_empty_since.load(Relaxed);
        if since == 0 || now.saturating_sub(blackout.as_millis() as u64) < since {
            return None;
        }
        if self.last_update.load(Relaxed) < now.saturating_sub(expiration.as_millis() as u64) {
            self.non_empty_since.store(0, Relaxed);
            return None;
        }
        Some(self.reported.load(Relaxed))
    }
}

/// Envoy's `updateWeightsOnHosts` for one priority's hosts: each host's own weight when
/// valid, the median of those (or 1) for the others. True when a weight changed.
pub fn update(hosts: &[&HostWeight], cfg: &ClientSideWeights, now: Instant) -> bool {
    let now = now_ms(now);
    let mut weights = Vec::new();
    let mut defaulted = Vec::new();
    let mut changed = false;
    for h in hosts {
        match h.valid(now, cfg.blackout_period, cfg.weight_expiration_period) {
            Some(w) => {
                weights.push(w);
                changed |= h.applied.swap(w, Relaxed) != w;
            }
            None => defaulted.push(*h),
        }
    }
    if !defaulted.is_empty() {
        let default = if weights.is_empty() {
            1
        } else {
            weights.sort_unstable();
            let mid = weights.len() / 2;
            if weights.len() % 2 == 1 {
                weights[mid]
            } else {
                ((u64::from(weights[mid - 1]) + u64::from(weights[mid])) / 2) as u32
            }
        };
        for h in defaulted {
            changed |= h.applied.swap(default, Relaxed) != default;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClientSideWeights {
        ClientSideWeights {
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
            metric_names: vec!["named_metrics.foo".into()],
        }
    }

    fn headers(name: &'static str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(name, value.parse().expect("value"));
        h
    }

    #[test]
    fn reports_parse_in_each_format_and_give_envoy_s_weight() {
        let text = parse(&headers(
            "endpoint-load-metrics",
            "TEXT cpu_utilization=0.5, rps_fractional=100, eps=10, named_metrics.foo=0.2",
        ))
        .expect("text");
        // 100 / (0.2 + 1.0 × 10 / 100): the named metric comes before the CPU's.
        assert_eq!(weight(&text, &cfg()), Some(333));
        let mut cpu = cfg();
        cpu.metric_names.clear();
        assert_eq!(weight(&text, &cpu), Some(166));
        let json = parse(&headers(
            "endpoint-load-metrics",
            r#"JSON {"cpuUtilization": 0.25, "rpsFractional": 100, "applicationUtilization": 0.5}"#,
        ))
        .expect("json");
        assert_eq!(weight(&json, &cfg()), Some(200));
        use prost::Message;
        let bin = base64::engine::general_purpose::STANDARD.encode(text.encode_to_vec());
        assert_eq!(
            parse(&headers("endpoint-load-metrics-bin", &bin)).expect("bin"),
            text
        );
        assert_eq!(
            parse(&headers("endpoint-load-metrics", &format!("BIN {bin}"))).expect("bin"),
            text
        );
        for bad in [
            "TEXT cpu_utilization=-1",
            "TEXT rps_fractional=1, rps_fractional=2",
            "TEXT nope=1",
            "XML <a/>",
            "TEXT cpu_utilization=",
        ] {
            assert!(
                parse(&headers("endpoint-load-metrics", bad)).is_err(),
                "{bad}"
            );
        }
        // The largest named metric, when application utilization is not set.
        let named = parse(&headers(
            "endpoint-load-metrics",
            "TEXT cpu_utilization=0.9, rps_fractional=100, named_metrics.foo=0.5",
        ))
        .expect("text");
        assert_eq!(weight(&named, &cfg()), Some(200));
        let zero = parse(&headers(
            "endpoint-load-metrics",
            "TEXT cpu_utilization=0.5",
        ))
        .expect("text");
        assert_eq!(weight(&zero, &cfg()), None);
    }

    #[test]
    fn weights_wait_out_the_blackout_expire_and_default_to_the_median() {
        let mut c = cfg();
        c.blackout_period = Duration::ZERO;
        let hosts: Vec<HostWeight> = (0..4).map(|_| HostWeight::default()).collect();
        let all: Vec<&HostWeight> = hosts.iter().collect();
        // Nobody reported: all 1, unchanged.
        assert!(!update(&all, &c, Instant::now()));
        hosts[0].report(100);
        hosts[1].report(300);
        hosts[2].report(200);
        assert!(update(&all, &c, Instant::now()));
        let applied: Vec<u32> = hosts.iter().map(HostWeight::applied).collect();
        assert_eq!(applied, vec![100, 300, 200, 200]);
        // An even count: the mean of the two middle weights.
        hosts[3].report(400);
        hosts[0].non_empty_since.store(0, Relaxed);
        hosts[0].last_update.store(0, Relaxed);
        update(&all, &c, Instant::now());
        assert_eq!(hosts[0].applied(), 300);
        // A blackout: a new report counts only after it.
        c.blackout_period = Duration::from_secs(3600);
        let fresh = HostWeight::default();
        fresh.report(5);
        update(&[&fresh, &hosts[1]], &c, Instant::now());
        assert_eq!(
            fresh.applied(),
            1,
            "in its blackout, with no other valid weight"
        );
    }
}
