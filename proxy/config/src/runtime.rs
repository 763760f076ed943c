//! Envoy's layered runtime as data: the layers a bootstrap declares, one layer's values, and
//! the merged values a stream reads (`Values`), with Envoy's rules for reading a value as an
//! integer, a boolean or a fractional percent. Following disk layers, the admin layer and RTDS
//! is the proxy's job; it publishes a new `Values` whenever a layer changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use envoy_types::pb::google::protobuf::value::Kind;

use crate::model::ConfigSource;
use crate::ConfigError;

/// One of `layered_runtime.layers`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// `name`, as `/runtime` lists it.
    pub name: String,
    /// What the layer holds.
    pub kind: LayerKind,
}

/// Where a layer's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// `static_layer`: fixed values.
    Static(BTreeMap<String, Entry>),
    /// `disk_layer`: the files under `symlink_root/subdirectory` (and the service cluster's
    /// directory under it with `append_service_cluster`), read again whenever a new target is
    /// moved onto the symlink.
    Disk {
        /// `symlink_root`.
        symlink_root: PathBuf,
        /// `subdirectory`.
        subdirectory: String,
        /// `append_service_cluster`.
        append_service_cluster: bool,
    },
    /// `admin_layer`: what `POST /runtime_modify` sets.
    Admin,
    /// `rtds_layer`: the `Runtime` resource `name` from `source`.
    Rtds {
        /// The resource's name.
        resource: String,
        /// `rtds_config`.
        source: ConfigSource,
    },
}

/// `envoy.type.v3.FractionalPercent`: `numerator` out of `denominator` (100, 10,000 or
/// 1,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    /// `numerator`.
    pub numerator: u64,
    /// The denominator's value.
    pub denominator: u64,
}

impl Fraction {
    /// Whether `random` falls within the fraction (Envoy's `evaluateFractionalPercent`).
    pub fn admits(self, random: u64) -> bool {
        self.denominator != 0 && random % self.denominator < self.numerator
    }

    /// The denominator named as in the proto's enum.
    pub fn denominator_of(name: &str) -> Option<u64> {
        match name {
            "HUNDRED" | "0" => Some(100),
            "TEN_THOUSAND" | "1" => Some(10_000),
            "MILLION" | "2" => Some(1_000_000),
            _ => None,
        }
    }
}

/// A runtime value read where the configuration names a key: `runtime_fraction`
/// (`RuntimeFractionalPercent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFraction {
    /// `runtime_key` (empty: none).
    pub key: String,
    /// `default_value`.
    pub default: Fraction,
}

impl RuntimeFraction {
    /// Whether `random` is admitted under the values in force.
    pub fn enabled(&self, values: &Values, random: u64) -> bool {
        values.fraction_enabled(&self.key, self.default, random)
    }
}

/// A `RuntimeFeatureFlag`: `default_value` unless the runtime sets `runtime_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFlag {
    /// `runtime_key`.
    pub key: String,
    /// `default_value`.
    pub default: bool,
}

impl RuntimeFlag {
    /// Whether the flag is on under the values in force.
    pub fn enabled(&self, values: &Values) -> bool {
        values.boolean(&self.key, self.default)
    }
}

/// One value, with the readings Envoy derives from its text once.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value as `/runtime` shows it.
    pub raw: String,
    boolean: Option<bool>,
    uint: Option<u64>,
    fraction: Option<Fraction>,
}

impl Entry {
    /// A value from its text, read as Envoy's `SnapshotImpl::createEntry` reads it: an
    /// integer is also a boolean (non-zero); `true`/`false` in any case is a boolean; a
    /// non-negative number is an integer (floored); otherwise a fractional percent written as
    /// YAML or JSON (`{numerator: 5, denominator: TEN_THOUSAND}`).
    pub fn new(raw: String) -> Entry {
        let mut e = Entry {
            raw,
            boolean: None,
            uint: None,
            fraction: None,
        };
        let t = e.raw.trim();
        if let Ok(n) = t.parse::<u64>() {
            e.boolean = Some(n != 0);
        } else if t.eq_ignore_ascii_case("true") {
            e.boolean = Some(true);
            return e;
        } else if t.eq_ignore_ascii_case("false") {
            e.boolean = Some(false);
            return e;
        }
        match t.parse::<f64>() {
            Ok(d) if d.is_finite() && d >= 0.0 && d <= u64::MAX as f64 => {
                e.uint = Some(d as u64);
            }
            Ok(_) => {}
            Err(_) => e.fraction = parse_fraction(t),
        }
        e
    }

    /// A fractional percent given as a structure.
    pub fn fraction(raw: String, f: Fraction) -> Entry {
        Entry {
            raw,
            boolean: None,
            uint: None,
            fraction: Some(f),
        }
    }
}

/// `numerator: N` and `denominator: D` in YAML block or flow form, or JSON.
fn parse_fraction(t: &str) -> Option<Fraction> {
    let inner = t.trim().trim_start_matches('{').trim_end_matches('}');
    let mut numerator = None;
    let mut denominator = 100;
    for part in inner.split([',', '\n']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once(':')?;
        let k = k.trim().trim_matches('"');
        let v = v.trim().trim_matches('"');
        match k {
            "numerator" => numerator = Some(v.parse::<u32>().ok()?),
            "denominator" => denominator = Fraction::denominator_of(v)?,
            _ => return None,
        }
    }
    Some(Fraction {
        numerator: u64::from(numerator.unwrap_or(0)),
        denominator,
    })
}

/// The merged values in force: each key's value from the last layer that sets it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Values {
    entries: BTreeMap<String, Entry>,
}

/// No values: every read is its default.
pub static EMPTY: Values = Values {
    entries: BTreeMap::new(),
};

impl Values {
    /// Layers merged in order, the later winning.
    pub fn merge<'a>(layers: impl IntoIterator<Item = &'a BTreeMap<String, Entry>>) -> Values {
        let mut entries = BTreeMap::new();
        for l in layers {
            for (k, v) in l {
                entries.insert(k.clone(), v.clone());
            }
        }
        Values { entries }
    }

    /// How many keys are set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A key's text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.raw.as_str())
    }

    /// A key as an integer, or `default` (Envoy's `getInteger`).
    pub fn integer(&self, key: &str, default: u64) -> u64 {
        self.entries
            .get(key)
            .and_then(|e| e.uint)
            .unwrap_or(default)
    }

    /// A key as a boolean, or `default` (Envoy's `getBoolean`).
    pub fn boolean(&self, key: &str, default: bool) -> bool {
        self.entries
            .get(key)
            .and_then(|e| e.boolean)
            .unwrap_or(default)
    }

    /// Envoy's `featureEnabled(key, FractionalPercent, random)`: a fractional percent set at
    /// the key; an integer there as a percentage (above 100: always); else `default`.
    pub fn fraction_enabled(&self, key: &str, default: Fraction, random: u64) -> bool {
        let e = if key.is_empty() {
            None
        } else {
            self.entries.get(key)
        };
        let f = match e {
            Some(Entry {
                fraction: Some(f), ..
            }) => *f,
            Some(Entry { uint: Some(n), .. }) => {
                if *n > 100 {
                    return true;
                }
                Fraction {
                    numerator: *n,
                    denominator: 100,
                }
            }
            _ => default,
        };
        f.admits(random)
    }
}

/// Prefixes of the keys Envoy itself reads. A key under one of them changes what Envoy does
/// (or is one Envoy does not know); skiff takes it only if it is in [`ENVOY_KEYS`], so that a
/// layer never sets silently a behaviour skiff lacks. Any other key is read only where the
/// configuration names it (`runtime_fraction`, `runtime_key_prefix`, feature flags), and
/// skiff reads it there.
const RESERVED: &[&str] = &[
    "envoy.",
    "overload.",
    "re2.",
    "upstream.",
    "health_check.",
    "outlier_detection.",
    "circuit_breakers.",
    "fault.",
    "ratelimit.",
    "tracing.",
    "http.",
    "http1.",
    "http2.",
    "router.",
    "access_log.",
    "dns.",
    "redis.",
    "mongo.",
    "zone_routing.",
    "tls.",
    "buffer.",
];

/// How skiff treats a key Envoy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Read at start-up only, from a static layer; a value from another layer is refused.
    Startup,
    /// Nothing in skiff differs whatever its value (the check says which values).
    Inert,
    /// Read where it is used, from any layer, as Envoy reads it.
    Live,
}

/// Whether skiff takes a value of a key.
pub type ValueCheck = fn(&str) -> bool;

/// Envoy's own keys skiff has a verdict on, with the values it accepts.
pub const ENVOY_KEYS: &[(&str, Known, ValueCheck)] = &[
    // The Zipkin tracer's batches: spans per report, and the time between reports.
    // The rate limit filters' percent of calls made and of verdicts obeyed.
    ("ratelimit.tcp_filter_enabled", Known::Live, is_uint),
    ("ratelimit.tcp_filter_enforcing", Known::Live, is_uint),
    ("ratelimit.http_filter_enabled", Known::Live, is_uint),
    ("ratelimit.http_filter_enforcing", Known::Live, is_uint),
    ("tracing.zipkin.min_flush_spans", Known::Live, is_count),
    ("tracing.zipkin.flush_interval_ms", Known::Live, is_count),
    ("tracing.opentelemetry.min_flush_spans", Known::Live, is_count),
    ("tracing.opentelemetry.flush_interval_ms", Known::Live, is_count),
    // A deprecated listener field skiff refuses anyway.
    (
        "envoy.deprecated_features:envoy.config.listener.v3.Listener.hidden_envoy_deprecated_use_original_dst",
        Known::Inert,
        |_| true,
    ),
    // How Envoy batches its own load-balancer rebuilds.
    ("envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update", Known::Inert, |_| true),
    // The fixed-heap monitor's accounting: true (the default) counts the bytes the allocator
    // has handed out, which is what skiff's monitor reads (its allocator keeps no other count).
    ("envoy.reloadable_features.fixed_heap_use_allocated", Known::Inert, is_true),
    // Regex program size limits: skiff's regex engine has its own size limit.
    ("re2.max_program_size.error_level", Known::Inert, |_| true),
    ("re2.max_program_size.warn_level", Known::Inert, |_| true),
    // true is Envoy 1.40's default and skiff's behaviour: no address is internal unless
    // internal_address_config lists it.
    ("envoy.reloadable_features.explicit_internal_address_config", Known::Inert, is_true),
    // The Google gRPC client, which skiff does not run.
    ("envoy.reloadable_features.google_grpc_disable_tls_13", Known::Inert, |_| true),
    // The older form of the global connection limit.
    ("overload.global_downstream_max_connections", Known::Startup, is_count),
    // Envoy's premature-reset protection of HTTP/2 connections.
    ("overload.premature_reset_min_stream_lifetime_seconds", Known::Startup, is_count),
    ("overload.premature_reset_total_stream_count", Known::Startup, is_count),
    // false: a fragment in a request path is stripped rather than refused. skiff's codec
    // never sees one to refuse (tests/hostile_http1.rs); only the default `true` would differ.
    ("envoy.reloadable_features.http_reject_path_with_fragment", Known::Inert, |v| {
        !is_true(v)
    }),
];

fn is_true(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("true")
}

/// A positive whole number.
pub fn count(v: &str) -> Option<u64> {
    let t = v.trim();
    t.parse::<u64>()
        .ok()
        .or_else(|| {
            t.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < 1e18)
                .map(|f| f as u64)
        })
        .filter(|n| *n >= 1)
}

fn is_count(v: &str) -> bool {
    count(v).is_some()
}

/// A whole number, 0 too (a percent Envoy reads with `getInteger`).
fn is_uint(v: &str) -> bool {
    v == "0" || count(v).is_some()
}

/// The fault filter's keys, which skiff reads as Envoy does: `fault.http.<what>` and
/// `fault.http.<downstream cluster>.<what>` (the gRPC status and response rate limit keys are
/// not: skiff refuses those faults).
fn fault_key(key: &str) -> bool {
    const READ: [&str; 4] = [
        "delay.fixed_delay_percent",
        "abort.abort_percent",
        "delay.fixed_duration_ms",
        "abort.http_status",
    ];
    let Some(rest) = key.strip_prefix("fault.http.") else {
        return false;
    };
    rest == "max_active_faults"
        || READ
            .iter()
            .any(|r| rest == *r || rest.strip_suffix(r).is_some_and(|c| c.ends_with('.')))
}

/// A listener's connection limit (`envoy.resource_limits.listener.<name>.connection_limit`),
/// read as each connection is accepted.
fn listener_connection_limit_key(key: &str) -> bool {
    key.strip_prefix("envoy.resource_limits.listener.")
        .and_then(|rest| rest.strip_suffix(".connection_limit"))
        .is_some_and(|name| !name.is_empty())
}

/// The runtime key of listener `name`'s connection limit.
pub fn listener_connection_limit(name: &str) -> String {
    format!("envoy.resource_limits.listener.{name}.connection_limit")
}

/// Whether a layer may set `key` to `value`; `startup` says whether the layer is read only at
/// start-up (a static layer). The error says why not.
pub fn check_key(key: &str, value: &str, startup: bool) -> Result<(), String> {
    if !RESERVED.iter().any(|p| key.starts_with(p)) || fault_key(key) {
        return Ok(());
    }
    if listener_connection_limit_key(key) {
        return match count(value) {
            Some(_) => Ok(()),
            None => Err(format!(
                "skiff does not honour runtime key '{key}' with value '{value}'"
            )),
        };
    }
    match ENVOY_KEYS.iter().find(|(k, _, _)| *k == key) {
        Some((_, _, ok)) if !ok(value) => Err(format!(
            "skiff does not honour runtime key '{key}' with value '{value}'"
        )),
        Some((_, Known::Startup, _)) if !startup => Err(format!(
            "skiff reads runtime key '{key}' from a static layer only"
        )),
        Some(_) => Ok(()),
        None => Err(format!("skiff does not honour runtime key '{key}'")),
    }
}

/// A `Struct` of runtime values (a static layer, an RTDS resource's `layer`), each key checked
/// with [`check_key`]; errors name `path.<key>`.
pub fn proto_layer(
    s: &envoy_types::pb::google::protobuf::Struct,
    path: &str,
    startup: bool,
) -> Result<BTreeMap<String, Entry>, ConfigError> {
    let mut values = BTreeMap::new();
    for (k, v) in &s.fields {
        proto_layer_value(k, v, path, &mut values)?;
    }
    for (key, e) in &values {
        check_key(key, &e.raw, startup)
            .map_err(|m| ConfigError::new(format!("{path}.{key}"), m))?;
    }
    Ok(values)
}

/// One value of a static layer or an RTDS resource, as Envoy's `ProtoLayer` walks it: nested
/// objects join their names with dots; an object that is empty or has `numerator` or
/// `denominator` is one fractional percent; lists and nulls are refused.
fn proto_layer_value(
    key: &str,
    v: &envoy_types::pb::google::protobuf::Value,
    path: &str,
    out: &mut std::collections::BTreeMap<String, Entry>,
) -> Result<(), ConfigError> {
    let invalid = || {
        ConfigError::new(
            format!("{path}.{key}"),
            format!("Invalid runtime entry value for {key}"),
        )
    };
    let entry = match &v.kind {
        Some(Kind::StringValue(s)) => Entry::new(s.clone()),
        Some(Kind::NumberValue(n)) => Entry::new(number_text(*n)),
        Some(Kind::BoolValue(b)) => Entry::new(b.to_string()),
        Some(Kind::StructValue(s))
            if s.fields.is_empty()
                || s.fields.contains_key("numerator")
                || s.fields.contains_key("denominator") =>
        {
            let numerator = match s.fields.get("numerator").and_then(|v| v.kind.as_ref()) {
                None => 0,
                Some(Kind::NumberValue(n)) if *n >= 0.0 && *n <= f64::from(u32::MAX) => *n as u64,
                Some(Kind::StringValue(t)) => {
                    t.trim().parse::<u32>().map_err(|_| invalid())?.into()
                }
                Some(_) => return Err(invalid()),
            };
            let denominator = match s.fields.get("denominator").and_then(|v| v.kind.as_ref()) {
                None => 100,
                Some(Kind::StringValue(t)) => Fraction::denominator_of(t).ok_or_else(invalid)?,
                Some(Kind::NumberValue(n)) => {
                    Fraction::denominator_of(&number_text(*n)).ok_or_else(invalid)?
                }
                Some(_) => return Err(invalid()),
            };
            let name = match denominator {
                100 => "HUNDRED",
                10_000 => "TEN_THOUSAND",
                _ => "MILLION",
            };
            Entry::fraction(
                format!("denominator: {name}\nnumerator: {numerator}"),
                Fraction {
                    numerator,
                    denominator,
                },
            )
        }
        Some(Kind::StructValue(s)) => {
            for (k, v) in &s.fields {
                proto_layer_value(&format!("{key}.{k}"), v, path, out)?;
            }
            return Ok(());
        }
        Some(Kind::ListValue(_)) | Some(Kind::NullValue(_)) | None => return Err(invalid()),
    };
    out.insert(key.to_string(), entry);
    Ok(())
}

/// A number as Envoy's YAML emitter writes it: whole numbers without a fraction.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(kv: &[(&str, &str)]) -> Values {
        let layer: BTreeMap<String, Entry> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), Entry::new(v.to_string())))
            .collect();
        Values::merge([&layer])
    }

    #[test]
    fn entries_read_as_envoy_reads_them() {
        let v = values(&[
            ("i", " 30"),
            ("f", "2.7"),
            ("t", "TRUE"),
            ("z", "0"),
            ("neg", "-3"),
            ("frac", "{numerator: 5, denominator: TEN_THOUSAND}"),
            ("yaml", "numerator: 7\ndenominator: MILLION"),
            ("json", "{\"numerator\": 1, \"denominator\": \"HUNDRED\"}"),
            ("word", "foo"),
        ]);
        assert_eq!(v.integer("i", 9), 30);
        assert_eq!(v.integer("f", 9), 2);
        assert_eq!(v.integer("neg", 9), 9);
        assert_eq!(v.integer("t", 9), 9);
        assert!(v.boolean("t", false));
        assert!(!v.boolean("z", true));
        assert!(v.boolean("i", false));
        assert!(!v.boolean("word", false));
        assert_eq!(v.get("word"), Some("foo"));
        let none = Fraction {
            numerator: 0,
            denominator: 100,
        };
        // 5 in 10,000.
        assert!(v.fraction_enabled("frac", none, 4));
        assert!(!v.fraction_enabled("frac", none, 5));
        assert!(v.fraction_enabled("frac", none, 10_003));
        assert!(v.fraction_enabled("yaml", none, 1_000_006));
        assert!(!v.fraction_enabled("yaml", none, 7));
        assert!(v.fraction_enabled("json", none, 100));
        assert!(!v.fraction_enabled("json", none, 101));
    }

    #[test]
    fn an_integer_is_a_percentage_and_above_100_always() {
        let v = values(&[("p", "30"), ("big", "5000")]);
        let all = Fraction {
            numerator: 100,
            denominator: 100,
        };
        let hits = (0..100u64)
            .filter(|r| v.fraction_enabled("p", all, *r))
            .count();
        assert_eq!(hits, 30);
        // The default's denominator does not apply to an integer value.
        let tenk = Fraction {
            numerator: 0,
            denominator: 10_000,
        };
        assert!(v.fraction_enabled("p", tenk, 10_029));
        assert!((0..1000).all(|r| v.fraction_enabled("big", tenk, r)));
        // Unset or empty key: the default.
        assert!(!v.fraction_enabled("missing", tenk, 0));
        assert!(!v.fraction_enabled("", tenk, 0));
    }

    #[test]
    fn later_layers_win() {
        let a: BTreeMap<String, Entry> = [("k".to_string(), Entry::new("1".into()))].into();
        let b: BTreeMap<String, Entry> = [("k".to_string(), Entry::new("2".into()))].into();
        assert_eq!(Values::merge([&a, &b]).integer("k", 0), 2);
        assert_eq!(Values::merge([&b, &a]).integer("k", 0), 1);
        assert_eq!(EMPTY.integer("k", 7), 7);
    }

    #[test]
    fn envoy_keys_are_refused_unless_skiff_honours_them() {
        let limit = listener_connection_limit("front");
        assert!(check_key(&limit, "100", false).is_ok());
        assert!(check_key(&limit, "-1", true).is_err());
        assert!(check_key(
            "envoy.resource_limits.listener..connection_limit",
            "1",
            true
        )
        .is_err());
        assert!(check_key("routing.traffic_shift.a", "5", false).is_ok());
        assert!(check_key("my.key", "x", false).is_ok());
        assert!(check_key("envoy.something.made.up", "1", true)
            .unwrap_err()
            .contains("does not honour"));
        assert!(check_key("tracing.random_sampling", "1", true).is_err());
        assert!(check_key("overload.global_downstream_max_connections", "50", true).is_ok());
        assert!(
            check_key("overload.global_downstream_max_connections", "50", false)
                .unwrap_err()
                .contains("static layer")
        );
        assert!(check_key("overload.global_downstream_max_connections", "-1", true).is_err());
        assert!(check_key("re2.max_program_size.error_level", "1000", false).is_ok());
        assert!(check_key(
            "envoy.reloadable_features.http_reject_path_with_fragment",
            "true",
            true
        )
        .is_err());
    }
}
