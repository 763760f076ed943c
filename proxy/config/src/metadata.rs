//! Metadata as Envoy keeps it (`envoy.config.core.v3.Metadata.filter_metadata`): namespaces of
//! `google.protobuf.Struct` values, the `MetadataMatcher` that routes and access log filters
//! judge them with, and the text Envoy's formatters write for them.

use std::collections::BTreeMap;

use crate::model::StringMatch;

/// A `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null_value`.
    Null,
    /// `number_value`.
    Number(f64),
    /// `string_value`.
    String(String),
    /// `bool_value`.
    Bool(bool),
    /// `struct_value`.
    Struct(Struct),
    /// `list_value`.
    List(Vec<Value>),
}

/// A `google.protobuf.Struct`: its fields by name (in name order, as Envoy prints them).
pub type Struct = BTreeMap<String, Value>;

/// `Metadata.filter_metadata`: a struct per namespace (a filter's name, by convention).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The namespaces.
    pub filter_metadata: BTreeMap<String, Struct>,
}

type PbValue = envoy_types::pb::google::protobuf::Value;
type PbStruct = envoy_types::pb::google::protobuf::Struct;

impl Value {
    /// From the protobuf message (a value of no kind reads as `null`).
    pub fn from_pb(v: &PbValue) -> Value {
        use envoy_types::pb::google::protobuf::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(n)) => Value::Number(*n),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::StructValue(s)) => Value::Struct(struct_from_pb(s)),
            Some(Kind::ListValue(l)) => Value::List(l.values.iter().map(Value::from_pb).collect()),
        }
    }

    /// From JSON (numbers as doubles, as a `google.protobuf.Value` holds them).
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Struct(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The value as Envoy's metadata formatters write it: a string as it is, anything else as
    /// compact JSON.
    pub fn render(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            other => {
                let mut out = String::new();
                other.write_json(&mut out);
                out
            }
        }
    }

    /// Compact JSON, with protobuf's rendering of numbers (`42`, `3.25`, `-0`; `inf` and
    /// `null` for the non-finite ones, as Envoy writes them).
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Number(n) => out.push_str(&number(*n)),
            Value::String(s) => write_json_string(s, out),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Struct(s) => write_json_struct(s, out),
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
        }
    }
}

impl Value {
    /// A value's canonical text, equal for the values Envoy's `ValueUtil::equal` calls equal
    /// (what the subset load balancer compares).
    pub fn canonical(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            // As doubles: 1 and 1.0 (and 0 and -0) alike.
            Value::Number(n) if *n == 0.0 => "n:0".to_string(),
            Value::Number(n) => format!("n:{n}"),
            Value::String(s) => format!("s:{s:?}"),
            Value::Bool(b) => format!("b:{b}"),
            Value::List(l) => {
                let items: Vec<String> = l.iter().map(Value::canonical).collect();
                format!("[{}]", items.join(","))
            }
            Value::Struct(s) => {
                let parts: Vec<String> = s
                    .iter()
                    .map(|(k, v)| format!("{k:?}:{}", v.canonical()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        }
    }
}

/// A struct as compact JSON, fields in name order.
pub fn write_json_struct(s: &Struct, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in s.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(k, out);
        out.push(':');
        v.write_json(out);
    }
    out.push('}');
}

fn write_json_string(s: &str, out: &mut String) {
    crate::access_log::json::string(s, out);
}

/// A number as protobuf's JSON printer writes a double.
fn number(n: f64) -> String {
    if n.is_nan() {
        return "null".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = n.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        // `1e+21`, `1e-07`.
        let s = format!("{n:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    if n.fract() == 0.0 {
        // An integral double in full (`12345678901234567168`), as protobuf writes it.
        return format!("{n:.0}");
    }
    format!("{n}")
}

/// From the protobuf message.
pub fn struct_from_pb(s: &PbStruct) -> Struct {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_pb(v)))
        .collect()
}

/// As the protobuf message.
pub fn struct_to_pb(s: &Struct) -> PbStruct {
    PbStruct {
        fields: s.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect(),
    }
}

fn value_to_pb(v: &Value) -> PbValue {
    use envoy_types::pb::google::protobuf::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Number(n) => Kind::NumberValue(*n),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Struct(s) => Kind::StructValue(struct_to_pb(s)),
        Value::List(l) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: l.iter().map(value_to_pb).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

impl Metadata {
    /// From a `Metadata` message (`typed_filter_metadata` is not read).
    pub fn from_pb(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Metadata {
        Metadata {
            filter_metadata: m
                .filter_metadata
                .iter()
                .map(|(k, v)| (k.clone(), struct_from_pb(v)))
                .collect(),
        }
    }

    /// Whether it has no namespace.
    pub fn is_empty(&self) -> bool {
        self.filter_metadata.is_empty()
    }

    /// The value at `path` in `namespace` (Envoy's `Metadata::metadataValue`).
    pub fn lookup(&self, namespace: &str, path: &[String]) -> Option<&Value> {
        let ns = self.filter_metadata.get(namespace)?;
        let (first, rest) = path.split_first()?;
        let mut v = ns.get(first)?;
        for key in rest {
            match v {
                Value::Struct(s) => v = s.get(key)?,
                _ => return None,
            }
        }
        Some(v)
    }

    /// Sets `key` in `namespace` (Envoy merges a filter's metadata key by key).
    pub fn set(&mut self, namespace: &str, key: &str, value: Value) {
        self.filter_metadata
            .entry(namespace.to_string())
            .or_default()
            .insert(key.to_string(), value);
    }

    /// What Envoy's `%..._METADATA(namespace:path...)%` operators write: `None` (`-`) for what
    /// is not there; a whole namespace as JSON.
    pub fn render(&self, namespace: &str, path: &[String]) -> Option<String> {
        if path.is_empty() {
            let ns = self.filter_metadata.get(namespace)?;
            let mut out = String::new();
            write_json_struct(ns, &mut out);
            return Some(out);
        }
        self.lookup(namespace, path).map(Value::render)
    }

    /// The value for a JSON access log: the namespace or the value itself, typed.
    pub fn value(&self, namespace: &str, path: &[String]) -> Option<Value> {
        if path.is_empty() {
            return self
                .filter_metadata
                .get(namespace)
                .map(|s| Value::Struct(s.clone()));
        }
        self.lookup(namespace, path).cloned()
    }
}

/// Why header_to_metadata wrote nothing for a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFailure {
    /// 8192 bytes or more (`header_value_too_long`).
    TooLong,
    /// Not base64, or empty once decoded (`base64_decode_failed`).
    Base64,
    /// Not a number, or not a serialized `google.protobuf.Value` (not counted).
    Parse,
}

/// header_to_metadata's longest value, exclusive (Envoy's `MAX_HEADER_VALUE_LEN`).
const MAX_VALUE_LEN: usize = 8 * 1024;

/// The metadata value header_to_metadata writes for `raw` (Envoy's `addMetadata`).
pub fn header_value(
    raw: &str,
    kind: crate::model::MetadataValueType,
    base64: bool,
) -> Result<Value, ValueFailure> {
    use crate::model::MetadataValueType as T;
    if raw.len() >= MAX_VALUE_LEN {
        return Err(ValueFailure::TooLong);
    }
    let bytes = if base64 {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        use base64::Engine as _;
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        match LENIENT.decode(raw) {
            Ok(b) if !b.is_empty() => b,
            _ => return Err(ValueFailure::Base64),
        }
    } else {
        raw.as_bytes().to_vec()
    };
    match kind {
        T::String => Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        T::Number => std::str::from_utf8(&bytes)
            .ok()
            .and_then(parse_number)
            .map(Value::Number)
            .ok_or(ValueFailure::Parse),
        T::ProtobufValue => {
            use prost::Message as _;
            PbValue::decode(bytes.as_slice())
                .map(|v| Value::from_pb(&v))
                .map_err(|_| ValueFailure::Parse)
        }
    }
}

/// A number as absl's `SimpleAtod` reads one: surrounding white space, a sign, decimal or
/// exponent forms, `inf`/`nan`, and hexadecimal (`0x10`).
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() {
        return None;
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        hex.bytes().fold(0f64, |acc, b| {
            acc * 16.0 + f64::from((b as char).to_digit(16).unwrap_or(0))
        })
    } else {
        // Rust's parser takes a sign itself: one was taken above.
        if body.starts_with(['+', '-']) {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// An `envoy.type.matcher.v3.MetadataMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataMatcher {
    /// `filter`: the namespace.
    pub filter: String,
    /// `path[].key`.
    pub path: Vec<String>,
    /// `value`.
    pub value: ValueMatcher,
    /// `invert`.
    pub invert: bool,
}

/// An `envoy.type.matcher.v3.ValueMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatcher {
    /// `null_match`.
    Null,
    /// `double_match.exact`.
    DoubleExact(f64),
    /// `double_match.range`: `[start, end)`.
    DoubleRange(f64, f64),
    /// `string_match`.
    String(StringMatch),
    /// `bool_match`.
    Bool(bool),
    /// `present_match`: `true` matches any value; `false` matches nothing (Envoy's).
    Present(bool),
    /// `list_match.one_of`: a list with an element that matches.
    ListOneOf(Box<ValueMatcher>),
    /// `or_match`: any of these.
    Or(Vec<ValueMatcher>),
}

impl ValueMatcher {
    /// Whether `v` (`None`: not there) matches.
    pub fn matches(&self, v: Option<&Value>) -> bool {
        match (self, v) {
            (ValueMatcher::Null, Some(Value::Null)) => true,
            (ValueMatcher::DoubleExact(x), Some(Value::Number(n))) => n == x,
            (ValueMatcher::DoubleRange(s, e), Some(Value::Number(n))) => n >= s && n < e,
            (ValueMatcher::String(m), Some(Value::String(s))) => m.matches(s),
            (ValueMatcher::Bool(b), Some(Value::Bool(x))) => b == x,
            (ValueMatcher::Present(p), v) => *p && v.is_some(),
            (ValueMatcher::ListOneOf(m), Some(Value::List(l))) => {
                l.iter().any(|e| m.matches(Some(e)))
            }
            (ValueMatcher::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

impl MetadataMatcher {
    /// Whether `metadata` matches (`invert` applied).
    pub fn matches(&self, metadata: Option<&Metadata>) -> bool {
        let v = metadata.and_then(|m| m.lookup(&self.filter, &self.path));
        self.value.matches(v) != self.invert
    }

    /// The access log `metadata_filter`'s reading: `None` when the value is not there
    /// (`invert` is not applied: Envoy's filter ignores it).
    pub fn matches_present(&self, metadata: Option<&Metadata>) -> Option<bool> {
        let v = metadata.and_then(|m| m.lookup(&self.filter, &self.path))?;
        Some(self.value.matches(Some(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md() -> Metadata {
        let mut m = Metadata::default();
        m.set("ns", "str", Value::String("hello".into()));
        m.set("ns", "num", Value::Number(42.0));
        let mut inner = Struct::new();
        inner.insert("a".into(), Value::String("b".into()));
        m.set("ns", "pv", Value::Struct(inner));
        m.set(
            "ns",
            "list",
            Value::List(vec![Value::String("x".into()), Value::String("y".into())]),
        );
        m
    }

    #[test]
    fn renders_as_envoy() {
        let m = md();
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            m.render("ns", &[]).as_deref(),
            Some(r#"{"list":["x","y"],"num":42,"pv":{"a":"b"},"str":"hello"}"#)
        );
        assert_eq!(m.render("ns", &p(&["str"])).as_deref(), Some("hello"));
        assert_eq!(m.render("ns", &p(&["pv", "a"])).as_deref(), Some("b"));
        assert_eq!(m.render("ns", &p(&["nope"])), None);
        assert_eq!(m.render("other", &[]), None);
        for (n, s) in [
            (3.25, "3.25"),
            (1000.0, "1000"),
            (-0.0, "-0"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "null"),
            (1e21, "1e+21"),
            (1e-7, "1e-07"),
            (12345678901234567890.0, "12345678901234567168"),
        ] {
            assert_eq!(number(n), s);
        }
    }

    #[test]
    fn header_values_as_envoy() {
        use crate::model::MetadataValueType as T;
        let num = |s: &str| header_value(s, T::Number, false);
        assert_eq!(num("42"), Ok(Value::Number(42.0)));
        assert_eq!(num(" 42 "), Ok(Value::Number(42.0)));
        assert_eq!(num("1e3"), Ok(Value::Number(1000.0)));
        assert_eq!(num("0x10"), Ok(Value::Number(16.0)));
        assert_eq!(num("abc"), Err(ValueFailure::Parse));
        assert_eq!(num("12abc"), Err(ValueFailure::Parse));
        assert!(matches!(num("inf"), Ok(Value::Number(n)) if n.is_infinite()));
        assert_eq!(
            header_value("aGVsbG8", T::String, true),
            Ok(Value::String("hello".into()))
        );
        assert_eq!(
            header_value("aGVsbG8gd29ybGQ=", T::String, true),
            Ok(Value::String("hello world".into()))
        );
        assert_eq!(
            header_value("!!notb64", T::String, true),
            Err(ValueFailure::Base64)
        );
        // Value{struct_value{a: "b"}}.
        let mut s = Struct::new();
        s.insert("a".into(), Value::String("b".into()));
        assert_eq!(
            header_value("KgoKCAoBYRIDGgFi", T::ProtobufValue, true),
            Ok(Value::Struct(s))
        );
        assert_eq!(
            header_value(&"x".repeat(8191), T::String, false),
            Ok(Value::String("x".repeat(8191)))
        );
        assert_eq!(
            header_value(&"x".repeat(8192), T::String, false),
            Err(ValueFailure::TooLong)
        );
    }

    #[test]
    fn value_matchers_as_envoy() {
        let m = md();
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let matcher = |path: &[&str], value: ValueMatcher, invert: bool| MetadataMatcher {
            filter: "ns".into(),
            path: p(path),
            value,
            invert,
        };
        assert!(matcher(&["num"], ValueMatcher::DoubleRange(10.0, 43.0), false).matches(Some(&m)));
        assert!(!matcher(&["num"], ValueMatcher::DoubleRange(10.0, 42.0), false).matches(Some(&m)));
        assert!(matcher(&["pv"], ValueMatcher::Present(true), false).matches(Some(&m)));
        assert!(!matcher(&["no"], ValueMatcher::Present(false), false).matches(Some(&m)));
        assert!(matcher(&["no"], ValueMatcher::Present(true), true).matches(Some(&m)));
        assert!(matcher(
            &["list"],
            ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(StringMatch {
                kind: crate::model::StringMatchKind::Exact("y".into()),
                ignore_case: false,
            }))),
            false
        )
        .matches(Some(&m)));
        // A number never matches a string matcher.
        assert!(!matcher(
            &["num"],
            ValueMatcher::String(StringMatch {
                kind: crate::model::StringMatchKind::Exact("42".into()),
                ignore_case: false,
            }),
            false
        )
        .matches(Some(&m)));
    }
}
