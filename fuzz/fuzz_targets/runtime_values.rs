//! Runtime values as they arrive from a disk layer's files, `/runtime_modify` and RTDS: a
//! file's text, a value read as an integer, a boolean or a fractional percent, and an RTDS
//! layer (`Struct`) walked and checked key by key. None may panic; an integer value up to 100
//! admits exactly that percentage of random values, as Envoy's `featureEnabled`. The same text
//! as an injected resource monitor's file: a pressure from 0 to 1 or an error.
#![no_main]

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use libfuzzer_sys::fuzz_target;
use skiff::config::runtime::{proto_layer, Entry, Fraction, Values};
use skiff::runtime::file_value;

fn to_value(v: &serde_json::Value, depth: u32) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) if depth < 32 => Kind::ListValue(ListValue {
            values: a.iter().map(|v| to_value(v, depth + 1)).collect(),
        }),
        serde_json::Value::Object(o) if depth < 32 => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v, depth + 1)))
                .collect(),
        }),
        _ => Kind::NullValue(0),
    };
    Value { kind: Some(kind) }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let random = u64::from(knob) * 7919;

    // A file's text, then read as every kind of value.
    let value = file_value(&text);
    assert!(!value.ends_with([' ', '\t']));
    let layer: BTreeMap<String, Entry> = [("k".to_string(), Entry::new(value.clone()))].into();
    let v = Values::merge([&layer]);
    let _ = v.boolean("k", knob & 1 == 1);
    let n = v.integer("k", u64::MAX);
    let default = Fraction {
        numerator: u64::from(knob),
        denominator: 100,
    };
    let on = v.fraction_enabled("k", default, random);
    if n <= 100 && value.trim().parse::<u64>().is_ok() {
        assert_eq!(on, random % 100 < n, "{value:?}");
    }

    // An injected resource monitor's file.
    if let Ok(p) = skiff::overload::monitors::parse_pressure(&text) {
        assert!((0.0..=1.0).contains(&p), "{text:?}");
    }

    // An RTDS layer.
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(&text) {
        let s = Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_value(v, 0))).collect(),
        };
        for startup in [true, false] {
            if let Ok(values) = proto_layer(&s, "layer", startup) {
                let merged = Values::merge([&values]);
                for k in values.keys() {
                    let _ = merged.fraction_enabled(k, default, random);
                    let _ = merged.integer(k, 0);
                }
            }
        }
    }
});
